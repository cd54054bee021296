"""Training runs of the demo: one model, every strategy, every seed, one sample budget.

For every seed the same small torch model (same initial weights, same optimizer, batch
size and cosine learning-rate shape) is trained with each strategy. A strategy's
schedule decays over its own total number of samples, so a shorter run gets a
compressed schedule, not the truncated head of a long one.

Strategies at each ``fraction`` see the same number of samples (within one batch) as
GRAFT at that fraction, ``S = W n + (E - W) round(fraction n)``
(``W`` warm-start epochs on the ``n`` training samples, then subsets):

- ``"graft"``: :class:`~graft_select.sampler.GraftBatchSampler` with a GRAFT selector,
  fed back embeddings and logits;
- ``"uniform"``: the same sampler with a uniform selector;
- ``"budget"``: full data, shuffled, stopped after ``S`` samples;
- ``"rs2"``: RS2, rounds of ``round(fraction n)`` samples without replacement, ``S`` in all;
- ``"infobatch"``: InfoBatch stopped after ``S`` samples (pruning for the first
  ``delta`` of them);
- ``"budget_wall"``: full data stopped at the samples that GRAFT's wall-clock time of the
  same seed buys at the ``budget`` run's measured speed: the equal-time baseline.

The reference group (fraction 1.0) holds ``"full"`` (all ``E`` epochs), native
``"infobatch"`` (``E`` epochs; its budget is what it prunes) and ``"budget"`` at
that InfoBatch run's samples.

Within a seed the strategies run one after the other, and the seeds run one after the
other, so every seed's runs see the machine in about the same state; strategies are
compared within a seed.
"""

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .._validation import check_bool, check_int, check_option, check_real
from ..datasets import load_digits_split, make_mnist1d, make_noisy_digits
from .baselines import InfoBatchSampler, RS2BatchSampler, ShuffledBatchSampler
from .energy import Energy
from .models import build_model

__all__ = ["DemoConfig", "check_config", "cosine_rate", "graft_samples", "make_batch_sampler",
           "run_demo", "train_run"]

