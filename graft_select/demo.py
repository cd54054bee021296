"""The harness behind ``graft-select demo``: one model trained three ways at one budget.

For every seed the same small torch model (same initial weights) is trained on

- ``"full"``: every training sample every epoch, in shuffled batches;
- ``"uniform"``: :class:`~graft_select.sampler.GraftBatchSampler` with a uniform
  :class:`~graft_select.GraftSelector` (a seeded random subset of each chunk);
- ``"graft"``: :class:`~graft_select.sampler.GraftBatchSampler` with its default GRAFT
  selector, fed back the embeddings and logits of every training batch.

The subset strategies train on the full data for ``warm_start_epochs`` and then on a
``fraction`` of it, reselected every ``refit_every`` epochs. Every run records test
accuracy after each epoch, cumulative training wall-clock seconds (selection, data
loading and the ``observe`` calls included; test evaluation and energy tracking
excluded), seconds spent selecting and samples seen. :func:`run_demo` writes
``results.json``, ``results.csv`` and ``results.png`` and :func:`format_tables` prints
one table per fraction.

This module imports torch; ``import graft_select`` does not import it.
"""

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ._validation import check_int, check_option, check_real
from .datasets import load_digits_split, make_mnist1d

__all__ = [
    "CNN1D",
    "MLP",
    "DemoConfig",
    "ShuffledBatchSampler",
    "check_config",
    "format_tables",
    "make_batch_sampler",
    "run_demo",
]

STRATEGIES = ("full", "uniform", "graft")
DATASETS = ("mnist1d", "digits")
CARBON_HINT = "n/a (pip install graft-select[carbon])"


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo; :meth:`quick` gives the CI-sized variant.

    ``seeds`` are the seeds themselves (model initialisation, batch order, selection);
    the dataset is generated once with seed 0. ``n_samples`` is the number of MNIST-1D
    signals generated (train and test, 80/20) and must stay None for digits.
    """

    dataset: str = "mnist1d"
    fractions: tuple = (0.1, 0.3)
    seeds: tuple = (0, 1, 2)
    epochs: int = 20
    refit_every: int = 5
    warm_start_epochs: int = 3
    batch_size: int = 128
    selection_size: int | None = 64
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
        if overrides.get("dataset") == "digits":
            settings["n_samples"] = None
        settings.update(overrides)
        return cls(**settings)


# --------------------------------------------------------------------------- models


class CNN1D(nn.Module):
    """1-D CNN for MNIST-1D: three strided convolutions, then a linear head.

    ``forward(x)`` returns logits of shape (n, n_classes); with ``return_embedding=True``
    it returns ``(logits, embedding)``, the embedding being the flattened last feature
    map that the head reads (shape (n, width * 5) for 40-point signals).
    """

    def __init__(self, length=40, n_classes=10, width=32):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv1d(1, width, 5, stride=2, padding=1),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
        ])
        for conv in self.convs:
            length = (length + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        self.head = nn.Linear(width * length, n_classes)

    def forward(self, x, return_embedding=False):
        h = x.unsqueeze(1)
        for conv in self.convs:
            h = F.relu(conv(h))
        embedding = h.flatten(1)
        logits = self.head(embedding)
        return (logits, embedding) if return_embedding else logits


class MLP(nn.Module):
    """Two hidden ReLU layers and a linear head; same ``forward`` contract as CNN1D."""

    def __init__(self, n_features=64, n_classes=10, hidden=128, width=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, width), nn.ReLU()
        )
        self.head = nn.Linear(width, n_classes)

    def forward(self, x, return_embedding=False):
        embedding = self.body(x)
        logits = self.head(embedding)
        return (logits, embedding) if return_embedding else logits


def build_model(dataset, n_features, n_classes):
    """The demo's model for ``dataset``: CNN1D for MNIST-1D, MLP for digits."""
    if dataset == "mnist1d":
        return CNN1D(length=n_features, n_classes=n_classes)
    return MLP(n_features=n_features, n_classes=n_classes)


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


class ShuffledBatchSampler(Sampler):
    """Plain shuffled batches of every sample, with the sampler interface the loop uses.

    The order of epoch ``e`` comes from a private generator seeded with ``(seed, e)``;
    ``observe`` does nothing and ``selection_seconds`` stays 0.
    """

    last_refit = None
    selection_seconds = 0.0

    def __init__(self, n_samples, batch_size, *, seed=0):
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def observe(self, indices, **feedback):
        pass

    def __len__(self):
        return math.ceil(self.n_samples / self.batch_size)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_samples)
        for begin in range(0, self.n_samples, self.batch_size):
            yield order[begin:begin + self.batch_size].tolist()


