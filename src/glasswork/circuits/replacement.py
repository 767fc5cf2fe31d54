"""The replacement model, on the plain HF modules: one clean pass records attention patterns, norm scales and MLP
inputs/outputs; then a frozen pass runs with those patterns and scales fixed and each MLP replaced by
  mlp_out_l = decoded features_l + b_dec_l + skip_l(x_l) + error_l   (error_l = true mlp_out_l - transcoder_l(x_l))
so the residual stream is linear in the token embeddings, feature outputs and errors, and the clean logits come back.

Transcoders: {layer: SparseCoder(kind='transcoder')} reading blocks.{l}.ln2.hook_normalized and predicting
blocks.{l}.hook_mlp_out (a layer without one counts its whole MLP output as error), or one CrossLayerTranscoder.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager, ExitStack
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..dictionaries import CrossLayerTranscoder, SparseCoder
from ..hooks import arch_of, canonical, mlp_hooks
from ..io import GlassworkError

_RECORD, _FROZEN = "glasswork_record", "glasswork_frozen"


class _Stop(Exception):
    pass


@dataclass
class Clean:
    """What the clean pass on one prompt left behind (all [seq, ...] for batch 1)."""

    input_ids: torch.Tensor  # [seq]
    logits: torch.Tensor  # [seq, vocab]
    mlp_in: list[torch.Tensor]  # per layer [seq, d_model]: ln2.hook_normalized
    mlp_out: list[torch.Tensor]  # per layer [seq, d_model]: true hook_mlp_out
    embed: torch.Tensor | None = None  # [seq, d_model]: hook_embed (the token embedding nodes' vectors)
    patterns: dict = field(default_factory=dict)  # attention module -> [1, heads, seq, seq]
    qk: dict = field(default_factory=dict)  # attention module -> (query [1, heads, seq, hd], key [1, kv, seq, hd],
    #                                         scaling, softcap): what the pre-softmax scores are made of
    scales: dict = field(default_factory=dict)  # norm module -> [1, seq, ..., 1]


@dataclass
class Features:
    """Active features of the prompt, sorted by (layer, pos, feature): layer, pos, index, activation [n]."""

    layer: torch.Tensor
    pos: torch.Tensor
    index: torch.Tensor
    activation: torch.Tensor

    def __len__(self) -> int:
        return self.layer.numel()


def _norm_kind(m: nn.Module) -> str | None:
    name = type(m).__name__
    if isinstance(m, nn.LayerNorm) or name.endswith("LayerNorm"):
        return "layernorm"
    if name.endswith("RMSNorm"):
        return "gemma_rms" if name.startswith("Gemma") else "rms"
    return None


def _eps(m: nn.Module) -> float:
    for attr in ("variance_epsilon", "eps"):
        if hasattr(m, attr):
            return float(getattr(m, attr))
    return 1e-5


def _norm_scale(m: nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The data-dependent factor 1/rms (or 1/std) that freezing holds fixed: [..., 1]."""
    xf = x.float()
    if kind == "layernorm":
        return torch.rsqrt(xf.var(-1, keepdim=True, unbiased=False) + _eps(m))
    return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + _eps(m))


