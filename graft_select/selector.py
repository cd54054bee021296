"""GraftSelector and GraftResampler: GRAFT row selection as scikit-learn estimators.

The estimators validate their parameters and inputs once, run the selection
pipeline of pure functions (`_selection`: chunks, band, rank, sizes, picks;
`_orders`: low-rank factors and MaxVol orders; `_feedback` on a sampler's
feedback store, `_dask` on dask arrays) and keep its results as fitted
attributes.
"""

import dataclasses
import numbers
import time
import warnings
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._backend import (
    device_scope,
    from_numpy,
    get_namespace,
    is_dask_array,
    is_sparse,
    to_numpy,
)
from ._feedback import groups_of, orders_and_errors, picked_errors
from ._ops import rescale_extreme
from ._orders import chunk_orders, maxvol_order, subset_errors
from ._proxies import FactoredGradients, check_factored
from ._selection import (
    SelectionParams,
    check_band,
    chunk_bounds,
    chunk_lengths,
    chunk_weights,
    k_band,
    largest_sizes,
    pick,
    rank,
    resolve_basis,
    selected_indices,
    stack_groups,
    subset_sizes,
)
from ._sizing import budget_overshoot
from ._validation import (
    check_array,
    check_no_bool_numbers,
    check_random_state,
    check_real_host,
    check_rows,
    n_rows,
)

__all__ = ["GraftResampler", "GraftSelector"]

# Rows of the feedback store gathered at once by `_fit_feedback`: with 512-d float32
# embeddings and chunks of 256, one group holds 16 MiB of rows, 8 MiB of Gram matrices
# and a 2.5 MiB factor, whatever the size of the store. Measured at 300,000 rows, 8,192
# rows per group refit 5-8% faster than 16,384 (the factor fits the greedy's cache-sized
# group of _maxvol._HOST_GROUP_BYTES, so each group runs the greedy steps once).
_GROUP_ROWS = 1 << 13

_DOC_PARAMETERS = """
    Parameters
    ----------
    fraction : float, default=0.25
        Share of the rows to keep, in (0, 1]. The total is
        ``round(fraction * n_samples)``, except that every chunk keeps at least
        one row: with many small chunks (``fraction * batch_size < 1``) this
        raises the total, and a UserWarning says so when it moves the total by
        more than 10%. Without
        gradients every chunk keeps ``fraction * chunk_size`` rows rounded up or
        down so that the total is exact (largest remainders first); with
        gradients the total is distributed over the chunks by their gradient
        error (and may move by up to 5% when ``gradient_tol`` is set).
    n_components : int, default=None
        Rank ``r`` of each chunk's low-rank factor. ``None`` uses
        ``min(n_features, chunk_size, k_rank, 256)``, where ``k_rank`` is the
        number of rows a chunk of the typical size takes from its MaxVol order:
        ``k - round(uniform_share * k)`` or so, for ``k = min(k_max,
        ceil(fraction * chunk_size))`` and ``k_max`` the largest subset size a
        chunk may get (all of ``k`` when ``uniform_share=0``). Chunks that the
        gradient criterion gives more rows take the pivots beyond the rank by
        rectangular MaxVol (see :func:`~graft_select.fast_maxvol`).
    batch_size : int, default=None
        Size of the selection chunks (consecutive rows). An int selects per chunk
        of ``batch_size`` rows (the last chunk may be shorter), as GRAFT does per
        training batch. ``None`` selects over all rows at once up to 4096 rows,
        and beyond that over ``ceil(n_samples / 4096)`` consecutive chunks of
        equal size (within one row): the greedy pivots of one chunk of ``c``
        rows cost ``O(fraction * c^2 * r)``, so a single chunk of all rows would
        make the cost quadratic in ``n_samples``; capped chunks keep it linear.
        Dense chunks go through the kernels as one stack.
    strategy : {"graft", "uniform"}, default="graft"
        ``"uniform"`` draws a seeded uniform subset of the same sizes: the
        baseline to check GRAFT against at the same budget.
    basis : {"auto", "input", "gradients"}, default="auto"
        What the low-rank factor is computed from: the rows of ``X``, or the
        per-sample gradient proxies given to ``fit`` (for factored last-layer
        gradients, from their Gram matrix, without forming them). ``"auto"``
        uses the gradients when ``fit`` gets them and the rows of ``X``
        otherwise; ``basis_`` says which.
    method : {"volume", "lu"}, default="volume"
        Pivot rule of :func:`~graft_select.fast_maxvol`.
    refine : bool, default=False
        Dominant-submatrix refinement of the square part (needs ``k >= r``;
        chunks with smaller ``k`` use the first ``k`` columns of their factor).
    uniform_share : float, default=0.0
        Share of each chunk's picks, in [0, 1), drawn uniformly from the rows
        MaxVol did not pick. Mixing keeps a floor of typical samples when MaxVol
        would only keep extreme ones (for example at small fractions on gradient
        features). With gradients, the order whose prefixes' errors size the
        chunks continues past the MaxVol pivots with rows in a seeded uniform
        order, like the uniform picks.
    gradient_tol : float, default=None
        Relative gradient error each chunk should reach (smallest size in the band
        that reaches it). ``None`` sets the total to the budget and levels the
        chunks' errors.
    min_fraction, max_fraction : float, default=None
        The band of per-chunk sizes with gradients, as shares of the chunk:
        ``fraction / 2`` and ``min(1, 2 * fraction)`` when None.
    svd_method : {"auto", "exact", "randomized"}, default="auto"
        Method of :func:`~graft_select.low_rank_features`.
    random_state : int, RandomState instance or None, default=None
        Seeds the randomized SVD, the uniform picks and the uniform strategy.
"""

