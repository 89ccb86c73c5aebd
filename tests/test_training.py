"""Issue 12: fine-tuning (checkpoints, spec, metrics, resume after a real SIGKILL), evolve, report finetune.

Everything runs the real EfficientNet-Lite0 at 32 px on a handful of images for a few steps.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import one_error_line
from featviz.cli import main
from featviz.data import demo_shapes
from featviz.training import TrainSettings, checkpoints, finetune, linear_cka, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--size", "32", "--per-class", "2", "--holdout", "1", "--batch-size", "4", "--epochs", "2",
        "--checkpoint-every", "1", "--seed", "3", "--no-progress"]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _folder(root, classes=("circle", "star"), per_class=4, size=48, seed=0):
    x, y, names = demo_shapes(per_class, size, seed, classes=classes)
    for i in range(len(y)):
        d = root / names[int(y[i])]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


def _cli(*args):
    return [sys.executable, "-m", "featviz", *map(str, args)]


def _final_weights(run: Path) -> dict:
    last = checkpoints(run)[-1]["file"]
    return torch.load(run / last, weights_only=True)


@pytest.mark.slow
def test_finetune_run_folder_and_resume_after_sigkill(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    # The uninterrupted run.
    whole = tmp_path / "whole"
    done = subprocess.run(_cli("finetune", "efficientnet_lite0", "--out", whole, *TINY), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    # Files: spec, labels, metrics, checkpoints (start + one per step), held-out images.
    info = json.loads((whole / "run.json").read_text())
    assert info["classes"] == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert (whole / "labels.txt").read_text().split("\n")[:6] == info["classes"]
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["complete"] and metrics["steps"] == 6 and len(metrics["epochs"]) == 2
    assert [c["step"] for c in metrics["checkpoints"]] == [0, 1, 2, 3, 4, 5, 6]
    assert all(0 <= e["heldout_accuracy"] <= 1 and np.isfinite(e["train_loss"]) for e in metrics["epochs"])
    assert metrics["heldout_accuracy"] == metrics["epochs"][-1]["heldout_accuracy"]
    spec = (whole / "model.toml").read_text()
    assert 'base = "efficientnet_lite0"' in spec and 'weights = "checkpoints/step-000006.pt"' in spec
    assert 'labels = "labels.txt"' in spec and "input_size = 32" in spec and '"blocks.8"' in spec
    assert len(list((whole / "heldout").rglob("*.png"))) == 6
    start = torch.load(whole / "checkpoints" / "start.pt", weights_only=True)
    final = _final_weights(whole)
    assert final["classifier.weight"].shape == (6, 1280)
    assert not torch.equal(start["blocks.8.project.conv.weight"], final["blocks.8.project.conv.weight"])
    # The checkpoint loads back as a 6-class organism with the run's labels.
    organism = load_checkpoint(whole, checkpoints(whole)[-1]["file"])
    assert organism.labels == info["classes"] and organism(torch.rand(1, 3, 32, 32)).shape == (1, 6)

    # The run's model spec works wherever a model goes: render a class of the fine-tuned head.
    image = tmp_path / "logit2.png"
    res = _invoke("render", whole / "model.toml", "logit:2", "--steps", "2", "--size", "32", "-o", image)
    assert res.exit_code == 0, res.output
    with Image.open(image) as img:
        assert img.size == (32, 32)
    res = _invoke("render", whole / "model.toml", "logit:6", "--steps", "2", "--size", "32", "-o", image)
    assert "out of range" in one_error_line(res)  # six classes: 0-5

    # The same run, killed with SIGKILL after its second checkpoint, then run again.
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("finetune", "efficientnet_lite0", "--out", killed, *TINY), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (killed / "checkpoints" / "step-000002.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.toml").exists(), "the run finished before the kill: nothing to resume"
    again = subprocess.run(_cli("finetune", "efficientnet_lite0", "--out", killed, *TINY), env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming from step" in again.stderr
    resumed = _final_weights(killed)
    assert resumed.keys() == final.keys()
    assert all(torch.equal(resumed[k], final[k]) for k in final), "resumed weights differ from the uninterrupted run"
    again_metrics = json.loads((killed / "metrics.json").read_text())
    for key in ("train_loss", "train_accuracy", "heldout_accuracy", "images"):
        assert [e[key] for e in again_metrics["epochs"]] == [e[key] for e in metrics["epochs"]], key
    # A complete run is not trained again; other settings in the same folder are refused.
    res = _invoke("finetune", "efficientnet_lite0", "--out", whole, *TINY)
    assert res.exit_code == 0 and "is complete" in res.output
    res = _invoke("finetune", "efficientnet_lite0", "--out", whole, *TINY, "--seed", "4")  # the last --seed wins
    assert "other settings (--seed)" in one_error_line(res)


@pytest.mark.slow
def test_bad_data_dirs_give_one_line(tmp_path):
    one = _folder(tmp_path / "one", classes=("circle",))
    empty = _folder(tmp_path / "empty")
    (empty / "ring").mkdir()
    (empty / "ring" / "broken.png").write_bytes(b"not a png")
    single = tmp_path / "single"  # two classes of one image each: nothing left to train on after the held-out one
    for name in ("a", "b"):
        (single / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), (200, 30, 30)).save(single / name / "only.png")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [((tmp_path / "nowhere",), "data folder not found"),
             ((one,), "at least 2 class sub-folders"),
             ((empty,), "without a readable image in"),
             ((single,), "at least 2 per class"),
             ((one, "--epochs", "0"), "epochs must be at least 1"),
             ((empty, "--freeze-until", "blocks.99"), "unknown layer 'blocks.99'")]
    for args, needle in cases:
        res = _invoke("finetune", "efficientnet_lite0", *args, "--out", tmp_path / "r", "--size", "32")
        assert needle in one_error_line(res), (args, res.output)
    res = _invoke("finetune", "efficientnet_lite0", _folder(tmp_path / "ok"), "--out", foreign, "--size", "32")
    assert "holds no featviz run" in one_error_line(res)
    assert (foreign / "notes.txt").read_text() == "mine"
    res = _invoke("evolve", tmp_path / "ok", "--units", "blocks.8:1", "--out", tmp_path / "e")
    assert "not a featviz finetune run" in one_error_line(res)


@pytest.mark.slow
def test_evolve_from_scratch_on_a_folder(tmp_path, lite0):
    data = _folder(tmp_path / "data", per_class=5)
    (data / "star" / "broken.png").write_bytes(b"not a png")
    run = tmp_path / "run"
    settings = TrainSettings(steps=3, size=32, holdout=2, batch_size=4, from_scratch=True, checkpoint_every=1)
    result = finetune(lite0, data, run, settings)
    skipped = json.loads((run / "skipped.json").read_text())
    assert len(skipped) == 1 and skipped[0].startswith("star/broken.png")
    assert len(result.split.heldout.labels) == 4 and len(result.split.train.labels) == 6

    out = tmp_path / "evolve"
    res = _invoke("evolve", run, "--units", "blocks.8:3,head:5", "--out", out, "--size", "32", "--steps", "4",
                  "--k", "2", "--no-progress")
    assert res.exit_code == 0, res.output
    record = json.loads((out / "evolve.json").read_text())
    assert [c["step"] for c in record["checkpoints"]] == [0, 1, 2, 3]
    assert record["from_scratch"] and record["layers"][0] == "stem" and record["layers"][-1] == "classifier"
    assert all(v == pytest.approx(1.0) for v in record["checkpoints"][0]["cka"].values())
    assert any(v < 0.999 for v in record["checkpoints"][-1]["cka"].values())
    for slug in ("blocks.8_3", "head_5"):
        with Image.open(out / f"evolve_{slug}.gif") as gif:
            assert gif.n_frames == 4
        with Image.open(out / f"filmstrip_{slug}.png") as strip:
            assert strip.width > 4 * 32 and np.asarray(strip.convert("L")).std() > 5
        assert (out / f"examples_{slug}.png").is_file()
    unit = record["units"][0]
    assert len(unit["examples_start"]) == 2 and len(unit["examples_end"]) == 2
    # the cross figures: each network's activation on the first and last frame, as the filmstrip holds them
    with Image.open(out / "filmstrip_blocks.8_3.png") as strip:
        first = np.asarray(strip.convert("RGB").crop((2, 2, 34, 34)), dtype=np.float32) / 255.0
    start = load_checkpoint(run, "checkpoints/start.pt")
    x = torch.from_numpy(first).permute(2, 0, 1)[None]
    expected = float(start.activations(x, ["blocks.8"])["blocks.8"][0, 3].mean())
    assert unit["cross"]["start_on_start"] == pytest.approx(expected, abs=1e-3)
    assert set(unit["cross"]) == {"start_on_start", "start_on_end", "end_on_start", "end_on_end", "reading"}
    assert unit["activation"][0] == unit["cross"]["start_on_start"] and len(unit["activation"]) == 4
    assert unit["activation"][-1] == unit["cross"]["end_on_end"]
    assert record["units"][1]["activation"] != unit["activation"]  # each unit its own figures
    with Image.open(out / "cka_by_depth.png") as img:
        assert img.width > 400
    assert "CKA to the start after 3 steps" in res.output


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 5 * x @ rotation + 2) == pytest.approx(1.0)
    assert linear_cka(x, torch.randn(40, 12, generator=g)) < 0.6


@pytest.mark.slow
def test_report_finetune_writes_results(tmp_path, lite0):
    out = tmp_path / "rep"
    res = _invoke("report", "finetune", "efficientnet_lite0", "--budgets", "1,2", "--steps", "2", "--size", "32",
                  "--holdout", "2", "--batch-size", "6", "--out", out)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["accuracy"]) == {"pretrained", "scratch"}
    assert set(results["accuracy"]["pretrained"]) == {"1", "2"} == set(results["accuracy"]["scratch"])
    assert all(0 <= v <= 1 for kind in results["accuracy"].values() for v in kind.values())
    assert list(results["cka"]) == [info.name for info in lite0.layers()]  # depth order
    assert all(0 <= v <= 1.0001 for v in results["cka"].values())
    md = (out / "report.md").read_text()
    assert "featviz report transfer" in md and "## Reading" in md
    assert f"{results['accuracy']['pretrained']['2']:.3f}" in md
    for name in ("accuracy_by_budget.png", "cka_by_depth.png"):
        with Image.open(out / name) as img:
            assert img.width > 400
    from featviz.reports.site import site_entry

    entry = site_entry(results)  # what a microscope's model page shows of the report
    assert entry.name == "finetune" and entry.columns == ("CKA after fine-tuning",)
    assert entry.cells["stem"] == [f"{results['cka']['stem']:.3f}"] and "1/class" in entry.summary
    res = _invoke("report", "finetune", "efficientnet_lite0", "--budgets", "0,2", "--size", "32", "--out", out)
    assert "budgets must be whole numbers of examples per class, at least 1" in one_error_line(res)


def test_evolve_reads_a_ceiling_a_changed_feature_and_an_off_unit():
    """The one-line readings of evolve's cross figures, on figures shaped like the ones measured on lite0's
    fine-tuned run (docs/training.md): head:55 pinned at ReLU6's 6.0, blocks.15:319 changed, blocks.8:71 kept."""
    from featviz.training.evolve import read_cross

    def cross(ss, se, es, ee):
        return {"start_on_start": ss, "start_on_end": se, "end_on_start": es, "end_on_end": ee}

    assert "ceiling" in read_cross([6.0, 6.0, 6.0], cross(6.0, 6.0, 6.0, 6.0))
    # the same value at the start but a different one later is no ceiling
    assert "ceiling" not in read_cross([6.0, 5.2, 4.1], cross(6.0, 3.0, 3.5, 4.1))
    assert "feature changed" in read_cross([17.7, 16.9, 16.2], cross(17.7, 12.6, 12.3, 16.2))
    assert "same feature" in read_cross([9.1, 9.0, 8.8], cross(9.1, 8.6, 8.2, 8.8))
    assert "not converged" in read_cross([5.0, 5.5], cross(5.0, 6.0, 5.0, 5.5))
    assert read_cross([7.1, 0.05, 0.0], cross(7.1, 0.0, 0.0, 0.0)).startswith("off in the final network")
    assert read_cross([0.0, 2.0], cross(0.0, 0.5, 0.0, 2.0)).startswith("off in the starting network")
