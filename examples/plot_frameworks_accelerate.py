"""
Frameworks (3/4): accelerate
============================

GraftBatchSampler shards each epoch over the processes itself (it reads the
world size from ``torch.distributed``, which accelerate initialises), so its
DataLoader must not go through ``accelerator.prepare()``: accelerate would
shard it a second time and override its epochs. The sampler detects that and
raises with the fix. Prepare the model and the optimizer, and wrap the loader
with :func:`graft_select.accelerate.prepare_data_loader`, which moves batches
to the accelerator's device and leaves epochs and sharding to the sampler.

On two processes (``torchrun --nproc_per_node 2 train.py`` with
``Accelerator(cpu=True)`` on a CPU machine) the same script gives each process
a disjoint, equal share of one common plan: the sampler gathers every rank's
feedback before each refit. The single-process run below executes while the
docs are built.
"""

import torch
from accelerate import Accelerator
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from graft_select.accelerate import prepare_data_loader
from graft_select.sampler import GraftBatchSampler

torch.set_num_threads(1)
torch.manual_seed(0)
accelerator = Accelerator(cpu=True)
X, y = load_digits(return_X_y=True)
data = TensorDataset(torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y))

model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
# one warm-start epoch (the default is 3) keeps this 4-epoch example short
sampler = GraftBatchSampler(len(data), batch_size=32, fraction=0.3, seed=0, warm_start_epochs=1)
sampler.watch(model)  # hook before prepare(): the hook stays on the wrapped model's layer
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model, optimizer = accelerator.prepare(model, optimizer)
loader = prepare_data_loader(accelerator, DataLoader(data, batch_sampler=sampler))

for epoch in range(4):
    loader.set_epoch(epoch)
    for x, target in loader:
        loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
        sampler.observe(targets=target)
    print(f"epoch {epoch}: {len(loader)} batches on process {accelerator.process_index} "
          f"of {accelerator.num_processes}")
print(sampler.last_refit)
