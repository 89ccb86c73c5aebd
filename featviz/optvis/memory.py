"""How much memory a render needs, and whether it fits, checked before anything big is allocated.

The dominant cost is what autograd keeps for the backward pass of the truncated
forward: proportional to the rows in one forward pass (views x images, bounded by
the recipe's ``max_rows`` grouping) times the pixels. It is measured once per
model and set of layers, on one small probe image (the bytes of every tensor
saved for backward, the frozen weights excluded), and scaled from there.
"""
from __future__ import annotations

import os
import weakref

import torch

from ..devices import release_freed_memory
from ..errors import FeatvizError
from ..models.organism import ModelOrganism

PROBE_SIZE = 64
# The backward pass holds gradients about the size of what it consumes. Measured on EfficientNet-Lite0 to
# blocks.8 at 64 px: peak RSS grew 0.37 / 1.16 GiB at batch 64 / 256, estimated 0.50 / 1.98 GiB (an upper bound).
BACKWARD_FACTOR = 2.0
# Per image pixel and channel, in floats: the parameterization, its gradient, two Adam moments and the
# intermediate images of its forward (inverse FFT, colour matrix, sigmoid), with room to spare.
IMAGE_COPIES = 10
VIEW_COPIES = 3  # each view, its gradient and the noise added to it

_measured: "weakref.WeakKeyDictionary[ModelOrganism, dict[tuple[str, ...], float]]" = weakref.WeakKeyDictionary()


def activation_bytes_per_pixel(model: ModelOrganism, layers) -> float:
    """Bytes autograd keeps per image pixel for a forward pass up to ``layers`` (measured once, then cached)."""
    cached = _measured.setdefault(model, {})
    key = tuple(layers)
    if key not in cached:
        try:
            cached[key] = _probe(model, key, min(PROBE_SIZE, model.input_size))
        except RuntimeError:  # a network that only runs at its own input size
            cached[key] = _probe(model, key, model.input_size)
    return cached[key]


def _probe(model: ModelOrganism, layers: tuple[str, ...], size: int) -> float:
    frozen = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in frozen:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.full((1, 3, size, size), 0.5, device=model.device, requires_grad=True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.activations(x, layers)
    return sum(saved.values()) / size**2


def rows_per_pass(batch: int, views: int, max_rows: int, rowwise: bool) -> int:
    """Rows (views x images) in one forward pass of the render loop (its grouping of whole views)."""
    per_group = max(1, max_rows // batch)
    if views * batch <= max_rows or views <= per_group or not rowwise:
        return views * batch
    return per_group * batch


def render_bytes(model: ModelOrganism, layers, *, batch: int, views: int, rows: int, channels: int,
                 size: int) -> int:
    """Estimated peak bytes of a render: the graph of one forward pass, the image side and the views."""
    pixels = size * size
    graph = BACKWARD_FACTOR * activation_bytes_per_pixel(model, layers) * rows * pixels
    images = IMAGE_COPIES * batch * channels * pixels * 4
    all_views = VIEW_COPIES * views * batch * 3 * pixels * 4
    return int(graph + images + all_views)


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use on ``device``; None where featviz cannot tell (then nothing is refused)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    figures = [value for value in (_meminfo_available(), _cgroup_available()) if value is not None]
    if not figures:
        try:
            figures.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(figures)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """What a container's memory limit (cgroup v2) still allows, if there is one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as limit_file:
            limit = limit_file.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as current_file:
            return max(0, int(limit) - int(current_file.read().strip()))
    except (OSError, ValueError):
        return None


def check_fits(needed: int, device: torch.device, what: str) -> None:
    """Refuse (one line, with the figures) what cannot fit in the memory available on ``device``."""
    available = available_bytes(device)
    if available is not None and needed > available and device.type == "cpu" and release_freed_memory():
        available = available_bytes(device)  # memory this process had freed but kept counts as available again
    if available is not None and needed > available:
        raise FeatvizError(f"{what} needs about {_gib(needed)} of memory but {_gib(available)} is available "
                           f"on {device}; use a smaller batch or size")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
