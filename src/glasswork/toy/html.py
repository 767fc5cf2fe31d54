"""The same figures as self-contained interactive HTML: inline SVG drawn here, and a few lines of plain JS that show
an element's `data-tip` in a tooltip on hover. No third-party JS, nothing fetched."""
from __future__ import annotations

import html
import math
from pathlib import Path

from ..io import write_text
from .figures import PHASE_COLORS, _edges
from .measures import FRACTIONS, PHASES, REPRESENTED, _name

TOOLTIP_JS = """
const tip = document.getElementById('tip');
document.addEventListener('mousemove', e => {
  const t = e.target.closest('[data-tip]');
  if (!t) { tip.style.display = 'none'; return; }
  tip.textContent = t.dataset.tip; tip.style.display = 'block';
  tip.style.left = (e.pageX + 12) + 'px'; tip.style.top = (e.pageY + 12) + 'px';
});
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
svg {{ background: #fff; }} svg text {{ font: 11px system-ui, sans-serif; fill: #333; }}
[data-tip]:hover {{ stroke: #000; stroke-width: 2; }}
#tip {{ position: absolute; display: none; background: #222; color: #fff; padding: 4px 8px; border-radius: 4px;
       font-size: 12px; pointer-events: none; white-space: pre; }}
.panels {{ display: flex; flex-wrap: wrap; gap: 8px; }}
</style></head>
<body><h2>{title}</h2><p>{caption}</p>
{body}
<div id="tip"></div>
<script>{js}</script>
</body></html>
"""


def page(title: str, caption: str, body: str) -> str:
    return PAGE.format(title=html.escape(title), caption=html.escape(caption), body=body, js=TOOLTIP_JS)


def _tip(text: str) -> str:
    return f' data-tip="{html.escape(text, quote=True)}"'


def _rgb(rgba) -> str:
    return "#%02x%02x%02x" % tuple(int(255 * c) for c in rgba[:3])


