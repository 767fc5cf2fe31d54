"""Native format: a folder with config.json (DictionaryConfig) and weights.safetensors. A set of dictionaries (e.g. the
transcoders of every layer) is a folder with set.json listing member folders by name."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import __version__
from ..io import GlassworkError, load_tensors, read_json, require_keys, save_tensors, write_json
from .clt import CrossLayerTranscoder
from .coder import DictionaryConfig, SparseCoder

Dictionary = SparseCoder | CrossLayerTranscoder


def build(cfg: DictionaryConfig) -> Dictionary:
    return CrossLayerTranscoder(cfg) if cfg.kind == "clt" else SparseCoder(cfg)


def save(dictionary: Dictionary, folder: str | Path) -> Path:
    """Write weights then config (both atomic); config.json last, so a folder with it is complete."""
    folder = Path(folder)
    dictionary.cfg.glasswork_version = __version__
    save_tensors(folder / "weights.safetensors", {k: v.float() for k, v in dictionary.state_dict().items()})
    write_json(folder / "config.json", dictionary.cfg.to_dict())
    return folder


def load(folder: str | Path, device: str | torch.device = "cpu") -> Dictionary:
    """Load one dictionary folder (config.json + weights.safetensors)."""
    folder = Path(folder)
    if (folder / "set.json").exists():
        raise GlassworkError(f"{folder} holds a set of dictionaries: use load_set")
    cfg = DictionaryConfig.from_dict(read_json(folder / "config.json", "dictionary config"), str(folder / "config.json"))
    dictionary = build(cfg)
    weights = load_tensors(folder / "weights.safetensors", "dictionary weights")
    expected = dictionary.state_dict()
    for name, tensor in expected.items():
        if name not in weights:
            raise GlassworkError(f"{folder / 'weights.safetensors'}: missing tensor '{name}'")
        if weights[name].shape != tensor.shape:
            raise GlassworkError(f"{folder / 'weights.safetensors'}: tensor '{name}' has shape "
                                 f"{list(weights[name].shape)}, config.json implies {list(tensor.shape)}")
        if weights[name].is_floating_point() and not torch.isfinite(weights[name]).all():
            bad = int((~torch.isfinite(weights[name])).sum())
            raise GlassworkError(f"{folder / 'weights.safetensors'}: tensor '{name}' has {bad} NaN or infinite "
                                 f"values: refusing a broken dictionary")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise GlassworkError(f"{folder / 'weights.safetensors'}: unexpected tensors {extra} for config {cfg.kind}/{cfg.activation}")
    dictionary.load_state_dict(weights)
    return dictionary.to(device)


def save_set(dictionaries: dict[str, Dictionary], folder: str | Path, **info) -> Path:
    """Save several dictionaries (keyed by a name such as 'layer_07') under one folder with a set.json index."""
    folder = Path(folder)
    for name, d in dictionaries.items():
        save(d, folder / name)
    members = {name: {"kind": d.cfg.kind, "layer": d.cfg.layer, "hook_in": d.cfg.hook_in, "hook_out": d.cfg.hook_out}
               for name, d in dictionaries.items()}
    model = next(iter(dictionaries.values())).cfg.model if dictionaries else ""
    write_json(folder / "set.json", {"model": model, "members": members, "glasswork_version": __version__, **info})
    return folder


def load_set(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, Dictionary]:
    folder = Path(folder)
    index = read_json(folder / "set.json", "dictionary set index")
    require_keys(index, ["members"], folder / "set.json", "dictionary set index")
    return {name: load(folder / name, device) for name in index["members"]}


def load_transcoders(folder: str | Path, device: str | torch.device = "cpu") -> dict[int, SparseCoder]:
    """The per-layer transcoders of a set, keyed by layer."""
    out = {}
    for name, d in load_set(folder, device).items():
        if d.cfg.kind != "transcoder" or d.cfg.layer is None:
            raise GlassworkError(f"{Path(folder) / name}: expected a transcoder with a layer, got kind '{d.cfg.kind}'")
        out[d.cfg.layer] = d
    return dict(sorted(out.items()))
