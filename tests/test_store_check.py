"""The MaxVol-or-uniform check of a feedback-store fit, read from the first pass.

A sampler's refit checks every chunk's MaxVol picks against a uniform subset of
the same size (``max_error_ratio``). The uniform subset is the prefix of a random
permutation of the chunk's rows drawn in the first pass, whose nested errors come
from the Gram matrices that pass already holds; the second pass over the store
(`_feedback.subset_errors`), which recomputed every chunk's Gram matrix, runs only
for weights (benchmarks/bench_threads.py: 9.8x a pass over the store with it).
"""

import numpy as np
import pytest
from conftest import softmax_store
from scipy import stats

torch = pytest.importorskip("torch")

from graft_select import GraftSelector, StoredGradients, _criterion, _feedback  # noqa: E402
from graft_select.gradients import gradient_error  # noqa: E402

N, D, C, CHUNK = 1200, 30, 4, 100


def _store(n=N, seed=0, d=D, c=C):
    return softmax_store(np.random.default_rng(seed), n, d, c)


def _dense(residuals, embeddings):
    """The materialised gradients ``r_i (x) [e_i, 1]``, float64 NumPy."""
    n = residuals.shape[0]
    inputs = torch.cat([embeddings, torch.ones(n, 1)], 1)
    return (residuals[:, :, None] * inputs[:, None, :]).reshape(n, -1).double().numpy()


def _fit(ratio, seed=0, compute_weights=False, store=None, **params):
    residuals, embeddings = _store() if store is None else store
    kwargs = dict(chunk_size=CHUNK, basis="gradients", uniform_share=0.0,
                  max_error_ratio=ratio, random_state=seed)
    return GraftSelector(0.2, **{**kwargs, **params}).fit(
        None, gradients=StoredGradients(residuals, embeddings),
        compute_weights=compute_weights)


def _chunk_rows(selector):
    """Per chunk its selected rows, chunk-local."""
    bounds = np.cumsum([0, *selector.subset_sizes_])
    rows = np.asarray(selector.sample_indices_)
    return [rows[bounds[c]:bounds[c + 1]] - c * CHUNK for c in range(len(bounds) - 1)]


def _calls(monkeypatch, module, name):
    """A list that gets one entry per call of ``module.name`` (which still runs)."""
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_check_reads_the_first_pass(monkeypatch):
    """With the check and no weights, no second pass runs, uniform chunks included."""
    calls = _calls(monkeypatch, _feedback, "subset_errors")
    s = _fit(1e-9)  # MaxVol keeps a chunk only at a zero error: most chunks go uniform
    assert (~s.maxvol_chunks_).sum() >= len(s.maxvol_chunks_) // 2
    assert calls == []
    _fit(None, compute_weights=True)
    assert calls == [1]  # weights still take the second pass


@pytest.mark.parametrize("ratio", [1e-9, 0.9])
def test_errors_are_the_subsets_own(ratio):
    """The errors read from the first pass are the least-squares errors of the kept
    rows, computed here from the dense gradients; and the second pass agrees."""
    residuals, embeddings = _store()
    dense = _dense(residuals, embeddings)
    s = _fit(ratio)
    weighted = _fit(ratio, compute_weights=True)
    for c, rows in enumerate(_chunk_rows(s)):
        chunk = dense[c * CHUNK:(c + 1) * CHUNK]
        direct = float(gradient_error(chunk, rows)[0])
        assert s.gradient_error_[c] == pytest.approx(direct, abs=2e-4)
    np.testing.assert_array_equal(s.sample_indices_, weighted.sample_indices_)
    np.testing.assert_allclose(s.gradient_error_, weighted.gradient_error_, atol=2e-4)


def test_verdict_independent_of_weights():
    """The same seed keeps the same subsets with and without weights, also where a
    third of the rows have residuals 1e-20 of the others (confident samples, whose
    Gram entries are float32 denormals: pass 1 and pass 2 treat them differently)."""
    residuals, embeddings = _store()
    residuals = residuals.clone()
    residuals[::3] *= 1e-20
    for ratio in (0.7, 0.9):
        a = _fit(ratio, store=(residuals, embeddings), chunk_size=40, compute_weights=False)
        b = _fit(ratio, store=(residuals, embeddings), chunk_size=40, compute_weights=True)
        np.testing.assert_array_equal(a.maxvol_chunks_, b.maxvol_chunks_)
        np.testing.assert_array_equal(a.sample_indices_, b.sample_indices_)
        assert len(b.sample_weight_) == len(b.sample_indices_)


def test_narrow_gradients_stay_batched(monkeypatch):
    """Gradients narrower than the orders (rank 3 x 10 = 30, orders of up to 40
    rows): the uniform orders' prefixes past the rank are dependent, so the check
    takes the second pass (cheap on narrow gradients) instead of the step-by-step
    factorisation (which doubled such a refit's time); the errors are the subsets'
    least-squares errors."""
    residuals, embeddings = _store(seed=1, d=9, c=4)
    calls = _calls(monkeypatch, _criterion, "_nested_gram_stepwise")
    _fit(None, store=(residuals, embeddings))
    unchecked = len(calls)
    s = _fit(1e-9, store=(residuals, embeddings))
    assert len(calls) == 2 * unchecked  # the MaxVol orders' own, in both fits
    dense = _dense(residuals, embeddings)
    uniform = np.flatnonzero(~s.maxvol_chunks_)
    assert uniform.size >= 5
    for c in uniform:
        rows = _chunk_rows(s)[c]
        exact = float(gradient_error(dense[c * CHUNK:(c + 1) * CHUNK], rows)[0])
        assert s.gradient_error_[c] == pytest.approx(exact, abs=2e-4)


def test_kept_uniform_subsets_in_drawn_order():
    """A store's kept uniform subset is listed in drawn order (documented): the
    prefix of its chunk's random order, which is what the first pass scored."""
    s = _fit(1e-9)
    rows = [r for keep, r in zip(s.maxvol_chunks_, _chunk_rows(s)) if not keep]
    assert rows and not all(np.all(np.diff(r) > 0) for r in rows)


def test_uniform_subsets_are_uniform():
    """Every row of a chunk is as likely to be in its uniform subset (chi-squared over
    12 chunks x 20 seeds), and a subset never repeats a row."""
    counts = np.zeros(CHUNK)
    store = _store()
    for seed in range(20):
        s = _fit(1e-9, seed=seed, store=store)
        for c, rows in enumerate(_chunk_rows(s)):
            if not s.maxvol_chunks_[c]:
                assert len(np.unique(rows)) == len(rows)
                assert rows.min() >= 0 and rows.max() < CHUNK
                counts[rows] += 1
    assert counts.sum() > 1000
    assert stats.chisquare(counts).pvalue > 1e-3


def test_maxvol_chunks_unchanged_by_the_check():
    """Chunks that keep MaxVol's picks hold the picks of a fit without the check."""
    plain, checked = _fit(None), _fit(0.9)  # MaxVol's errors are 0.76-0.97 of uniform's
    assert 0 < checked.maxvol_chunks_.sum() < len(checked.maxvol_chunks_)
    for keep, a, b in zip(checked.maxvol_chunks_, _chunk_rows(plain), _chunk_rows(checked)):
        if keep:
            np.testing.assert_array_equal(a, b)


def test_deterministic():
    """Same seed, same subsets; another seed, other uniform subsets."""
    a, b, other = _fit(1e-9), _fit(1e-9), _fit(1e-9, seed=1)
    np.testing.assert_array_equal(a.sample_indices_, b.sample_indices_)
    assert not np.array_equal(a.sample_indices_, other.sample_indices_)
