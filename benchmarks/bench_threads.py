"""A refit's thread pools: default settings against every pool at one thread.

A sampler refit on a CPU store of ``n`` samples (512-d float32 embeddings, 10-class
residuals, chunks of 256, the sampler's selector, ``uniform_share=0`` with its
MaxVol-or-uniform check at ``max_error_ratio=0.5``, through
``GraftSelector.fit(None, gradients=StoredGradients(...), compute_weights=False)``)
for a sampler at fraction 0.3: with its default ``pool_factor=2.0`` a refit selects
a pool of 0.6 of the samples from the factors and orders of a selection of 0.3
(``selector.selecting_pool``; ``--pool-factor 1`` times the selection of 0.3
alone, as refits made before pools), timed in one process, alternating:

- ``default``: NumPy's OpenBLAS and torch's OpenMP pools at their default sizes
  (every core each), right after some torch work (as after a training step);
- ``single``: inside ``graft_select._backend.single_threaded()``, the groups one
  after another, as a background refit runs;
- ``sampler``: as the sampler runs a refit on the training path: inside
  ``single_threaded()``, the groups on ``refit_threads(1)`` threads side by side
  (``_feedback.refit_workers``; this process's share of the cores, at most 4).

Both against ``pass``: one product ``store @ R`` (R of 512 x 64) at default threads,
the cost of reading the store once. Target: refit <= 8x pass at the machine's
default thread settings, and a peak memory of at most the store's size on top of
it (the resident set sampled every millisecond during one refit, Linux only).

Usage::

    python benchmarks/bench_threads.py [--n 300000] [--repeats 3]
"""

import argparse
import contextlib
import os
import threading
import time

import numpy as np
import torch

from graft_select import GraftSelector, StoredGradients
from graft_select._backend import single_threaded
from graft_select._background import refit_threads
from graft_select._feedback import refit_workers
from graft_select._plan import pool_size
from graft_select._planner import SAMPLER_ERROR_RATIO
from graft_select.selector import selecting_pool


@contextlib.contextmanager
def training_path():
    """The pools and group threads of a sampler's refit on the training path.

    The thread count is read first, as the sampler does (`EpochPlanner._refit`):
    inside `single_threaded()` torch reports one intra-op thread, so
    ``refit_threads`` would return 1 there.
    """
    threads = refit_threads(1)
    with single_threaded(), refit_workers(threads):
        yield


def store(n, d=512, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    R = torch.softmax(torch.randn(n, c, generator=g), 1) - torch.nn.functional.one_hot(
        y, c).float()
    return R, E, torch.randperm(n, generator=g)


FRACTION = 0.3  # the sampler's; its refit selects pool_size of it


def refit(R, E, rows, pool):
    """The selection of a sampler's refit: the epoch's fraction, and its pool of
    ``pool`` rows from the same orders (None: the fraction itself), as
    `_planner.fit_selector` asks for it."""
    start = time.perf_counter()
    selector = GraftSelector(FRACTION, chunk_size=256, basis="gradients", uniform_share=0.0,
                             max_error_ratio=SAMPLER_ERROR_RATIO, random_state=0)
    with selecting_pool(pool):  # the sampler's template and its check (one pass)
        selector.fit(None, gradients=StoredGradients(R, E, rows), compute_weights=False)
    return time.perf_counter() - start


def one_pass(E, M, products=3):
    """Seconds of one product ``E @ M`` at default threads: the median of ``products``."""
    seconds = []
    for _ in range(products):
        start = time.perf_counter()
        E @ M
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_memory(function):
    """Largest resident set during ``function()`` minus the one before it, in bytes.

    None where /proc/self/statm is missing (not Linux).
    """
    if not os.path.exists("/proc/self/statm"):
        function()
        return None
    start, peak, done = _resident_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        function()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _resident_bytes()) - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pool-factor", type=float, default=2.0,
                        help="the sampler's pool_factor (default 2.0, its default)")
    args = parser.parse_args(argv)
    pool = pool_size(args.n, FRACTION, args.pool_factor)
    selected = pool / args.n
    pool = None if args.pool_factor == 1.0 else pool
    R, E, rows = store(args.n)
    M = torch.randn(E.shape[1], 64)
    E @ M  # warm-up
    times = {"default": [], "single": [], "sampler": []}
    ratios = {name: [] for name in times}
    passes = []
    contexts = {"default": contextlib.nullcontext, "single": single_threaded,
                "sampler": training_path}
    for _ in range(args.repeats):
        for name, context in contexts.items():
            before = one_pass(E, M)
            a = torch.randn(256, 512)
            (a @ a.T).sum()  # torch's pool awake, as after a training step
            with context():
                times[name].append(refit(R, E, rows, pool))
            after = one_pass(E, M)
            passes.extend((before, after))
            ratios[name].append(times[name][-1] / ((before + after) / 2))
    p = float(np.median(passes))
    print(f"n={args.n}, sampler fraction {FRACTION}, pool_factor {args.pool_factor}: the "
          f"refit selects {selected:.2f}; torch threads {torch.get_num_threads()}, cores "
          f"{os.cpu_count()}, refit threads {refit_threads(1)}, load "
          f"{os.getloadavg()[0]:.2f}; pass {p:.4f} s (median; range {min(passes):.3f} to "
          f"{max(passes):.3f} s)")
    for name, values in times.items():
        paired = ratios[name]
        median = float(np.median(paired))
        print(f"{name:>8}: refit {min(values):.2f} s (all: "
              f"{', '.join(f'{v:.2f}' for v in values)}); paired ratios "
              f"{', '.join(f'{r:.2f}' for r in paired)}: median {median:.2f}x pass  "
              f"{'PASS' if median <= 8 else 'MISS'} (<= 8x), best {min(paired):.2f}x; "
              f"best refit / median pass {min(values) / p:.2f}x")
    print(f"default / single: {min(times['default']) / min(times['single']):.2f}x; "
          f"single / sampler: {min(times['single']) / min(times['sampler']):.2f}x")
    store_bytes = E.element_size() * E.nelement() + R.element_size() * R.nelement()
    for name in ("single", "sampler"):
        with contexts[name]():
            extra = peak_extra_memory(lambda: refit(R, E, rows, pool))
        if extra is not None:
            print(f"peak memory ({name}): {extra / 2**20:.0f} MiB on top of a "
                  f"{store_bytes / 2**20:.0f} MiB store = {extra / store_bytes:.2f}x  "
                  f"{'PASS' if extra <= store_bytes else 'MISS'} (<= 1x)")


if __name__ == "__main__":
    main()
