"""Report: optimizing the class logit vs the softmax probability.

Claim (Distill, "Feature Visualization"): optimizing the pre-softmax logit of a
class gives better class visualizations than optimizing its probability, which
can also rise by pushing the other classes down. For each class, the same
render (recipe, seed, steps, size) is run twice, once per objective, and the
final images are measured:

- the target's logit and softmax probability on the model that made them;
- the mean of the other classes' logits (does the probability objective win by
  lowering the rest?);
- transferability: whether another network (the judge) puts the class in its
  top-5 / top-1, and the probability it gives the class.

Measures are taken on the images exactly as saved (8-bit PNG), resized to
each network's input size, so ``measure`` on a saved PNG gives the same numbers.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import FeatvizError
from ..imageio import save_png, to_pil
from ..models import load
from ..models.organism import ModelOrganism
from ._common import environment, md_table, out_folder, resize, write_json, write_text
from ..figures import new_figure, save_figure

DEFAULT_CLASSES = (9, 130, 309, 980)  # ostrich, flamingo, bee, volcano
OBJECTIVES = ("logit", "prob")
MEASURES = ("target_logit", "target_prob", "mean_other_logits", "judge_top5")


def quantize(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG keeps of images in [0, 1]."""
    return torch.round(images.clamp(0, 1) * 255) / 255


@torch.no_grad()
def measure(model: ModelOrganism, judge: ModelOrganism | None, images: torch.Tensor, target: int) -> list[dict]:
    """The report's measures of ``images`` (N, 3, H, W) in [0, 1] for class ``target``.

    Each image is resized to each network's input size. Returns one dict per image.
    """
    images = images.float()
    logits = model(resize(images, model.input_size).to(model.device)).float().cpu()
    probs = logits.softmax(-1)
    rows = []
    for i in range(images.shape[0]):
        lg = logits[i]
        others = torch.cat([lg[:target], lg[target + 1:]])
        row = {
            "target_logit": float(lg[target]),
            "target_prob": float(probs[i, target]),
            "mean_other_logits": float(others.mean()),
            "margin": float(lg[target] - others.max()),
            "model_top1": int(lg.argmax()),
            "model_rank": int((lg > lg[target]).sum()) + 1,
        }
        rows.append(row)
    if judge is not None:
        jl = judge(resize(images, judge.input_size).to(judge.device)).float().cpu()
        jp = jl.softmax(-1)
        for i, row in enumerate(rows):
            rank = int((jl[i] > jl[i, target]).sum()) + 1
            row.update(judge_rank=rank, judge_top1=rank == 1, judge_top5=rank <= 5,
                       judge_prob=float(jp[i, target]), judge_pred=int(jl[i].argmax()))
    return rows


