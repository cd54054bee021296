"""Merge-and-reduce selection (``chunk_size=None``): plan, coverage, gradients, dask.

The leaves are shrunk to 256 rows (``_sizing.DEFAULT_CHUNK_ROWS``) so that small
data makes trees of several levels.
"""

import dask
import dask.array as da
import distributed
import numpy as np
import pytest

from graft_select import FactoredGradients, GraftSelector, _hierarchy, _sizing
from graft_select._selection import SelectionParams

LEAF = 256


@pytest.fixture(autouse=True)
def small_leaves(monkeypatch):
    """Leaves of 256 rows (candidates of at most 32 rows per node)."""
    monkeypatch.setattr(_sizing, "DEFAULT_CHUNK_ROWS", LEAF)


def prototypes(n, n_prototypes=40, d=16, seed=0):
    """Rows near 40 well-separated prototypes with Zipf(1.3) counts (each at least one)."""
    rng = np.random.default_rng(seed)
    centers = 10 * rng.standard_normal((n_prototypes, d))
    share = 1.0 / np.arange(1, n_prototypes + 1) ** 1.3
    counts = rng.multinomial(n - n_prototypes, share / share.sum()) + 1
    labels = rng.permutation(np.repeat(np.arange(n_prototypes), counts))
    return centers[labels] + 0.05 * rng.standard_normal((n, d)), labels


def _covered(labels, selector):
    return np.unique(labels[selector.sample_indices_]).size / 40


def _params(**changes):
    base = dict(fraction=0.01, n_components=None, strategy="graft", basis="input",
                method="volume", refine=False, uniform_share=0.0, gradient_tol=None,
                min_fraction=None, max_fraction=None, svd_method="auto")
    return SelectionParams(**{**base, **changes})


@pytest.fixture(scope="module")
def data():
    """3000 prototype rows with dense and factored gradient proxies."""
    X, labels = prototypes(3000)
    rng = np.random.default_rng(1)
    R, H = rng.standard_normal((3000, 3)), rng.standard_normal((3000, 5))
    dense = (R[:, :, None] * H[:, None, :]).reshape(3000, -1)
    return X, labels, dense, FactoredGradients(R, H)


def _blas_threads_of_nodes(monkeypatch):
    """A list that collects the BLAS pools' thread counts at every node's pivots."""
    import threadpoolctl

    seen = []
    real = _hierarchy.stack_order

    def spy(*args):
        seen.extend(info["num_threads"] for info in threadpoolctl.threadpool_info()
                    if info["user_api"] == "blas")
        return real(*args)

    monkeypatch.setattr(_hierarchy, "stack_order", spy)
    return seen


class TestPlan:
    """`plan_tree`: when there is a tree, and its groups."""

    def test_one_leaf_has_no_tree(self):
        """Data of one leaf selects as one chunk: no plan."""
        assert _hierarchy.plan_tree(_params(), LEAF, 8, False, np.random.default_rng(0)) is None

    def test_uniform_strategy_has_no_tree(self):
        """The uniform strategy selects per leaf."""
        plan = _hierarchy.plan_tree(_params(strategy="uniform"), 3000, 8, False,
                                    np.random.default_rng(0))
        assert plan is None

    def test_large_fraction_selects_per_leaf(self):
        """When two leaves' candidates do not fit a node, every leaf selects alone."""
        assert _hierarchy.plan_tree(_params(fraction=0.25), 3000, 8, False,
                                    np.random.default_rng(0)) is None

    def test_small_fraction_is_one_group(self):
        """A budget within the candidate bound is one tree over all the leaves."""
        plan = _hierarchy.plan_tree(_params(fraction=0.005), 3000, 8, False,
                                    np.random.default_rng(0))
        assert plan.chunks == [(0, 3000)]
        assert plan.candidates[0] == 2 * plan.k_hi[0] == 30

    def test_groups_cover_rows_within_bound(self):
        """A larger budget splits the leaves into consecutive groups within the bound."""
        plan = _hierarchy.plan_tree(_params(fraction=0.01), 3000, 8, True,
                                    np.random.default_rng(0))
        assert len(plan.chunks) > 1
        assert plan.chunks[0][0] == 0 and plan.chunks[-1][1] == 3000
        assert all(a[1] == b[0] for a, b in zip(plan.chunks, plan.chunks[1:]))
        assert np.all(plan.candidates <= _hierarchy.max_candidates())
        assert np.all(plan.candidates >= plan.k_hi)


