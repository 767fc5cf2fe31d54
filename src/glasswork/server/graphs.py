"""The graphs a server shows: glasswork graphs (NAME.safetensors, pruned on demand by `Graph.view`) and viewer JSON
from any tool in the attribution-graph schema (NAME.json: circuit-tracer's and Neuronpedia's downloads).

What a person adds in the viewer (pinned nodes, supernodes, node names) is kept beside the graph in NAME.state.json,
written atomically, and merged into every view's qParams and node labels. Views never send more than `max_nodes`
nodes and `max_links` links (the strongest), so a graph of any size stays light in the browser.
"""
from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import GlassworkError, read_json, write_json
from .security import within

STATE_SUFFIX = ".state.json"
EMPTY_STATE = {"pinnedIds": [], "supernodes": [], "names": {}, "clickedId": ""}
ALWAYS = ("embedding", "logit")  # feature_type of nodes every view keeps


@dataclass
class ViewerGraph:
    """A graph given as viewer JSON: nodes as they came, links as index arrays (1M links cost ~20 MB, not 1 GB)."""

    metadata: dict
    qparams: dict
    nodes: list[dict]
    src: np.ndarray  # [n_links] int32 node positions
    dst: np.ndarray
    weight: np.ndarray  # [n_links] float32
    ids: dict = field(default_factory=dict)  # node_id -> position


def parse_viewer(obj, where: str) -> ViewerGraph:
    """Check the schema (naming the field that is wrong) and index the links."""
    if not isinstance(obj, dict):
        raise GlassworkError(f"{where}: expected a JSON object with metadata, nodes and links")
    for key, kind in (("nodes", list), ("links", list)):
        if not isinstance(obj.get(key), kind):
            raise GlassworkError(f"{where}: field '{key}' must be a list (attribution-graph schema: metadata, "
                                 f"qParams, nodes, links)")
    nodes = obj["nodes"]
    ids = {}
    for i, n in enumerate(nodes):
        if not isinstance(n, dict) or not isinstance(n.get("node_id"), str):
            raise GlassworkError(f"{where}: nodes[{i}] has no string 'node_id'")
        ids[n["node_id"]] = i
    links = obj["links"]
    src, dst, w = np.empty(len(links), np.int32), np.empty(len(links), np.int32), np.empty(len(links), np.float32)
    for i, link in enumerate(links):
        try:
            src[i], dst[i], w[i] = ids[link["source"]], ids[link["target"]], float(link["weight"])
        except (KeyError, TypeError, ValueError):
            raise GlassworkError(f"{where}: links[{i}] needs 'source' and 'target' naming nodes and a numeric "
                                 f"'weight' (got {str(link)[:120]})") from None
        if not math.isfinite(w[i]):
            raise GlassworkError(f"{where}: links[{i}].weight is {link['weight']}: weights must be finite numbers")
    for i, n in enumerate(nodes):
        for key in ("influence", "activation"):
            v = n.get(key)
            if isinstance(v, float) and not math.isfinite(v):
                raise GlassworkError(f"{where}: nodes[{i}].{key} is {v}: must be a finite number or null")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    q = obj.get("qParams") if isinstance(obj.get("qParams"), dict) else {}
    return ViewerGraph(meta, q, nodes, src, dst, w, ids)


def cap_view(view: dict, max_nodes: int, max_links: int) -> dict:
    """Keep at most max_nodes nodes (tokens and logits first, then by cumulative influence, smallest first) and the
    max_links strongest links among them; say in metadata.info what was left out."""
    nodes, links = view["nodes"], view["links"]
    n0, l0 = len(nodes), len(links)
    if n0 > max_nodes:
        rank = lambda n: (n.get("feature_type") not in ALWAYS, _num(n.get("influence"), 1.0))  # noqa: E731
        nodes = sorted(nodes, key=rank)[:max_nodes]
        kept = {n["node_id"] for n in nodes}
        links = [x for x in links if x["source"] in kept and x["target"] in kept]
    if len(links) > max_links:
        w = np.abs(np.array([x["weight"] for x in links], dtype=np.float32))
        top = np.sort(np.argpartition(-w, max_links - 1)[:max_links])
        links = [links[i] for i in top]
    info = view["metadata"].setdefault("info", {})
    info.update(nodes_before_cap=n0, links_before_cap=l0, max_nodes=max_nodes, max_links=max_links)
    return {**view, "nodes": nodes, "links": links}


