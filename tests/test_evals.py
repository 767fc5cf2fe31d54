"""Metrics against brute force: FVU, L0, CE-loss score and KL with a dictionary spliced in through plain PyTorch
forward hooks on the HF modules (not glasswork's hook machinery)."""
import torch
import torch.nn.functional as F

from conftest import make_tiny
from glasswork import evals
from glasswork.dictionaries import DictionaryConfig, SparseCoder


def test_fvu_and_l0_brute_force():
    g = torch.Generator().manual_seed(0)
    x, xh = torch.randn(50, 7, generator=g), torch.randn(50, 7, generator=g)
    mean = [sum(x[i, j].item() for i in range(50)) / 50 for j in range(7)]
    num = sum((x[i, j].item() - xh[i, j].item()) ** 2 for i in range(50) for j in range(7))
    den = sum((x[i, j].item() - mean[j]) ** 2 for i in range(50) for j in range(7))
    assert abs(evals.fvu(x, xh) - num / den) < 1e-12
    assert abs(evals.fvu(torch.cat([x, x]), torch.cat([xh, xh])) - num / den) < 1e-12  # not scaled by batch size
    codes = torch.randn(20, 30, generator=g).relu() * (torch.rand(20, 30, generator=g) < 0.3)
    assert evals.l0(codes) == sum(int(v != 0) for v in codes.flatten().tolist()) / 20
    assert evals.ce_loss_score(2.0, 2.5, 4.0) == 0.75


def _brute(model, ids, edit_modules):
    """Logits with each (module, fn) output replaced at positions 1.. via raw register_forward_hook."""
    handles = []
    for module, fn in edit_modules:
        def hook(mod, args, out, fn=fn):
            h = out[0] if isinstance(out, tuple) else out
            new = h.clone()
            new[:, 1:] = fn(args[0][:, 1:] if fn.reads_input else h[:, 1:])
            return (new, *out[1:]) if isinstance(out, tuple) else new
        handles.append(module.register_forward_hook(hook))
    try:
        return model.hf(ids).logits
    finally:
        for h in handles:
            h.remove()


def _fn(f, reads_input):
    f.reads_input = reads_input
    return f


def _reference(model, ids, edits, zeros):
    clean = model.hf(ids).logits
    spliced, zeroed = _brute(model, ids, edits), _brute(model, ids, zeros)
    def ce(lg):
        return F.cross_entropy(lg[:, 1:-1].flatten(0, 1), ids[:, 2:].flatten()).item()
    lp, lq = clean[:, 1:-1].log_softmax(-1), spliced[:, 1:-1].log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    return ce(clean), ce(spliced), ce(zeroed), kl


@torch.no_grad()
def test_sae_spliced_equals_brute_force():
    model = make_tiny("llama")
    torch.manual_seed(1)
    sae = SparseCoder(DictionaryConfig(kind="sae", d_in=32, d_sae=64, activation="topk", k=8,
                                       hook_in="blocks.1.hook_resid_post", hook_out="blocks.1.hook_resid_post"))
    sae.b_dec.data.normal_()
    ids = torch.randint(1, 97, (6, 16))
    layer = model.hf.model.layers[1]
    ref = _reference(model, ids, [(layer, _fn(lambda h: sae(h), False))],
                     [(layer, _fn(lambda h: torch.zeros_like(h), False))])
    got = evals.evaluate(sae, model, ids, tokens=10_000, batch_seqs=3)
    assert got["tokens"] == 6 * 14
    for key, want in zip(["ce_clean", "ce_spliced", "ce_zero_ablation", "kl"], ref):
        assert abs(got[key] - want) < 1e-5, (key, got[key], want)
    assert abs(got["ce_loss_score"] - (ref[2] - ref[1]) / (ref[2] - ref[0])) < 1e-3  # a ratio of small fp32 differences
    # FVU per batch of 3 sequences, averaged over the 2 batches, on the resid_post the SAE saw (positions 1..)
    _, acts = __import__("glasswork").capture(model, ids, ["blocks.1.hook_resid_post"])
    x = acts["blocks.1.hook_resid_post"][:, 1:]
    want_fvu = sum(evals.fvu(x[b:b + 3].flatten(0, 1), sae(x[b:b + 3]).flatten(0, 1)) for b in (0, 3)) / 2
    assert abs(got["dictionaries"]["dictionary"]["fvu"] / want_fvu - 1) < 1e-6
    assert got["dictionaries"]["dictionary"]["l0"] <= 8


