"""The demo harness: models, the baselines' samplers, training runs, results and energy."""

import csv
import json
import sys
import time
import types
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from graft_select import demo  # noqa: E402
from graft_select.demo import (  # noqa: E402
    CNN1D,
    MLP,
    DemoConfig,
    InfoBatchSampler,
    RS2BatchSampler,
    ShuffledBatchSampler,
    check_config,
    cosine_rate,
    format_tables,
    graft_samples,
    make_batch_sampler,
    plan_seed,
    run_demo,
    train_run,
    wants_feedback,
)
from graft_select.demo.harness import load_data  # noqa: E402
from graft_select.demo.report import time_to_accuracy  # noqa: E402

TINY = dict(n_samples=300, epochs=2, batch_size=32, fractions=(0.3,), seeds=(0,),
            warm_start_epochs=1, refit_every=1, threads=1)


class FakeSubsetSampler(ShuffledBatchSampler):
    """GraftBatchSampler's interface, with the first ``fraction`` of a shuffled order."""

    def __init__(self, n_samples, batch_size, *, fraction, seed, warm_start_epochs, epochs):
        super().__init__(n_samples, batch_size, seed=seed, epochs=epochs + 1)
        self.fraction, self.warm_start_epochs = fraction, warm_start_epochs
        self.selection_seconds, self.last_refit, self.observed = 0.0, None, []

    def observe(self, indices, *, embeddings=None, logits=None, targets=None, gradients=None):
        assert embeddings.shape[0] == logits.shape[0] == targets.shape[0] == len(indices)
        assert not embeddings.requires_grad and not logits.requires_grad
        self.observed.append((self.epoch, indices.tolist()))

    def _order(self):
        flat = super()._order()
        if self.epoch < self.warm_start_epochs:
            return flat
        start = time.perf_counter()
        keep = flat[:max(1, round(self.fraction * len(flat)))]
        seconds = time.perf_counter() - start
        self.selection_seconds += seconds
        self.last_refit = types.SimpleNamespace(fraction=len(keep) / self.n_samples,
                                                gradient_error=0.5, seconds=seconds)
        return keep


def fake_factory(strategy, n_samples, *, fraction, seed, config, total_samples=None):
    """The demo's factory, with FakeSubsetSampler for the GraftBatchSampler strategies."""
    if strategy not in ("uniform", "graft"):
        return make_batch_sampler(strategy, n_samples, fraction=fraction, seed=seed,
                                  config=config, total_samples=total_samples)
    return FakeSubsetSampler(n_samples, config.batch_size, fraction=fraction, seed=seed,
                             warm_start_epochs=config.warm_start_epochs, epochs=config.epochs)


@pytest.fixture(scope="module")
def fake_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(DemoConfig(**TINY), out=out, progress=False, sampler_factory=fake_factory)


def _flat(sampler, epoch):
    sampler.set_epoch(epoch)
    return [i for batch in sampler for i in batch]


class TestModels:
    def test_cnn_returns_logits_and_embedding(self):
        """CNN1D gives (n, 10) logits, and the embedding its head reads on request."""
        model = CNN1D()
        x = torch.randn(5, 40)
        logits, embedding = model(x, return_embedding=True)
        assert logits.shape == (5, 10) and embedding.shape[0] == 5
        torch.testing.assert_close(model.head(embedding), logits)
        torch.testing.assert_close(model(x), logits)

    def test_mlp_returns_logits_and_embedding(self):
        """MLP gives (n, 10) logits and a (n, width) embedding."""
        logits, embedding = MLP(n_features=64)(torch.randn(3, 64), return_embedding=True)
        assert logits.shape == (3, 10) and embedding.shape == (3, 64)


