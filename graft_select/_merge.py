"""Merging the ranks' feedback under torch.distributed, so that every rank plans alike.

At a refit each rank sends the rows its store wrote since the previous merge: their
count, then the rows padded to the largest count, with their indices and last-seen
epochs. A row written on several ranks takes the value with the latest epoch, ties
going to the highest rank, so every rank ends with the same store.

This module imports torch; only the feedback recorder imports it.
"""

import torch

from ._store import FEEDBACK_DTYPES, FEEDBACK_NAMES

__all__ = ["merge", "union_of_ranks"]


def _comm_device(dist):
    """Where collectives take their tensors: NCCL moves CUDA tensors only, gloo CPU ones."""
    return (torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl" else torch.device("cpu"))


def union_of_ranks(indices, num_replicas):
    """The sorted union of every rank's ``indices`` (int64, CPU), the same on every rank.

    A collective: every rank calls it at the same point (a refit).
    """
    import torch.distributed as dist

    comm = _comm_device(dist)
    counts = [torch.zeros(1, dtype=torch.int64, device=comm) for _ in range(num_replicas)]
    dist.all_gather(counts, torch.tensor([len(indices)], dtype=torch.int64, device=comm))
    width = int(torch.cat(counts).max())
    if width == 0:
        return indices.new_zeros(0)
    padded = torch.full((width,), -1, dtype=torch.int64, device=comm)
    padded[:len(indices)] = indices.to(comm)
    parts = [torch.empty_like(padded) for _ in range(num_replicas)]
    dist.all_gather(parts, padded)
    every = torch.cat(parts).cpu()
    return torch.unique(every[every >= 0])


def merge(store, num_replicas):
    """Exchange the rows ``store`` wrote since the last merge with every rank (newest wins).

    Parameters
    ----------
    store : FeedbackStore
        This rank's store; it ends equal on every rank.
    num_replicas : int
        Number of ranks in the process group.

    Returns
    -------
    n_bytes : int
        Bytes this rank sent.
    """
    import torch.distributed as dist

    comm = _comm_device(dist)
    sent = [0]

    def gather(tensor):
        tensor = tensor.to(comm).contiguous()
        sent[0] += tensor.numel() * tensor.element_size()
        parts = [torch.empty_like(tensor) for _ in range(num_replicas)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts)

    rows = store.changed_rows()
    _agree_on_names(store, gather)
    width = int(gather(torch.tensor([len(rows)])).max())
    if width:
        _exchange(store, gather, rows, width, num_replicas, comm)
    store.clear_changed()
    return sent[0]


def _exchange(store, gather, rows, width, num_replicas, comm):
    """Send ``rows`` (padded to ``width``), keep the newest row of every sample."""
    last_seen = store.last_seen  # a view: written in place below
    device = last_seen.device
    header = torch.full((2, width), -1, dtype=torch.int64, device=device)
    header[0, :len(rows)] = rows
    header[1, :len(rows)] = last_seen[rows]
    headers = gather(header)  # (ranks, 2, width)
    values = {}
    for name, stored in store.items():
        padded = stored.new_zeros((width, stored.shape[1]))
        padded[:len(rows)] = stored[rows]
        values[name] = gather(padded).flatten(0, 1)
    got_rows, got_seen = headers[:, 0].flatten(), headers[:, 1].flatten()
    ranks = torch.arange(num_replicas, device=comm).repeat_interleave(width)
    entries = torch.nonzero(got_rows >= 0).flatten()
    got_rows, key = got_rows[entries], got_seen[entries] * num_replicas + ranks[entries]
    best = torch.full((store.n_samples,), -1, dtype=torch.int64, device=comm)
    best.scatter_reduce_(0, got_rows, key, "amax")
    won = key == best[got_rows]
    target, entries = got_rows[won].to(device), entries[won]
    for name, stored in store.items():
        stored.index_copy_(0, target, values[name][entries].to(device))
    last_seen.index_copy_(0, target, got_seen[entries].to(device))


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
