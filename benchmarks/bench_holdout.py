"""The sampler's defaults on tasks that no default was chosen on (held out of the suite).

Every default of ``GraftBatchSampler`` (the uniform check's ratio 0.5, three warm-start
epochs, ``max_overhead=0.05``) was chosen on the task suite (``benchmarks/suite``) and
the demo's data. This script runs the same comparison as the suite, with the suite's
training loop and statistics, on tasks of other kinds that were never used to choose
anything:

- ``quantiles``: ``make_gaussian_quantiles``, 4 classes as nested shells around the
  origin in 10 dimensions (no linear separation at all), MLP;
- ``manyclass``: ``make_classification`` with 20 classes of one cluster each in 30
  dimensions (the suite's tasks have 4 to 10 classes), MLP;
- ``issue22``: the cost-and-quality issue's own first example, ``make_classification``
  20,000 x 40, 6 classes, an MLP, 30 epochs (there GRAFT's sampler scored 82.30 against
  83.08 for uniform subsets, before the uniform check).

GRAFT's defaults against uniform subsets of the same sizes and budget-matched full data,
paired by seed, 95% t-intervals. Usage::

    python benchmarks/bench_holdout.py [--seeds 5] [--fractions 0.1 0.3] [--tasks ...]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import make_classification, make_gaussian_quantiles

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from suite.stats import paired_interval, verdict  # noqa: E402
from suite.tasks import Task, _mlp, _standardized  # noqa: E402
from suite.training import strategy_run  # noqa: E402


def quantiles_data(n_train, n_test=2000):
    X, y = make_gaussian_quantiles(n_samples=n_train + n_test, n_features=10, n_classes=4,
                                   random_state=0)
    X_train, X_test = _standardized(X[:n_train], X[n_train:])
    return X_train, y[:n_train].astype(np.int64), X_test, y[n_train:].astype(np.int64)


def manyclass_data(n_train, n_test=4000):
    X, y = make_classification(n_samples=n_train + n_test, n_features=30, n_informative=15,
                               n_classes=20, n_clusters_per_class=1, class_sep=1.0,
                               random_state=0)
    X_train, X_test = _standardized(X[:n_train], X[n_train:])
    return X_train, y[:n_train].astype(np.int64), X_test, y[n_train:].astype(np.int64)


def issue22_data(n_train, n_test=4000):
    X, y = make_classification(n_samples=n_train + n_test, n_features=40, n_informative=20,
                               n_classes=6, random_state=0)
    X_train, X_test = _standardized(X[:n_train], X[n_train:])
    return X_train, y[:n_train].astype(np.int64), X_test, y[n_train:].astype(np.int64)


TASKS = {task.name: task for task in [
    Task("quantiles", "nested Gaussian shells, 4 classes, 10-d (MLP)", quantiles_data, _mlp,
         10000),
    Task("manyclass", "20 classes, 30-d (MLP)", manyclass_data, _mlp, 10000),
    Task("issue22", "make_classification 20,000 x 40, 6 classes (MLP, 30 epochs)",
         issue22_data, _mlp, 20000, epochs=30),
]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args(argv)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, cores {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}, seeds {args.seeds}", flush=True)
    print("| task | f | GRAFT | uniform | full (budget) | GRAFT - uniform | GRAFT - budget |"
          " selection share |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.tasks:
        task = TASKS[name]
        data = task.make_data(task.n_train)
        for fraction in args.fractions:
            runs = {"graft": [], "uniform": [], "budget": []}
            for seed in range(args.seeds):
                graft = strategy_run("graft", task, data, fraction=fraction, seed=seed,
                                     epochs=task.epochs)
                runs["graft"].append(graft)
                runs["uniform"].append(strategy_run("uniform", task, data, fraction=fraction,
                                                    seed=seed, epochs=task.epochs))
                runs["budget"].append(strategy_run("budget", task, data, fraction=fraction,
                                                   seed=seed, epochs=task.epochs,
                                                   total_samples=graft["samples_seen"]))
            scores = {k: np.array([r["score"] for r in v]) for k, v in runs.items()}
            cells = []
            for other in ("uniform", "budget"):
                mean, low, high, _ = paired_interval(scores["graft"], scores[other])
                cells.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] {verdict(low, high)}")
            share = np.mean([(r["selection_seconds"] + r["observe_seconds"]) / r["wall_seconds"]
                             for r in runs["graft"]])
            print(f"| {name} | {fraction} | "
                  + " | ".join(f"{scores[k].mean():.2f} +- {scores[k].std():.2f}"
                               for k in ("graft", "uniform", "budget"))
                  + f" | {cells[0]} | {cells[1]} | {share:.1%} |", flush=True)


if __name__ == "__main__":
    main()
