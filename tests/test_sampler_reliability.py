"""GraftBatchSampler under bad, odd and adversarial input."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

torch = pytest.importorskip("torch")

from graft_select.sampler import GraftBatchSampler  # noqa: E402

N, D, C = 120, 5, 3
SCRIPTS = Path(__file__).parent / "frameworks"


def _observed(n=N, **kwargs):
    sampler = GraftBatchSampler(n, **{"warm_start_epochs": 1,
                                      "batch_size": 16, "fraction": 0.3, **kwargs})
    g = torch.Generator().manual_seed(0)
    sampler.observe(torch.arange(n), embeddings=torch.randn(n, D, generator=g),
                    logits=torch.randn(n, C, generator=g),
                    targets=torch.randint(0, C, (n,), generator=g))
    return sampler


def _snapshot(sampler):
    state = sampler.state_dict()
    return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()
            if k != "store"}, {k: v.clone() for k, v in state["store"].items()}


def _same(sampler, snapshot):
    plain, store = snapshot
    now = sampler.state_dict()
    for key, value in plain.items():
        if torch.is_tensor(value):
            assert torch.equal(now[key], value), key
        else:
            assert now[key] == value, key
    assert now["store"].keys() == store.keys()
    assert all(torch.equal(now["store"][k], v) for k, v in store.items())


class TestLoadStateDict:
    """Item 5: a state is validated whole, before anything is written, and copied."""

    @pytest.mark.parametrize(("replicas", "rank", "warns"),
                             [(2, 0, False), (2, 1, True), (1, 0, True), (4, 0, True)])
    def test_other_ranks_feedback_missing_warns(self, replicas, rank, warns):
        """A state saved by one of several ranks, loaded on another rank or under another
        number of ranks, lacks the other ranks' feedback since the last refit: it warns,
        naming the ranks and the samples; loaded on its own rank it does not."""
        saved = _observed(num_replicas=2, rank=0)
        state = saved.state_dict()
        assert (state["rank"], state["num_replicas"], state["unmerged_rows"]) == (0, 2, N)
        target = GraftBatchSampler(N, 16, fraction=0.3, warm_start_epochs=1,
                                   num_replicas=replicas, rank=rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            target.load_state_dict(state)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        if warns:
            assert len(messages) == 1
            assert f"saved by rank 0 of 2 and is loaded on rank {rank} of {replicas}" in (
                messages[0])
            assert f"{N} samples were observed" in messages[0]
        else:
            assert not messages

    def test_nothing_unmerged_or_one_rank_does_not_warn(self):
        """No warning for a one-rank state, nor for a rank's state with nothing observed
        since the last merge."""
        one = _observed().state_dict()
        assert (one["rank"], one["unmerged_rows"]) == (0, 0)
        empty = GraftBatchSampler(N, 16, num_replicas=2, rank=1).state_dict()
        assert (empty["rank"], empty["unmerged_rows"]) == (1, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            GraftBatchSampler(N, 16, num_replicas=2, rank=0).load_state_dict(one)
            GraftBatchSampler(N, 16).load_state_dict(empty)

    def test_rank_outside_its_replicas_rejected(self):
        state = _observed(num_replicas=2, rank=1).state_dict()
        state["rank"] = 2
        with pytest.raises(ValueError, match=r"'rank' of the state .* below its 'num_replicas'"):
            GraftBatchSampler(N, 16).load_state_dict(state)

    def test_other_dataset_size_rejected(self):
        """A state from a sampler of another size is rejected and changes nothing."""
        small = _observed(n=60)
        small.set_epoch(1)
        list(small)
        target = _observed()
        before = _snapshot(target)
        with pytest.raises(ValueError, match="another dataset"):
            target.load_state_dict(small.state_dict())
        _same(target, before)

    def test_bad_late_entry_leaves_sampler_unchanged(self):
        """A state whose last-checked entry is bad leaves the sampler as it was."""
        source = _observed()
        source.set_epoch(2)
        state = source.state_dict()
        state["selection_seconds"] = "soon"
        target = _observed(seed=3)
        before = _snapshot(target)
        with pytest.raises(ValueError, match="'selection_seconds'"):
            target.load_state_dict(state)
        _same(target, before)

    def test_subset_is_copied(self):
        """Writing to the loaded state's subset afterwards does not change the sampler."""
        source = _observed()
        source.set_epoch(1)
        list(source)
        state = source.state_dict()
        target = GraftBatchSampler(N, 16, fraction=0.3, warm_start_epochs=1)
        target.load_state_dict(state)
        expected = list(target)
        state["subset"][:] = 0
        state["store"]["embeddings"][:] = 0
        target.load_state_dict(source.state_dict())
        assert list(target) == expected

    @pytest.mark.parametrize(("change", "error", "match"), [
        (lambda s: s.pop("epoch"), ValueError, r"missing keys \['epoch'\]"),
        (lambda s: s.update(extra=1), ValueError, r"unknown keys \['extra'\]"),
        (lambda s: s.update(epoch=-1), ValueError, "'epoch'"),
        (lambda s: s.update(epoch="1"), ValueError, "'epoch'"),
        (lambda s: s.update(batches_yielded=1.5), ValueError, "'batches_yielded'"),
        (lambda s: s.update(store=[1, 2]), TypeError, "'store'"),
        (lambda s: s.update(store={"mystery": torch.zeros(N, 2)}), ValueError, "unknown"),
        (lambda s: s.update(last_seen=torch.zeros(N)), ValueError, "'last_seen'"),
        (lambda s: s.update(subset=torch.tensor([0, 5000])), ValueError, "'subset'"),
        (lambda s: s.update(subset=[1, 2]), ValueError, "'subset'"),
        (lambda s: s.update(subset_epoch=None), ValueError, "both 'subset'"),
        (lambda s: s.update(rejected=torch.zeros(N, dtype=torch.int32)), ValueError,
         "'rejected'"),
        (lambda s: s.update(rejected=torch.full((N + 1,), -1, dtype=torch.int32)), ValueError,
         "'rejected'"),
    ])
    def test_bad_states_named(self, change, error, match):
        """Malformed states raise a clear error naming the entry, not IndexError/KeyError."""
        source = _observed()
        source.set_epoch(1)
        list(source)
        state = source.state_dict()
        change(state)
        target = _observed()
        before = _snapshot(target)
        with pytest.raises(error, match=match):
            target.load_state_dict(state)
        _same(target, before)

    def test_state_without_rejected_loads(self):
        """A state saved before the rejection counts were kept loads, with none pending."""
        state = _observed().state_dict()
        del state["rejected"]
        resumed = GraftBatchSampler(N, 32, fraction=0.3, warm_start_epochs=1)
        resumed.load_state_dict(state)
        assert int(resumed.state_dict()["rejected"].sum()) == 0

    def test_not_a_dict(self):
        """A non-dict state is a TypeError."""
        with pytest.raises(TypeError, match="expects the dict"):
            GraftBatchSampler(N, 8, warm_start_epochs=1).load_state_dict([1, 2])


