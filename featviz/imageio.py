"""Reading and writing images: clear errors, settings in PNG metadata, grids, GIFs."""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import FeatvizError, ImageReadError

SETTINGS_KEY = "featviz"  # PNG text chunk that holds the JSON settings


def check_regular_file(path) -> None:
    """Raise ``ImageReadError`` unless ``path`` is a regular file (after links): a FIFO, socket or
    device named ``*.jpg`` is never opened (opening a FIFO waits for a writer forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageReadError(f"image not found: {path}") from None
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a special file")
        raise ImageReadError(f"not a regular file ({kind}): {path}")


# 32-bit integer, float and 16-bit grey images: converting them to 8-bit RGB clips their values, so a
# model would see a white or black frame instead of the photo. One rule for every command that reads a photo
# (render's dream, attribute, blocks); the dataset-examples reader scales them to 8 bits before this check.
UNSUPPORTED_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def load_image(source) -> Image.Image:
    """Open a path or PIL image as RGB; any failure is an ``ImageReadError``."""
    if isinstance(source, Image.Image):
        img = source
    else:
        path = Path(source)
        check_regular_file(path)
        try:
            img = Image.open(path)
            img.load()
        except FileNotFoundError:
            raise ImageReadError(f"image not found: {path}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(f"cannot read image {path}: {exc}") from None
    if img.mode in UNSUPPORTED_MODES:
        name = "the image" if isinstance(source, Image.Image) else str(source)
        raise ImageReadError(f"unsupported image mode {img.mode!r} in {name}: featviz reads 8-bit photos "
                             f"(RGB, grey, palette, CMYK); convert it to 8-bit RGB first")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        # Composite transparency on white rather than on the undefined RGB under alpha.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    try:
        img = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageReadError(f"unsupported image mode {img.mode!r} in {source}: {exc}") from None
    if min(img.size) < 1:
        raise ImageReadError(f"empty image: {source}")
    return img


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """(C, H, W) tensor or (H, W, C) array in [0, 1] -> PIL (RGB or RGBA)."""
    if isinstance(image, torch.Tensor):
        arr = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    else:
        arr = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    arr = (arr * 255 + 0.5).astype(np.uint8)
    mode = {3: "RGB", 4: "RGBA", 1: "L"}[arr.shape[-1]]
    return Image.fromarray(arr.squeeze(-1) if mode == "L" else arr, mode)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have, so a
        # site or report can be served by a web server running as another user.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


# What featviz writes, by file extension; every one keeps the settings (PNG in a text chunk, the
# others in the EXIF ImageDescription tag). No extension means PNG.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
_EXIF_DESCRIPTION = 0x010E


def image_format(path) -> str:
    """The PIL format a file name asks for, or one line refusing an extension featviz does not write."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "PNG"
    if suffix not in IMAGE_FORMATS:
        raise FeatvizError(f"cannot write {suffix!r} images ({path}): featviz writes "
                           f"{', '.join(IMAGE_FORMATS)} (each keeps the settings the image was made with)")
    return IMAGE_FORMATS[suffix]


def save_image(image, path, settings: dict[str, Any] | None = None) -> Path:
    """Save an image in the format its extension names (``IMAGE_FORMATS``), with ``settings`` as JSON in its
    metadata (PNG: text chunk 'featviz'; JPEG, WebP, TIFF: EXIF ImageDescription)."""
    img = image if isinstance(image, Image.Image) else to_pil(image)
    fmt = image_format(path)
    text = json.dumps(settings, sort_keys=True, default=str) if settings is not None else None
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        if text is not None:
            info.add_text(SETTINGS_KEY, text)
        return atomic_write(path, lambda tmp: img.save(tmp, format="PNG", pnginfo=info))
    if fmt == "JPEG" and img.mode != "RGB":  # JPEG has no alpha: composite on white, as photos are read
        img = load_image(img)
    exif = Image.Exif()
    if text is not None:
        exif[_EXIF_DESCRIPTION] = text
    return atomic_write(path, lambda tmp: img.save(tmp, format=fmt, exif=exif))


def save_png(image, path, settings: dict[str, Any] | None = None) -> Path:
    """Save with ``settings`` in the metadata: PNG, or the format the extension names (see ``save_image``)."""
    return save_image(image, path, settings)


def read_settings(path) -> dict[str, Any] | None:
    """The settings a featviz image was made with, or None."""
    with Image.open(path) as img:
        text = img.text.get(SETTINGS_KEY) if hasattr(img, "text") else None
        if text is None and img.format != "PNG":
            text = img.getexif().get(_EXIF_DESCRIPTION)
    return json.loads(text) if text else None


def grid(images: Sequence[Image.Image], columns: int | None = None, pad: int = 2,
         labels: Sequence[str] | None = None, background=(255, 255, 255)) -> Image.Image:
    """A contact sheet: images in rows, optional small caption under each."""
    if not images:
        raise ValueError("grid() needs at least one image")
    n = len(images)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    caption_h = 12 if labels else 0
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad + caption_h) + pad), background)
    draw = None
    if labels:
        from PIL import ImageDraw

        draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        x, y = pad + c * (w + pad), pad + r * (h + pad + caption_h)
        if im.mode == "RGBA":
            sheet.paste(im.convert("RGB"), (x, y), im.split()[-1])
        else:
            sheet.paste(im.convert("RGB"), (x, y))
        if draw is not None and i < len(labels):
            draw.text((x + 1, y + h), str(labels[i])[: max(4, w // 6)], fill=(0, 0, 0))
    return sheet


def save_gif(frames: Sequence[Image.Image], path, duration_ms: int = 80, settings: dict | None = None) -> Path:
    """An animated GIF of the optimization (one frame per snapshot)."""
    if not frames:
        raise ValueError("no frames to write")
    frames = [f.convert("RGB") for f in frames]
    comment = json.dumps(settings, sort_keys=True, default=str).encode() if settings else b""

    def write(tmp):
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms,
                       loop=0, comment=comment)

    return atomic_write(path, write)
