"""Gram algebra of factored last-layer gradients, chunk by chunk.

For a chunk of ``B`` samples with residuals ``R`` (B, C) and embeddings ``E``
(B, d), sample ``i``'s gradient is ``g_i = R[i] ⊗ [E[i], 1]``, and every
quantity GRAFT needs comes from the chunk's Gram matrix

    K = (R R^T) ∘ (E E^T + 1)         (the ones column is implicit)

- the left singular vectors of the gradients: eigenvectors of ``K``;
- the mean-gradient products ``b = G g = K 1 / B`` and ``||g||^2 = 1^T K 1 / B^2``;
- the Gram matrix of any subset: a sub-block of ``K``.

So neither the gradients (B, C (d + 1)) nor the mean gradients (C, d + 1) are
formed. Pure functions on stacks (m, B, ...) in any array-API namespace; the
caller validates and bounds the stack size.
"""

import numpy as np

from ._backend import (
    cholesky_checked,
    from_numpy,
    get_namespace,
    solve_triangular,
    to_numpy,
)
from .gradients import _eps, _nested_gram, _relative
from .linalg import _replace_rows, _take_rows, _unit_columns


def chunk_grams(R, E, xp, scales=None):
    """Gram matrices of factored gradients, each chunk scaled by powers of two.

    For stacks R (m, B, C) and E (m, B, d) (or None), returns ``(K, scales)``
    with ``K = (R' R'^T) ∘ (E' E'^T + t^2)``, the Gram matrix of the gradients
    ``R'[i] ⊗ [E'[i], t]`` where ``R' = f R`` and ``E' = t E`` per chunk.
    ``scales = (f, t)``, two (m,) arrays of powers of two: ``f`` brings each
    chunk's largest residual to [1, 2) (float32 residuals of 1e-26, at a logit
    margin of 60, would square to 0), and ``t`` is 1 unless a chunk's
    embeddings are so large that ``E E^T`` could overflow. Each chunk's
    gradients are multiplied by ``f t``: relative errors and least-squares
    weights do not change. Pass the ``scales`` of a first call to scale other
    rows of the same chunks (a subset) the same way.
    """
    if scales is None:
        f = _power_of_two_scale(R, xp)
    else:
        f = scales[0]
    R = R * f[:, None, None]
    K = R @ xp.matrix_transpose(R)
    if E is None:
        return K, (f, None)
    t = None if scales is None else scales[1]
    if t is None:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below
            EE = E @ xp.matrix_transpose(E)
        largest = xp.max(xp.linalg.diagonal(EE), axis=-1)
        if bool(xp.all(largest <= _EMBEDDING_LIMIT)):  # the common case: no rescaling
            return K * (EE + 1), (f, None)
        t = _power_of_two_scale(E, xp)
        t = xp.where(t < 1, t, xp.ones_like(t))  # only large embeddings are scaled
    E = E * t[:, None, None]
    bias = (t * t)[:, None, None]
    return K * (E @ xp.matrix_transpose(E) + bias), (f, t)


# Squared embedding norms above this are scaled down first (float32 overflows at 2**128).
_EMBEDDING_LIMIT = 2.0**60


def _power_of_two_scale(X, xp):
    """Per matrix of a stack X (m, a, b): the power of two 2**-e with e = floor(log2(peak)).

    The exponent is clipped to [-100, 100] (representable in float32); zero
    matrices get 1.
    """
    peak = xp.max(xp.reshape(xp.abs(X), (X.shape[0], -1)), axis=-1)
    positive = peak > 0
    exponent = xp.floor(xp.log2(xp.where(positive, peak, xp.ones_like(peak))))
    exponent = xp.clip(exponent, -100, 100)
    return xp.pow(xp.full_like(peak, 2.0), -exponent)


def gram_summaries(K, xp):
    """``(b, gg, zero, norms)`` of a stack of Gram matrices K (m, B, B).

    ``b = K 1 / B`` (m, B) in K's dtype, ``gg = 1^T K 1 / B^2`` (m,) summed from
    ``b`` in float64, ``zero`` (m,) where the mean gradient is at the rounding level of
    the largest gradient (``||g|| <= B eps max_i ||g_i||``), and the gradient
    norms ``sqrt(diag K)`` (m, B).
    """
    B = K.shape[-1]
    sums = xp.sum(K, axis=-1)
    gg = xp.sum(xp.astype(sums, xp.float64), axis=-1) / (B * B)
    norms = xp.sqrt(xp.linalg.diagonal(K))
    largest = xp.astype(xp.max(norms, axis=-1), xp.float64)
    gg = xp.where(gg < 0, xp.zeros_like(gg), gg)  # NaN stays NaN for the caller's check
    zero = xp.sqrt(gg) <= B * _eps(K.dtype, xp) * largest
    return sums / B, gg, zero, norms


