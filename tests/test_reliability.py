"""Adversarial input (issue 11): each test names the finding it guards.

Every test here failed on the code before the fix (silent wrong answers, crashes deep
inside LAPACK or unclear messages); the sampler-side findings are tested beside the
sampler.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse

from graft_select import GraftResampler, GraftSelector, fast_maxvol, low_rank_features
from graft_select._sizing import DEFAULT_CHUNK_ROWS, budget_overshoot, default_chunks
from graft_select.cli import main
from graft_select.gradients import (
    FactoredGradients,
    gradient_error,
    last_layer_gradients,
    nested_gradient_errors,
)

torch = pytest.importorskip("torch")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _margin_logits(rng, n, n_classes, margin, dtype=np.float32, misfit=5):
    """Logits whose true class leads by ``margin`` (except the first ``misfit`` rows)."""
    y = rng.integers(0, n_classes, n)
    Z = rng.standard_normal((n, n_classes))
    Z[np.arange(n), y] += margin
    Z[:misfit] = rng.standard_normal((misfit, n_classes))
    return Z.astype(dtype), y


# ------------------------------------------------------------ silent wrong answers


class TestSilentWrongAnswers:
    @pytest.mark.parametrize("library", ["numpy", "torch"])
    def test_float32_large_input_no_nan(self, rng, library):
        """Item 1: float32 X * 2e6 gives an orthonormal, finite factor (power iterations)."""
        X = (rng.random((3000, 300)) * 2e6).astype(np.float32)
        if library == "torch":
            X = torch.from_numpy(X)
        U = np.asarray(low_rank_features(X, 20, random_state=0))
        assert np.all(np.isfinite(U))
        np.testing.assert_allclose(U.T @ U, np.eye(20), atol=1e-4)

    def test_float32_large_input_in_selector(self, rng):
        """Item 1: the selector on large float32 X does not blame fast_maxvol for NaN."""
        X = (rng.random((600, 80)) * 2e6).astype(np.float32)
        selector = GraftSelector(fraction=0.1, svd_method="randomized", random_state=0).fit(X)
        assert selector.sample_indices_.size == 60

    @pytest.mark.parametrize("scale, dtype", [(1e-40, np.float32), (1e-4, np.float16),
                                              (1e-310, np.float64), (1e300, np.float64)])
    def test_fast_maxvol_extreme_scale(self, rng, scale, dtype):
        """Item 2: tiny or huge A gives the pivots of A, not the first rows or OverflowError."""
        A = rng.standard_normal((50, 4))
        expected = fast_maxvol(A).tolist()
        assert expected != [0, 1, 2, 3]
        assert fast_maxvol((A * scale).astype(dtype)).tolist() == expected

    @pytest.mark.parametrize("margin", [45.0, 60.0])
    def test_factored_error_large_margin(self, rng, margin):
        """Item 3: float32 logits with a large margin: factored error = dense error > 0."""
        Z, y = _margin_logits(rng, 40, 3, margin, misfit=0)
        H = rng.standard_normal((40, 5)).astype(np.float32)
        F = last_layer_gradients(Z, y, H, factored=True)
        idx = np.arange(4)
        factored = float(gradient_error(F, idx)[0])
        reference = float(gradient_error(F.materialize().astype(np.float64), idx)[0])
        assert reference > 0.1
        assert factored == pytest.approx(reference, rel=1e-3)
        nested = np.asarray(nested_gradient_errors(F, idx))
        assert nested[-1] == pytest.approx(reference, rel=1e-3)

    def test_selector_gradient_error_large_margin(self, rng):
        """Item 3: gradient_error_ (the value RefitReport reports) is not 0 at margin 60."""
        Z, y = _margin_logits(rng, 64, 3, 60.0)
        H = rng.standard_normal((64, 5)).astype(np.float32)
        F = last_layer_gradients(Z, y, H, factored=True)
        X = rng.standard_normal((64, 6))
        # basis='input' (written before basis='auto' became the default): MaxVol on X leaves
        # a real error, which under- or overflow used to report as 0
        selector = GraftSelector(fraction=0.1, basis="input", random_state=0).fit(
            X, gradients=F)
        dense = GraftSelector(fraction=0.1, basis="input", random_state=0).fit(
            X, gradients=F.materialize().astype(np.float64))
        assert selector.gradient_error_[0] > 0.05
        assert selector.gradient_error_[0] == pytest.approx(dense.gradient_error_[0], rel=1e-3)

    def test_refit_report_large_margin(self, rng):
        """Item 3: RefitReport.gradient_error is not 0 for float32 logits at margin 60."""
        from graft_select.sampler import GraftBatchSampler

        n = 256
        Z, y = _margin_logits(rng, n, 4, 60.0, misfit=0)
        embeddings = torch.tensor(rng.standard_normal((n, 6)), dtype=torch.float32)
        sampler = GraftBatchSampler(n, 32, fraction=0.3, seed=0, warm_start_epochs=1,
                                    pool_factor=1.0)  # the error of a 0.3 selection
        sampler.observe(torch.arange(n), embeddings=embeddings, logits=torch.from_numpy(Z),
                        targets=torch.from_numpy(y))
        sampler.set_epoch(1)
        list(sampler)
        assert sampler.last_refit.gradient_error > 0.05

    def test_sample_weight_of_huge_gradients(self, rng):
        """Item 3: fit(X, gradients=G * 1e20 in float32) gives the weights of G, not 0."""
        X = rng.standard_normal((40, 6))
        G = rng.standard_normal((40, 8))
        base = GraftSelector(fraction=0.25, random_state=0).fit(X, gradients=G)
        huge = GraftSelector(fraction=0.25, random_state=0).fit(
            X, gradients=(G * 1e20).astype(np.float32))
        assert np.array_equal(huge.sample_indices_, base.sample_indices_)
        np.testing.assert_allclose(huge.sample_weight_, base.sample_weight_, rtol=1e-3,
                                   atol=1e-3)
        assert np.any(huge.sample_weight_ != 0)

    def test_failed_fit_leaves_estimator_as_it_was(self, rng):
        """Item 4: a rejected fit keeps the attributes of the previous fit, all of them."""
        selector = GraftSelector(fraction=0.25, chunk_size=10, random_state=0)
        selector.fit(rng.standard_normal((40, 6)))
        before = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                  for k, v in vars(selector).items()}
        bad = rng.standard_normal((30, 3))
        with pytest.raises(ValueError, match="'y' has"):
            selector.fit(bad, np.zeros(5))
        assert set(vars(selector)) == set(before)
        for key, value in before.items():
            assert np.array_equal(np.asarray(getattr(selector, key)), np.asarray(value)), key

    def test_failed_first_fit_leaves_estimator_unfitted(self, rng):
        """Item 4: a first fit that fails sets no fitted attribute."""
        selector = GraftSelector(fraction=0.25)
        with pytest.raises(ValueError):
            selector.fit(rng.standard_normal((30, 3)), np.zeros(5))
        assert not [k for k in vars(selector) if k.endswith("_")]

    @pytest.mark.parametrize("param", [dict(fraction=True), dict(n_components=True),
                                       dict(uniform_share=False), dict(gradient_tol=True),
                                       dict(min_fraction=True), dict(max_fraction=True)])
    def test_bools_as_numbers_rejected(self, rng, param):
        """Item 10: GraftSelector(fraction=True) is a TypeError, not 'keep everything'."""
        name = next(iter(param))
        with pytest.raises(TypeError, match=f"'{name}' parameter of GraftSelector"):
            GraftSelector(**param).fit(rng.standard_normal((20, 3)))

    def test_refine_string_rejected(self, rng):
        """Item 10: a string for a bool parameter is rejected."""
        with pytest.raises((TypeError, ValueError), match="refine"):
            GraftSelector(refine="False").fit(rng.standard_normal((20, 3)))


class TestBudget:
    def test_warns_when_chunk_rule_overshoots(self, rng):
        """Item 9: fraction 0.3 with chunks of 2 keeps 50% and says so."""
        with pytest.warns(UserWarning, match="at least one row"):
            selector = GraftSelector(fraction=0.3, chunk_size=2, random_state=0).fit(
                rng.standard_normal((40, 3)))
        assert selector.sample_indices_.size == 20

    def test_no_warning_within_budget(self, rng):
        """Item 9: no warning when the total is the budget."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            GraftSelector(fraction=0.3, chunk_size=10, random_state=0).fit(
                rng.standard_normal((40, 3)))

    def test_overshoot_threshold(self):
        """Item 9: the warning text appears past 10% over budget only."""
        assert budget_overshoot([11], 0.1, [100], "X") is None
        assert "12 of 100" in budget_overshoot([12], 0.1, [100], "X")

    def test_cli_prints_budget_warning(self, tmp_path, rng, capsys):
        """Item 9: select --fraction 0.3 --batch-size 2 prints a warning line."""
        np.save(tmp_path / "X.npy", rng.standard_normal((40, 3)))
        code = main(["select", str(tmp_path / "X.npy"), "--fraction", "0.3",
                     "--batch-size", "2", "-o", str(tmp_path / "out.npy")])
        assert code == 0
        assert "graft-select: warning:" in capsys.readouterr().err