def _num(x, default: float) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


class GraphStore:
    """Graph files in one folder, loaded on first use and kept (a few) in memory, with a cache of recent views."""

    def __init__(self, folder: Path, max_nodes: int = 2500, max_links: int = 25000, keep: int = 4):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_nodes, self.max_links, self.keep = max_nodes, max_links, keep
        self._graphs: OrderedDict[str, object] = OrderedDict()
        self._views: OrderedDict[tuple, dict] = OrderedDict()
        self.lock = threading.RLock()

    # --- files ---------------------------------------------------------------------------------------------------
    def path(self, name: str) -> Path | None:
        for suffix in (".safetensors", ".json"):
            p = self.folder / f"{name}{suffix}"
            if p.is_file() and within([self.folder], p):  # a symlink out of the folder is not a graph here
                return p
        return None

    def names(self) -> list[dict]:
        out = []
        for p in sorted(self.folder.iterdir()):
            if p.name.endswith(STATE_SUFFIX) or p.name.startswith(".") or p.suffix not in (".safetensors", ".json"):
                continue
            if not p.is_file() or not within([self.folder], p):
                continue
            out.append({"name": p.stem, "format": "glasswork" if p.suffix == ".safetensors" else "viewer-json",
                        "bytes": p.stat().st_size, "modified": p.stat().st_mtime})
        return out

    def get(self, name: str):
        with self.lock:
            if name in self._graphs:
                self._graphs.move_to_end(name)
                return self._graphs[name]
            p = self.path(name)
            if p is None:
                raise KeyError(name)
            if p.suffix == ".safetensors":
                from ..circuits import load_graph
                g = load_graph(p)
            else:
                try:
                    obj = json.loads(p.read_bytes())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise GlassworkError(f"{p}: not valid JSON ({e})") from None
                g = parse_viewer(obj, str(p))
            self._graphs[name] = g
            while len(self._graphs) > self.keep:
                self._graphs.popitem(last=False)
            return g

    def add_json(self, name: str, obj: dict) -> Path:
        """Store a viewer-JSON graph (checked first, so a bad file is never written)."""
        parse_viewer(obj, f"graph '{name}'")
        path = self.folder / f"{name}.json"
        write_json(path, obj)
        self.forget(name)
        return path

    def forget(self, name: str) -> None:
        with self.lock:
            self._graphs.pop(name, None)
            for key in [k for k in self._views if k[0] == name]:
                del self._views[key]

    # --- state ---------------------------------------------------------------------------------------------------
    def state(self, name: str) -> dict:
        p = self.folder / f"{name}{STATE_SUFFIX}"
        return {**EMPTY_STATE, **read_json(p, "viewer state")} if p.exists() else dict(EMPTY_STATE)

    def save_state(self, name: str, state: dict) -> dict:
        write_json(self.folder / f"{name}{STATE_SUFFIX}", state)
        return state

    # --- views ---------------------------------------------------------------------------------------------------
    def view(self, name: str, node_threshold: float, edge_threshold: float, budget: int | None = None) -> dict:
        """A pruned view: nodes to `node_threshold`, at most `budget` features and errors (None: no limit), edges to
        `edge_threshold`; pinned nodes and names from the saved state."""
        key = (name, round(node_threshold, 4), round(edge_threshold, 4), budget)
        with self.lock:
            if key in self._views:
                self._views.move_to_end(key)
                base = self._views[key]
            else:
                g = self.get(name)
                base = g.view(node_threshold, edge_threshold, slug=name, max_nodes=budget) if not isinstance(
                    g, ViewerGraph) else viewer_prune(g, node_threshold, edge_threshold, budget)
                base = cap_view(base, self.max_nodes, self.max_links)
                self._views[key] = base
                while len(self._views) > 16:
                    self._views.popitem(last=False)
        state = self.state(name)
        names = state.get("names", {})
        nodes = [{**n, "clerp": names[n["node_id"]]} if n["node_id"] in names else n for n in base["nodes"]]
        q = {**base.get("qParams", {}), **{k: state[k] for k in ("pinnedIds", "supernodes", "clickedId")}}
        return {**base, "qParams": q, "nodes": nodes, "names": names}

    def node(self, name: str, node_id: str, top: int = 12) -> dict:
        """A node's record and its strongest inputs and outputs in the whole (unpruned) graph."""
        g = self.get(name)
        if isinstance(g, ViewerGraph):
            if node_id not in g.ids:
                raise KeyError(node_id)
            i = g.ids[node_id]
            ins, outs = np.nonzero(g.dst == i)[0], np.nonzero(g.src == i)[0]
            pick = lambda sel, other: [(g.nodes[int(other[j])]["node_id"], float(g.weight[j]))  # noqa: E731
                                       for j in sel[np.argsort(-np.abs(g.weight[sel]))[:top]]]
            node, inputs, outputs = g.nodes[i], pick(ins, g.src), pick(outs, g.dst)
            label = lambda nid: g.nodes[g.ids[nid]].get("clerp", "")  # noqa: E731
        else:
            i = self._native_index(g, node_id)
            node = g._node_json(i, node_id, float(g.node_influence()[i]), "")
            rows = g.row_nodes
            row = (rows == i).nonzero().flatten()
            inputs = _strongest(g.adjacency[int(row[0])], top, lambda j: g.node_id(j)) if len(row) else []
            col = g.adjacency[:, i]
            outputs = _strongest(col, top, lambda r: g.node_id(int(rows[r])))
            ids = g._cache["ids"]
            label = lambda nid: g._node_json(ids[nid], nid, 0.0, "")["clerp"]  # noqa: E731
        names = self.state(name).get("names", {})
        described = lambda pairs: [{"node_id": n, "weight": w, "clerp": names.get(n) or label(n)}  # noqa: E731
                                   for n, w in pairs]
        return {"node": {**node, "clerp": names.get(node_id, node.get("clerp", ""))}, "inputs": described(inputs),
                "outputs": described(outputs)}

    def _native_index(self, g, node_id: str) -> int:
        ids = g._cache.get("ids")
        if ids is None:
            ids = g._cache["ids"] = {g.node_id(i): i for i in range(g.n_nodes)}
        if node_id not in ids:
            raise KeyError(node_id)
        return ids[node_id]

    # --- subgraphs and suggestions --------------------------------------------------------------------------------
    def _positions(self, g, node_ids: list[str]) -> list[int]:
        if isinstance(g, ViewerGraph):
            missing = [n for n in node_ids if n not in g.ids]
            if missing:
                raise KeyError(missing[0])
            return [g.ids[n] for n in node_ids]
        return [self._native_index(g, n) for n in node_ids]

    def records(self, name: str, node_ids: list[str]) -> list[dict]:
        """The viewer records (layer, position, kind, label) of the given nodes."""
        g = self.get(name)
        pos = self._positions(g, node_ids)
        if isinstance(g, ViewerGraph):
            return [dict(g.nodes[i]) for i in pos]
        infl = g.node_influence()
        return [g._node_json(i, n, float(infl[i]), "") for i, n in zip(pos, node_ids)]

    def edges_among(self, name: str, node_ids: list[str]) -> list[tuple[str, str, float]]:
        """Every direct edge of the whole graph between the given nodes: (source, target, weight)."""
        g = self.get(name)
        pos = self._positions(g, node_ids)
        if isinstance(g, ViewerGraph):
            sel = np.isin(g.src, pos) & np.isin(g.dst, pos)
            ids = [n["node_id"] for n in g.nodes]
            return [(ids[a], ids[b], float(w)) for a, b, w in zip(g.src[sel], g.dst[sel], g.weight[sel])]
        import torch
        row_of = {int(n): r for r, n in enumerate(g.row_nodes.tolist())}
        cols = torch.tensor(pos, dtype=torch.long)
        out = []
        for j, target in zip(pos, node_ids):
            if j not in row_of:
                continue  # tokens and errors have no inputs
            w = g.adjacency[row_of[j], cols].float()
            out += [(node_ids[i], target, float(w[i])) for i in w.nonzero().flatten().tolist()]
        return out

    def profiles(self, name: str, node_ids: list[str]):
        """Each node's outgoing direct effects on every node of the whole graph: [k, n_nodes] float32."""
        import torch
        g = self.get(name)
        pos = self._positions(g, node_ids)
        if isinstance(g, ViewerGraph):
            out = np.zeros((len(pos), len(g.nodes)), np.float32)
            where = {p: i for i, p in enumerate(pos)}
            for j in np.nonzero(np.isin(g.src, pos))[0]:
                out[where[int(g.src[j])], g.dst[j]] += g.weight[j]
            return torch.from_numpy(out)
        return g.out_edges(pos)

    def effects(self, name: str, node_ids: list[str]) -> list[float] | None:
        """Signed total effects of the nodes on the top target (glasswork graphs; None for viewer JSON)."""
        g = self.get(name)
        if isinstance(g, ViewerGraph):
            return None
        e = g.total_effects()
        return [float(e[i]) for i in self._positions(g, node_ids)]

    def subgraph(self, name: str, node_ids: list[str], supernodes: list[list[str]]) -> dict:
        """Pinned nodes and supernodes as one small graph: a supernode is one node whose edges are the sums of its
        members' edges (to and from every other node shown); edges among a supernode's own members are dropped."""
        groups = {s[0] if s else "": [m for m in s[1:]] for s in supernodes if len(s) > 1}
        owner = {m: f"super:{gname}" for gname, ms in groups.items() for m in ms}
        everyone = list(dict.fromkeys([*node_ids, *owner]))
        summed: dict[tuple[str, str], float] = {}
        for a, b, w in self.edges_among(name, everyone):
            key = (owner.get(a, a), owner.get(b, b))
            if key[0] != key[1]:
                summed[key] = summed.get(key, 0.0) + w
        links = [{"source": a, "target": b, "weight": w} for (a, b), w in summed.items()]
        return {"members": {f"super:{g}": ms for g, ms in groups.items()}, "nodes": everyone, "links": links}

    def metadata_of(self, name: str) -> dict:
        """A graph's metadata (prompt, dictionary, scores...), native or viewer JSON."""
        g = self.get(name)
        return g.metadata if isinstance(g, ViewerGraph) else g.meta

    def dictionary_of(self, name: str) -> str:
        meta = self.metadata_of(name)
        return str(meta.get("dictionary") or meta.get("info", {}).get("dictionary") or "")


