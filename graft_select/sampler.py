"""GraftBatchSampler: train each epoch on a GRAFT subset, refit from gradient feedback.

The sampler is the torch protocol (``__iter__``, ``__len__``, ``set_epoch``), its
parameters, its state and the sharding over ranks. It hands the rest to its parts:

- a :class:`~graft_select._recorder.FeedbackRecorder` records what ``observe()`` and
  ``watch()`` see (``_recorder.py``, with the store in ``_store.py``);
- an :class:`~graft_select._planner.EpochPlanner` computes each epoch's plan: warm
  start, refit or reuse (``_planner.py``);
- a feature source answers the planner's "selection inputs for these candidates"
  for each kind of ``features`` (``_sources.py``);
- a :class:`~graft_select._iteration.BatchIterator` runs one pass (``_iteration.py``).

This module imports torch; nothing in graft_select imports it back.
"""

import itertools
import numbers
import sys
import warnings

import numpy as np
import torch
from torch.utils.data import Sampler

from . import _plan
from ._backend import load_namespaces
from ._checks import LOSSES, check_labels, check_regression_targets
from ._iteration import (
    BatchIterator,
    LastLayerCapture,
    SidePass,
    calling_owner,
    refuse_accelerate_wrapper,
)
from ._planner import EpochPlanner, RefitReport
from ._recorder import FeedbackRecorder
from ._sources import check_features, feature_source
from ._state import ORDER_KEYS, check_loss, check_order, check_sketch, check_state
from ._store import FEEDBACK_DTYPES
from ._validation import check_bool, check_int, check_option, check_real
from .selector import GraftSelector

__all__ = ["GraftBatchSampler", "LastLayerCapture", "RefitReport"]


