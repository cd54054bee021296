"""GraftSelector on dask arrays: the same selection as in memory, block by block.

Every fit is compared with the in-memory fit of the same data and seed (same
indices, weights, sizes and errors), on several block layouts, under the
synchronous scheduler and on a real two-worker LocalCluster.
"""

import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from graft_select import (  # noqa: E402
    BudgetWarning,
    FactoredGradients,
    GraftResampler,
    GraftSelector,
    _dask,
    _selection,
    last_layer_gradients,
)

N, D, BATCH = 2300, 12, 100  # 23 chunks of 100 rows: the last block's chunks are full
N_SHORT = 2260  # 22 full chunks and a short one (two stacks, two seeds)

# Row block layouts: aligned uniform, aligned uneven, one block, and unaligned (rechunked).
LAYOUTS = {
    "aligned": 500,
    "uneven": (300, 1000, 200, -1),
    "one block": -1,
    "unaligned": 730,
}


def _chunks(layout, n):
    spec = LAYOUTS[layout]
    if isinstance(spec, tuple):
        sizes = list(spec[:-1])
        return (tuple([*sizes, n - sum(sizes)]), -1)
    return (spec, -1)


@pytest.fixture(scope="module")
def data():
    """Features, dense gradients and factored gradients with unequal chunk difficulty."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((N, D))
    X[: N // 2] *= np.linspace(0.2, 3.0, D)  # the first half: a few dominant directions
    logits = X @ rng.standard_normal((D, 4))
    y = rng.integers(0, 4, N)
    embeddings = X[:, :6]
    dense = last_layer_gradients(logits, y, embeddings)
    factored = last_layer_gradients(logits, y, embeddings, factored=True)
    return X, y, dense, factored


@pytest.fixture(scope="module")
def client():
    """A real two-worker cluster (one thread each), closed after the module."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(params=["synchronous", "distributed"])
def scheduler(request):
    """Run the test body under the synchronous scheduler, then on the LocalCluster."""
    if request.param == "synchronous":
        with dask.config.set(scheduler="synchronous"):
            yield request.param
    else:
        c = request.getfixturevalue("client")
        with dask.config.set(scheduler=c.get):
            yield request.param


def _dask_like(A, chunks):
    if isinstance(A, FactoredGradients):
        return FactoredGradients(_dask_like(A.residuals, chunks), _dask_like(A.inputs, chunks))
    return da.from_array(A, chunks=chunks)


def _assert_same_fit(lazy, eager):
    np.testing.assert_array_equal(lazy.sample_indices_, eager.sample_indices_)
    np.testing.assert_array_equal(lazy.sample_weight_, eager.sample_weight_)
    np.testing.assert_array_equal(lazy.subset_sizes_, eager.subset_sizes_)
    np.testing.assert_array_equal(lazy.chunk_sizes_, eager.chunk_sizes_)
    if eager.gradient_error_ is None:
        assert lazy.gradient_error_ is None
    else:
        np.testing.assert_array_equal(lazy.gradient_error_, eager.gradient_error_)
    assert isinstance(lazy.sample_indices_, np.ndarray)
    assert isinstance(lazy.sample_weight_, np.ndarray)
    assert lazy.n_samples_fit_ == eager.n_samples_fit_
    assert lazy.n_features_in_ == eager.n_features_in_
    assert lazy.basis_ == eager.basis_


