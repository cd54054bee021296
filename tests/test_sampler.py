"""GraftBatchSampler: epochs, feedback, determinism, resume, distributed, DataLoader."""

import os
import socket

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from graft_select import GraftSelector  # noqa: E402
from graft_select.sampler import GraftBatchSampler  # noqa: E402

N, D, C = 600, 8, 4


def _feedback(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, D, generator=g), torch.randn(n, C, generator=g),
            torch.randint(0, C, (n,), generator=g))


def _observed(n=N, **kwargs):
    sampler = GraftBatchSampler(n, **{"batch_size": 32, "fraction": 0.3, **kwargs})
    emb, logits, targets = _feedback(n)
    sampler.observe(torch.arange(n), embeddings=emb, logits=logits, targets=targets)
    return sampler


def _flat(batches):
    return [i for b in batches for i in b]


class TestEpochPlan:
    @pytest.mark.parametrize("drop_last", [False, True])
    @pytest.mark.parametrize("fraction", [0.1, 0.3, 1.0])
    def test_len_matches_iteration(self, drop_last, fraction):
        """len(sampler) equals the number of batches yielded, in warm and selected epochs."""
        sampler = _observed(fraction=fraction, drop_last=drop_last)
        for epoch in (0, 1, 2):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)
            if drop_last:
                assert all(len(b) == 32 for b in batches)

    def test_indices_in_range_and_unique(self):
        """Every yielded index is a Python int in range, none twice in an epoch."""
        sampler = _observed()
        sampler.set_epoch(1)
        flat = _flat(sampler)
        assert all(type(i) is int and 0 <= i < N for i in flat)
        assert len(flat) == len(set(flat))

    def test_budget_held(self):
        """A selected epoch yields round(fraction * n) samples."""
        sampler = _observed(fraction=0.3)
        sampler.set_epoch(1)
        assert len(_flat(sampler)) == round(0.3 * N)
        assert sampler.last_refit.n_selected == round(0.3 * N)

    def test_fraction_one_is_plain_shuffling(self):
        """fraction=1.0 yields a permutation of all indices in batches of batch_size."""
        sampler = _observed(fraction=1.0)
        sampler.set_epoch(3)
        flat = _flat(sampler)
        assert sorted(flat) == list(range(N)) and flat != list(range(N))

    def test_warm_start_is_full(self):
        """Warm-start epochs yield the full dataset."""
        sampler = GraftBatchSampler(N, 32, fraction=0.2, warm_start_epochs=2)
        sampler.set_epoch(1)
        assert sorted(_flat(sampler)) == list(range(N))

    def test_refit_every_reuses_subset(self):
        """Between refits the subset is the same set, reshuffled."""
        sampler = _observed(refit_every=3)
        sampler.set_epoch(1)
        first = _flat(sampler)
        sampler.set_epoch(2)
        second = _flat(sampler)
        assert sorted(first) == sorted(second) and first != second
        assert sampler.last_refit.epoch == 1

    def test_selection_uses_feedback(self):
        """The subset follows the gradient feedback: other feedback, other subset."""
        a = _observed()
        b = GraftBatchSampler(N, 32, fraction=0.3)
        emb, logits, targets = _feedback(seed=5)
        b.observe(torch.arange(N), embeddings=emb, logits=logits, targets=targets)
        a.set_epoch(1)
        b.set_epoch(1)
        assert sorted(_flat(a)) != sorted(_flat(b))

    def test_refit_report(self):
        """last_refit reports the fraction, a gradient error and the seconds spent."""
        sampler = _observed()
        sampler.set_epoch(1)
        list(sampler)
        report = sampler.last_refit
        assert report.fraction == pytest.approx(0.3, abs=0.01)
        assert 0 <= report.gradient_error <= 1 and report.seconds > 0
        assert sampler.selection_seconds >= report.seconds


