"""Per-sample gradient proxies and the gradient-approximation criterion of GRAFT.

The proxies are the closed-form gradients of each sample's loss with respect to
the last linear layer (weight and bias), computed from the logits, the targets
and the penultimate embeddings, without a backward pass. The criterion measures
how well the gradients of a subset of a chunk span the chunk's mean gradient.

Everything is written against the array API: results are in the inputs'
namespace and on their device, and stacks of chunks (leading dimensions) are
processed in one batched call.
"""

import math
import numbers
from typing import Any, NamedTuple

import numpy as np

from ._backend import (
    cholesky_checked,
    from_numpy,
    get_namespace,
    is_torch,
    on_input_device,
    solve_triangular,
    to_numpy,
)
from ._validation import (
    check_array,
    check_bool,
    check_int,
    check_option,
    check_random_state,
    float_info,
    half_dtype,
)
from .linalg import _matvec, _rmatvec, _take_rows

__all__ = [
    "FactoredGradients",
    "gradient_error",
    "gram_matrix",
    "last_layer_gradients",
    "nested_gradient_errors",
]

_LOSSES = ("cross_entropy", "mse")


# ------------------------------------------------------------ FactoredGradients


class FactoredGradients(NamedTuple):
    """Per-sample last-layer gradients kept as their two factors.

    Sample ``i``'s gradient is the outer product ``residuals[i] ⊗ inputs[i]``
    flattened row-major, ``g_i[c * (d + 1) + j] = residuals[i, c] * inputs[i, j]``;
    it is never formed unless :meth:`materialize` is called. Returned by
    :func:`last_layer_gradients` with ``factored=True`` and accepted by
    :func:`gram_matrix`, :func:`nested_gradient_errors` and :func:`gradient_error`,
    which then work from Gram quantities only.

    Parameters
    ----------
    residuals : array of shape (..., n_samples, C)
        ``softmax(z) - onehot(y)`` for cross-entropy, ``yhat - y`` for squared
        error: the gradient of the loss with respect to the logits.
    inputs : array of shape (..., n_samples, d + 1)
        The embeddings with a column of ones appended (the bias input), or only
        the column of ones when no embeddings were given.

    Notes
    -----
    ``len()`` of a FactoredGradients is 2 (it is a tuple of two arrays); use
    :attr:`n_samples` for the number of samples.

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select.gradients import FactoredGradients
    >>> F = FactoredGradients(np.array([[1.0, -1.0]]), np.array([[2.0, 1.0]]))
    >>> F.n_samples, F.n_features
    (1, 4)
    >>> F.materialize().tolist()
    [[2.0, 1.0, -2.0, -1.0]]
    """

    residuals: Any
    inputs: Any

    @property
    def n_samples(self):
        """Number of samples (rows), ``residuals.shape[-2]``."""
        return self.residuals.shape[-2]

    @property
    def n_features(self):
        """Length ``C * (d + 1)`` of one flattened gradient."""
        return self.residuals.shape[-1] * self.inputs.shape[-1]

    def materialize(self):
        """Form the gradients: an array of shape (..., n_samples, C * (d + 1)).

        Row ``i`` is ``residuals[i] ⊗ inputs[i]`` flattened row-major over
        ``(C, d + 1)``, which is the layout of ``[weight, bias[:, None]]`` of a
        ``torch.nn.Linear(d, C)`` layer, flattened.

        Returns
        -------
        G : array of shape (..., n_samples, C * (d + 1))
            The dense per-sample gradients, in the factors' namespace and device.
        """
        R, H, xp, _ = _check_factored(self, "FactoredGradients.materialize", name="")
        outer = R[..., :, None] * H[..., None, :]
        return xp.reshape(outer, (*outer.shape[:-2], self.n_features))

    def take(self, indices):
        """The rows ``indices`` of every sample axis, as a new FactoredGradients.

        Parameters
        ----------
        indices : integer array of shape (k,) or (..., k)
            A 1-D array (the same rows for every element of a stack) or one row
            of indices per element of the stack.

        Returns
        -------
        subset : FactoredGradients
            The selected rows of both factors.
        """
        owner = "FactoredGradients.take"
        R, H, xp, device = _check_factored(self, owner, name="")
        idx = _check_indices(indices, "indices", owner, R.shape[:-1], xp, device)
        return FactoredGradients(_take_rows(R, idx, xp), _take_rows(H, idx, xp))


# ---------------------------------------------------------- last_layer_gradients


