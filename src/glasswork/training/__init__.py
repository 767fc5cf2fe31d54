"""Training sparse dictionaries: config, loop, losses, checkpoints, distributed, data sources. Names load on first use
(PEP 562), so `glasswork.training.config` can be read without torch."""
from __future__ import annotations

import importlib

_WHERE = {"ModelSource": ".sources", "StoreSource": ".sources", "TensorSource": ".sources",
          "TrainConfig": ".config", "Trainer": ".trainer", "fold_scale": ".trainer", "train": ".trainer",
          "finished": ".trainer"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'glasswork.training' has no attribute '{name}'")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
