"""The Dask source of a selection: every block is selected where it lives.

Imported by :class:`~graft_select.GraftSelector` only when ``X`` is a
``dask.array.Array`` (``import graft_select`` does not import dask).

`DaskSource` is the in-memory fit split at block boundaries:

1. host: check the arrays, rechunk so that no selection chunk straddles a block,
   plan the chunks and draw the seeds exactly as the in-memory fit does;
2. workers, one task per block: MaxVol orders of the block's chunks and, with
   gradients, their nested gradient errors (the same kernels and the same seeds
   as in memory, so the same orders);
3. host: one allocation of the budget over all chunks from those errors and the
   uniform picks (the functions the in-memory fit calls);
4. workers, with gradients only: least-squares weights and errors of the picked
   rows, block by block.

Only orders, errors, picks and weights travel; the rows stay on the workers.
Blocks may be NumPy or CuPy arrays: each task runs the kernels in its block's
namespace and returns NumPy results.
"""

import math

import dask
import dask.array as da
import numpy as np

from ._backend import (
    device_scope,
    from_numpy,
    get_namespace,
    is_dask_array,
    is_sparse,
    single_threaded,
    to_numpy,
)
from ._dask_tree import bad_rows, block_gradients, dask_roots, leaf_masses, picked_gradients
from ._hierarchy import root_errors, root_orders
from ._orders import prefix_errors, stack_order, subset_errors
from ._selection import stack_groups
from ._sizing import default_chunks
from ._validation import (
    check_not_empty,
    check_not_factor_pair,
    complex_data_error,
    reshape_hint,
)
from .gradients import FactoredGradients

__all__ = ["DaskSource", "aligned", "aligned_to", "take_rows"]

_X_DTYPES = (np.float32, np.float64)  # the dtypes X keeps, as in GraftSelector._validate_X


# ----------------------------------------------------------------------- fitting


class DaskSource:
    """The selection source of a dask array ``X`` (and gradients chunked like it).

    Checked and rechunked here so that no selection chunk straddles a block; the
    estimators' recipe then plans the chunks and draws the seeds on the host, as
    for in-memory input, and the orders and errors come from one task per block.
    """

    #: No uniform orders from the first pass (see ``InMemorySource.uniform_orders``).
    uniform_orders = None

    def __init__(self, X, gradients, chunk_size, owner):
        X = _check_dask(X, "X", owner)
        gradients = _check_gradients(gradients, X, owner)
        self.n_samples, self.n_features = int(X.shape[0]), int(X.shape[1])
        if chunk_size is None:  # blocks of whole leaves (the default chunks)
            leaves = default_chunks(self.n_samples)
            self.X = aligned_to(X, leaves)
            self.gradients = _map_gradients(gradients, lambda G: aligned_to(G, leaves))
        else:
            self.X = aligned(X, int(chunk_size))
            self.gradients = _map_gradients(gradients, lambda G: aligned(G, int(chunk_size)))
        self.with_gradients = gradients is not None
        self._owner = owner
        self.tree = None  # (plan, roots) after tree_orders

    def orders(self, params, chunks, k_hi, rng):
        """MaxVol orders and nested errors of every chunk, one task per block."""
        groups = _plan_groups(params, chunks, k_hi, rng)
        return _block_orders(params, self.X, self.gradients, chunks, groups, self._owner)

    def tree_orders(self, params, plan, rng):
        """Per group of ``plan`` its root's order and nested errors: a dask reduction.

        The nodes and the roots run with every native thread pool at one thread,
        as `_hierarchy.InMemoryTree.tree_orders` runs them: a root's pivots
        depend on the BLAS threads' rounding (two picks of a 41,000-row fit with
        dense gradients swapped places at two threads), so only the same limit
        gives the in-memory result. The limit is process-wide: it holds for the
        threaded scheduler's tasks and an in-process cluster's; worker processes
        of ``distributed`` start at one BLAS thread.
        """
        X_blocks, G_blocks = self.X.to_delayed().ravel(), _gradient_blocks(self.gradients)
        bounds = _block_bounds(self.X)
        plan = plan.with_masses(leaf_masses(params, plan, X_blocks, G_blocks, bounds))
        with single_threaded():
            roots = dask_roots(params, plan, X_blocks, G_blocks, bounds)
            bad = [(root.X, root.G) for root in roots if not hasattr(root, "rows")]
            if bad:
                _raise_non_finite(bad, [(0, None)] * len(bad), self._owner)
            self.tree = (plan, roots)
            return root_orders(params, plan, roots, rng, self.with_gradients)

    def picked_errors(self, chunks, local, with_weights):
        """Errors and (unless not wanted) weights of the picked rows, one task per block."""
        if self.tree is not None:
            picked = picked_gradients(self.tree[1], self.gradients, chunks, local)
            errors, weights = root_errors(*self.tree, picked, local)
        else:
            errors, weights = _block_weights(self.gradients, chunks, local)
        return errors, weights if with_weights else None

    def output(self, values):
        """Results stay host NumPy arrays (the rows stay on the workers)."""
        return values


