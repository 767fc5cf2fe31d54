"""Sparse coders with one encode/decode API: an SAE (reconstructs its input hook point) and a transcoder (reads the
MLP's input, predicts the MLP's output, with an optional linear skip). The cross-layer transcoder is in clt.py.

Weights (stored dictionaries work on raw activations: any training normalization is folded in when saving):
  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out],
  W_skip [d_in, d_out] (transcoder with skip), threshold [d_sae] (jumprelu; batchtopk at inference).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..io import GlassworkError
from .activations import ACTIVATIONS, jumprelu, topk

KINDS = ("sae", "transcoder", "clt")
FIELD_TYPES = {"kind": str, "d_in": int, "d_sae": int, "d_out": int, "activation": str, "k": int, "skip": bool,
               "b_dec_in": bool, "n_layers": int, "window": int, "model": str, "hook_in": str, "hook_out": str,
               "layer": int, "tokens_seen": int, "metrics": dict, "training": dict, "glasswork_version": str}


@dataclass
class DictionaryConfig:
    kind: str = "sae"  # sae | transcoder | clt
    d_in: int = 0
    d_sae: int = 0
    d_out: int = 0  # 0: same as d_in
    activation: str = "topk"  # relu | topk | batchtopk | jumprelu
    k: int = 32  # topk / batchtopk: active latents per token
    skip: bool = False  # transcoder, clt: linear skip connection W_skip (MLP input -> output, per layer)
    b_dec_in: bool = True  # subtract b_dec from the input before encoding (SAEs)
    n_layers: int = 1  # clt: layers it reads (one encoder each)
    window: int = 0  # clt: later layers each feature writes to, itself included (0: all)
    model: str = ""
    hook_in: str | list[str] = ""  # clt: one per layer
    hook_out: str | list[str] = ""
    layer: int | None = None
    tokens_seen: int = 0
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # the settings it was trained with, for the record
    glasswork_version: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise GlassworkError(f"dictionary config: unknown kind '{self.kind}' (expected one of {', '.join(KINDS)})")
        if self.activation not in ACTIVATIONS:
            raise GlassworkError(f"dictionary config: unknown activation '{self.activation}' "
                                 f"(expected one of {', '.join(ACTIVATIONS)})")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise GlassworkError(f"dictionary config: d_in and d_sae must be positive (got {self.d_in}, {self.d_sae})")
        if self.d_out == 0:
            self.d_out = self.d_in
        if self.activation in ("topk", "batchtopk") and not 0 < self.k <= self.d_sae:
            raise GlassworkError(f"dictionary config: k must be in 1..d_sae={self.d_sae} (got {self.k})")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "DictionaryConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GlassworkError(f"{source}: unknown field(s) {', '.join(unknown)} (expected some of {', '.join(sorted(known))})")
        for key, value in d.items():
            want = FIELD_TYPES[key]
            ok = (value is None and key == "layer") or (key in ("hook_in", "hook_out") and isinstance(value, list) and
                                                        all(isinstance(v, str) for v in value)) or \
                (isinstance(value, want) and not (want is int and isinstance(value, bool)))
            if not ok:
                raise GlassworkError(f"{source}: field '{key}' is {json.dumps(value)[:60]} ({type(value).__name__}); "
                                     f"expected {'an integer' if want is int else want.__name__}"
                                     f"{' or null' if key == 'layer' else ''}"
                                     f"{' or a list of strings' if key in ('hook_in', 'hook_out') else ''}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class SparseCoder(nn.Module):
    """SAE or transcoder. `encode` gives dense codes [..., d_sae]; `encode_sparse` gives TopK codes as
    (values, indices) [..., k]; `decode` / `decode_sparse` map codes to the output space; `forward(x)` reconstructs."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        if cfg.kind == "clt":
            raise GlassworkError("use CrossLayerTranscoder for kind 'clt'")
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        # [d_in, d_sae] stored column-major: the sparse backward yields grad W_enc as (G^T @ x)^T, which then
        # matches the parameter's layout and is accumulated without a transposing copy (2.6 ms a step at 2304 x 576)
        self.W_enc = nn.Parameter(torch.empty(d_sae, d_in).T)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out)) if cfg.skip else None
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.full((d_sae,), 1e-3))
        elif cfg.activation == "batchtopk":  # fixed at inference; estimated during training
            self.register_buffer("threshold", torch.zeros(d_sae))
        else:
            self.threshold = None
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        """Decoder rows random unit vectors, encoder = decoder transposed (W_enc = W_dec^T), biases zero."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            w = torch.randn(self.cfg.d_sae, self.cfg.d_out, generator=gen)
            self.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
            if self.cfg.d_in == self.cfg.d_out:
                self.W_enc.copy_(self.W_dec.T)
            else:
                w = torch.randn(self.cfg.d_in, self.cfg.d_sae, generator=gen)
                self.W_enc.copy_(w / w.norm(dim=0, keepdim=True))

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise GlassworkError(f"input has size {x.shape[-1]} in its last dimension; this dictionary expects "
                                 f"d_in = {self.cfg.d_in} (hook {self.cfg.hook_in or '?'})")

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [..., d_sae]."""
        self._check_input(x)
        if self.cfg.b_dec_in:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Dense codes [..., d_sae] from pre-activations, as at inference."""
        act = self.cfg.activation
        if act == "relu":
            return pre.relu()
        if act == "topk":
            values, indices = topk(pre, self.cfg.k)
            return torch.zeros_like(pre).scatter(-1, indices, values)
        if act == "jumprelu":
            return jumprelu(pre, self.threshold)
        return pre * (pre > self.threshold)  # batchtopk at inference: a fixed threshold

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_acts(x))

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK codes as (values, indices) [..., k]."""
        if self.cfg.activation != "topk":
            raise GlassworkError(f"encode_sparse needs a topk dictionary (this one is {self.cfg.activation})")
        return topk(self.pre_acts(x), self.cfg.k)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., d_sae] -> [..., d_out] (without the skip term, which reads the input)."""
        return codes @ self.W_dec + self.b_dec

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(values, indices) [..., k] -> [..., d_out]: a gather-and-sum of k decoder rows per token, never dense."""
        lead = values.shape[:-1]
        out = F.embedding_bag(indices.reshape(-1, indices.shape[-1]), self.W_dec,
                              per_sample_weights=values.reshape(-1, values.shape[-1]).to(self.W_dec.dtype), mode="sum")
        return out.view(*lead, -1) + self.b_dec

    def skip_term(self, x: torch.Tensor) -> torch.Tensor | float:
        return x @ self.W_skip if self.W_skip is not None else 0.0

    def skip_weight(self, layer: int | None = None) -> torch.Tensor | None:
        """The skip [d_in, d_out], or None (`layer` is for the CLT's signature)."""
        return self.W_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction (SAE) or prediction of the MLP output (transcoder): [..., d_out]."""
        if self.cfg.activation == "topk":
            out = self.decode_sparse(*self.encode_sparse(x))
        else:
            out = self.decode(self.encode(x))
        return out + self.skip_term(x)
