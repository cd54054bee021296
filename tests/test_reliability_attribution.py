"""Issue 25, reliability round 3: feedback attribution, watch() and the feedback store.

Each test is named after its finding (f01: finding 1). A silent wrong answer is
the worst failure of a sampler, so most tests check which sample each stored row
landed under, not only that nothing raised.
"""

import contextlib
import warnings

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from graft_select.sampler import GraftBatchSampler  # noqa: E402

N, D_IN, H, C, B = 64, 6, 5, 3, 8


class Net(nn.Module):
    """A body and a linear head; ``embed`` gives every sample's true embedding."""

    def __init__(self, classes=C):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, H), nn.ReLU())
        self.head = nn.Linear(H, classes)

    def forward(self, x):
        return self.head(self.body(x))

    def embed(self, X):
        with torch.no_grad():
            return self.body(X)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D_IN, generator=g), torch.randint(0, C, (N,), generator=g)


def _setup(**kwargs):
    torch.manual_seed(0)
    X, y = _data()
    model = Net()
    sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y,
                                **kwargs)
    sampler.watch(model)
    return X, y, model, sampler


def _assert_attributed(sampler, expected):
    """Every stored embedding row is its own sample's; returns the observed mask."""
    state = sampler.state_dict()
    seen = state["last_seen"] >= 0
    assert bool(seen.any())
    torch.testing.assert_close(state["store"]["embeddings"][seen], expected[seen])
    return seen


def _unobserved(sampler, indices):
    return bool((sampler.state_dict()["last_seen"][indices] < 0).all())


def _ahead(loader):
    """A wrapper that fetches one batch ahead of the loop (as Lightning's fetcher does)."""
    iterator = iter(loader)
    upcoming = next(iterator, None)
    while upcoming is not None:
        current, upcoming = upcoming, next(iterator, None)
        yield current


def _through(loader):
    """A generator wrapper that fetches nothing ahead (as tqdm does)."""
    yield from loader


class TestSkippedObserve:
    def test_f01_skipped_observe_does_not_shift_batches(self):
        """A batch whose observe() is skipped after its forward shifts no later batch."""
        X, _, model, sampler = _setup()
        skipped = None
        for step, (x, _) in enumerate(DataLoader(TensorDataset(X, X), batch_sampler=sampler)):
            model(x)
            if step == 2:  # if nan_loss: continue
                skipped = sampler._iteration.batches[step]
                continue
            sampler.observe()
        seen = _assert_attributed(sampler, model.embed(X))
        assert int(seen.sum()) == N - len(skipped) and _unobserved(sampler, skipped)

    def test_f01_skip_before_the_forward(self):
        """A batch skipped before its forward is not observed; the next batch is its own."""
        X, _, model, sampler = _setup()
        skipped = None
        for step, batch in enumerate(sampler):  # the sampler iterated directly
            if step == 1:
                skipped = batch
                continue
            model(X[batch])
            sampler.observe()
        seen = _assert_attributed(sampler, model.embed(X))
        assert int(seen.sum()) == N - len(skipped) and _unobserved(sampler, skipped)

    def test_f01_skip_under_dataloader_workers(self):
        """With workers fetching ahead (in order), a skipped observe() shifts nothing."""
        X, _, model, sampler = _setup()
        loader = DataLoader(TensorDataset(X, X), batch_sampler=sampler, num_workers=2)
        for step, (x, _) in enumerate(loader):
            model(x)
            if step in (0, 3, 4):
                continue
            sampler.observe()
        seen = _assert_attributed(sampler, model.embed(X))
        assert int(seen.sum()) == N - 3 * B

    def test_f01_skip_in_a_helper_function(self):
        """observe() called from a function the loop calls still sees the loop's batch."""
        X, _, model, sampler = _setup()

        def train_step(x, skip):
            model(x)
            if not skip:
                sampler.observe()

        for step, (x, _) in enumerate(DataLoader(TensorDataset(X, X), batch_sampler=sampler)):
            train_step(x, skip=step == 5)
        assert int(_assert_attributed(sampler, model.embed(X)).sum()) == N - B

    def test_f01_two_forwards_of_one_batch(self):
        """Two forwards of one batch (SAM, a second view) stay on that batch."""
        X, _, model, sampler = _setup()
        for x, _ in DataLoader(TensorDataset(X, X), batch_sampler=sampler):
            model(x + 1.0)
            model(x)
            sampler.observe()
        assert bool(_assert_attributed(sampler, model.embed(X)).all())

    def test_f01_prefetching_wrapper_raises_at_the_first_batch(self):
        """Behind a wrapper that fetches ahead, unknown to the sampler, the pass's first
        observe() cannot be told from a skipped first batch: it raises; with indices=
        every batch is attributed right."""
        X, _, model, sampler = _setup()
        with pytest.raises(ValueError, match=r"first observe\(\) of this pass 2 batches"):
            for x, _ in _ahead(DataLoader(TensorDataset(X, X), batch_sampler=sampler)):
                model(x)
                sampler.observe()
        assert bool((sampler.state_dict()["last_seen"] < 0).all())  # nothing stored
        X, _, model, sampler = _setup()
        data = TensorDataset(X, torch.arange(N))
        for x, index in _ahead(DataLoader(data, batch_sampler=sampler)):
            model(x)
            sampler.observe(index)
        assert bool(_assert_attributed(sampler, model.embed(X)).all())

    def test_f01_first_batch_skipped_behind_a_wrapper_raises(self):
        """A first batch skipped behind a wrapper that fetches nothing ahead (tqdm) raises
        at the next observe() instead of recording every later batch one batch off."""
        X, _, model, sampler = _setup()
        with pytest.raises(ValueError, match="first batch whose observe"):
            for step, (x, _) in enumerate(
                    _through(DataLoader(TensorDataset(X, X), batch_sampler=sampler))):
                model(x)
                if step != 0:
                    sampler.observe()
        assert bool((sampler.state_dict()["last_seen"] < 0).all())  # nothing stored

    def test_f01_plain_wrapper_observed_every_batch(self):
        """Behind a wrapper that fetches nothing ahead, every observed batch is its own."""
        X, _, model, sampler = _setup()
        for x, _ in _through(DataLoader(TensorDataset(X, X), batch_sampler=sampler)):
            model(x)
            sampler.observe()
        assert bool(_assert_attributed(sampler, model.embed(X)).all())

    def test_f01_skip_behind_a_wrapper_raises(self):
        """Behind a generator wrapper a skipped observe() cannot be told apart: it raises."""
        X, _, model, sampler = _setup()
        with pytest.raises(ValueError, match=r"skipped.*indices="):
            for step, (x, _) in enumerate(
                    _through(DataLoader(TensorDataset(X, X), batch_sampler=sampler))):
                model(x)
                if step != 1:
                    sampler.observe()
        _assert_attributed(sampler, model.embed(X))  # nothing stored under a wrong index

    def test_f01_second_observe_of_one_batch_raises(self):
        """observe() twice for one batch raises instead of taking a batch not trained."""
        X, _, model, sampler = _setup()
        loader = DataLoader(TensorDataset(X, X), batch_sampler=sampler, num_workers=2)
        for x, _ in loader:
            model(x)
            sampler.observe()
            model(x)
            with pytest.raises(ValueError, match="observed already"):
                sampler.observe()
            break
        _assert_attributed(sampler, model.embed(X))


    @pytest.mark.parametrize("num_workers", [0, 2])
    def test_f01_after_torchdata_restore(self, num_workers):
        """A StatefulDataLoader resumed mid-epoch: observe() still finds each batch."""
        stateful = pytest.importorskip("torchdata.stateful_dataloader")
        X, _, model, sampler = _setup()
        data = TensorDataset(X)
        loader = stateful.StatefulDataLoader(data, batch_sampler=sampler,
                                             num_workers=num_workers)
        iterator = iter(loader)
        for _ in range(3):
            model(next(iterator)[0])
            sampler.observe()
        state = loader.state_dict()
        _, _, _, fresh = _setup()
        fresh.watch(model)
        loader2 = stateful.StatefulDataLoader(data, batch_sampler=fresh,
                                              num_workers=num_workers)
        loader2.load_state_dict(state)
        for step, (x,) in enumerate(loader2):
            model(x)
            if step != 1:
                fresh.observe()
        assert int(_assert_attributed(fresh, model.embed(X)).sum()) == N - B


