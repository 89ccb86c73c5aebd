"""Timed slice of a full microscope build, extrapolated to the whole build (issue 13).

    nice -n 10 python benchmarks/bench_microscope_slice.py [--units 16] [--steps 16] [--photos 250]
        [--baseline-tree DIR] [--quality] [--quality-steps 128,256]

Builds, with the ``full`` preset of EfficientNet-Lite0 (its 6 main layers, every panel), a slice of every
layer: ``--units`` units spread evenly over its channels (one render batch of 16 by default, so batches are
as full as in the real build), with the dataset-examples pass over the first ``--photos`` of the 1000 ImageNet
photos in ``../shared/imagenet-samples`` (what the full preset is given as ``--data``). Then it extrapolates:

- per-unit panels (channel, neuron, negative, diversity, classes and circuits by attribution, unit pages)
  scale by the layer's channels / the slice's units; caricatures, rendered once per distinct top photo, by the
  layer's distinct top photos / the slice's (use ``--photos 1000`` for the full build's count);
- renders run ``--steps`` steps; each render job's time is its setup and final pass as measured plus the
  median time of its steps x the preset's steps (a step costs the same whatever the step number). With
  ``--steps 256`` (the preset's) the renders run as the build runs them and are timed as they ran: only
  then do renders that stop at a plateau (``BuildSettings.plateau``) count the steps they really take;
- the examples pass and the class photos scale by 1000 / ``--photos``; DeepDreams and class images are
  per layer / per model and only scale by steps.

``--baseline-tree DIR`` runs the same slice with another checkout (``git archive COMMIT | tar -x -C DIR``),
interleaved with this one (baseline, current, baseline, current for ``--repeats 2``), and prints the
ratios measured in the same run: the machine may be loaded by others, the ratios cancel the load.

``--quality`` renders the 12 benchmark units of bench_render.py (channels 0, n/4, n/2, 3n/4 of
blocks.2/8/14) through the build's own render path (``visuals.render_kind``, with the
preset's settings, the 12 in one batch) and prints the view-robust activation (``featviz.optvis.quality``) divided by each
unit's best photo activation; ``--quality-steps`` gives a convergence curve. Each tree runs in its own
subprocess with that tree first on ``PYTHONPATH``.

Site size: the slice site's files by kind, extrapolated the same way (per-unit folders x channels).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEATVIZ_SHARED") or next(
    (p / "shared" for p in ROOT.parents if (p / "shared" / "imagenet-samples").is_dir()), ROOT.parent / "shared"))
MODEL = "efficientnet_lite0"
PER_UNIT = ("channel", "neuron", "negative", "diversity", "caricature", "classes", "circuits")
RENDERED = ("channel", "neuron", "negative", "diversity", "caricature", "dream", "class")
TOTAL_PHOTOS = 1000


def slice_units(channels: int, n: int) -> list[int]:
    """``n`` units spread evenly over ``channels`` (all of them when there are fewer)."""
    if channels <= n:
        return list(range(channels))
    return sorted({round(i * channels / n) for i in range(n)})


# -- worker side (runs inside the tree under test) ---------------------------------------------------------
def worker_slice(args: dict) -> dict:
    import torch

    import featviz
    from featviz.microscope import build

    build_module = sys.modules["featviz.microscope.build"]  # the module (the package's ``build`` is the function)
    from featviz.microscope.settings import preset

    torch.manual_seed(0)
    model = featviz.load(MODEL)
    full = preset("full", **args.get("overrides", {}))
    layers = model.default_layers(full.n_layers)
    photos = Path(args["photos_dir"])
    site = Path(tempfile.mkdtemp(prefix="bench-slice-"))
    try:
        built = {l: slice_units(model.layer(l).channels, args["units"]) for l in layers}
        # The settings take one unit list for every layer; the slice spreads its units over each layer's
        # own channels, so the build's choice of units is replaced by the slice's (all layers in one build,
        # as the circuits panels need their source layer built).
        build_module.choose_units = lambda model, layer, s: built[layer]
        t = time.perf_counter()
        report = build(model, site / "site", photos, quick=False, steps=args["steps"], layers=layers,
                       engine=extrapolating_engine(full.steps, args["steps"]), **args.get("overrides", {}))
        wall = time.perf_counter() - t
        sizes = site_sizes(site / "site" / model.name, built)
        # Caricatures are rendered once per distinct top photo (units that share one share the render), so
        # they scale by the layer's distinct top photos over the slice's, not by its units.
        from featviz.examples import ExampleStore

        with ExampleStore(site / "site" / model.name / "_examples") as store:
            def distinct(layer, units):
                return len({tops[0].path for u in units if (tops := store.top(layer, u, k=1))})
            caricature_photos = {l: [distinct(l, built[l]), distinct(l, range(model.layer(l).channels))]
                                 for l in layers}
        return {"layer_seconds": {f"{l}|{k}": v for (l, k), v in report.layer_seconds.items()},
                "seconds": dict(report.seconds), "wall": wall, "built": built,
                "channels": {l: model.layer(l).channels for l in layers}, "steps": args["steps"],
                "preset_steps": full.steps, "sizes": sizes, "threads": torch.get_num_threads(),
                "caricature_photos": caricature_photos}
    finally:
        shutil.rmtree(site, ignore_errors=True)


def extrapolating_engine(full_steps: int, slice_steps: int):
    """A local engine whose job times are those of ``full_steps`` steps: each job's optimization steps
    (forward + backward of the views) are timed, and their median, times ``full_steps``, replaces their sum;
    the rest of the job (setup, final values, attribution, the examples pass) counts as measured.
    A slice run at the preset's own steps is measured as it ran: renders that stop at a plateau
    (``BuildSettings.plateau``) take fewer steps, which only such a slice sees."""
    import statistics as stats

    from featviz.engine import Done, LocalEngine

    render_module = sys.modules["featviz.optvis.render"]  # the module (the package's ``render`` is the function)

    step_times: list[float] = []
    original = render_module._Optimization.forward_backward

    def timed(self):
        t = time.perf_counter()
        out = original(self)
        step_times.append(time.perf_counter() - t)
        return out

    render_module._Optimization.forward_backward = timed

    class Extrapolating(LocalEngine):
        def run(self, model, jobs):
            for i, job in enumerate(jobs):
                step_times.clear()
                t = time.perf_counter()
                result = job.fn(model, *job.args)
                seconds = time.perf_counter() - t
                if step_times and slice_steps != full_steps:
                    seconds += stats.median(step_times) * full_steps - sum(step_times)
                yield Done(i, result, seconds)

    return Extrapolating()


def site_sizes(model_dir: Path, built: dict) -> dict:
    """Bytes of the slice site: per layer the unit folders (and their count), the layer folder's own files,
    the examples store, the rest of the model folder."""
    from featviz.microscope.pages import layer_dir

    out = {"layers": {}, "examples": 0, "other": 0, "by_ext": defaultdict(int)}
    for path in model_dir.rglob("*"):
        if path.is_file():
            out["by_ext"][path.suffix] += path.stat().st_size
    for layer, units in built.items():
        folder = model_dir / layer_dir(layer)
        unit_bytes = sum(p.stat().st_size for u in units for p in (folder / str(u)).rglob("*") if p.is_file())
        own = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        out["layers"][layer] = {"unit_bytes": unit_bytes, "units": len(units), "layer_bytes": own}
    out["examples"] = sum(p.stat().st_size for p in (model_dir / "_examples").rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    out["other"] = total - out["examples"] - sum(v["unit_bytes"] + v["layer_bytes"] for v in out["layers"].values())
    out["by_ext"] = dict(out["by_ext"])
    return out


def webp_sizes(folder: Path, limit: int = 400) -> None:
    """What the site's images would weigh as WebP: PNG renders (lossless and quality 90) and the layer
    grids' JPEG thumbnails (quality 80), over up to ``limit`` files of each kind in ``folder``."""
    import io

    from PIL import Image

    def encoded(img, **kw) -> int:
        buf = io.BytesIO()
        img.save(buf, format="WEBP", **kw)
        return buf.tell()

    for pattern, variants in (("*.png", {"webp lossless": dict(lossless=True, method=4),
                                         "webp q90": dict(quality=90, method=4)}),
                              ("thumb.jpg", {"webp q80": dict(quality=80, method=4)})):
        files = sorted(folder.rglob(pattern))[:limit]
        if not files:
            continue
        before = sum(f.stat().st_size for f in files)
        sizes = {name: 0 for name in variants}
        for f in files:
            with Image.open(f) as img:
                rgb = img.convert("RGB")
            for name, kw in variants.items():
                sizes[name] += encoded(rgb, **kw)
        print(f"  {len(files)} {pattern} files: {before / 1e3:.0f} KB; " + ", ".join(
            f"{name} {v / 1e3:.0f} KB ({v / before:.2f}x)" for name, v in sizes.items()))


