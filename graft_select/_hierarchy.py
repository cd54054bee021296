"""Merge-and-reduce selection: the tree that ``chunk_size=None`` runs.

Chunks of at most 4096 rows (``_sizing.default_chunks``, the *leaves*) each
keep a candidate set, the first pivots of their Fast MaxVol order; the
candidates of ``FAN_IN`` consecutive nodes are pooled and reduced again, as a
tree, until one pool holds the candidates of all leaves of a *group*. A node
keeps `node_candidates` rows: the group's rank (the directions any part of
the data may hold) plus ``NODE_SHARE`` times its leaves' share of the group's
``k`` candidates (the larger of their share of its rows and of its mass, the
rows' norms to the 8th power), at most ``k``. The pool of the group's root (at
most ``FAN_IN * k <= 4096`` rows) is selected from as one chunk of all the group's rows: its
MaxVol order is the group's order, and with gradients the size criterion
measures the error of the group's mean gradient (over all its rows, not just
the candidates) by the order's prefixes.

``k`` is ``CANDIDATE_SHARE`` times the group's budget ``round(fraction *
rows)`` (and at least its largest subset size ``k_hi``: with gradients the
band's top, twice the budget), at most `max_candidates` (512): a group holds as many leaves as
that bound allows (all of them at small fractions); a larger budget splits the
rows into several groups of consecutive leaves, each a tree of its own, and
the budget is shared among the groups as among chunks. When no group of two
leaves fits (large fractions: the budget is over a quarter of the rows with
the defaults), ``plan_tree`` returns None and every leaf selects on its own.

The tree's shape is that of :meth:`dask.bag.Bag.reduction` with
``split_every=FAN_IN`` over the group's leaves (`reduce_levels` mirrors its
loop), and every node's generator is seeded from the plan's seed and the
node's leaves, so the in-memory tree and the dask reduction (`_dask_tree`)
compute the same nodes, bit for bit.
"""

import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np

from . import _sizing
from ._backend import from_numpy, get_namespace, is_sparse, single_threaded, to_numpy
from ._criterion import gradient_error_unchecked
from ._orders import InMemorySource, prefix_errors, stack_order, subset_errors
from ._proxies import FactoredGradients
from ._selection import largest_sizes, rank
from ._sizing import default_chunks

#: Candidates a node keeps, as a multiple of its group's largest subset size.
CANDIDATE_SHARE = 2.0
#: Nodes pooled per merge (``split_every`` of the dask reduction).
FAN_IN = 8
#: A node keeps the group's rank plus this multiple of its share of the group's candidates.
NODE_SHARE = 2
#: A leaf's mass is the sum of its rows' norms to this power (`leaf_mass`).
MASS_POWER = 8


def max_candidates():
    """Most candidates a node keeps: ``FAN_IN`` nodes' pool fits a leaf (512 rows)."""
    return _sizing.DEFAULT_CHUNK_ROWS // FAN_IN


@dataclasses.dataclass(frozen=True)
class GroupTask:
    """What every node of one group's tree needs (sent to the dask workers).

    ``params`` are the fit's, with ``n_components`` set to the group's rank
    and no uniform share or refinement (the candidates are MaxVol pivots only).
    """

    params: Any
    k: int
    seed: int
    first: int
    last: int
    mass: tuple = ()


@dataclasses.dataclass(frozen=True)
class TreePlan:
    """Leaves, groups and per-group sizes of a merge-and-reduce selection."""

    leaves: list
    groups: list
    k_hi: np.ndarray
    candidates: np.ndarray
    ranks: np.ndarray
    seed: int
    fan_in: int = FAN_IN
    #: Cumulative masses of the leaves (`leaf_mass`), length ``len(leaves) + 1``, or None.
    mass: Any = None

    @property
    def chunks(self):
        """Row bounds of the groups: the chunks the sizes, picks and errors are per."""
        return [(self.leaves[f][0], self.leaves[last - 1][1]) for f, last in self.groups]

    def task(self, params, g):
        """The `GroupTask` of group ``g``."""
        node_params = dataclasses.replace(params, n_components=int(self.ranks[g]),
                                          uniform_share=0.0, refine=False)
        first, last = self.groups[g]
        mass = () if self.mass is None else tuple(float(v) for v in self.mass[first:last + 1])
        return GroupTask(node_params, int(self.candidates[g]), self.seed, first, last, mass)

    def with_masses(self, masses):
        """This plan with the leaves' masses (one float per leaf, in leaf order)."""
        return dataclasses.replace(self, mass=np.concatenate([[0.0], np.cumsum(masses)]))


