"""Reading and writing images: clear errors, settings in PNG metadata, grids, GIFs."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import FeatvizError, ImageReadError

SETTINGS_KEY = "featviz"  # PNG text chunk that holds the JSON settings


# Pillow's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS, ~179 megapixels), kept even where a
# program has switched Pillow's check off: decoding more would need gigabytes of memory.
MAX_PIXELS = 2 * 89_478_485


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


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as featviz reads every photo: only its header is read, and a missing or
    unreadable file, anything but a regular file (``check_regular_file``) or an image of more than
    ``MAX_PIXELS`` (a decompression bomb) is an ``ImageReadError`` line. Use it as a context manager."""
    path = Path(path)
    check_regular_file(path)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"refusing to read image {path}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from None
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise ImageReadError(f"refusing to read image {path}: {img.width}x{img.height} pixels is more than "
                             f"{MAX_PIXELS} (a decompression bomb?)")
    return img


def image_batch(paths: Sequence[str | os.PathLike], size: int) -> torch.Tensor:
    """Image files read with ``open_image``'s rules as RGB, resized to ``size`` x ``size`` (bilinear), in
    [0, 1]: a (N, 3, size, size) batch. For files featviz wrote itself (the example store's media)."""
    batch = []
    for path in paths:
        with open_image(path) as img:
            pixels = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
        batch.append(torch.from_numpy(pixels).permute(2, 0, 1) / 255.0)
    return torch.stack(batch)


# 32-bit integer, float and 16-bit grey images: converting them to 8-bit RGB clips their values, so a
# model would see a white or black frame instead of the photo. One rule for every command that reads a photo
# (render's dream, attribute, blocks); the dataset-examples reader scales them to 8 bits before this check.
UNSUPPORTED_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def load_image(source) -> Image.Image:
    """Open a path or PIL image as RGB; any failure is an ``ImageReadError`` (see ``open_image``)."""
    if isinstance(source, Image.Image):
        img = source
    else:
        path = Path(source)
        img = open_image(path)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, MemoryError) as exc:
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


def to_tensor(picture: Image.Image) -> torch.Tensor:
    """PIL image -> (3, H, W) float tensor in [0, 1] (RGB), the inverse of ``to_pil``."""
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


STDOUT = "-"  # an output path that means: write to standard output


def writes_to_stdout(path: str | os.PathLike) -> bool:
    """True for '-' and for a path that names this process's standard output (/dev/stdout,
    /dev/fd/1...): a command then prints its messages on stderr, not among the file's bytes."""
    if os.fspath(path) == STDOUT:
        return True
    try:
        here, out = os.stat(path), os.fstat(1)
    except (OSError, ValueError):
        return False
    return (here.st_dev, here.st_ino) == (out.st_dev, out.st_ino)


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output(path: str | os.PathLike, probe: bool = True) -> str:
    """How featviz may write the file ``path``, or a one-line ``FeatvizError`` saying why not.

    The rule every file featviz writes goes through (``atomic_write``, the SQLite stores, the
    folder locks): featviz only ever *replaces* a regular file (or creates a missing one). What
    is not a regular file is never replaced: standard output ('-', /dev/stdout), a named pipe
    and the null device are written through, as a user who names them means; any other device,
    a folder or a socket is refused. A symbolic link is followed, never replaced.
    Returns 'replace' (a regular file, or none yet) or 'stream' (write through).
    probe: also try to create a file in the folder (read-only disks, /proc, permissions), so a
    command can check its output before a long computation rather than fail at the end.
    """
    text = os.fspath(path)
    if text == "":
        raise FeatvizError("the output path is empty; give a file name")
    if writes_to_stdout(text):
        return "stream"
    p = Path(text)
    try:
        st = os.stat(p)  # follows links: what a write would reach
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            raise FeatvizError(f"cannot write {p}: {exc.strerror or exc}") from None
        st = None  # explained below
    if st is not None:
        if stat.S_ISREG(st.st_mode):
            return "replace"
        if stat.S_ISFIFO(st.st_mode) or (stat.S_ISCHR(st.st_mode) and st.st_rdev == _null_device()):
            return "stream"
        raise FeatvizError(f"refusing to write {p}: it is {_kind_of(st.st_mode)}, not a regular file "
                           "(featviz only replaces regular files)")
    if p.name in ("", ".", ".."):
        raise FeatvizError(f"cannot write {p}: it names a folder, not a file")
    folder = Path(os.path.realpath(p)).parent
    existing = next((a for a in (folder, *folder.parents) if os.path.lexists(a)), None)
    if existing is not None and not existing.is_dir():
        raise FeatvizError(f"cannot write {p}: {existing} is a file, not a folder")
    try:
        name_max = os.pathconf(existing or ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.fsencode(p.name)) > name_max:
        raise FeatvizError(f"cannot write {p.name[:40]}...: the file name is {len(os.fsencode(p.name))} bytes long, "
                           f"this file system allows {name_max}")
    if probe and existing is not None:
        if existing == folder:
            try:
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".featviz-probe.")
            except OSError as exc:
                raise FeatvizError(f"cannot write {p}: cannot create a file in {folder} "
                                   f"({exc.strerror or exc})") from None
            os.close(fd)
            os.unlink(tmp)
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise FeatvizError(f"cannot write {p}: no permission to create folders in {existing}")
    return "replace"


def output_folder(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents) for a command's files, or one ``FeatvizError``
    line saying why it cannot be (empty name, a file in the way, no permission, /proc...)."""
    if os.fspath(path) == "":
        raise FeatvizError("the output folder is empty; give a folder name")
    folder = Path(path)
    if os.path.lexists(folder) and not folder.is_dir():
        raise FeatvizError(f"{folder} exists and is not a folder")
    check_output(folder / "file", probe=True)  # the rules of a file in it, before the folder exists
    make_folder(folder)
    check_output(folder / "file", probe=True)
    return folder


def make_folder(folder: Path) -> Path:
    """Create ``folder`` and its parents (fine if it exists), or one ``FeatvizError`` line saying why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatvizError(f"cannot create the folder {folder}: {exc.strerror or exc}") from None
    return folder


def _null_device() -> int:
    return os.stat(os.devnull).st_rdev


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see half a file.

    Only a regular file is ever replaced (``check_output``): a link is followed, standard
    output, a pipe or the null device are written through, anything else is refused. Any
    failure is one ``FeatvizError`` line and leaves what was at ``path`` as it was.
    """
    how = check_output(path, probe=False)
    if how == "stream":
        _write_through(path, write)
        return Path(path)
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:200]}.", suffix=target.suffix or ".tmp")
        os.close(fd)
        write(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have, so a
        # site or report can be served by a web server running as another user.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FeatvizError):
            raise FeatvizError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def _write_through(path, write) -> None:
    """Write into what is at ``path`` (stdout, a pipe, the null device) without replacing it."""
    fd, tmp = tempfile.mkstemp(prefix=".featviz-out.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as src:
            if os.fspath(path) == STDOUT:
                out = getattr(sys.stdout, "buffer", None) or sys.stdout
                shutil.copyfileobj(src, out)
                out.flush()
                return
            try:
                # Non-blocking open: a pipe nobody reads is an error now, not a hang.
                dst_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                reason = "nothing reads from the pipe" if exc.errno == errno.ENXIO else exc.strerror or exc
                raise FeatvizError(f"cannot write {path}: {reason}") from None
            os.set_blocking(dst_fd, True)
            with open(dst_fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
    except OSError as exc:
        if isinstance(exc, FeatvizError):
            raise
        raise FeatvizError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


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
