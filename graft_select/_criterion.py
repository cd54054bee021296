"""The gradient-approximation criterion: how well subsets of a chunk span its mean gradient.

``nested_gradient_errors`` (every prefix of an order at once) and
``gradient_error`` (one subset, with its least-squares weights), each for dense
gradients (Householder QR, Gram-Schmidt when rows are dependent) and for
factored ones (in-order Cholesky of Gram blocks), and the same two quantities
from a chunk's precomputed Gram matrix (``nested_errors``, ``subset_weights``),
which the selector's feedback path uses. Public names are exported by
:mod:`graft_select.gradients`.
"""

import math

import numpy as np

from ._backend import (
    cholesky_checked,
    detached,
    get_namespace,
    on_input_device,
    solve_triangular,
    to_numpy,
)
from ._gram import factored_quantities, gram_block
from ._ops import (
    eps,
    matvec,
    replace_rows,
    rescale_stack,
    rmatvec,
    rounding_level,
    take_host_rows,
    take_rows,
)
from ._proxies import FactoredGradients, check_factored, check_indices
from ._validation import as_array, check_array

# ------------------------------------------------------- nested_gradient_errors


@on_input_device
def nested_gradient_errors(G, order):
    """Relative gradient errors of every prefix of ``order``, in one pass.

    For a chunk of per-sample gradients ``g_1, ..., g_n`` with mean ``g``,
    ``errors[j] = min_w ||g - sum_{i <= j} w_i g_{order[i]}|| / ||g||``: how well
    the first ``j + 1`` samples of ``order`` (for example the MaxVol pivots,
    which are nested) span the chunk's gradient.

    Parameters
    ----------
    G : array of shape (..., n_samples, n_features) or FactoredGradients
        Per-sample gradients (or a sketch of them), one per row; see
        :func:`last_layer_gradients`. Not a dask array (a TypeError): compute
        it first.
    order : integer array of shape (k,) or (..., k)
        Unique row indices in ``[0, n_samples)``; a 1-D ``order`` is used for
        every matrix of a stack. NumPy indices are moved to ``G``'s device.

    Returns
    -------
    errors : array of shape (..., k)
        Non-increasing, in ``[0, 1]``, in ``G``'s namespace and device, in
        ``G``'s dtype (float32 for float16 or bfloat16 ``G``).
        A row that is (numerically) a combination of earlier rows of ``order``
        leaves the error unchanged. Where ``g`` is numerically zero (see Notes)
        every error is 0: there is nothing to approximate.

    See Also
    --------
    gradient_error : The error and least-squares weights of one subset.

    Notes
    -----
    Dense ``G``: a Householder QR of ``G[order].T`` (``O(k^2 n_features)``,
    LAPACK or the backend's equivalent) reduces the problem to ``min(k,
    n_features)`` coordinates. A row whose residual is at most ``10 k eps``
    times its norm counts as dependent; only when some row is (or ``k >
    n_features``) does Gram-Schmidt with reorthogonalisation run through the
    reduced rows in ``order`` (``O(k^3)`` more). With ``q_i`` the
    orthonormal directions and ``c_i = <q_i, g>``, the squared error of prefix
    ``j`` is ``||r||^2 + sum_{i > j} c_i^2`` (``r`` the residual of the full
    order, formed directly): a sum of non-negative terms, so small errors are
    accurate.

    :class:`FactoredGradients`: Cholesky factorisation of
    ``K = gram_matrix(G.take(order))`` in the given order (no pivoting), using
    only ``K``, ``G[order] @ g`` and ``||g||^2`` (``g`` is formed as a
    ``(C, d + 1)`` matrix, never the ``n_samples`` rows). A pivot below
    ``tol = 10 max(k, C + d + 1) eps`` times its diagonal entry counts as
    dependent; the squared error is ``||g||^2 - sum_{i <= j} c_i^2``, accurate
    to about ``sqrt(eps)`` relative (1e-8 in float64, 3e-4 in float32) where
    no row is near that test. The pivots are squared residual norms, so the
    test drops a row whose part orthogonal to the rows before it is below
    ``sqrt(tol)`` of its norm (about 2e-3 in float32 and 5e-7 in float64 for
    ``C + d + 1 = 40``), where the dense form's QR resolves ``tol`` itself:
    two near-duplicate rows (embeddings 0.2% apart in float32) leave the
    factored error unchanged where the dense form finds the large, cancelling
    weights that lower it. A Gram matrix cannot resolve more; pass dense
    gradients, or float64 factors, where such rows must count. Rows whose
    gradient is at the rounding level of the chunk's largest (a residual of
    1e-26 at a logit margin of 60) count as zero, as in :func:`gradient_error`
    (their least-squares weights would overflow); the dense form keeps them.

    ``g`` counts as zero when ``||g|| <= n_samples * eps * max_i ||g_i||``, the
    rounding level of the mean.

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select.gradients import nested_gradient_errors
    >>> G = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> nested_gradient_errors(G, np.array([2, 0, 1])).round(6).tolist()
    [0.0, 0.0, 0.0]
    >>> nested_gradient_errors(G, np.array([0, 1])).round(6).tolist()
    [0.707107, 0.0]
    """
    owner = "nested_gradient_errors"
    if isinstance(G, FactoredGradients):
        R, H, xp, device = check_factored(G, owner, allow_dask=False)
        order = check_indices(order, "order", owner, R.shape[:-1], xp, device, unique=True)
        G = FactoredGradients(R, H)
    else:
        G, xp = check_array(G, "G", owner, min_ndim=2, allow_dask=False, factored=True)
        G = detached(G, xp)
        device = get_namespace(G)[1]
        order = check_indices(order, "order", owner, G.shape[:-1], xp, device, unique=True)
    return nested_gradient_errors_unchecked(G, order, xp)


