"""Parameter and array checks with one message style.

Parameter errors follow scikit-learn's shape::

    The 'k' parameter of fast_maxvol must be an int in the range [1, 100]. Got 0 instead.

Data errors say what was found and what to do about it.
"""

import collections.abc
import math
import numbers

import numpy as np

from ._backend import (
    get_namespace,
    host_float_dtype,
    is_dask_array,
    is_meta,
    is_sparse,
    sparse_tensor_layout,
    to_numpy,
)

__all__ = [
    "all_finite",
    "as_array",
    "check_array",
    "check_bool",
    "check_dense_tensor",
    "check_finite",
    "check_int",
    "check_no_bool_numbers",
    "check_not_factor_pair",
    "check_option",
    "check_random_state",
    "check_real",
    "check_real_host",
    "check_rows",
    "complex_data_error",
    "float_info",
    "half_dtype",
    "n_rows",
]


def _fail(name, owner, expected, value, exc=ValueError):
    raise exc(f"The '{name}' parameter of {owner} must be {expected}. Got {value!r} instead.")


def check_int(value, name, owner, *, low=None, high=None):
    """Return ``value`` as int if it is an integer in ``[low, high]`` (bounds optional)."""
    bounds = _interval(low, high, closed="both")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(name, owner, f"an int{bounds}", value, TypeError)
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(name, owner, f"an int{bounds}", value)
    return int(value)


def check_real(value, name, owner, *, low=None, high=None, closed="both"):
    """Return ``value`` as float if it is a finite real number in the interval."""
    bounds = _interval(low, high, closed)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(name, owner, f"a float{bounds}", value, TypeError)
    value = float(value)
    left_ok = low is None or (value >= low if closed in ("both", "left") else value > low)
    right_ok = high is None or (value <= high if closed in ("both", "right") else value < high)
    if not (np.isfinite(value) and left_ok and right_ok):
        _fail(name, owner, f"a float{bounds}", value)
    return value


def check_no_bool_numbers(params, expected, owner):
    """Reject a bool given for a numeric parameter (``True`` is an int to Python).

    ``params`` maps parameter names to values and ``expected`` maps the numeric
    ones to their description, e.g. ``{"fraction": "a float in the range (0.0, 1.0]"}``.
    scikit-learn's interval constraints accept ``True`` as 1; an estimator calls this
    after them so that ``fraction=True`` is a TypeError, not "keep everything".
    """
    for name, description in expected.items():
        value = params.get(name)
        if isinstance(value, (bool, np.bool_)):
            _fail(name, owner, description, value, TypeError)


def check_bool(value, name, owner):
    """Return ``value`` if it is a bool (NumPy bools accepted)."""
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, owner, "a bool", value, TypeError)
    return bool(value)


def check_option(value, name, owner, options):
    """Return ``value`` if it is one of the strings in ``options``."""
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(o) for o in options)
        _fail(name, owner, f"a str among {{{listed}}}", value)
    return value


def check_random_state(random_state, name="random_state", owner="this function"):
    """Return a NumPy random generator for ``random_state``.

    ``None`` gives fresh entropy, an int seeds a new ``numpy.random.Generator``; a
    ``Generator`` is used as is (and advanced); a ``RandomState`` is wrapped in a
    ``Generator`` over its bit generator, so it is advanced too.
    """
    if random_state is None or (
        isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool)
    ):
        if random_state is not None and random_state < 0:
            _fail(name, owner, "None, a non-negative int or a numpy random generator",
                  random_state)
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        # a Generator on the RandomState's own bit generator: the RandomState is
        # advanced, and the Generator API (integers, random, ...) is available
        return np.random.Generator(random_state._bit_generator)
    _fail(name, owner, "None, a non-negative int or a numpy random generator", random_state,
          TypeError)


def _interval(low, high, closed):
    if low is None and high is None:
        return ""
    # an unbounded side is open: the checks take finite values only
    left = "[" if closed in ("both", "left") and low is not None else "("
    right = "]" if closed in ("both", "right") and high is not None else ")"
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    return f" in the range {left}{lo}, {hi}{right}"


