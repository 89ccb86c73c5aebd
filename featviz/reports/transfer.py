"""Report: from general to specific features, measured by transfer to a new task.

Claim (Yosinski et al. 2014; Distill, "Feature Visualization"): early layers
learn general features (edges, colours, textures), late layers task-specific
ones, which is why ImageNet weights transfer. This report fits a linear probe
on the spatially pooled activations of layers along the depth, on a task the
network was not trained on, and compares the same probe on a randomly
initialised copy of the network (same architecture, no training) and on the
raw pixels. What training adds at each depth is the gap between the two
networks.

- Data: a folder with one sub-folder per class, or the offline demo task
  (``demo_shapes``): six outline shapes drawn on textured backgrounds, with
  colour, size, rotation, position, stroke and background as nuisances.
- Features: the mean over positions of each chosen layer's output.
- Probe: multinomial logistic regression (``LogisticProbe``; torch, LBFGS) on
  features standardised with the training fold's statistics; its L2 penalty is
  chosen by an inner cross-validation on the training fold; stratified k-fold
  accuracy (mean and std over the folds).
- Random copy (``random_copy``): He-normal weights, zero biases, then each
  convolution rescaled so its output has unit variance on a batch of the data
  (LSUV, Mishkin & Matas 2016).
- Pictures: channel visualizations of the units the probe leans on most, along
  the same depth axis, for the trained and the random network.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatvizError
from ..models import load
from ..models.organism import ModelOrganism
from ._common import environment, md_table, out_folder, pyplot, save_figure, write_json, write_text

PIXELS = "pixels"          # pseudo layer: the input itself, average-pooled to PIXEL_GRID x PIXEL_GRID
PIXEL_GRID = 8
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


# -- the demo task -------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) noise in [0, 1], smooth at the scale size / cells (bicubic upsampling)."""
    from PIL import Image

    low = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((low * 255).astype(np.uint8), "L").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _texture(rng: np.random.Generator, size: int, kind: int | None = None) -> np.ndarray:
    """A random background (size, size, 3) in [0, 1]: blotches (kind 0), stripes (1), checks (2)
    or speckle (3), between two random colours."""
    kind = int(rng.integers(4)) if kind is None else kind
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # blotches
        t = _smooth_noise(rng, size, int(rng.integers(3, 12)))
    elif kind == 1:  # stripes
        theta, freq = rng.uniform(0, np.pi), rng.uniform(3, 14)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3))
    elif kind == 2:  # checks, rotated
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 8)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        t = ((np.floor(u * freq) + np.floor(v * freq)) % 2).astype(np.float32)
        t = 0.25 + 0.5 * t
    else:  # speckle over a gradient
        t = 0.6 * rng.random((size, size)).astype(np.float32) + 0.4 * _smooth_noise(rng, size, 2)
    c0, c1 = rng.random(3), rng.random(3)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    return img.astype(np.float32)


