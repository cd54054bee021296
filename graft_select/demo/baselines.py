"""The baselines' batch samplers: full data, budget-matched full data, RS2 and InfoBatch.

Every sampler here has the interface the demo's training loop uses (and shares with
:class:`~graft_select.sampler.GraftBatchSampler`): ``set_epoch``, ``__len__`` (batches
of the coming epoch; 0 once the run's sample budget is spent), ``__iter__`` (lists of
dataset indices), ``observe`` (a no-op here), ``selection_seconds`` and
``total_samples`` (the samples the whole run will see, which the learning-rate schedule
is stretched over). Each draws from private generators seeded with ``seed``.

- :class:`ShuffledBatchSampler` (``"full"``; with ``total_samples``, ``"budget"``): plain
  shuffled epochs of every sample, stopped after exactly ``total_samples`` samples
  (budgeted training, Li, Yumer and Ramanan, ICLR 2020).
- :class:`RS2BatchSampler` (``"rs2"``): repeated sampling of random subsets without
  replacement (Okanovic et al., ICLR 2024): round ``e`` trains on the next
  ``round(fraction * n)`` samples of a shuffled order, a new order starting when one is
  used up, so that no sample is seen twice before every sample was seen once.
- :class:`InfoBatchSampler` (``"infobatch"``): InfoBatch (Qin et al., ICLR 2024). Each
  epoch the samples whose last recorded loss is below the mean are dropped at random
  with probability ``prune_ratio``; the kept ones among them get the loss weight
  ``1 / (1 - prune_ratio)``; the last ``1 - delta`` of the run trains on the full data
  with weight 1.
"""

import time

import numpy as np
import torch
from torch.utils.data import Sampler

from .. import _plan
from .._validation import check_int, check_real

__all__ = ["InfoBatchSampler", "RS2BatchSampler", "ShuffledBatchSampler"]


class _PlannedSampler(Sampler):
    """A sampler whose epochs are index arrays known in advance (``self._epochs``)."""

    last_refit = None

    def __init__(self, n_samples, batch_size, *, seed=0):
        owner = type(self).__name__
        self.n_samples = check_int(n_samples, "n_samples", owner, low=1)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.seed = check_int(seed, "seed", owner, low=0)
        self.epoch = 0
        self.selection_seconds = 0.0

    def set_epoch(self, epoch):
        """Set the epoch of the next iteration (from 0)."""
        self.epoch = check_int(epoch, "epoch", f"{type(self).__name__}.set_epoch", low=0)

    def observe(self, indices, **feedback):
        """Ignore training feedback (the interface of GraftBatchSampler.observe)."""

    def _order(self):
        return self._epochs[self.epoch] if self.epoch < len(self._epochs) else self._empty

    def __len__(self):
        return _plan.batch_count(len(self._order()), self.batch_size, drop_last=False)

    def __iter__(self):
        order = torch.as_tensor(self._order())
        for batch in _plan.split_batches(order, self.batch_size, drop_last=False):
            yield batch.tolist()

    _empty = np.zeros(0, dtype=np.int64)


class ShuffledBatchSampler(_PlannedSampler):
    """Shuffled epochs of every sample, for ``epochs`` epochs or ``total_samples`` samples.

    Epoch ``e`` is the order ``GraftBatchSampler(n_samples, batch_size, fraction=1.0,
    seed=seed)`` yields in epoch ``e`` (the same shared epoch plan), cut short when
    the budget ends.

    Parameters
    ----------
    n_samples : int
        Dataset size.
    batch_size : int
        Training batch size.
    seed : int, default=0
        Seeds the order of every epoch (epoch ``e`` from ``(seed, e)``), as in
        :class:`~graft_select.sampler.GraftBatchSampler`.
    epochs : int, default=None
        Number of full epochs (``"full"``); None needs ``total_samples``.
    total_samples : int, default=None
        Stop after exactly this many samples (``"budget"``): the last epoch is cut
        short (its last batch may be short too).
    """

    def __init__(self, n_samples, batch_size, *, seed=0, epochs=None, total_samples=None):
        super().__init__(n_samples, batch_size, seed=seed)
        owner = type(self).__name__
        if (epochs is None) == (total_samples is None):
            raise ValueError(f"{owner} needs exactly one of 'epochs' and 'total_samples'.")
        if epochs is not None:
            total_samples = check_int(epochs, "epochs", owner, low=1) * self.n_samples
        self.total_samples = check_int(total_samples, "total_samples", owner, low=1)
        self._epochs = []
        left = self.total_samples
        while left > 0:
            order = _plan.shuffled(torch.arange(self.n_samples), self.seed, len(self._epochs))
            self._epochs.append(order[:left])
            left -= len(self._epochs[-1])


