"""Steering, measured: for a few concepts found in an SAE of the default model, steering strength against (a) how often
the concept shows up in sampled continuations and (b) the perplexity of the steered text under the unsteered model;
and ablating the concept's feature against the probability of the concept's tokens on prompts that call for it.
Also word arithmetic (king - man + woman) in embedding and residual space.

    .venv/bin/python benchmarks/steering.py [--sae DIR] [--layer 12]

Without --sae it trains a small TopK SAE (d_sae 4096, k 32) on the layer's residual stream over the corpus (cached
under $GLASSWORK_HOME/bench/). Concept features are found through the unembedding: the live feature whose decoder row,
read through W_U, most favours the concept's tokens. Prints a table, writes benchmarks/steering.png and appends a
section to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import platform
import subprocess
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import torch

import glasswork as gw
from glasswork import directions as dr
from glasswork import steering as st

HERE = Path(__file__).parent
CONCEPTS = {
    "France": {
        "words": "paris france french eiffel parisian lyon marseille louvre seine bordeaux normandy",
        "ablate": [("The capital of France is", " Paris"), ("The Eiffel Tower is located in the city of", " Paris"),
                   ("The Louvre is a famous museum in", " Paris"), ("In Paris, most people speak", " French"),
                   ("Croissants and baguettes come from", " France")],
        "positive": ["I spent a week in Paris", "The French government announced", "We visited the Eiffel Tower",
                     "She studied French literature", "A cafe near the Seine in Paris", "Wine from Bordeaux, France"],
    },
    "food": {
        "words": "food eat eating ate bread cheese pizza meal meals cook cooking delicious dinner lunch breakfast "
                 "fruit meat rice soup chicken restaurant kitchen recipe cake sauce vegetables dish taste tasty "
                 "flavor chocolate coffee sugar butter salad pasta",
        "ablate": [("For breakfast I like to eat toast with", " butter"), ("The chef went into the", " kitchen"),
                   ("We ordered a large pepperoni", " pizza"), ("She baked a chocolate", " cake"),
                   ("After the game we went out for", " dinner")],
        "positive": ["We cooked a delicious dinner", "The restaurant serves fresh bread", "I ate pizza and salad",
                     "Her recipe for chicken soup", "The cake tasted of chocolate", "Breakfast was rice and eggs"],
    },
    "numbers": {
        "words": "one two three four five six seven eight nine ten eleven twelve twenty thirty hundred thousand "
                 "million first second third 0 1 2 3 4 5 6 7 8 9",
        "ablate": [("She counted: one, two,", " three"), ("The number after five is", " six"),
                   ("A week has", " seven"), ("The year has twelve months and", " 365"),
                   ("He scored 3 goals, then", " 2")],
        "positive": ["There were seven of them", "He counted to twenty", "About three hundred people",
                     "The score was 2 to 1", "Twelve months and four seasons", "One, two, three, four"],
    },
}
NEUTRAL = ["The weather was nice so we went outside", "My teacher always said that", "The meeting was long and",
           "Yesterday I read an article about", "The most important thing in life is", "He opened the door and saw"]
PROMPTS = ["I think that", "Let me tell you about", "The best thing about this place is", "Yesterday, I"]


# ---------------------------------------------------------------------------------------------------- data and SAE

def corpus_texts() -> list[str]:
    """News articles (lee_background.cor) from the gensim wheel, fetched once with `pip download` into the cache."""
    cache = gw.home() / "bench" / "lee_background.cor"
    if not cache.exists():
        tmp = gw.home() / "bench" / "wheel"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "gensim==4.4.0", "-d", str(tmp)],
                       check=True)
        wheel = next(tmp.glob("gensim-4.4.0-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            text = z.read("gensim/test/test_data/lee_background.cor").decode()
        cache.write_text(text)
    return [line for line in cache.read_text().splitlines() if line.strip()]


@torch.no_grad()
def harvest(model, hook: str, texts: list[str], ctx_len: int = 128) -> torch.Tensor:
    """Activations [n_tokens, d] at `hook` over the texts (BOS positions left out)."""
    from glasswork.features.index import contexts_from_texts
    ctx = contexts_from_texts(model, texts, ctx_len)
    out = []
    for i in range(0, len(ctx), 8):
        _, cache = gw.capture(model, ctx[i:i + 8], [hook])
        out.append(cache[hook][:, 1:].reshape(-1, model.d_model))
    return torch.cat(out)


def train_sae(acts: torch.Tensor, hook: str, layer: int, d_sae=4096, k=32, epochs=8, batch=1024, seed=0):
    """A TopK SAE by plain Adam on in-memory activations; inputs scaled to unit mean squared norm, scale folded back."""
    torch.manual_seed(seed)
    scale = acts.pow(2).sum(-1).mean().sqrt()
    x = acts / scale
    sae = gw.SparseCoder(gw.DictionaryConfig(kind="sae", d_in=acts.shape[1], d_sae=d_sae, k=k, activation="topk",
                                             model=gw.DEFAULT_MODEL, hook_in=hook, hook_out=hook, layer=layer))
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), batch):
            xb = x[perm[i:i + batch]]
            loss = (sae(xb) - xb).pow(2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            total += loss.item() * len(xb)
        fvu = total / len(x) / (x - x.mean(0)).pow(2).sum(-1).mean().item()
        print(f"  sae epoch {epoch + 1}/{epochs}: FVU {fvu:.3f}", file=sys.stderr)
    with torch.no_grad():  # fold the scale: the stored SAE reads raw activations
        sae.W_enc /= scale
        sae.b_dec *= scale
        sae.W_dec *= scale
    sae.cfg.metrics = {"fvu_train": round(fvu, 4)}
    sae.cfg.tokens_seen = len(x) * epochs
    return sae


# ---------------------------------------------------------------------------------------------------- concepts

def concept_token_ids(model, words: str) -> list[int]:
    """Single tokens for each word, with and without a leading space and capitalized."""
    ids = set()
    for w in words.split():
        for form in (" " + w, " " + w.capitalize(), w, w.capitalize()):
            tok = model.tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(tok) == 1:
                ids.add(tok[0])
    return sorted(ids)


def find_feature(model, sae, token_ids: list[int], alive: torch.Tensor) -> tuple[int, list[str]]:
    """The live feature whose logit effect W_dec[f] @ W_U most favours the concept's tokens (z-scored per feature)."""
    effects = sae.W_dec.detach() @ model.W_U.detach()  # [d_sae, vocab]
    z = (effects - effects.mean(1, keepdim=True)) / effects.std(1, keepdim=True)
    score = z[:, token_ids].mean(1)
    score[~alive] = -math.inf
    f = int(score.argmax())
    return f, model.to_str_tokens(effects[f].topk(8).indices)


