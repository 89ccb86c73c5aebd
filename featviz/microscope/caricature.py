"""Caricatures (Lucid's "caricature"): what a layer sees in a photo, exaggerated.

Start from a photo (a unit's top dataset example, or one given to the build) and
optimize the image to raise the dot product of the layer's activation with the
photo's own activation, weighted by their cosine similarity: the image keeps
the layer's reading of the photo but pushes every feature the layer found in it
further. Images of one batch are independent; each has its own photo and target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..optvis import render
from ..optvis.objectives import Objective, Unit
from ..optvis.transforms import TransformSpec
from .settings import BuildSettings, caricature_params

# Small shifts only: the activation map is compared position by position with the photo's,
# so the transforms must not move the image by more than a couple of pixels.
TRANSFORMS = TransformSpec("caricature", pad=2, jitter=4)
COSINE_POWER = 1.0


def _maps(acts: dict, layer: str) -> torch.Tensor:
    a = acts[layer]
    return a[:, :, None, None] if a.dim() == 2 else a


def caricature_objective(layer: str, targets: torch.Tensor) -> Objective:
    """Row ``i`` (of every view) maximizes dot(a, t_i) / |t_i| x cos(a, t_i)^COSINE_POWER, where
    ``t_i = targets[i % n]`` is the layer's activation on photo i."""
    flat_targets = targets.flatten(1)
    norms = flat_targets.norm(dim=1).clamp_min(1e-8)

    def fn(acts, n):
        a = _maps(acts, layer)
        t = targets.to(a.device, a.dtype)
        if a.shape[2:] != t.shape[2:]:
            t = F.interpolate(t, size=a.shape[2:], mode="bilinear", align_corners=False)
        rows = a.shape[0]
        index = torch.arange(rows, device=a.device) % n
        flat = a.flatten(1)
        t_rows = t.flatten(1)[index]
        dot = (flat * t_rows).sum(1) / norms.to(a.device)[index]
        cosine = dot / flat.norm(dim=1).clamp_min(1e-8)
        return dot * cosine.clamp_min(0.1) ** COSINE_POWER

    return Objective(fn, [layer], f"caricature of {layer} ({targets.shape[0]} photos)", [Unit(layer, None)],
                     rowwise=False)


@torch.no_grad()
def layer_targets(model, layer: str, photos: torch.Tensor) -> torch.Tensor:
    """The layer's activation on each photo ((N, 3, H, W) in [0, 1])."""
    return _maps(model.activations(photos.to(model.device), [layer]), layer).float().cpu()


def similarity(model, layer: str, images: torch.Tensor, photos: torch.Tensor) -> list[dict]:
    """Per image: the cosine of its activation with its photo's, and how far it raised the activation
    along the photo's (dot / |t|^2: 1.0 is the photo itself)."""
    a = layer_targets(model, layer, images).flatten(1)
    t = layer_targets(model, layer, photos).flatten(1)
    cosine = F.cosine_similarity(a, t, dim=1)
    gain = (a * t).sum(1) / (t * t).sum(1).clamp_min(1e-8)
    return [{"cosine": round(float(c), 4), "gain": round(float(g), 4)} for c, g in zip(cosine, gain)]


def render_caricatures(model, layer: str, photos: torch.Tensor, s: BuildSettings, seed: int,
                       callback=None) -> list[tuple[torch.Tensor, dict]]:
    """A job: one caricature per photo ((N, 3, H, W) uint8, resized to the build's size), with its
    similarity figures. Interrupted (Ctrl-C): raises ``KeyboardInterrupt``."""
    photos = F.interpolate(photos.float() / 255.0, size=(s.size, s.size), mode="bilinear", align_corners=False,
                           antialias=True).clamp(0, 1)
    targets = layer_targets(model, layer, photos)
    res = render(model, caricature_objective(layer, targets), batch=photos.shape[0], transforms=TRANSFORMS,
                 seed=seed, init_image=photos.to(model.device), callback=callback, **caricature_params(s))
    if res.interrupted:
        raise KeyboardInterrupt
    images = res.images.cpu()
    return list(zip(images, similarity(model, layer, images, photos)))
