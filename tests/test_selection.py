"""The selection pipeline's pure functions (`_selection`, `_orders`), called directly."""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from graft_select import FactoredGradients, GraftSelector
from graft_select._orders import chunk_orders, subset_errors
from graft_select._selection import (
    SelectionParams,
    check_band,
    chunk_bounds,
    chunk_lengths,
    chunk_weights,
    largest_sizes,
    pick,
    rank,
    resolve_basis,
    selected_indices,
    stack_groups,
    subset_sizes,
)
from graft_select._sizing import apportion


def params(basis=None, **kwargs):
    """GraftSelector(**kwargs)'s SelectionParams (its defaults otherwise), basis resolved."""
    selection = SelectionParams.of(GraftSelector(**kwargs).get_params())
    return selection if basis is None else dataclasses.replace(selection, basis=basis)


def run_pipeline(selection, X, gradients, chunk_size, seed):
    """The in-memory fit's pipeline, step by step: (indices, weights, errors, sizes)."""
    rng = np.random.default_rng(seed)
    chunks = chunk_bounds(len(X), chunk_size)
    chunk_sizes = chunk_lengths(chunks)
    with_gradients = gradients is not None
    k_hi = largest_sizes(selection, chunk_sizes, with_gradients)
    orders, errors = chunk_orders(selection, X, np, gradients, chunks, k_hi, rng)
    sizes = subset_sizes(selection, chunk_sizes, errors, with_gradients)
    local = pick(selection, chunk_sizes, orders, sizes, rng)
    gradient_error, weights = None, chunk_weights(chunk_sizes, local)
    if with_gradients:
        gradient_error, weights = subset_errors(gradients, chunks, local)
    return selected_indices(chunks, local), weights, gradient_error, sizes


@pytest.fixture(scope="module")
def digits():
    return load_digits(return_X_y=True)[0]


class TestPipelineIsTheFit:
    @pytest.mark.parametrize("kwargs", [
        dict(fraction=0.1, chunk_size=256),
        dict(fraction=0.2, chunk_size=300, uniform_share=0.3),
        dict(fraction=0.2, chunk_size=200, strategy="uniform"),
    ])
    def test_without_gradients(self, digits, kwargs):
        """The pure pipeline on load_digits selects exactly what GraftSelector.fit does."""
        fitted = GraftSelector(random_state=0, **kwargs).fit(digits)
        indices, weights, error, sizes = run_pipeline(
            params("input", **kwargs), digits, None, kwargs["chunk_size"], 0)
        np.testing.assert_array_equal(indices, fitted.sample_indices_)
        np.testing.assert_array_equal(weights, fitted.sample_weight_)
        np.testing.assert_array_equal(sizes, fitted.subset_sizes_)
        assert error is None and fitted.gradient_error_ is None

    def test_with_factored_gradients(self, digits):
        """With gradients: the same indices, weights, errors and sizes as the fit."""
        rng = np.random.default_rng(1)
        G = FactoredGradients(rng.standard_normal((len(digits), 4)),
                              np.hstack([digits, np.ones((len(digits), 1))]))
        kwargs = dict(fraction=0.15, chunk_size=256, uniform_share=0.2)
        # the pipeline's steps without the uniform check of max_error_ratio (its
        # replacement of chunks is tested in test_static_use.py)
        fitted = GraftSelector(random_state=5, max_error_ratio=None, **kwargs).fit(
            digits, gradients=G)
        indices, weights, error, sizes = run_pipeline(
            params("gradients", **kwargs), digits, G, 256, 5)
        np.testing.assert_array_equal(indices, fitted.sample_indices_)
        np.testing.assert_array_equal(weights, fitted.sample_weight_)
        np.testing.assert_array_equal(error, fitted.gradient_error_)
        np.testing.assert_array_equal(sizes, fitted.subset_sizes_)
        assert sizes.sum() == round(0.15 * len(digits)) and len(set(sizes)) > 1


class TestPick:
    def _orders(self, rng, chunk_sizes, k_hi):
        return [rng.permutation(int(n))[:k_hi] for n in chunk_sizes]

    @pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.9])
    def test_sizes_and_uniform_share(self, rng, share):
        """Chunk c keeps sizes[c] distinct rows: the order's prefix, then uniform picks."""
        chunk_sizes = np.array([40, 40, 40, 17])
        orders = self._orders(rng, chunk_sizes, 12)
        sizes = np.array([1, 12, 7, 5])
        local = pick(params(uniform_share=share), chunk_sizes, orders, sizes,
                     np.random.default_rng(0))
        for c, rows in enumerate(local):
            k = int(sizes[c])
            n_uniform = round(share * k) if k > 1 else 0
            assert rows.dtype == np.int64 and len(rows) == k == len(np.unique(rows))
            assert np.all((rows >= 0) & (rows < chunk_sizes[c]))
            np.testing.assert_array_equal(rows[:k - n_uniform], orders[c][:k - n_uniform])
            tail = rows[k - n_uniform:]
            assert not np.isin(tail, orders[c][:k - n_uniform]).any()
            assert np.all(np.diff(tail) > 0)  # the uniform picks come sorted

    def test_uniform_strategy(self, rng):
        """Without orders (the uniform strategy) every pick is uniform, from the whole chunk."""
        chunk_sizes = np.array([50, 50])
        local = pick(params(), chunk_sizes, [None, None], np.array([10, 20]),
                     np.random.default_rng(3))
        assert [len(rows) for rows in local] == [10, 20]
        assert all(len(np.unique(rows)) == len(rows) and rows.max() < 50 for rows in local)

    def test_seeded(self, rng):
        """The picks are a function of the generator's state: same seed, same picks."""
        chunk_sizes = np.array([30, 30])
        orders = self._orders(rng, chunk_sizes, 10)
        runs = [pick(params(uniform_share=0.5), chunk_sizes, orders, np.array([6, 9]),
                     np.random.default_rng(7)) for _ in range(2)]
        assert all(np.array_equal(a, b) for a, b in zip(*runs))

    def test_indices_and_weights(self):
        """Chunk-local picks become global rows; weights are chunk_size / k per row."""
        chunks = [(0, 4), (4, 8), (8, 10)]
        local = [np.array([3, 0]), np.array([1]), np.array([0, 1])]
        np.testing.assert_array_equal(selected_indices(chunks, local), [3, 0, 5, 8, 9])
        np.testing.assert_array_equal(chunk_weights(chunk_lengths(chunks), local),
                                      [2.0, 2.0, 4.0, 1.0, 1.0])


