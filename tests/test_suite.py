"""benchmarks/suite (issue 22's task suite): its code path on a tiny config, and its arithmetic."""

import json
import math
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def suite():
    """The suite's modules, imported as the package ``suite`` from benchmarks/."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from suite import run, stats, training
        yield run, stats, training
    finally:
        sys.path.remove(str(BENCHMARKS))


class TestPairedInterval:
    def test_matches_hand_computation(self, suite):
        """Mean and t-interval of 5 paired differences, computed by hand."""
        _, stats, _ = suite
        a = [80.5, 81.0, 79.8, 80.8, 80.4]
        b = [80.0, 80.0, 80.0, 80.0, 80.0]
        # d = (0.5, 1.0, -0.2, 0.8, 0.4): mean 0.5, sum of squared deviations 0.84,
        # sd = sqrt(0.84 / 4) = 0.458258, t(0.975, 4) = 2.776445,
        # half-width = 2.776445 * 0.458258 / sqrt(5) = 0.568999
        mean, low, high, n = stats.paired_interval(a, b)
        assert n == 5
        assert mean == pytest.approx(0.5)
        assert low == pytest.approx(0.5 - 0.568999, abs=1e-5)
        assert high == pytest.approx(0.5 + 0.568999, abs=1e-5)
        assert stats.verdict(low, high) == "tie"

    def test_two_seeds(self, suite):
        """With 2 pairs the interval uses t(0.975, 1) = 12.706205."""
        _, stats, _ = suite
        mean, low, high, _ = stats.paired_interval([3.0, 5.0], [1.0, 1.0])
        # d = (2, 4): mean 3, sd sqrt(2), half-width 12.706205 * sqrt(2) / sqrt(2)
        assert (mean, low, high) == pytest.approx((3.0, 3.0 - 12.706205, 3.0 + 12.706205))

    def test_one_pair_has_no_interval(self, suite):
        """One seed gives the difference and no interval (verdict n/a)."""
        _, stats, _ = suite
        mean, low, high, n = stats.paired_interval([2.0], [1.5])
        assert (mean, n) == (0.5, 1) and math.isnan(low) and math.isnan(high)
        assert stats.verdict(low, high) == "n/a"

    @pytest.mark.parametrize(("low", "high", "expected"),
                             [(0.1, 0.9, "win"), (-0.9, -0.1, "loss"), (-0.1, 0.9, "tie")])
    def test_verdict(self, suite, low, high, expected):
        """Win above 0, loss below 0, tie across 0."""
        _, stats, _ = suite
        assert stats.verdict(low, high) == expected


CELL = re.compile(r"([+-]\d+\.\d\d) \[([+-]\d+\.\d\d), ([+-]\d+\.\d\d)\] (\*\*win\*\*|tie|"
                  r"\*\*loss\*\*)")


def test_tiny_suite_run(suite, tmp_path):
    """Two tasks, 2 seeds, 3 epochs: every strategy runs, the files and table are sound."""
    run, stats, training = suite
    config = run.SuiteConfig(tasks=("noise5", "regression"), seeds=(0, 1), fractions=(0.3,),
                             epochs=3, size_scale=0.04)
    figure = tmp_path / "suite.png"
    _, text = run.run_suite(config, tmp_path, figure_path=figure, log=lambda line: None)
    assert figure.stat().st_size > 0
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == text
    noise5 = json.loads((tmp_path / "runs" / "noise5.json").read_text())
    assert noise5["complete"]
    strategies = {r["strategy"] for r in noise5["runs"]}
    assert strategies == set(training.STRATEGIES) | {"static_graft", "static_uniform"}
    for seed in (0, 1):  # the baselines see GRAFT's samples
        seen = {r["strategy"]: r["samples_seen"] for r in noise5["runs"]
                if r["seed"] == seed and r["strategy"] in training.STRATEGIES}
        assert len(set(seen.values())) == 1, seen
    main, static = text.split("Static use:")
    rows = [line for line in main.splitlines() if line.startswith("| noise5 |")]
    assert len(rows) == 1
    picked = re.search(r"\| noise5 \| 0.3 \| (\d+) of 200 \| (\d+)% \| \d+% \| \d+% \|",
                       static)
    graft = [r for r in noise5["runs"] if r["strategy"] == "static_graft"
             and r["fraction"] == 0.3]
    assert int(picked.group(1)) == graft[0]["n_selected"]
    # the share of chunks that kept MaxVol's picks, as the fits recorded it
    assert all(0.0 <= r["maxvol_share"] <= 1.0 for r in graft)
    assert int(picked.group(2)) == round(100 * np.mean([r["maxvol_share"] for r in graft]))
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == 6 + len(stats.COMPARISONS)
    by_seed = {(r["strategy"], r["seed"]): r["score"] for r in noise5["runs"]}
    for k, (_, ours, theirs) in enumerate(stats.COMPARISONS):
        mean, low, high, verdict = CELL.fullmatch(cells[4 + k]).groups()
        d = [by_seed[(ours, s)] - by_seed[(theirs, s)] for s in (0, 1)]
        half = 12.706205 * statistics.stdev(d) / math.sqrt(2)
        assert float(mean) == pytest.approx(statistics.mean(d), abs=0.006)
        assert float(low) == pytest.approx(statistics.mean(d) - half, abs=0.006)
        assert float(high) == pytest.approx(statistics.mean(d) + half, abs=0.006)
        expected = stats.verdict(statistics.mean(d) - half, statistics.mean(d) + half)
        assert verdict.strip("*") == expected
    regression = [line for line in main.splitlines() if line.startswith("| regression |")]
    if training.regression_support() is None:
        assert CELL.fullmatch(regression[0].strip("|").split("|")[4].strip())
    else:
        assert "not supported on this commit" in regression[0]
    tally = next(line for line in main.splitlines() if line.startswith("| win / tie / loss"))
    counts = [sum(map(int, c)) for c in re.findall(r"(\d+) / (\d+) / (\d+)", tally)]
    # the static column counts both tasks; the sampler's columns the supported ones
    graft_rows = 2 if training.regression_support() is None else 1
    assert counts == [graft_rows] * (len(stats.COMPARISONS) - 1) + [2]


def test_report_of_the_first_seeds(suite, tmp_path):
    """--report-only --first-seeds N tabulates the runs of the first N seeds only, into
    table_first<N>.md, and keeps table.md."""
    run = suite[0]
    config = run.SuiteConfig(tasks=("noise5",), seeds=(0, 1, 2), fractions=(0.3,), epochs=2,
                             size_scale=0.04, static=False)
    figure = tmp_path / "suite.png"
    run.run_suite(config, tmp_path, figure_path=figure, log=lambda line: None)
    full, full_figure = (tmp_path / "table.md").read_text(encoding="utf-8"), figure.read_bytes()
    text = run.rewrite_report(tmp_path, figure, first_seeds=2)
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == full
    assert figure.read_bytes() == full_figure
    assert (tmp_path / "suite_first2.png").stat().st_size > 0
    assert (tmp_path / "table_first2.md").read_text(encoding="utf-8") == text
    assert text.startswith("The first 2 seeds [0, 1] of this run")
    records = json.loads((tmp_path / "runs" / "noise5.json").read_text())["runs"]
    by_seed = {(r["strategy"], r["seed"]): r["score"] for r in records}
    row = next(line for line in text.splitlines() if line.startswith("| noise5 |"))
    mean, low, high, _ = CELL.fullmatch(row.strip("|").split("|")[4].strip()).groups()
    d = [by_seed[("graft", s)] - by_seed[("uniform", s)] for s in (0, 1)]
    half = 12.706205 * statistics.stdev(d) / math.sqrt(2)  # t(0.975, 1): two seeds
    assert float(mean) == pytest.approx(statistics.mean(d), abs=0.006)
    assert float(low) == pytest.approx(statistics.mean(d) - half, abs=0.006)
    assert float(high) == pytest.approx(statistics.mean(d) + half, abs=0.006)
    with pytest.raises(SystemExit, match="first-seeds"):
        run.rewrite_report(tmp_path, None, first_seeds=4)
