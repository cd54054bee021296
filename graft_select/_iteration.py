"""Pieces of GraftBatchSampler that track a pass: the batch iterator, the layer capture
and the live feedback that torchdata snapshots hold.

This module imports torch; only the sampler and its parts import it.
"""

import collections
import dis
import itertools
import numbers
import sys
import weakref

import torch

from ._watch import LastLayerCapture

__all__ = ["BatchIterator", "LastLayerCapture", "SidePass"]

#: Counts the batches every pass hands out: which of two passes handed one out last.
_HANDOUTS = itertools.count(1)

#: Pending batches searched for the one observe(indices=...) names (depths 0 to 8).
SEARCH_DEPTH = 9


class BatchIterator:
    """One pass over an epoch's batches that knows what the training loop consumed.

    ``position`` counts the batches handed out (prefetching loaders run ahead of
    the loop); ``pending`` holds the handed-out batches not yet observed, oldest
    first, so that ``observe()`` without indices finds the batch being trained
    and the resume position counts consumed batches.

    Parameters
    ----------
    batches : list of int64 tensors
        The pass's batches (this rank's share of the epoch's plan).
    start : int
        Batches to skip (a resume position).
    feedback : FeedbackRecorder
        Where the recorded feedback is; a torchdata snapshot of this iterator
        saves it (:meth:`FeedbackRecorder.state`) and restores it
        (:meth:`FeedbackRecorder.load_feedback`).
    skip : bool, default=False
        Whether accelerate's ``skip_first_batches`` placeholders precede this pass.
    """

    def __init__(self, batches, start, feedback, skip=False):
        self.feedback = feedback
        self.batches = batches
        self.start = start
        self.skip = skip
        self.position = start
        self.consumed = start
        self.last_handout = 0  # when it last handed out a batch (a count over all passes)
        self.observed_any = False
        self.pending = collections.deque()
        self._distinct = None
        loader = loader_iterator()  # the DataLoader iterator this pass runs under, if any
        self._loader = None if loader is None else weakref.ref(loader)
        # a loader with workers fetches ahead of the loop; one without hands each batch
        # to the loop as it takes it from the sampler
        self._ahead = loader is not None and loader._num_workers > 0
        self.unordered = self._ahead and getattr(loader, "_in_order", True) is False
        self._baseline = None  # (position, loader's yielded count) at the first batch
        self._yielded = None  # the loader's yielded count when it last asked for a batch
        self._frozen = None  # received() as it was when this pass was pickled
        self._consumer = None  # (id, code) of the frame that pulled the latest batch
        self._consumer_module = None  # that frame's module
        self._pulled_by_for = False  # whether that frame pulled it with a for loop
        self._last_received = None  # received() at the previous observe() without indices

    @property
    def distinct(self):
        """Whether no dataset index appears twice in this pass's batches (computed once).

        Batches of such a pass, each observed once, never repeat a sample, so the
        store records them without its duplicate-index rule. Every pass of
        GraftBatchSampler is (the padding of DistributedSampler's rule lands on
        other ranks); the check keeps the rule wherever that would not hold.
        """
        if self._distinct is None:
            every = torch.cat(self.batches) if self.batches else torch.zeros(0, dtype=torch.int64)
            self._distinct = bool(every.numel() == 0 or int(torch.bincount(every).max()) <= 1)
        return self._distinct

    @property
    def untouched(self):
        """Whether this pass has handed out no batch yet."""
        return self.position == self.start and not self.pending

    def loader(self):
        """The DataLoader iterator this pass runs under, while it is alive; else None."""
        return None if self._loader is None else self._loader()

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= len(self.batches):
            raise StopIteration
        self._note_consumer(sys._getframe(1))
        batch = self.batches[self.position]
        self.pending.append(self.position)
        self.position += 1
        self.last_handout = next(_HANDOUTS)
        return batch.tolist()

    def __len__(self):
        return len(self.batches) - self.position

    def resume_position(self):
        """Batches the loop consumed: up to the last observed one if it observes, else the
        ones it received (a DataLoader with workers fetches ahead of the loop: the batches
        handed to its workers are not trained yet, and resuming after them lost them).

        A batch received but not observed after the last observation is handed out
        again on resume: observe() is what marks a batch trained, and a checkpoint
        taken before a batch's step must not skip it.
        """
        return self.consumed if self.observed_any else self.received()

    def __getstate__(self):
        # a pickled pass (torch.save(sampler), a spawned process) keeps its batches and
        # position; the weak reference to a live DataLoader iterator and the frame of
        # the latest pull do not pickle, and belong to this process only
        state = self.__dict__.copy()
        state.update(_loader=None, _baseline=None, _consumer=None, _consumer_module=None,
                     _frozen=self.received())
        return state

    def _note_consumer(self, frame):
        """Remember the frame that pulls batches: the first one outside the DataLoader."""
        while frame is not None and frame.f_globals.get("__name__", "").startswith(
                ("torch.utils.data", "torchdata")):
            frame = frame.f_back
        self._consumer = None if frame is None else (id(frame), frame.f_code)
        self._consumer_module = None if frame is None else frame.f_globals.get("__name__", "")
        self._pulled_by_for = _at_for_iter(frame)
        loader = None if self._loader is None else self._loader()
        if loader is not None:
            if self._baseline is None:  # the loader counts from here (a restored one: not 0)
                self._baseline = (self.position, loader._num_yielded)
            # what the loop had received when the loader asked for this batch: all that
            # received() can tell once the loader is gone (a loop left with break)
            self._yielded = loader._num_yielded

    def received(self):
        """Batches of the pass that reached the training loop (or a wrapper around the loader).

        A DataLoader with workers fetches ahead: its batches reach the loop when
        it yields them, in order, and it counts them (one without workers yields
        each batch as it takes it: all it took were received). Once a loader with
        workers is gone: every batch if it took them all (the loop ran to the end;
        one that left with ``break`` in the last prefetched batches is counted as
        having run them), else the count it had when it last asked for a batch
        (the loop left with ``break``): a batch the loop was given since may be
        counted out (handed out again on resume), never one it was not given. A
        pickled pass keeps the count of the moment it was pickled.
        """
        if self._frozen is not None:
            return self._frozen
        if self._baseline is None or not self._ahead:
            return self.position
        first, yielded = self._baseline
        loader = None if self._loader is None else self._loader()
        if loader is not None:
            return min(self.position, first + loader._num_yielded - yielded)
        if self.position >= len(self.batches):
            return self.position  # the loader took every batch: the loop ran to the end
        return min(self.position, first + self._yielded - yielded)

    def locate(self):
        """Depth in ``pending`` of the batch the training loop is on (observe() without indices).

        The loop is on the latest batch it received. Batches it received before
        and did not observe were skipped: they are consumed, nothing recorded. A
        loop that pulls batches with ``next()`` instead of a ``for`` statement may
        hold one fetched ahead: two pending there raise.
        Behind a wrapper that fetches ahead of the loop (Lightning's fetcher, a
        generator), received batches may not have reached the loop yet: the
        oldest one is then the one trained, unless two or more batches arrived
        since the last observe() (a skipped batch looks the same), which raises.
        At a pass's first observe() there is no last one to count from: two
        batches received then are a wrapper fetching one ahead or a first batch
        whose observe() was skipped, and only a wrapper known to fetch one ahead
        (Lightning's loops) tells them apart; another wrapper raises there.
        """
        if self.unordered:
            raise ValueError(
                "observe() without 'indices' cannot tell which batch the training loop is "
                "on: the DataLoader runs workers with in_order=False, so it yields batches "
                "in the order they are ready, not the order GraftBatchSampler handed them "
                "out. Pass the batch's indices to observe() (a dataset can return each "
                "sample's index), or keep in_order=True (the default).")
        received = self.received()
        depths = [depth for depth, position in enumerate(self.pending) if position < received]
        if not depths:
            raise ValueError(
                "observe() without 'indices' records the batch the training loop received "
                "last, and every batch it received was observed already: observe each "
                "batch once, after its forward pass, or pass indices=.")
        depth = 0
        if len(depths) > 1:
            if self._consumed_here() and not self._pulled_by_for:
                raise ValueError(
                    f"observe() without 'indices' cannot tell which batch the training loop "
                    f"is on: {len(depths)} batches it pulled with next() are not observed "
                    "yet, so a batch fetched ahead (next_batch = next(it) before the current "
                    "one's step) and a batch whose observe() was skipped look the same. Pass "
                    "the batch's indices to observe(), or iterate with a for loop.")
            if self._consumed_here():  # a for loop holds one batch: it is on the latest
                depth = depths[-1]
            elif self._last_received is not None and received - self._last_received >= 2:
                raise ValueError(
                    f"observe() without 'indices' cannot tell which batch the training loop "
                    f"is on: {received - self._last_received} batches reached the loop since "
                    "the last observe() through a wrapper that fetches ahead of it, so a "
                    "batch whose observe() was skipped and a batch fetched ahead look the "
                    "same. Call observe() for every batch, or pass indices=.")
            elif self._last_received is None and len(depths) > 1 + self._known_lookahead():
                raise ValueError(
                    f"observe() without 'indices' cannot tell which batch the training loop "
                    f"is on: at the first observe() of this pass {len(depths)} batches have "
                    f"reached the loop through a wrapper (pulled from "
                    f"{self._consumer_module or 'an unknown frame'}), so a first batch whose "
                    "observe() was skipped and a batch the wrapper fetched ahead look the "
                    "same. Call observe() for every batch, the first included, through a "
                    "wrapper that does not fetch ahead (tqdm, a plain generator), or pass "
                    "indices=.")
        self._last_received = received
        return depth

    def _known_lookahead(self):
        """Batches the wrapper pulling the batches is known to fetch ahead of the loop:
        1 for Lightning's loops (its fetcher prefetches one batch), else 0."""
        module = self._consumer_module or ""
        return 1 if module.startswith(("lightning.pytorch.", "pytorch_lightning.")) else 0

    def _consumed_here(self):
        """Whether the frame that pulled the latest batch is running observe() (no wrapper)."""
        if self._consumer is None:
            return False
        frame_id, code = self._consumer
        frame = sys._getframe(2)
        for _ in range(256):
            if frame is None:
                return False
            if id(frame) == frame_id and frame.f_code is code:
                return True
            frame = frame.f_back
        return False

    def take_pending(self):
        """The oldest handed-out batch not yet observed (for observe() without indices)."""
        if not self.pending:
            return None
        position = self.pending.popleft()
        self._consume(position)
        return self.batches[position]

    def handed_out(self, indices):
        """Depth in ``pending`` of ``indices`` if it is a CPU int64 tensor of a handed-out batch.

        The common case of observe(): the batch passed back as a tensor, as a
        DataLoader yields it. Anything else (another type, dtype or device, a
        batch not handed out) gives None, for the general checks.
        """
        if (type(indices) is not torch.Tensor or indices.dtype is not torch.int64
                or indices.ndim != 1 or indices.requires_grad or indices.device.type != "cpu"):
            return None
        return self.find(indices)

    def find(self, indices):
        """Depth in ``pending`` of the handed-out batch equal to ``indices``, or None."""
        return self._search(lambda batch: batch.shape == indices.shape
                            and torch.equal(batch, indices))

    def containing(self, indices):
        """Depth in ``pending`` of the handed-out batch holding every one of ``indices``
        (the batch reordered, or a part of it), or None.

        Only in a pass whose batches share no index, where one batch at most can hold
        them; looks as deep as `find`.
        """
        if indices.numel() == 0 or not self.distinct:
            return None
        return self._search(lambda batch: bool(torch.isin(indices, batch).all()))

    def _search(self, match):
        """Depth of the first pending batch that ``match`` accepts, among the oldest
        `SEARCH_DEPTH` (the prefetch depth of ordinary loaders; deeper is not a match)."""
        for depth, position in enumerate(itertools.islice(self.pending, SEARCH_DEPTH)):
            if match(self.batches[position]):
                return depth
        return None

    def take(self, depth):
        """Mark the pending batch at ``depth`` (and those before it) consumed."""
        pending = self.pending
        for _ in range(depth):
            pending.popleft()
        self._consume(pending.popleft())

    def _consume(self, position):
        self.observed_any = True
        self.consumed = max(self.consumed, position + 1)

    # torchdata's StatefulDataLoader snapshots the iterator of its batch sampler at the
    # moment it hands indices to a worker, ahead of training. The feedback entry stays
    # live until the state is saved (pickled or deep-copied), so a saved state holds
    # every observation made before it was saved.
    def state_dict(self):
        return {"position": self.position, "feedback": LiveFeedback(self.feedback)}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or set(state) != {"position", "feedback"}:
            raise ValueError("The iterator state of GraftBatchSampler must be a dict with keys "
                             "'position' and 'feedback', as returned by its state_dict().")
        position = state["position"]
        if isinstance(position, bool) or not isinstance(position, numbers.Integral) or not (
                0 <= position <= len(self.batches)):
            raise ValueError(f"The iterator state's 'position' must be an int in [0, "
                             f"{len(self.batches)}]. Got {position!r} instead.")
        feedback = state["feedback"]
        if isinstance(feedback, LiveFeedback):
            feedback = feedback.snapshot()
        self.feedback.load_feedback(feedback)
        self.position = self.consumed = int(position)
        self.pending.clear()
        self.observed_any = False
        self._baseline = self._last_received = None  # the loader counts from its restored step


