"""`glasswork demo`: the main job on the default model, as stages. Each stage's result is recorded in
OUT/stages/<stage>.json (default OUT = $GLASSWORK_HOME/demo) and a stage already recorded is skipped, so a rerun
(or a run after a kill) picks up where the last one stopped; a stage's own long work (the harvest) resumes too.

Stages so far: corpus (fetch + tokenize the default corpus) -> harvest (a small activation store: the residual
stream after layer 15 and the MLP input/output of layer 15) -> summary. Later issues add training, feature pages,
attribution graphs."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .io import GlassworkError, home, read_json, write_json

LAYER = 15


@dataclass
class DemoConfig:
    tokens: int = 100_000
    ctx_len: int = 128
    batch_size: int = 16
    dtype: str = "bf16"  # storage only (halves the disk); activations are computed in the model's dtype
    hooks: tuple[str, ...] = (f"blocks.{LAYER}.hook_resid_post", f"blocks.{LAYER}.ln2.hook_normalized",
                              f"blocks.{LAYER}.hook_mlp_out")

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(tokens=20_480)


def _stage(out: Path, name: str, fn: Callable[[], dict], log: Callable[[str], None]) -> dict:
    """Run a stage once: its result is kept in OUT/stages/NAME.json and returned from there afterwards."""
    path = out / "stages" / f"{name}.json"
    if path.exists():
        log(f"[{name}] done before, skipped ({path})")
        return read_json(path, f"demo stage record '{name}'")
    t0 = time.time()
    log(f"[{name}] ...")
    result = {**fn(), "seconds": round(time.time() - t0, 2)}
    write_json(path, result)
    log(f"[{name}] done in {result['seconds']} s")
    return result


def demo(out: str | Path | None = None, quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the demo; returns {stage: result}."""
    from .data import corpus
    from .data.store import ActivationStore, harvest
    from .models import load_model
    cfg = DemoConfig.quick() if quick else DemoConfig()
    out = Path(out) if out is not None else home() / "demo"
    store_dir = out / ("store-quick" if quick else "store")
    results: dict[str, dict] = {}
    model = load_model()

    def corpus_stage() -> dict:
        info = corpus.info()
        ids = corpus.contexts(model, ctx_len=cfg.ctx_len)
        return {**info, "train_contexts": len(ids), "train_tokens": ids.numel()}

    def harvest_stage() -> dict:
        t0 = time.time()
        harvest(model, list(cfg.hooks), store_dir, cfg.tokens, ctx_len=cfg.ctx_len, batch_size=cfg.batch_size,
                dtype=cfg.dtype)
        secs = time.time() - t0
        return {"store": str(store_dir), "config": asdict(cfg), "tokens_per_s": round(cfg.tokens / secs, 1)}

    def summary_stage() -> dict:
        store = ActivationStore(store_dir, model=model)
        batch = next(store.batches(1024, seed=0))
        mlp_in, mlp_out = batch[cfg.hooks[1]], batch[cfg.hooks[2]]
        # Sanity check that the stored rows belong together: the layer's MLP maps its stored input to its stored output.
        err = (model.mlp(LAYER, mlp_in) - mlp_out).norm() / mlp_out.norm()
        return {**store.info(verify=True), "mlp_check_rel_err": round(err.item(), 5)}

    suffix = "-quick" if quick else ""  # quick and full runs keep separate stores and records
    for name, fn in (("corpus", corpus_stage), ("harvest" + suffix, harvest_stage), ("summary" + suffix, summary_stage)):
        results[name] = _stage(out, name, fn, log)
    summary = results["summary" + suffix]
    if summary["mlp_check_rel_err"] > 0.02:  # bf16 storage rounds to ~0.4%; far more means misaligned rows
        raise GlassworkError(f"{store_dir}: stored MLP input and output do not match the model "
                             f"(relative error {summary['mlp_check_rel_err']})")
    return results