def worker_quality(args: dict) -> dict:
    """View-robust ratios of the 12 benchmark units rendered as the build renders channel panels."""
    import torch

    import featviz
    from featviz.microscope import visuals
    from featviz.microscope.settings import preset
    from featviz.optvis import objectives as O
    from featviz.optvis.quality import view_robust_activation

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_render

    model = featviz.load(MODEL)
    units = bench_render.benchmark_units(model)
    best = bench_render.best_photo_activations(model, bench_render.CHANNEL_LAYERS)
    out = {}
    for steps in args["quality_steps"]:
        s = preset("full", steps=steps, **args.get("overrides", {}))
        # the 12 units in one batch (one image per unit, as the build's batches; cheaper than three)
        t = time.perf_counter()
        images = torch.stack([img for img, _ in visuals.render_kind(model, "channel", units, s, seed=1234)])
        seconds = time.perf_counter() - t
        bests = torch.tensor([float(best[l][c]) for l, c in units])
        ratios = (view_robust_activation(model, images, O.batched_channels(units)) / bests).tolist()
        out[str(steps)] = {"ratios": ratios, "seconds": seconds}
        if args.get("diversity"):
            # the diversity panel's images, rendered as the build does (its batches of units x images)
            t = time.perf_counter()
            per_unit = []
            for first in range(0, len(units), s.diversity_batch):
                part = units[first:first + s.diversity_batch]
                per_unit += visuals.render_diversity(model, part, s, seed=1234 + first)
            seconds = time.perf_counter() - t
            images = torch.stack([img for imgs in per_unit for img in imgs])
            owners = [unit for unit in units for _ in range(s.diversity_images)]
            owner_bests = torch.tensor([float(best[l][c]) for l, c in owners])
            ratios = (view_robust_activation(model, images, O.batched_channels(owners)) / owner_bests).tolist()
            out[str(steps)]["diversity"] = {"ratios": ratios, "seconds": seconds}
        if args.get("save"):
            for (l, c), img in zip(units, images):  # each render as the site saves it (for --webp)
                folder = Path(args["save"]) / f"{args['label']}_{steps}"
                folder.mkdir(parents=True, exist_ok=True)
                featviz.imageio.save_png(img, folder / f"{l}_{c}.png", {"steps": steps})
            sheet = featviz.imageio.grid([featviz.imageio.to_pil(i) for i in images], columns=4,
                                         labels=[f"{l}:{c}" for l, c in units])
            Path(args["save"]).mkdir(parents=True, exist_ok=True)
            sheet.save(Path(args["save"]) / f"quality_{args['label']}_{steps}.png")
    return {"units": [f"{l}:{c}" for l, c in units], "by_steps": out}