def _plan_groups(params, chunks, k_hi, rng):
    """Stacks of equal chunks with their largest subset size and seed, as in memory.

    The in-memory fit draws one seed per stack (for its low-rank factor) in stack
    order, unless the strategy is uniform: the same draws, in the same order,
    here.
    """
    groups = []
    for _, _, count in stack_groups(chunks):
        seed = None if params.strategy == "uniform" else int(rng.integers(2**32))
        groups.append((count, int(k_hi[count[0]:count[1]].max()), seed))
    return groups


def _block_orders(params, X, gradients, chunks, groups, owner):
    """MaxVol orders and nested errors of every chunk, one task per block."""
    params = dask.delayed(params, pure=True)  # the workers need only the parameters
    X_blocks = X.to_delayed().ravel()
    G_blocks = _gradient_blocks(gradients)
    tasks = []
    for b, (start, stop) in enumerate(_block_bounds(X)):
        first, last = _chunk_range(chunks, start, stop)
        pieces = _block_pieces(groups, first, last, chunks, start, stop)
        G_block = None if G_blocks is None else G_blocks[b]
        tasks.append(dask.delayed(_order_block, pure=True)(params, X_blocks[b], G_block,
                                                           pieces))
    results = dask.compute(*tasks)
    _raise_non_finite(results, _block_bounds(X), owner)
    orders, errors = [], []
    for _, _, block in results:
        for order, error in block:
            if order is None:
                orders.extend([None] * error)  # error holds the number of chunks here
                continue
            orders.extend(order)
            if error is not None:
                errors.extend(error)
    return orders, errors


def _block_pieces(groups, first, last, chunks, start, stop):
    """The parts of the stacks in chunks ``[first, last)`` of one block.

    Each piece is ``(begin, stop, count, k_hi, seed)`` with rows relative to the
    block, as `_orders.stack_order` takes them.
    """
    pieces = []
    for (c0, c1), k_hi, seed in groups:
        lo, hi = max(c0, first), min(c1, last)
        if lo >= hi:
            continue
        rows = (chunks[lo][0] - start, min(chunks[hi - 1][1], stop) - start)
        pieces.append((*rows, (lo, hi), k_hi, seed))
    return pieces


class _Seed:
    """Stands in for the host generator on a worker: ``integers`` returns the planned seed."""

    def __init__(self, seed):
        self.seed = seed

    def integers(self, high):
        return self.seed


