"""Report: what ImageNet weights are worth on a new task, by fine-tuning with few examples per class.

Claim (Yosinski et al. 2014; Kornblith et al. 2019): ImageNet-initialized networks
fine-tune to a new task far better than the same architecture trained from scratch
with the same budget, most of all with few examples per class, because their early
layers hold general features that fine-tuning barely changes while late layers
become specific to the task.

- Data: a folder of class folders or the offline demo task (shapes on textures),
  split by ``featviz.training`` into a fixed held-out set and nested training sets
  (the first ``b`` images per class for each budget ``b``).
- Runs: for every budget, fine-tuning from the ImageNet weights and from a fresh
  initialization of the same architecture (He + LSUV, ``random_copy``), with the
  same optimizer, learning rate, augmentation, batch size and number of steps.
- Measures: held-out accuracy of every run; linear CKA of every main layer of the
  fine-tuned network to its starting network on the held-out images (for the
  largest budget), pretrained and scratch.

The linear-probe report (``featviz report transfer``) asks the same question without
training: how linearly useful each layer's features are, trained vs random weights.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ..data import Dataset
from ..errors import FeatvizError
from ..models import load
from ..models.organism import ModelOrganism
from ..training.cka import label_cka_axes, layer_grams, linear_cka_from_grams
from ..training.data import Split
from ..training.finetune import TrainSettings, prepare, train
from ..training.network import organism_from
from ._common import environment, md_table, out_folder, write_json, write_text
from ..figures import new_figure, save_figure
from .site import SiteEntry

BUDGETS = (2, 5, 10, 25)
STEPS = 60


def _first_per_class(data: Dataset, n: int) -> Dataset:
    """The first ``n`` images of every class, in the data set's order (nested across budgets)."""
    labels = data.labels.numpy()
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(len(data.classes))]))
    idx = torch.from_numpy(keep)
    return Dataset(data.images[idx], data.labels[idx], data.classes, f"{n} per class of {data.description}",
                   data.source)


def _cka_by_layer(model: ModelOrganism, result, split: Split, layers: Sequence[str]) -> dict[str, float]:
    """Linear CKA of each layer of the trained network to its starting network, on the held-out images."""
    size = split.train.images.shape[-1]
    end = organism_from(result.trainable, model, "end", split.classes, size)
    start = organism_from(result.trainable, model, "start", split.classes, size)
    start.network.load_state_dict(result.start_state)
    before = layer_grams(start, split.heldout.images, layers)
    after = layer_grams(end, split.heldout.images, layers)
    return {name: linear_cka_from_grams(before[name], after[name]) for name in layers}


def finetune_report(model, data_dir=None, out_dir="report-finetune", *, budgets: Sequence[int] = BUDGETS,
                    steps: int = STEPS, settings: TrainSettings | None = None, log=None) -> dict:
    """Held-out accuracy of ImageNet-initialized vs from-scratch fine-tuning at each examples-per-class
    budget (same steps), and per-layer CKA to the starting network (see the module docstring).

    settings: the training settings shared by every run (``per_class``, ``steps``,
    ``from_scratch`` are set per run); default ``TrainSettings(batch_size=16, holdout=10)``.
    Writes ``accuracy_by_budget.png``, ``cka_by_depth.png``, ``report.md`` and ``results.json``
    under ``out_dir``; returns the results dict.
    """
    say = log or (lambda msg: None)
    model = load(model)  # a name, a spec, or an organism as is
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 1:
        raise FeatvizError(f"budgets must be whole numbers of examples per class, at least 1, got {list(budgets)}")
    if steps < 1:
        raise FeatvizError(f"steps must be at least 1, got {steps}")
    base = settings or TrainSettings()
    base = replace(base, per_class=max(budgets), steps=steps, from_scratch=False)
    base.check()
    t_start = time.perf_counter()
    split = prepare(model, data_dir, base)
    counts = split.train.counts()
    if min(counts) < max(budgets):
        raise FeatvizError(f"the largest budget is {max(budgets)} examples per class, but class "
                           f"{split.classes[int(np.argmin(counts))]!r} has only {min(counts)} training images "
                           f"(after {base.holdout} held out); give smaller --budgets")
    layers = [info.name for info in model.layers()]
    say(f"data: {len(split.classes)} classes, up to {max(budgets)} training and "
        f"{len(split.heldout.labels)} held-out images per class")

    accuracy: dict[str, dict[str, float]] = {"pretrained": {}, "scratch": {}}
    runs, cka, seconds = [], {}, {}
    for budget in budgets:
        sub = Split(_first_per_class(split.train, budget), split.heldout, split.classes, split.description,
                    split.skipped)
        for kind in ("pretrained", "scratch"):
            t = time.perf_counter()
            run_settings = replace(base, per_class=budget, from_scratch=kind == "scratch")
            result = train(model, sub, run_settings)
            seconds[f"{kind}/{budget}"] = time.perf_counter() - t
            accuracy[kind][str(budget)] = result.heldout_accuracy
            runs.append({"kind": kind, "per_class": budget, "heldout_accuracy": result.heldout_accuracy,
                         "final_train_loss": result.metrics["epochs"][-1]["train_loss"],
                         "seconds": round(seconds[f"{kind}/{budget}"], 1)})
            say(f"{kind:10s} {budget:3d} per class: held-out accuracy {result.heldout_accuracy:.3f}")
            if budget == budgets[-1]:
                cka[kind] = _cka_by_layer(model, result, sub, layers)

    out = out_folder(out_dir)
    chance = max(split.heldout.counts()) / len(split.heldout.labels)
    results = {
        "report": "finetune",
        "settings": {"model": model.name, "data": str(data_dir) if data_dir else "demo", "budgets": budgets,
                     "steps": steps, "batch_size": base.batch_size, "lr": base.lr,
                     "head_lr_factor": base.head_lr_factor,
                     "weight_decay": base.weight_decay, "holdout": base.holdout,
                     "size": int(split.train.images.shape[-1]), "seed": base.seed,
                     "freeze_until": base.freeze_until, **environment()},
        "data": {"description": split.description, "classes": split.classes,
                 "heldout_images": len(split.heldout.labels), "skipped": split.skipped},
        "chance": chance,
        "accuracy": accuracy,
        "cka": cka["pretrained"],
        "cka_scratch": cka["scratch"],
        "cka_budget": budgets[-1],
        "runs": runs,
        "seconds": {"total": round(time.perf_counter() - t_start, 1)},
    }
    _accuracy_figure(results, out / "accuracy_by_budget.png")
    _cka_figure(results, out / "cka_by_depth.png")
    write_json(out / "results.json", results)
    write_text(out / "report.md", _markdown(results, data_dir))
    return results


