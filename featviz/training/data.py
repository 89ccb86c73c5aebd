"""The data of a fine-tuning run: a training set of ``per_class`` images per class and a held-out set.

From a folder (one sub-folder per class) the held-out images are drawn first,
per class and seeded, so they never depend on ``per_class``; the training
images are the first ``per_class`` of the rest in a seeded order. Without a
folder, the offline demo task (shapes on textures, ``featviz.data``) is
generated: the held-out images from one seed stream, the training images from
another, so runs at different budgets share the held-out set.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import SHAPES, Dataset, check_memory, demo_dataset, load_class_folder
from ..errors import FeatvizError

DEMO_PER_CLASS = 20   # training images per class of the demo task when not given
DEMO_SIZE = 96        # px: the demo task at a size a CPU trains in minutes


@dataclass
class Split:
    """Training and held-out images (in [0, 1]) with their labels and class names."""

    train: Dataset
    heldout: Dataset
    classes: list[str]
    description: str
    skipped: list[str]


def _subset(data: Dataset, index: np.ndarray, what: str) -> Dataset:
    idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
    files = [data.files[i] for i in index] if data.files else None
    return Dataset(data.images[idx], data.labels[idx], data.classes, f"{what} of {data.description}", data.source,
                   files)


def folder_split(data_dir, preprocess, size: int, per_class: int | None, holdout: int, seed: int) -> Split:
    """Read ``data_dir`` (corrupt images skipped and listed; an empty class or fewer than two
    classes: one line) and split it: ``holdout`` held-out images per class (at most half of a
    class), then up to ``per_class`` training images per class from the rest."""
    data = load_class_folder(data_dir, preprocess, size)
    if data.empty:
        raise FeatvizError(f"class folder{'s' if len(data.empty) > 1 else ''} without a readable image in "
                           f"{data_dir}: {', '.join(data.empty)} (every class needs images)")
    rng = np.random.default_rng([int(seed), 23])
    labels = data.labels.numpy()
    train_idx, held_idx = [], []
    for c, name in enumerate(data.classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < 2:
            raise FeatvizError(f"class {name!r} has {len(members)} readable image; fine-tuning needs at least 2 "
                               "per class (one to train on, one held out)")
        n_held = max(1, min(holdout, len(members) // 2))
        held_idx.extend(members[:n_held])
        rest = members[n_held:]
        train_idx.extend(rest if per_class is None else rest[:per_class])
    train = _subset(data, np.sort(train_idx), "training images")
    heldout = _subset(data, np.sort(held_idx), "held-out images")
    return Split(train, heldout, data.classes, data.description, data.skipped or [])


def demo_split(per_class: int | None, holdout: int, size: int, seed: int) -> Split:
    """The offline demo task: ``per_class`` training and ``holdout`` held-out images per class."""
    per_class = DEMO_PER_CLASS if per_class is None else per_class
    check_memory((per_class + holdout) * len(SHAPES), size, "the demo task")
    train = demo_dataset(per_class, size, seed)
    heldout = demo_dataset(holdout, size, seed + 1_000_003)  # another stream: never the training images
    return Split(train, heldout, train.classes, train.description, [])


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 1/8 of the side (reflect padding), drawn from
    ``generator`` so a resumed run draws the same ones."""
    n, _c, h, w = images.shape
    pad = max(1, h // 8)
    flips = torch.rand(n, generator=generator) < 0.5
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    padded = F.pad(images, [pad, pad, pad, pad], mode="reflect")
    out = torch.empty_like(images)
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        crop = padded[i, :, dy:dy + h, dx:dx + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out
