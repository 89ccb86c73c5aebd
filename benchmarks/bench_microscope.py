"""Microscope benchmark: build throughput (batched vs one unit at a time) and time to first byte.

    OMP_NUM_THREADS=1 python benchmarks/bench_microscope.py [--layers blocks.10] [--units 8] [--quick-steps 32]

1. Units per minute of a microscope build of EfficientNet-Lite0 at the quick settings (32 steps,
   96 px, four panels rendered per unit: channel, neuron, negative, 4 diversity images), with the
   units rendered in batches (8 per batch, 4 for diversity) and one at a time. "Render minutes"
   count the optimizations only; "build minutes" count the whole build of that layer (dataset
   examples of the embedded demo photos, classes, DeepDream, pages).
2. Time to first byte under ``featviz serve`` (uvicorn on 127.0.0.1, in this process) for a
   prebuilt unit page, for the page of an unbuilt unit (made on the fly), for the answer to an
   on-demand render request (202, queued), and for the first byte of the rendered image of an
   unbuilt unit (request -> queue -> render -> PNG): channel only, and all four panels.

Both builds go to temporary folders that are removed afterwards.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_once(model, layers, units, batched: bool, steps: int, size: int) -> dict:
    from featviz.microscope import build

    site = Path(tempfile.mkdtemp(prefix="bench-microscope-"))
    try:
        kw = dict(layers=layers, units=units, steps=steps, size=size, recipe="quick", n_classes=0, classes=())
        if not batched:
            kw |= dict(batch_size=1, diversity_batch=1)
        t = time.perf_counter()
        report = build(model, site, None, quick=True, **kw)
        wall = time.perf_counter() - t
        render_s = sum(report.seconds[k] for k in ("channel", "neuron", "negative", "diversity"))
        n = report.units_rendered
        return {"kinds": {k: round(report.seconds[k], 1) for k in ("channel", "neuron", "negative", "diversity")},
                "units": n, "render_s": render_s, "build_s": wall, "examples_s": report.seconds["examples"],
                "units_per_min_render": 60 * n / render_s, "units_per_min_build": 60 * n / wall,
                "batches": report.batches, "site": None}
    finally:
        shutil.rmtree(site, ignore_errors=True)


def ttfb(port: int, method: str, path: str, body: bytes | None = None) -> tuple[float, int, bytes]:
    """Seconds from sending the request to the first byte of the response (status line read)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.connect()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    t = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    first = time.perf_counter() - t
    data = resp.read()
    conn.close()
    return first, resp.status, data


def on_demand(port: int, layer: str, unit: int, kinds: list[str], steps: int, size: int) -> dict:
    body = json.dumps({"layer": layer, "unit": unit, "steps": steps, "size": size, "kinds": kinds}).encode()
    t0 = time.perf_counter()
    post_ttfb, status, data = ttfb(port, "POST", "/api/render", body)
    assert status == 202, (status, data)
    job = json.loads(data)
    while job["status"] in ("queued", "running"):
        time.sleep(0.05)
        _, _, data = ttfb(port, "GET", f"/api/jobs/{job['id']}")
        job = json.loads(data)
    assert job["status"] == "done", job
    t_img = time.perf_counter()
    img_ttfb, status, png = ttfb(port, "GET", "/" + job["files"][kinds[0]][0])
    assert status == 200 and png[:4] == b"\x89PNG"
    return {"post_ttfb_ms": 1000 * post_ttfb, "image_first_byte_s": t_img + img_ttfb - t0,
            "render_s": job.get("seconds")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--layers", default="blocks.10", help="layers of the timed builds")
    ap.add_argument("--units", type=int, default=8, help="units per layer")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--requests", type=int, default=30, help="requests per page TTFB figure")
    ap.add_argument("--skip-builds", action="store_true", help="only the server figures")
    args = ap.parse_args()

    import torch

    import featviz

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads()
    torch.set_num_threads(threads)
    model = featviz.load(args.model)
    layers = [l for l in args.layers.split(",") if l]
    print(f"# microscope benchmark: {args.model}, layers {layers}, {args.units} units each, {args.steps} steps at "
          f"{args.size} px, {threads} intra-op thread(s), torch {torch.__version__}")
    build_once(model, layers, 1, True, 2, 32)  # warm-up (and the demo photos, if not cached yet)

    if not args.skip_builds:
        rows = []
        for batched in (True, False):
            r = build_once(model, layers, args.units, batched, args.steps, args.size)
            rows.append((batched, r))
            print(f"{'batched' if batched else 'one at a time':>14}: {r['units']} units, {r['batches']} render batches, "
                  f"render {r['render_s']:.1f} s -> {r['units_per_min_render']:.2f} units/min; whole build "
                  f"{r['build_s']:.1f} s -> {r['units_per_min_build']:.2f} units/min; seconds per panel kind "
                  f"{r['kinds']}", flush=True)
        speedup = rows[0][1]["units_per_min_render"] / rows[1][1]["units_per_min_render"]
        print(f"batched / one at a time (render): {speedup:.2f}x")

    # -- server -----------------------------------------------------------------------------------------
    from featviz.microscope import build, slug
    from featviz.server import serve_in_background

    site = Path(tempfile.mkdtemp(prefix="bench-microscope-serve-"))
    layer = layers[0]
    try:
        build(model, site, None, quick=True, layers=[layer], units=1, steps=2, size=32, n_classes=0, classes=())
        running = serve_in_background(site, model)
        port = running.port
        folder = f"{slug(model.name)}/{slug(layer)}"  # the site's URL names of the model and the layer
        try:
            for label, path in (("prebuilt unit page", f"/{folder}/0/"),
                                ("unbuilt unit page (made on the fly)", f"/{folder}/5/"),
                                ("static image", f"/{folder}/0/channel.png")):
                times = []
                for _ in range(args.requests):
                    t, status, _ = ttfb(port, "GET", path)
                    assert status == 200, (path, status)
                    times.append(1000 * t)
                times.sort()
                print(f"TTFB {label}: median {statistics.median(times):.2f} ms, "
                      f"p95 {times[int(0.95 * (len(times) - 1))]:.2f} ms ({len(times)} requests)")
            for kinds, unit in ((["channel"], 6), (["channel", "neuron", "negative", "diversity"], 7)):
                r = on_demand(port, layer, unit, kinds, args.steps, args.size)
                print(f"on-demand render of unbuilt {layer}:{unit} ({'+'.join(kinds)}, {args.steps} steps, "
                      f"{args.size} px): request answered (202) in {r['post_ttfb_ms']:.2f} ms; first byte of the "
                      f"image {r['image_first_byte_s']:.2f} s after the request (render {r['render_s']:.2f} s)")
        finally:
            running.stop()
    finally:
        shutil.rmtree(site, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
