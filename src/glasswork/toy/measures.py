"""Numbers read off trained toy models: the 2-D geometry (norms, angles, polygon), the dims-per-feature plateau, how
per-feature dimensionalities cluster at the paper's fractions, and the n=2, m=1 phase of each instance."""
from __future__ import annotations

import math

import torch

REPRESENTED = 0.5  # a feature is represented when its column of W has at least this norm (learned ones are ~1)
FRACTIONS = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8)  # tetrahedron 3/4, triangle 2/3, digon 1/2, pentagon 2/5, square antiprism 3/8
PHASES = ("not learned", "dedicated dimension", "superposition")


def geometry_2d(W: torch.Tensor) -> dict:
    """W [2, n] of one instance -> norms [n], angles in degrees [n], the represented features, and the angular gaps
    between neighbouring represented features (degrees, sorted around the circle; they sum to 360)."""
    W = W.double()
    norms = W.norm(dim=0)
    angles = torch.rad2deg(torch.atan2(W[1], W[0]))
    rep = (norms > REPRESENTED).nonzero().flatten()
    around = angles[rep].sort().values
    gaps = torch.diff(torch.cat([around, around[:1] + 360])) if len(rep) > 1 else torch.tensor([], dtype=torch.double)
    return {"norms": norms.tolist(), "angles": angles.tolist(), "represented": rep.tolist(),
            "gaps": gaps.tolist(), "n_represented": len(rep)}


def polygon_error(gaps: list[float]) -> float:
    """Largest deviation (degrees) of the gaps from a regular polygon's 360/len(gaps)."""
    return max(abs(g - 360 / len(gaps)) for g in gaps) if gaps else float("inf")


def plateau(x: list[float], dpf: list[float], ratio: float = 1.1, below: float = 0.9) -> dict | None:
    """The flattest stretch of a dims-per-feature curve once superposition starts (dpf < `below`): the longest run of
    at least 3 consecutive points (in order of x) whose largest value is within `ratio` of its smallest (a plateau is
    flat relative to its height). None if there is none."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    xs, ys = [x[i] for i in order], [dpf[i] for i in order]
    best = None
    for a in range(len(ys)):
        if ys[a] >= below:
            continue
        b = a
        while b + 1 < len(ys) and ys[b + 1] < below and max(ys[a:b + 2]) <= ratio * min(ys[a:b + 2]):
            b += 1
        if b - a + 1 >= 3 and (best is None or b - a > best[1] - best[0]):
            best = (a, b)
    if best is None:
        return None
    a, b = best
    vals = ys[a:b + 1]
    return {"x_from": xs[a], "x_to": xs[b], "points": b - a + 1, "mean": sum(vals) / len(vals),
            "min": min(vals), "max": max(vals)}


def fraction_clustering(dims: torch.Tensor, norms: torch.Tensor, tol: float = 0.04) -> dict:
    """dims, norms [inst, n]: per-feature dimensionalities and ||W_i||. Of the represented features (norm > 0.5), the
    share within `tol` of one of the paper's fractions, and the count nearest each fraction."""
    d = dims[norms > REPRESENTED].double()
    if d.numel() == 0:
        return {"represented": 0, "near_a_fraction": 0.0, "counts": {}}
    frac = torch.tensor(FRACTIONS, dtype=torch.double)
    dist = (d[:, None] - frac[None, :]).abs()  # [features, fractions]
    nearest = dist.argmin(-1)
    close = dist.min(-1).values <= tol
    counts = {_name(f): int((close & (nearest == j)).sum()) for j, f in enumerate(FRACTIONS)}
    return {"represented": d.numel(), "near_a_fraction": float(close.double().mean()), "tolerance": tol,
            "counts": counts}


def _name(f: float) -> str:
    if math.isclose(f, 1.0):
        return "1"
    for num in range(1, 9):
        for den in range(1, 9):
            if math.isclose(num / den, f):
                return f"{num}/{den}"
    return f"{f:g}"


def phase_2_1(W: torch.Tensor) -> list[str]:
    """W [inst, 1, 2] of n=2, m=1 models (feature 0 has importance 1, feature 1 the varied one) -> the phase of the
    extra feature 1 per instance: not learned, dedicated dimension (it alone owns the one dimension), or
    superposition (both features share it, antipodally)."""
    w = W[:, 0, :].abs()  # [inst, 2]
    on = w > REPRESENTED
    return [PHASES[2] if a and b else PHASES[1] if b else PHASES[0] for a, b in on.tolist()]
