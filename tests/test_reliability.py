"""What featviz promises about the files it writes, bad input and interruptions (docs/guarantees.md).

Every test here was written to fail before the behaviour it checks existed."""
import os
import stat
import struct
import threading
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import crash_on_call, default_ctrl_c, one_error_line
from featviz.cli import main
from featviz.errors import FeatvizError
from featviz import imageio
from featviz.imageio import atomic_write, save_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def small_image():
    return Image.new("RGB", (8, 8), (200, 30, 30))


def device_node(path: Path, rdev: tuple[int, int]) -> Path:
    """A character device at ``path`` (mknod as root); else a symbolic link to the system's one.
    Either way a write must not replace what is at ``path``."""
    if IS_ROOT:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(*rdev))
    else:
        target = {(1, 3): "/dev/null", (1, 5): "/dev/zero"}[rdev]
        path.symlink_to(target)
    return path


def is_char_device(path: Path) -> bool:
    return stat.S_ISCHR(os.stat(path).st_mode)


# -- item 1: nothing but a regular file is ever replaced ------------------------------------------------

def test_a_device_at_the_output_path_is_refused_not_replaced(tmp_path):
    zero = device_node(tmp_path / "x", (1, 5))  # /dev/zero's numbers
    before = os.lstat(zero)
    with pytest.raises(FeatvizError, match="not a regular file"):
        save_png(small_image(), zero)
    after = os.lstat(zero)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino) and is_char_device(zero)
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temporary file left behind


def test_the_null_device_is_written_through_and_stays_a_device(tmp_path):
    null = device_node(tmp_path / "x", (1, 3))  # what `mknod -m 666 x c 1 3` makes
    save_png(small_image(), null)
    assert is_char_device(null)
    assert os.lstat(null).st_mode == os.lstat(tmp_path / "x").st_mode


def test_a_link_is_followed_not_replaced(tmp_path):
    real = tmp_path / "real.png"
    save_png(small_image(), real)
    link = tmp_path / "link.png"
    link.symlink_to(real)
    save_png(Image.new("RGB", (5, 5)), link)
    assert link.is_symlink() and Image.open(real).size == (5, 5)


def test_a_named_pipe_is_written_through(tmp_path):
    pipe = tmp_path / "out.png"
    os.mkfifo(pipe)
    got = {}

    def reader():
        with open(pipe, "rb") as fh:
            got["bytes"] = fh.read()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    for _ in range(5000):  # until the reader thread is inside open(): a pipe without one is an error
        try:
            save_png(small_image(), pipe)
            break
        except FeatvizError as exc:
            assert "nothing reads from the pipe" in str(exc)
            threading.Event().wait(0.002)
    t.join(60)
    assert got["bytes"].startswith(PNG_SIGNATURE)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)


def test_a_pipe_nobody_reads_is_an_error_not_a_hang(tmp_path):
    pipe = tmp_path / "out.png"
    os.mkfifo(pipe)
    with pytest.raises(FeatvizError, match="nothing reads from the pipe"):
        save_png(small_image(), pipe)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)


def test_a_store_or_lock_that_is_not_a_regular_file_is_refused(tmp_path):
    from featviz._storage import FolderLock, connect

    os.mkfifo(tmp_path / "db.sqlite")
    with pytest.raises(FeatvizError, match="not a regular file"):
        connect(tmp_path / "db.sqlite")
    os.mkfifo(tmp_path / ".lock")
    with pytest.raises(FeatvizError, match="not a regular file"):
        FolderLock(tmp_path, "busy")


def test_render_refuses_a_device_before_rendering(run, tmp_path, monkeypatch):
    from featviz.cli import render_cmd

    crash_on_call(monkeypatch, render_cmd, "load_model", 1, "the output was not checked first")
    x = device_node(tmp_path / "x", (1, 5))
    result = run("render", "efficientnet_lite0", "blocks.8:1", "-o", x, "--size", 64, "--steps", 4)
    assert "not a regular file" in one_error_line(result)
    assert is_char_device(x)


