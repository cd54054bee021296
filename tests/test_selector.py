"""GraftSelector and GraftResampler: selection, sizing, scikit-learn citizenship."""

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from graft_select import (
    BudgetWarning,
    GraftResampler,
    GraftSelector,
    StoredGradients,
    gradient_error,
)
from graft_select._sizing import allocate_sizes, apportion, size_band


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="module")
def digit_gradients(digits):
    """(p - onehot) outer [x, 1] from a fitted multinomial logistic regression."""
    X, y = digits
    model = LogisticRegression(max_iter=2000).fit(X, y)
    residuals = model.predict_proba(X) - np.eye(10)[y]
    inputs = np.hstack([X, np.ones((len(X), 1))])
    return (residuals[:, :, None] * inputs[:, None, :]).reshape(len(X), -1)


class TestSelection:
    def test_golden_indices_on_digits(self, digits):
        """sample_indices_ on load_digits for a fixed random_state stay pinned."""
        X, _ = digits
        selector = GraftSelector(fraction=0.1, chunk_size=256, random_state=0).fit(X)
        assert selector.sample_indices_[:12].tolist() == GOLDEN_FIRST_12
        assert int(selector.sample_indices_.sum()) == GOLDEN_SUM

    def test_per_chunk_sizes_without_gradients(self, digits):
        """Chunks keep fraction * size rows rounded to an exact total, inside their chunk."""
        X, _ = digits
        selector = GraftSelector(fraction=0.1, chunk_size=256, random_state=0).fit(X)
        assert selector.subset_sizes_.tolist() == [26] * 4 + [25] * 3 + [1]
        bounds = np.cumsum([0, *selector.chunk_sizes_.tolist()])
        start = 0
        for c, k in enumerate(selector.subset_sizes_):
            chunk_rows = selector.sample_indices_[start:start + k]
            assert np.all((chunk_rows >= bounds[c]) & (chunk_rows < bounds[c + 1]))
            start += k

    def test_indices_unique(self, digits):
        """No row is selected twice."""
        X, _ = digits
        idx = GraftSelector(fraction=0.5, chunk_size=100, random_state=1).fit(X).sample_indices_
        assert len(np.unique(idx)) == len(idx)

    def test_deterministic_for_seed(self, digits):
        """Two fits with the same random_state give the same selection."""
        X, _ = digits
        a = GraftSelector(fraction=0.2, chunk_size=128, random_state=3).fit(X).sample_indices_
        b = GraftSelector(fraction=0.2, chunk_size=128, random_state=3).fit(X).sample_indices_
        np.testing.assert_array_equal(a, b)

    def test_stack_equals_chunk_by_chunk(self, digits):
        """A chunked fit equals fitting each chunk on its own (offsets added)."""
        X, _ = digits
        X = X[:512]
        whole = GraftSelector(fraction=0.25, chunk_size=256, svd_method="exact").fit(X)
        parts = [GraftSelector(fraction=0.25, svd_method="exact").fit(X[s:s + 256])
                 .sample_indices_ + s for s in (0, 256)]
        np.testing.assert_array_equal(whole.sample_indices_, np.concatenate(parts))

    def test_rare_groups_covered(self):
        """Without gradients, GRAFT picks rows from rare groups that uniform subsets miss."""
        rng = np.random.default_rng(0)
        centers = rng.standard_normal((8, 20)) * 6
        sizes = [480] + [3] * 7
        X = np.vstack([c + rng.standard_normal((s, 20)) * 0.3 for c, s in zip(centers, sizes)])
        labels = np.repeat(np.arange(8), sizes)
        order = rng.permutation(len(X))
        X, labels = X[order], labels[order]
        graft = GraftSelector(fraction=0.04, n_components=8, random_state=0).fit(X)
        covered = len(np.unique(labels[graft.sample_indices_]))
        uniform_cover = [
            len(np.unique(labels[GraftSelector(fraction=0.04, strategy="uniform",
                                               random_state=s).fit(X).sample_indices_]))
            for s in range(20)]
        assert covered == 8
        assert np.mean(uniform_cover) < 4

    def test_uniform_strategy_same_sizes(self, digits):
        """strategy='uniform' draws subsets of the same per-chunk sizes."""
        X, _ = digits
        graft = GraftSelector(fraction=0.3, chunk_size=200, random_state=0).fit(X)
        uniform = GraftSelector(fraction=0.3, chunk_size=200, strategy="uniform",
                                random_state=0).fit(X)
        np.testing.assert_array_equal(graft.subset_sizes_, uniform.subset_sizes_)
        assert not np.array_equal(np.sort(graft.sample_indices_),
                                  np.sort(uniform.sample_indices_))

    def test_uniform_share_mixes_picks(self, digits):
        """uniform_share=0.5 keeps the first half of the MaxVol order and adds other rows.

        The factor's rank is the most MaxVol picks a chunk of the stack takes (26 of
        the largest subset, 52 rows), so the head is the pure MaxVol order of a
        rank-26 factor.
        """
        X, _ = digits
        pure = GraftSelector(fraction=0.2, chunk_size=256, n_components=26,
                             random_state=0).fit(X)
        mixed = GraftSelector(fraction=0.2, chunk_size=256, uniform_share=0.5,
                              random_state=0).fit(X)
        k = pure.subset_sizes_[0]
        head = k - round(0.5 * k)
        assert (k, head) == (52, 26)
        np.testing.assert_array_equal(mixed.sample_indices_[:head], pure.sample_indices_[:head])
        assert len(np.unique(mixed.sample_indices_)) == len(mixed.sample_indices_)

    def test_refine_keeps_sizes(self, digits):
        """refine=True works with k < r by refining the first k directions."""
        X, _ = digits
        selector = GraftSelector(fraction=0.1, chunk_size=256, n_components=40, refine=True,
                                 random_state=0).fit(X)
        assert selector.subset_sizes_[0] == 26 and selector.subset_sizes_.sum() == 180


