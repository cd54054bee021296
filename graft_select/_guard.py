"""The label-noise guard of GraftBatchSampler: keep suspected wrong labels out of a refit.

MaxVol on last-layer gradient proxies favours samples with large residuals, and a
sample whose label is wrong has the largest residual of all once the model has
learnt the task. So under label noise GRAFT picks the mislabelled samples. Wrong
labels leave a mark that hard but correct samples do not: the model contradicts
them *confidently* (it gives the given label a probability near 0), where a hard
sample gets an unsure, spread prediction.

The rule compares two shares of the observed samples at every refit:

- ``nu``: samples whose given label has a probability below ``THRESHOLD``;
- ``m``: misclassified samples (some other class is more probable).

On clean data confident mistakes are a small part of the mistakes (``nu / m`` was
0.02-0.25 on MNIST-1D and on duplicated digits); under label noise they are most of
them (0.79-0.89 on digits with 2%, 5% and 15% wrong labels). When
``nu > RATIO * m`` the guard excludes the ``MARGIN * nu * n`` samples with the
lowest probability of their label from the refit; otherwise it excludes nothing.

This module imports torch; only the sampler imports it.
"""

import math

import torch

__all__ = ["MARGIN", "RATIO", "THRESHOLD", "label_probabilities", "suspected_wrong_labels"]

#: A label with a probability below this is "confidently contradicted".
THRESHOLD = 0.05
#: The guard acts when confidently contradicted samples exceed this share of mistakes.
RATIO = 0.5
#: It then excludes this many times the confidently contradicted samples.
MARGIN = 1.3
#: Rows of the residual table reduced at once (bounds the float32 temporaries).
_BLOCK = 65536


def label_probabilities(residuals, rows):
    """Probability of the given label and whether the sample is misclassified.

    ``residuals`` holds ``softmax(logits) - onehot(targets)`` per sample, so the
    given label's entry is ``p_y - 1`` (the row's minimum) and every other entry
    is a probability: ``p_y = 1 + min(row)`` and the sample is misclassified when
    ``max(row) > p_y``.

    Parameters
    ----------
    residuals : tensor of shape (n_samples, C)
        The stored residuals (any float dtype, any device).
    rows : int64 tensor of shape (m,), m >= 1
        The rows to read.

    Returns
    -------
    p_given : float32 tensor of shape (m,)
    misclassified : bool tensor of shape (m,)
        Both on the residuals' device.
    """
    p_parts, mis_parts = [], []
    rows = rows.to(residuals.device)
    for start in range(0, len(rows), _BLOCK):
        # reduced over the classes as columns of the transposed block: torch reduces
        # a few classes per row 5x slower than b rows per class
        block = residuals[rows[start:start + _BLOCK]].to(torch.float32).T.contiguous()
        p_given = 1.0 + block.amin(dim=0)
        p_parts.append(p_given)
        mis_parts.append(block.amax(dim=0) > p_given)
    return torch.cat(p_parts), torch.cat(mis_parts)


def suspected_wrong_labels(residuals, observed, budget):
    """Rows of ``observed`` the guard keeps out of the refit (empty on clean data).

    Parameters
    ----------
    residuals : tensor of shape (n_samples, C)
        Stored ``softmax(logits) - onehot(targets)`` (not sketched).
    observed : int64 tensor of shape (m,)
        Dataset indices of the candidates that have recorded residuals.
    budget : int
        Samples the refit selects; at least ``1.25 * budget`` candidates are
        always left.

    Returns
    -------
    excluded : int64 tensor of shape (k,)
        Dataset indices (a subset of ``observed``, on the CPU), lowest
        probability of the given label first.
    """
    n = len(observed)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    p_given, misclassified = label_probabilities(residuals, observed)
    mistakes = float(misclassified.to(torch.float32).mean())
    contradicted = float((p_given < THRESHOLD).to(torch.float32).mean())
    if contradicted == 0.0 or contradicted <= RATIO * mistakes:
        return torch.zeros(0, dtype=torch.int64)
    count = min(round(MARGIN * contradicted * n), n // 2,
                max(0, n - math.ceil(1.25 * budget)))
    order = torch.argsort(p_given.cpu(), stable=True)
    return observed[order[:count]]
