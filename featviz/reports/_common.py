"""Helpers shared by the reports: output folder, JSON, Markdown tables (figures: ``reports.figures``)."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..imageio import atomic_write, output_folder


def out_folder(out_dir) -> Path:
    return output_folder(out_dir)


def write_json(path: Path, data: Any) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
    return atomic_write(path, write)


def write_text(path: Path, text: str) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, write)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, size, size), antialiased bilinear (identity if already that size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v):
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def environment() -> dict:
    from ..optvis.render import version

    return {"featviz": version(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}