class TestOutOfOrderLoader:
    def test_f02_out_of_order_workers_raise(self):
        """DataLoader(num_workers=2, in_order=False): observe() without indices raises."""
        X, _, model, sampler = _setup()
        loader = DataLoader(TensorDataset(X, torch.arange(N)), batch_sampler=sampler,
                            num_workers=2, in_order=False)
        stored = 0
        for x, index in loader:
            model(x)
            with pytest.raises(ValueError, match=r"in_order=False.*indices"):
                sampler.observe()
            sampler.observe(index)  # with the batch's indices it is exact
            stored += len(index)
        assert stored == N
        assert bool(_assert_attributed(sampler, model.embed(X)).all())


class TestLoopPullingAhead:
    @pytest.mark.parametrize("num_workers", [0, 2])
    def test_next_fetched_ahead_raises_before_recording(self, num_workers):
        """A loop that fetches the next batch with next() before the current one's step
        (to overlap a copy): observe() without indices stored each batch's values under
        the next batch's indices (48 of 48 rows wrong) and raised only at the epoch's
        end, pointing elsewhere. It now raises at the first observe(), having recorded
        nothing, and names the fix."""
        X, _, model, sampler = _setup()
        loader = DataLoader(TensorDataset(X), batch_sampler=sampler, num_workers=num_workers)
        batches = iter(loader)
        current = next(batches)
        upcoming = next(batches)  # fetched ahead of the current batch's step
        model(current[0])
        with pytest.raises(ValueError, match=r"pulled with next\(\).*fetched ahead.*indices"):
            sampler.observe()
        assert _unobserved(sampler, torch.arange(N))
        del upcoming

    def test_for_loop_that_skips_an_observe_still_records_the_latest(self):
        """A for loop holds one batch at a time: with an observe() skipped (a NaN loss's
        continue), the next observe() records the batch the loop is on, as before."""
        X, _, model, sampler = _setup()
        for step, (x,) in enumerate(DataLoader(TensorDataset(X), batch_sampler=sampler)):
            model(x)
            if step == 2:
                continue
            sampler.observe()
        seen = _assert_attributed(sampler, model.embed(X).detach())
        assert int(seen.sum()) == N - B


