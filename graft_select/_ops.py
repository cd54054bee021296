"""The shared floor of the kernels: row takes, matvecs, one rescaling rule, one range finder.

Small operations on stacks of matrices (leading dimension ``m``) written against
an array namespace ``xp``, which ``linalg``, the MaxVol and SVD bodies, the Gram
algebra and the criterion all use. Each is defined here once, so that the
kernels agree on them to the last bit.
"""

import math

import numpy as np

from ._backend import from_numpy, get_namespace
from ._validation import float_info

__all__ = [
    "eps",
    "matvec",
    "replace_rows",
    "rmatvec",
    "take_host_rows",
    "take_rows",
    "unit_columns",
]


def eps(dtype, xp):
    """Machine epsilon of the float dtype the kernels compute in, as a Python float."""
    return float(float_info(dtype, xp).eps)


# ------------------------------------------------------------------- row takes


def take_rows(X, idx, xp):
    """Rows ``X[..., idx, :]`` for X (..., n, c): idx (k,) for every matrix, or (..., k) each.

    Per-matrix rows are read from the flattened stack with one ``take`` (the
    array API has no batched gather).
    """
    if idx.ndim == 1:
        return xp.take(X, idx, axis=X.ndim - 2)
    *stack, n, c = X.shape
    m = math.prod(stack)
    k = idx.shape[-1]
    device = get_namespace(X)[1]
    offsets = xp.arange(m, dtype=xp.int64, device=device)[:, None] * n
    flat = xp.reshape(offsets + xp.reshape(xp.astype(idx, xp.int64), (m, k)), (-1,))
    rows = xp.take(xp.reshape(X, (m * n, c)), flat, axis=0)
    return xp.reshape(rows, (*stack, k, c))


def take_host_rows(X, rows, xp):
    """``X[rows]`` along the first axis, for host integer ``rows`` (a list or NumPy array)."""
    index = from_numpy(np.asarray(rows, dtype=np.int64), xp, get_namespace(X)[1])
    return xp.take(X, index, axis=0)


def replace_rows(X, rows, new, xp):
    """X with its rows ``rows`` (host integers, along the first axis) replaced by ``new``.

    The array API has no integer-array assignment: the kept rows and the new ones
    are concatenated and put back in order with one ``take``.
    """
    keep = np.setdiff1d(np.arange(X.shape[0]), rows)
    stacked = xp.concat([new, take_host_rows(X, keep, xp)], axis=0)
    return take_host_rows(stacked, np.argsort(np.concatenate([rows, keep])), xp)


# --------------------------------------------------------------------- matvecs


def matvec(M, v):
    """Batched ``M @ v`` for M (m, a, b) and v (m, b)."""
    if M.shape[0] == 1:  # a plain matrix-vector product (gemv) is cheaper than a stack of one
        return (M[0, ...] @ v[0, ...])[None, ...]
    return (M @ v[..., None])[..., 0]


def rmatvec(M, v):
    """Batched ``M.T @ v`` for M (m, a, b) and v (m, a)."""
    return (v[..., None, :] @ M)[..., 0, :]


def unit_columns(Y, xp):
    """Y with every column scaled to unit norm (zero columns stay zero)."""
    norms = xp.linalg.vector_norm(Y, axis=-2, keepdims=True)
    return Y / xp.where(norms > 0, norms, xp.ones_like(norms))
