"""The user guide's pipeline figure: one chunk through the four steps of GRAFT.

Run by the matplotlib ``plot`` directive of ``user_guide.rst`` while the docs are
built (nothing is committed but this script). Every panel is computed with
graft_select on a chunk of 128 digits (pixel intensities in [0, 1]) and the
gradients of a logistic regression.
"""

from itertools import pairwise

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import ConnectionPatch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from graft_select import (
    fast_maxvol,
    last_layer_gradients,
    low_rank_features,
    nested_gradient_errors,
)

B, R, FRACTION, TOL = 128, 12, 0.25, 0.25

X, y = load_digits(return_X_y=True)
Z = X / 16.0
model = LogisticRegression(max_iter=500).fit(Z[::8], y[::8])
chunk = slice(0, B)
X_b, y_b = Z[chunk], y[chunk]

U = low_rank_features(X_b, R, random_state=0)
k_min, k_max = int(FRACTION / 2 * B), int(2 * FRACTION * B)
order = fast_maxvol(U, k_max)
G = last_layer_gradients(model.decision_function(X_b), y_b, X_b, factored=True)
errors = nested_gradient_errors(G, order)
k_range = np.arange(1, k_max + 1)
within = np.flatnonzero((k_range >= k_min) & (errors <= TOL))
k = int(k_range[within[0]]) if within.size else k_max
chosen = order[:k]

fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), gridspec_kw={"wspace": 0.3})
ax = axes[0]
ax.imshow(X_b, aspect="auto", cmap="viridis", interpolation="nearest")
ax.set_title(f"1. chunk $X_b$\n{B} samples x {X_b.shape[1]} features", fontsize=10)
ax.set_xlabel("feature")
ax.set_ylabel("sample")

ax = axes[1]
ax.imshow(U, aspect="auto", cmap="coolwarm", interpolation="nearest")
ax.scatter(np.full(k, R - 0.5), chosen, marker="<", color="k", s=12, clip_on=False)
ax.set_title(f"2. low-rank features $U_r$\n(truncated SVD, r = {R})", fontsize=10)
ax.set_xlabel("singular direction")
ax.set_yticks([])

ax = axes[2]
ax.scatter(U[:, 1], U[:, 2], s=10, color="0.65", label="chunk")
ax.scatter(U[chosen, 1], U[chosen, 2], s=28, color="C3", label="MaxVol rows")
ax.set_title(f"3. Fast MaxVol on $U_r$\nrows of maximal volume (first {k})", fontsize=10)
ax.set_xlabel("$u_2$ (rows of $U_r$ on two of its r directions)", fontsize=8)
ax.set_ylabel("$u_3$", labelpad=-2)
ax.set_xticks([])
ax.set_yticks([])
ax.legend(fontsize=8, loc="best")

ax = axes[3]
ax.axvspan(k_min, k_max, color="C2", alpha=0.12, label="allowed sizes")
ax.plot(k_range, errors, color="C0", label="gradient error")
ax.axhline(TOL, color="0.4", ls=":", lw=1)
ax.axvline(k, color="C3", lw=1.5, label=f"chosen k = {k}")
ax.set_title("4. subset size k: relative error\nof the chunk's mean gradient", fontsize=10)
ax.set_xlabel("k (first k MaxVol rows)")
ax.yaxis.tick_right()
ax.set_ylim(0, 1.02)
ax.legend(fontsize=8, loc="upper right")

for left, right in pairwise(axes):
    arrow = ConnectionPatch(xyA=(1.04, 0.5), coordsA=left.transAxes, xyB=(-0.12, 0.5),
                            coordsB=right.transAxes, arrowstyle="-|>", mutation_scale=18,
                            lw=1.8, color="0.3")
    fig.add_artist(arrow)
fig.subplots_adjust(left=0.05, right=0.97, bottom=0.16, top=0.82)
