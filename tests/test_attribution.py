"""Attribution on tiny hand-built CNNs: fast, no downloads, no ../shared."""
from __future__ import annotations

import json
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("captum")

from featviz import models  # noqa: E402
from featviz.attribution import (METHODS, attribute, blocks_sheet, channel_attribution, colormap,  # noqa: E402
                                 guided_backprop, normalize_heat, overlay, panel, quadrant_canvas, quadrant_share,
                                 randomized_copy, resolve_target, spearman)
from featviz.attribution import display  # noqa: E402
from featviz.attribution.blocks import render_layer  # noqa: E402
from featviz.attribution.methods import default_cam_layer  # noqa: E402
from featviz.errors import FeatvizError, ImageReadError, IndexOutOfRangeError, UnknownLayerError  # noqa: E402

from conftest import one_error_line  # noqa: E402

SIZE = 32


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 6, 3, padding=1), act1=nn.ReLU6(),
            conv2=nn.Conv2d(6, 6, 3, padding=1), act2=nn.ReLU()))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(6, 3)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def colour_detector() -> nn.Module:
    """Class k fires on pixels of colour k (red, green, blue) and nowhere else; grey gives nothing."""
    net = Tiny()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for k in range(3):
            w = torch.full((3,), -2.0)
            w[k] = 4.0
            net.features.conv1.weight[k, :, 1, 1] = w
            net.features.conv1.bias[k] = -1.0
            net.features.conv2.weight[k, k] = 1.0 / 9
            net.classifier.weight[k, k] = 20.0
    return net


def wrap(net, name="tiny"):
    return models.from_module(net, name=name, input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1),
                              labels=["red", "green", "blue"],
                              main_layers=["features.conv1", "features.act1", "features.conv2", "features",
                                           "classifier"])


@pytest.fixture(scope="module")
def detector():
    return wrap(colour_detector(), "detector")


@pytest.fixture(scope="module")
def random_tiny():
    torch.manual_seed(0)
    net = Tiny()
    with torch.no_grad():
        net.features.conv1.weight.mul_(25)  # some units saturate above 6: exercises ReLU6's upper bound
    return wrap(net, "random")


def red_patch(quadrant: int) -> torch.Tensor:
    img = torch.full((3, SIZE, SIZE), 0.5)
    r, c = divmod(quadrant, 2)
    h = SIZE // 2
    img[:, r * h + 4:r * h + 12, c * h + 4:c * h + 12] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return img


# -- colour maps and overlays -------------------------------------------------------

def test_fire_colormap_is_monotone_in_luminance():
    table = colormap("fire", 256)
    assert table.shape == (256, 3) and table.min() >= 0 and table.max() <= 1
    lum = table @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    assert np.all(np.diff(lum) >= -1e-6)
    with pytest.raises(FeatvizError):
        colormap("jet")


def test_normalize_and_overlay():
    heat = np.zeros((20, 30), np.float32)
    heat[5, 5] = 100.0  # one outlier
    heat[10:15, 10:20] = 1.0
    n = normalize_heat(heat, 99.0)
    assert n.max() == 1.0 and n[12, 12] == pytest.approx(1.0)
    assert normalize_heat(np.zeros((4, 4))).max() == 0.0
    photo = torch.rand(3, 40, 60)
    im = overlay(photo, heat)  # heatmap resized to the photo
    assert im.size == (60, 40) and im.mode == "RGB"
    # cold pixels keep the photo visible, hot pixels take the colour map's top colour
    im = np.asarray(overlay(torch.zeros(3, 4, 4), np.eye(4, dtype=np.float32), alpha=1.0, floor=0.0, dim=0))
    assert im[0, 1].sum() == 0 and im[0, 0].sum() > 600
    blurred = display.blur(heat, 1.5)
    assert blurred.shape == heat.shape and blurred.sum() == pytest.approx(heat.sum(), rel=1e-2)


# -- targets -------------------------------------------------------------------------------

def test_targets_use_objective_language(detector):
    x = red_patch(0)[None]
    assert resolve_target(detector, None, x).description == "logit 0"  # predicted class
    assert resolve_target(detector, 2, x).description == "logit 2"
    assert resolve_target(detector, "features.conv2:1", x).description == "channel features.conv2:1"
    assert "neuron" in resolve_target(detector, "neuron:features:0@3,4", x).description
    with pytest.raises(IndexOutOfRangeError, match="valid classes are 0-2"):
        resolve_target(detector, "logit:7", x)
    with pytest.raises(IndexOutOfRangeError):
        resolve_target(detector, 3, x)
    with pytest.raises(UnknownLayerError, match="Did you mean"):
        resolve_target(detector, "features.conv3:1", x)


