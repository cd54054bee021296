"""Tests of the Gram algebra (_gram) and the selector's feedback-store entry point."""

import numpy as np
import pytest
from conftest import softmax_store

from graft_select import GraftSelector, StoredGradients
from graft_select._backend import cholesky_checked, get_namespace
from graft_select._criterion import nested_errors, subset_weights
from graft_select._gram import (
    _stack_times,
    chunk_grams,
    gram_block,
    gram_eigenvectors,
    gram_summaries,
    maxvol_rank,
)
from graft_select.gradients import (
    FactoredGradients,
    gradient_error,
    last_layer_gradients,
    nested_gradient_errors,
)

torch = pytest.importorskip("torch")


def _factors(rng, m=3, B=40, C=4, d=6, dtype=np.float64):
    logits = rng.standard_normal((m, B, C))
    y = rng.integers(0, C, (m, B))
    E = rng.standard_normal((m, B, d))
    F = last_layer_gradients(logits, y, E, factored=True)
    return F.residuals.astype(dtype), E.astype(dtype), F.materialize().astype(dtype)


def _xp(X):
    return get_namespace(X)[0]


class TestChunkGrams:
    def test_matches_dense_gram(self, rng):
        """K equals G G^T of the materialised gradients times each chunk's scale f^2."""
        R, E, G = _factors(rng)
        K, (f, t) = chunk_grams(R, E, _xp(R))
        assert t is None
        np.testing.assert_allclose(K, G @ np.swapaxes(G, 1, 2) * (f**2)[:, None, None],
                                   rtol=1e-10)

    def test_scale_is_power_of_two_to_unit_peak(self, rng):
        """f brings every chunk's largest residual into [1, 2)."""
        R, E, _ = _factors(rng)
        R = R * np.array([1e-30, 1.0, 1e20])[:, None, None]
        _, (f, _) = chunk_grams(R, E, _xp(R))
        peaks = np.abs(R * f[:, None, None]).max(axis=(1, 2))
        assert np.all((peaks >= 1) & (peaks < 2))
        assert np.all(np.frexp(f)[0] == 0.5)

    def test_huge_embeddings_scaled_with_bias(self, rng):
        """Embeddings of 1e25 in float32 give the Gram of (f R) ⊗ t [E, 1], finite."""
        R, E, _ = _factors(rng, dtype=np.float32)
        big = E * np.float32(1e25)
        K, (f, t) = chunk_grams(R, big, _xp(R))
        assert np.all(np.isfinite(K)) and np.all(t < 1)
        R64, H64 = R.astype(np.float64) * f[:, None, None], big.astype(np.float64)
        H64 = np.concatenate([H64, np.ones((*H64.shape[:2], 1))], axis=2) * t[:, None, None]
        expected = (R64 @ np.swapaxes(R64, 1, 2)) * (H64 @ np.swapaxes(H64, 1, 2))
        np.testing.assert_allclose(K, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())

    def test_subset_reuses_scales(self, rng):
        """Rows of a chunk given the first call's scales get the same Gram entries."""
        R, E, _ = _factors(rng)
        K, scales = chunk_grams(R * 1e-25, E, _xp(R))
        K_sub, _ = chunk_grams(R[:, :5] * 1e-25, E[:, :5], _xp(R), scales)
        np.testing.assert_allclose(K_sub, K[:, :5, :5], rtol=1e-12)


class TestSummaries:
    def test_mean_gradient_products(self, rng):
        """b = G g and ||g||^2 from K equal the dense quantities."""
        R, E, G = _factors(rng)
        K, (f, _) = chunk_grams(R, E, _xp(R))
        b, gg, zero, norms = gram_summaries(K, _xp(K))
        g = G.mean(axis=1)
        np.testing.assert_allclose(b / (f**2)[:, None], np.einsum("mbp,mp->mb", G, g),
                                   rtol=1e-9)
        np.testing.assert_allclose(gg / f**2, (g * g).sum(axis=1), rtol=1e-9)
        np.testing.assert_allclose(norms / f[:, None], np.linalg.norm(G, axis=2), rtol=1e-9)
        assert not np.any(zero)

    def test_zero_mean_gradient_flagged(self):
        """A chunk whose gradients cancel (g = 0) is flagged zero."""
        R = np.array([[[1.0, -1.0], [-1.0, 1.0]]])
        E = np.ones((1, 2, 3))
        K, _ = chunk_grams(R, E, _xp(R))
        assert bool(gram_summaries(K, _xp(K))[2][0])


