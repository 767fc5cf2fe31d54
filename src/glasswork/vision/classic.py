"""The founding results of vision interpretability, as measurements on any ImageModel:

- first-layer filters classified as oriented (edge / Gabor-like), colour-contrast or other;
- orientation tuning to synthetic edges, bars and curves, with the orientation selectivity index (OSI);
- polysemanticity: the entropy of the image sources of a unit's top-activating patches;
- receptive fields, unit maxima over positions, and top patches (shared with the dictionary features)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..io import GlassworkError
from .models import ImageModel, capture


# ---- first-layer filters -------------------------------------------------------------------------------------------

def first_conv(model: ImageModel) -> nn.Conv2d:
    for mod in model.module.modules():
        if isinstance(mod, nn.Conv2d):
            return mod
    raise GlassworkError(f"{model.name}: has no Conv2d layer, so no first-layer filters to draw")


def _oriented_templates(size: int, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm odd (edge) and even (bar) templates per angle: [n_angles, size, size] each, zero mean."""
    c = (size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    u = xs[None].double() * torch.cos(angles)[:, None, None] + ys[None].double() * torch.sin(angles)[:, None, None]
    odd, even = u, u ** 2 - (u ** 2).mean(dim=(1, 2), keepdim=True)
    odd = odd / odd.flatten(1).norm(dim=1)[:, None, None]
    even = even / even.flatten(1).norm(dim=1)[:, None, None].clamp_min(1e-12)
    return odd, even


@dataclass
class FilterKinds:
    kinds: list[str]  # per filter: "oriented" | "colour-contrast" | "other"
    colour_share: torch.Tensor  # [n] energy of the colour (channel-deviation) part / total energy
    orientedness: torch.Tensor  # [n] best oriented fit minus the worst one, of the luminance part (0..1)
    orientation: torch.Tensor  # [n] radians in [0, pi): the best-fitting orientation (edge normal)

    def fractions(self) -> dict[str, float]:
        n = len(self.kinds)
        return {k: sum(x == k for x in self.kinds) / n for k in ("oriented", "colour-contrast", "other")}


def classify_filters(weight: torch.Tensor, colour_min: float = 0.5, oriented_min: float = 0.5) -> FilterKinds:
    """Classify conv filters weight [out, in, kh, kw] (RGB input: in = 3).

    colour-contrast: the channels disagree (the part left after removing each position's channel mean carries at
    least `colour_min` of the energy); oriented: the luminance part (mean over channels, its own mean removed) fits an
    oriented edge or bar template far better at one angle than at the orthogonal ones (best minus worst fit >=
    `oriented_min`); other: blobs, near-uniform and noisy filters."""
    w = weight.detach().double()
    lum = w.mean(dim=1)  # [out, kh, kw]
    colour = w - lum[:, None]
    energy = w.flatten(1).pow(2).sum(1).clamp_min(1e-30)
    colour_share = colour.flatten(1).pow(2).sum(1) / energy
    ac = lum - lum.mean(dim=(1, 2), keepdim=True)
    angles = torch.arange(12, dtype=torch.float64) * math.pi / 12
    odd, even = _oriented_templates(w.shape[-1], angles)
    fit = (torch.einsum("ohw,ahw->oa", ac, odd) ** 2 + torch.einsum("ohw,ahw->oa", ac, even) ** 2)
    fit = fit / ac.flatten(1).pow(2).sum(1).clamp_min(1e-30)[:, None]
    orientedness = fit.max(1).values - fit.min(1).values
    kinds = ["colour-contrast" if cs >= colour_min else "oriented" if o >= oriented_min else "other"
             for cs, o in zip(colour_share.tolist(), orientedness.tolist())]
    return FilterKinds(kinds, colour_share.float(), orientedness.float(), angles[fit.argmax(1)].float())


# ---- stimuli and tuning --------------------------------------------------------------------------------------------

def _grid(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    return xs.double(), ys.double()


def edges(size: tuple[int, int], angles: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """A light/dark step edge through the centre, its normal at each angle (0..2pi: both polarities): [n, h, w, c]."""
    xs, ys = _grid(size)
    u = xs[None] * torch.cos(angles.double())[:, None, None] + ys[None] * torch.sin(angles.double())[:, None, None]
    img = (0.5 + u).clamp(0, 1)  # one pixel of antialiasing
    return img[..., None].repeat(1, 1, 1, channels).float()


def bars(size: tuple[int, int], angles: torch.Tensor, width: float = 2.0, channels: int = 3) -> torch.Tensor:
    """A light bar on dark through the centre, its normal at each angle: [n, h, w, c]."""
    xs, ys = _grid(size)
    u = xs[None] * torch.cos(angles.double())[:, None, None] + ys[None] * torch.sin(angles.double())[:, None, None]
    img = (width / 2 + 0.5 - u.abs()).clamp(0, 1)
    return img[..., None].repeat(1, 1, 1, channels).float()


def curves(size: tuple[int, int], angles: torch.Tensor, radius: float, width: float = 2.0, span: float = 2 * math.pi / 3,
           channels: int = 3) -> torch.Tensor:
    """A light arc on dark (radius in pixels, `span` radians of circle), its midpoint at the centre and bulging
    towards each angle: [n, h, w, c]. radius inf: a straight segment as long as the arc of radius 8."""
    xs, ys = _grid(size)
    out = []
    for a in angles.double().tolist():
        dx, dy = math.cos(a), math.sin(a)
        if math.isinf(radius):
            along = -xs * dy + ys * dx
            dist = (xs * dx + ys * dy).abs()
            inside = along.abs() <= span * 8.0 / 2  # as long as the arc of radius 8
            img = ((width / 2 + 0.5 - dist).clamp(0, 1)) * inside
        else:
            cx, cy = -dx * radius, -dy * radius  # the circle's centre lies behind the bulge
            r = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt()
            theta = torch.atan2(ys - cy, xs - cx) - a
            theta = (theta + math.pi) % (2 * math.pi) - math.pi
            img = (width / 2 + 0.5 - (r - radius).abs()).clamp(0, 1) * (theta.abs() <= span / 2)
        out.append(img)
    return torch.stack(out)[..., None].repeat(1, 1, 1, channels).float()


@torch.no_grad()
def unit_maxima(model: ImageModel, hook: str, images: torch.Tensor, batch: int = 256,
                encode=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit's largest activation over positions, and where: ([n, units], [n, units] flat position index).

    `encode` maps rows [rows, d] to other units (a dictionary's codes) before the maximum."""
    values, where = [], []
    for i in range(0, images.shape[0], batch):
        _, acts = capture(model, images[i:i + batch], [hook])
        a = acts[hook]
        rows = a.reshape(a.shape[0], -1, a.shape[-1]) if a.dim() > 2 else a[:, None]
        if encode is not None:
            rows = encode(rows.reshape(-1, rows.shape[-1])).reshape(rows.shape[0], rows.shape[1], -1)
        v, idx = rows.max(dim=1)
        values.append(v)
        where.append(idx)
    return torch.cat(values), torch.cat(where)


def osi(responses: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Orientation selectivity index |sum r e^{2i theta}| / sum r of responses [units, n_angles] (0: flat, 1: one
    orientation); negative responses are clipped to 0."""
    r = responses.clamp_min(0).double()
    z = (r * torch.exp(2j * angles.double())[None]).sum(1).abs()
    return (z / r.sum(1).clamp_min(1e-12)).float()


def preferred_orientation(responses: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """The vector-averaged orientation of responses [units, n_angles], radians in [0, pi)."""
    r = responses.clamp_min(0).double()
    z = (r * torch.exp(2j * angles.double())[None]).sum(1)
    return ((torch.angle(z) / 2) % math.pi).float()


def orientation_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest difference between orientations (radians, mod pi): in [0, pi/2]."""
    d = (a - b).abs() % math.pi
    return torch.minimum(d, math.pi - d)


@dataclass
class Tuning:
    hook: str
    angles: torch.Tensor  # [n_angles] radians over 0..2pi
    edge: torch.Tensor  # [units, n_angles] max response to each edge
    bar: torch.Tensor  # [units, n_angles]
    curve: dict[float, torch.Tensor]  # radius -> [units, n_angles] (inf: straight segments)
    edge_osi: torch.Tensor  # [units]
    edge_orientation: torch.Tensor  # [units] radians in [0, pi)
    bar_orientation: torch.Tensor
    consistent: torch.Tensor  # [units] bool: edges and bars give the same orientation (within 22.5 degrees)
    curvature: torch.Tensor  # [units] best arc response / best straight-segment response

    def detectors(self, min_osi: float = 0.3, min_response: float = 0.1) -> dict[str, list[int]]:
        """Units with sharp, consistent edge tuning; and curve units (arcs beat segments 1.5x, sharp in direction).
        A unit counts only if its best stimulus response is at least `min_response` x the layer's median best one."""
        best = torch.stack([self.edge.amax(1), self.bar.amax(1)] + [v.amax(1) for v in self.curve.values()]).amax(0)
        alive = best >= min_response * best.median()
        edge = (self.edge_osi >= min_osi) & self.consistent & alive
        arcs = torch.stack([v for r, v in self.curve.items() if not math.isinf(r)]).max(0).values  # [units, angles]
        direction = (arcs.clamp_min(0) * torch.exp(1j * self.angles.double())[None]).sum(1).abs() / arcs.clamp_min(
            0).sum(1).clamp_min(1e-12)
        curve = (self.curvature >= 1.5) & (direction >= min_osi) & alive
        return {"edge": edge.nonzero().flatten().tolist(), "curve": curve.nonzero().flatten().tolist()}


def tuning(model: ImageModel, hook: str, n_angles: int = 24, radii: tuple[float, ...] = (3.0, 5.0, 8.0, math.inf),
           encode=None) -> Tuning:
    """Responses of every unit at `hook` (max over positions) to edges, bars and arcs at `n_angles` angles."""
    angles = torch.arange(n_angles, dtype=torch.float64) * 2 * math.pi / n_angles
    size, ch = model.image_size, model.channels
    resp = lambda imgs: unit_maxima(model, hook, imgs, encode=encode)[0].T.contiguous()  # noqa: E731
    edge, bar = resp(edges(size, angles, ch)), resp(bars(size, angles, channels=ch))
    curve = {r: resp(curves(size, angles, r, channels=ch)) for r in radii}
    e_or, b_or = preferred_orientation(edge, angles), preferred_orientation(bar, angles)
    arcs = torch.stack([v for r, v in curve.items() if not math.isinf(r)]).amax(dim=(0, 2))
    straight = curve[math.inf].amax(1) if math.inf in curve else bar.amax(1)
    return Tuning(hook, angles.float(), edge, bar, curve, osi(edge, angles), e_or, b_or,
                  orientation_gap(e_or, b_or) <= math.pi / 8, arcs / straight.clamp_min(1e-6))


# ---- polysemanticity -----------------------------------------------------------------------------------------------

def top_patches(maxima: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each unit's k top-activating patches: maxima [n, units] -> [units, k]."""
    if k > maxima.shape[0]:
        raise GlassworkError(f"top patches: k={k} is more than the {maxima.shape[0]} patches")
    return maxima.topk(k, dim=0).indices.T


def source_entropy(top: torch.Tensor, source: torch.Tensor, n_sources: int) -> torch.Tensor:
    """Polysemanticity score: entropy (bits) of the source labels of each unit's top patches, top [units, k] -> [units].
    0: every top patch comes from one source; log2(min(k, n_sources)): spread evenly."""
    labels = source[top]  # [units, k]
    counts = torch.zeros(top.shape[0], n_sources, dtype=torch.float64).scatter_add_(
        1, labels, torch.ones_like(labels, dtype=torch.float64))
    p = counts / counts.sum(1, keepdim=True)
    return -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(1).float()


def weighted_source_entropy(maxima: torch.Tensor, source: torch.Tensor, n_sources: int) -> torch.Tensor:
    """Polysemanticity over a unit's whole response: entropy (bits) of p(source) proportional to the unit's summed
    activation on each source's patches, maxima [n, units] -> [units]. Counts every patch it fires on, weakly or not:
    log2(n_sources) for a unit answering equally to every source, 0 for one source only."""
    a = maxima.clamp_min(0).double()
    mass = torch.zeros(a.shape[1], n_sources, dtype=torch.float64).index_add_(1, source, a.T)
    p = mass / mass.sum(1, keepdim=True).clamp_min(1e-30)
    return -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(1).float()


@torch.no_grad()
def receptive_field(model: ImageModel, hook: str, position: tuple[int, int], seed: int = 0) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel box, inclusive, that the activation at `position` (row, col) of a conv
    `hook` depends on: where the gradient of that position's channel sum is non-zero on random images."""
    h, w = model.image_size
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(4, h, w, model.channels, generator=g).requires_grad_(True)
    with torch.enable_grad():
        _, acts = capture(model, imgs, [hook], detach=False)
        a = acts[hook]
        if a.dim() != 4:
            raise GlassworkError(f"{model.name}: hook '{hook}' is not a conv map [batch, h, w, c] (shape {tuple(a.shape)})")
        a[:, position[0], position[1]].sum().backward()
    mask = imgs.grad.abs().sum(dim=(0, 3)) > 0
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])
