"""GraftSelector fitted once on a warm model's gradients: the uniform check, and dense
and factored gradients selecting the same rows (issue 22)."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from graft_select import FactoredGradients, GraftSelector, StoredGradients


def _benchmark(name):
    """A script of benchmarks/ loaded as a module (the same data as its measurement)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# embeddings and factored gradients of a random softmax model (random labels)
_proxies = _benchmark("bench_dense_factored").proxies


@pytest.fixture(scope="module")
def warm_task():
    """A 4-class task a linear model gets 25% wrong, and a warm model's gradients."""
    X, y = make_classification(n_samples=12_000, n_features=16, n_informative=8,
                               n_classes=4, n_clusters_per_class=2, class_sep=1.5,
                               random_state=0)
    X_train, y_train, X_test, y_test = X[:10_000], y[:10_000], X[10_000:], y[10_000:]
    warm = np.random.default_rng(0).choice(10_000, 1000, replace=False)
    model = LogisticRegression(max_iter=1000).fit(X_train[warm], y_train[warm])
    R = model.predict_proba(X_train) - np.eye(4)[y_train]
    H = np.hstack([X_train, np.ones((10_000, 1))])
    return X_train, y_train, X_test, y_test, FactoredGradients(R, H)


def _accuracy(task, rows):
    X, y, X_test, y_test, _ = task
    return LogisticRegression(max_iter=1000).fit(X[rows], y[rows]).score(X_test, y_test)


@pytest.mark.filterwarnings("ignore:The weights of:UserWarning")
class TestUniformCheck:
    def test_static_use_trains_as_well_as_uniform(self, warm_task):
        """The default trains as well as a uniform subset where MaxVol's picks alone lose."""
        X, G = warm_task[0], warm_task[4]
        fits = {name: GraftSelector(0.1, chunk_size=256, random_state=0, **params).fit(
            X, gradients=G) for name, params in {
                "default": {}, "unchecked": {"max_error_ratio": None},
                "uniform": {"strategy": "uniform"}}.items()}
        acc = {name: _accuracy(warm_task, np.asarray(s.sample_indices_))
               for name, s in fits.items()}
        assert acc["unchecked"] < acc["uniform"] - 0.2  # the failure the check prevents
        assert acc["default"] >= acc["uniform"] - 0.02
        assert not fits["default"].maxvol_chunks_.all()

    def test_chunks_that_fail_keep_a_uniform_subset(self, warm_task):
        """A tiny ratio replaces every chunk's picks by a uniform subset of the same size."""
        X, G = warm_task[0], warm_task[4]
        kept = GraftSelector(0.1, chunk_size=256, random_state=0, max_error_ratio=None).fit(
            X, gradients=G)
        swapped = GraftSelector(0.1, chunk_size=256, random_state=0,
                                max_error_ratio=1e-9).fit(X, gradients=G)
        assert not swapped.maxvol_chunks_.any()
        np.testing.assert_array_equal(swapped.subset_sizes_, kept.subset_sizes_)
        assert not np.array_equal(swapped.sample_indices_, kept.sample_indices_)
        assert np.all(swapped.gradient_error_ >= kept.gradient_error_ * 0.25)

    def test_a_large_ratio_changes_nothing(self, warm_task):
        """Chunks that keep MaxVol's picks are those of the unchecked fit, bit for bit."""
        X, G = warm_task[0], warm_task[4]
        a = GraftSelector(0.1, chunk_size=256, random_state=0, max_error_ratio=None).fit(
            X, gradients=G)
        b = GraftSelector(0.1, chunk_size=256, random_state=0, max_error_ratio=1e9).fit(
            X, gradients=G)
        assert b.maxvol_chunks_.all()
        np.testing.assert_array_equal(a.sample_indices_, b.sample_indices_)
        np.testing.assert_array_equal(a.sample_weight_, b.sample_weight_)
        np.testing.assert_array_equal(a.gradient_error_, b.gradient_error_)

    def test_weights_follow_the_kept_subsets(self, warm_task):
        """Each kept subset carries its own least-squares weights and error."""
        X, G = warm_task[0], warm_task[4]
        s = GraftSelector(0.1, chunk_size=256, random_state=0).fit(X, gradients=G)
        assert len(s.sample_weight_) == len(s.sample_indices_)
        c = int(np.flatnonzero(~s.maxvol_chunks_)[0])
        start = int(s.subset_sizes_[:c].sum())
        rows = np.asarray(s.sample_indices_[start:start + s.subset_sizes_[c]]) - 256 * c
        assert np.all(np.diff(rows) > 0)  # a uniform subset, in increasing order
        own = GraftSelector(0.1, chunk_size=256, random_state=0, max_error_ratio=1e-9).fit(
            X, gradients=G)
        np.testing.assert_allclose(s.gradient_error_[c], own.gradient_error_[c])

    def test_auto_leaves_stored_gradients_alone(self):
        """A StoredGradients view (the sampler's refits) is not checked by default."""
        _, F = _proxies(1000, 8, 5, 0)
        view = StoredGradients(F.residuals, F.inputs[:, :-1])
        s = GraftSelector(0.1, chunk_size=250, random_state=0).fit(None, gradients=view)
        assert s.maxvol_chunks_.all()

    def test_no_gradients_and_uniform_strategy(self):
        """Without gradients every chunk is MaxVol's; the uniform strategy none."""
        X, F = _proxies(600, 8, 4, 0)
        assert GraftSelector(0.2, chunk_size=200).fit(X).maxvol_chunks_.all()
        s = GraftSelector(0.2, chunk_size=200, strategy="uniform", random_state=0).fit(
            X, gradients=F)
        assert not s.maxvol_chunks_.any()

    @pytest.mark.parametrize("value", [0.0, -1.0, "always", True])
    def test_bad_ratio(self, value):
        """max_error_ratio must be a positive float, "auto" or None."""
        X, F = _proxies(300, 4, 3, 0)
        with pytest.raises((ValueError, TypeError), match="'max_error_ratio'"):
            GraftSelector(0.2, max_error_ratio=value).fit(X, gradients=F)