class GraftBatchSampler(Sampler[list[int]]):
    """Batch sampler that trains each epoch on a GRAFT subset of the dataset.

    Pass it as ``DataLoader(dataset, batch_sampler=sampler)``. At a refit the
    indices, permuted with ``(seed, epoch)``, are cut into chunks in which
    :class:`~graft_select.GraftSelector` picks samples from the per-sample
    features and gradient proxies; the picks are yielded as batches of
    ``batch_size``. After ``warm_start_epochs`` epochs on the full data, refits
    come as often as ``max_overhead`` allows (or every ``refit_every`` epochs);
    each refit selects a pool of ``pool_factor`` times the epoch's budget, and the
    epochs in between train random draws of it. Refits run with every thread pool at one
    thread (see the user guide).

    Parameters
    ----------
    data_source : Dataset or int
        The dataset (only its length is used) or the number of samples.
    batch_size : int
        Training batch size.
    fraction : float, default=0.3
        Share of the dataset per epoch, in (0, 1]. 1.0 is plain shuffled batching.
    features : callable, array or None, default=None
        Where selection features come from at a refit (see the user guide):
        ``None``, the feedback recorded by :meth:`observe`; a callable
        ``f(indices) -> (embeddings, logits[, targets])`` run under
        ``torch.no_grad()`` over the refit's candidates (all samples unless
        ``candidate_share < 1``) in batches of
        ``feature_batch_size`` at every refit (targets from ``targets`` if it
        returns none); or an array of shape (n_samples, n_features) of fixed
        features, with observed gradient feedback still sizing the subsets.
    chunk_size : int, default=None
        Rows per selection chunk; ``None`` means ``batch_size`` (at least 2).
        Every chunk keeps at least one sample, so a budget below one sample
        per chunk is raised to the number of chunks (a warning says so when
        that moves the budget by more than 10%). Was ``selection_size`` before
        0.2; that name is accepted with a ``FutureWarning`` until 0.4.
    refit_every : int, default=None
        Epochs between refits. ``None`` spaces them so that selection takes at
        most ``max_overhead`` of the run's wall-clock: after each refit the
        sampler waits the fewest epochs (at most 50) after which the seconds of
        every refit so far, plus one more as costly as the last, are within
        ``max_overhead`` of the training seconds measured so far plus those
        epochs (each timed from the last epoch). The share then holds whenever
        the run stops, and the warm start's epochs, which select nothing, lend the
        first refits their share. Rank 0's decision holds on every rank,
        :attr:`last_refit` says what it decided and why, and :meth:`state_dict`
        keeps the decisions and the seconds behind them. Set an int for a
        schedule that does not depend on the machine's speed, and for runs
        that repeat to the bit on one machine: with ``None`` two runs with the
        same ``seed`` can refit at different epochs (see the user guide).
    max_overhead : float, default=0.05
        Largest share of the wall-clock that selection may take, in (0, 1], with
        ``refit_every=None``.
    warm_start_epochs : int, default=3
        Leading epochs on the full data. The model's gradients steady after a
        few epochs, so early selections are on feedback that changes fast; three
        full epochs gave both the better subsets and the smaller selection share
        on the demo's data and on data it was not tuned on (see
        ``benchmarks/RESULTS.md``). With 0 the first epoch already selects: on
        ``features`` if given, else samples never observed are drawn uniformly.
    selector : GraftSelector, default=None
        Template selector (cloned; the sampler sets its ``fraction``, chunk size
        and ``random_state``, and ``max_error_ratio=0.5`` when the template has
        ``"auto"``). ``None`` uses ``GraftSelector(basis="gradients",
        uniform_share=0.0)``: MaxVol on last-layer gradient proxies, where a
        chunk keeps MaxVol's picks only if their gradient error is at most half
        that of a uniform subset of the same size, and the uniform subset
        otherwise. Without that check, MaxVol's picks were mostly wrong labels
        on noisy data (20% wrong labels: 30 points below uniform subsets); with
        it the task suite's worst case is 1.4 points below uniform, and the
        long-tail task keeps its lead (``benchmarks/RESULTS.md``, issue 22).
        ``max_error_ratio=None`` in the template keeps MaxVol's picks
        everywhere.
    drop_last : bool, default=False
        Drop the last incomplete batch.
    shuffle : bool, default=True
        Permute the indices every epoch (with False, chunks follow index order).
    seed : int, default=0
        Seeds every random choice, together with the epoch.
    num_replicas, rank : int, default=None
        Distributed training (read from ``torch.distributed`` when it is
        initialised): each rank gets an equal share of the epoch's subset, as in
        ``DistributedSampler``. At a refit the ranks merge the feedback they
        observed (the newest row of each sample wins), so they agree on the plan.
    targets : array-like of shape (n_samples,) or (n_samples, k), default=None
        The samples' targets, used when :meth:`observe` (or a ``features``
        callable) gets logits without targets: integer class labels of shape
        (n_samples,), or with ``loss="mse"`` float regression targets of shape
        (n_samples,) for one output or (n_samples, k) for k outputs.
    refresh_share : float, default=0.0
        Observe-only mode: share of each refit's budget given to the least
        recently observed samples, not excluded by the guard (all of it while
        nothing was observed). With refits every ``R`` epochs (and
        ``candidate_share=1.0``) no sample's values are then over
        ``R * ceil(1 / (refresh_share * fraction))`` epochs old; with a smaller
        ``candidate_share`` the stalest are picked among each refit's candidates.
    feature_batch_size : int, default=1024
        Batch size of the ``features`` callable.
    feedback_dtype : torch.dtype or str, default=torch.float32
        Dtype of the recorded feedback (and of a loaded state): float32, float16,
        bfloat16 or float64, or its name. float16 and bfloat16 halve the store;
        float16 holds values up to 65,504 (larger rows are rejected).
    sketch_width : int, default=None
        Store feedback wider than this as a fixed Gaussian sketch of this width
        (seeded from ``seed``, scaled by ``1 / sqrt(sketch_width)``), which keeps
        the Gram matrices the selection reads in expectation. ``None`` stores it
        as observed.
    label_noise_guard : bool, default=True
        At each refit with recorded logits and targets, keep suspected wrong
        labels out of the candidates when confident mistakes (label probability
        below 0.05) exceed half the mistakes; on clean data it excludes nothing
        (the rule is in the user guide). :attr:`last_refit` reports the excluded
        samples. It needs the residuals unsketched (``sketch_width`` at least the
        number of classes); otherwise each refit warns and the guard does not act.
        With ``loss="mse"`` there are no label probabilities and the guard never
        acts (``last_refit.n_excluded`` is 0).
    selection_size : int or None
        Deprecated name of ``chunk_size`` (renamed in 0.2, removed in 0.4):
        setting it warns with a FutureWarning; setting both raises.
    background : {"auto", True, False}, default=False
        Run each refit in a background thread while the epoch before it trains.
        Its snapshot of the feedback is the one recorded when that epoch is
        planned (its ``len()`` or iteration, after the ranks' merge): the plan is
        the one a refit on the training thread from that snapshot gives, one
        epoch's observations staler than a refit between epochs; observations
        made meanwhile are recorded once the refit has read the store (held
        until then, at most the store's size). The refit epoch's ``len()`` or
        iteration waits for what is left of it; an error raised in the thread
        is raised there. ``"auto"`` turns it on when a core is left over by
        torch's intra-op threads or the feedback is on an accelerator (rank 0
        decides for every rank; :meth:`state_dict` keeps the decision), which
        makes the plans depend on the machine. Off by default: on the demo's
        data the staler snapshot cost 0.2-0.5 point of accuracy at equal
        samples, paired by seed, and a loaded 2-core machine showed no
        wall-clock gain (``benchmarks/RESULTS.md``). A refit
        with nothing observed before its snapshot (the first epoch's), and a
        ``features`` callable (it runs the model), stay on the training thread.
        :attr:`last_refit` says how many seconds were hidden and waited.
    loss : {"cross_entropy", "mse"}, default="cross_entropy"
        The training loss, which turns observed logits and targets into the
        residuals ``r`` of the gradient proxies ``r outer [embeddings, 1]``:
        ``"cross_entropy"``, softmax cross-entropy on integer class labels,
        ``r = softmax(logits) - onehot(targets)``; ``"mse"``, regression with
        half the squared error ``0.5 * ||yhat - y||^2`` on float targets,
        ``r = yhat - y`` with ``yhat`` the head's ``k`` outputs (the spelling
        of :func:`~graft_select.last_layer_gradients`; ``torch.nn.MSELoss``
        differs by a constant factor, which changes no selection). Float
        targets with ``"cross_entropy"`` raise. :meth:`state_dict` records it.
    candidate_share : float, default=1.0
        Share of the samples each refit selects from: a random draw of
        ``ceil(candidate_share * n_samples)`` samples (from the seed and the
        refit's epoch, the same on every rank and after a resume), from which
        the refit picks its pool (see ``pool_factor``); observe-only refreshes
        (``refresh_share``) pick among them too. A refit then costs less (4,000
        candidates of 20,000: 22 ms instead of 41 ms), so that small models,
        whose refits cost more than an epoch of the subset (``max_overhead``
        then allows one refit in the whole run), can refit often:
        ``refit_every=5, candidate_share=min(1, 4 * fraction)`` (twice the
        pool's share). Measured before pools, with ``refit_every=5,
        candidate_share=2 * fraction`` against the defaults of then, 3 seeds
        (``benchmarks/RESULTS.md``): it turned a 2.3-point loss against uniform
        subsets into a 2.4-point win on a 6-class task held out of all tuning
        (fraction 0.1), and helped on 20% wrong labels and near-duplicates, but
        lost 3.7 points on the long-tail task and 0.25 on the demo's data at
        0.3, at 2 to 4 times the selection time. At least ``fraction``, and
        above the pool's share (every candidate would be selected) unless 1.0.
    pool_factor : float, default=2.0
        Each refit selects a pool of ``pool_factor * fraction`` of the samples
        (at most ``(1 + fraction) / 2`` of them), and every epoch until the next
        refit trains a random ``fraction`` of the samples drawn from the pool
        (from the seed and the epoch: the same on every rank and after a
        resume); observe-only refreshes are in every epoch. ``1.0`` trains the
        refit's whole selection in every epoch. A small model refits seldom
        under ``max_overhead`` (a refit costs about an epoch), and a subset
        trained for many epochs unchanged fits its own samples; drawing from a
        pool twice the size took the task suite from 2 wins, 16 ties and 2
        losses against uniform subsets to 5 / 14 / 1, at about 0.3 point of the
        demo's data at fraction 0.3 (``benchmarks/RESULTS.md``, issue 22). The
        pool comes from the factors and MaxVol orders of the selection of
        ``fraction`` (whose size band reaches twice it), so a refit costs what
        that selection does (a pool above twice ``fraction`` lengthens the
        orders).
        :attr:`last_refit` reports the pool (``n_selected``) and the epoch's
        size (``epoch_size``). At least 1.

    Attributes
    ----------
    last_refit : RefitReport or None
        Report of the latest refit.
    selection_seconds : float
        Total seconds spent selecting so far on the training path (a background
        refit counts its preparation and the wait for it, not its hidden seconds).

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
                 chunk_size=None, refit_every=None, max_overhead=0.05, warm_start_epochs=3,
                 selector=None, drop_last=False, shuffle=True, seed=0, num_replicas=None,
                 rank=None,
                 targets=None, refresh_share=0.0, feature_batch_size=1024,
                 feedback_dtype=torch.float32, sketch_width=None, label_noise_guard=True,
                 selection_size="deprecated", background=False, loss="cross_entropy",
                 candidate_share=1.0, pool_factor=2.0):
        chunk_size = _renamed_chunk_size(chunk_size, selection_size)
        self.loss = check_option(loss, "loss", "GraftBatchSampler", LOSSES)
        vars(self).update(_checked_parameters(
            data_source, batch_size, fraction, features, chunk_size, refit_every,
            max_overhead, warm_start_epochs, selector, drop_last, shuffle, seed, targets,
            refresh_share, feature_batch_size, feedback_dtype, sketch_width, label_noise_guard,
            self.loss))
        self.background = _check_background(background, self.features)
        self.pool_factor = check_real(pool_factor, "pool_factor", "GraftBatchSampler", low=1.0)
        self.candidate_share = _check_candidate_share(candidate_share, self.fraction,
                                                      self.pool_factor)
        self._ranks = _Ranks(num_replicas, rank)
        _check_drop_last(vars(self), self._ranks.known_replicas() or 1)
        self.epoch = 0
        self._recorder, self._planner = _parts(self)
        # (plan offset, samples, num_replicas) to skip at the first iteration after
        # load_state_dict; see _pass_batches
        self._resume = None
        self._resume_done = False  # whether the loaded state's pass had ended
        self._repeated_pass = False  # a full observed pass ran at this epoch before this one
        self._iteration = None  # the current pass (a BatchIterator)
        self._side = None  # a SidePass beside the running pass (see _side_pass)
        self._pass_offsets = (0, 0)  # (plan offset, sample offset) of the current pass
        self._pass_length = 0  # batches the current pass hands out

    @property
    def selection_size(self):
        """Deprecated name of :attr:`chunk_size` (until 0.4)."""
        return self.chunk_size

    @property
    def last_refit(self):
        """Report of the latest refit (a :class:`RefitReport`), or None."""
        return self._planner.last_refit

    @property
    def selection_seconds(self):
        """Total seconds spent selecting so far, on the training path."""
        return self._planner.selection_seconds

    @property
    def num_replicas(self):
        """Number of ranks sharing each epoch (read lazily from torch.distributed)."""
        return self._ranks.resolve()[0]

    @property
    def rank(self):
        """This process's rank among ``num_replicas`` (read lazily from torch.distributed)."""
        return self._ranks.resolve()[1]

    def __getstate__(self):
        return self.__dict__.copy()  # the recorder leaves its forward hook out

    def observe(self, indices=None, *, embeddings=None, logits=None, targets=None,
                gradients=None):
        """Record per-sample feedback from the training loop.

        Call it once per training batch, after the forward pass. Values are
        copied, detached, on their device (nothing is read back to the host);
        later observations overwrite earlier ones. Wrong shapes or dtypes raise;
        rows with NaN, infinity (also once stored) or a label outside
        ``[0, n_classes)`` are not stored, and the next refit warns and lists
        them in :attr:`last_refit`. A sample whose rows had a label out of range
        (-100, an ``ignore_index``) and none was ever stored has no feedback:
        refits leave it out (with a warning) until a row of it is stored. One
        whose rows were rejected for NaN or infinity is trained again at the
        next refit, as a never-observed sample.

        Without ``indices`` the batch is the one the training loop is on: the
        latest batch the DataLoader (or the sampler) handed to the loop, also
        with workers fetching ahead. A batch the loop received and did not
        observe (``if nan_loss: continue``) is skipped: nothing is recorded for
        it. Behind a wrapper around the DataLoader (Lightning's fetcher, a
        generator such as tqdm) every batch must be observed, in order: two
        batches arriving between two observations raise, since a skipped batch
        and a batch fetched ahead look the same; so do two batches at a pass's
        first observation, unless the wrapper is Lightning's (it fetches one
        ahead). Behind another wrapper that fetches ahead, pass ``indices``.
        Observations with ``indices`` that reorder a handed-out batch, or
        hold part of it, mark that batch trained. A DataLoader with
        ``in_order=False`` and workers raises: pass ``indices`` there. Without
        values, the layer hooked by :meth:`watch` gives them, and without
        ``targets`` the sampler's ``targets``: ``sampler.observe()`` alone works
        with an unmodified model and dataset.

        Every sample needs the same kinds of feedback (embeddings, logits and
        targets, or gradients): other kinds raise, and a batch adding a kind
        makes the samples recorded without it count as not observed (with a
        warning). With a half-precision ``feedback_dtype``, rows that overflow
        it or lose over 1% of their norm to underflow are rejected and reported
        like NaN rows.

        Parameters
        ----------
        indices : tensor, array or list of int, shape (b,), default=None
            Dataset indices of the batch. On the host, indices outside the
            dataset raise; on an accelerator their rows are rejected (reported at
            the refit), and they mark the oldest handed-out batch as trained.
        embeddings, logits : tensors of shapes (b, d) and (b, C), default=None
            Penultimate-layer embeddings and model outputs; with ``targets``, the
            gradient proxies ``(softmax(logits) - onehot(targets)) outer [embeddings, 1]``,
            or ``(logits - targets) outer [embeddings, 1]`` with ``loss="mse"``.
            With cross-entropy, one column (``C = 1``) is a binary model's single
            logit ``z`` (sigmoid and binary cross-entropy), read as the two-class
            logits ``(0, z)``.
        targets : tensor of shape (b,) or (b, C), default=None
            Integer class labels of shape (b,) with the default cross-entropy
            (for one-hot targets pass ``targets.argmax(1)``); float regression
            targets of shape (b, C), or (b,) for one output, with ``loss="mse"``.
            For other losses pass ``gradients``.
        gradients : tensor of shape (b, p), default=None
            Explicit per-sample gradient proxies, instead of logits and targets
            (passing both raises).
        """
        if indices is None and self._side is not None and self._side.trained_instead(
                self._iteration, self.epoch):
            self._follow_side_pass()
        if self._repeated_pass:
            self._repeated_pass = False
            refit = (f" and the refit due at epoch {self.epoch + 1} never happens"
                     if self._planner.refit_due(self.epoch + 1) else "")
            warnings.warn(
                f"GraftBatchSampler trains a second full pass at epoch {self.epoch}: "
                f"set_epoch() was not called after the first, so the epoch repeats (the same "
                f"batches, in the same order){refit}. Call sampler.set_epoch(epoch) before "
                f"each epoch; with Lightning, add graft_select.lightning.GraftCallback"
                f"(sampler) to the Trainer's callbacks (Lightning does not call set_epoch on "
                f"a batch sampler).", UserWarning, stacklevel=2)
        self._recorder.observe(self._iteration, self.epoch, indices, embeddings=embeddings,
                               logits=logits, targets=targets, gradients=gradients)

    def _follow_side_pass(self):
        """The side pass, which the loop trains, becomes the running pass."""
        side, running = self._side, self._iteration
        self._repeated_pass = running.observed_any and running.position >= len(running.batches)
        self._iteration, self._side = side.iteration, None
        self._pass_offsets = side.offsets
        self._pass_length = len(side.iteration.batches) - side.iteration.start

    def watch(self, model, layer=None):
        """Capture the input and output of the model's head at every forward.

        :meth:`observe` called without values then records the latest forward
        pass's embeddings (the layer's input) and logits (its output). Watching
        again replaces the previous hook.

        The head is found at the model's first forward: the ``torch.nn.Linear``
        whose output the model returns (alone, or in a tuple or dict), or else
        the one its output is computed from (through ``log_softmax``,
        ``softmax``, a cast or a reshape; with ``loss="mse"`` a cast or a
        reshape only), read from the autograd graph. Where that is ambiguous
        (two heads returned, an output computed from several Linear layers)
        :meth:`observe` raises, naming the candidates: pass ``layer=``. It also
        raises where the output computed from a Linear is not that layer's
        logits (a temperature or scale after it, a cosine classifier, a head
        that is not a ``torch.nn.Linear``): pass ``layer=``, or the embeddings
        and logits to :meth:`observe`. The hooks never raise
        into the model's forward; a layer whose forward gives no ``(b, d)``
        input and ``(b, C)`` output (a tuple or dict output, a per-token
        ``(b, T, d)`` input), or that the forward never calls, is reported by
        :meth:`observe`. Only the last forward before an observation is kept:
        a batch forwarded in micro-batches raises there. A head called more
        than once in one forward of the model (an auxiliary call) raises there
        too, unless the model returns the latest call's output as it is.

        Parameters
        ----------
        model : torch.nn.Module
            The model; its head is hooked.
        layer : torch.nn.Module, default=None
            The layer to hook instead (the one mapping embeddings to logits,
            normally a ``torch.nn.Linear``).

        Returns
        -------
        capture : LastLayerCapture
            The hook; ``capture.remove()`` detaches it.
        """
        return self._recorder.watch(model, layer)

    def set_epoch(self, epoch):
        """Set the epoch of the next iteration (call it before each epoch).

        The current epoch changes nothing (a loaded resume position is kept).
        A loop that iterates the sampler again after a full pass without
        calling it gets a warning: when the next epoch would have refitted, or
        at the first ``observe()`` of the second pass (a pass that is not
        observed, such as an evaluation over the training loader, does not warn).

        Parameters
        ----------
        epoch : int
            The epoch number, from 0: it seeds the epoch's order and selects
            warm-start, refit and reuse epochs.
        """
        epoch = check_int(epoch, "epoch", "GraftBatchSampler.set_epoch", low=0)
        _check_drop_last(vars(self), self._ranks.resolve()[0])
        if epoch != self.epoch:
            self._resume = None
            self._iteration = None
            self._side = None
            self._repeated_pass = False
        self.epoch = epoch

    def __len__(self):
        """Number of batches this rank yields in a full pass of the coming epoch."""
        return self._batches_of(self._planner.plan_size(self.epoch, self.num_replicas))

    def total_batches(self, num_epochs):
        """Number of batches this rank yields over epochs ``0 .. num_epochs - 1``.

        Warm-start epochs count the full data, selected epochs the current subset
        or, before the first refit, the budget: a learning-rate schedule's length.
        The epochs after the warm start plan alike, so this is a closed form
        (``total_batches(10**8)`` costs what ``total_batches(4)`` does).

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
        return sum(batches * count for batches, count in self._batch_runs(num_epochs))

    def _batch_runs(self, num_epochs):
        """``[(batches, epochs), ...]``: this rank's planned batches per epoch over epochs
        ``0 .. num_epochs - 1``, grouped (see total_batches)."""
        return [(self._batches_of(size), count)
                for size, count in self._planner.size_runs(num_epochs)]

    def _epoch_batches(self, epoch):
        """Batches this rank yields in ``epoch`` (planned size; see total_batches)."""
        return self._batches_of(self._planner.expected_size(epoch))

    def __iter__(self):
        refuse_accelerate_wrapper()
        skip = _accelerate_skip(self)
        if skip is None and SidePass.beside(self._iteration):
            return self._side_pass()
        self._warn_if_epoch_repeats()
        if skip is not None and "graft_select.accelerate" in sys.modules:
            sys.modules["graft_select.accelerate"].check_skipped_wrapper(self, skip)
        previous = self._iteration
        if skip is None and previous is not None and previous.untouched and not previous.skip:
            # a pass that handed out nothing yet is started again from where it stood:
            # a DataLoader with workers calls iter() twice before its first batch (when
            # its iterator is made, and again when it resets it), and a resume position
            # must survive both
            batches, start, offsets = previous.batches, previous.start, self._pass_offsets
        else:
            batches, start, offsets = self._pass_batches(skip)
        self._resume = None
        self._pass_offsets = offsets
        self._iteration = BatchIterator(batches, start, self._recorder, skip=bool(skip))
        self._pass_length = len(batches) - start  # batches this pass hands out
        if not skip:
            return self._iteration
        # accelerate's skip_first_batches drops the first `skip` batches it gets: they go
        # out as placeholders, never as handed-out batches (observe() would pair with them)
        return itertools.chain((batch.tolist() for batch in batches[:skip]), self._iteration)

    def _side_pass(self):
        """A pass of the epoch's batches beside the running one (an evaluation over the
        training loader from a callback or between steps): this rank's share of the whole
        plan, in order. The running pass stays the one observe() pairs with and
        state_dict() saves, unless the loop trains the side pass instead (see
        `SidePass.trained_instead`)."""
        running = self._iteration
        if running.observed_any:  # an evaluation in the middle of training: the whole epoch
            batches = _plan.split_batches(self._shard(self._plan()), self.batch_size,
                                          self.drop_last)
            start, offsets = 0, (0, 0)
        else:  # beside a pass nothing observed yet (a sanity check): from where it started
            batches, start, offsets = running.batches, running.start, self._pass_offsets
        self._side = SidePass(BatchIterator(batches, start, self._recorder), offsets)
        return self._side.iteration

    def _pass_batches(self, skip=None):
        """``(batches, start, (plan_offset, sample_offset))`` of the coming pass.

        ``batches`` is this rank's share, cut into batches, of the epoch's plan
        from ``plan_offset`` on, from sample ``sample_offset`` of that share;
        ``start`` batches of it are skipped (a resume position, or accelerate's
        ``skip``). Without a resume the offsets are 0 and ``start`` is too.
        """
        plan_offset, samples = self._resume_offsets()
        restored = (plan_offset, samples)
        if skip is not None and restored not in ((0, 0), (0, skip * self.batch_size)):
            raise ValueError(
                f"accelerate's skip_first_batches(loader, {skip}) skips {skip} batches of a "
                f"GraftBatchSampler that already resumes at another position ({samples} "
                f"samples into the epoch, restored by load_state_dict or "
                f"accelerator.load_state). The sampler resumes by itself: iterate the loader "
                f"without skip_first_batches, or pass the number of batches it had trained.")
        if skip is not None:
            samples = skip * self.batch_size
        plan = self._plan()
        plan = plan[min(plan_offset, len(plan)):]
        share = self._shard(plan)
        samples = min(samples, len(share))
        if samples % self.batch_size == 0:  # the pass's own batches, from a batch boundary
            batches = _plan.split_batches(share, self.batch_size, self.drop_last)
            self._check_batches(batches, share)
            return batches, min(samples // self.batch_size, len(batches)), (plan_offset, 0)
        # a position saved under another batch size: the rest of the share, from there
        batches = _plan.split_batches(share[samples:], self.batch_size, self.drop_last)
        return batches, 0, (plan_offset, samples)

    def _resume_offsets(self):
        """``(plan_offset, samples)`` of the loaded resume position in this sampler's terms."""
        if self._resume is None:
            return 0, 0
        plan_offset, samples, num_replicas = self._resume
        if self._resume_done:  # the saved pass had ended: this epoch has nothing left,
            return plan_offset, sys.maxsize  # whatever its plan's length here
        if num_replicas is None or num_replicas == self.num_replicas:
            return plan_offset, samples
        # another world size: the ranks consumed the first samples * num_replicas
        # entries of the plan from plan_offset (each rank every num_replicas-th one)
        return plan_offset + samples * num_replicas, 0

    def _check_batches(self, batches, share):
        if self.drop_last and not batches and len(share):
            raise ValueError(
                f"GraftBatchSampler with drop_last=True yields no batch in epoch {self.epoch}: "
                f"this rank's share of the plan is {len(share)} samples, fewer than "
                f"batch_size={self.batch_size}. Lower 'batch_size', raise 'fraction' (now "
                f"{self.fraction}), or pass drop_last=False.")

    def _warn_if_epoch_repeats(self):
        """Warn when a full pass is followed by another at the same epoch.

        After a pass the loop observed, the new pass is noted and its first
        observe() warns: two trained passes of one epoch are a loop that forgot
        set_epoch() (the warm-start epochs, or ``fraction=1.0``, then repeat the
        same order forever, and no refit happens), where a pass that is not
        observed (an evaluation over the training loader) says nothing. A loop
        that never observes (fixed ``features``) is warned here, when the next
        epoch would have refitted.
        """
        previous = self._iteration
        if previous is not None and previous.untouched and not previous.skip:
            return  # a DataLoader with workers calls iter() twice: the pass starts again
        self._repeated_pass = False
        if (previous is None or not previous.batches
                or previous.position < len(previous.batches)):
            return
        if previous.observed_any:  # warned at this pass's first observe(), if it has one
            self._repeated_pass = True
            return
        if not self._planner.refit_due(self.epoch + 1):
            return
        warnings.warn(
            f"GraftBatchSampler is iterated again at epoch {self.epoch} after a full pass: "
            f"set_epoch() was not called, so the epoch repeats (the same batches, in the same "
            f"order) and the refit due at epoch {self.epoch + 1} never happens. Call "
            f"sampler.set_epoch(epoch) before each epoch; with Lightning, add "
            f"graft_select.lightning.GraftCallback(sampler) to the Trainer's callbacks "
            f"(Lightning does not call set_epoch on a batch sampler).", UserWarning,
            stacklevel=3)

    def _plan(self):
        """The current epoch's plan (dataset indices in training order)."""
        return self._planner.plan(self.epoch, self.num_replicas)

    def _shard(self, plan):
        return _plan.shard(plan, self.num_replicas, self.rank, self.drop_last)

    def _batches_of(self, size):
        """Batches this rank yields from a plan of ``size`` samples."""
        share = _plan.shard_length(size, self.num_replicas, self.drop_last)
        return _plan.batch_count(share, self.batch_size, self.drop_last)

    def state_dict(self):
        """Everything needed to resume mid-epoch with the same remaining samples.

        Holds the epoch, the batches the loop consumed (observed ones when it
        observes, else handed-out ones) with the ``batch_size`` and
        ``num_replicas`` they count in, the current subset, the recorded
        feedback (one row per sample of each kind observed, the last-seen epochs
        and the rejected rows not yet reported, so a resumed run reports them),
        and the ``loss``, ``sketch_width``, ``seed``, ``shuffle``, ``fraction``,
        ``warm_start_epochs`` and ``pool_factor`` that shaped it. 50,000 samples with
        512-d embeddings and 10 classes take about 104 MB.

        Returns
        -------
        state : dict
            Tensors on the CPU and plain numbers; save it with ``torch.save``.
        """
        num_replicas = self.num_replicas
        # rows observed since the last refit's merge: on several ranks, only this one's
        unmerged = (int(self._recorder.store.changed_rows().numel()) if num_replicas > 1
                    else 0)
        return {"epoch": self.epoch, **self._position(), **self._planner.state(),
                **self._recorder.state(), "loss": self.loss, "sketch_width": self.sketch_width,
                "seed": self.seed, "shuffle": self.shuffle, "fraction": self.fraction,
                "warm_start_epochs": self.warm_start_epochs,
                "sketched": [name for name in self._recorder.store
                                                if self._recorder.store.sketched(name)],
                "rank": self.rank if num_replicas > 1 else 0, "unmerged_rows": unmerged}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output; the next iteration resumes mid-epoch.

        It is checked whole before anything is written; its tensors are copied.
        A state saved under another ``batch_size`` or number of ranks resumes at
        the same sample of the epoch's plan: the remaining samples are cut into
        batches of this sampler's ``batch_size`` and shared over its ranks.

        Parameters
        ----------
        state : dict
            A dictionary returned by :meth:`state_dict`.

        Raises
        ------
        ValueError or TypeError
            If the state is not one of a sampler over a dataset of this size,
            its feedback was recorded under another ``loss``, or sketched with
            another ``sketch_width`` or ``seed``, or its pool drawn for another
            ``pool_factor``, or if it was saved in the middle of an epoch by a
            sampler with another ``seed``, ``shuffle``, ``fraction`` or
            ``warm_start_epochs`` (the rest of the epoch would come from another
            order); the sampler is left unchanged.
        """
        checked = check_state(state, self.n_samples)
        check_loss(checked, self.loss)
        check_sketch(checked, sketch_width=self.sketch_width, seed=self.seed)
        _check_pool_factor(checked, self.pool_factor)
        check_order(checked, {key: getattr(self, key) for key in ORDER_KEYS})
        _warn_other_ranks_feedback(checked, self.num_replicas, self.rank)
        # first: it raises, having changed nothing, for rows feedback_dtype cannot hold
        self._recorder.load(checked)
        self._planner.load(checked)
        self.epoch = checked["epoch"]
        batch_size = checked["batch_size"] or self.batch_size
        self._resume_done = checked["pass_done"]
        self._resume = (checked["plan_offset"],
                        checked["sample_offset"] + checked["batches_yielded"] * batch_size,
                        checked["num_replicas"])
        self._iteration = self._side = None

    def _position(self):
        """The resume position: the state's batches_yielded and what they count in."""
        done = False
        if self._iteration is not None:
            plan_offset, samples = self._pass_offsets
            batches = self._iteration.resume_position()
            num_replicas = self.num_replicas
            done = batches >= len(self._iteration.batches)
        elif self._resume is not None:
            (plan_offset, samples, num_replicas), batches = self._resume, 0
            done = self._resume_done
        else:
            plan_offset = samples = batches = 0
            num_replicas = self._ranks.known_replicas()
        return {"batches_yielded": batches, "batch_size": self.batch_size,
                "num_replicas": num_replicas, "sample_offset": samples,
                "plan_offset": plan_offset, "pass_done": done}