class Node(NamedTuple):
    """A node's candidates: leaves ``[first, last)``, global rows, their X and
    gradient rows, and the sum of the gradients of all the node's rows."""

    first: int
    last: int
    rows: np.ndarray
    X: Any
    G: Any
    total: Any


# ------------------------------------------------------------------------ source


class InMemoryTree(InMemorySource):
    """The in-memory source of a ``chunk_size=None`` fit: per leaf, or as a tree.

    ``orders`` selects per chunk (when `plan_tree` gave no plan); ``tree_orders``
    runs the plan's trees and keeps their roots for ``picked_errors``.
    """

    tree = None  # (plan, roots) after tree_orders

    def tree_orders(self, params, plan, rng):
        """Per group of ``plan`` the order of its tree's root and its nested errors.

        The nodes and the roots (factors and pivots of at most 4096 x rank rows
        each) run with every native thread pool at one thread, as a sampler's refit does: at
        the default two threads of a 2-core machine a 2,000,000 x 64 fit took
        27.3 s against 20.1 s (benchmarks/RESULTS.md, issue 23).
        """
        plan = plan.with_masses([leaf_mass(params, self.X[b:s], slice_rows(self.gradients, b, s))
                                 for b, s in plan.leaves])
        with single_threaded():
            roots = memory_roots(params, plan, self.X, self.gradients)
            self.tree = (plan, roots)
            return root_orders(params, plan, roots, rng, self.with_gradients)

    def picked_errors(self, chunks, local, with_weights):
        """Per chunk (group) the gradient error of its subset, and the weights (or None)."""
        if self.tree is None:
            errors, weights = subset_errors(self.gradients, chunks, local)
        else:
            picked = [take_rows(slice_rows(self.gradients, b, s), lo)
                      for (b, s), lo in zip(chunks, local)]
            errors, weights = root_errors(*self.tree, picked, local)
        return errors, weights if with_weights else None


# -------------------------------------------------------------------------- plan


def plan_tree(params, n, n_features, with_gradients, rng):
    """The `TreePlan` of a ``chunk_size=None`` fit, or None to select per leaf.

    Draws one seed from ``rng`` when it returns a plan (none otherwise).
    """
    leaves = default_chunks(n)
    if params.strategy != "graft" or len(leaves) < 2:
        return None
    sizes = np.array([stop - begin for begin, stop in leaves], dtype=np.int64)
    ends = np.cumsum(sizes)

    def fits(count):  # the candidates of a group of `count` leaves fit a node
        rows = ends[count - 1:count]
        return _candidates(params, rows, with_gradients)[0] <= max_candidates()

    if not fits(2):
        return None
    low, high = 2, len(leaves)  # the largest group that fits, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    n_groups = -(-len(leaves) // low)
    base, longer = divmod(len(leaves), n_groups)
    stops = np.cumsum([base + 1] * longer + [base] * (n_groups - longer)).tolist()
    groups = [(stop - count, stop) for stop, count in
              zip(stops, [base + 1] * longer + [base] * (n_groups - longer))]
    group_rows = np.array([ends[last - 1] - (ends[first - 1] if first else 0)
                           for first, last in groups], dtype=np.int64)
    k_hi = largest_sizes(params, group_rows, with_gradients)
    candidates = np.minimum(max_candidates(), _candidates(params, group_rows, with_gradients))
    ranks = np.array([rank(params, int(m), n_features, int(k)) for m, k in
                      zip(group_rows, k_hi)], dtype=np.int64)
    return TreePlan(leaves, groups, k_hi, np.maximum(candidates, k_hi), ranks,
                    int(rng.integers(2**32)))