class TestGradientSizing:
    def test_budget_held_within_five_percent(self, digits, digit_gradients):
        """With gradients the overall fraction stays within +-5% of fraction."""
        X, _ = digits
        selector = GraftSelector(fraction=0.25, chunk_size=128, random_state=0)
        selector.fit(X, gradients=digit_gradients)
        share = len(selector.sample_indices_) / len(X)
        assert abs(share - 0.25) <= 0.05 * 0.25

    def test_sizes_vary_per_chunk(self, digits, digit_gradients):
        """Chunks that are harder to summarise get more rows."""
        X, _ = digits
        selector = GraftSelector(fraction=0.25, chunk_size=128, random_state=0)
        selector.fit(X, gradients=digit_gradients)
        assert len(np.unique(selector.subset_sizes_[:-1])) > 1

    def test_gradient_error_beats_uniform(self, digits, digit_gradients):
        """Mean chunk gradient error is at most 0.35x that of uniform subsets."""
        X, _ = digits
        kwargs = dict(fraction=0.25, chunk_size=128, basis="gradients", random_state=0)
        graft = GraftSelector(**kwargs).fit(X, gradients=digit_gradients)
        uniform = GraftSelector(**kwargs, strategy="uniform").fit(X, gradients=digit_gradients)
        ratio = np.mean(graft.gradient_error_) / np.mean(uniform.gradient_error_)
        assert ratio <= 0.35

    def test_auto_basis_uses_gradients_when_given(self, digits, digit_gradients):
        """Default basis='auto' is basis='gradients' with gradients, 'input' without."""
        X, _ = digits
        kwargs = dict(fraction=0.25, chunk_size=128, random_state=0)
        auto = GraftSelector(**kwargs).fit(X, gradients=digit_gradients)
        explicit = GraftSelector(**kwargs, basis="gradients").fit(X, gradients=digit_gradients)
        assert auto.basis_ == "gradients"
        assert auto.sample_indices_.tolist() == explicit.sample_indices_.tolist()
        plain = GraftSelector(**kwargs).fit(X)
        assert plain.basis_ == "input"
        assert plain.sample_indices_.tolist() == GraftSelector(
            **kwargs, basis="input").fit(X).sample_indices_.tolist()

    def test_auto_basis_gradient_error_beats_input_basis(self, digits, digit_gradients):
        """With gradients, the default's gradient error is below the input basis's."""
        X, _ = digits
        kwargs = dict(fraction=0.25, chunk_size=128, random_state=0)
        auto = GraftSelector(**kwargs).fit(X, gradients=digit_gradients)
        inputs = GraftSelector(**kwargs, basis="input").fit(X, gradients=digit_gradients)
        assert np.mean(auto.gradient_error_) < 0.5 * np.mean(inputs.gradient_error_)

    def test_weights_reproduce_error(self, digits, digit_gradients):
        """sample_weight_ / chunk size are the least-squares weights behind gradient_error_."""
        X, _ = digits
        selector = GraftSelector(fraction=0.25, chunk_size=128, random_state=0)
        selector.fit(X, gradients=digit_gradients)
        k0 = selector.subset_sizes_[0]
        idx = selector.sample_indices_[:k0]
        G = digit_gradients[:128]
        target = G.mean(axis=0)
        approx = (selector.sample_weight_[:k0] / 128) @ G[idx]
        error = np.linalg.norm(target - approx) / np.linalg.norm(target)
        assert error == pytest.approx(selector.gradient_error_[0], rel=1e-6, abs=1e-9)
        assert error == pytest.approx(float(gradient_error(G, idx)[0]), rel=1e-6, abs=1e-9)

    def test_tolerance_respected_inside_window(self, digits, digit_gradients):
        """A reachable gradient_tol inside the budget window sets the chunk sizes."""
        X, _ = digits
        base = GraftSelector(fraction=0.25, chunk_size=128, random_state=0)
        base.fit(X, gradients=digit_gradients)
        tol = float(np.median(base.gradient_error_))
        tuned = GraftSelector(fraction=0.25, chunk_size=128, gradient_tol=tol, random_state=0)
        tuned.fit(X, gradients=digit_gradients)
        share = len(tuned.sample_indices_) / len(X)
        assert abs(share - 0.25) <= 0.05 * 0.25 + 1e-9


class TestSizing:
    def test_levelling_gives_more_to_harder_chunk(self):
        """Error levelling allocates the budget to the chunk with the larger errors."""
        errors = np.array([[0.5, 0.1, 0.05, 0.01], [0.9, 0.8, 0.7, 0.6]])
        sizes = allocate_sizes(errors, np.array([1, 1]), np.array([4, 4]), budget=5)
        assert sizes.tolist() == [1, 4]

    def test_rounding_level_errors_are_ties(self):
        """Errors at the rounding level (under ERROR_TIE) do not decide sizes: the budget
        left once every chunk is there goes round the chunks evenly. Levelling sorted
        1e-16 residues, so chunks got 20 or 80 rows by rounding."""
        errors = np.array([[0.5, 3e-16, 1e-16, 2e-16], [0.4, 1e-15, 5e-16, 1e-16]])
        sizes = allocate_sizes(errors, np.array([1, 1]), np.array([4, 4]), budget=6)
        assert sizes.tolist() == [3, 3]

    @pytest.mark.filterwarnings("ignore:The weights of chunks")
    def test_low_rank_gradients_same_sizes_on_every_backend(self):
        """Gradients of rank below the subset sizes (a logistic regression's 8 columns):
        every chunk's nested error reaches rounding level, which decided the sizes
        (NumPy [80, 20, 20, ...], torch and 3 G other ones). Now the same, even sizes
        and rows on NumPy, torch and under a scaling of the gradients."""
        torch = pytest.importorskip("torch")
        rng = np.random.default_rng(0)
        X = rng.standard_normal((2000, 3))
        logits = X @ rng.standard_normal((3, 2))
        y = (rng.random(2000) < 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))).astype(int)
        from graft_select.gradients import last_layer_gradients

        G = last_layer_gradients(logits, y, X)
        fits = [GraftSelector(0.2, chunk_size=200, random_state=0).fit(X_, gradients=G_)
                for X_, G_ in [(X, G), (torch.from_numpy(X), torch.from_numpy(G)),
                               (X, 3 * G)]]
        for fit in fits:
            assert np.asarray(fit.subset_sizes_).tolist() == [40] * 10
            np.testing.assert_array_equal(np.asarray(fit.sample_indices_),
                                          fits[0].sample_indices_)

    def test_apportion_exact_total(self):
        """Fixed sizes add up to round(fraction * n) with at least one per chunk."""
        sizes = apportion(0.3, np.array([32] * 18 + [24]))
        assert sizes.sum() == round(0.3 * 600) and sizes.min() >= 1
        assert set(sizes[:-1].tolist()) <= {9, 10}

    def test_band_defaults(self):
        """The default band is [fraction / 2, 2 * fraction] of each chunk."""
        k_min, k_max = size_band([100, 10], 0.2, None, None)
        assert k_min.tolist() == [10, 1] and k_max.tolist() == [40, 4]


