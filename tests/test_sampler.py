"""GraftBatchSampler: epochs, feedback, determinism, resume, distributed, DataLoader."""

import contextlib
import os

import pytest
from conftest import spawn_ranks

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from graft_select import GraftSelector, _store  # noqa: E402
from graft_select._recorder import FeedbackRecorder  # noqa: E402
from graft_select.sampler import GraftBatchSampler  # noqa: E402

N, D, C = 600, 8, 4


def _feedback(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, D, generator=g), torch.randn(n, C, generator=g),
            torch.randint(0, C, (n,), generator=g))


def _observed(n=N, **kwargs):
    sampler = GraftBatchSampler(n, **{"warm_start_epochs": 1,
                                      "batch_size": 32, "fraction": 0.3, **kwargs})
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
        """A selected epoch yields round(fraction * n) samples, drawn from a pool of twice
        that (pool_factor=2.0, the default)."""
        sampler = _observed(fraction=0.3)
        sampler.set_epoch(1)
        assert len(_flat(sampler)) == round(0.3 * N)
        assert sampler.last_refit.n_selected == round(0.6 * N)
        assert sampler.last_refit.epoch_size == round(0.3 * N)

    def test_pool_factor_one_trains_the_whole_selection(self):
        """pool_factor=1.0: every epoch until the next refit trains the refit's subset."""
        sampler = _observed(fraction=0.3, pool_factor=1.0, refit_every=5)
        epochs = []
        for epoch in (1, 2, 3):
            sampler.set_epoch(epoch)
            epochs.append(sorted(_flat(sampler)))
        assert epochs[0] == epochs[1] == epochs[2]
        assert len(epochs[0]) == sampler.last_refit.n_selected == round(0.3 * N)
        assert sampler.last_refit.epoch_size == round(0.3 * N)

    def test_pool_rotates_between_refits(self):
        """Between refits each epoch trains a different random draw of the refit's pool:
        the draws differ, stay inside the pool, and together cover most of it."""
        sampler = _observed(fraction=0.2, refit_every=10)
        seen, draws = set(), []
        for epoch in range(1, 7):
            sampler.set_epoch(epoch)
            flat = _flat(sampler)
            assert len(flat) == len(set(flat)) == round(0.2 * N)
            draws.append(frozenset(flat))
            seen |= draws[-1]
        pool = set(sampler._planner.subset.tolist())
        assert sampler.last_refit.epoch == 1 and len(pool) == round(0.4 * N)
        assert seen <= pool and len(seen) > 0.9 * len(pool)
        assert len(set(draws)) == len(draws)

    def test_pool_share_capped(self):
        """A pool holds at most (1 + fraction) / 2 of the data: at fraction 0.6 a pool of
        twice the budget would be all of it, and selection would select nothing."""
        sampler = _observed(fraction=0.6)
        sampler.set_epoch(1)
        assert len(_flat(sampler)) == round(0.6 * N)
        assert sampler.last_refit.n_selected == round(0.8 * N)

    def test_pool_refreshes_trained_every_epoch(self):
        """Observe-only refreshes (the stalest samples) are in every epoch's draw."""
        sampler = _observed(fraction=0.3, refresh_share=0.2, refit_every=10)
        sampler.set_epoch(1)
        _flat(sampler)
        refreshed = set(sampler._planner.subset[:sampler.last_refit.n_refreshed].tolist())
        assert sampler.last_refit.n_refreshed == round(0.2 * 0.3 * N)
        for epoch in (2, 3):
            sampler.set_epoch(epoch)
            assert refreshed <= set(_flat(sampler))

    def test_pool_epoch_holds_the_budget_below_a_sample_per_chunk(self):
        """With a pool, an epoch trains the budget even when it is below one sample per
        chunk (the pool holds a sample per chunk; the draw need not): fraction 0.02 of
        2,000 in chunks of 32 is 40 samples per epoch, from a pool of 80."""
        sampler = GraftBatchSampler(2000, 32, fraction=0.02, warm_start_epochs=1)
        emb, logits, targets = _feedback(2000)
        sampler.observe(torch.arange(2000), embeddings=emb, logits=logits, targets=targets)
        sampler.set_epoch(1)
        expected = len(sampler)
        flat = _flat(sampler)
        assert len(flat) == 40 == sampler.last_refit.epoch_size
        assert sampler.last_refit.n_selected == 80 and expected == len(sampler) == 2

    def test_pool_draw_keeps_the_selection_order_without_shuffle(self):
        """shuffle=False trains the draw in the pool's (selection) order."""
        sampler = _observed(fraction=0.2, shuffle=False, refit_every=5)
        sampler.set_epoch(1)
        flat = _flat(sampler)
        pool = sampler._planner.subset.tolist()
        position = {index: i for i, index in enumerate(pool)}
        assert [position[i] for i in flat] == sorted(position[i] for i in flat)

    def test_state_without_pool_keys_trains_its_subset(self):
        """A state saved before pools (no 'subset_refreshed', no 'pool_factor') trains its
        whole subset in every epoch until the next refit, as the run that saved it."""
        kwargs = dict(fraction=0.02, refit_every=10, warm_start_epochs=1)
        sampler = GraftBatchSampler(2000, 32, pool_factor=1.0, **kwargs)
        emb, logits, targets = _feedback(2000)
        sampler.observe(torch.arange(2000), embeddings=emb, logits=logits, targets=targets)
        sampler.set_epoch(1)
        with pytest.warns(UserWarning, match="at least one sample"):
            list(sampler)  # 63 samples: one per chunk, above the budget of 40
        state = sampler.state_dict()
        del state["subset_refreshed"], state["pool_factor"]
        fresh = GraftBatchSampler(2000, 32, **kwargs)
        fresh.load_state_dict(state)
        fresh.set_epoch(2)
        assert sorted(_flat(fresh)) == sorted(state["subset"].tolist())
        assert len(state["subset"]) == 63

    def test_state_of_another_pool_factor_raises(self):
        """Loading a state whose pool was drawn for another pool_factor raises, naming it."""
        sampler = _observed(fraction=0.3)
        sampler.set_epoch(1)
        list(sampler)
        other = GraftBatchSampler(N, 32, fraction=0.3, warm_start_epochs=1, pool_factor=1.5)
        with pytest.raises(ValueError, match=r"pool_factor=2.0.*pool_factor=1.5"):
            other.load_state_dict(sampler.state_dict())

    @pytest.mark.parametrize("change", [{"seed": 1}, {"shuffle": False}, {"fraction": 0.3},
                                        {"warm_start_epochs": 3}])
    def test_mid_epoch_state_of_another_order_raises(self, change):
        """A state saved in the middle of a selected epoch, loaded by a sampler whose seed,
        shuffle, fraction or warm-start epochs order the epoch otherwise, raises naming
        both values (it loaded, and the rest of the epoch trained 23 samples twice and 23
        never). A state saved after the epoch's pass loads under any of them, and one
        saved in a warm-start epoch of both under another fraction (the same order)."""
        X = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
        kwargs = {"fraction": 0.5, "warm_start_epochs": 1, "features": X}
        sampler = GraftBatchSampler(100, 10, **kwargs)
        sampler.set_epoch(1)
        batches = iter(sampler)
        for _ in range(2):
            next(batches)
        other = GraftBatchSampler(100, 10, **{**kwargs, **change})
        key, value = next(iter(change.items()))
        saved = kwargs.get(key, {"seed": 0, "shuffle": True}.get(key))
        with pytest.raises(ValueError, match=rf"middle of epoch 1 by a sampler with "
                                             rf"{key}={saved}.*has {key}={value}"):
            other.load_state_dict(sampler.state_dict())
        assert other.state_dict()["batches_yielded"] == 0  # left unchanged
        list(batches)
        other.load_state_dict(sampler.state_dict())  # the pass is over: between epochs
        assert list(other) == []
        warm = GraftBatchSampler(100, 10, **kwargs)
        first = next(iter(warm))
        resumed = GraftBatchSampler(100, 10, **{**kwargs, "fraction": 0.3})
        resumed.load_state_dict(warm.state_dict())
        assert [first, *resumed] == list(GraftBatchSampler(100, 10, **kwargs))

    @pytest.mark.parametrize("value", [0.5, float("nan"), "2", True])
    def test_pool_factor_checked(self, value):
        """A pool_factor below 1, not finite or not a number raises, naming it."""
        with pytest.raises((TypeError, ValueError), match="pool_factor"):
            GraftBatchSampler(N, 32, pool_factor=value)

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
        """Between refits the epochs draw from the same pool; with pool_factor=1.0 they
        train the same set, reshuffled."""
        for pool_factor in (1.0, 2.0):
            sampler = _observed(refit_every=3, pool_factor=pool_factor)
            sampler.set_epoch(1)
            first = _flat(sampler)
            pool = set(sampler._planner.subset.tolist())
            sampler.set_epoch(2)
            second = _flat(sampler)
            assert set(first) <= pool and set(second) <= pool and first != second
            assert (sorted(first) == sorted(second)) == (pool_factor == 1.0)
            assert sampler.last_refit.epoch == 1

    def test_selection_uses_feedback(self):
        """The subset follows the gradient feedback: other feedback, other subset."""
        a = _observed()
        b = GraftBatchSampler(N, 32, fraction=0.3, warm_start_epochs=1)
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
        assert report.fraction == pytest.approx(0.6, abs=0.01)  # the pool's share
        assert report.epoch_size == round(0.3 * N)
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
        fresh = GraftBatchSampler(N, 32, fraction=0.3, warm_start_epochs=1)
        fresh.load_state_dict(state)
        assert list(fresh) == rest and len(seen) == 3

    def test_resume_keeps_the_pool_draws(self):
        """A state saved after a refit gives the later epochs the same draws from the pool,
        its refreshes (observe-only mode) in every draw, as the run that saved it."""
        kwargs = dict(fraction=0.3, refit_every=10, refresh_share=0.2, warm_start_epochs=1)
        sampler = _observed(**kwargs)
        sampler.set_epoch(1)
        list(sampler)
        state = sampler.state_dict()
        assert state["subset_refreshed"] == sampler.last_refit.n_refreshed > 0
        fresh = GraftBatchSampler(N, 32, **kwargs)
        fresh.load_state_dict(state)
        for epoch in (2, 3):
            sampler.set_epoch(epoch)
            fresh.set_epoch(epoch)
            assert list(fresh) == list(sampler)
        bad = {**state, "subset_refreshed": len(state["subset"]) + 1}
        with pytest.raises(ValueError, match="subset_refreshed"):
            GraftBatchSampler(N, 32, **kwargs).load_state_dict(bad)

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
        sampler = GraftBatchSampler(N, 32, fraction=0.3, refresh_share=0.5, warm_start_epochs=1)
        emb, logits, targets = _feedback()
        seen = torch.arange(100, N)
        sampler.observe(seen, embeddings=emb[100:], logits=logits[100:], targets=targets[100:])
        sampler.set_epoch(1)
        with pytest.warns(UserWarning, match="100 of the 600 samples were never observed"):
            flat = set(_flat(sampler))
        # more than half of the 180-sample budget: every never-observed sample is
        # refreshed (none is left to the selection as a row of zeros)
        assert sampler.last_refit.n_refreshed == 100
        assert set(range(100)) <= flat

    def test_features_callable(self):
        """A features callable is run over all samples at refit, under no_grad."""
        emb, logits, targets = _feedback()
        calls = []

        def features(idx):
            calls.append(len(idx))
            assert not torch.is_grad_enabled()
            return emb[idx], logits[idx], targets[idx]

        sampler = GraftBatchSampler(N, 32, fraction=0.3, features=features,
                                    feature_batch_size=256, warm_start_epochs=1)
        sampler.set_epoch(1)
        assert len(_flat(sampler)) == round(0.3 * N)
        assert sum(calls) == N and sampler.last_refit.feature_seconds > 0

    def test_fixed_feature_array(self):
        """A fixed feature array (raw inputs) drives the selection without feedback."""
        X = torch.randn(N, 5, generator=torch.Generator().manual_seed(1))
        sampler = GraftBatchSampler(N, 32, fraction=0.25, features=X, warm_start_epochs=1)
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

    @pytest.mark.parametrize(("kwargs", "match"), [
        ({"batch_size": 0}, "'batch_size'"),
        ({"batch_size": 8, "fraction": 0.0}, "'fraction'"),
        ({"batch_size": 8, "fraction": 1.5}, "'fraction'"),
        ({"batch_size": 8, "num_replicas": 2, "rank": 2}, "'rank'"),
        ({"batch_size": 8, "feedback_dtype": torch.int8}, "'feedback_dtype'"),
        ({"batch_size": 8, "feedback_dtype": "float8"}, "'feedback_dtype'"),
        ({"batch_size": 8, "sketch_width": 0}, "'sketch_width'"),
    ])
    def test_bad_parameters(self, kwargs, match):
        """Bad parameters raise a ValueError naming them."""
        with pytest.raises(ValueError, match=match):
            GraftBatchSampler(100, **kwargs)

    def test_empty_dataset(self):
        """A dataset of length 0 is rejected."""
        with pytest.raises(ValueError, match="at least one sample"):
            GraftBatchSampler([], 8, warm_start_epochs=1)