class TestUniformCheckTies:
    def test_same_rows_keep_maxvol(self):
        """A chunk whose uniform draw holds MaxVol's very rows keeps them as MaxVol's
        (pivot order, ``maxvol_chunks_`` True); chunks of 2 rows, 1 pick each, make
        such draws common (8 of 12 chunks were reported uniform)."""
        X, gradients = _proxies(23, 5, 3, 0)
        plain = GraftSelector(0.5, chunk_size=2, max_error_ratio=None, random_state=0).fit(
            X, gradients=gradients)
        checked = GraftSelector(0.5, chunk_size=2, max_error_ratio=0.25,
                                random_state=0).fit(X, gradients=gradients)
        bounds = np.cumsum([0, *checked.subset_sizes_])
        for c, keep in enumerate(checked.maxvol_chunks_):
            rows = checked.sample_indices_[bounds[c]:bounds[c + 1]]
            maxvol = plain.sample_indices_[bounds[c]:bounds[c + 1]]
            if not keep:
                assert set(rows.tolist()) != set(maxvol.tolist()), c
            else:
                np.testing.assert_array_equal(rows, maxvol)
        assert checked.maxvol_chunks_.any()


class TestDenseAndFactored:
    """Dense and factored forms of the same proxies select the same rows.

    The tolerance: at least 99% of the rows in common, for the randomized
    factor (``svd_method="auto"``) and the exact one; measured 100% on every
    case and seed, also on 3000 x 256 (benchmarks/bench_dense_factored.py). Both forms go through
    the eigenvectors of the chunks' Gram matrices with the same random draws,
    and the directions beyond the proxies' numerical rank are dropped, so only
    near-ties of the two roundings of the Gram matrix could differ.
    """

    @pytest.mark.parametrize("method", ["auto", "exact"])
    @pytest.mark.parametrize("n, d, c, chunk_size", [(600, 127, 8, 200), (800, 31, 4, None)])
    def test_same_rows(self, n, d, c, chunk_size, method):
        """At least 99% of the rows agree (chunks, and one chunk of all rows)."""
        for seed in range(2):
            X, F = _proxies(n, d, c, seed)
            picked = []
            for G in (F, F.materialize()):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    s = GraftSelector(0.2, chunk_size=chunk_size, svd_method=method,
                                      random_state=seed).fit(X, gradients=G)
                picked.append(set(np.asarray(s.sample_indices_).tolist()))
            assert len(picked[0] & picked[1]) >= 0.99 * len(picked[0])
