"""Low-rank features and Fast MaxVol: the two kernels of GRAFT.

Both are pure functions written against the array API: the result is in the
input's namespace and on its device, and a stack of matrices (leading
dimensions) is processed in one batched call.
"""

import math

import numpy as np

from ._backend import (
    as_contiguous,
    from_numpy,
    get_namespace,
    is_meta,
    is_numpy,
    is_sparse,
    lu_pivot_rows,
    on_host,
    on_input_device,
    scale_by_power_of_two,
    to_numpy,
    torch_cpu_view,
)
from ._ops import matvec, replace_rows, rmatvec, take_host_rows, take_rows, unit_columns
from ._validation import (
    check_array,
    check_bool,
    check_finite,
    check_int,
    check_option,
    check_random_state,
    check_real,
    float_info,
    half_dtype,
    rescale_extreme,
)

__all__ = ["fast_maxvol", "low_rank_features"]

_SVD_METHODS = ("auto", "exact", "randomized")
_MAXVOL_METHODS = ("volume", "lu")


# ------------------------------------------------------------- low_rank_features


@on_input_device
def low_rank_features(
    X, n_components, *, method="auto", n_oversamples=10, n_iter=2, random_state=None
):
    """First ``n_components`` left singular vectors of ``X`` (or of each matrix in a stack).

    Parameters
    ----------
    X : array of shape (n_samples, n_features) or (..., n_samples, n_features)
        Data in any array-API namespace (NumPy, torch, CuPy, ...), or a 2-D
        scipy.sparse CSR/CSC matrix, which is never densified. Integer and bool
        arrays are converted to float64; float32 stays float32. Half precision
        (float16, bfloat16) is computed in float32 and the result is returned in
        the input's dtype. Inputs of any finite magnitude are accepted: X is
        scaled by a power of two when its entries are extremely large or small.
    n_components : int
        Rank ``r`` of the factor, ``1 <= r <= min(n_samples, n_features)``.
    method : {"auto", "exact", "randomized"}, default="auto"
        ``"exact"``: thin SVD (``scipy.sparse.linalg.svds`` for sparse input).
        ``"randomized"``: randomized range finder with power iterations (Halko,
        Martinsson and Tropp, 2011). ``"auto"`` uses ``"randomized"`` when
        ``n_components + n_oversamples`` is at most half of
        ``min(n_samples, n_features)`` or the input is sparse, else ``"exact"``.
    n_oversamples : int, default=10
        Extra random directions used by the range finder.
    n_iter : int, default=2
        Power iterations of the range finder. After every product the columns
        are scaled to unit norm (cheap, and it keeps float32 from overflowing);
        with more than two iterations each is also re-orthonormalised by QR.
    random_state : None, int, numpy.random.Generator or RandomState, default=None
        Seeds the Gaussian test matrix. It is drawn on the host with NumPy and
        then moved to ``X``'s device, so every backend uses the same matrix.

    Returns
    -------
    U : array of shape (..., n_samples, n_components)
        Orthonormal columns spanning (approximately, for ``"randomized"``) the
        dominant left singular subspace, in ``X``'s namespace, device and dtype
        (NumPy for sparse input).

    See Also
    --------
    fast_maxvol : Rows of maximal volume of ``U``.
    sklearn.utils.extmath.randomized_svd : The same range finder for one NumPy matrix.

    Notes
    -----
    The range finder costs ``O(n_samples * n_features * (r + p) * (2 * n_iter + 2))``
    for ``p`` oversamples, against ``O(n_samples * n_features * min(n_samples,
    n_features))`` for the exact SVD. One Gaussian test matrix is shared by every
    matrix of a stack.

    References
    ----------
    N. Halko, P. G. Martinsson, J. A. Tropp, "Finding structure with randomness",
    SIAM Review 53(2), 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select import low_rank_features
    >>> X = np.random.default_rng(0).standard_normal((100, 20))
    >>> U = low_rank_features(X, 5, random_state=0)
    >>> U.shape
    (100, 5)
    >>> bool(np.allclose(U.T @ U, np.eye(5)))
    True
    """
    owner = "low_rank_features"
    half = None if is_sparse(X) else half_dtype(X)
    X, xp = check_array(X, "X", owner, allow_sparse=True)
    n_samples, n_features = X.shape[-2:]
    r = check_int(n_components, "n_components", owner, low=1, high=min(n_samples, n_features))
    method = check_option(method, "method", owner, _SVD_METHODS)
    p = check_int(n_oversamples, "n_oversamples", owner, low=0)
    n_iter = check_int(n_iter, "n_iter", owner, low=0)
    rng = check_random_state(random_state, "random_state", owner)
    sparse = is_sparse(X)
    if sparse:
        # the dense factors of sparse X are NumPy arrays: use NumPy's array-API namespace
        # (plain numpy lacks matrix_transpose and qr(...).Q before NumPy 2.0)
        xp, _ = get_namespace(X)
    X, _ = rescale_extreme(X, xp)
    U = _low_rank_features(X, r, xp, method=method, n_oversamples=p, n_iter=n_iter, rng=rng)
    return U if half is None else xp.astype(U, half)


