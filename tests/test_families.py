"""Every common architecture family, end to end, on small random-weight versions built here.

VGG (plain conv stack, in-place ReLU), ResNet (BatchNorm, in-place ReLU, residual
``+=``), Inception (branch and concatenate), MobileNet (depthwise-separable, ReLU6),
ConvNeXt (channels-last LayerNorm and Linear, GELU: nothing to redirect) and a ViT
(token outputs with a class token). Their module layouts follow torchvision's, so
default main layers, hooks and layouts meet what the real ones present; the
torchvision models themselves are checked outside CI (docs/models.md).
"""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featviz import models, render, render_units
from featviz.attribution import METHODS, attribute
from featviz.attribution.blocks import blocks_sheet
from featviz.examples import collect
from featviz.examples.receptive import receptive_field

SIZE = 32


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # shared by both activations, as in torchvision
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place on bn2's output
        return self.relu(out)


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGGLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(32, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def conv_relu(cin, cout, k, stride=1):
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, k, stride, k // 2), relu=nn.ReLU(inplace=True)))


class Inception(nn.Module):
    def __init__(self, cin, c1, c3, c5, cp):
        super().__init__()
        self.branch1 = conv_relu(cin, c1, 1)
        self.branch2 = nn.Sequential(conv_relu(cin, c3, 1), conv_relu(c3, c3, 3))
        self.branch3 = nn.Sequential(conv_relu(cin, c5, 1), conv_relu(c5, c5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_relu(cin, cp, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv_relu(3, 8, 3, 2)
        self.inception3a = Inception(8, 4, 6, 2, 2)  # 14 channels: 0-3 | 4-9 | 10-11 | 12-13
        self.maxpool = nn.MaxPool2d(2)
        self.inception4a = Inception(14, 6, 8, 4, 4)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(22, 5)

    def forward(self, x):
        x = self.inception4a(self.maxpool(self.inception3a(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)),
            InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 3), InvertedResidual(12, 12, 1, 3))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(12, 5))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW map (permutes inside, as torchvision's)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                   Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))

    def forward(self, x):
        return x + self.layer_scale * self.block(x)


class ConvNeXtLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8)),
            nn.Sequential(CNBlock(8), CNBlock(8)),
            nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 16, 2, 2)),
            nn.Sequential(CNBlock(16), CNBlock(16)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(16), nn.Flatten(1), nn.Linear(16, 5))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


class EncoderBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, dim, depth, tokens):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(OrderedDict((f"encoder_layer_{i}", EncoderBlock(dim, 2)) for i in range(depth)))
        self.ln = nn.LayerNorm(dim)

    def forward(self, x):
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class ViTLike(nn.Module):
    """torchvision's VisionTransformer in small: 8 px patches, a class token, 3 blocks."""

    def __init__(self, patch=8, dim=16):
        super().__init__()
        self.patch = patch
        grid = SIZE // patch
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = Encoder(dim, 3, grid * grid + 1)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, 5)))

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


# family -> (network class, a mid layer to test, expected main layers subset)
FAMILIES = {
    "vgg": (VGGLike, "features.5", ["features.0", "features.1", "features.7", "classifier.3"]),
    "resnet": (ResNetLike, "layer2.0", ["conv1", "layer1.0", "layer1.1", "layer2.1", "fc"]),
    "inception": (InceptionLike, "inception3a", ["conv1", "inception3a", "maxpool", "inception4a", "fc"]),
    "mobilenet": (MobileNetLike, "features.2", ["features.0", "features.1", "features.3", "classifier"]),
    "convnext": (ConvNeXtLike, "features.1.1", ["features.0", "features.1.0", "features.1.1", "features.2",
                                                "features.3.1", "classifier"]),
    "vit": (ViTLike, "encoder.layers.encoder_layer_1", ["conv_proj", "encoder.layers.encoder_layer_0",
                                                         "encoder.layers.encoder_layer_2", "encoder.ln", "heads"]),
}


def make(family: str):
    torch.manual_seed(0)
    net = FAMILIES[family][0]()
    with torch.no_grad():  # BatchNorm statistics of a trained net rather than the identity of a fresh one
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return models.from_module(net, name=f"{family}-like", input_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3,
                              labels=[f"class{i}" for i in range(5)])


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param, make(request.param)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee", "astronaut", "rocket", "camera", "cat"):
        arr = getattr(data, name)()
        arr = np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]
        Image.fromarray(arr).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def photo(photo_dir):
    return Image.open(photo_dir / "chelsea.png").convert("RGB")


