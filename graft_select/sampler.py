"""GraftBatchSampler: train each epoch on a GRAFT subset, refit from gradient feedback.

This module imports torch; nothing in graft_select imports it back.
"""

import dataclasses
import math
import numbers
import time
import warnings

import numpy as np
import torch
from sklearn.base import clone
from torch.utils.data import Sampler

from . import _guard, _plan
from ._backend import load_namespaces
from ._iteration import (
    BatchIterator,
    LastLayerCapture,
    accelerate_wrapper,
    check_feedback,
    check_state,
    last_linear,
)
from ._store import FEEDBACK_DTYPES, FeedbackStore, as_tensor, check_batch
from ._validation import check_bool, check_int, check_real
from .gradients import FactoredGradients
from .selector import BudgetWarning, GraftSelector, StoredGradients

__all__ = ["GraftBatchSampler", "LastLayerCapture", "RefitReport"]


@dataclasses.dataclass(frozen=True)
class RefitReport:
    """What one refit of :class:`GraftBatchSampler` chose and cost.

    Attributes
    ----------
    epoch : int
        Epoch the refit planned.
    fraction : float
        Selected share of the dataset (stale refreshes included).
    n_selected : int
        Number of samples in the epoch's subset (before splitting over replicas).
    gradient_error : float or None
        Mean over chunks of the relative error of the chunk's mean gradient
        approximated by the selected samples; None without gradient feedback.
    seconds : float
        Wall-clock seconds spent selecting (feature pass included).
    feature_seconds : float
        Of which in the ``features`` callable (0 in observe-only mode).
    n_refreshed : int
        Samples added because their recorded values were the stalest.
    n_rejected : int, default=0
        Observed rows rejected since the previous refit (NaN or infinity in the
        feedback, also after the cast to ``feedback_dtype`` or the sketch, a
        label outside ``[0, n_classes)``, or an index outside the dataset when
        the indices were on an accelerator); they were not stored, the samples
        kept their earlier values, and the refit warned.
    rejected_indices : tuple of int, default=()
        Dataset indices of the samples with rejected rows, sorted. A row whose
        index was outside the dataset is counted in ``n_rejected`` but has no
        index here (it names no sample; reading the bad value back would cost
        a device synchronisation at the step).
    gathered_bytes : int, default=0
        Bytes this rank sent to merge the ranks' feedback (0 without
        ``torch.distributed``).
    n_excluded : int, default=0
        Samples the label-noise guard kept out of this refit (suspected wrong
        labels; see ``label_noise_guard`` of :class:`GraftBatchSampler`).
    excluded_indices : tuple of int, default=()
        Their dataset indices, lowest probability of the given label first.

    Examples
    --------
    >>> import torch
    >>> from graft_select.sampler import GraftBatchSampler
    >>> sampler = GraftBatchSampler(200, batch_size=20, fraction=0.25)
    >>> sampler.observe(torch.arange(200), embeddings=torch.randn(200, 3),
    ...                 logits=torch.randn(200, 2), targets=torch.randint(0, 2, (200,)))
    >>> sampler.set_epoch(1)
    >>> report = sampler.last_refit if len(sampler) else None
    >>> report.epoch, report.n_selected, report.n_refreshed
    (1, 50, 0)
    """

    epoch: int
    fraction: float
    n_selected: int
    gradient_error: float | None
    seconds: float
    feature_seconds: float
    n_refreshed: int
    n_rejected: int = 0
    rejected_indices: tuple = ()
    gathered_bytes: int = 0
    n_excluded: int = 0
    excluded_indices: tuple = ()


