"""Dataset examples (featviz.examples): exactness, resume, merge, bad input, a real model.

Bookkeeping tests use a tiny CNN on small synthetic photos (fast, deterministic);
one slow test runs EfficientNet-Lite0 on a few scikit-image photos.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featviz.errors import FeatvizError, UnknownLayerError
from featviz.examples import PassOptions, collect, list_images, merge, open_store, receptive_field
from featviz.examples.topk import EMPTY, Ranking
from featviz.models import from_module

from conftest import crash_on_call, one_error_line

LAYERS = ["c1", "r2", "c3", "fc"]
TESTS_DIR = Path(__file__).resolve().parent


def tiny_model():
    """A small CNN with known receptive fields: c1 3 px, c2 5 px (stride 2), c3 9 px (stride 4)."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        c1=nn.Conv2d(3, 8, 3, padding=1), r1=nn.ReLU(),
        c2=nn.Conv2d(8, 8, 3, stride=2, padding=1), r2=nn.ReLU(),
        c3=nn.Conv2d(8, 6, 3, stride=2, padding=1), r3=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(6, 5)))
    return from_module(net, name="tiny", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                       main_layers=["c1", "r2", "c3", "fc"])


CORRUPT = {"bad.jpg", "empty.png", "sub/truncated.jpg", "sub/deeper/notreally.webp"}


