"""Attribution rows by a hand-written backward sweep, for pre-norm decoders (Llama, Qwen 2/3, Mistral, SmolLM3).

With attention patterns and norm scales frozen and each MLP replaced by constants plus its transcoder's linear skip,
every layer of the replacement model is linear in the residual stream:
  resid_mid_j  = resid_pre_j + O_j(P_j V_j(gain1_j * resid_pre_j))     (P_j: the clean pattern, per head)
  resid_post_j = resid_mid_j + (gain2_j * resid_mid_j) @ W_skip_j + constants
so a target's gradient is carried down by a few matrix products per layer, for all targets of one position at once,
without an autograd graph. Rows are sorted by layer, highest first: a target joins the sweep at its own layer and
costs nothing above it. The BOS position (its features and errors are not nodes) is a sink: its gradient matters only
for the BOS token's edges, which come from that position's own linear response to its embedding (phi_j, one
forward of one position) dotted with the gradient reaching its values, so the sweep never carries position 0.
The generic engine in attribution.py (autograd through the HF modules) covers every other architecture; both give
the same rows (tests/test_circuits.py).
"""
from __future__ import annotations

import torch

from .replacement import Clean, Features, ReplacementModel, _norm_apply, position_runs

MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "smollm3")


def supports(r: ReplacementModel) -> bool:
    """Whether the sweep knows this model's layer structure (pre-norm RMSNorm, separate v/o projections)."""
    if r.model.hf.config.model_type not in MODEL_TYPES:
        return False
    kinds = {k for _, k in r.norms}
    block = r.layers[0]
    return kinds == {"rms"} and all(hasattr(block, n) for n in ("input_layernorm", "post_attention_layernorm")) and \
        all(hasattr(r.attns[0], n) for n in ("v_proj", "o_proj"))


@torch.no_grad()
def _gain(c: Clean, norm, kind: str = "rms") -> torch.Tensor:
    """The frozen norm as a per-position gain [seq, d] (1/rms x weight)."""
    scale = c.scales[norm][0]  # [seq, 1]
    ones = torch.ones(norm.weight.shape[-1], dtype=torch.float32, device=scale.device)
    return _norm_apply(norm, kind, ones, scale.float()).float()