# ---------------------------------------------------------------------- CSV header


class TestCsvHeader:
    def _select(self, tmp_path, text, *extra, encoding="utf-8"):
        path = tmp_path / "X.csv"
        path.write_text(text, encoding=encoding)
        out = tmp_path / "out.txt"
        code = main(["select", str(path), "--fraction", "1.0", "-o", str(out), *extra])
        return code, (np.loadtxt(out, dtype=np.int64, ndmin=1) if code == 0 else None)

    @staticmethod
    def _rows(n=6, start=1):
        return "".join(f"{i},{i * i % 7},{i % 3}\n" for i in range(start, start + n))

    def test_bom_first_row_is_data(self, tmp_path):
        """Item 8: a byte-order mark does not turn the first data row into a header."""
        code, indices = self._select(tmp_path, "\ufeff" + self._rows())
        assert code == 0 and indices.size == 6

    def test_na_first_row_is_data(self, tmp_path, capsys):
        """Item 8: NA,2,3 is a data row with a missing value: an error on line 1."""
        code, _ = self._select(tmp_path, "NA,2,3\n" + self._rows())
        assert code == 2
        assert "line 1" in capsys.readouterr().err

    def test_text_header_skipped_by_default(self, tmp_path):
        """Item 8: a first row of names is a header by default."""
        code, indices = self._select(tmp_path, "a,b,c\n" + self._rows())
        assert code == 0 and indices.size == 6

    def test_header_flag(self, tmp_path):
        """Item 8: --header skips a numeric first row."""
        code, indices = self._select(tmp_path, self._rows(7), "--header")
        assert code == 0 and indices.size == 6

    def test_no_header_flag(self, tmp_path, capsys):
        """Item 8: --no-header reads a text first row as data (and fails on it)."""
        code, _ = self._select(tmp_path, "a,b,c\n" + self._rows(), "--no-header")
        assert code == 2
        assert "line 1" in capsys.readouterr().err

    def test_blank_lines(self, tmp_path, capsys):
        """Item 8: blank lines are skipped and errors give the file's line number."""
        code, indices = self._select(tmp_path, "\n" + self._rows(3) + "\n\n" + self._rows(3))
        assert code == 0 and indices.size == 6
        code, _ = self._select(tmp_path, "\n1,2,3\n\n4,x,6\n")
        assert code == 2
        assert "line 4" in capsys.readouterr().err

    def test_only_blank_lines(self, tmp_path, capsys):
        """Unclear message: a CSV of blank lines says so, not 'is empty' for a blank line."""
        code, _ = self._select(tmp_path, "\n\n")
        assert code == 2
        assert "blank lines" in capsys.readouterr().err

    def test_garbage_npy(self, tmp_path, capsys):
        """Unclear message: a garbage .npy is 'not a NumPy .npy file', not 'pickled' data."""
        (tmp_path / "X.npy").write_bytes(b"garbage, not an array at all")
        code = main(["select", str(tmp_path / "X.npy"), "--fraction", "0.5",
                     "-o", str(tmp_path / "o.npy")])
        err = capsys.readouterr().err
        assert code == 2
        assert "not a NumPy .npy file" in err and "pickle" not in err


