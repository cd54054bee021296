"""A refit's pool from the orders of its epoch's budget (`selector.selecting_pool`).

A sampler with ``pool_factor > 1`` trains each epoch on a draw of ``fraction`` from
a pool of ``pool_factor * fraction``. The pool is selected with the low-rank factor
and the MaxVol orders of a selection of ``fraction`` (whose size band already reaches
twice it), not as a selection at the pool's own fraction, which computes a factor of
twice the rank and orders of up to the whole chunk (a refit of 300,000 x 512 at
fraction 0.3 took 11x a pass over the store that way, benchmarks/RESULTS.md).
"""

import threading

import numpy as np
import pytest
from conftest import softmax_store

torch = pytest.importorskip("torch")

from graft_select import GraftSelector, StoredGradients, _feedback, _orders  # noqa: E402
from graft_select._selection import pool_lengths, pool_sizes  # noqa: E402
from graft_select._sizing import apportion  # noqa: E402
from graft_select.sampler import GraftBatchSampler  # noqa: E402
from graft_select.selector import selecting_pool  # noqa: E402

N, D, C = 1200, 12, 5


def _store(n=N, seed=0):
    return softmax_store(np.random.default_rng(seed), n, D, C)


def _ranks(monkeypatch):
    """The ranks of the factors the fits compute, recorded (both in-memory and store)."""
    seen = []
    for module in (_orders, _feedback):
        original = module.rank

        def spy(*args, _original=original):
            seen.append(_original(*args))
            return seen[-1]

        monkeypatch.setattr(module, "rank", spy)
    return seen


class TestPoolSizes:
    def test_within_the_band_and_summing_to_the_pool(self):
        rng = np.random.default_rng(0)
        chunk_sizes = np.array([100, 100, 100, 60])
        sizes = np.array([30, 20, 40, 18])
        lengths = np.array([60, 60, 60, 36])
        errors = [np.sort(rng.random(k))[::-1] for k in lengths]
        pools = pool_sizes(errors, sizes, lengths, chunk_sizes, 180)
        assert pools.sum() == 180
        assert np.all(pools >= sizes) and np.all(pools <= lengths)

    def test_levels_errors(self):
        """The chunk whose order's errors stay high gets the pool's extra rows."""
        chunk_sizes = np.array([100, 100])
        lengths = np.array([60, 60])
        errors = [np.linspace(1.0, 0.9, 60), np.linspace(0.2, 0.0, 60)]
        pools = pool_sizes(errors, np.array([20, 20]), lengths, chunk_sizes, 70)
        assert pools.tolist() == [50, 20]

    def test_without_errors_each_chunks_share(self):
        chunk_sizes = np.array([100, 100, 50])
        pools = pool_sizes([], np.array([30, 30, 15]), np.array([60, 60, 30]), chunk_sizes, 150)
        assert pools.tolist() == apportion(0.6, chunk_sizes).tolist()

    def test_lengths_reach_the_pool(self):
        """The orders grow where the band is shorter than a chunk's share of the pool."""
        chunk_sizes = np.array([100, 100])
        assert pool_lengths(np.array([20, 20]), chunk_sizes, 120).tolist() == [60, 60]
        assert pool_lengths(np.array([80, 80]), chunk_sizes, 120).tolist() == [80, 80]