class TestChunkSize:
    def test_default_is_batch_size(self):
        """chunk_size=None selects per training batch."""
        assert GraftBatchSampler(100, 8, warm_start_epochs=1).chunk_size == 8

    def test_bad_chunk_size(self):
        """A chunk of one row raises a ValueError naming 'chunk_size'."""
        with pytest.raises(ValueError, match="'chunk_size'"):
            GraftBatchSampler(100, 8, chunk_size=1, warm_start_epochs=1)

    def test_old_name_warns_and_works(self):
        """selection_size= still sets the chunk size, with a FutureWarning naming both."""
        with pytest.warns(FutureWarning, match="'selection_size' was renamed to 'chunk_size' "
                                               "in 0.2 and will be removed in 0.4"):
            old = GraftBatchSampler(600, 8, selection_size=32, warm_start_epochs=0)
        new = GraftBatchSampler(600, 8, chunk_size=32, warm_start_epochs=0)
        assert old.chunk_size == old.selection_size == 32
        for sampler in (old, new):
            sampler.observe(torch.arange(600), embeddings=_feedback(600)[0])
        assert list(old) == list(new)

    def test_both_names_raise(self):
        """chunk_size and selection_size together are an error."""
        with pytest.raises(TypeError, match="both 'chunk_size' and its old name"):
            GraftBatchSampler(100, 8, chunk_size=16, selection_size=16, warm_start_epochs=1)

    def test_budget_warning_names_chunk_size(self):
        """The budget warning (an epoch that trains its whole selection) tells to raise
        'chunk_size'."""
        sampler = GraftBatchSampler(600, 8, fraction=0.01, warm_start_epochs=0,
                                    pool_factor=1.0)
        sampler.observe(torch.arange(600), embeddings=_feedback(600)[0])
        with pytest.warns(UserWarning, match="'chunk_size' \\(now 8\\)"):
            len(sampler)


TORCH_BACKENDS = pytest.mark.parametrize("backend", ["torch-cpu", "torch-cuda"], indirect=True)


def _batch(backend, rows=8, seed=1):
    emb, logits, targets = (t[:rows] for t in _feedback(rows, seed=seed))
    return emb.to(backend.device), logits.to(backend.device), targets.to(backend.device)


def _refit_report(sampler):
    sampler.set_epoch(sampler.epoch + 1)
    with pytest.warns(UserWarning, match="rejected") as caught:
        len(sampler)
    return sampler.last_refit, str(caught[0].message)


