"""Dataset examples under hostile input and faults (issue 15): what the store never deletes, special files in
the photo folder, Ctrl-C, memory checked before allocating, damaged and half-deleted stores, a full disk."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from featviz.errors import FeatvizError
from featviz.examples import PassOptions, collect, list_images, open_store

from conftest import default_ctrl_c, one_error_line
from test_examples import LAYERS, TESTS_DIR, cli, make_photos, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"), n=10, corrupt=False)


@pytest.fixture(scope="module")
def reference(model, photos, tmp_path_factory):
    return collect(model, photos, LAYERS, k=2, bottom=1, batch_size=4, store=tmp_path_factory.mktemp("ref") / "s")


def run(model, photos, out, **kw):
    options = PassOptions(**{key: kw.pop(key) for key in ("workers", "checkpoint_batches", "log") if key in kw})
    return collect(model, photos, LAYERS, **{"k": 2, "bottom": 1, "batch_size": 4, **kw}, store=out,
                   options=options)


# -- never delete what featviz did not write (issue 15 item 2) -------------------------------------------
def test_a_file_of_someone_else_under_media_is_never_deleted(model, photos, tmp_path):
    out = tmp_path / "D"
    (out / "media").mkdir(parents=True)
    (out / "media" / "important.txt").write_text("keep me")
    with pytest.raises(FeatvizError, match="--overwrite"):
        run(model, photos, out)
    assert (out / "media" / "important.txt").read_text() == "keep me"


def test_another_programs_index_sqlite_is_not_replaced(model, photos, tmp_path):
    out = tmp_path / "D"
    out.mkdir()
    con = sqlite3.connect(out / "index.sqlite")
    con.execute("CREATE TABLE accounts(name TEXT)")
    con.execute("INSERT INTO accounts VALUES ('alice')")
    con.commit()
    con.close()
    before = (out / "index.sqlite").read_bytes()
    with pytest.raises(FeatvizError, match="not an example store.*--overwrite"):
        run(model, photos, out)
    assert (out / "index.sqlite").read_bytes() == before


def test_a_damaged_store_is_not_wiped_silently(model, photos, reference, tmp_path):
    import shutil

    out = tmp_path / "D"
    shutil.copytree(reference.path, out)
    (out / "index.sqlite").write_bytes(b"\0" * 100 + b"not a database any more")
    media = sorted(p.name for p in (out / "media").rglob("*"))
    with pytest.raises(FeatvizError, match="damaged.*--overwrite") as info:
        run(model, photos, out)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in (out / "media").rglob("*")) == media  # nothing deleted
    again = run(model, photos, out, overwrite=True)  # asked for: start over
    assert again.digest() == reference.digest()


def test_cli_refuses_a_folder_it_did_not_write_in_one_line(photos, tmp_path):
    out = tmp_path / "D"
    (out / "media").mkdir(parents=True)
    (out / "media" / "important.txt").write_text("keep me")
    result = cli("examples", "efficientnet_lite0", str(photos), "-l", "blocks.4", "--out", str(out), "-q",
                 "--device", "cpu")
    assert "--overwrite" in one_error_line(result)
    assert (out / "media" / "important.txt").exists()


# -- special files in the photo folder, Ctrl-C (issue 15 item 4) ------------------------------------------
def test_fifo_socket_and_device_named_jpg_are_skipped_never_opened(model, tmp_path):
    data = make_photos(tmp_path / "d", n=6, corrupt=False)
    os.mkfifo(data / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(data / "socket.png"))
    special = {"fifo.jpg", "socket.png"}
    if os.geteuid() == 0:
        os.mknod(data / "device.jpg", 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
        special.add("device.jpg")
    outcome = {}

    def work():
        try:
            with run(model, data, tmp_path / "s") as store:  # read in this thread (SQLite's rule)
                outcome["skipped"], outcome["read"] = dict(store.skipped()), store.num_images
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(120)  # a guard against the hang this test is about, not a measure of speed
    if thread.is_alive():  # a reader is stuck on the FIFO: give it an end of file, then fail
        os.close(os.open(data / "fifo.jpg", os.O_WRONLY | os.O_NONBLOCK))
        thread.join(60)
        pytest.fail("the examples pass opened a FIFO named *.jpg and hung")
    sock.close()
    assert "error" not in outcome, outcome.get("error")
    skipped = outcome["skipped"]
    assert set(skipped) == special
    assert all("not a regular file" in reason for reason in skipped.values())
    assert outcome["read"] == len(list_images(data)) - len(special)


def test_reading_a_fifo_is_refused_before_opening_it(tmp_path):
    from featviz.examples import read_photo
    from featviz.imageio import load_image

    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    for read in (read_photo, load_image):
        outcome = {}

        def work():
            try:
                read(fifo)
            except BaseException as exc:  # noqa: BLE001 - checked below
                outcome["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(60)  # a guard against the hang, not a measure of speed
        if thread.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(60)
            pytest.fail(f"{read.__name__} opened a FIFO and hung")
        assert isinstance(outcome.get("error"), FeatvizError) and "not a regular file" in str(outcome["error"])


CTRL_C_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_examples import tiny_model
import featviz.cli.examples_cmd as cmd
from featviz.examples import stream
cmd.load_model = lambda name, device=None: tiny_model()
real_decode, real_media = stream._decode, stream._write_image_media
def decode(*a):
    time.sleep(0.01)
    return real_decode(*a)
def media(*a):
    print("media", flush=True)
    time.sleep(0.3)
    return real_media(*a)
stream._decode, stream._write_image_media = decode, media
from featviz.cli import main
main(["examples", "tiny", {photos!r}, "--layers", "c1,r2,c3,fc", "--top", "2", "--bottom", "1", "--batch-size", "4",
      "--out", {out!r}, "--workers", "1", "-q"])
"""


