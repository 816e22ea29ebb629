"""
The journal file: its SQL schema, how a task is stored in a row and read
back (L{StoredJob}, L{StoredTask}), the state directory's lock, and opening
a file, which refuses one that is damaged, foreign or of another schema and
leaves it exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attr

from p2pexec.file_values import result_outputs_from_wire
from p2pexec.interfaces import ITaskState
from p2pexec.journal_health import JournalError, JournalWriteError, write_failure_reason
from p2pexec.model import TaskResult, TaskSpec

if TYPE_CHECKING:
    import sqlite3

SCHEMA_VERSION = 2

JOURNAL_FILE = "journal.sqlite3"
LOCK_FILE = "lock"

CACHE_KIB = 256
"""SQLite's page cache for the journal, in KiB (its default is 2,000).  The
journal appends and updates rows mostly in order, so a small cache costs no
time (10,000 tasks inserted, updated twice and a replica batch per 300
results: the same CPU with 256 as with 1,024 KiB), and it is resident
memory on every node that journals, a replica's included: 1,024 KiB cost
0.75 MiB more than 256 (VmHWM, W4)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    source TEXT,
    started REAL NOT NULL,
    finished REAL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tasks (
    job TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT,
    failures INTEGER NOT NULL,
    losses INTEGER NOT NULL,
    result_attempt INTEGER,
    result_status TEXT,
    result_node TEXT,
    exit_code INTEGER,
    duration REAL,
    stdout TEXT,
    stderr TEXT,
    error TEXT,
    PRIMARY KEY (job, id)
) WITHOUT ROWID;
"""

REPLICA_SCHEMA = """
CREATE TABLE IF NOT EXISTS replica_jobs (
    job TEXT PRIMARY KEY,
    promised_epoch INTEGER,
    promised_node TEXT,
    accepted_epoch INTEGER,
    accepted_node TEXT
);
CREATE TABLE IF NOT EXISTS replica_records (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    node TEXT NOT NULL,
    PRIMARY KEY (job, seq)
) WITHOUT ROWID;
"""
"""The replicated logs of the jobs this node is a replica (or master) of, and its promises
(see L{p2pexec.replication}); added to a file of schema 2 when missing, so that no older
journal is refused for lacking them."""

BATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS replica_batches (
    id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    node TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    records BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS replica_batches_job ON replica_batches (job, id);
INSERT INTO replica_batches (job, epoch, node, first_seq, last_seq, records)
    SELECT job, epoch, node, seq, seq, CAST('[{"seq":' || seq || ',"kind":"' || kind || '","data":' || data || '}]' AS BLOB)
    FROM replica_records ORDER BY job, seq;
DELETE FROM replica_records;
"""
"""The job logs as batches, one row per REPLICATE taken, its records as received (see
L{p2pexec.replica_log}), in the order taken (C{id}).  Added when missing; the rows of
C{replica_records} (one per record, as an earlier p2pexec wrote them) move into it, each
as a batch of one."""


RESULT_COLUMNS = (
    ("result_started", "REAL"),
    ("result_signal", "INTEGER"),
    ("stdout_size", "INTEGER"),
    ("stderr_size", "INTEGER"),
    ("output_cut", "INTEGER"),
    ("result_outputs", "TEXT"),
)
"""The columns of C{tasks} for what a result says since issue 14 (L{TaskResult}'s C{started},
C{signal}, C{stdout_size}, C{stderr_size}, C{output_cut}; NULL: unknown) and issue 16 (its
C{outputs}, as a JSON list of their wire form; NULL: none); added to a file that lacks them
(ALTER TABLE ... ADD COLUMN), its rows keeping NULL, so that no journal of an earlier p2pexec
is refused for lacking them."""


@attr.s(auto_attribs=True, frozen=True)
class StoredTask:
    """One task as the journal has it."""

    spec: TaskSpec
    state: str
    attempt: int
    worker: str | None
    failures: int
    losses: int
    result: TaskResult | None


@attr.s(auto_attribs=True, frozen=True)
class StoredJob:
    """
    One job as the journal has it, its tasks in job order.

    @ivar finished: when it finished (clock seconds), or C{None} while it
        is unfinished.
    """

    id: str
    source: str | None
    started: float
    """When it was accepted, by the wall clock of the process that accepted it."""
    cancelled: bool
    tasks: list[StoredTask]
    finished: float | None = None
    priority: int = 0
    """Higher runs first (see L{p2pexec.fairshare}); 0 in a file written before it was kept."""


JOB_COLUMNS = "id, source, started, cancelled, finished, priority"
"""The columns of C{jobs} that L{p2pexec.journal.Journal} reads back, in its order."""


TASK_COLUMN_NAMES = (
    "state",
    "attempt",
    "worker",
    "failures",
    "losses",
    "result_attempt",
    "result_status",
    "result_node",
    "exit_code",
    "duration",
    "stdout",
    "stderr",
    "error",
    *(name for name, _ in RESULT_COLUMNS),
)
TASK_COLUMNS = ", ".join(TASK_COLUMN_NAMES)
_NO_RESULT = (None,) * (len(TASK_COLUMN_NAMES) - 5)


def task_row(record: ITaskState) -> tuple[Any, ...]:
    """The values of L{TASK_COLUMN_NAMES} for a task (plain columns: no JSON to encode per result)."""
    head = (record.state_name, record.attempt, record.worker, record.failures, record.losses)
    result = record.result
    if result is None:
        return head + _NO_RESULT
    return head + (
        result.attempt,
        result.status,
        result.node,
        result.exit_code,
        result.duration,
        result.stdout,
        result.stderr,
        result.error,
        result.started,
        result.signal,
        result.stdout_size,
        result.stderr_size,
        None if result.output_cut is None else int(result.output_cut),
        json.dumps([each.to_wire() for each in result.outputs], ensure_ascii=False) if result.outputs else None,
    )