@TORCH_BACKENDS
class TestRejectedRows:
    """observe() reads nothing back: bad rows are kept out of the store and reported."""

    def test_nan_row_not_stored_good_rows_stored(self, backend):
        """A NaN row keeps its earlier values; the batch's other rows are stored."""
        sampler = _observed()
        before = sampler.state_dict()["store"]["embeddings"].clone()
        emb, logits, targets = _batch(backend)
        emb[2, 0] = float("nan")
        sampler.observe(torch.arange(8, device=backend.device), embeddings=emb, logits=logits,
                        targets=targets)
        after = sampler.state_dict()["store"]["embeddings"]
        assert torch.equal(after[2], before[2])
        good = [0, 1, 3, 4, 5, 6, 7]
        torch.testing.assert_close(after[good], emb[good].cpu())

    def test_refit_reports_and_warns(self, backend):
        """The next refit lists the rejected samples and warns with their count and indices."""
        sampler = _observed()
        emb, logits, targets = _batch(backend)
        emb[5, 1] = float("inf")
        logits[3, 0] = float("nan")
        indices = torch.arange(100, 108, device=backend.device)
        sampler.observe(indices, embeddings=emb, logits=logits, targets=targets)
        report, message = _refit_report(sampler)
        assert report.n_rejected == 2 and report.rejected_indices == (103, 105)
        assert "rejected 2 observed rows" in message and "first: 103, 105" in message

    def test_rejected_rows_survive_a_resume(self, backend):
        """Rows rejected before state_dict() are reported by the resumed sampler's refit."""
        sampler = _observed()
        emb, logits, targets = _batch(backend)
        emb[6, 0] = float("nan")
        sampler.observe(torch.arange(100, 108, device=backend.device), embeddings=emb,
                        logits=logits, targets=targets)
        state = sampler.state_dict()
        assert state["rejected"][106] == 1 and int(state["rejected"].sum()) == 1
        resumed = GraftBatchSampler(N, 32, fraction=0.3, warm_start_epochs=1)
        resumed.load_state_dict(state)
        report, message = _refit_report(resumed)
        assert report.n_rejected == 1 and report.rejected_indices == (106,)
        assert "first: 106" in message

    @pytest.mark.parametrize("label", [-1, C])
    def test_label_out_of_range_rejected(self, backend, label):
        """A label outside [0, n_classes) is a rejected row, not an exception."""
        sampler = _observed()
        before = sampler.state_dict()["store"]["residuals"][4].clone()
        emb, logits, targets = _batch(backend)
        targets[4] = label
        sampler.observe(torch.arange(8), embeddings=emb, logits=logits, targets=targets)
        assert torch.equal(sampler.state_dict()["store"]["residuals"][4], before)
        report, _ = _refit_report(sampler)
        assert report.rejected_indices == (4,)

    def test_rejected_rows_keep_their_age(self, backend):
        """A rejected row does not count as seen: it stays among the stalest."""
        sampler = _observed()
        sampler.set_epoch(3)
        emb, logits, targets = _batch(backend)
        emb[0] = float("nan")
        sampler.observe(torch.arange(8), embeddings=emb, logits=logits, targets=targets)
        last_seen = sampler.state_dict()["last_seen"]
        assert last_seen[0] == 0 and bool((last_seen[1:8] == 3).all())

    def test_minus_inf_logit_accepted(self, backend):
        """A -inf logit alone (a masked class) is a valid row."""
        sampler = _observed()
        emb, logits, targets = _batch(backend)
        logits[1, (int(targets[1]) + 1) % C] = float("-inf")
        sampler.observe(torch.arange(8), embeddings=emb, logits=logits, targets=targets)
        sampler.set_epoch(1)
        len(sampler)
        assert sampler.last_refit.n_rejected == 0

    def test_reported_once(self, backend):
        """Rejected rows are reported by the next refit only."""
        sampler = _observed(refit_every=1)
        emb, logits, targets = _batch(backend)
        emb[0] = float("nan")
        sampler.observe(torch.arange(8), embeddings=emb, logits=logits, targets=targets)
        _refit_report(sampler)
        sampler.set_epoch(2)
        len(sampler)
        assert sampler.last_refit.n_rejected == 0 and sampler.last_refit.rejected_indices == ()

    def test_int32_targets(self, backend):
        """Targets of any integer dtype are labels (int32 from many data pipelines)."""
        sampler = GraftBatchSampler(N, 32, warm_start_epochs=1)
        emb, logits, targets = _batch(backend)
        sampler.observe(torch.arange(8), embeddings=emb, logits=logits,
                        targets=targets.to(torch.int32))
        expected = torch.softmax(logits, 1) - torch.nn.functional.one_hot(targets, C)
        torch.testing.assert_close(sampler.state_dict()["store"]["residuals"][:8],
                                   expected.cpu())

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
    def test_residuals_of_other_float_dtypes(self, backend, dtype):
        """Logits of any float dtype give softmax(logits) - onehot(targets) (float64 failed)."""
        sampler = GraftBatchSampler(N, 32, warm_start_epochs=1)
        emb, logits, targets = _batch(backend)
        logits = logits.to(dtype)
        sampler.observe(torch.arange(8), embeddings=emb, logits=logits, targets=targets)
        expected = torch.softmax(logits.double(), 1) - torch.nn.functional.one_hot(targets, C)
        tol = 1e-6 if dtype == torch.float64 else 2e-2
        torch.testing.assert_close(sampler.state_dict()["store"]["residuals"][:8],
                                   expected.float().cpu(), atol=tol, rtol=tol)

    def test_residuals_match_definition(self, backend):
        """Stored residuals are softmax(logits) - onehot(targets)."""
        sampler = GraftBatchSampler(N, 32, warm_start_epochs=1)
        emb, logits, targets = _batch(backend)
        sampler.observe(torch.arange(8), embeddings=emb, logits=logits, targets=targets)
        expected = torch.softmax(logits, 1) - torch.nn.functional.one_hot(targets, C)
        torch.testing.assert_close(sampler.state_dict()["store"]["residuals"][:8],
                                   expected.cpu())


class TestStagedBatches:
    """observe() copies batches; they are recorded in blocks, before any read of the store."""

    def test_later_observation_wins_within_a_block(self):
        """The same samples observed twice before a recording keep the later values."""
        sampler = GraftBatchSampler(N, 32, warm_start_epochs=1)
        first, second = torch.randn(8, D), torch.randn(8, D)
        sampler.observe(torch.arange(8), embeddings=first)
        sampler.observe(torch.arange(8).flip(0), embeddings=second)
        stored = sampler.state_dict()["store"]["embeddings"][:8]
        torch.testing.assert_close(stored, second.flip(0))

    def test_good_row_kept_over_later_bad_row(self):
        """A good row then a NaN row of the same sample in one block: the good row is stored."""
        sampler = GraftBatchSampler(N, 32, warm_start_epochs=1)
        good = torch.randn(2, D)
        sampler.observe(torch.tensor([3, 4]), embeddings=good)
        sampler.observe(torch.tensor([3]), embeddings=torch.full((1, D), float("nan")))
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"][3:5], good)
        assert sampler._recorder.store.take_rejected()[0].tolist() == [3]

    def test_many_batches_recorded(self):
        """More batches than one block holds are all recorded, in order."""
        sampler = GraftBatchSampler(N, 8, warm_start_epochs=1)
        emb = torch.randn(N, D)
        for begin in range(0, N, 8):
            sampler.observe(torch.arange(begin, begin + 8), embeddings=emb[begin:begin + 8])
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"], emb)

    def test_planned_batches_recorded_exactly(self):
        """The sampler's own batches of one pass (the fast block path) store their rows."""
        sampler = GraftBatchSampler(N, 8, shuffle=True, seed=3, warm_start_epochs=1)
        emb = torch.randn(N, D)
        iterator = iter(sampler)
        for batch in iterator:
            sampler.observe(torch.tensor(batch), embeddings=emb[batch])
        assert iterator.distinct
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"], emb)

    @TORCH_BACKENDS
    def test_pass_repeating_samples_keeps_last_observation(self, backend):
        """A pass whose batches repeat a sample is recorded with the duplicate-index rule."""
        sampler = GraftBatchSampler(N, 8, shuffle=False, warm_start_epochs=1)
        sampler._shard = lambda plan: plan.repeat(2)  # every sample twice in the pass
        iterator = iter(sampler)
        batches = list(iterator)
        assert not iterator.distinct
        for step, batch in enumerate(batches):
            sampler.observe(torch.tensor(batch), embeddings=torch.full(
                (len(batch), D), float(step), device=backend.device))
        stored = sampler.state_dict()["store"]["embeddings"][:, 0]
        last = {i: float(step) for step, batch in enumerate(batches) for i in batch}
        assert {i: float(stored[i]) for i in last} == last

    def test_planned_block_then_other_indices(self):
        """Indices not handed out end the planned block: their duplicates keep the last row."""
        sampler = GraftBatchSampler(N, 8, shuffle=False, warm_start_epochs=1)
        iterator = iter(sampler)
        first = next(iterator)
        sampler.observe(torch.tensor(first), embeddings=torch.zeros(8, D))
        sampler.observe(torch.tensor([first[0], first[0]]),
                        embeddings=torch.tensor([[1.0] * D, [2.0] * D]))
        stored = sampler.state_dict()["store"]["embeddings"]
        assert float(stored[first[0], 0]) == 2.0 and float(stored[first[1], 0]) == 0.0

    def test_large_batch_recorded_at_once(self, monkeypatch):
        """A batch larger than the staging budget is recorded without staging."""
        from graft_select import _store

        monkeypatch.setattr(_store, "STAGED_BYTES", 64)
        sampler = GraftBatchSampler(N, 32, warm_start_epochs=1)
        emb = torch.randn(8, D)
        sampler.observe(torch.arange(8), embeddings=emb)
        assert sampler._recorder.store._staged == []
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"][:8], emb)

    def test_large_batch_after_staged_ones_wins(self, monkeypatch):
        """A batch recorded at once comes after the staged ones: its rows are the newest."""
        from graft_select import _store

        monkeypatch.setattr(_store, "STAGED_BYTES", 4 * 4 * (D + 1))  # 4 rows fit
        sampler = GraftBatchSampler(N, 32, warm_start_epochs=1)
        old, new = torch.zeros(2, D), torch.ones(8, D)
        sampler.observe(torch.tensor([0, 1]), embeddings=old)  # staged
        sampler.observe(torch.arange(8), embeddings=new)  # too large: recorded at once
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"][:8], new)

    def test_load_replaces_staged_batches(self):
        """Batches staged before load_state_dict are replaced by the loaded state."""
        source = _observed()
        sampler = GraftBatchSampler(N, 32, fraction=0.3, warm_start_epochs=1)
        sampler.observe(torch.arange(8), embeddings=torch.zeros(8, D))
        sampler.load_state_dict(source.state_dict())
        assert torch.equal(sampler.state_dict()["store"]["embeddings"],
                           source.state_dict()["store"]["embeddings"])

    def test_in_place_change_after_observe_not_recorded(self):
        """observe() copies: writing to the tensors afterwards changes nothing stored."""
        sampler = GraftBatchSampler(N, 32, warm_start_epochs=1)
        emb, index = torch.randn(8, D), torch.arange(8)
        kept = emb.clone()
        sampler.observe(index, embeddings=emb)
        emb.zero_()
        index += 8
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"][:8], kept)