def check_not_empty(shape, name, owner):
    """Raise a ValueError naming ``name`` if an array of ``shape`` has no elements."""
    if any(s == 0 for s in shape):
        raise ValueError(
            f"'{name}' of {owner} is empty (shape {tuple(shape)}); at least one row "
            f"and one column are needed."
        )


def check_array(X, name, owner, *, min_ndim=2, max_ndim=None, allow_sparse=False,
                allow_dask=True, accepted=None, factored=False, ensure_finite=True):
    """Validate a numeric array and return it with a floating dtype.

    Integer and boolean arrays are converted to float64 (documented behaviour);
    float32 and float64 are kept; half precision (float16, bfloat16) is converted
    to float32, where every kernel computes; complex arrays are rejected (a
    ValueError, as scikit-learn's), and so are ``None``, ragged lists and meta
    tensors (which hold no values). Empty arrays, arrays
    with too few dimensions and arrays holding NaN or infinity are rejected with a
    message naming ``name`` and the first offending row. ``ensure_finite=False``
    leaves the last test to the caller (see :func:`check_finite`), for a caller
    that reads the whole array anyway and can pass a reduction of it.

    ``allow_dask=False`` rejects a dask array with a TypeError that says to compute
    it first, for a function whose kernels need the whole matrix in memory.
    ``accepted`` is what the message for an object of no known array library says
    the argument must be (by default the libraries that ``allow_sparse`` and
    ``allow_dask`` admit). ``factored=True`` is for an argument that also takes a
    :class:`~graft_select.gradients.FactoredGradients`: a tuple or list of two
    2-D arrays that cannot be one array of the allowed dimensions is then a
    TypeError saying to wrap them as ``FactoredGradients(R, H)``.

    Returns
    -------
    X : array
        The validated array, in its own namespace and on its own device.
    xp : namespace
        The array's namespace (NumPy for scipy.sparse input).
    """
    if is_sparse(X):
        if not allow_sparse:
            raise TypeError(
                f"{owner} does not accept a scipy.sparse matrix for '{name}'; "
                f"pass a dense array (for example {name}.toarray())."
            )
        return _check_sparse(X, name, owner), np
    if is_dask_array(X) and not allow_dask:
        raise TypeError(
            f"{owner} does not accept a dask array for '{name}': it computes on the whole "
            f"matrix in memory; compute it first ({name}.compute()). To select rows of a "
            f"dask array, fit GraftSelector on it, which runs the kernels block by block."
        )
    if factored:
        check_not_factor_pair(X, name, owner, max_ndim)
    X = _as_array_like(X, name, owner)
    if is_meta(X):
        raise TypeError(
            f"'{name}' of {owner} is a meta tensor, which holds no values; pass a tensor "
            f"on a real device (cpu, cuda, ...)."
        )
    check_dense_tensor(X, name, owner)
    try:
        xp, _ = get_namespace(X)
    except TypeError as exc:
        if accepted is None:
            accepted = _accepted_arrays(allow_sparse, allow_dask)
        frame = type(X).__module__.startswith("pandas") and hasattr(X, "to_numpy")
        convert = f"{name}.to_numpy()" if frame else f"np.asarray({name})"
        raise TypeError(
            f"'{name}' of {owner} must be {accepted}, got an object of type "
            f"{type(X).__name__}; convert it first, e.g. {convert}."
        ) from exc
    ndim = X.ndim
    if ndim < min_ndim or (max_ndim is not None and ndim > max_ndim):
        if max_ndim == min_ndim:
            want = f"a {min_ndim}-D array"
        elif max_ndim is None:
            want = f"a {min_ndim}-D array or a stack of them"
        else:
            want = f"an array with {min_ndim} to {max_ndim} dimensions"
        raise ValueError(
            f"'{name}' of {owner} must be {want}, got an array of shape "
            f"{tuple(X.shape)}; {reshape_hint(name, min_ndim)}."
        )
    check_not_empty(X.shape, name, owner)
    X = _as_float(X, xp, name, owner)
    if ensure_finite:
        check_finite(X, name, owner, xp)
    return X, xp


