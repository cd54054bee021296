"""GraftBatchSampler: train each epoch on a GRAFT subset, refit from gradient feedback.

This module imports torch; nothing in graft_select imports it back.
"""

import dataclasses
import math
import time

import numpy as np
import torch
from sklearn.base import clone
from torch.utils.data import Sampler

from ._validation import check_int, check_real
from .gradients import FactoredGradients
from .selector import GraftSelector

__all__ = ["GraftBatchSampler", "RefitReport"]


@dataclasses.dataclass(frozen=True)
class RefitReport:
    """What one refit of :class:`GraftBatchSampler` chose and cost.

    Attributes
    ----------
    epoch : int
        Epoch the refit planned.
    fraction : float
        Selected share of the dataset (stale refreshes included).
    n_selected : int
        Number of samples in the epoch's subset (before splitting over replicas).
    gradient_error : float or None
        Mean over chunks of the relative error of the chunk's mean gradient
        approximated by the selected samples; None without gradient feedback.
    seconds : float
        Wall-clock seconds spent selecting (feature pass included).
    feature_seconds : float
        Of which in the ``features`` callable (0 in observe-only mode).
    n_refreshed : int
        Samples added because their recorded values were the stalest.

    Examples
    --------
    >>> import torch
    >>> from graft_select.sampler import GraftBatchSampler
    >>> sampler = GraftBatchSampler(200, batch_size=20, fraction=0.25)
    >>> sampler.observe(torch.arange(200), embeddings=torch.randn(200, 3),
    ...                 logits=torch.randn(200, 2), targets=torch.randint(0, 2, (200,)))
    >>> sampler.set_epoch(1)
    >>> report = sampler.last_refit if len(sampler) else None
    >>> report.epoch, report.n_selected, report.n_refreshed
    (1, 50, 5)
    """

    epoch: int
    fraction: float
    n_selected: int
    gradient_error: float | None
    seconds: float
    feature_seconds: float
    n_refreshed: int


