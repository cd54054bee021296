"""The sampler reaches selection only through GraftSelector's public, validated fit."""

import sys
import typing
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.utils._param_validation import InvalidParameterError  # noqa: E402

from graft_select import GraftSelector, StoredGradients  # noqa: E402
from graft_select.sampler import GraftBatchSampler  # noqa: E402

N, C, D = 600, 4, 6


def _observed_sampler(selector, **kwargs):
    """A sampler over N samples with feedback for every sample, at its first selected epoch."""
    gen = torch.Generator().manual_seed(0)
    sampler = GraftBatchSampler(N, 50, fraction=0.2, selector=selector, seed=0,
                                **{"warm_start_epochs": 1, **kwargs})
    sampler.observe(torch.arange(N), embeddings=torch.randn(N, D, generator=gen),
                    logits=torch.randn(N, C, generator=gen),
                    targets=torch.randint(0, C, (N,), generator=gen))
    sampler.set_epoch(1)
    return sampler


class RecordingSelector(GraftSelector):
    """Records every fit call's arguments, then fits as GraftSelector does."""

    calls: typing.ClassVar[list] = []

    def fit(self, X, y=None, *, gradients=None, compute_weights=True):
        RecordingSelector.calls.append((X, gradients, compute_weights))
        return super().fit(X, y, gradients=gradients, compute_weights=compute_weights)


class TestOneDoor:
    def test_subclass_fit_is_called(self):
        """A template overriding fit has its fit called at the refit, with a store view."""
        RecordingSelector.calls.clear()
        sampler = _observed_sampler(RecordingSelector(basis="gradients"))
        assert len(list(sampler)) > 0
        assert len(RecordingSelector.calls) == 1
        X, gradients, compute_weights = RecordingSelector.calls[0]
        assert X is None and isinstance(gradients, StoredGradients)
        assert compute_weights is False  # the sampler trains unweighted
        assert len(gradients.rows) == N

    @pytest.mark.parametrize("params, name", [
        (dict(method="bogus"), "method"),
        (dict(uniform_share=2.0), "uniform_share"),
        (dict(svd_method="fast"), "svd_method"),
    ])
    def test_invalid_template_raises_as_fit(self, params, name):
        """An invalid template raises the InvalidParameterError fit raises, naming it."""
        with pytest.raises(InvalidParameterError, match=f"'{name}' parameter") as from_fit:
            GraftSelector(**params).fit(np.eye(10, 3))
        with pytest.raises(InvalidParameterError) as from_sampler:
            sampler = _observed_sampler(GraftSelector(**params))
            list(sampler)
        assert str(from_sampler.value) == str(from_fit.value)

    def test_noise_guard_benchmark_measures_its_guard(self):
        """benchmarks/bench_noise_guard.py's GuardedSelector runs on the sampler's path:
        its guard sees every candidate and its flagged rows are never selected."""
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
        try:
            import bench_noise_guard as bench
        finally:
            sys.path.pop(0)
        bench.STATS.clear()
        sampler = _observed_sampler(bench.guarded("quantile", 0.2)(basis="gradients"),
                                    label_noise_guard=False)
        plan = torch.cat([torch.as_tensor(b) for b in sampler])
        assert [n for n, _ in bench.STATS] == [N]
        assert bench.STATS[0][1] == round(0.2 * N)
        residuals = sampler.state_dict()["store"]["residuals"]
        p_given = 1.0 + residuals.min(dim=1).values
        flagged = torch.argsort(p_given)[:round(0.2 * N)]
        assert not set(flagged.tolist()) & set(plan.tolist())
        assert len(plan) == round(0.2 * N)