class TestGramEigenvectors:
    def test_basis_spans_exact_low_rank(self, rng):
        """For K of rank r, the p=0 basis is orthonormal and spans range(K)."""
        A = rng.standard_normal((2, 60, 5))
        K = A @ np.swapaxes(A, 1, 2)
        U = gram_eigenvectors(K, 5, np.random.default_rng(0), _xp(K))
        np.testing.assert_allclose(np.swapaxes(U, 1, 2) @ U, np.broadcast_to(np.eye(5),
                                   (2, 5, 5)), atol=1e-10)
        projected = U @ (np.swapaxes(U, 1, 2) @ A)
        np.testing.assert_allclose(projected, A, atol=1e-8)

    def test_ritz_vectors_with_oversampling(self, rng):
        """With oversampling the top Ritz vectors match eigh's, largest first."""
        Q = np.linalg.qr(rng.standard_normal((80, 80)))[0]
        values = 2.0 ** -np.arange(80)
        K = ((Q * values) @ Q.T)[None]
        U = gram_eigenvectors(K, 3, np.random.default_rng(1), _xp(K), n_oversamples=10)
        overlap = np.abs(np.sum(U[0] * Q[:, :3], axis=0))
        np.testing.assert_allclose(overlap, 1.0, atol=1e-6)

    def test_full_width_request_uses_eigh(self, rng):
        """When r + p reaches B the exact eigenvectors are returned, largest first."""
        A = rng.standard_normal((1, 10, 10))
        K = A @ np.swapaxes(A, 1, 2)
        U = gram_eigenvectors(K, 8, np.random.default_rng(0), _xp(K), n_oversamples=2)
        vectors = np.linalg.eigh(K)[1][..., ::-1][..., :8]
        np.testing.assert_allclose(np.abs(np.sum(U * vectors, axis=1)), 1.0, atol=1e-8)

    def test_wide_request_uses_the_range_finder(self, rng):
        """Below B (even r > B / 2) the basis is orth(K Omega): orthonormal, in K's range."""
        A = rng.standard_normal((2, 10, 4))
        K = A @ np.swapaxes(A, 1, 2)  # rank 4: the range finder must stay inside it
        U = gram_eigenvectors(K, 4, np.random.default_rng(0), _xp(K))
        eye4 = np.broadcast_to(np.eye(4), (2, 4, 4))
        np.testing.assert_allclose(np.swapaxes(U, 1, 2) @ U, eye4, atol=1e-10)
        top = np.linalg.eigh(K)[1][..., ::-1][..., :4]
        projected = top @ (np.swapaxes(top, 1, 2) @ U)
        np.testing.assert_allclose(projected, U, atol=1e-8)
        wide = gram_eigenvectors(K, 7, np.random.default_rng(0), _xp(K))
        assert wide.shape == (2, 10, 7)
        eye7 = np.broadcast_to(np.eye(7), (2, 7, 7))
        np.testing.assert_allclose(np.swapaxes(wide, 1, 2) @ wide, eye7, atol=1e-8)


