"""The selection's plan, sizes and picks as pure functions of explicit arguments.

The estimators validate their hyperparameters once into a `SelectionParams`,
then run this pipeline (the orders come from `_orders` in memory, `_feedback` on
a feedback store and `_dask` block by block):

1. ``chunk_bounds`` and ``stack_groups``: consecutive chunks of rows, and the
   runs of equal chunks that go through the kernels as one stack;
2. ``largest_sizes``: per chunk the longest prefix of its order a subset may
   take, and ``rank``: the rank of a stack's low-rank factor;
3. (the orders and, with gradients, the nested errors of their prefixes);
4. ``subset_sizes``: one size per chunk, from those errors or by the fraction;
5. ``pick``: each chunk's order prefix plus its uniform picks;
6. ``selected_indices`` and ``chunk_weights``: the fitted rows and (without
   gradients) their weights; with gradients, ``checked_weights`` replaces
   all-zero least-squares weights and says which chunks' weights are degenerate.

Host NumPy on small arrays (one entry per chunk). Nothing here reads or sets an
estimator's attributes: what a function needs is in its arguments, and what it
computes is returned for the caller to keep.
"""

import dataclasses
import math

import numpy as np

from ._gram import maxvol_rank
from ._sizing import allocate_sizes, apportion, default_chunks, size_band

# Random keys of the uniform picks held at once (8 MiB of float64).
_PICK_KEYS = 1 << 20


@dataclasses.dataclass(frozen=True)
class SelectionParams:
    """The hyperparameters the selection reads, as the estimator validated them.

    The fields are the estimator's parameters of the same names (see
    :class:`~graft_select.GraftSelector`); ``basis`` is "input" or "gradients"
    once `resolve_basis` has resolved "auto".
    """

    fraction: float
    n_components: int | None
    strategy: str
    basis: str
    method: str
    refine: bool
    uniform_share: float
    gradient_tol: float | None
    min_fraction: float | None
    max_fraction: float | None
    svd_method: str

    @classmethod
    def of(cls, params):
        """The fields' values in ``params`` (a dict such as ``get_params()``; others ignored)."""
        return cls(**{field.name: params[field.name] for field in dataclasses.fields(cls)})


# ------------------------------------------------------------------------ checks


def check_band(params, owner):
    """Raise a ValueError naming ``owner`` unless the size band contains ``fraction``."""
    low = params.fraction / 2 if params.min_fraction is None else params.min_fraction
    high = (min(1.0, 2 * params.fraction) if params.max_fraction is None
            else params.max_fraction)
    if not low <= params.fraction <= high:
        raise ValueError(
            f"The band [min_fraction, max_fraction] = [{low}, {high}] of "
            f"{owner} must contain fraction={params.fraction}; widen it."
        )


def resolve_basis(params, with_gradients):
    """``params.basis`` with "auto" resolved: "gradients" when gradients are given."""
    if params.basis == "gradients" and not with_gradients and params.strategy == "graft":
        raise ValueError(
            "basis='gradients' needs per-sample gradients: call fit(X, gradients=G) "
            "or use basis='input'."
        )
    if params.basis == "auto":
        return "gradients" if with_gradients else "input"
    return params.basis


# ------------------------------------------------------------------------ chunks


def chunk_bounds(n, chunk_size):
    """``(begin, end)`` of consecutive chunks of ``chunk_size`` rows (None: the default)."""
    if chunk_size is None:
        return default_chunks(n)
    if chunk_size >= n:
        return [(0, n)]
    starts = range(0, n, chunk_size)
    return [(s, min(s + chunk_size, n)) for s in starts]


def chunk_lengths(chunks):
    """Rows per chunk (int64)."""
    return np.array([stop - begin for begin, stop in chunks], dtype=np.int64)


def stack_groups(chunks):
    """Group consecutive equal-size chunks: (row begin, row end, (first, last+1) chunk)."""
    groups = []
    first = 0
    for c in range(1, len(chunks) + 1):
        end_of_group = c == len(chunks) or (
            chunks[c][1] - chunks[c][0] != chunks[first][1] - chunks[first][0])
        if end_of_group:
            groups.append((chunks[first][0], chunks[c - 1][1], (first, c)))
            first = c
    return groups


def child_rng(rng):
    """A generator seeded from ``rng`` (one draw), for one kernel call."""
    return np.random.default_rng(int(rng.integers(2**32)))


# ------------------------------------------------------------------ sizes, rank


def k_band(params, chunk_sizes):
    """Smallest and largest subset size per chunk, with gradients (see `size_band`)."""
    return size_band(chunk_sizes, params.fraction, params.min_fraction, params.max_fraction)


