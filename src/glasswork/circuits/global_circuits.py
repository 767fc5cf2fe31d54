"""Global circuits: how features connect across prompts, not on one.

1. Virtual weights (prompt-independent): what a unit of source feature s (layer i) writes, read by target feature t's
   encoder (layer j > i), through the linear parts of the model with every norm's scale set to 1:
     residual   W_dec_i[s] . diag(g_j) . W_enc_j[:, t]                      (g_j: the MLP norm's weight at layer j)
     head (k,h) a_kh x W_dec_i[s] . diag(g^attn_k) . W_V^h . W_O^h . diag(g_j) . W_enc_j[:, t]    for i < k <= j
   where a_kh is the head's average attention off the BOS position over a sample of contexts (how much it moves
   information at all). Heads need a Llama-shaped attention (q/k/v/o projections); the residual path any model.
2. Dataset-averaged attributions: attribute every prompt of a set and aggregate each feature-to-feature edge over the
   prompts where both fired: its mean and how often (n). Prompts are split over the ranks of `torchrun` (gloo on a
   CPU); the single-process path is the same code with one rank. Written to DICT/global.sqlite, read by the feature
   pages (top upstream and downstream features across the dataset).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import torch

from ..io import GlassworkError, atomic_path
from .graph import FEATURE

GLOBAL_DB = "global.sqlite"


# --- 1. virtual weights ----------------------------------------------------------------------------------------
def _coder_rows(transcoders, layer: int, target_layer: int | None = None):
    """(W_dec rows [F, d] writing into MLP output `target_layer` (default: its own), W_enc [d, F]) of `layer`."""
    if isinstance(transcoders, dict):
        if layer not in transcoders:
            raise GlassworkError(f"no transcoder for layer {layer} (have {sorted(transcoders)})")
        tc = transcoders[layer]
        return tc.W_dec.detach().double(), tc.W_enc.detach().double()
    j = (target_layer if target_layer is not None else layer) - layer
    if not 0 <= j < transcoders.n_targets(layer):
        return None, transcoders.W_enc[layer].detach().double()
    return transcoders.W_dec[layer][:, j].detach().double(), transcoders.W_enc[layer].detach().double()


MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm")  # Gemma 2 first: its post_attention_ is an output norm
ATTN_NORMS = ("input_layernorm",)


def _gain(model, block, names: tuple[str, ...]) -> torch.Tensor:
    """The elementwise weight (float64) of the block's RMSNorm named first in `names` (Gemma's 1 + w form included)."""
    for name in names:
        if hasattr(block, name):
            m = getattr(block, name)
            if not type(m).__name__.endswith("RMSNorm"):
                break
            w = m.weight.detach().double()
            return 1.0 + w if type(m).__name__.startswith("Gemma") else w
    raise GlassworkError(f"virtual weights need RMSNorm blocks with {' / '.join(names)}; model type "
                         f"'{model.hf.config.model_type}' has another layout")


def virtual_weights(model, transcoders, source_layer: int, target_layer: int, sources: list[int] | None = None,
                    targets: list[int] | None = None, attention: dict | None = None) -> dict:
    """{'residual': [S, T], 'heads': {(k, h): [S, T]}} float64 virtual weights from features `sources` of
    `source_layer` to features `targets` of `target_layer` (default: all). `attention`: {(k, h): a_kh} (from
    `average_attention`); without it heads are left out."""
    from ..hooks import arch_of
    if not 0 <= source_layer < target_layer < model.n_layers:
        raise GlassworkError(f"source layer {source_layer} must be below target layer {target_layer} "
                             f"(0..{model.n_layers - 1})")
    arch = arch_of(model.hf)
    blocks = model.hf.get_submodule(arch.layers)
    dec_all = []
    w_enc = _coder_rows(transcoders, target_layer)[1]
    w_enc = w_enc if targets is None else w_enc[:, targets]  # [d, T]
    read = _gain(model, blocks[target_layer], MLP_NORMS)[:, None] * w_enc  # [d, T]
    out: dict = {"heads": {}}
    for j in ([source_layer] if isinstance(transcoders, dict) else range(source_layer, target_layer)):
        dec = _coder_rows(transcoders, source_layer, j)[0]
        if dec is None:
            continue
        dec_all.append((j, dec if sources is None else dec[sources]))
    # the residual: every write of the source (a CLT's to each layer below the target) reaches the target's input
    out["residual"] = sum(dec @ read for _, dec in dec_all)
    for (k, h), a in (attention or {}).items():
        if not all(j < k <= target_layer for j, _ in dec_all):
            continue
        ov = _ov(model, blocks[k], arch, h)  # [d, d] in the residual basis, the attention norm's gain included
        out["heads"][(k, h)] = a * sum(dec @ ov @ read for j, dec in dec_all if j < k)
    return out


def _ov(model, block, arch, head: int) -> torch.Tensor:
    """x -> o_proj(v_proj(g ⊙ x) restricted to `head`) as a [d, d] float64 matrix (row vector convention)."""
    attn = block.get_submodule(arch.attn)
    if not all(hasattr(attn, n) for n in ("v_proj", "o_proj")) or arch.attn_out != arch.attn:
        raise GlassworkError(f"head virtual weights need q/k/v/o projections; model type "
                             f"'{model.hf.config.model_type}' has none (use the residual path)")
    hd = attn.head_dim if hasattr(attn, "head_dim") else model.d_model // model.hf.config.num_attention_heads
    heads = model.hf.config.num_attention_heads
    kv = getattr(model.hf.config, "num_key_value_heads", heads) or heads
    g = head // (heads // kv)
    w_v = attn.v_proj.weight.detach().double()[g * hd:(g + 1) * hd]  # [hd, d]
    w_o = attn.o_proj.weight.detach().double()[:, head * hd:(head + 1) * hd]  # [d, hd]
    gain = _gain(model, block, ATTN_NORMS)
    return (gain[:, None] * w_v.T) @ w_o.T


@torch.no_grad()
def average_attention(model, contexts: torch.Tensor) -> dict:
    """{(layer, head): mean attention mass off the BOS position} over contexts [n, seq] (the BOS query left out)."""
    before = model.hf.config._attn_implementation
    model.hf.set_attn_implementation("eager")
    try:
        out = model.hf(input_ids=contexts.to(model.device), output_attentions=True)
    finally:
        model.hf.set_attn_implementation(before)
    return {(k, h): float(1.0 - a[:, h, 1:, 0].mean()) for k, a in enumerate(out.attentions)
            for h in range(a.shape[1])}


# --- 2. dataset-averaged attributions --------------------------------------------------------------------------
def aggregate(model, transcoders, prompts: list[str], max_features: int | None = 512) -> dict[tuple[int, int, int, int], tuple[float, int]]:
    """{(source layer, source feature, target layer, target feature): (sum of edge weights, n)} over `prompts`, this
    rank's share of them (prompt r, r + world, ...), summed over all ranks: every rank gets the whole result."""
    from ..progress import progress
    from ..training import distributed as dist
    from .attribution import attribute
    if not prompts:
        raise GlassworkError("no prompts to aggregate over: give a non-empty prompt set")
    mine = prompts[dist.rank()::dist.world()]
    acc: dict = {}
    with progress("global: attributing prompts", total=len(mine), unit="prompts") as bar:
        for text in mine:
            g = attribute(model, transcoders, text, max_features=max_features, show_progress=False)
            _accumulate(acc, g)
            bar.advance(1)
    return _gather(acc)


