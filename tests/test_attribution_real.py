"""Attribution on the real EfficientNet-Lite0 with scikit-image's embedded photos (slow: seconds each)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("captum")
skdata = pytest.importorskip("skimage.data")

from featviz.attribution import (Thumbnails, attribute, blocks_sheet, quadrant_canvas, quadrant_share,  # noqa: E402
                                 randomized_copy, resolve_target, spearman)

pytestmark = pytest.mark.slow  # the lite0 fixture (session-wide EfficientNet-Lite0) comes from conftest.py
CAT_CLASSES = range(281, 288)  # tabby ... lynx


@pytest.fixture(scope="module")
def cat(lite0):
    return lite0.preprocess(Image.fromarray(skdata.chelsea()))


@pytest.mark.parametrize("clutter", [False, True], ids=["grey", "cluttered"])
def test_heatmap_mass_lands_in_the_cat_quadrant(lite0, clutter):
    others = [skdata.coffee(), skdata.rocket(), skdata.astronaut()] if clutter else None
    canvas = quadrant_canvas(skdata.chelsea(), 1, size=224, others=others)
    pred = lite0.predict(canvas[None], 5)[0]
    cat_class = next(i for i, _, _ in pred if i in CAT_CLASSES)  # a cat class is in the top-5
    target = f"logit:{cat_class}"
    for method, floor in (("gradcam", 0.55), ("guided-gradcam", 0.55), ("ig", 0.4)):
        a = attribute(lite0, canvas, target, method, steps=24)
        share = quadrant_share(a.map, 1)
        assert share > floor, (method, clutter, share)


def test_model_randomization_changes_gradcam_and_ig(lite0, cat):
    target = resolve_target(lite0, None, cat[None])
    assert int(target.description.split()[-1]) in CAT_CLASSES
    rnd = randomized_copy(lite0, "blocks.12", seed=0)
    gc = spearman(attribute(lite0, cat, target, "gradcam").map, attribute(rnd, cat, target, "gradcam").map)
    ig = spearman(attribute(lite0, cat, target, "ig", steps=16).map, attribute(rnd, cat, target, "ig", steps=16).map)
    assert gc < 0.5 and ig < 0.8, (gc, ig)
    # the trained model is untouched by the randomization
    assert resolve_target(lite0, None, cat[None]).description == target.description


@pytest.mark.filterwarnings("ignore:Setting backward hooks")
def test_guided_gradcam_guides_through_relu6(lite0, cat):
    from captum.attr import GuidedBackprop, Saliency

    from featviz.attribution import guided_backprop
    from featviz.attribution.methods import ObjectiveForward

    target = resolve_target(lite0, None, cat[None])
    fwd = ObjectiveForward(lite0, target)
    x = cat[None].clone().requires_grad_(True)
    plain = Saliency(fwd).attribute(x, abs=False)[0]
    assert torch.allclose(GuidedBackprop(fwd).attribute(x)[0], plain, atol=1e-6)  # Captum alone: no ReLU to hook
    ours = guided_backprop(lite0, cat, target)
    assert spearman(ours.abs().amax(0), plain.abs().amax(0)) < 0.9
    a = attribute(lite0, cat, target, "guided-gradcam")
    assert a.settings["layer"] == "head" and torch.isfinite(a.map).all() and a.map.max() > 0


def test_cli_on_the_real_model(tmp_path, lite0):
    from click.testing import CliRunner

    from featviz.cli import main

    photo = tmp_path / "cat.jpg"
    Image.fromarray(skdata.chelsea()).save(photo)
    runner = CliRunner()
    r = runner.invoke(main, ["attribute", "efficientnet_lite0", str(photo), "--method", "gradcam", "--device", "cpu",
                             "-o", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    assert "top-5 predictions" in r.output and "gradcam @ head" in r.output
    assert Image.open(tmp_path / "g.png").size == (224, 224)
    r = runner.invoke(main, ["attribute", "efficientnet_lite0", str(photo), "--method", "gradcam", "--layer",
                             "classifier", "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "has no spatial dimensions" in r.output
    r = runner.invoke(main, ["attribute", "efficientnet_lite0", str(photo), "--target", "logit:1000",
                             "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "valid classes are 0-999" in r.output


def test_blocks_sheet_with_engine_thumbnails(lite0, cat):
    from featviz.attribution.blocks import render_layer

    assert render_layer(lite0, "head") == "head.bn" and render_layer(lite0, "blocks.12") == "blocks.12"
    sheet, ca = blocks_sheet(lite0, cat, "head", top=2, thumbnails=Thumbnails(steps=4, size=48), tile=64)
    assert ca.settings["thumbnails"]["layer"] == "head.bn"
    assert float(ca.scores.sum()) == pytest.approx(ca.value - float(lite0.network.classifier.bias[
        int(ca.target.split()[-1])]), rel=1e-3)
    arr = np.asarray(sheet)
    assert arr.shape[1] == 8 + 3 * (64 + 8) and arr.std() > 10
