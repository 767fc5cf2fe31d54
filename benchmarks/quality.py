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
  python benchmarks/quality.py --plot-from a.json,b.json [--plot-out P]  # one replacement-vs-minutes plot of budget runs
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
from glasswork.training import ModelSource, TrainConfig, finished, train
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when a script runs)


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


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

    def __init__(self, *args, threads: int = 0, **kw):  # noqa: D107
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


def _texts(train_docs: list[str], tc: TrainConfig):
    """The training documents as a source re-reads them: 100 times over in reading order (long runs do not run out),
    once when shuffled (the source starts a new epoch by itself)."""
    return (lambda: iter(train_docs)) if tc.shuffle else (lambda: iter(train_docs * 100))


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


# --- the replacement model at fixed CPU budgets (--only budget) -------------------------------------------------

PROMPTS = Path(__file__).parent / "data" / "heldout_prompts.txt"
PLOT = Path(__file__).parent / "img" / "replacement_vs_minutes.png"
SKIP = dict(kind="transcoder", batch_size=254, lr=3e-3, warmup_steps=10, b_dec_init="mean", mix=16, skip=True,
            skip_fit=True, init="data")  # the skip recipe; the others below change one or two things of it
SD = dict(shuffle=True, decay_start=0.5, aux_coeff=0.0)  # shuffled sequences, lr decay over the 2nd half, no AuxK
SKIP_SD = {**SKIP, **SD}
CLT = dict(kind="clt", batch_size=254, lr=2e-3, warmup_steps=10, b_dec_init="mean", mix=16, window=4, init="data")
RECIPES = {  # what each kind trains with; "before" is the demo's recipe until 2026-12-01
    "before": dict(kind="transcoder", batch_size=254, lr=3e-3, warmup_steps=10, b_dec_init="mean", mix=1),
    "skip": SKIP,
    "skip-repeat2": {**SKIP, "repeat": 2},  # each model forward trained on twice
    "skip-repeat4": {**SKIP, "repeat": 4},
    "skip-scaled": {**SKIP, "lr": 2e-3, "init_scale": "on"},
    "skip-shuffle": {**SKIP, "shuffle": True},  # sequences from across the corpus (the demo's)
    "skip-shuffle-rs25": {**SKIP, "shuffle": True, "resample_every": 25},
    "skip-shuffle-rs25-until50": {**SKIP, "shuffle": True, "resample_every": 25, "resample_until": 0.5},
    "skip-keep-outliers": {**SKIP, "init_outlier": 0},  # as before 2026-12-03 18:23
    "skip-shuffle-keep-outliers": {**SKIP, "shuffle": True, "init_outlier": 0},
    "skip-shuffle-decay50": {**SKIP, "shuffle": True, "decay_start": 0.5},  # the lr decays over the second half
    "skip-shuffle-noaux": {**SKIP, "shuffle": True, "aux_coeff": 0.0},  # no AuxK loss on dead latents
    "skip-shuffle-decay50-noaux": SKIP_SD,
    "skip-shuffle-decay50-noaux-b508": {**SKIP_SD, "batch_size": 508},  # 4 sequences a step: fixed costs amortized
    "skip-shuffle-decay50-noaux-s1": {**SKIP_SD, "seed": 1},  # another data order and init: the seed-to-seed spread
    "skip-shuffle-decay50-noaux-b508-s1": {**SKIP_SD, "batch_size": 508, "seed": 1},
    "skip-shuffle-decay50-noaux-b508-lr4": {**SKIP_SD, "batch_size": 508, "lr": 4e-3},
    "skip-shuffle-decay50-noaux-b1016-lr4": {**SKIP_SD, "batch_size": 1016, "mix": 8, "lr": 4e-3},  # mix: same 64 seqs
    # the last quarter of the budget fine-tunes on the spliced model's KL (--kl-step-seconds sets its steps)
    "skip-shuffle-decay50-noaux-b508-kl25": {**SKIP_SD, "batch_size": 508, "kl_seqs": 4},
    "skip-shuffle-decay50-noaux-b508-kl25-s1": {**SKIP_SD, "batch_size": 508, "kl_seqs": 4, "seed": 1},
    # the latents seeded on tokens spread k-means++-style over the input directions (--init-pick spread)
    "skip-shuffle-decay50-noaux-b508-kl25-spread": {**SKIP_SD, "batch_size": 508, "kl_seqs": 4, "init_pick": "spread"},
    "skip-shuffle-decay50-noaux-b508-kl25-spread-s1": {**SKIP_SD, "batch_size": 508, "kl_seqs": 4, "init_pick": "spread",
                                                       "seed": 1},
    # silent latents' encoder biases raised until they fire (--revive-rate)
    "skip-shuffle-decay50-noaux-b508-kl25-spread-revive": {**SKIP_SD, "batch_size": 508, "kl_seqs": 4,
                                                           "init_pick": "spread", "revive_rate": 0.03},
    "skip-shuffle-decay50-noaux-b508-kl25-spread-revive-s1": {**SKIP_SD, "batch_size": 508, "kl_seqs": 4,
                                                              "init_pick": "spread", "revive_rate": 0.03, "seed": 1},
    "clt": CLT,
    "clt-shuffle-decay50-noaux": {**CLT, **SD},
    "clt-skip-shuffle-decay50-noaux": {**CLT, **SD, "skip": True, "skip_fit": True},  # a fitted skip per layer
    "clt-skip-shuffle-decay50-noaux-revive": {**CLT, **SD, "skip": True, "skip_fit": True, "revive_rate": 0.03},
}


