"""The open axes of a render (your own parameterization, transforms, optimizer, LR schedule), the
dead-start class, and the render-side checks of bad input (one line, never a traceback)."""
import functools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featviz.cli import main
from featviz.cli import render_cmd
from featviz.errors import FeatvizError
from featviz.imageio import read_settings
from featviz.optvis import Recipe, memory, render, render_units
from featviz.optvis import objectives as O
from featviz.optvis.param import FourierParam

from conftest import one_error_line

QUICK = dict(size=32, steps=4, recipe="quick")


# -- open axes ---------------------------------------------------------------------------

def test_own_transform_callable_and_module(tiny):
    calls = []

    def mirror_views(images, generator):  # two views per image, view-major
        calls.append(images.shape)
        return torch.cat([images, images.flip(-1)])

    result = render(tiny, "conv2:3", transforms=mirror_views, **QUICK)
    assert len(calls) == 4 and calls[0] == (1, 3, 32, 32)
    assert result.settings["recipe"]["transforms"].endswith("mirror_views")

    class Shift(torch.nn.Module):  # a module taking only the images: called without the generator
        def forward(self, images):
            return torch.roll(images, 2, dims=-1)

    shifted = render(tiny, "conv2:3", transforms=Shift(), **QUICK)
    assert shifted.history[-1] > shifted.history[0]
    with pytest.raises(FeatvizError, match="whole views"):
        render(tiny, "conv2:3", batch=2, transforms=lambda images, generator: images[:1], **QUICK)


def test_own_optimizer_factory_and_schedule(tiny):
    made = []

    def sgd(params, lr):
        made.append(torch.optim.SGD(params, lr=lr * 20, momentum=0.9))
        return made[-1]

    seen_lr = []
    halving = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5)
    result = render(tiny, "conv2:3", optimizer=sgd, lr_schedule=lambda opt, steps: halving(opt), size=32, steps=6,
                    recipe="quick", callback=lambda step, value: seen_lr.append(made[0].param_groups[0]["lr"]))
    assert len(made) == 1 and isinstance(made[0], torch.optim.SGD)
    assert seen_lr == pytest.approx([1.6, 0.8, 0.8, 0.4, 0.4, 0.2])  # quick's lr 0.08 x 20, halved every 2 steps
    assert result.history[-1] > result.history[0]
    with pytest.raises(FeatvizError, match="torch.optim.Optimizer"):
        render(tiny, "conv2:3", optimizer=lambda params, lr: "adam", **QUICK)


def test_cosine_schedule_is_torch_scheduler_ending_at_a_tenth(tiny):
    made = []

    def adam(params, lr):
        made.append(torch.optim.Adam(params, lr=lr))
        return made[-1]

    lrs = []
    render(tiny, "conv2:3", optimizer=adam, size=32, steps=5, recipe="quick", lr=0.1,
           callback=lambda step, value: lrs.append(made[0].param_groups[0]["lr"]))
    # the lr after each step is the one the next step uses: cosine from 0.1 to 0.01 over steps 1..5
    expected = [0.01 + 0.09 * 0.5 * (1 + np.cos(np.pi * i / 4)) for i in range(1, 5)]
    assert lrs[:4] == pytest.approx(expected, rel=1e-6)


def test_own_parameterization_built_or_factory(tiny):
    class Pixels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.values = torch.nn.Parameter(torch.zeros(2, 3, 24, 24))

        def forward(self):
            return torch.sigmoid(self.values)

    mine = Pixels()
    result = render(tiny, O.batched_channels([("conv2", 1), ("conv2", 2)]), param=mine, batch=2, steps=4,
                    recipe="quick")
    assert result.images.shape == (2, 3, 24, 24) and result.settings["size"] == 24
    assert mine.values.abs().sum() > 0  # the optimizer changed my parameters
    with pytest.raises(FeatvizError, match="makes 2 images but batch is 1"):
        render(tiny, "conv2:1", param=Pixels(), steps=2)
    with pytest.raises(FeatvizError, match="init_image"):
        render(tiny, "conv2:1", param=Pixels(), batch=2, steps=2, init_image=torch.rand(3, 24, 24))
    smooth = render(tiny, "conv2:1", param=functools.partial(FourierParam, decay=1.5), **QUICK)
    assert smooth.images.shape == (1, 3, 32, 32) and "decay=1.5" in smooth.settings["recipe"]["param"]


