"""The refit schedule: fixed, or spaced by the overhead budget; thread pools during refits."""

import os

import pytest
from conftest import spawn_ranks

torch = pytest.importorskip("torch")

from graft_select._schedule import MAX_INTERVAL, RefitSchedule, refit_interval  # noqa: E402
from graft_select.sampler import GraftBatchSampler  # noqa: E402

N, D, C = 400, 6, 4


class FakeClock:
    """A wall-clock that advances only when told."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _observe_all(sampler, seed=0):
    g = torch.Generator().manual_seed(seed)
    sampler.observe(torch.arange(N), embeddings=torch.randn(N, D, generator=g),
                    logits=torch.randn(N, C, generator=g),
                    targets=torch.randint(0, C, (N,), generator=g))


class TestRefitInterval:
    @pytest.mark.parametrize("refit, epoch, budget, expected", [
        (1.0, 10.0, 0.05, 2),     # 1 s of refit per 2 epochs of 10 s: 5%
        (1.0, 20.0, 0.05, 1),
        (1.01, 10.0, 0.05, 3),
        (0.001, 10.0, 0.05, 1),
        (1e3, 1.0, 0.05, MAX_INTERVAL),
    ])
    def test_keeps_the_share_under_budget(self, refit, epoch, budget, expected):
        """Nothing spent or trained yet: the fewest epochs that keep refit / (wait * epoch)
        <= budget."""
        wait = refit_interval(0.0, refit, 0.0, epoch, budget)
        assert wait == expected
        if wait < MAX_INTERVAL:
            assert refit / (wait * epoch) <= budget + 1e-12
            assert wait == 1 or refit / ((wait - 1) * epoch) > budget

    @pytest.mark.parametrize("epoch", [None, 0.0])
    def test_unknown_epoch_time_refits_next_epoch(self, epoch):
        """Without a timed epoch the next epoch refits (and gets timed)."""
        assert refit_interval(0.0, 5.0, 0.0, epoch, 0.05) == 1

    def test_training_so_far_lends_its_share(self):
        """30 s of warm start hold 1.5 s of selection: after a 1-s refit the next 1-s refit
        needs 10 more epochs of 1 s (2 s <= 5% of 40 s), not the 20 of one interval."""
        assert refit_interval(1.0, 1.0, 30.0, 1.0, 0.05) == 10
        assert refit_interval(1.0, 1.0, 0.0, 1.0, 0.05) == 40  # no credit: 2 s in 40 s
        assert refit_interval(0.5, 0.5, 30.0, 1.0, 0.05) == 1  # credit left over

    @pytest.mark.parametrize("seed", range(5))
    def test_share_holds_whenever_the_run_stops(self, seed):
        """Refits of equal cost, epochs of random length: selection stays within the budget
        at every epoch's end, and each refit comes as soon as the budget allows (the
        warm start's share is used, not left idle)."""
        rng = torch.Generator().manual_seed(seed)
        budget, refit = 0.05, float(torch.rand((), generator=rng)) * 0.4 + 0.1
        trained = 30.0 * (1 + float(torch.rand((), generator=rng)))  # warm start
        spent, next_refit = 0.0, 0
        for epoch in range(400):
            if epoch == next_refit:
                spent += refit
                assert spent <= budget * trained + 1e-9
                epoch_seconds = 0.5 + float(torch.rand((), generator=rng))
                wait = refit_interval(spent, refit, trained, epoch_seconds, budget)
                assert wait < MAX_INTERVAL
                # and no later than the budget needs: one epoch sooner would overspend
                assert wait == 1 or spent + refit > budget * (trained + (wait - 1) *
                                                              epoch_seconds)
                next_refit = epoch + wait
            trained += epoch_seconds  # this epoch's training, as estimated
            assert spent <= budget * trained + 1e-9


