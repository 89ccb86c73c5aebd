"""Heatmaps as pictures: built-in colour maps, overlays on the photo, labelled panels.

Nothing here needs matplotlib or Captum. The colour maps are small tables of
anchor colours interpolated linearly in RGB:

* ``fire`` (default): black - violet - red - orange - pale yellow. Its
  luminance rises monotonically, so it stays readable in grey scale and for
  the common colour-vision deficiencies; low attribution is dark, high is bright.
* ``diverging``: blue - white - red for signed maps (0.5 = zero).
* ``gray``: plain grey ramp.

An overlay blends the colour map onto the photo with a per-pixel opacity that
grows with the heat (``alpha`` at the hottest pixels, ``alpha * floor`` at the
coldest), so the photo stays visible where the map says nothing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

_ANCHORS: dict[str, list[tuple[float, tuple[float, float, float]]]] = {
    "fire": [
        (0.00, (0.00, 0.00, 0.02)),
        (0.15, (0.17, 0.04, 0.35)),
        (0.35, (0.50, 0.07, 0.47)),
        (0.55, (0.82, 0.20, 0.30)),
        (0.75, (0.98, 0.52, 0.10)),
        (0.90, (1.00, 0.80, 0.25)),
        (1.00, (1.00, 1.00, 0.75)),
    ],
    "diverging": [
        (0.00, (0.10, 0.22, 0.60)),
        (0.25, (0.35, 0.55, 0.85)),
        (0.50, (0.97, 0.97, 0.97)),
        (0.75, (0.90, 0.45, 0.35)),
        (1.00, (0.60, 0.05, 0.10)),
    ],
    "gray": [(0.0, (0.0, 0.0, 0.0)), (1.0, (1.0, 1.0, 1.0))],
}

COLORMAPS = tuple(_ANCHORS)


def colormap(name: str = "fire", n: int = 256) -> np.ndarray:
    """The colour table of ``name``: (n, 3) float32 RGB in [0, 1]."""
    if name not in _ANCHORS:
        from ..errors import FeatvizError

        raise FeatvizError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    stops = np.array([s for s, _ in _ANCHORS[name]], dtype=np.float64)
    colours = np.array([c for _, c in _ANCHORS[name]], dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)
    table = np.stack([np.interp(t, stops, colours[:, k]) for k in range(3)], axis=1)
    return table.astype(np.float32)


def apply_colormap(heat, name: str = "fire") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) RGB float32 in [0, 1]."""
    h = np.clip(np.nan_to_num(_as_numpy(heat), nan=0.0), 0.0, 1.0)
    table = colormap(name, 256)
    return table[np.round(h * 255).astype(np.int64)]


def normalize_heat(heat, percentile: float = 99.0) -> np.ndarray:
    """Scale a non-negative map to [0, 1] by its ``percentile`` (100 = max) and clip.

    Gradient maps are heavy-tailed: a handful of pixels would take the whole
    range if scaled by the maximum, so pixel-level methods use the 99th
    percentile. An all-zero map stays all zero.
    """
    h = np.clip(np.nan_to_num(_as_numpy(heat).astype(np.float32), nan=0.0), 0.0, None)
    top = float(np.percentile(h, percentile)) if percentile < 100 else float(h.max(initial=0.0))
    if top <= 0:
        top = float(h.max(initial=0.0))
    if top <= 0:
        return np.zeros_like(h)
    return np.clip(h / top, 0.0, 1.0)


def blur(heat, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-d map, ``sigma`` in pixels; edges mirrored (the edge pixel not repeated)."""
    from scipy.ndimage import gaussian_filter

    h = _as_numpy(heat).astype(np.float32)
    if sigma <= 0:
        return h
    return gaussian_filter(h, sigma, mode="mirror", truncate=3.0).astype(np.float32)


def heat_image(heat, cmap: str = "fire", size: tuple[int, int] | None = None) -> Image.Image:
    """A normalized (H, W) map in [0, 1] as a colour PIL image (optionally resized, (W, H))."""
    img = Image.fromarray((apply_colormap(heat, cmap) * 255 + 0.5).astype(np.uint8), "RGB")
    return img.resize(size, Image.BILINEAR) if size and size != img.size else img


def overlay(photo, heat, alpha: float = 0.7, cmap: str = "fire", floor: float = 0.2,
            dim: float = 0.25) -> Image.Image:
    """Blend a normalized heatmap (H, W) in [0, 1] onto ``photo`` and return a PIL image.

    ``photo``: (3, H, W) tensor in [0, 1], (H, W, 3) array or PIL image; the
    heatmap is resized to it if needed. Opacity per pixel is
    ``alpha * (floor + (1 - floor) * heat)``; ``dim`` desaturates and darkens the
    photo a little first so the colours stand out.
    """
    base = _photo_array(photo)
    h = np.clip(_as_numpy(heat).astype(np.float32), 0.0, 1.0)
    if h.shape != base.shape[:2]:
        h = np.asarray(Image.fromarray(h, "F").resize((base.shape[1], base.shape[0]), Image.BILINEAR))
        h = np.clip(h, 0.0, 1.0)
    if dim:
        grey = base.mean(axis=2, keepdims=True)
        base = (1 - dim) * base + dim * 0.6 * grey
    colour = apply_colormap(h, cmap)
    a = (alpha * (floor + (1.0 - floor) * h))[..., None]
    out = (1 - a) * base + a * colour
    return Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def labeled_row(images: Sequence[Image.Image], captions: Sequence[str], title: str | None = None,
                pad: int = 6, font_size: int = 12) -> Image.Image:
    """Images side by side with a caption under each and an optional title line."""
    if not images:
        raise ValueError("labeled_row() needs at least one image")
    f = font(font_size)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    line = font_size + 4
    cap_lines = max((len(wrap(c, w, f)) for c in captions), default=0)
    title_lines = wrap(title, len(images) * (w + pad), f) if title else []
    top = pad + line * len(title_lines)
    sheet = Image.new("RGB", (pad + len(images) * (w + pad), top + h + pad + cap_lines * line + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, text in enumerate(title_lines):
        draw.text((pad, pad + i * line), text, fill=(0, 0, 0), font=f)
    for i, im in enumerate(images):
        x = pad + i * (w + pad)
        sheet.paste(im.convert("RGB"), (x, top))
        for j, text in enumerate(wrap(captions[i] if i < len(captions) else "", w, f)):
            draw.text((x, top + h + 3 + j * line), text, fill=(0, 0, 0), font=f)
    return sheet


def wrap(text: str | None, width: int, f) -> list[str]:
    """Greedy word wrap of ``text`` into lines at most ``width`` pixels wide."""
    if not text:
        return []
    lines: list[str] = []
    for para in str(text).split("\n"):
        current = ""
        for word in para.split(" "):
            trial = f"{current} {word}".strip()
            if current and _text_width(f, trial) > width:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return lines


def _text_width(f, text: str) -> int:
    box = f.getbbox(text)
    return box[2] - box[0]


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a, dtype=np.float32)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected a 2-d heatmap, got shape {a.shape}")
    return a


def _photo_array(photo) -> np.ndarray:
    if isinstance(photo, Image.Image):
        return np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(photo, torch.Tensor):
        t = photo.detach().float().cpu()
        if t.dim() == 4:
            t = t[0]
        return t.clamp(0, 1).permute(1, 2, 0).numpy()
    arr = np.asarray(photo, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    return np.clip(arr / 255.0 if arr.max(initial=0) > 1.0 else arr, 0, 1)
