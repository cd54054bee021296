"""graft_select: train on a well-chosen subset of the data (GRAFT).

Per chunk of samples, GRAFT takes a low-rank representation (truncated SVD),
keeps the rows of maximal volume (Fast MaxVol) and sizes the subset so that the
kept samples' gradients still approximate the chunk's gradient.

``import graft_select`` is light: it imports neither scikit-learn nor torch nor
cupy. Each public name's module is imported on first use: the estimators
(:mod:`graft_select.selector`, scikit-learn), the kernels (:mod:`graft_select.linalg`,
:mod:`graft_select.gradients`) and the torch sampler (:mod:`graft_select.sampler`,
also reachable as ``graft_select.GraftBatchSampler``).
"""

import importlib as _importlib

__version__ = "0.2.0.dev0"

__all__ = [
    "BudgetWarning",
    "FactoredGradients",
    "GraftBatchSampler",
    "GraftResampler",
    "GraftSelector",
    "LastLayerCapture",
    "RefitReport",
    "StoredGradients",
    "__version__",
    "fast_maxvol",
    "gradient_error",
    "gram_matrix",
    "last_layer_gradients",
    "low_rank_features",
    "nested_gradient_errors",
]


# Public name -> the module that defines it. Every module is imported on first use of
# one of its names (PEP 562): `import graft_select` loads neither scikit-learn (0.9 s)
# nor torch, and the command line starts at once.
_LAZY = {
    "FactoredGradients": "gradients",
    "gradient_error": "gradients",
    "gram_matrix": "gradients",
    "last_layer_gradients": "gradients",
    "nested_gradient_errors": "gradients",
    "fast_maxvol": "linalg",
    "low_rank_features": "linalg",
    "BudgetWarning": "selector",
    "GraftResampler": "selector",
    "GraftSelector": "selector",
    "StoredGradients": "selector",
    "GraftBatchSampler": "sampler",
    "LastLayerCapture": "sampler",
    "RefitReport": "sampler",
}


# Submodules reachable as attributes, as when the package imported them eagerly.
_SUBMODULES = ("gradients", "linalg", "sampler", "selector")


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graft_select' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access is a plain attribute read
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
