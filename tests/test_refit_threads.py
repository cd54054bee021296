"""A refit's groups on several threads: the same picks, every native pool at one thread."""

import threading

import numpy as np
import pytest
from conftest import softmax_store

torch = pytest.importorskip("torch")

from graft_select import GraftSelector, StoredGradients, _background, _feedback, _planner  # noqa: E402
from graft_select.sampler import GraftBatchSampler  # noqa: E402


@pytest.fixture
def small_groups(monkeypatch):
    """Groups of one chunk of 100 rows: a 1,200-row store has twelve of them."""
    monkeypatch.setattr(_feedback, "GROUP_ROWS", 100)


@pytest.fixture
def torch_two_threads():
    """torch.set_num_threads(2), as a user or the demo's --threads sets it (restored)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _store(seed=0, n=1200):
    return softmax_store(np.random.default_rng(seed), n)


def _fit(workers, residuals, embeddings, rows, **params):
    params = {"fraction": 0.3, "chunk_size": 100, "basis": "gradients", "random_state": 0,
              **params}
    with _feedback.refit_workers(workers):
        return GraftSelector(**params).fit(
            None, gradients=StoredGradients(residuals, embeddings, rows), compute_weights=True)


def _recording(monkeypatch, record):
    """Wrap the factor step of a group; ``record()`` runs after it, in the group's thread."""
    seen = []
    eigenvectors = _feedback.gram_eigenvectors

    def wrapped(*args, **kwargs):
        out = eigenvectors(*args, **kwargs)
        seen.append((threading.current_thread().name, record()))
        return out

    monkeypatch.setattr(_feedback, "gram_eigenvectors", wrapped)
    return seen


class TestSamePicks:
    @pytest.mark.parametrize("uniform_share", [0.0, 0.5])
    def test_any_number_of_threads(self, small_groups, monkeypatch, uniform_share):
        """1, 2 and 4 threads select the same rows with the same errors and weights, bit for
        bit (both passes: ``uniform_share=0.5`` and the weights need the second)."""
        R, E = _store()
        rows = torch.randperm(1200, generator=torch.Generator().manual_seed(1))
        seen = _recording(monkeypatch, lambda: None)
        fits = [_fit(w, R, E, rows, uniform_share=uniform_share) for w in (1, 2, 4)]
        threads = {name for name, _ in seen}
        assert "MainThread" in threads and len(threads - {"MainThread"}) >= 2  # really parallel
        for fit in fits[1:]:
            assert torch.equal(fit.sample_indices_, fits[0].sample_indices_)
            np.testing.assert_array_equal(fit.gradient_error_, fits[0].gradient_error_)
            assert torch.equal(fit.sample_weight_, fits[0].sample_weight_)

    def test_first_bad_group_named(self, small_groups):
        """Non-finite rows in two groups: the error names the first in order, as one thread
        would, and the estimator is left unfitted."""
        R, E = _store()
        E[1050, 2] = float("inf")  # group 10
        E[450, 0] = float("nan")   # group 4: chunk 4
        selector = GraftSelector(0.3, chunk_size=100, basis="gradients", random_state=0)
        with _feedback.refit_workers(3), pytest.raises(ValueError, match="chunks 4 to 4"):
            selector.fit(None, gradients=StoredGradients(R, E, torch.arange(1200)))
        assert not hasattr(selector, "sample_indices_")

    def test_default_is_one_thread(self, small_groups, monkeypatch):
        """Outside a ``refit_workers`` context (the estimator, a background refit) the groups
        run one after another on the calling thread."""
        R, E = _store()
        seen = _recording(monkeypatch, lambda: None)
        GraftSelector(0.3, chunk_size=100, basis="gradients", random_state=0).fit(
            None, gradients=StoredGradients(R, E, torch.arange(1200)))
        assert len(seen) == 12 and {name for name, _ in seen} == {"MainThread"}


class TestThreadPools:
    def test_group_threads_run_torch_at_one_thread(self, small_groups, monkeypatch,
                                                   torch_two_threads):
        """With torch.set_num_threads(2), each group thread's torch pool stays at one thread
        after its torch operations (torch's per-thread setup would reset it to 2)."""
        R, E = _store()
        seen = _recording(monkeypatch, torch.get_num_threads)
        _fit(2, R, E, torch.arange(1200))
        workers = [n for name, n in seen if name != "MainThread"]
        assert workers and set(workers) == {1}
        assert torch.get_num_threads() == 2

    def test_background_refit_runs_torch_at_one_thread(self, monkeypatch, torch_two_threads):
        """The same for a background refit's thread: the refit's torch work at one thread
        while the training thread keeps its two."""
        seen = []
        fit = _planner.fit_selector

        def recording(*args, **kwargs):
            out = fit(*args, **kwargs)
            seen.append((threading.current_thread() is threading.main_thread(),
                         torch.get_num_threads()))
            return out

        monkeypatch.setattr(_planner, "fit_selector", recording)
        sampler = GraftBatchSampler(600, 20, fraction=0.3, seed=3, warm_start_epochs=2,
                                    refit_every=2, background=True)
        gen = torch.Generator().manual_seed(0)
        emb, logits = torch.randn(600, 6, generator=gen), torch.randn(600, 4, generator=gen)
        targets = torch.randint(0, 4, (600,), generator=gen)
        for epoch in range(4):
            sampler.set_epoch(epoch)
            for batch in sampler:
                idx = torch.as_tensor(batch)
                sampler.observe(idx, embeddings=emb[idx], logits=logits[idx],
                                targets=targets[idx])
        sampler.state_dict()  # waits for the refit of epoch 4 started after epoch 3's plan
        background = [n for main, n in seen if not main]
        assert background and set(background) == {1}
        assert torch.get_num_threads() == 2


    def test_at_most_a_third_of_the_groups_at_once(self, monkeypatch):
        """Five groups run on one thread whatever the context: two group working sets
        side by side would exceed a small store's size."""
        monkeypatch.setattr(_feedback, "GROUP_ROWS", 200)
        R, E = _store(n=1000)
        seen = _recording(monkeypatch, lambda: None)
        _fit(4, R, E, torch.arange(1000))
        assert len(seen) == 5 and {name for name, _ in seen} == {"MainThread"}


