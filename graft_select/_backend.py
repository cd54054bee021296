"""The one module that knows array libraries by name.

Everything else in graft_select is written against an array namespace ``xp``
(as returned by :func:`get_namespace`). Operations the array API standard
lacks are delegated here, with a portable fallback written in the standard.
Neither torch nor cupy is imported by this module: they are recognised through
array-api-compat, which only inspects objects that already exist.
"""

import contextlib
import functools
import inspect
import os
import sys
import threading

import array_api_compat
import numpy as np

__all__ = [
    "as_contiguous",
    "blas_at_one_thread",
    "cholesky_checked",
    "detached",
    "device_scope",
    "from_numpy",
    "get_namespace",
    "host_float_dtype",
    "is_cupy",
    "is_dask_array",
    "is_meta",
    "is_numpy",
    "is_sparse",
    "is_torch",
    "limit_worker_thread",
    "load_namespaces",
    "lu_pivot_rows",
    "on_host",
    "on_input_device",
    "scale_by_power_of_two",
    "single_threaded",
    "single_threaded_blas",
    "solve_triangular",
    "sparse_tensor_layout",
    "thread_pools",
    "to_numpy",
    "torch_cpu_view",
    "usable_cores",
]


def is_sparse(X):
    """Return True for a scipy.sparse matrix or array (without importing scipy eagerly)."""
    module = type(X).__module__
    if not module.startswith("scipy.sparse"):
        return False
    import scipy.sparse

    return scipy.sparse.issparse(X)


def is_dask_array(X):
    """Return True for a ``dask.array.Array`` (recognised by its type, without importing dask)."""
    return type(X).__module__.startswith("dask.") and type(X).__name__ == "Array"


def get_namespace(*arrays):
    """Return ``(xp, device)`` shared by all arrays (``None`` entries are skipped).

    Raises
    ------
    TypeError
        If the arrays come from different libraries or live on different devices;
        the message names both.
    """
    arrays = [a for a in arrays if a is not None]
    if not arrays:
        raise TypeError("get_namespace needs at least one array.")
    names, devices = [], []
    for a in arrays:
        if is_sparse(a):
            # scipy.sparse data lives in NumPy on the host; use the same namespace
            # object as a dense NumPy array so the two can be mixed
            xp = array_api_compat.array_namespace(np.empty(0))
            names.append((xp.__name__, xp))
            devices.append("cpu")
            continue
        try:
            xp = array_api_compat.array_namespace(a)
        except TypeError as exc:
            raise TypeError(
                f"Expected an array (NumPy, torch, CuPy or another array-API array), "
                f"got an object of type {type(a).__name__}."
            ) from exc
        names.append((xp.__name__, xp))
        devices.append(array_api_compat.device(a))
    first_name, xp = names[0]
    for (name, _), arr in zip(names[1:], arrays[1:]):
        if name != first_name:
            raise TypeError(
                f"All arrays must come from one array library, got {first_name} "
                f"({type(arrays[0]).__name__}) and {name} ({type(arr).__name__}); "
                f"convert them to the same library first."
            )
    for dev in devices[1:]:
        if dev != devices[0]:
            raise TypeError(
                f"All arrays must be on one device, got {devices[0]} and {dev}; "
                f"move them to the same device first."
            )
    return xp, devices[0]


def load_namespaces(*arrays):
    """Load array-api-compat's namespaces of ``arrays`` now (each loads on first use).

    The first use of a library's namespace imports its wrapper modules (about
    10 ms for NumPy and torch together); a caller that will need them inside a
    timed step (a sampler's first refit) loads them when it is built.
    """
    for a in arrays:
        array_api_compat.array_namespace(a)


def host_float_dtype(dtype, xp):
    """The NumPy dtype of the float dtype the kernels compute in: float32 or float64.

    ``dtype`` is a dtype of namespace ``xp`` (or a sparse matrix's NumPy dtype);
    anything but float32 maps to float64.
    """
    return np.float32 if dtype == xp.float32 else np.float64


def is_meta(x):
    """True for a torch tensor on the meta device (a shape without values)."""
    return array_api_compat.is_torch_array(x) and x.device.type == "meta"


def sparse_tensor_layout(x):
    """The layout of a sparse torch tensor (``"torch.sparse_coo"``, ...), else None.

    The kernels compute on dense (strided) tensors only; scipy.sparse matrices are
    recognised by :func:`is_sparse`.
    """
    if not array_api_compat.is_torch_array(x):
        return None
    layout = str(x.layout)
    return None if layout == "torch.strided" else layout


