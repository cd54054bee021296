"""Reliability round 3 (issue 25), the estimator side: each test names its finding.

GraftSelector / GraftResampler (validation, weights, Dask input, pipelines), the
``graft-select`` command line, and the sampler's ``features=`` array. Every test
failed on the code before its fix.
"""

import re
import warnings

import numpy as np
import pytest

from graft_select import BudgetWarning, GraftResampler, GraftSelector
from graft_select.cli import main


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _caught(function, *args, **kwargs):
    """(result, warnings) of ``function(*args, **kwargs)`` with every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    return result, caught


def _chunk_totals(selector):
    """Sum of ``sample_weight_`` per chunk."""
    starts = np.r_[0, np.cumsum(selector.subset_sizes_)[:-1]]
    return np.add.reduceat(np.asarray(selector.sample_weight_), starts)


def _cli_error(capsys, code):
    """The one error line of a failed command (exit status 2)."""
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graft-select: error:"), captured.err
    return lines[0]


# ---------------------------------------------------------------------- Dask input


class TestDask:
    @pytest.mark.parametrize("method", ["fit", "fit_transform", "fit_resample"])
    def test_f13_dask_budget_warning_points_at_the_caller(self, rng, method):
        """F13: a dask fit overshooting its budget warns, at the user's line, for every door.

        The warning's location decides whether Python's default filter shows it
        (once per location): it must be the caller's line, never the library's.
        """
        da = pytest.importorskip("dask.array")
        dask = pytest.importorskip("dask")
        X = rng.standard_normal((100, 3))
        y = np.arange(100)
        for data, target in ((X, y), (da.from_array(X, chunks=20), da.from_array(y, chunks=20))):
            estimator = (GraftResampler if method == "fit_resample" else GraftSelector)(
                0.1, chunk_size=2, random_state=0)
            with dask.config.set(scheduler="synchronous"), warnings.catch_warnings(
                    record=True) as caught:
                warnings.simplefilter("always")
                if method == "fit_resample":
                    estimator.fit_resample(data, target)
                else:
                    getattr(estimator, method)(data)
            budget = [w for w in caught if issubclass(w.category, BudgetWarning)]
            assert len(budget) == 1, [str(w.message) for w in caught]
            assert budget[0].filename == __file__, (type(data).__name__, budget[0].filename)

    def test_f43_dask_y_with_unknown_chunk_sizes(self, rng):
        """F43: y after boolean indexing gets the compute_chunk_sizes() hint X gets."""
        da = pytest.importorskip("dask.array")
        X = da.from_array(rng.standard_normal((100, 3)), chunks=20)
        y = da.from_array(rng.integers(-1, 3, 100), chunks=20)
        with pytest.raises(ValueError, match=r"'y' of GraftResampler .*unknown chunk") as info:
            GraftResampler(0.3, random_state=0).fit_resample(X, y[y >= 0])
        assert "y = y.compute_chunk_sizes()" in str(info.value)
        assert "nan" not in str(info.value)


# ---------------------------------------------------------------------- weights


class TestWeights:
    @pytest.mark.parametrize("case", ["cancelling", "zero"])
    def test_f19_zero_mean_gradient_falls_back_to_uniform_weights(self, rng, case):
        """F19: a chunk whose mean gradient is zero gets chunk_size / k, with a warning."""
        X = rng.standard_normal((100, 3))
        G = rng.standard_normal((100, 5))
        if case == "cancelling":
            G[1::2] = -G[0::2]
        else:
            G[:] = 0
        selector, caught = _caught(
            GraftSelector(0.2, chunk_size=50, random_state=0).fit, X, gradients=G)
        expected = np.repeat(50 / selector.subset_sizes_, selector.subset_sizes_)
        np.testing.assert_allclose(selector.sample_weight_, expected)
        messages = [str(w.message) for w in caught]
        assert any("chunks 0 and 1" in m and "chunk_size / k" in m for m in messages), messages

    def test_f19_names_only_the_degenerate_chunk(self, rng):
        """F19: the fallback applies to the chunk whose mean gradient is zero, and only it."""
        X = rng.standard_normal((150, 3))
        G = rng.standard_normal((150, 5))
        G[50:100:2] = -G[51:100:2]  # chunk 1 cancels out
        selector, caught = _caught(
            GraftSelector(0.2, chunk_size=50, random_state=0).fit, X, gradients=G)
        k = selector.subset_sizes_
        second = selector.sample_weight_[k[0]:k[0] + k[1]]
        np.testing.assert_allclose(second, 50 / k[1])
        assert np.any(selector.sample_weight_[:k[0]] != 50 / k[0])  # least squares kept
        messages = [str(w.message) for w in caught if "chunk_size / k" in str(w.message)]
        assert len(messages) == 1 and re.search(r"\bchunk 1\b", messages[0]), messages

    def test_f19_torch_weights_stay_torch(self, rng):
        """F19: the fallback weights of torch input are a torch tensor, like the others."""
        torch = pytest.importorskip("torch")
        X = torch.from_numpy(rng.standard_normal((100, 3)))
        selector, _ = _caught(GraftSelector(0.2, chunk_size=50, random_state=0).fit, X,
                              gradients=torch.zeros((100, 4), dtype=torch.float64))
        assert isinstance(selector.sample_weight_, torch.Tensor)
        k = torch.as_tensor(selector.subset_sizes_)
        expected = torch.repeat_interleave(50 / k, k).to(torch.float64)
        torch.testing.assert_close(selector.sample_weight_, expected)

    def test_f19_merge_and_reduce_fit(self, rng):
        """F19: the merge-and-reduce fit (chunk_size=None) falls back alike."""
        X = rng.standard_normal((5000, 3))
        G = np.zeros((5000, 4))
        selector, caught = _caught(GraftSelector(0.01, random_state=0).fit, X, gradients=G)
        np.testing.assert_allclose(_chunk_totals(selector), selector.chunk_sizes_)
        assert any("chunk_size / k" in str(w.message) for w in caught)

    def test_f20_weights_docstring_says_what_they_are(self):
        """F20: the docs say least-squares coefficients, not importance weights, and how to use."""
        doc = " ".join(GraftSelector.__doc__.split())
        section = doc[doc.index("sample_weight_ :"):doc.index("gradient_error_ :")]
        for words in ("least-squares", "not importance weights", "negative",
                      "sample_weight=", "chunk_size / k"):
            assert words in section, words
        assert "least-squares" in " ".join(GraftResampler.__doc__.split())

    def test_f20_negative_weight_total_warns(self, rng):
        """F20: rank-1 gradients give a chunk a negative weight total: a warning names it."""
        X = np.outer(rng.standard_normal(200), rng.standard_normal(5))
        selector, caught = _caught(
            GraftSelector(0.1, chunk_size=50, random_state=0).fit, X, gradients=X)
        negative = np.flatnonzero(_chunk_totals(selector) < 0)
        assert negative.size  # the degenerate case of the finding
        messages = [str(w.message) for w in caught if "negative" in str(w.message)]
        assert len(messages) == 1, [str(w.message) for w in caught]
        assert re.search(rf"chunks? {negative[0]}\b", messages[0])
        assert "sample_weight_" in messages[0] and "clip" in messages[0]

    def test_f20_no_weight_warning_on_ordinary_gradients(self, rng):
        """F20: gradients with a clear mean keep their weights and raise no warning."""
        X = rng.standard_normal((200, 4))
        G = rng.standard_normal((200, 6)) + 3.0
        selector, caught = _caught(
            GraftSelector(0.2, chunk_size=50, random_state=0).fit, X, gradients=G)
        assert not caught, [str(w.message) for w in caught]
        assert np.all(_chunk_totals(selector) > 0)


# ----------------------------------------------------------------- odd inputs of X


class TestInputs:
    @pytest.mark.parametrize("layout", ["coo", "csr"])
    @pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")
    def test_f27_torch_sparse_named(self, rng, layout):
        """F27: a torch sparse X is a TypeError naming 'X' and the fix, not NotImplementedError."""
        torch = pytest.importorskip("torch")
        X = torch.from_numpy(rng.standard_normal((50, 4)))
        X = X.to_sparse() if layout == "coo" else X.to_sparse_csr()
        with pytest.raises(TypeError, match=r"'X' of GraftSelector .*sparse") as info:
            GraftSelector(0.3).fit(X)
        assert "to_dense()" in str(info.value)

    @pytest.mark.parametrize("column", ["datetime", "timedelta"])
    def test_f30_datetime_column_named(self, rng, column):
        """F30: a datetime column is a TypeError naming 'X', the column and the fix."""
        pd = pytest.importorskip("pandas")
        frame = pd.DataFrame(rng.standard_normal((40, 3)), columns=list("abc"))
        frame["when"] = (pd.date_range("2020-01-01", periods=40) if column == "datetime"
                         else pd.to_timedelta(np.arange(40), unit="D"))
        with pytest.raises(TypeError, match=r"'X' of GraftSelector .*'when'") as info:
            GraftSelector(0.3).fit(frame)
        assert "int64" in str(info.value)

    def test_f30_datetime_array_named(self):
        """F30: a datetime64 NumPy array is named too."""
        X = np.arange(40).astype("datetime64[D]").reshape(20, 2)
        with pytest.raises(TypeError, match=r"'X' of GraftSelector .*datetime"):
            GraftSelector(0.3).fit(X)

    @pytest.mark.parametrize("kind", ["dict", "generator", "set"])
    def test_f48_non_array_x_named(self, rng, kind):
        """F48: a dict, a generator or a set names 'X' and the estimator."""
        rows = rng.standard_normal((10, 3))
        X = {"dict": {"a": [1, 2, 3]}, "generator": (r for r in rows),
             "set": {1, 2, 3}}[kind]
        with pytest.raises(TypeError, match=r"'X' of GraftSelector must be") as info:
            GraftSelector(0.3).fit(X)
        hint = {"dict": "DataFrame", "generator": "list(", "set": "array"}[kind]
        assert hint in str(info.value)

    def test_f48_resampler_named(self):
        """F48: GraftResampler names itself."""
        with pytest.raises(TypeError, match=r"'X' of GraftResampler must be"):
            GraftResampler(0.3).fit_resample({"a": [1, 2, 3]}, [0, 1, 0])


class TestPipeline:
    def test_f47_selector_inside_pipeline_points_to_resampler(self, rng):
        """F47: a selector before a supervised step warns with GraftResampler and imblearn."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        X = rng.standard_normal((100, 4))
        y = (X[:, 0] > 0).astype(int)
        pipe = make_pipeline(GraftSelector(0.5, random_state=0), LogisticRegression())
        with pytest.warns(UserWarning, match="GraftResampler") as record, \
                pytest.raises(ValueError):
            pipe.fit(X, y)
        message = " ".join(str(w.message) for w in record)
        assert "imblearn.pipeline.Pipeline" in message and "sample_indices_" in message

    def test_f47_no_warning_without_y_or_when_all_rows_kept(self, rng):
        """F47: fit_transform(X) and a selection of every row do not warn."""
        X = rng.standard_normal((60, 4))
        y = np.arange(60)
        _, caught = _caught(GraftSelector(0.5, random_state=0).fit_transform, X)
        assert not caught
        out, caught = _caught(GraftSelector(1.0, random_state=0).fit_transform, X, y)
        assert out.shape == X.shape and not caught


