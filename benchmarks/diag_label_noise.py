"""Issue 12 diagnostic: how the model's mistakes differ between hard rows and wrong labels.

Run: python benchmarks/diag_label_noise.py
After each of 3 full epochs (the demo's model, Adam 1e-2, batch 128, seed 0), prints the
share of training rows that the model misclassifies and that it contradicts confidently
(probability of the given label p_y below 0.05, 0.1, 0.2), on MNIST-1D and on
noisy_digits; for noisy_digits also the recall and precision of "misclassified" against
the flipped labels (rebuilt from make_noisy_digits' random stream).
"""

import numpy as np
import torch
import torch.nn.functional as F

from graft_select.datasets import load_digits_split
from graft_select.demo.harness import DemoConfig, load_data
from graft_select.demo.models import build_model


def flipped_labels(n_copies=6, label_noise=0.15):
    """The rows make_noisy_digits(random_state=0) relabelled, in its output order."""
    X, y, _, _ = load_digits_split(random_state=0)
    rng = np.random.default_rng([0, 1])
    y = np.repeat(y, n_copies)
    rng.standard_normal((len(y), X.shape[1]))
    flipped = rng.random(len(y)) < label_noise
    rng.integers(1, 10, int(flipped.sum()))
    return flipped[rng.permutation(len(y))]


def main():
    torch.set_num_threads(1)
    for dataset in ("mnist1d", "noisy_digits"):
        X, y, _, _ = load_data(DemoConfig(dataset=dataset))
        X, y = torch.as_tensor(X), torch.as_tensor(y)
        flipped = torch.as_tensor(flipped_labels()) if dataset == "noisy_digits" else None
        torch.manual_seed(0)
        model = build_model(dataset, X.shape[1], 10)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        n, generator = len(y), torch.Generator().manual_seed(0)
        rows = torch.arange(n)
        for epoch in range(3):
            for batch in torch.randperm(n, generator=generator).split(128):
                loss = F.cross_entropy(model(X[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                p = torch.softmax(model(X), 1)
            p_y = p[rows, y]
            others = p.clone()
            others[rows, y] = 0
            wrong = others.max(1).values > p_y
            line = (f"{dataset} epoch {epoch}: misclassified {wrong.float().mean():.3f}, "
                    + ", ".join(f"p_y<{t} {(p_y < t).float().mean():.3f}"
                                for t in (0.05, 0.1, 0.2)))
            if flipped is not None:
                quantiles = np.quantile(p_y[flipped].numpy(), [0.5, 0.9, 0.99]).round(3)
                line += (f" | flipped {flipped.float().mean():.3f}, recall "
                         f"{wrong[flipped].float().mean():.3f}, precision "
                         f"{flipped[wrong].float().mean():.3f}, p_y of flipped rows "
                         f"(median, q90, q99) {quantiles}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
