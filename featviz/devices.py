"""Which torch device featviz runs on: a name checked once, with one line for what cannot work."""
from __future__ import annotations

import ctypes
import os

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


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the system at once (once per process).

    Why: every forward and backward pass allocates and frees the same large activation tensors. By default glibc
    maps each block of more than ~128 KB afresh and trims the heap as soon as it frees one, so every step pays for
    zero-filled pages again: a fresh process's 640-step render of 12 units at 128 px takes 0.73x the time with
    this tuning (``benchmarks/bench_render.py --only speedups`` measures it). Blocks of up to 32 MB (the most
    glibc allows here) now come from the heap, which keeps up to 1 GB of freed memory before trimming. Peak memory is unchanged;
    memory a job freed stays with the process for its next step. Does nothing where the C library is not glibc,
    or when the environment sets ``FEATVIZ_MALLOC=system``. Returns whether the allocator is tuned."""
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("FEATVIZ_MALLOC", "").lower() == "system":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it (and its mallopt parameters)
        _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2 ** 20)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 30))
    except (OSError, AttributeError):
        pass
    return _allocator_tuned


def release_freed_memory() -> bool:
    """Hand the memory this process has freed but kept (``tune_cpu_allocator``) back to the system, so that the
    system's figure of available memory counts it again. Returns whether anything could be asked of glibc."""
    if not _allocator_tuned:
        return False
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