# ----------------------------------------------------------------- sampler features


class TestSamplerFeatures:
    def _plan(self, features, n=40):
        from graft_select.sampler import GraftBatchSampler

        sampler = GraftBatchSampler(n, 10, fraction=0.5, features=features,
                                    warm_start_epochs=0, refit_every=1, seed=0)
        sampler.set_epoch(0)
        return [list(batch) for batch in sampler]

    def test_f28_dataframe_features(self, rng):
        """F28: a DataFrame of features plans as its NumPy values do (no KeyError)."""
        pytest.importorskip("torch")
        pd = pytest.importorskip("pandas")
        X = rng.standard_normal((40, 4))
        frame = pd.DataFrame(X, columns=list("abcd"), index=np.arange(100, 140))
        assert self._plan(frame) == self._plan(X)

    def test_f28_dataframe_text_column_named(self, rng):
        """F28: a DataFrame with a text column names 'features'."""
        pytest.importorskip("torch")
        pd = pytest.importorskip("pandas")
        frame = pd.DataFrame(rng.standard_normal((40, 2)), columns=["a", "b"])
        frame["name"] = "x"
        with pytest.raises(TypeError, match=r"'features' of GraftBatchSampler"):
            self._plan(frame)

    @pytest.mark.parametrize("kind", ["torch_coo", "torch_csr", "scipy"])
    @pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")
    def test_f29_sparse_features_named(self, rng, kind):
        """F29: sparse features are a TypeError naming 'features' and how to densify them."""
        torch = pytest.importorskip("torch")
        scipy_sparse = pytest.importorskip("scipy.sparse")
        X = rng.standard_normal((40, 4))
        features = {"torch_coo": lambda: torch.from_numpy(X).to_sparse(),
                    "torch_csr": lambda: torch.from_numpy(X).to_sparse_csr(),
                    "scipy": lambda: scipy_sparse.csr_matrix(X)}[kind]()
        with pytest.raises(TypeError, match=r"'features' of GraftBatchSampler .*sparse") as info:
            self._plan(features)
        assert ("to_dense()" if kind.startswith("torch") else "toarray()") in str(info.value)


