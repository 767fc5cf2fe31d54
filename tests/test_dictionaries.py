"""The dictionary family: encode/decode agree with brute force, sparse TopK equals dense, save/load round-trips."""
import pytest
import torch

import glasswork as gw
from glasswork.dictionaries import CrossLayerTranscoder, DictionaryConfig, SparseCoder, build


def _random(cfg, seed=0):
    d = build(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return d


@pytest.mark.parametrize("activation", ["relu", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("kind,skip", [("sae", False), ("transcoder", False), ("transcoder", True)])
def test_encode_decode_brute_force(kind, skip, activation):
    cfg = DictionaryConfig(kind=kind, d_in=12, d_sae=40, d_out=12 if kind == "sae" else 9, activation=activation, k=5,
                           skip=skip, b_dec_in=kind == "sae")
    d = _random(cfg).double()
    x = torch.randn(7, 12, dtype=torch.float64)
    with torch.no_grad():
        xin = x - d.b_dec if kind == "sae" else x
        pre = xin @ d.W_enc + d.b_enc
        if activation == "relu":
            codes = pre.clamp(min=0)
        elif activation == "topk":
            keep = pre >= pre.sort(-1, descending=True).values[:, 4:5]
            codes = torch.where(keep, pre.clamp(min=0), 0)
        else:
            codes = torch.where(pre > d.threshold, pre, 0)
        out = codes @ d.W_dec + d.b_dec + (x @ d.W_skip if skip else 0)
        torch.testing.assert_close(d.encode(x), codes)
        torch.testing.assert_close(d(x), out)


def test_sparse_topk_decode_and_gradients_equal_dense():
    cfg = DictionaryConfig(kind="sae", d_in=16, d_sae=64, activation="topk", k=6)
    d = _random(cfg).double()
    x = torch.randn(10, 16, dtype=torch.float64)
    sparse = d.decode_sparse(*d.encode_sparse(x))
    g_sparse = torch.autograd.grad(sparse.square().sum(), list(d.parameters()))
    dense = d.decode(d.encode(x))
    g_dense = torch.autograd.grad(dense.square().sum(), list(d.parameters()))
    torch.testing.assert_close(sparse, dense)
    for a, b in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, b)


def test_clt_decode_brute_force_with_window():
    cfg = DictionaryConfig(kind="clt", d_in=8, d_sae=10, d_out=8, activation="relu", n_layers=4, window=2, b_dec_in=False)
    clt = _random(cfg).double()
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    with torch.no_grad():
        codes = clt.encode(x)
        for layer in range(4):
            torch.testing.assert_close(codes[:, layer], (x[:, layer] @ clt.W_enc[layer] + clt.b_enc[layer]).clamp(min=0))
        out = clt(x)
        for target in range(4):
            expect = clt.b_dec[target].expand(3, -1).clone()
            for source in range(4):
                if 0 <= target - source < 2:
                    expect += codes[:, source] @ clt.W_dec[source][:, target - source]
            torch.testing.assert_close(out[:, target], expect)


@pytest.mark.parametrize("cfg", [
    DictionaryConfig(kind="sae", d_in=8, d_sae=24, activation="jumprelu", model="m", hook_in="blocks.1.hook_resid_post"),
    DictionaryConfig(kind="transcoder", d_in=8, d_sae=24, activation="batchtopk", k=3, skip=True, b_dec_in=False),
    DictionaryConfig(kind="clt", d_in=8, d_sae=6, activation="topk", k=2, n_layers=3, b_dec_in=False),
])
def test_save_load_round_trip(tmp_path, cfg):
    d = _random(cfg, seed=3)
    gw.save_dictionary(d, tmp_path / "d")
    back = gw.load_dictionary(tmp_path / "d")
    assert type(back) is type(d) and back.cfg.to_dict() == d.cfg.to_dict()
    for (k1, v1), (k2, v2) in zip(d.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_bad_configs_and_inputs(tmp_path):
    with pytest.raises(gw.GlassworkError, match="unknown activation 'gelu'"):
        DictionaryConfig(d_in=4, d_sae=8, activation="gelu")
    with pytest.raises(gw.GlassworkError, match="unknown kind"):
        DictionaryConfig(kind="autoencoder", d_in=4, d_sae=8)
    d = SparseCoder(DictionaryConfig(d_in=4, d_sae=8, k=2))
    with pytest.raises(gw.GlassworkError, match="d_in = 4"):
        d.encode(torch.randn(3, 5))
    gw.save_dictionary(d, tmp_path / "d")
    text = (tmp_path / "d" / "config.json").read_text().replace('"d_sae": 8', '"d_sae": 16')
    (tmp_path / "d" / "config.json").write_text(text)
    with pytest.raises(gw.GlassworkError, match="W_enc"):
        gw.load_dictionary(tmp_path / "d")
