"""A microscope site built from a fine-tuning run: the starting network beside each unit, the CKA plot,
and a site (or example store) that remembers the model spec it was built from.

The site itself (a real run of lite0 on the offline demo task, built from RUN/model.toml) is the
session fixture ``finetuned_site`` of conftest.py; the browser test is test_microscope_browser_finetune.py.
"""
from __future__ import annotations

import shutil

import pytest

from conftest import one_error_line
from featviz.errors import FeatvizError
from featviz.imageio import read_settings
from featviz.microscope.manifest import Manifest
from featviz.microscope.settings import BASELINE_CKA
from featviz.models import load, load_reference, reference


def test_site_of_a_run_holds_its_start_rendered_with_the_same_seeds(finetuned_site):
    run, site, _photos, report = finetuned_site
    assert report.made[BASELINE_CKA] == 1
    with Manifest(site, readonly=True) as man:
        models = man.models()
        assert set(models) == {"shapes", "shapes_start"}
        info = models["shapes"]
        assert info["baseline"] == {"slug": "shapes_start", "name": "shapes@start"}
        assert info["spec"] == str((run / "model.toml").resolve())
        assert models["shapes_start"]["spec"] == str((run / "start.toml").resolve())
        for layer in ("blocks.4", "head"):
            assert man.units("shapes", layer) == man.units("shapes_start", layer) == [0, 1]
        cka = man.get("shapes", "", -1, BASELINE_CKA)
    for layer, unit in (("blocks.4", 0), ("head", 1)):
        mine = read_settings(site / "shapes" / layer / str(unit) / "channel.png")["microscope"]
        start = read_settings(site / "shapes_start" / layer / str(unit) / "channel.png")["microscope"]
        assert mine["seed"] == start["seed"] and mine["settings"]["steps"] == start["settings"]["steps"]
    # CKA against the start, at every checkpoint of the run: the start is itself (1 everywhere); after
    # two steps the new classifier moved far more than the ImageNet body (trained at a tenth of its rate)
    first, last = cka.info["checkpoints"][0], cka.info["checkpoints"][-1]
    assert first["step"] == 0 and all(v == pytest.approx(1.0) for v in first["cka"].values())
    assert last["step"] == 2 and last["cka"]["blocks.4"] > 0.99 > last["cka"]["classifier"]
    assert cka.info["layers"][0] == "stem" and (site / cka.files[0]).stat().st_size > 10_000
    page = (site / "shapes" / "index.html").read_text()
    assert 'id="cka"' in page and "shapes@start" in page


def test_build_again_is_up_to_date_and_a_baseline_needs_the_layers(finetuned_site, tmp_path, tiny):
    from featviz.microscope import build

    run, site, photos, _report = finetuned_site
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    again = build(str(run / "model.toml"), copy, photos, layers=["blocks.4", "head"], units=2, steps=3, size=32,
                  k=3, batch_size=2, diversity_batch=2, classes=[0, 1], examples_size=64)
    assert sum(again.made.values()) == 0  # the start and the CKA panel too
    with pytest.raises(FeatvizError, match="cannot be shown beside every unit"):
        build(str(run / "model.toml"), tmp_path / "other", photos, layers=["blocks.4"], units=1, baseline=tiny)
    assert not (tmp_path / "other").exists()


def test_serve_and_compare_find_the_spec_by_themselves(finetuned_site, tmp_path, run):
    from featviz.microscope.compare import compare
    from featviz.microscope.pages import ModelView
    from featviz.server.state import SiteState

    run_dir, site, _photos, _report = finetuned_site
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    state = SiteState(copy)  # no --model: the manifest's spec path
    organism = state.model("shapes", state.view("shapes"))
    assert organism.weights_digest() == load(str(run_dir / "model.toml")).weights_digest()
    # names of the site's networks, which are no model names featviz knows: found through their specs
    rel = compare(copy, "shapes", "shapes@start")
    assert (copy / rel).is_file()
    with Manifest(copy, readonly=True) as man:
        assert ModelView.load(man, "shapes").panel("", -1, "compare:shapes_start") is not None
    # the spec moved: one line, from the command line too
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    with Manifest(copy) as man:
        info = man.model("shapes")
        man.set_model("shapes", info | {"spec": str(moved / "model.toml")})
    shutil.rmtree(moved)
    line = one_error_line(run("microscope", "compare", copy, "shapes", "shapes@start"))
    assert "no longer there" in line and "model.toml" in line


def test_load_reference_refuses_a_moved_spec_and_changed_weights(finetuned_site, tmp_path):
    run_dir, _site, _photos, _report = finetuned_site
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ref = reference(load(str(copy / "model.toml")))
    assert ref["spec"] == str((copy / "model.toml").resolve())
    assert load_reference(ref).weights_digest() == ref["weights"]
    final = load(str(copy / "model.toml")).weights_file
    shutil.copyfile(copy / "checkpoints" / "start.pt", final)  # the spec now names other weights
    with pytest.raises(FeatvizError, match="weights changed"):
        load_reference(ref, where="the site x")
    shutil.rmtree(copy)
    with pytest.raises(FeatvizError, match="no longer there"):
        load_reference(ref, where="the site x")
    with pytest.raises(FeatvizError, match="no model name featviz knows"):
        load_reference({"name": "shapes", "weights": ref["weights"]})


def test_example_store_remembers_its_spec(finetuned_site, tmp_path, run):
    from featviz.examples import open_store

    run_dir, site, _photos, _report = finetuned_site
    with open_store(site / "shapes" / "_examples") as store:
        assert store.model_reference["spec"] == str((run_dir / "model.toml").resolve())
    # featviz examples compare without MODEL renders with the store's own network, loaded from its spec
    out = tmp_path / "sheet.png"
    result = run("compare", "blocks.4:0", "--store", site / "shapes" / "_examples", "-o", out,
                 "--steps", "2", "--size", "32")
    assert result.exit_code == 0, result.output
    assert read_settings(out)["model"] == "shapes" and out.stat().st_size > 1000
