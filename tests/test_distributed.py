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


def _run(tmp_path: Path, name: str, nproc: int):
    out = tmp_path / name
    script = tmp_path / f"{name}.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    env = {**os.environ, "GLASSWORK_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", "29533", str(script)]
           if nproc > 1 else [sys.executable, str(script)])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return load(out)


def test_two_processes_equal_one(tmp_path):
    two = _run(tmp_path, "ddp2", 2)
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
