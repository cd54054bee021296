"""The feedback-store source of a selection: factored gradients read through a row view.

A sampler's refit selects on the factored last-layer gradients it recorded: a
store of residuals (n_store, C) and embeddings (n_store, d), read through a row
permutation. `StoredGradients` is that view (public: it is what
``GraftSelector.fit(None, gradients=...)`` takes) and `StoreSource` the source
the estimators' recipe reads. Two passes over the store, each one group of
chunks (about ``group_rows`` rows) at a time, so neither the store nor its
gradients are ever copied whole:

1. ``orders_and_errors``: gather -> Gram matrices -> factor -> MaxVol order ->
   nested errors (the size criterion), per group; for the MaxVol-or-uniform
   check also a uniform order per chunk (a random permutation's head) and its
   nested errors, from the same Gram matrices;
2. ``subset_errors``: the chosen subsets' errors and least-squares weights.

Between the two, the estimator sizes the subsets (over all chunks) and picks
them (`_selection`); ``picked_errors`` runs pass 2 only when its result is
needed: for weights, or for subsets that are prefixes of neither order.
"""

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import threading
import typing

import numpy as np

from ._backend import (
    blas_at_one_thread,
    from_numpy,
    get_namespace,
    limit_worker_thread,
    on_host,
    single_threaded,
    to_numpy,
    torch_cpu_view,
)
from ._criterion import nested_errors, subset_weights
from ._gram import chunk_grams, gram_eigenvectors, gram_summaries, group_chunks
from ._ops import take_rows
from ._orders import maxvol_order
from ._selection import rank, stack_groups
from ._validation import complex_data_error

# Rows of the store gathered at once: with 512-d float32 embeddings and chunks of
# 256, one group holds 16 MiB of rows, 8 MiB of Gram matrices and a 2.5 MiB factor,
# whatever the size of the store. At 300,000 rows 8,192 rows per group refit 5-8%
# faster than 16,384 (the factor fits the greedy's cache-sized group, so each group
# runs the greedy steps once).
GROUP_ROWS = 1 << 13


@dataclasses.dataclass(frozen=True)
class StoredGradients:
    """Last-layer gradient proxies of a table of samples, read through a row view.

    Sample ``i`` of the view is row ``rows[i]`` of the table, and its gradient
    proxy is ``residuals[rows[i]]`` outer ``[embeddings[rows[i]], 1]`` (see
    :func:`~graft_select.last_layer_gradients`). :class:`~graft_select.GraftSelector`
    selects on them with ``fit(None, gradients=StoredGradients(...))``, reading
    one group of chunks (about 8,192 rows) at a time: the table is never copied
    and the gradients are never formed, so a sampler's feedback store of any
    size costs a bounded amount of extra memory. Half-precision tables are
    computed in float32, one group at a time.

    Parameters
    ----------
    residuals : array of shape (n_table, C)
        ``softmax(logits) - onehot(targets)`` per table row (or ``yhat - y``
        for a squared error), float.
    embeddings : array of shape (n_table, d) or None, default=None
        The penultimate-layer embeddings per table row; None for the gradients
        of the bias alone.
    rows : integer array of shape (n_samples,) or None, default=None
        The table rows to select from, in selection order (the chunks are
        consecutive runs of it); None for every row in table order. On the host
        or on the table's device.

    See Also
    --------
    FactoredGradients : The same proxies as two in-memory factors.

    Notes
    -----
    A view's low-rank factor of each chunk is always one step of a randomized
    range finder on the chunk's Gram matrix (a product with a Gaussian matrix
    and a QR, without oversampling or power iterations; the exact eigenvectors
    only when the rank reaches the chunk's size): the selector's
    ``svd_method`` does not apply to a view. The same proxies given as a
    :class:`~graft_select.FactoredGradients` to ``fit(X, gradients=...)``
    are factored as ``svd_method`` says (the Gram matrix's eigenvectors, or
    the range finder with oversampling and power iterations), a closer
    approximation of the dominant subspace. So the two select different rows,
    and the view's ``gradient_error_`` can be larger (by 8% on average over
    the chunks in one comparison, with about a quarter of the rows in common).

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select import GraftSelector, StoredGradients
    >>> rng = np.random.default_rng(0)
    >>> residuals, embeddings = rng.standard_normal((500, 3)), rng.standard_normal((500, 8))
    >>> view = StoredGradients(residuals, embeddings, rows=rng.permutation(500)[:300])
    >>> selector = GraftSelector(0.2, chunk_size=100, random_state=0)
    >>> selector.fit(None, gradients=view).sample_indices_.shape
    (60,)
    """

    residuals: typing.Any
    embeddings: typing.Any = None
    rows: typing.Any = None


