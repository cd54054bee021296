"""One training run of the demo: model, loader, the training clock, the run's record.

The clock measures training only (test evaluation pauses it), twice: wall-clock and
this process's CPU time (``time.process_time``, every thread of the process). A run's
``cost_seconds`` is the smaller of the two on the CPU: a neighbour's load stretches
the wall-clock but not the CPU time, and a refit hidden behind training on a spare
core adds CPU time but not wall-clock. On a GPU it is the wall-clock, since the CPU
time does not count the GPU's work.
"""

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .config import SUBSET_STRATEGIES, DemoConfig, graft_samples, make_batch_sampler
from .models import build_model

__all__ = ["IndexedTensorDataset", "collate_batch", "cosine_rate", "pinned_threads",
           "train_run", "wants_feedback"]


class IndexedTensorDataset(Dataset):
    """``(x, y, index)`` per sample; ``__getitems__`` gathers a whole batch at once.

    Use with ``DataLoader(dataset, batch_sampler=..., collate_fn=collate_batch)``: the
    batch comes back as three tensors without per-sample collation, and the index
    tensor (on the host) is what ``GraftBatchSampler.observe`` needs.
    """

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return self.X.shape[0]

    def __getitem__(self, i):
        return self.X[i], self.y[i], i

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.X[index], self.y[index], index


def collate_batch(batch):
    """Identity collation for :class:`IndexedTensorDataset` batches."""
    return batch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _accuracy(model, X, y, batch_size=4096):
    model.eval()
    correct = 0
    for begin in range(0, X.shape[0], batch_size):
        logits = model(X[begin:begin + batch_size])
        correct += int((logits.argmax(1) == y[begin:begin + batch_size]).sum())
    model.train()
    return correct / X.shape[0]


def _scalar(value):
    return None if value is None else float(value)


def _refit_record(refit, epoch):
    return {
        "epoch": epoch,
        "fraction": _scalar(getattr(refit, "fraction", None)),  # the pool's share
        "epoch_size": getattr(refit, "epoch_size", None),
        "gradient_error": _scalar(getattr(refit, "gradient_error", None)),
        "seconds": _scalar(getattr(refit, "seconds", None)),
    }


def cosine_rate(lr, seen, planned):
    """Cosine decay from ``lr`` to 0 over a run's ``planned`` samples, at ``seen`` samples."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, seen / planned)))


def wants_feedback(strategy, epoch, config):
    """Whether the loop calls ``observe`` in ``epoch`` (see DemoConfig.feedback)."""
    if strategy not in SUBSET_STRATEGIES:
        return False
    if config.feedback == "every":
        return True
    following = epoch + 1
    return (config.warm_start_epochs <= following < config.epochs
            and (following - config.warm_start_epochs) % config.refit_every == 0)


class _Clock:
    """The training clock: wall-clock and process CPU time, paused for test evaluation."""

    def __init__(self, device):
        self.device, self.total, self.cpu_total = device, 0.0, 0.0
        self.started = self.cpu_started = None

    def start(self):
        _sync(self.device)
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def stop(self):
        _sync(self.device)
        self.total += time.perf_counter() - self.started
        self.cpu_total += time.process_time() - self.cpu_started

    @property
    def cost(self):
        """min(wall-clock, CPU time) on the CPU; the wall-clock on a GPU (module docstring)."""
        if self.device.type == "cuda":
            return self.total
        return min(self.total, self.cpu_total)


@contextmanager
def pinned_threads(threads):
    """Run the block with every thread pool at ``threads``, then restore them.

    torch's intra-op pool (``torch.set_num_threads``) and, through threadpoolctl,
    the BLAS and OpenMP pools that NumPy and SciPy use: two pools of all the cores
    each would spin on the same cores during a refit.
    """
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    with threadpool_limits(limits=threads):
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def train_run(strategy, fraction, seed, data, config, *, total_samples=None,
              sampler_factory=make_batch_sampler, progress=False, lines=None):
    """Train one model with one strategy; return the run's record (a JSON-ready dict).

    The learning rate follows ``lr * (1 + cos(pi * seen / planned)) / 2``, where
    ``seen`` counts the samples trained so far and ``planned`` is the run's total.
    Test accuracy is measured at the end of every epoch and, within long epochs,
    after every third of the training set; the clock stops while it is measured.
    ``progress`` shows a tqdm bar on stderr; ``lines`` (a
    :class:`~graft_select.demo.progress.ProgressLines`) prints plain progress lines.
    """
    run = _set_up_run(strategy, fraction, seed, data, config, total_samples=total_samples,
                      sampler_factory=sampler_factory, progress=progress)
    run.lines = lines
    # subset strategies and full data run a number of epochs, the others a sample budget
    fixed_epochs = strategy in ("full", *SUBSET_STRATEGIES) or (
        strategy == "infobatch" and total_samples is None)
    epoch = 0
    run.clock.start()
    while not (fixed_epochs and epoch >= config.epochs):
        run.sampler.set_epoch(epoch)
        if len(run.sampler) == 0:
            break
        run.train_epoch(epoch)
        run.close_epoch(epoch)
        epoch += 1
    run.clock.stop()
    run.bar.close()
    return run.record(n_epochs=epoch)


def _seeded_model(config, seed, n_features, n_classes, device):
    """The demo's model with the initial weights of ``seed``; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config.dataset, n_features, n_classes)
    return model.to(device)


