"""The vision figures as PNG files (matplotlib, Agg): filters, tuning curves, top patches, monosemanticity,
visualizations, steering. Each function draws one figure and returns its path."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..io import atomic_path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _norm(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def filters(weight: torch.Tensor, kinds: list[str], fractions: dict[str, float], path: Path) -> Path:
    """First-layer filters weight [out, 3, kh, kw] as RGB tiles (each scaled to its own range), titled by kind."""
    plt = _plt()
    n = weight.shape[0]
    cols = 16
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.75, rows * 0.9))
    colours = {"oriented": "tab:blue", "colour-contrast": "tab:red", "other": "0.5"}
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_norm(weight[i]).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(kinds[i][:6], fontsize=6, color=colours[kinds[i]])
    text = ", ".join(f"{k} {v:.0%}" for k, v in fractions.items())
    fig.suptitle(f"first-layer filters ({n}): {text}", fontsize=9)
    return _save(fig, path)


def tuning_curves(angles: torch.Tensor, curves: dict[str, torch.Tensor], title: str, path: Path) -> Path:
    """Polar-free line plots: one panel per unit, {label: [n_angles]} responses against angle in degrees."""
    plt = _plt()
    labels = list(curves)
    n = curves[labels[0]].shape[0]
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.0), squeeze=False)
    deg = (angles * 180 / math.pi).numpy()
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        for label in labels:
            ax.plot(deg, curves[label][i].numpy(), label=label, lw=1.2)
        ax.set_xticks([0, 90, 180, 270])
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.supxlabel("stimulus angle (degrees)", fontsize=8)
    fig.supylabel("max response", fontsize=8)
    return _save(fig, path)


def stimuli(images: dict[str, torch.Tensor], path: Path) -> Path:
    plt = _plt()
    rows = len(images)
    cols = max(v.shape[0] for v in images.values())
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.9), squeeze=False)
    for r, (label, imgs) in enumerate(images.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < imgs.shape[0]:
                ax.imshow(imgs[c].numpy(), interpolation="nearest")
        axes[r, 0].set_title(label, fontsize=7, loc="left")
    return _save(fig, path)


def patch_grid(rows: list[tuple[str, list[torch.Tensor], list[str]]], path: Path, title: str = "") -> Path:
    """Rows of images [h, w, 3], each row (name, images, captions)."""
    plt = _plt()
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.95, len(rows) * 1.15), squeeze=False)
    for r, (name, imgs, caps) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(imgs[c].clamp(0, 1).numpy(), interpolation="nearest")
                ax.set_xlabel(caps[c], fontsize=5)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def entropy_histograms(series: dict[str, torch.Tensor], max_bits: float, title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    bins = torch.linspace(0, max_bits, 25).numpy()
    for label, values in series.items():
        ax.hist(values.numpy(), bins=bins, alpha=0.5, density=True, label=f"{label} (mean {values.mean():.2f})",
                histtype="stepfilled" if "top" in label else "step", lw=1.5)
    ax.set_xlabel("source entropy (bits): lower = more monosemantic")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def steering_bars(classes: list[str], before: torch.Tensor, after: torch.Tensor, images: torch.Tensor, title: str,
                  path: Path) -> Path:
    """For each image [n, h, w, 3]: the image and its class probabilities without and with the clamp."""
    plt = _plt()
    n = images.shape[0]
    fig, axes = plt.subplots(n, 2, figsize=(7.5, n * 1.5), gridspec_kw={"width_ratios": [1, 4]}, squeeze=False)
    x = torch.arange(len(classes)).numpy()
    for i in range(n):
        axes[i, 0].imshow(images[i].numpy(), interpolation="nearest")
        axes[i, 0].axis("off")
        ax = axes[i, 1]
        ax.bar(x - 0.2, before[i].numpy(), 0.4, label="original")
        ax.bar(x + 0.2, after[i].numpy(), 0.4, label="feature clamped")
        ax.set_ylim(0, 1)
        ax.set_xticks(x)
        ax.set_xticklabels(classes if i == n - 1 else [], fontsize=7, rotation=30)
        ax.tick_params(labelsize=6)
    axes[0, 1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def dose_response(doses: list[float], p: list[float], p_before: float, control: list[float], cls: str, feature: int,
                  path: Path) -> Path:
    """p(class) against the clamp value (multiples of the feature's held-out max), beside random features at 2x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([0] + doses, [p_before] + p, "o-", label=f"feature {feature} (at 0: not clamped)")
    ax.scatter([2.0] * len(control), control, marker="x", color="0.4", label="8 random live features at 2x")
    ax.set_xlabel("clamped value / the feature's held-out max")
    ax.set_ylabel(f"mean p({cls})")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"clamping one SAE feature at every position: p({cls})", fontsize=9)
    return _save(fig, path)
