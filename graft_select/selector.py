"""GraftSelector and GraftResampler: GRAFT row selection as scikit-learn estimators.

The estimators validate their parameters once and run one recipe over one of
three sources of rows: arrays in memory (`_orders.InMemorySource`), a feedback
store read through a `StoredGradients` view (`_feedback.StoreSource`) and dask
blocks (`_dask.DaskSource`)::

    source -> chunks and band (`_selection`) -> orders and errors (the source)
    -> sizes (`_selection`, `_sizing`) -> picks -> subset errors and weights
    (the source) -> fitted attributes (`_GraftBase._set_fitted`, the one writer)
"""

import contextlib
import contextvars
import dataclasses
import numbers
import sys
import time
import warnings
from typing import ClassVar

import array_api_compat
import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils._metadata_requests import RequestMethod
from sklearn.utils._param_validation import Hidden, Interval, StrOptions
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.metadata_routing import UNCHANGED, UNUSED
from sklearn.utils.validation import check_is_fitted, validate_data

from ._backend import (
    device_scope,
    from_numpy,
    get_namespace,
    is_dask_array,
    is_sparse,
    to_numpy,
)
from ._feedback import StoredGradients, StoreSource
from ._hierarchy import InMemoryTree, plan_tree
from ._ops import rescale_extreme
from ._orders import InMemorySource
from ._proxies import FactoredGradients, check_factored
from ._selection import (
    SelectionParams,
    check_band,
    checked_weights,
    chunk_bounds,
    chunk_lengths,
    chunk_weights,
    largest_sizes,
    pick,
    pool_lengths,
    pool_sizes,
    resolve_basis,
    selected_indices,
    subset_sizes,
)
from ._sizing import ERROR_TIE, BudgetWarning, budget, budget_overshoot
from ._validation import (
    check_array,
    check_no_bool_numbers,
    check_not_factor_pair,
    check_random_state,
    check_real_host,
    check_rows,
    n_rows,
)

__all__ = ["BudgetWarning", "GraftResampler", "GraftSelector", "StoredGradients"]

# what the estimators' X and gradients accept, for the messages of check_array
_X_ARRAYS = "an array (NumPy, pandas, scipy.sparse CSR/CSC, torch, CuPy or dask)"
_GRADIENT_ARRAYS = "an array (NumPy, pandas, torch or CuPy; dask when X is a dask array)"

_DOC_PARAMETERS = """
    Parameters
    ----------
    fraction : float, default=0.25
        Share of the rows to keep, in (0, 1]. The total is
        ``round(fraction * n_samples)``, except that every chunk keeps at least
        one row: with many small chunks (``fraction * chunk_size < 1``) this
        raises the total, and a :class:`BudgetWarning` says so when it moves the
        total by more than 10% (``budget_`` and ``subset_sizes_`` say by how
        much). Without
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
    chunk_size : int, default=None
        Size of the selection chunks (consecutive rows). An int selects per chunk
        of ``chunk_size`` rows (the last chunk may be shorter), as GRAFT does per
        training batch. ``None`` selects over all rows at once up to 4096 rows;
        beyond that it runs a merge-and-reduce tree, a global selection at
        linear cost: the rows are cut into ``ceil(n_samples / 4096)``
        consecutive *leaves* of equal size (within one row), each leaf keeps
        ``2 * round(fraction * rows)`` candidates (its first MaxVol pivots; at
        least the largest subset size), the candidates of 8 nodes are pooled
        and reduced again, and the root's pool is selected from as one chunk
        of all the rows. A node keeps at most 512 candidates, so when the
        budget is larger the leaves are split into consecutive *groups*, each
        a tree of its own that holds its share of the budget (the budget is
        shared among the groups as among chunks): one tree holds about
        ``256 / fraction`` rows (256,000 at ``fraction=0.001``). For
        ``fraction > 1/32`` not even two leaves fit one group, and every leaf
        selects on its own, as an int ``chunk_size`` of about 4096 would. The
        uniform strategy and a :class:`StoredGradients` view select per leaf.
        Dask input runs the same tree as a dask reduction (see :doc:`/dask`).
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
        order, like the uniform picks. In a merge-and-reduce tree
        (``chunk_size=None`` beyond 4096 rows) the nodes pass on MaxVol pivots
        only, and the uniform share of a group is drawn from all of the group's
        rows, not from the tree's candidates.
    gradient_tol : float, default=None
        Relative gradient error each chunk should reach (smallest size in the band
        that reaches it). ``None`` sets the total to the budget and levels the
        chunks' errors.
    min_fraction, max_fraction : float, default=None
        The band of per-chunk subset sizes, as shares of the chunk:
        ``fraction / 2`` and ``min(1, 2 * fraction)`` when None. Only a fit with
        gradients uses it (without them every chunk keeps ``fraction`` of its
        rows), but every fit checks it: a band that does not contain
        ``fraction`` raises a ValueError with or without gradients.
    max_error_ratio : float, "auto" or None, default="auto"
        With gradients, a check of MaxVol's picks against a uniform draw. Each
        chunk's subset is compared with a seeded uniform subset of the same size
        by the gradient error (the relative error of the chunk's mean gradient by
        the subset's least-squares combination, as ``gradient_error_``); a
        chunk keeps MaxVol's picks only where their error is at most
        ``max_error_ratio`` times the uniform subset's, and the uniform subset
        otherwise (``maxvol_chunks_`` says which). MaxVol on gradient proxies
        picks the rows with the largest residuals, the rows the model gets
        wrong: when the chunk's gradient is carried by a few such rows, the
        subset holds them and matches the gradient far better than a uniform one
        (ratio 0.01-0.11 on a clean 10-class task at fractions 0.2 and 0.4, where
        training on the subset beat training on a uniform one by 2-3 points);
        when they are too many for the budget, the subset is only a biased
        sample of hard rows, its error is close to a uniform subset's (ratio
        0.36-1.4 on the data of the dask example, a 4-class MLP task, 20% wrong
        labels, and the clean task at fraction 0.05), and a model trained on it
        from scratch was 23-63 points worse than on a uniform subset
        (benchmarks/RESULTS.md, issue 22). Errors up to 1e-3 count as 0 (both
        subsets match the gradient: MaxVol's stay). ``"auto"`` is 0.25 for
        gradients given as an array, a :class:`~graft_select.FactoredGradients`
        or dask arrays (a selection used once), and None for a
        :class:`StoredGradients` view passed by hand;
        :class:`~graft_select.sampler.GraftBatchSampler`'s refits use 0.5
        (they reselect every few epochs from a model that keeps learning).
        None keeps MaxVol's picks everywhere. Without gradients, or with
        ``strategy="uniform"``, it does nothing.
    svd_method : {"auto", "exact", "randomized"}, default="auto"
        Method of :func:`~graft_select.low_rank_features`. With the gradients as
        the basis it factors each chunk's Gram matrix: ``"exact"`` takes its
        eigenvectors, ``"randomized"`` the range finder with oversampling and
        power iterations. A :class:`StoredGradients` fit ignores it: a view's
        factor is always one range-finder step on the chunk's Gram matrix (one
        product with a Gaussian matrix and a QR), so a view selects other rows
        than the same proxies given as a
        :class:`~graft_select.FactoredGradients`, and its ``gradient_error_``
        can be larger (see :class:`StoredGradients`).
    random_state : int, RandomState instance or None, default=None
        Seeds the randomized SVD, the uniform picks and the uniform strategy.
    batch_size : int or None
        Deprecated alias of ``chunk_size`` (renamed in 0.2, removed in 0.4):
        setting it warns with a FutureWarning; setting both raises.
"""