def test_recipe_value_with_objects_and_unknown_settings(tiny, tmp_path):
    recipe = Recipe("mine", steps=3, lr=0.05, optimizer=torch.optim.AdamW, transforms=lambda x, g: x,
                    lr_schedule="constant")
    result = render(tiny, "conv2:1", recipe=recipe, size=32)
    assert len(result.history) == 3 and result.settings["recipe"]["optimizer"] == "torch.optim.adamw.AdamW"
    settings = read_settings(result.save(tmp_path / "mine.png"))
    assert settings["recipe"]["name"] == "mine"
    with pytest.raises(FeatvizError, match="unknown settings stpes"):
        render(tiny, "conv2:1", stpes=3)
    with pytest.raises(FeatvizError, match="unknown optimizer"):
        Recipe(optimizer="adagrad")
    with pytest.raises(FeatvizError, match="callable"):
        Recipe(transforms=3)


def test_render_has_at_most_twelve_parameters():
    import inspect

    for fn in (render, render_units):
        assert len(inspect.signature(fn).parameters) <= 12


# -- issue 15 (9): one line for bad Python API input ---------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(batch=2.0), "batch must be a whole number"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(seed=2**70), "seed must be between"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(size=0), "size must be between 16 and 4096"),
    (dict(size=64.0), "size must be a whole number"),
    (dict(batch=3, init_image=torch.rand(2, 3, 32, 32)), r"N = 1 or the batch \(3\)"),
    (dict(init_image=np.random.rand(32, 32, 3)), "must be a torch tensor"),
    (dict(init_image=torch.rand(32, 32)), "init_image must be"),
    (dict(snapshots=0), "snapshot interval must be between"),
])
def test_bad_render_arguments_are_featviz_errors(tiny, kwargs, message):
    with pytest.raises(FeatvizError, match=message):
        render(tiny, "conv2:1", **{"steps": 2, **kwargs})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_is_refused(tiny, dtype):
    tiny.to(dtype)
    with pytest.raises(FeatvizError, match="float32 \\(or float64\\) model"):
        render(tiny, "conv2:1", size=32, steps=2)


def test_double_precision_model_renders(tiny):
    assert render(tiny.double(), "conv2:1", size=32, steps=2).images.dtype == torch.float32


def test_bad_devices_are_one_line(monkeypatch):
    from featviz.devices import resolve_device
    from featviz.models import load

    for device, message in (("bogus", "unknown device 'bogus'"), ("meta", "cannot run on device 'meta'")):
        with pytest.raises(FeatvizError, match=message):
            load("efficientnet_lite0", device=device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FeatvizError, match="CUDA is not available"):
        resolve_device("cuda")
    runner = CliRunner()
    for device, message in (("cuda", "CUDA is not available"), ("bogus", "unknown device"),
                            ("meta", "cannot run on device 'meta'")):
        result = runner.invoke(main, ["render", "efficientnet_lite0", "blocks.8:1", "-o", "x.png", "--device", device])
        assert message in one_error_line(result)


# -- issue 15 (10): positions, sizes, formats -------------------------------------------------

def test_neuron_position_outside_the_grid_is_refused(tiny):
    with pytest.raises(FeatvizError, match=r"x=999, y=999 is outside conv2's 16x16 grid"):
        render(tiny, "neuron:conv2:1@999,999", size=32, steps=2)
    with pytest.raises(FeatvizError, match="must be a whole number >= 0"):
        O.neuron("conv2", 1, x=-1, y=0)
    inside = render(tiny, "neuron:conv2:1@15,0", size=32, steps=2)
    assert inside.settings["objective"] == "neuron conv2:1 @ x=15, y=0"


def test_images_are_written_in_the_format_the_extension_names(tiny, tmp_path):
    result = render(tiny, "conv2:1", **QUICK)
    for name, fmt in (("x.png", "PNG"), ("x.jpg", "JPEG"), ("x.webp", "WEBP"), ("x.tiff", "TIFF")):
        path = result.save(tmp_path / name)
        with Image.open(path) as img:
            assert img.format == fmt
        assert read_settings(path)["objective"] == "channel conv2:1"
    for name in ("x.bmp", "x.pdf", "x.xyz"):
        with pytest.raises(FeatvizError, match=f"cannot write '.{name[2:]}' images"):
            result.save(tmp_path / name)
        assert not (tmp_path / name).exists()


# -- issue 15 (5): memory checked before it is allocated ----------------------------------------

