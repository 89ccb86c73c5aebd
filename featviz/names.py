"""The one rule that turns a model, layer or unit name into a file or URL name.

Every place that names a file or folder after a model, a layer or a unit (the microscope's site,
``featviz evolve``'s filmstrips, ``featviz render-layer``'s single images) goes through ``slug``, so
one name always gives one path, and a site built today keeps its paths.
"""
from __future__ import annotations

import re
from typing import Collection

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def slug(name: object, reserved: Collection[str] = ()) -> str:
    """A file-system- and URL-safe name for ``name``: stable and readable.

    Every character but letters, digits, '.', '_' and '-' becomes '_'; leading and trailing dots go
    (no hidden files, no '..'); an empty result is '_'. A result that starts with '_', or that is one
    of ``reserved`` (as it is or lower-cased), gets an 'x' in front: names starting with '_' and the
    reserved ones stay free for the folder's own entries (the microscope's ``_examples``, ``static``).
    """
    safe = _UNSAFE.sub("_", str(name)).strip(".") or "_"
    if safe.startswith("_") or safe in reserved or safe.lower() in reserved:
        safe = "x" + safe
    return safe
