"""The merge-and-reduce tree on dask: one :meth:`dask.bag.Bag.reduction` per group.

Imported by `_dask.DaskSource` for a ``chunk_size=None`` fit. The bag of a
group holds one partition per leaf (a task on the leaf's block, where it
lives); ``Bag.reduction(split_every=FAN_IN)`` pools the nodes as
`_hierarchy.reduce_levels` does in memory, with the same node functions and
seeds, so the roots are the in-memory roots bit for bit. Only candidates
(`_hierarchy.node_candidates` rows of X and of the gradients per node), gradient
sums and, in a first pass (`leaf_masses`), one float per leaf travel.

The bags compute where the user's dask arrays would (a configured scheduler,
a distributed client, else threads), never on the bag's own default of
processes.

Non-finite values: a leaf holding NaN or infinity yields a `_Bad` marker
instead of a node; merges pass the markers up, and the host raises the named
error of the block-wise fit.
"""

import functools
from typing import NamedTuple

import dask
import dask.bag as db
import numpy as np

from ._backend import device_scope, get_namespace, to_numpy
from ._hierarchy import leaf_mass, leaf_node, merge_nodes, take_rows
from ._proxies import FactoredGradients
from ._validation import all_finite, half_dtype

__all__ = ["bad_rows", "block_gradients", "dask_roots", "leaf_masses", "picked_gradients"]


class _Bad(NamedTuple):
    """Rows holding NaN or infinity below a node: ``(count, first)`` or None, per array."""

    X: tuple | None
    G: tuple | None


def dask_roots(params, plan, X_blocks, G_blocks, bounds):
    """The root of every group of ``plan`` (a `_Bad` where a leaf holds NaN or infinity).

    One bag reduction per group, computed at once. ``X_blocks`` and
    ``G_blocks`` are the delayed row blocks (``bounds``: their rows), and
    every block holds whole leaves (`_dask.aligned_to`).
    """
    where = _leaf_blocks(plan.leaves, bounds)
    items = []
    for g, (first, last) in enumerate(plan.groups):
        task = dask.delayed(plan.task(params, g), pure=True)
        parts = []
        for leaf in range(first, last):
            b, lo, hi = where[leaf]
            parts.append(dask.delayed(_leaf_part, pure=True)(
                task, X_blocks[b], None if G_blocks is None else G_blocks[b],
                lo, hi, plan.leaves[leaf][0], leaf))
        bag = db.from_delayed(parts)
        items.append(bag.reduction(_first, functools.partial(_merge_part, plan.task(params, g)),
                                   split_every=plan.fan_in))
    return [_realigned(root) for root in dask.compute(*items, **_array_scheduler())]


def leaf_masses(params, plan, X_blocks, G_blocks, bounds):
    """Every leaf's `_hierarchy.leaf_mass`, one task per leaf on its block, computed at once.

    A pass over the data before the tree: `_hierarchy.node_candidates` needs the
    masses of all of a group's leaves before any of them reduces.
    """
    parts = [dask.delayed(_leaf_mass_part, pure=True)(
        params, X_blocks[b], None if G_blocks is None else G_blocks[b], lo, hi)
        for b, lo, hi in _leaf_blocks(plan.leaves, bounds)]
    return list(dask.compute(*parts, **_array_scheduler()))


def _leaf_blocks(leaves, bounds):
    """Per leaf ``(block, lo, hi)``: the block (``bounds``: their rows) that holds it, and
    its rows in that block (every block holds whole leaves)."""
    block_starts = np.array([start for start, _ in bounds], dtype=np.int64)
    where = []
    for begin, stop in leaves:
        b = int(np.searchsorted(block_starts, begin, side="right") - 1)
        offset = int(block_starts[b])
        where.append((b, begin - offset, stop - offset))
    return where


def _leaf_rows(X, gradients, lo, hi):
    """Rows ``lo:hi`` of a block of X and of its gradients (an array, a tuple or None)."""
    if isinstance(gradients, tuple):
        return _realigned((X[lo:hi], tuple(A[lo:hi] for A in gradients)))
    return _realigned((X[lo:hi], None if gradients is None else gradients[lo:hi]))


def _leaf_mass_part(params, X, gradients, lo, hi):
    """Worker task: `_hierarchy.leaf_mass` of rows ``lo:hi`` of a block."""
    X, G = _leaf_rows(X, gradients, lo, hi)
    with device_scope(X):
        return leaf_mass(params, X, block_gradients(G))


def _array_scheduler():
    """Compute the bags where the user's dask arrays would compute.

    A bag's own default is the multiprocessing scheduler: it would pickle every
    block to fresh processes and, in a script without an ``if __name__ ==
    "__main__":`` guard, fail at start. With no scheduler configured and no
    distributed client, the tree runs on dask.array's default (threads); a
    configured scheduler or a client is used as it is.
    """
    from dask.base import get_scheduler

    if get_scheduler() is None:
        return {"scheduler": "threads"}
    return {}


