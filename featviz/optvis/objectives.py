"""Objectives: what a visualization maximizes.

An ``Objective`` maps the activations of the layers it ``needs`` to one value
per image of the batch, shape (B,). The render loop maximizes their sum.
Objectives compose: ``a + b``, ``a - b``, ``2 * a``, ``a * b`` (product of the
values), ``-a``, ``Objective.sum([...])`` and ``a.only(i)`` (count ``a`` for
batch element ``i`` alone). Each keeps a readable ``description``.

Why per-image values rather than one scalar: the same objective then serves
batched rendering (one unit per batch element) and multi-crop robustness
(the loop averages each image's crops).

Batch layout seen by objectives: the loop may evaluate several random crops of
every image. Activations then hold ``crops * images`` rows, crop-major: row
``r`` belongs to image ``r % images``. ``images`` is passed to every call.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..errors import FeatvizError
from ..models.organism import LOGITS, ModelOrganism

Activations = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Unit:
    """Something an objective refers to, checked against a model before rendering."""

    layer: str
    channel: int | None = None  # a channel index, or a class index when layer == 'logits'


class Objective:
    """A differentiable score to maximize; see the module docstring."""

    def __init__(self, fn: Callable[[Activations, int], torch.Tensor], layers: Iterable[str], description: str,
                 units: Iterable[Unit] = (), rowwise: bool = True):
        self.fn = fn
        # rowwise: each row's value depends on that row alone, so the render loop
        # may evaluate rows in groups. False for objectives that compare images.
        self.rowwise = rowwise
        self.layers = tuple(dict.fromkeys(layers))
        self.description = description
        self.units = tuple(units)

    def __call__(self, acts: Activations, images: int) -> torch.Tensor:
        value = self.fn(acts, images)
        if value.dim() != 1:
            raise FeatvizError(f"objective {self.description!r} must return one value per image, got {tuple(value.shape)}")
        return value

    @property
    def class_index(self) -> int | None:
        """The class this objective scores when it is about one class alone (``logit:N``, ``prob:N``,
        ``2 * logit:N``), else None. Read from its units, never from the description."""
        classes = {unit.channel for unit in self.units if unit.layer == LOGITS}
        if len(classes) == 1 and all(unit.layer == LOGITS for unit in self.units):
            return classes.pop()
        return None

    def validate(self, model: ModelOrganism) -> "Objective":
        """Raise a clear error if a layer, channel or class does not exist in ``model``."""
        for unit in self.units:
            if unit.layer == LOGITS:
                if unit.channel is not None:
                    model.check_class(unit.channel)
            else:
                model.layer(unit.layer)
                if unit.channel is not None:
                    model.check_channel(unit.layer, unit.channel)
        return self

    # -- algebra -----------------------------------------------------------------
    def _combine(self, other: "Objective", op, symbol: str) -> "Objective":
        a, b = self, other
        return Objective(lambda acts, n: op(a(acts, n), b(acts, n)), a.layers + b.layers,
                         f"{a.description} {symbol} {_paren(b)}", a.units + b.units, a.rowwise and b.rowwise)

    def __add__(self, other):
        if isinstance(other, (int, float)):
            if other == 0:
                return self
            return Objective(lambda acts, n: self(acts, n) + other, self.layers, f"{self.description} + {other}",
                             self.units, self.rowwise)
        return self._combine(_as_objective(other), torch.add, "+")

    def __radd__(self, other):  # makes builtin sum() work
        return self.__add__(other)

    def __sub__(self, other):
        if isinstance(other, (int, float)):
            return self + (-other)
        return self._combine(_as_objective(other), torch.sub, "-")

    def __neg__(self):
        return -1 * self

    def __mul__(self, other):
        if isinstance(other, (int, float)):
            return Objective(lambda acts, n: other * self(acts, n), self.layers, f"{other:g} * {_paren(self)}",
                             self.units, self.rowwise)
        return self._combine(_as_objective(other), torch.mul, "*")

    def __rmul__(self, other):
        return self.__mul__(other)

    def __truediv__(self, other):
        if not isinstance(other, (int, float)):
            return NotImplemented
        return self * (1.0 / other)

    @staticmethod
    def sum(objectives: Sequence["Objective"]) -> "Objective":
        if not objectives:
            raise FeatvizError("cannot sum an empty list of objectives")
        terms = list(objectives)
        layers = [layer for term in terms for layer in term.layers]
        units = [unit for term in terms for unit in term.units]
        description = (" + ".join(term.description for term in terms) if len(terms) <= 4
                       else f"sum of {len(terms)} objectives")
        return Objective(lambda acts, n: torch.stack([term(acts, n) for term in terms]).sum(0), layers,
                         description, units, all(term.rowwise for term in terms))

    def only(self, index: int | Sequence[int]) -> "Objective":
        """Count this objective for batch element ``index`` alone, or for the elements of a list of
        indices (zero elsewhere)."""
        chosen = index if isinstance(index, int) else sorted(set(index))

        def fn(acts, n):
            value = self(acts, n)
            image_of_row = torch.arange(value.shape[0], device=value.device) % n
            if isinstance(chosen, int):
                mask = image_of_row == chosen
            else:
                mask = torch.isin(image_of_row, torch.tensor(chosen, dtype=torch.long, device=value.device))
            return value * mask
        which = f"image {chosen}" if isinstance(chosen, int) else f"images {_ranges(chosen)}"
        return Objective(fn, self.layers, f"{self.description} [{which}]", self.units, self.rowwise)

    def __repr__(self):
        return f"Objective({self.description!r}, layers={list(self.layers)})"

    def __str__(self):
        return self.description


def _ranges(indices: Sequence[int]) -> str:
    """Sorted indices as short runs: [0, 1, 2, 5] -> '0-2, 5'."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _paren(o: Objective) -> str:
    return f"({o.description})" if re.search(r" [+\-] ", o.description) else o.description


