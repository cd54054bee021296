"""EpochPlanner: which samples GraftBatchSampler trains on in each epoch, and in what order.

:meth:`EpochPlanner.plan` is the one entry point: the plan of epoch ``e`` is the full
data in a warm-start epoch, else a draw of the pool the latest refit selected (computed
when epoch ``e`` is a refit epoch: after the warm start, as the schedule decides; the
draw and the order from ``(seed, e)``; with ``pool_factor=1`` the whole selection).
A refit brings the feedback up to date (the feature source), reports the rejected
rows, lets the label-noise guard remove suspected wrong labels, gives a share of the
budget to the stalest samples, and selects the rest with a
:class:`~graft_select.GraftSelector`; :func:`fit_selector` is the one call into it.

This module imports torch; only the sampler imports it.
"""

import contextlib
import dataclasses
import math
import time
import typing
import warnings

import numpy as np
import torch
from sklearn.base import clone

from . import _guard, _plan
from ._backend import single_threaded
from ._background import BackgroundRefit, FinishedRefit, refit_threads, resolve_background
from ._feedback import refit_workers
from ._schedule import RefitSchedule
from ._sizing import budget as selection_budget
from ._store import NEVER_SEEN
from .selector import BudgetWarning, GraftSelector, StoredGradients, selecting_pool

#: ``max_error_ratio`` of a refit whose selector template says "auto": a chunk keeps
#: MaxVol's picks where their gradient error is at most this share of a uniform
#: subset's of the same size.
SAMPLER_ERROR_RATIO = 0.5

__all__ = ["EpochPlanner", "RefitDraft", "RefitReport", "fit_selector", "quiet_budget_warnings"]


@dataclasses.dataclass(frozen=True)
class RefitReport:
    """What one refit of :class:`GraftBatchSampler` chose and cost.

    Attributes
    ----------
    epoch : int
        Epoch the refit planned.
    fraction : float
        Selected share of the dataset: the pool's (stale refreshes included).
    n_selected : int
        Number of samples the refit selected: the pool each epoch until the next
        refit draws its subset from (before splitting over replicas).
    gradient_error : float or None
        Mean over chunks of the relative error of the chunk's mean gradient
        approximated by the selected samples; None without gradient feedback.
    seconds : float
        Wall-clock seconds spent selecting (feature pass included); for a
        background refit, its preparation on the main thread and its thread's.
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
        Always 0 with ``loss="mse"``: the guard reads class probabilities from
        cross-entropy residuals, so it does not act on squared-error feedback.
    excluded_indices : tuple of int, default=()
        Their dataset indices, lowest probability of the given label first.
    n_unobserved : int, default=0
        Candidates never observed before this refit (a partial epoch:
        ``limit_train_batches``, ``max_steps``, a crash, or a loop that does not
        call :meth:`~GraftBatchSampler.observe`). They have no feedback, so they
        are trained as refreshes (up to the budget, counted in ``n_refreshed``),
        never left to the selection as rows of zeros; the refit warns.
    next_refit_epoch : int or None, default=None
        The epoch of the next refit, as the schedule decided after this one.
    schedule : str, default=""
        Why: ``"refit_every"`` for a fixed schedule, else the refit's cost, the
        seconds of every refit and of training so far, and the epoch's training
        time that placed the next refit under ``max_overhead``.
    background : bool, default=False
        Whether the refit ran in a background thread while the epoch before it
        trained (from the feedback recorded when that epoch was planned; see
        ``background`` of :class:`GraftBatchSampler`).
    hidden_seconds : float, default=0.0
        Of ``seconds``, those a background refit ran alongside training (off the
        training path).
    waited_seconds : float, default=0.0
        Of ``seconds``, those the training loop waited for a background refit
        to finish when its epoch began.
    epoch_size : int or None, default=None
        Samples each epoch trains until the next refit: the refreshed samples
        and a random draw of the other picks (see ``pool_factor`` of
        :class:`GraftBatchSampler`); ``n_selected`` when every epoch trains the
        whole pool. None in reports made before 0.2.

    Examples
    --------
    >>> import torch
    >>> from graft_select.sampler import GraftBatchSampler
    >>> sampler = GraftBatchSampler(200, batch_size=20, fraction=0.25)
    >>> sampler.observe(torch.arange(200), embeddings=torch.randn(200, 3),
    ...                 logits=torch.randn(200, 2), targets=torch.randint(0, 2, (200,)))
    >>> sampler.set_epoch(3)  # the first epoch after three warm-start epochs
    >>> report = sampler.last_refit if len(sampler) else None
    >>> report.epoch, report.n_selected, report.n_refreshed, report.epoch_size
    (3, 100, 0, 50)
    """

    __module__ = "graft_select.sampler"

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
    n_unobserved: int = 0
    next_refit_epoch: int | None = None
    schedule: str = ""
    background: bool = False
    hidden_seconds: float = 0.0
    waited_seconds: float = 0.0
    epoch_size: int | None = None


