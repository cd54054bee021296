"""Every GRAFT configuration tried for issue 12, against the demo's baselines.

Run: python benchmarks/bench_demo_tuning.py [--dataset D] [--seeds N] [--only NAME ...]
Each configuration trains GRAFT (graft-select demo's harness, one torch thread) at the
demo's fractions for the seeds, after the baselines (budget, rs2, infobatch, uniform at
the same warm start, hence the same budget) ran for the same seeds. One JSON line per
configuration and fraction goes to stdout: mean test accuracy, std, wall-clock and the
selection and feedback shares; accuracy differences are paired by seed against budget.
Wall-clock numbers on a shared 2-core machine are noisy: compare the shares, and the
wall-clock only within one run.
"""

import argparse
import json
import sys
import time

import numpy as np

from graft_select.demo import DemoConfig, run_demo

CONFIGS = {
    "default": {},
    "uniform_share=0.25": {"uniform_share": 0.25},
    "uniform_share=0.75": {"uniform_share": 0.75},
    "uniform_share=0.0": {"uniform_share": 0.0},
    "refit_every=2": {"refit_every": 2},
    "refit_every=10": {"refit_every": 10},
    "selection_size=128": {"selection_size": 128},
    "selection_size=256": {"selection_size": 256},
    "basis=input": {"basis": "input"},
    "n_components=8": {"n_components": 8},
    "refresh_share=0.0": {"refresh_share": 0.0},
    "refresh_share=0.3": {"refresh_share": 0.3},
    "feedback=every": {"feedback": "every"},
    "warm_start_epochs=1": {"warm_start_epochs": 1},
    "warm_start_epochs=1,refit_every=2": {"warm_start_epochs": 1, "refit_every": 2},
    "uniform_share=0.0,refit_every=10": {"uniform_share": 0.0, "refit_every": 10},
    "uniform_share=0.0,selection_size=128": {"uniform_share": 0.0, "selection_size": 128},
}
BASELINES = ("budget", "rs2", "infobatch", "uniform")


def by_key(runs):
    return {(r["strategy"], r["fraction"], r["seed"]): r for r in runs}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=list(CONFIGS))
    parser.add_argument("--skip-baselines", action="store_true",
                        help="GRAFT only (the baselines are deterministic: compare with the "
                             "accuracies of an earlier run; wall-clock ratios are omitted)")
    args = parser.parse_args()
    seeds = tuple(range(args.seeds))
    base = dict(dataset=args.dataset, seeds=seeds, threads=1)
    baselines = {}
    for name in args.only:
        overrides = CONFIGS[name]
        warm = overrides.get("warm_start_epochs", DemoConfig.warm_start_epochs)
        if args.skip_baselines:
            result = run_demo(DemoConfig(**base, strategies=("graft",), **overrides),
                              progress=False)
            for row in result["summary"]:
                print(json.dumps({"config": name, **_row(row)}), flush=True)
            continue
        if warm not in baselines:
            start = time.perf_counter()
            result = run_demo(DemoConfig(**base, warm_start_epochs=warm, strategies=BASELINES),
                              progress=False)
            baselines[warm] = by_key(result["runs"])
            for row in result["summary"]:
                print(json.dumps({"config": f"baselines (warm_start_epochs={warm})",
                                  **_row(row), "seconds": time.perf_counter() - start}),
                      flush=True)
        result = run_demo(DemoConfig(**base, strategies=("graft",), **overrides),
                          progress=False)
        reference = baselines[warm]
        for row in result["summary"]:
            graft = [r for r in result["runs"] if r["fraction"] == row["fraction"]]
            diffs = {b: float(np.mean([100 * (r["test_accuracy"] - reference[
                (b, r["fraction"], r["seed"])]["test_accuracy"]) for r in graft]))
                for b in BASELINES}
            walls = float(np.mean([r["wall_seconds"] / reference[
                ("budget", r["fraction"], r["seed"])]["wall_seconds"] for r in graft]))
            print(json.dumps({"config": name, **_row(row), "minus": diffs,
                              "wall_vs_budget": walls}), flush=True)
    return 0


def _row(row):
    keys = ("fraction", "strategy", "test_accuracy_mean", "test_accuracy_std", "wall_seconds",
            "selection_share", "feedback_share", "samples_seen")
    return {k: round(row[k], 4) if isinstance(row[k], float) else row[k] for k in keys}


if __name__ == "__main__":
    sys.exit(main())
