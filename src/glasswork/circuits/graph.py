"""The attribution graph: nodes, the full adjacency, pruning by influence, scores, and the viewer's JSON.

Native format (one safetensors file, written atomically; `Graph.save(path)` / `load_graph(path)`):
  tensors
    the adjacency [n_rows, n_nodes] float32: direct effect of source (column) on the target (row), measured on the
                     target's pre-activation (features) or demeaned logit (logits). Rows are the targets only: row
                     r < n_features is feature node r; row n_features + j is logit j (node n_nodes - n_logits + j).
                     Error and token nodes have no inputs, so they have no row. Stored exactly, as its non-zeros
                     (about 30% of entries: a source only reaches later layers and positions):
    adjacency_shape  [2] int64    n_rows, n_nodes
    adjacency_mask   [ceil(n_rows * n_nodes / 8)] uint8  which entries are non-zero, row-major, one bit each
                     (numpy.packbits, bitorder "little")
    adjacency_values [n_nonzero] float32  those entries in the same order (1.3 bytes per entry in all, against 4
                     for a dense fp32 matrix and 2 for the bfloat16 that files before 2026-12-01 used past 8192
                     nodes; `load_graph` still reads their dense `adjacency` tensor)
    node_kind        [n_nodes] int8   0 feature, 1 error, 2 token (embedding), 3 logit
    node_layer       [n_nodes] int32  layer of a feature / error node; -1 token; n_layers logit
    node_pos         [n_nodes] int32  token position (logits: the last position)
    node_index       [n_nodes] int64  feature index (features), token id (tokens, logits), -1 (errors, custom targets)
    node_activation  [n_nodes] float32  feature activation; logits: probability; else 0
    logit_weight     [n_logits] float32  weight of each target in the influence (probabilities, or 1/n for custom)
    input_ids        [seq] int64
  nodes are ordered: features (sorted by layer, pos, index), errors (layer-major: layer * seq + pos), tokens (by
  position), logits. The safetensors header metadata holds one key "glasswork_graph": a JSON object with prompt,
  str_tokens, model, dictionary, n_layers, target labels ("logit_labels"), feature_type, scores, timings, version.
  The file is written as a stream (the mask and values one row block at a time), so an adjacency mapped from disk
  (`attribute(..., spill=DIR)`, `load_graph(path, spill=DIR)`: `adjacency_buffer`) is saved and read without being
  held in RAM; influence, scores and pruning also read it in row blocks.
Views: `graph.view(node_threshold, edge_threshold) -> dict` prunes the stored graph on demand and returns the JSON of
Anthropic's attribution-graph viewer (metadata, qParams, nodes, links), so no multi-GB JSON is ever written whole.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import GlassworkError, atomic_path

FEATURE, ERROR, TOKEN, LOGIT = 0, 1, 2, 3
KIND_NAMES = {FEATURE: "feature", ERROR: "error", TOKEN: "token", LOGIT: "logit"}
NORM_FLOOR = 1e-10  # a row's |A| sum is clamped here before normalizing (circuit-tracer's value: equal pruning)
_NODE_TENSORS = ("node_kind", "node_layer", "node_pos", "node_index", "node_activation", "logit_weight",
            "input_ids")


@dataclass
class Graph:
    adjacency: torch.Tensor  # [n_features + n_logits, n_nodes]
    node_kind: torch.Tensor  # [n_nodes]
    node_layer: torch.Tensor
    node_pos: torch.Tensor
    node_index: torch.Tensor
    node_activation: torch.Tensor
    logit_weight: torch.Tensor  # [n_logits]
    input_ids: torch.Tensor  # [seq]
    meta: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    # --- shape facts -------------------------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return self.node_kind.numel()

    @property
    def n_features(self) -> int:
        return int((self.node_kind == FEATURE).sum())

    @property
    def n_logits(self) -> int:
        return self.logit_weight.numel()

    @property
    def row_nodes(self) -> torch.Tensor:
        """Node index of each adjacency row: [n_rows]."""
        n, nf, nl = self.n_nodes, self.n_features, self.n_logits
        return torch.cat([torch.arange(nf), torch.arange(n - nl, n)])

    @property
    def n_edges(self) -> int:
        """Non-zero entries of the adjacency (counted block by block)."""
        return sum(int((b != 0).sum()) for b in _row_chunks(self.adjacency))

    def dense(self) -> torch.Tensor:
        """The square adjacency [n_nodes, n_nodes] (rows of error and token nodes are zero)."""
        a = torch.zeros(self.n_nodes, self.n_nodes)
        a[self.row_nodes] = self.adjacency.float()
        return a

    def __repr__(self) -> str:
        s = self.meta.get("scores", {})
        return (f"Graph({self.meta.get('prompt', '')!r}: {self.n_features} features, {self.n_logits} logits, "
                f"{self.n_nodes} nodes, replacement={s.get('replacement', float('nan')):.3f}, "
                f"completeness={s.get('completeness', float('nan')):.3f})")

    # --- influence and scores ----------------------------------------------------------------------------------
    def node_influence(self) -> torch.Tensor:
        """Influence of every node on the logits: sum over k >= 1 of w^T B^k, w = logit weights, B = |A| with each
        row scaled to sum 1 (no normalized copy of A is made: see `influence`)."""
        if "influence" not in self._cache:
            self._cache["influence"] = influence(self.adjacency, self.row_nodes, self._logit_vector(), normalize=True,
                                                 row_sums=self._row_abs_sums())
        return self._cache["influence"]

    def total_effects(self, target: int = 0) -> torch.Tensor:
        """Signed total effect of every node on target logit `target` (0: the top one) in the frozen linear replacement:
        its direct edge plus every path through features, sum over k >= 1 of e^T A^k: [n_nodes]."""
        key = ("effects", target)
        if key not in self._cache:
            onehot = torch.zeros(self.n_nodes)
            onehot[self.n_nodes - self.n_logits + target] = 1.0
            self._cache[key] = influence(self.adjacency.float(), self.row_nodes, onehot)
        return self._cache[key]

    def logit_token(self, target: int = 0) -> int:
        """The token id of logit target `target` (negative for a logit difference or a direction)."""
        return int(self.node_index[self.n_nodes - self.n_logits + target])

    def _row_abs_sums(self) -> torch.Tensor:
        """sum_j |A_ij| of each adjacency row [n_rows], read once (influence and scores both need it)."""
        if "row_abs_sums" not in self._cache:
            self._cache["row_abs_sums"] = row_abs_sums(self.adjacency)
        return self._cache["row_abs_sums"]

    def _logit_vector(self) -> torch.Tensor:
        w = torch.zeros(self.n_nodes)
        w[self.n_nodes - self.n_logits:] = self.logit_weight.float()
        return w

    def scores(self) -> dict:
        """Replacement score (influence reaching the logits from tokens rather than from errors) and completeness
        (share of each node's normalized input not coming from error nodes, weighted by the node's influence)."""
        infl = self.node_influence()
        kind = self.node_kind
        token_infl, error_infl = float(infl[kind == TOKEN].sum()), float(infl[kind == ERROR].sum())
        is_error = kind == ERROR
        error_in = torch.cat([a[:, is_error].abs().sum(1) for a in _row_chunks(self.adjacency)])  # [n_rows]
        non_error = 1.0 - error_in / self._row_abs_sums().clamp_min(NORM_FLOOR)  # [n_rows]
        out_infl = (infl + self._logit_vector())[self.row_nodes]
        return {"replacement": token_infl / max(token_infl + error_infl, 1e-30),
                "completeness": float((non_error * out_infl).sum() / out_infl.sum().clamp_min(1e-30))}

    # --- pruning -----------------------------------------------------------------------------------------------
    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, max_nodes: int | None = None):
        """`pruned_edges` with the kept edges as a dense mask: (node_mask [n_nodes], edge_mask [n_rows, n_nodes],
        cumulative node influence [n_nodes])."""
        node_mask, edge_rows, edge_sources, cum = self.pruned_edges(node_threshold, edge_threshold, max_nodes)
        edge_mask = torch.zeros(self.adjacency.shape, dtype=torch.bool)
        edge_mask[edge_rows, edge_sources] = True
        return node_mask, edge_mask, cum

    def pruned_edges(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, max_nodes: int | None = None):
        """Keep the nodes that hold `node_threshold` of the total influence (tokens count in that total, as in
        circuit-tracer's prune_graph; tokens and logits are always kept) and at most `max_nodes` features and errors,
        the most influential; then edges to cumulative edge influence `edge_threshold` on the kept subgraph, and drop
        features without inputs and features or errors without outputs until none is left. With max_nodes None this
        equals circuit-tracer's prune_graph on the same adjacency (tests/test_circuits.py checks a reimplementation).
        Returns (node_mask [n_nodes], the kept edges' adjacency rows [e] and source nodes [e] in row-major order,
        cumulative node influence [n_nodes]): nothing the size of the whole adjacency is made."""
        for name, t in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not 0.0 < t <= 1.0:
                raise GlassworkError(f"{name} must be in (0, 1] (got {t})")
        infl = self.node_influence()
        kind, rows = self.node_kind, self.row_nodes
        always = (kind == TOKEN) | (kind == LOGIT)
        node_mask = always | (infl >= cutoff(infl, node_threshold))
        if max_nodes is not None:
            if max_nodes < 1:
                raise GlassworkError(f"max_nodes must be at least 1 (got {max_nodes})")
            cand = (node_mask & ~always).nonzero().flatten()
            if len(cand) > max_nodes:  # a readable view: the most influential features and errors only
                node_mask = always.clone()
                node_mask[cand[infl[cand].argsort(descending=True, stable=True)[:max_nodes]]] = True
        # Edges are scored on the subgraph of kept nodes only (small), then mapped back.
        kept = node_mask.nonzero().flatten()  # [k] node ids
        row_sel = node_mask[rows].nonzero().flatten()  # adjacency rows whose target is kept
        local = torch.full((self.n_nodes,), -1, dtype=torch.long)
        local[kept] = torch.arange(len(kept))
        sub_rows = local[rows[row_sel]]  # [k_rows] local index of each row's target
        sub = self.adjacency[row_sel[:, None], kept[None, :]].float()  # [k_rows, k], no [k_rows, n_nodes] step
        norm = sub.abs()
        norm = norm / norm.sum(1, keepdim=True).clamp_min(NORM_FLOOR)
        w = self._logit_vector()[kept]
        edge_infl = influence(norm, sub_rows, w) + w  # the influence of each target node, logits included
        edge_scores = norm * edge_infl[sub_rows, None]
        nonzero = sub != 0
        sub_mask = (edge_scores >= cutoff(edge_scores[nonzero], edge_threshold)) & nonzero
        k_kind, k_always = kind[kept], always[kept]
        k_mask = torch.ones(len(kept), dtype=torch.bool)
        while True:  # drop nodes left without edges to or from the kept graph, until nothing changes
            has_out = sub_mask.any(0)
            has_in = torch.zeros(len(kept), dtype=torch.bool)
            has_in[sub_rows] = sub_mask.any(1)
            keep = k_always | (k_mask & has_out & (has_in | (k_kind == ERROR)))
            if torch.equal(keep, k_mask):
                break
            k_mask = keep
            sub_mask &= k_mask[sub_rows, None] & k_mask[None, :]
        node_mask = torch.zeros(self.n_nodes, dtype=torch.bool)
        node_mask[kept[k_mask]] = True
        sub_r, sub_c = sub_mask.nonzero(as_tuple=True)
        order = torch.argsort(infl, descending=True)
        cum = torch.zeros_like(infl)
        cum[order] = torch.cumsum(infl[order], 0) / infl.sum().clamp_min(1e-30)
        return node_mask, row_sel[sub_r], kept[sub_c], cum

    def view(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, slug: str | None = None,
             labels: dict[str, str] | None = None, max_nodes: int | None = None) -> dict:
        """The pruned graph as the viewer's JSON: {metadata, qParams, nodes, links}. `labels` maps node_id -> clerp.
        metadata.info.influence_kept: the share of the features' and errors' influence on the targets that the kept
        ones carry."""
        node_mask, r, c, cum = self.pruned_edges(node_threshold, edge_threshold, max_nodes)
        keep = node_mask.nonzero().flatten().tolist()
        ids = {i: self.node_id(i) for i in keep}
        labels = labels or {}
        nodes = [self._node_json(i, ids[i], float(cum[i]), labels.get(ids[i], "")) for i in keep]
        rows = self.row_nodes
        weights = self.adjacency[r, c].float().tolist()
        links = [{"source": ids[s], "target": ids[t], "weight": w}
                 for s, t, w in zip(c.tolist(), rows[r].tolist(), weights)]
        meta = self.meta
        return {
            "metadata": {"slug": slug or meta.get("slug") or _slug(meta.get("prompt", "")),
                         "scan": meta.get("model", ""),
                         "prompt": meta.get("prompt", ""), "prompt_tokens": meta.get("str_tokens", []),
                         "node_threshold": node_threshold, "edge_threshold": edge_threshold,
                         "schema_version": 1, "transcoder_list": [], "scores": meta.get("scores", {}),
                         "info": {"generator": "glasswork", "dictionary": meta.get("dictionary", ""),
                                  "n_nodes_total": self.n_nodes, "n_features_total": self.n_features,
                                  "max_nodes": max_nodes, "influence_kept": self.influence_kept(node_mask),
                                  "faithfulness": {k: v for k, v in meta.get("faithfulness", {}).items()
                                                   if k != "features"} or None}},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}

    def out_edges(self, nodes: list[int]) -> torch.Tensor:
        """Each node's direct effects on every target row of the graph: [len(nodes), n_rows] float32."""
        return self.adjacency[:, torch.tensor(nodes, dtype=torch.long)].T.float()

    def influence_kept(self, node_mask: torch.Tensor) -> float:
        """The share of the influence of all features and errors on the targets carried by those in `node_mask`."""
        infl = self.node_influence()
        inner = (self.node_kind == FEATURE) | (self.node_kind == ERROR)
        return round(float(infl[inner & node_mask].sum() / infl[inner].sum().clamp_min(1e-30)), 4)

    def node_id(self, i: int) -> str:
        """Viewer ids: features '{layer}_{feature}_{pos}', errors 'err_{layer}_{pos}', tokens 'E_{token}_{pos}',
        logits '{n_layers}_{token}_{pos}' (custom targets use -1-j as the token). Errors get their own prefix: a
        '0_{layer}_{pos}' id would collide with feature {layer} of layer 0."""
        kind, layer, pos, idx = (int(self.node_kind[i]), int(self.node_layer[i]), int(self.node_pos[i]),
                                 int(self.node_index[i]))
        if kind == FEATURE:
            return f"{layer}_{idx}_{pos}"
        if kind == ERROR:
            return f"err_{layer}_{pos}"
        if kind == TOKEN:
            return f"E_{idx}_{pos}"
        j = i - (self.n_nodes - self.n_logits)
        return f"{layer}_{idx if idx >= 0 else -1 - j}_{pos}"

    def _node_json(self, i: int, node_id: str, influence_: float, clerp: str) -> dict:
        kind, layer, pos, idx = (int(self.node_kind[i]), int(self.node_layer[i]), int(self.node_pos[i]),
                                 int(self.node_index[i]))
        act = float(self.node_activation[i])
        node = {"node_id": node_id, "jsNodeId": node_id, "feature": idx, "layer": str(layer), "ctx_idx": pos,
                "run_idx": 0, "reverse_ctx_idx": 0, "feature_type": "", "token_prob": 0.0, "is_target_logit": False,
                "clerp": clerp, "influence": influence_, "activation": None}
        if kind == FEATURE:
            node.update(feature_type=self.meta.get("feature_type", "cross layer transcoder"), activation=act,
                        feature=idx + layer * int(self.meta.get("d_sae", 0)))
        elif kind == ERROR:
            node.update(feature_type="mlp reconstruction error", feature=-1)
        elif kind == TOKEN:
            node.update(feature_type="embedding", layer="E", feature=pos,
                        clerp=clerp or f'Emb: "{self._str_token(pos)}"')
        else:
            j = i - (self.n_nodes - self.n_logits)
            label = self.meta.get("logit_labels", [""] * self.n_logits)[j]
            node.update(feature_type="logit", token_prob=act, is_target_logit=True,
                        clerp=clerp or f'Output "{label}" (p={act:.3f})')
        return node

    def _str_token(self, pos: int) -> str:
        toks = self.meta.get("str_tokens", [])
        return toks[pos] if pos < len(toks) else str(int(self.input_ids[pos]))

    # --- files -------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the whole graph once (see the format above): the adjacency exactly, as its fp32 non-zeros, streamed
        in row blocks, so a graph whose adjacency is mapped from disk is saved without its values in RAM."""
        path = Path(path)
        tensors = {name: getattr(self, name).detach().contiguous().cpu() for name in _NODE_TENSORS}
        with atomic_path(path) as tmp:
            _write_packed(tmp, tensors, self.adjacency.detach(), {"glasswork_graph": json.dumps(self.meta, default=float)})
        return path

    def to_json(self, path: str | Path, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Path:
        from ..io import write_json
        write_json(path, self.view(node_threshold, edge_threshold))
        return Path(path)


def load_graph(path: str | Path, spill: str | Path | None = None) -> Graph:
    """Read a graph written by Graph.save. spill: a folder where the adjacency is unpacked into a file mapped into
    memory (see `adjacency_buffer`), row block by row block, for graphs larger than RAM."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise GlassworkError(f"{path}: graph file not found")
    packed = ("adjacency_shape", "adjacency_mask", "adjacency_values")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("glasswork_graph", "null"))
            if meta is None:
                raise GlassworkError(f"{path}: safetensors file without 'glasswork_graph' metadata: not a glasswork "
                                     f"graph")
            names = set(f.keys())
            missing = [k for k in _NODE_TENSORS if k not in names]
            if "adjacency" not in names:
                missing += [k for k in packed if k not in names]
            if missing:
                raise GlassworkError(f"{path}: graph file lacks tensor(s) {', '.join(missing)}")
            tensors = {k: f.get_tensor(k) for k in _NODE_TENSORS}
            if "adjacency" in names:  # a file from before the exact encoding: dense fp32 or bfloat16
                adjacency = f.get_tensor("adjacency").float()
            else:
                adjacency = _unpack_adjacency(f.get_tensor("adjacency_shape"), f.get_tensor("adjacency_mask"),
                                              f.get_slice("adjacency_values"), path, spill)
    except GlassworkError:
        raise
    except Exception as e:
        raise GlassworkError(f"{path}: not a readable graph file ({e})") from None
    return Graph(adjacency=adjacency, **tensors, meta=meta)


