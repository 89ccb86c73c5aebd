"""A model organism's architecture with fresh random weights, scaled so the signal survives the depth.

Used by the transfer report (the "no training" baseline of its probes) and by
``featviz finetune --from-scratch`` (the starting point of a network trained
from nothing). The built-in EfficientNet-Lite networks have batch norm folded
into their convolutions (``efficientnet_lite.fuse_batchnorm``), so nothing in
them normalizes activations: without a data-dependent rescale, a random copy's
activations grow or vanish along the depth.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .organism import ModelOrganism


def random_copy(model: ModelOrganism, calibration: torch.Tensor, seed: int = 0, passes: int = 2) -> ModelOrganism:
    """The same architecture with random weights, wrapped with the same normalization.

    Every module's ``reset_parameters`` (seeded), then every convolution and linear layer
    gets He-normal weights (std sqrt(2 / fan_in)) and zero biases, and batch norms their
    identity statistics. He init alone does not keep the signal's scale through a deep
    network with residual sums and ReLU6 (whose 6 clips large values), so each convolution
    is then rescaled, in forward order, so that its output has unit variance on
    ``calibration`` (images in [0, 1]), like LSUV (Mishkin & Matas 2016): one forward pass
    in which each convolution's hook rescales its weight and its output before the next
    layer sees it; ``passes`` such passes.
    """
    net = copy.deepcopy(model.network).float().cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in net.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]

    def hook(module, _inputs, output):
        spread = float(output.float().std())
        scale = 1.0 / spread if spread > 1e-8 else 1.0
        module.weight.mul_(scale)
        if module.bias is not None:
            module.bias.mul_(scale)
        return output * scale

    mean = model.mean.detach().cpu()
    std = model.std.detach().cpu()
    x = (calibration.float().cpu() - mean) / std
    handles = [c.register_forward_hook(hook) for c in convs]
    try:
        with torch.no_grad():
            for _ in range(passes):
                net(x)
    finally:
        for handle in handles:
            handle.remove()
    organism = ModelOrganism(net, f"{model.name} (random init, seed {seed})", model.input_size,
                             mean.flatten().tolist(), std.flatten().tolist(), labels=model.labels,
                             main_layers=[info.name for info in model.layers()], channels_last=model.channels_last)
    return organism.to(model.device)