def make_batch_sampler(strategy, n_samples, *, batch_size, fraction, seed, refit_every,
                       warm_start_epochs, selection_size=None):
    """Build the batch sampler of one strategy (``"full"``, ``"uniform"`` or ``"graft"``)."""
    if strategy == "full":
        return ShuffledBatchSampler(n_samples, batch_size, seed=seed)
    try:
        from .sampler import GraftBatchSampler
        from .selector import GraftSelector
    except ImportError as exc:
        raise ImportError(
            f"The {strategy!r} strategy needs graft_select.sampler.GraftBatchSampler, which "
            f"could not be imported ({exc}); run the 'full' strategy only or install a "
            f"complete graft-select."
        ) from exc
    selector = None
    if strategy == "uniform":
        selector = GraftSelector(fraction, strategy="uniform", random_state=seed)
    return GraftBatchSampler(
        n_samples, batch_size, fraction=fraction, selection_size=selection_size,
        refit_every=refit_every, warm_start_epochs=warm_start_epochs, selector=selector,
        seed=seed,
    )


def load_data(config):
    """Return ``(X_train, y_train, X_test, y_test)`` NumPy arrays of the config's dataset."""
    if config.dataset == "digits":
        return load_digits_split(random_state=0)
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


def train_run(strategy, fraction, seed, data, config, *, sampler_factory=make_batch_sampler,
              progress=False):
    """Train one model with one strategy; return the run's record (a JSON-ready dict)."""
    device = torch.device(config.device)
    X_train, y_train, X_test, y_test = (torch.as_tensor(a, device=device) for a in data)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config.dataset, X_train.shape[1], n_classes)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = sampler_factory(
        strategy, X_train.shape[0], batch_size=config.batch_size, fraction=fraction,
        seed=seed, refit_every=config.refit_every,
        warm_start_epochs=config.warm_start_epochs, selection_size=config.selection_size,
    )
    # DataLoader draws a base seed per epoch: from a private generator, not the global one
    loader = DataLoader(IndexedTensorDataset(X_train, y_train), batch_sampler=sampler,
                        collate_fn=collate_batch, generator=torch.Generator().manual_seed(seed))
    observe = getattr(sampler, "observe", None)

    from tqdm.auto import tqdm

    label = strategy if strategy == "full" else f"{strategy} {fraction:g}"
    bar = tqdm(total=config.epochs, desc=f"{label} seed {seed}", file=sys.stderr,
               disable=not progress, leave=False)
    epochs, refits = [], []
    wall, samples_seen, last_refit = 0.0, 0, None
    for epoch in range(config.epochs):
        _sync(device)
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        n_steps = max(len(sampler), 1)
        for step, (xb, yb, index) in enumerate(loader):
            progress_share = (epoch + step / n_steps) / config.epochs
            for group in optimizer.param_groups:  # cosine decay over epochs, not steps
                group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * progress_share))
            logits, embedding = model(xb, return_embedding=True)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if observe is not None:
                observe(index, embeddings=embedding.detach(), logits=logits.detach(),
                        targets=yb)
            samples_seen += int(index.shape[0])
        _sync(device)
        wall += time.perf_counter() - start
        refit = getattr(sampler, "last_refit", None)
        if refit is not None and refit is not last_refit:
            refits.append(_refit_record(refit, epoch))
            last_refit = refit
        accuracy = _accuracy(model, X_test, y_test)
        epochs.append({
            "epoch": epoch + 1, "test_accuracy": accuracy, "wall_seconds": wall,
            "selection_seconds": float(getattr(sampler, "selection_seconds", 0.0)),
            "samples_seen": samples_seen,
        })
        bar.update(1)
        bar.set_postfix(acc=f"{accuracy:.4f}")
    bar.close()
    last = epochs[-1]
    return {
        "strategy": strategy, "fraction": fraction, "seed": seed,
        "test_accuracy": last["test_accuracy"], "wall_seconds": last["wall_seconds"],
        "selection_seconds": last["selection_seconds"], "samples_seen": samples_seen,
        "epochs": epochs, "refits": refits,
    }


# -------------------------------------------------------------------------- energy


