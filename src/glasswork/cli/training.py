"""CLI verbs `train`, `eval`, `export`, `import` (registered in glasswork/cli.py)."""
from __future__ import annotations

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


def train_cmd(
    out: Path = typer.Option(..., help="Folder for the trained dictionary (or set); checkpoints go here too."),
    store: Optional[Path] = typer.Option(None, help="Activation store folder to train from."),
    model: Optional[str] = typer.Option(None, help="Train straight from this model reading the corpus (no disk); "
                                                   "default model when neither --store nor --model is given."),
    hooks: str = typer.Option("", help="SAE hook points, comma-separated (one SAE each)."),
    kind: str = typer.Option("sae", help="sae | transcoder | clt"),
    layers: str = typer.Option("", help="Transcoder/CLT layers, e.g. 0-29."),
    arch: str = typer.Option("topk", help="relu | topk | batchtopk | jumprelu"),
    k: int = typer.Option(32, min=1, help="Active latents per token (topk, batchtopk)."),
    expansion: int = typer.Option(8, min=1, help="d_sae = expansion * d_in."),
    d_sae: int = typer.Option(0, min=0, help="Latents (overrides --expansion)."),
    tokens: int = typer.Option(1_000_000, min=1, help="Training tokens."),
    batch_size: int = typer.Option(4096, min=1, help="Tokens per step (global, over all ranks)."),
    lr: float = typer.Option(0.0, help="Peak learning rate (0: 2e-4 / sqrt(d_sae / 16384))."),
    matryoshka: str = typer.Option("", help="Matryoshka prefix sizes, e.g. 256,1024: the first 256, the first 1024 "
                                            "and all latents each learn to reconstruct alone (SAEs, transcoders)."),
    skip: bool = typer.Option(False, help="Transcoders: learn a linear skip connection."),
    skip_fit: bool = typer.Option(False, help="Transcoders with --skip: start the skip at the least-squares fit of "
                                              "MLP output on input (over --init-tokens), the sparse part learns the rest."),
    freeze_skip: bool = typer.Option(False, help="With --skip-fit: keep the fitted skip fixed."),
    init: str = typer.Option("random", help="random | data: seed each latent on a token of the init sample (a CLT: on its own layer's output)."),
    init_tokens: int = typer.Option(0, min=0, help="Tokens read before training for the skip fit and data init "
                                            "(0: 8192 when used)."),
    init_scale: str = typer.Option("auto", help="With --init data: fit the seeded code's scale by least squares "
                                                "(on | off | auto: on unless --skip-fit)."),
    mix: int = typer.Option(1, help="Reading from the model: shuffle the tokens of this many batches together."),
    window: int = typer.Option(0, help="CLT: later layers each feature writes to (0: all)."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed for init and data order."),
    resume: bool = typer.Option(False, help="Continue from the checkpoint in --out."),
    ctx: int = typer.Option(128, min=8, help="Tokens per sequence when reading from the model."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 (auto: bf16 only where the hardware has fast bf16: "
                                  "AMX / AVX512-BF16 CPUs, bf16 GPUs; recorded, and kept on --resume)."),
    as_json: bool = JSON_OPT,
):
    """Train sparse dictionaries (SAEs, transcoders, a CLT) from a store or straight from the model."""
    from .common import emit, run_verb

    def go():
        from ..io import check_out
        from ..training.sources import ModelSource, StoreSource
        from ..training.trainer import TrainConfig, train
        from ..training import distributed as dist
        check_out(out, "folder")
        t0 = time.time()
        tc = TrainConfig(kind=kind, arch=arch, hooks=[h for h in hooks.split(",") if h], layers=parse_layers(layers) if layers else [],
                         k=k, expansion=expansion, d_sae=d_sae, tokens=tokens, batch_size=batch_size, lr=lr, skip=skip,
                         window=window, seed=seed, ctx=ctx, device=device, matryoshka=parse_sizes(matryoshka),
                         skip_fit=skip_fit, freeze_skip=freeze_skip, init=init, init_tokens=init_tokens,
                         init_scale=init_scale, mix=mix, precision=precision)
        if store is not None:
            from ..data.store import ActivationStore
            source = StoreSource(ActivationStore(store), tc.input_hooks(), batch_size, seed=seed)
        else:
            from ..models import load_model
            m = load_model(model)
            tc.model = m.name
            m.hf.to(device)
            source = ModelSource(m, _texts(), tc.input_hooks(), batch_size, ctx=ctx, device=device, mix=mix, seed=seed)
            if source.batch_size != batch_size:
                tc.batch_size = source.batch_size  # whole sequences per step
        result = train(tc, source, out, resume=resume)
        result.pop("dicts")
        result["seconds_total"] = round(time.time() - t0, 1)
        if dist.is_main():
            emit(result, as_json)
    run_verb(go)


def eval_cmd(
    folder: Path = typer.Argument(..., help="Dictionary folder or set folder."),
    model: Optional[str] = typer.Option(None, help="Model (default: the one the dictionary names)."),
    tokens: int = typer.Option(16_384, min=1, help="Held-out tokens to evaluate on."),
    ctx: int = typer.Option(128, min=8, help="Tokens per sequence."),
    as_json: bool = JSON_OPT,
):
    """FVU, L0, dead/dense fractions; CE-loss score and KL with the dictionaries spliced into the model."""
    from .common import emit, run_verb

    def go():
        from ..evals import _as_dicts, evaluate
        from ..models import load_model
        t0 = time.time()
        dicts = _as_dicts(folder)
        m = load_model(model or next(iter(dicts.values())).cfg.model or None)
        result = evaluate(dicts, m, _texts(heldout=True)(), tokens=tokens, ctx=ctx)
        result["seconds"] = round(time.time() - t0, 1)
        emit(result, as_json)
    run_verb(go)


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
