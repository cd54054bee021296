"""One training run of the suite, the strategies' samplers and the estimator's static use.

The loop is the demo's (:mod:`graft_select.demo.training`: the indexed dataset, the
cosine learning rate over the run's planned samples, Adam) made generic over the
task's model, loss and augmentation; the baselines' samplers are the demo's
(:mod:`graft_select.demo.baselines`). GRAFT runs with ``GraftBatchSampler``'s
defaults: only ``fraction``, ``batch_size``, ``seed`` and ``targets`` are set, the
model is watched and ``observe()`` is called after every forward pass, as the
README shows. ``uniform`` is the same sampler with a uniform selector (and no
label-noise guard): uniform subsets of the same sizes, refit on the same rule.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from graft_select import GraftSelector, last_layer_gradients
from graft_select.demo.baselines import InfoBatchSampler, RS2BatchSampler, ShuffledBatchSampler
from graft_select.demo.training import IndexedTensorDataset, collate_batch, cosine_rate
from graft_select.sampler import GraftBatchSampler

__all__ = ["FEEDBACK_STRATEGIES", "STRATEGIES", "make_sampler", "regression_support",
           "score", "static_runs", "strategy_run", "train"]

STRATEGIES = ("graft", "uniform", "budget", "rs2", "infobatch")
FEEDBACK_STRATEGIES = ("graft", "uniform")  # GraftBatchSampler, fed by observe()


def seeded_model(task, n_features, n_outputs, seed):
    """The task's model with the initial weights of ``seed`` (global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return task.build_model(n_features, n_outputs)


def _targets(task, y):
    return torch.as_tensor(y, dtype=torch.float32 if task.loss == "mse" else torch.long)


def per_sample_loss(task, outputs, yb):
    """The task's loss per sample: cross-entropy, or the squared error of one output."""
    if task.loss == "mse":
        return F.mse_loss(outputs.squeeze(1), yb, reduction="none")
    return F.cross_entropy(outputs, yb, reduction="none")


@torch.no_grad()
def score(task, model, X_test, y_test):
    """Test accuracy in % (classification) or test R^2 in % (regression)."""
    model.eval()
    outputs = torch.cat([model(X_test[i:i + 2048]) for i in range(0, len(X_test), 2048)])
    model.train()
    if task.loss == "mse":
        residual = float(((outputs.squeeze(1) - y_test) ** 2).sum())
        return 100.0 * (1.0 - residual / float(((y_test - y_test.mean()) ** 2).sum()))
    return 100.0 * float((outputs.argmax(1) == y_test).float().mean())


def planned_samples(sampler, n, epochs):
    """Samples a run will see (the learning-rate schedule's length)."""
    if isinstance(sampler, GraftBatchSampler):
        warm = min(sampler.warm_start_epochs, epochs)
        return warm * n + (epochs - warm) * max(1, round(sampler.fraction * n))
    return sampler.total_samples


def train(task, model, X, y, sampler, *, seed, epochs=None, feedback=False):
    """Train ``model`` on the batches of ``sampler``; return the run's figures.

    ``epochs`` runs that many epochs (GraftBatchSampler); None runs until the
    sampler's budget is spent (it yields no batch). ``feedback`` watches the model
    and calls ``sampler.observe()`` after every forward pass.
    """
    loader = DataLoader(IndexedTensorDataset(X, y), batch_sampler=sampler,
                        collate_fn=collate_batch, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=task.lr)
    augment = torch.Generator().manual_seed(seed + 10_000)
    weighted = hasattr(sampler, "loss_weights")
    planned = planned_samples(sampler, X.shape[0], epochs)
    capture = sampler.watch(model) if feedback else None
    seen, epoch, observe_seconds = 0, 0, 0.0
    started = time.perf_counter()
    while epochs is None or epoch < epochs:
        sampler.set_epoch(epoch)
        if len(sampler) == 0:
            break
        for xb, yb, index in loader:
            for group in optimizer.param_groups:
                group["lr"] = cosine_rate(task.lr, seen, planned)
            if task.augment is not None:
                xb = task.augment(xb, augment)
            losses = per_sample_loss(task, model(xb), yb)
            if feedback:
                begin = time.perf_counter()
                sampler.observe()
                observe_seconds += time.perf_counter() - begin
            loss = (losses * sampler.loss_weights(index)).mean() if weighted else losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if weighted:
                sampler.record_losses(index, losses.detach())
            seen += int(index.shape[0])
        epoch += 1
    wall = time.perf_counter() - started
    if capture is not None:
        capture.remove()
    return {"samples_seen": seen, "n_epochs": epoch, "wall_seconds": wall,
            "selection_seconds": float(getattr(sampler, "selection_seconds", 0.0)),
            "observe_seconds": observe_seconds}


def make_sampler(strategy, task, y_train, *, fraction, seed, total_samples=None):
    """The batch sampler of one strategy (``total_samples``: the baselines' budget)."""
    n, batch_size = len(y_train), task.batch_size
    if strategy == "graft":
        return GraftBatchSampler(n, batch_size, fraction=fraction, seed=seed,
                                 targets=_targets(task, y_train), loss=task.loss)
    if strategy == "uniform":
        return GraftBatchSampler(n, batch_size, fraction=fraction, seed=seed,
                                 targets=_targets(task, y_train), label_noise_guard=False,
                                 selector=GraftSelector(strategy="uniform"), loss=task.loss)
    if strategy == "budget":
        return ShuffledBatchSampler(n, batch_size, seed=seed, total_samples=total_samples)
    if strategy == "rs2":
        return RS2BatchSampler(n, batch_size, fraction=fraction, total_samples=total_samples,
                               seed=seed)
    if strategy == "infobatch":
        return InfoBatchSampler(n, batch_size, total_samples=total_samples, seed=seed)
    raise ValueError(f"Unknown strategy {strategy!r}; use one of {STRATEGIES}.")


