"""
Selecting samples of the digits data set
========================================

:class:`~graft_select.GraftSelector` keeps a fraction of the rows of ``X``: per
chunk it computes the chunk's dominant singular vectors, orders the rows by
Fast MaxVol and keeps a prefix of that order. This example looks at what it
keeps from scikit-learn's 8 x 8 handwritten digits, how that differs from a
uniform draw of the same size, and how per-sample gradients change the size of
each chunk's subset.
"""

# %%
# Fit the selector
# ----------------
# ``fraction=0.05`` keeps 5% of the training rows. Without ``batch_size`` the
# whole training set is one chunk; ``sample_indices_`` lists the kept rows in
# MaxVol pivot order, most "volume" first.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from graft_select import GraftSelector, last_layer_gradients

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.3, stratify=y, random_state=0)

selector = GraftSelector(fraction=0.05, random_state=0).fit(X_train)
graft_rows = selector.sample_indices_
uniform_rows = GraftSelector(fraction=0.05, strategy="uniform",
                             random_state=0).fit(X_train).sample_indices_
print(f"kept {len(graft_rows)} of {len(X_train)} rows in {selector.fit_time_:.2f} s")
print("per class, GRAFT  :", np.bincount(y_train[graft_rows], minlength=10).tolist())
print("per class, uniform:", np.bincount(y_train[uniform_rows], minlength=10).tolist())

# %%
# The chosen samples
# ------------------
# The first MaxVol pivots are the rows that are hardest to express through the
# rows already chosen: bold, thin, slanted and otherwise unusual digits. A
# uniform subset of the same size looks like the data set's average digit.


def show_digits(rows, title):
    fig, axes = plt.subplots(4, 12, figsize=(9, 3.3))
    for ax, row in zip(axes.ravel(), rows):
        ax.imshow(X_train[row].reshape(8, 8), cmap="gray_r", interpolation="nearest")
        ax.set_title(str(y_train[row]), fontsize=8, pad=2)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()


show_digits(graft_rows[:48], "GRAFT: the first 48 MaxVol pivots")
show_digits(uniform_rows[:48], "uniform: 48 random rows")

# %%
# Where they lie
# --------------
# In the first two principal components the uniform rows follow the density of
# each class. The MaxVol rows do not: many lie between the classes, where the
# ambiguous digits are, and the classes are unevenly represented (as the counts
# printed above show). Spanning the data (large volume) and being typical of it
# are different goals.
projection = PCA(n_components=2, random_state=0).fit(X_train).transform(X_train)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.3), sharex=True, sharey=True)
for ax, rows, title in [(axes[0], graft_rows, "GRAFT"), (axes[1], uniform_rows, "uniform")]:
    ax.scatter(*projection.T, c=y_train, cmap="tab10", s=6, alpha=0.25)
    ax.scatter(*projection[rows].T, c=y_train[rows], cmap="tab10", vmin=0, vmax=9,
               s=45, edgecolors="k")
    ax.set_title(f"{title}: {len(rows)} rows")
    ax.set_xlabel("PC 1")
axes[0].set_ylabel("PC 2")
fig.tight_layout()

# %%
# Does a model trained on the subset do well?
# -------------------------------------------
# Compare a logistic regression trained on GRAFT subsets with one trained on
# uniform subsets of the same size (mean over five seeds), at several fractions,
# and with ``batch_size=256`` (selection per chunk of 256 rows, as in training).
# The numbers are computed when this page is built. For a *static* subset and a
# linear model, a subset made only of extreme samples can lose to a uniform one;
# that is why the torch sampler mixes uniform picks into each chunk
# (``uniform_share``), refits every epoch from the model's own gradients, and why
# every GRAFT result should be read next to the uniform baseline at the same budget.


def test_accuracy(rows):
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return model.fit(X_train[rows], y_train[rows]).score(X_test, y_test)


print(f"{'fraction':>8} {'chunk':>6} {'GRAFT':>7} {'GRAFT+u':>8} {'uniform':>13}")
for fraction in (0.05, 0.1, 0.2):
    for batch_size in (None, 256):
        common = {"fraction": fraction, "batch_size": batch_size}
        graft = test_accuracy(GraftSelector(**common, random_state=0).fit(X_train)
                              .sample_indices_)
        mixed = test_accuracy(GraftSelector(**common, uniform_share=0.5, random_state=0)
                              .fit(X_train).sample_indices_)
        uniform = [test_accuracy(GraftSelector(**common, strategy="uniform", random_state=s)
                                 .fit(X_train).sample_indices_) for s in range(5)]
        print(f"{fraction:>8} {batch_size or 'all':>6} {graft:>7.3f} {mixed:>8.3f} "
              f"{np.mean(uniform):>7.3f}+-{np.std(uniform):.3f}")

# %%
# Subset sizes from gradients
# ---------------------------
# With per-sample gradient proxies, the subset size is no longer the same in
# every chunk. Here a logistic regression trained on a tenth of the data plays
# the model; :func:`~graft_select.last_layer_gradients` turns its logits and the
# inputs (the "embeddings" of a linear model) into the gradients of each sample's
# loss with respect to the weights, kept factored (never formed). The selector
# then gives every chunk of 128 rows between ``fraction / 2`` and
# ``2 * fraction`` of its rows so that the chosen rows' gradients approximate the
# chunk's mean gradient about equally well in every chunk, at the same total.
scale = StandardScaler().fit(X_train)
Z_train = scale.transform(X_train)
warm = LogisticRegression(max_iter=300).fit(Z_train[::10], y_train[::10])
gradients = last_layer_gradients(warm.decision_function(Z_train), y_train, Z_train,
                                 factored=True)

common = {"fraction": 0.1, "batch_size": 128, "random_state": 0}
by_gradient = GraftSelector(basis="gradients", **common).fit(Z_train, gradients=gradients)
by_uniform = GraftSelector(strategy="uniform", **common).fit(Z_train, gradients=gradients)
print("rows kept per chunk, GRAFT  :", by_gradient.subset_sizes_.tolist())
print("rows kept per chunk, uniform:", by_uniform.subset_sizes_.tolist())
print(f"mean relative gradient error: GRAFT {by_gradient.gradient_error_.mean():.3f}, "
      f"uniform {by_uniform.gradient_error_.mean():.3f}")

fig, ax = plt.subplots(figsize=(7, 3.5))
chunks = np.arange(len(by_gradient.subset_sizes_))
ax.bar(chunks - 0.2, by_gradient.gradient_error_, width=0.4, label="GRAFT (gradient basis)")
ax.bar(chunks + 0.2, by_uniform.gradient_error_, width=0.4, label="uniform")
ax.set_xlabel("chunk of 128 rows")
ax.set_ylabel("relative gradient error")
ax.set_title("How well the kept rows' gradients span each chunk's mean gradient")
ax.legend()
fig.tight_layout()
plt.show()

# %%
# A small gradient error says that a weighted loss on the subset (weights in
# ``sample_weight_``) follows the chunk's mean gradient at the current model.
# It is a statement about one step, not about the final accuracy of a model
# trained on a fixed subset: the gradients change as the model trains, which is
# what :class:`~graft_select.sampler.GraftBatchSampler` handles by refitting (see
# the training-loop example).
