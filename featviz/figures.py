"""Figures without pyplot: every report (and ``featviz evolve``) draws on a ``matplotlib.figure.Figure``.

No global backend is chosen or switched, so a notebook user's backend stays as it
was, and no figure stays registered in pyplot's state after it is saved.
"""
from __future__ import annotations

from pathlib import Path

from .errors import FeatvizError
from .imageio import atomic_write


def new_figure(figsize: tuple[float, float]):
    """A ``matplotlib.figure.Figure`` of ``figsize`` inches, drawn without pyplot: no global backend
    is chosen or switched (a notebook keeps its own), and nothing stays registered after saving."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FeatvizError("the reports draw their figures with matplotlib, which is not installed: "
                           "pip install 'featviz[reports]'") from None
    return Figure(figsize=figsize)


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as PNG (atomically); a ``Figure`` renders itself with the Agg canvas."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    return path
