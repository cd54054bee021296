"""Run the task suite: ``python benchmarks/suite/run.py [--quick] [--out DIR]``.

Every task (see ``suite/tasks.py``) is trained, seed by seed, with GRAFT's sampler
defaults, uniform subsets of the same sizes, budget-matched full data, RS2 and
InfoBatch (all at GRAFT's samples), at each fraction; then the estimator's static
use against a uniform subset. Results are written as they come: ``runs/<task>.json``
after every run, then ``table.md`` (the win/tie/loss table) and the figure after
every task, so an interrupted run keeps its data (``--resume`` skips finished tasks).

The full run (10 tasks, 5 seeds, fractions 0.1 and 0.3, 15 epochs; one thread) took
16 minutes on two otherwise idle cores and 36 on two cores shared with three other
jobs (load average 4 to 7); ``--quick`` (4 tasks, 2 seeds, half the data, 6 epochs)
took 3 minutes there.

``--report-only --first-seeds 5 --out DIR`` tabulates the first 5 seeds of a longer
run in DIR (into ``DIR/table_first5.md`` and ``suite_first5.png`` beside the figure): a
10-seed run holds the 5-seed run.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script: import the suite as a package
    sys.path.insert(0, str(HERE.parent))

from suite import stats  # noqa: E402
from suite.tasks import TASKS, task_names  # noqa: E402
from suite.training import regression_support, static_runs, strategy_run  # noqa: E402

__all__ = ["QUICK_TASKS", "SuiteConfig", "main", "rewrite_report", "run_suite"]

QUICK_TASKS = ("noise20", "signals1d", "regression", "transformer")
BASELINES = ("uniform", "budget", "rs2", "infobatch")


@dataclass(frozen=True)
class SuiteConfig:
    """What the suite runs: tasks, seeds, fractions; ``epochs`` and ``size_scale``
    override every task's epochs and scale its training-set size (None, 1.0: the
    task's own)."""

    tasks: tuple = field(default_factory=task_names)
    seeds: tuple = (0, 1, 2, 3, 4)
    fractions: tuple = (0.1, 0.3)
    epochs: int | None = None
    size_scale: float = 1.0
    static: bool = True

    @classmethod
    def quick(cls, **overrides):
        """A few minutes: 4 tasks, 2 seeds, half the data, 6 epochs."""
        settings = dict(tasks=QUICK_TASKS, seeds=(0, 1), epochs=6, size_scale=0.5)
        settings.update(overrides)
        return cls(**settings)


def _task_data(task, config):
    return task.make_data(max(200, round(task.n_train * config.size_scale)))