# ------------------------------------------------------------------------ helpers


def _parts(sampler):
    """The sampler's recorder and planner, built from its checked parameters."""
    # a refit's array namespaces (NumPy's for the CPU fast paths): loaded once per
    # process here, not inside the first refit's timed selection
    load_namespaces(np.empty(0), torch.empty(0))
    recorder = FeedbackRecorder(sampler.n_samples, sampler.targets,
                                dtype=sampler.feedback_dtype, sketch_width=sampler.sketch_width,
                                seed=sampler.seed, loss=sampler.loss)
    source = feature_source(sampler.features, recorder, batch_size=sampler.feature_batch_size,
                            targets=sampler.targets)
    planner = EpochPlanner(
        sampler.n_samples, recorder, source, fraction=sampler.fraction,
        chunk_size=sampler.chunk_size, refit_every=sampler.refit_every,
        warm_start_epochs=sampler.warm_start_epochs, shuffle=sampler.shuffle,
        seed=sampler.seed, refresh_share=sampler.refresh_share, selector=sampler.selector,
        candidate_share=sampler.candidate_share, pool_factor=sampler.pool_factor,
        label_noise_guard=sampler.label_noise_guard, max_overhead=sampler.max_overhead,
        background=sampler.background)
    return recorder, planner


def _check_pool_factor(checked, pool_factor):
    """Raise if the state's pool was selected for another ``pool_factor``: the epochs
    until the next refit would draw other samples than the saved run's."""
    saved = checked["pool_factor"]
    if saved is not None and saved != pool_factor:
        raise ValueError(
            f"The state passed to GraftBatchSampler.load_state_dict was saved with "
            f"pool_factor={saved}, but this sampler has pool_factor={pool_factor}: its pool "
            f"and the epochs' draws from it would differ from the saved run's. Build the "
            f"sampler with pool_factor={saved}.")


