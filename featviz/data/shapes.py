"""The offline demo task: outline shapes drawn on textured backgrounds.

Six classes of shape *outlines* (circle, square, triangle, star, cross, ring),
generated deterministically from a seed, with colour, size, rotation,
position, stroke and background texture as nuisances: only the outline's shape
tells the class, so pooled pixels cannot solve it and ImageNet has no such
classes. The transfer report probes it; ``featviz finetune`` trains on it when
no data folder is given.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import FeatvizError
from .folders import Dataset

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) noise in [0, 1], smooth at the scale size / cells (bicubic upsampling)."""
    from PIL import Image

    low = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((low * 255).astype(np.uint8), "L").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _texture(rng: np.random.Generator, size: int, kind: int | None = None) -> np.ndarray:
    """A random background (size, size, 3) in [0, 1]: blotches (kind 0), stripes (1), checks (2)
    or speckle (3), between two random colours."""
    kind = int(rng.integers(4)) if kind is None else kind
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # blotches
        t = _smooth_noise(rng, size, int(rng.integers(3, 12)))
    elif kind == 1:  # stripes
        theta, freq = rng.uniform(0, np.pi), rng.uniform(3, 14)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3))
    elif kind == 2:  # checks, rotated
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 8)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        t = ((np.floor(u * freq) + np.floor(v * freq)) % 2).astype(np.float32)
        t = 0.25 + 0.5 * t
    else:  # speckle over a gradient
        t = 0.6 * rng.random((size, size)).astype(np.float32) + 0.4 * _smooth_noise(rng, size, 2)
    c0, c1 = rng.random(3), rng.random(3)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    return img.astype(np.float32)


def _shape_mask(kind: str, rng: np.random.Generator, size: int, stroke: float) -> np.ndarray:
    """Antialiased (size, size) mask in [0, 1] of one outline shape at a random size, rotation
    and position (drawn at 4x and reduced)."""
    from PIL import Image, ImageDraw

    ss = 4
    big = size * ss
    r = rng.uniform(0.16, 0.32) * big
    cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
    rot = rng.uniform(0, 2 * np.pi)
    width = max(1, int(round(stroke * ss)))
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)

    def polygon(radii, n):
        return [(cx + radii[i % len(radii)] * np.cos(rot + 2 * np.pi * i / n),
                 cy + radii[i % len(radii)] * np.sin(rot + 2 * np.pi * i / n)) for i in range(n)]

    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=width)
    elif kind == "ring":  # two concentric circles
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=width)
        r2 = r * rng.uniform(0.45, 0.6)
        draw.ellipse([cx - r2, cy - r2, cx + r2, cy + r2], outline=255, width=width)
    elif kind == "square":
        draw.polygon(polygon([r], 4), outline=255, width=width)
    elif kind == "triangle":
        draw.polygon(polygon([r], 3), outline=255, width=width)
    elif kind == "star":
        draw.polygon(polygon([r, r * 0.42], 10), outline=255, width=width)
    elif kind == "cross":
        a = r * 0.34
        pts = [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r), (-a, -r), (-a, -a), (-r, -a), (-r, a),
               (-a, a), (-a, r)]
        c, s = np.cos(rot), np.sin(rot)
        draw.polygon([(cx + c * x - s * y, cy + s * x + c * y) for x, y in pts], outline=255, width=width)
    else:
        raise ValueError(kind)
    small = img.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def demo_shapes(per_class: int = 48, size: int = 160, seed: int = 0,
                classes: Sequence[str] = SHAPES) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The offline demo task: ``per_class`` images of each shape class, ``size`` px, made
    deterministically from ``seed``. Returns (images (N, 3, size, size) in [0, 1], labels (N,),
    class names).

    Each image: a random background texture (blotches, stripes, checks or speckle, two
    random colours), a shape *outline* (random colour, stroke 1.5-4 px at 160 px, radius
    16-32 % of the image, any rotation and position), two distractor strokes, and pixel
    noise. The class is the outline's shape only.
    """
    from PIL import Image, ImageDraw

    if per_class < 1:
        raise FeatvizError(f"images per class must be at least 1, got {per_class}")
    rng = np.random.default_rng([int(seed), 7])
    images, labels = [], []
    k = size / 160
    for _ in range(per_class):
        for c, kind in enumerate(classes):
            bg = _texture(rng, size)
            stroke = rng.uniform(1.5, 4.0) * k
            mask = _shape_mask(kind, rng, size, stroke)[..., None]
            colour = rng.random(3).astype(np.float32)
            img = bg * (1 - mask) + colour[None, None] * mask
            # distractors: two random line segments in random colours
            pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")
            draw = ImageDraw.Draw(pil)
            for _d in range(2):
                x0, y0 = rng.uniform(0, size, 2)
                length, ang = rng.uniform(0.1, 0.3) * size, rng.uniform(0, 2 * np.pi)
                draw.line([(x0, y0), (x0 + length * np.cos(ang), y0 + length * np.sin(ang))],
                          fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=max(1, int(round(stroke))))
            img = np.asarray(pil, dtype=np.float32) / 255.0
            img = img + rng.normal(0, 0.04, img.shape).astype(np.float32)
            images.append(np.clip(img, 0, 1))
            labels.append(c)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long), list(classes)


def demo_dataset(per_class: int, size: int, seed: int) -> Dataset:
    x, y, names = demo_shapes(per_class, size, seed)
    desc = (f"offline demo task (generated, seed {seed}): {len(names)} classes of shape outlines "
            f"({', '.join(names)}), {per_class} images each at {size} px. Each image is a random background "
            "texture (blotches, stripes, rotated checks or speckle, between two random colours), one shape "
            "outline in a random colour (stroke 1.5-4 px per 160 px, radius 16-32 % of the image, any rotation "
            "and position), two distractor line segments in random colours, and Gaussian pixel noise "
            "(sigma 0.04). Colour, size, rotation, position and background are nuisances: only the outline's "
            "shape tells the class. ImageNet has no such classes.")
    return Dataset(x, y, names, desc, "demo")
