"""The example store: an SQLite index plus the crops as image files.

Layout of a store folder::

    STORE/index.sqlite            settings, file list, layers, examples, checkpoint
    STORE/media/images/000123.jpg the image as the network saw it (top/bottom examples)
    STORE/media/crops/<layer>/0012_03.jpg  receptive-field crop, unit 12, rank 3 (max examples)

Every change is one SQLite transaction, so a store is never half-written: a
killed run leaves the last checkpoint, and the media folder is written aside
(``media.partial``) and moved in before the transaction that marks the store
complete. Image indices are positions in the sorted list of relative paths,
so ties (equal activations) always go to the image whose path sorts first,
in one run, across resumed runs and across merged shards.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .._storage import LOCK, Database, FolderLock, connect, transaction
from ..errors import FeatvizError, IndexOutOfRangeError, UnknownLayerError, suggest
from .receptive import ReceptiveField
from .topk import EMPTY, RANKINGS, LayerState, Ranking

FORMAT = 1
DB_NAME = "index.sqlite"
MEDIA = "media"
PARTIAL_MEDIA = "media.partial"
KINDS = tuple(name for name, _ in RANKINGS)  # 'top', 'bottom', 'max'

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images(id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, bytes INTEGER NOT NULL);
CREATE TABLE layers(name TEXT PRIMARY KEY, ord INTEGER NOT NULL, channels INTEGER NOT NULL,
                    height INTEGER NOT NULL, width INTEGER NOT NULL, rf TEXT NOT NULL);
CREATE TABLE skipped(image_id INTEGER PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE checkpoint(name TEXT PRIMARY KEY, dtype TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE examples(layer TEXT NOT NULL, unit INTEGER NOT NULL, kind TEXT NOT NULL, rank INTEGER NOT NULL,
                      image_id INTEGER NOT NULL, value REAL NOT NULL, pos INTEGER NOT NULL,
                      box_top INTEGER NOT NULL, box_left INTEGER NOT NULL, box_bottom INTEGER NOT NULL,
                      box_right INTEGER NOT NULL, file TEXT NOT NULL,
                      PRIMARY KEY(layer, unit, kind, rank));
"""

# Settings that must be equal for a run to continue a store (and, except the file
# list, for stores to merge). Everything else about a run lives in 'run'.
FILE_KEYS = ("files", "n_files")  # what differs between the parts (shards) of one data set


@dataclass(frozen=True)
class LayerRecord:
    name: str
    channels: int
    height: int  # 1 x 1 for layers without spatial dims
    width: int
    rf: ReceptiveField


@dataclass(frozen=True)
class Example:
    """One dataset example of one unit.

    ``kind``: 'top' / 'bottom' (by the unit's mean activation over the image) or
    'max' (by its largest activation at one position: the neuron view).
    ``position``: (y, x) of that maximum in the layer's grid ('max' only).
    ``box``: (top, left, bottom, right) receptive-field box in the input image
    (pixels of the preprocessed ``size`` x ``size`` image, end exclusive).
    ``image_file``: the crop of that box ('max') or the whole preprocessed image.
    ``source``: the original file (under the data folder the store was made from).
    """

    layer: str
    unit: int
    kind: str
    rank: int
    path: str
    value: float
    position: tuple[int, int] | None
    box: tuple[int, int, int, int]
    image_file: Path
    source: Path | None

    def open(self):
        from PIL import Image

        try:
            with Image.open(self.image_file) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise FeatvizError(f"{self.image_file} is missing from its example store (deleted?); rerun the "
                               "'featviz examples' command that made the store to restore it") from None


