"""Training forward passes and losses for each activation function. Each returns (loss, stats) where stats hold
detached tensors: fvu, l0, fired [d_sae] (bool: which latents fired in this batch).

Inputs here are already normalized (unit mean squared norm); the dictionary sees exactly what it will see after the
scale is folded into its weights at save time."""
from __future__ import annotations

import torch

from ..dictionaries.activations import batch_topk, jumprelu, step
from ..dictionaries.clt import CrossLayerTranscoder
from ..dictionaries.coder import SparseCoder
from ..dictionaries.sparse import sparse_decode, topk_encode


def total_variance(target: torch.Tensor) -> torch.Tensor:
    """||x - mean(x)||^2 over the batch: FVU's denominator. target: [batch, d] (or [batch, L, d]: mean per layer)."""
    target = target.float()
    return (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)


def fvu(target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """||x - x_hat||^2 / ||x - mean(x)||^2 over the batch (about the batch mean; not scaled by batch size).
    target, recon: [batch, d] (or [batch, L, d]: the mean is per layer, the ratio over everything)."""
    return (target.float() - recon.float()).pow(2).sum() / total_variance(target)


def _aux_k(coder: SparseCoder, x_in: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK: reconstruct the main reconstruction's error from the top k_aux dead latents; normalized like FVU."""
    dead_idx = dead.nonzero().squeeze(-1)  # [n_dead]
    k_aux = min(k_aux, dead_idx.numel())
    pre = x_in @ coder.W_enc[:, dead_idx] + coder.b_enc[dead_idx]  # [batch, n_dead]: only the dead columns
    values, local = pre.topk(k_aux, dim=-1)
    values, local = values.relu(), local
    recon = sparse_decode(values, local, coder.W_dec[dead_idx])
    return (residual - recon).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)


def coder_loss(coder: SparseCoder, x: torch.Tensor, y: torch.Tensor, tc) -> tuple[torch.Tensor, dict]:
    """One SAE/transcoder step. x [batch, d_in] input, y [batch, d_out] target (y is x for an SAE).
    tc: TrainConfig (l1_coeff, l0_coeff, aux_k, aux_coeff, bandwidth). Extra state: coder.dead (bool [d_sae])."""
    cfg = coder.cfg
    shift = coder.b_dec if cfg.b_dec_in else None
    skip = coder.skip_term(x)
    extra = torch.zeros((), device=x.device)
    if cfg.activation == "topk":
        values, indices = topk_encode(x, coder.W_enc, coder.b_enc, cfg.k, shift)  # sparse backward
        recon = sparse_decode(values, indices, coder.W_dec) + coder.b_dec + skip
        fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[values > 0]] = True
        l0 = (values > 0).sum(-1).float().mean()
    else:
        pre = (x - shift if shift is not None else x) @ coder.W_enc + coder.b_enc  # [batch, d_sae]
        if cfg.activation == "relu":
            codes = pre.relu()
            extra = tc.l1_coeff * (codes * coder.W_dec.norm(dim=-1)).sum(-1).mean()
        elif cfg.activation == "jumprelu":
            codes = jumprelu(pre, coder.threshold, tc.bandwidth)
            extra = tc.l0_coeff * step(pre, coder.threshold, tc.bandwidth).sum(-1).mean()
        else:  # batchtopk: the top k * batch over the whole batch; track the threshold for inference
            codes = batch_topk(pre, cfg.k)
            active = codes[codes > 0]
            if active.numel():
                coder.threshold_estimate.append(active.min().detach())
        nz = codes > 0
        recon = codes @ coder.W_dec + coder.b_dec + skip
        fired = nz.any(0)
        l0 = nz.sum(-1).float().mean()
    sq_err = (recon - y).pow(2).sum()
    loss = sq_err / x.shape[0] + extra  # squared error summed over d, mean over tokens
    if cfg.activation == "topk" and tc.aux_coeff > 0 and getattr(coder, "dead", None) is not None and coder.dead.any():
        x_in = x - shift if shift is not None else x
        loss = loss + tc.aux_coeff * _aux_k(coder, x_in, (y - recon).detach(), coder.dead, tc.aux_k or x.shape[-1] // 2)
    return loss, {"fvu": sq_err.detach().float() / total_variance(y), "l0": l0.detach(), "fired": fired}


def clt_loss(clt: CrossLayerTranscoder, x: torch.Tensor, y: torch.Tensor, tc) -> tuple[torch.Tensor, dict]:
    """x [batch, L, d_in] MLP inputs, y [batch, L, d_out] MLP outputs. TopK is per layer and token."""
    cfg = clt.cfg
    L = cfg.n_layers
    extra = torch.zeros((), device=x.device)
    recon = clt.b_dec.expand(x.shape[0], -1, -1)
    fired = torch.zeros(L, cfg.d_sae, dtype=torch.bool, device=x.device)
    l0 = torch.zeros((), device=x.device)
    outs = [[] for _ in range(L)]
    W_enc, b_enc = clt.W_enc.unbind(0), clt.b_enc.unbind(0)  # one backward for all layers (indexing: L zero-fills)
    for i in range(L):
        if cfg.activation == "topk":
            values, indices = topk_encode(x[:, i], W_enc[i], b_enc[i], cfg.k)
            w = clt.W_dec[i]  # [F, n_i, d_out]
            dec = sparse_decode(values, indices, w.reshape(w.shape[0], -1)).view(x.shape[0], w.shape[1], -1)
            fired[i, indices[values > 0]] = True
            l0 = l0 + (values > 0).sum(-1).float().mean()
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
                codes = batch_topk(pre, cfg.k)
            dec = torch.einsum("bf,fnd->bnd", codes, clt.W_dec[i])
            fired[i] = (codes > 0).any(0)
            l0 = l0 + (codes > 0).sum(-1).float().mean()
        for j, part in enumerate(dec.unbind(1)):  # unbind: one stacked backward (dec[:, j]: a zero-fill per j)
            outs[i + j].append(part)
    recon = recon + torch.stack([torch.stack(o).sum(0) for o in outs], 1)
    sq_err = (recon - y).pow(2).sum()
    nmse = sq_err.detach().float() / total_variance(y)
    return sq_err / x.shape[0] + extra, {"fvu": nmse, "l0": (l0 / L).detach(), "fired": fired.flatten()}
