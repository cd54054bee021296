"""Tests for graft_select.linalg: fast_maxvol and low_rank_features."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
from conftest import scipy_lu_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from graft_select import fast_maxvol, low_rank_features

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


# ------------------------------------------------------------------ helpers


def orthonormal(rng, n, r):
    """An n x r matrix with orthonormal columns in general position."""
    return np.linalg.qr(rng.standard_normal((n, r)))[0]


def low_rank_plus_noise(rng, shape, rank, noise=1e-3):
    """Data with a clear gap after ``rank`` singular values, plus a little noise."""
    *stack, n, d = shape
    G = rng.standard_normal((*stack, n, rank))
    s = np.linspace(10.0, 5.0, rank)
    H = rng.standard_normal((*stack, rank, d))
    return (G * s) @ H + noise * rng.standard_normal(shape)


def projector(U):
    """Orthogonal projector U U^T onto the span of U's columns."""
    return U @ np.swapaxes(U, -1, -2)


def top_projector(X, r):
    """Projector onto the exact top-r left singular subspace of a dense X."""
    U = np.linalg.svd(X, full_matrices=False)[0][..., :r]
    return projector(U)


def subspace_distance(U, V):
    """Spectral norm of the difference of the projectors (sin of the largest angle)."""
    return np.linalg.norm(projector(U) - projector(V), ord=2, axis=(-2, -1)).max()


def log_volume(A, idx):
    """log sqrt(det(S^T S)) for k >= r rows S = A[idx], or log sqrt(det(S S^T)) for k < r."""
    S = A[np.asarray(idx)]
    gram = S.T @ S if S.shape[0] >= S.shape[1] else S @ S.T
    sign, logdet = np.linalg.slogdet(gram)
    return 0.5 * logdet if sign > 0 else -np.inf


def scipy_qr_pivots(A):
    """The column pivots of QR with column pivoting of A^T (LAPACK geqp3)."""
    return scipy.linalg.qr(A.T, pivoting=True, mode="r")[1]


def rank_deficient_with_zero_rows():
    """10 x 4 matrix of rank 3: rows 1, 4, 6, 7, 9 carry it, rows 0, 2, 3, 5, 8 are zero."""
    rng = np.random.default_rng(7)
    A = np.zeros((10, 4))
    A[[1, 4, 6, 7, 9]] = rng.standard_normal((5, 3)) @ rng.standard_normal((3, 4))
    return A


@st.composite
def tall_matrices(draw, max_n=24, max_r=6):
    """A Gaussian n x r matrix (n >= r) from a drawn seed, and a subset size k in [1, n]."""
    r = draw(st.integers(1, max_r))
    n = draw(st.integers(r, max_n))
    k = draw(st.integers(1, n))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).standard_normal((n, r)), k


