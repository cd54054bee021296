"""Issue 25, the integrations' findings: Lightning, accelerate, the sampler's epochs and state.

One test per finding, named after it (test_fNN_...). The Lightning and accelerate
cases are real runs of tests/frameworks/reliability_run.py in a subprocess, each case
kept apart so that one failure does not hide the others.
"""

import signal
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from graft_select.sampler import GraftBatchSampler  # noqa: E402

SCRIPT = Path(__file__).parent / "frameworks" / "reliability_run.py"


def _run(mode, tmp_path_factory):
    out = tmp_path_factory.mktemp(mode)
    result = subprocess.run([sys.executable, str(SCRIPT), mode, str(out)], capture_output=True,
                            text=True, timeout=400)
    if result.returncode != 0:
        raise AssertionError(result.stderr[-4000:])
    return torch.load(out / f"{mode}.pt", weights_only=False)


@pytest.fixture(scope="module")
def lightning_runs(tmp_path_factory):
    """The Lightning cases of reliability_run.py (one process, several fits)."""
    pytest.importorskip("lightning")
    return _run("lightning", tmp_path_factory)


@pytest.fixture(scope="module")
def accelerate_runs(tmp_path_factory):
    """The accelerate cases of reliability_run.py (one process)."""
    pytest.importorskip("accelerate")
    return _run("accelerate", tmp_path_factory)


def _result(runs, case):
    entry = runs[case]
    assert "error" not in entry, entry.get("traceback")
    return entry["result"]


def _error(runs, case):
    entry = runs[case]
    assert "error" in entry, f"{case} ran without an error: {entry.get('result')}"
    return entry["error"]


