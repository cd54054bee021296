"""RefitSchedule: which epochs of GraftBatchSampler refit, fixed or under an overhead budget.

After ``warm_start_epochs`` epochs on the full data the first refit comes; the next
ones come every ``refit_every`` epochs when that is set, or else as often as the
overhead budget allows. The budget is kept over the whole run: after a refit, the
next one waits the fewest epochs ``k`` for which the seconds of every refit so far,
plus one more refit as costly as the last, stay within ``max_overhead`` of the
training seconds by then (those timed so far plus ``k`` selected epochs, each
timed from the last epoch's seconds per sample). So the share holds whenever the
run stops, its last interval cut short included, and the warm start's epochs,
which select nothing, lend the first refits their share. Under
``torch.distributed`` rank 0's decision is broadcast, so every rank plans alike;
the decisions and the seconds behind them go into the sampler's ``state_dict``,
so a resumed run keeps them.

This module imports torch; only the epoch planner imports it.
"""

import math
import time

import torch

__all__ = ["RefitSchedule", "refit_interval"]

# The longest wait between two refits that the budget may choose, in epochs: a
# refit costing more than this many epochs of training at the budget still comes.
MAX_INTERVAL = 50


def refit_interval(spent, last_refit, trained_seconds, epoch_seconds, max_overhead):
    """Epochs until the next refit: the fewest ``k >= 1`` with ``spent + last_refit <=
    max_overhead * (trained_seconds + k * epoch_seconds)``; 1 when the epoch time is
    unknown, at most `MAX_INTERVAL`.

    ``spent`` is the seconds of every refit so far (`RefitSchedule.refit_seconds`),
    ``last_refit`` the last one's (the next refit's estimate) and
    ``trained_seconds`` the training seconds so far.
    """
    if epoch_seconds is None or epoch_seconds <= 0:
        return 1
    needed = (spent + last_refit) / max_overhead - trained_seconds
    wait = math.ceil(needed / epoch_seconds - 1e-9)
    return int(min(MAX_INTERVAL, max(1, wait)))


class RefitSchedule:
    """The refit epochs of one sampler.

    Parameters
    ----------
    warm_start_epochs : int
        Epochs on the full data before the first refit.
    refit_every : int or None
        Epochs between refits; None spaces them by ``max_overhead``.
    max_overhead : float
        Largest share of the wall-clock that selection may take (``refit_every=None``).
    clock : callable, default=time.perf_counter
        The wall-clock, in seconds.
    """

    def __init__(self, warm_start_epochs, refit_every, max_overhead, clock=time.perf_counter):
        self.warm_start_epochs = warm_start_epochs
        self.refit_every = refit_every
        self.max_overhead = max_overhead
        self.clock = clock
        self.refits = []  # epochs that refit, in order
        self.next_refit = warm_start_epochs
        self.reason = ""
        self._started = None  # (epoch, clock at its start, its plan size)
        self._seconds_per_sample = None
        self._inside = 0.0  # refit seconds spent inside the current epoch's timing
        self.refit_seconds = 0.0  # seconds of every refit so far (what the budget counts)
        self.trained_seconds = 0.0  # seconds of every timed epoch so far, refits left out

    def refit_epoch(self, epoch):
        """The epoch whose refit a selected ``epoch`` trains on (``epoch`` if one is due)."""
        if self.refit_every is not None:
            return epoch - (epoch - self.warm_start_epochs) % self.refit_every
        if epoch >= self.next_refit and (not self.refits or epoch > self.refits[-1]):
            return epoch
        earlier = [r for r in self.refits if r <= epoch]
        return earlier[-1] if earlier else epoch

    def epoch_started(self, epoch, plan_size):
        """Time the epoch that just ended (wall-clock per sample) and start ``epoch``'s."""
        now = self.clock()
        if self._started is not None and self._started[0] == epoch - 1:
            seconds = now - self._started[1] - self._inside
            if seconds > 0 and self._started[2] > 0:
                self._seconds_per_sample = seconds / self._started[2]
                self.trained_seconds += seconds
        self._started, self._inside = (epoch, now, plan_size), 0.0

    def spent(self, seconds):
        """Leave ``seconds`` of selection work out of the current epoch's timing."""
        self._inside += seconds

    def refitted(self, epoch, seconds, subset_size, num_replicas=1, inside=None):
        """Record the refit of ``epoch`` (``seconds`` of work); plan the next.

        ``inside``: of those, the seconds spent inside the current epoch's timing
        (``seconds`` when None; a background refit's wait).
        """
        self._inside += seconds if inside is None else inside
        self.refits = sorted(set(self.refits) | {epoch})
        self.refit_seconds += seconds
        if self.refit_every is not None:
            self.next_refit, self.reason = epoch + self.refit_every, "refit_every"
            return
        per_sample = self._seconds_per_sample
        epoch_seconds = None if per_sample is None else per_sample * subset_size / num_replicas
        wait = _agree(refit_interval(self.refit_seconds, seconds, self.trained_seconds,
                                     epoch_seconds, self.max_overhead), num_replicas)
        self.next_refit = epoch + wait
        if epoch_seconds is None:
            self.reason = "no epoch timed yet: the next epoch refits and is timed"
        else:
            self.reason = (
                f"the refit took {seconds:.3g} s (all refits {self.refit_seconds:.3g} s, "
                f"training {self.trained_seconds:.3g} s so far) and a selected epoch "
                f"trains for about {epoch_seconds:.3g} s: the next refit in {wait} epoch(s) "
                f"keeps selection under max_overhead={self.max_overhead} of the run")

    def state(self):
        """The decisions so far, for the sampler's state_dict."""
        return {"refit_epochs": list(self.refits), "next_refit": self.next_refit,
                "refit_seconds": self.refit_seconds, "trained_seconds": self.trained_seconds}

    def load(self, refit_epochs, next_refit, refit_seconds=0.0, trained_seconds=0.0):
        """Restore :meth:`state` output (checked); epoch timing starts afresh.

        States saved before the budget was kept over the whole run have no seconds:
        0 for both, so the next decision spaces refits by the last one's cost alone.
        """
        self.refits, self.next_refit = list(refit_epochs), next_refit
        self.refit_seconds, self.trained_seconds = float(refit_seconds), float(trained_seconds)
        self._started, self._seconds_per_sample, self._inside = None, None, 0.0


def _agree(value, num_replicas):
    """Rank 0's ``value`` on every rank (``value`` itself without torch.distributed)."""
    if num_replicas == 1 or not (torch.distributed.is_available()
                                 and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
