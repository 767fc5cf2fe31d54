"""Sparse dictionaries on image activations: the text trainer on one conv (or ViT) layer's per-position rows, and
steering an image model by clamping a feature (the same feature-edit engine as text steering)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..dictionaries.saving import load
from ..io import GlassworkError
from ..steering import edit_features
from ..training.config import TrainConfig
from ..training.sources import TensorSource
from ..training.trainer import train
from .models import ImageModel, capture, intervene


@torch.no_grad()
def position_rows(model: ImageModel, hook: str, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Every position's activation at `hook` as rows: [n * h * w, channels] (conv) or [n * tokens, d] (ViT)."""
    rows = []
    for i in range(0, pixels.shape[0], batch):
        _, acts = capture(model, pixels[i:i + batch], [hook])
        rows.append(acts[hook].reshape(-1, acts[hook].shape[-1]).float())
    return torch.cat(rows)


def train_image_sae(model: ImageModel, hook: str, pixels: torch.Tensor, out: str | Path, d_sae: int, k: int,
                    epochs: int = 4, batch_size: int = 2048, seed: int = 0, resume: bool = False, **overrides) -> dict:
    """A TopK SAE on every position of `hook` over `pixels` [n, h, w, c], `epochs` passes; written to `out`.
    Resumes from `out`'s checkpoint after a kill (resume=True). Returns the trainer's summary."""
    rows = position_rows(model, hook, pixels)
    if rows.shape[0] < batch_size:
        raise GlassworkError(f"image SAE: {rows.shape[0]} positions at '{hook}' is fewer than one batch ({batch_size})")
    tc = TrainConfig(kind="sae", arch="topk", hooks=[hook], d_sae=d_sae, k=k, tokens=epochs * rows.shape[0],
                     batch_size=batch_size, seed=seed, model=model.name, b_dec_init="mean",
                     **{"lr": 2e-3, "warmup_steps": 10, **overrides})
    return train(tc, TensorSource({hook: rows}, batch_size, seed=seed, model=model.name), out, resume=resume)


def load_image_sae(folder: str | Path, model: ImageModel):
    sae = load(folder)
    hook = sae.cfg.hook_in
    if hook not in model.points:
        raise GlassworkError(f"{folder}: this dictionary reads '{hook}', which {model.name} does not have "
                             f"(hook points: {model.hook_points()})")
    return sae


@torch.no_grad()
def clamped_probs(model: ImageModel, sae, feature: int, value: float, images: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """Class probabilities [n, classes] without and with `feature` clamped to `value` at every position of the
    dictionary's hook (its error term kept, so clamping to the current value changes nothing)."""
    if not 0 <= feature < sae.cfg.d_sae:
        raise GlassworkError(f"feature {feature} is out of range: this dictionary has {sae.cfg.d_sae} features")
    hook = sae.cfg.hook_in
    iv = edit_features(hook, hook, sae.encode, [feature], sae.W_dec[[feature]],
                       lambda codes: torch.full_like(codes, float(value)), label=f"clamp {feature}={value:g}")
    before = model.probs(images)
    with intervene(model, {hook: lambda act: iv.edit(act, None)}):
        after = model.probs(images)
    return before, after