class _Energy:
    """codecarbon's offline tracker around each run, when the ``carbon`` extra is there."""

    def __init__(self, country_iso_code):
        self.country_iso_code = country_iso_code
        try:
            import codecarbon
        except ImportError:
            self.tracker_class, self.note = None, CARBON_HINT
            return
        import logging

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self.tracker_class, self.note = codecarbon.OfflineEmissionsTracker, None

    def start(self):
        if self.tracker_class is None:
            return None
        try:
            tracker = self.tracker_class(country_iso_code=self.country_iso_code,
                                         log_level="error", save_to_file=False)
            tracker.start()
            return tracker
        except Exception as exc:  # a tracker failure must not end the demo; it is reported
            self.note = f"n/a (codecarbon failed: {type(exc).__name__}: {exc})"
            self.tracker_class = None
            return None

    def stop(self, tracker, run):
        run["energy_kwh"] = run["co2_kg"] = None
        if tracker is None:
            return
        try:
            co2 = tracker.stop()
            data = getattr(tracker, "final_emissions_data", None)
            run["energy_kwh"] = _scalar(getattr(data, "energy_consumed", None))
            run["co2_kg"] = _scalar(co2)
        except Exception as exc:  # reported in the table's note, like a failed start
            self.note = f"n/a (codecarbon failed: {type(exc).__name__}: {exc})"


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
        check_real(fraction, "fractions", owner, low=0.0, high=1.0, closed="right")
    for seed in config.seeds:
        check_int(seed, "seeds", owner, low=0)
    for strategy in config.strategies:
        check_option(strategy, "strategies", owner, STRATEGIES)
    check_int(config.epochs, "epochs", owner, low=1)
    check_int(config.refit_every, "refit_every", owner, low=1)
    check_int(config.warm_start_epochs, "warm_start_epochs", owner, low=0)
    check_int(config.batch_size, "batch_size", owner, low=1)
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
    if need_sampler and set(config.strategies) - {"full"}:
        try:
            from . import sampler  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                f"the 'uniform' and 'graft' strategies need graft_select.sampler, which "
                f"could not be imported ({exc}); run the 'full' strategy only."
            ) from exc


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(device):
    info = {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


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
        strategy, fraction and seed; the full-data runs have fraction 1.0 and serve
        every fraction's table), ``summary`` (one row per fraction and strategy),
        ``energy_note`` and ``files``.
    """
    config = DemoConfig() if config is None else config
    check_config(config, need_sampler=sampler_factory is make_batch_sampler)
    if progress is None:
        progress = sys.stderr.isatty()
    data = load_data(config)
    previous_threads = torch.get_num_threads()
    threads = config.threads or min(len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else (os.cpu_count() or 1), 8)
    torch.set_num_threads(threads)
    energy = _Energy(config.country_iso_code)
    runs = []
    try:
        for seed in config.seeds:
            plan = [("full", 1.0)] if "full" in config.strategies else []
            plan += [(s, f) for f in config.fractions for s in config.strategies if s != "full"]
            for strategy, fraction in plan:
                tracker = energy.start()
                run = train_run(strategy, fraction, seed, data, config,
                                sampler_factory=sampler_factory, progress=progress)
                energy.stop(tracker, run)
                runs.append(run)
        machine = _machine(config.device)
    finally:
        torch.set_num_threads(previous_threads)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "config": asdict(config),
        "dataset": {"name": config.dataset, "n_train": int(data[0].shape[0]),
                    "n_test": int(data[2].shape[0])},
        "energy_note": energy.note,
        "runs": runs,
    }
    result["summary"] = summarize(result)
    result["files"] = write_results(result, out) if out is not None else {}
    return result


def summarize(result):
    """One row per fraction and strategy: means over seeds (accuracy also its std)."""
    runs, config = result["runs"], result["config"]
    full = [r for r in runs if r["strategy"] == "full"]
    full_wall = float(np.mean([r["wall_seconds"] for r in full])) if full else None
    rows = []
    for fraction in config["fractions"]:
        for strategy in config["strategies"]:
            group = [r for r in runs if r["strategy"] == strategy
                     and (strategy == "full" or r["fraction"] == fraction)]
            if not group:
                continue
            accuracy = np.array([r["test_accuracy"] for r in group]) * 100
            wall = float(np.mean([r["wall_seconds"] for r in group]))
            selection = float(np.mean([r["selection_seconds"] for r in group]))
            energy = [r["energy_kwh"] for r in group]
            co2 = [r["co2_kg"] for r in group]
            rows.append({
                "fraction": fraction, "strategy": strategy, "n_seeds": len(group),
                "test_accuracy_mean": float(accuracy.mean()),
                "test_accuracy_std": float(accuracy.std(ddof=1)) if len(group) > 1 else 0.0,
                "wall_seconds": wall, "selection_seconds": selection,
                "selection_share": selection / wall if wall > 0 else 0.0,
                "samples_seen": float(np.mean([r["samples_seen"] for r in group])),
                "speedup_vs_full": full_wall / wall if full_wall and wall > 0 else None,
                "energy_kwh": None if None in energy else float(np.mean(energy)),
                "co2_kg": None if None in co2 else float(np.mean(co2)),
            })
    return rows


# -------------------------------------------------------------------------- output


def _fmt(value, spec, missing="n/a"):
    return missing if value is None else format(value, spec)


def format_tables(result):
    """The demo's tables, one per fraction, as text."""
    dataset, config = result["dataset"], result["config"]
    header = (f"{'strategy':<9}{'test acc (%)':>16}{'wall s':>9}{'select s':>10}"
              f"{'select %':>10}{'samples seen':>14}{'speed-up':>10}{'energy kWh':>12}"
              f"{'CO2 kg':>11}")
    lines = []
    for fraction in config["fractions"]:
        rows = [r for r in result["summary"] if r["fraction"] == fraction]
        n_seeds = max(r["n_seeds"] for r in rows)
        lines += [
            f"fraction {fraction:g}: {dataset['name']} ({dataset['n_train']} train / "
            f"{dataset['n_test']} test), {config['epochs']} epochs, {n_seeds} seed(s), "
            f"device {config['device']}",
            header,
        ]
        for r in rows:
            accuracy = f"{r['test_accuracy_mean']:.2f} +- {r['test_accuracy_std']:.2f}"
            speedup = _fmt(r["speedup_vs_full"], ".2f")
            lines.append(
                f"{r['strategy']:<9}{accuracy:>16}{r['wall_seconds']:>9.1f}"
                f"{r['selection_seconds']:>10.2f}{100 * r['selection_share']:>10.1f}"
                f"{r['samples_seen']:>14,.0f}{speedup + 'x' * (speedup != 'n/a'):>10}"
                f"{_fmt(r['energy_kwh'], '.2e'):>12}{_fmt(r['co2_kg'], '.2e'):>11}"
            )
        lines.append("")
    if result["energy_note"]:
        lines.append(f"energy kWh, CO2 kg: {result['energy_note']}")
    return "\n".join(lines).rstrip("\n")


_CSV_COLUMNS = ("fraction", "strategy", "n_seeds", "test_accuracy_mean", "test_accuracy_std",
                "wall_seconds", "selection_seconds", "selection_share", "samples_seen",
                "speedup_vs_full", "energy_kwh", "co2_kg")


def write_results(result, out):
    """Write results.json, results.csv and results.png into ``out``; return their paths."""
    import csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv",
             "png": out / "results.png"}
    note = result["energy_note"]
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(_CSV_COLUMNS)
        for row in result["summary"]:
            cells = [row[c] for c in _CSV_COLUMNS]
            cells = [note if c is None and name in ("energy_kwh", "co2_kg") and note else c
                     for name, c in zip(_CSV_COLUMNS, cells)]
            writer.writerow(["" if c is None else c for c in cells])
    plot_results(result, paths["png"])
    files = {k: str(v) for k, v in paths.items()}
    with open(paths["json"], "w") as handle:
        json.dump(result | {"files": files}, handle, indent=1)
    return files


