"""How well an image drives its objective when it is *seen*, not as it was optimized.

A render is optimized at one size and pixel grid, but people see it at others: a notebook scales it, a browser
zooms, the microscope shows thumbnails. An image whose activation holds only at the exact grid it was made on
is an adversarial pattern for that grid. ``view_robust_activation`` measures the objective on the saved 8-bit
image seen through a fixed set of views the optimization never used: resized (bilinear) to several scales of
its rendered size, each unshifted and shifted by a few pixels, and averages over the views.

The measure is deterministic (no random views), so two images or two recipes are compared on the same views.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import FeatvizError
from ..models.organism import ModelOrganism
from .objectives import Objective, as_objective

# The views of issue 16: four scales of the rendered size, each as is and shifted by (4, 4) px.
VIEW_SCALES = (0.75, 1.0, 1.25, 1.75)
VIEW_SHIFTS = ((0, 0), (4, 4))


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """The image a user gets from a saved PNG: clamped and rounded to 256 levels."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def resize(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize by ``scale`` (antialiased when shrinking, as image viewers do)."""
    if scale == 1:
        return images
    h, w = images.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate right by ``dx`` and down by ``dy`` pixels at the same size; the uncovered border is the
    mirror image of the edge (no grey band for the network to react to)."""
    if dx == dy == 0:
        return images
    h, w = images.shape[-2:]
    if not (0 <= dx < w and 0 <= dy < h):
        raise FeatvizError(f"shift ({dx}, {dy}) must be non-negative and smaller than the image ({w}x{h})")
    padded = F.pad(images, [dx, 0, dy, 0], mode="reflect")
    return padded[..., :h, :w]


def view_robust_activation(model: ModelOrganism, images: torch.Tensor, objective: Objective | str, *,
                           scales: Sequence[float] = VIEW_SCALES,
                           shifts: Sequence[tuple[int, int]] = VIEW_SHIFTS,
                           quantize: bool = True, per_view: bool = False) -> torch.Tensor:
    """The objective of each image averaged over fixed views: every scale x every shift.

    ``images``: (N, 3, H, W) in [0, 1]; ``objective`` is evaluated with batch N, so a batched unit objective
    (``objectives.batched_channels``) scores image i on unit i. ``quantize``: score the 8-bit image a user
    saves rather than the float one. Returns (N,) means, or (N, views) with ``per_view`` (scale-major: scale 0
    shift 0, scale 0 shift 1, ...).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise FeatvizError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if not scales or not shifts:
        raise FeatvizError("view_robust_activation needs at least one scale and one shift")
    if any(s <= 0 for s in scales):
        raise FeatvizError(f"scales must be positive, got {tuple(scales)}")
    objective = as_objective(objective, model)
    n = images.shape[0]
    x = images.detach().float().to(model.device)
    if quantize:
        x = to_8bit(x)
    values = []
    with torch.no_grad():
        for scale in scales:
            seen = resize(x, scale)
            # All shifts of one scale in one forward pass, shift-major rows (the objectives' view layout).
            rows = torch.cat([shift(seen, dx, dy) for dx, dy in shifts])
            per_row = objective(model.activations(rows, objective.layers), n)
            values.append(per_row.reshape(len(shifts), n).T)
    table = torch.cat(values, 1).cpu()
    return table if per_view else table.mean(1)


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk's colourfulness (2003) of each image (N, 3, H, W) in [0, 1], on the 0-255 scale:
    sqrt(sd_rg² + sd_yb²) + 0.3 sqrt(mean_rg² + mean_yb²) with rg = R - G, yb = (R + G) / 2 - B.
    About 0 for grey images, 15-35 for "slightly" to "moderately", above 50 for "highly colourful" photos."""
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] < 3:
        raise FeatvizError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    rgb = images[:, :3].double().clamp(0, 1) * 255
    r, g, b = rgb.unbind(1)
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    spread = torch.sqrt(rg.var(1, unbiased=False) + yb.var(1, unbiased=False))
    centre = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    return (spread + 0.3 * centre).float()
