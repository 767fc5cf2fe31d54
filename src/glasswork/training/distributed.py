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


def finish() -> None:
    """Wait for every rank, then tear the process group down: a gloo rank that exits with it alive can abort
    ("terminate called without an active exception") and fail the launch."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --- latents sharded over ranks (a dictionary too wide for one device) ------------------------------------------
class _SumShards(torch.autograd.Function):
    """Sum the ranks' partial reconstructions. The loss after it is the same on every rank, so the gradient each
    rank's part receives is just the upstream gradient (an autograd all_reduce would count it world() times)."""

    @staticmethod
    def forward(ctx, part):
        out = part.clone()
        all_reduce_(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad


def sharded_topk(x_in: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, k: int,
                 offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TopK SAE whose latents are split over ranks: this rank holds W_enc [d_in, F/N] (columns offset..), b_enc,
    W_dec [F/N, d_out]; x_in [batch, d_in] is the whole batch on every rank. Each rank proposes its own top k
    (value, global index); the candidates are gathered (N*k per token) and the global top k chosen from them; each
    rank decodes the winners it holds and the partial outputs are summed. Returns (recon without b_dec [batch, d_out],
    values [batch, k], global indices [batch, k]), equal to an unsharded TopK SAE's. A replicated b_dec subtracted
    from x_in gets its encoder-side gradient in parts: all-reduce that part (see tests/test_distributed.py)."""
    from ..dictionaries.sparse import sparse_decode
    pre = x_in @ W_enc + b_enc  # [batch, F/N]
    with torch.no_grad():
        v, i = pre.topk(min(k, pre.shape[-1]), dim=-1)
        cand_v, cand_i = [v], [i + offset]
        if world() > 1:
            cand_v, cand_i = [torch.empty_like(v) for _ in range(world())], [torch.empty_like(i) for _ in range(world())]
            dist.all_gather(cand_v, v)
            dist.all_gather(cand_i, i + offset)
        all_v, all_i = torch.cat(cand_v, -1), torch.cat(cand_i, -1)  # [batch, N*k]
        top, pos = all_v.topk(k, dim=-1)
        winners = all_i.gather(-1, pos)  # [batch, k] global latent ids
        mine = (winners >= offset) & (winners < offset + W_enc.shape[1])
        local = torch.where(mine, winners - offset, 0)
    values = pre.gather(-1, local).relu() * mine  # differentiable for the latents this rank holds
    part = sparse_decode(values, local, W_dec)
    return _SumShards.apply(part), top.relu(), winners