class GraftBatchSampler(Sampler[list[int]]):
    """Batch sampler that trains each epoch on a GRAFT subset of the dataset.

    Pass it as ``DataLoader(dataset, batch_sampler=sampler)``. Each epoch a private
    generator seeded from ``(seed, epoch)`` permutes the indices, which are cut
    into selection chunks; :class:`~graft_select.GraftSelector` picks samples in
    every chunk from the current per-sample features and last-layer gradient
    proxies, and the pooled picks are yielded as batches of ``batch_size``. The
    selection is refit every ``refit_every`` epochs (the subset is reshuffled in
    between) after ``warm_start_epochs`` epochs on the full data.

    Parameters
    ----------
    data_source : Dataset or int
        The dataset (only its length is used) or the number of samples.
    batch_size : int
        Training batch size.
    fraction : float, default=0.3
        Share of the dataset per epoch, in (0, 1]. 1.0 is plain shuffled batching.
    features : callable, array or None, default=None
        Where selection features come from at a refit:

        - ``None`` (observe-only): the embeddings and gradient proxies recorded
          by :meth:`observe`. Recorded values go stale for samples that are not
          selected, so ``refresh_share`` of every refit's budget goes to the
          least recently observed samples (never observed ones first).
        - a callable ``f(indices) -> (embeddings, logits)`` or
          ``(embeddings, logits, targets)``, run under ``torch.no_grad()`` over
          all samples in batches of ``feature_batch_size`` at every refit (fresh
          values; the time is reported in :attr:`last_refit`). Targets come from
          the callable, else from ``targets``.
        - an array or tensor of shape (n_samples, n_features): fixed features
          (raw inputs); gradient feedback, if observed, still sizes the subsets.
    selection_size : int, default=None
        Rows per selection chunk; ``None`` means ``batch_size``.
    refit_every : int, default=1
        Epochs between refits.
    warm_start_epochs : int, default=1
        Leading epochs on the full data.
    selector : GraftSelector, default=None
        Template selector (cloned; its ``fraction``, ``batch_size`` and
        ``random_state`` are set by the sampler). ``None`` uses
        ``GraftSelector(basis="gradients", uniform_share=0.5)``: MaxVol on the
        chunk's last-layer gradient proxies for half of each chunk's picks and
        uniform picks for the other half, which keeps the gain of gradient
        features at large fractions without collapsing onto hard samples at
        small ones.
    drop_last : bool, default=False
        Drop the last incomplete batch.
    shuffle : bool, default=True
        Permute the indices every epoch (with False, chunks follow index order).
    seed : int, default=0
        Seeds every random choice, together with the epoch.
    num_replicas, rank : int, default=None
        Distributed training: each rank gets a disjoint share of equal length of
        the epoch's subset (padded by repetition as ``DistributedSampler`` does,
        or truncated with ``drop_last``). Read from ``torch.distributed`` when it
        is initialised. Recorded feedback is gathered from every rank at a refit
        so that all ranks agree on the plan.
    targets : array-like of shape (n_samples,), default=None
        Class labels, used with a ``features`` callable that returns no targets.
    refresh_share : float, default=0.1
        Observe-only mode: share of each refit's budget given to the least
        recently observed samples. With ``refit_every = R`` no sample's values
        are more than ``R * ceil(1 / (refresh_share * fraction))`` epochs old.
    feature_batch_size : int, default=1024
        Batch size of the ``features`` callable.

    Attributes
    ----------
    last_refit : RefitReport or None
        Report of the latest refit.
    selection_seconds : float
        Total seconds spent selecting so far.

    See Also
    --------
    GraftSelector : The per-chunk selection.
    torch.utils.data.DistributedSampler : The padding and sharding convention.

    Examples
    --------
    >>> import torch
    >>> from graft_select.sampler import GraftBatchSampler
    >>> sampler = GraftBatchSampler(100, batch_size=10, fraction=0.5, warm_start_epochs=1)
    >>> len(sampler)  # epoch 0 is a warm-start epoch on the full data
    10
    >>> sampler.observe(torch.arange(100), embeddings=torch.randn(100, 4),
    ...                 logits=torch.randn(100, 3), targets=torch.randint(0, 3, (100,)))
    >>> sampler.set_epoch(1)
    >>> len(sampler), sum(len(b) for b in sampler)
    (5, 50)
    """

    def __init__(self, data_source, batch_size, *, fraction=0.3, features=None,
                 selection_size=None, refit_every=1, warm_start_epochs=1, selector=None,
                 drop_last=False, shuffle=True, seed=0, num_replicas=None, rank=None,
                 targets=None, refresh_share=0.1, feature_batch_size=1024):
        owner = "GraftBatchSampler"
        n = data_source if isinstance(data_source, int) else len(data_source)
        if isinstance(data_source, bool) or n < 1:
            raise ValueError(
                f"The 'data_source' of {owner} must have at least one sample, got length {n}.")
        self.n_samples = int(n)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.fraction = check_real(fraction, "fraction", owner, low=0.0, high=1.0, closed="right")
        self.selection_size = (self.batch_size if selection_size is None
                               else check_int(selection_size, "selection_size", owner, low=2))
        self.refit_every = check_int(refit_every, "refit_every", owner, low=1)
        self.warm_start_epochs = check_int(warm_start_epochs, "warm_start_epochs", owner, low=0)
        self.refresh_share = check_real(refresh_share, "refresh_share", owner, low=0.0, high=1.0)
        self.feature_batch_size = check_int(feature_batch_size, "feature_batch_size", owner,
                                            low=1)
        self.drop_last, self.shuffle = bool(drop_last), bool(shuffle)
        self.seed = check_int(seed, "seed", owner, low=0)
        if selector is not None and not isinstance(selector, GraftSelector):
            raise TypeError(f"The 'selector' parameter of {owner} must be a GraftSelector or "
                            f"None. Got {type(selector).__name__} instead.")
        self.selector = selector
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.features = self._check_features(features)
        self.targets = None if targets is None else torch.as_tensor(targets)
        self.epoch = 0
        self.last_refit = None
        self.selection_seconds = 0.0
        self._store = {}
        self._last_seen = torch.full((self.n_samples,), -1, dtype=torch.int64)
        self._subset = None  # dataset indices of the current plan, as an int64 tensor
        self._subset_epoch = None
        self._plan_cache = None
        self._resume_batches = 0

    # ----------------------------------------------------------------- feedback

    def observe(self, indices, *, embeddings=None, logits=None, targets=None, gradients=None):
        """Record per-sample feedback from the training loop.

        Call it after the forward pass with the batch's dataset indices. Values
        are detached and kept on their device; later observations overwrite
        earlier ones. Nothing is stored if any argument is rejected.

        Parameters
        ----------
        indices : tensor, array or list of int, shape (b,)
            Dataset indices of the batch.
        embeddings : tensor of shape (b, d), default=None
            Penultimate-layer embeddings.
        logits : tensor of shape (b, C), default=None
            Model outputs; with ``targets`` they give the last-layer gradient
            proxies ``(softmax(logits) - onehot(targets)) outer [embeddings, 1]``.
        targets : tensor of shape (b,), default=None
            Integer class labels.
        gradients : tensor of shape (b, p), default=None
            Explicit per-sample gradient proxies (instead of logits and targets).
        """
        idx = self._check_indices(indices)
        values = {}
        if embeddings is not None:
            values["embeddings"] = _rows(embeddings, "embeddings", len(idx))
        if logits is not None or targets is not None:
            if logits is None or targets is None:
                raise ValueError("observe() needs both 'logits' and 'targets' to form gradient "
                                 "proxies; pass both or neither.")
            logits = _rows(logits, "logits", len(idx))
            targets = torch.as_tensor(targets).detach().reshape(-1)
            if targets.shape[0] != len(idx) or targets.dtype.is_floating_point:
                raise ValueError(f"'targets' must hold {len(idx)} integer labels, got shape "
                                 f"{tuple(targets.shape)} and dtype {targets.dtype}.")
            if targets.min() < 0 or targets.max() >= logits.shape[1]:
                raise ValueError(f"'targets' must be class labels in [0, {logits.shape[1]}), got "
                                 f"values in [{int(targets.min())}, {int(targets.max())}].")
            probabilities = torch.softmax(logits.to(torch.float32), dim=1)
            onehot = torch.nn.functional.one_hot(targets.to(logits.device), logits.shape[1])
            values["residuals"] = probabilities - onehot.to(probabilities.dtype)
        if gradients is not None:
            values["gradients"] = _rows(gradients, "gradients", len(idx))
        if not values:
            raise ValueError("observe() got nothing to record; pass embeddings, logits and "
                             "targets, or gradients.")
        for name, value in values.items():
            stored = self._store.get(name)
            if stored is not None and stored.shape[1] != value.shape[1]:
                raise ValueError(f"'{name}' has {value.shape[1]} columns but earlier "
                                 f"observations had {stored.shape[1]}.")
        for name, value in values.items():
            if name not in self._store:
                self._store[name] = torch.zeros((self.n_samples, value.shape[1]),
                                                dtype=value.dtype, device=value.device)
            stored = self._store[name]
            stored[idx.to(stored.device)] = value.to(stored.device, stored.dtype)
        self._last_seen[idx] = self.epoch

    # ------------------------------------------------------------------ epochs

    def set_epoch(self, epoch):
        """Set the epoch of the next iteration (call it before each epoch).

        Parameters
        ----------
        epoch : int
            The epoch number, from 0. It seeds the epoch's order and selects
            warm-start, refit and reuse epochs.
        """
        self.epoch = check_int(epoch, "epoch", "GraftBatchSampler.set_epoch", low=0)
        self._resume_batches = 0

    def __len__(self):
        """Number of batches this rank yields in the coming epoch."""
        count = self._shard_length(len(self._plan()))
        if self.drop_last:
            return count // self.batch_size
        return math.ceil(count / self.batch_size)

    def __iter__(self):
        plan = self._plan()
        shard = self._shard(plan)
        skip = self._resume_batches
        batches = [shard[i:i + self.batch_size] for i in range(0, len(shard), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        for position in range(skip, len(batches)):
            self._resume_batches = position + 1
            yield batches[position].tolist()
        self._resume_batches = 0

    # ------------------------------------------------------------------- state

    def state_dict(self):
        """Everything needed to resume mid-epoch with the same remaining batches.

        Holds the epoch, the number of batches already yielded, the current
        subset (``fraction * n_samples`` int64) and the recorded feedback: one
        row per sample for each of embeddings, gradient residuals and explicit
        gradients that were observed, plus the last-seen epoch (int64). For
        50,000 samples with 512-d embeddings and 10 classes that is about 104 MB
        in float32.

        Returns
        -------
        state : dict
            Tensors on the CPU and plain numbers; save it with ``torch.save``.
        """
        return {
            "epoch": self.epoch,
            "batches_yielded": self._resume_batches,
            "subset": None if self._subset is None else self._subset.clone(),
            "subset_epoch": self._subset_epoch,
            "store": {k: v.detach().cpu().clone() for k, v in self._store.items()},
            "last_seen": self._last_seen.clone(),
            "selection_seconds": self.selection_seconds,
        }

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output; the next iteration resumes mid-epoch.

        Parameters
        ----------
        state : dict
            A dictionary returned by :meth:`state_dict`.
        """
        self.epoch = int(state["epoch"])
        self._resume_batches = int(state["batches_yielded"])
        self._subset = state["subset"]
        self._subset_epoch = state["subset_epoch"]
        self._store = {k: v.clone() for k, v in state["store"].items()}
        self._last_seen = state["last_seen"].clone()
        self.selection_seconds = float(state["selection_seconds"])
        self._plan_cache = None

    # -------------------------------------------------------------- internals

    def _plan(self):
        """The epoch's subset (dataset indices in training order), computed once."""
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        if self.epoch < self.warm_start_epochs or self.fraction >= 1.0:
            subset = torch.arange(self.n_samples)
        else:
            since = (self.epoch - self.warm_start_epochs) % self.refit_every
            fit_epoch = self.epoch - since  # the epoch whose refit this epoch reuses
            if self._subset is None or self._subset_epoch != fit_epoch:
                refit_generator = torch.Generator().manual_seed(_mix(self.seed, fit_epoch))
                self._subset = self._refit(refit_generator, fit_epoch)
                self._subset_epoch = fit_epoch
            subset = self._subset
        if self.shuffle:
            subset = subset[torch.randperm(len(subset), generator=generator)]
        self._plan_cache = (self.epoch, subset)
        return subset

    def _refit(self, generator, epoch):
        start = time.perf_counter()
        n = self.n_samples
        candidates = (torch.randperm(n, generator=generator) if self.shuffle
                      else torch.arange(n))
        budget = max(1, round(self.fraction * n))
        feature_seconds, refreshed = 0.0, torch.zeros(0, dtype=torch.int64)
        if callable(self.features):
            feature_seconds = self._run_features(candidates)
        else:
            self._gather_replicas()
            if self.features is None:
                refreshed = self._stalest(candidates, budget)
        chosen, error = self._select(candidates, refreshed, budget, generator)
        subset = torch.cat([refreshed, chosen])
        seconds = time.perf_counter() - start
        self.selection_seconds += seconds
        self.last_refit = RefitReport(
            epoch=epoch, fraction=len(subset) / n, n_selected=len(subset),
            gradient_error=error, seconds=seconds, feature_seconds=feature_seconds,
            n_refreshed=len(refreshed))
        return subset

    def _stalest(self, candidates, budget):
        """The least recently observed candidates (never observed first), in a share of budget."""
        observed = self._last_seen >= 0
        share = round(self.refresh_share * budget)
        if not bool(observed.any()):
            share = budget
        if share == 0:
            return torch.zeros(0, dtype=torch.int64)
        age = self._last_seen[candidates]
        order = torch.argsort(age, stable=True)  # ties in the epoch's random order
        return candidates[order[:share]]

    def _select(self, candidates, refreshed, budget, generator):
        remaining = budget - len(refreshed)
        if remaining <= 0:
            return torch.zeros(0, dtype=torch.int64), None
        if len(refreshed):
            keep = torch.ones(self.n_samples, dtype=torch.bool)
            keep[refreshed] = False
            candidates = candidates[keep[candidates]]
        X, gradients = self._selection_inputs(candidates)
        selector = self._make_selector(remaining / len(candidates), generator)
        selector.fit(X, gradients=gradients)
        local = selector.sample_indices_.to("cpu") if torch.is_tensor(
            selector.sample_indices_) else torch.as_tensor(selector.sample_indices_)
        error = selector.gradient_error_
        return candidates[local], None if error is None else float(np.mean(error))

    def _selection_inputs(self, candidates):
        """Features and gradient proxies of the candidates, in candidate order."""
        store = self._store
        gradients = None
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
            gradients = FactoredGradients(residuals, inputs)
        elif "gradients" in store:
            gradients = store["gradients"][candidates.to(store["gradients"].device)]
        if self.features is not None and not callable(self.features):
            X = self.features[candidates.to(self.features.device)]
            return X, _same_device(gradients, X)
        if gradients is None:
            # Only embeddings were observed (observe() rejects an empty call).
            return store["embeddings"][candidates.to(store["embeddings"].device)], None
        X = gradients.inputs if isinstance(gradients, FactoredGradients) else gradients
        return X, gradients

    def _make_selector(self, fraction, generator):
        template = self.selector or GraftSelector(basis="gradients", uniform_share=0.5)
        selector = clone(template)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        has_gradients = "residuals" in self._store or "gradients" in self._store
        params = {"fraction": min(1.0, fraction), "batch_size": self.selection_size,
                  "random_state": seed}
        if selector.basis == "gradients" and not has_gradients:
            params["basis"] = "input"
        return selector.set_params(**params)

    def _run_features(self, candidates):
        start = time.perf_counter()
        order = torch.sort(candidates).values
        with torch.no_grad():
            for i in range(0, self.n_samples, self.feature_batch_size):
                batch = order[i:i + self.feature_batch_size]
                out = self.features(batch)
                if not isinstance(out, tuple) or len(out) not in (2, 3):
                    raise TypeError("The 'features' callable must return (embeddings, logits) "
                                    "or (embeddings, logits, targets).")
                targets = out[2] if len(out) == 3 else self._targets_for(batch)
                self.observe(batch, embeddings=out[0], logits=out[1], targets=targets)
        return time.perf_counter() - start

    def _targets_for(self, batch):
        if self.targets is None:
            raise ValueError("The 'features' callable returned no targets and the sampler "
                             "was given none: pass targets= to GraftBatchSampler.")
        return self.targets[batch]

    def _gather_replicas(self):
        """Under torch.distributed, merge every rank's recorded feedback (newest wins)."""
        if self.num_replicas == 1 or not _dist_ready():
            return
        import torch.distributed as dist

        # NCCL only moves CUDA tensors; gloo takes CPU (and CUDA) tensors.
        comm = (torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl" else torch.device("cpu"))

        def gather(tensor):
            tensor = tensor.to(comm).contiguous()
            parts = [torch.zeros_like(tensor) for _ in range(self.num_replicas)]
            dist.all_gather(parts, tensor)
            return torch.stack(parts)

        stacked = gather(self._last_seen)
        newest = torch.argmax(stacked, dim=0)
        rows = torch.arange(self.n_samples, device=comm)
        for name, value in self._store.items():
            self._store[name] = gather(value)[newest, rows].to(value.device)
        self._last_seen = stacked.max(dim=0).values.cpu()

    def _shard_length(self, total):
        if self.num_replicas == 1:
            return total
        if self.drop_last:
            return total // self.num_replicas
        return math.ceil(total / self.num_replicas)

    def _shard(self, plan):
        if self.num_replicas == 1:
            return plan
        per_rank = self._shard_length(len(plan))
        total = per_rank * self.num_replicas
        if total > len(plan):
            repeats = math.ceil(total / len(plan))
            plan = plan.repeat(repeats)[:total]
        return plan[self.rank:total:self.num_replicas]

    def _check_indices(self, indices):
        idx = torch.as_tensor(indices).detach().reshape(-1).to("cpu")
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise TypeError(f"'indices' must be integer dataset indices, got dtype {idx.dtype}.")
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_samples):
            raise ValueError(f"'indices' must lie in [0, {self.n_samples}), got values in "
                             f"[{int(idx.min())}, {int(idx.max())}]; pass dataset indices.")
        return idx.to(torch.int64)

    def _check_features(self, features):
        if features is None or callable(features):
            return features
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[0] != self.n_samples:
            raise ValueError(f"The 'features' array of GraftBatchSampler must have shape "
                             f"({self.n_samples}, n_features), got {tuple(features.shape)}.")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("The 'features' array contains NaN or infinity.")
        return features


# ------------------------------------------------------------------------ helpers


def _rows(value, name, n):
    value = torch.as_tensor(value).detach()
    if value.ndim == 1:
        value = value.reshape(-1, 1)
    if value.ndim != 2 or value.shape[0] != n:
        raise ValueError(f"'{name}' must have one row per index ({n}), got shape "
                         f"{tuple(value.shape)}.")
    if not value.dtype.is_floating_point:
        value = value.to(torch.float32)
    bad = ~torch.isfinite(value).all(dim=1)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"'{name}' contains NaN or infinity in {int(bad.sum())} rows (first: "
                         f"{first}); nothing was recorded.")
    return value


def _same_device(gradients, X):
    if gradients is None:
        return None
    device = X.device
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(gradients.residuals.to(device), gradients.inputs.to(device))
    return gradients.to(device)


def _dist_ready():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _replicas(num_replicas, rank):
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if _dist_ready() else 1
    if rank is None:
        rank = torch.distributed.get_rank() if _dist_ready() else 0
    num_replicas = check_int(num_replicas, "num_replicas", "GraftBatchSampler", low=1)
    rank = check_int(rank, "rank", "GraftBatchSampler", low=0, high=num_replicas - 1)
    return num_replicas, rank


def _mix(seed, epoch):
    """A 63-bit seed from (seed, epoch) that differs for every pair."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