@pytest.mark.slow
def test_render_to_stdout(run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["render", "efficientnet_lite0", "blocks.8:1", "-o", "-", "--size", "32",
                                  "--steps", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.startswith(PNG_SIGNATURE)
    assert "wrote -" in result.stderr


@pytest.mark.parametrize("out, message, cli_message", [
    ("", "output path is empty", "output path is empty"),
    ("a_file/x.png", "a_file is a file, not a folder", "a_file is a file, not a folder"),
    ("/proc/x.png", "cannot create a file in /proc", "cannot create a file in /proc"),
    ("n" * 300 + ".png", "file name is 304 bytes long", "file name is 304 bytes long"),
    (".", "it is a folder", "'.' is a directory"),  # click's own check comes first
])
def test_an_output_path_that_cannot_be_written_is_one_line(run, tmp_path, monkeypatch, out, message, cli_message):
    from featviz.cli import render_cmd

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(FeatvizError, match=message):
        imageio.check_output(out)
    # and through atomic_write, which every file of featviz goes through
    with pytest.raises(FeatvizError):
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(b"x"))
    crash_on_call(monkeypatch, render_cmd, "load_model", 1, "the output was not checked first")
    result = run("render", "efficientnet_lite0", "blocks.8:1", "-o", out, "--size", 64, "--steps", 4)
    assert cli_message in one_error_line(result)
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    out = tmp_path / "keep.png"
    save_png(small_image(), out)
    before = out.read_bytes()

    def broken(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(FeatvizError, match="No space left on device"):
        atomic_write(out, broken)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


@pytest.mark.parametrize("args, message", [
    (("render-layer", "efficientnet_lite0", "blocks.2", "--columns", "-1", "-o", "x.png"), "--columns"),
    (("examples", "efficientnet_lite0", "--workers", "-1", "-o", "store"), "--workers"),
    (("serve", "site", "--workers", "-1"), "--workers"),
    (("report", "logits", "efficientnet_lite0", "-o", "a_file/report"), "a_file is a file, not a folder"),
    (("microscope", "build", "efficientnet_lite0", "-o", "a_file/site"), "a_file is a file, not a folder"),
    (("microscope", "build", "efficientnet_lite0", "-o", "/proc/site"), "cannot create the folder /proc/site"),
    (("microscope", "build", "efficientnet_lite0", "-o", ""), "output path is empty"),
])
def test_bad_option_values_are_one_line(run, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    assert message in one_error_line(run(*args))


# -- item 9: decompression bombs, damaged stores ---------------------------------------------------------

def bomb_png(path: Path, side: int, rows: int | None = None) -> Path:
    """A 1-bit PNG of side x side pixels that is tiny on disk. rows: write only that many rows of
    pixel data (the header still says side x side, which is all a reader sees before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)  # filter byte + the packed bits of one row
    packer = zlib.compressobj(1)
    n = side if rows is None else rows
    data = b"".join(packer.compress(row * min(1000, n - i)) for i in range(0, n, 1000)) + packer.flush()
    path.write_bytes(PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    return [bomb_png(folder / "20k.png", 20_000), bomb_png(folder / "60k.png", 60_000, rows=1000)]


def test_a_decompression_bomb_is_refused_by_every_reader(bombs, tiny):
    from featviz.examples.files import read_photo
    from featviz.imageio import load_image

    for bomb in bombs:
        assert bomb.stat().st_size < 1_000_000
        for read in (load_image, read_photo, tiny.preprocess):
            with pytest.raises(FeatvizError, match="refusing to read image .*pixels"):
                read(bomb)


def test_a_pipe_given_as_a_photo_is_an_error_not_a_hang(tmp_path, tiny):
    os.mkfifo(tmp_path / "cat.jpg")
    with pytest.raises(FeatvizError, match="not a regular file"):
        tiny.preprocess(tmp_path / "cat.jpg")


@pytest.mark.parametrize("command", ["attribute", "blocks", "dream"])
def test_commands_refuse_a_bomb_in_one_line(run, bombs, lite0, monkeypatch, tmp_path, command):
    from featviz.cli import attribute_cmd, render_cmd

    for module in (attribute_cmd, render_cmd):
        monkeypatch.setattr(module, "load_model", lambda name, device=None: lite0)
    extra = {"attribute": [], "blocks": ["--layer", "head", "--no-thumbnails"],
             "dream": ["--layer", "blocks.5", "--steps", "1"]}[command]
    for bomb in bombs:
        result = run(command, "efficientnet_lite0", bomb, "-o", tmp_path / "x.png", *extra)
        assert "refusing to read image" in one_error_line(result)


def test_a_truncated_manifest_is_one_line(run, tmp_path, tiny):
    from conftest import empty_site
    from featviz.microscope.manifest import Manifest

    site = empty_site(tmp_path / "site", tiny)
    db = site / "manifest.sqlite"
    with Manifest(site) as man:  # some rows, so the file has more than one page
        man.put([])
    db.write_bytes(db.read_bytes()[:100])
    with pytest.raises(FeatvizError, match="damaged"):
        Manifest(site)
    result = run("microscope", "build", "efficientnet_lite0", "-o", site, "--steps", 1)
    assert "damaged" in one_error_line(result)


# -- item 10: an empty list is an error, not the default ---------------------------------------------------

def test_an_empty_layer_list_is_an_error(run, tmp_path):
    from featviz.microscope.settings import preset

    for layers in (",", " , ", []):
        with pytest.raises(FeatvizError, match="no layers"):
            preset("quick", layers=layers)
    result = run("microscope", "build", "efficientnet_lite0", "--layers", ",", "-o", tmp_path / "site")
    assert "no layers" in one_error_line(result)
    assert not (tmp_path / "site").exists()


# -- item 4: Ctrl-C stops every long command promptly, with its work kept --------------------------------

REPO = Path(__file__).resolve().parents[1]
# Generous: a prompt stop takes well under a second of work; this bound only catches a command that
# goes on working (the next render of a report, the rest of a build) and does not depend on load.
PROMPT_S = 60


def interrupt_when(args: list, pattern: str, cwd: Path) -> tuple[int, str]:
    """Run ``featviz ARGS`` in a subprocess, send it SIGINT (Ctrl-C) as soon as its stderr shows
    ``pattern`` (a regular expression: a progress line proves it is working), and return its exit
    status and stderr once it has stopped."""
    import re
    import signal
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "featviz", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_ctrl_c)
    seen = bytearray()
    started = threading.Event()

    def read():
        while chunk := os.read(proc.stderr.fileno(), 65536):
            seen.extend(chunk)
            if re.search(pattern, seen.decode("utf-8", "replace")):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not started.wait(0.05):
            assert proc.poll() is None, f"it ended before {pattern!r} showed: {seen.decode()[-2000:]}"
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=PROMPT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    return rc, seen.decode("utf-8", "replace")


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_ctrl_c_stops_a_render_and_keeps_its_image(tmp_path):
    from featviz.imageio import read_settings

    rc, err = interrupt_when(["render", "efficientnet_lite0", "blocks.8:1", "-o", "out.png", "--size", 32,
                              "--steps", 100_000], r"\| *[1-9]\d*/100000", tmp_path)
    assert rc == 130, err[-2000:]
    assert last_line(err).startswith("interrupted after") and "saving the last image" in last_line(err)
    assert 1 <= read_settings(tmp_path / "out.png")["steps_done"] < 100_000


@pytest.mark.slow
def test_ctrl_c_stops_a_report_at_once(tmp_path):
    rc, err = interrupt_when(["report", "logits", "efficientnet_lite0", "--judge", "efficientnet_lite0",
                              "--classes", 1, "--size", 32, "--steps", 100_000, "-o", "report"],
                             r"rendering logit:1", tmp_path)
    assert rc == 130, err[-2000:]
    assert last_line(err) == "featviz: interrupted"
    assert "rendering prob:1" not in err  # it did not go on to the next render
    assert not (tmp_path / "report" / "report.md").exists()


@pytest.mark.slow
def test_ctrl_c_stops_a_microscope_build_and_a_rerun_resumes(tmp_path, run):
    import re

    args = ["microscope", "build", "efficientnet_lite0", "--layers", "blocks.2", "--units", 4, "--batch-size", 2,
            "--steps", 8, "--size", 32, "--classes", 1, "--examples", 2, "-o", "site"]
    rc, err = interrupt_when(args, r"channel of units 0,1 \(batch 1/2\) in", tmp_path)
    assert rc == 130, err[-2000:]
    assert last_line(err).startswith("interrupted: what is done is kept in site")
    os.chdir(tmp_path)
    result = run(*args, "--quiet")
    assert result.exit_code == 0, result.output
    made = dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+)", result.output.split("made ")[1].split(";")[0]))
    assert made.get("channel", 0) < 4  # the batch done before Ctrl-C was kept, not rendered again
    assert (tmp_path / "site" / "efficientnet_lite0" / "blocks.2" / "3" / "index.html").is_file()


def test_a_full_disk_is_named_not_hidden_by_a_failed_rollback(tmp_path):
    from featviz._storage import connect, transaction

    con = connect(tmp_path / "db.sqlite")
    con.execute("CREATE TABLE t(a)")
    with transaction(con):
        con.execute("INSERT INTO t VALUES (?)", (b"kept" * 1000,))
    con.execute("PRAGMA max_page_count=8")  # the database may not grow: what a full disk does
    with pytest.raises(FeatvizError, match="database or disk is full; free some space"):
        with transaction(con):
            for _ in range(100):
                con.execute("INSERT INTO t VALUES (?)", (b"y" * 10_000,))
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    con.close()


def test_a_second_build_into_a_locked_site_is_refused(tmp_path, tiny):
    from conftest import empty_site
    from featviz._storage import FolderLock
    from featviz.microscope import build

    site = empty_site(tmp_path / "site", tiny)
    with FolderLock(site, "held by the test"):  # what a running build holds
        before = sorted(p.name for p in site.iterdir())
        with pytest.raises(FeatvizError, match="being built by another process"):
            build(tiny, site, units=2, steps=1, size=32)
    assert sorted(p.name for p in site.iterdir()) == before