def is_numpy(xp):
    """True if ``xp`` is NumPy (plain or array-api-compat's wrapper)."""
    return array_api_compat.is_numpy_namespace(xp)


def is_torch(xp):
    """True if ``xp`` is torch (array-api-compat's wrapper)."""
    return array_api_compat.is_torch_namespace(xp)


def is_cupy(xp):
    """True if ``xp`` is CuPy (array-api-compat's wrapper)."""
    return array_api_compat.is_cupy_namespace(xp)


def as_contiguous(x):
    """``x`` in C order (a copy only if it is not): NumPy, CuPy and torch; others as is.

    The greedy kernels gather rows of a reshaped stack at every step; on a strided
    view (a slice or a flip of a factor) each reshape would copy the whole stack.
    """
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x)
    if array_api_compat.is_cupy_array(x):
        import cupy

        return cupy.ascontiguousarray(x)
    if array_api_compat.is_torch_array(x):
        return x.contiguous()
    return x


def detached(x, xp):
    """The values of ``x``: a torch tensor that requires grad is detached, others as they are."""
    if is_torch(xp) and x.requires_grad:
        return x.detach()
    return x


def torch_cpu_view(x):
    """A NumPy view (no copy) of a CPU torch tensor, else None.

    Lets host-side kernels whose cost is many small steps run through NumPy, whose
    per-operation overhead is several times lower than torch's on the CPU.
    """
    if array_api_compat.is_torch_array(x) and x.device.type == "cpu":
        import torch

        if x.dtype in (torch.float16, torch.bfloat16):
            # NumPy has no bfloat16 and its float16 LAPACK support is missing: the
            # kernels compute half precision in float32 (a copy, documented)
            return x.detach().to(torch.float32).numpy()
        return x.detach().numpy()
    return None


def on_host(x):
    """True if the array ``x`` lives in host memory (NumPy, torch on the CPU, ...).

    CuPy arrays and torch tensors on any other device are not on the host; an
    array of another library counts as host memory unless its device says "cuda"
    or "gpu".
    """
    if isinstance(x, np.ndarray) or is_sparse(x):
        return True
    if array_api_compat.is_cupy_array(x):
        return False
    if array_api_compat.is_torch_array(x):
        return x.device.type == "cpu"
    device = str(array_api_compat.device(x)).lower()
    return "cuda" not in device and "gpu" not in device


def scale_by_power_of_two(x, exponent):
    """``x * 2**exponent`` for an integer ``exponent``, exact and without overflowing the factor.

    ``2**exponent`` itself may not be representable in ``x``'s dtype (2**132 in
    float32, 2**1030 in float64), so the factor is applied in steps that are.
    NumPy arrays use ``numpy.ldexp`` (one exact pass).
    """
    exponent = int(exponent)
    if exponent == 0:
        return x
    if isinstance(x, np.ndarray):
        return np.ldexp(x, np.int32(exponent)).astype(x.dtype, copy=False)
    step = 60 if exponent > 0 else -60
    while exponent:
        part = step if abs(exponent) > abs(step) else exponent
        x = x * (2.0 ** part)
        exponent -= part
    return x


@contextlib.contextmanager
def single_threaded():
    """Every native thread pool of the calling thread at one thread, for the block.

    A refit runs many small products and factorisations (chunks of a few hundred
    rows). With NumPy's OpenBLAS and torch's OpenMP pools both at their default
    size, the idle pool's threads spin on the cores the other pool needs: on
    2 cores a 300,000-row refit took 3x longer (and 20x longer on a loaded
    machine) than with every pool at one thread (benchmarks/bench_threads.py).
    OpenBLAS's limit is process-wide; OpenMP's (torch's intra-op pool) applies to
    the calling thread, so a refit in a background thread leaves the training
    thread's torch pool as it was. The previous limits come back on exit.

    Blocks may overlap across threads (a background refit and the training
    thread's own refit or selection): the process-wide BLAS limits are set by
    the first block to enter and restored by the last to leave, so no
    interleaving leaves them at one thread (each block saving and restoring its
    own would let the later restore write the earlier block's limit back).
    """
    release = single_threaded_blas()
    try:
        _settle_torch_threads()
        with thread_pools().limit(limits=1, user_api="openmp"):  # this thread's
            yield
    finally:
        release()