def _warn_other_ranks_feedback(checked, num_replicas, rank):
    """Warn when a state saved on one of several ranks is loaded on another rank, or under
    another number of ranks: the feedback the other ranks observed since the last refit
    (merged only at refits) is not in it."""
    saved = checked["num_replicas"]
    if not saved or saved == 1 or checked["unmerged_rows"] == 0:
        return
    if saved == num_replicas and checked["rank"] == rank:
        return
    warnings.warn(
        f"This GraftBatchSampler state was saved by rank {checked['rank']} of {saved} and "
        f"is loaded on rank {rank} of {num_replicas}: it holds the feedback that rank "
        f"observed, but not what the other ranks observed since the last refit (ranks "
        f"merge feedback only at refits; {checked['unmerged_rows']} samples were observed "
        f"since then on rank {checked['rank']} alone). The next refits select from older "
        f"values for the other ranks' samples, so the plans differ from an uninterrupted "
        f"run. To resume exactly, save every rank's state_dict() and load each on its own "
        f"rank with the same number of ranks.", UserWarning, stacklevel=3)


def _accelerate_skip(sampler):
    """``skip_batches`` of accelerate's SkipBatchSampler iterating ``sampler``, or None.

    ``accelerate.skip_first_batches(loader, n)`` (its mid-epoch resume) wraps the
    loader's batch sampler in a SkipBatchSampler that drops the first ``n``
    batches it is given; the sampler then starts its pass at batch ``n`` itself.
    """
    module = sys.modules.get("accelerate.data_loader")
    wrapper = getattr(module, "SkipBatchSampler", None)
    if wrapper is None:
        return None
    owner = calling_owner(wrapper, skip=2, depth=4,
                          where=lambda owner: owner.batch_sampler is sampler)
    return None if owner is None else int(owner.skip_batches)


