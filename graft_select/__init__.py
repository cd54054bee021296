"""graft_select: train on a well-chosen subset of the data (GRAFT).

Per chunk of samples, GRAFT takes a low-rank representation (truncated SVD),
keeps the rows of maximal volume (Fast MaxVol) and sizes the subset so that the
kept samples' gradients still approximate the chunk's gradient.

``import graft_select`` imports neither torch nor cupy; the torch sampler lives in
:mod:`graft_select.sampler` and is imported on first use (``GraftBatchSampler`` is
also reachable as ``graft_select.GraftBatchSampler``).
"""

from .gradients import (
    FactoredGradients,
    gradient_error,
    gram_matrix,
    last_layer_gradients,
    nested_gradient_errors,
)
from .linalg import fast_maxvol, low_rank_features
from .selector import GraftResampler, GraftSelector

__version__ = "0.1.0"

__all__ = [
    "FactoredGradients",
    "GraftBatchSampler",
    "GraftResampler",
    "GraftSelector",
    "LastLayerCapture",
    "RefitReport",
    "__version__",
    "fast_maxvol",
    "gradient_error",
    "gram_matrix",
    "last_layer_gradients",
    "low_rank_features",
    "nested_gradient_errors",
]


def __getattr__(name):
    # The sampler imports torch: load it only when asked for.
    if name in ("GraftBatchSampler", "LastLayerCapture", "RefitReport"):
        from . import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module 'graft_select' has no attribute {name!r}")
