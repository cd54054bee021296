"""The in-memory source of a selection: orders and errors of arrays held in memory.

`InMemorySource` is one of the three sources the estimators' recipe reads (the
others: `_feedback.StoreSource` over a feedback store, `_dask.DaskSource` block
by block). For every stack of equal chunks (see `_selection.stack_groups`): a low-rank
factor of the chunks' rows of ``X``, or of their gradient proxies -> the Fast
MaxVol order -> with gradients, the nested errors of the order's prefixes (the
size criterion). After the sizes and picks (`_selection`), ``subset_errors``
gives the chosen subsets' errors and least-squares weights.

Namespace generic: ``X`` and the gradients stay in their namespace and on their
device; orders and errors come back as host NumPy arrays. `_dask` runs
``stack_order`` on each block where it lives. The hyperparameters come in a
`_selection.SelectionParams`; the generator is passed explicitly.
"""

import numpy as np

from ._backend import from_numpy, get_namespace, is_sparse, to_numpy
from ._criterion import gradient_error_unchecked, nested_gradient_errors_unchecked
from ._gram import factored_gram, maxvol_rank
from ._maxvol import fast_maxvol_unchecked
from ._ops import rescale_extreme, rounding_level
from ._proxies import FactoredGradients
from ._selection import child_rng, rank, stack_groups
from ._svd import low_rank_features_unchecked


class InMemorySource:
    """Rows of ``X`` and their gradient proxies, in memory (NumPy, sparse, torch, CuPy).

    Parameters
    ----------
    X : array or sparse matrix of shape (n_samples, n_features)
        Checked rows (see ``GraftSelector._validate_X``); rescaled here by a
        power of two when their magnitudes would over- or underflow in Gram
        matrices (an exact rescale: the selection does not change).
    xp : namespace
        The array namespace of ``X``.
    gradients : array, FactoredGradients or None
        Checked gradient proxies, one row per row of ``X``.
    """

    #: Per chunk a uniform order drawn in the first pass, or None: this source draws
    #: none (the check draws its uniform subsets after the picks; see
    #: ``selector._maxvol_or_uniform``).
    uniform_orders = None

    def __init__(self, X, xp, gradients):
        self.X, self.xp, self.gradients = rescale_extreme(X, xp)[0], xp, gradients
        self.n_samples = int(X.shape[0])
        self.n_features = int(X.shape[1])
        self.with_gradients = gradients is not None
        self._device = None if is_sparse(X) else get_namespace(X)[1]

    def orders(self, params, chunks, k_hi, rng):
        """Per chunk its selection order and, with gradients, its prefixes' errors."""
        return chunk_orders(params, self.X, self.xp, self.gradients, chunks, k_hi, rng)

    def picked_errors(self, chunks, local, with_weights):
        """Per chunk the gradient error of its subset, and the weights (or None)."""
        errors, weights = subset_errors(self.gradients, chunks, local)
        return errors, weights if with_weights else None

    def output(self, values):
        """A host array of results in the namespace and on the device of ``X``."""
        return from_numpy(values, self.xp, self._device)


def chunk_orders(params, X, xp, gradients, chunks, k_hi, rng):
    """Per chunk its order (host int64, None for the uniform strategy) and nested errors.

    ``k_hi`` is the length of each chunk's order (`_selection.largest_sizes`);
    the errors list is empty without gradients. One child generator is drawn
    from ``rng`` per stack of equal chunks.
    """
    orders, errors = [], []
    for begin, stop, count in stack_groups(chunks):
        group_hi = int(k_hi[count[0]:count[1]].max())
        order = stack_order(params, X, xp, gradients, begin, stop, count, group_hi, rng)
        orders.extend(order)
        if gradients is not None and order[0] is not None:
            errors.extend(prefix_errors(gradients, begin, stop, order))
    return orders, errors


def prefix_errors(gradients, begin, stop, order):
    """Nested errors (host float64) of the orders' prefixes of one stack of chunks."""
    xp, device = namespace_of(gradients)
    errs = nested_gradient_errors_unchecked(stack_rows(gradients, begin, stop, len(order)),
                                   from_numpy(np.stack(order), xp, device), xp)
    return np.asarray(to_numpy(errs), dtype=np.float64)


