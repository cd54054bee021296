"""Checks of what the sampler is given: labels, dataset indices, one batch's feedback.

One label check (:func:`check_labels`, for the ``targets`` parameter and for
``observe()``'s targets) and one index check (:func:`check_indices`, for
``observe()``'s indices and a loaded state's subset) serve the sampler and its parts;
they read metadata only, and values only for tensors on the host.

This module imports torch; only the sampler's parts import it.
"""

import torch

__all__ = ["LOSSES", "as_tensor", "check_batch", "check_indices", "check_labels",
           "check_regression_targets"]

#: The losses whose residuals the sampler forms from logits and targets: softmax
#: cross-entropy (``softmax(z) - onehot(y)``) and half the squared error
#: (``yhat - y``), spelled as :func:`graft_select.last_layer_gradients` spells them.
LOSSES = ("cross_entropy", "mse")


def as_tensor(value, name):
    """``value`` as a detached tensor; meta tensors (no data) are rejected."""
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            raise ValueError(f"'{name}' is a meta tensor (shape only, no data); pass the tensor "
                             "computed by the forward pass on a real device.")
        return value.detach() if value.requires_grad else value
    try:
        return torch.as_tensor(value).detach()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"'{name}' must be a tensor or array of numbers. Got "
                        f"{type(value).__name__} ({exc}).") from None


def check_labels(value, n, *, subject="'targets'", flatten=False):
    """``value`` as a dense integer tensor of ``n`` class labels (its dtype kept).

    ``subject`` names the value in messages; ``flatten`` accepts any shape of ``n``
    elements (observe()'s targets), else the shape must be ``(n,)``. The labels'
    range is checked where they are used (on their device).
    """
    labels = as_tensor(value, "targets")
    if labels.layout != torch.strided:
        raise TypeError(f"{subject} is a {labels.layout} tensor; pass a dense one "
                        "(.to_dense()).")
    given = tuple(labels.shape)
    if flatten and labels.numel() == n:  # (b, 1) columns of labels
        labels = labels.reshape(-1)
    if labels.ndim != 1 or labels.shape[0] != n:
        hint = ""
        if flatten and labels.ndim == 2 and labels.shape[0] == n:
            hint = (" One column per class looks like one-hot or multi-label targets: pass "
                    "one-hot rows as class labels (targets.argmax(1)); for multi-label (or "
                    "any other) losses pass per-sample gradient proxies as gradients= "
                    "instead of logits and targets.")
        raise ValueError(f"{subject} must hold one label per sample, shape "
                         f"({n},). Got shape {given} instead.{hint}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        hint = ("convert class labels with .long(); for regression targets build the "
                "sampler with loss='mse' (squared error)")
        if flatten:
            hint = ("observe() takes class labels with the sampler's default "
                    "loss='cross_entropy': convert class labels with .long(); for "
                    "regression build GraftBatchSampler with loss='mse' (squared error), "
                    "and for other losses pass per-sample gradient proxies as gradients= "
                    "instead of logits and targets")
        raise TypeError(f"{subject} must hold integer class labels. Got dtype {labels.dtype} "
                        f"instead; {hint}.")
    return labels


def check_regression_targets(value, n, *, subject="'targets'", n_outputs=None):
    """``value`` as a dense tensor of ``n`` regression targets, shape (n,) or (n, k).

    Shapes are kept (a (n,) column of one output stays 1-D, which keeps the
    recorder's fast path); integer targets are cast to float32, complex and
    bool ones raise. ``n_outputs`` (the logits' width, when known) must be
    ``k``, or 1 for targets of shape (n,).
    """
    targets = as_tensor(value, "targets")
    if targets.layout != torch.strided:
        raise TypeError(f"{subject} is a {targets.layout} tensor; pass a dense one "
                        "(.to_dense()).")
    if targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"{subject} must hold real regression targets with loss='mse'. Got "
                        f"dtype {targets.dtype} instead; pass float values.")
    if not targets.dtype.is_floating_point:
        targets = targets.to(torch.float32)
    width = 1 if targets.ndim == 1 else (targets.shape[1] if targets.ndim == 2 else None)
    if width is None or targets.shape[0] != n or (n_outputs is not None
                                                   and width != n_outputs):
        outputs = "k outputs" if n_outputs is None else f"{n_outputs} output(s)"
        expected = (f"({n},) or ({n}, 1)" if n_outputs == 1 else
                    f"({n}, {n_outputs})" if n_outputs is not None else f"({n},) or ({n}, k)")
        hint = ""
        if targets.ndim == 1 and n_outputs not in (None, 1):
            hint = (" One value per sample with several outputs looks like class labels: "
                    "for classification build the sampler with loss='cross_entropy'.")
        raise ValueError(f"{subject} must hold one row of regression targets per sample "
                         f"with loss='mse' ({outputs}), shape {expected}. Got shape "
                         f"{tuple(targets.shape)} instead.{hint}")
    return targets