class TestForwardsBetween:
    @pytest.mark.parametrize("mode", ["no_grad_eval", "no_grad", "eval"])
    def test_other_forward_before_observe_raises(self, mode):
        """A forward of the same batch size in another mode between the training forward
        and observe() (an evaluation batch): its values were stored under the training
        batch's indices, silently. observe() now raises, names both modes and the fix,
        and records nothing."""
        X, y, model, sampler = _setup()
        batch = next(iter(sampler))
        nn.functional.cross_entropy(model(X[batch]), y[batch]).backward()
        model.train(mode == "no_grad")
        with torch.no_grad() if mode.startswith("no_grad") else contextlib.nullcontext():
            model(torch.randn(B, D_IN))
        model.train()
        with pytest.raises(ValueError, match=r"ran 2 forward passes since the last observe\(\)"
                                             r": one with autograd in training mode.*"
                                             r"embeddings= and logits="):
            sampler.observe()
        assert _unobserved(sampler, torch.arange(N))

    def test_other_forward_in_the_steady_state_raises(self):
        """The check runs at every observe(), not only at a pass's first: an evaluation
        forward before observe() at the fourth step was stored as the training batch's."""
        X, _, model, sampler = _setup()
        for step, batch in enumerate(sampler):
            model(X[batch])
            if step == 3:
                with torch.no_grad():
                    model(torch.randn(B, D_IN))
                with pytest.raises(ValueError, match="forward passes since the last"):
                    sampler.observe()
                break
            sampler.observe()
        seen = _assert_attributed(sampler, model.embed(X).detach())
        assert int(seen.sum()) == 3 * B

    def test_forwards_in_eval_mode_with_autograd_before_training_pass(self):
        """An eval-mode forward with autograd before the training forward (an adversarial
        attack, an evaluation without no_grad) raised: the latest forward, in training
        mode with autograd, is the training batch's."""
        X, _, model, sampler = _setup()
        for batch in sampler:
            model.eval()
            model(X[batch] + 0.1)
            model.train()
            model(X[batch])
            sampler.observe()
        assert bool(_assert_attributed(sampler, model.embed(X).detach()).all())

    def test_evaluation_after_observe_and_recomputed_forwards_pass(self):
        """Forwards in another mode before the training forward (an evaluation between
        steps), or in the same mode after it (a checkpointed head recomputed in the
        backward pass), leave the training forward's values recorded."""
        X, y, model, sampler = _setup()
        for step, batch in enumerate(sampler):
            if step == 1:
                with torch.no_grad():
                    model.eval()
                    model(torch.randn(B, D_IN))
                    model.train()
            out = model(X[batch])
            if step == 2:
                model(X[batch])  # the same forward again, as a recomputation
            nn.functional.cross_entropy(out, y[batch]).backward()
            sampler.observe()
        seen = _assert_attributed(sampler, model.embed(X).detach())
        assert bool(seen.all())


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, H), nn.ReLU())
        self.cls = nn.Linear(H, C)
        self.box = nn.Linear(H, 4)

    def forward(self, x):
        h = self.body(x)
        return self.cls(h), self.box(h)


class HeadFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(H, C)
        self.body = nn.Sequential(nn.Linear(D_IN, 16), nn.ReLU(), nn.Linear(16, H), nn.ReLU())

    def forward(self, x):
        return self.head(self.body(x))


class HeadTwice(nn.Module):
    """One head called twice per forward (an auxiliary call on a flipped batch)."""

    def __init__(self, returned_last):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, H), nn.ReLU())
        self.head = nn.Linear(H, C)
        self.returned_last = returned_last

    def forward(self, x):
        h = self.body(x)
        if self.returned_last:
            self.head(h.flip(0))
            return self.head(h)
        out = self.head(h)
        self.head(h.flip(0))
        return out

    def embed(self, X):
        with torch.no_grad():
            return self.body(X)


class Cast(nn.Module):
    def forward(self, x):
        return x.double()


class Reshape(nn.Module):
    def forward(self, x):
        return x.reshape(-1)


class Shift(nn.Module):
    def forward(self, x):
        return x + 1.0


class Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, H), nn.ReLU())
        self.head = nn.Linear(H, C)

    def forward(self, x):
        return self.head(self.body(x)) / 0.1


class CosineHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(D_IN, H)
        self.weight = nn.Parameter(torch.randn(C, H))

    def forward(self, x):
        h = nn.functional.normalize(torch.relu(self.body(x)), dim=1)
        return 10 * h @ nn.functional.normalize(self.weight, dim=1).T


class MaskedHead(nn.Module):
    """Logits with class 0 masked to -inf in every other row, then ``log_softmax``."""

    def __init__(self, log_softmax=False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, H), nn.ReLU())
        self.head = nn.Linear(H, C)
        self.log_softmax = log_softmax

    def forward(self, x):
        z = self.head(self.body(x))
        mask = torch.zeros_like(z, dtype=torch.bool)
        mask[::2, 0] = True
        z = z.masked_fill(mask, float("-inf"))
        return torch.log_softmax(z, dim=1) if self.log_softmax else z


class ConvHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(D_IN, H)
        self.head = nn.Conv1d(H, C, 1)

    def forward(self, x):
        return self.head(torch.relu(self.body(x))[:, :, None])[:, :, 0]


class PooledTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(D_IN, 4 * H)
        self.head = nn.Linear(H, C)

    def forward(self, x):
        tokens = torch.relu(self.body(x)).reshape(x.shape[0], 4, H)
        return self.head(tokens)[:, -1]


