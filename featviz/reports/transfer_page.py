"""Writing the transfer report: its figures and its ``report.md``, read from the results dict."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import Dataset
from ..models.organism import ModelOrganism
from ._common import md_table
from ..figures import new_figure, save_figure
from .probe import PIXELS



# -- figures ---------------------------------------------------------------------------------------------

def accuracy_figure(results: dict, path: Path) -> None:
    rows = results["rows"]
    x = np.arange(len(rows))
    fig = new_figure((max(6.5, 0.8 * len(rows) + 2), 4.2))
    ax = fig.subplots()
    for net, colour, marker in (("trained", "#1f77b4", "o"), ("random", "#d62728", "s")):
        nets = [i for i, r in enumerate(rows) if r["layer"] != PIXELS]
        mean = [rows[i][net]["accuracy"] for i in nets]
        std = [rows[i][net]["std"] for i in nets]
        label = {"trained": f"trained ({results['settings']['model']})",
                 "random": "same architecture, random init"}[net]
        ax.errorbar(x[nets], mean, yerr=std, color=colour, marker=marker, capsize=3, label=label)
    pix = [i for i, r in enumerate(rows) if r["layer"] == PIXELS]
    if pix:
        r = rows[pix[0]]
        ax.errorbar([pix[0]], [r["trained"]["accuracy"]], yerr=[r["trained"]["std"]], color="#555555", marker="D",
                    capsize=3, linestyle="none", label="pixels (8x8 pooled input)")
    ax.axhline(results["chance"], color="k", linestyle="--", lw=1, label=f"chance ({results['chance']:.3f})")
    ax.set_xticks(x)
    ax.set_xticklabels([r["layer"] for r in rows], rotation=30, ha="right", fontsize=9)
    ax.set_xlabel("layer (input to output)")
    ax.set_ylabel(f"probe accuracy ({results['settings']['folds']}-fold CV, mean ± std)")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    n = results["data"]["images"]
    ax.set_title(f"Linear probe on pooled activations: {len(results['data']['classes'])} classes, {n} images",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def samples_figure(data: Dataset, path: Path, per_row: int = 4) -> None:
    n_classes = len(data.classes)
    cols = min(n_classes, 8)
    fig = new_figure((1.6 * cols, 1.7 * per_row))
    axes = fig.subplots(per_row, cols, squeeze=False)
    for c in range(cols):
        idx = torch.nonzero(data.labels == c).flatten()[:per_row]
        for r in range(per_row):
            ax = axes[r][c]
            ax.axis("off")
            if r < len(idx):
                ax.imshow(data.images[int(idx[r])].permute(1, 2, 0).numpy())
            if r == 0:
                ax.set_title(data.classes[c][:18], fontsize=9)
    more = f" (first {cols} of {n_classes} classes)" if cols < n_classes else ""
    fig.suptitle(f"Samples of the data{more}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def depth_figure(tiles: dict, k: int, path: Path, model_name: str) -> None:
    layers = list(dict.fromkeys(layer for layer, _c, _img in tiles["trained"]))
    n_rows = 2 * k
    fig = new_figure((1.45 * len(layers), 1.6 * n_rows))
    axes = fig.subplots(n_rows, len(layers), squeeze=False)
    for net_i, net in enumerate(("trained", "random")):
        by_layer: dict[str, list] = {}
        for layer, c, img in tiles[net]:
            by_layer.setdefault(layer, []).append((c, img))
        for j, layer in enumerate(layers):
            for i in range(k):
                ax = axes[net_i * k + i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                items = by_layer.get(layer, [])
                if i < len(items):
                    c, img = items[i]
                    ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
                    ax.set_xlabel(f"{c}", fontsize=7, labelpad=1)
                if net_i == 0 and i == 0:
                    ax.set_title(layer, fontsize=9)
                if j == 0:
                    ax.set_ylabel("trained" if net == "trained" else "random init", fontsize=9)
    fig.suptitle(f"{model_name}: the channels the probe leans on most, by depth (top: trained, bottom: "
                 "random init; channel index under each)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# -- report.md ---------------------------------------------------------------------------------------------------

def _pm(d: dict) -> str:
    return f"{d['accuracy']:.3f} ± {d['std']:.3f}"


def row_line(row: dict) -> str:
    """One line of a row: layer, trained and random accuracy."""
    line = f"{row['layer']:12s} trained {_pm(row['trained'])}"
    return line + (f"   random {_pm(row['random'])}" if row["random"] else "   (no network)")


def _reading(results: dict) -> str:
    """A short reading of the measured numbers (generated from them, not canned)."""
    rows = [r for r in results["rows"] if r["layer"] != PIXELS]
    if not rows:
        return "Only the pixels were probed."
    s = results["summary"]
    chance, folds = results["chance"], results["settings"]["folds"]
    tr, rn = s["trained"], s["random"]
    def at_chance(net):  # every layer within one fold std of chance
        return all(abs(r[net]["accuracy"] - chance) <= r[net]["std"] for r in rows)

    def peak(net, d):
        value = f"{d['peak_accuracy']:.3f} ± {d['peak_std']:.3f}"
        if at_chance(net):
            return f"stays within one fold std of chance at every layer (highest {d['peak_layer']}: {value})"
        layer = f"**{d['peak_layer']}**" if net == "trained" else d["peak_layer"]
        return f"peaks at {layer} ({value})"

    lines = [f"- Chance is {chance:.3f}. The probe on the trained network {peak('trained', tr)}; on the random "
             f"copy it {peak('random', rn)}."]
    if s["pixels"] is not None:
        pix = next(r for r in results["rows"] if r["layer"] == PIXELS)["trained"]
        lines.append(f"- Pixels (the input pooled to 8 x 8) give {_pm(pix)}.")
    gaps = ", ".join(f"{r['layer']} {r['gap']:+.3f} ({r['folds_trained_better']}/{folds})" for r in rows)
    lines.append(f"- What training adds (trained minus random accuracy; in brackets, the folds on which the "
                 f"trained network's probe scored higher): {gaps}.")

    def clear(r):  # above the random copy by more than both spreads
        return r["gap"] > r["trained"]["std"] + r["random"]["std"]
    first_clear = next((r["layer"] for r in rows if clear(r)), None)
    if first_clear is None:
        lines.append("- At no layer is the trained network ahead of the random copy by more than the two fold "
                     "spreads together: on this data, training did not make the pooled features more useful.")
    else:
        lines.append(f"- The trained network is ahead of the random copy by more than the two fold spreads "
                     f"together from **{first_clear}** on" +
                     ("" if all(clear(r) for r in rows[[x['layer'] for x in rows].index(first_clear):])
                      else " (not at every later layer)") + ".")
    early = rows[0]
    lines.append(f"- At the first probed layer ({early['layer']}) the gap is {early['gap']:+.3f}; at the widest "
                 f"({s['largest_gap']['layer']}) {s['largest_gap']['gap']:+.3f}.")
    peak_i = [r["layer"] for r in rows].index(tr["peak_layer"])
    last = rows[-1]
    if peak_i < len(rows) - 1:
        drop = tr["peak_accuracy"] - last["trained"]["accuracy"]
        if drop > tr["peak_std"] + last["trained"]["std"]:
            lines.append(f"- After its peak the trained probe falls to {last['trained']['accuracy']:.3f} at "
                         f"{last['layer']} (-{drop:.3f}, more than the fold spreads): the last layers are "
                         "more specific to the training task.")
        else:
            lines.append(f"- After its peak the trained probe stays within the fold spreads up to {last['layer']} "
                         f"({last['trained']['accuracy']:.3f}, -{drop:.3f}): no clear fall towards the output "
                         "on this task.")
    else:
        lines.append(f"- The trained probe is highest at the last probed layer ({last['layer']}).")
    return "\n".join(lines)


def transfer_markdown(results: dict, model: ModelOrganism, data_dir) -> str:
    s = results["settings"]
    d = results["data"]
    rows = results["rows"]
    table = md_table(["layer", "features", "trained", "random init", "gap", "trained better (folds)",
                      "penalties (trained / random)"],
                     [[r["layer"], f"{r['channels']} ({r['features']})", _pm(r["trained"]),
                       _pm(r["random"]) if r["random"] else "-", f"{r['gap']:+.3f}" if r["random"] else "-",
                       f"{r['folds_trained_better']}/{s['folds']}" if r["random"] else "-",
                       " ".join(f"{p:g}" for p in r["trained"]["penalties"]) + " / " +
                       (" ".join(f"{p:g}" for p in r["random"]["penalties"]) if r["random"] else "-")]
                      for r in rows])
    skipped = ""
    if d["skipped"]:
        skipped = "\nSkipped (unreadable):\n\n" + "\n".join(f"- {x}" for x in d["skipped"]) + "\n"
    pictures = ""
    if "pictures" in results:
        p = results["pictures"]
        pictures = f"""
