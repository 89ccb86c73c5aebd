"""Storage primitives shared by the example store and the microscope manifest: an
exclusive folder lock and the SQLite connection, transaction and closing rules."""
from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from .errors import FeatvizError
from .imageio import check_output, make_folder

LOCK = ".lock"  # the lock file inside a locked folder


class DamagedDatabaseError(FeatvizError, sqlite3.DatabaseError):
    """A database file SQLite cannot read: one line for the user, and still an ``sqlite3.DatabaseError``
    for the stores that explain what to do about their own damaged file."""


def require_regular_file(path: Path) -> None:
    """A lock or a database must be a regular file (or not exist yet): opening a named pipe would
    hang and writing a device could damage the system (``featviz.imageio.check_output``'s rule)."""
    if check_output(path, probe=False) != "replace":
        raise FeatvizError(f"refusing to use {path}: it is not a regular file")


class FolderLock:
    """An exclusive lock on ``folder`` (created if missing) while a run writes into it.

    The OS releases it if the process dies, so a killed run never leaves a stale lock.
    ``busy``: the message when another process holds it. Usable as a context manager.
    """

    def __init__(self, folder: str | os.PathLike, busy: str):
        folder = make_folder(Path(folder))
        require_regular_file(folder / LOCK)
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
    require_regular_file(path)
    if readonly:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=30,
                               check_same_thread=not any_thread)
    con = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=not any_thread)
    try:
        con.execute("PRAGMA synchronous=FULL")  # the first statement: a damaged file fails here
    except sqlite3.DatabaseError as exc:
        con.close()
        raise DamagedDatabaseError(f"{path} is damaged or not an SQLite database ({exc})") from None
    return con


@contextmanager
def transaction(con: sqlite3.Connection):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (Ctrl-C included)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException as exc:
        # SQLite has already rolled back after some errors (SQLITE_FULL...): a second ROLLBACK would
        # fail with "cannot rollback - no transaction is active" and hide the real error.
        if con.in_transaction:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        if isinstance(exc, sqlite3.OperationalError) and _disk_full(exc):
            raise FeatvizError(f"cannot save: {exc}; free some space and run the same command again "
                               "(what was saved before is kept)") from None
        raise
    else:
        con.execute("COMMIT")


def _disk_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return code == SQLITE_FULL if code is not None else "disk is full" in str(exc)


SQLITE_FULL = 13  # sqlite3.SQLITE_FULL from Python 3.11


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
