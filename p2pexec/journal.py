"""
The master's durable journal: jobs, tasks, attempts and results in SQLite.

A master writes what it decides to the journal before it acts on it: a job
before it is acknowledged, an attempt before INSTRUCTION_ASSIGNMENT goes out,
a result before EXECUTION_CONFIRMATION is answered, a job's end before
TASK_COMPLETE and the results file.  A master killed at any moment and
started again with the same C{--state-dir} finds every job it had accepted,
every result it had acknowledged and the latest attempt of every task.

Writes are batched: callers mark what changed (L{Journal.job_added},
L{Journal.task_changed}, L{Journal.job_changed}) and the journal writes the
current state of everything marked in one transaction per reactor turn
(L{Journal.commit}, run at the end of the turn or called directly).
L{Journal.durable} is a Deferred that fires once what was marked so far is on
disk (in SQLite's WAL, which survives the process being killed; with
C{synchronous=NORMAL} a power cut may lose the last transactions, never
corrupt the file).

Only one node may use a state directory at a time: a lock file enforces it.

The file itself (its schema, its rows, opening and checking it) is
L{p2pexec.journal_schema}; what is wrong when it cannot be used or written
is L{p2pexec.journal_health}; the replicated logs a node holds in it (as a
replica, or as their master) are read, written and pruned by
L{p2pexec.journal_replicas}.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2pexec.interfaces import IJobState, ITaskState
from p2pexec.journal_health import JournalError, JournalProblem, JournalWriteError, write_failure_reason
from p2pexec.journal_replicas import prune_replica_logs, read_batches, read_logs, write_replicas
from p2pexec.journal_schema import (
    JOB_COLUMNS,
    JOURNAL_FILE,
    TASK_COLUMN_NAMES,
    TASK_COLUMNS,
    StoredJob,
    lock_state_dir,
    open_database,
    spec_json,
    stored_task,
    task_row,
    transaction,
)
from p2pexec.log import NodeLogger
from p2pexec.replica_log import Batch
from p2pexec.replicas import Ballot

if TYPE_CHECKING:
    import sqlite3

log = NodeLogger()

RETRY_DELAY = 5.0
"""Seconds before a failed commit (a full disk, say) is tried again."""


GROUP_COMMIT_DELAY = 0.01
"""Seconds a node's marked changes may wait to share a transaction.  What
must be on disk before a message leaves waits for it (L{Journal.durable}),
or forces it (L{Journal.commit})."""


class NullJournal:
    """
    A journal that keeps nothing on disk: for nodes run without a state
    directory.  The job logs such a node holds as a replica are kept in its
    memory, having nowhere else to be (they are lost with the process).
    """

    path: str | None = None
    problem: JournalProblem | None = None

    def __init__(self) -> None:
        self._batches: dict[str, list[Batch]] = {}
        self.replicas_pruned: list[str] = []

    def job_added(self, job: IJobState) -> None:
        """Nothing to write."""

    def task_changed(self, job_id: str, record: ITaskState) -> None:
        """Nothing to write."""

    def job_changed(self, job: IJobState) -> None:
        """Nothing to write."""

    def durable(self) -> Deferred[None]:
        """Already durable: there is nothing to wait for."""
        return succeed(None)

    def commit(self) -> None:
        """Nothing to write."""

    def unfinished_jobs(self) -> list[StoredJob]:
        """None: nothing was kept."""
        return []

    def finished_job(self, source: str) -> StoredJob | None:
        """None: nothing was kept."""
        return None

    def withdraw(self, job_id: str) -> None:
        """Nothing was marked."""

    def prune(self, finished_before: float) -> int:
        """Nothing to delete: nothing was kept."""
        return 0

    def last_pruned(self) -> list[str]:
        """Nothing was ever deleted."""
        return []

    def prune_replicas(self, finished_before: float) -> int:
        """Nothing to delete: nothing was kept."""
        return 0

    def replica_changed(self, job: str, promised: Ballot | None, accepted: Ballot | None) -> None:
        """Nothing to write."""

    def replica_batch(self, job: str, batch: Batch) -> None:
        """Keep C{batch} of C{job}'s log in memory."""
        self._batches.setdefault(job, []).append(batch)

    def replica_batches(self, job: str) -> list[Batch]:
        """The batches of C{job}'s log kept, in the order they were taken."""
        return list(self._batches.get(job, ()))

    def replica_logs(self) -> list[tuple[str, Ballot | None, Ballot | None, list[Batch]]]:
        """None: nothing was kept from an earlier run."""
        return []

    def close(self) -> None:
        """Nothing to release."""


