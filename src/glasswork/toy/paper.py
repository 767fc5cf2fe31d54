"""Reproduce the paper's toy-model results in one call: train the batched models, measure them, and write the figures
(PNG + interactive HTML), the data behind them (data.json), the weights (safetensors) and a summary.

Experiments (each one batched model, all instances trained at once):
  geometry        n=5, m=2, importance 0.9^i, S from 0 to 0.95: feature arrows in the plane, ending in the pentagon
  dimensionality  equal importance, 1/(1-S) log-spaced: dimensions per feature (plateau at 1/2) and per-feature
                  dimensionality (clusters at 1, 3/4, 2/3, 1/2, 2/5, 3/8)
  phase           n=2, m=1, a grid of density x relative importance of the extra feature
  sae             a Glasswork SAE per sparsity on the dimensionality models' hidden layer: recovery of W's columns
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..version import __version__
from ..io import GlassworkError, save_tensors, write_json, write_text
from .measures import fraction_clustering, geometry_2d, phase_2_1, plateau, polygon_error
from .model import ToyConfig, best_of, decaying_importance, dims_per_feature, feature_dimensionality, train
from .sae import SAESettings, sae_recovery

PARTS = ("geometry", "dimensionality", "phase", "sae")


@dataclass
class ReproduceSettings:
    """Sizes of each experiment; `full()` follows the paper (batch 1024, 10k steps); `quick()` is a smoke-sized run
    (seconds; its models are not fully trained, so its figures are rough)."""
    steps: int = 10_000
    batch: int = 1024
    geometry_instances: int = 8
    dim_features: int = 50
    dim_hidden: int = 5
    dim_instances: int = 24
    dim_max_inverse_density: float = 20.0  # the sparsest model: 1/(1-S); the 1/2 plateau lies near 2.5-4
    phase_grid: int = 10
    phase_steps: int = 10_000
    replicates: int = 3  # geometry and phase: inits per setting, the lowest-loss one kept (local minima)
    sae: SAESettings = field(default_factory=SAESettings)
    sae_every: int = 3  # train an SAE on every `sae_every`-th dimensionality instance (and the sparsest)

    @classmethod
    def full(cls) -> "ReproduceSettings":
        return cls()

    @classmethod
    def quick(cls) -> "ReproduceSettings":
        return cls(steps=2000, batch=256, dim_features=16, dim_hidden=4, dim_instances=8, dim_max_inverse_density=10,
                   phase_grid=5, phase_steps=1000, replicates=2, sae=SAESettings(rows=8192, tokens=100_000), sae_every=4)


def run_geometry(st: ReproduceSettings, seed: int) -> tuple[dict, dict]:
    n, m, base = 5, 2, 0.9
    density = 20 ** -torch.linspace(0, 1, st.geometry_instances, dtype=torch.float64)  # 1 .. 0.05
    sparsity = (1 - density).float()
    importance = decaying_importance(n, base)
    R = st.replicates
    model, _ = train(ToyConfig(n, m, st.steps, st.batch, seed=seed), sparsity.repeat_interleave(R), importance,
                     desc="toy geometry n=5 m=2")
    model, losses = best_of(model, R, seed=seed + 10)
    loss = losses.min(1).values
    W = model.W.detach()  # [inst, 2, 5]
    dpf = dims_per_feature(W)
    instances = []
    for i in range(W.shape[0]):
        g = geometry_2d(W[i])
        instances.append({"sparsity": float(sparsity[i]), "W": W[i].tolist(), "b": model.b[i].tolist(),
                          "dims_per_feature": float(dpf[i]), "loss": float(loss[i]), **g})
    last = instances[-1]
    pentagon = {"sparsity": last["sparsity"], "n_represented": last["n_represented"], "norms": last["norms"],
                "gaps_degrees": last["gaps"], "max_gap_error_degrees": polygon_error(last["gaps"])}
    data = {"n": n, "m": m, "importance_base": base, "importance": importance.tolist(), "steps": st.steps,
            "batch": st.batch, "replicates": R, "replicate_losses": losses.tolist(), "instances": instances,
            "pentagon": pentagon}
    return data, {"geometry.W": W, "geometry.b": model.b.detach(), "geometry.sparsity": sparsity}


def run_dimensionality(st: ReproduceSettings, seed: int):
    n, m = st.dim_features, st.dim_hidden
    density = torch.logspace(0, -torch.log10(torch.tensor(st.dim_max_inverse_density)).item(), st.dim_instances,
                             dtype=torch.float64)
    sparsity = (1 - density).float()
    model, loss = train(ToyConfig(n, m, st.steps, st.batch, seed=seed + 1), sparsity, 1.0,
                        desc=f"toy dimensionality n={n} m={m}")
    W = model.W.detach()
    dpf, dims = dims_per_feature(W), feature_dimensionality(W)  # [inst], [inst, n]
    instances = [{"sparsity": float(sparsity[i]), "dims_per_feature": float(dpf[i]), "feature_dims": dims[i].tolist(),
                  "norms": W[i].norm(dim=0).tolist(), "loss": float(loss[i])} for i in range(W.shape[0])]
    data = {"n": n, "m": m, "steps": st.steps, "batch": st.batch, "instances": instances,
            "plateau": plateau([r["sparsity"] for r in instances], [r["dims_per_feature"] for r in instances]),
            "clustering": fraction_clustering(dims, W.norm(dim=1))}
    return data, {"dimensionality.W": W, "dimensionality.b": model.b.detach(), "dimensionality.sparsity": sparsity}, model


def run_phase(st: ReproduceSettings, seed: int) -> tuple[dict, dict]:
    k = st.phase_grid
    density = torch.logspace(0, -2, k, dtype=torch.float64)  # rows: 1 .. 0.01
    rel = torch.logspace(-1, 1, k, dtype=torch.float64)  # columns: 0.1 .. 10
    sparsity = (1 - density).float()[:, None].expand(k, k).reshape(-1)  # [k*k], row-major [density, importance]
    importance = torch.stack([torch.ones(k * k), rel.float()[None, :].expand(k, k).reshape(-1)], 1)  # [k*k, 2]
    R = st.replicates
    model, _ = train(ToyConfig(2, 1, st.phase_steps, st.batch, seed=seed + 2), sparsity.repeat_interleave(R),
                     importance.repeat_interleave(R, 0), desc="toy phase diagram n=2 m=1")
    model, _ = best_of(model, R, seed=seed + 12)
    W = model.W.detach()  # [k*k, 1, 2]
    phases = phase_2_1(W)
    data = {"steps": st.phase_steps, "replicates": R, "density": density.tolist(), "relative_importance": rel.tolist(),
            "phase": [phases[i * k:(i + 1) * k] for i in range(k)],
            "W": [[W[i * k + j, 0].tolist() for j in range(k)] for i in range(k)],
            "counts": {p: phases.count(p) for p in sorted(set(phases))},
            # superposition in n=2, m=1 should be antipodal (W_0 W_1 < 0): count the cells where it is
            "superposition_antipodal": sum(p == "superposition" and float(W[i, 0, 0] * W[i, 0, 1]) < 0
                                           for i, p in enumerate(phases))}
    return data, {"phase.W": W, "phase.b": model.b.detach()}


def run_sae(st: ReproduceSettings, dim_model, out: Path, seed: int) -> dict:
    inst = dim_model.n_instances
    chosen = sorted(set(range(0, inst, st.sae_every)) | {inst - 1})
    settings = SAESettings(**{**asdict(st.sae), "seed": seed})
    rows = sae_recovery(dim_model, settings, out / "sae", chosen)
    return {"on": "dimensionality", "n": dim_model.W.shape[2], "m": dim_model.W.shape[1], "settings": asdict(settings),
            "instances": rows}


def reproduce(out: str | Path, quick: bool = False, seed: int = 0, parts: list[str] | None = None,
              settings: ReproduceSettings | None = None) -> dict:
    """Run the experiments, write everything under `out`, and return the summary (also written as summary.json).
    data.json holds every number the figures show and is bit-identical for the same seed, settings and machine."""
    parts = list(parts or PARTS)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise GlassworkError(f"toy: unknown part(s) {bad} (expected some of {', '.join(PARTS)})")
    if "sae" in parts and "dimensionality" not in parts:
        raise GlassworkError("toy: the 'sae' part trains on the 'dimensionality' models; ask for both")
    if seed < 0:
        raise GlassworkError(f"toy: seed must be >= 0 (got {seed})")
    st = settings or (ReproduceSettings.quick() if quick else ReproduceSettings.full())
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GlassworkError(f"{out}: exists and is not a folder (--out must be a folder to write the figures into)")
    out.mkdir(parents=True, exist_ok=True)
    data: dict = {"glasswork_version": __version__, "seed": seed, "quick": quick}
    tensors: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    files: dict[str, str] = {}

    def timed(name, fn):
        t0 = time.time()
        result = fn()
        seconds[name] = round(time.time() - t0, 2)
        return result

    dim_model = None
    if "geometry" in parts:
        data["geometry"], t = timed("geometry", lambda: run_geometry(st, seed))
        tensors.update(t)
    if "dimensionality" in parts:
        data["dimensionality"], t, dim_model = timed("dimensionality", lambda: run_dimensionality(st, seed))
        tensors.update(t)
    if "phase" in parts:
        data["phase"], t = timed("phase", lambda: run_phase(st, seed))
        tensors.update(t)
    if "sae" in parts:
        data["sae"] = timed("sae", lambda: run_sae(st, dim_model, out, seed))

    write_json(out / "data.json", data)
    save_tensors(out / "weights.safetensors", {k: v.contiguous() for k, v in tensors.items()},
                 {"glasswork_version": __version__, "seed": str(seed), "quick": str(quick)})
    files["data"], files["weights"] = str(out / "data.json"), str(out / "weights.safetensors")
    files.update(draw(data, out))
    summary = {"out": str(out), "files": files, **numbers(data), "seconds": {**seconds, "total": round(sum(seconds.values()), 2)}}
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    files["summary"] = str(out / "summary.json")
    return summary


def draw(data: dict, out: Path) -> dict[str, str]:
    """Every figure the data allows, as toy-NAME.png and toy-NAME.html."""
    from . import figures, html  # matplotlib only when drawing: `import glasswork` stays light
    made = {}
    jobs = [("geometry", "geometry", figures.geometry_figure, html.geometry_html),
            ("dimensionality", "dims-per-feature", figures.dims_per_feature_figure, html.dims_per_feature_html),
            ("dimensionality", "feature-dimensionality", figures.feature_dimensionality_figure,
             html.feature_dimensionality_html),
            ("phase", "phase-diagram", figures.phase_figure, html.phase_html)]
    for part, name, png, page in jobs:
        if part in data:
            made[f"{name}.png"] = str(png(data[part], out / f"toy-{name}.png"))
            made[f"{name}.html"] = str(page(data[part], out / f"toy-{name}.html"))
    if "sae" in data:
        s = data["sae"]
        title = f"SAE recovery of the toy model's features (n={s['n']}, m={s['m']})"
        made["sae-recovery.png"] = str(figures.sae_figure(s["instances"], out / "toy-sae-recovery.png", title))
        made["sae-recovery.html"] = str(html.sae_html(s["instances"], out / "toy-sae-recovery.html", title))
    return made


def numbers(data: dict) -> dict:
    """The headline measurements, for the summary and the benchmark table."""
    res: dict = {}
    if "geometry" in data:
        g = data["geometry"]
        res["geometry"] = {"sparsity_to_features": {f"{r['sparsity']:.3f}": r["n_represented"] for r in g["instances"]},
                           "pentagon": {k: (round(v, 3) if isinstance(v, float) else
                                            [round(x, 3) for x in v] if isinstance(v, list) else v)
                                        for k, v in g["pentagon"].items()}}
    if "dimensionality" in data:
        d = data["dimensionality"]
        res["dims_per_feature"] = {"n": d["n"], "m": d["m"],
                                   "curve": {f"{1 / (1 - r['sparsity']):.1f}": round(r["dims_per_feature"], 3)
                                             for r in d["instances"]},
                                   "plateau": d["plateau"] and {k: round(v, 4) if isinstance(v, float) else v
                                                                for k, v in d["plateau"].items()},
                                   "near_a_fraction": round(d["clustering"]["near_a_fraction"], 3),
                                   "fraction_counts": d["clustering"]["counts"]}
    if "phase" in data:
        res["phase"] = {**data["phase"]["counts"], "superposition_antipodal": data["phase"]["superposition_antipodal"]}
    if "sae" in data:
        res["sae_recovery"] = [{"sparsity": round(r["sparsity"], 4), "inverse_density": round(1 / (1 - r["sparsity"]), 1),
                                "recovery": r["recovery"] and round(r["recovery"], 4),
                                "worst": round(min(r["best_cosines"]), 4) if r["best_cosines"] else None,
                                "represented": r["represented"], "k": r["k"], "fvu": round(r["fvu"], 4)}
                               for r in data["sae"]["instances"]]
    return res