def _warned(call, **kwargs):
    """``call(**kwargs)`` with its warnings recorded, not printed: (result, messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call(**kwargs)
    messages = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})
    return result, messages


def run_task(task, config, write, log=print):
    """Every run of one task, seed by seed; ``write(result)`` after each run."""
    epochs = config.epochs or task.epochs
    data = _task_data(task, config)
    result = {"task": task.name, "kind": task.kind, "epochs": epochs,
              "n_train": len(data[1]), "n_test": len(data[3]), "runs": [],
              "complete": False}
    unsupported = regression_support() if task.loss == "mse" else None
    if unsupported is not None:
        result["unsupported"] = "GraftBatchSampler rejects squared-error feedback: " + \
            unsupported.split(";")[0]
        log(f"  {task.name}: the sampler runs are skipped ({result['unsupported']})")
    for seed in config.seeds:
        for fraction in config.fractions if unsupported is None else ():
            graft, caught = _warned(strategy_run, strategy="graft", task=task, data=data,
                                    fraction=fraction, seed=seed, epochs=epochs)
            result["runs"].append({**graft, "warnings": caught})
            write(result)
            for strategy in BASELINES:
                run, caught = _warned(strategy_run, strategy=strategy, task=task, data=data,
                                      fraction=fraction, seed=seed, epochs=epochs,
                                      total_samples=graft["samples_seen"])
                result["runs"].append({**run, "warnings": caught})
                write(result)
            log(f"  {task.name} seed {seed} f={fraction:g}: " + ", ".join(
                f"{r['strategy']} {r['score']:.2f}" for r in result["runs"][-5:])
                + f" ({graft['wall_seconds']:.1f} s GRAFT)")
        if config.static:
            records, caught = _warned(static_runs, task=task, data=data,
                                      fractions=config.fractions, seed=seed, epochs=epochs)
            result["runs"].extend({**r, "warnings": caught} for r in records)
            write(result)
            log(f"  {task.name} seed {seed} static: " + ", ".join(
                f"{r['strategy']} {r['fraction']:g} {r['score']:.2f}" for r in records))
    result["complete"] = True
    write(result)
    return result


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _processor():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [line.split(":", 1)[1].strip() for line in info
                     if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def _machine():
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"platform": platform.platform(), "processor": _processor(),
            "cores": os.cpu_count(), "load_average_1min": round(load, 2)}


def write_report(results, config, out, figure_path, header, table_name="table.md"):
    """``table_name`` in ``out`` (header, table, tally) and the figure from the results."""
    table, tally = stats.markdown_table(results, config.fractions)
    text = (header + "\n\n" + table + "\n\nStatic use: the rows GraftSelector picked from "
            "the warm model's embeddings and gradients, the share of its chunks that kept "
            "MaxVol's picks (the others keep a uniform subset: at 0% GRAFT's subset is a "
            "uniform one), and the share of the rows that the warm model misclassifies "
            "(mean over seeds), against a uniform subset of the same size.\n\n"
            + stats.static_table(results, config.fractions) + "\n")
    (out / table_name).write_text(text, encoding="utf-8")
    if figure_path is not None and results:
        stats.figure(results, config.fractions, figure_path,
                     f"GRAFT (sampler defaults) minus each baseline, 95% t-intervals over "
                     f"{len(config.seeds)} seeds")
    return text, tally


def _header(config, started, finished, elapsed, commit):
    done = "complete" if finished else "partial (tasks still running or interrupted)"
    return (f"Task suite ({done}): {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit "
            f"{commit} (at the start), {_machine()['processor']} ({os.cpu_count()} cores, load "
            f"{_machine()['load_average_1min']}), 1 thread; seeds {list(config.seeds)}, "
            f"fractions {list(config.fractions)}, epochs "
            f"{config.epochs or 'per task'}, size scale {config.size_scale:g}; started "
            f"{started}, {elapsed / 60:.1f} min so far.\n\nEach cell: GRAFT's score minus "
            f"the baseline's (test accuracy or R^2, in points), paired by seed: mean "
            f"[95% t-interval]; win / loss when the interval excludes 0. Selection share: "
            f"GRAFT's selection and observe() seconds over its training wall-clock.")


def run_suite(config, out, *, figure_path=None, resume=False, log=print):
    """Run the suite and write its results to ``out``; return (results, table text)."""
    from graft_select.demo.training import pinned_threads

    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config)), encoding="utf-8")
    started, began = f"{datetime.now(timezone.utc):%H:%M} UTC", time.perf_counter()
    commit = _commit()
    results = []

    def write(result):
        path = out / "runs" / f"{result['task']}.json"
        path.write_text(json.dumps(result, indent=1), encoding="utf-8")

    with pinned_threads(1):
        for name in config.tasks:
            path = out / "runs" / f"{name}.json"
            if resume and path.exists() and json.loads(path.read_text())["complete"]:
                results.append(json.loads(path.read_text()))
                log(f"{name}: kept from an earlier run")
                continue
            log(f"{name}: {TASKS[name].kind}")
            task_began = time.perf_counter()
            results.append(run_task(TASKS[name], config, write, log=log))
            log(f"{name}: done in {(time.perf_counter() - task_began) / 60:.1f} min")
            text, _ = write_report(results, config, out, figure_path,
                                   _header(config, started, False,
                                           time.perf_counter() - began, commit))
    text, _ = write_report(results, config, out, figure_path,
                           _header(config, started, True, time.perf_counter() - began,
                                   commit))
    return results, text


def rewrite_report(out, figure_path, first_seeds=None):
    """Rewrite ``table.md`` and the figure from the results in ``out``; keep its header.

    With ``first_seeds=N``, tabulate only the runs of the first N seeds of the
    run's config (seeds run one after another, so these are the runs a run of N
    seeds makes), into ``table_first<N>.md`` beside ``table.md`` and a figure
    ``<stem>_first<N>.png`` beside ``figure_path``, both of which are kept; the
    header says so.
    """
    out = Path(out)
    config = SuiteConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in
                            json.loads((out / "config.json").read_text()).items()})
    results = [json.loads((out / "runs" / f"{name}.json").read_text())
               for name in config.tasks if (out / "runs" / f"{name}.json").exists()]
    header = (out / "table.md").read_text(encoding="utf-8").split("\n\n| task |")[0]
    table_name = "table.md"
    if first_seeds is not None:
        if not 2 <= first_seeds <= len(config.seeds):
            raise SystemExit(f"--first-seeds must be between 2 and the run's {len(config.seeds)} "
                             f"seeds; got {first_seeds}.")
        seeds = config.seeds[:first_seeds]
        config = replace(config, seeds=seeds)
        results = [{**r, "runs": [run for run in r["runs"] if run["seed"] in seeds]}
                   for r in results]
        header = (f"The first {first_seeds} seeds {list(seeds)} of this run (the runs a "
                  f"run of {first_seeds} seeds makes; table.md has them all):\n\n" + header)
        table_name, figure_path = first_seeds_paths(figure_path, first_seeds)
    text, _ = write_report(results, config, out, figure_path, header, table_name)
    return text


def first_seeds_paths(figure_path, n):
    """The table's name and the figure's path (None stays None) of the first ``n`` seeds:
    ``table_first<n>.md`` and ``<stem>_first<n><suffix>``, beside the full run's."""
    if figure_path is not None:
        figure_path = Path(figure_path)
        figure_path = figure_path.with_name(f"{figure_path.stem}_first{n}{figure_path.suffix}")
    return f"table_first{n}.md", figure_path