class SweepEngine:
    """Same interface as attribution._Engine: rows(layers, positions, vectors, bar, out)."""

    @torch.no_grad()
    def __init__(self, r: ReplacementModel, c: Clean, feats: Features, errors: torch.Tensor, ids: torch.Tensor,
                 batch_size: int, sink_bos: bool):
        model = r.model
        cfg = model.hf.config
        self.L, self.seq, self.d = model.n_layers, ids.numel(), model.d_model
        self.H = cfg.num_attention_heads
        self.KV = getattr(cfg, "num_key_value_heads", None) or self.H
        self.hd = getattr(cfg, "head_dim", None) or self.d // self.H
        self.batch_size, self.sink = max(1, int(batch_size)), bool(sink_bos)
        self.n_feat, self.errors, self.embed = len(feats), errors.float(), c.embed.float()
        self.layers = []
        for j in range(self.L):
            block, attn = r.layers[j], r.attns[j]
            W_skip = r.skip_weight(j)
            self.layers.append({
                "gain1": _gain(c, block.input_layernorm), "gain2": _gain(c, block.post_attention_layernorm),
                "W_O": attn.o_proj.weight.detach().float(),  # [d, H * hd]: out = z @ W_O^T
                "W_V": attn.v_proj.weight.detach().float(),  # [KV * hd, d]: v = x @ W_V^T
                "pattern": c.patterns[attn][0].float(),  # [H, seq, seq] (query, key)
                "W_skip_T": W_skip.detach().float().T.contiguous() if W_skip is not None else None})
        self.gain_final = _gain(c, model.hf.get_submodule(r.arch.final_norm))
        self.writers = r.writers_by_position(feats, self.seq)  # fp32 vectors, as decoder_vectors gives them
        self.bos_values = self._bos_values() if self.sink else None

    def _bos_values(self) -> list[torch.Tensor]:
        """u_j [KV, hd]: the values at position 0 of layer j, as the linear response to the BOS embedding (phi_j)."""
        phi, out = self.embed[0].clone(), []
        rep = self.H // self.KV
        for lay in self.layers:
            v = lay["W_V"] @ (lay["gain1"][0] * phi)  # [KV * hd]
            out.append(v.view(self.KV, self.hd))
            z = lay["pattern"][:, 0, 0, None] * v.view(self.KV, 1, self.hd).expand(-1, rep, -1).reshape(self.H, -1)
            phi = phi + lay["W_O"] @ z.reshape(-1)
            if lay["W_skip_T"] is not None:
                phi = phi + lay["W_skip_T"] @ (lay["gain2"][0] * phi)
        return out

    @torch.no_grad()
    def rows(self, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor, bar,
             out: torch.Tensor) -> torch.Tensor:
        """Fill `out` [n, n_features + L * seq + seq] with the rows of targets at (layer, pos) with read-out vectors
        [n, d] (layer == n_layers: a logit read at the final norm output)."""
        # by position, then highest layer first: within a chunk, rows that are live at layer j form a prefix
        order = torch.argsort(positions * (self.L + 1) + (self.L - layers), stable=True)
        for p, group in position_runs(positions, order):
            for s in range(0, len(group), self.batch_size):
                idx = group[s:s + self.batch_size]
                out[idx] = self._sweep(layers[idx], p, vectors[idx].float()).to(out.device)
                bar.advance(len(idx))
        return out

    def _sweep(self, layers: torch.Tensor, p: int, vectors: torch.Tensor) -> torch.Tensor:
        """Rows [n, n_nodes - n_logits] for targets at position p, layers sorted descending."""
        L, d, seq = self.L, self.d, self.seq
        o = 1 if self.sink and p > 0 else 0  # first position carried by the sweep
        P, n = p + 1 - o, layers.numel()
        dev = vectors.device
        row = torch.zeros(n, self.n_feat + L * seq + seq, device=dev)
        G = torch.zeros(n, P, d, device=dev)  # gradient at the residual stream, positions o..p
        bos = torch.zeros(n, device=dev)
        lay_list = layers.tolist()
        n_at_least = [sum(1 for x in lay_list if x >= j) for j in range(L + 1)]  # rows live from layer j's attention
        top = n_at_least[L]  # logit targets: read at the final norm output
        if top:
            G[:top, P - 1] = vectors[:top] * self.gain_final[p]
        for j in range(min(max(lay_list), L - 1), -1, -1):
            lay = self.layers[j]
            m = n_at_least[j + 1]  # rows with a gradient at resid_post_j
            if m:
                Gm = G[:m]
                err = self.n_feat + j * seq
                row[:m, err + o:err + p + 1] = (Gm * self.errors[j, o:p + 1]).sum(-1)
                for q, (rows, vecs) in enumerate(self.writers.get(j, [])[o:p + 1]):
                    if len(rows):
                        row[:m, rows.to(dev)] += Gm[:, q] @ vecs.T  # a CLT feature writes to many layers
                if lay["W_skip_T"] is not None:  # resid_mid gets gain2 * (g @ W_skip^T)
                    Gm += lay["gain2"][o:p + 1] * (Gm.reshape(-1, d) @ lay["W_skip_T"]).view(m, P, d)
            m2 = n_at_least[j]
            if m2 > m:  # targets reading this layer's MLP input join here
                G[m:m2, P - 1] = vectors[m:m2] * lay["gain2"][p]
            if m2:
                self._attention_back(G[:m2], j, o, p, bos[:m2])
        tok = self.n_feat + L * seq
        row[:, tok + o:tok + p + 1] = (G * self.embed[o:p + 1]).sum(-1)
        if o:
            row[:, tok] = bos
        return row

    def _attention_back(self, G: torch.Tensor, j: int, o: int, p: int, bos: torch.Tensor) -> None:
        """In place: G [m, P, d] at resid_mid_j -> resid_pre_j through the value/output path with the frozen
        pattern; the gradient reaching position 0's values is dotted into `bos` [m] when the sweep drops it."""
        lay, (m, P, d) = self.layers[j], G.shape
        H, KV, hd = self.H, self.KV, self.hd
        gz = (G.reshape(-1, d) @ lay["W_O"]).view(m, P, H, hd).permute(2, 1, 0, 3).reshape(H, P, m * hd)
        pat = lay["pattern"][:, o:p + 1, :p + 1]  # [H, queries o..p, keys 0..p]
        gv = (pat.transpose(1, 2) @ gz).view(KV, H // KV, p + 1, m, hd).sum(1)  # [KV, keys, m, hd]
        if o:
            bos += torch.einsum("kmh,kh->m", gv[:, 0], self.bos_values[j])
            gv = gv[:, 1:]
        gx = gv.permute(2, 1, 0, 3).reshape(m * P, KV * hd) @ lay["W_V"]
        G += lay["gain1"][o:p + 1] * gx.view(m, P, d)
