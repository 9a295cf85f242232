"""Opening a project file: `open_project` checks the file, connects, locks and migrates.

Nothing is written to a file before it is known to be a project (or empty): a file that is not
one is refused with `NotAProjectError`, left as it was. Durability is set here: WAL with
synchronous=FULL, so a transaction that has returned is on disk. A second *process* on the same
file gets `ProjectLockedError` naming it (an flock on `<file>.lock`, which the OS drops even on
kill -9), or can open the file read-only. What an open project writes is `store.project`, what it
reads `store.queries`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from dpo_engine.errors import NotAProjectError, StoreError, storage_problem
from dpo_engine.outputs import SQLITE_MAGIC
from dpo_engine.store.lock import ProcessLock, check_single_name
from dpo_engine.store.project import Project
from dpo_engine.store.schema import APPLICATION_ID, CURRENT_VERSION, migrate

BUSY_TIMEOUT_S = 10.0  # another thread's write transaction is short; wait rather than fail


def open_project(path: str | Path, read_only: bool = False) -> Project:
    """Open (creating and migrating if needed) the project at `path`; ":memory:" for tests.

    Raises:
        NotAProjectError: the file exists but is not a project (it is left untouched).
        ProjectLockedError: another process has the project open (read-only still works).
        StoreError: the file cannot be opened or written.
    """
    if str(path) == ":memory:":
        return _ready(Project(_connect(":memory:", False), ":memory:", None, read_only=False))
    path = Path(path)
    if not path.parent.is_dir():
        raise StoreError(f"Cannot create {path}: the folder {path.parent} does not exist.")
    if read_only and not path.exists():
        raise StoreError(f"{path} does not exist; open it read-write once to create it.")
    _check_file(path)
    lock = None if read_only else _lock(path)
    try:
        project = _ready(Project(_connect(path, read_only), str(path), lock, read_only))
        if lock is not None and lock.first:
            project.runs.reconcile_interrupted()  # this process is the only writer: no run of it is live
        return project
    except sqlite3.Error as exc:
        if lock:
            lock.release()
        raise StoreError(f"Cannot open {path}: {exc}") from None
    except BaseException:
        if lock:
            lock.release()
        raise


def _ready(project: Project) -> Project:
    """`project` with its schema current: migrated when writable; a read-only one must be current
    already (migrating is a write)."""
    conn = project.db.conn
    if not project.read_only:
        with project.transaction():
            migrate(conn)
    elif conn.execute("PRAGMA user_version").fetchone()[0] != CURRENT_VERSION:  # a PRAGMA: no table API
        project.close()
        raise StoreError(f"{project.path} has an older schema; open it read-write once to upgrade it.")
    return project


# ----------------------------------------------------------------------------- checks
def _refuse(path: Path, why: str) -> NotAProjectError:
    return NotAProjectError(
        f"{path} is not a DPO Studio project ({why}). It was left untouched; "
        "choose another file, or a new name to create a project.")


def _check_file(path: Path) -> None:
    """Refuse anything but a missing/empty file or one of our SQLite files, reading only."""
    if path.is_dir():
        raise _refuse(path, "it is a folder")
    if not path.exists() or path.stat().st_size == 0:
        return
    _check_header(path)
    version = _check_catalog(path)
    if version > CURRENT_VERSION:
        raise StoreError(f"{path} was written by a newer DPO Studio (schema {version}, this one reads "
                         f"up to {CURRENT_VERSION}). Update DPO Studio to open it.")


def _check_header(path: Path) -> None:
    """Refuse a file whose 100-byte SQLite header says it is not SQLite, or that it was cut short."""
    with open(path, "rb") as f:
        header = f.read(100)
    if not header.startswith(SQLITE_MAGIC):
        raise _refuse(path, "not an SQLite file")
    page_size = int.from_bytes(header[16:18], "big") or 65536  # 1 encodes 65536
    pages = int.from_bytes(header[28:32], "big")
    wal = Path(f"{path}-wal")
    pending = wal.exists() and wal.stat().st_size > 0  # a checkpoint cut short is completed from the WAL
    if not pending and header[24:28] == header[92:96] and path.stat().st_size < page_size * pages:
        raise _refuse(path, "the file is truncated")


def _check_catalog(path: Path) -> int:
    """The schema version of an SQLite file that is ours or empty of tables, read without writing;
    refuses a damaged file or another program's."""
    sidecars = [Path(f"{path}{s}") for s in ("-wal", "-shm")]
    existed = [s.exists() for s in sidecars]
    try:
        conn = sqlite3.connect(_read_uri(path), uri=True)
        try:  # PRAGMAs and the catalog, read before the file is trusted: plain sqlite3, no table API
            app_id, version = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version"))
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
        if check != "ok":
            raise _refuse(path, f"damaged: {check}")
        if app_id != APPLICATION_ID and (tables or version):
            raise _refuse(path, "an SQLite file of another program")
        return version
    except (sqlite3.DatabaseError, NotAProjectError) as exc:
        for sidecar, was in zip(sidecars, existed):  # reading a WAL-mode file creates these: leave none
            if not was:
                sidecar.unlink(missing_ok=True)
        if isinstance(exc, NotAProjectError):
            raise
        raise _refuse(path, f"SQLite cannot read it: {exc}") from None


# ----------------------------------------------------------------------------- connecting
def _read_uri(path: Path) -> str:
    """The URI that opens `path` for reading. In a folder nobody can write (a read-only disk),
    SQLite cannot create the shared-memory file a WAL-mode database needs, so a file with no
    write-ahead log left is opened as immutable, which it is there."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    if not os.access(path.parent, os.W_OK) and not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return uri


def _decode_text(raw: bytes) -> str:
    """TEXT values as str; bytes that are not UTF-8 (another program wrote them) show as U+FFFD
    instead of failing every read of the project."""
    return raw.decode("utf-8", errors="replace")


def _connect(path: str | Path, read_only: bool) -> sqlite3.Connection:
    """A connection set up for the store (PRAGMAs, which sqlite-utils has no API for)."""
    if path == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None)
    elif read_only:
        conn = sqlite3.connect(_read_uri(Path(path)), uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        conn.text_factory = _decode_text
        conn.execute("PRAGMA query_only = ON")
        return conn
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_S)
        conn.execute("PRAGMA journal_mode = WAL")
    conn.text_factory = _decode_text
    conn.execute("PRAGMA synchronous = FULL")  # a returned commit survives power loss, not just kill -9
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


# ----------------------------------------------------------------------------- locking
def _lock(path: Path) -> ProcessLock:
    """The process lock of a project opened for writing, creating the (empty) file first so that
    the lock can key on its inode; a file created here is removed again if the lock is refused."""
    created = not path.exists()
    try:
        if created:
            path.touch()
        check_single_name(path)
        return ProcessLock(path)
    except BaseException as exc:
        if created:
            with contextlib.suppress(OSError):  # not created after all on a read-only disk
                path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            why = storage_problem(exc, path) or f"{exc.strerror}. Choose a folder you can write to"
            raise StoreError(f"Cannot open {path} for writing: {why}. An existing project there can still be "
                             "opened read-only (dpo-engine stats/export read it).") from None
        raise