def _one_batch(model, sampler, X, **observe):
    batch = next(iter(sampler))
    model(X[batch])
    sampler.observe(**observe)
    return batch


class TestHead:
    def test_f03_head_defined_before_body(self):
        """The head is the Linear whose output the model returns, not the last registered."""
        X, y = _data()
        model = HeadFirst()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        capture = sampler.watch(model)
        batch = _one_batch(model, sampler, X)
        assert capture.layer is model.head
        store = sampler.state_dict()["store"]
        assert store["embeddings"].shape[1] == H and store["residuals"].shape[1] == C
        torch.testing.assert_close(store["embeddings"][batch], model.body(X[batch]).detach())

    @pytest.mark.parametrize("layer", [None, "head"])
    def test_head_called_twice_raises_unless_returned_last(self, layer):
        """A head called twice in one forward, whose returned output is not the latest
        call's: observe() raises instead of recording the other call's rows (with
        layer=None it used to hook the body's Linear: the rows' embeddings and logits
        came from the wrong layer, silently). Returned last, the rows are right."""
        X, y = _data()
        model = HeadTwice(returned_last=False)
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model, None if layer is None else model.head)
        with pytest.raises(ValueError, match=r"ran 2 times in one forward of HeadTwice"):
            _one_batch(model, sampler, X)
        assert bool((sampler.state_dict()["last_seen"] < 0).all())
        model = HeadTwice(returned_last=True)
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        capture = sampler.watch(model, None if layer is None else model.head)
        batch = _one_batch(model, sampler, X)
        assert capture.layer is model.head
        store = sampler.state_dict()["store"]
        torch.testing.assert_close(store["embeddings"][batch], model.embed(X[batch]))

    def test_f03_head_behind_log_softmax(self):
        """A head whose output the model transforms (log_softmax) is still found."""
        X, y = _data()
        model = HeadFirst()
        wrapped = nn.Sequential(model, nn.LogSoftmax(dim=1))
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        capture = sampler.watch(wrapped)
        _one_batch(wrapped, sampler, X)
        assert capture.layer is model.head

    @pytest.mark.parametrize("after", ["softmax", "float", "reshape"])
    def test_head_behind_a_transform_that_keeps_the_residuals(self, after):
        """A head whose output reaches the model's through softmax, a cast or a
        reshape is found, and its rows are the head's."""
        X, y = _data()
        model = HeadFirst()
        transform = {"softmax": nn.Softmax(dim=1), "float": Cast(),
                     "reshape": Reshape()}[after]
        wrapped = nn.Sequential(model, transform)
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        capture = sampler.watch(wrapped)
        batch = _one_batch(wrapped, sampler, X)
        assert capture.layer is model.head
        store = sampler.state_dict()["store"]
        torch.testing.assert_close(store["embeddings"][batch], model.body(X[batch]).detach())

    @pytest.mark.parametrize("model_class", ["Temperature", "CosineHead", "ConvHead"])
    def test_output_not_the_linears_logits_raises(self, model_class):
        """A model whose output is computed from a Linear but is not its logits (a
        temperature, a cosine classifier, a Conv1d head behind a Linear body): watch()
        used to hook that Linear and record its outputs as the logits, silently (the
        cosine and Conv1d heads' 8-wide body as 3 classes). observe() now raises, names
        the layer and the fixes, and records nothing."""
        X, y = _data()
        model = {"Temperature": Temperature, "CosineHead": CosineHead,
                 "ConvHead": ConvHead}[model_class]()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model)
        with pytest.raises(ValueError, match=r"computed from '(body|head)'.*not that "
                                             r"layer's output.*layer=.*logits= to observe"):
            _one_batch(model, sampler, X)
        assert bool((sampler.state_dict()["last_seen"] < 0).all())

    @pytest.mark.parametrize("log_softmax", [False, True])
    def test_masked_logits_raise(self, log_softmax):
        """Logits masked to -inf after the Linear (for example allowed actions),
        alone or under log_softmax: the residuals of the masked output are not the
        Linear's. The check set every row holding -inf aside as non-finite, so a
        mask in every batch passed it and observe() recorded the unmasked logits,
        silently. It now raises."""
        X, y = _data()
        model = MaskedHead(log_softmax)
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model)
        with pytest.raises(ValueError, match=r"computed from 'head'.*mask"):
            _one_batch(model, sampler, X)
        assert bool((sampler.state_dict()["last_seen"] < 0).all())

    @pytest.mark.parametrize("case", ["float64", "nan_row", "compiled"])
    def test_head_behind_log_softmax_in_hard_settings(self, case):
        """A head behind log_softmax is found in float64 (the comparison ran in float32
        against float64's rounding), when the first batch holds a NaN row (it compared
        the NaN), and in a forward compiled with torch.compile (the check broke a
        Dynamo guard): the check added to watch() rejected all three."""
        X, y = _data()
        model = nn.Sequential(HeadFirst(), nn.LogSoftmax(dim=1))
        if case == "float64":
            model, X = model.double(), X.double()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        capture = sampler.watch(model)
        batch = next(iter(sampler))
        inputs = X[batch].clone()
        if case == "nan_row":
            inputs[0] = float("nan")
        forward = torch.compile(model, backend="aot_eager") if case == "compiled" else model
        forward(inputs)
        sampler.observe()  # a NaN row is set aside by the store (reported at the refit)
        assert capture.error is None and capture.layer is model[0].head

    def test_head_per_token_returning_its_last_token(self):
        """A head applied per token whose model returns the last token's logits: observe()
        records that token's embeddings (it named the per-token input and raised; a
        pooling that is no one token's logits still does, see
        test_watch_pools_a_per_token_head_at_the_returned_token)."""
        X, y = _data()
        model = PooledTokens()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model)
        batch = _one_batch(model, sampler, X)
        with torch.no_grad():
            last = torch.relu(model.body(X)).reshape(N, 4, H)[:, -1]
        stored = sampler.state_dict()["store"]["embeddings"]
        torch.testing.assert_close(stored[batch], last[batch])

    def test_regression_output_behind_a_shift_raises(self):
        """With loss="mse" a shift of the head's output changes the residuals
        ``yhat - y``: it is not taken for the head's output (log_softmax is, with
        cross-entropy)."""
        X, _ = _data()
        model = nn.Sequential(nn.Linear(D_IN, H), nn.ReLU(), nn.Linear(H, 2), Shift())
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1,
                                    targets=torch.randn(N, 2), loss="mse")
        sampler.watch(model)
        with pytest.raises(ValueError, match=r"is not that layer's output: "):
            _one_batch(model, sampler, X)

    def test_detached_output_named(self):
        """A model returning detached logits: the message says so (it said the forwards
        ran under torch.no_grad(), which they did not)."""
        class Detached(Net):
            def forward(self, x):
                return super().forward(x).detach()

        X, y = _data()
        model = Detached()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model)
        with pytest.raises(ValueError, match=r"no autograd graph.*returns detached values"):
            _one_batch(model, sampler, X)

    def test_layers_called_without_the_models_forward_named(self):
        """Two Linear layers called directly (a training_step that skips the model's
        forward): the message reads as a sentence (a verb was missing)."""
        X, y = _data()
        model = TwoHeads()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model)
        batch = next(iter(sampler))
        features = model.body(X[batch])
        model.cls(features)
        model.box(features)
        with pytest.raises(ValueError, match=r"its own forward never ran, and the layers "
                                             r"called last are several torch.nn.Linear "
                                             r"layers \('cls', 'box'\)"):
            sampler.observe()

    def test_f04_two_heads_raise(self):
        """Two returned heads: observe() names both and asks for layer=."""
        X, y = _data()
        model = TwoHeads()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model)
        with pytest.raises(ValueError, match=r"'cls'.*'box'.*layer="):
            _one_batch(model, sampler, X)
        assert "store" not in sampler.state_dict() or not sampler.state_dict()["store"]

    def test_f04_two_heads_with_layer(self):
        """With layer= the named head is recorded."""
        X, y = _data()
        model = TwoHeads()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model, layer=model.cls)
        _one_batch(model, sampler, X)
        assert sampler.state_dict()["store"]["residuals"].shape[1] == C

    def test_f38_unused_layer_named(self):
        """A watched layer the forward never calls: the message names it and layer=."""
        X, y = _data()
        model = Net()
        model.spare = nn.Linear(H, C)  # registered last, never called
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model, layer=model.spare)
        with pytest.raises(ValueError, match=r"'spare'.*does not call.*layer="):
            _one_batch(model, sampler, X)

    def test_f38_unused_last_linear_not_hooked(self):
        """Without layer=, an unused Linear registered last is not taken for the head."""
        X, y = _data()
        model = Net()
        model.spare = nn.Linear(H, C)
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        capture = sampler.watch(model)
        _one_batch(model, sampler, X)
        assert capture.layer is model.head

    def test_f39_three_dimensional_input(self):
        """A watched Linear applied to (b, T, d): the message names the shape and layer=."""
        _, y = _data()
        model = Net()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model, layer=model.head)
        batch = next(iter(sampler))
        model.head(torch.randn(len(batch), 7, H))
        with pytest.raises(ValueError, match=r"\(8, 7, 5\).*one row of embeddings.*layer="):
            sampler.observe()

    def test_f40_micro_batches_named(self):
        """A batch forwarded as 2 micro-batches: the message says only the last is kept."""
        X, _, model, sampler = _setup()
        batch = next(iter(sampler))
        model(X[batch[:3]])
        model(X[batch[3:]])
        with pytest.raises(ValueError, match=r"3 \+ 5 rows.*micro-batches.*last forward"):
            sampler.observe()


class MultiheadModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(H, 1, batch_first=True)
        self.head = nn.Linear(H, C)

    def forward(self, x):
        out, _ = self.attention(x, x, x)
        return self.head(out[:, 0])


class DictLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(H, C)

    def forward(self, x):
        return {"logits": self.fc(x)}


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(D_IN, H)
        self.out = DictLayer()

    def forward(self, x):
        return self.out(self.body(x))["logits"]


class KeywordModel(Net):
    def forward(self, x):
        return self.head(input=self.body(input=x))


class TestHooksNeverBreakForward:
    def test_f22_tuple_output_layer(self):
        """layer= a MultiheadAttention: the forward runs; observe() says what is wrong."""
        model = MultiheadModel()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1,
                                    targets=_data()[1])
        sampler.watch(model, layer=model.attention)
        batch = next(iter(sampler))
        model(torch.randn(len(batch), 2, H))  # raised AttributeError inside the hook
        with pytest.raises(ValueError, match=r"'attention'.*returned a tuple.*layer="):
            sampler.observe()

    def test_f23_dict_output_layer(self):
        """layer= a module returning a dict: the forward runs; observe() says what is wrong."""
        X, y = _data()
        model = DictModel()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        sampler.watch(model, layer=model.out)
        batch = next(iter(sampler))
        model(X[batch])
        with pytest.raises(ValueError, match=r"returned a dict.*layer="):
            sampler.observe()

    def test_f24_keyword_called_linear(self):
        """A head called as self.head(input=h) is recorded like a positional call."""
        X, y = _data()
        model = KeywordModel()
        sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
        capture = sampler.watch(model)
        batch = _one_batch(model, sampler, X)
        assert capture.layer is model.head
        torch.testing.assert_close(sampler.state_dict()["store"]["embeddings"][batch],
                                   model.embed(X[batch]))


