"""The harness behind ``graft-select demo``: GRAFT against what users would do instead.

For every seed the same small torch model is trained with every strategy at the same
sample budget: full data for all epochs, full data stopped at GRAFT's budget with the
schedule compressed to it, RS2, InfoBatch, uniform subsets and GRAFT subsets through
:class:`~graft_select.sampler.GraftBatchSampler` (see :mod:`graft_select.demo.harness`
for the exact definitions). :func:`run_demo` writes ``results.json``, ``results.csv``
and ``results.png``; :func:`format_tables` prints one table per fraction and GRAFT's
paired differences against each baseline.

The modules: ``config`` (DemoConfig and its presets, validation, data, samplers),
``models`` (CNN1D, MLP), ``baselines`` (the baselines' batch samplers), ``training``
(one training run and its clock), ``harness`` (every run of every seed),
``progress`` (plain progress lines), ``report`` (summary, tables, verdict, files),
``plot`` (the figure) and ``energy`` (codecarbon). This package imports torch;
``import graft_select`` does not import it.
"""

from .baselines import InfoBatchSampler, RS2BatchSampler, ShuffledBatchSampler
from .energy import CARBON_HINT
from .harness import (
    DATASETS,
    STRATEGIES,
    DemoConfig,
    check_config,
    config_from_options,
    cosine_rate,
    graft_samples,
    make_batch_sampler,
    plan_seed,
    run_demo,
    train_run,
    wants_feedback,
)
from .models import CNN1D, MLP, build_model
from .report import compare, format_tables, plot_results, summarize, verdict, write_results

__all__ = [
    "CARBON_HINT",
    "CNN1D",
    "DATASETS",
    "MLP",
    "STRATEGIES",
    "DemoConfig",
    "InfoBatchSampler",
    "RS2BatchSampler",
    "ShuffledBatchSampler",
    "build_model",
    "check_config",
    "compare",
    "config_from_options",
    "cosine_rate",
    "format_tables",
    "graft_samples",
    "make_batch_sampler",
    "plan_seed",
    "plot_results",
    "run_demo",
    "summarize",
    "train_run",
    "verdict",
    "wants_feedback",
    "write_results",
]
