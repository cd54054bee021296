"""FeedbackStore: the per-sample feedback GraftBatchSampler records at every training step.

The store is what ``observe()`` writes and a refit reads: one row per sample for each
kind of feedback (embeddings, cross-entropy residuals, explicit gradients), the epoch
each row was last written, the rows written since the last distributed merge, and the
rows whose observations were rejected.

Per training step the store only copies the batch into staging buffers (a few copies,
no value read back to the host). Every few dozen batches, and before anything reads
the store, the staged block is recorded at once: residuals formed, rows checked on the
device, rows with NaN, infinity or out-of-range labels routed to a spare row and
flagged (they are reported at the next refit), the others written.

This module imports torch; only the sampler and its parts import it.
"""

import collections.abc
import math
import warnings

import torch

from ._plan import mix

__all__ = ["FeedbackStore", "Sketch", "loaded_tables", "signature"]

FEEDBACK_NAMES = ("embeddings", "residuals", "gradients")  # the stored kinds
FEEDBACK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
STAGED_BATCHES = 32  # batches staged between two recordings
STAGED_BYTES = 64 * 2**20  # at most this much staging memory (a larger batch is recorded)
STORED_NAME = {"embeddings": "embeddings", "logits": "residuals", "gradients": "gradients"}


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
    loss : {"cross_entropy", "mse"}, default="cross_entropy"
        How logits and targets become the stored residuals: ``softmax(logits) -
        onehot(targets)``, or ``logits - targets`` (squared error).
    """

    def __init__(self, n_samples, *, dtype=torch.float32, sketch_width=None, seed=0,
                 loss="cross_entropy"):
        self.n_samples = n_samples
        self.loss = loss
        self.dtype = dtype
        self.sketch_width = sketch_width
        self.seed = seed
        self._rows = {}  # name -> (n_samples + 1, width); row n_samples is the spare row
        self.sketch = Sketch(sketch_width, seed)
        self._last_seen = torch.full((n_samples + 1,), NEVER_SEEN, dtype=torch.int64)
        self._dirty = torch.zeros(n_samples + 1, dtype=torch.bool)  # written since merge
        self._rejected = torch.zeros(n_samples + 1, dtype=torch.int32)  # spare: bad indices
        self._placed = False  # moved to the device of the recorded values yet?
        self._staged = []  # (indices, values) of batches copied but not recorded yet
        # (input names, their devices, device of the indices, epoch, source) of the
        # staged batches; with the signature and the staging bytes of the last batch
        # that took every check, it outlives a recording (see stage_like_last)
        self._staged_key = None
        self._signature = None
        self._batch_bytes = 0
        self._last_row = None  # scratch: the last position of each sample in a block
        self._kinds = None  # the stored names every batch brings (set by the first one)
        # a background refit reading the tables: until it is done, blocks that would be
        # recorded wait in _held (in order), so the tables stay as they were (see hold)
        self._gate = None
        self._held = []  # (indices, batch, epoch, planned) of blocks not recorded yet

    def __getitem__(self, name):
        self.flush()
        return self._rows[name][:self.n_samples]

    def hold(self, gate):
        """Record nothing until ``gate`` is done (a background refit reading the tables).

        Until then observed batches stay staged (up to an epoch of them: at most
        the store's own size), the tables and last-seen epochs are left as they
        are, and the thread reads them without a copy. Whatever reads the store
        on this side first waits for the gate (:meth:`flush`); the first
        staging after the gate is done records the held blocks, in order, so
        the store ends as it would have without the hold.

        Parameters
        ----------
        gate : object
            Has ``done()`` (without waiting) and ``wait()`` (blocks until done).
        """
        self.flush()
        self._gate = gate

    def release(self):
        """Wait for the gate of :meth:`hold` (if any); record the held blocks, in order."""
        gate, self._gate = self._gate, None
        if gate is None:
            return
        gate.wait()
        held, self._held = self._held, []
        for indices, batch, epoch, planned in held:
            self._record_block(indices, batch, epoch, planned=planned)

    def __iter__(self):
        self.flush()
        return iter(self._rows)

    def __len__(self):
        self.flush()
        return len(self._rows)

    @property
    def last_seen(self):
        """Epoch each sample was last recorded in (-1: never), int64 of shape (n_samples,)."""
        self.flush()
        return self._last_seen[:self.n_samples]

    @property
    def device(self):
        """Device of the recorded feedback (the CPU until a first block is recorded)."""
        return self._last_seen.device

    @property
    def nbytes(self):
        """Bytes held by the store's tensors (rows and bookkeeping, spare rows included)."""
        tensors = [*self._rows.values(), self._last_seen, self._dirty, self._rejected,
                   *self.sketch.projections.values()]
        if self._last_row is not None:
            tensors.append(self._last_row)
        return sum(t.numel() * t.element_size() for t in tensors)

    def stage(self, indices, batch, epoch, *, copy_indices=True, source=None):
        """Keep a copy of one checked batch (see ``_checks.check_batch``) for the next recording.

        Only copies run here; :meth:`flush` records the staged batches as one
        block, every ``STAGED_BATCHES`` batches and before anything reads the
        store. A batch of other inputs, devices or epoch flushes the staged ones
        first.

        Parameters
        ----------
        indices : int64 tensor of shape (b,)
            Dataset indices (on an accelerator, out-of-range rows are rejected).
        batch : dict of input name -> tensor with b rows
            Some of "embeddings", "logits", "targets", "gradients".
        epoch : int
            Stamped as the rows' last-seen epoch.
        copy_indices : bool, default=True
            False when nothing writes to ``indices`` later (the sampler's batches).
        source : object or None, default=None
            The pass (BatchIterator) this batch was handed out by, when its batches
            hold distinct indices and this one is observed for the first time: a
            block of one source's batches holds dataset indices and repeats no
            sample, so it is recorded without the range check and the
            duplicate-index rule.
        """
        self.sketch.check_widths(batch, self._rows)
        self._check_kinds(batch, indices)
        key = (tuple(batch), tuple(value.device for value in batch.values()), indices.device,
               epoch, source)
        if not (self._staged and key == self._staged_key):
            self.sketch.remember(batch)
            self._record_staged()
        rows = indices.shape[0]
        width = sum(v.shape[1] if v.ndim == 2 else 1 for v in batch.values()) + 1
        if rows * width * 4 > STAGED_BYTES:  # too large to stage: record it now, in order
            self._record_staged()
            if self._holding():
                self._held.append((indices.clone() if copy_indices else indices,
                                   {name: value.clone() for name, value in batch.items()},
                                   epoch, False))
                return
            self._record_block(indices, batch, epoch)
            return
        # clones, not preallocated buffers: a clone reuses the memory freed by the
        # previous block (still in cache on the CPU), measured faster than a ring buffer
        self._staged_key = key
        self._signature = signature(batch) if source is not None else None
        self._batch_bytes = rows * width * 4
        self._append(indices.clone() if copy_indices else indices, batch.values())

    def _check_kinds(self, batch, indices):
        """Keep every recorded sample whole: with a row of each kind of feedback stored.

        The first batch sets the kinds (embeddings, residuals, gradients); a
        sample observed with fewer kinds would hold zero rows in the tables it
        lacks (residuals of zero: never selected). A later batch may update
        fewer kinds for samples recorded whole before (this reads their
        last-seen epochs: a rare call, not the training loop's steady state), or
        add a kind: the samples recorded without it then count as not observed
        (a warning says so). Other kinds (gradients next to logits) raise.
        """
        kinds = frozenset(STORED_NAME[name] for name in batch if name in STORED_NAME)
        if self._kinds is None or kinds == self._kinds:
            self._kinds = kinds
            return
        if kinds < self._kinds:
            self.flush()
            rows = indices.to(self._last_seen.device).clamp(0, self.n_samples)
            if bool((self._last_seen[rows] >= 0).all()):
                return
        elif kinds > self._kinds:
            self.flush()
            lacking = int((self._last_seen[:self.n_samples] >= 0).sum())
            if lacking:
                warnings.warn(
                    f"observe() got {_kinds_text(kinds)}, and {lacking} samples were "
                    f"recorded before with {_kinds_text(self._kinds)} only: they count as "
                    "not observed until observed again with every kind (their rows of the "
                    "new kind are empty).", UserWarning, stacklevel=5)
                self._last_seen[:self.n_samples] = NEVER_SEEN
            self._kinds = kinds
            return
        raise ValueError(
            f"observe() got {_kinds_text(kinds)} but earlier observations recorded "
            f"{_kinds_text(self._kinds)}: every sample needs the same kinds of feedback, "
            "or those missing one would hold zero rows there (never selected). Pass the "
            "same arguments at every observe() (embeddings, logits and targets; or "
            "gradients); a batch may update fewer kinds only for samples observed whole "
            "before.")

    def stage_like_last(self, indices, values, epoch, source, batch_signature):
        """Stage one more batch of the last staged one's kind, if it is; else return False.

        The fast path of :meth:`stage` for the training loop's steady state: a
        batch of the same pass (``source``) and epoch whose inputs (``values``,
        detached, in the signature's order) have the :func:`signature`
        ``batch_signature`` of the last staged batch passes every check that
        batch passed, so only its copies run (``indices``, the sampler's own
        tensor, is not copied). A recording in between does not end the steady
        state; :meth:`load` does. Returns False, having done nothing, for a
        batch of another kind.
        """
        if (source is None or batch_signature != self._signature
                or self._staged_key[3] != epoch or self._staged_key[4] is not source):
            return False
        self._append(indices, values)
        return True

    def _append(self, indices, values):
        self._staged.append((indices, [value.clone() for value in values]))
        if len(self._staged) >= STAGED_BATCHES or (
                len(self._staged) * self._batch_bytes > STAGED_BYTES):
            self._record_staged()

    def flush(self):
        """Record the staged batches as one block (no value is read back to the host).

        Under :meth:`hold` it first waits for the gate: what reads the store
        then sees every observation.
        """
        self.release()
        self._record_staged()

    def _holding(self):
        """Whether a hold is on; a gate that is done ends it here (held blocks recorded)."""
        if self._gate is not None and self._gate.done():
            self.release()
        return self._gate is not None

    def _record_staged(self):
        """Record the staged batches as one block, or hold it while a refit reads the store."""
        if not self._staged:
            return
        staged, (names, _, _, epoch, source) = self._staged, self._staged_key
        self._staged = []  # the key and signature stay: the next batch may be of this kind
        indices = torch.cat([idx for idx, _ in staged])
        columns = zip(*(values for _, values in staged))
        batch = {name: torch.cat(parts) for name, parts in zip(names, columns)}
        if self._holding():
            self._held.append((indices, batch, epoch, source is not None))
            return
        self._record_block(indices, batch, epoch, planned=source is not None)

    def _record_block(self, indices, batch, epoch, planned=False):
        """Record one block; ``planned``: batches of one sampler pass (in range, distinct).

        Everything runs on the store's device (the values' device, unless the
        store was placed elsewhere first); nothing is read back to the host.
        """
        values, ok, label_ok = _block_values(batch, self.dtype, self.loss)
        if not self._placed:
            self._place(ok.device)
        device = self._last_seen.device
        indices, ok = _to(indices, device), _to(ok, device)
        stored, precise = self._stored_rows(values, device)
        if precise is not None:
            ok = ok & precise
        if self.dtype != torch.float32 or self.sketch.projections:
            # the stored form may overflow where the observed one did not (1e5 in
            # float16; a sketch of huge values): such a row must not replace a good one
            for rows in stored.values():
                ok = ok & torch.isfinite(rows).all(dim=1)
        written = ok
        if not planned:
            inside = (indices >= 0) & (indices < self.n_samples)  # checked here on accelerators
            indices = torch.where(inside, indices, self.n_samples)
            ok = written = ok & inside
        if not planned and indices.shape[0] > 1:  # a sample twice: its last good row wins
            if self._last_row is None or self._last_row.device != device:
                self._last_row = torch.full((self.n_samples + 1,), -1, dtype=torch.int64,
                                            device=device)
            position = torch.arange(indices.shape[0], device=device)
            self._last_row.scatter_reduce_(0, indices, torch.where(ok, position, -1), "amax")
            written = ok & (self._last_row[indices] == position)
            self._last_row.index_fill_(0, indices, -1)  # reset only what was touched
        self._write(indices, stored, ok, written, epoch)
        if label_ok is not None:
            self._mark_bad_labels(indices, _to(label_ok, device))

    def _mark_bad_labels(self, indices, label_ok):
        """A sample never stored whose row had a label out of range (an ``ignore_index``
        of -100) gets the last-seen epoch `BAD_LABEL`: it has no feedback, and not for
        lack of an observe(); refits leave it out (``FeedbackRecorder.unusable``). A row
        stored later replaces the mark. Runs on the store's device, no read back."""
        indices = indices.clamp(0, self.n_samples)  # the spare row for out-of-range ones
        seen = self._last_seen[indices]
        marked = torch.where(~label_ok & (seen == NEVER_SEEN) & (indices < self.n_samples),
                             BAD_LABEL, seen)  # no boolean indexing: no read back
        self._last_seen.index_copy_(0, indices, marked)

    def _stored_rows(self, values, device):
        """The rows ``values`` (name -> (b, width)) on ``device``, sketched and cast as stored.

        Returns them with, in half precision, the rows that the cast kept (None
        otherwise): see :func:`_underflow`.
        """
        stored, precise = {}, None
        for name, value in values.items():
            value = _to(value, device)
            if name not in self._rows or (name not in self.sketch.projections
                                          and value.shape[1] != self._rows[name].shape[1]):
                self._prepare(name, value.shape[1], device)
            full = self.sketch.apply(name, value)
            stored[name] = full.to(self.dtype)
            if self.dtype in (torch.float16, torch.bfloat16):
                kept = ~_underflow(full, stored[name])
                precise = kept if precise is None else precise & kept
        return stored, precise

    def _write(self, indices, stored, ok, written, epoch):
        """Write the rows ``stored`` (name -> (b, width), stored dtype and device) of the
        samples ``indices`` where ``written`` (one valid row per sample), stamped
        ``epoch``; flag the rows not ``ok`` as rejected. An index ``n_samples``
        marks a row whose index was out of range (never ok)."""
        target = torch.where(written, indices, self.n_samples)
        for name, rows in stored.items():
            _copy_rows(self._rows[name], target, rows)
        self._last_seen.index_fill_(0, target, epoch)
        self._dirty.index_fill_(0, target, True)
        # on the CPU reading ok back is free, and most blocks have no rejected row
        if target.device.type != "cpu" or not bool(ok.all()):
            self._rejected.index_add_(0, indices, (~ok).to(torch.int32))

    def _prepare(self, name, width, device):
        """The sketch of ``name`` (if it is wider than sketch_width) and its rows."""
        stored = self.sketch.prepare(name, width, device)
        if name not in self._rows:  # else loaded by load(), with this width (check_widths)
            self._rows[name] = torch.zeros((self.n_samples + 1, stored), dtype=self.dtype,
                                           device=device)

    def _place(self, device):
        # host-to-device copies only: non_blocking needs no synchronisation
        self._last_seen = self._last_seen.to(device, non_blocking=True)
        self._dirty = self._dirty.to(device, non_blocking=True)
        self._rejected = self._rejected.to(device, non_blocking=True)
        self._rows = {name: rows.to(device, non_blocking=True)
                      for name, rows in self._rows.items()}
        self._placed = True

    def sketched(self, name):
        """Whether ``name`` is stored as a sketch (for a loaded store: its width says so)."""
        self.flush()
        return self.sketch.sketched(name, self._rows)

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
        self.flush()
        counts = self._rejected.to("cpu", copy=True)
        self._rejected.zero_()
        indices = torch.nonzero(counts[:self.n_samples]).flatten()
        return indices, int(counts.sum())

    def state(self):
        """The rows, last-seen epochs and unreported rejection counts, copied to the CPU."""
        return {"store": {name: rows.detach().cpu().clone() for name, rows in self.items()},
                "last_seen": self.last_seen.cpu().clone(),
                "rejected": self._rejected.to("cpu", copy=True)}

    def load(self, store, last_seen, rejected):
        """Replace the rows by ``store`` (checked CPU tensors), cast to this store's dtype.

        ``rejected`` (int32, ``n_samples + 1``) replaces the rejection counts that
        the next refit reports. The store moves to the device of the next
        recorded values, and every recorded row counts as changed (the next
        distributed merge sends it). See :func:`loaded_tables` for the cast.

        Raises
        ------
        ValueError
            If a finite value of ``store`` overflows this store's dtype (1e5
            overflows float16, 1e39 float32); nothing is changed then.
        """
        rows, last_seen, rejected = loaded_tables(store, last_seen, rejected, self.dtype)
        self.release()  # a refit reading the old tables finishes first
        self._held, self._staged = [], []  # observations before the load are replaced
        self._staged_key = self._signature = None  # the next batch takes every check
        self._rows = rows
        self._kinds = frozenset(rows) or None
        self.sketch = Sketch(self.sketch_width, self.seed)
        self._last_seen = last_seen
        self._dirty = self._last_seen >= 0
        self._rejected = rejected
        self._placed = False

    def changed_rows(self):
        """Samples written since the last :meth:`clear_changed` (a load counts), int64."""
        self.flush()
        return torch.nonzero(self._dirty[:self.n_samples]).flatten()

    def clear_changed(self):
        """Mark every row as merged (see graft_select._merge)."""
        self.flush()
        self._dirty.zero_()


class Sketch:
    """The fixed random sketches of a store's feedback wider than ``width``.

    Feedback of name ``name`` and width ``w > width`` is multiplied by a Gaussian
    matrix of shape (w, width), seeded from ``(seed, name)`` and scaled by
    ``1 / sqrt(width)``, so the stored rows' Gram matrices equal the observed
    ones' in expectation. It also remembers the observed (pre-sketch) widths, so
    a later batch of another width raises.
    """

    def __init__(self, width, seed):
        self.width = width
        self.seed = seed
        self.in_widths = {}  # name -> width of the observed values (before the sketch)
        self.projections = {}  # name -> (in_width, width) float32 on the device

    def stored_width(self, width):
        """Width of the stored rows of feedback of ``width`` columns."""
        return self.width if self.width is not None and width > self.width else width

    def remember(self, batch):
        """Record the observed widths of a checked batch's inputs (the first ones stay)."""
        for name, value in batch.items():
            if name in STORED_NAME:
                self.in_widths.setdefault(STORED_NAME[name], value.shape[1])

    def check_widths(self, batch, tables):
        """Raise if an input's width differs from what was observed before under its name.

        ``tables`` are the store's rows by stored name (a loaded store knows only
        their stored width).
        """
        for name, value in batch.items():
            stored_name = STORED_NAME.get(name)
            if stored_name is None:  # targets
                continue
            width = value.shape[1]
            known = self.in_widths.get(stored_name)
            if known is None and stored_name in tables:  # loaded: the stored width only
                known = tables[stored_name].shape[1]
                width = self.stored_width(width)
            if known is not None and known != width:
                raise ValueError(f"'{name}' has {value.shape[1]} columns but earlier "
                                 f"observations had {known}.")

    def prepare(self, name, width, device):
        """Make the projection of ``name`` if it needs one; return the stored width."""
        stored = self.stored_width(width)
        if stored != width:
            seed = mix(self.seed, 1 + FEEDBACK_NAMES.index(name))
            generator = torch.Generator().manual_seed(seed)
            projection = torch.randn(width, stored, generator=generator) / math.sqrt(stored)
            self.projections[name] = projection.to(device, non_blocking=True)
        self.in_widths.setdefault(name, width)
        return stored

    def apply(self, name, value):
        """``value`` (rows of ``name``) sketched, or as it is when ``name`` is not sketched."""
        projection = self.projections.get(name)
        if projection is None:
            return value
        if value.dtype == torch.float64:  # a float64 store keeps float64 throughout
            return value @ projection.to(torch.float64)
        return value.to(torch.float32) @ projection

    def sketched(self, name, tables):
        """Whether ``name`` is stored as a sketch (for a loaded store: its width says so)."""
        if name in self.in_widths:
            return self.stored_width(self.in_widths[name]) != self.in_widths[name]
        return (name in tables and self.width is not None
                and tables[name].shape[1] == self.width)


def loaded_tables(store, last_seen, rejected, dtype):
    """The tables of a loaded state: rows cast to ``dtype``, each with its spare row.

    A row holding NaN or infinity (a state saved by a version that stored float16
    overflow as infinity) is loaded as never recorded and counted as rejected, so
    the next refit warns about its sample instead of failing.

    Returns
    -------
    rows : dict of name -> tensor of shape (n_samples + 1, width)
    last_seen : int64 tensor of shape (n_samples + 1,)
    rejected : int32 tensor of shape (n_samples + 1,)
    """
    cast = {name: rows.to(dtype) for name, rows in store.items()}
    for name, rows in store.items():
        lost = torch.isfinite(rows) & ~torch.isfinite(cast[name])
        if bool(lost.any()):
            row = int(torch.nonzero(lost.any(dim=1))[0])
            wider = ("torch.float32 or torch.bfloat16" if dtype == torch.float16
                     else "torch.float64")
            raise ValueError(
                f"The state's {name!r} hold values too large for the feedback_dtype "
                f"{dtype} of GraftBatchSampler (sample {row}: largest magnitude "
                f"{float(rows[row].abs().max()):.4g}); load it into a sampler with "
                f"feedback_dtype={wider}.")
    tables = {}
    last_seen = torch.cat([last_seen, torch.tensor([NEVER_SEEN])])
    rejected = rejected.clone()
    for name, rows in cast.items():
        spare = torch.zeros((1, rows.shape[1]), dtype=dtype)
        rows = torch.cat([rows, spare])
        bad = ~torch.isfinite(rows).all(dim=1)
        if bool(bad.any()):
            rows[bad] = 0
            rejected += (bad & (last_seen >= 0)).to(torch.int32)
            last_seen[bad] = NEVER_SEEN
        tables[name] = rows
    return tables, last_seen, rejected


def _copy_rows(table, target, rows):
    """``table[target] = rows`` (bit for bit); ``target`` may repeat the spare row only.

    On the CPU the rows are moved by NumPy's indexed assignment on integer views
    of the same memory: it copies each row as one block, 2-3x faster than
    torch's ``index_copy_`` (which works element by element) on rows of
    embeddings. The bits are only moved, never computed on.
    """
    if table.device.type == "cpu":
        bits = _BITS[table.element_size()]
        table.view(bits).numpy()[target.numpy()] = rows.contiguous().view(bits).numpy()
        return
    table.index_copy_(0, target, rows)


#: The last-seen epoch of a sample never observed.
NEVER_SEEN = -1

#: The last-seen epoch of a sample whose rows were rejected for a label out of range and
#: that was never stored (see ``FeedbackStore._mark_bad_labels``).
BAD_LABEL = -2

_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # element size -> same-size integer


# --------------------------------------------------------------- one batch's feedback

def _residuals(logits, labels):
    """``softmax(logits) - onehot(labels)`` of a block of rows; ``labels`` in range."""
    # softmax by hand over the classes as rows of the transposed block: torch's
    # softmax, and its reductions along rows of a few classes, are 2-5x slower
    scores = logits.T.contiguous()
    residuals = (scores - scores.amax(dim=0)).exp_()
    residuals /= residuals.sum(dim=0)
    minus_one = torch.full((1, 1), -1.0, dtype=residuals.dtype, device=logits.device)
    residuals.scatter_add_(0, labels[None, :], minus_one.expand(1, labels.shape[0]))
    return residuals.T.contiguous()


def signature(batch):
    """What the checks of a batch read: names, shapes, dtypes, layouts, devices of its inputs."""
    return tuple((name, value.shape, value.dtype, value.layout, value.device)
                 for name, value in batch.items())


def _block_values(batch, dtype, loss="cross_entropy"):
    """The stored rows of a block of batches, ``ok``: rows without NaN, inf or bad label,
    and ``label_ok``: rows whose class label is in range (None without class labels).

    Computed in float32, or in float64 for a float64 store (``dtype``). With
    ``loss="cross_entropy"`` one column of logits is a binary model's single
    logit ``z`` (a sigmoid and binary cross-entropy): its two-class logits are
    ``(0, z)``, whose softmax is ``(1 - sigmoid(z), sigmoid(z))``. With
    ``loss="mse"`` the residuals are ``logits - targets``, one column per
    output, and every finite target is valid. Runs on the device; nothing is
    read back.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    values, sums, label_ok = {}, [], None
    if "embeddings" in batch:
        values["embeddings"] = batch["embeddings"].to(work)
        sums.append(values["embeddings"].sum(dim=1))
    if "logits" in batch and loss == "mse":
        logits = batch["logits"].to(work)
        targets = _to(batch["targets"], logits.device).to(work)
        residuals = values["residuals"] = logits - targets.reshape(logits.shape)
        sums.append(residuals.sum(dim=1))
    elif "logits" in batch:
        logits = batch["logits"].to(work) if work == torch.float64 else batch["logits"]
        if logits.shape[1] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        targets = _to(batch["targets"], logits.device).to(torch.int64)
        labels = targets.clamp(0, logits.shape[1] - 1)
        label_ok = labels == targets
        residuals = values["residuals"] = _residuals(logits, labels)
        # NaN or +inf in a row of logits makes the whole softmax row NaN, so one
        # column tells (a -inf logit alone is a valid, masked class).
        sums.append(residuals[:, 0])
    if "gradients" in batch:
        values["gradients"] = batch["gradients"].to(work)
        sums.append(values["gradients"].sum(dim=1))
    total = sums[0]
    for other in sums[1:]:
        total = total + _to(other, total.device)
    ok = torch.isfinite(total)
    if label_ok is not None:
        ok &= _to(label_ok, ok.device)
    return values, ok, label_ok


def _underflow(full, stored):
    """Rows whose half-precision ``stored`` form lost over 1% of the norm of ``full``.

    Values below float16's smallest normal number (6.1e-5) lose precision and
    those below 6e-8 become 0: embeddings of order 1e-8 would be stored as
    zeros. Rows under a thousandth of the block's largest row norm are not
    counted (a well-classified sample's near-zero residuals lose nothing that
    matters); a block of only tiny rows is a scale that half precision cannot hold.
    """
    full = full.to(torch.float32)
    norm = torch.linalg.vector_norm(full, dim=1)
    lost = torch.linalg.vector_norm(full - stored.to(torch.float32), dim=1)
    largest = torch.where(torch.isfinite(norm), norm, 0.0).amax() if norm.numel() else 0.0
    return (lost > 0.01 * norm) & (norm >= 1e-3 * largest) & (norm > 0)


def _kinds_text(kinds):
    names = {"embeddings": "embeddings", "residuals": "logits and targets",
             "gradients": "gradients"}
    return " and ".join(names[kind] for kind in FEEDBACK_NAMES if kind in kinds) or "nothing"


def _to(tensor, device):
    """``tensor`` on ``device``, without waiting where that is safe.

    A copy to an accelerator is queued on its stream, which orders it before the
    kernels that read it. A copy to the host is made at once: a queued one
    lands in pinned memory that the CPU may read before the copy has finished.
    """
    return tensor.to(device, non_blocking=torch.device(device).type != "cpu")
