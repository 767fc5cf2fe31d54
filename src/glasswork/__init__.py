"""Glasswork: open a language model up. `import glasswork as gw`."""
from .hooks import add, capture, hook_points, hooks, intervene, replace
from .io import GlassworkError, home
from .models import DEFAULT_MODEL, Model, load_model

__version__ = "0.1.0"