class TestTypes:
    def test_sparse_input(self, digits):
        """CSR input is accepted and transform returns CSR rows."""
        X, _ = digits
        X_sparse = sp.csr_matrix(np.where(np.abs(X) > 1, X, 0.0))
        selector = GraftSelector(fraction=0.1, random_state=0).fit(X_sparse)
        out = selector.transform(X_sparse)
        assert sp.issparse(out) and out.shape == (len(selector.sample_indices_), 64)

    def test_sparse_chunk_grams(self):
        """Sparse chunks' Gram matrices come out of one block-diagonal product, exactly."""
        from graft_select._orders import block_grams

        X = sp.random(600, 50, density=0.1, format="csr", random_state=0)
        expected = np.stack([(X[c * 200:(c + 1) * 200] @ X[c * 200:(c + 1) * 200].T).toarray()
                             for c in range(3)])
        np.testing.assert_allclose(block_grams(X, 3, 200), expected, rtol=0, atol=1e-12)

    def test_sparse_chunked_matches_dense(self, digits):
        """Chunked selection on CSR input picks the same rows as on the dense array."""
        X, _ = digits
        X = np.where(np.abs(X) > 0.5, X, 0.0)[:512]
        dense = GraftSelector(fraction=0.1, chunk_size=256, svd_method="exact").fit(X)
        sparse = GraftSelector(fraction=0.1, chunk_size=256, svd_method="exact").fit(
            sp.csr_matrix(X))
        np.testing.assert_array_equal(sparse.sample_indices_, dense.sample_indices_)

    def test_dataframe_roundtrip(self, digits):
        """A DataFrame keeps its type, index and columns; feature_names_in_ is set."""
        pd = pytest.importorskip("pandas")
        X, _ = digits
        frame = pd.DataFrame(X, columns=[f"p{i}" for i in range(64)])
        selector = GraftSelector(fraction=0.1, random_state=0)
        out = selector.fit_transform(frame)
        assert isinstance(out, pd.DataFrame)
        assert list(selector.feature_names_in_) == list(frame.columns)
        np.testing.assert_array_equal(out.index.to_numpy(), selector.sample_indices_)

    def test_torch_stays_torch(self, digits):
        """torch input gives torch indices and torch rows on the same device."""
        torch = pytest.importorskip("torch")
        X, _ = digits
        selector = GraftSelector(fraction=0.1, chunk_size=256, random_state=0)
        out = selector.fit_transform(torch.asarray(X))
        assert isinstance(out, torch.Tensor) and isinstance(selector.sample_indices_, torch.Tensor)
        expected = GraftSelector(fraction=0.1, chunk_size=256, random_state=0).fit(X)
        np.testing.assert_array_equal(selector.sample_indices_.numpy(), expected.sample_indices_)

    @pytest.mark.filterwarnings("ignore:The weights of chunk:UserWarning")
    def test_dataframe_gradients(self, digits, digit_gradients):
        """Gradients (or factors) given as DataFrames are read by position, as NumPy; the
        message for what gradients cannot be lists what they can (review item 6)."""
        pd = pytest.importorskip("pandas")
        from graft_select import FactoredGradients

        X, y = digits
        G = digit_gradients
        kw = dict(fraction=0.1, chunk_size=256, random_state=0)
        expected = GraftSelector(**kw).fit(X, gradients=G)
        frame = pd.DataFrame(G, index=np.arange(len(G))[::-1])  # the index is ignored
        got = GraftSelector(**kw).fit(X, gradients=frame)
        np.testing.assert_array_equal(got.sample_indices_, expected.sample_indices_)
        np.testing.assert_array_equal(got.sample_weight_, expected.sample_weight_)
        R, H = np.eye(10)[y] - 0.1, np.hstack([X, np.ones((len(X), 1))])
        factored = GraftSelector(**kw).fit(X, gradients=FactoredGradients(R, H))
        framed = GraftSelector(**kw).fit(
            X, gradients=FactoredGradients(pd.DataFrame(R), pd.DataFrame(H)))
        np.testing.assert_array_equal(framed.sample_indices_, factored.sample_indices_)
        text = frame.astype(object)
        text.iloc[3, 2] = "a"
        with pytest.raises(TypeError, match="'gradients' of GraftSelector must hold real"):
            GraftSelector(**kw).fit(X, gradients=text)

        class Opaque:  # an array of no library the estimators know
            shape, ndim = G.shape, 2

        with pytest.raises(TypeError) as info:
            GraftSelector(**kw).fit(X, gradients=Opaque())
        assert ("must be an array (NumPy, pandas, torch or CuPy; dask when X is a dask "
                "array), a FactoredGradients or a StoredGradients, got an object of type "
                "Opaque") in str(info.value)

    def test_get_support_mask(self, digits):
        """get_support() is a boolean mask matching sample_indices_."""
        X, _ = digits
        selector = GraftSelector(fraction=0.1, random_state=0).fit(X)
        mask = selector.get_support()
        assert mask.dtype == bool and mask.sum() == len(selector.sample_indices_)
        np.testing.assert_array_equal(np.flatnonzero(mask), np.sort(selector.sample_indices_))
        assert selector.get_support(indices=True) is selector.sample_indices_


