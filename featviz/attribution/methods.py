"""Attribution methods on top of Captum, with featviz's objective language as target.

``attribute(model, photo, target, method)`` answers "which pixels of this
photo made the target fire". The target is any featviz objective: ``None``
(the predicted class), a class index, or a string such as ``logit:207``,
``prob:207``, ``blocks.8:12`` (a channel) or ``neuron:blocks.8:12@3,4``. The
scalar attributed is ``objective(model.activations(x, objective.layers))``,
computed through the ``ModelOrganism`` so the input normalization is always
applied and attributions are with respect to the [0, 1] RGB image.

Methods and how each turns Captum's output into one non-negative (H, W) map:

============== ================================================ ===============================
method          Captum class                                     map
============== ================================================ ===============================
saliency        ``Saliency`` (|gradient|)                        max over colour channels
smoothgrad      ``NoiseTunnel(Saliency)``, mean |gradient| of    max over colour channels
                ``samples`` noisy copies (sigma = ``noise``)
ig              ``IntegratedGradients`` (Gauss-Legendre,         |sum over colour channels|
                ``steps`` points, ``internal_batch_size``)
gradcam         ``LayerGradCam`` on ``layer``, ReLU, bilinear    as is (one channel)
                upsampling to the photo
guided-gradcam  ``GuidedGradCam`` with ReLU6-aware guided        max |.| over colour channels
                backprop (see below)
============== ================================================ ===============================

Guided backprop and ReLU6: Captum's ``GuidedBackprop`` overrides the gradient
of ``nn.ReLU`` modules only (``isinstance(module, nn.ReLU)``). ``nn.ReLU6``
is a ``Hardtanh``, not a ``ReLU``, so on EfficientNet-Lite (ReLU6 everywhere)
Captum's guided backprop silently degrades to the plain gradient. featviz's
``ReLU6GuidedBackprop`` also hooks ``nn.ReLU6`` (and ``Hardtanh(0, t)``):
the backward pass keeps Captum's rule ``grad_in = relu(grad_in)``; for ReLU6
``grad_in = grad_out * [0 < x < 6]``, so the result is
``relu(grad_out) * [0 < x < 6]``: only positive gradients pass, and only
where the unit was active and not saturated - the guided-backprop rule with
ReLU6's own derivative. ``tests/test_attribution.py`` checks it against a
hand-written implementation.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import FeatvizError, ImageReadError
from ..models.organism import ModelOrganism, is_rectifier
from ..optvis.objectives import Objective, logit, parse
from . import display
from ._captum import require_captum

METHODS = ("saliency", "smoothgrad", "ig", "gradcam", "guided-gradcam")
_ALIASES = {"integrated-gradients": "ig", "integrated_gradients": "ig", "grad-cam": "gradcam",
            "guided_gradcam": "guided-gradcam", "guidedgradcam": "guided-gradcam", "vanilla": "saliency",
            "gradient": "saliency", "smooth-grad": "smoothgrad"}
# Percentile used to scale each method's map for display (pixel maps are heavy-tailed).
DISPLAY_PERCENTILE = {"saliency": 99.0, "smoothgrad": 99.0, "ig": 99.0, "gradcam": 100.0, "guided-gradcam": 99.0}
# Display-only blur (sigma, pixels) of each method's map; see Attribution.heatmap.
DISPLAY_SMOOTH = {"saliency": 1.5, "smoothgrad": 1.5, "ig": 1.5, "gradcam": 0.0, "guided-gradcam": 1.5}
DEFAULTS = {"samples": 25, "noise": 0.15, "steps": 50, "internal_batch_size": 16, "baseline": "black"}


# -- targets -------------------------------------------------------------------------

def resolve_target(model: ModelOrganism, target, x: torch.Tensor | None = None) -> Objective:
    """``None`` -> the predicted class of ``x``; int -> ``logit:int``; str -> parsed; Objective -> checked."""
    if target is None:
        if x is None:
            raise FeatvizError("no target given and no image to predict a class from")
        with torch.no_grad():
            out = model(x.to(model.device))
        if out.dim() != 2:
            raise FeatvizError("no target given and the model has no class scores: pass a target such as "
                               "blocks.8:12")
        return logit(int(out[0].argmax()))
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        model.check_class(int(target))
        return logit(int(target))
    if isinstance(target, str):
        return parse(target, model)
    if isinstance(target, Objective):
        return target.validate(model)
    raise FeatvizError(f"target must be a class index, an objective or a string like 'logit:207', "
                       f"got {type(target).__name__}")


def target_order(model: ModelOrganism, objective: Objective) -> int:
    """Position in the forward pass of the last layer the objective needs."""
    return max(model.layer(name).order for name in objective.layers)


def default_cam_layer(model: ModelOrganism, objective: Objective) -> str:
    """The last spatial main layer that runs no later than the target's own layers (one larger than
    1x1 if there is one: a global pool such as ResNet's ``avgpool`` is 1x1 and would make a flat map)."""
    limit = target_order(model, objective)
    for layers in (model.layers(), model.layers(all_modules=True)):
        spatial = [info for info in layers if info.spatial and info.order <= limit]
        candidates = [info for info in spatial if info.height * info.width > 1] or spatial
        if candidates:
            break
    if not candidates:
        raise FeatvizError(f"no spatial layer runs before the target {objective.description!r}")
    return candidates[-1].name


