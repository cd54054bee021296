"""An accelerate run with GraftBatchSampler, driven by tests/test_frameworks.py.

usage (2 processes): python -m torch.distributed.run --standalone --nproc_per_node 2 \
                         accelerate_run.py MODE OUT
usage (1 process):   python accelerate_run.py MODE OUT
  MODE: prepare (the loader goes through accelerator.prepare: must raise on every rank)
        helper  (graft_select.accelerate.prepare_data_loader, 3 epochs)
        single-epoch (1 process: a direct sampler.set_epoch(3) and a mid-epoch resume)
        resume-full (4 epochs, accelerator.save_state() after 3 batches of epoch 2)
        resume-load (accelerator.load_state() of resume-full's checkpoint, to the end)
Writes OUT/<mode>-rank<r>.pt.
"""

import os
import sys

import torch
from accelerate import Accelerator
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from graft_select.accelerate import prepare_data_loader
from graft_select.sampler import GraftBatchSampler

torch.set_num_threads(1)


def setup():
    accelerator = Accelerator(cpu=True)
    X, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    sampler = GraftBatchSampler(len(data), batch_size=32, fraction=0.3, seed=0,
                                warm_start_epochs=1)
    sampler.watch(model)  # an unmodified model: its last Linear is hooked
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return accelerator, data, model, sampler, optimizer


def train_epoch(accelerator, model, optimizer, sampler, loader):
    trained = []
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
        sampler.observe(targets=y)
        trained.append(len(y))
    return trained


def resume_run(accelerator, data, model, optimizer, mode, checkpoint, save_at=(2, 3)):
    """Per epoch, the dataset indices this rank trained, batch by batch, with a sampler
    that refits every epoch; resume-full saves the state at ``save_at`` (epoch, batches trained),
    resume-load starts from that state."""
    sampler = GraftBatchSampler(len(data), batch_size=32, fraction=0.3, seed=0,
                                warm_start_epochs=1, refit_every=1)
    sampler.watch(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    data = TensorDataset(*data.tensors, torch.arange(len(data)))
    loader = prepare_data_loader(accelerator, DataLoader(data, batch_sampler=sampler))
    start = 0
    if mode == "resume-load":
        accelerator.load_state(checkpoint)
        start = sampler.epoch
    trained = {}
    for epoch in range(start, 4):
        loader.set_epoch(epoch)
        for x, y, index in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            sampler.observe(targets=y)
            trained.setdefault(epoch, []).append(index.tolist())
            if mode == "resume-full" and (epoch, len(trained[epoch])) == save_at:
                accelerator.save_state(checkpoint)
    return trained


def main(mode, out):
    accelerator, data, model, sampler, optimizer = setup()
    rank = accelerator.process_index
    result = {"world": accelerator.num_processes}
    if mode == "prepare":
        model, optimizer, loader = accelerator.prepare(
            model, optimizer, DataLoader(data, batch_sampler=sampler))
        try:
            next(iter(loader))
            result["error"] = None
        except TypeError as exc:
            result["error"] = str(exc)
    elif mode == "helper":
        model, optimizer = accelerator.prepare(model, optimizer)
        loader = prepare_data_loader(accelerator, DataLoader(data, batch_sampler=sampler))
        result["epochs"] = {}
        for epoch in range(3):
            loader.set_epoch(epoch)
            trained = train_epoch(accelerator, model, optimizer, sampler, loader)
            plan = sampler._plan()
            result["epochs"][epoch] = {
                "batches": len(trained), "samples": sum(trained), "len": len(loader),
                "plan": plan.tolist(), "shard": sampler._shard(plan).tolist(),
                "gradient_error": None if sampler.last_refit is None
                else sampler.last_refit.gradient_error}
    elif mode == "single-epoch":
        model, optimizer = accelerator.prepare(model, optimizer)
        loader = prepare_data_loader(accelerator, DataLoader(data, batch_sampler=sampler))
        sampler.observe(torch.arange(len(data)), embeddings=torch.randn(len(data), 4))
        sampler.set_epoch(3)
        expected = [b.tolist() for b in torch.split(sampler._plan(), 32)]
        batches = []
        for x, _ in loader:
            batches.append(len(x))
            if len(batches) == 5:
                break
        state = sampler.state_dict()
        fresh = GraftBatchSampler(len(data), batch_size=32, fraction=0.3, seed=0,
                                warm_start_epochs=1)
        fresh.load_state_dict(state)
        fresh_loader = prepare_data_loader(accelerator, DataLoader(data, batch_sampler=fresh))
        fresh_loader.set_epoch(3)  # the same epoch keeps the resume position
        rest, match = [], True
        for (x, _), index in zip(fresh_loader, expected[5:]):
            rest.append(len(x))
            match = match and torch.equal(x, data.tensors[0][index])
        result.update(epoch=sampler.epoch, batches=batches, rest=rest,
                      expected=[len(b) for b in expected], position=state["batches_yielded"],
                      rest_match=match)
    elif mode in ("resume-full", "resume-load"):
        result["trained"] = resume_run(accelerator, data, model, optimizer, mode,
                                       os.path.join(out, "checkpoint"))
    torch.save(result, os.path.join(out, f"{mode}-rank{rank}.pt"))
    # every rank done before any tears its process group down: a rank that destroys
    # it while the other still talks to it can abort the other at exit ("terminate
    # called without an active exception", seen once under load in a full test run)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
