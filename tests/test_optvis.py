import math

import pytest
import torch

from featviz.errors import FeatvizError, IndexOutOfRangeError, NonFiniteLossError, UnknownLayerError
from featviz.imageio import read_settings
from featviz.optvis import objectives as O
from featviz.optvis import render, render_units
from featviz.optvis.objectives import Objective, parse
from featviz.optvis.param import FourierParam, MacoParam, PixelParam
from featviz.optvis.transforms import CLASS_CROPS, LUCID, MULTI_CROP, Jitter, Pad, RandomAffine, TransformSpec


# -- objectives -------------------------------------------------------------------
def acts_for(tiny, n=2):
    return tiny.activations(torch.rand(n, 3, 32, 32), ["conv2", "logits"])


def test_primitive_objectives_values(tiny):
    acts = acts_for(tiny)
    a = acts["conv2"]
    assert torch.allclose(O.channel("conv2", 3)(acts, 2), a[:, 3].mean((1, 2)))
    assert torch.allclose(O.neuron("conv2", 3)(acts, 2), a[:, 3, 8, 8])
    assert torch.allclose(O.neuron("conv2", 3, x=1, y=2)(acts, 2), a[:, 3, 2, 1])
    assert torch.allclose(O.deepdream("conv2")(acts, 2), a.pow(2).mean((1, 2, 3)))
    assert torch.allclose(O.logit(4)(acts, 2), acts["logits"][:, 4])
    assert torch.allclose(O.probability(4)(acts, 2), acts["logits"].log_softmax(-1)[:, 4])
    v = torch.zeros(16)
    v[5] = 2.0
    assert torch.allclose(O.direction("conv2", v)(acts, 2), a[:, 5].mean((1, 2)))


def test_algebra_and_descriptions(tiny):
    acts = acts_for(tiny)
    a, b = O.channel("conv2", 1), O.channel("conv2", 2)
    va, vb = a(acts, 2), b(acts, 2)
    assert torch.allclose((a + b)(acts, 2), va + vb)
    assert torch.allclose((a - 2 * b)(acts, 2), va - 2 * vb)
    assert torch.allclose((a * b)(acts, 2), va * vb)
    assert torch.allclose((-a)(acts, 2), -va)
    assert torch.allclose((a / 4)(acts, 2), va / 4)
    assert torch.allclose(sum([a, b])(acts, 2), va + vb)
    assert torch.allclose(Objective.sum([a, b, a])(acts, 2), 2 * va + vb)
    only = a.only(1)(acts, 2)
    assert only[0] == 0 and only[1] == va[1]
    three = tiny.activations(torch.rand(6, 3, 32, 32), ["conv2"])  # 2 views x 3 images
    some = a.only([0, 2])
    assert torch.equal(some(three, 3), a(three, 3) * torch.tensor([1.0, 0, 1, 1, 0, 1]))
    assert some.description == "channel conv2:1 [images 0, 2]"
    assert a.only([3, 0, 1, 2, 7]).description == "channel conv2:1 [images 0-3, 7]"
    assert (a - 2 * b).description == "channel conv2:1 - 2 * channel conv2:2"
    assert set((a + O.logit(3)).layers) == {"conv2", "logits"}


def test_parse_shorthand(tiny):
    assert parse("conv2:3").description == "channel conv2:3"
    assert parse("logit:7").layers == ("logits",)
    assert parse("prob:7").description == "log-probability 7"
    assert parse("dream:conv2").description == "deepdream conv2"
    assert parse("neuron:conv2:3@1,2").description == "neuron conv2:3 @ x=1, y=2"
    combo = parse("conv2:3 - 0.5*conv2:4 + logit:1", tiny)
    acts = acts_for(tiny)
    expected = O.channel("conv2", 3)(acts, 2) - 0.5 * O.channel("conv2", 4)(acts, 2) + acts["logits"][:, 1]
    assert torch.allclose(combo(acts, 2), expected)
    for bad in ("", "conv2", "conv2:x", "logit:abc", "conv2:1 conv2:2"):
        with pytest.raises(FeatvizError):
            parse(bad)
    with pytest.raises(UnknownLayerError):
        parse("conv9:1", tiny)
    with pytest.raises(IndexOutOfRangeError):
        parse("conv2:99", tiny)
    with pytest.raises(IndexOutOfRangeError):
        parse("logit:10", tiny)


