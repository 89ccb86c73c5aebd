"""The open axes of a render: parameterization, transforms, optimizer and learning-rate schedule.

Each axis of a ``Recipe`` takes a name from a table (what the CLI and the
presets use) or an object of your own:

parameterization (``param``)
    a name in ``PARAMETERIZATIONS`` (pixel | fourier | maco); or a *factory*
    called as ``factory(batch, (height, width), generator=..., device=...,
    decorrelate=..., alpha=..., init=...)`` that returns a built
    parameterization (every ``featviz.optvis.param`` class is one, and so is
    ``functools.partial(FourierParam, decay=1.5)``); or a *built*
    parameterization: any object with ``parameters()`` (the tensors the
    optimizer changes) that, called with no argument, returns the images
    (N, 3, H, W) in [0, 1] (N, 4, H, W with ``alpha``). An ``nn.Module`` whose
    ``forward()`` takes no input is one. A built one fixes the batch and size.
transforms
    a name in ``transforms.PRESETS`` (multicrop | classcrops | lucid | zoom | none) or a
    ``TransformSpec`` (their pixel sizes scale with the image); or any callable
    ``t(images, generator) -> views`` (an ``nn.Module`` or a function; one
    that takes only the images is called without the generator, so its
    randomness is its own). ``views`` holds whole views, view-major: row
    ``k * N + n`` is view ``k`` of image ``n`` (see ``transforms``); a
    ``views`` attribute says how many views it makes (for the memory check).
optimizer
    a name in ``OPTIMIZERS`` or a factory called as ``factory(params, lr=lr)``
    that returns a ``torch.optim.Optimizer``: a ``torch.optim`` class itself,
    ``functools.partial(torch.optim.SGD, momentum=0.9)`` or a lambda.
lr_schedule
    ``constant`` | ``cosine`` (decay to 10 % of lr over the steps), or a
    factory ``schedule(optimizer, steps)`` that returns a
    ``torch.optim.lr_scheduler.LRScheduler``; the loop calls its ``step()``
    once after every optimizer step.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import asdict, replace
from typing import Callable

import torch
from torch import nn

from ..errors import FeatvizError
from .param import PARAMETERIZATIONS
from .transforms import PRESETS, TransformSpec

OPTIMIZERS: dict[str, Callable] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                                   "nadam": torch.optim.NAdam}
LR_SCHEDULES = ("constant", "cosine")
COSINE_FLOOR = 0.1  # the cosine schedule ends at 10 % of lr: it settles the fine detail


def is_built_param(value) -> bool:
    """A built parameterization (an instance with parameters()), as opposed to a name or a factory."""
    return not isinstance(value, (str, type)) and callable(value) and callable(getattr(value, "parameters", None))


def check_axis(axis: str, value) -> None:
    """Raise ``FeatvizError`` for an unknown name or a value that is neither a name nor an object of the axis."""
    tables = {"param": PARAMETERIZATIONS, "transforms": PRESETS, "optimizer": OPTIMIZERS,
              "lr_schedule": dict.fromkeys(LR_SCHEDULES)}
    what = {"param": "parameterization", "transforms": "transform set", "optimizer": "optimizer",
            "lr_schedule": "lr schedule"}[axis]
    if isinstance(value, str):
        if value not in tables[axis]:
            raise FeatvizError(f"unknown {what} '{value}': choose one of {', '.join(tables[axis])} "
                               f"or pass your own (see featviz.optvis.axes)")
    elif not (callable(value) or (axis == "transforms" and isinstance(value, TransformSpec))):
        raise FeatvizError(f"{what} must be a name or a callable (see featviz.optvis.axes), "
                           f"got {type(value).__name__}")


def describe(value):
    """A JSON-friendly record of an axis for the image settings: names as they are, objects by their name."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, TransformSpec):
        return asdict(value)
    if isinstance(value, functools.partial):
        keywords = ", ".join(f"{name}={setting!r}" for name, setting in value.keywords.items())
        return f"partial({describe(value.func)}{', ' if keywords else ''}{keywords})"
    if isinstance(value, type) or inspect.isfunction(value) or inspect.ismethod(value):
        return f"{value.__module__}.{value.__qualname__}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