class TestCoverage:
    """The tree keeps the rare prototypes that chunks selecting alone lose."""

    def test_beats_per_chunk_and_uniform(self, data):
        """Tree: every pick a distinct prototype, as one chunk; per-chunk and uniform: fewer."""
        X, labels, _, _ = data
        tree = GraftSelector(0.005, random_state=0).fit(X)
        chunked = GraftSelector(0.005, chunk_size=LEAF, random_state=0).fit(X)
        uniform = np.mean([_covered(labels, GraftSelector(0.005, strategy="uniform",
                                                          random_state=s).fit(X))
                           for s in range(5)])
        assert tree.chunk_sizes_.tolist() == [3000]
        assert _covered(labels, tree) == 15 / 40  # 15 picks, 15 prototypes
        assert _covered(labels, tree) > _covered(labels, chunked)
        assert _covered(labels, tree) > uniform


class TestNodeCandidates:
    """A node keeps the group's rank plus twice its share of the group's candidates."""

    @staticmethod
    def _task(fraction=0.005, n=12 * LEAF):
        params = _params(fraction=fraction)
        plan = _hierarchy.plan_tree(params, n, 8, False, np.random.default_rng(0))
        assert len(plan.groups) == 1
        return plan.task(params, 0)

    def test_leaf_keeps_rank_plus_share(self):
        """A leaf of 12 keeps rank + ceil(2 k / 12) rows, fewer than the group's k."""
        task = self._task()
        assert (task.k, task.params.n_components) == (30, 8)
        assert _hierarchy.node_candidates(task, 0, 1) == 8 + 5
        assert _hierarchy.node_candidates(task, 0, 8) == 30  # capped at k
        assert _hierarchy.node_candidates(task, task.first, task.last) == task.k

    def test_nodes_select_their_candidates(self, monkeypatch):
        """Every reduction asks MaxVol for `node_candidates` rows of its node."""
        calls = []
        real = _hierarchy.stack_order

        def spy(params, X, xp, G, begin, stop, band, k, rng):
            calls.append((X.shape[0], k))
            return real(params, X, xp, G, begin, stop, band, k, rng)

        monkeypatch.setattr(_hierarchy, "stack_order", spy)
        # rows of equal norm: every leaf's share of the mass is its share of the rows
        X = np.random.default_rng(0).choice([-1.0, 1.0], size=(12 * LEAF, 16))
        GraftSelector(0.005, random_state=0).fit(X)
        # rank 15 (16 columns, 15 picks): 12 leaves of 256 rows keep 15 + 5 each; the merges
        # of leaves 0-7 and 8-11 keep 30 (capped at k) of 160 and 80; the root selects 15 of 60
        assert calls[:12] == [(LEAF, 20)] * 12
        assert calls[12:] == [(8 * 20, 30), (4 * 20, 30), (60, 15)]

    def test_nodes_run_at_one_thread(self, monkeypatch):
        """Every node's factor and pivots run with the BLAS pools at one thread."""
        seen = _blas_threads_of_nodes(monkeypatch)
        X, _ = prototypes(12 * LEAF)
        GraftSelector(0.005, random_state=0).fit(X)
        assert seen and set(seen) == {1}

    def test_heavy_leaf_keeps_its_share_of_the_mass(self):
        """A leaf holding most of the group's squared entries keeps up to k rows."""
        import dataclasses

        task = self._task()
        masses = [1.0] * 11 + [89.0]  # the last leaf holds 89% of the mass
        task = dataclasses.replace(task, mass=tuple(np.concatenate([[0.0], np.cumsum(masses)])))
        assert _hierarchy.node_candidates(task, 0, 1) == 8 + 5  # its row share: 2 * 30 / 12
        assert _hierarchy.node_candidates(task, 11, 12) == 30  # 8 + ceil(2 * 30 * 0.89), at k
        nan = dataclasses.replace(task, mass=(0.0,) + (float("nan"),) * 12)
        assert _hierarchy.node_candidates(nan, 0, 1) == 8 + 5  # NaN rows: the row share

    def test_leaf_mass_of_each_kind_of_rows(self, data):
        """Rows' norms to the 8th power: of X, or of the gradients with basis='gradients'."""
        import scipy.sparse
        import torch

        X, _, dense, factored = data
        inputs, grads = _params(basis="input"), _params(basis="gradients")

        def expected(A):
            return np.sum(np.linalg.norm(A, axis=1) ** _hierarchy.MASS_POWER)

        assert _hierarchy.leaf_mass(inputs, X[:10], dense[:10]) == pytest.approx(expected(X[:10]))
        assert _hierarchy.leaf_mass(grads, X[:10], dense[:10]) == pytest.approx(
            expected(dense[:10]))
        factored_rows = _hierarchy.slice_rows(factored, 0, 10)
        assert _hierarchy.leaf_mass(grads, X[:10], factored_rows) == pytest.approx(
            expected(dense[:10]))
        assert _hierarchy.leaf_mass(inputs, scipy.sparse.csr_matrix(X[:10]), None) == (
            pytest.approx(expected(X[:10])))
        assert _hierarchy.leaf_mass(inputs, torch.from_numpy(X[:10]), None) == (
            pytest.approx(expected(X[:10])))
        assert _hierarchy.leaf_mass(inputs, np.full((2, 3), 1e200), None) == np.inf

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_rows_sorted_by_norm_keep_the_volume(self, seed):
        """Heavy-tailed rows sorted by norm, budget well above the rank: one chunk's volume.

        The largest rows, which MaxVol wants, all sit in the last leaves; with
        candidates by row share alone the log-volume fell 7-10% short of one chunk.
        """
        rng = np.random.default_rng(seed)
        X = rng.standard_t(3, (3000, 4)) * np.array([1, 0.5, 0.3, 0.2])
        X = X[np.argsort(np.linalg.norm(X, axis=1))]
        U = np.linalg.svd(X, full_matrices=False)[0]

        def log_volume(sel):
            return np.sum(np.log(np.linalg.svd(U[sel.sample_indices_], compute_uv=False)))

        tree = GraftSelector(0.005, random_state=0).fit(X)
        one = GraftSelector(0.005, chunk_size=3000, random_state=0).fit(X)
        assert tree.chunk_sizes_.tolist() == [3000] and tree.subset_sizes_.tolist() == [15]
        assert log_volume(tree) >= log_volume(one) - 0.02 * abs(log_volume(one))

    @pytest.mark.parametrize("order", ["by prototype", "by row norm"])
    def test_sorted_rows_cover_as_one_chunk(self, order):
        """Rows sorted (rare prototypes, or the largest rows, together at the start) keep
        one chunk's coverage."""
        X, labels = prototypes(3000)
        key = labels if order == "by prototype" else np.linalg.norm(X, axis=1)
        index = np.argsort(key, kind="stable")[::-1]
        X, labels = X[index], labels[index]
        tree = GraftSelector(0.005, random_state=0).fit(X)
        one = GraftSelector(0.005, chunk_size=3000, random_state=0).fit(X)
        assert tree.chunk_sizes_.tolist() == [3000]
        assert _covered(labels, tree) == _covered(labels, one) == 15 / 40