class TestSameAsInMemory:
    """A fit on a dask array equals the in-memory fit of the same data and seed."""

    @pytest.mark.parametrize("layout", list(LAYOUTS))
    @pytest.mark.parametrize("n", [N, N_SHORT])
    def test_without_gradients(self, data, layout, n):
        """Indices and weights match for every block layout, with and without a short chunk."""
        X = data[0][:n]
        params = dict(fraction=0.15, chunk_size=BATCH, random_state=3)
        eager = GraftSelector(**params).fit(X)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(**params).fit(da.from_array(X, chunks=_chunks(layout, n)))
        _assert_same_fit(lazy, eager)

    @pytest.mark.parametrize("params", [
        {"uniform_share": 0.4},
        {"strategy": "uniform"},
        {"method": "lu", "refine": True, "n_components": 4},
        {"svd_method": "randomized", "n_components": 3},
    ], ids=["uniform_share", "uniform", "lu-refine", "randomized"])
    def test_options(self, data, scheduler, params):
        """Uniform picks, the uniform strategy, LU + refine and the randomized SVD match."""
        X = data[0][:N_SHORT]
        params = dict(fraction=0.2, chunk_size=BATCH, random_state=11, **params)
        eager = GraftSelector(**params).fit(X)
        lazy = GraftSelector(**params).fit(da.from_array(X, chunks=(400, -1)))
        _assert_same_fit(lazy, eager)

    @pytest.mark.parametrize("kind", ["dense", "factored"])
    @pytest.mark.parametrize("params", [
        {}, {"basis": "gradients"}, {"gradient_tol": 0.2}, {"uniform_share": 0.3},
    ], ids=["input", "basis-gradients", "tol", "uniform_share"])
    def test_with_gradients(self, data, scheduler, kind, params):
        """Sizes, weights and gradient errors match with dense and factored gradients."""
        X, _, dense, factored = data
        G = dense if kind == "dense" else factored
        params = dict(fraction=0.2, chunk_size=BATCH, random_state=5, **params)
        eager = GraftSelector(**params).fit(X, gradients=G)
        chunks = _chunks("uneven", N)
        lazy = GraftSelector(**params).fit(da.from_array(X, chunks=chunks),
                                           gradients=_dask_like(G, chunks))
        _assert_same_fit(lazy, eager)

    @pytest.mark.parametrize("layout", ["aligned", "unaligned"])
    def test_gradient_strategy_uniform_and_numpy_gradients(self, data, layout):
        """NumPy gradients with a dask X are chunked like X; the uniform strategy matches."""
        X, _, dense, _ = data
        params = dict(fraction=0.2, chunk_size=BATCH, strategy="uniform", random_state=2)
        eager = GraftSelector(**params).fit(X, gradients=dense)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(**params).fit(da.from_array(X, chunks=_chunks(layout, N)),
                                               gradients=dense)
        _assert_same_fit(lazy, eager)

    def test_integer_input(self):
        """Integer dask input is converted to float64, as in memory."""
        X = np.random.default_rng(0).integers(-5, 5, (600, 7))
        eager = GraftSelector(0.3, chunk_size=64, random_state=0).fit(X)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(0.3, chunk_size=64, random_state=0).fit(
                da.from_array(X, chunks=(128, -1)))
        _assert_same_fit(lazy, eager)

    def test_float16_input(self):
        """float16 dask input is converted to float64, as in memory."""
        X = np.random.default_rng(0).standard_normal((600, 7)).astype(np.float16)
        eager = GraftSelector(0.3, chunk_size=64, random_state=0).fit(X)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(0.3, chunk_size=64, random_state=0).fit(
                da.from_array(X, chunks=(128, -1)))
        _assert_same_fit(lazy, eager)

    @pytest.mark.parametrize("kind", ["dense", "factored"])
    def test_float16_gradients(self, data, kind):
        """float16 gradients are computed in float32 on the blocks, as in memory."""
        X, _, dense, factored = data
        G = dense.astype(np.float16) if kind == "dense" else FactoredGradients(
            factored.residuals.astype(np.float16), factored.inputs.astype(np.float16))
        params = dict(fraction=0.2, chunk_size=BATCH, basis="gradients", random_state=0)
        eager = GraftSelector(**params).fit(X, gradients=G)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(**params).fit(da.from_array(X, chunks=(500, -1)),
                                               gradients=_dask_like(G, (500, -1)))
        _assert_same_fit(lazy, eager)

    def test_chunk_size_above_rows(self, data):
        """chunk_size >= n_samples is one chunk of all rows, gathered into one block."""
        X = data[0][:500]
        eager = GraftSelector(0.2, chunk_size=800, random_state=0).fit(X)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(0.2, chunk_size=800, random_state=0).fit(
                da.from_array(X, chunks=(128, -1)))
        _assert_same_fit(lazy, eager)

    def test_tree_with_dense_gradients_at_default_threads(self):
        """chunk_size=None with dense gradients equals the in-memory tree at the default BLAS
        threads: the root's pivots depend on the threads' rounding, and the dask tree ran
        its roots at the default threads where the in-memory tree runs them at one (two of
        group 1's picks on this data swapped places)."""
        rng = np.random.default_rng(1)
        X = rng.standard_normal((41000, 8)).astype(np.float32)
        G = rng.standard_normal((41000, 6)).astype(np.float32)
        params = dict(fraction=0.01, chunk_size=None, random_state=3)
        eager = GraftSelector(**params).fit(X, gradients=G)
        assert len(eager.chunk_sizes_) == 2  # two groups, as in the review's data
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(**params).fit(da.from_array(X, chunks=(8192, -1)),
                                               gradients=da.from_array(G, chunks=(8192, -1)))
        _assert_same_fit(lazy, eager)

    def test_tree_with_factored_gradients_on_worker_processes(self, client):
        """chunk_size=None with factored gradients on the processes=True LocalCluster equals
        the in-memory fit: blocks a worker deserializes at an odd byte offset used to send
        NumPy's matmul off BLAS, and the weights and gradient_error_ changed from run to run
        (tests/test_hierarchy.py pins the cause without a cluster)."""
        rng = np.random.default_rng(5)
        X = rng.standard_normal((20000, 8)).astype(np.float32)
        G = FactoredGradients(rng.standard_normal((20000, 3)).astype(np.float32),
                              rng.standard_normal((20000, 5)).astype(np.float32))
        params = dict(fraction=0.01, chunk_size=None, uniform_share=0.2, random_state=7)
        eager = GraftSelector(**params).fit(X, gradients=G)
        with dask.config.set(scheduler=client.get):
            lazy = GraftSelector(**params).fit(da.from_array(X, chunks=(3000, -1)),
                                               gradients=_dask_like(G, (3000, -1)))
        _assert_same_fit(lazy, eager)

    def test_refit_forgets_feature_names(self, data):
        """A refit on a dask array drops feature names of an earlier DataFrame fit."""
        pd = pytest.importorskip("pandas")
        X = data[0][:400]
        sel = GraftSelector(0.2, chunk_size=BATCH, random_state=0)
        sel.fit(pd.DataFrame(X, columns=[f"f{i}" for i in range(D)]))
        assert hasattr(sel, "feature_names_in_")
        with dask.config.set(scheduler="synchronous"):
            sel.fit(da.from_array(X, chunks=(200, -1)))
        assert not hasattr(sel, "feature_names_in_")