def _accepted_arrays(allow_sparse, allow_dask):
    """What an argument of a function written against the array API accepts, in words."""
    libraries = f"NumPy, torch, CuPy{', dask' if allow_dask else ''} or another array-API library"
    sparse = " or a scipy.sparse CSR/CSC matrix" if allow_sparse else ""
    return f"an array ({libraries}){sparse}"


def reshape_hint(name, min_ndim):
    """How to reshape the argument ``name`` to the dimensions a check wants."""
    if min_ndim <= 1:
        return f"reshape it, e.g. {name}.reshape(-1)"
    return f"reshape it, e.g. {name}.reshape(n_samples, -1)"


def check_not_factor_pair(X, name, owner, max_ndim):
    """A TypeError if X is a tuple or list of two 2-D arrays that is not one array.

    ``(R, H)`` is easily passed for ``FactoredGradients(R, H)``; as one array it is
    ragged (different widths) or one dimension too many. Two 2-D arrays of one
    shape are a stack of two matrices where the caller accepts stacks.
    """
    if type(X) not in (tuple, list) or len(X) != 2:  # a FactoredGradients is a tuple too
        return
    shapes = [getattr(part, "shape", None) for part in X]
    if any(shape is None or len(shape) != 2 for shape in shapes):
        return
    if tuple(shapes[0]) == tuple(shapes[1]) and (max_ndim is None or max_ndim >= 3):
        return
    raise TypeError(
        f"'{name}' of {owner} is a {type(X).__name__} of two 2-D arrays, of shapes "
        f"{tuple(shapes[0])} and {tuple(shapes[1])}, not an array. If they are the factors "
        f"(residuals, inputs) of last-layer gradients, wrap them as FactoredGradients(R, H) "
        f"(from graft_select.gradients import FactoredGradients); for one matrix of "
        f"gradients, pass that matrix."
    )


def _as_array_like(X, name, owner):
    """Lists and tuples become NumPy arrays; None and ragged lists are named errors."""
    if X is None:
        raise TypeError(f"'{name}' of {owner} must be an array, got None.")
    if isinstance(X, (list, tuple)):
        try:
            return np.asarray(X)
        except ValueError as exc:
            raise ValueError(
                f"'{name}' of {owner} must be a rectangular array, but the nested list has "
                f"rows of different lengths; pad or trim the rows to one length."
            ) from exc
    if isinstance(X, (str, bytes)) or (
        isinstance(X, numbers.Number) and not hasattr(X, "shape")
    ):
        raise TypeError(
            f"'{name}' of {owner} must be an array, got a {type(X).__name__} ({X!r})."
        )
    hint = _container_hint(X, name)
    if hint is not None:
        raise TypeError(
            f"'{name}' of {owner} must be an array-like of shape (n_samples, n_features), "
            f"got an object of type {type(X).__name__}; {hint}."
        )
    return X


def _container_hint(X, name):
    """How to turn a container that is not an array (dict, set, iterator) into one, or None."""
    if hasattr(X, "shape") or hasattr(X, "__array__"):
        return None
    if isinstance(X, collections.abc.Mapping):
        return (f"for a dict of columns pass pandas.DataFrame({name}) or "
                f"np.column_stack(list({name}.values()))")
    if isinstance(X, collections.abc.Iterator):
        return f"an iterator is read only once: pass np.asarray(list({name}))"
    if isinstance(X, collections.abc.Set):
        return f"a set has no row order: pass an array, e.g. np.asarray(sorted({name}))"
    return None


def check_dense_tensor(X, name, owner):
    """Raise a TypeError naming ``name`` if X is a sparse torch tensor (COO, CSR, ...)."""
    layout = sparse_tensor_layout(X)
    if layout is not None:
        raise TypeError(
            f"'{name}' of {owner} is a sparse torch tensor (layout {layout}), which the "
            f"kernels cannot compute with; pass {name}.to_dense() (it stays on its device), "
            f"or a scipy.sparse CSR matrix for host data."
        )


def as_array(X):
    """Lists and tuples become NumPy arrays; anything else is returned as it is.

    For an argument whose namespace is checked afterwards (against the data's).
    """
    if isinstance(X, (list, tuple)):
        return np.asarray(X)
    return X


