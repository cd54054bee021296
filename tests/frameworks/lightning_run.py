"""A Lightning run with GraftCallback, driven by tests/test_frameworks.py in a subprocess.

usage: lightning_run.py MODE OUT_DIR [EXTRA]
  MODE: single (1 process), ddp (2 processes, use_distributed_sampler=False),
        ddp-default (2 processes, use_distributed_sampler=True: must fail at setup),
        resume (fit 2 epochs with a checkpoint, then a new Trainer resumes it to 4)
Writes OUT_DIR/<tag>-rank<r>.pt with per-epoch plans, batch counts and the schedule.
"""

import os
import sys

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from graft_select.lightning import GraftCallback
from graft_select.sampler import GraftBatchSampler

torch.set_num_threads(1)


class Classifier(pl.LightningModule):
    """An ordinary module: forward returns logits only."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        total = self.trainer.estimated_stepping_batches
        self.planned_steps = total
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]


class Record(pl.Callback):
    """Per epoch: the sampler's plan, this rank's batches and indices trained."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epochs = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        entry = self.epochs.setdefault(trainer.current_epoch, {"batches": 0, "samples": 0})
        entry["batches"] += 1
        entry["samples"] += len(batch[1])
        entry["num_training_batches"] = trainer.num_training_batches

    def on_train_epoch_end(self, trainer, pl_module):
        entry = self.epochs.setdefault(trainer.current_epoch, {"batches": 0, "samples": 0})
        entry["plan"] = self.sampler._plan().tolist()
        entry["shard"] = sorted(self.sampler._shard(self.sampler._plan()).tolist())
        report = self.sampler.last_refit
        entry["gradient_error"] = None if report is None else report.gradient_error


class StopAfter(pl.Callback):
    """Stop a run after ``epochs`` epochs (the schedule is still planned for max_epochs)."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def make_run(devices, max_epochs, use_distributed_sampler=False, extra=(), **trainer_kwargs):
    X, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y))
    # Built before the process group exists: the sampler reads the world size lazily.
    sampler = GraftBatchSampler(len(data), batch_size=32, fraction=0.3, warm_start_epochs=1,
                                seed=0)
    loader = DataLoader(data, batch_sampler=sampler)
    record = Record(sampler)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        max_epochs=max_epochs, callbacks=[GraftCallback(sampler), record, *extra], logger=False,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
        use_distributed_sampler=use_distributed_sampler, **trainer_kwargs)
    return trainer, loader, record


def save(out, tag, trainer, module, record):
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    torch.save({"epochs": record.epochs, "global_step": trainer.global_step,
                "planned_steps": module.planned_steps,
                "final_lr": scheduler.get_last_lr()[0]},
               os.path.join(out, f"{tag}-rank{trainer.global_rank}.pt"))


def main(mode, out):
    pl.seed_everything(0, verbose=False)
    if mode in ("single", "ddp", "ddp-default"):
        devices = 1 if mode == "single" else 2
        trainer, loader, record = make_run(devices, 4,
                                           use_distributed_sampler=mode == "ddp-default",
                                           enable_checkpointing=False)
        module = Classifier()
        trainer.fit(module, loader)
        save(out, mode, trainer, module, record)
    elif mode == "resume":
        trainer, loader, record = make_run(1, 4, extra=[StopAfter(2)], enable_checkpointing=False)
        module = Classifier()
        trainer.fit(module, loader)
        path = os.path.join(out, "two.ckpt")
        trainer.save_checkpoint(path)
        pl.seed_everything(0, verbose=False)
        trainer, loader, record = make_run(1, 4, enable_checkpointing=False)
        module = Classifier()
        trainer.fit(module, loader, ckpt_path=path)
        save(out, "resume", trainer, module, record)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
