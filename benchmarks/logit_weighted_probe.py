"""Probe: do losses that weigh each layer's error by what the logits read from it raise the replacement score?

Starting from a trained transcoder set (30 layers), a few steps of one loss, then held-out KL / CE-loss score / FVU
(8,192 tokens: 64 random held-out contexts, seed 0) and the replacement score of the held-out prompts' graphs
(quality.py's graph_scores). Modes:

  none      the set as it is
  spliced   the KL fine-tune that `glasswork train --kl-steps` runs (kl_finetune.kl_loss: all layers spliced)
  sampled   each layer's own error on the real model's inputs, weighted per token by the model's gradient:
            FVU + lam x sum (g . e)^2 / sum (g . (y - mean y))^2, g = d log p(y~) / d(MLP output) with y~ drawn from
            the model's next-token distribution at every position (E over y~ of (g . e)^2 is e's Fisher metric: the
            KL that error alone would cost, to second order); one forward and backward of the model a step
  static    the same metric averaged into one 576 x 576 matrix per layer (C = E[g g^T] over --c-seqs sequences,
            trace 1), then reconstruction steps with FVU + lam x C-weighted FVU (no backward of the model a step)

  python benchmarks/logit_weighted_probe.py SETDIR --mode sampled --steps 40 --lr 3e-3 --lam 1
  python benchmarks/logit_weighted_probe.py SETDIR --mode static --steps 150 --lr 1e-3 --lam 3 --c-seqs 64

A step reads 4 sequences of 128 train-split tokens (seeded order). lr is relative to each weight's RMS, decaying
linearly to 0, Adam with fresh moments (as kl_finetune)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import glasswork as gw
from glasswork.data import corpus
from glasswork.dictionaries.saving import load_set
from glasswork.dictionaries.splice import Splice
from glasswork.evals import evaluate
from glasswork.hooks import intervene
from glasswork.precision import autocast
from glasswork.training.kl_finetune import kl_loss
from glasswork.training.optim import Adam

sys.path.insert(0, str(Path(__file__).parent))
from quality import _as_transcoders, graph_scores, heldout_prompts  # noqa: E402


def mlp_pass(model, dicts: dict, ids: torch.Tensor, with_grads: bool):
    """The real model on ids [seqs, ctx]: each layer's MLP input x and output y after BOS ({name: [tokens, d]}),
    and with_grads: g = d log p(y~) / dy per token, y~ drawn from the model's own next-token distributions."""
    xs, ys, deltas, edits = {}, {}, {}, {}
    for n, d in dicts.items():
        def keep(act, n=n):
            xs[n] = act.detach().float()[:, 1:].flatten(0, 1)
            return act

        def put(act, n=n):
            ys[n] = act.detach().float()[:, 1:].flatten(0, 1)
            if not with_grads:
                return act
            deltas[n] = torch.zeros_like(act, requires_grad=True)
            return act + deltas[n]
        edits[d.cfg.hook_in], edits[d.cfg.hook_out] = keep, put
    if not with_grads:
        with torch.no_grad(), intervene(model, edits), autocast("cpu", "auto"):
            model.hf(ids)
        return xs, ys, None
    with intervene(model, edits), autocast("cpu", "auto"):
        logp = model.hf(ids).logits[:, 1:].float().log_softmax(-1)  # [seqs, ctx - 1, vocab]
    drawn = torch.multinomial(logp.detach().exp().flatten(0, 1), 1).view(logp.shape[:2] + (1,))
    grads = torch.autograd.grad(logp.gather(-1, drawn).sum(), [deltas[n] for n in dicts])
    return xs, ys, {n: g.float()[:, 1:].flatten(0, 1) for n, g in zip(dicts, grads)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set_dir")
    ap.add_argument("--mode", choices=["none", "spliced", "sampled", "static"], default="sampled")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--c-seqs", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=24)
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = gw.load_model()
    for p in model.hf.parameters():
        p.requires_grad_(False)
    dicts = load_set(a.set_dir)
    names = sorted(dicts)
    dicts = {n: dicts[n] for n in names}
    gen = torch.Generator().manual_seed(0)
    ev = corpus.contexts(model, split="heldout", ctx_len=128)
    ev = ev[torch.randperm(len(ev), generator=gen)[:64]]
    tr = corpus.contexts(model, split="train", ctx_len=128, seed=5)
    tr = tr[torch.randperm(len(tr), generator=gen)]
    t0 = time.time()
    metric = {}
    if a.mode == "static":  # C = E[g g^T] per layer from the last c_seqs train sequences
        metric = {n: torch.zeros(d.cfg.d_out, d.cfg.d_out, dtype=torch.float64) for n, d in dicts.items()}
        for b in range(a.c_seqs // 4):
            _, _, gs = mlp_pass(model, dicts, tr[len(tr) - 4 * (b + 1): len(tr) - 4 * b], True)
            for n in names:
                metric[n] += gs[n].double().T @ gs[n].double()
        metric = {n: (c / c.trace()).float() for n, c in metric.items()}
    params = [p for d in dicts.values() for p in d.parameters()]
    opt = Adam([list(d.parameters()) for d in dicts.values()])
    opt.lr_scales = [float(p.detach().float().pow(2).mean().sqrt().clamp_min(1e-8)) for p in params]
    splice = Splice(dicts)
    splice.record = True
    for step in range(a.steps if a.mode != "none" else 0):
        ids = tr[4 * step: 4 * (step + 1)]
        if a.mode == "spliced":
            loss, stats = kl_loss(model, splice, ids, "bf16", 1.0)
        else:
            xs, ys, gs = mlp_pass(model, dicts, ids, a.mode == "sampled")
            loss, fv, fw = 0.0, 0.0, 0.0
            for n, d in dicts.items():
                x, y = xs[n], ys[n]
                with autocast("cpu", "auto"):
                    e = y - (d.decode(d.encode(x)) + d.skip_term(x)).float()  # [tokens, d_out]
                yc = y - y.mean(0)
                f = e.pow(2).sum(-1).mean() / yc.pow(2).sum(-1).mean()
                if a.mode == "sampled":
                    w = (gs[n] * e).sum(-1).pow(2).mean() / (gs[n] * yc).sum(-1).pow(2).mean().clamp_min(1e-12)
                else:
                    w = ((e @ metric[n]) * e).sum(-1).mean() / ((yc @ metric[n]) * yc).sum(-1).mean()
                loss = loss + (f + a.lam * w) / len(dicts)
                fv, fw = fv + float(f.detach()) / len(dicts), fw + float(w.detach()) / len(dicts)
            stats = {"fvu": fv, "weighted_fvu": fw}
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        opt.lr = a.lr * (1 - step / a.steps)
        opt.step(0.0)
        opt.zero_grad()
        if step % 10 == 0:
            print(step, {k: round(v, 4) for k, v in stats.items()}, f"{time.time() - t0:.0f} s", flush=True)
    for d in dicts.values():
        d.eval()
    r = evaluate(dicts, model, ev, tokens=8192)
    print("held-out", {"kl": round(r["kl"], 4), "ce_loss_score": round(r["ce_loss_score"], 4),
                       "mean_fvu": round(sum(v["fvu"] for v in r["dictionaries"].values()) / len(dicts), 4)})
    gsc = graph_scores(model, _as_transcoders(dicts), heldout_prompts()[:a.prompts])
    print("graphs", {k: round(v, 4) if isinstance(v, float) else v for k, v in gsc.items() if k != "prompts"})


if __name__ == "__main__":
    main()
