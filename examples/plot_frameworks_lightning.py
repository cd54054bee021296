"""
Frameworks (2/4): Lightning with GraftCallback
==============================================

Put the sampler in the training DataLoader and
:class:`graft_select.lightning.GraftCallback` in the Trainer's callbacks; the
LightningModule stays as it is. The callback sets the epoch before each epoch's
batches are drawn, records every training batch's feedback (it hooks the
module's last ``nn.Linear``), stores the sampler's state in checkpoints, and
keeps ``trainer.num_training_batches`` and
``trainer.estimated_stepping_batches`` equal to the real number of steps, warm
start included, so schedules such as ``OneCycleLR`` end where they should.

Under DDP the sampler shards each epoch over the ranks itself: pass
``use_distributed_sampler=False``. With the default the callback stops the run
at setup and says so. The sampler may be built before the process group
exists (in the module's ``__init__``, say): it reads the world size at the
first ``set_epoch``, ``len()`` or iteration.

.. code-block:: python

   trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp",
                        use_distributed_sampler=False, max_epochs=4,
                        callbacks=[GraftCallback(sampler)])

The single-process run below executes while the docs are built.
"""

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from graft_select.lightning import GraftCallback
from graft_select.sampler import GraftBatchSampler

torch.set_num_threads(1)
pl.seed_everything(0, verbose=False)


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        steps = self.trainer.estimated_stepping_batches  # real steps, warm start included
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.2, total_steps=steps)
        return [optimizer], [{"scheduler": schedule, "interval": "step"}]


X, y = load_digits(return_X_y=True)
data = TensorDataset(torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y))
sampler = GraftBatchSampler(len(data), batch_size=32, fraction=0.3, warm_start_epochs=1)
trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=4, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[GraftCallback(sampler)])
module = Classifier()
trainer.fit(module, DataLoader(data, batch_sampler=sampler))
print("planned steps:", trainer.estimated_stepping_batches, "taken:", trainer.global_step)
print(sampler.last_refit)
