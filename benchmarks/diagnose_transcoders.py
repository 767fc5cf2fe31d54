"""Why the demo's transcoders explain so little: measurements behind each claim of the diagnosis in RESULTS.md.

1. `stats`: per layer, the scale of the MLP inputs and outputs, and how much of each MLP output a linear map of its
   input explains (least squares fitted on training tokens, FVU on held-out tokens): the part a skip would carry.
2. `ablate`: single-layer TopK transcoders trained on cached activations of a few layers, one change at a time at a
   fixed number of steps (the demo's budget: 394 steps of 254 tokens): held-out FVU and dead fraction.

Activations (MLP input `blocks.L.ln2.hook_normalized`, output `blocks.L.hook_mlp_out`, all 30 layers) are captured
once from random 128-token contexts of each split and cached in $GLASSWORK_HOME/benchmarks/diagnose/.

  python benchmarks/diagnose_transcoders.py stats [--train-tokens 32768 --eval-tokens 16384]
  python benchmarks/diagnose_transcoders.py ablate --layers 3,15,25 [--steps 394]
  python benchmarks/diagnose_transcoders.py layer-kl --dictionary DIR [--eval-tokens 1524]
  python benchmarks/diagnose_transcoders.py error-entry --dictionary DIR [--prompts 24]

3. `layer-kl`: which layers' transcoders cost the most KL: each spliced alone, and all but that one spliced, against
   all of them at once (KL(clean || spliced) per token on the first held-out contexts, BOS and last position left
   out, as `evals.evaluate` does).
4. `error-entry`: where the error nodes' influence enters the attribution graphs of the held-out prompts
   (benchmarks/data/heldout_prompts.txt, unpruned, budget 4,096 as quality.py): the replacement score is the token
   nodes' share of the influence that ends at token or error nodes, and each row of the graph (a logit, or a feature
   of some layer) passes its influence on to its inputs in proportion to |edge|. Per row group, the influence that
   ends there at error nodes and at token nodes; per error-node group (layers x position), its influence.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch

import glasswork as gw
from glasswork.evals import fvu
from glasswork.data import corpus
from glasswork.hooks import capture, mlp_hooks
from glasswork.io import home, load_tensors, save_tensors
from glasswork.training import TensorSource, TrainConfig, train
from glasswork.training.init import fit_linear

RESULTS = Path(__file__).with_name("RESULTS.md")


def cached_activations(model, split: str, tokens: int, seed: int, layers=None, cache: Path | None = None,
                       seqs: int = 8, name: str = "") -> dict[str, torch.Tensor]:
    """{hook: [n, d]} for the MLP inputs and outputs of `layers` (None: all), from random contexts of `split` (BOS
    dropped), `seqs` contexts per forward; cached in `cache` (default $GLASSWORK_HOME/benchmarks/diagnose) as `name`
    (default split-tokens-seed)."""
    path = (cache or home() / "benchmarks" / "diagnose") / f"{name or f'{split}-{tokens}-{seed}'}.safetensors"
    if path.exists():
        return load_tensors(path, "cached activations")
    ctx = corpus.contexts(model, split=split, ctx_len=128)
    pick = torch.randperm(len(ctx), generator=torch.Generator().manual_seed(seed))[:-(-tokens // 127)]
    names = [h for l in (range(model.n_layers) if layers is None else layers) for h in mlp_hooks(l)]
    parts: dict[str, list] = {h: [] for h in names}
    for i in range(0, len(pick), seqs):
        _, acts = capture(model, ctx[pick[i:i + seqs]], names)
        for h, a in acts.items():
            parts[h].append(a[:, 1:].reshape(-1, a.shape[-1]).float())
    acts = {h: torch.cat(p)[:tokens].contiguous() for h, p in parts.items()}
    save_tensors(path, acts)
    return acts


def stats(model, train_acts, eval_acts) -> list[dict]:
    rows = []
    for l in range(model.n_layers):
        xh, yh = mlp_hooks(l)
        x, y, xe, ye = train_acts[xh], train_acts[yh], eval_acts[xh], eval_acts[yh]
        W, b = fit_linear(x.double(), y.double())
        var = (ye - ye.mean(0)).pow(2).sum(-1).mean()
        # how concentrated the output variance is: share of the top 1 / top 16 principal directions
        eig = torch.linalg.eigvalsh(torch.cov(y.double().T)).flip(0)
        rows.append({"layer": l, "x_rms": float(x.pow(2).sum(-1).mean().sqrt()), "y_rms": float(y.pow(2).sum(-1).mean().sqrt()),
                     "y_mean_share": float(ye.mean(0).pow(2).sum() / ye.pow(2).sum(-1).mean()),
                     "y_var": float(var), "top1_pc": float(eig[0] / eig.sum()), "top16_pc": float(eig[:16].sum() / eig.sum()),
                     "linear_fvu": fvu(ye, xe.double() @ W + b), "linear_fvu_train": fvu(y, x.double() @ W + b)})
        print(json.dumps(rows[-1]))
    return rows


class SequentialSource(TensorSource):
    """Rows in their captured order (two 128-token contexts per 254-token batch), as the demo's ModelSource reads
    the corpus: consecutive tokens of one or two documents per batch."""

    def batches(self, start: int = 0, rank: int = 0, world: int = 1):
        per_epoch = self.n // self.batch_size
        step = start
        while True:
            i = step % per_epoch
            yield {h: a[i * self.batch_size:(i + 1) * self.batch_size][rank::world] for h, a in self.acts.items()}
            step += 1


def ablate(model, train_acts, eval_acts, layers: list[int], steps: int, variants: list[str],
           sequential: bool = False) -> list[dict]:
    """Single-layer transcoders, one change at a time from the demo's recipe (tokens shuffled unless sequential)."""
    base = TrainConfig(kind="transcoder", arch="topk", layers=[0], d_sae=2304, k=16, batch_size=254, tokens=254 * steps,
                       lr=3e-3, warmup_steps=10, b_dec_init="mean", model=model.name, checkpoint_every=10 ** 9)
    options = {
        "demo": {},
        "lr 1e-3": {"lr": 1e-3},
        "lr 1e-2": {"lr": 1e-2},
        "batch 1016, lr 3e-3 (1/4 steps)": {"batch_size": 1016, "tokens": 254 * steps},
        "aux_coeff 1/4": {"aux_coeff": 0.25},
        "k 32": {"k": 32},
        "d_sae 4608": {"d_sae": 4608},
        "skip (learned from zero)": {"skip": True},
        "skip fit": {"skip": True, "skip_fit": True},
        "skip fit, frozen": {"skip": True, "skip_fit": True, "freeze_skip": True},
        "init data": {"init": "data"},
        "skip fit + init data": {"skip": True, "skip_fit": True, "init": "data"},
        "skip fit frozen + init data": {"skip": True, "skip_fit": True, "freeze_skip": True, "init": "data"},
    }
    fit_data = options["skip fit + init data"]
    options.update({f"skip fit + init data, {name}": {**fit_data, **kw} for name, kw in {
        "lr 1e-3": {"lr": 1e-3}, "lr 1e-2": {"lr": 1e-2}, "k 32": {"k": 32}, "d_sae 4608": {"d_sae": 4608},
        "d_sae 1152": {"d_sae": 1152}, "no AuxK": {"aux_coeff": 0.0}, "batch 1016": {"batch_size": 1016},
        "2x steps": {"tokens": 2 * 254 * steps}, "lr 2e-3": {"lr": 2e-3}, "decay from 50%": {"decay_start": 0.5},
        "AuxK 1/4": {"aux_coeff": 0.25}, "lr 2e-3, decay from 50%": {"lr": 2e-3, "decay_start": 0.5}}.items()})
    rows = []
    for l in layers:
        xh, yh = mlp_hooks(l)
        for name in variants or options:
            kw = options[name]
            tc = replace(base, **{k: v for k, v in kw.items() if k in TrainConfig.__dataclass_fields__})
            acts = {"blocks.0.ln2.hook_normalized": train_acts[xh].clone(), "blocks.0.hook_mlp_out": train_acts[yh].clone()}
            out = home() / "benchmarks" / "diagnose" / "runs" / f"{datetime.now():%H%M%S%f}"
            t0 = time.time()
            source = (SequentialSource if sequential else TensorSource)(acts, tc.batch_size, seed=0, model=model.name)
            r = train(tc, source, out)
            d = r["dicts"]["layer_00"]
            seconds = time.time() - t0
            with torch.no_grad():
                pred = d(eval_acts[xh])
                codes = d.encode(eval_acts[xh])
            row = {"layer": l, "variant": name + (" [sequential]" if sequential else ""), "fvu": round(fvu(eval_acts[yh], pred), 4),
                   "dead_eval": round(float(((codes != 0).sum(0) == 0).float().mean()), 3),
                   "dead_train": round(r["dictionaries"]["layer_00"]["dead_fraction"], 3), "seconds": round(seconds, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def throughput(model, train_acts) -> list[dict]:
    """Where the demo stage's time goes: the model forward that captures all 60 hooks (per token, at 2 and 8
    sequences per forward), and one optimizer step of all 30 transcoders on in-memory activations."""
    from glasswork.training.trainer import Trainer
    names = [h for l in range(model.n_layers) for h in mlp_hooks(l)]
    ctx = corpus.contexts(model, split="train", ctx_len=128)[:64]
    rows = []
    for seqs in (2, 8):
        capture(model, ctx[:seqs], names)  # warm
        t0 = time.time()
        for i in range(0, 32, seqs):
            capture(model, ctx[i:i + seqs], names)
        rows.append({"what": f"forward, 60 hooks, {seqs} x 128 tokens per pass", "tokens_per_s": round(32 * 127 / (time.time() - t0))})
        print(json.dumps(rows[-1]), flush=True)
    for batch in (254, 1016):
        for kw in ({}, {"skip": True, "skip_fit": True, "freeze_skip": True}, {"skip": True, "skip_fit": True}):
            tc = TrainConfig(kind="transcoder", arch="topk", layers=list(range(model.n_layers)), d_sae=2304, k=16,
                             batch_size=batch, tokens=batch * 1000, lr=3e-3, init_tokens=2 * 576, checkpoint_every=10 ** 9, **kw)
            out = home() / "benchmarks" / "diagnose" / "runs" / f"tp{datetime.now():%H%M%S%f}"
            t = Trainer(tc, TensorSource({h: a[:8192] for h, a in train_acts.items()}, batch), out)
            it = t.source.batches(0)
            batches = [next(it) for _ in range(6)]
            t.train_step(batches[0])
            t0 = time.time()
            for b in batches[1:]:
                t.train_step(b)
            ms = (time.time() - t0) / 5 * 1000
            rows.append({"what": f"train step, 30 transcoders 2304 x k16, batch {batch}, {kw or 'no skip'}",
                         "ms": round(ms), "tokens_per_s": round(batch / ms * 1000)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


@torch.no_grad()
def layer_kl(model, folder: str, tokens: int) -> list[dict]:
    from glasswork.data.corpus import heldout_texts, token_rows
    from glasswork.evals import _as_dicts
    from glasswork.dictionaries.splice import Splice
    from glasswork.hooks import intervene
    dicts = _as_dicts(folder)
    for d in dicts.values():
        d.eval()
    rows = token_rows(model, heldout_texts(), 128)
    ids = torch.stack([next(rows) for _ in range(max(1, tokens // 127))])

    def logp(subset: dict) -> torch.Tensor:  # [seqs, 126, vocab]
        out = []
        with intervene(model, Splice(subset).edits()):
            for b in ids.split(6):
                out.append(model.hf(b).logits.float()[:, 1:-1].log_softmax(-1))
        return torch.cat(out)

    clean = logp({})

    def kl(subset: dict) -> float:
        lq = logp(subset)
        return round(float((clean.exp() * (clean - lq)).sum(-1).mean()), 4)

    out = [{"layer": "all", "alone": kl(dicts), "all_but": 0.0}]
    print(json.dumps(out[-1]), flush=True)
    for name in sorted(dicts):
        out.append({"layer": name, "alone": kl({name: dicts[name]}),
                    "all_but": kl({n: d for n, d in dicts.items() if n != name})})
        print(json.dumps(out[-1]), flush=True)
    return out


def error_entry(model, folder: str, n_prompts: int) -> dict:
    import sys
    from collections import Counter
    from glasswork.circuits import attribute
    from glasswork.circuits.graph import ERROR, LOGIT, TOKEN
    from glasswork.evals import _as_dicts
    sys.path.insert(0, str(Path(__file__).parent))
    from quality import _as_transcoders, heldout_prompts
    dicts = _as_transcoders(_as_dicts(folder))
    ends_error, ends_token, by_source, replacement = Counter(), Counter(), Counter(), []

    def group(layer: int, pos: int, last: int) -> str:
        where = "first" if pos == 1 else ("last" if pos == last else "other")
        return f"layers {layer // 10 * 10}-{layer // 10 * 10 + 9}, {where} position"

    prompts = heldout_prompts()[:n_prompts]
    for prompt in prompts:
        g = attribute(model, dicts, prompt, max_features=4096, show_progress=False)
        infl, kind, rows = g.node_influence(), g.node_kind, g.row_nodes
        a = g.adjacency.float().abs()  # [rows, nodes]
        share = 1 / a.sum(1).clamp_min(1e-10)
        weight = (infl + g._logit_vector())[rows]  # what each row passes on to its inputs
        err_in = a[:, kind == ERROR].sum(1) * share * weight
        tok_in = a[:, kind == TOKEN].sum(1) * share * weight
        total = float(err_in.sum() + tok_in.sum())
        last = len(g.input_ids) - 1
        for r, node in enumerate(rows.tolist()):
            key = "logit rows" if kind[node] == LOGIT else "feature rows, " + group(int(g.node_layer[node]),
                                                                                  int(g.node_pos[node]), last)
            ends_error[key] += float(err_in[r]) / total / len(prompts)
            ends_token[key] += float(tok_in[r]) / total / len(prompts)
        for i in torch.nonzero(kind == ERROR).flatten().tolist():
            by_source[group(int(g.node_layer[i]), int(g.node_pos[i]), last)] += float(infl[i]) / total / len(prompts)
        replacement.append(float(tok_in.sum()) / total)
    out = {"replacement_mean": sum(replacement) / len(replacement),
           "enters_at": {k: {"error": round(ends_error[k], 4), "token": round(ends_token[k], 4)}
                         for k in sorted(ends_error)},
           "error_nodes": {k: round(v, 4) for k, v in sorted(by_source.items(), key=lambda kv: -kv[1])}}
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["stats", "ablate", "throughput", "layer-kl", "error-entry"])
    ap.add_argument("--dictionary", default="", help="layer-kl, error-entry: a folder of transcoders")
    ap.add_argument("--prompts", type=int, default=24, help="error-entry: the first N held-out prompts")
    ap.add_argument("--train-tokens", type=int, default=32768)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--layers", default="3,15,25")
    ap.add_argument("--steps", type=int, default=394)
    ap.add_argument("--variants", default="")
    ap.add_argument("--json-out", default="")
    ap.add_argument("--sequential", action="store_true", help="batches of consecutive tokens, as the demo reads")
    args = ap.parse_args()
    if args.part in ("layer-kl", "error-entry") and not args.dictionary:  # before the model loads
        ap.error(f"{args.part} needs --dictionary DIR (a folder of transcoders)")
    torch.manual_seed(0)
    model = gw.load_model()
    if args.part == "error-entry":
        rows = error_entry(model, args.dictionary, args.prompts)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))
        return
    if args.part == "layer-kl":
        rows = layer_kl(model, args.dictionary, args.eval_tokens if args.eval_tokens != 16384 else 1524)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))
        return
    train_acts = cached_activations(model, "train", args.train_tokens, seed=0)
    eval_acts = cached_activations(model, "heldout", args.eval_tokens, seed=1)
    if args.part == "stats":
        rows = stats(model, train_acts, eval_acts)
    elif args.part == "throughput":
        rows = throughput(model, train_acts)
    else:
        rows = ablate(model, train_acts, eval_acts, [int(x) for x in args.layers.split(",")], args.steps,
                      [v for v in args.variants.split(";") if v], args.sequential)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