@st.composite
def mixed_rank_stacks(draw):
    """A stack (m, n, r) whose elements have drawn ranks 0..r, and k in [1, n]."""
    m = draw(st.integers(1, 5))
    r = draw(st.integers(1, 5))
    n = draw(st.integers(r, 16))
    k = draw(st.integers(1, n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ranks = draw(st.lists(st.integers(0, r), min_size=m, max_size=m))
    stack = [rng.standard_normal((n, q)) @ rng.standard_normal((q, r)) for q in ranks]
    return np.stack(stack), k


# -------------------------------------------------------------- fast_maxvol


class TestFastMaxvolPivots:
    """The greedy phase reproduces LAPACK's pivots."""

    @pytest.mark.parametrize(("n", "r"), [(8, 8), (40, 5), (300, 16)])
    def test_lu_matches_scipy_getrf(self, rng, n, r):
        """method='lu' returns the rows of scipy.linalg.lu_factor's partial pivoting."""
        A = orthonormal(rng, n, r)
        np.testing.assert_array_equal(fast_maxvol(A, method="lu"), scipy_lu_rows(A))

    @pytest.mark.parametrize(("n", "r"), [(8, 8), (40, 5), (300, 16)])
    def test_volume_matches_scipy_pivoted_qr(self, rng, n, r):
        """method='volume' returns the pivots of scipy.linalg.qr(A.T, pivoting=True)."""
        # a square orthogonal matrix has equal row norms (every pivot a tie): use Gaussian
        A = rng.standard_normal((n, r)) if n == r else orthonormal(rng, n, r)
        np.testing.assert_array_equal(fast_maxvol(A), scipy_qr_pivots(A)[:r])

    def test_volume_prefix_matches_qr_for_k_below_r(self, rng):
        """For k < r the k indices are the first k pivoted-QR pivots."""
        A = rng.standard_normal((50, 9))
        np.testing.assert_array_equal(fast_maxvol(A, 4), scipy_qr_pivots(A)[:4])

    def test_lu_prefix_matches_getrf_for_k_below_r(self, rng):
        """For k < r the k indices are the first k getrf pivot rows."""
        A = rng.standard_normal((50, 9))
        np.testing.assert_array_equal(fast_maxvol(A, 4, method="lu"), scipy_lu_rows(A)[:4])

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_pivots_match_scipy_on_every_backend(self, backend, rng, method):
        """Every backend reproduces scipy's pivots, and returns int64 on the input's device."""
        A = orthonormal(rng, 120, 10)
        expected = scipy_lu_rows(A) if method == "lu" else scipy_qr_pivots(A)[:10]
        result = fast_maxvol(backend.asarray(A), method=method)
        assert backend.is_native(result)
        assert backend.to_numpy(result).dtype == np.int64
        np.testing.assert_array_equal(backend.to_numpy(result), expected)

    def test_volume_beats_lu_on_average(self):
        """The volume rule gives at least LU's log-volume in most of 20 random cases."""
        wins = 0
        for seed in range(20):
            A = orthonormal(np.random.default_rng(seed), 100, 8)
            lu = log_volume(A, fast_maxvol(A, method="lu"))
            volume = log_volume(A, fast_maxvol(A, method="volume"))
            wins += volume >= lu - 1e-12
        assert wins >= 15

    def test_docstring_example(self):
        """The small example of the docstring gives its documented indices."""
        A = np.array([[1.0, 0.0], [0.1, 0.1], [0.0, 2.0], [0.5, 0.5]])
        assert fast_maxvol(A).tolist() == [2, 0]
        assert fast_maxvol(A, 3).tolist() == [2, 0, 3]


class TestFastMaxvolRectangular:
    """k > r: rows added by rectangular MaxVol."""

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_each_added_row_maximises_volume(self, rng, method):
        """Every row after the first r is the one that maximises det(A_I^T A_I) (brute force)."""
        A = rng.standard_normal((30, 4))
        idx = fast_maxvol(A, 10, method=method).tolist()
        for j in range(4, 10):
            candidates = [i for i in range(30) if i not in idx[:j]]
            gains = [log_volume(A, [*idx[:j], i]) for i in candidates]
            assert idx[j] == candidates[int(np.argmax(gains))]

    def test_k_equal_n_returns_a_permutation(self, rng):
        """k = n returns every row exactly once."""
        A = rng.standard_normal((12, 3))
        assert sorted(fast_maxvol(A, 12).tolist()) == list(range(12))

    def test_log_volume_beats_random_subsets(self, rng):
        """The k-subset has a larger log-volume than any of 200 random k-subsets."""
        A = orthonormal(rng, 200, 6)
        best = log_volume(A, fast_maxvol(A, 15))
        for _ in range(200):
            assert best > log_volume(A, rng.choice(200, 15, replace=False))


class TestFastMaxvolRefine:
    """refine=True: swaps until the square submatrix is dominant."""

    @pytest.mark.parametrize("method", ["lu", "volume"])
    @pytest.mark.parametrize("tol", [1.01, 1.05, 1.5])
    def test_refined_coefficients_bounded_by_tol(self, method, tol):
        """max |A @ inv(A[I])| <= tol after refinement."""
        for seed in range(4):
            A = orthonormal(np.random.default_rng(seed), 200, 8)
            idx = fast_maxvol(A, method=method, refine=True, tol=tol)
            assert np.abs(A @ np.linalg.inv(A[idx])).max() <= tol * (1 + 1e-12)

    def test_unrefined_lu_is_not_dominant(self):
        """The data of the refine tests needs refining: plain LU leaves a coefficient > 1.05."""
        A = orthonormal(np.random.default_rng(1), 200, 8)
        idx = fast_maxvol(A, method="lu")
        assert np.abs(A @ np.linalg.inv(A[idx])).max() > 1.05

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_refine_does_not_lower_log_volume(self, method):
        """The refined subset's log-volume is at least the unrefined one's."""
        for seed in range(6):
            A = orthonormal(np.random.default_rng(seed), 200, 8)
            plain = log_volume(A, fast_maxvol(A, method=method))
            refined = log_volume(A, fast_maxvol(A, method=method, refine=True))
            assert refined >= plain - 1e-12

    def test_refine_raises_log_volume_when_it_swaps(self):
        """On data where LU is not dominant, refinement strictly raises the log-volume."""
        A = orthonormal(np.random.default_rng(1), 200, 8)
        plain = log_volume(A, fast_maxvol(A, method="lu"))
        refined = log_volume(A, fast_maxvol(A, method="lu", refine=True))
        assert refined > plain + 0.01

    def test_max_iter_limits_swaps(self):
        """max_iter=1 changes at most one row of the unrefined subset."""
        A = orthonormal(np.random.default_rng(1), 200, 8)
        plain = set(fast_maxvol(A, method="lu").tolist())
        once = set(fast_maxvol(A, method="lu", refine=True, max_iter=1).tolist())
        assert len(once - plain) == 1

    def test_refine_with_k_above_r_keeps_refined_square(self, rng):
        """For k > r the first r rows are the refined r-subset, followed by k - r new rows."""
        A = orthonormal(rng, 100, 6)
        square = fast_maxvol(A, method="lu", refine=True)
        idx = fast_maxvol(A, 20, method="lu", refine=True)
        np.testing.assert_array_equal(idx[:6], square)
        assert len(set(idx.tolist())) == 20

    def test_refine_skips_rank_deficient_elements(self):
        """A rank-deficient element of a stack is left unrefined and still gets k rows."""
        A = rank_deficient_with_zero_rows()
        full = orthonormal(np.random.default_rng(3), 10, 4)
        idx = fast_maxvol(np.stack([A, full]), 6, refine=True)
        assert len(set(idx[0].tolist())) == 6
        assert np.abs(full @ np.linalg.inv(full[idx[1, :4]])).max() <= 1.05 + 1e-12

    @pytest.mark.parametrize(("seed", "n", "method"), [
        (9, 3, "volume"), (19, 4, "volume"), (125, 3, "volume"), (107, 3, "lu"),
        (113, 4, "lu")])
    def test_refine_exact_rank_deficient_above_rounding(self, seed, n, method):
        """Rank 2 of 3 whose last pivot lands just above the rounding level: no solve
        with the singular square (it raised LinAlgError from LAPACK); the picks are
        the unrefined ones, alone and in a stack."""
        rng = np.random.default_rng(seed)
        A = rng.standard_normal((n, 2)) @ rng.standard_normal((2, 3))
        refined = fast_maxvol(A, 3, method=method, refine=True)
        np.testing.assert_array_equal(refined, fast_maxvol(A, 3, method=method))
        full = orthonormal(np.random.default_rng(3), n, 3)
        stacked = fast_maxvol(np.stack([A, full]), 3, method=method, refine=True)
        np.testing.assert_array_equal(stacked[0], refined)
        np.testing.assert_array_equal(stacked[1], fast_maxvol(full, 3, method=method,
                                                              refine=True))

    def test_refine_agrees_across_backends(self, backend):
        """Refined indices on every backend equal NumPy's."""
        A = orthonormal(np.random.default_rng(1), 200, 8)
        expected = fast_maxvol(A, method="lu", refine=True)
        result = fast_maxvol(backend.asarray(A), method="lu", refine=True)
        assert backend.is_native(result)
        np.testing.assert_array_equal(backend.to_numpy(result), expected)


class TestFastMaxvolProperties:
    """Hypothesis properties of the index set."""

    @PROPERTY_SETTINGS
    @given(data=tall_matrices(), method=st.sampled_from(["lu", "volume"]))
    def test_indices_unique_and_in_range(self, data, method):
        """k distinct indices, each in [0, n)."""
        A, k = data
        idx = fast_maxvol(A, k, method=method)
        assert idx.shape == (k,)
        assert len(set(idx.tolist())) == k
        assert idx.min() >= 0 and idx.max() < A.shape[0]

    @PROPERTY_SETTINGS
    @given(data=tall_matrices(), method=st.sampled_from(["lu", "volume"]),
           seed=st.integers(0, 2**32 - 1))
    def test_permuting_rows_permutes_result(self, data, method, seed):
        """fast_maxvol(A[perm]) picks the same rows of A, at their new positions."""
        A, k = data
        perm = np.random.default_rng(seed).permutation(A.shape[0])
        position = np.argsort(perm)
        idx = fast_maxvol(A, k, method=method)
        np.testing.assert_array_equal(fast_maxvol(A[perm], k, method=method), position[idx])

    @PROPERTY_SETTINGS
    @given(data=tall_matrices(), method=st.sampled_from(["lu", "volume"]),
           scale=st.sampled_from([1e-9, 0.37, 3.0, 1e7]))
    def test_scaling_does_not_change_result(self, data, method, scale):
        """fast_maxvol(c * A) == fast_maxvol(A) for a positive scalar c."""
        A, k = data
        np.testing.assert_array_equal(
            fast_maxvol(scale * A, k, method=method), fast_maxvol(A, k, method=method))

    @PROPERTY_SETTINGS
    @given(data=tall_matrices(), method=st.sampled_from(["lu", "volume"]), j=st.integers(1, 24))
    def test_prefix_is_smaller_subset(self, data, method, j):
        """The first j of the k-subset are the j-subset (nested greedy order, also k > r)."""
        A, k = data
        j = min(j, k)
        np.testing.assert_array_equal(
            fast_maxvol(A, k, method=method)[:j], fast_maxvol(A, j, method=method))

    @PROPERTY_SETTINGS
    @given(data=mixed_rank_stacks(), method=st.sampled_from(["lu", "volume"]),
           refine=st.booleans())
    def test_stack_equals_loop(self, data, method, refine):
        """A stack gives the same indices as a loop over its matrices (mixed ranks)."""
        A, k = data
        refine = refine and k >= A.shape[-1]
        stacked = fast_maxvol(A, k, method=method, refine=refine)
        looped = np.stack([fast_maxvol(a, k, method=method, refine=refine) for a in A])
        np.testing.assert_array_equal(stacked, looped)

    @PROPERTY_SETTINGS
    @given(data=mixed_rank_stacks(), method=st.sampled_from(["lu", "volume"]))
    def test_rank_deficient_gives_k_unique(self, data, method):
        """Any rank (0 to r) still gives k unique indices per matrix."""
        A, k = data
        for row in fast_maxvol(A, k, method=method):
            assert len(set(row.tolist())) == k

    @pytest.mark.parametrize(("dtype", "scale"), [
        (np.float64, 2.0**600), (np.float64, 2.0**-600), (np.float64, 1e300),
        (np.float32, 1e25), (np.float32, 1e-25)])
    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_extreme_scales(self, rng, dtype, scale, method):
        """Entries whose squares overflow or underflow give the unscaled result, silently."""
        A = orthonormal(rng, 40, 5).astype(dtype)
        expected = fast_maxvol(A, 8, method=method)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = fast_maxvol(A * dtype(scale), 8, method=method)
        np.testing.assert_array_equal(result, expected)

    def test_nested_stack_shape(self, rng):
        """Leading dimensions are kept: (2, 3, n, r) gives (2, 3, k) equal to the flat stack."""
        A = rng.standard_normal((2, 3, 20, 4))
        idx = fast_maxvol(A, 7)
        assert idx.shape == (2, 3, 7)
        np.testing.assert_array_equal(idx.reshape(6, 7), fast_maxvol(A.reshape(6, 20, 4), 7))

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_stack_equals_loop_on_every_backend(self, backend, method):
        """On every backend a mixed-rank stack gives the loop's (NumPy) indices."""
        rng = np.random.default_rng(5)
        rank_one = np.zeros((30, 5))
        rank_one[[3, 17]] = [[1.0, 2.0, 0.0, 0.0, 1.0], [2.0, 4.0, 0.0, 0.0, 2.0]]
        A = np.stack([
            orthonormal(rng, 30, 5),
            rank_one,
            rng.standard_normal((30, 2)) @ rng.standard_normal((2, 5)),
            np.zeros((30, 5)),
        ])
        looped = np.stack([fast_maxvol(a, 9, method=method) for a in A])
        result = fast_maxvol(backend.asarray(A), 9, method=method)
        assert backend.is_native(result)
        np.testing.assert_array_equal(backend.to_numpy(result), looped)


class TestFastMaxvolGroups:
    """On the host the volume rule processes a long stack in cache-sized groups."""

    @pytest.mark.parametrize(("k", "refine"), [(3, False), (6, False), (5, True)])
    def test_grouped_stack_equals_loop(self, backend, monkeypatch, k, refine):
        """Groups of 2 matrices give the loop's indices for a mixed-rank stack of 7."""
        import graft_select._maxvol as maxvol

        monkeypatch.setattr(maxvol, "_HOST_GROUP_BYTES", 2 * 20 * 4 * 8)
        rng = np.random.default_rng(9)
        A = np.stack([rng.standard_normal((20, q)) @ rng.standard_normal((q, 4))
                      for q in (4, 1, 4, 0, 3, 4, 2)])
        looped = np.stack([fast_maxvol(a, k, refine=refine) for a in A])
        result = fast_maxvol(backend.asarray(A), k, refine=refine)
        assert backend.is_native(result)
        np.testing.assert_array_equal(backend.to_numpy(result), looped)

    def test_group_size_from_bytes(self):
        """The group holds as many matrices as fit in _HOST_GROUP_BYTES (at least one)."""
        from graft_select._maxvol import _HOST_GROUP_BYTES, _group_size

        A = np.zeros((1, 256, 64))
        assert _group_size(A, 500, 256, 64) == _HOST_GROUP_BYTES // (256 * 64 * 8)
        assert _group_size(A.astype(np.float32), 500, 256, 64) == (
            _HOST_GROUP_BYTES // (256 * 64 * 4))
        assert _group_size(A, 3, 10**6, 64) == 1


class TestFastMaxvolRankDeficient:
    """Rank-deficient A still gives k unique indices in a documented order."""

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_zero_rows_come_last_lowest_first(self, backend, method):
        """Zero rows follow all others, in increasing index order."""
        A = rank_deficient_with_zero_rows()
        idx = backend.to_numpy(fast_maxvol(backend.asarray(A), 10, method=method))
        assert idx[5:].tolist() == [0, 2, 3, 5, 8]
        assert sorted(idx[:5].tolist()) == [1, 4, 6, 7, 9]

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_first_picks_span_row_space(self, method):
        """The first rank(A) picks span A's row space, and no zero row is among them."""
        A = rank_deficient_with_zero_rows()
        idx = fast_maxvol(A, 4, method=method)
        assert np.linalg.matrix_rank(A[idx[:3]]) == 3
        assert idx[3] not in (0, 2, 3, 5, 8)

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_repeated_rows_picked_after_distinct(self, rng, method):
        """With every row duplicated, the first r picks are r different rows."""
        B = rng.standard_normal((6, 3))
        A = np.vstack([B, B])
        idx = fast_maxvol(A, 12, method=method)
        assert sorted(idx.tolist()) == list(range(12))
        assert len(set((idx[:3] % 6).tolist())) == 3

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_rank_below_k_below_r(self, rng, method):
        """rank 2 < k = 4 < r = 5: four unique indices, the first two spanning the rows."""
        A = rng.standard_normal((20, 2)) @ rng.standard_normal((2, 5))
        idx = fast_maxvol(A, 4, method=method)
        assert len(set(idx.tolist())) == 4
        assert np.linalg.matrix_rank(A[idx[:2]]) == 2

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_all_zero_matrix(self, backend, method):
        """An all-zero A gives 0, 1, ..., k-1."""
        idx = fast_maxvol(backend.asarray(np.zeros((7, 3))), 5, method=method)
        assert backend.to_numpy(idx).tolist() == [0, 1, 2, 3, 4]

    def test_lu_continues_with_volume_rule(self):
        """After LU meets a zero pivot, the next pick is the largest volume gain."""
        # column 1 is zero, so LU's second pivot is zero although rank(A) = 2
        A = np.array([[3.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
        idx = fast_maxvol(A, 3, method="lu")
        assert idx[:2].tolist() == [0, 2]
        assert idx[2] == 1


class TestFastMaxvolBackends:
    """Results agree across backends and stay in the input's namespace and device."""

    @pytest.mark.parametrize("method", ["lu", "volume"])
    @pytest.mark.parametrize("k", [3, 8, 20])
    def test_agrees_with_numpy(self, backend, method, k):
        """Indices equal NumPy's on a float64 stack, for k below, at and above r."""
        A = np.stack([orthonormal(np.random.default_rng(s), 60, 8) for s in range(3)])
        expected = fast_maxvol(A, k, method=method)
        result = fast_maxvol(backend.asarray(A), k, method=method)
        assert backend.is_native(result)
        np.testing.assert_array_equal(backend.to_numpy(result), expected)

    @pytest.mark.parametrize("method", ["lu", "volume"])
    def test_float32_input(self, backend, method):
        """float32 A gives valid int64 indices on the input's device."""
        A = orthonormal(np.random.default_rng(0), 60, 8).astype(np.float32)
        result = fast_maxvol(backend.asarray(A), 12, method=method)
        assert backend.is_native(result)
        idx = backend.to_numpy(result)
        assert idx.dtype == np.int64
        assert len(set(idx.tolist())) == 12

    @pytest.mark.parametrize(
        ("method", "k", "refine"),
        [("lu", 5, False), ("volume", 5, False), ("lu", 12, True), ("volume", 12, True),
         ("volume", 3, False)])
    def test_input_not_modified(self, backend, method, k, refine):
        """fast_maxvol never writes into A (a copy taken before is unchanged)."""
        rng = np.random.default_rng(2)
        A_np = np.stack([orthonormal(rng, 30, 5),
                         rng.standard_normal((30, 2)) @ rng.standard_normal((2, 5))])
        A = backend.asarray(A_np)
        fast_maxvol(A, k, method=method, refine=refine)
        np.testing.assert_array_equal(backend.to_numpy(A), A_np)


class TestFastMaxvolValidation:
    """Bad arguments raise a clear ValueError or TypeError naming the argument."""

    A = np.random.default_rng(0).standard_normal((10, 3))

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"k": 11}, ValueError, r"'k' parameter of fast_maxvol .*\[1, 10\]. Got 11"),
            ({"k": 0}, ValueError, r"'k' parameter .* Got 0"),
            ({"k": -2}, ValueError, r"'k' parameter .* Got -2"),
            ({"k": 2.0}, TypeError, r"'k' parameter .* an int"),
            ({"k": "3"}, TypeError, r"'k' parameter"),
            ({"k": True}, TypeError, r"'k' parameter"),
            ({"method": "qr"}, ValueError, r"'method' parameter .*'volume', 'lu'.* 'qr'"),
            ({"method": None}, ValueError, r"'method' parameter"),
            ({"refine": "yes"}, TypeError, r"'refine' parameter .* a bool"),
            ({"refine": True, "k": 2}, ValueError, r"refine=True .* k >= r"),
            ({"tol": 0.99}, ValueError, r"'tol' parameter .*\[1.0, inf\). Got 0.99"),
            ({"tol": float("inf")}, ValueError, r"'tol' parameter .*\[1.0, inf\). Got inf"),
            ({"tol": float("nan")}, ValueError, r"'tol' parameter"),
            ({"tol": "1.1"}, TypeError, r"'tol' parameter"),
            ({"max_iter": 0}, ValueError, r"'max_iter' parameter"),
        ],
    )
    def test_bad_parameter(self, kwargs, error, match):
        """Each bad parameter raises the documented error naming it."""
        with pytest.raises(error, match=match):
            fast_maxvol(self.A, **kwargs)

    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    def test_non_finite_rejected(self, backend, value):
        """NaN or infinity in A is a ValueError naming the count and the first row."""
        A = self.A.copy()
        A[[4, 7], 1] = value
        with pytest.raises(ValueError, match=r"'A' .* NaN or infinity in 2 rows \(first: 4\)"):
            fast_maxvol(backend.asarray(A))

    @pytest.mark.parametrize("shape", [(5,), ()])
    def test_too_few_dimensions(self, shape):
        """A 1-D or 0-D A is a ValueError asking for a 2-D array."""
        with pytest.raises(ValueError, match=r"'A' of fast_maxvol must be a 2-D array or a stack"):
            fast_maxvol(np.ones(shape))

    @pytest.mark.parametrize("shape", [(0, 3), (4, 0), (0, 0), (2, 0, 3)])
    def test_empty(self, shape):
        """An array with a zero-length dimension is a ValueError saying it is empty."""
        with pytest.raises(ValueError, match=r"'A' of fast_maxvol is empty"):
            fast_maxvol(np.ones(shape))

    def test_not_tall(self):
        """A wide A (n < r) is a ValueError that suggests A.T."""
        with pytest.raises(ValueError, match=r"must be tall .*shape \(3, 10\).*A\.T"):
            fast_maxvol(self.A.T.copy())

    def test_complex_rejected(self, backend):
        """Complex A is a ValueError asking for real numbers, on every backend."""
        A = self.A.astype(np.complex128)
        with pytest.raises(ValueError, match=r"'A' of fast_maxvol must hold real numbers"):
            fast_maxvol(backend.asarray(A))

    def test_sparse_rejected(self):
        """A scipy.sparse A is a TypeError asking for a dense array."""
        with pytest.raises(TypeError, match=r"does not accept a scipy.sparse matrix for 'A'"):
            fast_maxvol(scipy.sparse.csr_matrix(self.A))

    def test_non_array_rejected(self):
        """An object that is not an array is a TypeError naming its type."""
        with pytest.raises(TypeError, match="type dict"):
            fast_maxvol({"a": 1})

    def test_integer_dtype_converted(self, backend):
        """Integer A is converted to float64 (documented) and gives the float result."""
        A = np.random.default_rng(1).integers(-50, 50, size=(20, 4))
        expected = fast_maxvol(A.astype(np.float64), 6)
        result = fast_maxvol(backend.asarray(A.astype(np.int32)), 6)
        np.testing.assert_array_equal(backend.to_numpy(result), expected)

    def test_bool_dtype_converted(self, backend):
        """Boolean A is converted to float64 (documented) and gives the 0/1 float result."""
        A = np.random.default_rng(1).random((20, 4)) > 0.5
        expected = fast_maxvol(A.astype(np.float64), 6)
        result = fast_maxvol(backend.asarray(A), 6)
        np.testing.assert_array_equal(backend.to_numpy(result), expected)

    def test_finite_values_with_overflowing_sum_accepted(self):
        """Finite entries whose sum overflows are not mistaken for infinity."""
        from graft_select._validation import check_array

        X = np.full((10, 4), np.finfo(np.float64).max / 8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and no overflow warning reaches the user
            checked, _ = check_array(X, "A", "fast_maxvol")
        assert checked is X
        X[3, 1] = np.inf
        with pytest.raises(ValueError, match=r"NaN or infinity in 1 rows \(first: 3\)"):
            check_array(X, "A", "fast_maxvol")

    def test_numpy_integer_k_accepted(self):
        """k given as a NumPy integer is accepted like an int."""
        np.testing.assert_array_equal(fast_maxvol(self.A, np.int64(5)), fast_maxvol(self.A, 5))

    def test_nested_list_accepted(self):
        """A nested list is read as a NumPy array."""
        np.testing.assert_array_equal(fast_maxvol(self.A.tolist()), fast_maxvol(self.A))


# --------------------------------------------------------- low_rank_features


class TestLowRankFeaturesSubspace:
    """U spans the dominant left singular subspace and has orthonormal columns."""

    @pytest.mark.parametrize("method", ["exact", "randomized"])
    @pytest.mark.parametrize("shape", [(300, 80), (60, 200)])
    def test_spans_dominant_subspace(self, rng, method, shape):
        """U U^T equals the exact top-r projector on low-rank + noise data."""
        X = low_rank_plus_noise(rng, shape, 5)
        U = low_rank_features(X, 5, method=method, random_state=0)
        assert U.shape == (shape[0], 5)
        np.testing.assert_allclose(projector(U), top_projector(X, 5), atol=1e-7)

    @pytest.mark.parametrize("method", ["exact", "randomized"])
    def test_columns_orthonormal(self, rng, method):
        """U^T U is the identity."""
        U = low_rank_features(rng.standard_normal((200, 50)), 8, method=method, random_state=0)
        np.testing.assert_allclose(U.T @ U, np.eye(8), atol=1e-12)

    def test_power_iterations_sharpen_subspace(self, rng):
        """Without a clear gap, more power iterations bring U closer to the exact subspace."""
        X = rng.standard_normal((200, 100)) * np.geomspace(1.0, 1e-3, 100)
        exact = np.linalg.svd(X)[0][:, :5]
        errors = [
            subspace_distance(
                low_rank_features(X, 5, method="randomized", n_iter=q, random_state=0), exact)
            for q in (0, 2, 4)
        ]
        assert errors[0] > errors[1] > errors[2]
        assert errors[2] < 1e-2

    def test_full_rank_request(self, rng):
        """n_components = min(n_samples, n_features) spans everything (randomized too)."""
        X = rng.standard_normal((30, 6))
        U = low_rank_features(X, 6, method="randomized", random_state=0)
        np.testing.assert_allclose(projector(U), top_projector(X, 6), atol=1e-10)

    def test_docstring_example(self):
        """The docstring example: shape (100, 5) and orthonormal columns."""
        X = np.random.default_rng(0).standard_normal((100, 20))
        U = low_rank_features(X, 5, random_state=0)
        assert U.shape == (100, 5)
        np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-12)


class TestLowRankFeaturesBatched:
    """A stack is decomposed like a loop over its matrices."""

    @pytest.mark.parametrize("method", ["exact", "randomized"])
    def test_stack_equals_loop(self, rng, method):
        """Batched U equals the loop over the stack with the same random_state."""
        X = low_rank_plus_noise(rng, (4, 80, 50), 6)
        stacked = low_rank_features(X, 6, method=method, random_state=3)
        looped = np.stack([low_rank_features(x, 6, method=method, random_state=3) for x in X])
        np.testing.assert_allclose(stacked, looped, atol=1e-10)

    def test_nested_stack(self, rng):
        """Two leading dimensions give the same result as the flattened stack."""
        X = low_rank_plus_noise(rng, (2, 3, 40, 30), 4)
        U = low_rank_features(X, 4, method="randomized", random_state=0)
        assert U.shape == (2, 3, 40, 4)
        flat = low_rank_features(X.reshape(6, 40, 30), 4, method="randomized", random_state=0)
        np.testing.assert_allclose(U.reshape(6, 40, 4), flat, atol=1e-12)


class TestLowRankFeaturesSparse:
    """scipy.sparse CSR/CSC input equals the dense computation."""

    @pytest.mark.parametrize("fmt", ["csr", "csc"])
    def test_randomized_sparse_equals_dense(self, rng, fmt):
        """Randomized U from sparse X equals the dense result with the same random_state."""
        X = scipy.sparse.random(150, 90, density=0.1, format=fmt, random_state=1)
        sparse_U = low_rank_features(X, 5, method="randomized", random_state=4)
        dense_U = low_rank_features(X.toarray(), 5, method="randomized", random_state=4)
        assert isinstance(sparse_U, np.ndarray)
        np.testing.assert_allclose(sparse_U, dense_U, atol=1e-10)

    @pytest.mark.parametrize("fmt", ["csr", "csc"])
    def test_exact_sparse_matches_dense_projector(self, rng, fmt):
        """method='exact' on sparse X (svds) spans the dense top-r subspace."""
        X = low_rank_plus_noise(rng, (120, 70), 4)
        X[np.abs(X) < 2.0] = 0.0
        sparse_X = scipy.sparse.csr_matrix(X) if fmt == "csr" else scipy.sparse.csc_matrix(X)
        U = low_rank_features(sparse_X, 4, method="exact")
        np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-10)
        assert subspace_distance(U, np.linalg.svd(X)[0][:, :4]) < 1e-8

    def test_auto_is_randomized_for_sparse(self, rng):
        """method='auto' on sparse input gives the randomized result."""
        X = scipy.sparse.random(40, 30, density=0.3, format="csr", random_state=2)
        np.testing.assert_array_equal(
            low_rank_features(X, 20, random_state=1),
            low_rank_features(X, 20, method="randomized", random_state=1))

    def test_float32_sparse_stays_float32(self):
        """float32 sparse X gives float32 U."""
        X = scipy.sparse.random(50, 40, density=0.2, format="csr", random_state=0,
                                dtype=np.float32)
        assert low_rank_features(X, 3, random_state=0).dtype == np.float32

    def test_integer_sparse_converted(self):
        """An integer sparse matrix is converted to float64."""
        X = scipy.sparse.csr_matrix(np.random.default_rng(0).integers(0, 3, (30, 20)))
        assert low_rank_features(X, 3, random_state=0).dtype == np.float64

    def test_exact_sparse_needs_rank_below_min_shape(self):
        """svds cannot return min(X.shape) vectors: a ValueError suggests 'randomized'."""
        X = scipy.sparse.random(20, 10, density=0.5, format="csr", random_state=0)
        with pytest.raises(ValueError, match=r"n_components < min\(X.shape\) = 10.*randomized"):
            low_rank_features(X, 10, method="exact")

    def test_coo_rejected(self):
        """A COO matrix is a TypeError asking for CSR or CSC."""
        X = scipy.sparse.random(20, 10, density=0.5, format="coo", random_state=0)
        with pytest.raises(TypeError, match=r"CSR or CSC .*'coo'"):
            low_rank_features(X, 3)

    def test_sparse_nan_rejected(self):
        """NaN in the stored values of a sparse X is a ValueError naming the row."""
        X = scipy.sparse.random(20, 10, density=0.5, format="csr", random_state=0)
        X.data[X.indptr[6]] = np.nan
        with pytest.raises(ValueError, match=r"NaN or infinity in 1 rows \(first: 6\)"):
            low_rank_features(X, 3)

    def test_sparse_input_not_modified(self):
        """low_rank_features does not write into a sparse X."""
        X = scipy.sparse.random(40, 30, density=0.2, format="csr", random_state=0)
        before = X.copy()
        low_rank_features(X, 4, random_state=0)
        assert (X != before).nnz == 0


class TestLowRankFeaturesRandomState:
    """random_state makes the randomized result reproducible."""

    def test_same_seed_same_result(self, rng):
        """Two calls with the same int seed give identical U."""
        X = rng.standard_normal((100, 60))
        a = low_rank_features(X, 5, method="randomized", n_iter=0, random_state=11)
        b = low_rank_features(X, 5, method="randomized", n_iter=0, random_state=11)
        np.testing.assert_array_equal(a, b)

    def test_different_seeds_differ(self, rng):
        """Different seeds give different U when the subspace is not exactly recovered."""
        X = rng.standard_normal((100, 60))
        a = low_rank_features(X, 5, method="randomized", n_iter=0, random_state=11)
        b = low_rank_features(X, 5, method="randomized", n_iter=0, random_state=12)
        assert not np.allclose(projector(a), projector(b), atol=1e-3)

    def test_generator_is_advanced(self, rng):
        """A Generator passed twice gives two different draws."""
        X = rng.standard_normal((100, 60))
        gen = np.random.default_rng(0)
        a = low_rank_features(X, 5, method="randomized", n_iter=0, random_state=gen)
        b = low_rank_features(X, 5, method="randomized", n_iter=0, random_state=gen)
        assert not np.allclose(a, b)

    def test_random_state_instance_accepted(self, rng):
        """A legacy RandomState is accepted and reproducible."""
        X = rng.standard_normal((50, 40))
        a = low_rank_features(X, 3, method="randomized",
                              random_state=np.random.RandomState(0))
        b = low_rank_features(X, 3, method="randomized",
                              random_state=np.random.RandomState(0))
        np.testing.assert_array_equal(a, b)

    def test_auto_is_randomized_when_rank_small(self, rng):
        """'auto' uses the range finder when 2 * (r + p) <= min(n_samples, n_features)."""
        X = rng.standard_normal((200, 30))
        np.testing.assert_array_equal(
            low_rank_features(X, 5, n_iter=0, random_state=1),
            low_rank_features(X, 5, method="randomized", n_iter=0, random_state=1))

    def test_auto_is_exact_when_rank_large(self, rng):
        """'auto' uses the exact SVD when r + p exceeds half of the smaller side."""
        X = rng.standard_normal((200, 28))
        np.testing.assert_array_equal(
            low_rank_features(X, 5, random_state=1),
            low_rank_features(X, 5, method="exact"))


class TestLowRankFeaturesBackends:
    """Backends agree, keep dtype and device."""

    @pytest.mark.parametrize("method", ["exact", "randomized"])
    def test_agrees_with_numpy(self, backend, method):
        """Every backend's projector equals NumPy's; U is on the input's device."""
        X = low_rank_plus_noise(np.random.default_rng(0), (3, 60, 40), 4)
        expected = low_rank_features(X, 4, method=method, random_state=0)
        U = low_rank_features(backend.asarray(X), 4, method=method, random_state=0)
        assert backend.is_native(U)
        np.testing.assert_allclose(projector(backend.to_numpy(U)), projector(expected),
                                   atol=1e-8)

    @pytest.mark.parametrize("method", ["exact", "randomized"])
    def test_float32_stays_float32(self, backend, method):
        """float32 X gives float32 U with orthonormal columns to float32 precision."""
        X = low_rank_plus_noise(np.random.default_rng(0), (60, 40), 4).astype(np.float32)
        U = backend.to_numpy(
            low_rank_features(backend.asarray(X), 4, method=method, random_state=0))
        assert U.dtype == np.float32
        np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-5)

    def test_integer_converted_to_float64(self, backend):
        """Integer X gives float64 U."""
        X = np.random.default_rng(0).integers(-5, 5, (40, 30)).astype(np.int32)
        U = low_rank_features(backend.asarray(X), 3, random_state=0)
        assert backend.to_numpy(U).dtype == np.float64

    def test_input_not_modified(self, backend):
        """low_rank_features never writes into X."""
        X_np = np.random.default_rng(0).standard_normal((2, 50, 30))
        X = backend.asarray(X_np)
        low_rank_features(X, 4, method="randomized", random_state=0)
        low_rank_features(X, 4, method="exact")
        np.testing.assert_array_equal(backend.to_numpy(X), X_np)


