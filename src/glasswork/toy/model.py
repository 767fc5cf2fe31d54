"""The toy model of superposition (Elhage et al. 2022), many instances trained at once as one batched model.

Data: x has n features, each uniform in [0, 1) with probability 1 - S, else 0.
Model: h = W x (W [m, n]), x' = ReLU(W^T h + b). Loss: sum_i I_i (x_i - x'_i)^2, mean over the batch.
Every instance has its own sparsity S [n] and importance I [n]; the instance dimension leads every tensor,
so one step trains all of them (their losses are summed, and their parameters never interact).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..io import GlassworkError
from ..progress import progress


@dataclass
class ToyConfig:
    n_features: int = 5
    n_hidden: int = 2
    steps: int = 10_000
    batch: int = 1024
    lr: float = 1e-3  # AdamW, constant
    seed: int = 0

    def check(self) -> None:
        where = "toy config"
        if self.n_features < 1 or self.n_hidden < 1:
            raise GlassworkError(f"{where}: n_features and n_hidden must be >= 1 "
                                 f"(got n_features={self.n_features}, n_hidden={self.n_hidden})")
        if self.n_hidden > self.n_features:
            raise GlassworkError(f"{where}: n_hidden (m={self.n_hidden}) must be <= n_features (n={self.n_features}); "
                                 "superposition needs fewer dimensions than features")
        if self.steps < 1 or self.batch < 1:
            raise GlassworkError(f"{where}: steps and batch must be >= 1 (got steps={self.steps}, batch={self.batch})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GlassworkError(f"{where}: lr must be a positive number (got {self.lr})")


def _per_instance(values, n_instances: int | None, n: int, name: str) -> torch.Tensor:
    """A scalar, [inst], [n] (importance only) or [inst, n] -> float64-checked float32 [inst, n]."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(n_instances or 1)
    if t.dim() == 1 and n_instances is not None and t.shape[0] == n and t.shape[0] != n_instances:
        t = t.expand(n_instances, n)  # one row shared by every instance
    if t.dim() == 1:
        t = t[:, None].expand(-1, n)
    if t.dim() != 2 or t.shape[1] != n or (n_instances is not None and t.shape[0] != n_instances):
        raise GlassworkError(f"toy model: {name} must be a number, [instances], or [instances, n_features={n}] "
                             f"(got shape {list(torch.as_tensor(values).shape)})")
    return t.contiguous()


def check_sparsity(sparsity, n: int) -> torch.Tensor:
    """Sparsity per instance (and feature): [inst, n], every value in [0, 1)."""
    s = _per_instance(sparsity, None, n, "sparsity")
    bad = ~((s >= 0) & (s < 1))
    if bad.any():
        raise GlassworkError(f"toy model: sparsity must be in [0, 1) (the probability a feature is zero); "
                             f"got {s[bad][0].item():g}")
    return s.float()


def check_importance(importance, n_instances: int, n: int) -> torch.Tensor:
    imp = _per_instance(importance, n_instances, n, "importance")
    if not ((imp > 0) & torch.isfinite(imp)).all():
        raise GlassworkError("toy model: importance must be positive and finite")
    return imp.float()


def decaying_importance(n: int, base: float = 0.9) -> torch.Tensor:
    """The paper's importance I_i = base^i: [n]."""
    return base ** torch.arange(n, dtype=torch.float32)