_DOC_ATTRIBUTES = """
    Attributes
    ----------
    sample_indices_ : integer array of shape (n_selected,)
        Selected rows, chunk by chunk, each chunk in MaxVol pivot order (uniform
        picks last; a chunk that kept a uniform subset, see ``maxvol_chunks_``,
        in increasing order, or in the order drawn for a :class:`StoredGradients`
        view), in the input's namespace and on its device (NumPy for NumPy,
        sparse, pandas and dask input).
    sample_weight_ : float array of shape (n_selected,) or None
        One weight per selected row. Without gradients, ``chunk_size / k`` for
        each of a chunk's ``k`` rows (the chunk samples a row stands for; they
        sum to the chunk's size). With gradients, the least-squares
        coefficients ``w`` that make ``sum_j w[j] * g[j]`` over the chunk's
        selected rows closest to the sum of the chunk's gradients (the
        coefficients of its mean gradient times the chunk size):
        gradient-matching coefficients, not importance weights. They do not
        sum to the chunk size, single weights can be negative, and on
        degenerate gradients (zero, cancelling or linearly dependent rows) a
        chunk's total can be negative too, which a warning reports. A chunk
        whose coefficients are all 0 (mean gradient zero) gets ``chunk_size /
        k`` instead, with a warning. Use them as per-sample loss weights of the
        subset, e.g. ``model.fit(X[idx], y[idx], sample_weight=w)`` or ``loss
        = (w * losses).sum() / n_samples`` in torch, for idx =
        ``sample_indices_`` and w = ``sample_weight_``: the weighted gradient
        then matches the full data's at the parameters where the gradients
        were taken, to within ``gradient_error_``. This holds at
        ``fraction=1.0`` too: every row is kept, but the weights are still
        least-squares coefficients, not 1s (the minimum-norm ones when a
        chunk has more rows than its gradients have independent directions,
        the usual case), and some can be negative; weighted training on them
        is not plain training on all the rows. None after ``fit(...,
        compute_weights=False)``. In a merge-and-reduce fit (``chunk_size=None``
        beyond 4096 rows) a "chunk" is a group of the tree, usually all the
        rows: the weights are those of the group's mean gradient over all its
        rows, times the group's rows.
    gradient_error_ : ndarray of shape (n_chunks,) or None
        Relative error of each chunk's mean gradient when approximated with the
        selected rows and ``sample_weight_``; None when fit without gradients.
        In a merge-and-reduce fit, the error of each group's mean gradient over
        all its rows (with one group: the whole data's mean gradient) by the
        group's selected rows, although only the candidates reached the top.
    basis_ : {"input", "gradients"}
        The basis the fit used (``basis`` with ``"auto"`` resolved).
    maxvol_chunks_ : bool ndarray of shape (n_chunks,)
        True where the chunk kept MaxVol's picks, False where it kept a uniform
        subset: every chunk for ``strategy="uniform"``, and with gradients the
        chunks whose MaxVol picks did not pass the ``max_error_ratio`` check.
    chunk_sizes_ : ndarray of shape (n_chunks,)
        Rows per chunk; in a merge-and-reduce fit, rows per group of the tree
        (``[n_samples]`` when one tree holds the budget).
    subset_sizes_ : ndarray of shape (n_chunks,)
        Selected rows per chunk (per group of a merge-and-reduce fit; with
        gradients, the size criterion chooses them from the errors of the
        group's mean gradient by the prefixes of the root's order).
    budget_ : int
        The rows ``fraction`` asks for, ``max(1, round(fraction * n_samples_fit_))``;
        ``subset_sizes_.sum()`` exceeds it only by the at-least-one-row-per-chunk
        rule (a :class:`BudgetWarning` past 10%) or within ``gradient_tol``'s 5%.
    n_features_in_ : int
        Number of features seen during fit. Not set by a :class:`StoredGradients`
        fit, which sees no X: ``transform`` then takes any data with
        ``n_samples_fit_`` rows.
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
        "chunk_size": [Interval(numbers.Integral, 2, None, closed="left"), None],
        "strategy": [StrOptions({"graft", "uniform"})],
        "basis": [StrOptions({"auto", "input", "gradients"})],
        "method": [StrOptions({"volume", "lu"})],
        "refine": ["boolean"],
        "uniform_share": [Interval(numbers.Real, 0.0, 1.0, closed="left")],
        "gradient_tol": [Interval(numbers.Real, 0.0, None, closed="left"), None],
        "min_fraction": [Interval(numbers.Real, 0.0, 1.0, closed="right"), None],
        "max_fraction": [Interval(numbers.Real, 0.0, 1.0, closed="right"), None],
        "max_error_ratio": [Interval(numbers.Real, 0.0, None, closed="neither"),
                            StrOptions({"auto"}), None],
        "svd_method": [StrOptions({"auto", "exact", "randomized"})],
        "random_state": ["random_state"],
        "batch_size": [Interval(numbers.Integral, 2, None, closed="left"),
                       Hidden(StrOptions({"deprecated"})), None],
    }

    def __init__(
        self,
        fraction=0.25,
        *,
        n_components=None,
        chunk_size=None,
        strategy="graft",
        basis="auto",
        method="volume",
        refine=False,
        uniform_share=0.0,
        gradient_tol=None,
        min_fraction=None,
        max_fraction=None,
        max_error_ratio="auto",
        svd_method="auto",
        random_state=None,
        batch_size="deprecated",
    ):
        self.fraction = fraction
        self.n_components = n_components
        self.chunk_size = chunk_size
        self.strategy = strategy
        self.basis = basis
        self.method = method
        self.refine = refine
        self.uniform_share = uniform_share
        self.gradient_tol = gradient_tol
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction
        self.max_error_ratio = max_error_ratio
        self.svd_method = svd_method
        self.random_state = random_state
        self.batch_size = batch_size

    # ------------------------------------------------------------------ fitting

    # numeric parameters that scikit-learn's interval constraints would take True for
    _NUMBERS: ClassVar[dict] = {
        "fraction": "a float in the range (0.0, 1.0]",
        "n_components": "an int in the range [1, inf) or None",
        "chunk_size": "an int in the range [2, inf) or None",
        "batch_size": "an int in the range [2, inf) or None",
        "uniform_share": "a float in the range [0.0, 1.0)",
        "gradient_tol": "a float in the range [0.0, inf) or None",
        "min_fraction": "a float in the range (0.0, 1.0] or None",
        "max_fraction": "a float in the range (0.0, 1.0] or None",
        "max_error_ratio": 'a float in the range (0.0, inf), "auto" or None',
        "random_state": "an int, a numpy random generator or None",
    }

    def _fit(self, X, y=None, gradients=None, compute_weights=True, then=None):
        """Fit atomically: a failing fit leaves the estimator's state as it was.

        Every door (``fit``, ``fit_transform``, ``fit_resample``) comes here, so
        each reads the pool of an enclosing `selecting_pool` here. ``then``, a
        function of no arguments, runs after the fit (taking the selected rows)
        and its result is returned; the state comes back if it fails too.
        """
        saved = dict(self.__dict__)
        try:
            # CuPy creates arrays on the current device, whatever device= says
            scope = gradients.residuals if X is None and isinstance(
                gradients, StoredGradients) else X
            with device_scope(scope):
                self._fit_steps(X, y, gradients, compute_weights, _POOL.get())
            return self if then is None else then()
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def _fit_steps(self, X, y, gradients, compute_weights, pool=None):
        """The recipe, the same for every source of rows (see the module's docstring)."""
        start = time.perf_counter()
        owner = type(self).__name__
        check_no_bool_numbers(self.get_params(deep=False), self._NUMBERS, owner)
        chunk_size = self._chunk_size()
        source = self._source(X, gradients, chunk_size)
        check_rows(source.n_samples, y, owner)
        params, rng = self._selection_params(source.with_gradients)
        plan = None  # chunk_size=None: merge-and-reduce, unless every leaf selects alone
        if chunk_size is None and hasattr(source, "tree_orders"):
            plan = plan_tree(params, source.n_samples, source.n_features,
                             source.with_gradients, rng)
        chunks = chunk_bounds(source.n_samples, chunk_size) if plan is None else plan.chunks
        chunk_sizes = chunk_lengths(chunks)
        k_hi = largest_sizes(params, chunk_sizes, source.with_gradients)
        if pool is not None:  # orders long enough for the pool
            if plan is not None:
                raise ValueError(f"{owner}: a pool needs chunks (chunk_size), not a tree.")
            k_hi = pool_lengths(k_hi, chunk_sizes, pool)
        if plan is None:
            orders, errors = source.orders(params, chunks, k_hi, rng)
        else:
            orders, errors = source.tree_orders(params, plan, rng)
        sizes = subset_sizes(params, chunk_sizes, errors, source.with_gradients)
        message = budget_overshoot(sizes, params.fraction, chunk_sizes, owner)
        if message:
            warnings.warn(message, BudgetWarning, stacklevel=_caller_level())
        if pool is not None:  # the subset's factors and orders, the pool's sizes
            sizes = pool_sizes(errors if source.with_gradients else [], sizes, k_hi,
                               chunk_sizes, pool)
        local = pick(params, chunk_sizes, orders, sizes, rng)
        gradient_error, weights = None, chunk_weights(chunk_sizes, local)
        maxvol = np.full(len(chunks), params.strategy == "graft")
        if source.with_gradients:
            ratio = _error_ratio(self.max_error_ratio, gradients, params.strategy)
            if ratio is None:
                gradient_error, weights = source.picked_errors(chunks, local,
                                                               compute_weights)
            else:
                local, gradient_error, weights, maxvol = _maxvol_or_uniform(
                    source, params, chunks, (local, sizes), rng, ratio, compute_weights)
            if compute_weights:
                weights, messages = checked_weights(weights, chunk_sizes, local, owner)
                for message in messages:
                    warnings.warn(message, UserWarning, stacklevel=_caller_level())
        self._set_fitted(source, params, chunks, chunk_sizes, sizes, local,
                         weights if compute_weights else None, gradient_error)
        self.maxvol_chunks_ = maxvol
        self.fit_time_ = time.perf_counter() - start
        return self

    def _set_fitted(self, source, params, chunks, chunk_sizes, sizes, local, weights,
                    gradient_error):
        """The one writer of the fitted attributes."""
        self.chunk_sizes_ = chunk_sizes
        self.subset_sizes_ = sizes
        self.basis_ = params.basis
        self.budget_ = budget(params.fraction, source.n_samples)
        self.sample_indices_ = source.output(selected_indices(chunks, local))
        self.sample_weight_ = None if weights is None else source.output(weights)
        self.gradient_error_ = gradient_error
        if isinstance(source, StoreSource):  # no X: transform takes any row-aligned data
            self.__dict__.pop("n_features_in_", None)
        else:
            self.n_features_in_ = source.n_features
        self.n_samples_fit_ = source.n_samples

    def _source(self, X, gradients, chunk_size):
        """The checked source of the rows: in memory, a StoredGradients view, or dask."""
        owner = type(self).__name__
        if isinstance(gradients, StoredGradients):
            _check_stored_params(X, self.strategy, self.basis, owner)
            self._forget_feature_names()
            # with the check, pass 1 also reads uniform subsets' errors (no pass 2)
            checked = _error_ratio(self.max_error_ratio, gradients, self.strategy)
            return StoreSource(gradients, owner, uniform_orders=checked is not None)
        if X is None:
            raise TypeError(
                f"{owner}.fit needs X (the rows to select from), got None; None is only "
                f"accepted with gradients=StoredGradients(...)."
            )
        gradients = _from_pandas(gradients, owner)
        if is_dask_array(X):
            from ._dask import DaskSource  # dask is imported only for dask input

            self._forget_feature_names()
            return DaskSource(X, gradients, chunk_size, owner)
        _check_not_dask(gradients, X, owner)
        X, xp = self._validate_X(X, reset=True)
        memory = InMemorySource if chunk_size is not None else InMemoryTree
        return memory(X, xp, self._validate_gradients(gradients, X.shape[0]))

    def _forget_feature_names(self):
        """Drop the column names of an earlier fit (this input has none)."""
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _chunk_size(self):
        """``chunk_size``, or the deprecated ``batch_size`` with a FutureWarning."""
        if isinstance(self.batch_size, str) and self.batch_size == "deprecated":
            return self.chunk_size
        owner = type(self).__name__
        if self.chunk_size is not None:
            raise ValueError(
                f"{owner} got chunk_size={self.chunk_size} and batch_size={self.batch_size}: "
                f"'batch_size' was renamed to 'chunk_size'; set chunk_size only."
            )
        warnings.warn(
            f"The 'batch_size' parameter of {owner} was renamed to 'chunk_size' in 0.2 and "
            f"will be removed in 0.4; use chunk_size={self.batch_size} instead.",
            FutureWarning, stacklevel=6)
        return self.batch_size

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

    def _validate_X(self, X, reset):
        """Check X and return (X ready for the kernels, namespace)."""
        if is_sparse(X) or _is_host_like(X):
            check_real_host(X, "X", type(self).__name__)  # names X in the complex error
            checked = validate_data(
                self, X, reset=reset, accept_sparse=("csr", "csc"),
                dtype=(np.float64, np.float32), ensure_all_finite=False,
                ensure_min_samples=1)
            checked, xp = check_array(checked, "X", type(self).__name__, max_ndim=2,
                                      allow_sparse=True)
            return checked, xp
        checked, xp = check_array(X, "X", type(self).__name__, max_ndim=2,
                                  accepted=_X_ARRAYS)
        if reset:
            self._forget_feature_names()  # a tensor has no column names
            self.n_features_in_ = int(checked.shape[1])
        elif hasattr(self, "n_features_in_") and checked.shape[1] != self.n_features_in_:
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
            R, H, xp, _ = check_factored(gradients, owner, name="gradients",
                                         accepted=_GRADIENT_ARRAYS)
            if R.ndim != 2:
                raise ValueError(
                    f"'gradients' of {owner} must be a FactoredGradients of 2-D factors "
                    f"(n_samples, C) and (n_samples, d + 1), got residuals of shape "
                    f"{tuple(R.shape)}; pass the factors of one matrix, not a stack."
                )
            rows = R.shape[0]
            gradients = FactoredGradients(rescale_extreme(R, xp)[0], rescale_extreme(H, xp)[0])
        else:
            check_not_factor_pair(gradients, "gradients", owner, max_ndim=2)
            if _is_host_like(gradients):
                check_real_host(gradients, "gradients", owner)
            accepted = f"{_GRADIENT_ARRAYS}, a FactoredGradients or a StoredGradients"
            gradients, xp = check_array(gradients, "gradients", owner, max_ndim=2,
                                        accepted=accepted)
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


class GraftSelector(OneToOneFeatureMixin, TransformerMixin, _GraftBase):
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
    ``O(n_samples * r * k_max)`` for the greedy pivots; a merge-and-reduce fit
    (``chunk_size=None``) costs one decomposition per leaf and per merge, and
    ``O(n_samples * k^2)`` for the candidates' rectangular pivots (``k <= 512``
    candidates per node), so it stays linear in ``n_samples``.

    References
    ----------
    A. Jha, A. H. Phan, R. Dibo, V. Leplat, "GRAFT: Gradient-Aware Fast MaxVol
    Technique for Dynamic Data Sampling", arXiv:2508.13653, 2025.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from graft_select import GraftSelector
    >>> X, y = load_digits(return_X_y=True)
    >>> selector = GraftSelector(fraction=0.1, chunk_size=256, random_state=0).fit(X)
    >>> selector.transform(X).shape
    (180, 64)
    >>> selector.chunk_sizes_.tolist()
    [256, 256, 256, 256, 256, 256, 256, 5]
    """
    )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, gradients=None, compute_weights=True):
        """Select the rows of X.

        Parameters
        ----------
        X : {array-like, sparse matrix, DataFrame, tensor} of shape (n_samples, n_features)
            Features, one row per sample: NumPy, scipy.sparse CSR/CSC, pandas,
            torch or CuPy (device arrays stay on their device), or a dask array
            chunked along its rows (selected block by block on the workers, or
            with ``chunk_size=None`` as a tree reduction, see :doc:`/dask`). None with
            ``gradients=StoredGradients(...)``: the rows are the view's.
        y : array-like of shape (n_samples,), default=None
            Ignored except for its length, which must match X.
        gradients : array of shape (n_samples, p), FactoredGradients or \
