"""Training speed: TopK SAE steps (Adam, fp32 master weights) on the same in-memory activations (d_in 576, batch 4096),
glasswork vs SAELens (PyPI sae-lens, its own venv: its default dense decoder, its use_sparse_activations option, and
bf16 autocast where bf16 is fast) in one run, as a ratio to the peer's best; this machine's fp32 and bf16 matmul rates
and the share of them glasswork reaches counting the dense encoder's FLOPs (2 * batch * d_in * d_sae per step,
forward only: the rest of a glasswork step is sparse); peak memory; tokens/s against d_sae and k.

Each measurement runs in its own process (clean peak RSS); tokens/s is from the fastest of --steps timed steps after
2 warm-up steps (robust to other jobs on a shared machine; the mean is kept in the JSON lines). Activations: Gaussian, seeded, written once to a temp
safetensors file both libraries read (speed does not depend on their content).

  python benchmarks/train.py [--saelens /work/peers/saelens/bin/python] [--device cuda] [--steps 6]
Peer install: python3 -m venv /work/peers/saelens && /work/peers/saelens/bin/pip install torch==2.13.0 sae-lens"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from _machine import cpu_name  # benchmarks/ is on sys.path when a script runs

D_IN, BATCH = 576, 4096

GLASSWORK_STEP = r"""
import json, resource, sys, time, torch, os
from safetensors.torch import load_file
os.environ["GLASSWORK_PROGRESS"] = "0"
if int(os.environ.get("BENCH_THREADS", "0")):
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
from glasswork.training import TensorSource, TrainConfig
from glasswork.training.trainer import Trainer
acts = load_file(sys.argv[1])["acts"]
d_sae, k, steps, device = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tc = TrainConfig(kind="sae", arch="topk", hooks=["h"], d_sae=d_sae, k=k, batch_size=acts.shape[0], tokens=10**9,
                 device=device, b_dec_init="mean")
import tempfile
tr = Trainer(tc, TensorSource({"h": acts}, acts.shape[0]), tempfile.mkdtemp() + "/o")
batch = {"h": acts.to(device)}
sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
for _ in range(2):
    tr.train_step(batch)
times = []
for _ in range(steps):
    sync(); t0 = time.perf_counter()
    tr.train_step(batch)
    sync(); times.append(time.perf_counter() - t0)
dt = min(times)  # the fastest step: least disturbed by other jobs on a shared machine
peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"step_s": dt, "mean_step_s": sum(times) / len(times), "tokens_per_s": acts.shape[0] / dt, "peak_mb": peak}))
"""

SAELENS_STEP = r"""
import contextlib, json, os, resource, sys, time, torch
from safetensors.torch import load_file
if int(os.environ.get("BENCH_THREADS", "0")):
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
amp = os.environ.get("BENCH_AUTOCAST") == "1"  # SAELens's trainer option autocast=True: bf16 autocast of the step
sparse = os.environ.get("BENCH_SPARSE") == "1"  # its TopK option use_sparse_activations: a sparse decoder matmul
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
acts = load_file(sys.argv[1])["acts"]
d_sae, k, steps, device = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=d_sae, k=k, device=device,
                                             use_sparse_activations=sparse))
opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
x = acts.to(device)
dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
coeffs = sae.get_coefficients() if hasattr(sae, "get_coefficients") else {}
def step():
    with (torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if amp else contextlib.nullcontext()):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step(); opt.zero_grad()