class TestGradients:
    """With gradients, the top level's criterion is the group's whole mean gradient."""

    @pytest.mark.parametrize("kind", ["dense", "factored"])
    def test_error_of_whole_mean_gradient(self, data, kind):
        """gradient_error_ is the error of the mean of all rows by the weighted picks."""
        X, _, dense, factored = data
        sel = GraftSelector(0.005, random_state=0).fit(
            X, gradients=dense if kind == "dense" else factored)
        assert sel.chunk_sizes_.tolist() == [3000]
        g = dense.mean(axis=0)
        w = sel.sample_weight_ / 3000
        residual = g - dense[sel.sample_indices_].T @ w
        expected = np.linalg.norm(residual) / np.linalg.norm(g)
        np.testing.assert_allclose(sel.gradient_error_[0], expected, rtol=1e-6, atol=1e-12)

    def test_sizes_within_band(self, data):
        """The group's size stays in its band [fraction / 2, 2 * fraction] of its rows."""
        X, _, dense, _ = data
        sel = GraftSelector(0.005, random_state=0).fit(X, gradients=dense)
        assert 7 <= sel.subset_sizes_[0] <= 30
        assert sel.sample_indices_.size == sel.subset_sizes_.sum()

    def test_tolerance_picks_fewer_rows(self, data):
        """A loose gradient_tol keeps fewer rows than a strict one."""
        X, _, dense, _ = data
        loose = GraftSelector(0.005, gradient_tol=0.9, random_state=0).fit(X, gradients=dense)
        strict = GraftSelector(0.005, gradient_tol=0.0, random_state=0).fit(X, gradients=dense)
        assert loose.subset_sizes_.sum() <= strict.subset_sizes_.sum()