def check_rows(n, y, owner):
    """Raise a ValueError unless there are 2 rows or more, and y (if given) has n."""
    if n < 2:
        raise ValueError(f"{owner} needs at least 2 rows to select from, got n_samples={n}.")
    rows = None if y is None else n_rows(y, "y")
    if isinstance(rows, numbers.Real) and math.isnan(rows):  # a dask array
        raise ValueError(
            f"'y' of {owner} is a dask array with unknown chunk sizes (NaN in y.chunks, as "
            f"after boolean indexing); call y = y.compute_chunk_sizes() first."
        )
    if y is not None and rows != n:
        raise ValueError(
            f"'y' has {n_rows(y)} rows but the data to select from has {n}; pass one "
            f"target per row of X (or of the StoredGradients view)."
        )


def n_rows(X, name="y"):
    """Number of rows of the array-like X (its length); a TypeError naming ``name`` if none."""
    if hasattr(X, "shape") and len(X.shape):
        return X.shape[0]
    if hasattr(X, "__len__") and not isinstance(X, (str, bytes)) and not hasattr(X, "shape"):
        return len(X)
    if hasattr(X, "__array__") and not hasattr(X, "shape"):  # an object NumPy converts
        shape = np.asarray(X).shape
        if shape:
            return shape[0]
    raise TypeError(
        f"'{name}' must be an array-like with one entry per row of the fitted data, of "
        f"shape (n_samples,) or (n_samples, ...); got {type(X).__name__} ({X!r})."
    )


def check_real_host(X, name, owner):
    """Reject complex or non-numeric host data (NumPy, lists, pandas, scipy.sparse), naming it.

    For the host inputs an estimator passes on to scikit-learn's ``validate_data``,
    whose own messages ("Complex data not supported", "could not convert string to
    float") do not say which argument was wrong.
    """
    if hasattr(X, "dtypes") and not hasattr(X, "dtype"):  # a DataFrame
        dtypes = list(X.dtypes)
        kinds = [getattr(d, "kind", "O") for d in dtypes]
        convert = X.to_numpy
    else:
        X = _as_array_like(X, name, owner) if isinstance(X, (list, tuple)) else X
        dtypes = [getattr(X, "dtype", None)]
        kinds = [getattr(dtypes[0], "kind", "f")]
        convert = X.astype if hasattr(X, "astype") else None
    _check_no_dates(X, kinds, name, owner)
    if "c" in kinds:  # a ValueError, as scikit-learn's estimator checks expect
        raise complex_data_error(name, owner, dtypes[kinds.index("c")])
    if set(kinds) <= set("biuf"):
        return
    try:  # object columns of numbers are fine (scikit-learn converts them)
        convert(dtype=np.float64) if hasattr(X, "dtypes") else convert(np.float64)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"'{name}' of {owner} must hold real numbers, got non-numeric values ({exc}); "
            f"encode text columns as numbers first."
        ) from exc


def complex_data_error(name, owner, dtype):
    """The ValueError for complex ``name`` (scikit-learn's class and opening words).

    Every array check raises it, whatever the array's library, so that complex
    input is one exception class everywhere.
    """
    return ValueError(
        f"Complex data not supported: '{name}' of {owner} must hold real numbers, got "
        f"dtype {dtype}; convert it first, e.g. keep the real part ({name}.real) or put "
        f"the real and imaginary parts side by side as columns."
    )


def _check_no_dates(X, kinds, name, owner):
    """Raise a TypeError naming the datetime or timedelta columns of host data."""
    if not set(kinds) & set("Mm"):
        return
    if hasattr(X, "columns"):
        columns = [c for c, k in zip(X.columns, kinds) if k in "Mm"]
        found = f"datetime or timedelta columns {', '.join(repr(c) for c in columns)}"
        fix = (f"convert them to numbers first, e.g. {name}[{columns[0]!r}] = "
               f"{name}[{columns[0]!r}].astype('int64') (nanoseconds), or drop them")
    else:
        found = f"datetime or timedelta values (dtype {X.dtype})"
        fix = f"convert them to numbers first, e.g. {name}.astype('int64')"
    raise TypeError(f"'{name}' of {owner} must hold real numbers, got {found}; {fix}.")


