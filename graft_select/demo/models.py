"""The demo's models: a 1-D CNN for MNIST-1D and an MLP for digits."""

import torch.nn.functional as F
from torch import nn

__all__ = ["CNN1D", "MLP", "build_model"]


class CNN1D(nn.Module):
    """1-D CNN for MNIST-1D: three strided convolutions, then a linear head.

    ``forward(x)`` returns logits of shape (n, n_classes); with ``return_embedding=True``
    it returns ``(logits, embedding)``, the embedding being the flattened last feature
    map that the head reads (shape (n, width * 5) for 40-point signals).
    """

    def __init__(self, length=40, n_classes=10, width=32):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv1d(1, width, 5, stride=2, padding=1),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
        ])
        for conv in self.convs:
            length = (length + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        self.head = nn.Linear(width * length, n_classes)

    def forward(self, x, return_embedding=False):
        h = x.unsqueeze(1)
        for conv in self.convs:
            h = F.relu(conv(h))
        embedding = h.flatten(1)
        logits = self.head(embedding)
        return (logits, embedding) if return_embedding else logits


class MLP(nn.Module):
    """Two hidden ReLU layers and a linear head; same ``forward`` contract as CNN1D."""

    def __init__(self, n_features=64, n_classes=10, hidden=128, width=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, width), nn.ReLU()
        )
        self.head = nn.Linear(width, n_classes)

    def forward(self, x, return_embedding=False):
        embedding = self.body(x)
        logits = self.head(embedding)
        return (logits, embedding) if return_embedding else logits


def build_model(dataset, n_features, n_classes):
    """The demo's model for ``dataset``: CNN1D for MNIST-1D, MLP for the digits sets."""
    if dataset == "mnist1d":
        return CNN1D(length=n_features, n_classes=n_classes)
    return MLP(n_features=n_features, n_classes=n_classes)
