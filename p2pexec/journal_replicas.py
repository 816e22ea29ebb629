"""
The replicated job logs a node keeps in its journal (issue 13): the batches
of records it holds of each job, as a replica or as the job's master, and the
ballots it promised and accepted; written in the journal's transaction
(L{write_replicas}), read back at start (L{read_batches}, L{read_logs}), and
pruned once the job ended long enough ago (L{prune_replica_logs}).

Plain functions over an open SQLite connection; the tables are
L{p2pexec.journal_schema}'s C{replica_jobs} and C{replica_batches}.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from p2pexec.journal_schema import transaction
from p2pexec.replica_log import Batch
from p2pexec.replicas import Ballot

if TYPE_CHECKING:
    import sqlite3


def write_replicas(
    db: sqlite3.Connection,
    ballots: dict[str, tuple[Ballot | None, Ballot | None]],
    batches: list[tuple[str, Batch]],
) -> None:
    """Write the marked ballots (promised, accepted) by job and the batches taken, within the caller's transaction."""
    if ballots:
        db.executemany(
            "INSERT OR REPLACE INTO replica_jobs (job, promised_epoch, promised_node, accepted_epoch, "
            "accepted_node) VALUES (?, ?, ?, ?, ?)",
            (
                (job, *_ballot_columns(promised), *_ballot_columns(accepted))
                for job, (promised, accepted) in ballots.items()
            ),
        )
    if batches:
        db.executemany(
            "INSERT INTO replica_batches (job, epoch, node, first_seq, last_seq, records) VALUES (?, ?, ?, ?, ?, ?)",
            ((job, b.ballot.epoch, b.ballot.node, b.first_seq, b.last_seq, b.raw) for job, b in batches),
        )


def read_batches(db: sqlite3.Connection, job: str) -> list[Batch]:
    """The batches of C{job}'s log written, in the order they were taken."""
    return [
        Batch(Ballot(epoch, node), first, last, bytes(raw))
        for epoch, node, first, last, raw in db.execute(
            "SELECT epoch, node, first_seq, last_seq, records FROM replica_batches WHERE job = ? ORDER BY id",
            (job,),
        )
    ]


def read_logs(db: sqlite3.Connection) -> list[tuple[str, Ballot | None, Ballot | None, list[Batch]]]:
    """Every job log written: (job, promised ballot, accepted ballot, batches in the order taken)."""
    logs: dict[str, tuple[Ballot | None, Ballot | None, list[Batch]]] = {}
    for job, p_epoch, p_node, a_epoch, a_node in db.execute(
        "SELECT job, promised_epoch, promised_node, accepted_epoch, accepted_node FROM replica_jobs"
    ):
        logs[job] = (_ballot(p_epoch, p_node), _ballot(a_epoch, a_node), [])
    for job, epoch, node, first, last, raw in db.execute(
        "SELECT job, epoch, node, first_seq, last_seq, records FROM replica_batches ORDER BY job, id"
    ):
        logs.setdefault(job, (None, None, []))[2].append(Batch(Ballot(epoch, node), first, last, bytes(raw)))
    return [(job, promised, accepted, batches) for job, (promised, accepted, batches) in logs.items()]


def prune_replica_logs(db: sqlite3.Connection, finished_before: float) -> list[str]:
    """
    Delete the logs of the jobs whose newest batch ends with an C{end}
    record that says they finished before C{finished_before} (see
    L{p2pexec.journal.Journal.prune_replicas}); the jobs whose logs were deleted.
    """
    with transaction(db):
        newest = db.execute(
            "SELECT job, records FROM replica_batches WHERE id IN (SELECT MAX(id) FROM replica_batches GROUP BY job)"
        )
        old = [job for job, records in newest if _log_ended_before(records, finished_before)]
        db.executemany("DELETE FROM replica_batches WHERE job = ?", ((job,) for job in old))
        db.executemany("DELETE FROM replica_jobs WHERE job = ?", ((job,) for job in old))
    return old


def _log_ended_before(records: bytes | str, moment: float) -> bool:
    """
    Whether a job's newest batch (its records as received, JSON) ends with
    an C{end} record that says the job finished before C{moment}: a log whose
    newest record is anything else (a reopened job's C{rerun}, or a job not
    ended) is kept, and so is a batch that cannot be read.
    """
    try:
        batch = json.loads(records)
        last = batch[-1] if isinstance(batch, list) and batch else None
    except ValueError:
        return False
    if not isinstance(last, dict) or last.get("kind") != "end":
        return False
    return _ended_before(json.dumps(last.get("data")), moment)


def _ended_before(data: str, moment: float) -> bool:
    """Whether the C{end} record C{data} (JSON) says its job finished before C{moment}, or says no time."""
    try:
        finished = json.loads(data).get("finished")
    except (ValueError, AttributeError):
        return True
    if not isinstance(finished, (int, float)) or isinstance(finished, bool):
        return True
    return finished < moment


def _ballot_columns(ballot: Ballot | None) -> tuple[int | None, str | None]:
    return (None, None) if ballot is None else (ballot.epoch, ballot.node)


def _ballot(epoch: int | None, node: str | None) -> Ballot | None:
    return None if epoch is None or node is None else Ballot(epoch, node)
