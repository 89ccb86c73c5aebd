"""The examples pass: stream a folder of photos through the network once.

``collect(model, data, layers, k)`` walks the folder in sorted order, decodes
batches on a thread pool while the network runs the previous batch, and keeps
per unit of every chosen layer the top-k and bottom-k images by mean
activation and the top-k by maximum activation with its position. Memory is
units x k, whatever the number of images.

Exactness: image ``i`` (its position in the sorted file list) always goes in
row ``i % B`` of batch ``i // B``, batches always have ``B`` rows (rows of
unreadable files and past the end are blank, and their outputs dropped), and
the per-image statistics are computed on the whole batch before rows are
taken. Kernels may round differently for another batch size or row, but an
uninterrupted run, a resumed run and a shard (which takes whole batches) then
compute every image exactly alike; with the tie-break by image index they
give the same result bit for bit.

Resumability: every ``checkpoint_every`` seconds (and when interrupted with
Ctrl-C or an error) the rankings and the number of files done go into the
store in one SQLite transaction. Rerunning with the same settings continues
after the last checkpoint; after a kill -9 at any point the result is the same
as without it. Crops are written aside and moved in before the transaction
that marks the store complete.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import torch

from .._storage import LOCK, FolderLock
from ..errors import FeatvizError, ImageReadError
from .files import EXTENSIONS, demo_dir, files_hash, list_images, read_photo
from .receptive import METHOD as RF_METHOD
from .receptive import receptive_field
from .store import DB_NAME, FORMAT, MEDIA, PARTIAL_MEDIA, ExampleStore, LayerRecord, example_rows, image_file
from .topk import LayerState

DEFAULT_BATCH = 32
CROP_SIZE = 112  # display size of a crop (pixels, square, letterboxed)
JPEG_QUALITY = 90


def default_layers(model, n: int = 4) -> list[str]:
    """``n`` spatial main layers at 1/n, 2/n ... of the depth (lite0: blocks.2, blocks.7, blocks.12, head)."""
    spatial = [info.name for info in model.layers() if info.spatial]
    if len(spatial) <= n:
        return spatial
    return list(dict.fromkeys(spatial[max(0, round(len(spatial) * i / n) - 1)] for i in range(1, n + 1)))


def parse_layers(model, layers) -> list[str]:
    """'a,b' or a list -> checked list of layer names (unknown names raise with suggestions)."""
    if layers is None:
        return default_layers(model)
    if isinstance(layers, str):
        layers = layers.split(",")
    names = list(dict.fromkeys(str(name).strip() for name in layers if str(name).strip()))
    if not names:
        raise FeatvizError("no layers given; 'featviz layers MODEL' lists them")
    for name in names:
        model.layer(name)
    return names


def parse_shard(shard) -> tuple[int, int] | None:
    """'I/N' or (I, N) -> (I, N): batches I, I+N, I+2N... of the sorted file list."""
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            i, n = (int(p) for p in shard.split("/"))
        except ValueError:
            raise FeatvizError(f"a shard is written I/N, e.g. 0/4, got {shard!r}") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise FeatvizError(f"shard {i}/{n}: need N >= 1 and 0 <= I < N")
    return int(i), int(n)


def collect(model, data=None, layers=None, k: int = 10, *, bottom: int | None = None, store=None,
            batch_size: int | None = None, size: int | None = None, shard=None, overwrite: bool = False,
            workers: int | None = None, checkpoint_every: float = 30.0, checkpoint_batches: int | None = None,
            crop_size: int = CROP_SIZE, progress: bool = False, device=None, log: Callable[[str], None] | None = None,
            engine=None) -> ExampleStore:
    """Dataset examples of every unit of ``layers`` over the photos under ``data``.

    model: a ModelOrganism or a model name. data: a folder (searched
    recursively for .jpg/.jpeg/.png/.webp); None uses the scikit-image demo
    photos. layers: names (list or 'a,b'); None picks a few main layers.
    k: top-k (by mean and by max); bottom: bottom-k by mean (default k).
    store: the store folder (default: a new temporary folder). If it holds an
    unfinished store made with the same settings, the run continues from its
    last checkpoint; a complete one is returned as is; one made with other
    settings is refused unless ``overwrite``.
    batch_size: fixed batch size (default 32, or the store's when continuing).
    size: input size (default the model's). shard: 'I/N' covers batches I,
    I+N, I+2N... of the whole folder (batches of ``batch_size`` files in
    sorted order); ``merge`` the N stores for the store of the whole.
    engine: a distributed engine (``featviz.engine.get_engine("ray")``) splits
    the folder into one shard per worker, runs them there and merges them here;
    the store equals this process's, exactly.
    Returns the (complete) ``ExampleStore``.
    """
    from ..models import ModelOrganism, load

    say = log or (lambda msg: None)
    if not isinstance(model, ModelOrganism):
        model = load(model, device=device)
    elif device is not None:
        model = model.to(device)
    top = int(k)
    bottom = top if bottom is None else int(bottom)
    if top < 1:
        raise FeatvizError(f"top k must be at least 1, got {top}")
    if bottom < 0:
        raise FeatvizError(f"bottom k cannot be negative, got {bottom}")
    layers = parse_layers(model, layers)
    size = int(size or model.input_size)
    if size < 16:
        raise FeatvizError(f"input size {size} is too small")
    shard = parse_shard(shard)
    root = Path(data) if data is not None else demo_dir()
    store_path = Path(store) if store is not None else Path(tempfile.mkdtemp(prefix="featviz-examples-"))
    files = list_images(root, exclude=[store_path])
    if not files:
        raise FeatvizError(f"no images ({', '.join(EXTENSIONS)}) found under {root}")
    if batch_size is None:
        batch_size = _stored_batch_size(store_path) or DEFAULT_BATCH
    batch_size = int(batch_size)
    if batch_size < 1:
        raise FeatvizError(f"batch size must be at least 1, got {batch_size}")
    # Image ids are positions in the sorted list of the whole folder; batch j holds ids
    # j*B .. j*B+B-1, image i always in row i % B. A shard I/N takes batches I, I+N, ...
    ids = list(range(len(files)))
    if shard is not None:
        ids = [i for i in ids if (i // batch_size) % shard[1] == shard[0]]
        if not ids:
            n_batches = -(-len(files) // batch_size)
            raise FeatvizError(f"shard {shard[0]}/{shard[1]} is empty: the {len(files)} files under {root} make "
                               f"only {n_batches} batches of {batch_size}")
    held = [(i, *files[i]) for i in ids]  # (id, relative path, bytes)
    settings = {"format": FORMAT, "model": model.name, "weights": model.weights_digest(), "layers": layers,
                "top": top, "bottom": bottom, "size": size, "batch_size": batch_size,
                "dataset": files_hash(files), "files": files_hash(held), "n_files": len(held)}
    run = {"data_root": str(root.resolve()), "shard": f"{shard[0]}/{shard[1]}" if shard else None,
           "rf_method": RF_METHOD, "crop_size": crop_size, "torch": torch.__version__}

    _check_target(store_path)
    if getattr(engine, "distributed", False):
        if shard is not None:
            raise FeatvizError("a shard (--shard) cannot be split again over an engine; give one or the other")
        from .sharded import collect_sharded

        return collect_sharded(engine, model, data, root, files, layers, top, bottom, size, batch_size, settings,
                               store_path, overwrite, crop_size, say)
    lock = _store_lock(store_path)
    try:
        return _collect(model, root, files, ids, held, layers, top, bottom, size, batch_size, settings, run,
                        store_path, overwrite, workers, checkpoint_every, checkpoint_batches, crop_size, progress,
                        say)
    finally:
        lock.close()


def _collect(model, root, files, ids, held, layers, top, bottom, size, batch_size, settings, run, store_path,
             overwrite, workers, checkpoint_every, checkpoint_batches, crop_size, progress, say) -> ExampleStore:
    st = _open_or_create(store_path, settings, run, held, model, layers, size, overwrite, say)
    if st.complete:
        say(f"store {store_path} is already complete")
        return st
    records = {name: st.layer(name) for name in layers}
    dev = model.device
    states = st._load_checkpoint(dev)
    start = st.files_done
    if states is None or start == 0:
        states = {name: LayerState.empty(records[name].channels, top, bottom, dev) for name in layers}
        start = 0
    else:
        say(f"continuing {store_path} from file {start} of {len(held)}")
    timings = dict(st.run.get("timings", {}))
    batches = _batches(ids, batch_size)
    done_before, first_batch = 0, 0
    while done_before < start:  # checkpoints are always at batch boundaries
        done_before += len(batches[first_batch])
        first_batch += 1
    if done_before != start:
        raise FeatvizError(f"the checkpoint of {store_path} does not fall on a batch boundary; "
                           "pass --overwrite to start it over")

    t0 = time.perf_counter()
    skipped: list[tuple[int, str]] = []
    snap = (start, states, 0)  # consistent (files done, rankings, skips): one assignment per batch
    saved = start
    last_save, n_batches = time.monotonic(), 0
    workers = workers or min(4, os.cpu_count() or 1)
    bar = _progress(progress, len(held), start)
    stream = _prefetch(batches[first_batch:], files, root, model, size, workers)
    try:
        for batch_ids, items in stream:
            ok_ids, slots = [], []
            x = None
            for i, (tensor, reason) in zip(batch_ids, items):
                if tensor is None:
                    skipped.append((i, reason))
                    continue
                if x is None:
                    x = tensor.new_zeros((batch_size,) + tuple(tensor.shape))
                x[i % batch_size] = tensor
                ok_ids.append(i)
                slots.append(i % batch_size)
            states = snap[1]
            if ok_ids:
                index = torch.tensor(ok_ids, dtype=torch.int64, device=dev)
                rows = torch.tensor(slots, dtype=torch.int64, device=dev)
                with torch.inference_mode():
                    acts = model.activations(x.to(dev), layers)
                    states = {name: states[name].update(acts[name], index, rows) for name in layers}
            snap = (snap[0] + len(items), states, len(skipped))
            n_batches += 1
            if bar is not None:
                bar.update(len(items))
            if (checkpoint_batches and n_batches % checkpoint_batches == 0) or \
                    (not checkpoint_batches and time.monotonic() - last_save >= checkpoint_every):
                st._save_checkpoint(snap[0], snap[1], skipped[:snap[2]])
                saved, last_save = snap[0], time.monotonic()
    except BaseException:
        if snap[0] > saved:  # keep what is done (Ctrl-C, an error in a later batch...)
            try:
                st._save_checkpoint(snap[0], snap[1], skipped[:snap[2]])
            except BaseException:
                pass
        st.close()
        raise
    finally:
        stream.close()
        if bar is not None:
            bar.close()
    done, states, n_skip = snap
    if done > saved:
        st._save_checkpoint(done, states, skipped[:n_skip])
    pass_s = time.perf_counter() - t0
    if start < len(held):
        timings["pass_s"] = pass_s
        timings["pass_images"] = len(held) - start

    all_skipped = st.skipped()
    if len(all_skipped) == len(held):
        examples = "; ".join(f"{p}: {r}" for p, r in all_skipped[:3])
        raise FeatvizError(f"none of the {len(held)} image files under {root} could be read ({examples})")

    t1 = time.perf_counter()
    rows = example_rows(states, records)
    partial = store_path / PARTIAL_MEDIA
    shutil.rmtree(partial, ignore_errors=True)
    _write_media(rows, files, root, model, size, crop_size, partial, workers)
    timings["finalize_s"] = time.perf_counter() - t1
    st._install_media(partial)
    st._finish(rows, len(held), run=dict(st.run, timings=timings))
    return st


def _batches(ids: list[int], batch_size: int) -> list[list[int]]:
    """Group sorted image ids by batch number id // batch_size."""
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][0] // batch_size == i // batch_size:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _stored_batch_size(path: Path) -> int | None:
    if not ExampleStore.exists(path):
        return None
    with ExampleStore(path) as st:
        return st.settings.get("batch_size")


OURS = {DB_NAME, DB_NAME + "-journal", MEDIA, PARTIAL_MEDIA, LOCK}


def _check_target(path: Path) -> None:
    """Refuse to write a store into a folder that holds anything else."""
    if path.exists() and not ExampleStore.exists(path):
        if not path.is_dir() or any(p.name not in OURS for p in path.iterdir()):
            raise FeatvizError(f"{path} exists and is not an example store; choose a new or empty folder for --out")


def _store_lock(path: Path) -> FolderLock:
    """The store's folder, locked for the duration of a run."""
    return FolderLock(path, f"the store {path} is being written by another process")


def _open_or_create(path: Path, settings: dict, run: dict, files, model, layers, size, overwrite, say) -> ExampleStore:
    if ExampleStore.exists(path):
        st = ExampleStore(path)
        old = st.settings
        if old == settings:
            return st
        st.close()
        if not overwrite:
            raise FeatvizError(f"the store {path} was made with other settings ({_describe_diff(old, settings)}); "
                               "pass --overwrite to start it over, or choose another --out")
        say(f"overwriting {path}")
    t = time.perf_counter()
    with torch.inference_mode():
        shapes = {name: tuple(a.shape) for name, a in
                  model.activations(torch.zeros(1, 3, size, size, device=model.device), layers).items()}
    records = []
    for name in layers:
        if len(shapes[name]) not in (2, 4):
            raise FeatvizError(f"layer '{name}' gives outputs of shape {shapes[name]}; dataset examples need "
                               "(N, C, H, W) or (N, C)")
        rf = receptive_field(model, name, size)
        records.append(LayerRecord(name, shapes[name][1], rf.height, rf.width, rf))
    run = dict(run, timings={"receptive_fields_s": time.perf_counter() - t})
    return ExampleStore.create(path, settings, run, files, records)


def _describe_diff(old: dict, new: dict) -> str:
    parts = []
    if old.get("dataset") != new.get("dataset"):
        parts.append("the data folder changed since the store was started")
    elif old.get("files") != new.get("files"):
        parts.append("another shard of the folder")
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key) or key in ("dataset", "files", "n_files"):
            continue
        if key == "weights":
            parts.append("other model weights")
        else:
            parts.append(f"{key} {old.get(key)} in the store vs {new.get(key)} now")
    return "; ".join(parts) or "another format"