class TestDeterminism:
    def test_same_seed_same_batches(self):
        """Same seed and epoch give the same batches."""
        a, b = _observed(seed=4), _observed(seed=4)
        a.set_epoch(1)
        b.set_epoch(1)
        assert list(a) == list(b)

    def test_other_epoch_other_order(self):
        """Another epoch gives another order."""
        sampler = _observed()
        sampler.set_epoch(1)
        first = list(sampler)
        sampler.set_epoch(2)
        assert list(sampler) != first

    def test_resume_mid_epoch(self):
        """Loading a state_dict taken mid-epoch reproduces the remaining batches."""
        sampler = _observed()
        sampler.set_epoch(1)
        iterator = iter(sampler)
        seen = [next(iterator) for _ in range(3)]
        state = sampler.state_dict()
        rest = list(iterator)
        fresh = GraftBatchSampler(N, 32, fraction=0.3)
        fresh.load_state_dict(state)
        assert list(fresh) == rest and len(seen) == 3

    def test_stateful_dataloader(self):
        """torchdata's StatefulDataLoader resumes with the sampler's state."""
        stateful = pytest.importorskip("torchdata.stateful_dataloader")
        data = TensorDataset(torch.arange(N))
        sampler = _observed()
        sampler.set_epoch(1)
        loader = stateful.StatefulDataLoader(data, batch_sampler=sampler)
        iterator = iter(loader)
        for _ in range(2):
            next(iterator)
        state = loader.state_dict()
        rest = [b[0].tolist() for b in iterator]
        sampler2 = _observed()
        sampler2.set_epoch(1)
        loader2 = stateful.StatefulDataLoader(data, batch_sampler=sampler2)
        loader2.load_state_dict(state)
        assert [b[0].tolist() for b in loader2] == rest