class TestSelectingPool:
    @pytest.mark.parametrize("form", ["stored", "arrays", "input"])
    def test_pool_size_and_the_budgets_rank(self, monkeypatch, form):
        """A pool of twice the budget has the size asked for, from factors of the
        budget's rank (not the pool fraction's, which is about twice it)."""
        residuals, embeddings = _store()
        ranks = _ranks(monkeypatch)

        def fit(fraction, pool=None):
            selector = GraftSelector(fraction, chunk_size=100, random_state=0)
            with selecting_pool(pool):
                if form == "stored":
                    selector.fit(None, gradients=StoredGradients(residuals, embeddings),
                                 compute_weights=False)
                elif form == "arrays":
                    gradients = (residuals[:, :, None] * torch.cat(
                        [embeddings, torch.ones(N, 1)], 1)[:, None, :]).reshape(N, -1)
                    selector.fit(embeddings.numpy(), gradients=gradients.numpy())
                else:  # wide enough that the rank is not the columns'
                    selector.fit(np.random.default_rng(0).normal(size=(N, 80)))
            return selector, list(ranks)

        budget, budget_ranks = fit(0.2)
        ranks.clear()
        pooled, pool_ranks = fit(0.2, pool=480)
        ranks.clear()
        _, wide_ranks = fit(0.4)
        assert len(budget.sample_indices_) == 240 and len(pooled.sample_indices_) == 480
        assert len(np.unique(np.asarray(pooled.sample_indices_))) == 480
        assert pool_ranks == budget_ranks
        assert max(wide_ranks) > max(budget_ranks)  # what the pool is spared

    def test_pool_holds_the_maxvol_subset(self):
        """Chunk by chunk, where MaxVol's picks are kept, the pool extends the subset's
        order prefix."""
        residuals, embeddings = _store()
        stored = StoredGradients(residuals, embeddings)
        kwargs = dict(chunk_size=100, random_state=0, max_error_ratio=None)
        subset = GraftSelector(0.2, **kwargs).fit(None, gradients=stored,
                                                  compute_weights=False)
        with selecting_pool(480):
            pool = GraftSelector(0.2, **kwargs).fit(None, gradients=stored,
                                                    compute_weights=False)
        assert set(np.asarray(subset.sample_indices_)) <= set(np.asarray(pool.sample_indices_))

    def test_deterministic_and_scoped(self):
        residuals, embeddings = _store()
        stored = StoredGradients(residuals, embeddings)

        def fit():
            return np.asarray(GraftSelector(0.2, chunk_size=100, random_state=3).fit(
                None, gradients=stored, compute_weights=False).sample_indices_)

        with selecting_pool(480):
            first, second = fit(), fit()
            other_thread = []
            thread = threading.Thread(target=lambda: other_thread.append(fit()))
            thread.start()
            thread.join()
        assert np.array_equal(first, second) and len(first) == 480
        assert len(other_thread[0]) == 240  # the block is this thread's alone
        assert len(fit()) == 240  # and ends with the block

    def test_every_fit_door(self):
        """fit_transform and GraftResampler.fit_resample select the pool too (every
        door goes through the one fit)."""
        from graft_select import GraftResampler

        rng = np.random.default_rng(0)
        X, y = rng.normal(size=(600, 8)), rng.integers(0, 3, 600)
        with selecting_pool(240):
            rows = GraftSelector(0.2, chunk_size=100, random_state=0).fit_transform(X)
            X_pool, _ = GraftResampler(0.2, chunk_size=100, random_state=0).fit_resample(X, y)
        assert len(rows) == len(X_pool) == 240

    def test_tree_raises(self, monkeypatch):
        from graft_select import _sizing

        monkeypatch.setattr(_sizing, "DEFAULT_CHUNK_ROWS", 256)  # leaves of a tree
        X = np.random.default_rng(0).normal(size=(2000, 6))
        with selecting_pool(80), pytest.raises(ValueError, match="a pool needs chunks"):
            GraftSelector(0.02, chunk_size=None, random_state=0).fit(X)


class TestSamplerPool:
    @pytest.mark.parametrize("pool_factor", [1.0, 2.0])
    def test_refit_fits_the_budget_with_the_pool(self, monkeypatch, pool_factor):
        """The refit's selector is fitted at the epoch budget's fraction, with the pool
        asked for through `selecting_pool` (none with pool_factor=1); the pool is what
        the refit reports as selected."""
        from graft_select import selector as selector_module

        seen = []
        fit = selector_module.GraftSelector.fit

        def spy(self, *args, **kwargs):
            seen.append((self.fraction, selector_module._POOL.get()))
            return fit(self, *args, **kwargs)

        monkeypatch.setattr(selector_module.GraftSelector, "fit", spy)
        _, embeddings = _store()
        sampler = GraftBatchSampler(N, 20, fraction=0.2, seed=0, warm_start_epochs=1,
                                    pool_factor=pool_factor)
        g = torch.Generator().manual_seed(1)
        sampler.observe(torch.arange(N), embeddings=embeddings,
                        logits=torch.randn(N, C, generator=g),
                        targets=torch.randint(0, C, (N,), generator=g))
        sampler.set_epoch(1)
        trained = [i for batch in sampler for i in batch]
        (fraction, pool), = seen
        assert fraction == pytest.approx(0.2)
        expected = round(min(2 * 0.2, 0.6) * N) if pool_factor == 2.0 else 240
        assert pool == (None if pool_factor == 1.0 else expected)
        assert sampler.last_refit.n_selected == expected
        assert len(trained) == 240 and set(trained) <= set(sampler._planner.subset.tolist())

    def test_refreshes_shrink_the_selection_with_the_pool(self, monkeypatch):
        """With refreshes (samples never observed, trained in every epoch) the pool's
        picks and the selection its factors come from shrink alike: the pool stays
        ``pool_factor`` times that selection, within the orders' band, instead of
        many times a selection of what the epoch's budget leaves (a factor of too
        low a rank for the pool)."""
        from graft_select import selector as selector_module

        seen = []
        fit = selector_module.GraftSelector.fit

        def spy(self, *args, **kwargs):
            out = fit(self, *args, **kwargs)
            seen.append((self.fraction * self.n_samples_fit_, selector_module._POOL.get()))
            return out

        monkeypatch.setattr(selector_module.GraftSelector, "fit", spy)
        _, embeddings = _store()
        sampler = GraftBatchSampler(N, 20, fraction=0.3, seed=0, warm_start_epochs=1)
        g = torch.Generator().manual_seed(1)
        observed = torch.arange(900)  # the last 300 never observed: refreshes
        sampler.observe(observed, embeddings=embeddings[observed],
                        logits=torch.randn(900, C, generator=g),
                        targets=torch.randint(0, C, (900,), generator=g))
        sampler.set_epoch(1)
        list(sampler)
        report = sampler.last_refit
        (selected, pool), = seen
        assert report.n_refreshed > 0 and report.n_selected == 720
        assert pool == 720 - report.n_refreshed
        assert pool / selected == pytest.approx(2.0, rel=0.02)
