"""accelerate integration: a DataLoader wrapper for a GraftBatchSampler.

GraftBatchSampler shards each epoch over the processes itself (from
torch.distributed, which accelerate initialises), so its DataLoader must not go
through ``accelerator.prepare()``, which would shard it a second time and
override its epochs (the sampler raises if it does). Prepare the model and the
optimizer, and wrap the loader with :func:`prepare_data_loader`.

Importing this module imports accelerate; ``import graft_select`` does not.
"""

import weakref

import torch.distributed as dist
from accelerate.data_loader import DataLoaderStateMixin
from accelerate.state import GradientState
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from .sampler import GraftBatchSampler

__all__ = ["GraftDataLoader", "prepare_data_loader"]

# sampler -> the GraftDataLoader wrapping it (see check_skipped_wrapper)
_WRAPPED = weakref.WeakKeyDictionary()


def check_skipped_wrapper(sampler, skip):
    """Raise when ``accelerate.skip_first_batches`` dropped a GraftDataLoader where that
    changes the training; the sampler calls it when accelerate's skip wrapper iterates it.

    ``skip_first_batches(loader, n)`` returns a plain DataLoader over the loader's
    sampler: the samples stay right (the sampler starts at batch ``n`` itself), but
    the batches stay on the CPU and the pass's last batch is no longer marked for
    ``accelerator.accumulate()``, so with gradient accumulation the epoch's last
    optimizer step is lost without a word.
    """
    loader = _WRAPPED.get(sampler)
    loader = None if loader is None else loader()
    if loader is None:
        return
    steps = GradientState().num_steps
    if steps <= 1 and loader.device.type == "cpu":
        return
    why = (f"with gradient_accumulation_steps={steps} the pass's last batch would not step "
           f"the optimizer" if steps > 1 else
           f"the batches would stay on the CPU instead of {loader.device}")
    raise ValueError(
        f"accelerate's skip_first_batches(loader, {skip}) replaced the GraftDataLoader by a "
        f"plain DataLoader over its GraftBatchSampler: {why}. The sampler resumes by "
        f"itself after accelerator.load_state(): iterate the GraftDataLoader without "
        f"skip_first_batches.")


class GraftDataLoader(DataLoaderStateMixin):
    """A DataLoader whose batches are moved to the accelerator's device.

    Iterates the wrapped DataLoader; its batch sampler keeps control of the
    epochs (:meth:`set_epoch`) and of the sharding over processes. Like
    accelerate's own loaders it tells accelerate's gradient state when the
    epoch's last batch is being trained (``end_of_dataloader``), so
    ``accelerator.accumulate()`` steps the optimizer at the end of every epoch;
    its :meth:`state_dict` is the sampler's, for
    ``accelerator.save_state()``; and it answers the DataLoader's attributes
    (``dataset``, ``batch_sampler``, ``num_workers``, ``collate_fn``, ...), so
    ``len(loader.dataset)`` works. ``accelerate.skip_first_batches`` returns a
    plain DataLoader without this wrapper: it raises with gradient accumulation
    or a device other than the CPU (the sampler resumes by itself after
    ``accelerator.load_state()``; iterate this loader instead).

    Parameters
    ----------
    dataloader : torch.utils.data.DataLoader
        A DataLoader with a :class:`~graft_select.sampler.GraftBatchSampler` as
        ``batch_sampler``.
    device : torch.device
        Where batches go.

    Attributes
    ----------
    sampler : GraftBatchSampler
        The batch sampler (also ``batch_sampler``).
    batch_size : int
        The sampler's batch size (per process).
    end_of_dataloader : bool
        Whether the batch being trained is the pass's last (read by accelerate).

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from graft_select.accelerate import GraftDataLoader
    >>> from graft_select.sampler import GraftBatchSampler
    >>> data = TensorDataset(torch.arange(12))
    >>> sampler = GraftBatchSampler(12, 4, fraction=1.0)
    >>> loader = GraftDataLoader(DataLoader(data, batch_sampler=sampler),
    ...                          torch.device("cpu"))
    >>> loader.set_epoch(2)
    >>> len(loader), loader.sampler.epoch, len(loader.dataset)
    (3, 2, 12)
    """

    def __init__(self, dataloader, device):
        self.dataloader = dataloader
        self.device = device
        self.sampler = dataloader.batch_sampler
        self.gradient_state = GradientState()
        if isinstance(self.sampler, GraftBatchSampler):
            _WRAPPED[self.sampler] = weakref.ref(self)

    def __getattr__(self, name):
        # the wrapped DataLoader's attributes (dataset, num_workers, collate_fn, ...), for
        # accelerate's skip_first_batches; never the wrapper's own (unpickling)
        if name.startswith("__") or name in ("dataloader", "sampler", "device"):
            raise AttributeError(name)
        return getattr(self.dataloader, name)

    @property
    def batch_sampler(self):
        """The GraftBatchSampler (as on the wrapped DataLoader)."""
        return self.sampler

    @property
    def batch_size(self):
        """The sampler's batch size (per process)."""
        return self.sampler.batch_size

    def __iter__(self):
        # end_of_dataloader is set while the pass's last batch is trained, as accelerate's
        # DataLoaderShard does; the sampler knows the pass's length, so no batch is
        # fetched ahead of the loop (its resume position stays the loop's)
        self.begin()
        try:
            iterator = iter(self.dataloader)
            length = self.sampler._pass_length
            for count, batch in enumerate(iterator, start=1):
                self.end_of_dataloader = count >= length
                yield send_to_device(batch, self.device)
        finally:
            self.end()

    def __len__(self):
        return len(self.dataloader)

    def set_epoch(self, epoch):
        """Set the sampler's epoch (see :meth:`GraftBatchSampler.set_epoch`).

        Parameters
        ----------
        epoch : int
            The epoch number, from 0.
        """
        self.sampler.set_epoch(epoch)

    def state_dict(self):
        """The sampler's state (see :meth:`GraftBatchSampler.state_dict`).

        ``accelerator.save_state()`` saves it: :func:`prepare_data_loader`
        registers the loader for checkpointing. accelerate writes the main
        process's state only, and every process loads that file; so under
        several processes the ranks first merge the feedback they observed since
        the last refit, as a refit does (``save_state()`` calls this on every
        process). Every rank then holds the same feedback and the same position
        in its share of the plan, and the one file resumes each of them exactly.

        Returns
        -------
        state : dict
        """
        sampler = self.sampler
        if sampler.num_replicas > 1 and dist.is_available() and dist.is_initialized():
            sampler._recorder.merge_ranks(sampler.num_replicas)
        return sampler.state_dict()

    def load_state_dict(self, state):
        """Restore the sampler's state (see :meth:`GraftBatchSampler.load_state_dict`).

        The next pass resumes where the saved one stopped; a later
        ``accelerate.skip_first_batches(loader, n)`` must then name the same
        position (or be left out).

        Parameters
        ----------
        state : dict
            A dictionary returned by :meth:`state_dict`.
        """
        self.sampler.load_state_dict(state)