def _shape_mask(kind: str, rng: np.random.Generator, size: int, stroke: float) -> np.ndarray:
    """Antialiased (size, size) mask in [0, 1] of one outline shape at a random size, rotation
    and position (drawn at 4x and reduced)."""
    from PIL import Image, ImageDraw

    ss = 4
    big = size * ss
    r = rng.uniform(0.16, 0.32) * big
    cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
    rot = rng.uniform(0, 2 * np.pi)
    width = max(1, int(round(stroke * ss)))
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)

    def polygon(radii, n):
        return [(cx + radii[i % len(radii)] * np.cos(rot + 2 * np.pi * i / n),
                 cy + radii[i % len(radii)] * np.sin(rot + 2 * np.pi * i / n)) for i in range(n)]

    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=width)
    elif kind == "ring":  # two concentric circles
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=width)
        r2 = r * rng.uniform(0.45, 0.6)
        draw.ellipse([cx - r2, cy - r2, cx + r2, cy + r2], outline=255, width=width)
    elif kind == "square":
        draw.polygon(polygon([r], 4), outline=255, width=width)
    elif kind == "triangle":
        draw.polygon(polygon([r], 3), outline=255, width=width)
    elif kind == "star":
        draw.polygon(polygon([r, r * 0.42], 10), outline=255, width=width)
    elif kind == "cross":
        a = r * 0.34
        pts = [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r), (-a, -r), (-a, -a), (-r, -a), (-r, a),
               (-a, a), (-a, r)]
        c, s = np.cos(rot), np.sin(rot)
        draw.polygon([(cx + c * x - s * y, cy + s * x + c * y) for x, y in pts], outline=255, width=width)
    else:
        raise ValueError(kind)
    small = img.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def demo_shapes(per_class: int = 48, size: int = 160, seed: int = 0,
                classes: Sequence[str] = SHAPES) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The offline demo task: ``per_class`` images of each shape class, ``size`` px, made
    deterministically from ``seed``. Returns (images (N, 3, size, size) in [0, 1], labels (N,),
    class names).

    Each image: a random background texture (blotches, stripes, checks or speckle, two
    random colours), a shape *outline* (random colour, stroke 1.5-4 px at 160 px, radius
    16-32 % of the image, any rotation and position), two distractor strokes, and pixel
    noise. The class is the outline's shape only.
    """
    from PIL import Image, ImageDraw

    if per_class < 1:
        raise FeatvizError(f"images per class must be at least 1, got {per_class}")
    rng = np.random.default_rng([int(seed), 7])
    images, labels = [], []
    k = size / 160
    for _ in range(per_class):
        for c, kind in enumerate(classes):
            bg = _texture(rng, size)
            stroke = rng.uniform(1.5, 4.0) * k
            mask = _shape_mask(kind, rng, size, stroke)[..., None]
            colour = rng.random(3).astype(np.float32)
            img = bg * (1 - mask) + colour[None, None] * mask
            # distractors: two random line segments in random colours
            pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")
            draw = ImageDraw.Draw(pil)
            for _d in range(2):
                x0, y0 = rng.uniform(0, size, 2)
                length, ang = rng.uniform(0.1, 0.3) * size, rng.uniform(0, 2 * np.pi)
                draw.line([(x0, y0), (x0 + length * np.cos(ang), y0 + length * np.sin(ang))],
                          fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=max(1, int(round(stroke))))
            img = np.asarray(pil, dtype=np.float32) / 255.0
            img = img + rng.normal(0, 0.04, img.shape).astype(np.float32)
            images.append(np.clip(img, 0, 1))
            labels.append(c)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long), list(classes)


# -- a folder of class folders ------------------------------------------------------------------

@dataclass
class Dataset:
    """Images (N, 3, S, S) in [0, 1], integer labels, class names, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    description: str
    source: str                     # "demo" or the folder
    files: list[str] | None = None  # per image, for a folder
    skipped: list[str] | None = None  # unreadable files (folder), with the reason

    def counts(self) -> list[int]:
        return [int((self.labels == c).sum()) for c in range(len(self.classes))]


