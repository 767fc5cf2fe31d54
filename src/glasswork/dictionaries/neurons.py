"""An MLP's own hidden units as a dictionary, to compare neurons with learned features under the same instruments
(feature index, labels, detection scores). encode(x) is the MLP's hidden activation from its input x (the
normalized residual, what a transcoder reads): act(x W_gate^T) * (x W_up^T) for a gated MLP (Llama family, Gemma),
act(x W_in^T + b_in) for a plain one (GPT-2, GPT-NeoX); decode(c) = c W_out^T (+ b_out), so decode(encode(x)) is the
MLP's output exactly. A neuron "fires" where its hidden value is positive: its negative side is not a feature here.
"""
from __future__ import annotations

import torch
from torch import nn

from ..io import GlassworkError
from .coder import DictionaryConfig


class Neurons(nn.Module):
    """The hidden units of `model`'s MLP at `layer`, with the transcoder hook points of that layer."""

    def __init__(self, model, layer: int):
        super().__init__()
        from ..hooks import arch_of, mlp_hooks
        if not 0 <= layer < model.n_layers:
            raise GlassworkError(f"layer {layer} outside the model's 0..{model.n_layers - 1}")
        arch = arch_of(model.hf)
        if arch.mlp_out != arch.mlp:  # Gemma 2: a norm after the MLP, so its hidden units do not add up to hook_mlp_out
            raise GlassworkError(f"model type '{model.hf.config.model_type}' normalizes the MLP's output before the "
                                 f"residual: its neurons are not a linear dictionary of hook_mlp_out")
        mlp = model.hf.get_submodule(arch.layers)[layer].get_submodule(arch.mlp)
        self.mlp = mlp
        if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            self.kind, out = "gated", mlp.down_proj
        elif hasattr(mlp, "c_fc") and hasattr(mlp, "c_proj"):  # GPT-2's Conv1D: weight [in, out]
            self.kind, out = "gpt2", mlp.c_proj
        elif hasattr(mlp, "dense_h_to_4h") and hasattr(mlp, "dense_4h_to_h"):
            self.kind, out = "neox", mlp.dense_4h_to_h
        else:
            raise GlassworkError(f"no known MLP layout in model type '{model.hf.config.model_type}' "
                                 f"(gate/up/down, c_fc/c_proj or dense_h_to_4h/dense_4h_to_h)")
        w = out.weight.detach().float()
        self.W_dec = (w if self.kind == "gpt2" else w.T).contiguous()  # [d_mlp, d_model]: what each neuron writes
        self.b_dec = out.bias.detach().float() if getattr(out, "bias", None) is not None else None
        hook_in, hook_out = mlp_hooks(layer)
        self.cfg = DictionaryConfig(kind="transcoder", d_in=model.d_model, d_sae=self.W_dec.shape[0],
                                    d_out=model.d_model, activation="relu", layer=layer, model=model.name,
                                    hook_in=hook_in, hook_out=hook_out)

    @property
    def d_sae(self) -> int:
        return self.W_dec.shape[0]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_model] -> hidden activations [..., d_mlp]."""
        m = self.mlp
        x = x.to(self.W_dec.dtype)
        if self.kind == "gated":
            return m.act_fn(m.gate_proj(x)) * m.up_proj(x)
        if self.kind == "gpt2":
            return m.act(m.c_fc(x))
        return m.act(m.dense_h_to_4h(x))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        out = codes @ self.W_dec
        return out if self.b_dec is None else out + self.b_dec
