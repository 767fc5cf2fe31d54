"""Native format: a folder with config.json (DictionaryConfig) and weights.safetensors. A set of dictionaries (e.g. the
transcoders of every layer) is a folder with set.json listing member folders by name (SET_INDEX; `is_set`,
`set_members`, `set_member(folder, layer)` are the one place that reads it)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..version import __version__
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


SET_INDEX = "set.json"  # a set folder's index: {"model", "members": {name: {kind, layer, hook_in, hook_out}}, ...}


def is_set(folder: str | Path) -> bool:
    """Whether `folder` is a set of dictionaries (one member folder per name in its set.json)."""
    return (Path(folder) / SET_INDEX).is_file()


def set_members(folder: str | Path) -> dict[str, dict]:
    """{member folder name: {kind, layer, hook_in, hook_out}} of a set folder."""
    index = read_json(Path(folder) / SET_INDEX, "dictionary set index")
    require_keys(index, ["members"], Path(folder) / SET_INDEX, "dictionary set index")
    return index["members"]


def set_member(folder: str | Path, layer: int) -> Path:
    """The member folder of a set that holds `layer`'s dictionary."""
    for name, m in set_members(folder).items():
        if m.get("layer") == layer:
            return Path(folder) / name
    raise GlassworkError(f"{Path(folder) / SET_INDEX}: no member for layer {layer}")


def layer_folder(folder: str | Path, layer: int) -> Path:
    """The one lookup of "the dictionary for layer L": the member of a set folder whose layer it is, or the folder
    itself when it holds one dictionary (whose layer, if it has one, must be L)."""
    folder = Path(folder)
    if is_set(folder):
        return set_member(folder, layer)
    config = folder / "config.json"
    recorded = read_json(config, "dictionary config").get("layer") if config.is_file() else None
    if recorded is not None and recorded != layer:
        raise GlassworkError(f"{config}: this dictionary is for layer {recorded}, not layer {layer}")
    return folder


def load(folder: str | Path, device: str | torch.device = "cpu") -> Dictionary:
    """Load one dictionary folder (config.json + weights.safetensors)."""
    folder = Path(folder)
    if is_set(folder):
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
    write_json(folder / SET_INDEX, {"model": model, "members": members, "glasswork_version": __version__, **info})
    return folder


def load_set(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, Dictionary]:
    folder = Path(folder)
    return {name: load(folder / name, device) for name in set_members(folder)}


def load_transcoders(folder: str | Path, device: str | torch.device = "cpu") -> dict[int, SparseCoder]:
    """The per-layer transcoders of a set, keyed by layer."""
    out = {}
    for name, d in load_set(folder, device).items():
        if d.cfg.kind != "transcoder" or d.cfg.layer is None:
            raise GlassworkError(f"{Path(folder) / name}: expected a transcoder with a layer, got kind '{d.cfg.kind}'")
        out[d.cfg.layer] = d
    return dict(sorted(out.items()))


def load_coders(folder: str | Path) -> dict[int, SparseCoder] | CrossLayerTranscoder:
    """What attribution and interventions read: a set of per-layer transcoders ({layer: SparseCoder}), one
    transcoder (as a one-layer set) or one cross-layer transcoder."""
    folder = Path(folder)
    if not folder.exists():
        raise GlassworkError(f"{folder}: dictionary folder not found")
    if is_set(folder):
        return load_transcoders(folder)
    d = load(folder)
    if d.cfg.kind == "clt":
        return d
    if d.cfg.kind == "transcoder" and d.cfg.layer is not None:
        return {d.cfg.layer: d}
    raise GlassworkError(f"{folder}: expected transcoders (a set folder) or a cross-layer transcoder, got kind "
                         f"'{d.cfg.kind}'")