def prepare_data_loader(accelerator, dataloader, *, register_for_checkpointing=True):
    """Prepare a DataLoader with a GraftBatchSampler for ``accelerator``.

    Use it instead of passing the loader to ``accelerator.prepare()``: each
    process gets a disjoint, equal share of one common plan (the sampler's own
    sharding) and epochs advance with ``loader.set_epoch(epoch)``. The loader
    is registered for checkpointing, so ``accelerator.save_state()`` and
    ``load_state()`` keep the sampler's feedback, epoch and position.

    Parameters
    ----------
    accelerator : accelerate.Accelerator
        The accelerator (its ``device`` receives the batches).
    dataloader : torch.utils.data.DataLoader
        A DataLoader with ``batch_sampler=GraftBatchSampler(...)``.
    register_for_checkpointing : bool, default=True
        Call ``accelerator.register_for_checkpointing(loader)`` (skipped when the
        loader's sampler is registered already). Pass False to register it
        yourself.

    Returns
    -------
    loader : GraftDataLoader

    Examples
    --------
    >>> import torch
    >>> from accelerate import Accelerator
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from graft_select.accelerate import prepare_data_loader
    >>> from graft_select.sampler import GraftBatchSampler
    >>> data = TensorDataset(torch.randn(40, 3), torch.randint(0, 2, (40,)))
    >>> loader = prepare_data_loader(Accelerator(cpu=True),
    ...                              DataLoader(data, batch_sampler=GraftBatchSampler(40, 8)))
    >>> len(loader), next(iter(loader))[0].device.type
    (5, 'cpu')
    """
    if not isinstance(dataloader, DataLoader) or not isinstance(dataloader.batch_sampler,
                                                                GraftBatchSampler):
        raise TypeError("prepare_data_loader expects a torch DataLoader built with "
                        "batch_sampler=GraftBatchSampler(...); pass other loaders to "
                        "accelerator.prepare().")
    if getattr(accelerator, "split_batches", False):
        raise ValueError(
            "prepare_data_loader got an Accelerator with split_batches=True, which splits "
            "each batch across the processes; GraftBatchSampler hands each process its own "
            "batches of its batch_size. Build the Accelerator with split_batches=False (its "
            "DataLoaderConfiguration) and give the sampler each process's batch size.")
    loader = GraftDataLoader(dataloader, accelerator.device)
    if register_for_checkpointing and not _registered(accelerator, loader.sampler):
        accelerator.register_for_checkpointing(loader)
    return loader


def _registered(accelerator, sampler):
    """Whether ``sampler`` (or a GraftDataLoader over it) is registered for checkpointing."""
    for obj in getattr(accelerator, "_custom_objects", ()):
        if obj is sampler or (isinstance(obj, GraftDataLoader) and obj.sampler is sampler):
            return True
    return False