def _set_up_run(strategy, fraction, seed, data, config, *, total_samples, sampler_factory,
                progress):
    """Model, optimizer, batch sampler, loader and progress bar of one run, before training."""
    device = torch.device(config.device)
    X_train, y_train, X_test, y_test = (torch.as_tensor(a, device=device) for a in data)
    n = X_train.shape[0]
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    model = _seeded_model(config, seed, X_train.shape[1], n_classes, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = sampler_factory(strategy, n, fraction=fraction, seed=seed, config=config,
                              total_samples=total_samples)
    planned = total_samples or getattr(sampler, "total_samples", None) or graft_samples(
        config, n, fraction)
    # DataLoader draws a base seed per epoch: from a private generator, not the global one
    loader = DataLoader(IndexedTensorDataset(X_train, y_train), batch_sampler=sampler,
                        collate_fn=collate_batch, generator=torch.Generator().manual_seed(seed))

    from tqdm.auto import tqdm

    label = strategy if fraction >= 1.0 else f"{strategy} {fraction:g}"
    bar = tqdm(total=planned, desc=f"{label} seed {seed}", file=sys.stderr,
               disable=not progress, leave=False)
    return _TrainingRun(
        strategy=strategy, fraction=fraction, seed=seed, config=config, device=device,
        model=model, optimizer=optimizer, sampler=sampler, loader=loader, planned=planned,
        X_test=X_test, y_test=y_test, weighted=hasattr(sampler, "loss_weights"),
        eval_every=max(1, math.ceil(n / 3)), bar=bar, clock=_Clock(device),
    )


@dataclass(eq=False)
class _TrainingRun:
    """One training run in progress: what it trains with and what it has recorded so far.

    ``weighted``: the sampler weights the per-sample losses and reads them back
    (InfoBatch). ``seen`` counts the samples trained so far, ``last_eval`` those at
    the last mid-epoch test evaluation, which happens every ``eval_every`` samples.
    """

    strategy: str
    fraction: float
    seed: int
    config: DemoConfig
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sampler: object
    loader: DataLoader
    planned: int
    X_test: torch.Tensor
    y_test: torch.Tensor
    weighted: bool
    eval_every: int
    bar: object
    clock: _Clock
    seen: int = 0
    last_eval: int = 0
    feedback_seconds: float = 0.0
    curve: list = field(default_factory=list)
    refits: list = field(default_factory=list)
    last_refit: object = None
    lines: object = None

    def train_epoch(self, epoch):
        """Train on every batch the sampler gives in ``epoch``, evaluating every third."""
        feedback = wants_feedback(self.strategy, epoch, self.config)
        for xb, yb, index in self.loader:
            self._train_batch(xb, yb, index, feedback)
            self.seen += int(index.shape[0])
            self.bar.update(int(index.shape[0]))
            if self.seen - self.last_eval >= self.eval_every:
                self.evaluate(epoch, epoch_end=False)

    def _train_batch(self, xb, yb, index, feedback):
        """One optimizer step at the scheduled rate, then the sampler's feedback if due."""
        rate = cosine_rate(self.config.lr, self.seen, self.planned)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        logits, embedding = self.model(xb, return_embedding=True)
        if self.weighted:
            losses = F.cross_entropy(logits, yb, reduction="none")
            loss = (losses * self.sampler.loss_weights(index).to(losses.device)).mean()
        else:
            loss = F.cross_entropy(logits, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if feedback or self.weighted:
            start = time.perf_counter()
            if self.weighted:
                self.sampler.record_losses(index, losses.detach())
            else:
                self.sampler.observe(index, embeddings=embedding.detach(),
                                     logits=logits.detach(), targets=yb)
            _sync(self.device)
            self.feedback_seconds += time.perf_counter() - start

    def evaluate(self, epoch, epoch_end):
        """Add the test accuracy to the curve, with the training clock paused."""
        self.clock.stop()
        accuracy = _accuracy(self.model, self.X_test, self.y_test)
        self.curve.append({
            "epoch": epoch + 1, "epoch_end": epoch_end, "test_accuracy": accuracy,
            "wall_seconds": self.clock.total, "cpu_seconds": self.clock.cpu_total,
            "cost_seconds": self.clock.cost, "samples_seen": self.seen,
            "selection_seconds": float(getattr(self.sampler, "selection_seconds", 0.0)),
            "feedback_seconds": self.feedback_seconds,
        })
        self.bar.set_postfix(acc=f"{accuracy:.4f}")
        if self.lines is not None:
            self.lines.update(self.strategy, self.fraction, self.seed, epoch=epoch,
                              seen=self.seen, planned=self.planned, accuracy=accuracy)
        self.clock.start()
        self.last_eval = self.seen

    def close_epoch(self, epoch):
        """Record the sampler's refit if it made a new one; the curve gets the epoch's end."""
        refit = getattr(self.sampler, "last_refit", None)
        if refit is not None and refit is not self.last_refit:
            self.refits.append(_refit_record(refit, epoch))
            self.last_refit = refit
        if self.curve and self.curve[-1]["samples_seen"] == self.seen:
            self.curve[-1]["epoch_end"] = True  # just evaluated mid-epoch: no second time
        else:
            self.evaluate(epoch, epoch_end=True)

    def record(self, n_epochs):
        """The run's JSON-ready record: final figures, the curve and the refits."""
        last = self.curve[-1]
        return {
            "strategy": self.strategy, "fraction": self.fraction, "seed": self.seed,
            "test_accuracy": last["test_accuracy"], "wall_seconds": last["wall_seconds"],
            "cpu_seconds": last["cpu_seconds"], "cost_seconds": last["cost_seconds"],
            "selection_seconds": last["selection_seconds"],
            "feedback_seconds": last["feedback_seconds"], "samples_seen": self.seen,
            "planned_samples": int(self.planned), "n_epochs": n_epochs,
            "curve": self.curve, "refits": self.refits,
        }
