"""Concept directions in the residual stream: where they come from, how to remove them, how linear concepts are.

Sources: difference of means between two prompt sets at one token (contrastive activation addition), a dictionary
feature's decoder row, a linear probe's weight. Removal: directional ablation (project the direction out of every
write to the residual stream, as hooks) and its permanent form, orthogonalizing the weights that write to the
residual stream, saved as a new model folder. Linearity: word-vector arithmetic (king - man + woman) and probes.

A direction file is PATH.safetensors (tensor "direction" [d_model]) + PATH.json (hook, kind, model, d_model, info).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .version import __version__
from .hooks import capture
from .models import check_new_model_folder, padded, save_model_folder
from .io import GlassworkError, load_tensors, read_json, require_keys, save_tensors, write_json
from .steering import Intervention, check_direction, check_feature, check_hook, project_out


@dataclass
class Direction:
    vector: torch.Tensor  # [d_model], float32
    hook: str  # where it was read (and where adding it makes sense)
    kind: str = "custom"  # mean_difference | feature | probe | custom
    model: str = ""
    info: dict = field(default_factory=dict)

    @property
    def unit(self) -> torch.Tensor:
        return self.vector / self.vector.norm().clamp_min(1e-12)

    def save(self, path: str | os.PathLike) -> Path:
        """Write PATH.safetensors then PATH.json (last, so a JSON beside it means the pair is complete)."""
        stem = file_stem(path)
        save_tensors(stem.with_suffix(".safetensors"), {"direction": self.vector.float()})
        write_json(stem.with_suffix(".json"), {"hook": self.hook, "kind": self.kind, "model": self.model,
                                               "d_model": self.vector.shape[0], "norm": self.vector.norm().item(),
                                               "info": self.info, "glasswork_version": __version__})
        return stem.with_suffix(".safetensors")


def file_stem(path) -> Path:
    """PATH of a direction file named PATH, PATH.safetensors or PATH.json."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def load_direction(path: str | os.PathLike) -> Direction:
    """Read a direction file (PATH, PATH.safetensors or PATH.json)."""
    stem = file_stem(path)
    meta_path = stem.with_suffix(".json")
    meta = read_json(meta_path, "direction metadata")
    require_keys(meta, ["hook", "kind", "d_model"], meta_path, "direction metadata")
    tensors = load_tensors(stem.with_suffix(".safetensors"), "direction file")
    if "direction" not in tensors:
        raise GlassworkError(f"{stem.with_suffix('.safetensors')}: no tensor 'direction' (found {sorted(tensors)})")
    vec = tensors["direction"].float()
    if vec.shape != (meta["d_model"],):
        raise GlassworkError(f"{stem.with_suffix('.safetensors')}: tensor 'direction' has shape {list(vec.shape)}; "
                             f"{meta_path} says d_model = {meta['d_model']}")
    return Direction(vec, meta["hook"], meta["kind"], meta.get("model", ""), meta.get("info", {}))


# ---------------------------------------------------------------------------------------------------- sources

@torch.no_grad()
def activations_at(model, texts: Sequence[str], hook: str, token: int = -1, batch_size: int = 16) -> torch.Tensor:
    """The activation [n, d] at `hook` of each text at one token (-1: its last token; k >= 0: position k, BOS = 0)."""
    hook = check_hook(model, hook)
    if not texts:
        raise GlassworkError("activations_at: no texts given")
    rows = []
    for start in range(0, len(texts), batch_size):
        seqs = [model.tokenize(t)[0].cpu() for t in texts[start:start + batch_size]]
        lengths = torch.tensor([len(s) for s in seqs])
        ids, mask = padded(seqs, model.bos_token_id)
        if token >= 0 and bool((lengths <= token).any()):
            short = texts[start + int((lengths <= token).nonzero()[0])]
            raise GlassworkError(f"token {token} is past the end of prompt {short!r} ({int(lengths.min())} tokens)")
        pos = lengths - 1 if token < 0 else torch.full_like(lengths, token)
        _, cache = capture(model, ids.to(model.device), [hook], attention_mask=mask.to(model.device))
        rows.append(cache[hook][torch.arange(len(seqs)), pos.to(model.device)].float().cpu())
    return torch.cat(rows)


def mean_difference(model, positive: Sequence[str], negative: Sequence[str], hook: str, token: int = -1) -> Direction:
    """mean(act | positive) - mean(act | negative) at `hook` and `token` (contrastive activation addition)."""
    pos, neg = activations_at(model, positive, hook, token), activations_at(model, negative, hook, token)
    vec = pos.mean(0) - neg.mean(0)
    return Direction(vec, check_hook(model, hook), "mean_difference", model.name,
                     {"n_positive": len(positive), "n_negative": len(negative), "token": token})


def feature_direction(dictionary, feature: int) -> Direction:
    """A dictionary feature's decoder row W_dec[feature] [d_out], at the hook the dictionary writes."""
    check_feature(dictionary, feature)
    cfg = dictionary.cfg
    if cfg.kind == "clt":
        raise GlassworkError("feature_direction takes a SparseCoder (SAE or transcoder), not a cross-layer transcoder")
    return Direction(dictionary.W_dec.detach()[feature].float().clone(), cfg.hook_out, "feature", cfg.model,
                     {"feature": feature, "layer": cfg.layer})