StoredGradients, default=None
            Per-sample gradient proxies (see
            :func:`~graft_select.last_layer_gradients`). They choose the subset
            size per chunk and give ``sample_weight_`` and ``gradient_error_``.
            An array (and each factor of a
            :class:`~graft_select.FactoredGradients`) is NumPy, torch, CuPy, a
            pandas DataFrame (read by position, as NumPy), or a dask array when
            X is one (compute it first for X in memory). A
            :class:`StoredGradients` view of a table (a sampler's feedback
            store) is read one group of chunks at a time, never copied; it
            needs ``X=None``, ``strategy="graft"`` and a basis other than
            ``"input"``.
        compute_weights : bool, default=True
            False leaves ``sample_weight_`` None. With a :class:`StoredGradients`
            view and ``uniform_share=0`` that also skips the second pass over the
            table: the subsets' errors are read from the size criterion's, and
            with the ``max_error_ratio`` check each chunk's uniform subset is the
            head of a random order of its rows whose errors the first pass
            computes alongside.

        Returns
        -------
        self : GraftSelector
            The fitted selector.

        Warns
        -----
        BudgetWarning
            When the at-least-one-row-per-chunk rule keeps over 10% more rows than
            the budget.
        UserWarning
            With gradients and weights: when a chunk's least-squares weights are all
            0 (they are replaced by ``chunk_size / k``) or sum to a negative number
            (see ``sample_weight_``).
        """
        return self._fit(X, y, gradients, compute_weights)

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
            With ``set_output(transform="pandas")`` (or scikit-learn's
            ``transform_output`` config) a DataFrame: its index is X's for a
            DataFrame, the selected row numbers ``sample_indices_`` for a NumPy
            array or a list.

        Raises
        ------
        ValueError
            If a DataFrame output is asked for a torch, CuPy or dask X: it would
            move the data off its device or compute it; keep the default output
            for such X.
        """
        check_is_fitted(self, "sample_indices_")
        container = _output_container(self)
        if container != "default" and not (_is_host_like(X) or is_sparse(X)):
            raise ValueError(
                f"{type(self).__name__} is set to output {container} DataFrames "
                f"(set_output(transform={container!r}) or scikit-learn's transform_output "
                f"config), but X is a {type(X).__module__}.{type(X).__name__}: converting "
                f"it would move the rows off their device (or compute a dask array). Pass "
                f"NumPy or pandas input, or call set_output(transform='default') to keep "
                f"X's type.")
        if not is_dask_array(X):  # a dask array is checked block by block, lazily
            self._validate_X(X, reset=False)
        subset = self._take_rows(X)
        if container == "pandas" and isinstance(X, (np.ndarray, list, tuple)):
            import pandas as pd  # set_output(transform="pandas") needs pandas

            # the selected rows keep their row numbers (scikit-learn's wrapper would
            # number them 0..k-1), and the wrapper names the columns
            subset = pd.DataFrame(subset, index=to_numpy(self.sample_indices_))
        return subset

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None, *, gradients=None):
        """Fit, then return the selected rows of X.

        As ``fit(X, y, gradients=gradients).transform(X)``, except that when
        ``transform`` fails (for example a DataFrame output asked for a tensor)
        the estimator stays as it was before the call.

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

        Warns
        -----
        UserWarning
            When ``y`` is given and rows are dropped: a transformer cannot return
            ``y``'s selected rows, so a step after it in a Pipeline would get all of
            ``y``. Use :class:`GraftResampler` in an ``imblearn.pipeline.Pipeline``
            instead, or ``y[selector.sample_indices_]``.
        """
        _check_rows_to_return(gradients, type(self).__name__, "fit_transform")
        X_subset = self._fit(X, y, gradients, then=lambda: self.transform(X))
        k = int(self.sample_indices_.shape[0])
        if y is not None and k < self.n_samples_fit_:
            warnings.warn(
                f"{type(self).__name__}.fit_transform(X, y) returns {k} of the "
                f"{self.n_samples_fit_} rows of X but cannot return y's: a step after it "
                f"in a scikit-learn Pipeline gets {k} rows of X and {self.n_samples_fit_} "
                f"targets and fails ('inconsistent numbers of samples'). In a pipeline, "
                f"select with GraftResampler as a step of an imblearn.pipeline.Pipeline "
                f"(fit_resample keeps the same rows of X and y); on its own, take the "
                f"targets as y[selector.sample_indices_].",
                UserWarning, stacklevel=_caller_level())
        return X_subset


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

    # Metadata routing (imbalanced-learn's Pipeline routes a sampler's fit_resample and
    # fit, and calls fit_resample only): gradients go to fit_resample by default, and
    # fit's parameters are not routed (an unset request would make every routed fit raise)
    __metadata_request__fit: ClassVar[dict] = {"gradients": UNUSED, "compute_weights": UNUSED}
    __metadata_request__fit_resample: ClassVar[dict] = {"gradients": True}

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, gradients=None, compute_weights=True):
        """Select the rows of X, as :meth:`GraftSelector.fit` does.

        ``fit_resample`` fits and returns the selected rows; ``fit`` fits only
        (imbalanced-learn's samplers have both), which also serves a
        :class:`StoredGradients` view (``X=None``), whose rows
        ``fit_resample`` cannot return.

        Parameters
        ----------
        X : {array-like, sparse matrix, DataFrame, tensor} of shape (n_samples, n_features)
            Features, or None with ``gradients=StoredGradients(...)``.
        y : array-like of shape (n_samples,), default=None
            Ignored except for its length, which must match X.
        gradients : array of shape (n_samples, p), FactoredGradients or \
StoredGradients, default=None
            Per-sample gradient proxies (see :meth:`GraftSelector.fit`).
        compute_weights : bool, default=True
            False leaves ``sample_weight_`` None (see :meth:`GraftSelector.fit`).

        Returns
        -------
        self : GraftResampler
            The fitted resampler.
        """
        return self._fit(X, y, gradients, compute_weights)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_resample(self, X, y, *, gradients=None):
        """Select rows and return them with their targets.

        Atomic: when the rows cannot be taken from X or y, the estimator stays
        as it was before the call.

        In an ``imblearn.pipeline.Pipeline``, ``gradients`` reach this method
        only under scikit-learn's metadata routing: without it imbalanced-learn
        passes a step's parameters (``graftresampler__gradients=G``) to the
        step's ``fit``, which its Pipeline does not call for a sampler, so they
        are dropped without a word. Under routing ``fit_resample`` requests
        ``gradients`` by default::

            sklearn.set_config(enable_metadata_routing=True)
            pipe = make_pipeline(GraftResampler(0.3), LogisticRegression())
            pipe.fit(X, y, gradients=G)

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
        _check_rows_to_return(gradients, type(self).__name__, "fit_resample")
        return self._fit(X, y, gradients,
                         then=lambda: (self._take_rows(X), self._take_rows(y, "y")))

    def set_fit_resample_request(self, *, gradients=UNCHANGED):
        """Request ``gradients`` for ``fit_resample`` under metadata routing.

        scikit-learn's ``set_{method}_request``, for the method imbalanced-learn
        adds (its Pipeline routes ``fit_resample``'s metadata this way). Defined
        here whether or not imbalanced-learn was imported before graft_select
        (scikit-learn generates these methods for the methods it knows when a
        class is created). Needs ``sklearn.set_config(enable_metadata_routing=True)``
        and imbalanced-learn.

        Parameters
        ----------
        gradients : bool, None or str, default=sklearn.utils.metadata_routing.UNCHANGED
            True: ``gradients`` passed to a router (a Pipeline's ``fit``) reach
            ``fit_resample``; False: they do not; None: passing them raises; a
            string: the name under which the router gets them.

        Returns
        -------
        self : GraftResampler
        """
        try:
            import imblearn.base  # noqa: F401  adds fit_resample to the routed methods
        except ImportError as exc:
            raise ImportError(
                "GraftResampler.set_fit_resample_request routes metadata through "
                "imbalanced-learn's Pipeline; install imbalanced-learn "
                "(pip install imbalanced-learn).") from exc
        request = RequestMethod("fit_resample", ["gradients"])
        return request.__get__(self, type(self))(gradients=gradients)


# ---------------------------------------------------------------------- helpers


# Modules whose frames a warning skips to reach the user's line: the package and
# scikit-learn's method wrappers (_fit_context, set_output's fit_transform).
_INTERNAL_MODULES = ("graft_select.", "sklearn.base", "sklearn.utils._set_output",
                     "sklearn.pipeline", "imblearn.")


_POOL = contextvars.ContextVar("graft_select_pool", default=None)


@contextlib.contextmanager
def selecting_pool(pool):
    """Within the block, a fit of GraftSelector or GraftResampler in this thread
    selects ``pool`` rows (None: its ``fraction``) with the factors and orders of
    its ``fraction``.

    A sampler's refit selects the pool that its epochs' ``fraction`` is drawn from
    this way: the orders of a selection of ``fraction`` already reach twice it
    (``max_fraction``), so a pool of up to that costs what the selection of
    ``fraction`` does, where a fit at the pool's own fraction would compute a
    factor of twice the rank and orders of up to the whole chunk. The pool's
    sizes (by error levelling within the orders' lengths) and its MaxVol-or-uniform
    check are its own; ``sample_indices_`` and ``subset_sizes_`` are the pool's,
    ``budget_`` stays the budget of ``fraction``, and a pool smaller than the
    selection of ``fraction`` gives that selection. A context variable, not a
    ``fit`` parameter: every template's own ``fit`` runs, and a background
    refit's thread sees only its own.
    """
    token = _POOL.set(pool)
    try:
        yield
    finally:
        _POOL.reset(token)


def _caller_level():
    """The ``stacklevel`` that makes a warning issued by the caller of this function
    point at the first frame outside graft_select and scikit-learn's wrappers.

    Whatever the door (``fit``, ``fit_transform``, ``fit_resample``, the sampler),
    the warning then names the user's line, which is also what Python's default
    filter shows once per location.
    """
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
            _INTERNAL_MODULES):
        frame, level = frame.f_back, level + 1
    return level


#: ``max_error_ratio="auto"`` for gradients used once (arrays, factored, dask).
_STATIC_ERROR_RATIO = 0.25


def _error_ratio(max_error_ratio, gradients, strategy):
    """The ``max_error_ratio`` of this fit: None (no check) or a float."""
    if strategy != "graft":
        return None
    if isinstance(max_error_ratio, str):  # "auto"
        return None if isinstance(gradients, StoredGradients) else _STATIC_ERROR_RATIO
    return max_error_ratio


def _maxvol_or_uniform(source, params, chunks, picked, rng, ratio, compute_weights):
    """Per chunk MaxVol's picks or a uniform subset of the same size, by gradient error.

    ``picked`` is ``(local, sizes)``: MaxVol's chunk-local picks and the subset
    sizes. The uniform subsets are the prefixes of the source's uniform orders
    where it drew them in its first pass (a feedback store: the two subsets'
    errors are then compared by `StoreSource.check_errors`, the same with or
    without weights, and the kept subsets' weights take one second pass), else
    drawn from ``rng`` after the picks; either way the chunks that keep MaxVol's
    picks are those of a fit without the check.
    Returns the kept ``local``, their errors, their weights (None unless
    ``compute_weights``) and the bool mask of the chunks that kept MaxVol's picks.
    """
    local, sizes = picked
    heads = source.uniform_orders
    if heads is None:
        uniform = pick(params, chunk_lengths(chunks), [None] * len(chunks), sizes, rng)
        errors, weights = source.picked_errors(chunks, local, compute_weights)
        errors_u, weights_u = source.picked_errors(chunks, uniform, compute_weights)
    else:
        uniform = [np.asarray(head[:int(k)], dtype=np.int64) for head, k in zip(heads, sizes)]
        errors, errors_u = source.check_errors(chunks, local, uniform)
    errors, errors_u = np.asarray(errors), np.asarray(errors_u)
    # errors at the rounding level of float32 are ties (both subsets match the mean
    # gradient): MaxVol's picks stay, whatever the rounding of the proxies' form
    floor = lambda e: np.where(e <= ERROR_TIE, 0.0, e)  # noqa: E731
    # a uniform draw of the very rows MaxVol picked is no alternative: keep the pivot order
    same = np.array([np.array_equal(np.sort(lo), np.sort(un)) for lo, un in zip(local, uniform)],
                    dtype=bool)
    maxvol = same | (floor(errors) <= ratio * floor(errors_u))
    kept = [lo if keep else un for lo, un, keep in zip(local, uniform, maxvol)]
    errors = np.where(maxvol, errors, errors_u)
    if not compute_weights:
        return kept, errors, None, maxvol
    if heads is not None:  # the kept subsets' weights (and their errors), one pass
        errors, weights = source.picked_errors(chunks, kept, True)
        return kept, np.asarray(errors), weights, maxvol
    bounds = np.cumsum([0] + [len(lo) for lo in local])
    parts = [(weights if keep else weights_u)[bounds[c]:bounds[c + 1]]
             for c, keep in enumerate(maxvol)]
    weights = np.concatenate(parts) if parts else np.asarray(weights)
    return kept, errors, weights, maxvol


def _output_container(estimator):
    """What ``transform`` is asked to return: ``"default"``, ``"pandas"`` or ``"polars"``,
    from ``set_output`` or else scikit-learn's ``transform_output`` config (read as
    scikit-learn's own output wrapper reads it)."""
    return _get_output_config("transform", estimator)["dense"]


def _check_rows_to_return(gradients, owner, method):
    """Raise before fitting where ``method`` could not return rows: a StoredGradients fit
    has no X."""
    if isinstance(gradients, StoredGradients):
        raise ValueError(
            f"{owner}.{method} returns the selected rows of X, and a StoredGradients "
            f"view has no X. Call fit(None, gradients=view), then take the rows of "
            f"your data with sample_indices_ (or transform(data), for GraftSelector).")


def _is_host_like(X):
    """NumPy, lists, pandas, and other objects NumPy converts (``__array__``) that are
    not arrays of a library with its own namespace (torch, CuPy, dask, ...)."""
    if isinstance(X, (np.ndarray, list, tuple)) or type(X).__module__.startswith("pandas"):
        return True
    if not hasattr(X, "__array__"):
        return False
    try:
        array_api_compat.array_namespace(X)
    except TypeError:
        return True
    return False


def _from_pandas(gradients, owner):
    """Gradients given as a pandas DataFrame or Series (or factors given so), as NumPy.

    By position, as X's rows are read: the index and column labels are ignored.
    """
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(
            _frame_values(gradients.residuals, "gradients.residuals", owner),
            _frame_values(gradients.inputs, "gradients.inputs", owner))
    return _frame_values(gradients, "gradients", owner)


def _frame_values(values, name, owner):
    """The values of a pandas DataFrame or Series as a float NumPy array; others as they are."""
    if not (type(values).__module__.startswith("pandas") and hasattr(values, "to_numpy")):
        return values
    check_real_host(values, name, owner)  # names text, date and complex columns
    dtypes = list(values.dtypes) if hasattr(values, "columns") else [values.dtype]
    dtype = np.float32 if all(d == np.float32 for d in dtypes) else np.float64
    # C order, as NumPy gradients usually are: the same fit to the last bit
    return np.ascontiguousarray(values.to_numpy(dtype=dtype, na_value=np.nan))


def _check_not_dask(gradients, X, owner):
    """A TypeError if gradients (or a factor of them) are a dask array and X is not."""
    parts = ((("gradients.residuals", gradients.residuals),
              ("gradients.inputs", gradients.inputs))
             if isinstance(gradients, FactoredGradients) else (("gradients", gradients),))
    for name, part in parts:
        if is_dask_array(part):
            raise TypeError(
                f"'{name}' of {owner} is a dask array but X is not (got "
                f"{type(X).__name__}); a fit runs on dask only when X is a dask array. "
                f"Compute the gradients first ({name}.compute()), or pass X as a dask "
                f"array too, in row blocks like the gradients' "
                f"(dask.array.from_array(X, chunks=({name}.chunks[0], -1)) for NumPy X)."
            )


def _check_stored_params(X, strategy, basis, owner):
    """Raise a named error unless a StoredGradients fit can run with these settings."""
    if X is not None:
        raise ValueError(
            f"{owner}.fit selects on a StoredGradients view alone: pass X=None (got "
            f"{type(X).__name__}). To select on the rows of X, pass the gradients as an "
            f"array or a FactoredGradients."
        )
    if strategy != "graft" or basis == "input":
        raise ValueError(
            f"A StoredGradients view holds gradients only, so {owner} needs "
            f"strategy='graft' and basis 'auto' or 'gradients' with it; got "
            f"strategy={strategy!r} and basis={basis!r}. Pass X and the gradients as "
            f"arrays instead."
        )


def _take(X, indices):
    """Rows ``indices`` of X, in X's own type."""
    if hasattr(X, "iloc"):
        return X.iloc[to_numpy(indices)]
    if isinstance(X, (list, tuple)):
        return [X[i] for i in to_numpy(indices)]
    if not (is_sparse(X) or isinstance(X, np.ndarray)) and _is_host_like(X):
        return np.asarray(X)[to_numpy(indices)]  # an object NumPy converts (__array__)
    if is_sparse(X) and X.format not in ("csr", "csc", "lil"):
        # COO, DIA, BSR and DOK rows cannot be taken as such: through CSR, in X's format
        return X.tocsr()[to_numpy(indices)].asformat(X.format)
    if is_sparse(X) or isinstance(X, np.ndarray):
        return X[to_numpy(indices)]
    # X may come from another library than the fitted data (NumPy fit, torch transform;
    # NumPy X with torch y): the indices follow X to its namespace and device
    xp, device = get_namespace(X)
    return xp.take(X, from_numpy(to_numpy(indices), xp, device), axis=0)
