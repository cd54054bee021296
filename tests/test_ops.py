"""Tests of the kernels' shared floor (_ops): row takes, matvecs, rescaling, range finder."""

import numpy as np
import pytest
import scipy.sparse

from graft_select._backend import get_namespace
from graft_select._ops import (
    extreme_exponents,
    leading_vectors,
    matvec,
    range_finder,
    replace_rows,
    rescale_extreme,
    rescale_stack,
    rmatvec,
    rounding_level,
    scale_to_unit_peak,
    take_host_rows,
    take_rows,
)


def _xp(X):
    return get_namespace(X)[0]


class TestRowTakes:
    def test_same_rows_for_every_matrix(self, rng):
        """A 1-D index takes the same rows of every matrix of a stack."""
        X = rng.standard_normal((3, 7, 4))
        idx = np.array([5, 0, 2])
        np.testing.assert_array_equal(take_rows(X, idx, _xp(X)), X[:, idx, :])

    def test_rows_per_matrix(self, rng):
        """An index of shape (..., k) takes each matrix's own rows."""
        X = rng.standard_normal((2, 3, 7, 4))
        idx = rng.integers(0, 7, (2, 3, 5))
        expected = np.take_along_axis(X, idx[..., None], axis=-2)
        np.testing.assert_array_equal(take_rows(X, idx, _xp(X)), expected)

    def test_host_rows(self, rng):
        """take_host_rows takes rows along the first axis from a list of ints."""
        X = rng.standard_normal((5, 3))
        np.testing.assert_array_equal(take_host_rows(X, [4, 1], _xp(X)), X[[4, 1]])

    def test_replace_rows(self, rng):
        """replace_rows equals an assignment of the new rows, and leaves X unmodified."""
        X = rng.standard_normal((6, 3))
        before = X.copy()
        new = rng.standard_normal((2, 3))
        expected = X.copy()
        expected[[4, 1]] = new
        np.testing.assert_array_equal(replace_rows(X, np.array([4, 1]), new, _xp(X)), expected)
        np.testing.assert_array_equal(X, before)


class TestMatvecs:
    @pytest.mark.parametrize("m", [1, 4])
    def test_matvec(self, rng, m):
        """matvec is M @ v per matrix (a stack of one included)."""
        M, v = rng.standard_normal((m, 5, 3)), rng.standard_normal((m, 3))
        np.testing.assert_allclose(matvec(M, v), np.einsum("mab,mb->ma", M, v))

    def test_rmatvec(self, rng):
        """rmatvec is M.T @ v per matrix."""
        M, v = rng.standard_normal((4, 5, 3)), rng.standard_normal((4, 5))
        np.testing.assert_allclose(rmatvec(M, v), np.einsum("mab,ma->mb", M, v))


class TestRescaling:
    def test_in_range_is_none(self):
        """Peaks within 2**(+-emax/4) need no rescaling; zero peaks count as in range."""
        peaks = np.array([1e-9, 0.0, 3.0, 1e9])
        assert extreme_exponents(peaks, np.float64, np) is None

    def test_extreme_exponents(self):
        """Beyond the bound, the binary exponents of the peaks come back."""
        peaks = np.array([2.0**300, 1.0])
        np.testing.assert_array_equal(extreme_exponents(peaks, np.float64, np), [301, 1])

    def test_float32_bound_is_lower(self):
        """float32's bound (2**32) is far below float64's (2**256)."""
        peak = np.array([2.0**40])
        assert extreme_exponents(peak, np.float64, np) is None
        assert extreme_exponents(peak, np.float32, np) is not None

    def test_scale_to_unit_peak_is_exact(self):
        """The peak lands in [0.5, 1) and every entry is scaled exactly."""
        X = np.array([3.0 * 2.0**500, -2.0**400])
        scaled, exponent = scale_to_unit_peak(X, float(np.max(np.abs(X))))
        assert exponent == -502
        np.testing.assert_array_equal(scaled, np.ldexp(X, exponent))
        assert 0.5 <= np.max(np.abs(scaled)) < 1

    def test_rescale_extreme_leaves_normal_arrays(self, rng):
        """An array in range comes back as the same object, exponent 0."""
        X = rng.standard_normal((4, 3))
        out, exponent = rescale_extreme(X, _xp(X))
        assert out is X and exponent == 0

    def test_rescale_extreme_sparse(self):
        """A sparse matrix is scaled through its data, without densifying."""
        X = scipy.sparse.csr_matrix(np.array([[0.0, 1e-200], [3e-210, 0.0]]))
        out, exponent = rescale_extreme(X, np)
        assert scipy.sparse.issparse(out) and exponent > 0
        np.testing.assert_array_equal(out.toarray(), np.ldexp(X.toarray(), exponent))

    def test_rescale_stack_per_matrix(self, rng):
        """Once a matrix is extreme, each matrix of the stack gets its own peak near 1."""
        X = rng.standard_normal((3, 4, 2)) * np.array([1e-300, 1.0, 1e200])[:, None, None]
        peaks = np.max(np.abs(rescale_stack(X, _xp(X))), axis=(1, 2))
        assert np.all((peaks >= 0.5) & (peaks < 1))

    def test_rescale_stack_leaves_normal_stacks(self, rng):
        """A stack in range comes back as the same object."""
        X = rng.standard_normal((3, 4, 2))
        assert rescale_stack(X, _xp(X)) is X

    def test_rounding_level(self):
        """n * eps * largest, in the dtype's epsilon."""
        assert rounding_level(10, 2.0, np.float32, np) == 10 * float(np.finfo(np.float32).eps) * 2


class TestRangeFinder:
    def test_leading_vectors(self):
        """The last r columns, last first (eigh's largest eigenvalues first)."""
        V = np.arange(12.0).reshape(3, 4)
        np.testing.assert_array_equal(leading_vectors(V, 2, np), V[:, [3, 2]])

    @pytest.mark.parametrize("sparse", [False, True])
    def test_spans_a_low_rank_range(self, rng, sparse):
        """On a rank-r matrix the basis is orthonormal and spans X's column space."""
        X = rng.standard_normal((60, 4)) @ rng.standard_normal((4, 30))
        U = range_finder(scipy.sparse.csr_matrix(X) if sparse else X, 4, 5, 2,
                         np.random.default_rng(0), _xp(X))
        np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-10)
        np.testing.assert_allclose(U @ (U.T @ X), X, atol=1e-9)