def layer_dirname(layer: str) -> str:
    """A file-system-safe folder name for a layer."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in layer) or "_"


def crop_file(layer: str, unit: int, rank: int) -> str:
    return f"{MEDIA}/crops/{layer_dirname(layer)}/{unit:04d}_{rank:02d}.jpg"


def image_file(image_id: int) -> str:
    return f"{MEDIA}/images/{image_id:06d}.jpg"


class ExampleStore(Database):
    """An example store on disk (see the module docstring). Open with ``ExampleStore(path)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        db = self.path / DB_NAME
        if not db.is_file():
            raise FeatvizError(f"{self.path} is not an example store (no {DB_NAME}); "
                               "make one with 'featviz examples'")
        with sqlite_errors(self.path):
            self._db = GuardedConnection(connect(db), self.path)
        try:
            settings = self._meta("settings")
        except FeatvizError:
            self.close()
            raise
        if settings is None:
            self.close()
            raise FeatvizError(f"{self.path} holds an empty or unfinished store; rerun 'featviz examples' on it")

    # -- lifecycle ------------------------------------------------------------------------
    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """True if ``path`` holds an initialized store (complete or not) that featviz recognises."""
        return store_state(path)[0] == "store"

    @classmethod
    def create(cls, path: str | os.PathLike, settings: dict, run: dict, files: Sequence[tuple[int, str, int]],
               layers: Sequence[LayerRecord], replace: bool = False) -> "ExampleStore":
        """Initialize a store in one transaction (an existing store there is replaced).

        ``files``: (image id, relative path, bytes) of the images this store covers. Only a
        store featviz recognises is replaced; a damaged or unknown index and media are replaced
        only with ``replace`` (--overwrite), and a folder holding anything else never.
        """
        path = Path(path)
        check_target(path, overwrite=replace)
        path.mkdir(parents=True, exist_ok=True)
        _remove_store_files(path)
        con = GuardedConnection(connect(path / DB_NAME), path)
        try:
            with transaction(con):
                for stmt in SCHEMA.strip().split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                con.executemany("INSERT INTO images(id, path, bytes) VALUES (?, ?, ?)",
                                [tuple(f) for f in files])
                con.executemany("INSERT INTO layers VALUES (?, ?, ?, ?, ?, ?)",
                                [(r.name, i, r.channels, r.height, r.width, json.dumps(r.rf.to_dict()))
                                 for i, r in enumerate(layers)])
                meta = {"format": str(FORMAT), "status": "running", "files_done": "0",
                        "run": json.dumps(run, sort_keys=True), "settings": json.dumps(settings, sort_keys=True)}
                con.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
        finally:
            con.close()
        return cls(path)

    def __repr__(self) -> str:
        s = self.settings
        return (f"ExampleStore({str(self.path)!r}, model={s['model']}, layers={s['layers']}, top={s['top']}, "
                f"bottom={s['bottom']}, {self.files_done}/{s['n_files']} files, {self.status})")

    # -- metadata ---------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def settings(self) -> dict:
        """What the result depends on: model, weights digest, layers, k, size, batch size, file list."""
        return json.loads(self._meta("settings"))

    @property
    def run(self) -> dict:
        """About the run(s) that made the store: data folder, shard, timings (not part of the result)."""
        return json.loads(self._meta("run") or "{}")

    @property
    def model_reference(self) -> dict:
        """What ``featviz.models.load_reference`` needs to load the store's network again: its name,
        weights digest and, for a network from a model spec, the spec's path (stores made before
        featviz recorded it have none)."""
        ref = {"name": self.settings["model"], "weights": self.settings["weights"]}
        if self.run.get("model_spec"):
            ref["spec"] = self.run["model_spec"]
        return ref

    @property
    def status(self) -> str:
        return self._meta("status")

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def files_done(self) -> int:
        return int(self._meta("files_done"))

    @property
    def data_root(self) -> Path | None:
        root = self.run.get("data_root")
        return Path(root) if root else None

    def layers(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM layers ORDER BY ord")]

    def layer(self, name: str) -> LayerRecord:
        row = self._db.execute("SELECT name, channels, height, width, rf FROM layers WHERE name=?", (name,)).fetchone()
        if row is None:
            known = self.layers()
            raise UnknownLayerError(f"layer '{name}' is not in the store {self.path} "
                                    f"(it has {', '.join(known)}).{suggest(name, known)}")
        return LayerRecord(row[0], row[1], row[2], row[3], ReceptiveField(**json.loads(row[4])))

    def images(self) -> list[str]:
        """Relative paths of the files this store covers (readable or not), in index order."""
        return [r[0] for r in self._db.execute("SELECT path FROM images ORDER BY id")]

    def _files(self) -> list[tuple[int, str, int]]:
        return [tuple(r) for r in self._db.execute("SELECT id, path, bytes FROM images ORDER BY id")]

    def _skipped_ids(self) -> list[tuple[int, str]]:
        return [(r[0], r[1]) for r in self._db.execute("SELECT image_id, reason FROM skipped ORDER BY image_id")]

    def skipped(self) -> list[tuple[str, str]]:
        """(relative path, reason) of the files that could not be read."""
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT images.path, skipped.reason FROM skipped JOIN images ON images.id = skipped.image_id "
            "ORDER BY skipped.image_id")]

    @property
    def num_images(self) -> int:
        """Images read successfully (so far, for a store that is not complete)."""
        n_skip = self._db.execute("SELECT COUNT(*) FROM skipped").fetchone()[0]
        return self.files_done - n_skip

    # -- results ----------------------------------------------------------------------------
    def top(self, layer: str, unit: int, by: str = "mean", k: int | None = None) -> list[Example]:
        """The images that excite ``unit`` of ``layer`` most.

        ``by='mean'``: by the unit's mean activation over the image (channel view);
        ``by='max'``: by its largest activation at one position (neuron view), each
        with the position and the crop of its receptive field.
        """
        kinds = {"mean": "top", "max": "max"}
        if by not in kinds:
            raise FeatvizError(f"by must be 'mean' or 'max', got {by!r}")
        return self.examples(layer, unit, kinds[by], k)

    def bottom(self, layer: str, unit: int, k: int | None = None) -> list[Example]:
        """The images with the lowest mean activation of ``unit`` of ``layer``."""
        return self.examples(layer, unit, "bottom", k)

    def examples(self, layer: str, unit: int, kind: str, k: int | None = None) -> list[Example]:
        if kind not in KINDS:
            raise FeatvizError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self._require_complete()
        rec = self.layer(layer)
        if not 0 <= int(unit) < rec.channels:
            raise IndexOutOfRangeError(f"unit {unit} is out of range for layer '{layer}': "
                                       f"valid units are 0-{rec.channels - 1}")
        rows = self._db.execute(
            "SELECT examples.rank, images.path, examples.value, examples.pos, examples.box_top, examples.box_left, "
            "examples.box_bottom, examples.box_right, examples.file FROM examples JOIN images "
            "ON images.id = examples.image_id WHERE layer=? AND unit=? AND kind=? ORDER BY rank",
            (layer, int(unit), kind)).fetchall()
        if k is not None:
            rows = rows[:k]
        root = self.data_root
        out = []
        for rank, path, value, pos, t, l, b, r, file in rows:
            position = divmod(pos, rec.width) if kind == "max" else None
            out.append(Example(layer, int(unit), kind, rank, path, value, position, (t, l, b, r),
                               self.path / file, root / path if root else None))
        return out

    def _require_complete(self) -> None:
        if not self.complete:
            total = self.settings["n_files"]
            raise FeatvizError(f"the store {self.path} is not complete ({self.files_done} of {total} files done); "
                               "rerun the same 'featviz examples' command to finish it")

    def results(self) -> dict:
        """Everything the result consists of, as plain data (for comparisons)."""
        settings = {k: v for k, v in self.settings.items()}
        return {
            "settings": settings,
            "status": self.status,
            "images": [list(f) for f in self._files()],
            "skipped": self.skipped(),
            "layers": [list(r) for r in self._db.execute(
                "SELECT name, ord, channels, height, width, rf FROM layers ORDER BY ord")],
            "examples": [list(r) for r in self._db.execute(
                "SELECT layer, unit, kind, rank, image_id, value, pos, box_top, box_left, box_bottom, box_right, "
                "file FROM examples ORDER BY layer, unit, kind, rank")],
        }

    def rows(self) -> list[tuple]:
        """The examples table as ``example_rows`` makes it (what ``finish`` wrote)."""
        return [tuple(r) for r in self._db.execute(
            "SELECT layer, unit, kind, rank, image_id, value, pos, box_top, box_left, box_bottom, box_right, file "
            "FROM examples ORDER BY layer, unit, kind, rank")]

    def missing_media(self) -> list[str]:
        """Crops and images the examples table names but the media folder lacks (deleted by hand)."""
        return sorted({row[-1] for row in self.rows() if not (self.path / row[-1]).is_file()})

    def media_files(self) -> list[str]:
        """Relative paths of the crops and images of the store, sorted."""
        media = self.path / MEDIA
        if not media.is_dir():
            return []
        return sorted(p.relative_to(self.path).as_posix() for p in media.rglob("*") if p.is_file())

    def digest(self) -> str:
        """SHA-256 of the result: index content and the bytes of every crop and image.

        Runs that give the same result (uninterrupted, resumed, merged from
        shards) give the same digest; where the data folder lives does not count.
        """
        h = hashlib.sha256(json.dumps(self.results(), sort_keys=True).encode())
        for rel in self.media_files():
            h.update(rel.encode())
            h.update(hashlib.sha256((self.path / rel).read_bytes()).digest())
        return h.hexdigest()

    # -- writing (used by the examples pass and merge) ----------------------------------------------
    def set_run(self, run: dict) -> None:
        """Replace what the store records about its run(s) (data folder, timings...)."""
        with transaction(self._db):
            self._db.execute("UPDATE meta SET value=? WHERE key='run'", (json.dumps(run, sort_keys=True),))

    def save_checkpoint(self, files_done: int, states: dict[str, LayerState],
                         skipped: Iterable[tuple[int, str]]) -> None:
        """Progress in one transaction: the running rankings, files done, files skipped."""
        rows = []
        for layer, state in states.items():
            for kind, ranking in state.rankings.items():
                for field in ("values", "index", "pos"):
                    arr = getattr(ranking, field).detach().cpu().contiguous().numpy()
                    rows.append((f"{layer}\x1f{kind}\x1f{field}", arr.dtype.str, json.dumps(arr.shape), arr.tobytes()))
        with transaction(self._db):
            self._db.execute("DELETE FROM checkpoint")
            self._db.executemany("INSERT INTO checkpoint VALUES (?, ?, ?, ?)", rows)
            self._db.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?)", list(skipped))
            self._db.execute("UPDATE meta SET value=? WHERE key='files_done'", (str(files_done),))

    def load_checkpoint(self, device=None) -> dict[str, LayerState] | None:
        """The rankings of the last checkpoint on ``device`` (None if there is none)."""
        rows = self._db.execute("SELECT name, dtype, shape, data FROM checkpoint").fetchall()
        if not rows:
            return None
        parts: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for name, dtype, shape, data in rows:
            layer, kind, field = name.split("\x1f")
            arr = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(json.loads(shape)).copy()
            parts.setdefault(layer, {}).setdefault(kind, {})[field] = torch.from_numpy(arr).to(device)
        descending = dict(RANKINGS)
        return {layer: LayerState({kind: Ranking(f["values"], f["index"], f["pos"], descending[kind])
                                   for kind, f in kinds.items()})
                for layer, kinds in parts.items()}

    def install_media(self, partial: Path) -> None:
        """Move a fully written media folder into place (the old one, if any, goes first)."""
        shutil.rmtree(self.path / MEDIA, ignore_errors=True)
        os.replace(partial, self.path / MEDIA)

    def finish(self, rows: Sequence[tuple], files_done: int, run: dict | None = None,
                skipped: Iterable[tuple[int, str]] = ()) -> None:
        """Write the examples and mark the store complete, in one transaction."""
        with transaction(self._db):
            self._db.execute("DELETE FROM examples")
            self._db.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?)", list(skipped))
            self._db.execute("DELETE FROM checkpoint")
            self._db.execute("UPDATE meta SET value=? WHERE key='files_done'", (str(files_done),))
            if run is not None:
                self._db.execute("UPDATE meta SET value=? WHERE key='run'", (json.dumps(run, sort_keys=True),))
            self._db.execute("UPDATE meta SET value='complete' WHERE key='status'")

    def _rankings(self) -> dict[str, LayerState]:
        """The final rankings as tensors, for merging."""
        self._require_complete()
        s = self.settings
        ks = {"top": s["top"], "bottom": s["bottom"], "max": s["top"]}
        descending = dict(RANKINGS)
        out = {}
        for layer in self.layers():
            rec = self.layer(layer)
            rankings = {}
            for kind in KINDS:
                r = Ranking.empty(rec.channels, ks[kind], descending[kind])
                rows = self._db.execute("SELECT unit, rank, image_id, value, pos FROM examples "
                                        "WHERE layer=? AND kind=?", (layer, kind)).fetchall()
                if rows:
                    unit, rank, image_id, value, pos = (np.array(c) for c in zip(*rows))
                    unit, rank = torch.from_numpy(unit.astype(np.int64)), torch.from_numpy(rank.astype(np.int64))
                    r.values[unit, rank] = torch.from_numpy(value.astype(np.float32))
                    r.index[unit, rank] = torch.from_numpy(image_id.astype(np.int64))
                    r.pos[unit, rank] = torch.from_numpy(pos.astype(np.int64))
                rankings[kind] = r
            out[layer] = LayerState(rankings)
        return out


