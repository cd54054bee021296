"""Tests for graft_select.gradients: gradient proxies and the approximation criterion."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graft_select.gradients import (
    FactoredGradients,
    gradient_error,
    gram_matrix,
    last_layer_gradients,
    nested_gradient_errors,
)


def _chunk(n=40, n_classes=4, d=6, seed=0, stack=()):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((*stack, n, n_classes))
    labels = rng.integers(0, n_classes, (*stack, n))
    embeddings = rng.standard_normal((*stack, n, d))
    return logits, labels, embeddings


def _lstsq_errors(G, order):
    """Brute force: relative least-squares residual of every prefix, with numpy.linalg.lstsq."""
    g = G.mean(axis=0)
    out = []
    for j in range(1, len(order) + 1):
        A = G[order[:j]].T
        w = np.linalg.lstsq(A, g, rcond=None)[0]
        out.append(np.linalg.norm(g - A @ w) / np.linalg.norm(g))
    return np.array(out)


def _torch_per_sample(logits_fn, n):
    """Per-sample [weight, bias] gradients by autograd, flattened row-major."""
    torch = pytest.importorskip("torch")
    layer, loss = logits_fn()
    rows = []
    for i in range(n):
        gw, gb = torch.autograd.grad(loss[i], [layer.weight, layer.bias], retain_graph=True)
        rows.append(torch.cat([gw, gb[:, None]], dim=1).reshape(-1).numpy())
    return np.stack(rows)


def _linear(h, n_classes, seed):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    layer = torch.nn.Linear(h.shape[1], n_classes).double()
    return layer, layer(torch.as_tensor(h))


class TestLastLayerGradients:
    def test_cross_entropy_matches_autograd(self):
        """Closed form equals autograd of per-sample cross-entropy w.r.t. weight and bias."""
        torch = pytest.importorskip("torch")
        _, labels, h = _chunk(n=12, n_classes=5, d=7)
        layer, out = _linear(h, 5, 0)
        y = torch.as_tensor(labels)

        def fn():
            return layer, torch.nn.functional.cross_entropy(out, y, reduction="none")

        expected = _torch_per_sample(fn, 12)
        G = last_layer_gradients(out.detach().numpy(), labels, h)
        np.testing.assert_allclose(G, expected, atol=1e-12)

    def test_probability_targets_match_autograd(self):
        """Soft targets (not summing to one) match autograd of cross-entropy with probabilities."""
        torch = pytest.importorskip("torch")
        _, _, h = _chunk(n=10, n_classes=3, d=4)
        soft = np.random.default_rng(1).uniform(0.0, 1.0, (10, 3))
        layer, out = _linear(h, 3, 1)

        def fn():
            return layer, torch.nn.functional.cross_entropy(
                out, torch.as_tensor(soft), reduction="none")

        expected = _torch_per_sample(fn, 10)
        G = last_layer_gradients(out.detach().numpy(), soft, h)
        np.testing.assert_allclose(G, expected, atol=1e-12)

    def test_mse_matches_autograd_of_half_squared_error(self):
        """loss='mse' equals autograd of 0.5 * ||yhat - y||^2 per sample."""
        torch = pytest.importorskip("torch")
        _, _, h = _chunk(n=9, d=5)
        y = np.random.default_rng(2).standard_normal((9, 3))
        layer, out = _linear(h, 3, 2)

        def fn():
            return layer, 0.5 * ((out - torch.as_tensor(y)) ** 2).sum(dim=1)

        expected = _torch_per_sample(fn, 9)
        G = last_layer_gradients(out.detach().numpy(), y, h, loss="mse")
        np.testing.assert_allclose(G, expected, atol=1e-12)

    def test_mse_accepts_1d_targets_for_one_output(self):
        """For C == 1, mse targets of shape (n,) equal targets of shape (n, 1)."""
        rng = np.random.default_rng(3)
        yhat, y = rng.standard_normal((8, 1)), rng.standard_normal(8)
        h = rng.standard_normal((8, 2))
        a = last_layer_gradients(yhat, y, h, loss="mse")
        b = last_layer_gradients(yhat, y[:, None], h, loss="mse")
        np.testing.assert_allclose(a, b)
        np.testing.assert_allclose(a[:, -1], yhat[:, 0] - y)

    def test_without_embeddings_gives_logit_residuals(self):
        """embeddings=None gives softmax(z) - onehot(y), of shape (n, C)."""
        z, labels, _ = _chunk(n=6, n_classes=3)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        G = last_layer_gradients(z, labels)
        np.testing.assert_allclose(G, p - np.eye(3)[labels], atol=1e-15)

    def test_integer_labels_equal_one_hot_targets(self):
        """Integer labels and their one-hot rows give the same gradients."""
        z, labels, h = _chunk()
        np.testing.assert_allclose(
            last_layer_gradients(z, labels, h), last_layer_gradients(z, np.eye(4)[labels], h))

    def test_softmax_is_stable_for_large_logits(self):
        """Logits of 1e4 give finite gradients equal to those of the shifted logits."""
        z, labels, h = _chunk()
        big = last_layer_gradients(z + 1e4, labels, h)
        assert np.all(np.isfinite(big))
        np.testing.assert_allclose(big, last_layer_gradients(z, labels, h), atol=1e-10)

    def test_factored_materializes_to_dense(self):
        """factored=True gives factors whose materialize() equals the dense result."""
        z, labels, h = _chunk()
        F = last_layer_gradients(z, labels, h, factored=True)
        assert isinstance(F, FactoredGradients)
        assert F.residuals.shape == (40, 4) and F.inputs.shape == (40, 7)
        np.testing.assert_allclose(F.materialize(), last_layer_gradients(z, labels, h))

    @pytest.mark.parametrize("n_classes, d", [(3, 8), (9, 2)])
    def test_sketch_equals_dense_times_gaussian(self, n_classes, d):
        """n_sketch gives G @ S for S drawn from the same seed (both contraction orders)."""
        z, labels, h = _chunk(n_classes=n_classes, d=d)
        G = last_layer_gradients(z, labels, h)
        S = np.random.default_rng(5).standard_normal((G.shape[1], 11)) / np.sqrt(11)
        sketched = last_layer_gradients(z, labels, h, n_sketch=11, random_state=5)
        np.testing.assert_allclose(sketched, G @ S, atol=1e-12)

    def test_sketch_roughly_preserves_norms(self):
        """A wide sketch keeps every row norm within 25 percent."""
        z, labels, h = _chunk(n=20, n_classes=5, d=30)
        G = last_layer_gradients(z, labels, h)
        sketched = last_layer_gradients(z, labels, h, n_sketch=400, random_state=0)
        ratio = np.linalg.norm(sketched, axis=1) / np.linalg.norm(G, axis=1)
        assert np.all(np.abs(ratio - 1) < 0.25)

    def test_sketch_is_fixed_by_seed(self):
        """The same random_state gives the same sketch, another seed a different one."""
        z, labels, h = _chunk()
        a = last_layer_gradients(z, labels, h, n_sketch=5, random_state=1)
        b = last_layer_gradients(z, labels, h, n_sketch=5, random_state=1)
        c = last_layer_gradients(z, labels, h, n_sketch=5, random_state=2)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)

    def test_stack_equals_loop(self):
        """A (2, 3) stack of chunks gives each chunk's own gradients."""
        z, labels, h = _chunk(n=10, stack=(2, 3))
        G = last_layer_gradients(z, labels, h)
        assert G.shape == (2, 3, 10, 28)
        for i in range(2):
            for j in range(3):
                np.testing.assert_allclose(G[i, j], last_layer_gradients(z[i, j], labels[i, j],
                                                                         h[i, j]))

    def test_inputs_are_not_modified(self):
        """The input arrays are unchanged after the call."""
        z, labels, h = _chunk()
        copies = (z.copy(), labels.copy(), h.copy())
        last_layer_gradients(z, labels, h, n_sketch=3, random_state=0)
        for before, after in zip(copies, (z, labels, h)):
            np.testing.assert_array_equal(before, after)

    def test_requires_grad_tensor_is_used_by_value(self):
        """Torch logits that require grad give a detached result of the same values."""
        torch = pytest.importorskip("torch")
        z, labels, h = _chunk()
        zt = torch.tensor(z, requires_grad=True)
        G = last_layer_gradients(zt, torch.as_tensor(labels), torch.as_tensor(h))
        assert not G.requires_grad
        np.testing.assert_allclose(G.numpy(), last_layer_gradients(z, labels, h))

    def test_float32_stays_float32(self):
        """Float32 torch inputs give a float32 result."""
        torch = pytest.importorskip("torch")
        z, labels, h = _chunk()
        G = last_layer_gradients(torch.as_tensor(z, dtype=torch.float32),
                                 torch.as_tensor(labels),
                                 torch.as_tensor(h, dtype=torch.float32), n_sketch=4)
        assert G.dtype == torch.float32

    @pytest.mark.parametrize("mode", ["dense", "factored", "sketch"])
    def test_backend_matches_numpy(self, backend, mode):
        """Every backend of the matrix gives NumPy's result, in its namespace and device."""
        z, labels, h = _chunk()
        kwargs = {"dense": {}, "factored": {"factored": True},
                  "sketch": {"n_sketch": 6, "random_state": 0}}[mode]
        expected = last_layer_gradients(z, labels, h, **kwargs)
        got = last_layer_gradients(backend.asarray(z), backend.asarray(labels),
                                   backend.asarray(h), **kwargs)
        if mode == "factored":
            expected, got = expected.materialize(), got.materialize()
        assert backend.is_native(got)
        np.testing.assert_allclose(backend.to_numpy(got), expected, atol=1e-12)


