"""GraftBatchSampler's per-step and per-refit overhead, and the size of its store.

Four measurements, each a ratio or a size taken in one run (issue 9):

1. ``observe``: the time of ``observe()`` against the training step it follows
   (forward, backward, Adam step) on MNIST-1D batches of 128, for the demo model
   (``CNN1D``) and a model with about 10x its parameters (``CNN1D(width=101)``).
   The two are timed alternately in the same loop and summed over windows of 32
   steps (observe() records the batches it staged once per window); the ratio is
   the median over the windows.
   Targets: at most 5% (demo model) and 1% (10x model). For reference a second
   loop times, instead of observe(), the four copies of the batch alone
   (indices, embeddings, logits, targets): the floor of any observe() that
   copies the batch, as it must (the caller may overwrite its tensors; CUDA
   graphs do). A third loop writes the batch's embeddings and logits straight
   into per-sample NumPy tables at its indices (no check, no staging): the
   floor of any store of full-width rows, which the store's recording pays
   once per row whatever its design.
2. ``store``: a 1,280,000-row store (ImageNet scale: 2,048-d embeddings, 1,000
   classes) with ``sketch_width=256`` and ``feedback_dtype=float16``, every row
   written. Target: at most 2 GB.
3. ``quality``: selection quality from a sketched store. Synthetic class-structured
   data (2,048-d embeddings, 1,000 classes); one refit from the unsketched float32
   store and one from the sketched float16 store; for each selected subset, the
   mean over chunks of the least-squares gradient error against the TRUE
   (unsketched) chunk gradients, as a ratio to uniform subsets of the same sizes.
   Target: the sketched ratio within 10% of the unsketched one.
4. ``bytes``: 4 gloo processes on the CPU, each observing its quarter of an epoch in
   batches of 128, then one refit: bytes each rank sends to merge the feedback,
   against what the previous implementation all-gathered (the whole store and the
   last-seen epochs from every rank).

Usage::

    python benchmarks/bench_overhead.py [--only observe|store|quality|bytes] [--quick]

``--only observe`` uses the public API only, so it also runs on older versions.
"""

import argparse
import os
import resource
import socket
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from graft_select.sampler import GraftBatchSampler

# ----------------------------------------------------------------------- observe