def example_rows(states: dict[str, LayerState], records: dict[str, LayerRecord]) -> list[tuple]:
    """Rows of the examples table from final rankings (empty slots dropped)."""
    rows = []
    for layer, state in states.items():
        rec = records[layer]
        for kind in KINDS:
            r = state.rankings[kind]
            values = r.values.detach().cpu().numpy()
            index = r.index.detach().cpu().numpy()
            pos = r.pos.detach().cpu().numpy()
            for unit in range(values.shape[0]):
                for rank in range(values.shape[1]):
                    image_id = int(index[unit, rank])
                    if image_id == EMPTY:
                        continue
                    if kind == "max":
                        y, x = divmod(int(pos[unit, rank]), rec.width)
                        box = rec.rf.box(y, x)
                        # a field covering the whole image needs no crop of its own
                        whole = box == (0, 0, rec.rf.size, rec.rf.size)
                        file = image_file(image_id) if whole else crop_file(layer, unit, rank)
                    else:
                        box = (0, 0, rec.rf.size, rec.rf.size)
                        file = image_file(image_id)
                    rows.append((layer, unit, kind, rank, image_id, float(values[unit, rank]),
                                 int(pos[unit, rank]), *box, file))
    return rows


STORE_NAMES = (DB_NAME, DB_NAME + "-journal", MEDIA, PARTIAL_MEDIA)  # what a store folder holds
OURS = set(STORE_NAMES) | {LOCK}


