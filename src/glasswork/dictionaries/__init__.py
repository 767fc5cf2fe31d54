"""One family of sparse dictionaries: SAE, transcoder (optionally with skip), cross-layer transcoder."""
from .activations import ACTIVATIONS
from .clt import CrossLayerTranscoder
from .coder import KINDS, DictionaryConfig, SparseCoder
from .saving import Dictionary, build, load, load_set, load_transcoders, save, save_set