def last_layer_gradients(
    logits,
    targets,
    embeddings=None,
    *,
    loss="cross_entropy",
    factored=False,
    n_sketch=None,
    random_state=None,
):
    """Per-sample gradients of the loss with respect to the last linear layer.

    Closed form, without autograd: for a layer ``z = W h + b`` with ``C``
    outputs, sample ``i``'s gradient with respect to ``[W, b]`` is the outer
    product of the residual ``r_i = dloss_i / dz_i`` and ``[h_i, 1]``.

    Parameters
    ----------
    logits : array of shape (..., n_samples, C)
        The layer's outputs ``z`` (pre-softmax for cross-entropy, the
        predictions ``yhat`` for ``"mse"``). Integer arrays are converted to
        float64. Torch tensors that require grad are used by value (detached).
    targets : array
        For ``"cross_entropy"``: integer class labels of shape
        (..., n_samples) with values in ``[0, C)``, or non-negative class
        probabilities (one-hot, smoothed, ...) of shape (..., n_samples, C).
        For ``"mse"``: the regression targets, of shape (..., n_samples, C), or
        (..., n_samples) when ``C == 1``.
    embeddings : array of shape (..., n_samples, d), default=None
        The layer's inputs ``h`` (penultimate embeddings). ``None`` gives the
        gradient with respect to the bias only, ``r_i`` itself (``d = 0``): the
        degenerate logit gradients, see Notes.
    loss : {"cross_entropy", "mse"}, default="cross_entropy"
        ``"cross_entropy"``: softmax cross-entropy, ``r_i = softmax(z_i) -
        y_i`` (for probability targets ``softmax(z_i) * sum(y_i) - y_i``, the
        exact gradient of ``-sum(y_i * log_softmax(z_i))``). ``"mse"``: half
        the squared error ``0.5 * ||yhat_i - y_i||^2``, ``r_i = yhat_i - y_i``
        (``torch.nn.MSELoss`` differs by its factor ``2 / C``).
    factored : bool, default=False
        Return a :class:`FactoredGradients` instead of the dense matrix.
    n_sketch : int, default=None
        Return the gradients multiplied by a fixed Gaussian sketch, of shape
        (..., n_samples, n_sketch), computed from the factors without forming
        the dense matrix. Cannot be combined with ``factored=True``.
    random_state : None, int, numpy.random.Generator or RandomState, default=None
        Seeds the sketch (ignored when ``n_sketch`` is None). It is drawn on the
        host with NumPy and moved to the inputs' device, so every backend uses
        the same sketch for the same seed.

    Returns
    -------
    G : array of shape (..., n_samples, C * (d + 1)), (..., n_samples, n_sketch) \
or FactoredGradients
        Row ``i`` is ``r_i ⊗ [h_i, 1]`` flattened row-major over ``(C, d + 1)``
        (the layout of ``[weight, bias[:, None]]`` of ``torch.nn.Linear(d, C)``),
        in the inputs' namespace and device. The dtype is the promoted floating
        dtype of ``logits``, ``embeddings`` and floating ``targets`` (integer
        targets take the dtype of ``logits``). Half precision (float16,
        bfloat16) is computed in float32 and returned in half precision when
        every floating input is half precision; a ValueError is raised if the
        result does not fit in it.

    See Also
    --------
    nested_gradient_errors : How well subsets of the rows span their mean.
    gradient_error : The error and least-squares weights of one subset.

    Notes
    -----
    The sketch is ``S = rng.standard_normal((C * (d + 1), n_sketch)) /
    sqrt(n_sketch)`` with ``rng = check_random_state(random_state)``, cast to
    the result's dtype; ``E[||S.T g||^2] = ||g||^2``. With ``S`` reshaped to
    ``(C, d + 1, n_sketch)``, ``G @ S`` is contracted factor by factor in
    ``O(n_samples * C * (d + 1) * n_sketch)`` operations and
    ``O(n_samples * min(C, d + 1) * n_sketch)`` memory.

    Without embeddings the cross-entropy rows lie in the ``C - 1`` dimensional
    space of vectors summing to zero, so any ``C - 1`` generic rows span the
    chunk's mean and the gradient error of every subset of that size is about
    zero: the criterion then cannot tell subsets apart. Pass the embeddings.

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select.gradients import last_layer_gradients
    >>> logits = np.array([[0.0, 0.0], [2.0, 0.0]])
    >>> G = last_layer_gradients(logits, np.array([0, 1]), np.array([[1.0], [3.0]]))
    >>> G.shape
    (2, 4)
    >>> G[0].tolist()
    [-0.5, -0.5, 0.5, 0.5]
    >>> F = last_layer_gradients(logits, np.array([0, 1]), np.array([[1.0], [3.0]]),
    ...                          factored=True)
    >>> bool(np.allclose(F.materialize(), G))
    True
    """
    owner = "last_layer_gradients"
    loss = check_option(loss, "loss", owner, _LOSSES)
    factored = check_bool(factored, "factored", owner)
    if n_sketch is not None:
        n_sketch = check_int(n_sketch, "n_sketch", owner, low=1)
        if factored:
            raise ValueError(
                f"{owner} cannot return both a factored and a sketched result; pass "
                f"factored=True or n_sketch={n_sketch}, not both."
            )
    # half precision is computed in float32 and returned as such when every floating
    # input is half precision (otherwise the promoted dtype is wider anyway)
    half = half_dtype(logits) if embeddings is None or half_dtype(embeddings) else None
    logits, xp = check_array(logits, "logits", owner, min_ndim=2)
    logits = _values(logits, xp)
    targets = _check_targets(targets, owner)
    device = get_namespace(logits)[1]
    if embeddings is not None:
        embeddings, _ = check_array(embeddings, "embeddings", owner, min_ndim=2)
        embeddings = _values(embeddings, xp)
        get_namespace(logits, embeddings)
        if embeddings.ndim != logits.ndim or embeddings.shape[:-1] != logits.shape[:-1]:
            raise ValueError(
                f"'embeddings' of {owner} must have shape (..., n_samples, d) with the "
                f"same leading shape as 'logits' {tuple(logits.shape)}, got "
                f"{tuple(embeddings.shape)}; pass one embedding row per logit row."
            )
    if loss == "cross_entropy":
        residuals = _cross_entropy_residuals(logits, targets, xp, owner)
    else:
        residuals = _squared_error_residuals(logits, targets, xp, owner)
    dtype = residuals.dtype if embeddings is None else xp.result_type(
        residuals.dtype, embeddings.dtype)
    residuals = xp.astype(residuals, dtype)
    ones = xp.ones((*residuals.shape[:-1], 1), dtype=dtype, device=device)
    inputs = ones if embeddings is None else xp.concat(
        [xp.astype(embeddings, dtype), ones], axis=-1)
    F = FactoredGradients(residuals, inputs)
    if factored:
        return F if half is None else FactoredGradients(
            _to_half(residuals, half, xp, owner), _to_half(inputs, half, xp, owner))
    if n_sketch is None:
        G = F.materialize()
    else:
        rng = check_random_state(random_state, "random_state", owner)
        G = _sketch(F, n_sketch, rng, xp, device)
    return G if half is None else _to_half(G, half, xp, owner)