def heldout_prompts() -> list[str]:
    lines = [ln for ln in PROMPTS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [ln.replace("\\n", "\n") for ln in lines]


def heldout_samples(model, n: int, tokens: int, seed: int) -> list[torch.Tensor]:
    """n disjoint samples of `tokens` tokens each ([contexts, 128] ids), drawn at random across the held-out split."""
    from glasswork.data import corpus
    ctx = corpus.contexts(model, split="heldout", ctx_len=128)
    per = -(-tokens // 126)  # 126 scored tokens per context (BOS and the last position are not scored)
    if n * per > len(ctx):
        fail(f"the held-out split has {len(ctx)} contexts; {n} samples of {per} need {n * per}")
    order = torch.randperm(len(ctx), generator=torch.Generator().manual_seed(seed))
    return [ctx[order[i * per:(i + 1) * per]] for i in range(n)]


def per_layer(ev: dict, counts: dict) -> tuple[dict, dict]:
    """One evaluate() result's FVU and fire counts [d_sae] per layer: a CLT's split into its layers ('clt.i'), so
    that its mean FVU is a mean over layers as for per-layer transcoders (its pooled FVU weighs the loud layers)."""
    fvus, fired = {}, {}
    for n, d in ev["dictionaries"].items():
        if "fvu_per_layer" in d:
            layers = len(d["fvu_per_layer"])
            for i, (f, c) in enumerate(zip(d["fvu_per_layer"], counts[n].view(layers, -1))):
                fvus[f"{n}.{i}"], fired[f"{n}.{i}"] = f, c
        else:
            fvus[n], fired[n] = d["fvu"], counts[n]
    return fvus, fired


def eval_samples(dicts, model, samples: list[torch.Tensor]) -> dict:
    """evaluate() on each sample: the mean and the range over samples of each figure, per-layer FVU and dead (on
    the smallest sample's count, dead_eval, and never fired on all samples together, dead_all)."""
    evs = [gw.evaluate(dicts, model, s, tokens=s.shape[0] * 126, fire_counts=True) for s in samples]
    split = [per_layer(e, e.pop("fire_counts")) for e in evs]  # [(fvu, fire counts) by layer] per sample

    def spread(vals):
        return {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}
    names = list(split[0][0])
    per = {n: {"fvu": sum(f[n] for f, _ in split) / len(split),
               "dead_eval": min(float((c[n] == 0).double().mean()) for _, c in split),
               "dead_all": float((sum(c[n] for _, c in split) == 0).double().mean())} for n in names}
    mean_fvu = [sum(f[n] for n in names) / len(names) for f, _ in split]
    pooled = {n: spread([e["dictionaries"][n]["fvu"] for e in evs]) for n in evs[0]["dictionaries"]
              if "fvu_per_layer" in evs[0]["dictionaries"][n]}
    return {"tokens": sum(e["tokens"] for e in evs), "samples": len(evs), "kl": spread([e["kl"] for e in evs]),
            "ce_loss_score": spread([e["ce_loss_score"] for e in evs]), "mean_fvu": spread(mean_fvu),
            "max_layer_fvu": max(d["fvu"] for d in per.values()), "per_layer": per,
            **({"pooled_fvu": pooled} if pooled else {})}


def graph_scores(model, dicts, prompts: list[str], max_features: int = 4096) -> dict:
    """Mean replacement and completeness over the prompts (unpruned graphs), and the default view's size."""
    from glasswork.circuits import attribute
    rows = []
    for prompt in prompts:
        g = attribute(model, dicts, prompt, max_features=max_features, show_progress=False)
        view = g.view(0.8, 0.98)
        s = g.meta.get("scores", {})
        rows.append({"prompt": prompt, "replacement": float(s["replacement"]), "completeness": float(s["completeness"]),
                     "nodes": len(view["nodes"]),
                     "features": sum(1 for nd in view["nodes"]
                                     if nd["feature_type"] not in ("mlp reconstruction error", "embedding", "logit"))})
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    nodes = sorted(r["nodes"] for r in rows)
    return {"replacement": mean("replacement"), "completeness": mean("completeness"),
            "replacement_min": min(r["replacement"] for r in rows), "nodes_median": nodes[len(nodes) // 2],
            "prompts": rows}


def _as_transcoders(trained: dict, device: str = "cpu") -> dict:
    """{layer: SparseCoder} for a transcoder set, or the CLT itself, on `device`."""
    if len(trained) == 1 and next(iter(trained.values())).cfg.kind == "clt":
        return next(iter(trained.values())).to(device)
    return {d.cfg.layer: d.to(device) for d in trained.values()}


def sparsify_transcoders(folder: Path, model) -> dict:
    """A sparsify transcoder checkpoint (OUT/layers.N.mlp/{cfg.json, sae.safetensors}) as glasswork transcoders:
    sparsify computes topk(relu(x @ W_enc + b_enc)) @ W_dec + b_dec (+ x @ W_skip^T), which is a glasswork TopK
    transcoder exactly (ReLU before or after TopK keeps the same positive codes)."""
    from safetensors.torch import load_file
    out = {}
    for sub in sorted(folder.glob("layers.*.mlp")):
        layer = int(sub.name.split(".")[1])
        cfg = json.loads((sub / "cfg.json").read_text())
        t = load_file(str(sub / "sae.safetensors"))
        d_sae, d_in = t["encoder.weight"].shape
        d = gw.SparseCoder(gw.DictionaryConfig(kind="transcoder", d_in=d_in, d_sae=d_sae, activation="topk",
                                               k=int(cfg["k"]), skip="W_skip" in t, b_dec_in=False, layer=layer,
                                               model=model.name, hook_in=f"blocks.{layer}.ln2.hook_normalized",
                                               hook_out=f"blocks.{layer}.hook_mlp_out"))
        with torch.no_grad():
            d.W_enc.copy_(t["encoder.weight"].T)
            d.b_enc.copy_(t["encoder.bias"])
            d.W_dec.copy_(t["W_dec"])
            d.b_dec.copy_(t["b_dec"])
            if "W_skip" in t:
                d.W_skip.copy_(t["W_skip"].T)
        out[layer] = d.requires_grad_(False)
    return out


def calibrate_tokens(kind: str, tc: TrainConfig, model, train_docs, seconds: float, threads: int) -> int:
    """Training tokens that fit in `seconds` for this recipe: the step time of a short run (model forwards included)."""
    from glasswork.training.trainer import Trainer
    from dataclasses import replace
    probe = replace(tc, tokens=tc.batch_size * 40, checkpoint_every=10 ** 9)
    src = LoadAwareSource.from_config(model, _texts(train_docs, probe), probe, threads=threads)
    from tempfile import mkdtemp
    t = Trainer(probe, src, Path(mkdtemp()) / "probe")
    batches = src.batches(0)
    t0 = time.time()
    n = 0
    for b in batches:  # the init batches are part of a real run too
        t.train_step(b)
        n += 1
        if n == 2 * probe.mix * probe.repeat:  # whole blocks: a repeated block's later passes need no forward
            break
    per_step = (time.time() - t0) / n
    return max(probe.batch_size, int(seconds / per_step) * probe.batch_size)


KL_SHARE = {kind: 0.25 for kind in RECIPES if "-kl25" in kind}  # recipes that end with a KL fine-tune: its share of the time

PEER_RECIPES = {  # sparsify's recipes: its defaults (32 sequences a step, no skip), and at the demo's batch with a skip
    "sparsify": [], "sparsify-skip-b2": ["--skip", "--batch-size", "2"]}


def recipe_config(kind: str, a, model) -> TrainConfig:
    """The TrainConfig of recipe `kind` for all layers at the command's width, k and device (tokens set later)."""
    return TrainConfig(arch="topk", layers=list(range(model.n_layers)), k=a.tc_k, model=model.name, device=a.device,
                       d_sae=a.clt_d_sae if RECIPES[kind]["kind"] == "clt" else a.tc_d_sae, **RECIPES[kind])


def budget_part(a, model, train_docs) -> dict:
    """Each recipe at each budget (minutes of training on this CPU), then the same evaluation for all."""
    samples = heldout_samples(model, 4, a.eval_tokens // 4, seed=0)
    prompts = heldout_prompts()
    results = {}
    for kind in a.kinds.split(","):
        for minutes in [float(m) for m in a.budgets.split(",")]:
            name = f"{kind}@{minutes:g}min"
            if kind in PEER_RECIPES:
                # --peer-seconds-from: the peer gets the wall-clock seconds that recipe's row actually trained
                ours = results.get(f"{a.peer_seconds_from}@{minutes:g}min") if a.peer_seconds_from else None
                seconds = ours["train_seconds"] if ours else minutes * 60
                extra, runs = list(PEER_RECIPES[kind]), Path(a.sparsify_dir or Path(a.out_dir) / kind)
                if a.peer_tokens_per_minute:  # a token budget: load beside it stretches the run, not its result
                    steps = max(1, round(minutes * a.peer_tokens_per_minute / peer_tokens_per_step(extra)))
                    folder = runs / f"{steps}steps"
                    seconds, extra = 1e9, extra + ["--max-steps", str(steps), "--save-every", "500", "--resume"]
                else:
                    folder = runs / (f"{seconds:.0f}s" if ours else f"{minutes:g}min")
                if not (folder / "peer_run.json").exists():
                    run_sparsify(a, folder, seconds, extra)
                peer = json.loads((folder / "peer_run.json").read_text())
                dicts = _as_transcoders(sparsify_transcoders(folder, model), a.device)
                train_s, tokens = round(peer["train_s"], 1), peer["tokens"]
                precision = "sparsify's"
            else:
                tc = recipe_config(kind, a, model)
                folder = Path(a.out_dir) / name
                share = KL_SHARE.get(kind, 0.0)  # of the budget's time, spent on KL fine-tune steps
                if share:
                    tc.kl_steps = max(1, round(minutes * 60 * share / a.kl_step_seconds))
                if not finished(folder, tc):  # else: reused
                    tc.tokens = (max(tc.batch_size, round(minutes * (1 - share) * a.tokens_per_minute) // tc.batch_size
                                     * tc.batch_size) if a.tokens_per_minute else
                                 calibrate_tokens(kind, tc, model, train_docs, minutes * 60 * (1 - share), a.threads))
                r = run_train(kind, tc, model, train_docs, folder, a.threads)
                dicts, train_s, tokens = _as_transcoders(r["dicts"], a.device), r["seconds"], r["tokens"]
                precision = next(iter(r["dicts"].values())).cfg.training.get("precision_used", "?")
            ev = eval_samples({f"layer{l}": d for l, d in dicts.items()} if isinstance(dicts, dict) else {"clt": dicts},
                              model, samples)
            gs = graph_scores(model, dicts, prompts)
            results[name] = {"kind": kind, "minutes": minutes, "train_seconds": train_s, "tokens": tokens,
                             "precision": precision, "eval": ev, "graphs": gs}
            print(json.dumps({k: v for k, v in results[name].items() if k not in ("eval", "graphs")} |
                             {"kl": ev["kl"]["mean"], "mean_fvu": ev["mean_fvu"]["mean"],
                              "replacement": gs["replacement"], "completeness": gs["completeness"]}), flush=True)
            if a.json_out:
                Path(a.json_out).write_text(json.dumps({"args": vars(a), "results": {"budget": results}}, indent=1, default=str))
    return results


def peer_tokens_per_step(extra: list[str]) -> int:
    """Trained tokens in one of peer_sparsify.py's steps: its batch of 128-token rows, BOS left out."""
    batch = int(extra[extra.index("--batch-size") + 1]) if "--batch-size" in extra else 32
    return batch * 127


def run_sparsify(a, folder: Path, seconds: float, extra: list[str]) -> None:
    """The peer in its own venv and process (benchmarks/peer_sparsify.py), same layers, width, k and budget; `extra`:
    peer_sparsify.py's flags for the recipe."""
    import subprocess
    from glasswork.models import default_model_folder
    texts = Path(a.out_dir) / "train_texts.jsonl"
    if not texts.exists():
        from glasswork.data import corpus
        texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus.default_texts()))
    cmd = [a.sparsify_python, str(Path(__file__).with_name("peer_sparsify.py")), "--model-dir", str(default_model_folder()),
           "--texts", str(texts), "--layers", "0-29", "--num-latents", str(a.tc_d_sae), "--k", str(a.tc_k),
           "--seconds", str(seconds), "--out", str(folder), "--threads", str(a.threads or os.cpu_count()), *extra]
    print("peer:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def run_train(kind: str, tc: TrainConfig, model, train_docs, folder: Path, threads: int) -> dict:
    src = LoadAwareSource.from_config(model, _texts(train_docs, tc), tc, threads=threads)
    tc.batch_size = src.batch_size
    if finished(folder, tc):  # trained before: reuse
        from glasswork.dictionaries.saving import load, load_set
        trained = load(folder) if (folder / "config.json").exists() else load_set(folder)
        trained = trained if isinstance(trained, dict) else {"clt": trained}
        meta = next(iter(trained.values())).cfg.training
        return {"dicts": trained, "seconds": meta.get("seconds"), "tokens": next(iter(trained.values())).cfg.tokens_seen}
    return train(tc, src, folder, resume=True)  # continues a killed run (its checkpoint, or its KL fine-tune)


def budget_table(results: dict, a) -> str:
    lines = [f"\n## The replacement model at fixed CPU budgets (started {getattr(a, 'started', '?')}, recorded "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n",
             f"Machine: {os.cpu_count()}-core {cpu_name()}, torch {torch.__version__}; training in the precision of each "
             f"row (`auto`: bf16 autocast where the hardware has fast bf16, AMX / AVX512-BF16 or a bf16 GPU), the model "
             f"forwards that feed training in the same precision (fp32 before 2026-12-04 23:15 UTC), evaluation and "
             f"graphs in fp32. Command: `{a.command}`. "
             f"Every row: 30 layers, TopK k {a.tc_k}, trained for the budget straight from the model (tokens chosen "
             f"from a timed probe of the same recipe; `train s` is what the run took), then evaluated the same way: "
             f"{a.eval_tokens:,} held-out tokens in 4 disjoint samples drawn at random across the held-out split "
             f"(seed 0), every layer spliced in at once for KL and CE-loss score (mean, and min-max over the 4 "
             f"samples); FVU on clean inputs; graphs of the {len(heldout_prompts())} prompts in "
             f"`benchmarks/data/heldout_prompts.txt` (none of them the demo's), unpruned scores, node count of the "
             f"default view (0.8 / 0.98); dead = never fired on one 8k-token sample (the fewest of the 4) or on all "
             f"{a.eval_tokens:,} tokens. Recipes: `before` = the demo's until today (no skip, random init, batches "
             f"of consecutive tokens); `skip` = skip fitted by least squares (ridge 0.1 relative since 2026-12-04 "
             f"20:30 UTC, 1e-6 before), latents seeded on tokens, 16 batches mixed; `skip-shuffle` = skip with the "
             f"corpus's sequences read in a seeded random order; `skip-shuffle-rs25` = that, dead latents re-seeded "
             f"every 25 steps (`-until50`: in the first half of the run only); `skip-shuffle-keep-outliers` = "
             f"`skip-shuffle` with no token left out of the init; `clt` = cross-layer transcoder, window 4, same init "
             f"ideas where they apply (`clt-shuffle-decay50-noaux`: with the demo's shuffle, decay and no AuxK; "
             f"`clt-skip-...`: and a fitted skip per layer; a CLT's FVU and dead are per layer, as for the per-layer "
             f"rows, since 2026-12-05); `sparsify` = "
             f"EleutherAI sparsify 1.3.3 (`benchmarks/peer_sparsify.py`, its defaults), same hooks and budget; "
             f"`sparsify-skip-b2` = the same with its skip on and 2 sequences a step (the demo's batch); `-kl25`: the "
             f"last quarter of the budget's time on KL fine-tune steps (`--kl-steps`, {a.kl_step_seconds:g} s a step), "
             f"the first three quarters' tokens on reconstruction.\n",
             "| recipe | budget min | train precision | train s | tokens | mean FVU | max layer FVU | layers dead > 10% (8k / 32k) | "
             "max layer dead (32k) | KL (range) | CE-loss score | replacement (min) | completeness | median nodes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ev, gs = r["eval"], r["graphs"]
        dead = sum(1 for d in ev["per_layer"].values() if d["dead_eval"] > 0.1)
        dead_all = [d.get("dead_all", float("nan")) for d in ev["per_layer"].values()]  # older records lack it
        lines.append(f"| {r['kind']} | {r['minutes']:g} | {r.get('precision', '?')} | {r['train_seconds']} | "
                     f"{r['tokens']:,} | "
                     f"{ev['mean_fvu']['mean']:.3f} | {ev['max_layer_fvu']:.3f} | {dead} / "
                     f"{sum(1 for v in dead_all if v > 0.1)} | {max(dead_all):.3f} | {ev['kl']['mean']:.2f} "
                     f"({ev['kl']['min']:.2f}-{ev['kl']['max']:.2f}) | {ev['ce_loss_score']['mean']:.3f} | "
                     f"{gs['replacement']:.3f} ({gs['replacement_min']:.3f}) | {gs['completeness']:.3f} | "
                     f"{gs['nodes_median']} |")
    return "\n".join(lines) + "\n"


def budget_plot(results: dict, path: Path) -> None:
    """Mean replacement score and mean per-layer FVU against the budget, one line per recipe."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    # issue 15's targets: at the demo's ~10 minutes, and after 2 hours
    panels = ((lambda r: r["graphs"]["replacement"], "mean replacement score (24 held-out prompts)", (0.55, 0.65)),
              (lambda r: r["eval"]["mean_fvu"]["mean"], "mean per-layer FVU (32k held-out tokens)", (0.30, 0.15)))
    for ax, (value, label, targets) in zip(axes, panels):
        for t, when in zip(targets, ("10 min", "2 h")):
            ax.axhline(t, color="grey", ls=":", lw=1)
            ax.annotate(f"target at {when}", (0.45, t), xycoords=("axes fraction", "data"), fontsize=7,
                        color="grey", va="bottom")
        for kind in sorted({r["kind"] for r in results.values()}):
            pts = sorted((float(r["minutes"]), value(r)) for r in results.values() if r["kind"] == kind)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=kind)
        minutes = sorted({float(r["minutes"]) for r in results.values()})
        if minutes[-1] > 8 * minutes[0]:  # budgets from minutes to hours: doublings evenly spaced
            ax.set_xscale("log", base=2)
            ax.set_xticks(minutes, [f"{m:g}" for m in minutes])
            ax.set_xlim(minutes[0] / 1.3, minutes[-1] * 1.3)
        else:
            ax.set_xlim(0, minutes[-1] * 1.15)
        ax.set_ylim(0, 1)  # the whole range: two close budgets must not look far apart
        ax.set_xlabel("budget: CPU minutes (2 cores; seconds trained: RESULTS.md)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("30 transcoders of smollm2-135m per CPU minute")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


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
    p.add_argument("--only", default="sae,tc,clt", help="sae, tc, clt, or budget (the replacement model at CPU budgets)")
    p.add_argument("--kinds", default="before,skip", help="budget: recipes (the keys of RECIPES and PEER_RECIPES)")
    p.add_argument("--budgets", default="10", help="budget: minutes of training, comma-separated")
    p.add_argument("--kl-step-seconds", type=float, default=3.0,
                   help="budget: seconds one KL fine-tune step of 4 sequences takes here (KL recipes get their share "
                        "of the minutes / this many steps; 3.0 measured on the 2-core AMX Xeon, 2026-12-05)")
    p.add_argument("--tokens-per-minute", type=float, default=0,
                   help="budget: a budget's tokens are minutes x this rate (measured on the CPU the budget is for: "
                        "`--calibrate`), not a timed probe on this machine: a GPU then trains what the CPU would")
    p.add_argument("--calibrate", action="store_true",
                   help="budget: print each recipe's tokens per minute from a timed probe on this machine, train nothing")
    p.add_argument("--peer-seconds-from", default="",
                   help="budget: a recipe of --kinds (listed before the peer): at each budget the peer trains for the "
                        "seconds that recipe's row actually took, not the budget's minutes")
    p.add_argument("--peer-tokens-per-minute", type=float, default=0,
                   help="budget: the peer trains minutes x this many tokens (its rate measured alone on this CPU), "
                        "whatever else runs beside it, with periodic saves it resumes from; 0: a wall-clock budget")
    p.add_argument("--sparsify-dir", default="", help="budget: folder with sparsify runs named <minutes>min")
    p.add_argument("--sparsify-python", default="/work/peers/sparsify/bin/python",
                   help="budget: the python of a venv with eai-sparsify (recipe in benchmarks/peer_sparsify.py)")
    p.add_argument("--out-dir", default="", help="budget: where the trained sets go (a set found there is reused)")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--json-out", default="", help="write args and results here after each part")
    p.add_argument("--report-from", default="", help="a --json-out file: print (and append) its section, train nothing")
    p.add_argument("--command", default="", help="with --report-from: the command that made the file, if it lacks one")
    p.add_argument("--plot-from", default="", help="budget --json-out files, comma-separated: one plot of all their "
                   "rows (runs on another device at a CPU's --tokens-per-minute count as that CPU's minutes)")
    p.add_argument("--plot-out", default=str(PLOT), help="where --plot-from draws (default: the committed plot)")
    a = p.parse_args()
    if a.tokens_per_minute < 0:
        fail(f"--tokens-per-minute must be >= 0 (0: a timed probe sets each budget's tokens; got {a.tokens_per_minute})")
    if a.plot_from:
        rows = {}
        for i, f in enumerate(a.plot_from.split(",")):
            try:
                budget = json.loads(Path(f).read_text()).get("results", {}).get("budget")
            except (OSError, ValueError) as e:
                fail(f"{f}: not a readable --json-out file ({e})")
            if not budget:
                fail(f"{f}: no budget results (results.budget); --plot-from takes `--only budget` files")
            rows |= {f"{name} {i}": r for name, r in budget.items()}
        budget_plot(rows, Path(a.plot_out))
        return
    if a.report_from:
        saved = json.loads(Path(a.report_from).read_text())
        args = saved["args"]
        if isinstance(args.get("load_start"), list):
            args["load_start"] = args["load_start"][0]
        a = argparse.Namespace(**{**args, "no_record": a.no_record, "command": args.get("command") or a.command})
        if "budget" in saved["results"]:
            budget_plot(saved["results"]["budget"], PLOT)
        report = (budget_table(saved["results"]["budget"], a) if "budget" in saved["results"]
                  else table(saved["results"], a))
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
    from glasswork.cli.training import parse_layers
    if a.only == "budget" and a.calibrate:
        for kind in a.kinds.split(","):
            tpm = calibrate_tokens(kind, recipe_config(kind, a, model), model, train_docs, 6000, a.threads) / 100
            print(json.dumps({"kind": kind, "tokens_per_minute": tpm}), flush=True)
        return
    if a.only == "budget":
        a.out_dir = a.out_dir or str(out / "budget")
        results = budget_part(a, model, train_docs)
        report = budget_table(results, a)
        print(report)
        if not a.no_record:  # the committed plot too (--plot-from draws several runs' rows together)
            budget_plot(results, PLOT)
            with open(Path(__file__).parent / "RESULTS.md", "a") as f:
                f.write(report)
        return
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
