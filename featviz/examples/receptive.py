"""Receptive fields, measured empirically from input gradients.

Method (works for any model, including ones wrapped with ``from_module``):
take a few random images at the store's input size, back-propagate the sum of
all channels of the layer at its central position to the input, and take the
bounding box of the pixels whose gradient is non-zero in any of the images
(the union over several images keeps ReLU gating from hiding pixels). This is
the theoretical receptive field (every pixel that can influence the unit),
not the smaller "effective" one, measured rather than derived from kernel
sizes, so residual branches, padding rules and pooling need no special case.

The box is stored as extents around the unit centre in input pixels (they are
often asymmetric: TensorFlow-style "SAME" padding pads bottom/right more); the
box of unit (h, w) is that box moved by the layer's stride, clipped to the
image. If the measured box touches the image border, the field is larger than
the image, and it is measured again on an image twice as large (the extents
around a unit centre do not depend on the image size for a convolutional
network); wider still, every unit is taken to see the whole image. Layers
without spatial dimensions (classifier, logits) see the whole image.

Checked against the analytic field of EfficientNet-Lite0 (kernels and strides
composed by hand): stem 3, blocks.0 7, blocks.1 11, blocks.3 35, blocks.5 83,
blocks.8 211 pixels. Pixels at the very edge of the field reach the unit only
through a single chain of weights; if ReLU gating closes that chain for every
sample the box can come out a few pixels smaller than the analytic one.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

METHOD = "empirical: support of the input gradient of the centre unit, union over 4 random images"


@dataclass(frozen=True)
class ReceptiveField:
    """Geometry of a layer's units in input pixels (input size ``size``)."""

    size: int  # input image side
    height: int  # layer grid (1 x 1 for layers without spatial dims)
    width: int
    up: float  # extents from a unit's centre, in pixels
    down: float
    left: float
    right: float
    whole: bool = False  # every unit sees the whole image

    @property
    def stride_y(self) -> float:
        return self.size / self.height

    @property
    def stride_x(self) -> float:
        return self.size / self.width

    def centre(self, y: int, x: int) -> tuple[float, float]:
        return (y + 0.5) * self.stride_y - 0.5, (x + 0.5) * self.stride_x - 0.5

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) pixel box of unit (y, x), end exclusive, clipped to the image."""
        if self.whole:
            return 0, 0, self.size, self.size
        cy, cx = self.centre(y, x)
        top = max(0, math.floor(cy - self.up + 1e-6))
        left = max(0, math.floor(cx - self.left + 1e-6))
        bottom = min(self.size, math.ceil(cy + self.down - 1e-6) + 1)
        right = min(self.size, math.ceil(cx + self.right - 1e-6) + 1)
        return top, left, bottom, right

    @property
    def extent(self) -> tuple[float, float]:
        """Full (height, width) of the field in pixels (may exceed the image)."""
        if self.whole:
            return float(self.size), float(self.size)
        return self.up + self.down + 1, self.left + self.right + 1

    def to_dict(self) -> dict:
        return asdict(self)


def receptive_field(model, layer: str, size: int | None = None, samples: int = 4, seed: int = 0) -> ReceptiveField:
    """Measure the receptive field of ``layer`` of ``model`` at input ``size`` (see module doc)."""
    size = int(size or model.input_size)
    m = _measure(model, layer, size, samples, seed)
    if m is None:
        return ReceptiveField(size, 1, 1, size / 2, size / 2, size / 2, size / 2, whole=True)
    h, w, ext, clipped = m
    if any(clipped):
        # Larger than the image at this size: measure again on an image twice as large
        # (the extents around a unit centre do not depend on the image size).
        try:
            big = _measure(model, layer, 2 * size, max(2, samples // 2), seed)
        except Exception:  # a network that only takes one input size: keep the clipped measure
            big = None
        if big is not None and big[0] == 2 * h and big[1] == 2 * w:
            ext, clipped = big[2], big[3]
            if (clipped[0] and clipped[1]) or (clipped[2] and clipped[3]):
                # wider than twice the image: every unit of the original size sees all of it
                return ReceptiveField(size, h, w, *ext, whole=True)
    up, down = _unclip(ext[0], ext[1], clipped[0], clipped[1])
    left, right = _unclip(ext[2], ext[3], clipped[2], clipped[3])
    return ReceptiveField(size, h, w, up, down, left, right)


def _measure(model, layer: str, size: int, samples: int, seed: int):
    """(height, width, (up, down, left, right), (clipped up, down, left, right)) or None if not spatial."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, 3, size, size, generator=gen).to(model.device).requires_grad_(True)
    with torch.enable_grad():
        out = model.activations(x, [layer])[layer]
        if out.dim() != 4:
            return None
        h, w = out.shape[2], out.shape[3]
        hc, wc = h // 2, w // 2
        out[:, :, hc, wc].float().sum().backward()
    support = (x.grad.detach().abs().sum(dim=(0, 1)) > 0).cpu()
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    if rows.numel() == 0:  # a dead unit in every sample: fall back to the stride cell
        rows = torch.tensor([int(hc * size / h), int((hc + 1) * size / h) - 1])
        cols = torch.tensor([int(wc * size / w), int((wc + 1) * size / w) - 1])
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    cy, cx = (hc + 0.5) * size / h - 0.5, (wc + 0.5) * size / w - 0.5
    return h, w, (cy - y0, y1 - cy, cx - x0, x1 - cx), (y0 == 0, y1 == size - 1, x0 == 0, x1 == size - 1)


def _unclip(a: float, b: float, a_clipped: bool, b_clipped: bool) -> tuple[float, float]:
    if a_clipped and not b_clipped:
        a = max(a, b)
    elif b_clipped and not a_clipped:
        b = max(a, b)
    elif a_clipped and b_clipped:
        a = b = max(a, b)
    return a, b