class TestReplicasWithoutProcessGroup:
    def test_manual_replicas_with_feedback_raise(self):
        """Item 6: manual num_replicas without a process group cannot merge feedback: raise."""
        sampler = _observed(num_replicas=2, rank=1)
        sampler.set_epoch(1)
        with pytest.raises(ValueError, match="plans would differ"):
            list(sampler)

    def test_manual_replicas_with_fixed_features_agree(self):
        """With a fixed feature array every rank computes the same plan."""
        X = torch.randn(N, 4, generator=torch.Generator().manual_seed(2))
        plans = []
        for rank in range(2):
            sampler = GraftBatchSampler(N, 16, fraction=0.3, features=X, num_replicas=2,
                                        rank=rank, warm_start_epochs=1)
            sampler.set_epoch(1)
            plans.append(sampler._plan().tolist())
        assert plans[0] == plans[1]


class TestObserveInputs:
    def test_complex_rejected(self):
        """Item 7: complex feedback is rejected and nothing is stored."""
        sampler = GraftBatchSampler(N, 16, warm_start_epochs=1)
        with pytest.raises(TypeError, match="complex"):
            sampler.observe(torch.arange(4), embeddings=torch.randn(4, 2, dtype=torch.cfloat))
        assert sampler.state_dict()["store"] == {}

    def test_bool_targets_rejected(self):
        """Bool targets are a TypeError, not labels 0 and 1."""
        sampler = GraftBatchSampler(N, 16, warm_start_epochs=1)
        with pytest.raises(TypeError, match="integer class labels"):
            sampler.observe(torch.arange(4), embeddings=torch.randn(4, 2),
                            logits=torch.randn(4, 2), targets=torch.tensor([1, 0, 1, 0]) > 0)

    def test_sparse_inputs_rejected(self):
        """Sparse embeddings or targets are a TypeError at the call, nothing is staged."""
        sampler = GraftBatchSampler(N, 16, warm_start_epochs=1)
        with pytest.raises(TypeError, match=r"'embeddings' is a torch\.sparse_coo tensor"):
            sampler.observe(torch.arange(4), embeddings=torch.randn(4, 2).to_sparse())
        with pytest.raises(TypeError, match=r"'targets' is a torch\.sparse_coo tensor"):
            sampler.observe(torch.arange(4), embeddings=torch.randn(4, 2),
                            logits=torch.randn(4, 3),
                            targets=torch.tensor([1, 0, 2, 1]).to_sparse())
        assert sampler.state_dict()["store"] == {}

    def test_integer_logits_rejected(self):
        """Integer logits are a TypeError at the call, not a failure at the recording."""
        sampler = GraftBatchSampler(N, 16, warm_start_epochs=1)
        with pytest.raises(TypeError, match="'logits' must be floating point"):
            sampler.observe(torch.arange(4), embeddings=torch.randn(4, 2),
                            logits=torch.ones(4, 3, dtype=torch.int64),
                            targets=torch.tensor([1, 0, 2, 1]))
        assert sampler.state_dict()["store"] == {}

    def test_meta_tensors_rejected(self):
        """Meta tensors (no data) are rejected with a clear message."""
        sampler = GraftBatchSampler(N, 16, warm_start_epochs=1)
        with pytest.raises(ValueError, match="meta tensor"):
            sampler.observe(torch.arange(4), embeddings=torch.empty(4, 2, device="meta"))
        with pytest.raises(ValueError, match="meta tensor"):
            sampler.observe(torch.empty(4, dtype=torch.int64, device="meta"),
                            embeddings=torch.randn(4, 2))