class TestRefitSchedule:
    def test_fixed_matches_every(self):
        """refit_every=R: refits at warm start and every R epochs after, as before."""
        schedule = RefitSchedule(2, 3, 0.05)
        assert [schedule.refit_epoch(e) for e in range(2, 12)] == [2, 2, 2, 5, 5, 5, 8, 8, 8,
                                                                  11]

    def test_budget_spaces_refits(self):
        """A refit costing 1.5 s against selected epochs of 3 s waits 10 epochs at 5%."""
        clock = FakeClock()
        schedule = RefitSchedule(1, None, 0.05, clock=clock)
        schedule.epoch_started(0, 1000)
        clock.now = 10.0  # epoch 0: 1,000 samples in 10 s
        schedule.epoch_started(1, 1000)
        assert schedule.refit_epoch(1) == 1
        schedule.refitted(1, 1.5, 300)
        # two refits of 1.5 s need 60 s of training: 10 s so far + 17 epochs of 3 s
        assert schedule.next_refit == 18
        assert [schedule.refit_epoch(e) for e in (1, 5, 17)] == [1, 1, 1]
        assert schedule.refit_epoch(18) == 18
        assert "1.5 s" in schedule.reason and "17 epoch" in schedule.reason

    def test_refit_time_not_counted_as_training(self):
        """The refit's own seconds inside an epoch are left out of its training time."""
        clock = FakeClock()
        schedule = RefitSchedule(0, None, 0.1, clock=clock)
        schedule.epoch_started(0, 100)
        schedule.refitted(0, 4.0, 100)  # no epoch timed yet: the next epoch refits
        assert schedule.next_refit == 1
        clock.now = 5.0  # 4 s of refit + 1 s of training for 100 samples
        schedule.epoch_started(1, 100)
        assert schedule.trained_seconds == pytest.approx(1.0)  # not 5 s
        schedule.refitted(1, 0.5, 100)
        # 4.5 s of refits, one more of 0.5 s: 50 s of training at 10%, 1 s done
        assert schedule.next_refit == 1 + 49

    def test_state_round_trip(self):
        """The decisions survive state() / load()."""
        schedule = RefitSchedule(1, None, 0.05)
        schedule.refits, schedule.next_refit = [1, 4], 9
        schedule.refit_seconds, schedule.trained_seconds = 2.5, 70.0
        other = RefitSchedule(1, None, 0.05)
        other.load(**schedule.state())
        assert [other.refit_epoch(e) for e in range(1, 10)] == [
            schedule.refit_epoch(e) for e in range(1, 10)]
        assert (other.refit_seconds, other.trained_seconds) == (2.5, 70.0)


class TestSamplerSchedule:
    def test_default_is_the_budget(self):
        """By default refits are spaced by max_overhead=0.05 and the report says why."""
        sampler = GraftBatchSampler(N, 20, fraction=0.25, seed=0, warm_start_epochs=1)
        assert sampler.refit_every is None and sampler.max_overhead == 0.05
        _observe_all(sampler)
        list(sampler)  # epoch 0 (warm start) is timed
        sampler.set_epoch(1)
        list(sampler)
        report = sampler.last_refit
        assert report.epoch == 1 and report.next_refit_epoch >= 2
        assert "max_overhead=0.05" in report.schedule

    def test_expensive_refits_are_spaced(self):
        """When an epoch trains in far less time than a refit, the subset is reused."""
        sampler = GraftBatchSampler(N, 20, fraction=0.25, seed=0, warm_start_epochs=1)
        clock = FakeClock()
        sampler._planner.schedule.clock = clock
        _observe_all(sampler)
        list(sampler)  # epoch 0, timed by the fake clock
        clock.now = 1e-4  # a whole epoch in 0.1 ms: any refit costs more than 5% of it
        sampler.set_epoch(1)
        first = [b for batch in sampler for b in batch]
        assert sampler.last_refit.next_refit_epoch == 1 + MAX_INTERVAL
        sampler.set_epoch(2)
        second = [b for batch in sampler for b in batch]
        assert sampler.last_refit.epoch == 1  # no refit at epoch 2
        pool = set(sampler._planner.subset.tolist())  # another draw of the same pool
        assert set(first) <= pool and set(second) <= pool and first != second

    def test_fixed_refit_every_overrides(self):
        """refit_every=1 refits every epoch, whatever the timings."""
        sampler = GraftBatchSampler(N, 20, fraction=0.25, seed=0, refit_every=1,
                                    warm_start_epochs=1)
        _observe_all(sampler)
        for epoch in (1, 2, 3):
            sampler.set_epoch(epoch)
            len(sampler)
            assert sampler.last_refit.epoch == epoch
            assert sampler.last_refit.schedule == "refit_every"

    def test_resume_keeps_the_decisions(self):
        """A loaded state plans the same refit epochs as the run that saved it."""
        sampler = GraftBatchSampler(N, 20, fraction=0.25, seed=0, warm_start_epochs=1)
        clock = FakeClock()
        sampler._planner.schedule.clock = clock
        _observe_all(sampler)
        list(sampler)
        clock.now = 1e-4
        sampler.set_epoch(1)
        list(sampler)
        state = sampler.state_dict()
        assert state["refit_epochs"] == [1] and state["next_refit"] == 1 + MAX_INTERVAL
        resumed = GraftBatchSampler(N, 20, fraction=0.25, seed=0, warm_start_epochs=1)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)
        assert torch.equal(resumed._plan(), _plan_at(sampler, 2))
        assert resumed._planner.schedule.next_refit == 1 + MAX_INTERVAL

    @pytest.mark.parametrize("bad, match", [
        ({"refit_epochs": [3, 1]}, "increasing"),
        ({"next_refit": -1}, "int >= 0"),
        ({"refit_epochs": "1"}, "list of epochs"),
        ({"refit_seconds": -1.0}, "'refit_seconds'.*finite float >= 0"),
        ({"trained_seconds": float("nan")}, "'trained_seconds'.*finite float >= 0"),
        ({"trained_seconds": "3"}, "'trained_seconds'"),
    ])
    def test_bad_schedule_state_named(self, bad, match):
        """A state with a malformed schedule raises and leaves the sampler unchanged."""
        sampler = GraftBatchSampler(N, 20, fraction=0.25, seed=0, warm_start_epochs=1)
        state = {**sampler.state_dict(), "refit_epochs": [1], "next_refit": 2, **bad}
        with pytest.raises((ValueError, TypeError), match=match):
            sampler.load_state_dict(state)
        assert sampler._planner.schedule.next_refit == 1

    def test_resume_keeps_the_budget_seconds(self):
        """The seconds behind the budget survive a resume; a state saved before they were
        kept loads with none (the next decision then counts the last refit alone)."""
        sampler = GraftBatchSampler(N, 20, fraction=0.25, seed=0, warm_start_epochs=1)
        clock = FakeClock()
        sampler._planner.schedule.clock = clock
        _observe_all(sampler)
        list(sampler)
        clock.now = 10.0
        sampler.set_epoch(1)
        list(sampler)
        state = sampler.state_dict()
        assert state["trained_seconds"] == 10.0 and state["refit_seconds"] > 0
        resumed = GraftBatchSampler(N, 20, fraction=0.25, seed=0, warm_start_epochs=1)
        resumed.load_state_dict(state)
        schedule = resumed._planner.schedule
        assert (schedule.refit_seconds, schedule.trained_seconds) == (state["refit_seconds"], 10.0)
        old = {k: v for k, v in state.items() if k not in ("refit_seconds", "trained_seconds")}
        resumed.load_state_dict(old)
        assert (schedule.refit_seconds, schedule.trained_seconds) == (0.0, 0.0)
        assert schedule.next_refit == state["next_refit"]

    @pytest.mark.parametrize("value", [0.0, 1.5, True])
    def test_bad_max_overhead(self, value):
        """max_overhead outside (0, 1] is refused, naming the parameter."""
        with pytest.raises((ValueError, TypeError), match="'max_overhead' parameter"):
            GraftBatchSampler(N, 20, max_overhead=value, warm_start_epochs=1)


