"""Pieces of GraftBatchSampler that track a pass: the batch iterator, the layer capture
and the live feedback that torchdata snapshots hold.

This module imports torch; only the sampler and its parts import it.
"""

import collections
import numbers
import sys

import torch

__all__ = ["BatchIterator", "LastLayerCapture"]



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
    """

    def __init__(self, batches, start, feedback):
        self.feedback = feedback
        self.batches = batches
        self.position = start
        self.consumed = start
        self.observed_any = False
        self.pending = collections.deque()
        self._distinct = None

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

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= len(self.batches):
            raise StopIteration
        batch = self.batches[self.position]
        self.pending.append(self.position)
        self.position += 1
        return batch.tolist()

    def __len__(self):
        return len(self.batches) - self.position

    def resume_position(self):
        """Batches the loop consumed: observed ones if it observes, else handed-out ones."""
        return self.consumed if self.observed_any else self.position

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
        for depth, position in enumerate(self.pending):
            batch = self.batches[position]
            if batch.shape == indices.shape and torch.equal(batch, indices):
                return depth
            if depth >= 8:  # prefetch depth of ordinary loaders; deeper is not a match
                return None
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


class LastLayerCapture:  # public as graft_select.sampler.LastLayerCapture
    """Forward hook that keeps the latest input and output of one linear layer.

    Returned by :meth:`GraftBatchSampler.watch`; :meth:`remove` detaches it.
    The kept tensors are detached (no copy, no host transfer).

    Parameters
    ----------
    layer : torch.nn.Module
        The hooked layer (normally the ``torch.nn.Linear`` producing logits).

    Attributes
    ----------
    inputs, outputs : tensor or None
        The layer's input (embeddings) and output (logits) at the latest
        forward pass not yet recorded by :meth:`GraftBatchSampler.observe`.

    Examples
    --------
    >>> import torch
    >>> from graft_select.sampler import GraftBatchSampler
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
    ...                             torch.nn.Linear(3, 2))
    >>> sampler = GraftBatchSampler(10, batch_size=5, targets=torch.arange(10) % 2)
    >>> capture = sampler.watch(model)
    >>> batch = next(iter(sampler))
    >>> _ = model(torch.randn(5, 4))
    >>> tuple(capture.inputs.shape), tuple(capture.outputs.shape)
    ((5, 3), (5, 2))
    >>> sampler.observe()  # this batch's indices, embeddings, logits and targets
    >>> sorted(sampler.state_dict()["store"])
    ['embeddings', 'residuals']
    """

    def __init__(self, layer):
        self.layer = layer
        self.inputs = self.outputs = None
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.inputs = inputs[0].detach()
        self.outputs = output.detach()

    __module__ = "graft_select.sampler"

    def take(self):
        """The latest (embeddings, logits), cleared so they are never used twice.

        Returns
        -------
        embeddings, logits : tensor or None
            Input and output of the hooked layer at the latest forward pass
            (None before any forward pass since the last call).
        """
        values = (self.inputs, self.outputs)
        self.inputs = self.outputs = None
        return values

    def remove(self):
        """Remove the forward hook."""
        self._handle.remove()


def last_linear(model):
    """The last ``torch.nn.Linear`` registered in ``model`` (the head of most classifiers)."""
    if isinstance(model, torch.nn.Linear):
        return model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"The 'model' argument of GraftBatchSampler.watch must be a "
                        f"torch.nn.Module. Got {type(model).__name__} instead.")
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no torch.nn.Linear layer to watch; pass "
                         "the layer that maps embeddings to logits as 'layer='.")
    return layers[-1]


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


def _accelerate_wrapper():
    """Name of the accelerate wrapper iterating the sampler, or None (looks a few frames up
    from the sampler's ``__iter__``)."""
    module = sys.modules.get("accelerate.data_loader")
    if module is None:
        return None
    wrappers = tuple(getattr(module, name) for name in
                     ("BatchSamplerShard", "DataLoaderShard", "DataLoaderDispatcher")
                     if hasattr(module, name))
    frame = sys._getframe(3)
    for _ in range(16):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, wrappers):
            return type(owner).__name__
        frame = frame.f_back
    return None
