"""How good is a dictionary: reconstruction on held-out activations, and the model's loss with it spliced in.

- fvu = ||x - x_hat||^2 / ||x - mean(x)||^2 per batch (about the batch mean, not scaled by batch size), averaged
  over batches, on the clean model's activations; fvu_spliced: the same with every dictionary spliced in (errors
  upstream compound); l0 = active latents per token; dead = never fired on the eval tokens; dense = fires on > 10%.
- Spliced: the dictionary's output replaces its hook_out in the forward pass (SAE: its own hook point; transcoders:
  every MLP output at once, each transcoder reading the spliced model's own MLP input; CLT: likewise, features of
  layer i adding into the outputs of i and later layers). CE-loss score = (CE_zero - CE_spliced) / (CE_zero -
  CE_clean), where zero ablation zeroes the same hook outputs; KL = KL(clean || spliced) per token, averaged.
The BOS position is left unspliced: dictionaries are not trained on it (its activations are outliers)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .dictionaries import CrossLayerTranscoder, SparseCoder
from .dictionaries.saving import is_set, load, load_set
from .dictionaries.splice import Splice
from .hooks import intervene
from .io import GlassworkError
from .progress import progress


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """x, x_hat [n, d] (or [n, L, d]): residual energy over energy about the mean of this batch."""
    x, x_hat = x.detach().double(), x_hat.detach().double()  # a float: no graph to keep
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30))


def l0(codes: torch.Tensor) -> float:
    """codes [n, d_sae] (or [n, L, F]): mean number of nonzero latents per token (per layer for a CLT)."""
    return float((codes != 0).sum(-1).double().mean())


def ce_loss_score(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    return (ce_zero - ce_spliced) / (ce_zero - ce_clean)


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of predicting ids[:, 1:] from logits[:, :-1]: [batch, seq-1]."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none").view(ids.shape[0], -1)


def _as_dicts(dictionaries) -> dict:
    if isinstance(dictionaries, (str, Path)):
        folder = Path(dictionaries)
        return load_set(folder) if is_set(folder) else {folder.name: load(folder)}
    if isinstance(dictionaries, (SparseCoder, CrossLayerTranscoder)):
        return {"dictionary": dictionaries}
    return dict(dictionaries)


@torch.no_grad()
def evaluate(dictionaries, model, texts, tokens: int = 16_384, ctx: int = 128, batch_seqs: int = 8,
             dense_fraction: float = 0.1, fire_counts: bool = False) -> dict:
    """Evaluate a dictionary, a {name: dictionary} set, or a folder on held-out `texts` (an iterable of strings, or
    token ids [n, ctx] already cut into sequences). fire_counts: also return {name: tokens each latent fired on}
    ([d_sae] long tensors, under "fire_counts"), so that several samples' dead latents can be counted together.
    Every dictionary is spliced in at once (a transcoder set replaces every MLP it covers)."""
    from .data.corpus import token_rows
    dicts = _as_dicts(dictionaries)
    for name, d in dicts.items():
        d.eval()
        if d.cfg.model and d.cfg.model != model.name:
            raise GlassworkError(f"dictionary '{name}' was trained on model '{d.cfg.model}', not '{model.name}'")
    chunks = iter(texts) if torch.is_tensor(texts) else token_rows(model, iter(texts), ctx)
    splice, zero, observe = Splice(dicts), Splice(dicts, zero=True), Splice(dicts, observe=True)
    splice.record = observe.record = True
    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0}
    n_tok, n_batches = 0, 0
    fired = {n: None for n in dicts}
    rows = {n: 0 for n in dicts}
    fvus: dict[str, list] = {n: [] for n in dicts}  # on the clean model's inputs (the usual FVU)
    fvus_spliced: dict[str, list] = {n: [] for n in dicts}  # with every dictionary spliced in upstream too
    fvus_layer: dict[str, list] = {n: [] for n in dicts}  # a CLT's: per layer [L], on the clean model's inputs
    l0s: dict[str, list] = {n: [] for n in dicts}
    with progress("eval", total=tokens) as bar:
        while n_tok < tokens:
            seqs = [r for r in (next(chunks, None) for _ in range(batch_seqs)) if r is not None]
            if not seqs:
                break
            ids = torch.stack(seqs).to(next(model.hf.parameters()).device)
            with intervene(model, observe.edits()):
                clean = model.hf(ids).logits.float()
            with intervene(model, splice.edits()):
                spliced = model.hf(ids).logits.float()
            with intervene(model, zero.edits()):
                zeroed = model.hf(ids).logits.float()
            # positions 1.. predict tokens 2..: the BOS position is skipped everywhere
            sums["clean"] += float(next_token_ce(clean, ids)[:, 1:].sum())
            sums["spliced"] += float(next_token_ce(spliced, ids)[:, 1:].sum())
            sums["zero"] += float(next_token_ce(zeroed, ids)[:, 1:].sum())
            lp, lq = clean[:, 1:-1].log_softmax(-1), spliced[:, 1:-1].log_softmax(-1)
            sums["kl"] += float((lp.exp() * (lp - lq)).sum())
            n = ids.shape[0] * (ids.shape[1] - 2)
            n_tok += n
            n_batches += 1
            for name, recs in splice.records.items():
                fvus_spliced[name].append(fvu(torch.cat([t for t, _, _ in recs]), torch.cat([r for _, r, _ in recs])))
                recs.clear()
            for name, recs in observe.records.items():
                target = torch.cat([t for t, _, _ in recs])
                recon = torch.cat([r for _, r, _ in recs])
                codes = torch.cat([c for _, _, c in recs])
                fvus[name].append(fvu(target, recon))
                if target.dim() == 3:  # a CLT's [n, L, d]: each layer's FVU too (the pooled one weighs loud layers)
                    fvus_layer[name].append([fvu(t, r) for t, r in zip(target.unbind(1), recon.unbind(1))])
                l0s[name].append(l0(codes))
                f = (codes != 0).flatten(1).sum(0)
                fired[name] = f if fired[name] is None else fired[name] + f
                rows[name] += codes.shape[0]
                recs.clear()
            bar.advance(n)
    if n_tok == 0:
        raise GlassworkError(f"evaluation text is too short: not one sequence of {ctx} tokens")
    ce = {k: sums[k] / n_tok for k in ("clean", "spliced", "zero")}
    per = {}
    for name in dicts:
        freq = fired[name].double() / rows[name]
        per[name] = {"fvu": sum(fvus[name]) / len(fvus[name]),
                     "fvu_spliced": sum(fvus_spliced[name]) / len(fvus_spliced[name]), "l0": sum(l0s[name]) / len(l0s[name]),
                     "dead_fraction": float((fired[name] == 0).double().mean()),
                     "dense_fraction": float((freq > dense_fraction).double().mean())}
        if fvus_layer[name]:
            per[name]["fvu_per_layer"] = [sum(b[i] for b in fvus_layer[name]) / len(fvus_layer[name])
                                          for i in range(len(fvus_layer[name][0]))]
    out = {"tokens": n_tok, "ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero_ablation": ce["zero"],
           "ce_loss_score": ce_loss_score(ce["clean"], ce["spliced"], ce["zero"]), "kl": sums["kl"] / n_tok,
           "dictionaries": per}
    return {**out, "fire_counts": {n: fired[n].long().cpu() for n in dicts}} if fire_counts else out