def test_diversity_prefers_different_images(tiny):
    x = torch.rand(1, 3, 32, 32)
    same = tiny.activations(x.repeat(2, 1, 1, 1), ["conv2"])
    diff = tiny.activations(torch.cat([x, torch.rand(1, 3, 32, 32)]), ["conv2"])
    d = O.diversity("conv2")
    assert d(same, 2).sum() < d(diff, 2).sum()
    assert d.rowwise  # compares images within a view, so view groups stay exact


def test_grouped_diversity_compares_images_within_their_group_only(tiny):
    views, n = 2, 4
    acts = tiny.activations(torch.rand(views * n, 3, 32, 32), ["conv2", "conv3"])  # crop-major rows

    def group_rows(group):  # the rows of group ``group`` (2 images) in every view, as their own batch
        rows = [v * n + i for v in range(views) for i in (2 * group, 2 * group + 1)]
        return {k: a[rows] for k, a in acts.items()}, rows

    grouped = O.diversity("conv2", group_size=2)(acts, n)
    per_layer = O.diversity(["conv2", "conv3"], group_size=2)(acts, n)
    for group, layer in ((0, "conv2"), (1, "conv3")):
        sub, rows = group_rows(group)
        alone = O.diversity(layer)(sub, 2)
        assert torch.allclose(per_layer[rows], alone, atol=1e-6)
        if layer == "conv2":
            assert torch.allclose(grouped[rows], alone, atol=1e-6)
    # the whole batch as one group is plain diversity
    assert torch.allclose(O.diversity("conv2", group_size=n)(acts, n), O.diversity("conv2")(acts, n), atol=1e-6)
    assert O.diversity(["conv2", "conv3"], group_size=2).rowwise
    with pytest.raises(FeatvizError, match="2 groups of 2 images, but the batch has 6"):
        O.diversity(["conv2", "conv3"], group_size=2)(tiny.activations(torch.rand(6, 3, 32, 32), ["conv2", "conv3"]), 6)
    with pytest.raises(FeatvizError, match="at least 2 images"):
        O.diversity("conv2", group_size=1)
    with pytest.raises(FeatvizError, match="batch has 3 images"):
        O.diversity("conv2", group_size=2)(tiny.activations(torch.rand(3, 3, 32, 32), ["conv2"]), 3)


def test_a_relative_term_counts_in_proportion_to_the_main_objective(tiny):
    acts = {k: a.detach().requires_grad_() for k, a in acts_for(tiny, 3).items()}
    main, term = O.channel("conv2", 1), O.deepdream("conv2")
    value = O.with_relative_term(main, term, 0.5)(acts, 3)
    m, t = main(acts, 3), term(acts, 3)
    assert torch.allclose(value, m + 0.5 * m.abs() * t)
    # |main| is a weight, not something to optimize: the gradient is main's plus 0.5 |main| x term's
    grad, = torch.autograd.grad(value.sum(), acts["conv2"])
    expected, = torch.autograd.grad((m + 0.5 * m.detach().abs() * t).sum(), acts["conv2"], retain_graph=True)
    assert torch.allclose(grad, expected)
    plain, = torch.autograd.grad((m + 0.5 * m.abs() * t).sum(), acts["conv2"])
    assert not torch.allclose(grad, plain)


# -- parameterizations -------------------------------------------------------------
@pytest.mark.parametrize("cls", [PixelParam, FourierParam, MacoParam])
@pytest.mark.parametrize("alpha", [False, True])
def test_param_shapes_range_and_gradients(cls, alpha):
    g = torch.Generator().manual_seed(0)
    p = cls(2, (24, 20), alpha=alpha, generator=g)
    img = p()
    assert img.shape == (2, 4 if alpha else 3, 24, 20)
    assert 0 <= img.min() and img.max() <= 1
    img[:, 0].mean().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in p.parameters())


