"""Golden outputs of the selection: fingerprints that a refactoring must keep bit for bit.

``python tests/golden_cases.py --write`` records the fingerprints of the current code
in ``tests/golden/fingerprints.json``; ``tests/test_golden.py`` compares against them.
Each fingerprint is a SHA-256 of the exact bytes of a result (indices, sizes, weights,
errors), so any change, even in the last bit of a weight, shows.

The cases: the sampler's plans for 3 seeds over 6 epochs on the demo's data (MNIST-1D
and noisy digits), with explicit ``observe`` and with ``watch``, a small model trained
by SGD in between (one torch thread, so the arithmetic is reproducible); and
``GraftSelector`` fits on digits (dense, with dense and factored gradients, several
parameter settings), scipy.sparse, torch and Dask input (several block layouts).

Re-pinned on purpose (issue 22), selector cases with gradients only, no sampler
plan: ``digits-gradients/*``, ``torch-gradients/*`` and ``dask-gradients/*``.
The default ``max_error_ratio="auto"`` replaces the picks of the chunks whose
MaxVol subset matches the gradient no better than a quarter of a uniform
subset's error; dense gradients go through their Gram matrix like factored ones
(so both forms select the same rows); and the factor's directions beyond the
proxies' numerical rank are zeroed (``digits-gradients/factored/default``: one
chunk of all rows, whose factor held directions with eigenvalues at the rounding
level).

Re-pinned on purpose (issue 22, 2026-12-07), the sampler's plans: a refit selects a
pool of twice the budget and each epoch trains a random draw of it (``pool_factor=2.0``,
the new default; with ``pool_factor=1.0`` every plan matched the previous record).

Re-pinned on purpose (issue 22, next commit), the sampler's plans with its
default selector: a refit whose template says ``max_error_ratio="auto"`` now
checks MaxVol's picks against uniform subsets at a ratio of 0.5
(``_planner.SAMPLER_ERROR_RATIO``), so chunks whose MaxVol subset matches the
gradient no better than half a uniform subset's error train the uniform subset.
The fingerprints depend on the thread counts: `selector_results` fits every
case with every pool at one thread (the sampler's cases run torch at one
thread), so machines of one kind agree whatever their core count.

They depend on the CPU too. The selector's indices, weights and errors came out
different, bit for bit, on an AMD EPYC VM (OpenBLAS's Haswell kernels, torch at
AVX2) from the Intel Xeon VM that recorded them (2026-12-07: 21 of the 34 cases;
near-ties of MaxVol's greedy break the other way when the last bits differ); the
sizes and the sampler's plans did not. So the record has two parts: *portable*
(every case's sizes and number of rows, and the sampler's plans), compared on
every machine, and per machine (`machine_signature`) the selector's full
fingerprints, compared where this machine's kind has a record. ``--write``
adds or replaces this machine's kind and keeps the others' when the portable
part is unchanged; a change of the portable part needs ``--reset``, which drops
the other kinds' records (stale after a change of the selection).
"""

import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).parent / "golden" / "fingerprints.json"


def digest(*arrays):
    """SHA-256 of the arrays' dtypes, shapes and bytes (None hashes as a marker)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"None")
            continue
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def _host(a):
    if a is None:
        return None
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def fit_fingerprint(selector):
    """Fingerprint of a fitted selector's results."""
    return {
        "indices": digest(_host(selector.sample_indices_)),
        "sizes": digest(np.asarray(selector.subset_sizes_, dtype=np.int64)),
        "weights": digest(_host(selector.sample_weight_)),
        "errors": digest(_host(selector.gradient_error_)),
        "n_selected": len(_host(selector.sample_indices_)),
    }


# ------------------------------------------------------------------ selector cases


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X.astype(np.float64), y


def _gradients(X, y, seed=0):
    """Last-layer gradient proxies of a fixed random linear model on X (dense, factored)."""
    from graft_select import FactoredGradients

    rng = np.random.default_rng(seed)
    H = np.tanh(X @ rng.standard_normal((X.shape[1], 12)) / 8.0)
    logits = H @ rng.standard_normal((12, 10))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    R = p - np.eye(10)[y]
    inputs = np.hstack([H, np.ones((len(H), 1))])
    dense = (R[:, :, None] * inputs[:, None, :]).reshape(len(H), -1)
    return dense, FactoredGradients(R, inputs)


def _selector(chunk_size=None, **params):
    from graft_select import GraftSelector

    selector = GraftSelector(**params)
    if chunk_size is not None:
        _set_chunk_size(selector, chunk_size)
    return selector


