"""Hugging Face transformers integration: :class:`GraftTrainer`, a Trainer on a GraftBatchSampler.

``transformers.Trainer`` sizes a run once, from the length of the first epoch's
loader, and assumes every epoch has that length; GRAFT's epochs do not (warm-start
epochs train the full data, selected ones a share of it). The trainer here plans
the run from the sampler's epochs, gives each epoch its own length, builds the
training loader around the sampler, hooks the model's head for feedback, and keeps
the sampler's state in the Trainer's checkpoints.

Importing this module imports transformers (and accelerate); ``import graft_select``
does not. Within the package, ``import transformers`` is the installed library
(absolute imports), not this module.
"""

import math
import os
import warnings

import torch
import transformers
from torch.utils.data import DataLoader, IterableDataset
from transformers.trainer_utils import get_last_checkpoint, seed_worker

from .accelerate import prepare_data_loader
from .sampler import GraftBatchSampler, LastLayerCapture

__all__ = ["CausalLMProxy", "GraftTrainer", "GraftTrainerMixin", "graft_trainer"]

#: Name of the sampler's state file that each process writes into a checkpoint folder.
STATE_FILE = "graft_sampler_rank{rank}.pt"

# the Trainer methods the mixin relies on (transformers >= 5: one method per epoch)
_TRAINER_HOOKS = ("_run_epoch", "_init_training_state", "set_initial_training_values",
                  "get_resumed_dataloader", "_save_checkpoint", "training_step")


