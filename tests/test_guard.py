"""The label-noise guard of GraftBatchSampler (graft_select/_guard.py)."""

import pytest

torch = pytest.importorskip("torch")

from graft_select import _guard  # noqa: E402
from graft_select.demo import DemoConfig  # noqa: E402
from graft_select.demo.harness import make_batch_sampler  # noqa: E402
from graft_select.sampler import GraftBatchSampler  # noqa: E402

N, C, D = 2000, 5, 8


def _data(noise, seed=0, confidence=8.0):
    """Labels, the model's logits (confident on the true class) and a mask of flipped labels."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, C, (N,), generator=g)
    flipped = torch.rand(N, generator=g) < noise
    given = true.clone()
    given[flipped] = (true[flipped] + 1) % C
    logits = torch.nn.functional.one_hot(true, C).float() * confidence
    logits += torch.randn(N, C, generator=g)
    embeddings = torch.randn(N, D, generator=g)
    return given, logits, embeddings, flipped


def _refit(noise, confidence=8.0, **kwargs):
    given, logits, embeddings, flipped = _data(noise, confidence=confidence)
    sampler = GraftBatchSampler(N, 100, **{"fraction": 0.3, "warm_start_epochs": 1, **kwargs})
    sampler.observe(torch.arange(N), embeddings=embeddings, logits=logits, targets=given)
    sampler.set_epoch(1)
    chosen = torch.tensor([i for batch in sampler for i in batch])
    return sampler.last_refit, chosen, flipped


class TestLabelProbabilities:
    def test_probability_of_the_given_label(self):
        """p_y = 1 + min(residual row); misclassified when another class is more probable."""
        probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
        targets = torch.tensor([0, 2, 2])
        residuals = probs - torch.nn.functional.one_hot(targets, 3).float()
        p_given, misclassified = _guard.label_probabilities(residuals, torch.arange(3))
        assert torch.allclose(p_given, torch.tensor([0.7, 0.3, 0.4]))
        assert misclassified.tolist() == [False, True, False]

    def test_reads_half_precision_in_blocks(self, monkeypatch):
        """float16 residuals read block by block give the float32 answer."""
        monkeypatch.setattr(_guard, "_BLOCK", 7)
        given, logits, _, _ = _data(0.1)
        residuals = torch.softmax(logits, 1) - torch.nn.functional.one_hot(given, C)
        rows = torch.randperm(N)[:50]
        full, mis = _guard.label_probabilities(residuals, rows)
        half, mis_half = _guard.label_probabilities(residuals.half(), rows)
        assert torch.allclose(full, half, atol=1e-3)
        assert (mis == mis_half).float().mean() > 0.95


class TestSampler:
    def test_noisy_labels_kept_out_of_the_subset(self):
        """Under 15% wrong labels the subset holds almost none; unguarded, MaxVol's picks
        are full of them (the whole selection trained: pool_factor=1.0)."""
        report, chosen, flipped = _refit(0.15)
        _, unguarded, _ = _refit(0.15, label_noise_guard=False, pool_factor=1.0)
        assert report.n_excluded == len(report.excluded_indices) > flipped.sum()
        assert flipped[torch.tensor(report.excluded_indices)].float().mean() > 0.7
        assert flipped[chosen].float().mean() < 0.02
        assert flipped[unguarded].float().mean() > 0.3
        assert not set(report.excluded_indices) & set(chosen.tolist())

    def test_clean_labels_nothing_excluded(self):
        """Unsure mistakes (a hard task, clean labels) do not switch the guard on."""
        report, chosen, _ = _refit(0.0, confidence=1.5)
        assert report.n_excluded == 0 and report.excluded_indices == ()
        assert len(chosen) == round(0.3 * N)

    def test_switched_off(self):
        """label_noise_guard=False excludes nothing."""
        report, _, _ = _refit(0.15, label_noise_guard=False)
        assert report.n_excluded == 0

    def test_budget_kept(self):
        """The subset still has the budget's size when the guard acts."""
        report, chosen, _ = _refit(0.15)
        assert report.n_excluded > 0 and len(chosen) == round(0.3 * N)

    def test_leaves_enough_candidates(self):
        """At most half the candidates, and never fewer than 1.25 x budget left."""
        report, chosen, _ = _refit(0.45, fraction=0.7)
        assert report.n_excluded <= N - 1.25 * round(0.7 * N) + 1
        assert len(chosen) == round(0.7 * N)

    def test_excluded_samples_are_not_refreshed(self):
        """The stalest-sample refresh does not bring the excluded samples back."""
        report, chosen, _ = _refit(0.15, refresh_share=0.5)
        assert report.n_refreshed > 0 and report.n_excluded > 0
        assert not set(report.excluded_indices) & set(chosen.tolist())

    def test_sketched_residuals_warn(self):
        """With residuals stored as a sketch the guard cannot read p_y: it warns and acts not."""
        given, logits, embeddings, _ = _data(0.15)
        sampler = GraftBatchSampler(N, 100, fraction=0.3, sketch_width=3, warm_start_epochs=1)
        sampler.observe(torch.arange(N), embeddings=embeddings, logits=logits, targets=given)
        sampler.set_epoch(1)
        with pytest.warns(UserWarning, match="label_noise_guard needs the label probabilities"):
            len(sampler)
        assert sampler.last_refit.n_excluded == 0

    def test_bool_checked(self):
        """label_noise_guard must be a bool."""
        with pytest.raises(TypeError, match="label_noise_guard"):
            GraftBatchSampler(10, 2, label_noise_guard="yes")

    def test_deterministic(self):
        """The same seed gives the same exclusions and subset."""
        first, chosen_a, _ = _refit(0.15)
        second, chosen_b, _ = _refit(0.15)
        assert first.excluded_indices == second.excluded_indices
        assert torch.equal(torch.sort(chosen_a).values, torch.sort(chosen_b).values)


class TestDemo:
    def test_guard_only_for_graft(self):
        """The demo's uniform baseline runs unguarded; GRAFT with the guard."""
        config = DemoConfig()
        graft = make_batch_sampler("graft", 500, fraction=0.3, seed=0, config=config)
        uniform = make_batch_sampler("uniform", 500, fraction=0.3, seed=0, config=config)
        assert graft.label_noise_guard and not uniform.label_noise_guard