def _flat_factors(G, order, xp):
    """A factored stack as 3-D, rescaled factors, its order to match, and the stack shape."""
    R, H = G
    stack = R.shape[:-2]
    R, H = _flatten_stack(R, xp), _flatten_stack(H, xp)
    R, H = rescale_stack(R, xp), rescale_stack(H, xp)
    return R, H, _flatten_order(order, R, xp), stack


def nested_gradient_errors_unchecked(G, order, xp):
    """The body of `nested_gradient_errors` for checked arguments.

    ``G`` is a float array or a FactoredGradients of float factors of one dtype,
    ``order`` an int64 array of unique indices in G's namespace and device, as
    the public function's checks leave them; internal callers that built both
    themselves (the selector) call this directly.
    """
    if isinstance(G, FactoredGradients):
        R, H, order, stack = _flat_factors(G, order, xp)
        K, b, gg, zero, _ = factored_quantities(R, H, order, xp)
        tol = _dependence_tol(order.shape[-1], R.shape[-1] + H.shape[-1], K.dtype, xp)
        errors = _nested_gram(K, b, gg, zero, tol, xp)
    else:
        stack = G.shape[:-2]
        G = _flatten_stack(G, xp)
        G = rescale_stack(G, xp)
        order = _flatten_order(order, G, xp)
        g, zero = _mean_and_zero(G, xp)
        A = take_rows(G, order, xp)
        tol = 10 * order.shape[-1] * eps(G.dtype, xp)
        errors = _nested_dense(A, g, zero, tol, xp)
    errors = xp.where(errors < 1, errors, xp.ones_like(errors))
    return xp.reshape(errors, (*stack, errors.shape[-1]))


