"""Feature absorption on the first-letter task (Chanin et al., 2024, "A is for Absorption").

A linear probe on the model's activations reads each word's first letter. A dictionary has a "main" latent (or a few
split ones) for "starts with L". Absorption is when, on a word the probe gets right, the main latents stay silent
and another latent, whose decoder points along the probe, carries the letter instead (a " short" latent that has
absorbed "starts with S"). Measured on held-out words:

- absorption rate (full absorption): the share of probe-correct words where every main latent is zero and the
  largest contribution of one other active, probe-aligned latent (cos(W_dec, probe) >= tau_cos) is at least
  tau_share of the total: the probe projection of the reconstruction without b_dec (the sum of every active
  latent's code x W_dec . probe, signed, so chance contributions cancel);
- absorption fraction (partial): the mean share of that total carried by the probe-aligned non-main latents
  (clamped to [0, 1]; 0 where the total is not positive).
tau_cos defaults to 3 / sqrt(d_model), three standard deviations of the cosine of two random directions: Chanin et
al.'s 0.025 lets a quarter of random latents of a 576-wide model count as aligned.

Main latents: the latents ranked by mean difference on training words, added while the F1 of "any of them fires"
rises by at least min_f1_gain (SAEBench's feature-splitting rule, with an OR of latents in place of a k-sparse
probe). Words: single-token vocabulary entries (`directions.candidate_words`), read after a fixed prefix.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import torch

from ..directions import candidate_words, fit_probe
from ..errors import GlassworkError
from ..hooks import capture
from .probing import top_by_mean_difference

PREFIX = "The first letter of the word"


def f1(pred: torch.Tensor, truth: torch.Tensor) -> float:
    tp = float((pred & truth).sum())
    return 2 * tp / max(1.0, float(pred.sum()) + float(truth.sum()))


def main_latents(codes: torch.Tensor, positive: torch.Tensor, max_latents: int = 5, min_f1_gain: float = 0.03) -> list[int]:
    """codes [n, d_sae], positive [n] bool: the latents that detect the class (see the module docstring)."""
    chosen, best = [], 0.0
    for lat in top_by_mean_difference(codes, positive.long(), max_latents).tolist():
        score = f1((codes[:, chosen + [lat]] > 0).any(1), positive)
        if chosen and score - best < min_f1_gain:
            break
        chosen, best = chosen + [lat], score
    return chosen


def absorbed(codes: torch.Tensor, W_dec: torch.Tensor, probe: torch.Tensor, correct: torch.Tensor, main: list[int],
             tau_cos: float | None = None, tau_share: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [n, d_sae], W_dec [d_sae, d], probe [d], correct [n] bool (the probe is right and the word is positive),
    main: latent ids. Returns (fully absorbed [n] bool, absorption fraction [n], NaN where not correct)."""
    tau_cos = 3 / W_dec.shape[1] ** 0.5 if tau_cos is None else tau_cos
    unit = probe.float() / probe.float().norm().clamp_min(1e-12)
    along = W_dec.float() @ unit  # [d_sae]: each decoder row's projection on the probe
    aligned = along / W_dec.float().norm(dim=1).clamp_min(1e-12) >= tau_cos
    aligned[main] = False
    contrib = codes.float() * along  # [n, d_sae]
    total = contrib.sum(1)
    from_aligned = (contrib * aligned).clamp_min(0)
    main_off = (codes[:, main] <= 0).all(1) if main else torch.ones(len(codes), dtype=torch.bool)
    top = from_aligned.max(1).values
    full = correct & main_off & (total > 0) & (top >= tau_share * total)
    share = torch.where(total > 0, from_aligned.sum(1) / total.clamp_min(1e-12), 0.0).clamp(0, 1)
    fraction = torch.where(correct, share, float("nan"))
    return full, fraction


@torch.no_grad()
def word_activations(model, hook: str, words: list[str], batch_size: int = 256) -> torch.Tensor:
    """The activation [n, d] at `hook` on each single-token word's token, after BOS and PREFIX."""
    prefix = model.tokenize(PREFIX)[0]
    ids = torch.tensor([model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words])
    rows = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size].to(prefix.device)
        batch = torch.cat([prefix.expand(len(chunk), -1), chunk[:, None]], dim=1)
        _, cache = capture(model, batch, [hook])
        rows.append(cache[hook][:, -1].float().cpu())
    return torch.cat(rows)


@dataclass
class LetterResult:
    letter: str
    n_test_words: int
    probe_f1: float  # the model probe's F1 on test words
    main_latents: list[int]
    main_f1: float  # F1 of "a main latent fires" on test words
    absorption_rate: float
    absorption_fraction: float


@torch.no_grad()
def first_letter_absorption(model, sae, n_words: int = 4000, test_fraction: float = 0.3, min_words: int = 30,
                            seed: int = 0, tau_cos: float | None = None, tau_share: float = 0.4) -> dict:
    """Per-letter and mean absorption of an SAE (its input and output hook must be the same: the probe's space is the
    decoder's). Letters with fewer than `min_words` training words are left out."""
    cfg = sae.cfg
    if cfg.kind != "sae":
        raise GlassworkError(f"absorption needs an SAE (the decoder must write where the probe reads); this dictionary "
                             f"is a {cfg.kind} ({cfg.hook_in} -> {cfg.hook_out})")
    words = candidate_words(model, n_words)
    acts = word_activations(model, cfg.hook_in, words)
    codes = sae.encode(acts.to(sae.W_enc.dtype)).float()
    first = [w.strip()[0] for w in words]
    order = torch.randperm(len(words), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(words)))
    test, train = order[:n_test], order[n_test:]
    rows = []
    for letter in string.ascii_lowercase:
        y = torch.tensor([c == letter for c in first])
        if int(y[train].sum()) < min_words:
            continue
        w, b = fit_probe(acts[train], y[train].float())
        pred = acts[test] @ w + b > 0
        main = main_latents(codes[train], y[train])
        full, frac = absorbed(codes[test], sae.W_dec.detach(), w, pred & y[test], main, tau_cos, tau_share)
        n_correct = int((pred & y[test]).sum())
        rows.append(LetterResult(letter, int(y[test].sum()), f1(pred, y[test]), main,
                                 f1((codes[test][:, main] > 0).any(1), y[test]),
                                 float(full.sum()) / max(1, n_correct),
                                 float(frac.nanmean()) if n_correct else float("nan")))
    if not rows:
        raise GlassworkError(f"absorption: no letter has {min_words} training words among {len(words)}")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"letters": [r.__dict__ for r in rows], "n_words": len(words),
            "mean_absorption_rate": mean([r.absorption_rate for r in rows]),
            "mean_absorption_fraction": mean([r.absorption_fraction for r in rows if r.absorption_fraction == r.absorption_fraction]),
            "mean_probe_f1": mean([r.probe_f1 for r in rows]), "mean_main_f1": mean([r.main_f1 for r in rows])}
