"""Report ``transfer`` (issue 7, part 1): linear probes along the depth, trained vs random init.

Its figures must come from real runs: the probe on the trained network beats the one on the
random copy and chance at a late layer, layers differ, the seed changes the data and the numbers,
and the same seed gives the same numbers.
"""
import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featviz.cli import main

from conftest import one_error_line
from featviz.errors import FeatvizError
from featviz.data import demo_shapes
from featviz.models.random_init import random_copy
from featviz.reports.probe import LogisticProbe, probe_cv, stratified_folds
from featviz.reports.transfer import ProbeSettings, load_folder, transfer_report

FAST = dict(size=96, per_class=12, probe=ProbeSettings(folds=3, inner_folds=2, penalties=(1e-2, 1.0)),
            pictures=False)


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _folder(root, classes=("circle", "star", "ring"), per_class=4, size=64, seed=0):
    """A class-folder dataset made of demo images saved as PNG."""
    x, y, names = demo_shapes(per_class, size, seed, classes=classes)
    for i in range(len(y)):
        d = root / names[int(y[i])]
        d.mkdir(parents=True, exist_ok=True)
        arr = (x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


# -- the probe ----------------------------------------------------------------------------------------

def test_probe_separable_vs_not():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    separable = centres[y] + 0.3 * torch.randn(120, 4, generator=g)
    res = probe_cv(separable, y, 3, folds=4, seed=0)
    assert res["accuracy"] == 1.0 and len(res["folds"]) == 4 and len(res["penalties"]) == 4
    # the same features with labels that carry no information: about chance (1/3)
    shuffled = y[torch.randperm(120, generator=g)]
    noise = probe_cv(separable, shuffled, 3, folds=4, seed=0)
    assert noise["accuracy"] < 0.55
    # a fit that separates the training set, and a strong penalty that shrinks the weights
    weak = LogisticProbe(1e-4).fit(separable, y)
    strong = LogisticProbe(10.0).fit(separable, y)
    assert weak.accuracy(separable, y) == 1.0
    assert strong.weight.norm() < 0.5 * weak.weight.norm()
    # features are standardised with the training statistics: scaling them changes nothing
    scaled = LogisticProbe(1e-2).fit(separable * 1000 + 5, y)
    assert torch.equal(scaled.predict(separable * 1000 + 5), LogisticProbe(1e-2).fit(separable, y).predict(separable))


def test_stratified_folds_are_balanced_and_seeded():
    y = torch.tensor([0] * 10 + [1] * 15 + [2] * 5)
    f = stratified_folds(y, 5, seed=3)
    for k in range(5):
        assert [int(((f == k) & (y == c)).sum()) for c in range(3)] == [2, 3, 1]
    assert torch.equal(f, stratified_folds(y, 5, seed=3))
    assert not torch.equal(f, stratified_folds(y, 5, seed=4))


def test_demo_shapes_seeded():
    a, ya, names = demo_shapes(2, 64, seed=0)
    b, yb, _ = demo_shapes(2, 64, seed=0)
    c, _, _ = demo_shapes(2, 64, seed=1)
    assert a.shape == (12, 3, 64, 64) and names == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert torch.equal(a, b) and torch.equal(ya, yb) and ya.tolist() == list(range(6)) * 2
    assert (a - c).abs().mean() > 0.1
    assert 0 <= float(a.min()) and float(a.max()) <= 1 and float(a.std()) > 0.1


def test_a_data_set_that_cannot_fit_in_memory_is_refused_before_it_is_read():
    from featviz.data import check_memory
    from featviz.optvis.memory import available_bytes

    free = available_bytes(torch.device("cpu"))
    assert free is not None  # Linux: MemAvailable (and a container's limit)
    size = 224
    image = 3 * size * size * 4
    check_memory(int(0.1 * free) // image, size, "the folder x")  # well under half of what is free
    with pytest.raises(FeatvizError, match=r"^the folder x: \d+ images at 224 px need .* GiB free"):
        check_memory(2 * free // image, size, "the folder x")


# -- the random copy ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_random_copy_is_calibrated_and_leaves_the_model_alone(lite0):
    x, _, _ = demo_shapes(3, 96, seed=0)
    before = lite0.network.stem.conv.weight.clone()
    r0 = random_copy(lite0, x, seed=0)
    assert torch.equal(lite0.network.stem.conv.weight, before)
    assert not torch.allclose(r0.network.stem.conv.weight, before)
    assert torch.equal(random_copy(lite0, x, seed=0).network.head.conv.weight, r0.network.head.conv.weight)
    assert not torch.equal(random_copy(lite0, x, seed=1).network.head.conv.weight, r0.network.head.conv.weight)
    assert r0.name.startswith("efficientnet_lite0 (random init")
    assert [l.name for l in r0.layers()] == [l.name for l in lite0.layers()]
    # LSUV: every convolution's output has unit variance on the calibration images, deep ones included
    names = ["stem.conv", "blocks.5.project.conv", "blocks.14.depthwise.conv", "head.conv"]
    with torch.no_grad():
        acts = r0.activations(x, names)
    for n in names:
        assert float(acts[n].std()) == pytest.approx(1.0, abs=0.05), n


# -- the report ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_trained_beats_random_and_runs_are_real(tmp_path, lite0):
    layers = ["stem", "blocks.11"]
    res = transfer_report(lite0, None, tmp_path / "a", layers=layers, seed=0, **FAST)
    rows = {r["layer"]: r for r in res["rows"]}
    assert list(rows) == ["pixels", "stem", "blocks.11"]  # depth order, pixels first
    assert res["chance"] == pytest.approx(1 / 6)
    late = rows["blocks.11"]
    assert late["trained"]["accuracy"] > late["random"]["accuracy"] + 0.2
    assert late["trained"]["accuracy"] > res["chance"] + 0.25
    assert late["trained"]["accuracy"] > rows["stem"]["trained"]["accuracy"] + 0.2
    assert len(late["trained"]["folds"]) == 3 and np.mean(late["trained"]["folds"]) == pytest.approx(
        late["trained"]["accuracy"])
    assert res["summary"]["trained"]["peak_layer"] == "blocks.11"
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    assert {"accuracy_by_depth.png", "data_samples.png", "report.md"} <= {p.name for p in (tmp_path / "a").iterdir()}
    md = (tmp_path / "a" / "report.md").read_text()
    assert "blocks.11" in md and "peaks at **blocks.11**" in md and "96 px" in md

    # the same seed reproduces every number; another seed makes other data and other numbers
    again = transfer_report(lite0, None, tmp_path / "b", layers=layers, seed=0, **FAST)
    assert json.dumps(again["rows"]) == json.dumps(res["rows"])
    other = transfer_report(lite0, None, tmp_path / "c", layers=["blocks.11"], pixels=False, seed=1, **FAST)
    assert other["rows"][0]["trained"]["folds"] != late["trained"]["folds"]
    assert other["rows"][0]["trained"]["accuracy"] > other["rows"][0]["random"]["accuracy"] + 0.2


@pytest.mark.slow
def test_folder_errors_and_skips(tmp_path, lite0):
    with pytest.raises(FeatvizError, match="data folder not found"):
        load_folder(lite0, tmp_path / "nowhere", 64, 3)
    one = _folder(tmp_path / "one", classes=("circle",))
    with pytest.raises(FeatvizError, match="at least 2 class sub-folders"):
        load_folder(lite0, one, 64, 3)
    few = _folder(tmp_path / "few", per_class=2, classes=("circle", "star"))
    with pytest.raises(FeatvizError, match=r"3-fold cross-validation needs at least 3 images per class.*circle \(2\)"):
        load_folder(lite0, few, 64, 3)
    ok = _folder(tmp_path / "ok", per_class=3, classes=("circle", "star"))
    (ok / "star" / "broken.png").write_bytes(b"not a png")
    (ok / "notes.txt").write_text("ignored")
    ds = load_folder(lite0, ok, 64, 3)
    assert ds.classes == ["circle", "star"] and ds.counts() == [3, 3] and ds.images.shape == (6, 3, 64, 64)
    assert len(ds.skipped) == 1 and ds.skipped[0].startswith("star/broken.png")
    assert load_folder(lite0, ok, 64, 2, per_class=2).counts() == [2, 2]
    with pytest.raises(FeatvizError, match="unknown layer 'blocks.99'"):
        transfer_report(lite0, ok, tmp_path / "r", layers=["blocks.99"], probe=ProbeSettings(folds=3), pictures=False)


@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [
    (["report", "transfer", "efficientnet_lite0", "nowhere"], "data folder not found"),
    (["report", "transfer", "efficientnet_lite0", "--folds", "1"], "--folds"),
    (["report", "transfer", "efficientnet_lite0", "--per-class", "0"], "--per-class"),
    (["report", "transfer", "efficientnet_lite0", "--layers", "blocks.88"], "unknown layer"),
    (["report", "transfer", "efficientnet_lite0", "--per-class", "2"], "at least 5 images per class"),
    (["report", "transfer", "efficientnet_lite0", "--site", "nowhere"], "no microscope at nowhere"),
])
def test_transfer_bad_input(tmp_path, args, needle):
    res = _invoke(*args, "--out", tmp_path / "r")
    assert needle in one_error_line(res), res.output


@pytest.mark.slow
def test_cli_on_a_folder_writes_the_report(tmp_path, lite0):
    from conftest import empty_site

    data = _folder(tmp_path / "data", per_class=4)
    (data / "ring" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    out = tmp_path / "rep"
    site = empty_site(tmp_path / "site", lite0)
    res = _invoke("report", "transfer", "efficientnet_lite0", data, "--layers", "blocks.2,stem", "--size", 64,
                  "--folds", 2, "--seed", 3, "-o", out, "--site", site)
    assert res.exit_code == 0, res.output
    for name in ("report.md", "results.json", "accuracy_by_depth.png", "data_samples.png", "depth_pictures.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    s = results["settings"]
    assert (s["size"], s["folds"], s["seed"], s["layers"]) == (64, 2, 3, ["pixels", "stem", "blocks.2"])
    assert results["data"]["classes"] == ["circle", "ring", "star"] and results["data"]["counts"] == [4, 4, 4]
    assert results["data"]["skipped"][0].startswith("ring/broken.jpg")
    pics = results["pictures"]
    assert [p["layer"] for p in pics["trained"]] == ["stem", "stem", "blocks.2", "blocks.2"]
    assert all(np.isfinite(p["final_objective"]) for p in pics["trained"] + pics["random"])
    md = (out / "report.md").read_text()
    assert "broken.jpg" in md and "depth_pictures.png" in md and "64 px" in md and str(data) in md
    for name in ("accuracy_by_depth.png", "depth_pictures.png"):
        with Image.open(out / name) as img:
            assert img.width > 400 and np.asarray(img.convert("L")).std() > 5
    assert "blocks.2" in res.output and "chance 0.333" in res.output

    # embedded in the microscope: a page under the model, linked from the model page, whose
    # images are there, and the probe accuracies beside the layers in the model's layer table
    page = site / "efficientnet_lite0" / "_reports" / "transfer" / "index.html"
    assert page.is_file() and "added to the microscope" in res.output
    html = page.read_text()
    assert '<img src="accuracy_by_depth.png"' in html and "<table" in html and "broken.jpg" in html
    for src in ("accuracy_by_depth.png", "depth_pictures.png", "data_samples.png", "results.json"):
        assert (page.parent / src).is_file()
    model_page = (site / "efficientnet_lite0" / "index.html").read_text()
    assert 'href="_reports/transfer/index.html"' in model_page and "probe, trained" in model_page
    stem = next(r for r in results["rows"] if r["layer"] == "stem")
    assert f"{stem['trained']['accuracy']:.3f}" in model_page.split(">stem<")[1].split("</tr>")[0]


def test_missing_matplotlib_is_one_clear_error(monkeypatch):
    from featviz.figures import new_figure

    # Earlier tests may have imported matplotlib's submodules: hide those too.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(FeatvizError, match=r"featviz\[reports\]"):
        new_figure((4, 3))
