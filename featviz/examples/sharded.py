"""The dataset-examples pass split over the workers of an engine (Ray).

The folder is cut into one shard per worker with the same rule as ``--shard
I/N`` (batch j goes to shard j mod N), each worker streams its shard into a
store of its own in a temporary folder and sends it back packed as a tar; the
driver unpacks the parts into a staging folder beside the store and merges
them. Shards and merge are exact (see ``stream``), so the store equals one
made in a single process, digest for digest.

Resumable at shard granularity: a part is moved into the staging folder only
once complete, and a rerun with the same settings sends only the missing
shards. The workers read the photos themselves: on a cluster the data folder
must be visible at the same path on every node (a shared filesystem).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from .._storage import LOCK
from ..engine import Job
from ..errors import FeatvizError
from ..imageio import atomic_write
from .plan import ExamplesPlan, PassOptions
from .store import DB_NAME, ExampleStore, describe_settings_diff, lock_store, merge, remove_store
from .stream import run_pass

PLAN = "plan.json"


def run_sharded(engine, model, plan: ExamplesPlan, options: PassOptions = PassOptions()) -> ExampleStore:
    """Run ``plan`` over ``engine``'s workers, one shard each, and merge the parts into ``plan.store``."""
    say, store_path, settings = options.say, plan.store, plan.settings()
    if plan.shard is not None:
        raise FeatvizError("a shard (--shard) cannot be split again over an engine; give one or the other")
    if ExampleStore.exists(store_path):
        with ExampleStore(store_path) as old:
            same, complete, old_settings = old.settings == settings, old.complete, old.settings
            missing = complete and bool(old.missing_media())
        if same and complete:
            if missing:  # media deleted by hand: restored here from the examples table (no pass needed)
                return run_pass(model, plan, options)
            say(f"store {store_path} is already complete")
            return ExampleStore(store_path)
        if not same and not plan.overwrite:
            raise FeatvizError(f"the store {store_path} was made with other settings "
                               f"({describe_settings_diff(old_settings, settings)}); pass --overwrite to start it "
                               "over, or choose another --out")
    n = max(1, min(engine.workers, plan.n_batches))
    staging = store_path.parent / f".{store_path.name}.shards"
    staging.mkdir(parents=True, exist_ok=True)
    lock = lock_store(staging)
    try:
        manifest = {"settings": settings, "shards": n}
        plan_file = staging / PLAN
        if not plan_file.exists() or json.loads(plan_file.read_text(encoding="utf-8")) != manifest:
            for child in staging.iterdir():  # parts of another plan are of no use
                if child.name != LOCK:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            atomic_write(plan_file, lambda tmp: Path(tmp).write_text(json.dumps(manifest), encoding="utf-8"))
        todo = [i for i in range(n) if not (staging / str(i) / DB_NAME).exists()]
        say(f"dataset examples on the {engine.describe()}: {n} shard{'s' if n > 1 else ''} of "
            f"{plan.describe_data()}" + (f", {n - len(todo)} already done" if len(todo) < n else ""))
        jobs = [Job(collect_shard, (plan, i, n)) for i in todo]
        for done in engine.run(model, jobs):
            i = todo[done.index]
            _unpack(done.result, staging / str(i))
            say(f"examples shard {i + 1}/{n} done in {done.seconds:.1f} s")
        parts = [staging / str(i) for i in range(n)]
        remove_store(store_path, plan.overwrite)  # an older or unfinished store: only featviz's own files
        if n == 1:
            os.replace(parts[0], store_path)
        else:
            merge(parts, store_path).close()
        result = ExampleStore(store_path)
    finally:
        lock.close()
    if result.settings != settings:
        result.close()
        raise FeatvizError(f"the workers saw other files under {plan.root} than this process; on a cluster the "
                           "data folder must be readable at the same path on every node")
    shutil.rmtree(staging, ignore_errors=True)
    return result


def collect_shard(model, plan: ExamplesPlan, index: int, count: int) -> bytes:
    """Runs on a worker: shard ``index``/``count`` of ``plan`` into a temporary store, returned as tar bytes.

    The worker lists the folder itself (at the driver's absolute path): if it sees other files,
    the merged settings differ and the driver says so."""
    tmp = Path(tempfile.mkdtemp(prefix="featviz-shard-"))
    try:
        data = None if plan.data is None else plan.root.resolve()
        try:
            part = ExamplesPlan.create(model, data, list(plan.layers), plan.top, bottom=plan.bottom,
                                       store=tmp / "store", batch_size=plan.batch_size, size=plan.size,
                                       shard=(index, count), crop_size=plan.crop_size)
            store = run_pass(model, part, PassOptions(checkpoint_every=1e9))
        except FeatvizError as exc:
            raise FeatvizError(f"{exc} (on a worker: the data folder must be readable there at the same path)") \
                from None
        store.close()
        return _pack(tmp / "store")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.name != LOCK:
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buf.getvalue()


def _unpack(data: bytes, dest: Path) -> None:
    """Unpack a part into ``dest`` atomically (a half-unpacked part is never taken for a done one)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python without extraction filters: check the names ourselves
                for member in tar.getmembers():
                    if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts:
                        raise FeatvizError(f"refusing to unpack {member.name!r} from a worker")
                tar.extractall(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
