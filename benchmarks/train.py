"""Training speed: TopK SAE steps (Adam, fp32 master weights) on the same in-memory activations (d_in 576, batch 4096),
glasswork vs SAELens (PyPI sae-lens, its own venv) in one run, as a ratio; this machine's fp32 and bf16 matmul rates
and the share of them glasswork reaches counting the dense encoder's FLOPs (2 * batch * d_in * d_sae per step,
forward only: the rest of a glasswork step is sparse); peak memory; tokens/s against d_sae and k.

Each measurement runs in its own process (clean peak RSS). Activations: Gaussian, seeded, written once to a temp
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

D_IN, BATCH = 576, 4096

GLASSWORK_STEP = r"""
import json, resource, sys, time, torch, os
from safetensors.torch import load_file
os.environ["GLASSWORK_PROGRESS"] = "0"
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
sync(); t0 = time.perf_counter()
for _ in range(steps):
    tr.train_step(batch)
sync(); dt = (time.perf_counter() - t0) / steps
peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"step_s": dt, "tokens_per_s": acts.shape[0] / dt, "peak_mb": peak}))
"""

SAELENS_STEP = r"""
import json, resource, sys, time, torch
from safetensors.torch import load_file
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
acts = load_file(sys.argv[1])["acts"]
d_sae, k, steps, device = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=d_sae, k=k, device=device))
opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
x = acts.to(device)
dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
coeffs = sae.get_coefficients() if hasattr(sae, "get_coefficients") else {}
def step():
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=dead,
                                                   n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step(); opt.zero_grad()
for _ in range(2):
    step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
dt = (time.perf_counter() - t0) / steps
print(json.dumps({"step_s": dt, "tokens_per_s": acts.shape[0] / dt,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def matmul_rates(device: str) -> dict:
    """GFLOP/s of the encoder-shaped matmul [4096, 576] @ [576, 4608] in fp32 and bf16."""
    import torch
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(BATCH, D_IN, device=device).to(dt)
        b = torch.randn(D_IN, 4608, device=device).to(dt)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        a @ b
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0 or n < 3:
            a @ b
            n += 1
        sync()
        out[name] = 2 * BATCH * D_IN * 4608 * n / (time.perf_counter() - t0) / 1e9
    return out


def measure(python: str, code: str, acts: Path, d_sae: int, k: int, steps: int, device: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    r = subprocess.run([python, "-c", code, str(acts), str(d_sae), str(k), str(steps), device],
                       capture_output=True, text=True, env=env, timeout=3000)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--saelens", default="/work/peers/saelens/bin/python")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--configs", default="4608:32,18432:32,4608:64,4608:128", help="d_sae:k pairs to measure")
    a = p.parse_args()
    import torch
    from safetensors.torch import save_file
    acts = Path(tempfile.mkdtemp()) / "acts.safetensors"
    save_file({"acts": torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(0))}, str(acts))
    rates = matmul_rates(a.device)
    peer = a.saelens if Path(a.saelens).exists() else None
    rows = []
    for d_sae, k in [tuple(int(v) for v in c.split(":")) for c in a.configs.split(",")]:
        gw = measure(sys.executable, GLASSWORK_STEP, acts, d_sae, k, a.steps, a.device)
        sl = measure(peer, SAELENS_STEP, acts, d_sae, k, a.steps, a.device) if peer and k == 32 else None
        enc_gflop = 2 * BATCH * D_IN * d_sae / 1e9
        row = {"d_sae": d_sae, "k": k, "glasswork": gw, "saelens": sl,
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
        machine = f"{os.cpu_count()}-core CPU, torch {torch.__version__}; load average {load[0]:.1f} (shared with other jobs)"
    best = max(rates.values())
    lines = [f"\n## Training speed, TopK SAE, d_in {D_IN}, batch {BATCH} ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n",
             f"Machine: {machine}. Command: `python {' '.join(sys.argv)}`.",
             f"Matmul [4096,576]@[576,4608]: fp32 {rates['fp32']:.1f} GFLOP/s, bf16 {rates['bf16']:.1f} GFLOP/s "
             f"(glasswork uses bf16 autocast only where it measured faster). Peer: "
             f"{'sae-lens 6.54 TopKTrainingSAE.training_forward_pass + Adam, fp32, same activations, k and batch' if peer else 'sae-lens not installed here: no ratio'}.\n",
             "| d_sae | k | glasswork tokens/s | SAELens tokens/s | ratio | encoder GFLOP/s (% of best matmul rate) | glasswork peak MB | SAELens peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, s = r["glasswork"], r["saelens"] or {}
        gt, st = g.get("tokens_per_s"), s.get("tokens_per_s")
        ratio = f"{gt / st:.2f}x" if gt and st else "-"
        if not gt:
            lines.append(f"| {r['d_sae']} | {r['k']} | error: {g.get('error')} |")
            continue
        st_text = f"{st:,.0f}" if st else "-"
        sl_peak = f"{s['peak_mb']:,.0f}" if s.get("peak_mb") else "-"
        lines.append(f"| {r['d_sae']} | {r['k']} | {gt:,.0f} | {st_text} | {ratio} | "
                     f"{r['enc_gflops']:.1f} ({100 * r['enc_gflops'] / best:.0f}%) | {g.get('peak_mb', 0):,.0f} | {sl_peak} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
