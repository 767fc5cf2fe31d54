"""Verbs on the model itself and the whole job: info, steer, direction, demo, serve."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import GlassworkError
from .common import JSON_OPT, emit, err, run_verb


def info(model: Optional[str] = typer.Option(None, help="Model name or folder (default: smollm2-135m)."),
         as_json: bool = JSON_OPT):
    """Load a model and list its hook points."""
    def go():
        from ..hooks import hook_points
        from ..models import load_model
        t0 = time.time()
        m = load_model(model)
        names = hook_points(m)
        summary = {"model": m.name, "model_type": m.hf.config.model_type, "n_layers": m.n_layers,
                   "d_model": m.d_model, "d_mlp": m.d_mlp, "vocab_size": m.vocab_size,
                   "n_hook_points": len(names), "hook_points_layer0": [n for n in names if n.startswith("blocks.0.")],
                   "seconds": round(time.time() - t0, 2)}
        emit(summary, as_json)
    run_verb(go)


def steer(prompt: str = typer.Option(..., help="Text to complete."),
          feature: Optional[str] = typer.Option(None, help="Dictionary feature to clamp, as LAYER/INDEX (with --dictionary)."),
          dictionary: Optional[Path] = typer.Option(None, help="Dictionary folder (or set folder) the feature is from."),
          clamp: str = typer.Option("10x", help="Value for --feature: a number, or Nx = N times its max activation."),
          direction: Optional[Path] = typer.Option(None, help="Direction file (from `glasswork direction`)."),
          add: Optional[float] = typer.Option(None, "--add", help="Add this multiple of --direction at its hook."),
          ablate: bool = typer.Option(False, help="Project --direction out of every layer (directional ablation)."),
          hook: Optional[str] = typer.Option(None, help="Hook point for --add (default: the direction's own)."),
          positions: str = typer.Option("all", help="Where to edit: all, prompt or generated."),
          seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Sampling seed (the same for baseline and steered)."),
          max_new_tokens: int = typer.Option(40, min=1, max=2000, help="Tokens to generate."),
          temperature: float = typer.Option(0.7, help="Sampling temperature (0: greedy)."),
          n: int = typer.Option(1, min=1, max=64, help="Completions of each kind."),
          model: Optional[str] = typer.Option(None, help="Model name or folder (default: the dictionary's, else smollm2-135m)."),
          as_json: bool = JSON_OPT):
    """Generate with and without an intervention (same seed) and print both completions side by side."""
    def go():
        from ..models import load_model
        from .. import steering as st
        from ..directions import directional_ablation, load_direction
        if not prompt.strip():
            raise GlassworkError("--prompt is empty: give the text to complete")
        t0 = time.time()
        if (feature is None) == (direction is None):
            raise GlassworkError("give exactly one of --feature LAYER/INDEX (with --dictionary) or --direction FILE")
        ivs, info = [], {}
        if feature is not None:
            if dictionary is None:
                raise GlassworkError("--feature needs --dictionary DIR (the dictionary or set folder it belongs to)")
            layer, index = st.parse_feature(feature)
            d, folder = st.dictionary_for_layer(dictionary, layer)
            m = load_model(model or d.cfg.model or None)
            ivs.append(st.clamp_feature(m, d, index, clamp, positions, dictionary_folder=folder))
        else:
            if (add is None) == (not ablate):
                raise GlassworkError("with --direction give exactly one of --add C or --ablate")
            vec = load_direction(direction)
            m = load_model(model or vec.model or None)
            if ablate:
                ivs += directional_ablation(m, vec.vector, positions=positions)
            else:
                ivs.append(st.add_direction(m, hook or vec.hook, vec.vector, add, positions))
            info = {"direction": str(direction), "direction_hook": vec.hook}
        res = st.compare(m, prompt, ivs, max_new_tokens, seed, temperature, n)
        summary = {**res, "interventions": [iv.label for iv in ivs][:3] + ([f"... {len(ivs)} in all"] if len(ivs) > 3 else []),
                   "model": m.name, **info, "seconds": round(time.time() - t0, 2)}
        if as_json:
            return emit(summary, True)
        from rich.console import Console
        from rich.table import Table
        table = Table(title=f"{prompt!r}  (seed {seed})", show_lines=True)
        table.add_column("baseline")
        table.add_column("steered: " + "; ".join(summary["interventions"]))
        for b, s in zip(res["baseline"], res["steered"]):
            table.add_row(b, s)
        Console().print(table)
    run_verb(go)


def direction(out: Path = typer.Option(..., help="Where to write the direction: OUT.safetensors + OUT.json."),
              positive: Optional[Path] = typer.Option(None, help="Text file, one prompt per line: the concept present."),
              negative: Optional[Path] = typer.Option(None, help="Text file, one prompt per line: the concept absent."),
              layer: Optional[int] = typer.Option(None, help="Read blocks.LAYER.hook_resid_post (or give --hook)."),
              hook: Optional[str] = typer.Option(None, help="Hook point to read the activations at."),
              token: int = typer.Option(-1, help="Token to read: -1 = each prompt's last, k = position k (BOS is 0)."),
              feature: Optional[str] = typer.Option(None, help="Instead of prompts: a feature's decoder row, LAYER/INDEX."),
              dictionary: Optional[Path] = typer.Option(None, help="Dictionary folder for --feature."),
              model: Optional[str] = typer.Option(None, help="Model name or folder (default: smollm2-135m)."),
              as_json: bool = JSON_OPT):
    """Make a direction file: the difference of means between two prompt files, or a feature's decoder row."""
    def go():
        from ..models import load_model
        from .. import directions as dr
        from .. import steering as st
        from ..io import check_out
        for suffix in (".safetensors", ".json"):  # the two files the direction is written as
            check_out(dr.file_stem(out).with_suffix(suffix), "file")
        t0 = time.time()
        if feature is not None:
            if dictionary is None:
                raise GlassworkError("--feature needs --dictionary DIR")
            lay, index = st.parse_feature(feature)
            d, _ = st.dictionary_for_layer(dictionary, lay)
            vec = dr.feature_direction(d, index)
        else:
            if positive is None or negative is None:
                raise GlassworkError("give --positive FILE and --negative FILE (one prompt per line), or --feature")
            if (layer is None) == (hook is None):
                raise GlassworkError("give exactly one of --layer L or --hook NAME")
            prompts = [dr.read_prompts(p) for p in (positive, negative)]
            m = load_model(model)
            vec = dr.mean_difference(m, prompts[0], prompts[1], hook or f"blocks.{layer}.hook_resid_post", token)
        path = vec.save(out)
        emit({"path": str(path), "meta": str(path.with_suffix(".json")), "kind": vec.kind, "hook": vec.hook,
              "norm": round(vec.vector.norm().item(), 4), **vec.info, "seconds": round(time.time() - t0, 2)}, as_json)
    run_verb(go)