_DOC_ATTRIBUTES = """
    Attributes
    ----------
    sample_indices_ : integer array of shape (n_selected,)
        Selected rows, chunk by chunk, each chunk in MaxVol pivot order (uniform
        picks last), in the input's namespace and on its device (NumPy for NumPy,
        sparse, pandas and dask input).
    sample_weight_ : float array of shape (n_selected,)
        One weight per selected row: with gradients, the least-squares weights
        of the chunk's mean gradient on the selected rows times the chunk size
        (the number of chunk samples a row stands for; they may be negative);
        without gradients, ``chunk_size / k`` for every row of a chunk.
    gradient_error_ : ndarray of shape (n_chunks,) or None
        Relative error of each chunk's mean gradient when approximated with the
        selected rows and ``sample_weight_``; None when fit without gradients.
    basis_ : {"input", "gradients"}
        The basis the fit used (``basis`` with ``"auto"`` resolved).
    chunk_sizes_ : ndarray of shape (n_chunks,)
        Rows per chunk.
    subset_sizes_ : ndarray of shape (n_chunks,)
        Selected rows per chunk.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Column names, when X was a DataFrame with string column names.
    n_samples_fit_ : int
        Number of rows seen during fit.
    fit_time_ : float
        Seconds spent in fit.
"""