def _train_epoch(sampler, feedback, *, grad=False, with_indices=True):
    """Observe every batch of one pass as a training loop does; return the batches."""
    emb, logits, targets = feedback
    batches = []
    for batch in sampler:
        batches.append(batch)
        e, z = emb[batch], logits[batch]
        if grad:
            e, z = e.requires_grad_(), z.requires_grad_()
        sampler.observe(torch.tensor(batch) if with_indices else None, embeddings=e,
                        logits=z, targets=targets[batch])
    return batches


def _count_checks(monkeypatch):
    """A list that grows by one at each run of observe()'s general checks."""
    from graft_select import _recorder

    calls = []
    checked = _recorder.check_batch
    monkeypatch.setattr(_recorder, "check_batch",
                        lambda *args: calls.append(1) or checked(*args))
    return calls


class TestObserveSteadyState:
    """The steady-state path of observe() stores what the general path stores."""

    def _general_only(self, monkeypatch):
        monkeypatch.setattr(FeedbackRecorder, "_observe_like_last",
                            lambda self, *args: False)

    @pytest.mark.parametrize(("grad", "with_indices"), [(False, True), (True, True),
                                                         (False, False)])
    def test_same_store_as_general_path(self, monkeypatch, grad, with_indices):
        """Two epochs observed with and without the steady-state path: equal stores."""
        feedback = _feedback(N)
        states = []
        for general in (False, True):
            with monkeypatch.context() as patch:
                if general:
                    self._general_only(patch)
                sampler = GraftBatchSampler(N, 7, fraction=1.0, seed=2,
                                            warm_start_epochs=1)  # a short last batch
                for epoch in range(2):
                    sampler.set_epoch(epoch)
                    _train_epoch(sampler, feedback, grad=grad, with_indices=with_indices)
                states.append(sampler.state_dict())
        for name in ("embeddings", "residuals"):
            assert torch.equal(states[0]["store"][name], states[1]["store"][name])
        assert torch.equal(states[0]["last_seen"], states[1]["last_seen"])
        assert torch.equal(states[0]["store"]["embeddings"], feedback[0])

    def test_watched_model_same_store_as_general_path(self, monkeypatch):
        """watch() and observe() without arguments: the steady state stores the same rows."""
        X, y = torch.randn(N, 5), torch.randint(0, C, (N,))
        states, calls = [], _count_checks(monkeypatch)
        for general in (False, True):
            with monkeypatch.context() as patch:
                if general:
                    self._general_only(patch)
                torch.manual_seed(0)
                model = torch.nn.Sequential(torch.nn.Linear(5, D), torch.nn.ReLU(),
                                            torch.nn.Linear(D, C))
                sampler = GraftBatchSampler(N, 16, fraction=1.0, targets=y, seed=1,
                                            warm_start_epochs=1)
                sampler.watch(model)
                iterator = iter(sampler)
                for batch in iterator:
                    model(X[batch])
                    sampler.observe()
                    if len(iterator.pending) == 0 and len(iterator) > 0:
                        next_batch = next(iterator)  # handed out, its forward not run
                        with pytest.raises(ValueError, match="no forward pass"):
                            sampler.observe()  # the capture was consumed
                        model(X[next_batch])
                        sampler.observe()
                states.append(sampler.state_dict())
            if not general:  # the pass's first batch, and its shorter last one
                assert len(calls) == 1 + (N % 16 != 0)
        for name in ("embeddings", "residuals"):
            assert torch.equal(states[0]["store"][name], states[1]["store"][name])
        expected = torch.relu(model[0](X)).detach()
        torch.testing.assert_close(states[0]["store"]["embeddings"], expected)

    def test_checks_run_once_per_pass(self, monkeypatch):
        """In the steady state the general checks run for the pass's first batch only."""
        calls = _count_checks(monkeypatch)
        sampler = GraftBatchSampler(N, 2, fraction=1.0, warm_start_epochs=1)
        batches = _train_epoch(sampler, _feedback(N))
        assert len(batches) > 2 * _store.STAGED_BATCHES and len(calls) == 1

    def test_load_ends_the_steady_state(self, monkeypatch):
        """After load_state_dict the next batch takes every check again."""
        calls = _count_checks(monkeypatch)
        sampler = GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=1)
        emb, logits, targets = _feedback(N)
        iterator = iter(sampler)
        for _ in range(2):
            batch = next(iterator)
            sampler.observe(torch.tensor(batch), embeddings=emb[batch], logits=logits[batch],
                            targets=targets[batch])
        sampler._recorder.store.load(*(sampler.state_dict()[key]
                              for key in ("store", "last_seen", "rejected")))
        batch = next(iterator)
        sampler.observe(torch.tensor(batch), embeddings=emb[batch], logits=logits[batch],
                        targets=targets[batch])
        assert len(calls) == 2

    @pytest.mark.parametrize("with_indices", [True, False])
    def test_rows_not_matching_a_short_batch_raise(self, with_indices):
        """Full-size values for a pass's short last batch raise; nothing recorded is lost."""
        n = 2 * 4 + 1  # batches of 4, 4 and 1
        sampler = GraftBatchSampler(n, 4, fraction=1.0, shuffle=False, warm_start_epochs=1)
        emb, logits, targets = _feedback(n)
        iterator = iter(sampler)
        first, second, last = next(iterator), next(iterator), next(iterator)
        for batch in (first, second):
            sampler.observe(torch.tensor(batch), embeddings=emb[batch], logits=logits[batch],
                            targets=targets[batch])
        sampler.state_dict()  # records the block: the next batch starts a new one
        with pytest.raises(ValueError, match="one row per index"):
            sampler.observe(torch.tensor(last) if with_indices else None,
                            embeddings=emb[second], logits=logits[second],
                            targets=targets[second])
        state = sampler.state_dict()
        assert torch.equal(state["store"]["embeddings"][:8], emb[:8])
        assert state["last_seen"].tolist() == [0] * 8 + [-1]

    @TORCH_BACKENDS
    def test_values_changing_device_recorded(self, backend):
        """Batches whose values move to another device mid-pass are all recorded."""
        sampler = GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=1)
        emb, logits, targets = _feedback(N)
        for step, batch in enumerate(sampler):
            device = backend.device if step % 2 else "cpu"
            sampler.observe(torch.tensor(batch), embeddings=emb[batch].to(device),
                            logits=logits[batch].to(device), targets=targets[batch].to(device))
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"].cpu(), emb)

    def test_other_kind_of_batch_takes_the_general_path(self):
        """A batch of another width after a staged one raises as the general path does."""
        sampler = GraftBatchSampler(N, 8, warm_start_epochs=1)
        emb, logits, targets = _feedback(N)
        iterator = iter(sampler)
        first, second = next(iterator), next(iterator)
        sampler.observe(torch.tensor(first), embeddings=emb[first], logits=logits[first],
                        targets=targets[first])
        with pytest.raises(ValueError, match="'embeddings' has 3 columns"):
            sampler.observe(torch.tensor(second), embeddings=emb[second][:, :3],
                            logits=logits[second], targets=targets[second])

    def test_other_dtype_recorded(self):
        """A float64 batch after float32 ones (another signature) is recorded too."""
        sampler = GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=1)
        emb, logits, targets = _feedback(N)
        for step, batch in enumerate(sampler):
            dtype = torch.float64 if step % 3 == 2 else torch.float32
            sampler.observe(torch.tensor(batch), embeddings=emb[batch].to(dtype),
                            logits=logits[batch].to(dtype), targets=targets[batch])
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"], emb)

    def test_in_place_change_after_steady_observe_not_recorded(self):
        """The steady-state path copies too: writing to the inputs afterwards changes nothing."""
        sampler = GraftBatchSampler(N, 8, warm_start_epochs=1)
        emb, logits, targets = _feedback(N)
        iterator = iter(sampler)
        for _ in range(2):  # the second goes through the steady-state path
            batch = next(iterator)
            e, z, t = emb[batch].clone(), logits[batch].clone(), targets[batch].clone()
            sampler.observe(torch.tensor(batch), embeddings=e, logits=z, targets=t)
        e.zero_(), z.zero_(), t.zero_()
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"][batch],
                                   emb[batch])
        expected = torch.softmax(logits[batch], 1) - torch.nn.functional.one_hot(
            targets[batch], C)
        torch.testing.assert_close(sampler.state_dict()["store"]["residuals"][batch], expected)

    def test_new_epoch_not_stamped_with_old(self):
        """A batch of the next epoch starts a new block: its rows carry the new epoch."""
        sampler = GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=1)
        feedback = _feedback(N)
        _train_epoch(sampler, feedback)
        sampler.set_epoch(1)
        iterator = iter(sampler)
        batch = next(iterator)
        emb, logits, targets = feedback
        sampler.observe(torch.tensor(batch), embeddings=emb[batch], logits=logits[batch],
                        targets=targets[batch])
        seen = sampler.state_dict()["last_seen"]
        assert set(seen[batch].tolist()) == {1} and (seen == 0).sum() == N - len(batch)


