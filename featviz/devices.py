"""Which torch device featviz runs on: a name checked once, with one line for what cannot work."""
from __future__ import annotations

import torch

from .errors import FeatvizError

# Devices that compute; 'meta' holds shapes only, so a render or an attribution there has no pixels.
SUPPORTED = ("cpu", "cuda", "mps")


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, or a ``FeatvizError`` saying why not."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FeatvizError(f"unknown device {str(device)!r}: use cpu, cuda, cuda:N or mps") from None
    if resolved.type not in SUPPORTED:
        raise FeatvizError(f"featviz cannot run on device {str(device)!r}: use cpu, cuda, cuda:N or mps")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise FeatvizError(f"device {str(device)!r} asked for, but CUDA is not available here "
                               f"(torch {torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise FeatvizError(f"device {str(device)!r} does not exist: this machine has {count} CUDA "
                               f"device{'s' * (count != 1)} (cuda:0-cuda:{count - 1})")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise FeatvizError(f"device {str(device)!r} asked for, but Apple's MPS is not available here; use cpu")
    return resolved