def make_photos(folder: Path, n: int = 30, corrupt: bool = True) -> Path:
    """Synthetic photos of many sizes, modes and formats, with exact duplicates (ties)
    and, optionally, corrupt files; plus files that must be ignored."""
    rng = np.random.default_rng(0)
    (folder / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        base = rng.random((1, 1, 3)) * 255
        arr = np.clip(base + rng.normal(0, 60, (h, w, 3)) * (i % 4) / 3, 0, 255).astype(np.uint8)
        sub = ["", "sub/", "sub/deeper/"][i % 3]
        kind = i % 6
        path = folder / f"{sub}p{i:02d}"
        if kind == 0:
            Image.fromarray(arr).save(f"{path}.png")
        elif kind == 1:
            Image.fromarray(arr).save(f"{path}.jpg", quality=95)
        elif kind == 2:
            Image.fromarray(arr[..., 0]).save(f"{path}.png")  # grayscale
        elif kind == 3:
            rgba = np.concatenate([arr, rng.integers(0, 255, (h, w, 1), dtype=np.uint8)], axis=2)
            Image.fromarray(rgba, "RGBA").save(f"{path}.PNG")  # alpha, upper-case extension
        elif kind == 4:
            Image.fromarray(arr).convert("P", palette=Image.ADAPTIVE).save(f"{path}.webp", lossless=True)
        else:
            Image.fromarray((arr[..., 1].astype(np.uint16) * 257)).save(f"{path}.png")  # 16-bit gray
    shutil.copy(folder / "p00.png", folder / "sub" / "dup_of_p00.png")  # identical activations: a tie
    shutil.copy(folder / "p00.png", folder / "zz_dup.png")
    (folder / "notes.txt").write_text("not a photo")
    Image.new("RGB", (40, 40), "red").save(folder / ".hidden.png")
    if corrupt:
        (folder / "bad.jpg").write_bytes(b"this is not a jpeg")
        (folder / "empty.png").write_bytes(b"")
        good = (folder / "sub" / "p01.jpg").read_bytes()
        (folder / "sub" / "truncated.jpg").write_bytes(good[: len(good) // 3])
        (folder / "sub" / "deeper" / "notreally.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPjunk")
    return folder


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photo_dir"))


@pytest.fixture(scope="module")
def reference(model, photo_dir, tmp_path_factory):
    """One uninterrupted run, the reference the other tests compare with."""
    store = collect(model, photo_dir, LAYERS, k=4, bottom=3, store=tmp_path_factory.mktemp("ref") / "store",
                    batch_size=4)
    return store


PASS_OPTIONS = ("workers", "checkpoint_every", "checkpoint_batches", "progress", "log")


def run(model, photo_dir, out, **kw):
    options = PassOptions(**{key: kw.pop(key) for key in PASS_OPTIONS if key in kw})
    kw = {"k": 4, "bottom": 3, "batch_size": 4, **kw}
    return collect(model, photo_dir, LAYERS, store=out, options=options, **kw)


# -- exactness ------------------------------------------------------------------------------------------
def brute_force(model, photo_dir, batch_size=4):
    """Every image alone, in its row (index % batch size) of an otherwise blank batch, then a
    full sort per unit: by value, then by path."""
    from featviz.examples.files import read_photo

    files = [p for p, _ in list_images(photo_dir)]
    stats = {name: [] for name in LAYERS}
    ids = []
    for i, rel in enumerate(files):
        try:
            x = model.preprocess(read_photo(photo_dir / rel))
        except FeatvizError:
            continue
        ids.append(i)
        batch = torch.zeros(batch_size, 3, 32, 32)
        batch[i % batch_size] = x
        with torch.no_grad():
            acts = model.activations(batch, LAYERS)
        for name in LAYERS:
            a = acts[name][i % batch_size]
            if a.dim() == 1:
                stats[name].append((a.numpy(), a.numpy(), np.zeros(a.shape, dtype=np.int64)))
            else:
                flat = a.reshape(a.shape[0], -1)
                stats[name].append((a.mean(dim=(1, 2)).numpy(), flat.max(dim=1).values.numpy(),
                                    flat.argmax(dim=1).numpy()))
    ids = np.array(ids)
    expected = {}
    for name in LAYERS:
        mean = np.stack([s[0] for s in stats[name]])
        peak = np.stack([s[1] for s in stats[name]])
        where = np.stack([s[2] for s in stats[name]])
        for unit in range(mean.shape[1]):
            order_top = np.lexsort((ids, -mean[:, unit]))[:4]
            order_bot = np.lexsort((ids, mean[:, unit]))[:3]
            order_max = np.lexsort((ids, -peak[:, unit]))[:4]
            expected[name, unit, "top"] = [(files[ids[j]], float(mean[j, unit]), None) for j in order_top]
            expected[name, unit, "bottom"] = [(files[ids[j]], float(mean[j, unit]), None) for j in order_bot]
            expected[name, unit, "max"] = [(files[ids[j]], float(peak[j, unit]), int(where[j, unit]))
                                           for j in order_max]
    return expected


def test_topk_equals_brute_force(model, photo_dir, reference):
    expected = brute_force(model, photo_dir)
    for (layer, unit, kind), want in expected.items():
        got = reference.examples(layer, unit, kind)
        width = reference.layer(layer).width
        assert [e.path for e in got] == [w[0] for w in want], (layer, unit, kind)
        assert [e.value for e in got] == [w[1] for w in want], (layer, unit, kind)  # bit-exact float32
        if kind == "max":
            assert [e.position[0] * width + e.position[1] for e in got] == [w[2] for w in want]


def test_ties_go_to_the_path_that_sorts_first():
    r = Ranking.empty(1, 3, descending=True)
    r = r.update(torch.tensor([[1.0], [2.0], [2.0]]), torch.tensor([7, 9, 8]))
    r = r.update(torch.tensor([[2.0], [5.0]]), torch.tensor([3, 12]))
    assert r.index.tolist() == [[12, 3, 8]]
    r = Ranking.empty(1, 4, descending=False).update(torch.tensor([[0.0], [0.0]]), torch.tensor([5, 1]))
    assert r.index.tolist() == [[1, 5, EMPTY, EMPTY]]


def test_duplicates_tie_and_keep_sorted_path_order(reference):
    # the three copies of p00 have identical activations; wherever two of them are ranked
    # next to each other the one whose path sorts first comes first
    copies = {"p00.png", "sub/dup_of_p00.png", "zz_dup.png"}
    seen = 0
    for layer in LAYERS:
        for unit in range(reference.layer(layer).channels):
            for kind in ("top", "bottom", "max"):
                got = [e.path for e in reference.examples(layer, unit, kind) if e.path in copies]
                assert got == sorted(got)
                seen += len(got) > 1
    assert seen > 0


def test_store_contents(reference, photo_dir):
    s = reference.settings
    assert s["model"] == "tiny" and s["layers"] == LAYERS and s["top"] == 4 and s["bottom"] == 3
    assert reference.complete
    files = [p for p, _ in list_images(photo_dir)]
    assert reference.images() == files
    assert "notes.txt" not in files and ".hidden.png" not in files
    assert reference.num_images == len(files) - len(CORRUPT)
    ex = reference.top("c3", 2, by="max")
    assert len(ex) == 4 and all(e.image_file.is_file() for e in ex)
    assert all(e.source == photo_dir / e.path for e in ex)
    for e in ex:  # the crop is the receptive field (9 px) around the position, clipped
        t, l, b, r = e.box
        assert 0 <= t < b <= 32 and 0 <= l < r <= 32 and b - t <= 9 and r - l <= 9
        assert e.open().size == (112, 112)
    assert len(reference.top("fc", 0)) == 4 and len(reference.bottom("fc", 0)) == 3
    assert reference.top("fc", 0, by="max")[0].box == (0, 0, 32, 32)
    assert len(reference.top("c1", 0, k=2)) == 2


def test_corrupt_files_are_skipped_counted_and_listed(reference):
    skipped = dict(reference.skipped())
    assert set(skipped) == CORRUPT
    assert all(reason for reason in skipped.values())


def test_receptive_field_matches_the_architecture(model):
    assert receptive_field(model, "c1").extent == (3, 3)
    rf = receptive_field(model, "c3")
    assert rf.extent == (9, 9) and (rf.height, rf.width) == (8, 8)
    assert rf.box(3, 3) == (8, 8, 17, 17)  # input rows 4h-4 .. 4h+4
    assert rf.box(0, 0) == (0, 0, 5, 5)  # clipped to the image
    assert receptive_field(model, "fc").whole


# -- resume -------------------------------------------------------------------------------------------------
def test_resume_after_crash_in_the_pass_equals_uninterrupted_run(model, photo_dir, reference, tmp_path, monkeypatch):
    from featviz.examples import stream as mod

    crash_on_call(monkeypatch, mod, "_decode", 15, "simulated crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(model, photo_dir, tmp_path / "s", checkpoint_batches=2)
    monkeypatch.undo()
    partial = open_store(tmp_path / "s")
    assert not partial.complete and 0 < partial.files_done < len(partial.images())
    with pytest.raises(FeatvizError, match="not complete"):
        partial.top("c1", 0)
    partial.close()
    resumed = run(model, photo_dir, tmp_path / "s")
    assert resumed.digest() == reference.digest()


def test_resume_after_crash_while_writing_crops(model, photo_dir, reference, tmp_path, monkeypatch):
    from featviz.examples import stream as mod

    crash_on_call(monkeypatch, mod, "_write_image_media", 5, "simulated crash while writing crops")
    with pytest.raises(RuntimeError):
        run(model, photo_dir, tmp_path / "s", workers=1)
    monkeypatch.undo()
    st = open_store(tmp_path / "s")
    assert not st.complete and st.files_done == len(st.images())
    st.close()
    assert run(model, photo_dir, tmp_path / "s").digest() == reference.digest()


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_examples import tiny_model, LAYERS
from featviz.examples import PassOptions, collect, store as store_mod
from featviz.examples import stream as mod
real = store_mod.ExampleStore.save_checkpoint
saves = [0]
def save(self, *a, **k):
    saves[0] += 1
    if saves[0] == 4:  # the 4th batch is done in memory, its checkpoint not written: wait here to be killed
        print("holding", flush=True)
        time.sleep(600)
    real(self, *a, **k)
    print("checkpoint", flush=True)
store_mod.ExampleStore.save_checkpoint = save
real_decode = mod._decode
def slow(*a):
    time.sleep(0.02)
    return real_decode(*a)
mod._decode = slow
collect(tiny_model(), {photo_dir!r}, LAYERS, k=4, bottom=3, store={out!r}, batch_size=4,
        options=PassOptions(checkpoint_batches=1, workers=1))
print("done", flush=True)
"""


def test_resume_after_sigkill_equals_uninterrupted_run(photo_dir, reference, tmp_path):
    out = tmp_path / "s"
    script = KILL_SCRIPT.format(tests=str(TESTS_DIR), photo_dir=str(photo_dir), out=str(out))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    for line in proc.stdout:
        if line.startswith("holding"):  # after 3 checkpoints, inside the next batch (an event, not a sleep)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    st = open_store(out)
    assert not st.complete and st.files_done > 0
    st.close()
    assert run(tiny_model(), photo_dir, out).digest() == reference.digest()


def test_rerun_of_a_complete_store_changes_nothing(model, photo_dir, reference):
    before = reference.digest()
    again = run(model, photo_dir, reference.path)
    assert again.digest() == before


# -- merge --------------------------------------------------------------------------------------------------
def test_merge_of_shards_equals_single_run(model, photo_dir, reference, tmp_path):
    parts = [run(model, photo_dir, tmp_path / f"part{i}", shard=f"{i}/3") for i in range(3)]
    assert sum(p.num_images for p in parts) == reference.num_images
    merged = merge(parts, tmp_path / "merged")
    assert merged.results() == reference.results()
    assert merged.digest() == reference.digest()
    # merging is associative: (a + b) + c == a + b + c
    ab = merge(parts[:2], tmp_path / "ab")
    assert merge([ab, parts[2]], tmp_path / "abc").digest() == reference.digest()


def test_merge_refuses_overlap_and_other_settings(model, photo_dir, reference, tmp_path):
    a = run(model, photo_dir, tmp_path / "a", shard="0/2")
    with pytest.raises(FeatvizError, match="in both"):
        merge([a, reference], tmp_path / "m")
    b = run(model, photo_dir, tmp_path / "b", shard="1/2", k=2)
    with pytest.raises(FeatvizError, match="other settings"):
        merge([a, b], tmp_path / "m")


# -- bad input ----------------------------------------------------------------------------------------------
def test_empty_folder_is_a_clear_error(model, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no photos here")
    with pytest.raises(FeatvizError, match="no images"):
        collect(model, tmp_path / "empty", LAYERS, store=tmp_path / "s")
    with pytest.raises(FeatvizError, match="not found"):
        collect(model, tmp_path / "missing", LAYERS, store=tmp_path / "s")


def test_only_corrupt_files_is_a_clear_error(model, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"junk")
    with pytest.raises(FeatvizError, match="none of the 1 image files"):
        collect(model, tmp_path / "d", LAYERS, store=tmp_path / "s")


def test_bad_arguments(model, photo_dir, tmp_path):
    with pytest.raises(FeatvizError, match="at least 1"):
        collect(model, photo_dir, LAYERS, k=0, store=tmp_path / "s")
    with pytest.raises(UnknownLayerError, match="Did you mean"):
        collect(model, photo_dir, ["c33"], store=tmp_path / "s")
    with pytest.raises(FeatvizError, match="shard"):
        collect(model, photo_dir, LAYERS, shard="3/3", store=tmp_path / "s")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FeatvizError, match="not an example store"):
        collect(model, photo_dir, LAYERS, store=tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").exists()


def test_other_settings_are_refused_unless_overwrite(model, photo_dir, reference, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(reference.path, out)
    with pytest.raises(FeatvizError, match="other settings.*top 4 in the store vs 5 now"):
        run(model, photo_dir, out, k=5)
    assert run(model, photo_dir, out, k=5, overwrite=True).settings["top"] == 5


def test_a_changed_folder_is_refused(model, tmp_path):
    data = make_photos(tmp_path / "d", n=8, corrupt=False)
    run(model, data, tmp_path / "s")
    Image.new("RGB", (30, 30), "blue").save(data / "new.png")
    with pytest.raises(FeatvizError, match="data folder changed"):
        run(model, data, tmp_path / "s")


def test_store_inside_the_data_folder_is_not_scanned(model, tmp_path):
    data = make_photos(tmp_path / "d", n=6, corrupt=False)
    first = run(model, data, data / "store")
    again = run(model, data, data / "store")  # crops in data/store/media must not count as photos
    assert again.digest() == first.digest()


# -- CLI ------------------------------------------------------------------------------------------------------
def cli(*args):
    from click.testing import CliRunner

    from featviz.cli import main

    return CliRunner().invoke(main, list(args))


def test_cli_errors_are_one_line(photo_dir, tmp_path):
    for args, text in [(["examples", str(photo_dir), "--layers", "blocks.3", "--top", "0", "--out", str(tmp_path / "s")],
                        "--top must be at least 1"),
                       (["examples", str(tmp_path), "--layers", "blocks.3", "--out", str(tmp_path / "s")],
                        "no images"),
                       (["examples-show", str(tmp_path), "blocks.3:1", "-o", str(tmp_path / "x.png")],
                        "not an example store"),
                       (["compare", "blocks.3", "--store", str(tmp_path), "-o", str(tmp_path / "x.png")],
                        "LAYER:UNIT")]:
        result = cli(*args)
        assert text in one_error_line(result), result.output


def test_cli_merge_and_show(model, photo_dir, reference, tmp_path):
    a = run(model, photo_dir, tmp_path / "a", shard="0/2")
    b = run(model, photo_dir, tmp_path / "b", shard="1/2")
    result = cli("examples-merge", str(tmp_path / "m"), str(a.path), str(b.path))
    assert result.exit_code == 0, result.output
    assert open_store(tmp_path / "m").digest() == reference.digest()
    result = cli("examples-show", str(tmp_path / "m"), "c3:1", "-o", str(tmp_path / "sheet.png"))
    assert result.exit_code == 0, result.output
    from featviz.imageio import read_settings

    assert read_settings(tmp_path / "sheet.png")["unit"] == "c3:1"


# -- real model -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_photos(tmp_path_factory):
    from featviz.examples.files import demo_dir

    folder = demo_dir(tmp_path_factory.mktemp("cache"))
    few = tmp_path_factory.mktemp("few")
    for name in ("astronaut", "coffee", "cat", "rocket", "coins", "brick"):
        shutil.copy(folder / f"{name}.png", few / f"{name}.png")
    return few


@pytest.fixture(scope="module")
def lite_store(demo_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("lite") / "store"
    result = cli("examples", "efficientnet_lite0", str(demo_photos), "--layers", "blocks.3,blocks.5",
                 "--top", "3", "--bottom", "2", "--out", str(out), "--batch-size", "6", "-q", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "6 images read of 6 files" in result.output
    return out


@pytest.mark.slow
def test_real_model_run(lite_store):
    st = open_store(lite_store)
    assert st.settings["model"] == "efficientnet_lite0" and st.layers() == ["blocks.3", "blocks.5"]
    rec = st.layer("blocks.3")
    assert (rec.channels, rec.height, rec.rf.extent) == (40, 28, (35.0, 35.0))  # 3+2*2+2*2+4*2+4*4 px
    assert st.layer("blocks.5").rf.extent == (83.0, 83.0)  # 35 + 8*4 + 8*2
    crops = st.top("blocks.3", 7, by="max")
    assert len(crops) == 3 and all(c.open().size == (112, 112) for c in crops)
    assert all(c.box[2] - c.box[0] <= 35 and c.box[3] - c.box[1] <= 35 for c in crops)
    assert len({c.path for c in st.bottom("blocks.5", 0)}) == 2
    assert st.top("blocks.5", 0)[0].value >= st.top("blocks.5", 0)[-1].value


@pytest.mark.slow
def test_real_model_compare_sheet(lite_store, tmp_path):
    result = cli("compare", "blocks.5:3", "--store", str(lite_store), "-o", str(tmp_path / "plain.png"), "--no-vis")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "plain.png") as sheet:
        assert sheet.width > 300
    result = cli("examples", "efficientnet_lite0", str(lite_store.parent), "--layers", "blocks.33", "--out",
                 str(tmp_path / "s2"), "--device", "cpu")
    assert result.exit_code == 2 and "Did you mean" in result.output
    from featviz import optvis

    if not hasattr(optvis, "render"):
        pytest.skip("featviz.optvis.render is not there yet")
    result = cli("compare", "efficientnet_lite0", "blocks.5:4", "--store", str(lite_store), "-o",
                 str(tmp_path / "sheet.png"), "--size", "64", "--steps", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    from featviz.imageio import read_settings

    settings = read_settings(tmp_path / "sheet.png")
    assert settings["unit"] == "blocks.5:4" and "render" in settings


def test_default_layers_is_one_rule_on_the_organism(model):
    # spatial main layers of the tiny CNN: c1, r2, c3 (fc has no grid)
    assert model.default_layers(2) == ["r2", "c3"]  # the ends of two equal slices of the depth
    assert model.default_layers(2, first=True) == ["c1", "c3"]
    assert model.default_layers(1) == ["c3"] and model.default_layers(1, first=True) == ["c1"]
    assert model.default_layers() == ["c1", "r2", "c3"]  # fewer spatial layers than asked: all of them
    from featviz.examples.plan import parse_layers

    assert parse_layers(model, None) == model.default_layers()


def test_weights_digest_follows_the_weights(model):
    import copy

    other = copy.deepcopy(model)
    assert other.weights_digest() == model.weights_digest()
    with torch.no_grad():
        other.network.c1.bias[0] += 1e-6
    assert other.weights_digest() != model.weights_digest()
