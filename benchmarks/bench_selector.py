"""GraftSelector: gradient-error evidence on load_digits and fit speed.

Prints ratios measured in this process (the machines are noisy; absolute times
mean little):

- gradient error: on standardised load_digits with proxies (p - onehot) outer
  [x, 1] from a fitted multinomial logistic regression, batch_size=128 and
  fraction=0.25, the mean over chunks of the relative error of each chunk's mean
  gradient (least-squares weights on the selected rows), GRAFT / uniform, for
  MaxVol on the gradient proxies, on the inputs, and with uniform_share=0.5
  (target <= 0.35x);
- speed: fit on a dense 200,000 x 256 float32 array (batch_size=256) and on a
  sparse 100,000 x 10,000 CSR array, against sklearn's
  TruncatedSVD(algorithm="randomized") with the same number of components fit on
  the same input (target <= 1.5x), and peak traced memory of each.

Usage::

    python benchmarks/bench_selector.py            # full sizes (a few minutes)
    python benchmarks/bench_selector.py --quick    # small sizes (seconds)
"""

import argparse
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp
from sklearn.datasets import load_digits
from sklearn.decomposition import TruncatedSVD
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from graft_select import GraftSelector


def digits_gradient_ratios():
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    model = LogisticRegression(max_iter=2000).fit(X, y)
    residuals = model.predict_proba(X) - np.eye(10)[y]
    inputs = np.hstack([X, np.ones((len(X), 1))])
    G = (residuals[:, :, None] * inputs[:, None, :]).reshape(len(X), -1)
    uniform = np.mean([
        np.mean(GraftSelector(fraction=0.25, chunk_size=128, strategy="uniform",
                              random_state=s).fit(X, gradients=G).gradient_error_)
        for s in range(5)])
    rows = []
    for label, kwargs in [
        ("MaxVol on gradient proxies", {"basis": "gradients"}),
        ("MaxVol on gradient proxies, uniform_share=0.5",
         {"basis": "gradients", "uniform_share": 0.5}),
        ("MaxVol on inputs", {"basis": "input"}),
    ]:
        sel = GraftSelector(fraction=0.25, chunk_size=128, random_state=0, **kwargs)
        sel.fit(X, gradients=G)
        error = float(np.mean(sel.gradient_error_))
        rows.append((label, error, error / uniform, len(sel.sample_indices_) / len(X)))
    print("\nGradient error on load_digits (batch_size=128, fraction=0.25), "
          f"uniform mean error {uniform:.4f} (5 seeds)")
    print(f"{'selection':50s} {'error':>8s} {'/uniform':>9s} {'fraction':>9s} target<=0.35")
    for label, error, ratio, share in rows:
        flag = "PASS" if ratio <= 0.35 else "MISS"
        print(f"{label:50s} {error:8.4f} {ratio:9.3f} {share:9.3f} {flag}")


def timed(fn, repeats):
    best, peak = np.inf, 0
    for _ in range(repeats):
        tracemalloc.start()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return best, peak


def speed(quick):
    rng = np.random.default_rng(0)
    n_dense = 20_000 if quick else 200_000
    n_sparse, d_sparse = (10_000, 2_000) if quick else (100_000, 10_000)
    dense = (rng.standard_normal((n_dense, 32), dtype=np.float32)
             @ rng.standard_normal((32, 256), dtype=np.float32)
             + 0.1 * rng.standard_normal((n_dense, 256), dtype=np.float32))
    sparse = sp.random(n_sparse, d_sparse, density=0.001, format="csr", random_state=0,
                       dtype=np.float64)
    repeats = 1 if not quick else 2
    print("\nFit time against TruncatedSVD(algorithm='randomized') on the same input "
          "(target <= 1.5x)")
    print(f"{'input':42s} {'graft s':>8s} {'tsvd s':>8s} {'ratio':>6s} "
          f"{'graft MB':>9s} {'tsvd MB':>8s}")
    cases = [
        (f"dense {n_dense}x256 float32, batch_size=256", dense, 256, 64),
        (f"sparse CSR {n_sparse}x{d_sparse}, batch_size=256", sparse, 256, 64),
    ]
    for label, X, batch, r in cases:
        graft_s, graft_mem = timed(
            lambda X=X, batch=batch: GraftSelector(fraction=0.25, chunk_size=batch,
                                                   random_state=0).fit(X), repeats)
        tsvd_s, tsvd_mem = timed(
            lambda X=X, r=r: TruncatedSVD(r, algorithm="randomized", random_state=0).fit(X),
            repeats)
        ratio = graft_s / tsvd_s
        flag = "PASS" if ratio <= 1.5 else "MISS"
        print(f"{label:42s} {graft_s:8.2f} {tsvd_s:8.2f} {ratio:6.2f} "
              f"{graft_mem / 2**20:9.1f} {tsvd_mem / 2**20:8.1f} {flag}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    args = parser.parse_args()
    digits_gradient_ratios()
    speed(args.quick)


if __name__ == "__main__":
    main()
