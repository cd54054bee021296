"""The demo's summary, GRAFT-against-baseline comparisons, tables, files and plot."""

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from .plot import plot_results

__all__ = ["COST_NOTE", "SMOKE_NOTE", "compare", "format_tables", "machine_info",
           "plot_results", "summarize", "verdict", "write_results"]

COST_NOTE = ("cost s = min(training wall-clock, process CPU time), selection and feedback "
             "included, test evaluation excluded (on a GPU: the wall-clock)")
SMOKE_NOTE = ("SMOKE TEST (--quick): tiny data, 3 epochs, 1 seed; these accuracies mean "
              "nothing. Run without --quick for the real comparison.")


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
    """Platform, processor, cores, load, Python, torch and the thread pools (and the GPU)."""
    from threadpoolctl import threadpool_info

    info = {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "thread_pools": {pool["internal_api"]: pool["num_threads"]
                         for pool in threadpool_info()},
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _groups(result):
    """(fraction, strategy, runs) for every group with runs: the all-epochs group first."""
    runs, config = result["runs"], result["config"]
    for fraction in (1.0, *config["fractions"]):
        for strategy in ("full", "infobatch", "budget", "budget_wall", "rs2", "uniform",
                         "graft"):
            group = [r for r in runs if r["strategy"] == strategy and r["fraction"] == fraction]
            if group:
                yield fraction, strategy, group


def time_to_accuracy(run, target, clock="cost_seconds"):
    """The ``clock`` seconds at the first evaluation reaching ``target`` (None if never)."""
    for point in run["curve"]:
        if point["test_accuracy"] >= target:
            return point[clock]
    return None


def summarize(result):
    """One row per fraction and strategy: means over seeds (accuracy also its std).

    ``time_to_target_seconds`` is the mean, over the seeds whose run got there, of the
    cost at which the run first reached the final accuracy of the same seed's
    ``budget`` run at the same fraction (``n_reached`` of them did). Shares and
    ``speedup_vs_full`` are taken on the wall-clock and the cost respectively.
    """
    runs = result["runs"]
    full = [r for r in runs if r["strategy"] == "full"]
    full_cost = float(np.mean([r["cost_seconds"] for r in full])) if full else None
    budget = {(r["fraction"], r["seed"]): r["test_accuracy"] for r in runs
              if r["strategy"] == "budget"}
    rows = []
    for fraction, strategy, group in _groups(result):
        accuracy = np.array([r["test_accuracy"] for r in group]) * 100
        wall = float(np.mean([r["wall_seconds"] for r in group]))
        cost = float(np.mean([r["cost_seconds"] for r in group]))
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
            "wall_seconds": wall,
            "cpu_seconds": float(np.mean([r["cpu_seconds"] for r in group])),
            "cost_seconds": cost, "selection_seconds": selection,
            "selection_share": selection / wall if wall > 0 else 0.0,
            "feedback_seconds": feedback,
            "feedback_share": feedback / wall if wall > 0 else 0.0,
            "samples_seen": float(np.mean([r["samples_seen"] for r in group])),
            "time_to_target_seconds": float(np.mean(reached)) if reached else None,
            "n_reached": len(reached) if times else None,
            "speedup_vs_full": full_cost / cost if full_cost and cost > 0 else None,
            "energy_kwh": None if None in energy else float(np.mean(energy)),
            "co2_kg": None if None in co2 else float(np.mean(co2)),
        })
    return rows


