"""GraftSelector on a dask array larger than a worker's memory: peak memory and throughput.

A ``rows x features`` float32 array is generated lazily by dask (standard normal,
blocks of ``--block-rows`` rows, so no process ever holds the whole array) and
selected at ``--fraction`` with ``batch_size=--batch-size`` on a
``LocalCluster`` of ``--workers`` worker processes with one thread each. Printed:

- peak resident memory of each worker during the fit (sampled every 20 ms with
  psutil, plus each worker's lifetime peak from getrusage); target < 1.5 GB;
- rows per second of the dask fit, against the in-memory fit of a
  ``--slice-rows`` slice of the same array measured in the same run (one
  process, one BLAS thread); target: in-memory rows/s / dask rows/s <= 1.5;
- the time dask takes only to generate the array (a sum over it), which the
  dask fit includes and the in-memory fit does not;
- whether the dask fit of the slice selects exactly what the in-memory fit does.

Usage::

    python benchmarks/bench_dask.py            # 20,000,000 x 64 (about 5 GB), a few minutes
    python benchmarks/bench_dask.py --quick    # 1,000,000 x 64, seconds
"""

import os

# One BLAS thread in this process (the in-memory reference); the workers get one
# each from distributed's nanny. Set before NumPy is imported.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from graft_select import GraftSelector  # noqa: E402

GB = 1e9


class PeakSampler:
    """Largest resident set size of each process in ``pids`` while running."""

    def __init__(self, pids, interval=0.02):
        self.processes = {pid: psutil.Process(pid) for pid in pids}
        self.peak = dict.fromkeys(pids, 0)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid, process in self.processes.items():
                try:
                    self.peak[pid] = max(self.peak[pid], process.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _lifetime_peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--block-rows", type=int, default=262_144)
    parser.add_argument("--slice-rows", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1,000,000 rows, slice 200,000")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.slice_rows = 1_000_000, 200_000
    n, d = args.rows, args.features
    params = dict(fraction=args.fraction, batch_size=args.batch_size, random_state=0)

    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        pids = list(client.run(os.getpid).values())
        X = da.random.default_rng(0).standard_normal(
            (n, d), chunks=(args.block_rows, d), dtype=np.float32)
        print(f"X: {n:,} x {d} float32 ({X.nbytes / GB:.2f} GB), {X.numblocks[0]} blocks of "
              f"{args.block_rows:,} rows ({args.block_rows * d * 4 / 1e6:.0f} MB); "
              f"{args.workers} workers x 1 thread; fraction {args.fraction}, "
              f"batch_size {args.batch_size}")

        start = time.perf_counter()
        X.sum().compute()
        generate = time.perf_counter() - start
        print(f"generating X alone (a sum over it): {generate:.1f} s")

        with PeakSampler(pids) as sampler:
            start = time.perf_counter()
            selector = GraftSelector(**params).fit(X)
            lazy_time = time.perf_counter() - start
        lifetime = client.run(_lifetime_peak_rss)
        lazy_rate = n / lazy_time
        print(f"dask fit: {lazy_time:.1f} s, {lazy_rate:,.0f} rows/s, "
              f"{len(selector.sample_indices_):,} rows selected")
        for pid, (address, peak) in zip(pids, lifetime.items()):
            print(f"  worker {address}: peak RSS during the fit {sampler.peak[pid] / GB:.2f} GB, "
                  f"lifetime peak {peak / GB:.2f} GB (target < 1.5 GB)")

        X_slice = X[: args.slice_rows].compute()
        start = time.perf_counter()
        eager = GraftSelector(**params).fit(X_slice)
        eager_time = time.perf_counter() - start
        eager_rate = args.slice_rows / eager_time
        ratio = eager_rate / lazy_rate
        verdict = "PASS" if ratio <= 1.5 else "MISS"
        print(f"in-memory fit of {args.slice_rows:,} rows: {eager_time:.1f} s, "
              f"{eager_rate:,.0f} rows/s")
        print(f"in-memory rows/s / dask rows/s = {ratio:.2f}x (target <= 1.5x): {verdict}")
        print(f"dask rows/s without the generation time: {n / (lazy_time - generate):,.0f} "
              f"(ratio {eager_rate / (n / (lazy_time - generate)):.2f}x)")

        with dask.config.set(scheduler=client.get):
            same = GraftSelector(**params).fit(X[: args.slice_rows])
        equal = (np.array_equal(same.sample_indices_, eager.sample_indices_)
                 and np.array_equal(same.sample_weight_, eager.sample_weight_))
        print(f"dask fit of the slice selects the same rows and weights as in memory: {equal}")
        print(f"machine: {os.cpu_count()} cores, load average "
              f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