class Axes:
    """Data -> SVG coordinates for one plot (linear or log axes), and the SVG pieces drawn on it."""

    def __init__(self, w: int, h: int, xlim, ylim, xlog=False, ylog=False, pad=(50, 20, 20, 45)):
        self.w, self.h, self.xlim, self.ylim, self.xlog, self.ylog = w, h, xlim, ylim, xlog, ylog
        self.left, self.right, self.top, self.bottom = pad
        self.parts: list[str] = []

    def _t(self, v, lim, log):
        f = (lambda a: math.log10(a)) if log else (lambda a: a)
        return (f(v) - f(lim[0])) / (f(lim[1]) - f(lim[0]))

    def x(self, v) -> float:
        return self.left + self._t(v, self.xlim, self.xlog) * (self.w - self.left - self.right)

    def y(self, v) -> float:
        return self.h - self.bottom - self._t(v, self.ylim, self.ylog) * (self.h - self.top - self.bottom)

    def add(self, svg: str) -> None:
        self.parts.append(svg)

    def hline(self, v, label="", color="#bbb", dash="4 3") -> None:
        y = self.y(v)
        self.add(f'<line x1="{self.left}" x2="{self.w - self.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
                 f'stroke-dasharray="{dash}"/>')
        if label:
            self.add(f'<text x="{self.w - self.right + 3}" y="{y + 4:.1f}">{html.escape(label)}</text>')

    def polyline(self, pts, color="#222", width=1.5) -> None:
        path = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in pts)
        self.add(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="{width}"/>')

    def dot(self, a, b, tip, color="#222", r=4, opacity=1.0) -> None:
        self.add(f'<circle cx="{self.x(a):.1f}" cy="{self.y(b):.1f}" r="{r}" fill="{color}" '
                 f'fill-opacity="{opacity}"{_tip(tip)}/>')

    def frame(self, xlabel: str, ylabel: str, xticks, yticks) -> None:
        l, r, t, b = self.left, self.w - self.right, self.top, self.h - self.bottom
        self.add(f'<rect x="{l}" y="{t}" width="{r - l}" height="{b - t}" fill="none" stroke="#888"/>')
        for v in xticks:
            self.add(f'<text x="{self.x(v):.1f}" y="{b + 14}" text-anchor="middle">{v:g}</text>')
        for v in yticks:
            self.add(f'<text x="{l - 5}" y="{self.y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        self.add(f'<text x="{(l + r) / 2}" y="{self.h - 8}" text-anchor="middle">{html.escape(xlabel)}</text>')
        self.add(f'<text x="12" y="{(t + b) / 2}" text-anchor="middle" transform="rotate(-90 12 {(t + b) / 2})">'
                 f'{html.escape(ylabel)}</text>')

    def svg(self) -> str:
        return f'<svg width="{self.w}" height="{self.h}" viewBox="0 0 {self.w} {self.h}">' + "".join(self.parts) + "</svg>"


def _log_ticks(lo: float, hi: float) -> list[float]:
    return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            if lo <= 10.0 ** e <= hi]


def geometry_html(geo: dict, path: Path) -> Path:
    from .figures import feature_color
    panels = []
    for g in geo["instances"]:
        W, n = g["W"], len(g["W"][0])
        ax = Axes(190, 210, (-1.5, 1.5), (-1.5, 1.5), pad=(5, 5, 35, 5))
        cx, cy, rad = ax.x(0), ax.y(0), ax.x(1) - ax.x(0)
        ax.add(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{rad:.1f}" fill="none" stroke="#aaa" stroke-dasharray="2 3"/>')
        for i in range(n):
            color = _rgb(feature_color(i, n))
            ax.add(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{ax.x(W[0][i]):.1f}" y2="{ax.y(W[1][i]):.1f}" '
                   f'stroke="{color}" stroke-width="3"/>')
            ax.dot(W[0][i], W[1][i], f"feature {i} (importance {geo['importance'][i]:.3f})\n"
                   f"norm {g['norms'][i]:.3f}, angle {g['angles'][i]:.1f}°", color, r=6)
        ax.add(f'<text x="95" y="14" text-anchor="middle">S = {g["sparsity"]:.2f}</text>'
               f'<text x="95" y="28" text-anchor="middle">{g["n_represented"]} features, dims/feature '
               f'{g["dims_per_feature"]:.2f}</text>')
        panels.append(ax.svg())
    caption = (f"Columns W_i of toy models with n={geo['n']} features in m={geo['m']} dimensions, importance "
               f"{geo['importance_base']}^i (yellow = most important), one panel per sparsity S. Hover a feature.")
    write_text(path, page("Toy models: feature geometry in 2-D", caption, f'<div class="panels">{"".join(panels)}</div>'))
    return path


def dims_per_feature_html(dim: dict, path: Path) -> Path:
    rows = dim["instances"]
    xs = [1 / (1 - r["sparsity"]) for r in rows]
    ax = Axes(640, 400, (min(xs) / 1.2, max(xs) * 1.2), (0, 1.1), xlog=True, pad=(50, 40, 20, 45))
    p = dim.get("plateau")
    if p:
        x0, x1 = ax.x(1 / (1 - p["x_from"])), ax.x(1 / (1 - p["x_to"]))
        tip = _tip(f"plateau: mean dims/feature {p['mean']:.3f}")
        ax.add(f'<rect x="{x0:.1f}" y="{ax.top}" width="{x1 - x0:.1f}" height="{ax.h - ax.top - ax.bottom}" '
               f'fill="#fdd49e" fill-opacity="0.5"{tip}/>')
    ax.hline(1, "1")
    ax.hline(0.5, "1/2")
    ax.polyline(list(zip(xs, [r["dims_per_feature"] for r in rows])))
    for x, r in zip(xs, rows):
        ax.dot(x, r["dims_per_feature"], f"S = {r['sparsity']:.4f}, 1/(1-S) = {x:.1f}\n"
               f"dims/feature = {r['dims_per_feature']:.3f}\nrepresented features: "
               f"{sum(nrm > REPRESENTED for nrm in r['norms'])}")
    ax.frame("1 / (1 - S)  (sparser →)", "m / ||W||²_F", _log_ticks(*ax.xlim), [0, 0.25, 0.5, 0.75, 1])
    caption = (f"Dimensions per feature against sparsity, n={dim['n']}, m={dim['m']}, equal importance. "
               "It sticks at 1/2 (antipodal pairs) over a range of sparsity. Hover a point.")
    write_text(path, page("Toy models: dimensions per feature", caption, ax.svg()))
    return path


def feature_dimensionality_html(dim: dict, path: Path) -> Path:
    rows = dim["instances"]
    xs = [1 / (1 - r["sparsity"]) for r in rows]
    ax = Axes(700, 440, (min(xs) / 1.2, max(xs) * 1.2), (0, 1.1), xlog=True, pad=(50, 40, 20, 45))
    for f in FRACTIONS:
        ax.hline(f, _name(f), dash="")
    ax.polyline(list(zip(xs, [r["dims_per_feature"] for r in rows])), color="#e6550d", width=1.2)
    for x, r in zip(xs, rows):
        for i, (d, nrm) in enumerate(zip(r["feature_dims"], r["norms"])):
            if nrm > REPRESENTED:
                ax.dot(x, d, f"S = {r['sparsity']:.4f}, feature {i}\nD_i = {d:.3f}, norm {nrm:.3f}", "#3f007d", r=3, opacity=0.4)
    ax.frame("1 / (1 - S)  (sparser →)", "feature dimensionality D_i", _log_ticks(*ax.xlim), [0, 0.25, 0.5, 0.75, 1])
    caption = ("Each represented feature's dimensionality D_i = ||W_i||² / Σ_j (Ŵ_i·W_j)²; they cluster at the "
               "fractions 1, 3/4, 2/3, 1/2, 2/5, 3/8 (lines). Orange: dimensions per feature. Hover a point.")
    write_text(path, page("Toy models: feature dimensionality", caption, ax.svg()))
    return path


def phase_html(phase: dict, path: Path) -> Path:
    r, dens = phase["relative_importance"], phase["density"]
    ex, ey = _edges(r), _edges(dens)  # cell edges: the axes end exactly at the outer cells
    ax = Axes(560, 460, (ex[0], ex[-1]), (ey[0], ey[-1]), xlog=True, ylog=True, pad=(60, 20, 20, 50))
    for i, row in enumerate(phase["phase"]):
        for j, ph in enumerate(row):
            x0, x1, y0, y1 = ax.x(ex[j]), ax.x(ex[j + 1]), ax.y(ey[i]), ax.y(ey[i + 1])
            w = phase["W"][i][j]
            tip = _tip(f"{ph}\nrelative importance {r[j]:.3g}, density {dens[i]:.3g}\nW = [{w[0]:+.2f}, {w[1]:+.2f}]")
            ax.add(f'<rect x="{x0:.1f}" y="{min(y0, y1):.1f}" width="{x1 - x0:.1f}" height="{abs(y1 - y0):.1f}" '
                   f'fill="{PHASE_COLORS[PHASES.index(ph)]}" stroke="#fff"{tip}/>')
    ax.frame("relative importance of the extra feature", "feature density 1 - S (sparser ↑)",
             _log_ticks(*sorted(ax.xlim)), _log_ticks(*sorted(ax.ylim)))
    legend = " ".join(f'<span style="background:{c};padding:2px 8px;margin-right:8px">{p}</span>'
                      for c, p in zip(PHASE_COLORS, PHASES))
    caption = ("n=2 features, m=1 dimension; feature 0 has importance 1, the extra feature the importance on the x "
               "axis. Each cell is one trained instance: hover it for its W.")
    write_text(path, page("Toy models: phase diagram", caption, ax.svg() + f"<p>{legend}</p>"))
    return path


def sae_html(rows: list[dict], path: Path, title: str) -> Path:
    rows = [r for r in rows if r["recovery"] is not None]
    xs = [1 / (1 - r["sparsity"]) for r in rows]
    lo = min(0.5, min((min(r["best_cosines"]) for r in rows), default=0.5)) - 0.02
    ax = Axes(640, 400, (min(xs) / 1.2, max(xs) * 1.2), (lo, 1.02), xlog=True, pad=(50, 40, 20, 45))
    ax.hline(0.9, "0.9")
    ax.polyline(list(zip(xs, [r["recovery"] for r in rows])), color="#08519c")
    for x, r in zip(xs, rows):
        ax.dot(x, r["recovery"], f"S = {r['sparsity']:.4f}: mean best-match cosine {r['recovery']:.3f}\n"
               f"worst feature {min(r['best_cosines']):.3f}; {r['represented']} represented features\n"
               f"SAE: d_sae {r['d_sae']}, k {r['k']}, FVU {r['fvu']:.3f}", "#08519c")
        ax.dot(x, min(r["best_cosines"]), f"S = {r['sparsity']:.4f}: worst feature {min(r['best_cosines']):.3f}",
               "#6baed6", r=3)
    ax.frame("1 / (1 - S)  (sparser →)", "cosine(W_i, best SAE decoder row)", _log_ticks(*ax.xlim),
             [v / 10 for v in range(math.ceil(lo * 10), 11)])
    caption = ("A Glasswork SAE trained on the toy model's hidden layer: for each true feature W_i, the best cosine "
               "with any decoder row; dark: mean over features, light: the worst feature. Hover a point.")
    write_text(path, page(title, caption, ax.svg()))
    return path