def _nested_dense(A, g, zero, tol, xp):
    """Errors (m, k) of the prefixes of the rows of A (m, k, p) against g (m, p).

    A Householder QR ``A.T = Q T`` (LAPACK, backward stable even for dependent
    rows) reduces the problem to ``min(k, p)`` coordinates: the rows become the
    columns of ``T`` and ``g`` splits into ``c = Q.T g`` and a residual ``r``
    orthogonal to every row, formed directly. If no row is dependent, prefix
    ``j`` spans the first ``j`` coordinates; otherwise the coordinates are
    processed in order by `_nested_coordinates`.
    """
    Q, T = xp.linalg.qr(xp.matrix_transpose(A))
    c = rmatvec(Q, g)
    r = g - matvec(Q, c)
    c2 = rmatvec(Q, r)
    r = r - matvec(Q, c2)
    c = c + c2
    k = A.shape[1]
    norms = xp.linalg.vector_norm(T, axis=-2)  # (m, k), the norms of the rows of A
    independent = k <= T.shape[-2] and bool(
        xp.all(xp.abs(xp.linalg.diagonal(T)) > tol * norms))
    if independent:  # prefix j spans the first j coordinates: a tail sum of c^2
        squared = _tail_sums(c * c, xp)
    else:
        squared = _nested_coordinates(xp.matrix_transpose(T), c, tol, xp)
    squared = squared + xp.sum(r * r, axis=-1)[:, None]
    return _relative(xp.sqrt(squared), xp.linalg.vector_norm(g, axis=-1), zero, xp)


def _nested_coordinates(B, c, tol, xp):
    """Squared residuals (m, k) of c (m, q) against the prefixes of the rows of B (m, k, q).

    Gram-Schmidt twice through the rows in order; a row whose residual is at
    most ``tol`` times its norm adds no direction. With orthonormal directions
    ``u_i`` and the residual ``s`` of ``c`` against all of them, prefix ``j``
    leaves ``||s||^2 + sum_{i > j} <u_i, c>^2``: a sum of non-negative terms.
    """
    m, k, q = B.shape
    device = get_namespace(B)[1]
    eye = xp.eye(k, dtype=B.dtype, device=device)
    U = xp.zeros((m, k, q), dtype=B.dtype, device=device)
    for j in range(k):
        a = B[:, j, :]
        v = a
        for _ in range(2):
            v = v - rmatvec(U, matvec(U, v))
        norm = xp.linalg.vector_norm(v, axis=-1)
        keep = norm > tol * xp.linalg.vector_norm(a, axis=-1)
        u = v / xp.where(keep, norm, xp.ones_like(norm))[:, None]
        u = xp.where(keep[:, None], u, xp.zeros_like(u))
        U = U + eye[j, :][None, :, None] * u[:, None, :]
    coef = matvec(U, c)
    s = c - rmatvec(U, coef)
    coef2 = matvec(U, s)
    s = s - rmatvec(U, coef2)
    coef = coef + coef2
    return xp.sum(s * s, axis=-1)[:, None] + _tail_sums(coef * coef, xp)


def _tail_sums(x, xp):
    """``out[:, j] = sum_{i > j} x[:, i]`` for x (m, k), summed from the end."""
    tail = xp.flip(xp.cumulative_sum(xp.flip(x, axis=-1), axis=-1), axis=-1)
    zeros = xp.zeros((x.shape[0], 1), dtype=x.dtype, device=get_namespace(x)[1])
    return xp.concat([tail[:, 1:], zeros], axis=-1)


def _nested_gram(K, b, gg, zero, tol, xp, batched_only=False):
    """In-order Cholesky of K (m, k, k) with right-hand side b (m, k); errors (m, k).

    With ``batched_only``, None where the batched factorisation does not serve
    (a dependent row) instead of the step-by-step one.
    """
    fast = _nested_gram_batched(K, b, gg, zero, tol, xp)
    if fast is not None or batched_only:
        return fast
    return _nested_gram_stepwise(K, b, gg, zero, tol, xp)


