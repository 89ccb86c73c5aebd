import os

import pytest
import torch
from torch import nn

# Two cores in CI: keep torch from oversubscribing when tests run alongside other work.
torch.set_num_threads(min(2, os.cpu_count() or 1))


class TinyNet(nn.Module):
    """A small CNN with named stages, for fast tests of the engine's mechanics."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.conv3 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 10)
        self.calls = {"conv3": 0, "fc": 0}

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        self.calls["conv3"] += 1
        x = self.conv3(x)
        self.calls["fc"] += 1
        return self.fc(self.pool(x))


@pytest.fixture
def tiny():
    from featviz.models import from_module

    return from_module(TinyNet(), name="tiny", input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                       labels=[f"class{i}" for i in range(10)], main_layers=["conv1", "conv2", "conv3", "fc"])


@pytest.fixture(scope="session")
def lite0():
    from featviz.models import load

    return load("efficientnet_lite0")


@pytest.fixture(scope="session")
def photos():
    """A few real photos embedded in scikit-image (cat, coffee, astronaut, rocket...)."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket", "coins")}


def empty_site(path, organism):
    """A microscope site that knows ``organism`` and nothing else (what a build records first)."""
    from featviz.microscope.manifest import Manifest

    with Manifest(path) as man:
        man.set_model(organism.name, {"name": organism.name, "input_size": organism.input_size,
                                      "num_classes": organism.num_classes, "labels": None,
                                      "layers": [{"name": l.name, "channels": l.channels, "height": l.height,
                                                  "width": l.width} for l in organism.layers()]})
    return path


def one_error_line(result) -> str:
    """The CLI's single 'featviz: error' line, after checking exit status 2 and no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("featviz: error")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output, result.output
    return lines[0]


def crash_on_call(monkeypatch, module, name: str, n: int, message: str) -> None:
    """Make ``module.name`` raise RuntimeError(message) on its n-th call (a simulated crash);
    ``monkeypatch.undo()`` or the end of the test restores it."""
    real = getattr(module, name)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError(message)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)


def default_ctrl_c() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: a shell that runs the test suite in the
    background makes it ignore SIGINT, and children inherit that (Python then installs no KeyboardInterrupt
    handler). Restoring the default makes the child see Ctrl-C as it would from a terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def run():
    """``run(*args)``: the featviz command line in this process (click's runner), exceptions not caught."""
    from click.testing import CliRunner

    from featviz.cli import main

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def finetuned_site(tmp_path_factory, photos):
    """A real fine-tuning run (lite0 from ImageNet weights on the offline demo task: 2 steps at 48 px)
    and a microscope site built from its model.toml, which builds the run's starting network beside it.
    Returns (run folder, site folder, photo folder, build report)."""
    from PIL import Image

    from featviz.microscope import build
    from featviz.training import TrainSettings, finetune

    folder = tmp_path_factory.mktemp("finetuned")
    run = folder / "shapes"
    finetune("efficientnet_lite0", None, run, TrainSettings(steps=2, per_class=2, holdout=2, size=48, batch_size=6))
    photo_dir = folder / "photos"
    photo_dir.mkdir()
    for name, pixels in photos.items():
        Image.fromarray(pixels).convert("RGB").resize((96, 96)).save(photo_dir / f"{name}.png")
    site = folder / "site"
    report = build(str(run / "model.toml"), site, photo_dir, layers=["blocks.4", "head"], units=2, steps=3, size=32,
                   k=3, batch_size=2, diversity_batch=2, classes=[0, 1], examples_size=64)
    return run, site, photo_dir, report