def sample(batch: int, sparsity: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x: [inst, batch, n]. One uniform u per entry: active when u < 1-S, and then u / (1-S) is uniform in [0, 1)."""
    density = (1 - sparsity)[:, None, :]  # [inst, 1, n]
    x = torch.rand(sparsity.shape[0], batch, sparsity.shape[1], generator=gen)
    x.div_(density)  # in place: the data passes dominate a step's time
    return x.masked_fill_(x >= 1, 0.0)


class ToyModel(nn.Module):
    """W: [inst, m, n], b: [inst, n]; buffers sparsity and importance [inst, n]."""

    def __init__(self, n_features: int, n_hidden: int, sparsity: torch.Tensor, importance: torch.Tensor,
                 gen: torch.Generator | None = None):
        super().__init__()
        inst = sparsity.shape[0]
        W = torch.empty(inst, n_hidden, n_features)
        std = math.sqrt(2.0 / (n_hidden + n_features))  # xavier normal, as in the paper's code
        self.W = nn.Parameter(W.normal_(0, std, generator=gen))
        self.b = nn.Parameter(torch.zeros(inst, n_features))
        self.register_buffer("sparsity", sparsity)
        self.register_buffer("importance", importance)

    @property
    def n_instances(self) -> int:
        return self.W.shape[0]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """x [inst, batch, n] -> h [inst, batch, m]."""
        return torch.bmm(x, self.W.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [inst, batch, n] -> x' [inst, batch, n]."""
        return torch.relu(torch.bmm(self.hidden(x), self.W) + self.b[:, None, :])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Importance-weighted squared error per instance: [inst]."""
        return (self.importance[:, None, :] * (x - self(x)) ** 2).sum(-1).mean(-1)


@torch.no_grad()
def gradients(model: "ToyModel", x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d(sum of per-instance losses)/d(W, b) for x [inst, batch, n], written out by hand: autograd's extra passes over
    [inst, batch, n] made a step 2-3x slower here. Returns gW [inst, m, n], gb [inst, n]."""
    W, b = model.W, model.b
    B = x.shape[1]
    h = torch.bmm(x, W.transpose(1, 2))  # [inst, batch, m]
    out = torch.baddbmm(b[:, None, :], h, W).clamp_min_(0)  # x' [inst, batch, n]
    g = out.sub(x).masked_fill_(out == 0, 0.0)  # x' - x where the ReLU is open (torch's ReLU gradient at 0 is 0 too)
    c = model.importance * (2.0 / B)  # [inst, n]: folded in after the batch reductions, never multiplied over [inst, batch, n]
    gb = g.sum(1) * c
    gW = torch.bmm(h.transpose(1, 2), g) * c[:, None, :]  # through the decoder W^T h
    dh = torch.bmm(g, (W * c[:, None, :]).transpose(1, 2))  # [inst, batch, m]
    gW += torch.bmm(dh.transpose(1, 2), x)  # through the encoder W x
    return gW, gb


def train(cfg: ToyConfig, sparsity, importance=1.0, desc: str = "toy model") -> tuple[ToyModel, torch.Tensor]:
    """Train every instance at once. sparsity: [inst] or [inst, n] in [0, 1); importance: number, [n], [inst] or
    [inst, n]. Returns the model and its final loss per instance [inst] (on a fresh batch of 8x the size)."""
    cfg.check()
    sparsity = check_sparsity(sparsity, cfg.n_features)
    importance = check_importance(importance, sparsity.shape[0], cfg.n_features)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = ToyModel(cfg.n_features, cfg.n_hidden, sparsity, importance, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, foreach=True)  # torch's default weight decay 0.01
    chunk = max(1, cfg.steps // 100)
    with progress(desc, cfg.steps, unit="steps") as bar:
        for step in range(cfg.steps):
            model.W.grad, model.b.grad = gradients(model, sample(cfg.batch, sparsity, gen))
            opt.step()
            if (step + 1) % chunk == 0 or step + 1 == cfg.steps:
                bar.advance(chunk if (step + 1) % chunk == 0 else (step + 1) % chunk)
    with torch.no_grad():
        final = model.loss(sample(8 * cfg.batch, sparsity, gen))
    return model, final


@torch.no_grad()
def best_of(model: ToyModel, replicates: int, rows: int = 16_384, seed: int = 0) -> tuple[ToyModel, torch.Tensor]:
    """Keep the best of each run of `replicates` consecutive instances (same setting, different init): the one with the
    lowest loss on one shared sample of `rows` inputs. Gradient descent here has local minima (a feature left out, or
    stuck on the wrong side of its partner), and the paper's figures show the better solution.
    Returns a model of inst / replicates instances and every replicate's loss [inst / replicates, replicates]."""
    inst, m, n = model.W.shape
    if replicates < 1 or inst % replicates:
        raise GlassworkError(f"toy model: {inst} instances do not split into runs of {replicates} replicates")
    cells = inst // replicates
    gen = torch.Generator().manual_seed(seed)
    x = sample(rows, model.sparsity[::replicates], gen).repeat_interleave(replicates, 0)  # [inst, rows, n], shared per cell
    losses = model.loss(x).view(cells, replicates)
    keep = torch.arange(cells) * replicates + losses.argmin(1)  # [cells]
    best = ToyModel(n, m, model.sparsity[keep].clone(), model.importance[keep].clone())
    best.W.copy_(model.W[keep])
    best.b.copy_(model.b[keep])
    return best, losses


# ---- measures of superposition (all on W [inst, m, n]) ----

def dims_per_feature(W: torch.Tensor) -> torch.Tensor:
    """m / ||W||_F^2 per instance: [inst]. 1 when m features each own a dimension; 1/2 for antipodal pairs."""
    return W.shape[1] / W.pow(2).sum((1, 2))


def feature_dimensionality(W: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 per feature: [inst, n]. The fraction of a dimension feature i owns;
    0 for a feature that is not represented."""
    W = W.double()
    norms = W.norm(dim=1)  # [inst, n]
    unit = W / norms.clamp_min(eps)[:, None, :]
    overlap = torch.bmm(unit.transpose(1, 2), W)  # [inst, n, n]: W_i_hat . W_j
    denom = overlap.pow(2).sum(-1)
    return torch.where(norms > 1e-3, norms.pow(2) / denom.clamp_min(eps), torch.zeros_like(norms)).float()

