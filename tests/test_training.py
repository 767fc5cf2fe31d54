"""Trainer: sparse TopK gradients = dense (float64), resume after kill -9 = uninterrupted, folding the input scale
into the weights is exact, several dictionaries from one pass, and bad input gets a clear GlassworkError."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import glasswork as gw
from glasswork.dictionaries import DictionaryConfig, SparseCoder, CrossLayerTranscoder, load, load_set
from glasswork.dictionaries.sparse import sparse_decode, topk_encode
from glasswork.io import GlassworkError
from glasswork.training import TensorSource, TrainConfig, fold_scale, train


def test_sparse_topk_gradients_equal_dense_float64():
    g = torch.Generator().manual_seed(0)
    B, d, F, k = 40, 12, 70, 6
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    params = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in [(d, F), (F,), (F, d), (d,)]]
    W_enc, b_enc, W_dec, b_dec = params
    target = torch.randn(B, d, generator=g, dtype=torch.float64)

    def dense():
        pre = (x - b_dec) @ W_enc + b_enc
        v, i = pre.topk(k, -1)
        codes = torch.zeros_like(pre).scatter(-1, i, v.relu())
        return ((codes @ W_dec + b_dec - target) ** 2).sum()

    def sparse():
        v, i = topk_encode(x - b_dec, W_enc, b_enc, k)
        return ((sparse_decode(v, i, W_dec) + b_dec - target) ** 2).sum()

    def sparse_shift():  # b_dec passed as the encoder's shift: its gradient is -W_enc @ grad_b_enc, no [B, d] grad
        v, i = topk_encode(x, W_enc, b_enc, k, shift=b_dec)
        return ((sparse_decode(v, i, W_dec) + b_dec - target) ** 2).sum()

    gd = torch.autograd.grad(dense(), params)
    for fn in (sparse, sparse_shift):
        for a, b in zip(gd, torch.autograd.grad(fn(), params)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        assert torch.allclose(dense(), fn())


def test_auxk_gradients_equal_dense_float64():
    # AuxK's dead-latent selection comes out of the main encoder matmul; its gradients must equal a dense reference
    from glasswork.dictionaries.sparse import topk_encode_with_aux
    from glasswork.training.losses import _aux_k
    g = torch.Generator().manual_seed(1)
    B, d, F, k, k_aux = 40, 12, 70, 6, 9
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    params = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in [(d, F), (F,), (F, d), (d,)]]
    W_enc, b_enc, W_dec, b_dec = params
    dead = torch.rand(F, generator=g) < 0.4

    def dense():
        pre = (x - b_dec) @ W_enc + b_enc
        v, i = pre.topk(k, -1)
        recon = torch.zeros_like(pre).scatter(-1, i, v.relu()) @ W_dec + b_dec
        av, ai = pre.masked_fill(~dead, float("-inf")).topk(k_aux, -1)
        resid = (x - recon).detach()
        aux = resid - torch.zeros_like(pre).scatter(-1, ai, av.relu()) @ W_dec
        return ((recon - x) ** 2).sum() + 0.5 * (aux ** 2).sum() / ((resid - resid.mean(0)) ** 2).sum()

    def sparse():
        v, i, av, ai = topk_encode_with_aux(x, W_enc, b_enc, k, b_dec, dead, k_aux)
        recon = sparse_decode(v, i, W_dec) + b_dec
        return ((recon - x) ** 2).sum() + 0.5 * _aux_k((x - recon).detach(), av, ai, W_dec)

    for a, b in zip(torch.autograd.grad(dense(), params), torch.autograd.grad(sparse(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dense(), sparse())


def _matryoshka_coder(kind, arch, seed=2, B=40, d=12, F=30, k=5):
    """A float64 SAE (or transcoder with a skip connection) with random weights and biases, and data for it."""
    g = torch.Generator().manual_seed(seed)
    cfg = DictionaryConfig(kind=kind, d_in=d, d_sae=F, activation=arch, k=k, skip=kind == "transcoder",
                           b_dec_in=kind == "sae")
    coder = SparseCoder(cfg).double()
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * (0.1 if p is coder.threshold else 1))
    coder.threshold_estimate = []
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    y = x if kind == "sae" else torch.randn(B, d, generator=g, dtype=torch.float64)
    return coder, x, y


def _dense_codes(coder, x):
    """Pre-activations and dense codes [batch, d_sae] as training computes them (batchtopk: over the batch)."""
    cfg = coder.cfg
    pre = ((x - coder.b_dec) if cfg.b_dec_in else x) @ coder.W_enc + coder.b_enc
    if cfg.activation == "topk":
        v, i = pre.topk(cfg.k, -1)
        return pre, torch.zeros_like(pre).scatter(-1, i, v.relu())
    if cfg.activation == "batchtopk":
        v, i = pre.relu().flatten().topk(cfg.k * x.shape[0])
        return pre, torch.zeros_like(pre).flatten().scatter(0, i, v).view_as(pre)
    if cfg.activation == "jumprelu":
        return pre, pre * (pre > coder.threshold)
    return pre, pre.relu()


def _dense_matryoshka_loss(coder, x, y, tc, prefixes, dead=None):
    """The definition, dense: codes once; mean over prefixes m of ||y - (codes[:, :m] @ W_dec[:m] + b_dec + skip)||^2
    summed over d, mean over tokens; plus the activation's own term (AuxK from the full reconstruction)."""
    pre, codes = _dense_codes(coder, x)
    skip = x @ coder.W_skip if coder.W_skip is not None else 0.0
    recon = [codes[:, :m] @ coder.W_dec[:m] + coder.b_dec + skip for m in prefixes]
    loss = sum(((y - r) ** 2).sum() for r in recon) / x.shape[0] / len(prefixes)
    if coder.cfg.activation == "relu":
        loss = loss + tc.l1_coeff * (codes * coder.W_dec.norm(dim=-1)).sum(-1).mean()
    if coder.cfg.activation == "jumprelu":
        loss = loss + tc.l0_coeff * (pre > coder.threshold).double().sum(-1).mean()
    if dead is not None:  # AuxK: the top dead latents reconstruct the full dictionary's residual
        av, ai = pre.masked_fill(~dead, float("-inf")).topk(min(tc.aux_k, int(dead.sum())), -1)
        resid = (y - recon[-1]).detach()
        aux = resid - torch.zeros_like(pre).scatter(-1, ai, av.relu()) @ coder.W_dec
        loss = loss + tc.aux_coeff * (aux ** 2).sum() / ((resid - resid.mean(0)) ** 2).sum()
    return loss


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
@torch.no_grad()
def test_matryoshka_loss_equals_definition(kind, arch):
    from glasswork.training.losses import coder_loss
    coder, x, y = _matryoshka_coder(kind, arch)
    F = coder.cfg.d_sae
    coder.dead = None
    _, codes = _dense_codes(coder, x)
    full = codes @ coder.W_dec + coder.b_dec + coder.skip_term(x)
    checked = 0
    for sizes in ([7, 19], [7, 19, F], [1], [11], [F - 1], [F], []):  # each prefix alone (with the full one), all, none
        tc = _cfg(arch=arch, k=coder.cfg.k, d_sae=F, matryoshka=sizes)
        got, stats = coder_loss(coder, x, y, tc)
        prefixes = sorted(set(sizes) | {F})
        torch.testing.assert_close(got, _dense_matryoshka_loss(coder, x, y, tc, prefixes), rtol=1e-12, atol=1e-12)
        # the reported fvu stays the full dictionary's
        torch.testing.assert_close(stats["fvu"], ((y - full) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
        for shift in (-1, 1):  # the same prefixes off by one give another loss (where the latent moved fires at all)
            shifted = [m + shift for m in prefixes[:-1]] + [F]
            moved = [min(m, m + shift) for m in prefixes[:-1]]
            if 0 < shifted[0] and len(set(shifted)) == len(shifted) and codes[:, moved].any():
                assert (got - _dense_matryoshka_loss(coder, x, y, tc, shifted)).abs() > 1e-6, (sizes, shift)
                checked += 1
    assert checked >= 4  # so the comparison above could have failed for an off-by-one mask


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_matryoshka_gradients_equal_dense_float64(kind, arch):
    # topk: the prefixes are masked sparse decodes (backward sparse), AuxK from the full reconstruction
    from glasswork.training.losses import coder_loss
    coder, x, y = _matryoshka_coder(kind, arch, seed=4)
    F = coder.cfg.d_sae
    dead = torch.rand(F, generator=torch.Generator().manual_seed(5)) < 0.4 if arch == "topk" else None
    tc = _cfg(arch=arch, k=coder.cfg.k, d_sae=F, matryoshka=[4, 13, 22], aux_k=7, aux_coeff=0.5)
    names, params = zip(*coder.named_parameters())
    coder.dead = dead
    got = coder_loss(coder, x, y, tc)[0]
    want = _dense_matryoshka_loss(coder, x, y, tc, [4, 13, 22, F], dead)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g_want = torch.autograd.grad(want, params)
    for name, a, b in zip(names, torch.autograd.grad(got, params), g_want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")
    plain = _dense_matryoshka_loss(coder, x, y, tc, [F], dead)  # the prefixes change the gradient: this can fail
    assert (torch.autograd.grad(plain, coder.W_dec)[0] - g_want[names.index("W_dec")]).abs().max() > 1e-3


def _data(n=2048, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(64, d, generator=g)
    z = (torch.rand(n, 64, generator=g) < 0.05) * torch.rand(n, 64, generator=g)
    return z @ basis * 5 + 2.0


def _cfg(**kw):
    base = dict(kind="sae", arch="topk", hooks=["h"], k=4, d_sae=64, tokens=64 * 30, batch_size=64, lr=3e-3,
                warmup_steps=3, checkpoint_every=3, seed=3)
    return TrainConfig(**{**base, **kw})


def test_adam_with_per_parameter_learning_rates_equals_torch_optim_float64():
    """Adam.lr_scales (the KL fine-tune's step sizes relative to each weight's RMS) equals torch.optim.Adam with one
    parameter group per parameter at lr x scale, over several steps, a transposed parameter among them."""
    from glasswork.training.optim import Adam
    def make():
        g = torch.Generator().manual_seed(3)
        return [torch.nn.Parameter(torch.randn(6, 4, generator=g, dtype=torch.float64).T.contiguous().T),
                torch.nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64)),
                torch.nn.Parameter(torch.randn(3, 2, generator=g, dtype=torch.float64))]
    mine, ref = make(), make()
    scales = [1.0, 0.05, 3.0]
    opt = Adam([mine[:2], mine[2:]])
    opt.lr_scales = scales
    ref_opt = torch.optim.Adam([{"params": [p], "lr": 1e-2 * s} for p, s in zip(ref, scales)], eps=1e-8)
    grads = torch.Generator().manual_seed(4)
    for step in range(4):
        for pm, pr in zip(mine, ref):
            g = torch.randn(pm.shape, generator=grads, dtype=torch.float64)
            pm.grad, pr.grad = g.clone(), g.clone()
        opt.lr = 1e-2
        opt.step(0.0)
        ref_opt.step()
        for pm, pr in zip(mine, ref):
            torch.testing.assert_close(pm, pr, rtol=1e-12, atol=1e-12)
    assert not torch.equal(mine[1], make()[1])  # it moved


def test_adam_with_per_group_clipping_equals_torch_optim_float64():
    """The fused, per-dictionary-clipped Adam equals torch.optim.Adam after clip_grad_norm_ on each group, over
    several steps: a group that is clipped, one that is not, a parameter stored transposed (an encoder's layout)
    and a frozen one without a gradient."""
    from glasswork.training.optim import Adam
    torch.manual_seed(0)
    def make():
        g = torch.Generator().manual_seed(1)
        return [[torch.nn.Parameter(torch.randn(7, 5, generator=g, dtype=torch.float64).T.contiguous().T),
                 torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))],
                [torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64)),
                 torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64), requires_grad=False)]]
    mine, ref = make(), make()
    opt = Adam(mine, betas=(0.9, 0.99))
    ref_opt = torch.optim.Adam([p for g in ref for p in g if p.requires_grad], lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    grads = torch.Generator().manual_seed(2)
    clipped = set()
    for step in range(5):
        scale = [10.0, 0.01][step % 2]  # group 0 is clipped at odd steps only
        for groups in (mine, ref):
            for gi, g in enumerate(groups):
                for p in g:
                    if p.requires_grad:
                        p.grad = None
        for pm, pr in zip([p for g in mine for p in g], [p for g in ref for p in g]):
            if pm.requires_grad:
                grad = torch.randn(pm.shape, generator=grads, dtype=torch.float64) * scale
                pm.grad, pr.grad = grad.clone(), grad.clone()
        opt.lr = 1e-2
        norms = opt.step(max_norm=1.0)
        for gi, g in enumerate(ref):
            ref_norm = torch.nn.utils.clip_grad_norm_([p for p in g if p.requires_grad], 1.0)
            assert abs(norms[gi] - float(ref_norm)) <= 1e-12 * float(ref_norm)
            clipped |= {gi} if float(ref_norm) > 1.0 else set()
        ref_opt.step()
        for pm, pr in zip([p for g in mine for p in g], [p for g in ref for p in g]):
            # rtol 1e-6: the kernel takes the clip's scale in float32 (6e-8 relative); unclipped, it is float64-exact
            torch.testing.assert_close(pm.detach(), pr.detach(), rtol=1e-6, atol=1e-12)
    assert clipped == {0, 1}  # both groups were clipped at some step and left alone at others
    assert mine[1][1].grad is None and torch.equal(mine[1][1], make()[1][1])  # the frozen one did not move


def test_training_learns_and_folds_scale(tmp_path):
    x = _data()
    r = train(_cfg(tokens=64 * 60), TensorSource({"h": x}, 64), tmp_path / "sae")
    sae = load(tmp_path / "sae")
    assert not (tmp_path / "sae" / "checkpoint.safetensors").exists()
    assert sae.cfg.metrics["train_fvu"] == r["dictionaries"]["h"]["train_fvu"]
    fvu = gw.evals.fvu(x, sae(x)) if hasattr(gw, "evals") else None
    from glasswork.evals import fvu as fvu_fn
    assert fvu_fn(x, sae(x)) < 0.5  # random init is ~1.0 or worse; raw activations in, raw out
    assert abs(fvu_fn(x, sae(x)) - r["dictionaries"]["h"]["train_fvu"]) < 0.15


@pytest.mark.parametrize("kind", ["sae", "transcoder", "clt", "clt-skip"])
def test_fold_scale_exact(kind):
    torch.manual_seed(0)
    if kind.startswith("clt"):
        d = CrossLayerTranscoder(DictionaryConfig(kind="clt", d_in=8, d_sae=20, n_layers=3, activation="relu", b_dec_in=False,
                                                  window=2, skip=kind == "clt-skip"))
        d.b_dec.data.normal_()
        if d.W_skip is not None:
            d.W_skip.data.normal_()
        x = torch.randn(5, 3, 8, dtype=torch.float64)
        s_in, s_out = [0.5, 2.0, 3.0], [1.5, 0.25, 4.0]
        d, f = d.double(), fold_scale(d, s_in, s_out).double()
        want = d(x * torch.tensor(s_in, dtype=torch.float64)[:, None]) / torch.tensor(s_out, dtype=torch.float64)[:, None]
        torch.testing.assert_close(f(x), want)
        return
    cfg = DictionaryConfig(kind=kind, d_in=8, d_sae=20, activation="topk", k=3, skip=kind == "transcoder",
                           b_dec_in=kind == "sae")
    d = SparseCoder(cfg).double()
    d.b_dec.data.normal_()
    if d.W_skip is not None:
        d.W_skip.data.normal_()
    s_in, s_out = (0.3, 0.3) if kind == "sae" else (0.3, 2.5)
    x = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(fold_scale(d, [s_in], [s_out]).double()(x), d(x * s_in) / s_out)


def test_several_transcoders_and_a_clt_from_one_pass(tmp_path):
    g = torch.Generator().manual_seed(1)
    acts = {}
    for l in range(3):
        xin = torch.randn(1024, 16, generator=g)
        acts[f"blocks.{l}.ln2.hook_normalized"] = xin
        acts[f"blocks.{l}.hook_mlp_out"] = (xin @ torch.randn(16, 16, generator=g) - 1.5).relu() * (l + 1)
    src = TensorSource(acts, 128)
    r = train(TrainConfig(kind="transcoder", arch="topk", layers=[0, 1, 2], k=4, d_sae=48, tokens=128 * 25,
                          batch_size=128, lr=2e-2, warmup_steps=2, skip=True), src, tmp_path / "tc")
    tcs = gw.load_transcoders(tmp_path / "tc")
    assert sorted(tcs) == [0, 1, 2] and all(tcs[l].W_skip is not None for l in tcs)
    from glasswork.evals import fvu
    for l, t in tcs.items():
        y = acts[f"blocks.{l}.hook_mlp_out"]
        assert fvu(y, t(acts[f"blocks.{l}.ln2.hook_normalized"]).detach()) < 0.6
    r = train(TrainConfig(kind="clt", arch="relu", layers=[0, 1, 2], d_sae=32, tokens=128 * 25, batch_size=128,
                          lr=1e-2, warmup_steps=2), src, tmp_path / "clt")
    clt = load(tmp_path / "clt")
    x = torch.stack([acts[f"blocks.{l}.ln2.hook_normalized"] for l in range(3)], 1)
    y = torch.stack([acts[f"blocks.{l}.hook_mlp_out"] for l in range(3)], 1)
    assert fvu(y, clt(x).detach()) < 0.8 and clt.cfg.metrics["train_l0"] > 0


SCRIPT = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from test_training import _data, _cfg, _resume_data
from glasswork.training import TensorSource, train

class Slow(TensorSource):
    def batches(self, start=0, rank=0, world=1):
        for b in super().batches(start, rank, world):
            time.sleep({pause})
            yield b

extra = {extra!r}
train(_cfg(**extra), Slow(_resume_data(extra), 64), {out!r}, resume=True)
"""

def _kill_after_a_checkpoint(proc, out: Path, after_s: float, wait_s: float = 120,
                             name: str = "checkpoint.safetensors") -> int:
    """kill -9 `proc` `after_s` seconds after its first checkpoint `name` appears in `out`; the checkpoint's step (the
    run must not have finished: the checkpoint is still there, and no config.json)."""
    from glasswork.training.checkpoint import load_checkpoint
    deadline = time.time() + wait_s
    while not (out / name).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(after_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / name).exists() and not (out / "config.json").exists()
    return load_checkpoint(out / name)[1]["step"]


TRANSCODER = dict(kind="transcoder", hooks=[], layers=[0], skip=True)


def _resume_data(extra):
    if extra.get("kind") not in ("transcoder", "clt"):
        return {"h": _data()}
    x = _data()
    return {"blocks.0.ln2.hook_normalized": x, "blocks.0.hook_mlp_out": (x - 2).relu() @ _data(n=16, seed=1) / 4 + 1}


def _load_trained(out, extra):
    return gw.load_transcoders(out)[0] if extra.get("kind") == "transcoder" else load(out)


@pytest.mark.parametrize("extra", [{}, {"matryoshka": [16, 40]}, {**TRANSCODER, "skip_fit": True, "init": "data", "init_tokens": 320},
                                   {**TRANSCODER, "skip_fit": True, "freeze_skip": True, "init_tokens": 640},
                                   {"kind": "clt", "hooks": [], "layers": [0], "arch": "relu", "init": "data",
                                    "init_tokens": 128},
                                   {"kind": "clt", "hooks": [], "layers": [0], "arch": "topk", "init": "data",
                                    "init_tokens": 320, "skip": True, "skip_fit": True},
                                   {**TRANSCODER, "skip_fit": True, "init": "data", "init_tokens": 320,
                                    "resample_every": 2, "dead_tokens": 64},
                                   {"k_start": 12, "k_anneal": 0.5},
                                   {**TRANSCODER, "skip_fit": True, "init": "data", "init_pick": "spread",
                                    "init_tokens": 320},
                                   {**TRANSCODER, "skip_fit": True, "init": "data", "init_tokens": 320,
                                    "revive_rate": 0.05, "revive_tokens": 64}],
                         ids=["plain", "matryoshka", "skip-fit-data-init", "frozen-skip", "clt", "clt-skip-fit", "resample",
                              "k-anneal", "spread-seeds", "revive"])
def test_resume_after_kill_equals_uninterrupted(tmp_path, extra):
    """Every run in a fresh single-threaded process, so all three use the same kernels and reduction order."""
    env = {**os.environ, "GLASSWORK_PROGRESS": "0", "OMP_NUM_THREADS": "1"}

    def start(out, pause):
        script = SCRIPT.format(tests=str(Path(__file__).parent), out=str(out), pause=pause, extra=extra)
        return subprocess.Popen([sys.executable, "-c", script], env=env)

    out = tmp_path / "killed"
    straight = start(tmp_path / "straight", 0)
    assert 0 < _kill_after_a_checkpoint(start(out, 0.25), out, 0.3) < 30
    assert start(out, 0).wait() == 0 and straight.wait() == 0
    a = _load_trained(out, extra).state_dict()
    b = _load_trained(tmp_path / "straight", extra).state_dict()
    for name in b:
        assert torch.equal(a[name], b[name]), name  # bit for bit
    assert _load_trained(out, extra).cfg.tokens_seen == 64 * 30
    assert _load_trained(out, extra).cfg.training["precision_used"] == gw.precision.resolve("auto")
    assert _load_trained(out, extra).cfg.training["matryoshka"] == extra.get("matryoshka", [])


SOURCE_SCRIPT = """
import sys, time
import glasswork as gw
from glasswork.data import corpus
from glasswork.data.store import ActivationStore
from glasswork.training import ModelSource, StoreSource, TrainConfig, train

