"""Glasswork: open a language model up. `import glasswork as gw`."""
__version__ = "0.1.0"

from .hooks import add, capture, hook_points, hooks, intervene, replace
from .io import GlassworkError, home
from .models import DEFAULT_MODEL, Model, load_model
from .dictionaries import DictionaryConfig, SparseCoder, CrossLayerTranscoder
from .dictionaries import load as load_dictionary, save as save_dictionary, load_set, save_set, load_transcoders

