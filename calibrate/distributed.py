"""Running under `torchrun --nproc_per_node N`: one process per shard, statistics all-reduced.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we join the process group (nccl on a GPU, gloo
on the CPU), each rank takes every N-th batch of the same global sequence, the sums are
all-reduced, and only rank 0 writes files. Without torchrun everything is a 1-process no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world(device: str | None = None) -> World:
    """Join torchrun's process group if there is one; pick the device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in (None, "cuda")
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    chosen = torch.device(f"cuda:{local}") if cuda else torch.device(device or "cpu")
    return World(dist.get_rank() if size > 1 else 0, size, chosen)


def to_device(arrays: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """numpy batch arrays (possibly read-only memory maps) as tensors on `device`."""
    return {k: torch.from_numpy(np.array(v)).to(device) for k, v in arrays.items()}


def all_reduce_sum(vector: torch.Tensor, w: World) -> torch.Tensor:
    """Sum a float64 CPU vector over every process (gloo and nccl both)."""
    if w.size == 1:
        return vector
    moved = vector.to(w.device)
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return moved.cpu()


def barrier(w: World) -> None:
    if w.size > 1:
        dist.barrier()
