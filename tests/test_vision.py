"""Vision: the converted CNN against TensorFlow's outputs and a float64 hand computation, hook capture and
intervention, tuning and polysemanticity on constructed units, visualization, the SAE and steering, HF vision
folders built from configs, bad input, and the /vision routes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from glasswork.io import GlassworkError
from glasswork.vision import classic
from glasswork.vision.models import capture, from_module, intervene

DATA = Path(__file__).parent / "data"


def reference_inputs() -> np.ndarray:
    """The five inputs TensorFlow was run on (tests/data/cifar_keras_reference.json): raw 0..255 NHWC."""
    x = np.random.default_rng(0).uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)
    i, j, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    x5 = (255 * (0.5 + 0.5 * np.sin(0.3 * i + 0.2 * j + c))).astype(np.float32)
    return np.concatenate([x, x5[None]], 0)


@pytest.fixture(scope="module")
def cnn():
    from glasswork.vision.keras_h5 import load_cifar_cnn
    return load_cifar_cnn()


@pytest.fixture(scope="module")
def h5_weights():
    import h5py
    import io
    from glasswork.vision.keras_h5 import cifar_h5_bytes
    f = h5py.File(io.BytesIO(cifar_h5_bytes()), "r")
    return {name: {k.split(":")[0]: f[f"model_weights/{name}/{name}/{k}"][()].astype(np.float64)
                   for k in f[f"model_weights/{name}/{name}"].keys()} for name in f["model_weights"].keys()
            if len(f[f"model_weights/{name}"].keys())}


# ---- the converted network -----------------------------------------------------------------------------------------

@pytest.mark.model
def test_converted_cnn_equals_tensorflow(cnn):
    ref = json.loads((DATA / "cifar_keras_reference.json").read_text())
    x = torch.from_numpy(reference_inputs())
    out, acts = capture(cnn, x / 255.0, ["conv2d_3", "dense_1"])
    torch.testing.assert_close(out, torch.tensor(ref["output"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acts["conv2d_3"][0, 4, 4], torch.tensor(ref["conv2d_3_image0_row4_col4"]),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acts["dense_1"][4, :32], torch.tensor(ref["dense_1_image4_first32"]), rtol=1e-5, atol=1e-5)


def _conv_valid(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D, valid padding, by hand: x [n, h, w, cin], kernel [kh, kw, cin, cout] -> [n, h', w', cout]."""
    kh, kw = kernel.shape[:2]
    n, h, w, _ = x.shape
    out = np.zeros((n, h - kh + 1, w - kw + 1, kernel.shape[3]))
    for di in range(kh):
        for dj in range(kw):
            out += np.einsum("nhwc,co->nhwo", x[:, di:di + h - kh + 1, dj:dj + w - kw + 1], kernel[di, dj])
    return out + bias


