"""Per-chunk subset sizes from nested gradient errors, under an overall budget.

Pure NumPy on small host arrays (one row of errors per chunk).
"""

import numpy as np

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "BudgetWarning",
    "allocate_sizes",
    "apportion",
    "budget_overshoot",
    "default_chunks",
    "size_band",
]

#: Largest chunk of the default chunking (``chunk_size=None``).
DEFAULT_CHUNK_ROWS = 4096

#: Relative gradient errors up to this count as 0 (ties), in the subset sizes and
#: in the MaxVol-or-uniform check alike. An error is the square root of a
#: difference of squared norms, so below about 3 times the square root of
#: float32's rounding unit it can be rounding residue (gradients of a rank below
#: the subset size give 1e-16 in float64, 1e-4 in float32), which would otherwise
#: decide the sizes differently on each backend and under a scaling of the gradients.
ERROR_TIE = 1e-3


def default_chunks(n, max_rows=None):
    """Chunk bounds for ``chunk_size=None``: one chunk up to ``max_rows`` rows, else
    ``ceil(n / max_rows)`` consecutive chunks whose sizes differ by at most one.

    ``max_rows=None`` reads `DEFAULT_CHUNK_ROWS` (the leaves of the
    merge-and-reduce tree, `_hierarchy`).

    The greedy selection in a chunk of ``c`` rows costs ``O(fraction * c^2 * r)``;
    with chunks of at most ``max_rows`` rows the total is linear in ``n``.
    """
    if max_rows is None:
        max_rows = DEFAULT_CHUNK_ROWS
    n_chunks = -(-n // max_rows)
    base, longer = divmod(n, n_chunks)
    sizes = [base + 1] * longer + [base] * (n_chunks - longer)
    stops = np.cumsum(sizes).tolist()
    return [(stop - size, stop) for stop, size in zip(stops, sizes)]


class BudgetWarning(UserWarning):
    """A selection keeps more rows than its budget ``round(fraction * n_samples)``.

    Every selection chunk keeps at least one row, so many small chunks can take
    more than ``fraction`` of the rows. The fitted ``budget_`` and
    ``subset_sizes_`` say by how much; filter this category to silence it.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from graft_select import BudgetWarning, GraftSelector
    >>> X = np.random.default_rng(0).standard_normal((100, 3))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     selector = GraftSelector(0.1, chunk_size=2, random_state=0).fit(X)
    >>> [w.category.__name__ for w in caught]
    ['BudgetWarning']
    >>> int(selector.subset_sizes_.sum()), selector.budget_
    (50, 10)
    """


def budget(fraction, n):
    """The number of rows a selection aims at: ``round(fraction * n)``, at least 1."""
    return max(1, round(fraction * n))


def budget_overshoot(sizes, fraction, chunk_sizes, owner, limit=0.1):
    """A warning text if ``sizes`` exceed the budget ``round(fraction * n)`` by over ``limit``.

    Only the at-least-one-row-per-chunk rule makes the total exceed the budget by
    more than a few percent (for example ``fraction=0.3`` with chunks of 2 rows
    keeps one row in two); the caller warns with the returned text (as a
    `BudgetWarning`), or gets None.
    """
    total = int(np.sum(sizes))
    n = int(np.sum(chunk_sizes))
    budget_rows = budget(fraction, n)
    if total <= (1 + limit) * budget_rows:
        return None
    return (
        f"{owner} keeps {total} of {n} rows ({total / n:.1%}) although fraction={fraction} "
        f"asks for {budget_rows}: every one of the {len(chunk_sizes)} chunks keeps at least "
        f"one row. Use larger chunks (chunk_size) or a larger fraction to stay within budget."
    )


def apportion(fraction, chunk_sizes):
    """Sizes ``fraction * chunk_sizes`` rounded so they sum to ``round(fraction * total)``.

    Every chunk keeps at least one row (which can raise the total to the number
    of chunks); the rows left after rounding down go to the largest remainders,
    earlier chunks first on ties.
    """
    chunk_sizes = np.asarray(chunk_sizes, dtype=np.int64)
    exact = fraction * chunk_sizes
    sizes = np.maximum(1, np.floor(exact)).astype(np.int64)
    extra = round(fraction * chunk_sizes.sum()) - int(sizes.sum())
    if extra > 0:
        room = sizes < chunk_sizes
        remainder = np.where(room, exact - np.floor(exact), -np.inf)
        order = np.argsort(-remainder, kind="stable")[:extra]
        sizes[order[np.isfinite(remainder[order])]] += 1
    return sizes


def size_band(chunk_sizes, fraction, min_fraction, max_fraction):
    """Smallest and largest subset size allowed for each chunk.

    ``min_fraction=None`` means ``fraction / 2`` and ``max_fraction=None`` means
    ``min(1, 2 * fraction)``; every chunk keeps at least one sample.
    """
    chunk_sizes = np.asarray(chunk_sizes, dtype=np.int64)
    low = fraction / 2 if min_fraction is None else min_fraction
    high = min(1.0, 2 * fraction) if max_fraction is None else max_fraction
    k_min = np.maximum(1, np.floor(low * chunk_sizes)).astype(np.int64)
    k_max = np.minimum(chunk_sizes, np.maximum(k_min, np.ceil(high * chunk_sizes)))
    return k_min, k_max.astype(np.int64)


def allocate_sizes(errors, k_min, k_max, budget, tol=None, slack=0.05):
    """Choose one subset size per chunk from its nested approximation errors.

    Parameters
    ----------
    errors : ndarray of shape (n_chunks, k_hi)
        ``errors[c, j]``: relative gradient error of the first ``j + 1`` rows of
        chunk ``c``'s nested order (non-increasing in ``j``); entries past
        ``k_max[c]`` are ignored.
    k_min, k_max : ndarray of shape (n_chunks,)
        The allowed band per chunk.
    budget : int
        Total number of samples wanted over all chunks.
    tol : float or None
        With a tolerance, each chunk takes the smallest size in its band whose
        error is at most ``tol``, as long as the total stays within ``slack`` of
        ``budget``; otherwise (and when ``tol`` is None) the total is set to the
        budget (clipped to that window) and distributed by error levelling.
        Errors up to `ERROR_TIE` count as 0 (so a ``tol`` below it acts as it).

    Returns
    -------
    sizes : ndarray of shape (n_chunks,)

    Notes
    -----
    Error levelling gives the next sample to the chunk whose current error is the
    largest, until the total is reached: it equalises the chunks' errors, so easy
    chunks get few samples and hard chunks many. Because each chunk's errors are
    non-increasing, this is a single sort of all candidate increments. Once every
    chunk's error is at the tie level, the rest of the budget goes round the
    chunks by size, smallest first, as `apportion` would share it.
    """
    errors = np.asarray(errors, dtype=np.float64)
    errors = np.where(errors <= ERROR_TIE, 0.0, errors)
    k_min = np.asarray(k_min, dtype=np.int64)
    k_max = np.asarray(k_max, dtype=np.int64)
    lowest, highest = int(k_min.sum()), int(k_max.sum())
    if tol is not None:
        sizes = _sizes_for_tolerance(errors, k_min, k_max, tol)
        window = (int(np.ceil((1 - slack) * budget)), int(np.floor((1 + slack) * budget)))
        if window[0] <= sizes.sum() <= window[1]:
            return sizes
        budget = int(np.clip(sizes.sum(), *window))
    budget = int(np.clip(budget, lowest, highest))
    return _level_errors(errors, k_min, k_max, budget - lowest)


def _sizes_for_tolerance(errors, k_min, k_max, tol):
    _n_chunks, k_hi = errors.shape
    steps = np.arange(1, k_hi + 1)[None, :]
    allowed = (steps >= k_min[:, None]) & (steps <= k_max[:, None]) & (errors <= tol)
    first = np.argmax(allowed, axis=1) + 1
    return np.where(allowed.any(axis=1), first, k_max)


def _level_errors(errors, k_min, k_max, extra):
    """Add ``extra`` samples on top of ``k_min``, each to the chunk with the largest error."""
    sizes = k_min.copy()
    if extra <= 0:
        return sizes
    _n_chunks, k_hi = errors.shape
    steps = np.arange(1, k_hi + 1)[None, :]
    # Candidate increment "grow chunk c to size j + 1" has priority errors[c, j - 1].
    candidate = (steps > k_min[:, None]) & (steps <= k_max[:, None])
    rows, cols = np.nonzero(candidate)
    priority = errors[rows, cols - 1]
    # Highest error first; ties broken by the smaller size, then by chunk index.
    order = np.lexsort((rows, cols, -priority))[:extra]
    np.add.at(sizes, rows[order], 1)
    return sizes
