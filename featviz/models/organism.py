"""A model organism: a network bundled with everything needed to use it right.

The most common silent bug in feature visualization is feeding a network the
wrong value range. A ``ModelOrganism`` therefore takes images in [0, 1] RGB
and applies the network's own normalization inside ``forward``; callers never
normalize by hand. It also knows its default input size, class labels and the
table of its layers (PyTorch dotted names, channels, spatial size).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import weakref
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..devices import tune_cpu_allocator
from ..errors import FeatvizError, IndexOutOfRangeError, UnknownLayerError, suggest

LOGITS = "logits"  # pseudo layer name for the network's final output


NCHW, NHWC, TOKENS, FLAT = "nchw", "nhwc", "tokens", "flat"


@dataclass(frozen=True)
class Branch:
    """Channels ``start``..``stop - 1`` of a concatenating layer come from module ``name``."""

    name: str
    start: int
    stop: int


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the table: dotted module name, output channels, spatial size.

    ``layout`` is how the module's raw output is laid out: ``nchw`` (convolutions),
    ``nhwc`` (a Linear / LayerNorm applied to a channels-last map, as inside
    ConvNeXt blocks), ``tokens`` (a transformer's (B, N, C): ``prefix`` class /
    register tokens, then the patch tokens of a ``height`` x ``width`` grid) or
    ``flat`` (B, C). ``ModelOrganism.activations`` always hands out (B, C, H, W)
    (or (B, C) for flat layers), so objectives, dataset examples, receptive
    fields and attribution never see the difference. ``branches``: for a layer
    that concatenates its children's outputs along channels (Inception), which
    child each channel range comes from.
    """

    name: str
    channels: int
    height: int | None  # None for layers without spatial dims (e.g. the classifier)
    width: int | None
    order: int  # position in forward execution order
    kind: str  # module class name
    layout: str = NCHW
    prefix: int = 0  # tokens before the patch grid (the class token...) in a tokens layout
    branches: tuple[Branch, ...] = ()

    @property
    def spatial(self) -> bool:
        return self.height is not None

    def branch_of(self, channel: int) -> tuple[Branch, int] | None:
        """(branch, channel within the branch) for a concatenating layer, else None."""
        for branch in self.branches:
            if branch.start <= channel < branch.stop:
                return branch, channel - branch.start
        return None


class _StopForward(Exception):
    """Raised by a hook to end the forward pass once every needed layer is seen."""


def is_rectifier(module: nn.Module) -> bool:
    """ReLU-like modules, whose output is 0 below a threshold: ReLU, ReLU6, Hardtanh with min 0."""
    if isinstance(module, nn.ReLU):
        return True
    return isinstance(module, nn.Hardtanh) and float(module.min_val) == 0.0