class TestFeedbackKinds:
    def test_f05_one_logit_binary_head(self):
        """One logit (BCE): the residuals are those of the two-class logits (0, z)."""
        X, _ = _data()
        y = (X[:, 0] > 0).long()
        torch.manual_seed(0)
        model = Net(classes=1)
        sampler = GraftBatchSampler(N, B, fraction=0.5, warm_start_epochs=1, targets=y)
        sampler.watch(model)
        for batch in sampler:
            model(X[batch])
            sampler.observe()
        residuals = sampler.state_dict()["store"]["residuals"]
        p = torch.sigmoid(model(X).detach()[:, 0])
        expected = torch.stack([(1 - p) - (y == 0).float(), p - (y == 1).float()], dim=1)
        torch.testing.assert_close(residuals, expected)
        assert bool((residuals.abs().sum(dim=1) > 0).all())  # label-0 rows are not zeros
        sampler.set_epoch(1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing rejected
            assert len(list(sampler)) > 0

    def test_f11_gradients_with_logits_raise(self):
        """observe(gradients=G) together with logits raises instead of ignoring G."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1)
        idx = torch.arange(B)
        with pytest.raises(ValueError, match="both 'gradients' and 'logits'"):
            sampler.observe(idx, embeddings=torch.randn(B, H), logits=torch.randn(B, C),
                            targets=torch.zeros(B, dtype=torch.long),
                            gradients=torch.randn(B, 4))
        assert not sampler.state_dict()["store"]

    def test_f12_mixed_kinds_raise(self):
        """Gradient-only samples next to logit samples raise (they would never be selected)."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1)
        sampler.observe(torch.arange(B), embeddings=torch.randn(B, H),
                        logits=torch.randn(B, C), targets=torch.zeros(B, dtype=torch.long))
        with pytest.raises(ValueError, match="same kinds of feedback"):
            sampler.observe(torch.arange(B, 2 * B), gradients=torch.randn(B, 4))
        with pytest.raises(ValueError, match="same kinds of feedback"):
            sampler.observe(torch.arange(B, 2 * B), embeddings=torch.randn(B, H))
        assert int((sampler.state_dict()["last_seen"] >= 0).sum()) == B

    def test_f12_added_kind_marks_earlier_samples_unobserved(self):
        """Logits after embeddings-only rows: the embeddings-only samples count as unobserved."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1)
        sampler.observe(torch.arange(N), embeddings=torch.randn(N, H))
        with pytest.warns(UserWarning, match=f"{N} samples were recorded before"):
            sampler.observe(torch.arange(B), embeddings=torch.randn(B, H),
                            logits=torch.randn(B, C), targets=torch.zeros(B, dtype=torch.long))
        seen = sampler.state_dict()["last_seen"] >= 0
        assert seen[:B].all() and not seen[B:].any()

    def test_f12_after_load(self):
        """A loaded store fixes the kinds too."""
        first = GraftBatchSampler(N, B, warm_start_epochs=1)
        first.observe(torch.arange(N), gradients=torch.randn(N, 4))
        second = GraftBatchSampler(N, B, warm_start_epochs=1)
        second.load_state_dict(first.state_dict())
        with pytest.raises(ValueError, match="same kinds of feedback"):
            second.observe(torch.arange(B), embeddings=torch.randn(B, H),
                           logits=torch.randn(B, C), targets=torch.zeros(B, dtype=torch.long))


class TestStoreDtype:
    def test_f17_float16_underflow_reported(self):
        """Embeddings of order 1e-8 in a float16 store are rejected and reported, not zeroed."""
        sampler = GraftBatchSampler(N, B, fraction=0.5, warm_start_epochs=1,
                                    feedback_dtype=torch.float16)
        g = torch.Generator().manual_seed(0)
        sampler.observe(torch.arange(N), embeddings=1e-8 * torch.randn(N, 25, generator=g),
                        logits=torch.randn(N, C, generator=g),
                        targets=torch.randint(0, C, (N,), generator=g))
        assert bool((sampler.state_dict()["last_seen"] < 0).all())
        sampler.set_epoch(1)
        with pytest.warns(UserWarning, match=f"rejected {N} observed rows.*underflow"):
            list(sampler)

    def test_f17_small_residuals_kept(self):
        """Near-zero residuals of confident samples next to large ones are not rejected."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1, feedback_dtype=torch.float16)
        targets = torch.zeros(N, dtype=torch.long)
        logits = torch.zeros(N, C)
        logits[: N // 2, 0] = 30.0  # confident and right: residuals of about 1e-13
        sampler.observe(torch.arange(N), embeddings=torch.randn(N, H), logits=logits,
                        targets=targets)
        assert bool((sampler.state_dict()["last_seen"] >= 0).all())

    def test_f18_float64_end_to_end(self):
        """feedback_dtype=float64 keeps 1e200 and float64 precision."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1, feedback_dtype=torch.float64)
        embeddings = torch.full((N, H), 1.0, dtype=torch.float64) + 1e-12
        embeddings[0] = 1e200
        gradients = embeddings.clone()
        sampler.observe(torch.arange(N), embeddings=embeddings, logits=torch.randn(
            N, C, dtype=torch.float64), targets=torch.zeros(N, dtype=torch.long))
        store = sampler.state_dict()["store"]
        assert store["embeddings"].dtype == torch.float64
        assert torch.equal(store["embeddings"], embeddings)
        other = GraftBatchSampler(N, B, warm_start_epochs=1, feedback_dtype="float64",
                                  sketch_width=2, seed=3)
        other.observe(torch.arange(N), gradients=gradients)
        assert bool((other.state_dict()["last_seen"] >= 0).all())  # 1e200 sketched in float64


class TestTargetChecks:
    def test_f31_one_hot_targets_named(self):
        """One-hot targets: the message gives their shape and the fix."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1)
        onehot = nn.functional.one_hot(torch.zeros(B, dtype=torch.long), C)
        with pytest.raises(ValueError, match=rf"\({B}, {C}\).*argmax\(1\).*gradients="):
            sampler.observe(torch.arange(B), embeddings=torch.randn(B, H),
                            logits=torch.randn(B, C), targets=onehot)

    def test_f32_float_targets_point_to_gradients(self):
        """Float regression targets: observe() takes class labels; gradients= otherwise."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1)
        with pytest.raises(TypeError, match=r"class labels.*gradients="):
            sampler.observe(torch.arange(B), embeddings=torch.randn(B, H),
                            logits=torch.randn(B, 1), targets=torch.randn(B))

    def test_f33_zero_width_embeddings(self):
        """observe(embeddings=zeros(n, 0)) raises naming 'embeddings'."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1)
        with pytest.raises(ValueError, match=r"'embeddings' has shape .*no columns"):
            sampler.observe(torch.arange(B), embeddings=torch.zeros(B, 0))


# ------------------------------------ an iteration beside the running pass (an evaluation)


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_over_the_training_loader_mid_epoch(workers):
    """An evaluation over the training loader in the middle of an epoch replaced the
    running pass: the next observe() raised (or, under the Hugging Face Trainer, stored
    the training batches' rows under the evaluation's indices), and a checkpoint taken
    after it saved the evaluation's finished pass (the resumed run skipped the rest of
    the epoch). It is now a pass beside the running one: every sample is trained and
    stored under its own index, and the state keeps the training pass's position."""
    X, y, model, sampler = _setup()
    loader = DataLoader(TensorDataset(X, y), batch_sampler=sampler, num_workers=workers)
    sampler.set_epoch(0)
    evaluated = 0
    for step, (x, _) in enumerate(loader):
        model(x).sum().backward()
        sampler.observe()
        if step == 2:
            with torch.no_grad():
                model.eval()
                evaluated = sum(len(xe) for xe, _ in loader)
                model.train()
            state = sampler.state_dict()
            assert (state["batches_yielded"], state["pass_done"]) == (3, False)
    assert evaluated == N
    assert bool((_assert_attributed(sampler, model.embed(X))).all())
    resumed = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1)
    resumed.load_state_dict(state)
    rest = [i for batch in resumed for i in batch]
    sampler.set_epoch(0)
    whole = [i for batch in sampler for i in batch]
    assert rest == whole[3 * B:]


def test_a_new_pass_trained_beside_a_held_iterator_is_followed():
    """A loop that leaves a pass while its DataLoader iterator lives on (held in a
    variable, by a loader that keeps it, or by a traceback) and trains a new iteration
    of the same epoch: the new iteration starts beside the running pass, and at its
    first observe() the loop is seen to train it (nothing of the running pass received
    since the last observe), so it becomes the running pass, as a new pass always did.
    Every row lands under its own sample and the state follows the new pass."""
    X, y, model, sampler = _setup()
    loader = DataLoader(TensorDataset(X, y), batch_sampler=sampler)
    sampler.set_epoch(0)
    it = iter(loader)
    for _ in range(2):
        x, _ = next(it)
        model(x).sum().backward()
        sampler.observe()
    trained = 0
    for x, _ in loader:
        model(x).sum().backward()
        sampler.observe()
        trained += 1
        if trained == 3:
            assert sampler.state_dict()["batches_yielded"] == 3
    assert trained == N // B
    assert bool(_assert_attributed(sampler, model.embed(X)).all())
    del it


def test_an_unobserved_pass_before_training_is_replaced():
    """A validation pass over the training loader before training (Lightning's sanity
    check), whose iterator something keeps alive: the training pass that follows is the
    running pass (it was taken for a pass beside the validation's, and fit() raised)."""
    X, y, model, sampler = _setup()
    loader = DataLoader(TensorDataset(X, y), batch_sampler=sampler)
    sampler.set_epoch(0)
    validation = iter(loader)
    with torch.no_grad():
        next(validation), next(validation)
    for x, _ in loader:
        model(x).sum().backward()
        sampler.observe()
    assert bool(_assert_attributed(sampler, model.embed(X)).all())
    del validation


def test_evaluation_after_the_last_observe_keeps_the_finished_pass():
    """An evaluation over the training loader inside the loop body of the epoch's last
    step, then a checkpoint: the evaluation replaced the finished pass, and the state
    resumed at its position (the resumed run trained 10 of the 12 batches again). The
    state now holds the finished pass."""
    X, y, model, sampler = _setup()
    loader = DataLoader(TensorDataset(X, y), batch_sampler=sampler)
    sampler.set_epoch(0)
    for step, (x, _) in enumerate(loader):
        model(x).sum().backward()
        sampler.observe()
        if step == N // B - 1:
            with torch.no_grad():
                evaluation = iter(loader)
                next(evaluation), next(evaluation)
            state = sampler.state_dict()
    assert (state["batches_yielded"], state["pass_done"]) == (N // B, True)
    resumed = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1)
    resumed.load_state_dict(state)
    assert list(resumed) == []


# ------------------------------------------- a per-token head pooled at one token per row


class TokenHead(nn.Module):
    """A head applied to every token; the output is one token's logits per sequence (the
    last non-padding one, as a decoder's sequence classifier does), or their mean."""

    def __init__(self, pool="last"):
        super().__init__()
        self.body = nn.Linear(D_IN, H)
        self.score = nn.Linear(H, C)
        self.pool = pool

    def tokens(self, x):  # (b, T, D_IN) -> (b, T, H)
        return torch.tanh(self.body(x))

    def forward(self, x, lengths):
        logits = self.score(self.tokens(x))  # (b, T, C)
        if self.pool == "mean":
            return logits.mean(dim=1)
        return logits[torch.arange(len(x)), lengths - 1]


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_watch_pools_a_per_token_head_at_the_returned_token(pool):
    """watch() refused a head applied per token whose model returns one token's logits
    per sample (GPT-2's and Llama's sequence classifiers): it now records that token's
    embeddings and logits. A pooling that is not one token's logits (a mean) is still
    refused, naming the per-token input."""
    torch.manual_seed(0)
    model, T = TokenHead(pool), 5
    X = torch.randn(N, T, D_IN)
    lengths = torch.randint(1, T + 1, (N,))
    sampler = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1,
                                targets=torch.randint(0, C, (N,)))
    sampler.watch(model)
    sampler.set_epoch(0)
    for batch in sampler:
        model(X[batch], lengths[batch]).sum().backward()
        if pool == "mean":
            with pytest.raises(ValueError, match=r"input of shape \(8, 5, 5\), not \(b, d\)"):
                sampler.observe()
            return
        sampler.observe()
    with torch.no_grad():
        expected = model.tokens(X)[torch.arange(N), lengths - 1]
    assert bool(_assert_attributed(sampler, expected).all())


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_before_the_first_batch(workers):
    """An evaluation over the training loader after the training loop made its iterator
    but before its first batch (Lightning's on_train_epoch_start): with no workers the
    untouched pass was replaced, the loop trained the old one, and its rows were stored
    under the evaluation's indices. The pass that handed out a batch last is now the one
    the first observe() pairs with."""
    X, y, model, sampler = _setup()
    loader = DataLoader(TensorDataset(X, y), batch_sampler=sampler, num_workers=workers)
    sampler.set_epoch(0)
    training = iter(loader)
    with torch.no_grad():
        evaluated = sum(len(xe) for xe, _ in loader)
    for x, _ in training:
        model(x).sum().backward()
        sampler.observe()
    assert evaluated == N
    assert bool(_assert_attributed(sampler, model.embed(X)).all())