## Pictures along the depth

For each layer, the {s['units_per_layer']} channels with the largest probe weights (norm over the classes of
the standardised weights of a probe fit on all the data with the penalty the cross-validation chose most
often), rendered with the `sharp` recipe ({p['steps']} steps, {p['size']} px, seed {s['seed']}); top rows:
the trained network, bottom rows: the random copy.

![channels by depth](depth_pictures.png)
"""
    command = f"featviz report transfer {s['model']}" + (f" {data_dir}" if data_dir is not None else "")
    command += f" --size {s['size']} --folds {s['folds']} --seed {s['seed']}"
    if s["per_class"]:
        command += f" --per-class {s['per_class']}"
    if not s["pictures"]:
        command += " --no-pictures"
    secs = results["seconds"]
    return f"""# General to specific: linear probes along the depth

A linear probe (multinomial logistic regression) is fit on the spatially pooled activations of each layer
for a task {s['model']} was not trained on, and the same probe on a copy of the network with random weights.
Where the trained network's probe is far above the random one, training made the features more useful for
the new task; the pixels row shows what a probe gets from the raw input.

See also the fine-tuning report (`featviz report finetune`), which asks the same question by training: ImageNet
weights vs a fresh initialization at a few examples per class, and how much each layer changes.

## Settings

