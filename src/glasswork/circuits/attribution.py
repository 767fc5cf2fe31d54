"""Attribution: the exact direct effects between the nodes of the frozen replacement model, by batched backward passes.

For a target (a feature's pre-activation, or a demeaned logit), inject its read-out vector as the gradient at its
layer and position (encoder column at the MLP input; unembedding column at the final norm output), run one backward
pass through the frozen model, and contract the gradient at each source's location with the source's vector
(activation x decoder row at the MLP output, error vector, token embedding). Each batch row carries one target: the
prompt is repeated along the batch. Because the model is causal, a target at position p only needs the prefix
[0..p], and a target at layer l only needs the layers below it: targets are grouped by position and sorted by layer,
so each backward pass is as short as it can be.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import GlassworkError
from ..progress import progress
from .graph import CHUNK_BYTES, ERROR, FEATURE, LOGIT, TOKEN, Graph, adjacency_buffer, influence
from . import sweep
from .replacement import Clean, Features, ReplacementModel, position_runs

ENGINES = ("auto", "sweep", "autograd")
SWEEP_BATCH, AUTOGRAD_BATCH = 512, 64  # targets per backward pass: the sweep keeps no per-layer graph


@dataclass
class Target:
    """A logit target: read-out vector [d_model] at the final norm output of the last position."""

    label: str
    vector: torch.Tensor
    token: int = -1  # token id, or -1 for a logit difference / direction
    prob: float = 0.0
    weight: float = 1.0


def attribute(model, transcoders, prompt, target=None, max_features: int | None = None, batch_size: int | None = None,
              bos_nodes: bool = False, show_progress: bool = True, dictionary: str = "", vmap: bool = True,
              max_memory: float | None = None, engine: str = "auto", spill: str | Path | None = None) -> Graph:
    """The attribution graph of `prompt` (text, or token ids) through the replacement model.

    target: None (most probable next tokens to cumulative 0.95, at most 10), a token string, "A-B" (difference of two
    tokens' logits), a tensor [d_model] (a direction read at the final norm output), or a list of those.
    max_features: keep only the most influential features (estimated from the rows computed so far).
    bos_nodes: give a leading BOS position feature and error nodes (off by default: BOS is an attention sink whose
    outputs are huge and constant, so they are kept as constants, as other tools do).
    max_memory: bytes the graph's own tensors may take (memory_estimate); past it, stop before any backward pass
    with the estimate and what lowers it.
    spill: a folder: the adjacency lives in a file there, mapped into memory and written back by the OS as its rows
    are computed, so RAM holds only the blocks in use (the estimate then counts it as disk, not memory); the file is
    unlinked at once and never outlives the graph. A budgeted graph keeps only its small kept part in RAM.
    engine: "sweep" (the hand-written backward of sweep.py: Llama-family models), "autograd" (any architecture), or
    "auto" (sweep where it applies). batch_size: targets per backward pass (default: 512 sweep, 64 autograd)."""
    t0 = time.time()
    r = transcoders if isinstance(transcoders, ReplacementModel) else ReplacementModel(model, transcoders)
    if engine not in ENGINES:
        raise GlassworkError(f"engine must be one of {', '.join(ENGINES)} (got '{engine}')")
    use_sweep = engine == "sweep" or (engine == "auto" and sweep.supports(r))
    if use_sweep and not sweep.supports(r):
        raise GlassworkError(f"the sweep engine covers model types {', '.join(sweep.MODEL_TYPES)}; this model is "
                             f"'{model.hf.config.model_type}' (use engine='autograd')")
    batch_size = int(batch_size or (SWEEP_BATCH if use_sweep else AUTOGRAD_BATCH))
    ids = prompt_ids(model, prompt)
    c = r.clean(ids.view(1, -1))  # the clean pass, once: targets, features, errors and the frozen pass read it
    feats, recon = r.features(c)
    targets = logit_targets(model, c.logits[-1], target)
    seq, L = ids.numel(), model.n_layers
    skip_bos = not bos_nodes and int(ids[0]) == model.bos_token_id and seq > 1
    if skip_bos:
        keep = feats.pos > 0
        feats = Features(feats.layer[keep], feats.pos[keep], feats.index[keep], feats.activation[keep])
    errors = torch.stack([c.mlp_out[layer] - recon[layer] for layer in range(L)])  # [L, seq, d]
    if skip_bos:
        errors[:, 0] = 0.0
    n_feat, n_logit = len(feats), len(targets)
    n_nodes = n_feat + L * seq + seq + n_logit
    budget = n_feat if max_features is None else min(max_features, n_feat)
    need = memory_estimate(model, r, seq, n_feat, budget, n_logit, batch_size, use_sweep, spill=spill is not None)
    if show_progress:
        flops = flop_estimate(model, r, feats, seq, n_logit, skip_bos and use_sweep) * budget / max(n_feat, 1)
        rate = matmul_rate(model.device, model.d_model)
        on_disk = f" (+ {need['disk'] / 2**30:.2f} GiB on disk)" if spill is not None else ""
        print(f"attribution: {seq} tokens, {n_feat:,} active features, {budget:,} feature rows x {n_nodes:,} nodes; "
              f"about {need['total'] / 2**30:.2f} GiB{on_disk} and {flops / 1e9:,.0f} GFLOP (~{flops / rate:,.0f} s at this "
              f"device's {rate / 1e9:.0f} GFLOP/s fp32 matmul)", file=sys.stderr)
    if max_memory is not None:
        if need["total"] > max_memory:
            fits = max_features_within(model, r, seq, n_feat, n_logit, batch_size, max_memory, use_sweep,
                                       spill is not None)
            spilled = memory_estimate(model, r, seq, n_feat, budget, n_logit, batch_size, use_sweep, spill=True)
            raise GlassworkError(
                f"this graph needs about {need['total'] / 2**30:.2f} GiB ({seq} tokens, {n_feat:,} active features, "
                f"{budget:,} feature rows x {n_nodes:,} nodes; adjacency {need['adjacency'] / 2**30:.2f} GiB), over "
                f"the limit of {max_memory / 2**30:.2f} GiB. Lower it with --max-features "
                f"{fits if fits else 'N'} (or fewer), a smaller --batch-size, or a shorter prompt"
                + ("" if spill is not None or spilled["total"] > max_memory else
                   f"; or keep the adjacency on disk with --spill DIR (then about "
                   f"{spilled['total'] / 2**30:.2f} GiB of memory and {spilled['disk'] / 2**30:.2f} GiB of disk)"))
    if use_sweep:
        runner = sweep.SweepEngine(r, c, feats, errors, ids, batch_size, sink_bos=skip_bos)
    else:
        runner = _Engine(r, c, feats, r.constants(c), errors, ids, batch_size, vmap)

    # Rows: features (in the order computed) then logits; columns: all nodes (logit columns stay zero).
    adjacency = adjacency_buffer(budget + n_logit, n_nodes, spill)
    row_node = torch.full((budget + n_logit,), -1, dtype=torch.long)
    row_node[budget:] = torch.arange(n_nodes - n_logit, n_nodes)
    src = slice(0, n_nodes - n_logit)
    with (progress("attribution", total=n_logit + budget, unit="targets") if show_progress else _no_bar()) as bar:
        logit_vecs = torch.stack([t.vector for t in targets])
        runner.rows(torch.full((n_logit,), L), torch.full((n_logit,), seq - 1), logit_vecs, bar,
                     out=adjacency[budget:, src])
        if budget == n_feat:
            order = torch.arange(n_feat)
            runner.rows(feats.layer, feats.pos, r.encoder_vectors(feats.layer, feats.index), bar,
                        out=adjacency[:n_feat, src])
            row_node[:n_feat] = order
        else:
            order = _budgeted(runner, r, feats, adjacency, row_node, targets, budget, bar)
    text = prompt if isinstance(prompt, str) else " ".join(map(str, ids.tolist()))
    graph = _assemble(model, r, ids, text, feats, targets, adjacency, row_node, order, errors.shape[0], dictionary)
    graph.meta["seconds"] = round(time.time() - t0, 3)
    graph.meta["n_active_features"] = n_feat
    graph.meta["engine"] = "sweep" if use_sweep else "autograd"
    return graph


def memory_estimate(model, r: ReplacementModel, seq: int, n_feat: int, budget: int, n_logit: int,
                    batch_size: int, use_sweep: bool = False, spill: bool = False) -> dict[str, int]:
    """Bytes of the largest tensors `attribute` holds at once (the model's weights not counted): the adjacency
    [budget + n_logit, n_nodes] fp32, held once (influence and scores work on it in place, in row blocks of
    graph.CHUNK_BYTES), with a budget the two copies of the kept graph that the reordering makes ([budget + n_logit,
    budget + errors + tokens + logits] each), every active feature's decoder vector at each layer it writes to, and
    one backward pass's gradients ([batch, prefix, d] per layer, and the attention scores' [batch, heads, seq, seq];
    the sweep holds four [batch, prefix, d] buffers and no per-layer graph) and its rows [batch, n_nodes].
    spill: the adjacency is a file mapped into memory (`attribute`'s spill): counted under "disk", not in the total."""
    L, d = model.n_layers, model.d_model
    n_nodes = n_feat + L * seq + seq + n_logit
    adjacency = 4 * (budget + n_logit) * n_nodes
    writes = (r.clt.cfg.window or L) if r.clt is not None else 1
    decoders = 4 * n_feat * d * min(writes, L)
    heads = getattr(model.hf.config, "num_attention_heads", 1) or 1
    backward = 4 * batch_size * (seq * (4 * d if use_sweep else L * (8 * d + heads * seq)) + n_nodes)
    kept = 2 * 4 * (budget + n_logit) * (budget + L * seq + seq + n_logit) if budget < n_feat else 0
    blocks = 3 * min(CHUNK_BYTES, adjacency)  # a row block, its |.| and a column selection of it
    return {"adjacency": adjacency, "decoders": decoders, "backward": backward, "disk": adjacency if spill else 0,
            "total": (0 if spill else adjacency) + kept + blocks + decoders + backward}


def flop_estimate(model, r: ReplacementModel, feats: Features, seq: int, n_logit: int, sink_bos: bool) -> float:
    """Multiply-adds x 2 of every row's backward pass: per target at (l, p), layers l..0 of the attention's
    value/output path over its prefix (BOS left out when it is a sink), the skips below l, and the contraction with
    every source at or before p below l. The lm head, the clean pass and the graph's scores are not counted."""
    L, d, cfg = model.n_layers, model.d_model, model.hf.config
    H = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    KV = getattr(cfg, "num_key_value_heads", None) or H
    hd = getattr(cfg, "head_dim", None) or d // H
    layer = torch.cat([feats.layer, torch.full((n_logit,), L)]).double()
    pos = torch.cat([feats.pos, torch.full((n_logit,), seq - 1)]).double()
    width = (pos + 1 - int(sink_bos)).clamp_min(1)  # positions the sweep carries
    attn = (layer + 1).clamp_max(L) * (width * 2 * d * (H + KV) * hd + 2 * H * width * (pos + 1) * hd)
    has_skip = [float(r.skip_weight(j) is not None) for j in range(L)]
    skips_below = torch.tensor([0.0] + has_skip).cumsum(0)[layer.long()]
    sources = torch.ones(L, seq, dtype=torch.float64)  # one error node per (layer, position), plus its features
    sources.index_put_((feats.layer, feats.pos), torch.ones(len(feats), dtype=torch.float64), accumulate=True)
    below = torch.cat([torch.zeros(1, seq, dtype=torch.float64), sources.cumsum(0).cumsum(1)])  # [L + 1, seq]
    contraction = 2 * d * below[layer.long(), pos.long()]
    return float((attn + skips_below * width * 2 * d * d + contraction).sum())


def matmul_rate(device, d: int, seconds: float = 0.02) -> float:
    """FLOP/s of an fp32 [512, d] @ [d, d] product on `device`, timed now for `seconds` (estimates only)."""
    a, b = torch.randn(512, d, device=device), torch.randn(d, d, device=device)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * 512 * d * d * n / max(time.perf_counter() - t0, 1e-9)


def max_features_within(model, r, seq: int, n_feat: int, n_logit: int, batch_size: int, limit: float,
                        use_sweep: bool = False, spill: bool = False) -> int:
    """The largest feature budget whose memory_estimate fits in `limit` bytes (0 if none does)."""
    lo, hi = 0, n_feat
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if memory_estimate(model, r, seq, n_feat, mid, n_logit, batch_size, use_sweep, spill)["total"] <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _budgeted(engine, r, feats, adjacency, row_node, targets, budget, bar) -> torch.Tensor:
    """Compute feature rows in rounds, each round taking the unprocessed features of highest estimated influence
    (the influence on the logits through the rows computed so far)."""
    n_rows, n_nodes = adjacency.shape
    n_logit = n_rows - budget
    weights = torch.zeros(n_nodes)
    weights[n_nodes - n_logit:] = torch.tensor([t.weight for t in targets])
    done = torch.zeros(len(feats), dtype=torch.bool)
    filled = 0
    chunk = max(engine.batch_size * 4, 1)
    while filled < budget:
        # rows not filled yet are zeros, so they add nothing: the whole adjacency is used in place, with no copy
        infl = influence(adjacency, row_node.clamp_min(0), weights, normalize=True)[:len(feats)]
        infl[done] = -1.0
        take = min(chunk, budget - filled)
        pick = torch.sort(torch.topk(infl, take).indices).values  # sorted: grouped by layer then position
        engine.rows(feats.layer[pick], feats.pos[pick], r.encoder_vectors(feats.layer[pick], feats.index[pick]), bar,
                    out=adjacency[filled:filled + take, :n_nodes - n_logit])
        row_node[filled:filled + take] = pick
        done[pick] = True
        filled += take
    return row_node[:budget].clone()


class _Engine:
    """Runs batched backward passes for targets and contracts the gradients with every source's vector."""

    def __init__(self, r: ReplacementModel, c: Clean, feats: Features, constants, errors, ids, batch_size: int,
                 vmap: bool = True):
        self.r, self.c, self.feats, self.constants, self.errors = r, c, feats, constants, errors
        self.ids, self.batch_size = ids, max(1, int(batch_size))
        self.vmap = vmap  # one batch-1 forward, backward vectorized over the targets (is_grads_batched)
        self.L, self.seq = r.model.n_layers, ids.numel()
        self.writers = r.writers_by_position(feats, self.seq)  # the sources writing to each MLP output

    def rows(self, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor, bar,
             out: torch.Tensor) -> torch.Tensor:
        """Fill `out` [n, n_features + L * seq + seq] with the adjacency rows of targets at (layer, pos) with
        read-out vectors [n, d] (layer == n_layers: a logit read at the final norm output)."""
        order = torch.argsort(positions * (self.L + 1) + layers, stable=True)
        for p, group in position_runs(positions, order):  # one forward per prefix, then batches of targets
            batch = min(self.batch_size, len(group))
            mlp_in, final, probes = self._forward(p + 1, 1 if self.vmap else batch)
            for s in range(0, len(group), batch):
                idx = group[s:s + batch]
                out[idx] = self._backward(mlp_in, final, probes, layers[idx], p, vectors[idx], batch).cpu()
                bar.advance(len(idx))
        return out

    def _forward(self, prefix: int, batch: int):
        d = self.r.model.d_model
        dev = self.r.model.device
        probes = {"embed": torch.zeros(batch, prefix, d, requires_grad=True, device=dev)}
        for layer in range(self.L):
            probes[layer] = torch.zeros(batch, prefix, d, requires_grad=True, device=dev)
        ids = self.ids[:prefix].view(1, -1).expand(batch, -1)
        with torch.enable_grad():
            mlp_in, final = self.r.frozen(self.c, self.constants, ids, probes)
        return mlp_in, final, probes

    def _backward(self, mlp_in, final, probes, layers, pos, vectors, batch) -> torch.Tensor:
        n, prefix = layers.numel(), final.shape[1]
        outputs, grads = [], []
        for layer in sorted(set(layers.tolist())):
            sel = (layers == layer).nonzero().flatten()
            g = torch.zeros(batch, prefix, vectors.shape[1], device=final.device)
            g[sel.to(g.device), pos] = vectors[sel].to(g.device, g.dtype)
            if self.vmap:
                g = g[:, None]
            outputs.append(final if layer == self.L else mlp_in[layer])
            grads.append(g)
        top = int(layers.max())  # sources below the highest target layer are all that can matter
        src_layers = list(range(min(top, self.L)))
        inputs = [probes["embed"]] + [probes[j] for j in src_layers]
        with torch.enable_grad():
            got = torch.autograd.grad(outputs, inputs, grads, retain_graph=True, allow_unused=True,
                                      is_grads_batched=self.vmap)
        if self.vmap:
            got = [None if x is None else x[:, 0] for x in got]
        g_embed, g_mlp = got[0], dict(zip(src_layers, got[1:]))
        return contract(g_embed, g_mlp, self.c.embed, self.errors, self.writers, len(self.feats), batch, prefix)[:n]


def contract(g_embed: torch.Tensor | None, g_mlp: dict, embed: torch.Tensor, errors: torch.Tensor, writers: dict,
             n_feat: int, batch: int, prefix: int) -> torch.Tensor:
    """Rows [batch, n_feat + L * seq + seq] over the nodes (features, errors, tokens) from the gradients of `batch`
    targets at the embedding and at each MLP output (g_embed, g_mlp[j]: [batch, prefix, d]): each node's vector
    dotted with the gradient where it is written. embed [seq, d], errors [L, seq, d], writers as
    ReplacementModel.writers_by_position."""
    L, seq = errors.shape[:2]
    row = torch.zeros(batch, n_feat + L * seq + seq, device=errors.device)
    tok = n_feat + L * seq
    if g_embed is not None:
        row[:, tok:tok + prefix] = (g_embed * embed[:prefix]).sum(-1)
    for j, g in g_mlp.items():
        if g is None:
            continue
        row[:, n_feat + j * seq:n_feat + j * seq + prefix] = (g * errors[j, :prefix]).sum(-1)
        for p, (rows, vecs) in enumerate(writers.get(j, [])[:prefix]):
            if len(rows):
                row[:, rows] += g[:, p] @ vecs.T
    return row


@contextmanager
def _no_bar():
    from ..progress import Bar
    yield Bar(None, None)


def _assemble(model, r, ids, prompt: str, feats, targets, adjacency, row_node, order, L, dictionary) -> Graph:
    """Nodes (selected features, errors, tokens, logits) and their adjacency in the native layout."""
    seq, n_logit = ids.numel(), len(targets)
    n_all = adjacency.shape[1]
    budget = adjacency.shape[0] - n_logit
    if not torch.equal(order, torch.arange(len(feats))):  # a budget: keep the selected features, sorted
        order = torch.sort(order).values
        feat_rows = torch.empty(len(feats), dtype=torch.long)
        feat_rows[row_node[:budget]] = torch.arange(budget)
        cols = torch.cat([order, torch.arange(len(feats), n_all)])
        rows = torch.cat([feat_rows[order], torch.arange(budget, budget + n_logit)])
        adjacency = adjacency.index_select(1, cols).index_select(0, rows)  # columns first: both copies are small
    adj = adjacency
    nf = len(order)
    kind = torch.cat([torch.full((nf,), FEATURE), torch.full((L * seq,), ERROR), torch.full((seq,), TOKEN),
                      torch.full((n_logit,), LOGIT)]).to(torch.int8)
    layer = torch.cat([feats.layer[order], torch.arange(L).repeat_interleave(seq), torch.full((seq,), -1),
                       torch.full((n_logit,), L)]).to(torch.int32)
    pos = torch.cat([feats.pos[order], torch.arange(seq).repeat(L), torch.arange(seq),
                     torch.full((n_logit,), seq - 1)]).to(torch.int32)
    ids = ids.cpu()
    index = torch.cat([feats.index[order], torch.full((L * seq,), -1), ids, torch.tensor([t.token for t in targets])])
    act = torch.cat([feats.activation[order], torch.zeros(L * seq + seq), torch.tensor([t.prob for t in targets])])
    str_tokens = (model.to_str_tokens(ids) if model.tokenizer is not None else [str(i) for i in ids.tolist()])
    meta = {"prompt": prompt, "str_tokens": str_tokens, "model": model.name,
            "dictionary": str(dictionary), "n_layers": L, "d_sae": r.d_sae, "feature_type": r.feature_type,
            "logit_labels": [t.label for t in targets], "glasswork_version": _version()}
    g = Graph(adj, kind, layer, pos, index.long(), act.float(), torch.tensor([t.weight for t in targets]).float(),
              ids.clone(), meta=meta)
    g.meta["scores"] = g.scores()
    return g


def _version() -> str:
    from ..version import __version__
    return __version__


# --- inputs --------------------------------------------------------------------------------------------------
def prompt_ids(model, prompt) -> torch.Tensor:
    """Token ids [seq] of a prompt (BOS first), with clear errors for an empty or over-long prompt."""
    if isinstance(prompt, torch.Tensor) or isinstance(prompt, list):
        ids = torch.as_tensor(prompt, dtype=torch.long).flatten()
    else:
        if not isinstance(prompt, str) or not prompt.strip():
            raise GlassworkError("prompt is empty: give the text whose next-token prediction to trace")
        ids = model.tokenize(prompt)[0]
    if ids.numel() == 0:
        raise GlassworkError("prompt is empty: give the text whose next-token prediction to trace")
    if ids.numel() > model.n_ctx:
        raise GlassworkError(f"prompt has {ids.numel()} tokens; the model's context is {model.n_ctx} tokens")
    if int(ids.max()) >= model.vocab_size or int(ids.min()) < 0:
        raise GlassworkError(f"prompt token ids must be in 0..{model.vocab_size - 1}")
    return ids.to(model.device)


def _demeaned(W_U: torch.Tensor, mean: torch.Tensor, token: int) -> torch.Tensor:
    """The unembedding column of `token` [d] minus the mean column (W_U [d, vocab])."""
    return W_U[:, token].float() - mean


def _token_id(model, text: str) -> int | None:
    if model.tokenizer is None:
        return None
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def logit_targets(model, last_logits: torch.Tensor, target=None, cumulative: float = 0.95,
                  max_logits: int = 10) -> list[Target]:
    """The logit targets from the clean pass's logits at the last position [vocab]: the most probable next tokens
    (target None) or what `target` names."""
    probs = last_logits.softmax(-1)
    W_U = model.W_U.detach()
    mean = W_U.float().mean(1)  # once: a [d, vocab] reduction costs ~20 ms at SmolLM2's 49k vocabulary
    if target is None:
        p, tok = probs.sort(descending=True)
        k = min(int((p.cumsum(0) < cumulative).sum()) + 1, max_logits)
        labels = model.to_str_tokens(tok[:k]) if model.tokenizer is not None else [str(t) for t in tok[:k].tolist()]
        return [Target(lab, _demeaned(W_U, mean, t), t, float(pt), float(pt))
                for lab, t, pt in zip(labels, tok[:k].tolist(), p[:k].tolist())]
    specs = target if isinstance(target, (list, tuple)) else [target]
    out = []
    for spec in specs:
        if isinstance(spec, torch.Tensor):
            if spec.shape != (model.d_model,):
                raise GlassworkError(f"target direction has shape {list(spec.shape)}; expected [{model.d_model}]")
            out.append(Target("direction", spec.detach().float()))
        elif isinstance(spec, int):
            if not 0 <= spec < model.vocab_size:
                raise GlassworkError(f"target token id {spec} is not in the vocabulary (0..{model.vocab_size - 1})")
            out.append(Target(str(spec), _demeaned(W_U, mean, spec), spec, float(probs[spec]), float(probs[spec])))
        elif isinstance(spec, str):
            tok = _token_id(model, spec)
            if tok is not None:
                out.append(Target(spec, _demeaned(W_U, mean, tok), tok, float(probs[tok]), float(probs[tok])))
                continue
            parts = spec.split("-")
            pair = [_token_id(model, x) for x in parts] if len(parts) == 2 else []
            if len(pair) == 2 and None not in pair:
                a, b = pair
                vec = _demeaned(W_U, mean, a) - _demeaned(W_U, mean, b)
                out.append(Target(spec, vec, -1, float(probs[a] - probs[b])))
                continue
            enc = model.tokenizer(spec, add_special_tokens=False)["input_ids"] if model.tokenizer else []
            raise GlassworkError(f"target '{spec}' is not one token of the vocabulary (it tokenizes to {enc}); give a "
                                 f"single token such as ' Paris', or 'A-B' with two single tokens for a logit difference")
        else:
            raise GlassworkError(f"target must be a token string, 'A-B', a token id or a [d_model] tensor "
                                 f"(got {type(spec).__name__})")
    return out