_COLORS = {"full": "black", "uniform": "tab:blue", "graft": "tab:orange"}


def plot_results(result, path):
    """Test accuracy against wall-clock and against samples seen, per fraction."""
    from matplotlib.figure import Figure

    fractions = result["config"]["fractions"]
    fig = Figure(figsize=(10, 3.6 * len(fractions)), layout="constrained")
    axes = fig.subplots(len(fractions), 2, squeeze=False)
    for (ax_time, ax_samples), fraction in zip(axes, fractions):
        for strategy in result["config"]["strategies"]:
            group = [r for r in result["runs"] if r["strategy"] == strategy
                     and (strategy == "full" or r["fraction"] == fraction)]
            if not group:
                continue
            curves = {key: np.mean([[e[key] for e in r["epochs"]] for r in group], axis=0)
                      for key in ("test_accuracy", "wall_seconds", "samples_seen")}
            label = strategy if strategy == "full" else f"{strategy} ({fraction:g})"
            style = dict(color=_COLORS.get(strategy), marker=".", label=label)
            ax_time.plot(curves["wall_seconds"], 100 * curves["test_accuracy"], **style)
            ax_samples.plot(curves["samples_seen"], 100 * curves["test_accuracy"], **style)
        ax_time.set(xlabel="wall-clock seconds (selection included)",
                    ylabel="test accuracy (%)", title=f"fraction {fraction:g}")
        ax_samples.set(xlabel="samples seen", ylabel="test accuracy (%)",
                       title=f"fraction {fraction:g}")
        ax_time.legend(loc="lower right")
        ax_time.grid(alpha=0.3)
        ax_samples.grid(alpha=0.3)
    fig.suptitle(f"graft-select demo: {result['dataset']['name']}, "
                 f"mean over {len(result['config']['seeds'])} seed(s)")
    fig.savefig(path, dpi=110)


def config_from_options(*, dataset="mnist1d", quick=False, **options):
    """A DemoConfig from command-line style options; None values keep the defaults."""
    options = {k: v for k, v in options.items() if v is not None}
    if "fractions" in options:
        options["fractions"] = tuple(options["fractions"])
    if "seeds" in options:
        options["seeds"] = tuple(range(options["seeds"]))
    if quick:
        return DemoConfig.quick_config(dataset=dataset, **options)
    return replace(DemoConfig(), dataset=dataset, **options)
