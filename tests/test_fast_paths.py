"""Tests for the refit's fast paths: each gives what the general path gives.

- the greedy's stored coordinates and the rectangular steps that reuse them
  (``_maxvol._volume_greedy``, ``_maxvol._extend_greedy``) against ``_maxvol._extend``;
- the symmetric product of the Gram stacks (``_gram._self_products``);
- the factor's rank at the typical subset size, with every pivot up to the
  largest size still from MaxVol (``_selection.rank``, ``_orders.maxvol_order``).
"""

import numpy as np
import pytest
import torch

from graft_select import GraftSelector, _maxvol, fast_maxvol
from graft_select._backend import get_namespace
from graft_select._gram import _self_products, chunk_grams
from graft_select._maxvol import _extend, _extend_greedy, _volume_greedy
from graft_select._orders import maxvol_order
from graft_select._selection import SelectionParams, pick, pick_members, rank


def params(**kwargs):
    """The SelectionParams of a GraftSelector with ``kwargs`` (its defaults otherwise)."""
    return SelectionParams.of(GraftSelector(**kwargs).get_params())


def orthonormal_stack(rng, m, n, r):
    """A stack (m, n, r) of matrices with orthonormal columns in general position."""
    return np.linalg.qr(rng.standard_normal((m, n, r)))[0]


def greedy(A, k):
    """``_volume_greedy`` on a NumPy stack, with its coordinates."""
    xp, _ = get_namespace(A)
    sq_norms = np.einsum("mnr,mnr->mn", A, A)
    threshold = np.sqrt(sq_norms.max(axis=-1)) * max(A.shape[1:]) * np.finfo(A.dtype).eps
    return _volume_greedy(A, k, threshold, xp, sq_norms=sq_norms, coordinates=True)


def gram_of(A, picks):
    """``A[I]^T A[I]`` of each matrix's picks I: its log-determinant is the volume."""
    rows = np.take_along_axis(A, picks[:, :, None], axis=1)
    return np.swapaxes(rows, 1, 2) @ rows


class TestGreedyCoordinates:
    def test_coordinates_are_products_with_the_directions(self, rng):
        """coords[:, j, :] are every row's coordinates along the j-th orthonormal direction."""
        A = rng.standard_normal((3, 20, 6))
        _, rank, coords = greedy(A, 6)
        assert rank.tolist() == [6, 6, 6]
        assert coords.shape == (3, 6, 20)
        # the directions span the rows, so the coordinates reproduce the row norms
        np.testing.assert_allclose(np.sum(coords**2, axis=-2), np.sum(A**2, axis=-1),
                                   rtol=1e-10)

    def test_coordinates_of_pivots_are_lower_triangular(self, rng):
        """A direction is orthogonal to every row picked before it."""
        A = rng.standard_normal((2, 15, 5))
        picks, _, coords = greedy(A, 5)
        T = np.swapaxes(np.take_along_axis(coords, picks[:, None, :], axis=2), 1, 2)
        np.testing.assert_allclose(np.triu(T, 1), 0, atol=1e-12)
        assert np.all(np.abs(np.diagonal(T, axis1=1, axis2=2)) > 0)

    def test_same_picks_as_projecting_against_the_basis(self, rng):
        """Picks equal those of pivoted QR of A^T (scipy), which projects every step."""
        import scipy.linalg

        A = rng.standard_normal((4, 30, 8))
        picks, _, _ = greedy(A, 8)
        for b in range(4):
            expected = scipy.linalg.qr(A[b].T, pivoting=True)[2][:8]
            assert picks[b].tolist() == expected.tolist()