def demo(out: Optional[Path] = typer.Option(None, help="Folder for the demo's stages and outputs "
                                                      "(default: $GLASSWORK_HOME/demo, or demo-quick with --quick)."),
         quick: bool = typer.Option(False, help="A smaller run (about 5 minutes on 2 cores instead of 20)."),
         serve: bool = typer.Option(True, "--serve/--no-serve", help="Open the results in the web app at the end."),
         port: int = typer.Option(8765, min=1, max=65535, help="Port for the web app."),
         fresh: bool = typer.Option(False, help="Delete the demo folder first and start over."),
         as_json: bool = JSON_OPT):
    """The main job on the default model: harvest, train an SAE and 30 transcoders, index and label features,
    trace two prompts, steer, then serve it all. Stages are cached (a rerun resumes)."""
    def go():
        from ..demo import clean, demo_folder, report, demo as run_demo
        from ..io import check_out
        t0 = time.time()
        folder = check_out(demo_folder(out, quick), "folder")
        if fresh:
            clean(folder)
        results = run_demo(folder, quick=quick, log=lambda s: err.print(s, markup=False))
        summary = {"out": str(folder), "stages": results, "seconds": round(time.time() - t0, 2)}
        url = f"http://127.0.0.1:{port}/"
        if serve:
            summary["url"] = url
        emit(summary, as_json, "\n" + report(results) + f"\n\nall in {folder} ({summary['seconds']} s)")
        if serve:
            from ..server import serve as run_server
            err.print(f"\nweb app: [bold]{url}[/]  (graphs, features, steering; Ctrl-C stops it)")
            run_server(folder, port=port)
    run_verb(go)


def serve(folder: Path = typer.Option(Path("."), "--dir", help="Folder with graphs/, dictionaries (and their feature "
                                      "indexes) and directions/ to show."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default: only this machine)."),
          port: int = typer.Option(8765, min=1, max=65535, help="Port."),
          dictionary: Optional[list[Path]] = typer.Option(None, help="Also offer this dictionary folder (repeatable)."),
          model: Optional[str] = typer.Option(None, help="Model for steering and tracing (default: the dictionary's)."),
          as_json: bool = JSON_OPT):
    """Open the web app: attribution-graph viewer, feature browser, steering playground."""
    def go():
        from ..server import serve as run_server
        emit({"url": f"http://{host}:{port}/", "dir": str(folder.resolve())}, as_json,
             f"Glasswork at [bold]http://{host}:{port}/[/] serving {folder.resolve()} (Ctrl-C stops)")
        run_server(folder, host, port, model, list(dictionary or []))
    run_verb(go)
