"""``featviz serve`` (featviz.server): files, safety, on-demand renders and the bounded queue.

Requests go through httpx's ASGI transport inside one event loop per test, so the
queue's workers run exactly as under uvicorn. The site is built with a tiny CNN.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import re
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'featviz[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is needed for the server tests")

from featviz.microscope import build  # noqa: E402
from featviz.server import create_app  # noqa: E402

from conftest import one_error_line  # noqa: E402
from test_microscope import TINY, make_photos, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def site(tmp_path_factory, model):
    photos = make_photos(tmp_path_factory.mktemp("photos"))
    site = tmp_path_factory.mktemp("site")
    # plateau 0: on-demand renders (which take the build's settings) run every step they are asked for, so a
    # job with a huge step count can only end at its time limit
    build(model, site, photos, **(TINY | {"layers": ["c2", "c3"], "plateau": 0, "diversity_plateau": 0}))
    return site


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


JSON = {"content-type": "application/json"}
BASE = "http://127.0.0.1:8000"  # the server checks Host (DNS rebinding): an address, as a browser would send


def client(app, host="127.0.0.1"):
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url=BASE)


async def wait_job(c, job_id, timeout=60.0):  # a guard against a hang, not a measure of speed
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
            assert len(job["files"]["diversity"]) == 3
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
        self.entered = threading.Event()
        self.started = []

    def __call__(self, job):
        self.started.append((job.client, job.unit))
        self.entered.set()
        if not self.release.wait(60):
            raise RuntimeError("gate never opened")

    @classmethod
    def on(cls, app) -> "Gate":
        """A gate installed as ``app``'s renderer: the test decides when each job runs."""
        gate = cls()
        app.state.microscope.queue.runner = gate
        return gate

    async def wait_entered(self):
        """Until a worker runs a job (an event, not a guess at how long a busy machine takes)."""
        assert await asyncio.to_thread(self.entered.wait, 60), "no worker took the job"


def test_full_queue_and_greedy_clients_get_429_at_once(site, model):
    async def main():
        app = create_app(site, model, workers=1, max_queue=2, per_client=2)
        gate = Gate.on(app)
        async with client(app, "10.0.0.1") as a, client(app, "10.0.0.2") as b, client(app, "10.0.0.3") as d:
            req = lambda u: {"layer": "c2", "unit": u, "steps": 2, "size": 32}  # noqa: E731
            first = await a.post("/api/render", json=req(0))
            assert first.status_code == 202
            await gate.wait_entered()  # the worker takes it
            assert (await a.post("/api/render", json=req(1))).status_code == 202     # queued (1 of 2)
            assert (await a.post("/api/render", json=req(2))).status_code == 429     # a: 2 jobs already
            # the same request as a running job is not a new job
            same = await a.post("/api/render", json=req(0))
            assert same.status_code == 202 and same.json()["id"] == first.json()["id"]
            assert (await b.post("/api/render", json=req(3))).status_code == 202     # queued (2 of 2)
            full = await d.post("/api/render", json=req(4))
            # answered, not hung: the 429 came while the only worker is still held by the gate
            assert full.status_code == 429 and not gate.release.is_set() and gate.started == [("10.0.0.1", 0)]
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
        gate = Gate.on(app)
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


class TickingClock:
    """A clock that moves 1 ms each time it is read, whatever the machine's load: a job's time
    limit then stops it after a fixed number of steps, not after however many fit in 0.3 s."""

    def __init__(self):
        self.reads = itertools.count(1)

    def __call__(self) -> float:
        return next(self.reads) / 1000


def test_a_job_past_its_time_limit_stops(site, model):
    async def main():
        app = create_app(site, model, job_timeout=0.3, max_steps=100_000, clock=TickingClock())
        async with client(app) as c:
            r = await c.post("/api/render", json={"layer": "c3", "unit": 2, "steps": 100_000, "size": 32})
            job = await wait_job(c, r.json()["id"], timeout=60)
            assert job["status"] == "timeout" and "time limit" in job["error"]
            assert job["seconds"] < 0.4  # on the job's clock: it stopped within steps of its limit
            assert 0 < job["progress"] < 0.01
            # the worker is free again
            r = await c.post("/api/render", json={"layer": "c3", "unit": 3, "steps": 2, "size": 32,
                                                  "kinds": ["neuron"]})
            assert (await wait_job(c, r.json()["id"]))["status"] == "done"
    run(main())


