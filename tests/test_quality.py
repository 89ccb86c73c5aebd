"""The view-robust activation measure (featviz.optvis.quality) and renders that hold under a change of view."""
import pytest
import torch

from featviz.errors import FeatvizError
from featviz.optvis import objectives as O
from featviz.optvis import render
from featviz.optvis.quality import VIEW_SCALES, VIEW_SHIFTS, resize, shift, to_8bit, view_robust_activation
from featviz.optvis.transforms import RandomZoom, TransformSpec


def test_views_resize_shift_and_quantize():
    x = torch.rand(2, 3, 32, 32)
    assert resize(x, 1.75).shape == (2, 3, 56, 56) and resize(x, 0.75).shape == (2, 3, 24, 24)
    moved = shift(x, 4, 4)
    assert moved.shape == x.shape and torch.equal(moved[..., 4:, 4:], x[..., :-4, :-4])
    q = to_8bit(x)
    assert torch.allclose(q * 255, (q * 255).round()) and (q - x).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(FeatvizError):
        shift(x, 40, 0)


def test_view_robust_activation_is_the_mean_over_fixed_views(tiny):
    images = torch.rand(3, 3, 32, 32)
    units = [("conv2", 1), ("conv3", 2), ("conv2", 5)]
    objective = O.batched_channels(units)
    table = view_robust_activation(tiny, images, objective, per_view=True)
    assert table.shape == (3, len(VIEW_SCALES) * len(VIEW_SHIFTS))
    assert torch.allclose(view_robust_activation(tiny, images, objective), table.mean(1))
    # One view by hand: unit 1 (conv3:2) of image 1 at 1.25x, shifted (4, 4), from the 8-bit image.
    seen = shift(resize(to_8bit(images[1:2]), 1.25), 4, 4)
    with torch.no_grad():
        expected = tiny.activations(seen, ["conv3"])["conv3"][0, 2].mean()
    assert torch.allclose(table[1, 2 * 2 + 1], expected, atol=1e-5)
    # Deterministic, and it depends on the views.
    assert torch.equal(table, view_robust_activation(tiny, images, objective, per_view=True))
    native = view_robust_activation(tiny, images, objective, scales=(1.0,), shifts=((0, 0),))
    assert not torch.allclose(native, table.mean(1))
    with pytest.raises(FeatvizError):
        view_robust_activation(tiny, images[:, :1], objective)
    with pytest.raises(FeatvizError):
        view_robust_activation(tiny, images, objective, scales=())


def test_random_zoom_sizes_seeds_and_gradients():
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    zoom = RandomZoom((0.5, 2.0), translate=0.1, out_size=32)
    sizes = set()
    for seed in range(20):
        out = zoom(x, torch.Generator().manual_seed(seed))
        assert out.shape[:2] == (2, 3) and out.shape[-1] == out.shape[-2] <= 32
        sizes.add(out.shape[-1])
    assert len(sizes) > 2 and 32 in sizes  # shrunk views and enlarged crops
    a, b = zoom(x, torch.Generator().manual_seed(3)), zoom(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    a.mean().backward()
    assert x.grad.abs().sum() > 0
    spec = TransformSpec("z", zoom=(0.75, 1.75), translate=4 / 128)
    assert spec.build(32)(x, torch.Generator().manual_seed(0)).shape[0] == 2
    with pytest.raises(FeatvizError):
        RandomZoom((2.0, 1.0))


def test_random_zoom_native_steps_see_the_whole_image_at_its_own_size():
    x = torch.rand(2, 3, 32, 32)
    windows = RandomZoom((0.75, 1.75), translate=4 / 128, out_size=32, max_view=0.75)
    mixed = RandomZoom((0.75, 1.75), translate=4 / 128, out_size=32, max_view=0.75, native=0.5)
    always = RandomZoom((0.75, 1.75), out_size=32, max_view=0.75, native=1.0)
    window_sizes = {windows(x, torch.Generator().manual_seed(seed)).shape[-1] for seed in range(20)}
    mixed_sizes = [mixed(x, torch.Generator().manual_seed(seed)).shape[-1] for seed in range(40)]
    assert window_sizes == {24}  # 3/4 of the side, never the whole image
    assert 24 in mixed_sizes and 32 in mixed_sizes and set(mixed_sizes) == {24, 32}
    # Without a shift, a native step is the image itself.
    assert torch.allclose(always(x, torch.Generator().manual_seed(1)), x, atol=1e-5)
    spec = TransformSpec("z", zoom=(0.75, 1.75), max_view=0.75, native=1.0)
    assert spec.build(32)(x, torch.Generator().manual_seed(0)).shape[-1] == 32
    with pytest.raises(FeatvizError, match="native"):
        RandomZoom((0.75, 1.75), native=1.5)


def test_colourfulness_orders_grey_pastel_and_vivid():
    from featviz.optvis.quality import colourfulness

    grey = torch.rand(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert colourfulness(grey).item() == pytest.approx(0, abs=1e-4)
    vivid = torch.zeros(1, 3, 16, 16)
    vivid[:, 0, :, :8] = 1  # red half, blue half
    vivid[:, 2, :, 8:] = 1
    pastel = 0.5 + 0.2 * (vivid - 0.5)
    # By hand: rg is 255 or 0, yb 127.5 or -255 -> sd sqrt(127.5² + 191.25²), mean |(127.5, -63.75)|.
    expected = (127.5 ** 2 + 191.25 ** 2) ** 0.5 + 0.3 * (127.5 ** 2 + 63.75 ** 2) ** 0.5
    assert colourfulness(vivid).item() == pytest.approx(expected, rel=1e-4)
    assert 0 < colourfulness(pastel).item() < colourfulness(vivid).item()
    with pytest.raises(FeatvizError):
        colourfulness(torch.rand(2, 16, 16))


# -- real model: renders that hold when the image is seen at another scale ------------------------------
@pytest.mark.slow
def test_lite0_unit_render_holds_at_another_scale(lite0):
    """A short render with the unit default raises its channel over the grey start, also when the saved image
    is seen 1.25x larger or 0.75x smaller and shifted (views the optimization never used)."""
    layer, ch = "blocks.8", 12
    res = render(lite0, f"{layer}:{ch}", size=96, steps=24, seed=0)
    assert res.settings["recipe"]["transforms"]["zoom"] is not None  # the auto recipe for units sees zoomed views
    start = torch.full((1, 3, 96, 96), 0.5)
    objective = O.channel(layer, ch)
    for scale in (1.25, 0.75):
        views = dict(scales=(scale,), shifts=((4, 4),))
        reached = view_robust_activation(lite0, res.images, objective, **views)
        before = view_robust_activation(lite0, start, objective, **views)
        assert reached > before + 1.0, scale
    assert view_robust_activation(lite0, res.images, objective) > view_robust_activation(lite0, start, objective) + 1


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["quick", "auto"])  # auto: the class recipe, short
def test_lite0_class_render_moves_prediction_at_another_scale(lite0, recipe):
    res = render(lite0, "logit:309", size=160, steps=24, recipe=recipe, lr=0.08)  # bee
    assert res.settings["recipe"]["name"] == {"quick": "quick", "auto": "classes"}[recipe]
    for scale in (1.25, 1.4):  # 200 and 224 px: the network pools globally, so any size is a valid input
        seen = shift(resize(to_8bit(res.images), scale), 4, 4)
        top = lite0.predict(seen, k=5)[0]
        assert top[0][0] == 309, (scale, top)
