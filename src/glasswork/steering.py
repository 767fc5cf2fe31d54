"""Steering: change activations during a forward pass or generate(), at chosen hook points and token positions.

An `Intervention` is one edit at one hook point: add c x direction, project a direction out, or set dictionary
features to values (clamp, zero). Feature edits keep the dictionary's error term: at the hook, x -> x + decode(f') -
decode(f) with f the codes of x and f' the edited codes, so x - sae(x) is kept and an edit that changes nothing leaves
x exactly as it was. `steer(model, interventions)` applies a list of them inside a `with` block (gw.intervene).

Positions are absolute token positions of the sequence being generated: "all", "prompt", "generated", a list of
ints or a slice. With a KV cache, generate() feeds one token per step; the tracker reads the cache length before
each forward, so position p means the same token in the prompt pass and in every later step.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import torch

from .hooks import intervene, parse
from .io import GlassworkError

Positions = Union[str, Sequence[int], slice]
POSITION_NAMES = ("all", "prompt", "generated")


@dataclass
class Intervention:
    """One edit at `hook`: edit(act [batch, seq, d], read [batch, seq, d_in] | None) -> new act (every position;
    `positions` picks where the new value is used). `read` names a hook point read earlier in the same forward
    (a transcoder's input); its activation is passed as the second argument."""

    hook: str
    edit: Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
    positions: Positions = "all"
    read: str | None = None
    label: str = ""
    record: dict = field(default_factory=dict)  # the last codes a feature edit used ("codes": [batch, seq, n])


# ---------------------------------------------------------------------------------------------------- checks

def check_hook(model, hook: str) -> str:
    """The canonical hook name, or a GlassworkError that says which layers exist."""
    m = re.match(r"^blocks\.(-?\d+)\.", hook)
    if m and not 0 <= int(m.group(1)) < model.n_layers:
        raise GlassworkError(f"hook point '{hook}': layer {m.group(1)} does not exist; model '{model.name}' has "
                             f"{model.n_layers} layers (0..{model.n_layers - 1})")
    layer, point = parse(model, hook)
    return point if layer is None else f"blocks.{layer}.{point}"


def check_direction(model, direction: torch.Tensor, what: str = "direction") -> torch.Tensor:
    """A direction as a float32 vector [d_model], or a GlassworkError naming the size expected."""
    direction = torch.as_tensor(direction)
    if direction.dim() != 1 or direction.shape[0] != model.d_model:
        raise GlassworkError(f"{what} has shape {list(direction.shape)}; model '{model.name}' has d_model = "
                             f"{model.d_model}: expected a vector of size {model.d_model}")
    if not torch.isfinite(direction).all():
        raise GlassworkError(f"{what} holds NaN or inf values")
    return direction.float()


def check_feature(dictionary, feature: int, where: str = "dictionary") -> int:
    d_sae = dictionary.cfg.d_sae
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise GlassworkError(f"feature {feature} is out of range: {where} has d_sae = {d_sae} features "
                             f"(expected 0..{d_sae - 1})")
    return feature


def check_positions(positions: Positions) -> Positions:
    if isinstance(positions, str):
        if positions not in POSITION_NAMES:
            raise GlassworkError(f"positions '{positions}': expected one of {', '.join(POSITION_NAMES)}, "
                                 f"a list of token positions, or a slice")
        return positions
    if isinstance(positions, slice):
        return positions
    out = [int(p) for p in positions]
    if any(p < 0 for p in out):
        raise GlassworkError(f"positions {out}: token positions are absolute and count from 0 (no negatives)")
    return out


# ---------------------------------------------------------------------------------------------------- edits

def add_direction(model, hook: str, direction: torch.Tensor, coeff: float, positions: Positions = "all",
                  unit: bool = False) -> Intervention:
    """act -> act + coeff * direction (direction normalized to length 1 first when `unit`)."""
    hook = check_hook(model, hook)
    vec = check_direction(model, direction)
    if unit:
        vec = vec / vec.norm().clamp_min(1e-12)
    delta = coeff * vec

    def edit(act, _):
        return act + delta.to(act.device, act.dtype)
    return Intervention(hook, edit, check_positions(positions), label=f"add {coeff:g} x direction at {hook}")


def project_out(model, hook: str, direction: torch.Tensor, positions: Positions = "all") -> Intervention:
    """act -> act - (act . u) u with u = direction / |direction|: the direction's component becomes zero."""
    hook = check_hook(model, hook)
    u = check_direction(model, direction)
    u = u / u.norm().clamp_min(1e-12)

    def edit(act, _):
        u_ = u.to(act.device, act.dtype)
        return act - (act @ u_)[..., None] * u_
    return Intervention(hook, edit, check_positions(positions), label=f"project direction out at {hook}")


def clamp_feature(model, dictionary, features: int | Sequence[int], value: float | str | Sequence,
                  positions: Positions = "all", max_act: float | Sequence[float] | None = None,
                  dictionary_folder: str | Path | None = None) -> Intervention:
    """Set dictionary feature(s) to `value` at the dictionary's hook, keeping its error term.

    value: a number (absolute activation), or 'Nx' (N times the feature's max activation: from `max_act`, else the
    feature index in `dictionary_folder`, else estimated on a corpus sample; see `max_activation`).
    SAEs read and write cfg.hook_in; transcoders read cfg.hook_in and write cfg.hook_out."""
    cfg = dictionary.cfg
    if cfg.kind == "clt":
        raise GlassworkError("clamp_feature takes an SAE or a transcoder (a SparseCoder); for a cross-layer "
                             "transcoder, load the layer's member as a SparseCoder")
    if not cfg.hook_in or not cfg.hook_out:
        raise GlassworkError("dictionary config has no hook_in / hook_out: clamp_feature needs to know where the "
                             "dictionary reads and writes (set cfg.hook_in and cfg.hook_out)")
    if cfg.d_in != model.d_model or cfg.d_out != model.d_model:
        raise GlassworkError(f"dictionary has d_in = {cfg.d_in}, d_out = {cfg.d_out}; model '{model.name}' has "
                             f"d_model = {model.d_model}: this dictionary was not trained on this model")
    where = str(dictionary_folder or f"dictionary at {cfg.hook_in}")
    feats = [features] if isinstance(features, int) else list(features)
    feats = [check_feature(dictionary, f, where) for f in feats]
    values = list(value) if isinstance(value, (list, tuple)) else [value] * len(feats)
    if len(values) != len(feats):
        raise GlassworkError(f"clamp_feature: {len(feats)} features but {len(values)} values")
    maxes = list(max_act) if isinstance(max_act, (list, tuple)) else [max_act] * len(feats)
    targets = []
    for f, v, m in zip(feats, values, maxes):
        mult = parse_multiple(v)
        if mult is None:
            targets.append(float(v))
        else:
            m = m if m is not None else max_activation(model, dictionary, f, dictionary_folder)
            targets.append(mult * float(m))
    hook_in, hook_out = check_hook(model, cfg.hook_in), check_hook(model, cfg.hook_out)
    target = torch.tensor(targets)
    label = ", ".join(f"{f}={t:g}" for f, t in zip(feats, targets))
    return edit_features(hook_in, hook_out, lambda x: dictionary.encode(x.to(dictionary.W_dec.dtype)), feats,
                         dictionary.W_dec.detach()[torch.tensor(feats)], lambda codes: target.to(codes).expand_as(codes),
                         check_positions(positions), label=f"clamp feature(s) {label} at {hook_out}")


def edit_features(read: str, write: str, encode: Callable[[torch.Tensor], torch.Tensor], features: Sequence[int],
                  rows: torch.Tensor, new_codes: Callable[[torch.Tensor], torch.Tensor], positions: Positions = "all",
                  label: str = "") -> Intervention:
    """The one feature-edit engine (steering and the circuits' interventions both build on it): at hook `write`,
    add (a' - a) x rows, where a = encode(activation at `read`)[..., features] [batch, seq, n] are the features'
    current codes, a' = new_codes(a) and rows [n, d] their decoder rows there. Only the edited rows enter, so what
    the dictionary misses (its error) is kept and an edit to the current value changes nothing, exactly."""
    idx = torch.tensor(list(features))
    record: dict = {}

    @torch.no_grad()
    def edit(act, read_act):
        codes = encode(act if read_act is None else read_act)[..., idx.to(act.device)]  # [batch, seq, n]
        new = new_codes(codes)
        record["codes"], record["set"] = codes, new
        return act + ((new - codes) @ rows.to(codes)).to(act.dtype)

    return Intervention(write, edit, positions, read=None if read == write else read, label=label, record=record)


def zero_feature(model, dictionary, features: int | Sequence[int], positions: Positions = "all") -> Intervention:
    """Clamp feature(s) to 0 (remove what they write), keeping the error term."""
    return clamp_feature(model, dictionary, features, 0.0, positions)


def parse_multiple(value) -> float | None:
    """'10x' -> 10.0 (a multiple of the max activation); a plain number -> None."""
    if isinstance(value, str):
        s = value.strip().lower()
        try:
            number = float(s[:-1] if s.endswith("x") else s)
        except ValueError:
            raise GlassworkError(f"clamp value '{value}': expected a number (e.g. 8.5) or a multiple of the "
                                 f"feature's max activation (e.g. 10x)") from None
        return number if s.endswith("x") else None
    return None


# ---------------------------------------------------------------------------------------------------- max activation

def max_activation(model, dictionary, feature: int, dictionary_folder: str | Path | None = None,
                   contexts: torch.Tensor | None = None, n_contexts: int = 32, ctx_len: int = 64) -> float:
    """A feature's max activation: from the feature index (DICT/features.sqlite) when there is one, else the max
    over a small corpus sample (`contexts` [n, seq] token ids, else the default corpus), BOS positions left out."""
    check_feature(dictionary, feature, str(dictionary_folder or "dictionary"))
    if dictionary_folder is not None:
        from .features.index import index_path
        if index_path(dictionary_folder).exists():
            from .features.index import FeatureIndex
            index = FeatureIndex(dictionary_folder)
            try:
                return float(index.feature(feature, with_examples=False)["max_act"])
            finally:
                index.close()
    return float(estimate_max_activations(model, dictionary, [feature], contexts, n_contexts, ctx_len)[0])


@torch.no_grad()
def estimate_max_activations(model, dictionary, features: Sequence[int], contexts: torch.Tensor | None = None,
                             n_contexts: int = 32, ctx_len: int = 64, batch_size: int = 8) -> torch.Tensor:
    """Max activation [n] of each feature over `contexts` (default: a sample of the default corpus)."""
    from .hooks import capture
    if contexts is None:
        contexts = _sample_contexts(model, n_contexts, ctx_len)
    idx = torch.tensor(list(features))
    best = torch.zeros(len(idx))
    for start in range(0, len(contexts), batch_size):
        ids = contexts[start:start + batch_size].to(model.device)
        _, cache = capture(model, ids, [dictionary.cfg.hook_in])
        x = cache[dictionary.cfg.hook_in][:, 1:]  # BOS activations are outliers; the index leaves them out too
        codes = dictionary.encode(x.to(dictionary.W_dec.dtype))[..., idx]
        best = torch.maximum(best, codes.flatten(0, 1).amax(0).float().cpu())
    return best


def _sample_contexts(model, n_contexts: int, ctx_len: int) -> torch.Tensor:
    try:
        from .data import corpus
    except ImportError:
        raise GlassworkError("no feature index beside the dictionary and no default corpus to estimate a feature's "
                             "max activation: build the index (`glasswork features build`), pass max_act=, or give "
                             "an absolute clamp value instead of 'Nx'") from None
    return corpus.contexts(model, n_contexts=n_contexts, ctx_len=ctx_len)


# ---------------------------------------------------------------------------------------------------- applying

class _Tracker:
    """Absolute positions of the tokens in the current forward: offset = tokens already in the KV cache."""

    def __init__(self, prompt_len: int | None):
        self.offset, self.prompt_len, self.fixed = 0, prompt_len, prompt_len is not None

    def pre_forward(self, module, args, kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))  # transformers >= 5.2x calls it `cache`
        self.offset = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        if self.offset == 0 and not self.fixed:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            if ids is not None:
                self.prompt_len = ids.shape[1]  # the first pass over a new sequence is its prompt

    def mask(self, seq: int, positions: Positions, device) -> torch.Tensor | None:
        """Bool mask [seq] of the positions to edit; None means all of them."""
        if positions == "all":
            return None
        pos = torch.arange(self.offset, self.offset + seq, device=device)
        if positions == "prompt":
            return pos < self.prompt_len
        if positions == "generated":
            return pos >= self.prompt_len
        if isinstance(positions, slice):
            start, stop, step = positions.start or 0, positions.stop, positions.step or 1
            keep = (pos >= start) & ((pos - start) % step == 0)
            return keep if stop is None else keep & (pos < stop)
        return torch.isin(pos, torch.tensor(positions, device=device))