for _ in range(2):
    step()
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
dt = min(times)  # the fastest step, as for glasswork
print(json.dumps({"step_s": dt, "mean_step_s": sum(times) / len(times), "tokens_per_s": acts.shape[0] / dt,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def matmul_rates(device: str) -> dict:
    """GFLOP/s of the encoder-shaped matmul [4096, 576] @ [576, 4608] in fp32 and bf16 (fastest of 3 s of calls)."""
    import torch
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(BATCH, D_IN, device=device).to(dt)
        b = torch.randn(D_IN, 4608, device=device).to(dt)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        a @ b
        sync()
        best, t_end = float("inf"), time.perf_counter() + 3.0
        while time.perf_counter() < t_end:  # the fastest of many: least disturbed by other jobs
            t0 = time.perf_counter()
            a @ b
            sync()
            best = min(best, time.perf_counter() - t0)
        out[name] = 2 * BATCH * D_IN * 4608 / best / 1e9
    return out


def measure(python: str, code: str, acts: Path, d_sae: int, k: int, steps: int, device: str, **extra_env) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), **extra_env}
    r = subprocess.run([python, "-c", code, str(acts), str(d_sae), str(k), str(steps), device],
                       capture_output=True, text=True, env=env, timeout=3000)
    if r.returncode:
        errors = [line for line in r.stderr.splitlines() if "Error" in line.split(":")[0]]  # the exception's line
        return {"error": (errors or r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--saelens", default="/work/peers/saelens/bin/python")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--configs", default="4608:32,18432:32,4608:64,4608:128", help="d_sae:k pairs to measure")
    p.add_argument("--threads", type=int, default=0, help="torch threads for every measurement (0: torch's default)")
    a = p.parse_args()
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
        os.environ["BENCH_THREADS"] = str(a.threads)
    a.load_start = os.getloadavg()
    from safetensors.torch import save_file
    acts = Path(tempfile.mkdtemp()) / "acts.safetensors"
    save_file({"acts": torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(0))}, str(acts))
    rates = matmul_rates(a.device)
    peer = a.saelens if Path(a.saelens).exists() else None
    rows = []
    bf16_fast = rates["bf16"] > rates["fp32"]  # else a bf16 step takes minutes here and cannot be the peer's best
    for d_sae, k in [tuple(int(v) for v in c.split(":")) for c in a.configs.split(",")]:
        gw = measure(sys.executable, GLASSWORK_STEP, acts, d_sae, k, a.steps, a.device)
        sl = measure(peer, SAELENS_STEP, acts, d_sae, k, a.steps, a.device) if peer and k == 32 else None
        sl_sparse = (measure(peer, SAELENS_STEP, acts, d_sae, k, a.steps, a.device, BENCH_SPARSE="1")
                     if peer and k == 32 else None)
        sl_bf16 = (measure(peer, SAELENS_STEP, acts, d_sae, k, a.steps, a.device, BENCH_AUTOCAST="1")
                   if peer and k == 32 and bf16_fast else None)
        enc_gflop = 2 * BATCH * D_IN * d_sae / 1e9
        row = {"d_sae": d_sae, "k": k, "glasswork": gw, "saelens": sl, "saelens_sparse": sl_sparse, "saelens_bf16": sl_bf16,
               "enc_gflops": enc_gflop * gw.get("tokens_per_s", 0) / BATCH}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = table(rows, rates, a, peer)
    print(report)
    if not a.no_record:
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write(report)


def table(rows, rates, a, peer) -> str:
    import torch
    load = os.getloadavg()
    if a.device.startswith("cuda"):
        machine = f"GPU: {torch.cuda.get_device_name()} (torch {torch.__version__})"
    else:
        flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
        isa = "avx512_bf16" if "avx512_bf16" in flags else ("avx512f" if "avx512f" in flags else "avx2")
        machine = (f"{os.cpu_count()}-core {cpu_name()} ({isa}), torch {torch.__version__}, "
                   f"{a.threads or torch.get_num_threads()} torch thread(s); load average {a.load_start[0]:.1f} at the "
                   f"start, {load[0]:.1f} at the end (shared with other jobs)")
    best_name = max(rates, key=rates.get)
    bf16_note = ("" if rates["bf16"] > rates["fp32"] else
                 "; SAELens with bf16 autocast (its trainer option autocast=True) not run: bf16 matmuls are slower than "
                 "fp32 on this CPU, so it cannot be its best (a step takes minutes)")
    lines = [f"\n## Training speed, TopK SAE, d_in {D_IN}, batch {BATCH} ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n",
             f"Machine: {machine}. Command: `python {' '.join(sys.argv)}`.",
             f"Matmul [4096,576]@[576,4608] measured in this run: fp32 {rates['fp32']:.1f} GFLOP/s, bf16 {rates['bf16']:.1f} GFLOP/s "
             f"(glasswork uses bf16 autocast only where it measured faster). Peer: "
             + (f"sae-lens 6.54 TopKTrainingSAE.training_forward_pass + clip + Adam on the same activations, k and batch: "
                f"fp32 dense decoder (its default) and fp32 with use_sparse_activations=True{bf16_note}; ratio = glasswork / "
                f"the best SAELens configuration" if peer else "sae-lens not installed here: no ratio") + ". "
             f"Encoder GFLOP/s counts only the dense encoder forward (2 * batch * d_in * d_sae per step; the rest of a "
             f"glasswork step is sparse), as a share of this run's fp32 and bf16 matmul rates ({best_name} is the "
             f"faster here).\n",
             "| d_sae | k | glasswork tokens/s | SAELens tokens/s: dense / sparse / bf16 | ratio (vs best) | "
             "encoder GFLOP/s (% of fp32 / bf16 matmul rate) | glasswork peak MB | SAELens peak MB (dense / sparse) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["glasswork"]
        peers = [r.get(n) or {} for n in ("saelens", "saelens_sparse", "saelens_bf16")]
        gt = g.get("tokens_per_s")
        if not gt:
            lines.append(f"| {r['d_sae']} | {r['k']} | error: {g.get('error')} |")
            continue
        speeds = [d["tokens_per_s"] for d in peers if d.get("tokens_per_s")]
        ratio = f"{gt / max(speeds):.2f}x" if speeds else "-"
        fmt = lambda d, key: f"{d[key]:,.0f}" if d.get(key) else ("fails (below)" if d.get("error") else "-")
        lines.append(f"| {r['d_sae']} | {r['k']} | {gt:,.0f} | {' / '.join(fmt(d, 'tokens_per_s') for d in peers)} | "
                     f"{ratio} | {r['enc_gflops']:.1f} ({100 * r['enc_gflops'] / rates['fp32']:.0f}% / "
                     f"{100 * r['enc_gflops'] / rates['bf16']:,.0f}%) | {g.get('peak_mb', 0):,.0f} | "
                     f"{fmt(peers[0], 'peak_mb')} / {fmt(peers[1], 'peak_mb')} |")
    errors = sorted({f"SAELens {n.split('_')[-1] if '_' in n else 'dense'}: {(r.get(n) or {})['error'][:160]}"
                     for r in rows for n in ("saelens", "saelens_sparse", "saelens_bf16") if (r.get(n) or {}).get("error")})
    if errors:
        lines += ["", "Failed configurations: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
