"""The demo's summary, GRAFT-against-baseline comparisons, tables, files and plot."""

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

__all__ = ["compare", "format_tables", "machine_info", "plot_results", "summarize",
           "write_results"]

_LABELS = {
    "full": "full data, all epochs", "budget": "full data, budget-matched",
    "rs2": "RS2 (without replacement)", "infobatch": "InfoBatch", "uniform": "uniform subsets",
    "graft": "GRAFT", "budget_wall": "full data, GRAFT's wall-clock",
}
_COLORS = {"full": "black", "budget": "tab:green", "rs2": "tab:purple",
           "infobatch": "tab:red", "uniform": "tab:blue", "graft": "tab:orange",
           "budget_wall": "tab:olive"}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device):
    """Platform, processor, core count, Python, torch and its thread count (and the GPU)."""
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


def _groups(result):
    """(fraction, strategy, runs) for every group with runs: the reference group first."""
    runs, config = result["runs"], result["config"]
    for fraction in (1.0, *config["fractions"]):
        for strategy in ("full", "infobatch", "budget", "budget_wall", "rs2", "uniform",
                         "graft"):
            group = [r for r in runs if r["strategy"] == strategy and r["fraction"] == fraction]
            if group:
                yield fraction, strategy, group


def time_to_accuracy(run, target):
    """Wall-clock seconds at the first evaluation reaching ``target`` (None if never)."""
    for point in run["curve"]:
        if point["test_accuracy"] >= target:
            return point["wall_seconds"]
    return None


def summarize(result):
    """One row per fraction and strategy: means over seeds (accuracy also its std).

    ``time_to_target_seconds`` is the mean, over the seeds whose run got there, of the
    wall-clock at which the run first reached the final accuracy of the same seed's
    ``budget`` run at the same fraction (``n_reached`` of them did).
    """
    runs = result["runs"]
    full = [r for r in runs if r["strategy"] == "full"]
    full_wall = float(np.mean([r["wall_seconds"] for r in full])) if full else None
    budget = {(r["fraction"], r["seed"]): r["test_accuracy"] for r in runs
              if r["strategy"] == "budget"}
    rows = []
    for fraction, strategy, group in _groups(result):
        accuracy = np.array([r["test_accuracy"] for r in group]) * 100
        wall = float(np.mean([r["wall_seconds"] for r in group]))
        selection = float(np.mean([r["selection_seconds"] for r in group]))
        feedback = float(np.mean([r["feedback_seconds"] for r in group]))
        times = [time_to_accuracy(r, budget[(fraction, r["seed"])]) for r in group
                 if (fraction, r["seed"]) in budget]
        reached = [t for t in times if t is not None]
        energy = [r.get("energy_kwh") for r in group]
        co2 = [r.get("co2_kg") for r in group]
        rows.append({
            "fraction": fraction, "strategy": strategy, "n_seeds": len(group),
            "test_accuracy_mean": float(accuracy.mean()),
            "test_accuracy_std": float(accuracy.std(ddof=1)) if len(group) > 1 else 0.0,
            "wall_seconds": wall, "selection_seconds": selection,
            "selection_share": selection / wall if wall > 0 else 0.0,
            "feedback_seconds": feedback,
            "feedback_share": feedback / wall if wall > 0 else 0.0,
            "samples_seen": float(np.mean([r["samples_seen"] for r in group])),
            "time_to_target_seconds": float(np.mean(reached)) if reached else None,
            "n_reached": len(reached) if times else None,
            "speedup_vs_full": full_wall / wall if full_wall and wall > 0 else None,
            "energy_kwh": None if None in energy else float(np.mean(energy)),
            "co2_kg": None if None in co2 else float(np.mean(co2)),
        })
    return rows


def compare(result):
    """GRAFT minus each baseline, per fraction: accuracy points over seeds (paired).

    Rows: ``fraction``, ``baseline``, ``equal`` ("samples" or "wall-clock" for
    ``budget_wall``), ``n_seeds``, ``difference_mean`` and ``difference_std`` (test
    accuracy points, GRAFT minus the baseline, same seed) and ``wall_ratio`` (GRAFT's
    wall-clock over the baseline's).
    """
    runs = {(r["strategy"], r["fraction"], r["seed"]): r for r in result["runs"]}
    rows = []
    for fraction in result["config"]["fractions"]:
        for baseline in ("budget", "rs2", "infobatch", "uniform", "budget_wall"):
            pairs = [(run, runs[(baseline, fraction, seed)])
                     for (strategy, f, seed), run in runs.items()
                     if strategy == "graft" and f == fraction
                     and (baseline, fraction, seed) in runs]
            if not pairs:
                continue
            difference = np.array([100 * (g["test_accuracy"] - b["test_accuracy"])
                                   for g, b in pairs])
            rows.append({
                "fraction": fraction, "baseline": baseline,
                "equal": "wall-clock" if baseline == "budget_wall" else "samples",
                "n_seeds": len(pairs), "difference_mean": float(difference.mean()),
                "difference_std": float(difference.std(ddof=1)) if len(pairs) > 1 else 0.0,
                "wall_ratio": float(np.mean([g["wall_seconds"] / b["wall_seconds"]
                                             for g, b in pairs])),
            })
    return rows


