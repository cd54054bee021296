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

The suite's own protocol and table (``suite/run.py``'s ``run_task``, without the
static use): GRAFT's defaults against uniform subsets of the same sizes, budget-matched
full data, RS2 and InfoBatch, paired by seed, 95% t-intervals. Usage::

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

from suite.run import SuiteConfig, run_task  # noqa: E402
from suite.stats import markdown_table  # noqa: E402
from suite.tasks import Task, _mlp, _standardized  # noqa: E402


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
    config = SuiteConfig(tasks=tuple(args.tasks), seeds=tuple(range(args.seeds)),
                         fractions=tuple(args.fractions), static=False)
    results = [run_task(TASKS[name], config, write=lambda result: None)
               for name in args.tasks]
    print(markdown_table(results, config.fractions)[0])


if __name__ == "__main__":
    main()
