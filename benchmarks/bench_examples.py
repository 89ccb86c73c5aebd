"""Benchmark of the dataset-examples pass (featviz.examples.collect).

    python benchmarks/bench_examples.py [--data ../shared/imagenet-samples] [--n 200] [--big 1000]

Prints three things:

1. Throughput: images per second of the examples pass vs bare batched
   inference through the same layers, with the same decoding pipeline (thread
   prefetch, fixed batches) but no top-k bookkeeping; also forward-only on
   already decoded tensors, for context. Target: examples / bare >= 0.85.
2. Exactness: on the same images, every top/bottom/max list of every unit
   equals a brute-force computation (all activations kept, full sort).
3. Memory: peak resident memory of the whole command (fresh process each) on
   ``--n`` vs ``--big`` images; it should not grow with the number of images
   (the state is units x k), while all activations would.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featviz.examples import PassOptions, collect, list_images  # noqa: E402
from featviz.examples.stream import group_batches, prefetch_batches  # noqa: E402
from featviz.examples.topk import unit_stats  # noqa: E402
from featviz.models import load  # noqa: E402


def subset(data: Path, n: int, tmp: Path) -> Path:
    """A folder of links to the first ``n`` photos (sorted) of ``data``."""
    folder = tmp / f"first{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for rel, _ in list_images(data)[:n]:
        link = folder / rel.replace("/", "__")
        if not link.exists():
            link.symlink_to((data / rel).resolve())
    return folder


def bare_pass(model, folder: Path, layers, batch_size: int, workers: int, keep: bool = False):
    """Decode + forward exactly like collect (same batches and rows), without bookkeeping.
    With ``keep``, return every image's statistics (brute force)."""
    files = list_images(folder)
    ids = list(range(len(files)))
    size = model.input_size
    kept = {name: [] for name in layers}
    t0 = time.perf_counter()
    for batch_ids, items in prefetch_batches(group_batches(ids, batch_size), files, folder, model, size, workers):
        x = torch.zeros(batch_size, 3, size, size)
        for i, (tensor, _) in zip(batch_ids, items):
            x[i % batch_size] = tensor
        with torch.inference_mode():
            acts = model.activations(x, layers)
            if keep:
                rows = torch.tensor([i % batch_size for i in batch_ids])
                for name in layers:
                    kept[name].append([s[rows] for s in unit_stats(acts[name])])
    seconds = time.perf_counter() - t0
    if keep:
        return seconds, {name: [torch.cat(parts).numpy() for parts in zip(*kept[name])] for name in layers}
    return seconds, len(files)


def forward_only(model, folder: Path, layers, batch_size: int):
    files = list_images(folder)
    x = torch.stack([model.preprocess(folder / rel) for rel, _ in files])
    t0 = time.perf_counter()
    for start in range(0, len(files), batch_size):
        batch = x[start:start + batch_size]
        if len(batch) < batch_size:
            batch = torch.cat([batch, batch.new_zeros((batch_size - len(batch),) + tuple(batch.shape[1:]))])
        with torch.inference_mode():
            model.activations(batch, layers)
    return time.perf_counter() - t0


def bookkeeping_ms(store, layers, k: int, batch_size: int, repeats: int = 20) -> float:
    """Time of the ranking updates alone for one batch of activations of these layers."""
    from featviz.examples.topk import LayerState

    acts, states = {}, {}
    for name in layers:
        rec = store.layer(name)
        acts[name] = torch.randn(batch_size, rec.channels, rec.height, rec.width).contiguous(
            memory_format=torch.channels_last)
        states[name] = LayerState.empty(rec.channels, k, k)
    index = torch.arange(batch_size)
    t0 = time.perf_counter()
    for r in range(repeats):
        states = {name: states[name].update(acts[name], index + r * batch_size) for name in layers}
    return 1000 * (time.perf_counter() - t0) / repeats


def check_exact(store, stats, files, k: int, bottom: int) -> tuple[bool, int]:
    ids = np.arange(len(files))
    checked = 0
    for layer, (mean, peak, where) in stats.items():
        for unit in range(mean.shape[1]):
            want = {"top": np.lexsort((ids, -mean[:, unit]))[:k],
                    "bottom": np.lexsort((ids, mean[:, unit]))[:bottom],
                    "max": np.lexsort((ids, -peak[:, unit]))[:k]}
            for kind, order in want.items():
                got = store.examples(layer, unit, kind)
                values = mean[:, unit] if kind != "max" else peak[:, unit]
                if [e.path for e in got] != [files[j][0] for j in order]:
                    return False, checked
                if [e.value for e in got] != [float(values[j]) for j in order]:
                    return False, checked
                if kind == "max":
                    width = store.layer(layer).width
                    if [e.position[0] * width + e.position[1] for e in got] != [int(where[j, unit]) for j in order]:
                        return False, checked
                checked += 1
    return True, checked


