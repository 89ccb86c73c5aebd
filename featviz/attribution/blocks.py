"""Channel attribution, the "Building Blocks" view: which channels of a layer carry a decision.

For one photo and one target (by default the predicted class), every channel
``c`` of ``layer`` gets a contribution score

    score_c = sum over positions (y, x) of  A_c(y, x) * dF/dA_c(y, x)

(activation times gradient, Captum's ``LayerGradientXActivation`` summed over
space): the first-order Taylor estimate of how much the target ``F`` would
drop if the channel were switched off. When the layer feeds the classifier
through global average pooling and one linear layer (``head`` of
EfficientNet-Lite), the gradient is ``w_c / (H W)`` everywhere and the scores
are exact: they sum to the logit minus its bias. Deeper in the network they
are a linear approximation. The per-position products ``A_c * dF/dA_c`` are
each channel's spatial map: where on the photo that channel adds to the target.

``blocks_sheet`` draws the top channels in one sheet: for each, its feature
visualization from the engine (``featviz.optvis.render``) and its spatial
map over the photo, with the score and its share of the positive total.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import FeatvizError
from ..models.organism import ModelOrganism
from . import display
from .methods import as_batch, class_label, check_cam_layer, resolve_target


@dataclass
class ChannelAttribution:
    """Per-channel contributions of one layer to one target on one photo.

    ``scores``: (C,) activation x gradient summed over space; ``maps``:
    (C, h, w) the same products before the sum; ``image``: the photo (3, H, W)
    in [0, 1]; ``value``: the target's value on the photo.
    """

    layer: str
    target: str
    scores: torch.Tensor
    maps: torch.Tensor
    image: torch.Tensor
    value: float
    settings: dict[str, Any] = field(default_factory=dict)
    class_index: int | None = None  # the class the target scores, if it is about one class (Objective.class_index)

    def top(self, k: int = 6, negative: bool = False) -> list[int]:
        """Indices of the ``k`` channels with the largest (or most negative) scores."""
        k = max(0, min(int(k), self.scores.numel()))
        order = torch.argsort(self.scores, descending=not negative)
        return [int(i) for i in order[:k]]

    def share(self, channel: int) -> float:
        """Score of ``channel`` divided by the sum of the positive scores (of the same sign's total)."""
        s = float(self.scores[channel])
        pool = self.scores.clamp_min(0).sum() if s >= 0 else (-self.scores).clamp_min(0).sum()
        return s / float(pool) if float(pool) > 0 else 0.0

    def spatial_map(self, channel: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Positive part of the channel's map, upsampled to the photo, scaled to [0, 1] by its own max."""
        m = self.maps[channel].clamp_min(0)
        return _upsampled_unit(m, size or tuple(self.image.shape[-2:]))

    def layer_map(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """Positive part of the sum over all channels (the layer's activation x gradient map)."""
        return _upsampled_unit(self.maps.sum(0).clamp_min(0), size or tuple(self.image.shape[-2:]))

    def table(self, k: int = 6, labels: Sequence[str] | None = None) -> list[tuple[int, int, float, float]]:
        """(rank, channel, score, share) for the top ``k`` channels."""
        return [(r + 1, c, float(self.scores[c]), self.share(c)) for r, c in enumerate(self.top(k))]


def _upsampled_unit(m: torch.Tensor, size) -> np.ndarray:
    up = torch.nn.functional.interpolate(m[None, None].float(), size=tuple(size), mode="bilinear",
                                         align_corners=False)[0, 0]
    top = float(up.max())
    return (up / top).clamp(0, 1).numpy() if top > 0 else np.zeros(tuple(size), np.float32)


def channel_attribution(model: ModelOrganism, photo, layer: str, target=None,
                        size: int | None = None) -> ChannelAttribution:
    """Score every channel of ``layer`` by activation x gradient for ``target`` (default: predicted class)."""
    x = as_batch(model, photo, size)
    obj = resolve_target(model, target, x)
    info = model.layer(layer)
    if not info.spatial:
        raise FeatvizError(f"layer '{layer}' of {model.name} has no spatial dimensions, so its channels have no "
                           f"map on the photo; pick a convolutional layer such as "
                           f"{[i.name for i in model.layers() if i.spatial][-1]}")
    check_cam_layer(model, layer, obj, what="layer")
    t0 = time.perf_counter()
    # On the activations as the organism hands them out (a ViT block's patch tokens on their grid,
    # a channels-last map permuted), not on the module's raw output as Captum's layer methods would.
    acts, grads, values = model.layer_gradient(x.clone().requires_grad_(True), layer, obj)
    prod = (acts * grads)[0].float().cpu()  # (C, h, w)
    value = float(values[0])
    settings = {"kind": "blocks", "model": model.name, "layer": layer, "target": obj.description,
                "rule": "activation x gradient summed over space", "seconds": round(time.perf_counter() - t0, 3)}
    if isinstance(photo, (str, bytes)) or hasattr(photo, "__fspath__"):
        settings["photo"] = str(photo)
    return ChannelAttribution(layer, obj.description, prod.sum((1, 2)), prod, x[0].detach().cpu(), value, settings,
                              obj.class_index)


# -- the sheet -------------------------------------------------------------------------------

Renderer = Callable[[ModelOrganism, str, Sequence[int]], Sequence[Image.Image]]


def render_layer(model: ModelOrganism, layer: str) -> str:
    """The layer whose channels are rendered for ``layer``'s thumbnails.

    A layer that ends in a rectifier (``head`` = conv, BN, ReLU6 in
    EfficientNet-Lite) outputs exactly zero for most channels on the grey
    start image of the optimization: the gradient is zero and the picture
    never leaves grey. Its thumbnails are therefore rendered from the
    pre-activation (``head.bn``), the same channels before the ReLU; every
    other layer is rendered as is.
    """
    return model.pre_rectifier(layer)


def render_thumbnails(model: ModelOrganism, layer: str, channels: Sequence[int], size: int = 96,
                      steps: int = 64, seed: int = 0, **kwargs) -> list[Image.Image]:
    """Feature visualizations of ``channels`` of ``layer``, rendered in one batch by the engine."""
    try:
        from ..optvis import render
        from ..optvis.render import finished
    except ImportError as exc:
        raise FeatvizError(f"feature visualization engine is not available ({exc}); "
                           "use thumbnails=False / --no-thumbnails") from None
    from ..optvis.objectives import batched_channels

    objective = batched_channels([(render_layer(model, layer), int(c)) for c in channels])
    result = finished(render(model, objective, size=size, steps=steps, seed=seed, batch=len(channels),
                             **kwargs))
    return [result.pil(i) for i in range(len(channels))]


@dataclass(frozen=True)
class Thumbnails:
    """How ``blocks_sheet`` renders each top channel's feature visualization."""

    steps: int = 64
    size: int = 96
    seed: int = 0


def blocks_sheet(model: ModelOrganism, photo, layer: str, target=None, *, top: int = 6, size: int | None = None,
                 thumbnails: bool | Thumbnails | Renderer = True, tile: int = 128, alpha: float = 0.75,
                 cmap: str = "fire", attribution: ChannelAttribution | None = None
                 ) -> tuple[Image.Image, ChannelAttribution]:
    """The Building Blocks sheet for ``photo`` and ``target`` at ``layer``; returns (sheet, attribution).

    ``thumbnails``: True renders each top channel with the engine at the
    ``Thumbnails()`` defaults, a ``Thumbnails`` value with its settings; False
    leaves that row out; a callable ``(model, layer, channels) -> [PIL images]``
    supplies them.
    """
    ca = attribution or channel_attribution(model, photo, layer, target, size)
    chans = ca.top(top)
    if not chans:
        raise FeatvizError("top must be at least 1")
    thumbs: list[Image.Image] | None = None
    if thumbnails is True:
        thumbnails = Thumbnails()
    if isinstance(thumbnails, Thumbnails):
        started = time.perf_counter()
        thumbs = render_thumbnails(model, layer, chans, size=thumbnails.size, steps=thumbnails.steps,
                                   seed=thumbnails.seed)
        ca.settings["thumbnails"] = {"layer": render_layer(model, layer), "steps": thumbnails.steps,
                                     "size": thumbnails.size, "seed": thumbnails.seed,
                                     "seconds": round(time.perf_counter() - started, 1)}
    elif callable(thumbnails):
        thumbs = list(thumbnails(model, layer, chans))
        ca.settings["thumbnails"] = "custom"
    note = ""
    if isinstance(ca.settings.get("thumbnails"), dict) and ca.settings["thumbnails"]["layer"] != layer:
        note = f"at {ca.settings['thumbnails']['layer']}"
    return _draw_sheet(model, ca, chans, thumbs, tile, alpha, cmap, note), ca


def _draw_sheet(model, ca: ChannelAttribution, chans, thumbs, tile, alpha, cmap, note: str = "") -> Image.Image:
    f = display.font(12)
    ft = display.font(13)
    pad, line = 8, 15
    cols = len(chans) + 1
    rows = 2 if thumbs is not None else 1
    cap = 2 * line + 4
    width = pad + cols * (tile + pad)
    label = class_label(model, ca.class_index)
    pred = model.predict(ca.image[None].to(model.device), 1)[0][0]
    title = (f"{model.name}, layer {ca.layer}: channels ranked by activation x gradient (summed over space) for "
             f"{ca.target}{label} = {ca.value:.2f}. Top-1 prediction: {pred[1]} ({pred[2]:.0%}).")
    title_lines = display.wrap(title, width - 2 * pad, ft)
    top = pad + len(title_lines) * (line + 1) + 4
    height = top + rows * (tile + cap + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, text in enumerate(title_lines):
        draw.text((pad, pad + i * (line + 1)), text, fill=(0, 0, 0), font=ft)

    size = (tile, tile)
    photo = display.overlay(ca.image, np.zeros(ca.image.shape[-2:], np.float32), alpha=0.0, dim=0.0).resize(
        size, Image.BICUBIC)
    pos_total = float(ca.scores.clamp_min(0).sum())
    cells: list[list[tuple[Image.Image, list[str]]]] = []
    if thumbs is not None:
        row = [(photo, ["photo", ""])]
        for r, (c, im) in enumerate(zip(chans, thumbs)):
            captions = [f"#{r + 1}  channel {c}", f"feature vis. {note}".strip()]
            row.append((im.convert("RGB").resize(size, Image.BICUBIC), captions))
        cells.append(row)
    layer_tile = display.overlay(ca.image, ca.layer_map(), alpha=alpha, cmap=cmap).resize(size, Image.BICUBIC)
    row = [(layer_tile if thumbs is not None else photo,
            ["all channels" if thumbs is not None else "photo", f"+ total {pos_total:.2f}"])]
    for r, c in enumerate(chans):
        im = display.overlay(ca.image, ca.spatial_map(c), alpha=alpha, cmap=cmap).resize(size, Image.BICUBIC)
        first = ("" if thumbs is not None else f"#{r + 1} ") + f"ch {c}: {float(ca.scores[c]):+.2f}"
        row.append((im, [first, f"{ca.share(c):.0%} of + total"]))

    def fit(text: str) -> str:  # keep captions inside their tile
        while text and display._text_width(f, text) > tile:
            text = text[:-1]
        return text
    cells.append(row)

    for ri, row in enumerate(cells):
        y = top + ri * (tile + cap + pad)
        for ci, (im, texts) in enumerate(row):
            x = pad + ci * (tile + pad)
            sheet.paste(im, (x, y))
            for j, text in enumerate(texts):
                draw.text((x, y + tile + 2 + j * line), fit(text), fill=(0, 0, 0), font=f)
    return sheet
