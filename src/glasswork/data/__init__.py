"""Data: corpora (text -> token contexts) and the activation store (harvest to disk, shuffled batches back)."""
from . import corpus
from .corpus import contexts
from .store import ActivationStore, harvest, stream_activations

__all__ = ["corpus", "contexts", "ActivationStore", "harvest", "stream_activations"]
