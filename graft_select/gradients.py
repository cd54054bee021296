"""Per-sample gradient proxies and the gradient-approximation criterion of GRAFT.

The proxies are the closed-form gradients of each sample's loss with respect to
the last linear layer (weight and bias), computed from the logits, the targets
and the penultimate embeddings, without a backward pass. The criterion measures
how well the gradients of a subset of a chunk span the chunk's mean gradient.

Everything is written against the array API: results are in the inputs'
namespace and on their device, and stacks of chunks (leading dimensions) are
processed in one batched call.

This module is the public face of three private ones: ``_proxies`` (the
proxies and :class:`FactoredGradients`), ``_gram`` (Gram matrices) and
``_criterion`` (nested errors and subset errors).
"""

from ._criterion import gradient_error, nested_gradient_errors
from ._gram import gram_matrix
from ._proxies import FactoredGradients, last_layer_gradients

__all__ = [
    "FactoredGradients",
    "gradient_error",
    "gram_matrix",
    "last_layer_gradients",
    "nested_gradient_errors",
]

for _name in __all__:  # documented (and pickled) under the public module's name
    globals()[_name].__module__ = __name__
del _name

# doctest.testmod(graft_select.gradients) finds the examples through __test__
__test__ = {name: globals()[name] for name in __all__}