def limit_worker_thread():
    """This thread's OpenMP pool at one thread, for good: a worker thread's initializer.

    For the threads of a pool that runs a refit's groups side by side (the
    process-wide BLAS limit is held by the thread that started them, see
    `single_threaded`); the threads end with their pool, so nothing is restored.
    """
    _settle_torch_threads()
    thread_pools().limit(limits=1, user_api="openmp")


def _settle_torch_threads():
    """Run torch's once-per-thread thread setup now, if torch is loaded.

    The first torch operation of a thread sets its OpenMP pool to the size
    last given to ``torch.set_num_threads`` (anywhere in the process), which
    would undo a one-thread limit set before it: a background refit then ran
    torch's QR on 2 threads beside a training step on 2 threads.
    ``torch.get_num_threads`` runs that setup; it does not import torch.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.get_num_threads()


def thread_pools():
    """threadpoolctl's controller of the native thread pools loaded in this process.

    Building one scans the process's shared libraries (``threadpool_limits`` builds
    one per call): 1.5 ms each, seven times per refit, a fifth of a refit of 20,000
    samples. threadpoolctl 3.8's ``get_cached_controller`` keeps one (and builds it
    again after imports, or a FlexiBLAS backend switch); older versions get the
    same cache here.
    """
    import threadpoolctl  # installed with scikit-learn

    cached = getattr(threadpoolctl, "get_cached_controller", None)
    if cached is not None:
        return cached()
    with _BLAS_LOCK:
        if _POOLS["modules"] != len(sys.modules):
            _POOLS["controller"] = threadpoolctl.ThreadpoolController()
            _POOLS["modules"] = len(sys.modules)
        return _POOLS["controller"]


def blas_at_one_thread():
    """True if every BLAS pool of the process runs at one thread now."""
    return all(info["num_threads"] == 1
               for info in thread_pools().select(user_api="blas").info())


def usable_cores():
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def single_threaded_blas():
    """BLAS pools at one thread until the returned function is called; process-wide.

    threadpoolctl lets only one thread at a time (the first to set a limit, the
    main thread in practice) change OpenBLAS's process-wide limits; others are
    ignored silently. A background refit therefore has its BLAS limit set here
    by the thread that starts it, and released there after the refit has
    ended. Overlapping holds share one limiter: the first sets it, the last
    restores the limits it found. The limiter is entered as a context manager,
    so that its release also gives up control of OpenBLAS (threadpoolctl 3.8):
    a later hold from another thread (a training loop run in a thread) can then
    set the limit.
    """
    with _BLAS_LOCK:
        if _BLAS_HOLD["depth"] == 0:
            hold = contextlib.ExitStack()
            hold.enter_context(thread_pools().limit(limits=1, user_api="blas"))
            _BLAS_HOLD["limiter"] = hold
        _BLAS_HOLD["depth"] += 1
    released = []

    def release():
        with _BLAS_LOCK:
            if released:
                return
            released.append(True)
            _BLAS_HOLD["depth"] -= 1
            if _BLAS_HOLD["depth"] == 0:
                _BLAS_HOLD.pop("limiter").close()

    return release


_BLAS_LOCK = threading.RLock()  # a release may run from a finaliser inside a hold
_BLAS_HOLD = {"depth": 0}  # single_threaded holds open in any thread, and their limiter
_POOLS = {"modules": None, "controller": None}  # thread_pools' controller, sys.modules' size


def device_scope(x):
    """A context under which ``x``'s library creates new arrays on ``x``'s device.

    CuPy ignores ``device=`` in its creation functions (``cupy.zeros(...,
    device=d)`` lands on the current device), so a kernel given an array on
    ``cuda:1`` would build its helpers on ``cuda:0``; entering
    ``cupy.cuda.Device(x.device.id)`` makes ``x``'s device current. Other
    libraries honour ``device=``: a no-op context. For a tuple (a
    FactoredGradients, a pair of factors) the scope is that of its first element;
    an empty tuple, like any non-array, gets the no-op context (its checks then
    raise the named error).
    """
    if isinstance(x, tuple):
        x = x[0] if x else None
    if array_api_compat.is_cupy_array(x):
        import cupy

        return cupy.cuda.Device(x.device.id)
    return contextlib.nullcontext()


def on_input_device(function):
    """Decorator: run ``function(X, ...)`` under :func:`device_scope` of ``X``.

    ``X`` is the first argument, passed by position or by its name. For a tuple
    ``X`` (a FactoredGradients) the scope is that of its first element. A method
    can be decorated too: ``X`` is then ``self``.
    """
    first = next(iter(inspect.signature(function).parameters))

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with device_scope(args[0] if args else kwargs.get(first)):
            return function(*args, **kwargs)

    return wrapper


def to_numpy(x):
    """Copy an array of any supported library to a NumPy array on the host.

    Only for small results (indices, per-chunk summaries) or explicit user requests.
    """
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError):
            pass
    return np.asarray(x)


def from_numpy(a, xp, device):
    """Create an array of namespace ``xp`` on ``device`` from the NumPy array ``a``."""
    if is_numpy(xp):
        return a
    if is_torch(xp):
        import torch

        return torch.as_tensor(a, device=device)
    if is_cupy(xp):
        import cupy

        with cupy.cuda.Device(device.id if hasattr(device, "id") else device):
            return cupy.asarray(a)
    return xp.asarray(a, device=device)


# --------------------------------------------------------------------- Cholesky


def cholesky_checked(A, xp):
    """Cholesky factors of a stack A (m, k, k) and which of them succeeded.

    Returns ``(L, ok)``: ``L`` (m, k, k) and ``ok`` (m,), a boolean array in A's
    namespace and device, False where the matrix is not (numerically) positive
    definite; the caller must not use ``L[i]`` where ``ok[i]`` is False. No
    backend raises for such a matrix here, and no other error is caught (a
    device out-of-memory error propagates):

    - torch: ``torch.linalg.cholesky_ex`` reports failures in ``info``, without
      a host synchronisation;
    - CuPy: ``cupy.linalg.cholesky`` does not raise under CuPy's default error
      state (the factor holds NaN instead, or a factorisation that stopped early
      leaves finite values with a zero or negative pivot), so the result is
      checked: every entry finite and every diagonal entry positive;
    - NumPy and others: ``numpy.linalg.LinAlgError`` on the stack, then the
      matrices are factored one by one to find the failures.
    """
    if is_torch(xp):
        import torch

        L, info = torch.linalg.cholesky_ex(A)
        return L, info == 0
    if is_cupy(xp):
        L = xp.linalg.cholesky(A)
        finite = xp.all(xp.isfinite(xp.reshape(L, (L.shape[0], -1))), axis=-1)
        return L, xp.logical_and(finite, xp.all(xp.linalg.diagonal(L) > 0, axis=-1))
    try:
        L = xp.linalg.cholesky(A)
        return L, xp.ones(A.shape[0], dtype=xp.bool, device=_device_of(A))
    except np.linalg.LinAlgError:
        pass
    factors, ok = [], []
    for i in range(A.shape[0]):
        try:
            factors.append(xp.linalg.cholesky(A[i, ...]))
            ok.append(True)
        except np.linalg.LinAlgError:
            factors.append(xp.zeros_like(A[i, ...]))
            ok.append(False)
    return xp.stack(factors), xp.asarray(ok, dtype=xp.bool, device=_device_of(A))


def solve_triangular(L, B, *, lower):
    """Solve ``L X = B`` for a stack of triangular L (m, k, k) and B (m, k, j).

    torch uses its batched triangular solver; other namespaces a general solve
    (the same result, at the cost of an LU of each small matrix).
    """
    xp, _ = get_namespace(L, B)
    if is_torch(xp):
        import torch

        return torch.linalg.solve_triangular(L, B, upper=not lower)
    return xp.linalg.solve(L, B)


# --------------------------------------------------------------------------- LU


def lu_pivot_rows(A):
    """Row pivots of LU with partial pivoting for a stack ``A`` of shape (m, n, r).

    Returns ``(rows, pivots)``: ``rows`` of shape (m, r), the row chosen at each
    elimination step (int64, in A's namespace and device), and ``pivots`` of shape
    (m, r), the absolute value of each pivot (the diagonal of U), which shows where
    the matrix ran out of rank. Delegates to LAPACK getrf through scipy (NumPy) or
    torch.linalg.lu_factor_ex (torch, batched, failures in ``info``); any other
    namespace, CuPy included, uses a portable elimination written in the array API,
    batched over the stack (cupyx.scipy.linalg.lu_factor works one matrix at a
    time and reads its status from the device twice per call).
    """
    xp, _ = get_namespace(A)
    if is_numpy(xp):
        import scipy.linalg

        m, n, r = A.shape
        swaps = np.empty((m, r), dtype=np.int64)
        pivots = np.empty((m, r), dtype=A.dtype)
        # LAPACK getrf itself (as scipy.linalg.lu_factor calls it, without its per-call
        # checks): a zero pivot (info > 0) is expected for rank-deficient A and handled
        # by the caller through the returned pivot magnitudes
        (getrf,) = scipy.linalg.get_lapack_funcs(("getrf",), (A,))
        for b in range(m):
            lu, piv, info = getrf(A[b])
            if info < 0:  # pragma: no cover - an invalid argument is a bug here
                raise RuntimeError(f"LAPACK getrf: illegal value in argument {-info}.")
            swaps[b] = piv  # 0-based, as in scipy.linalg.lu_factor
            pivots[b] = np.abs(np.diagonal(lu))
        return _swaps_to_rows_host(swaps, n, xp), pivots
    if is_torch(xp):
        import torch

        # lu_factor_ex: a zero pivot (rank-deficient A) is reported in info, not raised
        lu, piv, _ = torch.linalg.lu_factor_ex(A)
        rows = _swaps_to_rows(piv.to(torch.int64) - 1, A.shape[-2], xp)
        return rows, torch.abs(torch.diagonal(lu, dim1=-2, dim2=-1))
    return _lu_pivot_rows_portable(A, xp)


def _swaps_to_rows(piv, n, xp):
    """Turn LAPACK-style swap sequences (m, r), 0-based, into the chosen rows (m, r)."""
    m, r = piv.shape
    dev = _device_of(piv)
    batch = xp.arange(m, device=dev)
    perm = xp.asarray(xp.broadcast_to(xp.arange(n, dtype=xp.int64, device=dev), (m, n)), copy=True)
    for j in range(r):
        target = piv[:, j]
        here = xp.asarray(perm[:, j], copy=True)
        there = perm[batch, target]
        perm[:, j] = there
        perm[batch, target] = here
    return perm[:, :r]


def _swaps_to_rows_host(swaps, n, xp):
    """`_swaps_to_rows` for host (NumPy) swaps: plain Python for a few matrices.

    Only the r positions a swap touches matter, so a dict replaces the length-n
    permutation; for larger stacks one vectorised pass over the stack is cheaper.
    """
    m, r = swaps.shape
    if m > 8:
        return _swaps_to_rows(swaps, n, xp)
    rows = []
    for sequence in swaps.tolist():
        moved = {}
        for j, p in enumerate(sequence):
            here, there = moved.get(j, j), moved.get(p, p)
            moved[j], moved[p] = there, here
        rows.append([moved[j] for j in range(r)])
    return np.asarray(rows, dtype=np.int64).reshape(m, r)


def _device_of(x):
    return None if isinstance(x, np.ndarray) else array_api_compat.device(x)


def _lu_pivot_rows_portable(A, xp):
    """Gaussian elimination with partial pivoting in array-API operations only."""
    m, n, r = A.shape
    dev = array_api_compat.device(A)
    col_ids = xp.arange(n, device=dev)
    R = A
    taken = xp.zeros((m, n), dtype=xp.bool, device=dev)
    rows, pivots = [], []
    flat_offsets = xp.arange(m, device=dev) * n
    for j in range(r):
        column = xp.abs(R[:, :, j])
        column = xp.where(taken, -xp.inf, column)
        p = xp.argmax(column, axis=1)
        pivot_row = xp.take(xp.reshape(R, (m * n, r)), flat_offsets + p, axis=0)  # (m, r)
        pivot = pivot_row[:, j]
        pivots.append(xp.abs(pivot))
        rows.append(p)
        safe = xp.where(pivot == 0, xp.ones_like(pivot), pivot)
        factor = R[:, :, j] / safe[:, None]
        factor = xp.where(xp.abs(pivot)[:, None] == 0, xp.zeros_like(factor), factor)
        onehot = col_ids[None, :] == p[:, None]
        taken = xp.logical_or(taken, onehot)
        factor = xp.where(taken, xp.zeros_like(factor), factor)
        R = R - factor[:, :, None] * pivot_row[:, None, :]
    return xp.astype(xp.stack(rows, axis=1), xp.int64), xp.stack(pivots, axis=1)
