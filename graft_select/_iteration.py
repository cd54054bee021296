"""Pieces of GraftBatchSampler that track a pass: the batch iterator, the layer capture,
the state check and the live feedback that torchdata snapshots hold.

This module imports torch; only graft_select.sampler imports it.
"""

import collections
import math
import numbers
import sys

import torch

__all__ = ["BatchIterator", "LastLayerCapture", "check_state"]

FEEDBACK_NAMES = ("embeddings", "residuals", "gradients")
STATE_KEYS = {"epoch", "batches_yielded", "subset", "subset_epoch", "store", "last_seen",
              "rejected", "selection_seconds"}
OPTIONAL_KEYS = {"rejected"}  # absent from states saved before it was added


class BatchIterator:
    """One pass over an epoch's batches that knows what the training loop consumed.

    ``position`` counts the batches handed out (prefetching loaders run ahead of
    the loop); ``pending`` holds the handed-out batches not yet observed, oldest
    first, so that ``observe()`` without indices finds the batch being trained
    and the resume position counts consumed batches.
    """

    def __init__(self, sampler, batches, start):
        self.sampler = sampler
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
        return {"position": self.position, "feedback": LiveFeedback(self.sampler)}

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
        self.sampler._load_feedback(feedback)
        self.position = self.consumed = int(position)
        self.pending.clear()
        self.observed_any = False


class LiveFeedback:
    """The sampler's recorded feedback, copied when saved rather than when taken."""

    def __init__(self, sampler):
        self._sampler = sampler

    def snapshot(self):
        return self._sampler._store.state()

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


def check_state(state, n_samples):
    """Validate a whole state dict of GraftBatchSampler; return cleaned copies."""
    owner = "GraftBatchSampler.load_state_dict"
    if not isinstance(state, dict):
        raise TypeError(f"{owner} expects the dict returned by state_dict(). Got "
                        f"{type(state).__name__} instead.")
    if not STATE_KEYS - OPTIONAL_KEYS <= set(state) <= STATE_KEYS:
        missing = sorted(STATE_KEYS - OPTIONAL_KEYS - set(state))
        extra = sorted(set(state) - STATE_KEYS)
        raise ValueError(f"{owner} got a state with missing keys {missing} and unknown keys "
                         f"{extra}; pass the dict returned by GraftBatchSampler.state_dict().")
    epoch = _state_int(state["epoch"], "epoch", owner)
    batches = _state_int(state["batches_yielded"], "batches_yielded", owner)
    subset_epoch = state["subset_epoch"]
    if subset_epoch is not None:
        subset_epoch = _state_int(subset_epoch, "subset_epoch", owner)
    subset = state["subset"]
    if subset is not None:
        subset = _index_tensor(subset, "subset", owner, n_samples)
        if len(subset) == 0 or len(torch.unique(subset)) != len(subset):
            raise ValueError(f"The 'subset' of the state passed to {owner} must hold distinct "
                             "dataset indices.")
    if (subset is None) != (subset_epoch is None):
        raise ValueError(f"The state passed to {owner} must have both 'subset' and "
                         "'subset_epoch' or neither.")
    seconds = state["selection_seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not (
            math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"The 'selection_seconds' of the state passed to {owner} must be a "
                         f"finite float >= 0. Got {seconds!r} instead.")
    feedback = check_feedback({key: state[key] for key in ("store", "last_seen", "rejected")
                               if key in state}, n_samples, owner)
    return {"epoch": epoch, "batches_yielded": batches, "subset": subset,
            "subset_epoch": subset_epoch, "selection_seconds": float(seconds), **feedback}


def check_feedback(feedback, n_samples, owner):
    """Validate ``{"store": ..., "last_seen": ..., "rejected": ...}``; return CPU copies.

    ``rejected`` (optional; zeros when absent) counts per sample the observed rows
    rejected since the last refit, plus one last entry for rows whose index lay
    outside the dataset.
    """
    store = feedback.get("store") if isinstance(feedback, dict) else None
    if not isinstance(store, dict):
        raise TypeError(f"The 'store' of the state passed to {owner} must be a dict of "
                        f"tensors. Got {type(store).__name__} instead.")
    unknown = sorted(set(store) - set(FEEDBACK_NAMES))
    if unknown:
        raise ValueError(f"The 'store' of the state passed to {owner} has unknown entries "
                         f"{unknown}; expected some of {list(FEEDBACK_NAMES)}.")
    copies = {}
    for name, value in store.items():
        if not torch.is_tensor(value) or value.ndim != 2 or value.shape[0] != n_samples or (
                not value.dtype.is_floating_point):
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"The store entry '{name}' of the state passed to {owner} must be "
                             f"a floating tensor of shape ({n_samples}, n_columns). Got "
                             f"{shape} instead; was the state saved by a sampler of another "
                             "dataset?")
        copies[name] = value.detach().cpu().clone()
    last_seen = feedback["last_seen"]
    if not torch.is_tensor(last_seen) or last_seen.shape != (n_samples,) or (
            last_seen.dtype != torch.int64):
        shape = tuple(last_seen.shape) if torch.is_tensor(last_seen) else type(last_seen).__name__
        raise ValueError(f"The 'last_seen' of the state passed to {owner} must be an int64 "
                         f"tensor of shape ({n_samples},). Got {shape} instead; was the state "
                         "saved by a sampler of another dataset?")
    rejected = feedback.get("rejected")
    if rejected is None:
        rejected = torch.zeros(n_samples + 1, dtype=torch.int32)
    elif not torch.is_tensor(rejected) or rejected.shape != (n_samples + 1,) or (
            rejected.dtype != torch.int32) or bool((rejected < 0).any()):
        shape = tuple(rejected.shape) if torch.is_tensor(rejected) else type(rejected).__name__
        raise ValueError(f"The 'rejected' of the state passed to {owner} must be an int32 "
                         f"tensor of shape ({n_samples + 1},) of counts >= 0. Got {shape} "
                         "instead; was the state saved by a sampler of another dataset?")
    return {"store": copies, "last_seen": last_seen.detach().cpu().clone(),
            "rejected": rejected.detach().cpu().clone()}


def _state_int(value, name, owner):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"The '{name}' of the state passed to {owner} must be an int >= 0. "
                         f"Got {value!r} instead.")
    return int(value)


def _index_tensor(value, name, owner, n_samples):
    if not torch.is_tensor(value) or value.ndim != 1 or value.dtype != torch.int64:
        raise ValueError(f"The '{name}' of the state passed to {owner} must be a 1-D int64 "
                         f"tensor of dataset indices.")
    if len(value) and (int(value.min()) < 0 or int(value.max()) >= n_samples):
        raise ValueError(f"The '{name}' of the state passed to {owner} holds indices outside "
                         f"[0, {n_samples}); was the state saved by a sampler of another "
                         "dataset?")
    return value.detach().cpu().clone()


def accelerate_wrapper():
    """Name of the accelerate wrapper iterating the sampler, or None (looks a few frames up)."""
    module = sys.modules.get("accelerate.data_loader")
    if module is None:
        return None
    wrappers = tuple(getattr(module, name) for name in
                     ("BatchSamplerShard", "DataLoaderShard", "DataLoaderDispatcher")
                     if hasattr(module, name))
    frame = sys._getframe(2)
    for _ in range(16):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, wrappers):
            return type(owner).__name__
        frame = frame.f_back
    return None
