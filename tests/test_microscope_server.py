"""``featviz serve`` (featviz.server): files, safety, on-demand renders and the bounded queue.

Requests go through httpx's ASGI transport inside one event loop per test, so the
queue's workers run exactly as under uvicorn. The site is built with a tiny CNN.
"""
from __future__ import annotations

import asyncio
import os
import re
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'featviz[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is needed for the server tests")

from featviz.microscope import build  # noqa: E402
from featviz.server import create_app  # noqa: E402

from test_microscope import TINY, make_photos, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def site(tmp_path_factory, model):
    photos = make_photos(tmp_path_factory.mktemp("photos"))
    site = tmp_path_factory.mktemp("site")
    build(model, site, photos, **(TINY | {"layers": ["c2", "c3"]}))
    return site


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


JSON = {"content-type": "application/json"}
BASE = "http://127.0.0.1:8000"  # the server checks Host (DNS rebinding): an address, as a browser would send


def client(app, host="127.0.0.1"):
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url=BASE)


async def wait_job(c, job_id, timeout=30.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        job = (await c.get(f"/api/jobs/{job_id}")).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


# -- files -------------------------------------------------------------------------------------------------
def test_serves_the_site_at_stable_urls(site, model):
    async def main():
        async with client(create_app(site, model)) as c:
            r = await c.get("/")
            assert r.status_code == 200 and "tiny" in r.text
            r = await c.get("/tiny/c2/1/")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert '<meta name="featviz-serve" content="1">' in r.text and "c2 <span" in r.text
            assert r.headers["x-content-type-options"] == "nosniff" and "script-src 'self'" in r.headers[
                "content-security-policy"]
            r = await c.get("/tiny/c2/1", follow_redirects=False)
            assert r.status_code == 307 and r.headers["location"] == "/tiny/c2/1/"
            r = await c.get(BASE + "//tiny", follow_redirects=False)  # never a redirect to another host
            assert r.status_code == 307 and r.headers["location"] == "/tiny/"
            r = await c.get("/tiny/c2/1/channel.png")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
            assert (await c.head("/tiny/c2/1/channel.png")).status_code == 200
            assert (await c.get("/static/microscope.js")).status_code == 200
            assert (await c.get("/tiny/c3/")).status_code == 200
            info = (await c.get("/api/info")).json()
            assert info["models"]["tiny"]["name"] == "tiny" and info["limits"]["max_steps"] == 256
    run(main())


def test_unbuilt_units_and_layers_get_pages_made_on_demand(site, model):
    async def main():
        async with client(create_app(site, model)) as c:
            r = await c.get("/tiny/c2/9/")  # c2 has 12 units, 4 built
            assert r.status_code == 200 and 'data-pending="channel"' in r.text and 'rel="next" href="../10/' in r.text
            assert 'id="examples-top_max"' in r.text  # from the example store, which covers every unit
            for src in re.findall(r'<img src="../../../([^"]+)"', r.text):
                assert (await c.get("/" + src)).status_code == 200
            r = await c.get("/tiny/c1/")  # c1 was not built at all
            assert r.status_code == 200 and r.text.count('class="tile unbuilt"') == 8
            assert (await c.get("/tiny/c2/12/")).status_code == 404
            assert (await c.get("/tiny/fc/3/")).status_code == 404
            assert (await c.get("/nomodel/c2/1/")).status_code == 404
    run(main())


@pytest.mark.parametrize("path", [
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/tiny/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd",
    "/%2e%2e%5c%2e%2e%5cetc%5cpasswd", "/tiny/%00/x", "/manifest.sqlite", "/.lock", "/tiny/_examples/index.sqlite",
    "/tiny/_examples/.lock", "/etc/passwd", "/outside_link/secret.txt"])
def test_no_file_outside_the_site_or_private_to_it(site, model, path, tmp_path_factory):
    secret = tmp_path_factory.mktemp("outside") / "secret.txt"
    secret.write_text("secret")
    link = site / "outside_link"
    if not link.exists():
        os.symlink(secret.parent, link)

    async def main():
        async with client(create_app(site, model)) as c:
            r = await c.get(path)
            assert 400 <= r.status_code < 500, (path, r.status_code)
            assert "secret" not in r.text and "root:" not in r.text
    run(main())


def test_malformed_and_oversized_requests_get_4xx(site, model):
    async def main():
        app = create_app(site, model, max_steps=50, max_size=64)
        async with client(app) as c:
            post = lambda **kw: c.post("/api/render", **({"headers": JSON} | kw))  # noqa: E731
            assert (await post(content=b"{not json")).status_code == 400
            assert (await post(json=[1, 2])).status_code == 400
            assert (await post(json={"layer": "c2"})).status_code == 422          # no unit
            assert (await post(json={"layer": "c2", "unit": -1})).status_code == 422
            assert (await post(json={"layer": "c2", "unit": "x"})).status_code == 422
            assert (await post(json={"layer": "c2", "unit": 1, "rm": "-rf"})).status_code == 422
            assert (await post(json={"layer": "c2", "unit": 1, "kinds": ["all"]})).status_code == 422
            r = await post(json={"layer": "c2", "unit": 1, "steps": 51})
            assert r.status_code == 422 and "limit of 50" in r.json()["detail"]
            assert (await post(json={"layer": "c2", "unit": 1, "size": 65})).status_code == 422
            assert (await post(json={"layer": "c2", "unit": 1, "size": 8})).status_code == 422
            assert (await post(json={"layer": "c2", "unit": 12})).status_code == 422
            assert (await post(json={"layer": "nope", "unit": 1})).status_code == 404
            assert (await post(json={"layer": "fc", "unit": 1})).status_code == 422
            assert (await post(json={"model": "other", "layer": "c2", "unit": 1})).status_code == 404
            assert (await post(content=b"{" + b" " * 5000 + b"}")).status_code == 413
            assert (await post(content=b"{}", headers=JSON | {"content-length": "999999"})).status_code == 413
            assert (await c.get("/" + "a" * 2000)).status_code == 414
            assert (await c.put("/tiny/c2/1/channel.png", content=b"x")).status_code == 405
            assert (await c.get("/api/jobs/" + "f" * 16)).status_code == 404
            assert app.state.microscope.queue.queued == 0  # nothing bad got queued
    run(main())


# -- on-demand rendering -------------------------------------------------------------------------------------
def test_renders_an_unbuilt_unit_on_demand(site, model):
    async def main():
        async with client(create_app(site, model)) as c:
            r = await c.post("/api/render", json={"layer": "c3", "unit": 9, "steps": 3, "size": 32})
            assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
            job = await wait_job(c, r.json()["id"])
            assert job["status"] == "done" and job["progress"] == 1.0, job
            assert sorted(job["files"]) == ["channel", "diversity", "negative", "neuron"]
            assert len(job["files"]["diversity"]) == 4
            for files in job["files"].values():
                for f in files:
                    img = await c.get("/" + f)
                    assert img.status_code == 200 and img.content[:4] == b"\x89PNG"
            # the same request again is answered from the cache at once
            again = await c.post("/api/render", json={"layer": "c3", "unit": 9, "steps": 3, "size": 32})
            assert again.status_code == 200 and again.json()["status"] == "done"
            assert again.json()["files"] == job["files"]
            # a prebuilt unit with other settings, one kind only
            r = await c.post("/api/render", json={"layer": "c3", "unit": 1, "steps": 2, "size": 40, "seed": 7,
                                                  "kinds": ["channel"]})
            job = await wait_job(c, r.json()["id"])
            assert job["status"] == "done" and list(job["files"]) == ["channel"]
            assert "_live/tiny/c3/1/" in job["files"]["channel"][0]
    run(main())


class Gate:
    """A stand-in renderer that blocks until released, recording the order jobs start in."""

    def __init__(self):
        self.release = threading.Event()
        self.started = []

    def __call__(self, job):
        self.started.append((job.client, job.unit))
        if not self.release.wait(20):
            raise RuntimeError("gate never opened")


def test_full_queue_and_greedy_clients_get_429_at_once(site, model):
    async def main():
        app = create_app(site, model, workers=1, max_queue=2, per_client=2)
        gate = Gate()
        app.state.microscope.queue.runner = gate
        async with client(app, "10.0.0.1") as a, client(app, "10.0.0.2") as b, client(app, "10.0.0.3") as d:
            req = lambda u: {"layer": "c2", "unit": u, "steps": 2, "size": 32}  # noqa: E731
            first = await a.post("/api/render", json=req(0))
            assert first.status_code == 202
            for _ in range(100):  # the worker takes it
                if gate.started:
                    break
                await asyncio.sleep(0.01)
            assert (await a.post("/api/render", json=req(1))).status_code == 202     # queued (1 of 2)
            assert (await a.post("/api/render", json=req(2))).status_code == 429     # a: 2 jobs already
            # the same request as a running job is not a new job
            same = await a.post("/api/render", json=req(0))
            assert same.status_code == 202 and same.json()["id"] == first.json()["id"]
            assert (await b.post("/api/render", json=req(3))).status_code == 202     # queued (2 of 2)
            t = time.monotonic()
            full = await d.post("/api/render", json=req(4))
            assert full.status_code == 429 and time.monotonic() - t < 2              # answered, not hung
            assert "full" in full.json()["detail"] and full.headers["retry-after"]
            status = (await b.get(f"/api/jobs/{(await b.post('/api/render', json=req(3))).json()['id']}")).json()
            assert status["status"] == "queued" and status["ahead"] >= 1
            gate.release.set()
            await wait_job(a, first.json()["id"])
            assert (await d.post("/api/render", json=req(4))).status_code == 202     # room again
    run(main())


def test_round_robin_keeps_one_client_from_starving_another(site, model):
    async def main():
        app = create_app(site, model, workers=1, max_queue=8, per_client=4)
        gate = Gate()
        app.state.microscope.queue.runner = gate
        async with client(app, "10.0.0.1") as a, client(app, "10.0.0.2") as b:
            req = lambda u: {"layer": "c2", "unit": u, "steps": 2, "size": 32}  # noqa: E731
            ids = [(await a.post("/api/render", json=req(u))).json()["id"] for u in (0, 1, 2, 3)]
            ids.append((await b.post("/api/render", json=req(10))).json()["id"])
            gate.release.set()
            for i in ids:
                await wait_job(a, i)
        # a's first job was already running; b's job goes next, not after all of a's
        assert gate.started[:3] == [("10.0.0.1", 0), ("10.0.0.2", 10), ("10.0.0.1", 1)]
    run(main())


def test_a_job_past_its_time_limit_stops(site, model):
    async def main():
        app = create_app(site, model, job_timeout=0.3, max_steps=100_000)
        async with client(app) as c:
            r = await c.post("/api/render", json={"layer": "c3", "unit": 2, "steps": 100_000, "size": 32})
            t = time.monotonic()
            job = await wait_job(c, r.json()["id"], timeout=20)
            assert job["status"] == "timeout" and "time limit" in job["error"]
            assert time.monotonic() - t < 10
            assert 0 < job["progress"] < 0.01
            # the worker is free again
            r = await c.post("/api/render", json={"layer": "c3", "unit": 3, "steps": 2, "size": 32,
                                                  "kinds": ["neuron"]})
            assert (await wait_job(c, r.json()["id"]))["status"] == "done"
    run(main())


def test_cancel_a_queued_job(site, model):
    async def main():
        app = create_app(site, model, workers=1, per_client=3)
        gate = Gate()
        app.state.microscope.queue.runner = gate
        async with client(app) as c, client(app, "10.9.9.9") as other:
            await c.post("/api/render", json={"layer": "c2", "unit": 0})
            queued = (await c.post("/api/render", json={"layer": "c2", "unit": 1})).json()
            assert (await other.delete(f"/api/jobs/{queued['id']}")).status_code == 403
            r = await c.delete(f"/api/jobs/{queued['id']}")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            gate.release.set()
    run(main())
