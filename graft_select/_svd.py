"""The body of `linalg.low_rank_features`: exact, sparse and randomized factors.

For arguments `linalg.low_rank_features` has checked, or that an internal
caller (the selector's orders) built itself.
"""

import numpy as np

from ._backend import is_sparse
from ._ops import range_finder

__all__ = ["low_rank_features_unchecked"]


def low_rank_features_unchecked(X, r, xp, *, method="auto", n_oversamples=10, n_iter=2,
                                rng=None):
    """The first ``r`` left singular vectors of X, for checked arguments.

    X is a float stack (or a sparse matrix, with ``xp`` NumPy's namespace) whose
    magnitudes are in range (see ``_ops.rescale_extreme``), ``rng`` a NumPy
    generator; ``method`` is "auto", "exact" or "randomized" (see
    `linalg.low_rank_features`).
    """
    n_samples, n_features = X.shape[-2:]
    sparse = is_sparse(X)
    if method == "auto":
        small = 2 * (r + n_oversamples) <= min(n_samples, n_features)
        method = "randomized" if sparse or small else "exact"
    if method == "exact":
        return _sparse_svds(X, r) if sparse else _exact_svd(X, r, xp)
    return range_finder(X, r, n_oversamples, n_iter, rng, xp)


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
