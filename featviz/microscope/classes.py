"""Which classes a unit pushes up and down.

Two routes, and the page says which one it took:

- **weights** (exact): when the logits are an affine function of the layer's
  spatial mean (``layer -> global average pool -> linear classifier``, as for
  EfficientNet's ``head``), the effect of one unit on each logit is a column
  of the classifier's weight matrix. The route is checked numerically on two
  random images before it is used, so it is never taken by mistake.
- **attribution** (any layer): the derivative of each logit with respect to
  the unit's activation raised uniformly over all positions (the gradient
  with respect to its spatial mean, summed over positions), averaged over
  the unit's top dataset examples. Computed exactly with forward-mode
  autodiff: one forward pass per batch of (unit, image) rows, whatever the
  number of classes. On a linear path it equals the weights route.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..models.organism import LOGITS
from .circuits import linear_route

WEIGHTS = "weights"
ATTRIBUTION = "attribution"


def linear_readout(model, layer: str) -> tuple[torch.Tensor, str] | None:
    """(W (classes, channels), classifier module name) if logits = W . mean_hw(layer) + b, else None:
    the circuits' exact route (``circuits.linear_route``) from a spatial layer to the logits."""
    info = model.layer(layer)
    if not info.spatial or not model.num_classes:
        return None
    return linear_route(model, layer, LOGITS)


def logit_effects_attribution(model, layer: str, units: Sequence[int], images: Sequence[torch.Tensor],
                              batch_rows: int = 16) -> torch.Tensor:
    """(len(units), classes): mean over each unit's images of d logits / d(uniform shift of the unit).

    ``images[i]``: (M_i, 3, H, W) in [0, 1], the images averaged over for unit ``units[i]``.
    """
    import torch.autograd.forward_ad as fwAD

    rows_x, rows_ch, rows_unit = [], [], []
    for i, (unit, imgs) in enumerate(zip(units, images)):
        for img in imgs:
            rows_x.append(img)
            rows_ch.append(int(unit))
            rows_unit.append(i)
    n_classes = model.num_classes
    out = torch.zeros(len(units), n_classes)
    counts = torch.zeros(len(units))
    module = model.module(layer)
    for start in range(0, len(rows_x), batch_rows):
        x = torch.stack(rows_x[start:start + batch_rows]).to(model.device)
        chans = torch.tensor(rows_ch[start:start + batch_rows], device=model.device)

        def hook(_module, _inputs, output, chans=chans):
            # 1 on the unit's channel at every position (a ViT's patch tokens, a channels-last map: the organism knows)
            return fwAD.make_dual(output, model.unit_tangent(layer, output, chans))

        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad(), fwAD.dual_level():
                logits = model(x)
                tangent = fwAD.unpack_dual(logits).tangent
        except NotImplementedError:  # an op without forward-mode AD (PyTorch's fused attention in a ViT)
            tangent = None
            handle.remove()
            tangent = _central_difference(model, module, layer, x, chans)
        finally:
            handle.remove()
        if tangent is None:  # the logits do not depend on the layer
            tangent = torch.zeros(x.shape[0], n_classes)
        idx = torch.tensor(rows_unit[start:start + batch_rows])
        out.index_add_(0, idx, tangent.float().cpu())
        counts.index_add_(0, idx, torch.ones(len(idx)))
    return out / counts.clamp_min(1)[:, None]


@torch.no_grad()
def _central_difference(model, module, layer: str, x: torch.Tensor, chans: torch.Tensor, eps: float = 1e-2):
    """d logits / d(uniform shift of the unit) as (logits(+eps) - logits(-eps)) / 2 eps."""
    results = []
    for sign in (1.0, -1.0):
        def shift(_module, _inputs, output, sign=sign):
            return output + sign * eps * model.unit_tangent(layer, output, chans)

        handle = module.register_forward_hook(shift)
        try:
            results.append(model(x).double())
        finally:
            handle.remove()
    return ((results[0] - results[1]) / (2 * eps)).float()


def top_classes(model, effects: torch.Tensor, k: int) -> tuple[list, list]:
    """(up, down): lists of [class, label, value] for the k largest and k smallest effects."""
    k = min(k, effects.numel())
    up_v, up_i = effects.topk(k)
    down_v, down_i = (-effects).topk(k)
    up = [[int(i), model.label(int(i)), round(float(v), 5)] for v, i in zip(up_v, up_i)]
    down = [[int(i), model.label(int(i)), round(float(-v), 5)] for v, i in zip(down_v, down_i)]
    return up, down


def describe(method: str, layer: str, detail: str = "", n_images: int = 0) -> str:
    if method == WEIGHTS:
        return (f"through the weights: {layer} is averaged over positions and read out by the linear "
                f"classifier ({detail}), so these are the classifier's weights for this unit (exact)")
    return (f"by attribution: the derivative of each logit with respect to this unit's activation raised "
            f"uniformly over the image, averaged over its top {n_images} dataset examples")


@torch.no_grad()
def top_photos(model, files: Sequence, k: int, size: int, batch_size: int = 32) -> dict:
    """{"top": per class, [[photo index, logit], ...] for its ``k`` photos with the highest logit}
    over the image ``files`` (read as RGB, resized to ``size``)."""
    from ..imageio import image_batch

    logits = []
    for start in range(0, len(files), batch_size):
        batch = image_batch(files[start:start + batch_size], size)
        logits.append(model(batch.to(model.device)).float().cpu())
    if not logits:
        return {"top": [[] for _ in range(model.num_classes)]}
    table = torch.cat(logits)  # (photos, classes)
    values, index = table.topk(min(k, table.shape[0]), dim=0)
    return {"top": [[[int(i), round(float(v), 4)] for v, i in zip(values[:, c], index[:, c])]
                    for c in range(table.shape[1])]}


def units_per_class(weight: torch.Tensor, k: int) -> dict:
    """{"up": per class [[unit, weight], ...] of its k largest weights, "down": the k most negative}
    from a linear readout's weight matrix (classes, channels)."""
    k = min(k, weight.shape[1])
    up_v, up_i = weight.topk(k, dim=1)
    down_v, down_i = (-weight).topk(k, dim=1)
    return {"up": [[[int(i), round(float(v), 5)] for v, i in zip(vs, idx)] for vs, idx in zip(up_v, up_i)],
            "down": [[[int(i), round(float(-v), 5)] for v, i in zip(vs, idx)] for vs, idx in zip(down_v, down_i)]}
