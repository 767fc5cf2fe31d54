"""Sparsifying activation functions: pre-activations [batch, d_sae] -> sparse codes.

topk / batchtopk return codes as (values [batch, k], indices [batch, k]) when sparse=True, so decoding can be a
gather over k decoder rows instead of a dense [batch, d_sae] @ W_dec."""
from __future__ import annotations

import torch

ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu")


def topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k largest pre-activations per row (negatives among them become 0): (values, indices) [batch, k]."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices


def batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k * batch largest pre-activations over the whole batch (training only): dense [batch, d_sae]."""
    flat = pre.relu().flatten()
    n_keep = min(k * pre.shape[0], flat.numel())
    values, indices = flat.topk(n_keep, sorted=False)
    return torch.zeros_like(flat).scatter(0, indices, values).view_as(pre)


class _JumpReLU(torch.autograd.Function):
    """f = z * (z > theta). Straight-through gradient for theta with a rectangle kernel of width `bandwidth`."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad_out):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = grad_out * (pre > theta)
        near = ((pre - theta).abs() < bw / 2).to(pre.dtype)
        grad_theta = (-(theta / bw) * near * grad_out).reshape(-1, theta.shape[-1]).sum(0)
        return grad_pre, grad_theta, None


def jumprelu(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float = 1e-3) -> torch.Tensor:
    return _JumpReLU.apply(pre, theta, bandwidth)


class _Step(torch.autograd.Function):
    """H(z - theta), the L0 count, with the same straight-through gradient for theta."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - theta).abs() < bw / 2).to(pre.dtype)
        grad_theta = (-(1.0 / bw) * near * grad_out).reshape(-1, theta.shape[-1]).sum(0)
        return torch.zeros_like(pre), grad_theta, None


def step(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float = 1e-3) -> torch.Tensor:
    return _Step.apply(pre, theta, bandwidth)