class TestSampler:
    def _plans(self, threads, monkeypatch):
        monkeypatch.setattr(_planner, "refit_threads", lambda num_replicas: threads)
        sampler = GraftBatchSampler(1200, 30, fraction=0.2, seed=5, warm_start_epochs=1,
                                    refit_every=1)
        gen = torch.Generator().manual_seed(2)
        emb, logits = torch.randn(1200, 8, generator=gen), torch.randn(1200, 5, generator=gen)
        targets = torch.randint(0, 5, (1200,), generator=gen)
        plans = []
        for epoch in range(4):
            sampler.set_epoch(epoch)
            plan = [list(batch) for batch in sampler]
            plans.append(plan)
            for batch in plan:
                idx = torch.as_tensor(batch)
                sampler.observe(idx, embeddings=emb[idx] * (1 + epoch), logits=logits[idx],
                                targets=targets[idx])
        return plans

    def test_plans_do_not_depend_on_the_threads(self, small_groups, monkeypatch):
        """A sampler refitting on 1 or 3 threads plans the same epochs."""
        seen = _recording(monkeypatch, lambda: None)
        one = self._plans(1, monkeypatch)
        assert {name for name, _ in seen} == {"MainThread"}
        three = self._plans(3, monkeypatch)
        assert len({name for name, _ in seen}) > 2
        assert one == three

    @pytest.mark.parametrize("local, replicas, cores, torch_threads, expected", [
        (None, 1, 2, 2, 2), (None, 1, 16, 16, _background.MAX_REFIT_THREADS),
        (None, 4, 16, 16, 4), (None, 8, 16, 16, 2), ("8", 16, 16, 16, 2),
        ("2", 16, 16, 16, 4), (None, 4, 2, 2, 1), ("x", 2, 4, 4, 2), (None, 1, 16, 1, 1),
        (None, 1, 16, 3, 3),
    ])
    def test_threads_share_the_cores(self, monkeypatch, local, replicas, cores, torch_threads,
                                     expected):
        """A process's share of the cores among this machine's processes (LOCAL_WORLD_SIZE,
        else the replicas), no more than torch's threads, between 1 and
        MAX_REFIT_THREADS."""
        monkeypatch.setattr(_background.torch, "get_num_threads", lambda: torch_threads)
        if local is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        monkeypatch.setattr(_background, "usable_cores", lambda: cores)
        assert _background.refit_threads(replicas) == expected


class TestThreadPoolsController:
    def test_kept_until_a_module_is_imported(self, monkeypatch):
        """thread_pools() scans the libraries once, and again after an import."""
        import sys
        import types

        from graft_select import _backend

        first = _backend.thread_pools()
        assert _backend.thread_pools() is first
        monkeypatch.setitem(sys.modules, "graft_select_test_dummy", types.ModuleType("d"))
        second = _backend.thread_pools()
        assert second is not first and _backend.thread_pools() is second

    def test_refits_scan_no_libraries(self, small_groups, monkeypatch):
        """A refit builds no threadpoolctl controller once one exists (each build scans
        the process's libraries: a fifth of a 20,000-sample refit's time)."""
        import threadpoolctl

        from graft_select import _backend

        _backend.thread_pools()
        built = []
        original = threadpoolctl.ThreadpoolController.__init__

        def counting(self, *args, **kwargs):
            built.append(1)
            original(self, *args, **kwargs)

        monkeypatch.setattr(threadpoolctl.ThreadpoolController, "__init__", counting)
        R, E = _store()
        with _backend.single_threaded():
            _fit(2, R, E, torch.arange(1200))
        assert built == []


class TestBlasFromOtherThreads:
    def _blas_threads(self):
        from threadpoolctl import threadpool_info

        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    def test_a_thread_after_the_main_one_gets_blas_at_one_thread(self):
        """threadpoolctl lets one thread at a time control OpenBLAS: a hold released by the
        main thread gives control back, so a refit driven from another thread (a training
        loop run in a thread) still runs BLAS at one thread."""
        from graft_select import _backend

        if not self._blas_threads() - {1}:
            pytest.skip("BLAS runs at one thread already")
        with _backend.single_threaded():
            assert self._blas_threads() == {1}
        seen = []

        def refit():
            with _backend.single_threaded():
                seen.append(self._blas_threads())

        thread = threading.Thread(target=refit)
        thread.start()
        thread.join()
        assert seen == [{1}]

    def test_groups_on_one_thread_when_blas_is_not_limited(self, small_groups, monkeypatch):
        """Where the BLAS limit cannot be set (another thread controls it), the groups run
        one after another rather than oversubscribe the cores."""
        monkeypatch.setattr(_feedback, "blas_at_one_thread", lambda: False)
        R, E = _store()
        seen = _recording(monkeypatch, lambda: None)
        _fit(3, R, E, torch.arange(1200))
        assert {name for name, _ in seen} == {"MainThread"}