def check_cam_layer(model: ModelOrganism, layer: str, objective: Objective, what: str = "Grad-CAM layer") -> str:
    """A Grad-CAM layer must have spatial dimensions and run no later than the target."""
    info = model.layer(layer)
    if not info.spatial:
        spatial = [i.name for i in model.layers() if i.spatial]
        hint = f" such as {spatial[-1]}" if spatial else ""
        raise FeatvizError(f"layer '{layer}' of {model.name} has no spatial dimensions, so Grad-CAM cannot map it "
                           f"onto the photo; pick a convolutional layer{hint}")
    limit = target_order(model, objective)
    if info.order > limit:
        raise FeatvizError(f"{what} '{layer}' runs after the target {objective.description!r}, "
                           f"so the target does not depend on it; pick a layer at or before "
                           f"'{max(objective.layers, key=lambda n: model.layer(n).order)}'")
    return layer


# -- the forward function -----------------------------------------------------------

class ObjectiveForward(nn.Module):
    """``x`` in [0, 1] -> one objective value per image, through the organism (normalization included).

    A module (not a plain function) because Captum's guided backprop walks
    ``model.modules()`` to find the activations to hook.
    """

    def __init__(self, model: ModelOrganism, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.model.activations(x, self.objective.layers)
        return self.objective(acts, x.shape[0])


def grad_cam(model: ModelOrganism, x: torch.Tensor, layer: str, objective) -> torch.Tensor:
    """Grad-CAM map (B, 1, h, w) of ``objective`` at ``layer``: ReLU of the channels weighted by their mean gradient.

    Computed on the layer's activations as the organism hands them out (Captum's
    LayerGradCam hooks the module's raw output instead, which for a transformer is
    (B, tokens, C) and for a channels-last block (B, H, W, C)): the same map for
    convolutional layers, and the patch-token grid for a ViT block.
    """
    acts, grads, _ = model.layer_gradient(x, layer, objective)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * acts).sum(dim=1, keepdim=True))


def default_grad_cam(model: ModelOrganism, x: torch.Tensor, objective) -> tuple[str, torch.Tensor]:
    """(layer, Grad-CAM map) at the default layer, or the one before it if the target does not depend on the
    layer's positions at all. That happens in a ViT: its head reads the class token alone, so the final
    LayerNorm's and the last block's patch tokens get no gradient; the block before, whose patch tokens
    the last block's attention mixes into the class token, does."""
    first = default_cam_layer(model, objective)
    names = [info.name for info in model.layers() if info.spatial]
    start = names.index(first) if first in names else 0
    tried = [first] + [n for n in reversed(names[:start])][:3]
    for layer in tried:
        acts, grads, _ = model.layer_gradient(x, layer, objective)
        if grads.abs().sum() > 0 or layer == tried[-1]:
            weights = grads.mean(dim=(2, 3), keepdim=True)
            return layer, F.relu((weights * acts).sum(dim=1, keepdim=True))
    raise AssertionError("unreachable")


