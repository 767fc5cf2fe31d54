"""The one error type glasswork raises for things a user can act on (imports nothing, so every layer can use it)."""


class GlassworkError(Exception):
    """An error a user can act on: the message names the file, the field and what was expected."""