class TestLastLayerGradientsValidation:
    @pytest.mark.parametrize(
        "change, exc, match",
        [
            ({"targets": np.array([0, 1, 4])}, ValueError, r"outside \[0, 4\).*first: 4"),
            ({"targets": np.array([0, -1, 2])}, ValueError, "outside"),
            ({"targets": np.array([0.0, 1.0, 2.0])}, TypeError, "integer class labels"),
            ({"targets": np.array([0, 1])}, ValueError, "one label per row"),
            ({"targets": np.ones((3, 5))}, ValueError, "'targets'.*shape"),
            ({"targets": -np.eye(4)[[0, 1, 2]]}, ValueError, "negative"),
            ({"embeddings": np.ones((2, 5))}, ValueError, "'embeddings'.*leading shape"),
            ({"embeddings": np.ones(3)}, ValueError, "'embeddings'.*2-D"),
            ({"logits": np.ones(4)}, ValueError, "'logits'.*2-D"),
            ({"logits": np.full((3, 4), np.nan)}, ValueError, "'logits'.*NaN"),
            ({"embeddings": np.full((3, 5), np.inf)}, ValueError, "'embeddings'.*infinity"),
            ({"loss": "hinge"}, ValueError, "'loss'"),
            ({"factored": True, "n_sketch": 4}, ValueError, "not both"),
            ({"n_sketch": 0}, ValueError, "'n_sketch'"),
            ({"n_sketch": 2.5}, TypeError, "'n_sketch'"),
            ({"factored": "yes"}, TypeError, "'factored'"),
            ({"n_sketch": 3, "random_state": "seed"}, TypeError, "'random_state'"),
        ],
    )
    def test_bad_input_raises_naming_the_argument(self, change, exc, match):
        """Each bad input raises an error that names the offending argument."""
        kwargs = {"logits": np.zeros((3, 4)), "targets": np.array([0, 1, 2]),
                  "embeddings": np.ones((3, 5))}
        kwargs.update(change)
        with pytest.raises(exc, match=match):
            last_layer_gradients(**kwargs)

    @pytest.mark.parametrize("targets", [np.ones((3, 2)), np.ones(3)])
    def test_mse_target_shape_mismatch_raises(self, targets):
        """mse targets must have the logits' shape ((n,) only for one output)."""
        with pytest.raises(ValueError, match=r"'targets'.*loss='mse'"):
            last_layer_gradients(np.zeros((3, 4)), targets, loss="mse")

    def test_mixed_libraries_raise(self):
        """Torch logits with NumPy labels raise a TypeError naming both libraries."""
        torch = pytest.importorskip("torch")
        with pytest.raises(TypeError, match="one array library"):
            last_layer_gradients(torch.zeros(3, 4), np.array([0, 1, 2]))


