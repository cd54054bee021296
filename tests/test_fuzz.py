"""Hypothesis fuzzing of the public functions against the library's error contract.

The contract: for any input, only ValueError or TypeError escape; finite
input never gives NaN or infinity out; the input is never modified. The number of
examples is bounded so the whole module runs in a few seconds.
"""

import importlib.util
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from graft_select import GraftResampler, GraftSelector, fast_maxvol, low_rank_features
from graft_select.gradients import (
    gradient_error,
    last_layer_gradients,
    nested_gradient_errors,
)

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

_DTYPES = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.bool_])
_LIBRARIES = st.sampled_from(
    ["numpy"] + (["torch"] if importlib.util.find_spec("torch") else []))
_SCALES = st.sampled_from([1.0, 1e-300, 1e-30, 1e-8, 1e8, 1e30, 1e300])


@st.composite
def matrices(draw, min_rows=1, max_rows=12, max_cols=6):
    """Small matrices of mixed dtypes and extreme (finite) magnitudes."""
    dtype = draw(_DTYPES)
    shape = (draw(st.integers(min_rows, max_rows)), draw(st.integers(1, max_cols)))
    base = draw(hnp.arrays(np.float64, shape,
                           elements=st.floats(-10, 10, allow_nan=False, width=64)))
    scale = draw(_SCALES)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        X = (base * scale).astype(dtype)
    if not np.all(np.isfinite(X.astype(np.float64))):
        X = base.astype(dtype)
    return X


_ANYTHING = st.one_of(
    st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=3),
    st.booleans(), st.lists(st.integers(-2, 5), max_size=4),
    st.lists(st.lists(st.floats(-2, 2), max_size=3), max_size=3),
)


def _host_copy(x):
    if isinstance(x, np.ndarray):
        return np.array(x, copy=True)
    if type(x).__module__.startswith("torch"):
        return x.detach().float().numpy().copy() if x.dtype.is_floating_point else (
            x.numpy().copy())
    return None


def _as_library(X, library):
    if library == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(X))
    return X


def _contract(call, *inputs):
    """Run ``call``: only ValueError/TypeError escape, outputs finite, inputs unchanged."""
    before = [_host_copy(x) for x in inputs]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # budget warnings are allowed
            out = call()
    except (ValueError, TypeError):
        out = None
    for x, copy in zip(inputs, before):
        if copy is not None:
            np.testing.assert_array_equal(_host_copy(x), copy)
    if out is None:
        return None
    finite_in = all(
        copy is None or copy.dtype.kind not in "fc" or np.all(np.isfinite(copy))
        for copy in before)
    for array in out if isinstance(out, tuple) else (out,):
        array = _host_copy(array) if _host_copy(array) is not None else np.asarray(array)
        if finite_in and array.dtype.kind == "f":
            assert np.all(np.isfinite(array)), "finite input gave NaN or infinity"
    return out


@FUZZ
@given(X=matrices(), r=st.integers(0, 7), method=st.sampled_from(["auto", "exact", "randomized"]),
       library=_LIBRARIES)
def test_low_rank_features(X, r, method, library):
    """low_rank_features: the error contract over dtypes, shapes, magnitudes, libraries."""
    X = _as_library(X, library)
    U = _contract(lambda: low_rank_features(X, r, method=method, random_state=0), X)
    if U is not None:
        assert U.shape == (X.shape[0], r)


@FUZZ
@given(A=matrices(), k=st.one_of(st.none(), st.integers(0, 14)),
       method=st.sampled_from(["volume", "lu"]), refine=st.booleans(),
       library=_LIBRARIES)
def test_fast_maxvol(A, k, method, refine, library):
    """fast_maxvol: unique in-range indices, or a ValueError/TypeError."""
    A = _as_library(A, library)
    out = _contract(lambda: fast_maxvol(A, k, method=method, refine=refine), A)
    if out is not None:
        out = np.asarray(_host_copy(out))
        assert len(set(out.tolist())) == out.size
        assert out.min() >= 0 and out.max() < A.shape[0]


@FUZZ
@given(bad=_ANYTHING)
def test_odd_arguments(bad):
    """Odd values for the array arguments raise ValueError or TypeError only."""
    Z = np.zeros((4, 3))
    _contract(lambda: fast_maxvol(bad))
    _contract(lambda: low_rank_features(bad, 1))
    _contract(lambda: last_layer_gradients(Z, bad))
    _contract(lambda: gradient_error(Z, bad))
    _contract(lambda: GraftSelector().fit(Z, bad))


@FUZZ
@given(Z=matrices(min_rows=2, max_cols=4), data=st.data(),
       loss=st.sampled_from(["cross_entropy", "mse"]), factored=st.booleans())
def test_gradients_and_criterion(Z, data, loss, factored):
    """last_layer_gradients, gradient_error and nested_gradient_errors on fuzzed logits."""
    n, n_classes = Z.shape
    if loss == "cross_entropy":
        y = np.asarray(data.draw(st.lists(st.integers(-1, n_classes), min_size=n,
                                          max_size=n)))
    else:
        y = data.draw(matrices(min_rows=n, max_rows=n, max_cols=n_classes))
    H = data.draw(matrices(min_rows=n, max_rows=n, max_cols=3))
    G = _contract(lambda: last_layer_gradients(Z, y, H, loss=loss, factored=factored), Z, y, H)
    if G is None:
        return
    order = np.asarray(data.draw(st.lists(st.integers(-1, n), min_size=1, max_size=n,
                                          unique=True)))
    result = _contract(lambda: gradient_error(G, order), order)
    if result is not None:
        error, _ = result
        assert np.all((np.asarray(error) >= 0) & (np.asarray(error) <= 1))
    errors = _contract(lambda: nested_gradient_errors(G, order), order)
    if errors is not None:
        errors = np.asarray(errors, dtype=np.float64)
        assert np.all(np.diff(errors) <= 1e-3)


@FUZZ
@given(X=matrices(min_rows=1, max_rows=20), fraction=st.sampled_from([0.05, 0.3, 1.0]),
       batch_size=st.sampled_from([None, 2, 5]), with_gradients=st.booleans(),
       data=st.data())
def test_selector_and_resampler(X, fraction, batch_size, with_gradients, data):
    """GraftSelector.fit/transform and GraftResampler.fit_resample on fuzzed data."""
    gradients = None
    if with_gradients:
        gradients = data.draw(matrices(min_rows=X.shape[0], max_rows=X.shape[0]))
    y = np.arange(X.shape[0])
    kwargs = dict(fraction=fraction, batch_size=batch_size, random_state=0)
    inputs = (X, y) if gradients is None else (X, y, gradients)
    selector = GraftSelector(**kwargs)
    fitted = _contract(lambda: selector.fit(X, gradients=gradients).sample_weight_, *inputs)
    if fitted is not None:
        out = _contract(lambda: selector.transform(X), X)
        assert out.shape[0] == selector.sample_indices_.size
    _contract(lambda: GraftResampler(**kwargs).fit_resample(X, y, gradients=gradients),
              *inputs)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_half_contract(dtype):
    """The contract holds for torch half precision too (one fixed example each)."""
    torch = pytest.importorskip("torch")
    X = torch.tensor(np.random.default_rng(0).standard_normal((20, 4)),
                     dtype=getattr(torch, dtype))
    before = X.clone()
    U = low_rank_features(X, 2, random_state=0)
    assert torch.all(torch.isfinite(U.float()))
    assert fast_maxvol(U).shape == (2,)
    GraftSelector(fraction=0.25).fit(X)
    assert torch.equal(X, before)
