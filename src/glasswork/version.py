"""The package version (base layer: every artifact records it; imports nothing)."""
__version__ = "0.1.0"