def test_layer_table_and_default_main_layers(family):
    name, model = family
    main = [l.name for l in model.layers()]
    for layer in FAMILIES[name][2]:
        assert layer in main, (layer, main)
    mid = model.layer(FAMILIES[name][1])
    assert mid.spatial and mid.channels > 0


def test_activations_are_nchw_and_truncated(family):
    name, model = family
    layer = FAMILIES[name][1]
    info = model.layer(layer)
    later = [m for m in model.network.modules() if isinstance(m, nn.Linear)][-1]  # the classifier
    calls = []
    handle = later.register_forward_hook(lambda *a: calls.append(1))
    try:
        acts = model.activations(torch.rand(2, 3, SIZE, SIZE), [layer])
    finally:
        handle.remove()
    assert acts[layer].shape == (2, info.channels, info.height, info.width)
    assert calls == []  # the forward pass stopped at the layer
    assert all(not m._forward_hooks for m in model.network.modules())


def test_in_place_ops_do_not_change_what_a_hook_saw(family):
    """With the forward pass going on to the logits, ReLU(inplace=True) after a conv and ResNet's
    ``out += identity`` would overwrite the captured output; it must equal the stopped pass's."""
    name, model = family
    x = torch.rand(2, 3, SIZE, SIZE)
    for info in model.layers(all_modules=True):
        if info.name in ("", ) or not info.spatial:
            continue
        alone = model.activations(x, [info.name])[info.name]
        with_logits = model.activations(x, [info.name, "logits"])[info.name]
        assert torch.equal(alone, with_logits), info.name


def test_render_batched_units_and_redirect(family):
    name, model = family
    layer = FAMILIES[name][1]
    results = render_units(model, [(layer, 0), (layer, 1), (layer, 2)], batch_size=3, size=SIZE, steps=6,
                           recipe="quick")
    assert len(results) == 3
    for r in results:
        assert torch.isfinite(r.images).all() and r.images.shape == (1, 3, SIZE, SIZE)
    r = render(model, f"{layer}:1", size=SIZE, steps=8, recipe="quick")
    assert r.history[-1] > r.history[0]
    dream = render(model, f"dream:{layer}", size=SIZE, steps=4, recipe="quick")
    assert torch.isfinite(dream.images).all()
    neuron = render(model, f"neuron:{layer}:0", size=SIZE, steps=4, recipe="quick")
    assert torch.isfinite(neuron.images).all()