class StoreSource:
    """The selection source of a `StoredGradients` view (checked here)."""

    def __init__(self, stored, owner, uniform_orders=False):
        residuals, embeddings = stored.residuals, stored.embeddings
        _check_table(residuals, embeddings, owner)
        self.xp, self._device = get_namespace(residuals, embeddings)
        n_table = int(residuals.shape[0])
        rows = np.arange(n_table) if stored.rows is None else stored.rows
        host_rows = _check_view_rows(rows, n_table, owner)
        rows = from_numpy(host_rows, self.xp, self._device)
        self._store = (residuals, embeddings, rows, self.xp)
        self._group_rows = GROUP_ROWS  # read at each fit (tests shrink it)
        self._owner = owner
        self._first_pass = self._groups = None
        self._want_uniform = bool(uniform_orders)
        d = 0 if embeddings is None else int(embeddings.shape[1])
        self.n_samples = int(host_rows.shape[0])
        self.n_features = d + 1
        self.with_gradients = True

    def orders(self, params, chunks, k_hi, rng):
        """Pass 1 over the store: per chunk its MaxVol order and its prefixes' errors.

        Both passes run with every native thread pool at one thread
        (`_backend.single_threaded`), whatever the caller's settings: they are
        streams of small products and factorisations (a group of chunks at a
        time), which pools at their default size slow down (a 300,000-row
        store on 2 cores: 9.9 s at the default settings, 4.8 s at one thread;
        benchmarks/bench_threads.py). The caller's limits come back on return.
        """
        with single_threaded():
            return self._orders(params, chunks, k_hi, rng)

    @property
    def uniform_orders(self):
        """Per chunk a uniform order (host int64) after `orders` when asked for, else None."""
        drawn = None if self._first_pass is None else self._first_pass.uniform
        return None if drawn is None else drawn[0]

    def _orders(self, params, chunks, k_hi, rng):
        width = _gradient_width(*self._store[:2])  # of one flattened gradient
        self._groups = groups_of(stack_groups(chunks), chunks, self._group_rows)
        self._first_pass = orders_and_errors(
            self._store, chunks, self._groups, k_hi,
            rank_of=lambda size, group_hi: rank(params, size, width, group_hi),
            order_of=lambda U, group_hi, child: maxvol_order(params, U, group_hi, child,
                                                              with_tail=True),
            rng=rng, owner=self._owner, uniform=self._want_uniform)
        return self._first_pass[:2]

    def picked_errors(self, chunks, local, with_weights):
        """Per chunk the error of its subset, and the weights (pass 2 only when needed)."""
        with single_threaded():
            return picked_errors(self._store, chunks, self._groups, local, self._first_pass,
                                 with_weights)

    def check_errors(self, chunks, local, uniform):
        """Per chunk the errors of MaxVol's subset and of the uniform one, no weights.

        Each from the nested errors of pass 1 where every chunk's subset is a
        prefix of its order (MaxVol's with ``uniform_share=0``; the uniform
        orders' where their groups had no dependent row), else from pass 2.
        The check's verdict then does not depend on whether weights are
        computed afterwards.
        """
        return (self.picked_errors(chunks, local, False)[0],
                self.picked_errors(chunks, uniform, False)[0])

    def output(self, values):
        """A host array of results in the namespace and on the device of the store."""
        return from_numpy(values, self.xp, self._device)