# -- parameterization ---------------------------------------------------------------------

def build_param(param, batch: int, size: int, *, generator: torch.Generator, device: torch.device,
                decorrelate: bool, decay: float, alpha: bool, init: torch.Tensor | None, chroma: float = 1.0):
    """The parameterization a recipe names or makes (a built one is returned as is; see ``check_built_param``)."""
    if is_built_param(param):
        return param
    factory = PARAMETERIZATIONS[param] if isinstance(param, str) else param
    extra = {"decay": decay} if param == "fourier" else {}
    if chroma != 1.0:  # only then, so that parameterizations of your own need not take it
        extra["chroma"] = chroma
    return factory(batch, (size, size), generator=generator, device=device, decorrelate=decorrelate, alpha=alpha,
                   init=init, **extra)


def check_built_param(param, batch: int, alpha: bool, size: int | None) -> int:
    """Check a built parameterization's images against the render's batch, alpha and size; return its side."""
    if not list(param.parameters()):
        raise FeatvizError("the parameterization has no parameters() for the optimizer to change")
    with torch.no_grad():
        images = param()
    channels = 4 if alpha else 3
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != channels:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise FeatvizError(f"the parameterization must return images (N, {channels}, H, W) in [0, 1]"
                           f"{' (alpha adds a 4th channel)' if alpha else ''}, got {shape}")
    n, _, height, width = images.shape
    if n != batch:
        raise FeatvizError(f"the parameterization makes {n} images but batch is {batch}: pass batch={n}")
    if height != width or (size is not None and size != height):
        raise FeatvizError(f"the parameterization makes {height}x{width} images; render needs square images"
                           f"{f' of {size} px' if size is not None else ''}")
    return height


# -- transforms ------------------------------------------------------------------------------

def build_transforms(transforms, size: int, device: torch.device):
    """(callable(images, generator) -> views, what to record in the settings)."""
    if isinstance(transforms, (str, TransformSpec)):
        spec = PRESETS[transforms] if isinstance(transforms, str) else transforms
        # Jitter/pad are in pixels tuned for ~128 px; keep their relative size at other sizes.
        if spec.pad or spec.jitter:
            scale = size / 128
            spec = replace(spec, pad=round(spec.pad * scale), jitter=round(spec.jitter * scale))
        return spec.build(out_size=size).to(device), asdict(spec)
    if isinstance(transforms, nn.Module):
        transforms = transforms.to(device)
    if _positional_arity(transforms) < 2:
        one_argument = transforms

        def transforms(images, _generator, _call=one_argument):
            return _call(images)
        transforms.views = getattr(one_argument, "views", 1)
        return transforms, describe(one_argument)
    return transforms, describe(transforms)


def _positional_arity(fn) -> int:
    """How many positional arguments ``fn`` takes (2 if it takes *args or cannot be inspected)."""
    try:
        signature = inspect.signature(fn.forward if isinstance(fn, nn.Module) else fn)
    except (TypeError, ValueError):
        return 2
    kinds = [p.kind for p in signature.parameters.values()]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return 2
    return sum(kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for kind in kinds)


# -- optimizer and schedule -------------------------------------------------------------------

def build_optimizer(optimizer, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if not isinstance(optimizer, str):
        built = optimizer(params, lr=lr)
        if not isinstance(built, torch.optim.Optimizer):
            raise FeatvizError(f"the optimizer factory must return a torch.optim.Optimizer, "
                               f"got {type(built).__name__}")
        return built
    opt_class = OPTIMIZERS[optimizer]
    # The fused implementation where torch has one for this optimizer and device (one pass over
    # the parameters instead of about ten), else the default.
    try:
        return opt_class(params, lr=lr, fused=True)
    except (TypeError, RuntimeError, ValueError):
        return opt_class(params, lr=lr)


def build_schedule(schedule, optimizer: torch.optim.Optimizer, steps: int):
    """A torch LR scheduler for the recipe's schedule, or None for a constant rate (nothing to step)."""
    if schedule == "constant":
        return None
    if schedule == "cosine":
        base = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps - 1, 1),
                                                          eta_min=COSINE_FLOOR * base)
    return schedule(optimizer, steps)
