"""Initialization from data, before the first step: where the decoder bias starts, a transcoder's linear skip fitted
in closed form, and latents seeded on real tokens.

A short CPU run has a few hundred steps; every one spent learning what a least-squares solve or a data sample gives
at once is lost. The measurements behind each of these are in benchmarks/RESULTS.md ("Why the transcoders explain
little")."""
from __future__ import annotations

import torch

from ..io import GlassworkError


def geometric_median(x: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Weiszfeld's algorithm on x [n, d] (robust to the outliers a mean would follow)."""
    median = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - median).norm(dim=-1).clamp_min(1e-8)
        median = (w[:, None] * x).sum(0) / w.sum()
    return median


def fit_linear(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares y ~ x @ W + b, solved in float64 on centred data: (W [d_in, d_out], b [d_out]).

    x [n, d_in], y [n, d_out]. `ridge` adds ridge * mean(diag(X^T X)) to the diagonal: a relative damping that only
    matters for directions the data barely spans (0: the plain least-squares solution)."""
    n, d_in = x.shape
    if n <= d_in:
        raise GlassworkError(f"skip fit: {n} samples for d_in = {d_in}: a least-squares fit of the skip needs more "
                             f"samples than input dimensions (raise init_tokens above {d_in})")
    x64, y64 = x.double(), y.double()
    mx, my = x64.mean(0), y64.mean(0)
    xc = x64 - mx
    gram = xc.T @ xc  # [d_in, d_in]
    if ridge:
        gram.diagonal().add_(ridge * gram.diagonal().mean())
    W = torch.linalg.solve(gram, xc.T @ (y64 - my))
    return W.to(x.dtype), (my - mx @ W).to(x.dtype)


def _write_seeds(W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, latents: torch.Tensor, u: torch.Tensor,
                 r: torch.Tensor, mu: torch.Tensor, enc_norm: float | None = None) -> None:
    """Latent latents[j] starts on one token: decoder row = direction of r[j] (what is left to explain there),
    encoder = direction of u[j] (the centred input) scaled so its pre-activation there is |r[j]| (or of norm enc_norm);
    mu [d_in] the centre. u [n, d_in], r [n, d_out], latents [n] (long)."""
    r_norm = r.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    u_sq = u.pow(2).sum(-1, keepdim=True).clamp_min(1e-8)
    # [n, d_in]: enc_j . u_j = |r_j|, or |enc_j| = enc_norm
    enc = u * (r_norm / u_sq if enc_norm is None else enc_norm / u_sq.sqrt())
    W_dec[latents] = r / r_norm
    W_enc[:, latents] = enc.T
    b_enc[latents] = -(mu @ enc.T)


@torch.no_grad()
def seed_latents_on_tokens(W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, x: torch.Tensor,
                           residual: torch.Tensor, generator: torch.Generator, spread: bool = False) -> None:
    """Latent i starts as token t_i of the sample (_write_seeds, t_i drawn without replacement; spread: by
    spread_tokens): every latent fires at first, on inputs like its own token.

    W_enc [d_in, F], b_enc [F], W_dec [F, d_out] are written in place; x [n, d_in], residual [n, d_out], n >= F."""
    n, F = x.shape[0], W_dec.shape[0]
    if n < F:
        raise GlassworkError(f"init 'data': {n} sample tokens for {F} latents; it needs at least one token per latent")
    mu = x.mean(0)
    pick = spread_tokens(x - mu, F, generator) if spread else torch.randperm(n, generator=generator)[:F]
    _write_seeds(W_enc, b_enc, W_dec, torch.arange(F), (x[pick] - mu).float(), residual[pick].float(), mu.float())


@torch.no_grad()
def spread_tokens(u: torch.Tensor, m: int, generator: torch.Generator, block: int = 64) -> torch.Tensor:
    """m distinct row indices of u [n, d], drawn k-means++-style in blocks: each block without replacement with
    probability proportional to the squared distance of each row's direction to the nearest direction drawn before
    (the first block uniformly). Blocks keep it to m / block matrix products instead of m matrix-vector ones."""
    n = u.shape[0]
    v = u.float() / u.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [n, d]
    dist2 = torch.full((n,), 4.0, dtype=torch.float64)  # squared distance between unit vectors, at most 4
    free = torch.ones(n, dtype=torch.bool)
    out = []
    for start in range(0, m, block):
        # a floor keeps every undrawn row drawable: duplicates of a drawn row have distance 0
        weight = torch.where(free, dist2.clamp_min(1e-12), 0.0)
        idx = torch.multinomial(weight, min(block, m - start), replacement=False, generator=generator)
        free[idx] = False
        out.append(idx)
        nearest = (v @ v[idx].T).amax(1).double()  # [n] cosine to the nearest of this block
        dist2 = torch.minimum(dist2, (2 - 2 * nearest).clamp_min(0))
    return torch.cat(out)


@torch.no_grad()
def reseed_latents(W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, latents: torch.Tensor,
                   x: torch.Tensor, error: torch.Tensor, generator: torch.Generator,
                   enc_norm: float | None = None) -> torch.Tensor:
    """Dead latents start again as seeds (_write_seeds) on tokens of a batch, drawn without replacement with
    probability proportional to the squared reconstruction error there: they start where the dictionary explains
    least. At most one latent per token: returns the latents rewritten (the first of `latents` when there are more
    latents than tokens with an error).

    latents [m] (long); x [n, d_in] the batch's encoder inputs; error [n, d_out] = target - reconstruction."""
    weight = error.double().pow(2).sum(-1)  # [n]
    m = min(len(latents), int((weight > 0).sum()))
    if m == 0:
        return latents[:0]
    pick = torch.multinomial(weight, m, replacement=False, generator=generator)
    mu = x.mean(0).float()
    _write_seeds(W_enc, b_enc, W_dec, latents[:m], x[pick].float() - mu, error[pick].float(), mu, enc_norm)
    return latents[:m]


@torch.no_grad()
def fit_code_scale(W_enc: torch.Tensor, b_enc: torch.Tensor, recon: torch.Tensor, target: torch.Tensor) -> float:
    """Scale the encoder by the least-squares c of target ~ c * recon and return c (1 if c <= 0).

    Seeded latents each fire at full strength on inputs like their token, so k of them together overshoot (FVU ~10
    at step 0 without this, measured in benchmarks/RESULTS.md). Scaling W_enc and b_enc by c > 0 scales every
    pre-activation by c: TopK keeps the same latents and the code, hence recon, scales by c exactly.
    recon [n, d_out] is what the codes alone decode to, target [n, d_out] what they should (after bias and skip)."""
    c = float((recon.double() * target.double()).sum() / (recon.double().pow(2).sum()).clamp_min(1e-30))
    if c <= 0:
        return 1.0
    W_enc.mul_(c)
    b_enc.mul_(c)
    return c
