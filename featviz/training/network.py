"""The trainable network of a fine-tuning run: a copy of a model organism's network with a new classifier.

A ``ModelOrganism`` is always in eval mode with frozen weights (it is made for
looking at a network, not training it), so training works on a deep copy of its
``network`` wrapped in ``Trainable``, which applies the organism's input
normalization and can switch to train mode (dropout on).

About batch norm: the built-in EfficientNet-Lite organisms have every BatchNorm
folded into the convolution before it (``models.efficientnet_lite.fuse_batchnorm``),
so the network trained here has no normalization layers. We train it as is, on
purpose: the weights then load into the very architecture ``featviz.models.load``
builds (a spec needs only ``base = "efficientnet_lite0"``), and fine-tuning from
ImageNet weights needs no batch statistics. The price is that the network is
less forgiving of large steps, so the defaults are a small learning rate for
the network (AdamW 1e-4, 10x for the new classifier; from-scratch and pretrained
alike, so the comparison has the same budget) with the gradient norm clipped to 1; a from-scratch network starts from
``random_copy``'s He + LSUV initialization, which gives every convolution
unit-variance outputs, the job batch norm would otherwise do at the start.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..errors import FeatvizError
from ..models.organism import ModelOrganism


class Trainable(nn.Module):
    """``network`` with the organism's input normalization: takes images in [0, 1]."""

    def __init__(self, network: nn.Module, mean: torch.Tensor, std: torch.Tensor, channels_last: bool):
        super().__init__()
        self.network = network
        self.register_buffer("mean", mean.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)


def last_linear(network: nn.Module) -> str:
    """Dotted name of the network's last ``nn.Linear`` (the classifier, for the built-ins
    ``classifier``); one clear line when there is none."""
    names = [name for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise FeatvizError("the network has no nn.Linear layer to use as its classifier; fine-tuning replaces "
                           "the last nn.Linear with one of the new number of classes")
    return names[-1]


def replace_classifier(network: nn.Module, n_classes: int, seed: int) -> str:
    """Replace the last ``nn.Linear`` with a fresh one of ``n_classes`` outputs (seeded init);
    returns its name."""
    name = last_linear(network)
    parent_name, _, attr = name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    old = getattr(parent, attr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + 101)
        new = nn.Linear(old.in_features, n_classes, bias=old.bias is not None)
    setattr(parent, attr, new.to(old.weight.device, old.weight.dtype))
    return name


def freeze_through(organism: ModelOrganism, network: nn.Module, layer: str | None) -> list[str]:
    """Freeze the parameters of ``layer`` and of every module that runs before it (forward order
    of the organism's layer table); returns the names of the frozen parameters."""
    if layer is None:
        return []
    last = organism.layer(layer).order  # unknown layer: one line with suggestions
    order = {info.name: info.order for info in organism.layers(all_modules=True)}
    frozen = []
    for name, param in network.named_parameters():
        owner = name.rpartition(".")[0]
        if order.get(owner, 10**9) <= last:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def trainable_copy(organism: ModelOrganism, n_classes: int, *, from_scratch: bool, calibration: torch.Tensor,
                   seed: int) -> tuple[Trainable, str]:
    """A trainable float32 CPU copy of the organism's network with a new ``n_classes`` classifier;
    ``from_scratch``: the same architecture with fresh weights (``random_copy``, calibrated on
    ``calibration`` images). Returns (module, classifier name)."""
    from ..models.random_init import random_copy

    source = random_copy(organism, calibration, seed=seed) if from_scratch else organism
    network = copy.deepcopy(source.network).float().cpu()
    classifier = replace_classifier(network, n_classes, seed)
    network.requires_grad_(True)
    return Trainable(network, organism.mean.cpu(), organism.std.cpu(), organism.channels_last), classifier


def organism_from(trainable: Trainable, template: ModelOrganism, name: str, labels: Sequence[str],
                  input_size: int) -> ModelOrganism:
    """A model organism (eval mode, frozen) around a copy of the trained network."""
    network = copy.deepcopy(trainable.network)
    return ModelOrganism(network, name, input_size, template.mean.flatten().tolist(),
                         template.std.flatten().tolist(), labels=list(labels),
                         main_layers=[info.name for info in template.layers()],
                         channels_last=template.channels_last)
