"""``SQLiteJobStore``: every job record and every event in one SQLite file, written off the event loop.

The file is ``DATA_DIR/jobs.sqlite3`` (WAL mode), next to a lock file that one server holds while it
runs, so two servers never share a history. Writes go through one writer thread: it takes every write
queued since its last commit, applies them in one transaction (group commit) and then resolves their
futures in the event loop, so an event is committed before it is fanned out. ``synchronous=FULL``
fsyncs each commit, so a committed event survives the server being killed and the machine losing
power; group commit keeps that to one fsync per batch, however many jobs write at once. (``snnmon serve
--store-sync normal`` opens it at ``synchronous=NORMAL``: no fsync per commit; a server crash still loses
nothing committed, a power cut may lose the last commits.) Reads (replays,
exports, the start-up load) run on a small pool of reader threads, each with its own connection; WAL
lets them read while the writer writes.

Frames are stored as the exact bytes sent, so a replay is byte-identical to the live stream.

A failed write (a full disk: "database or disk is full") fails its future with ``StoreError`` (``cause``
holds SQLite's own message, which the log names) and makes the store unhealthy; the next write that
commits makes it healthy again. ``probe()`` is such a write, for when nothing else is writing.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import orjson

from service.store import JobRecord, StoredEvent, StoredJob, StoreError

log = logging.getLogger("snnmon.store")

DATABASE_NAME = "jobs.sqlite3"
LOCK_NAME = "jobs.lock"
SCHEMA_VERSION = 1
MAX_BATCH = 512  # writes per transaction: bounds how long one commit holds the writer
READER_THREADS = 2  # replays are short page reads; two let one slow export not hold up streams
BUSY_TIMEOUT_MS = 5000  # a reader never blocks the WAL writer; this only covers checkpoints

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    finished INTEGER NOT NULL,
    record BLOB NOT NULL  -- JobRecord.to_dict() as JSON
);
CREATE INDEX IF NOT EXISTS jobs_by_creation ON jobs (created_at);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    numbered_at REAL NOT NULL,
    frame BLOB NOT NULL,  -- the SSE frame exactly as sent
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probe (  -- one row, rewritten to learn whether writes succeed again
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL
);
"""
UPSERT_JOB = ("INSERT INTO jobs (job_id, created_at, finished, record) VALUES (?, ?, ?, ?) "
              "ON CONFLICT (job_id) DO UPDATE SET finished = excluded.finished, record = excluded.record")
INSERT_EVENT = "INSERT INTO events (job_id, seq, event, numbered_at, frame) VALUES (?, ?, ?, ?, ?)"
PROBE = "INSERT INTO probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at"

Statement = tuple[str, tuple[Any, ...]]
T = TypeVar("T")


class _Write:
    __slots__ = ("statements", "future")

    def __init__(self, statements: list[Statement], future: asyncio.Future[None]):
        self.statements = statements
        self.future = future


_STOP = object()  # queued by close(): the writer commits what came before it, then exits


