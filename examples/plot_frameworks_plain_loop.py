"""
Frameworks (1/4): a plain PyTorch loop, unmodified model and dataset
=====================================================================

The smallest complete GRAFT training loop. The model's ``forward`` returns
logits only and the dataset yields ``(x, y)``: no indices, no embeddings.
``sampler.watch(model)`` hooks the model's last ``nn.Linear`` (its input is
the embedding, its output the logits), the sampler knows which indices it
handed out and in what order, and it was given the targets, so
``sampler.observe()`` needs no argument.

Rules that hold in every framework:

- every pass over the loader starts at batch 0, except the first one after
  ``load_state_dict``, which resumes where the state says;
- ``set_epoch`` with the epoch the sampler is at changes nothing;
- ``state_dict()`` counts the batches the loop observed (consumed), not the
  ones a prefetching DataLoader fetched ahead.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from graft_select.sampler import GraftBatchSampler

torch.set_num_threads(1)
torch.manual_seed(0)
X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
y = torch.tensor(y)

model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
sampler = GraftBatchSampler(len(X), batch_size=32, fraction=0.3, warm_start_epochs=1,
                            targets=y, seed=0)
sampler.watch(model)
loader = DataLoader(TensorDataset(X, y), batch_sampler=sampler)

print("batches per epoch, planned:", [sampler._epoch_batches(e) for e in range(4)],
      "total:", sampler.total_batches(4))
for epoch in range(4):
    sampler.set_epoch(epoch)
    steps = 0
    for x, target in loader:
        loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sampler.observe()  # indices, embeddings, logits and targets from the sampler
        steps += 1
    with torch.no_grad():
        accuracy = (model(X).argmax(1) == y).float().mean().item()
    print(f"epoch {epoch}: {steps} steps, training accuracy {accuracy:.3f}")
print(sampler.last_refit)

# %%
# Checkpoint and resume
# ---------------------
# ``state_dict()`` holds the epoch, the consumed batches, the subset and all
# recorded feedback. A new sampler loaded from it yields the remaining batches
# of the epoch, then continues as the original would.
sampler.set_epoch(4)
iterator = iter(sampler)
first_two = [next(iterator) for _ in range(2)]
state = sampler.state_dict()
resumed = GraftBatchSampler(len(X), batch_size=32, fraction=0.3, warm_start_epochs=1,
                            targets=y, seed=0)
resumed.load_state_dict(state)
print("resumes at batch", state["batches_yielded"], "- same remaining batches:",
      list(resumed) == list(iterator))
