"""The demo's settings: :class:`DemoConfig`, its presets, validation, data and samplers."""

from dataclasses import dataclass, replace

import torch

from .._validation import check_bool, check_int, check_option, check_real
from ..datasets import load_digits_split, make_mnist1d, make_noisy_digits
from .baselines import InfoBatchSampler, RS2BatchSampler, ShuffledBatchSampler

__all__ = ["DATASETS", "SHORT_SEEDS", "SHORT_STRATEGIES", "STRATEGIES", "SUBSET_STRATEGIES",
           "DemoConfig", "check_config", "config_from_options", "graft_samples",
           "load_data", "make_batch_sampler"]

STRATEGIES = ("full", "budget", "rs2", "infobatch", "uniform", "graft", "budget_wall")
SUBSET_STRATEGIES = ("uniform", "graft")  # the ones GraftBatchSampler runs
DATASETS = ("mnist1d", "digits", "noisy_digits")
FEEDBACK = ("refit", "every")
# graft-select demo's default (DemoConfig.short_config): the runs that say whether GRAFT
# pays off, at equal samples and at equal cost, over enough seeds for an interval
SHORT_SEEDS = (0, 1, 2)
SHORT_STRATEGIES = ("budget", "graft", "budget_wall")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo: the defaults are the full protocol (``--full``).

    :meth:`short_config` gives ``graft-select demo``'s default (fewer seeds and
    strategies, about two minutes on two cores) and :meth:`quick_config` the
    CI-sized smoke test.

    ``seeds`` are the seeds themselves (model initialisation, batch order, selection);
    the dataset is generated once with seed 0. ``n_samples`` is the number of MNIST-1D
    signals generated (train and test, 80/20) and must stay None for the digits sets.

    The GRAFT settings: ``refit_every``, ``warm_start_epochs``, ``selection_size`` (rows
    per selection chunk), ``pool_factor``, ``uniform_share``, ``basis``,
    ``n_components``, ``refresh_share`` and ``label_noise_guard`` go to
    GraftBatchSampler and its GraftSelector (the ``uniform`` strategy runs without the
    guard: it is the plain uniform-subset baseline). ``feedback``:
    ``"every"`` (the default) calls ``observe`` in every epoch, as a user's loop does;
    ``"refit"`` only in the last epoch before each refit. With ``pool_factor=1.0`` both
    give the same subsets, since the subset is fixed between refits and the last
    observation of a sample wins, and ``"refit"`` costs ``refit_every`` times less;
    with a pool the epochs between refits train different draws of it, and only
    ``"every"`` gives the next refit the newest values of every sample trained.
    """

    dataset: str = "mnist1d"
    fractions: tuple = (0.1, 0.3)
    seeds: tuple = (0, 1, 2, 3, 4)
    epochs: int = 20
    refit_every: int = 5
    warm_start_epochs: int = 3
    batch_size: int = 128
    selection_size: int | None = 128
    pool_factor: float = 2.0
    uniform_share: float = 0.0
    basis: str = "gradients"
    n_components: int | None = None
    refresh_share: float = 0.0
    label_noise_guard: bool = True
    feedback: str = "every"
    lr: float = 1e-2
    n_samples: int | None = None
    strategies: tuple = STRATEGIES
    device: str = "cpu"
    threads: int | None = None
    country_iso_code: str = "USA"
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides):
        """A smoke test: small data, few epochs, one seed, one fraction (under a minute).

        Its accuracies mean nothing; the demo's output and plot say so.
        """
        settings = dict(
            fractions=(0.3,), seeds=(0,), epochs=3, refit_every=1, warm_start_epochs=1,
            n_samples=3000, quick=True,
        )
        if overrides.get("dataset", "mnist1d") != "mnist1d":
            settings["n_samples"] = None
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def short_config(cls, **overrides):
        """``graft-select demo``'s default: about two minutes on two CPU cores.

        The protocol of ``DemoConfig()`` (same data, model, epochs and GRAFT
        settings) with 3 seeds and the runs that answer "does GRAFT pay off?":
        GRAFT, full data stopped at GRAFT's samples (``budget``) and full data
        for GRAFT's cost (``budget_wall``), at fractions 0.1 and 0.3.
        ``DemoConfig()`` itself is the full protocol (``--full``).
        """
        settings = dict(seeds=SHORT_SEEDS, strategies=SHORT_STRATEGIES)
        settings.update(overrides)
        return cls(**settings)


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
        pool_factor=config.pool_factor,
        label_noise_guard=config.label_noise_guard and strategy != "uniform",
    )


def load_data(config):
    """Return ``(X_train, y_train, X_test, y_test)`` NumPy arrays of the config's dataset."""
    if config.dataset == "digits":
        return load_digits_split(random_state=0)
    if config.dataset == "noisy_digits":
        return make_noisy_digits(random_state=0)
    return make_mnist1d(config.n_samples or 30_000, random_state=0)


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
        raise ValueError("The 'budget_wall' strategy of run_demo matches GRAFT's cost at "
                         "the 'budget' run's speed: add 'graft' and 'budget' to "
                         "strategies or drop 'budget_wall'.")
    check_int(config.epochs, "epochs", owner, low=1)
    check_int(config.refit_every, "refit_every", owner, low=1)
    check_int(config.warm_start_epochs, "warm_start_epochs", owner, low=0)
    check_int(config.batch_size, "batch_size", owner, low=1)
    check_real(config.uniform_share, "uniform_share", owner, low=0.0, high=1.0, closed="left")
    check_real(config.refresh_share, "refresh_share", owner, low=0.0, high=1.0)
    check_real(config.pool_factor, "pool_factor", owner, low=1.0)
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


def config_from_options(*, dataset="mnist1d", quick=False, full=False, **options):
    """A DemoConfig from command-line style options; None values keep the defaults.

    ``quick`` starts from :meth:`DemoConfig.quick_config`, ``full`` from
    ``DemoConfig()`` (the full protocol), neither from :meth:`DemoConfig.short_config`.
    ``threads`` defaults to 1 here (``DemoConfig``'s None means the usable cores).
    """
    if quick and full:
        raise ValueError("--quick and --full exclude each other: --quick is a smoke test "
                         "on small data, --full the 5-seed protocol.")
    options = {k: v for k, v in options.items() if v is not None}
    # The demo's models are tiny: a second thread gains nothing on them, and on a
    # shared machine threads that wait on each other make a step up to 10x slower.
    options.setdefault("threads", 1)
    for name in ("fractions", "strategies"):
        if name in options:
            options[name] = tuple(options[name])
    if "seeds" in options:
        options["seeds"] = tuple(range(options["seeds"]))
    if quick:
        return DemoConfig.quick_config(dataset=dataset, **options)
    if full:
        return replace(DemoConfig(), dataset=dataset, **options)
    return DemoConfig.short_config(dataset=dataset, **options)
