"""Multi-process training through `torchrun` (DDP semantics, written framework-agnostically).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; we join the process group
(NCCL on CUDA, gloo on CPU), broadcast rank 0's initial weights, and the StepContext
averages gradients across ranks before each optimiser step. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device_kind: str) -> DistEnv:
    """Join the torchrun process group if launched by torchrun; single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    made = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        made = True
    return DistEnv(rank, world, local, made)


def teardown(env: DistEnv) -> None:
    if env.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module, env: DistEnv) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not env.active:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def average_(tensors: list[torch.Tensor], env: DistEnv) -> None:
    """In-place mean across ranks, as one flat all-reduce."""
    if not env.active or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= env.world_size
    i = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[i:i + n].view_as(t))
        i += n


def barrier(env: DistEnv) -> None:
    if env.active:
        dist.barrier()


def any_true(flag: bool, env: DistEnv, device=None) -> bool:
    if not env.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