@pytest.mark.model
def test_converted_cnn_equals_a_float64_hand_forward(cnn, h5_weights):
    """Every layer of the Sequential computed from the stored weights with numpy in float64."""
    x = reference_inputs()[:2].astype(np.float64)
    h = x
    bn = lambda h, w: w["gamma"] * (h - w["moving_mean"]) / np.sqrt(w["moving_variance"] + 1e-3) + w["beta"]  # noqa: E731
    pool = lambda h: h[:, :h.shape[1] // 2 * 2, :h.shape[2] // 2 * 2].reshape(  # noqa: E731
        h.shape[0], h.shape[1] // 2, 2, h.shape[2] // 2, 2, h.shape[3]).max(axis=(2, 4))
    for i, conv in enumerate(["conv2d", "conv2d_1", "conv2d_2", "conv2d_3", "conv2d_4", "conv2d_5"]):
        w = h5_weights[conv]
        h = np.maximum(_conv_valid(h, w["kernel"], w["bias"]), 0)
        if conv == "conv2d_3":
            mid = h.copy()
        h = bn(h, h5_weights["batch_normalization" + ("" if i == 0 else f"_{i}")])
        if i in (1, 3):
            h = pool(h)
    h = h.reshape(h.shape[0], -1)
    for name, act in (("dense", True), ("dense_1", True), ("dense_2", True)):
        h = h @ h5_weights[name]["kernel"] + h5_weights[name]["bias"]
        h = np.maximum(h, 0) if act else h
    out, acts = capture(cnn, torch.from_numpy(x).float() / 255.0, ["conv2d_3"])
    np.testing.assert_allclose(acts["conv2d_3"].double().numpy(), mid, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out.double().numpy(), h, rtol=1e-4, atol=1e-4)


@pytest.mark.model
def test_hook_capture_and_noop_intervention(cnn):
    x = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    out, acts = capture(cnn, x, ["conv2d_1", "conv2d_1.pre", "dense"])
    with torch.no_grad():  # manual forward to conv2d_1
        m = cnn.module
        h = m.batch_normalization(m.conv2d(x.permute(0, 3, 1, 2) * 255.0))
        pre = m.conv2d_1.layer(h)
    torch.testing.assert_close(acts["conv2d_1.pre"], pre.permute(0, 2, 3, 1), rtol=0, atol=0)
    torch.testing.assert_close(acts["conv2d_1"], pre.relu().permute(0, 2, 3, 1), rtol=0, atol=0)
    assert acts["conv2d_1"].shape == (3, 28, 28, 64) and acts["dense"].shape == (3, 1024)
    with intervene(cnn, {"conv2d_1": lambda a: a.clone(), "dense": lambda a: None}):
        again = cnn.forward(x)
    assert torch.equal(again, out)
    with intervene(cnn, {"conv2d_3": lambda a: torch.zeros_like(a)}):
        zeroed = cnn.forward(x)
    assert not torch.equal(zeroed, out)


@pytest.mark.model
def test_bad_images_and_hooks_are_clear_errors(cnn):
    with pytest.raises(GlassworkError, match="32x32 with 3 channel"):
        cnn.forward(torch.rand(1, 28, 28, 3))
    with pytest.raises(GlassworkError, match="3 channel"):
        cnn.forward(torch.rand(1, 32, 32, 1))
    with pytest.raises(GlassworkError, match=r"\[batch, 32, 32, 3\]"):
        cnn.forward(torch.rand(32, 32, 3))
    with pytest.raises(GlassworkError, match="no hook point 'conv9'"):
        capture(cnn, torch.rand(1, 32, 32, 3), ["conv9"])


def test_corrupt_weight_files_are_clear_errors(tmp_path):
    from glasswork.vision.keras_h5 import convert, cifar_h5_bytes, load_cifar_cnn
    with pytest.raises(GlassworkError, match="not a readable HDF5"):
        convert(b"not an hdf5 file at all", "broken.h5")
    bad_wheel = tmp_path / "cifar_10_model-7.4.0-py3-none-any.whl"
    bad_wheel.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(GlassworkError, match="not a cifar-10-model wheel"):
        cifar_h5_bytes(bad_wheel)
    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"layers": [], "classes": [], "image_size": [32, 32],
                                                    "pixel_scale": 255.0}))
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(GlassworkError, match="corrupt or truncated"):
        load_cifar_cnn(folder)


def test_module_map_names_missing_modules():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(GlassworkError, match="names module 'conv'"):
        from_module(net, {"c": "conv"}, (8, 8))


# ---- tuning and polysemanticity on constructed units ---------------------------------------------------------------

def _gabor(theta: float, size: int = 9, freq: float = 0.25, sigma: float = 2.5) -> torch.Tensor:
    c = (size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    u = xs * math.cos(theta) + ys * math.sin(theta)
    return torch.exp(-(xs ** 2 + ys ** 2) / (2 * sigma ** 2)) * torch.sin(2 * math.pi * freq * u)


@pytest.mark.parametrize("theta_deg", [0, 30, 60, 105, 150])
def test_tuning_of_a_hand_built_oriented_filter_peaks_at_its_orientation(theta_deg):
    theta = math.radians(theta_deg)
    conv = nn.Conv2d(3, 1, 9, bias=False)
    with torch.no_grad():
        conv.weight.copy_(_gabor(theta)[None, None].repeat(1, 3, 1, 1) / 3)
    model = from_module(nn.Sequential(conv, nn.ReLU()), {"gabor": "1"}, (32, 32))
    t = classic.tuning(model, "gabor", n_angles=24)
    assert classic.orientation_gap(t.edge_orientation, torch.tensor([theta]))[0] <= math.radians(7.5)
    peak = t.angles[t.edge[0].argmax()] % math.pi
    assert classic.orientation_gap(peak[None], torch.tensor([theta]))[0] <= math.radians(7.5)
    assert t.edge_osi[0] > 0.5 and bool(t.consistent[0])
    assert t.detectors()["edge"] == [0]


def test_filter_classification_on_planted_filters():
    w = torch.zeros(3, 3, 3, 3)
    w[0, :, :, 0], w[0, :, :, 2] = -1.0, 1.0  # a luminance edge (the same in every channel)
    w[1, 0], w[1, 1] = 1.0, -1.0  # red minus green: colour contrast
    w[2] = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)).abs()[None] * 0 + 1.0  # uniform
    kinds = classic.classify_filters(w)
    assert kinds.kinds == ["oriented", "colour-contrast", "other"]
    assert abs(float(kinds.orientation[0])) < 1e-6  # normal along x
    assert kinds.fractions() == {"oriented": 1 / 3, "colour-contrast": 1 / 3, "other": 1 / 3}