def load_folder(model: ModelOrganism, data_dir, size: int, folds: int, per_class: int | None = None) -> Dataset:
    """Images of ``data_dir/<class>/*`` through ``model.preprocess`` (short side resized, centre
    crop to ``size``). Unreadable files are skipped and listed. With ``per_class``, at most that
    many images per class (the first in name order)."""
    from ..errors import ImageReadError

    root = Path(data_dir)
    if not root.is_dir():
        raise FeatvizError(f"data folder not found: {root} (it should hold one sub-folder of images per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    images, labels, files, skipped, classes = [], [], [], [], []
    for d in class_dirs:
        paths = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        got = 0
        for p in paths:
            if per_class is not None and got >= per_class:
                break
            try:
                images.append(model.preprocess(p, size))
            except ImageReadError as exc:
                skipped.append(f"{p.relative_to(root)}: {exc}")
                continue
            labels.append(len(classes))
            files.append(str(p.relative_to(root)))
            got += 1
        if got:
            classes.append(d.name)
        else:
            skipped.append(f"{d.name}/: no readable images (class left out)")
    if len(classes) < 2:
        found = ", ".join(c for c in classes) or "none"
        raise FeatvizError(f"{root} needs at least 2 class sub-folders with images, found {len(classes)} "
                           f"({found})")
    ds = Dataset(torch.stack(images), torch.tensor(labels), classes, f"the folder {root}: {len(classes)} "
                 f"classes (sub-folders), {len(images)} images, centre-cropped to {size} px", str(root), files,
                 skipped)
    small = [(c, n) for c, n in zip(classes, ds.counts()) if n < folds]
    if small:
        raise FeatvizError(f"{folds}-fold cross-validation needs at least {folds} images per class; too few in "
                           + ", ".join(f"{c} ({n})" for c, n in small))
    return ds


def demo_dataset(per_class: int, size: int, seed: int) -> Dataset:
    x, y, names = demo_shapes(per_class, size, seed)
    desc = (f"offline demo task (generated, seed {seed}): {len(names)} classes of shape outlines "
            f"({', '.join(names)}), {per_class} images each at {size} px. Each image is a random background "
            "texture (blotches, stripes, rotated checks or speckle, between two random colours), one shape "
            "outline in a random colour (stroke 1.5-4 px per 160 px, radius 16-32 % of the image, any rotation "
            "and position), two distractor line segments in random colours, and Gaussian pixel noise "
            "(sigma 0.04). Colour, size, rotation, position and background are nuisances: only the outline's "
            "shape tells the class. ImageNet has no such classes.")
    return Dataset(x, y, names, desc, "demo")


# -- features ---------------------------------------------------------------------------------------

@torch.no_grad()
def pooled_features(model: ModelOrganism, images: torch.Tensor, layers: Sequence[str],
                    batch_size: int = 32) -> dict[str, torch.Tensor]:
    """layer -> (N, C) float64: the mean over positions of each layer's output. ``pixels``
    stands for the input average-pooled to 8 x 8 (192 values)."""
    hooked = [l for l in layers if l != PIXELS]
    out: dict[str, list[torch.Tensor]] = {l: [] for l in layers}
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(model.device)
        if PIXELS in out:
            out[PIXELS].append(F.adaptive_avg_pool2d(x, PIXEL_GRID).flatten(1).double().cpu())
        if hooked:
            acts = model.activations(x, hooked)
            for name in hooked:
                a = acts[name].float()
                a = a.mean((2, 3)) if a.dim() == 4 else a.flatten(1)
                out[name].append(a.double().cpu())
    return {name: torch.cat(v) for name, v in out.items()}


# -- the probe ------------------------------------------------------------------------------------------

class LogisticProbe:
    """Multinomial logistic regression with an L2 penalty on the weights, fit by LBFGS
    on features standardised with the training set's mean and std.

    Loss: mean cross-entropy + ``penalty`` / 2 * ||W||^2 (the bias is not penalised).
    """

    def __init__(self, penalty: float = 1e-2, max_iter: int = 100):
        self.penalty, self.max_iter = float(penalty), int(max_iter)
        self.weight = self.bias = self.mean = self.std = None

    def fit(self, x: torch.Tensor, y: torch.Tensor, n_classes: int | None = None,
            init: "LogisticProbe | None" = None) -> "LogisticProbe":
        x = x.double()
        n_classes = int(n_classes or int(y.max()) + 1)
        self.mean = x.mean(0)
        self.std = x.std(0, unbiased=False).clamp_min(1e-8)
        z = (x - self.mean) / self.std
        d = z.shape[1]
        w = torch.zeros(d, n_classes, dtype=torch.float64) if init is None else init.weight.clone()
        b = torch.zeros(n_classes, dtype=torch.float64) if init is None else init.bias.clone()
        w.requires_grad_(True)
        b.requires_grad_(True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.max_iter, history_size=20,
                                tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z @ w + b, y) + 0.5 * self.penalty * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.weight, self.bias = w.detach(), b.detach()
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(x) == y).double().mean())

    def log_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(F.cross_entropy(self.logits(x), y))


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Fold index (0..k-1) per sample: each class shuffled (seeded), then dealt round-robin,
    so every fold holds each class in proportion."""
    rng = np.random.default_rng([int(seed), 11])
    y = labels.numpy()
    order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)])
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = np.arange(len(y)) % k
    return torch.from_numpy(fold)


def choose_penalty(x: torch.Tensor, y: torch.Tensor, n_classes: int, penalties: Sequence[float] = PENALTIES,
                   inner_folds: int = 3, seed: int = 0) -> float:
    """The penalty with the best mean held-out accuracy over ``inner_folds`` stratified folds of
    (x, y); ties go to the lower held-out log loss. Fits go from the strongest penalty to the
    weakest, each starting from the previous solution."""
    fold = stratified_folds(y, inner_folds, seed)
    scores = {p: [0.0, 0.0] for p in penalties}
    for f in range(inner_folds):
        tr, te = fold != f, fold == f
        prev = None
        for p in sorted(penalties, reverse=True):
            prev = LogisticProbe(p).fit(x[tr], y[tr], n_classes, init=prev)
            scores[p][0] += prev.accuracy(x[te], y[te]) / inner_folds
            scores[p][1] += prev.log_loss(x[te], y[te]) / inner_folds
    return max(penalties, key=lambda p: (scores[p][0], -scores[p][1]))


def probe_cv(x: torch.Tensor, y: torch.Tensor, n_classes: int, folds: int = 5, seed: int = 0,
             penalties: Sequence[float] = PENALTIES, inner_folds: int = 3) -> dict:
    """Stratified ``folds``-fold accuracy of the probe; the penalty is chosen on each training
    fold by an inner cross-validation. Returns per-fold accuracies, their mean and std, and the
    penalties chosen."""
    fold = stratified_folds(y, folds, seed)
    accs, chosen = [], []
    for f in range(folds):
        tr, te = fold != f, fold == f
        p = choose_penalty(x[tr], y[tr], n_classes, penalties, inner_folds, seed + 1 + f)
        probe = LogisticProbe(p).fit(x[tr], y[tr], n_classes)
        accs.append(probe.accuracy(x[te], y[te]))
        chosen.append(p)
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)), "folds": accs, "penalties": chosen}


# -- the random copy ----------------------------------------------------------------------------------

def random_copy(model: ModelOrganism, calibration: torch.Tensor, seed: int = 0, passes: int = 2) -> ModelOrganism:
    """The same architecture with random weights, wrapped with the same normalization.

    Every module's ``reset_parameters`` (seeded), then every convolution and linear layer
    gets He-normal weights (std sqrt(2 / fan_in)) and zero biases, and batch norms their
    identity statistics. He init alone does not keep the signal's scale through a deep
    network with residual sums and ReLU6 (whose 6 clips large values), so each convolution
    is then rescaled, in forward order, so that its output has unit variance on
    ``calibration`` (images in [0, 1]), like LSUV (Mishkin & Matas 2016): one forward pass
    in which each convolution's hook rescales its weight and its output before the next
    layer sees it; ``passes`` such passes.
    """
    net = copy.deepcopy(model.network).float().cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in net.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    scales = {}

    def hook(module, _inputs, output):
        std = float(output.float().std())
        s = 1.0 / std if std > 1e-8 else 1.0
        module.weight.mul_(s)
        if module.bias is not None:
            module.bias.mul_(s)
        scales[module] = scales.get(module, 1.0) * s
        return output * s

    mean = model.mean.detach().cpu()
    std = model.std.detach().cpu()
    x = (calibration.float().cpu() - mean) / std
    handles = [c.register_forward_hook(hook) for c in convs]
    try:
        with torch.no_grad():
            for _ in range(passes):
                net(x)
    finally:
        for h in handles:
            h.remove()
    organism = ModelOrganism(net, f"{model.name} (random init, seed {seed})", model.input_size,
                             mean.flatten().tolist(), std.flatten().tolist(), labels=model.labels,
                             main_layers=model._main_layer_names, channels_last=model.channels_last)
    return organism.to(model.device)


# -- the report -----------------------------------------------------------------------------------------

DEMO_SIZE = 160
DEMO_PER_CLASS = 48


def default_layers(model: ModelOrganism, n: int = 8) -> list[str]:
    """``n`` layers evenly spaced along the model's main spatial layers, first and last included."""
    spatial = [info.name for info in model.layers() if info.spatial]
    if len(spatial) <= n:
        return spatial
    idx = sorted(set(int(round(i)) for i in np.linspace(0, len(spatial) - 1, n)))
    return [spatial[i] for i in idx]


