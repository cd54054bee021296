"""Where a refit's selection inputs come from: the three kinds of ``features``.

GraftBatchSampler's ``features`` parameter is None, a callable or an array; the
sampler turns it into one of the classes below when it is built. At a refit the
epoch planner asks its source two things: bring the feedback up to date
(:meth:`refresh`), then the selection inputs of the candidates (:meth:`inputs`).

This module imports torch; only the sampler's parts import it.
"""

import time

import numpy as np
import torch

from ._backend import is_sparse
from ._validation import check_dense_tensor, check_real_host, complex_data_error
from .gradients import FactoredGradients

__all__ = ["CallableFeatures", "FixedFeatures", "ObservedFeedback", "feature_source"]


class ObservedFeedback:
    """``features=None``: the embeddings and gradient proxies :meth:`observe` recorded.

    Recorded values go stale for samples that are not selected, so the planner
    gives a share of each refit's budget to the least recently observed samples.
    """

    refreshes_stale = True
    background_capable = True  # the selection reads the store's tables only

    def __init__(self, recorder):
        self.recorder = recorder

    def refresh(self, candidates, epoch, num_replicas):
        """Merge the ranks' feedback; return (feature seconds, bytes sent)."""
        return 0.0, self.recorder.merge_ranks(num_replicas)

    def inputs(self, candidates, selector, store):
        """``(X, gradients)`` of ``candidates`` for the selector, in candidate order.

        ``store`` maps the feedback names to the store's tables (as at the
        refit's snapshot). When ``selector`` selects on the stored last-layer
        gradients (the default), returns ``(None, (residuals, embeddings))``: the
        store's own tensors, which the selector reads chunk group by chunk group,
        so the store is never copied.
        """
        if "residuals" in store and selector.strategy == "graft" and selector.basis != "input":
            return None, (store["residuals"], store.get("embeddings"))
        return stored_inputs(store, candidates)


class CallableFeatures:
    """A callable ``f(indices) -> (embeddings, logits[, targets])`` evaluated at each refit.

    It runs under ``torch.no_grad()`` over the refit's candidates (all samples
    unless the sampler's ``candidate_share`` is below 1) in batches of
    ``batch_size``, and its outputs are recorded like observed feedback (fresh
    values for every candidate, so no stale samples to refresh).
    """

    refreshes_stale = False
    background_capable = False  # its refresh runs the model, which is training

    def __init__(self, function, recorder, batch_size, targets):
        self.function = function
        self.recorder = recorder
        self.batch_size = batch_size
        self.targets = targets

    def refresh(self, candidates, epoch, num_replicas):
        """Evaluate the callable on the candidates; return (its seconds, 0 bytes sent)."""
        start = time.perf_counter()
        order = torch.sort(candidates).values
        with torch.no_grad():
            for i in range(0, len(order), self.batch_size):
                batch = order[i:i + self.batch_size]
                out = self.function(batch)
                if not isinstance(out, tuple) or len(out) not in (2, 3):
                    raise TypeError("The 'features' callable must return (embeddings, logits) "
                                    "or (embeddings, logits, targets).")
                targets = out[2] if len(out) == 3 else self._targets_of(batch)
                self.recorder.observe(None, epoch, batch, embeddings=out[0], logits=out[1],
                                      targets=targets)
        return time.perf_counter() - start, 0

    def inputs(self, candidates, selector, store):
        """``(X, gradients)`` of ``candidates`` from what the callable returned (``store``:
        the feedback names -> the store's tables)."""
        return stored_inputs(store, candidates)

    def _targets_of(self, batch):
        if self.targets is None:
            raise ValueError("The 'features' callable returned no targets and the sampler "
                             "was given none: pass targets= to GraftBatchSampler.")
        return self.targets[batch]