def _low_rank_features(X, r, xp, *, method="auto", n_oversamples=10, n_iter=2, rng=None):
    """The body of `low_rank_features` for checked arguments.

    X is a float stack (or a sparse matrix, with ``xp`` NumPy's namespace) whose
    magnitudes are in range (see ``rescale_extreme``), ``rng`` a NumPy generator.
    """
    n_samples, n_features = X.shape[-2:]
    sparse = is_sparse(X)
    if method == "auto":
        small = 2 * (r + n_oversamples) <= min(n_samples, n_features)
        method = "randomized" if sparse or small else "exact"
    if method == "exact":
        return _sparse_svds(X, r) if sparse else _exact_svd(X, r, xp)
    return _randomized_range_svd(X, r, n_oversamples, n_iter, rng, xp)


def _exact_svd(X, r, xp):
    U, _, _ = xp.linalg.svd(X, full_matrices=False)
    return U[..., :r]


def _sparse_svds(X, r):
    import scipy.sparse.linalg

    if r >= min(X.shape):
        raise ValueError(
            f"method='exact' on sparse X needs n_components < min(X.shape) = {min(X.shape)}, "
            f"got {r}; use method='randomized' or pass a dense array."
        )
    U, s, _ = scipy.sparse.linalg.svds(X, k=r, random_state=0)
    return np.ascontiguousarray(U[:, np.argsort(s)[::-1]])


def _randomized_range_svd(X, r, p, n_iter, rng, xp):
    n_samples, n_features = X.shape[-2:]
    width = min(r + p, n_samples, n_features)
    omega = rng.standard_normal((n_features, width)).astype(_np_dtype(X, xp))
    omega = from_numpy(omega, xp, None if is_sparse(X) else _device(X))
    Y = unit_columns(X @ omega, xp)
    for _ in range(n_iter):
        # Each product multiplies the columns by up to ||X||: scaling them to unit norm
        # after each keeps float32 from overflowing (the span is unchanged); with more
        # than two iterations the columns are also re-orthonormalised, as scikit-learn does.
        Y = unit_columns(X @ unit_columns(_rmatmul_t(X, Y, xp), xp), xp)
        if n_iter > 2:
            Y = _orthonormal(Y, xp)
    Q = _orthonormal(Y, xp)
    # The left singular vectors of B = Q^T X (width x n_features) are the eigenvectors
    # of the small B B^T: one width x width eigh per matrix instead of an SVD of B.
    B = _rmatmul_t(X, Q, xp)  # B^T, (..., n_features, width)
    _, V = xp.linalg.eigh(xp.matrix_transpose(B) @ B)
    return Q @ xp.flip(V[..., width - r:], axis=-1)


def _rmatmul_t(X, Q, xp):
    """X^T @ Q for dense stacks and sparse matrices."""
    if is_sparse(X):
        return np.asarray(X.T @ Q)
    return xp.matrix_transpose(X) @ Q


def _orthonormal(Y, xp):
    return xp.linalg.qr(Y).Q


def _np_dtype(X, xp):
    if is_sparse(X):
        return X.dtype
    return np.float32 if X.dtype == xp.float32 else np.float64


def _device(X):
    return get_namespace(X)[1]