class TestOddArguments:
    @pytest.mark.parametrize("name", ["shuffle", "drop_last"])
    @pytest.mark.parametrize("value", ["False", "no", 0, 1.0, None])
    def test_non_bool_flags_rejected(self, name, value):
        """Item 10: shuffle='False' or drop_last='no' are TypeErrors naming the flag."""
        with pytest.raises(TypeError, match=f"'{name}' parameter of GraftBatchSampler must be "
                                            "a bool"):
            GraftBatchSampler(N, 8, **{"warm_start_epochs": 1, name: value})

    def test_numpy_int_data_source(self):
        """GraftBatchSampler(np.int64(5), 1) is a 5-sample sampler."""
        sampler = GraftBatchSampler(np.int64(5), 1, warm_start_epochs=1)
        assert sampler.n_samples == 5 and len(sampler) == 5

    def test_bool_data_source_message(self):
        """data_source=True is reported as a bool, not as 'length True'."""
        with pytest.raises(TypeError, match="Got True instead"):
            GraftBatchSampler(True, 4, warm_start_epochs=1)

    def test_short_targets_with_features_callable(self):
        """targets= shorter than the dataset is rejected at construction."""
        with pytest.raises(ValueError, match=r"one label per sample, shape \(120,\)"):
            GraftBatchSampler(N, 8, features=lambda idx: (idx, idx), targets=torch.zeros(10),
                              warm_start_epochs=1)

    def test_one_sample_dataset_selected_epoch(self):
        """A 1-sample dataset trains its sample in a selected epoch."""
        sampler = GraftBatchSampler(1, 1, warm_start_epochs=1)
        sampler.observe(torch.tensor([0]), embeddings=torch.randn(1, 3),
                        logits=torch.randn(1, 2), targets=torch.tensor([1]))
        sampler.set_epoch(1)
        assert list(sampler) == [[0]]


class TestBudgetWarning:
    def test_overshoot_warns(self):
        """Item 9: the at-least-one-per-chunk rule moving the budget > 10% warns when the
        epoch trains the selection (pool_factor=1.0); an epoch drawn from a pool trains
        the budget, silently."""
        sampler = GraftBatchSampler(60, 8, fraction=1e-9, warm_start_epochs=1,
                                    pool_factor=1.0)
        sampler.observe(torch.arange(60), embeddings=torch.randn(60, 3))
        sampler.set_epoch(1)
        with pytest.warns(UserWarning, match="at least one sample"):
            flat = [i for b in sampler for i in b]
        assert len(flat) == 8  # one per chunk of 8 rows
        pooled = GraftBatchSampler(60, 8, fraction=1e-9, warm_start_epochs=1)
        pooled.observe(torch.arange(60), embeddings=torch.randn(60, 3))
        pooled.set_epoch(1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            flat = [i for b in pooled for i in b]
        assert len(flat) == 1 and pooled.last_refit.n_selected == 8

    def test_overshoot_warns_once(self):
        """The sampler's warning replaces the selector's: one warning per refit, not two."""
        sampler = GraftBatchSampler(60, 8, fraction=1e-9, warm_start_epochs=1,
                                    pool_factor=1.0)
        sampler.observe(torch.arange(60), embeddings=torch.randn(60, 3))
        sampler.set_epoch(1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            list(sampler)
        budget = [w for w in caught if issubclass(w.category, UserWarning)
                  and "at least one" in str(w.message)]
        assert len(budget) == 1, [str(w.message) for w in budget]
        assert "GraftBatchSampler" in str(budget[0].message)

    def test_normal_budget_silent(self):
        """A budget the chunks can hold gives no warning."""
        sampler = _observed()
        sampler.set_epoch(1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            list(sampler)


class TestDistributedFeedbackKinds:
    def test_mixed_kinds_raise_on_every_rank(self, tmp_path):
        """Hang 2: ranks with different kinds of feedback all raise, within a timeout."""
        subprocess.run([sys.executable, str(SCRIPTS / "mixed_feedback.py"), str(tmp_path),
                        str(free_port())], check=True, timeout=180, capture_output=True)
        for rank in range(2):
            message = (tmp_path / f"rank{rank}.txt").read_text()
            assert "observed different kinds of feedback" in message
            assert "rank 1: embeddings" in message