def _nested_gram_batched(K, b, gg, zero, tol, xp):
    """One batched Cholesky when no row of any prefix is (numerically) dependent, else None.

    The pivots of the step-by-step factorisation are the squared diagonal of the
    Cholesky factor, so when every one passes the dependence test the two give
    the same errors, the batched one in a single LAPACK call per matrix.
    """
    L, ok = cholesky_checked(K, xp)
    pivots = xp.linalg.diagonal(L) ** 2
    if not bool(xp.all(ok & xp.all(pivots > tol * xp.linalg.diagonal(K), axis=-1))):
        return None
    c = solve_triangular(L, b[..., None], lower=True)[..., 0]
    if not bool(xp.all(xp.isfinite(c))):
        return None
    squared = gg[:, None] - xp.cumulative_sum(c * c, axis=-1)
    squared = xp.where(squared > 0, squared, xp.zeros_like(squared))
    return _relative(xp.sqrt(squared), xp.sqrt(gg), zero, xp)


def _nested_gram_stepwise(K, b, gg, zero, tol, xp):
    """The in-order Cholesky step by step, skipping dependent rows."""
    m, k, _ = K.shape
    device = get_namespace(K)[1]
    eye = xp.eye(k, dtype=K.dtype, device=device)
    positions = xp.arange(k, device=device)
    diag = xp.linalg.diagonal(K)
    L = xp.zeros((m, k, k), dtype=K.dtype, device=device)
    c = xp.zeros((m, k), dtype=K.dtype, device=device)
    for j in range(k):
        row = L[:, j, :]
        column = K[:, :, j] - matvec(L, row)
        pivot = column[:, j]
        keep = pivot > tol * diag[:, j]
        root = xp.sqrt(xp.where(keep, pivot, xp.ones_like(pivot)))
        below = keep[:, None] & (positions >= j)[None, :]
        L = L + xp.where(below, column / root[:, None], xp.zeros_like(column))[:, :, None] * (
            eye[j, :][None, None, :])
        cj = (b[:, j] - xp.sum(row * c, axis=-1)) / root
        c = c + xp.where(keep, cj, xp.zeros_like(cj))[:, None] * eye[j, :][None, :]
    squared = gg[:, None] - xp.cumulative_sum(c * c, axis=-1)
    squared = xp.where(squared > 0, squared, xp.zeros_like(squared))
    return _relative(xp.sqrt(squared), xp.sqrt(gg), zero, xp)


# ----------------------------------------------------------------- gradient_error


@on_input_device
def gradient_error(G, indices, *, weights=None):
    """Relative error of a weighted subset's gradient against the chunk's mean gradient.

    ``error = ||g - sum_j weights[j] g_{indices[j]}|| / ||g||`` with ``g`` the
    mean of all rows of ``G``, and by default the least-squares ``weights``.

    Parameters
    ----------
    G : array of shape (..., n_samples, n_features) or FactoredGradients
        Per-sample gradients (or a sketch of them), one per row. Not a dask
        array (a TypeError): compute it first.
    indices : integer array of shape (k,) or (..., k)
        Row indices in ``[0, n_samples)``; a 1-D array is used for every matrix
        of a stack. Repeated indices are allowed (they share the weight).
    weights : array of shape (k,) or (..., k), default=None
        Weights to evaluate. ``None`` computes the least-squares minimiser of
        minimum norm (robust to dependent rows).

    Returns
    -------
    error : array of shape (...,)
        The relative error, in ``[0, 1]`` for least-squares weights (given
        weights can do worse than 1). 0 where ``g`` is numerically zero (see
        :func:`nested_gradient_errors`).
    weights : array of shape (..., k)
        The weights used: the given ones, or the least-squares weights (zero
        where ``g`` is numerically zero).

    See Also
    --------
    nested_gradient_errors : The least-squares error of every prefix at once.

    Notes
    -----
    The least-squares weights are per-sample loss weights in the sense of CRAIG
    and GradMatch: training on the subset with loss ``sum_j weights[j] *
    loss_{indices[j]}`` follows the chunk's mean loss gradient up to ``error``.
    ``n_samples * weights`` puts them on the scale "number of chunk samples each
    selected sample stands for" (they sum to about ``n_samples`` when the subset
    represents the chunk well), for a loss summed rather than averaged.

    Dense ``G``: ``weights = pinv(G[indices].T) @ g`` and the residual is formed
    directly. :class:`FactoredGradients`: Gram quantities only, ``weights =
    pinv(K, rtol=10 max(k, C + d + 1) eps) @ (G[indices] @ g)`` with ``K`` the
    subset's Gram matrix, and ``error^2 = (||g||^2 - 2 w.b + w.K w) / ||g||^2``.
    As in :func:`nested_gradient_errors`, ``rtol`` applies to ``K``'s singular
    values, the squares of the rows': near-duplicate rows count as one, and
    near that test this global cut and the nested form's in-order pivots can
    differ (one error reflects the near-duplicate, the other not). In both
    forms, least-squares weights drop rows at the rounding level of the chunk's
    largest gradient. Given weights whose terms overflow give an error of inf.

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select.gradients import gradient_error
    >>> G = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
    >>> error, weights = gradient_error(G, np.array([0, 1]))
    >>> bool(error < 1e-12), weights.round(6).tolist()
    (True, [0.5, 1.0])
    >>> round(float(gradient_error(G, np.array([0]))[0]), 6)
    0.707107
    """
    owner = "gradient_error"
    if isinstance(G, FactoredGradients):
        R, H, xp, device = check_factored(G, owner, allow_dask=False)
        indices = check_indices(indices, "indices", owner, R.shape[:-1], xp, device)
        G = FactoredGradients(R, H)
    else:
        G, xp = check_array(G, "G", owner, min_ndim=2, allow_dask=False, factored=True)
        G = detached(G, xp)
        device = get_namespace(G)[1]
        indices = check_indices(indices, "indices", owner, G.shape[:-1], xp, device)
    return gradient_error_unchecked(G, indices, xp, weights=weights, owner=owner)


