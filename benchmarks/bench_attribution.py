"""Attribution benchmark: localization, model randomization, IG memory.

    OMP_NUM_THREADS=1 python benchmarks/bench_attribution.py [--photos ../shared/imagenet-samples] [--n 20]

1. Localization. Photos of 20 classes (every 50th class of imagenet-samples:
   0, 50, ..., 950) are pasted into one quadrant (rotating) of a 224 px canvas,
   either neutral grey or cluttered with three photos of other classes from the
   same selection. Target: the photo's true class (``logit:N``). Reported: the
   share of each method's map mass inside that quadrant (chance 25 %), mean and
   median, the fraction of canvases with share > 50 %, and the same mean over
   the canvases where the class is in the model's top-5 (the model sees it).
2. Model randomization (Adebayo et al. 2018, cascading). The weights from a
   layer to the output are re-drawn (scale-preserving Gaussian, see
   ``featviz.attribution.checks``), cumulatively from the top; Spearman rank
   correlation between trained and randomized maps on the original photos.
   Low = the method depends on the learned weights. SmoothGrad's own seed-to-seed
   correlation is printed as a reference. A map that vanishes (all zero) after
   randomization counts as changed and is listed separately.
3. Memory. Integrated gradients on lite0 at 224 px with 200 steps, each setting
   in a fresh process: peak resident memory above the process's level after
   loading the model and one warm-up backward pass.

``--gallery DIR`` also writes the README pictures (scikit-image photos, public domain).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featviz import models  # noqa: E402
from featviz.attribution import (METHODS, attribute, quadrant_canvas, quadrant_share, randomized_copy,  # noqa: E402
                                 spearman)

SETTINGS = {"steps": 50, "internal_batch_size": 16, "samples": 25, "noise": 0.15}
CASCADE = ("classifier", "head", "blocks.15", "blocks.12", "blocks.8")


def select_photos(folder: Path, n: int) -> list[tuple[int, Path]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if len(files) != 1000:
        print(f"warning: {folder} has {len(files)} photos, expected 1000 in class order", file=sys.stderr)
    step = max(1, len(files) // n)
    return [(i, files[i]) for i in range(0, len(files), step)][:n]


def _fmt(v: float) -> str:
    return "  nan" if v != v else f"{v:5.2f}"


def localization(model, photos, size: int) -> dict:
    print(f"\n== Localization: {len(photos)} photos, {size} px canvas, photo in one quadrant, target = true class ==")
    images = {c: model.preprocess(p) for c, p in photos}
    classes = [c for c, _ in photos]
    out = {}
    for kind in ("grey", "cluttered"):
        shares = {m: [] for m in METHODS}
        seen = []
        t0 = time.perf_counter()
        for i, c in enumerate(classes):
            q = i % 4
            others = [images[classes[(i + k) % len(classes)]] for k in (1, 2, 3)] if kind == "cluttered" else None
            canvas = quadrant_canvas(images[c], q, size=size, others=others)
            top5 = [j for j, _, _ in model.predict(canvas[None], 5)[0]]
            seen.append(c in top5)
            for m in METHODS:
                a = attribute(model, canvas, f"logit:{c}", m, **SETTINGS)
                shares[m].append(quadrant_share(a.map, q))
        seen_arr = np.array(seen)
        print(f"\n{kind} canvas ({time.perf_counter() - t0:.0f} s); class in top-5 on the canvas: "
              f"{seen_arr.sum()}/{len(seen)}")
        print(f"{'method':<16}{'mean':>6}{'median':>8}{'>50%':>7}{'mean (top-5)':>14}")
        res = {}
        for m in METHODS:
            s = np.array(shares[m])
            sub = s[seen_arr] if seen_arr.any() else np.array([np.nan])
            res[m] = {"mean": float(np.nanmean(s)), "median": float(np.nanmedian(s)),
                      "over_half": float(np.mean(s > 0.5)), "mean_top5": float(np.nanmean(sub)),
                      "shares": [round(float(v), 4) for v in s]}
            print(f"{m:<16}{res[m]['mean']:6.2f}{res[m]['median']:8.2f}{res[m]['over_half']:7.0%}"
                  f"{res[m]['mean_top5']:14.2f}")
        out[kind] = {"recognized_top5": int(seen_arr.sum()), "methods": res}
    return out


def randomization(model, photos, ig_steps: int, sg_samples: int) -> dict:
    print(f"\n== Model randomization (cascading from the output): Spearman(trained map, randomized map), "
          f"{len(photos)} photos ==")
    opts = dict(steps=ig_steps, samples=sg_samples, internal_batch_size=16)
    xs = {c: model.preprocess(p) for c, p in photos}
    t0 = time.perf_counter()
    trained = {c: {m: attribute(model, x, f"logit:{c}", m, **opts).map for m in METHODS} for c, x in xs.items()}
    sg_ref = [spearman(trained[c]["smoothgrad"], attribute(model, x, f"logit:{c}", "smoothgrad", seed=1, **opts).map)
              for c, x in xs.items()]
    print(f"(IG {ig_steps} steps, SmoothGrad {sg_samples} samples; SmoothGrad seed-to-seed reference: "
          f"{np.mean(sg_ref):.2f})")
    print(f"{'randomized from':<16}" + "".join(f"{m:>16}" for m in METHODS))
    out = {"smoothgrad_seed_reference": float(np.mean(sg_ref)), "levels": {}}
    for level in CASCADE:
        rnd = randomized_copy(model, level, seed=0)
        row, vanished = {}, {}
        for m in METHODS:
            rhos = []
            for c, x in xs.items():
                rmap = attribute(rnd, x, f"logit:{c}", m, **opts).map
                rhos.append(spearman(trained[c][m], rmap))
            rhos = np.array(rhos)
            row[m] = float(np.nanmean(rhos)) if np.isfinite(rhos).any() else float("nan")
            vanished[m] = int(np.isnan(rhos).sum())
        cells = "".join(f"{_fmt(row[m]):>16}" for m in METHODS)
        note = ", ".join(f"{m}: {v}" for m, v in vanished.items() if v)
        print(f"{level + '..out':<16}{cells}" + (f"   maps vanished: {note}" if note else ""))
        out["levels"][level] = {"mean_spearman": row, "vanished": vanished}
    print(f"({time.perf_counter() - t0:.0f} s)")
    return out


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _ig_memory_child(steps: int, batch: int | None) -> None:
    # Peak RSS: VmHWM of this process (Linux). ru_maxrss would not do: a child started
    # from a big parent inherits the parent's high-water mark.
    torch.set_num_threads(1)
    model = models.load("efficientnet_lite0")
    x = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))
    attribute(model, x, "logit:1", "saliency")  # warm-up: one forward + backward
    base = _proc_status_mb("VmRSS")
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    t0 = time.perf_counter()
    a = attribute(model, x, "logit:1", "ig", steps=steps, internal_batch_size=batch)
    seconds = time.perf_counter() - t0
    peak = _proc_status_mb("VmHWM")
    if base is None or peak is None:  # not Linux: fall back on getrusage (KB on Linux, bytes on macOS)
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
        base = base or 0.0
    print(json.dumps({"steps": steps, "batch": batch, "extra_mb": peak - base, "peak_mb": peak,
                      "seconds": seconds, "delta": a.settings["convergence_delta"]}))


def memory(configs) -> list[dict]:
    print("\n== Integrated gradients memory: lite0, 224 px, each run in a fresh process; extra = peak RSS during "
          "IG minus RSS before it ==")
    print(f"{'steps':>6}{'internal batch':>16}{'extra MB':>10}{'peak MB':>9}{'seconds':>9}{'|delta|':>9}")
    out = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for steps, batch in configs:
        r = subprocess.run([sys.executable, __file__, "--_ig-memory", str(steps), str(batch or 0)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(f"{steps:>6}{str(batch):>16}  failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        out.append(d)
        print(f"{steps:>6}{str(batch or 'none (all)'):>16}{d['extra_mb']:10.0f}{d['peak_mb']:9.0f}"
              f"{d['seconds']:9.1f}{d['delta']:9.3f}")
    return out


def gallery(model, folder: Path) -> None:
    """README pictures from scikit-image's public-domain photos, quantized to stay small."""
    from PIL import Image
    from skimage import data

    from featviz.attribution import blocks_sheet, panel

    folder.mkdir(parents=True, exist_ok=True)

    def save(img, name):
        path = folder / name
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")

    canvas = quadrant_canvas(data.chelsea(), 1, size=224, others=[data.coffee(), data.rocket(), data.astronaut()])
    p = panel(model, canvas, "logit:281", tile=150, title="Target logit:281 (tabby cat) on a cluttered canvas: "
              "the cat is the top-right quarter")
    save(p, "attribution_panel.png")
    cat = model.preprocess(Image.fromarray(data.chelsea()))
    cup = model.preprocess(Image.fromarray(data.coffee()))
    tiles, captions = [], []
    for target, label in (("logit:281", "tabby cat"), ("logit:967", "espresso")):
        for method in ("gradcam", "ig"):
            two = quadrant_canvas(cat, 0, size=224, others=[cup, cup, cat])
            a = attribute(model, two, target, method, **SETTINGS)
            tiles.append(a.overlay().resize((150, 150), Image.BICUBIC))
            captions.append(f"{method} for {label}")
    from featviz.attribution.display import labeled_row

    save(labeled_row(tiles, captions, "Same canvas, two targets: each map follows its class"),
         "attribution_two_targets.png")
    sheet, _ = blocks_sheet(model, cat, "blocks.15", "logit:281", top=5, tile=112)
    save(sheet, "attribution_blocks.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "imagenet-samples")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--canvas", type=int, default=224)
    ap.add_argument("--skip", nargs="*", default=[], choices=["localization", "randomization", "memory"])
    ap.add_argument("--rand-ig-steps", type=int, default=32)
    ap.add_argument("--rand-sg-samples", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    ap.add_argument("--gallery", type=Path, default=None, help="write README pictures to this folder")
    ap.add_argument("--_ig-memory", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._ig_memory:
        steps, batch = args._ig_memory
        _ig_memory_child(steps, batch or None)
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = models.load("efficientnet_lite0", device="cpu")
    results: dict = {"settings": SETTINGS, "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if args.gallery:
        gallery(model, args.gallery)
    if "localization" not in args.skip or "randomization" not in args.skip:
        photos = select_photos(args.photos, args.n)
        print(f"photos: {len(photos)} classes: {[c for c, _ in photos]}")
    if "localization" not in args.skip:
        results["localization"] = localization(model, photos, args.canvas)
    if "randomization" not in args.skip:
        results["randomization"] = randomization(model, photos, args.rand_ig_steps, args.rand_sg_samples)
    if "memory" not in args.skip:
        results["memory"] = memory([(200, 16), (50, 16), (200, 8), (200, 32), (200, None)])
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
