"""GraftBatchSampler: time and memory of one refit against a reference-code-shaped loop.

In the same process, for 50,000 samples with 512-dimensional embeddings and
10-class logits, selection chunks of 256 and fraction 0.3:

- the time of one refit of GraftBatchSampler (observe-only mode, factored
  last-layer gradients, so the 50,000 x 5,130 gradient matrix is never formed);
- the time of a per-chunk Python loop in the shape of the published reference
  code: materialise each chunk's gradient proxies, full SVD per chunk, then a
  pivot loop with a pseudo-inverse at every step. It is timed on a few chunks and
  scaled to all chunks (it is too slow to run on all of them);
- growth of the process's peak resident memory during the refit, against the size
  of the dense gradient matrix.

Target: refit >= 20x faster than the loop; the peak memory growth stays below the
size of the dense gradient matrix (which is never formed).

Usage::

    python benchmarks/bench_sampler.py [--quick]
"""

import argparse
import resource
import time

import numpy as np
import torch

from graft_select.sampler import GraftBatchSampler


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 samples")
    args = parser.parse_args()
    n, d, c, chunk, fraction = (10_000 if args.quick else 50_000), 512, 10, 256, 0.3
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(n, d, generator=g)
    logits = torch.randn(n, c, generator=g)
    targets = torch.randint(0, c, (n,), generator=g)

    sampler = GraftBatchSampler(n, batch_size=chunk, fraction=fraction, warm_start_epochs=1)
    sampler.observe(torch.arange(n), embeddings=embeddings, logits=logits, targets=targets)
    sampler.set_epoch(1)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    plan_len = len(sampler)
    refit_s = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    report = sampler.last_refit

    # Reference-shaped loop on a few chunks, scaled to all of them.
    probs = torch.softmax(logits, 1).numpy()
    residuals = probs - np.eye(c)[targets.numpy()]
    inputs = np.hstack([embeddings.numpy(), np.ones((n, 1), np.float32)])
    n_chunks = n // chunk
    k = round(fraction * chunk)
    r = k
    sample = 3
    start = time.perf_counter()
    for j in range(sample):
        rows = slice(j * chunk, (j + 1) * chunk)
        G = (residuals[rows, :, None] * inputs[rows, None, :]).reshape(chunk, -1)
        reference_chunk(G, k, r)
    reference_s = (time.perf_counter() - start) / sample * n_chunks

    dense_mb = n * c * (d + 1) * 4 / 2**20
    print(f"GraftBatchSampler refit: n={n}, d={d}, C={c}, chunks of {chunk}, fraction {fraction}")
    print(f"  refit seconds              {refit_s:8.2f}  ({plan_len} batches, "
          f"selected fraction {report.fraction:.3f}, mean gradient error "
          f"{report.gradient_error:.3f})")
    print(f"  reference loop seconds     {reference_s:8.2f}  (timed on {sample} chunks, "
          f"scaled to {n_chunks})")
    speedup = reference_s / refit_s
    print(f"  speed-up                   {speedup:8.1f}x  target >= 20x: "
          f"{'PASS' if speedup >= 20 else 'MISS'}")
    print(f"  peak RSS growth (MB)       {peak / 2**20:8.1f}  dense gradient matrix would be "
          f"{dense_mb:.0f} MB (not formed): {'PASS' if peak / 2**20 < dense_mb else 'MISS'}")


if __name__ == "__main__":
    main()