class SQLiteJobStore:
    def __init__(self, data_dir: str | os.PathLike[str], *, synchronous: str = "FULL"):
        if synchronous not in ("OFF", "NORMAL", "FULL"):
            raise ValueError("synchronous must be OFF, NORMAL or FULL")
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DATABASE_NAME
        self.healthy = False
        self._closed = True  # until open() has loaded the history, and again from close()
        self._synchronous = synchronous
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes: queue.SimpleQueue[_Write | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="snnmon-sqlite-read")
        self._reader_local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._lock_fd: int | None = None
        # called by the writer thread with each group commit's seconds (service.prometheus); None: not timed
        self.on_commit: Callable[[float], None] | None = None

    # -- open and close (event-loop thread)

    async def open(self) -> list[StoredJob]:
        self._loop = asyncio.get_running_loop()
        self._take_lock()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._writer = threading.Thread(target=self._write_loop, args=(ready,), name="snnmon-sqlite-write",
                                        daemon=True)
        self._writer.start()
        try:
            await ready
            jobs = await self._read(_load_jobs)
        except BaseException:
            await self.close()
            raise
        self.healthy = True
        self._closed = False
        log.info("job store: %s (%d job(s))", self.path, len(jobs))
        return jobs

    async def close(self) -> None:
        self.healthy = False
        self._closed = True
        if self._writer is not None:
            self._writes.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        await asyncio.to_thread(self._readers.shutdown, wait=True)
        with self._reader_lock:
            for connection in self._reader_connections:
                connection.close()
            self._reader_connections.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _take_lock(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot use data directory {self.data_dir}: {exc.strerror or exc}; "
                             "choose a writable one with --data-dir or SNNMON_DATA_DIR") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(f"another snnmon serve is using {self.data_dir} (it holds {LOCK_NAME}); "
                             "stop it, or give this server its own --data-dir") from None
        self._lock_fd = fd

    # -- writes (queued from the event-loop thread; committed by the writer thread)

    def put_job(self, record: JobRecord) -> asyncio.Future[None]:
        return self._submit([_upsert(record)])

    def append_event(self, job_id: str, event: StoredEvent, record: JobRecord) -> asyncio.Future[None]:
        return self._submit([(INSERT_EVENT, (job_id, event.seq, event.event, event.numbered_at, event.frame)),
                             _upsert(record)])

    def delete_job(self, job_id: str) -> asyncio.Future[None]:
        return self._submit([("DELETE FROM events WHERE job_id = ?", (job_id,)),
                             ("DELETE FROM jobs WHERE job_id = ?", (job_id,))])

    async def flush(self) -> None:
        await self._submit([])

    async def probe(self) -> bool:
        try:
            await self._submit([(PROBE, (time.time(),))])
        except StoreError:
            return False
        return True

    def _submit(self, statements: list[Statement]) -> asyncio.Future[None]:
        if self._writer is None or self._loop is None:
            raise StoreError("the job store is closed")
        future = self._loop.create_future()
        future.add_done_callback(_consume_error)  # failures are logged once, in _settle
        self._writes.put(_Write(statements, future))
        return future

    def _write_loop(self, ready: asyncio.Future[None]) -> None:
        """The writer thread: open, create the schema, then commit batches until _STOP."""
        try:
            connection = self._connect()
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":  # e.g. a network file system without shared memory
                log.warning("job store %s: WAL mode unavailable (journal_mode=%s); replays will wait for "
                            "commits", self.path, mode)
            connection.executescript(SCHEMA)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            error = StoreError(f"cannot open the job store {self.path}: {exc}")
            self._loop.call_soon_threadsafe(_set_exception, ready, error)
            return
        self._loop.call_soon_threadsafe(_set_result, ready)
        try:
            stopping = False
            while not stopping:
                batch = [self._writes.get()]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._writes.get_nowait())
                    except queue.Empty:
                        break
                stopping = _STOP in batch
                writes = [item for item in batch if item is not _STOP]
                if writes:
                    started = time.perf_counter()
                    results = self._commit(connection, writes)
                    if self.on_commit is not None:
                        self.on_commit(time.perf_counter() - started)
                    self._post(self._settle, results)
        finally:
            connection.close()

    def _commit(self, connection: sqlite3.Connection, writes: list[_Write]) -> list[tuple[_Write, str | None]]:
        """One transaction for the batch; if it fails, each write on its own, so one bad write fails alone."""
        try:
            _transaction(connection, [s for write in writes for s in write.statements])
            return [(write, None) for write in writes]
        except sqlite3.Error:
            pass
        results = []
        for write in writes:
            try:
                _transaction(connection, write.statements)
                results.append((write, None))
            except sqlite3.Error as exc:
                results.append((write, f"{type(exc).__name__}: {exc}"))
        return results

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody waits for these futures any more
            pass

    def _settle(self, results: list[tuple[_Write, str | None]]) -> None:
        """Event-loop thread: resolve the futures of one committed batch, in the order written."""
        for write, error in results:
            if write.future.done():
                continue
            if error is None:
                if not self.healthy and not self._closed and write.statements:
                    log.warning("job store %s: writes succeed again; ready for new jobs", self.path)
                    self.healthy = True
                write.future.set_result(None)
            else:
                if self.healthy:
                    log.error("job store %s: a write failed (%s); new jobs are refused (503) until a write "
                              "succeeds again, and jobs whose events cannot be saved are stopped",
                              self.path, error)
                self.healthy = False
                failure = StoreError(f"could not save to {self.path}: {error}")
                failure.cause = error  # e.g. "OperationalError: database or disk is full"
                write.future.set_exception(failure)

    # -- reads (reader threads)

    async def events_after(self, job_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        return await self._read(_events_after, job_id, after_seq, limit)

    async def events_named(self, job_id: str, event: str) -> list[StoredEvent]:
        return await self._read(_events_named, job_id, event)

    async def _read(self, query: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_query, query, args)

    def _run_query(self, query: Callable[..., T], args: tuple[Any, ...]) -> T:
        connection = getattr(self._reader_local, "connection", None)
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only = 1")
            self._reader_local.connection = connection
            with self._reader_lock:
                self._reader_connections.append(connection)
        return query(connection, *args)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and committed explicitly, never implicitly.
        # check_same_thread=False only so close() can close a reader's connection from another thread.
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        return connection


def _upsert(record: JobRecord) -> Statement:
    # serialised now, in the event loop: the record keeps changing after this call
    return UPSERT_JOB, (record.job_id, record.created_at, int(record.finished), orjson.dumps(record.to_dict()))


def _transaction(connection: sqlite3.Connection, statements: list[Statement]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in statements:
            connection.execute(sql, params)
        connection.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (SQLITE_FULL, SQLITE_IOERR) may have ended the transaction already; a ROLLBACK
        # then raises "cannot rollback - no transaction is active", which would hide the real error.
        if connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("job store: rollback after a failed write also failed: %s", exc)
        raise


def _load_jobs(connection: sqlite3.Connection) -> list[StoredJob]:
    rows = connection.execute(
        "SELECT record, (SELECT COALESCE(MAX(seq), 0) FROM events WHERE events.job_id = jobs.job_id) "
        "FROM jobs ORDER BY created_at, rowid").fetchall()
    return [StoredJob(JobRecord.from_dict(orjson.loads(record)), head_seq) for record, head_seq in rows]


def _events_after(connection: sqlite3.Connection, job_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
    rows = connection.execute("SELECT seq, event, frame, numbered_at FROM events WHERE job_id = ? AND seq > ? "
                              "ORDER BY seq LIMIT ?", (job_id, after_seq, limit))
    return [StoredEvent(seq, event, bytes(frame), numbered_at) for seq, event, frame, numbered_at in rows]


def _events_named(connection: sqlite3.Connection, job_id: str, event: str) -> list[StoredEvent]:
    rows = connection.execute("SELECT seq, event, frame, numbered_at FROM events WHERE job_id = ? AND event = ? "
                              "ORDER BY seq", (job_id, event))
    return [StoredEvent(seq, name, bytes(frame), numbered_at) for seq, name, frame, numbered_at in rows]


def _set_result(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _set_exception(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _consume_error(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