def _plan_at(sampler, epoch):
    sampler.set_epoch(epoch)
    return sampler._plan()


class TestRefitThreads:
    def test_refit_runs_single_threaded(self, monkeypatch):
        """During a refit's selection every thread pool runs one thread, then comes back."""
        from threadpoolctl import threadpool_info

        from graft_select import selector as selector_module

        seen = []
        fit = selector_module.GraftSelector.fit

        def spy(self, *args, **kwargs):
            seen.append((torch.get_num_threads(),
                         [p["num_threads"] for p in threadpool_info()]))
            return fit(self, *args, **kwargs)

        monkeypatch.setattr(selector_module.GraftSelector, "fit", spy)
        before = (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()])
        sampler = GraftBatchSampler(N, 20, fraction=0.25, seed=0, warm_start_epochs=1)
        _observe_all(sampler)
        sampler.set_epoch(1)
        list(sampler)
        assert seen and seen[0][0] == 1 and set(seen[0][1]) == {1}
        assert (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()]) == before


def _ranks_worker(rank, world, port, out_dir):
    """Rank 1's epochs look 100x slower than rank 0's: both follow rank 0's decision."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sampler = GraftBatchSampler(N, 20, fraction=0.25, seed=0, warm_start_epochs=1)
        clock = FakeClock()
        sampler._planner.schedule.clock = clock
        _observe_all(sampler)
        list(sampler)
        clock.now = 1e-4 if rank == 0 else 1e4
        sampler.set_epoch(1)
        list(sampler)
        torch.save({"next": sampler.last_refit.next_refit_epoch,
                    "state": sampler.state_dict()["next_refit"]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ranks_decide_alike(tmp_path):
    """Two gloo ranks with different timings take the same (rank 0's) schedule."""
    out = spawn_ranks(_ranks_worker, 2, tmp_path)
    assert out[0] == out[1] == {"next": 1 + MAX_INTERVAL, "state": 1 + MAX_INTERVAL}
