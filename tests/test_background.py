"""Background refits: the same plan as a synchronous refit from the same snapshot."""

import os
import threading

import pytest
from conftest import spawn_ranks

torch = pytest.importorskip("torch")

from graft_select import _planner  # noqa: E402
from graft_select._store import FeedbackStore  # noqa: E402
from graft_select.sampler import GraftBatchSampler  # noqa: E402

N, D, C, B = 600, 6, 4, 20
WARM, EVERY = 2, 2  # refits at epochs 2, 4, 6: their snapshots at 1, 3, 5


def _feedback(indices, epoch):
    """Feedback of the samples ``indices`` in ``epoch``: a fixed function of both."""
    g = torch.Generator().manual_seed(1000 + epoch)
    emb = torch.randn(N, D, generator=g)[indices]
    logits = torch.randn(N, C, generator=g)[indices] * (1 + epoch)
    targets = torch.randint(0, C, (N,), generator=torch.Generator().manual_seed(7))[indices]
    return dict(embeddings=emb, logits=logits, targets=targets)


def _sampler(background, **kwargs):
    params = dict(fraction=0.3, seed=3, warm_start_epochs=WARM, refit_every=EVERY)
    params.update(kwargs)
    return GraftBatchSampler(N, B, background=background, **params)


def _train(sampler, epoch, batches=None, stop=None):
    """One epoch (or ``stop`` batches of the pass ``batches``), each batch observed; the
    indices trained."""
    trained = []
    batches = iter(sampler) if batches is None else batches
    for batch in batches:
        idx = torch.as_tensor(batch)
        sampler.observe(idx, **_feedback(idx, epoch))
        trained.append(idx)
        if stop is not None and len(trained) == stop:
            break
    return torch.cat(trained) if trained else torch.zeros(0, dtype=torch.int64)


def _synchronous_plan(snapshot, epoch, **kwargs):
    """The plan of ``epoch`` refitted on the training thread from a state saved at a snapshot."""
    state = dict(snapshot, pending_refit=None)  # the feedback only, not the refit's result
    sampler = _sampler(False, **kwargs)
    sampler.load_state_dict(state)
    sampler.set_epoch(epoch)
    return sampler._plan(), sampler.last_refit


class TestSamePlan:
    def test_background_equals_synchronous_from_the_snapshot(self):
        """Each background refit's plan is the synchronous refit's from its snapshot."""
        sampler = _sampler(True)
        for epoch in range(7):
            sampler.set_epoch(epoch)
            len(sampler)  # plans the epoch: the snapshot of the next refit, if one is due
            if epoch + 1 in (4, 6):
                snapshot = sampler.state_dict()
            if epoch in (4, 6):
                plan, report = _synchronous_plan(snapshot, epoch)
                assert torch.equal(sampler._plan(), plan)
                assert sampler.last_refit.background and not report.background
                assert sampler.last_refit.gradient_error == report.gradient_error
            _train(sampler, epoch)

    def test_synchronous_refit_reads_the_refit_epoch(self):
        """background=False refits from the feedback of the epoch before, as before."""
        background, synchronous = _sampler(True), _sampler(False)
        plans = []
        for sampler in (background, synchronous):
            for epoch in range(5):
                sampler.set_epoch(epoch)
                _train(sampler, epoch)
            plans.append(sampler._plan())
        assert background.last_refit.background and not synchronous.last_refit.background
        assert not torch.equal(plans[0], plans[1])  # one epoch's feedback apart

    def test_deterministic(self):
        """Two background runs with one seed give the same plans."""
        plans = []
        for _ in range(2):
            sampler = _sampler(True)
            for epoch in range(7):
                sampler.set_epoch(epoch)
                plans.append(_train(sampler, epoch))
        assert all(torch.equal(a, b) for a, b in zip(plans[:7], plans[7:]))

    def test_observations_after_the_snapshot_are_kept(self):
        """Rows observed while the refit runs are recorded once it has read the store."""
        sampler = _sampler(True)
        for epoch in range(4):
            sampler.set_epoch(epoch)
            trained = _train(sampler, epoch)
        assert sampler.last_refit.epoch == 2
        last_seen = sampler.state_dict()["last_seen"]
        assert bool((last_seen[trained] == 3).all())