class EpochPlanner:
    """Plans every epoch of a GraftBatchSampler: warm start, refit or reuse.

    Parameters
    ----------
    n_samples : int
        Number of samples of the dataset.
    recorder : FeedbackRecorder
        The recorded feedback (read at refits, and its rejected rows reported).
    source : ObservedFeedback, CallableFeatures or FixedFeatures
        Where a refit's selection inputs come from.
    fraction, chunk_size, refit_every, warm_start_epochs, shuffle, seed, refresh_share, \
selector, label_noise_guard, max_overhead, background, candidate_share, pool_factor :
        The sampler's parameters of the same names (checked).

    Attributes
    ----------
    subset : int64 tensor or None
        Dataset indices the latest refit selected (the pool: its refreshed
        samples first, then the picks, in selection order).
    subset_refreshed : int
        How many of them are refreshes (every epoch trains those).
    subset_epoch : int or None
        The epoch of that refit.
    last_refit : RefitReport or None
        Report of the latest refit.
    selection_seconds : float
        Total seconds spent selecting so far on the training path (a background
        refit counts its preparation and the wait for it, not its hidden seconds).
    """

    def __init__(self, n_samples, recorder, source, *, fraction, chunk_size, refit_every,
                 warm_start_epochs, shuffle, seed, refresh_share, selector, label_noise_guard,
                 max_overhead=0.05, background=False, candidate_share=1.0, pool_factor=1.0):
        self.n_samples = n_samples
        self.recorder = recorder
        self.source = source
        self.fraction = fraction
        self.chunk_size = chunk_size
        self.schedule = RefitSchedule(warm_start_epochs, refit_every, max_overhead)
        self.warm_start_epochs = warm_start_epochs
        self.shuffle = shuffle
        self.seed = seed
        self.refresh_share = refresh_share
        self.candidate_share = candidate_share
        self.pool_factor = pool_factor
        self.selector = selector
        self.label_noise_guard = label_noise_guard
        self.subset = None
        self.subset_epoch = None
        self.subset_refreshed = 0
        self.last_refit = None
        self.selection_seconds = 0.0
        self._planned = None  # (epoch, plan) of the latest plan() call
        self.background = background  # "auto", True or False
        self.background_ = None  # resolved at the first refit that may run in the background
        self._pending = None  # BackgroundRefit (or FinishedRefit) of the next refit epoch

    # -------------------------------------------------------------------- plans

    def plan(self, epoch, num_replicas=1):
        """The plan of ``epoch``: dataset indices in training order, computed once.

        Parameters
        ----------
        epoch : int
            The epoch.
        num_replicas : int, default=1
            Ranks whose feedback a refit merges first.

        Returns
        -------
        plan : int64 tensor of shape (m,)
        """
        if self._planned is not None and self._planned[0] == epoch:
            return self._planned[1]
        if self._pending is not None and self._pending.done():
            self.recorder.store.release()  # the held observations, the BLAS limits
        self.schedule.epoch_started(epoch, self.expected_size(epoch))
        if self._full_data(epoch):
            subset = torch.arange(self.n_samples)
        else:
            fit_epoch = self.refit_epoch(epoch)
            if self.subset is None or self.subset_epoch != fit_epoch:
                self.subset, self.subset_refreshed = self._refit(epoch, fit_epoch, num_replicas)
                self.subset_epoch = fit_epoch
            subset = self._epoch_subset(epoch)
        if self.shuffle:
            subset = _plan.shuffled(subset, self.seed, epoch)
        self._planned = (epoch, subset)
        self._start_background(epoch, num_replicas)
        return subset

    def plan_size(self, epoch, num_replicas=1):
        """Number of samples in the plan of ``epoch`` (computing it, a refit included)."""
        return len(self.plan(epoch, num_replicas))

    def expected_size(self, epoch):
        """The plan size of ``epoch`` without computing it: exact when the plan or its
        subset is known, else the budget the default selector yields."""
        if self._planned is not None and self._planned[0] == epoch:
            return len(self._planned[1])
        if self._full_data(epoch):
            return self.n_samples
        return self._selected_size()

    def size_runs(self, num_epochs):
        """``[(plan size, epochs), ...]`` of epochs ``0 .. num_epochs - 1``, grouped: the
        sizes :meth:`expected_size` gives, in closed form (every selected epoch but the
        planned one has the same expected size)."""
        full = num_epochs if self.fraction >= 1.0 else min(num_epochs, self.warm_start_epochs)
        runs = [(self.n_samples, full), (None, num_epochs - full)]
        if self._planned is not None and full <= self._planned[0] < num_epochs:
            runs[1] = (None, runs[1][1] - 1)
            runs.append((len(self._planned[1]), 1))
        if runs[1][1] > 0:
            runs[1] = (self._selected_size(), runs[1][1])
        return [(size, count) for size, count in runs if count > 0]

    def refit_due(self, epoch):
        """Whether ``epoch`` would refit (a selected epoch whose subset is not known yet)."""
        return not self._full_data(epoch) and self.refit_epoch(epoch) == epoch and not (
            self.subset_epoch == epoch)

    def _selected_size(self):
        """Plan size of a selected epoch: the pool's draw, or before a refit the budget's."""
        if self.subset is not None:
            return self._epoch_size(len(self.subset), self.subset_refreshed)
        return self._epoch_size(None, _first_refreshes(self))

    def _epoch_size(self, pool, refreshed):
        """Samples a selected epoch trains, ``refreshed`` of them refreshes, from a pool of
        ``pool`` (None: not selected yet). With ``pool_factor=1`` the whole selection
        (before it, the budget or a sample per chunk if more, as a refit gives); with a
        pool, the budget (or the refreshes if more), at most the pool."""
        remaining = self._budget() - refreshed
        if self.pool_factor != 1.0:
            size = refreshed + max(remaining, 0)
            return size if pool is None else min(pool, size)
        if pool is not None:
            return pool
        if remaining <= 0:
            return refreshed
        chunks = math.ceil((self._n_candidates() - refreshed) / max(2, self.chunk_size))
        return refreshed + max(remaining, chunks)  # every chunk keeps at least one sample

    def _epoch_subset(self, epoch):
        """The samples of selected ``epoch``, drawn from the refit's pool."""
        size = self._epoch_size(len(self.subset), self.subset_refreshed)
        return _plan.pool_draw(self.subset, self.subset_refreshed, size, self.seed, epoch)

    def refit_epoch(self, epoch):
        """The epoch whose refit a selected ``epoch`` trains on."""
        return self.schedule.refit_epoch(epoch)

    def _full_data(self, epoch):
        return epoch < self.warm_start_epochs or self.fraction >= 1.0

    def _budget(self):
        """Samples a selected epoch trains (before the at-least-one-per-chunk rule)."""
        return selection_budget(self.fraction, self.n_samples)

    def _pool_budget(self):
        """Samples a refit selects (see :func:`~graft_select._plan.pool_size`)."""
        return _plan.pool_size(self.n_samples, self.fraction, self.pool_factor)

    def _n_candidates(self):
        return candidate_count(self.n_samples, self._pool_budget(), self.candidate_share)

    # -------------------------------------------------------------------- state

    def state(self):
        """The subset, its epoch, the selection time and the refit schedule's decisions,
        for the sampler's state_dict; a background refit in progress is waited for and
        its result kept (a resumed run then plans its epoch alike)."""
        return {"subset": None if self.subset is None else self.subset.clone(),
                "subset_epoch": self.subset_epoch, "subset_refreshed": self.subset_refreshed,
                "pool_factor": self.pool_factor,
                "selection_seconds": self.selection_seconds, **self.schedule.state(),
                "background": self.background_, "pending_refit": _pending_state(self._pending)}

    def load(self, checked):
        """Restore :meth:`state` output (checked, see `_state.check_state`)."""
        self._take_pending(None)  # a refit in progress belongs to the replaced run
        self.subset = checked["subset"]
        self.subset_epoch = checked["subset_epoch"]
        self.subset_refreshed = checked["subset_refreshed"]
        self.selection_seconds = checked["selection_seconds"]
        if checked.get("next_refit") is not None:  # states saved before 0.2 have none
            self.schedule.load(checked["refit_epochs"], checked["next_refit"],
                               checked["refit_seconds"], checked["trained_seconds"])
        if self.background == "auto" and checked.get("background") is not None:
            self.background_ = checked["background"]  # the saved run's decision
        pending = checked.get("pending_refit")
        if pending is not None:
            draft = RefitDraft(
                fit_epoch=pending["epoch"], snapshot_epoch=pending["snapshot_epoch"],
                candidates=None, refreshed=pending["refreshed"], budget=pending["budget"],
                selector_seed=0, tables={}, report=pending["report"], background=True)
            self._pending = FinishedRefit(draft, (pending["chosen"], pending["error"]),
                                          pending["seconds"])
        self._planned = None

    # ------------------------------------------------------------------- refits

    def _refit(self, epoch, fit_epoch, num_replicas):
        """The subset of the refit at ``fit_epoch`` (from epoch ``epoch``): collected from
        the background refit started one epoch earlier, or selected now."""
        pending = self._take_pending(fit_epoch)
        if pending is not None:
            return self._collect(pending, num_replicas)
        start = time.perf_counter()
        draft = self._prepare(epoch, fit_epoch, num_replicas)
        with refit_workers(refit_threads(num_replicas)):  # training waits: use the cores
            chosen, error = self._choose(draft)
        return self._finish(draft, chosen, error, time.perf_counter() - start, num_replicas)

    def _prepare(self, epoch, fit_epoch, num_replicas):
        """What a refit reads from the store, read now (on the main thread): the ranks'
        merge, the rejected rows, the guard, the stalest samples, the tables."""
        generator = _plan.epoch_generator(self.seed, fit_epoch)
        n = self.n_samples
        candidates = refit_candidates(n, self._n_candidates(), self.shuffle, generator)
        budget = self._pool_budget()
        feature_seconds, gathered_bytes = self.source.refresh(candidates, epoch, num_replicas)
        rejected, n_rejected = self.recorder.report_rejected()
        unusable = self.recorder.unusable(num_replicas)
        with single_threaded():  # no thread pool spins on the cores another one needs
            candidates, excluded = self._guard(candidates, budget)
            if len(unusable):  # no feedback, and not for lack of an observe()
                candidates = _without(candidates, unusable, n)
            never = self._unobserved(candidates)
            # refreshes are trained every epoch: a share of an epoch's budget
            refreshed = (self._stalest(candidates, self._budget(), never)
                         if self.source.refreshes_stale else torch.zeros(0, dtype=torch.int64))
        if len(refreshed) >= self._budget():  # an epoch of refreshes: no pick would train
            budget = len(refreshed)
        store = self.recorder.store
        return RefitDraft(
            fit_epoch=fit_epoch, snapshot_epoch=epoch, candidates=candidates,
            refreshed=refreshed, budget=budget,
            selector_seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
            tables={name: store[name] for name in store},
            report=dict(n_rejected=n_rejected, rejected_indices=tuple(rejected.tolist()),
                        gathered_bytes=gathered_bytes, feature_seconds=feature_seconds,
                        n_excluded=len(excluded), excluded_indices=tuple(excluded.tolist()),
                        n_unobserved=never))

    def _choose(self, draft):
        """GRAFT's picks for a prepared refit, and the mean error (reads draft.tables only:
        it may run in a background thread)."""
        with single_threaded():
            return self._select(draft)

    def _finish(self, draft, chosen, error, seconds, num_replicas, timing=None):
        """The refit's pool and its number of refreshes; its report, its seconds and the
        schedule's next decision.

        ``timing`` is ``(seconds on the training path, hidden, waited)`` of a
        background refit; None for one that ran on the training path.
        """
        subset = torch.cat([draft.refreshed, chosen])
        epoch_size = self._epoch_size(len(subset), len(draft.refreshed))
        # what an epoch trains against its budget (a pool's own overshoot trains nothing)
        _warn_budget(epoch_size, max(self._budget(), len(draft.refreshed)), self.fraction,
                     self.n_samples, self.chunk_size)
        on_path, hidden, waited = (seconds, 0.0, 0.0) if timing is None else timing
        self.selection_seconds += on_path
        # the whole refit counts against the budget (a background one shares the
        # machine); the epoch's timing leaves out what this epoch spent on it
        self.schedule.refitted(draft.fit_epoch, seconds, epoch_size, num_replicas,
                               inside=seconds if timing is None else waited)
        self.last_refit = RefitReport(
            epoch=draft.fit_epoch, fraction=len(subset) / self.n_samples,
            n_selected=len(subset), gradient_error=error, seconds=seconds,
            n_refreshed=len(draft.refreshed), next_refit_epoch=self.schedule.next_refit,
            schedule=self.schedule.reason, background=timing is not None,
            hidden_seconds=hidden, waited_seconds=waited, epoch_size=epoch_size,
            **draft.report)
        return subset, len(draft.refreshed)

    # ------------------------------------------------------- background refits

    def _start_background(self, epoch, num_replicas):
        """After planning ``epoch``: start the refit of ``epoch + 1`` in the background when
        it is due, from the feedback as it is now (a deterministic point)."""
        fit_epoch = epoch + 1
        if (self._pending is not None or epoch < 1 or not self.source.background_capable
                or not self.refit_due(fit_epoch)):
            return
        if self.background_ is None:  # every rank gets here at the same epoch
            self.background_ = resolve_background(self.background, self.recorder.store.device,
                                                  num_replicas)
        if not self.background_:
            return
        start = time.perf_counter()
        draft = self._prepare(epoch, fit_epoch, num_replicas)
        draft.prepare_seconds, draft.background = time.perf_counter() - start, True
        self.schedule.spent(draft.prepare_seconds)  # on this epoch's training path
        quiet_budget_warnings()
        self._pending = BackgroundRefit(draft, self._choose)
        self.recorder.store.hold(self._pending)

    def _take_pending(self, fit_epoch):
        """The background refit of ``fit_epoch``, taken; another one is waited for and
        dropped (a skipped epoch: the refit of ``fit_epoch`` then runs now)."""
        pending, self._pending = self._pending, None
        if pending is None or (getattr(pending, "draft", None) is not None
                               and pending.draft.fit_epoch == fit_epoch):
            return pending
        self.recorder.store.release()
        return None

    def _collect(self, pending, num_replicas):
        """The subset of a background refit, waiting for what is left of it."""
        self.recorder.store.release()
        (chosen, error), waited = pending.result()
        draft = pending.draft
        seconds = draft.prepare_seconds + pending.seconds
        on_path = draft.prepare_seconds + waited
        return self._finish(draft, chosen, error, seconds, num_replicas,
                            timing=(on_path, max(0.0, pending.seconds - waited), waited))

    def _guard(self, candidates, budget):
        """Candidates without the suspected wrong labels, and those (see label_noise_guard)."""
        if not self.label_noise_guard:
            return candidates, torch.zeros(0, dtype=torch.int64)
        return _without_suspects(self.recorder.store, candidates, budget, self.n_samples)

    def _unobserved(self, candidates):
        """Number of candidates never observed (observe-only mode; they have no feedback)."""
        if not self.source.refreshes_stale:
            return 0
        never = int((self.recorder.store.last_seen.cpu()[candidates] == NEVER_SEEN).sum())
        if never:
            _warn_unobserved(never, len(candidates), self._budget())
        return never

    def _stalest(self, candidates, budget, never=0):
        """The least recently observed candidates (never observed first), in a share of
        budget that holds every never-observed one it can."""
        share = refresh_count(self.refresh_share, budget, never)
        store = self.recorder.store
        if share == 0:
            return torch.zeros(0, dtype=torch.int64)
        return store.stalest(candidates, share)

    def _select(self, draft):
        """GRAFT's picks among the candidates (refreshed ones aside), and the mean error."""
        candidates, refreshed = draft.candidates, draft.refreshed
        remaining = draft.budget - len(refreshed)
        if remaining <= 0:
            return torch.zeros(0, dtype=torch.int64), None
        if len(refreshed):
            candidates = _without(candidates, refreshed, self.n_samples)
        if remaining >= len(candidates):  # a tiny dataset: every candidate is needed
            return candidates, None
        selected, pool = _pool_request(remaining, self._budget(), draft.budget)
        selector = self._make_selector(selected / len(candidates), draft)
        X, gradients = self.source.inputs(candidates, selector, draft.tables)
        fit_selector(selector, X, gradients, candidates, quiet=not draft.background,
                     pool=pool)
        local = selector.sample_indices_.to("cpu") if torch.is_tensor(
            selector.sample_indices_) else torch.as_tensor(selector.sample_indices_)
        error = selector.gradient_error_
        return candidates[local], None if error is None else float(np.mean(error))

    def _make_selector(self, fraction, draft):
        template = self.selector or GraftSelector(basis="gradients", uniform_share=0.0)
        selector = clone(template)
        has_gradients = "residuals" in draft.tables or "gradients" in draft.tables
        params = {"fraction": min(1.0, fraction), "chunk_size": max(2, self.chunk_size),
                  "random_state": draft.selector_seed}
        if selector.basis == "gradients" and not has_gradients:
            params["basis"] = "input"
        if selector.get_params().get("max_error_ratio") == "auto":
            # refits reselect every few epochs from a model that keeps learning: a
            # looser check than a selection used once (0.25) kept the long-tail lead
            # and held label noise at uniform's level (RESULTS.md, issue 22)
            params["max_error_ratio"] = SAMPLER_ERROR_RATIO
        return selector.set_params(**params)