# ------------------------------------------------------------------------ scaling


class TestDefaultChunks:
    def test_default_chunks_are_capped(self):
        """Hang 1: batch_size=None uses chunks of at most DEFAULT_CHUNK_ROWS rows."""
        for n in (2, 4096, 4097, 10_000, 123_457):
            chunks = default_chunks(n)
            sizes = [stop - begin for begin, stop in chunks]
            assert sum(sizes) == n and chunks[0][0] == 0 and chunks[-1][1] == n
            assert max(sizes) <= DEFAULT_CHUNK_ROWS and max(sizes) - min(sizes) <= 1
            assert len(chunks) == -(-n // DEFAULT_CHUNK_ROWS)

    def test_selector_default_is_chunked(self, rng):
        """Hang 1: GraftSelector() on 9000 rows fits per chunk, keeping the budget."""
        X = rng.standard_normal((9000, 4))
        selector = GraftSelector(fraction=0.1, random_state=0).fit(X)
        assert selector.chunk_sizes_.tolist() == [3000, 3000, 3000]
        assert selector.sample_indices_.size == 900

    def test_small_data_one_chunk(self, rng):
        """Hang 1: up to 4096 rows the default is still one chunk (results unchanged)."""
        selector = GraftSelector(fraction=0.1, random_state=0).fit(rng.standard_normal((500, 4)))
        assert selector.chunk_sizes_.tolist() == [500]


# -------------------------------------------------------------- unhelpful crashes


class TestHalfPrecision:
    @pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
    def test_torch_half_low_rank_features(self, rng, dtype):
        """Half precision: torch float16/bfloat16 computed in float32, returned as given."""
        X = torch.tensor(rng.standard_normal((60, 8)), dtype=getattr(torch, dtype))
        U = low_rank_features(X, 3, random_state=0)
        assert U.dtype == getattr(torch, dtype)
        assert torch.all(torch.isfinite(U.float()))

    def test_torch_bfloat16_fast_maxvol(self, rng):
        """Half precision: fast_maxvol on a bfloat16 tensor."""
        A = rng.standard_normal((40, 3))
        got = fast_maxvol(torch.tensor(A, dtype=torch.bfloat16))
        assert got.tolist() == fast_maxvol(torch.tensor(A, dtype=torch.bfloat16).float()).tolist()

    def test_numpy_float16_exact(self, rng):
        """Half precision: NumPy float16 with the exact SVD."""
        U = low_rank_features(rng.standard_normal((30, 6)).astype(np.float16), 2,
                              method="exact")
        assert U.dtype == np.float16

    def test_half_gradients_and_selector(self, rng):
        """Half precision: last_layer_gradients keeps float16; the selector accepts it."""
        Z = torch.tensor(rng.standard_normal((32, 3)), dtype=torch.float16)
        y = torch.tensor(rng.integers(0, 3, 32))
        G = last_layer_gradients(Z, y)
        assert G.dtype == torch.float16
        X = torch.tensor(rng.standard_normal((32, 4)), dtype=torch.bfloat16)
        selector = GraftSelector(fraction=0.25, random_state=0).fit(X, gradients=G)
        assert selector.sample_indices_.shape == (8,)


class TestMetaTensors:
    def test_kernels_reject_meta(self):
        """Meta tensors: a clear TypeError, not .item() failing."""
        X = torch.empty((10, 3), device="meta")
        for call in (lambda: low_rank_features(X, 2), lambda: fast_maxvol(X),
                     lambda: GraftSelector().fit(X)):
            with pytest.raises(TypeError, match="meta tensor"):
                call()


class TestOverflow:
    @pytest.mark.parametrize("scale", [1e100, 1e-150])
    @pytest.mark.parametrize("svd_method", ["exact", "randomized"])
    def test_selector_dense_extreme(self, rng, scale, svd_method):
        """LAPACK overflow: X * 1e100 selects the rows of X (in-range scales are guards)."""
        X = rng.standard_normal((300, 100))
        kwargs = dict(fraction=0.1, svd_method=svd_method, random_state=0)
        expected = GraftSelector(**kwargs).fit(X).sample_indices_
        assert np.array_equal(GraftSelector(**kwargs).fit(X * scale).sample_indices_, expected)

    def test_selector_sparse_extreme(self):
        """LAPACK overflow: sparse X * 1e200 ("Eigenvalues did not converge" before)."""
        X = scipy.sparse.random(200, 30, density=0.2, random_state=0, format="csr")
        kwargs = dict(fraction=0.1, svd_method="exact", random_state=0)
        expected = GraftSelector(**kwargs).fit(X).sample_indices_
        assert np.array_equal(GraftSelector(**kwargs).fit(X * 1e200).sample_indices_, expected)

    def test_low_rank_features_extreme(self, rng):
        """LAPACK overflow: the factor of X * 1e300 is the factor of X."""
        X = rng.standard_normal((60, 10))
        for method in ("exact", "randomized"):
            U = low_rank_features(X, 3, method=method, random_state=0)
            V = low_rank_features(X * 1e300, 3, method=method, random_state=0)
            np.testing.assert_allclose(np.abs(U.T @ V), np.eye(3), atol=1e-8)

    def test_factored_error_huge(self, rng):
        """LAPACK overflow: factored gradient_error at 1e200 ("SVD did not converge")."""
        R, H = rng.standard_normal((30, 3)), rng.standard_normal((30, 4))
        idx = np.arange(5)
        expected = gradient_error(FactoredGradients(R, H), idx)
        got = gradient_error(FactoredGradients(R * 1e200, H), idx)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-8)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)

    def test_torch_embeddings_huge(self, rng):
        """LAPACK overflow: torch embeddings x 1e20 with gradient features (eigh)."""
        Z = torch.tensor(rng.standard_normal((64, 3)), dtype=torch.float32)
        y = torch.tensor(rng.integers(0, 3, 64))
        H = torch.tensor(rng.standard_normal((64, 5)), dtype=torch.float32)
        X = torch.tensor(rng.standard_normal((64, 4)), dtype=torch.float32)
        kwargs = dict(fraction=0.25, basis="gradients", random_state=0)
        base = GraftSelector(**kwargs).fit(
            X, gradients=last_layer_gradients(Z, y, H, factored=True))
        huge = GraftSelector(**kwargs).fit(
            X, gradients=last_layer_gradients(Z, y, H * 1e20, factored=True))
        assert huge.sample_indices_.shape == base.sample_indices_.shape
        assert np.all(np.isfinite(huge.gradient_error_))