# -- the methods ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_each_method_localizes_the_patch(detector, method):
    for quadrant in (0, 3):
        a = attribute(detector, red_patch(quadrant), "logit:0", method, steps=16, samples=8, noise=0.05)
        assert a.map.shape == (SIZE, SIZE) and torch.isfinite(a.map).all() and a.map.min() >= 0
        assert quadrant_share(a.map, quadrant) > 0.9, (method, quadrant)
        assert a.settings["method"] == method and a.settings["target"] == "logit 0"
        h = a.heatmap()
        assert h.max() == pytest.approx(1.0) and h.min() >= 0


def test_gradcam_layer_checks(detector):
    x = red_patch(1)
    assert default_cam_layer(detector, resolve_target(detector, 0)) == "features"
    a = attribute(detector, x, 0, "gradcam", layer="features.conv1")
    assert a.settings["layer"] == "features.conv1" and a.map.shape == (SIZE, SIZE)
    with pytest.raises(FeatvizError, match="no spatial dimensions"):
        attribute(detector, x, 0, "gradcam", layer="classifier")
    with pytest.raises(FeatvizError, match="runs after the target"):
        attribute(detector, x, "features.conv1:0", "gradcam", layer="features.conv2")
    # a channel target: Grad-CAM defaults to the target's own layer
    a = attribute(detector, x, "features.conv2:0", "gradcam")
    assert a.settings["layer"] == "features.conv2"
    assert quadrant_share(a.map, 1) > 0.9
    with pytest.raises(FeatvizError, match="unknown attribution method"):
        attribute(detector, x, 0, "lime")


def test_integrated_gradients_batching_and_completeness(random_tiny):
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    full = attribute(random_tiny, x, "logit:1", "ig", steps=24, internal_batch_size=None)
    batched = attribute(random_tiny, x, "logit:1", "ig", steps=24, internal_batch_size=5)
    assert torch.allclose(full.raw, batched.raw, atol=1e-5)
    # completeness: the attributions add up to F(x) - F(baseline)
    with torch.no_grad():
        gap = float(random_tiny(x[None])[0, 1] - random_tiny(torch.zeros(1, 3, SIZE, SIZE))[0, 1])
    assert float(full.raw.sum()) == pytest.approx(gap, rel=0.05, abs=1e-3)


def test_internal_batching_bounds_the_rows_per_forward_pass(random_tiny):
    rows = []
    handle = random_tiny.network.register_forward_pre_hook(lambda _m, inp: rows.append(inp[0].shape[0]))
    try:
        x = torch.rand(3, SIZE, SIZE)
        attribute(random_tiny, x, 0, "ig", steps=40, internal_batch_size=8)
        assert max(rows) <= 8 and sum(rows) >= 40
        rows.clear()
        attribute(random_tiny, x, 0, "smoothgrad", samples=20, internal_batch_size=6)
        assert max(rows) <= 6 and sum(rows) >= 20
    finally:
        handle.remove()


class _GuidedRect(torch.autograd.Function):
    """Hand-written guided backprop through a clamp(0, top) unit."""

    @staticmethod
    def forward(ctx, x, top):
        ctx.save_for_backward(x)
        ctx.top = top
        return x.clamp(0, top)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0) * (x < ctx.top) * (g > 0), None


def _manual_guided(net: Tiny, x: torch.Tensor, cls: int) -> torch.Tensor:
    f = net.features
    x = x.clone().requires_grad_(True)
    h = _GuidedRect.apply(f.conv1(x), 6.0)
    h = _GuidedRect.apply(f.conv2(h), float("inf"))
    out = net.classifier(net.pool(h))[0, cls]
    (g,) = torch.autograd.grad(out, x)
    return g[0]


@pytest.mark.filterwarnings("ignore:Setting backward hooks")
def test_guided_backprop_handles_relu6(random_tiny):
    from captum.attr import GuidedBackprop, Saliency

    from featviz.attribution.methods import ObjectiveForward

    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    pre = random_tiny.network.features.conv1(x)
    assert (pre > 6).any() and ((pre > 0) & (pre < 6)).any()  # both ReLU6 regimes occur
    ours = guided_backprop(random_tiny, x[0], "logit:2")
    expected = _manual_guided(random_tiny.network, x, 2)
    assert torch.allclose(ours, expected, atol=1e-6)
    # Captum alone leaves ReLU6 untouched: only the ReLU is guided, which is not guided backprop
    fwd = ObjectiveForward(random_tiny, resolve_target(random_tiny, "logit:2"))
    captum_gb = GuidedBackprop(fwd).attribute(x.clone().requires_grad_(True))[0]
    assert not torch.allclose(captum_gb, expected, atol=1e-4)
    plain = Saliency(fwd).attribute(x.clone().requires_grad_(True), abs=False)[0]
    assert not torch.allclose(ours, plain, atol=1e-4)
    # hooks are removed afterwards: plain gradients are plain again
    again = Saliency(fwd).attribute(x.clone().requires_grad_(True), abs=False)[0]
    assert torch.allclose(again, plain)