def _check_drop_last(parameters, num_replicas):
    """Raise when drop_last leaves an epoch without a batch (an epoch that trains nothing)."""
    n, batch_size = parameters["n_samples"], parameters["batch_size"]
    if not parameters["drop_last"]:
        return
    fraction = parameters["fraction"]
    budget = n if fraction >= 1.0 else max(1, round(fraction * n))
    share = budget // num_replicas
    if share >= batch_size:
        return
    which = "the full data" if fraction >= 1.0 else f"fraction={fraction} of {n} samples"
    raise ValueError(
        f"GraftBatchSampler with drop_last=True would yield no batch: {which} is {budget} "
        f"samples per epoch, {share} per rank over {num_replicas} rank(s), fewer than "
        f"batch_size={batch_size}. Lower 'batch_size', raise 'fraction' to at least "
        f"{min(1.0, batch_size * num_replicas / n):.3g}, or pass drop_last=False.")


def _renamed_chunk_size(chunk_size, selection_size):
    """``chunk_size``, or the value of its old name ``selection_size`` (with a warning)."""
    if isinstance(selection_size, str) and selection_size == "deprecated":
        return chunk_size
    if chunk_size is not None:
        raise TypeError("GraftBatchSampler got both 'chunk_size' and its old name "
                        "'selection_size'; pass 'chunk_size' only.")
    warnings.warn("'selection_size' was renamed to 'chunk_size' in 0.2 and will be removed "
                  "in 0.4.", FutureWarning, stacklevel=3)
    return selection_size