def test_ctrl_c_while_writing_crops_stops_at_once_and_the_rerun_finishes(photos, reference, tmp_path):
    out = tmp_path / "s"
    script = CTRL_C_SCRIPT.format(tests=str(TESTS_DIR), photos=str(photos), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), preexec_fn=default_ctrl_c)
    first = proc.stdout.readline()
    assert first.startswith("media"), proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    after = proc.stdout.read().split()
    proc.wait(timeout=120)
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr
    assert "interrupted: progress is saved" in stderr and "Traceback" not in stderr
    # The image being written when Ctrl-C came may finish; none of the others is started.
    n_images = len({e.path for layer in LAYERS for u in range(reference.layer(layer).channels)
                    for kind in ("top", "bottom", "max") for e in reference.examples(layer, u, kind)})
    assert len(after) <= 1 < n_images - 1
    st = open_store(out)
    assert not st.complete and st.files_done == len(st.images())  # the pass itself is saved
    st.close()
    assert run(tiny_model(), photos, out).digest() == reference.digest()


# -- memory checked before allocating (issue 15 item 5) ---------------------------------------------------
def test_the_batch_is_capped_by_the_number_of_images(model, photos, tmp_path):
    n = len(list_images(photos))
    store = run(model, photos, tmp_path / "s", batch_size=1000)
    assert store.settings["batch_size"] == n


def test_a_size_that_cannot_fit_in_memory_is_refused_with_the_figure(model, photos, tmp_path, monkeypatch):
    from featviz.examples import plan

    monkeypatch.setattr(plan, "available_memory", lambda device=None: 50 * 2**20, raising=False)
    with pytest.raises(FeatvizError, match=r"about \d+(\.\d+)? [MG]B.*available"):
        run(model, photos, tmp_path / "s", size=512)
    assert not (tmp_path / "s").exists()
    monkeypatch.undo()
    with pytest.raises(FeatvizError, match=r"size 20000 .*about \d+(\.\d+)? [GT]B"):
        run(model, photos, tmp_path / "s", size=20000)


# -- damaged stores, missing crops, a full disk (issue 15 item 9) -----------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_index_is_one_line(reference, tmp_path, damage):
    import shutil

    out = tmp_path / "D"
    shutil.copytree(reference.path, out)
    db = out / "index.sqlite"
    data = db.read_bytes()
    db.write_bytes(b"x" * 4096 if damage == "garbage" else data[:4096])
    with pytest.raises(FeatvizError, match="damaged"):
        with open_store(out) as st:
            st.top("c1", 0)
    result = cli("examples-show", str(out), "c1:0", "-o", str(tmp_path / "sheet.png"))
    assert "damaged" in one_error_line(result)


def test_missing_crop_files_are_one_line(reference, tmp_path):
    import shutil

    out = tmp_path / "D"
    shutil.copytree(reference.path, out)
    shutil.rmtree(out / "media" / "crops")
    result = cli("examples-show", str(out), "c1:0", "-o", str(tmp_path / "sheet.png"))
    line = one_error_line(result)
    assert "missing" in line and "rerun" in line
    result = cli("compare", "tiny", "c1:0", "--store", str(out), "-o", str(tmp_path / "sheet.png"), "--no-vis")
    assert "missing" in one_error_line(result)


def test_rerunning_a_store_with_deleted_crops_restores_them_exactly(model, photos, reference, tmp_path):
    import shutil

    out = tmp_path / "D"
    shutil.copytree(reference.path, out)
    shutil.rmtree(out / "media" / "crops")
    (out / "media" / "images" / sorted(os.listdir(out / "media" / "images"))[0]).unlink()
    with open_store(out) as st:
        assert st.missing_media()
    messages = []
    again = run(model, photos, out, log=messages.append)
    assert "missing" in messages[-1]
    assert again.missing_media() == [] and again.digest() == reference.digest()


def test_a_full_disk_says_disk_full(model, photos, tmp_path, monkeypatch):
    from featviz.examples import store as store_mod

    real_connect = store_mod.connect

    def small_disk(db, **kw):
        con = real_connect(db, **kw)
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count = {max(pages, 1) + 2}")  # room for the empty tables, not much more
        return con

    monkeypatch.setattr(store_mod, "connect", small_disk)
    with pytest.raises(FeatvizError, match="disk (is )?full") as info:
        run(model, photos, tmp_path / "s", checkpoint_batches=1)
    assert "cannot rollback" not in str(info.value)


def test_a_full_disk_while_writing_crops_says_disk_full(model, photos, tmp_path, monkeypatch):
    import errno

    from featviz.examples import stream

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream, "_write_image_media", no_space)
    with pytest.raises(FeatvizError, match="disk full.*rerun"):
        run(model, photos, tmp_path / "s")