class TestOddArguments:
    def test_random_state_instance(self, rng):
        """random_state=np.random.RandomState(0) works (no AttributeError 'integers')."""
        X = rng.standard_normal((50, 5))
        a = GraftSelector(fraction=0.2, random_state=np.random.RandomState(0)).fit(X)
        b = GraftSelector(fraction=0.2, random_state=np.random.RandomState(0)).fit(X)
        assert np.array_equal(a.sample_indices_, b.sample_indices_)
        low_rank_features(X, 2, method="randomized", random_state=np.random.RandomState(0))

    def test_factored_row_counts_differ(self, rng):
        """FactoredGradients validation: factors with different row counts."""
        F = FactoredGradients(rng.standard_normal((20, 3)), rng.standard_normal((19, 4)))
        with pytest.raises(ValueError, match="leading shape"):
            GraftSelector().fit(rng.standard_normal((20, 3)), gradients=F)

    def test_factored_one_d_residuals(self, rng):
        """FactoredGradients validation: 1-D residuals name 'gradients.residuals'."""
        F = FactoredGradients(rng.standard_normal(20), rng.standard_normal((20, 4)))
        with pytest.raises(ValueError, match=r"'gradients.residuals' of GraftSelector"):
            GraftSelector().fit(rng.standard_normal((20, 3)), gradients=F)

    def test_factored_lists(self, rng):
        """FactoredGradients validation: list factors are read as arrays."""
        R, H = rng.standard_normal((20, 3)), rng.standard_normal((20, 4))
        X = rng.standard_normal((20, 3))
        a = GraftSelector(random_state=0).fit(X, gradients=FactoredGradients(R, H))
        b = GraftSelector(random_state=0).fit(
            X, gradients=FactoredGradients(R.tolist(), H.tolist()))
        assert np.array_equal(a.sample_indices_, b.sample_indices_)

    def test_factored_none(self, rng):
        """FactoredGradients validation: a None factor is a TypeError naming it."""
        F = FactoredGradients(None, rng.standard_normal((20, 4)))
        with pytest.raises(TypeError, match=r"'gradients.residuals'"):
            GraftSelector().fit(rng.standard_normal((20, 3)), gradients=F)

    def test_factored_stack_rejected(self, rng):
        """FactoredGradients validation: stacked factors are not one matrix of gradients."""
        F = FactoredGradients(rng.standard_normal((2, 20, 3)), rng.standard_normal((2, 20, 4)))
        with pytest.raises(ValueError, match="2-D factors"):
            GraftSelector().fit(rng.standard_normal((20, 3)), gradients=F)

    def test_materialize_mismatched_rows(self, rng):
        """FactoredGradients validation: materialize() with mismatched rows."""
        F = FactoredGradients(rng.standard_normal((5, 3)), rng.standard_normal((4, 2)))
        with pytest.raises(ValueError, match="leading shape"):
            F.materialize()

    def test_numpy_x_torch_y(self, rng):
        """Mixed libraries: NumPy X with torch y in fit_resample."""
        X = rng.standard_normal((40, 4))
        y = torch.arange(40)
        X_sub, y_sub = GraftResampler(fraction=0.25, random_state=0).fit_resample(X, y)
        assert isinstance(y_sub, torch.Tensor) and y_sub.shape == (10,)
        assert np.allclose(X_sub[:, 0], X[y_sub.numpy(), 0])

    def test_numpy_fit_torch_transform(self, rng):
        """Mixed libraries: a NumPy fit, then transform(torch_X)."""
        X = rng.standard_normal((40, 4))
        selector = GraftSelector(fraction=0.25, random_state=0).fit(X)
        out = selector.transform(torch.from_numpy(X))
        assert torch.equal(out, torch.from_numpy(X[selector.sample_indices_]))

    def test_last_layer_gradients_none_targets(self, rng):
        """Odd arguments: last_layer_gradients(Z, None) names 'targets'."""
        with pytest.raises(TypeError, match="'targets' of last_layer_gradients"):
            last_layer_gradients(rng.standard_normal((5, 3)), None)

    def test_mse_residual_overflow(self):
        """Finite input never gives inf out: an overflowing mse residual is a ValueError."""
        with pytest.raises(ValueError, match="overflows"):
            last_layer_gradients(np.full((3, 1), 1.5e308), np.full(3, -1.5e308), loss="mse")

    def test_fit_scalar_y(self, rng):
        """Odd arguments: fit(X, 3) names 'y'."""
        with pytest.raises(TypeError, match="'y' must be an array-like"):
            GraftSelector().fit(rng.standard_normal((10, 3)), 3)