# -- figures -------------------------------------------------------------------------------------------

def _accuracy_figure(results: dict, path) -> None:
    fig = new_figure((6.2, 4.0))
    ax = fig.subplots()
    budgets = results["settings"]["budgets"]
    for kind, colour, marker in (("pretrained", "#1f77b4", "o"), ("scratch", "#d62728", "s")):
        label = {"pretrained": f"ImageNet-initialized {results['settings']['model']}",
                 "scratch": "same architecture, from scratch"}[kind]
        ax.plot(budgets, [results["accuracy"][kind][str(b)] for b in budgets], marker=marker, color=colour,
                label=label)
    ax.axhline(results["chance"], color="k", linestyle="--", lw=1, label=f"chance ({results['chance']:.3f})")
    ax.set_xscale("log")
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("training examples per class")
    ax.set_ylabel(f"held-out accuracy ({results['data']['heldout_images']} images)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Fine-tuning with the same {results['settings']['steps']} steps at every budget", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _cka_figure(results: dict, path) -> None:
    layers = list(results["cka"])
    fig = new_figure((max(6.5, 0.42 * len(layers) + 2), 4.0))
    ax = fig.subplots()
    x = np.arange(len(layers))
    ax.plot(x, list(results["cka"].values()), marker="o", color="#1f77b4", label="ImageNet-initialized")
    ax.plot(x, list(results["cka_scratch"].values()), marker="s", color="#d62728", label="from scratch")
    label_cka_axes(ax, layers)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"How much each layer changed ({results['cka_budget']} examples per class, "
                 f"{results['settings']['steps']} steps)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# -- report.md ---------------------------------------------------------------------------------------------

def _reading(results: dict) -> str:
    """A reading generated from the numbers, saying so when they do not show the expected pattern."""
    budgets = results["settings"]["budgets"]
    acc = results["accuracy"]
    gaps = {b: acc["pretrained"][str(b)] - acc["scratch"][str(b)] for b in budgets}
    n_held = results["data"]["heldout_images"]
    noise = 1.0 / np.sqrt(n_held)  # rough binomial spread of an accuracy on n_held images (at p = 0.5)
    lines = []
    ahead = [b for b in budgets if gaps[b] > noise]
    if len(ahead) == len(budgets):
        lines.append(f"- As expected, the ImageNet-initialized network is ahead of the from-scratch one at every "
                     f"budget by more than the rough spread of an accuracy on {n_held} images (±{noise:.2f}): "
                     + ", ".join(f"{b}/class {gaps[b]:+.3f}" for b in budgets) + ".")
    else:
        behind = [b for b in budgets if b not in ahead]
        lines.append(f"- **Not the expected pattern everywhere**: at {', '.join(f'{b}/class' for b in behind)} the "
                     f"ImageNet-initialized network is not ahead by more than ±{noise:.2f} (the rough spread on "
                     f"{n_held} held-out images); gaps: " + ", ".join(f"{b}/class {gaps[b]:+.3f}" for b in budgets)
                     + ".")
    small, large = budgets[0], budgets[-1]
    if len(budgets) > 1:
        if gaps[small] > gaps[large]:
            lines.append(f"- The gap is larger with few examples ({small}/class: {gaps[small]:+.3f}) than with "
                         f"many ({large}/class: {gaps[large]:+.3f}), as the claim predicts.")
        else:
            lines.append(f"- **Unexpected**: the gap is not larger with few examples ({small}/class: "
                         f"{gaps[small]:+.3f}) than with many ({large}/class: {gaps[large]:+.3f}).")
    cka = results["cka"]
    layers = list(cka)
    body = [name for name in layers if name != layers[-1]]  # the new classifier starts random either way
    first, last = body[0], body[-1]
    lines.append(f"- CKA to the starting network after fine-tuning ({results['cka_budget']}/class): {first} "
                 f"{cka[first]:.3f}, {last} {cka[last]:.3f} (lowest {min(body, key=cka.get)} "
                 f"{min(cka[n] for n in body):.3f}); from scratch: {first} {results['cka_scratch'][first]:.3f}, "
                 f"{last} {results['cka_scratch'][last]:.3f}.")
    if cka[first] > cka[last] + 0.05:
        lines.append(f"- The early layers stay close to their ImageNet features and the late ones move: general "
                     f"features at the bottom, specific ones at the top ({first} {cka[first]:.3f} vs {last} "
                     f"{cka[last]:.3f}).")
    else:
        lines.append(f"- **Not the expected pattern**: the last layer before the classifier ({last}, "
                     f"{cka[last]:.3f}) changed no more than the first ({first}, {cka[first]:.3f}).")
    return "\n".join(lines)


def _markdown(results: dict, data_dir) -> str:
    s = results["settings"]
    budgets = s["budgets"]
    table = md_table(["examples per class", "ImageNet-initialized", "from scratch", "gap"],
                     [[b, f"{results['accuracy']['pretrained'][str(b)]:.3f}",
                       f"{results['accuracy']['scratch'][str(b)]:.3f}",
                       f"{results['accuracy']['pretrained'][str(b)] - results['accuracy']['scratch'][str(b)]:+.3f}"]
                      for b in budgets])
    cka_table = md_table(["layer", "CKA, ImageNet-initialized", "CKA, from scratch"],
                         [[name, f"{value:.3f}", f"{results['cka_scratch'][name]:.3f}"]
                          for name, value in results["cka"].items()])
    command = f"featviz report finetune {s['model']}" + (f" {data_dir}" if data_dir is not None else "")
    command += f" --budgets {','.join(str(b) for b in budgets)} --steps {s['steps']} --size {s['size']} " \
               f"--seed {s['seed']}"
    skipped = ""
    if results["data"]["skipped"]:
        skipped = "\nSkipped (unreadable):\n\n" + "\n".join(f"- {x}" for x in results["data"]["skipped"]) + "\n"
    return f"""# Fine-tuning: ImageNet weights vs training from scratch

{s['model']} is fine-tuned on a task it was not trained on, from its ImageNet weights and from a fresh
initialization of the same architecture, with the same budget, at several numbers of training examples per
class. Then each layer of the fine-tuned network is compared with the same layer before fine-tuning (linear
CKA on the held-out images): how much of each layer's representation fine-tuning kept.

See also the linear-probe report (`featviz report transfer`), which measures the same general-to-specific
question without training: how useful each layer's features are to a linear probe, trained vs random weights.

## Settings

| setting | value |
|---|---|
| model | {s['model']} |
| data | {results['data']['description']} |
| classes | {', '.join(results['data']['classes'])} |
| held-out images | {results['data']['heldout_images']} ({s['holdout']} per class; the same for every run) |
| training | AdamW, lr {s['lr']:g} for the network and {s['lr'] * s['head_lr_factor']:g} for the new classifier (cosine decay), weight decay {s['weight_decay']:g}, batch {s['batch_size']}, {s['steps']} steps for every run, gradient norm clipped to 1, random flips and shifts |
| from scratch | same architecture and input normalization; He-normal weights, LSUV rescale to unit output variance (the built-in networks have batch norm folded into their convolutions) |
| image size | {s['size']} px |
| seed | {s['seed']} |
| featviz, torch, threads | {s['featviz']}, {s['torch']}, {s['threads']} |
| time | {results['seconds']['total']} s |
{skipped}
## Held-out accuracy by budget

![accuracy by budget](accuracy_by_budget.png)

{table}

(chance {results['chance']:.3f})

## How much each layer changed

![CKA by depth](cka_by_depth.png)

{cka_table}

## Reading

{_reading(results)}

Command: `{command}`
"""


def site_entry(results: dict) -> SiteEntry:
    """The report on a microscope's model page: accuracy at the smallest and largest budget in one
    line, and each layer's CKA to the starting network after fine-tuning beside it in the layer table."""
    budgets = results["settings"]["budgets"]
    acc = results["accuracy"]
    summary = ("fine-tuning on a new task, ImageNet weights vs from scratch: "
               + ", ".join(f"{b}/class {acc['pretrained'][str(b)]:.3f} vs {acc['scratch'][str(b)]:.3f}"
                           for b in (budgets[0], budgets[-1])))
    cells = {layer: [f"{value:.3f}"] for layer, value in results["cka"].items()}
    return SiteEntry("finetune", summary, ("CKA after fine-tuning",),
                     "linear CKA of the layer to itself before fine-tuning (featviz report finetune)", cells)