MEMORY_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from featviz.examples import collect
from featviz.examples.topk import LayerState
t = time.perf_counter()
store = collect("efficientnet_lite0", {folder!r}, {layers!r}, k={k}, store={out!r}, batch_size={batch})
state = sum(LayerState.empty(store.layer(n).channels, {k}, {k}).nbytes() for n in store.layers())
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "images": store.num_images, "seconds": time.perf_counter() - t, "state_bytes": state}}))
"""


def memory_run(folder: Path, layers, k: int, batch: int, out: Path) -> dict:
    script = MEMORY_CHILD.format(root=str(ROOT), folder=str(folder), layers=list(layers), k=k, out=str(out),
                                 batch=batch)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "imagenet-samples")
    ap.add_argument("--layers", default="blocks.4,blocks.8,blocks.12,head")
    ap.add_argument("--n", type=int, default=200, help="images for throughput, exactness and the small memory run")
    ap.add_argument("--big", type=int, default=1000, help="images of the large memory run")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timing repeats (best is kept)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stores (printed path)")
    args = ap.parse_args()
    layers = args.layers.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"{args.workers} decoding threads, batch {args.batch_size}, layers {layers}, k {args.k}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-examples-"))
    small = subset(args.data, args.n, tmp)
    model = load("efficientnet_lite0")
    with torch.inference_mode():  # warm-up
        model.activations(torch.rand(args.batch_size, 3, 224, 224), layers)
    figures: dict = {"layers": layers, "n": args.n, "k": args.k, "batch_size": args.batch_size,
                     "threads": torch.get_num_threads()}

    # 1. throughput
    bare, examples, totals = [], [], []
    for r in range(args.repeats):
        seconds, n = bare_pass(model, small, layers, args.batch_size, args.workers)
        bare.append(n / seconds)
        t0 = time.perf_counter()
        store = collect(model, small, layers, k=args.k, store=tmp / f"store{r}", batch_size=args.batch_size,
                        options=PassOptions(workers=args.workers))
        totals.append(time.perf_counter() - t0)
        t = store.run["timings"]
        examples.append(t["pass_images"] / t["pass_s"])
    fwd = n / forward_only(model, small, layers, args.batch_size)
    ratio = max(examples) / max(bare)
    print(f"\n1. throughput on {n} images (best of {args.repeats})")
    print(f"   bare batched inference (decode + forward):  {max(bare):7.2f} images/s   runs {np.round(bare, 2)}")
    print(f"   examples pass (+ top-k bookkeeping):       {max(examples):7.2f} images/s   runs {np.round(examples, 2)}")
    print(f"   ratio examples / bare:                      {ratio:7.3f}   (target >= 0.85)")
    print(f"   forward only on decoded tensors:            {fwd:7.2f} images/s   "
          f"(examples / this: {max(examples) / fwd:.3f})")
    print(f"   whole command incl. receptive fields and crops: {min(totals):.1f} s "
          f"(receptive fields {t['receptive_fields_s']:.1f} s, crops {t['finalize_s']:.1f} s)")
    book = bookkeeping_ms(store, layers, args.k, args.batch_size)
    print(f"   top-k bookkeeping alone: {book:.1f} ms per batch of {args.batch_size} "
          f"(forward only: {1000 * args.batch_size / fwd:.0f} ms per batch)")
    figures.update(bare_ips=max(bare), examples_ips=max(examples), ratio=ratio, forward_only_ips=fwd,
                   bookkeeping_ms=book,
                   command_s=min(totals), receptive_fields_s=t["receptive_fields_s"], finalize_s=t["finalize_s"])

    # 2. exactness
    _, stats = bare_pass(model, small, layers, args.batch_size, args.workers, keep=True)
    exact, checked = check_exact(store, stats, list_images(small), args.k, args.k)
    units = sum(store.layer(name).channels for name in layers)
    print(f"\n2. exactness on {n} images: top-k == brute force: {exact} "
          f"({checked} lists checked: {units} units x top/bottom/max)")
    figures.update(exact=exact, lists_checked=checked)

    # 3. memory
    if not args.skip_memory:
        big = subset(args.data, args.big, tmp)
        print("\n3. peak memory of the whole command (fresh process each)")
        mem = {}
        for label, folder in ((args.n, small), (args.big, big)):
            mem[label] = memory_run(folder, layers, args.k, args.batch_size, tmp / f"mem{label}")
            m = mem[label]
            print(f"   {m['images']:5d} images: peak RSS {m['peak_rss_mb']:7.1f} MB, {m['seconds']:.1f} s, "
                  f"top-k state {m['state_bytes'] / 1e6:.2f} MB")
        grow = mem[args.big]["peak_rss_mb"] - mem[args.n]["peak_rss_mb"]
        per_image = sum(store.layer(n_).channels * store.layer(n_).height * store.layer(n_).width * 4
                        for n_ in layers) / 1e6
        print(f"   growth {args.n} -> {args.big} images: {grow:+.1f} MB; keeping all activations instead would "
              f"need {per_image:.2f} MB per image = {per_image * (args.big - args.n):.0f} MB more")
        figures.update(memory=mem, memory_growth_mb=grow)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.keep:
        print(f"\nstores kept in {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
