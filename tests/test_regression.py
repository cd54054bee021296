"""GraftBatchSampler on regression: squared-error feedback through observe() and watch()."""

import pytest

torch = pytest.importorskip("torch")

from graft_select import GraftSelector  # noqa: E402
from graft_select._guard import suspected_wrong_labels  # noqa: E402
from graft_select.sampler import GraftBatchSampler  # noqa: E402

N, D, H, B = 256, 6, 8, 32


def _data(k=1, seed=0):
    """Inputs and float targets (shape (N,) for one output, (N, k) otherwise)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g)
    W = torch.randn(D, k, generator=g)
    y = torch.sin(X @ W) + 0.1 * torch.randn(N, k, generator=g)
    return X, (y[:, 0] if k == 1 else y)


def _model(k, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, k))


def _train(sampler, model, X, y, epochs, *, watched, expected=None):
    """A plain loop: forward, observe, squared-error step; ``expected`` collects yhat - y."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    if watched:
        sampler.watch(model)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            idx = torch.as_tensor(batch)
            out = model(X[idx])
            target = y[idx].reshape(out.shape)
            if expected is not None:  # computed here, independently of the sampler
                expected[idx] = (out.detach() - target).reshape(len(idx), -1)
            if watched:
                sampler.observe()
            else:
                hidden = model[1](model[0](X[idx])).detach()
                sampler.observe(idx, embeddings=hidden, logits=out.detach(), targets=y[idx])
            loss = 0.5 * ((out - target) ** 2).sum(dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


class TestFeedback:
    def test_observe_stores_errors(self):
        """observe(logits=, targets=) with loss='mse' stores yhat - y, one column per output."""
        sampler = GraftBatchSampler(N, B, loss="mse", warm_start_epochs=1)
        g = torch.Generator().manual_seed(1)
        idx = torch.randperm(N, generator=g)[:40]
        yhat, y = torch.randn(40, 3, generator=g), torch.randn(40, 3, generator=g)
        sampler.observe(idx, embeddings=torch.randn(40, H, generator=g), logits=yhat, targets=y)
        residuals = sampler.state_dict()["store"]["residuals"]
        assert residuals.shape == (N, 3)
        torch.testing.assert_close(residuals[idx], yhat - y)

    def test_one_output_targets_of_shape_b(self):
        """One output: targets of shape (b,) give residuals of shape (N, 1)."""
        sampler = GraftBatchSampler(N, B, loss="mse", warm_start_epochs=1)
        idx = torch.arange(10, 20)
        yhat, y = torch.linspace(-1, 1, 10)[:, None], torch.linspace(0, 3, 10)
        sampler.observe(idx, embeddings=torch.ones(10, H), logits=yhat, targets=y)
        residuals = sampler.state_dict()["store"]["residuals"]
        torch.testing.assert_close(residuals[idx], yhat - y[:, None])

    def test_one_logit_is_not_read_as_binary(self):
        """With squared error one output stays one column (no two-class softmax)."""
        sampler = GraftBatchSampler(N, B, loss="mse", warm_start_epochs=1)
        sampler.observe(torch.arange(4), embeddings=torch.ones(4, H),
                        logits=torch.full((4, 1), 5.0), targets=torch.full((4,), 2.0))
        residuals = sampler.state_dict()["store"]["residuals"]
        assert residuals.shape[1] == 1 and bool((residuals[:4] == 3.0).all())

    @pytest.mark.parametrize("k", [1, 3])
    def test_watch_loop_records_errors_by_index(self, k):
        """watch() + observe() in a training loop stores each sample's own yhat - y."""
        X, y = _data(k)
        sampler = GraftBatchSampler(N, B, fraction=0.5, loss="mse", targets=y, seed=3,
                                    warm_start_epochs=1, refit_every=1)
        expected = torch.full((N, k), float("nan"))
        _train(sampler, _model(k), X, y, 3, watched=True, expected=expected)
        state = sampler.state_dict()
        seen = torch.nonzero(state["last_seen"] == 2).flatten()
        assert len(seen) > 0
        torch.testing.assert_close(state["store"]["residuals"][seen], expected[seen])

    def test_explicit_loop_records_errors_by_index(self):
        """observe(indices, embeddings=, logits=, targets=) in a loop: yhat - y by index."""
        X, y = _data(2)
        sampler = GraftBatchSampler(N, B, fraction=0.5, loss="mse", seed=4,
                                    warm_start_epochs=1, refit_every=1)
        expected = torch.full((N, 2), float("nan"))
        _train(sampler, _model(2), X, y, 2, watched=False, expected=expected)
        state = sampler.state_dict()
        seen = torch.nonzero(state["last_seen"] == 1).flatten()
        torch.testing.assert_close(state["store"]["residuals"][seen], expected[seen])

    def test_features_callable_with_float_targets(self):
        """A features callable with targets= and loss='mse' gives yhat - y at the refit."""
        X, y = _data(1)
        model = _model(1)

        def features(idx):
            hidden = model[1](model[0](X[idx]))
            return hidden, model[2](hidden)

        sampler = GraftBatchSampler(N, B, loss="mse", targets=y, features=features,
                                    warm_start_epochs=0, refit_every=1)
        assert len(list(sampler)) > 0
        with torch.no_grad():
            expected = model(X) - y[:, None]
        torch.testing.assert_close(sampler.state_dict()["store"]["residuals"], expected)


class TestRefits:
    def test_refits_differ_from_uniform(self):
        """After the warm start, refits on squared-error feedback pick large errors."""
        X, y = _data(1, seed=5)
        y = y.clone()
        y[torch.arange(0, N, 8)] += 6.0  # an eighth of the targets far off the trend
        picks = {}
        for name, selector in (("graft", None), ("uniform", GraftSelector(strategy="uniform"))):
            sampler = GraftBatchSampler(N, B, fraction=0.25, loss="mse", targets=y, seed=0,
                                        warm_start_epochs=2, refit_every=1, selector=selector,
                                        label_noise_guard=False)
            _train(sampler, _model(1), X, y, 2, watched=True)
            sampler.set_epoch(2)
            picks[name] = torch.tensor(sorted(i for batch in sampler for i in batch))
            errors = sampler.state_dict()["store"]["residuals"][:, 0].abs()
        assert len(picks["graft"]) == len(picks["uniform"])
        assert not torch.equal(picks["graft"], picks["uniform"])
        # MaxVol on (yhat - y) outer [h, 1] favours the samples the model fits worst
        assert errors[picks["graft"]].mean() > 1.5 * errors[picks["uniform"]].mean()

    def test_guard_does_not_read_errors_as_probabilities(self):
        """The label-noise guard never acts on squared error (it would, read as a softmax)."""
        n = 200
        errors = torch.zeros(n, 2)
        errors[:40] = torch.tensor([-0.99, 0.5])  # as a softmax: confident mistakes
        sampler = GraftBatchSampler(n, 20, fraction=0.3, loss="mse", warm_start_epochs=1,
                                    refit_every=1)
        g = torch.Generator().manual_seed(0)
        sampler.observe(torch.arange(n), embeddings=torch.randn(n, 4, generator=g),
                        logits=errors, targets=torch.zeros(n, 2))
        read_as_softmax = suspected_wrong_labels(errors, torch.arange(n), 60)
        assert len(read_as_softmax) > 0  # what a misapplied guard would exclude
        sampler.set_epoch(1)
        assert len(sampler) > 0
        assert sampler.last_refit.n_excluded == 0


class TestErrors:
    def test_float_targets_without_loss(self):
        """Float targets with the default loss raise, pointing to loss='mse'."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1)
        with pytest.raises(TypeError, match=r"integer class labels.*loss='mse'"):
            sampler.observe(torch.arange(4), embeddings=torch.randn(4, H),
                            logits=torch.randn(4, 1), targets=torch.randn(4))

    def test_float_sampler_targets_without_loss(self):
        """targets= of floats with the default loss raises, pointing to loss='mse'."""
        with pytest.raises(TypeError, match=r"'targets' parameter.*loss='mse'"):
            GraftBatchSampler(N, B, targets=torch.randn(N))

    def test_class_labels_of_wrong_shape(self):
        """Integer class labels with loss='mse' and several outputs raise, naming the shape."""
        sampler = GraftBatchSampler(N, B, loss="mse", warm_start_epochs=1)
        with pytest.raises(ValueError, match=r"\(4, 3\).*Got shape \(4,\).*cross_entropy"):
            sampler.observe(torch.arange(4), embeddings=torch.randn(4, H),
                            logits=torch.randn(4, 3), targets=torch.tensor([0, 2, 1, 0]))

    def test_sampler_targets_of_wrong_width(self):
        """targets= with 2 columns and a head of 3 outputs raises at observe()."""
        sampler = GraftBatchSampler(N, B, loss="mse", targets=torch.randn(N, 2),
                                    warm_start_epochs=1)
        with pytest.raises(ValueError, match=r"\(4, 3\).*Got shape \(4, 2\)"):
            sampler.observe(torch.arange(4), embeddings=torch.randn(4, H),
                            logits=torch.randn(4, 3))

    def test_bool_targets(self):
        """Boolean regression targets raise a TypeError."""
        with pytest.raises(TypeError, match="real regression targets"):
            GraftBatchSampler(N, B, loss="mse", targets=torch.zeros(N, dtype=torch.bool))

    def test_other_spelling(self):
        """loss='squared_error' raises, naming the accepted values."""
        with pytest.raises(ValueError, match=r"'loss' parameter.*'cross_entropy', 'mse'"):
            GraftBatchSampler(N, B, loss="squared_error")


class TestState:
    def _observed(self, loss="mse"):
        X, y = _data(1)
        sampler = GraftBatchSampler(N, B, fraction=0.5, loss=loss, targets=y, seed=2,
                                    warm_start_epochs=1, refit_every=1)
        _train(sampler, _model(1), X, y, 1, watched=True)
        return sampler

    def test_round_trip(self):
        """A loaded state resumes with the same feedback and the same next plan."""
        sampler = self._observed()
        state = sampler.state_dict()
        assert state["loss"] == "mse"
        other = GraftBatchSampler(N, B, fraction=0.5, loss="mse", seed=2,
                                  warm_start_epochs=1, refit_every=1)
        other.load_state_dict(state)
        torch.testing.assert_close(other.state_dict()["store"], state["store"])
        sampler.set_epoch(1)
        other.set_epoch(1)
        assert list(sampler) == list(other)

    def test_loss_mismatch_refused(self):
        """A squared-error state does not load into a cross-entropy sampler."""
        state = self._observed().state_dict()
        other = GraftBatchSampler(N, B, fraction=0.5, seed=2, warm_start_epochs=1)
        with pytest.raises(ValueError, match=r"loss='mse'.*loss='cross_entropy'"):
            other.load_state_dict(state)
        assert other.state_dict()["store"] == {}

    def test_state_without_loss_is_cross_entropy(self):
        """A state saved before the loss was recorded holds cross-entropy residuals."""
        sampler = GraftBatchSampler(N, B, warm_start_epochs=1)
        sampler.observe(torch.arange(4), embeddings=torch.randn(4, H),
                        logits=torch.randn(4, 3), targets=torch.tensor([0, 1, 2, 0]))
        state = sampler.state_dict()
        del state["loss"]
        GraftBatchSampler(N, B, warm_start_epochs=1).load_state_dict(state)
        with pytest.raises(ValueError, match=r"loss='cross_entropy'.*loss='mse'"):
            GraftBatchSampler(N, B, loss="mse", warm_start_epochs=1).load_state_dict(state)