def _order_block(params, X, gradients, pieces):
    """Worker task: (bad X rows, bad gradient rows, [(orders, errors) per piece]).

    ``orders`` is an int64 array (chunks, k_hi), ``errors`` a float64 array of
    the same shape or None (without gradients); for the uniform strategy a
    piece is ``(None, number of chunks)``. If X or the gradients (dense, or
    either factor) hold NaN or infinity, nothing is selected and the bad rows
    are reported instead. These are the block's only checks: the kernels run
    their private bodies, under the device scope of X.
    """
    xp, _ = get_namespace(X)
    bad_X = bad_rows(X)
    bad_G = None if gradients is None else bad_rows(
        *(gradients if isinstance(gradients, tuple) else (gradients,)))
    if bad_X is not None or bad_G is not None:
        return bad_X, bad_G, []
    out = []
    with device_scope(X):  # the cast below creates arrays too: on X's device
        gradients = block_gradients(gradients)
        for begin, stop, count, k_hi, seed in pieces:
            order = stack_order(params, X, xp, gradients, begin, stop, count, k_hi,
                                _Seed(seed))
            if order[0] is None:
                out.append((None, len(order)))
                continue
            errors = None if gradients is None else prefix_errors(gradients, begin, stop,
                                                                   order)
            out.append((np.stack(order), errors))
    return None, None, out


def _raise_non_finite(results, bounds, owner):
    for position, name in ((0, "X"), (1, "gradients")):
        found = [(r[position], start) for r, (start, _) in zip(results, bounds)
                 if r[position] is not None]
        if found:
            count = sum(c for (c, _), _ in found)
            first = min(start + f for (_, f), start in found)
            raise ValueError(
                f"'{name}' of {owner} contains NaN or infinity in {count} rows "
                f"(first: {first}); remove or impute them before selection."
            )


def _block_weights(gradients, chunks, local):
    """Errors (n_chunks,) and weights (n_selected,) of the picked rows, one task per block."""
    G_blocks = _gradient_blocks(gradients)
    bounds = _block_bounds(gradients.residuals if isinstance(gradients, FactoredGradients)
                           else gradients)
    tasks = []
    for b, (start, stop) in enumerate(bounds):
        first, last = _chunk_range(chunks, start, stop)
        block_chunks = [(s - start, e - start) for s, e in chunks[first:last]]
        tasks.append(dask.delayed(_weights_block, pure=True)(
            G_blocks[b], block_chunks, local[first:last]))
    results = dask.compute(*tasks)
    errors = np.concatenate([e for e, _ in results])
    weights = np.concatenate([w for _, w in results])
    return errors, weights


def _weights_block(gradients, chunks, local):
    """Worker task: `_orders.subset_errors` of the chunks of one block.

    The block's values were checked by `_order_block`.
    """
    with device_scope(gradients):  # the raw block (an array or a tuple of factors)
        return subset_errors(block_gradients(gradients), chunks, local)


# --------------------------------------------------------------------- transform


def take_rows(selector, X, name="X"):
    """The rows ``sample_indices_`` of the dask array ``X``, as a lazy dask array.

    Each block's selected rows are taken where that block of ``X`` lives, from
    ``X``'s own blocks: no rechunk, so no task holds more than a block of ``X``
    (a rechunk to the fitted chunks made blocks of a whole tree group, all of
    ``X`` with one group). When ``sample_indices_`` visits the blocks in order
    (every selection chunk within one block), block ``b`` of the result holds
    block ``b``'s rows, in the order of ``sample_indices_``. Otherwise (a chunk,
    tree leaf or group straddles a block, and its picks in pivot order mix two
    blocks) the rows are taken per block and then put in the order of
    ``sample_indices_``, which moves the selected rows, and only those, between
    blocks.
    """
    owner = type(selector).__name__
    X = _check_dask(X, name, owner, min_ndim=1 if name != "X" else 2, convert=False)
    if name == "X" and X.shape[1] != selector.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {owner} is expecting "
            f"{selector.n_features_in_} features as input."
        )
    if X.shape[0] != selector.n_samples_fit_:
        raise ValueError(
            f"'{name}' has {X.shape[0]} rows but {owner} was fitted on "
            f"{selector.n_samples_fit_}; the selection is a set of row indices of the "
            f"fitted data, so pass that same data (or refit)."
        )
    indices = np.asarray(to_numpy(selector.sample_indices_), dtype=np.int64)
    starts = np.array([start for start, _ in _block_bounds(X)], dtype=np.int64)
    block = np.searchsorted(starts, indices, side="right") - 1
    counts = tuple(int(c) for c in np.bincount(block, minlength=len(starts)))
    # each block's rows in the order sample_indices_ lists them; blockwise hands
    # block b the b-th run of `local`, so the runs must follow the blocks
    order = np.argsort(block, kind="stable")
    local = da.from_array((indices - starts[block])[order], chunks=(counts,))
    letters = "ij"[: X.ndim]
    taken = da.blockwise(_take_block, letters, X, letters, local, "i",
                         adjust_chunks={"i": counts}, dtype=X.dtype, meta=X._meta,
                         align_arrays=False, concatenate=True)
    if np.all(np.diff(block) >= 0):  # already in the order of sample_indices_
        return taken
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return taken[inverse]


