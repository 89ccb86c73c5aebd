"""The microscope build (featviz.microscope): site, pages, manifest, incremental rebuilds, resume, classes.

A tiny CNN on a few synthetic photos keeps every test fast; the real-model tests are marked slow.
"""
from __future__ import annotations

import hashlib
import math
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featviz.errors import FeatvizError
from featviz.microscope import Manifest, build, preset, resolve_settings
from featviz.microscope import classes as cls
from featviz.models import from_module

TESTS_DIR = Path(__file__).resolve().parent
# Tiny settings: 3 layers x 4 units, batches of 2, 3 steps at 32 px.
TINY = dict(units=4, steps=3, size=32, k=3, batch_size=2, diversity_batch=2, n_classes=3)


def tiny_model():
    """conv stages -> global average pool -> linear: the last stage reads out linearly."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        c1=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        c2=nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU()),
        c3=nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU()),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(16, 10)))
    return from_module(net, name="tiny", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                       labels=[f"class{i}" for i in range(10)], main_layers=["c1", "c2", "c3", "fc"])


def make_photos(folder: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = rng.random((1, 1, 3)) * 255
        arr = np.clip(base + rng.normal(0, 50, (40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"p{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, photos):
    """One tiny site shared by the read-only tests."""
    site = tmp_path_factory.mktemp("site")
    report = build(tiny_model(), site, photos, **TINY)
    return site, report


def site_files(site: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file a build leaves (SQLite files and locks compared otherwise)."""
    out = {}
    for p in sorted(site.rglob("*")):
        if p.is_file() and not p.name.endswith((".sqlite", ".lock", "-journal")):
            out[p.relative_to(site).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# -- the site ---------------------------------------------------------------------------------------------
def test_build_makes_every_page_and_panel(built):
    site, report = built
    assert report.layers == ["c1", "c2", "c3"]
    assert report.made["channel"] == report.made["neuron"] == report.made["negative"] == 12
    assert report.made["diversity"] == 12 and report.made["dream"] == 3 and report.made["class"] == 3
    assert report.made["examples"] == 12 and report.made["classes"] == 12
    for page in ["index.html", "static/microscope.css", "static/microscope.js", "tiny/index.html", "tiny/model.js",
                 "tiny/c2/index.html", "tiny/c2/dream.png", "tiny/_classes/0000.png"]:
        assert (site / page).is_file(), page
    unit = site / "tiny" / "c2" / "3"
    names = sorted(p.name for p in unit.iterdir())
    assert names == ["caricature.png", "channel.png", "diversity-0.png", "diversity-1.png", "diversity-2.png",
                     "index.html", "negative.png", "neuron.png", "thumb.jpg"]
    with Image.open(unit / "channel.png") as img:
        assert img.size == (32, 32)
        meta = json.loads(img.text["featviz"])["microscope"]
    assert meta["panel"] == "channel" and meta["unit"] == 3 and meta["settings"]["steps"] == 3
    # the diversity images of one unit differ from each other
    arrays = [np.asarray(Image.open(unit / f"diversity-{j}.png")) for j in range(3)]
    assert all(not np.array_equal(arrays[0], a) for a in arrays[1:])


def test_unit_page_has_every_panel_with_a_caption(built):
    site, _ = built
    html = (site / "tiny" / "c2" / "1" / "index.html").read_text()
    for panel in ["channel", "neuron", "negative", "diversity", "examples-top_max", "examples-top",
                  "examples-bottom", "classes-panel"]:
        m = re.search(rf'<figure class="panel[^"]*" id="{panel}".*?</figure>', html, re.S)
        assert m, panel
        assert "<figcaption>" in m.group(0) and len(re.sub("<[^>]+>", "", m.group(0).split("<figcaption>")[1])) > 40
    assert "by attribution" in html  # c2 does not read out linearly
    assert 'rel="prev" href="../0/index.html"' in html and 'rel="next" href="../2/index.html"' in html
    last = (site / "tiny" / "c2" / "3" / "index.html").read_text()
    assert 'rel="next" href="../../c3/0/index.html"' in last  # next walks on to the next layer
    c3 = (site / "tiny" / "c3" / "0" / "index.html").read_text()
    assert "through the weights" in c3 and "(exact)" in c3


def test_every_link_and_image_of_the_site_resolves(built):
    """Relative links work from file:// (no server): every href/src points to a file of the site,
    except the tiles of unbuilt units, which only ``featviz serve`` answers."""
    site, _ = built
    pages = list(site.rglob("index.html"))
    assert len(pages) == 1 + 1 + 3 + 12 + 10  # root, model, layers, units, a page per class
    for page in pages:
        html = page.read_text()
        for tag in re.finditer(r'<(a|img|link|script)\b[^>]*>', html):
            text = tag.group(0)
            m = re.search(r'(?:href|src)="([^"]+)"', text)
            if not m or "data-unbuilt" in text or m.group(1).startswith(("data:", "#")):
                continue
            target = (page.parent / m.group(1).split("#")[0]).resolve()
            assert target.is_file(), f"{page.relative_to(site)} -> {m.group(1)}"
        assert 'loading="lazy"' in html or page.parent.name != "c1"
    grid = (site / "tiny" / "c1" / "index.html").read_text()
    assert grid.count('class="tile unbuilt"') == 8 - 4  # c1 has 8 channels, 4 built
    assert re.search(r'<img src="0/thumb.jpg" width="72" height="72" alt="unit 0" loading="lazy"', grid)


def test_model_page_and_jump_data(built):
    site, _ = built
    html = (site / "tiny" / "index.html").read_text()
    rows = re.findall(r"<tr[^>]*><td>(.*?)</td><td class=\"num\">(\d+)</td><td class=\"num\">(.*?)</td>", html)
    assert [(re.sub("<[^>]+>", "", a), int(b), c) for a, b, c in rows] == [
        ("c1", 8, "32&times;32"), ("c2", 12, "16&times;16"), ("c3", 16, "8&times;8"), ("fc", 10, "&ndash;")]
    assert html.count('class="panel class"') == 3
    js = (site / "tiny" / "model.js").read_text()
    data = json.loads(js[js.index("=") + 1:].strip().rstrip(";"))
    assert data["built"] == {"c1": [0, 1, 2, 3], "c2": [0, 1, 2, 3], "c3": [0, 1, 2, 3]}
    assert data["classes"] == [0, 1, 2] and data["labels"][3] == "class3"


# -- incremental --------------------------------------------------------------------------------------------
def test_rebuild_skips_and_changed_settings_redo_only_what_they_affect(tmp_path, photos):
    model = tiny_model()
    site = tmp_path / "site"
    build(model, site, photos, **TINY)
    before = site_files(site)
    again = build(model, site, photos, **TINY)
    assert sum(again.made.values()) == 0 and again.batches == 0
    assert site_files(site) == before

    more_steps = build(model, site, photos, **(TINY | {"steps": 4}))
    assert {k: v for k, v in more_steps.made.items() if v} == {
        "channel": 12, "neuron": 12, "negative": 12, "diversity": 12, "dream": 3, "class": 3, "caricature": 12}
    assert more_steps.skipped["examples"] == 12 and more_steps.skipped["classes"] == 12

    fewer_examples = build(model, site, photos, **(TINY | {"steps": 4, "k": 2}))
    made = {k: v for k, v in fewer_examples.made.items() if v}
    # c3's classes come from the weights, not the examples; circuits start at c2, and the caricatures
    # and the class pages' photos start from the examples
    assert made == {"examples": 12, "classes": 8, "circuits": 8, "caricature": 12, "class_photos": 1}

    # a new unit renders alone; a deleted image is remade
    (site / "tiny" / "c1" / "0" / "neuron.png").unlink()
    grown = build(model, site, photos, **(TINY | {"steps": 4, "k": 2, "units": (0, 1, 2, 3, 5)}))
    made = {k: v for k, v in grown.made.items() if v}
    assert made["neuron"] == 3 + 1 and made["channel"] == 3 and made["diversity"] == 3
    assert (site / "tiny" / "c2" / "5" / "index.html").is_file()


def test_a_rebuild_restores_deleted_files_exactly(tmp_path, photos, built):
    """Deleted crops and a deleted image of a batch come back byte for byte as an uninterrupted
    build made them (the image is rendered in its whole batch again, with the batch's seed)."""
    import shutil

    original, _ = built
    site = tmp_path / "site"
    shutil.copytree(original, site)
    shutil.rmtree(site / "tiny" / "_examples" / "media" / "crops")
    (site / "tiny" / "c2" / "1" / "diversity-2.png").unlink()
    report = build(tiny_model(), site, photos, **TINY)
    assert report.made["diversity"] == 1 and report.made["channel"] == 0
    assert site_files(site) == site_files(original)
    with Manifest(site) as a, Manifest(original) as b:
        assert a.rows() == b.rows()


def test_quick_preset_without_data_and_full_with_it():
    assert resolve_settings(None).preset == "quick"
    q = resolve_settings(None)
    assert (q.n_layers, q.units, q.steps, q.size, q.diversity_images, q.recipe) == (3, 8, 64, 96, 3, "auto")
    full = resolve_settings("photos/")
    assert (full.preset, full.units, full.steps, full.size, full.n_layers, full.recipe) == \
        ("full", None, 256, 128, 6, "auto")
    assert resolve_settings("photos/", quick=True).preset == "quick"
    assert resolve_settings(None, steps=10).steps == 10
    with pytest.raises(FeatvizError):
        preset("quick", steps=0)


def test_bad_requests_are_clear_errors(tmp_path, photos):
    model = tiny_model()
    with pytest.raises(FeatvizError, match="unknown layer"):
        build(model, tmp_path / "a", photos, **(TINY | {"layers": ["c9"]}))
    with pytest.raises(FeatvizError, match="no spatial"):
        build(model, tmp_path / "b", photos, **(TINY | {"layers": ["fc"]}))
    with pytest.raises(FeatvizError, match="out of range"):
        build(model, tmp_path / "c", photos, **(TINY | {"units": (0, 99)}))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FeatvizError, match="not a microscope site"):
        build(model, other, photos, **TINY)


