"""TopK encoding and decoding whose backward passes touch only the k active latents per token.

The forward encoder is one dense matmul (every pre-activation is needed to pick the top k). Everything after it is
sparse: the decoder is a gather-and-sum of k rows, and the backward pass builds the [batch, d_sae] gradient of the
pre-activations as a CSR matrix with k entries per row, so grad W_enc and grad W_dec are weighted bags of rows and
grad values is a sampled matmul (only the k needed dot products). No dense [batch, d_sae] @ W_dec anywhere."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def _csr(indices: torch.Tensor, values: torch.Tensor, n_cols: int) -> torch.Tensor:
    """Rows with exactly k entries (indices sorted within each row): [batch, n_cols] CSR."""
    batch, k = indices.shape
    crow = torch.arange(0, batch * k + 1, k, device=indices.device)
    return torch.sparse_csr_tensor(crow, indices.reshape(-1), values.reshape(-1), (batch, n_cols))


_plan_cache: list = []  # [(key, plan, indices)]: the decoder's backward and the encoder's share one transpose


def _transpose_plan(indices: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For S [batch, n_rows] with k entries per row: (crow [n_rows + 1], cols [batch * k], order [batch * k]) of S^T
    in CSR. Cached for the last indices seen (the cache holds a reference, so the storage cannot be reused)."""
    key = (indices.data_ptr(), tuple(indices.shape), indices._version, n_rows)
    if _plan_cache and _plan_cache[0][0] == key:
        return _plan_cache[0][1]
    batch, k = indices.shape
    flat = indices.reshape(-1)
    order = flat.argsort(stable=True)
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=indices.device)
    crow[1:] = torch.bincount(flat, minlength=n_rows).cumsum(0)
    plan = (crow, torch.div(order, k, rounding_mode="floor"), order)
    _plan_cache[:] = [(key, plan, indices)]
    return plan


def _sparse_t_matmul(indices: torch.Tensor, values: torch.Tensor, dense: torch.Tensor, n_rows: int) -> torch.Tensor:
    """S^T @ dense for S [batch, n_rows] with k entries per row: [n_rows, dense.shape[1]]."""
    if dense.is_cuda:  # CSR transpose-matmul is fast on GPUs through index_add
        out = torch.zeros(n_rows, dense.shape[1], dtype=dense.dtype, device=dense.device)
        return out.index_add_(0, indices.reshape(-1), (values.unsqueeze(-1) * dense.unsqueeze(1)).reshape(-1, dense.shape[1]))
    # row r of S^T is a bag of the dense rows whose tokens chose latent r: a weighted embedding_bag over the CSR
    # transpose (2-2.5x faster here than the CSR matmul, which zero-fills and copies its output)
    crow, cols, order = _transpose_plan(indices, n_rows)
    return F.embedding_bag(cols, dense, crow, per_sample_weights=values.reshape(-1).to(dense.dtype)[order], mode="sum",
                           include_last_offset=True)


def _sampled_dot(indices: torch.Tensor, left: torch.Tensor, right_t: torch.Tensor) -> torch.Tensor:
    """out[b, j] = left[b] . right_t[:, indices[b, j]] for the k sampled columns only: [batch, k]."""
    batch, k = indices.shape
    if left.is_cuda:
        return torch.einsum("bd,bkd->bk", left, right_t.T[indices])
    mask = _csr(indices, torch.zeros(indices.numel(), dtype=left.dtype, device=left.device), right_t.shape[1])
    return torch.sparse.sampled_addmm(mask, left, right_t, beta=0.0).values().view(batch, k)