class ModelOrganism(nn.Module):
    """A network plus its input contract, labels and layer table.

    ``forward(x)`` takes RGB images in [0, 1], shape (N, 3, H, W).
    """

    def __init__(self, network: nn.Module, name: str, input_size: int, mean: Sequence[float],
                 std: Sequence[float], labels: Sequence[str] | None = None,
                 main_layers: Sequence[str] | None = None, value_range: tuple[float, float] = (0.0, 1.0),
                 channels_last: bool = False):
        super().__init__()
        tune_cpu_allocator()  # every pass through a network allocates the same large tensors: keep them warm
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
        self._main_layer_names = list(main_layers) if main_layers else default_main_layers(self.network)
        self._table: list[LayerInfo] | None = None
        self._index: dict[str, LayerInfo] = {}
        self._output_shape: tuple | None = None
        self._fixed_size = False
        self.source: str | None = None  # the model spec file this organism was loaded from, if any
        self.weights_file: str | None = None  # the state dict loaded over the network's own weights, if any

    @property
    def main_layer_names(self) -> list[str] | None:
        """The layers ``layers()`` shows by default (None: every module)."""
        return list(self._main_layer_names) if self._main_layer_names else None

    def rebuilt(self, network: nn.Module | None = None, **changes) -> "ModelOrganism":
        """A new organism with the same input contract, after ``network`` or metadata changed
        (``name``, ``labels``, ``main_layers``, ``input_size``)."""
        unknown = set(changes) - {"name", "labels", "main_layers", "input_size"}
        if unknown:
            raise TypeError(f"rebuilt() got unknown fields {sorted(unknown)}")
        out = ModelOrganism(network if network is not None else self.network, changes.get("name", self.name),
                            changes.get("input_size", self.input_size), self.mean.flatten().tolist(),
                            self.std.flatten().tolist(), labels=changes.get("labels", self.labels),
                            main_layers=changes.get("main_layers", self._main_layer_names),
                            value_range=self.value_range, channels_last=self.channels_last)
        out.source, out.weights_file = self.source, self.weights_file
        return out.to(self.device)

    # -- input contract ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size) and self.fixed_size:
            # A network that takes one input size only (a ViT's position embeddings): resize to it.
            x = torch.nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                                align_corners=False)
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
        """Number of classes: the labels', else the width of a (B, K) output, else None."""
        return len(self.labels) if self.labels is not None else self.output_features()

    def output_features(self, refresh: bool = False) -> int | None:
        """K for a network whose output is (B, K) at the input size; None for other outputs."""
        if refresh:
            self._table = None
        self._layer_table()
        shape = self._output_shape
        return int(shape[1]) if shape is not None and len(shape) == 2 else None

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

    def pre_rectifier(self, layer: str) -> str:
        """The layer before ``layer``'s closing rectifier, when ``layer`` is a sequence ending in a ReLU-like
        module whose input has the same channels (``head`` = conv, BN, ReLU6 in EfficientNet-Lite gives
        ``head.bn``); else ``layer`` itself.

        Why it matters: a rectified unit is exactly 0 for everything that does not excite it, so an
        image optimized from grey gets no gradient, and "the image that inhibits it most" has no meaning
        (every image that switches it off scores 0). Its pre-activation has both."""
        module = self.module(layer)
        children = list(module.named_children()) if isinstance(module, nn.Sequential) else []
        if len(children) >= 2 and is_rectifier(children[-1][1]):
            before = f"{layer}.{children[-2][0]}"
            try:
                if self.layer(before).channels == self.layer(layer).channels:
                    return before
            except FeatvizError:
                pass
        return layer

    def unit_description(self, layer: str, channel: int) -> str:
        """'layer:channel', plus the branch it comes from for a concatenating layer
        ('inception3a:70 = branch2:6') and a note for token layers."""
        info = self.layer(layer)
        text = f"{layer}:{channel}"
        found = info.branch_of(channel)
        if found is not None:
            text += f" = {found[0].name}:{found[1]}"
        if info.layout == TOKENS:
            text += f" (patch tokens on a {info.height}x{info.width} grid; {info.prefix} class/register token(s) left out)"
        return text

    @property
    def fixed_size(self) -> bool:
        """True if the network runs at its input size only (a ViT with fixed position embeddings); images of
        other sizes are then resized to ``input_size`` inside ``forward``."""
        self._layer_table()
        return self._fixed_size

    def _layer_table(self) -> list[LayerInfo]:
        if self._table is None:
            self._table, self._output_shape = _trace_layers(self.network, self.input_size, self.normalize)
            self._index = {info.name: info for info in self._table}
            self._fixed_size = not _runs_at(self.network, self.input_size * 3 // 2, self.normalize)
        return self._table

    def _layer_index(self) -> dict[str, LayerInfo]:
        self._layer_table()
        return self._index

    # -- activations ----------------------------------------------------------
    def activations(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Run ``x`` (in [0, 1]) and return the outputs of ``layers``, as (B, C, H, W) or (B, C).

        Only the requested layers are hooked, and the forward pass stops as
        soon as all of them have fired, so an early layer never pays for the
        rest of the network. ``'logits'`` stands for the network's output.
        Transformer tokens come laid on their patch grid and channels-last
        maps permuted (see ``LayerInfo``). A module called more than once in a
        forward pass is read at its first call, as in the layer table.
        Hooks are removed in ``finally`` whatever happens.
        """
        raw = self.raw_activations(x, layers)
        return {name: value if name == LOGITS else self.canonical(name, value, x) for name, value in raw.items()}

    def canonical(self, layer: str, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A raw module output of ``layer`` for input ``x``, as ``activations`` hands it out. Gradients with
        respect to the raw output convert the same way (it only permutes and selects)."""
        return to_canonical(raw, self.layer(layer), x.shape[-2:], self.input_size)

    def raw_activations(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """The modules' own outputs (as laid out by the network; see ``activations``).

        Each returned tensor is an ancestor of everything computed after it in
        the forward pass, so gradients of later outputs with respect to it exist.
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
                if name in captured:  # a module called again (a shared ReLU): its first call is the layer
                    return None
                value = output[0] if isinstance(output, (tuple, list)) and output else output
                captured[name] = value
                if not want_logits and len(captured) == len(hooked):
                    raise _StopForward
                if isinstance(output, torch.Tensor):
                    # The forward pass goes on with a copy: a later in-place op (ReLU(inplace=True),
                    # ``out += identity``) would otherwise change the very tensor we hand out, and
                    # its gradient. The copy's gradient flows back through the captured output.
                    return output.clone()
                return None
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

    def layer_gradient(self, x: torch.Tensor, layer: str, score) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(activations of ``layer``, gradient of ``score`` summed over the batch with respect to them,
        score values), both maps as (B, C, H, W). ``score`` has an objective's ``layers`` and is called
        as ``score(activations, batch)`` (an ``Objective``). Used by Grad-CAM and Building Blocks."""
        if not x.requires_grad:  # the weights are frozen: without this nothing would carry a gradient
            x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            raw = self.raw_activations(x, [layer, *score.layers])
            acts = {name: value if name == LOGITS else self.canonical(name, value, x) for name, value in raw.items()}
            values = score(acts, x.shape[0])
            (grad,) = torch.autograd.grad(values.sum(), raw[layer], allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(raw[layer])
        return acts[layer].detach(), self.canonical(layer, grad, x), values.detach()

    @contextlib.contextmanager
    def out_of_place(self):
        """Run the network's in-place activations (``ReLU(inplace=True)``...) out of place meanwhile: backward
        hooks on a module (Captum's guided backprop) are forbidden on in-place ones. Same values."""
        switched = [m for m in self.network.modules() if getattr(m, "inplace", False) is True]
        for module in switched:
            module.inplace = False
        try:
            yield self
        finally:
            for module in switched:
                module.inplace = True

    def unit_tangent(self, layer: str, output: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like the raw ``output`` of ``layer``: 1 at channel ``channels[b]`` of row b at every
        position that ``activations`` hands out (patch tokens only), 0 elsewhere. For forward-mode probes."""
        info = self.layer(layer)
        tangent = torch.zeros_like(output)
        rows = torch.arange(output.shape[0], device=output.device)
        if info.layout == TOKENS:
            tangent[rows[:, None], info.prefix:, channels[:, None]] = 1.0
        elif info.layout == NHWC:
            tangent.permute(0, 3, 1, 2)[rows, channels] = 1.0
        else:
            tangent[rows, channels] = 1.0
        return tangent

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


def to_canonical(output: torch.Tensor, info: LayerInfo, image_hw, traced_size: int) -> torch.Tensor:
    """A layer's raw output as (B, C, H, W) (or (B, C)): channels-last maps are permuted, the patch
    tokens of a transformer are laid on their grid (class / register tokens left out)."""
    if info.layout == NHWC:
        return output.permute(0, 3, 1, 2)
    if info.layout == TOKENS:
        patches = output[:, info.prefix:, :]
        n = patches.shape[1]
        # The grid follows the image: a patch covers traced_size / height pixels.
        patch = traced_size / info.height
        gh, gw = round(image_hw[0] / patch), round(image_hw[1] / patch)
        if gh * gw != n:
            side = math.isqrt(n)
            if side * side != n:
                raise FeatvizError(f"cannot lay the {n} patch tokens of '{info.name}' on a grid for an image of "
                                   f"{image_hw[0]}x{image_hw[1]}")
            gh = gw = side
        return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], gh, gw)
    return output


def token_grid(n_tokens: int) -> tuple[int, int] | None:
    """(prefix, side) for N tokens = a few class/register tokens + a square patch grid; None if N is no such count."""
    side = math.isqrt(n_tokens)
    prefix = n_tokens - side * side
    if side < 2 or prefix > min(16, side):
        return None
    return prefix, side


def _layout(module: nn.Module, output: torch.Tensor, source: tuple | None) -> tuple[str, int] | None:
    """(layout, prefix tokens) of a module's output in the trace (batch 1); None: not a layer we can use.
    ``source``: (layout, shape) of the module's first input when another module made it."""
    if output.dim() == 2:
        return FLAT, 0
    if output.dim() == 3 and output.shape[0] == 1:
        grid = token_grid(output.shape[1])
        return (TOKENS, grid[0]) if grid else None
    if output.dim() != 4:
        return None
    features = (module.out_features if isinstance(module, nn.Linear) else
                module.normalized_shape[-1] if isinstance(module, nn.LayerNorm) and module.normalized_shape else None)
    if features is not None and output.shape[-1] == features and output.shape[1] != features:
        return NHWC, 0  # acting on the last dimension, which holds the channels (torchvision's
        # LayerNorm2d subclasses nn.LayerNorm but permutes inside: its output stays NCHW)
    if source is not None and source[0] in (NCHW, NHWC):
        layout, shape = source
        if tuple(output.shape) == shape:
            return layout, 0  # elementwise (GELU, dropout, scale) keeps its input's layout
        n, a, b, c = shape
        if layout == NCHW and tuple(output.shape) == (n, b, c, a) and a != c:
            return NHWC, 0  # a permute to channels-last
        if layout == NHWC and tuple(output.shape) == (n, c, a, b) and a != c:
            return NCHW, 0
    return NCHW, 0


def _runs_at(network: nn.Module, size: int, normalize) -> bool:
    """Whether the network takes a ``size`` x ``size`` image (one probe forward pass)."""
    try:
        with torch.no_grad():
            network(normalize(torch.rand((1, 3, size, size), device=next(network.parameters()).device)))
        return True
    except Exception:  # shape errors come as RuntimeError, AssertionError, ValueError...
        return False


def _trace_layers(network: nn.Module, size: int, normalize) -> tuple[list[LayerInfo], tuple | None]:
    """Run one dummy image through every module once to learn output shapes, layouts and order;
    returns the table and the shape of the network's output."""
    seen: dict[str, tuple] = {}
    made_by: dict[int, tuple] = {}  # id(tensor) -> (weak ref, layout, shape): layouts flow to the next module
    channel_means: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
                output = output[0]
            if not isinstance(output, torch.Tensor) or name in seen:
                return
            source = None
            if inputs and isinstance(inputs[0], torch.Tensor):
                entry = made_by.get(id(inputs[0]))
                if entry is not None and entry[0]() is inputs[0]:
                    source = entry[1:]
            found = _layout(module, output, source)
            if found is None:
                return
            layout, prefix = found
            seen[name] = (len(seen), tuple(output.shape), type(module).__name__, layout, prefix)
            made_by[id(output)] = (weakref.ref(output), layout, tuple(output.shape))
            if layout == NCHW:
                channel_means[name] = output.detach().float().mean((0, 2, 3))
        return hook

    try:
        for name, module in network.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        device = next(network.parameters()).device
        # A varied image (not flat grey) so that branch outputs differ and can be told apart.
        gen = torch.Generator().manual_seed(0)
        image = torch.rand((1, 3, size, size), generator=gen).to(device)
        with torch.no_grad():
            result = network(normalize(image))
    finally:
        for h in handles:
            h.remove()
    out_shape = tuple(result.shape) if isinstance(result, torch.Tensor) else None
    table = []
    for name, (order, shape, kind, layout, prefix) in sorted(seen.items(), key=lambda kv: kv[1][0]):
        if layout == FLAT:
            table.append(LayerInfo(name, shape[1], None, None, order, kind, layout))
        elif layout == TOKENS:
            side = math.isqrt(shape[1] - prefix)
            table.append(LayerInfo(name, shape[2], side, side, order, kind, layout, prefix))
        elif layout == NHWC:
            table.append(LayerInfo(name, shape[3], shape[1], shape[2], order, kind, layout))
        else:
            branches = _concat_branches(network, name, shape, seen, channel_means)
            table.append(LayerInfo(name, shape[1], shape[2], shape[3], order, kind, layout, 0, branches))
    # Hooks fire when a module finishes: a container fires after its children.
    # That is the order the early stop relies on, so keep it.
    return table, out_shape


def _concat_branches(network, name, shape, seen, channel_means) -> tuple[Branch, ...]:
    """The children whose outputs, concatenated along channels in the order they ran, are this output."""
    prefix = f"{name}." if name else ""
    children = [f"{prefix}{child}" for child, _ in network.get_submodule(name).named_children()]
    parts = sorted((seen[c][0], c) for c in children
                   if c in seen and seen[c][3] == NCHW and seen[c][1][2:] == shape[2:] and c in channel_means)
    if len(parts) < 2 or sum(seen[c][1][1] for _, c in parts) != shape[1]:
        return ()
    joined = torch.cat([channel_means[c] for _, c in parts])
    if not torch.allclose(joined, channel_means[name], rtol=1e-4, atol=1e-5):
        return ()
    branches, start = [], 0
    for _, child in parts:
        stop = start + seen[child][1][1]
        branches.append(Branch(child, start, stop))
        start = stop
    return tuple(branches)


def default_main_layers(network: nn.Module) -> list[str] | None:
    """Block-level layers, as the built-ins list theirs: the network's children, with lists of blocks
    (nn.Sequential / nn.ModuleList of modules that have children, such as ResNet's layer1 or a ViT's
    encoder layers) opened up, and a Sequential stack of plain layers (VGG's ``features``) too; a
    conv-BN-ReLU unit stays one layer."""
    def is_list(m):
        return isinstance(m, (nn.Sequential, nn.ModuleList))

    def blocks(m):
        return sum(1 for c in m.children() if any(True for _ in c.children()))

    out: list[str] = []

    def visit(module: nn.Module, prefix: str, depth: int) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if not any(True for _ in child.children()):
                out.append(name)
            elif is_list(child) and blocks(child) == 0:
                # Plain layers: a stack (VGG's features: several convs) opens, a unit (conv, BN, ReLU) does not.
                if sum(isinstance(c, (nn.Conv2d, nn.Linear)) for c in child.children()) >= 2:
                    visit(child, name + ".", depth + 1)
                else:
                    out.append(name)
            elif is_list(child) and (depth == 0 or blocks(child) >= 2):
                visit(child, name + ".", depth + 1)
            elif not is_list(child) and any(is_list(c) and blocks(c) >= 3 for c in child.children()):
                visit(child, name + ".", depth + 1)
            else:
                out.append(name)

    visit(network, "", 0)
    return out or None
