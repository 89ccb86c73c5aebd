"""Errors that featviz raises for bad input.

Every error a user can cause by a wrong argument derives from ``FeatvizError``;
the CLI prints its message as one line and exits non-zero instead of showing a
traceback.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class FeatvizError(Exception):
    """Base class of user-facing errors (bad model, layer, index, image...)."""


class UnknownModelError(FeatvizError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class UnknownLayerError(FeatvizError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


class IndexOutOfRangeError(FeatvizError, IndexError):
    pass


class ImageReadError(FeatvizError, OSError):
    pass


class NonFiniteLossError(FeatvizError, FloatingPointError):
    pass


def suggest(name: str, known: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the names nearest to ``name`` (or '')."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=n, cutoff=0.5)
    if not close:
        # Prefix matches help for dotted names such as 'blocks.1' vs 'blocks.10'.
        close = [k for k in known if k.startswith(name) or name.startswith(k)][:n]
    return f" Did you mean: {', '.join(close)}?" if close else ""