def _top_sorted(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k of each row of pre [batch, n], indices sorted within the row: (values, indices) [batch, k]."""
    top, indices = pre.topk(k, dim=-1, sorted=False)
    indices, order = indices.sort(dim=-1)
    return top.gather(-1, order), indices


class TopKEncode(torch.autograd.Function):
    """(x [batch, d_in], W_enc [d_in, d_sae], b_enc [d_sae], shift [d_in] or None, k, dead [d_sae] bool or None,
    k_aux) -> values, indices [batch, k] (ReLU'd values, indices sorted per row) of the pre-activations
    (x - shift) @ W_enc + b_enc, and the same for the top k_aux dead latents (AuxK; [batch, 0] without `dead`), from
    the one encoder matmul. Backward: grads of the selected pre-activations only; shift (an SAE's b_dec) gets
    -W_enc @ grad_b_enc, never a [batch, d_in] gradient."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, shift, k: int, dead, k_aux: int):
        x_in = x - shift if shift is not None else x
        pre = torch.addmm(b_enc, x_in, W_enc)
        top, indices = _top_sorted(pre, k)
        if dead is not None:
            aux_top, aux_indices = _top_sorted(pre.masked_fill_(~dead, float("-inf")), min(k_aux, int(dead.sum())))
        else:
            aux_top, aux_indices = top[:, :0], indices[:, :0]
        ctx.save_for_backward(x_in, W_enc, torch.cat([indices, aux_indices], -1), torch.cat([top, aux_top], -1))
        ctx.mark_non_differentiable(indices, aux_indices)
        return top.relu(), indices, aux_top.relu(), aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_aux, _grad_aux_indices):
        x_in, W_enc, indices, top = ctx.saved_tensors  # main and aux selections side by side: [batch, k + k_aux]
        grad_pre = torch.cat([grad_values, grad_aux], -1) * (top > 0)  # the ReLU on the selected ones
        grad_x = grad_W = grad_b = grad_shift = None
        if ctx.needs_input_grad[0]:  # grad_x = G @ W_enc^T, G sparse: a weighted gather of k encoder columns
            grad_x = F.embedding_bag(indices, W_enc.T.contiguous(), per_sample_weights=grad_pre.to(W_enc.dtype), mode="sum")
        if ctx.needs_input_grad[1]:  # grad_W_enc = x^T @ G = (G^T @ x)^T
            grad_W = _sparse_t_matmul(indices, grad_pre, x_in, W_enc.shape[1]).T
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            grad_b = torch.zeros(W_enc.shape[1], dtype=grad_pre.dtype, device=grad_pre.device)
            grad_b.index_add_(0, indices.reshape(-1), grad_pre.reshape(-1))
            if ctx.needs_input_grad[3]:  # the batch sum of -G @ W_enc^T
                grad_shift = -(W_enc @ grad_b.to(W_enc.dtype))
        return grad_x, grad_W, grad_b, grad_shift, None, None, None


class SparseDecode(torch.autograd.Function):
    """(values [batch, k], indices [batch, k] sorted per row, W_dec [d_sae, d_out]) -> [batch, d_out]."""

    @staticmethod
    def forward(ctx, values, indices, W_dec):
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, W_dec = ctx.saved_tensors
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = _sampled_dot(indices, grad_out.to(W_dec.dtype), W_dec.T)
        if ctx.needs_input_grad[2]:
            grad_W = _sparse_t_matmul(indices, values, grad_out.to(W_dec.dtype), W_dec.shape[0])
        return grad_values, None, grad_W


def topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, shift: torch.Tensor | None = None):
    """x [..., d_in] -> (values, indices) [..., k] of the top k of (x - shift) @ W_enc + b_enc, with the sparse
    backward."""
    lead = x.shape[:-1]
    values, indices, _, _ = TopKEncode.apply(x.reshape(-1, x.shape[-1]), W_enc, b_enc, shift, k, None, 0)
    return values.view(*lead, k), indices.view(*lead, k)


def topk_encode_with_aux(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, shift: torch.Tensor | None,
                         dead: torch.Tensor | None, k_aux: int):
    """x [batch, d_in] -> (values, indices) [batch, k] as topk_encode, and (aux_values, aux_indices)
    [batch, min(k_aux, n_dead)]: the top among the latents where dead [d_sae] is True (for AuxK; [batch, 0] when
    dead is None)."""
    return TopKEncode.apply(x, W_enc, b_enc, shift, k, dead, k_aux)


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """(values, indices) [..., k] -> [..., d_out] (no bias), with the sparse backward."""
    lead, k = values.shape[:-1], values.shape[-1]
    out = SparseDecode.apply(values.reshape(-1, k), indices.reshape(-1, k), W_dec)
    return out.view(*lead, W_dec.shape[1])
