"""Image networks with named hook points: capture and intervene with the same API as text.

One convention for every image model: an image batch is a float tensor [batch, h, w, channels] with pixels in 0..1;
`ImageModel.prepare` turns it into what the network reads (NCHW, its own pixel scale and normalization). Hook values:
  conv layers   [batch, h, w, channels]   (the module's NCHW output, moved so a row is one position's channels)
  ViT tokens    [batch, tokens, d]
  dense layers  [batch, d]
Three ways in: `from_module` (any torch.nn.Module with a map of hook names to module paths), `load_hf_vision` (a local
Hugging Face folder: ViT, CLIP's vision tower, DINOv2, ConvNeXt, ResNet) and `vision.keras.load_cifar_cnn` (a
pretrained Keras CNN converted once into the cache)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from ..hooks import _first, _replace_first
from ..io import GlassworkError

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass
class ImageModel:
    """An image network and the names of its hook points."""

    module: nn.Module
    points: dict[str, str]  # hook name -> dotted path of the module whose output it is
    image_size: tuple[int, int]  # (h, w) the network reads
    channels: int = 3
    pixel_scale: float = 1.0  # the network's value for a white pixel (255 for a net trained on raw bytes)
    mean: tuple[float, ...] = ()  # per-channel normalization after scaling (empty: none)
    std: tuple[float, ...] = ()
    classes: list[str] = field(default_factory=list)  # output names, when the output is class scores
    name: str = "image-model"

    def __post_init__(self):
        self.module.eval()
        self.module.requires_grad_(False)  # a frozen network: gradients flow to inputs (visualization) only
        for hook, path in self.points.items():
            _module(self, hook, path)  # a map naming a module that is not there fails here, not at first use

    def check(self, images: torch.Tensor) -> torch.Tensor:
        """Refuse a batch of the wrong rank, size or channel count with what was expected."""
        h, w = self.image_size
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise GlassworkError(f"{self.name}: images must be a tensor [batch, {h}, {w}, {self.channels}] with "
                                 f"pixels in 0..1 (got {got})")
        if tuple(images.shape[1:]) != (h, w, self.channels):
            raise GlassworkError(f"{self.name}: images must be {h}x{w} with {self.channels} channel(s) "
                                 f"[batch, {h}, {w}, {self.channels}]; got {tuple(images.shape[1:])} "
                                 f"(resize with glasswork.vision.images.resize)")
        return images

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[batch, h, w, c] in 0..1 -> the network's input [batch, c, h, w]."""
        x = self.check(images).float().permute(0, 3, 1, 2) * self.pixel_scale
        if self.mean:
            x = (x - torch.tensor(self.mean).view(1, -1, 1, 1)) / torch.tensor(self.std).view(1, -1, 1, 1)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The network's output for images [batch, h, w, c] (class scores: [batch, n_classes])."""
        return _output(self.module(self.prepare(images)))

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(images), dim=-1)

    def hook_points(self) -> list[str]:
        return list(self.points)


def _output(out):
    """Class scores from whatever the module returns (a tensor, an HF ModelOutput, a tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "pooler_output", "last_hidden_state"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    return _first(out)


def _module(model: ImageModel, hook: str, path: str) -> nn.Module:
    mod = model.module
    for part in path.split(".") if path else []:
        if not hasattr(mod, part):
            raise GlassworkError(f"{model.name}: hook point '{hook}' names module '{path}', which the network does not "
                                 f"have ('{part}' missing); its top-level modules: "
                                 f"{[n for n, _ in model.module.named_children()]}")
        mod = getattr(mod, part)
    return mod


def _exposed(act: torch.Tensor) -> torch.Tensor:
    """A module's output as the hook shows it: NCHW conv maps become [batch, h, w, c]."""
    return act.permute(0, 2, 3, 1) if act.dim() == 4 else act