def _guided_backprop_class():
    attr = require_captum()

    class ReLU6GuidedBackprop(attr.GuidedBackprop):
        """Captum's guided backprop, extended to ``nn.ReLU6`` / ``Hardtanh(0, t)`` (module docstring)."""

        def _register_hooks(self, module: nn.Module) -> None:
            if is_rectifier(module):
                self.backward_hooks.append(module.register_full_backward_hook(_guided_hook))

    return ReLU6GuidedBackprop


def _guided_hook(_module, grad_input, _grad_output):
    # grad_input already carries the unit's own mask ([x > 0] for ReLU, [0 < x < 6] for ReLU6);
    # guided backprop additionally drops negative gradients.
    return tuple(F.relu(g) if g is not None else None for g in grad_input)


def guided_backprop(model: ModelOrganism, photo, target=None, size: int | None = None) -> torch.Tensor:
    """Guided backprop attribution (3, H, W) with ReLU6 support; mostly for inspection and tests."""
    x = as_batch(model, photo, size)
    obj = resolve_target(model, target, x)
    fwd = ObjectiveForward(model, obj)
    _warn_if_no_rectifiers(model)
    gb = _guided_backprop_class()(fwd)
    with warnings.catch_warnings(), model.out_of_place():  # hooks on in-place ReLUs are forbidden
        warnings.filterwarnings("ignore", message="Setting backward hooks")
        return gb.attribute(x.clone().requires_grad_(True)).detach()[0].cpu()


def _warn_if_no_rectifiers(model: nn.Module) -> None:
    if not any(is_rectifier(m) for m in model.modules()):
        warnings.warn("the model has no nn.ReLU / nn.ReLU6 modules, so guided backprop equals the plain gradient",
                      stacklevel=3)


# -- images ------------------------------------------------------------------------------

def as_batch(model: ModelOrganism, photo, size: int | None = None) -> torch.Tensor:
    """Path / PIL image -> preprocessed (1, 3, S, S); tensors in [0, 1] are used as given."""
    if isinstance(photo, torch.Tensor):
        x = photo.detach().float()
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise FeatvizError(f"expected one RGB image (3, H, W) in [0, 1], got shape {tuple(photo.shape)}")
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x.clamp(0, 1).to(model.device)
    if isinstance(photo, np.ndarray):
        arr = photo
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return as_batch(model, torch.from_numpy(np.ascontiguousarray(arr[..., :3].transpose(2, 0, 1))), size)
    return model.preprocess(photo, size)[None].to(model.device)  # load_image refuses 16-bit and float photos


# -- result --------------------------------------------------------------------------------

@dataclass
class Attribution:
    """One attribution map for one photo.

    ``map``: (H, W) non-negative float tensor at the photo's resolution (the
    method's reduction, see the module docstring); ``raw``: Captum's output
    (input-shaped, or layer-shaped for Grad-CAM before upsampling); ``image``:
    the (3, H, W) photo in [0, 1] as the model saw it.
    """

    method: str
    target: str
    map: torch.Tensor
    raw: torch.Tensor
    image: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    class_index: int | None = None  # the class the target scores, if it is about one class (Objective.class_index)

    def heatmap(self, percentile: float | None = None, smooth: float | None = None) -> np.ndarray:
        """The map scaled to [0, 1] for display (see ``display.normalize_heat``).

        ``smooth``: Gaussian blur (sigma in pixels) before scaling, display only;
        by default 1.5 px for the pixel-level methods (their maps are speckle
        that reads better as blobs) and none for Grad-CAM. ``smooth=0`` shows
        the map as computed.
        """
        p = DISPLAY_PERCENTILE.get(self.method, 99.0) if percentile is None else percentile
        s = DISPLAY_SMOOTH.get(self.method, 0.0) if smooth is None else smooth
        return display.normalize_heat(display.blur(self.map, s) if s > 0 else self.map, p)

    def overlay(self, alpha: float = 0.7, cmap: str = "fire", smooth: float | None = None, **kwargs) -> Image.Image:
        """The heatmap blended onto the photo (PIL RGB)."""
        return display.overlay(self.image, self.heatmap(smooth=smooth), alpha=alpha, cmap=cmap, **kwargs)

    def heat_image(self, cmap: str = "fire", smooth: float | None = None) -> Image.Image:
        return display.heat_image(self.heatmap(smooth=smooth), cmap)

    def save(self, path, alpha: float = 0.7, cmap: str = "fire", smooth: float | None = None):
        """Save the overlay as a PNG with the settings in its metadata."""
        from ..imageio import save_png

        return save_png(self.overlay(alpha=alpha, cmap=cmap, smooth=smooth), path, self.settings)

    def numpy(self) -> np.ndarray:
        return self.map.numpy()