class TestResume:
    @pytest.mark.parametrize("background", [True, False])
    def test_resume_while_a_refit_is_pending(self, background):
        """A state saved mid-epoch with a refit pending resumes to the same plans."""
        reference = _sampler(True)
        for epoch in range(3):
            reference.set_epoch(epoch)
            _train(reference, epoch)
        reference.set_epoch(3)
        batches = iter(reference)
        _train(reference, 3, batches, stop=4)  # the refit of epoch 4 runs (or ran) meanwhile
        state = reference.state_dict()
        assert state["pending_refit"]["epoch"] == 4
        expected = _train(reference, 3, batches)
        plans = []
        for epoch in range(4, 7):
            reference.set_epoch(epoch)
            plans.append(_train(reference, epoch))

        resumed = _sampler(background)
        resumed.load_state_dict(state)
        assert torch.equal(_train(resumed, 3), expected)
        resumed.set_epoch(4)
        assert torch.equal(_train(resumed, 4), plans[0])
        if background:  # the later refits take the same snapshots
            for epoch, plan in zip((5, 6), plans[1:]):
                resumed.set_epoch(epoch)
                assert torch.equal(_train(resumed, epoch), plan)

    def test_auto_keeps_the_saved_decision(self):
        """background='auto' resumes with the saved run's decision."""
        sampler = _sampler(True)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            _train(sampler, epoch)
        state = sampler.state_dict()
        assert state["background"] is True
        resumed = _sampler("auto")
        resumed.load_state_dict(state)
        assert resumed._planner.background_ is True

    def test_bad_pending_state_raises(self):
        """A malformed pending_refit names the key and leaves the sampler unchanged."""
        state = _sampler(True).state_dict()
        state["pending_refit"] = {"epoch": 4}
        with pytest.raises(ValueError, match=r"'pending_refit'.*must be None or a dict"):
            _sampler(True).load_state_dict(state)


class TestThreadAndErrors:
    def test_error_surfaces_on_the_main_thread(self, monkeypatch):
        """An error raised in the refit's thread is raised by the refit epoch's len()."""
        sampler = _sampler(True)
        where = []

        def failing(draft):
            where.append(threading.current_thread() is threading.main_thread())
            raise FloatingPointError("boom")

        monkeypatch.setattr(sampler._planner, "_select", failing)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            _train(sampler, epoch)
        sampler.set_epoch(2)
        with pytest.raises(FloatingPointError, match="boom") as info:
            len(sampler)
        assert where == [False]
        assert "background refit of epoch 2" in "".join(info.value.__notes__)

    def test_error_raised_again_at_every_call(self, monkeypatch):
        """A failed refit's error is not lost after a first raise: a checkpoint that
        met it first, a second state_dict() and the refit epoch's len() all raise it
        (they raised a TypeError on a None result)."""
        sampler = _sampler(True)

        def failing(draft):
            raise FloatingPointError("boom")

        monkeypatch.setattr(sampler._planner, "_select", failing)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            _train(sampler, epoch)
        for _ in range(2):
            with pytest.raises(FloatingPointError, match="boom") as info:
                sampler.state_dict()
        assert "".join(info.value.__notes__).count("background refit of epoch 2") == 1
        sampler.set_epoch(2)
        with pytest.raises(FloatingPointError, match="boom"):
            len(sampler)

    def test_thread_pools_within_the_cores(self, monkeypatch):
        """During a background refit every native thread pool runs at one thread (none
        exceeds the cores); the limits come back after it."""
        from threadpoolctl import threadpool_info

        seen = []
        fit = _planner.fit_selector

        def recording(*args, **kwargs):
            seen.append((threading.current_thread() is threading.main_thread(),
                         [pool["num_threads"] for pool in threadpool_info()]))
            return fit(*args, **kwargs)

        monkeypatch.setattr(_planner, "fit_selector", recording)
        before = [pool["num_threads"] for pool in threadpool_info()]
        sampler = _sampler(True)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            _train(sampler, epoch)
        assert seen and not seen[0][0]  # the refit ran in the background thread
        assert all(n == 1 for n in seen[0][1]) and len(seen[0][1]) == len(before)
        assert [pool["num_threads"] for pool in threadpool_info()] == before

    def test_first_epoch_refits_on_the_training_thread(self):
        """Nothing was observed before epoch 1's plan's snapshot: that refit is synchronous."""
        sampler = _sampler(True, warm_start_epochs=1, refit_every=1)
        sampler.set_epoch(0)
        _train(sampler, 0)
        sampler.set_epoch(1)
        len(sampler)
        assert not sampler.last_refit.background

    def test_callable_features_refuse_background(self):
        """background=True with a features callable raises, naming the fix."""
        with pytest.raises(ValueError, match="'features' is a callable"):
            _sampler(True, features=lambda idx: None)

    @pytest.mark.parametrize("value", ["yes", 1, None])
    def test_bad_value_raises(self, value):
        """background other than 'auto', True or False raises a ValueError naming it."""
        with pytest.raises(ValueError, match="'background' parameter of GraftBatchSampler"):
            _sampler(value)

    def test_report_says_hidden_and_waited(self):
        """A background refit's report splits its seconds into hidden and waited."""
        sampler = _sampler(True)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            _train(sampler, epoch)
        report = sampler.last_refit
        assert report.background and report.hidden_seconds >= 0 and report.waited_seconds >= 0
        assert report.hidden_seconds + report.waited_seconds <= report.seconds + 1e-9


