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

EXPECTED = json.loads(golden_cases.GOLDEN.read_text())


@pytest.fixture(scope="module")
def selector_results():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return golden_cases.selector_cases()


class TestGoldenSelector:
    def test_cases_unchanged(self, selector_results):
        """Every GraftSelector fit gives the pinned indices, sizes, weights and errors."""
        expected = {k: v for k, v in EXPECTED.items() if not k.startswith("sampler/")}
        assert selector_results.keys() == expected.keys()
        changed = [k for k in expected if selector_results[k] != expected[k]]
        assert not changed, f"changed fits: {changed}"


SAMPLER_KEYS = sorted(k for k in EXPECTED if k.startswith("sampler/"))


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
        assert plans == EXPECTED[key]
