"""Background refits: the next epoch's selection runs while the current epoch trains.

With ``background`` on, the epoch planner takes a snapshot of the feedback when the
epoch before a refit epoch is planned (its ``len()`` or iteration), does there, on
the main thread, everything that reads or merges the store (the ranks' feedback
merge, the rejected rows, the label-noise guard, the stalest samples), and hands the
selection itself to a :class:`BackgroundRefit` thread. Until that thread is done the
store records nothing: observed batches stay staged (see ``FeedbackStore.hold``), so
the thread reads the tables exactly as they were at the snapshot, without a copy. The
refit epoch's plan then collects the result, waiting only for what is left of it.

:func:`resolve_background` turns the sampler's ``background`` parameter into a
decision, the same on every rank.

This module imports torch; only the epoch planner imports it.
"""

import os
import threading
import time

import torch

from ._backend import single_threaded_blas, usable_cores

__all__ = [
    "BackgroundRefit",
    "FinishedRefit",
    "refit_threads",
    "resolve_background",
    "spare_cores",
]


#: Most threads a refit on the training path runs its groups on: 2 threads made a
#: 300,000-row refit 1.8x faster on 2 cores; each one holds a group's working set.
MAX_REFIT_THREADS = 4


def spare_cores():
    """Cores this process may run on, less the threads torch's intra-op pool uses."""
    return usable_cores() - torch.get_num_threads()


def refit_threads(num_replicas):
    """Threads for the groups of a refit on the training path (training waits for it).

    This process's share of the cores, between 1 and `MAX_REFIT_THREADS`: the cores
    divided among the processes of this machine (``LOCAL_WORLD_SIZE``, which
    torchrun sets; else all ``num_replicas``, which cannot overcount them), and
    no more than torch's intra-op threads (``torch.set_num_threads(1)`` or
    ``OMP_NUM_THREADS=1`` keeps a refit on one thread too). The picks do not
    depend on it (`_feedback.refit_workers`). A background refit runs on one
    thread: training needs the other cores.
    """
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    processes = int(local) if local.isdigit() and int(local) > 0 else num_replicas
    share = usable_cores() // max(1, processes)
    return max(1, min(MAX_REFIT_THREADS, share, torch.get_num_threads()))


def resolve_background(setting, device, num_replicas):
    """Whether refits run in the background: ``setting`` if a bool, else decided here.

    ``"auto"`` is on when the feedback lives on an accelerator (training runs
    there, the host's cores wait) or when a core is left over by torch's
    intra-op threads (:func:`spare_cores`); under ``torch.distributed`` rank 0's
    decision holds on every rank (a collective: call it on the main thread).
    """
    if isinstance(setting, bool):
        return setting
    decision = (device is not None and torch.device(device).type != "cpu") or (
        spare_cores() >= 1)
    if num_replicas == 1 or not (torch.distributed.is_available()
                                 and torch.distributed.is_initialized()):
        return decision
    box = [decision]
    torch.distributed.broadcast_object_list(box, src=0)
    return bool(box[0])


class BackgroundRefit:
    """One refit's selection, run in a thread; its result or error on :meth:`result`.

    Not a daemon thread: a process that ends while a refit runs (the last epoch
    starts the refit of an epoch that never comes) waits for it at exit, where
    a daemon thread stopped inside torch or BLAS aborted the interpreter
    ("terminate called without an active exception", exit status 134).

    Parameters
    ----------
    draft : object
        What the main thread prepared at the snapshot (see ``EpochPlanner``);
        ``draft.fit_epoch`` is the epoch the refit plans.
    work : callable
        ``work(draft) -> result``, run in the thread.

    Attributes
    ----------
    draft : object
        The ``draft`` given.
    seconds : float or None
        Wall-clock seconds the thread spent in ``work`` (None while it runs).
    """

    def __init__(self, draft, work):
        self.draft = draft
        self.seconds = None
        self._result = self._error = None
        # set here, on the starting thread: threadpoolctl ignores other threads' BLAS limits
        self._release_blas = single_threaded_blas()
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=False,
                                        name=f"graft-select-refit-{draft.fit_epoch}")
        self._thread.start()

    def _run(self, work):
        torch.get_num_threads()  # torch's per-thread pool setup, before any limit is set
        start = time.perf_counter()
        try:
            self._result = work(self.draft)
        except BaseException as error:  # surfaced on the main thread by result()
            error.add_note(f"(raised in GraftBatchSampler's background refit of epoch "
                           f"{self.draft.fit_epoch}; pass background=False to run it on "
                           f"the training thread)")
            self._error = error
        self.seconds = time.perf_counter() - start

    def done(self):
        """Whether the thread has finished (without waiting)."""
        return self._thread is None or not self._thread.is_alive()

    def wait(self):
        """Block until the thread has finished; return the seconds waited.

        Call it on the thread that started the refit: it restores the BLAS
        limits there once the refit has ended.
        """
        start = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
        self._release_blas()
        return time.perf_counter() - start

    def result(self):
        """Wait for the thread; return ``(result, seconds waited)``, or raise its error.

        The error is the one raised in the thread (its type and traceback), with a
        note naming the background refit.
        """
        waited = self.wait()
        if self._error is not None:  # at every call (state_dict, len, iteration)
            raise self._error
        return self._result, waited

    def __del__(self):
        # the last reference goes with the sampler, on the thread that used it (the
        # refit's thread dropped its own when it ended): the BLAS limits come back
        if getattr(self, "_thread", None) is None or self.done():
            self._release_blas()

    def __getstate__(self):
        self.wait()  # a copy (pickle, deepcopy) holds the finished result, not the thread
        return {**self.__dict__, "_thread": None, "_release_blas": _released}


def _released():
    """The BLAS release of a refit that has already released its limits."""


class FinishedRefit:
    """A background refit's result restored from a state: :class:`BackgroundRefit`'s
    interface, already done (its selection ran in the saved run).

    Parameters
    ----------
    draft : object
        The refit's draft (``fit_epoch``, ``refreshed``, ``budget``, ``report``).
    result : tuple
        ``(chosen, error)`` as the saved run's thread returned it.
    seconds : float
        The refit's seconds in the saved run (its preparation included).
    """

    def __init__(self, draft, result, seconds):
        self.draft = draft
        self.seconds = seconds
        self._result = result

    def done(self):
        """Always True."""
        return True

    def wait(self):
        """Nothing to wait for: 0 seconds."""
        return 0.0

    def result(self):
        """``(result, 0.0)``."""
        return self._result, 0.0