class TestPerChunkUnchanged:
    """An int chunk_size selects per chunk: no tree."""

    def test_int_chunk_size_never_plans(self, data, monkeypatch):
        """plan_tree is not called when chunk_size is an int."""
        def refuse(*args):
            raise AssertionError("plan_tree called")

        monkeypatch.setattr("graft_select.selector.plan_tree", refuse)
        sel = GraftSelector(0.01, chunk_size=LEAF, random_state=0).fit(data[0])
        assert sel.chunk_sizes_[0] == LEAF and len(sel.chunk_sizes_) == 12


LAYOUTS = {"one block": -1, "aligned": 512, "unaligned": 700, "uneven": (100, 900, 1200, 800)}


def _lazy(A, layout):
    if A is None:
        return None
    if isinstance(A, FactoredGradients):
        return FactoredGradients(_lazy(A.residuals, layout), _lazy(A.inputs, layout))
    return da.from_array(A, chunks=(LAYOUTS[layout], -1))


def _same(lazy, eager):
    for name in ("sample_indices_", "sample_weight_", "subset_sizes_", "chunk_sizes_"):
        assert getattr(lazy, name).tobytes() == getattr(eager, name).tobytes(), name
    if eager.gradient_error_ is None:
        assert lazy.gradient_error_ is None
    else:
        assert lazy.gradient_error_.tobytes() == eager.gradient_error_.tobytes()


