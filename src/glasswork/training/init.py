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
                           residual: torch.Tensor, generator: torch.Generator) -> None:
    """Latent i starts as token t_i of the sample (_write_seeds, t_i drawn without replacement): every latent fires at
    first, on inputs like its own token.

    W_enc [d_in, F], b_enc [F], W_dec [F, d_out] are written in place; x [n, d_in], residual [n, d_out], n >= F."""
    n, F = x.shape[0], W_dec.shape[0]
    if n < F:
        raise GlassworkError(f"init 'data': {n} sample tokens for {F} latents; it needs at least one token per latent")
    pick = torch.randperm(n, generator=generator)[:F]
    mu = x.mean(0)
    _write_seeds(W_enc, b_enc, W_dec, torch.arange(F), (x[pick] - mu).float(), residual[pick].float(), mu.float())


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
