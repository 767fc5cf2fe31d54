"""Single-layer transcoder probes behind RESULTS "Single-layer probes: steps, distinct tokens, k, batch, the skip's
init, a decoder refit": the demo's skip-transcoder recipe (2,304 x k16, skip fitted, latents seeded, lr 3e-3, batch
254, 394 steps) on in-memory MLP inputs/outputs of one layer, one change at a time; held-out FVU on 16,384 tokens of
the held-out split (seed 1). Activations are cached in $GLASSWORK_HOME/benchmarks/refit/.

  .venv/bin/python benchmarks/single_layer_probes.py data     # distinct tokens vs steps, layer 3
  .venv/bin/python benchmarks/single_layer_probes.py steps    # 4x / 16x steps, k 32 / 64, batch 1016 (layers 3, 25)
  .venv/bin/python benchmarks/single_layer_probes.py init     # the skip's initial fit: 8k vs 32k tokens, ridge
  .venv/bin/python benchmarks/single_layer_probes.py refit    # a least-squares refit of decoder, skip, bias
  .venv/bin/python benchmarks/single_layer_probes.py ridge    # least squares alone, by sample size and ridge
  .venv/bin/python benchmarks/single_layer_probes.py order    # reading order and dead-latent re-seeding (layers 2, 15, 25)
  .venv/bin/python benchmarks/single_layer_probes.py batch    # the same 100k tokens in batches of 254, 127, 64; lr at 254
  .venv/bin/python benchmarks/single_layer_probes.py schedule # where the lr's linear decay starts, and a higher peak
  .venv/bin/python benchmarks/single_layer_probes.py anneal   # k annealed from 32 / 64 / 128 to 16; Adam's beta2
  .venv/bin/python benchmarks/single_layer_probes.py width    # 2,304 / 3,072 / 4,608 latents at equal training time
  .venv/bin/python benchmarks/single_layer_probes.py narrow   # fewer latents where most never fire (layers 0, 2, 29)
  .venv/bin/python benchmarks/single_layer_probes.py auxk     # AuxK with fewer dead candidates a token (layers 2, 9, 28, 29)
  .venv/bin/python benchmarks/single_layer_probes.py batchtopk  # BatchTopK vs TopK at k 16 (layers 3, 15, 25)
  .venv/bin/python benchmarks/single_layer_probes.py spread   # seeds drawn k-means++-style vs uniformly (layers 2, 29, 3, 15)
  .venv/bin/python benchmarks/single_layer_probes.py revive   # silent latents' biases raised (--revive-rate; layers 29, 2, 3, 15)

BASE follows the demo's recipe, so its skip fit is damped (skip_ridge 0.1) since 2026-12-04 20:30 UTC; the probes
recorded before that ran with 1e-6.
`order` trains on the batches the demo's ModelSource reads (front to back, 16 batches mixed: the first 117,856
tokens of the corpus), in that order and globally shuffled, for the 8-minute budget's 462 steps, and reports the
held-out dead fraction on 8,192 and 16,384 tokens beside FVU."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import torch

import glasswork as gw
from glasswork.evals import fvu
from glasswork.hooks import mlp_hooks
from glasswork.io import home
from glasswork.training import TensorSource, TrainConfig, train
from glasswork.training.init import fit_linear

from diagnose_transcoders import cached_activations  # benchmarks/ is on sys.path when a script runs

CACHE = home() / "benchmarks" / "refit"
BASE = TrainConfig(kind="transcoder", arch="topk", layers=[0], d_sae=2304, k=16, batch_size=254, tokens=254 * 394,
                   lr=3e-3, warmup_steps=10, b_dec_init="mean", model="smollm2-135m", checkpoint_every=10 ** 9,
                   skip=True, skip_fit=True, init="data")
DEMO = replace(BASE, decay_start=0.5, aux_coeff=0.0)  # the demo's recipe of 2026-12-05: decay from 50%, no AuxK


def activations(model, split: str, tokens: int, seed: int, layers=(3, 15, 25)) -> dict[str, torch.Tensor]:
    """{hook: [tokens, 576]}: MLP inputs and outputs of `layers` on random 128-token contexts (BOS dropped)."""
    suffix = '' if tuple(layers) == (3, 15, 25) else '-' + '-'.join(map(str, layers))
    return cached_activations(model, split, tokens, seed, layers, CACHE, seqs=16, name=f"{split}-{tokens}-{seed}{suffix}")


@torch.no_grad()
def heldout_scores(d, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Held-out FVU and the fraction of latents that never fire on x."""
    codes = d.encode(x)
    return {"heldout": round(fvu(y, d(x)), 4), "dead_16k": round(float((~(codes != 0).any(0)).float().mean()), 3),
            "l0": round(float((codes != 0).sum(1).float().mean()), 2)}