def gram_eigenvectors(K, r, rng, xp, *, n_oversamples=0, n_iter=0):
    """An orthonormal basis (m, B, r) of the dominant r-subspace of PSD matrices K (m, B, B).

    A randomized range finder on K: ``Y = K Omega`` (Omega Gaussian, B x (r + p),
    shared by the stack), ``n_iter`` power steps ``Y = K qr(Y)``, ``Q = qr(Y)``.
    Since ``K = G G^T``, ``K Omega`` is already one power step on the gradients G.
    With ``p = 0`` (the default) ``Q`` itself is returned: a basis of the
    subspace in no particular order, which is all MaxVol needs (its picks depend
    on the span only), for one product with K and one QR. With ``p > 0`` a
    Rayleigh-Ritz step diagonalises ``Q^T K Q`` and returns the top-r Ritz
    vectors, largest first (one more product with K). Columns are scaled to unit
    norm before each QR, which keeps float32 in range. When ``r + p`` exceeds
    ``B / 2`` the exact ``eigh`` of K is cheaper and is used (largest first).
    """
    B = K.shape[-1]
    width = min(r + n_oversamples, B)
    if 2 * width > B:
        vectors = xp.linalg.eigh(K)[1]
        return xp.flip(vectors[..., B - r:], axis=-1)
    device = get_namespace(K)[1]
    dtype = np.float32 if K.dtype == xp.float32 else np.float64
    omega = from_numpy(rng.standard_normal((B, width)).astype(dtype), xp, device)
    Y = K @ omega
    for _ in range(n_iter):
        Y = K @ xp.linalg.qr(_unit_columns(Y, xp)).Q
    Q = xp.linalg.qr(_unit_columns(Y, xp)).Q
    if width == r:
        return Q
    T = xp.matrix_transpose(Q) @ (K @ Q)
    T = (T + xp.matrix_transpose(T)) / 2
    V = xp.linalg.eigh(T)[1]
    return Q @ xp.flip(V[..., width - r:], axis=-1)


def gram_block(K, rows, xp):
    """``K[rows][:, rows]`` of each matrix of a stack K (m, B, B), rows (m, k)."""
    K_rows = _take_rows(K, rows, xp)  # (m, k, B)
    return xp.matrix_transpose(_take_rows(xp.matrix_transpose(K_rows), rows, xp))


def nested_errors(K, b, gg, zero, order, n_columns, xp):
    """Relative errors (m, k) of every prefix of ``order`` (m, k), from the Gram stack.

    The in-order Cholesky of ``K[order][:, order]`` with right-hand side
    ``b[order]`` (see ``gradients.nested_gradient_errors``); ``n_columns`` is
    ``C + d + 1``, which sets the dependence tolerance as there.
    """
    k = order.shape[-1]
    K_sub = gram_block(K, order, xp)
    b_sub = _take_rows(b[..., None], order, xp)[..., 0]
    tol = 10 * max(k, n_columns) * _eps(K.dtype, xp)
    errors = _nested_gram(K_sub, b_sub, gg, zero, tol, xp)
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
    rtol = 10 * max(k, n_columns) * _eps(K_sub.dtype, xp)
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
        index = from_numpy(bad, xp, get_namespace(K_sub)[1])
        fallback = _pinv_solve(xp.take(K_sub, index, axis=0), xp.take(b_sub, index, axis=0),
                               rtol, xp)
        w = _replace_rows(w, bad, fallback, xp)
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


def maxvol_rank(k_hi, uniform_share):
    """Largest number of MaxVol picks any subset size up to ``k_hi`` takes.

    A chunk keeping ``k`` rows takes ``k - round(uniform_share * k)`` of them from
    the MaxVol order (all of them when ``k == 1``); the factor needs no larger rank.
    """
    k = np.arange(1, int(k_hi) + 1)
    uniform = np.where(k > 1, np.round(uniform_share * k), 0)
    return max(1, int(np.max(k - uniform)))


def group_chunks(n_chunks, rows_per_chunk, max_rows):
    """Split ``n_chunks`` equal chunks into consecutive groups of at most ``max_rows`` rows."""
    step = max(1, max_rows // max(1, rows_per_chunk))
    return [(s, min(s + step, n_chunks)) for s in range(0, n_chunks, step)]