class TestRejectedIndicesOnDevice:
    def test_out_of_range_device_indices_counted(self):
        """Indices checked on the device: rows outside the dataset are counted, not stored."""
        if not torch.cuda.is_available():
            pytest.skip("torch-cuda: torch.cuda.is_available() is False")
        sampler = _observed()
        before = sampler.state_dict()["store"]["embeddings"].clone()
        emb = torch.randn(3, D, device="cuda")
        sampler.observe(torch.tensor([1, N, 2], device="cuda"), embeddings=emb)
        after = sampler.state_dict()["store"]["embeddings"]
        torch.testing.assert_close(after[[1, 2]], emb[[0, 2]].cpu())
        others = [i for i in range(N) if i not in (1, 2)]
        assert torch.equal(after[others], before[others])
        report, _ = _refit_report(sampler)
        assert report.n_rejected == 1 and report.rejected_indices == ()

    def test_cuda_values_into_a_host_store(self):
        """CUDA values recorded into a store on the CPU are copied before they are read.

        A copy to the host must not be queued (non_blocking): the CPU would read the
        pinned buffer before the copy, queued behind a long kernel, lands.
        """
        if not torch.cuda.is_available():
            pytest.skip("torch-cuda: torch.cuda.is_available() is False")
        sampler = _observed()  # the store is on the CPU
        emb, logits, targets = (v.cuda() for v in _feedback(64, seed=2))
        torch.cuda._sleep(200_000_000)  # keeps the stream busy for a while
        emb = emb * 1.0  # queued behind the sleep
        sampler.observe(torch.arange(64), embeddings=emb, logits=logits, targets=targets)
        stored = sampler.state_dict()["store"]["embeddings"][:64]
        torch.testing.assert_close(stored, emb.cpu())

    def test_observe_does_not_synchronise(self):
        """observe() with CUDA values runs under torch.cuda.set_sync_debug_mode('error')."""
        if not torch.cuda.is_available():
            pytest.skip("torch-cuda: torch.cuda.is_available() is False")
        sampler = GraftBatchSampler(N, 32, targets=torch.randint(0, C, (N,)),
                                    sketch_width=4, feedback_dtype=torch.float16,
                                    warm_start_epochs=1)
        emb, logits = torch.randn(32, D, device="cuda"), torch.randn(32, C, device="cuda")
        emb[3] = float("nan")
        sampler.observe(torch.arange(32), embeddings=emb, logits=logits)
        sampler._recorder.store.flush()  # allocates the store
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            sampler.observe(torch.arange(32, 64), embeddings=emb, logits=logits)
            sampler.observe(torch.arange(64, 96, device="cuda"), embeddings=emb, logits=logits)
            sampler._recorder.store.flush()  # records the staged batches
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert sampler._recorder.store.take_rejected()[0].tolist() == [3, 35, 67]


    @pytest.mark.parametrize("with_indices", [False, True])
    def test_training_loop_does_not_synchronise(self, with_indices):
        """The sampler's own batches, observed step by step (general, then steady-state
        path, then a recording), run under set_sync_debug_mode('error'); a NaN row is
        rejected and reported, the other rows are stored."""
        if not torch.cuda.is_available():
            pytest.skip("torch-cuda: torch.cuda.is_available() is False")
        n = 256
        targets = torch.randint(0, C, (n,))
        sampler = GraftBatchSampler(n, 16, fraction=1.0, targets=targets, warm_start_epochs=1)
        emb = torch.randn(n, D, device="cuda")
        logits = torch.randn(n, C, device="cuda")
        emb[37, 1] = float("nan")
        # the loop's own copies are made beforehand (a blocking copy to the GPU syncs)
        plan = [torch.tensor(b) for b in GraftBatchSampler(n, 16, fraction=1.0,
                                                           warm_start_epochs=1)]  # same seed
        values = [(emb[b.cuda()], logits[b.cuda()]) for b in plan]
        batches = iter(sampler)
        first = next(batches)  # the first observe takes the general path and places the store
        sampler.observe(torch.tensor(first) if with_indices else None,
                        embeddings=emb[first], logits=logits[first])
        sampler._recorder.store.flush()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step, batch in enumerate(batches, start=1):
                assert batch == plan[step].tolist()
                sampler.observe(plan[step] if with_indices else None,
                                embeddings=values[step][0], logits=values[step][1])
            sampler._recorder.store.flush()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        store = sampler.state_dict()["store"]["embeddings"]
        good = torch.arange(n) != 37
        torch.testing.assert_close(store[good], emb.cpu()[good])
        assert sampler._recorder.store.take_rejected()[0].tolist() == [37]


