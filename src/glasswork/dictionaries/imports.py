"""Dictionaries other tools wrote, read into glasswork's own (`import_folder(path)`, CLI `glasswork import`). The
layout is recognized from the files; each import records where it came from (cfg.training["imported_from"]).

  saelens              cfg.json + sae_weights.safetensors                              (formats.import_saelens)
  circuit-tracer       config.yaml + layer_N.safetensors | W_enc_N / W_dec_N            (formats.read_circuit_tracer)
  sparsify             cfg.json + sae.safetensors, one folder per hookpoint (EleutherAI sparsify: SAEs and
                       transcoders, with skip). encoder.weight [F, d] (x @ W.T), encoder.bias, W_dec [F, d], b_dec,
                       W_skip [d, d] (x @ W_skip.T); codes topk(relu(x' @ W_enc.T + b_enc)) with x' = x - b_dec for an
                       SAE and x' = x for a transcoder (sparsify's SparseCoder.encode).
                       Hookpoints layers.N.mlp (a transcoder at MLP N) or layers.N (the residual after block N).
  dictionary-learning  ae.pt + config.json (saprmarks/dictionary_learning): AutoEncoder (relu(encoder(x - bias)),
                       decoder(f) + bias), AutoEncoderTopK / BatchTopKSAE (relu then top-k of encoder(x - b_dec); BatchTopK
                       at inference keeps codes above its scalar threshold), JumpReluAutoEncoder (W_enc [d, F], b_enc,
                       W_dec [F, d], b_dec, threshold; relu(z * (z > threshold)), no b_dec on the input). ae.pt is a
                       pickle: read with torch.load(weights_only=True), so anything but tensors is refused.
  gemma-scope          params.npz: W_enc [d, F], W_dec [F, d], b_enc, b_dec, threshold: JumpReLU, no b_dec on the input.

A source may also be `hf:ORG/REPO[/PATH][@REVISION]`: a published dictionary fetched from the Hugging Face hub (only
PATH's files) into the hub's own cache, then read as above; offline (HF_HUB_OFFLINE=1) it reads that cache.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..hooks import mlp_hooks
from ..io import GlassworkError, load_tensors, read_json
from .coder import DictionaryConfig, SparseCoder

FORMATS = ("saelens", "circuit-tracer", "sparsify", "dictionary-learning", "gemma-scope")


def detect(folder: Path) -> str:
    """Which layout a folder holds, from its files."""
    if (folder / "sae_weights.safetensors").is_file() and (folder / "cfg.json").is_file():
        return "saelens"
    if (folder / "config.yaml").is_file():
        return "circuit-tracer"
    if (folder / "sae.safetensors").is_file() or any(folder.glob("*/sae.safetensors")):
        return "sparsify"
    if (folder / "ae.pt").is_file():
        return "dictionary-learning"
    if (folder / "params.npz").is_file():
        return "gemma-scope"
    present = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
    raise GlassworkError(f"{folder}: not a dictionary layout glasswork reads (found {present}); expected one of: "
                         f"SAELens (cfg.json + sae_weights.safetensors), circuit-tracer (config.yaml), sparsify "
                         f"(cfg.json + sae.safetensors per hookpoint), dictionary_learning (ae.pt + config.json), "
                         f"Gemma Scope (params.npz)")


def hub_folder(source: str) -> tuple[Path, str]:
    """(local folder, what was fetched) for `hf:ORG/REPO[/PATH][@REVISION]`, through huggingface_hub's cache."""
    m = re.fullmatch(r"hf:([\w.-]+)/([\w.-]+)((?:/[^@/]+)*)/?(?:@([\w./-]+))?", source)
    if not m:
        raise GlassworkError(f"'{source}': expected hf:ORG/REPO[/PATH][@REVISION] (e.g. hf:org/saes/layer_6)")
    repo, sub, revision = f"{m.group(1)}/{m.group(2)}", m.group(3).strip("/"), m.group(4)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    try:
        root = Path(snapshot_download(repo, revision=revision, allow_patterns=[f"{sub}/*"] if sub else None))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GlassworkError(f"{source}: could not fetch {repo}{'@' + revision if revision else ''} from the hub "
                             f"or its cache ({first})") from None
    folder = root / sub if sub else root
    if not folder.is_dir():
        raise GlassworkError(f"{source}: the repository {repo} has no folder '{sub}'")
    return folder, f"{repo}{'/' + sub if sub else ''}{'@' + revision if revision else ''}"