class TestShuffledBatchSampler:
    def test_every_index_once(self):
        """An epoch yields every index exactly once, in batches of batch_size (last shorter)."""
        sampler = ShuffledBatchSampler(103, 10, seed=0, epochs=1)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 11
        assert sorted(i for b in batches for i in b) == list(range(103))
        assert all(isinstance(i, int) for b in batches for i in b)

    def test_seeded_per_epoch(self):
        """Same seed and epoch give the same order; another epoch gives another."""
        a = ShuffledBatchSampler(50, 10, seed=1, epochs=2)
        b = ShuffledBatchSampler(50, 10, seed=1, epochs=2)
        assert _flat(a, 0) == _flat(b, 0)
        assert _flat(a, 0) != _flat(b, 1)

    def test_epochs_then_empty(self):
        """With epochs=E, epoch E has no batches."""
        sampler = ShuffledBatchSampler(20, 8, epochs=2)
        sampler.set_epoch(2)
        assert len(sampler) == 0 and list(sampler) == []

    def test_budget_stops_at_total_samples(self):
        """total_samples: full shuffled epochs, then a cut epoch; exactly that many samples."""
        sampler = ShuffledBatchSampler(50, 16, seed=3, total_samples=130)
        seen = [_flat(sampler, e) for e in range(4)]
        assert [len(s) for s in seen] == [50, 50, 30, 0]
        assert sorted(seen[0]) == sorted(seen[1]) == list(range(50))
        assert len(set(seen[2])) == 30
        assert sum(len(s) for s in seen) == sampler.total_samples == 130

    def test_same_epochs_as_graft_sampler_at_fraction_one(self):
        """ShuffledBatchSampler's epochs are GraftBatchSampler(fraction=1.0)'s epochs."""
        from graft_select.sampler import GraftBatchSampler

        sampler = ShuffledBatchSampler(53, 8, seed=4, epochs=3)
        graft = GraftBatchSampler(53, 8, fraction=1.0, seed=4)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            graft.set_epoch(epoch)
            assert list(sampler) == list(graft)

    def test_needs_epochs_or_budget(self):
        """Exactly one of epochs and total_samples."""
        with pytest.raises(ValueError, match="exactly one"):
            ShuffledBatchSampler(10, 2)
        with pytest.raises(ValueError, match="exactly one"):
            ShuffledBatchSampler(10, 2, epochs=1, total_samples=5)


class TestRS2BatchSampler:
    def test_rounds_without_replacement(self):
        """Rounds of round(f n) samples; no sample twice before every sample once."""
        sampler = RS2BatchSampler(100, 7, fraction=0.3, total_samples=600, seed=0)
        rounds = [_flat(sampler, e) for e in range(21)]
        assert [len(r) for r in rounds] == [30] * 20 + [0]
        stream = [i for r in rounds for i in r]
        for begin in range(0, 600, 100):  # every pass of 100 is a permutation
            assert sorted(stream[begin:begin + 100]) == list(range(100))
        assert all(len(set(r)) == len(r) for r in rounds)  # also across the wrap

    def test_budget_cut_and_seeded(self):
        """The last round is cut to meet total_samples; the same seed gives the same rounds."""
        a = RS2BatchSampler(40, 4, fraction=0.25, total_samples=55, seed=2)
        b = RS2BatchSampler(40, 4, fraction=0.25, total_samples=55, seed=2)
        sizes = [len(_flat(a, e)) for e in range(7)]
        assert sizes == [10, 10, 10, 10, 10, 5, 0]
        assert [_flat(a, e) for e in range(6)] == [_flat(b, e) for e in range(6)]
        assert _flat(a, 0) != _flat(RS2BatchSampler(40, 4, fraction=0.25, total_samples=55,
                                                    seed=3), 0)


