"""From toy models to dictionaries: train Glasswork's own SAE (SparseCoder + the trainer) on a toy model's hidden
layer h = W x, and measure how well its decoder rows recover the true feature directions (the columns of W).

Recovery = mean over represented features i (||W_i|| > 0.5) of max over SAE latents j of cos(W_i, W_dec_j): the
"mean max cosine similarity" of Sharkey et al. 2022. One SAE per toy instance, all trained in one pass of the trainer
(each instance's activations are one "hook" of an in-memory TensorSource)."""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import GlassworkError
from .model import ToyModel, sample


@dataclass
class SAESettings:
    expansion: int = 2  # d_sae = expansion * n_features: room for every true feature, and some to spare
    arch: str = "topk"
    k: int = 0  # topk: 0 = the expected number of active features, n (1 - S), rounded, at least 1 (per instance)
    rows: int = 65_536  # activations sampled per instance
    tokens: int = 1_000_000  # rows seen in training (epochs over `rows`)
    batch_size: int = 1024
    lr: float = 3e-3
    seed: int = 0


def hook_name(i: int) -> str:
    return f"toy.instance_{i:02d}.hook_hidden"


def best_match_cosine(W: torch.Tensor, W_dec: torch.Tensor, min_norm: float = 0.5) -> tuple[float, list[float], int]:
    """W [m, n] (true features as columns), W_dec [d_sae, m]. Returns the mean best-match cosine over represented
    features, each represented feature's best cosine [n_repr], and n_repr."""
    feats = W.T[W.norm(dim=0) > min_norm].double()  # [n_repr, m]
    if feats.shape[0] == 0:
        return float("nan"), [], 0
    cos = torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(W_dec.double(), dim=-1).T
    best = cos.max(-1).values  # [n_repr]
    return float(best.mean()), [float(c) for c in best], feats.shape[0]


@torch.no_grad()
def hidden_activations(model: ToyModel, rows: int, seed: int) -> torch.Tensor:
    """h = W x for fresh samples of every instance's data: [inst, rows, m]."""
    gen = torch.Generator().manual_seed(seed)
    return model.hidden(sample(rows, model.sparsity, gen))


def sae_recovery(model: ToyModel, settings: SAESettings | None = None, out: str | Path | None = None,
                 instances: list[int] | None = None) -> list[dict]:
    """Train one SAE per toy instance on its hidden layer; return per instance its sparsity, the SAE's settings, the
    recovery (mean best-match cosine) and the SAE's training metrics. Writes the SAEs to `out` (a set folder) when
    given, else to a temporary folder that is removed."""
    from ..training import TensorSource, TrainConfig
    from ..training import train as train_dictionaries

    s = settings or SAESettings()
    if s.rows < s.batch_size:
        raise GlassworkError(f"toy SAE: rows ({s.rows}) must be at least one batch ({s.batch_size})")
    instances = list(range(model.n_instances)) if instances is None else instances
    h = hidden_activations(model, s.rows, s.seed + 1)  # [inst, rows, m]
    n = model.W.shape[2]
    results = []
    # instances that share a k train together (the trainer has one k per run)
    by_k: dict[int, list[int]] = {}
    for i in instances:
        density = float(1 - model.sparsity[i].mean())
        k = s.k or max(1, round(n * density))
        by_k.setdefault(min(k, s.expansion * n), []).append(i)
    with tempfile.TemporaryDirectory() as tmp:
        for k, group in by_k.items():
            folder = Path(out) / f"k{k}" if out is not None else Path(tmp) / f"k{k}"
            acts = {hook_name(i): h[i].contiguous() for i in group}
            tc = TrainConfig(kind="sae", arch=s.arch, hooks=list(acts), k=k, d_sae=s.expansion * n, tokens=s.tokens,
                             batch_size=s.batch_size, lr=s.lr, warmup_steps=20, b_dec_init="zero", seed=s.seed,
                             dead_tokens=s.tokens // 4, aux_k=max(1, k), model="toy")
            summary = train_dictionaries(tc, TensorSource(acts, s.batch_size, seed=s.seed), folder)
            for i in group:
                d = summary["dicts"][hook_name(i)] if len(group) > 1 else next(iter(summary["dicts"].values()))
                mean, best, n_repr = best_match_cosine(model.W[i].detach(), d.W_dec.detach())
                metrics = summary["dictionaries"][hook_name(i)]
                results.append({"instance": i, "sparsity": float(model.sparsity[i].mean()), "k": k,
                                "d_sae": s.expansion * n, "recovery": mean, "best_cosines": best,
                                "represented": n_repr, "fvu": metrics["train_fvu"], "l0": metrics["train_l0"],
                                "dead_fraction": metrics["dead_fraction"]})
    results.sort(key=lambda r: r["instance"])
    for r in results:
        if not math.isfinite(r["recovery"]):
            r["recovery"] = None  # no represented feature: nothing to recover (JSON has no NaN)
    return results
