"""Tests for graft_select._backend: namespaces, devices, conversions and LU pivots."""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
from conftest import scipy_lu_rows

from graft_select._backend import (
    _lu_pivot_rows_portable,
    _swaps_to_rows,
    _swaps_to_rows_host,
    from_numpy,
    get_namespace,
    is_cupy,
    is_numpy,
    is_sparse,
    is_torch,
    lu_pivot_rows,
    on_host,
    to_numpy,
)


class TestGetNamespace:
    """get_namespace: one namespace and device for all arrays, or a TypeError."""

    def test_returns_namespace_and_device(self, backend):
        """The namespace is the array's own library and the device is the array's."""
        x = backend.asarray(np.ones((3, 2)))
        xp, device = get_namespace(x)
        assert device == backend.device_of(x)
        assert xp.__name__.split(".")[-1] in backend.module.__name__
        assert backend.is_native(xp.zeros((2,), device=device))

    def test_none_entries_are_skipped(self):
        """None among the arrays does not count as a different library."""
        xp, device = get_namespace(None, np.ones(2), None)
        assert is_numpy(xp)
        assert device == "cpu"

    def test_no_array_raises(self):
        """Calling it with no array (or only None) is a TypeError."""
        with pytest.raises(TypeError, match="at least one array"):
            get_namespace(None)

    def test_non_array_raises(self):
        """An object that is not an array is a TypeError naming its type."""
        with pytest.raises(TypeError, match="type str"):
            get_namespace("not an array")

    def test_mixed_libraries_name_both(self):
        """NumPy mixed with torch raises a TypeError naming both libraries."""
        torch = pytest.importorskip("torch")
        with pytest.raises(TypeError, match=r"numpy.*ndarray.*torch.*Tensor"):
            get_namespace(np.ones(2), torch.ones(2))

    def test_mixed_libraries_other_order(self):
        """The message names the libraries in the order they were passed."""
        xps = pytest.importorskip("array_api_strict")
        with pytest.raises(TypeError, match=r"array_api_strict.*numpy"):
            get_namespace(xps.ones(2), np.ones(2))

    def test_mixed_devices_name_both(self):
        """Two array-api-strict arrays on different devices raise naming both devices."""
        xps = pytest.importorskip("array_api_strict")
        a = xps.ones(2, device=xps.Device("device1"))
        b = xps.ones(2)
        with pytest.raises(TypeError, match=r"one device.*device1.*CPU_DEVICE"):
            get_namespace(a, b)

    def test_sparse_is_numpy_on_cpu(self):
        """A scipy.sparse matrix counts as NumPy on the CPU, and mixes with ndarrays."""
        xp, device = get_namespace(scipy.sparse.eye(3, format="csr"), np.ones(3))
        assert is_numpy(xp)
        assert device == "cpu"


class TestNamespacePredicates:
    """is_numpy / is_torch / is_cupy / is_sparse recognise exactly their library."""

    def test_predicates_match_backend(self, backend):
        """Exactly the predicate of the backend's library is true."""
        xp, _ = get_namespace(backend.asarray(np.ones(2)))
        expected = {
            "numpy": (True, False, False),
            "array_api_strict": (False, False, False),
            "torch-cpu": (False, True, False),
            "torch-cuda": (False, True, False),
            "cupy": (False, False, True),
        }[backend.name]
        assert (is_numpy(xp), is_torch(xp), is_cupy(xp)) == expected

    @pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
    def test_is_sparse_true_for_scipy_sparse(self, fmt):
        """Every scipy.sparse format is recognised as sparse."""
        assert is_sparse(scipy.sparse.random(4, 3, density=0.5, format=fmt, random_state=0))

    def test_is_sparse_false_for_dense(self, backend):
        """Dense arrays of every backend are not sparse."""
        assert not is_sparse(backend.asarray(np.ones((2, 2))))


class TestOnHost:
    """on_host tells host memory from accelerator memory."""

    def test_matches_backend(self, backend):
        """NumPy, array-api-strict and torch-cpu are on the host; CUDA backends are not."""
        expected = backend.name not in ("torch-cuda", "cupy")
        assert on_host(backend.asarray(np.ones(2))) is expected

    def test_sparse_on_host(self):
        """A scipy.sparse matrix is in host memory."""
        assert on_host(scipy.sparse.eye(2, format="csr"))


class TestConversions:
    """to_numpy and from_numpy round-trip values, dtype and device."""

    @pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
    def test_round_trip(self, backend, dtype):
        """from_numpy then to_numpy gives back the same values and dtype."""
        a = np.arange(12, dtype=dtype).reshape(3, 4)
        xp, device = get_namespace(backend.asarray(np.ones(1)))
        x = from_numpy(a, xp, device)
        assert backend.is_native(x)
        back = to_numpy(x)
        assert isinstance(back, np.ndarray)
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, a)

    def test_to_numpy_returns_numpy_input_itself(self):
        """A NumPy array is returned as is (no copy)."""
        a = np.ones(3)
        assert to_numpy(a) is a


