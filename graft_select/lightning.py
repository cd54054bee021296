"""Lightning integration: :class:`GraftCallback` drives a GraftBatchSampler in a Trainer.

Importing this module imports lightning; ``import graft_select`` does not.
"""

import math
import numbers

import lightning.pytorch as pl

from .sampler import GraftBatchSampler

__all__ = ["GraftCallback"]


class GraftCallback(pl.Callback):
    """Lightning callback that runs a :class:`~graft_select.sampler.GraftBatchSampler`.

    Put the sampler in the training DataLoader (``batch_sampler=sampler``) and
    the callback in ``Trainer(callbacks=[GraftCallback(sampler)])``; the
    LightningModule and the dataset need no change. The callback

    - hooks the module's last ``torch.nn.Linear`` (or ``layer``) and records
      its input and output after every training batch with
      :meth:`~graft_select.sampler.GraftBatchSampler.observe`;
    - sets the sampler's epoch before each epoch's first batch is drawn;
    - keeps the epoch's number of batches (``trainer.num_training_batches``,
      the progress bar) equal to the sampler's, warm start included, capped by
      ``limit_train_batches`` epoch by epoch, and makes
      ``trainer.estimated_stepping_batches`` the real number of optimizer steps
      of the run (from :meth:`~graft_select.sampler.GraftBatchSampler.total_batches`);
    - saves the sampler's state (recorded feedback included) in checkpoints
      and restores it on resume. A run that ``max_steps`` stopped in the
      middle of an epoch resumes the rest of that epoch's pass: Lightning
      counts the stopped epoch as finished and resumes at the next epoch
      number, which trains the interrupted pass's remaining batches; the
      epochs after it follow Lightning's numbers.

    Parameters
    ----------
    sampler : GraftBatchSampler
        The training DataLoader's batch sampler.
    layer : torch.nn.Linear, default=None
        The layer mapping embeddings to logits; ``None`` hooks the last
        ``torch.nn.Linear`` of the LightningModule.
    targets : callable, default=None
        ``targets(batch) -> labels`` of a training batch. ``None`` uses the
        sampler's ``targets`` when it has them, else ``batch[1]``.

    Notes
    -----
    Under DDP, GraftBatchSampler shards the epoch over the ranks itself: pass
    ``use_distributed_sampler=False`` to the Trainer. With the default
    (``True``) Lightning would rebuild the batch sampler around a
    DistributedSampler; the callback stops the run at setup with that fix.

    Examples
    --------
    >>> from graft_select.lightning import GraftCallback
    >>> from graft_select.sampler import GraftBatchSampler
    >>> callback = GraftCallback(GraftBatchSampler(100, batch_size=10))
    >>> callback.state_key
    'GraftCallback'
    """

    def __init__(self, sampler, *, layer=None, targets=None):
        if not isinstance(sampler, GraftBatchSampler):
            raise TypeError(f"The 'sampler' parameter of GraftCallback must be a "
                            f"GraftBatchSampler. Got {type(sampler).__name__} instead.")
        if targets is not None and not callable(targets):
            raise TypeError(f"The 'targets' parameter of GraftCallback must be a callable "
                            f"batch -> labels or None. Got {type(targets).__name__} instead.")
        self.sampler = sampler
        self.layer = layer
        self.targets = targets
        self._capture = None
        self._loaded = False  # whether a checkpoint gave the sampler its state
        self._first_epoch = True  # no epoch of the current fit started yet
        self._capped = None  # (epoch, batches) Lightning runs of the current epoch

    # ------------------------------------------------------------------ setup

    def setup(self, trainer, pl_module, stage):
        """Check the distributed setup, plan the step count and hook the last linear layer.

        Parameters
        ----------
        trainer : lightning.Trainer
            The running trainer.
        pl_module : lightning.LightningModule
            The module being trained.
        stage : str
            Lightning's stage; only ``"fit"`` is acted on.
        """
        if stage != "fit":
            return
        connector = getattr(trainer, "_accelerator_connector", None)
        if trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError(
                "GraftCallback: the Trainer runs on several processes with "
                "use_distributed_sampler=True, so Lightning would rebuild the GraftBatchSampler "
                "around a DistributedSampler and shard the data twice. Pass "
                "use_distributed_sampler=False to lightning.Trainer: GraftBatchSampler shards "
                "each epoch over the ranks itself.")
        self._first_epoch = True
        _plan_steps_with(trainer)
        self._capture = self.sampler.watch(pl_module, layer=self.layer)

    def teardown(self, trainer, pl_module, stage):
        """Remove the forward hook that :meth:`setup` registered.

        Parameters
        ----------
        trainer : lightning.Trainer
            The running trainer.
        pl_module : lightning.LightningModule
            The module being trained.
        stage : str
            Lightning's stage.
        """
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    # ----------------------------------------------------------------- epochs

    def on_train_epoch_start(self, trainer, pl_module):
        """Set the sampler's epoch and make Lightning's batch count match the sampler's.

        The epoch's batches are the sampler's, capped by ``limit_train_batches``
        (a count, or a share of each epoch's own batches: Lightning computes the
        share once, from the first epoch).

        Parameters
        ----------
        trainer : lightning.Trainer
            The running trainer.
        pl_module : lightning.LightningModule
            The module being trained.
        """
        self._check_loader(trainer)
        first = self._first_epoch
        self._check_resume(trainer)
        if not (first and self._finishes_interrupted_pass(trainer)):
            self.sampler.set_epoch(trainer.current_epoch)
        # Lightning applies limit_train_batches to the length of the first epoch only: a
        # share of it (0.5) would cap every later epoch at half the warm start's batches
        length = _limited(len(self.sampler), trainer.limit_train_batches)
        self._capped = (self.sampler.epoch, length)
        trainer.fit_loop.max_batches = length
        combined = getattr(trainer.fit_loop, "_combined_loader", None)
        if combined is not None and len(combined.flattened) == 1:
            combined.limits = [length]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """Record the batch's feedback (captured by the hook) with the sampler.

        Parameters
        ----------
        trainer : lightning.Trainer
            The running trainer.
        pl_module : lightning.LightningModule
            The module being trained.
        outputs : object
            What ``training_step`` returned (unused).
        batch : object
            The training batch; its second item holds the labels unless the
            sampler or the callback was given ``targets``.
        batch_idx : int
            Position of the batch in the epoch (unused).
        """
        targets = None
        if self.targets is not None:
            targets = self.targets(batch)
        elif self.sampler.targets is None:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("GraftCallback needs the batch's class labels: give the "
                                 "sampler targets=, or the callback targets=lambda batch: ...; "
                                 "the batch is not an (inputs, labels, ...) sequence.")
            targets = batch[1]
        self.sampler.observe(targets=targets)

    # ------------------------------------------------------------ checkpoints

    def state_dict(self):
        """The sampler's state, saved in Lightning checkpoints.

        Returns
        -------
        state : dict
            ``{"sampler": sampler.state_dict(), "epoch_done": bool}``: whether the
            epoch ran all the batches Lightning runs of it (``limit_train_batches``
            may stop it before the sampler's pass ends).
        """
        state = self.sampler.state_dict()
        done = (self._capped is not None and self._capped[0] == state["epoch"]
                and state["batches_yielded"] >= self._capped[1])
        return {"sampler": state, "epoch_done": bool(done or state["pass_done"])}

    def load_state_dict(self, state_dict):
        """Restore the sampler from a checkpoint written by :meth:`state_dict`.

        Parameters
        ----------
        state_dict : dict
            The callback's state from a Lightning checkpoint.
        """
        state = state_dict["sampler"]
        self.sampler.load_state_dict(state)
        self._loaded = True
        # A checkpoint taken after the epoch's last batch resumes at the next epoch:
        # Lightning creates that epoch's iterator before any epoch hook runs. The last
        # batch is the sampler's, or the last limit_train_batches lets run.
        batches, start, _ = self.sampler._pass_batches()
        if start >= len(batches) or state_dict.get("epoch_done", False):
            self.sampler.set_epoch(state["epoch"] + 1)

    # ------------------------------------------------------------- diagnosis

    def _check_loader(self, trainer):
        """Raise, naming the cause, when the training loader does not batch with the sampler."""
        combined = getattr(trainer.fit_loop, "_combined_loader", None)
        loaders = [] if combined is None else list(combined.flattened)
        found = [getattr(loader, "batch_sampler", None) for loader in loaders]
        if any(batch_sampler is self.sampler for batch_sampler in found):
            return
        kinds = ", ".join(type(b).__name__ if b is not None else type(loader).__name__
                          for b, loader in zip(found, loaders)) or "no DataLoader"
        if any(isinstance(b, GraftBatchSampler) for b in found):
            cause = ("another GraftBatchSampler than the callback's"
                     + (": train_dataloader() built a new one at a reload "
                        "(reload_dataloaders_every_n_epochs); build the sampler once, give it "
                        "to GraftCallback and return loaders over that same sampler"
                        if trainer.reload_dataloaders_every_n_epochs else
                        "; pass the loader's sampler to GraftCallback"))
        else:
            cause = (f"a {kinds}, not the callback's sampler; build the loader with "
                     "DataLoader(dataset, batch_sampler=sampler)")
        raise ValueError(
            f"GraftCallback's GraftBatchSampler is not the batch sampler of the training "
            f"DataLoader at epoch {trainer.current_epoch}: the loader batches with {cause}. "
            f"The callback records feedback for the batches its sampler hands out, so it "
            f"would record none.")

    def _finishes_interrupted_pass(self, trainer):
        """Whether this epoch resumes the sampler's pass that ``max_steps`` interrupted.

        Lightning counts an epoch that ``max_steps`` stopped as finished: a
        checkpoint saved after such a stop resumes at the next epoch number, from
        the batch the stop left (its batch count is restored). The loader's
        iterator, made before this hook, already hands out the rest of the
        sampler's interrupted pass; that pass is finished under Lightning's epoch
        number, and the epochs after it follow Lightning's. Setting the sampler to
        Lightning's epoch instead would train the start of another epoch's plan in
        place of the rest of this one, and leave the iterator unpaired.
        """
        iteration = self.sampler._iteration
        # a pass resumed mid-way (start > 0) that this fit has not trained from yet
        if (not self._loaded or iteration is None or iteration.start == 0
                or iteration.observed_any or self.sampler.epoch >= trainer.current_epoch):
            return False
        resumed_at = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if resumed_at == iteration.start:
            return True
        raise ValueError(
            f"GraftCallback: the checkpoint resumes Lightning at epoch {trainer.current_epoch}, "
            f"batch {resumed_at}, but the GraftBatchSampler's state at epoch "
            f"{self.sampler.epoch}, batch {iteration.start} of its pass: the two were saved "
            f"at different points. Resume from a checkpoint that Lightning saved with "
            f"GraftCallback among the callbacks (ModelCheckpoint or trainer.save_checkpoint), "
            f"or start the run afresh.")

    def _check_resume(self, trainer):
        """Raise when resuming a checkpoint that holds no state of this callback."""
        first, self._first_epoch = self._first_epoch, False
        if (not first or self._loaded or trainer.ckpt_path is None
                or self.sampler.epoch == trainer.current_epoch
                or self.sampler._iteration is None):
            return
        raise ValueError(
            f"GraftCallback: resuming the checkpoint {trainer.ckpt_path} at epoch "
            f"{trainer.current_epoch}, but it holds no GraftCallback state (it was saved "
            f"without the callback), so the GraftBatchSampler knows neither the epoch nor its "
            f"feedback, and Lightning already started iterating it at epoch "
            f"{self.sampler.epoch}. Resume from a checkpoint saved with GraftCallback among "
            f"the callbacks, or start the run afresh.")


