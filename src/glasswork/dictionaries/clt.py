"""Cross-layer transcoder (CLT): an encoder per layer reads that layer's MLP input; each feature of layer i writes to
the MLP outputs of layers i .. i + n_i - 1 (all later layers, or a window of them to keep the cost down).

Weights: W_enc [L, d_in, F], b_enc [L, F], W_dec[i] [F, n_i, d_out] (n_i = min(L - i, window)), b_dec [L, d_out],
W_skip [L, d_in, d_out] (with skip: layer i's MLP output gets x_i @ W_skip[i], as a skip transcoder's),
threshold [L, F] (jumprelu; batchtopk at inference). Inputs and outputs are [..., L, d]."""
from __future__ import annotations

import torch
from torch import nn

from ..io import GlassworkError
from .activations import jumprelu, topk
from .coder import DictionaryConfig


class CrossLayerTranscoder(nn.Module):
    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        if cfg.kind != "clt":
            raise GlassworkError(f"CrossLayerTranscoder needs kind 'clt' (got '{cfg.kind}')")
        self.cfg = cfg
        L, d_in, F, d_out = cfg.n_layers, cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.empty(L, d_in, F))
        self.b_enc = nn.Parameter(torch.zeros(L, F))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.empty(F, self.n_targets(i), d_out)) for i in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, d_out))
        self.W_skip = nn.Parameter(torch.zeros(L, d_in, d_out)) if cfg.skip else None
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.full((L, F), 1e-3))
        elif cfg.activation == "batchtopk":
            self.register_buffer("threshold", torch.zeros(L, F))
        else:
            self.threshold = None
        self.reset_parameters()

    def n_targets(self, layer: int) -> int:
        """How many layers (from `layer` on) a feature of `layer` writes to."""
        left = self.cfg.n_layers - layer
        return min(left, self.cfg.window) if self.cfg.window else left

    def reset_parameters(self, seed: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        L, F = self.cfg.n_layers, self.cfg.d_sae
        with torch.no_grad():
            w = torch.randn(L, self.cfg.d_in, F, generator=gen)
            self.W_enc.copy_(w / w.norm(dim=1, keepdim=True))
            for i, w_dec in enumerate(self.W_dec):
                w = torch.randn(w_dec.shape, generator=gen)
                w_dec.copy_(w / (w.norm(dim=-1, keepdim=True) * w.shape[1] ** 0.5))

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., L, d_in] -> [..., L, F]."""
        if x.shape[-2:] != (self.cfg.n_layers, self.cfg.d_in):
            raise GlassworkError(f"CLT input has shape [..., {x.shape[-2]}, {x.shape[-1]}]; expected "
                                 f"[..., n_layers={self.cfg.n_layers}, d_in={self.cfg.d_in}]")
        return torch.einsum("...ld,ldf->...lf", x, self.W_enc) + self.b_enc

    def activate(self, pre: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """pre [..., L, F] -> codes; with `layer`, pre [..., F] holds that layer's features only."""
        act = self.cfg.activation
        threshold = self.threshold if layer is None or self.threshold is None else self.threshold[layer]
        if act == "relu":
            return pre.relu()
        if act == "topk":  # k per layer and token
            values, indices = topk(pre, self.cfg.k)
            return torch.zeros_like(pre).scatter(-1, indices, values)
        if act == "jumprelu":
            return jumprelu(pre, threshold)
        return pre * (pre > threshold)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_acts(x))

    def encode_layer(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """One layer's features from its own input: x [..., d_in] -> [..., F] (= encode(.)[..., layer, :])."""
        return self.activate(x @ self.W_enc[layer] + self.b_enc[layer], layer)

    def writes(self, layer: int) -> torch.Tensor:
        """What each feature of `layer` adds to the residual stream over all layers it writes to: [F, d_out]."""
        return self.W_dec[layer].sum(dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., L, F] -> MLP-output predictions [..., L, d_out]."""
        out = self.b_dec.expand(*codes.shape[:-2], -1, -1).clone()
        for i, w_dec in enumerate(self.W_dec):
            n = w_dec.shape[1]
            out[..., i:i + n, :] += torch.einsum("...f,fnd->...nd", codes[..., i, :], w_dec)
        return out

    def skip_term(self, x: torch.Tensor) -> torch.Tensor | float:
        """x [..., L, d_in] -> each layer's linear skip [..., L, d_out] (0.0 without a skip)."""
        return torch.einsum("...ld,lde->...le", x, self.W_skip) if self.W_skip is not None else 0.0

    def skip_weight(self, layer: int) -> torch.Tensor | None:
        """Layer `layer`'s skip [d_in, d_out], or None."""
        return self.W_skip[layer] if self.W_skip is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """MLP-output predictions [..., L, d_out]: decoded features, b_dec and the skip."""
        return self.decode(self.encode(x)) + self.skip_term(x)