def check_finite(X, name, owner, xp, *, total=None):
    """Raise a ValueError naming the rows of a dense X that hold NaN or infinity.

    ``total``, if given, is a reduction of X already computed by the caller that is
    NaN or infinite whenever X holds NaN or infinity (for example the sum of its
    squared row norms): when ``total`` is finite, X is not read again.
    """
    if total is not None and bool(xp.isfinite(total)):
        return
    if all_finite(X, xp):
        return
    host = to_numpy(X)
    if host.ndim == 1:
        positions = np.flatnonzero(~np.isfinite(host))
        raise ValueError(
            f"'{name}' of {owner} contains NaN or infinity in {positions.size} entries "
            f"(first: {int(positions[0])}); remove or replace them."
        )
    bad = ~np.all(np.isfinite(host), axis=-1)
    rows = np.flatnonzero(bad.reshape(-1))
    first = np.unravel_index(rows[0], bad.shape)
    first = int(first[0]) if len(first) == 1 else tuple(int(i) for i in first)
    raise ValueError(
        f"'{name}' of {owner} contains NaN or infinity in {rows.size} rows "
        f"(first: {first}); remove or impute them before selection."
    )


def all_finite(X, xp):
    """True if X holds no NaN or infinity.

    The sum is finite exactly when every entry is, unless finite entries overflow
    it; one reduction is much cheaper than a boolean array of X's size, and the
    exact test runs only when the sum is not finite.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is the expected case
        total = xp.sum(X)
    if bool(xp.isfinite(total)):
        return True
    return bool(xp.all(xp.isfinite(X)))


def float_info(dtype, xp):
    """``numpy.finfo`` of the float dtype the kernels compute in: float32 or float64.

    The one place that maps an array's dtype (of any namespace, or a sparse
    matrix's NumPy dtype) to its machine epsilon and exponent range.
    """
    return np.finfo(host_float_dtype(dtype, xp))


_HALF = ("float16", "bfloat16")


def half_dtype(X):
    """X's dtype if it is half precision (float16, bfloat16), else None.

    The kernels compute half precision in float32 (see :func:`check_array`); a
    function that returns floating arrays casts them back to this dtype.
    """
    dtype = getattr(X, "dtype", None)
    return dtype if str(dtype).rsplit(".", 1)[-1] in _HALF else None


def _as_float(X, xp, name, owner):
    dtype = X.dtype
    if half_dtype(X) is not None:
        return xp.astype(X, xp.float32)
    if xp.isdtype(dtype, "real floating"):
        return X
    if xp.isdtype(dtype, ("integral", "bool")):
        return xp.astype(X, xp.float64)
    if xp.isdtype(dtype, "complex floating"):
        raise complex_data_error(name, owner, dtype)
    raise TypeError(
        f"'{name}' of {owner} must hold real numbers, got dtype {dtype}; convert it, "
        f"e.g. to float64."
    )


def _check_sparse(X, name, owner):
    if X.ndim != 2:
        raise ValueError(f"'{name}' of {owner} must be 2-D, got shape {X.shape}.")
    if X.format not in ("csr", "csc"):
        raise TypeError(
            f"'{name}' of {owner} must be a CSR or CSC sparse matrix, got format "
            f"{X.format!r}; convert it with {name}.tocsr()."
        )
    if 0 in X.shape:
        raise ValueError(f"'{name}' of {owner} is empty (shape {X.shape}).")
    if not np.issubdtype(X.dtype, np.floating):
        if np.iscomplexobj(X.data):
            raise complex_data_error(name, owner, X.dtype)
        X = X.astype(np.float64)
    if not np.all(np.isfinite(X.data)):
        coo = X.tocoo()
        rows = np.unique(coo.row[~np.isfinite(coo.data)])
        raise ValueError(
            f"'{name}' of {owner} contains NaN or infinity in {rows.size} rows "
            f"(first: {int(rows[0])}); remove or impute them before selection."
        )
    return X