def _pool_request(remaining, budget, pool_budget):
    """``(selected, pool)``: the selection whose factors and orders give a refit's
    ``remaining`` picks, and the pool asked of it (None: the selection itself).

    The selection is the pool's budget share (the epoch's ``budget`` over the
    refit's ``pool_budget``), whose size band reaches twice it, so a pool costs
    what a selection of the budget does; refreshes shrink both alike, so the
    factor's rank keeps up with the pool.
    """
    selected = min(remaining, max(1, -(-remaining * budget // max(pool_budget, budget))))
    return selected, (remaining if remaining > selected else None)


def _pending_state(pending):
    """A background refit's result for the state (waited for), or None."""
    if pending is None:
        return None
    (chosen, error), _ = pending.result()
    draft = pending.draft
    return {"epoch": draft.fit_epoch, "snapshot_epoch": draft.snapshot_epoch,
            "refreshed": draft.refreshed.clone(), "chosen": chosen.clone(),
            "error": error, "budget": draft.budget,
            "seconds": draft.prepare_seconds + pending.seconds, "report": dict(draft.report)}


def _warn_budget(size, budget, fraction, n_samples, chunk_size):
    if abs(size - budget) > 0.1 * budget:
        warnings.warn(
            f"GraftBatchSampler selected {size} samples for a budget of {budget} "
            f"(fraction={fraction} of {n_samples}): every selection chunk keeps at least one "
            f"sample. Raise 'fraction' or 'chunk_size' (now {chunk_size}) to hold the budget.",
            UserWarning, stacklevel=8)


def _warn_unobserved(never, candidates, budget):
    what = ("no sample was observed" if never == candidates else
            f"{never} of the {candidates} samples were never observed")
    warnings.warn(
        f"GraftBatchSampler refits without feedback for part of the data: {what} (a partial "
        f"epoch: limit_train_batches, max_steps or an interrupted run; or a loop that does not "
        f"call observe()). They are trained as refreshes, up to the budget of {budget}, "
        f"instead of being selected as rows of zeros (last_refit.n_unobserved). Call "
        f"sampler.observe() after every training batch (GraftCallback does it under "
        f"Lightning).", UserWarning, stacklevel=8)


def candidate_count(n_samples, budget, candidate_share):
    """Samples a refit selects from: ``ceil(candidate_share * n)``, at least the budget."""
    if candidate_share >= 1.0:
        return n_samples
    return max(budget, math.ceil(candidate_share * n_samples - 1e-9))


def _first_refreshes(planner):
    """Refreshes the first refit is expected to plan (observe-only; 0 otherwise).

    A share of the budget, or, without a warm start (the first refit comes before
    any full pass), every never-observed candidate the budget holds: the
    :func:`refresh_count` of ``EpochPlanner._stalest``, with the never-observed
    candidates expected now; after a warm start none are left.
    """
    if not planner.source.refreshes_stale:
        return 0
    expected = 0
    if planner.warm_start_epochs == 0:
        never = int((planner.recorder.store.last_seen.cpu() == NEVER_SEEN).sum())
        expected = round(never * planner._n_candidates() / max(1, planner.n_samples))
    return refresh_count(planner.refresh_share, planner._budget(), expected)


def refresh_count(refresh_share, budget, never):
    """Refreshes of a refit: a ``refresh_share`` of the ``budget``, or every one of the
    ``never`` never-observed candidates the budget holds, if more."""
    return max(round(refresh_share * budget), min(never, budget))


def refit_candidates(n, count, shuffle, generator):
    """A refit's ``count`` candidates of ``n`` samples: the first ``count`` of the refit's
    permutation, or (``shuffle=False``) a random draw of them in index order."""
    if shuffle:
        return torch.randperm(n, generator=generator)[:count]
    if count < n:
        return torch.sort(torch.randperm(n, generator=generator)[:count]).values
    return torch.arange(n)


def fit_selector(selector, X, gradients, candidates, quiet=True, pool=None):
    """Fit ``selector`` on the candidates' selection inputs: the one call into the selector.

    ``X is None`` means ``gradients`` are the store's own ``(residuals,
    embeddings)`` tables, read at the rows ``candidates`` through a
    :class:`~graft_select.StoredGradients` view (never copied). The sampler trains
    unweighted, so no weights are computed (nor warned about). ``quiet``: silence the selector's
    BudgetWarning here (the sampler warns itself); a background thread passes
    False, since ``warnings.catch_warnings`` is not thread-safe, and relies on
    :func:`quiet_budget_warnings` instead. ``pool``: select that many rows with the
    factors and orders of the selector's ``fraction`` (see
    ``selector.selecting_pool``).
    """
    with warnings.catch_warnings() if quiet else contextlib.nullcontext():
        # the sampler warns about the budget itself, in its own terms (_warn_budget)
        if quiet:
            warnings.simplefilter("ignore", BudgetWarning)
        if X is None:
            gradients = StoredGradients(*gradients, rows=candidates)
        with selecting_pool(pool):
            selector.fit(X, gradients=gradients, compute_weights=False)


def quiet_budget_warnings():
    """Ignore the selector's BudgetWarning issued from a background refit's thread.

    The selector points its warnings at the first frame outside graft_select,
    which in the refit's thread is in ``threading``; the sampler warns about the
    budget itself, on the main thread (``_warn_budget``). Set on the main thread
    before each background refit (a ``catch_warnings`` block there may have
    restored the filters since).
    """
    warnings.filterwarnings("ignore", category=BudgetWarning, module="threading")


@dataclasses.dataclass
class RefitDraft:
    """What a refit read from the store at its snapshot, for the selection and the report.

    ``tables`` are the store's tensors (views, not copies; the store holds its
    writes while a background refit reads them); ``report`` holds the
    :class:`RefitReport` fields known at the snapshot.
    """

    fit_epoch: int
    snapshot_epoch: int
    candidates: typing.Any
    refreshed: typing.Any
    budget: int
    selector_seed: int
    tables: dict
    report: dict
    prepare_seconds: float = 0.0
    background: bool = False


def _without_suspects(store, candidates, budget, n_samples):
    """The label-noise guard on ``store``'s residuals: candidates without the suspected
    wrong labels, and those (none where the store has no cross-entropy residuals)."""
    none = torch.zeros(0, dtype=torch.int64)
    # squared-error residuals (yhat - y) hold no label probabilities: no guard
    if "residuals" not in store or store.loss != "cross_entropy":
        return candidates, none
    if store.sketched("residuals"):
        warnings.warn(
            f"GraftBatchSampler's label_noise_guard needs the label probabilities, but the "
            f"residuals are stored as a sketch of width {store.sketch_width}; the guard did "
            "not act. Set sketch_width to at least the number of classes, or "
            "label_noise_guard=False.", UserWarning, stacklevel=7)
        return candidates, none
    observed = candidates[store.last_seen.cpu()[candidates] >= 0]
    excluded = _guard.suspected_wrong_labels(store["residuals"], observed, budget)
    if len(excluded) == 0:
        return candidates, none
    return _without(candidates, excluded, n_samples), excluded


def _without(candidates, rows, n_samples):
    """``candidates`` (dataset indices) without ``rows``, in their order."""
    keep = torch.ones(n_samples, dtype=torch.bool)
    keep[rows] = False
    return candidates[keep[candidates]]