def test_overflowing_gradients_raise():
    """Finite residuals and embeddings whose products overflow: a ValueError that
    names the fix (factored=True keeps both finite), where the dense and sketched
    gradients came back with infinities that a later call blamed on 'G'."""
    logits, targets = np.array([[1e200], [2.0], [-1e200]]), np.zeros(3)
    embeddings = np.array([[1e200], [1.0], [1e200]])
    for n_sketch in (None, 2):
        with pytest.raises(ValueError, match=r"overflow float64.*factored=True"):
            last_layer_gradients(logits, targets, embeddings, loss="mse", n_sketch=n_sketch)
    F = last_layer_gradients(logits, targets, embeddings, loss="mse", factored=True)
    assert np.isfinite(F.residuals).all() and np.isfinite(F.inputs).all()


class TestFactoredGradients:
    def test_sizes(self):
        """n_samples and n_features describe the gradients; len() stays the tuple's 2."""
        F = last_layer_gradients(*_chunk(n=10, n_classes=3, d=5), factored=True)
        assert (F.n_samples, F.n_features, len(F)) == (10, 18, 2)

    def test_materialize_layout_is_row_major_over_classes(self):
        """Entry c * (d + 1) + j of row i is residuals[i, c] * inputs[i, j]."""
        rng = np.random.default_rng(0)
        F = FactoredGradients(rng.standard_normal((4, 3)), rng.standard_normal((4, 5)))
        G = F.materialize()
        assert G[2, 1 * 5 + 3] == F.residuals[2, 1] * F.inputs[2, 3]

    def test_take_selects_rows(self):
        """take(indices) keeps the given rows of both factors, in order."""
        F = last_layer_gradients(*_chunk(), factored=True)
        idx = np.array([5, 0, 7])
        np.testing.assert_allclose(F.take(idx).materialize(), F.materialize()[idx])

    def test_take_per_chunk_indices(self):
        """take with (..., k) indices selects different rows in each chunk of a stack."""
        F = last_layer_gradients(*_chunk(n=10, stack=(3,)), factored=True)
        idx = np.array([[0, 1], [2, 3], [9, 4]])
        got = F.take(idx).materialize()
        for b in range(3):
            np.testing.assert_allclose(got[b], F.materialize()[b, idx[b]])

    def test_take_rejects_out_of_range(self):
        """take raises for an index past the last row."""
        F = last_layer_gradients(*_chunk(n=10), factored=True)
        with pytest.raises(ValueError, match=r"'indices'.*outside \[0, 10\)"):
            F.take(np.array([3, 10]))