def _as_objective(x) -> Objective:
    if isinstance(x, Objective):
        return x
    raise TypeError(f"cannot combine an objective with {type(x).__name__}")


def spatial(acts: Activations, layer: str) -> torch.Tensor:
    """The activations of ``layer`` as (B, C, H, W); a linear layer's (B, C) becomes 1x1, so channel
    objectives work on it too."""
    a = acts[layer]
    if a.dim() == 2:
        a = a[:, :, None, None]
    return a


# -- primitives ----------------------------------------------------------------------

def channel(layer: str, index: int) -> Objective:
    """Mean activation of one channel over all positions."""
    return Objective(lambda acts, n: spatial(acts, layer)[:, index].mean((1, 2)), [layer],
                     f"channel {layer}:{index}", [Unit(layer, index)])


def neuron(layer: str, index: int, x: int | None = None, y: int | None = None) -> Objective:
    """Activation of one channel at one position (the centre by default).

    A position outside the layer's grid at the image size rendered is an error (never clamped or
    wrapped: the settings would name a neuron that was not the one optimized)."""
    for name, value in (("x", x), ("y", y)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise FeatvizError(f"neuron position {name} must be a whole number >= 0, got {value!r}")

    def fn(acts, n):
        a = spatial(acts, layer)
        height, width = a.shape[-2:]
        row = height // 2 if y is None else y
        column = width // 2 if x is None else x
        if row >= height or column >= width:
            raise FeatvizError(f"neuron position x={column}, y={row} is outside {layer}'s {width}x{height} grid "
                               f"at this image size (x 0-{width - 1}, y 0-{height - 1})")
        return a[:, index, row, column]
    pos = "centre" if x is None and y is None else f"x={x}, y={y}"
    return Objective(fn, [layer], f"neuron {layer}:{index} @ {pos}", [Unit(layer, index)])


def deepdream(layer: str) -> Objective:
    """Mean squared activation of a whole layer (DeepDream)."""
    return Objective(lambda acts, n: spatial(acts, layer).pow(2).mean((1, 2, 3)), [layer],
                     f"deepdream {layer}", [Unit(layer)])


layer_objective = deepdream


def logit(class_index: int) -> Objective:
    """Pre-softmax score of a class (gives better pictures than the probability)."""
    return Objective(lambda acts, n: acts[LOGITS][:, class_index], [LOGITS], f"logit {class_index}",
                     [Unit(LOGITS, class_index)])


def probability(class_index: int) -> Objective:
    """Log-probability of a class after softmax: it can also rise by pushing other classes down."""
    return Objective(lambda acts, n: F.log_softmax(acts[LOGITS], dim=-1)[:, class_index], [LOGITS],
                     f"log-probability {class_index}", [Unit(LOGITS, class_index)])


def direction(layer: str, vector: Sequence[float] | torch.Tensor) -> Objective:
    """Mean over positions of the activation vector's projection on a unit direction."""
    vec = torch.as_tensor(vector, dtype=torch.float32).flatten()
    if not torch.isfinite(vec).all() or vec.norm() == 0:
        raise FeatvizError("direction vector must be finite and non-zero")
    unit_vec = vec / vec.norm()

    def fn(acts, n):
        a = spatial(acts, layer)
        if a.shape[1] != unit_vec.numel():
            raise FeatvizError(f"direction has {unit_vec.numel()} values but layer '{layer}' has {a.shape[1]} channels")
        v = unit_vec.to(a.device, a.dtype)
        return torch.einsum("bchw,c->bhw", a, v).mean((1, 2))
    return Objective(fn, [layer], f"direction in {layer} ({unit_vec.numel()}-d)", [Unit(layer)])


def _gram_similarity(acts: Activations, layer: str, images: int) -> torch.Tensor:
    """Cosine similarity of the images' Gram (style) matrices on ``layer``, within each view:
    (views, images, images) for the crop-major layout of the module docstring."""
    a = spatial(acts, layer)
    rows, c = a.shape[:2]
    flat = a.reshape(rows, c, -1)
    gram = torch.bmm(flat, flat.transpose(1, 2)).reshape(rows, -1)
    gram = F.normalize(gram, dim=1)
    g = gram.reshape(rows // images, images, -1)
    return torch.bmm(g, g.transpose(1, 2))


def diversity(layer: str | Sequence[str], group_size: int | None = None) -> Objective:
    """Push images apart: minus each image's mean cosine similarity of its Gram (style) matrix to the
    other images'. Add it, scaled, to another objective to get several different solutions for one unit
    (``with_relative_term`` scales it by that objective's own size).

    ``group_size``: compare each image only with the other images of its group, the consecutive runs of
    ``group_size`` images (several units, several images each, in one batch); None: the whole batch is
    one group. ``layer`` may then be a list with one layer per group, for groups whose layers differ."""
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 2):
        raise FeatvizError(f"diversity groups need at least 2 images each, got group_size={group_size!r}")
    if not isinstance(layer, str):
        return _diversity_per_group(list(layer), group_size)

    def fn(acts, n):
        rows = spatial(acts, layer).shape[0]
        if group_size is None and n < 2:
            return acts[layer].new_zeros(rows)
        if group_size is not None and n % group_size:
            raise FeatvizError(f"diversity in groups of {group_size} images, but the batch has {n} images")
        sim = _gram_similarity(acts, layer, n)  # (views, n, n)
        if group_size is None:
            off_diag = sim.sum(-1) - sim.diagonal(dim1=1, dim2=2)
            return -(off_diag / (n - 1)).reshape(rows)
        group = torch.arange(n, device=sim.device) // group_size
        same_group = (group[:, None] == group[None, :]) & ~torch.eye(n, dtype=torch.bool, device=sim.device)
        return -((sim * same_group).sum(-1) / (group_size - 1)).reshape(rows)
    # Images are compared within one view (crop-major groups), so the render
    # loop may still evaluate views in groups: rowwise in the sense it needs.
    groups = "" if group_size is None else f", in groups of {group_size}"
    return Objective(fn, [layer], f"diversity {layer}{groups}", [Unit(layer)], rowwise=True)


def _diversity_per_group(group_layers: list[str], group_size: int | None) -> Objective:
    """Diversity where group ``g`` (images ``g * group_size`` onwards) is measured on ``group_layers[g]``:
    one term per distinct layer, each counted for the images of the groups that use it."""
    if group_size is None or not group_layers:
        raise FeatvizError("diversity with one layer per group needs a group_size and at least one layer")
    n_images = len(group_layers) * group_size
    layers = list(dict.fromkeys(group_layers))
    combined = Objective.sum([diversity(layer, group_size).only([i for i in range(n_images)
                                                                 if group_layers[i // group_size] == layer])
                              for layer in layers])

    def fn(acts, n):
        if n != n_images:
            raise FeatvizError(f"diversity of {len(group_layers)} groups of {group_size} images, but the batch has "
                               f"{n} images")
        return combined(acts, n)
    return Objective(fn, combined.layers, f"diversity in {len(group_layers)} groups of {group_size} on "
                     f"{', '.join(layers)}", combined.units, combined.rowwise)


def with_relative_term(main: Objective, term: Objective, weight: float) -> Objective:
    """``main + weight * |main| * term``, with ``|main|`` held constant (not differentiated): the term
    counts relative to each image's own value of ``main``, so one weight suits layers whose activations
    differ by orders of magnitude (e.g. a diversity term beside a unit's activation)."""
    def fn(acts, n):
        value = main(acts, n)
        extra = term(acts, n)
        return value + weight * value.detach().abs() * extra
    return Objective(fn, main.layers + term.layers, f"{main.description} + {weight:g} * |main| * {_paren(term)}",
                     main.units + term.units, main.rowwise and term.rowwise)


def batched_channels(layer_channels: Sequence[tuple[str, int]], kind: str = "channel") -> Objective:
    """One unit per batch element: element i maximizes ``layer_channels[i]``.

    Equivalent to ``sum(channel(l, c).only(i) ...)`` but gathers all units of a
    layer with one indexing operation, so its cost (and its backward, one
    scatter per layer instead of one per unit) does not grow with the batch.
    """
    if kind not in ("channel", "neuron", "negative"):
        raise FeatvizError(f"unknown unit kind {kind!r}: channel, neuron or negative")
    units = list(layer_channels)
    by_layer: dict[str, list[tuple[int, int]]] = {}
    for i, (layer, ch) in enumerate(units):
        by_layer.setdefault(layer, []).append((i, ch))
    sign = -1.0 if kind == "negative" else 1.0

    def fn(acts, n):
        if n != len(units):
            raise FeatvizError(f"batched objective has {len(units)} units but the batch has {n} images")
        rows_total = next(iter(acts.values())).shape[0]
        values = None
        for layer, members in by_layer.items():
            a = spatial(acts, layer)
            dev = a.device
            images = torch.tensor([i for i, _ in members], device=dev)
            chans = torch.tensor([c for _, c in members], device=dev)
            views = rows_total // n
            rows = (torch.arange(views, device=dev)[:, None] * n + images[None, :]).flatten()
            picked = a[rows, chans.repeat(views)]  # (views * members, H, W)
            if kind == "neuron":
                height, width = picked.shape[-2:]
                v = picked[:, height // 2, width // 2]
            else:
                v = picked.mean((1, 2))
            if values is None:
                values = a.new_zeros(rows_total)
            values = values.index_add(0, rows, sign * v)
        return values

    names = {"channel": "channel", "neuron": "neuron", "negative": "negative channel"}[kind]
    return Objective(fn, list(by_layer), f"{len(units)} {names} objectives, one per image",
                     [Unit(l, c) for l, c in units])


# -- string shorthand -----------------------------------------------------------------
_TERM = re.compile(r"\s*([+-])?\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([^\s+*-]+(?:\s*@\s*\d+\s*,\s*\d+)?)")


def parse(spec: str, model: ModelOrganism | None = None) -> Objective:
    """Parse the shorthand used by the CLI and the API.

    Terms: ``LAYER:CH`` (channel), ``neuron:LAYER:CH[@x,y]``, ``logit:N``,
    ``prob:N``, ``dream:LAYER``, ``-LAYER:CH`` (negative), combined with ``+``,
    ``-`` and scalar weights: ``blocks.8:12 - 0.5*blocks.8:3``.
    With ``model``, layer names and indices are checked.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise FeatvizError("empty objective; examples: blocks.8:12, logit:309, prob:309, dream:blocks.5")
    pos, terms = 0, []
    spec = spec.strip()
    while pos < len(spec):
        m = _TERM.match(spec, pos)
        if not m or m.end() == pos:
            raise FeatvizError(f"cannot parse objective {spec!r} at position {pos}")
        sign, weight, term = m.groups()
        if terms and sign is None:
            raise FeatvizError(f"objective {spec!r}: expected '+' or '-' before {term!r}")
        obj = _parse_term(term.replace(" ", ""), spec)
        factor = (-1.0 if sign == "-" else 1.0) * (float(weight) if weight else 1.0)
        terms.append(obj if factor == 1.0 else factor * obj)
        pos = m.end()
    result = terms[0] if len(terms) == 1 else Objective.sum(terms)
    if model is not None:
        result.validate(model)
    return result


def _parse_int(text: str, what: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FeatvizError(f"objective {spec!r}: {what} must be an integer, got {text!r}") from None


def _parse_term(term: str, spec: str) -> Objective:
    head, _, rest = term.partition(":")
    if not rest:
        raise FeatvizError(f"objective term {term!r} needs the form LAYER:CHANNEL, logit:N, prob:N or dream:LAYER")
    if head == "logit":
        return logit(_parse_int(rest, "class", spec))
    if head in ("prob", "probability"):
        return probability(_parse_int(rest, "class", spec))
    if head in ("dream", "deepdream", "layer"):
        return deepdream(rest)
    if head == "neuron":
        layer, _, channel_text = rest.rpartition(":")
        channel_text, _, position = channel_text.partition("@")
        if position:
            x, _, y = position.partition(",")
            return neuron(layer, _parse_int(channel_text, "channel", spec), _parse_int(x, "x", spec),
                          _parse_int(y, "y", spec))
        return neuron(layer, _parse_int(channel_text, "channel", spec))
    layer, _, channel_text = term.rpartition(":")
    return channel(layer, _parse_int(channel_text, "channel", spec))


def as_objective(target, model: ModelOrganism | None = None) -> Objective:
    """Accept an Objective or a shorthand string."""
    obj = parse(target) if isinstance(target, str) else target
    if not isinstance(obj, Objective):
        raise FeatvizError(f"expected an objective or a string like 'blocks.8:12', got {type(target).__name__}")
    return obj.validate(model) if model is not None else obj