def fixed_sizes(params, chunk_sizes):
    """Subset sizes without gradients: ``fraction`` of every chunk, summing to the budget."""
    return apportion(params.fraction, chunk_sizes)


def largest_sizes(params, chunk_sizes, with_gradients):
    """Per chunk the largest size its subset may get: the length of its order."""
    if with_gradients:
        return k_band(params, chunk_sizes)[1]
    return fixed_sizes(params, chunk_sizes)


def rank(params, n_rows, n_columns, k_hi):
    """Rank of a chunk's factor: n_components, else min(n_columns, n_rows, k_rank, 256).

    ``k_rank`` is the largest number of rows any subset size up to the
    typical size ``min(k_hi, ceil(fraction * n_rows))`` takes from the MaxVol
    order (``uniform_share`` of a subset is drawn uniformly). The band of
    sizes goes up to twice the typical size, and the pivots beyond the rank
    come from rectangular MaxVol (`_orders.maxvol_order` asks for all of them):
    a factor of the largest size's rank costs about twice the range finder
    and greedy steps in every chunk, for rows that only the chunks given
    more than their share keep; the typical size's rank halves that cost and
    holds the accuracy and the gradient error (benchmarks/RESULTS.md).
    """
    if params.n_components is not None:
        return min(params.n_components, n_rows, n_columns)
    k_typical = min(int(k_hi), max(1, math.ceil(params.fraction * n_rows)))
    k_rank = maxvol_rank(k_typical, params.uniform_share)
    return max(1, min(n_columns, n_rows, k_rank, 256))


def subset_sizes(params, chunk_sizes, errors, with_gradients):
    """One subset size per chunk: from the nested gradient errors, else `fixed_sizes`.

    ``errors`` holds per chunk the errors of its order's prefixes (empty without
    gradients or for the uniform strategy).
    """
    if not with_gradients or params.strategy == "uniform" or not errors:
        return fixed_sizes(params, chunk_sizes)
    k_min, k_max = k_band(params, chunk_sizes)
    budget = int(np.rint(params.fraction * chunk_sizes.sum()))
    return allocate_sizes(_padded(errors), k_min, k_max, budget, tol=params.gradient_tol)


def _padded(errors):
    """The chunks' nested errors as one (n_chunks, longest) array, zero past each's end."""
    lengths = {len(e) for e in errors}
    if len(lengths) == 1:  # the common case: one stack of equal chunks
        return np.stack(errors).astype(np.float64, copy=False)
    padded = np.zeros((len(errors), max(lengths)))
    for c, e in enumerate(errors):
        padded[c, : len(e)] = e
    return padded


# ------------------------------------------------------------------------- pools


def pool_lengths(k_hi, chunk_sizes, pool):
    """Order lengths that hold a pool of ``pool`` rows: ``k_hi``, or a chunk's share of
    the pool where that is longer (so that a pool's rows come from the same orders)."""
    return np.maximum(k_hi, _pool_shares(chunk_sizes, pool))


def pool_sizes(errors, sizes, lengths, chunk_sizes, pool):
    """Per chunk the rows of a pool of ``pool`` (the subset's ``sizes`` at least, the
    order's ``lengths`` at most): by error levelling as `allocate_sizes` does with
    the nested errors, else each chunk's share of the pool."""
    if errors:
        return allocate_sizes(_padded(errors), sizes, lengths, pool)
    return np.clip(_pool_shares(chunk_sizes, pool), sizes, lengths)


def _pool_shares(chunk_sizes, pool):
    """Each chunk's share of a pool of ``pool`` rows (`apportion`)."""
    return apportion(min(1.0, pool / max(1, int(np.sum(chunk_sizes)))), chunk_sizes)


# ------------------------------------------------------------------------- picks


