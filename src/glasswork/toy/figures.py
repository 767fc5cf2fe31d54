"""The paper's figures as PNGs (matplotlib, Agg), each drawn from the JSON-able data that `reproduce` writes, so a
figure can be redrawn from data.json alone."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from ..io import atomic_path  # noqa: E402
from .measures import FRACTIONS, PHASES, REPRESENTED, _name  # noqa: E402

PHASE_COLORS = ("#d9d9d9", "#2b83ba", "#d7191c")  # not learned, dedicated dimension, superposition


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def feature_color(i: int, n: int):
    """Importance order: feature 0 (most important) yellow to the least important purple, as in the paper."""
    return plt.get_cmap("viridis_r")(i / max(1, n - 1))


def geometry_figure(geo: dict, path: Path) -> Path:
    """(a) The columns W_i of n=5, m=2 models as arrows in the hidden plane, one panel per sparsity."""
    inst = geo["instances"]
    fig, axes = plt.subplots(1, len(inst), figsize=(2.1 * len(inst), 2.6))
    for ax, g in zip(axes, inst):
        W = g["W"]  # [2][n]
        n = len(W[0])
        circle = plt.Circle((0, 0), 1, fill=False, ls=":", color="#999999", lw=0.8)
        ax.add_patch(circle)
        for i in range(n):
            ax.plot([0, W[0][i]], [0, W[1][i]], color=feature_color(i, n), lw=2)
            ax.plot(W[0][i], W[1][i], "o", color=feature_color(i, n), ms=5)
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"S = {g['sparsity']:.2f}\n{g['n_represented']} features", fontsize=9)
    fig.suptitle(f"Feature directions W_i in the hidden plane (n={geo['n']}, m={geo['m']}, importance "
                 f"{geo['importance_base']}^i; yellow = most important)", fontsize=10, y=1.04)
    return _save(fig, path)


def dims_per_feature_figure(dim: dict, path: Path) -> Path:
    """(b) m / ||W||_F^2 against 1/(1-S), with the plateau at 1/2."""
    x = [1 / (1 - r["sparsity"]) for r in dim["instances"]]
    y = [r["dims_per_feature"] for r in dim["instances"]]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for level in (1.0, 0.5):
        ax.axhline(level, color="#999999", ls="--", lw=0.8)
    p = dim.get("plateau")
    if p:
        ax.axvspan(1 / (1 - p["x_from"]), 1 / (1 - p["x_to"]), color="#fdd49e", alpha=0.5,
                   label=f"plateau: mean {p['mean']:.3f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.plot(x, y, "o-", color="#222222", ms=4)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("1 / (1 - S)   (sparser →)")
    ax.set_ylabel("dimensions per feature  m / ||W||²_F")
    ax.set_title(f"Dimensions per feature sticks at 1/2 (n={dim['n']}, m={dim['m']}, equal importance)", fontsize=10)
    return _save(fig, path)


def feature_dimensionality_figure(dim: dict, path: Path) -> Path:
    """(c) Every represented feature's dimensionality D_i against 1/(1-S), with the fractions it clusters at."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for f in FRACTIONS:
        ax.axhline(f, color="#bbbbbb", lw=0.8, zorder=0)
        ax.text(1.005, f, _name(f), transform=ax.get_yaxis_transform(), va="center", fontsize=8, color="#555555")
    xs, ys = [], []
    for r in dim["instances"]:
        inv = 1 / (1 - r["sparsity"])
        for d, nrm in zip(r["feature_dims"], r["norms"]):
            if nrm > REPRESENTED:
                xs.append(inv)
                ys.append(d)
    ax.scatter(xs, ys, s=7, alpha=0.35, color="#3f007d", lw=0)
    ax.plot([1 / (1 - r["sparsity"]) for r in dim["instances"]], [r["dims_per_feature"] for r in dim["instances"]],
            "-", color="#e6550d", lw=1.2, label="dimensions per feature")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("1 / (1 - S)   (sparser →)")
    ax.set_ylabel("feature dimensionality D_i")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Per-feature dimensionality clusters at 1, 3/4, 2/3, 1/2, 2/5, 3/8", fontsize=10)
    return _save(fig, path)


def phase_figure(phase: dict, path: Path) -> Path:
    """(d) n=2, m=1: what becomes of the extra feature, over its relative importance and the sparsity."""
    r, dens = phase["relative_importance"], phase["density"]
    code = [[PHASES.index(p) for p in row] for row in phase["phase"]]  # [density][importance]
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    ax.pcolormesh(_edges(r), _edges(dens), code, cmap=ListedColormap(PHASE_COLORS), vmin=-0.5, vmax=2.5,
                  shading="flat", edgecolors="white", linewidth=0.3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("relative importance of the extra feature")
    ax.set_ylabel("feature density 1 - S   (sparser ↑)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in PHASE_COLORS]
    ax.legend(handles, PHASES, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    ax.set_title("Phase diagram, n=2 features in m=1 dimension", fontsize=10)
    return _save(fig, path)


def sae_figure(rows: list[dict], path: Path, title: str) -> Path:
    """Recovery of the true features by an SAE on the hidden layer, against 1/(1-S)."""
    rows = [r for r in rows if r["recovery"] is not None]
    x = [1 / (1 - r["sparsity"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.axhline(0.9, color="#999999", ls="--", lw=0.8)
    ax.plot(x, [r["recovery"] for r in rows], "o-", color="#08519c", label="mean best-match cosine")
    ax.plot(x, [min(r["best_cosines"]) for r in rows], "v:", color="#6baed6", ms=4, label="worst feature")
    ax.set_xscale("log")
    ax.set_ylim(min(0.5, min((min(r["best_cosines"]) for r in rows), default=0.5)) - 0.02, 1.02)
    ax.set_xlabel("1 / (1 - S)   (sparser →)")
    ax.set_ylabel("cosine(W_i, best SAE decoder row)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _edges(centers: list[float]) -> list[float]:
    """Cell edges for log-spaced centers (geometric midpoints)."""
    mids = [(a * b) ** 0.5 for a, b in zip(centers, centers[1:])]
    return [centers[0] ** 2 / mids[0]] + mids + [centers[-1] ** 2 / mids[-1]]
