"""The estimator's static use against a uniform subset of the same size (issue 22).

Run: python benchmarks/bench_estimator_static.py [--seeds N] [--tasks T ...] [--variants V ...]

Static use: a warm model trained on a small uniform sample gives every row its
last-layer gradient proxy ``(softmax(z) - onehot(y))`` outer ``[h, 1]`` (``h``:
the inputs for a linear model, the hidden layer for an MLP), ``GraftSelector``
is fitted once on ``h`` and the factored gradients, and a model of the same kind
is trained from scratch on the subset; the baseline is a uniform subset of the
same size (``strategy="uniform"``). Tasks:

- ``dask``: the data of ``examples/plot_dask_out_of_core.py`` (100,000 x 32, 4
  classes, linear model, 10% in chunks of 256, in memory: the dask fit selects
  the same rows);
- ``gen4``: another generated 4-class task (20,000 x 20, 3 clusters per class),
  an MLP (64 hidden units), 10% in chunks of 256;
- ``clean`` / ``noisy``: 10 classes, 12,000 x 30, an MLP, 5%, 20% and 40% in
  chunks of 256, with 0% and 20% of the training labels replaced by another
  class (the test labels are clean).

Variants: ``default`` (``GraftSelector``'s defaults, ``max_error_ratio="auto"``),
``nocheck`` (``max_error_ratio=None``: MaxVol's picks everywhere, the defaults
before issue 22), ``input`` (``basis="input"``: MaxVol on ``h``, the gradients
only size the chunks) and ``share50`` (``uniform_share=0.5``).

Each seed draws the warm sample, the MLP's initialisation and the selector's
``random_state``. One line per (task, variant) with the mean and sd of the test
accuracy over the seeds and the paired difference to uniform with its 95%
interval (t distribution).
"""

import argparse
import math
import time
import warnings

