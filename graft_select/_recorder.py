"""FeedbackRecorder: how GraftBatchSampler records the training loop's feedback.

``observe()`` and ``watch()`` land here. The recorder checks a batch's indices and
values, finds the batch a pass handed out, supplies the sampler's targets on the
values' device, and stages the batch into its :class:`~graft_select._store.FeedbackStore`.
At a refit it reports the rows it rejected and merges the ranks' feedback.

A training loop's steady state (every batch of the pass observed once, with values of
the same shapes, dtypes and devices as the previous one) takes a fast path: a few
attribute reads and the store's copies, nothing read back from the device.

This module imports torch; only the sampler's parts import it.
"""

import warnings

import torch

from ._checks import check_batch, check_indices
from ._merge import merge, union_of_ranks
from ._state import check_feedback
from ._store import BAD_LABEL, FeedbackStore
from ._watch import LastLayerCapture, check_watched, mixed_modes_message

__all__ = ["FeedbackRecorder"]


class FeedbackRecorder:
    """Records per-sample feedback into a store, for the sampler's refits.

    Parameters
    ----------
    n_samples : int
        Number of samples of the dataset.
    targets : tensor of shape (n_samples,) or (n_samples, k), or None
        The sampler's targets (int64 class labels, or float regression targets
        with ``loss="mse"``), used when ``observe()`` gets logits only.
    dtype, sketch_width, seed, loss :
        The store's (see :class:`~graft_select._store.FeedbackStore`); ``loss``
        also says how observed targets are checked.
    """

    def __init__(self, n_samples, targets, *, dtype, sketch_width, seed,
                 loss="cross_entropy"):
        self.n_samples = n_samples
        self.targets = targets
        self.loss = loss
        self.store = FeedbackStore(n_samples, dtype=dtype, sketch_width=sketch_width,
                                   seed=seed, loss=loss)
        self.capture = None  # LastLayerCapture from watch()
        self._targets_on = {}  # device -> targets there (observe() reads no value back)
        self._unusable_warned = 0  # samples left out without feedback, as last warned

    def __getstate__(self):
        state = self.__dict__.copy()
        state["capture"] = None  # a forward hook belongs to a model in this process
        return state

    # ---------------------------------------------------------------- recording

    def observe(self, iteration, epoch, indices=None, *, embeddings=None, logits=None,
                targets=None, gradients=None):
        """Record one batch (see :meth:`GraftBatchSampler.observe`).

        ``iteration`` is the current pass (a BatchIterator) or None; ``epoch`` is
        stamped as the rows' last-seen epoch.
        """
        if gradients is not None and logits is not None:
            raise ValueError(
                "observe() got both 'gradients' and 'logits': a sample's gradient proxies "
                "come from one or the other. Pass gradients= alone (explicit per-sample "
                "gradients), or logits= and targets (with embeddings=) alone.")
        captured = (self.capture is not None and embeddings is None and logits is None
                    and gradients is None)
        depth = None
        if indices is None:
            # an out-of-order loader raises its own error (locate), pending batches or not
            if iteration is None or not (iteration.pending or iteration.unordered):
                raise ValueError("observe() without 'indices' records the batch the training "
                                 "loop is on, and this sampler handed out none that was not "
                                 "observed yet: pass indices=, or observe each yielded batch "
                                 "once.")
            depth = iteration.locate()
        if captured:  # the watched layer's latest forward pass
            mixed = mixed_modes_message(self.capture)  # for both paths below
            if mixed is not None:
                raise ValueError(mixed)
            embeddings, logits = self.capture.inputs, self.capture.outputs
        if gradients is None and self._observe_like_last(iteration, epoch, indices, depth,
                                                         embeddings, logits, targets):
            if captured:
                self.capture.take()
            return
        part_of = None  # depth of the handed-out batch that ``indices`` reorder or part of
        if indices is None:
            idx = iteration.batches[iteration.pending[depth]]
        else:
            idx, depth = self._check_indices(iteration, indices)
            if depth is None and iteration is not None and idx.device.type == "cpu":
                part_of = iteration.containing(idx)
        if captured:
            embeddings, logits = check_watched(self.capture, len(idx))
        if logits is not None and targets is None and self.targets is not None:
            targets = self._targets_of(idx)
        batch = check_batch(len(idx), embeddings, logits, targets, gradients, self.loss)
        # a batch this sampler handed out is never written to, so it needs no copy
        source = iteration if depth is not None and iteration.distinct else None
        self.store.stage(idx, batch, epoch, copy_indices=depth is None, source=source)
        if captured:
            self.capture.take()
        if iteration is not None:
            if depth is not None:
                iteration.take(depth)
            elif part_of is not None:  # the batch was trained: a resume goes on after it
                iteration.take(part_of)
            elif idx.device.type != "cpu":
                iteration.take_pending()

    def _observe_like_last(self, iteration, epoch, indices, depth, embeddings, logits,
                           targets):
        """observe() of a training loop's steady state in a few attribute reads, or False.

        The steady state: no indices (``depth``: the batch the loop is on), or
        the CPU int64 tensor of a batch this pass handed out, and tensors of
        embeddings, logits (given, or from the watched layer) and targets
        (given, or the sampler's) with one row per index and the shapes, dtypes,
        layouts and devices of the last batch that took the general path (and
        passed its checks). Any other call returns False, having changed
        nothing, and takes the general path.
        """
        if (iteration is None or type(embeddings) is not torch.Tensor
                or type(logits) is not torch.Tensor
                or not (type(targets) is torch.Tensor
                        or (targets is None and self.targets is not None))):
            return False
        if indices is not None:
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
        if idx.shape[0] != embeddings.shape[0] or not self.store.stage_like_last(
                idx, (embeddings, logits, targets), epoch,
                iteration if iteration.distinct else None, batch_signature):
            return False
        iteration.take(depth)
        return True

    def _targets_of(self, idx):
        """The sampler's targets of ``idx``, indexed on idx's device (no read-back)."""
        if idx.device.type == "cpu":
            return self.targets[idx]
        if idx.device not in self._targets_on:
            self._targets_on[idx.device] = self.targets.to(idx.device, non_blocking=True)
        # an index outside the dataset is rejected later; clamp so the lookup is valid
        return self._targets_on[idx.device][idx.clamp(0, self.n_samples - 1)]

    def _check_indices(self, iteration, indices):
        """``(idx, depth)``: the batch's int64 indices, and its depth among the pending
        batches of ``iteration`` (None for a batch the pass did not hand out)."""
        depth = None if iteration is None else iteration.handed_out(indices)
        if depth is not None:  # a batch this sampler handed out: valid as it is
            return iteration.batches[iteration.pending[depth]], depth
        idx = check_indices(indices, self.n_samples)  # on a device: checked when recorded
        depth = None if iteration is None or idx.device.type != "cpu" else iteration.find(idx)
        if depth is not None:  # a batch this sampler handed out, passed as another type
            return iteration.batches[iteration.pending[depth]], depth
        return idx, None

    def watch(self, model, layer=None):
        """Hook the model's head or ``layer`` (see :meth:`GraftBatchSampler.watch`)."""
        if layer is not None and not isinstance(layer, torch.nn.Module):
            raise TypeError(f"The 'layer' argument of GraftBatchSampler.watch must be a "
                            f"torch.nn.Module. Got {type(layer).__name__} instead.")
        if not isinstance(model, torch.nn.Module):
            if layer is None:
                raise TypeError(f"The 'model' argument of GraftBatchSampler.watch must be a "
                                f"torch.nn.Module. Got {type(model).__name__} instead.")
            model = None  # the layer alone is hooked
        if layer is None and isinstance(model, torch.nn.Linear):
            layer = model
        if layer is None and not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
            raise ValueError(f"{type(model).__name__} has no torch.nn.Linear layer to watch; "
                             "pass the layer that maps embeddings to logits as 'layer='.")
        if self.capture is not None:
            self.capture.remove()
        self.capture = LastLayerCapture(layer, model=model, loss=self.loss)
        return self.capture

    # ------------------------------------------------------------------ refits

    def report_rejected(self):
        """Rows observe() rejected since the last refit: warn, and return them for the report.

        Returns
        -------
        rejected : int64 tensor of shape (k,)
            Dataset indices of the samples with rejected rows, sorted.
        n_rows : int
            Number of rejected rows (rows with an index outside the dataset too).
        """
        rejected, n_rows = self.store.take_rejected()
        if n_rows:
            first = ", ".join(str(i) for i in rejected[:5].tolist())
            warnings.warn(
                f"GraftBatchSampler rejected {n_rows} observed rows since the last refit: NaN "
                f"or infinity in the feedback, values too large for feedback_dtype or the "
                f"sketch, values too small for a float16 feedback_dtype (underflow: pass "
                f"feedback_dtype=torch.float32, or rescale them), or labels (or indices) out "
                f"of range. The "
                f"{len(rejected)} samples concerned (first: {first or 'none'}) keep their "
                "earlier values; check the model's outputs and the targets of these samples "
                "(all of them are in last_refit.rejected_indices).", UserWarning, stacklevel=6)
        return rejected, n_rows

    def unusable(self, num_replicas):
        """Samples with no usable feedback: their rows had labels out of range (an
        ``ignore_index`` such as -100) and none was ever stored. Warns about new ones.

        Left out of refits: counted as never observed, they were trained first, up
        to the whole budget, at every refit, so selected epochs trained only
        unlabelled samples. The store marks them (a last-seen epoch of
        ``BAD_LABEL``, kept in the state; a row stored later replaces it). Rows
        rejected for non-finite values leave no mark: the next refit trains such a
        sample again, as a never-observed one. Under torch.distributed the ranks'
        marks are joined (a collective), so that every rank plans alike.
        """
        last_seen = self.store.last_seen  # a view: marked in place
        marked = torch.nonzero(last_seen.cpu() == BAD_LABEL).flatten()
        if num_replicas > 1 and _dist_ready():
            marked = union_of_ranks(marked, num_replicas)
            last_seen[marked.to(last_seen.device)] = BAD_LABEL
        if len(marked) > self._unusable_warned:
            first = ", ".join(str(i) for i in marked[:5].tolist())
            warnings.warn(
                f"GraftBatchSampler leaves {len(marked)} samples out of its refits (first: "
                f"{first}): every row observed for them had a label outside [0, "
                f"n_classes) (such as an ignore_index of -100) and none was stored, so they "
                f"have no feedback to select on. Samples without feedback for lack of an "
                f"observe() are trained first instead; these would have taken the budget. "
                f"Filter such samples out of the dataset; a row stored later brings a "
                f"sample back.", UserWarning, stacklevel=6)
        self._unusable_warned = len(marked)
        return marked

    def merge_ranks(self, num_replicas):
        """Under torch.distributed, merge the rows every rank observed since the last merge.

        Returns the bytes this rank sent (0 on one rank). Raises when several
        ranks recorded feedback without a process group to merge it: their plans
        would differ.
        """
        if num_replicas == 1:
            return 0
        if not _dist_ready():
            if self.store:
                raise ValueError(
                    f"GraftBatchSampler has num_replicas={num_replicas} but no "
                    "torch.distributed process group, so it cannot merge the feedback the "
                    "ranks observed and their plans would differ. Initialise "
                    "torch.distributed before the first refit (the sampler then gathers "
                    "feedback), or do not call observe() on several ranks without one: "
                    "select on a features callable or array alone, which every rank "
                    "evaluates the same way (observed feedback stays on its rank, even "
                    "with features=).")
            return 0
        return merge(self.store, num_replicas)

    # -------------------------------------------------------------------- state

    def state(self):
        """The store's rows, last-seen epochs and unreported rejections, on the CPU."""
        return self.store.state()

    def load(self, feedback):
        """Replace the recorded feedback by checked ``feedback`` (see check_feedback)."""
        self.store.load(feedback["store"], feedback["last_seen"], feedback["rejected"])

    def load_feedback(self, feedback):
        """Check, then load, the feedback of a snapshot (a torchdata iterator state)."""
        self.load(check_feedback(feedback, self.n_samples, "GraftBatchSampler"))


def _dist_ready():
    return torch.distributed.is_available() and torch.distributed.is_initialized()
