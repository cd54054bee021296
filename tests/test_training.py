"""End to end: GRAFT subsets against uniform subsets of the same budget, in training.

A short MNIST-1D run (12,000 signals, 10 epochs, 3 seeds) through the public
sampler, the way the demo trains. Deterministic for its seeds on a given platform.
"""

import pytest

torch = pytest.importorskip("torch")

from graft_select.demo import DemoConfig, run_demo  # noqa: E402


@pytest.fixture(scope="module")
def accuracy():
    """Mean test accuracy (%) over 3 seeds, keyed by (strategy, fraction)."""
    config = DemoConfig(
        dataset="mnist1d", n_samples=12_000, fractions=(0.1, 0.3), seeds=(0, 1, 2),
        epochs=10, warm_start_epochs=2, refit_every=2, strategies=("uniform", "graft"),
    )
    result = run_demo(config, progress=False)
    return {(row["strategy"], row["fraction"]): row["test_accuracy_mean"]
            for row in result["summary"]}


@pytest.mark.slow
class TestGraftAgainstUniform:
    def test_graft_beats_uniform_at_030(self, accuracy):
        """At fraction 0.3 GRAFT's mean test accuracy is above uniform's."""
        assert accuracy[("graft", 0.3)] > accuracy[("uniform", 0.3)]

    def test_graft_not_worse_at_010(self, accuracy):
        """At fraction 0.1 GRAFT is not below uniform by more than 0.5 point."""
        assert accuracy[("graft", 0.1)] >= accuracy[("uniform", 0.1)] - 0.5