class TestCompactStore:
    """feedback_dtype and sketch_width keep the store small."""

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "float16"])
    def test_feedback_dtype(self, dtype):
        """The store holds the feedback in feedback_dtype, and a refit selects from it."""
        sampler = _observed(feedback_dtype=dtype)
        store = sampler.state_dict()["store"]
        expected = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        assert {v.dtype for v in store.values()} == {expected}
        sampler.set_epoch(1)
        assert len(_flat(sampler)) == round(0.3 * N)

    @pytest.mark.parametrize("twice", [False, True])
    def test_value_overflowing_the_feedback_dtype_rejected(self, twice):
        """A finite row that float16 cannot hold keeps the sample's earlier values and is
        reported; observed twice in one call, the sample keeps its last row that fits."""
        sampler = _observed(feedback_dtype=torch.float16)
        before = sampler.state_dict()["store"]["embeddings"].clone()
        emb, logits, targets = _feedback(8, seed=1)
        indices = torch.arange(8)
        if twice:  # row 5 is sample 4's second observation
            indices[5] = 4
        emb[5, 2] = 1e5  # float16 holds at most 65504
        sampler.observe(indices, embeddings=emb, logits=logits, targets=targets)
        after = sampler.state_dict()["store"]["embeddings"]
        assert torch.isfinite(after).all()
        if twice:
            torch.testing.assert_close(after[4], emb[4].half())
            assert torch.equal(after[5], before[5])
        else:
            assert torch.equal(after[5], before[5])
        report, message = _refit_report(sampler)
        assert report.n_rejected == 1 and report.rejected_indices == ((4,) if twice else (5,))
        assert "too large for feedback_dtype" in message

    def test_state_overflowing_the_feedback_dtype_raises(self):
        """A float32 state with values float16 cannot hold is refused, sampler unchanged."""
        state = _observed().state_dict()
        state["store"]["embeddings"][7, 1] = 1e5
        sampler = _observed(feedback_dtype=torch.float16)
        sampler.set_epoch(3)
        before = sampler.state_dict()
        with pytest.raises(ValueError, match=r"too large for the feedback_dtype .*sample 7"):
            sampler.load_state_dict(state)
        after = sampler.state_dict()
        assert after["epoch"] == 3
        assert torch.equal(after["store"]["embeddings"], before["store"]["embeddings"])

    def test_state_with_infinite_rows_loads_them_as_rejected(self):
        """Rows saved as infinity (by a version that stored float16 overflow so) load as
        never recorded and counted as rejected: the refit warns and selects."""
        state = _observed(feedback_dtype=torch.float16).state_dict()
        state["store"]["embeddings"][[4, 9]] = float("inf")
        sampler = GraftBatchSampler(N, 32, fraction=0.3, feedback_dtype=torch.float16,
                                    warm_start_epochs=1)
        sampler.load_state_dict(state)
        loaded = sampler.state_dict()
        assert torch.isfinite(loaded["store"]["embeddings"]).all()
        assert loaded["last_seen"][[4, 9]].tolist() == [-1, -1]
        assert (loaded["last_seen"] == 0).sum() == N - 2
        report, message = _refit_report(sampler)
        assert report.n_rejected == 2 and report.rejected_indices == (4, 9)
        assert "first: 4, 9" in message

    def test_state_overflowing_float32_raises(self):
        """A float64 state beyond float32's range is refused by a float32 sampler."""
        state = _observed(feedback_dtype=torch.float64).state_dict()
        state["store"]["embeddings"][3, 0] = 1e39
        with pytest.raises(ValueError, match=r"sample 3.*feedback_dtype=torch.float64"):
            _observed().load_state_dict(state)

    def test_value_fitting_bfloat16_stored(self):
        """bfloat16 has float32's range: the same large row is stored, not rejected."""
        sampler = _observed(feedback_dtype=torch.bfloat16)
        emb, logits, targets = _feedback(8, seed=1)
        emb[5, 2] = 1e5
        sampler.observe(torch.arange(8), embeddings=emb, logits=logits, targets=targets)
        assert sampler.state_dict()["store"]["embeddings"][5, 2] == emb[5, 2].bfloat16()
        assert sampler._recorder.store.take_rejected()[1] == 0

    def test_sketch_overflowing_rejected(self):
        """A row whose sketch overflows float32 keeps the sample's earlier values."""
        sampler = _observed(sketch_width=6)
        before = sampler.state_dict()["store"]["embeddings"].clone()
        # finite rows with finite sums (0), whose projections overflow float32
        emb = torch.full((4, D), 3e38) * torch.tensor([1.0, -1.0]).repeat(D // 2)
        emb[0] = 1.0
        sampler.observe(torch.arange(4), embeddings=emb)
        after = sampler.state_dict()["store"]["embeddings"]
        assert torch.equal(after[1:4], before[1:4]) and torch.isfinite(after[0]).all()
        assert sampler._recorder.store.take_rejected()[0].tolist() == [1, 2, 3]

    def test_sketch_width(self):
        """Feedback wider than sketch_width is stored at that width; narrower as observed."""
        sampler = _observed(sketch_width=6)
        store = sampler.state_dict()["store"]
        assert store["embeddings"].shape == (N, 6) and store["residuals"].shape == (N, C)
        torch.testing.assert_close(store["residuals"][:3], torch.softmax(_feedback()[1][:3], 1)
                                   - torch.nn.functional.one_hot(_feedback()[2][:3], C))

    def test_sketch_keeps_gram(self):
        """The sketch keeps the embeddings' Gram matrix (a wide sketch: closely)."""
        emb = torch.randn(50, 40, generator=torch.Generator().manual_seed(3))
        sampler = GraftBatchSampler(50, 10, sketch_width=39 * 100, warm_start_epochs=1)
        sampler.observe(torch.arange(50), embeddings=torch.cat([emb] * 100, dim=1) / 10)
        stored = sampler.state_dict()["store"]["embeddings"]
        gram, sketched = emb @ emb.T, stored @ stored.T
        assert torch.linalg.norm(sketched - gram) < 0.1 * torch.linalg.norm(gram)

    def test_sketch_seeded(self):
        """The sketch follows the seed: same seed same rows, another seed other rows."""
        rows = [_observed(sketch_width=6, seed=s).state_dict()["store"]["embeddings"]
                for s in (0, 0, 1)]
        assert torch.equal(rows[0], rows[1]) and not torch.allclose(rows[0], rows[2])

    def test_sketch_after_resume(self):
        """After load_state_dict the same sketch applies to new observations."""
        sampler = _observed(sketch_width=6)
        fresh = GraftBatchSampler(N, 32, fraction=0.3, sketch_width=6, warm_start_epochs=1)
        fresh.load_state_dict(GraftBatchSampler(N, 32, sketch_width=6,
                                                warm_start_epochs=1).state_dict())
        emb = torch.randn(4, D)
        for s in (sampler, fresh):
            s.observe(torch.arange(4), embeddings=emb)
        assert torch.equal(sampler.state_dict()["store"]["embeddings"][:4],
                           fresh.state_dict()["store"]["embeddings"][:4])

    def test_sketch_width_mismatch(self):
        """Embeddings of another width raise even when both are sketched to one width."""
        sampler = _observed(sketch_width=6)
        with pytest.raises(ValueError, match="'embeddings' has 7 columns but earlier "
                                             "observations had 8"):
            sampler.observe(torch.arange(4), embeddings=torch.randn(4, 7))

    @TORCH_BACKENDS
    def test_store_on_the_values_device(self, backend):
        """The store lives on the observed values' device, with the same sketch as on the CPU."""
        emb = torch.randn(16, D)
        stored = []
        for device in (backend.device, "cpu"):
            sampler = GraftBatchSampler(N, 32, sketch_width=4, feedback_dtype=torch.float16,
                                        warm_start_epochs=1)
            sampler.observe(torch.arange(16), embeddings=emb.to(device))
            assert sampler._recorder.store["embeddings"].device == torch.device(device)
            stored.append(sampler.state_dict()["store"]["embeddings"])
        torch.testing.assert_close(stored[0], stored[1], atol=1e-2, rtol=1e-2)

    def test_loaded_state_cast(self):
        """A float32 state loaded into a float16 sampler is stored in float16."""
        fresh = GraftBatchSampler(N, 32, fraction=0.3, feedback_dtype=torch.float16,
                                  warm_start_epochs=1)
        fresh.load_state_dict(_observed().state_dict())
        assert fresh.state_dict()["store"]["embeddings"].dtype == torch.float16


class TestDataLoader:
    def test_workers(self):
        """DataLoader with num_workers=2 yields exactly the sampler's batches."""
        data = TensorDataset(torch.arange(N))
        sampler = _observed()
        sampler.set_epoch(1)
        expected = list(sampler)
        loader = DataLoader(data, batch_sampler=sampler, num_workers=2)
        assert [b[0].tolist() for b in loader] == expected

    @pytest.mark.parametrize("num_workers", [0, 2])
    def test_resume_yields_the_rest_once(self, num_workers):
        """After load_state_dict the loader yields exactly the batches left, with workers
        too: a DataLoader with workers calls iter() on its batch sampler twice before the
        first batch (it used to restart the epoch from batch 0, training 3 batches twice)."""
        data = TensorDataset(torch.arange(N))
        emb, logits, targets = _feedback()
        sampler = GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=0)
        loader = DataLoader(data, batch_sampler=sampler, num_workers=num_workers)
        trained = []
        for step, (idx,) in enumerate(loader):
            sampler.observe(embeddings=emb[idx], logits=logits[idx], targets=targets[idx])
            trained.append(idx.tolist())
            if step == 2:
                break
        resumed = GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=0)
        resumed.load_state_dict(sampler.state_dict())
        expected = list(GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=0))
        rest = [idx.tolist() for (idx,) in DataLoader(data, batch_sampler=resumed,
                                                       num_workers=num_workers)]
        assert trained + rest == expected

    def test_resume_without_observe_counts_received_batches(self):
        """A loop that never observes (fixed features=) behind workers that fetch ahead:
        the resume position counts the batches the loop received (3), not those handed to
        the workers (7), which a resumed run skipped untrained (16 of 64 samples)."""
        data = TensorDataset(torch.arange(64))
        X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))

        def make():
            return GraftBatchSampler(64, 4, fraction=0.5, features=X, warm_start_epochs=1)

        sampler = make()
        trained = []
        for step, (idx,) in enumerate(DataLoader(data, batch_sampler=sampler,
                                                 num_workers=2, prefetch_factor=2)):
            trained.append(idx.tolist())
            if step == 2:
                state = sampler.state_dict()  # a checkpoint in the loop
                break
        assert state["batches_yielded"] == 3
        # after the loop left the loader, no batch the loop was not given counts as trained
        assert 2 <= sampler.state_dict()["batches_yielded"] <= 3
        resumed = make()
        resumed.load_state_dict(state)
        rest = [idx.tolist() for (idx,) in DataLoader(data, batch_sampler=resumed,
                                                       num_workers=2)]
        assert trained + rest == list(make())

    def test_resume_after_a_whole_pass_without_observe(self):
        """A loop that never observes, behind workers, runs the epoch to its end: the
        state counts every batch and resumes nothing of the epoch (the count the loader
        had at its last request said 3 of 8, and 5 batches were trained again)."""
        data = TensorDataset(torch.arange(64))
        X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
        sampler = GraftBatchSampler(64, 8, fraction=0.5, features=X, warm_start_epochs=1)
        assert len([b for b in DataLoader(data, batch_sampler=sampler, num_workers=2)]) == 8
        state = sampler.state_dict()
        assert state["batches_yielded"] == 8 and state["pass_done"]
        resumed = GraftBatchSampler(64, 8, fraction=0.5, features=X, warm_start_epochs=1)
        resumed.load_state_dict(state)
        assert list(resumed) == []

    def test_pickled_pass_keeps_the_received_count(self):
        """A pass pickled in the loop (workers fetching ahead) keeps the count of batches
        the loop received: the copy counted those handed to the workers, and a resume
        from it skipped half the epoch untrained."""
        import pickle

        data = TensorDataset(torch.arange(64))
        X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
        sampler = GraftBatchSampler(64, 4, fraction=0.5, features=X, warm_start_epochs=1)
        for step, _ in enumerate(DataLoader(data, batch_sampler=sampler, num_workers=2,
                                            prefetch_factor=2)):
            if step == 2:
                copy = pickle.loads(pickle.dumps(sampler))
                break
        assert copy.state_dict()["batches_yielded"] == 3

    @pytest.mark.parametrize("num_workers", [0, 2])
    def test_pickles_after_a_pass(self, num_workers, tmp_path):
        """A sampler that ran a pass pickles (torch.save, a spawned process): its pass held
        a weak reference to the DataLoader iterator and a frame's code object, and
        pickling raised TypeError. The copy resumes where the original stands."""
        import pickle

        data = TensorDataset(torch.arange(N))
        emb, logits, targets = _feedback()
        sampler = GraftBatchSampler(N, 8, fraction=0.5, warm_start_epochs=1)
        for step, (idx,) in enumerate(DataLoader(data, batch_sampler=sampler,
                                                 num_workers=num_workers)):
            sampler.observe(embeddings=emb[idx], logits=logits[idx], targets=targets[idx])
            if step == 4:
                break
        copy = pickle.loads(pickle.dumps(sampler))
        torch.save(sampler, tmp_path / "sampler.pt")
        assert copy.state_dict()["batches_yielded"] == 5
        assert list(copy) == list(sampler)

    @pytest.mark.parametrize("form", ["reversed", "first half", "int32 list"])
    def test_observed_part_of_a_batch_counts_it_trained(self, form):
        """observe(indices=...) with a handed-out batch reordered, or a part of it, marks
        that batch trained: with workers fetching ahead, the resume position counts
        the 3 trained batches, not the prefetched ones (it used to count 7, and a
        resume skipped 4 batches never trained)."""
        data = TensorDataset(torch.arange(N))
        emb, logits, targets = _feedback()
        shape = {"reversed": lambda i: i.flip(0), "first half": lambda i: i[:4],
                 "int32 list": lambda i: i.flip(0).to(torch.int32).tolist()}[form]
        sampler = GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=0)
        loader = DataLoader(data, batch_sampler=sampler, num_workers=2, prefetch_factor=2)
        for step, (idx,) in enumerate(loader):
            ind = shape(idx)
            rows = torch.as_tensor(ind, dtype=torch.int64)
            sampler.observe(ind, embeddings=emb[rows], logits=logits[rows],
                            targets=targets[rows])
            if step == 2:
                break
        state = sampler.state_dict()
        assert state["batches_yielded"] == 3
        stored = state["store"]["embeddings"]
        seen = torch.nonzero(state["last_seen"] >= 0).flatten()
        torch.testing.assert_close(stored[seen], emb[seen])

    def test_untouched_pass_keeps_the_resume_position(self):
        """An iterator that handed out nothing does not use up a loaded resume position;
        one that handed out a batch does (the next pass of the epoch starts over)."""
        sampler = GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=0)
        state = sampler.state_dict()
        state["batches_yielded"] = 2
        sampler.load_state_dict(state)
        expected = list(GraftBatchSampler(N, 8, fraction=1.0, warm_start_epochs=0))
        iter(sampler)  # made and dropped, as DataLoader's first iter() with workers
        assert list(sampler) == expected[2:]
        assert list(sampler) == expected  # a started pass consumed the position


