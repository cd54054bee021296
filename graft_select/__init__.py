"""graft_select: train on a well-chosen subset of the data (GRAFT).

Per chunk of samples, GRAFT takes a low-rank representation (truncated SVD),
keeps the rows of maximal volume (Fast MaxVol) and sizes the subset so that the
kept samples' gradients still approximate the chunk's gradient.

``import graft_select`` imports neither torch nor cupy; the torch sampler lives in
:mod:`graft_select.sampler` and is imported on first use.
"""

from .linalg import fast_maxvol, low_rank_features

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "fast_maxvol",
    "low_rank_features",
]