def _to_half(X, half, xp, owner):
    """X (computed in float32) in the caller's half dtype; a clear error if it overflows."""
    out = xp.astype(X, half)
    if not bool(xp.all(xp.isfinite(out))):
        raise ValueError(
            f"The gradients computed by {owner} exceed the range of {half} (the dtype of "
            f"the inputs); pass float32 inputs to get them in float32."
        )
    return out


def _check_targets(targets, owner):
    """Targets as an array: None, scalars, strings and ragged lists are named errors."""
    if targets is None:
        raise TypeError(
            f"'targets' of {owner} must be an array of class labels, class probabilities "
            f"or regression targets, got None."
        )
    if isinstance(targets, (str, bytes, numbers.Number)):
        raise TypeError(
            f"'targets' of {owner} must be an array with one entry per row of 'logits', "
            f"got a {type(targets).__name__} ({targets!r})."
        )
    if isinstance(targets, (list, tuple)):
        try:
            targets = np.asarray(targets)
        except ValueError as exc:
            raise ValueError(
                f"'targets' of {owner} must be a rectangular array, but the nested list "
                f"has rows of different lengths."
            ) from exc
    if isinstance(targets, np.ndarray) and targets.dtype.kind not in "biuf":
        raise TypeError(
            f"'targets' of {owner} must hold numbers (integer labels or real values), got "
            f"dtype {targets.dtype}; convert them first, e.g. with sklearn's LabelEncoder."
        )
    return targets


def _values(X, xp):
    """The values of X: a torch tensor that requires grad is detached."""
    if is_torch(xp) and X.requires_grad:
        return X.detach()
    return X


