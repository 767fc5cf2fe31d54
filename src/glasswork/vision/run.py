"""`glasswork vision`: the whole vision set from nothing to figures and pages, on the default image model (the
CIFAR-10 CNN) and the bundled images, cached like the text demo: each stage's record lands in OUT/stages/NAME.json
and a rerun skips what is done.

Stages: model (convert once) -> filters -> tuning (early and middle layer) -> units (top patches and the
polysemanticity score) -> sae (a TopK SAE on the middle layer) -> monosemanticity (the same score for units and
features) -> visualize -> steer -> index (the SQLite feature index the web app's /vision page reads)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..evals import fvu
from ..io import GlassworkError, home, load_tensors, new_output, read_json, save_tensors, write_json
from . import classic, figures
from .dictionary import clamped_probs, load_image_sae, position_rows, train_image_sae
from .images import patches, small_images, source_images
from .index import outline, png, shrink, write_index
from .keras_h5 import load_cifar_cnn
from .models import capture
from .featurevis import visualize


@dataclass
class VisionConfig:
    early_hook: str = "conv2d_1"
    """An early layer for orientation tuning (receptive field 5 px)."""
    hook: str = "conv2d_3"
    """The middle layer: tuning, top patches, the SAE (receptive field 14 px, 10 x 10 positions, 128 channels)."""
    train_per_source: int = 150
    """Training patches per image source (23 sources)."""
    heldout_per_source: int = 60
    """Held-out patches per source (another seed): every score and page is computed on these."""
    d_sae: int = 1024
    """SAE latents (8x the layer's 128 channels)."""
    k: int = 8
    """Active latents per position."""
    epochs: int = 4
    """Passes over the training positions."""
    top_k: int = 16
    """Top patches per unit / feature for the polysemanticity score and the pages."""
    vis_units: int = 8
    """Units and features visualized by optimization (each)."""
    vis_steps: int = 256
    """Optimization steps per visualization."""
    steer_class: str = "automobile"
    """The class the steering stage tries to raise by clamping one feature."""
    seed: int = 0


def vision_folder(out: str | Path | None = None) -> Path:
    return Path(out) if out else home() / "vision-demo"


def run_vision(out: str | Path | None = None, cfg: VisionConfig | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Run (or resume) every stage into `out` (default $GLASSWORK_HOME/vision-demo); returns {stage: record}."""
    cfg = cfg or VisionConfig()
    out = vision_folder(out)
    if (out / "config.json").exists() and read_json(out / "config.json", "vision run config") != asdict(cfg):
        raise GlassworkError(f"{out}: holds a vision run with other settings ({out / 'config.json'}); rerun with "
                             "--fresh to start over, or choose another --out")
    t0 = time.time()
    model = load_cifar_cnn()
    for hook in (cfg.hook, cfg.early_hook):  # checked before anything is written
        if hook not in model.points or "conv" not in hook:
            raise GlassworkError(f"vision: hook '{hook}' is not a conv layer of {model.name} (conv layers: "
                                 f"{', '.join(p for p in model.points if p.startswith('conv') and '.pre' not in p)})")
    if cfg.steer_class not in model.classes:
        raise GlassworkError(f"vision: steer_class '{cfg.steer_class}' is not one of {model.name}'s classes "
                             f"({', '.join(model.classes)})")
    with new_output(out, keep=lambda f: (f / "stages").is_dir()):
        (out / "img").mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", asdict(cfg))
        return _run_stages(model, cfg, out, log, t0)


def _run_stages(model, cfg: VisionConfig, out: Path, log: Callable[[str], None], t0: float) -> dict:
    log(f"image model {model.name}: {len(model.classes)} classes, {model.image_size[0]}x{model.image_size[1]} "
        f"input, hook points {', '.join(p for p in model.hook_points() if '.pre' not in p)} "
        f"(loaded in {time.time() - t0:.1f} s)")
    train = patches(cfg.train_per_source, model.image_size, seed=cfg.seed)
    held = patches(cfg.heldout_per_source, model.image_size, seed=cfg.seed + 1)
    log(f"images: {len(train)} training and {len(held)} held-out patches from {len(train.sources)} sources")
    state = {"model": model, "train": train, "held": held, "cfg": cfg, "out": out}
    results = {}
    for name, fn in STAGES:
        path = out / "stages" / f"{name}.json"
        if path.exists():
            results[name] = read_json(path, f"vision stage record '{name}'")
            log(f"[{name}] done before, skipped")
            continue
        t = time.time()
        log(f"[{name}] ...")
        rec = fn(state)
        rec["seconds"] = round(time.time() - t, 1)
        write_json(path, rec)
        results[name] = rec
        log(f"[{name}] done in {rec['seconds']} s: {summary(name, rec)}")
    return results


def summary(name: str, rec: dict) -> str:
    if name == "filters":
        return ", ".join(f"{k} {v:.0%}" for k, v in rec["fractions"].items())
    if name == "tuning":
        return "; ".join(f"{h}: {v['edge_detectors']} edge and {v['curve_detectors']} curve units of {v['units']}"
                         for h, v in rec["layers"].items())
    if name == "units":
        return f"mean source entropy {rec['entropy_mean']:.2f} bits; most polysemantic unit {rec['most_polysemantic']}"
    if name == "sae":
        return f"held-out FVU {rec['heldout_fvu']:.3f}, {rec['alive']} features alive of {rec['d_sae']}"
    if name == "monosemanticity":
        return "; ".join(f"{k if k == 'weighted' else 'top-' + k}: units {v['units']:.2f} vs features "
                         f"{v['features']:.2f} bits" for k, v in rec["entropy"].items())
    if name == "visualize":
        return f"{rec['beats_corpus']} of {rec['n']} visualizations beat every held-out patch"
    if name == "steer":
        return (f"feature {rec['feature']} clamped: p({rec['class']}) {rec['p_before']:.3f} -> {rec['p_after']:.3f} "
                f"on {rec['n_images']} held-out images (8 random features clamped alike: {rec['control_p_mean']:.3f})")
    return rec.get("path", "")


def _filters(s: dict) -> dict:
    conv = classic.first_conv(s["model"])
    kinds = classic.classify_filters(conv.weight)
    path = figures.filters(conv.weight.detach(), kinds.kinds, kinds.fractions(), s["out"] / "img" / "filters.png")
    return {"fractions": kinds.fractions(), "kinds": kinds.kinds, "path": str(path)}


def _tuning(s: dict) -> dict:
    model, out, layers = s["model"], s["out"], {}
    for hook in (s["cfg"].early_hook, s["cfg"].hook):
        t = classic.tuning(model, hook)
        det = t.detectors()
        edge = sorted(det["edge"], key=lambda u: -float(t.edge_osi[u]))[:8]
        if edge:
            figures.tuning_curves(t.angles, {"edge": t.edge[edge], "bar": t.bar[edge]},
                                  f"{hook}: the sharpest consistent edge units {edge}", out / "img" / f"tuning-{hook}.png")
        curve = sorted(det["curve"], key=lambda u: -float(t.curvature[u]))[:4]
        if curve:
            figures.tuning_curves(t.angles, {f"arc r={r:g}": v[curve] for r, v in t.curve.items()},
                                  f"{hook}: curve units {curve} (arcs of radius r vs straight segments)",
                                  out / "img" / f"curves-{hook}.png")
        layers[hook] = {"units": t.edge.shape[0], "edge_detectors": len(det["edge"]), "curve_detectors": len(det["curve"]),
                        "edge_units": det["edge"], "curve_units": det["curve"], "osi_mean": float(t.edge_osi.mean()),
                        "curvature": [round(float(x), 3) for x in t.curvature]}
    angles = torch.arange(8) * math.pi / 4
    size = model.image_size
    figures.stimuli({"edges": classic.edges(size, angles), "bars": classic.bars(size, angles),
                     "arcs r=5": classic.curves(size, angles, 5.0), "arcs r=8": classic.curves(size, angles, 8.0)},
                    out / "img" / "stimuli.png")
    return {"layers": layers}


def _once(s: dict, key: str, make: Callable[[], object]):
    """What several stages read (the held-out maxima, the SAE, receptive fields), made once per run in its state."""
    if key not in s:
        s[key] = make()
    return s[key]


def _maxima(s: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The units' held-out maxima over positions and where: ([n, units], [n, units])."""
    return _once(s, "unit_maxima", lambda: classic.unit_maxima(s["model"], s["cfg"].hook, s["held"].pixels))


def _sae_of(s: dict):
    return _once(s, "sae_loaded", lambda: load_image_sae(s["out"] / "sae", s["model"]))


def _feature_maxima(s: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The same for the SAE's features: ([n, d_sae], [n, d_sae])."""
    return _once(s, "feature_maxima", lambda: classic.unit_maxima(s["model"], s["cfg"].hook, s["held"].pixels,
                                                                  encode=_sae_of(s).encode))


def _map_width(s: dict) -> int:
    hook = s["cfg"].hook
    return _once(s, "map_width", lambda: capture(s["model"], s["held"].pixels[:1], [hook])[1][hook].shape[2])


def _receptive_field(s: dict, flat_position: int) -> tuple[int, int, int, int]:
    """The input box a flat position of the hook's map reads (cached per position)."""
    pos = divmod(int(flat_position), _map_width(s))
    return _once(s, f"rf{pos}", lambda: classic.receptive_field(s["model"], s["cfg"].hook, pos))


def _rows_of(s: dict, ids: list[int], maxima: torch.Tensor, where: torch.Tensor, caption) -> list:
    """Figure rows: each unit's top patches with the receptive field of its best position outlined."""
    held = s["held"]
    rows = []
    for u in ids:
        top = classic.top_patches(maxima[:, [u]], 8)[0].tolist()
        imgs = [outline(held.pixels[p], _receptive_field(s, where[p, u]), scale=3) for p in top]
        rows.append((caption(u), imgs, [held.sources[int(held.source[p])][:10] for p in top]))
    return rows


def _units(s: dict) -> dict:
    held, cfg = s["held"], s["cfg"]
    mx, where = _maxima(s)
    ent = classic.source_entropy(classic.top_patches(mx, cfg.top_k), held.source, len(held.sources))
    order = ent.argsort(descending=True).tolist()
    poly, mono = order[:3], order[-3:]
    figures.patch_grid(_rows_of(s, poly + mono, mx, where, lambda u: f"unit {u}\n{float(ent[u]):.2f} bits"),
                       s["out"] / "img" / "units.png",
                       f"{cfg.hook}: the 3 most and 3 least polysemantic units (top patches, source under each)")
    return {"entropy_mean": float(ent.mean()), "entropy": [round(float(x), 3) for x in ent],
            "most_polysemantic": poly, "least_polysemantic": mono}


def _sae(s: dict) -> dict:
    cfg, model = s["cfg"], s["model"]
    folder = s["out"] / "sae"
    if not (folder / "config.json").exists():
        train_image_sae(model, cfg.hook, s["train"].pixels, folder, cfg.d_sae, cfg.k, cfg.epochs, seed=cfg.seed,
                        resume=(folder / "checkpoint.safetensors").exists())
    sae = _sae_of(s)
    rows = position_rows(model, cfg.hook, s["held"].pixels)
    with torch.no_grad():
        rec = sae(rows)
        codes = sae.encode(rows)
    fires = (codes > 0).float().mean(0)
    return {"folder": str(folder), "heldout_fvu": fvu(rows, rec), "d_sae": cfg.d_sae, "k": cfg.k,
            "alive": int((fires > 0).sum()), "heldout_positions": rows.shape[0]}


def _live_features(s: dict, fx: torch.Tensor) -> torch.Tensor:
    """Features that fire on at least top_k held-out patches (so their top patches are all real firings)."""
    return ((fx > 0).sum(0) >= s["cfg"].top_k).nonzero().flatten()


def _monosemanticity(s: dict) -> dict:
    held, cfg = s["held"], s["cfg"]
    mx, _ = _maxima(s)
    fx, fwhere = _feature_maxima(s)
    live = _live_features(s, fx)
    res, series = {}, {}
    for k in (cfg.top_k, 4 * cfg.top_k):
        hu = classic.source_entropy(classic.top_patches(mx, k), held.source, len(held.sources))
        hf = classic.source_entropy(classic.top_patches(fx[:, live], k), held.source, len(held.sources))
        res[str(k)] = {"units": float(hu.mean()), "features": float(hf.mean()),
                       "units_median": float(hu.median()), "features_median": float(hf.median())}
        series[f"units, top {k}"], series[f"SAE features, top {k}"] = hu, hf
    wu = classic.weighted_source_entropy(mx, held.source, len(held.sources))
    wf = classic.weighted_source_entropy(fx[:, live], held.source, len(held.sources))
    res["weighted"] = {"units": float(wu.mean()), "features": float(wf.mean()), "units_median": float(wu.median()),
                       "features_median": float(wf.median()), "uniform": math.log2(len(held.sources))}
    top = f"top {cfg.top_k}"
    figures.entropy_histograms({f"units, {top}": series[f"units, {top}"],
                                f"SAE features, {top}": series[f"SAE features, {top}"],
                                "units, activation-weighted": wu, "SAE features, activation-weighted": wf},
                               math.log2(len(held.sources)), f"{cfg.hook}: {mx.shape[1]} units vs {len(live)} live SAE "
                               f"features on {len(held)} held-out patches", s["out"] / "img" / "monosemanticity.png")
    hf = series[f"SAE features, {top}"]
    best = live[hf.argsort()[:6]].tolist()
    figures.patch_grid(_rows_of(s, best, fx, fwhere,
                                lambda f: f"feature {f}\n{float(hf[(live == f).nonzero()[0, 0]]):.2f} bits"),
                       s["out"] / "img" / "features.png", f"{cfg.hook} SAE: the 6 most monosemantic live features")
    return {"entropy": res, "live_features": len(live), "units": mx.shape[1],
            "frequency_units": float((mx > 0).float().mean()), "frequency_features": float((fx[:, live] > 0).float().mean())}


def _visualize(s: dict) -> dict:
    cfg, model, sae = s["cfg"], s["model"], _sae_of(s)
    mx, _ = _maxima(s)
    fx, _ = _feature_maxima(s)
    live = _live_features(s, fx)
    g = torch.Generator().manual_seed(cfg.seed)
    units = torch.randperm(mx.shape[1], generator=g)[:cfg.vis_units].tolist()
    feats = live[torch.randperm(len(live), generator=g)[:cfg.vis_units]].tolist()
    rows, beats, records, vis = [], 0, [], {}
    for kind, ids in (("unit", units), ("feature", feats)):
        imgs, caps = [], []
        for u in ids:
            v = visualize(model, cfg.hook, u, steps=cfg.vis_steps, seed=cfg.seed, objective="max",
                          optimize_at=f"{cfg.hook}.pre" if kind == "unit" else None,
                          encode=sae.encode if kind == "feature" else None,
                          optimize_encode=sae.pre_acts if kind == "feature" else None)
            corpus = float((mx if kind == "unit" else fx)[:, u].max())
            beats += v.activation > corpus
            imgs.append(v.image)
            caps.append(f"{v.activation:.3g} vs {corpus:.3g}")
            records.append({"kind": kind, "id": u, "activation": v.activation, "corpus_max": corpus})
            vis[f"{kind}.{u}"] = v.image
        rows.append((f"{kind}s", imgs, caps))
    save_tensors(s["out"] / "visualizations.safetensors", vis)
    figures.patch_grid(rows, s["out"] / "img" / "visualizations.png",
                       f"{cfg.hook}: activation maximization (caption: its activation vs the best held-out patch's)")
    return {"n": len(records), "beats_corpus": int(beats), "records": records}


def _steer(s: dict) -> dict:
    cfg, model, held, sae = s["cfg"], s["model"], s["held"], _sae_of(s)
    target = model.classes.index(cfg.steer_class)
    with torch.no_grad():
        pred = model.probs(held.pixels).argmax(1)
    fx, _ = _feature_maxima(s)
    live = _live_features(s, fx)
    # candidates: features most active on patches the model calls the class (chosen on half A, measured on half B)
    g = torch.Generator().manual_seed(cfg.seed)
    others = (pred != target).nonzero().flatten()
    others = others[torch.randperm(len(others), generator=g)]
    pick, test = others[:64], others[64:192]
    is_class = pred == target
    score = fx[is_class][:, live].mean(0) / fx[~is_class][:, live].mean(0).clamp_min(1e-6)
    candidates = live[score.argsort(descending=True)[:8]].tolist()
    effect = {}
    for f in candidates:
        value = 2 * float(fx[:, f].max())
        before, after = clamped_probs(model, sae, f, value, held.pixels[pick])
        effect[f] = float((after[:, target] - before[:, target]).mean())
    best = max(effect, key=effect.get)
    value = 2 * float(fx[:, best].max())
    before, after = clamped_probs(model, sae, best, value, held.pixels[test])
    figures.steering_bars(model.classes, before[:4], after[:4], held.pixels[test[:4]],
                          f"feature {best} of the {cfg.hook} SAE clamped to {value:.0f} (2x its held-out max) at every "
                          f"position", s["out"] / "img" / "steering.png")
    zb, za = clamped_probs(model, sae, best, 0.0, held.pixels[is_class.nonzero().flatten()[:128]])
    # dose-response (2x is the clamp above), and a control: random live features clamped the same way
    doses = [0.25, 0.5, 1.0, 2.0]
    dose_p = [float(clamped_probs(model, sae, best, m * float(fx[:, best].max()), held.pixels[test])[1][:, target].mean())
              for m in doses[:-1]] + [float(after[:, target].mean())]
    controls = [f for f in live[torch.randperm(len(live), generator=g)].tolist() if f not in candidates][:8]
    control_p = [float(clamped_probs(model, sae, f, 2 * float(fx[:, f].max()), held.pixels[test])[1][:, target].mean())
                 for f in controls]
    figures.dose_response(doses, dose_p, float(before[:, target].mean()), control_p, cfg.steer_class, best,
                          s["out"] / "img" / "steering-dose.png")
    return {"doses": doses, "dose_p": dose_p, "controls": controls, "control_p": control_p,
            "control_p_mean": sum(control_p) / len(control_p), "class": cfg.steer_class, "feature": best,
            "value": value, "candidates": effect,
            "n_images": len(test), "p_before": float(before[:, target].mean()), "p_after": float(after[:, target].mean()),
            "top1_before": float((before.argmax(1) == target).float().mean()),
            "top1_after": float((after.argmax(1) == target).float().mean()),
            "zeroed_on_class": {"n_images": len(zb), "p_before": float(zb[:, target].mean()),
                                "p_after": float(za[:, target].mean())}}


def _index(s: dict) -> dict:
    cfg, model, held = s["cfg"], s["model"], s["held"]
    mx, where = _maxima(s)
    fx, fwhere = _feature_maxima(s)
    live = _live_features(s, fx)
    photos, small = source_images(), small_images()
    vis = load_tensors(s["out"] / "visualizations.safetensors", "the visualize stage's images")
    sources = []
    for name in held.sources:  # a face or a digit is its own small source image: the mosaic source is its first one
        img, scale = shrink(photos[name]) if name in photos else (torch.from_numpy(small[name][0]), 1.0)
        sources.append({"name": name, "png": png(img), "scale": scale})
    patches_rows = [{"id": p, "source": held.sources[int(held.source[p])], "top": int(b[0]), "left": int(b[1]),
                     "side": int(b[2]), "flipped": int(b[3]), "png": png(held.pixels[p])}
                    for p, b in enumerate(held.boxes)]
    units, examples = [], []
    for kind, acts, at, ids in (("unit", mx, where, range(mx.shape[1])), ("feature", fx, fwhere, live.tolist())):
        ent = classic.source_entropy(classic.top_patches(acts[:, list(ids)], cfg.top_k), held.source, len(held.sources))
        went = classic.weighted_source_entropy(acts[:, list(ids)], held.source, len(held.sources))
        for j, u in enumerate(ids):
            col = acts[:, u]
            top = col.topk(cfg.top_k).indices.tolist()
            counts = torch.bincount(held.source[top], minlength=len(held.sources))
            fired = col[col > 0]
            hist = torch.histogram(fired, bins=20) if len(fired) else None
            units.append({"kind": kind, "id": int(u), "frequency": float((col > 0).float().mean()),
                          "max_act": float(col.max()), "entropy": float(ent[j]), "weighted_entropy": float(went[j]),
                          "top_source": held.sources[int(counts.argmax())],
                          "histogram": {"counts": hist.hist.tolist(), "edges": hist.bin_edges.tolist()} if hist else {},
                          "vis": png(vis[f"{kind}.{u}"]) if f"{kind}.{u}" in vis else None})
            for rank, p in enumerate(top):
                box = _receptive_field(s, at[p, u])
                row, col_ = divmod(int(at[p, u]), _map_width(s))
                examples.append({"kind": kind, "id": int(u), "rank": rank, "patch": int(p), "activation": float(col[p]),
                                 "row": row, "col": col_, "rf_top": box[0], "rf_left": box[1], "rf_bottom": box[2],
                                 "rf_right": box[3]})
    path = write_index(s["out"] / "vision" / "features.db",
                       {"model": model.name, "hook": cfg.hook, "classes": model.classes, "sources": held.sources,
                        "dictionary": str(s["out"] / "sae"), "patches": len(held), "image_size": list(model.image_size),
                        "top_k": cfg.top_k}, sources, patches_rows, units, examples)
    return {"path": str(path), "units": mx.shape[1], "features": len(live), "examples": len(examples),
            "megabytes": round(path.stat().st_size / 1e6, 1)}


STAGES: list[tuple[str, Callable[[dict], dict]]] = [
    ("filters", _filters), ("tuning", _tuning), ("units", _units), ("sae", _sae), ("monosemanticity", _monosemanticity),
    ("visualize", _visualize), ("steer", _steer), ("index", _index)]
