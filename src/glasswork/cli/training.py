"""CLI verbs `train`, `eval`, `export`, `import` (registered in cli/__init__.py)."""
from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import GlassworkError
from .common import JSON_OPT


def parse_layers(text: str) -> list[int]:
    """'0-29' or '3,5,7' or '0-3,8' -> list of ints."""
    out = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise GlassworkError(f"--layers: expected e.g. 0-29 or 3,5,7 (got '{text}')") from None
    return out


def parse_sizes(text: str, option: str = "--matryoshka") -> list[int]:
    """'256,1024' -> [256, 1024] ('' -> [])."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GlassworkError(f"{option}: expected comma-separated integers, e.g. 256,1024 (got '{text}')") from None


def _texts(heldout: bool = False):
    """Corpus text for training (or held-out text for evaluation) from glasswork.data.corpus when present."""
    try:
        from ..data import corpus
    except ImportError:
        from ..training.quick import fixture_texts
        return fixture_texts()
    name = "heldout_texts" if heldout and hasattr(corpus, "heldout_texts") else "default_texts"
    return getattr(corpus, name)


def _parse_floats(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GlassworkError(f"{option}: expected comma-separated numbers (got '{text}')") from None


# TrainConfig's list fields as the text a user types
TRAIN_PARSERS = {"hooks": lambda text: [h.strip() for h in text.split(",") if h.strip()],
                 "layers": lambda text: parse_layers(text) if text else [],
                 "matryoshka": parse_sizes,
                 "betas": lambda text: _parse_floats(text, "--betas")}


def train_cmd(**options):
    """Train sparse dictionaries (SAEs, transcoders, a CLT) from a store or straight from the model. The options
    after --model are TrainConfig's fields (training/config.py: each one's docstring is its help)."""
    from .common import config_from_options, emit, run_verb
    out, store, model, resume, as_json = (options.pop(k) for k in ("out", "store", "model", "resume", "as_json"))

    def go():
        from ..io import check_out
        from ..training.config import TrainConfig
        from ..training.sources import ModelSource, StoreSource
        from ..training.trainer import train
        from ..training import distributed as dist
        check_out(out, "folder")
        t0 = time.time()
        tc = config_from_options(TrainConfig, options, TRAIN_PARSERS)
        if store is not None:
            from ..data.store import ActivationStore
            source = StoreSource(ActivationStore(store), tc.input_hooks(), tc.batch_size, seed=tc.seed)
        else:
            from ..models import load_model
            m = load_model(model)
            m.hf.to(tc.device)
            source = ModelSource.from_config(m, _texts(), tc)
        result = train(tc, source, out, resume=resume)  # the trainer takes the model's name and whole-sequence batch
        result.pop("dicts")
        result["seconds_total"] = round(time.time() - t0, 1)
        if dist.is_main():
            emit(result, as_json)
        dist.finish()
    run_verb(go)


def _train_signature() -> inspect.Signature:
    """train_cmd's options: where to read and write, TrainConfig's fields (its `model` is the name recorded, set
    from the model trained on), --resume and --json."""
    from ..training.config import TrainConfig
    from .common import config_options
    opt = inspect.Parameter.KEYWORD_ONLY
    head = [inspect.Parameter("out", opt, annotation=Path, default=typer.Option(
                ..., help="Folder for the trained dictionary (or set); checkpoints go here too.")),
            inspect.Parameter("store", opt, annotation=Optional[Path], default=typer.Option(
                None, help="Activation store folder to train from.")),
            inspect.Parameter("model", opt, annotation=Optional[str], default=typer.Option(
                None, help="Train straight from this model reading the corpus (no disk); default model when "
                           "neither --store nor --model is given."))]
    tail = [inspect.Parameter("resume", opt, annotation=bool, default=typer.Option(
                False, help="Continue from the checkpoint in --out.")),
            inspect.Parameter("as_json", opt, annotation=bool, default=JSON_OPT)]
    return inspect.Signature(head + config_options(TrainConfig, TRAIN_PARSERS, exclude=("model",)) + tail)


train_cmd.__signature__ = _train_signature()


def eval_cmd(
    folder: Path = typer.Argument(..., help="Dictionary folder or set folder."),
    model: Optional[str] = typer.Option(None, help="Model (default: the one the dictionary names)."),
    tokens: int = typer.Option(16_384, min=1, help="Held-out tokens to evaluate on."),
    ctx: int = typer.Option(128, min=8, help="Tokens per sequence."),
    suite: bool = typer.Option(False, "--suite", help="Also run the evaluation suite: sparse probing, first-letter "
                               "absorption (SAEs), autointerp; next to SAEBench's reference values."),
    parts: str = typer.Option("probing,absorption,autointerp", help="--suite: which parts, comma-separated."),
    layer: Optional[int] = typer.Option(None, help="--suite on a set folder: the layer's dictionary to evaluate."),
    as_json: bool = JSON_OPT,
):
    """FVU, L0, dead/dense fractions; CE-loss score and KL with the dictionaries spliced into the model."""
    from .common import emit, run_verb

    def go():
        from ..evals import _as_dicts, evaluate
        from ..models import load_model
        t0 = time.time()
        dicts = _as_dicts(folder)
        from ..suite import check_parts
        chosen = check_parts(tuple(p.strip() for p in parts.split(",") if p.strip()))
        target = _suite_target(folder, dicts, layer) if suite else None  # a bad --layer fails before any work
        m = load_model(model or next(iter(dicts.values())).cfg.model or None)
        result = evaluate(dicts, m, _texts(heldout=True)(), tokens=tokens, ctx=ctx)
        if target:
            from ..suite import run_suite
            name, one, where = target
            result["suite"] = {"dictionary": name, **run_suite(m, one, where, chosen)}
        result["seconds"] = round(time.time() - t0, 1)
        emit(result, as_json)
    run_verb(go)


def _suite_target(folder: Path, dicts: dict, layer: Optional[int]):
    """(name, dictionary, folder of its feature index) that --suite evaluates: the only one, or the --layer one."""
    from ..dictionaries.saving import is_set
    if not is_set(folder):
        name, one = next(iter(dicts.items()))
        return name, one, folder
    by_layer = {d.cfg.layer: (n, d) for n, d in dicts.items()}
    if layer is None or layer not in by_layer:
        raise GlassworkError(f"{folder} is a set of {len(dicts)} dictionaries: --suite evaluates one, name it with "
                             f"--layer (one of {', '.join(map(str, sorted(k for k in by_layer if k is not None)))})")
    name, one = by_layer[layer]
    return name, one, folder / name


def export_cmd(
    folder: Path = typer.Argument(..., help="Native dictionary folder or set folder."),
    out: Path = typer.Option(..., help="Folder to write."),
    format: str = typer.Option(..., "--format", help="saelens | circuit-tracer"),
    as_json: bool = JSON_OPT,
):
    """Export an SAE to SAELens, or transcoders / a CLT to circuit-tracer's format."""
    from .common import emit, run_verb

    def go():
        from ..dictionaries.formats import export_circuit_tracer, export_saelens
        from ..dictionaries.saving import is_set, load, load_transcoders
        from ..io import check_out, new_output
        if format not in ("saelens", "circuit-tracer"):
            raise GlassworkError(f"--format: expected saelens or circuit-tracer (got '{format}')")
        with new_output(check_out(out, "folder")):
            if format == "saelens":
                export_saelens(load(folder), out)
                summary = {"folder": str(out), "format": "saelens"}
            else:
                summary = export_circuit_tracer(load_transcoders(folder) if is_set(folder) else load(folder), out)
        emit(summary, as_json)
    run_verb(go)