def _leaf_part(task, X, gradients, lo, hi, begin, leaf):
    """Worker task: the partition ``[node]`` (or ``[_Bad]``) of one leaf of a block."""
    X, G = _leaf_rows(X, gradients, lo, hi)
    bad_X = bad_rows(X)
    bad_G = None if G is None else bad_rows(*(G if isinstance(G, tuple) else (G,)))
    if bad_X is not None or bad_G is not None:
        return [_Bad(_shift(bad_X, begin), _shift(bad_G, begin))]
    with device_scope(X):
        return [leaf_node(task, X, block_gradients(G), begin, leaf)]


def _first(part):
    """Bag.reduction's per-partition step: a leaf's partition holds its node."""
    return part[0]


def _merge_part(task, children):
    """Bag.reduction's aggregate: `_hierarchy.merge_nodes`, or the children's `_Bad`."""
    children = list(children)
    bad = [c for c in children if isinstance(c, _Bad)]
    if not bad:
        with device_scope(children[0].X):
            return merge_nodes(task, children)
    return _Bad(_combine([b.X for b in bad]), _combine([b.G for b in bad]))


def picked_gradients(roots, gradients, chunks, local):
    """Per group the gradient rows of its picks, in pick order (host or device arrays).

    Picks among the root's candidates come from the root; the others (uniform
    picks) of all groups are read from the dask array in one compute, so each
    gradient block is read at most once per call, however many groups it holds.
    """
    picked, missing = [], []
    for g, (root, (begin, _), lo) in enumerate(zip(roots, chunks, local)):
        wanted = begin + np.asarray(lo, dtype=np.int64)
        sorter = np.argsort(root.rows, kind="stable")
        at = np.minimum(np.searchsorted(root.rows, wanted, sorter=sorter), len(sorter) - 1)
        found = sorter[at]
        if np.all(root.rows[found] == wanted):
            picked.append(take_rows(root.G, found))
        else:
            picked.append(None)
            missing.append((g, wanted))
    if missing:
        unique, inverse = np.unique(np.concatenate([wanted for _, wanted in missing]),
                                    return_inverse=True)
        rows = _read_rows(gradients, unique)
        ends = np.cumsum([wanted.size for _, wanted in missing])
        for (g, _), part in zip(missing, np.split(inverse, ends[:-1])):
            picked[g] = take_rows(rows, part)
    return picked


def _read_rows(gradients, rows):
    """Rows ``rows`` (sorted global rows) of dense or factored dask gradients, one compute."""
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(*dask.compute(gradients.residuals[rows],
                                               gradients.inputs[rows]))
    return to_numpy(gradients[rows].compute())


def block_gradients(gradients):
    """A block's finite gradients as the private kernels take them, or None.

    What the public kernels' checks would leave: half precision computed in
    float32 (as ``check_array`` does in memory) and the two factors of a
    FactoredGradients in one dtype; the host checked the shapes and dtype kinds.
    """
    if gradients is None:
        return None
    parts = gradients if isinstance(gradients, tuple) else (gradients,)
    xp, _ = get_namespace(*parts)
    parts = [xp.astype(P, xp.float32) if half_dtype(P) is not None else P for P in parts]
    if len(parts) == 1:
        return parts[0]
    dtype = xp.result_type(*(P.dtype for P in parts))
    return FactoredGradients(*(P if P.dtype == dtype else xp.astype(P, dtype)
                               for P in parts))


def bad_rows(*arrays):
    """``(count, first)`` of the rows of a block holding NaN or infinity in any of ``arrays``.

    None if every entry is finite.
    """
    xp, _ = get_namespace(*arrays)
    if all(all_finite(A, xp) for A in arrays):
        return None
    bad = np.zeros(arrays[0].shape[0], dtype=bool)
    for A in arrays:
        bad |= ~np.all(np.isfinite(to_numpy(A)), axis=-1)
    rows = np.flatnonzero(bad)
    return int(rows.size), int(rows[0])


def _shift(bad, begin):
    return None if bad is None else (bad[0], bad[1] + begin)


def _combine(found):
    found = [f for f in found if f is not None]
    if not found:
        return None
    return (sum(c for c, _ in found), min(f for _, f in found))


def _realigned(value):
    """``value`` with every NumPy array whose memory is not aligned to its itemsize copied.

    Arrays that travel between processes (a ``distributed`` worker's blocks, the
    roots that come back to the host) are deserialized at whatever byte offset
    their frame lands on. On such an array NumPy's matmul leaves BLAS for its
    own loop, which rounds differently (``R.T @ H`` of float32 factors, by
    about 1e-5), so a tree fit with factored gradients on a process cluster
    gave other weights and errors from run to run. Tuples (factor pairs,
    `FactoredGradients`, `_hierarchy.Node`) are walked; anything else (None,
    device arrays) is returned as it is.
    """
    if isinstance(value, np.ndarray):
        return value if value.flags.aligned else value.copy()
    if not isinstance(value, tuple):
        return value
    parts = [_realigned(part) for part in value]
    return type(value)(*parts) if hasattr(value, "_fields") else tuple(parts)