def test_dead_start_is_redirected_or_left_alone(family):
    """A unit that is off on the grey start image: families with rectifiers redirect its gradient;
    ConvNeXt and ViT (GELU, nothing to redirect) render without error."""
    name, model = family
    rectified = [n for n, m in model.network.named_modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    if rectified:
        target = rectified[0]
        conv = [m for m in model.network.modules() if isinstance(m, nn.Conv2d)][0]
        with torch.no_grad():
            saved = conv.bias.clone() if conv.bias is not None else None
            if conv.bias is not None:
                conv.bias[0] = -5.0  # channel 0 dead on any input in [0, 1] of reasonable contrast
        try:
            r = render(model, f"{target}:0", size=SIZE, steps=12, recipe="quick")
        finally:
            if saved is not None:
                with torch.no_grad():
                    conv.bias.copy_(saved)
        if conv.bias is not None and name in ("vgg", "inception"):
            assert r.settings.get("redirected_relu_steps", 0) > 0
    else:
        r = render(model, f"{FAMILIES[name][1]}:0", size=SIZE, steps=4, recipe="quick")
        assert "redirected_relu_steps" not in r.settings
    assert torch.isfinite(r.images).all()


def test_dataset_examples_with_receptive_field_crops(family, photo_dir, tmp_path):
    name, model = family
    layer = FAMILIES[name][1]
    rf = receptive_field(model, layer)
    assert rf.height == model.layer(layer).height
    store = collect(model, photo_dir, [layer], k=2, bottom=1, store=tmp_path / "store", batch_size=3)
    top = store.top(layer, 1, by="max")
    assert len(top) == 2
    for ex in top:
        t, l, b, r = ex.box
        assert 0 <= t < b <= SIZE and 0 <= l < r <= SIZE
        assert ex.image_file.is_file() and ex.position is not None
        assert 0 <= ex.position[0] < rf.height and 0 <= ex.position[1] < rf.width
    if name == "vit":
        # Attention mixes every patch into every token after the first block: the field is the image.
        assert rf.whole or rf.extent[0] >= SIZE


@pytest.mark.parametrize("method", METHODS)
def test_attributions(family, photo, method):
    name, model = family
    layer = FAMILIES[name][1] if method in ("gradcam", "guided-gradcam") else None
    a = attribute(model, photo, target=2, method=method, layer=layer, steps=4, samples=2)
    assert a.map.shape == (SIZE, SIZE) and torch.isfinite(a.map).all()
    if method == "gradcam":
        acts, grads, _ = model.layer_gradient(a.image[None], layer, __import__("featviz").logit(2))
        assert grads.shape == acts.shape and grads.abs().sum() > 0


def test_building_blocks(family, photo):
    name, model = family
    layer = FAMILIES[name][1]
    sheet, ca = blocks_sheet(model, photo, layer, target=1, top=3, thumbnails=False, tile=48)
    assert ca.scores.shape == (model.layer(layer).channels,) and torch.isfinite(ca.scores).all()
    # Activation x gradient summed over channels and positions is the first-order change of the target.
    assert sheet.size[0] > 0


def test_quick_microscope_build(family, photo_dir, tmp_path):
    from featviz.microscope import build

    name, model = family
    layer = FAMILIES[name][1]
    report = build(model, tmp_path / "site", photo_dir, layers=[layer], units=2, steps=2, size=SIZE, k=2,
                   batch_size=2, diversity_batch=2, n_classes=2)
    assert (tmp_path / "site" / "index.html").is_file()
    assert report is not None


def test_vit_tokens_grid_and_class_token():
    model = make("vit")
    info = model.layer("encoder.layers.encoder_layer_0")
    assert (info.layout, info.prefix, info.height, info.width, info.channels) == ("tokens", 1, 4, 4, 16)
    x = torch.rand(1, 3, SIZE, SIZE)
    raw = model.raw_activations(x, ["encoder.layers.encoder_layer_0"])["encoder.layers.encoder_layer_0"]
    grid = model.activations(x, ["encoder.layers.encoder_layer_0"])["encoder.layers.encoder_layer_0"]
    # patch token 4*y + x sits at grid cell (y, x); the class token (row 0) is left out
    assert torch.equal(grid[0, :, 1, 2], raw[0, 1 + 4 * 1 + 2])
    assert "1 class/register token(s) left out" in model.unit_description("encoder.layers.encoder_layer_0", 3)
    assert model.layer("heads.head").layout == "flat"


def test_convnext_channels_last_inner_layers():
    model = make("convnext")
    hidden = model.layer("features.1.0.block.3")  # Linear(8, 32) on (B, H, W, C)
    assert (hidden.layout, hidden.channels, hidden.height) == ("nhwc", 32, 8)
    assert model.layer("features.1.0.block.0").layout == "nchw"  # the depthwise conv before the permute
    assert model.layer("features.0.1").layout == "nchw"  # LayerNorm2d permutes inside
    acts = model.activations(torch.rand(2, 3, SIZE, SIZE), ["features.1.0.block.4"])  # GELU keeps the layout
    assert acts["features.1.0.block.4"].shape == (2, 32, 8, 8)


def test_inception_concatenated_channels_name_their_branch():
    model = make("inception")
    info = model.layer("inception3a")
    assert [(b.name, b.start, b.stop) for b in info.branches] == [
        ("inception3a.branch1", 0, 4), ("inception3a.branch2", 4, 10), ("inception3a.branch3", 10, 12),
        ("inception3a.branch4", 12, 14)]
    assert model.unit_description("inception3a", 5) == "inception3a:5 = inception3a.branch2:1"
    assert model.layer("inception3a.branch2").branches == ()  # a Sequential: no concatenation


def test_layers_command_shows_branches_and_tokens(tmp_path):
    """`featviz layers` on specs whose factory is one of the classes above."""
    from click.testing import CliRunner

    from featviz.cli import main

    for cls, expected in (("InceptionLike", ["channels 4-9", "from inception3a.branch2"]),
                          ("ViTLike", ["encoder.layers.encoder_layer_0", "(tokens: 1 class/register + patch grid)"])):
        spec = tmp_path / f"{cls}.toml"
        spec.write_text(f'factory = "{__file__}:{cls}"\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n'
                        f'input_size = {SIZE}\n')
        result = CliRunner().invoke(main, ["layers", str(spec)])
        assert result.exit_code == 0, result.output
        for text in expected:
            assert text in result.output, result.output
