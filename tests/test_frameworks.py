"""GraftBatchSampler in the stacks people train with: one test per supported stack.

Lightning and accelerate runs are real (multi-)process runs of the scripts in
tests/frameworks/, each under a timeout.
"""

import io
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402

from graft_select.sampler import GraftBatchSampler  # noqa: E402

SCRIPTS = Path(__file__).parent / "frameworks"
N, D, C = 600, 6, 4


def _run(args, tmp_path, timeout=300, check=True):
    result = subprocess.run([sys.executable, *args, str(tmp_path)], capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-4000:])
    return result


def _load(path):
    return torch.load(path, weights_only=False)


def _feedback(idx):
    idx = torch.as_tensor(idx)
    columns = torch.arange(1, D + 1, dtype=torch.float32)
    emb = torch.sin(idx[:, None].float() * columns / 7)
    logits = torch.cos(idx[:, None].float() * columns[:C] / 5)
    return emb, logits, idx % C


def _sampler(**kwargs):
    return GraftBatchSampler(N, **{"batch_size": 32, "fraction": 0.3, "seed": 1, **kwargs})


class TestIterationSemantics:
    def test_consumer_stopping_at_len_gets_full_passes(self):
        """A loop that stops after exactly len() batches gets len() batches every pass."""
        sampler = _sampler(fraction=1.0)
        loader = DataLoader(TensorDataset(torch.arange(N)), batch_sampler=sampler)
        counts = []
        for _ in range(3):
            iterator = iter(loader)
            counts.append(sum(1 for _ in zip(range(len(loader)), iterator)))
        assert counts == [len(loader)] * 3

    def test_peek_then_full_pass(self):
        """next(iter(dl)) followed by a full pass yields the whole epoch."""
        sampler = _sampler()
        loader = DataLoader(TensorDataset(torch.arange(N)), batch_sampler=sampler)
        next(iter(loader))
        assert sum(len(b[0]) for b in loader) == N

    def test_same_epoch_keeps_resume(self):
        """set_epoch with the loaded epoch keeps the resume position; another epoch drops it."""
        sampler = _sampler()
        sampler.observe(torch.arange(N), embeddings=_feedback(torch.arange(N))[0])
        sampler.set_epoch(2)
        iterator = iter(sampler)
        first = [next(iterator) for _ in range(2)]
        rest = list(iterator)
        fresh = _sampler()
        fresh.load_state_dict({**sampler.state_dict(), "batches_yielded": 2, "pass_done": False})
        fresh.set_epoch(2)
        assert list(fresh) == rest
        assert list(fresh)[:2] == first  # the next pass starts at batch 0

    def test_resume_counts_consumed_batches_with_workers(self):
        """With a prefetching DataLoader the state counts the batches the loop observed."""
        sampler = _sampler()
        data = TensorDataset(torch.arange(N))
        loader = DataLoader(data, batch_sampler=sampler, num_workers=2, prefetch_factor=2)
        for step, (index,) in enumerate(loader):
            emb, logits, targets = _feedback(index)
            sampler.observe(index, embeddings=emb, logits=logits, targets=targets)
            if step == 2:
                break
        assert sampler.state_dict()["batches_yielded"] == 3

    def test_sampler_as_data_source_is_a_type_error(self):
        """Lightning's re-instantiation GraftBatchSampler(DistributedSampler, ...) is refused."""
        inner = DistributedSampler(range(N), num_replicas=2, rank=0)
        with pytest.raises(TypeError, match="use_distributed_sampler=False"):
            GraftBatchSampler(inner, batch_size=32, drop_last=False)


class TestObserveWithoutModelChanges:
    def test_watch_and_observe_match_explicit_form(self):
        """watch(model) + observe() records what the explicit form records."""
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.ReLU(),
                                    torch.nn.Linear(8, C))
        X = torch.randn(N, D)
        y = torch.randint(0, C, (N,))
        implicit, explicit = _sampler(targets=y), _sampler()
        implicit.watch(model)
        loader = DataLoader(TensorDataset(X, y), batch_sampler=implicit)
        for x, _ in loader:
            model(x)
            implicit.observe()
        for batch in explicit:
            index = torch.tensor(batch)
            embedding = model[:2](X[index])
            explicit.observe(index, embeddings=embedding, logits=model[2](embedding),
                             targets=y[index])
        a, b = implicit.state_dict()["store"], explicit.state_dict()["store"]
        assert a.keys() == b.keys() == {"embeddings", "residuals"}
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    def test_observe_without_indices_needs_a_batch(self):
        """observe() without indices outside an iteration says what to do."""
        with pytest.raises(ValueError, match="pass indices="):
            _sampler().observe(embeddings=torch.randn(3, D))


