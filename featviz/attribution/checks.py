"""Checks that attribution maps mean something: localization and model randomization.

Localization: paste a photo of a class into one quadrant of a canvas (neutral
grey, or cluttered with photos of other classes) and measure the share of
the map's mass that falls in that quadrant (chance: 25 %).

Model randomization (Adebayo et al., "Sanity Checks for Saliency Maps",
2018): re-draw the weights of the later layers and compare the maps with the
trained ones by Spearman rank correlation. A method whose maps hardly change
does not depend on what the network learned. Weights are re-drawn from a
Gaussian with the mean and standard deviation of each trained tensor, so the
activations keep their scale; batch-norm running statistics are kept.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import FeatvizError
from ..imageio import to_tensor
from ..models.organism import ModelOrganism

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _square(photo, side: int) -> torch.Tensor:
    """Centre-crop to a square and resize to ``side``: (3, side, side) in [0, 1]."""
    if isinstance(photo, Image.Image):
        photo = to_tensor(photo)
    elif isinstance(photo, np.ndarray):
        arr = photo.astype(np.float32) / (255.0 if photo.dtype == np.uint8 else 1.0)
        photo = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)
    t = photo.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    h, w = t.shape[-2:]
    s = min(h, w)
    t = t[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(t[None], size=(side, side), mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def quadrant_box(quadrant: int, size: int) -> tuple[slice, slice]:
    """(rows, cols) slices of ``quadrant`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)."""
    if quadrant not in range(4):
        raise FeatvizError(f"quadrant must be 0-3 ({', '.join(QUADRANTS)}), got {quadrant}")
    half = size // 2
    r, c = divmod(quadrant, 2)
    return slice(r * half, (r + 1) * half), slice(c * half, (c + 1) * half)


def quadrant_canvas(photo, quadrant: int, size: int = 224, others: Sequence | None = None,
                    background: float = 0.5) -> torch.Tensor:
    """A (3, size, size) canvas with ``photo`` in ``quadrant``.

    The other quadrants hold ``others`` (up to three photos: a cluttered
    canvas) or a flat grey of value ``background`` (a neutral canvas).
    """
    canvas = torch.full((3, size, size), float(background))
    half = size // 2
    rows, cols = quadrant_box(quadrant, size)
    canvas[:, rows, cols] = _square(photo, half)
    if others:
        rest = [q for q in range(4) if q != quadrant]
        for q, other in zip(rest, others):
            r, c = quadrant_box(q, size)
            canvas[:, r, c] = _square(other, half)
    return canvas


def quadrant_share(heat, quadrant: int) -> float:
    """Share of the (non-negative) map's mass inside ``quadrant``; NaN for an all-zero map."""
    h = torch.as_tensor(np.asarray(heat) if not isinstance(heat, torch.Tensor) else heat).float().clamp_min(0)
    if h.dim() != 2:
        raise FeatvizError(f"expected a 2-d map, got shape {tuple(h.shape)}")
    total = float(h.sum())
    if total <= 0:
        return float("nan")
    if h.shape[0] % 2 or h.shape[1] % 2:
        h = h[: h.shape[0] // 2 * 2, : h.shape[1] // 2 * 2]
    rows, _ = quadrant_box(quadrant, h.shape[0])
    _, cols = quadrant_box(quadrant, h.shape[1])
    return float(h[rows, cols].sum()) / total


def spearman(a, b) -> float:
    """Spearman rank correlation of two maps (ties get their average rank); NaN if either is constant."""
    from scipy.stats import spearmanr

    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        raise FeatvizError(f"maps differ in size: {x.size} vs {y.size}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def later_modules(model: ModelOrganism, from_layer: str) -> list[str]:
    """Names of the modules that run at or after ``from_layer`` (its own children included)."""
    start = model.layer(from_layer)
    names = []
    for info in model.layers(all_modules=True):
        if info.name == from_layer or info.name.startswith(from_layer + ".") or info.order > start.order:
            names.append(info.name)
    return names


def randomized_copy(model: ModelOrganism, from_layer: str, seed: int = 0) -> ModelOrganism:
    """A copy of ``model`` whose weights from ``from_layer`` to the output are re-drawn at random.

    Each parameter tensor is replaced by Gaussian noise with that tensor's own
    mean and standard deviation (scale-preserving), see the module docstring.
    """
    clone = copy.deepcopy(model)
    modules = dict(clone.network.named_modules())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in later_modules(clone, from_layer):
            for p in modules[name].parameters(recurse=False):
                mean = float(p.mean())
                std = float(p.std()) if p.numel() > 1 else abs(mean) or 1.0
                noise = torch.randn(p.shape, generator=gen) * std + mean
                p.copy_(noise.to(p.device, p.dtype))
    return clone