class LiveFeedback:
    """The recorded feedback of a FeedbackRecorder, copied when saved rather than when taken."""

    def __init__(self, recorder):
        self._recorder = recorder

    def snapshot(self):
        return self._recorder.state()

    def __reduce__(self):
        return (dict, (self.snapshot(),))

    def __deepcopy__(self, memo):
        return self.snapshot()


def refuse_accelerate_wrapper():
    """Raise if accelerate's wrappers iterate the sampler (called by its ``__iter__``)."""
    wrapper = _accelerate_wrapper()
    if wrapper is not None:
        raise TypeError(
            f"GraftBatchSampler is being iterated by accelerate's {wrapper}, which shards "
            "its batches a second time and overrides its epochs. Do not pass the DataLoader "
            "to accelerator.prepare(); prepare the model and optimizer only and wrap the "
            "loader with graft_select.accelerate.prepare_data_loader(accelerator, loader) "
            "(GraftBatchSampler shards over the processes itself).")


def _at_for_iter(frame):
    """Whether ``frame`` is at a ``for`` statement's step (``FOR_ITER``), not at a call
    such as ``next(it)``: a for loop holds one batch at a time, so two batches pending
    there mean a skipped observe(), where two pulled by ``next()`` may be one fetched
    ahead. False where the instruction cannot be read."""
    if frame is None:
        return False
    try:
        return dis.opname[frame.f_code.co_code[frame.f_lasti]].startswith("FOR_ITER")
    except (IndexError, AttributeError):
        return False