# -- the methods ---------------------------------------------------------------------------

def attribute(model: ModelOrganism, photo, target=None, method: str = "gradcam", *, layer: str | None = None,
              size: int | None = None, samples: int = DEFAULTS["samples"], noise: float = DEFAULTS["noise"],
              steps: int = DEFAULTS["steps"], internal_batch_size: int | None = DEFAULTS["internal_batch_size"],
              baseline="black", seed: int = 0) -> Attribution:
    """Attribute ``target`` to the pixels of ``photo`` with ``method`` (one of ``METHODS``).

    ``photo``: path, PIL image (preprocessed by the model: resize + centre
    crop to ``size`` or the model's input size) or a (3, H, W) tensor in [0, 1]
    used as is. ``target``: None (predicted class), class index, objective or
    objective string. ``layer``: Grad-CAM layer (default: the last spatial
    layer that runs before the target). ``samples``/``noise``: SmoothGrad.
    ``steps``/``internal_batch_size``/``baseline`` ('black', 'white', 'gray',
    'blur' or a tensor): integrated gradients; the internal batch size bounds
    memory whatever the number of steps.
    """
    attr = require_captum()
    method = canonical_method(method)
    x = as_batch(model, photo, size)
    obj = resolve_target(model, target, x)
    fwd = ObjectiveForward(model, obj)
    settings: dict[str, Any] = {"kind": "attribution", "model": model.name, "method": method,
                                "target": obj.description, "size": list(x.shape[-2:])}
    if isinstance(photo, (str, bytes)) or hasattr(photo, "__fspath__"):
        settings["photo"] = str(photo)
    xg = x.clone().requires_grad_(True)
    t0 = time.perf_counter()
    with _seeded(seed):
        if method == "saliency":
            raw = attr.Saliency(fwd).attribute(xg, abs=True)
            amap = raw.amax(1)
        elif method == "smoothgrad":
            if samples < 1 or noise < 0:
                raise FeatvizError("smoothgrad needs samples >= 1 and noise >= 0")
            raw = attr.NoiseTunnel(attr.Saliency(fwd)).attribute(
                xg, nt_type="smoothgrad", nt_samples=int(samples), stdevs=float(noise),
                nt_samples_batch_size=min(int(samples), internal_batch_size or int(samples)), abs=True)
            amap = raw.amax(1)
            settings.update(samples=int(samples), noise=float(noise))
        elif method == "ig":
            if steps < 2:
                raise FeatvizError("integrated gradients needs steps >= 2")
            base = make_baseline(x, baseline)
            raw, delta = attr.IntegratedGradients(fwd).attribute(
                xg, baselines=base, n_steps=int(steps), internal_batch_size=internal_batch_size,
                return_convergence_delta=True)
            amap = raw.sum(1).abs()
            settings.update(steps=int(steps), internal_batch_size=internal_batch_size,
                            baseline=baseline if isinstance(baseline, str) else "tensor",
                            convergence_delta=float(delta.abs().max()))
        elif method in ("gradcam", "guided-gradcam"):
            if layer is None:
                layer, cam = default_grad_cam(model, xg, obj)
            else:
                cam = grad_cam(model, xg, check_cam_layer(model, layer, obj), obj)
            if method == "gradcam":
                raw = cam
                amap = attr.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[:, 0]
            else:
                # Guided Grad-CAM (Selvaraju et al.): guided backprop times the upsampled Grad-CAM map.
                _warn_if_no_rectifiers(model)
                with warnings.catch_warnings(), model.out_of_place():  # Captum's note about hooking ReLUs
                    warnings.filterwarnings("ignore", message="Setting backward hooks")
                    guided = _guided_backprop_class()(fwd).attribute(xg)
                raw = guided * attr.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
                amap = raw.abs().amax(1)
            settings["layer"] = layer
        else:  # pragma: no cover - canonical_method guards this
            raise AssertionError(method)
    settings["seconds"] = round(time.perf_counter() - t0, 3)
    amap = torch.nan_to_num(amap.detach()[0].float(), nan=0.0).clamp_min(0).cpu()
    return Attribution(method, obj.description, amap, raw.detach()[0].cpu(), x[0].detach().cpu(), settings,
                       obj.class_index)


