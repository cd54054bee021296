"""Background refits (issue 21, item 3): wall-clock, selection share, accuracy, memory.

Two parts.

``demo``: the sampler's defaults on the demo's data and model (MNIST-1D, the demo's
CNN, 20 epochs, ``observe`` at every step; only ``fraction``, ``batch_size`` and
``seed`` set), once with ``background=False`` and once with ``background=True``, next
to full data stopped at GRAFT's number of samples (``budget``). Per fraction: the
selection share (seconds on the training path / wall-clock), GRAFT's wall-clock over
the budget-matched run's, and the accuracy at equal samples, paired by seed.

``store``: one refit of a synthetic store (``--n`` samples, 512-d embeddings, 10
classes) while a stand-in training loop (an MLP step per batch, one torch thread)
runs the epoch before it: the refit's seconds hidden and waited, the epoch's
slowdown, and the bytes the store held back while the refit read it, against the
store's own size; peak RSS of each mode comes from its own process.

Usage::

    python benchmarks/bench_background.py demo [--seeds 3] [--threads N]
    python benchmarks/bench_background.py store [--n 100000]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from graft_select.demo import DemoConfig, run_demo
from graft_select.demo.harness import make_batch_sampler
from graft_select.sampler import GraftBatchSampler


def demo(args):
    threads = args.threads or torch.get_num_threads()
    base = replace(DemoConfig(), seeds=tuple(range(args.seeds)), epochs=args.epochs,
                   fractions=tuple(args.fractions), threads=threads, feedback="every")
    print(f"mnist1d, {args.seeds} seeds, {args.epochs} epochs, torch threads {threads}, cores "
          f"{os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    runs = {}
    for background in (False, True):
        def factory(strategy, n_samples, *, fraction, seed, config, total_samples=None,
                    background=background):
            if strategy == "graft":
                return GraftBatchSampler(n_samples, config.batch_size, fraction=fraction,
                                         seed=seed, background=background)
            return make_batch_sampler(strategy, n_samples, fraction=fraction, seed=seed,
                                      config=config, total_samples=total_samples)

        strategies = ("budget", "graft") if not background else ("graft",)
        result = run_demo(replace(base, strategies=strategies), sampler_factory=factory,
                          progress=False)
        for run in result["runs"]:
            key = "budget" if run["strategy"] == "budget" else f"graft/{background}"
            runs.setdefault(key, []).append(run)
            print(json.dumps({"background": background, **{
                k: run[k] for k in ("strategy", "fraction", "seed", "test_accuracy",
                                    "wall_seconds", "selection_seconds", "samples_seen")}}))
        print(f"load {os.getloadavg()[0]:.2f}")
    for fraction in args.fractions:
        pick = {key: sorted((r for r in rs if r["fraction"] == fraction),
                            key=lambda r: r["seed"]) for key, rs in runs.items()}
        for background in (False, True):
            graft = pick[f"graft/{background}"]
            share = np.mean([r["selection_seconds"] / r["wall_seconds"] for r in graft])
            wall = np.mean([g["wall_seconds"] / b["wall_seconds"]
                            for g, b in zip(graft, pick["budget"])])
            acc = np.array([r["test_accuracy"] for r in graft]) * 100
            lead = acc - np.array([r["test_accuracy"] for r in pick["budget"]]) * 100
            print(f"fraction {fraction}, background={background}: selection share "
                  f"{share:.1%}, wall {np.mean([r['wall_seconds'] for r in graft]):.1f} s "
                  f"= {wall:.2f}x budget-matched, GRAFT {acc.mean():.2f} +- {acc.std():.2f}, "
                  f"minus budget-matched {lead.mean():+.2f} +- {lead.std():.2f}")
        on, off = (np.array([r["test_accuracy"] for r in pick[f"graft/{b}"]]) * 100
                   for b in (True, False))
        print(f"fraction {fraction}: background minus synchronous accuracy "
              f"{(on - off).mean():+.2f} +- {(on - off).std():.2f} (paired by seed)")


def _one_store_run(n, background, d=512, classes=10, batch=256):
    """Epochs 0-2 of a sampler over a synthetic store with a stand-in training step."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(n, d, generator=g)
    logits = torch.randn(n, classes, generator=g)
    targets = torch.randint(0, classes, (n,), generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(d, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sampler = GraftBatchSampler(n, batch, fraction=0.3, warm_start_epochs=2, refit_every=1,
                                seed=0, background=background)
    store = sampler._recorder.store
    out = {"background": background}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for epoch in range(3):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        len(sampler)
        held = 0
        for b in sampler:
            idx = torch.as_tensor(b)
            loss = torch.nn.functional.cross_entropy(model(emb[idx]), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sampler.observe(idx, embeddings=emb[idx], logits=logits[idx], targets=targets[idx])
            held = max(held, sum(t.numel() * t.element_size() for block in store._held
                                 for t in [block[0], *block[1].values()]) + sum(
                t.numel() * t.element_size() for idx_, values in store._staged
                for t in [idx_, *values]))
        out[f"epoch{epoch}_s"] = time.perf_counter() - start
        out[f"epoch{epoch}_held_bytes"] = held
    report = sampler.last_refit
    out.update(refit_s=report.seconds, hidden_s=report.hidden_seconds,
               waited_s=report.waited_seconds, store_bytes=store.nbytes,
               rss_growth_bytes=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    return out


def store(args):
    print(f"store {args.n} x 512, 10 classes, one torch thread, cores {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}")
    for background in (False, True):
        code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
                f"import bench_background as b; "
                f"print(json.dumps(b._one_store_run({args.n}, {background})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        print(out)
    print(f"load {os.getloadavg()[0]:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("demo", "store"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the machine's default)")
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args(argv)
    (demo if args.part == "demo" else store)(args)


if __name__ == "__main__":
    main()
