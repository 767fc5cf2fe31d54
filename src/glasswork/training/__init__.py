"""Training sparse dictionaries: config, loop, losses, checkpoints, distributed, data sources."""
from .sources import ModelSource, StoreSource, TensorSource
from .trainer import TrainConfig, Trainer, fold_scale, train