# ----------------------------------------------------------------- fast_maxvol


@on_input_device
def fast_maxvol(A, k=None, *, method="volume", refine=False, tol=1.05, max_iter=None):
    """Indices of ``k`` rows of ``A`` whose submatrix has (locally) maximal volume.

    Parameters
    ----------
    A : array of shape (n, r) or (..., n, r), with n >= r
        A tall matrix (typically the orthonormal factor from
        :func:`low_rank_features`) or a stack of them. Integer and bool arrays are
        converted to float64; half precision (float16, bfloat16) is computed in
        float32. ``A`` is never modified.
    k : int, default=None
        Number of rows to return, ``1 <= k <= n``; ``None`` means ``k = r``.
    method : {"volume", "lu"}, default="volume"
        Greedy pivot rule for the first ``min(k, r)`` rows. ``"volume"`` takes
        the row with the largest residual norm (the pivots of QR with column
        pivoting of ``A.T``): every step maximises the volume gain exactly.
        ``"lu"`` takes the largest entry of the next column (the pivots of LU
        with partial pivoting), delegated to LAPACK getrf, torch or CuPy.
    refine : bool, default=False
        Swap rows of the square ``r``-subset until every coefficient of
        ``A @ inv(A[I])`` is at most ``tol`` in absolute value (a dominant
        submatrix, Goreinov et al. 2010); each swap multiplies the volume by more
        than ``tol``. Needs ``k >= r``.
    tol : float, default=1.05
        Dominance tolerance for ``refine``, at least 1.0.
    max_iter : int, default=None
        Maximum number of swaps for ``refine``; ``None`` means ``10 * r``.

    Returns
    -------
    indices : integer array of shape (..., k)
        Unique row indices in pivot order (the first ``j`` are the greedy
        ``j``-subset, unless ``refine`` swapped some of the first ``r``), int64,
        in ``A``'s namespace and on its device.

    See Also
    --------
    low_rank_features : The orthonormal factor this is usually applied to.

    Notes
    -----
    For ``k > r`` the extra rows are added by rectangular MaxVol (Mikhalev and
    Oseledets, 2018): the row with the largest norm in ``C = A @ pinv(A[I])`` is
    added, which multiplies ``det(A[I].T @ A[I])`` by ``1 + ||C_i||^2``. After a
    full-rank greedy phase (the usual case) ``C`` comes from the coordinates the
    greedy stored and each step downdates one column of ``C @ C.T``, at
    ``O(n (r + j))`` for step ``j``; otherwise ``C`` is kept current with rank-1
    updates.

    Rank-deficient ``A``: the greedy phase stops once the largest remaining
    residual is at most ``max(n, r) * eps * max_i ||A_i||`` (or, for ``"lu"``,
    once a pivot is that small, after which the volume rule continues from the
    LU pivots found so far). The remaining rows are then added by the
    rectangular rule within the span of the rows chosen so far, so rows poorly
    represented by the current choice come first, and rows with nothing left
    (for example zero rows) come last, lowest index first. Every call returns
    ``k`` unique indices.

    Each greedy step costs ``O(n r)`` (a matrix-vector product with ``A``, and
    one with the directions found so far), so the first ``r`` pivots cost
    ``O(n r^2)``.

    References
    ----------
    S. A. Goreinov, I. V. Oseledets, D. V. Savostyanov, E. E. Tyrtyshnikov,
    N. L. Zamarashkin, "How to find a good submatrix", 2010.
    A. Mikhalev, I. V. Oseledets, "Rectangular maximum-volume submatrices and
    their applications", Linear Algebra Appl. 538, 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select import fast_maxvol
    >>> A = np.array([[1.0, 0.0], [0.1, 0.1], [0.0, 2.0], [0.5, 0.5]])
    >>> fast_maxvol(A).tolist()
    [2, 0]
    >>> fast_maxvol(A, 3).tolist()
    [2, 0, 3]
    """
    owner = "fast_maxvol"
    if is_meta(A):
        check_array(A, "A", owner)  # raises the meta-tensor error
    view = torch_cpu_view(A)
    checked, _ = check_array(A if view is None else view, "A", owner,
                             ensure_finite=False)  # checked in the body, from sq_norms
    n, r = checked.shape[-2:]
    if n < r:
        raise ValueError(
            f"'A' of {owner} must be tall (at least as many rows as columns), got shape "
            f"{tuple(checked.shape)}; pass A.T or reduce its rank with low_rank_features first."
        )
    k = r if k is None else check_int(k, "k", owner, low=1, high=n)
    method = check_option(method, "method", owner, _MAXVOL_METHODS)
    refine = check_bool(refine, "refine", owner)
    tol = check_real(tol, "tol", owner, low=1.0)
    max_iter = 10 * r if max_iter is None else check_int(max_iter, "max_iter", owner, low=1)
    if refine and k < r:
        raise ValueError(
            f"refine=True in {owner} needs k >= r (the square submatrix is refined), got "
            f"k={k} and r={r}; pass A[..., :{k}] to refine a {k}-subset, or refine=False."
        )
    indices = _fast_maxvol(checked, k, method=method, refine=refine, tol=tol,
                           max_iter=max_iter)
    return indices if view is None else from_numpy(indices, *get_namespace(A))