def _limited(length, limit):
    """An epoch's batches under ``limit_train_batches``, as Lightning counts them: an int
    caps the count, a float keeps that share (rounded down, at least one batch when the
    share is positive)."""
    if isinstance(limit, numbers.Integral) and not isinstance(limit, bool):
        return min(length, int(limit))
    if limit >= 1.0:
        return length
    return min(length, max(1 if limit > 0 else 0, int(length * limit)))


def _plan_steps_with(trainer):
    """Make ``trainer.estimated_stepping_batches`` count the sampler's real batches."""
    cls = type(trainer)
    if getattr(cls, "_graft_steps", False):
        return
    base = cls.estimated_stepping_batches

    def estimated_stepping_batches(self):
        callbacks = [c for c in self.callbacks if isinstance(c, GraftCallback)]
        if len(callbacks) != 1 or self.max_epochs in (None, -1):
            return base.fget(self)
        sampler = callbacks[0].sampler
        accumulate = self.accumulate_grad_batches
        limit = self.limit_train_batches
        steps = sum(math.ceil(_limited(batches, limit) / accumulate) * count  # closed form
                    for batches, count in sampler._batch_runs(self.max_epochs))
        return min(steps, self.max_steps) if self.max_steps != -1 else steps

    trainer.__class__ = type(cls.__name__, (cls,), {
        "estimated_stepping_batches": property(estimated_stepping_batches, doc=base.__doc__),
        "_graft_steps": True, "__module__": cls.__module__})
