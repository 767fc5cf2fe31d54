"""The trainer under torchrun with 2 CPU processes (gloo): each rank takes half of every global batch and gradients
are averaged, so the result equals one process on the same global batches (within float reduction-order noise)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glasswork.dictionaries import load

SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_training import _data, _cfg
from glasswork.training import TensorSource, train
train(_cfg(tokens=128 * 12, batch_size=128, checkpoint_every=0, aux_coeff=0.0), TensorSource({{"h": _data()}}, 128), {out!r})
"""


@pytest.fixture
def fp32(monkeypatch):
    """This process trains in fp32 too (the torchrun ranks get GLASSWORK_BF16=0)."""
    from glasswork.precision import bf16_is_fast
    monkeypatch.setenv("GLASSWORK_BF16", "0")
    bf16_is_fast.cache_clear()
    yield
    bf16_is_fast.cache_clear()


@pytest.fixture(scope="module")
def torchrun_outputs(tmp_path_factory):
    """One `torchrun --nproc-per-node 2` launch (process-group start-up is the slow part) running both checks."""
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "both.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp / "ddp2")) +
                      SHARD_SCRIPT.format(out=str(tmp)))
    # fp32 on both sides: bf16 autocast (used where this CPU runs it faster) rounds half batches differently
    env = {**os.environ, "GLASSWORK_PROGRESS": "0", "OMP_NUM_THREADS": "1", "GLASSWORK_BF16": "0"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
                        str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp


def test_two_processes_equal_one(tmp_path, torchrun_outputs, fp32):
    two = load(torchrun_outputs / "ddp2")
    from test_training import _cfg, _data  # one process, in this one (same global batches)
    from glasswork.training import TensorSource, train
    train(_cfg(tokens=128 * 12, batch_size=128, checkpoint_every=0, aux_coeff=0.0), TensorSource({"h": _data()}, 128),
          tmp_path / "single")
    one = load(tmp_path / "single")
    assert two.cfg.training["world_size"] == 2 and one.cfg.training["world_size"] == 1
    for name, t in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], t, rtol=1e-4, atol=1e-4, msg=name)
    # and training moved the weights: the comparison is not between two untouched inits
    assert one.cfg.metrics["train_fvu"] < 0.9


SHARD_SCRIPT = """
from glasswork.training import distributed as gd
gd.init("cpu")
r, n = gd.rank(), gd.world()
g = torch.Generator().manual_seed(0)
B, d, F, k = 24, 10, 40, 5
x = torch.randn(B, d, generator=g, dtype=torch.float64)
W_enc, b_enc = torch.randn(d, F, generator=g, dtype=torch.float64), torch.randn(F, generator=g, dtype=torch.float64)
W_dec, b_dec = torch.randn(F, d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
s = slice(r * F // n, (r + 1) * F // n)
We, be, Wd = (t[..., s].clone().requires_grad_() if t is W_enc else t[s].clone().requires_grad_() for t in (W_enc, b_enc, W_dec))
bd_in, bd_out = b_dec.clone().requires_grad_(), b_dec.clone().requires_grad_()  # b_dec, read on both sides
recon, vals, idx = gd.sharded_topk(x - bd_in, We, be, Wd, k, s.start)
loss = ((recon + bd_out - x) ** 2).sum()
loss.backward()
gbd = gd.all_reduce_(bd_in.grad) + bd_out.grad  # the encoder side arrives in parts, the output side whole
parts = {{"loss": loss.detach().reshape(1), "gWe": We.grad, "gbe": be.grad, "gWd": Wd.grad, "gbd": gbd, "idx": idx}}
from safetensors.torch import save_file
save_file({{k_: v.contiguous() for k_, v in parts.items()}}, {out!r} + f"/rank{{r}}.safetensors")
gd.finish()  # a gloo rank exiting with its group alive can abort the launch
"""


def test_sharded_topk_equals_unsharded(torchrun_outputs):
    tmp_path = torchrun_outputs
    from safetensors.torch import load_file
    ranks = [load_file(str(tmp_path / f"rank{i}.safetensors")) for i in range(2)]
    # the unsharded reference, float64, autograd through a dense TopK
    g = torch.Generator().manual_seed(0)
    B, d, F, k = 24, 10, 40, 5
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    params = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in [(d, F), (F,), (F, d), (d,)]]
    W_enc, b_enc, W_dec, b_dec = params
    pre = (x - b_dec) @ W_enc + b_enc
    v, i = pre.topk(k, -1)
    codes = torch.zeros_like(pre).scatter(-1, i, v.relu())
    loss = ((codes @ W_dec + b_dec - x) ** 2).sum()
    loss.backward()
    for rk in ranks:
        torch.testing.assert_close(rk["loss"][0], loss.detach())
        torch.testing.assert_close(rk["gbd"], b_dec.grad)
        assert torch.equal(rk["idx"].sort(-1).values, i.sort(-1).values)
    torch.testing.assert_close(torch.cat([rk["gWe"] for rk in ranks], 1), W_enc.grad)
    torch.testing.assert_close(torch.cat([rk["gbe"] for rk in ranks]), b_enc.grad)
    torch.testing.assert_close(torch.cat([rk["gWd"] for rk in ranks]), W_dec.grad)
