"""Report: from general to specific features, measured by transfer to a new task.

Claim (Yosinski et al. 2014; Distill, "Feature Visualization"): early layers
learn general features (edges, colours, textures), late layers task-specific
ones, which is why ImageNet weights transfer. This report fits a linear probe
on the spatially pooled activations of layers along the depth, on a task the
network was not trained on, and compares the same probe on a randomly
initialised copy of the network (same architecture, no training) and on the
raw pixels. What training adds at each depth is the gap between the two
networks.

- Data (``featviz.data``): a folder with one sub-folder per class, or the offline
  demo task (``demo_shapes``): six outline shapes drawn on textured backgrounds, with
  colour, size, rotation, position, stroke and background as nuisances.
- Features: the mean over positions of each chosen layer's output.
- Probe (``reports.probe``): scikit-learn's Pipeline(StandardScaler,
  LogisticRegressionCV): multinomial logistic regression on features
  standardised with the training fold's statistics, its L2 penalty chosen by an
  inner stratified cross-validation on the training fold; stratified k-fold
  accuracy (mean and std over the folds).
- Random copy (``featviz.models.random_init.random_copy``): He-normal weights, zero biases, then each
  convolution rescaled so its output has unit variance on a batch of the data
  (LSUV, Mishkin & Matas 2016).
- Pictures: channel visualizations of the units the probe leans on most, along
  the same depth axis, for the trained and the random network.

Figures and ``report.md`` are written by ``reports.transfer_page``. The
fine-tuning report (``featviz report finetune``) asks the same question by
training instead of probing.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data import Dataset, demo_dataset, load_class_folder
from ..errors import FeatvizError
from ..models import load
from ..models.organism import ModelOrganism
from ..models.random_init import random_copy
from ._common import environment, out_folder, write_json, write_text
from .site import SiteEntry
from .probe import PENALTIES, PIXEL_GRID, PIXELS, pooled_features, probe_channels, probe_cv
from .transfer_page import accuracy_figure, depth_figure, row_line, samples_figure, transfer_markdown

__all__ = ["transfer_report", "load_folder", "row_line", "site_entry"]

DEFAULT_LAYERS = 8  # layers along the depth when none are given (first and last included)


def load_folder(model: ModelOrganism, data_dir, size: int, folds: int, per_class: int | None = None) -> Dataset:
    """Images of ``data_dir/<class>/*`` through ``model.preprocess`` (short side resized, centre
    crop to ``size``); unreadable files are skipped and listed, a class without readable images is
    left out (and listed). With ``per_class``, at most that many images per class (the first in
    name order). Every class needs at least ``folds`` images for the cross-validation."""
    ds = load_class_folder(data_dir, model.preprocess, size, per_class)
    small = [(c, n) for c, n in zip(ds.classes, ds.counts()) if n < folds]
    if small:
        raise FeatvizError(f"{folds}-fold cross-validation needs at least {folds} images per class; too few in "
                           + ", ".join(f"{c} ({n})" for c, n in small))
    return ds


# -- the report -----------------------------------------------------------------------------------------

DEMO_SIZE = 160
DEMO_PER_CLASS = 48


def _depth_order(model: ModelOrganism, layers: Sequence[str]) -> list[str]:
    """Unique layers in forward order, ``pixels`` first; unknown names raise with suggestions."""
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise FeatvizError("give at least one layer")
    nets = [l for l in layers if l != PIXELS]
    order = {l: model.layer(l).order for l in nets}
    return ([PIXELS] if PIXELS in layers else []) + sorted(nets, key=order.__getitem__)


def transfer_report(model, data_dir=None, out_dir="report-transfer", *, layers: Sequence[str] | None = None,
                    size: int | None = None, per_class: int | None = None, folds: int = 5, seed: int = 0,
                    pixels: bool = True, pictures: bool = True, units: int = 2, picture_size: int = 112,
                    picture_steps: int = 128, penalties: Sequence[float] = PENALTIES, inner_folds: int = 3,
                    log=None) -> dict:
    """Linear-probe accuracy along the depth, on a task ``model`` was not trained on, for the
    trained network and a randomly initialised copy (see the module docstring).

    data_dir: a folder with one sub-folder of images per class, or None for the offline demo
    task (``demo_shapes``, ``per_class`` images per class, default 48). size: image side fed
    to the networks (default 160 px for the demo, the model's input size for a folder).
    layers: default ``model.default_layers(8, first=True)``; ``pixels`` (added when ``pixels``) is the input
    average-pooled to 8 x 8. pictures: channel visualizations of the ``units`` channels per
    layer the probe leans on most, for both networks (``picture_size`` px, ``picture_steps``
    steps of the ``sharp`` recipe).

    Writes ``accuracy_by_depth.png``, ``data_samples.png``, ``depth_pictures.png`` (with
    ``pictures``), ``report.md`` and ``results.json`` under ``out_dir``; returns the results dict.
    """
    say = log or (lambda msg: None)
    model = load(model)  # a name, a spec, or an organism as is
    if folds < 2:
        raise FeatvizError(f"folds must be at least 2, got {folds}")
    if inner_folds < 2:
        raise FeatvizError(f"inner folds must be at least 2, got {inner_folds}")
    if per_class is not None and per_class < 1:
        raise FeatvizError(f"images per class must be at least 1, got {per_class}")
    if units < 1:
        raise FeatvizError(f"units per layer must be at least 1, got {units}")
    if not penalties:
        raise FeatvizError("give at least one penalty")
    size = int(size or (DEMO_SIZE if data_dir is None else model.input_size))
    if size < 32 or size > 1024:
        raise FeatvizError(f"size must be between 32 and 1024 px, got {size}")
    chosen = list(layers) if layers else model.default_layers(DEFAULT_LAYERS, first=True)
    if pixels and PIXELS not in chosen:
        chosen = [PIXELS] + chosen
    layers = _depth_order(model, chosen)
    timing: dict[str, float] = {}
    t_start = t = time.perf_counter()

    # Data.
    if data_dir is None:
        n_per = per_class or DEMO_PER_CLASS
        if n_per < folds:
            raise FeatvizError(f"{folds}-fold cross-validation needs at least {folds} images per class, "
                               f"got {n_per}")
        data = demo_dataset(n_per, size, seed)
        per_class = n_per
    else:
        data = load_folder(model, data_dir, size, folds, per_class)
    n_classes = len(data.classes)
    counts = data.counts()
    chance = max(counts) / sum(counts)
    say(f"data: {len(data.labels)} images, {n_classes} classes ({data.source})")
    if data.skipped:
        say(f"skipped {len(data.skipped)} unreadable files")
    timing["data"] = time.perf_counter() - t

    # The random copy, calibrated on a seeded sample of the data.
    t = time.perf_counter()
    g = torch.Generator().manual_seed(int(seed))
    calib = data.images[torch.randperm(len(data.labels), generator=g)[:32]]
    rand = random_copy(model, calib, seed=seed)
    timing["random_init"] = time.perf_counter() - t

    # Features.
    t = time.perf_counter()
    feats = {"trained": pooled_features(model, data.images, layers),
             "random": pooled_features(rand, data.images, layers)}
    timing["features"] = time.perf_counter() - t
    say(f"features of {len(layers)} layers in {timing['features']:.1f} s")

    # Probes.
    t = time.perf_counter()
    rows = []
    for depth, layer in enumerate(layers):
        row = {"layer": layer, "depth": depth}
        if layer == PIXELS:
            row.update(channels=3 * PIXEL_GRID * PIXEL_GRID, spatial=None, features="input pooled to 8x8")
        else:
            info = model.layer(layer)
            row.update(channels=info.channels, features="mean over positions",
                       spatial=[info.height, info.width] if info.spatial else None)
        row["trained"] = probe_cv(feats["trained"][layer], data.labels, n_classes, folds, seed, penalties,
                                  inner_folds)
        if layer == PIXELS:  # no network involved: one probe, no random counterpart
            row.update(random=None, gap=None, folds_trained_better=None)
        else:
            row["random"] = probe_cv(feats["random"][layer], data.labels, n_classes, folds, seed, penalties,
                                     inner_folds)
            row["gap"] = row["trained"]["accuracy"] - row["random"]["accuracy"]
            row["folds_trained_better"] = int(sum(a > b for a, b in zip(row["trained"]["folds"],
                                                                           row["random"]["folds"])))
        rows.append(row)
        say(row_line(row))
    timing["probes"] = time.perf_counter() - t

    out = out_folder(out_dir)
    results = {
        "report": "transfer",
        "settings": {"model": model.name, "data": data.source, "size": size, "per_class": per_class,
                     "layers": layers, "folds": folds, "inner_folds": inner_folds, "penalties": list(penalties),
                     "seed": seed, "pictures": pictures, "units_per_layer": units, "picture_size": picture_size,
                     "picture_steps": picture_steps, "random_init": "He-normal, zero biases, LSUV rescale of every "
                     "convolution to unit output variance on 32 images of the data (2 passes)", **environment()},
        "data": {"description": data.description, "classes": data.classes, "counts": counts,
                 "images": len(data.labels), "skipped": data.skipped or []},
        "chance": chance,
        "rows": rows,
        "summary": _summary(rows, chance),
    }

    # Pictures: the channels each probe leans on, along the depth.
    if pictures:
        t = time.perf_counter()
        results["pictures"] = _pictures(model, rand, feats, data, rows, units, picture_size, picture_steps, seed,
                                        out, say)
        timing["pictures"] = time.perf_counter() - t

    samples_figure(data, out / "data_samples.png")
    accuracy_figure(results, out / "accuracy_by_depth.png")
    timing["total"] = time.perf_counter() - t_start
    results["seconds"] = {k: round(v, 1) for k, v in timing.items()}
    write_json(out / "results.json", results)
    write_text(out / "report.md", transfer_markdown(results, model, data_dir))
    return results


def _pictures(model, rand, feats, data, rows, k, size, steps, seed, out: Path, say) -> dict:
    from ..optvis.render import finished, render_units

    n_classes = len(data.classes)
    pics: dict[str, list[dict]] = {"trained": [], "random": []}
    tiles: dict[str, list] = {"trained": [], "random": []}
    for row in rows:
        layer = row["layer"]
        if layer == PIXELS:
            continue
        for net, organism in (("trained", model), ("random", rand)):
            # the penalty most often chosen by the cross-validation
            pens = row[net]["penalties"]
            penalty = max(set(pens), key=lambda p: (pens.count(p), p))
            chans = probe_channels(feats[net][layer], data.labels, n_classes, penalty, k)
            res = finished(render_units(organism, [(layer, c) for c in chans], batch_size=len(chans), size=size,
                                        steps=steps, recipe="sharp", seed=seed))
            for c, r in zip(chans, res):
                tiles[net].append((layer, c, r.images[0]))
                pics[net].append({"layer": layer, "channel": c, "penalty": penalty,
                                  "final_objective": r.settings.get("final_objective")})
            say(f"{layer}: {net} channels {chans} rendered")
    depth_figure(tiles, k, out / "depth_pictures.png", model.name)
    return {"recipe": "sharp", "size": size, "steps": steps, **pics}


def _summary(rows: list[dict], chance: float) -> dict:
    nets = [r for r in rows if r["layer"] != PIXELS]
    pix = next((r for r in rows if r["layer"] == PIXELS), None)
    out = {"chance": chance, "pixels": pix["trained"]["accuracy"] if pix else None}
    for net in ("trained", "random"):
        best = max(nets, key=lambda r: r[net]["accuracy"]) if nets else None
        out[net] = {"peak_layer": best["layer"] if best else None,
                    "peak_accuracy": best[net]["accuracy"] if best else None,
                    "peak_std": best[net]["std"] if best else None,
                    "last_layer_accuracy": nets[-1][net]["accuracy"] if nets else None}
    if nets:
        widest = max(nets, key=lambda r: r["gap"])
        out["largest_gap"] = {"layer": widest["layer"], "gap": widest["gap"]}
        out["gaps"] = {r["layer"]: r["gap"] for r in nets}
    return out


def site_entry(results: dict) -> SiteEntry:
    """The report on a microscope's model page: the best layers in one line, and each layer's probe
    accuracy (trained, random init) beside it in the layer table."""
    s = results.get("summary") or {}
    if not s.get("trained"):
        return SiteEntry("transfer")
    trained, random = s["trained"], s["random"]

    def cell(value):
        return "" if value is None else f"{value:.3f}"

    cells = {r["layer"]: [cell(r["trained"]["accuracy"]), cell((r.get("random") or {}).get("accuracy"))]
             for r in results.get("rows", [])}
    summary = (f"linear probes on a new task ({len(results['data']['classes'])} classes); best layer: trained "
               f"{trained['peak_layer']} ({trained['peak_accuracy']:.3f}), random init {random['peak_layer']} "
               f"({random['peak_accuracy']:.3f}); chance {results['chance']:.3f}")
    return SiteEntry("transfer", summary, ("probe, trained", "probe, random init"),
                     "linear-probe accuracy on a new task (featviz report transfer)", cells)