def _check_candidate_share(candidate_share, fraction, pool_factor):
    """``candidate_share`` checked: a real in (0, 1], above the share a refit selects
    (the pool's, ``fraction`` with ``pool_factor=1``), or 1.0."""
    owner = "GraftBatchSampler"
    share = check_real(candidate_share, "candidate_share", owner, low=0.0, high=1.0,
                       closed="right")
    pool = _plan.pool_share(fraction, pool_factor)
    if share < fraction:
        raise ValueError(f"{owner}'s candidate_share={share} is below fraction={fraction}: a "
                         f"refit selects fraction * n_samples samples from candidate_share * "
                         f"n_samples candidates; pass a candidate_share above the share a "
                         f"refit selects ({pool:.3g} with pool_factor={pool_factor}), for "
                         f"example {min(1.0, 2 * pool):.3g}, or 1.0.")
    if share < 1.0 and share <= pool and pool > fraction:
        raise ValueError(
            f"{owner}'s candidate_share={share} is at most the share of the samples a refit "
            f"selects, {pool:.3g} (a pool of pool_factor={pool_factor} times "
            f"fraction={fraction}): every candidate would be selected. Pass a "
            f"candidate_share of about twice that ({min(1.0, 2 * pool):.3g}), or "
            f"pool_factor=1.0 to select fraction * n_samples samples.")
    return share


