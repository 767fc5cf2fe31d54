"""Adam with per-group gradient-norm clipping, on torch's fused Adam kernel (torch._fused_adam_: one pass over each
parameter instead of six; the step it speeds up is timed by benchmarks/train_step.py). Not torch.optim: its first use
imports torch._dynamo (~10 s on a small CPU), longer than a short training run; and a plain state (two moments per
parameter, one step count) checkpoints simply.

The clip is folded into the kernel: a group whose gradient norm exceeds max_norm is divided by norm / max_norm inside
Adam's pass (grad_scale), instead of a separate pass that rescales every gradient first."""
from __future__ import annotations

import torch


def _row_major(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t viewed so that it is contiguous, permuted the way `like` (its parameter) must be: the kernel is elementwise,
    and on a transposed layout (an encoder stored column-major) it runs 3-5x slower. A gradient in another layout is
    copied into the parameter's."""
    if t.stride() != like.stride():
        t = torch.empty_like(like).copy_(t)
    return t.T if not like.is_contiguous() and like.dim() == 2 and like.T.is_contiguous() else t


class Adam:
    def __init__(self, groups: list[list[torch.nn.Parameter]], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        """groups: the parameters of each separately clipped unit (one dictionary each)."""
        self.groups, self.betas, self.eps = [list(g) for g in groups], betas, eps
        self.params = [p for g in self.groups for p in g]
        self.lr, self.t = 0.0, 0
        self.lr_scales: list[float] | None = None  # per parameter: its step is lr * scale (None: lr for all)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, max_norm: float = 0.0) -> list[float]:
        """One update; with max_norm > 0 each group's gradient is clipped to that norm (as
        torch.nn.utils.clip_grad_norm_: scaled by max_norm / (norm + 1e-6) when that is below 1). Returns each
        group's gradient norm before clipping (0.0 where it has no gradients)."""
        self.t += 1
        b1, b2 = self.betas
        step = torch.full((), float(self.t), device=self.params[0].device) if self.params else None
        norms, start = [], 0
        for group in self.groups:
            idx = [start + i for i, p in enumerate(group) if p.grad is not None]
            start += len(group)
            if not idx:
                norms.append(0.0)
                continue
            params = [self.params[i] for i in idx]
            grads = [p.grad for p in params]
            norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
            norms.append(norm)
            # divided inside the kernel only when clipped (a scale costs it a second write of each gradient); the
            # kernel takes a float32 scale only
            scale = (torch.tensor((norm + 1e-6) / max_norm, dtype=torch.float32, device=grads[0].device)
                     if 0 < max_norm < norm + 1e-6 else None)
            views = [[_row_major(t, p) for t in (p, g, self.m[i], self.v[i])] for p, g, i in zip(params, grads, idx)]
            calls = [(views, self.lr)] if self.lr_scales is None else \
                [([view], self.lr * self.lr_scales[i]) for view, i in zip(views, idx)]
            for part, lr in calls:
                p_, g_, m_, v_ = (list(column) for column in zip(*part))
                torch._fused_adam_(p_, g_, m_, v_, [], [step] * len(p_), lr=lr, beta1=b1, beta2=b2, weight_decay=0.0,
                                   eps=self.eps, amsgrad=False, maximize=False, grad_scale=scale, found_inf=None)
        return norms

    @torch.no_grad()
    def restart(self, param: torch.nn.Parameter, index: torch.Tensor, dim: int = 0) -> None:
        """Fresh moments for the slices `index` of `param` along `dim` (latents re-seeded in place): the first moment
        zero, the second the mean of the other slices' (a zero one would make their first update lr-sized)."""
        i = next(j for j, p in enumerate(self.params) if p is param)
        keep = torch.ones(param.shape[dim], dtype=torch.bool, device=param.device)
        keep[index] = False
        v = self.v[i]
        typical = v.movedim(dim, 0)[keep].mean(0) if bool(keep.any()) else torch.zeros_like(v.movedim(dim, 0)[0])
        self.m[i].index_fill_(dim, index.to(param.device), 0.0)
        v.movedim(dim, 0)[index] = typical

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        out = {"opt.t": torch.tensor(self.t)}
        for n, m, v in zip(names, self.m, self.v):
            out[f"opt.{n}.m"], out[f"opt.{n}.v"] = m, v
        return out

    def load_state_tensors(self, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
        self.t = int(tensors["opt.t"])
        for n, m, v in zip(names, self.m, self.v):
            m.copy_(tensors[f"opt.{n}.m"])
            v.copy_(tensors[f"opt.{n}.v"])
