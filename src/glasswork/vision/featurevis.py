"""Feature visualization by optimization (activation maximization, as in lucid): an image, parametrized in Fourier
space with a 1/f spectrum (the frequency prior), pushed through a sigmoid into 0..1, optimized with Adam to raise one
unit's (or dictionary feature's) activation while it is jittered and rescaled at random every step (so the result
does not depend on exact pixel positions), with an L2 penalty on high-frequency energy."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..io import GlassworkError
from .models import ImageModel, capture


@dataclass
class Visualization:
    image: torch.Tensor  # [h, w, c] in 0..1: the best image of those checked every 16 steps
    activation: float  # the target's activation on it (max over positions, no jitter)
    history: list[float]  # the (jittered) objective every 16 steps


def _frequencies(h: int, w: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return (fx ** 2 + fy ** 2).sqrt()  # [h, w // 2 + 1]


def _target_values(acts: torch.Tensor, unit: int, encode) -> torch.Tensor:
    """The target's activation at every position: acts [b, ..., d] -> [b, positions]."""
    rows = acts.reshape(acts.shape[0], -1, acts.shape[-1])
    if encode is None:
        return rows[..., unit]
    return encode(rows)[..., unit]


def visualize(model: ImageModel, hook: str, unit: int, steps: int = 256, lr: float = 0.05, seed: int = 0,
              jitter: int = 2, scale: tuple[float, float] = (0.9, 1.1), freq_penalty: float = 1e-3,
              decay: float = 1.0, encode=None, objective: str = "center", optimize_at: str | None = None,
              optimize_encode=None) -> Visualization:
    """Optimize an image for unit `unit` at `hook` (a channel; with `encode`, a dictionary feature of the hook's
    rows). objective: "center" (the middle position, the lucid 'neuron') | "max" (the best position) | "mean".

    A ReLU unit at zero has no gradient, so the objective can be read before the nonlinearity: `optimize_at` (a hook
    point such as 'conv2d_3.pre') and `optimize_encode` (e.g. a dictionary's pre_acts); the reported activation is
    always the one at `hook` through `encode`."""
    if objective not in ("center", "max", "mean"):
        raise GlassworkError(f"visualize: objective must be center, max or mean (got '{objective}')")
    if steps < 1:
        raise GlassworkError(f"visualize: steps must be at least 1 (got {steps})")
    h, w = model.image_size
    c = model.channels
    g = torch.Generator().manual_seed(seed)
    freqs = _frequencies(h, w)
    spectrum_scale = 1.0 / freqs.clamp_min(1.0 / max(h, w)) ** decay  # [h, w//2+1]
    spectrum_scale = spectrum_scale / spectrum_scale.max()
    param = (torch.randn(1, c, h, w // 2 + 1, 2, generator=g) * 0.5).requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    # constant, then linear decay to 0 over the second half: late steps settle instead of jumping between optima
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, 2.0 * (1 - i / steps)))

    def image() -> torch.Tensor:
        spec = torch.view_as_complex(param) * spectrum_scale
        x = torch.fft.irfft2(spec, s=(h, w), norm="ortho")  # [1, c, h, w]
        return torch.sigmoid(x * 4.0).permute(0, 2, 3, 1)  # [1, h, w, c]

    at, at_encode = optimize_at or hook, optimize_encode or encode

    def value(img: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            _, acts = capture(model, img, [at], detach=False)
        v = _target_values(acts[at], unit, at_encode)  # [1, positions]
        if objective == "center":
            a = acts[at]
            if a.dim() == 4:  # positions are (row, col): the middle one of the map
                return v.view(a.shape[0], a.shape[1], a.shape[2])[:, a.shape[1] // 2, a.shape[2] // 2]
            return v[:, v.shape[1] // 2]
        return v.max(1).values if objective == "max" else v.mean(1)

    history: list[float] = []
    best: tuple[torch.Tensor, float] | None = None

    def reported(img: torch.Tensor) -> float:
        _, acts = capture(model, img, [hook])
        return float(_target_values(acts[hook], unit, encode).max())
    for step in range(steps):
        img = image()
        # random rescale then a random shift, both back to the model's size
        s = float(scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g))
        x = img.permute(0, 3, 1, 2)
        if s != 1.0:
            x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            x = _fit(x, h, w)
        dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=g).tolist() if jitter else (0, 0))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3)).permute(0, 2, 3, 1)
        with torch.enable_grad():
            obj = value(x).mean()
            spec = torch.view_as_complex(param)
            penalty = (spec.abs() ** 2 * (freqs * max(h, w)) ** 2).mean()
            loss = -obj + freq_penalty * penalty
            opt.zero_grad()
            loss.backward()
        opt.step()
        sched.step()
        if step % 16 == 15 or step == steps - 1:  # the image as it stands, unjittered: keep the best one seen
            history.append(float(obj.detach()))
            with torch.no_grad():
                now = image()
                act = reported(now)
            if best is None or act > best[1]:
                best = (now[0].detach(), act)
    return Visualization(best[0], best[1], history)


def _fit(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centre-crop or reflect-pad [b, c, H, W] to [b, c, h, w]."""
    H, W = x.shape[-2:]
    if H >= h:
        top, left = (H - h) // 2, (W - w) // 2
        return x[..., top:top + h, left:left + w]
    ph, pw = h - H, w - W
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")
