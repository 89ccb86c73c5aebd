"""Circuits: which units of an earlier layer excite or inhibit a unit, and which units push a class.

Two routes, and the page says which one it took (as the class-effect panel does):

- **weights** (exact): when the later layer is a linear map of the earlier one
  (a convolution or linear layer with nothing in between), the effect of a
  source unit on a target unit is the map's weight, summed over the kernel:
  how much the target's activation rises per unit of the source's activation
  raised uniformly. The route is checked numerically on two random images
  before it is used, so it is never taken by mistake.
- **attribution** (any pair of layers): gradient x activation. For each of
  the target unit's top dataset photos, the gradient of the target's mean
  activation with respect to the source layer, times the source activation,
  summed over positions: the first-order share of each source unit in the
  target's activation on that photo; averaged over the photos.

For classes, ``class_units`` ranks the units of a layer by the classifier's
weights where the logits read the layer out linearly (``classes.linear_readout``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

WEIGHTS = "weights"
ATTRIBUTION = "attribution"


def source_layer(model, layer: str, built: Sequence[str]) -> str | None:
    """The layer whose units feed ``layer`` on its circuits panel: the previous spatial main layer
    when the site built it, else the nearest earlier layer the site built (None for the first)."""
    order = {info.name: info.order for info in model.layers(all_modules=True)}
    here = order[layer]
    earlier = [name for name in built if order.get(name, here) < here]
    if not earlier:
        return None
    main = [info.name for info in model.layers() if info.spatial and info.order < here]
    if main and main[-1] in earlier:
        return main[-1]
    return max(earlier, key=lambda name: order[name])


@torch.no_grad()
def linear_route(model, source: str, target: str) -> tuple[torch.Tensor, str] | None:
    """(W (target channels, source channels), module name) if ``target`` = conv/linear(``source``)
    exactly, W summed over the kernel; else None."""
    src, dst = model.layer(source), model.layer(target)
    candidates = [(name, m) for name, m in model.network.named_modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "groups", 1) == 1
                  and (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features) == src.channels
                  and (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features) == dst.channels]
    if not candidates:
        return None
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3, model.input_size, model.input_size), generator=gen).to(model.device)
    acts = model.activations(x, [source, target])
    a, b = acts[source].float(), acts[target].float()
    scale = b.abs().max().clamp_min(1.0)
    for name, module in candidates:
        try:
            inputs = a.to(module.weight.dtype)
            if isinstance(module, nn.Conv2d):
                pred = module(inputs).float() if a.dim() == 4 else None
                weight = module.weight.detach().float().sum((2, 3))
            else:
                pred = module(inputs.mean((2, 3)) if a.dim() == 4 and b.dim() == 2 else inputs).float()
                weight = module.weight.detach().float()
        except RuntimeError:  # shapes that do not fit this module
            continue
        if pred is not None and pred.shape == b.shape and (pred - b).abs().max() <= 1e-4 * scale:
            return weight.cpu(), name
    return None


def attribution_circuits(model, source: str, target: str, units: Sequence[int],
                         images: Sequence[torch.Tensor], batch_rows: int = 16) -> torch.Tensor:
    """(len(units), source channels): gradient x activation of each source unit for each target
    unit's mean activation, summed over positions and averaged over that unit's ``images``
    ((M_i, 3, H, W) in [0, 1])."""
    rows_x, rows_unit = [], []
    for i, imgs in enumerate(images):
        for img in imgs:
            rows_x.append(img)
            rows_unit.append(i)
    channels = model.layer(source).channels
    out = torch.zeros(len(units), channels)
    counts = torch.zeros(len(units))
    for start in range(0, len(rows_x), batch_rows):
        x = torch.stack(rows_x[start:start + batch_rows]).to(model.device)
        which = torch.tensor(rows_unit[start:start + batch_rows])
        chans = torch.tensor([int(units[i]) for i in which], device=model.device)
        with torch.enable_grad():
            x.requires_grad_(True)  # the weights are frozen: the input carries the graph
            acts = model.activations(x, [source, target])
            a, b = acts[source], acts[target]
            if b.dim() == 2:
                b = b[:, :, None, None]
            score = b[torch.arange(len(chans), device=b.device), chans].mean((1, 2)).sum()
            (grad,) = torch.autograd.grad(score, a)
        share = (grad * a.detach())
        share = share.sum((2, 3)) if share.dim() == 4 else share
        out.index_add_(0, which, share.float().cpu())
        counts.index_add_(0, which, torch.ones(len(which)))
    return out / counts.clamp_min(1)[:, None]


def strongest(effects: torch.Tensor, k: int) -> tuple[list, list]:
    """(excite, inhibit): [unit, value] for the k largest positive and k most negative effects
    (units with an effect of the wrong sign are left out, so a list may be shorter)."""
    k = min(k, effects.numel())
    up_v, up_i = effects.topk(k)
    down_v, down_i = (-effects).topk(k)
    excite = [[int(i), round(float(v), 5)] for v, i in zip(up_v, up_i) if v > 0]
    inhibit = [[int(i), round(float(-v), 5)] for v, i in zip(down_v, down_i) if v > 0]
    return excite, inhibit


def describe(method: str, source: str, target: str, detail: str = "", n_images: int = 0) -> str:
    """How the numbers of a circuits panel were computed, in words."""
    if method == WEIGHTS:
        return (f"through the weights: {target} is a linear map of {source} ({detail}), so each number is "
                f"that map's weight from the unit, summed over its kernel (exact)")
    return (f"by attribution: gradient x activation of each {source} unit for this unit's mean activation, "
            f"summed over positions and averaged over its top {n_images} dataset examples")
