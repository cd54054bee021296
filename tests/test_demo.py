"""The demo harness: models, the full-data sampler, training runs, results and energy."""

import csv
import json
import sys
import time
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from graft_select import demo  # noqa: E402
from graft_select.demo import (  # noqa: E402
    CNN1D,
    MLP,
    DemoConfig,
    ShuffledBatchSampler,
    check_config,
    format_tables,
    make_batch_sampler,
    run_demo,
)

TINY = dict(n_samples=300, epochs=2, batch_size=32, fractions=(0.3,), seeds=(0,),
            warm_start_epochs=1, refit_every=1, threads=1)


class FakeSubsetSampler(ShuffledBatchSampler):
    """GraftBatchSampler's interface, with the first ``fraction`` of a shuffled order."""

    def __init__(self, n_samples, batch_size, *, fraction, seed, warm_start_epochs, **ignored):
        super().__init__(n_samples, batch_size, seed=seed)
        self.fraction, self.warm_start_epochs = fraction, warm_start_epochs
        self.selection_seconds, self.last_refit, self.observed = 0.0, None, []

    def observe(self, indices, *, embeddings=None, logits=None, targets=None, gradients=None):
        assert embeddings.shape[0] == logits.shape[0] == targets.shape[0] == len(indices)
        assert not embeddings.requires_grad and not logits.requires_grad
        self.observed.append(indices.tolist())

    def _subset(self):
        order = super().__iter__()
        flat = [i for batch in order for i in batch]
        if self.epoch < self.warm_start_epochs:
            return flat
        start = time.perf_counter()
        keep = flat[:max(1, round(self.fraction * len(flat)))]
        seconds = time.perf_counter() - start
        self.selection_seconds += seconds
        self.last_refit = types.SimpleNamespace(fraction=len(keep) / self.n_samples,
                                                gradient_error=0.5, seconds=seconds)
        return keep

    def __len__(self):
        return -(-len(self._subset()) // self.batch_size)

    def __iter__(self):
        subset = self._subset()
        for begin in range(0, len(subset), self.batch_size):
            yield subset[begin:begin + self.batch_size]


def fake_factory(strategy, n_samples, **kwargs):
    """The demo's factory, with FakeSubsetSampler for the subset strategies."""
    if strategy == "full":
        return make_batch_sampler(strategy, n_samples, **kwargs)
    return FakeSubsetSampler(n_samples, **kwargs)


@pytest.fixture(scope="module")
def fake_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(DemoConfig(**TINY), out=out, progress=False, sampler_factory=fake_factory)


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
        batches = list(ShuffledBatchSampler(103, 10, seed=0))
        assert len(batches) == len(ShuffledBatchSampler(103, 10)) == 11
        assert sorted(i for b in batches for i in b) == list(range(103))
        assert all(isinstance(i, int) for b in batches for i in b)

    def test_seeded_per_epoch(self):
        """Same seed and epoch give the same order; another epoch gives another."""
        a, b = ShuffledBatchSampler(50, 10, seed=1), ShuffledBatchSampler(50, 10, seed=1)
        assert list(a) == list(b)
        b.set_epoch(1)
        assert list(a) != list(b)


class TestRunDemo:
    def test_writes_three_files(self, fake_result):
        """results.json, results.csv and results.png are written."""
        files = fake_result["files"]
        assert set(files) == {"json", "csv", "png"}
        with open(files["png"], "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

    def test_json_records_every_run(self, fake_result):
        """One run per strategy with per-epoch accuracy, time, selection and samples."""
        with open(fake_result["files"]["json"]) as handle:
            saved = json.load(handle)
        assert [r["strategy"] for r in saved["runs"]] == ["full", "uniform", "graft"]
        for run in saved["runs"]:
            assert len(run["epochs"]) == TINY["epochs"]
            walls = [e["wall_seconds"] for e in run["epochs"]]
            assert walls == sorted(walls) and walls[0] > 0
            assert 0 <= run["test_accuracy"] <= 1
        full, graft = saved["runs"][0], saved["runs"][2]
        assert full["samples_seen"] == 2 * 240
        assert graft["samples_seen"] == 240 + 72
        assert [r["epoch"] for r in graft["refits"]] == [1]
        assert saved["machine"]["torch"] == torch.__version__
        assert saved["dataset"] == {"name": "mnist1d", "n_train": 240, "n_test": 60}

    def test_csv_has_a_row_per_strategy(self, fake_result):
        """The CSV summary has one row per fraction and strategy, with the speed-up."""
        with open(fake_result["files"]["csv"], newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["strategy"] for r in rows] == ["full", "uniform", "graft"]
        assert float(rows[0]["speedup_vs_full"]) == 1.0
        assert all(float(r["selection_share"]) < 1 for r in rows)

    def test_energy_columns_say_why_they_are_empty(self, fake_result, monkeypatch):
        """Without codecarbon, the energy cells name the extra to install."""
        if fake_result["energy_note"] is None:
            pytest.skip("codecarbon is installed here")
        with open(fake_result["files"]["csv"], newline="") as handle:
            row = next(csv.DictReader(handle))
        assert row["energy_kwh"] == row["co2_kg"] == demo.CARBON_HINT
        assert demo.CARBON_HINT in format_tables(fake_result)

    def test_table_per_fraction(self, fake_result):
        """The printed table has a header per fraction and a row per strategy."""
        table = format_tables(fake_result)
        assert "fraction 0.3" in table
        for strategy in ("full", "uniform", "graft"):
            assert any(line.startswith(strategy) for line in table.splitlines())

    def test_same_seed_same_result(self):
        """Two runs with the same seed train identically (accuracy per epoch)."""
        config = DemoConfig(**TINY, strategies=("full",))
        a = run_demo(config, progress=False)["runs"][0]["epochs"]
        b = run_demo(config, progress=False)["runs"][0]["epochs"]
        assert [e["test_accuracy"] for e in a] == [e["test_accuracy"] for e in b]

    def test_no_global_state_changed(self):
        """Global RNG states and the torch thread count are as before the run."""
        torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()  # noqa: NPY002 (the legacy global generator is what is checked)
        threads = torch.get_num_threads()
        run_demo(DemoConfig(**{**TINY, "threads": threads + 1}, strategies=("full",)),
                 progress=False)
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002 (the legacy global generator is what is checked)
        assert torch.get_num_threads() == threads

    def test_digits_with_mlp(self):
        """--dataset digits trains the MLP on load_digits."""
        config = DemoConfig(dataset="digits", epochs=1, seeds=(0,), fractions=(0.3,),
                            strategies=("full",), threads=1)
        result = run_demo(config, progress=False)
        assert result["dataset"]["n_train"] == 1347
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
    def test_with_graft_batch_sampler(self, tmp_path):
        """The real GraftBatchSampler runs the uniform and graft strategies end to end."""
        pytest.importorskip("graft_select.sampler")
        config = DemoConfig(**{**TINY, "n_samples": 600})
        result = run_demo(config, out=tmp_path, progress=False)
        graft = result["runs"][2]
        assert graft["strategy"] == "graft" and graft["refits"]
        assert graft["selection_seconds"] > 0
        assert graft["samples_seen"] < result["runs"][0]["samples_seen"]
        assert (tmp_path / "results.png").is_file()


class TestCheckConfig:
    @pytest.mark.parametrize(("changes", "match"), [
        ({"dataset": "mnist"}, "dataset"),
        ({"fractions": (0.0,)}, "fractions"),
        ({"fractions": (1.5,)}, "fractions"),
        ({"seeds": ()}, "at least one"),
        ({"strategies": ("full", "random")}, "strategies"),
        ({"epochs": 0}, "epochs"),
        ({"dataset": "digits", "n_samples": 100}, "mnist1d only"),
        ({"device": "tpu"}, "device"),
        ({"selection_size": 1}, "selection_size"),
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