def gradient_error_unchecked(G, indices, xp, *, weights=None, owner="gradient_error"):
    """The body of `gradient_error` for checked ``G`` and ``indices`` (see
    `nested_gradient_errors_unchecked`); ``weights`` are still checked here, against the
    flattened stack.
    """
    if isinstance(G, FactoredGradients):
        R, H, indices, stack = _flat_factors(G, indices, xp)
        w = _check_weights(weights, indices, stack, xp, owner)
        K, b, gg, zero, scale = factored_quantities(R, H, indices, xp)
        if w is None:
            k = indices.shape[-1]
            rtol = _dependence_tol(k, R.shape[-1] + H.shape[-1], K.dtype, xp)
            v = matvec(xp.linalg.pinv(K, rtol=rtol), b)  # weights of the scaled rows
            v = xp.where(zero[:, None], xp.zeros_like(v), v)
            safe = xp.where(scale > 0, scale, xp.ones_like(scale))
            w = xp.where(scale > 0, v / safe, xp.zeros_like(v))
        else:
            v = w * xp.astype(scale, w.dtype)
        dtype = xp.result_type(K.dtype, v.dtype)
        K, b, gg, v = (xp.astype(a, dtype) for a in (K, b, gg, v))
        with np.errstate(over="ignore", invalid="ignore"):  # read below
            squared = gg - 2 * xp.sum(v * b, axis=-1) + xp.sum(v * matvec(K, v), axis=-1)
        # rounding can leave a slightly negative square (0); given weights whose terms
        # overflow leave inf - inf = NaN, an error beyond the range (inf), not 0
        squared = xp.where(xp.isnan(squared) & ~xp.isnan(gg), xp.full_like(squared, xp.inf),
                           xp.where(squared > 0, squared, xp.zeros_like(squared)))
        error = _relative(xp.sqrt(squared), xp.sqrt(gg), zero, xp)
    else:
        stack = G.shape[:-2]
        G = _flatten_stack(G, xp)
        G = rescale_stack(G, xp)
        indices = _flatten_order(indices, G, xp)
        w = _check_weights(weights, indices, stack, xp, owner)
        g, zero, largest = _mean_and_zero(G, xp, with_largest=True)
        A = take_rows(G, indices, xp)
        if w is None:
            # rows at the rounding level of the chunk's largest gradient count as zero
            # (their least-squares weight, about 1 / their norm, could overflow)
            tiny = xp.linalg.vector_norm(A, axis=-1) <= rounding_level(
                G.shape[-2], largest, G.dtype, xp)[:, None]
            A = xp.where(tiny[..., None], xp.zeros_like(A), A)
            w = matvec(xp.linalg.pinv(xp.matrix_transpose(A)), g)
            w = xp.where(zero[:, None], xp.zeros_like(w), w)
        with np.errstate(over="ignore", invalid="ignore"):  # given weights may overflow: inf
            residual = g - rmatvec(A, w)
        error = _relative(xp.linalg.vector_norm(residual, axis=-1),
                          xp.linalg.vector_norm(g, axis=-1), zero, xp)
    if weights is None:
        error = xp.where(error < 1, error, xp.ones_like(error))
    return xp.reshape(error, stack), xp.reshape(w, (*stack, w.shape[-1]))


