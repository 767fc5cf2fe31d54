"""`glasswork toy`: reproduce the toy-models-of-superposition results into a folder."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer


def toy_cmd(out: Path = typer.Option(Path("toy"), "--out", help="Folder for the figures, data.json and weights."),
            quick: bool = typer.Option(False, "--quick", help="Smoke-sized run: small models, few steps (seconds; rough figures)."),
            seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed for initialization and data (same seed: same data.json)."),
            part: Optional[List[str]] = typer.Option(None, help="Only these experiments: geometry, dimensionality, "
                                                     "phase, sae (repeatable; default all)."),
            as_json: bool = typer.Option(False, "--json", help="Print one machine-readable JSON object summarizing "
                                         "the result.")):
    """Toy models of superposition: train them, measure them, and draw the paper's figures (PNG + HTML)."""
    from .common import emit, run_verb

    def go():
        from ..io import check_out, new_output
        from ..toy.paper import reproduce
        t0 = time.time()
        with new_output(check_out(out, "folder")):
            summary = reproduce(out, quick=quick, seed=seed, parts=part)
        summary["seconds"]["wall"] = round(time.time() - t0, 2)
        emit(summary, as_json, human(summary))
    run_verb(go)


def human(s: dict) -> str:
    lines = [f"[bold]toy models of superposition[/] -> {s['out']}"]
    if "geometry" in s:
        p = s["geometry"]["pentagon"]
        lines.append(f"  2-D (n=5, m=2): features represented by sparsity {s['geometry']['sparsity_to_features']}")
        lines.append(f"  pentagon at S={p['sparsity']}: {p['n_represented']} features, norms {p['norms']}, "
                     f"gaps {p['gaps_degrees']} deg (max error {p['max_gap_error_degrees']} deg)")
    if "dims_per_feature" in s:
        d = s["dims_per_feature"]
        pl = d["plateau"]
        where = (f"mean {pl['mean']} over 1/(1-S) = {1 / (1 - pl['x_from']):.1f}..{1 / (1 - pl['x_to']):.1f} "
                 f"({pl['points']} models)") if pl else "none found"
        lines.append(f"  dims per feature (n={d['n']}, m={d['m']}): plateau {where}")
        lines.append(f"  per-feature dimensionality near a fraction: {d['near_a_fraction']:.0%} {d['fraction_counts']}")
    if "phase" in s:
        lines.append(f"  phase diagram (n=2, m=1): {s['phase']}")
    for r in s.get("sae_recovery", []):
        rec = "n/a" if r["recovery"] is None else f"{r['recovery']:.3f}"
        lines.append(f"  SAE recovery at 1/(1-S)={r['inverse_density']}: {rec} (worst {r['worst']}, k={r['k']})")
    lines.append("  files: " + ", ".join(Path(v).name for v in s["files"].values()))
    lines.append(f"  seconds: {s['seconds']}")
    return "\n".join(lines)