class TestRank:
    def test_documented_rule(self):
        """min(n_columns, n_rows, k_rank, 256), k_rank from the typical size."""
        # typical size ceil(0.3 * 128) = 39 (below k_hi = 77): rank 39
        assert rank(params(fraction=0.3), 128, 1000, 77) == 39
        # half of a subset is uniform: at most 19 pivots for any size up to 39
        assert rank(params(fraction=0.3, uniform_share=0.5), 128, 1000, 77) == 19
        assert rank(params(fraction=0.3), 128, 1000, 20) == 20  # k_hi below the typical size
        assert rank(params(fraction=0.3), 128, 12, 77) == 12  # few columns
        assert rank(params(fraction=1.0), 4096, 1000, 4096) == 256  # the cap
        assert rank(params(fraction=0.001), 100, 50, 1) == 1  # at least one

    def test_n_components(self):
        """n_components overrides the rule, bounded by the chunk's shape only."""
        assert rank(params(n_components=300), 4096, 1000, 10) == 300
        assert rank(params(n_components=50), 30, 1000, 10) == 30
        assert rank(params(n_components=50), 128, 8, 10) == 8


class TestPlan:
    def test_chunks_and_stacks(self):
        """Chunks of chunk_size rows (a short last one), grouped into runs of equal size."""
        chunks = chunk_bounds(1030, 256)
        assert chunks == [(0, 256), (256, 512), (512, 768), (768, 1024), (1024, 1030)]
        assert stack_groups(chunks) == [(0, 1024, (0, 4)), (1024, 1030, (4, 5))]
        assert chunk_bounds(100, 256) == [(0, 100)]
        assert chunk_lengths(chunk_bounds(9000, None)).tolist() == [3000] * 3

    def test_sizes(self):
        """Without gradients, the fraction apportioned; with them, the budget is kept."""
        selection = params(fraction=0.1)
        chunk_sizes = np.array([256, 256, 100])
        np.testing.assert_array_equal(subset_sizes(selection, chunk_sizes, [], False),
                                      apportion(0.1, chunk_sizes))
        np.testing.assert_array_equal(largest_sizes(selection, chunk_sizes, False),
                                      apportion(0.1, chunk_sizes))
        k_hi = largest_sizes(selection, chunk_sizes, True)
        assert k_hi.tolist() == [52, 52, 20]  # ceil(2 * fraction * size)
        errors = [np.linspace(1, 0, k) ** (c + 1) for c, k in enumerate(k_hi)]
        sizes = subset_sizes(selection, chunk_sizes, errors, True)
        assert sizes.sum() == round(0.1 * 612) and np.all(sizes <= k_hi)

    def test_band_and_basis_checks(self):
        """The checks name the owner they are given; "auto" resolves by the gradients."""
        with pytest.raises(ValueError, match=r"of MySampler must contain fraction=0.5"):
            check_band(params(fraction=0.5, max_fraction=0.4), "MySampler")
        check_band(params(fraction=0.5), "MySampler")
        assert resolve_basis(params(), True) == "gradients"
        assert resolve_basis(params(), False) == "input"
        assert resolve_basis(params(basis="input"), True) == "input"
        with pytest.raises(ValueError, match="basis='gradients' needs per-sample gradients"):
            resolve_basis(params(basis="gradients"), False)
        assert resolve_basis(params(basis="gradients", strategy="uniform"), False) == "gradients"

    def test_params_frozen_and_complete(self):
        """SelectionParams holds the selection's hyperparameters only, and cannot change."""
        selection = params(fraction=0.3, chunk_size=64, random_state=1)
        assert not {"chunk_size", "random_state"} & {f.name for f in dataclasses.fields(selection)}
        assert selection.fraction == 0.3
        with pytest.raises(dataclasses.FrozenInstanceError):
            selection.fraction = 0.5


@pytest.mark.parametrize("module", ["_selection", "_orders"])
def test_dependencies_point_one_way(module):
    """The pipeline modules import neither the estimators nor torch or dask."""
    path = Path(__file__).parents[1] / "graft_select" / f"{module}.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.update([base] if node.module else [base + a.name for a in node.names])
    assert "._backend" in names or "._sizing" in names  # the walk sees the imports
    bad = {n for n in names
           if n.split(".")[0] in {"torch", "dask"} or n in {".selector", ".sampler", ".cli"}}
    assert not bad
