"""benchmarks/bench_wall_ratio.py: pairs at equal samples, in alternating order."""

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The script as a module, on a small MNIST-1D draw (``n_samples=600``) instead of the
    demo's."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports bench_defaults
    spec = importlib.util.spec_from_file_location("bench_wall_ratio",
                                                  BENCHMARKS / "bench_wall_ratio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real_load = module.load_data
    monkeypatch.setattr(module, "load_data",
                        lambda config: real_load(replace(config, n_samples=600)))
    yield module
    sys.modules.pop("bench_defaults", None)


def test_pairs_alternate_and_match_samples(bench, monkeypatch, capsys):
    calls = []
    real_run = bench.train_run

    def spy(strategy, fraction, seed, data, config, **kwargs):
        record = real_run(strategy, fraction, seed, data, config, **kwargs)
        calls.append((strategy, seed, kwargs.get("total_samples"), record["samples_seen"]))
        return record

    monkeypatch.setattr(bench, "train_run", spy)
    bench.main(["--seeds", "2", "--repeats", "2", "--epochs", "4", "--fractions", "0.3",
                "--threads", "1"])
    # an untimed GRAFT run per seed, then per repeat and seed a pair whose order
    # alternates with repeat + seed
    assert [(s, seed) for s, seed, _, _ in calls] == [
        ("graft", 0), ("graft", 1),
        ("graft", 0), ("budget", 0), ("budget", 1), ("graft", 1),
        ("budget", 0), ("graft", 0), ("graft", 1), ("budget", 1)]
    graft_samples = {seed: seen for s, seed, _, seen in calls if s == "graft"}
    for strategy, seed, total, seen in calls:
        if strategy == "budget":
            assert total == graft_samples[seed] == seen
        else:
            assert total is None
    out = capsys.readouterr().out
    assert "fraction 0.3: GRAFT wall / budget-matched wall median" in out
    assert "accounted by refits and observe()" in out


def test_unequal_samples_raise(bench, monkeypatch):
    """A budget run that trains other than GRAFT's samples is not a pair: it raises."""
    real_run = bench.train_run

    def short_budget(strategy, fraction, seed, data, config, **kwargs):
        if strategy == "budget":
            kwargs["total_samples"] -= config.batch_size
        return real_run(strategy, fraction, seed, data, config, **kwargs)

    monkeypatch.setattr(bench, "train_run", short_budget)
    with pytest.raises(RuntimeError, match="not at equal samples"):
        bench.main(["--seeds", "1", "--repeats", "1", "--epochs", "4", "--fractions", "0.3",
                    "--threads", "1"])


def test_timed_graft_run_is_checked(bench, monkeypatch):
    """The check compares the budget run with the timed GRAFT run of its pair, not only
    with the untimed run that set the budget."""
    real_run = bench.train_run
    seen = []

    def drifting_graft(strategy, fraction, seed, data, config, **kwargs):
        record = real_run(strategy, fraction, seed, data, config, **kwargs)
        if strategy == "graft":
            seen.append(seed)
            if len(seen) > 1:  # the timed runs: one sample more than the untimed one
                record = {**record, "samples_seen": record["samples_seen"] + 1}
        return record

    monkeypatch.setattr(bench, "train_run", drifting_graft)
    with pytest.raises(RuntimeError, match="not at equal samples"):
        bench.main(["--seeds", "1", "--repeats", "1", "--epochs", "4", "--fractions", "0.3",
                    "--threads", "1"])


@pytest.mark.parametrize("option", ["--seeds", "--repeats", "--epochs", "--threads"])
def test_counts_below_one_are_refused(bench, option, capsys):
    with pytest.raises(SystemExit):
        bench.main([option, "0"])
    assert f"{option} must be at least 1, got 0" in capsys.readouterr().err
