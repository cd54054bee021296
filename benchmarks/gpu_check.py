"""GPU checks of issue 9: observe() without host syncs, refit time, results on the device.

Run by ``benchmarks/gpu_check.sh`` on a machine with a CUDA GPU (after the CuPy
and CUDA tests); it can also be run alone::

    python benchmarks/gpu_check.py [--n 1000000] [--d 512] [--observe-steps 200]

Steps, each printed as one line and collected in a JSON summary (``--json``):

1. ``observe``: ``GraftBatchSampler.observe`` on CUDA tensors (explicit GPU indices,
   and the sampler's own batches as a training loop observes them), timed over
   ``--observe-steps`` calls under ``torch.cuda.set_sync_debug_mode("error")``,
   so any host synchronisation fails the step (with the error in the summary).
2. ``refit``: a GraftBatchSampler refit of ``--n`` x ``--d`` embeddings and
   10-class logits stored on the GPU (chunks of 256, fraction 0.3, the default
   selector), against one ``store @ R`` product (R random d x 64) timed the same
   way. Goal: at most 0.5 s for 1,000,000 x 512.
3. ``fit-torch`` and ``fit-cupy``: ``GraftSelector.fit`` on a torch CUDA tensor
   and a CuPy array (200,000 x 256 float32, batch_size=256, fraction 0.25),
   timed; ``sample_indices_`` and ``sample_weight_`` must stay on the device.

Without a CUDA device (or without torch) nothing runs: the script prints a line
starting with ``SKIP:`` that says why and exits with status 77 (the "skipped"
status of automake test drivers), so a wrapper can tell a skip from a failure.
Without CuPy only the ``fit-cupy`` step is skipped, with the reason in its line.
A step that fails is reported and the script exits with status 1 at the end.
"""

import argparse
import json
import sys
import time

SKIP_STATUS = 77


def parse_args(argv=None):
    """Command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the refit store")
    parser.add_argument("--d", type=int, default=512, help="embedding width of the store")
    parser.add_argument("--observe-steps", type=int, default=200,
                        help="observe() calls to time")
    parser.add_argument("--fit-rows", type=int, default=200_000,
                        help="rows of the GraftSelector.fit inputs")
    parser.add_argument("--refit-goal", type=float, default=0.5,
                        help="seconds the refit should take at most")
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args(argv)
    for name in ("n", "d", "observe_steps", "fit_rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive int, got "
                         f"{getattr(args, name)}")
    if args.n < 512:
        parser.error(f"--n must be at least 512 (two selection chunks), got {args.n}")
    return args


def skip_reason():
    """Why the checks cannot run here, or None when torch sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install torch with CUDA support)"
    if not torch.cuda.is_available():
        return (f"no CUDA device: torch.cuda.is_available() is False (torch "
                f"{torch.__version__}, built for CUDA {torch.version.cuda})")
    return None


def cupy_reason():
    """Why CuPy cannot be used here, or None."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x)"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return f"CuPy cannot reach the CUDA runtime ({exc})"
    return None


def _timed(fn, sync):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def _epochs(sampler):
    """The sampler's batches, epoch after epoch, as a DataLoader over it hands them out."""
    for epoch in range(10**6):
        sampler.set_epoch(epoch)
        yield from sampler


def check_observe(steps):
    """observe() on CUDA tensors under set_sync_debug_mode('error'), two ways.

    ``indices``: explicit dataset indices on the GPU (the general path, with the
    range check and the duplicate rule on the device). ``loop``: the sampler's own
    batches, as a DataLoader over it hands them out, observed without indices and
    with the sampler's targets (the steady-state path of a training loop). The
    loop's own copies to the GPU are prepared beforehand: a blocking copy syncs.
    """
    import torch

    from graft_select.sampler import GraftBatchSampler

    device = torch.device("cuda")
    n, b, d, c = 51_200, 256, 512, 10
    g = torch.Generator(device=device).manual_seed(0)
    pool = [(torch.randint(0, n, (b,), device=device, generator=g),
             torch.randn(b, d, device=device, generator=g),
             torch.randn(b, c, device=device, generator=g),
             torch.randint(0, c, (b,), device=device, generator=g)) for _ in range(8)]
    targets = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(0))
    result = {"ok": True}
    for mode in ("indices", "loop"):
        # warm-start epochs only: no refit runs while observe() is timed
        sampler = GraftBatchSampler(n, b, fraction=0.3, seed=0, targets=targets,
                                    warm_start_epochs=10**6)

        handed_out = _epochs(sampler)
        idx, emb, logits, y = pool[0]
        if mode == "indices":  # allocates the store, on the general path
            sampler.observe(idx, embeddings=emb, logits=logits, targets=y)
        else:
            next(handed_out)
            sampler.observe(embeddings=emb, logits=logits)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            start = time.perf_counter()
            for step in range(steps):
                idx, emb, logits, y = pool[step % len(pool)]
                if mode == "indices":
                    sampler.observe(idx, embeddings=emb, logits=logits, targets=y)
                else:
                    next(handed_out)  # the batch the loop trains on
                    sampler.observe(embeddings=emb, logits=logits)
            sampler._recorder.store.flush()  # records the last staged batches
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        except RuntimeError as exc:
            return {"ok": False, "error": f"host synchronisation in observe() ({mode}): {exc}"}
        finally:
            torch.cuda.set_sync_debug_mode("default")
        result[f"ms_per_call_{mode}"] = 1e3 * seconds / steps
    return result


