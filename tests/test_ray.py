"""The Ray engine on a local Ray cluster of 2 CPUs: same sites and stores as the local engine,
a killed worker is retried, errors come back as themselves."""
import hashlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from featviz.engine import Job  # noqa: E402
from featviz.engine.ray_engine import RayEngine  # noqa: E402
from featviz.errors import FeatvizError  # noqa: E402

pytestmark = pytest.mark.timeout(300)

# Small but real: two depths (one read out through the classifier, one through attribution), every panel.
BUILD = dict(layers=["blocks.2", "blocks.8"], units=4, steps=12, size=64, batch_size=2, classes=(309,), k=3)


@pytest.fixture(scope="module")
def engine():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield RayEngine()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """Each Ray task holds one CPU, so its worker computes with one thread; CPU kernels may round
    differently with another thread count, so the local reference runs with one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_site(lite0, one_thread, tmp_path_factory):
    from featviz.microscope import build

    site = tmp_path_factory.mktemp("local") / "site"
    report = build(lite0, site, **BUILD)
    assert report.engine == "local"
    return site


def _files(site: Path) -> dict:
    return {p.relative_to(site).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(site.rglob("*")) if p.is_file() and p.suffix in (".png", ".jpg", ".html", ".json")}


def _manifest(site: Path) -> dict:
    con = sqlite3.connect(site / "manifest.sqlite")
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(map(repr, con.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}
    finally:
        con.close()


def test_engine_sees_the_two_cpus(engine):
    assert engine.workers == 2
    assert engine.gpus_per_task == 0
    assert "2 workers" in engine.describe()


def test_build_on_ray_equals_local(lite0, engine, one_thread, local_site, tmp_path):
    from featviz.microscope import build

    site = tmp_path / "site"
    report = build(lite0, site, engine=engine, **BUILD)
    assert report.engine == "ray"
    assert report.made["channel"] == 8 and report.made["class"] == 1
    assert _manifest(site) == _manifest(local_site)
    files = _files(site)
    assert len(files) > 50
    assert files == _files(local_site)
    again = build(lite0, site, engine=engine, **BUILD)  # resumable on Ray as well: nothing left to do
    assert sum(again.made.values()) == 0


def _running_task_pid(name: str = "ray::_run_job") -> int | None:
    """A worker process that is executing a task now (Ray titles it after the task)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(name):
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds worker processes through /proc")
def test_worker_killed_mid_task_is_retried_and_the_site_is_complete(lite0, engine, one_thread, local_site,
                                                                     tmp_path):
    from featviz.microscope import build

    site = tmp_path / "site"
    outcome = {}

    def run():
        try:
            outcome["report"] = build(lite0, site, engine=engine, **BUILD)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        pid = _running_task_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.02)
    thread.join(timeout=240)
    assert killed is not None, "no task was caught running"
    assert "error" not in outcome, outcome.get("error")
    assert not thread.is_alive()
    # Complete, nothing lost or doubled: the same manifest and files as the local build.
    assert _manifest(site) == _manifest(local_site)
    assert _files(site) == _files(local_site)


def test_examples_on_ray_equal_local(lite0, engine, one_thread, tmp_path):
    from featviz.examples import PassOptions, collect

    local = collect(lite0, None, ["blocks.2", "blocks.8"], 3, store=tmp_path / "local", batch_size=4)
    logs = []
    remote = collect(lite0, None, ["blocks.2", "blocks.8"], 3, store=tmp_path / "ray", batch_size=4,
                     engine=engine, options=PassOptions(log=logs.append))
    assert any("2 shards" in m for m in logs)
    assert remote.settings == local.settings
    assert remote.digest() == local.digest()
    assert remote.num_images == local.num_images > 10


def test_cli_examples_joins_a_running_cluster(lite0, engine, one_thread, tmp_path):
    from featviz.examples import collect, open_store

    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "featviz", "examples", "efficientnet_lite0", "--layers", "blocks.5",
           "--top", "2", "--bottom", "2", "--batch-size", "8", "-o", str(out), "-q", "--engine", "ray", "--address", address]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 shards" in res.stderr
    local = collect(lite0, None, ["blocks.5"], 2, store=tmp_path / "local", batch_size=8)
    with open_store(out) as st:
        assert st.digest() == local.digest()


def test_a_jobs_own_error_comes_back_as_itself(lite0, engine):
    from featviz.microscope import visuals
    from featviz.microscope.settings import preset

    bad = Job(visuals.render_kind, ("channel", [("blocks.99", 0)], preset("quick"), 0))
    with pytest.raises(FeatvizError, match="blocks.99"):
        list(engine.run(lite0, [bad]))