| setting | value |
|---|---|
| model | {s['model']} |
| data | {d['description']} |
| classes (images) | {', '.join(f"{c} ({n})" for c, n in zip(d['classes'], d['counts']))} |
| image size | {s['size']} px |
| layers | {', '.join(s['layers'])} |
| features | mean over positions of each layer's output; `pixels`: the input average-pooled to 8 x 8 (192 values) |
| probe | scikit-learn `Pipeline(StandardScaler, LogisticRegressionCV)`: multinomial logistic regression, L2 penalty on the weights (lbfgs), features standardised with the training fold's mean and std |
| penalty | chosen per training fold by {s['inner_folds']}-fold inner cross-validation from {', '.join(f'{p:g}' for p in s['penalties'])} (`LogisticRegressionCV`, stratified; best mean held-out accuracy, ties: the stronger penalty) |
| evaluation | stratified {s['folds']}-fold cross-validation (seed {s['seed']}), accuracy mean ± std over the folds; both networks on the same folds |
| random copy | the same architecture and normalization; {s['random_init']}; seed {s['seed']} |
| chance | {results['chance']:.3f} (most frequent class) |
| featviz, torch, threads | {s['featviz']}, {s['torch']}, {s['threads']} (probes on 1 thread) |
| time | {secs.get('total')} s (data {secs.get('data')}, features {secs.get('features')}, probes {secs.get('probes')}, pictures {secs.get('pictures', '-')}) |
{skipped}
![data samples](data_samples.png)

## Accuracy by depth

![accuracy by depth](accuracy_by_depth.png)

{table}

## Reading

{_reading(results)}
{pictures}
Command: `{command}`
"""