def _depth_order(model: ModelOrganism, layers: Sequence[str]) -> list[str]:
    """Unique layers in forward order, ``pixels`` first; unknown names raise with suggestions."""
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise FeatvizError("give at least one layer")
    nets = [l for l in layers if l != PIXELS]
    order = {l: model.layer(l).order for l in nets}
    return ([PIXELS] if PIXELS in layers else []) + sorted(nets, key=order.__getitem__)


class _threads:
    """Run with ``n`` torch threads: the probe's small matrices are fastest (and least
    hurt by other jobs on the machine) on one thread."""

    def __init__(self, n: int):
        self.n, self.before = n, None

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def probe_channels(x: torch.Tensor, y: torch.Tensor, n_classes: int, penalty: float, k: int) -> list[int]:
    """The ``k`` channels the probe (fit on all of x, y) leans on most: largest norm of their
    standardised weights over the classes."""
    probe = LogisticProbe(penalty).fit(x, y, n_classes)
    return [int(i) for i in probe.weight.norm(dim=1).argsort(descending=True)[:k]]


def transfer_report(model, data_dir=None, out_dir="report-transfer", *, layers: Sequence[str] | None = None,
                    size: int | None = None, per_class: int | None = None, folds: int = 5, seed: int = 0,
                    pixels: bool = True, pictures: bool = True, units: int = 2, picture_size: int = 112,
                    picture_steps: int = 128, penalties: Sequence[float] = PENALTIES, inner_folds: int = 3,
                    log=None) -> dict:
    """Linear-probe accuracy along the depth, on a task ``model`` was not trained on, for the
    trained network and a randomly initialised copy (see the module docstring).

    data_dir: a folder with one sub-folder of images per class, or None for the offline demo
    task (``demo_shapes``, ``per_class`` images per class, default 48). size: image side fed
    to the networks (default 160 px for the demo, the model's input size for a folder).
    layers: default ``default_layers(model)``; ``pixels`` (added when ``pixels``) is the input
    average-pooled to 8 x 8. pictures: channel visualizations of the ``units`` channels per
    layer the probe leans on most, for both networks (``picture_size`` px, ``picture_steps``
    steps of the ``sharp`` recipe).

    Writes ``accuracy_by_depth.png``, ``data_samples.png``, ``depth_pictures.png`` (with
    ``pictures``), ``report.md`` and ``results.json`` under ``out_dir``; returns the results dict.
    """
    say = log or (lambda msg: None)
    if not isinstance(model, ModelOrganism):
        model = load(model)
    if folds < 2:
        raise FeatvizError(f"folds must be at least 2, got {folds}")
    if inner_folds < 2:
        raise FeatvizError(f"inner folds must be at least 2, got {inner_folds}")
    if per_class is not None and per_class < 1:
        raise FeatvizError(f"images per class must be at least 1, got {per_class}")
    if units < 1:
        raise FeatvizError(f"units per layer must be at least 1, got {units}")
    if not penalties:
        raise FeatvizError("give at least one penalty")
    size = int(size or (DEMO_SIZE if data_dir is None else model.input_size))
    if size < 32 or size > 1024:
        raise FeatvizError(f"size must be between 32 and 1024 px, got {size}")
    chosen = list(layers) if layers else default_layers(model)
    if pixels and PIXELS not in chosen:
        chosen = [PIXELS] + chosen
    layers = _depth_order(model, chosen)
    timing: dict[str, float] = {}
    t_start = t = time.perf_counter()

    # Data.
    if data_dir is None:
        n_per = per_class or DEMO_PER_CLASS
        if n_per < folds:
            raise FeatvizError(f"{folds}-fold cross-validation needs at least {folds} images per class, "
                               f"got {n_per}")
        data = demo_dataset(n_per, size, seed)
        per_class = n_per
    else:
        data = load_folder(model, data_dir, size, folds, per_class)
    n_classes = len(data.classes)
    counts = data.counts()
    chance = max(counts) / sum(counts)
    say(f"data: {len(data.labels)} images, {n_classes} classes ({data.source})")
    if data.skipped:
        say(f"skipped {len(data.skipped)} unreadable files")
    timing["data"] = time.perf_counter() - t

    # The random copy, calibrated on a seeded sample of the data.
    t = time.perf_counter()
    g = torch.Generator().manual_seed(int(seed))
    calib = data.images[torch.randperm(len(data.labels), generator=g)[:32]]
    rand = random_copy(model, calib, seed=seed)
    timing["random_init"] = time.perf_counter() - t

    # Features.
    t = time.perf_counter()
    feats = {"trained": pooled_features(model, data.images, layers),
             "random": pooled_features(rand, data.images, layers)}
    timing["features"] = time.perf_counter() - t
    say(f"features of {len(layers)} layers in {timing['features']:.1f} s")

    # Probes.
    t = time.perf_counter()
    rows = []
    with _threads(1):
        for depth, layer in enumerate(layers):
            row = {"layer": layer, "depth": depth}
            if layer == PIXELS:
                row.update(channels=3 * PIXEL_GRID * PIXEL_GRID, spatial=None, features="input pooled to 8x8")
            else:
                info = model.layer(layer)
                row.update(channels=info.channels, features="mean over positions",
                           spatial=[info.height, info.width] if info.spatial else None)
            row["trained"] = probe_cv(feats["trained"][layer], data.labels, n_classes, folds, seed, penalties,
                                      inner_folds)
            if layer == PIXELS:  # no network involved: one probe, no random counterpart
                row.update(random=None, gap=None, folds_trained_better=None)
            else:
                row["random"] = probe_cv(feats["random"][layer], data.labels, n_classes, folds, seed, penalties,
                                         inner_folds)
                row["gap"] = row["trained"]["accuracy"] - row["random"]["accuracy"]
                row["folds_trained_better"] = int(sum(a > b for a, b in zip(row["trained"]["folds"],
                                                                               row["random"]["folds"])))
            rows.append(row)
            say(row_line(row))
    timing["probes"] = time.perf_counter() - t

    out = out_folder(out_dir)
    results = {
        "report": "transfer",
        "settings": {"model": model.name, "data": data.source, "size": size, "per_class": per_class,
                     "layers": layers, "folds": folds, "inner_folds": inner_folds, "penalties": list(penalties),
                     "seed": seed, "pictures": pictures, "units_per_layer": units, "picture_size": picture_size,
                     "picture_steps": picture_steps, "random_init": "He-normal, zero biases, LSUV rescale of every "
                     "convolution to unit output variance on 32 images of the data (2 passes)", **environment()},
        "data": {"description": data.description, "classes": data.classes, "counts": counts,
                 "images": len(data.labels), "skipped": data.skipped or []},
        "chance": chance,
        "rows": rows,
        "summary": _summary(rows, chance),
    }

    # Pictures: the channels each probe leans on, along the depth.
    if pictures:
        t = time.perf_counter()
        results["pictures"] = _pictures(model, rand, feats, data, rows, units, picture_size, picture_steps, seed,
                                        out, say)
        timing["pictures"] = time.perf_counter() - t

    _samples_figure(data, out / "data_samples.png")
    _accuracy_figure(results, out / "accuracy_by_depth.png")
    timing["total"] = time.perf_counter() - t_start
    results["seconds"] = {k: round(v, 1) for k, v in timing.items()}
    write_json(out / "results.json", results)
    write_text(out / "report.md", _markdown(results, model, data_dir))
    return results