@dataclass
class Probe:
    direction: Direction  # the weight vector in raw activation space
    bias: float
    train_accuracy: float
    test_accuracy: float
    n_train: int
    n_test: int

    def predict(self, acts: torch.Tensor) -> torch.Tensor:
        """P(positive) [n] for activations [n, d]."""
        return torch.sigmoid(acts.float() @ self.direction.vector + self.bias)


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 200) -> tuple[torch.Tensor, float]:
    """Logistic regression on x [n, d], y [n] in {0, 1}: (weight [d], bias) in raw units. Inputs are standardized
    for the fit (residual streams have a few huge dimensions) and the weights mapped back."""
    x, y = x.double(), y.double()
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sigma
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss
    opt.step(loss_fn)
    w_raw = (w / sigma).detach()
    return w_raw.float(), float(b.detach() - (mu * w_raw).sum())


def train_probe(model, positive: Sequence[str], negative: Sequence[str], hook: str, token: int = -1,
                test_fraction: float = 0.3, seed: int = 0, l2: float = 1e-3) -> Probe:
    """A linear probe for 'positive vs negative' at `hook`, with accuracy on a held-out split (shuffled, seeded)."""
    x = torch.cat([activations_at(model, positive, hook, token), activations_at(model, negative, hook, token)])
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(test_fraction * len(y))))
    if len(y) - n_test < 2:
        raise GlassworkError(f"train_probe: {len(y)} prompts leave too few to train on; give more prompts")
    test, train = order[:n_test], order[n_test:]
    w, b = fit_probe(x[train], y[train], l2)

    def acc(idx):
        return float(((x[idx] @ w + b > 0).float() == y[idx]).float().mean())
    direction = Direction(w, check_hook(model, hook), "probe", model.name, {"token": token, "bias": b})
    return Probe(direction, b, acc(train), acc(test), len(train), len(test))


# ---------------------------------------------------------------------------------------------------- removal

def directional_ablation(model, direction: torch.Tensor | Direction, layers: Sequence[int] | None = None,
                         positions="all") -> list[Intervention]:
    """Project `direction` out of the residual stream at `layers` (default: all), as hooks for `steer`.

    At each chosen layer it is projected out of resid_pre and of what attention and the MLP write, so its component
    is zero at that layer's resid_pre, resid_mid and resid_post. With all layers this equals `orthogonalize`."""
    vec = direction.vector if isinstance(direction, Direction) else direction
    vec = check_direction(model, vec)
    layers = range(model.n_layers) if layers is None else list(layers)
    out = []
    for layer in layers:
        if not isinstance(layer, int) or not 0 <= layer < model.n_layers:
            raise GlassworkError(f"directional_ablation: layer {layer} does not exist; model '{model.name}' has "
                                 f"{model.n_layers} layers (0..{model.n_layers - 1})")
        for point in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out"):
            out.append(project_out(model, f"blocks.{layer}.{point}", vec, positions))
    return out


# Modules that write to the residual stream (besides the embeddings), per model type: (attention out, MLP out).
_WRITERS = {"gpt2": ("attn.c_proj", "mlp.c_proj"), "gpt_neox": ("attention.dense", "mlp.dense_4h_to_h")}
_LLAMA_WRITERS = ("self_attn.o_proj", "mlp.down_proj")
_EXTRA_EMBEDS = {"gpt2": ["transformer.wpe"]}


@torch.no_grad()
def orthogonalize(model, direction: torch.Tensor | Direction, folder: str | os.PathLike) -> Path:
    """Save a copy of `model` whose weights cannot write `direction` to the residual stream (embeddings, attention
    and MLP output projections orthogonalized; the unembedding untied and kept), loadable with gw.load_model(folder).
    Gives the same logits as `directional_ablation` on every layer."""
    from .hooks import arch_of
    vec = direction.vector if isinstance(direction, Direction) else direction
    u = check_direction(model, vec)
    u = u / u.norm().clamp_min(1e-12)
    folder = check_new_model_folder(folder)
    hf = model.hf
    arch = arch_of(hf)
    if arch.attn_out != arch.attn or arch.mlp_out != arch.mlp:
        raise GlassworkError(f"orthogonalize: model type '{hf.config.model_type}' normalizes after attention and "
                             f"MLP, so its writes are not linear in the weights; use directional_ablation hooks")
    writers = _WRITERS.get(hf.config.model_type, _LLAMA_WRITERS)
    new = copy.deepcopy(hf)
    out_emb, in_emb = new.get_output_embeddings(), new.get_input_embeddings()
    if out_emb is not None and out_emb.weight is in_emb.weight:
        # Untie: the unembedding keeps the original rows; only what writes to the residual stream changes.
        out_emb.weight = nn.Parameter(in_emb.weight.detach().clone())
        new.config.tie_word_embeddings = False
    embeds = [arch.embed] + _EXTRA_EMBEDS.get(hf.config.model_type, [])
    for name in embeds:
        w = new.get_submodule(name).weight  # [rows, d_model]
        w -= (w @ u.to(w.dtype))[:, None] * u.to(w.dtype)
    for layer in new.get_submodule(arch.layers):
        for name in writers:
            _orthogonalize_writer(layer.get_submodule(name), u)
    return save_model_folder(new, model.tokenizer, folder, "orthogonalized.json", {
        "source_model": model.name, "direction_norm": vec.norm().item(),
        "info": direction.info if isinstance(direction, Direction) else {}, "glasswork_version": __version__})