class FixedFeatures:
    """An array of shape (n_samples, n_features): fixed features (raw inputs).

    Gradient feedback, if observed, still sizes the subsets.
    """

    refreshes_stale = False
    background_capable = True  # the selection reads the array and the store's tables

    def __init__(self, X, recorder):
        self.X = X
        self.recorder = recorder

    def refresh(self, candidates, epoch, num_replicas):
        """Merge the ranks' feedback (the gradients); return (0 seconds, bytes sent)."""
        return 0.0, self.recorder.merge_ranks(num_replicas)

    def inputs(self, candidates, selector, store):
        """``(X, gradients)`` of ``candidates``: rows of the array, stored gradients
        (``store``: the feedback names -> the store's tables)."""
        gradients = stored_gradients(store, candidates)
        X = self.X[candidates.to(self.X.device)]
        return X, _same_device(gradients, X)


def feature_source(features, recorder, *, batch_size, targets):
    """The source of the checked ``features`` parameter (None, a callable or an array)."""
    if features is None:
        return ObservedFeedback(recorder)
    if callable(features):
        return CallableFeatures(features, recorder, batch_size, targets)
    return FixedFeatures(features, recorder)


def check_features(features, n_samples):
    """The ``features`` array as a finite tensor of shape (n_samples, n_features).

    Accepts what ``torch.as_tensor`` takes (tensors, NumPy arrays, nested lists)
    and pandas DataFrames (their values, numeric columns only); sparse input
    (scipy.sparse, sparse torch layouts) is a TypeError saying how to densify it.
    """
    owner = "GraftBatchSampler"
    if is_sparse(features):
        raise TypeError(
            f"'features' of {owner} is a scipy.sparse matrix; the sampler indexes its "
            f"rows as a torch tensor, so pass features.toarray() (or a dense tensor)."
        )
    check_dense_tensor(features, "features", owner)
    if hasattr(features, "dtypes") or isinstance(features, (np.ndarray, list, tuple)):
        check_real_host(features, "features", owner)  # names text, date, complex columns
    if hasattr(features, "dtypes") and hasattr(features, "to_numpy"):  # a DataFrame
        features = features.to_numpy(copy=True)  # by position, not by index or label
        if features.dtype == object:
            features = features.astype(np.float64)
    try:
        features = torch.as_tensor(features)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"'features' of {owner} must be an array of real numbers of shape "
            f"(n_samples, n_features), got a {type(features).__name__} ({exc})."
        ) from exc
    if features.is_complex():  # a ValueError, as for complex host features
        raise complex_data_error("features", owner, features.dtype)
    if features.ndim != 2 or features.shape[0] != n_samples:
        raise ValueError(f"The 'features' array of GraftBatchSampler must have shape "
                         f"({n_samples}, n_features), got {tuple(features.shape)}.")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("The 'features' array contains NaN or infinity.")
    return features


def stored_gradients(store, candidates):
    """The candidates' recorded gradient proxies (factored when from logits), or None."""
    if "residuals" in store:
        device = store["residuals"].device
        rows = candidates.to(device)
        residuals = store["residuals"][rows]
        if "embeddings" in store:
            emb = store["embeddings"][rows].to(residuals.dtype)
            inputs = torch.cat([emb, torch.ones((len(rows), 1), dtype=emb.dtype,
                                                device=device)], dim=1)
        else:
            inputs = torch.ones((len(rows), 1), dtype=residuals.dtype, device=device)
        return FactoredGradients(residuals, inputs)
    if "gradients" in store:
        return store["gradients"][candidates.to(store["gradients"].device)]
    return None


def stored_inputs(store, candidates):
    """``(X, gradients)`` of the candidates from the store alone."""
    gradients = stored_gradients(store, candidates)
    if gradients is None:
        # Only embeddings were observed (observe() rejects an empty call).
        return store["embeddings"][candidates.to(store["embeddings"].device)], None
    X = gradients.inputs if isinstance(gradients, FactoredGradients) else gradients
    return X, gradients


def _same_device(gradients, X):
    if gradients is None:
        return None
    device = X.device
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(gradients.residuals.to(device), gradients.inputs.to(device))
    return gradients.to(device)
