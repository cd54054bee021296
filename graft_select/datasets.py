"""Embedded datasets for the demo: procedural MNIST-1D and a split of scikit-learn's digits.

Nothing here downloads anything or imports torch.

MNIST-1D (Greydanus and Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024,
arXiv:2011.14439) turns ten hand-made 1-D digit templates of length 12 into 40-point
signals by random padding, dilation, scaling, translation, correlated and white noise,
shear and subsampling. :func:`make_mnist1d` follows the recipe of the ``mnist1d``
package (``mnist1d.data.make_dataset`` with ``get_dataset_args()``, version 0.0.2)
step by step and draws the same random numbers in the same order, so for the same seed
it reproduces that package's arrays (to floating-point rounding; a test checks it when
``mnist1d`` is installed). It is a re-implementation rather than a call into the
package because the package reseeds NumPy's and Python's global generators, imports
matplotlib and requests at import time, and transforms one sample at a time (about
18 s for 30,000 samples against well under a second here).
"""

import math

import numpy as np
from scipy.interpolate import interp1d
from scipy.ndimage import gaussian_filter1d

from ._validation import check_int, check_real

__all__ = ["load_digits_split", "make_mnist1d", "make_noisy_digits"]

# The recipe of mnist1d.data.get_dataset_args() (version 0.0.2).
_TEMPLATE_LEN = 12
_PADDING = (36, 60)
_SCALE_COEFF = 0.4
_MAX_TRANSLATION = 48
_CORR_NOISE_SCALE = 0.25
_IID_NOISE_SCALE = 2e-2
_SHEAR_SCALE = 0.75
_FINAL_SEQ_LENGTH = 40
_EPS = 1e-8

# The ten digit templates of mnist1d.data.get_templates().
_DIGITS = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


def _templates():
    """Return the (10, 12) whitened templates, starting and ending at 0."""
    x = _DIGITS - _DIGITS.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


def _interpolate(X, n_points):
    """Resample each row of X linearly onto ``n_points`` equispaced points."""
    old = np.linspace(0, 1, X.shape[-1])
    return interp1d(old, X, axis=-1, kind="linear")(np.linspace(0, 1, n_points))


def _draw(rs, n):
    """Per-sample random numbers, drawn in the order mnist1d's transform() draws them."""
    length = _TEMPLATE_LEN + _PADDING[1]
    u_pad, u_scale, u_shear = np.empty(n), np.empty(n), np.empty(n)
    shift = np.empty(n, dtype=np.int64)
    corr, iid = np.empty((n, length)), np.empty((n, length))
    for i in range(n):
        u_pad[i] = rs.rand()
        u_scale[i] = rs.rand()
        shift[i] = rs.choice(_MAX_TRANSLATION)
        corr[i] = _CORR_NOISE_SCALE * rs.randn(length)
        iid[i] = _IID_NOISE_SCALE * rs.randn(length)
        u_shear[i] = rs.rand()
    return u_pad, u_scale, shift, corr, iid, u_shear


def _transform(X, rs):
    """mnist1d's transform() applied to every row of X (n, 12), vectorised."""
    n = X.shape[0]
    length = _TEMPLATE_LEN + _PADDING[1]
    u_pad, u_scale, shift, corr, iid, u_shear = _draw(rs, n)

    # pad with a random number of zeros, then dilate back to a common length
    low, high = _PADDING
    pad = low + (u_pad * (high - low + 1)).astype(np.int64)
    out = np.empty((n, length))
    for p in np.unique(pad):
        rows = np.flatnonzero(pad == p)
        padded = np.concatenate([X[rows] + _EPS, np.zeros((rows.size, p))], axis=1)
        out[rows] = _interpolate(padded, length)

    out *= (1 + _SCALE_COEFF * (u_scale - 0.5))[:, None]
    out = out[np.arange(n)[:, None], (np.arange(length) - shift[:, None]) % length]

    # correlated noise where the signal is zero, white noise everywhere
    mask = out != 0
    out = mask * out + (1 - mask) * gaussian_filter1d(corr, 2, axis=-1)
    out = out + iid

    coeff = _SHEAR_SCALE * (u_shear - 0.5)
    out = out - coeff[:, None] * np.linspace(-0.5, 0.5, length)
    return _interpolate(out, _FINAL_SEQ_LENGTH)


def make_mnist1d(n_samples=30_000, *, test_size=0.2, random_state=0):
    """Generate the MNIST-1D dataset procedurally (no download).

    Parameters
    ----------
    n_samples : int, default=30_000
        Total number of signals, train and test together; rounded down to a multiple of
        10 (the classes are balanced). The default gives 24,000 training signals.
    test_size : float, default=0.2
        Share of the signals held out as the test set (mnist1d's ``train_split`` is
        ``1 - test_size``): the training set is the first ``int(n * (1 - test_size))``
        signals, as mnist1d splits them, so the test set can hold one signal more than
        ``test_size * n`` (901 of 1,000 at 0.9).
    random_state : int or None, default=0
        Seed of the private ``numpy.random.RandomState`` that draws the transformations;
        the same seed gives the same arrays, and ``mnist1d``'s own generator with
        ``seed=random_state`` gives them too. No global generator is touched.

    Returns
    -------
    X_train : ndarray of shape (n_train, 40), dtype float32
    y_train : ndarray of shape (n_train,), dtype int64
    X_test : ndarray of shape (n_test, 40), dtype float32
    y_test : ndarray of shape (n_test,), dtype int64
        Signals standardised over the whole set (mean 0, standard deviation 1), labels
        0 to 9, in random order.

    References
    ----------
    S. Greydanus and D. Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024,
    arXiv:2011.14439; https://github.com/greydanus/mnist1d.

    Examples
    --------
    >>> from graft_select.datasets import make_mnist1d
    >>> X_train, y_train, X_test, y_test = make_mnist1d(1000, random_state=0)
    >>> X_train.shape, X_test.shape
    ((800, 40), (200, 40))
    """
    owner = "make_mnist1d"
    n_samples = check_int(n_samples, "n_samples", owner, low=20)
    test_size = check_real(test_size, "test_size", owner, low=0.0, high=1.0, closed="neither")
    if random_state is not None:
        random_state = check_int(random_state, "random_state", owner, low=0, high=2**32 - 1)
    rs = np.random.RandomState(random_state)

    per_class = n_samples // 10
    templates = _templates()
    X = _transform(np.repeat(templates, per_class, axis=0), rs)
    y = np.repeat(np.arange(10, dtype=np.int64), per_class)

    order = rs.permutation(y.size)
    X, y = X[order], y[order]
    X = (X - X.mean()) / X.std()

    split = int(y.size * (1.0 - test_size))
    if split == 0 or split == y.size:
        raise ValueError(
            f"make_mnist1d: test_size={test_size} leaves an empty train or test set with "
            f"n_samples={n_samples}; increase n_samples or change test_size."
        )
    X = X.astype(np.float32)
    return X[:split], y[:split], X[split:], y[split:]