class RS2BatchSampler(_PlannedSampler):
    """RS2: rounds of ``round(fraction * n)`` samples drawn without replacement across rounds.

    Parameters
    ----------
    n_samples, batch_size : int
        Dataset size and training batch size.
    fraction : float
        Share of the dataset per round, in (0, 1].
    total_samples : int
        Samples of the whole run; the last round is cut short to meet it exactly.
    seed : int, default=0
        Seeds the shuffled orders (pass ``p`` from ``(seed, p)``).

    Notes
    -----
    The rounds walk through a shuffled order of all samples; when fewer than a
    round's worth remain, the round takes them and fills up from the next shuffled
    order, whose remaining samples follow (the ones just taken moved to its end). So
    within a round no sample repeats, and every pass over the order sees each sample
    once.
    """

    def __init__(self, n_samples, batch_size, *, fraction, total_samples, seed=0):
        super().__init__(n_samples, batch_size, seed=seed)
        owner = type(self).__name__
        self.fraction = check_real(fraction, "fraction", owner, low=0.0, high=1.0,
                                   closed="right")
        self.total_samples = check_int(total_samples, "total_samples", owner, low=1)
        self.round_size = max(1, round(self.fraction * self.n_samples))
        self._epochs = []
        passes, position = 0, 0
        order = np.random.default_rng([self.seed, passes]).permutation(self.n_samples)
        left = self.total_samples
        while left > 0:
            size = min(self.round_size, left)
            taken = order[position:position + size]
            position += len(taken)
            if len(taken) < size:
                passes += 1
                fresh = np.random.default_rng([self.seed, passes]).permutation(self.n_samples)
                used = np.isin(fresh, taken)
                order = np.concatenate([fresh[~used], fresh[used]])
                position = size - len(taken)
                taken = np.concatenate([taken, order[:position]])
            self._epochs.append(taken)
            left -= size


class InfoBatchSampler(_PlannedSampler):
    """InfoBatch: prune well-learned samples at random, rescale the kept ones' loss.

    Parameters
    ----------
    n_samples, batch_size : int
        Dataset size and training batch size.
    prune_ratio : float, default=0.5
        Probability ``r`` that a sample whose last loss is below the mean is left
        out of an epoch (InfoBatch's default).
    delta : float, default=0.875
        Share of the run with pruning; the rest trains on the full data
        (InfoBatch's annealing, default 0.875).
    epochs : int, default=None
        Native InfoBatch: that many epochs, pruning in epochs ``e < delta * epochs``.
    total_samples : int, default=None
        Budget-matched InfoBatch: stop after exactly this many samples, pruning
        while fewer than ``delta * total_samples`` were seen.
    seed : int, default=0
        Seeds the epoch orders and the random pruning.

    Notes
    -----
    The training loop reports every trained sample's loss through
    :meth:`record_losses` and multiplies the per-sample losses by
    :meth:`loss_weights` before averaging over the batch. Scores start at 1 for
    every sample, so the first epoch is a full one, as in the InfoBatch authors' implementation.
    """

    def __init__(self, n_samples, batch_size, *, prune_ratio=0.5, delta=0.875, epochs=None,
                 total_samples=None, seed=0):
        super().__init__(n_samples, batch_size, seed=seed)
        owner = type(self).__name__
        self.prune_ratio = check_real(prune_ratio, "prune_ratio", owner, low=0.0, high=1.0,
                                      closed="left")
        self.delta = check_real(delta, "delta", owner, low=0.0, high=1.0, closed="both")
        if (epochs is None) == (total_samples is None):
            raise ValueError(f"{owner} needs exactly one of 'epochs' and 'total_samples'.")
        self.epochs = None if epochs is None else check_int(epochs, "epochs", owner, low=1)
        self.total_samples = (self.epochs * self.n_samples if total_samples is None
                              else check_int(total_samples, "total_samples", owner, low=1))
        self.scores = np.ones(self.n_samples)
        self.weights = np.ones(self.n_samples)
        self._plans = {}  # epoch -> (order, pruned)
        self._planned = 0  # samples in the plans of epochs so far

    def _prunes(self, epoch):
        if self.epochs is not None:
            return epoch < self.delta * self.epochs
        return self._planned < self.delta * self.total_samples

    def _order(self):
        if self.epoch in self._plans:
            return self._plans[self.epoch]
        if self._plans and self.epoch != max(self._plans) + 1:
            raise ValueError(f"InfoBatchSampler plans epochs in order: expected epoch "
                             f"{max(self._plans) + 1}, got {self.epoch}.")
        if not self._plans and self.epoch != 0:
            raise ValueError(f"InfoBatchSampler starts at epoch 0, got {self.epoch}.")
        start = time.perf_counter()
        rng = np.random.default_rng([self.seed, self.epoch])
        self.weights[:] = 1.0
        keep = np.ones(self.n_samples, dtype=bool)
        if self._prunes(self.epoch) and self.prune_ratio > 0:
            well_learned = np.flatnonzero(self.scores < self.scores.mean())
            kept = rng.random(len(well_learned)) > self.prune_ratio
            keep[well_learned[~kept]] = False
            self.weights[well_learned[kept]] = 1.0 / (1.0 - self.prune_ratio)
        order = rng.permutation(np.flatnonzero(keep))
        order = order[:max(0, self.total_samples - self._planned)]
        self._planned += len(order)
        self._plans[self.epoch] = order
        self.selection_seconds += time.perf_counter() - start
        return order

    def loss_weights(self, indices):
        """Loss weight of each index in the current epoch (float32 tensor)."""
        return torch.as_tensor(self.weights[np.asarray(indices)], dtype=torch.float32)

    def record_losses(self, indices, losses):
        """Record the unweighted per-sample losses of a trained batch as the new scores."""
        self.scores[np.asarray(indices)] = torch.as_tensor(losses).detach().cpu().numpy()
