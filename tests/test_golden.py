"""Pinned outputs: the selector's fits and the sampler's plans match, bit for bit.

The fingerprints in tests/golden/fingerprints.json were recorded by
``python tests/golden_cases.py --write``; see that module for the cases.
"""

import json
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import golden_cases

pytest.importorskip("torch")
pytest.importorskip("dask")

RECORD = json.loads(golden_cases.GOLDEN.read_text())
PORTABLE = RECORD["portable"]


@pytest.fixture(scope="module")
def selector_results():
    return golden_cases.selector_results()


class TestGoldenSelector:
    def test_sizes_unchanged(self, selector_results):
        """Every GraftSelector fit gives the pinned subset sizes, on every machine."""
        expected = {k: v for k, v in PORTABLE.items() if not k.startswith("sampler/")}
        assert selector_results.keys() == expected.keys()
        fresh = golden_cases.portable(selector_results)
        changed = [k for k in expected if fresh[k] != expected[k]]
        assert not changed, f"changed sizes: {changed}"

    def test_bits_unchanged(self, selector_results):
        """On a recorded kind of machine: the pinned indices, sizes, weights and errors."""
        signature = golden_cases.machine_signature()
        if signature not in RECORD["machines"]:
            pytest.skip(f"no bit-level record for {signature} (recorded: "
                        f"{sorted(RECORD['machines'])}); sizes are checked on every machine")
        expected = RECORD["machines"][signature]
        assert selector_results.keys() == expected.keys()
        changed = [k for k in expected if selector_results[k] != expected[k]]
        assert not changed, f"changed fits: {changed}"


class TestRecord:
    def test_portable_part_is_the_machines_part(self):
        """Each machine's record agrees with the portable part on the portable fields."""
        for signature, fits in RECORD["machines"].items():
            assert golden_cases.portable(fits) == {
                k: v for k, v in PORTABLE.items() if not k.startswith("sampler/")}, signature

    def test_write_keeps_other_kinds_unless_reset(self, tmp_path, monkeypatch):
        """--write adds this kind's record; a changed portable part needs --reset."""
        path = tmp_path / "fingerprints.json"
        monkeypatch.setattr(golden_cases, "GOLDEN", path)
        path.write_text(json.dumps({"portable": {"a": 1}, "machines": {"other": {"a": 2}}}))
        monkeypatch.setattr(golden_cases, "machine_signature", lambda: "this")
        monkeypatch.setattr(golden_cases, "record", lambda: {
            "portable": {"a": 1}, "machines": {"this": {"a": 3}}})
        golden_cases.write()
        assert json.loads(path.read_text())["machines"] == {"other": {"a": 2}, "this": {"a": 3}}
        monkeypatch.setattr(golden_cases, "record", lambda: {
            "portable": {"a": 9}, "machines": {"this": {"a": 4}}})
        with pytest.raises(SystemExit, match="--reset"):
            golden_cases.write()
        golden_cases.write(reset=True)
        assert json.loads(path.read_text()) == {"portable": {"a": 9},
                                                "machines": {"this": {"a": 4}}}

    def test_signature_names_blas_kernels_and_torch_isa(self):
        """The signature reads the BLAS architecture and torch's capability of this process."""
        import torch

        signature = golden_cases.machine_signature()
        assert signature.startswith("blas-")
        assert signature.endswith(f"/torch-{torch.backends.cpu.get_cpu_capability()}")


SAMPLER_KEYS = sorted(k for k in PORTABLE if k.startswith("sampler/"))


class TestGoldenSampler:
    @pytest.mark.slow
    @pytest.mark.parametrize("key", SAMPLER_KEYS)
    def test_plans_unchanged(self, key):
        """The sampler's batches over 6 epochs are the pinned ones."""
        _, dataset, config, mode, seed = key.split("/")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plans = golden_cases.sampler_plans(dataset, int(seed), mode,
                                               golden_cases.SAMPLER_CONFIGS[config])
        assert plans == PORTABLE[key]