class TestInfoBatchSampler:
    def _after_first_epoch(self, **kwargs):
        sampler = InfoBatchSampler(200, 20, seed=0, **kwargs)
        first = _flat(sampler, 0)
        losses = torch.where(torch.arange(200) < 100, 0.1, 2.0)  # rows < 100 well learned
        sampler.record_losses(torch.tensor(first), losses[first])
        return sampler, first

    def test_first_epoch_is_full(self):
        """All scores start equal, so nothing is below the mean in epoch 0."""
        _, first = self._after_first_epoch(epochs=8)
        assert sorted(first) == list(range(200))

    def test_prunes_well_learned_at_random_and_rescales(self):
        """Below-mean samples are kept with probability 1 - r and weighted 1 / (1 - r)."""
        sampler, _ = self._after_first_epoch(epochs=8, prune_ratio=0.5)
        second = np.array(_flat(sampler, 1))
        assert len(set(second.tolist())) == len(second)
        assert set(range(100, 200)) <= set(second.tolist())  # hard samples always kept
        kept_easy = second[second < 100]
        assert 30 <= len(kept_easy) <= 70  # about half of the 100 easy ones
        weights = sampler.loss_weights(second).numpy()
        assert np.all(weights[second < 100] == 2.0) and np.all(weights[second >= 100] == 1.0)

    def test_prune_ratio_sets_the_weight(self):
        """r = 0.75 keeps about a quarter of the easy samples, each weighted 4."""
        sampler, _ = self._after_first_epoch(epochs=8, prune_ratio=0.75)
        second = np.array(_flat(sampler, 1))
        assert 10 <= int((second < 100).sum()) <= 45
        assert np.all(sampler.loss_weights(second[second < 100]).numpy() == 4.0)

    def test_anneals_to_full_data(self):
        """Native: epochs e >= delta * epochs are full, with weight 1 everywhere."""
        sampler, _ = self._after_first_epoch(epochs=4, delta=0.5)
        assert len(_flat(sampler, 1)) < 200
        sampler.scores[:100] = 0.1  # keep the easy samples easy
        third = _flat(sampler, 2)
        assert sorted(third) == list(range(200))
        assert np.all(sampler.loss_weights(third).numpy() == 1.0)

    def test_budget_mode_prunes_then_anneals_and_stops(self):
        """Budget: prune while fewer than delta * total were planned; stop at the total."""
        sampler, _ = self._after_first_epoch(total_samples=900, delta=0.5)
        sizes, planned_before, e = [200], [0], 1
        while True:
            planned_before.append(sum(sizes))
            order = _flat(sampler, e)
            if not order:
                break
            sizes.append(len(order))
            sampler.scores[:100], sampler.scores[100:] = 0.1, 2.0  # easy stay easy
            e += 1
        assert sum(sizes) == 900
        for size, before in zip(sizes[1:], planned_before[1:]):
            if before < 450:
                assert size < 200  # pruning
            else:
                assert size == min(200, 900 - before)  # annealed: full data, cut at the end
        assert any(before >= 450 for before in planned_before[1:len(sizes)])

    def test_epochs_in_order(self):
        """Plans depend on earlier losses, so epochs are planned in order."""
        sampler = InfoBatchSampler(10, 2, epochs=3)
        sampler.set_epoch(1)
        with pytest.raises(ValueError, match="epoch 0"):
            len(sampler)

    def test_training_records_losses_and_weights(self):
        """train_run feeds InfoBatch every batch's unweighted losses as its scores."""
        made = []

        def factory(strategy, n, **kwargs):
            made.append(make_batch_sampler(strategy, n, **kwargs))
            return made[-1]

        config = DemoConfig(**{**TINY, "epochs": 3, "strategies": ("infobatch",)})
        run = train_run("infobatch", 1.0, 0, load_data(config), config, sampler_factory=factory)
        sampler = made[0]
        assert not np.any(sampler.scores == 1.0)  # every sample's score was recorded
        assert run["samples_seen"] < 3 * 240 and run["feedback_seconds"] > 0


class TestSchedule:
    def test_cosine_over_the_planned_samples(self):
        """The rate starts at lr, is lr / 2 halfway and 0 at the end (and stays there)."""
        assert cosine_rate(0.1, 0, 500) == 0.1
        assert cosine_rate(0.1, 250, 500) == pytest.approx(0.05)
        assert cosine_rate(0.1, 500, 500) == pytest.approx(0.0, abs=1e-12)
        assert cosine_rate(0.1, 700, 500) == pytest.approx(0.0, abs=1e-12)

    def test_graft_samples_formula(self):
        """W epochs of n, then E - W epochs of round(f n)."""
        config = DemoConfig(epochs=20, warm_start_epochs=3)
        assert graft_samples(config, 24000, 0.3) == 3 * 24000 + 17 * 7200
        assert graft_samples(replace(config, warm_start_epochs=30), 100, 0.3) == 2000

    def test_feedback_only_before_refits(self):
        """'refit' observes in the epoch before each refit; 'every' in every epoch."""
        config = DemoConfig(epochs=20, warm_start_epochs=3, refit_every=5, feedback="refit")
        observed = [e for e in range(20) if wants_feedback("graft", e, config)]
        assert observed == [2, 7, 12, 17]
        assert not any(wants_feedback("budget", e, config) for e in range(20))
        every = replace(config, feedback="every")
        assert all(wants_feedback("uniform", e, every) for e in range(20))