class GraftBatchSampler(Sampler[list[int]]):
    """Batch sampler that trains each epoch on a GRAFT subset of the dataset.

    Pass it as ``DataLoader(dataset, batch_sampler=sampler)``. Each epoch a private
    generator seeded from ``(seed, epoch)`` permutes the indices, which are cut
    into selection chunks; :class:`~graft_select.GraftSelector` picks samples in
    every chunk from the current per-sample features and last-layer gradient
    proxies, and the pooled picks are yielded as batches of ``batch_size``. The
    selection is refit every ``refit_every`` epochs (the subset is reshuffled in
    between) after ``warm_start_epochs`` epochs on the full data.

    Parameters
    ----------
    data_source : Dataset or int
        The dataset (only its length is used) or the number of samples.
    batch_size : int
        Training batch size.
    fraction : float, default=0.3
        Share of the dataset per epoch, in (0, 1]. 1.0 is plain shuffled batching.
    features : callable, array or None, default=None
        Where selection features come from at a refit:

        - ``None`` (observe-only): the embeddings and gradient proxies recorded
          by :meth:`observe`. Recorded values go stale for samples that are not
          selected, so ``refresh_share`` of every refit's budget goes to the
          least recently observed samples (never observed ones first).
        - a callable ``f(indices) -> (embeddings, logits)`` or
          ``(embeddings, logits, targets)``, run under ``torch.no_grad()`` over
          all samples in batches of ``feature_batch_size`` at every refit (fresh
          values; the time is reported in :attr:`last_refit`). Targets come from
          the callable, else from ``targets``.
        - an array or tensor of shape (n_samples, n_features): fixed features
          (raw inputs); gradient feedback, if observed, still sizes the subsets.
    selection_size : int, default=None
        Rows per selection chunk; ``None`` means ``batch_size`` (at least 2).
        Every chunk keeps at least one sample, so a budget below one sample
        per chunk is raised to the number of chunks (a warning says so when
        that moves the budget by more than 10%).
    refit_every : int, default=1
        Epochs between refits.
    warm_start_epochs : int, default=1
        Leading epochs on the full data.
    selector : GraftSelector, default=None
        Template selector (cloned; its ``fraction``, ``batch_size`` and
        ``random_state`` are set by the sampler). ``None`` uses
        ``GraftSelector(basis="gradients", uniform_share=0.0)``: every pick by
        MaxVol on the chunk's last-layer gradient proxies, with the label-noise
        guard keeping suspected wrong labels out (the configuration that won on
        MNIST-1D and on noisy digits, benchmarks/RESULTS.md, issue 12).
    drop_last : bool, default=False
        Drop the last incomplete batch.
    shuffle : bool, default=True
        Permute the indices every epoch (with False, chunks follow index order).
    seed : int, default=0
        Seeds every random choice, together with the epoch.
    num_replicas, rank : int, default=None
        Distributed training: each rank gets a disjoint share of equal length of
        the epoch's subset (padded by repetition as ``DistributedSampler`` does,
        or truncated with ``drop_last``). Read from ``torch.distributed`` when it
        is initialised. At a refit every rank sends the feedback rows it
        observed since the previous refit to all ranks (the newest row of each
        sample wins), so that all ranks agree on the plan.
    targets : array-like of shape (n_samples,), default=None
        Class labels, used with a ``features`` callable that returns no targets.
    refresh_share : float, default=0.0
        Observe-only mode: share of each refit's budget given to the least
        recently observed samples (never observed ones first; samples the
        label-noise guard excludes are not refreshed). With ``refit_every = R``
        and ``refresh_share > 0`` no sample's values are more than
        ``R * ceil(1 / (refresh_share * fraction))`` epochs old. The default 0
        trains every selected sample on GRAFT's picks (0.1 cost 0.2-0.7 point
        under label noise in the tuning runs); samples never observed are still
        taken first whenever nothing was observed yet.
    feature_batch_size : int, default=1024
        Batch size of the ``features`` callable.
    feedback_dtype : torch.dtype or str, default=torch.float32
        Dtype of the recorded feedback, one of ``torch.float32``,
        ``torch.float16``, ``torch.bfloat16`` and ``torch.float64`` (or its name,
        e.g. ``"float16"``): float16 or bfloat16 halve the store (the selection
        computes in float32 from it). A loaded state is cast to it. float16
        holds values up to 65,504: a row with larger embeddings is rejected like
        a row with infinity (bfloat16 has float32's range).
    sketch_width : int, default=None
        Store every kind of feedback wider than this (embeddings, the residuals
        of many classes, explicit gradients) as a fixed random sketch of this
        width: the rows are multiplied by a Gaussian matrix of shape
        (width, sketch_width), seeded from ``seed`` and scaled by
        ``1 / sqrt(sketch_width)``, so the Gram matrices the selection reads are
        kept in expectation (Johnson-Lindenstrauss). ``None`` stores the
        feedback as observed. At 1,280,000 samples with 2,048-d embeddings and
        1,000 classes, ``sketch_width=256`` in float16 is a 1.3 GB store
        instead of 15.6 GB.
    label_noise_guard : bool, default=True
        At each refit with recorded logits and targets, estimate whether the
        labels are noisy and, if so, keep the suspected wrong labels out of the
        selection: when the share of samples whose given label has a
        probability below 0.05 exceeds half the share of misclassified samples
        (confident mistakes dominate: label noise, not hard samples), the
        ``1.3 x`` that many samples with the lowest probability of their label
        are excluded from the refit's candidates (at most half of them, and
        never below 1.25 times the budget). On clean data it excludes nothing.
        :attr:`last_refit` reports the excluded samples. It reads the label
        probability from the stored residuals, so it needs them unsketched
        (``sketch_width`` at least the number of classes); otherwise each
        refit warns and the guard does not act.

    Attributes
    ----------
    last_refit : RefitReport or None
        Report of the latest refit.
    selection_seconds : float
        Total seconds spent selecting so far.

    See Also
    --------
    GraftSelector : The per-chunk selection.
    torch.utils.data.DistributedSampler : The padding and sharding convention.

    Examples
    --------
    >>> import torch
    >>> from graft_select.sampler import GraftBatchSampler
    >>> sampler = GraftBatchSampler(100, batch_size=10, fraction=0.5, warm_start_epochs=1)
    >>> len(sampler)  # epoch 0 is a warm-start epoch on the full data
    10
    >>> sampler.observe(torch.arange(100), embeddings=torch.randn(100, 4),
    ...                 logits=torch.randn(100, 3), targets=torch.randint(0, 3, (100,)))
    >>> sampler.set_epoch(1)
    >>> len(sampler), sum(len(b) for b in sampler)
    (5, 50)
    """

    def __init__(self, data_source, batch_size, *, fraction=0.3, features=None,
                 selection_size=None, refit_every=1, warm_start_epochs=1, selector=None,
                 drop_last=False, shuffle=True, seed=0, num_replicas=None, rank=None,
                 targets=None, refresh_share=0.0, feature_batch_size=1024,
                 feedback_dtype=torch.float32, sketch_width=None, label_noise_guard=True):
        owner = "GraftBatchSampler"
        self.n_samples = _dataset_length(data_source)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.fraction = check_real(fraction, "fraction", owner, low=0.0, high=1.0, closed="right")
        self.selection_size = (self.batch_size if selection_size is None
                               else check_int(selection_size, "selection_size", owner, low=2))
        self.refit_every = check_int(refit_every, "refit_every", owner, low=1)
        self.warm_start_epochs = check_int(warm_start_epochs, "warm_start_epochs", owner, low=0)
        self.refresh_share = check_real(refresh_share, "refresh_share", owner, low=0.0, high=1.0)
        self.feature_batch_size = check_int(feature_batch_size, "feature_batch_size", owner,
                                            low=1)
        self.drop_last = check_bool(drop_last, "drop_last", owner)
        self.shuffle = check_bool(shuffle, "shuffle", owner)
        self.seed = check_int(seed, "seed", owner, low=0)
        if selector is not None and not isinstance(selector, GraftSelector):
            raise TypeError(f"The 'selector' parameter of {owner} must be a GraftSelector or "
                            f"None. Got {type(selector).__name__} instead.")
        self.selector = selector
        # a refit's array namespaces (NumPy's for the CPU fast paths): loaded once per
        # process here, not inside the first refit's timed selection
        load_namespaces(np.empty(0), torch.empty(0))
        # Read from torch.distributed at the first set_epoch, len() or iteration, so a
        # sampler built before the process group exists still shards.
        self._replica_args = _check_replica_args(num_replicas, rank)
        self._resolved_replicas = None
        self.features = self._check_features(features)
        self.targets = self._check_targets(targets)
        self.feedback_dtype = _check_feedback_dtype(feedback_dtype)
        self.sketch_width = (None if sketch_width is None
                             else check_int(sketch_width, "sketch_width", owner, low=1))
        self.label_noise_guard = check_bool(label_noise_guard, "label_noise_guard", owner)
        self.epoch = 0
        self.last_refit = None
        self.selection_seconds = 0.0
        self._store = FeedbackStore(self.n_samples, dtype=self.feedback_dtype,
                                    sketch_width=self.sketch_width, seed=self.seed)
        self._targets_on = {}  # device -> self.targets there (observe() reads no value back)
        self._subset = None  # dataset indices of the current plan, as an int64 tensor
        self._subset_epoch = None
        self._plan_cache = None
        self._resume = None  # batches to skip at the first iteration after load_state_dict
        self._iteration = None  # the current pass (a BatchIterator)
        self._capture = None  # LastLayerCapture from watch()

    @property
    def num_replicas(self):
        """Number of ranks sharing each epoch (read lazily from torch.distributed)."""
        return self._replicas()[0]

    @property
    def rank(self):
        """This process's rank among ``num_replicas`` (read lazily from torch.distributed)."""
        return self._replicas()[1]

    def _replicas(self):
        if self._resolved_replicas is None:
            self._resolved_replicas = _replicas(*self._replica_args)
        return self._resolved_replicas

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_capture"] = None  # a forward hook belongs to a model in this process
        return state

    # ----------------------------------------------------------------- feedback

    def observe(self, indices=None, *, embeddings=None, logits=None, targets=None,
                gradients=None):
        """Record per-sample feedback from the training loop.

        Call it once per training batch, after the forward pass. Values are
        copied (detached) and kept on their device; later observations overwrite
        earlier ones. It never reads a value back to the host (no device
        synchronisation on CUDA): shapes and dtypes are checked at once, and
        nothing is stored if one is wrong; rows with NaN or infinity (also after
        the cast to ``feedback_dtype`` and the sketch: 1e5 overflows float16), or
        a label outside ``[0, n_classes)``, are not stored (those samples keep
        their earlier values) and the next refit lists them in :attr:`last_refit`
        and warns. Per call it only checks and copies the batch: the copies are
        recorded as one block every 32 batches and before anything reads the
        recorded feedback (a refit, :meth:`state_dict`), so these always see
        every observation. In a training loop's steady state (a batch this
        pass handed out, with embeddings, logits and targets, given or from
        :meth:`watch` and the sampler's ``targets``, of the shapes, dtypes and
        devices of the previous one) the checks come down to that comparison.

        Without ``indices`` the batch is the oldest one this sampler handed out
        and that was not observed yet (the one being trained, also behind a
        prefetching DataLoader). Without ``embeddings``, ``logits`` and
        ``gradients`` the values come from the layer hooked by :meth:`watch`;
        without ``targets`` from the sampler's ``targets``. So with
        ``sampler.watch(model)`` and the targets known, ``sampler.observe()``
        needs nothing from an unmodified model and dataset.

        Parameters
        ----------
        indices : tensor, array or list of int, shape (b,), default=None
            Dataset indices of the batch; ``None`` for the batch handed out by
            the sampler. Indices on the host outside the dataset raise; indices
            on an accelerator are checked there (rows outside the dataset are
            rejected and reported at the refit) and mark the oldest handed-out
            batch as trained.
        embeddings : tensor of shape (b, d), default=None
            Penultimate-layer embeddings.
        logits : tensor of shape (b, C), default=None
            Model outputs; with ``targets`` they give the last-layer gradient
            proxies ``(softmax(logits) - onehot(targets)) outer [embeddings, 1]``.
        targets : tensor of shape (b,), default=None
            Integer class labels.
        gradients : tensor of shape (b, p), default=None
            Explicit per-sample gradient proxies (instead of logits and targets).
        """
        if gradients is None:
            captured = embeddings is None and logits is None and self._capture is not None
            if captured:  # the watched layer's latest forward pass
                embeddings, logits = self._capture.inputs, self._capture.outputs
            if self._observe_like_last(indices, embeddings, logits, targets):
                if captured:
                    self._capture.take()
                return
            if captured:  # the general path reads them again, and checks them
                embeddings = logits = None
        iteration = self._iteration
        if indices is None:
            if iteration is None or not iteration.pending:
                raise ValueError("observe() without 'indices' records the oldest batch this "
                                 "sampler handed out and that was not observed yet, and there "
                                 "is none: pass indices=, or observe each yielded batch once.")
            idx, depth = iteration.batches[iteration.pending[0]], 0
        else:
            idx, depth = self._check_indices(indices)
        captured = embeddings is None and logits is None and gradients is None
        if captured and self._capture is not None:
            embeddings, logits = self._capture.inputs, self._capture.outputs
            if embeddings is None:
                raise ValueError("observe() found no forward pass of the watched layer since "
                                 "the last observation; call it after the model's forward.")
        if logits is not None and targets is None and self.targets is not None:
            targets = self._sampler_targets(idx)
        batch = check_batch(len(idx), embeddings, logits, targets, gradients)
        # a batch this sampler handed out is never written to, so it needs no copy
        source = iteration if depth is not None and iteration.distinct else None
        self._store.stage(idx, batch, self.epoch, copy_indices=depth is None, source=source)
        if captured and self._capture is not None:
            self._capture.take()
        if iteration is not None:
            if depth is not None:
                iteration.take(depth)
            elif idx.device.type != "cpu":
                iteration.take_pending()

    def _observe_like_last(self, indices, embeddings, logits, targets):
        """observe() of a training loop's steady state in a few attribute reads, or False.

        The steady state: no indices, or the CPU int64 tensor of a batch this
        pass handed out, and tensors of embeddings, logits (given, or from the
        watched layer) and targets (given, or the sampler's) with one row per
        index and the shapes, dtypes, layouts and devices of the last batch that
        took the general path (and passed its checks). Any other call returns
        False, having changed nothing, and takes the general path.
        """
        iteration = self._iteration
        if (iteration is None or type(embeddings) is not torch.Tensor
                or type(logits) is not torch.Tensor
                or not (type(targets) is torch.Tensor
                        or (targets is None and self.targets is not None))):
            return False
        if indices is None:  # the oldest handed-out batch not observed yet
            depth = 0 if iteration.pending else None
        else:
            depth = iteration.handed_out(indices)
        if depth is None:
            return False
        idx = iteration.batches[iteration.pending[depth]]
        if targets is None:  # the sampler's (a fresh tensor, on the CPU like idx)
            targets = self.targets[idx]
        if embeddings.requires_grad or logits.requires_grad or targets.requires_grad:
            embeddings, logits, targets = (embeddings.detach(), logits.detach(),
                                           targets.detach())
        batch_signature = (  # _store.signature written out: this runs at every step
            ("embeddings", embeddings.shape, embeddings.dtype, embeddings.layout,
             embeddings.device),
            ("logits", logits.shape, logits.dtype, logits.layout, logits.device),
            ("targets", targets.shape, targets.dtype, targets.layout, targets.device))
        # the signature ties the logits' and targets' rows to the embeddings'; the
        # batch's own length ties them to the indices (a pass's last batch is shorter)
        if idx.shape[0] != embeddings.shape[0] or not self._store.stage_like_last(
                idx, (embeddings, logits, targets), self.epoch,
                iteration if iteration.distinct else None, batch_signature):
            return False
        iteration.take(depth)
        return True

    def _sampler_targets(self, idx):
        """The sampler's targets of ``idx``, indexed on idx's device (no read-back)."""
        if idx.device.type == "cpu":
            return self.targets[idx]
        if idx.device not in self._targets_on:
            self._targets_on[idx.device] = self.targets.to(idx.device, non_blocking=True)
        # an index outside the dataset is rejected later; clamp so the lookup is valid
        return self._targets_on[idx.device][idx.clamp(0, self.n_samples - 1)]

    def watch(self, model, layer=None):
        """Capture the input and output of the model's last linear layer at every forward.

        After ``sampler.watch(model)``, :meth:`observe` called without values
        records the latest forward pass's embeddings (the layer's input) and
        logits (its output): no change to the model's ``forward``. Watching
        again replaces the previous hook.

        Parameters
        ----------
        model : torch.nn.Module
            The model; its last registered ``torch.nn.Linear`` is hooked.
        layer : torch.nn.Linear, default=None
            The layer to hook instead (the one mapping embeddings to logits).

        Returns
        -------
        capture : LastLayerCapture
            The hook; ``capture.remove()`` detaches it.
        """
        target = last_linear(model) if layer is None else layer
        if not isinstance(target, torch.nn.Module):
            raise TypeError(f"The 'layer' argument of GraftBatchSampler.watch must be a "
                            f"torch.nn.Module. Got {type(target).__name__} instead.")
        if self._capture is not None:
            self._capture.remove()
        self._capture = LastLayerCapture(target)
        return self._capture

    # ------------------------------------------------------------------ epochs

    def set_epoch(self, epoch):
        """Set the epoch of the next iteration (call it before each epoch).

        Setting the epoch the sampler is already at changes nothing, so it keeps
        a resume position loaded by :meth:`load_state_dict`.

        Parameters
        ----------
        epoch : int
            The epoch number, from 0. It seeds the epoch's order and selects
            warm-start, refit and reuse epochs.
        """
        epoch = check_int(epoch, "epoch", "GraftBatchSampler.set_epoch", low=0)
        self._replicas()
        if epoch != self.epoch:
            self._resume = None
            self._iteration = None
        self.epoch = epoch

    def __len__(self):
        """Number of batches this rank yields in a full pass of the coming epoch."""
        return self._batch_count(self._shard_length(len(self._plan())))

    def total_batches(self, num_epochs):
        """Number of batches this rank yields over epochs ``0 .. num_epochs - 1``.

        Warm-start epochs count the full data; selected epochs the current
        subset, or before the first refit the budget (which is what the
        default selector yields). Use it to plan a learning-rate schedule.

        Parameters
        ----------
        num_epochs : int
            Number of epochs of the run.

        Returns
        -------
        total : int
        """
        num_epochs = check_int(num_epochs, "num_epochs", "GraftBatchSampler.total_batches",
                               low=0)
        return sum(self._epoch_batches(epoch) for epoch in range(num_epochs))

    def _epoch_batches(self, epoch):
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            size = len(self._plan_cache[1])
        elif epoch < self.warm_start_epochs or self.fraction >= 1.0:
            size = self.n_samples
        elif self._subset is not None:
            size = len(self._subset)
        else:
            size = self._expected_subset_size()
        return self._batch_count(self._shard_length(size))

    def _expected_subset_size(self):
        budget = max(1, round(self.fraction * self.n_samples))
        refreshed = round(self.refresh_share * budget) if self.features is None else 0
        remaining = budget - refreshed
        if remaining <= 0:
            return refreshed
        chunks = math.ceil((self.n_samples - refreshed) / max(2, self.selection_size))
        return refreshed + max(remaining, chunks)  # every chunk keeps at least one sample

    def _batch_count(self, count):
        return _plan.batch_count(count, self.batch_size, self.drop_last)

    def __iter__(self):
        wrapper = accelerate_wrapper()
        if wrapper is not None:
            raise TypeError(
                f"GraftBatchSampler is being iterated by accelerate's {wrapper}, which shards "
                "its batches a second time and overrides its epochs. Do not pass the DataLoader "
                "to accelerator.prepare(); prepare the model and optimizer only and wrap the "
                "loader with graft_select.accelerate.prepare_data_loader(accelerator, loader) "
                "(GraftBatchSampler shards over the processes itself).")
        plan = self._plan()
        batches = _plan.split_batches(self._shard(plan), self.batch_size, self.drop_last)
        start = 0 if self._resume is None else min(self._resume, len(batches))
        self._resume = None
        self._iteration = BatchIterator(self, batches, start)
        return self._iteration

    # ------------------------------------------------------------------- state

    def state_dict(self):
        """Everything needed to resume mid-epoch with the same remaining batches.

        Holds the epoch, the number of batches the training loop consumed (the
        batches observed so far when the loop observes, else the batches handed
        out: a prefetching loader runs ahead of the loop), the current
        subset (``fraction * n_samples`` int64) and the recorded feedback: one
        row per sample for each of embeddings, gradient residuals and explicit
        gradients that were observed, the last-seen epoch (int64) and the count
        of rejected observations per sample not yet reported by a refit (int32,
        one more entry for rows whose index was out of range), so a resumed
        run's next refit still reports them. For
        50,000 samples with 512-d embeddings and 10 classes that is about 104 MB
        in float32.

        Returns
        -------
        state : dict
            Tensors on the CPU and plain numbers; save it with ``torch.save``.
        """
        return {
            "epoch": self.epoch,
            "batches_yielded": self._position(),
            "subset": None if self._subset is None else self._subset.clone(),
            "subset_epoch": self._subset_epoch,
            **self._store.state(),
            "selection_seconds": self.selection_seconds,
        }

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output; the next iteration resumes mid-epoch.

        The whole state is checked (keys, types, sizes against this sampler's
        dataset) before anything is written, and its tensors are copied.

        Parameters
        ----------
        state : dict
            A dictionary returned by :meth:`state_dict`.

        Raises
        ------
        ValueError or TypeError
            If the state is not one :meth:`state_dict` of a sampler over a dataset
            of the same size returns; the sampler is left unchanged.
        """
        checked = check_state(state, self.n_samples)
        # first: it raises, having changed nothing, for rows feedback_dtype cannot hold
        self._store.load(checked["store"], checked["last_seen"], checked["rejected"])
        self.epoch = checked["epoch"]
        self._resume = checked["batches_yielded"]
        self._iteration = None
        self._subset = checked["subset"]
        self._subset_epoch = checked["subset_epoch"]
        self.selection_seconds = checked["selection_seconds"]
        self._plan_cache = None

    def _position(self):
        if self._iteration is not None:
            return self._iteration.resume_position()
        return self._resume or 0

    def _load_feedback(self, feedback):
        checked = check_feedback(feedback, self.n_samples, "GraftBatchSampler")
        self._store.load(checked["store"], checked["last_seen"], checked["rejected"])

    # -------------------------------------------------------------- internals

    def _plan(self):
        """The epoch's subset (dataset indices in training order), computed once."""
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        if self.epoch < self.warm_start_epochs or self.fraction >= 1.0:
            subset = torch.arange(self.n_samples)
        else:
            since = (self.epoch - self.warm_start_epochs) % self.refit_every
            fit_epoch = self.epoch - since  # the epoch whose refit this epoch reuses
            if self._subset is None or self._subset_epoch != fit_epoch:
                self._subset = self._refit(_plan.epoch_generator(self.seed, fit_epoch),
                                           fit_epoch)
                self._subset_epoch = fit_epoch
            subset = self._subset
        if self.shuffle:
            subset = _plan.shuffled(subset, self.seed, self.epoch)
        self._plan_cache = (self.epoch, subset)
        return subset

    def _refit(self, generator, epoch):
        start = time.perf_counter()
        n = self.n_samples
        candidates = (torch.randperm(n, generator=generator) if self.shuffle
                      else torch.arange(n))
        budget = max(1, round(self.fraction * n))
        feature_seconds, refreshed = 0.0, torch.zeros(0, dtype=torch.int64)
        gathered_bytes = 0
        if callable(self.features):
            feature_seconds = self._run_features(candidates)
        else:
            self._check_replicas_agree()
            gathered_bytes = self._gather_replicas()
        rejected, n_rejected = self._report_rejected()
        candidates, excluded = self._guard(candidates, budget)
        if self.features is None:
            refreshed = self._stalest(candidates, budget)
        chosen, error = self._select(candidates, refreshed, budget, generator)
        subset = torch.cat([refreshed, chosen])
        if abs(len(subset) - budget) > 0.1 * budget:
            warnings.warn(
                f"GraftBatchSampler selected {len(subset)} samples for a budget of {budget} "
                f"(fraction={self.fraction} of {n}): every selection chunk keeps at least one "
                f"sample. Raise 'fraction' or 'selection_size' (now {self.selection_size}) "
                "to hold the budget.", UserWarning, stacklevel=3)
        seconds = time.perf_counter() - start
        self.selection_seconds += seconds
        self.last_refit = RefitReport(
            epoch=epoch, fraction=len(subset) / n, n_selected=len(subset),
            gradient_error=error, seconds=seconds, feature_seconds=feature_seconds,
            n_refreshed=len(refreshed), n_rejected=n_rejected,
            rejected_indices=tuple(rejected.tolist()), gathered_bytes=gathered_bytes,
            n_excluded=len(excluded), excluded_indices=tuple(excluded.tolist()))
        return subset

    def _guard(self, candidates, budget):
        """Candidates without the suspected wrong labels, and those (see label_noise_guard)."""
        none = torch.zeros(0, dtype=torch.int64)
        if not self.label_noise_guard or "residuals" not in self._store:
            return candidates, none
        if self._store.sketched("residuals"):
            warnings.warn(
                f"GraftBatchSampler's label_noise_guard needs the label probabilities, but the "
                f"residuals are stored as a sketch of width {self.sketch_width}; the guard did "
                "not act. Set sketch_width to at least the number of classes, or "
                "label_noise_guard=False.", UserWarning, stacklevel=4)
            return candidates, none
        observed = candidates[self._store.last_seen.cpu()[candidates] >= 0]
        excluded = _guard.suspected_wrong_labels(self._store["residuals"], observed, budget)
        if len(excluded) == 0:
            return candidates, none
        return _without(candidates, excluded, self.n_samples), excluded

    def _stalest(self, candidates, budget):
        """The least recently observed candidates (never observed first), in a share of budget."""
        share = round(self.refresh_share * budget)
        if not self._store.observed_any():
            share = budget
        if share == 0:
            return torch.zeros(0, dtype=torch.int64)
        return self._store.stalest(candidates, share)

    def _report_rejected(self):
        """Rows observe() rejected since the last refit: warn, and return them for the report."""
        rejected, n_rows = self._store.take_rejected()
        if n_rows:
            first = ", ".join(str(i) for i in rejected[:5].tolist())
            warnings.warn(
                f"GraftBatchSampler rejected {n_rows} observed rows since the last refit: NaN "
                f"or infinity in the feedback, values too large for feedback_dtype or the "
                f"sketch, or labels (or indices) out of range. The "
                f"{len(rejected)} samples concerned (first: {first or 'none'}) keep their "
                "earlier values; check the model's outputs and the targets of these samples "
                "(all of them are in last_refit.rejected_indices).", UserWarning, stacklevel=4)
        return rejected, n_rows

    def _select(self, candidates, refreshed, budget, generator):
        remaining = budget - len(refreshed)
        if remaining <= 0:
            return torch.zeros(0, dtype=torch.int64), None
        if len(refreshed):
            candidates = _without(candidates, refreshed, self.n_samples)
        if remaining >= len(candidates):  # a tiny dataset: every candidate is needed
            return candidates, None
        selector = self._make_selector(remaining / len(candidates), generator)
        X, gradients = self._selection_inputs(candidates, selector)
        with warnings.catch_warnings():
            # the sampler warns about the budget itself, in its own terms (see _refit)
            warnings.simplefilter("ignore", BudgetWarning)
            if X is None:  # the store's own factors, gathered chunk group by chunk group
                selector.fit(None, gradients=StoredGradients(*gradients, rows=candidates),
                             compute_weights=False)
            else:
                selector.fit(X, gradients=gradients)
        local = selector.sample_indices_.to("cpu") if torch.is_tensor(
            selector.sample_indices_) else torch.as_tensor(selector.sample_indices_)
        error = selector.gradient_error_
        return candidates[local], None if error is None else float(np.mean(error))

    def _selection_inputs(self, candidates, selector):
        """Features and gradient proxies of the candidates, in candidate order.

        When ``selector`` selects on the stored last-layer gradients (the default),
        returns ``(None, (residuals, embeddings))``: the store's own tensors, which
        ``selector._fit_feedback`` reads chunk group by chunk group, so the store is
        never copied. Otherwise ``(X, gradients)`` for ``selector.fit``.
        """
        store = self._store
        if (self.features is None and "residuals" in store and selector.strategy == "graft"
                and selector.basis != "input"):
            return None, (store["residuals"], store.get("embeddings"))
        gradients = None
        if "residuals" in store:
            device = store["residuals"].device
            rows = candidates.to(device)
            residuals = store["residuals"][rows]
            if "embeddings" in store:
                emb = store["embeddings"][rows].to(residuals.dtype)
                inputs = torch.cat([emb, torch.ones((len(rows), 1), dtype=emb.dtype,
                                                    device=device)], dim=1)
            else:
                inputs = torch.ones((len(rows), 1), dtype=residuals.dtype, device=device)
            gradients = FactoredGradients(residuals, inputs)
        elif "gradients" in store:
            gradients = store["gradients"][candidates.to(store["gradients"].device)]
        if self.features is not None and not callable(self.features):
            X = self.features[candidates.to(self.features.device)]
            return X, _same_device(gradients, X)
        if gradients is None:
            # Only embeddings were observed (observe() rejects an empty call).
            return store["embeddings"][candidates.to(store["embeddings"].device)], None
        X = gradients.inputs if isinstance(gradients, FactoredGradients) else gradients
        return X, gradients

    def _make_selector(self, fraction, generator):
        template = self.selector or GraftSelector(basis="gradients", uniform_share=0.0)
        selector = clone(template)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        has_gradients = "residuals" in self._store or "gradients" in self._store
        params = {"fraction": min(1.0, fraction), "chunk_size": max(2, self.selection_size),
                  "random_state": seed}
        if selector.basis == "gradients" and not has_gradients:
            params["basis"] = "input"
        return selector.set_params(**params)

    def _run_features(self, candidates):
        start = time.perf_counter()
        order = torch.sort(candidates).values
        with torch.no_grad():
            for i in range(0, self.n_samples, self.feature_batch_size):
                batch = order[i:i + self.feature_batch_size]
                out = self.features(batch)
                if not isinstance(out, tuple) or len(out) not in (2, 3):
                    raise TypeError("The 'features' callable must return (embeddings, logits) "
                                    "or (embeddings, logits, targets).")
                targets = out[2] if len(out) == 3 else self._targets_for(batch)
                self.observe(batch, embeddings=out[0], logits=out[1], targets=targets)
        return time.perf_counter() - start

    def _targets_for(self, batch):
        if self.targets is None:
            raise ValueError("The 'features' callable returned no targets and the sampler "
                             "was given none: pass targets= to GraftBatchSampler.")
        return self.targets[batch]

    def _check_replicas_agree(self):
        if self.num_replicas > 1 and not _dist_ready() and self._store:
            raise ValueError(
                f"GraftBatchSampler has num_replicas={self.num_replicas} but no torch.distributed "
                "process group, so it cannot merge the feedback the ranks observed and their "
                "plans would differ. Initialise torch.distributed before the first refit (the "
                "sampler then gathers feedback), or use a features callable or array, which "
                "every rank evaluates the same way.")

    def _gather_replicas(self):
        """Under torch.distributed, merge the rows every rank observed since the last merge."""
        if self.num_replicas == 1 or not _dist_ready():
            return 0
        return self._store.merge(self.num_replicas)

    def _check_targets(self, targets):
        if targets is None:
            return None
        targets = as_tensor(targets, "targets")
        if targets.ndim != 1 or targets.shape[0] != self.n_samples:
            raise ValueError(f"The 'targets' parameter of GraftBatchSampler must hold one label "
                             f"per sample, shape ({self.n_samples},). Got shape "
                             f"{tuple(targets.shape)} instead.")
        if targets.dtype.is_floating_point or targets.dtype.is_complex or (
                targets.dtype == torch.bool):
            raise TypeError(f"The 'targets' parameter of GraftBatchSampler must hold integer "
                            f"class labels. Got dtype {targets.dtype} instead.")
        return targets.to(torch.int64)

    def _shard_length(self, total):
        return _plan.shard_length(total, self.num_replicas, self.drop_last)

    def _shard(self, plan):
        return _plan.shard(plan, self.num_replicas, self.rank, self.drop_last)

    def _check_indices(self, indices):
        iteration = self._iteration
        depth = None if iteration is None else iteration.handed_out(indices)
        if depth is not None:  # a batch this sampler handed out: valid as it is
            return iteration.batches[iteration.pending[depth]], depth
        idx = as_tensor(indices, "indices")
        if idx.ndim != 1:
            idx = idx.reshape(-1)
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"'indices' must be integer dataset indices, got dtype {idx.dtype}.")
        idx = idx.to(torch.int64)
        if idx.device.type != "cpu":  # checked on the device when recorded
            return idx, None
        iteration = self._iteration
        depth = None if iteration is None else iteration.find(idx)
        if depth is not None:  # a batch this sampler handed out: valid
            return iteration.batches[iteration.pending[depth]], depth
        if len(idx):
            low, high = (int(v) for v in torch.aminmax(idx))
            if low < 0 or high >= self.n_samples:
                raise ValueError(f"'indices' must lie in [0, {self.n_samples}), got values in "
                                 f"[{int(low)}, {int(high)}]; pass dataset indices.")
        return idx, None

    def _check_features(self, features):
        if features is None or callable(features):
            return features
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[0] != self.n_samples:
            raise ValueError(f"The 'features' array of GraftBatchSampler must have shape "
                             f"({self.n_samples}, n_features), got {tuple(features.shape)}.")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("The 'features' array contains NaN or infinity.")
        return features


