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

from ..hooks import mlp_hooks
from ..io import GlassworkError
from ..steering import Intervention, edit_features, position_mask, steer
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


def _editable_layers(transcoders) -> list[int]:
    """The layers whose features can be edited: the keys of a per-layer set, every layer of a CLT."""
    return sorted(transcoders) if isinstance(transcoders, dict) else list(range(transcoders.cfg.n_layers))


def _encode(transcoders, layer: int, x: torch.Tensor) -> torch.Tensor:
    """Codes [..., F] of `layer`'s features from that layer's MLP input x [..., d]."""
    if isinstance(transcoders, dict):
        tc = transcoders[layer]
        return tc.encode(x.to(tc.W_enc.dtype))
    return transcoders.encode_layer(x.to(transcoders.W_enc.dtype), layer)


def _writes(transcoders, layer: int, features: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """Where features [n] of `layer` write: [(target layer, decoder rows [n, d])]: their own MLP output for a
    per-layer transcoder, the MLP outputs of layer .. layer + n_i - 1 for a CLT."""
    if isinstance(transcoders, dict):
        return [(layer, transcoders[layer].W_dec[features].detach())]
    w = transcoders.W_dec[layer].detach()  # [F, n_i, d]
    return [(layer + j, w[features, j]) for j in range(w.shape[1])]


def _check(transcoders, edits: list[Edit]) -> None:
    from ..dictionaries import CrossLayerTranscoder
    if not isinstance(transcoders, (dict, CrossLayerTranscoder)):
        raise GlassworkError("interventions take per-layer transcoders {layer: SparseCoder} or a CrossLayerTranscoder")
    layers = _editable_layers(transcoders)
    for e in edits:
        if e.layer not in layers:
            raise GlassworkError(f"edit of layer {e.layer}: no transcoder for that layer (have {layers})")
        d_sae = transcoders[e.layer].d_sae if isinstance(transcoders, dict) else transcoders.d_sae
        if not 0 <= e.feature < d_sae:
            raise GlassworkError(f"edit of layer {e.layer}: feature {e.feature} outside 0..{d_sae - 1}")
        if e.value is None and e.scale is None:
            raise GlassworkError(f"edit of layer {e.layer} feature {e.feature}: give a value or a scale")


def _interventions(transcoders, edits: list[Edit]) -> list[tuple[int, int, Intervention]]:
    """Each edit as steering Interventions (the one feature-edit engine), with (its layer, the layer written): read
    at its layer's MLP input, written to every MLP output its feature writes to (n_i of them for a CLT feature)."""
    out = []
    for e in edits:
        read = mlp_hooks(e.layer)[0]
        for target, rows in _writes(transcoders, e.layer, torch.tensor([e.feature])):
            iv = edit_features(read, mlp_hooks(target)[1], lambda x, _l=e.layer: _encode(transcoders, _l, x),
                               [e.feature], rows, e.target, "all" if e.positions is None else e.positions,
                               label=f"L{e.layer} #{e.feature} -> MLP {target}")
            out.append((e.layer, target, iv))
    return out


@contextmanager
def feature_edits(model, transcoders, edits: list[Edit]) -> Iterator[None]:
    """Inside the block, every forward pass (and generate) of `model` runs with the edits (free mode). A CLT
    feature's change is written to every MLP output it writes to, computed from its own layer's live input.
    Positions are absolute, as in steering: with a KV cache, position p is the same token at every step."""
    _check(transcoders, edits)
    with torch.no_grad(), steer(model, [iv for _, _, iv in _interventions(transcoders, edits)]):
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
    for layer, target, iv in _interventions(transcoders, edits):  # what each adds to an MLP output, at its positions
        add = iv.edit(torch.zeros(1, seq, model.d_model, device=model.device), c.mlp_in[layer][None])
        mask = position_mask(iv.positions, seq, add.device)
        add = add if mask is None else torch.where(mask[None, :, None], add, 0.0)
        probes[target] = probes[target] + add if target in probes else add
    constants = r.constants(c)
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
