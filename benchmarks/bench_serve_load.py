"""``featviz serve`` under load: render bursts, idle connections, page latency while renders run.

    OMP_NUM_THREADS=1 python benchmarks/bench_serve_load.py [--seconds 30] [--runs 3]

A site of EfficientNet-Lite0 (one built unit of blocks.10, made in a temporary folder) is served by
uvicorn in this process (``serve_in_background``, the limits of ``featviz serve``); on-demand renders
are real (32 steps at 96 px). Figures:

1. Page latency (GET of a prebuilt unit page, a new connection each, as a browser's first visit):
   p50 / p99 with the server idle, the baseline of the ratios below.
2. Render burst: 200 render POSTs and 50 page GETs, all 250 connections opened before any request is
   sent; the status counts of each (the issue this answers saw 503 on all 250 in 2 of 3 runs).
3. Idle connections: 64 (then 300, past the connection cap of 256) connections held open sending
   nothing; the status and latency of page GETs meanwhile.
4. Page latency under load: 10 clients (each its own loopback address, so the fair queue sees 10
   clients) POST renders of unbuilt units as fast as answers come, for --seconds, while the
   queue's worker renders; p50 / p99 of prebuilt page GETs meanwhile, and the ratio to (1).

The machine these run on may be shared: read the ratios to the baseline of the same run.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path


def request(port: int, method: str, path: str, body: bytes = b"", source: str = "127.0.0.1") -> tuple[int, float]:
    """(status, seconds to the whole answer) of one request on a new connection."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120, source_address=(source, 0)) as sock:
        sock.sendall(head + body)
        answer = read_all(sock)
    return status_of(answer), time.perf_counter() - t


def read_all(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def percentiles(seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    pick = lambda q: ms[min(len(ms) - 1, int(q * (len(ms) - 1) + 0.5))]  # noqa: E731
    return f"p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms ({len(ms)} requests)"


def page_latencies(port: int, page: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        status, seconds = request(port, "GET", page)
        assert status == 200, status
        out.append(seconds)
    return out


def burst(port: int, page: str, layer: str, channels: int) -> tuple[collections.Counter, collections.Counter]:
    bodies = [json.dumps({"layer": layer, "unit": 1 + u % (channels - 1)}).encode() for u in range(200)]
    reqs = [("POST", "/api/render", b) for b in bodies] + [("GET", page, b"")] * 50
    socks = [socket.create_connection(("127.0.0.1", port), timeout=300) for _ in reqs]
    try:
        for sock, (method, path, body) in zip(socks, reqs):
            sock.sendall((f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        statuses = [status_of(read_all(sock)) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    return collections.Counter(statuses[:200]), collections.Counter(statuses[200:])


def idle_connections(port: int, page: str, n: int) -> tuple[collections.Counter, list[float]]:
    idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(n)]
    try:
        answers = [request(port, "GET", page) for _ in range(20)]
    finally:
        for sock in idle:
            sock.close()
    return collections.Counter(s for s, _ in answers), [t for _, t in answers]


def under_load(port: int, page: str, layer: str, channels: int, seconds: float) -> dict:
    stop = threading.Event()
    posted: collections.Counter = collections.Counter()

    def client(i: int):
        unit = i
        while not stop.is_set():
            unit = 1 + (unit + 10) % (channels - 1)
            status, _ = request(port, "POST", "/api/render", json.dumps({"layer": layer, "unit": unit}).encode(),
                                source=f"127.0.0.{i + 2}")
            posted[status] += 1
            if status == 429:
                time.sleep(0.2)  # as a page would, before asking again

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(10)]
    for t in threads:
        t.start()
    latencies, statuses = [], collections.Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, t = request(port, "GET", page)
        statuses[status] += 1
        latencies.append(t)
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(120)
    return {"latencies": latencies, "pages": statuses, "posts": posted}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--layer", default="blocks.10")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of the render load (4)")
    ap.add_argument("--runs", type=int, default=3, help="render bursts (2)")
    ap.add_argument("--requests", type=int, default=200, help="page GETs of the baseline (1)")
    args = ap.parse_args()

    import torch

    import featviz
    from featviz.microscope import build
    from featviz.server import serve_in_background

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads()
    torch.set_num_threads(threads)
    model = featviz.load(args.model)
    channels = model.layer(args.layer).channels
    site = Path(tempfile.mkdtemp(prefix="bench-serve-load-"))
    print(f"# featviz serve under load: {args.model} {args.layer}, {threads} intra-op thread(s), "
          f"{os.cpu_count()} CPUs (maybe shared), torch {torch.__version__}", flush=True)
    try:
        build(model, site, None, quick=True, layers=[args.layer], units=1, steps=2, size=32, n_classes=0, classes=())
        page = f"/{model.name}/{args.layer}/0/"
        with serve_in_background(site, model) as running:
            port = running.port
            base = page_latencies(port, page, args.requests)
            print(f"1. prebuilt page, server idle: {percentiles(base)}", flush=True)
            for run in range(args.runs):
                posts, pages = burst(port, page, args.layer, channels)
                print(f"2. render burst {run + 1}: 200 POSTs -> {dict(posts)}; 50 page GETs -> {dict(pages)}",
                      flush=True)
            for n in (64, 300):
                statuses, lat = idle_connections(port, page, n)
                print(f"3. {n} idle connections held: page GETs -> {dict(statuses)}, {percentiles(lat)}", flush=True)
            load = under_load(port, page, args.layer, channels, args.seconds)
            p50 = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
            print(f"4. under render load ({args.seconds:g} s, 10 clients): page GETs -> {dict(load['pages'])}, "
                  f"{percentiles(load['latencies'])}; p50 {p50(load['latencies']) / p50(base):.2f}x the idle p50; "
                  f"render POSTs -> {dict(load['posts'])}", flush=True)
    finally:
        shutil.rmtree(site, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