STRATEGIES = ("full", "budget", "rs2", "infobatch", "uniform", "graft", "budget_wall")
SUBSET_STRATEGIES = ("uniform", "graft")  # the ones GraftBatchSampler runs
DATASETS = ("mnist1d", "digits", "noisy_digits")
FEEDBACK = ("refit", "every")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo; :meth:`quick_config` gives the CI-sized variant.

    ``seeds`` are the seeds themselves (model initialisation, batch order, selection);
    the dataset is generated once with seed 0. ``n_samples`` is the number of MNIST-1D
    signals generated (train and test, 80/20) and must stay None for the digits sets.

    The GRAFT settings: ``refit_every``, ``warm_start_epochs``, ``selection_size`` (rows
    per selection chunk), ``uniform_share``, ``basis``, ``n_components``,
    ``refresh_share`` and ``label_noise_guard`` go to GraftBatchSampler and its
    GraftSelector (the ``uniform`` strategy runs without the guard: it is the plain
    uniform-subset baseline). ``feedback``:
    ``"refit"`` calls ``observe`` only in the epochs whose feedback the next refit
    reads (the last epoch before each refit), ``"every"`` in every epoch. Both give the
    same subsets, since the subset is fixed between refits and the last observation
    of a sample wins; ``"refit"`` costs ``refit_every`` times less.
    """

    dataset: str = "mnist1d"
    fractions: tuple = (0.1, 0.3)
    seeds: tuple = (0, 1, 2, 3, 4)
    epochs: int = 20
    refit_every: int = 5
    warm_start_epochs: int = 3
    batch_size: int = 128
    selection_size: int | None = 128
    uniform_share: float = 0.0
    basis: str = "gradients"
    n_components: int | None = None
    refresh_share: float = 0.0
    label_noise_guard: bool = True
    feedback: str = "refit"
    lr: float = 1e-2
    n_samples: int | None = None
    strategies: tuple = STRATEGIES
    device: str = "cpu"
    threads: int | None = None
    country_iso_code: str = "USA"
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides):
        """Small data, few epochs, one seed, one fraction: well under a minute on 2 cores."""
        settings = dict(
            fractions=(0.3,), seeds=(0,), epochs=3, refit_every=1, warm_start_epochs=1,
            n_samples=3000, quick=True,
        )
        if overrides.get("dataset", "mnist1d") != "mnist1d":
            settings["n_samples"] = None
        settings.update(overrides)
        return cls(**settings)


# ------------------------------------------------------------------ data and samplers


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


def graft_samples(config, n_samples, fraction):
    """Samples GRAFT sees at ``fraction``: warm-start epochs in full, then subsets."""
    warm = min(config.warm_start_epochs, config.epochs)
    if fraction >= 1.0:
        return config.epochs * n_samples
    return warm * n_samples + (config.epochs - warm) * max(1, round(fraction * n_samples))


def make_batch_sampler(strategy, n_samples, *, fraction, seed, config, total_samples=None):
    """Build the batch sampler of one strategy.

    ``total_samples`` is the run's sample budget for ``"budget"``, ``"budget_wall"``,
    ``"rs2"`` and ``"infobatch"`` (None for native InfoBatch over ``config.epochs``).
    """
    batch_size = config.batch_size
    if strategy == "full":
        return ShuffledBatchSampler(n_samples, batch_size, seed=seed, epochs=config.epochs)
    if strategy in ("budget", "budget_wall"):
        return ShuffledBatchSampler(n_samples, batch_size, seed=seed,
                                    total_samples=total_samples)
    if strategy == "rs2":
        return RS2BatchSampler(n_samples, batch_size, fraction=fraction,
                               total_samples=total_samples, seed=seed)
    if strategy == "infobatch":
        if total_samples is None:
            return InfoBatchSampler(n_samples, batch_size, epochs=config.epochs, seed=seed)
        return InfoBatchSampler(n_samples, batch_size, total_samples=total_samples, seed=seed)
    try:
        from ..sampler import GraftBatchSampler
        from ..selector import GraftSelector
    except ImportError as exc:
        raise ImportError(
            f"The {strategy!r} strategy needs graft_select.sampler.GraftBatchSampler, which "
            f"could not be imported ({exc}); run the other strategies only or install a "
            f"complete graft-select."
        ) from exc
    if strategy == "uniform":
        selector = GraftSelector(fraction, strategy="uniform", random_state=seed)
    else:
        selector = GraftSelector(fraction, basis=config.basis, n_components=config.n_components,
                                 uniform_share=config.uniform_share, random_state=seed)
    return GraftBatchSampler(
        n_samples, batch_size, fraction=fraction, chunk_size=config.selection_size,
        refit_every=config.refit_every, warm_start_epochs=config.warm_start_epochs,
        selector=selector, refresh_share=config.refresh_share, seed=seed,
        label_noise_guard=config.label_noise_guard and strategy != "uniform",
    )


def load_data(config):
    """Return ``(X_train, y_train, X_test, y_test)`` NumPy arrays of the config's dataset."""
    if config.dataset == "digits":
        return load_digits_split(random_state=0)
    if config.dataset == "noisy_digits":
        return make_noisy_digits(random_state=0)
    return make_mnist1d(config.n_samples or 30_000, random_state=0)


# ------------------------------------------------------------------------- training


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
        "fraction": _scalar(getattr(refit, "fraction", None)),
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
    """Training wall-clock that pauses for test evaluation."""

    def __init__(self, device):
        self.device, self.total, self.started = device, 0.0, None

    def start(self):
        _sync(self.device)
        self.started = time.perf_counter()

    def stop(self):
        _sync(self.device)
        self.total += time.perf_counter() - self.started


def train_run(strategy, fraction, seed, data, config, *, total_samples=None,
              sampler_factory=make_batch_sampler, progress=False):
    """Train one model with one strategy; return the run's record (a JSON-ready dict).

    The learning rate follows ``lr * (1 + cos(pi * seen / planned)) / 2``, where
    ``seen`` counts the samples trained so far and ``planned`` is the run's total.
    Test accuracy is measured at the end of every epoch and, within long epochs,
    after every third of the training set; the clock stops while it is measured.
    """
    run = _set_up_run(strategy, fraction, seed, data, config, total_samples=total_samples,
                      sampler_factory=sampler_factory, progress=progress)
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
            "wall_seconds": self.clock.total, "samples_seen": self.seen,
            "selection_seconds": float(getattr(self.sampler, "selection_seconds", 0.0)),
            "feedback_seconds": self.feedback_seconds,
        })
        self.bar.set_postfix(acc=f"{accuracy:.4f}")
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
            "selection_seconds": last["selection_seconds"],
            "feedback_seconds": last["feedback_seconds"], "samples_seen": self.seen,
            "planned_samples": int(self.planned), "n_epochs": n_epochs,
            "curve": self.curve, "refits": self.refits,
        }