class TestExtendGreedy:
    @pytest.mark.parametrize(("n", "r", "k"), [(30, 5, 12), (64, 16, 32), (10, 4, 10)])
    def test_same_picks_as_extend(self, rng, n, r, k):
        """The rectangular steps from the greedy's coordinates pick what `_extend` picks."""
        A = orthonormal_stack(rng, 5, n, r)
        picks, _, coords = greedy(A, r)
        fast = _extend_greedy(A, picks, coords, k, np)
        slow = _extend(A, picks, k, np)
        assert fast.tolist() == slow.tolist()

    def test_same_picks_on_general_rows(self, rng):
        """A need not be orthonormal: rows of any scale, same picks as `_extend`."""
        A = rng.standard_normal((3, 40, 6)) * rng.uniform(0.1, 10, (3, 40, 1))
        picks, _, coords = greedy(A, 6)
        assert _extend_greedy(A, picks, coords, 20, np).tolist() == _extend(
            A, picks, 20, np).tolist()

    @pytest.mark.parametrize(("n", "r", "k"), [(16, 8, 24), (16, 8, 32), (100, 6, 30)])
    def test_gram_rows_and_products_agree(self, rng, n, r, k):
        """Both kinds of steps (``C C^T`` formed once, or Sherman-Morrison) pick alike.

        With 2n rows, (16, 8, 24) and (16, 8, 32) form ``C C^T`` (2n <= 4 min(r, k - r));
        (100, 6, 30) does not. Every row is there twice, so every score has a twin.
        """
        base = orthonormal_stack(rng, 3, n, r)
        A = np.concatenate([base, base[:, ::-1, :]], axis=1)  # (3, 2n, r), each row twice
        picks, _, coords = greedy(A, r)
        fast = _extend_greedy(A, picks, coords, k, np)
        assert all(len(set(row)) == k for row in fast.tolist())
        slow = _extend(A, picks, k, np)
        _, fast_vol = np.linalg.slogdet(gram_of(A, fast))
        _, slow_vol = np.linalg.slogdet(gram_of(A, slow))
        np.testing.assert_allclose(fast_vol, slow_vol, rtol=1e-10)

    @pytest.mark.parametrize("xp_name", ["numpy", "array_api_strict", "torch"])
    @pytest.mark.parametrize(("n", "r", "k"), [(24, 8, 20), (300, 12, 150)])
    def test_both_step_kinds_pick_alike(self, rng, monkeypatch, xp_name, n, r, k):
        """The Gram steps and the inverse (Sherman-Morrison) steps pick `_extend`'s rows.

        Each kind is forced on both shapes (the first forms ``C C^T`` by default,
        the second does not), in every namespace the steps run in.
        """
        A = rng.standard_normal((3, n, r)) * rng.uniform(0.1, 10, (3, n, 1))
        picks, _, coords = greedy(A, r)
        expected = _extend(A, picks, k, np).tolist()
        if xp_name == "numpy":
            convert = np.asarray
        elif xp_name == "torch":
            convert = torch.from_numpy
        else:
            strict = pytest.importorskip("array_api_strict")
            convert = strict.asarray
        xp, _ = get_namespace(convert(A))
        for kind in ("_gram_steps", "_inverse_steps"):
            monkeypatch.setattr(_maxvol, "_gram_steps", getattr(_maxvol, kind))
            monkeypatch.setattr(_maxvol, "_inverse_steps", getattr(_maxvol, kind))
            got = _extend_greedy(convert(A), convert(picks), convert(coords), k, xp)
            assert np.asarray(got).tolist() == expected, kind
            monkeypatch.undo()

    def test_unique_rows_up_to_all(self, rng):
        """Growing to every row gives a permutation of the rows."""
        A = orthonormal_stack(rng, 2, 12, 3)
        picks, _, coords = greedy(A, 3)
        full = _extend_greedy(A, picks, coords, 12, np)
        assert all(sorted(row) == list(range(12)) for row in full.tolist())

    def test_fast_maxvol_rank_deficient_falls_back(self):
        """A rank-deficient element still gets k unique rows (the general `_extend` path)."""
        A = np.zeros((2, 8, 3))
        A[0] = np.eye(8)[:, :3]
        A[1, :, 0] = np.arange(1.0, 9.0)  # rank 1
        idx = fast_maxvol(A, 6)
        assert all(len(set(row)) == 6 for row in idx.tolist())
        assert idx[1, 0] == 7

    def test_torch_cpu_matches_numpy(self, rng):
        """The CPU torch path (a NumPy view) gives the NumPy picks."""
        A = orthonormal_stack(rng, 4, 50, 7).astype(np.float32)
        expected = fast_maxvol(A, 20)
        assert fast_maxvol(torch.from_numpy(A), 20).tolist() == expected.tolist()