class TestNestedAndWeights:
    def test_nested_errors_match_public(self, rng):
        """Prefix errors from K equal nested_gradient_errors on the dense gradients."""
        R, E, G = _factors(rng)
        K, _ = chunk_grams(R, E, _xp(R))
        b, gg, zero, _ = gram_summaries(K, _xp(K))
        order = np.stack([rng.permutation(40)[:12] for _ in range(3)])
        errors = nested_errors(K, b, gg, zero, order, 4 + 6 + 1, _xp(K))
        np.testing.assert_allclose(errors, nested_gradient_errors(G, order), atol=1e-7)

    def test_subset_weights_match_gradient_error(self, rng):
        """Weights and errors from Gram blocks equal gradient_error's least squares."""
        R, E, G = _factors(rng)
        K, _ = chunk_grams(R, E, _xp(R))
        b, gg, zero, _ = gram_summaries(K, _xp(K))
        idx = np.stack([rng.permutation(40)[:10] for _ in range(3)])
        K_sub = np.take_along_axis(np.take_along_axis(K, idx[:, :, None], 1),
                                   idx[:, None, :], 2)
        w, err = subset_weights(K_sub, np.take_along_axis(b, idx, 1), gg, zero, 11, _xp(K))
        expected_err, expected_w = gradient_error(G, idx)
        np.testing.assert_allclose(err, expected_err, atol=1e-7)
        np.testing.assert_allclose(w, expected_w, rtol=1e-6, atol=1e-9)

    def test_dependent_rows_fall_back_to_pinv(self, rng):
        """A repeated row makes K singular: the minimum-norm weights split between copies."""
        R, E, G = _factors(rng, m=1)
        K, _ = chunk_grams(R, E, _xp(R))
        b, gg, zero, _ = gram_summaries(K, _xp(K))
        idx = np.array([[3, 7, 3]])
        K_sub = K[:, idx[0]][:, :, idx[0]]
        w, err = subset_weights(K_sub, b[:, idx[0]], gg, zero, 11, _xp(K))
        assert np.all(np.isfinite(w))
        assert w[0, 0] == pytest.approx(w[0, 2], rel=1e-6)
        np.testing.assert_allclose(err, gradient_error(G, idx)[0], atol=1e-7)

    def test_padding_changes_nothing(self, rng):
        """Zero rows and columns with zero b (padding) get weight 0, same error."""
        R, E, _ = _factors(rng, m=1)
        K, _ = chunk_grams(R, E, _xp(R))
        b, gg, zero, _ = gram_summaries(K, _xp(K))
        idx = np.array([1, 4, 9])
        K_sub = K[:, idx][:, :, idx]
        padded = np.zeros((1, 5, 5))
        padded[:, :3, :3] = K_sub
        b_pad = np.zeros((1, 5))
        b_pad[:, :3] = b[:, idx]
        w, err = subset_weights(padded, b_pad, gg, zero, 11, _xp(K))
        w0, err0 = subset_weights(K_sub, b[:, idx], gg, zero, 11, _xp(K))
        np.testing.assert_allclose(w[:, :3], w0, rtol=1e-10)
        assert np.all(w[:, 3:] == 0)
        np.testing.assert_allclose(err, err0, rtol=1e-10)


