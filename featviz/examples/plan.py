"""What a dataset-examples pass does, decided and checked once.

``ExamplesPlan.create`` turns the arguments of ``collect`` into one frozen
value: the model (name and weights digest), the folder and its sorted file
list, the layers, k, sizes, batch size, shard and store folder. Every check of
the arguments happens there, before anything is read or written; the local
runner (``stream.run_pass``) and the sharded runner (``sharded.run_sharded``)
take the plan as it is. ``PassOptions`` holds what only changes how a pass
runs (threads, checkpoint interval, progress, log), never its result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import FeatvizError
from .files import EXTENSIONS, demo_dir, files_hash, list_images
from .receptive import METHOD as RF_METHOD
from .store import FORMAT, ExampleStore, check_target

DEFAULT_BATCH = 32
CROP_SIZE = 112  # display size of a crop (pixels, square, letterboxed)
MIN_SIZE = 16


@dataclass(frozen=True)
class PassOptions:
    """How a pass runs (none of it changes the store's content).

    workers: decoding threads (default up to 4). checkpoint_every: seconds between
    checkpoints; checkpoint_batches: a checkpoint every that many batches instead.
    progress: a progress bar on stderr. log: called with one line per event.
    """

    workers: int | None = None
    checkpoint_every: float = 30.0
    checkpoint_batches: int | None = None
    progress: bool = False
    log: Callable[[str], None] | None = None

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


def parse_shard(shard) -> tuple[int, int] | None:
    """'I/N' or (I, N) -> (I, N): batches I, I+N, I+2N... of the sorted file list."""
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            i, n = (int(part) for part in shard.split("/"))
        except ValueError:
            raise FeatvizError(f"a shard is written I/N, e.g. 0/4, got {shard!r}") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise FeatvizError(f"shard {i}/{n}: need N >= 1 and 0 <= I < N")
    return int(i), int(n)


def parse_layers(model, layers) -> list[str]:
    """'a,b' or a list -> checked list of layer names (unknown names raise with suggestions);
    None -> the model's default layers."""
    if layers is None:
        return model.default_layers()
    if isinstance(layers, str):
        layers = layers.split(",")
    names = list(dict.fromkeys(str(name).strip() for name in layers if str(name).strip()))
    if not names:
        raise FeatvizError("no layers given; 'featviz layers MODEL' lists them")
    for name in names:
        model.layer(name)
    return names


@dataclass(frozen=True)
class ExamplesPlan:
    """One examples pass, checked: build it with ``ExamplesPlan.create``.

    ``files`` is the sorted list of the whole folder (relative path, bytes); image ids are
    positions in it. ``shard`` (I, N) keeps batches I, I+N, ... of it. ``data`` is the folder as
    given (None: the demo photos of whichever machine runs the plan), ``root`` the folder read.
    """

    model: str
    weights: str
    data: Path | None
    root: Path
    files: tuple[tuple[str, int], ...]
    layers: tuple[str, ...]
    top: int
    bottom: int
    size: int
    batch_size: int
    shard: tuple[int, int] | None
    store: Path
    overwrite: bool = False
    crop_size: int = CROP_SIZE
    spec: str | None = None  # the model spec file the network came from (absolute), if any

    @classmethod
    def create(cls, model, data=None, layers=None, k: int = 10, *, bottom: int | None = None, store=None,
               batch_size: int | None = None, size: int | None = None, shard=None, overwrite: bool = False,
               crop_size: int = CROP_SIZE) -> "ExamplesPlan":
        """Check every argument against ``model`` (a ModelOrganism) and the folder, and list the files.

        store: the store folder (default: a new temporary folder). batch_size: default 32, or the
        store's own when continuing one. Raises ``FeatvizError`` with one line on any bad input.
        """
        top = int(k)
        bottom = top if bottom is None else int(bottom)
        if top < 1:
            raise FeatvizError(f"--top must be at least 1, got {top} (k: images per unit)")
        if bottom < 0:
            raise FeatvizError(f"--bottom cannot be negative, got {bottom}")
        chosen = parse_layers(model, layers)
        size = int(size or model.input_size)
        if size < MIN_SIZE:
            raise FeatvizError(f"input size {size} is too small (at least {MIN_SIZE} px)")
        if int(crop_size) < 1:
            raise FeatvizError(f"crop size must be at least 1 px, got {crop_size}")
        shard = parse_shard(shard)
        root = Path(data) if data is not None else demo_dir()
        if store is None:
            import tempfile

            store = tempfile.mkdtemp(prefix="featviz-examples-")
        store = Path(store)
        files = tuple(list_images(root, exclude=[store]))
        if not files:
            raise FeatvizError(f"no images ({', '.join(EXTENSIONS)}) found under {root}")
        stored = stored_batch_size(store)
        if batch_size is None and stored:  # continuing a store: its own batch size, whatever it was
            batch_size = stored
        else:
            batch_size = int(DEFAULT_BATCH if batch_size is None else batch_size)
            if batch_size < 1:
                raise FeatvizError(f"--batch-size must be at least 1, got {batch_size}")
            # A batch never holds more rows than there are images (--batch-size 100000 on 30 photos).
            batch_size = min(batch_size, len(files))
        check_memory(model, chosen, size, batch_size)
        check_target(store, overwrite)
        plan = cls(model=model.name, weights=model.weights_digest(), data=None if data is None else Path(data),
                   root=root, files=files, layers=tuple(chosen), top=top, bottom=bottom, size=size,
                   batch_size=batch_size, shard=shard, store=store, overwrite=bool(overwrite),
                   crop_size=int(crop_size), spec=model.source)
        if shard is not None and not plan.ids:
            raise FeatvizError(f"shard {shard[0]}/{shard[1]} is empty: the {len(files)} files under {root} make "
                               f"only {plan.n_batches} batches of {batch_size}")
        return plan

    # -- what the plan covers -------------------------------------------------------------------
    @property
    def n_batches(self) -> int:
        """Batches of the whole folder."""
        return -(-len(self.files) // self.batch_size)

    @property
    def ids(self) -> list[int]:
        """Image ids this plan reads: batch j holds ids j*B .. j*B+B-1, image i always in row i % B;
        a shard I/N takes batches I, I+N, ..."""
        ids = range(len(self.files))
        if self.shard is None:
            return list(ids)
        index, count = self.shard
        return [i for i in ids if (i // self.batch_size) % count == index]

    @property
    def held(self) -> list[tuple[int, str, int]]:
        """(image id, relative path, bytes) of the images this plan covers."""
        return [(i, *self.files[i]) for i in self.ids]

    def settings(self) -> dict:
        """What the store's content depends on: a store is continued only with equal settings."""
        held = self.held
        return {"format": FORMAT, "model": self.model, "weights": self.weights, "layers": list(self.layers),
                "top": self.top, "bottom": self.bottom, "size": self.size, "batch_size": self.batch_size,
                "dataset": files_hash(self.files), "files": files_hash(held), "n_files": len(held)}

    def run_info(self) -> dict:
        """About the run, not part of the result: where the data lives, the shard, versions."""
        return {"data_root": str(self.root.resolve()),
                "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
                "rf_method": RF_METHOD, "crop_size": self.crop_size, "torch": torch.__version__,
                "model_spec": self.spec}

    def describe_data(self) -> str:
        return str(self.root) if self.data is not None else "the scikit-image demo photos"


BYTES = 4  # float32
DECODED_BATCHES = 3  # the batch being run and the two decoded ahead (``stream.prefetch_batches``)
RF_IMAGES = 4 * 4  # the receptive-field probe: 4 images, measured again at twice the side if needed


def estimate_memory(model, layers, size: int, batch_size: int) -> int:
    """Bytes a pass needs at its peak, roughly: the decoded batches, the network's activations
    up to the deepest chosen layer for one batch (the two largest at once plus the chosen outputs),
    and the receptive-field probe (activations kept for the gradient). From the layer table at
    the model's own input size, scaled by area."""
    table = model.layers(all_modules=True)
    wanted = set(layers)
    deepest = max((info.order for info in table if info.name in wanted), default=len(table))
    area = (size / model.input_size) ** 2

    def elements(info) -> float:
        return info.channels * (info.height * info.width * area if info.spatial else 1)

    acts = sorted((elements(info) for info in table if info.order <= deepest), reverse=True) or [0.0]
    chosen = sum(elements(info) for info in table if info.name in wanted)
    image = 3 * size * size
    per_image = image * (DECODED_BATCHES + 1) + 2 * acts[0] + chosen
    probe = RF_IMAGES * (image + 2 * sum(acts[:8]))
    return int(BYTES * (batch_size * per_image + probe))


def available_memory(device=None) -> int | None:
    """Bytes a new allocation can use on ``device`` (default the CPU): the one rule featviz uses for
    renders too (``featviz.optvis.memory.available_bytes``: MemAvailable, a container's limit, CUDA's free
    memory); None where that cannot be told (then nothing is refused)."""
    from ..optvis import memory

    return memory.available_bytes(torch.device("cpu") if device is None else torch.device(device))


def format_bytes(n: float) -> str:
    """1536 -> '2 KB', 5e9 -> '4.7 GB'."""
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} GB" if n < 1024 else f"{n / 1024:.1f} TB"


def check_memory(model, layers, size: int, batch_size: int) -> None:
    """Refuse, before anything is allocated, a size and batch whose pass cannot fit in memory."""
    need = estimate_memory(model, layers, size, batch_size)
    have = available_memory(getattr(model, "device", None))
    if have is not None and need > have:
        raise FeatvizError(f"dataset examples at input size {size} with batch {batch_size} need about "
                           f"{format_bytes(need)} of memory, but about {format_bytes(have)} is available; "
                           "lower --size or --batch-size")


def stored_batch_size(path: Path) -> int | None:
    """The batch size of the store at ``path`` (None if there is none)."""
    if not ExampleStore.exists(path):
        return None
    with ExampleStore(path) as st:
        return st.settings.get("batch_size")
