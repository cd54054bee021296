"""GraftBatchSampler with its defaults against the budget-matched baselines, on the demo.

The cost issue's bar: a user who sets only ``fraction``, ``batch_size`` and ``seed``
(the sampler's defaults otherwise: refits spaced by ``max_overhead=0.05``, one
warm-start epoch, refits single-threaded) should find selection at most 5% of
GRAFT's wall-clock, GRAFT's wall-clock at most 1.15x that of full data stopped at
the same number of samples, GRAFT at least as accurate as full data trained for
GRAFT's whole time (at fraction 0.3), and ahead of budget-matched full data by 0.5
point at equal samples.

Each seed trains, through the demo's harness (``graft_select.demo``), GRAFT with
the sampler's defaults (``observe`` at every step, as a user's loop does), GRAFT
with the demo's settings (``refit_every=5``, ``warm_start_epochs=3``) for
reference, full data stopped at GRAFT's samples with its schedule fitted
(``budget``) and full data for GRAFT's wall-clock (``budget_wall``). Machine
default threads unless ``--threads`` is given. Prints one line per fraction and
a JSON line per run.

Usage::

    python benchmarks/bench_defaults.py [--dataset mnist1d] [--seeds 3] [--epochs 20]
"""

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch

from graft_select.demo import DemoConfig, run_demo
from graft_select.demo.harness import make_batch_sampler
from graft_select.sampler import GraftBatchSampler

OVERRIDES = {}  # candidate defaults to try (--set name=value)


def defaults_factory(strategy, n_samples, *, fraction, seed, config, total_samples=None):
    """The sampler's defaults for "graft"; the demo's samplers otherwise."""
    if strategy == "graft":
        return GraftBatchSampler(n_samples, config.batch_size, fraction=fraction, seed=seed,
                                 **OVERRIDES)
    return make_batch_sampler(strategy, n_samples, fraction=fraction, seed=seed,
                              config=config, total_samples=total_samples)


def run(config, factory):
    start = time.perf_counter()
    result = run_demo(config, sampler_factory=factory, progress=False)
    return result["runs"], time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the machine's default)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="try a candidate default, e.g. --set warm_start_epochs=3")
    parser.add_argument("--skip-demo", action="store_true",
                        help="leave out the demo settings' GRAFT runs")
    args = parser.parse_args(argv)
    OVERRIDES.update({k: float(v) if "." in v else int(v)
                      for k, v in (item.split("=") for item in args.set)})
    threads = args.threads or torch.get_num_threads()
    base = replace(DemoConfig(), dataset=args.dataset, seeds=tuple(range(args.seeds)),
                   epochs=args.epochs, fractions=tuple(args.fractions), threads=threads,
                   strategies=("budget", "graft", "budget_wall"), feedback="every")
    print(f"{args.dataset}, {args.seeds} seeds, {args.epochs} epochs, torch threads {threads},"
          f" cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, overrides {OVERRIDES}")
    defaults, seconds = run(base, defaults_factory)
    demo, demo_seconds = ([], 0.0) if args.skip_demo else run(
        replace(base, strategies=("graft",)), make_batch_sampler)
    for run_ in defaults + demo:
        print(json.dumps({k: run_[k] for k in ("strategy", "fraction", "seed",
                                                "test_accuracy", "wall_seconds",
                                                "selection_seconds", "samples_seen")}))
    for fraction in args.fractions:
        pick = {s: [r for r in defaults if r["strategy"] == s and r["fraction"] == fraction]
                for s in ("graft", "budget", "budget_wall")}
        graft_demo = [r for r in demo if r["fraction"] == fraction]
        acc = {s: np.array([r["test_accuracy"] for r in runs]) * 100 for s, runs in
               pick.items()}
        share = np.mean([r["selection_seconds"] / r["wall_seconds"] for r in pick["graft"]])
        wall = np.mean([g["wall_seconds"] / b["wall_seconds"]
                        for g, b in zip(pick["graft"], pick["budget"])])
        lead = acc["graft"] - acc["budget"]
        vs_time = acc["graft"] - acc["budget_wall"]
        demo_acc = np.array([r["test_accuracy"] for r in graft_demo] or [np.nan]) * 100
        print(f"fraction {fraction}: selection share {share:.1%} (<= 5%), wall vs budget "
              f"{wall:.2f}x (<= 1.15), GRAFT {acc['graft'].mean():.2f} +- "
              f"{acc['graft'].std():.2f}, minus budget {lead.mean():+.2f} +- {lead.std():.2f} "
              f"(>= +0.5), minus full data for GRAFT's time {vs_time.mean():+.2f} +- "
              f"{vs_time.std():.2f} (>= 0 at 0.3); demo settings GRAFT "
              f"{demo_acc.mean():.2f} +- {demo_acc.std():.2f} (defaults minus demo "
              f"{(acc['graft'] - demo_acc).mean():+.2f})")
    print(f"total {seconds + demo_seconds:.0f} s")


if __name__ == "__main__":
    main()