def compare(result):
    """GRAFT minus each baseline, per fraction: accuracy points over seeds (paired).

    Rows: ``fraction``, ``baseline``, ``equal`` ("samples" or "cost" for
    ``budget_wall``), ``n_seeds``, ``difference_mean`` and ``difference_std`` (test
    accuracy points, GRAFT minus the baseline, same seed; the std over seeds),
    ``wall_ratio`` and ``cost_ratio`` (GRAFT's wall-clock and cost over the
    baseline's, mean over seeds).
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
                "equal": "cost" if baseline == "budget_wall" else "samples",
                "n_seeds": len(pairs), "difference_mean": float(difference.mean()),
                "difference_std": float(difference.std(ddof=1)) if len(pairs) > 1 else 0.0,
                "wall_ratio": float(np.mean([g["wall_seconds"] / b["wall_seconds"]
                                             for g, b in pairs])),
                "cost_ratio": float(np.mean([g["cost_seconds"] / b["cost_seconds"]
                                             for g, b in pairs])),
            })
    return rows


_AGAINST = {"budget": "budget-matched full data at equal samples",
            "budget_wall": "full data trained for GRAFT's cost",
            "rs2": "RS2 at equal samples", "infobatch": "InfoBatch at equal samples",
            "uniform": "uniform subsets at equal samples"}


def _standing(mean, std):
    """"ahead of", "behind" or "level with", from the paired mean and its seed spread."""
    if mean > std:
        return "ahead of"
    if mean < -std:
        return "behind"
    return "level with"


def verdict(result):
    """The demo's closing lines, in words, from ``result["comparisons"]``.

    One line per fraction: GRAFT minus each baseline in test-accuracy points,
    mean +- std over the paired seeds, and GRAFT's cost against budget-matched
    full data. "ahead of" means the mean exceeds the std, "behind" the reverse,
    "level with" otherwise. One seed has no spread to weigh a difference against:
    its line gives the differences without those words, and says to run more seeds.
    The numbers are those of ``comparisons``, rounded to two decimals.
    """
    lines = []
    for fraction in result["config"]["fractions"]:
        rows = [c for c in result["comparisons"] if c["fraction"] == fraction]
        if not rows:
            continue
        budget = [c for c in rows if c["baseline"] == "budget"]
        cost = (f" (GRAFT's cost {budget[0]['cost_ratio']:.2f}x budget-matched full data's)"
                if budget else "")
        if rows[0]["n_seeds"] < 2:
            parts = [f"{c['difference_mean']:+.2f} points against {_AGAINST[c['baseline']]}"
                     for c in rows]
            lines.append(f"GRAFT {fraction:g}: {'; '.join(parts)}{cost}; one seed, so no "
                         f"spread to judge these by: run --seeds 3 or more for a verdict.")
            continue
        parts = [f"{_standing(c['difference_mean'], c['difference_std'])} "
                 f"{_AGAINST[c['baseline']]} by {c['difference_mean']:+.2f} +- "
                 f"{c['difference_std']:.2f} points" for c in rows]
        lines.append(f"GRAFT {fraction:g}: {'; '.join(parts)}{cost}; "
                     f"mean +- std over {rows[0]['n_seeds']} seed(s).")
    if result["config"].get("quick"):
        lines.append(SMOKE_NOTE)
    return lines


# -------------------------------------------------------------------------- output


def _fmt(value, spec, missing="n/a"):
    return missing if value is None else format(value, spec)


def _table_row(r):
    accuracy = f"{r['test_accuracy_mean']:.2f} +- {r['test_accuracy_std']:.2f}"
    speedup = _fmt(r["speedup_vs_full"], ".2f")
    target = _fmt(r["time_to_target_seconds"], ".1f", "-")
    if r["n_reached"] is not None and r["n_reached"] < r["n_seeds"]:
        target += f" ({r['n_reached']}/{r['n_seeds']})"
    return (f"{r['strategy']:<12}{accuracy:>16}{r['wall_seconds']:>8.1f}"
            f"{r['cpu_seconds']:>7.1f}{r['cost_seconds']:>8.1f}"
            f"{100 * r['selection_share']:>10.1f}{100 * r['feedback_share']:>11.1f}"
            f"{r['samples_seen']:>14,.0f}{target:>13}{speedup + 'x' * (speedup != 'n/a'):>10}"
            f"{_fmt(r['energy_kwh'], '.2e', '-'):>12}{_fmt(r['co2_kg'], '.2e', '-'):>11}")


def _group_tables(result):
    dataset, config = result["dataset"], result["config"]
    header = (f"{'strategy':<12}{'test acc (%)':>16}{'wall s':>8}{'CPU s':>7}{'cost s':>8}"
              f"{'select %':>10}{'feedback %':>11}{'samples seen':>14}{'t->budget s':>13}"
              f"{'speed-up':>10}{'energy kWh':>12}{'CO2 kg':>11}")
    lines = []
    for fraction in (1.0, *config["fractions"]):
        rows = [r for r in result["summary"] if r["fraction"] == fraction]
        if not rows:
            continue
        n_seeds = max(r["n_seeds"] for r in rows)
        title = ("all epochs (full data; native InfoBatch; budget at InfoBatch's samples)"
                 if fraction >= 1.0 else f"fraction {fraction:g}")
        lines += [f"{title}: {dataset['name']} ({dataset['n_train']} train / "
                  f"{dataset['n_test']} test), {config['epochs']} epochs, {n_seeds} seed(s), "
                  f"device {config['device']}", header]
        lines += [_table_row(r) for r in rows]
        lines.append("")
    return lines


def format_tables(result):
    """The demo's report: tables per fraction, GRAFT's differences, notes, the verdict.

    Accuracy is mean +- std over seeds. The verdict lines close it (and a smoke-test
    note opens and closes it for ``--quick``).
    """
    quick = result["config"].get("quick")
    lines = [SMOKE_NOTE, ""] if quick else []
    lines += _group_tables(result)
    if result.get("comparisons"):
        lines.append("GRAFT minus baseline, test accuracy points (paired by seed, "
                     "mean +- std):")
        for c in result["comparisons"]:
            lines.append(
                f"  fraction {c['fraction']:g} vs {c['baseline']:<12} at equal {c['equal']:<8}"
                f" {c['difference_mean']:+.2f} +- {c['difference_std']:.2f}"
                f"  (GRAFT's cost {c['cost_ratio']:.2f}x, wall-clock {c['wall_ratio']:.2f}x)")
        lines.append("")
    lines.append(f"{COST_NOTE}; budget_wall trains full data for GRAFT's cost s. "
                 "t->budget s: cost at which a run first reached the same seed's "
                 "budget-matched final accuracy (k/n: seeds that got there)")
    if result["energy_note"]:
        lines.append(f"energy kWh, CO2 kg: {result['energy_note']}")
    lines += ["", *result.get("verdict", verdict(result))]
    return "\n".join(lines).rstrip("\n")


_CSV_COLUMNS = ("fraction", "strategy", "n_seeds", "test_accuracy_mean", "test_accuracy_std",
                "wall_seconds", "cpu_seconds", "cost_seconds", "selection_seconds",
                "selection_share", "feedback_seconds", "feedback_share", "samples_seen",
                "time_to_target_seconds", "n_reached", "speedup_vs_full", "energy_kwh",
                "co2_kg")


def write_results(result, out):
    """Write results.json, results.csv and results.png into ``out``; return their paths.

    Every CSV column but ``strategy`` is numeric: a figure that was not measured
    (energy without codecarbon, a target never reached) is an empty cell, and
    results.json's ``energy_note`` says why.
    """
    import csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv",
             "png": out / "results.png"}
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(_CSV_COLUMNS)
        for row in result["summary"]:
            writer.writerow(["" if row[c] is None else row[c] for c in _CSV_COLUMNS])
    plot_results(result, paths["png"])
    files = {k: str(v) for k, v in paths.items()}
    with open(paths["json"], "w") as handle:
        json.dump(result | {"files": files}, handle, indent=1)
    return files