class TestGramMatrix:
    def test_dense_is_G_GT(self):
        """For a dense array the Gram matrix is G @ G.T."""
        G = last_layer_gradients(*_chunk())
        np.testing.assert_allclose(gram_matrix(G), G @ G.T)

    def test_factored_equals_materialized(self):
        """The factored Gram matrix equals that of the materialized gradients."""
        F = last_layer_gradients(*_chunk(), factored=True)
        G = F.materialize()
        np.testing.assert_allclose(gram_matrix(F), G @ G.T, atol=1e-12)

    def test_stack(self):
        """A stack of factored chunks gives one Gram matrix per chunk."""
        F = last_layer_gradients(*_chunk(n=8, stack=(2,)), factored=True)
        K = gram_matrix(F)
        G = F.materialize()
        assert K.shape == (2, 8, 8)
        np.testing.assert_allclose(K[1], G[1] @ G[1].T, atol=1e-12)

    def test_backend_matches_numpy(self, backend):
        """Every backend of the matrix gives NumPy's Gram matrix, in its namespace and device."""
        z, labels, h = _chunk()
        F = last_layer_gradients(backend.asarray(z), backend.asarray(labels), backend.asarray(h),
                                 factored=True)
        K = gram_matrix(F)
        assert backend.is_native(K)
        G = last_layer_gradients(z, labels, h)
        np.testing.assert_allclose(backend.to_numpy(K), G @ G.T, atol=1e-12)


    @pytest.mark.parametrize("library", ["numpy", "torch"])
    def test_extreme_magnitudes_never_nan(self, library):
        """Finite gradients of 1e200 (whose squares overflow float64): the Gram matrix is
        inf where an entry is beyond the range and never NaN (the factored form gave
        inf * 0 = NaN, torch's product inf - inf = NaN); entries in range are exact,
        whatever the scale (rows scaled by a power of two first, then scaled back)."""
        to = np.asarray if library == "numpy" else pytest.importorskip("torch").as_tensor
        G = np.array([[1e200, 1e200], [1e200, -1e200]])
        for K in (gram_matrix(to(G)), gram_matrix(FactoredGradients(
                to(np.array([[1e200], [1e200]])), to(np.array([[1.0, 1.0], [-1.0, 1.0]]))))):
            K = np.asarray(K)
            assert not np.isnan(K).any()
            assert np.isinf(np.diag(K)).all()
        F = FactoredGradients(to(np.array([[3e150], [1e150]])),
                              to(np.array([[1e-160, 2e-160], [-2e-160, 1e-160]])))
        np.testing.assert_allclose(np.asarray(gram_matrix(F)),
                                   np.array([[4.5e-19, 0.0], [0.0, 5e-20]]), rtol=1e-12,
                                   atol=1e-12 * 4.5e-19)