@torch.no_grad()
def continuation_nll(model, prompt_ids: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """Mean NLL per continuation [n] under the unsteered model."""
    ids = torch.cat([prompt_ids.expand(len(cont), -1), cont], dim=1)
    logp = model.logits(ids).log_softmax(-1)[:, prompt_ids.shape[1] - 1:-1]
    return -logp.gather(-1, cont[..., None])[..., 0].mean(1)


@torch.no_grad()
def sample(model, prompt: str, ivs, n: int, max_new: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = model.tokenize(prompt)
    torch.manual_seed(seed)
    with st.steer(model, ivs):
        out = model.hf.generate(ids.expand(n, -1), attention_mask=torch.ones(n, ids.shape[1], dtype=torch.long),
                                do_sample=True, temperature=0.7, top_p=0.95, top_k=0, max_new_tokens=max_new,
                                min_new_tokens=max_new, pad_token_id=model.tokenizer.pad_token_id)
    return ids, out[:, ids.shape[1]:]


def steering_curve(model, make_ivs, strengths, concept_ids: set[int], n: int, max_new: int) -> list[dict]:
    rows = []
    for s in strengths:
        hits, nlls = [], []
        for j, prompt in enumerate(PROMPTS):
            ids, cont = sample(model, prompt, make_ivs(s), n, max_new, seed=j)
            hits += [any(t in concept_ids for t in row.tolist()) for row in cont]
            nlls.append(continuation_nll(model, ids, cont))
        rows.append({"strength": s, "concept_rate": sum(hits) / len(hits),
                     "ppl": float(torch.cat(nlls).mean().exp())})
    return rows


@torch.no_grad()
def concept_prob(model, pairs, concept_ids: list[int], ivs) -> tuple[float, float]:
    """Mean over prompts of p(target token) and of the concept tokens' total probability at the next position."""
    p_target, p_concept = [], []
    with st.steer(model, ivs):
        for prompt, target in pairs:
            probs = model.logits(model.tokenize(prompt))[0, -1].softmax(-1)
            p_target.append(float(probs[model.tokenizer(target, add_special_tokens=False)["input_ids"][0]]))
            p_concept.append(float(probs[concept_ids].sum()))
    return sum(p_target) / len(p_target), sum(p_concept) / len(p_concept)


# ---------------------------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sae", type=Path, help="SAE folder (default: train a small one, cached)")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--n", type=int, default=3, help="samples per prompt and strength")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    t0 = time.time()
    model = gw.load_model()
    hook = f"blocks.{args.layer}.hook_resid_post"
    sae_dir = args.sae or gw.home() / "bench" / f"steering-sae-l{args.layer}"
    texts = corpus_texts()
    if (sae_dir / "config.json").exists():
        sae = gw.load_dictionary(sae_dir)
        acts = None
    else:
        print(f"training an SAE at {hook} (cached in {sae_dir})", file=sys.stderr)
        t = time.time()
        acts = harvest(model, hook, texts)
        sae = train_sae(acts, hook, args.layer)
        gw.save_dictionary(sae, sae_dir)
        print(f"  {len(acts)} tokens, {time.time() - t:.0f} s", file=sys.stderr)
    hook = sae.cfg.hook_in
    # Max activation and liveness of each feature from a corpus sample (the feature index is not assumed).
    if acts is None:
        acts = harvest(model, hook, texts[:60])
    with torch.no_grad():
        max_act = torch.cat([sae.encode(a).amax(0, keepdim=True) for a in acts.split(4096)]).amax(0)
    alive = max_act > max_act.median()  # the upper half: small dictionaries have many barely-firing features
    print(f"SAE {sae_dir}: d_sae {sae.cfg.d_sae}, live {int(alive.sum())}, FVU {sae.cfg.metrics}", file=sys.stderr)

    rows, curves, ablations, found = [], {}, [], {}
    mult = [0, 2, 5, 10, 20]
    for name, c in CONCEPTS.items():
        ids = concept_token_ids(model, c["words"])
        f, top = find_feature(model, sae, ids, alive)
        found[name] = {"feature": f, "max_act": round(float(max_act[f]), 3), "top_logits": top}
        print(f"{name}: feature {f} (max act {float(max_act[f]):.2f}), top logits {top}", file=sys.stderr)
        diff = dr.mean_difference(model, c["positive"], NEUTRAL, hook)
        unit_scale = float(acts.norm(dim=-1).median())  # add strength in units of a typical residual norm
        clamp = steering_curve(model, lambda s: [st.clamp_feature(model, sae, f, s * float(max_act[f]))] if s else [],
                               mult, set(ids), args.n, args.max_new_tokens)
        add = steering_curve(model, lambda s: [st.add_direction(model, hook, diff.unit, s * unit_scale / 8)] if s else [],
                             mult, set(ids), args.n, args.max_new_tokens)
        curves[name] = {"clamp": clamp, "add": add}
        for a, b in zip(clamp, add):
            rows.append((name, a["strength"], a["concept_rate"], a["ppl"], b["concept_rate"], b["ppl"]))
        clean = concept_prob(model, c["ablate"], ids, [])
        zeroed = concept_prob(model, c["ablate"], ids, [st.zero_feature(model, sae, f)])
        gen = torch.Generator().manual_seed(f)
        live = alive.nonzero()[:, 0]
        control_f = int(live[torch.randint(len(live), (1,), generator=gen)])
        control = concept_prob(model, c["ablate"], ids, [st.zero_feature(model, sae, control_f)])
        abl_dir = concept_prob(model, c["ablate"], ids, dr.directional_ablation(model, diff))
        ablations.append((name, f, clean, zeroed, control, abl_dir))

    analogies = [dr.analogy(model, " king", " man", " woman", " queen", space=s)
                 for s in ["embed", "blocks.0.hook_resid_post", "blocks.3.hook_resid_post"]]
    seconds = time.time() - t0

    lines = [f"| concept | strength | clamp: concept rate | clamp: ppl | add mean-diff: concept rate | add: ppl |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {s} | {a:.2f} | {p:.1f} | {b:.2f} | {q:.1f} |" for n, s, a, p, b, q in rows]
    abl = ["| concept | feature | p(target) clean | zeroed | random feature zeroed | mean-diff ablated "
           "| p(concept tokens) clean | zeroed | random zeroed | mean-diff ablated |", "|---" * 10 + "|"]
    abl += [f"| {n} | {f} | {c[0]:.3f} | {z[0]:.3f} | {r[0]:.3f} | {d[0]:.3f} | {c[1]:.3f} | {z[1]:.3f} | {r[1]:.3f} "
            f"| {d[1]:.3f} |" for n, f, c, z, r, d in ablations]
    ana = ["| space | rank of ' queen' for king - man + woman | rank next to ' king' alone | candidates |",
           "|---|---|---|---|"]
    ana += [f"| {a['space']} | {a['rank']} | {a['rank_from_a_alone']} | {a['n_candidates']} |" for a in analogies]
    feats = [f"- {n}: feature {v['feature']} (max act {v['max_act']}), top logits {v['top_logits']}"
             for n, v in found.items()]
    report = "\n".join(lines + [""] + abl + [""] + ana + [""] + feats)
    print(report)
    plot(curves, HERE / "steering.png")
    if not args.no_record:
        record(report, sae, sae_dir, args, seconds)


def plot(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = dict(zip(curves, ["tab:blue", "tab:orange", "tab:green", "tab:red"]))
    for name, c in curves.items():
        for method, style in (("clamp", "-o"), ("add", "--s")):
            xs = [r["strength"] for r in c[method]]
            axes[0].plot(xs, [r["concept_rate"] for r in c[method]], style, color=colors[name], label=f"{name} ({method})")
            axes[1].plot(xs, [r["ppl"] for r in c[method]], style, color=colors[name], label=f"{name} ({method})")
    for ax, title in zip(axes, ["share of continuations with a concept token", "perplexity under the unsteered model"]):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("strength (clamp: x max activation; add: x median residual norm / 8)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Steering SmolLM2-135M: SAE feature clamp (solid) vs mean-difference addition (dashed)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110)
    path.write_bytes(buf.getvalue())


def record(report: str, sae, sae_dir: Path, args, seconds: float) -> None:
    load = os.getloadavg()
    cmd = "python benchmarks/steering.py" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                  if v not in (None, False) and k != "no_record")
    text = (f"\n## Steering: concept rate and perplexity vs strength; feature ablation ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n\n"
            f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
            f"load average {load[0]:.1f} (shared with other jobs). Command: `.venv/bin/{cmd}` ({seconds:.0f} s).\n"
            f"Model smollm2-135m; SAE {sae.cfg.kind}/{sae.cfg.activation} d_sae {sae.cfg.d_sae} k {sae.cfg.k} at "
            f"{sae.cfg.hook_in}, {sae.cfg.tokens_seen} training token-passes, metrics {sae.cfg.metrics} ({sae_dir.name}). "
            f"Concept rate: share of {len(PROMPTS)} prompts x {args.n} samples ({args.max_new_tokens} new tokens, "
            f"temperature 0.7, fixed seeds) whose continuation holds a concept token; ppl: of the continuation under "
            f"the unsteered model. Plot: benchmarks/steering.png.\n\n{report}\n")
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