import numpy as np
from scipy import stats
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from graft_select import FactoredGradients, GraftSelector


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Task:
    """Data, a warm model and a learner for one task."""

    def __init__(self, name, X, y, X_test, y_test, fraction, linear):
        self.name, self.X, self.y = name, X.astype(np.float32), y
        self.X_test, self.y_test = X_test.astype(np.float32), y_test
        self.fraction, self.linear = fraction, linear
        self.n_classes = int(y.max()) + 1

    def learner(self, seed):
        if self.linear:
            return LogisticRegression(max_iter=1000)
        return MLPClassifier(hidden_layer_sizes=(64,), max_iter=150, random_state=seed)

    def warm(self, seed, size=2000):
        """Features and factored last-layer gradients of a model fit on ``size`` rows."""
        rows = np.sort(np.random.default_rng(seed).choice(len(self.y), size, replace=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = self.learner(seed).fit(self.X[rows], self.y[rows])
        if self.linear:
            h = self.X
            logits = h @ model.coef_.T + model.intercept_
        else:
            h = np.maximum(self.X @ model.coefs_[0] + model.intercepts_[0], 0)
            logits = h @ model.coefs_[1] + model.intercepts_[1]
        onehot = np.eye(self.n_classes, dtype=np.float32)[self.y]
        residuals = (_softmax(logits) - onehot).astype(np.float32)
        inputs = np.hstack([h, np.ones((len(h), 1))]).astype(np.float32)
        return h.astype(np.float32), FactoredGradients(residuals, inputs)

    def score(self, rows, seed, weights=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = self.learner(seed)
            if weights is None:
                model.fit(self.X[rows], self.y[rows])
            else:
                model.fit(self.X[rows], self.y[rows], sample_weight=weights)
        return float(model.score(self.X_test, self.y_test))


FRACTIONS = {"dask": (0.1, 0.5), "gen4": (0.1,), "clean": (0.05, 0.2, 0.4),
             "noisy": (0.05, 0.2, 0.4)}


def make_tasks(names):
    tasks = {}
    if "dask" in names:
        X, y = make_classification(
            n_samples=110_000, n_features=32, n_informative=12, n_classes=4,
            n_clusters_per_class=2, class_sep=1.5, flip_y=0.0, random_state=0)
        tasks["dask"] = Task("dask", X[:100_000], y[:100_000], X[100_000:], y[100_000:],
                             0.1, linear=True)
    if "gen4" in names:
        X, y = make_classification(
            n_samples=25_000, n_features=20, n_informative=8, n_redundant=4, n_classes=4,
            n_clusters_per_class=3, class_sep=1.0, random_state=1)
        tasks["gen4"] = Task("gen4", X[:20_000], y[:20_000], X[20_000:], y[20_000:],
                             0.1, linear=False)
    for name, noise in (("clean", 0.0), ("noisy", 0.2)):
        if name not in names:
            continue
        X, y = make_classification(
            n_samples=15_000, n_features=30, n_informative=15, n_classes=10,
            n_clusters_per_class=1, class_sep=1.5, flip_y=0.0, random_state=2)
        y_train = y[:12_000].copy()
        rng = np.random.default_rng(2)
        flip = rng.random(12_000) < noise
        y_train[flip] = (y_train[flip] + rng.integers(1, 10, flip.sum())) % 10
        tasks[name] = Task(name, X[:12_000], y_train, X[12_000:], y[12_000:], 0.2,
                           linear=False)
    return tasks


VARIANTS = {
    # name: (GraftSelector parameters, train with the fit's weights)
    "uniform": ({"strategy": "uniform"}, False),
    "default": ({}, False),
    "nocheck": ({"max_error_ratio": None}, False),
    "input": ({"basis": "input"}, False),
    "share50": ({"uniform_share": 0.5}, False),
}


def run_variant(task, variant, seed, h, gradients):
    params, weighted = VARIANTS[variant]
    selector = GraftSelector(fraction=task.fraction, chunk_size=256, random_state=seed,
                             **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selector.fit(h, gradients=gradients)
    rows = np.asarray(selector.sample_indices_)
    weights = np.clip(selector.sample_weight_, 0, None) if weighted else None
    residuals = gradients.residuals[rows]
    p_given = 1.0 + residuals.min(axis=1)
    wrong = float(np.mean(residuals.max(axis=1) > p_given))
    return task.score(rows, seed, weights), wrong, len(rows)


def interval(diffs):
    diffs = np.asarray(diffs)
    if len(diffs) < 2:
        return float(diffs.mean()), float("nan")
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return float(diffs.mean()), float(half)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", nargs="+", default=list(FRACTIONS))
    parser.add_argument("--variants", nargs="+", default=["default", "nocheck"])
    args = parser.parse_args()
    variants = ["uniform"] + [v for v in args.variants if v != "uniform"]
    tasks = make_tasks(args.tasks)
    print("| task | fraction | variant | accuracy (mean +- sd) | minus uniform (95% CI) | "
          "misclassified by warm model | rows |")
    print("|---|---|---|---|---|---|---|")
    for name in args.tasks:
        task = tasks[name]
        start = time.perf_counter()
        results = {(f, v): [] for f in FRACTIONS[name] for v in variants}
        sizes = {}
        for seed in range(args.seeds):
            h, gradients = task.warm(seed)
            for fraction in FRACTIONS[name]:
                task.fraction = fraction
                for v in variants:
                    acc, wrong, sizes[fraction, v] = run_variant(task, v, seed, h, gradients)
                    results[fraction, v].append((acc, wrong))
        for fraction in FRACTIONS[name]:
            base = np.array([acc for acc, _ in results[fraction, "uniform"]])
            for v in variants:
                acc = np.array([a for a, _ in results[fraction, v]])
                wrong = np.mean([w for _, w in results[fraction, v]])
                mean, half = interval(acc - base)
                sd = acc.std(ddof=1) if len(acc) > 1 else 0.0
                print(f"| {name} | {fraction} | {v} | {acc.mean():.4f} +- {sd:.4f} | "
                      f"{mean:+.4f} +- {half:.4f} | {wrong:.2f} | {sizes[fraction, v]} |",
                      flush=True)
        print(f"<!-- {name}: {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
