"""Finding and reading photos: the file list of a data set, robust decoding, the demo set.

The file list is the identity of a data set: every image is named by its path
relative to the data folder (POSIX separators), and the list is sorted by that
name. Positions in the sorted list are the image indices used for tie-breaks,
so shards of a folder (every N-th file) keep the relative order of the whole.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

from ..errors import FeatvizError, ImageReadError
from ..imageio import check_regular_file, load_image, open_image

# The one list of photo file names featviz reads (any case): the examples pass, the microscope's
# --data and the transfer report's folders all go through ``list_images``.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def list_images(root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> list[tuple[str, int]]:
    """All photos under ``root`` (recursively) as sorted (relative POSIX path, size in bytes).

    Hidden files and folders (name starting with '.') are skipped, and so are
    the folders in ``exclude`` (e.g. a store written inside the data folder).
    Special files with a photo's name (a FIFO, socket or device called ``x.jpg``)
    stay in the list, which is the data set's identity, but ``read_photo``
    refuses them without opening them, so a pass lists them as skipped.
    """
    root = Path(root)
    if not root.exists():
        raise FeatvizError(f"data folder not found: {root}")
    if not root.is_dir():
        raise FeatvizError(f"not a folder: {root} (give a folder of photos)")
    excluded = {os.path.realpath(p) for p in exclude}
    found: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")
                       and os.path.realpath(os.path.join(dirpath, d)) not in excluded]
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(EXTENSIONS):
                continue
            full = os.path.join(dirpath, name)
            try:
                size = os.path.getsize(full)
            except OSError:  # a dangling link: keep it, it is reported as unreadable
                size = -1
            found.append((Path(os.path.relpath(full, root)).as_posix(), size))
    found.sort()
    return found


def files_hash(files: Iterable[tuple]) -> str:
    """A fingerprint of a file list (tuples such as (path, size)): detects a folder that changed."""
    h = hashlib.sha256()
    for entry in files:
        h.update(("\t".join(str(f) for f in entry) + "\n").encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def read_photo(path: str | os.PathLike) -> Image.Image:
    """Open any photo as an upright RGB PIL image, or raise ``ImageReadError``.

    Beyond ``featviz.imageio.load_image`` (alpha composited on white, palette,
    CMYK...) this applies the EXIF orientation and scales 16-bit and float
    grayscale images to 8 bits.
    """
    check_regular_file(path)
    try:
        with open_image(path) as img:
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # broken EXIF: keep the pixels as stored
                pass
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
                arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                img = Image.fromarray(arr, "L")
            return load_image(img)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"image not found: {path}") from None
    except Exception as exc:  # PIL raises many kinds (decompression bomb, truncated, syntax...)
        raise ImageReadError(f"cannot read image: {exc.__class__.__name__}: {exc}") from None


# -- demo set -------------------------------------------------------------------------------------
# Photographs shipped inside scikit-image (no download): name -> loader name in skimage.data.
DEMO_PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "grass",
               "gravel", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon",
               "motorcycle_left", "page", "retina", "rocket", "text")


def _demo_array(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def demo_dir(cache: str | os.PathLike | None = None) -> Path:
    """A folder with the photos that ship with scikit-image, written as PNG on first use.

    Default place: ``$FEATVIZ_CACHE`` or ``~/.cache/featviz``, subfolder ``demo-photos``.
    Works offline; every file is written atomically.
    """
    from ..imageio import atomic_write

    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    base = Path(cache or os.environ.get("FEATVIZ_CACHE") or xdg / "featviz")
    folder = base / "demo-photos"
    for name in DEMO_PHOTOS:
        target = folder / f"{name}.png"
        if target.exists():
            continue
        try:
            arr = _demo_array(name)
        except Exception:  # a photo missing from this scikit-image version: skip it
            continue
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64) / max(float(arr.max()), 1e-12), 0, 1) * 255 + 0.5).astype(np.uint8)
        img = Image.fromarray(arr[..., :3] if arr.ndim == 3 else arr)
        atomic_write(target, lambda tmp, img=img: img.save(tmp, format="PNG", compress_level=1))
    if not any(folder.glob("*.png")):
        raise FeatvizError("could not build the demo photo set from scikit-image; give a folder of photos")
    return folder