# -- classes pushed up / down --------------------------------------------------------------------------------
def test_classes_through_the_weights_are_exact_and_match_attribution():
    model = tiny_model()
    readout = cls.linear_readout(model, "c3")
    assert readout is not None and readout[1] == "fc"
    assert torch.equal(readout[0], model.network.fc.weight)
    assert cls.linear_readout(model, "c2") is None
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    via_attr = cls.logit_effects_attribution(model, "c3", [2, 5], [x, x])
    assert torch.allclose(via_attr, model.network.fc.weight[:, [2, 5]].T, atol=1e-5)


def test_attribution_equals_finite_differences():
    model = tiny_model()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    effects = cls.logit_effects_attribution(model, "c2", [4], [x])[0]
    eps = 1e-3
    module = model.module("c2")

    def shifted(delta):
        h = module.register_forward_hook(lambda m, i, o: o + torch.nn.functional.one_hot(
            torch.tensor(4), o.shape[1]).float()[None, :, None, None] * delta)
        try:
            with torch.no_grad():
                return model(x)
        finally:
            h.remove()

    fd = ((shifted(eps) - shifted(-eps)) / (2 * eps)).mean(0)
    assert torch.allclose(effects, fd, atol=2e-3, rtol=1e-2)
    up, down = cls.top_classes(model, effects, 3)
    assert up[0][0] == int(effects.argmax()) and down[0][0] == int(effects.argmin())