# ------------------------------------------------------------------------ helpers


def _without(candidates, rows, n_samples):
    """``candidates`` (dataset indices) without ``rows``, in their order."""
    keep = torch.ones(n_samples, dtype=torch.bool)
    keep[rows] = False
    return candidates[keep[candidates]]


def _dataset_length(data_source):
    owner = "GraftBatchSampler"
    if isinstance(data_source, Sampler):
        raise TypeError(
            f"The 'data_source' of {owner} must be a dataset or a number of samples. Got a "
            f"{type(data_source).__name__}, a Sampler: Lightning re-creates batch samplers that "
            "way under DDP. Pass use_distributed_sampler=False to lightning.Trainer "
            "(GraftBatchSampler shards over the ranks itself), with "
            "graft_select.lightning.GraftCallback(sampler) among the callbacks.")
    if isinstance(data_source, (bool, np.bool_)):
        raise TypeError(f"The 'data_source' of {owner} must be a dataset or an int number of "
                        f"samples. Got {data_source!r} instead.")
    if isinstance(data_source, numbers.Integral):
        n = int(data_source)
    else:
        try:
            n = len(data_source)
        except TypeError:
            raise TypeError(f"The 'data_source' of {owner} must be a dataset with a length or "
                            f"an int number of samples. Got {type(data_source).__name__} "
                            "instead.") from None
    if n < 1:
        raise ValueError(f"The 'data_source' of {owner} must have at least one sample, got "
                         f"length {n}.")
    return n