class TestNestedGradientErrors:
    @pytest.mark.parametrize("k", [25, 40])
    def test_dense_matches_lstsq(self, k):
        """Each prefix error equals the brute-force least-squares residual (also for k > rank)."""
        G = last_layer_gradients(*_chunk())
        order = np.random.default_rng(1).permutation(40)[:k]
        np.testing.assert_allclose(nested_gradient_errors(G, order), _lstsq_errors(G, order),
                                   atol=1e-12)

    def test_factored_matches_dense(self):
        """The Gram-only factored path gives the dense path's errors."""
        z, labels, h = _chunk()
        order = np.random.default_rng(1).permutation(40)[:25]
        dense = nested_gradient_errors(last_layer_gradients(z, labels, h), order)
        factored = nested_gradient_errors(last_layer_gradients(z, labels, h, factored=True),
                                          order)
        np.testing.assert_allclose(factored, dense, atol=1e-6)

    def test_sketched_gradients_are_accepted(self):
        """Sketched gradients give errors close to the exact ones for a wide sketch."""
        z, labels, h = _chunk(n=60, n_classes=3, d=3)
        order = np.arange(6)
        exact = nested_gradient_errors(last_layer_gradients(z, labels, h), order)
        sketched = nested_gradient_errors(
            last_layer_gradients(z, labels, h, n_sketch=2000, random_state=0), order)
        np.testing.assert_allclose(sketched, exact, atol=0.1)

    @settings(max_examples=30, deadline=None)
    @given(n=st.integers(2, 30), n_classes=st.integers(2, 5), d=st.integers(0, 6),
           seed=st.integers(0, 2**16), factored=st.booleans())
    def test_non_increasing_and_in_unit_interval(self, n, n_classes, d, seed, factored):
        """Errors are non-increasing along the order and lie in [0, 1]."""
        z, labels, h = _chunk(n=n, n_classes=n_classes, d=d, seed=seed)
        G = last_layer_gradients(z, labels, h if d else None, factored=factored)
        order = np.random.default_rng(seed).permutation(n)
        errors = nested_gradient_errors(G, order)
        assert np.all(np.diff(errors) <= 0)
        assert np.all((errors >= 0) & (errors <= 1))

    def test_all_rows_span_the_mean(self):
        """With every row in the order the last error is zero (g is their mean)."""
        G = last_layer_gradients(*_chunk(n=15))
        order = np.random.default_rng(0).permutation(15)
        assert nested_gradient_errors(G, order)[-1] < 1e-10

    @pytest.mark.parametrize("factored", [False, True])
    def test_dependent_rows_keep_error_flat(self, factored):
        """A row that is a combination of earlier rows, or a zero row, leaves the error flat."""
        rng = np.random.default_rng(13)
        R, H = rng.standard_normal((20, 3)), rng.standard_normal((20, 4))
        H[1] = H[0]
        R[3], H[3] = R[0] + 0.3 * R[1], H[0]  # g_3 = g_0 + 0.3 g_1
        R[5] = 0.0  # g_5 = 0
        F = FactoredGradients(R, H)
        G = F if factored else F.materialize()
        errors = nested_gradient_errors(G, np.array([0, 1, 3, 2, 5, 4]))
        assert np.all(np.isfinite(errors))
        assert errors[2] == errors[1]
        assert errors[4] == errors[3]
        assert errors[5] < errors[4]

    @pytest.mark.parametrize("factored", [False, True])
    def test_zero_mean_gradient_gives_zero_errors(self, factored):
        """If the mean gradient is zero up to rounding, every error is 0 (documented)."""
        R = np.array([[0.1, 0.7], [0.2, 0.1], [-0.3, -0.8]])
        assert np.any(R.mean(axis=0) != 0)  # rounding leaves a tiny, meaningless mean
        G = FactoredGradients(R, np.ones((3, 1)))
        errors = nested_gradient_errors(G if factored else G.materialize(), np.array([0, 1]))
        np.testing.assert_array_equal(errors, [0.0, 0.0])

    def test_embeddings_make_the_criterion_informative(self):
        """With embeddings, subsets of C to 2C samples leave a clear, decreasing error."""
        n_classes = 5
        z, labels, h = _chunk(n=200, n_classes=n_classes, d=16)
        order = np.random.default_rng(0).permutation(200)[:60]
        for factored in (False, True):
            errors = nested_gradient_errors(
                last_layer_gradients(z, labels, h, factored=factored), order)
            assert np.all(errors[n_classes - 2: 2 * n_classes] > 0.1)
            assert errors[-1] < errors[n_classes - 1] - 0.1

    def test_logits_only_is_degenerate(self):
        """Without embeddings the error is about 0 once k >= C - 1 (the documented pitfall)."""
        n_classes = 5
        z, labels, _ = _chunk(n=200, n_classes=n_classes)
        order = np.random.default_rng(0).permutation(200)[:10]
        dense = nested_gradient_errors(last_layer_gradients(z, labels), order)
        factored = nested_gradient_errors(last_layer_gradients(z, labels, factored=True), order)
        assert dense[n_classes - 3] > 0.01
        assert np.all(dense[n_classes - 2:] < 1e-10)
        assert np.all(factored[n_classes - 2:] < 1e-6)

    @pytest.mark.parametrize("factored", [False, True])
    def test_stack_equals_loop(self, factored):
        """A stack with per-chunk orders gives each chunk's own errors."""
        z, labels, h = _chunk(n=12, stack=(2, 2))
        G = last_layer_gradients(z, labels, h, factored=factored)
        rng = np.random.default_rng(0)
        order = np.stack([[rng.permutation(12)[:6] for _ in range(2)] for _ in range(2)])
        errors = nested_gradient_errors(G, order)
        assert errors.shape == (2, 2, 6)
        for i in range(2):
            for j in range(2):
                one = last_layer_gradients(z[i, j], labels[i, j], h[i, j], factored=factored)
                np.testing.assert_allclose(errors[i, j], nested_gradient_errors(one, order[i, j]),
                                           atol=1e-12)

    def test_1d_order_is_shared_by_the_stack(self):
        """A 1-D order is applied to every chunk of a stack."""
        G = last_layer_gradients(*_chunk(n=12, stack=(3,)))
        order = np.array([4, 1, 7])
        errors = nested_gradient_errors(G, order)
        np.testing.assert_allclose(errors[2], nested_gradient_errors(G[2], order))

    def test_inputs_are_not_modified(self):
        """G and order are unchanged after the call."""
        G = last_layer_gradients(*_chunk())
        order = np.array([3, 1, 2])
        G0, order0 = G.copy(), order.copy()
        nested_gradient_errors(G, order)
        np.testing.assert_array_equal(G, G0)
        np.testing.assert_array_equal(order, order0)

    @pytest.mark.parametrize("factored", [False, True])
    def test_backend_matches_numpy(self, backend, factored):
        """Every backend of the matrix gives NumPy's errors, in its namespace and device."""
        z, labels, h = _chunk()
        order = np.random.default_rng(1).permutation(40)[:12]
        expected = nested_gradient_errors(last_layer_gradients(z, labels, h, factored=factored),
                                          order)
        G = last_layer_gradients(backend.asarray(z), backend.asarray(labels), backend.asarray(h),
                                 factored=factored)
        got = nested_gradient_errors(G, backend.asarray(order))
        assert backend.is_native(got)
        np.testing.assert_allclose(backend.to_numpy(got), expected, atol=1e-10)

    def test_float32_torch_is_close_to_float64(self):
        """Float32 torch input gives float32 errors close to the float64 ones."""
        torch = pytest.importorskip("torch")
        G = last_layer_gradients(*_chunk())
        order = np.arange(15)
        got = nested_gradient_errors(torch.as_tensor(G, dtype=torch.float32), order)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), nested_gradient_errors(G, order), atol=1e-4)

    @pytest.mark.parametrize(
        "order, exc, match",
        [
            (np.array([1, 2, 1]), ValueError, "unique"),
            (np.array([0, 40]), ValueError, r"outside \[0, 40\)"),
            (np.array([-1, 2]), ValueError, "outside"),
            (np.array([0.0, 1.0]), TypeError, "integer"),
            (np.zeros((2, 3), dtype=int), ValueError, "shape"),
            (np.array([], dtype=int), ValueError, "empty"),
        ],
    )
    def test_bad_order_raises(self, order, exc, match):
        """Bad orders raise errors naming 'order'."""
        G = last_layer_gradients(*_chunk())
        with pytest.raises(exc, match=f"'order'.*{match}"):
            nested_gradient_errors(G, order)

    def test_mismatched_factors_raise(self):
        """Factors with different numbers of rows raise a ValueError."""
        F = FactoredGradients(np.ones((4, 2)), np.ones((5, 3)))
        with pytest.raises(ValueError, match="leading shape"):
            nested_gradient_errors(F, np.array([0]))