class _Gate:
    def __init__(self):
        self.finished = False

    def done(self):
        return self.finished

    def wait(self):
        self.finished = True
        return 0.0


class TestHold:
    def _batches(self):
        for epoch in range(3):
            for start in range(0, N, 50):
                idx = torch.arange(start, start + 50)
                yield idx, _feedback(idx, epoch), epoch

    def test_tables_unchanged_while_held(self):
        """Under hold the tables and last-seen epochs stay as they were; then they catch up."""
        held, plain = FeedbackStore(N), FeedbackStore(N)
        batches = list(self._batches())
        for store in (held, plain):
            for idx, values, epoch in batches[:12]:
                store.stage(idx, dict(values), epoch)
        gate = _Gate()
        held.hold(gate)
        before = {name: rows.clone() for name, rows in held._rows.items()}
        seen = held._last_seen.clone()
        for store in (held, plain):
            for idx, values, epoch in batches[12:]:
                store.stage(idx, dict(values), epoch)
        assert all(torch.equal(held._rows[name], rows) for name, rows in before.items())
        assert torch.equal(held._last_seen, seen)
        gate.finished = True
        assert all(torch.equal(held[name], plain[name]) for name in plain)
        assert torch.equal(held.last_seen, plain.last_seen)

    def test_reading_waits_for_the_gate(self):
        """Reading the store under hold waits for the gate first."""
        store = FeedbackStore(N)
        idx, values, epoch = next(self._batches())
        gate = _Gate()
        store.hold(gate)
        store.stage(idx, dict(values), epoch)
        assert bool((store.last_seen[idx] == 0).all()) and gate.finished


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def _ranks_worker(rank, world, port, out_dir):
    """Each rank observes its share; background plans, their synchronous twins, schedules."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {"plans": [], "twins": []}
        sampler = _sampler(True)
        for epoch in range(5):
            sampler.set_epoch(epoch)
            plan = sampler._plan()
            if epoch == 3:
                snapshot = sampler.state_dict()
            if epoch == 4:
                out["twins"].append(_synchronous_plan(snapshot, 4)[0])
            out["plans"].append(plan)
            _train(sampler, epoch)
        # the overhead budget, with background refits and a clock that differs by rank
        budget = _sampler(True, refit_every=None)
        budget._planner.schedule.clock = _Clock() if rank == 0 else (lambda: 1e-3 * rank)
        for epoch in range(5):
            budget.set_epoch(epoch)
            _train(budget, epoch)
        out["schedule"] = budget.state_dict()["refit_epochs"], budget.last_refit.next_refit_epoch
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks(tmp_path):
    """On 2 gloo ranks: one plan per epoch, the synchronous twin's, one schedule."""
    out = spawn_ranks(_ranks_worker, 2, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(out[0]["plans"], out[1]["plans"]))
    for o in out:
        assert torch.equal(o["twins"][0], o["plans"][4])
    assert out[0]["schedule"] == out[1]["schedule"]


def test_overlapping_holds_restore_the_limits():
    """A refit's BLAS hold and a nested single_threaded block restore the limits they found."""
    from threadpoolctl import threadpool_info

    from graft_select._backend import single_threaded, single_threaded_blas

    def blas():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas()
    release = single_threaded_blas()
    with single_threaded():
        assert all(n == 1 for n in blas())
    assert all(n == 1 for n in blas())  # the hold outlives the block
    release()
    release()  # a second call changes nothing
    assert blas() == before


def test_copy_with_a_refit_pending():
    """A deep copy taken while a background refit is pending plans the refit epoch alike."""
    import copy

    sampler = _sampler(True)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        _train(sampler, epoch)
    sampler.set_epoch(3)
    len(sampler)  # the refit of epoch 4 starts
    twin = copy.deepcopy(sampler)
    for s in (sampler, twin):
        _train(s, 3)
        s.set_epoch(4)
    assert torch.equal(sampler._plan(), twin._plan())
    assert twin.last_refit.background and twin.last_refit.epoch == 4


def test_exit_waits_for_a_refit_in_flight(tmp_path):
    """A process that ends while a background refit runs (the last epoch starts the
    refit of an epoch that never comes) waits for it and exits cleanly: a daemon
    thread stopped inside torch at exit aborted the interpreter (status 134)."""
    import subprocess
    import sys
    import textwrap

    marker = tmp_path / "finished"
    script = textwrap.dedent(f"""
        import time, types, torch
        from graft_select._background import BackgroundRefit

        def work(draft):
            time.sleep(0.5)  # still running when the main thread returns
            a = torch.randn(256, 256)
            for _ in range(20):
                a = torch.tanh(a @ a.T / 256)
            open({str(marker)!r}, "w").write("done")
            return None

        BackgroundRefit(types.SimpleNamespace(fit_epoch=1), work)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "terminate called" not in done.stderr
    assert marker.read_text() == "done"
