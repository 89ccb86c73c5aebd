"""The CLI as a user meets it: real subprocess-free invocations through click."""
import pytest

from featviz.imageio import read_settings


def test_layers_table(run):
    result = run("layers", "efficientnet_lite0")
    assert result.exit_code == 0
    assert "blocks.8" in result.output and "112" in result.output and "14x14" in result.output
    assert "(x-0.5)" in result.output or "mean [0.5, 0.5, 0.5]" in result.output


@pytest.mark.parametrize("args, message", [
    (("layers", "resnet9000"), "unknown model 'resnet9000'"),
    (("render", "efficientnet_lite0", "blocks.88:1", "-o", "x.png"), "Did you mean: blocks.8"),
    (("render", "efficientnet_lite0", "blocks.8:112", "-o", "x.png"), "valid channels are 0-111"),
    (("render", "efficientnet_lite0", "logit:1000", "-o", "x.png"), "valid classes are 0-999"),
    (("render", "efficientnet_lite0", "logit:", "-o", "x.png"), "needs the form"),
    (("render", "efficientnet_lite0", "logit:x", "-o", "x.png"), "must be an integer"),
    (("dream", "efficientnet_lite0", "missing.jpg", "--layer", "blocks.5", "-o", "x.png"), "image not found"),
])
def test_bad_input_is_one_clear_line(run, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_render_writes_png_with_settings(run, tmp_path):
    out = tmp_path / "bee.png"
    result = run("render", "efficientnet_lite0", "logit:309", "-o", out, "--size", 96, "--steps", 4, "--seed", 3,
                 "--gif", tmp_path / "bee.gif")
    assert result.exit_code == 0, result.output
    settings = read_settings(out)
    assert settings["objective"] == "logit 309" and settings["seed"] == 3 and settings["size"] == 96
    assert settings["recipe"]["steps"] == 4 and settings["model"] == "efficientnet_lite0"
    assert (tmp_path / "bee.gif").exists()


@pytest.mark.slow
def test_render_layer_sheet_and_singles(run, tmp_path):
    out = tmp_path / "grid.png"
    result = run("render-layer", "efficientnet_lite0", "blocks.2", "--channels", "0-2,5", "-o", out, "--size", 64,
                 "--steps", 3, "--batch", 2)
    assert result.exit_code == 0, result.output
    singles = sorted(p.name for p in (tmp_path / "grid").iterdir())
    assert singles == ["blocks.2_0.png", "blocks.2_1.png", "blocks.2_2.png", "blocks.2_5.png"]
    assert read_settings(tmp_path / "grid" / "blocks.2_5.png")["objective"] == "channel blocks.2:5"


@pytest.mark.slow
def test_dream_from_photo(run, tmp_path, photos):
    from PIL import Image

    photo = tmp_path / "cat.jpg"
    Image.fromarray(photos["chelsea"]).save(photo)
    out = tmp_path / "dream.png"
    result = run("dream", "efficientnet_lite0", photo, "--layer", "blocks.5", "-o", out, "--steps", 3, "--size", 96)
    assert result.exit_code == 0, result.output
    assert read_settings(out)["photo"] == str(photo)
