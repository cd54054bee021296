"""GRAFT's wall-clock against budget-matched full data, repeated in alternating order.

The cost issue's bar: with the sampler's defaults, GRAFT's wall-clock is at most
1.15x that of full data stopped at the same number of samples (the demo's data and
model, fractions 0.1 and 0.3). One demo run takes 3-6 s here, and on a shared VM
the same run's wall-clock moved by up to 1.55x over 15 tries, so one pair per seed
(``bench_defaults.py``) measures the machine as much as the sampler. This script
runs each seed's pair ``--repeats`` times, alternating which run goes first (GRAFT
first where ``repeat + seed`` is even), and prints per fraction:

- the median, quartiles and mean of the paired ratios GRAFT wall / budget wall;
- the same for the cost (``min(wall-clock, process CPU time)``, the demo's cost);
- ``GRAFT wall / (GRAFT wall - refits - observe())``: the ratio that the sampler's
  own measured seconds account for, from GRAFT's run alone (its training at the
  budget run's speed; the sampler's iteration and the extra epochs' loader
  overhead are not in it).

Both runs of a pair train with the demo's harness (``graft_select.demo``) at the
machine's default threads unless ``--threads`` is given; GRAFT with the sampler's
defaults (only ``fraction``, ``batch_size`` and ``seed`` set) and ``observe`` at
every step, as a user's loop does. Prints one JSON line per run.

Usage::

    python benchmarks/bench_wall_ratio.py [--seeds 3] [--repeats 5] [--fractions 0.1 0.3]
"""

import argparse
import contextlib
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch
from bench_defaults import defaults_factory

from graft_select.demo import DemoConfig
from graft_select.demo.harness import load_data, train_run
from graft_select.demo.training import pinned_threads


def pair(data, config, fraction, seed, total, graft_first):
    """(graft record, budget record) of one pair, in the order asked; ``total`` is
    GRAFT's sample count (from an untimed first run), the budget run's budget."""
    records = {}
    order = ("graft", "budget") if graft_first else ("budget", "graft")
    for strategy in order:
        records[strategy] = train_run(
            strategy, fraction, seed, data, config, sampler_factory=defaults_factory,
            total_samples=None if strategy == "graft" else total)
    return records["graft"], records["budget"]


def summary(values):
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"median {median:.3f}x [quartiles {q1:.3f}, {q3:.3f}], mean {np.mean(values):.3f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--threads", type=int, default=None,
                        help="every thread pool at this size (default: the machine's)")
    args = parser.parse_args(argv)
    for name in ("seeds", "repeats", "epochs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    config = replace(DemoConfig(), epochs=args.epochs, feedback="every", threads=None)
    data = load_data(config)
    threads = args.threads or torch.get_num_threads()
    print(f"MNIST-1D, {args.seeds} seeds x {args.repeats} repeats, {args.epochs} epochs, "
          f"torch threads {threads}, cores {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    start = time.perf_counter()
    ratios = {f: {"wall": [], "cost": [], "accounted": []} for f in args.fractions}
    with pinned_threads(threads) if args.threads else contextlib.nullcontext():
        # an untimed GRAFT run per seed and fraction: its sample count is the budget
        # run's, and it warms the caches and the thread pools
        totals = {(seed, fraction): train_run("graft", fraction, seed, data, config,
                                              sampler_factory=defaults_factory)["samples_seen"]
                  for seed in range(args.seeds) for fraction in args.fractions}
        for repeat in range(args.repeats):
            for seed in range(args.seeds):
                for fraction in args.fractions:
                    first = (repeat + seed) % 2 == 0
                    graft, budget = pair(data, config, fraction, seed,
                                         totals[seed, fraction], graft_first=first)
                    if graft["samples_seen"] != budget["samples_seen"]:
                        raise RuntimeError(
                            f"budget-matched run trained {budget['samples_seen']} samples, "
                            f"GRAFT {graft['samples_seen']}: the pair is not at equal "
                            "samples")
                    spent = graft["selection_seconds"] + graft["feedback_seconds"]
                    ratios[fraction]["wall"].append(
                        graft["wall_seconds"] / budget["wall_seconds"])
                    ratios[fraction]["cost"].append(
                        graft["cost_seconds"] / budget["cost_seconds"])
                    ratios[fraction]["accounted"].append(
                        graft["wall_seconds"] / (graft["wall_seconds"] - spent))
                    for run in (graft, budget):
                        print(json.dumps({"repeat": repeat} | {
                            k: run[k] for k in ("strategy", "fraction", "seed",
                                                "wall_seconds", "cpu_seconds",
                                                "selection_seconds", "feedback_seconds",
                                                "samples_seen", "test_accuracy")}),
                              flush=True)
    for fraction, found in ratios.items():
        print(f"fraction {fraction}: GRAFT wall / budget-matched wall {summary(found['wall'])}"
              f" (<= 1.15x); cost ratio {summary(found['cost'])}; accounted by refits and "
              f"observe() {summary(found['accounted'])}")
    print(f"total {time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