class TestSelfProducts:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_torch_cpu_equals_product(self, rng, dtype):
        """The NumPy (syrk) product of a CPU tensor equals X @ X^T, as a torch tensor."""
        X = torch.tensor(rng.standard_normal((3, 7, 5)), dtype=dtype)
        xp, _ = get_namespace(X)
        out = _self_products(X, xp)
        assert torch.is_tensor(out) and out.dtype == dtype
        torch.testing.assert_close(out, X @ X.mT)

    def test_numpy_equals_product(self, rng):
        """NumPy input stays NumPy."""
        X = rng.standard_normal((2, 6, 4))
        xp, _ = get_namespace(X)
        np.testing.assert_allclose(_self_products(X, xp), X @ np.swapaxes(X, 1, 2))

    def test_half_precision_uses_the_namespace(self, rng):
        """A half-precision tensor is multiplied by torch in its own dtype (no float32 view)."""
        X = torch.tensor(rng.standard_normal((2, 4, 3)), dtype=torch.bfloat16)
        xp, _ = get_namespace(X)
        assert _self_products(X, xp).dtype == torch.bfloat16

    def test_chunk_grams_unchanged(self, rng):
        """chunk_grams gives (R R^T) * (E E^T + 1) on CPU tensors."""
        R = torch.tensor(rng.standard_normal((2, 6, 3)), dtype=torch.float32)
        E = torch.tensor(rng.standard_normal((2, 6, 4)), dtype=torch.float32)
        xp, _ = get_namespace(R)
        K, _ = chunk_grams(R, E, xp)
        K_ref = (R @ R.mT) * (E @ E.mT + 1)
        scale = K[:, 0, 0] / K_ref[:, 0, 0]  # the power-of-two residual scale, squared
        torch.testing.assert_close(K, K_ref * scale[:, None, None])


class TestTypicalRank:
    def _gradients(self, rng, n=600, d=12, C=4):
        from graft_select.gradients import FactoredGradients

        R = rng.standard_normal((n, C)) * 0.3
        H = np.hstack([rng.standard_normal((n, d)), np.ones((n, 1))])
        return FactoredGradients(R, H)

    def test_rank_is_the_typical_size(self):
        """The default rank is ceil(fraction * chunk) (less the uniform share), not k_max."""
        assert rank(params(fraction=0.3, batch_size=128), 128, 1000, 77) == 39
        assert rank(params(fraction=0.3, uniform_share=0.5), 128, 1000, 77) == 19
        assert rank(params(fraction=0.3, n_components=50), 128, 1000, 77) == 50

    def test_rank_never_above_the_largest_size(self):
        """k_hi below the typical size (fixed sizes without gradients) bounds the rank."""
        assert rank(params(fraction=0.3), 128, 1000, 20) == 20

    def test_every_pivot_from_maxvol(self, rng):
        """With uniform_share=0 the whole order up to k_hi is MaxVol on the factor."""
        selection = params(fraction=0.3, batch_size=100, uniform_share=0.0)
        U = orthonormal_stack(rng, 3, 100, 30)
        order = np.stack(maxvol_order(selection, U, 60, np.random.default_rng(0),
                                      with_tail=True))
        assert order.shape == (3, 60)
        np.testing.assert_array_equal(order, fast_maxvol(U, 60))

    def test_fit_with_gradients_sizes_above_the_rank(self, rng):
        """Chunks may keep more rows than the rank; the budget still holds."""
        X = rng.standard_normal((600, 12))
        selector = GraftSelector(fraction=0.3, chunk_size=100, basis="gradients",
                                 random_state=0).fit(X, gradients=self._gradients(rng))
        assert selector.subset_sizes_.sum() == 180
        assert selector.subset_sizes_.max() > 30