class TestPlan:
    def test_order_within_a_seed(self):
        """Reference group first; per fraction GRAFT first, budget_wall last, rest rotated."""
        config = DemoConfig(fractions=(0.1,))
        plan = plan_seed(config, 0)
        assert plan[:3] == [("full", 1.0), ("infobatch", 1.0), ("budget", 1.0)]
        assert plan[3] == ("graft", 0.1) and plan[-1] == ("budget_wall", 0.1)
        middle = [s for s, _ in plan[4:-1]]
        assert sorted(middle) == ["budget", "infobatch", "rs2", "uniform"]
        assert [s for s, _ in plan_seed(config, 1)[4:-1]] == middle[1:] + middle[:1]


class TestRunDemo:
    def test_writes_three_files(self, fake_result):
        """results.json, results.csv and results.png are written."""
        files = fake_result["files"]
        assert set(files) == {"json", "csv", "png"}
        with open(files["png"], "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

    def test_json_records_every_run(self, fake_result):
        """One run per strategy and group, with its accuracy curve, time and samples."""
        with open(fake_result["files"]["json"]) as handle:
            saved = json.load(handle)
        runs = {(r["strategy"], r["fraction"]): r for r in saved["runs"]}
        assert set(runs) == {("full", 1.0), ("infobatch", 1.0), ("budget", 1.0),
                             *((s, 0.3) for s in ("graft", "budget", "uniform", "rs2",
                                                  "infobatch", "budget_wall"))}
        for run in saved["runs"]:
            walls = [p["wall_seconds"] for p in run["curve"]]
            assert walls == sorted(walls) and walls[0] > 0
            assert 0 <= run["test_accuracy"] <= 1 and run["curve"][-1]["epoch_end"]
        assert runs[("full", 1.0)]["samples_seen"] == 2 * 240
        budget = 240 + 72
        for strategy in ("graft", "budget", "uniform", "rs2", "infobatch"):
            assert runs[(strategy, 0.3)]["samples_seen"] == budget
        assert runs[("budget", 1.0)]["samples_seen"] == runs[("infobatch", 1.0)]["samples_seen"]
        assert [r["epoch"] for r in runs[("graft", 0.3)]["refits"]] == [1]
        assert saved["machine"]["torch"] == torch.__version__
        assert saved["dataset"] == {"name": "mnist1d", "n_train": 240, "n_test": 60}

    def test_budget_wall_matches_graft_cost(self, fake_result):
        """budget_wall's samples are budget's scaled by GRAFT's over budget's cost_seconds."""
        runs = {r["strategy"]: r for r in fake_result["runs"] if r["fraction"] == 0.3}
        expected = runs["budget"]["samples_seen"] * (
            runs["graft"]["cost_seconds"] / runs["budget"]["cost_seconds"])
        assert runs["budget_wall"]["samples_seen"] == max(1, round(expected))

    def test_cost_is_the_smaller_of_wall_and_cpu(self, fake_result):
        """Each run and curve point records CPU time; cost_seconds = min(wall, CPU)."""
        for run in fake_result["runs"]:
            assert run["cpu_seconds"] > 0
            for point in (run, *run["curve"]):
                assert point["cost_seconds"] == min(point["wall_seconds"], point["cpu_seconds"])

    def test_cost_ignores_a_neighbours_load(self, monkeypatch):
        """Wall-clock stretched by other processes (CPU time not) leaves the cost as is."""
        from graft_select.demo import training

        clock = {"wall": 0.0, "cpu": 0.0}

        def tick():  # every reading: 1 s of CPU time in 5 s of wall-clock
            clock["wall"] += 5.0
            clock["cpu"] += 1.0

        monkeypatch.setattr(training.time, "perf_counter", lambda: (tick(), clock["wall"])[1])
        monkeypatch.setattr(training.time, "process_time", lambda: clock["cpu"])
        timer = training._Clock(torch.device("cpu"))
        timer.start()
        timer.stop()
        assert timer.total == 5.0 and timer.cpu_total == 1.0 and timer.cost == 1.0

    def test_only_graft_feedback_epochs_observed(self, fake_result):
        """feedback="refit": the loop observes only in the epoch before each refit
        (warm-start epoch 0 here); "every" (the default) in every epoch."""
        for feedback, epochs in (("refit", [0, 2]), ("every", [0, 1, 2, 3])):
            made = []

            def factory(strategy, n, made=made, **kwargs):
                made.append(fake_factory(strategy, n, **kwargs))
                return made[-1]

            config = DemoConfig(**{**TINY, "epochs": 4, "refit_every": 2, "feedback": feedback})
            train_run("graft", 0.3, 0, load_data(config), config, sampler_factory=factory)
            assert sorted({epoch for epoch, _ in made[0].observed}) == epochs

    def test_csv_has_a_row_per_group(self, fake_result):
        """The CSV summary has one row per group and strategy, with shares and speed-up."""
        with open(fake_result["files"]["csv"], newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 9
        assert float(rows[0]["speedup_vs_full"]) == 1.0
        assert all(float(r["selection_share"]) < 1 and float(r["feedback_share"]) < 1
                   for r in rows)

    def test_comparisons_are_paired_differences(self, fake_result):
        """GRAFT minus each baseline, in points, at equal samples (budget_wall: wall-clock)."""
        runs = {r["strategy"]: r for r in fake_result["runs"] if r["fraction"] == 0.3}
        comparisons = {c["baseline"]: c for c in fake_result["comparisons"]}
        assert set(comparisons) == {"budget", "rs2", "infobatch", "uniform", "budget_wall"}
        for name, c in comparisons.items():
            expected = 100 * (runs["graft"]["test_accuracy"] - runs[name]["test_accuracy"])
            assert c["difference_mean"] == pytest.approx(expected)
        assert comparisons["budget_wall"]["equal"] == "cost"
        assert comparisons["budget"]["equal"] == "samples"

    def test_time_to_accuracy(self):
        """The cost of the first evaluation at or above the target, else None."""
        run = {"curve": [{"test_accuracy": a, "cost_seconds": w}
                         for a, w in ((0.5, 1.0), (0.8, 2.0), (0.7, 3.0), (0.9, 4.0))]}
        assert time_to_accuracy(run, 0.75) == 2.0
        assert time_to_accuracy(run, 0.85) == 4.0
        assert time_to_accuracy(run, 0.95) is None

    def test_energy_columns_empty_and_the_table_says_why(self, fake_result):
        """Without codecarbon the energy cells are empty; the printed notes name the extra."""
        if fake_result["energy_note"] is None:
            pytest.skip("codecarbon is installed here")
        with open(fake_result["files"]["csv"], newline="") as handle:
            row = next(csv.DictReader(handle))
        assert row["energy_kwh"] == row["co2_kg"] == ""
        assert demo.CARBON_HINT in format_tables(fake_result)
        assert fake_result["energy_note"] == demo.CARBON_HINT

    def test_csv_columns_are_numeric(self, fake_result):
        """Every CSV cell but the strategy's name is a number or empty."""
        with open(fake_result["files"]["csv"], newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            for name, cell in row.items():
                if name != "strategy" and cell != "":
                    float(cell)

    def test_table_per_group(self, fake_result):
        """The printed table has a header per group, a row per strategy, the differences."""
        table = format_tables(fake_result)
        assert "fraction 0.3" in table and "all epochs" in table
        for strategy in ("full", "budget", "rs2", "infobatch", "uniform", "graft",
                         "budget_wall"):
            assert any(line.startswith(strategy) for line in table.splitlines())
        assert "vs budget_wall  at equal cost" in table

    def test_same_seed_same_result(self):
        """Two runs with the same seed train identically (accuracy per evaluation)."""
        config = DemoConfig(**TINY, strategies=("full",))
        a = run_demo(config, progress=False)["runs"][0]["curve"]
        b = run_demo(config, progress=False)["runs"][0]["curve"]
        assert [e["test_accuracy"] for e in a] == [e["test_accuracy"] for e in b]

    def test_no_global_state_changed(self):
        """Global RNG states, torch's and the BLAS thread counts are as before the run."""
        from threadpoolctl import threadpool_info

        torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()  # noqa: NPY002 (the legacy global generator is what is checked)
        threads, pools = torch.get_num_threads(), threadpool_info()
        run_demo(DemoConfig(**{**TINY, "threads": threads + 1}, strategies=("full",)),
                 progress=False)
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002 (the legacy global generator is what is checked)
        assert torch.get_num_threads() == threads
        assert threadpool_info() == pools

    def test_threads_pin_every_pool(self, monkeypatch):
        """--threads N holds torch and every BLAS/OpenMP pool at N during the runs."""
        from threadpoolctl import threadpool_info

        from graft_select.demo import harness

        seen = []

        def spy(*args, **kwargs):
            seen.append((torch.get_num_threads(),
                         {pool["num_threads"] for pool in threadpool_info()}))
            return train_run(*args, **kwargs)

        monkeypatch.setattr(harness, "train_run", spy)
        run_demo(DemoConfig(**{**TINY, "threads": 1}, strategies=("full",)), progress=False)
        assert seen == [(1, {1})]

    @pytest.mark.parametrize(("dataset", "n_train"), [("digits", 1347),
                                                      ("noisy_digits", 6 * 1347)])
    def test_digits_with_mlp(self, dataset, n_train):
        """--dataset digits and noisy_digits train the MLP."""
        config = DemoConfig(dataset=dataset, epochs=1, seeds=(0,), fractions=(0.3,),
                            strategies=("full",), threads=1)
        result = run_demo(config, progress=False)
        assert result["dataset"]["n_train"] == n_train
        assert result["runs"][0]["test_accuracy"] > 0.5

    def test_codecarbon_fills_energy(self, monkeypatch):
        """With codecarbon importable, each run gets kWh and kg from its offline tracker."""
        created = []

        class Tracker:
            def __init__(self, **kwargs):
                created.append(kwargs)

            def start(self):
                pass

            def stop(self):
                self.final_emissions_data = types.SimpleNamespace(energy_consumed=2e-6)
                return 1e-6

        fake = types.ModuleType("codecarbon")
        fake.OfflineEmissionsTracker = Tracker
        monkeypatch.setitem(sys.modules, "codecarbon", fake)
        result = run_demo(DemoConfig(**TINY, strategies=("full",), country_iso_code="FRA"),
                          progress=False)
        assert created == [dict(country_iso_code="FRA", log_level="error",
                                save_to_file=False)]
        assert result["energy_note"] is None
        assert result["summary"][0]["energy_kwh"] == 2e-6
        assert result["summary"][0]["co2_kg"] == 1e-6

    def test_without_codecarbon(self, monkeypatch):
        """Without codecarbon the runs still complete and the note names the extra."""
        monkeypatch.setitem(sys.modules, "codecarbon", None)
        result = run_demo(DemoConfig(**TINY, strategies=("full",)), progress=False)
        assert result["energy_note"] == demo.CARBON_HINT
        assert result["summary"][0]["energy_kwh"] is None


@pytest.mark.slow
class TestWithGraftBatchSampler:
    def test_end_to_end(self, tmp_path):
        """The real GraftBatchSampler runs uniform and graft; GRAFT's budget is the formula."""
        pytest.importorskip("graft_select.sampler")
        config = DemoConfig(**{**TINY, "n_samples": 600, "epochs": 3})
        result = run_demo(config, out=tmp_path, progress=False)
        runs = {(r["strategy"], r["fraction"]): r for r in result["runs"]}
        graft = runs[("graft", 0.3)]
        assert graft["refits"] and graft["selection_seconds"] > 0
        assert graft["samples_seen"] == graft_samples(config, 480, 0.3) == graft[
            "planned_samples"]
        assert runs[("budget", 0.3)]["samples_seen"] == graft["samples_seen"]
        assert (tmp_path / "results.png").is_file()

    def test_refit_feedback_gives_the_same_training(self):
        """With pool_factor=1.0 (every epoch trains the refit's subset), observing only
        before refits trains exactly as observing every epoch; with a pool it does not
        (the epochs draw other samples, whose newest values only "every" records)."""
        pytest.importorskip("graft_select.sampler")
        config = DemoConfig(**{**TINY, "n_samples": 600, "epochs": 6, "warm_start_epochs": 1,
                               "refit_every": 2, "feedback": "refit"})
        data = load_data(config)
        curves = {}
        for pool_factor in (1.0, 2.0):
            for feedback in ("refit", "every"):
                run = train_run("graft", 0.3, 0, data,
                                replace(config, feedback=feedback, pool_factor=pool_factor))
                curves[pool_factor, feedback] = [p["test_accuracy"] for p in run["curve"]]
        assert curves[1.0, "refit"] == curves[1.0, "every"]
        assert curves[2.0, "refit"] != curves[2.0, "every"]
        # that "refit" observes fewer epochs is test_only_graft_feedback_epochs_observed;
        # its feedback_seconds are not compared here: timings on a shared machine vary


class TestCheckConfig:
    @pytest.mark.parametrize(("changes", "match"), [
        ({"dataset": "mnist"}, "dataset"),
        ({"fractions": (0.0,)}, "fractions"),
        ({"fractions": (1.0,)}, "fractions"),
        ({"seeds": ()}, "at least one"),
        ({"strategies": ("full", "random")}, "strategies"),
        ({"strategies": ("graft", "budget_wall")}, "budget_wall"),
        ({"epochs": 0}, "epochs"),
        ({"dataset": "digits", "n_samples": 100}, "mnist1d only"),
        ({"device": "tpu"}, "device"),
        ({"selection_size": 1}, "selection_size"),
        ({"uniform_share": 1.0}, "uniform_share"),
        ({"feedback": "sometimes"}, "feedback"),
        ({"basis": "auto"}, "basis"),
    ])
    def test_bad_settings(self, changes, match):
        """Bad settings raise ValueError naming the setting."""
        with pytest.raises(ValueError, match=match):
            check_config(DemoConfig(**changes), need_sampler=False)

    @pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
    def test_cuda_unavailable(self):
        """device='cuda' without CUDA is an error, not a silent CPU run."""
        with pytest.raises(ValueError, match="cuda"):
            check_config(DemoConfig(device="cuda"), need_sampler=False)

    def test_quick_config(self):
        """The quick config is one seed, one fraction and a small dataset."""
        config = DemoConfig.quick_config()
        assert config.quick and len(config.seeds) == 1 and len(config.fractions) == 1
        assert config.n_samples <= 5000 and config.epochs <= 5
        assert DemoConfig.quick_config(dataset="digits").n_samples is None
        assert DemoConfig.quick_config(dataset="noisy_digits").n_samples is None


class TestVerdict:
    def test_verdict_numbers_are_the_saved_comparisons(self, fake_result):
        """Each verdict line's +x +- y are results.json's paired differences, rounded."""
        import re

        with open(fake_result["files"]["json"]) as handle:
            saved = json.load(handle)
        comparisons = [c for c in saved["comparisons"] if c["fraction"] == 0.3]
        line = next(v for v in saved["verdict"] if v.startswith("GRAFT 0.3:"))
        assert {c["n_seeds"] for c in comparisons} == {1}  # one seed: no std in the line
        found = re.findall(r"([+-]\d+\.\d\d) points against", line)
        assert found == [f"{c['difference_mean']:+.2f}" for c in comparisons]

    def test_printed_report_ends_with_the_verdict(self, fake_result):
        """format_tables closes with the saved verdict lines, word for word."""
        lines = format_tables(fake_result).splitlines()
        assert lines[-len(fake_result["verdict"]):] == fake_result["verdict"]
        assert "budget-matched full data at equal samples" in fake_result["verdict"][0]

    @pytest.mark.parametrize(("mean", "std", "word"), [(0.8, 0.3, "ahead of"),
                                                       (-0.8, 0.3, "behind"),
                                                       (0.2, 0.3, "level with")])
    def test_words_follow_mean_and_spread(self, fake_result, mean, std, word):
        """"ahead of" when the mean exceeds its std, "behind" below -std, else "level with"."""
        result = dict(fake_result, comparisons=[dict(
            fraction=0.3, baseline="budget", equal="samples", n_seeds=3,
            difference_mean=mean, difference_std=std, wall_ratio=1.0, cost_ratio=1.1)])
        assert demo.verdict(result) == [
            f"GRAFT 0.3: {word} budget-matched full data at equal samples by {mean:+.2f} +- "
            f"{std:.2f} points (GRAFT's cost 1.10x budget-matched full data's); "
            f"mean +- std over 3 seed(s)."]

    def test_one_seed_gets_no_words_of_standing(self, fake_result):
        """One seed has a spread of 0, so any difference read as "ahead of" (+0.05 +-
        0.00): the line now gives the differences and asks for more seeds."""
        result = dict(fake_result, comparisons=[dict(
            fraction=0.3, baseline="budget", equal="samples", n_seeds=1,
            difference_mean=0.05, difference_std=0.0, wall_ratio=1.0, cost_ratio=1.1)])
        assert demo.verdict(result) == [
            "GRAFT 0.3: +0.05 points against budget-matched full data at equal samples "
            "(GRAFT's cost 1.10x budget-matched full data's); one seed, so no spread to "
            "judge these by: run --seeds 3 or more for a verdict."]

    def test_quick_is_marked_as_a_smoke_test(self, fake_result):
        """A --quick result opens and closes its report with the smoke-test note."""
        from graft_select.demo.report import SMOKE_NOTE

        result = dict(fake_result, config=dict(fake_result["config"], quick=True))
        result["verdict"] = demo.verdict(result)
        lines = format_tables(result).splitlines()
        assert lines[0] == lines[-1] == SMOKE_NOTE
        assert SMOKE_NOTE not in format_tables(fake_result)


class TestProgressLines:
    def test_piped_output_gets_a_line_per_run(self, capsys):
        """progress="lines" prints a start line and one line per finished run on stderr."""
        run_demo(DemoConfig(**TINY, strategies=("full", "budget")), progress="lines",
                 sampler_factory=fake_factory)
        lines = capsys.readouterr().err.splitlines()
        assert "2 training runs" in lines[0]
        done = [line for line in lines if " done " in line]
        assert [line.split(" done ")[0].split("] ")[1] for line in done] == [
            "run 1/2", "run 2/2"]
        assert all("s wall-clock" in line and "s CPU" in line for line in done)

    def test_within_a_run_at_most_every_interval(self):
        """Within a run, a line only once the interval has passed since the last line."""
        import io

        from graft_select.demo.progress import ProgressLines

        stream = io.StringIO()
        lines = ProgressLines(2, stream=stream, interval=0.0)
        lines.update("graft", 0.3, 0, epoch=1, seen=100, planned=400, accuracy=0.5)
        quiet = ProgressLines(2, stream=stream, interval=3600.0)
        quiet.update("graft", 0.3, 0, epoch=1, seen=100, planned=400, accuracy=0.5)
        assert stream.getvalue().count("\n") == 1
        assert "run 1/2 (graft 0.3, seed 0): epoch 2, 100 of 400 samples" in stream.getvalue()

    def test_default_is_lines_when_stderr_is_not_a_terminal(self, capsys):
        """progress=None prints lines under pytest's captured (non-terminal) stderr."""
        run_demo(DemoConfig(**TINY, strategies=("full",)), sampler_factory=fake_factory)
        assert "run 1/1 done" in capsys.readouterr().err


    def test_heartbeat_when_a_run_is_silent(self):
        """With nothing printed for an interval, the background thread says where it is."""
        import io

        from graft_select.demo.progress import ProgressLines

        stream = io.StringIO()
        with ProgressLines(1, stream=stream, interval=0.2) as lines:
            lines.where = "run 1/1 (graft 0.3, seed 0): epoch 3"
            time.sleep(0.5)
        assert "run 1/1 (graft 0.3, seed 0): epoch 3 (still training)" in stream.getvalue()

class TestPlot:
    def test_outlier_does_not_stretch_the_band(self):
        """A group 15 points below the rest falls outside the y-range; the rest fit in it."""
        from graft_select.demo.plot import y_band

        rows = [dict(test_accuracy_mean=m, test_accuracy_std=s)
                for m, s in ((94.4, 0.8), (95.3, 0.2), (96.8, 0.4), (96.1, 0.3),
                             (80.3, 19.6))]
        low, high = y_band(rows)
        assert 85 < low < 93.6 and 97.2 < high <= 100.5

    def test_quick_plot_title_says_smoke_test(self, fake_result, tmp_path, monkeypatch):
        """The --quick figure's title starts with SMOKE TEST."""
        from matplotlib.figure import Figure

        titles = []
        monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t))
        result = dict(fake_result, config=dict(fake_result["config"], quick=True))
        demo.plot_results(result, tmp_path / "quick.png")
        assert titles[0].startswith("SMOKE TEST")



class TestReadmeTable:
    def test_table_from_results_replaces_the_marked_block(self, fake_result, tmp_path):
        """benchmarks/readme_table.py writes GRAFT's paired differences between the markers."""
        import importlib.util
        from pathlib import Path

        path = Path(__file__).resolve().parent.parent / "benchmarks" / "readme_table.py"
        spec = importlib.util.spec_from_file_location("readme_table", path)
        readme_table = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(readme_table)
        readme = tmp_path / "README.md"
        readme.write_text("intro\nRESULTS_TABLE\noutro\n")
        saved = json.loads(Path(fake_result["files"]["json"]).read_text())
        readme_table.write(readme_table.table([saved]), readme)
        readme_table.write(readme_table.table([saved]), readme)  # again: replaces, no copy
        text = readme.read_text()
        budget = next(c for c in saved["comparisons"] if c["baseline"] == "budget")
        assert text.count(readme_table.START) == 1 and text.endswith("outro\n")
        assert f"{budget['difference_mean']:+.2f} +- {budget['difference_std']:.2f}" in text