def _cross_entropy_residuals(logits, targets, xp, owner):
    z = logits - xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(z)
    p = e / xp.sum(e, axis=-1, keepdims=True)
    n_classes = logits.shape[-1]
    targets = _as_array(targets, xp)
    get_namespace(logits, targets)
    if targets.ndim == logits.ndim - 1:
        labels = _check_labels(targets, logits.shape, xp, owner)
        classes = xp.arange(n_classes, device=get_namespace(logits)[1])
        onehot = xp.astype(labels[..., None] == xp.astype(classes, labels.dtype), p.dtype)
        return p - onehot
    if targets.ndim != logits.ndim or targets.shape != logits.shape:
        raise ValueError(
            f"'targets' of {owner} with loss='cross_entropy' must be integer labels of "
            f"shape {tuple(logits.shape[:-1])} or class probabilities of shape "
            f"{tuple(logits.shape)} (the shape of 'logits'), got shape "
            f"{tuple(targets.shape)}."
        )
    y, _ = check_array(_like_logits(targets, logits, xp), "targets", owner, min_ndim=2)
    y = _values(y, xp)
    if bool(xp.any(y < 0)):
        raise ValueError(
            f"'targets' of {owner} holds negative class probabilities (min "
            f"{float(to_numpy(xp.min(y)))}); pass probabilities or one-hot rows, or "
            f"integer labels of shape {tuple(logits.shape[:-1])}."
        )
    dtype = xp.result_type(p.dtype, y.dtype)
    p, y = xp.astype(p, dtype), xp.astype(y, dtype)
    return p * xp.sum(y, axis=-1, keepdims=True) - y


def _check_labels(labels, logits_shape, xp, owner):
    if labels.shape != logits_shape[:-1]:
        raise ValueError(
            f"'targets' of {owner} must hold one label per row of 'logits', shape "
            f"{tuple(logits_shape[:-1])}, got shape {tuple(labels.shape)}."
        )
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(
            f"'targets' of {owner} of shape {tuple(labels.shape)} must hold integer class "
            f"labels, got dtype {labels.dtype}; convert them (e.g. y.astype(int)) or pass "
            f"class probabilities of shape {tuple(logits_shape)}."
        )
    n_classes = logits_shape[-1]
    bad = (labels < 0) | (labels >= n_classes)
    if bool(xp.any(bad)):
        bad_host = to_numpy(bad).reshape(-1)
        first = int(np.flatnonzero(bad_host)[0])
        value = int(to_numpy(labels).reshape(-1)[first])
        raise ValueError(
            f"'targets' of {owner} holds {int(bad_host.sum())} labels outside [0, "
            f"{n_classes}) (first: {value} at flat position {first}); 'logits' has "
            f"{n_classes} columns, one per class."
        )
    return labels


