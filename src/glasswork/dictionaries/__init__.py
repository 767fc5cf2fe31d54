"""One family of sparse dictionaries: SAE, transcoder and cross-layer transcoder (both optionally with a skip)."""
from .activations import ACTIVATIONS
from .clt import CrossLayerTranscoder
from .coder import KINDS, DictionaryConfig, SparseCoder
from .saving import Dictionary, build, load, load_set, load_transcoders, save, save_set
