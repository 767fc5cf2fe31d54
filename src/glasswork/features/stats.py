"""One pass over the activations, all features at once: firing counts, histograms, top contexts, quantile samples,
never-firing contexts, top tokens and co-firing. Every update is batched over features and tokens (no loop over
features). Decoder-only statistics (logit effects, nearest features) are the functions at the bottom.

Shapes: F = d_sae features, B contexts per batch, S tokens per context, V vocabulary."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class StatsConfig:
    top_k: int = 20  # top contexts kept per feature (by the feature's max activation in the context)
    n_quantiles: int = 5  # quantile intervals of the sampled firing contexts
    per_quantile: int = 4  # samples shown per interval (reservoir of n_quantiles * per_quantile contexts)
    n_zero: int = 8  # contexts where the feature never fires (negatives for label scoring)
    n_bins: int = 48  # log-spaced histogram bins between bin_lo and bin_hi (outside values go to the end bins)
    bin_lo: float = 1e-3
    bin_hi: float = 1e3
    n_logits: int = 10
    n_neighbors: int = 10
    n_cofiring: int = 10
    n_top_tokens: int = 10
    dense_cofiring_max_f: int = 8192  # up to this many features co-firing counts are a dense [F, F] int32 table
    seed: int = 0


class SparseCounter:
    """count and sum of values per int64 key, merged lazily (torch.unique) so adding a batch is cheap."""

    def __init__(self, merge_every: int = 8_000_000):
        self.keys = torch.empty(0, dtype=torch.long)
        self.count = torch.empty(0, dtype=torch.long)
        self.total = torch.empty(0, dtype=torch.float64)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._n_pending, self._merge_every = 0, merge_every

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._pending.append((keys, values.double()))
        self._n_pending += keys.numel()
        if self._n_pending >= self._merge_every:
            self.merge()

    def merge(self) -> "SparseCounter":
        if not self._pending:
            return self
        keys = torch.cat([self.keys] + [k for k, _ in self._pending])
        count = torch.cat([self.count] + [torch.ones_like(k) for k, _ in self._pending])
        total = torch.cat([self.total] + [v for _, v in self._pending])
        self.keys, inverse = torch.unique(keys, return_inverse=True)
        self.count = torch.zeros_like(self.keys).index_add_(0, inverse, count)
        self.total = torch.zeros(len(self.keys), dtype=torch.float64).index_add_(0, inverse, total)
        self._pending, self._n_pending = [], 0
        return self


def top_per_group(group: torch.Tensor, score: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the (up to) n highest-scoring entries of each group, grouped and best first."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    g = group[order]
    starts = torch.searchsorted(g, g, right=False)  # first index of each entry's group
    rank = torch.arange(len(g)) - starts
    return order[rank < n]


def _keep_best(kept: dict[str, torch.Tensor], cand: dict[str, torch.Tensor], key: str) -> None:
    """Keep the K best by `key` per feature among kept [F, K] and candidates [F, B] (one topk), in place: each
    entering candidate overwrites an evicted slot, so only entering rows are copied (cand['acts'] is [B, S, F])."""
    F, K = kept[key].shape
    _, sel = torch.cat([kept[key], cand[key]], dim=1).topk(K, dim=1)  # [F, K] of K + B
    chosen = torch.zeros(F, K + cand[key].shape[1], dtype=torch.bool).scatter_(1, sel, True)
    n_new = chosen[:, K:].sum(1)  # [F] entering candidates = evicted slots
    width = int(n_new.max())
    if width == 0:
        return
    slots = chosen[:, :K].to(torch.uint8).argsort(dim=1, stable=True)[:, :width]  # evicted slots first
    picks = (~chosen[:, K:]).to(torch.uint8).argsort(dim=1, stable=True)[:, :width]  # entering candidates first
    valid = torch.arange(width)[None] < n_new[:, None]  # [F, width]
    f_idx = torch.arange(F)[:, None].expand(F, width)[valid]
    slot, b = slots[valid], picks[valid]
    for name, t in kept.items():
        new = cand[name][b, :, f_idx] if name == "acts" else cand[name][f_idx, b]
        t[f_idx, slot] = new.to(t.dtype)


class FeatureStats:
    """Running statistics of F features over contexts of S tokens. `update(acts, tokens)` per batch, then `finish()`."""

    def __init__(self, d_sae: int, ctx_len: int, vocab_size: int, cfg: StatsConfig = StatsConfig()):
        F, S, self.cfg = d_sae, ctx_len, cfg
        self.F, self.S, self.V = F, S, vocab_size
        self.n_tokens = self.n_contexts = 0
        self.n_fired = torch.zeros(F, dtype=torch.long)
        self.sum_act = torch.zeros(F, dtype=torch.float64)
        self.max_act = torch.zeros(F)
        self.edges = torch.logspace(math.log10(cfg.bin_lo), math.log10(cfg.bin_hi), cfg.n_bins + 1)
        self.hist = torch.zeros(F * cfg.n_bins, dtype=torch.long)
        n_res = cfg.n_quantiles * cfg.per_quantile

        def slots(n, with_acts=True):
            s = {"key": torch.full((F, n), -math.inf), "val": torch.zeros(F, n), "ctx": torch.full((F, n), -1),
                 "pos": torch.zeros(F, n, dtype=torch.long)}
            if with_acts:
                s["acts"] = torch.zeros(F, n, S, dtype=torch.float16)
            return s

        self.top, self.sample, self.zero = slots(cfg.top_k), slots(n_res), slots(cfg.n_zero, with_acts=False)
        self.tokens = SparseCounter()  # key feature * V + token id
        self.dense_cofiring = F <= cfg.dense_cofiring_max_f
        self.cofiring = torch.zeros(F * F, dtype=torch.int32) if self.dense_cofiring else SparseCounter()
        self.gen = torch.Generator().manual_seed(cfg.seed)

    @torch.no_grad()
    def update(self, acts: torch.Tensor, tokens: torch.Tensor) -> None:
        """acts: [B, S, F] feature activations of B contexts; tokens: [B, S] their token ids."""
        B, S, F = acts.shape
        acts = acts.float()
        flat = acts.reshape(B * S, F)  # [N, F]
        tok_idx, feat_idx = (flat > 0).nonzero(as_tuple=True)  # firing (token, feature) pairs, row-major
        values = flat[tok_idx, feat_idx]
        self.n_fired += torch.bincount(feat_idx, minlength=F)
        self.sum_act += flat.sum(0, dtype=torch.float64)
        self.max_act = torch.maximum(self.max_act, flat.amax(0))
        bins = torch.bucketize(values, self.edges[1:-1])
        self.hist += torch.bincount(feat_idx * self.cfg.n_bins + bins, minlength=F * self.cfg.n_bins)
        self.tokens.add(feat_idx * self.V + tokens.reshape(-1)[tok_idx], values)
        self._add_cofiring(tok_idx, feat_idx, B * S)

        ctx_ids = torch.arange(self.n_contexts, self.n_contexts + B).expand(F, B)
        ctx_max, ctx_pos = acts.max(dim=1)  # [B, F]
        cand = {"val": ctx_max.T, "ctx": ctx_ids, "pos": ctx_pos.T, "acts": acts}
        _keep_best(self.top, {**cand, "key": ctx_max.T}, "key")
        # Reservoir by random priority: a uniform sample of the firing contexts, and of the silent ones.
        u = torch.rand(F, B, generator=self.gen)
        fires = ctx_max.T > 0
        _keep_best(self.sample, {**cand, "key": torch.where(fires, u, -math.inf)}, "key")
        silent = {k: v for k, v in cand.items() if k != "acts"}
        _keep_best(self.zero, {**silent, "key": torch.where(fires, -math.inf, u)}, "key")
        self.n_tokens += B * S
        self.n_contexts += B

    def _add_cofiring(self, tok_idx: torch.Tensor, feat_idx: torch.Tensor, n_tok: int) -> None:
        """Count pairs of features firing on the same token: pad each token's firing features into rows, pair them."""
        if len(tok_idx) == 0:
            return
        per_tok = torch.bincount(tok_idx, minlength=n_tok)
        starts = torch.cumsum(per_tok, 0) - per_tok
        rank = torch.arange(len(tok_idx)) - starts[tok_idx]
        width = int(per_tok.max())
        if self.dense_cofiring and width > 64:  # many features per token: a matmul beats listing pairs
            fire = torch.zeros(n_tok, self.F)
            fire[tok_idx, feat_idx] = 1.0
            joint = (fire.T @ fire).to(torch.int32)  # exact: counts <= n_tok < 2**24
            joint.fill_diagonal_(0)
            self.cofiring += joint.flatten()
            return
        padded = torch.full((n_tok, width), -1, dtype=torch.long)
        padded[tok_idx, rank] = feat_idx
        chunk = max(1, 4_000_000 // (width * width))  # bound the [chunk, width, width] pair tensor
        for lo in range(0, n_tok, chunk):
            rows = padded[lo:lo + chunk]
            a, b = rows[:, :, None], rows[:, None, :]
            ok = (a >= 0) & (b >= 0) & (a != b)
            keys = (a * self.F + b)[ok]
            if self.dense_cofiring:
                self.cofiring.index_add_(0, keys, torch.ones(len(keys), dtype=torch.int32))
            else:
                self.cofiring.add(keys, torch.ones(len(keys)))

    @torch.no_grad()
    def finish(self) -> dict:
        """Per-feature results: tensors with a leading F dimension, plus token and co-firing tables."""
        cfg, F = self.cfg, self.F
        fired = self.n_fired.clamp(min=1)
        out = {"n_fired": self.n_fired, "freq": self.n_fired.double() / max(self.n_tokens, 1),
               "max_act": self.max_act, "mean_act": self.sum_act / fired, "hist": self.hist.view(F, cfg.n_bins),
               "hist_edges": self.edges, "top": self.top, "zero": self.zero}
        # Quantile interval of each sampled context, by its rank among this feature's samples (0 = lowest).
        val = torch.where(self.sample["key"] > -math.inf, self.sample["val"], math.inf)
        rank = val.argsort(dim=1).argsort(dim=1)
        n_valid = (self.sample["key"] > -math.inf).sum(1, keepdim=True).clamp(min=1)
        out["sample"] = {**self.sample, "quantile": (rank * cfg.n_quantiles) // n_valid}

        toks = self.tokens.merge()
        feat, tok = toks.keys // self.V, toks.keys % self.V
        keep = top_per_group(feat, toks.count.double() + toks.total / 1e9, cfg.n_top_tokens)
        out["top_tokens"] = (feat[keep], tok[keep], toks.count[keep], (toks.total / toks.count)[keep])

        if self.dense_cofiring:
            counts = self.cofiring.view(F, F)
            n, idx = counts.topk(min(cfg.n_cofiring, F), dim=1)
            rows = torch.arange(F).repeat_interleave(n.shape[1])
            ok = n.flatten() > 0
            out["cofiring"] = (rows[ok], idx.flatten()[ok], n.flatten()[ok].long())
        else:
            c = self.cofiring.merge()
            a, b = c.keys // F, c.keys % F
            keep = top_per_group(a, c.count.double(), cfg.n_cofiring)
            out["cofiring"] = (a[keep], b[keep], c.count[keep])
        return out


@torch.no_grad()
def logit_effects(W_dec: torch.Tensor, W_U: torch.Tensor, n: int, block: int = 1024):
    """Top and bottom n entries of W_dec[f] @ W_U for every feature: (top_values, top_ids, bottom_values, bottom_ids),
    each [F, n]. W_dec: [F, d], W_U: [d, V]; done in feature blocks so [block, V] is the largest temporary."""
    tv, ti, bv, bi = [], [], [], []
    W_U = W_U.float()
    for lo in range(0, W_dec.shape[0], block):
        logits = W_dec[lo:lo + block].float() @ W_U  # [block, V]
        v, i = logits.topk(n, dim=1)
        tv.append(v), ti.append(i)
        v, i = logits.topk(n, dim=1, largest=False)
        bv.append(v), bi.append(i)
    return torch.cat(tv), torch.cat(ti), torch.cat(bv), torch.cat(bi)


@torch.no_grad()
def decoder_neighbors(W_dec: torch.Tensor, n: int, block: int = 1024):
    """The n features with the most similar decoder direction (cosine), itself excluded: (cos [F, n], ids [F, n])."""
    unit = torch.nn.functional.normalize(W_dec.float(), dim=1)  # [F, d]
    F = unit.shape[0]
    n = min(n, F - 1)
    cs, ids = [], []
    for lo in range(0, F, block):
        cos = unit[lo:lo + block] @ unit.T  # [block, F]
        rows = torch.arange(lo, min(lo + block, F))
        cos[torch.arange(len(rows)), rows] = -math.inf
        c, i = cos.topk(n, dim=1)
        cs.append(c), ids.append(i)
    return torch.cat(cs), torch.cat(ids)