class TestOneBudget:
    """The gradient-aware sizing spreads one budget over all chunks, across blocks."""

    def test_budget_is_global_not_per_block(self, data):
        """An easy block gives its budget to a hard one: one exact total, as in memory."""
        rng = np.random.default_rng(1)
        X = data[0]
        G = rng.standard_normal((N, 30))
        G[:1100] = rng.standard_normal((1100, 2)) @ rng.standard_normal((2, 30))  # rank 2
        params = dict(fraction=0.2, chunk_size=BATCH, basis="gradients", random_state=0)
        eager = GraftSelector(**params).fit(X, gradients=G)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(**params).fit(da.from_array(X, chunks=(1100, -1)),
                                               gradients=da.from_array(G, chunks=(1100, -1)))
        _assert_same_fit(lazy, eager)
        assert lazy.subset_sizes_.sum() == round(0.2 * N)
        easy, hard = lazy.subset_sizes_[:11].sum() / 1100, lazy.subset_sizes_[11:].sum() / 1200
        assert easy == pytest.approx(0.1)  # the band's floor, fraction / 2
        assert hard > 0.28


class TestSameWarnings:
    """The dask fit and the in-memory fit warn alike and write the same attributes."""

    @pytest.mark.parametrize("layout", list(LAYOUTS))
    @pytest.mark.parametrize("with_gradients", [False, True])
    def test_budget_overshoot_warns_alike(self, data, layout, with_gradients):
        """Chunks of 2 rows at fraction 0.1 overshoot the budget: one BudgetWarning each."""
        X, _, dense, _ = data
        # without the uniform check: the single uniform rows it keeps in some chunks of
        # 2 rows have negative least-squares weights, a second warning (alike too)
        params = dict(fraction=0.1, chunk_size=2, random_state=0, max_error_ratio=None)
        gradients = dense if with_gradients else None
        with warnings.catch_warnings(record=True) as eager_warnings:
            warnings.simplefilter("always")
            eager = GraftSelector(**params).fit(X, gradients=gradients)
        chunks = _chunks(layout, N)
        lazy_gradients = None if gradients is None else _dask_like(gradients, chunks)
        with dask.config.set(scheduler="synchronous"), warnings.catch_warnings(
                record=True) as lazy_warnings:
            warnings.simplefilter("always")
            lazy = GraftSelector(**params).fit(_dask_like(X, chunks), gradients=lazy_gradients)
        eager_messages = [(w.category, str(w.message)) for w in eager_warnings]
        lazy_messages = [(w.category, str(w.message)) for w in lazy_warnings]
        assert [c for c, _ in eager_messages] == [BudgetWarning]
        assert lazy_messages == eager_messages
        _assert_same_fit(lazy, eager)
        assert lazy.budget_ == eager.budget_ == round(0.1 * N)

    @pytest.mark.parametrize("layout", list(LAYOUTS))
    def test_within_budget_no_warning(self, data, layout):
        """Neither path warns when the chunks hold the budget."""
        X = data[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with dask.config.set(scheduler="synchronous"):
                GraftSelector(0.2, chunk_size=BATCH, random_state=0).fit(
                    _dask_like(X, _chunks(layout, N)))
            GraftSelector(0.2, chunk_size=BATCH, random_state=0).fit(X)


class TestTransform:
    """transform returns the selected rows as a lazy dask array."""

    def test_lazy_rows_in_selection_order(self, data):
        """The result is a dask array equal to X[sample_indices_], one block per X block."""
        X = data[0][:N_SHORT]
        Xd = da.from_array(X, chunks=(500, -1))
        sel = GraftSelector(0.2, chunk_size=BATCH, random_state=0)
        with dask.config.set(scheduler="synchronous"):
            out = sel.fit(Xd).transform(Xd)
            assert isinstance(out, da.Array)
            assert out.numblocks == Xd.numblocks
            assert type(out._meta) is type(Xd._meta)
            np.testing.assert_array_equal(out.compute(), X[sel.sample_indices_])

    def test_other_chunking_of_the_same_rows(self, data, scheduler):
        """Data chunked differently from the fit is realigned and gives the same rows."""
        X = data[0]
        sel = GraftSelector(0.1, chunk_size=BATCH, random_state=1)
        out = sel.fit_transform(da.from_array(X, chunks=(500, -1)))
        again = sel.transform(da.from_array(X, chunks=(333, -1)))
        np.testing.assert_array_equal(out.compute(), X[sel.sample_indices_])
        np.testing.assert_array_equal(again.compute(), X[sel.sample_indices_])

    def test_resampler_rows_and_targets(self, data):
        """GraftResampler.fit_resample takes the same rows of a dask X and a dask y."""
        X, y, _, _ = data
        with dask.config.set(scheduler="synchronous"):
            X_sub, y_sub = GraftResampler(0.2, chunk_size=BATCH, random_state=0).fit_resample(
                da.from_array(X, chunks=(500, -1)), da.from_array(y, chunks=500))
            eager = GraftSelector(0.2, chunk_size=BATCH, random_state=0).fit(X)
            np.testing.assert_array_equal(X_sub.compute(), X[eager.sample_indices_])
            np.testing.assert_array_equal(y_sub.compute(), y[eager.sample_indices_])

    def test_picks_that_cross_blocks_keep_their_rows(self):
        """Tree leaves of unequal sizes (2732, 2731, 2731 rows) under blocks of 2732: the
        third leaf's pivot order picks row 5470 (block 2) before row 5463 (block 1), so
        sample_indices_ visits the blocks out of order. transform and fit_resample still
        return exactly the rows and labels of sample_indices_, block by block too (they
        used to take block 1's rows from the wrong positions, or fail computing)."""
        rng = np.random.default_rng(0)
        X = rng.normal(size=(8194, 4))
        X[5470] = [50.0, 0.0, 0.0, 0.0]
        X[5463] = [0.0, 40.0, 0.0, 0.0]
        y = np.arange(8194)
        with dask.config.set(scheduler="synchronous"):
            sel = GraftSelector(0.2, random_state=0).fit(X)
            si = np.asarray(sel.sample_indices_)
            assert sel.chunk_sizes_.tolist() == [2732, 2731, 2731]
            blocks = np.searchsorted([0, 2732, 5464, 8196], si, side="right") - 1
            assert np.any(np.diff(blocks) < 0)  # the case under test
            out = sel.transform(da.from_array(X, chunks=(2732, -1)))
            np.testing.assert_array_equal(out.compute(), X[si])
            parts = [out.blocks[b].compute() for b in range(out.numblocks[0])]
            np.testing.assert_array_equal(np.concatenate(parts), X[si])
            X_sub, y_sub = GraftResampler(0.2, random_state=0).fit_resample(
                da.from_array(X, chunks=(2732, -1)), da.from_array(y, chunks=2732))
            np.testing.assert_array_equal(y_sub.compute(), si)
            np.testing.assert_array_equal(X_sub.compute(), X[si])
            parts = [y_sub.blocks[b].compute() for b in range(y_sub.numblocks[0])]
            np.testing.assert_array_equal(np.concatenate(parts), si)

    def test_wrong_rows_or_features(self, data):
        """transform refuses data with other rows or features than the fit."""
        X = data[0]
        sel = GraftSelector(0.2, chunk_size=BATCH, random_state=0)
        with dask.config.set(scheduler="synchronous"):
            sel.fit(da.from_array(X, chunks=(500, -1)))
        with pytest.raises(ValueError, match="has 1000 rows but GraftSelector was fitted on"):
            sel.transform(da.from_array(X[:1000], chunks=(500, -1)))
        with pytest.raises(ValueError, match="X has 5 features, but GraftSelector is expecting"):
            sel.transform(da.from_array(X[:, :5], chunks=(500, -1)))


class TestAligned:
    """The one rechunk rule: blocks become multiples of chunk_size only when needed."""

    def test_aligned_blocks_are_kept(self):
        """Blocks whose boundaries are multiples of chunk_size are not rechunked."""
        X = da.zeros((1000, 3), chunks=((200, 400, 300, 100), (3,)))
        assert _dask.aligned(X, 100) is X

    def test_first_block_rounded_down(self):
        """Unaligned blocks become the first block's size rounded down to the batch size."""
        X = da.zeros((1000, 3), chunks=(350, 3))
        assert _dask.aligned(X, 100).chunks[0] == (300, 300, 300, 100)

    def test_at_least_one_chunk(self):
        """Blocks smaller than chunk_size become one chunk each."""
        X = da.zeros((1000, 3), chunks=(64, 3))
        assert _dask.aligned(X, 256).chunks[0] == (256, 256, 256, 232)


class TestBadInput:
    """Inputs the dask path cannot use get an error that names the fix."""

    def test_unknown_chunk_sizes(self, data):
        """NaN chunk sizes (after boolean indexing) ask for compute_chunk_sizes()."""
        Xd = da.from_array(data[0], chunks=(500, -1))
        masked = Xd[Xd[:, 0] > 0]
        with pytest.raises(ValueError, match=r"unknown chunk sizes.*compute_chunk_sizes\(\)"):
            GraftSelector(0.2, chunk_size=BATCH).fit(masked)

    def test_unknown_column_count(self, data):
        """A NaN column count (after X[:, dask_mask]) asks for compute_chunk_sizes(), in fit
        and in transform (it used to fail with "cannot convert float NaN to integer")."""
        Xd = da.from_array(data[0], chunks=(500, -1))
        keep = da.from_array(np.arange(D) % 3 != 1, chunks=D)
        assert np.isnan(Xd[:, keep].shape[1])  # the case under test
        sel = GraftSelector(0.2, chunk_size=BATCH)
        match = r"'X' of GraftSelector is a dask array with unknown chunk sizes.*" \
                r"X = X.compute_chunk_sizes\(\) first"
        with dask.config.set(scheduler="synchronous"):
            with pytest.raises(ValueError, match=match):
                sel.fit(Xd[:, keep])
            sel.fit(Xd[:, keep].compute_chunk_sizes())  # the fix the message names
            with pytest.raises(ValueError, match=match):
                sel.transform(Xd[:, keep])

    def test_column_blocks(self, data):
        """Blocks that split rows over columns ask for rechunk({1: -1})."""
        Xd = da.from_array(data[0], chunks=(500, 4))
        with pytest.raises(ValueError, match=r"3 blocks along its columns.*rechunk\(\{1: -1\}\)"):
            GraftSelector(0.2, chunk_size=BATCH).fit(Xd)

    @pytest.mark.parametrize("kind", ["dense", "factored"])
    def test_gradients_chunked_differently(self, data, kind):
        """Gradients with other row blocks than X ask for rechunk({0: X.chunks[0]})."""
        X, _, dense, factored = data
        G = _dask_like(dense if kind == "dense" else factored, (400, -1))
        with pytest.raises(ValueError, match=r"row blocks of .* but X into .*"
                                             r"rechunk\(\{0: X.chunks\[0\]\}\)"):
            GraftSelector(0.2, chunk_size=BATCH).fit(da.from_array(X, chunks=(500, -1)),
                                                     gradients=G)

    def test_gradient_column_blocks(self, data):
        """Gradients split over columns ask for rechunk({1: -1})."""
        X, _, dense, _ = data
        with pytest.raises(ValueError, match=r"'gradients'.*columns.*rechunk\(\{1: -1\}\)"):
            GraftSelector(0.2, chunk_size=BATCH).fit(
                da.from_array(X, chunks=(500, -1)), gradients=da.from_array(dense, (500, 10)))

    def test_gradient_rows(self, data):
        """Gradients with another number of rows are refused, NumPy or dask."""
        X, _, dense, _ = data
        Xd = da.from_array(X, chunks=(500, -1))
        for G in (dense[:100], da.from_array(dense[:100], chunks=(50, -1))):
            with pytest.raises(ValueError, match="'gradients' has 100 rows but X has 2300"):
                GraftSelector(0.2, chunk_size=BATCH).fit(Xd, gradients=G)

    def test_gradient_type(self, data):
        """Gradients that are neither dask nor NumPy arrays are refused."""
        X, _, dense, _ = data
        with pytest.raises(TypeError, match=r"must be a dask array .*from_array"):
            GraftSelector(0.2, chunk_size=BATCH).fit(da.from_array(X, chunks=(500, -1)),
                                                     gradients=dense.tolist())

    def test_chunk_size_none(self, data):
        """chunk_size=None on dask is the default chunking, as in memory (tests/test_hierarchy)."""
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(0.2, random_state=0).fit(
                da.from_array(data[0], chunks=(500, -1)))
        _assert_same_fit(lazy, GraftSelector(0.2, random_state=0).fit(data[0]))

    @pytest.mark.parametrize("name", ["X", "gradients"])
    def test_non_finite_rows_in_global_numbers(self, data, name):
        """NaN rows are reported with their global row numbers, as in memory."""
        X, _, dense, _ = data
        X, dense = X.copy(), dense.copy()
        bad = X if name == "X" else dense
        bad[[1234, 1800, 2299], 1] = np.nan
        message = re.escape(f"'{name}' of GraftSelector contains NaN or infinity in 3 rows "
                            "(first: 1234)")
        with pytest.raises(ValueError, match=message):
            GraftSelector(0.2, chunk_size=BATCH).fit(X, gradients=dense)
        with dask.config.set(scheduler="synchronous"), pytest.raises(ValueError, match=message):
            GraftSelector(0.2, chunk_size=BATCH).fit(
                da.from_array(X, chunks=(500, -1)), gradients=da.from_array(dense, (500, -1)))

    @pytest.mark.parametrize("part", ["residuals", "inputs"])
    def test_non_finite_factor_rows_in_global_numbers(self, data, part):
        """NaN or infinity in either factor is found by the blocks, in global row numbers."""
        X, _, _, factored = data
        bad = getattr(factored, part).copy()
        bad[[1800, 2299], 0] = [np.nan, np.inf]
        G = factored._replace(**{part: bad})
        message = re.escape("'gradients' of GraftSelector contains NaN or infinity in 2 rows "
                            "(first: 1800)")
        with dask.config.set(scheduler="synchronous"), pytest.raises(ValueError, match=message):
            GraftSelector(0.2, chunk_size=BATCH).fit(da.from_array(X, chunks=(500, -1)),
                                                     gradients=_dask_like(G, (500, -1)))

    def test_wrong_dimensions_and_dtype(self):
        """1-D, empty and complex dask arrays get the in-memory kind of error."""
        sel = GraftSelector(0.2, chunk_size=BATCH)
        with pytest.raises(ValueError, match="must be a 2-D array"):
            sel.fit(da.zeros(100, chunks=50))
        with pytest.raises(ValueError, match="is empty"):
            sel.fit(da.zeros((100, 0), chunks=(50, -1)))
        with pytest.raises(ValueError, match="Complex data not supported: 'X' of GraftSelector"):
            sel.fit(da.zeros((100, 3), chunks=(50, -1), dtype=complex))
        with pytest.raises(ValueError, match="at least 2 rows"):
            sel.fit(da.zeros((1, 3), chunks=(1, -1)))

    def test_sparse_blocks(self):
        """A dask array of scipy.sparse blocks is refused with the way to densify it."""
        import scipy.sparse

        X = da.from_array(scipy.sparse.random(200, 5, density=0.3, format="csr",
                                              random_state=0), chunks=(100, -1),
                          asarray=False)
        with pytest.raises(TypeError, match=r"scipy\.sparse blocks"):
            GraftSelector(0.2, chunk_size=BATCH).fit(X)


class TestDaskWithMemory:
    """Dask arrays where only in-memory arrays can go (black-box review, item 5): a named
    error that says to compute them, where they crashed deep inside dask's QR or
    linalg; gram_matrix, a product, stays lazy."""

    @pytest.mark.parametrize("x_kind", ["numpy", "torch"])
    @pytest.mark.parametrize("g_kind", ["dense", "factored"])
    @pytest.mark.parametrize("chunk_size", [BATCH, None])
    def test_dask_gradients_with_in_memory_x(self, data, x_kind, g_kind, chunk_size):
        """Dask gradients with a NumPy or torch X: compute them, or make X a dask array."""
        X, _, dense, factored = data
        if x_kind == "torch":
            X = pytest.importorskip("torch").from_numpy(X)
        G = _dask_like(dense if g_kind == "dense" else factored, (500, -1))
        name = "gradients" if g_kind == "dense" else "gradients.residuals"
        selector = GraftSelector(0.2, chunk_size=chunk_size, random_state=0)
        with pytest.raises(TypeError, match=rf"'{name}' of GraftSelector is a dask array but "
                                            rf"X is not.*{re.escape(name)}\.compute\(\)"):
            selector.fit(X, gradients=G)
        assert not hasattr(selector, "sample_indices_")

    @pytest.mark.parametrize("kind", ["dense", "factored"])
    def test_gradient_kernels_refuse_dask(self, data, kind):
        """gradient_error and nested_gradient_errors name the dask argument."""
        from graft_select.gradients import gradient_error, nested_gradient_errors

        G = _dask_like((data[2] if kind == "dense" else data[3]), (500, -1))
        name = "G" if kind == "dense" else "G.residuals"
        for function in (gradient_error, nested_gradient_errors):
            with pytest.raises(TypeError, match=rf"{function.__name__} does not accept a dask "
                                                rf"array for '{name}'.*{name}\.compute\(\)"):
                function(G, [0, 1])
        with pytest.raises(TypeError, match=r"does not accept a dask array for 'weights'"):
            gradient_error(data[2], [0, 1], weights=da.ones(2, chunks=1))

    def test_linalg_kernels_refuse_dask(self, data):
        """low_rank_features and fast_maxvol name the dask argument (they worked for some
        options only: the exact SVD of a 2-D array, MaxVol with k <= r)."""
        from graft_select import fast_maxvol, low_rank_features

        A = da.from_array(data[0], chunks=(500, -1))
        with pytest.raises(TypeError, match=r"low_rank_features does not accept a dask array "
                                            r"for 'X'.*X\.compute\(\)"):
            low_rank_features(A, 3, method="exact")
        with pytest.raises(TypeError, match=r"fast_maxvol does not accept a dask array "
                                            r"for 'A'.*A\.compute\(\)"):
            fast_maxvol(A)

    def test_gram_matrix_stays_lazy(self, data):
        """gram_matrix of dask gradients (dense or factored) is a lazy dask array equal to
        the in-memory one."""
        from graft_select.gradients import gram_matrix

        _, _, dense, factored = data
        for G in (dense[:300], FactoredGradients(factored.residuals[:300],
                                                 factored.inputs[:300])):
            K = gram_matrix(_dask_like(G, (100, -1)))
            assert isinstance(K, da.Array)
            with dask.config.set(scheduler="synchronous"):
                np.testing.assert_allclose(K.compute(), gram_matrix(G), rtol=1e-12, atol=1e-12)


class TestBlockTask:
    """The per-block task is namespace-generic: the CuPy path runs the same code."""

    def test_array_api_strict_block_matches_numpy(self, data):
        """The block task on non-NumPy blocks gives the NumPy block's orders and errors."""
        xps = pytest.importorskip("array_api_strict")
        X, _, dense, _ = data
        sel = GraftSelector(0.2, chunk_size=BATCH, basis="input")
        params, _ = sel._selection_params(True)  # as the fit does before the tasks are sent
        pieces = [(0, 500, (0, 5), 40, 123)]
        ref = _dask._order_block(params, X[:500], dense[:500], pieces)
        out = _dask._order_block(params, xps.asarray(X[:500]), xps.asarray(dense[:500]),
                                 pieces)
        assert ref[:2] == out[:2] == (None, None)
        (ref_order, ref_err), = ref[2]
        (order, err), = out[2]
        assert isinstance(order, np.ndarray) and isinstance(err, np.ndarray)
        np.testing.assert_array_equal(order, ref_order)
        np.testing.assert_allclose(err, ref_err, rtol=1e-10, atol=1e-12)

    def test_block_tasks_run_under_the_device_scope(self, data, monkeypatch):
        """Both tasks enter the scope of their block (CuPy creates on the current device)
        before they create anything, the gradients' cast included."""
        import contextlib

        X, _, _, factored = data
        events = []

        def scope(x):
            events.append(("scope", x))
            return contextlib.nullcontext()

        cast = _dask.block_gradients

        def recorded_cast(gradients):
            events.append(("cast", gradients))
            return cast(gradients)

        monkeypatch.setattr(_dask, "device_scope", scope)
        monkeypatch.setattr(_dask, "block_gradients", recorded_cast)
        sel = GraftSelector(0.2, chunk_size=BATCH, basis="gradients")
        params, _ = sel._selection_params(True)
        X, G = X[:500], tuple(P[:500] for P in factored)
        _dask._order_block(params, X, G, [(0, 500, (0, 5), 40, 123)])
        _dask._weights_block(G, [(0, 100), (100, 200)], [np.arange(5), np.arange(5)])
        assert [kind for kind, _ in events] == ["scope", "cast", "scope", "cast"]
        assert events[0][1] is X and events[2][1] is G

    def test_take_block_non_numpy(self, data):
        """The transform's block take works on non-NumPy blocks with NumPy indices."""
        xps = pytest.importorskip("array_api_strict")
        X = data[0][:50]
        out = _dask._take_block(xps.asarray(X), np.array([4, 0, 9]))
        np.testing.assert_array_equal(np.asarray(out), X[[4, 0, 9]])

    def test_cupy_blocks(self, data):
        """A dask array of CuPy blocks selects what the in-memory CuPy fit selects."""
        cupy = pytest.importorskip("cupy")
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                pytest.skip("cupy: no CUDA device")
        except Exception as exc:  # CUDA runtime errors without a driver
            pytest.skip(f"cupy: not usable here ({type(exc).__name__})")
        X = cupy.asarray(data[0])
        params = dict(fraction=0.2, chunk_size=BATCH, random_state=0)
        eager = GraftSelector(**params).fit(X)
        Xd = da.from_array(X, chunks=(500, -1), asarray=False)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(**params).fit(Xd)
            out = lazy.transform(Xd)
            assert isinstance(out._meta, cupy.ndarray)
            np.testing.assert_array_equal(cupy.asnumpy(out.compute()),
                                          data[0][lazy.sample_indices_])
        np.testing.assert_array_equal(lazy.sample_indices_, cupy.asnumpy(eager.sample_indices_))


class TestPickSlices:
    """The uniform keys drawn in slices are the same stream as one draw."""

    def test_small_slices_same_selection(self, data, monkeypatch):
        """Slices of a few chunks give the selection of the default slice size."""
        X = data[0]
        params = dict(fraction=0.3, chunk_size=BATCH, uniform_share=0.5, random_state=4)
        ref = GraftSelector(**params).fit(X)
        monkeypatch.setattr(_selection, "_PICK_KEYS", 3 * BATCH)
        small = GraftSelector(**params).fit(X)
        np.testing.assert_array_equal(small.sample_indices_, ref.sample_indices_)


class TestImportStaysLight:
    """Dask is imported only when a dask array is fitted."""

    def test_numpy_fit_does_not_import_dask(self):
        """import graft_select and a NumPy fit leave dask out of sys.modules."""
        code = ("import numpy as np, sys, graft_select\n"
                "graft_select.GraftSelector(0.2, chunk_size=50).fit(np.eye(200, 5))\n"
                "print('dask' in sys.modules, 'graft_select._dask' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=120)
        assert out.stdout.split() == ["False", "False"]