def _squared_error_residuals(logits, targets, xp, owner):
    targets = _as_array(targets, xp)
    get_namespace(logits, targets)
    n_outputs = logits.shape[-1]
    given = tuple(targets.shape)  # reported as given, before the column is added
    if targets.ndim == logits.ndim - 1 and n_outputs == 1:
        targets = targets[..., None]
    if targets.shape != logits.shape:
        one_d = (f" or {tuple(logits.shape[:-1])}" if n_outputs == 1 else "")
        raise ValueError(
            f"'targets' of {owner} with loss='mse' must have the shape of 'logits', "
            f"{tuple(logits.shape)}{one_d}, got shape {given}."
        )
    y, _ = check_array(_like_logits(targets, logits, xp), "targets", owner, min_ndim=2)
    y = _values(y, xp)
    dtype = xp.result_type(logits.dtype, y.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        residuals = xp.astype(logits, dtype) - xp.astype(y, dtype)
    if not bool(xp.all(xp.isfinite(residuals))):
        raise ValueError(
            f"'logits' - 'targets' of {owner} overflows {dtype} (values near the largest "
            f"finite number); rescale the predictions and targets, or use float64."
        )
    return residuals


def _like_logits(targets, logits, xp):
    """Integer or bool targets (one-hot rows, counts) take the logits' floating dtype."""
    if xp.isdtype(targets.dtype, ("integral", "bool")):
        return xp.astype(targets, logits.dtype)
    return targets


def _as_array(X, xp):
    """Lists and tuples become NumPy arrays (then checked against the namespace)."""
    if isinstance(X, (list, tuple)):
        return np.asarray(X)
    return X


def _sketch(F, n_sketch, rng, xp, device):
    R, H = F
    n_classes, width = R.shape[-1], H.shape[-1]
    np_dtype = np.float32 if R.dtype == xp.float32 else np.float64
    S = rng.standard_normal((n_classes * width, n_sketch)) / math.sqrt(n_sketch)
    S = xp.reshape(from_numpy(S.astype(np_dtype), xp, device), (n_classes, width, n_sketch))
    lead = R.shape[:-1]
    if n_classes <= width:
        # T[i, c, t] = sum_j H[i, j] S[c, j, t]; out = sum_c R[i, c] T[i, c, t]
        S2 = xp.reshape(xp.permute_dims(S, (1, 0, 2)), (width, n_classes * n_sketch))
        T = xp.reshape(H @ S2, (*lead, n_classes, n_sketch))
        return xp.sum(R[..., None] * T, axis=-2)
    T = xp.reshape(R @ xp.reshape(S, (n_classes, width * n_sketch)), (*lead, width, n_sketch))
    return xp.sum(H[..., None] * T, axis=-2)


# ------------------------------------------------------------------ gram_matrix


def gram_matrix(G):
    """Gram matrix ``G @ G.T`` of per-sample gradients (of each matrix in a stack).

    Parameters
    ----------
    G : array of shape (..., n_samples, n_features) or FactoredGradients
        Per-sample gradients, one per row.

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
        R, H, xp, _ = _check_factored(G, "gram_matrix")
        return _factored_gram(R, H, R, H, xp)
    G, xp = check_array(G, "G", "gram_matrix", min_ndim=2)
    G = _values(G, xp)
    return G @ xp.matrix_transpose(G)


def _factored_gram(R1, H1, R2, H2, xp):
    return (R1 @ xp.matrix_transpose(R2)) * (H1 @ xp.matrix_transpose(H2))


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
        :func:`last_layer_gradients`.
    order : integer array of shape (k,) or (..., k)
        Unique row indices in ``[0, n_samples)``; a 1-D ``order`` is used for
        every matrix of a stack. NumPy indices are moved to ``G``'s device.

    Returns
    -------
    errors : array of shape (..., k)
        Non-increasing, in ``[0, 1]``, in ``G``'s namespace, device and dtype.
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
    ``10 max(k, C + d + 1) eps`` times its diagonal entry counts as dependent;
    the squared error is ``||g||^2 - sum_{i <= j} c_i^2``, accurate to about
    ``sqrt(eps)`` relative (1e-8 in float64, 3e-4 in float32).

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
        R, H, xp, device = _check_factored(G, owner)
        stack = R.shape[:-2]
        order = _check_indices(order, "order", owner, R.shape[:-1], xp, device, unique=True)
        R, H = _flatten_stack(R, xp), _flatten_stack(H, xp)
        R, H = _rescale_stack(R, xp), _rescale_stack(H, xp)
        order = _flatten_order(order, R, xp)
        K, b, gg, zero, _ = _factored_quantities(R, H, order, xp)
        tol = 10 * max(order.shape[-1], R.shape[-1] + H.shape[-1]) * _eps(K.dtype, xp)
        errors = _nested_gram(K, b, gg, zero, tol, xp)
    else:
        G, xp = check_array(G, "G", owner, min_ndim=2)
        G = _values(G, xp)
        device = get_namespace(G)[1]
        stack = G.shape[:-2]
        order = _check_indices(order, "order", owner, G.shape[:-1], xp, device, unique=True)
        G = _flatten_stack(G, xp)
        G = _rescale_stack(G, xp)
        order = _flatten_order(order, G, xp)
        g, zero = _mean_and_zero(G, xp)
        A = _take_rows(G, order, xp)
        tol = 10 * order.shape[-1] * _eps(G.dtype, xp)
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
    c = _rmatvec(Q, g)
    r = g - _matvec(Q, c)
    c2 = _rmatvec(Q, r)
    r = r - _matvec(Q, c2)
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
            v = v - _rmatvec(U, _matvec(U, v))
        norm = xp.linalg.vector_norm(v, axis=-1)
        keep = norm > tol * xp.linalg.vector_norm(a, axis=-1)
        u = v / xp.where(keep, norm, xp.ones_like(norm))[:, None]
        u = xp.where(keep[:, None], u, xp.zeros_like(u))
        U = U + eye[j, :][None, :, None] * u[:, None, :]
    coef = _matvec(U, c)
    s = c - _rmatvec(U, coef)
    coef2 = _matvec(U, s)
    s = s - _rmatvec(U, coef2)
    coef = coef + coef2
    return xp.sum(s * s, axis=-1)[:, None] + _tail_sums(coef * coef, xp)


def _tail_sums(x, xp):
    """``out[:, j] = sum_{i > j} x[:, i]`` for x (m, k), summed from the end."""
    tail = xp.flip(xp.cumulative_sum(xp.flip(x, axis=-1), axis=-1), axis=-1)
    zeros = xp.zeros((x.shape[0], 1), dtype=x.dtype, device=get_namespace(x)[1])
    return xp.concat([tail[:, 1:], zeros], axis=-1)


def _nested_gram(K, b, gg, zero, tol, xp):
    """In-order Cholesky of K (m, k, k) with right-hand side b (m, k); errors (m, k)."""
    fast = _nested_gram_batched(K, b, gg, zero, tol, xp)
    if fast is not None:
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
        column = K[:, :, j] - _matvec(L, row)
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
        Per-sample gradients (or a sketch of them), one per row.
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
        R, H, xp, device = _check_factored(G, owner)
        stack = R.shape[:-2]
        indices = _check_indices(indices, "indices", owner, R.shape[:-1], xp, device)
        R, H = _flatten_stack(R, xp), _flatten_stack(H, xp)
        R, H = _rescale_stack(R, xp), _rescale_stack(H, xp)
        indices = _flatten_order(indices, R, xp)
        w = _check_weights(weights, indices, stack, xp, owner)
        K, b, gg, zero, scale = _factored_quantities(R, H, indices, xp)
        if w is None:
            k = indices.shape[-1]
            rtol = 10 * max(k, R.shape[-1] + H.shape[-1]) * _eps(K.dtype, xp)
            v = _matvec(xp.linalg.pinv(K, rtol=rtol), b)  # weights of the scaled rows
            v = xp.where(zero[:, None], xp.zeros_like(v), v)
            safe = xp.where(scale > 0, scale, xp.ones_like(scale))
            w = xp.where(scale > 0, v / safe, xp.zeros_like(v))
        else:
            v = w * xp.astype(scale, w.dtype)
        dtype = xp.result_type(K.dtype, v.dtype)
        K, b, gg, v = (xp.astype(a, dtype) for a in (K, b, gg, v))
        squared = gg - 2 * xp.sum(v * b, axis=-1) + xp.sum(v * _matvec(K, v), axis=-1)
        squared = xp.where(squared > 0, squared, xp.zeros_like(squared))
        error = _relative(xp.sqrt(squared), xp.sqrt(gg), zero, xp)
    else:
        G, xp = check_array(G, "G", owner, min_ndim=2)
        G = _values(G, xp)
        device = get_namespace(G)[1]
        stack = G.shape[:-2]
        indices = _check_indices(indices, "indices", owner, G.shape[:-1], xp, device)
        G = _flatten_stack(G, xp)
        G = _rescale_stack(G, xp)
        indices = _flatten_order(indices, G, xp)
        w = _check_weights(weights, indices, stack, xp, owner)
        g, zero, largest = _mean_and_zero(G, xp, with_largest=True)
        A = _take_rows(G, indices, xp)
        if w is None:
            # rows at the rounding level of the chunk's largest gradient count as zero
            # (their least-squares weight, about 1 / their norm, could overflow)
            tiny = xp.linalg.vector_norm(A, axis=-1) <= (
                G.shape[-2] * _eps(G.dtype, xp) * largest)[:, None]
            A = xp.where(tiny[..., None], xp.zeros_like(A), A)
            w = _matvec(xp.linalg.pinv(xp.matrix_transpose(A)), g)
            w = xp.where(zero[:, None], xp.zeros_like(w), w)
        residual = g - _rmatvec(A, w)
        error = _relative(xp.linalg.vector_norm(residual, axis=-1),
                          xp.linalg.vector_norm(g, axis=-1), zero, xp)
    if weights is None:
        error = xp.where(error < 1, error, xp.ones_like(error))
    return xp.reshape(error, stack), xp.reshape(w, (*stack, w.shape[-1]))


def _check_weights(weights, indices, stack, xp, owner):
    """Validated weights as (m, k), or None."""
    if weights is None:
        return None
    weights = _as_array(weights, xp)
    weights, _ = check_array(weights, "weights", owner, min_ndim=1)
    weights = _values(weights, xp)
    get_namespace(indices, weights)
    m, k = indices.shape
    if weights.shape not in ((k,), (*stack, k)):
        shapes = f"({k},)" if not stack else f"({k},) or {(*stack, k)}"
        raise ValueError(
            f"'weights' of {owner} must have shape {shapes}, one weight per index, got "
            f"shape {tuple(weights.shape)}."
        )
    return xp.broadcast_to(xp.reshape(weights, (-1, k)), (m, k))


# ----------------------------------------------------------------------- helpers


def _check_factored(F, owner, name="G"):
    """Validate the two factors; returns (residuals, inputs, xp, device).

    ``name`` is what the caller calls the FactoredGradients (``"gradients"`` in the
    selector), so a message names the user's argument; ``""`` for a method of it.
    """
    prefix = f"{name}." if name else ""
    R, xp = check_array(F.residuals, f"{prefix}residuals", owner, min_ndim=2)
    H, _ = check_array(F.inputs, f"{prefix}inputs", owner, min_ndim=2)
    _, device = get_namespace(R, H)
    if R.ndim != H.ndim or R.shape[:-1] != H.shape[:-1]:
        raise ValueError(
            f"The factors of a FactoredGradients passed to {owner} must share their "
            f"leading shape (..., n_samples), got residuals {tuple(R.shape)} and inputs "
            f"{tuple(H.shape)}; build it with last_layer_gradients(..., factored=True)."
        )
    dtype = xp.result_type(R.dtype, H.dtype)
    R, H = xp.astype(_values(R, xp), dtype), xp.astype(_values(H, xp), dtype)
    return R, H, xp, device


def _check_indices(indices, name, owner, lead_shape, xp, device, *, unique=False):
    """Integer row indices of shape (k,) or (*stack, k), in xp on ``device``."""
    *stack, n = lead_shape
    stack = tuple(stack)
    shapes = "(k,)" if not stack else f"(k,) or ({''.join(f'{s}, ' for s in stack)}k)"
    if isinstance(indices, (str, bytes)) or indices is None:
        raise TypeError(
            f"'{name}' of {owner} must be an integer array of shape {shapes}, got "
            f"{type(indices).__name__} ({indices!r})."
        )
    if isinstance(indices, (list, tuple, np.ndarray)):
        indices = _host_indices(indices, name, owner, n)
        indices = from_numpy(indices, xp, device)
    try:
        ixp, idevice = get_namespace(indices)
    except TypeError as exc:
        raise TypeError(
            f"'{name}' of {owner} must be an integer array, got {type(indices).__name__}."
        ) from exc
    if ixp.__name__ != xp.__name__ or idevice != device:
        raise TypeError(
            f"'{name}' of {owner} must be a NumPy array or an array of G's library "
            f"({xp.__name__}) on G's device ({device}), got {type(indices).__name__} on "
            f"{idevice}; convert it first."
        )
    if not xp.isdtype(indices.dtype, "integral"):
        raise TypeError(
            f"'{name}' of {owner} must hold integer row indices, got dtype {indices.dtype}."
        )
    if indices.ndim not in (1, len(stack) + 1) or (
        indices.ndim > 1 and tuple(indices.shape[:-1]) != stack
    ):
        raise ValueError(
            f"'{name}' of {owner} must have shape {shapes}, got shape {tuple(indices.shape)}."
        )
    if indices.shape[-1] == 0:
        raise ValueError(f"'{name}' of {owner} is empty; pass at least one row index.")
    bad = (indices < 0) | (indices >= n)
    if bool(xp.any(bad)):
        host = to_numpy(indices).reshape(-1)
        first = int(host[np.flatnonzero(to_numpy(bad).reshape(-1))[0]])
        raise ValueError(
            f"'{name}' of {owner} holds {int(to_numpy(bad).sum())} indices outside [0, {n}) "
            f"(first: {first}); there are {n} rows."
        )
    if unique and indices.shape[-1] > 1:
        ordered = xp.sort(indices, axis=-1)
        if bool(xp.any(ordered[..., 1:] == ordered[..., :-1])):
            raise ValueError(
                f"'{name}' of {owner} must hold unique indices per chunk, but some "
                f"index is repeated; pass each row at most once."
            )
    return xp.astype(indices, xp.int64)


def _host_indices(indices, name, owner, n):
    """Host indices (lists, NumPy) as int64, with values beyond int64 reported, not wrapped."""
    host = indices
    if isinstance(indices, (list, tuple)):
        try:  # Python ints beyond int64 would become float64 or wrap around
            host = np.asarray(indices, dtype=object)
        except ValueError:
            host = None
        if host is None or host.dtype != object or not all(
                isinstance(v, numbers.Integral) for v in host.flat):
            try:
                host = np.asarray(indices)
            except ValueError as exc:
                raise ValueError(
                    f"'{name}' of {owner} must be a rectangular integer array, but the "
                    f"nested list has rows of different lengths."
                ) from exc
    host = np.asarray(host)
    if host.dtype == object and host.size and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in host.flat):
        big = [int(v) for v in host.flat if not 0 <= int(v) < n]
        if big:
            raise ValueError(
                f"'{name}' of {owner} holds {len(big)} indices outside [0, {n}) (first: "
                f"{big[0]}); there are {n} rows."
            )
        return host.astype(np.int64)
    if host.dtype.kind not in "iu":
        raise TypeError(
            f"'{name}' of {owner} must hold integer row indices, got dtype {host.dtype}; "
            f"pass positions as integers (e.g. np.asarray(indices, dtype=int))."
        )
    if host.dtype.kind == "u" and host.size and int(host.max()) >= n:
        bad = host.reshape(-1) >= n
        raise ValueError(
            f"'{name}' of {owner} holds {int(bad.sum())} indices outside [0, {n}) (first: "
            f"{int(host.reshape(-1)[np.flatnonzero(bad)[0]])}); there are {n} rows."
        )
    return host.astype(np.int64)


def _flatten_stack(X, xp):
    """Reshape (..., n, c) to (m, n, c)."""
    return xp.reshape(X, (math.prod(X.shape[:-2]), *X.shape[-2:]))


def _rescale_stack(X, xp):
    """Scale each matrix of a stack X (m, n, c) by a power of two to a peak of about 1.

    The relative errors and least-squares weights do not change with the scale of
    the gradients, but their squares do under- or overflow: float32 logits with a
    margin of 45 give residuals of 1e-20, whose squares are 0, and the mean
    gradient would count as zero. Scaling before squaring keeps every quantity in
    range. X is returned as is when every peak is already in a safe range.
    """
    with np.errstate(over="ignore"):
        peaks = np.asarray(to_numpy(xp.max(xp.reshape(xp.abs(X), (X.shape[0], -1)), axis=-1)),
                           dtype=np.float64)
    exponents = np.frexp(np.where(peaks > 0, peaks, 1.0))[1].astype(np.int64)
    emax = float_info(X.dtype, xp).maxexp
    if np.all(np.abs(exponents) <= emax // 4):
        return X
    # two factors, each representable in X's dtype (2**-e alone may not be)
    first = -exponents // 2
    second = -exponents - first
    np_dtype = np.float32 if X.dtype == xp.float32 else np.float64
    device = get_namespace(X)[1]
    for part in (first, second):
        factor = from_numpy(np.ldexp(np.ones(part.shape, dtype=np_dtype), part.astype(np.int32)),
                            xp, device)
        X = X * factor[:, None, None]
    return X


def _flatten_order(order, X, xp):
    """Indices (k,) or (..., k) as (m, k) for the flattened stack X (m, n, c)."""
    k = order.shape[-1]
    return xp.broadcast_to(xp.reshape(order, (-1, k)), (X.shape[0], k))


def _eps(dtype, xp):
    return float(float_info(dtype, xp).eps)


def _mean_and_zero(G, xp, with_largest=False):
    """Mean row g (m, p) of G (m, n, p) and where it is numerically zero (m,).

    With ``with_largest``, also the largest row norm of each matrix (m,).
    """
    n = G.shape[-2]
    g = xp.mean(G, axis=-2)
    largest = xp.max(xp.linalg.vector_norm(G, axis=-1), axis=-1)
    zero = xp.linalg.vector_norm(g, axis=-1) <= n * _eps(G.dtype, xp) * largest
    return (g, zero, largest) if with_largest else (g, zero)


def _factored_quantities(R, H, order, xp):
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
    zero = xp.sqrt(gg) <= n * _eps(R.dtype, xp) * xp.max(norms, axis=-1)
    R_sub, r_scale = _unit_peak_rows(_take_rows(R, order, xp), xp)
    H_sub, h_scale = _unit_peak_rows(_take_rows(H, order, xp), xp)
    scale = r_scale * h_scale
    # a row at the rounding level of the chunk's largest gradient is treated as zero: its
    # least-squares weight would be beyond any dtype's range (1 / 1e-309)
    negligible = scale <= n * _eps(R.dtype, xp) * xp.max(norms, axis=-1)[:, None]
    R_sub = xp.where(negligible[..., None], xp.zeros_like(R_sub), R_sub)
    scale = xp.where(negligible, xp.zeros_like(scale), scale)
    K = _factored_gram(R_sub, H_sub, R_sub, H_sub, xp)
    b = xp.sum((R_sub @ g) * H_sub, axis=-1)
    return K, b, gg, zero, scale


def _unit_peak_rows(X, xp):
    """X (m, k, c) with each row divided by its largest magnitude (zero rows kept); scales."""
    peak = xp.max(xp.abs(X), axis=-1)
    safe = xp.where(peak > 0, peak, xp.ones_like(peak))
    return X / safe[..., None], peak


def _relative(norm, gnorm, zero, xp):
    """norm / gnorm, 0 where the mean gradient is zero; norm (m,) or (m, k)."""
    if norm.ndim == 2:
        gnorm, zero = gnorm[:, None], zero[:, None]
    safe = xp.where(zero, xp.ones_like(gnorm), gnorm)
    out = norm / safe
    out = xp.where(zero, xp.zeros_like(out), out)
    return out
