"""The optimized images of the microscope, rendered in batches through the engine.

- ``render_kind``: channel / neuron / negative-channel visualizations of many
  units, one unit per batch element (``featviz.optvis.render_units``).
- ``render_diversity``: several different images per unit, for several units
  in one optimization: each unit's images maximize its channel while a
  diversity term pushes them apart *within the unit's group only*.
- ``render_dream``: DeepDream of a whole layer; ``render_classes``: class
  logits, one class per batch element.

Every function takes an explicit seed and returns images on the CPU in [0, 1].
An interrupted render (Ctrl-C) raises ``KeyboardInterrupt`` rather than
returning a half-optimized image, so nothing unfinished is ever recorded.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..optvis import render, render_units
from ..optvis.objectives import (Objective, Unit, batched_channels, deepdream, diversity, logit, spatial,
                                 with_relative_term)
from ..optvis.axes import COSINE_FLOOR
from ..optvis.render import finished
from .settings import BuildSettings, diversity_params, kind_params

Callback = Callable[[int, float], None] | None
MAX_DIVERSITY_CHANNELS = 512  # wider layers measure diversity on an earlier layer (Gram cost ~ C^2)


def _check(result) -> None:
    finished(result)


def rendered_layer(model, kind: str, layer: str) -> str:
    """The layer a ``kind`` image of ``layer``'s units optimizes: the negative image of a rectified unit
    (lite0's head ends in ReLU6) minimizes its pre-activation, because after the rectifier every image that
    switches the unit off scores 0 (``ModelOrganism.pre_rectifier``); everything else, the layer itself."""
    return model.pre_rectifier(layer) if kind == "negative" else layer


def continuation(settings: dict, params: dict) -> dict | None:
    """Render settings that carry on a batch the plateau stop ended with some images still rising: the steps of
    ``params`` (the batch's own render settings) it did not take, from the learning rate its cosine schedule had
    reached (a fresh optimizer, so the first steps do not jump), until every carried image has levelled off too
    (the same plateau, all of them) or the steps run out. None when the render ran to the end or every image had
    levelled off."""
    stopped, rising = settings.get("stopped_at_plateau"), settings.get("still_rising")
    steps = params["steps"]
    if not stopped or not rising or stopped >= steps:
        return None
    recipe = settings["recipe"]
    lr = recipe["lr"]
    if recipe.get("lr_schedule") == "cosine":
        floor = COSINE_FLOOR * lr
        lr = floor + (lr - floor) * (1 + math.cos(math.pi * stopped / max(steps - 1, 1))) / 2
    return params | {"steps": steps - stopped, "lr": lr, "plateau_share": 1.0}


def render_kind(model, kind: str, units: Sequence[tuple[str, int]], s: BuildSettings, seed: int,
                callback: Callback = None) -> list[tuple[torch.Tensor, float]]:
    """One batch: (image (3, H, W), final objective of this image) per unit (of ``rendered_layer``).

    With the build's plateau stop, the batch ends once most of its images have levelled off; the images still
    rising then continue alone, so no image is cut short."""
    units = [(rendered_layer(model, kind, layer), unit) for layer, unit in units]
    params = kind_params(kind, s)
    results = render_units(model, list(units), batch_size=len(units), kind=kind, seed=seed, callback=callback,
                           **params)
    for res in results:
        _check(res)
    if len(results) != len(units):
        raise KeyboardInterrupt
    images = torch.cat([r.images for r in results])
    more = continuation(results[0].settings, params)
    if more is not None:
        rising = results[0].settings["still_rising"]
        carried = render_units(model, [units[i] for i in rising], batch_size=len(rising), kind=kind, seed=seed + 1,
                               callback=callback, init_image=images[rising].to(model.device), **more)
        for res in carried:
            _check(res)
        if len(carried) != len(rising):
            raise KeyboardInterrupt
        images[rising] = torch.cat([r.images for r in carried])
    # The engine keeps one history (sum over the batch); report each image's own value.
    values = _final_values(model, kind, units, images)
    return list(zip(images, values))


@torch.no_grad()
def _final_values(model, kind: str, units, images: torch.Tensor) -> list[float]:
    """Each unit's objective on its final image (no transforms)."""
    layers = list(dict.fromkeys(layer for layer, _ in units))
    acts = model.activations(images.to(model.device), layers)
    values = []
    for i, (layer, ch) in enumerate(units):
        a = spatial(acts, layer)[i, ch]
        if kind == "neuron":
            v = a[a.shape[0] // 2, a.shape[1] // 2]
        else:
            v = a.mean()
        values.append(float(-v if kind == "negative" else v))
    return values


def diversity_layer(model, layer: str) -> str:
    """The layer whose Gram matrices measure diversity: the unit's own, or for a very
    wide layer the nearest earlier spatial main layer that is narrow enough."""
    info = model.layer(layer)
    if info.channels <= MAX_DIVERSITY_CHANNELS:
        return layer
    earlier = [i for i in model.layers() if i.spatial and i.order < info.order
               and i.channels <= MAX_DIVERSITY_CHANNELS]
    return earlier[-1].name if earlier else layer


def grouped_diversity(units: Sequence[tuple[str, int]], per_unit: int, weight: float,
                      div_layers: dict[str, str]) -> Objective:
    """Batch element ``i`` maximizes the channel of ``units[i // per_unit]``; the images of
    one unit are pushed apart (minus the mean cosine similarity of their Gram matrices to
    the group's other images, on ``div_layers[layer]``), scaled by ``weight`` x the image's own
    |activation| so that one weight works for layers whose activations differ by orders of magnitude."""
    units = list(units)
    channels = batched_channels([unit for unit in units for _ in range(per_unit)])
    apart = diversity([div_layers[layer] for layer, _ in units], group_size=per_unit)
    combined = with_relative_term(channels, apart, weight)
    # The images are compared within each view (random crop) only, never across views, and the
    # render loop splits a big batch into groups of *whole views* (every image once per view): so
    # the loop may evaluate it in groups, which keeps CPU passes at a cache-friendly size.
    return Objective(combined.fn, combined.layers, f"{len(units)} units x {per_unit} diverse images",
                     [Unit(l, c) for l, c in units], rowwise=True)


def render_diversity(model, units: Sequence[tuple[str, int]], s: BuildSettings, seed: int,
                     callback: Callback = None) -> list[list[torch.Tensor]]:
    """One batch: ``s.diversity_images`` different images per unit."""
    per = s.diversity_images
    div_layers = {layer: diversity_layer(model, layer) for layer, _ in units}
    objective = grouped_diversity(units, per, s.diversity, div_layers).validate(model)
    params = diversity_params(s)
    res = render(model, objective, batch=len(units) * per, seed=seed, callback=callback, **params)
    _check(res)
    images = res.images
    more = continuation(res.settings, params)
    if more is not None:  # carry on the units with an image still rising, each with its whole group
        rising = sorted({i // per for i in res.settings["still_rising"]})
        rows = [u * per + j for u in rising for j in range(per)]
        again = grouped_diversity([units[u] for u in rising], per, s.diversity, div_layers).validate(model)
        carried = render(model, again, batch=len(rows), seed=seed + 1, callback=callback,
                         init_image=images[rows].to(model.device), **more)
        _check(carried)
        images = images.clone()
        images[rows] = carried.images
    return [[images[u * per + j] for j in range(per)] for u in range(len(units))]


def render_dream(model, layer: str, s: BuildSettings, seed: int, callback: Callback = None) -> torch.Tensor:
    size = s.dream_size or s.size * 3 // 2
    res = render(model, deepdream(layer), size=size, steps=s.steps, recipe=s.recipe, seed=seed, callback=callback)
    _check(res)
    return res.images[0]


def render_classes(model, classes: Sequence[int], s: BuildSettings, seed: int,
                   callback: Callback = None) -> list[torch.Tensor]:
    """One batch, one class logit per batch element."""
    classes = list(classes)
    objective = Objective.sum([logit(c).only(i) for i, c in enumerate(classes)])
    size = s.class_size or s.size * 3 // 2
    res = render(model, objective, size=size, batch=len(classes), steps=s.steps, recipe=s.recipe, seed=seed,
                 callback=callback)
    _check(res)
    return [res.images[i] for i in range(len(classes))]