def _fast_maxvol(A, k, *, method="volume", refine=False, tol=1.05, max_iter=None):
    """The body of `fast_maxvol` for checked arguments (a float stack A, n >= r).

    Internal callers that produced A themselves call this directly: it skips the
    parameter checks; A's finiteness is still tested from the squared row norms
    it computes anyway (one reduction, no extra pass).
    """
    owner = "fast_maxvol"
    view = torch_cpu_view(A)
    if view is not None:
        # CPU tensors run the step-by-step greedy through a NumPy view of the same memory.
        xp, device = get_namespace(A)
        indices = _fast_maxvol(view, k, method=method, refine=refine, tol=tol,
                               max_iter=max_iter)
        return from_numpy(indices, xp, device)
    xp, _ = get_namespace(A)
    *stack, n, r = A.shape
    max_iter = 10 * r if max_iter is None else max_iter
    A, sq_norms = _squared_row_norms(as_contiguous(A), xp, owner)
    m = math.prod(stack)
    A, sq_norms = xp.reshape(A, (m, n, r)), xp.reshape(sq_norms, (m, n))
    # LAPACK's LU works matrix by matrix anyway; grouping pays off for the volume rule
    group = m if method == "lu" else _group_size(A, m, n, r)
    parts = [
        _maxvol_stack(A[start:stop, ...], sq_norms[start:stop, ...], k, method, refine, tol,
                      max_iter, xp)
        for start, stop in ((s, min(s + group, m)) for s in range(0, m, group))
    ]
    indices = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
    return xp.reshape(indices, (*stack, k))


def _squared_row_norms(A, xp, owner):
    """Check that A is finite and return ``(A, sq_norms)``, sq_norms of shape A.shape[:-1].

    The squared norms also serve the finiteness test (one pass over A). If squaring
    would overflow or lose the entries to underflow, A is first scaled by a power of
    two, which changes no pivot (the result is invariant to the scale of A).
    """
    with np.errstate(over="ignore", under="ignore"):
        sq_norms = xp.vecdot(A, A, axis=-1)
        total = xp.sum(sq_norms)
    check_finite(A, "A", owner, xp, total=total)
    info = float_info(A.dtype, xp)
    if info.tiny / info.eps <= float(xp.max(sq_norms)) < math.inf:
        return A, sq_norms
    peak = float(xp.max(xp.abs(A)))  # finite here
    if peak == 0.0:
        return A, sq_norms
    # the factor 2**-e may not be representable itself (2**132 in float32): scale in steps
    A = scale_by_power_of_two(A, -math.frexp(peak)[1])
    return A, xp.vecdot(A, A, axis=-1)


# In host memory, a stack is processed by the volume rule in groups of matrices that fit
# in cache: every greedy step reads the whole group, and a group of a few MiB stays in
# cache between steps where a stack of tens of MiB is read from memory each time. On an
# accelerator one batched call over the whole stack is best.
_HOST_GROUP_BYTES = 4 << 20