class TestStoreGather:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
    def test_same_rows_as_take(self, rng, dtype):
        """The NumPy gather of CPU tensors gives xp.take's rows, dtype and namespace."""
        from graft_select._feedback import _take_store_rows

        X = torch.tensor(rng.standard_normal((50, 6)), dtype=dtype)
        idx = torch.tensor(rng.permutation(50)[:20])
        xp, _ = get_namespace(X)
        out = _take_store_rows(X, idx, xp)
        assert torch.is_tensor(out) and out.dtype == dtype
        assert torch.equal(out, X[idx])

    def test_numpy_store(self, rng):
        """A NumPy store is gathered by NumPy directly."""
        from graft_select._feedback import _take_store_rows

        X = rng.standard_normal((30, 4))
        idx = np.array([3, 0, 29])
        xp, _ = get_namespace(X)
        np.testing.assert_array_equal(_take_store_rows(X, idx, xp), X[idx])


class TestLowerTriangularInverse:
    @pytest.mark.parametrize("r", [1, 5, 16, 17, 40, 77])
    def test_inverse(self, rng, r):
        """The blockwise inverse is the inverse, with zeros above the diagonal."""
        from graft_select._maxvol import _lower_triangular_inverse

        T = np.tril(rng.standard_normal((3, r, r))) / r + np.eye(r)
        inverse = _lower_triangular_inverse(T, get_namespace(T)[0])
        np.testing.assert_allclose(inverse @ T, np.broadcast_to(np.eye(r), T.shape),
                                   atol=1e-12)
        np.testing.assert_array_equal(np.triu(inverse, 1), 0)


class TestPrefixPicks:
    def test_prefixes_without_uniform_share(self, rng):
        """uniform_share=0: the picks are the orders' prefixes, as the keyed draw gives."""
        selection = params(fraction=0.3, uniform_share=0.0)
        chunk_sizes = np.array([10, 10, 7])
        orders = [rng.permutation(10)[:6], rng.permutation(10)[:6], rng.permutation(7)[:4]]
        sizes = np.array([1, 6, 3])
        fast = pick(selection, chunk_sizes, orders, sizes, np.random.default_rng(0))
        keyed = [None] * 3
        for size in (7, 10):
            members = np.flatnonzero(chunk_sizes == size)
            pick_members(selection, orders, sizes, np.random.default_rng(0), keyed, members,
                         size)
        assert [f.tolist() for f in fast] == [k.tolist() for k in keyed]
        assert all(f.dtype == np.int64 for f in fast)


class TestExcluded:
    def test_numpy_in_place_equals_select(self, rng):
        """NumPy's in-place exclusion gives the portable select's result."""
        from graft_select._maxvol import _excluded

        d = rng.standard_normal((4, 9))
        p = np.array([0, 8, 3, 3])
        rows = np.arange(4) * 9 + p
        columns = np.arange(9)[None, :]
        xp = get_namespace(d)[0]
        expected = np.where(columns == p[:, None], -np.inf, d)
        np.testing.assert_array_equal(_excluded(d.copy(), rows, columns, p, -np.inf, xp),
                                      expected)

    def test_torch_select(self, rng):
        """Other namespaces select with a mask (no integer-array assignment)."""
        from graft_select._maxvol import _excluded

        d = torch.tensor(rng.standard_normal((2, 5)))
        p = torch.tensor([1, 4])
        xp = get_namespace(d)[0]
        out = _excluded(d, p + torch.tensor([0, 5]), torch.arange(5)[None, :], p,
                        torch.tensor(-torch.inf, dtype=d.dtype), xp)
        assert out[0, 1] == -torch.inf and out[1, 4] == -torch.inf
        assert torch.isfinite(out).sum() == 8
