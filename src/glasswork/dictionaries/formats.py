"""Formats other tools use.

SAELens (6.x) folder: cfg.json (architecture standard | topk | jumprelu, d_in, d_sae, apply_b_dec_to_input, k,
metadata.hook_name, metadata.model_name, ...) + sae_weights.safetensors (W_enc [d_in, d_sae], W_dec [d_sae, d_in],
b_enc, b_dec, threshold). Import and export; round trips are exact. SAELens's JumpReLU is relu(z) * (z > theta),
which equals ours (z * (z > theta)) with theta clamped at 0, so import clamps and export refuses negative thresholds.

circuit-tracer: config.yaml + safetensors per layer. Transcoder set: layer_{i}.safetensors with W_enc [F, d]
(it computes x @ W_enc.T), W_dec [F, d], b_enc, b_dec, optional W_skip [d, d] (x @ W_skip.T) and
activation_function.threshold (JumpReLU) or k (TopK). CLT: W_enc_{i}.safetensors (W_enc_{i} [F, d], b_enc_{i},
b_dec_{i}, threshold_{i}) + W_dec_{i}.safetensors (W_dec_{i} [F, L - i, d]). Variant written for TopK: circuit-
tracer's TopK keeps the raw top-k values WITHOUT a ReLU, ours zeroes negative ones among them; the two agree
whenever a token's k-th largest pre-activation is positive (the summary reports the variant)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..hooks import mlp_hooks
from ..io import GlassworkError, load_tensors, read_json, save_tensors, write_json, write_text
from .clt import CrossLayerTranscoder
from .coder import DictionaryConfig, SparseCoder

SAELENS_ARCH = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}
FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


def export_saelens(sae: SparseCoder, folder: str | Path) -> Path:
    """Write an SAE as a SAELens folder (batchtopk is written as jumprelu with its inference threshold)."""
    folder = Path(folder)
    cfg = sae.cfg
    if cfg.kind != "sae":
        raise GlassworkError(f"SAELens export takes SAEs; this dictionary is a {cfg.kind} (use circuit-tracer format)")
    arch = SAELENS_ARCH[cfg.activation]
    tensors = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    if arch == "jumprelu":
        if (sae.threshold < 0).any():
            raise GlassworkError("SAELens applies ReLU before its JumpReLU threshold: this SAE has negative thresholds "
                                 "and would not reconstruct the same there")
        tensors["threshold"] = sae.threshold
    out = {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": cfg.b_dec_in, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"hook_name": cfg.hook_in, "model_name": cfg.model, "glasswork_version": cfg.glasswork_version},
           "architecture": arch}
    if arch == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    save_tensors(folder / "sae_weights.safetensors", {k: v.detach().float() for k, v in tensors.items()})
    write_json(folder / "cfg.json", out)
    return folder


def import_saelens(folder: str | Path) -> SparseCoder:
    """Read a SAELens folder (architectures standard, topk, jumprelu; no runtime normalization)."""
    folder = Path(folder)
    path = folder / "cfg.json"
    raw = read_json(path, "SAELens config")
    arch = raw.get("architecture", "standard")
    if arch not in FROM_SAELENS:
        raise GlassworkError(f"{path}: field 'architecture' is '{arch}'; glasswork reads {', '.join(FROM_SAELENS)}")
    for key, ok in (("normalize_activations", ("none", None)), ("reshape_activations", ("none", None)),
                    ("rescale_acts_by_decoder_norm", (False, None))):
        if raw.get(key) not in ok:
            raise GlassworkError(f"{path}: field '{key}' is {raw.get(key)!r}; only {ok[0]!r} is supported")
    for key in ("d_in", "d_sae"):
        if not isinstance(raw.get(key), int):
            raise GlassworkError(f"{path}: field '{key}' must be an integer (got {raw.get(key)!r})")
    meta = raw.get("metadata") or {}
    hook = meta.get("hook_name") or raw.get("hook_name") or ""
    model = meta.get("model_name") or raw.get("model_name") or ""
    act = FROM_SAELENS[arch]
    if act in ("topk", "batchtopk") and (not isinstance(raw.get("k"), int) or isinstance(raw.get("k"), bool)
                                        or not 0 < raw["k"] <= raw["d_sae"]):
        raise GlassworkError(f"{path}: field 'k' is {raw.get('k')!r}; a {arch} SAE needs an integer k in "
                             f"1..d_sae={raw['d_sae']}")
    cfg = DictionaryConfig(kind="sae", d_in=raw["d_in"], d_sae=raw["d_sae"], activation=act,
                           k=int(raw.get("k") or 1), b_dec_in=bool(raw.get("apply_b_dec_to_input", True)),
                           model=model, hook_in=hook, hook_out=hook)
    sae = SparseCoder(cfg)
    weights = load_tensors(folder / "sae_weights.safetensors", "SAELens weights")
    want = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in), "b_enc": (cfg.d_sae,), "b_dec": (cfg.d_in,)}
    if act == "jumprelu":
        want["threshold"] = (cfg.d_sae,)
    for name, shape in want.items():
        if name not in weights:
            raise GlassworkError(f"{folder / 'sae_weights.safetensors'}: missing tensor '{name}'")
        if tuple(weights[name].shape) != shape:
            raise GlassworkError(f"{folder / 'sae_weights.safetensors'}: '{name}' has shape {list(weights[name].shape)}, "
                                 f"cfg.json implies {list(shape)}")
        if not torch.isfinite(weights[name].float()).all():
            raise GlassworkError(f"{folder / 'sae_weights.safetensors'}: '{name}' holds NaN or infinite values: "
                                 f"refusing a broken SAE")
    with torch.no_grad():
        for name in want:
            value = weights[name].float()
            getattr(sae, name).copy_(value.clamp_min(0) if name == "threshold" else value)
    return sae


def _yaml(obj: dict) -> str:
    """The few YAML shapes config.yaml needs (scalars and lists of strings), written without a YAML dependency."""
    lines = []
    for key, value in obj.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"  - {json.dumps(v)}" for v in value)
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def export_circuit_tracer(dictionaries, folder: str | Path, scan: str = "") -> dict:
    """Write a transcoder set ({layer: SparseCoder}, every layer from 0) or a CLT in circuit-tracer's format.
    Returns a summary naming the activation variant written."""
    folder = Path(folder)
    if isinstance(dictionaries, CrossLayerTranscoder):
        return _export_clt(dictionaries, folder, scan)
    if not isinstance(dictionaries, dict):
        kind = getattr(getattr(dictionaries, "cfg", None), "kind", type(dictionaries).__name__)
        raise GlassworkError(f"circuit-tracer export takes a transcoder set or a CLT, not one {kind} (export an SAE "
                             f"with --format saelens)")
    tcs = dict(sorted(dictionaries.items()))
    if sorted(tcs) != list(range(len(tcs))):
        raise GlassworkError(f"circuit-tracer needs a transcoder for every layer 0..{max(tcs)} (got layers {sorted(tcs)})")
    acts = {t.cfg.activation for t in tcs.values()}
    if len(acts) != 1 or any(t.cfg.kind != "transcoder" for t in tcs.values()):
        raise GlassworkError(f"circuit-tracer export takes transcoders with one activation (got {sorted(acts)})")
    act = acts.pop()
    if act == "batchtopk":
        act = "jumprelu"  # at inference a BatchTopK transcoder is a JumpReLU with its estimated threshold
    files = []
    for layer, t in tcs.items():
        tensors = {"W_enc": t.W_enc.T, "W_dec": t.W_dec, "b_enc": t.b_enc, "b_dec": t.b_dec}
        if t.W_skip is not None:
            tensors["W_skip"] = t.W_skip.T
        if act == "jumprelu":
            tensors["activation_function.threshold"] = t.threshold
        name = f"layer_{layer}.safetensors"
        save_tensors(folder / name, {k: v.detach().float() if v.is_floating_point() else v for k, v in tensors.items()})
        files.append(name)
    first = tcs[0].cfg
    config = {"model_kind": "transcoder_set", "model_name": first.model, "scan": scan or f"glasswork-{first.model}",
              "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out", "transcoders": files}
    variant = {"relu": "relu", "jumprelu": "jump_relu (activation_function.threshold)",
               "topk": "topk: circuit-tracer keeps raw top-k values (no ReLU)"}[act]
    if act == "topk":
        config.update(activation="topk", k=first.k)
    elif act == "relu":
        config.update(activation="relu")
    write_text(folder / "config.yaml", _yaml(config))
    return {"folder": str(folder), "format": "circuit-tracer", "model_kind": "transcoder_set", "layers": len(files),
            "activation_variant": variant}


def _export_clt(clt: CrossLayerTranscoder, folder: Path, scan: str) -> dict:
    cfg = clt.cfg
    if cfg.activation not in ("relu", "jumprelu", "batchtopk"):
        raise GlassworkError(f"circuit-tracer CLTs are ReLU or JumpReLU; this CLT is {cfg.activation}")
    if clt.W_skip is not None:  # its load_clt reads W_enc_i / W_dec_i files only: a skip would be dropped silently
        raise GlassworkError("circuit-tracer's CLT files have no place for a skip (its load_clt reads W_enc_i and W_dec_i "
                             "only); this CLT has one, so the export would not reproduce it")
    L, files = cfg.n_layers, []
    for i in range(L):
        enc = {f"W_enc_{i}": clt.W_enc[i].T, f"b_enc_{i}": clt.b_enc[i], f"b_dec_{i}": clt.b_dec[i]}
        if cfg.activation != "relu":
            enc[f"threshold_{i}"] = clt.threshold[i]
        w = clt.W_dec[i]  # [F, n_i, d]; a windowed CLT writes zeros beyond its window
        full = torch.zeros(w.shape[0], L - i, w.shape[2])
        full[:, :w.shape[1]] = w.detach()
        save_tensors(folder / f"W_enc_{i}.safetensors", {k: v.detach().float() for k, v in enc.items()})
        save_tensors(folder / f"W_dec_{i}.safetensors", {f"W_dec_{i}": full})
        files += [f"W_enc_{i}.safetensors", f"W_dec_{i}.safetensors"]
    config = {"model_kind": "cross_layer_transcoder", "model_name": cfg.model, "scan": scan or f"glasswork-{cfg.model}-clt",
              "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out", "transcoders": files,
              "activation": "relu" if cfg.activation == "relu" else "jump_relu"}
    write_text(folder / "config.yaml", _yaml(config))
    return {"folder": str(folder), "format": "circuit-tracer", "model_kind": "cross_layer_transcoder", "layers": L,
            "activation_variant": config["activation"]}


def read_circuit_tracer(folder: str | Path, model: str = "") -> dict | CrossLayerTranscoder:
    """Read back what export_circuit_tracer wrote ({layer: SparseCoder} or a CLT): for round-trip checks and reuse."""
    folder = Path(folder)
    text = (folder / "config.yaml").read_text() if (folder / "config.yaml").exists() else None
    if text is None:
        raise GlassworkError(f"{folder / 'config.yaml'}: circuit-tracer config not found")
    conf, key = {}, None
    for line in text.splitlines():
        if line.startswith("  - "):
            conf[key].append(json.loads(line[4:]))
        elif ":" in line:
            key, value = line.split(":", 1)
            conf[key] = json.loads(value) if value.strip() else []
    if conf.get("model_kind") == "cross_layer_transcoder":
        encs = [load_tensors(folder / f"W_enc_{i}.safetensors") for i in range(len(conf["transcoders"]) // 2)]
        L = len(encs)
        F, d = encs[0]["W_enc_0"].shape
        act = "relu" if conf.get("activation") == "relu" else "jumprelu"
        clt = CrossLayerTranscoder(DictionaryConfig(kind="clt", d_in=d, d_sae=F, n_layers=L, activation=act,
                                                    b_dec_in=False, model=conf.get("model_name", model)))
        with torch.no_grad():
            for i, e in enumerate(encs):
                clt.W_enc[i].copy_(e[f"W_enc_{i}"].T)
                clt.b_enc[i].copy_(e[f"b_enc_{i}"])
                clt.b_dec[i].copy_(e[f"b_dec_{i}"])
                if act == "jumprelu":
                    clt.threshold[i].copy_(e[f"threshold_{i}"])
                clt.W_dec[i].copy_(load_tensors(folder / f"W_dec_{i}.safetensors")[f"W_dec_{i}"])
        return clt
    out = {}
    for layer, name in enumerate(conf["transcoders"]):
        w = load_tensors(folder / name)
        F, d = w["W_enc"].shape
        # TopK's k is a config.yaml field (circuit-tracer's loader refuses an extra tensor); older exports had a tensor
        topk_k = int(w["k"]) if "k" in w else int(conf["k"]) if conf.get("activation") == "topk" else 0
        act = "topk" if topk_k else "jumprelu" if "activation_function.threshold" in w else "relu"
        cfg = DictionaryConfig(kind="transcoder", d_in=d, d_sae=F, d_out=w["W_dec"].shape[1], activation=act,
                               k=topk_k or 1, skip="W_skip" in w, b_dec_in=False, layer=layer,
                               hook_in=mlp_hooks(layer)[0], hook_out=mlp_hooks(layer)[1],
                               model=conf.get("model_name", model))
        t = SparseCoder(cfg)
        with torch.no_grad():
            t.W_enc.copy_(w["W_enc"].T)
            t.W_dec.copy_(w["W_dec"])
            t.b_enc.copy_(w["b_enc"])
            t.b_dec.copy_(w["b_dec"])
            if t.W_skip is not None:
                t.W_skip.copy_(w["W_skip"].T)
            if act == "jumprelu":
                t.threshold.copy_(w["activation_function.threshold"])
        out[layer] = t
    return out