# ------------------------------------------------------------------------ the CLI


class TestCli:
    @pytest.mark.parametrize("spelling", ["same", "dot", "absolute"])
    def test_f14_cli_output_overwrites_input(self, tmp_path, rng, capsys, monkeypatch,
                                             spelling):
        """F14: -o naming FEATURES (however spelled) is refused; the features survive."""
        monkeypatch.chdir(tmp_path)
        X = rng.standard_normal((50, 4))
        np.save("X.npy", X)
        output = {"same": "X.npy", "dot": "./sub/../X.npy",
                  "absolute": str(tmp_path / "X.npy")}[spelling]
        (tmp_path / "sub").mkdir()
        line = _cli_error(capsys, main(["select", "X.npy", "--fraction", "0.3", "-o", output]))
        assert "--output" in line and "FEATURES" in line and "--force" in line
        np.testing.assert_array_equal(np.load("X.npy"), X)

    def test_f14_cli_output_overwrites_gradients(self, tmp_path, rng, capsys):
        """F14: -o naming the --gradients file is refused as well."""
        X = rng.standard_normal((50, 4))
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "G.npy", X)
        line = _cli_error(capsys, main(["select", str(tmp_path / "X.npy"), "--fraction", "0.3",
                                        "--gradients", str(tmp_path / "G.npy"),
                                        "-o", str(tmp_path / "G.npy")]))
        assert "--gradients" in line
        np.testing.assert_array_equal(np.load(tmp_path / "G.npy"), X)

    def test_f14_cli_force_overwrites(self, tmp_path, rng):
        """F14: --force lets the indices replace the input on purpose."""
        np.save(tmp_path / "X.npy", rng.standard_normal((50, 4)))
        code = main(["select", str(tmp_path / "X.npy"), "--fraction", "0.3", "--force",
                     "-o", str(tmp_path / "X.npy")])
        assert code == 0 and np.load(tmp_path / "X.npy").shape == (15,)

    @pytest.mark.parametrize("name", ["features.npy", "folder"])
    def test_f44_cli_directory_named(self, tmp_path, capsys, name):
        """F44: a directory as FEATURES is called a directory, not missing or unsupported."""
        (tmp_path / name).mkdir()
        line = _cli_error(capsys, main(["select", str(tmp_path / name), "--fraction", "0.3",
                                        "-o", str(tmp_path / "out.npy")]))
        assert "is a directory" in line and "does not exist" not in line

    def test_f44_cli_output_directory_named(self, tmp_path, rng, capsys):
        """F44: a directory as --output is called a directory."""
        np.save(tmp_path / "X.npy", rng.standard_normal((20, 3)))
        (tmp_path / "out").mkdir()
        line = _cli_error(capsys, main(["select", str(tmp_path / "X.npy"), "--fraction", "0.3",
                                        "-o", str(tmp_path / "out")]))
        assert "--output" in line and "is a directory" in line

    @pytest.mark.parametrize("option, value, parameter", [
        ("--seed", "-1", "random_state"),
        ("--seed", str(2**32), "random_state"),
        ("--n-components", "0", "n_components"),
        ("--chunk-size", "1", "chunk_size"),
        ("--fraction", "0", "fraction"),
        ("--fraction", "nan", "fraction"),
    ])
    def test_f45_cli_names_the_option(self, tmp_path, rng, capsys, option, value, parameter):
        """F45: a bad option value names the option, not the estimator's parameter."""
        np.save(tmp_path / "X.npy", rng.standard_normal((20, 3)))
        args = ["select", str(tmp_path / "X.npy"), "-o", str(tmp_path / "out.npy")]
        if option != "--fraction":
            args += ["--fraction", "0.3"]
        line = _cli_error(capsys, main([*args, option, value]))
        assert f"argument {option}" in line and f"'{parameter}' parameter" not in line
        assert "GraftSelector" not in line

    @pytest.mark.parametrize("header", [[], ["--header"]])
    def test_f46_cli_pandas_index_column(self, tmp_path, rng, capsys, header):
        """F46: a CSV with pandas' index column is named, with or without --header."""
        pd = pytest.importorskip("pandas")
        X = rng.standard_normal((30, 4))
        path = tmp_path / "X.csv"
        pd.DataFrame(X, columns=list("abcd")).to_csv(path)
        line = _cli_error(capsys, main(["select", str(path), "--fraction", "0.3", *header,
                                        "-o", str(tmp_path / "out.npy")]))
        assert "index" in line and "index=False" in line and "--index-column" in line

    def test_f46_cli_index_column_option(self, tmp_path, rng):
        """F46: --index-column drops the index: the same selection as the plain file."""
        pd = pytest.importorskip("pandas")
        X = rng.standard_normal((30, 4))
        pd.DataFrame(X, columns=list("abcd")).to_csv(tmp_path / "indexed.csv")
        pd.DataFrame(X, columns=list("abcd")).to_csv(tmp_path / "plain.csv", index=False)
        for name in ("indexed", "plain"):
            extra = ["--index-column"] if name == "indexed" else []
            assert main(["select", str(tmp_path / f"{name}.csv"), "--fraction", "0.3", *extra,
                         "-o", str(tmp_path / f"{name}.npy")]) == 0
        np.testing.assert_array_equal(np.load(tmp_path / "indexed.npy"),
                                      np.load(tmp_path / "plain.npy"))