def spec_json(spec: TaskSpec) -> str | None:
    """A task's fields beyond its id and kind as JSON, or None for an instruction."""
    data = spec.to_wire()
    del data["id"], data["kind"]
    return json.dumps(data, ensure_ascii=False) if data else None


def stored_task(task_id: str, kind: str, spec: str | None, row: list[Any]) -> StoredTask:
    """A task read back from its row (its spec validated again, as on the wire)."""
    data = {} if spec is None else json.loads(spec)
    if not isinstance(data, dict):
        raise ValueError(f"task {task_id!r}: its stored spec is not an object")
    data.update(id=task_id, kind=kind)
    state, attempt, worker, failures, losses, r_attempt, status, node, exit_code, duration, stdout, stderr, error = row[
        :13
    ]
    started, signal, stdout_size, stderr_size, output_cut, outputs = row[13:]
    result = None
    if status is not None:
        result = TaskResult(
            task_id=task_id,
            attempt=r_attempt,
            status=status,
            node=node,
            exit_code=exit_code,
            duration=duration or 0.0,
            stdout=stdout or "",
            stderr=stderr or "",
            error=error,
            started=started,
            signal=signal,
            stdout_size=stdout_size,
            stderr_size=stderr_size,
            output_cut=None if output_cut is None else bool(output_cut),
            outputs=() if outputs is None else result_outputs_from_wire(json.loads(outputs), f"task {task_id!r}"),
        )
    return StoredTask(
        spec=TaskSpec.from_wire(data),
        state=state,
        attempt=attempt,
        worker=worker,
        failures=failures,
        losses=losses,
        result=result,
    )


def lock_state_dir(state_dir: str) -> int:
    """Make C{state_dir} and hold its lock file; return the lock's descriptor."""
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise JournalError(f"cannot create the state directory {state_dir}: {e.strerror}") from None
    lock_path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise JournalError(f"cannot open {lock_path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise JournalError(
                f"the state directory {state_dir} is in use by another p2pexec node (pid {holder}); "
                f"give each node its own --state-dir"
            ) from None
        raise JournalError(f"cannot lock {lock_path}: {e.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def execute_statements(db: sqlite3.Connection, script: str, separator: str = ";") -> None:
    """Execute each statement of C{script} (split at C{separator}), skipping the empty ones."""
    for statement in script.split(separator):
        if statement.strip():
            db.execute(statement)


def open_database(path: str, factory: type[sqlite3.Connection] | None = None) -> sqlite3.Connection:
    """Open and check the journal (a connection of class C{factory}); create its tables only in a healthy file."""
    import sqlite3

    existed = os.path.exists(path)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=factory or sqlite3.Connection)
    except sqlite3.Error as e:
        reason = write_failure_reason(e, os.path.dirname(path) or ".") or "cannot open the file"
        raise JournalWriteError(f"cannot open the journal {path}: {reason} ({e})", reason) from None
    try:
        if existed:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise JournalError(
                    f"the journal {path} is damaged ({'; '.join(problems[:3])}); it was left untouched: "
                    f"move it away to start with an empty journal (its unfinished jobs are then forgotten)"
                )
        # Check everything before changing anything: a file that is not our
        # journal must be left byte for byte as it was.
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise JournalError(f"{path} is an SQLite database but not a p2pexec journal; it was left untouched")
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):
                raise JournalError(
                    f"the journal {path} has schema {row[0] if row else 'unknown'}; this p2pexec reads "
                    f"schema {SCHEMA_VERSION}; it was left untouched: use the p2pexec that wrote it to "
                    f"finish its jobs, or move it away to start with an empty journal"
                )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        if "meta" not in tables:
            with transaction(db):
                execute_statements(db, _SCHEMA)
                db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        if "jobs" in tables and "priority" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
            # Added to a file of schema 2 when missing, as the replica tables are.
            db.execute("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
        if "replica_records" not in tables:
            with transaction(db):
                execute_statements(db, REPLICA_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
        missing = [(name, kind) for name, kind in RESULT_COLUMNS if name not in columns]
        if missing:
            with transaction(db):
                for name, kind in missing:
                    db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")
        if "replica_batches" not in tables:
            with transaction(db):
                execute_statements(db, BATCH_SCHEMA, ";\n")
    except JournalError:
        db.close()
        raise
    except sqlite3.DatabaseError as e:
        db.close()
        disk_reason = write_failure_reason(e, os.path.dirname(path) or ".")
        if disk_reason is not None:
            # The file may be fine: the disk under it is not (full, read-only).
            raise JournalWriteError(f"the journal {path} cannot be written: {disk_reason} ({e})", disk_reason) from None
        raise JournalError(
            f"the journal {path} cannot be read ({e}); it was left untouched: move it away to start "
            f"with an empty journal (its unfinished jobs are then forgotten)"
        ) from None
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """
    BEGIN ... COMMIT, or ROLLBACK if anything fails, COMMIT included (the
    connection is in autocommit mode).  A COMMIT that fails (the file busy,
    the disk full) may leave the transaction open; it is rolled back, so
    that the next attempt can BEGIN again.
    """
    db.execute("BEGIN")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(Exception):
                db.execute("ROLLBACK")
        raise