def canonical_method(method: str) -> str:
    name = str(method).strip().lower()
    name = _ALIASES.get(name, name)
    if name not in METHODS:
        from ..errors import suggest

        raise FeatvizError(f"unknown attribution method {method!r}.{suggest(name, METHODS)} "
                           f"Methods: {', '.join(METHODS)}")
    return name


def make_baseline(x: torch.Tensor, baseline) -> torch.Tensor:
    """The IG reference image: 'black' (zeros), 'white', 'gray' (0.5), 'blur' or a tensor like ``x``."""
    if isinstance(baseline, torch.Tensor):
        b = baseline.to(x.device, x.dtype)
        if b.dim() == 3:
            b = b[None]
        if b.shape != x.shape:
            raise FeatvizError(f"baseline shape {tuple(b.shape)} does not match the image {tuple(x.shape)}")
        return b
    if baseline == "black":
        return torch.zeros_like(x)
    if baseline == "white":
        return torch.ones_like(x)
    if baseline in ("gray", "grey"):
        return torch.full_like(x, 0.5)
    if baseline == "blur":
        k = max(3, (min(x.shape[-2:]) // 8) | 1)
        return F.avg_pool2d(F.pad(x, [k // 2] * 4, mode="reflect"), k, stride=1)
    raise FeatvizError(f"unknown baseline {baseline!r}; use black, white, gray, blur or a tensor")


@contextlib.contextmanager
def _seeded(seed: int | None):
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# -- several methods side by side ---------------------------------------------------------

def attribute_all(model: ModelOrganism, photo, target=None, methods: Sequence[str] = METHODS,
                  **kwargs) -> list[Attribution]:
    """Run several methods on one photo with the same target (resolved once)."""
    x = as_batch(model, photo, kwargs.pop("size", None))
    obj = resolve_target(model, target, x)
    out = []
    for m in methods:
        a = attribute(model, x, obj, m, **kwargs)
        if isinstance(photo, (str, bytes)) or hasattr(photo, "__fspath__"):
            a.settings["photo"] = str(photo)
        out.append(a)
    return out


def panel(model: ModelOrganism, photo, target=None, methods: Sequence[str] = METHODS, *,
          attributions: Sequence[Attribution] | None = None, tile: int = 224, alpha: float = 0.7,
          cmap: str = "fire", title: str | None = None, **kwargs) -> Image.Image:
    """The photo and one overlay per method, side by side, with captions."""
    atts = list(attributions) if attributions is not None else attribute_all(model, photo, target, methods, **kwargs)
    if not atts:
        raise FeatvizError("panel() needs at least one method")
    image = atts[0].image
    pil_photo = display.overlay(image, np.zeros(image.shape[-2:], np.float32), alpha=0.0, dim=0.0)
    tiles = [pil_photo.resize((tile, tile), Image.BICUBIC)]
    captions = ["photo"]
    for a in atts:
        tiles.append(a.overlay(alpha=alpha, cmap=cmap).resize((tile, tile), Image.BICUBIC))
        extra = f" @ {a.settings['layer']}" if "layer" in a.settings else ""
        captions.append(f"{METHOD_TITLES.get(a.method, a.method)}{extra}")
    if title is None:
        preds = model.predict(image[None].to(model.device), 1)[0][0]
        title = (f"{model.name} | target: {atts[0].target}{class_label(model, atts[0].class_index)} | "
                 f"top-1: {preds[1]} ({preds[2]:.0%})")
    return display.labeled_row(tiles, captions, title)


METHOD_TITLES = {"saliency": "saliency", "smoothgrad": "SmoothGrad", "ig": "integrated gradients",
                 "gradcam": "Grad-CAM", "guided-gradcam": "guided Grad-CAM"}


def class_label(model: ModelOrganism, class_index: int | None) -> str:
    """' (tabby cat)' for a class the model has a label for, else ''."""
    if class_index is None or not model.labels:
        return ""
    return f" ({model.label(class_index)})"
