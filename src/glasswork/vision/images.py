"""Images without a download: the photographs scikit-image ships, its LFW face subset and scikit-learn's digits,
cut into a seeded corpus of square patches, each labelled with the image (source) it came from.

A patch is a random square crop (side 25-100% of the image's shorter side), resized to the model's size, flipped at
random; grey images are repeated over three channels. Pixels are floats in 0..1, [n, h, w, c]."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..io import GlassworkError

# scikit-image's bundled photographs used as sources (each its own label)
PHOTOS = ["astronaut", "brick", "camera", "cat", "coffee", "coins", "colorwheel", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "logo", "moon", "motorcycle", "page", "retina", "rocket", "text",
          "cell", "horse", "clock"]


@dataclass
class Patches:
    """A labelled image corpus: pixels [n, h, w, c] in 0..1 and the index of each patch's source."""

    pixels: torch.Tensor  # [n, h, w, c]
    source: torch.Tensor  # [n] index into `sources`
    sources: list[str]
    boxes: torch.Tensor  # [n, 4] (top, left, side, flipped) of the crop in its source image

    def __len__(self) -> int:
        return self.pixels.shape[0]


def source_images() -> dict[str, np.ndarray]:
    """{name: float image [h, w, 3] in 0..1}: the photographs, plus one 'faces' and one 'digits' mosaic source."""
    try:
        from skimage import data
    except ImportError:
        raise GlassworkError("vision needs scikit-image for its bundled photographs: pip install 'glasswork[vision]'") from None
    out = {}
    for name in PHOTOS:
        img = getattr(data, {"motorcycle": "stereo_motorcycle"}.get(name, name))()
        if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
            img = img[0]
        out[name] = _rgb(img)
    return out


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else (1.0 if img.max() <= 1 else img.max()))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def small_images() -> dict[str, np.ndarray]:
    """The two collections of small images, each used whole (resized) rather than cropped: {name: [n, h, w, 3]}."""
    from skimage import data
    faces = data.lfw_subset()  # [200, 25, 25] grey, 0..1
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise GlassworkError("vision needs scikit-learn for its digits: pip install 'glasswork[vision]'") from None
    digits = load_digits().images / 16.0  # [1797, 8, 8]
    return {"faces": np.repeat(faces[..., None], 3, axis=3).astype(np.float32),
            "digits": np.repeat(digits[..., None], 3, axis=3).astype(np.float32)}


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[n, h, w, c] -> [n, size[0], size[1], c] by area-aware bilinear resampling (antialiased)."""
    x = images.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def patches(n_per_source: int, size: tuple[int, int] = (32, 32), seed: int = 0,
            sources: list[str] | None = None) -> Patches:
    """`n_per_source` random patches of each source (photos cropped; faces and digits drawn whole)."""
    if n_per_source < 1:
        raise GlassworkError(f"patches: n_per_source must be at least 1 (got {n_per_source})")
    rng = np.random.default_rng(seed)
    photos, small = source_images(), small_images()
    names = sources or list(photos) + list(small)
    unknown = [s for s in names if s not in photos and s not in small]
    if unknown:
        raise GlassworkError(f"patches: unknown source(s) {unknown}; known: {list(photos) + list(small)}")
    pixels, labels, boxes = [], [], []
    for si, name in enumerate(names):
        for _ in range(n_per_source):
            flip = bool(rng.integers(2))
            if name in photos:
                img = photos[name]
                h, w = img.shape[:2]
                side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
                top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                crop = img[top:top + side, left:left + side]
            else:
                idx = int(rng.integers(len(small[name])))
                crop, (top, left, side) = small[name][idx], (idx, 0, small[name].shape[1])
            t = resize(torch.from_numpy(np.ascontiguousarray(crop))[None], size)[0]
            pixels.append(t.flip(1) if flip else t)
            labels.append(si)
            boxes.append((top, left, side, int(flip)))
    return Patches(torch.stack(pixels), torch.tensor(labels), names, torch.tensor(boxes))