def _take_block(X, local):
    if isinstance(X, np.ndarray):
        return X[local]
    xp, device = get_namespace(X)
    return xp.take(X, from_numpy(np.asarray(local), xp, device), axis=0)


# ------------------------------------------------------------------------ checks


def aligned(X, chunk_size):
    """``X`` rechunked so that no selection chunk of ``chunk_size`` rows straddles a block.

    The rule: if every block but the last holds a multiple of ``chunk_size``
    rows, the blocks stay as they are; otherwise ``X`` is rechunked along its rows
    to blocks of ``chunk_size * max(1, rows_of_first_block // chunk_size)`` rows
    (the first block's size rounded down to a multiple of ``chunk_size``, at
    least one chunk), so blocks never grow beyond what the caller chose.
    """
    rows = X.chunks[0]
    boundaries = np.cumsum(rows)[:-1]
    if np.all(boundaries % chunk_size == 0):
        return X
    return X.rechunk({0: chunk_size * max(1, rows[0] // chunk_size)})


def aligned_to(X, chunks):
    """``X`` rechunked along its rows so that no chunk of ``chunks`` straddles a block.

    Blocks that already end at chunk boundaries stay; otherwise every block end
    moves down to the nearest chunk boundary (a block shorter than a chunk joins
    the next one).
    """
    bounds = np.array([stop for _, stop in chunks], dtype=np.int64)
    ends = np.cumsum(X.chunks[0])
    if np.all(np.isin(ends, bounds)):
        return X
    below = np.searchsorted(bounds, ends[:-1], side="right") - 1
    snapped = bounds[below[below >= 0]]
    snapped = np.unique(np.concatenate([snapped, ends[-1:]]))
    return X.rechunk({0: tuple(int(s) for s in np.diff(snapped, prepend=0))})


def _chunk_range(chunks, start, stop):
    """``(first, last)``: the chunks that begin in rows ``[start, stop)``."""
    starts = np.array([begin for begin, _ in chunks], dtype=np.int64)
    return (int(np.searchsorted(starts, start)), int(np.searchsorted(starts, stop)))


def _check_dask(X, name, owner, *, min_ndim=2, convert=True):
    """Check a dask array's shape, blocks and dtype; return it with a float dtype."""
    if not min_ndim <= X.ndim <= 2:
        want = "a 2-D array" if min_ndim == 2 else "a 1-D or 2-D array"
        raise ValueError(
            f"'{name}' of {owner} must be {want}, got a dask array of shape {X.shape}; "
            f"{reshape_hint(name, 2 if X.ndim > 2 else min_ndim)}."
        )
    # X's column count is its n_features_in_; the other arrays' columns are only
    # read block by block, so an unknown count there is harmless
    sizes = X.chunks[0] + (X.chunks[1] if name == "X" else ())
    if any(math.isnan(c) for c in sizes):
        raise ValueError(
            f"'{name}' of {owner} is a dask array with unknown chunk sizes (NaN in "
            f"{name}.chunks, as after boolean indexing or DataFrame.values); call "
            f"{name} = {name}.compute_chunk_sizes() first."
        )
    if X.ndim == 2 and len(X.chunks[1]) > 1:
        raise ValueError(
            f"'{name}' of {owner} is split into {len(X.chunks[1])} blocks along its "
            f"columns ({name}.chunks[1] = {_short(X.chunks[1])}); every block must hold "
            f"whole rows: {name} = {name}.rechunk({{1: -1}})."
        )
    check_not_empty(X.shape, name, owner)
    if is_sparse(X._meta):
        raise TypeError(
            f"{owner} does not accept a dask array of scipy.sparse blocks for '{name}'; "
            f"pass dense blocks ({name}.map_blocks(lambda b: b.toarray()))."
        )
    if not convert:
        return X
    kind = np.dtype(X.dtype).kind
    if kind in "iub" or (name == "X" and kind == "f" and X.dtype not in _X_DTYPES):
        return X.astype(np.float64)  # as the in-memory fit converts X
    if kind == "c":
        raise complex_data_error(name, owner, X.dtype)
    if kind != "f":
        raise TypeError(
            f"'{name}' of {owner} must hold real numbers, got dtype {X.dtype}; convert "
            f"it, e.g. {name}.astype('float64')."
        )
    return X


def _check_gradients(gradients, X, owner):
    """Dense or factored gradients as dask arrays chunked like X (NumPy is wrapped)."""
    if gradients is None:
        return None
    check_not_factor_pair(gradients, "gradients", owner, max_ndim=2)
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(
            _check_gradient_part(gradients.residuals, X, "gradients.residuals", owner),
            _check_gradient_part(gradients.inputs, X, "gradients.inputs", owner))
    return _check_gradient_part(gradients, X, "gradients", owner)


def _check_gradient_part(G, X, name, owner):
    if isinstance(G, np.ndarray):
        if G.ndim != 2:
            raise ValueError(f"'{name}' of {owner} must be a 2-D array, got shape {G.shape}.")
        if G.shape[0] == X.shape[0]:
            G = da.from_array(G, chunks=(X.chunks[0], -1))
    elif not is_dask_array(G):
        raise TypeError(
            f"'{name}' of {owner} must be a dask array (or a NumPy array) when X is a "
            f"dask array, got {type(G).__name__}; wrap it with "
            f"dask.array.from_array({name}, chunks=(X.chunks[0], -1))."
        )
    if is_dask_array(G):
        G = _check_dask(G, name, owner)
    if G.shape[0] != X.shape[0]:
        raise ValueError(
            f"'{name}' has {G.shape[0]} rows but X has {X.shape[0]}; pass one gradient "
            f"proxy per row of X, in the same order."
        )
    if G.chunks[0] != X.chunks[0]:
        raise ValueError(
            f"'{name}' of {owner} is split into row blocks of {_short(G.chunks[0])} rows "
            f"but X into {_short(X.chunks[0])}; chunk them alike: "
            f"{name} = {name}.rechunk({{0: X.chunks[0]}})."
        )
    return G


def _short(sizes):
    sizes = tuple(sizes)
    if len(sizes) <= 4:
        return str(sizes)
    return f"({sizes[0]}, {sizes[1]}, ..., {sizes[-1]}; {len(sizes)} blocks)"


# ----------------------------------------------------------------------- helpers


def _block_bounds(X):
    ends = np.cumsum(X.chunks[0])
    return [(int(e - s), int(e)) for s, e in zip(X.chunks[0], ends)]


def _map_gradients(gradients, function):
    if gradients is None:
        return None
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(function(gradients.residuals), function(gradients.inputs))
    return function(gradients)


def _gradient_blocks(gradients):
    """One delayed block per row block: dense, or a (residuals, inputs) pair."""
    if gradients is None:
        return None
    if isinstance(gradients, FactoredGradients):
        residuals = gradients.residuals.to_delayed().ravel()
        inputs = gradients.inputs.to_delayed().ravel()
        return [dask.delayed(tuple)([r, h]) for r, h in zip(residuals, inputs)]
    return list(gradients.to_delayed().ravel())
