"""CLI faces of the data layer: `glasswork harvest`, `glasswork store info`, `glasswork corpus info`."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .common import JSON_OPT, emit, run_verb

store_app = typer.Typer(help="Inspect activation stores.", no_args_is_help=True)
corpus_app = typer.Typer(help="Inspect corpora (the default one is fetched from PyPI once).", no_args_is_help=True)


def harvest_cmd(
    out: Path = typer.Option(..., help="Store folder (created; rerun the same command to resume)."),
    hooks: str = typer.Option(..., help="Hook points, comma-separated, e.g. blocks.6.hook_resid_post."),
    tokens: int = typer.Option(100_000, min=1, help="Tokens to harvest (rounded up to whole contexts)."),
    model: Optional[str] = typer.Option(None, help="Model name or folder (default: smollm2-135m)."),
    ctx_len: int = typer.Option(128, "--context", "--ctx-len", min=2, help="Tokens per context (each starts with BOS)."),
    batch_size: int = typer.Option(16, min=1, help="Contexts per model forward."),
    dtype: str = typer.Option("fp32", help="Storage dtype: fp32 | bf16."),
    source: str = typer.Option("default", help="Corpus: default, enwiki, lee, botchan, bgwiki, a .txt/.jsonl/"
                                               ".parquet file, or hf:NAME."),
    field: str = typer.Option("text", help="JSONL field / parquet column / dataset column holding the text."),
    split: str = typer.Option("train", help="Corpus split: train | heldout."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed for the order of documents."),
    shard_contexts: int = typer.Option(0, min=0, help="Contexts per shard (0: about 64 MB per shard)."),
    as_json: bool = JSON_OPT,
):
    """Run a model over a corpus and store activations at hook points (sharded safetensors + manifest.json)."""
    def go():
        from ..io import check_out, new_output
        from ..models import load_model
        from ..data.store import ActivationStore, harvest
        check_out(out, "folder")
        t0 = time.time()
        m = load_model(model)
        hook_list = [h.strip() for h in hooks.split(",") if h.strip()]
        # a failure before the first shard leaves nothing; after it, the shards stay for the rerun that resumes
        with new_output(out, keep=lambda f: any(f.glob("*.safetensors"))):
            harvest(m, hook_list, out, tokens, ctx_len=ctx_len, batch_size=batch_size, dtype=dtype, source=source,
                    split=split, seed=seed, shard_contexts=shard_contexts, field=field)
        secs = time.time() - t0
        info = ActivationStore(out).info()
        emit({**info, "seconds": round(secs, 2), "tokens_per_s": round(info["tokens"] / max(secs, 1e-9), 1)},
             as_json, _human(info) + f"\n{secs:.1f} s")
    run_verb(go)


def _human(info: dict) -> str:
    lines = [f"{info['folder']}: {info['tokens']:,} tokens from {info['model']} ({info['source']}, seed {info['seed']}), "
             f"{info['shards']} shards, {info['bytes'] / 1e6:.1f} MB {info['dtype']}, context {info['ctx_len']}"
             + ("" if info["complete"] else "  [INCOMPLETE: rerun the harvest command]")]
    for h in info["hooks"]:
        lines.append(f"  {h:36s} d={info['dims'].get(h, '?'):<5} mean norm {info['mean_norm'].get(h, float('nan')):.3f}")
    return "\n".join(lines)


@store_app.command("info")
def store_info(folder: Path = typer.Argument(..., help="Activation store folder."),
               verify: bool = typer.Option(False, help="Check every shard's sha256 too."),
               as_json: bool = JSON_OPT):
    """Summarize an activation store: model, hooks, tokens, shards, mean norms."""
    def go():
        from ..data.store import ActivationStore
        info = ActivationStore(folder, allow_incomplete=True).info(verify=verify)
        emit(info, as_json, _human(info) + ("" if not verify else f"\n  verified: {info['verified']}"))
    run_verb(go)


@corpus_app.command("info")
def corpus_info(source: str = typer.Option("default", help="default, enwiki, lee, botchan, bgwiki, a file, hf:NAME."),
                field: str = typer.Option("text", help="JSONL field / parquet column holding the text."),
                model: Optional[str] = typer.Option(None, help="Also count tokens with this model's tokenizer."),
                ctx_len: int = typer.Option(128, "--context", "--ctx-len", min=2, help="Context length for the counts."),
                as_json: bool = JSON_OPT):
    """Documents, characters and (with --model) tokens and contexts per split of a corpus."""
    def go():
        from ..data import corpus
        t0 = time.time()
        info = corpus.info(source, field)
        if model is not None:
            from ..models import load_model
            m = load_model(model)
            for split in ("train", "heldout"):
                n = len(corpus.contexts(m, source, ctx_len, split, field=field))
                info[f"{split}_contexts"], info[f"{split}_tokens"] = n, n * ctx_len
            info["model"] = m.name
        info["seconds"] = round(time.time() - t0, 2)
        emit(info, as_json)
    run_verb(go)
