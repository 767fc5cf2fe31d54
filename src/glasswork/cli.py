"""`glasswork VERB`: one subcommand per verb, each a thin face on the Python API.

Every verb takes --json: it then prints exactly one JSON object on stdout (paths, counts, metrics, seconds)
and sends progress bars and human text to stderr."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .io import GlassworkError

app = typer.Typer(help="Glasswork: open a language model up.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Glasswork: open a language model up."""
JSON_OPT = typer.Option(False, "--json", help="Print one machine-readable JSON object summarizing the result.")


def emit(summary: dict, as_json: bool, human: str | None = None) -> None:
    """Finish a verb: the JSON summary on stdout (with --json), or a readable text."""
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        err.print(human if human is not None else json.dumps(summary, indent=2, default=str))


def run_verb(fn):
    """Turn GlassworkError into a clear one-line message and exit code 2, never a traceback."""
    try:
        return fn()
    except GlassworkError as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)


@app.command()
def info(model: Optional[str] = typer.Option(None, help="Model name or folder (default: smollm2-135m)."),
         as_json: bool = JSON_OPT):
    """Load a model and list its hook points."""
    def go():
        from . import hook_points, load_model
        t0 = time.time()
        m = load_model(model)
        names = hook_points(m)
        summary = {"model": m.name, "model_type": m.hf.config.model_type, "n_layers": m.n_layers,
                   "d_model": m.d_model, "d_mlp": m.d_mlp, "vocab_size": m.vocab_size,
                   "n_hook_points": len(names), "hook_points_layer0": [n for n in names if n.startswith("blocks.0.")],
                   "seconds": round(time.time() - t0, 2)}
        emit(summary, as_json)
    run_verb(go)


def main():
    app()


if __name__ == "__main__":
    main()