class TestDask:
    """The tree on dask (a Bag.reduction per group) equals the in-memory tree bit for bit."""

    @pytest.mark.parametrize("layout", list(LAYOUTS))
    @pytest.mark.parametrize("kind", ["none", "dense", "factored"])
    @pytest.mark.parametrize("fraction", [0.005, 0.02])
    def test_bit_for_bit(self, data, layout, kind, fraction):
        """Indices, weights, sizes and errors are equal for every block layout."""
        X, _, dense, factored = data
        G = {"none": None, "dense": dense, "factored": factored}[kind]
        eager = GraftSelector(fraction, random_state=3).fit(X, gradients=G)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(fraction, random_state=3).fit(_lazy(X, layout),
                                                              gradients=_lazy(G, layout))
        _same(lazy, eager)

    @pytest.mark.parametrize("layout", list(LAYOUTS))
    @pytest.mark.parametrize("kind", ["none", "factored"])
    def test_leaf_masses_equal_memory(self, data, monkeypatch, layout, kind):
        """The leaves' masses of the dask pass are the in-memory ones, bit for bit."""
        X, _, _, factored = data
        G = None if kind == "none" else factored
        seen = []
        real = _hierarchy.TreePlan.with_masses

        def record(plan, masses):
            seen.append(np.asarray(masses, dtype=np.float64))
            return real(plan, masses)

        monkeypatch.setattr(_hierarchy.TreePlan, "with_masses", record)
        GraftSelector(0.005, random_state=0).fit(X, gradients=G)
        with dask.config.set(scheduler="synchronous"):
            GraftSelector(0.005, random_state=0).fit(_lazy(X, layout), gradients=_lazy(G, layout))
        assert len(seen) == 2 and seen[0].size == 12 and np.all(seen[0] > 0)
        assert seen[0].tobytes() == seen[1].tobytes()

    def test_uniform_share(self, data):
        """Uniform picks outside the root's candidates are read from the dask array."""
        X, _, dense, _ = data
        eager = GraftSelector(0.01, uniform_share=0.3, random_state=0).fit(X, gradients=dense)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(0.01, uniform_share=0.3, random_state=0).fit(
                _lazy(X, "unaligned"), gradients=_lazy(dense, "unaligned"))
        _same(lazy, eager)

    def test_nodes_and_roots_run_at_one_thread(self, data, monkeypatch):
        """The dask tree's nodes and roots run with the BLAS pools at one thread, as in
        memory, even where the caller runs BLAS at two threads."""
        seen = _blas_threads_of_nodes(monkeypatch)
        X, _, dense, _ = data
        import threadpoolctl

        with threadpoolctl.threadpool_limits(2, user_api="blas"), dask.config.set(
                scheduler="threads"):
            GraftSelector(0.005, random_state=0).fit(_lazy(X, "aligned"),
                                                     gradients=_lazy(dense, "aligned"))
        assert seen and set(seen) == {1}

    @pytest.mark.parametrize("kind", ["dense", "factored"])
    @pytest.mark.parametrize("extra, reads", [({}, 3), ({"uniform_share": 0.3}, 4),
                                              ({"max_error_ratio": None}, 2)],
                             ids=["check", "check-uniform_share", "no-check"])
    def test_gradient_blocks_read_once_per_pass(self, data, kind, extra, reads):
        """Each gradient block is read once per pass, however many groups it holds: the
        masses, the tree, the check's uniform subsets, the uniform_share picks outside the
        roots' candidates (the picks of each group were read by a compute of their own)."""
        X, _, dense, factored = data
        G = dense if kind == "dense" else factored
        counts = {}

        def counted(A, name):
            def count(block, block_info=None):
                key = (name, block_info[0]["chunk-location"][0])
                counts[key] = counts.get(key, 0) + 1
                return block

            return da.from_array(A, chunks=(1500, -1)).map_blocks(count, dtype=A.dtype)

        lazy_G = FactoredGradients(counted(G.residuals, "R"), counted(G.inputs, "H")) \
            if kind == "factored" else counted(G, "G")
        params = dict(fraction=0.03, random_state=0, **extra)
        eager = GraftSelector(**params).fit(X, gradients=G)
        with dask.config.set(scheduler="synchronous"):
            lazy = GraftSelector(**params).fit(counted(X, "X"), gradients=lazy_G)
        assert len(eager.chunk_sizes_) == 6  # three groups per block
        _same(lazy, eager)
        names = ["G"] if kind == "dense" else ["R", "H"]
        assert {key: n for key, n in counts.items() if key[0] != "X"} == {
            (name, b): reads for name in names for b in (0, 1)}

    @pytest.mark.parametrize("fraction", [0.005, 0.03])
    def test_transform_holds_a_block_at_most(self, data, fraction):
        """transform and fit_resample after a tree fit take the rows from X's own blocks:
        no task result is larger than a block (a rechunk to chunk_sizes_[0], a whole group,
        used to put all of X in one task with one group), and the rows and labels are
        those of sample_indices_, in its order."""
        from dask.callbacks import Callback

        from graft_select import GraftResampler

        class Largest(Callback):
            def __init__(self):
                self.nbytes = 0

            def _posttask(self, key, result, dsk, state, worker_id):
                self.nbytes = max(self.nbytes, getattr(result, "nbytes", 0))

        X, labels = data[0], data[1]
        Xd = da.from_array(X, chunks=(300, -1)) + 0.0  # a task per block, as a real source
        yd = da.from_array(labels, chunks=300) + 0
        block = 300 * X.shape[1] * X.itemsize
        with dask.config.set(scheduler="synchronous"):
            sel = GraftSelector(fraction, random_state=0).fit(Xd)
            assert len(sel.chunk_sizes_) == (1 if fraction == 0.005 else 6)
            with Largest() as largest:
                out = sel.transform(Xd).compute()
            assert largest.nbytes <= block
            np.testing.assert_array_equal(out, X[sel.sample_indices_])
            with Largest() as largest:  # the fit too: its blocks grow by less than a leaf
                X_sub, y_sub = dask.compute(*GraftResampler(fraction, random_state=0)
                                            .fit_resample(Xd, yd))
            assert largest.nbytes < block + LEAF * X.shape[1] * X.itemsize
        np.testing.assert_array_equal(X_sub, X[sel.sample_indices_])
        np.testing.assert_array_equal(y_sub, labels[sel.sample_indices_])

    @pytest.mark.parametrize("kind", ["dense", "factored"])
    def test_blocks_at_any_byte_offset(self, data, kind):
        """Blocks whose memory is not aligned to their itemsize (as a process worker may
        deserialize them) give the in-memory fit bit for bit: NumPy's matmul leaves BLAS
        on them and rounds otherwise, which made a tree with factored gradients on a
        processes=True cluster change its weights from run to run."""
        def unaligned(block):
            buffer = bytearray(block.nbytes + 1)
            moved = np.ndarray(block.shape, block.dtype, buffer=buffer, offset=1)
            moved[...] = block
            return moved

        X, _, dense, factored = data
        X = X.astype(np.float32)
        G = dense.astype(np.float32) if kind == "dense" else FactoredGradients(
            *(P.astype(np.float32) for P in factored))
        lazy_G = _lazy(G, "aligned")
        lazy_G = FactoredGradients(*(P.map_blocks(unaligned) for P in lazy_G)) \
            if kind == "factored" else lazy_G.map_blocks(unaligned)
        params = dict(fraction=0.02, uniform_share=0.2, random_state=7)
        eager = GraftSelector(**params).fit(X, gradients=G)
        with dask.config.set(scheduler="synchronous"):
            flags = _lazy(X, "aligned").map_blocks(unaligned).map_blocks(
                lambda block: np.array([[block.flags.aligned]]), chunks=(1, 1)).compute()
            assert not flags.any()  # the case under test
            lazy = GraftSelector(**params).fit(_lazy(X, "aligned").map_blocks(unaligned),
                                               gradients=lazy_G)
        _same(lazy, eager)

    def test_default_scheduler_is_threads_not_processes(self, data, monkeypatch):
        """With nothing configured the bags run on threads, as the dask arrays would.

        A bag's own default (multiprocessing) would pickle the blocks to new
        processes and fail in a script without a ``__main__`` guard.
        """
        import dask.bag
        import dask.base

        X, _, dense, _ = data
        calls = []

        def refuse(*args, **kwargs):
            raise AssertionError("the tree ran on the bag's default scheduler")

        real = dask.base.named_schedulers["threads"]

        def record(*args, **kwargs):
            calls.append("threads")
            return real(*args, **kwargs)

        for cls in (dask.bag.Bag, dask.bag.Item):
            monkeypatch.setattr(cls, "__dask_scheduler__", staticmethod(refuse))
        monkeypatch.setitem(dask.base.named_schedulers, "threads", record)
        eager = GraftSelector(0.01, random_state=0).fit(X, gradients=dense)
        lazy = GraftSelector(0.01, random_state=0).fit(_lazy(X, "aligned"),
                                                      gradients=_lazy(dense, "aligned"))
        assert calls
        _same(lazy, eager)

    def test_configured_scheduler_is_kept(self, data, monkeypatch):
        """A scheduler set with dask.config is the one the tree uses."""
        import dask.base

        def refuse(*args, **kwargs):
            raise AssertionError("the tree ignored the configured scheduler")

        monkeypatch.setitem(dask.base.named_schedulers, "threads", refuse)
        X, _, dense, _ = data
        with dask.config.set(scheduler="synchronous"):
            GraftSelector(0.01, random_state=0).fit(_lazy(X, "aligned"),
                                                    gradients=_lazy(dense, "aligned"))

    def test_local_cluster(self, data):
        """The same on a two-worker LocalCluster."""
        X, _, dense, _ = data
        eager = GraftSelector(0.01, random_state=0).fit(X, gradients=dense)
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                           dashboard_address=None)
        with cluster, distributed.Client(cluster):
            lazy = GraftSelector(0.01, random_state=0).fit(_lazy(X, "aligned"),
                                                          gradients=_lazy(dense, "aligned"))
        _same(lazy, eager)