def random_swaps(rng, m, n, r):
    """m LAPACK-style swap sequences: step j swaps row j with a row p >= j."""
    return np.array([[rng.integers(j, n) for j in range(r)] for _ in range(m)], dtype=np.int64)


def sequential_rows(swaps, n):
    """The chosen rows, by applying the swaps one after another to 0..n-1."""
    rows = []
    for sequence in swaps:
        perm = np.arange(n)
        for j, p in enumerate(sequence):
            perm[[j, p]] = perm[[p, j]]
        rows.append(perm[: len(sequence)])
    return np.array(rows)


class TestSwapsToRows:
    """_swaps_to_rows and its host version turn LAPACK swap sequences into chosen rows."""

    def test_matches_sequential_swaps(self, rng):
        """The array-API version equals applying the swaps one after another."""
        swaps = random_swaps(rng, 4, 9, 5)
        xp, _ = get_namespace(swaps)
        np.testing.assert_array_equal(_swaps_to_rows(swaps, 9, xp), sequential_rows(swaps, 9))

    @pytest.mark.parametrize("m", [1, 5, 12])
    def test_host_version_matches(self, rng, m):
        """The host version (a dict for few matrices, vectorised for more) agrees."""
        swaps = random_swaps(rng, m, 30, 12)
        xp, _ = get_namespace(swaps)
        rows = _swaps_to_rows_host(swaps, 30, xp)
        assert rows.dtype == np.int64
        np.testing.assert_array_equal(rows, sequential_rows(swaps, 30))


class TestLuPivotRows:
    """lu_pivot_rows: getrf's pivot rows and |diag U| for a stack, on every backend."""

    def test_rows_match_scipy_getrf(self, backend, rng):
        """The rows equal scipy.linalg.lu_factor's, converted from swaps to rows."""
        A = rng.standard_normal((3, 40, 7))
        rows, _ = lu_pivot_rows(backend.asarray(A))
        assert backend.is_native(rows)
        rows = backend.to_numpy(rows)
        assert rows.dtype == np.int64
        for b in range(3):
            np.testing.assert_array_equal(rows[b], scipy_lu_rows(A[b]))

    def test_pivots_match_scipy_diagonal(self, backend, rng):
        """The pivot magnitudes equal |diag(U)| of scipy's LU."""
        A = rng.standard_normal((2, 30, 6))
        _, pivots = lu_pivot_rows(backend.asarray(A))
        pivots = backend.to_numpy(pivots)
        for b in range(2):
            lu, _ = scipy.linalg.lu_factor(A[b])
            np.testing.assert_allclose(pivots[b], np.abs(np.diag(lu)), rtol=1e-10)

    def test_rank_deficient_gives_zero_pivot(self, backend):
        """A singular matrix gives a (near) zero pivot instead of an error."""
        A = np.zeros((1, 6, 3))
        A[0, 1] = [1.0, 2.0, 3.0]
        A[0, 4] = [2.0, 4.0, 6.0]
        A[0, 5] = [0.0, 1.0, 0.0]
        rows, pivots = lu_pivot_rows(backend.asarray(A))
        pivots = backend.to_numpy(pivots)[0]
        assert pivots[0] == pytest.approx(2.0)
        assert pivots[1] == pytest.approx(1.0)
        assert pivots[2] == pytest.approx(0.0, abs=1e-12)
        assert len(set(backend.to_numpy(rows)[0].tolist())) == 3

    def test_portable_fallback_matches_scipy(self, rng):
        """The array-API elimination picks the same rows and pivots as getrf."""
        import array_api_compat.numpy as xp

        A = rng.standard_normal((3, 25, 6))
        rows, pivots = _lu_pivot_rows_portable(A, xp)
        for b in range(3):
            np.testing.assert_array_equal(rows[b], scipy_lu_rows(A[b]))
            lu, _ = scipy.linalg.lu_factor(A[b])
            np.testing.assert_allclose(pivots[b], np.abs(np.diag(lu)), rtol=1e-10)

    def test_float32_pivots_stay_float32(self, backend, rng):
        """float32 input gives float32 pivot magnitudes."""
        A = rng.standard_normal((2, 20, 4)).astype(np.float32)
        _, pivots = lu_pivot_rows(backend.asarray(A))
        assert backend.to_numpy(pivots).dtype == np.float32


# Public names that take arrays but are not wrapped by on_input_device, and why.
_SCOPED_ELSEWHERE = {
    "GraftSelector": "fit enters device_scope(X) for the whole fit (_GraftBase._fit)",
    "GraftResampler": "fit_resample enters device_scope(X) for the whole fit",
    "GraftBatchSampler": "torch only, and torch honours device=",
    "LastLayerCapture": "torch only, and torch honours device=",
    "RefitReport": "a record of a refit's results; creates no arrays",
    "__version__": "not a function",
}


