"""Check a graph on the real model: set or ablate features (or groups of them, supernodes) and read the target logits.

An edit changes a feature's activation a -> a' at some positions by adding (a' - a) x its decoder row to the MLP output
and keeping the transcoder's error, so an edit to the current value changes nothing, exactly. Two modes:
  free    the real model runs on: later MLPs, attention patterns and features respond to the edit
  frozen  the replacement model with attention patterns, norm scales and every other feature fixed: the change in a
          demeaned logit is then exactly the sum of the edited features' direct edges (times their change)
Edits also work inside generate() (free mode), at every new token when positions is None.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from ..hooks import intervene as _intervene
from ..io import GlassworkError
from .attribution import prompt_ids
from .replacement import ReplacementModel


@dataclass
class Edit:
    """Set feature `feature` of the transcoder at `layer` to `value` (0: ablate), or multiply it by `scale`,
    at token `positions` (None: all, including generated tokens)."""

    layer: int
    feature: int
    positions: list[int] | None = None
    value: float | None = None
    scale: float | None = None

    def target(self, act: torch.Tensor) -> torch.Tensor:
        if self.value is not None:
            return torch.full_like(act, float(self.value))
        return act * (0.0 if self.scale is None else float(self.scale))


def supernode(features: list[tuple[int, int, int | None]], value: float | None = None,
              scale: float | None = None) -> list[Edit]:
    """A group of (layer, feature, pos or None) edited together: one Edit each, same value or scale."""
    return [Edit(layer, feature, None if pos is None else [pos], value, scale) for layer, feature, pos in features]


def _check(transcoders, edits: list[Edit]) -> None:
    if not isinstance(transcoders, dict):
        raise GlassworkError("interventions take per-layer transcoders {layer: SparseCoder}")
    for e in edits:
        if e.layer not in transcoders:
            raise GlassworkError(f"edit of layer {e.layer}: no transcoder for that layer (have {sorted(transcoders)})")
        if not 0 <= e.feature < transcoders[e.layer].d_sae:
            raise GlassworkError(f"edit of layer {e.layer}: feature {e.feature} outside 0..{transcoders[e.layer].d_sae - 1}")
        if e.value is None and e.scale is None:
            raise GlassworkError(f"edit of layer {e.layer} feature {e.feature}: give a value or a scale")


@contextmanager
def feature_edits(model, transcoders: dict, edits: list[Edit]) -> Iterator[None]:
    """Inside the block, every forward pass (and generate) of `model` runs with the edits (free mode)."""
    _check(transcoders, edits)
    by_layer: dict[int, list[Edit]] = {}
    for e in edits:
        by_layer.setdefault(e.layer, []).append(e)
    inputs: dict[int, torch.Tensor] = {}
    fns = {}
    for layer, es in by_layer.items():
        tc = transcoders[layer]

        def keep(x, _l=layer):
            inputs[_l] = x

        def edit(out, _l=layer, _es=es, _tc=tc):
            x = inputs.pop(_l)
            feats = torch.tensor([e.feature for e in _es], device=x.device)
            acts = _tc.encode(x.to(_tc.W_enc.dtype))[..., feats]  # [b, s, n]: the current activations
            delta = torch.zeros_like(acts)
            s = acts.shape[1]
            for i, e in enumerate(_es):
                pos = list(range(s)) if e.positions is None else [p for p in e.positions if p < s]
                if pos:
                    delta[:, pos, i] = e.target(acts[:, pos, i]) - acts[:, pos, i]
            return out + (delta @ _tc.W_dec[feats]).to(out.dtype)

        fns[f"blocks.{layer}.ln2.hook_normalized"] = keep
        fns[f"blocks.{layer}.hook_mlp_out"] = edit
    with torch.no_grad(), _intervene(model, fns):
        yield


@torch.no_grad()
def intervene_logits(model, transcoders, prompt, edits: list[Edit], mode: str = "free",
                     tokens: list[int] | None = None) -> dict:
    """Logits at the last position before and after the edits; `tokens` (default: the top 10 before) get their
    change in logit and in demeaned logit (the quantity graph edges measure)."""
    ids = prompt_ids(model, prompt)
    _check(transcoders, edits)
    for e in edits:
        bad = [p for p in (e.positions or []) if not 0 <= p < ids.numel()]
        if bad:
            raise GlassworkError(f"edit of layer {e.layer} feature {e.feature}: position {bad[0]} is outside the "
                                 f"prompt's {ids.numel()} tokens (0..{ids.numel() - 1}, BOS is 0)")
    before = model.logits(ids.view(1, -1))[0, -1].float()
    if mode == "free":
        with feature_edits(model, transcoders, edits):
            after = model.logits(ids.view(1, -1))[0, -1].float()
    elif mode == "frozen":
        after = _frozen_logits(model, transcoders, ids, edits)
    else:
        raise GlassworkError(f"mode must be 'free' or 'frozen' (got '{mode}')")
    tokens = tokens if tokens is not None else before.topk(10).indices.tolist()
    diff = after - before
    demeaned = diff - diff.mean()
    return {"tokens": tokens, "before": before[tokens].tolist(), "after": after[tokens].tolist(),
            "change": diff[tokens].tolist(), "demeaned_change": demeaned[tokens].tolist(),
            "prob_before": before.softmax(-1)[tokens].tolist(), "prob_after": after.softmax(-1)[tokens].tolist(),
            "logits_after": after}


def _frozen_logits(model, transcoders, ids, edits: list[Edit]) -> torch.Tensor:
    """Last-position logits of the frozen replacement model with the edits added at their MLP outputs."""
    r = ReplacementModel(model, transcoders)
    c = r.clean(ids.view(1, -1))
    seq = ids.numel()
    probes: dict = {}
    for e in edits:
        tc = transcoders[e.layer]
        acts = tc.encode(c.mlp_in[e.layer])[:, e.feature]  # [seq]
        pos = list(range(seq)) if e.positions is None else [p for p in e.positions if p < seq]
        probe = probes.setdefault(e.layer, torch.zeros(1, seq, model.d_model, device=model.device))
        for p in pos:
            probe[0, p] += (e.target(acts[p]) - acts[p]) * tc.W_dec[e.feature].detach()
    constants = [c.mlp_out[layer] - (c.mlp_in[layer] @ transcoders[layer].W_skip.detach()
                                     if layer in transcoders and transcoders[layer].W_skip is not None else 0.0)
                 for layer in range(model.n_layers)]
    _, final = r.frozen(c, constants, ids.view(1, -1), probes)
    logits = model.hf.get_output_embeddings()(final[0, -1]).float()
    cap = getattr(model.hf.config, "final_logit_softcapping", None)  # Gemma 2
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def generate(model, transcoders, prompt: str, edits: list[Edit], max_new_tokens: int = 20, **kwargs) -> str:
    """Greedy generation with the edits applied at every step (free mode); returns the new text."""
    ids = prompt_ids(model, prompt).view(1, -1)
    with feature_edits(model, transcoders, edits):
        out = model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=model.bos_token_id, **kwargs)
    return model.tokenizer.decode(out[0, ids.shape[1]:]) if model.tokenizer is not None else str(out[0].tolist())