def _set_chunk_size(selector, chunk_size):
    name = "chunk_size" if "chunk_size" in selector.get_params() else "batch_size"
    selector.set_params(**{name: chunk_size})


def selector_cases():
    """name -> fingerprint of every GraftSelector case."""
    X, y = _digits()
    dense, factored = _gradients(X, y)
    out = {}
    settings = {
        "default": {},
        "chunk256": dict(chunk_size=256),
        "chunk100_uniform_share": dict(chunk_size=100, uniform_share=0.3),
        "lu_refine": dict(chunk_size=256, method="lu", refine=True),
        "exact_ncomp": dict(chunk_size=300, svd_method="exact", n_components=8),
        "uniform": dict(chunk_size=256, strategy="uniform"),
    }
    for name, params in settings.items():
        for fraction in (0.1, 0.3):
            sel = _selector(fraction=fraction, random_state=0, **params).fit(X)
            out[f"digits/{name}/{fraction}"] = fit_fingerprint(sel)
    grad_settings = {
        "default": {},
        "chunk256": dict(chunk_size=256),
        "chunk128_share": dict(chunk_size=128, uniform_share=0.2),
        "tol": dict(chunk_size=256, gradient_tol=0.2),
        "input_basis": dict(chunk_size=256, basis="input"),
    }
    for name, params in grad_settings.items():
        for kind, G in (("dense", dense), ("factored", factored)):
            sel = _selector(fraction=0.2, random_state=1, **params).fit(X, gradients=G)
            out[f"digits-gradients/{kind}/{name}"] = fit_fingerprint(sel)
    import scipy.sparse

    Xs = scipy.sparse.csr_matrix(np.where(X > 8, X, 0.0))
    for name, params in {"default": {}, "chunk200": dict(chunk_size=200)}.items():
        sel = _selector(fraction=0.2, random_state=2, **params).fit(Xs)
        out[f"sparse/{name}"] = fit_fingerprint(sel)
    import torch

    Xt = torch.as_tensor(X, dtype=torch.float32)
    for name, params in {"default": {}, "chunk256": dict(chunk_size=256)}.items():
        sel = _selector(fraction=0.2, random_state=3, **params).fit(Xt)
        out[f"torch/{name}"] = fit_fingerprint(sel)
        sel = _selector(fraction=0.2, random_state=3, **params).fit(
            Xt, gradients=torch.as_tensor(dense))
        out[f"torch-gradients/{name}"] = fit_fingerprint(sel)
    out.update(dask_cases(X, dense))
    out.update(tree_cases())
    return out


def tree_cases():
    """Merge-and-reduce fits (``chunk_size=None`` beyond one leaf of 4096 rows)."""
    rng = np.random.default_rng(4)
    centers = 10 * rng.standard_normal((40, 16))
    labels = rng.integers(0, 40, 12_000)
    X = centers[labels] + 0.05 * rng.standard_normal((12_000, 16))
    heavy = rng.standard_t(3, (12_000, 6))
    heavy = heavy[np.argsort(np.linalg.norm(heavy, axis=1))]  # the largest rows last
    out = {}
    for name, data, fraction in (("prototypes", X, 0.004), ("sorted-heavy", heavy, 0.01)):
        sel = _selector(fraction=fraction, random_state=5).fit(data)
        out[f"tree/{name}"] = fit_fingerprint(sel)
    return out


def dask_cases(X, dense):
    import dask
    import dask.array as da

    out = {}
    with dask.config.set(scheduler="synchronous"):
        for blocks in (600, 256, (900, 897)):
            Xd = da.from_array(X, chunks=(blocks, -1))
            Gd = da.from_array(dense, chunks=(blocks, -1))
            sel = _selector(fraction=0.2, random_state=4, chunk_size=128).fit(Xd)
            out[f"dask/{blocks}"] = fit_fingerprint(sel)
            sel = _selector(fraction=0.2, random_state=4, chunk_size=128).fit(Xd, gradients=Gd)
            out[f"dask-gradients/{blocks}"] = fit_fingerprint(sel)
    return out


# ------------------------------------------------------------------- sampler cases


def _sampler(n, seed, config):
    from graft_select.sampler import GraftBatchSampler

    params = dict(config)
    if "chunk_size" in params:
        import inspect

        if "chunk_size" not in inspect.signature(GraftBatchSampler).parameters:
            params["selection_size"] = params.pop("chunk_size")
    return GraftBatchSampler(n, 64, seed=seed, **params)


