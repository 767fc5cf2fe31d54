"""QK attribution (after Anthropic's "Tracing attention", 2025): an attention score split into query-side x key-side
contributions of the replacement model's nodes.

With the prompt's norm scales and attention patterns frozen, a head's query q [hd] at position p and its key k [hd]
at position s are linear in the nodes (features' decoder writes, MLP errors, token embeddings) plus one constant,
`bias` (projection and norm biases, position embeddings, the transcoders' b_dec): q = sum_i q_i + q_bias and
k = sum_j k_j + k_bias, after rotary. The pre-softmax score is then exactly a sum over (query node, key node) pairs,
    score = scaling * q . k = sum_ij scaling * q_i . k_j
Each q_i is the gradient of one of q's hd components at the node's location dotted with the node's vector: hd
backward rows for the query and hd per key position, through the same frozen pass the attribution graph uses (any
architecture). Gemma 2's tanh soft-cap acts on the score afterwards: the split is of the score before it.

Heads are chosen by their effect on the target in the frozen model (gradient x head output z at the query position).
Node ids are the viewer's (Graph.node_id): features at the BOS position are named too, although a graph built without
`bos_nodes` does not show them as nodes.
"""
from __future__ import annotations

import torch

from ..io import GlassworkError
from .attribution import contract
from .replacement import Clean, Features, ReplacementModel

ROWS = 64  # backward rows per pass (one head's query or one key position is hd of them)


def node_ids(model, feats: Features, ids: torch.Tensor) -> list[str]:
    """Ids of the QK nodes in contraction order: features, errors (layer-major), tokens, then 'bias'."""
    L, seq = model.n_layers, ids.numel()
    out = [f"{l}_{f}_{p}" for l, f, p in zip(feats.layer.tolist(), feats.index.tolist(), feats.pos.tolist())]
    out += [f"err_{l}_{p}" for l in range(L) for p in range(seq)]
    out += [f"E_{t}_{p}" for p, t in enumerate(ids.tolist())]
    return out + ["bias"]


def qk_attribution(model, transcoders, prompt, heads: list[tuple[int, int]] | None = None, n_heads: int = 4,
                   query_pos: int = -1, keys: list[int] | None = None, n_keys: int = 3, top_pairs: int = 10,
                   target=None) -> dict:
    """Split attention scores of `prompt` into (query node, key node) contributions.

    heads: [(layer, head)] to split (default: the `n_heads` with the largest effect on `target` at `query_pos`, as
    `attribute`'s target: default the top next token). keys: key positions (default: the `n_keys` the head attends
    to most). Returns {"query_pos", "target", "heads": [{layer, head, kv_head, effect, keys: [{key_pos, pattern,
    score, scaling, softcap, pairs: [{query, key, score}], query_nodes: [{node, score}], key_nodes: [...]}]}]}:
    pairs are the `top_pairs` largest by |score|; query_nodes split the score by query node against the whole key,
    key_nodes by key node against the whole query. Exact: all pairs sum to the score (qk_split's `check`)."""
    from .attribution import logit_targets, prompt_ids
    r = transcoders if isinstance(transcoders, ReplacementModel) else ReplacementModel(model, transcoders)
    ids = prompt_ids(model, prompt)
    c = r.clean(ids.view(1, -1))
    return qk_from_clean(r, c, ids, logit_targets(model, c.logits[-1], target), heads, n_heads, query_pos, keys,
                         n_keys, top_pairs)


def add_qk(graph, model, transcoders, n_heads: int = 4, n_keys: int = 3, top_pairs: int = 10) -> dict:
    """Split the top heads' scores at the graph's last position and keep the report in graph.meta['qk'] (saved
    with the graph; the viewer shows it). The target is the graph's own prompt's top next token."""
    graph.meta["qk"] = qk_attribution(model, transcoders, graph.input_ids, n_heads=n_heads, n_keys=n_keys,
                                      top_pairs=top_pairs)
    return graph.meta["qk"]