def test_polysemanticity_scores_rank_a_polysemantic_unit_above_a_monosemantic_one():
    source = torch.arange(40) % 4  # 40 patches from 4 sources
    mono = torch.where(source == 2, 5.0, 0.0) + 1e-4 * torch.arange(40)  # fires on source 2 (ramp: no ties)
    poly = torch.where(source < 3, 5.0, 0.0) + 1e-4 * torch.arange(40)  # sources 0, 1 and 2
    maxima = torch.stack([mono, poly], 1)  # [40, 2]
    top = classic.top_patches(maxima, 9)
    h = classic.source_entropy(top, source, 4)
    assert float(h[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(h[1]) == pytest.approx(math.log2(3), abs=1e-6)  # 3 + 3 + 3 of the top 9
    w = classic.weighted_source_entropy(maxima, source, 4)
    mass = torch.zeros(4).index_add_(0, source, poly)
    p = mass / mass.sum()
    assert float(w[1]) == pytest.approx(float(-(p * p.log2()).sum()), rel=1e-6)
    assert float(w[0]) < 0.1 < float(w[1])
    with pytest.raises(GlassworkError, match="k=50"):
        classic.top_patches(maxima, 50)


def test_receptive_field_of_stacked_convs():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Conv2d(2, 2, 3, stride=2), nn.Tanh())
    model = from_module(net, {"c1": "1", "c2": "3"}, (16, 16))
    assert classic.receptive_field(model, "c1", (4, 5)) == (4, 5, 6, 7)
    assert classic.receptive_field(model, "c2", (2, 3)) == (4, 6, 8, 10)  # 2*2..2*2+4, 2*3..2*3+4


# ---- visualization, the SAE and steering on the default image model ------------------------------------------------

@pytest.fixture(scope="module")
def corpus():
    from glasswork.vision.images import patches
    return patches(8, seed=3)


@pytest.mark.model
def test_patches_are_labelled_and_seeded(corpus):
    from glasswork.vision.images import patches
    assert corpus.pixels.shape == (8 * len(corpus.sources), 32, 32, 3)
    assert 0 <= float(corpus.pixels.min()) and float(corpus.pixels.max()) <= 1
    assert torch.equal(torch.bincount(corpus.source), torch.full((len(corpus.sources),), 8))
    assert torch.equal(patches(2, seed=3, sources=["cat", "digits"]).pixels,
                       patches(2, seed=3, sources=["cat", "digits"]).pixels)
    with pytest.raises(GlassworkError, match="unknown source"):
        patches(1, sources=["unicorn"])


@pytest.mark.model
def test_visualization_beats_every_corpus_patch(cnn, corpus):
    from glasswork.vision.featurevis import visualize
    maxima, _ = classic.unit_maxima(cnn, "conv2d_3", corpus.pixels)
    unit = 3
    v = visualize(cnn, "conv2d_3", unit, steps=256, seed=0, objective="max", optimize_at="conv2d_3.pre")
    assert v.image.shape == (32, 32, 3) and 0 <= float(v.image.min()) and float(v.image.max()) <= 1
    assert v.activation > float(maxima[:, unit].max())
    _, acts = capture(cnn, v.image[None], ["conv2d_3"])  # the reported activation is the real one
    assert v.activation == pytest.approx(float(acts["conv2d_3"][..., unit].max()), rel=1e-6)


@pytest.mark.model
def test_image_sae_trains_and_steers(cnn, corpus, tmp_path):
    from glasswork.vision.dictionary import clamped_probs, load_image_sae, position_rows, train_image_sae
    pixels = corpus.pixels[:64]
    res = train_image_sae(cnn, "conv2d_3", pixels, tmp_path / "sae", d_sae=256, k=4, epochs=2, batch_size=512)
    assert res["dictionaries"]["conv2d_3"]["train_fvu"] < 0.8
    sae = load_image_sae(tmp_path / "sae", cnn)
    rows = position_rows(cnn, "conv2d_3", pixels[:4])
    assert rows.shape == (400, 128)
    assert sae.cfg.hook_in == "conv2d_3" and sae.cfg.d_in == 128
    # clamping a feature to its current value changes nothing; to a large one, the class probabilities move
    feature = int(sae.encode(rows).sum(0).argmax())
    images = pixels[:4]
    silent = (sae.encode(rows) == 0).all(0).nonzero().flatten()  # features at 0 at every position of these images
    assert len(silent) > 0
    before, same = clamped_probs(cnn, sae, int(silent[0]), 0.0, images)
    torch.testing.assert_close(same, before, rtol=0, atol=1e-6)
    before, after = clamped_probs(cnn, sae, feature, 50.0, images)
    assert (after - before).abs().max() > 1e-3
    with pytest.raises(GlassworkError, match="out of range"):
        clamped_probs(cnn, sae, 10_000, 1.0, images)


def test_identity_clamp_is_exact_on_a_tiny_conv_net():
    """edit_features at a conv hook: clamping to the current value leaves every output bit-identical up to fp32."""
    from glasswork.dictionaries.coder import DictionaryConfig, SparseCoder
    from glasswork.vision.dictionary import clamped_probs
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    model = from_module(net, {"c": "1"}, (8, 8), classes=["a", "b", "c", "d"])
    sae = SparseCoder(DictionaryConfig(kind="sae", activation="relu", d_in=6, d_sae=12, hook_in="c", hook_out="c"))
    with torch.no_grad():
        sae.b_enc[0] = -1e4  # feature 0 never fires: clamping it to 0 is clamping it to its current value
    images = torch.rand(2, 8, 8, 3)
    _, acts = capture(model, images, ["c"])
    assert bool((sae.encode(acts["c"])[..., 0] == 0).all())
    before, zero = clamped_probs(model, sae, 0, 0.0, images)
    torch.testing.assert_close(zero, before, rtol=0, atol=1e-7)
    _, big = clamped_probs(model, sae, 0, 100.0, images)
    assert (big - before).abs().max() > 1e-4


# ---- Hugging Face vision folders built from configs ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["vit", "convnext", "clip"])
def test_hf_vision_folder_loads_and_hooks_match_hidden_states(kind, tmp_path):
    import transformers
    from glasswork.vision.models import load_hf_vision
    torch.manual_seed(0)
    if kind == "vit":
        cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, num_labels=3)
        hf = transformers.ViTForImageClassification(cfg)
    elif kind == "convnext":
        cfg = transformers.ConvNextConfig(image_size=16, num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                          num_labels=3)
        hf = transformers.ConvNextForImageClassification(cfg)
    else:  # a whole CLIP (text and image towers): the image tower is loaded
        text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                      patch_size=8)
        transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision)).save_pretrained(
            tmp_path / kind)
        hf = transformers.CLIPVisionModel.from_pretrained(tmp_path / kind)
    if kind != "clip":
        hf.save_pretrained(tmp_path / kind)
    model = load_hf_vision(tmp_path / kind)
    assert model.image_size == (16, 16) and len(model.classes) == (0 if kind == "clip" else 3)
    x = torch.rand(2, 16, 16, 3)
    out, acts = capture(model, x, model.hook_points())
    with torch.no_grad():
        ref = hf.eval()(pixel_values=model.prepare(x), output_hidden_states=True)
    torch.testing.assert_close(out, ref.logits if kind != "clip" else ref.pooler_output, rtol=1e-5, atol=1e-6)
    for i, name in enumerate(model.hook_points()):
        hidden = ref.hidden_states[i + 1]
        expect = hidden.permute(0, 2, 3, 1) if hidden.dim() == 4 else hidden
        torch.testing.assert_close(acts[name], expect, rtol=1e-5, atol=1e-6)
    with intervene(model, {model.hook_points()[0]: lambda a: a.clone()}):
        assert torch.equal(model.forward(x), out)


def test_hf_folder_errors(tmp_path):
    from glasswork.vision.models import load_hf_vision
    with pytest.raises(GlassworkError, match="no config.json"):
        load_hf_vision(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(GlassworkError, match="not a vision architecture"):
        load_hf_vision(tmp_path)