class CausalLMProxy:
    """A per-sample proxy of a causal LM's last-layer gradient, at most ``width`` numbers wide.

    A sequence's gradient of the token-sum cross-entropy with respect to the LM
    head ``W`` (vocabulary x hidden) is ``G = sum_t r_t h_t^T = R^T H``, with
    ``r_t = softmax(z_t) - onehot(y_t)`` the residual of token ``t`` and ``h_t``
    its hidden state: a vocabulary x hidden matrix per sample, too wide to store.
    The proxy is ``S^T R^T H B``, flattened: ``S`` a fixed CountSketch of the
    vocabulary into ``buckets`` (each token goes to one bucket with a random
    sign) and ``B`` the identity when ``hidden <= sqrt(width)``, else a fixed
    Gaussian ``hidden x columns`` matrix with variance ``1 / columns``
    (``columns = isqrt(width)``); ``buckets = width // columns``. Then
    ``E[f(G) . f(G')] = <G, G'>_F``: the proxies' Gram matrix is an unbiased
    estimate of the exact gradients' Gram matrix, computed in
    ``O(tokens * (vocabulary + hidden * columns + buckets * columns))`` per
    sample without forming ``G``.

    Parameters
    ----------
    width : int
        Largest number of features per sample.
    seed : int
        Seeds ``S`` and ``B`` (every process draws the same ones).

    Examples
    --------
    >>> import torch
    >>> from graft_select.transformers import CausalLMProxy
    >>> proxy = CausalLMProxy(width=16, seed=0)
    >>> hidden, logits = torch.randn(2, 5, 8), torch.randn(2, 5, 30)
    >>> labels = torch.randint(0, 30, (2, 5))
    >>> tuple(proxy(hidden, logits, labels).shape)  # 4 buckets x 4 columns
    (2, 16)
    """

    def __init__(self, width, seed):
        self.width = width
        self.seed = seed
        self._tables = None  # (buckets, signs, projection) for one (vocabulary, hidden, device)

    def __call__(self, hidden, logits, labels, ignore_index=-100):
        """Proxies of a batch, from the LM head's inputs and outputs and the labels.

        Parameters
        ----------
        hidden : tensor of shape (b, T, hidden)
            The LM head's input.
        logits : tensor of shape (b, T, vocabulary)
            Its output.
        labels : int tensor of shape (b, T)
            The batch's labels, unshifted as the model receives them (position
            ``t`` predicts ``labels[:, t + 1]``); ``ignore_index`` marks tokens
            out of the loss.
        ignore_index : int, default=-100
            Label of the tokens out of the loss.

        Returns
        -------
        proxies : float32 tensor of shape (b, buckets * columns)
        """
        with torch.no_grad():
            buckets, signs, projection = self._tables_for(logits.shape[-1], hidden.shape[-1],
                                                          logits.device)
            targets = labels[:, 1:]
            mask = (targets != ignore_index).unsqueeze(-1).float()
            residuals = torch.softmax(logits[:, :-1].float(), dim=-1)
            residuals.scatter_add_(-1, targets.clamp(min=0).unsqueeze(-1), -mask)
            residuals *= mask * signs
            sketched = residuals.new_zeros(*residuals.shape[:2], self._buckets(hidden.shape[-1]))
            sketched.index_add_(2, buckets, residuals)  # (b, T, buckets)
            columns = hidden[:, :-1].float()
            if projection is not None:
                columns = columns @ projection  # (b, T, columns)
            return (sketched.transpose(1, 2) @ columns).flatten(1)

    def _columns(self, hidden):
        return hidden if hidden * hidden <= self.width else math.isqrt(self.width)

    def _buckets(self, hidden):
        return max(1, self.width // self._columns(hidden))

    def _tables_for(self, vocabulary, hidden, device):
        key = (vocabulary, hidden, device)
        if self._tables is None or self._tables[0] != key:
            generator = torch.Generator().manual_seed(self.seed)
            buckets = torch.randint(0, self._buckets(hidden), (vocabulary,), generator=generator)
            signs = torch.randint(0, 2, (vocabulary,), generator=generator) * 2.0 - 1.0
            projection = None
            if self._columns(hidden) < hidden:
                columns = self._columns(hidden)
                projection = torch.randn(hidden, columns, generator=generator).to(device)
                projection /= math.sqrt(columns)
            self._tables = (key, (buckets.to(device), signs.to(device), projection))
        return self._tables[1]


class GraftTrainerMixin:
    """Makes a ``transformers.Trainer`` (sub)class train on a GraftBatchSampler.

    Put it first among the bases, ``class MyTrainer(GraftTrainerMixin,
    SFTTrainer)``, or use :func:`graft_trainer`; :class:`GraftTrainer` is
    ``GraftTrainerMixin`` over ``transformers.Trainer``. See
    :class:`GraftTrainer` for what it does and its parameters.
    """

    def __init__(self, *args, sampler=None, layer=None, lm_proxy_width=512, **kwargs):
        owner = type(self).__name__
        if not isinstance(sampler, GraftBatchSampler):
            raise TypeError(f"The 'sampler' parameter of {owner} must be a GraftBatchSampler. "
                            f"Got {type(sampler).__name__} instead.")
        if layer is not None and not isinstance(layer, torch.nn.Module):
            raise TypeError(f"The 'layer' parameter of {owner} must be a torch.nn.Module "
                            f"(the head's last Linear) or None. Got {type(layer).__name__} "
                            "instead.")
        if isinstance(lm_proxy_width, bool) or not isinstance(lm_proxy_width, int) or (
                lm_proxy_width < 1):
            raise ValueError(f"The 'lm_proxy_width' parameter of {owner} must be an int >= 1. "
                             f"Got {lm_proxy_width!r} instead.")
        super().__init__(*args, **kwargs)
        self.sampler = sampler
        self.layer = layer
        self.lm_proxy = CausalLMProxy(lm_proxy_width, sampler.seed)
        self.epoch_batches = []  # this process's batches per epoch of the run's plan
        self._capture = None
        self._loop_epochs = 0  # the epochs the Trainer's loop runs (see _run_epoch)
        self._schedule_steps = None  # the LR schedule's length, kept across a resume
        _check_supported(self)

    # ------------------------------------------------------------------ data

    def get_train_dataloader(self):
        """The training loader: the sampler's batches, moved to the device, not resharded.

        Returns
        -------
        loader : graft_select.accelerate.GraftDataLoader
        """
        args = self.args
        dataset = self.train_dataset
        collator = self.data_collator
        if hasattr(dataset, "column_names"):  # a datasets.Dataset
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        options = {"collate_fn": collator, "num_workers": args.dataloader_num_workers,
                   "pin_memory": args.dataloader_pin_memory}
        if args.dataloader_num_workers > 0:
            options.update(
                persistent_workers=args.dataloader_persistent_workers,
                prefetch_factor=args.dataloader_prefetch_factor,
                worker_init_fn=lambda worker: seed_worker(
                    worker, num_workers=args.dataloader_num_workers, rank=args.process_index))
        loader = DataLoader(dataset, batch_sampler=self.sampler, **options)
        return prepare_data_loader(self.accelerator, loader)

    def get_resumed_dataloader(self, dataloader, num_batches):
        """The loader unchanged: the sampler's loaded state resumes it mid-epoch itself.

        Parameters
        ----------
        dataloader : GraftDataLoader
            The training loader.
        num_batches : int
            Batches the resumed epoch already trained (skipped by the sampler).

        Returns
        -------
        loader : GraftDataLoader
        """
        return dataloader

    # ------------------------------------------------------------- the plan

    def set_initial_training_values(self, args, dataloader):
        """The Trainer's run sizes, from the sampler's epochs (warm start included).

        ``max_steps`` is the sum over the run's epochs of
        ``ceil(batches / gradient_accumulation_steps)``; with an explicit
        ``max_steps``, ``num_train_epochs`` is the number of epochs that reach
        it. See ``transformers.Trainer.set_initial_training_values``.

        Parameters
        ----------
        args : transformers.TrainingArguments
            The training arguments.
        dataloader : GraftDataLoader
            The training loader.

        Returns
        -------
        values : tuple
            ``(num_train_epochs, num_update_steps_per_epoch, num_examples,
            num_train_samples, total_train_batch_size, steps_in_epoch, max_steps)``.
        """
        values = list(super().set_initial_training_values(args, dataloader))
        self.epoch_batches = self._plan_epochs(args)
        steps = [self._steps_of(batches) for batches in self.epoch_batches]
        max_steps = args.max_steps if args.max_steps > 0 else _epoch_steps(
            steps, args.num_train_epochs)
        total_batch = values[4]
        values[0] = len(steps)
        values[1] = steps[0]
        values[3] = max_steps * total_batch  # as the Trainer counts samples
        values[5] = self.epoch_batches[0]
        values[6] = max_steps
        self._loop_epochs = values[0]
        return tuple(values)

    def create_scheduler(self, num_training_steps, optimizer=None):
        """The Trainer's LR schedule, of the length the run first created it with.

        Epochs a refit shrinks end the run before the steps planned at its
        start, and the schedule keeps its length; a run resumed after such an
        epoch plans fewer steps, and creates its schedule with the saved run's
        length, so that it follows the same learning rates.

        Parameters
        ----------
        num_training_steps : int
            The steps this run plans.
        optimizer : torch.optim.Optimizer, default=None
            As for ``transformers.Trainer.create_scheduler``.

        Returns
        -------
        scheduler : torch.optim.lr_scheduler.LRScheduler
        """
        if self._schedule_steps is None:
            self._schedule_steps = num_training_steps
        return super().create_scheduler(self._schedule_steps, optimizer)

    def _plan_epochs(self, args):
        """Batches per epoch of the run: the checkpoint's history, then the sampler's plan."""
        done = self.epoch_batches[:self.sampler.epoch]  # loaded from a checkpoint, or []
        batches = list(done)
        if args.max_steps > 0:
            steps = sum(self._steps_of(b) for b in batches)
            while steps < args.max_steps:
                batches.append(self._planned_batches(len(batches)))
                steps += self._steps_of(batches[-1])
        else:
            while len(batches) < math.ceil(args.num_train_epochs):
                batches.append(self._planned_batches(len(batches)))
        return batches

    def _planned_batches(self, epoch):
        batches = self.sampler.total_batches(epoch + 1) - self.sampler.total_batches(epoch)
        if batches == 0:
            raise ValueError(
                f"{type(self).__name__}: epoch {epoch} of the GraftBatchSampler has no batch "
                f"(fraction={self.sampler.fraction}, batch_size={self.sampler.batch_size}, "
                "drop_last=True); raise the fraction or lower the batch size.")
        return batches

    def _steps_of(self, batches):
        return math.ceil(batches / self.args.gradient_accumulation_steps)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs,
                             resume_from_checkpoint, trial):
        """The Trainer's state; on resume, the epoch and its trained batches from the sampler."""
        epochs_trained, steps_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
            trial)
        if resume_from_checkpoint is None:
            return epochs_trained, steps_trained
        epoch, trained = self.sampler.epoch, self._resumed_batches()
        if epoch < len(self.epoch_batches) and trained >= self.epoch_batches[epoch]:
            epoch, trained = epoch + 1, 0  # saved after the epoch's last step
            self.sampler.set_epoch(epoch)
        expected = sum(self._steps_of(b) for b in self.epoch_batches[:epoch])
        expected += trained // self.args.gradient_accumulation_steps
        if expected != self.state.global_step:
            raise ValueError(
                f"{type(self).__name__} cannot resume: the checkpoint's global step is "
                f"{self.state.global_step}, but its sampler state is at batch {trained} of "
                f"epoch {epoch}, which is step {expected}. Resume with the batch size, the "
                "gradient_accumulation_steps and the sampler parameters of the saved run.")
        return epoch, trained

    def _resumed_batches(self):
        """Batches of its epoch the loaded sampler state trained, in this sampler's batches.

        After ``load_state_dict`` the state counts its position in samples of
        this rank's share of the epoch's plan (``sample_offset``, in this
        sampler's ``batch_size``); a partial last batch counts as one.
        """
        state, sampler = self.sampler.state_dict(), self.sampler
        saved = state["num_replicas"] or sampler.num_replicas
        if state["plan_offset"] or saved != sampler.num_replicas:
            raise ValueError(
                f"{type(self).__name__} cannot resume: the checkpoint's sampler state was "
                f"saved by {saved} process(es) (or resumed once under another number), and "
                f"this run has {sampler.num_replicas}. Resume with the number of processes "
                "of the saved run.")
        samples = state["sample_offset"] + state["batches_yielded"] * state["batch_size"]
        return math.ceil(samples / sampler.batch_size)

    def _run_epoch(self, *args, **kwargs):
        """One epoch, with that epoch's own number of batches and steps (see Trainer).

        With an explicit ``max_steps``, epochs that a refit shrank leave the
        Trainer's loop (sized at the start) short of it: its last epoch then runs
        the next ones, each opened with the callbacks' ``on_epoch_begin``, until
        ``max_steps``.
        """
        result = self._one_epoch(*args, **kwargs)
        state = self.state
        # a loop here, not a call per added epoch: a long max_steps over shrunk epochs
        # would otherwise nest one call per epoch
        while (self.args.max_steps > 0 and kwargs["epoch"] + 1 >= self._loop_epochs
               and state.global_step < state.max_steps
               and not self.control.should_training_stop):
            kwargs.update(epoch=kwargs["epoch"] + 1, steps_trained_in_current_epoch=0)
            self._loop_epochs = state.num_train_epochs = kwargs["epoch"] + 1
            self.control = self.callback_handler.on_epoch_begin(self.args, state, self.control)
            result = self._one_epoch(*args, **kwargs)
        return result

    def _one_epoch(self, *args, **kwargs):
        """The Trainer's epoch ``kwargs["epoch"]``, with the sampler's batches for it."""
        epoch = kwargs["epoch"]
        self.sampler.set_epoch(epoch)
        batches = len(self.sampler)  # the epoch's real plan (a refit runs here)
        self._check_planned(epoch, batches)
        if self._capture is None:
            self._capture = self._watch()
        kwargs.update(steps_in_epoch=batches, num_update_steps_per_epoch=self._steps_of(batches))
        return super()._run_epoch(*args, **kwargs)

    def _check_planned(self, epoch, batches):
        if epoch >= len(self.epoch_batches):
            self.epoch_batches.append(batches)  # an epoch past the loop's (see _run_epoch)
            return
        if self.epoch_batches[epoch] == batches:
            return
        planned = self.epoch_batches[epoch]
        self.epoch_batches[epoch] = batches
        if self.args.max_steps <= 0:
            self.state.max_steps = sum(self._steps_of(b) for b in self.epoch_batches)
            ends = f"The run now ends at step {self.state.max_steps}"
        else:
            ends = f"Epochs are added until step {self.state.max_steps} (max_steps)"
        warnings.warn(
            f"{type(self).__name__}: epoch {epoch} of the GraftBatchSampler has {batches} "
            f"batches, not the {planned} planned when training started (its refit selected "
            f"another number of samples). {ends}; the learning-rate schedule keeps the "
            "length it was created with.", UserWarning, stacklevel=3)

    # ------------------------------------------------------------- feedback

    def _head(self):
        """The layer to hook: ``layer``, else the LM head, else None (the sampler's
        watch() finds the head from the logits' autograd graph, and checks it: a layer
        picked by its name, ``classifier``, was hooked behind a temperature or as an
        auxiliary head)."""
        if self.layer is not None:
            return self.layer
        model = self.model
        output = _output_embeddings(model)
        if isinstance(output, torch.nn.Linear):
            return output
        return None  # the sampler's watch() finds the head from the logits' autograd graph

    def _watch(self):
        """Hook the head: per token for a causal LM's (read by the proxy), else through
        the sampler's watch(), which records (b, d) embeddings and (b, C) logits."""
        head, model = self._head(), self.model
        if head is None or head is not _output_embeddings(model):
            return self.sampler.watch(model, layer=head)
        if not _is_causal_lm(model):
            raise ValueError(
                f"{type(self).__name__} supports sequence classification and causal LMs; "
                f"{type(model).__name__} is neither: its head is its output embeddings (a "
                "masked or sequence-to-sequence LM), whose per-token loss the causal-LM "
                "gradient proxy does not model. Pass the Linear that maps pooled embeddings "
                "to logits as layer=, or train it with transformers.Trainer.")
        return LastLayerCapture(head, model=model, per_token=True)

    def training_step(self, model, inputs, *args, **kwargs):
        """The Trainer's training step, then the micro-batch's feedback recorded once.

        Parameters
        ----------
        model : torch.nn.Module
            The (wrapped) model.
        inputs : dict
            The micro-batch; its ``labels`` are the targets.
        *args, **kwargs
            Passed on to the Trainer's ``training_step``.

        Returns
        -------
        loss : tensor
        """
        loss = super().training_step(model, inputs, *args, **kwargs)
        self._observe(inputs)
        return loss

    def _indices(self):
        """Dataset indices of the micro-batch being trained: the oldest batch handed out
        and not yet observed. The Trainer fetches a step's micro-batches ahead and trains
        them in order, each observed once, so the oldest pending batch is the one."""
        iteration = self.sampler._iteration  # the sampler's current pass
        if iteration is None or not iteration.pending:
            raise RuntimeError(
                f"{type(self).__name__}: a training step ran with no batch of the sampler "
                "pending; was the training loader built by get_train_dataloader()?")
        return iteration.batches[iteration.pending[0]]

    def _observe(self, inputs):
        labels = inputs.get("labels") if isinstance(inputs, dict) else None
        capture = self._capture
        if capture.per_token:
            self._observe_causal_lm(labels)
        elif capture.problem is not None:
            raise ValueError(_unsupported(self,
                f"its head {capture.name()} {capture.problem} at its latest forward"))
        elif capture.outputs is not None and capture.outputs.shape[0] != len(self._indices()):
            raise ValueError(_unsupported(self,
                f"its head {capture.name()} gave {capture.outputs.shape[0]} rows for the "
                f"micro-batch's {len(self._indices())} samples (a multiple-choice model "
                f"scores each choice)"))
        elif labels is not None:
            if self.sampler.loss == "cross_entropy" and labels.ndim != 1:
                raise ValueError(_unsupported(self,
                    f"its batches' labels have shape {tuple(labels.shape)}, not (b,): one "
                    f"class per sample (multi-label and per-token labels are not)"))
            self.sampler.observe(self._indices(), targets=labels)
        elif self.sampler.targets is not None:
            self.sampler.observe(self._indices())
        else:
            raise ValueError(
                f"{type(self).__name__} needs each training batch's class labels: the "
                "batches have no 'labels' entry; name the label column 'labels' (as "
                "transformers' collators do) or give GraftBatchSampler targets=.")

    def _observe_causal_lm(self, labels):
        """Record the micro-batch's CausalLMProxy rows, from the LM head's latest forward."""
        capture, owner = self._capture, type(self).__name__
        problem = capture.problem or "did not run in this training step"
        hidden, logits = capture.take()
        if logits is None:
            raise ValueError(f"{owner}: the causal LM's head {capture.name()} {problem}; pass "
                             "the Linear that maps hidden states to the vocabulary as layer=.")
        if labels is None or logits.ndim != 3 or tuple(labels.shape) != tuple(logits.shape[:2]):
            shown = None if labels is None else tuple(labels.shape)
            raise ValueError(
                f"{owner} needs a causal LM's batches to hold 'labels' of shape (b, T) matching "
                f"its head's (b, T, V) logits, {tuple(logits.shape)}; got labels of shape "
                f"{shown}. Use a collator that sets labels (DataCollatorForLanguageModeling "
                "with mlm=False).")
        self.sampler.observe(self._indices(), gradients=self.lm_proxy(hidden, logits, labels))

    # ---------------------------------------------------------- checkpoints

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial),
                              f"checkpoint-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, STATE_FILE.format(rank=self.args.process_index))
        torch.save({"sampler": self.sampler.state_dict(),
                    "epoch_batches": list(self.epoch_batches),
                    "schedule_steps": self._schedule_steps}, path)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        """Train (see ``transformers.Trainer.train``); a checkpoint restores the sampler too.

        Parameters
        ----------
        resume_from_checkpoint : str or bool, default=None
            A checkpoint folder of a GraftTrainer run, or True for the latest in
            ``args.output_dir``.
        trial, ignore_keys_for_eval, **kwargs
            As for ``transformers.Trainer.train``.

        Returns
        -------
        output : transformers.trainer_utils.TrainOutput
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory "
                                 f"({self.args.output_dir}).")
        self._schedule_steps = None
        if resume_from_checkpoint:
            self._load_sampler(resume_from_checkpoint)
        else:
            self.epoch_batches = []
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                 ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:
            if self._capture is not None:
                self._capture.remove()
                self._capture = None

    def _load_sampler(self, folder):
        path = os.path.join(folder, STATE_FILE.format(rank=self.args.process_index))
        if not os.path.isfile(path):
            raise ValueError(
                f"{type(self).__name__} cannot resume from {folder}: it holds no "
                f"{os.path.basename(path)} (the sampler's state of this process). Resume from a "
                "checkpoint written by a GraftTrainer run with the same number of processes.")
        saved = torch.load(path, weights_only=False)
        self.sampler.load_state_dict(saved["sampler"])
        self.epoch_batches = list(saved["epoch_batches"])
        self._schedule_steps = saved.get("schedule_steps")


class GraftTrainer(GraftTrainerMixin, transformers.Trainer):
    """A ``transformers.Trainer`` that trains each epoch on a GRAFT subset.

    The three-line change: import it, build the sampler, and replace
    ``Trainer(...)`` by ``GraftTrainer(..., sampler=sampler)``; the model,
    dataset, collator and ``TrainingArguments`` stay as they are. The trainer

    - trains on the sampler's batches (it builds the training loader around the
      sampler, which shards over processes itself);
    - sizes the run from the sampler's epochs, warm start included: ``max_steps``,
      the learning-rate schedule, the progress bar, ``state.epoch`` and
      ``num_train_epochs`` match the steps that really run, with or without
      ``max_steps`` and with ``gradient_accumulation_steps``;
    - hooks the model's head (``layer``, else the LM head, else the Linear whose
      output the model returns, found from the logits' autograd graph as
      :meth:`~graft_select.sampler.GraftBatchSampler.watch` finds it; a decoder's
      sequence classifier, whose ``score`` runs on every token, records the
      returned token's row) and records every training micro-batch once, with
      the batch's ``labels`` as targets; evaluation forwards are not recorded;
    - for a causal LM (a model that generates and has no encoder, hooked at its
      output embeddings: head outputs ``(b, T, V)``, labels ``(b, T)``) hooks
      the head per token and records a :class:`CausalLMProxy` of each
      sequence's last-layer gradient;
    - writes the sampler's state into every checkpoint (one file per process)
      and restores it with ``train(resume_from_checkpoint=...)``, so a resumed
      run trains the same samples in the same order and the same number of steps,
      from any step (mid-epoch, warm start or not).

    Parameters
    ----------
    *args
        The positional arguments of ``transformers.Trainer``.
    sampler : GraftBatchSampler
        The training batch sampler, over ``train_dataset`` (its ``batch_size``
        is ``per_device_train_batch_size``).
    layer : torch.nn.Module, default=None
        The Linear mapping embeddings to logits, when the automatic choice is
        not it.
    lm_proxy_width : int, default=512
        Width of the causal-LM gradient proxy.
    **kwargs
        The keyword arguments of ``transformers.Trainer``.

    Attributes
    ----------
    sampler : GraftBatchSampler
        The training batch sampler.
    epoch_batches : list of int
        This process's batches in each epoch of the run's plan (set by
        ``train``; updated when a refit changes an epoch's length).
    lm_proxy : CausalLMProxy
        The causal-LM gradient proxy.

    Raises
    ------
    ValueError or TypeError
        At construction, for what it cannot honour: an IterableDataset, a
        sampler of another length or batch size, a length-grouped or
        non-random ``train_sampling_strategy`` (``group_by_length``),
        ``auto_find_batch_size``, ``ignore_data_skip`` or
        ``dataloader_drop_last`` other than the sampler's ``drop_last``.

    See Also
    --------
    GraftTrainerMixin, graft_trainer : The same for another Trainer class.
    graft_select.lightning.GraftCallback : The Lightning integration.

    Notes
    -----
    A refit that selects another number of samples than planned (the
    label-noise guard or ``refresh_share`` can, and samples whose labels are
    all ``-100`` are left out) changes the run's length; the trainer then warns
    and updates ``state.max_steps``, or, with an explicit ``max_steps``, adds
    epochs until it. The learning-rate schedule keeps the length it was
    created with, through a resume too. Resuming needs the
    same number of processes, batch size and ``gradient_accumulation_steps``
    as the saved run. A masked or sequence-to-sequence LM (its head is its
    output embeddings, but it is no causal LM) raises a ValueError at the
    first step: pass ``layer=`` or train it with ``transformers.Trainer``.

    Examples
    --------
    >>> import tempfile
    >>> import torch
    >>> from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
    >>> from graft_select.sampler import GraftBatchSampler
    >>> from graft_select.transformers import GraftTrainer
    >>> config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
    ...                     num_attention_heads=2, intermediate_size=16)
    >>> data = [{"input_ids": torch.randint(0, 30, (8,)), "labels": i % 2} for i in range(40)]
    >>> sampler = GraftBatchSampler(data, batch_size=8, fraction=0.5, warm_start_epochs=1)
    >>> args = TrainingArguments(tempfile.mkdtemp(), per_device_train_batch_size=8,
    ...                          num_train_epochs=3, report_to=[], use_cpu=True,
    ...                          save_strategy="no", disable_tqdm=True)
    >>> trainer = GraftTrainer(model=BertForSequenceClassification(config), args=args,
    ...                        train_dataset=data, sampler=sampler)
    >>> trainer.train().global_step  # doctest: +ELLIPSIS
    {'train_runtime': ...}
    11
    >>> trainer.epoch_batches  # a warm-start epoch, then 20 of the 40 samples
    [5, 3, 3]
    """


def graft_trainer(trainer_class):
    """A subclass of ``trainer_class`` that trains on a GraftBatchSampler.

    For code that already subclasses ``transformers.Trainer`` (trl's
    ``SFTTrainer``, one's own): ``graft_trainer(SFTTrainer)(..., sampler=sampler)``
    behaves as :class:`GraftTrainer` does.

    Parameters
    ----------
    trainer_class : type
        A subclass of ``transformers.Trainer``.

    Returns
    -------
    cls : type
        ``class Graft<Name>(GraftTrainerMixin, trainer_class)``.

    Examples
    --------
    >>> import transformers
    >>> from graft_select.transformers import GraftTrainerMixin, graft_trainer
    >>> class MyTrainer(transformers.Trainer):
    ...     pass
    >>> cls = graft_trainer(MyTrainer)
    >>> cls.__name__, issubclass(cls, GraftTrainerMixin), issubclass(cls, MyTrainer)
    ('GraftMyTrainer', True, True)
    """
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, transformers.Trainer)):
        raise TypeError(f"The 'trainer_class' parameter of graft_trainer must be a subclass of "
                        f"transformers.Trainer. Got {trainer_class!r} instead.")
    if issubclass(trainer_class, GraftTrainerMixin):
        return trainer_class
    return type(f"Graft{trainer_class.__name__}", (GraftTrainerMixin, trainer_class),
                {"__module__": trainer_class.__module__, "__doc__": GraftTrainer.__doc__})


# ------------------------------------------------------------------------ helpers


def _output_embeddings(model):
    """The model's output embeddings (an LM's head), or None."""
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def _is_causal_lm(model):
    """Whether ``model`` is a decoder-only LM (it generates and has no encoder)."""
    can_generate = getattr(model, "can_generate", None)
    config = getattr(model, "config", None)
    return bool(callable(can_generate) and can_generate()
                and not getattr(config, "is_encoder_decoder", False))


def _epoch_steps(steps, num_train_epochs):
    """Steps of ``num_train_epochs`` (possibly fractional) epochs of ``steps`` each."""
    whole = math.floor(num_train_epochs)
    total = sum(steps[:whole])
    if whole < len(steps):
        total += math.ceil((num_train_epochs - whole) * steps[whole])
    return total


def _unsupported(trainer, reason):
    """The message for a model ``trainer`` (a GraftTrainer) does not train, with ``reason``."""
    return (f"{type(trainer).__name__} supports single-label sequence classification "
            f"(head outputs (b, C), labels (b,); a decoder that pools its last token's "
            f"logits included), regression with GraftBatchSampler(loss='mse'), and "
            f"causal LMs (outputs (b, T, V), labels (b, T)); {type(trainer.model).__name__} "
            f"is not one of these: {reason}. Train it with transformers.Trainer, or in a "
            f"loop that records per-sample gradient proxies with "
            f"GraftBatchSampler.observe(indices, gradients=...).")


def _check_supported(trainer):
    """Raise at construction for what GraftTrainer cannot honour."""
    owner = type(trainer).__name__
    missing = [name for name in _TRAINER_HOOKS if not hasattr(trainer, name)]
    if missing:
        raise ImportError(f"{owner} needs transformers >= 5.25 (its Trainer has no "
                          f"{', '.join(missing)}); found {transformers.__version__}. Upgrade "
                          "transformers.")
    args, sampler, dataset = trainer.args, trainer.sampler, trainer.train_dataset
    if dataset is None or isinstance(dataset, IterableDataset):
        kind = "no train_dataset" if dataset is None else "an IterableDataset"
        raise TypeError(f"{owner} got {kind}: GraftBatchSampler selects samples by index, so "
                        "it needs a map-style train_dataset with a length.")
    if len(dataset) != sampler.n_samples:
        raise ValueError(f"The 'sampler' of {owner} covers {sampler.n_samples} samples but the "
                         f"train_dataset has {len(dataset)}; build the sampler over the "
                         "train_dataset.")
    strategy = getattr(args, "train_sampling_strategy", "random")
    if strategy != "random" or getattr(args, "group_by_length", False):
        shown = "group_by_length" if getattr(args, "group_by_length", False) else strategy
        raise ValueError(f"{owner} does not support train_sampling_strategy={shown!r}: the "
                         "GraftBatchSampler decides the batches (shuffle=False orders them by "
                         "index). Leave it at 'random'.")
    checks = (("per_device_train_batch_size", args.per_device_train_batch_size,
               sampler.batch_size, "the sampler's batch_size"),
              ("dataloader_drop_last", args.dataloader_drop_last, sampler.drop_last,
               "the sampler's drop_last"),
              ("auto_find_batch_size", args.auto_find_batch_size, False,
               "False (the sampler's batch size is fixed)"),
              ("ignore_data_skip", args.ignore_data_skip, False,
               "False (the sampler resumes its epoch exactly)"))
    for name, value, wanted, what in checks:
        if value != wanted:
            raise ValueError(f"The TrainingArguments '{name}' of {owner} must equal {what}, "
                             f"{wanted!r}. Got {value!r} instead.")
    config = getattr(args, "accelerator_config", None)
    if getattr(config, "split_batches", False):
        raise ValueError(
            f"The TrainingArguments accelerator_config of {owner} has split_batches=True, "
            "which splits each batch across the processes; GraftBatchSampler hands each "
            "process its own batches of per_device_train_batch_size. Leave split_batches "
            "False and set per_device_train_batch_size (and the sampler's batch_size) to "
            "each process's share.")
