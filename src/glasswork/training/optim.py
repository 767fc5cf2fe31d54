"""Adam, written out: torch.optim's first use imports torch._dynamo (~10 s on a small CPU), longer than a short
training run; and a plain state (two moments per parameter, one step count) checkpoints simply."""
from __future__ import annotations

import math

import torch


class Adam:
    def __init__(self, params: list[torch.nn.Parameter], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps = list(params), betas, eps
        self.lr, self.t = 0.0, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            # m / (sqrt(v / c2) + eps) = sqrt(c2) * m / (sqrt(v) + eps * sqrt(c2)); the denominator goes into the
            # gradient's memory (no longer needed): no new tensor per step
            denom = torch.sqrt(v, out=p.grad).add_(self.eps * math.sqrt(c2))
            p.addcdiv_(m, denom, value=-self.lr * math.sqrt(c2) / c1)

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