class TestCholeskyChecked:
    @pytest.mark.parametrize("lib", ["numpy", "torch"])
    def test_flags_the_failures(self, lib):
        """A stack with one indefinite matrix: ok is False there only, nothing raised."""
        good = np.array([[2.0, 0.5], [0.5, 1.0]])
        bad = np.array([[1.0, 2.0], [2.0, 1.0]])
        A = np.stack([good, bad, good])
        if lib == "torch":
            A = torch.from_numpy(A)
        L, ok = cholesky_checked(A, _xp(A))
        assert np.asarray(ok).tolist() == [True, False, True]
        np.testing.assert_allclose(np.asarray(L[0]), np.linalg.cholesky(good))

    def test_cupy_path_flags_finite_factors_without_positive_pivots(self, monkeypatch):
        """CuPy path: a finite factor with a zero or negative diagonal entry is not ok."""
        import graft_select._backend as backend_module

        xp = _xp(np.ones(1))
        spd = np.array([[4.0, 2.0], [2.0, 3.0]])
        A = np.stack([spd] * 4)

        def cholesky(stack):
            # a stand-in for cupy.linalg.cholesky, which flags nothing itself: matrix 1
            # stopped at a zero pivot, 2 at a negative one, 3 left a NaN off the diagonal
            L = np.linalg.cholesky(stack)
            L[1, 1, 1], L[2, 0, 0], L[3, 1, 0] = 0.0, -1.0, np.nan
            return L

        class FakeCupy:
            __name__ = "fake_cupy"
            linalg = type("linalg", (), {"cholesky": staticmethod(cholesky),
                                         "diagonal": staticmethod(xp.linalg.diagonal)})

            def __getattr__(self, name):
                return getattr(xp, name)

        fake = FakeCupy()
        monkeypatch.setattr(backend_module, "is_cupy", lambda namespace: namespace is fake)
        _, ok = cholesky_checked(A, fake)
        assert np.asarray(ok).tolist() == [True, False, False, False]

    @pytest.mark.parametrize("failing_call", [0, 1])
    def test_out_of_memory_propagates(self, monkeypatch, failing_call):
        """A MemoryError (as CUDA out-of-memory) escapes, from the stack or the one-by-one pass."""
        xp = _xp(np.ones(1))
        factor = xp.linalg.cholesky
        calls = []

        def cholesky(A):
            calls.append(A.shape)
            if len(calls) == 1 and failing_call == 1:
                raise np.linalg.LinAlgError("Matrix is not positive definite")
            if len(calls) > failing_call:
                raise MemoryError("out of memory allocating 1073741824 bytes")
            return factor(A)

        monkeypatch.setattr(xp.linalg, "cholesky", cholesky)
        A = np.stack([np.eye(2), np.eye(2)])
        with pytest.raises(MemoryError, match="out of memory"):
            cholesky_checked(A, xp)
        assert len(calls) == failing_call + 1


@pytest.mark.parametrize("to", [np.asarray, torch.from_numpy],
                         ids=["numpy", "torch"])
def test_gram_block(rng, to):
    """``K[rows][:, rows]`` per matrix, in each namespace's path (torch gathers)."""
    K = rng.standard_normal((3, 9, 9)).astype(np.float32)
    rows = np.stack([rng.permutation(9)[:5] for _ in range(3)])
    block = gram_block(to(K), to(rows), _xp(to(K)))
    expected = np.stack([K[b][np.ix_(rows[b], rows[b])] for b in range(3)])
    np.testing.assert_array_equal(np.asarray(block), expected)
    assert type(block) is type(to(K))


@pytest.mark.parametrize("case", ["numpy", "torch", "torch-strided", "torch-float64"])
def test_stack_times(rng, case):
    """``K @ omega`` of a stack by one matrix, folded into one product, in each path:
    NumPy, host torch through NumPy views (contiguous stacks), other torch stacks."""
    dtype = np.float64 if case.endswith("float64") else np.float32
    K = rng.standard_normal((4, 12, 12)).astype(dtype)
    omega = rng.standard_normal((12, 5)).astype(dtype)
    if case == "numpy":
        K_in, omega_in = K, omega
    else:
        K_in, omega_in = torch.from_numpy(K), torch.from_numpy(omega)
        if case == "torch-strided":  # a transposed view: not C-contiguous
            K_in = torch.from_numpy(np.ascontiguousarray(np.swapaxes(K, -1, -2))).mT
    Y = _stack_times(K_in, omega_in, _xp(K_in))
    assert type(Y) is type(K_in) and Y.shape == (4, 12, 5) and Y.dtype == K_in.dtype
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(np.asarray(Y), K @ omega, rtol=tol, atol=tol)


def test_maxvol_rank():
    """The largest MaxVol share of any size up to k_hi; all of k without a uniform share."""
    assert maxvol_rank(154, 0.0) == 154
    assert maxvol_rank(52, 0.5) == 26
    assert maxvol_rank(51, 0.5) == 25
    assert maxvol_rank(1, 0.9) == 1


