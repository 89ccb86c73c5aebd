"""Reports (issue 7, parts 2 and 3): their figures come from real runs, not constants."""
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featviz.cli import main

from conftest import one_error_line


def _tensor(path):
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- bad input: one line, exit 2 (no rendering needed) -----------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [
    (["report", "logits", "efficientnet_lite0", "--classes", "5000"], "out of range"),
    (["report", "logits", "efficientnet_lite0", "--classes", "3,x"], "--classes"),
    (["report", "logits", "efficientnet_lite0", "--steps", "0"], "--steps"),
    (["report", "logits", "nosuchmodel"], "unknown model"),
    (["report", "causes", "efficientnet_lite0", "blocks.8", "--store", "nowhere"], "LAYER:UNIT"),
    (["report", "causes", "efficientnet_lite0", "blocks.8:3", "--store", "nowhere"], "no examples store"),
    (["report", "causes", "efficientnet_lite0", "blocks.8:3", "--store", "nowhere", "--mask-frac", "1.5"],
     "--mask-frac"),
])
def test_report_bad_input(tmp_path, args, needle):
    res = _invoke(*args, "--out", tmp_path / "r")
    assert needle in one_error_line(res), res.output


# -- logits vs probabilities --------------------------------------------------------------

@pytest.mark.slow
def test_logits_report_measures_the_images(tmp_path, lite0):
    from featviz.models import load
    from featviz.reports.logits import logits_report, measure

    out = tmp_path / "logits"
    judge = load("efficientnet_lite1")
    returned = logits_report(lite0, [309], out, judge=judge, size=96, steps=12)
    for name in ("logits.png", "logits_plot.png", "report.md", "results.json", "images/logit_309.png",
                 "images/prob_309.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == json.loads(json.dumps(returned["rows"]))
    s = results["settings"]
    assert (s["size"], s["steps"], s["seed"], s["judge"], s["classes"]) == (96, 12, 0, "efficientnet_lite1", [309])
    rows = {r["objective"]: r for r in results["rows"]}
    assert set(rows) == {"logit:309", "prob:309"}
    for r in rows.values():
        for key in ("target_logit", "target_prob", "mean_other_logits", "judge_prob", "margin"):
            assert math.isfinite(r[key]), (key, r)
        assert isinstance(r["judge_top5"], bool) and isinstance(r["judge_top1"], bool)
        assert r["judge_top5"] == (r["judge_rank"] <= 5)

    # The numbers are those of the saved images: recompute them from the PNGs.
    for kind in ("logit", "prob"):
        x = _tensor(out / f"images/{kind}_309.png")
        assert x.shape[-1] == 96
        m = measure(lite0, judge, x, 309)[0]
        r = rows[f"{kind}:309"]
        for key in ("target_logit", "target_prob", "mean_other_logits", "judge_prob"):
            assert m[key] == pytest.approx(r[key], rel=1e-4, abs=1e-5), (kind, key)
        assert m["judge_rank"] == r["judge_rank"]
    # ...and they are not constants: the two images measure differently, and optimizing the
    # logit raised it well above the grey image's.
    grey = results["grey_baseline"]["309"]
    assert rows["logit:309"]["target_logit"] > grey["target_logit"] + 1.0
    assert rows["logit:309"]["target_logit"] != rows["prob:309"]["target_logit"]
    md = (out / "report.md").read_text()
    assert "96 px, 12, 0" in md and "efficientnet_lite1" in md and "logits_plot.png" in md
    with Image.open(out / "logits_plot.png") as plot:
        assert plot.width > 400 and np.asarray(plot.convert("L")).std() > 5


# -- optimization vs dataset examples --------------------------------------------------------

@pytest.mark.slow
def test_causes_report_ablation_is_recomputable(tmp_path, lite0):
    from featviz.attribution import attribute
    from featviz.examples import collect
    from featviz.microscope.settings import slug
    from featviz.reports.causes import attributed_box, load_example, mask_square, unit_activation
    from conftest import empty_site

    store = collect(lite0, None, ["blocks.8"], k=4, store=tmp_path / "s")
    layer, unit = "blocks.8", 5
    out = tmp_path / "causes"
    site = empty_site(tmp_path / "site", lite0)
    res = _invoke("report", "causes", "efficientnet_lite0", f"{layer}:{unit}", "--store", tmp_path / "s",
                  "--k", 2, "--steps", 4, "--size", 64, "--out", out, "--site", site)
    assert res.exit_code == 0, res.output
    page = site / "efficientnet_lite0" / "_reports" / slug(f"causes-{layer}-{unit}") / "index.html"
    assert page.is_file() and (page.parent / "causes.png").is_file()
    assert slug(f"causes-{layer}-{unit}") in (site / "efficientnet_lite0" / "index.html").read_text()
    for name in ("causes.png", "causes_plot.png", "report.md", "results.json", "visualization.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    s = results["settings"]
    assert (s["layer"], s["unit"], s["k"], s["mask_frac"], s["attribution"]) == (layer, unit, 2, 0.25, "saliency")
    examples = store.top(layer, unit, k=2)
    assert [r["path"] for r in results["rows"]] == [e.path for e in examples]
    size = s["image_size"]
    for ex, r in zip(examples, results["rows"]):
        x = load_example(lite0, ex, size)
        orig = float(unit_activation(lite0, x, layer, unit)[0])
        assert orig == pytest.approx(r["original"], rel=1e-4)
        # the store recorded the activation before JPEG compression of its image file
        assert orig == pytest.approx(ex.value, rel=0.25)
        amap = attribute(lite0, x[0], f"{layer}:{unit}", method="saliency").map
        box = attributed_box(amap, s["mask_side_px"])
        assert list(box) == r["attribution_box"]
        assert float(unit_activation(lite0, mask_square(x, box), layer, unit)[0]) == pytest.approx(
            r["attribution_masked"], rel=1e-4)
        rand = [float(unit_activation(lite0, mask_square(x, tuple(b)), layer, unit)[0]) for b in r["random_boxes"]]
        assert np.mean(rand) == pytest.approx(r["random_masked"], rel=1e-4)
        assert len(r["random_boxes"]) == s["random_squares"]
        assert all(ov <= s["mask_side_px"] ** 2 // 2 for ov in r["random_overlap_px"])
        assert abs(r["attribution_masked"] - r["original"]) > 1e-3
    assert math.isfinite(results["visualization"]["activation"])
    assert "blocks.8:5" in (out / "report.md").read_text()


def test_random_boxes_avoid_the_attributed_square():
    from featviz.reports.causes import attributed_box, overlap, random_boxes

    amap = torch.zeros(32, 32)
    amap[2:6, 3:7] = 1.0
    box = attributed_box(amap, 8)
    assert box[0] <= 2 and box[2] >= 6 and box[1] <= 3 and box[3] >= 7
    boxes = random_boxes(32, 8, box, 3, np.random.default_rng(0))
    assert len(set(boxes)) == 3 and all(overlap(b, box) == 0 for b in boxes)
    assert boxes == random_boxes(32, 8, box, 3, np.random.default_rng(0))  # seeded
    # no room beside a half-image square centred in the image: at most half a square of overlap
    centre = (8, 8, 24, 24)
    boxes = random_boxes(32, 16, centre, 3, np.random.default_rng(1))
    assert all(0 < overlap(b, centre) <= 128 for b in boxes)