def store_state(path: str | os.PathLike) -> tuple[str, str]:
    """What ``path`` holds, as (state, detail): 'absent', 'empty', 'store' (an index with the settings
    row featviz writes: proof that featviz made it), 'damaged' (an index SQLite cannot read),
    'unrecognised' (only a store's names, but no proof featviz wrote them) or 'foreign'."""
    path = Path(path)
    if not path.exists():
        return "absent", ""
    if not path.is_dir():
        return "foreign", "not a folder"
    names = sorted(p.name for p in path.iterdir() if p.name != LOCK)
    if not names:
        return "empty", ""
    state, detail = "unrecognised", ", ".join(names)
    db = path / DB_NAME
    if db.is_file():
        try:
            con = connect(db)
            try:
                row = con.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
            finally:
                con.close()
            settings = json.loads(row[0]) if row else None
            if isinstance(settings, dict) and {"format", "model", "weights"} <= set(settings):
                return "store", ""
        except sqlite3.DatabaseError as exc:
            if "no such table" not in str(exc):  # another program's database is not damaged, just not ours
                state, detail = "damaged", str(exc)
        except ValueError:  # a settings row that is not JSON
            pass
    if set(names) - set(STORE_NAMES):
        return "foreign", ", ".join(names)
    return state, detail


def check_target(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse, in one line, to write a store where featviz would delete what it cannot prove it wrote.

    A folder holding anything but a store's files is always refused; a damaged index, or store
    names without featviz's settings row, only without ``overwrite``."""
    state, detail = store_state(path)
    if state == "foreign":
        raise FeatvizError(f"{path} exists and is not an example store; choose a new or empty folder for --out "
                           "(featviz never deletes what it did not write)")
    if overwrite:
        return
    if state == "damaged":
        raise FeatvizError(f"the index of the store {path} is damaged ({detail}) and featviz cannot tell whether "
                           "it wrote it; pass --overwrite to start it over, or choose another --out")
    if state == "unrecognised":
        raise FeatvizError(f"{path} is not an example store featviz recognises (it holds {detail}); featviz only "
                           "deletes what it wrote: pass --overwrite to replace them, or choose another --out")


def _remove_store_files(path: Path) -> None:
    for name in (DB_NAME, DB_NAME + "-journal"):
        if (path / name).is_file():
            (path / name).unlink()
    for name in (MEDIA, PARTIAL_MEDIA):
        if (path / name).is_dir():
            shutil.rmtree(path / name)


def remove_store(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Delete the store at ``path`` (checked as ``check_target``): only a store's own files, and
    the folder itself when nothing else is left in it."""
    path = Path(path)
    check_target(path, overwrite)
    if not path.exists():
        return
    _remove_store_files(path)
    if (path / LOCK).is_file():
        (path / LOCK).unlink()
    path.rmdir()


@contextmanager
def sqlite_errors(path: Path):
    """SQLite errors on the store at ``path`` as one-line ``FeatvizError``s that say what to do."""
    try:
        yield
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError):  # a bug in the caller, not the store
        raise
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "full" in text:
            raise FeatvizError(f"disk full while writing the store {path} ({text}); free some space and rerun "
                               "the same command to continue from the last checkpoint") from None
        if "disk I/O" in text:
            raise FeatvizError(f"could not write the store {path} ({text}: is the disk full?)") from None
        if "locked" in text or "busy" in text:
            raise FeatvizError(f"the store {path} is busy: another process is writing it ({text})") from None
        raise FeatvizError(f"the index of the store {path} is damaged ({text}); pass --overwrite to start it "
                           "over, or choose another --out") from None


class GuardedConnection:
    """The store's SQLite connection; every error (also while reading rows) goes through ``sqlite_errors``."""

    def __init__(self, con: sqlite3.Connection, path: Path):
        self._con, self._path = con, path

    def execute(self, sql: str, params=()) -> "_GuardedCursor":
        with sqlite_errors(self._path):
            return _GuardedCursor(self._con.execute(sql, params), self._path)

    def executemany(self, sql: str, rows) -> None:
        with sqlite_errors(self._path):
            self._con.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        return self._con.in_transaction

    def close(self) -> None:
        self._con.close()


class _GuardedCursor:
    def __init__(self, cursor: sqlite3.Cursor, path: Path):
        self._cursor, self._path = cursor, path

    def fetchone(self):
        with sqlite_errors(self._path):
            return self._cursor.fetchone()

    def fetchall(self):
        with sqlite_errors(self._path):
            return self._cursor.fetchall()

    def __iter__(self):
        return iter(self.fetchall())


def lock_store(path: str | os.PathLike) -> FolderLock:
    """The store's folder, locked for the duration of a run (another process writing it is refused)."""
    return FolderLock(path, f"the store {path} is being written by another process")


def describe_settings_diff(old: dict, new: dict) -> str:
    """Why a store's settings differ from a run's, in words ('top 4 in the store vs 5 now')."""
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


def open_store(path: str | os.PathLike) -> ExampleStore:
    """Open an existing example store."""
    return ExampleStore(path)


def merge(stores: Sequence[str | os.PathLike | ExampleStore], out: str | os.PathLike,
          overwrite: bool = False) -> ExampleStore:
    """Merge complete stores of disjoint parts of one data set into the store of the whole.

    The parts must have been made with the same model, weights, layers, k, size
    and batch size, and their images must be named relative to the same folder
    (e.g. shards ``--shard 0/2`` and ``--shard 1/2`` of one folder). The result
    equals a single run over the union: same examples, same tie-breaks, same
    crops (copied), same digest.
    """
    opened = [s if isinstance(s, ExampleStore) else ExampleStore(s) for s in stores]
    if len(opened) < 2:
        raise FeatvizError("merge needs at least two stores")
    out = Path(out)
    for st in opened:
        st._require_complete()
        if out.resolve() == st.path.resolve():
            raise FeatvizError(f"the output {out} is one of the stores to merge")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FeatvizError(f"{out} exists; choose another output or pass overwrite=True (--overwrite)")
        if not ExampleStore.exists(out):
            raise FeatvizError(f"{out} exists and is not an example store; not overwriting it")
    base = {k: v for k, v in opened[0].settings.items() if k not in FILE_KEYS}
    layers0 = opened[0].results()["layers"]
    for st in opened[1:]:
        s = {k: v for k, v in st.settings.items() if k not in FILE_KEYS}
        if s != base:
            diff = ", ".join(f"{k}: {base.get(k)!r} vs {s.get(k)!r}" for k in sorted(set(base) | set(s))
                             if base.get(k) != s.get(k))
            raise FeatvizError(f"cannot merge {st.path} with {opened[0].path}: made with other settings ({diff})")
        if st.results()["layers"] != layers0:
            raise FeatvizError(f"cannot merge {st.path} with {opened[0].path}: different layer geometry")
    # Image ids are positions in the sorted file list of the whole folder, the same in every part.
    owner: dict[int, int] = {}
    held: dict[int, tuple[int, str, int]] = {}
    for si, st in enumerate(opened):
        for entry in st._files():
            if entry[0] in owner:
                raise FeatvizError(f"cannot merge: image {entry[1]!r} is in both {opened[owner[entry[0]]].path} "
                                   f"and {st.path} (the parts of a merge must not overlap)")
            owner[entry[0]] = si
            held[entry[0]] = tuple(entry)
    from .files import files_hash

    files = [held[i] for i in sorted(held)]
    states = None
    for st in opened:
        part = st._rankings()
        states = part if states is None else {
            layer: LayerState({kind: states[layer].rankings[kind].merged(part[layer].rankings[kind])
                               for kind in KINDS}) for layer in states}
    records = {name: opened[0].layer(name) for name in opened[0].layers()}
    rows = example_rows(states, records)
    settings = dict(opened[0].settings, files=files_hash(files), n_files=len(files))
    roots = {str(st.data_root) for st in opened}
    run = {"data_root": roots.pop() if len(roots) == 1 else str(opened[0].data_root),
           "merged_from": [str(st.path) for st in opened], "rf_method": opened[0].run.get("rf_method"),
           "model_spec": opened[0].run.get("model_spec")}
    skipped = sorted(entry for st in opened for entry in st._skipped_ids())

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.merge-", dir=out.parent))
    try:
        layer_records = [records[name] for name in opened[0].layers()]
        new = ExampleStore.create(tmp, settings, run, files, layer_records)
        # Copy every crop and image from the part that holds it.
        partial = tmp / PARTIAL_MEDIA
        for layer, unit, kind, rank, image_id, value, pos, t, l, b, r, file in rows:
            st = opened[owner[image_id]]
            (src,) = st._db.execute("SELECT file FROM examples WHERE layer=? AND unit=? AND kind=? AND image_id=?",
                                    (layer, unit, kind, image_id)).fetchone()
            dest = partial / Path(file).relative_to(MEDIA)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(st.path / src, dest)
        if not partial.exists():
            partial.mkdir()
        new.install_media(partial)
        new.finish(rows, len(files), skipped=skipped)
        new.close()
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "store")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExampleStore(out)
