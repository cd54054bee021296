"""
Frameworks: Hugging Face Trainer
================================

A ``transformers.Trainer`` script gains GRAFT by changing three lines: import
:class:`graft_select.transformers.GraftTrainer`, build a
:class:`~graft_select.sampler.GraftBatchSampler` over the training set, and
replace ``Trainer(...)`` by ``GraftTrainer(..., sampler=sampler)``. The model,
the dataset, the collator and the ``TrainingArguments`` stay as they are.

The trainer plans the run from the sampler's uneven epochs (one warm-start
epoch on the full data, then 30% subsets), so the steps the Trainer plans are the
steps that run and the linear learning-rate schedule ends at 0; it hooks the
classifier head and records every training micro-batch once. The model here is a
2-layer BERT built from a config (no download), on synthetic sequences whose
label says whether token 1 occurs more often than token 2.
"""

import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
from transformers.utils import logging

from graft_select.sampler import GraftBatchSampler
from graft_select.transformers import GraftTrainer  # change 1 of 3

logging.set_verbosity_error()
torch.set_num_threads(1)


class Sequences(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 12, (n, 16), generator=generator)
        self.labels = ((self.ids == 1).sum(1) > (self.ids == 2).sum(1)).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


train, test = Sequences(1500, seed=0), Sequences(500, seed=1)
torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(
    vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=16))
args = TrainingArguments(tempfile.mkdtemp(), per_device_train_batch_size=32,
                         gradient_accumulation_steps=2, num_train_epochs=5,
                         learning_rate=1e-3, eval_strategy="epoch", report_to=[],
                         use_cpu=True, save_strategy="no", disable_tqdm=True,
                         logging_strategy="no")

sampler = GraftBatchSampler(train, batch_size=32, fraction=0.3,  # change 2 of 3
                            warm_start_epochs=1)
trainer = GraftTrainer(model=model, args=args, train_dataset=train,  # change 3 of 3
                       eval_dataset=test, sampler=sampler)           # (was Trainer)
output = trainer.train()

# %%
# Each epoch has its own length; the Trainer's bookkeeping follows it.
print("batches per epoch:", trainer.epoch_batches)
print(f"steps planned {trainer.state.max_steps}, run {output.global_step}, "
      f"state.epoch {trainer.state.epoch}, final learning rate "
      f"{trainer.lr_scheduler.get_last_lr()[0]}")
for entry in trainer.state.log_history:
    if "eval_loss" in entry:
        print(f"epoch {entry['epoch']:.0f}: eval loss {entry['eval_loss']:.3f}")
print(sampler.last_refit)
