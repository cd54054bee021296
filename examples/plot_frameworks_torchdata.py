"""
Frameworks (4/4): torchdata's StatefulDataLoader, with workers
==============================================================

``StatefulDataLoader`` saves the batch sampler's state with its own. With
workers it takes that state when it hands a batch's indices to a worker, ahead
of training; GraftBatchSampler's iterator state keeps its feedback live until
the state is saved, so a state saved mid-epoch holds every observation made
before it, and resuming reproduces the remaining batches and the next epoch
exactly (``num_workers=0`` or more).
"""

import io

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from graft_select.sampler import GraftBatchSampler

torch.set_num_threads(1)
X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
y = torch.tensor(y)


class Digits(Dataset):
    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return X[i], y[i]


def train(batches, sampler, model, optimizer, limit=None):
    """Train on ``batches``; return a fingerprint (pixel sum) of each batch trained."""
    seen = []
    for x, target in batches:
        loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sampler.observe(targets=target)
        seen.append(round(float(x.sum()), 3))
        if len(seen) == limit:
            break
    return seen


def make(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    sampler = GraftBatchSampler(len(X), batch_size=64, fraction=0.3, seed=0,
                                warm_start_epochs=1)  # a short example: one full epoch
    sampler.watch(model)
    loader = StatefulDataLoader(Digits(), batch_sampler=sampler, num_workers=2)
    return model, sampler, loader


if __name__ == "__main__":  # worker processes import this file
    model, sampler, loader = make()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(loader, sampler, model, optimizer)  # epoch 0: warm start on all samples
    sampler.set_epoch(1)
    iterator = iter(loader)
    before = train(iterator, sampler, model, optimizer, limit=4)
    buffer = io.BytesIO()  # a checkpoint in the middle of epoch 1
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "loader": loader.state_dict()}, buffer)
    after = train(iterator, sampler, model, optimizer)  # the rest of epoch 1
    sampler.set_epoch(2)
    after += train(loader, sampler, model, optimizer)

    model2, sampler2, loader2 = make(seed=1)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    loader2.load_state_dict(saved["loader"])
    resumed = train(loader2, sampler2, model2, optimizer2)  # resumes mid-epoch 1
    sampler2.set_epoch(2)
    resumed += train(loader2, sampler2, model2, optimizer2)
    print(f"{len(before)} batches before the save, {len(after)} after it")
    print("the resumed run trains the same batches:", resumed == after)