def logits_report(model, classes: Sequence[int] = DEFAULT_CLASSES, out_dir="report-logits", *,
                  judge: str | ModelOrganism = "efficientnet_lite1", size: int = 160, steps: int = 64,
                  seed: int = 0, log=None) -> dict:
    """Render each class with ``logit:N`` and ``prob:N`` (recipe ``default``, same seed,
    steps and size), measure both images, and write ``logits.png`` (side by side),
    ``logits_plot.png`` (the four measures), ``report.md`` and ``results.json`` under
    ``out_dir``. Returns the results dict (also in ``results.json``)."""
    from ..optvis.render import finished, render

    say = log or (lambda msg: None)
    model = load(model)
    classes = [int(c) for c in classes]
    if not classes:
        raise FeatvizError("give at least one class")
    if len(set(classes)) != len(classes):
        raise FeatvizError(f"classes repeat: {classes}")
    if model.num_classes is None:
        raise FeatvizError(f"{model.name} has no class scores: the logits report needs a classifier")
    for c in classes:
        model.check_class(c)
    if steps < 1:
        raise FeatvizError(f"steps must be at least 1, got {steps}")
    judge_model = load(judge, device=model.device)
    if judge_model.num_classes != model.num_classes:
        raise FeatvizError(f"the judge {judge_model.name} has {judge_model.num_classes} classes, "
                           f"{model.name} has {model.num_classes}: they must share the label set")
    out = out_folder(out_dir)
    img_dir = out_folder(out / "images")
    t_start = time.perf_counter()

    # Reference: the grey image every render starts near.
    grey = torch.full((1, 3, size, size), 0.5)
    baseline = {c: measure(model, judge_model, grey, c)[0] for c in classes}

    rows, tiles, captions = [], [], []
    for c in classes:
        label = model.label(c)
        for kind in OBJECTIVES:
            spec = f"{kind}:{c}"
            say(f"rendering {spec} ({label})")
            res = finished(render(model, spec, size=size, steps=steps, seed=seed, recipe="default"))
            image = quantize(res.images[:1])
            path = img_dir / f"{kind}_{c}.png"
            save_png(to_pil(image[0]), path, res.settings)
            m = measure(model, judge_model, image, c)[0]
            row = {"class": c, "label": label, "objective": spec, "image": str(path.relative_to(out)),
                   "seconds": res.settings.get("seconds"), "final_objective": res.settings.get("final_objective"),
                   **m}
            rows.append(row)
            tiles.append(to_pil(image[0]))
            captions.append(f"{kind} {c} {label}")

    results = {
        "report": "logits",
        "settings": {"model": model.name, "judge": judge_model.name, "classes": classes, "size": size,
                     "steps": steps, "seed": seed, "recipe": "default",
                     "measured_at": {model.name: model.input_size, judge_model.name: judge_model.input_size},
                     **environment()},
        "rows": rows,
        "grey_baseline": {str(c): baseline[c] for c in classes},
        "summary": _summary(rows),
    }
    _sheet(tiles, rows, out / "logits.png", size)
    _plot(rows, classes, model, judge_model, out / "logits_plot.png")
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(out / "results.json", results)
    write_text(out / "report.md", _markdown(results, model, judge_model))
    return results


def _summary(rows: list[dict]) -> dict:
    out = {}
    for kind in OBJECTIVES:
        sel = [r for r in rows if r["objective"].startswith(kind + ":")]
        out[kind] = {
            "mean_target_logit": float(np.mean([r["target_logit"] for r in sel])),
            "mean_target_prob": float(np.mean([r["target_prob"] for r in sel])),
            "mean_other_logits": float(np.mean([r["mean_other_logits"] for r in sel])),
            "judge_top5": int(sum(r["judge_top5"] for r in sel)),
            "judge_top1": int(sum(r["judge_top1"] for r in sel)),
            "n": len(sel),
        }
    return out


def _sheet(tiles, rows, path: Path, size: int) -> None:
    """Two columns (logit | prob), one row per class, each captioned with its measures."""
    from PIL import Image, ImageDraw

    from ..attribution.display import font

    f = font(11)
    pad, cap_h, head_h = 6, 46, 22
    n = len(tiles) // 2
    w = 2 * size + 3 * pad
    h = head_h + n * (size + cap_h + pad) + pad
    sheet = Image.new("RGB", (max(w, 2 * 150 + 3 * pad), h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), "optimize logit", fill=(0, 0, 0), font=f)
    draw.text((2 * pad + size, 4), "optimize probability", fill=(0, 0, 0), font=f)
    for i, (tile, row) in enumerate(zip(tiles, rows)):
        r, col = divmod(i, 2)
        x, y = pad + col * (size + pad), head_h + r * (size + cap_h + pad)
        sheet.paste(tile, (x, y))
        lines = [f"{row['class']} {row['label']}"[:26],
                 f"logit {row['target_logit']:.1f}  p {row['target_prob']:.2f}",
                 f"others {row['mean_other_logits']:.2f}  judge #{row['judge_rank']}"]
        for j, line in enumerate(lines):
            draw.text((x, y + size + 2 + 14 * j), line, fill=(0, 0, 0), font=f)
    save_png(sheet, path, {"kind": "report-logits-sheet"})