class _GraftBase(BaseEstimator):
    _parameter_constraints: ClassVar[dict] = {
        "fraction": [Interval(numbers.Real, 0.0, 1.0, closed="right")],
        "n_components": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(numbers.Integral, 2, None, closed="left"), None],
        "strategy": [StrOptions({"graft", "uniform"})],
        "basis": [StrOptions({"auto", "input", "gradients"})],
        "method": [StrOptions({"volume", "lu"})],
        "refine": ["boolean"],
        "uniform_share": [Interval(numbers.Real, 0.0, 1.0, closed="left")],
        "gradient_tol": [Interval(numbers.Real, 0.0, None, closed="left"), None],
        "min_fraction": [Interval(numbers.Real, 0.0, 1.0, closed="right"), None],
        "max_fraction": [Interval(numbers.Real, 0.0, 1.0, closed="right"), None],
        "svd_method": [StrOptions({"auto", "exact", "randomized"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        fraction=0.25,
        *,
        n_components=None,
        batch_size=None,
        strategy="graft",
        basis="auto",
        method="volume",
        refine=False,
        uniform_share=0.0,
        gradient_tol=None,
        min_fraction=None,
        max_fraction=None,
        svd_method="auto",
        random_state=None,
    ):
        self.fraction = fraction
        self.n_components = n_components
        self.batch_size = batch_size
        self.strategy = strategy
        self.basis = basis
        self.method = method
        self.refine = refine
        self.uniform_share = uniform_share
        self.gradient_tol = gradient_tol
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction
        self.svd_method = svd_method
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting

    # numeric parameters that scikit-learn's interval constraints would take True for
    _NUMBERS: ClassVar[dict] = {
        "fraction": "a float in the range (0.0, 1.0]",
        "n_components": "an int in the range [1, inf) or None",
        "batch_size": "an int in the range [2, inf) or None",
        "uniform_share": "a float in the range [0.0, 1.0)",
        "gradient_tol": "a float in the range [0.0, inf) or None",
        "min_fraction": "a float in the range (0.0, 1.0] or None",
        "max_fraction": "a float in the range (0.0, 1.0] or None",
        "random_state": "an int, a numpy random generator or None",
    }

    def _fit(self, X, y=None, gradients=None, *, steps=None):
        """Fit atomically: a failing fit leaves the estimator's state as it was.

        ``steps`` is the fitting body (``_fit_steps`` unless given), called with
        ``(X, y, gradients)``.
        """
        saved = dict(self.__dict__)
        try:
            # CuPy creates arrays on the current device, whatever device= says
            with device_scope(X):
                return (steps or self._fit_steps)(X, y, gradients)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def _selection_params(self, with_gradients):
        """Validate the band and the basis once: (SelectionParams, generator).

        The params' ``basis`` is resolved ("auto" -> "input" or "gradients").
        """
        owner = type(self).__name__
        params = SelectionParams.of(self.get_params(deep=False))
        check_band(params, owner)
        rng = check_random_state(self.random_state, "random_state", owner)
        basis = resolve_basis(params, with_gradients)
        return dataclasses.replace(params, basis=basis), rng

    def _fit_steps(self, X, y=None, gradients=None):
        start = time.perf_counter()
        owner = type(self).__name__
        check_no_bool_numbers(self.get_params(deep=False), self._NUMBERS, owner)
        if is_dask_array(X):
            from ._dask import fit_dask  # dask is imported only for dask input

            return fit_dask(self, X, y, gradients, start)
        X, xp = self._validate_X(X, reset=True)
        n = X.shape[0]
        check_rows(n, y, owner)
        gradients = self._validate_gradients(gradients, n)
        with_gradients = gradients is not None
        params, rng = self._selection_params(with_gradients)
        # extreme magnitudes would over- or underflow in Gram matrices: an exact rescale
        X_scaled, _ = rescale_extreme(X, xp)
        chunks = chunk_bounds(n, self.batch_size)
        chunk_sizes = chunk_lengths(chunks)
        k_hi = largest_sizes(params, chunk_sizes, with_gradients)
        orders, errors = chunk_orders(params, X_scaled, xp, gradients, chunks, k_hi, rng)
        sizes = subset_sizes(params, chunk_sizes, errors, with_gradients)
        message = budget_overshoot(sizes, params.fraction, chunk_sizes, owner)
        if message:
            warnings.warn(message, UserWarning, stacklevel=5)  # fit's caller
        local = pick(params, chunk_sizes, orders, sizes, rng)
        gradient_error, weights = None, chunk_weights(chunk_sizes, local)
        if with_gradients:
            gradient_error, weights = subset_errors(gradients, chunks, local)
        device = None if is_sparse(X) else get_namespace(X)[1]
        self.chunk_sizes_, self.basis_, self.subset_sizes_ = chunk_sizes, params.basis, sizes
        self.sample_indices_ = from_numpy(selected_indices(chunks, local), xp, device)
        self.sample_weight_ = weights if is_sparse(X) else from_numpy(weights, xp, device)
        self.gradient_error_ = gradient_error
        self.n_samples_fit_ = n
        self.fit_time_ = time.perf_counter() - start
        return self

    def _fit_feedback(self, residuals, embeddings, rows, *, weights=True):
        """Fit on factored last-layer gradients held in a feedback store (private).

        The same selection as ``fit(X, gradients=FactoredGradients(residuals[rows],
        [embeddings[rows], 1]))`` with ``basis="gradients"``, without copying the
        store: rows are gathered one group of chunks at a time (about
        ``_GROUP_ROWS`` rows), converted to float32 there (the store may be half
        precision), and every quantity comes from the chunks' Gram matrices (see
        ``_gram``). The ones column is implicit.

        Parameters
        ----------
        residuals : array of shape (n_store, C)
            ``softmax(logits) - onehot(targets)`` per stored sample.
        embeddings : array of shape (n_store, d) or None
            The embeddings per stored sample (or a fixed sketch of them).
        rows : integer array of shape (n_samples,)
            The store rows to select from, in selection order (chunks are
            consecutive runs of it); host or on the store's device.
        weights : bool, default=True
            False (the sampler, which trains on the subset unweighted): no
            ``sample_weight_`` (None), and when every subset is a prefix of its
            chunk's selection order (``uniform_share=0``), ``gradient_error_``
            is read from the nested errors of the first pass, so the second pass
            over the store (the subsets' least-squares weights) is skipped.

        Returns
        -------
        self : the fitted estimator; ``sample_indices_`` are positions in ``rows``.
        """
        def steps(factors, _, rows):
            return self._feedback_steps(factors, rows, weights)

        return self._fit((residuals, embeddings), None, rows, steps=steps)

    def _feedback_steps(self, factors, rows, with_weights):
        start = time.perf_counter()
        owner = type(self).__name__
        check_no_bool_numbers(self.get_params(deep=False), self._NUMBERS, owner)
        residuals, embeddings = factors
        xp, device, rows, n = self._validate_feedback(factors, rows)
        params, rng = self._selection_params(with_gradients=True)
        chunks = chunk_bounds(n, self.batch_size)
        chunk_sizes = chunk_lengths(chunks)
        d = 0 if embeddings is None else int(embeddings.shape[1])
        width = int(residuals.shape[1]) * (d + 1)  # of one flattened gradient
        store = (residuals, embeddings, rows, xp)
        groups = groups_of(stack_groups(chunks), chunks, _GROUP_ROWS)
        first_pass = orders_and_errors(
            store, chunks, groups, k_band(params, chunk_sizes)[1],
            rank_of=lambda size, k_hi: rank(params, size, width, k_hi),
            order_of=lambda U, k_hi, child: maxvol_order(params, U, k_hi, child, with_tail=True),
            rng=rng, owner=owner)
        sizes = subset_sizes(params, chunk_sizes, first_pass[1], True)
        message = budget_overshoot(sizes, params.fraction, chunk_sizes, owner)
        if message:
            warnings.warn(message, UserWarning, stacklevel=4)
        local = pick(params, chunk_sizes, first_pass[0], sizes, rng)
        errors, weights = picked_errors(store, chunks, groups, local, first_pass, with_weights)
        self.chunk_sizes_, self.basis_, self.subset_sizes_ = chunk_sizes, params.basis, sizes
        self.n_features_in_ = d + 1
        self.gradient_error_ = errors
        self.sample_indices_ = from_numpy(selected_indices(chunks, local), xp, device)
        self.sample_weight_ = None if weights is None else from_numpy(weights, xp, device)
        self.n_samples_fit_ = n
        self.fit_time_ = time.perf_counter() - start
        return self

    def _validate_feedback(self, factors, rows):
        """Check a feedback fit's parameters and rows: (namespace, device, rows there, n)."""
        owner = type(self).__name__
        xp, device = get_namespace(*factors)
        if self.strategy != "graft" or self.basis == "input":
            raise ValueError(
                f"{owner}._fit_feedback selects on the gradients with strategy='graft'; got "
                f"strategy={self.strategy!r} and basis={self.basis!r}: call fit instead."
            )
        host_rows = np.asarray(to_numpy(rows), dtype=np.int64)
        n = host_rows.shape[0]
        check_rows(n, None, owner)
        return xp, device, from_numpy(host_rows, xp, device), n

    def _validate_X(self, X, reset):
        """Check X and return (X ready for the kernels, namespace)."""
        if is_sparse(X) or _is_host_like(X):
            if not is_sparse(X):
                check_real_host(X, "X", type(self).__name__)
            checked = validate_data(
                self, X, reset=reset, accept_sparse=("csr", "csc"),
                dtype=(np.float64, np.float32), ensure_all_finite=False,
                ensure_min_samples=1)
            checked, xp = check_array(checked, "X", type(self).__name__, max_ndim=2,
                                      allow_sparse=True)
            return checked, xp
        checked, xp = check_array(X, "X", type(self).__name__, max_ndim=2)
        if reset:
            self.n_features_in_ = int(checked.shape[1])
        elif checked.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {checked.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return checked, xp

    def _validate_gradients(self, gradients, n):
        if gradients is None:
            return None
        owner = type(self).__name__
        if isinstance(gradients, FactoredGradients):
            R, H, xp, _ = check_factored(gradients, owner, name="gradients")
            if R.ndim != 2:
                raise ValueError(
                    f"'gradients' of {owner} must be a FactoredGradients of 2-D factors "
                    f"(n_samples, C) and (n_samples, d + 1), got residuals of shape "
                    f"{tuple(R.shape)}; pass the factors of one matrix, not a stack."
                )
            rows = R.shape[0]
            gradients = FactoredGradients(rescale_extreme(R, xp)[0], rescale_extreme(H, xp)[0])
        else:
            if _is_host_like(gradients):
                check_real_host(gradients, "gradients", owner)
            gradients, xp = check_array(gradients, "gradients", owner, max_ndim=2)
            rows = gradients.shape[0]
            gradients = rescale_extreme(gradients, xp)[0]
        if rows != n:
            raise ValueError(
                f"'gradients' has {rows} rows but X has {n}; pass one gradient proxy per "
                f"row of X, in the same order."
            )
        return gradients

    # ---------------------------------------------------------------- selection

    def get_support(self, indices=False):
        """Mask or indices of the selected rows.

        Parameters
        ----------
        indices : bool, default=False
            If True, return the row indices (``sample_indices_``), else a boolean
            mask over the ``n_samples_fit_`` rows.

        Returns
        -------
        support : array of shape (``n_samples_fit_``,) or (n_selected,)
            In the namespace and on the device of ``sample_indices_``.
        """
        check_is_fitted(self, "sample_indices_")
        if indices:
            return self.sample_indices_
        mask = np.zeros(self.n_samples_fit_, dtype=bool)
        mask[to_numpy(self.sample_indices_)] = True
        xp, device = get_namespace(self.sample_indices_)
        return from_numpy(mask, xp, device)

    def _take_rows(self, X, name="X"):
        if is_dask_array(X):
            from ._dask import take_rows

            return take_rows(self, X, name)
        rows = n_rows(X, name)
        if rows != self.n_samples_fit_:
            raise ValueError(
                f"'{name}' has {rows} rows but {type(self).__name__} was fitted on "
                f"{self.n_samples_fit_}; the selection is a set of row indices of the "
                f"fitted data, so pass that same data (or refit)."
            )
        return _take(X, self.sample_indices_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = False
        return tags


class GraftSelector(TransformerMixin, _GraftBase):
    __doc__ = (
        """Select rows of X by GRAFT: low-rank features, Fast MaxVol, gradient-aware size.

    Per chunk of rows, GraftSelector computes the dominant left singular vectors
    of the chunk (:func:`~graft_select.low_rank_features`), orders the rows by
    greedy maximal volume (:func:`~graft_select.fast_maxvol`) and keeps a prefix of
    that order. With per-sample gradient proxies the prefix length is chosen per
    chunk so that the kept rows' gradients approximate the chunk's mean gradient.
    """
        + _DOC_PARAMETERS
        + _DOC_ATTRIBUTES
        + """
    See Also
    --------
    GraftResampler : The same selection as an imbalanced-learn resampler.
    graft_select.sampler.GraftBatchSampler : Refits the selection every epoch in torch.
    fast_maxvol : The row selection kernel.

    Notes
    -----
    ``transform`` selects rows, not columns, so it only accepts the data that was
    fitted (same number of rows); use it as the last step of a Pipeline or on its
    own. Fitting costs one batched decomposition of all chunks plus
    ``O(n_samples * r * k_max)`` for the greedy pivots.

    References
    ----------
    A. Jha, A. H. Phan, R. Dibo, V. Leplat, "GRAFT: Gradient-Aware Fast MaxVol
    Technique for Dynamic Data Sampling", arXiv:2508.13653, 2025.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from graft_select import GraftSelector
    >>> X, y = load_digits(return_X_y=True)
    >>> selector = GraftSelector(fraction=0.1, batch_size=256, random_state=0).fit(X)
    >>> selector.transform(X).shape
    (180, 64)
    >>> selector.chunk_sizes_.tolist()
    [256, 256, 256, 256, 256, 256, 256, 5]
    """
    )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, gradients=None):
        """Select the rows of X.

        Parameters
        ----------
        X : {array-like, sparse matrix, DataFrame, tensor} of shape (n_samples, n_features)
            Features, one row per sample: NumPy, scipy.sparse CSR/CSC, pandas,
            torch or CuPy (device arrays stay on their device), or a dask array
            chunked along its rows (selected block by block on the workers;
            needs an int ``batch_size``, see :doc:`/dask`).
        y : array-like of shape (n_samples,), default=None
            Ignored except for its length, which must match X.
        gradients : array of shape (n_samples, p) or FactoredGradients, default=None
            Per-sample gradient proxies (see
            :func:`~graft_select.last_layer_gradients`). They choose the subset
            size per chunk and give ``sample_weight_`` and ``gradient_error_``.

        Returns
        -------
        self : GraftSelector
            The fitted selector.
        """
        return self._fit(X, y, gradients)

    def transform(self, X):
        """Return the selected rows of X (the data that was fitted).

        Parameters
        ----------
        X : array-like of shape (``n_samples_fit_``, n_features)
            The fitted data (NumPy, sparse, DataFrame, torch, CuPy or dask), or
            any data aligned with it row by row.

        Returns
        -------
        X_subset : same type as X, of shape (n_selected, n_features)
            The rows ``sample_indices_`` of X (a lazy dask array for dask input).
        """
        check_is_fitted(self, "sample_indices_")
        if not is_dask_array(X):  # a dask array is checked block by block, lazily
            self._validate_X(X, reset=False)
        return self._take_rows(X)

    def fit_transform(self, X, y=None, *, gradients=None):
        """Fit, then return the selected rows of X.

        Parameters
        ----------
        X : {array-like, sparse matrix, DataFrame, tensor} of shape (n_samples, n_features)
            Features.
        y : array-like of shape (n_samples,), default=None
            Ignored except for its length.
        gradients : array of shape (n_samples, p) or FactoredGradients, default=None
            Per-sample gradient proxies.

        Returns
        -------
        X_subset : same type as X, of shape (n_selected, n_features)
            The selected rows.
        """
        return self.fit(X, y, gradients=gradients).transform(X)


class GraftResampler(_GraftBase):
    __doc__ = (
        """GRAFT selection as an imbalanced-learn resampler (``fit_resample``).

    Same parameters and implementation as :class:`GraftSelector`;
    ``fit_resample(X, y)`` returns the selected rows of X and y, so it can be a step
    of an ``imblearn.pipeline.Pipeline`` before any estimator. It is a separate class
    because imbalanced-learn's Pipeline refuses a step that has both ``transform``
    and ``fit_resample``.
    """
        + _DOC_PARAMETERS
        + _DOC_ATTRIBUTES
        + """
    See Also
    --------
    GraftSelector : The transformer twin.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from graft_select import GraftResampler
    >>> X, y = load_digits(return_X_y=True)
    >>> X_sub, y_sub = GraftResampler(fraction=0.2, random_state=0).fit_resample(X, y)
    >>> X_sub.shape, y_sub.shape
    ((359, 64), (359,))
    """
    )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_resample(self, X, y, *, gradients=None):
        """Select rows and return them with their targets.

        Parameters
        ----------
        X : {array-like, sparse matrix, DataFrame, tensor} of shape (n_samples, n_features)
            Features.
        y : array-like of shape (n_samples,)
            Targets; the same rows are kept.
        gradients : array of shape (n_samples, p) or FactoredGradients, default=None
            Per-sample gradient proxies.

        Returns
        -------
        X_subset : same type as X, of shape (n_selected, n_features)
            The selected rows of X.
        y_subset : same type as y, of shape (n_selected,)
            The matching targets.
        """
        if y is None:
            raise ValueError("'y' is required by GraftResampler.fit_resample; pass targets.")
        self._fit(X, y, gradients)
        return self._take_rows(X), self._take_rows(y, "y")


# ---------------------------------------------------------------------- helpers


def _is_host_like(X):
    if isinstance(X, (np.ndarray, list, tuple)):
        return True
    return type(X).__module__.startswith("pandas")


def _take(X, indices):
    """Rows ``indices`` of X, in X's own type."""
    if hasattr(X, "iloc"):
        return X.iloc[to_numpy(indices)]
    if isinstance(X, (list, tuple)):
        return [X[i] for i in to_numpy(indices)]
    if is_sparse(X) or isinstance(X, np.ndarray):
        return X[to_numpy(indices)]
    # X may come from another library than the fitted data (NumPy fit, torch transform;
    # NumPy X with torch y): the indices follow X to its namespace and device
    xp, device = get_namespace(X)
    return xp.take(X, from_numpy(to_numpy(indices), xp, device), axis=0)