pause, kind, out, store = {pause!r}, {kind!r}, {out!r}, {store!r}
base = ModelSource if kind.startswith("model") else StoreSource
repeat = 2 if kind == "model-repeat" else 1
shuffle = kind == "model-shuffle"

class Slow(base):  # the same batches, with a pause so that the kill lands mid-run
    def batches(self, start=0, rank=0, world=1):
        for b in super().batches(start, rank, world):
            time.sleep(pause)
            yield b

hook = "blocks.1.hook_resid_post"
cfg = TrainConfig(kind="sae", arch="topk", hooks=[hook], k=4, d_sae=64, tokens=60 * 24, batch_size=60, lr=3e-3,
                  warmup_steps=3, checkpoint_every=3, seed=3, repeat=repeat, shuffle=shuffle)
if kind.startswith("model"):  # the model read while reading the corpus, as `glasswork train` does
    source = Slow(gw.load_model(), corpus.default_texts, [hook], 60, ctx=16, mix=2, repeat=repeat, shuffle=shuffle,
                  seed=3)
else:
    source = Slow(ActivationStore(store), [hook], 60)
train(cfg, source, out, resume=True)
"""


@pytest.mark.model
@pytest.mark.parametrize("kind", ["store", "model", "model-repeat", "model-shuffle"])
def test_resume_after_kill_equals_uninterrupted_from_a_store_and_from_the_model(tmp_path, default_model, kind):
    """kill -9 mid-run, then resume: bit for bit the uninterrupted run, reading an activation store on disk or the
    default model itself (each run in a fresh single-threaded process)."""
    from glasswork.data.store import harvest
    store = tmp_path / "store"
    if kind == "store":
        harvest(default_model, ["blocks.1.hook_resid_post"], store, tokens=60 * 30, ctx_len=16)
    env = {**os.environ, "GLASSWORK_PROGRESS": "0", "OMP_NUM_THREADS": "1"}

    def start(out, pause):
        script = SOURCE_SCRIPT.format(pause=pause, kind=kind, out=str(out), store=str(store))
        return subprocess.Popen([sys.executable, "-c", script], env=env)

    out = tmp_path / "killed"
    assert start(tmp_path / "straight", 0).wait() == 0
    assert 0 < _kill_after_a_checkpoint(start(out, 0.3), out, 0.4, wait_s=180) < 24
    assert start(out, 0).wait() == 0
    a, b = load(out), load(tmp_path / "straight")
    for name, value in b.state_dict().items():
        assert torch.equal(a.state_dict()[name], value), name  # bit for bit
    assert a.cfg.tokens_seen == b.cfg.tokens_seen == 60 * 24


def test_nan_batches_skipped_and_counted(tmp_path):
    x = _data(n=640)
    x[64 * 2 + 5, 3] = float("nan")  # one bad row spoils batch... wherever the shuffle puts it
    x[64 * 7 + 1, 0] = float("inf")
    r = train(_cfg(checkpoint_every=0, tokens=64 * 10), TensorSource({"h": x}, 64), tmp_path / "o")
    assert 1 <= r["skipped_batches"] <= 2
    d = load(tmp_path / "o")
    assert all(torch.isfinite(t).all() for t in d.state_dict().values())
    assert d.cfg.metrics["skipped_batches"] == r["skipped_batches"]


def test_all_nan_stops_clearly_and_keeps_checkpoint(tmp_path):
    x = _data(n=640)
    src = TensorSource({"h": x}, 64)
    out = tmp_path / "o"
    train(_cfg(tokens=64 * 5), src, out)  # a finished artifact: must survive what follows
    before = (out / "weights.safetensors").read_bytes()
    with pytest.raises(GlassworkError, match="already holds"):
        train(_cfg(tokens=64 * 5), src, out)
    assert (out / "weights.safetensors").read_bytes() == before
    bad = x.clone()
    bad[::3] = float("nan")
    with pytest.raises(GlassworkError, match="NaN or inf"):
        train(_cfg(tokens=64 * 40, checkpoint_every=2), TensorSource({"h": bad}, 64), tmp_path / "nan")


def test_bad_inputs_clear_errors(tmp_path):
    x = _data(n=640)
    with pytest.raises(GlassworkError, match="unknown arch"):
        TrainConfig(kind="sae", arch="gated", hooks=["h"])
    with pytest.raises(GlassworkError, match="unknown activation"):
        DictionaryConfig.from_dict({"kind": "sae", "d_in": 4, "d_sae": 8, "activation": "gated"})
    with pytest.raises(GlassworkError, match="from model 'other-model'"):
        train(_cfg(model="smollm2-135m"), TensorSource({"h": x}, 64, model="other-model"), tmp_path / "m")
    with pytest.raises(GlassworkError, match="no hook"):
        train(_cfg(hooks=["blocks.3.hook_resid_post"]), TensorSource({"h": x}, 64), tmp_path / "h")
    # resume with data of another width: the checkpoint is refused with the reason, and left intact
    out = tmp_path / "r"
    src = TensorSource({"h": x}, 64)
    with pytest.raises(GlassworkError):
        train(_cfg(tokens=64 * 40, checkpoint_every=2), TensorSource({"h": torch.cat([x, x[:64] * float("nan")])}, 64), out)
    ckpt = (out / "checkpoint.safetensors").read_bytes()
    with pytest.raises(GlassworkError, match="d_in"):
        train(_cfg(tokens=64 * 40, checkpoint_every=2), TensorSource({"h": torch.randn(640, 24)}, 64), out, resume=True)
    assert (out / "checkpoint.safetensors").read_bytes() == ckpt
    # a stored dictionary fed the wrong width
    sae = SparseCoder(DictionaryConfig(kind="sae", d_in=16, d_sae=32))
    with pytest.raises(GlassworkError, match="d_in = 16"):
        sae(torch.randn(3, 17))


def test_k_anneal_falls_linearly_and_each_step_uses_its_k(tmp_path):
    """--k-start: k falls linearly from k_start to k over the first k_anneal of the steps, and a step's codes have
    that many active latents; k_start below k, or on an arch without a k, is refused."""
    from glasswork.training.trainer import Trainer
    tc = _cfg(k=4, k_start=16, k_anneal=0.5, tokens=64 * 20)  # 20 steps: k reaches 4 at step 10
    ks = [tc.k_at(s) for s in range(20)]
    assert ks[0] == 16 and ks[5] == 10 and ks[10:] == [4] * 10
    assert all(a >= b for a, b in zip(ks, ks[1:]))
    assert _cfg(k=4).k_at(0) == 4  # off: k throughout
    x = _data() + 3  # inputs off the origin: every pre-activation of the top k is positive, so l0 counts k
    t = Trainer(tc, TensorSource({"h": x}, 64, seed=1), tmp_path / "o")
    batches = t.source.batches(0)
    for step in range(12):
        t.step = step
        l0 = float(t.train_step(next(batches))["h"]["l0"])
        assert l0 == pytest.approx(ks[step], abs=0.5), step
    with pytest.raises(GlassworkError, match="k_start must be 0 or at least k=4"):
        _cfg(k=4, k_start=2)
    with pytest.raises(GlassworkError, match="needs arch topk or batchtopk"):
        _cfg(arch="relu", k_start=16)
    with pytest.raises(GlassworkError, match="k_anneal must be in"):
        _cfg(k_start=16, k_anneal=1.5)
    with pytest.raises(GlassworkError, match="k_start=65 exceeds d_sae=64"):
        Trainer(_cfg(k_start=65), TensorSource({"h": x}, 64, seed=1), tmp_path / "big")


def test_k_anneal_reseeds_on_the_step_k_and_batchtopk_threshold_uses_the_final_k_only(tmp_path, monkeypatch):
    """While k anneals, a re-seed measures the error of the step's own codes (k_at(step) latents a token, not the
    final k), and BatchTopK's inference threshold is estimated from the batches trained at the final k only: the
    mean of their smallest kept activations, recomputed here from the saved per-batch pre-activations."""
    from glasswork.training import trainer as trainer_mod
    from glasswork.training.trainer import Trainer, _training_codes
    x = _data() + 3
    pre = torch.randn(8, 64)
    for k in (2, 9):  # a k other than the dictionary's own
        d = Trainer(_cfg(k=4), TensorSource({"h": x}, 64, seed=1), tmp_path / f"c{k}").units[0].dictionary
        assert ((_training_codes(d, pre, k) != 0).sum(-1) <= k).all() and (_training_codes(d, pre.abs() + 1, k) != 0).sum(-1).eq(k).all()
    # re-seeding at step 2 of a 16 -> 4 anneal: the error handed to reseed_latents is y - recon with k_at(2) codes
    seen = {}
    real = trainer_mod.reseed_latents
    def spy(W_enc, b_enc, W_dec, latents, xs, error, gen, enc_norm):
        seen["error"] = error.clone()
        return real(W_enc, b_enc, W_dec, latents, xs, error, gen, enc_norm)
    monkeypatch.setattr(trainer_mod, "reseed_latents", spy)
    tc = _cfg(k=4, k_start=16, k_anneal=0.5, tokens=64 * 20, dead_tokens=64, precision="fp32")
    t = Trainer(tc, TensorSource({"h": x}, 64, seed=1), tmp_path / "r")
    batch = next(t.source.batches(0))
    t.step = 2
    t.since_fired[0][:8] = 10**6  # eight dead latents
    d = t.units[0].dictionary
    with torch.no_grad():
        xs = batch["h"] * t.scale["h"]
        values, indices = d.pre_acts(xs).topk(tc.k_at(2), dim=-1)
        codes = torch.zeros(xs.shape[0], 64).scatter(-1, indices, values.relu())
        expect = xs - (codes @ d.W_dec + d.b_dec)
    t._reseed_dead(batch)
    assert tc.k_at(2) == 14 and torch.allclose(seen["error"], expect, atol=1e-4)
    # BatchTopK: 20 steps, k reaches 4 at step 10; the threshold is the mean over steps 10..19 only
    tc = _cfg(arch="batchtopk", k=4, k_start=16, k_anneal=0.5, tokens=64 * 20, checkpoint_every=0, lr=1e-3,
              precision="fp32")
    t = Trainer(tc, TensorSource({"h": x}, 64, seed=1), tmp_path / "b")
    batches, mins = t.source.batches(0), []
    for step in range(20):
        t.step = step
        batch = next(batches)
        d = t.units[0].dictionary
        with torch.no_grad():
            pre = d.pre_acts(batch["h"] * t.scale["h"])
            kept = trainer_mod.batch_topk(pre, tc.k_at(step))
            mins.append(float(kept[kept > 0].min()))
        t.train_step(batch)
    assert t.thresholds["h"] == pytest.approx(mins[10:], rel=1e-5)


def test_matryoshka_bad_prefixes_clear_errors(tmp_path):
    from glasswork.cli.training import parse_sizes
    for sizes, why in [([0, 8], "sizes must be positive integers"), ([-4], "sizes must be positive integers"),
                       ([8.0], "sizes must be positive integers"), ([8, 8], "sizes must be strictly increasing"),
                       ([16, 8], "sizes must be strictly increasing"), ([32, 128], "size 128 exceeds d_sae=64")]:
        with pytest.raises(GlassworkError, match=rf"matryoshka prefix {why} \(got {re.escape(str(sizes))}"):
            _cfg(matryoshka=sizes)
    with pytest.raises(GlassworkError, match=r"matryoshka=\[8\] is for SAEs and transcoders, not kind 'clt'"):
        TrainConfig(kind="clt", layers=[0, 1], matryoshka=[8])
    x = _data(n=640)
    with pytest.raises(GlassworkError, match=r"matryoshka prefix size 40 exceeds d_sae=32"):  # d_sae from expansion
        train(_cfg(d_sae=0, expansion=2, matryoshka=[16, 40]), TensorSource({"h": x}, 64), tmp_path / "e")
    assert not (tmp_path / "e").exists()
    assert parse_sizes("256,1024") == [256, 1024] and parse_sizes("") == []
    with pytest.raises(GlassworkError, match="--matryoshka: expected comma-separated integers"):
        parse_sizes("256,1k")

    class Dies(TensorSource):  # the run dies after a few steps, leaving its checkpoint
        def batches(self, start=0, rank=0, world=1):
            for n, b in enumerate(super().batches(start, rank, world)):
                if n == 4:
                    raise RuntimeError("killed")
                yield b

    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(tokens=64 * 10, checkpoint_every=2, matryoshka=[16]), Dies({"h": x}, 64), out)
    ckpt = (out / "checkpoint.safetensors").read_bytes()
    for other in ([16, 40], []):  # resuming with other prefixes is refused, naming both; the checkpoint is kept
        asks = re.escape(f"matryoshka=[16], this run asks for matryoshka={other}")
        with pytest.raises(GlassworkError, match=asks):
            train(_cfg(tokens=64 * 10, checkpoint_every=2, matryoshka=other), TensorSource({"h": x}, 64), out,
                  resume=True)
        assert (out / "checkpoint.safetensors").read_bytes() == ckpt
    train(_cfg(tokens=64 * 10, checkpoint_every=2, matryoshka=[16]), TensorSource({"h": x}, 64), out, resume=True)
    assert load(out).cfg.training["matryoshka"] == [16] and load(out).cfg.tokens_seen == 64 * 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("keep", ["1", "0"])
def test_freed_memory_is_reused_without_page_faults(keep):
    # a training step re-allocates the same large tensors; kept memory means no page faults once the heap has settled
    code = textwrap.dedent("""
        import resource, torch
        import glasswork.training.trainer  # what a training process has loaded when the trainer calls it
        from glasswork.allocator import keep_freed_memory
        kept, faults = keep_freed_memory(), []
        for _ in range(6):  # 64 MB, freed at once
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.empty(16 * 2**20).fill_(1.0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(kept, *faults)
    """)
    env = {**os.environ, "GLASSWORK_KEEP_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    kept, faults = out[0] == "True", [int(f) for f in out[1:]]
    pages = 64 * 2**20 // 4096
    if keep == "1":
        assert kept and max(faults[3:]) < pages // 10, f"page faults per 64 MB allocation: {faults}"
    else:  # glibc's default: every such allocation is a fresh mapping whose pages fault in again
        assert not kept and min(faults[3:]) > pages // 2, faults


# --- initialization from data: the closed-form skip and latents seeded on tokens ---------------------------------

def test_fit_linear_equals_least_squares_float64():
    from glasswork.training.init import fit_linear
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 12, dtype=torch.float64) + 0.7
    y = x @ torch.randn(12, 9, generator=g, dtype=torch.float64) + 3 + 0.5 * torch.randn(300, 9, generator=g, dtype=torch.float64)
    W, b = fit_linear(x, y, ridge=0)
    ones = torch.ones(300, 1, dtype=torch.float64)
    ref = torch.linalg.lstsq(torch.cat([x, ones], 1), y).solution  # [13, 9]: W then b
    torch.testing.assert_close(W, ref[:-1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b, ref[-1], rtol=1e-10, atol=1e-10)
    Wr, _ = fit_linear(x, y, ridge=1e-2)  # the damping moves the solution (the option does something)
    assert (Wr - W).abs().max() > 1e-6


def test_skip_fit_needs_more_samples_than_d_in(tmp_path):
    from glasswork.training.init import fit_linear
    with pytest.raises(GlassworkError, match="more samples than input dimensions"):
        fit_linear(torch.randn(16, 16), torch.randn(16, 4))
    acts = {"blocks.0.ln2.hook_normalized": torch.randn(256, 16), "blocks.0.hook_mlp_out": torch.randn(256, 16)}
    with pytest.raises(GlassworkError, match="skip_fit_tokens|more samples"):
        train(_cfg(**TRANSCODER, skip_fit=True, init_tokens=8, batch_size=8, tokens=64), TensorSource(acts, 8), tmp_path / "o")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    with pytest.raises(GlassworkError, match="need skip=True"):
        TrainConfig(kind="transcoder", layers=[0], skip_fit=True)
    with pytest.raises(GlassworkError, match="init must be random or data"):
        TrainConfig(kind="transcoder", layers=[0], init="kmeans")
    with pytest.raises(GlassworkError, match="skip is for transcoders and CLTs"):
        TrainConfig(kind="sae", hooks=["h"], skip=True, skip_fit=True)


@pytest.mark.parametrize("skip_ridge", [1e-6, 0.1])
def test_skip_fit_starts_at_least_squares_and_explains_a_linear_mlp(tmp_path, skip_ridge):
    from glasswork.training.init import fit_linear
    from glasswork.training.trainer import Trainer
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2048, 16, generator=g) * 3
    A = torch.randn(16, 16, generator=g)
    acts = {"blocks.0.ln2.hook_normalized": x, "blocks.0.hook_mlp_out": x @ A + 0.5 + 0.01 * torch.randn(2048, 16, generator=g)}
    tc = _cfg(**TRANSCODER, skip_fit=True, freeze_skip=True, init_tokens=512, tokens=64 * 20, skip_ridge=skip_ridge)
    t = Trainer(tc, TensorSource(acts, 64, seed=1), tmp_path / "o")
    d = t.units[0].dictionary
    rows = torch.cat([b["blocks.0.ln2.hook_normalized"] for b in t._prefetched])
    outs = torch.cat([b["blocks.0.hook_mlp_out"] for b in t._prefetched])
    sx, sy = t.scale["blocks.0.ln2.hook_normalized"], t.scale["blocks.0.hook_mlp_out"]
    W, b = fit_linear(rows * sx, outs * sy, ridge=skip_ridge)
    assert len(t._prefetched) == 8  # 512 init tokens = the first 8 batches, trained on first
    torch.testing.assert_close(d.W_skip.detach(), W)
    torch.testing.assert_close(d.b_dec.detach(), b)
    t.run()
    tcs = gw.load_transcoders(tmp_path / "o")
    torch.testing.assert_close(tcs[0].W_skip, W * sx / sy)  # frozen: as fitted (scale folded in)
    from glasswork.evals import fvu
    y = acts["blocks.0.hook_mlp_out"]
    # the fit alone explains the linear MLP; the default ridge shrinks it ~1/1.1 on these isotropic inputs
    assert fvu(y, (x * sx @ W + b) / sy) < (1e-3 if skip_ridge < 1e-3 else 0.02)


@pytest.mark.parametrize("init_outlier", [10.0, 0.0])
def test_init_leaves_massive_activations_out(tmp_path, init_outlier):
    """Two tokens of the init sample with a 1,000x MLP output (as the default model's layer 11 has): left out, the
    skip fit and the scale are those of the other tokens; kept (init_outlier 0), they decide both."""
    from glasswork.training.init import fit_linear
    from glasswork.training.trainer import Trainer
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2048, 16, generator=g) * 3
    y = x @ torch.randn(16, 16, generator=g) + 0.5
    order = torch.randperm(2048, generator=torch.Generator().manual_seed(1 * 100_003))  # TensorSource(seed=1)'s
    y[order[[5, 300]]] = torch.randn(2, 16, generator=g) * 5000  # in the first batch, and later in the init sample
    acts = {"blocks.0.ln2.hook_normalized": x, "blocks.0.hook_mlp_out": y}
    tc = _cfg(**TRANSCODER, skip_fit=True, init_tokens=512, init_outlier=init_outlier, tokens=64 * 20, skip_ridge=1e-6)
    t = Trainer(tc, TensorSource(acts, 64, seed=1), tmp_path / "o")
    d = t.units[0].dictionary
    rows = torch.cat([b["blocks.0.ln2.hook_normalized"] for b in t._prefetched])
    outs = torch.cat([b["blocks.0.hook_mlp_out"] for b in t._prefetched])
    typical = outs.norm(dim=-1) < 1000
    assert int((~typical).sum()) == 2
    first = t._prefetched[0]["blocks.0.hook_mlp_out"]
    kept = first[first.norm(dim=-1) < 1000] if init_outlier else first
    assert t.scale["blocks.0.hook_mlp_out"] == pytest.approx(float(1 / kept.pow(2).sum(-1).mean().sqrt()), rel=1e-5)
    sx, sy = t.scale["blocks.0.ln2.hook_normalized"], t.scale["blocks.0.hook_mlp_out"]
    keep = typical if init_outlier else torch.ones_like(typical)
    W, b = fit_linear(rows[keep] * sx, outs[keep] * sy)
    torch.testing.assert_close(d.W_skip.detach(), W)
    from glasswork.evals import fvu
    rest = order[512:]  # tokens outside the init sample, none of them massive
    err = fvu(y[rest] * sy, x[rest] * sx @ d.W_skip.detach() + d.b_dec.detach())
    assert (err < 1e-3) if init_outlier else (err > 0.01)  # the other tokens' linear map, or one bent by two tokens


def test_data_init_seeds_each_latent_on_a_token():
    from glasswork.training.init import seed_latents_on_tokens
    g = torch.Generator().manual_seed(3)
    x, r = torch.randn(100, 8, generator=g) + 1, torch.randn(100, 6, generator=g) * 2
    W_enc, b_enc, W_dec = torch.zeros(8, 40), torch.zeros(40), torch.zeros(40, 6)
    seed_latents_on_tokens(W_enc, b_enc, W_dec, x, r, torch.Generator().manual_seed(0))
    torch.testing.assert_close(W_dec.norm(dim=-1), torch.ones(40))
    # latent i's decoder row is the direction of a token's residual, and its pre-activation there is that norm
    cos = (W_dec @ (r / r.norm(dim=-1, keepdim=True)).T)  # [40, 100]
    token = cos.argmax(1)
    assert torch.allclose(cos.max(1).values, torch.ones(40), atol=1e-5) and token.unique().numel() == 40
    pre = x[token] @ W_enc + b_enc  # [40, 40]
    torch.testing.assert_close(pre.diagonal(), r[token].norm(dim=-1), rtol=1e-4, atol=1e-4)
    with pytest.raises(GlassworkError, match="at least one token per latent"):
        seed_latents_on_tokens(W_enc, b_enc, W_dec, x[:10], r[:10], torch.Generator())


def test_reseed_rewrites_only_the_dead_latents_on_tokens_with_error():
    from glasswork.training.init import reseed_latents
    g = torch.Generator().manual_seed(7)
    x, err = torch.randn(30, 8, generator=g) + 1, torch.randn(30, 6, generator=g)
    err[::2] = 0  # tokens the dictionary explains exactly: never a seed
    W_enc, b_enc, W_dec = torch.randn(8, 40, generator=g), torch.randn(40, generator=g), torch.randn(40, 6, generator=g)
    before = [t.clone() for t in (W_enc, b_enc, W_dec)]
    dead = torch.tensor([3, 9, 11, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36])  # 20 > 15 tokens
    done = reseed_latents(W_enc, b_enc, W_dec, dead, x, err, torch.Generator().manual_seed(0))
    assert torch.equal(done, dead[:15])  # one latent per token with an error
    alive = torch.ones(40, dtype=torch.bool)
    alive[done] = False
    assert torch.equal(W_dec[alive], before[2][alive]) and torch.equal(W_enc[:, alive], before[0][:, alive])
    assert torch.equal(b_enc[alive], before[1][alive])
    cos = W_dec[done] @ (err / err.norm(dim=-1, keepdim=True).clamp_min(1e-8)).T  # [15, 30]
    token = cos.argmax(1)
    assert torch.allclose(cos.max(1).values, torch.ones(15), atol=1e-5) and token.unique().numel() == 15
    assert bool((token % 2 == 1).all())  # only tokens with an error
    pre = (x[token] @ W_enc + b_enc)[:, done]  # each re-seeded latent's pre-activation on its token is |error| there
    torch.testing.assert_close(pre.diagonal(), err[token].norm(dim=-1), rtol=1e-4, atol=1e-4)
    assert len(reseed_latents(W_enc, b_enc, W_dec, dead, x, err * 0, torch.Generator())) == 0


def test_adam_restart_gives_fresh_moments_to_the_slices_only():
    from glasswork.training.optim import Adam
    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(5, 4, generator=g).T)  # [4, 5], stored transposed as the encoder
    opt = Adam([[w]])
    for _ in range(3):
        w.grad = torch.randn(4, 5, generator=g)
        opt.lr = 1e-2
        opt.step()
    m, v = opt.m[0].clone(), opt.v[0].clone()
    opt.restart(w, torch.tensor([1, 3]), dim=1)
    keep = [0, 2, 4]
    assert torch.equal(opt.m[0][:, keep], m[:, keep]) and torch.equal(opt.v[0][:, keep], v[:, keep])
    assert torch.equal(opt.m[0][:, [1, 3]], torch.zeros(4, 2))
    torch.testing.assert_close(opt.v[0][:, [1, 3]], v[:, keep].mean(1, keepdim=True).expand(4, 2))


@pytest.mark.parametrize("resample_every", [0, 5])
def test_resampling_revives_latents_that_cannot_fire(tmp_path, resample_every):
    """Half the latents are made dead before training (a bias no input overcomes); re-seeding brings them back on
    held-out inputs, and without it they stay dead."""
    from glasswork.training.trainer import Trainer
    x = _data(n=4096)
    tc = _cfg(tokens=64 * 40, dead_tokens=128, resample_every=resample_every, checkpoint_every=10 ** 6)
    trainer = Trainer(tc, TensorSource({"h": x[:3072]}, 64), tmp_path / "o")
    with torch.no_grad():
        trainer.units[0].dictionary.b_enc[:32] = -1e4
    trained = trainer.run()["dicts"]["h"]
    with torch.no_grad():
        fired = (trained.encode(x[3072:]) != 0).any(0)
    if resample_every:
        assert fired[:32].float().mean() > 0.5
        assert trained.cfg.metrics["dead_fraction"] < 0.5
    else:
        assert not fired[:32].any()


def test_revive_rate_brings_back_latents_that_cannot_fire(tmp_path):
    """Half the latents start with a bias that keeps them out of every top k. Without --revive-rate they never fire;
    with it they fire on held-out inputs, and the dictionary reconstructs them better (it has twice the latents)."""
    from glasswork.evals import fvu
    from glasswork.training.trainer import Trainer
    x = _data(n=4096)
    result = {}
    for rate in (0.0, 0.3):
        tc = _cfg(tokens=64 * 40, revive_rate=rate, revive_tokens=128, checkpoint_every=10 ** 6)
        trainer = Trainer(tc, TensorSource({"h": x[:3072]}, 64), tmp_path / str(rate))
        with torch.no_grad():
            trainer.units[0].dictionary.b_enc[:32] = -2.0  # the others' entry bar is ~0.2 here
        trained = trainer.run()["dicts"]["h"]
        with torch.no_grad():
            fired = (trained.encode(x[3072:]) != 0).any(0)
            result[rate] = (fired[:32].float().mean(), trained.cfg.metrics["dead_fraction"],
                            fvu(x[3072:], trained(x[3072:])))
    assert result[0.0][0] == 0 and result[0.0][1] >= 0.5
    assert result[0.3][0] > 0.9 and result[0.3][1] < 0.1
    assert result[0.3][2] < result[0.0][2] - 0.01


def test_raised_bias_is_the_rate_times_the_entry_bar(tmp_path):
    """The rise itself: only latents silent for revive_window tokens move, each by rate x the batch's entry bar (the
    median over tokens of the smallest positive value kept in the top k); a latent one token short stays put."""
    from glasswork.training.losses import _entry_bar
    from glasswork.training.trainer import Trainer
    values = torch.tensor([[3.0, 1.0, 0.0], [5.0, 2.0, 4.0], [0.0, 0.0, 0.0], [7.0, 6.0, 9.0]])
    assert _entry_bar(values) == 2.0  # smallest positive per token: 1, 2, (none), 6 -> median of 1, 2, 6
    assert _entry_bar(torch.zeros(2, 3)) == 0.0
    tc = _cfg(revive_rate=0.25, revive_tokens=100)
    trainer = Trainer(tc, TensorSource({"h": _data()}, 64), tmp_path / "o")
    d = trainer.units[0].dictionary
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        d.b_enc.copy_(torch.randn(64, generator=g))
    before = d.b_enc.detach().clone()
    since = torch.zeros(64, dtype=torch.long)
    since[[3, 7, 40]] = 100
    since[[5]] = 99
    trainer.since_fired[0] = since
    trainer._raise_silent_biases(0, d, torch.tensor([0.8]))
    expected = before.clone()
    expected[[3, 7, 40]] += 0.25 * 0.8
    assert torch.equal(d.b_enc.detach(), expected)
    assert tc.revive_window == 100 and _cfg(revive_rate=0.1).revive_window == 8 * 64


def test_code_scale_is_the_least_squares_scale():
    from glasswork.training.init import fit_code_scale
    g = torch.Generator().manual_seed(5)
    recon, target = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g, dtype=torch.float64)
    target = target + 0.3 * recon
    W, b = torch.ones(3, 5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    c = fit_code_scale(W, b, recon, target)
    brute = torch.linalg.lstsq(recon.reshape(-1, 1), target.reshape(-1, 1)).solution.item()
    assert abs(c - brute) < 1e-12 and torch.equal(W, torch.full((3, 5), c, dtype=torch.float64)) and b[0] == c
    assert fit_code_scale(W, b, recon, -recon) == 1.0 and b[0] == c  # a negative scale would flip TopK: left alone


def test_clt_data_init_seeds_each_layer_on_its_own_output(tmp_path):
    from glasswork.training.trainer import Trainer
    g = torch.Generator().manual_seed(4)
    acts = {}
    for l in range(3):
        x = torch.randn(512, 8, generator=g) + l
        acts[f"blocks.{l}.ln2.hook_normalized"], acts[f"blocks.{l}.hook_mlp_out"] = x, (x @ torch.randn(8, 6, generator=g)).relu()
    tc = _cfg(kind="clt", hooks=[], layers=[0, 1, 2], window=2, d_sae=24, init="data", init_tokens=256, normalize=False,
              b_dec_init="mean")
    trainer = Trainer(tc, TensorSource(acts, 64, seed=1), tmp_path / "o")
    clt = trainer.units[0].dictionary
    sample = {h: torch.cat([b[h] for b in trainer._prefetched]) for h in acts}  # the init sample (256 tokens)
    xs = torch.stack([sample[f"blocks.{l}.ln2.hook_normalized"] for l in range(3)], 1)
    ys = torch.stack([sample[f"blocks.{l}.hook_mlp_out"] for l in range(3)], 1)
    x = torch.stack([acts[f"blocks.{l}.ln2.hook_normalized"] for l in range(3)], 1)  # [n, L, d_in]
    y = torch.stack([acts[f"blocks.{l}.hook_mlp_out"] for l in range(3)], 1)
    for i, w_dec in enumerate(clt.W_dec):
        own = w_dec[:, 0]  # [F, d_out]: each latent's write to its own layer is a unit residual direction of a token
        torch.testing.assert_close(own.norm(dim=-1), torch.ones(24))
        assert torch.equal(w_dec[:, 1:], torch.zeros_like(w_dec[:, 1:]))
        r = y[:, i] - clt.b_dec[i]
        cos = own @ (r / r.norm(dim=-1, keepdim=True).clamp_min(1e-8)).T  # [F, n]
        token = cos.argmax(1)
        assert torch.allclose(cos.max(1).values, torch.ones(24), atol=1e-5)
        pre = clt.pre_acts(x[token])[:, i]  # [F, F]: latent f's pre-activation on its own token is c |r|
        ratio = pre.diagonal() / r[token].norm(dim=-1)
        assert 0 < ratio.min() < 1 and torch.allclose(ratio, ratio.mean().expand(24), rtol=1e-4)
        # c is the least-squares scale of the code's reconstruction on the init sample: the error is orthogonal to it
        with torch.no_grad():
            recon = clt.encode_layer(xs[:, i], i) @ own
            err = ys[:, i] - clt.b_dec[i] - recon
        assert abs(float((err * recon).sum())) < 1e-4 * float(recon.pow(2).sum())


def test_clt_skip_fit_is_each_layers_least_squares_and_seeds_what_it_leaves(tmp_path):
    """A CLT with --skip --skip-fit: layer i's skip and b_dec are the least-squares fit of that layer's output on its
    own input over the init sample (float64 reference), and layer i's latents are seeded on what that fit leaves."""
    from glasswork.training.trainer import Trainer
    g = torch.Generator().manual_seed(5)
    acts = {}
    for l in range(3):
        x = torch.randn(640, 8, generator=g) + l
        acts[f"blocks.{l}.ln2.hook_normalized"] = x
        acts[f"blocks.{l}.hook_mlp_out"] = x @ torch.randn(8, 8, generator=g) + (x @ torch.randn(8, 8, generator=g)).relu()
    tc = _cfg(kind="clt", hooks=[], layers=[0, 1, 2], window=2, d_sae=24, skip=True, skip_fit=True, init="data",
              init_tokens=512, normalize=False, b_dec_init="mean", skip_ridge=0.0)
    trainer = Trainer(tc, TensorSource(acts, 64, seed=1), tmp_path / "o")
    clt = trainer.units[0].dictionary.requires_grad_(False)
    sample = {h: torch.cat([b[h] for b in trainer._prefetched]) for h in acts}
    for i in range(3):
        x, y = sample[f"blocks.{i}.ln2.hook_normalized"], sample[f"blocks.{i}.hook_mlp_out"]
        xd, yd = x.double(), y.double()
        ref = torch.linalg.lstsq(torch.cat([xd, torch.ones(len(xd), 1, dtype=torch.float64)], 1), yd).solution
        torch.testing.assert_close(clt.W_skip[i].double(), ref[:-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(clt.b_dec[i].double(), ref[-1], rtol=1e-5, atol=1e-5)
        r = y - x @ clt.W_skip[i] - clt.b_dec[i]  # each latent's own write is the direction of one token's residual
        cos = clt.W_dec[i][:, 0] @ (r / r.norm(dim=-1, keepdim=True).clamp_min(1e-8)).T
        assert torch.allclose(cos.max(1).values, torch.ones(24), atol=1e-5)
    with torch.no_grad():  # the skip is part of the CLT's prediction
        xs = torch.stack([sample[f"blocks.{i}.ln2.hook_normalized"] for i in range(3)], 1)
        codes = clt.encode(xs)
        torch.testing.assert_close(clt(xs), clt.decode(codes) + torch.einsum("nld,lde->nle", xs, clt.W_skip))


@pytest.mark.model
def test_model_source_mix_shuffles_within_blocks_and_resumes_exactly(default_model):
    from glasswork.training import ModelSource
    m = default_model
    texts = [" ".join(f"word{i} and {j}" for j in range(20)) for i in range(12)]
    hooks = ["blocks.0.hook_resid_post"]
    plain = ModelSource(m, texts, hooks, batch_size=15, ctx=16)
    mixed = ModelSource(m, texts, hooks, batch_size=15, ctx=16, mix=4, seed=1)
    a = [b[hooks[0]] for _, b in zip(range(8), plain.batches())]
    b = [b[hooks[0]] for _, b in zip(range(8), mixed.batches())]
    for blk in (slice(0, 4), slice(4, 8)):  # the same tokens per block of 4 batches, in another order
        pa, pb = torch.cat(a[blk]), torch.cat(b[blk])
        assert not torch.equal(pa, pb)
        assert torch.allclose(pa[pa[:, 0].argsort()], pb[pb[:, 0].argsort()], atol=1e-5)
    # a run resumed at batch 6 (mid-block) gets exactly the batches an unbroken one saw
    resumed = [b[hooks[0]] for _, b in zip(range(2), mixed.batches(start=6))]
    assert torch.equal(resumed[0], b[6]) and torch.equal(resumed[1], b[7])
    with pytest.raises(GlassworkError, match="mix must be at least 1"):
        ModelSource(m, texts, hooks, batch_size=15, ctx=16, mix=0)
    # repeat: each block's tokens come back reshuffled; repeat=1 is the stream above, batch for batch
    again = ModelSource(m, texts, hooks, batch_size=15, ctx=16, mix=4, seed=1, repeat=1)
    assert all(torch.equal(x[hooks[0]], y) for x, y in zip(again.batches(), b))
    twice = ModelSource(m, texts, hooks, batch_size=15, ctx=16, mix=4, seed=1, repeat=2)
    r = [x[hooks[0]] for _, x in zip(range(12), twice.batches())]
    assert all(torch.equal(x, y) for x, y in zip(r[:4], b[:4]))  # the first pass is the plain mixed block
    p0, p1 = torch.cat(r[:4]), torch.cat(r[4:8])
    assert not torch.equal(p0, p1)
    assert torch.equal(p0[p0[:, 0].argsort()], p1[p1[:, 0].argsort()])  # the same tokens, another order
    assert all(torch.equal(x, y) for x, y in zip(r[8:12], b[4:8]))  # then the next block
    for start in (3, 5, 9):  # resumed mid-block, mid-pass: exactly the unbroken stream
        resumed = [x[hooks[0]] for _, x in zip(range(3), twice.batches(start=start))]
        assert all(torch.equal(x, y) for x, y in zip(resumed, r[start:start + 3]))
    with pytest.raises(GlassworkError, match="repeat must be at least 1"):
        ModelSource(m, texts, hooks, batch_size=15, ctx=16, repeat=0)


@pytest.mark.model
def test_model_source_reads_the_model_in_its_precision_and_a_resume_keeps_it(tmp_path, default_model):
    """precision bf16: the forward runs under bf16 autocast (close to fp32's activations, not equal to them); fp32 is
    the plain forward, exactly. A checkpoint records the forward's precision, and a resume that would read the model
    in another one is refused with the option that fixes it."""
    from dataclasses import replace
    from glasswork.data.corpus import token_rows
    from glasswork.hooks import capture
    from glasswork.training import ModelSource
    from glasswork.training.trainer import Trainer
    m = default_model
    texts = [" ".join(f"word{i} and {j}" for j in range(30)) for i in range(8)]
    hooks = ["blocks.2.hook_mlp_out"]
    fp32 = next(ModelSource(m, texts, hooks, batch_size=30, ctx=16).batches())[hooks[0]]
    bf16 = next(ModelSource(m, texts, hooks, batch_size=30, ctx=16, precision="bf16").batches())[hooks[0]]
    ids = torch.stack([r for _, r in zip(range(2), token_rows(m, iter(texts), 16))])
    assert torch.equal(fp32, capture(m, ids, hooks)[1][hooks[0]][:, 1:].reshape(-1, m.d_model))
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert float((bf16 - fp32).norm() / fp32.norm()) < 0.03
    tc = TrainConfig(kind="sae", arch="topk", hooks=hooks, k=4, d_sae=64, tokens=30 * 20, batch_size=30, ctx=16,
                     checkpoint_every=10 ** 9, precision="bf16")
    assert ModelSource.from_config(m, texts, tc).precision == "bf16"
    assert ModelSource(m, texts, hooks, 30, precision="auto").precision == gw.precision.resolve("auto")
    run = Trainer(tc, ModelSource.from_config(m, texts, tc), tmp_path / "o")
    for _, batch in zip(range(2), run.source.batches(0)):
        run.train_step(batch)
    run.step = 2
    run._checkpoint()
    with pytest.raises(GlassworkError, match="read the model in bf16.*--precision bf16"):
        Trainer(replace(tc, precision="auto"), ModelSource(m, texts, hooks, 30, ctx=16, precision="fp32"),
                tmp_path / "o", resume=True)
    Trainer(tc, ModelSource.from_config(m, texts, tc), tmp_path / "o", resume=True)  # the same precision resumes


@pytest.mark.model
def test_model_source_shuffle_reads_every_sequence_once_in_a_seeded_order(default_model):
    from glasswork.data.corpus import token_rows
    from glasswork.training import ModelSource
    m = default_model
    texts = [" ".join(f"word{i} and {j}" for j in range(6 + i)) for i in range(10)]
    hooks = ["blocks.0.hook_resid_post"]
    n = len(list(token_rows(m, texts, 16)))
    plain = [b[hooks[0]] for _, b in zip(range(n), ModelSource(m, texts, hooks, batch_size=15, ctx=16).batches())]
    source = ModelSource(m, texts, hooks, batch_size=15, ctx=16, seed=2, shuffle=True)
    shuffled = [b[hooks[0]] for _, b in zip(range(n), source.batches())]
    # one sequence per batch: the shuffled stream is the plain one, every sequence once, in another order
    match = [next(i for i, p in enumerate(plain) if torch.equal(p, s)) for s in shuffled]
    assert sorted(match) == list(range(n)) and match != list(range(n))
    resumed = [b[hooks[0]] for _, b in zip(range(2), source.batches(start=5))]
    assert torch.equal(resumed[0], shuffled[5]) and torch.equal(resumed[1], shuffled[6])
    other = ModelSource(m, texts, hooks, batch_size=15, ctx=16, seed=3, shuffle=True)
    assert not all(torch.equal(b[hooks[0]], s) for b, s in zip(other.batches(), shuffled))
    # past the last sequence a new epoch starts: every sequence again, in another order
    second = [b[hooks[0]] for _, b in zip(range(2 * n), source.batches())][n:]
    match2 = [next(i for i, p in enumerate(plain) if torch.equal(p, s)) for s in second]
    assert sorted(match2) == list(range(n)) and match2 != match
    with pytest.raises(GlassworkError, match="no sequence of 16 tokens"):
        next(ModelSource(m, ["too short"], hooks, batch_size=15, ctx=16, shuffle=True).batches())


LOAD_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_training import _data, _cfg
from glasswork.training import TensorSource, train
train(_cfg(tokens=64 * 20, checkpoint_every=0), TensorSource({{"h": _data()}}, 64), {out!r})
"""


def test_same_command_idle_and_under_cpu_load_gives_identical_weights(tmp_path):
    """The precision comes from the hardware, not a timing: a run beside a CPU-burning process equals an idle one."""
    env = {**os.environ, "GLASSWORK_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    env.pop("GLASSWORK_BF16", None)

    def run(out):
        script = LOAD_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
        assert subprocess.run([sys.executable, "-c", script], env=env, timeout=300).returncode == 0
        return load(out)

    idle = run(tmp_path / "idle")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        busy = run(tmp_path / "busy")
    finally:
        for b in burners:
            b.kill()
            b.wait()
    for name, t in idle.state_dict().items():
        assert torch.equal(t, busy.state_dict()[name]), name
    assert idle.cfg.training["precision_used"] == busy.cfg.training["precision_used"] == gw.precision.resolve("auto")


def test_precision_is_read_from_the_hardware(monkeypatch):
    from glasswork import precision
    monkeypatch.delenv("GLASSWORK_BF16", raising=False)
    for flags, want in (({"avx2", "fma"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16")):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        precision.bf16_is_fast.cache_clear()
        assert precision.resolve("auto", "cpu") == want and precision.resolve("fp32", "cpu") == "fp32"
    monkeypatch.setenv("GLASSWORK_BF16", "1")
    precision.bf16_is_fast.cache_clear()
    assert precision.resolve("auto") == "bf16"
    precision.bf16_is_fast.cache_clear()
    with pytest.raises(GlassworkError, match="precision"):
        TrainConfig(hooks=["h"], precision="fp16")


def test_resume_keeps_the_recorded_precision(tmp_path):
    src = TensorSource({"h": _data()}, 64)
    out = tmp_path / "o"

    class Stop(Exception):
        pass

    from glasswork.training import trainer as tr
    real = tr.Trainer._checkpoint

    def once(self):
        real(self)
        raise Stop

    tr.Trainer._checkpoint = once
    try:
        with pytest.raises(Stop):
            train(_cfg(tokens=64 * 10, checkpoint_every=3, precision="fp32"), src, out)
    finally:
        tr.Trainer._checkpoint = real
    from glasswork.training.checkpoint import load_checkpoint
    assert load_checkpoint(out / "checkpoint.safetensors")[1]["precision"] == "fp32"
    with pytest.raises(GlassworkError, match="trained in fp32"):
        train(_cfg(tokens=64 * 10, checkpoint_every=3, precision="bf16"), src, out, resume=True)
    train(_cfg(tokens=64 * 10, checkpoint_every=3), src, out, resume=True)  # auto: the recorded fp32
    assert load(out).cfg.training["precision_used"] == "fp32"


def test_a_second_writer_into_the_same_folder_is_refused(tmp_path):
    from glasswork.io import output_lock
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom glasswork.io import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        with pytest.raises(GlassworkError, match="another job"):
            train(_cfg(tokens=64 * 3), TensorSource({"h": _data()}, 64), out)
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    train(_cfg(tokens=64 * 3), TensorSource({"h": _data()}, 64), out)  # the killed holder's lock is taken over
    assert (out / "config.json").exists() and not (out / ".glasswork.lock").exists()
    with output_lock(tmp_path / "p"):
        pass


def test_train_options_are_the_config_fields_and_the_config_is_not_changed(tmp_path):
    """`glasswork train`'s options are TrainConfig's fields (same names, defaults and help: the field docstrings);
    the config given to train() is not changed by it (the run rounds its own copy)."""
    import dataclasses

    import typer

    from glasswork.cli import app
    from glasswork.cli.common import field_docs
    from glasswork.cli.training import TRAIN_PARSERS
    params = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    docs = field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":  # --model names the model to load; the config records the name of the one used
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if f.name in TRAIN_PARSERS else default
        assert params[f.name].default == shown, f.name
        assert params[f.name].help == docs[f.name] and docs[f.name], f.name
    assert TRAIN_PARSERS["layers"]("0-2,5") == [0, 1, 2, 5] and TRAIN_PARSERS["betas"]("0.9,0.99") == [0.9, 0.99]
    tc = _cfg(batch_size=60, tokens=64 * 4, checkpoint_every=0)
    before = dataclasses.asdict(tc)
    train(tc, TensorSource({"h": _data()}, 64, model="m"), tmp_path / "o")  # a source whose batches hold 64 rows
    assert dataclasses.asdict(tc) == before
    assert load(tmp_path / "o").cfg.training["batch_size"] == 64 and load(tmp_path / "o").cfg.model == "m"


@pytest.mark.parametrize("base,change", [({}, {"decay_start": 0.5}), ({}, {"aux_coeff": 0.0}), ({}, {"k_start": 8}),
                                         ({"k_start": 8}, {"k_anneal": 0.3}),
                                         ({"init": "data", "init_tokens": 128}, {"init_pick": "spread"}),
                                         ({}, {"revive_rate": 0.01}),
                                         ({"revive_rate": 0.01}, {"revive_tokens": 256})])
def test_resume_refuses_another_schedule_or_auxk(tmp_path, base, change):
    """The lr's decay start, AuxK's weight and the k schedule change what the remaining steps do: a resume that asks
    for others is refused, naming the option; the same settings resume. Without k annealing (k_start 0), k_anneal
    changes nothing, so another value resumes."""
    from glasswork.training.trainer import Trainer
    acts = _resume_data({})
    t = Trainer(_cfg(tokens=64 * 30, **base), TensorSource(acts, 64, seed=1), tmp_path / "o")
    t._checkpoint()
    name = next(iter(change))
    with pytest.raises(GlassworkError, match=f"made with {name}="):
        Trainer(_cfg(tokens=64 * 30, **{**base, **change}), TensorSource(acts, 64, seed=1), tmp_path / "o", resume=True)
    Trainer(_cfg(tokens=64 * 30, **base), TensorSource(acts, 64, seed=1), tmp_path / "o", resume=True)
    if not base:  # without k annealing / seeding on tokens, these change nothing: another value resumes
        Trainer(_cfg(tokens=64 * 30, k_anneal=0.3), TensorSource(acts, 64, seed=1), tmp_path / "o", resume=True)
        Trainer(_cfg(tokens=64 * 30, init_pick="spread"), TensorSource(acts, 64, seed=1), tmp_path / "o", resume=True)
        Trainer(_cfg(tokens=64 * 30, revive_tokens=256), TensorSource(acts, 64, seed=1), tmp_path / "o", resume=True)


@pytest.mark.parametrize("skip_fit", [False, True])
def test_checkpoint_from_before_skip_ridge_resumes_as_it_was_trained(tmp_path, skip_fit):
    """A checkpoint without skip_ridge: an SAE (no skip fit) resumes under today's default; a fitted skip was fitted
    at 1e-6, so resuming it under the default 0.1 is refused and at 1e-6 it resumes."""
    import json
    from safetensors import safe_open
    from glasswork.training.checkpoint import save_checkpoint
    from glasswork.training.trainer import CHECKPOINT, Trainer
    extra = {**TRANSCODER, "skip_fit": True, "init_tokens": 320} if skip_fit else {}
    acts = _resume_data(extra)
    src = lambda: TensorSource(acts, 64, seed=1)  # noqa: E731
    t = Trainer(_cfg(**extra, tokens=64 * 30), src(), tmp_path / "o")
    t._checkpoint()
    with safe_open(str(tmp_path / "o" / CHECKPOINT), framework="pt") as f:
        meta = json.loads(f.metadata()["glasswork_checkpoint"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    del meta["train_config"]["skip_ridge"]  # as written before the option existed
    save_checkpoint(tmp_path / "o" / CHECKPOINT, tensors, meta)
    if skip_fit:
        with pytest.raises(GlassworkError, match="skip_ridge=1e-06"):
            Trainer(_cfg(**extra, tokens=64 * 30), src(), tmp_path / "o", resume=True)
        Trainer(_cfg(**extra, tokens=64 * 30, skip_ridge=1e-6), src(), tmp_path / "o", resume=True)
    else:
        Trainer(_cfg(**extra, tokens=64 * 30), src(), tmp_path / "o", resume=True)


KL_SCRIPT = """
import time, torch
import glasswork as gw
from glasswork.data import corpus
from glasswork.training import ModelSource, TrainConfig, train

model = gw.load_model()
model.hf.register_forward_pre_hook(lambda *a: time.sleep({pause!r}))  # slow steps, so that the kill lands mid-run
cfg = TrainConfig(kind="transcoder", arch="topk", layers=[2, 3], k=8, d_sae=64, tokens=60 * 20, batch_size=60, lr=3e-3,
                  warmup_steps=2, seed=3, skip=True, skip_fit=True, init="data", init_tokens=900, ctx=16, kl_steps=12,
                  kl_seqs=2, checkpoint_every=2)
train(cfg, ModelSource.from_config(model, corpus.default_texts, cfg), {out!r}, resume=True)
"""


def _kl_config(**kw):
    return TrainConfig(kind="transcoder", arch="topk", layers=[2, 3, 4], k=8, d_sae=128, tokens=60 * 20, batch_size=60,
                       lr=3e-3, warmup_steps=3, seed=3, skip=True, skip_fit=True, init="data", ctx=16, **kw)


@pytest.mark.model
def test_kl_finetune_lowers_the_spliced_kl_and_leaves_the_model_alone(tmp_path, default_model):
    """The same reconstruction run with and without 30 KL fine-tune steps: on held-out sequences the fine-tuned set's
    KL(model || spliced) is lower; the model's weights get no gradient and do not change."""
    from glasswork.data import corpus
    from glasswork.training import ModelSource
    m = default_model
    before = {n: p.detach().clone() for n, p in m.hf.named_parameters() if n.endswith(("layers.3.mlp.up_proj.weight",
                                                                                          "embed_tokens.weight"))}
    heldout = corpus.contexts(m, split="heldout", ctx_len=16)[:64]
    kls = []
    for kl_steps in (0, 30):
        cfg = _kl_config(kl_steps=kl_steps, kl_seqs=4)
        r = train(cfg, ModelSource.from_config(m, corpus.default_texts, cfg), tmp_path / f"kl{kl_steps}")
        kls.append(gw.evaluate(tmp_path / f"kl{kl_steps}", m, heldout, tokens=64 * 14)["kl"])
    assert kls[1] < 0.95 * kls[0], kls
    assert r["kl_finetune"]["steps"] == 30 and r["tokens"] == 60 * 20
    saved = gw.load_transcoders(tmp_path / "kl30")[3]
    assert saved.cfg.metrics["kl_finetune"]["tokens"] == 30 * 4 * 15 and saved.cfg.training["kl_steps"] == 30
    assert not (tmp_path / "kl30" / "kl_checkpoint.safetensors").exists()
    assert all(p.grad is None for p in m.hf.parameters())
    for n, p in m.hf.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), n


@pytest.mark.model
def test_kl_finetune_resume_after_kill_equals_uninterrupted(tmp_path):
    """kill -9 during the KL fine-tune (after a checkpoint), then resume: bit for bit the uninterrupted run (each run
    in a fresh single-threaded process)."""
    env = {**os.environ, "GLASSWORK_PROGRESS": "0", "OMP_NUM_THREADS": "1"}

    def start(out, pause):
        return subprocess.Popen([sys.executable, "-c", KL_SCRIPT.format(pause=pause, out=str(out))], env=env)

    out = tmp_path / "killed"
    assert start(tmp_path / "straight", 0).wait() == 0
    assert 0 < _kill_after_a_checkpoint(start(out, 0.1), out, 0.3, wait_s=240, name="kl_checkpoint.safetensors") < 12
    assert start(out, 0).wait() == 0
    a, b = gw.load_transcoders(out), gw.load_transcoders(tmp_path / "straight")
    for layer in (2, 3):
        for name, value in b[layer].state_dict().items():
            assert torch.equal(a[layer].state_dict()[name], value), (layer, name)  # bit for bit
    assert a[2].cfg.metrics["kl_finetune"]["steps"] == 12
    assert not (out / "kl_checkpoint.safetensors").exists()


def test_kl_finetune_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(GlassworkError, match="not kind 'sae'"):
        TrainConfig(kind="sae", hooks=["h"], kl_steps=5)
    with pytest.raises(GlassworkError, match="kl_seqs"):
        TrainConfig(kind="transcoder", layers=[0], kl_steps=5, kl_seqs=0)
    with pytest.raises(GlassworkError, match="kl_lr"):
        TrainConfig(kind="transcoder", layers=[0], kl_steps=5, kl_lr=float("nan"))
    x = _data()  # activations given as tensors: no model to run the fine-tune through
    with pytest.raises(GlassworkError, match="needs activations read from the model"):
        train(TrainConfig(**TRANSCODER, k=4, d_sae=32, tokens=64 * 2, batch_size=64, kl_steps=3),
              TensorSource({"blocks.0.ln2.hook_normalized": x, "blocks.0.hook_mlp_out": x}, 64), tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_spread_seeds_cover_every_cluster_where_uniform_seeds_pile_into_the_big_one():
    """spread_tokens draws k-means++-style: on 5 tight clusters of directions, one holding 96% of the tokens, 5 seeds
    drawn one at a time land one per cluster (a drawn cluster's other tokens have distance ~0); uniform draws put
    most into the big cluster. Indices are distinct and the draw is a function of the generator; in blocks, every
    block after the first still avoids the clusters already drawn."""
    from glasswork.training.init import spread_tokens
    g = torch.Generator().manual_seed(3)
    centres = torch.nn.functional.normalize(torch.randn(5, 32, generator=g), dim=-1)
    sizes = [960, 10, 10, 10, 10]
    u = torch.cat([c + 1e-3 * torch.randn(n, 32, generator=g) for c, n in zip(centres, sizes)]) * 7.0
    cluster = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    for seed in range(5):
        picks = spread_tokens(u, 5, torch.Generator().manual_seed(seed), block=1)
        assert sorted(cluster[picks].tolist()) == [0, 1, 2, 3, 4]
    uniform = torch.randperm(len(u), generator=torch.Generator().manual_seed(0))[:5]
    assert int((cluster[uniform] == 0).sum()) >= 4
    blocks = spread_tokens(u, 1000, torch.Generator().manual_seed(1), block=200)
    assert len(set(blocks.tolist())) == 1000
    assert torch.equal(blocks, spread_tokens(u, 1000, torch.Generator().manual_seed(1), block=200))
    first = spread_tokens(u, 2, torch.Generator().manual_seed(0), block=1)  # after one draw, its cluster is ~never drawn
    assert cluster[first[0]] != cluster[first[1]]


@pytest.mark.parametrize("bad, message", [({"revive_rate": -0.1}, "revive_rate must be a finite number >= 0"),
                                          ({"revive_rate": float("nan")}, "revive_rate must be a finite number"),
                                          ({"revive_tokens": -1}, "revive_tokens must be at least 0"),
                                          ({"revive_rate": 0.01, "arch": "relu"}, "revive_rate is for TopK")])
def test_revive_settings_are_checked(bad, message):
    with pytest.raises(GlassworkError, match=message):
        TrainConfig(**{**dict(kind="transcoder", layers=[0]), **bad})


def test_init_pick_must_be_random_or_spread():
    with pytest.raises(GlassworkError, match="init_pick must be random or spread"):
        TrainConfig(kind="transcoder", layers=[0], init="data", init_pick="kmeans")