def test_sanity_check_after_a_resume_keeps_the_position():
    """A validation over the training loader right after load_state_dict (Lightning's
    sanity check on resume) took the resume position, and training started the epoch
    over (rows stored under other samples, then a raise). Training now resumes at the
    saved position."""
    X, y, model, sampler = _setup()
    loader = DataLoader(TensorDataset(X, y), batch_sampler=sampler)
    sampler.set_epoch(0)
    whole = [list(batch) for batch in sampler]
    sampler.set_epoch(1)
    sampler.set_epoch(0)
    for step, (x, _) in enumerate(loader):
        model(x).sum().backward()
        sampler.observe()
        if step == 2:
            break
    state = sampler.state_dict()
    resumed = GraftBatchSampler(N, B, fraction=1.0, warm_start_epochs=1, targets=y)
    resumed.watch(model)
    resumed.load_state_dict(state)
    loader = DataLoader(TensorDataset(X, y, torch.arange(N)), batch_sampler=resumed)
    sanity = iter(loader)
    with torch.no_grad():
        next(sanity), next(sanity)
    trained = []
    for x, _, index in loader:
        model(x).sum().backward()
        resumed.observe()
        trained.append(index.tolist())
    assert trained == whole[3:]
    del sanity


def test_loop_over_the_sampler_with_a_dataloader_evaluation():
    """A loop that iterates the sampler itself and evaluates through a DataLoader over it
    mid-epoch: the evaluation replaced the loop's pass, and the next observe() stored
    the loop's batch under the evaluation's samples. It is now a pass beside it."""
    X, y, model, sampler = _setup()
    sampler.set_epoch(0)
    for step, batch in enumerate(sampler):
        model(X[batch]).sum().backward()
        sampler.observe()
        if step == 2:
            with torch.no_grad():
                evaluated = sum(len(xe) for xe, _ in DataLoader(TensorDataset(X, y),
                                                                 batch_sampler=sampler))
    assert evaluated == N
    assert bool(_assert_attributed(sampler, model.embed(X)).all())