@contextlib.contextmanager
def _process_group(rank, world, port):
    """A gloo process group of ``world`` ranks for the block (a spawned worker's)."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank, world, port, out_dir):
    with _process_group(rank, world, port):
        sampler = GraftBatchSampler(N, 16, fraction=0.3, seed=3, warm_start_epochs=1)
        emb, logits, targets = _feedback()
        mine = torch.arange(rank, N, world)  # each rank observes only its own share
        sampler.observe(mine, embeddings=emb[mine], logits=logits[mine], targets=targets[mine])
        sampler.set_epoch(1)
        torch.save({"batches": list(sampler), "plan": sampler._plan().tolist()},
                   os.path.join(out_dir, f"rank{rank}.pt"))


def _early_count_worker(rank, world, port, out_dir):
    """total_batches() read before init_process_group, then two epochs on two ranks."""
    import warnings

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sampler = GraftBatchSampler(N, 16, fraction=0.3, seed=3, warm_start_epochs=1)
    early = sampler.total_batches(2)  # e.g. to size an LR schedule: no group yet
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        emb, logits, targets = _feedback()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shares = []
            for epoch in range(2):
                sampler.set_epoch(epoch)
                share = _flat(sampler)
                rows = torch.tensor(share)
                sampler.observe(rows, embeddings=emb[rows], logits=logits[rows],
                                targets=targets[rows])
                shares.append(share)
        torch.save({"early": early, "later": sampler.total_batches(2), "shares": shares,
                    "num_replicas": sampler.num_replicas, "plan": sampler._plan().tolist(),
                    "warnings": [str(w.message) for w in caught]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _unusable_worker(rank, world, port, out_dir):
    """Rank 0 observes samples 0-29 with labels of -100 (ignore_index); see the test."""
    import warnings

    with _process_group(rank, world, port):
        sampler = GraftBatchSampler(N, 16, fraction=0.3, seed=3, warm_start_epochs=1,
                                    refit_every=1)
        emb, logits, targets = _feedback()
        mine = torch.arange(rank, N, world)
        labels = targets[mine].clone()
        if rank == 0:
            labels[mine < 30] = -100
        sampler.observe(mine, embeddings=emb[mine], logits=logits[mine], targets=labels)
        plans = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for epoch in (1, 2):
                sampler.set_epoch(epoch)
                plans.append(sampler._plan().tolist())
        torch.save({"plans": plans}, os.path.join(out_dir, f"rank{rank}.pt"))


def _merge_worker(rank, world, port, out_dir):
    """Four ranks observe overlapping rows over two refits (refit_every=2); see the test."""
    torch.set_num_threads(1)
    with _process_group(rank, world, port):
        sampler = GraftBatchSampler(N, 16, fraction=0.3, seed=3, refit_every=2,
                                    warm_start_epochs=1)
        emb, logits, targets = _feedback()
        mine = torch.arange(rank, N, world)
        sampler.observe(mine, embeddings=emb[mine], logits=logits[mine], targets=targets[mine])
        overlap = torch.arange(10)  # observed by every rank in epoch 0: rank 3 wins the tie
        sampler.observe(overlap, embeddings=emb[overlap] + rank, logits=logits[overlap],
                        targets=targets[overlap])
        out = {}
        sampler.set_epoch(1)
        out["plan1"], out["store1"] = sampler._plan().tolist(), sampler.state_dict()["store"]
        out["bytes1"] = sampler.last_refit.gathered_bytes
        if rank == 3:  # older than rank 0's observation of row 7 in epoch 2
            sampler.observe([7], embeddings=torch.full((1, D), 30.0), logits=logits[[7]],
                            targets=targets[[7]])
        if rank == 1:
            rows = torch.arange(20, 30)
            sampler.observe(rows, embeddings=torch.full((10, D), 1.0), logits=logits[rows],
                            targets=targets[rows])
        sampler.set_epoch(2)
        if rank == 0:
            sampler.observe([7], embeddings=torch.full((1, D), 70.0), logits=logits[[7]],
                            targets=targets[[7]])
        sampler.set_epoch(3)
        out["plan3"], out["store3"] = sampler._plan().tolist(), sampler.state_dict()["store"]
        out["bytes3"] = sampler.last_refit.gathered_bytes
        out["last_seen3"] = sampler.state_dict()["last_seen"]
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


class TestDistributed:
    def test_two_ranks_gloo(self, tmp_path):
        """Two gloo ranks get disjoint shares of equal length and agree on the plan."""
        results = spawn_ranks(_ddp_worker, 2, tmp_path)
        assert results[0]["plan"] == results[1]["plan"]
        shares = [_flat(r["batches"]) for r in results]
        assert len(shares[0]) == len(shares[1]) == round(0.3 * N) // 2
        assert not set(shares[0]) & set(shares[1])

    def test_counted_before_the_process_group(self, tmp_path):
        """total_batches() before init_process_group no longer fixes the world size at 1
        (each rank trained the whole plan and refitted on its own feedback, the ranks'
        subsets differing): the ranks shard and agree on the plan, and a warning says
        the earlier count was one process's."""
        out = spawn_ranks(_early_count_worker, 2, tmp_path)
        for o in out:
            assert o["num_replicas"] == 2 and o["early"] == 2 * o["later"]
            assert any("before torch.distributed was initialized" in w
                       for w in o["warnings"])
        assert out[0]["plan"] == out[1]["plan"]
        for epoch in range(2):
            assert not set(out[0]["shares"][epoch]) & set(out[1]["shares"][epoch])

    def test_unusable_samples_left_out_on_every_rank(self, tmp_path):
        """Samples whose only rows were rejected on one rank (labels of -100) are left out
        of the refits on every rank alike: the ranks' plans agree, and hold none of them
        (they were trained first at every refit, as never observed)."""
        out = spawn_ranks(_unusable_worker, 2, tmp_path)
        assert out[0]["plans"] == out[1]["plans"]
        unusable = set(range(0, 30, 2))  # rank 0's share of samples 0-29
        for plan in out[0]["plans"]:
            assert not unusable & set(plan) and len(plan) == round(0.3 * N)

    def test_four_ranks_merge_changed_rows(self, tmp_path):
        """Four gloo ranks send only their changed rows; newest wins, ties to the highest rank."""
        out = spawn_ranks(_merge_worker, 4, tmp_path)
        emb = _feedback()[0]
        for key in ("plan1", "plan3"):
            assert all(o[key] == out[0][key] for o in out)
        for key in ("store1", "store3"):
            for name in ("embeddings", "residuals"):
                assert all(torch.equal(o[key][name], out[0][key][name]) for o in out)
        first, last = out[0]["store1"]["embeddings"], out[0]["store3"]["embeddings"]
        torch.testing.assert_close(first[10:], emb[10:])
        torch.testing.assert_close(first[:10], emb[:10] + 3)
        assert bool((last[7] == 70).all()) and bool((last[20:30] == 1).all())
        assert out[0]["last_seen3"][7] == 2 and out[0]["last_seen3"][20] == 1
        row = (D + C) * 4 + 16  # values, index and last-seen epoch
        setup = 3 * 2 * 8 + 8  # the kinds of feedback and the row count
        observed = max(len(set(range(r, N, 4)) | set(range(10))) for r in range(4))
        for o in out:  # the rows observed since the last refit (padded to the most), no more
            assert o["bytes1"] == setup + observed * row
            assert o["bytes3"] == setup + 10 * row  # rank 1's ten rows set the padding

    def test_padding_without_distributed(self):
        """Explicit num_replicas/rank pad an odd subset to equal shares."""
        X = torch.randn(N, 5, generator=torch.Generator().manual_seed(1))
        shares = []
        for rank in range(4):
            sampler = GraftBatchSampler(N, 7, fraction=0.3, features=X, num_replicas=4,
                                        rank=rank, warm_start_epochs=1)
            sampler.set_epoch(1)
            shares.append(_flat(sampler))
        assert len({len(s) for s in shares}) == 1
        whole = GraftBatchSampler(N, 7, fraction=0.3, features=X, warm_start_epochs=1)
        whole.set_epoch(1)
        assert set().union(*shares) == set(_flat(whole))


