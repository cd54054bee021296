"""The suite's tasks: data (generated or shipped with a package), model, loss, epochs.

Each task's data is generated once (seed 0); the run seeds vary the model's
initial weights, the batch orders and the selections. Test sets are clean
(no label noise) and, for the long-tail task, balanced over the classes.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits, make_classification, make_friedman1
from torch import nn

from graft_select.datasets import make_mnist1d
from graft_select.demo.models import CNN1D, MLP

__all__ = ["TASKS", "Task", "task_names"]


@dataclass(frozen=True)
class Task:
    """One task of the suite.

    ``make_data(n_train)`` returns ``(X_train, y_train, X_test, y_test)`` NumPy
    arrays; ``build_model(n_features, n_outputs)`` a module whose forward returns
    the outputs of its last ``nn.Linear``, named ``head`` (what
    ``GraftBatchSampler.watch`` hooks and the static use reads). ``loss`` is
    ``"cross_entropy"`` (score: test accuracy in %) or ``"mse"`` (score: test
    R^2 in %). ``augment(xb, generator)``, if set, transforms each training batch.
    """

    name: str
    kind: str
    make_data: object
    build_model: object
    n_train: int
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    loss: str = "cross_entropy"
    augment: object = None

    def n_outputs(self, y_train, y_test):
        """Number of model outputs: the classes, or 1 for a regression."""
        return 1 if self.loss == "mse" else int(max(y_train.max(), y_test.max())) + 1


def _standardized(X_train, X_test):
    mean, std = X_train.mean(0), X_train.std(0) + 1e-6
    return ((X_train - mean) / std).astype(np.float32), ((X_test - mean) / std).astype(np.float32)


def _flip_labels(y, rate, n_classes, rng):
    """``y`` with ``rate`` of the labels moved to another class, drawn uniformly."""
    y = y.copy()
    flipped = rng.choice(len(y), round(rate * len(y)), replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, n_classes, len(flipped))) % n_classes
    return y


def _classification(n_train, n_test=2000, **options):
    X, y = make_classification(n_samples=n_train + n_test, random_state=0, flip_y=0.0,
                               **options)
    X_train, X_test = _standardized(X[:n_train], X[n_train:])
    return X_train, y[:n_train].astype(np.int64), X_test, y[n_train:].astype(np.int64)


def redundant_data(n_train):
    """Clean, redundant: 6 near-duplicates (jitter 5% of a feature's spread) per sample."""
    copies = 6
    X_base, y_base, X_test, y_test = _classification(
        n_train // copies, n_features=20, n_informative=10, n_classes=5, class_sep=1.0)
    rng = np.random.default_rng(0)
    X = np.repeat(X_base, copies, axis=0)
    X = (X + 0.05 * rng.standard_normal(X.shape)).astype(np.float32)
    return X, np.repeat(y_base, copies), X_test, y_test


def noisy_data(rate):
    """5 classes, 20 features; ``rate`` of the training labels wrong (test labels clean)."""
    def make(n_train):
        X_train, y_train, X_test, y_test = _classification(
            n_train, n_features=20, n_informative=10, n_classes=5, class_sep=1.2)
        y_train = _flip_labels(y_train, rate, 5, np.random.default_rng(1))
        return X_train, y_train, X_test, y_test
    return make


def long_tail_data(n_train, n_classes=10, ratio=50.0):
    """10 classes whose training counts fall geometrically (largest / smallest = 50);
    balanced test set (200 per class), so its accuracy is the balanced accuracy."""
    shares = ratio ** (-np.arange(n_classes) / (n_classes - 1))
    counts = np.maximum(1, np.round(n_train * shares / shares.sum())).astype(int)
    per_class_test = 200
    pool = (counts[0] + per_class_test) * n_classes
    X, y = make_classification(n_samples=pool, n_features=20, n_informative=12,
                               n_classes=n_classes, class_sep=1.5, flip_y=0.0, random_state=0)
    train, test = [], []
    for c in range(n_classes):
        rows = np.flatnonzero(y == c)
        test.append(rows[:per_class_test])
        train.append(rows[per_class_test:per_class_test + counts[c]])
    train, test = np.concatenate(train), np.concatenate(test)
    train = np.random.default_rng(0).permutation(train)
    X_train, X_test = _standardized(X[train], X[test])
    return X_train, y[train].astype(np.int64), X_test, y[test].astype(np.int64)


def hard_data(n_train):
    """Hard but clean: 6 classes, 40 features, low class separation (0.5), no noise."""
    return _classification(n_train, n_features=40, n_informative=10, n_classes=6,
                           class_sep=0.5)


def sparse_data(n_train, n_test=2000, vocabulary=2000, n_classes=5, words=20):
    """Bag of words: 2,000-dimensional counts with 20 words per document (1% non-zero);
    each class has its own topic, mixed 15/85 with a shared background."""
    rng = np.random.default_rng(0)
    background = rng.dirichlet(np.full(vocabulary, 0.1))
    topics = rng.dirichlet(np.full(vocabulary, 0.05), size=n_classes)
    n = n_train + n_test
    y = rng.integers(0, n_classes, n)
    X = np.zeros((n, vocabulary), dtype=np.float32)
    for i in range(n):
        mix = 0.15 * topics[y[i]] + 0.85 * background
        X[i] = rng.multinomial(words, mix)
    X = np.log1p(X)
    X /= np.linalg.norm(X, axis=1, keepdims=True) + 1e-6
    X *= 5.0
    return X[:n_train], y[:n_train].astype(np.int64), X[n_train:], y[n_train:].astype(np.int64)


def signal_data(n_train):
    """MNIST-1D (graft_select.datasets), 40-point signals, 10 classes."""
    return make_mnist1d(round(n_train / 0.8), random_state=0)


def digit_images(n_train):
    """scikit-learn's 8x8 digits (1,797 images, 75% for training), scaled to [0, 1]."""
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = (X[order] / 16.0).astype(np.float32), y[order].astype(np.int64)
    n_train = min(n_train, round(0.75 * len(y)))
    return X[:n_train], y[:n_train], X[-450:], y[-450:]


def shift_and_noise(xb, generator):
    """Augment 8x8 images: shift each by up to one pixel (zero fill), add noise (sd 0.05)."""
    images = F.pad(xb.view(-1, 1, 8, 8), (1, 1, 1, 1))
    shifts = torch.randint(0, 3, (xb.shape[0], 2), generator=generator)
    out = torch.empty_like(xb.view(-1, 1, 8, 8))
    for dy in range(3):
        for dx in range(3):
            rows = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
            out[rows] = images[rows, :, dy:dy + 8, dx:dx + 8]
    noise = 0.05 * torch.randn(out.shape, generator=generator)
    return (out + noise).view(xb.shape[0], -1)


def regression_data(n_train, n_test=2000):
    """Friedman #1 (10 features, 5 informative), noise sd 1; targets standardized."""
    X, y = make_friedman1(n_samples=n_train + n_test, n_features=10, noise=1.0,
                          random_state=0)
    X_train, X_test = _standardized(X[:n_train], X[n_train:])
    mean, std = y[:n_train].mean(), y[:n_train].std()
    y = ((y - mean) / std).astype(np.float32)
    return X_train, y[:n_train], X_test, y[n_train:]


def sequence_data(n_train, n_test=1000, length=20, vocabulary=12, n_classes=4, noise=0.05):
    """Token sequences; class c plants its own 3-token motif at a random position
    among random tokens; 5% of the training labels wrong (test labels clean)."""
    rng = np.random.default_rng(0)
    motifs = rng.integers(0, vocabulary, size=(n_classes, 3))
    n = n_train + n_test
    X = rng.integers(0, vocabulary, size=(n, length))
    y = rng.integers(0, n_classes, n)
    starts = rng.integers(0, length - 3, n)
    for i in range(n):
        X[i, starts[i]:starts[i] + 3] = motifs[y[i]]
    y_train = _flip_labels(y[:n_train], noise, n_classes, np.random.default_rng(1))
    return X[:n_train], y_train.astype(np.int64), X[n_train:], y[n_train:].astype(np.int64)


class CNN2D(nn.Module):
    """Two 3x3 convolutions on 8x8 images (flattened input), then a linear head."""

    def __init__(self, n_outputs, width=16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.head = nn.Linear(2 * width * 16, n_outputs)

    def forward(self, x):
        h = F.relu(self.conv1(x.view(-1, 1, 8, 8)))
        h = F.relu(self.conv2(h))
        return self.head(h.flatten(1))


class SequenceTransformer(nn.Module):
    """Token and position embeddings, a 2-layer torch TransformerEncoder, mean pooling,
    a linear head."""

    def __init__(self, vocabulary, length, n_outputs, width=32):
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.positions = nn.Parameter(0.02 * torch.randn(length, width))
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=64, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x):
        h = self.encoder(self.tokens(x.long()) + self.positions)
        return self.head(h.mean(1))


def _mlp(n_features, n_outputs):
    return MLP(n_features=n_features, n_classes=n_outputs)


TASKS = {task.name: task for task in [
    Task("redundant", "clean, 6 near-duplicates per sample (MLP)", redundant_data, _mlp, 4800),
    Task("noise5", "5% wrong labels (MLP)", noisy_data(0.05), _mlp, 4000),
    Task("noise20", "20% wrong labels (MLP)", noisy_data(0.20), _mlp, 4000),
    Task("longtail", "long-tail classes, 50:1 (MLP, balanced test)", long_tail_data, _mlp, 4000),
    Task("hard", "hard but clean: class_sep 0.5 (MLP)", hard_data, _mlp, 4000),
    Task("sparse", "2,000-d sparse bag of words (MLP)", sparse_data, _mlp, 3000),
    Task("signals1d", "MNIST-1D signals (1-D CNN)", signal_data,
         lambda d, c: CNN1D(length=d, n_classes=c), 4000, lr=1e-2, batch_size=128),
    Task("images_aug", "8x8 digit images, shifts + noise (2-D CNN)", digit_images,
         lambda d, c: CNN2D(c), 1347, augment=shift_and_noise),
    Task("regression", "Friedman #1 regression, squared error (MLP)", regression_data,
         _mlp, 4000, loss="mse"),
    Task("transformer", "token sequences, 5% wrong labels (2-layer transformer)",
         sequence_data, lambda d, c: SequenceTransformer(12, d, c), 3000, lr=2e-3),
]}


def task_names():
    """The suite's task names, in running order."""
    return tuple(TASKS)