def _checked_parameters(data_source, batch_size, fraction, features, chunk_size, refit_every,
                        max_overhead, warm_start_epochs, selector, drop_last, shuffle, seed,
                        targets, refresh_share, feature_batch_size, feedback_dtype, sketch_width,
                        label_noise_guard, loss):
    """The sampler's parameters, checked, by attribute name (n_samples for data_source)."""
    owner = "GraftBatchSampler"
    n_samples = _dataset_length(data_source)
    batch_size = check_int(batch_size, "batch_size", owner, low=1)
    return {
        "n_samples": n_samples,
        "batch_size": batch_size,
        "fraction": check_real(fraction, "fraction", owner, low=0.0, high=1.0, closed="right"),
        "chunk_size": (batch_size if chunk_size is None
                       else check_int(chunk_size, "chunk_size", owner, low=2)),
        "refit_every": (None if refit_every is None
                        else check_int(refit_every, "refit_every", owner, low=1)),
        "max_overhead": check_real(max_overhead, "max_overhead", owner, low=0.0, high=1.0,
                                   closed="right"),
        "warm_start_epochs": check_int(warm_start_epochs, "warm_start_epochs", owner, low=0),
        "refresh_share": check_real(refresh_share, "refresh_share", owner, low=0.0, high=1.0),
        "feature_batch_size": check_int(feature_batch_size, "feature_batch_size", owner,
                                        low=1),
        "drop_last": check_bool(drop_last, "drop_last", owner),
        "shuffle": check_bool(shuffle, "shuffle", owner),
        "seed": check_int(seed, "seed", owner, low=0),
        "selector": _check_selector(selector),
        "features": (features if features is None or callable(features)
                     else check_features(features, n_samples)),
        "targets": _check_targets(targets, n_samples, loss),
        "feedback_dtype": _check_feedback_dtype(feedback_dtype),
        "sketch_width": (None if sketch_width is None
                         else check_int(sketch_width, "sketch_width", owner, low=1)),
        "label_noise_guard": check_bool(label_noise_guard, "label_noise_guard", owner),
    }