def stack_order(params, X, xp, gradients, begin, stop, count, k_hi, rng):
    """MaxVol order (list of host int arrays, one per chunk) for one stack of chunks."""
    m = count[1] - count[0]
    if params.strategy == "uniform":
        return [None] * m
    child = child_rng(rng)  # one draw per stack, whatever the factor (dask relies on it)
    if params.basis == "gradients":
        U = gradient_factor(params, gradients, begin, stop, m, k_hi, child)
    elif is_sparse(X):
        U = sparse_factors(params, X, begin, stop, m, k_hi, child)
    else:
        Xs = xp.reshape(X[begin:stop, ...], (m, (stop - begin) // m, X.shape[1]))
        r = rank(params, Xs.shape[1], Xs.shape[2], k_hi)
        U = low_rank_features_unchecked(Xs, r, xp, method=params.svd_method, rng=child)
    return maxvol_order(params, U, k_hi, child, with_tail=gradients is not None)


def maxvol_order(params, U, k_hi, rng, with_tail):
    """Selection order of a stack of factors U (m, n, r): host int64 arrays, one per chunk.

    A chunk keeping ``k`` rows takes its first ``k - round(uniform_share * k)``
    rows from this order, so only ``k_pivots = maxvol_rank(k_hi, uniform_share)``
    rows are MaxVol pivots. ``with_tail`` (the size criterion needs an error
    for every size up to ``k_hi``) appends ``k_hi - k_pivots`` other rows in a
    uniformly random order drawn from ``rng``: like the uniform share of the
    subsets, they are typical rows, so the nested errors of the whole order
    follow those of the subsets the chunks will keep. The factor's rank may
    be below ``k_pivots`` (see `_selection.rank`): the pivots beyond it are those
    of rectangular MaxVol.
    """
    k_pivots = min(k_hi, maxvol_rank(k_hi, params.uniform_share))
    if params.refine and k_pivots < U.shape[-1]:
        U = U[..., :k_pivots]
    order = to_numpy(fast_maxvol_unchecked(U, k_pivots, method=params.method,
                                           refine=params.refine))
    order = order.astype(np.int64, copy=False)
    if with_tail and k_pivots < k_hi:
        keys = rng.random((order.shape[0], U.shape[-2]))
        np.put_along_axis(keys, order, np.inf, axis=1)
        tail = np.argsort(keys, axis=1, kind="stable")[:, : k_hi - k_pivots]
        order = np.concatenate([order, tail], axis=1)
    return list(order)


# ----------------------------------------------------------------------- factors


def sparse_factors(params, X, begin, stop, m, k_hi, rng):
    """Left singular vectors of sparse chunks, from their (small, dense) Gram matrices.

    The left singular vectors of a chunk X_c are the eigenvectors of
    X_c X_c^T, so the chunks are never densified: only their
    ``size x size`` Gram matrices are, and those go through the kernels as
    one stack.
    """
    size = (stop - begin) // m
    r = rank(params, size, X.shape[1], k_hi)
    gram = block_grams(X[begin:stop], m, size)
    return gram_factor(params, gram, r, np, rng)


def block_grams(X, m, size):
    """The Gram matrices X_c X_c^T of m consecutive sparse chunks, as a dense (m, size, size).

    One sparse product: each chunk's columns are moved to a block of their own, so
    the product is block diagonal and holds exactly the chunks' Gram matrices.
    """
    import scipy.sparse

    X = scipy.sparse.csr_matrix(X)
    d = X.shape[1]
    chunk_of_entry = np.repeat(np.arange(X.shape[0]) // size, np.diff(X.indptr))
    shifted = scipy.sparse.csr_matrix(
        (X.data, X.indices + chunk_of_entry * d, X.indptr), shape=(X.shape[0], m * d))
    product = (shifted @ shifted.T).tocoo()
    gram = np.zeros((m, size, size), dtype=X.dtype)
    gram[product.row // size, product.row % size, product.col % size] = product.data
    return gram


def gram_factor(params, gram, r, xp, rng):
    """Top-r eigenvectors of a stack of Gram matrices (= left singular vectors)."""
    size = gram.shape[-1]
    if params.svd_method == "randomized" or (
            params.svd_method == "auto" and 2 * (r + 10) <= size):
        gram, _ = rescale_extreme(gram, xp)
        return low_rank_features_unchecked(gram, r, xp, method="randomized", rng=rng)
    vectors = xp.linalg.eigh(gram)[1]
    return xp.flip(vectors[..., size - r:], axis=-1)


def without_noise(U, gram, xp):
    """U with the columns beyond the numerical rank of ``gram`` set to zero.

    A column whose Rayleigh quotient is at the rounding level of the Gram
    matrix (``size * eps`` times the largest) is rounding noise: softmax
    residuals have rank ``C - 1``, so proxies of ``C (d + 1)`` columns span at
    most ``(C - 1) (d + 1)`` dimensions, and a factor of a higher rank holds
    directions that two roundings of the same rows (dense ``G G^T`` and
    factored ``(R R^T) * (H H^T)``) fill differently. MaxVol takes no pivot
    from a zero column, so both forms select the same rows.
    """
    values = xp.sum(U * (gram @ U), axis=-2)  # (m, r)
    top = xp.max(xp.abs(values), axis=-1, keepdims=True)
    noise = values <= rounding_level(gram.shape[-1], top, gram.dtype, xp)
    return xp.where(noise[..., None, :], xp.zeros_like(U), U)


def gradient_factor(params, gradients, begin, stop, m, k_hi, rng):
    """Left singular vectors of a stack of chunks' gradient proxies (dense or factored).

    Both forms go through the same computation: the eigenvectors of the chunks'
    Gram matrices (`gram_factor`), ``G G^T`` for dense proxies and ``(R R^T) *
    (H H^T)`` for factored ones, with the same random draws. So the same
    proxies select the same rows whichever form they come in, up to the
    rounding of the two Gram matrices (the dense form would otherwise take a
    randomized or exact SVD of ``G``, another approximation of the same
    subspace, and select other rows where the singular values are close);
    the factor's directions beyond the numerical rank are zeroed
    (`without_noise`).
    """
    G = stack_rows(gradients, begin, stop, m)
    size = (stop - begin) // m
    if isinstance(G, FactoredGradients):
        xp, _ = get_namespace(G.residuals)
        r = rank(params, size, G.residuals.shape[-1] * G.inputs.shape[-1], k_hi)
        # Left singular vectors of the wide proxies = eigenvectors of their Gram (the
        # body of gram_matrix: the fit checked the factors)
        R, H = G
        gram = factored_gram(R, H, R, H, xp)
    else:
        xp, _ = get_namespace(G)
        r = rank(params, size, G.shape[-1], k_hi)
        gram = G @ xp.matrix_transpose(G)
    return without_noise(gram_factor(params, gram, r, xp, rng), gram, xp)


# ------------------------------------------------------------------ subset errors


def subset_errors(gradients, chunks, local):
    """Per-chunk relative gradient error and weights (times chunk size) of the subsets."""
    xp, device = namespace_of(gradients)
    errors = np.zeros(len(chunks))
    weights = [None] * len(chunks)
    keys = sorted({(stop - begin, len(lo)) for (begin, stop), lo in zip(chunks, local)})
    for size, k in keys:
        members = [c for c, ((b, s), lo) in enumerate(zip(chunks, local))
                   if s - b == size and len(lo) == k]
        G = gather_chunks(gradients, [chunks[c] for c in members])
        idx = from_numpy(np.stack([local[c] for c in members]), xp, device)
        err, w = gradient_error_unchecked(G, idx, xp)
        err, w = to_numpy(err), to_numpy(w)
        for j, c in enumerate(members):
            errors[c] = float(err[j])
            weights[c] = np.asarray(w[j], dtype=np.float64) * size
    return errors, np.concatenate(weights)


# ----------------------------------------------------------------------- helpers


def stack_rows(gradients, begin, stop, m):
    """Rows ``begin:stop`` of dense or factored gradients as a stack of ``m`` chunks."""
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(
            stack_rows(gradients.residuals, begin, stop, m),
            stack_rows(gradients.inputs, begin, stop, m))
    xp, _ = get_namespace(gradients)
    return xp.reshape(gradients[begin:stop, ...], (m, (stop - begin) // m, gradients.shape[-1]))


def gather_chunks(gradients, bounds):
    """The chunks ``bounds`` of equal size of dense or factored gradients, stacked."""
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(gather_chunks(gradients.residuals, bounds),
                                 gather_chunks(gradients.inputs, bounds))
    xp, _ = get_namespace(gradients)
    return xp.stack([gradients[b:s, ...] for b, s in bounds])


def namespace_of(gradients):
    """(namespace, device) of dense or factored gradients."""
    if isinstance(gradients, FactoredGradients):
        return get_namespace(gradients.residuals)
    return get_namespace(gradients)