def sampler_plans(dataset, seed, mode, config, epochs=6):
    """Fingerprints of the epochs' batches of a sampler trained with a small model."""
    import torch

    from graft_select.datasets import make_mnist1d, make_noisy_digits
    from graft_select.demo.models import build_model

    if dataset == "mnist1d":
        X, y, _, _ = make_mnist1d(3000, random_state=0)
    else:
        X, y, _, _ = make_noisy_digits(n_copies=2, random_state=0)
    X, y = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = build_model(dataset, X.shape[1], 10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        config = dict(config)
        if mode == "watch":
            config["targets"] = y
        sampler = _sampler(len(X), seed, config)
        if mode == "watch":
            sampler.watch(model)
        plans = []
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            batches = []
            for batch in sampler:
                idx = torch.as_tensor(batch)
                batches.append(idx)
                logits, embedding = model(X[idx], return_embedding=True)
                loss = torch.nn.functional.cross_entropy(logits, y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if mode == "watch":
                    sampler.observe()
                else:
                    sampler.observe(idx, embeddings=embedding, logits=logits, targets=y[idx])
            plan = torch.cat(batches).numpy() if batches else np.zeros(0, dtype=np.int64)
            plans.append(digest(plan.astype(np.int64)))
        return plans
    finally:
        torch.set_num_threads(threads)


SAMPLER_CONFIGS = {
    # refit_every=1, warm_start_epochs=1: the sampler's defaults before 0.2
    "defaults": dict(fraction=0.3, refit_every=1, warm_start_epochs=1),
    "demo": dict(fraction=0.1, refit_every=2, warm_start_epochs=2, chunk_size=128),
    "refresh": dict(fraction=0.3, refresh_share=0.2, label_noise_guard=True, refit_every=1,
                    warm_start_epochs=1),
}


def sampler_cases():
    out = {}
    for dataset in ("mnist1d", "noisy_digits"):
        for config_name, config in SAMPLER_CONFIGS.items():
            for mode in ("observe", "watch"):
                for seed in (0, 1, 2):
                    key = f"sampler/{dataset}/{config_name}/{mode}/{seed}"
                    out[key] = sampler_plans(dataset, seed, mode, config)
    return out


#: The hardware-independent fields of a selector fingerprint.
PORTABLE_FIELDS = ("sizes", "n_selected")


def machine_signature():
    """The kind of machine the bit-level fingerprints hold on: BLAS kernels and torch's ISA.

    The architectures that threadpoolctl reports for the loaded BLAS libraries
    (OpenBLAS picks its kernels by CPU at run time) and torch's CPU capability.
    """
    import scipy.linalg  # noqa: F401  (its BLAS too: the same libraries whatever ran before)
    import threadpoolctl
    import torch

    blas = sorted({str(info.get("architecture")) for info in threadpoolctl.threadpool_info()
                   if info.get("user_api") == "blas"})
    return f"blas-{'+'.join(blas)}/torch-{torch.backends.cpu.get_cpu_capability()}"


def portable(selector_fingerprints):
    """The fields of selector fingerprints that every machine reproduces."""
    return {k: {f: v[f] for f in PORTABLE_FIELDS} for k, v in selector_fingerprints.items()}


def selector_results():
    """Every selector case's fingerprint, with every thread pool at one thread.

    BLAS and torch thread counts change the last bits of a fit (a refit's
    products split differently), so the bits are pinned at one thread, the
    same on machines of one kind whatever their core count.
    """
    import threadpoolctl
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpoolctl.threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return selector_cases()
    finally:
        torch.set_num_threads(threads)


def record():
    """The golden record of this machine: portable part and this machine's selector bits."""
    selector = selector_results()
    return {"portable": {**portable(selector), **sampler_cases()},
            "machines": {machine_signature(): selector}}


def write(reset=False):
    """Record this machine's kind into GOLDEN, keeping other kinds' records.

    The portable part must equal the file's but for the sampler's plans (else the
    selection changed: re-pin with ``reset``, which drops every other kind's
    record, since it no longer holds).
    """
    new = record()
    if GOLDEN.exists() and not reset:
        old = json.loads(GOLDEN.read_text())
        changed = sorted(k for k in new["portable"]
                         if new["portable"][k] != old["portable"].get(k))
        # the other kinds' records hold selector fits only: a change of the sampler's
        # plans alone (portable on every machine) leaves them valid
        if any(not k.startswith("sampler/") for k in changed) or (
                old["portable"].keys() != new["portable"].keys()):
            sys.exit(f"the portable fingerprints changed ({changed}): if on purpose, "
                     "run with --reset (other kinds' records are dropped)")
        new["machines"] = {**old["machines"], **new["machines"]}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} for {machine_signature()} (kinds: {sorted(new['machines'])})")


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/golden_cases.py --write [--reset]")
    write(reset="--reset" in sys.argv)