# -- driver side ----------------------------------------------------------------------------------------------
def run_in(tree: Path, what: str, args: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_microscope_slice as b; "
            f"print('RESULT ' + json.dumps(b.worker_{what}(json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=env, capture_output=True, text=True,
                          cwd=tree)
    if proc.returncode:
        raise SystemExit(f"{what} in {tree} failed:\n{proc.stderr[-3000:]}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def extrapolate(r: dict, photos: int) -> tuple[dict, dict]:
    """Estimated seconds of the full build: {layer: {kind: s}} and the fixed costs {phase: s}."""
    per_layer: dict = defaultdict(dict)
    fixed: dict = {}
    for key, seconds in r["layer_seconds"].items():
        layer, kind = key.split("|")
        scale = 1.0  # the engine already gave render jobs the time of the preset's steps
        if layer and kind == "caricature" and "caricature_photos" in r:
            in_slice, in_layer = r["caricature_photos"][layer]
            scale *= in_layer / max(1, in_slice)
        elif layer and kind in PER_UNIT:
            scale *= r["channels"][layer] / len(r["built"][layer])
        if layer:
            per_layer[layer][kind] = per_layer[layer].get(kind, 0.0) + seconds * scale
        else:
            fixed[kind] = fixed.get(kind, 0.0) + seconds * scale
    total_units = sum(r["channels"].values())
    slice_units_n = sum(len(v) for v in r["built"].values())
    fixed["examples pass"] = r["seconds"].get("examples", 0.0) * TOTAL_PHOTOS / photos
    fixed["class photos"] = r["seconds"].get("class_photos", 0.0) * TOTAL_PHOTOS / photos
    fixed["pages (scaled by units)"] = r["seconds"].get("pages", 0.0) * total_units / slice_units_n
    return dict(per_layer), fixed


def print_estimate(label: str, r: dict, photos: int) -> float:
    per_layer, fixed = extrapolate(r, photos)
    kinds = [k for k in (*PER_UNIT, "dream") if any(k in v for v in per_layer.values())]
    print(f"\n### {label}: slice of {sum(len(v) for v in r['built'].values())} units at {r['steps']} steps "
          f"(preset {r['preset_steps']}), wall {r['wall']:.0f} s, {r['threads']} threads; estimated full build:")
    print(f"  {'layer':10s} {'units':>5s} " + " ".join(f"{k[:9]:>9s}" for k in kinds) + "     hours")
    total = 0.0
    for layer, row in per_layer.items():
        hours = sum(row.values()) / 3600
        total += hours
        print(f"  {layer:10s} {r['channels'][layer]:5d} " + " ".join(f"{row.get(k, 0) / 3600:9.3f}" for k in kinds)
              + f"  {hours:8.2f}")
    col = {k: sum(v.get(k, 0) for v in per_layer.values()) / 3600 for k in kinds}
    print(f"  {'all':10s} {sum(r['channels'].values()):5d} " + " ".join(f"{col[k]:9.3f}" for k in kinds)
          + f"  {total:8.2f}")
    for phase, seconds in fixed.items():
        print(f"  + {phase}: {seconds / 3600:.3f} h")
        total += seconds / 3600
    print(f"  TOTAL estimated: {total:.2f} h")
    return total


def print_sizes(r: dict, photos: int) -> None:
    s = r["sizes"]
    total = 0
    print("\n### Site size, extrapolated (MB)")
    for layer, v in s["layers"].items():
        per_unit = v["unit_bytes"] / max(1, v["units"])
        est = per_unit * r["channels"][layer] + v["layer_bytes"]
        total += est
        print(f"  {layer:10s} {per_unit / 1e3:7.1f} KB per unit x {r['channels'][layer]:5d} + layer page files "
              f"{v['layer_bytes'] / 1e3:7.1f} KB = {est / 1e6:7.1f} MB")
    print(f"  examples store ({photos} photos): {s['examples'] / 1e6:.1f} MB; other: {s['other'] / 1e6:.1f} MB")
    total += s["examples"] + s["other"]
    print(f"  TOTAL ~{total / 1e6:.0f} MB (the store measured on {photos} photos); slice bytes by extension: "
          + ", ".join(f"{k or '(none)'} {v / 1e6:.1f} MB" for k, v in sorted(s["by_ext"].items())))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--photos", type=int, default=250)
    ap.add_argument("--baseline-tree", type=Path)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-slice", action="store_true")
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--quality-steps", default="256")
    ap.add_argument("--json-out", type=Path, help="append each slice's raw figures to this file")
    ap.add_argument("--webp", type=Path, help="print what a site folder's images would weigh as WebP and stop")
    ap.add_argument("--reprint", type=Path, help="print the tables of a --json-out file and stop")
    ap.add_argument("--save", type=Path, help="folder for the quality contact sheets")
    ap.add_argument("--diversity", action="store_true", help="--quality also measures the diversity images")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field of the full preset (e.g. diversity_size=128, plateau=0); repeatable")
    args = ap.parse_args()

    if args.webp:
        webp_sizes(args.webp)
        return
    if args.reprint:
        for line in args.reprint.read_text().splitlines():
            r = json.loads(line)
            print_estimate(f"{r['tree']} (run {r['run'] + 1})", r, r["photos"])
            print_sizes(r, r["photos"])
        return
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = json.loads(value)
    source = SHARED / "imagenet-samples"
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))[:args.photos]
    if not files:
        raise SystemExit(f"no photos in {source}")
    photos_dir = Path(tempfile.mkdtemp(prefix="bench-slice-photos-"))
    for f in files:
        shutil.copy(f, photos_dir / f.name)
    trees = [("current", ROOT)] + ([("baseline", args.baseline_tree.resolve())] if args.baseline_tree else [])
    try:
        print(f"# timed slice of the full lite0 build: {args.units} units per layer, {args.steps} steps, "
              f"{len(files)} photos; trees: {', '.join(f'{n}={t}' for n, t in trees)}", flush=True)
        results = defaultdict(list)
        if not args.no_slice:
            for rep in range(args.repeats):
                for name, tree in (trees[::-1] if rep % 2 == 0 else trees):
                    r = run_in(tree, "slice", {"units": args.units, "steps": args.steps, "photos_dir": str(photos_dir),
                                              "overrides": overrides})
                    if args.json_out:
                        with open(args.json_out, "a") as f:
                            f.write(json.dumps({"tree": name, "run": rep, "photos": len(files), **r}) + "\n")
                    results[name].append(print_estimate(f"{name} (run {rep + 1})", r, len(files)))
                    if rep == 0:
                        print_sizes(r, len(files))
            if len(trees) > 1:
                ratios = [c / b for c, b in zip(results["current"], results["baseline"])]
                print(f"\ncurrent / baseline estimated hours, same run: {', '.join(f'{x:.3f}' for x in ratios)}")
        if args.quality:
            steps = [int(s) for s in args.quality_steps.split(",")]
            for name, tree in trees:
                q = run_in(tree, "quality", {"quality_steps": steps, "label": name, "overrides": overrides,
                                             "diversity": args.diversity,
                                             "save": str(args.save.resolve()) if args.save else None})
                for st, v in q["by_steps"].items():
                    rs = v["ratios"]
                    print(f"quality {name} {st} steps: view-robust median {statistics.median(rs):.3f} "
                          f"(min {min(rs):.3f}), {v['seconds']:.0f} s for 12 units; per unit "
                          + ", ".join(f"{u}={x:.2f}" for u, x in zip(q["units"], rs)), flush=True)
                    if "diversity" in v:
                        d = v["diversity"]["ratios"]
                        print(f"quality {name} {st} steps, diversity images: view-robust median "
                              f"{statistics.median(d):.3f} (min {min(d):.3f}) over {len(d)} images, "
                              f"{v['diversity']['seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(photos_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