# ------------------------------------------------------------------------ the demo


def check_config(config, *, need_sampler=True):
    """Validate a DemoConfig; raise ValueError, TypeError or ImportError with the fix.

    With ``need_sampler``, the subset strategies also need
    :mod:`graft_select.sampler` to be importable.
    """
    owner = "run_demo"
    check_option(config.dataset, "dataset", owner, DATASETS)
    if not config.fractions or not config.seeds or not config.strategies:
        raise ValueError("run_demo needs at least one fraction, one seed and one strategy.")
    for fraction in config.fractions:
        check_real(fraction, "fractions", owner, low=0.0, high=1.0, closed="neither")
    for seed in config.seeds:
        check_int(seed, "seeds", owner, low=0)
    for strategy in config.strategies:
        check_option(strategy, "strategies", owner, STRATEGIES)
    if "budget_wall" in config.strategies and not {"budget", "graft"} <= set(config.strategies):
        raise ValueError("The 'budget_wall' strategy of run_demo matches GRAFT's wall-clock "
                         "at the 'budget' run's speed: add 'graft' and 'budget' to "
                         "strategies or drop 'budget_wall'.")
    check_int(config.epochs, "epochs", owner, low=1)
    check_int(config.refit_every, "refit_every", owner, low=1)
    check_int(config.warm_start_epochs, "warm_start_epochs", owner, low=0)
    check_int(config.batch_size, "batch_size", owner, low=1)
    check_real(config.uniform_share, "uniform_share", owner, low=0.0, high=1.0, closed="left")
    check_real(config.refresh_share, "refresh_share", owner, low=0.0, high=1.0)
    check_option(config.basis, "basis", owner, ("input", "gradients"))
    check_bool(config.label_noise_guard, "label_noise_guard", owner)
    check_option(config.feedback, "feedback", owner, FEEDBACK)
    if config.n_components is not None:
        check_int(config.n_components, "n_components", owner, low=1)
    if config.selection_size is not None:
        check_int(config.selection_size, "selection_size", owner, low=2)
    if config.threads is not None:
        check_int(config.threads, "threads", owner, low=1)
    if config.n_samples is not None:
        if config.dataset != "mnist1d":
            raise ValueError("The 'n_samples' parameter of run_demo applies to mnist1d only.")
        check_int(config.n_samples, "n_samples", owner, low=20)
    try:
        device = torch.device(config.device)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"The 'device' parameter of run_demo must be 'cpu' or 'cuda' (or "
                         f"'cuda:N'). Got {config.device!r} instead.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch.cuda.is_available() is "
                         "False; use --device cpu or install a CUDA build of torch.")
    for module in ("matplotlib", "tqdm"):
        try:
            __import__(module)
        except ImportError as exc:
            raise ImportError(f"the demo needs {module}: pip install graft-select[torch]") from exc
    if need_sampler and set(config.strategies) & set(SUBSET_STRATEGIES):
        try:
            from .. import sampler  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                f"the 'uniform' and 'graft' strategies need graft_select.sampler, which "
                f"could not be imported ({exc}); run the other strategies only."
            ) from exc


def plan_seed(config, seed_position):
    """The (strategy, fraction) runs of one seed, in running order.

    The reference group first (full, native InfoBatch, budget at InfoBatch's
    samples), then per fraction GRAFT first and budget_wall last, the others in an
    order rotated from seed to seed so that no strategy always runs first.
    """
    strategies = config.strategies
    plan = [(s, 1.0) for s in ("full", "infobatch") if s in strategies]
    if {"infobatch", "budget"} <= set(strategies):
        plan.append(("budget", 1.0))
    middle = [s for s in ("budget", "uniform", "rs2", "infobatch") if s in strategies]
    if middle:
        shift = seed_position % len(middle)
        middle = middle[shift:] + middle[:shift]
    for fraction in config.fractions:
        order = (["graft"] if "graft" in strategies else []) + middle
        order += ["budget_wall"] if "budget_wall" in strategies else []
        plan += [(s, fraction) for s in order]
    return plan


