import os
import platform

import numpy as np
import pytest
import torch
from PIL import Image

from featviz.errors import FeatvizError, ImageReadError, IndexOutOfRangeError, UnknownLayerError, UnknownModelError
from featviz.models import available, from_module, load


def test_layer_table_uses_dotted_names_and_shapes(tiny):
    names = [l.name for l in tiny.layers()]
    assert names == ["conv1", "conv2", "conv3", "fc"]
    conv2 = tiny.layer("conv2")
    assert (conv2.channels, conv2.height, conv2.width) == (16, 16, 16)
    assert not tiny.layer("fc").spatial
    assert "conv1.0" in [l.name for l in tiny.layers(all_modules=True)]


def test_unknown_layer_suggests_nearest(tiny):
    with pytest.raises(UnknownLayerError, match="Did you mean: conv2"):
        tiny.layer("conv22")


def test_channel_and_class_ranges(tiny):
    with pytest.raises(IndexOutOfRangeError, match="valid channels are 0-15"):
        tiny.check_channel("conv2", 16)
    with pytest.raises(IndexOutOfRangeError, match="0-9"):
        tiny.check_class(10)


def test_normalization_is_applied_inside(tiny):
    x = torch.rand(2, 3, 32, 32)
    expected = tiny.network((x - 0.5) / 0.25)
    assert torch.allclose(tiny(x), expected)


def test_activations_stop_early_and_remove_hooks(tiny):
    net = tiny.network
    tiny.layers()  # the layer table is traced once, with a full forward pass
    before = net.calls["fc"]
    acts = tiny.activations(torch.rand(1, 3, 32, 32), ["conv2"])
    assert acts["conv2"].shape == (1, 16, 16, 16)
    assert net.calls["fc"] == before  # the forward pass stopped after conv2
    assert all(not m._forward_hooks for m in net.modules())
    acts = tiny.activations(torch.rand(1, 3, 32, 32), ["conv3", "logits"])
    assert acts["logits"].shape == (1, 10) and net.calls["fc"] == before + 1
    assert all(not m._forward_hooks for m in net.modules())


def test_hooks_removed_after_error(tiny):
    with pytest.raises(FeatvizError):
        tiny.activations(torch.rand(1, 4, 32, 32), ["conv2"])  # wrong channel count
    assert all(not m._forward_hooks for m in tiny.network.modules())


def test_from_module_requires_valid_normalization():
    with pytest.raises(FeatvizError):
        from_module(torch.nn.Conv2d(3, 3, 1), mean=(0.5, 0.5), std=(1, 1, 1))
    with pytest.raises(FeatvizError):
        from_module(torch.nn.Conv2d(3, 3, 1), mean=(0.5, 0.5, 0.5), std=(0, 1, 1))


def test_unknown_model_lists_known():
    with pytest.raises(UnknownModelError, match="efficientnet_lite0"):
        load("efficientnet_lite9")


def test_builtin_models_are_offline():
    assert available() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_preprocess_and_bad_images(tiny, tmp_path):
    img = Image.fromarray((np.random.default_rng(0).random((40, 60, 4)) * 255).astype(np.uint8), "RGBA")
    img.save(tmp_path / "a.png")
    x = tiny.preprocess(tmp_path / "a.png")
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageReadError, match="cannot read image"):
        tiny.preprocess(tmp_path / "bad.jpg")
    with pytest.raises(ImageReadError, match="not found"):
        tiny.preprocess(tmp_path / "missing.jpg")


@pytest.mark.slow
def test_lite0_classifies_real_photos(lite0, photos):
    x = torch.stack([lite0.preprocess(Image.fromarray(photos[n])) for n in ("chelsea", "coffee")])
    top = lite0.predict(x, k=5)
    cat_classes = {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
    assert cat_classes & {c for c, _, _ in top[0]}
    assert {967, 968, 504} & {c for c, _, _ in top[1]}  # espresso, cup, coffee mug
    layers = [l.name for l in lite0.layers()]
    assert layers[:3] == ["stem", "blocks.0", "blocks.1"] and layers[-1] == "classifier"
    assert lite0.layer("blocks.8").channels == 112 and lite0.layer("blocks.8").height == 14


@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (3, 2), (5, 2), (1, 1)])
@pytest.mark.parametrize("side", [31, 32, 65])
def test_same_padding_matches_tensorflow_same(kernel, stride, side):
    # The convolution pads by itself when SAME padding is symmetric; it must equal padding the input explicitly
    # (TensorFlow's SAME: the odd pixel goes to the bottom and right) for every size and stride.
    from featviz.models.efficientnet_lite import SamePadConv2d

    conv = SamePadConv2d(4, 6, kernel, stride=stride)
    x = torch.randn(2, 4, side, side + 3, generator=torch.Generator().manual_seed(side))
    pads = [max((-(-n // stride) - 1) * stride + kernel - n, 0) for n in (side, side + 3)]
    padded = torch.nn.functional.pad(x, [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2])
    expected = torch.nn.functional.conv2d(padded, conv.weight, conv.bias, stride)
    out = conv(x)
    assert out.shape[-2:] == (-(-side // stride), -(-(side + 3) // stride))
    torch.testing.assert_close(out, expected)


def test_allocator_tuning_is_on_by_default_and_can_be_refused():
    import subprocess
    import sys

    code = "import featviz.devices as d; print(d.tune_cpu_allocator(), d.release_freed_memory())"
    by_default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "FEATVIZ_MALLOC": "system"})
    assert refused.stdout.strip() == "False False"  # nothing tuned, so nothing held back to release
    if platform.libc_ver()[0] == "glibc":
        assert by_default.stdout.strip() == "True True"