def test_smoothgrad_is_seeded(random_tiny):
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    a = attribute(random_tiny, x, 0, "smoothgrad", samples=6, seed=5)
    b = attribute(random_tiny, x, 0, "smoothgrad", samples=6, seed=5)
    c = attribute(random_tiny, x, 0, "smoothgrad", samples=6, seed=6)
    assert torch.equal(a.map, b.map) and not torch.equal(a.map, c.map)


# -- photos and outputs -------------------------------------------------------------------

def test_photo_errors(detector, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError):
        attribute(detector, bad, 0, "saliency")
    with pytest.raises(ImageReadError, match="not found"):
        attribute(detector, tmp_path / "missing.png", 0, "saliency")
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(deep)
    with pytest.raises(ImageReadError, match="unsupported image mode 'I;16'"):
        attribute(detector, deep, 0, "saliency")
    with pytest.raises(FeatvizError, match="expected one RGB image"):
        attribute(detector, torch.rand(2, 3, SIZE, SIZE), 0, "saliency")


def test_paths_and_pil_are_preprocessed_and_saved_with_settings(detector, tmp_path):
    from featviz.imageio import read_settings

    photo = tmp_path / "red.png"
    Image.fromarray((red_patch(2).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((64, 48)).save(photo)
    a = attribute(detector, photo, None, "gradcam")
    assert a.image.shape == (3, SIZE, SIZE) and a.settings["photo"] == str(photo)
    out = a.save(tmp_path / "out.png")
    assert Image.open(out).size == (SIZE, SIZE)
    assert read_settings(out)["method"] == "gradcam"
    p = panel(detector, Image.open(photo), "logit:0", methods=("saliency", "gradcam"), tile=64)
    assert p.width >= 3 * 64 and p.height > 64


# -- channel attribution (Building Blocks) ----------------------------------------------------

def test_channel_scores_add_up_to_the_logit_before_pooling(random_tiny):
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    ca = channel_attribution(random_tiny, x, "features", "logit:1")
    with torch.no_grad():
        logit = float(random_tiny(x[None])[0, 1])
    bias = float(random_tiny.network.classifier.bias[1])
    assert float(ca.scores.sum()) == pytest.approx(logit - bias, rel=1e-4, abs=1e-5)
    assert ca.value == pytest.approx(logit, rel=1e-5)
    top = ca.top(3)
    assert list(ca.scores[top]) == sorted(ca.scores.tolist(), reverse=True)[:3]
    assert ca.spatial_map(top[0]).shape == (SIZE, SIZE)
    with pytest.raises(FeatvizError, match="no spatial dimensions"):
        channel_attribution(random_tiny, x, "classifier", "logit:1")


def test_blocks_sheet(detector):
    calls = []

    def fake_render(model, layer, channels):
        calls.append((layer, list(channels)))
        return [Image.new("RGB", (20, 20), (0, 90, 200)) for _ in channels]

    sheet, ca = blocks_sheet(detector, red_patch(1), "features", None, top=2, thumbnails=fake_render, tile=48)
    assert calls == [("features", ca.top(2))] and ca.top(1) == [0]  # the red channel carries "red"
    assert ca.share(0) == pytest.approx(1.0)
    plain, _ = blocks_sheet(detector, red_patch(1), "features", 0, top=2, thumbnails=False, tile=48)
    assert plain.height < sheet.height and plain.width == sheet.width


def test_thumbnails_are_rendered_before_the_rectifier(detector):
    assert render_layer(detector, "features") == "features.conv2"  # conv2 feeds the final ReLU
    assert render_layer(detector, "features.conv2") == "features.conv2"


# -- sanity-check helpers --------------------------------------------------------------------------

def test_quadrant_canvas_and_share():
    photo = torch.ones(3, 50, 80)
    canvas = quadrant_canvas(photo, 1, size=64)
    assert canvas.shape == (3, 64, 64)
    assert canvas[:, :32, 32:].min() > 0.999 and canvas[:, 32:, :].max() == 0.5
    cluttered = quadrant_canvas(photo, 2, size=64, others=[torch.zeros(3, 10, 10)] * 3)
    assert cluttered[:, 32:, :32].min() > 0.999 and cluttered[:, :32, :].max() == 0.0
    heat = torch.zeros(10, 10)
    heat[7, 8] = 3.0
    heat[1, 1] = 1.0
    assert quadrant_share(heat, 3) == pytest.approx(0.75)
    assert np.isnan(quadrant_share(torch.zeros(4, 4), 0))


def test_spearman():
    a = np.arange(100.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    assert abs(spearman(rng.random(5000), rng.random(5000))) < 0.05
    assert spearman([0, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(1.0)  # ties
    assert np.isnan(spearman(np.zeros(5), a[:5]))


def test_randomized_copy_changes_later_layers_only(random_tiny):
    rnd = randomized_copy(random_tiny, "features.conv2", seed=1)
    orig = dict(random_tiny.network.named_parameters())
    new = dict(rnd.network.named_parameters())
    assert torch.equal(orig["features.conv1.weight"], new["features.conv1.weight"])
    for name in ("features.conv2.weight", "classifier.weight", "classifier.bias"):
        assert not torch.equal(orig[name], new[name])
        assert float(new[name].std()) == pytest.approx(float(orig[name].std()), rel=0.5)
    assert rnd.name == random_tiny.name and rnd is not random_tiny


# -- CLI ------------------------------------------------------------------------------------------

@pytest.fixture()
def cli(monkeypatch, detector):
    from click.testing import CliRunner

    from featviz.cli import attribute_cmd, main

    monkeypatch.setattr(attribute_cmd, "load_model", lambda name, device=None: detector)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(map(str, args)))


@pytest.fixture()
def red_png(tmp_path):
    path = tmp_path / "red.png"
    Image.fromarray((red_patch(3).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return path


def test_cli_attribute(cli, red_png, tmp_path):
    out = tmp_path / "o.png"
    r = cli("attribute", "tiny", red_png, "-o", out, "--steps", 8, "--samples", 4, "--save-map", tmp_path / "m.npz")
    assert r.exit_code == 0, r.output
    assert "top-3 predictions" in r.output and "1.    0" in r.output and "target: logit 0 (red)" in r.output
    assert Image.open(out).size == (SIZE, SIZE)
    assert np.load(tmp_path / "m.npz")["gradcam"].shape == (SIZE, SIZE)
    r = cli("attribute", "tiny", red_png, "-o", tmp_path / "p.png", "--method", "saliency,ig", "--steps", 4,
            "--target", "logit:1")
    assert r.exit_code == 0, r.output
    settings = json.loads(Image.open(tmp_path / "p.png").text["featviz"])
    assert settings["method"] == ["saliency", "ig"] and settings["target"] == "logit 1"


@pytest.mark.parametrize("args, message", [
    (["--target", "logit:5"], "class 5 is out of range"),
    (["--method", "gradcam", "--layer", "classifier"], "has no spatial dimensions"),
    (["--method", "lime"], "unknown attribution method"),
    (["--target", "nolayer:3"], "unknown layer"),
])
def test_cli_attribute_errors_are_one_line(cli, red_png, tmp_path, args, message):
    r = cli("attribute", "tiny", red_png, "-o", tmp_path / "x.png", *args)
    assert message in one_error_line(r)


def test_cli_bad_photos_are_one_line(cli, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(deep)
    for path, message in ((bad, "cannot read image"), (tmp_path / "none.jpg", "not found"),
                          (deep, "unsupported image mode")):
        r = cli("attribute", "tiny", path, "-o", tmp_path / "x.png")
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1


def test_cli_blocks(cli, red_png, tmp_path):
    out = tmp_path / "sheet.png"
    r = cli("blocks", "tiny", red_png, "--layer", "features", "--class", 0, "--top", 2, "--no-thumbnails", "-o", out)
    assert r.exit_code == 0, r.output
    assert "target: logit 0 (red)" in r.output and "   1       0" in r.output and out.exists()
    r = cli("blocks", "tiny", red_png, "--layer", "classifier", "--no-thumbnails", "-o", out)
    assert r.exit_code == 2 and "no spatial dimensions" in r.output
    r = cli("blocks", "tiny", red_png, "--layer", "features", "--class", 9, "--no-thumbnails", "-o", out)
    assert r.exit_code == 2 and "out of range" in r.output


def test_missing_captum_gives_an_install_hint(cli, red_png, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import captum.attr now raises ImportError
    r = cli("attribute", "tiny", red_png, "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "pip install 'featviz[attribution]'" in r.output
    assert len(r.output.strip().splitlines()) == 1