def load_digits_split(random_state=0, *, test_size=0.25):
    """scikit-learn's ``load_digits``, standardised and split into train and test.

    Parameters
    ----------
    random_state : int, default=0
        Seed of the stratified train/test split.
    test_size : float, default=0.25
        Share of the 1,797 images held out as the test set.

    Returns
    -------
    X_train : ndarray of shape (n_train, 64), dtype float32
    y_train : ndarray of shape (n_train,), dtype int64
    X_test : ndarray of shape (n_test, 64), dtype float32
    y_test : ndarray of shape (n_test,), dtype int64
        Pixels standardised with the training set's mean and standard deviation
        (constant pixels are left at 0).

    Examples
    --------
    >>> from graft_select.datasets import load_digits_split
    >>> X_train, y_train, X_test, y_test = load_digits_split()
    >>> X_train.shape, X_test.shape
    ((1347, 64), (450, 64))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    owner = "load_digits_split"
    random_state = check_int(random_state, "random_state", owner, low=0, high=2**32 - 1)
    test_size = check_real(test_size, "test_size", owner, low=0.0, high=1.0, closed="neither")
    X, y = load_digits(return_X_y=True)
    n, classes = y.size, np.unique(y).size
    n_test = math.ceil(test_size * n)  # as train_test_split counts them
    if n_test < classes or n - n_test < classes:
        low, high = classes / n, (n - classes) / n
        raise ValueError(
            f"load_digits_split: test_size={test_size} holds {n_test} of the {n} images "
            f"out and leaves {n - n_test} for training, but the stratified split needs at "
            f"least one image of each of the {classes} classes on both sides; pass a "
            f"test_size from {low:.4f} to {high:.4f}.")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=random_state
    )
    scaler = StandardScaler().fit(X_train)
    return (
        scaler.transform(X_train).astype(np.float32),
        y_train.astype(np.int64),
        scaler.transform(X_test).astype(np.float32),
        y_test.astype(np.int64),
    )


def make_noisy_digits(n_copies=6, *, jitter=0.25, label_noise=0.15, random_state=0):
    """A redundant, noisy training set from :func:`load_digits_split`; the test set is clean.

    Every training image appears ``n_copies`` times, each copy with Gaussian noise of
    standard deviation ``jitter`` (in standardised pixel units) added; then a share
    ``label_noise`` of the training rows, drawn at random, get a label drawn
    uniformly from the nine wrong classes. Such a set is where subset selection
    should pay off most: most rows are near-duplicates and some are mislabelled.

    Parameters
    ----------
    n_copies : int, default=6
        Copies of each training image (at least 1).
    jitter : float, default=0.25
        Standard deviation of the noise added to each copy (at least 0).
    label_noise : float, default=0.15
        Share of training rows with a wrong label, in [0, 1).
    random_state : int, default=0
        Seeds the split, the noise and the label flips.

    Returns
    -------
    X_train : ndarray of shape (1347 * n_copies, 64), dtype float32
    y_train : ndarray of shape (1347 * n_copies,), dtype int64
    X_test : ndarray of shape (450, 64), dtype float32
    y_test : ndarray of shape (450,), dtype int64
        The test split of :func:`load_digits_split` unchanged.

    Examples
    --------
    >>> from graft_select.datasets import make_noisy_digits
    >>> X_train, y_train, X_test, y_test = make_noisy_digits(n_copies=2)
    >>> X_train.shape, X_test.shape
    ((2694, 64), (450, 64))
    """
    owner = "make_noisy_digits"
    n_copies = check_int(n_copies, "n_copies", owner, low=1)
    jitter = check_real(jitter, "jitter", owner, low=0.0)
    label_noise = check_real(label_noise, "label_noise", owner, low=0.0, high=1.0,
                             closed="left")
    random_state = check_int(random_state, "random_state", owner, low=0, high=2**32 - 1)
    X, y, X_test, y_test = load_digits_split(random_state=random_state)
    rng = np.random.default_rng([random_state, 1])
    X = np.repeat(X, n_copies, axis=0)
    y = np.repeat(y, n_copies)
    X = X + jitter * rng.standard_normal(X.shape)
    flipped = rng.random(len(y)) < label_noise
    y = y.copy()
    y[flipped] = (y[flipped] + rng.integers(1, 10, int(flipped.sum()))) % 10
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order].astype(np.int64), X_test, y_test