class TestFeedbackModes:
    def test_stale_samples_refreshed(self):
        """Observe-only mode gives a share of each refit to the least recently seen samples."""
        sampler = _observed(refresh_share=0.2)
        sampler.set_epoch(1)
        list(sampler)
        assert sampler.last_refit.n_refreshed == round(0.2 * round(0.3 * N))

    def test_never_observed_samples_first(self):
        """Samples never observed are refreshed before the others."""
        sampler = GraftBatchSampler(N, 32, fraction=0.3, refresh_share=0.5)
        emb, logits, targets = _feedback()
        seen = torch.arange(100, N)
        sampler.observe(seen, embeddings=emb[100:], logits=logits[100:], targets=targets[100:])
        sampler.set_epoch(1)
        flat = set(_flat(sampler))
        assert sampler.last_refit.n_refreshed == 90  # half of the 180-sample budget
        assert len(flat & set(range(100))) >= 90

    def test_features_callable(self):
        """A features callable is run over all samples at refit, under no_grad."""
        emb, logits, targets = _feedback()
        calls = []

        def features(idx):
            calls.append(len(idx))
            assert not torch.is_grad_enabled()
            return emb[idx], logits[idx], targets[idx]

        sampler = GraftBatchSampler(N, 32, fraction=0.3, features=features,
                                    feature_batch_size=256)
        sampler.set_epoch(1)
        assert len(_flat(sampler)) == round(0.3 * N)
        assert sum(calls) == N and sampler.last_refit.feature_seconds > 0

    def test_fixed_feature_array(self):
        """A fixed feature array (raw inputs) drives the selection without feedback."""
        X = torch.randn(N, 5, generator=torch.Generator().manual_seed(1))
        sampler = GraftBatchSampler(N, 32, fraction=0.25, features=X)
        sampler.set_epoch(1)
        flat = _flat(sampler)
        assert len(flat) == pytest.approx(0.25 * N, abs=N // 32 + 1)

    def test_uniform_selector_template(self):
        """A uniform GraftSelector template gives the uniform baseline at the same budget."""
        sampler = _observed(selector=GraftSelector(strategy="uniform"))
        sampler.set_epoch(1)
        assert len(_flat(sampler)) == round(0.3 * N)


class TestErrors:
    def test_mismatched_lengths_keep_state(self):
        """observe() with mismatched lengths fails and records nothing."""
        sampler = _observed()
        before = sampler.state_dict()["store"]["embeddings"].clone()
        with pytest.raises(ValueError, match="one row per index"):
            sampler.observe(torch.arange(10), embeddings=torch.randn(9, D))
        assert torch.equal(sampler.state_dict()["store"]["embeddings"], before)
        sampler.set_epoch(1)
        assert len(list(sampler)) == len(sampler)

    def test_unknown_indices(self):
        """Indices outside the dataset are rejected."""
        sampler = _observed()
        with pytest.raises(ValueError, match=r"must lie in \[0, 600\)"):
            sampler.observe(torch.tensor([0, 600]), embeddings=torch.randn(2, D))

    def test_nan_embeddings(self):
        """NaN embeddings are rejected with the row count."""
        sampler = _observed()
        bad = torch.randn(4, D)
        bad[2, 0] = float("nan")
        with pytest.raises(ValueError, match=r"NaN or infinity in 1 rows \(first: 2\)"):
            sampler.observe(torch.arange(4), embeddings=bad)

    @pytest.mark.parametrize(("kwargs", "match"), [
        ({"batch_size": 0}, "'batch_size'"),
        ({"batch_size": 8, "fraction": 0.0}, "'fraction'"),
        ({"batch_size": 8, "fraction": 1.5}, "'fraction'"),
        ({"batch_size": 8, "num_replicas": 2, "rank": 2}, "'rank'"),
    ])
    def test_bad_parameters(self, kwargs, match):
        """Bad parameters raise a ValueError naming them."""
        with pytest.raises(ValueError, match=match):
            GraftBatchSampler(100, **kwargs)

    def test_empty_dataset(self):
        """A dataset of length 0 is rejected."""
        with pytest.raises(ValueError, match="at least one sample"):
            GraftBatchSampler([], 8)


class TestDataLoader:
    def test_workers(self):
        """DataLoader with num_workers=2 yields exactly the sampler's batches."""
        data = TensorDataset(torch.arange(N))
        sampler = _observed()
        sampler.set_epoch(1)
        expected = list(sampler)
        loader = DataLoader(data, batch_sampler=sampler, num_workers=2)
        assert [b[0].tolist() for b in loader] == expected


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sampler = GraftBatchSampler(N, 16, fraction=0.3, seed=3)
        emb, logits, targets = _feedback()
        mine = torch.arange(rank, N, world)  # each rank observes only its own share
        sampler.observe(mine, embeddings=emb[mine], logits=logits[mine], targets=targets[mine])
        sampler.set_epoch(1)
        torch.save({"batches": list(sampler), "plan": sampler._plan().tolist()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


class TestDistributed:
    def test_two_ranks_gloo(self, tmp_path):
        """Two gloo ranks get disjoint shares of equal length and agree on the plan."""
        import torch.multiprocessing as mp

        mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
        results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
        assert results[0]["plan"] == results[1]["plan"]
        shares = [_flat(r["batches"]) for r in results]
        assert len(shares[0]) == len(shares[1]) == round(0.3 * N) // 2
        assert not set(shares[0]) & set(shares[1])

    def test_padding_without_distributed(self):
        """Explicit num_replicas/rank pad an odd subset to equal shares."""
        X = torch.randn(N, 5, generator=torch.Generator().manual_seed(1))
        shares = []
        for rank in range(4):
            sampler = GraftBatchSampler(N, 7, fraction=0.3, features=X, num_replicas=4,
                                        rank=rank)
            sampler.set_epoch(1)
            shares.append(_flat(sampler))
        assert len({len(s) for s in shares}) == 1
        whole = GraftBatchSampler(N, 7, fraction=0.3, features=X)
        whole.set_epoch(1)
        assert set().union(*shares) == set(_flat(whole))
