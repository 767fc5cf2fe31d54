"""Dictionaries in the forward pass: the edits (for hooks.intervene) that replace each dictionary's hook_out with its
reconstruction, so the model runs on the replacement. Evaluation (glasswork.evals) measures with it and the KL
fine-tune (glasswork.training.kl_finetune) trains through it: nothing here stops gradients.

SAE: its own hook point; transcoders: every MLP output at once, each transcoder reading the spliced model's own MLP
input; CLT: likewise, features of layer i adding into the outputs of i and later layers. The BOS position is left
unspliced: dictionaries are not trained on it (its activations are outliers)."""
from __future__ import annotations

import torch

from ..io import GlassworkError
from .clt import CrossLayerTranscoder


def clt_layer_codes(clt: CrossLayerTranscoder, x: torch.Tensor, i: int) -> torch.Tensor:
    """Codes of layer i's features from that layer's MLP input x [..., d_in]: [..., F]."""
    pre = x @ clt.W_enc[i] + clt.b_enc[i]
    act = clt.cfg.activation
    if act == "relu":
        return pre.relu()
    if act == "topk":
        v, idx = pre.topk(clt.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, v.relu())
    return pre * (pre > clt.threshold[i])


class Splice:
    """Builds the intervene() edits that put the dictionaries in the forward pass, and records what they saw."""

    def __init__(self, dicts: dict, zero: bool = False, observe: bool = False):
        # observe: compute and record each reconstruction but pass the real activation on (the clean forward)
        self.dicts, self.zero, self.observe = dicts, zero, observe
        self.records: dict[str, list] = {n: [] for n in dicts}  # (target, recon, codes) per batch
        self.record = False

    def edits(self) -> dict:
        edits, saved = {}, {}
        for name, d in self.dicts.items():
            cfg = d.cfg
            if cfg.kind == "clt":
                edits.update(self._clt_edits(name, d, saved))
                continue

            def keep(act, key=cfg.hook_in):
                saved[key] = act
                return act

            def put(act, d=d, name=name):
                x = saved[d.cfg.hook_in] if d.cfg.kind == "transcoder" else act
                if self.zero:
                    new = torch.zeros_like(act)
                else:
                    codes = d.encode(x.float())
                    new = (d.decode(codes) + d.skip_term(x.float())).to(act.dtype)
                    if self.record:
                        self.records[name].append((act[:, 1:].flatten(0, 1), new[:, 1:].flatten(0, 1),
                                                   codes[:, 1:].flatten(0, 1)))
                if self.observe:
                    return act
                new[:, :1] = act[:, :1]  # BOS stays clean
                return new

            if cfg.kind == "transcoder":
                edits[cfg.hook_in] = keep
            if cfg.hook_out in edits:
                raise GlassworkError(f"two dictionaries write to {cfg.hook_out}: splice them one at a time")
            edits[cfg.hook_out] = put
        return edits

    def _clt_edits(self, name: str, clt: CrossLayerTranscoder, saved: dict) -> dict:
        edits, L = {}, clt.cfg.n_layers
        state = {"out": [None] * L, "codes": [None] * L, "targets": [None] * L}

        for i in range(L):
            def read(act, i=i):
                if i == 0:
                    state["out"] = [None] * L
                codes = clt_layer_codes(clt, act.float(), i)
                state["codes"][i] = codes
                w = clt.W_dec[i]  # [F, n_i, d_out]
                contrib = torch.einsum("...f,fnd->...nd", codes, w)
                for j in range(w.shape[1]):
                    prev = state["out"][i + j]
                    state["out"][i + j] = contrib[..., j, :] if prev is None else prev + contrib[..., j, :]
                if clt.W_skip is not None:  # layer i's own linear skip, from its input
                    state["out"][i] = state["out"][i] + act.float() @ clt.W_skip[i]
                return act

            def write(act, i=i):
                if self.zero:
                    new = torch.zeros_like(act)
                else:
                    new = (state["out"][i] + clt.b_dec[i]).to(act.dtype)
                    state["targets"][i] = (act, new)
                    if self.record and i == L - 1:
                        t = torch.stack([a for a, _ in state["targets"]], -2)[:, 1:].flatten(0, 1)
                        r = torch.stack([b for _, b in state["targets"]], -2)[:, 1:].flatten(0, 1)
                        c = torch.stack(state["codes"], -2)[:, 1:].flatten(0, 1)
                        self.records[name].append((t, r, c))
                if self.observe:
                    return act
                new[:, :1] = act[:, :1]
                return new

            hin, hout = clt.cfg.hook_in[i], clt.cfg.hook_out[i]
            edits[hin], edits[hout] = read, write
        return edits
