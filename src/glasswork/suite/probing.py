"""Sparse probing (Gurnee et al., 2023; SAEBench): can k dictionary latents classify what the model knows?

For each binary task: the model's activations at the dictionary's input hook, mean-pooled per document ([n, d]),
and the dictionary's codes of every token, mean-pooled the same way ([n, d_sae]). On the training split the k
latents with the largest |mean(positive) - mean(negative)| are chosen, and a logistic probe on just those k is
scored on the test split. The same is done with k raw dimensions ("llm top-k") and with all of them ("llm"), the
ceiling. A dictionary whose top-1 latent nearly matches the full probe has a feature for the concept.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..directions import fit_probe
from ..errors import GlassworkError
from ..hooks import capture
from ..models import padded
from ..progress import progress


def top_by_mean_difference(x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [k] of the columns of x [n, d] with the largest |mean over y=1 - mean over y=0| (ties: lower index)."""
    if not (y == 1).any() or not (y == 0).any():
        raise GlassworkError("sparse probing: the training split needs examples of both classes")
    diff = (x[y == 1].double().mean(0) - x[y == 0].double().mean(0)).abs()
    return torch.sort(-diff, stable=True).indices[:k]


def probe_test_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                        l2: float = 1e-3) -> float:
    """Test accuracy of a logistic probe fitted on the training split (directions.fit_probe)."""
    w, b = fit_probe(x_train, y_train, l2)
    return float(((x_test.float() @ w + b > 0).float() == y_test.float()).float().mean())


def sparse_probing(acts: torch.Tensor, codes: torch.Tensor, y: torch.Tensor, train: torch.Tensor,
                   test: torch.Tensor, ks: Sequence[int] = (1, 2, 5)) -> dict:
    """acts [n, d], codes [n, d_sae], labels y [n]; train / test: index tensors. Accuracies of the full probe on
    acts, and of probes on the top-k acts dimensions and top-k latents; the chosen latents per k."""
    out = {"llm": probe_test_accuracy(acts[train], y[train], acts[test], y[test]), "llm_top_k": {}, "sae_top_k": {},
           "latents": {}}
    for k in ks:
        dims = top_by_mean_difference(acts[train], y[train], k)
        out["llm_top_k"][k] = probe_test_accuracy(acts[train][:, dims], y[train], acts[test][:, dims], y[test])
        lat = top_by_mean_difference(codes[train], y[train], k)
        out["sae_top_k"][k] = probe_test_accuracy(codes[train][:, lat], y[train], codes[test][:, lat], y[test])
        out["latents"][k] = lat.tolist()
    return out


@torch.no_grad()
def pooled(model, dictionary, docs: Sequence[str], ctx: int = 64, batch_size: int = 16,
           description: str = "pooling") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over each document's first ctx - 1 tokens (BOS excluded) of the activation at the dictionary's input
    hook [n, d] and of its codes [n, d_sae]."""
    hook = dictionary.cfg.hook_in
    acts, codes = [], []
    with progress(description, len(docs), unit="docs") as bar:
        for start in range(0, len(docs), batch_size):
            seqs = [model.tokenize(d)[0, :ctx] for d in docs[start:start + batch_size]]
            ids, mask = padded(seqs, model.bos_token_id)
            _, cache = capture(model, ids, [hook], attention_mask=mask)
            x = cache[hook].float()  # [b, seq, d]
            keep = mask.clone().float()
            keep[:, 0] = 0  # BOS: an attention sink with a huge norm, not part of the text
            keep = keep[..., None] / keep.sum(1)[:, None, None]
            c = dictionary.encode(x.to(dictionary.W_enc.dtype)).float()  # [b, seq, d_sae]
            acts.append((x * keep).sum(1).cpu())
            codes.append((c * keep).sum(1).cpu())
            bar.advance(len(seqs))
    return torch.cat(acts), torch.cat(codes)
