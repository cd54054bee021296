"""Epoch orders, sharding over ranks and batching, shared by the batch samplers.

GraftBatchSampler and the demo's ShuffledBatchSampler cut their epochs the same way:
a private generator seeded from ``(seed, epoch)`` permutes the epoch's indices, the
order is split over ``num_replicas`` ranks as ``torch.utils.data.DistributedSampler``
does (padded by repetition, or truncated with ``drop_last``), and each rank's share is
cut into batches.

This module imports torch; only the samplers import it.
"""

import math

import numpy as np
import torch

from ._sizing import budget

__all__ = ["batch_count", "epoch_generator", "mix", "pool_draw", "pool_share", "pool_size",
           "shard", "shard_length", "shuffled", "split_batches"]


def mix(seed, epoch, *stream):
    """A 63-bit seed from (seed, epoch) that differs for every pair (and ``stream``, a
    further word for another stream of the same pair)."""
    words = [seed, epoch, *stream]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_generator(seed, epoch):
    """A fresh CPU generator seeded from ``(seed, epoch)``."""
    return torch.Generator().manual_seed(mix(seed, epoch))


def pool_share(fraction, pool_factor):
    """Share of the data a refit selects for epochs of ``fraction``: ``pool_factor``
    times it, at most ``(1 + fraction) / 2``, so that a pool always leaves out half of
    what an epoch does not train."""
    return min(1.0, pool_factor * fraction, (1.0 + fraction) / 2)


def pool_size(n, fraction, pool_factor):
    """Samples a refit selects for epochs of ``fraction`` of ``n`` (:func:`pool_share`;
    the budget itself with ``pool_factor=1``)."""
    epoch_budget = budget(fraction, n)
    if pool_factor == 1.0:
        return epoch_budget
    return max(epoch_budget, round(pool_share(fraction, pool_factor) * n))


def pool_draw(pool, refreshed, size, seed, epoch):
    """``size`` samples of ``pool`` for ``epoch``: its first ``refreshed`` (trained every
    epoch), then a random draw of the rest from ``(seed, epoch)``, a stream apart from
    :func:`epoch_generator`'s (the same draw on every rank and after a resume)."""
    if size >= len(pool):
        return pool
    generator = torch.Generator().manual_seed(mix(seed, epoch, 1))
    picks = pool[refreshed:]
    drawn = torch.randperm(len(picks), generator=generator)[:size - refreshed]
    # in the pool's order (selection order), which shuffle=False trains in
    return torch.cat([pool[:refreshed], picks[torch.sort(drawn).values]])


def shuffled(indices, seed, epoch):
    """``indices`` (an int64 tensor) in the random order of ``(seed, epoch)``."""
    return indices[torch.randperm(len(indices), generator=epoch_generator(seed, epoch))]


def shard_length(total, num_replicas, drop_last):
    """Length of each rank's share of ``total`` indices (equal on every rank)."""
    if num_replicas == 1:
        return total
    if drop_last:
        return total // num_replicas
    return math.ceil(total / num_replicas)


def shard(order, num_replicas, rank, drop_last):
    """This rank's share of ``order``: every ``num_replicas``-th index from ``rank``.

    Without ``drop_last`` the order is padded by repeating it from the start, so
    every rank gets the same number of indices.
    """
    if num_replicas == 1:
        return order
    total = shard_length(len(order), num_replicas, drop_last) * num_replicas
    if total > len(order):
        order = order.repeat(math.ceil(total / len(order)))[:total]
    return order[rank:total:num_replicas]


def batch_count(count, batch_size, drop_last):
    """Number of batches of ``batch_size`` in ``count`` indices."""
    if drop_last:
        return count // batch_size
    return math.ceil(count / batch_size)


def split_batches(order, batch_size, drop_last):
    """``order`` cut into a list of tensors of ``batch_size`` (the last one shorter)."""
    batches = list(torch.split(order, batch_size)) if len(order) else []
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
