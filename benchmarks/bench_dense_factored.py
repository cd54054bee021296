"""Dense and factored gradients of the same proxies: how many selected rows agree (issue 22).

Run: python benchmarks/bench_dense_factored.py [--seeds N]

The gradients of a random softmax model on Gaussian embeddings, passed to
``GraftSelector.fit`` once as ``FactoredGradients(R, H)`` and once as the dense
``G = materialize()``. For each case (rows x embedding width, chunking) and
seed, the share of the factored fit's rows that the dense fit also selects,
with ``svd_method`` "auto" (the default) and "exact".
"""

import argparse
import warnings

import numpy as np

from graft_select import FactoredGradients, GraftSelector

CASES = {  # name: (rows, embedding width d, classes, chunk_size)
    "600x128": (600, 127, 8, 200),
    "3000x256": (3000, 255, 8, 500),
    "3000 tree": (3000, 63, 4, None),
}


def proxies(n, d, c, seed):
    rng = np.random.default_rng(seed)
    H = np.hstack([rng.standard_normal((n, d)), np.ones((n, 1))])
    logits = H @ rng.standard_normal((d + 1, c)) * 0.3
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(c, size=n)
    R = p - np.eye(c)[y]
    return H[:, :d], FactoredGradients(R, H)


def agreement(X, F, seed, **params):
    fits = []
    for G in (F, F.materialize()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.append(GraftSelector(0.2, random_state=seed, **params).fit(X, gradients=G))
    a, b = (set(np.asarray(s.sample_indices_).tolist()) for s in fits)
    return len(a & b) / len(a)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print("| case | svd_method | same rows (mean, min over seeds) |")
    print("|---|---|---|")
    for name, (n, d, c, chunk_size) in CASES.items():
        for method in ("auto", "exact"):
            shares = [agreement(*proxies(n, d, c, seed), seed, chunk_size=chunk_size,
                                svd_method=method) for seed in range(args.seeds)]
            print(f"| {name} | {method} | {np.mean(shares):.3f}, {np.min(shares):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