def _orthogonalize_writer(module: nn.Module, u: torch.Tensor) -> None:
    """W -> (I - u u^T) W for a module whose output (size d_model) is added to the residual stream."""
    u = u.to(module.weight.dtype)
    w = module.weight
    if isinstance(module, nn.Linear):  # weight [d_model, d_in]
        w -= u[:, None] * (u @ w)[None, :]
    elif w.shape[1] == u.shape[0]:  # GPT-2 Conv1D: weight [d_in, d_model]
        w -= (w @ u)[:, None] * u[None, :]
    else:
        raise GlassworkError(f"orthogonalize: cannot read module {type(module).__name__} with weight "
                             f"{list(w.shape)} as a residual-stream writer")
    if getattr(module, "bias", None) is not None:
        module.bias -= (module.bias @ u) * u


# ---------------------------------------------------------------------------------------------------- word vectors

def _single_token(model, word: str) -> int:
    ids = model.tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise GlassworkError(f"word {word!r} is {len(ids)} tokens {model.to_str_tokens(ids)}; embedding-space "
                             f"arithmetic needs single-token words (try a leading space, e.g. ' king')")
    return ids[0]


def candidate_words(model, n: int = 5000) -> list[str]:
    """The first `n` vocabulary entries that are a space and 3+ lowercase letters (BPE order ~ frequency)."""
    words = []
    for i in range(model.vocab_size):
        s = model.tokenizer.decode([i])
        if len(s) >= 4 and s[0] == " " and s[1:].isalpha() and s[1:].islower() and s[1:].isascii():
            words.append(s)
            if len(words) == n:
                break
    return words


@torch.no_grad()
def word_vectors(model, words: Sequence[str], space: str = "embed", batch_size: int = 512) -> torch.Tensor:
    """Vectors [n, d] of single-token words: rows of W_E (space 'embed'), or the activation at a hook point of the
    word's token read after BOS (space = a hook name such as 'blocks.3.hook_resid_post')."""
    ids = torch.tensor([_single_token(model, w) for w in words])
    if space == "embed":
        return model.W_E.detach()[ids].float()
    hook = check_hook(model, space)
    rows = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        batch = torch.stack([torch.full_like(chunk, model.bos_token_id), chunk], dim=1).to(model.device)  # [n, 2]
        _, cache = capture(model, batch, [hook])
        rows.append(cache[hook][:, -1].float().cpu())
    return torch.cat(rows)


def analogy(model, a: str, b: str, c: str, target: str, space: str = "embed",
            candidates: Sequence[str] | None = None, top: int = 5, center: bool = True) -> dict:
    """Where `target` ranks (1 = nearest by cosine) for a - b + c among candidates (default: the whole vocabulary in
    embedding space, `candidate_words` elsewhere), the three inputs left out. Also the rank of target next to `a`
    alone, as a baseline the arithmetic should beat. `center` subtracts the candidates' mean vector first: residual
    streams share a large common component that otherwise makes every cosine ~0.97."""
    words = [a, b, c, target]
    if candidates is None and space == "embed":
        pool = model.W_E.detach().float()  # [vocab, d]
        ids = [_single_token(model, w) for w in words]
        strs = None
    else:
        strs = list(dict.fromkeys(list(candidates or candidate_words(model)) + words))
        pool = word_vectors(model, strs, space)
        ids = [strs.index(w) for w in words]
    if center:
        pool = pool - pool.mean(0)
    va, vb, vc = pool[ids[0]], pool[ids[1]], pool[ids[2]]
    pool_unit = pool / pool.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def rank_of(query):
        sims = pool_unit @ (query / query.norm())
        sims[ids[:3]] = -float("inf")  # the inputs themselves do not count
        order = sims.argsort(descending=True)
        rank = int((order == ids[3]).nonzero()[0]) + 1
        name = (lambda i: model.tokenizer.decode([i])) if strs is None else (lambda i: strs[i])
        return rank, [(name(int(i)), round(float(sims[i]), 4)) for i in order[:top]]
    rank, nearest = rank_of(va - vb + vc)
    base_rank, _ = rank_of(va)
    return {"a": a, "b": b, "c": c, "target": target, "space": space, "rank": rank, "rank_from_a_alone": base_rank,
            "n_candidates": pool.shape[0], "centered": center, "nearest": nearest}


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a text file, one per line (blank lines skipped)."""
    path = Path(path)
    if not path.exists():
        raise GlassworkError(f"{path}: prompt file not found")
    prompts = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise GlassworkError(f"{path}: no prompts (expected one prompt per line)")
    return prompts