def row_line(row: dict) -> str:
    """One line of a row: layer, trained and random accuracy."""
    line = f"{row['layer']:12s} trained {_pm(row['trained'])}"
    return line + (f"   random {_pm(row['random'])}" if row["random"] else "   (no network)")


def _pictures(model, rand, feats, data, rows, k, size, steps, seed, out: Path, say) -> dict:
    from ..optvis.render import finished, render_units

    n_classes = len(data.classes)
    pics: dict[str, list[dict]] = {"trained": [], "random": []}
    tiles: dict[str, list] = {"trained": [], "random": []}
    for row in rows:
        layer = row["layer"]
        if layer == PIXELS:
            continue
        for net, organism in (("trained", model), ("random", rand)):
            # the penalty most often chosen by the cross-validation
            pens = row[net]["penalties"]
            penalty = max(set(pens), key=lambda p: (pens.count(p), p))
            with _threads(1):
                chans = probe_channels(feats[net][layer], data.labels, n_classes, penalty, k)
            res = finished(render_units(organism, [(layer, c) for c in chans], batch_size=len(chans), size=size,
                                        steps=steps, recipe="sharp", seed=seed))
            for c, r in zip(chans, res):
                tiles[net].append((layer, c, r.images[0]))
                pics[net].append({"layer": layer, "channel": c, "penalty": penalty,
                                  "final_objective": r.settings.get("final_objective")})
            say(f"{layer}: {net} channels {chans} rendered")
    _depth_figure(tiles, k, out / "depth_pictures.png", model.name)
    return {"recipe": "sharp", "size": size, "steps": steps, **pics}


