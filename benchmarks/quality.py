"""Quality of dictionaries trained on the default model (SmolLM2-135M), straight from the model (no disk):
1. TopK SAE on blocks.15.hook_resid_post (d_sae 4608, k 32): FVU, L0, dead, CE-loss score, KL (targets: FVU <= 0.20,
   CE-loss score >= 0.85 at >= 2M tokens).
2. TopK transcoders for every layer: per-layer FVU, L0, dead fraction; CE-loss score with all of them spliced in.
3. A CLT: normalized MSE and L0 (and its spliced CE-loss score).
Held-out text: the last 10% of the documents. Appends a section to benchmarks/RESULTS.md (date, machine, load
average, the exact command); the trained dictionaries stay in $GLASSWORK_HOME/benchmarks/quality/.

  python benchmarks/quality.py [--only sae,tc,clt] [--sae-tokens 2000000 --tc-tokens ... --device cuda]
  python benchmarks/quality.py --only sae --source-dtype bf16 --json-out sae.json --no-record   # then:
  python benchmarks/quality.py --report-from sae.json            # append the section from a finished run
On a CPU with fast bf16, --source-dtype bf16 reads training activations from a bf16 copy of the model (~2.5x faster
here; evaluation always uses the fp32 model). With few steps, small batches and a high lr train best (measured here:
batch 1024 and lr 2e-3 for the SAE, batch 256-512 and lr 3e-3 for transcoders)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import glasswork as gw
from glasswork.training import ModelSource, TrainConfig, train
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when a script runs)


def documents() -> tuple[list[str], list[str]]:
    """(train, held-out) documents: the project's default corpus split, else the fixture text cut 90/10."""
    try:
        from glasswork.data import corpus
        return list(corpus.default_texts()), list(corpus.heldout_texts())
    except (ImportError, AttributeError):
        from glasswork.training.quick import fixture_texts
        docs = [t for t in fixture_texts()() if t.strip()]
        return docs[:int(len(docs) * 0.9)], docs[int(len(docs) * 0.9):]


class LoadAwareSource(ModelSource):
    """ModelSource that picks torch's thread count before each batch from the load average (CPU only): on a shared
    2-core machine one thread runs ~2x faster than two while other jobs hold the cores (measured here), two threads
    are faster when it is free. threads > 0 fixes the count instead."""

    def __init__(self, *args, threads: int = 0, **kw):
        super().__init__(*args, **kw)
        self.threads, self.n_threads_seen = threads, {}

    def batches(self, start: int = 0, rank: int = 0, world: int = 1):
        it = super().batches(start, rank, world)
        while True:
            if self.device == "cpu":
                mine = torch.get_num_threads()
                n = self.threads or (os.cpu_count() if os.getloadavg()[0] - mine < 0.7 else 1)
                torch.set_num_threads(n)
                self.n_threads_seen[n] = self.n_threads_seen.get(n, 0) + 1
            yield next(it)


