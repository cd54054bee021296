"""accelerate integration: a DataLoader wrapper for a GraftBatchSampler.

GraftBatchSampler shards each epoch over the processes itself (from
torch.distributed, which accelerate initialises), so its DataLoader must not go
through ``accelerator.prepare()``, which would shard it a second time and
override its epochs (the sampler raises if it does). Prepare the model and the
optimizer, and wrap the loader with :func:`prepare_data_loader`.

Importing this module imports accelerate; ``import graft_select`` does not.
"""

from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from .sampler import GraftBatchSampler

__all__ = ["GraftDataLoader", "prepare_data_loader"]


class GraftDataLoader:
    """A DataLoader whose batches are moved to the accelerator's device.

    Iterates the wrapped DataLoader; its batch sampler keeps control of the
    epochs (:meth:`set_epoch`) and of the sharding over processes.

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
        The batch sampler.

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
    >>> len(loader), loader.sampler.epoch
    (3, 2)
    """

    def __init__(self, dataloader, device):
        self.dataloader = dataloader
        self.device = device
        self.sampler = dataloader.batch_sampler

    def __iter__(self):
        for batch in self.dataloader:
            yield send_to_device(batch, self.device)

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


def prepare_data_loader(accelerator, dataloader):
    """Prepare a DataLoader with a GraftBatchSampler for ``accelerator``.

    Use it instead of passing the loader to ``accelerator.prepare()``: each
    process gets a disjoint, equal share of one common plan (the sampler's own
    sharding) and epochs advance with ``loader.set_epoch(epoch)``.

    Parameters
    ----------
    accelerator : accelerate.Accelerator
        The accelerator (its ``device`` receives the batches).
    dataloader : torch.utils.data.DataLoader
        A DataLoader with ``batch_sampler=GraftBatchSampler(...)``.

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
    return GraftDataLoader(dataloader, accelerator.device)