def check_indices(value, n_samples, *, subject="'indices'", hint="pass dataset indices."):
    """``value`` as a 1-D int64 tensor of dataset indices in ``[0, n_samples)``.

    On an accelerator the range is not checked here (that would read a value back
    to the host); the caller rejects rows outside the dataset on the device.
    """
    idx = as_tensor(value, "indices")
    if idx.ndim != 1:
        idx = idx.reshape(-1)
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"{subject} must be integer dataset indices, got dtype {idx.dtype}.")
    idx = idx.to(torch.int64)
    if idx.device.type == "cpu" and len(idx):
        low, high = (int(v) for v in torch.aminmax(idx))
        if low < 0 or high >= n_samples:
            raise ValueError(f"{subject} must lie in [0, {n_samples}), got values in "
                             f"[{low}, {high}]; {hint}")
    return idx


def check_batch(n_rows, embeddings, logits, targets, gradients, loss="cross_entropy"):
    """Check one batch's shapes and dtypes (host metadata only); return its inputs by name.

    ``loss`` says what the targets are: class labels (``"cross_entropy"``) or
    regression targets with one column per logit (``"mse"``).
    """
    batch = {}
    if embeddings is not None:
        batch["embeddings"] = _checked_rows(embeddings, "embeddings", n_rows)
    if logits is not None or targets is not None:
        if logits is None or targets is None:
            raise ValueError("observe() needs both 'logits' and 'targets' to form gradient "
                             "proxies; pass both or neither (or give the sampler "
                             "targets=).")
        batch["logits"] = _checked_rows(logits, "logits", n_rows)
        if not batch["logits"].dtype.is_floating_point:
            raise TypeError(f"'logits' must be floating point, got dtype "
                            f"{batch['logits'].dtype}; pass the model's outputs.")
        if loss == "mse":
            batch["targets"] = check_regression_targets(
                targets, n_rows, n_outputs=batch["logits"].shape[1])
        else:
            batch["targets"] = check_labels(targets, n_rows, flatten=True)
    if gradients is not None:
        batch["gradients"] = _checked_rows(gradients, "gradients", n_rows)
    if not batch:
        raise ValueError("observe() got nothing to record; pass embeddings, logits and "
                         "targets, or gradients, or watch() the model first.")
    return batch


def _checked_rows(value, name, n):
    value = as_tensor(value, name)
    if value.layout != torch.strided:
        raise TypeError(f"'{name}' is a {value.layout} tensor; pass a dense one "
                        "(.to_dense()).")
    if value.dtype.is_complex:
        raise TypeError(f"'{name}' is complex ({value.dtype}); pass real values (observe() "
                        "would drop the imaginary part).")
    if value.ndim == 1:
        value = value.reshape(-1, 1)
    if value.ndim != 2 or value.shape[0] != n:
        raise ValueError(f"'{name}' must have one row per index ({n}), got shape "
                         f"{tuple(value.shape)}.")
    if value.shape[1] == 0:
        raise ValueError(f"'{name}' has shape {tuple(value.shape)}: no columns. Pass at "
                         f"least one column per row (the {_WHAT[name]}).")
    return value


_WHAT = {"embeddings": "penultimate-layer features", "logits": "model's outputs",
         "gradients": "per-sample gradient proxies"}
