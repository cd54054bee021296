"""Gram algebra of per-sample gradients: ``gram_matrix`` and the chunk quantities of GRAFT.

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
    detached,
    from_numpy,
    get_namespace,
    host_float_dtype,
    is_torch,
    on_input_device,
    scale_by_power_of_two,
    torch_cpu_view,
)
from ._ops import (
    gaussian_matrix,
    leading_vectors,
    rescale_extreme,
    rounding_level,
    take_rows,
    unit_columns,
)
from ._proxies import FactoredGradients, check_factored
from ._validation import check_array

# ------------------------------------------------------------------ gram_matrix


@on_input_device
def gram_matrix(G):
    """Gram matrix ``G @ G.T`` of per-sample gradients (of each matrix in a stack).

    Parameters
    ----------
    G : array of shape (..., n_samples, n_features) or FactoredGradients
        Per-sample gradients, one per row. For dask arrays ``K`` is a lazy
        dask array.

    Returns
    -------
    K : array of shape (..., n_samples, n_samples)
        ``K[i, j] = <g_i, g_j>``. For a :class:`FactoredGradients` it is
        ``(R @ R.T) * (H @ H.T)`` (elementwise), so the gradients are never formed.

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select.gradients import FactoredGradients, gram_matrix
    >>> F = FactoredGradients(np.array([[1.0, -1.0], [0.5, -0.5]]),
    ...                       np.array([[1.0, 1.0], [2.0, 1.0]]))
    >>> gram_matrix(F).tolist()
    [[4.0, 3.0], [3.0, 2.5]]
    """
    if isinstance(G, FactoredGradients):
        R, H, xp, _ = check_factored(G, "gram_matrix")
        (R, r_exponent), (H, h_exponent) = rescale_extreme(R, xp), rescale_extreme(H, xp)
        return _unscaled(factored_gram(R, H, R, H, xp), r_exponent + h_exponent)
    G, xp = check_array(G, "G", "gram_matrix", min_ndim=2, factored=True)
    G, exponent = rescale_extreme(detached(G, xp), xp)
    return _unscaled(G @ xp.matrix_transpose(G), exponent)


def _unscaled(K, exponent):
    """``K * 2**(-2 exponent)``: the Gram matrix of rows that were scaled by ``2**exponent``
    (entries beyond the dtype's range become inf; exact zeros stay 0, where the product
    of the unscaled rows could give inf - inf = NaN)."""
    with np.errstate(over="ignore"):
        return scale_by_power_of_two(K, -2 * exponent)


def factored_gram(R1, H1, R2, H2, xp):
    """Gram matrices ``G1 @ G2^T`` of factored gradients, ``(R1 R2^T) * (H1 H2^T)``."""
    return (R1 @ xp.matrix_transpose(R2)) * (H1 @ xp.matrix_transpose(H2))


def factored_quantities(R, H, order, xp):
    """Gram quantities of the rows ``order``, each row scaled to a peak of about 1.

    Returns ``(K, b, gg, zero, scale)``: K the Gram matrix and b = G[order] @ g of
    the scaled rows ``g_i / scale_i``, ``gg = ||g||^2``, the zero mask and
    ``scale`` (m, k). Scaling the rows first keeps the Gram entries of rows much
    smaller than the chunk's largest (residuals of 1e-20 in float32, whose squares
    are 0) in range; the in-order Cholesky errors do not change, and least-squares
    weights of the scaled rows are divided by ``scale`` to give those of the rows.
    """
    n = R.shape[-2]
    g = xp.matrix_transpose(R) @ H / n  # (m, C, d + 1), the mean gradient
    gg = xp.sum(xp.reshape(g * g, (g.shape[0], -1)), axis=-1)
    norms = xp.linalg.vector_norm(R, axis=-1) * xp.linalg.vector_norm(H, axis=-1)
    zero = xp.sqrt(gg) <= rounding_level(n, xp.max(norms, axis=-1), R.dtype, xp)
    R_sub, r_scale = _unit_peak_rows(take_rows(R, order, xp), xp)
    H_sub, h_scale = _unit_peak_rows(take_rows(H, order, xp), xp)
    scale = r_scale * h_scale
    # a row at the rounding level of the chunk's largest gradient is treated as zero: its
    # least-squares weight would be beyond any dtype's range (1 / 1e-309)
    negligible = scale <= rounding_level(n, xp.max(norms, axis=-1)[:, None], R.dtype, xp)
    R_sub = xp.where(negligible[..., None], xp.zeros_like(R_sub), R_sub)
    scale = xp.where(negligible, xp.zeros_like(scale), scale)
    K = factored_gram(R_sub, H_sub, R_sub, H_sub, xp)
    b = xp.sum((R_sub @ g) * H_sub, axis=-1)
    return K, b, gg, zero, scale


def _unit_peak_rows(X, xp):
    """X (m, k, c) with each row divided by its largest magnitude (zero rows kept); scales."""
    peak = xp.max(xp.abs(X), axis=-1)
    safe = xp.where(peak > 0, peak, xp.ones_like(peak))
    return X / safe[..., None], peak


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
            EE = _self_products(E, xp)
        largest = xp.max(xp.linalg.diagonal(EE), axis=-1)
        if bool(xp.all(largest <= _EMBEDDING_LIMIT)):  # the common case: no rescaling
            EE += 1  # in place: no (m, B, B) temporaries
            K *= EE
            return K, (f, None)
        t = _power_of_two_scale(E, xp)
        t = xp.where(t < 1, t, xp.ones_like(t))  # only large embeddings are scaled
    E = E * t[:, None, None]
    bias = (t * t)[:, None, None]
    return K * (E @ xp.matrix_transpose(E) + bias), (f, t)


def _self_products(X, xp):
    """``X @ X^T`` for a stack X (m, B, d); on the host through NumPy's symmetric product.

    NumPy's matmul computes ``X @ X^T`` of a matrix and its own transpose with
    BLAS ``syrk`` (half the products, then a copy of the triangle): 1.5x faster
    than torch's batched product on (32, 256, 512) float32 stacks, where this
    product is the largest single cost of a sampler refit. CPU torch tensors go
    through a NumPy view (no copy; the result is shared with a tensor); other
    namespaces use their own product.
    """
    view = torch_cpu_view(X) if X.dtype in (xp.float32, xp.float64) else None
    if view is not None:
        return from_numpy(np.matmul(view, np.swapaxes(view, -1, -2)), xp, None)
    return X @ xp.matrix_transpose(X)


# Squared embedding norms above this are scaled down first (float32 overflows at 2**128).
_EMBEDDING_LIMIT = 2.0**60


def _power_of_two_scale(X, xp):
    """Per matrix of a stack X (m, a, b): the power of two 2**-e with e = floor(log2(peak)).

    The exponent is clipped to [-100, 100] (representable in float32); zero
    matrices get 1. Unlike the rescaling rule of ``_ops``, which reads the peaks
    back to the host and scales only extreme arrays, this scales every chunk,
    with factors computed on X's device (no host read of the peaks).
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
    zero = xp.sqrt(gg) <= rounding_level(B, largest, K.dtype, xp)
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
    norm before each QR, which keeps float32 in range. Only when ``r + p``
    reaches ``B`` (the range would be the whole space) is the exact ``eigh`` of K
    used (largest first): even at ``r = 0.6 B`` one product and one QR cost a
    third of a batched ``eigh`` (measured on (187, 128, 128) and (94, 256, 256)
    stacks), with the same demo accuracy over 5 seeds (benchmarks/RESULTS.md).
    """
    B = K.shape[-1]
    width = min(r + n_oversamples, B)
    if width >= B:
        return leading_vectors(xp.linalg.eigh(K)[1], r, xp)
    omega = gaussian_matrix(rng, (B, width), host_float_dtype(K.dtype, xp), xp,
                            get_namespace(K)[1])
    Y = _stack_times(K, omega, xp)
    for _ in range(n_iter):
        Y = K @ xp.linalg.qr(unit_columns(Y, xp)).Q
    Q = xp.linalg.qr(unit_columns(Y, xp)).Q
    if width == r:
        return Q
    T = xp.matrix_transpose(Q) @ (K @ Q)
    T = (T + xp.matrix_transpose(T)) / 2
    return Q @ leading_vectors(xp.linalg.eigh(T)[1], r, xp)


def _stack_times(K, omega, xp):
    """``K @ omega`` for a stack K (m, B, B) and one matrix omega (B, w), as one product.

    The stack is folded into an (m B, B) matrix: one large product instead of m
    small ones. Host float torch tensors go through NumPy views (OpenBLAS): on a
    (32, 256, 256) stack and w = 77, 4.4 ms against 7.3 ms for torch's batched
    product at one thread (a tenth of a sampler refit's range finder).
    """
    m, B, _ = K.shape
    view = torch_cpu_view(K) if K.dtype in (xp.float32, xp.float64) else None
    if view is not None and view.flags.c_contiguous:
        folded = np.matmul(view.reshape(m * B, B), torch_cpu_view(omega))
        return from_numpy(folded.reshape(m, B, omega.shape[-1]), xp, None)
    return xp.reshape(xp.reshape(K, (m * B, B)) @ omega, (m, B, omega.shape[-1]))


def gram_block(K, rows, xp):
    """``K[rows][:, rows]`` of each matrix of a stack K (m, B, B), rows (m, k).

    The rows with one ``take``, then the columns: torch gathers them in place
    (``Tensor.gather``, 0.9 ms against 2.0 ms for a (32, 256, 256) stack and
    k = 154, a fifth of a sampler refit's nested errors); other namespaces take
    them from a transposed copy.
    """
    K_rows = take_rows(K, rows, xp)  # (m, k, B)
    if is_torch(xp):
        m, k = rows.shape
        return K_rows.gather(-1, xp.astype(rows, xp.int64)[:, None, :].expand(m, k, k))
    return xp.matrix_transpose(take_rows(xp.matrix_transpose(K_rows), rows, xp))


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