def pick(params, chunk_sizes, orders, sizes, rng):
    """Chunk-local selected rows: order prefix plus uniform picks from the rest.

    The uniform picks of all chunks of one size come from one array of random
    keys: rows already in the order's prefix get an infinite key, and each chunk
    takes its rows with the smallest keys. The keys are drawn in slices of
    chunks, so the host holds about ``_PICK_KEYS`` of them at a time. With
    ``uniform_share=0`` and an order for every chunk (None: the uniform
    strategy) there are no uniform picks: each chunk keeps its order's prefix
    and no keys are drawn (the generator is not used after the picks).
    """
    if params.uniform_share == 0 and all(order is not None for order in orders):
        return [np.asarray(order[: int(k)], dtype=np.int64)
                for order, k in zip(orders, sizes)]
    local = [None] * len(sizes)
    for size in np.unique(chunk_sizes):
        every = np.flatnonzero(chunk_sizes == size)
        # drawn in slices of about _PICK_KEYS keys: the same stream as one draw
        step = max(1, _PICK_KEYS // int(size))
        for members in (every[s:s + step] for s in range(0, every.size, step)):
            pick_members(params, orders, sizes, rng, local, members, size)
    return local


def pick_members(params, orders, sizes, rng, local, members, size):
    """`pick` for the chunks ``members``, all of ``size`` rows (fills ``local``)."""
    keys = rng.random((members.size, int(size)))
    n_uniform = np.zeros(members.size, dtype=np.int64)
    for j, c in enumerate(members):
        k = int(sizes[c])
        if orders[c] is None:
            n_uniform[j] = k
            continue
        n_uniform[j] = round(params.uniform_share * k) if k > 1 else 0
        keys[j, orders[c][: k - n_uniform[j]]] = np.inf
    ranked = np.argsort(keys, axis=1, kind="stable")
    for j, c in enumerate(members):
        tail = np.sort(ranked[j, : n_uniform[j]])
        if orders[c] is None:
            local[c] = tail.astype(np.int64)
            continue
        head = orders[c][: int(sizes[c]) - n_uniform[j]]
        local[c] = np.concatenate([head, tail]).astype(np.int64)


def selected_indices(chunks, local):
    """The selected rows (int64), chunk by chunk: chunk-local picks plus chunk offsets."""
    offsets = np.array([begin for begin, _ in chunks], dtype=np.int64)
    return np.concatenate([o + lo for o, lo in zip(offsets, local)])


def chunk_weights(chunk_sizes, local):
    """Weights without gradients: ``chunk_size / k`` for each of a chunk's ``k`` rows."""
    counts = np.array([len(lo) for lo in local], dtype=np.int64)
    return np.repeat(chunk_sizes / counts, counts).astype(np.float64)


def checked_weights(weights, chunk_sizes, local, owner):
    """Least-squares weights made usable, and warning texts: ``(weights, messages)``.

    A chunk whose weights are all 0 (its mean gradient is zero, or orthogonal to
    its picks' gradients) would train nothing under a weighted loss: its rows get
    ``chunk_size / k`` instead, as without gradients, and the first message names
    those chunks. A chunk whose weights sum to a negative number gets a message
    too (the weights stay: they are the least-squares coefficients).
    """
    weights = np.array(weights, dtype=np.float64)
    counts = np.array([len(lo) for lo in local], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    zero = [c for c in range(len(local))
            if counts[c] and not np.any(weights[starts[c]:starts[c] + counts[c]])]
    for c in zero:
        weights[starts[c]:starts[c] + counts[c]] = chunk_sizes[c] / counts[c]
    messages = []
    if zero:
        messages.append(
            f"The least-squares weights of {_chunk_list(zero)} of {owner} are all 0: the "
            f"chunk's mean gradient is zero (for example all-zero or cancelling gradient "
            f"rows) or orthogonal to its selected rows' gradients, and a loss weighted by "
            f"them would train nothing. Their rows get chunk_size / k in sample_weight_ "
            f"instead, as without gradients; check the gradients, or fit without them."
        )
    totals = np.add.reduceat(weights, starts) if weights.size else weights
    negative = [int(c) for c in np.flatnonzero((totals < 0) & (counts > 0))]
    if negative:
        c = negative[0]
        messages.append(
            f"The weights of {_chunk_list(negative)} of {owner} sum to a negative number "
            f"(chunk {c}: {totals[c]:.3g} for {int(chunk_sizes[c])} rows). sample_weight_ "
            f"holds least-squares coefficients, which degenerate gradients (zero, "
            f"cancelling or linearly dependent rows) can make negative, and a loss weighted "
            f"by them would be pushed up on these chunks. To train on the subset, use "
            f"chunk_size / k per row (fit without gradients) or clip sample_weight_ at 0."
        )
    return weights, messages


def _chunk_list(chunks, shown=5):
    """Chunk numbers in words: ``chunk 3``, ``chunks 0 and 1``, ``chunks 0, 1, 2 and 4``,
    ``chunks 0, 1, 2, 3, 4 and 7 more``."""
    chunks = [int(c) for c in chunks]
    if len(chunks) == 1:
        return f"chunk {chunks[0]}"
    if len(chunks) == 2:
        return f"chunks {chunks[0]} and {chunks[1]}"
    if len(chunks) <= shown:
        return f"chunks {', '.join(map(str, chunks[:-1]))} and {chunks[-1]}"
    return f"chunks {', '.join(map(str, chunks[:shown]))} and {len(chunks) - shown} more"