def test_memory_estimate_scales_and_refuses_what_cannot_fit(tiny, monkeypatch):
    one = memory.render_bytes(tiny, ["conv2"], batch=1, views=1, rows=1, channels=3, size=64)
    many = memory.render_bytes(tiny, ["conv2"], batch=8, views=1, rows=8, channels=3, size=64)
    big = memory.render_bytes(tiny, ["conv2"], batch=1, views=1, rows=1, channels=3, size=128)
    assert many == pytest.approx(8 * one, rel=0.01) and big == pytest.approx(4 * one, rel=0.01)
    # conv1 (8 x 32 x 32 per 32 px image, several saved copies) is at least what the graph keeps
    assert memory.activation_bytes_per_pixel(tiny, ("conv2",)) >= 8 * 4
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10 * 2**20)
    with pytest.raises(FeatvizError, match=r"needs about [\d.]+ GiB of memory but 0.0 GiB is available"):
        render(tiny, "conv2:1", batch=4096, size=256, steps=1)
    assert render(tiny, "conv2:1", size=32, steps=1).images.shape == (1, 3, 32, 32)  # small ones still fit


@pytest.mark.slow
def test_lite0_batch_4096_at_64px_is_estimated_over_8_gib(lite0, monkeypatch):
    rows = memory.rows_per_pass(4096, 1, 16, True)
    needed = memory.render_bytes(lite0, ["blocks.8"], batch=4096, views=1, rows=rows, channels=3, size=64)
    assert needed > 8 * 2**30
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 2**30)
    monkeypatch.setattr(render_cmd, "load_model", lambda name, device=None: lite0)
    result = CliRunner().invoke(main, ["render", "efficientnet_lite0", "blocks.8:1", "-o", "x.png", "--batch", "4096",
                                       "--size", "64"])
    assert "of memory but 8.0 GiB is available" in one_error_line(result)


# -- the CLI: ranges, formats, photos, seeds ------------------------------------------------------

@pytest.fixture
def tiny_cli(monkeypatch, tiny, tmp_path):
    monkeypatch.setattr(render_cmd, "load_model", lambda name, device=None: tiny)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("args, message", [
    (("render-layer", "tiny", "conv2", "--channels", "0-999999999", "-o", "g.png"),
     "--channels: channel of conv2 999999999 is out of range: valid are 0-15"),
    (("render", "tiny", "conv2:1", "-o", "x.bmp"), "cannot write '.bmp' images"),
    (("render", "tiny", "conv2:1", "-o", "x.xyz", "--steps", "2"), "cannot write '.xyz' images"),
    (("render", "tiny", "conv2:1", "-o", "x.png", "--seed", "18446744073709551616"), "seed must be between"),
    (("render", "tiny", "neuron:conv2:1@999,999", "-o", "x.png", "--size", "32", "--steps", "2"),
     "is outside conv2's 16x16 grid"),
])
def test_cli_render_checks_are_one_line(tiny_cli, tmp_path, args, message):
    assert message in one_error_line(tiny_cli(*args))
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_dream_refuses_16_bit_photos_like_attribute(tiny_cli, tmp_path):
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(deep)
    result = tiny_cli("dream", "tiny", deep, "--layer", "conv2", "-o", "d.png", "--steps", "2")
    assert "unsupported image mode 'I;16'" in one_error_line(result)


def test_cli_microscope_units_range_is_checked_before_expanding(monkeypatch, tiny, tmp_path):
    from featviz.cli import microscope_cmd

    monkeypatch.setattr(microscope_cmd, "load_model", lambda name, device=None: tiny)
    result = CliRunner().invoke(main, ["microscope", "build", "tiny", "--units", "0-999999999", "--out",
                                       str(tmp_path / "site"), "-q"])
    assert "--units: unit 999999999 is out of range: valid are 0-15" in one_error_line(result)


def test_cli_render_writes_jpeg_with_settings(tiny_cli, tmp_path):
    result = tiny_cli("render", "tiny", "conv2:1", "-o", "x.jpg", "--size", "32", "--steps", "2")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "x.jpg") as img:
        assert img.format == "JPEG"
    assert json.dumps(read_settings(tmp_path / "x.jpg")).count("conv2:1") == 1


def test_objectives_say_their_class(tiny):
    from featviz.attribution.methods import class_label

    assert O.parse("logit:3").class_index == 3 and O.parse("prob:7").class_index == 7
    assert O.parse("2*logit:3").class_index == 3
    assert O.parse("logit:3 - logit:4").class_index is None and O.parse("conv2:1").class_index is None
    assert O.parse("logit:3 + conv2:1").class_index is None
    assert class_label(tiny, O.parse("logit:3").class_index) == " (class3)"
    assert class_label(tiny, None) == ""
