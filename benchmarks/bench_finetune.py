"""Benchmark of fine-tuning (featviz.training, issue 12), from one run.

    python benchmarks/bench_finetune.py [--budgets 2,5,10,25] [--steps 60] [--size 96] [--out DIR]

Prints:

1. The report's lesson: held-out accuracy of ImageNet-initialized vs from-scratch
   fine-tuning at each examples-per-class budget (same steps), and linear CKA to the
   starting network at the first and last main layers (``finetune_report``, demo task).
2. Loop overhead: seconds per epoch and per image of ``featviz.training.train`` vs a
   bare training step of the same network (forward, loss, backward, AdamW step on a fixed
   batch: no augmentation, no bookkeeping, no evaluation), measured interleaved in the
   same process so machine load affects both alike; the ratio is what to read.
3. Peak memory (max resident set) of a ``featviz finetune`` process.
4. Resume after SIGKILL: a run killed after its second checkpoint and run again vs the
   uninterrupted run with the same seed and thread count: are the final weights equal?
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featviz.models import load  # noqa: E402
from featviz.reports.finetune import finetune_report  # noqa: E402
from featviz.training import TrainSettings, checkpoints, prepare, train  # noqa: E402
from featviz.training.network import trainable_copy  # noqa: E402


def lesson(model, budgets, steps, size, out: Path) -> None:
    res = finetune_report(model, None, out, budgets=budgets, steps=steps,
                          settings=TrainSettings(size=size, batch_size=16, holdout=10), log=None)
    print(f"1. pretrained vs scratch, held-out accuracy ({res['data']['heldout_images']} images, {steps} steps "
          f"each, {size} px, chance {res['chance']:.3f}):")
    for b in res["settings"]["budgets"]:
        p, s = res["accuracy"]["pretrained"][str(b)], res["accuracy"]["scratch"][str(b)]
        print(f"   {b:3d} per class: pretrained {p:.3f}  scratch {s:.3f}  gap {p - s:+.3f}")
    layers = list(res["cka"])
    first, last = layers[0], layers[-2]  # layers[-1] is the new classifier
    print(f"   CKA to the start ({res['cka_budget']}/class): pretrained {first} {res['cka'][first]:.3f}, "
          f"{last} {res['cka'][last]:.3f}; scratch {first} {res['cka_scratch'][first]:.3f}, "
          f"{last} {res['cka_scratch'][last]:.3f}  [{res['seconds']['total']:.0f} s, report in {out}]")


def overhead(model, size: int, rounds: int = 3) -> None:
    settings = TrainSettings(epochs=1, per_class=16, holdout=2, batch_size=16, size=size, seed=0)
    split = prepare(model, None, settings)
    n = len(split.train.labels)
    module, _ = trainable_copy(model, len(split.classes), from_scratch=False, calibration=split.train.images[:8],
                               seed=0)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    x, y = split.train.images[:16], split.train.labels[:16]
    steps = -(-n // 16)

    def bare() -> float:
        module.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(module(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - t0

    loop_times, bare_times = [], []
    bare()  # warm-up (allocator, oneDNN kernels)
    for _ in range(rounds):
        t0 = time.perf_counter()
        train(model, split, settings)  # one epoch, with its held-out evaluation
        loop_times.append(time.perf_counter() - t0)
        bare_times.append(bare())
    loop, plain = sorted(loop_times)[rounds // 2], sorted(bare_times)[rounds // 2]
    print(f"2. one epoch = {steps} steps of {16} images at {size} px (median of {rounds}, interleaved): "
          f"featviz.training.train {loop:.2f} s ({1000 * loop / n:.1f} ms/image, incl. copying the network and "
          f"held-out evaluation), bare step loop {plain:.2f} s ({1000 * plain / n:.1f} ms/image); ratio "
          f"{loop / plain:.2f}")


def run_cli(args, env, kill_after: Path | None = None):
    cmd = [sys.executable, "-m", "featviz", *map(str, args)]
    if kill_after is None:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not kill_after.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def resume_and_memory(tmp: Path, size: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    args = ["--size", size, "--per-class", 4, "--holdout", 2, "--batch-size", 8, "--epochs", 2,
            "--checkpoint-every", 1, "--no-progress"]
    whole, killed = tmp / "whole", tmp / "killed"
    run_cli(["finetune", "efficientnet_lite0", "--out", whole, *args], env)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    proc = run_cli(["finetune", "efficientnet_lite0", "--out", killed, *args], env,
                   kill_after=killed / "checkpoints" / "step-000002.pt")
    finished_before_kill = (killed / "model.toml").exists()
    again = run_cli(["finetune", "efficientnet_lite0", "--out", killed, *args], env)
    a = torch.load(whole / checkpoints(whole)[-1]["file"], weights_only=True)
    b = torch.load(killed / checkpoints(killed)[-1]["file"], weights_only=True)
    equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    acc = [json.loads((d / "metrics.json").read_text())["heldout_accuracy"] for d in (whole, killed)]
    resumed = next((line for line in again.stderr.splitlines() if "resuming" in line), "no resume line")
    print(f"3. peak memory of `featviz finetune` ({size} px, batch 8): {peak:.0f} MiB max resident set")
    print(f"4. SIGKILL (exit {proc.returncode}) after the 2nd checkpoint, finished before kill: "
          f"{finished_before_kill}; {resumed}; final weights bit-identical to the uninterrupted run "
          f"(OMP_NUM_THREADS={env['OMP_NUM_THREADS']}): {equal} (max abs diff {diff:.3g}); held-out accuracy "
          f"{acc[0]:.3f} vs {acc[1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="2,5,10,25")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None, help="keep the report here (default: a temporary folder)")
    parser.add_argument("--parts", default="1234", help="which of the four measures to run, e.g. 1 or 234")
    args = parser.parse_args()
    model = load("efficientnet_lite0")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; timings on a shared machine: read ratios")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "1" in args.parts:
            lesson(model, [int(b) for b in args.budgets.split(",")], args.steps, args.size, args.out or tmp / "report")
        if "2" in args.parts:
            overhead(model, args.size)
        if "3" in args.parts or "4" in args.parts:
            resume_and_memory(tmp, 64)


if __name__ == "__main__":
    main()
