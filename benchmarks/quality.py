"""Quality of dictionaries trained on the default model (SmolLM2-135M), straight from the model (no disk):
1. TopK SAE on blocks.15.hook_resid_post (d_sae 4608, k 32): FVU, L0, dead, CE-loss score, KL (targets: FVU <= 0.20,
   CE-loss score >= 0.85 at >= 2M tokens).
2. TopK transcoders for every layer: per-layer FVU, L0, dead fraction; CE-loss score with all of them spliced in.
3. A CLT: normalized MSE and L0 (and its spliced CE-loss score).
Held-out text: the last 10% of the documents. Appends a section to benchmarks/RESULTS.md.

  python benchmarks/quality.py [--sae-tokens 2000000 --tc-tokens ... --device cuda]"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import glasswork as gw
from glasswork.training import ModelSource, TrainConfig, train


def documents() -> tuple[list[str], list[str]]:
    """(train, held-out) documents: the project's default corpus split, else the fixture text cut 90/10."""
    try:
        from glasswork.data import corpus
        return list(corpus.default_texts()), list(corpus.heldout_texts())
    except (ImportError, AttributeError):
        from glasswork.training.quick import fixture_texts
        docs = [t for t in fixture_texts()() if t.strip()]
        return docs[:int(len(docs) * 0.9)], docs[int(len(docs) * 0.9):]


def run(kind: str, tc: TrainConfig, model, train_docs, eval_docs, eval_tokens: int, out: Path) -> dict:
    src = ModelSource(model, lambda: iter(train_docs * 100), tc.input_hooks(), tc.batch_size, ctx=tc.ctx, device=tc.device)
    tc.batch_size = src.batch_size
    t0 = time.time()
    r = train(tc, src, out / kind)
    train_s = time.time() - t0
    dicts = r.pop("dicts")
    for d in dicts.values():
        d.to(tc.device)
    ev = gw.evaluate(dicts, model, eval_docs, tokens=eval_tokens, ctx=tc.ctx)
    return {"train": {k: v for k, v in r.items() if k != "dictionaries"}, "train_seconds": round(train_s, 1),
            "eval": ev}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sae-tokens", type=int, default=2_000_000)
    p.add_argument("--tc-tokens", type=int, default=1_000_000)
    p.add_argument("--tc-d-sae", type=int, default=4608)
    p.add_argument("--clt-tokens", type=int, default=500_000)
    p.add_argument("--clt-layers", default="0-29")
    p.add_argument("--clt-d-sae", type=int, default=2048)
    p.add_argument("--eval-tokens", type=int, default=32_768)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default="sae,tc,clt")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--json-out", default="")
    a = p.parse_args()
    os.environ.setdefault("GLASSWORK_PROGRESS", "0")
    model = gw.load_model()
    model.hf.to(a.device)
    train_docs, eval_docs = documents()
    out = Path(tempfile.mkdtemp())
    results = {}
    from glasswork.training.cli import parse_layers
    if "sae" in a.only:
        tc = TrainConfig(kind="sae", arch="topk", hooks=["blocks.15.hook_resid_post"], d_sae=4608, k=32,
                         tokens=a.sae_tokens, batch_size=a.batch_size, device=a.device, model=model.name)
        results["sae"] = run("sae", tc, model, train_docs, eval_docs, a.eval_tokens, out)
        print(json.dumps(results["sae"]["eval"], indent=1), flush=True)
    if "tc" in a.only:
        tc = TrainConfig(kind="transcoder", arch="topk", layers=list(range(model.n_layers)), d_sae=a.tc_d_sae, k=32,
                         tokens=a.tc_tokens, batch_size=a.batch_size, device=a.device, model=model.name)
        results["transcoders"] = run("tc", tc, model, train_docs, eval_docs, a.eval_tokens, out)
        print(json.dumps({k: v for k, v in results["transcoders"]["eval"].items() if k != "dictionaries"}), flush=True)
    if "clt" in a.only:
        tc = TrainConfig(kind="clt", arch="topk", layers=parse_layers(a.clt_layers), d_sae=a.clt_d_sae, k=16,
                         tokens=a.clt_tokens, batch_size=a.batch_size, device=a.device, model=model.name)
        results["clt"] = run("clt", tc, model, train_docs, eval_docs, a.eval_tokens, out)
        print(json.dumps(results["clt"]["eval"], indent=1), flush=True)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=1, default=str))
    report = table(results, a)
    print(report)
    if not a.no_record:
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write(report)


def table(results: dict, a) -> str:
    load = os.getloadavg()
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"{os.cpu_count()}-core CPU ({platform.processor() or 'x86_64'})"
    lines = [f"\n## Dictionary quality on smollm2-135m ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n",
             f"Machine: {dev}; load average {load[0]:.1f}. Command: `python {' '.join(sys.argv)}`.",
             "Trained straight from the model (no disk), cycling the training documents; evaluated on held-out documents, BOS unspliced.\n"]
    if "sae" in results:
        r = results["sae"]
        e, d = r["eval"], next(iter(r["eval"]["dictionaries"].values()))
        lines += ["| dictionary | tokens | FVU | L0 | dead | CE clean | CE spliced | CE zero-abl | CE-loss score | KL | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|",
                  f"| TopK SAE blocks.15.hook_resid_post, 4608, k 32 | {r['train']['tokens']:,} | {d['fvu']:.3f} | {d['l0']:.1f} | "
                  f"{d['dead_fraction']:.3f} | {e['ce_clean']:.3f} | {e['ce_spliced']:.3f} | {e['ce_zero_ablation']:.3f} | "
                  f"{e['ce_loss_score']:.3f} | {e['kl']:.3f} | {r['train_seconds']} |"]
    if "transcoders" in results:
        r = results["transcoders"]
        e = r["eval"]
        lines += ["", f"Transcoders (TopK k 32, d_sae {a.tc_d_sae}, {r['train']['tokens']:,} tokens, all "
                      f"{len(e['dictionaries'])} spliced at once): CE clean {e['ce_clean']:.3f}, spliced {e['ce_spliced']:.3f}, "
                      f"zero-abl {e['ce_zero_ablation']:.3f}, **CE-loss score {e['ce_loss_score']:.3f}**, KL {e['kl']:.3f}; "
                      f"train {r['train_seconds']} s.", "",
                  "| layer | FVU | L0 | dead |", "|---|---|---|---|"]
        for name, d in e["dictionaries"].items():
            lines.append(f"| {name} | {d['fvu']:.3f} | {d['l0']:.1f} | {d['dead_fraction']:.3f} |")
    if "clt" in results:
        r = results["clt"]
        e, d = r["eval"], next(iter(r["eval"]["dictionaries"].values()))
        lines += ["", f"CLT (TopK k 16 per layer, layers {a.clt_layers}, {a.clt_d_sae} features per layer, "
                      f"{r['train']['tokens']:,} tokens): normalized MSE {d['fvu']:.3f}, L0 per layer {d['l0']:.1f}, "
                      f"dead {d['dead_fraction']:.3f}; spliced CE-loss score {e['ce_loss_score']:.3f}, KL {e['kl']:.3f}; "
                      f"train {r['train_seconds']} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