def _candidates(params, rows, with_gradients):
    """Candidates per node of groups of ``rows`` rows: ``CANDIDATE_SHARE`` times the
    group's budget, and at least its largest subset size (int64 array)."""
    k_hi = largest_sizes(params, rows, with_gradients)
    share = np.ceil(CANDIDATE_SHARE * np.rint(params.fraction * np.asarray(rows)))
    return np.maximum(k_hi, share).astype(np.int64)


# ------------------------------------------------------------------------- nodes


def leaf_node(task, X, gradients, begin, leaf):
    """The candidates of one leaf: rows ``begin:begin + len(X)`` of the data."""
    rows = np.arange(begin, begin + X.shape[0], dtype=np.int64)
    node = Node(leaf, leaf + 1, rows, X, gradients, gradient_total(gradients))
    return reduce_node(task, node)


def merge_nodes(task, children):
    """Pool the candidates of consecutive nodes and reduce them to `node_candidates` rows."""
    children = list(children)
    if len(children) == 1:
        return children[0]
    total = None
    for child in children:  # left to right, as every path sums them
        total = child.total if total is None else total + child.total
    pooled = Node(children[0].first, children[-1].last,
                  np.concatenate([c.rows for c in children]),
                  concat_rows([c.X for c in children]),
                  None if children[0].G is None else concat_rows([c.G for c in children]),
                  total)
    return reduce_node(task, pooled)


def node_candidates(task, first, last):
    """Candidates a node over the leaves ``[first, last)`` of ``task``'s group keeps.

    The group's rank plus ``NODE_SHARE`` times the node's share of the group's
    ``task.k`` candidates, at most ``task.k``. The share is the larger of the
    node's share of the group's rows (leaves have equal rows, up to one) and of
    its *mass* (`leaf_mass`: the rows' norms to the 8th power), so that a node
    holding most of the extreme rows (rows sorted by norm) keeps room for the
    rows the group's selection will want from it.
    Every node keeping ``k`` pivots made the leaves' rectangular MaxVol steps,
    the fit's largest cost, grow with the budget. The rank keeps the
    directions a node holds (up to the group's rank), the share the rows
    beyond; measurements, also on rows sorted by prototype, by a feature and
    by norm, in ``benchmarks/RESULTS.md`` (issue 23).
    """
    def share(part, whole):
        return math.ceil(NODE_SHARE * task.k * part / whole)

    extra = share(last - first, task.last - task.first)
    if task.mass:
        mass, f0 = task.mass, task.first
        total = mass[-1] - mass[0]
        if total > 0 and math.isfinite(total):  # NaN rows are reported by the leaves
            extra = max(extra, share(mass[last - f0] - mass[first - f0], total))
    return min(task.k, task.params.n_components + extra)