@pytest.mark.parametrize("cls", [PixelParam, FourierParam])
def test_param_starts_from_photo(cls):
    photo = torch.rand(1, 3, 32, 32) * 0.8 + 0.1
    p = cls(1, (32, 32), init=photo)
    assert torch.allclose(p(), photo, atol=2e-3)


@pytest.mark.parametrize("cls", [PixelParam, FourierParam])
def test_chroma_scales_colour_not_brightness(cls):
    """chroma lengthens the two colour-difference directions only: the same variables give the same brightness
    pattern and livelier colour; a photo start still reproduces the photo."""
    from featviz.optvis.quality import colourfulness

    plain = cls(1, (32, 32), generator=torch.Generator().manual_seed(0), sd=0.5)
    lively = cls(1, (32, 32), generator=torch.Generator().manual_seed(0), sd=0.5, chroma=2.0)
    assert torch.equal(lively.colour[:, 0], plain.colour[:, 0])
    assert torch.allclose(lively.colour[:, 1:], 2 * plain.colour[:, 1:])
    with torch.no_grad():
        assert colourfulness(lively()) > 1.5 * colourfulness(plain())
    photo = torch.rand(1, 3, 32, 32) * 0.8 + 0.1
    assert torch.allclose(cls(1, (32, 32), init=photo, chroma=2.0)(), photo, atol=2e-3)
    for bad in (0, -1.0, True, "2", float("nan")):
        with pytest.raises(FeatvizError, match="chroma"):
            cls(1, (32, 32), chroma=bad)


def test_recipe_chroma_reaches_the_parameterization(tiny):
    res = render(tiny, "logit:2", size=32, steps=2, recipe="quick", chroma=1.5)
    assert res.settings["recipe"]["chroma"] == 1.5


def test_maco_keeps_the_spectrum():
    g = torch.Generator().manual_seed(0)
    p = MacoParam(1, (32, 32), decorrelate=False, generator=g)
    before = torch.fft.rfft2(p.raw() - p.mean).abs()
    with torch.no_grad():
        p.phase.add_(torch.randn_like(p.phase))
    after = torch.fft.rfft2(p.raw() - p.mean).abs()
    # The x=0 and Nyquist columns must be Hermitian, so irfft keeps only part of
    # their phase; every other frequency keeps its amplitude exactly.
    assert torch.allclose(before[..., 1:-1], after[..., 1:-1], atol=1e-3)