def _norm_apply(m: nn.Module, kind: str, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The norm with its scale fixed: linear (affine) in x."""
    w = getattr(m, "weight", None)
    if kind == "layernorm":
        out = (x - x.mean(-1, keepdim=True)) * scale
        out = out if w is None else out * w
        b = getattr(m, "bias", None)
        return out if b is None else out + b
    out = x * scale
    if w is None:
        return out
    return out * (1.0 + w) if kind == "gemma_rms" else out * w


class ReplacementModel:
    """A model with its transcoders, able to run the clean pass and the frozen (linear) replacement pass."""

    def __init__(self, model, transcoders: dict[int, SparseCoder] | CrossLayerTranscoder):
        self.model = model
        self.arch = arch_of(model.hf)
        self.clt = transcoders if isinstance(transcoders, CrossLayerTranscoder) else None
        self.transcoders = {} if self.clt is not None else dict(transcoders)
        self._check()
        self.layers = self.model.hf.get_submodule(self.arch.layers)
        self.norms = [(m, k) for m in model.hf.modules() if (k := _norm_kind(m)) is not None
                      and not self._is_mlp_out(m)]
        self.attns = [layer.get_submodule(self.arch.attn) for layer in self.layers]
        for name in (_RECORD, _FROZEN):
            _register_attention(name)

    def _is_mlp_out(self, m: nn.Module) -> bool:
        return self.arch.mlp_out != self.arch.mlp and any(
            m is layer.get_submodule(self.arch.mlp_out) for layer in self.model.hf.get_submodule(self.arch.layers))

    # --- checks -----------------------------------------------------------------------------------------------
    def _check(self) -> None:
        m = self.model
        coders = {None: self.clt} if self.clt is not None else self.transcoders
        if not coders or (self.clt is None and not self.transcoders):
            raise GlassworkError("no transcoders given: pass {layer: SparseCoder} or a CrossLayerTranscoder")
        for layer, tc in coders.items():
            cfg = tc.cfg
            where = f"transcoder for layer {layer}" if layer is not None else "cross-layer transcoder"
            if cfg.kind not in ("transcoder", "clt"):
                raise GlassworkError(f"{where}: kind is '{cfg.kind}', expected 'transcoder' or 'clt'")
            if cfg.model and m.name and cfg.model != m.name:
                raise GlassworkError(f"{where}: trained on model '{cfg.model}', but the model is '{m.name}'")
            if cfg.d_in != m.d_model or cfg.d_out != m.d_model:
                raise GlassworkError(f"{where}: d_in={cfg.d_in}, d_out={cfg.d_out}; the model's MLP input and output "
                                     f"have d_model={m.d_model} (transcoders from another model?)")
            if layer is not None:
                if not 0 <= layer < m.n_layers:
                    raise GlassworkError(f"{where}: layer {layer} outside the model's 0..{m.n_layers - 1}")
                for field_, want in zip(("hook_in", "hook_out"), mlp_hooks(layer)):
                    got = getattr(cfg, field_)
                    if got and canonical(m, got) != want:
                        raise GlassworkError(f"{where}: {field_} is '{got}', expected '{want}'")
            elif cfg.n_layers != m.n_layers:
                raise GlassworkError(f"{where}: reads {cfg.n_layers} layers; the model has {m.n_layers}")

    @property
    def feature_type(self) -> str:
        return "cross layer transcoder" if self.clt is not None else "transcoder"

    @property
    def d_sae(self) -> int:
        return self.clt.d_sae if self.clt is not None else next(iter(self.transcoders.values())).d_sae

    def skip_weight(self, layer: int) -> torch.Tensor | None:
        """Layer `layer`'s linear skip [d_in, d_out] (its transcoder's, or the CLT's for that layer), or None."""
        coder = self.clt if self.clt is not None else self.transcoders.get(layer)
        return None if coder is None else coder.skip_weight(layer)

    # --- the clean pass ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def clean(self, input_ids: torch.Tensor) -> Clean:
        """Run the real model once (eager attention), recording patterns, norm scales, MLP inputs and outputs."""
        L = self.model.n_layers
        mlp_in: list = [None] * L
        mlp_out: list = [None] * L
        c = Clean(input_ids.flatten(), None, mlp_in, mlp_out)
        with ExitStack() as stack:
            stack.enter_context(_attn_impl(self.model.hf, _RECORD))
            for m, kind in self.norms:
                stack.enter_context(_hook(m.register_forward_pre_hook(_record_scale(c, m, kind))))
            for m in self.attns:
                m._glasswork_state = ("record", c.patterns, c.qk)
                stack.callback(_clear_state, m)
            for layer in range(L):
                block = self.layers[layer]
                stack.enter_context(_hook(block.get_submodule(self.arch.mlp).register_forward_pre_hook(
                    _keep_input(mlp_in, layer), with_kwargs=True)))
                stack.enter_context(_hook(block.get_submodule(self.arch.mlp_out).register_forward_hook(
                    _keep_output(mlp_out, layer))))
            emb = self.model.hf.get_submodule(self.arch.embed)
            stack.enter_context(_hook(emb.register_forward_hook(
                lambda mod, a, out: setattr(c, "embed", out[0].detach()))))
            out = self.model.hf(input_ids=input_ids.view(1, -1), use_cache=False)
        c.logits = out.logits[0].float()
        return c

    def features(self, c: Clean) -> tuple[Features, list[torch.Tensor]]:
        """Active features of the prompt and each layer's reconstruction [seq, d] (b_dec and skip included)."""
        layers, poss, idxs, acts, recon = [], [], [], [], []
        with torch.no_grad():
            if self.clt is not None:
                x = torch.stack(c.mlp_in, dim=-2)  # [seq, L, d]
                codes = self.clt.encode(x)  # [seq, L, F]
                recon = list((self.clt.decode(codes) + self.clt.skip_term(x)).unbind(-2))
                per_layer = codes.unbind(-2)
            else:
                per_layer = []
                for layer in range(self.model.n_layers):
                    tc = self.transcoders.get(layer)
                    if tc is None:
                        per_layer.append(None)
                        recon.append(torch.zeros_like(c.mlp_out[layer]))
                        continue
                    codes = tc.encode(c.mlp_in[layer])  # [seq, d_sae]
                    per_layer.append(codes)
                    recon.append(tc.decode(codes) + tc.skip_term(c.mlp_in[layer]))
            for layer, codes in enumerate(per_layer):
                if codes is None:
                    continue
                pos, idx = codes.nonzero(as_tuple=True)  # row-major: sorted by (pos, feature)
                layers.append(torch.full_like(pos, layer))
                poss.append(pos)
                idxs.append(idx)
                acts.append(codes[pos, idx].float())
        cat = (lambda xs, dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dt))
        feats = Features(*(cat(xs, dt).cpu() for xs, dt in ((layers, torch.long), (poss, torch.long),
                                                             (idxs, torch.long), (acts, torch.float32))))
        return feats, recon  # the feature table lives on the CPU; vectors go to the model's device

    def decoder_vectors(self, feats: Features) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """What each feature adds to each MLP output it writes to: {layer j: (rows [m] into feats,
        vectors [m, d] = activation x decoder row into mlp_out_j)}."""
        out = {}
        for j in range(self.model.n_layers):
            rows, vecs = [], []
            for i in ([j] if self.clt is None else range(j + 1)):
                sel = (feats.layer == i).nonzero().flatten()
                if self.clt is None:
                    if j not in self.transcoders or not len(sel):
                        continue
                    w_dec = self.transcoders[j].W_dec.detach()
                    w = w_dec[feats.index[sel].to(w_dec.device)]
                else:
                    w_dec = self.clt.W_dec[i]
                    if j - i >= w_dec.shape[1] or not len(sel):
                        continue
                    w = w_dec.detach()[feats.index[sel].to(w_dec.device), j - i]
                rows.append(sel)
                vecs.append(feats.activation[sel, None].to(w.device) * w.float())
            if rows:
                out[j] = (torch.cat(rows), torch.cat(vecs))
        return out

    def writers_by_position(self, feats: Features, seq: int) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """decoder_vectors split by position: {layer j: [(rows into feats, vectors [m, d]) for each position]}."""
        out = {}
        for j, (rows, vecs) in self.decoder_vectors(feats).items():
            pos = feats.pos[rows]
            out[j] = [(rows[pos == p], vecs[pos == p]) for p in range(seq)]
        return out

    def encoder_vectors(self, layer: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Encoder columns [n, d] of features (layer, index): the gradient of their pre-activation w.r.t. x_l."""
        out = torch.zeros(layer.numel(), self.model.d_model, device=self.model.device)
        for lyr in layer.unique().tolist():
            sel = layer == lyr
            w = self.clt.W_enc[lyr] if self.clt is not None else self.transcoders[lyr].W_enc
            out[sel.to(out.device)] = w.detach()[:, index[sel].to(w.device)].T.float()
        return out

    # --- the frozen pass --------------------------------------------------------------------------------------
    def constants(self, c: Clean) -> list[torch.Tensor]:
        """Per layer [seq, d]: what the frozen pass adds as the MLP output (features + b_dec + error: the true output
        minus the skip, which the pass applies live)."""
        out = []
        for layer in range(self.model.n_layers):
            W_skip = self.skip_weight(layer)
            out.append(c.mlp_out[layer] - (c.mlp_in[layer] @ W_skip.detach() if W_skip is not None else 0.0))
        return out

    def probed(self, c: Clean, input_ids: torch.Tensor, heads: bool = False, taps: dict | None = None):
        """The frozen pass over the whole prompt with zero probes that require grad at the embedding and every MLP
        output (and on every head's output z when `heads`): gradients of anything read from it land on the probes.
        Returns (probes, final norm output [1, seq, d])."""
        seq, d, dev = input_ids.numel(), self.model.d_model, self.model.device
        probes = {"embed": torch.zeros(1, seq, d, device=dev, requires_grad=True)}
        for layer in range(self.model.n_layers):
            probes[layer] = torch.zeros(1, seq, d, device=dev, requires_grad=True)
            if heads:
                q = c.qk[self.attns[layer]][0]
                probes[("z", layer)] = torch.zeros(1, seq, q.shape[1], q.shape[-1], device=dev, requires_grad=True)
        with torch.enable_grad():
            _, final = self.frozen(c, self.constants(c), input_ids.view(1, -1), probes, taps)
        return probes, final

    def frozen(self, c: Clean, constants: list[torch.Tensor], input_ids: torch.Tensor,
               probes: dict | None = None, taps: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Forward the frozen replacement model on input_ids [batch, p] (a prefix of the prompt, repeated).

        constants: per layer [seq, d] added as the MLP output (features + b_dec + error; skip is applied live).
        probes: optional {'embed' | layer: [batch, p, d]} added to the embedding / MLP output (gradients land there),
        and {('z', layer): [batch, p, heads, hd]} added to the heads' outputs (pattern x values, before o_proj).
        taps: optional dict, filled with {layer: {'query', 'key', 'z'}} of every layer (query and key after rotary,
        [batch, heads or kv heads, p, hd]; z before its probe [batch, p, heads, hd]), all linear in the probes.
        Returns (mlp_in per layer [batch, p, d], final norm output [batch, p, d]); the lm head is skipped."""
        probes = probes or {}
        L = self.model.n_layers
        mlp_in: list = [None] * L
        final = {}
        hf = self.model.hf
        with ExitStack() as stack:
            stack.enter_context(_attn_impl(hf, _FROZEN))
            for m, kind in self.norms:
                stack.enter_context(_hook(m.register_forward_hook(_frozen_norm(c, m, kind))))
            for layer, m in enumerate(self.attns):
                tap = None if taps is None else taps.setdefault(layer, {})
                m._glasswork_state = ("frozen", c.patterns, (tap, probes.get(("z", layer))))
                stack.callback(_clear_state, m)
            if "embed" in probes:
                emb = hf.get_submodule(self.arch.embed)
                stack.enter_context(_hook(emb.register_forward_hook(lambda mod, a, out: out + probes["embed"])))
            for layer in range(L):
                block = self.layers[layer]
                mlp, mlp_out = block.get_submodule(self.arch.mlp), block.get_submodule(self.arch.mlp_out)
                replace = self._mlp_replacement(layer, constants[layer], probes.get(layer), mlp_in)
                if mlp is mlp_out:
                    stack.enter_context(_patch_forward(mlp, replace))
                else:  # e.g. Gemma 2: keep the input, skip the MLP, and replace the post-MLP norm's output
                    stack.enter_context(_patch_forward(mlp, lambda x, _l=layer: _stash(mlp_in, _l, x)))
                    stack.enter_context(_patch_forward(mlp_out, lambda h, _l=layer, _r=replace: _r(mlp_in[_l])))
            fn = hf.get_submodule(self.arch.final_norm)

            def stop(mod, args, out):
                final["out"] = out
                raise _Stop

            stack.enter_context(_hook(fn.register_forward_hook(stop)))
            try:
                hf(input_ids=input_ids, use_cache=False)
            except _Stop:
                pass
        return mlp_in, final["out"]

    def _mlp_replacement(self, layer, const, probe, mlp_in):
        W_skip = self.skip_weight(layer)

        def replace(x):
            mlp_in[layer] = x
            p = x.shape[1]
            out = const[:p].to(x.dtype).expand_as(x)
            if W_skip is not None:
                out = out + x @ W_skip.detach()
            if probe is not None:
                out = out + probe
            return out
        return replace


def position_runs(positions: torch.Tensor, order: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(p, indices) for each run of equal position in `order` (indices into positions [n], sorted by position): the
    targets that share one causal prefix [0..p]."""
    start, n = 0, order.numel()
    while start < n:
        p = int(positions[order[start]])
        end = start
        while end < n and int(positions[order[end]]) == p:
            end += 1
        yield p, order[start:end]
        start = end


def _stash(store, layer, x):
    store[layer] = x
    return x


# --- attention: record the clean pattern, or reuse it ---------------------------------------------------------
def _register_attention(name: str) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, eager_mask)


def _attention(module, query, key, value, attention_mask, **kwargs):
    """Eager attention of the module's own architecture (record) or the clean pattern times the values (frozen)."""
    mode, patterns, extra = getattr(module, "_glasswork_state", ("plain", None, None))
    if mode == "frozen":
        pattern = patterns[module]  # [1, heads, seq, seq]
        p = query.shape[-2]
        pattern = pattern[..., :p, :p].to(value.dtype)
        heads, kv = pattern.shape[1], value.shape[1]
        # Grouped-query attention without repeating the values: the heads of one group share a [p, hd] value block.
        pattern = pattern.reshape(1, kv, (heads // kv) * p, p)
        out = (pattern @ value).reshape(value.shape[0], heads, p, value.shape[-1]).transpose(1, 2)
        tap, z_probe = extra
        if tap is not None:
            tap.update(query=query, key=key, z=out)
        return (out if z_probe is None else out + z_probe).contiguous(), None
    eager = sys.modules[type(module).__module__].eager_attention_forward
    out, weights = eager(module, query, key, value, attention_mask, **kwargs)
    if mode == "record":
        patterns[module] = weights.detach()
        extra[module] = (query.detach(), key.detach(), kwargs.get("scaling"), kwargs.get("softcap"))
    return out, weights


@contextmanager
def _attn_impl(hf, name: str) -> Iterator[None]:
    configs = {id(m.config): m.config for m in hf.modules() if hasattr(m, "config")}
    old = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = name
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = old[k]


def _clear_state(m):
    if hasattr(m, "_glasswork_state"):
        del m._glasswork_state


# --- hooks ---------------------------------------------------------------------------------------------------
@contextmanager
def _hook(handle) -> Iterator[None]:
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _patch_forward(module: nn.Module, fn) -> Iterator[None]:
    module.forward = fn
    try:
        yield
    finally:
        del module.forward


def _record_scale(c: Clean, m, kind):
    def hook(mod, args):
        c.scales[m] = _norm_scale(m, kind, args[0]).detach()
    return hook


def _frozen_norm(c: Clean, m, kind):
    gain = {}

    def hook(mod, args, out):
        x = args[0]
        p = x.shape[1]
        if kind == "layernorm":
            return _norm_apply(m, kind, x, c.scales[m][:, :p].to(x.dtype)).to(out.dtype)
        if p not in gain:  # scale x weight folded once per prefix length: one multiply in the pass
            ones = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
            gain[p] = _norm_apply(m, kind, ones, c.scales[m][:, :p].to(x.dtype)).detach()
        return (x * gain[p]).to(out.dtype)
    return hook


def _keep_input(store, layer):
    def hook(mod, args, kwargs):
        store[layer] = (args[0] if args else kwargs["hidden_states"])[0].detach()
    return hook


def _keep_output(store, layer):
    def hook(mod, args, out):
        store[layer] = (out[0] if isinstance(out, tuple) else out)[0].detach()
    return hook