class TestFitFeedback:
    def _store(self, rng, n=1200, d=16, C=5):
        return softmax_store(rng, n, d, C)

    def _selector(self, **kwargs):
        params = {"fraction": 0.3, "chunk_size": 100, "basis": "gradients",
                  "uniform_share": 0.5, "random_state": 0}
        return GraftSelector(**{**params, **kwargs})

    def test_attributes_consistent_with_public_error(self, rng):
        """gradient_error_ and sample_weight_ are those of gradient_error on the subsets."""
        R, E = self._store(rng)
        rows = torch.randperm(1200, generator=torch.Generator().manual_seed(0))[:1000]
        sel = self._selector().fit(None, gradients=StoredGradients(R, E, rows))
        H = torch.cat([E[rows], torch.ones(1000, 1)], 1).double()
        G = FactoredGradients(R[rows].double(), H).materialize().numpy()
        start = 0
        for c, k in enumerate(sel.subset_sizes_):
            local = sel.sample_indices_[start:start + k].numpy() - 100 * c
            assert np.all((local >= 0) & (local < 100))
            err, w = gradient_error(G[100 * c:100 * (c + 1)], local)
            assert sel.gradient_error_[c] == pytest.approx(float(err), abs=2e-3)
            np.testing.assert_allclose(sel.sample_weight_[start:start + k].numpy() / 100, w,
                                       rtol=2e-2, atol=2e-3)
            start += k
        assert len(torch.unique(sel.sample_indices_)) == len(sel.sample_indices_)
        assert sel.subset_sizes_.sum() == round(0.3 * 1000)

    @pytest.mark.parametrize("uniform_share", [0.0, 0.5])
    def test_without_weights_same_selection(self, rng, uniform_share):
        """compute_weights=False: same subsets, same errors (pass 1's for prefixes), no weights."""
        R, E = self._store(rng)
        rows = torch.randperm(1200, generator=torch.Generator().manual_seed(1))
        full = stored_fit(self._selector(uniform_share=uniform_share), R, E, rows)
        lean = self._selector(uniform_share=uniform_share).fit(
            None, gradients=StoredGradients(R, E, rows), compute_weights=False)
        assert torch.equal(full.sample_indices_, lean.sample_indices_)
        assert lean.sample_weight_ is None and full.sample_weight_ is not None
        np.testing.assert_allclose(lean.gradient_error_, full.gradient_error_, atol=2e-3)

    def test_deterministic_for_seed(self, rng):
        """Two fits with the same random_state select the same rows."""
        R, E = self._store(rng)
        rows = torch.arange(1200)
        a = self._selector().fit(None, gradients=StoredGradients(R, E, rows)).sample_indices_
        b = self._selector().fit(None, gradients=StoredGradients(R, E, rows)).sample_indices_
        assert torch.equal(a, b)

    def test_half_store_computes_in_float32(self, rng):
        """A float16 store selects as its values converted to float32 (no upcast copy needed)."""
        R, E = self._store(rng)
        rows = torch.arange(1200)
        half = self._selector().fit(None, gradients=StoredGradients(R.half(), E.bfloat16(), rows))
        full = stored_fit(self._selector(), R.half().float(), E.bfloat16().float(), rows)
        assert torch.equal(half.sample_indices_, full.sample_indices_)
        np.testing.assert_array_equal(half.gradient_error_, full.gradient_error_)

    def test_small_groups(self, rng, monkeypatch):
        """Chunks gathered a few at a time still give a complete, valid selection."""
        import graft_select._feedback as feedback_module

        monkeypatch.setattr(feedback_module, "GROUP_ROWS", 150)
        R, E = self._store(rng)
        sel = self._selector().fit(None, gradients=StoredGradients(R, E, torch.arange(1200)))
        assert sel.subset_sizes_.sum() == 360 and len(sel.gradient_error_) == 12

    def test_without_embeddings(self, rng):
        """Residuals alone (bias gradients) are accepted."""
        R, _ = self._store(rng)
        sel = self._selector().fit(None, gradients=StoredGradients(R, None, torch.arange(1200)))
        assert not hasattr(sel, "n_features_in_")
        assert np.all(np.isfinite(sel.gradient_error_))

    def test_non_finite_store_named(self, rng):
        """NaN in a stored row is a ValueError naming the chunks; the estimator is unchanged."""
        R, E = self._store(rng)
        E[250, 3] = float("nan")
        sel = self._selector()
        with pytest.raises(ValueError, match="NaN or infinity in the chunks"):
            sel.fit(None, gradients=StoredGradients(R, E, torch.arange(1200)))
        assert not hasattr(sel, "sample_indices_")

    def test_rejects_input_basis(self, rng):
        """basis='input' needs the rows of X, which a StoredGradients view does not hold."""
        R, E = self._store(rng)
        with pytest.raises(ValueError, match="holds gradients only"):
            stored_fit(self._selector(basis="input"), R, E, torch.arange(1200))

    def test_sampler_passes_the_store_itself(self, rng):
        """The default refit reads the store's own tensors (no gathered copy)."""
        from graft_select.sampler import GraftBatchSampler

        R, E = self._store(rng)
        sampler = GraftBatchSampler(1200, 100, fraction=0.3, seed=0, warm_start_epochs=1)
        sampler.observe(torch.arange(1200), embeddings=E,
                        logits=torch.log(R + torch.nn.functional.one_hot(
                            R.argmin(1), 5).float() + 1e-3), targets=R.argmin(1))
        planner, store = sampler._planner, sampler._recorder.store
        draft = planner._prepare(0, 1, 1)  # what a refit of epoch 1 reads from the store
        selector = planner._make_selector(0.3, draft)
        X, factors = planner.source.inputs(torch.arange(1200), selector, draft.tables)
        assert X is None
        # the store hands out views of its tables: same memory, not a gathered copy
        assert factors[0].data_ptr() == store["residuals"].data_ptr()
        assert factors[1].data_ptr() == store["embeddings"].data_ptr()
        sampler.set_epoch(1)
        assert len(list(sampler)) > 0 and sampler.last_refit.gradient_error is not None


