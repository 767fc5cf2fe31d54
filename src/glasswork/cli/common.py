"""What every verb shares: --json, the one JSON object it prints, and bad input turned into one line and exit 2."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import sys
import typing

import typer
from rich.console import Console

from ..allocator import keep_freed_memory
from ..errors import GlassworkError

err = Console(stderr=True)
JSON_OPT = typer.Option(False, "--json", help="Print one machine-readable JSON object summarizing the result.")


def finite(obj):
    """A copy of a JSON-able summary with every non-finite float (NaN, +-inf) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def emit(summary: dict, as_json: bool, human: str | None = None) -> None:
    """Finish a verb: the JSON summary on stdout (with --json), or a readable text."""
    if as_json:  # NaN and Infinity are not JSON: a figure that is not finite is written as null
        sys.stdout.write(json.dumps(finite(summary), default=str, allow_nan=False) + "\n")
    else:
        err.print(human if human is not None else json.dumps(summary, indent=2, default=str))


def run_verb(fn):
    """Turn bad input into a clear one-line message and exit code 2, never a traceback: our own errors, and what the
    operating system says about files (read-only, full disk, missing permission) or a broken SQLite / safetensors file."""
    import sqlite3

    from rich.markup import escape  # a message may hold brackets ('hf:ORG/REPO[/PATH]'): text, not markup
    keep_freed_memory()  # every verb reuses large tensors step after step
    try:
        return fn()
    except GlassworkError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2)
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        err.print(f"[bold red]error:[/]{escape(where)}: {escape(str(e.strerror or e))}")
        raise typer.Exit(2)
    except sqlite3.Error as e:
        err.print(f"[bold red]error:[/] SQLite: {escape(str(e))}")
        raise typer.Exit(2)
    except Exception as e:  # safetensors raises its own error type for a truncated or foreign file
        if type(e).__name__ != "SafetensorError":
            raise
        err.print(f"[bold red]error:[/] safetensors: {escape(str(e))}")
        raise typer.Exit(2)


def field_docs(cls) -> dict[str, str]:
    """{field: its docstring} of a dataclass whose fields each have a string literal right after them."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def config_options(cls, parsers: dict, exclude: tuple = ()) -> list[inspect.Parameter]:
    """typer options derived from a config dataclass: one per field (name, type, default; help from its docstring).
    A list or tuple field is a comma-separated text option read by parsers[field]."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[f.name]
        if f.name in parsers:  # shown as the text a user types
            kind, default = str, ",".join(str(v) for v in default)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                        default=typer.Option(default, help=docs.get(f.name, ""))))
    return params


def config_from_options(cls, values: dict, parsers: dict):
    """The config dataclass from the values of config_options' options (the parsers turn text into lists)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: parsers[k](v) if k in parsers else v for k, v in values.items() if k in names})
