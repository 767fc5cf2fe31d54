"""The web app: `glasswork serve` (graph viewer, feature browser, steering playground, attribution on demand)."""
from .app import create_app, serve