def _check_weights(weights, indices, stack, xp, owner):
    """Validated weights as (m, k), or None."""
    if weights is None:
        return None
    weights = as_array(weights)
    weights, _ = check_array(weights, "weights", owner, min_ndim=1, allow_dask=False)
    weights = detached(weights, xp)
    get_namespace(indices, weights)
    m, k = indices.shape
    if weights.shape not in ((k,), (*stack, k)):
        shapes = f"({k},)" if not stack else f"({k},) or {(*stack, k)}"
        raise ValueError(
            f"'weights' of {owner} must have shape {shapes}, one weight per index, got "
            f"shape {tuple(weights.shape)}."
        )
    return xp.broadcast_to(xp.reshape(weights, (-1, k)), (m, k))


def _flatten_stack(X, xp):
    """Reshape (..., n, c) to (m, n, c)."""
    return xp.reshape(X, (math.prod(X.shape[:-2]), *X.shape[-2:]))


def _flatten_order(order, X, xp):
    """Indices (k,) or (..., k) as (m, k) for the flattened stack X (m, n, c)."""
    k = order.shape[-1]
    return xp.broadcast_to(xp.reshape(order, (-1, k)), (X.shape[0], k))


def _mean_and_zero(G, xp, with_largest=False):
    """Mean row g (m, p) of G (m, n, p) and where it is numerically zero (m,).

    With ``with_largest``, also the largest row norm of each matrix (m,).
    """
    n = G.shape[-2]
    g = xp.mean(G, axis=-2)
    largest = xp.max(xp.linalg.vector_norm(G, axis=-1), axis=-1)
    zero = xp.linalg.vector_norm(g, axis=-1) <= rounding_level(n, largest, G.dtype, xp)
    return (g, zero, largest) if with_largest else (g, zero)


def _dependence_tol(k, n_columns, dtype, xp):
    """``10 max(k, n_columns) eps``: below this fraction of its diagonal entry, a Gram
    pivot counts as zero (the row depends on the earlier ones)."""
    return 10 * max(k, n_columns) * eps(dtype, xp)


def _relative(norm, gnorm, zero, xp):
    """norm / gnorm, 0 where the mean gradient is zero; norm (m,) or (m, k)."""
    if norm.ndim == 2:
        gnorm, zero = gnorm[:, None], zero[:, None]
    safe = xp.where(zero, xp.ones_like(gnorm), gnorm)
    out = norm / safe
    out = xp.where(zero, xp.zeros_like(out), out)
    return out


# ------------------------------------------------- from a chunk's Gram matrix


def nested_errors(K, b, gg, zero, order, n_columns, xp, batched_only=False):
    """Relative errors (m, k) of every prefix of ``order`` (m, k), from the Gram stack.

    The in-order Cholesky of ``K[order][:, order]`` with right-hand side
    ``b[order]`` (see ``gradients.nested_gradient_errors``); ``n_columns`` is
    ``C + d + 1``, which sets the dependence tolerance as there. With
    ``batched_only``, None when a prefix holds a dependent row: the step-by-step
    factorisation that serves then is a Python loop over the k rows.
    """
    k = order.shape[-1]
    K_sub = gram_block(K, order, xp)
    b_sub = take_rows(b[..., None], order, xp)[..., 0]
    tol = _dependence_tol(k, n_columns, K.dtype, xp)
    errors = _nested_gram(K_sub, b_sub, gg, zero, tol, xp, batched_only)
    if errors is None:
        return None
    return xp.where(errors < 1, errors, xp.ones_like(errors))


