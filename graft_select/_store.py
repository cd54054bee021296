"""FeedbackStore: the per-sample feedback GraftBatchSampler records at every training step.

The store is what ``observe()`` writes and a refit reads: one row per sample for each
kind of feedback (embeddings, cross-entropy residuals, explicit gradients), the epoch
each row was last written, the rows written since the last distributed merge, and the
rows whose observations were rejected. Recording runs at every training step, so it
never reads a value back to the host: rows with NaN, infinity or out-of-range labels
are routed on the device to a spare row, flagged, and reported at the next refit.

This module imports torch; only graft_select.sampler imports it.
"""

import collections.abc
import math

import torch

from ._iteration import FEEDBACK_NAMES
from ._plan import mix

__all__ = ["FeedbackStore", "feedback_rows"]

FEEDBACK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class FeedbackStore(collections.abc.Mapping):
    """Per-sample feedback rows, a mapping name -> tensor of shape (n_samples, width).

    Every tensor has one spare row past ``n_samples`` that takes the rejected rows
    of a batch, so a write never depends on a value read back from the device;
    the mapping exposes the first ``n_samples`` rows only.

    Parameters
    ----------
    n_samples : int
        Number of samples of the dataset.
    dtype : torch.dtype, default=torch.float32
        Dtype of the stored rows.
    sketch_width : int or None, default=None
        Feedback wider than this is multiplied by a fixed Gaussian matrix of shape
        (width, sketch_width) scaled by ``1 / sqrt(sketch_width)``, so the stored
        rows' Gram matrices equal the observed ones' in expectation.
    seed : int, default=0
        Seeds the sketch matrices (the same on every rank and after a resume).
    """

    def __init__(self, n_samples, *, dtype=torch.float32, sketch_width=None, seed=0):
        self.n_samples = n_samples
        self.dtype = dtype
        self.sketch_width = sketch_width
        self.seed = seed
        self._rows = {}  # name -> (n_samples + 1, width); row n_samples is the spare row
        self._in_widths = {}  # name -> width of the observed values (before the sketch)
        self._projections = {}  # name -> (in_width, sketch_width) float32 on the device
        self._last_seen = torch.full((n_samples + 1,), -1, dtype=torch.int64)
        self._dirty = torch.zeros(n_samples + 1, dtype=torch.bool)  # written since merge
        self._rejected = torch.zeros(n_samples + 1, dtype=torch.int32)  # spare: bad indices
        self._placed = False  # moved to the device of the recorded values yet?
        self.last_merge_bytes = 0

    # ------------------------------------------------------------------ mapping

    def __getitem__(self, name):
        return self._rows[name][:self.n_samples]

    def __iter__(self):
        return iter(self._rows)

    def __len__(self):
        return len(self._rows)

    @property
    def last_seen(self):
        """Epoch each sample was last recorded in (-1: never), int64 of shape (n_samples,)."""
        return self._last_seen[:self.n_samples]

    @property
    def nbytes(self):
        """Bytes held by the store's tensors (rows and bookkeeping, spare rows included)."""
        tensors = [*self._rows.values(), self._last_seen, self._dirty, self._rejected,
                   *self._projections.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---------------------------------------------------------------- recording

    def check_widths(self, values):
        """Raise if a value's width differs from what was recorded before under its name."""
        for name, value in values.items():
            width = value.shape[1]
            known = self._in_widths.get(name)
            if known is None and name in self._rows:  # loaded: only the stored width is known
                known = self._rows[name].shape[1]
                width = self._stored_width(width)
            if known is not None and known != width:
                raise ValueError(f"'{name}' has {value.shape[1]} columns but earlier "
                                 f"observations had {known}.")

    def record(self, indices, values, ok, epoch):
        """Write the rows ``values`` of the samples ``indices`` whose ``ok`` is True.

        Parameters
        ----------
        indices : int64 tensor of shape (b,)
            Dataset indices; ``n_samples`` marks a row whose index was out of range
            (its ``ok`` must be False).
        values : dict of name -> float tensor of shape (b, width)
            Validated feedback (see :func:`feedback_rows`).
        ok : bool tensor of shape (b,)
            Rows to write; the others keep their stored values and are flagged.
        epoch : int
            Stamped as the rows' last-seen epoch.
        """
        first = next(iter(values.values()))
        if not self._placed:
            self._place(first.device)
        device = self._last_seen.device
        indices = indices.to(device, non_blocking=True)
        ok = ok.to(device, non_blocking=True)
        target = torch.where(ok, indices, self.n_samples)  # rejected rows go to the spare row
        for name, value in values.items():
            value = value.to(device, non_blocking=True)
            if name not in self._in_widths:
                self._prepare(name, value.shape[1], device)
            projection = self._projections.get(name)
            if projection is not None:
                value = value.to(torch.float32) @ projection
            self._rows[name].index_copy_(0, target, value.to(self.dtype))
        self._last_seen.index_fill_(0, target, epoch)
        self._dirty.index_fill_(0, target, True)
        self._rejected.index_add_(0, indices, (~ok).to(torch.int32))

    def _stored_width(self, width):
        if self.sketch_width is not None and width > self.sketch_width:
            return self.sketch_width
        return width

    def _prepare(self, name, width, device):
        """The sketch of ``name`` (if it is wider than sketch_width) and its rows."""
        stored = self._stored_width(width)
        if stored != width:
            seed = mix(self.seed, 1 + FEEDBACK_NAMES.index(name))
            generator = torch.Generator().manual_seed(seed)
            projection = torch.randn(width, stored, generator=generator) / math.sqrt(stored)
            self._projections[name] = projection.to(device)
        self._in_widths[name] = width
        if name not in self._rows:  # else loaded by load(), with this width (check_widths)
            self._rows[name] = torch.zeros((self.n_samples + 1, stored), dtype=self.dtype,
                                           device=device)

    def _place(self, device):
        self._last_seen = self._last_seen.to(device)
        self._dirty = self._dirty.to(device)
        self._rejected = self._rejected.to(device)
        self._rows = {name: rows.to(device) for name, rows in self._rows.items()}
        self._placed = True

    # ------------------------------------------------------------------ refits

    def observed_any(self):
        """Whether any sample was recorded (reads a value back: call it at a refit)."""
        return bool((self.last_seen >= 0).any())

    def stalest(self, candidates, count):
        """The ``count`` least recently recorded candidates (never recorded first).

        Ties keep the order of ``candidates`` (the epoch's random order).
        """
        age = self.last_seen.cpu()[candidates]
        order = torch.argsort(age, stable=True)
        return candidates[order[:count]]

    def take_rejected(self):
        """Samples whose observations were rejected since the last call, and the count.

        Returns
        -------
        indices : int64 tensor of shape (k,)
            Dataset indices (sorted) of the samples with rejected observations.
        n_rows : int
            Number of rejected rows, including rows whose index was out of range.
        """
        counts = self._rejected.to("cpu", copy=True)
        self._rejected.zero_()
        indices = torch.nonzero(counts[:self.n_samples]).flatten()
        return indices, int(counts.sum())

    # -------------------------------------------------------------------- state

    def state(self):
        """The rows and last-seen epochs, copied to the CPU."""
        return {"store": {name: rows.detach().cpu().clone() for name, rows in self.items()},
                "last_seen": self.last_seen.cpu().clone()}

    def load(self, store, last_seen):
        """Replace the rows by ``store`` (checked CPU tensors), cast to this store's dtype.

        The store moves to the device of the next recorded values. Every recorded
        row counts as changed, so the next distributed merge sends it.
        """
        self._rows = {}
        for name, rows in store.items():
            spare = torch.zeros((1, rows.shape[1]), dtype=self.dtype)
            self._rows[name] = torch.cat([rows.to(self.dtype), spare])
        self._in_widths, self._projections = {}, {}
        self._last_seen = torch.cat([last_seen, torch.tensor([-1])])
        self._dirty = self._last_seen >= 0
        self._rejected = torch.zeros(self.n_samples + 1, dtype=torch.int32)
        self._placed = False

    # --------------------------------------------------------------- distributed

    def merge(self, num_replicas):
        """Exchange the rows written since the last merge with every rank (newest wins).

        Each rank sends only its changed rows: their count, then the rows padded
        to the largest count, with their indices and last-seen epochs. A row
        written on several ranks takes the value with the latest epoch, ties going
        to the highest rank, so every rank ends with the same store.

        Returns
        -------
        n_bytes : int
            Bytes this rank sent.
        """
        import torch.distributed as dist

        # NCCL only moves CUDA tensors; gloo takes CPU (and CUDA) tensors.
        comm = (torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl" else torch.device("cpu"))
        sent = [0]

        def gather(tensor):
            tensor = tensor.to(comm).contiguous()
            sent[0] += tensor.numel() * tensor.element_size()
            parts = [torch.empty_like(tensor) for _ in range(num_replicas)]
            dist.all_gather(parts, tensor)
            return torch.stack(parts)

        _agree_on_names(self, gather)
        rows = torch.nonzero(self._dirty[:self.n_samples]).flatten()
        width = int(gather(torch.tensor([len(rows)])).max())
        if width:
            self._apply(gather, rows, width, num_replicas, comm)
        self._dirty.zero_()
        self.last_merge_bytes = sent[0]
        return sent[0]

    def _apply(self, gather, rows, width, num_replicas, comm):
        device = self._last_seen.device
        header = torch.full((2, width), -1, dtype=torch.int64, device=device)
        header[0, :len(rows)] = rows
        header[1, :len(rows)] = self._last_seen[rows]
        headers = gather(header)  # (ranks, 2, width)
        values = {}
        for name, stored in self._rows.items():
            padded = stored.new_zeros((width, stored.shape[1]))
            padded[:len(rows)] = stored[rows]
            values[name] = gather(padded).flatten(0, 1)
        got_rows, got_seen = headers[:, 0].flatten(), headers[:, 1].flatten()
        ranks = torch.arange(num_replicas, device=comm).repeat_interleave(width)
        entries = torch.nonzero(got_rows >= 0).flatten()
        got_rows, key = got_rows[entries], got_seen[entries] * num_replicas + ranks[entries]
        best = torch.full((self.n_samples,), -1, dtype=torch.int64, device=comm)
        best.scatter_reduce_(0, got_rows, key, "amax")
        won = key == best[got_rows]
        target, entries = got_rows[won].to(device), entries[won]
        for name, stored in self._rows.items():
            stored.index_copy_(0, target, values[name][entries].to(device))
        self._last_seen.index_copy_(0, target, got_seen[entries].to(device))


def _agree_on_names(store, gather):
    """All ranks hold the same feedback entries (names, widths, dtypes), or all raise."""
    dtypes = list(FEEDBACK_DTYPES)
    code = torch.zeros((len(FEEDBACK_NAMES), 2), dtype=torch.int64)
    for row, name in enumerate(FEEDBACK_NAMES):
        if name in store:
            value = store[name]
            code[row] = torch.tensor([value.shape[1], 1 + dtypes.index(value.dtype)])
    every = gather(code).cpu()  # the same tensor on every rank, so every rank decides alike
    if bool((every != every[0]).any()):
        kinds = [[f"{name}({int(c[row, 0])} columns, {dtypes[int(c[row, 1]) - 1]})"
                  for row, name in enumerate(FEEDBACK_NAMES) if c[row, 1]] for c in every]
        listed = "; ".join(f"rank {r}: {', '.join(k) or 'nothing'}" for r, k in enumerate(kinds))
        raise ValueError(f"The ranks of GraftBatchSampler observed different kinds of feedback "
                         f"({listed}); pass the same arguments to observe() on every rank.")


# --------------------------------------------------------------- one batch's feedback

_MINUS_ONE = {}  # device -> a float32 -1 to expand (scatter_add_ needs a tensor)


def feedback_rows(n_rows, embeddings, logits, targets, gradients):
    """Validate one batch's feedback; return ``(values, ok)`` without a host sync.

    Shapes and dtypes (host metadata) raise at once. Values are not read back: ``ok``
    (bool, shape (n_rows,), on the values' device) is False for the rows with NaN or
    infinity, or a label outside ``[0, n_classes)``.
    """
    values, sums, label_ok = {}, [], None
    if embeddings is not None:
        values["embeddings"] = _rows(embeddings, "embeddings", n_rows)
        sums.append(values["embeddings"].sum(dim=1, dtype=torch.float32))
    if logits is not None or targets is not None:
        if logits is None or targets is None:
            raise ValueError("observe() needs both 'logits' and 'targets' to form gradient "
                             "proxies; pass both or neither (or give the sampler "
                             "targets=).")
        logits = _rows(logits, "logits", n_rows)
        targets = _labels(targets, n_rows).to(logits.device, non_blocking=True)
        labels = targets.clamp(0, logits.shape[1] - 1)
        label_ok = labels == targets
        residuals = torch.softmax(logits, dim=1, dtype=torch.float32)
        minus_one = _MINUS_ONE.get(logits.device)
        if minus_one is None:
            minus_one = _MINUS_ONE[logits.device] = torch.full((1, 1), -1.0,
                                                               device=logits.device)
        residuals.scatter_add_(1, labels[:, None], minus_one.expand(n_rows, 1))
        values["residuals"] = residuals
        # NaN or +inf in a row of logits makes the whole softmax row NaN, so one
        # column tells (a -inf logit alone is a valid, masked class).
        sums.append(residuals[:, 0])
    if gradients is not None:
        values["gradients"] = _rows(gradients, "gradients", n_rows)
        sums.append(values["gradients"].sum(dim=1, dtype=torch.float32))
    if not values:
        raise ValueError("observe() got nothing to record; pass embeddings, logits and "
                         "targets, or gradients, or watch() the model first.")
    total = sums[0]
    for other in sums[1:]:
        total = total + other.to(total.device, non_blocking=True)
    ok = torch.isfinite(total)
    if label_ok is not None:
        ok &= label_ok.to(ok.device, non_blocking=True)
    return values, ok


def as_tensor(value, name):
    """``value`` as a detached tensor; meta tensors (no data) are rejected."""
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            raise ValueError(f"'{name}' is a meta tensor (shape only, no data); pass the tensor "
                             "computed by the forward pass on a real device.")
        return value.detach()
    try:
        return torch.as_tensor(value).detach()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"'{name}' must be a tensor or array of numbers. Got "
                        f"{type(value).__name__} ({exc}).") from None


def _rows(value, name, n):
    value = as_tensor(value, name)
    if value.dtype.is_complex:
        raise TypeError(f"'{name}' is complex ({value.dtype}); pass real values (observe() "
                        "would drop the imaginary part).")
    if value.ndim == 1:
        value = value.reshape(-1, 1)
    if value.ndim != 2 or value.shape[0] != n:
        raise ValueError(f"'{name}' must have one row per index ({n}), got shape "
                         f"{tuple(value.shape)}.")
    if not value.dtype.is_floating_point:
        value = value.to(torch.float32)
    return value


def _labels(targets, n):
    targets = as_tensor(targets, "targets").reshape(-1)
    if targets.dtype.is_floating_point or targets.dtype.is_complex or (
            targets.dtype == torch.bool):
        raise TypeError(f"'targets' must hold integer class labels, got dtype {targets.dtype}; "
                        "convert them with .long().")
    if targets.shape[0] != n:
        raise ValueError(f"'targets' must hold {n} integer labels, got shape "
                         f"{tuple(targets.shape)}.")
    return targets
