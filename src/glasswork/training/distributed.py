"""torch.distributed for the trainer: data parallel (gradients averaged over ranks, as DDP does) and, for a TopK SAE
too wide for one device, its latents sharded over ranks. World size 1 runs the same code with no communication.

Launch: `torchrun --nproc-per-node N -m glasswork train ...` (gloo on CPU, nccl on GPUs)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: str = "cpu") -> None:
    """Join the process group torchrun describes in the environment (no-op when not launched by torchrun)."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if world() > 1:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks in one flat bucket (what DDP's reducer does, without its hooks)."""
    if world() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if world() > 1:
        dist.barrier()