def _check_table(residuals, embeddings, owner):
    """Raise a named error unless the table's factors are 2-D, real and row-aligned."""
    for name, factor in (("residuals", residuals), ("embeddings", embeddings)):
        if factor is None and name == "embeddings":
            continue
        shape = getattr(factor, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(
                f"'gradients.{name}' of {owner} must be a 2-D array (one row per table "
                f"row), got {type(factor).__name__} of shape {shape}.")
        xp, _ = get_namespace(factor)
        if xp.isdtype(factor.dtype, "complex floating"):
            raise complex_data_error(f"gradients.{name}", owner, factor.dtype)
        if not xp.isdtype(factor.dtype, "real floating"):
            raise TypeError(
                f"'gradients.{name}' of {owner} must hold real floats, got dtype "
                f"{factor.dtype}; convert it, e.g. to float32.")
    if embeddings is not None and embeddings.shape[0] != residuals.shape[0]:
        raise ValueError(
            f"'gradients.embeddings' of {owner} has {embeddings.shape[0]} rows but "
            f"'gradients.residuals' has {residuals.shape[0]}; pass one row per table row.")


def _check_view_rows(rows, n_table, owner):
    """The view's rows as host int64, checked against the table (a named error otherwise)."""
    host = np.asarray(to_numpy(rows))
    if host.ndim != 1 or host.dtype.kind not in "iu":
        raise TypeError(
            f"'gradients.rows' of {owner} must be a 1-D array of integer table rows, got "
            f"shape {host.shape} and dtype {host.dtype}.")
    host = host.astype(np.int64, copy=False)
    if host.shape[0] < 2:
        raise ValueError(
            f"{owner} needs at least 2 rows to select from, got n_samples={host.shape[0]}.")
    low, high = int(host.min()), int(host.max())
    if low < 0 or high >= n_table:
        raise ValueError(
            f"'gradients.rows' of {owner} must lie in [0, {n_table}) (rows of the table), "
            f"got values in [{low}, {high}].")
    return host


_WORKERS = contextvars.ContextVar("graft_select_refit_workers", default=1)

# MaxVol's greedy steps are a Python loop of small NumPy calls, which hold the GIL
# for most of their time: two groups' loops side by side hand the GIL back and forth
# at every call. One loop at a time, while the other threads run their GIL-free
# products and factorisations, took a refit at 300,000 x 512 on 2 threads from 8.7x
# to 8.4x a pass over the store (benchmarks/RESULTS.md). The picks do not change.
_GREEDY_LOCK = threading.Lock()


@contextlib.contextmanager
def refit_workers(n):
    """Run the store's groups on ``n`` threads side by side in this context (default 1).

    Each thread runs its native pools at one thread (`_backend.limit_worker_thread`;
    the caller holds BLAS at one thread, see `StoreSource.orders`), so ``n``
    threads use ``n`` cores. Every group's seed is drawn before any group runs and
    its kernels run single-threaded, so the picks are the same bit for bit for
    any ``n``. Host stores only: a store on an accelerator runs its groups one
    after another whatever ``n``. The context is this thread's: a background
    refit thread starts at 1.
    """
    token = _WORKERS.set(max(1, int(n)))
    try:
        yield
    finally:
        _WORKERS.reset(token)


def map_groups(function, items, host):
    """``[function(*item) for item in items]``, on the context's `refit_workers` threads.

    Results come in the order of ``items``; the first item (in that order) that
    raises has its error raised here, and the items not yet started are dropped.
    At most a third of the groups run at once: a group's working set (its rows,
    Gram matrices and factor) is about 2.3 times its rows' share of the store
    (39 MiB for 8,192 rows of 522 float32 columns), so the refit's peak stays
    within the store's size (benchmarks/bench_threads.py). One thread where BLAS
    is not at one thread (its limit is held by another thread, which threadpoolctl
    lets control it): the groups would otherwise oversubscribe the cores.
    """
    workers = min(_WORKERS.get(), len(items) // 3) if host else 1
    if workers > 1 and not blas_at_one_thread():  # another thread controls OpenBLAS's limit
        workers = 1
    if workers <= 1:
        return [function(*item) for item in items]
    pool = concurrent.futures.ThreadPoolExecutor(
        workers, thread_name_prefix="graft-refit", initializer=limit_worker_thread)
    try:
        return list(pool.map(lambda item: function(*item), items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def groups_of(stacks, chunks, group_rows):
    """(first chunk, last chunk + 1, chunk size): runs of equal chunks of ~group_rows rows.

    ``stacks`` are the runs of equal chunks, as ``(row begin, row end, (first,
    last + 1))``.
    """
    groups = []
    for _, _, (first, last) in stacks:
        size = chunks[first][1] - chunks[first][0]
        groups.extend((first + a, first + b, size)
                      for a, b in group_chunks(last - first, size, group_rows))
    return groups


def gather_factors(residuals, embeddings, rows, begin, m, size, xp):
    """Store rows ``rows[begin:begin + m * size]`` as stacks (m, size, C) and (m, size, d).

    Half precision (and integer) blocks are converted to float32: a copy of this
    block only; float32 and float64 are used as they are.
    """
    idx = rows[begin:begin + m * size]
    out = []
    for factor in (residuals, embeddings):
        if factor is None:
            out.append(None)
            continue
        block = _take_store_rows(factor, idx, xp)
        if block.dtype not in (xp.float32, xp.float64):
            block = xp.astype(block, xp.float32)
        out.append(xp.reshape(block, (m, size, factor.shape[1])))
    return out


def _take_store_rows(X, idx, xp):
    """``xp.take(X, idx, axis=0)``; float CPU tensors through NumPy's take (no copy of X).

    torch's ``index_select`` of 8,192 random rows of a (300,000, 512) float32
    store takes 4.0 ms on one thread and NumPy's ``take`` 1.4 ms: a tenth of a
    sampler refit. Other dtypes and namespaces use ``xp.take``.
    """
    if X.dtype in (xp.float32, xp.float64):
        view = torch_cpu_view(X)
        if view is not None:
            return from_numpy(np.take(view, torch_cpu_view(idx), axis=0), xp, None)
    return xp.take(X, idx, axis=0)


class FirstPass(typing.NamedTuple):
    """What pass 1 leaves for the rest of the fit (see `orders_and_errors`)."""

    orders: list
    errors: list
    summaries: list
    uniform: tuple = None  # (orders, errors) of the uniform orders, or None


def orders_and_errors(store, chunks, groups, k_hi, rank_of, order_of, rng, owner,
                      uniform=False):
    """Pass 1: per chunk, the selection order and the nested errors of its prefixes.

    Parameters
    ----------
    store : tuple (residuals, embeddings, rows, xp)
        The store's factors (embeddings may be None), the row permutation (in
        the store's namespace and device) and the namespace.
    chunks : list of (begin, end)
        Chunk bounds in ``rows``.
    groups : list of (first, last + 1, size)
        From `groups_of`.
    k_hi : ndarray of shape (n_chunks,)
        Largest subset size per chunk (the length of its order).
    rank_of : callable (size, k_hi) -> int
        Rank of the factor of a group of chunks of ``size`` rows.
    order_of : callable (U, k_hi, rng) -> list of host int arrays
        The selection order of a stack of factors.
    rng : numpy.random.Generator
        One child generator is drawn per group.
    owner : str
        Named in the error for non-finite feedback.
    uniform : bool, default=False
        Also draw per chunk a uniform order (the head of a random permutation
        of its rows, from the group's child generator after the MaxVol order)
        and its nested errors: a uniform subset of size k is that order's
        prefix, so its error is read here, from the Gram matrices at hand,
        instead of by a second pass over the store. Where such prefixes hold
        dependent rows (gradients narrower than the orders), the group's
        uniform errors are None: the step-by-step factorisation they would take
        costs more than the second pass over narrow gradients.

    Returns
    -------
    FirstPass
        Per chunk the order and its nested errors; per group the ``(b, gg,
        zero, scales)`` the second pass needs; with ``uniform``, the uniform
        orders and their nested errors.
    """
    residuals, embeddings, rows, xp = store
    device = get_namespace(rows)[1]
    n_columns = _n_columns(residuals, embeddings)
    width = _gradient_width(residuals, embeddings)

    def one_group(first, last, size, seed):
        group_hi = int(k_hi[first:last].max())
        R, E = gather_factors(residuals, embeddings, rows, chunks[first][0], last - first,
                              size, xp)
        K, scales = chunk_grams(R, E, xp)
        b, gg, zero, _ = gram_summaries(K, xp)
        if not bool(xp.all(xp.isfinite(gg))):
            raise ValueError(
                f"The feedback of {owner} holds NaN or infinity in the chunks {first} to "
                f"{last - 1} (rows {chunks[first][0]} to {chunks[last - 1][1] - 1} of "
                f"'rows'); record finite values only."
            )
        child = np.random.default_rng(seed)
        U = gram_eigenvectors(K, rank_of(size, group_hi), child, xp)
        with _GREEDY_LOCK:
            order = order_of(U, group_hi, child)
        errs = nested_errors(K, b, gg, zero, from_numpy(np.stack(order), xp, device),
                             n_columns, xp)
        errs = np.asarray(to_numpy(errs), dtype=np.float64)
        drawn = None
        if uniform:  # no nested errors where every head's tail is dependent (narrow G)
            keys = child.random((last - first, size))
            heads = np.argsort(keys, axis=1, kind="stable")[:, :group_hi]
            errs_u = None if width < group_hi else nested_errors(
                K, b, gg, zero, from_numpy(heads, xp, device), n_columns, xp,
                batched_only=True)
            errs_u = ([None] * len(heads) if errs_u is None
                      else list(np.asarray(to_numpy(errs_u), dtype=np.float64)))
            drawn = (list(heads), errs_u)
        return order, errs, (b, gg, zero, scales), drawn

    # the child seeds are drawn in group order up front, so the groups may run in
    # any order (side by side, see `refit_workers`) and give the same picks
    seeds = [int(rng.integers(2**32)) for _ in groups]
    orders, errors, summaries, u_orders, u_errors = [], [], [], [], []
    for order, errs, summary, drawn in map_groups(
            one_group, [(*group, seed) for group, seed in zip(groups, seeds)],
            on_host(rows)):
        orders.extend(order)
        errors.extend(errs)
        summaries.append(summary)
        if drawn is not None:
            u_orders.extend(drawn[0])
            u_errors.extend(drawn[1])
    return FirstPass(orders, errors, summaries, (u_orders, u_errors) if uniform else None)


def subset_errors(store, chunks, groups, local, summaries):
    """Pass 2: per chunk the gradient error and weights (times the chunk size) of its subset.

    Per group the subsets' rows are gathered (padded to the group's largest
    subset with zero residuals, which adds nothing), their Gram blocks formed
    with the chunks' scales of pass 1, and ``b`` and ``||g||^2`` taken from pass 1.

    Returns
    -------
    errors : ndarray of shape (n_chunks,)
    weights : ndarray of shape (n_selected,), float64, chunk by chunk
    """
    residuals, embeddings, rows, xp = store
    device = get_namespace(rows)[1]
    n_columns = _n_columns(residuals, embeddings)

    def one_group(first, last, size, b, gg, zero, scales):
        m = last - first
        k = max(len(local[c]) for c in range(first, last))
        picks = np.zeros((m, k), dtype=np.int64)
        valid = np.zeros((m, k), dtype=bool)
        for j, c in enumerate(range(first, last)):
            picks[j, :len(local[c])] = local[c]
            valid[j, :len(local[c])] = True
        flat = (picks + (chunks[first][0] + size * np.arange(m))[:, None]).reshape(-1)
        idx = xp.take(rows, from_numpy(flat, xp, device), axis=0)
        R, E = gather_factors(residuals, embeddings, idx, 0, m, k, xp)
        mask = from_numpy(valid, xp, device)
        R = xp.where(mask[..., None], R, xp.zeros_like(R))
        K_sub, _ = chunk_grams(R, E, xp, scales)
        b_sub = take_rows(b[..., None], from_numpy(picks, xp, device), xp)[..., 0]
        b_sub = xp.where(mask, b_sub, xp.zeros_like(b_sub))
        w, err = subset_weights(K_sub, b_sub, gg, zero, n_columns, xp)
        return to_numpy(w), to_numpy(err)

    errors = np.zeros(len(chunks))
    weights = [None] * len(chunks)
    results = map_groups(one_group, [(*group, *summary)
                                     for group, summary in zip(groups, summaries)],
                         on_host(rows))
    for (first, last, size), (w, err) in zip(groups, results):
        for j, c in enumerate(range(first, last)):
            errors[c] = float(err[j])
            weights[c] = np.asarray(w[j, :len(local[c])], dtype=np.float64) * size
    return errors, np.concatenate(weights)


def picked_errors(store, chunks, groups, local, first_pass, with_weights):
    """Per chunk the error of its subset, and the weights (None unless ``with_weights``).

    ``first_pass`` is the `FirstPass` of `orders_and_errors`. Without weights,
    when every subset is a prefix of its chunk's MaxVol order (``uniform_share=0``)
    or of its uniform order, the errors are read from the nested errors of pass 1
    and pass 2 (`subset_errors`, a second pass over the store) is skipped.
    """
    read = None if with_weights else _prefix_errors(local, first_pass)
    if read is None:
        errors, weights = subset_errors(store, chunks, groups, local, first_pass.summaries)
        return errors, weights if with_weights else None
    return read, None


def _prefix_errors(local, first_pass):
    """Per chunk the nested error of its subset when every subset is a prefix, else None."""
    drawn = [(first_pass.orders, first_pass.errors)]
    if first_pass.uniform is not None:
        drawn.append(first_pass.uniform)
    read = np.zeros(len(local))
    for c, lo in enumerate(local):
        for orders, errors in drawn:
            order = orders[c]
            if (errors[c] is not None and len(lo)
                    and np.array_equal(lo, order[:len(lo)])):
                read[c] = errors[c][len(lo) - 1]
                break
        else:
            return None
    return read


def _gradient_width(residuals, embeddings):
    """``C (d + 1)``: the width of one flattened gradient, a bound on the Gram's rank."""
    d = 0 if embeddings is None else int(embeddings.shape[1])
    return int(residuals.shape[1]) * (d + 1)


def _n_columns(residuals, embeddings):
    """``C + d + 1``: sets the dependence tolerances of the criterion."""
    d = 0 if embeddings is None else int(embeddings.shape[1])
    return int(residuals.shape[1]) + d + 1