def trained(tc: TrainConfig, x: torch.Tensor, y: torch.Tensor):
    acts = {"blocks.0.ln2.hook_normalized": x.clone(), "blocks.0.hook_mlp_out": y.clone()}
    r = train(tc, TensorSource(acts, tc.batch_size, seed=0, model=tc.model), CACHE / "runs" / f"{time.time():.6f}")
    return r["dicts"]["layer_00"]


@torch.no_grad()
def refit(d, x: torch.Tensor, y: torch.Tensor, ridge: float) -> None:
    """Least squares of y on [codes, x, 1]: new W_dec, W_skip and b_dec (ridge relative to the Gram's mean diagonal)."""
    a = d.encode(x).double()
    design = torch.cat([a, x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    gram = design.T @ design
    gram.diagonal().add_(ridge * gram.diagonal().mean())
    w = torch.linalg.solve(gram, design.T @ y.double())
    f, d_in = a.shape[1], x.shape[1]
    d.W_dec.copy_(w[:f].float())
    d.W_skip.copy_(w[f:f + d_in].float())
    d.b_dec.copy_(w[-1].float())


class InOrder(TensorSource):
    """Rows in their stored order, batch after batch (the captured ModelSource stream)."""

    def batches(self, start: int = 0, rank: int = 0, world: int = 1):
        step = start
        while True:
            i = step % (self.n // self.batch_size)
            yield {h: a[i * self.batch_size:(i + 1) * self.batch_size][rank::world] for h, a in self.acts.items()}
            step += 1


def model_stream(model, layers=(2, 15, 25), batches: int = 464) -> dict[str, torch.Tensor]:
    """{hook: [batches * 254, 576]}: the demo's ModelSource batches (front to back, mix 16) in their order; cached."""
    from glasswork.data import corpus
    from glasswork.io import load_tensors, save_tensors
    from glasswork.training import ModelSource
    path = CACHE / f"model-stream-{batches}-{'-'.join(map(str, layers))}.safetensors"
    if path.exists():
        return load_tensors(path, "cached model stream")
    hooks = [h for l in layers for h in mlp_hooks(l)]
    parts: dict[str, list] = {h: [] for h in hooks}
    for _, b in zip(range(batches), ModelSource(model, corpus.default_texts, hooks, 254, ctx=128, mix=16).batches()):
        for h in hooks:
            parts[h].append(b[h])
    acts = {h: torch.cat(p) for h, p in parts.items()}
    save_tensors(path, acts)
    return acts


def order(model) -> None:
    ev = activations(model, "heldout", 16384, 1, layers=(2, 15, 25))
    stream = model_stream(model)
    base = replace(BASE, tokens=254 * 462)
    variants = [("front to back", "in order", {}), ("shuffled", "shuffled", {}),
                ("shuffled, re-seeding every 25 steps", "shuffled", {"resample_every": 25})]
    for layer in (2, 15, 25):
        x, y = mlp_hooks(layer)
        for name, how, kw in variants:
            tc = replace(base, **kw)
            acts = {"blocks.0.ln2.hook_normalized": stream[x].clone(), "blocks.0.hook_mlp_out": stream[y].clone()}
            src = (InOrder if how == "in order" else TensorSource)(acts, tc.batch_size, seed=0, model=tc.model)
            d = train(tc, src, CACHE / "runs" / f"{time.time():.6f}")["dicts"]["layer_00"]
            with torch.no_grad():
                fired = d.encode(ev[x]) != 0
            print(json.dumps({"layer": layer, "variant": name, "heldout_fvu": round(fvu(ev[y], d(ev[x])), 4),
                              "dead_8k": round(float((~fired[:8192].any(0)).float().mean()), 3),
                              "dead_16k": round(float((~fired.any(0)).float().mean()), 3),
                              "dead_train": round(d.cfg.metrics["dead_fraction"], 3)}), flush=True)


def auxk(model) -> None:
    """The layers where most latents die without AuxK: AuxK off, on (k_aux = d_in / 2 = 288 dead latents a token),
    and on with 64 / 16 candidates a token, at the 8-minute budget's 1,182 steps (3 passes over 100k tokens)."""
    layers = (2, 9, 28, 29)
    ev = activations(model, "heldout", 16384, 1, layers=layers)
    big = activations(model, "train", 100_000, 12, layers=layers)
    for layer in layers:
        x, y = mlp_hooks(layer)
        row: dict = {"layer": layer}
        for name, kw in [("no AuxK", {}), ("AuxK 288", {"aux_coeff": 1 / 32}), ("AuxK 64", {"aux_coeff": 1 / 32, "aux_k": 64}),
                         ("AuxK 16", {"aux_coeff": 1 / 32, "aux_k": 16})]:
            t0 = time.time()
            d = trained(replace(DEMO, tokens=254 * 1182, **kw), big[x], big[y])
            row[name] = {**heldout_scores(d, ev[x], ev[y]), "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)


def spread(model) -> None:
    """Which tokens seed the latents (--init-pick): drawn uniformly from the init sample (the demo's) or spread
    k-means++-style over the input directions, at the 8-minute budget's 1,182 steps (3 passes over 100k tokens), two
    seeds each; the layers where most latents never fire (2, 29) and two where FVU is high (3, 15)."""
    for layer in (2, 29, 3, 15):
        ev = activations(model, "heldout", 16384, 1, layers=(layer,) if layer in (2, 29) else (3, 15, 25))
        big = activations(model, "train", 100_000, 12, layers=(layer,))
        x, y = mlp_hooks(layer)
        row: dict = {"layer": layer}
        for name, kw in [("random", {}), ("spread", {"init_pick": "spread"}), ("random s1", {"seed": 1}),
                         ("spread s1", {"init_pick": "spread", "seed": 1})]:
            t0 = time.time()
            d = trained(replace(DEMO, tokens=254 * 1182, **kw), big[x], big[y])
            row[name] = {**heldout_scores(d, ev[x], ev[y]), "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)


def revive(model) -> None:
    """Silent latents' encoder biases raised by --revive-rate x the batch's entry bar until they fire, on the demo's
    recipe with spread seeds, at the 8-minute budget's 1,182 steps (3 passes over 100k tokens): the layers where most
    latents never fire (29, 2) and two where FVU is high (3, 15)."""
    for layer in (29, 2, 3, 15):
        ev = activations(model, "heldout", 16384, 1, layers=(layer,) if layer in (2, 29) else (3, 15, 25))
        big = activations(model, "train", 100_000, 12, layers=(layer,))
        x, y = mlp_hooks(layer)
        row: dict = {"layer": layer}
        for name, kw in [("spread", {}), ("revive 0.01", {"revive_rate": 0.01}), ("revive 0.03", {"revive_rate": 0.03}),
                         ("revive 0.1", {"revive_rate": 0.1})]:
            t0 = time.time()
            d = trained(replace(DEMO, tokens=254 * 1182, init_pick="spread", **kw), big[x], big[y])
            row[name] = {**heldout_scores(d, ev[x], ev[y]), "dead_train": round(d.cfg.metrics["dead_fraction"], 3),
                         "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)


def main() -> None:
    part = sys.argv[1] if len(sys.argv) > 1 else "data"
    torch.set_num_threads(2)
    model = gw.load_model()
    if part == "order":
        return order(model)
    if part == "auxk":
        return auxk(model)
    if part == "spread":
        return spread(model)
    if part == "revive":
        return revive(model)
    ev = activations(model, "heldout", 16384, 1, layers=(0, 2, 29) if part == "narrow" else (3, 15, 25))
    if part == "data":  # layer 3: distinct tokens vs steps
        x, y = mlp_hooks(3)
        big = activations(model, "train", 406_400, 11, layers=(3,))
        for n, mult in [(32768, 1), (100_000, 1), (400_000, 1), (100_000, 4), (400_000, 4)]:
            d = trained(replace(BASE, tokens=254 * 394 * mult), big[x][:n], big[y][:n])
            print(json.dumps({"distinct_tokens": n, "steps": 394 * mult, "heldout_fvu": round(fvu(ev[y], d(ev[x])), 4),
                              "train_fvu": round(fvu(big[y][:16384], d(big[x][:16384])), 4)}), flush=True)
        return
    tr = activations(model, "train", 32768, 0)
    for layer in {"steps": (3, 25), "init": (3, 15, 25), "refit": (15, 3, 25), "ridge": (3, 15, 25),
                  "batch": (3, 15, 25), "schedule": (3, 15, 25), "anneal": (3, 15, 25),
                  "width": (3, 15, 25), "narrow": (0, 2, 29), "batchtopk": (3, 15, 25)}[part]:
        x, y = mlp_hooks(layer)
        row: dict = {"layer": layer}
        if part == "steps":
            for name, kw in [("x4 steps", {"tokens": 254 * 394 * 4}), ("x16 steps", {"tokens": 254 * 394 * 16}),
                             ("x4 steps k32", {"tokens": 254 * 394 * 4, "k": 32}),
                             ("x4 steps k64", {"tokens": 254 * 394 * 4, "k": 64}),
                             ("batch 1016, 16x tokens", {"tokens": 254 * 394 * 16, "batch_size": 1016})]:
                d = trained(replace(BASE, **kw), tr[x], tr[y])
                row[name] = {"heldout": round(fvu(ev[y], d(ev[x])), 4), "train": round(fvu(tr[y][:16384], d(tr[x][:16384])), 4)}
        elif part == "init":
            for name, kw in [("init 8192 ridge 1e-6", {"skip_ridge": 1e-6}), ("init 8192 ridge 0.1", {"skip_ridge": 0.1}),
                             ("init 32768 ridge 1e-6", {"init_tokens": 32768, "skip_ridge": 1e-6}),
                             ("init 32768 ridge 0.1", {"init_tokens": 32768, "skip_ridge": 0.1})]:
                d = trained(replace(BASE, **kw), tr[x], tr[y])
                row[name] = round(fvu(ev[y], d(ev[x])), 4)
        elif part == "batch":  # the same 100k tokens in smaller batches: more steps per token
            big = activations(model, "train", 100_000, 12, layers=(layer,))
            for name, kw in [("batch 254", {}), ("batch 127", {"batch_size": 127, "tokens": 127 * 788}),
                             ("batch 127 lr 2e-3", {"batch_size": 127, "tokens": 127 * 788, "lr": 2e-3}),
                             ("batch 64", {"batch_size": 64, "tokens": 64 * 1563}),
                             ("batch 254 lr 2e-3", {"lr": 2e-3}), ("batch 254 lr 1.5e-3", {"lr": 1.5e-3})]:
                t0 = time.time()
                d = trained(replace(BASE, **kw), big[x], big[y])
                row[name] = {"heldout": round(fvu(ev[y], d(ev[x])), 4), "seconds": round(time.time() - t0, 1)}
        elif part == "schedule":  # the same 100k tokens and 394 steps; the lr decays linearly to 0 from decay_start
            big = activations(model, "train", 100_000, 12, layers=(layer,))
            for name, kw in [("decay from 80%", {}), ("decay from 50%", {"decay_start": 0.5}),
                             ("decay from 0%", {"decay_start": 0.0}),
                             ("decay from 0%, lr 5e-3", {"decay_start": 0.0, "lr": 5e-3})]:
                d = trained(replace(BASE, **kw), big[x], big[y])
                row[name] = round(fvu(ev[y], d(ev[x])), 4)
        elif part == "anneal":  # the demo's recipe of 2026-12-05 (decay from 50%, no AuxK); the same 100k tokens
            big = activations(model, "train", 100_000, 12, layers=(layer,))
            for name, kw in [("k 16", {}), ("k 32 -> 16 over 50%", {"k_start": 32}),
                             ("k 64 -> 16 over 50%", {"k_start": 64}), ("k 64 -> 16 over 25%", {"k_start": 64, "k_anneal": 0.25}),
                             ("k 128 -> 16 over 50%", {"k_start": 128}), ("beta2 0.99", {"betas": (0.9, 0.99)})]:
                t0 = time.time()
                d = trained(replace(DEMO, **kw), big[x], big[y])
                row[name] = {**heldout_scores(d, ev[x], ev[y]), "seconds": round(time.time() - t0, 1)}
        elif part == "width":  # the demo's recipe at the 8-minute budget's ~1,182 steps (3 passes over 100k tokens);
            # wider runs get fewer steps, by the 30-layer step time measured on this CPU (train_step.py-style
            # timing: 297 / 340 / 450 ms of dictionary step + ~100 ms of model forward per 254 tokens)
            big = activations(model, "train", 100_000, 12, layers=(layer,))
            for name, kw in [("2304 x 1182 steps", {"tokens": 254 * 1182}),
                             ("2304 x 1182 steps, beta2 0.99", {"tokens": 254 * 1182, "betas": (0.9, 0.99)}),
                             ("3072 x 1062 steps", {"d_sae": 3072, "tokens": 254 * 1062}),
                             ("4608 x 852 steps", {"d_sae": 4608, "tokens": 254 * 852})]:
                row[name] = heldout_scores(trained(replace(DEMO, **kw), big[x], big[y]), ev[x], ev[y])
        elif part == "narrow":  # the layers whose outputs use few directions: 1,182 steps each (so the narrow
            # ones get less compute than equal time would give them); held-out FVU and never-fired fraction
            big = activations(model, "train", 100_000, 12, layers=(layer,))
            for width in (2304, 1152, 576, 288):
                row[f"{width}"] = heldout_scores(trained(replace(DEMO, d_sae=width, tokens=254 * 1182), big[x], big[y]),
                                                 ev[x], ev[y])
        elif part == "batchtopk":  # the demo's recipe at the 8-minute budget's 1,182 steps; BatchTopK keeps the
            # k * batch largest pre-activations of the batch, and a fixed threshold (their mean minimum) at inference
            big = activations(model, "train", 100_000, 12, layers=(layer,))
            for name, kw in [("topk", {}), ("batchtopk", {"arch": "batchtopk"})]:
                t0 = time.time()
                d = trained(replace(DEMO, tokens=254 * 1182, **kw), big[x], big[y])
                row[name] = {**heldout_scores(d, ev[x], ev[y]), "seconds": round(time.time() - t0, 1)}
        elif part == "refit":
            d = trained(BASE, tr[x], tr[y])
            row["trained"] = round(fvu(ev[y], d(ev[x])), 4)
            state = {k: v.clone() for k, v in d.state_dict().items()}
            for n in (8192, 32768):
                for ridge in (1e-4, 1e-3, 1e-2):
                    d.load_state_dict(state)
                    refit(d, tr[x][:n], tr[y][:n], ridge)
                    row[f"refit n{n} ridge {ridge:g}"] = round(fvu(ev[y], d(ev[x])), 4)
        else:
            for n in (8192, 32768):
                for ridge in (1e-6, 1e-3, 1e-2, 3e-2, 1e-1):
                    w, b = fit_linear(tr[x][:n], tr[y][:n], ridge=ridge)
                    row[f"n{n} ridge {ridge:g}"] = round(fvu(ev[y], ev[x] @ w + b), 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