# -------------------------------------------------------------------------- output


def _fmt(value, spec, missing="n/a"):
    return missing if value is None else format(value, spec)


def format_tables(result):
    """The demo's tables, one per fraction (reference group first), and the comparisons."""
    dataset, config = result["dataset"], result["config"]
    header = (f"{'strategy':<12}{'test acc (%)':>16}{'wall s':>8}{'select %':>10}"
              f"{'feedback %':>11}{'samples seen':>14}{'t->budget s':>13}{'speed-up':>10}"
              f"{'energy kWh':>12}{'CO2 kg':>11}")
    lines = []
    summary = result["summary"]
    for fraction in (1.0, *config["fractions"]):
        rows = [r for r in summary if r["fraction"] == fraction]
        if not rows:
            continue
        n_seeds = max(r["n_seeds"] for r in rows)
        title = ("reference (all epochs; native InfoBatch; budget at its samples)"
                 if fraction >= 1.0 else f"fraction {fraction:g}")
        lines += [f"{title}: {dataset['name']} ({dataset['n_train']} train / "
                  f"{dataset['n_test']} test), {config['epochs']} epochs, {n_seeds} seed(s), "
                  f"device {config['device']}", header]
        for r in rows:
            accuracy = f"{r['test_accuracy_mean']:.2f} +- {r['test_accuracy_std']:.2f}"
            speedup = _fmt(r["speedup_vs_full"], ".2f")
            target = _fmt(r["time_to_target_seconds"], ".1f", "-")
            if r["n_reached"] is not None and r["n_reached"] < r["n_seeds"]:
                target += f" ({r['n_reached']}/{r['n_seeds']})"
            lines.append(
                f"{r['strategy']:<12}{accuracy:>16}{r['wall_seconds']:>8.1f}"
                f"{100 * r['selection_share']:>10.1f}{100 * r['feedback_share']:>11.1f}"
                f"{r['samples_seen']:>14,.0f}{target:>13}{speedup + 'x' * (speedup != 'n/a'):>10}"
                f"{_fmt(r['energy_kwh'], '.2e'):>12}{_fmt(r['co2_kg'], '.2e'):>11}"
            )
        lines.append("")
    if result.get("comparisons"):
        lines.append("GRAFT minus baseline, test accuracy points (paired by seed):")
        for c in result["comparisons"]:
            lines.append(
                f"  fraction {c['fraction']:g} vs {c['baseline']:<12} at equal {c['equal']:<10}"
                f" {c['difference_mean']:+.2f} +- {c['difference_std']:.2f}"
                f"  (GRAFT wall-clock {c['wall_ratio']:.2f}x)")
        lines.append("")
    lines.append("t->budget s: wall-clock at which a run first reached the same seed's "
                 "budget-matched final accuracy (k/n: seeds that got there)")
    if result["energy_note"]:
        lines.append(f"energy kWh, CO2 kg: {result['energy_note']}")
    return "\n".join(lines).rstrip("\n")


_CSV_COLUMNS = ("fraction", "strategy", "n_seeds", "test_accuracy_mean", "test_accuracy_std",
                "wall_seconds", "selection_seconds", "selection_share", "feedback_seconds",
                "feedback_share", "samples_seen", "time_to_target_seconds", "n_reached",
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


_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_results(result, path):
    """Final test accuracy against samples seen and against wall-clock, every run group.

    One point per strategy and fraction (mean over seeds, bars: one std of accuracy);
    a strategy's points are joined across fractions, the marker gives the fraction.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_samples, ax_time = fig.subplots(1, 2)
    fractions = (1.0, *result["config"]["fractions"])
    by_strategy = {}
    for row in result["summary"]:
        by_strategy.setdefault(row["strategy"], []).append(row)
    for strategy, rows in by_strategy.items():
        rows = sorted(rows, key=lambda r: r["samples_seen"])
        color = _COLORS.get(strategy)
        for ax, key in ((ax_samples, "samples_seen"), (ax_time, "wall_seconds")):
            x = [r[key] for r in rows]
            y = [r["test_accuracy_mean"] for r in rows]
            ax.plot(x, y, color=color, alpha=0.5, label=_LABELS.get(strategy, strategy))
            for r in rows:
                marker = _MARKERS[fractions.index(r["fraction"]) % len(_MARKERS)]
                ax.errorbar(r[key], r["test_accuracy_mean"], yerr=r["test_accuracy_std"],
                            color=color, marker=marker, capsize=2)
    for fraction, marker in zip(fractions, _MARKERS):
        label = "reference group" if fraction >= 1.0 else f"fraction {fraction:g}"
        ax_samples.plot([], [], linestyle="none", marker=marker, color="gray", label=label)
    ax_samples.set(xlabel="samples seen", ylabel="test accuracy (%)",
                   title="accuracy at equal samples")
    ax_time.set(xlabel="wall-clock seconds (selection and feedback included)",
                ylabel="test accuracy (%)", title="accuracy at equal wall-clock")
    for ax in (ax_samples, ax_time):
        ax.grid(alpha=0.3)
    ax_samples.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"graft-select demo: {result['dataset']['name']}, "
                 f"mean over {len(result['config']['seeds'])} seed(s)")
    fig.savefig(path, dpi=110)