def main(argv=None):
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 tasks, 2 seeds, small data")
    parser.add_argument("--out", default=None, help="output folder (default "
                        "benchmarks/suite_out or benchmarks/suite_out_quick)")
    parser.add_argument("--figure", default=None, help="figure path (default "
                        "benchmarks/figures/suite.png or suite_quick.png)")
    parser.add_argument("--tasks", nargs="+", choices=task_names(), default=None)
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument("--resume", action="store_true", help="keep finished tasks in --out")
    parser.add_argument("--report-only", action="store_true", help="rewrite table.md and the "
                        "figure from --out's runs/*.json, without training")
    parser.add_argument("--first-seeds", type=int, default=None, help="with --report-only: "
                        "tabulate the first N seeds only, into table_first<N>.md and a "
                        "figure <name>_first<N>.png")
    options = parser.parse_args(argv)
    config = SuiteConfig.quick() if options.quick else SuiteConfig()
    if options.tasks:
        config = replace(config, tasks=tuple(options.tasks))
    if options.seeds:
        config = replace(config, seeds=tuple(range(options.seeds)))
    suffix = "_quick" if options.quick else ""
    out = Path(options.out or HERE.parent / f"suite_out{suffix}")
    figure_path = Path(options.figure or HERE.parent / "figures" / f"suite{suffix}.png")
    if options.first_seeds is not None and not options.report_only:
        parser.error("--first-seeds needs --report-only (to run N seeds, use --seeds N)")
    if options.report_only:
        text = rewrite_report(out, figure_path, options.first_seeds)
    else:
        _, text = run_suite(config, out, figure_path=figure_path, resume=options.resume,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    print(text)
    if options.first_seeds is not None:
        table_name, first_figure = first_seeds_paths(figure_path, options.first_seeds)
        print(f"\nwritten: {out / table_name}, {first_figure}")
    else:
        print(f"\nwritten: {out / 'table.md'}, {out / 'runs'}, {figure_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