def run(kind: str, tc: TrainConfig, model, train_docs, eval_docs, eval_tokens: int, out: Path, threads: int = 0,
        src_model=None, resume: str = "") -> dict:
    """Train on activations from src_model (default: model), evaluate with model."""
    src = LoadAwareSource(src_model or model, lambda: iter(train_docs * 100), tc.input_hooks(), tc.batch_size,
                          ctx=tc.ctx, device=tc.device, threads=threads)
    tc.batch_size = src.batch_size
    t0 = time.time()
    folder = Path(resume) if resume else out / f"{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    r = train(tc, src, folder, resume=bool(resume))
    train_s = time.time() - t0
    dicts = r.pop("dicts")
    for d in dicts.values():
        d.to(tc.device)
    ev = gw.evaluate(dicts, model, eval_docs, tokens=eval_tokens, ctx=tc.ctx)
    return {"train": {k: v for k, v in r.items() if k != "dictionaries"}, "train_metrics": r.get("dictionaries", {}),
            "train_seconds": round(train_s, 1), "eval": ev, "folder": str(folder), "lr": tc.lr,
            "batch_size": tc.batch_size, "threads_per_batch": src.n_threads_seen, "load_end": os.getloadavg()[0]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sae-tokens", type=int, default=2_000_000)
    p.add_argument("--tc-tokens", type=int, default=1_000_000)
    p.add_argument("--tc-d-sae", type=int, default=4608)
    p.add_argument("--clt-tokens", type=int, default=500_000)
    p.add_argument("--clt-layers", default="0-29")
    p.add_argument("--clt-d-sae", type=int, default=2048)
    p.add_argument("--eval-tokens", type=int, default=32_768)
    p.add_argument("--batch-size", type=int, default=1024, help="tokens per step (rounded to whole sequences)")
    p.add_argument("--sae-lr", type=float, default=2e-3)
    p.add_argument("--tc-lr", type=float, default=3e-3)
    p.add_argument("--tc-k", type=int, default=32)
    p.add_argument("--tc-batch-size", type=int, default=0, help="0: --batch-size")
    p.add_argument("--clt-lr", type=float, default=2e-3)
    p.add_argument("--clt-k", type=int, default=16)
    p.add_argument("--clt-window", type=int, default=0)
    p.add_argument("--source-dtype", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: training activations come from a bf16 copy of the model (~2.5x faster forward on CPUs "
                        "with fast bf16; activations differ from fp32 by ~1e-4 of their variance); eval always uses fp32")
    p.add_argument("--resume-dir", default="", help="continue the one part asked for (--only) from this folder's checkpoint")
    p.add_argument("--threads", type=int, default=0, help="0: pick 1 or all cores per batch from the load average")
    p.add_argument("--out", default="", help="where the trained dictionaries go (default $GLASSWORK_HOME/benchmarks/quality)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default="sae,tc,clt")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--json-out", default="", help="write args and results here after each part")
    p.add_argument("--report-from", default="", help="a --json-out file: print (and append) its section, train nothing")
    p.add_argument("--command", default="", help="with --report-from: the command that made the file, if it lacks one")
    a = p.parse_args()
    if a.report_from:
        saved = json.loads(Path(a.report_from).read_text())
        args = saved["args"]
        if isinstance(args.get("load_start"), list):
            args["load_start"] = args["load_start"][0]
        a = argparse.Namespace(**{**args, "no_record": a.no_record, "command": args.get("command") or a.command})
        report = table(saved["results"], a)
        print(report)
        if not a.no_record:
            with open(Path(__file__).parent / "RESULTS.md", "a") as f:
                f.write(report)
        return
    a.command = "python " + " ".join(sys.argv)
    os.environ.setdefault("GLASSWORK_PROGRESS", "0")
    model = gw.load_model()
    model.hf.to(a.device)
    src_model = None
    if a.source_dtype == "bf16":
        src_model = gw.load_model()
        src_model.hf.to(device=a.device, dtype=torch.bfloat16)
    train_docs, eval_docs = documents()
    from glasswork.io import home
    out = Path(a.out) if a.out else home() / "benchmarks" / "quality"
    out.mkdir(parents=True, exist_ok=True)
    a.load_start = os.getloadavg()[0]
    a.started = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    results = {}

    def dump():
        if a.json_out:
            Path(a.json_out).write_text(json.dumps({"args": vars(a), "results": results}, indent=1, default=str))
    from glasswork.training.cli import parse_layers
    if "sae" in a.only:
        tc = TrainConfig(kind="sae", arch="topk", hooks=["blocks.15.hook_resid_post"], d_sae=4608, k=32,
                         tokens=a.sae_tokens, batch_size=a.batch_size, lr=a.sae_lr, device=a.device, model=model.name)
        results["sae"] = run("sae", tc, model, train_docs, eval_docs, a.eval_tokens, out, a.threads, src_model, a.resume_dir)
        dump()
        print(json.dumps(results["sae"]["eval"], indent=1), flush=True)
    if "tc" in a.only:
        tc = TrainConfig(kind="transcoder", arch="topk", layers=list(range(model.n_layers)), d_sae=a.tc_d_sae, k=a.tc_k,
                         tokens=a.tc_tokens, batch_size=a.tc_batch_size or a.batch_size, lr=a.tc_lr, device=a.device,
                         model=model.name)
        results["transcoders"] = run("tc", tc, model, train_docs, eval_docs, a.eval_tokens, out, a.threads, src_model, a.resume_dir)
        dump()
        print(json.dumps({k: v for k, v in results["transcoders"]["eval"].items() if k != "dictionaries"}), flush=True)
    if "clt" in a.only:
        tc = TrainConfig(kind="clt", arch="topk", layers=parse_layers(a.clt_layers), d_sae=a.clt_d_sae, k=a.clt_k,
                         window=a.clt_window, tokens=a.clt_tokens, batch_size=a.batch_size, lr=a.clt_lr, device=a.device,
                         model=model.name)
        results["clt"] = run("clt", tc, model, train_docs, eval_docs, a.eval_tokens, out, a.threads, src_model, a.resume_dir)
        dump()
        print(json.dumps(results["clt"]["eval"], indent=1), flush=True)
    dump()
    report = table(results, a)
    print(report)
    if not a.no_record:
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write(report)


def _dead_window(tokens: int) -> int:
    """The trainer's dead-latent window for a run asked to train on `tokens` tokens."""
    return TrainConfig(kind="transcoder", layers=[0], tokens=tokens).dead_window


def table(results: dict, a) -> str:
    if a.device.startswith("cuda"):
        dev = torch.cuda.get_device_name()
    else:
        flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
        dev = (f"{os.cpu_count()}-core {cpu_name()} CPU{' with avx512_bf16' if 'avx512_bf16' in flags else ''}, "
               f"torch {torch.__version__}, shared with other jobs")
    ends = ", ".join(f"{r.get('load_end', 0):.1f} after {k}" for k, r in results.items())
    threads = "; ".join(f"{k}: {r.get('threads_per_batch')}" for k, r in results.items())
    lines = [f"\n## Dictionary quality on smollm2-135m (started {getattr(a, 'started', '?')}, "
             f"recorded {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n",
             f"Machine: {dev}; load average {getattr(a, 'load_start', 0):.1f} at the start, {ends}. "
             f"Command: `{getattr(a, 'command', '?')}`. torch threads per batch, chosen from the load average "
             f"(batches at each count): {threads}.",
             f"Trained straight from the model ({'a bf16 copy of it' if getattr(a, 'source_dtype', 'fp32') == 'bf16' else 'fp32'}; no disk), cycling the training documents (the default corpus); "
             "evaluated on held-out documents (`corpus.heldout_texts`), BOS unspliced. FVU is on the clean model's "
             "activations; `FVU spliced` with every dictionary of the set spliced in upstream. Dictionaries: "
             + ", ".join(f"`{r.get('folder')}`" for r in results.values()) + ".\n"]
    if "sae" in results:
        r = results["sae"]
        e, d = r["eval"], next(iter(r["eval"]["dictionaries"].values()))
        lines += ["| dictionary | train tokens | batch, lr | FVU | L0 | dead (eval) | dense | CE clean | CE spliced | "
                  "CE zero-abl | CE-loss score | KL | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
                  f"| TopK SAE blocks.15.hook_resid_post, 4608, k 32 | {r['train']['tokens']:,} | {r.get('batch_size')}, "
                  f"{r.get('lr')} | {d['fvu']:.3f} | {d['l0']:.1f} | {d['dead_fraction']:.3f} | "
                  f"{d.get('dense_fraction', 0):.3f} | {e['ce_clean']:.3f} | {e['ce_spliced']:.3f} | "
                  f"{e['ce_zero_ablation']:.3f} | {e['ce_loss_score']:.3f} | {e['kl']:.3f} | {r['train_seconds']} |",
                  "", f"Evaluated on {e['tokens']:,} held-out tokens; targets: FVU <= 0.20 and CE-loss score >= 0.85 "
                  f"at >= 2M tokens."]
    if "transcoders" in results:
        r = results["transcoders"]
        e = r["eval"]
        per = e["dictionaries"]
        fv = sorted(d["fvu"] for d in per.values())
        lines += ["", f"Transcoders (TopK k {a.tc_k}, d_sae {a.tc_d_sae}, {r['train']['tokens']:,} tokens, batch "
                      f"{r.get('batch_size')}, lr {r.get('lr')}, all {len(per)} spliced at once; {e['tokens']:,} eval "
                      f"tokens): CE clean {e['ce_clean']:.3f}, spliced {e['ce_spliced']:.3f}, zero-abl "
                      f"{e['ce_zero_ablation']:.3f}, **CE-loss score {e['ce_loss_score']:.3f}**, KL {e['kl']:.3f}; "
                      f"FVU median {fv[len(fv) // 2]:.3f}, min {fv[0]:.3f}, max {fv[-1]:.3f}; train {r['train_seconds']} s.",
                  "", f"Dead: `train` = no firing in the last {_dead_window(a.tc_tokens):,} training tokens (the trainer's AuxK "
                      f"criterion); `eval` = never fired on the {e['tokens']:,} eval tokens (frequency below ~1/"
                      f"{e['tokens']:,}).", "",
                  "| layer | FVU | FVU spliced | L0 | dead (train) | dead (eval) | dense |", "|---|---|---|---|---|---|---|"]
        for name, d in per.items():
            td = r.get("train_metrics", {}).get(name, {}).get("dead_fraction", float("nan"))
            lines.append(f"| {name} | {d['fvu']:.3f} | {d.get('fvu_spliced', float('nan')):.3f} | {d['l0']:.1f} | "
                         f"{td:.3f} | {d['dead_fraction']:.3f} | {d.get('dense_fraction', 0):.3f} |")
    if "clt" in results:
        r = results["clt"]
        e, d = r["eval"], next(iter(r["eval"]["dictionaries"].values()))
        lines += ["", f"CLT (TopK k {a.clt_k} per layer, layers {a.clt_layers}, window {a.clt_window or 'all'}, "
                      f"{a.clt_d_sae} features per layer, {r['train']['tokens']:,} tokens, batch {r.get('batch_size')}, "
                      f"lr {r.get('lr')}; {e['tokens']:,} eval tokens): **normalized MSE {d['fvu']:.3f}** "
                      f"(spliced {d.get('fvu_spliced', float('nan')):.3f}), L0 per layer {d['l0']:.1f}, "
                      f"dead {d['dead_fraction']:.3f}; spliced CE-loss score {e['ce_loss_score']:.3f} (CE clean "
                      f"{e['ce_clean']:.3f}, spliced {e['ce_spliced']:.3f}, zero-abl {e['ce_zero_ablation']:.3f}), "
                      f"KL {e['kl']:.3f}; train {r['train_seconds']} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