@torch.no_grad()
def test_transcoders_all_spliced_at_once():
    model = make_tiny("llama")
    torch.manual_seed(2)
    tcs = {}
    for l in range(3):
        cfg = DictionaryConfig(kind="transcoder", d_in=32, d_sae=48, activation="relu", skip=True, b_dec_in=False,
                               hook_in=f"blocks.{l}.ln2.hook_normalized", hook_out=f"blocks.{l}.hook_mlp_out", layer=l)
        tc = SparseCoder(cfg)
        tc.W_skip.data.normal_(0, 0.1)
        tc.b_enc.data.normal_(0, 0.5)
        tcs[f"layer_{l}"] = tc
    ids = torch.randint(1, 97, (4, 12))
    mlps = [model.hf.model.layers[l].mlp for l in range(3)]
    ref = _reference(model, ids, [(m, _fn(lambda x, t=tcs[f"layer_{l}"]: t(x), True)) for l, m in enumerate(mlps)],
                     [(m, _fn(lambda x: torch.zeros_like(x), True)) for m in mlps])
    got = evals.evaluate(tcs, model, ids, batch_seqs=4)
    for key, want in zip(["ce_clean", "ce_spliced", "ce_zero_ablation", "kl"], ref):
        assert abs(got[key] - want) < 1e-5, (key, got[key], want)
    assert set(got["dictionaries"]) == set(tcs)


@torch.no_grad()
def test_clt_with_skip_spliced_equals_brute_force():
    """A skip CLT spliced in: MLP i's output becomes sum_{j<=i} codes_j @ W_dec[j][:, i-j] + b_dec[i] + x_i @ W_skip[i],
    each layer's codes from its live (spliced-run) input: brute force keeps the inputs and decodes by hand."""
    from glasswork.dictionaries import CrossLayerTranscoder
    model = make_tiny("llama")
    torch.manual_seed(3)
    cfg = DictionaryConfig(kind="clt", d_in=32, d_sae=40, activation="relu", n_layers=3, window=2, skip=True,
                           b_dec_in=False, hook_in=[f"blocks.{l}.ln2.hook_normalized" for l in range(3)],
                           hook_out=[f"blocks.{l}.hook_mlp_out" for l in range(3)])
    clt = CrossLayerTranscoder(cfg)
    clt.W_skip.data.normal_(0, 0.1)
    clt.b_enc.data.normal_(0, 0.5)
    clt.b_dec.data.normal_(0, 0.1)
    ids = torch.randint(1, 97, (4, 12))
    inputs = {}

    def mlp_out(x, i):
        inputs[i] = x
        out = clt.b_dec[i] + x @ clt.W_skip[i]
        for j in range(max(0, i - 1), i + 1):  # window 2: layers i-1 and i write to layer i
            codes = (inputs[j] @ clt.W_enc[j] + clt.b_enc[j]).relu()
            out = out + codes @ clt.W_dec[j][:, i - j]
        return out
    mlps = [model.hf.model.layers[l].mlp for l in range(3)]
    ref = _reference(model, ids, [(m, _fn(lambda x, i=l: mlp_out(x, i), True)) for l, m in enumerate(mlps)],
                     [(m, _fn(lambda x: torch.zeros_like(x), True)) for m in mlps])
    got = evals.evaluate(clt, model, ids, batch_seqs=4)
    for key, want in zip(["ce_clean", "ce_spliced", "ce_zero_ablation", "kl"], ref):
        assert abs(got[key] - want) < 1e-5, (key, got[key], want)
    assert ref[3] > 1e-3  # the splice changes the model: the comparison is not between two clean runs
    # per-layer FVU on the clean model's inputs (positions 1..), against the clean forward's own MLP inputs/outputs
    caught = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, i=l: caught.__setitem__(i, (a[0][:, 1:], out[:, 1:])))
             for l, m in enumerate(mlps)]
    model.hf(ids)
    for h in hooks:
        h.remove()
    x = torch.stack([caught[i][0] for i in range(3)], -2).flatten(0, 1)  # [n, L, d]
    y = torch.stack([caught[i][1] for i in range(3)], -2).flatten(0, 1)
    pred = clt(x)
    want = [float((y[:, i] - pred[:, i]).pow(2).sum() / (y[:, i] - y[:, i].mean(0)).pow(2).sum()) for i in range(3)]
    got_layers = got["dictionaries"]["dictionary"]["fvu_per_layer"]
    assert len(got_layers) == 3 and max(abs(a / b - 1) for a, b in zip(got_layers, want)) < 1e-4, (got_layers, want)
