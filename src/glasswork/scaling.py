"""Scaling and feature splitting (after "Scaling Monosemanticity" and "Towards Monosemanticity"): how a dictionary's
quality follows its width and its training tokens, and how a feature of a small dictionary splits into several in
larger ones.

  sweep          train one TopK SAE per (width, tokens) on an activation store, evaluate each on held-out text
  power_law      fit y = a * x^-b by least squares in log-log space (with its R^2)
  splits         for features of the smallest dictionary, their nearest features (decoder cosine) in each larger one
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .io import GlassworkError


def check_widths(widths: list[int]) -> list[int]:
    """Widths as given, or a clear error for an empty list, a duplicate or a width under 1."""
    if not widths:
        raise GlassworkError("no widths given (expected a list such as 576,1152,2304,4608)")
    dup = sorted({w for w in widths if widths.count(w) > 1})
    if dup:
        raise GlassworkError(f"widths {widths}: {dup[0]} is given twice (each width once)")
    if any(int(w) < 1 for w in widths):
        raise GlassworkError(f"widths {widths}: every width must be at least 1")
    return [int(w) for w in widths]


def sweep(model, store_dir: str | Path, hook: str, runs: list[tuple[int, int]], out: str | Path, k: int = 32,
          eval_contexts: torch.Tensor | None = None, eval_tokens: int = 8064, batch_size: int = 512,
          lr: float = 2e-3) -> list[dict]:
    """Train a TopK SAE for each (width, tokens) in `runs` on the store at `hook` (each into OUT/d{width}-t{tokens},
    skipped when already there), evaluate it on `eval_contexts` (default: held-out contexts of the default corpus).
    Each width has its own seed (the width): with one seed a wider SAE's first latents would start where a narrower
    one's did, and "splitting" would find the shared start rather than the split. Returns [{width, tokens, fvu, ce_loss_score, kl, dead, seconds}]."""
    import time

    from . import evals
    from .data.store import ActivationStore
    from .dictionaries import load
    from .training import TrainConfig, train
    from .training.sources import StoreSource
    check_widths(list(dict.fromkeys(w for w, _ in runs)))
    if len(set(runs)) != len(runs):
        raise GlassworkError(f"runs {runs}: a (width, tokens) pair is given twice")
    if eval_contexts is None:
        from .data import corpus
        eval_contexts = corpus.contexts(model, split="heldout", ctx_len=128, seed=1, tokens=eval_tokens)
    store = ActivationStore(store_dir, model=model)
    rows = []
    for width, tokens in runs:
        folder = Path(out) / f"d{width}-t{tokens}"
        t0 = time.time()
        if not (folder / "config.json").exists():
            cfg = TrainConfig(kind="sae", arch="topk", hooks=[hook], d_sae=width, k=min(k, width), tokens=tokens,
                              batch_size=batch_size, lr=lr, warmup_steps=20, model=model.name, seed=width)
            train(cfg, StoreSource(store, [hook], cfg.batch_size, seed=0), folder)
        sae = load(folder)
        ev = evals.evaluate(sae, model, eval_contexts, tokens=eval_tokens)
        d = next(iter(ev["dictionaries"].values()))
        rows.append({"width": width, "tokens": tokens, "fvu": d["fvu"], "ce_loss_score": ev["ce_loss_score"],
                     "kl": ev["kl"], "dead": d.get("dead_fraction"), "path": str(folder),
                     "seconds": round(time.time() - t0, 1)})
    return rows


def power_law(x: list[float], y: list[float]) -> dict:
    """y = a * x^-b fitted by least squares on (log x, log y): {a, b, r2}. Needs 2+ points, all positive."""
    if len(x) != len(y) or len(x) < 2:
        raise GlassworkError(f"a power law needs 2 or more (x, y) points (got {len(x)} x, {len(y)} y)")
    if any(v <= 0 for v in list(x) + list(y)):
        raise GlassworkError("a power law needs positive x and y")
    lx = torch.tensor([math.log(v) for v in x], dtype=torch.float64)
    ly = torch.tensor([math.log(v) for v in y], dtype=torch.float64)
    A = torch.stack([torch.ones_like(lx), lx], 1)
    coef = torch.linalg.lstsq(A, ly[:, None]).solution.flatten()
    fit = A @ coef
    ss_res, ss_tot = float(((ly - fit) ** 2).sum()), float(((ly - ly.mean()) ** 2).sum())
    return {"a": math.exp(float(coef[0])), "b": -float(coef[1]), "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def splits(dictionaries: list, features: list[int], top: int = 3) -> list[dict]:
    """For each feature of dictionaries[0] (the smallest), its `top` nearest features by decoder cosine in each of
    the others: [{feature, children: [[(feature, cosine)] per larger dictionary]}]."""
    if len(dictionaries) < 2:
        raise GlassworkError("feature splitting compares a dictionary with larger ones: give 2 or more")
    dec = [torch.nn.functional.normalize(d.W_dec.detach().float(), dim=1) for d in dictionaries]
    small = dec[0]
    for f in features:
        if not 0 <= f < small.shape[0]:
            raise GlassworkError(f"feature {f} outside the smallest dictionary's 0..{small.shape[0] - 1}")
    out = []
    for f in features:
        children = []
        for big in dec[1:]:
            cos = big @ small[f]
            best = cos.topk(min(top, cos.numel()))
            children.append([(int(i), round(float(c), 4)) for c, i in zip(best.values, best.indices)])
        out.append({"feature": f, "children": children})
    return out