def leaf_mass(params, X, gradients):
    """Sum of ``||row||^MASS_POWER`` over the rows a leaf's factor is built from.

    The gradients' rows with ``basis="gradients"`` (``||r_i|| ||h_i||`` for
    factored ones), else ``X``'s. MaxVol's rows beyond the rank are the
    extreme ones, so a leaf's share of the group's selection follows its
    share of the extreme rows: with the squared norms (power 2) instead, rows
    of a Gaussian-like table sorted by norm kept log-volumes up to 4.0% short
    of one chunk's, with power 8 at most 0.2% (``benchmarks/RESULTS.md``). A
    sum that overflows (norms beyond 1e38) or vanishes makes
    `node_candidates` use the row share. Host NumPy rows are summed in float64
    from a C-ordered copy, so a leaf gives the same bits in memory and on dask.
    """
    if params.basis == "gradients" and gradients is not None:
        if isinstance(gradients, FactoredGradients):
            rows = _row_squares(gradients.residuals) * _row_squares(gradients.inputs)
        else:
            rows = _row_squares(gradients)
    else:
        rows = _row_squares(X)
    with np.errstate(over="ignore"):
        return float(np.sum(rows ** (MASS_POWER // 2)))


def _row_squares(A):
    """Squared row norms of a dense or sparse matrix, a float64 host vector."""
    if is_sparse(A):
        return np.asarray(A.multiply(A).sum(axis=1), dtype=np.float64).ravel()
    if isinstance(A, np.ndarray):
        A = np.ascontiguousarray(A, dtype=np.float64)
        return np.einsum("ij,ij->i", A, A)
    xp, _ = get_namespace(A)
    return np.asarray(to_numpy(xp.sum(A * A, axis=1)), dtype=np.float64)


def reduce_node(task, node):
    """The node's first `node_candidates` MaxVol pivots; the group's root keeps its pool."""
    n_rows = node.rows.shape[0]
    k = node_candidates(task, node.first, node.last)
    if (node.first, node.last) == (task.first, task.last) or n_rows <= k:
        return node
    rng = np.random.default_rng([task.seed, node.first, node.last])
    xp = None if is_sparse(node.X) else get_namespace(node.X)[0]
    order = stack_order(task.params, node.X, xp, node.G, 0, n_rows, (0, 1), k, rng)[0]
    return Node(node.first, node.last, node.rows[order], take_rows(node.X, order),
                None if node.G is None else take_rows(node.G, order), node.total)


def reduce_levels(task, nodes, fan_in):
    """The root of a group from its leaves' nodes, in the shape of ``Bag.reduction``."""
    while len(nodes) > fan_in:
        nodes = [merge_nodes(task, nodes[s:s + fan_in]) for s in range(0, len(nodes), fan_in)]
    return merge_nodes(task, nodes)


def memory_roots(params, plan, X, gradients):
    """The roots of every group of ``plan`` over rows held in memory."""
    roots = []
    for g, (first, last) in enumerate(plan.groups):
        task = plan.task(params, g)
        nodes = [leaf_node(task, X[b:s], slice_rows(gradients, b, s), b, leaf)
                 for leaf, (b, s) in zip(range(first, last), plan.leaves[first:last])]
        roots.append(reduce_levels(task, nodes, plan.fan_in))
    return roots


# ---------------------------------------------------------------- the top level


def root_orders(params, plan, roots, rng, with_gradients):
    """Per group the order of its root's pool (group-local rows) and nested errors.

    One child generator is drawn from ``rng`` per group, in group order. The
    nested errors are those of the group's mean gradient (over all its rows)
    by the order's prefixes.
    """
    orders, errors = [], []
    for g, root in enumerate(roots):
        top = dataclasses.replace(params, n_components=int(plan.ranks[g]))
        xp = None if is_sparse(root.X) else get_namespace(root.X)[0]
        n_rows = root.rows.shape[0]
        k_hi = min(int(plan.k_hi[g]), n_rows)
        local = stack_order(top, root.X, xp, root.G, 0, n_rows, (0, 1), k_hi, rng)[0]
        orders.append(root.rows[local] - plan.chunks[g][0])
        if with_gradients:
            G = target_rows(take_rows(root.G, local), root.total, group_rows(plan, g))
            k = local.shape[0]
            errors.append(prefix_errors(G, 0, row_count(G), [np.arange(k)])[0])
    return orders, errors


def root_errors(plan, roots, picked, local):
    """Per group the error of its mean gradient by the picked rows, and their weights.

    ``picked[g]`` holds the gradient rows of group ``g``'s picks (in the order
    of ``local[g]``); the weights are the least-squares weights times the
    group's rows (the rows each pick stands for).
    """
    errors = np.zeros(len(roots))
    weights = []
    for g, root in enumerate(roots):
        G = target_rows(picked[g], root.total, group_rows(plan, g))
        xp, device = namespace_of(G)
        k = len(local[g])
        index = from_numpy(np.arange(k, dtype=np.int64)[None, :], xp, device)
        err, w = gradient_error_unchecked(stack(G), index, xp)
        errors[g] = float(to_numpy(err)[0])
        weights.append(np.asarray(to_numpy(w)[0], dtype=np.float64) * group_rows(plan, g))
    return errors, np.concatenate(weights)


def target_rows(G, total, n):
    """Rows of G plus rows that make the mean of all of them ``total / n``.

    The criterion's kernels measure the error of a stack's mean row by some of
    its rows: with the extra rows appended, the first rows' errors are those
    of the mean gradient of the ``n`` rows whose gradients sum to ``total``.
    Dense: one extra row; factored: one per residual column (a unit residual
    and the matching row of the mean's remainder).
    """
    if isinstance(G, FactoredGradients):
        R, H = G
        xp, device = get_namespace(R)
        k, c = R.shape[0], R.shape[1]
        remainder = (k + c) * (total / n) - xp.matmul(xp.matrix_transpose(R), H)
        unit = from_numpy(np.eye(c, dtype=np.float64), xp, device)
        return FactoredGradients(xp.concat([R, xp.astype(unit, R.dtype)]),
                                 xp.concat([H, xp.astype(remainder, H.dtype)]))
    xp, _ = get_namespace(G)
    extra = (G.shape[0] + 1) * (total / n) - xp.sum(G, axis=0)
    return xp.concat([G, xp.astype(extra, G.dtype)[None, :]])


# ---------------------------------------------------------------------- helpers


def group_rows(plan, g):
    """Rows of group ``g``."""
    begin, stop = plan.chunks[g]
    return stop - begin


def gradient_total(gradients):
    """The sum of the gradients of some rows: a row, or a matrix for factored ones."""
    if gradients is None:
        return None
    if isinstance(gradients, FactoredGradients):
        R, H = gradients
        xp, _ = get_namespace(R)
        return xp.matmul(xp.matrix_transpose(R), H)
    xp, _ = get_namespace(gradients)
    return xp.sum(gradients, axis=0)


def slice_rows(gradients, begin, stop):
    """Rows ``begin:stop`` of dense or factored gradients (None stays None)."""
    if gradients is None:
        return None
    if isinstance(gradients, FactoredGradients):
        return FactoredGradients(gradients.residuals[begin:stop], gradients.inputs[begin:stop])
    return gradients[begin:stop]


def take_rows(A, rows):
    """Rows ``rows`` (host int array) of an array, sparse matrix or FactoredGradients."""
    if isinstance(A, FactoredGradients):
        return FactoredGradients(take_rows(A.residuals, rows), take_rows(A.inputs, rows))
    if is_sparse(A) or isinstance(A, np.ndarray):
        return A[np.asarray(rows)]
    xp, device = get_namespace(A)
    return xp.take(A, from_numpy(np.asarray(rows, dtype=np.int64), xp, device), axis=0)


def concat_rows(parts):
    """The rows of ``parts`` one after the other (same kind as the parts)."""
    if isinstance(parts[0], FactoredGradients):
        return FactoredGradients(concat_rows([p.residuals for p in parts]),
                                 concat_rows([p.inputs for p in parts]))
    if is_sparse(parts[0]):
        import scipy.sparse

        return scipy.sparse.vstack(parts, format="csr")
    xp, _ = get_namespace(*parts)
    return xp.concat(parts)


def stack(G):
    """G as a stack of one matrix (dense or factored)."""
    if isinstance(G, FactoredGradients):
        return FactoredGradients(G.residuals[None, ...], G.inputs[None, ...])
    return G[None, ...]


def row_count(G):
    """Rows of dense or factored gradients."""
    return (G.residuals if isinstance(G, FactoredGradients) else G).shape[0]


def namespace_of(G):
    """(namespace, device) of dense or factored gradients."""
    return get_namespace(G.residuals if isinstance(G, FactoredGradients) else G)
