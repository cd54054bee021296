"""Per-sample gradient proxies: the closed-form last-layer gradients and their factors.

The gradients of each sample's loss with respect to the last linear layer
(weight and bias), computed from the logits, the targets and the penultimate
embeddings without a backward pass, dense, sketched or kept as their two
factors (:class:`FactoredGradients`); and the argument checks the criterion
shares with them. Public names are exported by :mod:`graft_select.gradients`.
"""

import math
import numbers
from typing import Any, NamedTuple

import numpy as np

from ._backend import (
    detached,
    from_numpy,
    get_namespace,
    host_float_dtype,
    on_input_device,
    to_numpy,
)
from ._ops import take_rows
from ._validation import (
    as_array,
    check_array,
    check_bool,
    check_int,
    check_option,
    check_random_state,
    half_dtype,
)

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

    @on_input_device
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
        R, H, xp, _ = check_factored(self, "FactoredGradients.materialize", name="")
        outer = R[..., :, None] * H[..., None, :]
        return xp.reshape(outer, (*outer.shape[:-2], self.n_features))

    @on_input_device
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
        R, H, xp, device = check_factored(self, owner, name="")
        idx = check_indices(indices, "indices", owner, R.shape[:-1], xp, device)
        return FactoredGradients(take_rows(R, idx, xp), take_rows(H, idx, xp))


# ---------------------------------------------------------- last_layer_gradients


@on_input_device
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
    logits = detached(logits, xp)
    targets = _check_targets(targets, owner)
    device = get_namespace(logits)[1]
    if embeddings is not None:
        embeddings, _ = check_array(embeddings, "embeddings", owner, min_ndim=2)
        embeddings = detached(embeddings, xp)
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
    G = _dense(F, n_sketch, random_state, xp, device, owner, check=half is None)
    return G if half is None else _to_half(G, half, xp, owner)


def _dense(F, n_sketch, random_state, xp, device, owner, check=True):
    """The gradients of ``F``, materialized or sketched; with ``check``, a clear error
    where residuals times embeddings overflow (half dtypes are checked by `_to_half`)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        if n_sketch is None:
            G = F.materialize()
        else:
            rng = check_random_state(random_state, "random_state", owner)
            G = _sketch(F, n_sketch, rng, xp, device)
    if check and not bool(xp.all(xp.isfinite(G))):
        raise ValueError(
            f"The gradients computed by {owner} overflow {G.dtype}: residuals times "
            f"embeddings exceed its largest finite number. Pass factored=True (the "
            f"residuals and embeddings are kept apart, each finite; graft_select's "
            f"functions scale them before any product), or rescale the inputs.")
    return G


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


def _cross_entropy_residuals(logits, targets, xp, owner):
    z = logits - xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(z)
    p = e / xp.sum(e, axis=-1, keepdims=True)
    n_classes = logits.shape[-1]
    targets = as_array(targets)
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
    y = detached(y, xp)
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
    targets = as_array(targets)
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
    y = detached(y, xp)
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


def _sketch(F, n_sketch, rng, xp, device):
    R, H = F
    n_classes, width = R.shape[-1], H.shape[-1]
    S = rng.standard_normal((n_classes * width, n_sketch)) / math.sqrt(n_sketch)
    S = from_numpy(S.astype(host_float_dtype(R.dtype, xp)), xp, device)
    S = xp.reshape(S, (n_classes, width, n_sketch))
    lead = R.shape[:-1]
    if n_classes <= width:
        # T[i, c, t] = sum_j H[i, j] S[c, j, t]; out = sum_c R[i, c] T[i, c, t]
        S2 = xp.reshape(xp.permute_dims(S, (1, 0, 2)), (width, n_classes * n_sketch))
        T = xp.reshape(H @ S2, (*lead, n_classes, n_sketch))
        return xp.sum(R[..., None] * T, axis=-2)
    T = xp.reshape(R @ xp.reshape(S, (n_classes, width * n_sketch)), (*lead, width, n_sketch))
    return xp.sum(H[..., None] * T, axis=-2)


# ----------------------------------------------------------------------- helpers


def check_factored(F, owner, name="G", *, allow_dask=True, accepted=None):
    """Validate the two factors; returns (residuals, inputs, xp, device).

    ``name`` is what the caller calls the FactoredGradients (``"gradients"`` in the
    selector), so a message names the user's argument; ``""`` for a method of it.
    ``allow_dask`` and ``accepted`` are passed on to :func:`check_array`.
    """
    prefix = f"{name}." if name else ""
    kwargs = {"min_ndim": 2, "allow_dask": allow_dask, "accepted": accepted}
    R, xp = check_array(F.residuals, f"{prefix}residuals", owner, **kwargs)
    H, _ = check_array(F.inputs, f"{prefix}inputs", owner, **kwargs)
    _, device = get_namespace(R, H)
    if R.ndim != H.ndim or R.shape[:-1] != H.shape[:-1]:
        raise ValueError(
            f"The factors of a FactoredGradients passed to {owner} must share their "
            f"leading shape (..., n_samples), got residuals {tuple(R.shape)} and inputs "
            f"{tuple(H.shape)}; build it with last_layer_gradients(..., factored=True)."
        )
    dtype = xp.result_type(R.dtype, H.dtype)
    R, H = xp.astype(detached(R, xp), dtype), xp.astype(detached(H, xp), dtype)
    return R, H, xp, device


def check_indices(indices, name, owner, lead_shape, xp, device, *, unique=False):
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
    if host.size == 0 and host.dtype in (object, np.float64) and isinstance(
            indices, (list, tuple)):
        host = host.astype(np.int64)  # an empty list: its emptiness is reported below
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