# -- resume --------------------------------------------------------------------------------------------------------
BUILD_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_microscope import TINY, tiny_model
    from featviz.microscope import build
    from featviz.microscope.build import _Builder

    kill_at = int(sys.argv[3])
    if kill_at:
        original = _Builder.commit
        calls = [0]
        def commit(self, panels, kind, pages=None):
            calls[0] += 1
            if calls[0] == kill_at:   # files of this batch are written, its manifest rows are not
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, panels, kind, pages)
        _Builder.commit = commit
    build(tiny_model(), sys.argv[1], sys.argv[2], **TINY)
""")


def run_build(script: Path, site: Path, photos: Path, kill_at: int = 0) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, str(script), str(site), str(photos), str(kill_at)], env=env,
                          capture_output=True, text=True, timeout=240)
    if proc.returncode not in (0, -signal.SIGKILL):
        print(proc.stderr[-3000:])
    return proc.returncode


def test_killed_build_resumes_to_the_same_site(tmp_path, photos):
    from featviz.examples import open_store

    script = tmp_path / "build_site.py"
    script.write_text(BUILD_SCRIPT.format(tests=str(TESTS_DIR)))
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run_build(script, whole, photos) == 0
    # killed (SIGKILL) in the middle of the renders, after a batch's images were written
    assert run_build(script, resumed, photos, kill_at=14) == -signal.SIGKILL
    with Manifest(resumed) as man:
        done = len(man.rows())
    with Manifest(whole) as man:
        total = len(man.rows())
    assert 0 < done < total
    assert run_build(script, resumed, photos) == 0
    with Manifest(whole) as a, Manifest(resumed) as b:
        assert a.rows() == b.rows() and a.digest() == b.digest()
    assert site_files(whole) == site_files(resumed)
    with open_store(whole / "tiny" / "_examples") as a, open_store(resumed / "tiny" / "_examples") as b:
        assert a.digest() == b.digest()


# -- command line and real model -------------------------------------------------------------------------------
def test_cli_bad_layer_is_one_line(tmp_path):
    from click.testing import CliRunner

    from featviz.cli import main

    result = CliRunner().invoke(main, ["microscope", "build", "efficientnet_lite0", "--layers", "blocks.99",
                                       "--out", str(tmp_path / "s"), "-q"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "unknown layer 'blocks.99'" in result.output


@pytest.mark.slow
def test_cli_build_on_efficientnet_lite0(tmp_path):
    from click.testing import CliRunner

    from featviz.cli import main

    out = tmp_path / "site"
    args = ["microscope", "build", "efficientnet_lite0", "--layers", "blocks.2,head", "--units", "2", "--steps", "2",
            "--size", "48", "--examples", "2", "--classes", "309", "--out", str(out), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "made" in result.output
    head = (out / "efficientnet_lite0" / "head" / "1" / "index.html").read_text()
    assert "through the weights" in head and "classifier" in head
    assert "by attribution" in (out / "efficientnet_lite0" / "blocks.2" / "0" / "index.html").read_text()
    assert (out / "efficientnet_lite0" / "_classes" / "0309.png").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "made nothing" in again.output


@pytest.mark.slow
def test_lite0_head_reads_out_through_the_classifier(lite0):
    w, name = cls.linear_readout(lite0, "head")
    assert name == "classifier" and torch.equal(w, lite0.network.classifier.weight)
    assert cls.linear_readout(lite0, "blocks.15") is None


# -- circuits, caricatures, class pages, comparison ---------------------------------------------------------------
def linear_mix_model():
    """c1 -> a 1x1 convolution with nothing after it (a linear route) -> ReLU stage -> classifier."""
    torch.manual_seed(1)
    net = nn.Sequential(OrderedDict(
        c1=nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()), mix=nn.Conv2d(6, 5, 1),
        c3=nn.Sequential(nn.ReLU(), nn.Conv2d(5, 7, 3, stride=2, padding=1), nn.ReLU()),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(7, 4)))
    return from_module(net, name="mix", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                       main_layers=["c1", "mix", "c3", "fc"])


def test_circuits_exact_route_and_attribution_agree_on_a_linear_layer():
    from featviz.microscope import circuits

    model = linear_mix_model()
    weight, name = circuits.linear_route(model, "c1", "mix")
    assert name == "mix" and torch.equal(weight, model.network.mix.weight.sum((2, 3)))
    assert circuits.linear_route(model, "mix", "c3") is None  # ReLU in between
    # On a linear map, gradient x activation of source c for target u is W[u, c] x mean(source c).
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    effects = circuits.attribution_circuits(model, "c1", "mix", [0, 4], [x, x])
    with torch.no_grad():
        mean_source = model.activations(x, ["c1"])["c1"].mean((2, 3))  # (images, channels)
    expected = (weight[[0, 4]][:, None, :] * mean_source[None]).mean(1)
    assert torch.allclose(effects, expected, atol=1e-5)
    excite, inhibit = circuits.strongest(effects[0], 3)
    assert excite[0][0] == int(effects[0].argmax()) and all(v > 0 for _, v in excite)
    assert all(v < 0 for _, v in inhibit)


def test_caricature_amplifies_what_the_layer_sees():
    from featviz.microscope.caricature import render_caricatures

    model = tiny_model()
    rng = np.random.default_rng(0)
    photos = torch.from_numpy(rng.integers(0, 255, (2, 3, 40, 40), dtype=np.uint8))
    out = render_caricatures(model, "c2", photos, preset("quick", size=32, steps=12), seed=0)
    assert len(out) == 2
    for image, figures in out:
        assert image.shape == (3, 32, 32)
        # the layer's activation grew along the photo's own and still points the same way
        assert figures["gain"] > 1.05 and figures["cosine"] > 0.8


def test_unit_pages_show_circuits_and_caricatures_and_every_class_has_a_page(built):
    site, report = built
    assert report.made["circuits"] == 8 and report.made["caricature"] == 12  # circuits start at the 2nd layer
    html = (site / "tiny" / "c2" / "1" / "index.html").read_text()
    panel = re.search(r'<figure class="panel wide" id="circuits-panel">.*?</figure>', html, re.S).group(0)
    assert "units of c1 that excite it most" in panel and 'data-method="attribution"' in panel
    links = re.findall(r'<a class="utile[^"]*" href="([^"]+)"', panel)
    assert links and all(re.fullmatch(r"\.\./\.\./\.\./tiny/c1/\d+/index\.html", h) for h in links)
    built_c1 = {f"../../../tiny/c1/{u}/index.html" for u in range(4)}
    assert any(h in built_c1 for h in links)
    assert "No circuits" in (site / "tiny" / "c1" / "0" / "index.html").read_text()  # the first layer
    with Image.open(site / "tiny" / "c2" / "1" / "caricature.png") as img:
        assert img.size == (32, 32)
        assert json.loads(img.text["featviz"])["microscope"]["panel"] == "caricature"
    assert re.search(r'id="caricature".*?_examples/media/images/\d+\.jpg.*?caricature\.png', html, re.S)
    assert (site / "tiny" / "c2" / "index.html").read_text().count('<tr><td><a class="utile') == 12  # connections
    for c in range(10):
        assert (site / "tiny" / "classes" / str(c) / "index.html").is_file()
    page = (site / "tiny" / "classes" / "2" / "index.html").read_text()
    assert "class2" in page and "_classes/0002.png" in page and 'id="class-top"' in page
    assert "units of c3 that push it up most" in page and "(fc)" in page  # exact through the classifier
    model_page = (site / "tiny" / "index.html").read_text()
    assert model_page.count('<li data-label="class') == 10 and 'id="class-filter"' in model_page


def test_compare_two_models_in_one_site(tmp_path, photos):
    from featviz.microscope.compare import compare

    site = tmp_path / "site"
    settings = TINY | {"layers": ["c2", "c3"], "units": 2, "steps": 2, "n_classes": 2}
    a = tiny_model()
    build(a, site, photos, **settings)
    twin = from_module(a.network, name="twin", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                       labels=[f"class{i}" for i in range(10)], main_layers=["c1", "c2", "c3", "fc"])
    build(twin, site, photos, **settings)
    with pytest.raises(FeatvizError, match="has no other"):
        compare(site, a, from_module(a.network, name="other", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3))
    rel = compare(site, a, twin)
    assert rel == "_compare/tiny--twin/index.html"
    with Manifest(site) as man:
        info = next(p.info for p in man.panels("tiny") if p.panel == "compare:twin")
    assert [(p["a"], p["b"]) for p in info["pairs"]] == [("c2", "c2"), ("c3", "c3")]
    for pair in info["pairs"]:  # the same network: every varying unit's best match is itself, r = 1
        varying = [u for u, (v, r) in enumerate(pair["best"]) if r > 0]
        assert varying and all(pair["best"][u] == [u, 1.0] for u in varying)
    html = (site / rel).read_text()
    assert html.count('id="compare-class-') == 2 and "tiny c2" in html and "twin c3" in html
    assert 'href="../_compare/tiny--twin/index.html"' in (site / "tiny" / "index.html").read_text()


def test_caricature_of_a_given_photo_is_a_layer_panel(tmp_path, photos):
    site = tmp_path / "site"
    photo = sorted(photos.iterdir())[0]
    settings = TINY | {"layers": ["c2"], "units": 2, "steps": 2, "n_classes": 0, "classes": ()}
    with pytest.raises(FeatvizError, match="caricature photo not found"):
        build(tiny_model(), site, photos, **(settings | {"caricature_photo": str(tmp_path / "nope.jpg")}))
    report = build(tiny_model(), site, photos, **(settings | {"caricature_photo": str(photo)}))
    assert report.made["caricature"] == 1  # one per layer, not one per unit
    assert (site / "tiny" / "c2" / "caricature.png").is_file() and not (site / "tiny" / "c2" / "0" / "caricature.png").exists()
    with Image.open(site / "tiny" / "c2" / "caricature-photo.jpg") as img:
        assert img.size == (32, 32)
    unit = (site / "tiny" / "c2" / "1" / "index.html").read_text()
    assert "the photo given to the build" in unit and "../../../tiny/c2/caricature.png" in unit
    assert 'id="caricature"' in (site / "tiny" / "c2" / "index.html").read_text()


def test_units_sharing_a_top_photo_share_its_caricature(built):
    """A caricature is the layer's reading of a photo: units whose top photo is the same get the same image
    (one render), each in its own folder."""
    site, _ = built
    shared = 0
    for layer in ("c1", "c2", "c3"):
        by_photo: dict[str, list[np.ndarray]] = {}
        for u in range(4):
            with Image.open(site / "tiny" / layer / str(u) / "caricature.png") as img:
                photo = json.loads(img.text["featviz"])["microscope"]["photo"]
                by_photo.setdefault(photo, []).append(np.array(img))
        for images in by_photo.values():
            shared += len(images) - 1
            assert all(np.array_equal(images[0], other) for other in images[1:])
    assert shared > 0  # the tiny photos make units share (the test would prove nothing otherwise)


def test_negative_of_a_rectified_unit_is_rendered_before_the_rectifier(built):
    """After a ReLU every image that switches a unit off scores 0, so the negative panel minimizes the
    pre-activation; the page says so."""
    site, _ = built
    with Image.open(site / "tiny" / "c3" / "1" / "negative.png") as img:
        meta = json.loads(img.text["featviz"])["microscope"]
    assert meta["settings"]["rendered_on"] == "c3.0"
    html = (site / "tiny" / "c3" / "1" / "index.html").read_text()
    assert "Minimized before the rectifier, on c3.0" in html
    assert "simply off here" not in html


def test_pre_rectifier_names_the_layer_before_a_closing_relu(lite0):
    model = tiny_model()
    assert [model.pre_rectifier(layer) for layer in ("c1", "c3", "fc")] == ["c1.0", "c3.0", "fc"]
    assert lite0.pre_rectifier("head") == "head.bn" and lite0.pre_rectifier("blocks.13") == "blocks.13"


def test_diversity_images_stop_at_their_own_plateau_and_only_their_hash_follows_it():
    from dataclasses import replace

    from featviz.microscope.settings import digest, diversity_params, panel_settings, render_params

    s = preset("full")
    assert diversity_params(s)["plateau"] == s.diversity_plateau == 0.03 and render_params(s)["plateau"] == 0.01
    looser = replace(s, diversity_plateau=0.05)
    model_id = {"name": "m"}
    hashes = lambda kind, settings: digest(panel_settings(kind, settings, model_id))  # noqa: E731
    assert hashes("diversity", s) != hashes("diversity", looser)
    assert hashes("channel", s) == hashes("channel", looser)
    assert "plateau" not in diversity_params(preset("quick"))  # the quick preset runs every step
    with pytest.raises(FeatvizError, match="diversity plateau must be a fraction"):
        preset("full", diversity_plateau=1.5)
    with pytest.raises(FeatvizError, match="negative steps must be between"):
        preset("full", negative_steps=0)


def test_a_batch_stopped_at_its_plateau_continues_the_images_still_rising():
    from featviz.microscope.settings import kind_params
    from featviz.microscope.visuals import continuation

    s = preset("full")
    assert s.plateau == 0.01 and s.plateau_share == 0.9 and s.steps == 256
    params = kind_params("channel", s)
    assert params["steps"] == s.channel_steps == 192  # the channel image runs its own steps
    recipe = {"lr": 0.15, "lr_schedule": "cosine"}
    more = continuation({"stopped_at_plateau": 128, "still_rising": [3, 7], "recipe": recipe}, params)
    # the steps left, from where the cosine schedule had got to, at the same plateau until all of the carried
    # images level off
    assert more["steps"] == 64 and more["size"] == s.size
    assert more["plateau"] == 0.01 and more["plateau_share"] == 1.0
    assert math.isclose(more["lr"], 0.015 + 0.135 * (1 + math.cos(math.pi * 128 / 191)) / 2)
    assert continuation({"stopped_at_plateau": 128, "still_rising": [], "recipe": recipe}, params) is None
    assert continuation({"recipe": recipe}, params) is None  # ran to the end
    constant = continuation({"stopped_at_plateau": 64, "still_rising": [0], "recipe": {"lr": 0.05,
                                                                                    "lr_schedule": "constant"}}, params)
    assert constant["lr"] == 0.05 and constant["steps"] == 128
    # a negative runs its own (fewer) steps, and is carried on only to the end of those
    negative = kind_params("negative", s)
    assert negative["steps"] == s.negative_steps == 128 and kind_params("negative", preset("quick"))["steps"] == 64
    assert continuation({"stopped_at_plateau": 96, "still_rising": [1], "recipe": recipe}, negative)["steps"] == 32
    assert continuation({"stopped_at_plateau": 128, "still_rising": [1], "recipe": recipe}, negative) is None


def test_the_full_preset_keeps_windows_only_views_for_its_slower_panels():
    from featviz.microscope.settings import caricature_params, diversity_params, kind_params

    full, quick = preset("full"), preset("quick")
    # The channel image uses the unit recipe as it is; negatives, diversity and caricatures see windows only.
    assert kind_params("channel", full)["recipe"] == "auto" and kind_params("neuron", full)["recipe"] == "auto"
    assert kind_params("negative", full)["recipe"] == "robust-windows"
    assert diversity_params(full)["recipe"] == caricature_params(full)["recipe"] == "robust-windows"
    # The quick preset has none, and a recipe the user names is used as named.
    assert kind_params("negative", quick)["recipe"] == "auto" and kind_params("channel", quick)["steps"] == 64
    named = preset("full", recipe="lucid")
    assert kind_params("negative", named)["recipe"] == diversity_params(named)["recipe"] == "lucid"
    with pytest.raises(FeatvizError, match="window panels"):
        preset("full", window_panels=("neuron",))
    with pytest.raises(FeatvizError, match="channel steps must be between"):
        preset("full", channel_steps=0)
