"""Engine benchmark: the local engine vs Ray with N workers on this machine.

    python benchmarks/bench_engine.py [--workers 2] [--layers blocks.2,blocks.8] [--units 8] [--steps 32]
                                      [--size 96] [--photos DIR] [--images 256]

1. Microscope build of EfficientNet-Lite0 (the same plan on both engines, fresh sites; dataset
   examples of the embedded demo photos): units per minute of the render phase's wall time, and
   the whole build's wall time. The local engine uses torch's threads in one process; Ray runs
   one task per CPU with one thread each.
2. Scheduling overhead per batch: (a) for the build, the worker time not spent computing,
   ``(render wall x workers - sum of job compute seconds) / jobs`` (this includes each worker
   loading the model for its first job, and the tail when fewer jobs than workers are left);
   (b) empty jobs on warm workers (the model loaded), sent one at a time (a round trip each) and
   200 at once.
3. Dataset-examples pass over ``--photos`` (default ../shared/imagenet-samples, else the demo
   photos): images per second, local vs sharded over Ray, and whether the stores are identical
   (they are bit-identical when the local run uses as many threads as each worker, see --threads).

Every ratio below comes from this one run; timings on a shared 2-core VM vary by about 10 %.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path


def noop(model):
    return None


def build_on(model, engine, layers, units, steps, size) -> dict:
    from featviz.microscope import build

    site = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        t = time.perf_counter()
        report = build(model, site, None, quick=True, layers=layers, units=units, steps=steps, size=size,
                       classes=(), n_classes=0, engine=engine)
        wall = time.perf_counter() - t
        # Seconds the jobs computed, as the engine measured them where they ran.
        compute = sum(report.seconds[k] for k in ("channel", "neuron", "negative", "diversity", "dream", "class",
                                                   "classes"))
        return {"units": report.units_rendered, "render_wall": report.render_wall, "build_wall": wall,
                "batches": report.batches, "compute": compute,
                "upm": 60 * report.units_rendered / report.render_wall}
    finally:
        shutil.rmtree(site, ignore_errors=True)


def examples_on(model, engine, photos, layers) -> tuple[float, str, int]:
    from featviz.examples import collect

    out = Path(tempfile.mkdtemp(prefix="bench-engine-ex-")) / "store"
    try:
        t = time.perf_counter()
        store = collect(model, photos, layers, 5, store=out, batch_size=32, engine=engine)
        dt = time.perf_counter() - t
        result = (dt, store.digest(), store.num_images)
        store.close()
        return result
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="Ray CPUs (one worker per CPU)")
    ap.add_argument("--layers", default="blocks.2,blocks.8")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--photos", default=None, help="folder for the examples pass (default ../shared/imagenet-samples)")
    ap.add_argument("--images", type=int, default=256, help="photos of that folder to use (a temporary copy)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the local engine (default torch's)")
    args = ap.parse_args()

    import ray
    import torch

    from featviz.engine import Job
    from featviz.engine.ray_engine import RayEngine
    from featviz.models import load

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load("efficientnet_lite0")
    layers = args.layers.split(",")
    print(f"efficientnet_lite0, layers {layers}, {args.units} units each, {args.steps} steps at {args.size} px; "
          f"local: 1 process, {torch.get_num_threads()} threads; ray: {args.workers} workers x 1 thread", flush=True)

    local = build_on(model, None, layers, args.units, args.steps, args.size)
    print(f"local build: {local['units']} units, {local['batches']} jobs, render {local['render_wall']:.1f} s "
          f"({local['upm']:.1f} units/min), whole build {local['build_wall']:.1f} s", flush=True)

    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    start_s = time.perf_counter() - t
    engine = RayEngine()
    try:
        remote = build_on(model, engine, layers, args.units, args.steps, args.size)
        idle = remote["render_wall"] * engine.workers - remote["compute"]
        print(f"ray build:   {remote['units']} units, {remote['batches']} jobs, render {remote['render_wall']:.1f} s "
              f"({remote['upm']:.1f} units/min), whole build {remote['build_wall']:.1f} s; Ray start {start_s:.1f} s",
              flush=True)
        print(f"  ray ÷ local units/min: {remote['upm'] / local['upm']:.2f}")
        print(f"  worker time not computing: {idle:.2f} s over {remote['batches']} jobs = "
              f"{1000 * idle / remote['batches']:.0f} ms per job "
              f"(mean job compute {1000 * remote['compute'] / remote['batches']:.0f} ms)")

        # Empty jobs to warm workers: pure scheduling + transfer of a tiny result.
        list(engine.run(model, [Job(noop) for _ in range(2 * engine.workers)]))  # load the model everywhere
        one_by_one = RayEngine(max_in_flight=1)  # the next job is sent when the last one is back
        t = time.perf_counter()
        list(one_by_one.run(model, [Job(noop) for _ in range(50)]))
        print(f"  empty jobs one at a time (submit -> run -> result back), 50 jobs: "
              f"{1000 * (time.perf_counter() - t) / 50:.1f} ms per job", flush=True)
        t = time.perf_counter()
        list(engine.run(model, [Job(noop) for _ in range(200)]))
        print(f"  200 empty jobs in one run ({engine.max_in_flight} in flight): "
              f"{1000 * (time.perf_counter() - t) / 200:.1f} ms per job", flush=True)

        photos = Path(args.photos) if args.photos else Path(__file__).resolve().parents[2] / "shared" / "imagenet-samples"
        tmp = None
        if photos.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix="bench-engine-photos-"))
            for p in sorted(photos.iterdir())[:args.images]:
                shutil.copy(p, tmp / p.name)
            photos = tmp
        else:
            print(f"  ({photos} not found: examples pass over the demo photos)")
            photos = None
        try:
            ex_layers = ["blocks.2", "blocks.8", "head"]
            dl, digest_l, n = examples_on(model, None, photos, ex_layers)
            dr, digest_r, _ = examples_on(model, engine, photos, ex_layers)
            print(f"examples pass, {n} photos, layers {ex_layers}: local {n / dl:.1f} images/s, "
                  f"ray {n / dr:.1f} images/s (ray ÷ local {dl / dr:.2f}); stores identical: {digest_l == digest_r}")
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        ray.shutdown()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
