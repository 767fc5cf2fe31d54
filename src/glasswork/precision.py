"""Which matmul dtype is fastest here: bf16 is ~3.6x faster than fp32 on CPUs with AMX/AVX512-BF16, but ~100x
slower on AVX2-only CPUs (seen: AMD EPYC, 1.2 GFLOP/s). So measure once per process instead of assuming."""
from __future__ import annotations

import functools
import os
import time
from contextlib import nullcontext

import torch


@functools.lru_cache(maxsize=None)
def bf16_is_fast(device: str = "cpu") -> bool:
    """True when a bf16 matmul beats fp32 on `device` (GLASSWORK_BF16=1/0 overrides the measurement)."""
    forced = os.environ.get("GLASSWORK_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    a, b = torch.randn(128, 256), torch.randn(256, 256)

    def seconds(x, y):
        x @ y  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            x @ y
        return time.perf_counter() - t0

    return seconds(a.bfloat16(), b.bfloat16()) < seconds(a, b)


def autocast(device: str | torch.device = "cpu", enabled: bool = True):
    """bf16 autocast where it is faster on this machine (parameters stay fp32), else a no-op context."""
    device_type = torch.device(device).type
    if enabled and bf16_is_fast(device_type):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()
