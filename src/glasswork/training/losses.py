"""Training forward passes and losses for each activation function. Each returns (loss, stats) where stats hold
detached tensors: fvu, l0, fired [d_sae] (bool: which latents fired in this batch).

Inputs here are already normalized (unit mean squared norm); the dictionary sees exactly what it will see after the
scale is folded into its weights at save time."""
from __future__ import annotations

import torch

from ..dictionaries.activations import batch_topk, jumprelu, step
from ..dictionaries.clt import CrossLayerTranscoder
from ..dictionaries.coder import SparseCoder
from ..dictionaries.sparse import sparse_decode, topk_encode, topk_encode_with_aux
from ..io import GlassworkError


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def total_variance(target: torch.Tensor) -> torch.Tensor:
    """||x - mean(x)||^2 over the batch: FVU's denominator. target: [batch, d] (or [batch, L, d]: mean per layer)."""
    target = _at_least_fp32(target)
    return (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)


def fvu(target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """||x - x_hat||^2 / ||x - mean(x)||^2 over the batch (about the batch mean; not scaled by batch size).
    target, recon: [batch, d] (or [batch, L, d]: the mean is per layer, the ratio over everything)."""
    return (_at_least_fp32(target) - _at_least_fp32(recon)).pow(2).sum() / total_variance(target)


def _aux_k(residual: torch.Tensor, aux_values: torch.Tensor, aux_indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """AuxK: how well the top dead latents (aux_values, aux_indices [batch, k_aux]) reconstruct the main
    reconstruction's error residual [batch, d_out]; normalized like FVU."""
    recon = sparse_decode(aux_values, aux_indices, W_dec)
    return (residual - recon).pow(2).sum() / total_variance(residual)


def matryoshka_prefixes(sizes: list[int], d_sae: int | None) -> list[int]:
    """Matryoshka prefix sizes m_1 < ... < m_G checked, with d_sae added as the last when missing ([] for plain
    training). d_sae None (not known yet): the checks that do not need it."""
    sizes = list(sizes)
    if not sizes:
        return []
    if any(isinstance(m, bool) or not isinstance(m, int) or m <= 0 for m in sizes):
        raise GlassworkError(f"train config: matryoshka prefix sizes must be positive integers (got {sizes})")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise GlassworkError(f"train config: matryoshka prefix sizes must be strictly increasing (got {sizes})")
    if d_sae is None:
        return sizes
    if sizes[-1] > d_sae:
        raise GlassworkError(f"train config: matryoshka prefix size {sizes[-1]} exceeds d_sae={d_sae} (got {sizes}; "
                             f"each must be at most d_sae)")
    return sizes if sizes[-1] == d_sae else sizes + [d_sae]


def _entry_bar(values: torch.Tensor) -> torch.Tensor:
    """The median over tokens of the smallest positive value kept in a token's top k: about what a latent's
    pre-activation must reach to fire (values [batch, k] after ReLU; tokens with none positive left out; 0 if none)."""
    smallest = values.detach().float().masked_fill(values <= 0, float("inf")).min(-1).values
    smallest = smallest[smallest.isfinite()]
    return smallest.median() if smallest.numel() else torch.zeros((), device=values.device)


def coder_loss(coder: SparseCoder, x: torch.Tensor, y: torch.Tensor, tc, k: int | None = None) -> tuple[torch.Tensor, dict]:
    """One SAE/transcoder step. x [batch, d_in] input, y [batch, d_out] target (y is x for an SAE); k: the step's
    active latents per token (topk, batchtopk; None: the dictionary's own k).
    tc: TrainConfig (l1_coeff, l0_coeff, aux_k, aux_coeff, bandwidth, matryoshka, revive_rate). Extra state:
    coder.dead (bool [d_sae]).
    Matryoshka: the codes are computed once; the loss is the mean over prefixes m_g of the squared error of the
    reconstruction from latents < m_g alone (plus the activation's own penalty / AuxK, from the full reconstruction)."""
    cfg = coder.cfg
    k = k or cfg.k
    shift = coder.b_dec if cfg.b_dec_in else None
    skip = coder.skip_term(x)
    extra = torch.zeros((), device=x.device)
    dead = getattr(coder, "dead", None)
    use_aux = cfg.activation == "topk" and tc.aux_coeff > 0 and dead is not None and bool(dead.any())
    if cfg.activation == "topk":  # sparse backward; AuxK's dead-latent candidates come from the same encoder matmul
        values, indices, aux_values, aux_indices = topk_encode_with_aux(
            x, coder.W_enc, coder.b_enc, k, shift, dead if use_aux else None, tc.aux_k or x.shape[-1] // 2)
        recon = sparse_decode(values, indices, coder.W_dec) + coder.b_dec + skip
        fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[values > 0]] = True
        l0 = (values > 0).sum(-1).float().mean()
        bar = _entry_bar(values) if tc.revive_rate else None
    else:
        pre = (x - shift if shift is not None else x) @ coder.W_enc + coder.b_enc  # [batch, d_sae]
        if cfg.activation == "relu":
            codes = pre.relu()
            extra = tc.l1_coeff * (codes * coder.W_dec.norm(dim=-1)).sum(-1).mean()
        elif cfg.activation == "jumprelu":
            codes = jumprelu(pre, coder.threshold, tc.bandwidth)
            extra = tc.l0_coeff * step(pre, coder.threshold, tc.bandwidth).sum(-1).mean()
        else:  # batchtopk: the top k * batch over the whole batch; track the threshold for inference
            codes = batch_topk(pre, k)
            active = codes[codes > 0]
            lowest = active.min().detach() if active.numel() else torch.zeros((), device=x.device)
            if active.numel():
                coder.threshold_estimate.append(lowest)
            bar = lowest.float()  # the batch's own entry bar: one threshold for all its tokens
        nz = codes > 0
        recon = codes @ coder.W_dec + coder.b_dec + skip
        fired = nz.any(0)
        l0 = nz.sum(-1).float().mean()
    sq_err = (recon - y).pow(2).sum()
    prefixes = matryoshka_prefixes(tc.matryoshka, cfg.d_sae)
    nested = sq_err
    for m in prefixes[:-1]:  # the last prefix is the full dictionary: recon itself
        if cfg.activation == "topk":  # the same k per token with the ones >= m zeroed: the backward stays sparse
            part = sparse_decode(values.masked_fill(indices >= m, 0), indices, coder.W_dec)
        else:
            part = codes[:, :m] @ coder.W_dec[:m]
        nested = nested + (part + coder.b_dec + skip - y).pow(2).sum()
    loss = nested / (x.shape[0] * max(1, len(prefixes))) + extra  # squared error: sum over d, mean over tokens, prefixes
    if use_aux:
        loss = loss + tc.aux_coeff * _aux_k((y - recon).detach(), aux_values, aux_indices, coder.W_dec)
    stats = {"fvu": _at_least_fp32(sq_err.detach()) / total_variance(y), "l0": l0.detach(), "fired": fired}
    if tc.revive_rate:  # topk / batchtopk only (TrainConfig checks)
        stats["bar"] = bar
    return loss, stats


def clt_loss(clt: CrossLayerTranscoder, x: torch.Tensor, y: torch.Tensor, tc,
             k: int | None = None) -> tuple[torch.Tensor, dict]:
    """x [batch, L, d_in] MLP inputs, y [batch, L, d_out] MLP outputs. TopK is per layer and token; k: the step's
    (None: the CLT's own)."""
    if tc.matryoshka:
        raise GlassworkError(f"train config: matryoshka={tc.matryoshka} is for SAEs and transcoders, not kind 'clt'")
    cfg = clt.cfg
    k = k or cfg.k
    L = cfg.n_layers
    extra = torch.zeros((), device=x.device)
    recon = clt.b_dec.expand(x.shape[0], -1, -1)
    fired = torch.zeros(L, cfg.d_sae, dtype=torch.bool, device=x.device)
    bar = torch.zeros(L, device=x.device)  # --revive-rate: each layer's entry bar
    l0 = torch.zeros((), device=x.device)
    outs = [[] for _ in range(L)]
    W_enc, b_enc = clt.W_enc.unbind(0), clt.b_enc.unbind(0)  # one backward for all layers (indexing: L zero-fills)
    for i in range(L):
        if cfg.activation == "topk":
            values, indices = topk_encode(x[:, i], W_enc[i], b_enc[i], k)
            w = clt.W_dec[i]  # [F, n_i, d_out]
            dec = sparse_decode(values, indices, w.reshape(w.shape[0], -1)).view(x.shape[0], w.shape[1], -1)
            fired[i, indices[values > 0]] = True
            l0 = l0 + (values > 0).sum(-1).float().mean()
            if tc.revive_rate:
                bar[i] = _entry_bar(values)
        else:
            pre = x[:, i] @ W_enc[i] + b_enc[i]
            if cfg.activation == "relu":
                codes = pre.relu()
                norms = clt.W_dec[i].pow(2).sum((1, 2)).sqrt()
                extra = extra + tc.l1_coeff * (codes * norms).sum(-1).mean()
            elif cfg.activation == "jumprelu":
                codes = jumprelu(pre, clt.threshold[i], tc.bandwidth)
                extra = extra + tc.l0_coeff * step(pre, clt.threshold[i], tc.bandwidth).sum(-1).mean()
            else:
                codes = batch_topk(pre, k)
            dec = torch.einsum("bf,fnd->bnd", codes, clt.W_dec[i])
            fired[i] = (codes > 0).any(0)
            l0 = l0 + (codes > 0).sum(-1).float().mean()
        for j, part in enumerate(dec.unbind(1)):  # unbind: one stacked backward (dec[:, j]: a zero-fill per j)
            outs[i + j].append(part)
    recon = recon + torch.stack([torch.stack(o).sum(0) for o in outs], 1) + clt.skip_term(x)
    sq_err = (recon - y).pow(2).sum()
    nmse = _at_least_fp32(sq_err.detach()) / total_variance(y)
    return sq_err / x.shape[0] + extra, {"fvu": nmse, "l0": (l0 / L).detach(), "fired": fired.flatten(), "bar": bar}
