"""The manifest: one SQLite file in the site folder that records what is built.

Per panel (a unit's channel visualization, its dataset examples, a layer's
DeepDream, a class visualization...) it keeps the settings hash it was made
with, the files it consists of (relative to the site) and a little data the
pages show (objective value, example list, classes). Per model it keeps the
layer table and the settings of the last build (which ``featviz serve`` uses
for on-demand renders).

A build writes a panel's files atomically first and commits their rows after
each batch, in one transaction: a killed build loses at most the batch in
flight, and a row never points to a file that is not complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .._storage import Database, connect, transaction
from ..errors import FeatvizError
from .settings import MANIFEST_NAME

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models(slug TEXT PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS panels(model TEXT NOT NULL, layer TEXT NOT NULL, unit INTEGER NOT NULL,
                                  panel TEXT NOT NULL, hash TEXT NOT NULL, files TEXT NOT NULL,
                                  info TEXT NOT NULL, PRIMARY KEY(model, layer, unit, panel));
"""
MANIFEST_FORMAT = "1"


@dataclass(frozen=True)
class Panel:
    """One built panel. ``layer`` is '' for model panels; ``unit`` is -1 for layer panels
    and the class index for class visualizations."""

    model: str
    layer: str
    unit: int
    panel: str
    hash: str
    files: tuple[str, ...]
    info: dict

    def row(self) -> tuple:
        return (self.model, self.layer, int(self.unit), self.panel, self.hash,
                json.dumps(list(self.files)), json.dumps(self.info, sort_keys=True))


class Manifest(Database):
    """Open (or create) the manifest of the site at ``site``."""

    def __init__(self, site: str | os.PathLike, create: bool = True, readonly: bool = False):
        self.site = Path(site)
        path = self.site / MANIFEST_NAME
        if (readonly or not create) and not path.is_file():
            raise FeatvizError(f"{self.site} is not a microscope site (no {MANIFEST_NAME}); "
                               "make one with 'featviz microscope build'")
        if not readonly:
            self.site.mkdir(parents=True, exist_ok=True)
        # readonly: a server reading while a build may be writing never takes a write lock.
        self._db = connect(path, readonly=readonly, any_thread=True)
        try:
            if not readonly:
                with self.transaction():
                    for stmt in SCHEMA.strip().split(";"):
                        if stmt.strip():
                            self._db.execute(stmt)
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (MANIFEST_FORMAT,))
            fmt = self._db.execute("SELECT value FROM meta WHERE key='format'").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self.close()
            raise FeatvizError(f"the manifest of {self.site} is damaged ({exc}); remove {path} to rebuild") from None
        if fmt != MANIFEST_FORMAT:
            self.close()
            raise FeatvizError(f"the manifest of {self.site} has format {fmt}, this featviz writes "
                               f"{MANIFEST_FORMAT}; build into a new folder")

    def transaction(self):
        return transaction(self._db)

    # -- models ------------------------------------------------------------------------------
    def set_model(self, slug: str, info: dict) -> None:
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO models VALUES (?, ?)", (slug, json.dumps(info, sort_keys=True)))

    def model(self, slug: str) -> dict | None:
        row = self._db.execute("SELECT info FROM models WHERE slug=?", (slug,)).fetchone()
        return json.loads(row[0]) if row else None

    def models(self) -> dict[str, dict]:
        return {s: json.loads(i) for s, i in self._db.execute("SELECT slug, info FROM models ORDER BY slug")}

    # -- panels --------------------------------------------------------------------------------
    def put(self, panels: Iterable[Panel]) -> None:
        """Record panels (replacing older records of the same keys) in one transaction."""
        rows = [p.row() for p in panels]
        if not rows:
            return
        with self.transaction():
            self._db.executemany("INSERT OR REPLACE INTO panels VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def get(self, model: str, layer: str, unit: int, panel: str) -> Panel | None:
        row = self._db.execute("SELECT model, layer, unit, panel, hash, files, info FROM panels "
                               "WHERE model=? AND layer=? AND unit=? AND panel=?",
                               (model, layer, int(unit), panel)).fetchone()
        return _panel(row) if row else None

    def panels(self, model: str, layer: str | None = None, panel: str | None = None) -> list[Panel]:
        sql = "SELECT model, layer, unit, panel, hash, files, info FROM panels WHERE model=?"
        args: list = [model]
        if layer is not None:
            sql += " AND layer=?"
            args.append(layer)
        if panel is not None:
            sql += " AND panel=?"
            args.append(panel)
        return [_panel(r) for r in self._db.execute(sql + " ORDER BY layer, unit, panel", args)]

    def current(self, model: str, layer: str, unit: int, panel: str, hash_: str) -> bool:
        """True if the panel is recorded with this settings hash and all its files exist."""
        p = self.get(model, layer, unit, panel)
        return p is not None and p.hash == hash_ and all((self.site / f).is_file() for f in p.files)

    def units(self, model: str, layer: str) -> list[int]:
        """Units of ``layer`` that have at least one panel."""
        return [r[0] for r in self._db.execute(
            "SELECT DISTINCT unit FROM panels WHERE model=? AND layer=? AND unit >= 0 ORDER BY unit",
            (model, layer))]

    def layers(self, model: str) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT DISTINCT layer FROM panels WHERE model=? AND layer != ''", (model,))]

    def digest(self) -> str:
        """SHA-256 of everything recorded (models and panels): equal for equal builds."""
        h = hashlib.sha256()
        for row in self._db.execute("SELECT slug, info FROM models ORDER BY slug"):
            h.update(json.dumps(row).encode())
        for row in self._db.execute("SELECT model, layer, unit, panel, hash, files, info FROM panels "
                                    "ORDER BY model, layer, unit, panel"):
            h.update(json.dumps(row).encode())
        return h.hexdigest()

    def rows(self) -> list[tuple]:
        return list(self._db.execute("SELECT model, layer, unit, panel, hash, files, info FROM panels "
                                     "ORDER BY model, layer, unit, panel"))


def _panel(row) -> Panel:
    return Panel(row[0], row[1], int(row[2]), row[3], row[4], tuple(json.loads(row[5])), json.loads(row[6]))


def missing_specs(site) -> list[str]:
    """One line per network of the site built from a model spec that is no longer where the build
    recorded it (``featviz serve`` cannot render its unbuilt units without ``--model``)."""
    with Manifest(site, readonly=True) as man:
        models = man.models()
    return [f"{info['name']} was built from the model spec {info['spec']}, which is no longer there (moved or "
            "deleted?): its built pages are served, on-demand renders need --model SPEC"
            for info in models.values() if info.get("spec") and not Path(info["spec"]).is_file()]

