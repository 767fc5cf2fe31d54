"""Hook points: the field's names for a model's activations, as plain PyTorch hooks on HF modules.

Names (TransformerLens style), for each layer l:
  hook_embed                        token embedding (before any position embedding or scaling)
  blocks.{l}.hook_resid_pre         residual stream entering layer l
  blocks.{l}.ln1.hook_normalized    attention input (after the layer's first norm)
  blocks.{l}.hook_attn_out          what attention adds to the residual stream
  blocks.{l}.hook_resid_mid         resid_pre + attn_out
  blocks.{l}.ln2.hook_normalized    MLP input (alias blocks.{l}.hook_mlp_in)
  blocks.{l}.hook_mlp_out           what the MLP adds to the residual stream
  blocks.{l}.hook_resid_post        residual stream leaving layer l
  ln_final.hook_normalized          final norm output (the unembedding's input)
Every value has shape [batch, seq, d] (d = d_model, or d_mlp for nothing here: MLP input is d_model).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from .io import GlassworkError

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class Arch:
    """Where each hook point lives in one HF architecture (module paths relative to the model / layer)."""

    embed: str  # token embedding module
    layers: str  # ModuleList of decoder layers
    final_norm: str
    attn: str  # module whose first output is the attention block's contribution... before attn_out_norm
    attn_out: str  # module whose output is added to the residual (attn, or a post-attention norm)
    mlp: str  # module whose input is the MLP input
    mlp_out: str  # module whose output is added to the residual (mlp, or a post-MLP norm)
    parallel: bool = False  # GPT-NeoX / GPT-J: attn and MLP both read resid_pre


_LLAMA = Arch("model.embed_tokens", "model.layers", "model.norm", "self_attn", "self_attn", "mlp", "mlp")
_GEMMA2 = Arch("model.embed_tokens", "model.layers", "model.norm", "self_attn", "post_attention_layernorm", "mlp",
               "post_feedforward_layernorm")
ARCHS: dict[str, Arch] = {
    **{t: _LLAMA for t in ("llama", "qwen2", "qwen3", "mistral", "olmo", "olmo2", "phi3", "smollm3")},
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "gpt2": Arch("transformer.wte", "transformer.h", "transformer.ln_f", "attn", "attn", "mlp", "mlp"),
    "gpt_neox": Arch("gpt_neox.embed_in", "gpt_neox.layers", "gpt_neox.final_layer_norm", "attention", "attention",
                     "mlp", "mlp"),
}

POINTS_PER_LAYER = ("hook_resid_pre", "ln1.hook_normalized", "hook_attn_out", "hook_resid_mid",
                    "ln2.hook_normalized", "hook_mlp_out", "hook_resid_post")
ALIASES = {"hook_mlp_in": "ln2.hook_normalized", "hook_attn_in": "ln1.hook_normalized"}
# Order inside a layer in which the forward pass produces each point.
_ORDER = {name: i for i, name in enumerate(POINTS_PER_LAYER)}
_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


def mlp_hooks(layer: int) -> tuple[str, str]:
    """(input, output) hook points of the MLP at `layer`: what a transcoder (or a CLT's layer) reads and writes.
    The one place these two names are spelled."""
    return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"


def arch_of(hf_model: nn.Module) -> Arch:
    model_type = hf_model.config.model_type
    if model_type not in ARCHS:
        raise GlassworkError(f"model type '{model_type}' has no hook-point map (supported: {', '.join(sorted(ARCHS))})")
    arch = ARCHS[model_type]
    if model_type == "gpt_neox" and getattr(hf_model.config, "use_parallel_residual", True):
        arch = Arch(**{**arch.__dict__, "parallel": True})
    return arch


def hook_points(model) -> list[str]:
    """Every hook point name of `model` (a glasswork Model or an HF model), in forward order."""
    n_layers = _hf(model).config.num_hidden_layers
    names = ["hook_embed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{p}" for p in POINTS_PER_LAYER]
    return names + ["ln_final.hook_normalized"]


def parse(model, name: str) -> tuple[int | None, str]:
    """'blocks.3.hook_mlp_in' -> (3, 'ln2.hook_normalized'); 'hook_embed' -> (None, 'hook_embed').

    Raises a GlassworkError listing the valid names when `name` is not one of them."""
    n_layers = _hf(model).config.num_hidden_layers
    if name in ("hook_embed", "ln_final.hook_normalized"):
        return None, name
    m = _NAME.match(name)
    if m:
        layer, point = int(m.group(1)), ALIASES.get(m.group(2), m.group(2))
        if point in _ORDER and layer < n_layers:
            return layer, point
    raise GlassworkError(
        f"unknown hook point '{name}'. Valid: hook_embed, blocks.{{0..{n_layers - 1}}}.{{"
        + ", ".join(POINTS_PER_LAYER + tuple(ALIASES)) + "}, ln_final.hook_normalized")


def canonical(model, name: str) -> str:
    layer, point = parse(model, name)
    return point if layer is None else f"blocks.{layer}.{point}"


def _hf(model) -> nn.Module:
    return getattr(model, "hf", model)


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def layer_module(model, layer: int) -> nn.Module:
    hf = _hf(model)
    return _get(hf, arch_of(hf).layers)[layer]


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


def _out_hook(fn: HookFn):
    def hook(module, args, output):
        new = fn(_first(output))
        return None if new is None else _replace_first(output, new)
    return hook


def _in_hook(fn: HookFn):
    def hook(module, args, kwargs):
        act = args[0] if args else kwargs["hidden_states"]
        new = fn(act)
        if new is None:
            return None
        if args:
            return (new,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}
    return hook


def _register(model, name: str, fn: HookFn) -> list[torch.utils.hooks.RemovableHandle]:
    """Attach `fn` (act -> new act or None) at hook point `name`; return the handles to remove."""
    hf = _hf(model)
    arch = arch_of(hf)
    layer, point = parse(model, name)
    if point == "hook_embed":
        return [_get(hf, arch.embed).register_forward_hook(_out_hook(fn))]
    if point == "ln_final.hook_normalized":
        return [_get(hf, arch.final_norm).register_forward_hook(_out_hook(fn))]
    block = _get(hf, arch.layers)[layer]
    if point == "hook_resid_pre":
        return [block.register_forward_pre_hook(_in_hook(fn), with_kwargs=True)]
    if point == "hook_resid_post":
        return [block.register_forward_hook(_out_hook(fn))]
    if point == "ln1.hook_normalized":
        return [_get(block, arch.attn).register_forward_pre_hook(_in_hook(fn), with_kwargs=True)]
    if point == "ln2.hook_normalized":
        return [_get(block, arch.mlp).register_forward_pre_hook(_in_hook(fn), with_kwargs=True)]
    if point == "hook_attn_out":
        return [_get(block, arch.attn_out).register_forward_hook(_out_hook(fn))]
    if point == "hook_mlp_out":
        return [_get(block, arch.mlp_out).register_forward_hook(_out_hook(fn))]
    # resid_mid is not a tensor HF names: it is resid_pre + attn_out, edited through attn_out.
    state: dict[str, torch.Tensor] = {}

    def keep_pre(act):
        state["pre"] = act

    def edit_attn(attn_out):
        mid = state.pop("pre") + attn_out
        new = fn(mid)
        return None if new is None else attn_out + (new - mid)

    return [block.register_forward_pre_hook(_in_hook(keep_pre), with_kwargs=True),
            _get(block, arch.attn_out).register_forward_hook(_out_hook(edit_attn))]


class _StopForward(Exception):
    pass


@contextmanager
def hooks(model, fns: Mapping[str, HookFn] | list[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach several hook functions for the duration of a `with` block (act -> new act, or None to keep)."""
    items = list(fns.items()) if isinstance(fns, Mapping) else list(fns)
    handles = []
    try:
        for name, fn in items:
            handles += _register(model, name, fn)
        yield
    finally:
        for h in handles:
            h.remove()


def capture(model, input_ids: torch.Tensor, names: list[str], attention_mask: torch.Tensor | None = None,
            stop_early: bool = True, detach: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """One forward pass that records `names`; returns (logits or None if it stopped early, {name: [batch, seq, d]}).

    With stop_early the pass ends right after the last layer any name needs (no unembedding)."""
    hf = _hf(model)
    wanted = {canonical(model, n): n for n in names}
    cache: dict[str, torch.Tensor] = {}

    def saver(key):
        def fn(act):
            cache[key] = act.detach() if detach else act
        return fn

    fns: list[tuple[str, HookFn]] = [(c, saver(orig)) for c, orig in wanted.items()]
    last_layer = None
    if stop_early and "ln_final.hook_normalized" not in wanted:
        layers = [parse(model, c)[0] for c in wanted]
        last_layer = max((x for x in layers if x is not None), default=0)

        def stop(act):
            raise _StopForward

        # Layer output comes after every point of that layer; registered last so the savers run first.
        fns.append((f"blocks.{last_layer}.hook_resid_post", stop))
    logits = None
    with hooks(model, fns):
        try:
            out = hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            logits = out.logits
        except _StopForward:
            pass
    return logits, {orig: cache[orig] for orig in wanted.values()}


@contextmanager
def intervene(model, edits: Mapping[str, HookFn] | list[tuple[str, HookFn]]) -> Iterator[None]:
    """Change activations during any forward pass or generate() inside the block.

    `edits` maps a hook point to a function act [batch, seq, d] -> new act (or None to keep it);
    see `add` and `replace` for the common ones."""
    with hooks(model, edits):
        yield


def add(vector: torch.Tensor, positions: slice | list[int] | None = None) -> HookFn:
    """Edit that adds `vector` [d] (or [seq, d]) at the given token positions (default: all)."""
    def fn(act):
        out = act.clone()
        idx = slice(None) if positions is None else positions
        out[:, idx] = out[:, idx] + vector.to(act.dtype)
        return out
    return fn


def replace(value: torch.Tensor, positions: slice | list[int] | None = None) -> HookFn:
    """Edit that sets the activation to `value` ([d], [seq, d] or [batch, seq, d]) at the given positions."""
    def fn(act):
        out = act.clone()
        idx = slice(None) if positions is None else positions
        out[:, idx] = value.to(act.dtype)
        return out
    return fn
