"""The examples pass: stream a folder of photos through the network once.

``run_pass(model, plan, options)`` walks the folder of an ``ExamplesPlan`` in
sorted order (``collect`` is the front door that makes the plan), decodes
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

Resumability: every ``PassOptions.checkpoint_every`` seconds (and when interrupted with
Ctrl-C or an error) the rankings and the number of files done go into the
store in one SQLite transaction. Rerunning with the same settings continues
after the last checkpoint; after a kill -9 at any point the result is the same
as without it. Crops are written aside and moved in before the transaction
that marks the store complete.
"""
from __future__ import annotations

import errno
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import torch

from ..errors import FeatvizError, ImageReadError
from ..progress import progress_bar
from .files import read_photo
from .plan import ExamplesPlan, PassOptions
from .receptive import receptive_field
from .store import (PARTIAL_MEDIA, ExampleStore, LayerRecord, describe_settings_diff, example_rows, image_file,
                    lock_store)
from .topk import LayerState

JPEG_QUALITY = 90


def run_pass(model, plan: ExamplesPlan, options: PassOptions = PassOptions()) -> ExampleStore:
    """Run ``plan`` in this process (its store folder locked meanwhile); returns the complete store."""
    lock = lock_store(plan.store)
    try:
        return _run_locked(model, plan, options)
    finally:
        lock.close()


def _run_locked(model, plan: ExamplesPlan, options: PassOptions) -> ExampleStore:
    say = options.say
    store_path, layers, held = plan.store, list(plan.layers), plan.held
    st = _open_or_create(model, plan, say)
    if st.complete:
        missing = st.missing_media()
        if not missing:
            say(f"store {store_path} is already complete")
            return st
        # Crops deleted by hand: made again from the examples table, byte for byte what the pass wrote.
        say(f"store {store_path} is complete but {len(missing)} of its media files are missing: writing them again")
        partial = store_path / PARTIAL_MEDIA
        shutil.rmtree(partial, ignore_errors=True)
        _write_media(st.rows(), plan, model, partial, options.workers or min(4, os.cpu_count() or 1))
        st.install_media(partial)
        return st
    records = {name: st.layer(name) for name in layers}
    dev = model.device
    states = st.load_checkpoint(dev)
    start = st.files_done
    if states is None or start == 0:
        states = {name: LayerState.empty(records[name].channels, plan.top, plan.bottom, dev) for name in layers}
        start = 0
    else:
        say(f"continuing {store_path} from file {start} of {len(held)}")
    timings = dict(st.run.get("timings", {}))
    batches = group_batches(plan.ids, plan.batch_size)
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
    workers = options.workers or min(4, os.cpu_count() or 1)
    every_batches, every_s = options.checkpoint_batches, options.checkpoint_every
    bar = progress_bar(len(held), "examples", unit="img", initial=start) if options.progress else None
    stream = prefetch_batches(batches[first_batch:], plan.files, plan.root, model, plan.size, workers)
    try:
        for batch_ids, items in stream:
            ok_ids, slots = [], []
            x = None
            for i, (tensor, reason) in zip(batch_ids, items):
                if tensor is None:
                    skipped.append((i, reason))
                    continue
                if x is None:
                    x = tensor.new_zeros((plan.batch_size,) + tuple(tensor.shape))
                x[i % plan.batch_size] = tensor
                ok_ids.append(i)
                slots.append(i % plan.batch_size)
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
            if (every_batches and n_batches % every_batches == 0) or \
                    (not every_batches and time.monotonic() - last_save >= every_s):
                st.save_checkpoint(snap[0], snap[1], skipped[:snap[2]])
                saved, last_save = snap[0], time.monotonic()
    except BaseException:
        if snap[0] > saved:  # keep what is done (Ctrl-C, an error in a later batch...)
            try:
                st.save_checkpoint(snap[0], snap[1], skipped[:snap[2]])
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
        st.save_checkpoint(done, states, skipped[:n_skip])
    pass_s = time.perf_counter() - t0
    if start < len(held):
        timings["pass_s"] = pass_s
        timings["pass_images"] = len(held) - start

    all_skipped = st.skipped()
    if len(all_skipped) == len(held):
        examples = "; ".join(f"{p}: {r}" for p, r in all_skipped[:3])
        raise FeatvizError(f"none of the {len(held)} image files under {plan.root} could be read ({examples})")

    t1 = time.perf_counter()
    rows = example_rows(states, records)
    partial = store_path / PARTIAL_MEDIA
    shutil.rmtree(partial, ignore_errors=True)
    _write_media(rows, plan, model, partial, workers)
    timings["finalize_s"] = time.perf_counter() - t1
    st.install_media(partial)
    st.finish(rows, len(held), run=dict(st.run, timings=timings))
    return st


def group_batches(ids: list[int], batch_size: int) -> list[list[int]]:
    """Group sorted image ids by batch number id // batch_size."""
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][0] // batch_size == i // batch_size:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _open_or_create(model, plan: ExamplesPlan, say) -> ExampleStore:
    path, settings = plan.store, plan.settings()
    if ExampleStore.exists(path):
        st = ExampleStore(path)
        old = st.settings
        if old == settings:
            return st
        st.close()
        if not plan.overwrite:
            raise FeatvizError(f"the store {path} was made with other settings "
                               f"({describe_settings_diff(old, settings)}); "
                               "pass --overwrite to start it over, or choose another --out")
        say(f"overwriting {path}")
    t = time.perf_counter()
    layers, size = list(plan.layers), plan.size
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
    run = dict(plan.run_info(), timings={"receptive_fields_s": time.perf_counter() - t})
    return ExampleStore.create(path, settings, run, plan.held, records, replace=plan.overwrite)


def _decode(root: Path, rel: str, model, size: int):
    """(tensor (3, size, size) in [0, 1], None) or (None, reason)."""
    try:
        return model.preprocess(read_photo(root / rel), size), None
    except ImageReadError as exc:
        return None, str(exc)
    except Exception as exc:  # a broken file must never stop the pass
        return None, f"{exc.__class__.__name__}: {exc}"


def prefetch_batches(batches, files, root: Path, model, size: int, workers: int, ahead: int = 2):
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


def _write_media(rows: Sequence[tuple], plan: ExamplesPlan, model, out: Path, workers: int) -> None:
    """Write the image of every top/bottom example and the crop of every max example under ``out``."""
    by_image: dict[int, list[tuple]] = {}
    for row in rows:
        by_image.setdefault(row[4], []).append(row)
    out.mkdir(parents=True, exist_ok=True)

    def work(image_id: int):
        rel = plan.files[image_id][0]
        tensor, reason = _decode(plan.root, rel, model, plan.size)
        if tensor is None:
            raise FeatvizError(f"{rel} was read in the pass but cannot be read now ({reason}); "
                               "restore it and rerun the command to finish the store")
        _write_image_media(tensor, by_image[image_id], out, plan.crop_size)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featviz-media")
    try:
        for _ in pool.map(work, sorted(by_image)):
            pass
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FeatvizError(f"disk full while writing the crops of {plan.store}: free some space and rerun the "
                               "same command to finish the store") from None
        raise
    finally:  # on Ctrl-C or an error, start no more images: only those being written finish
        pool.shutdown(wait=True, cancel_futures=True)


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
