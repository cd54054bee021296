"""GraftBatchSampler: refit time and memory against a pass over the store (issue 9).

For each size n (a fresh subprocess per size, so the peak-memory figures are its
own): a GraftBatchSampler in observe-only mode with 512-d float32 embeddings and
10-class logits recorded for every sample (factored last-layer gradients, so the
n x 5,130 gradient matrix is never formed), selection chunks of 256, fraction
0.3, the default selector. In the same process:

- ``pass``: one product ``store @ R`` of the embeddings with a random 512 x 64
  float32 matrix (the cost of reading the store once, with a little arithmetic),
  the median of 5;
- ``refit``: the time of one refit, the median of ``--repeats`` refits (one per
  epoch after the warm start);
- ``peak``: growth of the resident memory during a refit over its size just
  before (the peak is reset before each refit through /proc/self/clear_refs;
  elsewhere the peak since the start is used), the largest of the refits,
  against the store's size (embeddings and residuals).

Targets (issue 9): refit <= 8x pass at 300,000 and 1,000,000 rows; peak growth
<= the store's size. The store is filled batch by batch so that the peak before
the refit is the store itself.

``--reference`` also times a per-chunk Python loop in the shape of the published
reference code (dense proxies, full SVD, a pivot loop with a pseudo-inverse per
step) on a few chunks of 50,000 samples, scaled to all chunks.

Usage::

    python benchmarks/bench_sampler.py [--sizes 300000 1000000] [--threads 1] [--reference]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _reset_peak():
    """Reset the peak resident size (Linux: VmHWM); return the current size in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as out:
            out.write("5")
        return _status_mb("VmRSS")
    except OSError:  # not Linux, or not permitted: peak since start, as ru_maxrss
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_growth(before_mb):
    """Peak resident size since `_reset_peak`, minus the size then, in MB."""
    try:
        return _status_mb("VmHWM") - before_mb
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before_mb


def _status_mb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def child(n, threads, repeats):
    """One size in this process: print a JSON line of the figures."""
    import torch

    from graft_select.sampler import GraftBatchSampler

    torch.set_num_threads(threads)
    d, c, chunk, fraction = 512, 10, 256, 0.3
    g = torch.Generator().manual_seed(0)
    sampler = GraftBatchSampler(n, batch_size=chunk, fraction=fraction, warm_start_epochs=1,
                                refit_every=1)
    step = 16384
    for begin in range(0, n, step):
        idx = torch.arange(begin, min(begin + step, n))
        sampler.observe(idx, embeddings=torch.randn(len(idx), d, generator=g),
                        logits=torch.randn(len(idx), c, generator=g),
                        targets=torch.randint(0, c, (len(idx),), generator=g))
    store = sampler._recorder.store
    store_mb = sum(v.numel() * v.element_size() for v in store.values()) / 2**20
    R = torch.randn(d, 64, generator=g)
    emb = store["embeddings"]
    emb @ R  # warm-up
    passes = []
    for _ in range(5):
        start = time.perf_counter()
        emb @ R
        passes.append(time.perf_counter() - start)
    refits, peaks = [], []
    for epoch in range(1, repeats + 1):  # refit_every=1: every epoch refits
        sampler.set_epoch(epoch)
        rss_before = _reset_peak()
        start = time.perf_counter()
        len(sampler)
        refits.append(time.perf_counter() - start)
        peaks.append(_peak_growth(rss_before))
    report = sampler.last_refit
    print(json.dumps({"n": n, "pass_s": float(np.median(passes)),
                      "refit_s": float(np.median(refits)), "peak_mb": max(peaks),
                      "store_mb": store_mb, "fraction": report.fraction,
                      "gradient_error": report.gradient_error}))


def reference_chunk(G, k, r):
    """One chunk the way the reference code does it (its loop, without its bugs)."""
    U = np.linalg.svd(G, full_matrices=False)[0][:, :r]
    chosen = []
    for _ in range(k):
        if chosen:
            basis = U[chosen]
            residual = U - (U @ np.linalg.pinv(basis)) @ basis
        else:
            residual = U
        norms = np.linalg.norm(residual, axis=1)
        norms[chosen] = -1
        chosen.append(int(np.argmax(norms)))
    return chosen


def reference(threads):
    """Refit of 50,000 samples against the reference-shaped loop (scaled from 3 chunks)."""
    import torch

    from graft_select.sampler import GraftBatchSampler

    torch.set_num_threads(threads)
    n, d, c, chunk, fraction = 50_000, 512, 10, 256, 0.3
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(n, d, generator=g)
    logits = torch.randn(n, c, generator=g)
    targets = torch.randint(0, c, (n,), generator=g)
    sampler = GraftBatchSampler(n, batch_size=chunk, fraction=fraction, warm_start_epochs=1)
    sampler.observe(torch.arange(n), embeddings=embeddings, logits=logits, targets=targets)
    sampler.set_epoch(1)
    start = time.perf_counter()
    len(sampler)
    refit_s = time.perf_counter() - start
    probs = torch.softmax(logits, 1).numpy()
    residuals = probs - np.eye(c)[targets.numpy()]
    inputs = np.hstack([embeddings.numpy(), np.ones((n, 1), np.float32)])
    k = round(fraction * chunk)
    start = time.perf_counter()
    for j in range(3):
        rows = slice(j * chunk, (j + 1) * chunk)
        G = (residuals[rows, :, None] * inputs[rows, None, :]).reshape(chunk, -1)
        reference_chunk(G, k, k)
    reference_s = (time.perf_counter() - start) / 3 * (n // chunk)
    print(f"reference loop, n={n}: refit {refit_s:.2f} s, loop {reference_s:.2f} s "
          f"(3 chunks scaled to {n // chunk}): speed-up {reference_s / refit_s:.1f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--reference", action="store_true",
                        help="also time the reference-shaped loop at 50,000 samples")
    parser.add_argument("--repeats", type=int, default=3,
                        help="refits per size (the median is reported, passes: median of 5)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.threads, args.repeats)
        return
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"GraftBatchSampler refit: d=512, C=10, chunks of 256, fraction 0.3, "
          f"{args.threads} thread(s)")
    print(f"{'n':>10} {'pass s':>8} {'refit s':>8} {'ratio':>7} {'peak MB':>8} "
          f"{'store MB':>9} {'peak/store':>10}  error  targets (ratio <= 8, peak <= store)")
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--threads",
                              str(args.threads), "--repeats", str(args.repeats)], env=env,
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        ratio = r["refit_s"] / r["pass_s"]
        share = r["peak_mb"] / r["store_mb"]
        verdict = "PASS" if ratio <= 8 and share <= 1 else "MISS"
        print(f"{n:>10} {r['pass_s']:8.3f} {r['refit_s']:8.2f} {ratio:7.1f} "
              f"{r['peak_mb']:8.0f} {r['store_mb']:9.0f} {share:10.2f}  "
              f"{r['gradient_error']:.3f}  {verdict}")
    if args.reference:
        reference(args.threads)


if __name__ == "__main__":
    main()
