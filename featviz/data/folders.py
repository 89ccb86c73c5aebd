"""A labelled image data set held in memory, read from a folder of class folders.

``DATA_DIR/<class>/**/<image>``: one sub-folder per class (hidden ones ignored),
images found with the project's one lister (``featviz.examples.list_images``)
and decoded with its robust reader (``read_photo``). Unreadable files are
skipped and listed, never fatal; a class folder without a readable image is
listed in ``Dataset.empty`` so each caller decides (the transfer report leaves
it out, fine-tuning refuses it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import FeatvizError, ImageReadError
from ..optvis.memory import available_bytes

# Bytes of one float32 RGB image of side s: 3 * s * s * 4. Refuse a folder whose images
# would take more than this share of the memory that is free now.
MEMORY_SHARE = 0.5


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
    empty: list[str] = field(default_factory=list)  # class folders without one readable image

    def counts(self) -> list[int]:
        return [int((self.labels == c).sum()) for c in range(len(self.classes))]


def check_memory(n_images: int, size: int, what: str) -> None:
    """Refuse, with one line, to hold ``n_images`` images of ``size`` px in memory when they would
    take more than half of the memory free now (the project's one rule for what is free:
    ``featviz.optvis.memory.available_bytes``)."""
    need = n_images * 3 * size * size * 4
    free = available_bytes(torch.device("cpu"))
    if free is not None and need > MEMORY_SHARE * free:
        raise FeatvizError(f"{what}: {n_images} images at {size} px need {need / 2**30:.1f} GiB in memory, "
                           f"more than half of the {free / 2**30:.1f} GiB free; use fewer images per class "
                           "or a smaller size")


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root`` in name order (hidden ones ignored); one clear line when
    ``root`` is not a folder."""
    if not root.is_dir():
        raise FeatvizError(f"data folder not found: {root} (it should hold one sub-folder of images per class)")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_class_folder(data_dir, preprocess: Callable, size: int, per_class: int | None = None) -> Dataset:
    """Images of ``data_dir/<class>/**`` through ``preprocess(PIL image, size)`` (e.g.
    ``ModelOrganism.preprocess``: short side resized, centre crop to ``size``). With
    ``per_class``, at most that many images per class (the first in name order). Raises one
    line when fewer than two classes have images."""
    from ..examples import list_images, read_photo

    root = Path(data_dir)
    folders = class_folders(root)
    listed = {d.name: list_images(d) for d in folders}
    n_wanted = sum(len(v) if per_class is None else min(per_class, len(v)) for v in listed.values())
    check_memory(n_wanted, size, f"the folder {root}")
    images, labels, files, skipped, classes, empty = [], [], [], [], [], []
    for d in folders:
        got = 0
        for rel, _size in listed[d.name]:
            if per_class is not None and got >= per_class:
                break
            path = d / rel
            try:
                images.append(preprocess(read_photo(path), size))
            except ImageReadError as exc:
                skipped.append(f"{path.relative_to(root).as_posix()}: {exc}")
                continue
            labels.append(len(classes))
            files.append(path.relative_to(root).as_posix())
            got += 1
        if got:
            classes.append(d.name)
        else:
            empty.append(d.name)
            skipped.append(f"{d.name}/: no readable images (class left out)")
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise FeatvizError(f"{root} needs at least 2 class sub-folders with images, found {len(classes)} "
                           f"({found})")
    return Dataset(torch.stack(images), torch.tensor(labels), classes,
                   f"the folder {root}: {len(classes)} classes (sub-folders), {len(images)} images, "
                   f"centre-cropped to {size} px", str(root), files, skipped, empty)