def _internal(new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return new.permute(0, 3, 1, 2) if like.dim() == 4 else new


def _hook_module(model: ImageModel, name: str) -> nn.Module:
    if name not in model.points:
        raise GlassworkError(f"{model.name}: no hook point '{name}'; it has {model.hook_points()}")
    return _module(model, name, model.points[name])


@contextmanager
def hooks(model: ImageModel, fns: Mapping[str, HookFn] | list[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach act -> new act (or None) functions at hook points for a `with` block; acts in the exposed layout."""
    items = list(fns.items()) if isinstance(fns, Mapping) else list(fns)
    handles = []

    def wrap(fn):
        def hook(module, args, output):
            act = _first(output)
            new = fn(_exposed(act))
            return None if new is None else _replace_first(output, _internal(new, act))
        return hook

    try:
        for name, fn in items:
            handles.append(_hook_module(model, name).register_forward_hook(wrap(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


def capture(model: ImageModel, images: torch.Tensor, names: list[str],
            detach: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass recording `names`: (output, {name: activation in the exposed layout})."""
    cache: dict[str, torch.Tensor] = {}

    def saver(key):
        def fn(act):
            cache[key] = act.detach() if detach else act
        return fn

    with hooks(model, [(n, saver(n)) for n in names]):
        out = model.forward(images)
    return out, cache


@contextmanager
def intervene(model: ImageModel, edits: Mapping[str, HookFn] | list[tuple[str, HookFn]]) -> Iterator[None]:
    """Change activations during any forward pass inside the block (edits see the exposed layout)."""
    with hooks(model, edits):
        yield


def from_module(module: nn.Module, points: dict[str, str], image_size: tuple[int, int], channels: int = 3,
                **kwargs) -> ImageModel:
    """Any torch.nn.Module taking [batch, c, h, w]: `points` maps hook names to dotted module paths."""
    return ImageModel(module, dict(points), tuple(image_size), channels, **kwargs)


VISION_TYPES = {"vit", "deit", "dinov2", "clip_vision_model", "siglip_vision_model", "convnext", "resnet"}


def _layer_list(hf: nn.Module) -> str:
    """The dotted name of the model's list of layers (ViT blocks, ConvNeXt / ResNet stages): the outermost
    ModuleList named layer, layers or stages (names differ across transformers versions)."""
    names = [n for n, m in hf.named_modules() if isinstance(m, nn.ModuleList) and n.split(".")[-1] in
             ("layer", "layers", "stages")]
    if not names:
        raise GlassworkError(f"{type(hf).__name__}: found no list of layers (layer / layers / stages) to hook")
    return min(names, key=lambda n: n.count("."))


def load_hf_vision(folder: str | Path) -> ImageModel:
    """A Hugging Face vision model from a local folder (config.json + weights, preprocessor_config.json if present).

    Hook points: `blocks.{l}.hook_resid_post` (a ViT layer's tokens, or a ConvNeXt/ResNet stage's map)."""
    import json

    import transformers
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise GlassworkError(f"{folder}: not a Hugging Face model folder (no config.json)")
    cfg = transformers.AutoConfig.from_pretrained(folder)
    towers = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}  # a whole CLIP / SigLIP: its image tower
    if cfg.model_type not in VISION_TYPES | set(towers):
        raise GlassworkError(f"{folder}: model_type '{cfg.model_type}' is not a vision architecture glasswork maps "
                             f"(known: {sorted(VISION_TYPES | set(towers))})")
    if cfg.model_type in towers:
        hf = getattr(transformers, towers[cfg.model_type]).from_pretrained(folder)
        cfg = hf.config
    else:
        try:
            hf = transformers.AutoModelForImageClassification.from_pretrained(folder)
        except (ValueError, KeyError):  # a bare encoder (CLIP's vision tower, DINOv2 without a head)
            hf = transformers.AutoModel.from_pretrained(folder)
    path = _layer_list(hf)
    layers = hf.get_submodule(path)
    pre = json.loads((folder / "preprocessor_config.json").read_text()) if (
        folder / "preprocessor_config.json").exists() else {}
    size = getattr(cfg, "image_size", None) or pre.get("crop_size", pre.get("size", 224))
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    channels = getattr(cfg, "num_channels", 3)
    mean, std = pre.get("image_mean", [0.5] * channels), pre.get("image_std", [0.5] * channels)
    labels = getattr(cfg, "id2label", None) or {}
    classes = [labels[i] for i in sorted(labels)] if hasattr(hf, "classifier") else []
    module = _PixelValues(hf)
    points = {f"blocks.{i}.hook_resid_post": f"hf.{path}.{i}" for i in range(len(layers))}
    return ImageModel(module, points, (int(size), int(size)), channels, 1.0, tuple(mean), tuple(std), classes,
                      name=f"{cfg.model_type}:{folder.name}")


class _PixelValues(nn.Module):
    """HF vision models take pixel_values=...; this lets them be called like any module."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x):
        return self.hf(pixel_values=x)