def position_mask(positions: Positions, seq: int, device=None) -> torch.Tensor | None:
    """Bool mask [seq] of `positions` in one plain forward over `seq` tokens (all of them prompt); None: all."""
    return _Tracker(seq).mask(seq, check_positions(positions), device)


@contextmanager
def steer(model, interventions: Intervention | Sequence[Intervention], prompt_len: int | None = None) -> Iterator[None]:
    """Apply interventions to every forward pass and generate() inside the block.

    prompt_len: where 'prompt' ends and 'generated' starts (default: the length of the first pass over a sequence,
    which is the prompt in generate(); in a plain forward every token counts as prompt)."""
    items = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    tracker = _Tracker(prompt_len)
    edits = []
    for iv in items:
        stash: dict[str, torch.Tensor] = {}
        if iv.read is not None:
            edits.append((iv.read, _stasher(stash)))
        edits.append((iv.hook, _masked(iv, stash, tracker)))
    handle = model.hf.register_forward_pre_hook(tracker.pre_forward, with_kwargs=True)
    try:
        with intervene(model, edits):
            yield
    finally:
        handle.remove()


def _stasher(stash: dict):
    def fn(act):
        stash["x"] = act
    return fn


def _masked(iv: Intervention, stash: dict, tracker: _Tracker):
    def fn(act):
        mask = tracker.mask(act.shape[1], iv.positions, act.device)
        if mask is not None and not bool(mask.any()):
            return None
        new = iv.edit(act, stash.pop("x", None))
        return new if mask is None else torch.where(mask[None, :, None], new, act)
    return fn


