"""The matmul precision, chosen from what the hardware is, never from a timing: bf16 is ~3.6x faster than fp32 on CPUs
with AMX or AVX512-BF16 and on GPUs with bf16 units, but ~40x slower on AVX2-only CPUs (measured: AMD EPYC, 0.8 vs
35-190 GFLOP/s). A timed guess answered differently on a busy machine, so results depended on the load; this does not.

`resolve(option, device)` turns "auto" | "fp32" | "bf16" into the precision a run uses ("fp32" or "bf16"); a run
records it (checkpoint and artifact) and a resumed run keeps the recorded one. GLASSWORK_BF16=1/0 forces auto's answer.
"""
from __future__ import annotations

import functools
import os
from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16")
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs whose bf16 matmuls beat fp32


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def bf16_is_fast(device: str = "cpu") -> bool:
    """True when `device` has fast bf16 matmuls: a CUDA device with bf16 support (compute capability 8.0+), or a CPU
    with AMX or AVX512-BF16 (GLASSWORK_BF16=1/0 overrides). Deterministic: the same answer on a busy machine."""
    forced = os.environ.get("GLASSWORK_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & set(FAST_BF16_CPU_FLAGS))


def resolve(option: str, device: str | torch.device = "cpu") -> str:
    """'auto' -> 'bf16' where the hardware has fast bf16, else 'fp32'; 'fp32' and 'bf16' stay as asked."""
    from .io import GlassworkError
    if option not in PRECISIONS:
        raise GlassworkError(f"precision must be one of {', '.join(PRECISIONS)} (got '{option}')")
    if option != "auto":
        return option
    return "bf16" if bf16_is_fast(torch.device(device).type) else "fp32"


def autocast(device: str | torch.device = "cpu", precision: str = "auto"):
    """bf16 autocast when `precision` (resolved) is bf16 (parameters stay fp32), else a no-op context."""
    device_type = torch.device(device).type
    if resolve(precision, device_type) == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()