def import_cmd(
    folder: str = typer.Argument(..., help="Another tool's dictionary folder: SAELens, circuit-tracer, sparsify, "
                                            "dictionary_learning or Gemma Scope (recognized from its files); or "
                                            "hf:ORG/REPO[/PATH][@REVISION] to fetch a published one from the hub."),
    out: Path = typer.Option(..., help="Native folder to write (a set folder for transcoders)."),
    format: str = typer.Option("auto", "--format", help="auto | saelens | circuit-tracer | sparsify | "
                               "dictionary-learning | gemma-scope"),
    model: str = typer.Option("", help="The model name to record (where the files do not say)."),
    as_json: bool = JSON_OPT,
):
    """Import a dictionary another tool wrote as a native glasswork dictionary (or transcoder set)."""
    from .common import emit, run_verb

    def go():
        from ..dictionaries.imports import import_folder
        from ..dictionaries.saving import save, save_set
        from ..io import check_out, new_output
        if check_out(out, "folder").exists() and any(out.iterdir()):
            raise GlassworkError(f"--out {out}: folder exists and is not empty; choose a new folder")
        got, fmt = import_folder(folder, format, model)
        with new_output(out):
            if isinstance(got, dict):
                save_set({f"layer_{layer:02d}": d for layer, d in sorted(got.items())}, out)
                first = next(iter(got.values())).cfg
                summary = {"folder": str(out), "format": fmt, "kind": "transcoder set", "layers": sorted(got),
                           "d_in": first.d_in, "d_sae": first.d_sae, "activation": first.activation}
            else:
                save(got, out)
                summary = {"folder": str(out), "format": fmt, "kind": got.cfg.kind, "d_in": got.cfg.d_in,
                           "d_sae": got.cfg.d_sae, "activation": got.cfg.activation, "hook": got.cfg.hook_in,
                           "model": got.cfg.model}
        emit(summary, as_json)
    run_verb(go)