def _total_samples(strategy, fraction, seed_runs, config, n):
    """The sample budget of one run from the runs of the same seed done before it."""
    if strategy in ("full", *SUBSET_STRATEGIES):
        return None
    if fraction >= 1.0:  # the reference group: native InfoBatch, budget at its samples
        if strategy == "infobatch":
            return None
        return seed_runs[("infobatch", 1.0)]["samples_seen"]
    graft = seed_runs.get(("graft", fraction))
    budget = graft["samples_seen"] if graft else graft_samples(config, n, fraction)
    if strategy == "budget_wall":
        plain = seed_runs[("budget", fraction)]
        return max(1, round(plain["samples_seen"] * graft["wall_seconds"]
                            / plain["wall_seconds"]))
    return budget


def run_demo(config=None, *, out=None, progress=None, sampler_factory=make_batch_sampler):
    """Train every strategy for every seed (and fraction) and write the results.

    Parameters
    ----------
    config : DemoConfig, default=None
        The settings; ``None`` uses ``DemoConfig()`` (the full default demo).
    out : str or path, default=None
        Folder for ``results.json``, ``results.csv`` and ``results.png`` (created if
        needed); ``None`` writes nothing.
    progress : bool, default=None
        tqdm bars on stderr; ``None`` shows them when stderr is a terminal.
    sampler_factory : callable, default=make_batch_sampler
        Builds each run's batch sampler; same signature as :func:`make_batch_sampler`.

    Returns
    -------
    result : dict
        ``config``, ``machine``, ``date``, ``dataset``, ``runs`` (one record per
        strategy, fraction and seed; the reference group has fraction 1.0),
        ``summary`` (one row per fraction and strategy), ``comparisons`` (GRAFT
        against each baseline, per fraction), ``energy_note`` and ``files``.
    """
    from .report import compare, summarize, write_results

    config = DemoConfig() if config is None else config
    check_config(config, need_sampler=sampler_factory is make_batch_sampler)
    if progress is None:
        progress = sys.stderr.isatty()
    data = load_data(config)
    n = int(data[0].shape[0])
    previous_threads = torch.get_num_threads()
    threads = config.threads or min(len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else (os.cpu_count() or 1), 8)
    torch.set_num_threads(threads)
    energy = Energy(config.country_iso_code)
    runs = []
    try:
        for position, seed in enumerate(config.seeds):
            seed_runs = {}
            for strategy, fraction in plan_seed(config, position):
                total = _total_samples(strategy, fraction, seed_runs, config, n)
                tracker = energy.start()
                run = train_run(strategy, fraction, seed, data, config, total_samples=total,
                                sampler_factory=sampler_factory, progress=progress)
                energy.stop(tracker, run)
                seed_runs[(strategy, fraction)] = run
                runs.append(run)
        from .report import machine_info

        machine = machine_info(config.device)
    finally:
        torch.set_num_threads(previous_threads)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "config": asdict(config),
        "dataset": {"name": config.dataset, "n_train": n, "n_test": int(data[2].shape[0])},
        "energy_note": energy.note,
        "runs": runs,
    }
    result["summary"] = summarize(result)
    result["comparisons"] = compare(result)
    result["files"] = write_results(result, out) if out is not None else {}
    return result


def config_from_options(*, dataset="mnist1d", quick=False, **options):
    """A DemoConfig from command-line style options; None values keep the defaults."""
    options = {k: v for k, v in options.items() if v is not None}
    for name in ("fractions", "strategies"):
        if name in options:
            options[name] = tuple(options[name])
    if "seeds" in options:
        options["seeds"] = tuple(range(options["seeds"]))
    if quick:
        return DemoConfig.quick_config(dataset=dataset, **options)
    return replace(DemoConfig(), dataset=dataset, **options)
