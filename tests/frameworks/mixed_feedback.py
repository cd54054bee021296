"""Two gloo ranks that observed different kinds of feedback; each must raise, none hang.

usage: mixed_feedback.py OUT_DIR PORT   (run by tests/test_sampler_reliability.py)
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graft_select.sampler import GraftBatchSampler


def worker(rank, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    sampler = GraftBatchSampler(200, 10, fraction=0.3, warm_start_epochs=1)
    mine = torch.arange(rank, 200, 2)
    kwargs = {"embeddings": torch.randn(len(mine), 4)}
    if rank == 0:
        kwargs.update(logits=torch.randn(len(mine), 3), targets=mine % 3)
    sampler.observe(mine, **kwargs)
    try:
        sampler.set_epoch(1)
        list(sampler)
        message = None
    except ValueError as exc:
        message = str(exc)
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(repr(message))
    dist.barrier()  # both ranks done before either tears the group down (see accelerate_run)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2, join=True)
