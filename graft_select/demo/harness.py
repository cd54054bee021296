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
- ``"budget_wall"``: full data stopped at the samples that GRAFT's cost of the same
  seed buys at the ``budget`` run's measured speed: the equal-time baseline. The
  cost is ``cost_seconds``, the smaller of a run's training wall-clock and its
  process CPU time (see :mod:`graft_select.demo.training`), so that a neighbour's
  load on a shared machine does not stretch it.

The all-epochs group (fraction 1.0, in the full protocol only) holds ``"full"`` (all
``E`` epochs), native ``"infobatch"`` (``E`` epochs; its budget is what it prunes)
and ``"budget"`` at that InfoBatch run's samples.

Within a seed the strategies run one after the other, and the seeds run one after the
other, so every seed's runs see the machine in about the same state; strategies are
compared within a seed.
"""

import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime, timezone

from .._backend import usable_cores
from .config import (
    DATASETS,
    STRATEGIES,
    SUBSET_STRATEGIES,
    DemoConfig,
    check_config,
    config_from_options,
    graft_samples,
    load_data,
    make_batch_sampler,
)
from .energy import Energy
from .progress import ProgressLines
from .training import cosine_rate, pinned_threads, train_run, wants_feedback

__all__ = ["DATASETS", "STRATEGIES", "SUBSET_STRATEGIES", "DemoConfig", "check_config",
           "config_from_options", "cosine_rate", "graft_samples", "load_data",
           "make_batch_sampler", "plan_seed", "run_demo", "train_run", "wants_feedback"]


def plan_seed(config, seed_position):
    """The (strategy, fraction) runs of one seed, in running order.

    The all-epochs group first (full, native InfoBatch, budget at InfoBatch's
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
    if fraction >= 1.0:  # all-epochs group: native InfoBatch, budget at its samples
        if strategy == "infobatch":
            return None
        return seed_runs[("infobatch", 1.0)]["samples_seen"]
    graft = seed_runs.get(("graft", fraction))
    budget = graft["samples_seen"] if graft else graft_samples(config, n, fraction)
    if strategy == "budget_wall":
        plain = seed_runs[("budget", fraction)]
        return max(1, round(plain["samples_seen"] * graft["cost_seconds"]
                            / plain["cost_seconds"]))
    return budget


def _default_threads():
    return min(usable_cores(), 8)


def _progress_modes(progress):
    """(bars, lines) from run_demo's ``progress`` argument."""
    if progress is None:
        progress = "bars" if sys.stderr.isatty() else "lines"
    if progress not in (True, False, "bars", "lines"):
        raise ValueError(f"The 'progress' parameter of run_demo must be None, True, False, "
                         f"'bars' or 'lines'. Got {progress!r} instead.")
    return progress in (True, "bars"), progress == "lines"


def _train_all(config, data, *, sampler_factory, bars, reporter):
    """Every run of every seed, in plan order; each record gets its energy figures."""
    n = int(data[0].shape[0])
    plans = [plan_seed(config, position) for position in range(len(config.seeds))]
    energy = Energy(config.country_iso_code)
    runs = []
    for seed, plan in zip(config.seeds, plans):
        seed_runs = {}
        for strategy, fraction in plan:
            total = _total_samples(strategy, fraction, seed_runs, config, n)
            tracker = energy.start()
            run = train_run(strategy, fraction, seed, data, config, total_samples=total,
                            sampler_factory=sampler_factory, progress=bars, lines=reporter)
            energy.stop(tracker, run)
            if reporter is not None:
                reporter.run_done(run)
            seed_runs[(strategy, fraction)] = run
            runs.append(run)
    return runs, energy.note


def run_demo(config=None, *, out=None, progress=None, sampler_factory=make_batch_sampler):
    """Train every strategy for every seed (and fraction) and write the results.

    Parameters
    ----------
    config : DemoConfig, default=None
        The settings; ``None`` uses ``DemoConfig()`` (the full protocol; the command
        line's default is :meth:`DemoConfig.short_config`).
    out : str or path, default=None
        Folder for ``results.json``, ``results.csv`` and ``results.png`` (created if
        needed); ``None`` writes nothing.
    progress : {None, True, False, "bars", "lines"}, default=None
        ``"bars"`` (or True): tqdm bars on stderr; ``"lines"``: a plain line per run
        and at most every 10 s within one (for logs and pipes); False: nothing.
        ``None``: bars when stderr is a terminal, lines otherwise.
    sampler_factory : callable, default=make_batch_sampler
        Builds each run's batch sampler; same signature as :func:`make_batch_sampler`.

    Returns
    -------
    result : dict
        ``config``, ``machine``, ``date``, ``dataset``, ``runs`` (one record per
        strategy, fraction and seed; the all-epochs group has fraction 1.0),
        ``summary`` (one row per fraction and strategy), ``comparisons`` (GRAFT
        against each baseline, per fraction), ``verdict`` (the closing lines, in
        words), ``energy_note``, ``elapsed_seconds`` and ``files``.

    Notes
    -----
    Every thread pool (torch's, and NumPy's and SciPy's BLAS and OpenMP pools) is
    limited to ``config.threads`` (default: the usable cores, at most 8) while the
    demo runs, and restored afterwards.
    """
    from .report import compare, machine_info, summarize, verdict, write_results

    started = time.perf_counter()
    config = DemoConfig() if config is None else config
    check_config(config, need_sampler=sampler_factory is make_batch_sampler)
    bars, lines = _progress_modes(progress)
    reporter = None
    if lines:
        n_runs = sum(len(plan_seed(config, p)) for p in range(len(config.seeds)))
        reporter = ProgressLines(n_runs)
        reporter.say(f"graft-select demo: {n_runs} training runs on {config.dataset}; "
                     f"generating the data")
    with pinned_threads(config.threads or _default_threads()), reporter or nullcontext():
        data = load_data(config)
        runs, energy_note = _train_all(config, data, sampler_factory=sampler_factory,
                                       bars=bars, reporter=reporter)
        machine = machine_info(config.device)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "config": asdict(config),
        "dataset": {"name": config.dataset, "n_train": int(data[0].shape[0]),
                    "n_test": int(data[2].shape[0])},
        "energy_note": energy_note,
        "runs": runs,
    }
    result["summary"] = summarize(result)
    result["comparisons"] = compare(result)
    result["verdict"] = verdict(result)
    result["elapsed_seconds"] = time.perf_counter() - started
    result["files"] = write_results(result, out) if out is not None else {}
    return result