def _summary(rows: list[dict], chance: float) -> dict:
    nets = [r for r in rows if r["layer"] != PIXELS]
    pix = next((r for r in rows if r["layer"] == PIXELS), None)
    out = {"chance": chance, "pixels": pix["trained"]["accuracy"] if pix else None}
    for net in ("trained", "random"):
        best = max(nets, key=lambda r: r[net]["accuracy"]) if nets else None
        out[net] = {"peak_layer": best["layer"] if best else None,
                    "peak_accuracy": best[net]["accuracy"] if best else None,
                    "peak_std": best[net]["std"] if best else None,
                    "last_layer_accuracy": nets[-1][net]["accuracy"] if nets else None}
    if nets:
        widest = max(nets, key=lambda r: r["gap"])
        out["largest_gap"] = {"layer": widest["layer"], "gap": widest["gap"]}
        out["gaps"] = {r["layer"]: r["gap"] for r in nets}
    return out


# -- figures ---------------------------------------------------------------------------------------------

def _accuracy_figure(results: dict, path: Path) -> None:
    plt = pyplot()
    rows = results["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.5, 0.8 * len(rows) + 2), 4.2))
    for net, colour, marker in (("trained", "#1f77b4", "o"), ("random", "#d62728", "s")):
        nets = [i for i, r in enumerate(rows) if r["layer"] != PIXELS]
        mean = [rows[i][net]["accuracy"] for i in nets]
        std = [rows[i][net]["std"] for i in nets]
        label = {"trained": f"trained ({results['settings']['model']})",
                 "random": "same architecture, random init"}[net]
        ax.errorbar(x[nets], mean, yerr=std, color=colour, marker=marker, capsize=3, label=label)
    pix = [i for i, r in enumerate(rows) if r["layer"] == PIXELS]
    if pix:
        r = rows[pix[0]]
        ax.errorbar([pix[0]], [r["trained"]["accuracy"]], yerr=[r["trained"]["std"]], color="#555555", marker="D",
                    capsize=3, linestyle="none", label="pixels (8x8 pooled input)")
    ax.axhline(results["chance"], color="k", linestyle="--", lw=1, label=f"chance ({results['chance']:.3f})")
    ax.set_xticks(x)
    ax.set_xticklabels([r["layer"] for r in rows], rotation=30, ha="right", fontsize=9)
    ax.set_xlabel("layer (input to output)")
    ax.set_ylabel(f"probe accuracy ({results['settings']['folds']}-fold CV, mean ± std)")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    n = results["data"]["images"]
    ax.set_title(f"Linear probe on pooled activations: {len(results['data']['classes'])} classes, {n} images",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _samples_figure(data: Dataset, path: Path, per_row: int = 4) -> None:
    plt = pyplot()
    n_classes = len(data.classes)
    cols = min(n_classes, 8)
    fig, axes = plt.subplots(per_row, cols, figsize=(1.6 * cols, 1.7 * per_row), squeeze=False)
    for c in range(cols):
        idx = torch.nonzero(data.labels == c).flatten()[:per_row]
        for r in range(per_row):
            ax = axes[r][c]
            ax.axis("off")
            if r < len(idx):
                ax.imshow(data.images[int(idx[r])].permute(1, 2, 0).numpy())
            if r == 0:
                ax.set_title(data.classes[c][:18], fontsize=9)
    more = f" (first {cols} of {n_classes} classes)" if cols < n_classes else ""
    fig.suptitle(f"Samples of the data{more}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _depth_figure(tiles: dict, k: int, path: Path, model_name: str) -> None:
    plt = pyplot()
    layers = list(dict.fromkeys(layer for layer, _c, _img in tiles["trained"]))
    n_rows = 2 * k
    fig, axes = plt.subplots(n_rows, len(layers), figsize=(1.45 * len(layers), 1.6 * n_rows), squeeze=False)
    for net_i, net in enumerate(("trained", "random")):
        by_layer: dict[str, list] = {}
        for layer, c, img in tiles[net]:
            by_layer.setdefault(layer, []).append((c, img))
        for j, layer in enumerate(layers):
            for i in range(k):
                ax = axes[net_i * k + i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                items = by_layer.get(layer, [])
                if i < len(items):
                    c, img = items[i]
                    ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
                    ax.set_xlabel(f"{c}", fontsize=7, labelpad=1)
                if net_i == 0 and i == 0:
                    ax.set_title(layer, fontsize=9)
                if j == 0:
                    ax.set_ylabel("trained" if net == "trained" else "random init", fontsize=9)
    fig.suptitle(f"{model_name}: the channels the probe leans on most, by depth (top: trained, bottom: "
                 "random init; channel index under each)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# -- report.md ---------------------------------------------------------------------------------------------------

def _pm(d: dict) -> str:
    return f"{d['accuracy']:.3f} ± {d['std']:.3f}"


def _reading(results: dict) -> str:
    """A short reading of the measured numbers (generated from them, not canned)."""
    rows = [r for r in results["rows"] if r["layer"] != PIXELS]
    if not rows:
        return "Only the pixels were probed."
    s = results["summary"]
    chance, folds = results["chance"], results["settings"]["folds"]
    tr, rn = s["trained"], s["random"]
    def at_chance(net):  # every layer within one fold std of chance
        return all(abs(r[net]["accuracy"] - chance) <= r[net]["std"] for r in rows)

    def peak(net, d):
        value = f"{d['peak_accuracy']:.3f} ± {d['peak_std']:.3f}"
        if at_chance(net):
            return f"stays within one fold std of chance at every layer (highest {d['peak_layer']}: {value})"
        layer = f"**{d['peak_layer']}**" if net == "trained" else d["peak_layer"]
        return f"peaks at {layer} ({value})"

    lines = [f"- Chance is {chance:.3f}. The probe on the trained network {peak('trained', tr)}; on the random "
             f"copy it {peak('random', rn)}."]
    if s["pixels"] is not None:
        pix = next(r for r in results["rows"] if r["layer"] == PIXELS)["trained"]
        lines.append(f"- Pixels (the input pooled to 8 x 8) give {_pm(pix)}.")
    gaps = ", ".join(f"{r['layer']} {r['gap']:+.3f} ({r['folds_trained_better']}/{folds})" for r in rows)
    lines.append(f"- What training adds (trained minus random accuracy; in brackets, the folds on which the "
                 f"trained network's probe scored higher): {gaps}.")

    def clear(r):  # above the random copy by more than both spreads
        return r["gap"] > r["trained"]["std"] + r["random"]["std"]
    first_clear = next((r["layer"] for r in rows if clear(r)), None)
    if first_clear is None:
        lines.append("- At no layer is the trained network ahead of the random copy by more than the two fold "
                     "spreads together: on this data, training did not make the pooled features more useful.")
    else:
        lines.append(f"- The trained network is ahead of the random copy by more than the two fold spreads "
                     f"together from **{first_clear}** on" +
                     ("" if all(clear(r) for r in rows[[x['layer'] for x in rows].index(first_clear):])
                      else " (not at every later layer)") + ".")
    early = rows[0]
    lines.append(f"- At the first probed layer ({early['layer']}) the gap is {early['gap']:+.3f}; at the widest "
                 f"({s['largest_gap']['layer']}) {s['largest_gap']['gap']:+.3f}.")
    peak_i = [r["layer"] for r in rows].index(tr["peak_layer"])
    last = rows[-1]
    if peak_i < len(rows) - 1:
        drop = tr["peak_accuracy"] - last["trained"]["accuracy"]
        if drop > tr["peak_std"] + last["trained"]["std"]:
            lines.append(f"- After its peak the trained probe falls to {last['trained']['accuracy']:.3f} at "
                         f"{last['layer']} (-{drop:.3f}, more than the fold spreads): the last layers are "
                         "more specific to the training task.")
        else:
            lines.append(f"- After its peak the trained probe stays within the fold spreads up to {last['layer']} "
                         f"({last['trained']['accuracy']:.3f}, -{drop:.3f}): no clear fall towards the output "
                         "on this task.")
    else:
        lines.append(f"- The trained probe is highest at the last probed layer ({last['layer']}).")
    return "\n".join(lines)


def _markdown(results: dict, model: ModelOrganism, data_dir) -> str:
    s = results["settings"]
    d = results["data"]
    rows = results["rows"]
    table = md_table(["layer", "features", "trained", "random init", "gap", "trained better (folds)",
                      "penalties (trained / random)"],
                     [[r["layer"], f"{r['channels']} ({r['features']})", _pm(r["trained"]),
                       _pm(r["random"]) if r["random"] else "-", f"{r['gap']:+.3f}" if r["random"] else "-",
                       f"{r['folds_trained_better']}/{s['folds']}" if r["random"] else "-",
                       " ".join(f"{p:g}" for p in r["trained"]["penalties"]) + " / " +
                       (" ".join(f"{p:g}" for p in r["random"]["penalties"]) if r["random"] else "-")]
                      for r in rows])
    skipped = ""
    if d["skipped"]:
        skipped = "\nSkipped (unreadable):\n\n" + "\n".join(f"- {x}" for x in d["skipped"]) + "\n"
    pictures = ""
    if "pictures" in results:
        p = results["pictures"]
        pictures = f"""
## Pictures along the depth

For each layer, the {s['units_per_layer']} channels with the largest probe weights (norm over the classes of
the standardised weights of a probe fit on all the data with the penalty the cross-validation chose most
often), rendered with the `sharp` recipe ({p['steps']} steps, {p['size']} px, seed {s['seed']}); top rows:
the trained network, bottom rows: the random copy.

![channels by depth](depth_pictures.png)
"""
    command = f"featviz report transfer {s['model']}" + (f" {data_dir}" if data_dir is not None else "")
    command += f" --size {s['size']} --folds {s['folds']} --seed {s['seed']}"
    if s["per_class"]:
        command += f" --per-class {s['per_class']}"
    if not s["pictures"]:
        command += " --no-pictures"
    secs = results["seconds"]
    return f"""# General to specific: linear probes along the depth

A linear probe (multinomial logistic regression) is fit on the spatially pooled activations of each layer
for a task {s['model']} was not trained on, and the same probe on a copy of the network with random weights.
Where the trained network's probe is far above the random one, training made the features more useful for
the new task; the pixels row shows what a probe gets from the raw input.

## Settings

| setting | value |
|---|---|
| model | {s['model']} |
| data | {d['description']} |
| classes (images) | {', '.join(f"{c} ({n})" for c, n in zip(d['classes'], d['counts']))} |
| image size | {s['size']} px |
| layers | {', '.join(s['layers'])} |
| features | mean over positions of each layer's output; `pixels`: the input average-pooled to 8 x 8 (192 values) |
| probe | multinomial logistic regression, L2 penalty on the weights, LBFGS; features standardised with the training fold's mean and std |
| penalty | chosen per training fold by {s['inner_folds']}-fold inner cross-validation from {', '.join(f'{p:g}' for p in s['penalties'])} (best held-out accuracy, ties: lower log loss) |
| evaluation | stratified {s['folds']}-fold cross-validation (seed {s['seed']}), accuracy mean ± std over the folds; both networks on the same folds |
| random copy | the same architecture and normalization; {s['random_init']}; seed {s['seed']} |
| chance | {results['chance']:.3f} (most frequent class) |
| featviz, torch, threads | {s['featviz']}, {s['torch']}, {s['threads']} (probes on 1 thread) |
| time | {secs.get('total')} s (data {secs.get('data')}, features {secs.get('features')}, probes {secs.get('probes')}, pictures {secs.get('pictures', '-')}) |
{skipped}
![data samples](data_samples.png)

## Accuracy by depth

![accuracy by depth](accuracy_by_depth.png)

{table}

## Reading

{_reading(results)}
{pictures}
Command: `{command}`
"""
