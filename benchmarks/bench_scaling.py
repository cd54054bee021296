"""Scaling of GraftSelector's default (batch_size=None) with the number of rows.

Issue 11, hang 1: with ``batch_size=None`` selecting over all rows at once, the
greedy pivots cost ``O(fraction * n^2 * r)`` and the fit time grew quadratically
(50k rows 4 s, 200k rows 86 s). The default now uses chunks of at most 4096 rows.
This script prints, measured in this process:

- for each n, the fit time of the default, the time per 1000 rows, and the ratio
  ``t(n) / t(n_0)`` against ``n / n_0`` (linear scaling gives a ratio of ratios of
  about 1; quadratic gives ``n / n_0``);
- the fitted exponent ``b`` of ``t = a * n^b`` (target: b <= 1.15);
- the reference: the old behaviour, one chunk of all rows (``batch_size=n``), at
  the sizes where it finishes in reasonable time, and the speed-up against it.

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_scaling.py          # ~2 minutes
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_scaling.py --quick  # ~15 s
"""

import argparse
import time

import numpy as np

from graft_select import GraftSelector


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    # low rank + noise, rows with log-normal norms (as in bench_kernels)
    X = rng.standard_normal((n, 8)) @ rng.standard_normal((8, d)) + 0.1 * rng.standard_normal(
        (n, d))
    return X * rng.lognormal(0.0, 0.5, (n, 1))


def _best_time(fit, repeats):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fit()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args()
    d, fraction = 16, 0.1
    sizes = [8_000, 16_000, 32_000] if args.quick else [25_000, 50_000, 100_000, 200_000]
    reference_sizes = sizes[:2]
    repeats = 1 if args.quick else 3

    print(f"GraftSelector(fraction={fraction}) on n x {d} float64, default batch_size=None")
    print("| n | chunks | default s | s per 1k rows | t(n)/t(n0) | n/n0 | "
          "one chunk s (old default) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    GraftSelector(fraction=fraction, random_state=0).fit(_data(2_000, d))  # warm-up
    times = []
    for n in sizes:
        X = _data(n, d)
        selector = GraftSelector(fraction=fraction, random_state=0)
        seconds = _best_time(lambda s=selector, X=X: s.fit(X), repeats)
        times.append(seconds)
        chunks = len(selector.chunk_sizes_)
        reference = ""
        speedup = ""
        if n in reference_sizes:
            old = GraftSelector(fraction=fraction, chunk_size=n, random_state=0)
            ref_seconds = _best_time(lambda s=old, X=X: s.fit(X), 1)
            reference = f"{ref_seconds:.2f}"
            speedup = f"{ref_seconds / seconds:.1f}x"
        print(f"| {n} | {chunks} | {seconds:.2f} | {1000 * seconds / n:.3f} | "
              f"{seconds / times[0]:.2f} | {n / sizes[0]:.1f} | {reference} | {speedup} |")
    exponent = np.polyfit(np.log(sizes), np.log(times), 1)[0]
    verdict = "linear" if exponent <= 1.15 else "NOT linear"
    print(f"fitted exponent b in t = a n^b: {exponent:.2f} (target <= 1.15: {verdict})")


if __name__ == "__main__":
    main()