def _plot(rows, classes, model, judge, path: Path) -> None:
    fig = new_figure((15, 3.8))
    axes = fig.subplots(1, 4)
    x = np.arange(len(classes))
    wdt = 0.38
    specs = [("target_logit", "target logit", None), ("target_prob", "target probability", (0, 1.05)),
             ("mean_other_logits", "mean of the other logits", None),
             ("judge_prob", f"{judge.name} prob. of target\n(* = in its top-5)", None)]
    colours = {"logit": "#1f77b4", "prob": "#ff7f0e"}
    for ax, (key, title, ylim) in zip(axes, specs):
        for k, kind in enumerate(OBJECTIVES):
            vals = [next(r[key] for r in rows if r["objective"] == f"{kind}:{c}") for c in classes]
            bars = ax.bar(x + (k - 0.5) * wdt, vals, wdt, label=f"optimize {kind}", color=colours[kind])
            if key == "judge_prob":
                for b, c in zip(bars, classes):
                    r = next(r for r in rows if r["objective"] == f"{kind}:{c}")
                    if r["judge_top5"]:
                        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), "*", ha="center", va="bottom")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{c}\n{model.label(c)[:12]}" for c in classes], fontsize=8)
        ax.axhline(0, color="k", lw=0.5)
        if ylim:
            ax.set_ylim(*ylim)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{model.name}: optimizing the logit vs the probability (measured on the final images)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def _markdown(results: dict, model, judge) -> str:
    s = results["settings"]
    rows = results["rows"]
    table = md_table(
        ["class", "objective", "target logit", "target prob", "mean other logits", "margin to best other",
         f"{judge.name} rank", "top-5", "top-1", "render s"],
        [[f"{r['class']} {r['label']}", r["objective"], r["target_logit"], r["target_prob"],
          r["mean_other_logits"], r["margin"], r["judge_rank"], r["judge_top5"], r["judge_top1"], r["seconds"]]
         for r in rows])
    grey = md_table(["class", "target logit", "target prob", "mean other logits"],
                    [[c, b["target_logit"], b["target_prob"], b["mean_other_logits"]]
                     for c, b in results["grey_baseline"].items()])
    summ = results["summary"]
    summary = md_table(["objective", "mean target logit", "mean target prob", "mean other logits",
                        f"{judge.name} top-5", "top-1"],
                       [[k, v["mean_target_logit"], v["mean_target_prob"], v["mean_other_logits"],
                         f"{v['judge_top5']}/{v['n']}", f"{v['judge_top1']}/{v['n']}"] for k, v in summ.items()])
    return f"""# Logits vs probabilities

Optimizing a class's pre-softmax logit vs its softmax probability (featviz's `prob:N` maximizes the
log-probability, which has the same maximizer). Each class is rendered both ways with the same recipe,
seed, steps and size; the final images (8-bit, as saved) are measured on {model.name} and on another
network, the judge {judge.name}, after resizing to each network's input size.

## Settings

| setting | value |
|---|---|
| model | {s['model']} (measured at {model.input_size} px) |
| judge (transferability) | {s['judge']} (measured at {judge.input_size} px) |
| classes | {', '.join(f"{c} {model.label(c)}" for c in s['classes'])} |
| recipe | `default` (Fourier, decorrelated colour, 4 random crops per step, cosine-decayed Adam lr 0.05) |
| size, steps, seed | {s['size']} px, {s['steps']}, {s['seed']} |
| featviz, torch, threads | {s['featviz']}, {s['torch']}, {s['threads']} |
| total time | {results['seconds']} s |

## Images

![logit vs probability](logits.png)

## Measures

![measures](logits_plot.png)

{table}

Summary:

{summary}

Grey image (0.5 everywhere) for reference:

{grey}

Command: `featviz report logits {s['model']} --classes {','.join(map(str, s['classes']))} --judge {s['judge']} \
--size {s['size']} --steps {s['steps']} --seed {s['seed']}`
"""


def finite(results: dict) -> bool:
    """True if every measure of every row is a finite number."""
    for r in results["rows"]:
        for key in ("target_logit", "target_prob", "mean_other_logits", "judge_prob"):
            if not math.isfinite(r[key]):
                return False
    return True