def _group_size(A, m, n, r):
    if not on_host(A):
        return m
    itemsize = 4 if _np_dtype(A, get_namespace(A)[0]) == np.float32 else 8
    return max(1, _HOST_GROUP_BYTES // (n * r * itemsize))


def _maxvol_stack(A, sq_norms, k, method, refine, tol, max_iter, xp):
    _, n, r = A.shape
    k_greedy = min(k, r)
    threshold = xp.sqrt(xp.max(sq_norms, axis=-1)) * (
        max(n, r) * float(float_info(A.dtype, xp).eps))
    coords = None
    if method == "volume":
        # the coordinates serve the rectangular steps when every greedy step found a direction
        picks, rank, coords = _volume_greedy(A, k_greedy, threshold, xp, sq_norms=sq_norms,
                                             coordinates=True)
    else:
        picks, pivots = lu_pivot_rows(A)
        picks = picks[:, :k_greedy]
        rank = _leading_count(to_numpy(pivots[:, :k_greedy] > threshold[:, None]))
        if np.any(rank < k_greedy):
            picks, rank = _continue_by_volume(A, picks, rank, threshold, xp)
    if refine:
        full = np.flatnonzero(rank == r)
        if full.size:
            refined = _refine(take_host_rows(A, full, xp), take_host_rows(picks, full, xp),
                              tol, max_iter, xp)
            picks = replace_rows(picks, full, refined, xp)
    if k > k_greedy and coords is not None and not refine and np.all(rank == r):
        picks = _extend_greedy(A, picks, coords, k, xp)
    elif k > k_greedy or np.any(rank < k_greedy):
        picks = _per_rank_group(A, picks, rank, k, xp)
    return xp.astype(picks, xp.int64, copy=False)


def _continue_by_volume(A, picks, rank, threshold, xp):
    """Where LU met a zero pivot early, continue from its pivots with the volume rule."""
    k_greedy = picks.shape[1]
    rank = rank.copy()
    for value in np.unique(rank[rank < k_greedy]):
        rows = np.flatnonzero(rank == value)
        init = take_host_rows(picks, rows, xp)[:, : int(value)]
        new, new_rank = _volume_greedy(
            take_host_rows(A, rows, xp), k_greedy, take_host_rows(threshold, rows, xp), xp,
            init=init)
        picks = replace_rows(picks, rows, new, xp)
        rank[rows] = new_rank
    return picks, rank


def _leading_count(ok):
    """Number of leading True values in each row of a boolean host array."""
    ok = np.asarray(ok, dtype=bool)
    return np.where(ok.all(axis=1), ok.shape[1], np.argmin(ok, axis=1))


def _per_rank_group(A, picks, rank, k, xp):
    """Grow the picks of every element with rank below ``k`` to ``k`` rows by `_extend`.

    Elements are grouped by rank so each group is one batched call; the leading
    ``rank`` picks of an element are kept and the rest are chosen anew.
    """
    new_groups, new_rows = [], []
    for value in np.unique(rank[rank < k]):
        rows = np.flatnonzero(rank == value)
        init = take_host_rows(picks, rows, xp)[:, : int(value)]
        new_groups.append(_extend(take_host_rows(A, rows, xp), init, k, xp))
        new_rows.append(rows)
    if not new_rows:
        return picks
    keep = np.flatnonzero(rank >= k)
    if keep.size:
        new_groups.append(take_host_rows(picks, keep, xp))
        new_rows.append(keep)
    stacked = xp.concat([xp.astype(g, xp.int64) for g in new_groups], axis=0)
    return take_host_rows(stacked, np.argsort(np.concatenate(new_rows)), xp)


def _take_row(X, p, xp):
    """Row ``X[b, p[b]]`` of each matrix of a stack X (m, n, c), as (m, c)."""
    return take_rows(X, p[:, None], xp)[:, 0, :]


def _mark(taken, p, columns):
    return taken | (columns[None, :] == p[:, None])


def _volume_greedy(A, k, threshold, xp, init=None, sq_norms=None, coordinates=False):
    """Greedy largest-residual pivoting (pivoted QR of A^T) for a stack (m, n, r).

    Returns picks (m, k) and, per element, the step at which the residual ran out
    (``k`` if it never did), as a host array. Picks after that step are arbitrary.
    ``sq_norms`` (m, n), the squared row norms of ``A``, may be passed if known.
    With ``coordinates``, also returns ``C`` (m, n, k): ``C[:, i, j]`` is row
    ``i``'s coordinate along the ``j``-th direction (see `_extend_greedy`).

    Each step costs one matrix-vector product with ``A`` (the coordinates ``c =
    A q`` of every row along the new direction ``q``) and one with the ``j``
    directions found so far: the chosen row's coordinates along them are
    ``c_0[p], ..., c_{j-1}[p]``, read from the stored coordinates rather than
    recomputed, and its residual ``v = a_p - sum_i c_i[p] q_i`` is formed
    explicitly (its norm decides the rank, to rounding accuracy). The chosen
    rows are excluded by setting their residual to -inf.
    """
    m, n, r = A.shape
    dev = get_namespace(A)[1]
    columns = xp.arange(n, device=dev)[None, :]
    d = xp.vecdot(A, A, axis=-1) if sq_norms is None else sq_norms
    minus_inf = xp.asarray(-xp.inf, dtype=A.dtype, device=dev)
    plus_inf = xp.asarray(xp.inf, dtype=A.dtype, device=dev)
    basis = xp.zeros((m, k, r), dtype=A.dtype, device=dev)  # row j: the j-th direction
    coords = xp.zeros((m, n, k), dtype=A.dtype, device=dev)  # column j: A @ basis[j]
    picks = []
    start = 0 if init is None else init.shape[1]
    if start:
        q0 = xp.linalg.qr(xp.matrix_transpose(take_rows(A, init, xp))).Q  # (m, r, start)
        basis[:, :start, :] = xp.matrix_transpose(q0)
        coords[:, :, :start] = A @ q0
        d = d - xp.sum(coords[:, :, :start] ** 2, axis=-1)
        for j in range(start):
            d = xp.where(columns == init[:, j : j + 1], minus_inf, d)
            picks.append(xp.astype(init[:, j], xp.int64))
    flat_A = xp.reshape(A, (m * n, r))
    flat_coords = xp.reshape(coords, (m * n, k))
    offsets = xp.arange(m, dtype=xp.int64, device=dev) * n
    residuals = []
    for j in range(start, k):
        p = xp.astype(xp.argmax(d, axis=1), xp.int64, copy=False)
        rows = offsets + p
        v = xp.take(flat_A, rows, axis=0)  # (m, r), the chosen row
        if j:
            v = v - rmatvec(basis[:, :j, :], xp.take(flat_coords, rows, axis=0)[:, :j])
        norm = xp.sqrt(xp.vecdot(v, v, axis=-1))
        residuals.append(norm)
        # a residual at the threshold adds no direction (q = 0); rank is found after the loop
        q = v / xp.where(norm > threshold, norm, plus_inf)[:, None]
        basis[:, j, :] = q
        c = matvec(A, q)
        coords[:, :, j] = c
        d = _excluded(d - c * c, rows, columns, p, minus_inf, xp)
        picks.append(p)
    rank = np.full(m, k, dtype=np.int64)
    if residuals:
        above = to_numpy(xp.stack(residuals, axis=1) > threshold[:, None])
        rank = start + _leading_count(above)
    picks = xp.stack(picks, axis=1)
    return (picks, rank, coords) if coordinates else (picks, rank)


def _excluded(d, rows, columns, p, minus_inf, xp):
    """``d`` (m, n), a new array, with ``d[b, p[b]] = -inf``: the row each matrix chose.

    NumPy writes the m entries in place through the flat indices ``rows = b n +
    p[b]`` (a greedy step's other operations are about as cheap at the sizes of a
    refit, so the comparison and select of the portable form cost 10-15% of the
    steps); other namespaces, whose standard API has no integer-array
    assignment, select with a mask.
    """
    if is_numpy(xp):
        d.reshape(-1)[rows] = minus_inf
        return d
    return xp.where(columns == p[:, None], minus_inf, d)


def _extend_greedy(A, picks, coords, k, xp):
    """Rectangular MaxVol after a full-rank greedy: grow ``picks`` (m, r) to ``k`` rows.

    The same picks as `_extend` (in exact arithmetic), from what the greedy left:
    with ``T = coords[picks]`` (r x r, lower triangular with the residual norms on
    its diagonal, since every direction is orthogonal to the rows chosen before
    it), the coefficients are ``C = A @ inv(A[picks]) = coords @ inv(T)``: a
    triangular inverse and a product instead of a QR and a solve. The steps do
    not update ``C`` (an (n, r) rank-1 update each): with ``H = C C^T`` and row
    scores
    ``s = diag(H)``, adding row ``p`` downdates ``H`` by ``w w^T / (1 + s_p)``
    where ``w = H[:, p]``, so each step forms ``w = C @ C[p] - sum_t w_t
    w_t[p] / (1 + s_t)`` from the stored ``w_t``: one product with ``C`` and one
    with the ``w_t`` (which start empty), and ``s -= w^2 / (1 + s_p)``.
    """
    m, n, r = A.shape
    dev = get_namespace(A)[1]
    columns = xp.arange(n, device=dev)[None, :]
    steps = k - r
    T = take_rows(coords[:, :, :r], picks, xp)  # (m, r, r)
    # an inverse (r^3) and a product: a batched general solve with n right-hand sides is 3x
    # slower
    coef = coords[:, :, :r] @ _lower_triangular_inverse(T, xp)  # (m, n, r)
    score = xp.vecdot(coef, coef, axis=-1)
    minus_inf = xp.asarray(-xp.inf, dtype=A.dtype, device=dev)
    taken = xp.any(columns[:, :, None] == picks[:, None, :], axis=-1)  # (m, n)
    score = xp.where(taken, minus_inf, score)
    flat_coef = xp.reshape(coef, (m * n, r))
    downdates = xp.zeros((m, n, steps), dtype=A.dtype, device=dev)  # column t: w_t
    flat_downdates = xp.reshape(downdates, (m * n, steps))
    scale = xp.zeros((m, steps), dtype=A.dtype, device=dev)  # 1 / (1 + s_t)
    offsets = xp.arange(m, dtype=xp.int64, device=dev) * n
    new = []
    for j in range(steps):
        p = xp.astype(xp.argmax(score, axis=1), xp.int64, copy=False)
        rows = offsets + p
        s = xp.take(xp.reshape(score, (-1,)), rows, axis=0)  # finite: not taken
        w = matvec(coef, xp.take(flat_coef, rows, axis=0))
        if j:
            w = w - matvec(downdates[:, :, :j],
                            xp.take(flat_downdates, rows, axis=0)[:, :j] * scale[:, :j])
        inverse = 1 / (1 + s)
        downdates[:, :, j] = w
        scale[:, j] = inverse
        score = _excluded(score - w * w * inverse[:, None], rows, columns, p, minus_inf, xp)
        new.append(p)
    return xp.concat([xp.astype(picks, xp.int64), xp.stack(new, axis=1)], axis=1)


def _extend(A, init, k, xp):
    """Rectangular MaxVol: grow ``init`` (m, j0) to ``k`` rows within span(A[init])."""
    m, n, _ = A.shape
    dev = get_namespace(A)[1]
    columns = xp.arange(n, device=dev)
    j0 = init.shape[1]
    taken = xp.zeros((m, n), dtype=xp.bool, device=dev)
    picks = []
    for j in range(j0):
        taken = _mark(taken, init[:, j], columns)
        picks.append(xp.astype(init[:, j], xp.int64))
    if j0 == 0:
        coef = xp.zeros((m, n, 1), dtype=A.dtype, device=dev)
    else:
        basis = xp.linalg.qr(xp.matrix_transpose(take_rows(A, init, xp))).Q  # (m, r, j0)
        B = A @ basis
        B_sub = take_rows(B, init, xp)  # (m, j0, j0), invertible
        # C order: the steps gather rows of coef and update it in place
        coef = as_contiguous(xp.matrix_transpose(
            xp.linalg.solve(xp.matrix_transpose(B_sub), xp.matrix_transpose(B))))
    score = xp.sum(coef * coef, axis=-1)
    minus_inf = xp.asarray(-xp.inf, dtype=A.dtype, device=dev)
    # taken rows keep a score of -inf: the updates below subtract finite values only
    score = xp.where(taken, minus_inf, score)
    flat_offsets = xp.arange(m, dtype=xp.int64, device=dev) * n
    for _ in range(j0, k):
        p = xp.argmax(score, axis=1)
        c_p = _take_row(coef, p, xp)
        s = xp.take(xp.reshape(score, (-1,)), flat_offsets + p, axis=0)  # finite: not taken
        w = matvec(coef, c_p)
        score = xp.where(columns[None, :] == p[:, None], minus_inf,
                         score - w * w / (1 + s)[:, None])
        safe = xp.where(s > 0, s, xp.ones_like(s))
        beta = xp.where(s > 0, (1 - 1 / xp.sqrt(1 + s)) / safe, xp.zeros_like(s))
        # a rank-1 update in place: one temporary instead of three full-size arrays
        coef -= (beta[:, None] * w)[:, :, None] * c_p[:, None, :]
        picks.append(xp.astype(p, xp.int64))
    return xp.stack(picks, axis=1)


def _lower_triangular_inverse(T, xp, leaf=16):
    """Inverses of a stack of invertible lower-triangular matrices T (m, r, r).

    Blockwise, ``inv([[A, 0], [C, D]]) = [[inv(A), 0], [-inv(D) C inv(A), inv(D)]]``,
    recursively down to blocks of ``leaf`` rows, which ``xp.linalg.inv`` takes:
    batched products instead of one LAPACK call per matrix (NumPy's stacked
    ``inv`` of (32, 77, 77) float32 took 1.9 ms, this 0.6 ms).
    """
    r = T.shape[-1]
    if r <= leaf:
        return xp.linalg.inv(T)
    h = r // 2
    upper = _lower_triangular_inverse(T[:, :h, :h], xp, leaf)
    lower = _lower_triangular_inverse(T[:, h:, h:], xp, leaf)
    out = xp.zeros(T.shape, dtype=T.dtype, device=get_namespace(T)[1])
    out[:, :h, :h] = upper
    out[:, h:, h:] = lower
    out[:, h:, :h] = -((lower @ T[:, h:, :h]) @ upper)
    return out


def _refine(A, picks, tol, max_iter, xp):
    """Maxvol swaps on the square r-subset ``picks[:, :r]`` until max |coef| <= tol."""
    m, n, r = A.shape
    dev = get_namespace(A)[1]
    columns = xp.arange(n, device=dev)
    slots = xp.arange(r, device=dev)
    square, rest = picks[:, :r], picks[:, r:]
    coef = xp.matrix_transpose(xp.linalg.solve(
        xp.matrix_transpose(take_rows(A, square, xp)), xp.matrix_transpose(A)))
    taken = xp.zeros((m, n), dtype=xp.bool, device=dev)
    for j in range(r):
        taken = _mark(taken, square[:, j], columns)
    zero = xp.zeros((), dtype=A.dtype, device=dev)
    for _ in range(max_iter):
        magnitude = xp.where(taken[:, :, None], zero, xp.abs(coef))
        flat = xp.argmax(xp.reshape(magnitude, (m, n * r)), axis=1)
        i, j = flat // r, flat % r
        c_i = _take_row(coef, i, xp)  # (m, r)
        e_j = xp.astype(slots[None, :] == j[:, None], A.dtype)
        c_ij = xp.sum(c_i * e_j, axis=-1)
        active = xp.abs(c_ij) > tol
        if not bool(xp.any(active)):
            break
        c_j = matvec(coef, e_j)  # column j of coef, (m, n)
        safe = xp.where(active, c_ij, xp.ones_like(c_ij))
        update = c_j[:, :, None] * ((c_i - e_j) / safe[:, None])[:, None, :]
        coef = coef - xp.where(active[:, None, None], update, zero)
        old = xp.sum(xp.where(slots[None, :] == j[:, None], square, xp.zeros_like(square)), axis=1)
        swap = active[:, None] & (slots[None, :] == j[:, None])
        square = xp.where(swap, xp.astype(i, square.dtype)[:, None], square)
        drop = active[:, None] & (columns[None, :] == old[:, None])
        taken = (taken & ~drop) | (active[:, None] & (columns[None, :] == i[:, None]))
    return xp.concat([square, rest], axis=1)
