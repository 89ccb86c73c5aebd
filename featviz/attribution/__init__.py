"""Attribution: which part of this photo made a unit fire.

Built on Captum (optional extra: ``pip install 'featviz[attribution]'``);
the target of every method is a featviz objective (``logit:207``,
``blocks.8:12``, ``neuron:blocks.8:12@3,4``, ...), so the same words select a
unit in rendering and in attribution.

    >>> from featviz import models, attribution
    >>> model = models.load("efficientnet_lite0")
    >>> a = attribution.attribute(model, "cat.jpg", "logit:281", method="gradcam")
    >>> a.map                      # (224, 224) non-negative tensor
    >>> a.save("cat_gradcam.png")  # overlay on the photo, settings in the PNG
    >>> attribution.panel(model, "cat.jpg").save("panel.png")  # all methods side by side
    >>> sheet, ca = attribution.blocks_sheet(model, "cat.jpg", layer="head")  # Building Blocks

Modules: ``methods`` (saliency, SmoothGrad, integrated gradients, Grad-CAM,
guided Grad-CAM with ReLU6 support), ``blocks`` (channel attribution),
``display`` (colour maps and overlays, no matplotlib), ``checks``
(localization canvases, model randomization, rank correlation).
"""
from __future__ import annotations

from ._captum import INSTALL_HINT, has_captum, require_captum
from .blocks import ChannelAttribution, Thumbnails, blocks_sheet, channel_attribution, render_thumbnails
from .checks import quadrant_canvas, quadrant_share, randomized_copy, spearman
from .display import COLORMAPS, apply_colormap, colormap, heat_image, normalize_heat, overlay
from .methods import (METHODS, Attribution, ObjectiveForward, attribute, attribute_all, default_cam_layer,
                      guided_backprop, panel, resolve_target)

__all__ = [
    "METHODS", "Attribution", "attribute", "attribute_all", "panel", "resolve_target", "default_cam_layer",
    "guided_backprop", "ObjectiveForward", "ChannelAttribution", "Thumbnails", "channel_attribution", "blocks_sheet",
    "render_thumbnails", "overlay", "heat_image", "normalize_heat", "apply_colormap", "colormap", "COLORMAPS",
    "quadrant_canvas", "quadrant_share", "randomized_copy", "spearman", "has_captum", "require_captum",
    "INSTALL_HINT",
]
