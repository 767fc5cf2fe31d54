"""Global circuits: virtual weights equal a float64 brute force through the model's own modules (norm scales 1,
one head's value and output projections); dataset-aggregated edges equal a plain loop over each graph's adjacency,
are the same from 2 torchrun ranks as from 1, and come back from global.sqlite; bad input is a clear error."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import glasswork as gw
from glasswork.circuits import attribute
from glasswork.circuits.global_circuits import (aggregate, average_attention, global_neighbors,
                                                 virtual_weights, write_global)
from glasswork.circuits.graph import FEATURE
from glasswork.circuits.qk import qk_attribution

from conftest import make_tiny
from test_circuits import random_clt, random_transcoders

PROMPTS = [[0, 5, 17, 33, 2, 9], [0, 44, 3, 8, 61, 12, 7], [0, 9, 9, 1], [0, 70, 21, 40, 5]]


def test_virtual_weights_equal_a_brute_force_through_the_modules():
    m = make_tiny("llama")
    tcs = random_transcoders(m, missing=())
    block = m.hf.model.layers
    src, dst = [1, 4, 7], [0, 2, 5, 9]
    attention = average_attention(m, torch.stack([torch.tensor(p[:4]) for p in PROMPTS]))
    assert all(0 <= a <= 1 for a in attention.values()) and len(attention) == m.n_layers * 4
    vw = virtual_weights(m, tcs, 0, 2, src, dst, attention)
    enc = tcs[2].W_enc.detach().double()[:, dst]
    ln2 = block[2].post_attention_layernorm.weight.detach().double()
    with torch.no_grad():
        for a, s in enumerate(src):
            x = tcs[0].W_dec.detach().double()[s]
            torch.testing.assert_close(vw["residual"][a], (ln2 * x) @ enc)  # scale-1 norm, then the encoder
            for k in (1, 2):  # heads of layers 1..2 read layer 0's write and write before layer 2's MLP
                attn = block[k].self_attn.double()
                ln1 = block[k].input_layernorm.weight.detach().double()
                v = attn.v_proj(ln1 * x).view(2, 8)  # [kv heads, hd]
                for h in range(4):
                    z = torch.zeros(4, 8, dtype=torch.float64)
                    z[h] = v[h // 2]  # the head's value, at attention weight 1
                    y = attn.o_proj(z.flatten())
                    want = attention[(k, h)] * ((ln2 * y) @ enc)
                    torch.testing.assert_close(vw["heads"][(k, h)][a], want)
                attn.float()
    assert (0, 0) not in vw["heads"] and len(vw["heads"]) == 8
    clt = random_clt(m)  # a CLT feature's writes to layers 0 and 1 both reach layer 2's input
    cw = virtual_weights(m, clt, 0, 2, src, dst)["residual"]
    want = sum(clt.W_dec[0][src, j].detach().double() * ln2 for j in range(2)) @ clt.W_enc[2].detach().double()[:, dst]
    torch.testing.assert_close(cw, want)
    with pytest.raises(gw.GlassworkError, match="must be below"):
        virtual_weights(m, tcs, 2, 1)
    with pytest.raises(gw.GlassworkError, match="RMSNorm"):
        g2 = make_tiny("gpt2")
        virtual_weights(g2, random_transcoders(g2, missing=()), 0, 1)


def test_aggregate_is_a_plain_loop_over_the_graphs(tmp_path):
    m = make_tiny("llama")
    tcs = random_transcoders(m)
    got = aggregate(m, tcs, PROMPTS, max_features=None)
    want: dict = {}
    for p in PROMPTS:
        g = attribute(m, tcs, p, show_progress=False)
        for r, node in enumerate(g.row_nodes.tolist()):
            if int(g.node_kind[node]) != FEATURE:
                continue
            for c in range(g.n_nodes):
                w = float(g.adjacency[r, c])
                if int(g.node_kind[c]) == FEATURE and w != 0.0:
                    key = (int(g.node_layer[c]), int(g.node_index[c]), int(g.node_layer[node]), int(g.node_index[node]))
                    t, n = want.get(key, (0.0, 0))
                    want[key] = (t + w, n + 1)
    assert got.keys() == want.keys() and len(got) > 20
    for key, (t, n) in want.items():
        assert got[key][1] == n and got[key][0] == pytest.approx(t, rel=1e-6, abs=1e-9)
    path = write_global(tmp_path, got, len(PROMPTS))
    (sl, si, tl, ti), (t, n) = max(got.items(), key=lambda kv: abs(kv[1][0]))
    down = global_neighbors(tmp_path, sl, si)
    assert path.name == "global.sqlite" and down["n_prompts"] == len(PROMPTS)
    assert any(x["layer"] == tl and x["feature"] == ti and x["n"] == n and x["mean"] == pytest.approx(t / n)
               for x in down["downstream"])
    assert global_neighbors(tmp_path / "nothing", 0, 0) is None
    with pytest.raises(gw.GlassworkError, match="no prompts"):
        aggregate(m, tcs, [])
    with pytest.raises(gw.GlassworkError, match="query position 99"):
        qk_attribution(m, tcs, PROMPTS[0], query_pos=99)
    with pytest.raises(gw.GlassworkError, match="key position"):
        qk_attribution(m, tcs, PROMPTS[0], heads=[(1, 0)], keys=[5], query_pos=2)


SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from conftest import make_tiny
from test_circuits import random_transcoders
from test_global import PROMPTS
from glasswork.training import distributed as dist
from glasswork.circuits.global_circuits import aggregate
dist.init()
m = make_tiny("llama")
got = aggregate(m, random_transcoders(m), PROMPTS, max_features=None)
if dist.rank() == 0:
    json.dump([[list(k), list(v)] for k, v in got.items()], open({out!r}, "w"))
dist.finish()
"""


def test_two_ranks_equal_one(tmp_path):
    script = tmp_path / "agg.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "two.json")))
    env = {**os.environ, "GLASSWORK_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29541",
                        str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = {tuple(k): tuple(v) for k, v in json.loads((tmp_path / "two.json").read_text())}
    m = make_tiny("llama")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: fp32 products summed in the same order
    try:
        one = aggregate(m, random_transcoders(m), PROMPTS, max_features=None)
    finally:
        torch.set_num_threads(threads)
    assert two.keys() == one.keys()
    for key, (t, n) in one.items():
        assert two[key][1] == n and two[key][0] == pytest.approx(t, rel=1e-6, abs=1e-9)