class TestGradientError:
    def test_overflowing_given_weights_are_not_a_perfect_match(self):
        """Given weights whose terms overflow: the factored form's error is inf, as the
        dense form's, where inf - inf = NaN used to be read as 0 (a perfect match)."""
        weights = [1e308, 1e308]
        dense = gradient_error(np.eye(2), [0, 1], weights=weights)[0]
        factored = gradient_error(FactoredGradients(np.eye(2), np.ones((2, 1))), [0, 1],
                                  weights=weights)[0]
        assert np.isinf(dense) and np.isinf(factored)

    @pytest.mark.parametrize("function", ["gradient_error", "nested_gradient_errors"])
    def test_empty_list_of_indices_is_named(self, function):
        """An empty list is reported as empty, as an empty integer array is (it was a
        TypeError about the list's dtype)."""
        call = gradient_error if function == "gradient_error" else nested_gradient_errors
        with pytest.raises(ValueError, match="is empty; pass at least one row index"):
            call(np.ones((5, 3)), [])

    def test_least_squares_matches_lstsq(self):
        """Error and weights equal numpy.linalg.lstsq's solution."""
        G = last_layer_gradients(*_chunk())
        idx = np.array([3, 17, 8, 30, 1])
        error, weights = gradient_error(G, idx)
        g = G.mean(axis=0)
        w = np.linalg.lstsq(G[idx].T, g, rcond=None)[0]
        np.testing.assert_allclose(weights, w, atol=1e-10)
        np.testing.assert_allclose(error, np.linalg.norm(g - G[idx].T @ w) / np.linalg.norm(g))

    def test_equals_last_nested_error(self):
        """The least-squares error equals the last entry of nested_gradient_errors."""
        G = last_layer_gradients(*_chunk())
        idx = np.array([9, 2, 33, 14, 5, 21])
        np.testing.assert_allclose(gradient_error(G, idx)[0], nested_gradient_errors(G, idx)[-1])

    def test_factored_matches_dense(self):
        """The Gram-only factored path gives the dense error and weights."""
        z, labels, h = _chunk()
        idx = np.array([9, 2, 33, 14, 5, 21])
        e_dense, w_dense = gradient_error(last_layer_gradients(z, labels, h), idx)
        e_fact, w_fact = gradient_error(last_layer_gradients(z, labels, h, factored=True), idx)
        np.testing.assert_allclose(e_fact, e_dense, atol=1e-8)
        np.testing.assert_allclose(w_fact, w_dense, atol=1e-8)

    @pytest.mark.parametrize("factored", [False, True])
    def test_given_weights_are_evaluated(self, factored):
        """Given weights are returned and scored by the residual they leave."""
        z, labels, h = _chunk()
        G = last_layer_gradients(z, labels, h)
        idx, w = np.array([1, 2, 3]), np.array([0.2, -0.1, 0.4])
        error, weights = gradient_error(
            last_layer_gradients(z, labels, h, factored=factored), idx, weights=w)
        g = G.mean(axis=0)
        np.testing.assert_allclose(weights, w)
        np.testing.assert_allclose(error, np.linalg.norm(g - w @ G[idx]) / np.linalg.norm(g),
                                   rtol=1e-8)

    def test_given_weights_can_do_worse_than_nothing(self):
        """Bad given weights give an error above 1 (it is not clipped)."""
        G = last_layer_gradients(*_chunk())
        error, _ = gradient_error(G, np.array([0, 1]), weights=np.array([-50.0, 50.0]))
        assert error > 1

    def test_weights_times_n_count_the_samples_represented(self):
        """n * weights counts how many chunk samples each selected sample stands for."""
        a, b = np.array([1.0, 0.0, 2.0]), np.array([0.0, 3.0, 1.0])
        G = np.stack([a] * 7 + [b] * 3)
        error, weights = gradient_error(G, np.array([0, 9]))
        assert error < 1e-12
        np.testing.assert_allclose(10 * weights, [7.0, 3.0])

    @pytest.mark.parametrize("factored", [False, True])
    def test_repeated_rows_share_the_weight(self, factored):
        """A repeated index gives finite minimum-norm weights split between the copies."""
        a, b = np.array([1.0, 0.0, 2.0]), np.array([0.0, 3.0, 1.0])
        G = FactoredGradients(np.stack([a] * 7 + [b] * 3), np.ones((10, 1)))
        error, weights = gradient_error(G if factored else G.materialize(),
                                        np.array([0, 0, 9]))
        assert error < 1e-6
        np.testing.assert_allclose(10 * weights, [3.5, 3.5, 3.0], atol=1e-6)

    @pytest.mark.parametrize("factored", [False, True])
    def test_zero_mean_gives_zero_error_and_weights(self, factored):
        """If the mean gradient is zero up to rounding, error and least-squares weights are 0."""
        R = np.array([[0.1, 0.7], [0.2, 0.1], [-0.3, -0.8]])
        G = FactoredGradients(R, np.ones((3, 1)))
        error, weights = gradient_error(G if factored else G.materialize(), np.array([0]))
        assert error == 0.0
        np.testing.assert_array_equal(weights, [0.0])

    @pytest.mark.parametrize("factored", [False, True])
    def test_stack_equals_loop(self, factored):
        """A stack with per-chunk indices gives each chunk's own error and weights."""
        z, labels, h = _chunk(n=12, stack=(3,))
        G = last_layer_gradients(z, labels, h, factored=factored)
        idx = np.array([[0, 4, 5], [1, 2, 3], [11, 7, 8]])
        error, weights = gradient_error(G, idx)
        assert error.shape == (3,) and weights.shape == (3, 3)
        for b in range(3):
            one = last_layer_gradients(z[b], labels[b], h[b], factored=factored)
            e, w = gradient_error(one, idx[b])
            np.testing.assert_allclose(error[b], e, atol=1e-12)
            np.testing.assert_allclose(weights[b], w, atol=1e-10)

    @pytest.mark.parametrize("factored", [False, True])
    def test_backend_matches_numpy(self, backend, factored):
        """Every backend gives NumPy's error and weights, in its namespace and device."""
        z, labels, h = _chunk()
        idx = np.array([9, 2, 33, 14])
        e_np, w_np = gradient_error(last_layer_gradients(z, labels, h, factored=factored), idx)
        G = last_layer_gradients(backend.asarray(z), backend.asarray(labels), backend.asarray(h),
                                 factored=factored)
        error, weights = gradient_error(G, backend.asarray(idx))
        assert backend.is_native(error) and backend.is_native(weights)
        np.testing.assert_allclose(backend.to_numpy(error), e_np, atol=1e-10)
        np.testing.assert_allclose(backend.to_numpy(weights), w_np, atol=1e-8)

    def test_wrong_weights_shape_raises(self):
        """Weights that do not match the indices raise a ValueError naming 'weights'."""
        G = last_layer_gradients(*_chunk())
        with pytest.raises(ValueError, match=r"'weights'.*shape"):
            gradient_error(G, np.array([0, 1, 2]), weights=np.ones(2))

    def test_non_finite_weights_raise(self):
        """NaN weights raise a ValueError naming 'weights'."""
        G = last_layer_gradients(*_chunk())
        with pytest.raises(ValueError, match=r"'weights'.*NaN"):
            gradient_error(G, np.array([0, 1]), weights=np.array([1.0, np.nan]))