def _same_device(gradients, X):
    if gradients is None:
        return None
    device = X.device
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(gradients.residuals.to(device), gradients.inputs.to(device))
    return gradients.to(device)


def _dist_ready():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _check_replica_args(num_replicas, rank):
    owner = "GraftBatchSampler"
    if num_replicas is not None:
        num_replicas = check_int(num_replicas, "num_replicas", owner, low=1)
    if rank is not None:
        high = None if num_replicas is None else num_replicas - 1
        rank = check_int(rank, "rank", owner, low=0, high=high)
    return num_replicas, rank


def _replicas(num_replicas, rank):
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if _dist_ready() else 1
    if rank is None:
        rank = torch.distributed.get_rank() if _dist_ready() else 0
    num_replicas = check_int(num_replicas, "num_replicas", "GraftBatchSampler", low=1)
    rank = check_int(rank, "rank", "GraftBatchSampler", low=0, high=num_replicas - 1)
    return num_replicas, rank


def _check_feedback_dtype(dtype):
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, dtype)
    if dtype not in FEEDBACK_DTYPES:
        names = ", ".join(str(d) for d in FEEDBACK_DTYPES)
        raise ValueError(f"The 'feedback_dtype' parameter of GraftBatchSampler must be one of "
                         f"{names}. Got {dtype!r} instead.")
    return dtype