class SidePass:
    """A pass beside the running one (an evaluation over the training loader from a
    callback or between steps), and whether the loop trains it instead.

    ``iteration`` is its BatchIterator, ``offsets`` the sampler's pass offsets it
    stands for, should it become the running pass.
    """

    def __init__(self, iteration, offsets):
        self.iteration = iteration
        self.offsets = offsets

    @staticmethod
    def beside(running):
        """Whether a new iteration is a pass beside ``running``: a pass held by a
        DataLoader iterator that is alive and is not the one iterating now, or handed
        out to a loop that iterates the sampler itself while a DataLoader iterates now."""
        if running is None or running.skip:
            return False
        current = loader_iterator()
        if running._loader is None:  # a loop that iterates the sampler itself
            return current is not None and not running.untouched
        loader = running.loader()
        return loader is not None and loader is not current

    def trained_instead(self, running, epoch):
        """Whether the loop trains this pass rather than ``running`` (at an observe()
        without indices).

        It does when it received nothing of the running pass since the last
        observe() while this pass handed out batches: it left the running pass,
        whose DataLoader iterator something else keeps alive (a held ``it =
        iter(loader)``, a loader that keeps its iterator, a traceback), as a new
        pass always replaced the old one. Beside a pass nothing observed yet, the
        pass that handed out a batch last is the loop's. Where the running pass
        was observed with explicit indices only, which pass the loop is on cannot
        be told: that raises.
        """
        side = self.iteration
        handed_out = side.position
        if handed_out == side.start or running is None:
            return False
        if not running.observed_any:
            return side.last_handout > running.last_handout
        seen = running._last_received
        if seen is None:
            raise ValueError(
                "observe() without 'indices' cannot tell which pass the training loop is "
                f"on: a new iteration over this sampler handed out {handed_out} batches "
                f"while the running pass of epoch {epoch}, observed with explicit "
                "indices so far, is still held by a DataLoader iterator. Pass indices= to "
                "observe(), or call set_epoch() before a new pass.")
        return running.received() <= seen


def loader_iterator():
    """The DataLoader iterator whose creation or reset called the sampler's ``__iter__``."""
    base = getattr(sys.modules.get("torch.utils.data.dataloader"), "_BaseDataLoaderIter", None)
    if base is None:
        return None
    return calling_owner(base, skip=2, depth=16)


def _accelerate_wrapper():
    """Name of the accelerate wrapper iterating the sampler, or None (looks a few frames up
    from the sampler's ``__iter__``)."""
    module = sys.modules.get("accelerate.data_loader")
    if module is None:
        return None
    wrappers = tuple(getattr(module, name) for name in
                     ("BatchSamplerShard", "DataLoaderShard", "DataLoaderDispatcher")
                     if hasattr(module, name))
    owner = calling_owner(wrappers, skip=3, depth=16)
    return None if owner is None else type(owner).__name__


def calling_owner(classes, *, skip, depth, where=None):
    """The first ``self`` among the calling frames that is an instance of ``classes``.

    Looks at ``depth`` frames, starting ``skip`` frames above the function that
    calls this one; ``where(owner)``, when given, must also hold. None if no frame has one.
    """
    frame = sys._getframe(skip + 1)
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, classes) and (where is None or where(owner)):
            return owner
        frame = frame.f_back
    return None