class TestErrors:
    """Bad input in the tree names what was found."""

    @pytest.mark.parametrize("name", ["X", "gradients"])
    def test_non_finite_rows_on_dask(self, data, name):
        """NaN rows of a dask fit are reported with their count and first global row."""
        X, _, dense, _ = data
        X, dense = X.copy(), dense.copy()
        (X if name == "X" else dense)[[1234, 2999], 0] = np.nan
        with dask.config.set(scheduler="synchronous"), pytest.raises(
                ValueError, match=rf"'{name}' of GraftSelector contains NaN or infinity in 2 "
                                  r"rows \(first: 1234\)"):
            GraftSelector(0.01).fit(_lazy(X, "aligned"), gradients=_lazy(dense, "aligned"))

    def test_non_finite_rows_in_memory(self, data):
        """In memory, X is checked before the tree."""
        X = data[0].copy()
        X[17, 0] = np.inf
        with pytest.raises(ValueError, match="infinity"):
            GraftSelector(0.01).fit(X)

    def test_gradient_rows_mismatch(self, data):
        """Gradients with the wrong number of rows are refused by name."""
        with pytest.raises(ValueError, match="'gradients' has 10 rows but X has 3000"):
            GraftSelector(0.01).fit(data[0], gradients=data[2][:10])