def strategy_run(strategy, task, data, *, fraction, seed, epochs, total_samples=None):
    """Train the task's model from ``seed`` with one strategy; return the run's record."""
    X_train, y_train, X_test, y_test = data
    model = seeded_model(task, X_train.shape[1], task.n_outputs(y_train, y_test), seed)
    sampler = make_sampler(strategy, task, y_train, fraction=fraction, seed=seed,
                           total_samples=total_samples)
    feedback = strategy in FEEDBACK_STRATEGIES
    figures = train(task, model, torch.as_tensor(X_train), _targets(task, y_train), sampler,
                    seed=seed, epochs=epochs if feedback else None, feedback=feedback)
    record = {"strategy": strategy, "fraction": fraction, "seed": seed,
              "score": score(task, model, torch.as_tensor(X_test), _targets(task, y_test)),
              **figures}
    if feedback and sampler.last_refit is not None:
        record["refits_excluded"] = int(sampler.last_refit.n_excluded)
    return record


def regression_support():
    """None if GraftBatchSampler takes squared-error feedback (float targets through
    ``targets=``, ``watch()`` and ``observe()``) on this commit, else the reason."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    generator = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 3, generator=generator), torch.randn(40, generator=generator)
    try:
        sampler = GraftBatchSampler(40, 10, fraction=0.5, seed=0, targets=y, loss="mse",
                                    warm_start_epochs=1, refit_every=1)
        sampler.watch(model)
        for batch in sampler:
            model(X[batch])
            sampler.observe()
        sampler.set_epoch(1)
        picked = sum(len(batch) for batch in sampler)
    except (TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if picked > 0 else "a refit on squared-error feedback picked no sample"


def _warm_features(task, model, X):
    """Embeddings (the head's input) and outputs of ``model`` on ``X``, as NumPy."""
    inputs = []
    handle = model.head.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    try:
        with torch.no_grad():
            model.eval()
            outputs = torch.cat([model(X[i:i + 2048]) for i in range(0, len(X), 2048)])
            model.train()
    finally:
        handle.remove()
    return torch.cat(inputs).numpy(), outputs.numpy()


def static_runs(task, data, *, fractions, seed, epochs, warm_epochs=3):
    """The estimator's static use at each fraction, against a uniform subset of its size.

    A model trained for ``warm_epochs`` on all the data gives embeddings and outputs;
    ``GraftSelector(fraction, random_state=seed)`` (its defaults otherwise) is fit once
    on the embeddings with the factored last-layer gradients, and a fresh model (the
    seed's initial weights) trains ``epochs`` epochs on the subset; so does one on a
    uniform subset of the same size. Also recorded: the share of the picked rows that
    the warm model gets wrong (classification), the issue's symptom.
    """
    X_train, y_train, X_test, y_test = data
    X, y = torch.as_tensor(X_train), _targets(task, y_train)
    n_outputs = task.n_outputs(y_train, y_test)
    embeddings, gradients, wrong = static_inputs(task, data, seed=seed,
                                                 warm_epochs=warm_epochs)
    records = []
    for fraction in fractions:
        began = time.perf_counter()
        selector = GraftSelector(fraction, random_state=seed).fit(embeddings,
                                                                  gradients=gradients)
        seconds = time.perf_counter() - began
        # the share of chunks whose MaxVol picks passed the check: 0 means GRAFT's
        # subset is a uniform one (its sizes aside), compared with another uniform one
        maxvol_share = float(np.mean(selector.maxvol_chunks_))
        picked = np.asarray(selector.sample_indices_)
        rng = np.random.default_rng([seed, 22])
        subsets = {"static_graft": picked,
                   "static_uniform": np.sort(rng.choice(len(y), len(picked), replace=False))}
        for strategy, rows in subsets.items():
            model = seeded_model(task, X.shape[1], n_outputs, seed)
            rows_t = torch.as_tensor(rows)
            figures = train(task, model, X[rows_t], y[rows_t],
                            ShuffledBatchSampler(len(rows), task.batch_size, seed=seed,
                                                 epochs=epochs), seed=seed)
            records.append({
                "strategy": strategy, "fraction": fraction, "seed": seed,
                "score": score(task, model, torch.as_tensor(X_test), _targets(task, y_test)),
                "n_selected": len(rows), "fit_seconds": seconds if strategy == "static_graft"
                else 0.0,
                "warm_wrong_share": None if wrong is None else float(wrong[rows].mean()),
                "maxvol_share": maxvol_share if strategy == "static_graft" else None,
                **figures})
    return records


def static_inputs(task, data, *, seed, warm_epochs=3):
    """What the static use fits GraftSelector on: a model trained ``warm_epochs`` on all
    the training data gives ``(embeddings, factored last-layer gradients, wrong)``,
    ``wrong`` the rows it misclassifies (None for regression)."""
    X_train, y_train, _, y_test = data
    X, y = torch.as_tensor(X_train), _targets(task, y_train)
    warm = seeded_model(task, X.shape[1], task.n_outputs(y_train, y_test), seed + 1000)
    train(task, warm, X, y, ShuffledBatchSampler(len(y), task.batch_size, seed=seed,
                                                 epochs=warm_epochs), seed=seed)
    embeddings, outputs = _warm_features(task, warm, X)
    loss = "mse" if task.loss == "mse" else "cross_entropy"
    gradients = last_layer_gradients(outputs, y_train, embeddings, loss=loss, factored=True)
    wrong = None if task.loss == "mse" else outputs.argmax(1) != y_train
    return embeddings, gradients, wrong
