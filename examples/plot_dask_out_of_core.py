"""
Out-of-core selection from a dask array on disk
===============================================

When the training set does not fit in memory, :class:`~graft_select.GraftSelector`
selects from a :class:`dask.array.Array`: every block is selected on the worker
that holds it, and only the selected row indices, the subset sizes and the
gradient errors come back. The result is the same as the in-memory fit of the
same data and seed. This example stores a dataset on disk block by block,
selects 10 % of it (subset sizes set by gradient proxies from a warm-start
model, each chunk's picks checked against a uniform subset), and trains on the
selected rows only.

See :doc:`/dask` for how the blocks are planned and what travels.
"""

# %%
# A dataset stored on disk
# ------------------------
# 100,000 rows of 32 features (4 classes), written as a stack of ``.npy`` files,
# one per block of 10,000 rows. ``from_npy_stack`` maps them back lazily: a block
# is read from disk only by the task that uses it. With real data, a zarr store
# or Parquet files play the same role.
import shutil
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from graft_select import FactoredGradients, GraftSelector

X_all, y_all = make_classification(
    n_samples=110_000, n_features=32, n_informative=12, n_classes=4,
    n_clusters_per_class=2, class_sep=1.5, flip_y=0.0, random_state=0)
X_all = X_all.astype(np.float32)
X_test, y_test = X_all[100_000:], y_all[100_000:]

store = Path(tempfile.mkdtemp())
da.to_npy_stack(store / "X", da.from_array(X_all[:100_000], chunks=(10_000, -1)))
da.to_npy_stack(store / "y", da.from_array(y_all[:100_000], chunks=10_000))
del X_all, y_all

X = da.from_npy_stack(store / "X")
y = da.from_npy_stack(store / "y")
print(X)

# %%
# Per-sample gradient proxies, lazily
# -----------------------------------
# A model trained on a small uniform warm-start sample gives logits; the
# last-layer gradient of sample ``i`` is ``(softmax(z_i) - onehot(y_i))`` outer
# ``[x_i, 1]``, kept factored (:class:`~graft_select.FactoredGradients`). Both
# factors are dask arrays chunked like ``X``; nothing is computed yet.
warm = np.random.default_rng(0).choice(100_000, 2_000, replace=False)
warm.sort()
model = LogisticRegression(max_iter=1000).fit(X[warm].compute(), y[warm].compute())

logits = X @ model.coef_.T.astype(np.float32) + model.intercept_.astype(np.float32)
p = da.exp(logits - logits.max(axis=1, keepdims=True))
p = p / p.sum(axis=1, keepdims=True)
onehot = (y[:, None] == da.arange(4)[None, :]).astype(np.float32)
residuals = p - onehot
inputs = da.concatenate([X, da.ones((X.shape[0], 1), chunks=(X.chunks[0], 1),
                                    dtype=np.float32)], axis=1)
inputs = inputs.rechunk({1: -1})  # one block across the columns: whole rows per block
gradients = FactoredGradients(residuals, inputs)

# %%
# Select on a local cluster
# -------------------------
# Two workers stand in for a cluster here (threads, to keep the example fast;
# ``processes=True`` or a ``distributed.Client`` to a real cluster work the
# same). ``chunk_size=256`` picks the per-chunk path, block by block: the blocks
# of 10,000 rows are rechunked to a multiple of it (here 9,984 = 39 x 256 rows).
# The default ``chunk_size=None`` would run the merge-and-reduce tree as a dask
# reduction instead (see :doc:`/dask`). With gradients, MaxVol runs on the
# gradient proxies (``basis="auto"``), which favours the rows with the largest
# residuals: the rows the warm model gets wrong. On this data a
# quarter of the rows are misclassified, far more than a 10 % subset can hold,
# so MaxVol's picks would be a biased sample of hard rows (trained from scratch,
# they scored 0.29 against 0.76 for a uniform 10 %). The default
# ``max_error_ratio="auto"`` checks every chunk: it keeps MaxVol's picks only
# where their gradient error is at most a quarter of a uniform subset's of the
# same size, and the uniform subset otherwise; ``maxvol_chunks_`` says which.
with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                  dashboard_address=None) as cluster, Client(cluster):
    start = time.perf_counter()
    selector = GraftSelector(fraction=0.1, chunk_size=256, random_state=0)
    selector.fit(X, gradients=gradients)
    print(f"selected {selector.sample_indices_.size:,} of {X.shape[0]:,} rows "
          f"in {time.perf_counter() - start:.1f} s")
    uniform = GraftSelector(fraction=0.1, chunk_size=256, strategy="uniform",
                            random_state=0).fit(X, gradients=gradients)

    # transform returns a lazy dask array of the selected rows; compute() brings
    # only those rows into memory.
    X_graft = selector.transform(X).compute()
    y_graft = y[selector.sample_indices_].compute()
    X_uniform = uniform.transform(X).compute()
    y_uniform = y[uniform.sample_indices_].compute()

print(f"chunk sizes: {np.unique(selector.chunk_sizes_).tolist()}, "
      f"subset sizes from {selector.subset_sizes_.min()} to {selector.subset_sizes_.max()} "
      f"rows per chunk (one budget over all chunks)")
print(f"chunks that kept MaxVol's picks: {int(selector.maxvol_chunks_.sum())} of "
      f"{selector.maxvol_chunks_.size}")
print(f"mean gradient error: GRAFT {selector.gradient_error_.mean():.3f}, "
      f"uniform {uniform.gradient_error_.mean():.3f}")

# %%
# Train on the selected rows
# --------------------------
# The same model, trained on the 10 % chosen by GRAFT, on a uniform 10 %, and (for
# reference, in memory) on all rows; accuracy on held-out rows. On this linear
# problem a tenth of the rows already gets close to the full-data accuracy, and
# GRAFT's subset (uniform in the chunks where MaxVol's picks did not pass the
# check) trains as well as the uniform one, not better: the gain of selection
# here is the mechanics, the full array is never in one process. Where MaxVol's
# picks do match the gradient (few hard rows per chunk), the check keeps them;
# ``max_error_ratio=None`` keeps them everywhere (benchmarks/RESULTS.md,
# issue 22, for both cases).
for name, (X_fit, y_fit) in {
    "GRAFT 10 %": (X_graft, y_graft),
    "uniform 10 %": (X_uniform, y_uniform),
    "all rows": (X.compute(), y.compute()),
}.items():
    clf = LogisticRegression(max_iter=1000).fit(X_fit, y_fit)
    print(f"{name:>12}: test accuracy {clf.score(X_test, y_test):.3f}")

shutil.rmtree(store)  # the example's files on disk