def stored_fit(selector, residuals, embeddings, rows, **kwargs):
    """``selector`` fitted on a StoredGradients view of the table."""
    return selector.fit(None, gradients=StoredGradients(residuals, embeddings, rows), **kwargs)


class TestBackendMatrix:
    def test_stored_gradients_on_every_backend(self, backend, rng):
        """The store path runs in the store's library and device and matches NumPy."""
        n, C, d = 600, 5, 40  # gradients of 205 dimensions: every size has an error
        logits = rng.standard_normal((n, C))
        F = last_layer_gradients(logits, rng.integers(0, C, n), factored=True)
        E = rng.standard_normal((n, d))
        rows = rng.permutation(n)[:500]
        params = {"fraction": 0.3, "chunk_size": 100, "basis": "gradients",
                  "uniform_share": 0.5, "random_state": 0}
        expected = stored_fit(GraftSelector(**params), F.residuals, E, rows)
        sel = stored_fit(GraftSelector(**params), backend.asarray(F.residuals),
                         backend.asarray(E), rows)
        assert backend.is_native(sel.sample_indices_)
        assert backend.is_native(sel.sample_weight_)
        np.testing.assert_array_equal(backend.to_numpy(sel.sample_indices_),
                                      expected.sample_indices_)
        np.testing.assert_allclose(sel.gradient_error_, expected.gradient_error_, atol=1e-8)

    def test_cholesky_checked_on_every_backend(self, backend):
        """Failures are flagged, not raised, in every library."""
        A = backend.asarray(np.stack([np.eye(2) * 2, [[1.0, 2.0], [2.0, 1.0]]]))
        L, ok = cholesky_checked(A, get_namespace(A)[0])
        assert backend.to_numpy(ok).tolist() == [True, False]
        np.testing.assert_allclose(backend.to_numpy(L)[0], np.eye(2) * np.sqrt(2))
