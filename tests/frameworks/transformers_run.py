"""A GraftTrainer run on 2 processes, driven by tests/test_transformers.py.

usage: python -m torch.distributed.run --standalone --nproc_per_node 2 transformers_run.py OUT
Trains a 1-layer BERT built from a config for 3 epochs (gloo, CPU) and writes
OUT/rank<r>.pt: the epoch plans, the indices this rank trained in each epoch, the
steps run and planned, and the bytes the refits gathered.
"""

import sys

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

from graft_select.sampler import GraftBatchSampler
from graft_select.transformers import GraftTrainer

torch.set_num_threads(1)
N, LENGTH, BATCH = 150, 8, 8


class Sequences(torch.utils.data.Dataset):
    """Synthetic sequences; records the indices read in each epoch."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 6, (N, LENGTH), generator=generator)
        self.labels = ((self.ids == 1).sum(1) > (self.ids == 2).sum(1)).long()
        self.read = []

    def __len__(self):
        return N

    def __getitem__(self, i):
        self.read.append(int(i))
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class Record(TrainerCallback):
    """Keeps each epoch's plan and this rank's trained indices."""

    def __init__(self, sampler, data):
        self.sampler, self.data = sampler, data
        self.plans, self.shards = [], []

    def on_epoch_end(self, args, state, control, **kwargs):
        self.plans.append(sorted(self.sampler._plan().tolist()))
        self.shards.append(sorted(self.data.read))
        self.data.read.clear()


def main(out):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16,
                        max_position_embeddings=16)
    data = Sequences()
    sampler = GraftBatchSampler(data, batch_size=BATCH, fraction=0.3, seed=3,
                                warm_start_epochs=1, refit_every=1)
    args = TrainingArguments(out, per_device_train_batch_size=BATCH, num_train_epochs=3,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                             logging_strategy="no", gradient_accumulation_steps=2)
    record = Record(sampler, data)
    trainer = GraftTrainer(model=BertForSequenceClassification(config), args=args,
                           train_dataset=data, sampler=sampler, callbacks=[record])
    output = trainer.train()
    rank = trainer.args.process_index
    torch.save({"plans": record.plans, "shards": record.shards,
                "global_step": output.global_step, "max_steps": trainer.state.max_steps,
                "epoch_batches": trainer.epoch_batches, "world": trainer.args.world_size,
                "gathered_bytes": sampler.last_refit.gathered_bytes}, f"{out}/rank{rank}.pt")
    # every rank done before any tears its process group down: a rank that exits while
    # the other still talks to the group can abort the other at exit ("terminate called
    # without an active exception", seen under load in a full test run)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