class TestErrors:
    @pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
    def test_bad_fraction(self, digits, fraction):
        """fraction outside (0, 1] is rejected in fit with sklearn's message."""
        X, _ = digits
        with pytest.raises(ValueError, match="'fraction' parameter of GraftSelector"):
            GraftSelector(fraction=fraction).fit(X)

    def test_bad_chunk_size(self, digits):
        """chunk_size < 2 is rejected."""
        with pytest.raises(ValueError, match="'chunk_size'"):
            GraftSelector(chunk_size=1).fit(digits[0])

    def test_nan(self, digits):
        """NaN rows are reported with their count and first row."""
        X = digits[0].copy()
        X[[5, 9]] = np.nan
        with pytest.raises(ValueError, match=r"NaN or infinity in 2 rows \(first: 5\)"):
            GraftSelector().fit(X)

    def test_inf_torch(self, digits):
        """Infinity in a torch tensor is rejected too."""
        torch = pytest.importorskip("torch")
        X = torch.asarray(digits[0].copy())
        X[3, 0] = float("inf")
        with pytest.raises(ValueError, match="NaN or infinity"):
            GraftSelector().fit(X)

    def test_empty_and_one_row(self):
        """Empty input and a single row are rejected."""
        with pytest.raises(ValueError):
            GraftSelector().fit(np.zeros((0, 3)))
        with pytest.raises(ValueError, match="at least 2 rows"):
            GraftSelector().fit(np.ones((1, 3)))

    def test_gradients_wrong_rows(self, digits):
        """gradients with another number of rows than X is rejected."""
        X, _ = digits
        with pytest.raises(ValueError, match="'gradients' has 10 rows but X has 1797"):
            GraftSelector().fit(X, gradients=np.ones((10, 3)))

    def test_y_wrong_length(self, digits):
        """y with another length than X is rejected."""
        X, y = digits
        with pytest.raises(ValueError, match="'y' has 5 rows"):
            GraftSelector().fit(X, y[:5])

    def test_transform_other_rows(self, digits):
        """transform on data with another number of rows is rejected."""
        X, _ = digits
        selector = GraftSelector(fraction=0.1).fit(X)
        with pytest.raises(ValueError, match="fitted on 1797"):
            selector.transform(X[:100])

    def test_gradient_basis_needs_gradients(self, digits):
        """basis='gradients' without gradients says what to pass."""
        with pytest.raises(ValueError, match="basis='gradients' needs"):
            GraftSelector(basis="gradients").fit(digits[0])

    def test_unknown_strategy(self, digits):
        """An unknown strategy string is an error, never a silent default."""
        with pytest.raises(ValueError, match="'strategy' parameter"):
            GraftSelector(strategy="random").fit(digits[0])