def check_refit(n, d, goal):
    """One refit of an n x d store on the GPU, against one store @ R product."""
    import torch

    from graft_select.sampler import GraftBatchSampler

    device = torch.device("cuda")
    c = 10
    g = torch.Generator(device=device).manual_seed(0)
    sampler = GraftBatchSampler(n, 256, fraction=0.3, warm_start_epochs=1, seed=0)
    step = 65536
    for begin in range(0, n, step):
        idx = torch.arange(begin, min(begin + step, n), device=device)
        sampler.observe(idx, embeddings=torch.randn(len(idx), d, device=device, generator=g),
                        logits=torch.randn(len(idx), c, device=device, generator=g),
                        targets=torch.randint(0, c, (len(idx),), device=device, generator=g))
    emb = sampler._recorder.store["embeddings"]
    R = torch.randn(d, 64, device=device, generator=g)
    sync = torch.cuda.synchronize
    _timed(lambda: emb @ R, sync)
    pass_s, _ = _timed(lambda: emb @ R, sync)
    sampler.set_epoch(1)
    refit_s, _ = _timed(lambda: len(sampler), sync)
    report = sampler.last_refit
    return {"ok": refit_s <= goal, "refit_s": refit_s, "pass_s": pass_s,
            "ratio": refit_s / pass_s, "goal_s": goal, "selected": report.n_selected,
            "epoch_size": report.epoch_size,
            "gradient_error": report.gradient_error,
            "note": "" if refit_s <= goal else f"refit took {refit_s:.2f} s > {goal} s"}


def check_fit(kind, rows):
    """GraftSelector.fit on a torch CUDA tensor or a CuPy array; results on the device."""
    import numpy as np

    from graft_select import GraftSelector

    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, 256)).astype(np.float32)
    if kind == "torch":
        import torch

        X = torch.from_numpy(X).cuda()
        sync = torch.cuda.synchronize

        def on_device(a):
            return isinstance(a, torch.Tensor) and a.is_cuda
    else:
        import cupy

        X = cupy.asarray(X)

        def sync():
            cupy.cuda.Device().synchronize()

        def on_device(a):
            return isinstance(a, cupy.ndarray)
    selector = GraftSelector(fraction=0.25, chunk_size=256, random_state=0)
    selector.fit(X[:4096])  # warm-up: kernels, handles
    seconds, _ = _timed(lambda: selector.fit(X), sync)
    ok = on_device(selector.sample_indices_) and on_device(selector.sample_weight_)
    return {"ok": ok, "fit_s": seconds, "n_selected": int(selector.sample_indices_.shape[0]),
            "note": "" if ok else "results left the device"}


def main(argv=None):
    """Run the checks; return the exit status (0 ok, 1 a check failed, 77 skipped)."""
    args = parse_args(argv)
    reason = skip_reason()
    if reason is not None:
        print(f"SKIP: {reason}; the GPU checks need a CUDA device.")
        return SKIP_STATUS
    summary = {}
    steps = [("observe", lambda: check_observe(args.observe_steps)),
             ("refit", lambda: check_refit(args.n, args.d, args.refit_goal)),
             ("fit-torch", lambda: check_fit("torch", args.fit_rows))]
    no_cupy = cupy_reason()
    if no_cupy is None:
        steps.append(("fit-cupy", lambda: check_fit("cupy", args.fit_rows)))
    else:
        summary["fit-cupy"] = {"ok": None, "skipped": no_cupy}
        print(f"fit-cupy: SKIP: {no_cupy}")
    for name, step in steps:
        try:
            result = step()
        except Exception as exc:  # report every step, whatever failed
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        summary[name] = result
        print(f"{name}: {'PASS' if result['ok'] else 'FAIL'} {json.dumps(result)}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=2)
    return 0 if all(r["ok"] is not False for r in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