def _check_background(background, features):
    if not (background is True or background is False
            or (isinstance(background, str) and background == "auto")):
        raise ValueError(f"The 'background' parameter of GraftBatchSampler must be 'auto', "
                         f"True or False. Got {background!r} instead.")
    if background is True and callable(features):
        raise ValueError(
            "The 'background' parameter of GraftBatchSampler is True, but 'features' is a "
            "callable: a refit runs it on the model, which cannot be read while it trains. "
            "Pass background='auto' or False (refits then run between epochs), or "
            "features=None to select on the observed feedback.")
    return background


def _check_selector(selector):
    if selector is not None and not isinstance(selector, GraftSelector):
        raise TypeError(f"The 'selector' parameter of GraftBatchSampler must be a "
                        f"GraftSelector or None. Got {type(selector).__name__} instead.")
    return selector


def _check_targets(targets, n_samples, loss):
    if targets is None:
        return None
    subject = "The 'targets' parameter of GraftBatchSampler"
    if loss == "mse":
        return check_regression_targets(targets, n_samples, subject=subject)
    return check_labels(targets, n_samples, subject=subject).to(torch.int64)


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


def _dist_ready():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class _Ranks:
    """``(num_replicas, rank)``, read from torch.distributed at the first set_epoch, len()
    or iteration, so that a sampler built before the process group exists still shards.

    Kept once given or read from a process group. Read before any group exists they
    are ``(1, 0)`` for now and read again next time: a ``total_batches()`` before
    ``init_process_group`` used to fix the world size at 1, so every rank trained the
    whole plan and refitted on its own feedback alone. A group found later with
    another world size warns that the values read before it were one process's.
    """

    def __init__(self, num_replicas, rank):
        self._given = _check_replica_args(num_replicas, rank)
        self._resolved = None
        self._assumed = None  # (1, 0) as read before a process group existed

    def resolve(self):
        if self._resolved is not None:
            return self._resolved
        value = _replicas(*self._given)
        if not (_dist_ready() or None not in self._given):
            self._assumed = value
            return value
        if self._assumed is not None and value[0] != self._assumed[0]:
            warnings.warn(
                f"GraftBatchSampler was used before torch.distributed was initialized "
                f"(total_batches(), len(), state_dict(), set_epoch() or a pass) and counted "
                f"for {self._assumed[0]} process; the process group now has "
                f"{value[0]}. Values read before it (an LR schedule sized by "
                f"total_batches()) were for {self._assumed[0]} process: read them after "
                f"init_process_group, or pass num_replicas= and rank= to the sampler.",
                UserWarning, stacklevel=3)
        self._resolved = value
        return value

    def known_replicas(self):
        """num_replicas if known without reading torch.distributed now, else None."""
        return self._resolved[0] if self._resolved is not None else self._given[0]


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