class TestBackendMatrix:
    """The criterion on every backend of the conftest matrix (CUDA and CuPy where present)."""

    def _factored(self, rng, backend):
        logits = rng.standard_normal((2, 30, 4))
        F = last_layer_gradients(logits, rng.integers(0, 4, (2, 30)),
                                 rng.standard_normal((2, 30, 5)), factored=True)
        return F, FactoredGradients(backend.asarray(F.residuals), backend.asarray(F.inputs))

    def test_nested_errors_factored(self, backend, rng):
        """Factored nested errors: native result, equal to NumPy's."""
        F, F_b = self._factored(rng, backend)
        order = rng.permutation(30)[:10]
        out = nested_gradient_errors(F_b, order)
        assert backend.is_native(out)
        np.testing.assert_allclose(backend.to_numpy(out), nested_gradient_errors(F, order),
                                   atol=1e-10)

    def test_nested_errors_dense(self, backend, rng):
        """Dense nested errors: native result, equal to NumPy's."""
        F, _ = self._factored(rng, backend)
        G = F.materialize()
        order = rng.permutation(30)[:10]
        out = nested_gradient_errors(backend.asarray(G), order)
        assert backend.is_native(out)
        np.testing.assert_allclose(backend.to_numpy(out), nested_gradient_errors(G, order),
                                   atol=1e-10)

    def test_gradient_error_factored(self, backend, rng):
        """Error and weights of a subset: native, equal to NumPy's."""
        F, F_b = self._factored(rng, backend)
        idx = rng.permutation(30)[:8]
        err, w = gradient_error(F_b, idx)
        assert backend.is_native(err) and backend.is_native(w)
        expected_err, expected_w = gradient_error(F, idx)
        np.testing.assert_allclose(backend.to_numpy(err), expected_err, atol=1e-10)
        np.testing.assert_allclose(backend.to_numpy(w), expected_w, rtol=1e-8, atol=1e-10)
