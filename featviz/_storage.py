"""Storage primitives shared by the example store and the microscope manifest: an
exclusive folder lock and the SQLite connection, transaction and closing rules."""
from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from .errors import FeatvizError

LOCK = ".lock"  # the lock file inside a locked folder


class FolderLock:
    """An exclusive lock on ``folder`` (created if missing) while a run writes into it.

    The OS releases it if the process dies, so a killed run never leaves a stale lock.
    ``busy``: the message when another process holds it. Usable as a context manager.
    """

    def __init__(self, folder: str | os.PathLike, busy: str):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.file = open(folder / LOCK, "a+")
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise FeatvizError(busy) from None

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(db: str | os.PathLike, *, readonly: bool = False, any_thread: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit, see ``transaction``).

    readonly: never takes a write lock (a reader beside a writer); else every commit is
    synced to disk. any_thread: the connection may be used from other threads.
    """
    path = Path(db)
    if readonly:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=30,
                               check_same_thread=not any_thread)
    con = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=not any_thread)
    con.execute("PRAGMA synchronous=FULL")
    return con


@contextmanager
def transaction(con: sqlite3.Connection):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (Ctrl-C included)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        # SQLite has already rolled back after some errors (SQLITE_FULL...): a second ROLLBACK would
        # fail with "cannot rollback - no transaction is active" and hide the real error.
        if con.in_transaction:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise
    else:
        con.execute("COMMIT")


class Database:
    """Closing rules of an object that holds one connection in ``self._db``."""

    _db: sqlite3.Connection | None = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