def import_folder(folder: str | Path, fmt: str = "auto", model: str = ""):
    """A SparseCoder, a CrossLayerTranscoder or {layer: SparseCoder} from another tool's folder (or `hf:ORG/REPO...`);
    returns (dictionary, format)."""
    from .formats import import_saelens, read_circuit_tracer
    hub = None
    if str(folder).startswith("hf:"):
        folder, hub = hub_folder(str(folder))
    folder = Path(folder)
    if not folder.exists():
        raise GlassworkError(f"{folder}: folder not found")
    fmt = detect(folder) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise GlassworkError(f"--format: expected auto or one of {', '.join(FORMATS)} (got '{fmt}')")
    readers = {"saelens": import_saelens, "circuit-tracer": lambda f: read_circuit_tracer(f, model),
               "sparsify": lambda f: import_sparsify(f, model), "dictionary-learning": import_dictionary_learning,
               "gemma-scope": import_gemma_scope}
    got = readers[fmt](folder)
    for d in (got.values() if isinstance(got, dict) else [got]):
        source = {"format": fmt, "path": str(folder.resolve())} | ({"hub": hub} if hub else {})
        d.cfg.training = {**d.cfg.training, "imported_from": source}
        _check_finite(d, folder)
    return got, fmt


def _check_finite(d, folder: Path) -> None:
    for name, t in d.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise GlassworkError(f"{folder}: tensor '{name}' holds NaN or infinite values: refusing a broken dictionary")


def _expect(weights: dict, shapes: dict, where: Path) -> None:
    """Every tensor named with the shape the config implies, or an error naming the file and the tensor."""
    for name, shape in shapes.items():
        if name not in weights:
            raise GlassworkError(f"{where}: missing tensor '{name}' (has {sorted(weights)[:8]})")
        if tuple(weights[name].shape) != tuple(shape):
            raise GlassworkError(f"{where}: '{name}' has shape {list(weights[name].shape)}, expected {list(shape)}")


def _fill(d: SparseCoder, tensors: dict) -> SparseCoder:
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(d, name).copy_(value.float())
    return d.requires_grad_(False)


# ---------------------------------------------------------------------------------------------------- sparsify

def _sparsify_hook(name: str) -> tuple[int | None, str, str, bool]:
    """(layer, hook_in, hook_out, transcoder?) for a sparsify hookpoint name."""
    m = re.fullmatch(r"(?:.*\.)?layers\.(\d+)(\.mlp)?", name)
    if not m:
        return None, name, name, False
    layer = int(m.group(1))
    if m.group(2):
        return layer, *mlp_hooks(layer), True
    return layer, f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.hook_resid_post", False


def import_sparsify(folder: Path, model: str = ""):
    """One sparsify hookpoint folder (a SparseCoder), or a run folder of several ({layer: coder} for transcoders)."""
    if (folder / "sae.safetensors").is_file():
        return _sparsify_one(folder, folder.name, model)
    subs = sorted(p.parent for p in folder.glob("*/sae.safetensors"))
    coders = [_sparsify_one(s, s.name, model) for s in subs]
    if all(c.cfg.kind == "transcoder" and c.cfg.layer is not None for c in coders):
        return {c.cfg.layer: c for c in coders}
    if len(coders) == 1:
        return coders[0]
    raise GlassworkError(f"{folder}: {len(coders)} sparsify SAEs in one run; import each hookpoint folder on its own")