class TestTorchdata:
    @pytest.mark.parametrize("num_workers", [0, 2])
    def test_mid_epoch_state_holds_all_feedback_and_resumes(self, num_workers):
        """A mid-epoch StatefulDataLoader state holds every observation; resume is exact."""
        stateful = pytest.importorskip("torchdata.stateful_dataloader")
        data = TensorDataset(torch.arange(N))
        kwargs = {"num_workers": num_workers}

        def observe(sampler, index):
            emb, logits, targets = _feedback(index)
            sampler.observe(index, embeddings=emb, logits=logits, targets=targets)

        sampler = _sampler()
        sampler.observe(torch.arange(N), embeddings=_feedback(torch.arange(N))[0] * 0.5)
        sampler.set_epoch(1)
        loader = stateful.StatefulDataLoader(data, batch_sampler=sampler, **kwargs)
        iterator = iter(loader)
        for _ in range(3):
            observe(sampler, next(iterator)[0])
        buffer = io.BytesIO()
        torch.save(loader.state_dict(), buffer)
        seen_then = sampler.state_dict()["last_seen"]
        rest = []
        for (index,) in iterator:
            observe(sampler, index)
            rest.append(index.tolist())
        sampler.set_epoch(2)
        next_epoch = [b[0].tolist() for b in loader]

        fresh = _sampler()
        loader2 = stateful.StatefulDataLoader(data, batch_sampler=fresh, **kwargs)
        buffer.seek(0)
        loader2.load_state_dict(torch.load(buffer, weights_only=False))
        rest2 = []
        for (index,) in loader2:
            if not rest2:
                # every observation so far
                assert torch.equal(fresh.state_dict()["last_seen"], seen_then)
            observe(fresh, index)
            rest2.append(index.tolist())
        fresh.set_epoch(2)
        assert rest2 == rest
        assert [b[0].tolist() for b in loader2] == next_epoch


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One 4-epoch single-process Lightning run, shared by the tests below."""
    out = tmp_path_factory.mktemp("lightning")
    _run([str(SCRIPTS / "lightning_run.py"), "single"], out)
    return _load(out / "single-rank0.pt")


class TestLightning:
    def test_every_epoch_trains(self, single):
        """Every epoch runs batches, the warm-start epoch the full data (set_epoch arrives)."""
        epochs = single["epochs"]
        assert [epochs[e]["samples"] for e in range(4)] == [1797, 539, 539, 539]

    def test_len_matches_steps_with_warm_start(self, single):
        """num_training_batches and estimated_stepping_batches match the real steps."""
        assert all(e["batches"] == e["num_training_batches"] for e in single["epochs"].values())
        assert single["planned_steps"] == single["global_step"] == 57 + 3 * 17
        assert single["final_lr"] < 1e-3  # OneCycleLR reaches its end

    def test_feedback_recorded_from_unmodified_module(self, single):
        """The callback's hook feeds the refits gradient proxies (a gradient error exists)."""
        assert all(single["epochs"][e]["gradient_error"] is not None for e in (1, 2, 3))

    def test_checkpoint_resume_keeps_feedback(self, single, tmp_path):
        """Resuming from a checkpoint gives the plans of the uninterrupted run."""
        _run([str(SCRIPTS / "lightning_run.py"), "resume"], tmp_path)
        resumed = _load(tmp_path / "resume-rank0.pt")
        for epoch in (2, 3):
            assert resumed["epochs"][epoch]["plan"] == single["epochs"][epoch]["plan"]
        assert resumed["global_step"] == single["global_step"]

    def test_ddp_two_processes(self, tmp_path):
        """DDP on 2 gloo ranks: one plan, disjoint equal shares (up to padding), all trained."""
        _run([str(SCRIPTS / "lightning_run.py"), "ddp"], tmp_path, timeout=400)
        ranks = [_load(tmp_path / f"ddp-rank{r}.pt") for r in range(2)]
        for epoch in range(4):
            a, b = (r["epochs"][epoch] for r in ranks)
            assert a["plan"] == b["plan"]
            assert len(a["shard"]) == len(b["shard"]) == (len(a["plan"]) + 1) // 2
            assert set(a["shard"]) | set(b["shard"]) == set(a["plan"])
            assert len(set(a["shard"]) & set(b["shard"])) <= 1  # DistributedSampler padding
        assert ranks[0]["planned_steps"] == ranks[0]["global_step"] == 29 + 3 * 9

    def test_ddp_default_distributed_sampler_fails_loudly(self, tmp_path):
        """use_distributed_sampler=True stops the run at setup with the fix in the message."""
        result = _run([str(SCRIPTS / "lightning_run.py"), "ddp-default"], tmp_path,
                      timeout=400, check=False)
        assert result.returncode != 0
        assert "use_distributed_sampler=False" in result.stderr
        assert not list(tmp_path.glob("*.pt"))


