"""A model organism: a network bundled with everything needed to use it right.

The most common silent bug in feature visualization is feeding a network the
wrong value range. A ``ModelOrganism`` therefore takes images in [0, 1] RGB
and applies the network's own normalization inside ``forward``; callers never
normalize by hand. It also knows its default input size, class labels and the
table of its layers (PyTorch dotted names, channels, spatial size).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import FeatvizError, IndexOutOfRangeError, UnknownLayerError, suggest

LOGITS = "logits"  # pseudo layer name for the network's final output


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the table: dotted module name, output channels, spatial size."""

    name: str
    channels: int
    height: int | None  # None for layers without spatial dims (e.g. the classifier)
    width: int | None
    order: int  # position in forward execution order
    kind: str  # module class name

    @property
    def spatial(self) -> bool:
        return self.height is not None


class _StopForward(Exception):
    """Raised by a hook to end the forward pass once every needed layer is seen."""


class ModelOrganism(nn.Module):
    """A network plus its input contract, labels and layer table.

    ``forward(x)`` takes RGB images in [0, 1], shape (N, 3, H, W).
    """

    def __init__(self, network: nn.Module, name: str, input_size: int, mean: Sequence[float],
                 std: Sequence[float], labels: Sequence[str] | None = None,
                 main_layers: Sequence[str] | None = None, value_range: tuple[float, float] = (0.0, 1.0),
                 channels_last: bool = False):
        super().__init__()
        self.network = network.eval()
        # NHWC lets oneDNN (CPU) and cuDNN pick faster kernels for these convnets:
        # measured ~35 % faster forward+backward on lite0 at 128 px on the CPU.
        self.channels_last = channels_last
        if channels_last:
            self.network.to(memory_format=torch.channels_last)
        self.network.requires_grad_(False)  # weights are frozen: gradients only flow to the input
        self.name = name
        self.input_size = int(input_size)
        self.value_range = value_range
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.labels = list(labels) if labels is not None else None
        self._modules_by_name = dict(self.network.named_modules())
        self._main_layer_names = list(main_layers) if main_layers else None
        self._table: list[LayerInfo] | None = None
        self._index: dict[str, LayerInfo] = {}

    # -- input contract ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def train(self, mode: bool = True):  # an organism is always used in eval mode
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        # .to(device) on a channels-last network would otherwise keep NHWC only by luck.
        out = super()._apply(fn, *args, **kwargs)
        if getattr(self, "channels_last", False):
            self.network.to(memory_format=torch.channels_last)
        return out

    def weights_digest(self) -> str:
        """SHA-256 (32 hex digits) of the network's parameters and buffers, names, dtypes and shapes:
        what a store, a site or a worker's cached copy was made with (other weights are refused)."""
        digest = hashlib.sha256()
        for key, tensor in self.network.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()[:32]

    # -- classes ----------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        return len(self.labels) if self.labels is not None else None

    def check_class(self, index: int) -> int:
        n = self.num_classes
        if n is not None and not 0 <= index < n:
            raise IndexOutOfRangeError(f"class {index} is out of range for {self.name}: valid classes are 0-{n - 1}")
        return index

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels else str(index)

    # -- layers -------------------------------------------------------------
    def layers(self, all_modules: bool = False) -> list[LayerInfo]:
        """The layer table at the default input size (main layers unless ``all_modules``)."""
        table = self._layer_table()
        if all_modules or not self._main_layer_names:
            return table
        wanted = set(self._main_layer_names)
        return [info for info in table if info.name in wanted]

    def layer(self, name: str) -> LayerInfo:
        """Info on one layer; an unknown name raises with the nearest names."""
        if name == LOGITS:
            return LayerInfo(LOGITS, self.num_classes or -1, None, None, 10**9, "output")
        info = self._layer_index().get(name)
        if info is not None:
            return info
        known = [i.name for i in self.layers()] + [i.name for i in self._layer_table()]
        raise UnknownLayerError(f"unknown layer '{name}' in {self.name}.{suggest(name, dict.fromkeys(known))}"
                                f" ('featviz layers {self.name}' lists them)")

    def default_layers(self, n: int = 4, *, first: bool = False) -> list[str]:
        """``n`` spatial main layers evenly spread over the depth, the deepest included; with
        ``first`` the shallowest too (lite0, n=4: blocks.2, blocks.7, blocks.12, head; n=3:
        blocks.4, blocks.10, head). What a command shows when no layers are given."""
        spatial = [info.name for info in self.layers() if info.spatial]
        if len(spatial) <= n:
            return spatial
        if first:  # positions 0 .. len-1 at equal steps
            picks = np.linspace(0, len(spatial) - 1, n).round().astype(int)
        else:  # the ends of n equal slices of the depth
            picks = [max(0, round(len(spatial) * i / n) - 1) for i in range(1, n + 1)]
        return list(dict.fromkeys(spatial[int(i)] for i in picks))

    def check_channel(self, layer: str, channel: int) -> int:
        info = self.layer(layer)
        if not 0 <= channel < info.channels:
            raise IndexOutOfRangeError(
                f"channel {channel} is out of range for layer '{layer}' of {self.name}: "
                f"valid channels are 0-{info.channels - 1}")
        return channel

    def module(self, name: str) -> nn.Module:
        self.layer(name)
        return self._modules_by_name[name]

    def _layer_table(self) -> list[LayerInfo]:
        if self._table is None:
            self._table = _trace_layers(self.network, self.input_size, self.normalize)
            self._index = {info.name: info for info in self._table}
        return self._table

    def _layer_index(self) -> dict[str, LayerInfo]:
        self._layer_table()
        return self._index

    # -- activations ----------------------------------------------------------
    def activations(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Run ``x`` (in [0, 1]) and return the outputs of ``layers``.

        Only the requested layers are hooked, and the forward pass stops as
        soon as all of them have fired, so an early layer never pays for the
        rest of the network. ``'logits'`` stands for the network's output.
        Hooks are removed in ``finally`` whatever happens.
        """
        layers = list(dict.fromkeys(layers))
        want_logits = LOGITS in layers
        hooked = [name for name in layers if name != LOGITS]
        for name in hooked:
            self.layer(name)
        captured: dict[str, torch.Tensor] = {}
        handles = []

        def make_hook(name):
            def hook(_module, _inputs, output):
                captured[name] = output
                if not want_logits and len(captured) == len(hooked):
                    raise _StopForward
            return hook

        try:
            for name in hooked:
                handles.append(self._modules_by_name[name].register_forward_hook(make_hook(name)))
            try:
                out = self(x)
                if want_logits:
                    captured[LOGITS] = out
            except _StopForward:
                pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in layers if n not in captured]
        if missing:
            raise FeatvizError(f"layers {missing} did not run in the forward pass of {self.name}")
        return captured

    # -- photos -------------------------------------------------------------------
    def preprocess(self, image, size: int | None = None) -> torch.Tensor:
        """PIL image / path -> (3, size, size) tensor in [0, 1]: resize the short side
        to size*256/224, then centre-crop (the usual ImageNet evaluation recipe)."""
        from ..imageio import load_image

        size = size or self.input_size
        img = load_image(image)
        short = round(size * 256 / 224)
        w, h = img.size
        scale = short / min(w, h)
        from PIL import Image

        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    @torch.no_grad()
    def predict(self, images: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """Top-k (class, label, probability) for a batch in [0, 1]."""
        probs = self(images.to(self.device)).softmax(-1)
        top = probs.topk(k, dim=-1)
        return [[(int(i), self.label(int(i)), float(p)) for p, i in zip(ps, idx)]
                for ps, idx in zip(top.values, top.indices)]

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, input_size={self.input_size}, range={self.value_range}, "
                f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}")


def check_image_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise FeatvizError(f"expected an RGB image batch of shape (N, 3, H, W) in [0, 1], got {shape}")


def _trace_layers(network: nn.Module, size: int, normalize) -> list[LayerInfo]:
    """Run one dummy image through every module once to learn output shapes and order."""
    seen: dict[str, tuple[int, tuple]] = {}
    handles = []

    def make_hook(name):
        def hook(module, _inputs, output):
            if isinstance(output, torch.Tensor) and name not in seen and output.dim() in (2, 4):
                seen[name] = (len(seen), tuple(output.shape), type(module).__name__)
        return hook

    try:
        for name, module in network.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        device = next(network.parameters()).device
        with torch.no_grad():
            network(normalize(torch.full((1, 3, size, size), 0.5, device=device)))
    finally:
        for h in handles:
            h.remove()
    table = []
    for name, (order, shape, kind) in sorted(seen.items(), key=lambda kv: kv[1][0]):
        if len(shape) == 4:
            table.append(LayerInfo(name, shape[1], shape[2], shape[3], order, kind))
        else:
            table.append(LayerInfo(name, shape[1], None, None, order, kind))
    # Hooks fire when a module finishes: a container fires after its children.
    # That is the order the early stop relies on, so keep it.
    return table