def _sparsify_one(sub: Path, hookpoint: str, model: str) -> SparseCoder:
    cfg = read_json(sub / "cfg.json", "sparsify config")
    weights = load_tensors(sub / "sae.safetensors", "sparsify weights")
    if "encoder.weight" not in weights:
        raise GlassworkError(f"{sub / 'sae.safetensors'}: no 'encoder.weight' (not a sparsify checkpoint)")
    d_sae, d_in = weights["encoder.weight"].shape
    if cfg.get("activation", "topk") != "topk" or not isinstance(cfg.get("k"), int) or not 0 < cfg["k"] <= d_sae:
        raise GlassworkError(f"{sub / 'cfg.json'}: expected activation 'topk' and an integer k in 1..{d_sae} "
                             f"(got {cfg.get('activation')!r}, k={cfg.get('k')!r})")
    if cfg.get("d_in") not in (None, d_in):
        raise GlassworkError(f"{sub / 'cfg.json'}: d_in is {cfg['d_in']} but encoder.weight is [{d_sae}, {d_in}]")
    layer, hook_in, hook_out, is_tc = _sparsify_hook(hookpoint)
    transcoder = bool(cfg.get("transcode", is_tc))
    skip = "W_skip" in weights
    shapes = {"encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if skip:
        shapes["W_skip"] = (d_in, d_in)
    _expect(weights, shapes, sub / "sae.safetensors")
    d = SparseCoder(DictionaryConfig(kind="transcoder" if transcoder else "sae", d_in=d_in, d_sae=d_sae,
                                     activation="topk", k=cfg["k"], skip=skip, b_dec_in=not transcoder, layer=layer,
                                     model=model,
                                     hook_in=hook_in, hook_out=hook_out))
    tensors = {"W_enc": weights["encoder.weight"].T, "b_enc": weights["encoder.bias"], "W_dec": weights["W_dec"],
               "b_dec": weights["b_dec"]}
    if skip:
        tensors["W_skip"] = weights["W_skip"].T
    return _fill(d, tensors)


# ---------------------------------------------------------------------------------------------------- dictionary_learning

def import_dictionary_learning(folder: Path) -> SparseCoder:
    path = folder / "ae.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses any pickled object that is not a tensor or a plain container
        raise GlassworkError(f"{path}: not a plain tensor checkpoint, refused ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GlassworkError(f"{path}: expected a state dict of tensors")
    conf = read_json(folder / "config.json", "dictionary_learning config") if (folder / "config.json").exists() else {}
    trainer = conf.get("trainer", {}) if isinstance(conf.get("trainer"), dict) else {}
    cls = trainer.get("dict_class") or ("JumpReluAutoEncoder" if "W_enc" in state else
                                        "AutoEncoderTopK" if "b_dec" in state else "AutoEncoder")
    layer = trainer.get("layer") if isinstance(trainer.get("layer"), int) else None
    hook = f"blocks.{layer}.hook_resid_post" if layer is not None and "resid" in str(
        trainer.get("submodule_name", "resid")) else ""
    base = dict(kind="sae", layer=layer, model=str(trainer.get("lm_name", "")), hook_in=hook, hook_out=hook)
    if cls == "JumpReluAutoEncoder":
        d_in, d_sae = state["W_enc"].shape
        _expect(state, {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "threshold": (d_sae,)}, path)
        d = SparseCoder(DictionaryConfig(d_in=d_in, d_sae=d_sae, activation="jumprelu", b_dec_in=False, **base))
        return _fill(d, {k: state[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")} |
                     {"threshold": state["threshold"].clamp_min(0)})  # relu(z * (z > t)) = ours with t >= 0
    if "encoder.weight" not in state:
        raise GlassworkError(f"{path}: no 'encoder.weight' for dict_class '{cls}'")
    d_sae, d_in = state["encoder.weight"].shape
    bias = "bias" if cls == "AutoEncoder" else "b_dec"
    _expect(state, {"encoder.bias": (d_sae,), "decoder.weight": (d_in, d_sae), bias: (d_in,)}, path)
    tensors = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"], "W_dec": state["decoder.weight"].T,
               "b_dec": state[bias]}
    if cls == "AutoEncoder":
        return _fill(SparseCoder(DictionaryConfig(d_in=d_in, d_sae=d_sae, activation="relu", **base)), tensors)
    if cls not in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        raise GlassworkError(f"{folder / 'config.json'}: dict_class '{cls}' is not one glasswork reads (AutoEncoder, "
                             f"AutoEncoderTopK, BatchTopKSAE, MatryoshkaBatchTopKSAE, JumpReluAutoEncoder)")
    k = int(state["k"]) if "k" in state else trainer.get("k")
    if not isinstance(k, int) or not 0 < k <= d_sae:
        raise GlassworkError(f"{path}: no usable k (a 'k' tensor or trainer.k in config.json; got {k!r})")
    if cls == "AutoEncoderTopK":
        return _fill(SparseCoder(DictionaryConfig(d_in=d_in, d_sae=d_sae, activation="topk", k=k, **base)), tensors)
    if "threshold" not in state:
        raise GlassworkError(f"{path}: a {cls} needs its 'threshold' tensor (the inference threshold)")
    d = SparseCoder(DictionaryConfig(d_in=d_in, d_sae=d_sae, activation="batchtopk", k=k, **base))
    return _fill(d, tensors | {"threshold": state["threshold"].float().reshape(-1).expand(d_sae).clamp_min(0)})


# ---------------------------------------------------------------------------------------------------- Gemma Scope

def import_gemma_scope(folder: Path) -> SparseCoder:
    import numpy as np
    path = folder / "params.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    except (ValueError, OSError) as e:
        raise GlassworkError(f"{path}: not a readable params.npz ({e})") from None
    if "W_enc" not in arrays:
        raise GlassworkError(f"{path}: no 'W_enc' (has {sorted(arrays)})")
    d_in, d_sae = arrays["W_enc"].shape
    _expect(arrays, {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}, path)
    d = SparseCoder(DictionaryConfig(kind="sae", d_in=d_in, d_sae=d_sae, activation="jumprelu", b_dec_in=False))
    return _fill(d, {k: arrays[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")} |
                 {"threshold": arrays["threshold"].clamp_min(0)})