def _decode(root: Path, rel: str, model, size: int):
    """(tensor (3, size, size) in [0, 1], None) or (None, reason)."""
    try:
        return model.preprocess(read_photo(root / rel), size), None
    except ImageReadError as exc:
        return None, str(exc)
    except Exception as exc:  # a broken file must never stop the pass
        return None, f"{exc.__class__.__name__}: {exc}"


def _prefetch(batches, files, root: Path, model, size: int, workers: int, ahead: int = 2):
    """Yield (ids, [(tensor|None, reason)...]) per batch, decoding ``ahead`` batches early."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featviz-decode")
    pending: deque = deque()
    todo = iter(batches)

    def submit():
        ids = next(todo, None)
        if ids is not None:
            pending.append((ids, [pool.submit(_decode, root, files[i][0], model, size) for i in ids]))

    try:
        for _ in range(ahead):
            submit()
        while pending:
            ids, futures = pending.popleft()
            submit()
            yield ids, [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", file=sys.stderr, desc="examples", dynamic_ncols=True)


def _write_media(rows: Sequence[tuple], files, root: Path, model, size: int, crop_size: int, out: Path,
                 workers: int) -> None:
    """Write the image of every top/bottom example and the crop of every max example under ``out``."""
    by_image: dict[int, list[tuple]] = {}
    for row in rows:
        by_image.setdefault(row[4], []).append(row)
    out.mkdir(parents=True, exist_ok=True)

    def work(image_id: int):
        rel = files[image_id][0]
        tensor, reason = _decode(root, rel, model, size)
        if tensor is None:
            raise FeatvizError(f"{rel} was read in the pass but cannot be read now ({reason}); "
                               "restore it and rerun the command to finish the store")
        _write_image_media(tensor, by_image[image_id], out, crop_size)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featviz-media") as pool:
        for _ in pool.map(work, sorted(by_image)):
            pass


def _write_image_media(tensor: torch.Tensor, rows: Sequence[tuple], out: Path, crop_size: int) -> None:
    from ..imageio import to_pil

    img = to_pil(tensor)
    written = set()
    for layer, unit, kind, rank, image_id, value, pos, top, left, bottom, right, file in rows:
        if file in written:
            continue
        written.add(file)
        target = out / Path(file).relative_to("media")
        target.parent.mkdir(parents=True, exist_ok=True)
        whole = file == image_file(image_id)  # the image as the network saw it, else a crop
        pic = img if whole else letterbox(img.crop((left, top, right, bottom)), crop_size)
        pic.save(target, format="JPEG", quality=JPEG_QUALITY)


def letterbox(img, side: int, fill=(128, 128, 128)):
    """Scale ``img`` to fit a ``side`` x ``side`` square (aspect kept), on a grey background."""
    from PIL import Image

    w, h = img.size
    scale = side / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = img.resize((nw, nh), Image.BICUBIC)
    if (nw, nh) == (side, side):
        return resized
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(resized, ((side - nw) // 2, (side - nh) // 2))
    return canvas