def _accumulate(acc: dict, g) -> None:
    """Add graph g's feature -> feature edges (adjacency [rows, nodes]: row target, column source) to acc."""
    feat = (g.node_kind == FEATURE)
    rows = g.row_nodes
    is_feat_row = feat[rows]
    A = g.adjacency[is_feat_row][:, feat]  # [target features, source features]
    tgt, src = rows[is_feat_row], feat.nonzero().flatten()
    nz = A.nonzero(as_tuple=True)
    t_layer, t_idx = g.node_layer[tgt[nz[0]]].tolist(), g.node_index[tgt[nz[0]]].tolist()
    s_layer, s_idx = g.node_layer[src[nz[1]]].tolist(), g.node_index[src[nz[1]]].tolist()
    for sl, si, tl, ti, w in zip(s_layer, s_idx, t_layer, t_idx, A[nz].tolist()):
        key = (sl, si, tl, ti)
        total, n = acc.get(key, (0.0, 0))
        acc[key] = (total + w, n + 1)


def _gather(acc: dict) -> dict:
    from ..training import distributed as dist
    if dist.world() <= 1:
        return acc
    import torch.distributed as tdist
    parts: list = [None] * dist.world()
    tdist.all_gather_object(parts, acc)
    out: dict = {}
    for part in parts:
        for key, (total, n) in part.items():
            t0, n0 = out.get(key, (0.0, 0))
            out[key] = (t0 + total, n0 + n)
    return dict(sorted(out.items()))


def write_global(folder: str | Path, edges: dict, n_prompts: int) -> Path:
    """DICT/global.sqlite: edges(src_layer, src, dst_layer, dst, mean, n) and meta, written atomically."""
    path = Path(folder) / GLOBAL_DB
    with atomic_path(path) as tmp:
        db = sqlite3.connect(tmp)
        db.executescript("CREATE TABLE edges(src_layer INTEGER, src INTEGER, dst_layer INTEGER, dst INTEGER, "
                         "mean REAL, n INTEGER); CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);")
        db.executemany("INSERT INTO edges VALUES (?, ?, ?, ?, ?, ?)",
                       [(sl, si, tl, ti, total / n, n) for (sl, si, tl, ti), (total, n) in edges.items()])
        db.executescript("CREATE INDEX edges_src ON edges(src_layer, src); CREATE INDEX edges_dst ON edges(dst_layer, dst);")
        db.execute("INSERT INTO meta VALUES ('n_prompts', ?)", (str(n_prompts),))
        db.commit()
        db.close()
    return path


def global_neighbors(folder: str | Path, layer: int, feature: int, top: int = 10) -> dict | None:
    """A feature's top upstream and downstream features across the dataset (by |mean| x n), or None without a
    global.sqlite in `folder`."""
    path = Path(folder) / GLOBAL_DB
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        q = ("SELECT {a}_layer, {a}, mean, n FROM edges WHERE {b}_layer = ? AND {b} = ? "
             "ORDER BY ABS(mean) * n DESC LIMIT ?")
        up = db.execute(q.format(a="src", b="dst"), (layer, feature, top)).fetchall()
        down = db.execute(q.format(a="dst", b="src"), (layer, feature, top)).fetchall()
        n_prompts = int(db.execute("SELECT value FROM meta WHERE key = 'n_prompts'").fetchone()[0])
    finally:
        db.close()
    rec = (lambda r: {"layer": r[0], "feature": r[1], "mean": r[2], "n": r[3]})
    return {"n_prompts": n_prompts, "upstream": [rec(r) for r in up], "downstream": [rec(r) for r in down]}