def test_cancel_a_queued_job(site, model):
    async def main():
        app = create_app(site, model, workers=1, per_client=3)
        gate = Gate.on(app)
        async with client(app) as c, client(app, "10.9.9.9") as other:
            await c.post("/api/render", json={"layer": "c2", "unit": 0})
            queued = (await c.post("/api/render", json={"layer": "c2", "unit": 1})).json()
            assert (await other.delete(f"/api/jobs/{queued['id']}")).status_code == 403
            r = await c.delete(f"/api/jobs/{queued['id']}")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            gate.release.set()
    run(main())


# -- requests that must never get a 500 or be coerced ---------------------------------------------------------
def assert_one_line_error(r, status):
    """An error answer: the status, a one-line JSON detail (no traceback) and the headers of any page."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert "\n" not in r.text.strip() and "Traceback" not in r.text, r.text[:300]
    assert r.json()["detail"]
    assert r.headers["x-content-type-options"] == "nosniff", dict(r.headers)
    assert "script-src 'self'" in r.headers["content-security-policy"], dict(r.headers)


def test_request_fields_are_strict_and_bodies_cannot_nest_too_deep(site, model):
    async def main():
        app = create_app(site, model)
        async with client(app) as c:
            post = lambda **kw: c.post("/api/render", **({"headers": JSON} | kw))  # noqa: E731
            for bad in ({"layer": "c2", "unit": True}, {"layer": "c2", "unit": "5"}, {"layer": "c2", "unit": 5.0},
                        {"layer": "c2", "unit": 1, "steps": "3"}, {"layer": 2, "unit": 1}):
                r = await post(json=bad)
                assert_one_line_error(r, 422)
            assert "unit" in (await post(json={"layer": "c2", "unit": True})).json()["detail"]
            deep = b"[" * 1500 + b"]" * 1500  # 3 KB: under the size limit, over Python's recursion limit
            r = await post(content=deep)
            assert_one_line_error(r, 400)
            assert "nested too deep" in r.json()["detail"]
            assert_one_line_error(await post(content=b"null"), 400)
            assert_one_line_error(await post(content=b""), 400)
            assert app.state.microscope.queue.queued == 0
    run(main())


@pytest.mark.parametrize("path", ["/tiny/c2/%C2%B2/", "/tiny/c2/%E2%91%A0/", "/%E2%91%A0/", "/tiny/c2/%EF%BC%91/",
                                  "/tiny/c2/1%C2%B2/", "/tiny/%C2%B2/%C2%B2/"])
def test_unicode_digits_in_a_unit_path_are_404_not_500(site, model, path):
    # str.isdigit() accepts '²' (superscript two), '①' (circled one) and fullwidth digits; int() refuses them.
    async def main():
        async with client(create_app(site, model)) as c:
            assert_one_line_error(await c.get(path), 404)
    run(main())


def test_every_error_is_one_line_with_the_security_headers(site, model):
    async def main():
        app = create_app(site, model, max_steps=50, workers=1, per_client=1)
        gate = Gate.on(app)
        async with client(app) as c:
            assert_one_line_error(await c.get("/tiny/c2/99/"), 404)
            assert_one_line_error(await c.get("/api/nothing"), 404)
            assert_one_line_error(await c.get("/api/jobs/" + "f" * 100), 404)
            assert_one_line_error(await c.get("/" + "a" * 2000), 414)
            assert_one_line_error(await c.get("/tiny/%2e%2e/x"), 400)
            assert_one_line_error(await c.put("/tiny/c2/1/channel.png", content=b"x"), 405)
            assert_one_line_error(await c.get("/manifest.sqlite"), 404)
            post = lambda **kw: c.post("/api/render", **({"headers": JSON} | kw))  # noqa: E731
            assert_one_line_error(await post(content=b"{not json"), 400)
            assert_one_line_error(await post(json={"layer": "c2", "unit": 1, "steps": 51}), 422)
            assert_one_line_error(await post(content=b"{" + b" " * 5000 + b"}"), 413)
            assert_one_line_error(await c.post("/api/render", content=b"{}"), 415)
            assert (await post(json={"layer": "c2", "unit": 1, "steps": 2})).status_code == 202
            await gate.wait_entered()
            assert_one_line_error(await post(json={"layer": "c2", "unit": 2, "steps": 2}), 429)
            gate.release.set()
    run(main())


def test_a_damaged_manifest_is_a_one_line_500_and_built_pages_stay_served(site, model, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy, symlinks=True)

    async def main():
        app = create_app(copy, model)
        (copy / "manifest.sqlite").write_bytes(b"this is not an SQLite database" * 100)
        async with client(app) as c:
            for r in (await c.get("/api/info"), await c.get("/tiny/c2/9/"),
                      await c.post("/api/render", json={"layer": "c2", "unit": 9})):
                assert_one_line_error(r, 500)
                assert "manifest" in r.json()["detail"]
            built = await c.get("/tiny/c2/1/")
            assert built.status_code == 200 and "c2 <span" in built.text
    run(main())


def test_a_body_that_does_not_arrive_gets_408(site, model):
    async def main():
        app = create_app(site, model, body_timeout=0.2)

        async def never_finished():
            yield b'{"layer": "c2", '
            await asyncio.Event().wait()  # the rest never comes

        async with client(app) as c:
            r = await c.post("/api/render", content=never_finished(), headers=JSON)
            assert_one_line_error(r, 408)
    run(main())


# -- exposure: other web sites and rebound host names -------------------------------------------------------
def test_other_web_sites_cannot_queue_renders_or_rebind_the_host(site, model):
    body = json.dumps({"layer": "c2", "unit": 5, "steps": 2, "size": 32})
    evil = "http://evil.example"

    async def main():
        app = create_app(site, model, served_names=("microscope.lan",))
        Gate.on(app)
        async with client(app) as c:
            # what a page on another site can send without a CORS preflight: a text/plain POST
            r = await c.post("/api/render", content=body, headers={"content-type": "text/plain", "origin": evil})
            assert_one_line_error(r, 403)
            r = await c.post("/api/render", content=body, headers={"content-type": "text/plain"})
            assert_one_line_error(r, 415)
            r = await c.post("/api/render", content=body, headers=JSON | {"origin": evil})
            assert_one_line_error(r, 403)
            r = await c.post("/api/render", content=body, headers=JSON | {"origin": "null"})
            assert_one_line_error(r, 403)
            # DNS rebinding: evil.example now resolves to 127.0.0.1, so Origin and Host agree
            rebound = {"host": "evil.example:8000", "origin": "http://evil.example:8000"}
            assert_one_line_error(await c.post("/api/render", content=body, headers=JSON | rebound), 403)
            assert_one_line_error(await c.get("/tiny/c2/1/", headers={"host": "evil.example:8000"}), 403)
            assert_one_line_error(await c.get("/api/info", headers={"host": "evil.example"}), 403)
            assert_one_line_error(await c.delete("/api/jobs/" + "f" * 16, headers={"origin": evil}), 403)
            assert app.state.microscope.queue.queued == 0 and not app.state.microscope.queue.jobs
            # the page's own origin, addresses, localhost and the names the server was given
            r = await c.post("/api/render", content=body, headers=JSON | {"origin": BASE})
            assert r.status_code == 202, r.text
            for host in ("localhost:8000", "[::1]:8000", "127.0.0.1", "microscope.lan:8000", "LOCALHOST"):
                assert (await c.get("/tiny/c2/1/", headers={"host": host})).status_code == 200, host
    run(main())


# -- under uvicorn: idle connections, slow clients, render bursts ---------------------------------------------
def raw_request(method: str, path: str, port: int, body: bytes = b"", extra: str = "") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n")
    return head.encode() + body


def read_all(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def connect(port: int):
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)  # a guard against a hang only
    return sock


@pytest.fixture
def background(site, model):
    from featviz.server import serve_in_background

    started = []

    def start(**limits):
        running = serve_in_background(site, model, **limits)
        started.append(running)
        return running
    yield start
    for running in started:
        running.stop()


def test_idle_connections_do_not_keep_pages_out(background):
    running = background()
    idle = [connect(running.port) for _ in range(80)]  # held open, sending nothing
    try:
        for path in ("/", "/tiny/c2/1/", "/tiny/c2/1/channel.png"):
            with connect(running.port) as sock:
                sock.sendall(raw_request("GET", path, running.port))
                assert status_of(read_all(sock)) == 200, path
    finally:
        for sock in idle:
            sock.close()


def test_past_the_connection_cap_the_longest_idle_connection_makes_room(background):
    running = background(max_connections=8)
    idle = [connect(running.port) for _ in range(20)]
    try:
        with connect(running.port) as sock:
            sock.sendall(raw_request("GET", "/tiny/c2/1/", running.port))
            assert status_of(read_all(sock)) == 200
        assert idle[0].recv(1) == b""  # the oldest idle one was closed to make room
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_never_finishes_its_headers_is_disconnected(background):
    running = background(header_timeout=0.3)
    with connect(running.port) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\nX-Slow: ".encode())
        assert read_all(sock) == b""  # closed by the server, nothing answered
    with connect(running.port) as sock:  # and one that never sends anything
        assert read_all(sock) == b""


def test_a_request_uvicorn_cannot_parse_gets_a_one_line_400_with_the_headers(background):
    running = background()
    with connect(running.port) as sock:
        sock.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 400 and b"\n" not in body.strip() and json.loads(body)["detail"]
    assert b"x-content-type-options: nosniff" in head.lower() and b"content-security-policy:" in head.lower()


def test_prebuilt_pages_are_served_during_a_render_burst(background):
    running = background()
    gate = Gate.on(running.app)  # the renders themselves do not matter here: the worker holds each job until released
    body = lambda u: json.dumps({"layer": "c2", "unit": u % 12, "steps": 2, "size": 32}).encode()  # noqa: E731
    requests = [raw_request("POST", "/api/render", running.port, body(u), "Content-Type: application/json\r\n")
                for u in range(200)]
    pages = ["/tiny/c2/1/", "/tiny/c3/", "/tiny/c2/1/channel.png", "/static/microscope.js", "/"] * 10
    requests += [raw_request("GET", path, running.port) for path in pages]
    # Every connection is open before any request is sent: 250 at once, whatever the machine's speed.
    socks = [connect(running.port) for _ in requests]
    try:
        for sock, request in zip(socks, requests):
            sock.sendall(request)
        statuses = [status_of(read_all(sock)) for sock in socks]
    finally:
        gate.release.set()
        for sock in socks:
            sock.close()
    renders, page_statuses = statuses[:200], statuses[200:]
    assert page_statuses == [200] * len(pages)
    assert set(renders) <= {202, 429} and 202 in renders and 429 in renders, collections.Counter(renders)


# -- the command line -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_serve_refuses_a_time_limit_that_is_not_a_time(site, value, monkeypatch):
    from click.testing import CliRunner

    import featviz.server
    from featviz.cli import main

    def started(*args, **kwargs):
        raise AssertionError("the server started")
    monkeypatch.setattr(featviz.server, "serve", started)
    result = CliRunner().invoke(main, ["serve", str(site), "--timeout", value])
    line = one_error_line(result)
    assert "--timeout" in line and value in line, line


def test_serve_answers_to_the_names_it_is_given_or_bound_to(site, monkeypatch):
    from click.testing import CliRunner

    import featviz.server
    from featviz.cli import main
    from featviz.server.run import names_for

    calls = []
    monkeypatch.setattr(featviz.server, "serve", lambda *a, **kw: calls.append(kw))
    result = CliRunner().invoke(main, ["serve", str(site), "--host", "0.0.0.0", "--allow-host", "microscope.lan"])
    assert result.exit_code == 0 and "warning: binding to 0.0.0.0" in result.output, result.output
    assert calls[0]["served_names"] == ("microscope.lan",) and calls[0]["limits"].job_timeout == 300
    assert names_for("127.0.0.1") == () and names_for("::1") == ()
    assert names_for("box.example") == ("box.example",)
    assert socket.gethostname() in names_for("0.0.0.0", ("microscope.lan",))