def observe_ratio(width, steps, reference=None):
    from graft_select.datasets import make_mnist1d
    from graft_select.demo.models import CNN1D

    X, y, _, _ = make_mnist1d(12_800, random_state=0)
    X, y = torch.from_numpy(X).float(), torch.from_numpy(y).long()
    n = len(X)
    torch.manual_seed(0)
    model = CNN1D(length=X.shape[1], width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # warm-start epochs only: no refit runs (its cost is the selection's, not observe's)
    sampler = GraftBatchSampler(n, 128, fraction=0.3, warm_start_epochs=10**6)
    step_times, observe_times = [], []
    tables = {}  # reference="store": the store's tables, as NumPy arrays

    def batches():  # the sampler's batches, as a DataLoader over it hands them out
        for epoch in range(10**6):
            sampler.set_epoch(epoch)
            for batch in sampler:
                yield torch.tensor(batch)

    for step, index in zip(range(steps + 20), batches()):
        xb, yb = X[index], y[index]
        start = time.perf_counter()
        logits, embedding = model(xb, return_embedding=True)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        middle = time.perf_counter()
        if reference == "copies":  # the floor of any observe() that copies the batch
            for value in (index, embedding, logits, yb):
                value.detach().clone()
        elif reference == "store":  # ... and that writes its rows into per-sample tables
            rows = index.numpy()
            for name, value in (("embeddings", embedding), ("logits", logits)):
                value = value.detach().numpy()
                if name not in tables:
                    tables[name] = np.zeros((n + 1, value.shape[1]), dtype=np.float32)
                tables[name][rows] = value
        else:
            sampler.observe(index, embeddings=embedding.detach(), logits=logits.detach(),
                            targets=yb)
        end = time.perf_counter()
        if step >= 20:  # warm-up steps are left out
            step_times.append(middle - start)
            observe_times.append(end - middle)
    params = sum(p.numel() for p in model.parameters())
    # observe() records its staged batches every 32 calls, so the times are summed
    # over windows of 32 steps (each holds one recording); the median window is
    # robust to the other processes of this shared machine preempting a few steps.
    windows = len(step_times) // 32
    step = np.reshape(step_times[:windows * 32], (windows, 32)).sum(axis=1)
    observe = np.reshape(observe_times[:windows * 32], (windows, 32)).sum(axis=1)
    ratio = float(np.median(observe / step))
    return params, 1e3 * np.median(step) / 32, 1e3 * np.median(observe) / 32, ratio


def bench_observe(quick):
    steps = 640 if quick else 3200
    print(f"observe() against the training step (MNIST-1D, batch 128, {steps} steps, "
          "1 thread; per step, median over windows of 32 steps)")
    results = {}
    for label, width, target in (("demo CNN1D", 32, 0.05), ("10x CNN1D", 110, 0.01)):
        params, step_ms, observe_ms, ratio = observe_ratio(width, steps)
        copies = observe_ratio(width, steps, reference="copies")[3]
        store = observe_ratio(width, steps, reference="store")[3]
        results[label] = ratio
        print(f"  {label:11s} {params:7d} parameters: step {step_ms:6.3f} ms, observe "
              f"{observe_ms:6.3f} ms, ratio {100 * ratio:5.2f}%  target <= {100 * target:.0f}%: "
              f"{'PASS' if ratio <= target else 'MISS'}  (copying the batch alone: "
              f"{100 * copies:4.2f}%; writing its rows into tables: {100 * store:4.2f}%)")
    return results


# ------------------------------------------------------------------------- store

def bench_store(quick):
    n, d, c, width = 1_280_000, 2048, 1000, 256
    rows = 8192
    print(f"store of {n:,} rows ({d}-d embeddings, {c} classes), sketch_width={width}, "
          "float16")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = GraftBatchSampler(n, 128, sketch_width=width, feedback_dtype=torch.float16)
    g = torch.Generator().manual_seed(0)
    emb, logits = torch.randn(rows, d, generator=g), torch.randn(rows, c, generator=g)
    targets = torch.randint(0, c, (rows,), generator=g)
    start = time.perf_counter()
    stop = rows * 4 if quick else n
    for begin in range(0, stop, rows):
        index = torch.arange(begin, min(n, begin + rows))
        sampler.observe(index, embeddings=emb[:len(index)], logits=logits[:len(index)],
                        targets=targets[:len(index)])
    seconds = time.perf_counter() - start
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20
    store_gb = sampler._recorder.store.nbytes / 2**30
    dense_gb = n * (d + c) * 4 / 2**30
    print(f"  store {store_gb:.2f} GB (float32 unsketched: {dense_gb:.1f} GB), peak RSS growth "
          f"{rss_growth:.2f} GB, {min(stop, n):,} rows written in {seconds:.1f} s; "
          f"target <= 2 GB: {'PASS' if store_gb <= 2 else 'MISS'}")
    index = torch.arange(128)
    sampler._recorder.store.flush()
    start = time.perf_counter()
    for _ in range(96):  # three recordings of 32 staged batches
        sampler.observe(index, embeddings=emb[:128], logits=logits[:128], targets=targets[:128])
    sampler._recorder.store.flush()
    per_call = (time.perf_counter() - start) / 96
    print(f"  observe() of a 128-row ImageNet-shaped batch: {1e3 * per_call:.2f} ms on the CPU "
          "(mean, recording and sketching included)")
    return store_gb


# ----------------------------------------------------------------------- quality

def synthetic(n, d, c, seed=0):
    """Class-structured embeddings and the logits of a partly trained linear head."""
    g = torch.Generator().manual_seed(seed)
    latent = 64
    means = torch.randn(c, latent, generator=g)
    targets = torch.randint(0, c, (n,), generator=g)
    z = means[targets] + 1.5 * torch.randn(n, latent, generator=g)
    lift = torch.randn(latent, d, generator=g) / latent ** 0.5
    embeddings = torch.relu(z @ lift) + 0.1 * torch.randn(n, d, generator=g)
    logits = 0.3 * z @ means.T
    return embeddings, logits, targets


def chunk_errors(subset, candidates, chunk, residuals, inputs, rng):
    """Mean gradient error of the subset and of uniform subsets, chunk by chunk."""
    from graft_select.gradients import FactoredGradients, gradient_error

    position = torch.empty(len(candidates), dtype=torch.int64)
    position[candidates] = torch.arange(len(candidates))
    chosen = position[subset]
    selected, uniform = [], []
    for j in range(len(candidates) // chunk):
        rows = candidates[j * chunk:(j + 1) * chunk]
        G = FactoredGradients(residuals[rows].double().numpy(), inputs[rows].double().numpy())
        local = (chosen[(chosen >= j * chunk) & (chosen < (j + 1) * chunk)] - j * chunk).numpy()
        if len(local) == 0:
            continue
        selected.append(float(gradient_error(G, local)[0]))
        draws = [float(gradient_error(G, rng.choice(chunk, len(local), replace=False))[0])
                 for _ in range(3)]
        uniform.append(float(np.mean(draws)))
    return float(np.mean(selected)), float(np.mean(uniform))


def bench_quality(quick):
    from graft_select._plan import epoch_generator

    n, d, c, width, chunk = (5120 if quick else 20480), 2048, 1000, 256, 256
    embeddings, logits, targets = synthetic(n, d, c)
    residuals = torch.softmax(logits, 1) - F.one_hot(targets, c)
    inputs = torch.cat([embeddings, torch.ones(n, 1)], dim=1)
    print(f"selection quality, n={n}, {d}-d embeddings, {c} classes, chunks of {chunk}, "
          "fraction 0.1: gradient error against the true chunk gradients / uniform's")
    ratios = {}
    for label, kwargs in (("unsketched float32", {}),
                          (f"sketch {width} float16",
                           {"sketch_width": width, "feedback_dtype": torch.float16})):
        sampler = GraftBatchSampler(n, chunk, fraction=0.1, refresh_share=0.0, seed=0,
                                    **kwargs)
        for begin in range(0, n, 1024):
            index = torch.arange(begin, min(n, begin + 1024))
            sampler.observe(index, embeddings=embeddings[index], logits=logits[index],
                            targets=targets[index])
        sampler.set_epoch(1)
        len(sampler)
        candidates = torch.randperm(n, generator=epoch_generator(0, 1))  # the refit's order
        selected, uniform = chunk_errors(sampler._planner.subset, candidates, chunk, residuals,
                                         inputs, np.random.default_rng(0))
        ratios[label] = selected / uniform
        print(f"  {label:19s} error {selected:.4f}, uniform {uniform:.4f}, ratio "
              f"{ratios[label]:.3f} (refit {sampler.last_refit.seconds:.1f} s, store "
              f"{sampler._recorder.store.nbytes / 2**20:.0f} MB)")
    plain, sketched = ratios.values()
    change = abs(sketched - plain) / plain
    print(f"  sketched ratio within {100 * change:.1f}% of unsketched; target <= 10%: "
          f"{'PASS' if change <= 0.10 else 'MISS'}")
    return ratios


# ------------------------------------------------------------------------- bytes

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bytes_worker(rank, world, port, n, d, c, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sampler = GraftBatchSampler(n, 128, fraction=0.3, seed=0, warm_start_epochs=1)
        g = torch.Generator().manual_seed(rank)
        mine = torch.arange(rank, n, world)
        for begin in range(0, len(mine), 128):
            index = mine[begin:begin + 128]
            sampler.observe(index, embeddings=torch.randn(len(index), d, generator=g),
                            logits=torch.randn(len(index), c, generator=g),
                            targets=torch.randint(0, c, (len(index),), generator=g))
        sampler.set_epoch(1)
        len(sampler)
        report = sampler.last_refit
        torch.save({"bytes": report.gathered_bytes, "observed": len(mine),
                    "plan": sampler._plan()[:100].tolist()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def bench_bytes(quick):
    import torch.multiprocessing as mp

    world, d, c = 4, 512, 10
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_bytes_worker, args=(world, _free_port(), n, d, c, out), nprocs=world,
                 join=True)
        results = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world)]
    row = (d + c) * 4
    before = 3 * 2 * 8 + n * 8 + n * row  # the old all_gather inputs: kinds, last_seen, store
    print(f"bytes each rank sends per refit, {world} gloo ranks, n={n:,}, {d}-d embeddings, "
          f"{c} classes, each rank observing its quarter of an epoch")
    for rank, result in enumerate(results):
        observed = result["observed"] * row
        print(f"  rank {rank}: {result['bytes'] / 2**20:7.2f} MB sent (observed rows "
              f"{observed / 2**20:.2f} MB of values, + index and epoch per row); before: "
              f"{before / 2**20:.2f} MB ({before / result['bytes']:.1f}x)")
    received = results[0]["bytes"] * world
    print(f"  each rank receives {received / 2**20:.2f} MB (before: {before * world / 2**20:.2f}"
          " MB)")
    agree = all(r["plan"] == results[0]["plan"] for r in results)
    print(f"  ranks agree on the plan: {agree}")
    n, ranks, row = 1_280_000, 8, 2 * (256 + 256) + 16
    print(f"  ImageNet on paper ({ranks} ranks, sketch 256, float16): each rank sends "
          f"{n // ranks * row / 2**30:.2f} GB and receives {n * row / 2**30:.2f} GB per refit; "
          f"before (float32 2048-d embeddings and 1000 classes): sends "
          f"{n * (3048 * 4 + 8) / 2**30:.1f} GB, receives {ranks * n * (3048 * 4 + 8) / 2**30:.0f}"
          " GB")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["observe", "store", "quality", "bytes"])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    benches = {"observe": bench_observe, "store": bench_store, "quality": bench_quality,
               "bytes": bench_bytes}
    for name, bench in benches.items():
        if args.only in (None, name):
            bench(args.quick)


if __name__ == "__main__":
    main()