def _strongest(vec, top: int, name) -> list[tuple[str, float]]:
    import torch
    vec = vec.float()
    nz = int((vec != 0).sum())
    if nz == 0:
        return []
    idx = torch.topk(vec.abs(), min(top, nz)).indices.tolist()
    return [(name(j), float(vec[j])) for j in idx]


def viewer_prune(g: ViewerGraph, node_threshold: float, edge_threshold: float, budget: int | None = None) -> dict:
    """A view of a viewer-JSON graph: nodes with cumulative influence <= node_threshold (when the file gives one;
    tokens and logits always; at most `budget` others, smallest cumulative influence first), then the strongest links
    among them up to `edge_threshold` of the total |weight|."""
    if not (0 < node_threshold <= 1 and 0 < edge_threshold <= 1):
        raise GlassworkError(f"thresholds must be in (0, 1] (got {node_threshold}, {edge_threshold})")
    always = np.array([n.get("feature_type") in ALWAYS or bool(n.get("is_target_logit")) for n in g.nodes], dtype=bool)
    infl = np.array([_num(n.get("influence"), 0.0) for n in g.nodes], dtype=np.float64)
    keep = always | (infl <= node_threshold)
    cand = np.nonzero(keep & ~always)[0]
    if budget is not None and len(cand) > budget:
        keep = always.copy()
        keep[cand[np.argsort(infl[cand], kind="stable")[:budget]]] = True
    sel = np.nonzero(keep[g.src] & keep[g.dst])[0]
    w = np.abs(g.weight[sel])
    if len(sel):
        order = np.argsort(-w)
        cum = np.cumsum(w[order]) / max(float(w.sum()), 1e-30)
        n_keep = int(np.searchsorted(cum, edge_threshold)) + 1
        sel = np.sort(sel[order[:n_keep]])
    ids = [n["node_id"] for n in g.nodes]
    links = [{"source": ids[s], "target": ids[t], "weight": float(x)}
             for s, t, x in zip(g.src[sel].tolist(), g.dst[sel].tolist(), g.weight[sel].tolist())]
    kept = keep & ~always
    info = {**g.metadata.get("info", {}), "max_nodes": budget,
            "influence_kept": round(float(infl[kept].max()), 4) if kept.any() else 0.0}
    meta = {**g.metadata, "node_threshold": node_threshold, "edge_threshold": edge_threshold, "info": info}
    return {"metadata": meta, "qParams": dict(g.qparams), "nodes": [n for n, k in zip(g.nodes, keep) if k],
            "links": links}