class TestCitizenship:
    def test_clone_and_params(self):
        """clone/get_params/set_params round-trip and repr shows changed params."""
        selector = GraftSelector(fraction=0.3, chunk_size=64)
        copy = clone(selector).set_params(random_state=7)
        assert copy.get_params()["fraction"] == 0.3 and copy.random_state == 7
        assert "chunk_size=64" in repr(selector)

    def test_pickle_fitted(self, digits):
        """A fitted selector pickles with its selection."""
        X, _ = digits
        selector = GraftSelector(fraction=0.1, random_state=0).fit(X)
        again = pickle.loads(pickle.dumps(selector))
        np.testing.assert_array_equal(again.transform(X), selector.transform(X))

    def test_pipeline_last_step(self, digits):
        """GraftSelector works as the last step of a Pipeline."""
        X, _ = digits
        pipe = Pipeline([("scale", StandardScaler()), ("graft", GraftSelector(fraction=0.1))])
        assert pipe.fit_transform(X).shape[0] == round(0.1 * len(X))

    def test_imblearn_pipeline(self, digits):
        """GraftResampler then a classifier inside an imbalanced-learn Pipeline."""
        imblearn_pipeline = pytest.importorskip("imblearn.pipeline")
        X, y = digits
        pipe = imblearn_pipeline.Pipeline([
            ("graft", GraftResampler(fraction=0.3, chunk_size=256, random_state=0)),
            ("clf", LogisticRegression(max_iter=500)),
        ])
        pipe.fit(X, y)
        assert pipe.score(X, y) > 0.9
        assert len(pipe.named_steps["graft"].sample_indices_) < len(X)

    @pytest.mark.parametrize("imblearn_first", [False, True])
    def test_imblearn_pipeline_routes_gradients(self, imblearn_first):
        """Under metadata routing the gradients reach GraftResampler.fit_resample in an
        imbalanced-learn Pipeline, whichever package was imported first (in a fresh
        process). set_fit_resample_request existed only when imblearn came first, and
        the fit added for scikit-learn's checks must not take part in the routing."""
        pytest.importorskip("imblearn")
        first = "import imblearn.pipeline\n" if imblearn_first else ""
        code = first + textwrap.dedent("""
            import warnings
            import numpy as np, sklearn
            from graft_select import GraftResampler
            from imblearn.pipeline import make_pipeline
            from sklearn.linear_model import LogisticRegression
            warnings.simplefilter("ignore")
            rng = np.random.default_rng(0)
            X = rng.standard_normal((300, 6)); y = (X[:, 0] > 0).astype(int)
            G = rng.standard_normal((300, 20))
            sklearn.set_config(enable_metadata_routing=True)
            pipe = make_pipeline(GraftResampler(0.3, chunk_size=50, random_state=0),
                                 LogisticRegression())
            pipe.fit(X, y, gradients=G)
            print(pipe[0].basis_)
            off = GraftResampler(0.3, chunk_size=50, random_state=0)
            off.set_fit_resample_request(gradients=False)
            make_pipeline(off, LogisticRegression()).fit(X, y)
            print(off.basis_)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["gradients", "input"]

    def test_resampler_fit_and_atomic_fit_resample(self):
        """GraftResampler.fit fits and returns self (also on a StoredGradients view);
        fit_resample refuses a view before fitting (it fitted, then failed taking rows
        of X=None, leaving the estimator changed)."""
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((100, 5)), rng.integers(0, 3, 100)
        resampler = GraftResampler(0.2, random_state=0)
        assert resampler.fit(X, y) is resampler
        check_is_fitted(resampler)
        np.testing.assert_array_equal(
            resampler.sample_indices_, GraftSelector(0.2, random_state=0).fit(X).sample_indices_)
        view = StoredGradients(rng.standard_normal((300, 3)), rng.standard_normal((300, 4)))
        with pytest.raises(ValueError, match="fit_resample returns the selected rows of X, "
                                             "and a StoredGradients view has no X"):
            resampler.fit_resample(None, rng.integers(0, 3, 300), gradients=view)
        assert resampler.n_samples_fit_ == 100
        assert len(GraftResampler(0.2, random_state=0).fit(None, gradients=view)
                   .sample_indices_) == 60

    def test_failed_fit_transform_leaves_the_estimator(self):
        """A fit_transform whose transform fails (a DataFrame output for a tensor) leaves
        the estimator as it was: it used to keep the new fit (n_samples_fit_ 100 -> 60)."""
        pytest.importorskip("pandas")
        torch = pytest.importorskip("torch")
        rng = np.random.default_rng(0)
        selector = GraftSelector(0.2, random_state=0).fit(rng.standard_normal((100, 5)))
        indices = selector.sample_indices_.copy()
        selector.set_output(transform="pandas")
        with pytest.raises(ValueError, match="move the rows off their device"):
            selector.fit_transform(torch.randn(60, 5))
        assert selector.n_samples_fit_ == 100
        np.testing.assert_array_equal(selector.sample_indices_, indices)
        view = StoredGradients(rng.standard_normal((300, 3)), rng.standard_normal((300, 4)))
        with pytest.raises(ValueError, match="fit_transform returns the selected rows"):
            selector.fit_transform(None, gradients=view)
        assert selector.n_samples_fit_ == 100

    @pytest.mark.parametrize("fmt", ["coo", "dia", "bsr", "dok"])
    def test_sparse_formats_without_row_indexing(self, fmt):
        """COO, DIA, BSR and DOK input: the selected rows come back in the input's format
        (transform, fit_transform and fit_resample raised inside SciPy)."""
        X = sp.random(40, 10, density=0.3, format="csr", random_state=0)
        expected = GraftSelector(0.2, random_state=0).fit(X)
        rows = X[expected.sample_indices_].toarray()
        X_fmt = X.asformat(fmt)
        out = GraftSelector(0.2, random_state=0).fit_transform(X_fmt)
        assert out.format == fmt
        np.testing.assert_array_equal(out.toarray(), rows)
        X_sub, y_sub = GraftResampler(0.2, random_state=0).fit_resample(X_fmt, np.arange(40))
        assert X_sub.format == fmt
        np.testing.assert_array_equal(X_sub.toarray(), rows)
        np.testing.assert_array_equal(y_sub, expected.sample_indices_)

    def test_array_protocol_objects(self):
        """An object NumPy converts (``__array__``) is accepted as X, as scikit-learn
        accepts it, with the same picks as its array (it raised a TypeError)."""

        class ArrayLike:
            def __init__(self, a):
                self.a = a

            def __array__(self, dtype=None, copy=None):
                return np.asarray(self.a, dtype=dtype)

        X = np.random.default_rng(0).standard_normal((60, 4))
        fitted = GraftSelector(0.2, random_state=0).fit(ArrayLike(X))
        np.testing.assert_array_equal(
            fitted.sample_indices_, GraftSelector(0.2, random_state=0).fit(X).sample_indices_)
        np.testing.assert_array_equal(fitted.transform(ArrayLike(X)),
                                      X[fitted.sample_indices_])

    def test_set_output_pandas(self, digits):
        """set_output(transform="pandas") returns the selected rows as a DataFrame: the
        columns named as get_feature_names_out says, the index the selected row numbers
        (NumPy input) or the input's own labels (DataFrame input). The estimator had no
        set_output (AttributeError), and a Pipeline's set_output raised."""
        pd = pytest.importorskip("pandas")
        X, _ = digits
        selector = GraftSelector(fraction=0.1, random_state=0).set_output(transform="pandas")
        out = selector.fit_transform(X)
        rows = np.asarray(selector.sample_indices_)
        assert isinstance(out, pd.DataFrame)
        np.testing.assert_array_equal(out.to_numpy(), X[rows])
        np.testing.assert_array_equal(out.index.to_numpy(), rows)
        assert list(out.columns) == [f"x{i}" for i in range(X.shape[1])]
        listed = selector.transform(X.tolist())  # a list's rows keep their numbers too
        np.testing.assert_array_equal(listed.index.to_numpy(), rows)
        frame = pd.DataFrame(X, columns=[f"pixel{i}" for i in range(X.shape[1])],
                             index=np.arange(len(X)) + 1000)
        pipe = Pipeline([("scale", StandardScaler()),
                         ("graft", GraftSelector(fraction=0.1, random_state=0))])
        out = pipe.set_output(transform="pandas").fit_transform(frame)
        assert list(out.columns) == list(frame.columns)
        np.testing.assert_array_equal(out.index.to_numpy(), rows + 1000)
        assert list(pipe.get_feature_names_out()) == list(frame.columns)

    def test_global_pandas_output_refuses_tensors(self, digits):
        """scikit-learn's transform_output="pandas" applies to NumPy input; a torch X
        raises (converting it would leave its device) instead of being converted."""
        pytest.importorskip("pandas")
        torch = pytest.importorskip("torch")
        import sklearn

        X, _ = digits
        with sklearn.config_context(transform_output="pandas"):
            selector = GraftSelector(fraction=0.1, random_state=0)
            assert type(selector.fit_transform(X)).__name__ == "DataFrame"
            with pytest.raises(ValueError, match=r"output pandas DataFrames.*torch.*"
                                                 r"set_output\(transform='default'\)"):
                selector.fit_transform(torch.as_tensor(X))
        assert isinstance(selector.transform(torch.as_tensor(X)), torch.Tensor)

    def test_refit_on_a_tensor_forgets_column_names(self, digits):
        """A refit on a tensor (no column names) drops the names of a DataFrame fit: they
        were kept, and transform then rejected the tensor fit's own columns."""
        pd = pytest.importorskip("pandas")
        torch = pytest.importorskip("torch")
        X, _ = digits
        frame = pd.DataFrame(X, columns=[f"pixel{i}" for i in range(X.shape[1])])
        for estimator in (GraftSelector(fraction=0.1, random_state=0),
                          GraftResampler(fraction=0.1, random_state=0)):
            estimator.fit(frame) if hasattr(estimator, "transform") else (
                estimator.fit_resample(frame, np.zeros(len(X))))
            assert hasattr(estimator, "feature_names_in_")
            tensor = torch.as_tensor(X[:, :5])
            if hasattr(estimator, "transform"):
                estimator.fit(tensor)
                narrow = pd.DataFrame(X[:, :5], columns=list("abcde"))
                with pytest.warns(UserWarning, match="fitted without feature names"):
                    assert estimator.transform(narrow).shape == (round(0.1 * len(X)), 5)
            else:
                estimator.fit_resample(tensor, torch.zeros(len(X)))
            assert not hasattr(estimator, "feature_names_in_")
            assert estimator.n_features_in_ == 5

    def test_resampler_matches_selector(self, digits):
        """fit_resample returns the selector's rows of X and y."""
        X, y = digits
        X_sub, y_sub = GraftResampler(fraction=0.2, random_state=0).fit_resample(X, y)
        selector = GraftSelector(fraction=0.2, random_state=0).fit(X)
        np.testing.assert_array_equal(X_sub, selector.transform(X))
        np.testing.assert_array_equal(y_sub, y[selector.sample_indices_])


# Checks that cannot pass for an estimator whose transform drops rows, with reasons.
_ROWS_DROPPED = "transform returns a subset of rows, so the output has fewer samples"
EXPECTED_FAILED_CHECKS = {
    "GraftSelector": {
        "check_transformer_general": _ROWS_DROPPED,
        "check_transformer_data_not_an_array": _ROWS_DROPPED,
        "check_methods_sample_order_invariance": "the selection depends on the row order",
        "check_methods_subset_invariance": "transform is defined on the fitted rows only",
        "check_fit_idempotent": "transform is defined on the fitted rows only",
    },
}


def _expected_failed(estimator):
    return EXPECTED_FAILED_CHECKS.get(type(estimator).__name__, {})


@parametrize_with_checks([GraftSelector(random_state=0), GraftResampler(random_state=0)],
                         expected_failed_checks=_expected_failed, xfail_strict=True)
def test_sklearn_compatible(estimator, check):
    """scikit-learn's estimator checks pass, except the listed row-dropping ones (none for
    GraftResampler, which had no fit and failed 25)."""
    check(estimator)


GOLDEN_FIRST_12 = [87, 163, 211, 128, 12, 7, 33, 238, 9, 241, 96, 77]
GOLDEN_SUM = 160801


class TestBackendMatrix:
    """GraftSelector on every backend of the conftest matrix (CUDA and CuPy where present)."""

    def test_fit_with_factored_gradients(self, backend, rng):
        """Selection on factored gradients: results native and equal to NumPy's."""
        from graft_select.gradients import FactoredGradients, last_layer_gradients

        X = rng.standard_normal((300, 12))
        F = last_layer_gradients(rng.standard_normal((300, 4)), rng.integers(0, 4, 300), X,
                                 factored=True)
        params = {"fraction": 0.3, "chunk_size": 100, "uniform_share": 0.5,
                  "random_state": 0}
        expected = GraftSelector(**params).fit(F.inputs, gradients=F)
        sel = GraftSelector(**params).fit(
            backend.asarray(F.inputs),
            gradients=FactoredGradients(backend.asarray(F.residuals), backend.asarray(F.inputs)))
        assert backend.is_native(sel.sample_indices_) and backend.is_native(sel.sample_weight_)
        np.testing.assert_array_equal(backend.to_numpy(sel.sample_indices_),
                                      expected.sample_indices_)
        np.testing.assert_allclose(sel.gradient_error_, expected.gradient_error_, atol=1e-8)

    def test_fit_on_inputs(self, backend, rng):
        """Selection on the inputs: results native and equal to NumPy's."""
        X = rng.standard_normal((300, 12))
        expected = GraftSelector(fraction=0.2, chunk_size=100, random_state=0).fit(X)
        sel = GraftSelector(fraction=0.2, chunk_size=100, random_state=0).fit(
            backend.asarray(X))
        assert backend.is_native(sel.sample_indices_)
        np.testing.assert_array_equal(backend.to_numpy(sel.sample_indices_),
                                      expected.sample_indices_)


class TestValidateOnce:
    """The estimator validates its input once and calls the kernels' private bodies."""

    def test_fit_skips_the_public_checks(self, rng, monkeypatch):
        """fit with gradients never re-runs the kernels' or the criterion's argument checks."""
        import graft_select._criterion as criterion
        import graft_select.linalg as linalg
        from graft_select.gradients import last_layer_gradients

        calls = []

        def spy(name, function):
            def wrapped(*args, **kwargs):
                calls.append(name)
                return function(*args, **kwargs)
            return wrapped

        monkeypatch.setattr(linalg, "check_int", spy("check_int", linalg.check_int))
        monkeypatch.setattr(criterion, "check_indices",
                            spy("check_indices", criterion.check_indices))
        X = rng.standard_normal((400, 12))
        G = last_layer_gradients(rng.standard_normal((400, 3)), rng.integers(0, 3, 400), X)
        F = last_layer_gradients(rng.standard_normal((400, 3)), rng.integers(0, 3, 400), X,
                                 factored=True)
        GraftSelector(fraction=0.2, chunk_size=100, random_state=0).fit(X, gradients=G)
        GraftSelector(fraction=0.2, chunk_size=100, random_state=0).fit(X, gradients=F)
        assert calls == []

    @staticmethod
    def _spy_on_value_checks(monkeypatch):
        """Record the calls of check_finite (by array name) and check_factored (by owner).

        Both are patched in every graft_select module that imported them by name. A
        check_finite given a ``total`` reads nothing when it is finite (the MaxVol
        body's test from the row norms it computes anyway): not recorded.
        """
        import sys

        import graft_select._proxies as proxies
        import graft_select._validation as validation

        calls = []
        for original, key in ((validation.check_finite, "check_finite"),
                              (proxies.check_factored, "check_factored")):
            def spy(*args, _original=original, _key=key, **kwargs):
                if kwargs.get("total") is None:
                    calls.append((_key, args[1]))  # the array's name, or the checking owner
                return _original(*args, **kwargs)

            for module in [m for name, m in sys.modules.items()
                           if name.startswith("graft_select") and m is not None]:
                if getattr(module, original.__name__, None) is original:
                    monkeypatch.setattr(module, original.__name__, spy)
        return calls

    @pytest.mark.parametrize("basis", ["gradients", "input"])
    def test_factored_fit_checks_the_values_once(self, rng, monkeypatch, basis):
        """A factored-gradient fit checks X and each factor once, not again per stack."""
        from graft_select.gradients import last_layer_gradients

        X = rng.standard_normal((400, 12))
        F = last_layer_gradients(rng.standard_normal((400, 3)), rng.integers(0, 3, 400), X,
                                 factored=True)
        calls = self._spy_on_value_checks(monkeypatch)
        GraftSelector(fraction=0.2, chunk_size=100, basis=basis, random_state=0).fit(
            X, gradients=F)
        assert calls == [("check_finite", "X"), ("check_factored", "GraftSelector"),
                         ("check_finite", "gradients.residuals"),
                         ("check_finite", "gradients.inputs")]

    @pytest.mark.parametrize("kind", ["dense", "factored"])
    def test_dask_fit_runs_no_public_checks(self, rng, monkeypatch, kind):
        """A dask fit's tasks check their blocks themselves and call the kernels' bodies."""
        dask = pytest.importorskip("dask")
        da = pytest.importorskip("dask.array")
        from graft_select.gradients import FactoredGradients, last_layer_gradients

        X = rng.standard_normal((400, 12))
        F = last_layer_gradients(rng.standard_normal((400, 3)), rng.integers(0, 3, 400), X,
                                 factored=True)
        G = FactoredGradients(*(da.from_array(P, chunks=(200, -1)) for P in F))
        if kind == "dense":
            G = da.from_array(F.materialize(), chunks=(200, -1))
        calls = self._spy_on_value_checks(monkeypatch)
        with dask.config.set(scheduler="synchronous"):
            GraftSelector(fraction=0.2, chunk_size=100, basis="gradients", random_state=0).fit(
                da.from_array(X, chunks=(200, -1)), gradients=G)
        assert calls == []


class TestChunkSizeRename:
    def test_batch_size_warns_and_selects_alike(self, digits):
        """The deprecated batch_size warns (FutureWarning) and selects what chunk_size does."""
        X, _ = digits
        new = GraftSelector(0.1, chunk_size=256, random_state=0).fit(X)
        with pytest.warns(FutureWarning, match="'batch_size' parameter of GraftSelector was "
                                               "renamed to 'chunk_size'"):
            old = GraftSelector(0.1, batch_size=256, random_state=0).fit(X)
        np.testing.assert_array_equal(old.sample_indices_, new.sample_indices_)
        np.testing.assert_array_equal(old.chunk_sizes_, new.chunk_sizes_)

    def test_both_raise(self, digits):
        """chunk_size and batch_size together are a ValueError naming both."""
        with pytest.raises(ValueError, match="chunk_size=128 and batch_size=256"):
            GraftResampler(0.1, chunk_size=128, batch_size=256).fit_resample(*digits)

    def test_default_does_not_warn(self, digits):
        """Neither parameter set: no FutureWarning; clone and get_params keep both names."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            selector = clone(GraftSelector(0.1, random_state=0)).fit(digits[0])
        params = selector.get_params()
        assert params["chunk_size"] is None and params["batch_size"] == "deprecated"

    def test_bad_batch_size_rejected(self, digits):
        """The deprecated name is still validated like chunk_size."""
        with pytest.raises(ValueError, match="'batch_size' parameter"):
            GraftSelector(0.1, batch_size=1).fit(digits[0])


class TestBudget:
    def test_budget_attribute(self, digits):
        """budget_ is round(fraction * n); the subset sizes sum to it when chunks allow."""
        X, _ = digits
        selector = GraftSelector(0.1, chunk_size=256, random_state=0).fit(X)
        assert selector.budget_ == round(0.1 * len(X))
        assert selector.subset_sizes_.sum() == selector.budget_

    def test_overshoot_is_a_budget_warning(self, digits):
        """Too many small chunks: a BudgetWarning (a UserWarning) and budget_ to compare."""
        X, _ = digits
        with pytest.warns(BudgetWarning, match="every one of the 899 chunks keeps at least one"):
            selector = GraftSelector(0.1, chunk_size=2, random_state=0).fit(X)
        assert issubclass(BudgetWarning, UserWarning)
        assert selector.subset_sizes_.sum() == 899 > selector.budget_ == 180

    def test_compute_weights_false(self, digits, digit_gradients):
        """compute_weights=False selects the same rows and leaves sample_weight_ None."""
        X, _ = digits
        for gradients in (None, digit_gradients):
            full = GraftSelector(0.2, chunk_size=300, random_state=0).fit(
                X, gradients=gradients)
            lean = GraftSelector(0.2, chunk_size=300, random_state=0).fit(
                X, gradients=gradients, compute_weights=False)
            np.testing.assert_array_equal(lean.sample_indices_, full.sample_indices_)
            assert lean.sample_weight_ is None and full.sample_weight_ is not None


class TestStoredGradients:
    @pytest.fixture
    def table(self, digits):
        """A (1797, 10) residual table and (1797, 8) embeddings, as a sampler stores them."""
        X, y = digits
        rng = np.random.default_rng(0)
        embeddings = np.tanh(X @ rng.standard_normal((X.shape[1], 8)) / 4)
        logits = embeddings @ rng.standard_normal((8, 10))
        p = np.exp(logits - logits.max(1, keepdims=True))
        residuals = p / p.sum(1, keepdims=True) - np.eye(10)[y]
        return residuals, embeddings

    def test_view_selects_its_rows(self, table):
        """Indices are positions in the view's rows; the gradient error is that of the
        subset on the view's rows (the dense proxies give the same error)."""
        residuals, embeddings = table
        rows = np.random.default_rng(1).permutation(len(residuals))[:1000]
        selector = GraftSelector(0.2, chunk_size=250, random_state=0).fit(
            None, gradients=StoredGradients(residuals, embeddings, rows))
        assert selector.n_samples_fit_ == 1000 and not hasattr(selector, "n_features_in_")
        # no X was seen: transform takes any data aligned with the view's rows (it asked
        # for d + 1 = 9 columns, which neither the dataset nor the embeddings have)
        data = np.arange(1000 * 3).reshape(1000, 3)
        np.testing.assert_array_equal(selector.transform(data),
                                      data[np.asarray(selector.sample_indices_)])
        assert selector.transform(embeddings[rows]).shape == (200, 8)
        assert selector.basis_ == "gradients" and selector.budget_ == 200
        picked = np.asarray(selector.sample_indices_)
        assert len(np.unique(picked)) == len(picked) and picked.max() < 1000
        H = np.hstack([embeddings[rows], np.ones((1000, 1))])
        G = (residuals[rows][:, :, None] * H[:, None, :]).reshape(1000, -1)
        start = 0
        for c, k in enumerate(selector.subset_sizes_):
            local = picked[start:start + k] - 250 * c
            err, _ = gradient_error(G[250 * c:250 * (c + 1)], local)
            assert selector.gradient_error_[c] == pytest.approx(float(err), abs=2e-3)
            start += k

    def test_rows_default_to_the_table(self, table):
        """rows=None reads every row of the table in order."""
        residuals, embeddings = table
        everything = np.arange(len(residuals))
        a = GraftSelector(0.2, chunk_size=300, random_state=0).fit(
            None, gradients=StoredGradients(residuals, embeddings))
        b = GraftSelector(0.2, chunk_size=300, random_state=0).fit(
            None, gradients=StoredGradients(residuals, embeddings, everything))
        np.testing.assert_array_equal(a.sample_indices_, b.sample_indices_)

    @pytest.mark.parametrize("bad, error, match", [
        ({"rows": np.array([0, 5, 1797])}, ValueError, r"'gradients.rows' .* \[0, 1797\)"),
        ({"rows": np.array([0.0, 1.0, 2.0])}, TypeError, "integer table rows"),
        ({"rows": np.array([3])}, ValueError, "at least 2 rows"),
        ({"residuals": np.zeros(1797)}, ValueError, "'gradients.residuals' .* 2-D"),
        ({"residuals": np.zeros((1797, 10), dtype=int)}, TypeError, "real floats"),
        ({"embeddings": np.zeros((10, 8))}, ValueError, "'gradients.embeddings' .* has 10 rows"),
    ])
    def test_bad_view_named(self, table, bad, error, match):
        """A malformed view raises an error that names the field and the fix."""
        residuals, embeddings = table
        fields = {"residuals": residuals, "embeddings": embeddings, "rows": None, **bad}
        with pytest.raises(error, match=match):
            GraftSelector(0.2).fit(None, gradients=StoredGradients(**fields))

    @pytest.mark.parametrize("params", [dict(basis="input"), dict(strategy="uniform")])
    def test_needs_gradient_selection(self, table, params):
        """basis='input' and the uniform strategy need X: a named ValueError."""
        with pytest.raises(ValueError, match="holds gradients only"):
            GraftSelector(0.2, **params).fit(None, gradients=StoredGradients(*table))

    def test_passes_run_single_threaded(self, table, monkeypatch):
        """Both passes over the store run every thread pool at one thread, then come back."""
        from threadpoolctl import threadpool_info

        from graft_select import _feedback

        seen = []
        for name in ("orders_and_errors", "subset_errors"):
            original = getattr(_feedback, name)

            def spy(*args, _original=original, **kwargs):
                seen.append({p["num_threads"] for p in threadpool_info()})
                return _original(*args, **kwargs)

            monkeypatch.setattr(_feedback, name, spy)
        before = [p["num_threads"] for p in threadpool_info()]
        GraftSelector(0.2, chunk_size=300, random_state=0).fit(
            None, gradients=StoredGradients(*table))
        assert seen == [{1}, {1}]
        assert [p["num_threads"] for p in threadpool_info()] == before

    def test_x_must_be_none(self, table, digits):
        """X with a StoredGradients view is refused (the view carries the rows)."""
        with pytest.raises(ValueError, match="pass X=None"):
            GraftSelector(0.2).fit(digits[0], gradients=StoredGradients(*table))

    def test_x_none_needs_stored_gradients(self):
        """X=None without a view is a TypeError naming X."""
        with pytest.raises(TypeError, match="needs X"):
            GraftSelector(0.2).fit(None)

    def test_parameters_validated(self, table):
        """The estimator's parameters are validated on this path too (one door)."""
        from sklearn.utils._param_validation import InvalidParameterError

        with pytest.raises(InvalidParameterError, match="'method' parameter"):
            GraftSelector(0.2, method="bogus").fit(None, gradients=StoredGradients(*table))
        with pytest.raises(InvalidParameterError, match="'uniform_share' parameter"):
            GraftSelector(0.2, uniform_share=2.0).fit(None, gradients=StoredGradients(*table))
