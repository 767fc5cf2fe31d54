"""Attribution on a GPU equals attribution on the CPU (tiny llama / gemma2 / gpt2 with random transcoders), and its
time. Run where CUDA is present: `PYTHONPATH=src python3 benchmarks/attribute_gpu.py`."""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import make_tiny  # noqa: E402
from test_circuits import prompt, random_transcoders  # noqa: E402

import glasswork as gw  # noqa: E402

assert torch.cuda.is_available(), "needs CUDA"
print(torch.__version__, torch.cuda.get_device_name())
for kind in ("llama", "gemma2", "gpt2"):
    m = make_tiny(kind)
    tcs = random_transcoders(m)
    ids = prompt(m, 12)
    t0 = time.time()
    cpu = gw.attribute(m, tcs, ids, batch_size=64, show_progress=False)
    t_cpu = time.time() - t0
    m.hf.cuda()
    tcs = {k: v.cuda() for k, v in tcs.items()}
    gw.attribute(m, tcs, ids, batch_size=64, show_progress=False)  # warm-up
    torch.cuda.synchronize()
    t0 = time.time()
    gpu = gw.attribute(m, tcs, ids, batch_size=64, show_progress=False)
    torch.cuda.synchronize()
    t_gpu = time.time() - t0
    rel = ((gpu.adjacency - cpu.adjacency).abs().max() / cpu.adjacency.abs().max()).item()
    same = torch.equal(gpu.node_index, cpu.node_index) and torch.equal(gpu.node_layer, cpu.node_layer)
    print(f"{kind}: {cpu.n_features} features, same nodes {same}, max |gpu - cpu| / max |A| = {rel:.2e}, "
          f"cpu {t_cpu:.2f} s, gpu {t_gpu:.2f} s")
    assert same and rel < 1e-4
print("ok")