def _feedback(n, seed=0, width=5, classes=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, width, generator=g), torch.randn(n, classes, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def _observe(sampler, batch, feedback):
    emb, logits, targets = feedback
    batch = torch.as_tensor(batch)
    sampler.observe(batch, embeddings=emb[batch], logits=logits[batch], targets=targets[batch])


@contextmanager
def _deadline(seconds):
    """Fail instead of hanging (a hang finding); not a speed measurement."""
    def expired(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------- 6: set_epoch never called


def test_f06_second_pass_without_set_epoch_warns():
    """A full pass iterated again at the same epoch, a refit being due, warns with the fix."""
    sampler = GraftBatchSampler(100, 10, fraction=0.5, warm_start_epochs=1)
    list(sampler)
    with pytest.warns(UserWarning, match=r"set_epoch\(\) was not called.*GraftCallback"):
        list(sampler)


def test_f06_set_epoch_or_a_partial_pass_does_not_warn():
    """No warning after set_epoch, nor for a peek followed by the full pass."""
    sampler = GraftBatchSampler(100, 10, fraction=0.5, warm_start_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        next(iter(sampler))
        list(sampler)
        sampler.observe(torch.arange(100), embeddings=torch.randn(100, 3))
        sampler.set_epoch(1)
        list(sampler)


@pytest.mark.parametrize("kwargs", [{}, {"fraction": 1.0}])
def test_second_trained_pass_without_set_epoch_warns_with_no_refit_due(kwargs):
    """With the default warm start (no refit due at epoch 1) or fraction=1.0, a loop that
    forgets set_epoch trained the same order every epoch and never selected, without a
    word. The second trained pass now warns at its first observe(), once; a pass that is
    not observed (an evaluation over the training loader) does not."""
    n = 100
    sampler = GraftBatchSampler(n, 10, **{"fraction": 0.3, **kwargs},
                                targets=torch.arange(n) % 3)

    def trained_pass():
        for batch in sampler:
            rows = torch.tensor(batch)
            sampler.observe(rows, embeddings=torch.randn(len(rows), 4),
                            logits=torch.randn(len(rows), 3))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(3):  # set_epoch every epoch, an evaluation pass after each
            sampler.set_epoch(epoch)
            trained_pass()
            list(sampler)
    sampler.set_epoch(5)
    trained_pass()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained_pass()
        trained_pass()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert all("second full pass at epoch 5" in m and "set_epoch" in m for m in messages)


def test_second_trained_pass_warns_behind_workers():
    """With DataLoader workers (which call iter() twice per pass) a loop that forgets
    set_epoch was not warned: the second iter() cleared the note of the first."""
    n = 100
    sampler = GraftBatchSampler(n, 10, fraction=0.3, targets=torch.arange(n) % 3)
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_sampler=sampler, num_workers=2)

    def trained_pass():
        for (rows,) in loader:
            sampler.observe(rows, embeddings=torch.randn(len(rows), 4),
                            logits=torch.randn(len(rows), 3))

    trained_pass()
    with pytest.warns(UserWarning, match="second full pass at epoch 0"):
        trained_pass()


def test_f06_lightning_without_callback_warns(lightning_runs):
    """Lightning without GraftCallback (it never calls set_epoch on a batch sampler) warns."""
    entry = lightning_runs["no_callback"]
    assert _result(lightning_runs, "no_callback") == {0: 512, 1: 512, 2: 512}
    assert any("set_epoch() was not called" in w and "GraftCallback" in w
               for w in entry["warnings"])


# ------------------------------------------------------------ 7: never-observed rows


def test_samples_with_only_rejected_rows_are_left_out():
    """Samples whose every observed row is rejected (labels of -100, an ignore_index)
    counted as never observed and took every refit's whole budget: each selected epoch
    trained the 60 unlabelled samples only. They are now left out of refits (with a
    warning naming them), whatever the epoch, and a resumed run plans the same."""
    n, c = 200, 3
    g = torch.Generator().manual_seed(0)
    X, logits = torch.randn(n, 4, generator=g), torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    y[:60] = -100

    def run(resume_at=None):
        def make():
            return GraftBatchSampler(n, 10, fraction=0.3, warm_start_epochs=1, refit_every=1)

        sampler, plans = make(), []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for epoch in range(4):
                if epoch == resume_at:
                    state, sampler = sampler.state_dict(), make()
                    sampler.load_state_dict(state)
                sampler.set_epoch(epoch)
                plan = [i for batch in sampler for i in batch]
                plans.append(plan)
                for start in range(0, len(plan), 10):
                    rows = torch.tensor(plan[start:start + 10])
                    sampler.observe(rows, embeddings=X[rows], logits=logits[rows],
                                    targets=y[rows])
        return plans, sampler, [str(w.message) for w in caught]

    plans, sampler, messages = run()
    assert [sum(i < 60 for i in plan) for plan in plans] == [60, 0, 0, 0]
    assert all(len(plan) == 60 for plan in plans[1:])
    assert sampler.last_refit.n_unobserved == 0
    assert sum("leaves 60 samples out of its refits" in m for m in messages) == 1
    assert run(resume_at=2)[0] == plans


def test_samples_with_non_finite_rows_are_trained_again():
    """Rows rejected for NaN (one bad batch, a transient state of the model) leave no
    mark: the next refit trains those samples again as never observed (they were left
    out of every later refit, for good)."""
    n, c = 200, 3
    g = torch.Generator().manual_seed(0)
    X, logits = torch.randn(n, 4, generator=g), torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    sampler = GraftBatchSampler(n, 10, fraction=0.3, warm_start_epochs=1, refit_every=1)
    rows = torch.arange(n)
    bad = logits.clone()
    bad[:8] = float("nan")
    sampler.observe(rows, embeddings=X, logits=bad, targets=y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler.set_epoch(1)
    assert set(range(8)) <= set(sampler._plan().tolist())


def _partly_observed(observed_batches, n=128):
    sampler = GraftBatchSampler(n, 16, fraction=0.25, warm_start_epochs=1, seed=0)
    feedback = _feedback(n)
    for i, batch in enumerate(sampler):
        if i == observed_batches:
            break
        _observe(sampler, batch, feedback)
    seen = set(torch.nonzero(sampler.state_dict()["last_seen"] >= 0).flatten().tolist())
    sampler.set_epoch(1)
    return sampler, seen


def test_f07_never_observed_rows_are_refreshed_not_zero():
    """After a partial first epoch the refit trains never-observed rows, and warns."""
    sampler, seen = _partly_observed(4)  # 64 of 128 observed; budget 32
    with pytest.warns(UserWarning, match="64 of the 128 samples were never observed"):
        subset = set(sampler._plan().tolist())
    report = sampler.last_refit
    assert report.n_unobserved == 64 and report.n_refreshed == 32
    assert not subset & seen  # all of the budget goes to samples without feedback


def test_f07_never_observed_below_budget_all_refreshed():
    """Fewer never-observed rows than the budget: all of them are in the subset."""
    sampler, seen = _partly_observed(7)  # 112 observed, 16 never
    never = set(range(128)) - seen
    with pytest.warns(UserWarning, match="16 of the 128"):
        subset = set(sampler._plan().tolist())
    assert never <= subset and sampler.last_refit.n_unobserved == 16


def test_f07_lightning_partial_epoch(lightning_runs):
    """limit_train_batches=0.5: the refit's subset holds no zero row chosen as if observed."""
    result = _result(lightning_runs, "partial_epoch")
    assert result["n_unobserved"] == 256 and result["n_refreshed"] == result["n_selected"]
    assert result["selected_observed"] == 0
    assert any("never observed" in w for w in lightning_runs["partial_epoch"]["warnings"])


@pytest.mark.parametrize("case, limit", [("limited_half", 0.5), ("limited_two", 2)])
def test_lightning_limit_train_batches_caps_every_epoch(lightning_runs, case, limit):
    """limit_train_batches (a share or a count) caps every epoch's batches, and
    estimated_stepping_batches counts them: Lightning capped every epoch at half the
    warm-start epoch's batches, so selected epochs ran whole (7, 5, 5, ... instead of
    7, 2, 2, ...), and a schedule sized by the estimate (35 steps) never ended (27).
    An int 2 equals 2.0, and the callback took it for no cap at all."""
    result = _result(lightning_runs, case)
    expected = {epoch: (max(1, int(n * limit)) if isinstance(limit, float) else min(n, limit))
                for epoch, n in result["lengths"].items()}
    assert result["ran"] == expected and len(set(result["lengths"].values())) == 2
    assert result["planned"] == result["steps"] == sum(expected.values())


def test_lightning_resume_of_an_epoch_cut_by_limit_train_batches(lightning_runs):
    """A checkpoint at the end of an epoch that limit_train_batches cut resumes at the
    next epoch (it resumed the sampler inside the old epoch, and the first observe()
    raised): epochs 2 and 3 run, each capped."""
    result = _result(lightning_runs, "resume_limited")
    assert sorted(result["ran"]) == [2, 3]
    assert all(result["ran"][e] == max(1, int(result["lengths"][e] * 0.5))
               for e in result["ran"])


def test_lightning_resume_after_max_steps_finishes_the_interrupted_epoch(lightning_runs):
    """A run stopped by max_steps mid-epoch and resumed from its checkpoint: Lightning
    counts the stopped epoch as finished and resumes at the next epoch number, from the
    batch it stopped at. The first observe() raised (the callback moved the sampler to
    Lightning's epoch under the loader's running iterator). The resumed epoch now
    trains exactly the rest of the interrupted pass, and the next epoch a whole one."""
    result = _result(lightning_runs, "resume_max_steps")
    epoch_0 = result["whole"][0]  # 16 batches of 32 (warm start: all 512 samples)
    assert result["stopped"] == {0: epoch_0[:5]}
    assert sorted(result["resumed"]) == [1, 2]
    assert result["resumed"][1] == epoch_0[5:]
    assert len(result["resumed"][2]) == result["lengths"][2]
    assert result["steps"] == len(epoch_0) + result["lengths"][2]


@pytest.mark.parametrize("lightning_at, finishes", [(5, True), (3, None)])
def test_lightning_interrupted_pass_needs_the_same_position(lightning_at, finishes):
    """The interrupted pass is finished only where Lightning resumes at the batch the
    sampler's state does; two positions that disagree (a callback state and loop state
    of different moments) raise, naming both, instead of pairing batches wrongly."""
    from types import SimpleNamespace

    pytest.importorskip("lightning")
    from graft_select.lightning import GraftCallback

    first = GraftBatchSampler(64, 8, fraction=0.5, seed=0)
    first.set_epoch(0)
    batches = iter(first)
    for _ in range(5):
        first.observe(next(batches), embeddings=torch.randn(8, 4), logits=torch.randn(8, 3),
                      targets=torch.randint(0, 3, (8,)))
    callback = GraftCallback(GraftBatchSampler(64, 8, fraction=0.5, seed=0))
    callback.load_state_dict({"sampler": first.state_dict(), "epoch_done": False})
    iter(callback.sampler)  # Lightning makes the loader's iterator before the epoch hook
    progress = SimpleNamespace(current=SimpleNamespace(ready=lightning_at))
    trainer = SimpleNamespace(current_epoch=1, fit_loop=SimpleNamespace(
        epoch_loop=SimpleNamespace(batch_progress=progress)))
    if finishes:
        assert callback._finishes_interrupted_pass(trainer)
    else:
        with pytest.raises(ValueError, match=r"epoch 1, batch 3.*epoch 0, batch 5"):
            callback._finishes_interrupted_pass(trainer)


# ------------------------------------------------------------------ 8: drop_last


@pytest.mark.parametrize("kwargs", [
    {"fraction": 0.3},  # 30 samples per selected epoch, batches of 64
    {"fraction": 1.0, "batch_size": 128},  # the full data itself
    {"fraction": 0.5, "num_replicas": 2, "rank": 0},  # 25 per rank
])
def test_f08_drop_last_subset_smaller_than_batch_raises(kwargs):
    """drop_last=True with an epoch smaller than a batch raises, naming the fix."""
    kwargs = {"batch_size": 64, **kwargs}
    with pytest.raises(ValueError, match=r"drop_last=True would yield no batch.*batch_size"):
        GraftBatchSampler(100 if "num_replicas" not in kwargs else 50 * 2, drop_last=True,
                          **kwargs)


def test_f08_drop_last_epoch_without_batch_raises_at_iteration():
    """A plan that ends up smaller than a batch under drop_last raises when iterated."""
    sampler = GraftBatchSampler(100, 30, fraction=0.3, drop_last=True, warm_start_epochs=1)
    sampler._planner.subset = torch.arange(20)  # a refit that selected fewer than a batch
    sampler._planner.subset_epoch = 1
    sampler.set_epoch(1)
    with pytest.raises(ValueError, match="yields no batch in epoch 1"):
        iter(sampler)


def test_f08_lightning_drop_last_steps(lightning_runs):
    """drop_last=True under Lightning: every epoch trains, steps as planned."""
    result = _result(lightning_runs, "drop_last")
    assert result["steps"] == result["planned"] == result["expected"] == 16 + 3 * 4


# ------------------------------------------------- 9, 10, 25, 26, 49: accelerate


def test_f09_accelerate_accumulation_sees_end_of_epoch(accelerate_runs):
    """gradient_accumulation_steps=4 over 5-batch epochs: 2 optimizer steps per epoch."""
    result = _result(accelerate_runs, "accumulation")
    assert result["batches"] == 5 and result["steps"] == [2, 2]


def test_f10_accelerate_save_state_keeps_sampler(accelerate_runs):
    """save_state/load_state keep the sampler's feedback, epoch and mid-epoch position."""
    result = _result(accelerate_runs, "save_and_load")
    assert result["epoch"] == 1
    assert result["same_feedback"] and result["same_last_seen"]
    assert result["resumed"] == result["rest"] and len(result["rest"]) == 3


def test_f49_register_for_checkpointing_loader(accelerate_runs):
    """register_for_checkpointing(loader) is accepted: the loader forwards the sampler state."""
    from graft_select.accelerate import GraftDataLoader

    _result(accelerate_runs, "save_and_load")  # registers a GraftDataLoader by hand
    data = TensorDataset(torch.arange(40))
    sampler = GraftBatchSampler(40, 8, fraction=0.5, warm_start_epochs=1)
    loader = GraftDataLoader(DataLoader(data, batch_sampler=sampler), torch.device("cpu"))
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = loader.state_dict()
    assert state["batches_yielded"] == 2  # the batches trained: none fetched ahead
    fresh = GraftBatchSampler(40, 8, fraction=0.5, warm_start_epochs=1)
    GraftDataLoader(DataLoader(data, batch_sampler=fresh), "cpu").load_state_dict(state)
    assert list(fresh) == [b[0].tolist() for b in iterator]


def test_f25_graft_data_loader_has_dataloader_attributes():
    """GraftDataLoader answers dataset, batch_size, num_workers, batch_sampler, collate_fn."""
    from graft_select.accelerate import GraftDataLoader

    data = TensorDataset(torch.arange(40))
    sampler = GraftBatchSampler(40, 8)
    inner = DataLoader(data, batch_sampler=sampler)
    loader = GraftDataLoader(inner, torch.device("cpu"))
    assert len(loader.dataset) == 40 and loader.batch_size == 8
    assert loader.num_workers == 0 and loader.batch_sampler is sampler
    assert loader.collate_fn is inner.collate_fn
    with pytest.raises(AttributeError):
        loader.no_such_attribute  # noqa: B018


def test_prepare_data_loader_refuses_split_batches():
    """An Accelerator with split_batches=True (each batch split across processes) was
    ignored: every process trained whole batches, the run half its steps. Refused."""
    from types import SimpleNamespace

    pytest.importorskip("accelerate")
    from graft_select.accelerate import prepare_data_loader

    accelerator = SimpleNamespace(split_batches=True, device=torch.device("cpu"))
    loader = DataLoader(TensorDataset(torch.arange(40)), batch_sampler=GraftBatchSampler(40, 8))
    with pytest.raises(ValueError, match=r"split_batches=True.*split_batches=False"):
        prepare_data_loader(accelerator, loader)


def test_f26_skip_first_batches_resumes_exactly(accelerate_runs):
    """skip_first_batches, after load_state or alone, trains exactly the remaining batches."""
    result = _result(accelerate_runs, "skip_batches")
    assert result["dataset"] == 512 and result["num_workers"] == 0
    assert result["after_load"] == result["expected_rest"] and len(result["after_load"]) == 3
    assert result["observed_third"]  # observe() pairs with the batch trained, not a skipped one


def test_f26_skip_first_batches_at_another_position_raises():
    """A skip that disagrees with the sampler's restored position raises with both."""
    accelerate = pytest.importorskip("accelerate.data_loader")
    sampler = GraftBatchSampler(100, 10, fraction=1.0)
    iterator = iter(sampler)
    next(iterator), next(iterator), next(iterator)
    fresh = GraftBatchSampler(100, 10, fraction=1.0)
    fresh.load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match=r"skip_first_batches\(loader, 2\).*30 samples"):
        list(accelerate.SkipBatchSampler(fresh, skip_batches=2))


# --------------------------------------------------------- 15: another batch size


def _trained(sampler, count=None):
    iterator = iter(sampler)
    return [batch for _, batch in zip(range(count) if count else iter(int, 1), iterator)]


def test_f15_resume_into_another_batch_size():
    """Saved at batch_size=5 after 2 batches, resumed at 10: the remaining samples exactly."""
    sampler = GraftBatchSampler(60, 5, fraction=1.0, seed=3)
    plan = sampler._plan().tolist()
    _trained(sampler, 2)
    state = sampler.state_dict()
    assert (state["batch_size"], state["batches_yielded"]) == (5, 2)
    fresh = GraftBatchSampler(60, 10, fraction=1.0, seed=3)
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert [i for batch in rest for i in batch] == plan[10:]
    assert all(len(batch) == 10 for batch in rest)


def test_f15_resume_at_a_sample_between_batches_and_again():
    """From 5 to 4 (10 samples: not a batch boundary) and back; each resume is exact."""
    sampler = GraftBatchSampler(60, 5, fraction=1.0, seed=3)
    plan = sampler._plan().tolist()
    _trained(sampler, 2)
    second = GraftBatchSampler(60, 4, fraction=1.0, seed=3)
    second.load_state_dict(sampler.state_dict())
    took = [i for batch in _trained(second, 3) for i in batch]
    assert took == plan[10:22]
    third = GraftBatchSampler(60, 5, fraction=1.0, seed=3)
    third.load_state_dict(second.state_dict())
    assert [i for batch in third for i in batch] == plan[22:]


def test_f15_resume_into_another_world_size():
    """Saved by 2 ranks after 2 batches of 5 each, resumed on 1: plan[20:] exactly."""
    ranks = [GraftBatchSampler(60, 5, fraction=1.0, seed=3, num_replicas=2, rank=r)
             for r in range(2)]
    plan = ranks[0]._plan().tolist()
    for sampler in ranks:
        _trained(sampler, 2)
    state = ranks[0].state_dict()
    assert state["num_replicas"] == 2
    single = GraftBatchSampler(60, 5, fraction=1.0, seed=3)
    single.load_state_dict(state)
    assert [i for batch in single for i in batch] == plan[20:]


# -------------------------------------------------------- 16, 41, 42: sketch mismatch


def _sketched_state(**kwargs):
    sampler = GraftBatchSampler(50, 10, **kwargs)
    sampler.observe(torch.arange(50), embeddings=torch.randn(50, 16))
    return sampler.state_dict()


def test_f16_sketched_store_into_other_seed_raises():
    """A sketched store loaded into a sampler with another seed raises, naming 'seed'."""
    state = _sketched_state(sketch_width=4, seed=0)
    with pytest.raises(ValueError, match=r"sketched with seed=0.*seed=1"):
        GraftBatchSampler(50, 10, sketch_width=4, seed=1).load_state_dict(state)
    GraftBatchSampler(50, 10, sketch_width=4, seed=0).load_state_dict(state)  # same: fine


def test_f16_unsketched_store_into_other_seed_loads():
    """Without a sketch the seed does not shape the feedback: loading it is fine."""
    GraftBatchSampler(50, 10, seed=1).load_state_dict(_sketched_state(seed=0))


def test_f41_load_wider_sketch_into_narrower_raises():
    """sketch_width 8 loaded into 4 raises, naming sketch_width (not '32 columns')."""
    with pytest.raises(ValueError, match="sketch_width=8, but this sampler has sketch_width=4"):
        GraftBatchSampler(50, 10, sketch_width=4).load_state_dict(
            _sketched_state(sketch_width=8))


def test_f42_load_narrower_sketch_into_wider_raises():
    """sketch_width 4 loaded into 8 (or an unsketched store into a sketching sampler) raises."""
    with pytest.raises(ValueError, match="sketch_width=4, but this sampler has sketch_width=8"):
        GraftBatchSampler(50, 10, sketch_width=8).load_state_dict(
            _sketched_state(sketch_width=4))
    with pytest.raises(ValueError, match=r"unsketched .*sketch_width=8"):
        GraftBatchSampler(50, 10, sketch_width=8).load_state_dict(_sketched_state())


# ----------------------------------------------------------- 21: closed-form totals


def test_f21_total_batches_closed_form():
    """total_batches(10**8) is a closed form, equal to the per-epoch sum where both run."""
    sampler = GraftBatchSampler(100, 10, fraction=0.5, warm_start_epochs=3)
    with _deadline(20):
        total = sampler.total_batches(10**8)
    assert total == 3 * 10 + (10**8 - 3) * 5
    assert sampler.total_batches(7) == sum(sampler._epoch_batches(e) for e in range(7))
    list(sampler)  # a planned epoch counts with its plan
    sampler.observe(torch.arange(100), embeddings=torch.randn(100, 3))
    sampler.set_epoch(4)
    len(sampler)
    assert sampler.total_batches(9) == sum(sampler._epoch_batches(e) for e in range(9))


@pytest.mark.parametrize("pool_factor", [1.0, 2.0])
def test_total_batches_before_an_observe_only_start(pool_factor):
    """Without a warm start the first refits refresh never-observed samples, a
    budget's worth per epoch: total_batches() before training counts those epochs.
    With pool_factor=1 and fraction * chunk_size < 1 it used to count the
    one-sample-per-chunk rule instead (126 batches for the 12 the run yields), so a
    learning-rate schedule sized from it barely annealed."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(997, 20, generator=generator)
    y = torch.randint(0, 3, (997,), generator=generator)
    head = torch.nn.Linear(20, 3)
    sampler = GraftBatchSampler(997, 7, fraction=0.01, seed=0, targets=y, refit_every=1,
                                warm_start_epochs=0, pool_factor=pool_factor)
    planned = sampler.total_batches(6)
    yielded = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the never-observed samples' warning
        for epoch in range(6):
            sampler.set_epoch(epoch)
            for batch in sampler:
                batch = torch.as_tensor(batch)
                yielded += 1
                with torch.no_grad():
                    sampler.observe(batch, embeddings=X[batch], logits=head(X[batch]))
    assert planned == yielded == 12


def test_f21_lightning_step_estimate_is_fast():
    """Lightning's estimated_stepping_batches with a huge max_epochs stops at max_steps."""
    pl = pytest.importorskip("lightning.pytorch")
    from graft_select.lightning import GraftCallback

    def estimate(**kwargs):
        callback = GraftCallback(GraftBatchSampler(100, 10, fraction=0.5, warm_start_epochs=1))
        trainer = pl.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, accelerator="cpu", devices=1,
                             **kwargs)
        callback.setup(trainer, torch.nn.Linear(3, 2), "fit")
        try:
            return trainer.estimated_stepping_batches
        finally:
            callback.teardown(trainer, None, "fit")

    with _deadline(20):
        assert estimate(max_epochs=10**8, max_steps=5) == 5
    assert estimate(max_epochs=4) == 10 + 3 * 5


# ------------------------------------------------- 34-37: a loader without the sampler


def test_f34_callback_with_plain_loader_names_cause(lightning_runs):
    """GraftCallback with a plain DataLoader names the loader's BatchSampler and the fix."""
    error = _error(lightning_runs, "plain_loader")
    assert "not the batch sampler of the training DataLoader" in error
    assert "BatchSampler" in error and "batch_sampler=sampler" in error
    assert "indices" not in error


def test_f35_callback_with_other_graft_sampler_names_cause(lightning_runs):
    """A loader over another GraftBatchSampler is named as such."""
    error = _error(lightning_runs, "other_sampler")
    assert "another GraftBatchSampler" in error and "indices" not in error


def test_f36_reloaded_loader_names_reload(lightning_runs):
    """reload_dataloaders_every_n_epochs building a new sampler is named, at epoch 1."""
    error = _error(lightning_runs, "reloaded")
    assert "epoch 1" in error and "reload_dataloaders_every_n_epochs" in error
    assert "indices" not in error


def test_f37_resume_without_callback_state_names_checkpoint(lightning_runs):
    """Resuming a checkpoint saved without the callback names the checkpoint as the cause."""
    error = _error(lightning_runs, "resumed_without_state")
    assert "holds no GraftCallback state" in error and "indices" not in error


_SKIP_WITH_ACCUMULATION = """
import torch
from accelerate import Accelerator, skip_first_batches
from torch.utils.data import DataLoader, TensorDataset
from graft_select.accelerate import prepare_data_loader
from graft_select.sampler import GraftBatchSampler

accelerator = Accelerator(cpu=True, gradient_accumulation_steps={steps})
sampler = GraftBatchSampler(40, 8, fraction=1.0)
loader = prepare_data_loader(accelerator, DataLoader(TensorDataset(torch.arange(40)),
                                                     batch_sampler=sampler))
state = sampler.state_dict()
state["batches_yielded"] = 2
sampler.load_state_dict(state)
try:
    rest = [batch[0].tolist() for batch in skip_first_batches(loader, 2)]
    print("TRAINED", len(rest))
except ValueError as error:
    print("RAISED", error)
"""


@pytest.mark.parametrize("steps", [1, 3])
def test_f26_skip_first_batches_with_accumulation_raises(steps):
    """skip_first_batches returns a plain DataLoader, which drops the GraftDataLoader's
    end-of-pass mark: with gradient accumulation the epoch's last optimizer step would
    be lost, so it raises there; without accumulation on the CPU it trains the rest."""
    pytest.importorskip("accelerate")
    result = subprocess.run([sys.executable, "-c", _SKIP_WITH_ACCUMULATION.format(steps=steps)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if steps == 1:
        assert "TRAINED 3" in result.stdout
    else:
        assert "RAISED" in result.stdout
        assert "gradient_accumulation_steps=3" in result.stdout
        assert "iterate the GraftDataLoader without skip_first_batches" in result.stdout


def test_feedback_on_several_ranks_without_a_process_group_raises():
    """Two ranks (num_replicas=2) without torch.distributed: with a features array alone
    their plans agree and split each epoch; observed feedback cannot be merged, so the
    refit raises and says not to observe there (the message used to advise passing the
    features array the sampler already had)."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=generator)
    y = torch.randint(0, 3, (200,), generator=generator)

    def samplers():
        return [GraftBatchSampler(200, 16, fraction=0.3, seed=0, targets=y, refit_every=1,
                                  warm_start_epochs=1, num_replicas=2, rank=rank, features=X)
                for rank in range(2)]

    ranks = samplers()
    for epoch in range(3):
        shares = []
        for sampler in ranks:
            sampler.set_epoch(epoch)
            shares.append({int(i) for batch in sampler for i in batch})
        assert not shares[0] & shares[1]
    ranks = samplers()
    for sampler in ranks:
        sampler.set_epoch(0)
        rows = torch.as_tensor([int(i) for batch in sampler for i in batch])
        sampler.observe(rows, embeddings=X[rows], logits=torch.zeros(len(rows), 3))
    ranks[0].set_epoch(1)
    with pytest.raises(ValueError, match=r"num_replicas=2 but no torch.distributed.*do not "
                                         r"call observe\(\)"):
        len(ranks[0])