def adjacency_buffer(n_rows: int, n_cols: int, spill: str | Path | None = None) -> torch.Tensor:
    """A zero [n_rows, n_cols] float32: in RAM, or with `spill` (a folder) in a file there mapped into memory, which
    the OS writes back as rows fill, so RAM holds only the pages in use. The file is unlinked as soon as it is mapped:
    nothing is left behind, even after a kill, and its space is freed with the tensor."""
    import os
    import shutil
    import tempfile
    if spill is None or n_rows * n_cols == 0:
        return torch.zeros(n_rows, n_cols)
    folder = Path(spill)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GlassworkError(f"{folder}: cannot hold the spilled adjacency: not a folder that can be made ({e})") from None
    need, free = 4 * n_rows * n_cols, shutil.disk_usage(folder).free
    if need > free:
        raise GlassworkError(f"{folder}: the adjacency [{n_rows:,} x {n_cols:,}] needs {need / 2**30:.2f} GiB on disk; "
                             f"{free / 2**30:.2f} GiB are free there")
    fd, name = tempfile.mkstemp(prefix="glasswork-adjacency-", suffix=".f32", dir=folder)
    try:
        os.ftruncate(fd, need)  # a sparse file: reads as zeros, takes disk only where rows are written
        mapped = torch.from_file(name, shared=True, size=n_rows * n_cols, dtype=torch.float32)
    finally:
        os.close(fd)
        os.unlink(name)
    return mapped.view(n_rows, n_cols)