@pytest.mark.parametrize("template", [None, GraftSelector(strategy="uniform"),
                                      GraftSelector(basis="input")],
                         ids=["default", "uniform", "input"])
def test_refits_never_compute_weights(monkeypatch, template):
    """The sampler trains unweighted: every refit fits its selector with
    compute_weights=False, whatever the template (input basis and uniform subsets read
    the store's arrays, not its view), so no weights are formed or warned about."""
    calls = []
    fit = GraftSelector.fit

    def recording(self, X, y=None, **kwargs):
        calls.append(kwargs.get("compute_weights", True))
        return fit(self, X, y, **kwargs)

    monkeypatch.setattr(GraftSelector, "fit", recording)
    sampler = _observed(warm_start_epochs=1, refit_every=1, selector=template)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        emb, logits, targets = _feedback(seed=epoch)
        for batch in sampler:
            idx = torch.as_tensor(batch)
            sampler.observe(idx, embeddings=emb[idx], logits=logits[idx], targets=targets[idx])
    assert calls and not any(calls)


class TestCandidateShare:
    def _run(self, monkeypatch, epochs=4, **kwargs):
        """Plans of ``epochs`` epochs (each observed) and the candidates of every refit."""
        from graft_select import _planner

        seen = []
        fit = _planner.fit_selector

        def recording(selector, X, gradients, candidates, quiet=True, pool=None):
            seen.append(candidates.clone())
            return fit(selector, X, gradients, candidates, quiet, pool)

        monkeypatch.setattr(_planner, "fit_selector", recording)
        params = {"fraction": 0.1, "candidate_share": 0.25, "refit_every": 1, **kwargs}
        sampler = _observed(**params)
        emb, logits, targets = _feedback()
        plans = []
        for epoch in range(1, epochs + 1):
            sampler.set_epoch(epoch)
            n_batches = len(sampler)
            plan = [list(b) for b in sampler]
            assert len(plan) == n_batches
            plans.append(plan)
            for batch in plan:
                idx = torch.as_tensor(batch)
                sampler.observe(idx, embeddings=emb[idx] * epoch, logits=logits[idx],
                                targets=targets[idx])
        return plans, seen

    def test_refits_select_from_a_random_share(self, monkeypatch):
        """Each refit picks its subset among ceil(0.25 * 600) = 150 distinct samples, a new
        draw each refit; the plan trains on that subset."""
        plans, seen = self._run(monkeypatch)
        assert len(seen) == 4
        for plan, candidates in zip(plans, seen):
            assert len(candidates) == 150 and len(set(candidates.tolist())) == 150
            trained = set(_flat(plan))
            assert len(trained) == 60 and trained <= set(candidates.tolist())
        assert len({tuple(sorted(c.tolist())) for c in seen}) == 4

    def test_deterministic(self, monkeypatch):
        """The same seed draws the same candidates and plans (every rank draws alike)."""
        first, seen_a = self._run(monkeypatch)
        second, seen_b = self._run(monkeypatch)
        assert first == second
        assert all(torch.equal(a, b) for a, b in zip(seen_a, seen_b))

    def test_without_shuffle_in_index_order(self, monkeypatch):
        _, seen = self._run(monkeypatch, epochs=2, shuffle=False)
        assert all(torch.equal(c, torch.sort(c).values) and len(c) == 150 for c in seen)

    def test_full_share_is_the_default(self, monkeypatch):
        """candidate_share=1.0 plans exactly as the default."""
        explicit, _ = self._run(monkeypatch, epochs=2, candidate_share=1.0)
        params = {"fraction": 0.1, "refit_every": 1}
        sampler = _observed(**params)
        emb, logits, targets = _feedback()
        default = []
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            plan = [list(b) for b in sampler]
            default.append(plan)
            for batch in plan:
                idx = torch.as_tensor(batch)
                sampler.observe(idx, embeddings=emb[idx] * epoch, logits=logits[idx],
                                targets=targets[idx])
        assert default == explicit

    @pytest.mark.parametrize("share, match", [
        (0.05, "below fraction=0.1"), (0.0, "candidate_share"), (1.5, "candidate_share"),
        ("half", "candidate_share"), (0.2, r"at most the share.*pool_factor=1.0")])
    def test_bad_values_named(self, share, match):
        """Out of range, or no larger than the pool (0.2 at fraction 0.1: the refit would
        select every candidate), raises naming the fix."""
        with pytest.raises((ValueError, TypeError), match=match):
            GraftBatchSampler(600, 32, fraction=0.1, candidate_share=share)

    def test_share_of_twice_the_fraction_without_pools(self):
        """With pool_factor=1.0 the refit selects fraction * n, so 2 * fraction is valid."""
        sampler = GraftBatchSampler(600, 32, fraction=0.1, candidate_share=0.2,
                                    pool_factor=1.0)
        assert sampler.candidate_share == 0.2
