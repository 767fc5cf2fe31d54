"""Glasswork: open a language model up. `import glasswork as gw`.

The names below load on first use (PEP 562), so `import glasswork` and the CLI's --help import no torch. Submodules
keep their own names: `gw.hooks`, `gw.demo`, `gw.toy`, ... are modules (the function `hooks` is `gw.hooks.hooks`)."""
from __future__ import annotations

import importlib

from .version import __version__

# public name -> the module it lives in (relative to the package)
_NAMES = {
    ".hooks": ["add", "capture", "hook_points", "intervene", "replace"],
    ".io": ["home"],
    ".errors": ["GlassworkError"],
    ".models": ["DEFAULT_MODEL", "Model", "load_model"],
    ".dictionaries": ["DictionaryConfig", "SparseCoder", "CrossLayerTranscoder", "load_set", "save_set",
                      "load_transcoders"],
    ".steering": ["Intervention", "add_direction", "clamp_feature", "project_out", "steer", "zero_feature"],
    ".directions": ["Direction", "analogy", "directional_ablation", "feature_direction", "load_direction",
                    "mean_difference", "orthogonalize", "train_probe"],
    ".features": ["FeatureIndex", "build_index", "fires", "label_features"],
    ".circuits": ["Edit", "Graph", "ReplacementModel", "attribute", "intervene_logits", "load_graph", "supernode"],
    ".training": ["TrainConfig", "train"],
    ".evals": ["evaluate"],
    ".dictionaries.formats": ["export_saelens", "import_saelens", "export_circuit_tracer"],
    ".data": ["ActivationStore", "harvest", "stream_activations", "corpus"],
}
_RENAMED = {"load_dictionary": (".dictionaries", "load"), "save_dictionary": (".dictionaries", "save")}
_SUBMODULES = ["circuits", "data", "demo", "dictionaries", "directions", "evals", "features", "hooks", "io", "models",
               "precision", "steering", "toy", "training"]
_WHERE = {name: (module, name) for module, names in _NAMES.items() for name in names} | _RENAMED

__all__ = sorted(_WHERE) + _SUBMODULES


def __getattr__(name: str):
    if name in _WHERE:
        module, attr = _WHERE[name]
        value = getattr(importlib.import_module(module, __name__), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'glasswork' has no attribute '{name}'")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
