"""Embedded datasets: procedural MNIST-1D and the digits split."""

import random
import subprocess
import sys

import numpy as np
import pytest

from graft_select.datasets import load_digits_split, make_mnist1d


class TestMakeMnist1d:
    def test_shapes_and_dtypes(self):
        """Four arrays, 80/20 split, 40-point float32 signals, int64 labels."""
        X_train, y_train, X_test, y_test = make_mnist1d(1000, random_state=0)
        assert X_train.shape == (800, 40) and X_test.shape == (200, 40)
        assert y_train.shape == (800,) and y_test.shape == (200,)
        assert X_train.dtype == X_test.dtype == np.float32
        assert y_train.dtype == y_test.dtype == np.int64

    def test_default_has_at_least_20000_training_samples(self):
        """The default size is what the demo trains on: at least 20,000 signals."""
        X_train, _, X_test, _ = make_mnist1d()
        assert X_train.shape[0] >= 20_000
        assert X_test.shape[0] > 0

    def test_same_seed_same_arrays(self):
        """The same random_state gives identical arrays."""
        first, second = make_mnist1d(500, random_state=3), make_mnist1d(500, random_state=3)
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)

    def test_other_seed_other_arrays(self):
        """A different random_state gives different signals."""
        a, b = make_mnist1d(500, random_state=0), make_mnist1d(500, random_state=1)
        assert not np.allclose(a[0], b[0])

    def test_balanced_labels(self):
        """Every digit appears n_samples / 10 times over train and test."""
        _, y_train, _, y_test = make_mnist1d(1000, random_state=0)
        counts = np.bincount(np.concatenate([y_train, y_test]), minlength=10)
        np.testing.assert_array_equal(counts, np.full(10, 100))

    def test_standardised(self):
        """Signals have mean 0 and standard deviation 1 over the whole set."""
        X_train, _, X_test, _ = make_mnist1d(1000, random_state=0)
        X = np.concatenate([X_train, X_test]).astype(np.float64)
        assert abs(X.mean()) < 1e-5 and abs(X.std() - 1) < 1e-5

    def test_global_generators_untouched(self):
        """Neither NumPy's nor Python's global generator is reseeded or advanced."""
        np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 (the legacy global generator is what is checked)
        make_mnist1d(200, random_state=5)
        after = np.random.get_state()  # noqa: NPY002 (the legacy global generator is what is checked)
        assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1])
        assert np_state[2:] == after[2:]
        assert random.getstate() == py_state

    def test_matches_the_mnist1d_package(self):
        """Same seed and size give mnist1d.data.make_dataset's arrays (float32 rounding)."""
        data = pytest.importorskip("mnist1d.data")
        args = data.get_dataset_args()
        args.num_samples, args.seed = 2000, 7
        np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 (the legacy global generator is what is checked)
        try:  # the package reseeds the global generators; restore them afterwards
            reference = data.make_dataset(args)
        finally:
            np.random.set_state(np_state)  # noqa: NPY002 (the legacy global generator is what is checked)
            random.setstate(py_state)
        X_train, y_train, X_test, y_test = make_mnist1d(2000, random_state=7)
        np.testing.assert_allclose(X_train, reference["x"], atol=1e-5)
        np.testing.assert_allclose(X_test, reference["x_test"], atol=1e-5)
        np.testing.assert_array_equal(y_train, reference["y"])
        np.testing.assert_array_equal(y_test, reference["y_test"])

    @pytest.mark.parametrize(("kwargs", "exc"), [
        ({"n_samples": 5}, ValueError),
        ({"n_samples": 100.0}, TypeError),
        ({"test_size": 0.0}, ValueError),
        ({"test_size": 1.0}, ValueError),
        ({"random_state": -1}, ValueError),
    ])
    def test_bad_parameters(self, kwargs, exc):
        """Invalid sizes and seeds raise with the parameter's name."""
        name = next(iter(kwargs))
        with pytest.raises(exc, match=name):
            make_mnist1d(**{"n_samples": 100, **kwargs})

    def test_fast(self):
        """The default 30,000 signals take seconds, not minutes (generous bound)."""
        import time

        start = time.perf_counter()
        make_mnist1d(30_000, random_state=1)
        assert time.perf_counter() - start < 30


class TestLoadDigitsSplit:
    def test_shapes_and_dtypes(self):
        """75/25 split of the 1,797 images, float32 pixels, int64 labels."""
        X_train, y_train, X_test, y_test = load_digits_split()
        assert X_train.shape == (1347, 64) and X_test.shape == (450, 64)
        assert X_train.dtype == np.float32 and y_train.dtype == np.int64
        assert y_test.dtype == np.int64

    def test_standardised_on_train(self):
        """Training pixels have mean 0 and (non-constant ones) standard deviation 1."""
        X_train = load_digits_split()[0].astype(np.float64)
        np.testing.assert_allclose(X_train.mean(0), 0, atol=1e-5)
        std = X_train.std(0)
        np.testing.assert_allclose(std[std > 0], 1, atol=1e-4)

    def test_deterministic(self):
        """The same random_state gives the same split; another gives another."""
        a, b, c = load_digits_split(1), load_digits_split(1), load_digits_split(2)
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[1], c[1])

    def test_stratified(self):
        """Every class is in both parts."""
        _, y_train, _, y_test = load_digits_split()
        assert set(y_train) == set(y_test) == set(range(10))


def test_imports_without_torch():
    """graft_select.datasets does not import torch."""
    code = "import sys, graft_select.datasets; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("test_size, held_out", [(0.001, 2), (0.999, 1796)])
def test_load_digits_split_too_few_of_a_class_names_the_range(test_size, held_out):
    """A split that leaves a side without every class raised scikit-learn's own error
    (without the function's name or the range that works); now one that gives both."""
    with pytest.raises(ValueError, match=rf"load_digits_split: test_size={test_size} holds "
                                         rf"{held_out} of the 1797.*from 0\.0056 to 0\.9944"):
        load_digits_split(test_size=test_size)
    X_train, _, X_test, _ = load_digits_split(test_size=10 / 1797)  # the smallest that works
    assert (len(X_train), len(X_test)) == (1787, 10)