# ----------------------------------------------------------------- unclear messages


class TestMessages:
    def test_fast_maxvol_none(self):
        """fast_maxvol(None) names 'A' (not 'get_namespace needs at least one array')."""
        with pytest.raises(TypeError, match="'A' of fast_maxvol must be an array, got None"):
            fast_maxvol(None)

    def test_ragged_lists(self):
        """Ragged lists: 'rectangular', naming the argument."""
        with pytest.raises(ValueError, match="'X' of low_rank_features must be a rectangular"):
            low_rank_features([[1.0, 2.0], [3.0]], 1)
        with pytest.raises(ValueError, match=r"'targets'.*rectangular"):
            last_layer_gradients(np.zeros((2, 2)), [[1.0, 0.0], [1.0]])

    @pytest.mark.parametrize("targets", [3, "abc"])
    def test_scalar_or_str_targets(self, targets):
        """Scalar or str targets: a TypeError naming 'targets'."""
        with pytest.raises(TypeError, match="'targets' of last_layer_gradients"):
            last_layer_gradients(np.zeros((2, 2)), targets)

    def test_targets_shape_reported_as_given(self):
        """2-D targets: the message gives the targets' own shape, not a reshaped one."""
        with pytest.raises(ValueError, match=r"got shape \(24, 1\)\.$"):
            last_layer_gradients(np.zeros((2, 24, 1)), np.zeros((24, 1)), loss="mse")

    def test_str_target_array(self):
        """A string array of targets names 'targets'."""
        with pytest.raises(TypeError, match=r"'targets'.*must hold numbers"):
            last_layer_gradients(np.zeros((2, 2)), np.array(["a", "b"]))

    def test_string_indices(self, rng):
        """String indices: a TypeError naming 'indices'."""
        G = rng.standard_normal((5, 3))
        with pytest.raises(TypeError, match="'indices' of gradient_error"):
            gradient_error(G, "01")
        with pytest.raises(TypeError, match="'indices' of gradient_error must hold integer"):
            gradient_error(G, ["0", "1"])

    @pytest.mark.parametrize("big", [2**63, 2**64, 2**70])
    def test_huge_indices(self, rng, big):
        """Indices >= 2**63 are reported as out of range with their true value."""
        G = rng.standard_normal((5, 3))
        with pytest.raises(ValueError, match=rf"outside \[0, 5\) \(first: {big}\)"):
            gradient_error(G, [0, big])

    def test_shape_texts(self, rng):
        """Shape texts: '(k,)' not '(k)', '(2,)' once, and no '(first: ())'."""
        G = rng.standard_normal((5, 3))
        with pytest.raises(ValueError) as info:
            gradient_error(G, np.zeros((2, 2), dtype=int))
        assert "(k,)" in str(info.value) and "(k)" not in str(info.value)
        with pytest.raises(ValueError) as info:
            gradient_error(G, np.array([0, 1]), weights=np.ones(3))
        assert "(2,) or (2,)" not in str(info.value) and "(2,)" in str(info.value)
        with pytest.raises(ValueError) as info:
            gradient_error(G, np.array([0, 1]), weights=np.array([1.0, np.nan]))
        assert "(first: 1)" in str(info.value)

    def test_nan_in_factored_names_gradients(self, rng):
        """NaN in FactoredGradients: blamed on 'gradients.residuals' of GraftSelector."""
        R = rng.standard_normal((20, 3))
        R[4, 1] = np.nan
        F = FactoredGradients(R, rng.standard_normal((20, 4)))
        with pytest.raises(ValueError, match=r"'gradients.residuals' of GraftSelector"):
            GraftSelector().fit(rng.standard_normal((20, 3)), gradients=F)

    @pytest.mark.parametrize("X, error", [
        (np.ones((10, 3), dtype=complex), ValueError),
        (np.full((10, 3), "a"), TypeError),
    ])
    def test_complex_or_str_x(self, X, error):
        """Complex or str X: the message names 'X' of GraftSelector."""
        with pytest.raises(error, match="'X' of GraftSelector must hold real numbers"):
            GraftSelector().fit(X)

    # ------------------------------------------------ black-box review, item 13

    @pytest.mark.parametrize("library, name", [
        *((library, "X") for library in ("numpy", "list", "pandas", "sparse", "torch", "dask")),
        *((library, "gradients") for library in ("numpy", "list", "pandas", "torch", "dask")),
    ])
    def test_complex_one_error_class(self, rng, library, name):
        """Complex X or gradients: a ValueError naming the argument, whatever the library
        (torch and dask raised a TypeError, NumPy a ValueError)."""
        A = rng.standard_normal((20, 3))
        if library == "dask":
            da = pytest.importorskip("dask.array")
            convert = lambda a: da.from_array(a, chunks=(10, -1))  # noqa: E731
        elif library == "pandas":
            convert = pytest.importorskip("pandas").DataFrame
        else:
            convert = {"numpy": np.asarray, "list": lambda a: a.tolist(),
                       "sparse": scipy.sparse.csr_matrix, "torch": torch.from_numpy}[library]
        X = convert(A + 1j if name == "X" else A)
        G = convert(A + 1j) if name == "gradients" else None
        with pytest.raises(ValueError, match=f"Complex data not supported: '{name}' of "
                                             f"GraftSelector must hold real numbers"):
            GraftSelector(0.2, chunk_size=10).fit(X, gradients=G)

    def test_complex_kernels_and_factors(self, rng):
        """The kernels, FactoredGradients factors, a StoredGradients table and the sampler's
        features reject complex data with the same ValueError on every library."""
        from graft_select import StoredGradients
        from graft_select.gradients import gram_matrix
        from graft_select.sampler import GraftBatchSampler

        A = rng.standard_normal((20, 3)) + 1j
        T = torch.from_numpy(A)
        calls = {
            "'X' of low_rank_features": lambda: low_rank_features(T, 2),
            "'A' of fast_maxvol": lambda: fast_maxvol(T),
            "'G' of gradient_error": lambda: gradient_error(T, [0, 1]),
            "'G' of gram_matrix": lambda: gram_matrix(T),
            "'G.residuals' of nested_gradient_errors": lambda: nested_gradient_errors(
                FactoredGradients(T, T.real), [0, 1]),
            "'gradients.inputs' of GraftSelector": lambda: GraftSelector().fit(
                A.real, gradients=FactoredGradients(A.real, A)),
            "'gradients.residuals' of GraftSelector": lambda: GraftSelector().fit(
                None, gradients=StoredGradients(T, T.real)),
            "'features' of GraftBatchSampler": lambda: GraftBatchSampler(
                20, 4, features=T.to(torch.complex64)),
        }
        for name, call in calls.items():
            with pytest.raises(ValueError, match=f"Complex data not supported: {name}"):
                call()

    def test_reshape_hint_names_the_argument(self, rng):
        """The reshape hint names the argument that has the wrong shape, not X."""
        X = rng.standard_normal((20, 3))
        cases = [
            ("gradients.reshape(n_samples, -1)",
             lambda: GraftSelector().fit(X, gradients=X[:, 0])),
            ("A.reshape(n_samples, -1)", lambda: fast_maxvol(X[:, 0])),
            ("G.reshape(n_samples, -1)", lambda: gradient_error(X[:, 0], [0])),
            ("weights.reshape(-1)", lambda: gradient_error(X, [0], weights=np.float64(1.0))),
        ]
        da = pytest.importorskip("dask.array")
        Xd = da.from_array(X, chunks=(10, -1))
        cases.append(("gradients.reshape(n_samples, -1)",
                      lambda: GraftSelector(chunk_size=10).fit(Xd, gradients=Xd[:, 0])))
        for hint, call in cases:
            with pytest.raises(ValueError) as info:
                call()
            assert hint in str(info.value) and "X.reshape" not in str(info.value)

    @pytest.mark.parametrize("widths", [(4, 6), (4, 4)])
    def test_factor_pair_tuple(self, rng, widths):
        """A tuple (R, H) for gradients says to wrap it as FactoredGradients(R, H) (it was
        called a nested list with rows of different lengths, or a 3-D array)."""
        X = rng.standard_normal((20, 3))
        R, H = rng.standard_normal((20, widths[0])), rng.standard_normal((20, widths[1]))
        match = r"of two 2-D arrays.*FactoredGradients\(R, H\)"
        with pytest.raises(TypeError, match=rf"'gradients' of GraftSelector is a tuple {match}"):
            GraftSelector().fit(X, gradients=(R, H))
        da = pytest.importorskip("dask.array")
        with pytest.raises(TypeError, match=rf"'gradients' of GraftSelector is a tuple {match}"):
            GraftSelector(chunk_size=10).fit(da.from_array(X, chunks=(10, -1)),
                                             gradients=(R, H))
        if widths[0] != widths[1]:
            with pytest.raises(TypeError, match=rf"'G' of gradient_error is a tuple {match}"):
                gradient_error((R, H), [0, 1])
            from graft_select.gradients import gram_matrix

            with pytest.raises(TypeError, match=rf"'G' of gram_matrix is a list {match}"):
                gram_matrix([R, H])
        else:  # two matrices of one shape are a stack where the kernels take stacks
            errors, _ = gradient_error((R, H), [0, 1])
            assert errors.shape == (2,)

    @pytest.mark.parametrize("call, name, accepted", [
        (lambda F: low_rank_features(F, 2), "'X' of low_rank_features",
         "an array (NumPy, torch, CuPy or another array-API library) or a scipy.sparse "
         "CSR/CSC matrix"),
        (lambda F: fast_maxvol(F), "'A' of fast_maxvol",
         "an array (NumPy, torch, CuPy or another array-API library)"),
        (lambda F: gradient_error(F, [0]), "'G' of gradient_error",
         "an array (NumPy, torch, CuPy or another array-API library)"),
        (lambda F: nested_gradient_errors(FactoredGradients(F, F), [0]),
         "'G.residuals' of nested_gradient_errors",
         "an array (NumPy, torch, CuPy or another array-API library)"),
    ])
    def test_dataframe_message_lists_what_is_accepted(self, rng, call, name, accepted):
        """A DataFrame given to a kernel: the message lists what the argument accepts
        (it listed pandas, scipy.sparse and dask for every argument, then rejected the
        DataFrame) and says how to convert it."""
        pd = pytest.importorskip("pandas")
        frame = pd.DataFrame(rng.standard_normal((20, 3)))
        with pytest.raises(TypeError) as info:
            call(frame)
        message = str(info.value)
        assert f"{name} must be {accepted}, got an object of type DataFrame" in message
        assert "pandas" not in message and ".to_numpy()" in message