class TestLowRankFeaturesValidation:
    """Bad arguments raise a clear ValueError or TypeError naming the argument."""

    X = np.random.default_rng(0).standard_normal((20, 8))

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"n_components": 0}, ValueError, r"'n_components' .*\[1, 8\]. Got 0"),
            ({"n_components": 9}, ValueError, r"'n_components' .*\[1, 8\]. Got 9"),
            ({"n_components": 2.5}, TypeError, r"'n_components' .* an int"),
            ({"n_components": 3, "method": "svd"}, ValueError, r"'method' .*'randomized'"),
            ({"n_components": 3, "n_oversamples": -1}, ValueError, r"'n_oversamples'"),
            ({"n_components": 3, "n_iter": -1}, ValueError, r"'n_iter'"),
            ({"n_components": 3, "random_state": -1}, ValueError, r"'random_state'"),
            ({"n_components": 3, "random_state": "0"}, TypeError, r"'random_state'"),
            ({"n_components": 3, "random_state": True}, TypeError, r"'random_state'"),
        ],
    )
    def test_bad_parameter(self, kwargs, error, match):
        """Each bad parameter raises the documented error naming it."""
        with pytest.raises(error, match=match):
            low_rank_features(self.X, **kwargs)

    def test_one_dimensional(self):
        """A 1-D X is a ValueError asking for a 2-D array."""
        message = r"'X' of low_rank_features must be a 2-D array or a stack"
        with pytest.raises(ValueError, match=message):
            low_rank_features(np.ones(5), 1)

    def test_empty(self):
        """An empty X is a ValueError."""
        with pytest.raises(ValueError, match=r"'X' of low_rank_features is empty"):
            low_rank_features(np.ones((0, 4)), 1)

    def test_nan(self, backend):
        """NaN in X is a ValueError naming the first row."""
        X = self.X.copy()
        X[3, 2] = np.nan
        with pytest.raises(ValueError, match=r"NaN or infinity in 1 rows \(first: 3\)"):
            low_rank_features(backend.asarray(X), 2)

    def test_complex(self):
        """Complex X is a ValueError, dense or sparse (scikit-learn's class for it)."""
        with pytest.raises(ValueError, match="Complex data not supported: 'X' of low_rank"):
            low_rank_features(self.X.astype(np.complex64), 2)
        with pytest.raises(ValueError, match="Complex data not supported: 'X' of low_rank"):
            low_rank_features(scipy.sparse.csr_matrix(self.X.astype(np.complex64)), 2)