def subset_weights(K_sub, b_sub, gg, zero, n_columns, xp):
    """Least-squares weights (m, k) and relative errors (m,) of subsets, from Gram blocks.

    ``w = pinv(K_sub) b_sub`` for the symmetric PSD ``K_sub`` (m, k, k), and
    ``error^2 = (||g||^2 - 2 w.b + w.K w) / ||g||^2``. A Cholesky solve serves
    the matrices whose pivots all exceed ``10 max(k, n_columns) eps`` times their
    diagonal entry (independent rows); the others get the pseudo-inverse from
    their eigendecomposition (eigenvalues below that tolerance times the largest
    are cut). Zero rows and columns (padding of subsets smaller than k) must
    come with zero ``b_sub``: they get weight 0 and change nothing.
    """
    k = K_sub.shape[-1]
    rtol = _dependence_tol(k, n_columns, K_sub.dtype, xp)
    diag = xp.linalg.diagonal(K_sub)
    padded = diag <= 0
    # padding rows get a unit diagonal for the Cholesky solve (their b is 0, so w is 0)
    eye = xp.eye(k, dtype=K_sub.dtype, device=get_namespace(K_sub)[1])
    L, ok = cholesky_checked(K_sub + xp.astype(padded, K_sub.dtype)[..., None] * eye, xp)
    pivots = xp.linalg.diagonal(L) ** 2
    ok = ok & xp.all((pivots > rtol * diag) | padded, axis=-1)
    L = xp.where(ok[:, None, None], L, eye)  # the failures are solved below, by pinv
    y = _solve_triangular(L, b_sub, xp, lower=True)
    w = _solve_triangular(xp.matrix_transpose(L), y, xp, lower=False)
    ok = ok & xp.all(xp.isfinite(w), axis=-1)
    bad = np.flatnonzero(~np.asarray(to_numpy(ok), dtype=bool))
    if bad.size:
        fallback = _pinv_solve(take_host_rows(K_sub, bad, xp), take_host_rows(b_sub, bad, xp),
                               rtol, xp)
        w = replace_rows(w, bad, fallback, xp)
    w = xp.where(zero[:, None], xp.zeros_like(w), w)
    Kw = (K_sub @ w[..., None])[..., 0]
    w64, b64, Kw64 = (xp.astype(a, xp.float64) for a in (w, b_sub, Kw))
    squared = gg - 2 * xp.sum(w64 * b64, axis=-1) + xp.sum(w64 * Kw64, axis=-1)
    squared = xp.where(squared > 0, squared, xp.zeros_like(squared))
    error = _relative(xp.sqrt(squared), xp.sqrt(gg), zero, xp)
    return w, xp.where(error < 1, error, xp.ones_like(error))


def _pinv_solve(K, b, rtol, xp):
    """``pinv(K) b`` for symmetric PSD K (m, k, k) from its eigendecomposition."""
    values, vectors = xp.linalg.eigh(K)
    keep = values > rtol * xp.max(xp.abs(values), axis=-1, keepdims=True)
    inverse = xp.where(keep, 1 / xp.where(keep, values, xp.ones_like(values)),
                       xp.zeros_like(values))
    coords = (xp.matrix_transpose(vectors) @ b[..., None])[..., 0]
    return (vectors @ (inverse * coords)[..., None])[..., 0]


def _solve_triangular(L, b, xp, *, lower):
    """Solve ``L x = b`` for a stack of triangular L (m, k, k) and b (m, k)."""
    return solve_triangular(L, b[..., None], lower=lower)[..., 0]