def _torchrun(mode, tmp_path):
    return _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 str(SCRIPTS / "accelerate_run.py"), mode], tmp_path, timeout=400)


class TestAccelerate:
    def test_prepare_two_processes_raises_on_every_rank(self, tmp_path):
        """accelerator.prepare(loader) on 2 processes is detected on every rank, with the fix."""
        pytest.importorskip("accelerate")
        _torchrun("prepare", tmp_path)
        for rank in range(2):
            result = _load(tmp_path / f"prepare-rank{rank}.pt")
            assert result["world"] == 2
            assert "prepare_data_loader" in result["error"]

    def test_helper_two_processes(self, tmp_path):
        """prepare_data_loader, 2 processes: disjoint equal shares of one plan; epochs advance."""
        pytest.importorskip("accelerate")
        _torchrun("helper", tmp_path)
        ranks = [_load(tmp_path / f"helper-rank{r}.pt") for r in range(2)]
        plans = []
        for epoch in range(3):
            a, b = (r["epochs"][epoch] for r in ranks)
            assert a["plan"] == b["plan"]
            assert len(a["shard"]) == len(b["shard"]) == a["samples"] == b["samples"]
            assert set(a["shard"]) | set(b["shard"]) == set(a["plan"])
            assert len(set(a["shard"]) & set(b["shard"])) <= 1
            plans.append(a["plan"])
        assert ranks[0]["epochs"][0]["batches"] == 29 and ranks[0]["epochs"][1]["batches"] == 9
        assert plans[1] != plans[2] and ranks[0]["epochs"][2]["gradient_error"] is not None

    def test_save_state_two_processes_resumes_exactly(self, tmp_path):
        """accelerator.save_state() writes the main process's state only, and each rank
        loaded it: rank 1 lost the feedback it observed since the last refit, and the
        next refit's plan differed (55-56 of 60 samples in common). The ranks now merge
        their feedback when the state is taken: every rank resumes the rest of the
        epoch and the following refitted epoch exactly as the uninterrupted run."""
        pytest.importorskip("accelerate")
        _torchrun("resume-full", tmp_path)
        _torchrun("resume-load", tmp_path)
        assert sorted(p.name for p in (tmp_path / "checkpoint").glob("custom_checkpoint_*")) \
            == ["custom_checkpoint_0.pkl"]
        for rank in range(2):
            full = _load(tmp_path / f"resume-full-rank{rank}.pt")["trained"]
            resumed = _load(tmp_path / f"resume-load-rank{rank}.pt")["trained"]
            assert sorted(resumed) == [2, 3]
            assert resumed[2] == full[2][3:]
            assert resumed[3] == full[3]

    def test_single_process(self, tmp_path):
        """1 process: prepare() is refused with the fix; the helper keeps set_epoch and resume."""
        pytest.importorskip("accelerate")
        _run([str(SCRIPTS / "accelerate_run.py"), "prepare"], tmp_path)
        assert "DataLoaderShard" in _load(tmp_path / "prepare-rank0.pt")["error"]
        _run([str(SCRIPTS / "accelerate_run.py"), "single-epoch"], tmp_path)
        result = _load(tmp_path / "single-epoch-rank0.pt")
        assert result["epoch"] == 3 and result["position"] == 5
        assert result["batches"] + result["rest"] == result["expected"]
        assert result["rest_match"]