# ---------------------------------------------------------------------------------------------------- generation

@torch.no_grad()
def generate(model, prompt: str | torch.Tensor, interventions: Sequence[Intervention] = (), max_new_tokens: int = 40,
             seed: int = 0, temperature: float = 0.7, top_p: float = 0.95, n: int = 1) -> list[str]:
    """`n` completions of `prompt` (text, BOS added; or ids [1, seq]) with the interventions on, sampled with a
    fixed seed (temperature 0: greedy). Returns the continuations only."""
    ids = model.tokenize(prompt) if isinstance(prompt, str) else prompt.to(model.device)
    ids = ids.expand(n, -1)
    torch.manual_seed(seed)
    kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens,
                  pad_token_id=model.tokenizer.pad_token_id if model.tokenizer is not None else 0)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    with steer(model, list(interventions)):
        out = model.hf.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    new = out[:, ids.shape[1]:]
    if model.tokenizer is None:
        return [" ".join(map(str, row.tolist())) for row in new]
    return [model.tokenizer.decode(row, skip_special_tokens=True) for row in new]


def compare(model, prompt: str, interventions: Sequence[Intervention], max_new_tokens: int = 40, seed: int = 0,
            temperature: float = 0.7, n: int = 1) -> dict:
    """Baseline and steered completions of `prompt` with the same seed: {"baseline": [...], "steered": [...]}."""
    base = generate(model, prompt, (), max_new_tokens, seed, temperature, n=n)
    steered = generate(model, prompt, interventions, max_new_tokens, seed, temperature, n=n)
    return {"prompt": prompt, "baseline": base, "steered": steered, "seed": seed,
            "interventions": [iv.label for iv in interventions]}


# ---------------------------------------------------------------------------------------------------- loading

def parse_feature(spec: str) -> tuple[int, int]:
    """'12/345' -> (layer 12, feature 345)."""
    try:
        layer, index = spec.split("/")
        return int(layer), int(index)
    except ValueError:
        raise GlassworkError(f"--feature '{spec}': expected LAYER/INDEX, e.g. 12/345") from None


def dictionary_for_layer(folder: str | Path, layer: int):
    """The SparseCoder for `layer` from a dictionary folder, or from a set folder (the member whose layer it is)."""
    from .dictionaries import load
    from .dictionaries.saving import layer_folder
    member = layer_folder(folder, layer)
    return load(member), member
