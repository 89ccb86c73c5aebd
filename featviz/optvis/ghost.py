"""Ghost networks: dropout on a network's inner main layers while an image is optimized (``Recipe.ghost``).

An image optimized against one exact network can rise on features only that network computes, so other networks
do not see the class in it. With a fresh random dropout mask on the inner layers at every step, the image is
optimized against a family of slightly different networks (the "ghost network" idea from the literature on
transferable adversarial examples), and must rely on features that survive any of them. On lite0's class images
this is what made an independent MobileNetV2 name more held-out classes (docs/optvis.md).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..models.organism import ModelOrganism
from .objectives import Objective


def ghost_layers(model: ModelOrganism, objective: Objective) -> list[str]:
    """The main layers that get dropout: those before the earliest layer the objective reads, except the first
    (its output is nearly the image: dropout there is pixel noise) and the last (dropout on the objective's direct
    input is a noisy objective rather than another network)."""
    main = model.main_layer_names or model.default_layers(8)
    # The model's output ("logits", ordered after every layer) is what its last main layer computes.
    output = model.layer(main[-1]).order
    limit = min([model.layer(name).order for name in objective.layers] + [output])
    before = [name for name in main if model.layer(name).order < limit]
    return before[1:-1]


@contextmanager
def ghost(model: ModelOrganism, layers: list[str], fraction: float, generator: torch.Generator):
    """Within the block, the outputs of ``layers`` (``ghost_layers``, found once per render) lose ``fraction`` of
    their elements at random (the rest scaled by 1 / (1 - fraction), as dropout does), drawn from ``generator``
    so a seed repeats the render. Outside it the network is itself again (plateau scores, final values)."""
    if not fraction or not layers:
        yield
        return
    keep = 1.0 - fraction

    def drop(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            return output
        mask = torch.rand(output.shape, generator=generator, device=output.device) < keep
        return output * mask / keep

    handles = [model.module(name).register_forward_hook(drop) for name in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
