"""Lightning and accelerate runs for tests/test_reliability_integrations.py (issue 25).

usage: reliability_run.py MODE OUT_DIR
  MODE: lightning (the Lightning cases), accelerate (the accelerate cases, 1 process)
Writes OUT_DIR/<mode>.pt: one entry per case, each holding what the case observed or
the error it raised (so that one broken case does not hide the others).
"""

import os
import sys
import traceback
import warnings

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from graft_select.sampler import GraftBatchSampler

torch.set_num_threads(1)
N = 512


def dataset():
    X, y = load_digits(return_X_y=True)
    return TensorDataset(torch.tensor(X[:N] / 16.0, dtype=torch.float32), torch.tensor(y[:N]))


def run_case(results, name, function, *args):
    """Run one case; keep its result, the warnings it raised, or its error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            results[name] = {"result": function(*args)}
        except Exception as exc:  # the test reads the error
            results[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()}
    results[name]["warnings"] = [str(w.message) for w in caught]


# ----------------------------------------------------------------------- Lightning


def lightning_cases(out):
    import lightning.pytorch as pl

    from graft_select.lightning import GraftCallback

    class Classifier(pl.LightningModule):
        def __init__(self, loader=None):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
            self.loader = loader  # a callable: epoch -> DataLoader (train_dataloader())

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            self.planned_steps = self.trainer.estimated_stepping_batches
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return self.loader(self.trainer.current_epoch)

    class Count(pl.Callback):
        def __init__(self):
            self.samples = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            epoch = trainer.current_epoch
            self.samples[epoch] = self.samples.get(epoch, 0) + len(batch[1])

    def trainer(callbacks, max_epochs, **kwargs):
        return pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs,
                          callbacks=callbacks, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False,
                          num_sanity_val_steps=0, **kwargs)

    data = dataset()

    def sampler(**kwargs):
        return GraftBatchSampler(N, **{"batch_size": 32, "fraction": 0.3,
                                       "warm_start_epochs": 1, "seed": 0, **kwargs})

    def no_callback():  # finding 6
        count = Count()
        trainer([count], 3).fit(Classifier(), DataLoader(data, batch_sampler=sampler()))
        return count.samples

    class Observed(pl.Callback):
        """The samples observed by the end of epoch 0."""

        def __init__(self, sampler):
            self.sampler, self.rows = sampler, None

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                seen = self.sampler.state_dict()["last_seen"] >= 0
                self.rows = set(torch.nonzero(seen).flatten().tolist())

    def partial_epoch():  # finding 7
        s = sampler()
        observed = Observed(s)
        trainer([GraftCallback(s), observed], 2, limit_train_batches=0.5).fit(
            Classifier(), DataLoader(data, batch_sampler=s))
        report = s.last_refit
        subset = set(s._planner.subset.tolist())
        return {"n_unobserved": getattr(report, "n_unobserved", None),
                "n_refreshed": report.n_refreshed, "n_selected": report.n_selected,
                "n_observed": len(observed.rows),
                "selected_observed": len(observed.rows & subset)}

    def drop_last():  # finding 8
        s = sampler(drop_last=True)
        module = Classifier()
        fit = trainer([GraftCallback(s)], 4)
        fit.fit(module, DataLoader(data, batch_sampler=s))
        return {"planned": module.planned_steps, "steps": fit.global_step,
                "expected": s.total_batches(4)}

    class Lengths(pl.Callback):
        """Per epoch the sampler's batches (after GraftCallback set the epoch) and the
        batches Lightning ran."""

        def __init__(self, sampler):
            self.sampler, self.lengths, self.ran = sampler, {}, {}

        def on_train_epoch_start(self, trainer, pl_module):
            self.lengths[trainer.current_epoch] = len(self.sampler)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            epoch = trainer.current_epoch
            self.ran[epoch] = self.ran.get(epoch, 0) + 1

    def limited(limit):  # sampler review, finding 9
        s = sampler()
        lengths, module = Lengths(s), Classifier()
        fit = trainer([GraftCallback(s), lengths], 4, limit_train_batches=limit)
        fit.fit(module, DataLoader(data, batch_sampler=s))
        return {"lengths": lengths.lengths, "ran": lengths.ran,
                "planned": module.planned_steps, "steps": fit.global_step}

    def resume_limited():  # sampler re-review, finding 6
        path = os.path.join(out, "limited.ckpt")
        first = sampler()
        fit = trainer([GraftCallback(first)], 2, limit_train_batches=0.5)
        fit.fit(Classifier(), DataLoader(data, batch_sampler=first))
        fit.save_checkpoint(path)  # after epoch 1's last (capped) batch
        again = sampler()
        lengths, module = Lengths(again), Classifier()
        fit = trainer([GraftCallback(again), lengths], 4, limit_train_batches=0.5)
        fit.fit(module, DataLoader(data, batch_sampler=again),
                ckpt_path=path)
        return {"lengths": lengths.lengths, "ran": lengths.ran, "steps": fit.global_step}

    def plain_loader():  # finding 34
        trainer([GraftCallback(sampler())], 1).fit(
            Classifier(), DataLoader(data, batch_size=32, shuffle=True))

    def other_sampler():  # finding 35
        trainer([GraftCallback(sampler())], 1).fit(
            Classifier(), DataLoader(data, batch_sampler=sampler(seed=1)))

    def reloaded():  # finding 36
        first = sampler()

        def loader(epoch):
            return DataLoader(data, batch_sampler=first if epoch == 0 else sampler())

        trainer([GraftCallback(first)], 2, reload_dataloaders_every_n_epochs=1).fit(
            Classifier(loader))

    def resumed_without_state():  # finding 37
        path = os.path.join(out, "plain.ckpt")
        fit = trainer([], 2)
        fit.fit(Classifier(), DataLoader(data, batch_sampler=sampler()))
        fit.save_checkpoint(path)
        s = sampler()
        trainer([GraftCallback(s)], 4).fit(
            Classifier(), DataLoader(data, batch_sampler=s), ckpt_path=path)

    class Trained(pl.Callback):
        """Per Lightning epoch, the batches trained: (labels, row sums) of each, in order."""

        def __init__(self):
            self.batches = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            x, y = batch
            self.batches.setdefault(trainer.current_epoch, []).append(
                (y.tolist(), x.sum(1).tolist()))

    def resume_max_steps():  # a run stopped by max_steps mid-epoch, then resumed
        whole, plain = Trained(), sampler()
        trainer([GraftCallback(plain), whole], 3).fit(
            Classifier(), DataLoader(data, batch_sampler=plain))
        path = os.path.join(out, "max_steps.ckpt")
        first, stopped = sampler(), Trained()
        fit = trainer([GraftCallback(first), stopped], 3, max_steps=5)
        fit.fit(Classifier(), DataLoader(data, batch_sampler=first))
        fit.save_checkpoint(path)  # Lightning counts the stopped epoch as finished
        again, resumed = sampler(), Trained()
        lengths = Lengths(again)
        fit = trainer([GraftCallback(again), resumed, lengths], 3)
        fit.fit(Classifier(), DataLoader(data, batch_sampler=again), ckpt_path=path)
        return {"whole": whole.batches, "stopped": stopped.batches,
                "resumed": resumed.batches, "lengths": lengths.lengths,
                "steps": fit.global_step}

    results = {}
    for name, case in [("no_callback", no_callback), ("partial_epoch", partial_epoch),
                       ("drop_last", drop_last), ("plain_loader", plain_loader),
                       ("other_sampler", other_sampler), ("reloaded", reloaded),
                       ("resumed_without_state", resumed_without_state),
                       ("limited_half", lambda: limited(0.5)),
                       ("limited_two", lambda: limited(2)),
                       ("resume_limited", resume_limited),
                       ("resume_max_steps", resume_max_steps)]:
        pl.seed_everything(0, verbose=False)
        run_case(results, name, case)
    return results


# ---------------------------------------------------------------------- accelerate


def accelerate_cases(out):
    from accelerate import Accelerator
    from accelerate.data_loader import skip_first_batches

    from graft_select.accelerate import GraftDataLoader, prepare_data_loader

    data = dataset()

    def setup(steps=4, **kwargs):
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=steps)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = accelerator.prepare(model, optimizer)
        sampler = GraftBatchSampler(N, **{"batch_size": 32, "fraction": 0.3,
                                          "warm_start_epochs": 1, "seed": 0, **kwargs})
        sampler.watch(model)
        loader = prepare_data_loader(accelerator, DataLoader(data, batch_sampler=sampler))
        return accelerator, model, optimizer, sampler, loader

    def train(accelerator, model, optimizer, sampler, loader, stop=None):
        """Train on the loader's batches (all, or ``stop``); return them and the steps."""
        batches, steps = [], 0
        for x, y in loader:
            with accelerator.accumulate(model):
                accelerator.backward(nn.functional.cross_entropy(model(x), y))
                optimizer.step()
                optimizer.zero_grad()
            steps += accelerator.sync_gradients
            sampler.observe(targets=y)
            batches.append(x.sum(dim=1).tolist())  # identifies the rows
            if stop is not None and len(batches) == stop:
                break
        return batches, steps

    def accumulation():  # finding 9: 5 batches an epoch, 4 accumulated per step
        accelerator, model, optimizer, _, _ = setup()
        sampler_160 = GraftBatchSampler(160, 32, fraction=1.0, seed=0)
        sampler_160.watch(model)
        loader = prepare_data_loader(accelerator, DataLoader(data, batch_sampler=sampler_160))
        steps = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            steps.append(train(accelerator, model, optimizer, sampler_160, loader)[1])
        return {"steps": steps, "batches": len(loader)}

    def save_and_load():  # findings 10 and 49
        accelerator, model, optimizer, sampler, loader = setup()
        train(accelerator, model, optimizer, sampler, loader)
        loader.set_epoch(1)
        rest = [[float(v) for v in data.tensors[0][b].sum(dim=1)]
                for b in torch.split(sampler._plan(), 32)][2:]
        train(accelerator, model, optimizer, sampler, loader, stop=2)
        path = os.path.join(out, "state")
        accelerator.save_state(path)
        saved = sampler.state_dict()
        accelerator, model, optimizer, fresh, loader = setup()
        accelerator.load_state(path)
        loaded = fresh.state_dict()
        resumed = train(accelerator, model, optimizer, fresh, loader)[0]
        # the documented alternative: the loader registered by hand
        accelerator.register_for_checkpointing(GraftDataLoader(loader.dataloader, "cpu"))
        return {"epoch": fresh.epoch, "rest": rest, "resumed": resumed,
                "same_feedback": all(torch.equal(saved["store"][k], loaded["store"][k])
                                     for k in saved["store"]) and bool(saved["store"]),
                "same_last_seen": torch.equal(saved["last_seen"], loaded["last_seen"])}

    def skip_batches():  # findings 25-26: skip_first_batches, with and without load_state
        # without gradient accumulation: with it, skip_first_batches raises (its plain
        # DataLoader drops the end-of-pass mark that steps the optimizer)
        accelerator, model, optimizer, sampler, loader = setup(steps=1)
        train(accelerator, model, optimizer, sampler, loader)
        after_warm_start = sampler.state_dict()
        loader.set_epoch(1)
        expected = [[float(v) for v in data.tensors[0][b].sum(dim=1)]
                    for b in torch.split(sampler._plan(), 32)]
        train(accelerator, model, optimizer, sampler, loader, stop=2)
        path = os.path.join(out, "skip-state")
        accelerator.save_state(path)
        # accelerate's standard mid-epoch resume: load_state, then skip_first_batches
        accelerator, model, optimizer, fresh, loader = setup(steps=1)
        accelerator.load_state(path)
        skipping = skip_first_batches(loader, 2)
        after_load = train(accelerator, model, optimizer, fresh, skipping)[0]
        # skip_first_batches alone (the sampler's position not restored)
        accelerator, model, optimizer, alone, loader = setup(steps=1)
        alone.load_state_dict(after_warm_start)
        alone.set_epoch(1)
        iterator = iter(skip_first_batches(loader, 2))
        x, y = next(iterator)
        model(x)
        alone.observe(targets=y)
        stamped = torch.nonzero(alone.state_dict()["last_seen"] == 1).flatten()
        third = torch.split(alone._plan(), 32)[2]
        return {"dataset": len(loader.dataset), "num_workers": loader.num_workers,
                "expected_rest": expected[2:], "after_load": after_load,
                "observed_third": sorted(stamped.tolist()) == sorted(third.tolist())}

    results = {}
    for name, case in [("accumulation", accumulation), ("save_and_load", save_and_load),
                       ("skip_batches", skip_batches)]:
        run_case(results, name, case)
    return results


def main(mode, out):
    cases = {"lightning": lightning_cases, "accelerate": accelerate_cases}[mode]
    torch.save(cases(out), os.path.join(out, f"{mode}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
