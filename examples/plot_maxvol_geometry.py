"""
MaxVol geometry in two dimensions
=================================

Fast MaxVol picks the rows of a tall matrix whose submatrix has the largest
volume. With two columns every row is a point in the plane, and the geometry
of that choice can be drawn: this example shows what "maximal volume" means,
why it makes the chosen points diverse, and what it does to a data set with
clusters of very different sizes.
"""

# %%
# Two points of maximal area
# --------------------------
# For a matrix ``A`` with ``r = 2`` columns, the volume of the 2 x 2 submatrix
# ``A[[i, j]]`` is ``|det A[[i, j]]|``: the area of the parallelogram spanned
# by the two points, seen as vectors from the origin. :func:`~graft_select.fast_maxvol`
# picks the point farthest from the origin first, then the point with the largest
# component orthogonal to it. With ``refine=True`` it keeps swapping points until
# no swap grows the area by more than ``tol``: the pair is then *dominant*.
#
# Dominance has a direct geometric reading. Every point is a combination
# ``a = c_1 a_i + c_2 a_j`` of the two chosen ones, with coefficients given by
# ``A @ inv(A[[i, j]])``; for a dominant pair all of them satisfy
# ``|c| <= tol``. So the whole cloud lies in the parallelogram with corners
# ``+-a_i +- a_j``: the two chosen points describe every other point with
# bounded coefficients.
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Polygon

from graft_select import fast_maxvol, low_rank_features

rng = np.random.default_rng(0)
A = rng.standard_normal((300, 2)) @ np.array([[2.0, 0.6], [0.0, 0.7]])

picked = fast_maxvol(A, refine=True, tol=1.01)
coefficients = A @ np.linalg.inv(A[picked])
print(f"MaxVol pair {picked.tolist()}: area {abs(np.linalg.det(A[picked])):.2f}, "
      f"largest |coefficient| {np.abs(coefficients).max():.3f}")

random_pair = rng.choice(len(A), size=2, replace=False)
random_coefficients = A @ np.linalg.inv(A[random_pair])
outside = int((np.abs(random_coefficients).max(axis=1) > 1.01).sum())
print(f"random pair {random_pair.tolist()}: area {abs(np.linalg.det(A[random_pair])):.2f}, "
      f"{outside} of {len(A)} points need a coefficient above 1.01")


def draw_pair(ax, rows, title):
    """Scatter A, draw the two rows as vectors and their parallelogram +-a +- b."""
    a, b = A[rows]
    corners = np.array([a + b, a - b, -a - b, -a + b])
    ax.add_patch(Polygon(corners, closed=True, alpha=0.15, color="C1"))
    ax.scatter(A[:, 0], A[:, 1], s=8, color="0.55")
    for vector in (a, b):
        ax.annotate("", xy=vector, xytext=(0, 0),
                    arrowprops={"arrowstyle": "->", "color": "C3", "lw": 2})
    ax.scatter(*A[rows].T, s=60, color="C3", zorder=3)
    ax.set_title(title)
    ax.set_aspect("equal")


fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=True)
draw_pair(axes[0], picked, "MaxVol pair: every point inside")
draw_pair(axes[1], random_pair, f"random pair: {outside} points outside")
fig.tight_layout()

# %%
# More points than columns
# ------------------------
# GRAFT keeps ``k > r`` samples per chunk. Beyond the first ``r`` pivots,
# :func:`~graft_select.fast_maxvol` adds, one at a time, the point that is worst
# described by the points chosen so far (the largest norm of its coefficients,
# rectangular MaxVol). Each addition multiplies ``det(A_I.T @ A_I)`` by
# ``1 + ||c||^2``, so the volume grows as fast as the greedy rule allows, and the
# points spread around the cloud instead of piling up in its dense centre.
k = 12
order = fast_maxvol(A, k)
uniform = rng.choice(len(A), size=k, replace=False)


def log_volume(rows):
    """log sqrt(det(A_I.T @ A_I)), the volume of a k x 2 submatrix."""
    return 0.5 * np.linalg.slogdet(A[rows].T @ A[rows])[1]


random_volumes = [log_volume(rng.choice(len(A), size=k, replace=False)) for _ in range(2000)]
print(f"log-volume of the MaxVol {k}-subset: {log_volume(order):.2f}; "
      f"random {k}-subsets: median {np.median(random_volumes):.2f}, "
      f"best of 2000 {np.max(random_volumes):.2f}")

fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
for ax, rows, title in [(axes[0], order, f"MaxVol, k={k}"), (axes[1], uniform, f"uniform, k={k}")]:
    ax.scatter(A[:, 0], A[:, 1], s=8, color="0.7")
    ax.scatter(*A[rows].T, s=45, color="C3" if rows is order else "C0", zorder=3)
    ax.set_title(title)
    ax.set_aspect("equal")
for rank, (x, y) in enumerate(A[order][:4]):
    axes[0].annotate(str(rank + 1), (x, y), xytext=(4, 4), textcoords="offset points")
axes[2].hist(random_volumes, bins=40, color="C0", alpha=0.7, label="random subsets")
axes[2].axvline(log_volume(order), color="C3", lw=2, label="MaxVol")
axes[2].set_xlabel(f"log-volume of a {k}-subset")
axes[2].legend(loc="upper left")
fig.tight_layout()

# %%
# Clusters of different sizes
# ---------------------------
# In GRAFT, MaxVol does not run on the raw rows but on the chunk's orthonormal
# factor ``U`` from :func:`~graft_select.low_rank_features`: row ``i`` of ``U`` is
# sample ``i`` in coordinates where every dominant direction of the chunk has
# unit length. Here a chunk holds three clusters of 240, 50 and 10 samples. In
# ``U`` the small cluster's direction counts as much as the large one's, so
# MaxVol takes samples from each of them, while a uniform draw of the same size
# mostly sees the large cluster: this is why GRAFT subsets cover rare modes
# (see also the imbalanced-learn example).
centres = np.array([[4.0, 0.5, 0.0], [0.5, 4.0, 0.5], [0.0, 0.5, 4.0]])
sizes = [240, 50, 10]
cluster = np.repeat(np.arange(3), sizes)
X = centres[cluster] + 0.6 * rng.standard_normal((sum(sizes), 3))

U = low_rank_features(X, 3, random_state=0)
chosen = fast_maxvol(U, 15)
drawn = rng.choice(len(X), size=15, replace=False)
print("samples per cluster (240, 50, 10):")
print("  MaxVol :", np.bincount(cluster[chosen], minlength=3).tolist())
print("  uniform:", np.bincount(cluster[drawn], minlength=3).tolist())

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
colors = np.array(["C0", "C2", "C4"])
for ax, rows, title in [(axes[0], chosen, "MaxVol on U (15 samples)"),
                        (axes[1], drawn, "uniform (15 samples)")]:
    ax.scatter(X[:, 0], X[:, 1], s=8, c=colors[cluster], alpha=0.35)
    ax.scatter(X[rows, 0], X[rows, 1], s=70, facecolors="none", edgecolors="k", lw=1.5)
    ax.set_title(title)
    ax.set_xlabel("feature 0")
axes[0].set_ylabel("feature 1")
fig.tight_layout()
plt.show()
