"""The body of `linalg.fast_maxvol`: greedy volume and LU pivots, rectangular MaxVol, swaps.

For arguments `linalg.fast_maxvol` has checked, or that an internal caller (the
selector's orders) built itself. Stacks (m, n, r) are processed in batched
steps; on the host, in cache-sized groups of matrices.
"""

import math

import numpy as np

from ._backend import (
    as_contiguous,
    from_numpy,
    get_namespace,
    host_float_dtype,
    is_numpy,
    lu_pivot_rows,
    on_host,
    to_numpy,
    torch_cpu_view,
)
from ._ops import (
    matvec,
    replace_rows,
    rmatvec,
    rounding_level,
    scale_to_unit_peak,
    take_host_rows,
    take_rows,
)
from ._validation import check_finite, float_info

__all__ = ["fast_maxvol_unchecked"]


def fast_maxvol_unchecked(A, k, *, method="volume", refine=False, tol=1.05, max_iter=None):
    """Indices of ``k`` rows of maximal volume of each matrix of A, for checked arguments.

    A is a float stack (..., n, r) with n >= r, and ``method``, ``refine``,
    ``tol`` and ``max_iter`` are as `linalg.fast_maxvol` checks them. The
    parameters are not checked again; A's finiteness is, from the squared row
    norms the greedy computes anyway (one reduction, no extra pass).
    """
    owner = "fast_maxvol"
    view = torch_cpu_view(A)
    if view is not None:
        # CPU tensors run the step-by-step greedy through a NumPy view of the same memory.
        xp, device = get_namespace(A)
        indices = fast_maxvol_unchecked(view, k, method=method, refine=refine, tol=tol,
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
    A, _ = scale_to_unit_peak(A, peak)
    return A, xp.vecdot(A, A, axis=-1)


# In host memory, a stack is processed by the volume rule in groups of matrices that fit
# in cache: every greedy step reads the whole group, and a group of a few MiB stays in
# cache between steps where a stack of tens of MiB is read from memory each time. On an
# accelerator one batched call over the whole stack is best.
_HOST_GROUP_BYTES = 4 << 20


def _group_size(A, m, n, r):
    if not on_host(A):
        return m
    itemsize = 4 if host_float_dtype(A.dtype, get_namespace(A)[0]) == np.float32 else 8
    return max(1, _HOST_GROUP_BYTES // (n * r * itemsize))


def _maxvol_stack(A, sq_norms, k, method, refine, tol, max_iter, xp):
    _, n, r = A.shape
    k_greedy = min(k, r)
    threshold = rounding_level(max(n, r), xp.sqrt(xp.max(sq_norms, axis=-1)), A.dtype, xp)
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
            stack, start = take_host_rows(A, full, xp), take_host_rows(picks, full, xp)
            ok = _invertible_squares(stack, start, take_host_rows(threshold, full, xp), xp)
            if not ok.all():  # rare: gather again only the matrices to refine
                keep = np.flatnonzero(ok)
                full = full[keep]
                stack, start = take_host_rows(stack, keep, xp), take_host_rows(start, keep, xp)
        if full.size:
            refined = _refine(stack, start, tol, max_iter, xp)
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
    With ``coordinates``, also returns ``C`` (m, k, n): ``C[:, j, i]`` is row
    ``i``'s coordinate along the ``j``-th direction (see `_extend_greedy`).

    Each step costs one matrix-vector product with ``A`` (the coordinates ``c =
    A q`` of every row along the new direction ``q``) and one with the ``j``
    directions found so far: the chosen row's coordinates along them are
    ``c_0[p], ..., c_{j-1}[p]``, read from the stored coordinates rather than
    recomputed, and its residual ``v = a_p - sum_i c_i[p] q_i`` is formed
    explicitly (its norm decides the rank, to rounding accuracy). The chosen
    rows are excluded by setting their residual to -inf. The coordinates are
    stored direction by direction (rows of ``C``): each step writes one
    contiguous row instead of a column of stride ``k``.
    """
    m, n, r = A.shape
    dev = get_namespace(A)[1]
    columns = xp.arange(n, device=dev)[None, :]
    d = xp.vecdot(A, A, axis=-1) if sq_norms is None else sq_norms
    minus_inf = xp.asarray(-xp.inf, dtype=A.dtype, device=dev)
    plus_inf = xp.asarray(xp.inf, dtype=A.dtype, device=dev)
    basis = xp.zeros((m, k, r), dtype=A.dtype, device=dev)  # row j: the j-th direction
    coords = xp.zeros((m, k, n), dtype=A.dtype, device=dev)  # row j: A @ basis[j]
    picks = []
    start = 0 if init is None else init.shape[1]
    if start:
        q0 = xp.linalg.qr(xp.matrix_transpose(take_rows(A, init, xp))).Q  # (m, r, start)
        basis[:, :start, :] = xp.matrix_transpose(q0)
        coords[:, :start, :] = xp.matrix_transpose(A @ q0)
        d = d - xp.sum(coords[:, :start, :] ** 2, axis=-2)
        for j in range(start):
            d = xp.where(columns == init[:, j : j + 1], minus_inf, d)
            picks.append(xp.astype(init[:, j], xp.int64))
    flat_A = xp.reshape(A, (m * n, r))
    flat_coords = xp.reshape(coords, (-1,))
    offsets = xp.arange(m, dtype=xp.int64, device=dev) * n
    at_row = _row_entries(m, k, n, xp, dev)  # + p: the entries C[b, :, p[b]] in flat_coords
    residuals = []
    for j in range(start, k):
        p = xp.astype(xp.argmax(d, axis=1), xp.int64, copy=False)
        rows = offsets + p
        v = xp.take(flat_A, rows, axis=0)  # (m, r), the chosen row
        if j:
            earlier = _take_flat(flat_coords, at_row[:, :j] + p[:, None], xp)  # C[:, :j, p]
            v = v - rmatvec(basis[:, :j, :], earlier)
        norm = xp.sqrt(xp.vecdot(v, v, axis=-1))
        residuals.append(norm)
        # a residual at the threshold adds no direction (q = 0); rank is found after the loop
        q = v / xp.where(norm > threshold, norm, plus_inf)[:, None]
        basis[:, j, :] = q
        c = matvec(A, q)
        coords[:, j, :] = c
        d = _excluded(d - c * c, rows, columns, p, minus_inf, xp)
        picks.append(p)
    rank = np.full(m, k, dtype=np.int64)
    if residuals:
        above = to_numpy(xp.stack(residuals, axis=1) > threshold[:, None])
        rank = start + _leading_count(above)
    picks = xp.stack(picks, axis=1)
    return (picks, rank, coords) if coordinates else (picks, rank)


def _take_flat(flat, index, xp):
    """``flat[index]`` for a 1-D array ``flat`` and integer ``index`` of any shape."""
    return xp.reshape(xp.take(flat, xp.reshape(index, (-1,)), axis=0), index.shape)


def _row_entries(m, k, n, xp, device):
    """Flat offsets (m, k) of ``X[b, t, 0]`` in a C-ordered (m, k, n) stack X.

    Adding ``p[:, None]`` gives those of ``X[b, t, p[b]]``: one ``take`` reads
    each matrix's column ``p[b]``.
    """
    matrices = xp.arange(m, dtype=xp.int64, device=device)[:, None] * (k * n)
    return matrices + xp.arange(k, dtype=xp.int64, device=device)[None, :] * n


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

    The same picks as `_extend` (in exact arithmetic), from what the greedy left
    (``coords`` (m, k_greedy, n), rows along the directions): with ``T`` the
    coordinates of the picks (r x r, lower triangular with the residual norms on
    its diagonal, since every direction is orthogonal to the rows chosen before
    it), the coefficients are ``C = A @ inv(A[picks]) = coords^T @ inv(T)``: a
    triangular inverse and a product instead of a QR and a solve. Row ``i``'s
    score is ``s_i = c_i^T M c_i`` with ``M = inv(C[S]^T C[S])`` over the rows
    ``S`` chosen so far (``M = I`` at the start, since ``C[picks] = I``); adding
    row ``p`` downdates the scores by ``w^2 / (1 + s_p)`` with ``w = C M c_p``.
    The steps never update ``C`` (an (n, r) rank-1 update each); they form ``w``
    one of two ways, `_gram_steps` or `_inverse_steps`, each of which returns the
    function ``step(j, p, rows, 1 / (1 + s_p)) -> w`` of the loop here (the same
    picks either way).
    """
    m, r, n = A.shape[0], A.shape[2], A.shape[1]
    dev = get_namespace(A)[1]
    columns = xp.arange(n, device=dev)[None, :]
    steps = k - r
    rows_r = coords[:, :r, :]  # (m, r, n)
    at_coords = _row_entries(m, coords.shape[1], n, xp, dev)[:, :r]
    # T^T[b, t, a] = coords[b, t, picks[b, a]]: upper triangular
    T_t = _take_flat(xp.reshape(coords, (-1,)), at_coords[:, :, None] + picks[:, None, :], xp)
    # an inverse (r^3) and a product: a batched general solve with n right-hand sides is 3x
    # slower
    inverse_t = xp.matrix_transpose(_lower_triangular_inverse(xp.matrix_transpose(T_t), xp))
    coef = inverse_t @ rows_r  # C^T (m, r, n)
    minus_inf = xp.asarray(-xp.inf, dtype=A.dtype, device=dev)
    taken = xp.any(columns[:, :, None] == picks[:, None, :], axis=-1)  # (m, n)
    score = xp.where(taken, minus_inf, xp.sum(coef * coef, axis=-2))
    # the same greedy loop for both ways of forming w: `_gram_steps` or `_inverse_steps`
    step = (_gram_steps if n <= 4 * min(r, steps) else _inverse_steps)(coef, steps, xp)
    offsets = xp.arange(m, dtype=xp.int64, device=dev) * n
    new = []
    for j in range(steps):
        p = xp.astype(xp.argmax(score, axis=1), xp.int64, copy=False)
        rows = offsets + p
        s = xp.take(xp.reshape(score, (-1,)), rows, axis=0)  # finite: not taken
        inverse = 1 / (1 + s)
        w = step(j, p, rows, inverse)
        score = _excluded(score - w * w * inverse[:, None], rows, columns, p, minus_inf, xp)
        new.append(p)
    return xp.concat([xp.astype(picks, xp.int64), xp.stack(new, axis=1)], axis=1)


def _gram_steps(coef, steps, xp):
    """`_extend_greedy`'s ``w`` read from ``H = C C^T``, formed once.

    With ``H``'s diagonal the scores, adding row ``p`` downdates ``H`` by ``w w^T
    / (1 + s_p)`` with ``w = H[:, p]``, so each step forms ``w = H[p] - sum_t w_t
    w_t[p] / (1 + s_t)`` from the stored ``w_t`` (kept as rows, ``(m, steps, n)``:
    the products read the ``w_t`` found so far in place and each step writes one
    contiguous row). ``H`` has ``m n^2`` entries, at most 4 times those of A
    where this runs (``n <= 4 min(r, steps)``): at the sizes of a refit (32
    chunks of 256 rows, r = 77, 77 steps) 18 ms against 24 for `_inverse_steps`,
    whose per-step products do not amortise at such sizes.
    """
    m, _, n = coef.shape
    dev = get_namespace(coef)[1]
    H = xp.matrix_transpose(coef) @ coef  # (m, n, n)
    flat_H = xp.reshape(H, (m * n, n))
    downdates = xp.zeros((m, steps, n), dtype=coef.dtype, device=dev)  # row t: w_t
    flat_downdates = xp.reshape(downdates, (-1,))
    at_downdates = _row_entries(m, steps, n, xp, dev)
    scale = xp.zeros((m, steps), dtype=coef.dtype, device=dev)  # 1 / (1 + s_t)

    def step(j, p, rows, inverse):
        w = xp.take(flat_H, rows, axis=0)
        if j:
            earlier = _take_flat(flat_downdates, at_downdates[:, :j] + p[:, None], xp)
            w = w - rmatvec(downdates[:, :j, :], earlier * scale[:, :j])
        downdates[:, j, :] = w
        scale[:, j] = inverse
        return w

    return step


def _inverse_steps(coef, steps, xp):
    """`_extend_greedy`'s ``w`` keeping ``M = inv(C[S]^T C[S])`` (r x r) up to date.

    Each step: ``u = M c_p``, ``w = C u`` (one product with ``C``, O(n r)), and
    the Sherman-Morrison downdate ``M -= u u^T / (1 + s_p)`` (O(r^2)); no step
    depends on the number of steps before it, where `_gram_steps`' products
    with the stored ``w_t`` grow with it. One chunk of 4096 rows, r = 64, 512
    picks (``chunk_size=4096`` at fraction 1/8, or a tree's root pool): 40 ms
    against 147 for the stored downdates (which also held a (steps, n) array).
    """
    m, r, n = coef.shape
    dev = get_namespace(coef)[1]
    flat_coef = xp.reshape(coef, (-1,))
    at_row = _row_entries(m, r, n, xp, dev)  # + p: the entries C^T[b, :, p[b]]
    M = xp.zeros((m, r, r), dtype=coef.dtype, device=dev)
    M = M + xp.eye(r, dtype=coef.dtype, device=dev)  # C[picks] = I

    def step(j, p, rows, inverse):
        nonlocal M
        u = matvec(M, _take_flat(flat_coef, at_row + p[:, None], xp))  # (m, r)
        M = M - (u * inverse[:, None])[:, :, None] * u[:, None, :]
        return rmatvec(coef, u)  # w (m, n)

    return step


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


def _invertible_squares(A, picks, threshold, xp):
    """Which matrices of the stack ``A`` have an invertible square of picks (host bool).

    The greedy phase counts a pivot above the rounding level as a direction, but
    a matrix of exact rank below ``r`` can leave its last LU pivot a few roundings
    above it while the square of its picked rows is singular to working precision:
    refining it would solve with that square. Its smallest singular value decides
    (at most the rounding level of the square's largest: rank deficient, left
    unrefined, as a matrix whose greedy phase found fewer directions).
    """
    r = A.shape[-1]
    values = to_numpy(xp.linalg.svdvals(take_rows(A, picks[:, :r], xp)))
    limit = to_numpy(threshold)
    return values[:, -1] > np.maximum(limit, r * np.finfo(values.dtype).eps * values[:, 0])


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
