"""Checkpoints: one safetensors file (weights, optimizer moments, tracking tensors, RNG states) with the step, data
position and settings as JSON in its metadata. One file renamed into place, so a kill -9 leaves either the previous
checkpoint or the new one, never half of each."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..io import GlassworkError, save_tensors


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    save_tensors(path, tensors, metadata={"glasswork_checkpoint": json.dumps(meta)})


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["glasswork_checkpoint"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise GlassworkError(f"{path}: checkpoint not found") from None
    except (KeyError, json.JSONDecodeError) as e:
        raise GlassworkError(f"{path}: not a glasswork checkpoint (metadata field 'glasswork_checkpoint': {e})") from None
    except Exception as e:
        raise GlassworkError(f"{path}: checkpoint is corrupt or truncated ({e})") from None
    return tensors, meta


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
