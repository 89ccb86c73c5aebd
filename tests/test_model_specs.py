"""Your own network: model specs (TOML), checkpoints, --weights, the registry and its entry points."""
import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from conftest import one_error_line
from featviz import models
from featviz.cli import main
from featviz.errors import FeatvizError


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


NETS_PY = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

def broken():
    raise RuntimeError("no such layer size")
"""


@pytest.fixture
def factory_dir(tmp_path):
    write(tmp_path / "nets.py", NETS_PY)
    return tmp_path


def test_lite0_state_dict_through_a_spec_gives_identical_logits(lite0, tmp_path, photos):
    torch.save(lite0.network.state_dict(), tmp_path / "lite0.pt")
    spec = write(tmp_path / "mine.toml", 'base = "efficientnet_lite0"\nweights = "lite0.pt"\n')
    mine = models.load(spec)
    assert mine.name == "mine" and mine.input_size == 224 and mine.labels == lite0.labels
    assert mine.main_layer_names == lite0.main_layer_names
    x = torch.stack([lite0.preprocess(__import__("PIL.Image").Image.fromarray(photos[n])) for n in ("chelsea", "coffee")])
    with torch.no_grad():
        assert torch.equal(mine(x), lite0(x))
    # The same weights as .safetensors, and through --weights (the short form).
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in lite0.network.state_dict().items()}, tmp_path / "lite0.safetensors")
    short = models.load("efficientnet_lite0", weights=tmp_path / "lite0.safetensors")
    with torch.no_grad():
        assert torch.equal(short(x), lite0(x))


def test_six_class_checkpoint_loads_with_labels_and_renders_logit_3(lite0, tmp_path, run):
    from featviz import render

    net = models.load("efficientnet_lite0").network
    net.classifier = nn.Linear(net.classifier.in_features, 6)
    torch.manual_seed(0)
    nn.init.normal_(net.classifier.weight, std=0.05)
    # A training run's checkpoint: the state dict under "model", beside other things.
    torch.save({"model": net.state_dict(), "epoch": 3, "best_acc": 0.91}, tmp_path / "final.pt")
    (tmp_path / "labels.txt").write_text("\n".join(["circle", "square", "triangle", "star", "cross", "ring"]) + "\n")
    spec = write(tmp_path / "shapes.toml", """
        name = "shapes-lite0"
        base = "efficientnet_lite0"
        weights = "final.pt"
        labels = "labels.txt"
        layers = ["stem", "blocks.4", "blocks.8", "head", "classifier"]
    """)
    organism = models.load(spec)
    assert organism.name == "shapes-lite0" and organism.num_classes == 6 and organism.label(3) == "star"
    assert [l.name for l in organism.layers()] == ["stem", "blocks.4", "blocks.8", "head", "classifier"]
    result = render(organism, "logit:3", size=64, steps=4, recipe="quick")
    assert result.settings["objective"] == "logit 3" and result.history[-1] > result.history[0]
    with pytest.raises(FeatvizError, match="valid classes are 0-5"):
        render(organism, "logit:6", size=64, steps=1)
    out = run("render", spec, "logit:3", "-o", tmp_path / "star.png", "--steps", "2", "--size", "48")
    assert out.exit_code == 0, out.output
    assert (tmp_path / "star.png").is_file()
    # Without labels, the base's 1000 ImageNet names no longer apply: classes are numbered.
    numbered = models.load("efficientnet_lite0", weights=tmp_path / "final.pt")
    assert numbered.labels is None and numbered.num_classes == 6 and numbered.label(3) == "3"


def test_factory_spec_from_a_file_beside_it(factory_dir, run):
    spec = write(factory_dir / "small.toml", """
        factory = "nets.py:build"
        mean = [0.5, 0.5, 0.5]
        std = [0.25, 0.25, 0.25]
        input_size = 32
        labels = ["a", "b", "c", "d"]
    """)
    organism = models.load(spec)
    assert organism.num_classes == 4 and organism.input_size == 32
    assert [l.name for l in organism.layers()] == [str(i) for i in range(7)]  # a top-level Sequential, opened
    result = run("models", "check", spec)
    assert "one forward pass: output [4, 4]" in result.output and "chelsea" in result.output
    result = run("layers", spec)
    assert result.exit_code == 0 and "16" in result.output


def test_module_factory_and_json_labels(factory_dir):
    (factory_dir / "labels.json").write_text(json.dumps(["w", "x", "y", "z"]))
    spec = write(factory_dir / "mod.toml", """
        factory = "nets:build"
        mean = [0, 0, 0]
        std = [1, 1, 1]
        input_size = 32
        labels = "labels.json"
    """)
    assert models.load(spec).labels == ["w", "x", "y", "z"]


BAD_SPECS = [
    ('base = "efficientnet_lite0"\nwieghts = "x.pt"\n', "unknown key 'wieghts'. Did you mean: weights?"),
    ('weights = "x.pt"\n', "missing key 'base'"),
    ('factory = "nets.py:build"\ninput_size = 32\n', "missing keys mean, std"),
    ('factory = "nets.py:build"\nmean = [0.5, 0.5]\nstd = [1, 1, 1]\ninput_size = 32\n', "'mean' needs 3 numbers"),
    ('factory = "nets.py:build"\nmean = [0, 0, 0]\nstd = [1, 0, 1]\ninput_size = 32\n', "'std' values must be positive"),
    ('factory = "nowhere.py:build"\nmean = [0, 0, 0]\nstd = [1, 1, 1]\ninput_size = 32\n', "factory file not found"),
    ('factory = "nets.py:biuld"\nmean = [0, 0, 0]\nstd = [1, 1, 1]\ninput_size = 32\n', "has no 'biuld'. Did you mean: build?"),
    ('factory = "no_such_pkg.nets:build"\nmean = [0, 0, 0]\nstd = [1, 1, 1]\ninput_size = 32\n',
     "cannot import module 'no_such_pkg.nets' for the factory: ModuleNotFoundError"),
    ('factory = "nets.py:broken"\nmean = [0, 0, 0]\nstd = [1, 1, 1]\ninput_size = 32\n',
     "failed: RuntimeError: no such layer size"),
    ('factory = "nets.py:build"\nmean = [0, 0, 0]\nstd = [1, 1, 1]\ninput_size = 32\nlabels = ["a", "b"]\n',
     "2 labels but the classifier has 4 outputs"),
    ('factory = "nets.py:build"\nmean = [0, 0, 0]\nstd = [1, 1, 1]\ninput_size = 32\nlayers = ["3", "9"]\n',
     "in 'layers': unknown layer '9'"),
    ('base = "efficientnet_lite9"\n', "unknown model 'efficientnet_lite9'"),
    ('base = "efficientnet_lite0"\npretrained = false\n', "'pretrained' applies to torchvision:/timm: bases only"),
    ('base = "efficientnet_lite0"\nweights = "missing.pt"\n', "weights file not found"),
    ('base = [1]\n', "'base' must be a string"),
    ('base = "efficientnet_lite0\n', "is not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_spec_is_one_line(factory_dir, run, text, message):
    spec = write(factory_dir / "bad.toml", text)
    line = one_error_line(run("layers", spec))
    assert message in line and str(spec) in line


def test_weights_that_do_not_fit_name_the_tensors(factory_dir, tmp_path, run):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    torch.save(net.state_dict(), tmp_path / "other.pt")
    spec = write(factory_dir / "s.toml", 'factory = "nets.py:build"\nmean = [0, 0, 0]\nstd = [1, 1, 1]\n'
                                         'input_size = 32\nweights = "%s"\n' % (tmp_path / "other.pt"))
    line = one_error_line(run("layers", spec))
    assert "do not fit" in line and "0.weight: checkpoint [4, 3, 3, 3], network [8, 3, 3, 3]" in line
    torch.save({"0.weight": torch.zeros(8, 3, 3, 3), "extra.bias": torch.zeros(2)}, tmp_path / "partial.pt")
    line = one_error_line(run("layers", spec, "--weights", tmp_path / "partial.pt"))
    assert "missing from the checkpoint (0.bias, 2.weight, 2.bias, ...)" in line and "not in the network (extra.bias)" in line


class Pickled(nn.Module):  # a whole module pickled with torch.save: needs this class's code to load
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


def test_checkpoint_that_needs_code_is_refused_with_the_fix(tmp_path, run):
    torch.save(Pickled(), tmp_path / "whole.pt")
    line = one_error_line(run("layers", "efficientnet_lite0", "--weights", tmp_path / "whole.pt"))
    assert "needs Python code to be unpickled" in line and "weights_only=True" in line
    assert "torch.save(model.state_dict(), 'weights.pt')" in line
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "cannot read" in one_error_line(run("layers", "efficientnet_lite0", "--weights", tmp_path / "junk.pt"))
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pt")
    line = one_error_line(run("layers", "efficientnet_lite0", "--weights", tmp_path / "nostate.pt"))
    assert "not a state dict" in line and "epoch" in line


def test_models_check_says_what_is_wrong(lite0, tmp_path, run):
    # ImageNet weights read with the wrong normalization still run; the check notices.
    spec = write(tmp_path / "wrong.toml", 'base = "efficientnet_lite0"\nmean = [0.9, 0.9, 0.9]\n'
                                          'std = [0.02, 0.02, 0.02]\n')
    result = CliRunner().invoke(main, ["models", "check", str(spec)])
    assert result.exit_code == 1, result.output
    assert "problem:" in result.output
    good = run("models", "check", "efficientnet_lite0")
    assert good.exit_code == 0 and good.output.rstrip().endswith("ok")
    assert "tiger cat" in good.output or "tabby" in good.output


def test_register_and_models_list(run):
    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    models.register("test_toy", factory, input_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, description="a toy")
    try:
        assert "test_toy" in models.available()
        toy = models.load("test_toy")
        assert toy.input_size == 16 and toy.num_classes == 3
        listing = run("models").output.splitlines()
        assert listing[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
        assert "test_toy  (registered: a toy)" in listing
        assert run("models", "list").output == run("models").output
        with pytest.raises(FeatvizError, match="already registered"):
            models.register("test_toy", factory)
        with pytest.raises(FeatvizError, match="without ':'"):
            models.register("torchvision:x", factory)
    finally:
        models.unregister("test_toy")


def test_entry_point_registration(tmp_path, monkeypatch, run):
    """A package that ships an organism: an installed distribution with a featviz.models entry point."""
    pkg = tmp_path / "shapes_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from featviz.models import from_module

        def organism():
            torch.manual_seed(0)
            net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
            return from_module(net, name="shapes_toy", input_size=24, mean=(0, 0, 0), std=(1, 1, 1),
                               labels=["round", "pointy"])
    """))
    dist = tmp_path / "shapes_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shapes-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[featviz.models]\nshapes_toy = shapes_pkg:organism\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from featviz.models import registry

    registry.refresh_entry_points()
    try:
        assert "shapes_toy  (package shapes-pkg)" in run("models").output.splitlines()
        toy = models.load("shapes_toy")
        assert toy.labels == ["round", "pointy"]
        assert "round" in run("models", "check", "shapes_toy").output
    finally:
        monkeypatch.undo()
        sys.modules.pop("shapes_pkg", None)
        registry.refresh_entry_points()
    assert "shapes_toy" not in models.available()


def test_nothing_outside_models_branches_on_builtin_names():
    """Issue 14 item 7: the registry can grow without edits elsewhere."""
    import pathlib
    import re

    root = pathlib.Path(models.__file__).parent.parent
    offenders = []
    for path in root.rglob("*.py"):
        if "models" in path.relative_to(root).parts[:1]:
            continue
        text = path.read_text()
        if re.search(r"\bBUILTIN\b|\bavailable\(\)|import available\b|in available\b", text):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_weights_that_do_not_fit_leave_the_network_unchanged(tmp_path):
    from featviz.models import with_weights

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    organism = models.from_module(net(), input_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    other = net()
    other[0] = nn.Conv2d(3, 4, 5)  # a body that does not fit...
    other[4] = nn.Linear(4, 7)  # ...and a head the loader would resize
    torch.save(other.state_dict(), tmp_path / "other.pt")
    before = {k: v.clone() for k, v in organism.network.state_dict().items()}
    with pytest.raises(FeatvizError, match="0.weight: checkpoint \\[4, 3, 5, 5\\], network \\[4, 3, 3, 3\\]"):
        with_weights(organism, tmp_path / "other.pt")
    after = organism.network.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert organism.network[4].out_features == 3