# -- transforms ------------------------------------------------------------------
def test_transforms_shapes_and_seeds():
    x = torch.rand(2, 3, 32, 32)
    assert Pad(4)(x).shape == (2, 3, 40, 40)
    assert Jitter(4)(x, torch.Generator().manual_seed(0)).shape == (2, 3, 28, 28)
    aff = RandomAffine((0.6, 1.0), degrees=10, out_size=24, views=3, noise=0.01)
    a = aff(x, torch.Generator().manual_seed(1))
    b = aff(x, torch.Generator().manual_seed(1))
    c = aff(x, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    identity = RandomAffine()(x, torch.Generator())
    assert torch.allclose(identity, x, atol=1e-5)
    for spec in (LUCID, MULTI_CROP):
        out = spec.build(32)(x, torch.Generator().manual_seed(0))
        assert out.shape == (2 * spec.views, 3, 32, 32)
    # The class views are resampled to 0.8 of the canvas side.
    views = CLASS_CROPS.build(40)(torch.rand(2, 3, 40, 40), torch.Generator())
    assert views.shape == (2 * CLASS_CROPS.views, 3, 32, 32)
    with pytest.raises(FeatvizError, match="view_side"):
        TransformSpec("bad", view_side=0).build(32)


def test_transforms_are_differentiable():
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    MULTI_CROP.build(32)(x, torch.Generator().manual_seed(0)).mean().backward()
    assert x.grad.abs().sum() > 0


# -- render loop -------------------------------------------------------------------
def test_render_raises_objective_and_is_reproducible(tiny):
    a = render(tiny, "conv2:3", size=32, steps=30, seed=7, recipe="quick")
    b = render(tiny, "conv2:3", size=32, steps=30, seed=7, recipe="quick")
    c = render(tiny, "conv2:3", size=32, steps=30, seed=8, recipe="quick")
    assert torch.equal(a.images, b.images)  # bit-for-bit
    assert not torch.equal(a.images, c.images)
    assert a.history[-1] > a.history[0]
    assert a.settings["objective"] == "channel conv2:3" and a.settings["seed"] == 7
    assert all(not m._forward_hooks for m in tiny.network.modules())


@pytest.mark.parametrize("recipe", ["default", "lucid", "maco", "sharp", "robust"])
def test_every_recipe_runs(tiny, recipe):
    r = render(tiny, "logit:2", size=32, steps=4, recipe=recipe)
    assert r.images.shape == (1, 3, 32, 32) and len(r.history) == 4


def test_render_stops_at_deepest_needed_layer(tiny):
    tiny.layers()
    before = dict(tiny.network.calls)
    render(tiny, "conv2:1", size=32, steps=3)
    assert tiny.network.calls["conv3"] == before["conv3"]  # never reached past conv2
    render(tiny, "conv3:1", size=32, steps=3)
    assert tiny.network.calls["fc"] == before["fc"]


def test_view_groups_match_single_pass(tiny):
    """Evaluating views in groups (bounded memory) gives the same gradient step."""
    objective = O.batched_channels([("conv2", 1), ("conv2", 2)])
    kw = dict(size=32, steps=3, batch=2, seed=3, recipe="default")
    grouped = render(tiny, objective, max_rows=2, **kw)
    single = render(tiny, objective, max_rows=64, **kw)
    assert torch.allclose(grouped.images, single.images, atol=1e-5)


def test_batch_rendering_one_unit_per_image(tiny):
    units = [("conv2", c) for c in range(5)]
    results = render_units(tiny, units, batch_size=2, size=32, steps=20, recipe="quick")
    assert len(results) == 5 and all(r.images.shape == (1, 3, 32, 32) for r in results)
    assert results[3].settings["objective"] == "channel conv2:3"
    # each image drives its own unit more than the other units do
    for i, res in enumerate(results[:2]):
        acts = tiny.activations(res.images, ["conv2"])["conv2"][0].mean((1, 2))
        other = results[1 - i].images
        acts_other = tiny.activations(other, ["conv2"])["conv2"][0].mean((1, 2))
        assert acts[i] > acts_other[i]


def test_alpha_and_diversity(tiny):
    r = render(tiny, O.channel("conv2", 1) + 0.5 * O.diversity("conv2"), size=32, batch=3, steps=5, alpha=True)
    assert r.images.shape == (3, 4, 32, 32)


def test_init_image_and_snapshots(tiny, tmp_path):
    photo = torch.rand(3, 32, 32)
    r = render(tiny, "dream:conv2", size=32, steps=6, init_image=photo, param="pixel", lr=0.01, snapshots=2)
    assert sorted(r.snapshots) == [2, 4, 6]
    assert (r.images[0] - photo).abs().mean() < 0.1  # still close to the photo
    path = r.save(tmp_path / "x.png")
    assert read_settings(path)["objective"] == "deepdream conv2"
    r.save_gif(tmp_path / "x.gif")
    assert (tmp_path / "x.gif").stat().st_size > 0
    assert r._repr_png_()[:4] == b"\x89PNG"


def test_bad_settings_are_clear(tiny):
    with pytest.raises(FeatvizError, match="steps"):
        render(tiny, "conv2:1", steps=0)
    with pytest.raises(FeatvizError, match="learning rate"):
        render(tiny, "conv2:1", lr=-1.0)
    with pytest.raises(FeatvizError, match="parameterization"):
        render(tiny, "conv2:1", param="wavelet")
    with pytest.raises(FeatvizError, match="recipe"):
        render(tiny, "conv2:1", recipe="fastest")


def test_nan_loss_is_reported(tiny):
    bad = Objective(lambda acts, n: acts["conv2"].mean((1, 2, 3)) * math.nan, ["conv2"], "nan objective")
    with pytest.raises(NonFiniteLossError, match="step 1"):
        render(tiny, bad, size=32, steps=3)


def test_interrupt_keeps_last_image(tiny):
    def stop(step, value):
        if step == 3:
            raise KeyboardInterrupt

    r = render(tiny, "conv2:1", size=32, steps=50, callback=stop)
    assert r.interrupted and len(r.history) == 3 and r.images.shape == (1, 3, 32, 32)


# -- real model ----------------------------------------------------------------------
@pytest.mark.slow
def test_lite0_channel_render_beats_real_photos(lite0, photos):
    from PIL import Image

    layer, ch = "blocks.8", 12
    x = torch.stack([lite0.preprocess(Image.fromarray(p)) for p in photos.values()])
    with torch.no_grad():
        photo_acts = lite0.activations(x, [layer])[layer][:, ch].mean((1, 2))
    res = render(lite0, f"{layer}:{ch}", size=96, steps=24, recipe="quick")
    with torch.no_grad():
        reached = lite0.activations(res.images, [layer])[layer][0, ch].mean()
    assert reached > photo_acts.mean() + 5 * photo_acts.std().clamp(min=0.1)
    assert reached > 2 * photo_acts.max()


@pytest.mark.slow
def test_lite0_class_render_moves_prediction(lite0):
    res = render(lite0, "logit:309", size=160, steps=24, recipe="quick")  # bee
    top = lite0.predict(torch.nn.functional.interpolate(res.images, size=224, mode="bilinear"), k=5)[0]
    assert top[0][0] == 309


@pytest.mark.parametrize("kind, single", [("channel", O.channel), ("neuron", O.neuron),
                                          ("negative", lambda l, c: -O.channel(l, c))])
def test_batched_units_equal_sum_of_masked_objectives(tiny, kind, single):
    units = [("conv2", 3), ("conv3", 1), ("conv2", 7)]
    acts = tiny.activations(torch.rand(6, 3, 32, 32), ["conv2", "conv3"])  # 2 views x 3 images
    fast = O.batched_channels(units, kind)(acts, 3)
    slow = Objective.sum([single(l, c).only(i) for i, (l, c) in enumerate(units)])(acts, 3)
    assert torch.allclose(fast, slow, atol=1e-6)


def test_dead_relu_start_is_redirected():
    """A unit behind a ReLU that is off on the grey start image still gets rendered."""
    from featviz.models import from_module

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.bias.fill_(-0.3)  # dead on grey input
    net = torch.nn.Sequential()
    net.add_module("conv", conv)
    net.add_module("act", torch.nn.ReLU6())
    model = from_module(net, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    r = render(model, "act:1", size=32, steps=40, recipe="quick")
    assert 0 < r.settings["redirected_relu_steps"] <= 20
    assert r.history[-1] > 0.02  # the unit fires; without redirection it stays at exactly 0
    assert all(not m._forward_hooks for m in net.modules())
    live = render(model, "conv:1", size=32, steps=3, recipe="quick")
    assert "redirected_relu_steps" not in live.settings


def test_plateau_judges_each_image_against_its_own_scale(tiny):
    from featviz.optvis.render import PLATEAU_CHECK, PLATEAU_WINDOW, Plateau

    back = PLATEAU_WINDOW // PLATEAU_CHECK  # checks between the two scores compared

    def first_stop(sequence, fraction=0.01):
        """The check at which a plateau is reached when the images score ``sequence`` (one pair per check)."""
        scores = iter(sequence)
        scripted = Objective(lambda acts, n: torch.tensor(next(scores)), ["conv1"], "scripted")
        plateau = Plateau(fraction, tiny, scripted, batch=2)
        for check in range(1, len(sequence) + 1):
            if plateau.reached(torch.zeros(2, 3, 32, 32)):
                return check
        return None

    assert first_stop([(5.0, 2.0)] * 8) == back + 1  # flat from the start: the earliest it can tell
    assert first_stop([(5.0, 0.5 * i) for i in range(8)]) is None  # one image still rising holds the batch
    # a negative objective that rose from -1 to its ceiling 0: flat against where it started
    falling = [(5.0, -max(0.0, 1 - i / 4)) for i in range(10)]
    assert first_stop(falling) == 4 + back + 1
    # a slow rise, 2 % of its size per window, stops at 0.05 but not at 0.01
    slow = [(5.0, 1 + 0.02 * i / back) for i in range(8)]
    assert first_stop(slow, 0.01) is None and first_stop(slow, 0.05) == back + 1


def test_a_render_stops_at_a_plateau_only_when_asked(tiny):
    """The negative of a ReLU unit reaches 0 (the unit off everywhere) and stays there."""
    objective = -O.channel("conv3", 3)
    stopped = render(tiny, objective, steps=300, size=32, recipe="default", plateau=0.01, seed=0)
    assert stopped.settings["stopped_at_plateau"] == stopped.settings["steps_done"] < 300
    assert stopped.settings["recipe"]["plateau"] == 0.01
    assert stopped.history[-1] == 0
    full = render(tiny, objective, steps=300, size=32, recipe="default", seed=0)
    assert full.settings["steps_done"] == 300 and "stopped_at_plateau" not in full.settings
    with pytest.raises(FeatvizError, match="plateau"):
        render(tiny, objective, steps=3, size=32, plateau=1.5)


def test_random_blur_keeps_flat_images_and_smooths_noise():
    from featviz.optvis.transforms import RandomBlur

    g = torch.Generator().manual_seed(0)
    flat = torch.full((2, 3, 24, 24), 0.3)
    assert torch.allclose(RandomBlur(2.0)(flat, g), flat, atol=1e-6)
    noise = torch.rand((2, 3, 24, 24), generator=g)
    blurred = [RandomBlur(3.0)(noise, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert blurred[0].shape == noise.shape and torch.equal(blurred[0], blurred[1])  # the seed decides
    assert blurred[0].std() < 0.8 * noise.std() and not torch.equal(blurred[0], blurred[2])
    spec = TransformSpec("soft", scale=(0.5, 1.0), views=2, blur=1.5)
    views = spec.build(32)(noise, torch.Generator().manual_seed(0))
    assert views.shape == (4, 3, 32, 32)
    with pytest.raises(FeatvizError, match="blur"):
        RandomBlur(-1)


def test_ghost_dropout_perturbs_inner_layers_only_while_optimizing_and_repeats_with_its_seed(tiny):
    from featviz.optvis.ghost import ghost_layers

    # dropout on the inner layers before the objective's: not the first (nearly pixels), not the one feeding it
    assert ghost_layers(tiny, O.logit(3)) == ["conv2"]
    assert ghost_layers(tiny, O.channel("conv3", 1)) == []
    kwargs = dict(steps=48, size=32, recipe="classes", seed=5, lr=0.3)
    start = render(tiny, O.logit(3), **(kwargs | {"steps": 1}))
    one = render(tiny, O.logit(3), ghost=0.3, **kwargs)
    again = render(tiny, O.logit(3), ghost=0.3, **kwargs)
    plain = render(tiny, O.logit(3), **kwargs)
    assert one.settings["recipe"]["ghost"] == 0.3
    assert torch.equal(one.images, again.images)  # the masks come from the render's seeded generator
    assert not torch.equal(one.images, plain.images)  # ... and they change the optimization
    assert all(not tiny.module(name)._forward_hooks for name in ("conv1", "conv2", "conv3", "fc"))  # all removed
    with torch.no_grad():  # judged by the unperturbed network, the class still rose (from 0.140 to 0.162)
        logits = lambda images: tiny(images)[:, 3]  # noqa: E731
        assert float(logits(one.images)) > float(logits(start.images)) + 0.01
    with pytest.raises(FeatvizError, match="ghost"):
        render(tiny, O.logit(3), ghost=1.0, steps=1, size=32)