class TestDeviceScope:
    def test_noop_outside_cupy(self):
        """NumPy and torch honour device=: the scope is a no-op context."""
        from graft_select._backend import device_scope

        with device_scope(np.zeros(3)) as entered:
            assert entered is None

    def test_empty_tuple_reaches_the_named_check(self):
        """An empty tuple gets no scope, so the kernel's own check names the argument."""
        from graft_select import GraftSelector
        from graft_select.gradients import nested_gradient_errors

        with pytest.raises(ValueError, match="'G' of nested_gradient_errors must be a 2-D"):
            nested_gradient_errors((), [0])
        with pytest.raises(ValueError, match="Expected 2D array"):
            GraftSelector().fit(())

    def test_decorated_kernels_keep_their_names(self):
        """on_input_device keeps the public kernels' names and docstrings (API docs)."""
        from graft_select import fast_maxvol, low_rank_features
        from graft_select.gradients import gradient_error, nested_gradient_errors

        for function in (fast_maxvol, low_rank_features, gradient_error,
                         nested_gradient_errors):
            assert "Parameters" in function.__doc__
            assert function.__wrapped__.__name__ == function.__name__

    def test_every_public_array_function_is_scoped(self):
        """Every public function and FactoredGradients method runs under on_input_device."""
        import inspect

        import graft_select
        from graft_select import gradients, linalg
        from graft_select._backend import on_input_device

        scoped = on_input_device(lambda X: X).__code__  # shared by every wrapper it makes
        found = {}
        for module in (graft_select, gradients, linalg):
            for name in module.__all__:
                if name in _SCOPED_ELSEWHERE:
                    continue
                value = getattr(module, name)
                if inspect.isclass(value):
                    found.update({f"{name}.{attr}": method for attr, method in vars(value).items()
                                  if not attr.startswith("_") and inspect.isfunction(method)})
                elif callable(value):
                    found[name] = value
        assert {"FactoredGradients.materialize", "FactoredGradients.take", "gram_matrix",
                "last_layer_gradients", "nested_gradient_errors"} <= set(found)
        unscoped = sorted(name for name, function in found.items()
                          if getattr(function, "__code__", None) is not scoped)
        assert unscoped == []
        for function in found.values():
            assert function.__wrapped__.__name__ == function.__name__
            assert "Returns" in function.__doc__

    def test_input_passed_by_name_is_scoped(self, monkeypatch):
        """The decorated kernels accept their first argument by name, and scope it."""
        import graft_select._backend as backend_module
        from graft_select.gradients import last_layer_gradients, nested_gradient_errors

        entered = _spy_device_scope(monkeypatch, backend_module)
        logits = np.random.default_rng(0).standard_normal((5, 3))
        G = last_layer_gradients(logits=logits, targets=np.array([0, 1, 2, 0, 1]))
        errors = nested_gradient_errors(G=G, order=np.array([0, 1]))
        assert errors.shape == (2,)
        assert entered[0] is logits and entered[-1] is G

    def test_estimators_fit_under_the_scope_of_X(self, monkeypatch):
        """GraftSelector and GraftResampler enter the device scope of X for a whole fit."""
        import graft_select.selector as selector

        entered = _spy_device_scope(monkeypatch, selector)
        X = np.random.default_rng(0).standard_normal((60, 4))
        selector.GraftSelector(fraction=0.5, random_state=0).fit(X)
        selector.GraftResampler(fraction=0.5, random_state=0).fit_resample(X, np.zeros(60))
        assert len(entered) == 2 and all(x is X for x in entered)

    def test_cupy_second_device(self):
        """A CuPy array on cuda:1 gets its results (and helpers) on cuda:1."""
        cupy = pytest.importorskip("cupy")
        try:
            n_devices = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError:
            pytest.skip("cupy: no CUDA runtime")
        if n_devices < 2:
            pytest.skip("cupy: needs two CUDA devices")
        from graft_select import GraftSelector, fast_maxvol

        with cupy.cuda.Device(1):
            A = cupy.asarray(np.random.default_rng(0).standard_normal((3, 50, 4)))
        assert fast_maxvol(A, 6).device.id == 1
        sel = GraftSelector(fraction=0.2, chunk_size=25, random_state=0).fit(A[0])
        assert sel.sample_indices_.device.id == 1


def _spy_device_scope(monkeypatch, module):
    """Replace ``module.device_scope`` by a no-op that lists what it was entered with."""
    import contextlib

    entered = []

    def scope(x):
        entered.append(x)
        return contextlib.nullcontext()

    monkeypatch.setattr(module, "device_scope", scope)
    return entered