class Journal:
    """
    The SQLite journal in one node's state directory.

    @ivar path: the journal file.
    @ivar commits: how many transactions were written (a metric).
    @ivar problem: why the journal cannot be written at the moment (the
        last write failed), or C{None} while it can.
    """

    def __init__(
        self,
        state_dir: str,
        clock: IReactorTime,
        commit_delay: float = 0.0,
        before_write: Callable[[], None] | None = None,
        connection_factory: type[sqlite3.Connection] | None = None,
    ) -> None:
        """
        Open (creating if needed) the journal in C{state_dir}.

        @param commit_delay: how long marked changes may wait for their
            transaction: 0 writes at the end of the reactor turn; a node
            uses L{GROUP_COMMIT_DELAY}, so that a busy master writes a few
            hundred transactions a second, not one per task.  L{commit}
            writes at once whatever waits.
        @param before_write: called before each transaction; whatever
            C{OSError} or C{sqlite3.Error} it raises fails that write as
            the disk would (a seam for fault tests: a full disk, say).
        @param connection_factory: the L{sqlite3.Connection} subclass the
            journal's connection is made of (C{sqlite3.connect}'s
            C{factory}); a seam for fault tests, which can make a statement
            fail halfway through a transaction, as a full disk or a busy
            file does.  A plain connection by default.

        @raise JournalError: if the folder cannot be made or locked, or the
            journal file is not a usable journal; the file is then left
            exactly as it was.
        """
        self._clock = clock
        self._commit_delay = commit_delay
        self._before_write = before_write
        self._connection_factory = connection_factory
        self.path = os.path.join(state_dir, JOURNAL_FILE)
        self._folder = state_dir
        self.problem: JournalProblem | None = None
        self._failing_since = 0.0
        self._lock_fd = lock_state_dir(state_dir)
        # A node that has never been a master has no journal file: SQLite
        # (2 MiB of a worker's memory) is loaded when it first has one to write.
        self._db: sqlite3.Connection | None = None
        if os.path.exists(self.path):
            try:
                self._db = open_database(self.path, self._connection_factory)
            except BaseException:
                os.close(self._lock_fd)
                raise
        self._new_jobs: dict[str, IJobState] = {}
        self._changed_jobs: dict[str, IJobState] = {}
        self._changed_tasks: dict[tuple[str, str], ITaskState] = {}
        self._replica_ballots: dict[str, tuple[Ballot | None, Ballot | None]] = {}
        self._replica_batches: list[tuple[str, Batch]] = []
        self._waiters: list[Deferred[None]] = []
        self._commit_call: IDelayedCall | None = None
        self.commits = 0
        self._last_pruned: list[str] = []
        self.replicas_pruned: list[str] = []
        """The jobs whose replicated logs the last L{prune_replicas} deleted (their files are released)."""

    # -- marking ------------------------------------------------------------

    def job_added(self, job: IJobState) -> None:
        """A job was accepted: write it and all its tasks."""
        self._new_jobs[job.id] = job
        self._schedule()

    def task_changed(self, job_id: str, record: ITaskState) -> None:
        """A task's state, attempt or result changed."""
        if job_id not in self._new_jobs:
            self._changed_tasks[(job_id, record.spec.id)] = record
            self._schedule()

    def job_changed(self, job: IJobState) -> None:
        """A job finished or was cancelled."""
        if job.id not in self._new_jobs:
            self._changed_jobs[job.id] = job
        self._schedule()

    def replica_changed(self, job: str, promised: Ballot | None, accepted: Ballot | None) -> None:
        """What this node promised and last accepted for C{job}'s log changed."""
        self._replica_ballots[job] = (promised, accepted)
        self._schedule()

    def replica_batch(self, job: str, batch: Batch) -> None:
        """This node holds C{batch} of C{job}'s log (one row, the records as received; see L{p2pexec.replica_log})."""
        self._replica_batches.append((job, batch))
        self._schedule()

    def withdraw(self, job_id: str) -> None:
        """
        Forget a job added (L{job_added}) but not written yet, as if it had
        never been: its submission was refused because the journal could
        not be written.
        """
        self._new_jobs.pop(job_id, None)
        self._changed_jobs.pop(job_id, None)
        for key in [key for key in self._changed_tasks if key[0] == job_id]:
            del self._changed_tasks[key]

    def durable(self) -> Deferred[None]:
        """Fires once everything marked so far is written (at once if nothing is waiting)."""
        if not self._dirty():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _dirty(self) -> bool:
        return bool(
            self._new_jobs
            or self._changed_jobs
            or self._changed_tasks
            or self._replica_ballots
            or self._replica_batches
        )

    def _schedule(self) -> None:
        if self._commit_call is None:
            self._commit_call = self._clock.callLater(self._commit_delay, self._scheduled_commit)

    # -- writing ------------------------------------------------------------

    def commit(self) -> None:
        """
        Write everything marked so far in one transaction, then fire the
        L{durable} Deferreds.  A failed write (disk full, say) is logged,
        scheduled again after L{RETRY_DELAY}, and raised: the caller must not
        act as if it were written.  What it held stays marked, and the
        L{durable} Deferreds keep waiting.
        """
        if self._commit_call is not None:
            if self._commit_call.active():
                self._commit_call.cancel()
            self._commit_call = None
        if not self._dirty() and self.problem is None:
            self._fire_waiters()
            return
        # With nothing marked but a failed write behind it (what failed was
        # withdrawn), the journal still tries a small write, so that it knows
        # when it can be written again.
        if self._lock_fd < 0:
            raise JournalError(f"the journal {self.path} is closed; nothing more can be written to it")
        import sqlite3

        new_jobs, self._new_jobs = self._new_jobs, {}
        changed_jobs, self._changed_jobs = self._changed_jobs, {}
        changed_tasks, self._changed_tasks = self._changed_tasks, {}
        replica_ballots, self._replica_ballots = self._replica_ballots, {}
        replica_batches, self._replica_batches = self._replica_batches, []
        try:
            if self._before_write is not None:
                self._before_write()
            if self._db is None:
                self._db = open_database(self.path, self._connection_factory)
            db = self._db
            with transaction(db):
                for job in new_jobs.values():
                    db.execute(
                        f"INSERT OR REPLACE INTO jobs ({JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                        (job.id, job.source, job.started_at, int(job.cancelled), job.finished_at, job.priority),
                    )
                    db.executemany(
                        f"INSERT OR REPLACE INTO tasks (job, id, seq, kind, spec, {TASK_COLUMNS}) "
                        f"VALUES (?, ?, ?, ?, ?, {', '.join('?' * len(TASK_COLUMN_NAMES))})",
                        (
                            (job.id, record.spec.id, seq, record.spec.kind, spec_json(record.spec)) + task_row(record)
                            for seq, record in enumerate(job.tasks.values())
                        ),
                    )
                if changed_tasks:
                    # Most changes are hand-outs of tasks that have no result,
                    # failure or loss yet: those columns are still as first
                    # written, so only three need writing (half the cost).
                    plain = [
                        (record.state_name, record.attempt, record.worker) + key
                        for key, record in changed_tasks.items()
                        if record.result is None and not record.failures and not record.losses
                    ]
                    if plain:
                        db.executemany(
                            "UPDATE tasks SET state = ?, attempt = ?, worker = ? WHERE job = ? AND id = ?", plain
                        )
                    if len(plain) < len(changed_tasks):
                        db.executemany(
                            f"UPDATE tasks SET {', '.join(f'{name} = ?' for name in TASK_COLUMN_NAMES)} "
                            "WHERE job = ? AND id = ?",
                            (
                                task_row(record) + key
                                for key, record in changed_tasks.items()
                                if not (record.result is None and not record.failures and not record.losses)
                            ),
                        )
                for job in changed_jobs.values():
                    db.execute(
                        "UPDATE jobs SET finished = ?, cancelled = ? WHERE id = ?",
                        (job.finished_at, int(job.cancelled), job.id),
                    )
                if replica_ballots or replica_batches:
                    write_replicas(db, replica_ballots, replica_batches)
                if self.problem is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('written_again', ?)", (str(time.time()),)
                    )
        except (sqlite3.Error, OSError, JournalError) as e:
            # Nothing of this batch was written: keep it marked (behind what
            # was marked since), to be written by the next commit.
            self._new_jobs = {**new_jobs, **self._new_jobs}
            self._changed_jobs = {**changed_jobs, **self._changed_jobs}
            self._changed_tasks = {**changed_tasks, **self._changed_tasks}
            self._replica_ballots = {**replica_ballots, **self._replica_ballots}
            self._replica_batches = replica_batches + self._replica_batches
            # Whoever waits for durable() goes on waiting: for the next
            # commit that succeeds, tried again in RETRY_DELAY seconds.
            if self._commit_call is None:
                self._commit_call = self._clock.callLater(RETRY_DELAY, self._scheduled_commit)
            self._write_failed(e)
            raise JournalError(f"could not write the journal {self.path}: {e}") from e
        self.commits += 1
        if self.problem is not None:
            log.info(
                "The journal {path} can be written again, after {seconds:.0f}s: what waited for it goes out "
                "now, and new jobs are accepted again",
                path=self.path,
                seconds=self._clock.seconds() - self._failing_since,
            )
            self.problem = None
        self._fire_waiters()

    def _write_failed(self, error: BaseException) -> None:
        """Record why a write failed (L{problem}) and log it: in full the first time and when the reason changes."""
        if isinstance(error, JournalWriteError):
            reason = error.reason
        else:
            reason = write_failure_reason(error, self._folder) or "cannot be written"
        detail = str(error)
        if isinstance(error, OSError) and error.strerror:
            detail = error.strerror
        previous = self.problem
        if previous is None:
            self._failing_since = self._clock.seconds()
        self.problem = JournalProblem(
            path=self.path,
            reason=reason,
            error=detail,
            since=previous.since if previous is not None else time.time(),
        )
        if previous is None or previous.reason != reason:
            log.error(
                "Could not write the journal {path}: {reason} ({error}). Until it can be written, nothing that "
                "depends on it is sent (assignments to other nodes, answers to confirmations, job ends) and new "
                "jobs are refused; trying again every {delay:g}s",
                path=self.path,
                reason=reason,
                error=detail,
                delay=RETRY_DELAY,
            )
        else:
            log.error(
                "Could not write the journal {path} again: {reason} ({error}), for {seconds:.0f}s now; trying "
                "again in {delay:g}s",
                path=self.path,
                reason=reason,
                error=detail,
                delay=RETRY_DELAY,
                seconds=self._clock.seconds() - self._failing_since,
            )

    def _scheduled_commit(self) -> None:
        """A commit from the clock: a failure is logged (and retried), not raised into the reactor."""
        self._commit_call = None
        try:
            self.commit()
        except JournalError:
            pass

    def _fire_waiters(self) -> None:
        waiting, self._waiters = self._waiters, []
        for d in waiting:
            d.callback(None)

    # -- reading ------------------------------------------------------------

    def unfinished_jobs(self) -> list[StoredJob]:
        """
        The jobs not finished, as stored, oldest first.

        @raise JournalError: if a stored row cannot be read back.
        """
        if self._db is None:
            return []
        rows = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE finished IS NULL ORDER BY started, id"
        ).fetchall()
        return [self._read_job(*row) for row in rows]

    def finished_job(self, source: str) -> StoredJob | None:
        """
        The job from C{source} that finished last (its tasks and results as
        stored), if the journal still has one: finished jobs are pruned
        after a week (see L{prune}).

        @raise JournalError: if a stored row cannot be read back.
        """
        if self._db is None:
            return None
        row = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE source = ? AND finished IS NOT NULL "
            "ORDER BY finished DESC, id DESC LIMIT 1",
            (source,),
        ).fetchone()
        return None if row is None else self._read_job(*row)

    def _read_job(
        self, job_id: str, source: str | None, started: float, cancelled: int, finished: float | None, priority: int
    ) -> StoredJob:
        """One job and its tasks, read back from the database."""
        assert self._db is not None
        tasks = []
        for task_id, kind, spec, *row in self._db.execute(
            f"SELECT id, kind, spec, {TASK_COLUMNS} FROM tasks WHERE job = ? ORDER BY seq",
            (job_id,),
        ):
            try:
                tasks.append(stored_task(task_id, kind, spec, row))
            except (ValueError, TypeError) as e:
                raise JournalError(
                    f"journal {self.path}: job {job_id} has a task that cannot be read back ({e}); "
                    f"the file was left untouched"
                ) from e
        return StoredJob(job_id, source, started, bool(cancelled), tasks, finished, priority)

    def replica_batches(self, job: str) -> list[Batch]:
        """The batches of C{job}'s log this node holds (written or waiting to be), in the order it took them."""
        stored = [] if self._db is None else read_batches(self._db, job)
        return stored + [batch for owner, batch in self._replica_batches if owner == job]

    def replica_logs(self) -> list[tuple[str, Ballot | None, Ballot | None, list[Batch]]]:
        """Every job log this node holds: (job, promised ballot, accepted ballot, batches in the order taken)."""
        return [] if self._db is None else read_logs(self._db)

    def prune(self, finished_before: float) -> int:
        """
        Delete the jobs that finished before C{finished_before} (wall-clock
        seconds since the epoch), with their tasks.

        @return: how many jobs were deleted.
        """
        self._last_pruned = []
        if self._db is None:
            return 0
        with transaction(self._db):
            old = [row[0] for row in self._db.execute("SELECT id FROM jobs WHERE finished < ?", (finished_before,))]
            self._db.executemany("DELETE FROM tasks WHERE job = ?", ((job_id,) for job_id in old))
            self._db.executemany("DELETE FROM jobs WHERE id = ?", ((job_id,) for job_id in old))
        self._last_pruned = old
        return len(old)

    def last_pruned(self) -> list[str]:
        """The ids of the jobs the last L{prune} deleted (their files are released, see L{p2pexec.file_holds})."""
        return list(self._last_pruned)

    def prune_replicas(self, finished_before: float) -> int:
        """
        Delete the replicated logs (records, promise and accepted ballot) of
        the jobs that ended before C{finished_before} (wall-clock seconds
        since the epoch), as this node holds them as a replica or as their
        master: those whose C{end} record says they finished then.  An
        C{end} record without a readable C{finished} time (a peer that does
        not send one) counts as old: the log is deleted at the first prune
        after the job ended.  The logs of jobs not ended are kept.

        @return: how many job logs were deleted.
        """
        self.replicas_pruned = [] if self._db is None else prune_replica_logs(self._db, finished_before)
        return len(self.replicas_pruned)

    def abandon(self) -> None:
        """
        Release the journal without writing what is marked, as a process
        killed at this moment would (for fault tests).
        """
        if self._commit_call is not None and self._commit_call.active():
            self._commit_call.cancel()
        self._commit_call = None
        self._new_jobs.clear()
        self._changed_jobs.clear()
        self._changed_tasks.clear()
        self._replica_ballots.clear()
        self._replica_batches.clear()
        self._waiters.clear()
        if self._db is not None:
            self._db.close()
        os.close(self._lock_fd)

    def close(self) -> None:
        """
        Write what is marked, close the database and release the state
        directory.  If that last write fails, it is not retried: no retry
        is left scheduled on a closed database.  Closing again does nothing.
        """
        if self._lock_fd < 0:
            return
        try:
            self.commit()
        finally:
            if self._commit_call is not None:
                if self._commit_call.active():
                    self._commit_call.cancel()
                self._commit_call = None
            if self._db is not None:
                self._db.close()
                self._db = None
            os.close(self._lock_fd)
            self._lock_fd = -1


def default_state_dir(name: str, environ: dict[str, str] | None = None) -> str:
    """C{$XDG_STATE_HOME/p2pexec/NAME}, with XDG's default C{~/.local/state}."""
    environ = dict(os.environ) if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "p2pexec", name)


def open_journal(state_dir: str | None, clock: IReactorTime) -> Journal | NullJournal:
    """A node's L{Journal} in C{state_dir} (group commit), or a L{NullJournal} when it is C{None}."""
    if state_dir is None:
        return NullJournal()
    return Journal(state_dir, clock, commit_delay=GROUP_COMMIT_DELAY)