def qk_from_clean(r: ReplacementModel, c: Clean, ids: torch.Tensor, targets: list, heads=None, n_heads: int = 4,
                  query_pos: int = -1, keys: list[int] | None = None, n_keys: int = 3, top_pairs: int = 10) -> dict:
    """qk_attribution on a clean pass already made (attribute reuses its own)."""
    model = r.model
    seq = ids.numel()
    p = query_pos % seq if -seq <= query_pos < seq else None
    if p is None:
        raise GlassworkError(f"query position {query_pos} is outside the prompt's {seq} tokens (0..{seq - 1})")
    split = QKSplit(r, c, ids)
    effects = split.head_effects(targets[0].vector, p)  # [L, heads]
    n_h = effects.shape[1]
    if heads is None:
        flat = effects.abs().flatten().topk(min(n_heads, effects.numel())).indices.tolist()
        heads = [(i // n_h, i % n_h) for i in flat]
    for layer, head in heads:
        if not (0 <= layer < model.n_layers and 0 <= head < n_h):
            raise GlassworkError(f"head ({layer}, {head}) does not exist: layers 0..{model.n_layers - 1}, heads "
                                 f"0..{n_h - 1}")
    out = []
    for layer, head in heads:
        pattern = c.patterns[r.attns[layer]][0, head, p, :p + 1].float()
        wanted = keys if keys is not None else pattern.topk(min(n_keys, p + 1)).indices.tolist()
        bad = [s for s in wanted if not 0 <= s <= p]
        if bad:
            raise GlassworkError(f"key position {bad[0]} is not attended from query position {p} (0..{p})")
        parts = split.split(layer, head, p, wanted)
        recs = []
        for s, (Q, K) in zip(wanted, parts):
            recs.append({"key_pos": s, "pattern": round(float(pattern[s]), 6),
                         **summarize(Q, K, split.scaling(layer), split.ids, top_pairs),
                         "softcap": split.softcap(layer)})
        out.append({"layer": layer, "head": head, "kv_head": split.kv_head(layer, head),
                    "effect": float(effects[layer, head]), "keys": recs})
    return {"query_pos": p, "target": targets[0].label, "heads": out}


def summarize(Q: torch.Tensor, K: torch.Tensor, scaling: float, ids: list[str], top: int,
              chunk: int = 2048) -> dict:
    """What a person reads of one score: Q, K [hd, N] the query's and key's node contributions (bias last). The
    [N, N] matrix of pair terms is searched in row blocks of `chunk` query nodes, never held whole."""
    Qd, Kd = Q.double(), K.double()
    n = Kd.shape[1]
    vals = torch.zeros(0, dtype=torch.float64)
    where = torch.zeros(0, dtype=torch.long)
    for s in range(0, n, chunk):
        block = (scaling * (Qd[:, s:s + chunk].T @ Kd)).flatten().cpu()  # [rows x N] pair terms
        best = block.abs().topk(min(top, block.numel())).indices
        vals, where = torch.cat([vals, block[best]]), torch.cat([where, best + s * n])
    keep = vals.abs().topk(min(top, vals.numel())).indices
    q_total, k_total = Qd.sum(1), Kd.sum(1)
    by_query = (scaling * (Qd.T @ k_total)).cpu()  # [N]: each query node against the whole key
    by_key = (scaling * (Kd.T @ q_total)).cpu()

    def side(v):
        return [{"node": ids[i], "score": float(v[i])} for i in v.abs().topk(min(top, v.numel())).indices.tolist()]
    return {"score": float(scaling * (q_total @ k_total)), "scaling": scaling,
            "pairs": [{"query": ids[int(where[i]) // n], "key": ids[int(where[i]) % n], "score": float(vals[i])}
                      for i in keep.tolist()],
            "query_nodes": side(by_query), "key_nodes": side(by_key)}


class QKSplit:
    """One frozen pass over a prompt, kept for its backward passes: every layer's queries and keys (after rotary),
    the heads' outputs z with probes on them, and probes at the embedding and each MLP output."""

    def __init__(self, r: ReplacementModel, c: Clean, ids: torch.Tensor):
        self.r, self.c, self.model = r, c, r.model
        model, L, seq = r.model, r.model.n_layers, ids.numel()
        feats, recon = r.features(c)  # every active feature, BOS included
        self.feats, self.n_feat = feats, len(feats)
        self.errors = torch.stack([c.mlp_out[layer] - recon[layer] for layer in range(L)])  # [L, seq, d]
        self.writers = r.writers_by_position(feats, seq)
        self.ids = node_ids(model, feats, ids)
        self.taps: dict = {}
        self.probes, self.final = r.probed(c, ids, heads=True, taps=self.taps)
        # the constant part: the same pass with every node removed (no embeddings, MLP outputs = b_dec only)
        self.bias_taps: dict = {}
        with torch.no_grad():
            r.frozen(c, _b_dec(r, seq), ids.view(1, -1), {"embed": -c.embed[None]}, self.bias_taps)

    def scaling(self, layer: int) -> float:
        s = self.c.qk[self.r.attns[layer]][2]
        hd = self.c.qk[self.r.attns[layer]][0].shape[-1]
        return float(s if s is not None else getattr(self.r.attns[layer], "scaling", hd ** -0.5))

    def softcap(self, layer: int) -> float | None:
        cap = self.c.qk[self.r.attns[layer]][3]
        return None if cap is None else float(cap)

    def kv_head(self, layer: int, head: int) -> int:
        q, k = self.c.qk[self.r.attns[layer]][:2]
        return head // (q.shape[1] // k.shape[1])

    def head_effects(self, vector: torch.Tensor, p: int) -> torch.Tensor:
        """[L, heads]: each head's output at position p times the gradient of the target read at the last position
        (vector [d] at the final norm output) there: its total effect on the target in the frozen model."""
        L = self.model.n_layers
        z_probes = [self.probes[("z", layer)] for layer in range(L)]
        with torch.enable_grad():
            grads = torch.autograd.grad(self.final[0, -1] @ vector.to(self.final), z_probes, retain_graph=True,
                                        allow_unused=True)
        rows = []
        for layer, g in enumerate(grads):
            z = self.taps[layer]["z"][0, p].detach()  # [heads, hd]
            rows.append(torch.zeros(z.shape[0], device=z.device) if g is None else (g[0, p] * z).sum(-1))
        return torch.stack(rows).float().cpu()

    def split(self, layer: int, head: int, p: int, keys: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(Q, K)] per key position: Q, K [hd, N] the node contributions to head `head`'s query at p and its key
        at that position (N = nodes + 1, the bias last)."""
        tap, bias = self.taps[layer], self.bias_taps[layer]
        g = self.kv_head(layer, head)
        outputs = [tap["query"][0, head, p]] + [tap["key"][0, g, s] for s in keys]  # each [hd]
        constants = [bias["query"][0, head, p]] + [bias["key"][0, g, s] for s in keys]
        flat = torch.cat(outputs)  # [m = hd * (1 + n_keys)]
        rows = self._rows(flat, layer, p + 1)  # [m, nodes]
        hd = outputs[0].numel()
        parts = [torch.cat([rows[i * hd:(i + 1) * hd], const.detach().float()[:, None].to(rows)], 1)
                 for i, const in enumerate(constants)]
        return [(parts[0], k) for k in parts[1:]]

    def _rows(self, flat: torch.Tensor, layer: int, prefix: int) -> torch.Tensor:
        """Node contributions [m, nodes] to each of the m components of `flat` (linear in the probes)."""
        inputs = [self.probes["embed"]] + [self.probes[j] for j in range(layer)]
        m = flat.numel()
        out = []
        for s in range(0, m, ROWS):
            eye = torch.zeros(min(ROWS, m - s), m, device=flat.device)
            eye[torch.arange(eye.shape[0]), torch.arange(s, s + eye.shape[0])] = 1.0
            with torch.enable_grad():
                got = torch.autograd.grad(flat, inputs, eye, retain_graph=True, allow_unused=True,
                                          is_grads_batched=True)
            g_embed = None if got[0] is None else got[0][:, 0, :prefix]
            g_mlp = {j: (None if x is None else x[:, 0, :prefix]) for j, x in enumerate(got[1:])}
            out.append(contract(g_embed, g_mlp, self.c.embed, self.errors, self.writers, self.n_feat,
                                eye.shape[0], prefix))
        return torch.cat(out).float()


def _b_dec(r: ReplacementModel, seq: int) -> list[torch.Tensor]:
    """Per layer [seq, d]: what the transcoders write with every feature off (b_dec; 0 where a layer has none)."""
    d, L, dev = r.model.d_model, r.model.n_layers, r.model.device
    with torch.no_grad():
        if r.clt is not None:
            zero = torch.zeros(1, L, r.clt.d_sae, device=dev, dtype=r.clt.W_enc.dtype)
            per_layer = r.clt.decode(zero)[0].float()  # [L, d]
            return [per_layer[layer].expand(seq, d) for layer in range(L)]
        out = []
        for layer in range(L):
            tc = r.transcoders.get(layer)
            b = tc.decode(torch.zeros(1, tc.d_sae, device=dev, dtype=tc.W_dec.dtype))[0].float() if tc else None
            out.append(torch.zeros(seq, d, device=dev) if b is None else b.expand(seq, d))
        return out