def _mask_blocks(n_rows: int, n_cols: int):
    """Row ranges of about CHUNK_BYTES of fp32, each a multiple of 8 rows, so each block's bits fill whole bytes."""
    step = max(8, CHUNK_BYTES // (4 * max(1, n_cols)) // 8 * 8)
    for s in range(0, n_rows, step):
        yield s, min(n_rows, s + step)


_DTYPES = {torch.int8: "I8", torch.int32: "I32", torch.int64: "I64", torch.float32: "F32", torch.uint8: "U8"}


def _write_packed(path: Path, tensors: dict[str, torch.Tensor], a: torch.Tensor, metadata: dict[str, str]) -> None:
    """A safetensors file of `tensors` and the adjacency `a` [n_rows, n_nodes] packed (its shape, a bit mask of its
    non-zeros, their fp32 values), written as a stream: the mask and the values one row block at a time."""
    import struct

    import numpy as np
    n_rows, n_nodes = a.shape
    blocks = list(_mask_blocks(n_rows, n_nodes))
    mask, n_values = [], 0  # one read for the mask (1 bit an entry, held) and the count the header needs
    for s, e in blocks:
        nonzero = (a[s:e] != 0).numpy().ravel()
        mask.append(np.packbits(nonzero, bitorder="little").tobytes())
        n_values += int(nonzero.sum())
    tensors = {**tensors, "adjacency_shape": torch.tensor([n_rows, n_nodes], dtype=torch.int64)}
    sizes = {k: (t.dtype, list(t.shape), t.numel() * t.element_size()) for k, t in tensors.items()}
    sizes["adjacency_mask"] = (torch.uint8, [-(-n_rows * n_nodes // 8)], -(-n_rows * n_nodes // 8))
    sizes["adjacency_values"] = (torch.float32, [n_values], 4 * n_values)
    header, offset = {"__metadata__": metadata}, 0
    for name, (dtype, shape, size) in sizes.items():
        header[name] = {"dtype": _DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in tensors.values():
            f.write(t.contiguous().numpy().tobytes())
        for m in mask:
            f.write(m)
        for s, e in blocks:
            block = a[s:e].float()
            f.write(block[block != 0].numpy().tobytes())


def _unpack_adjacency(shape: torch.Tensor, mask: torch.Tensor, values, path: Path,
                      spill: str | Path | None = None) -> torch.Tensor:
    """The adjacency from its packed form, row block by row block; `values`: a tensor or a safetensors slice."""
    import numpy as np
    n_rows, n_nodes = (int(v) for v in shape.tolist())
    n = n_rows * n_nodes
    if mask.dtype != torch.uint8 or mask.numel() != -(-n // 8):
        raise GlassworkError(f"{path}: adjacency_mask holds {mask.numel()} bytes ({mask.dtype}); a [{n_rows}, "
                             f"{n_nodes}] adjacency needs {-(-n // 8)} uint8")
    n_values = int(values.get_shape()[0]) if hasattr(values, "get_shape") else values.numel()
    bits = mask.numpy()
    pad = np.uint8((1 << (n % 8)) - 1 if n % 8 else 255)  # the last byte's bits past n are padding
    popcount = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # set bits of each byte value
    marked = int(popcount[bits[:-1]].sum(dtype=np.int64) + popcount[bits[-1] & pad]) if n else 0
    if marked != n_values:
        raise GlassworkError(f"{path}: adjacency_mask marks {marked} non-zero entries but adjacency_values holds "
                             f"{n_values}")
    a = adjacency_buffer(n_rows, n_nodes, spill)
    flat, v = a.view(-1), 0
    for s, e in _mask_blocks(n_rows, n_nodes):
        lo, hi = s * n_nodes, e * n_nodes
        nonzero = torch.from_numpy(np.unpackbits(bits[lo // 8:-(-hi // 8)], count=hi - lo, bitorder="little")
                                   .astype(bool))
        k = int(nonzero.sum())
        flat[lo:hi][nonzero] = values[v:v + k].float()
        v += k
    return a


NOT_FEATURES = ("embedding", "logit", "mlp reconstruction error")  # the viewer JSON's other feature_types


def view_features(view: dict) -> list[dict]:
    """The feature nodes of a view (viewer JSON): every node that is not a token, a logit or an error."""
    return [n for n in view["nodes"] if n.get("feature_type") not in NOT_FEATURES]


def parse_feature_id(node_id: str) -> tuple[int, int, int] | None:
    """(layer, feature, pos) of a '{layer}_{feature}_{pos}' id (see Graph.node_id; a logit id has the same shape,
    with layer n_layers), None for any other id."""
    import re
    m = re.fullmatch(r"(\d+)_(\d+)_(\d+)", node_id)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _slug(prompt: str) -> str:
    """'The capital of France is' -> 'the-capital-of-france-is': a graph's name when none is given."""
    import re
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "graph"


CHUNK_BYTES = 64 * 2**20  # row blocks of the adjacency worked on at once: temporaries stay this small


def _row_chunks(a: torch.Tensor):
    """Blocks of whole rows of a [n_rows, n] (views, no copies), each about CHUNK_BYTES in fp32."""
    step = max(1, CHUNK_BYTES // (4 * max(1, a.shape[1])))
    for s in range(0, a.shape[0], step):
        yield a[s:s + step].float()


def row_abs_sums(a: torch.Tensor) -> torch.Tensor:
    """sum_j |a_ij| of each row of a [n_rows, n], block by block: [n_rows] float32."""
    return torch.cat([c.abs().sum(1) for c in _row_chunks(a)]) if a.shape[0] else torch.zeros(0)


def influence(matrix: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, normalize: bool = False,
              max_iter: int = 10_000, row_sums: torch.Tensor | None = None) -> torch.Tensor:
    """sum_{k>=1} w^T B^k for B the square matrix whose rows `rows` are `matrix` [n_rows, n] (other rows zero);
    normalize: B's rows are |matrix| with each row scaled to sum 1 (sums clamped at NORM_FLOOR), applied as a scale
    on the vector and |.| block by block, so no normalized copy of the matrix is held (row_sums: row_abs_sums(matrix)
    if already known).

    A graph is acyclic, so B is nilpotent and the series ends after at most depth steps."""
    if normalize:
        sums = row_abs_sums(matrix) if row_sums is None else row_sums
        scale = torch.where(sums > 0, sums.clamp_min(NORM_FLOOR).reciprocal(), 0.0)  # [n_rows]; rows of zeros: skipped

        def step(v: torch.Tensor) -> torch.Tensor:
            u, out, s = v[rows] * scale, torch.zeros_like(v), 0
            for block in _row_chunks(matrix):
                e = s + block.shape[0]
                if bool(u[s:e].any()):
                    out += u[s:e] @ block.abs()
                s = e
            return out
    else:
        def step(v: torch.Tensor) -> torch.Tensor:
            return v[rows] @ matrix.float()
    total = torch.zeros_like(weights)
    v = weights
    for _ in range(max_iter):
        v = step(v)  # [n]
        if not bool(v.any()):
            return total
        total = total + v
    raise GlassworkError("influence series did not end: the adjacency has a cycle (not an attribution graph)")


def cutoff(scores: torch.Tensor, threshold: float) -> float:
    """The smallest score among the top scores that together hold `threshold` of the total."""
    if scores.numel() == 0:
        return float("inf")
    flat = scores.flatten()
    s = torch.sort(flat[flat > 0], descending=True).values  # zeros add nothing: sorting only the rest is much faster
    total = s.sum()
    if total <= 0:
        return float("inf")
    cum = torch.cumsum(s, 0) / total
    i = int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype)))
    return float(s[i]) if i < s.numel() else float(flat.min())  # past the positives: as if sorting them all
