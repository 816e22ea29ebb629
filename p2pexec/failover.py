"""
Master failover, the part that talks: a node's replicated job logs as their
master (REPLICATE sent once per group-commit window, commits awaited), as a
replica (REPLICATE and PROMISE answered, records written to the journal),
and as a successor (a lost master's jobs taken over with PROMISE, then
announced with JOB_LEADER).  The decisions are L{p2pexec.replication}'s;
docs/reliability.rst says what they guarantee.

With C{--replicas 0} nothing here sends a thing: a job accepted then has a
replica set of one, and its commits are its journal's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.directory import JobDirectory
from p2pexec.journal import GROUP_COMMIT_DELAY
from p2pexec.log import NodeLogger
from p2pexec.model import TaskResult, TaskSpec, ValidationError
from p2pexec.replicas import Ballot, ReplicaSet, parse_stale, stale_description
from p2pexec.replication import (
    CANCEL,
    END,
    JOB,
    RESULT,
    MasterLog,
    Record,
    ReplicaStore,
    StaleBallot,
    Takeover,
    job_records,
    rebuild,
    result_record,
)
from p2pexec.succession import Succession

if TYPE_CHECKING:
    from p2pexec.interfaces import IJournal, INode
    from p2pexec.job import Job
    from p2pexec.master import Master
    from p2pexec.membership import PeerTable

log = NodeLogger()

PART_BYTES = commands.MAX_VALUE_BYTES - 4096
"""The most bytes of task specs one C{job} record carries (it must fit in one REPLICATE with its envelope)."""


class Deposed(Exception):
    """This node no longer leads the job: a newer ballot does (nothing of the job is acknowledged)."""

    def __init__(self, job: str, newer: Ballot) -> None:
        super().__init__(f"{newer.node} took job {job} over at epoch {newer.epoch}")
        self.newer = newer


class Replication(Succession):
    """
    One node's replicated job logs (see the module's docstring).

    @ivar logs: the logs of the jobs this node leads, by job.
    @ivar stores: what this node holds of every job log it is a member of
        (those it leads included), by job.
    @ivar directory: the newest known leader of each job.
    @ivar sent: how many REPLICATEs went out (a metric, and the test that
        C{--replicas 0} sends none).
    """

    def __init__(self, replicas: int, grace: float, clock: IReactorTime, directory: JobDirectory) -> None:
        self.replicas = replicas
        self.grace = grace
        self._clock = clock
        self.directory = directory
        self.logs: dict[str, MasterLog] = {}
        self.stores: dict[str, ReplicaStore] = {}
        self._members: dict[str, tuple[str, ...]] = {}
        self._waiters: dict[str, list[tuple[int, Deferred[None]]]] = {}
        self._flush_call: IDelayedCall | None = None
        self._dirty: set[str] = set()
        self._stalled: set[str] = set()
        self._takeovers: dict[str, IDelayedCall | Takeover] = {}
        self._silence: dict[str, str] = {}
        self._seen: dict[str, Ballot] = {}
        self._led_before: set[str] = set()
        """Jobs this node led before it restarted, until it leads them again or learns who does."""
        """Per job, the highest ballot a refusal named: a takeover tries above it."""
        self.sent = 0

    def wire(self, node: INode, peers: PeerTable, master: Master, journal: IJournal) -> None:
        """Connect to the node, its peer table (who is live), its master and its journal."""
        self._node = node
        self._peers = peers
        self._master = master
        self._journal = journal

    @property
    def _me(self) -> str:
        return self._node.info.name

    # -- as a master ------------------------------------------------------------------------

    def job_accepted(self, job: Job) -> None:
        """A job was accepted here: choose its replica set and log the job (nothing with C{--replicas 0})."""
        if self.replicas <= 0:
            return
        live = [record.info.name for record in self._peers.connected_peers()]
        members = ReplicaSet.choose(job.id, self._me, live, self.replicas).members
        if len(members) == 1:
            # No other node to replicate to, so nothing could take the job
            # over: keep no log of it (a log held every record in memory, 8
            # MiB for W4's 10,000 tasks) and run it as --replicas 0 would.
            log.info(
                "Node {name} does not replicate job {job}: no other node is connected, so it has no failover",
                name=self._me,
                job=job.id,
            )
            return
        ballot = Ballot(1, self._me)
        self.logs[job.id] = log_ = MasterLog(members, self._me, ballot)
        self._members[job.id] = members
        specs = [record.spec for record in job.tasks.values()]
        parts = [list(part) for part in commands.chunk(specs, TaskSpec.to_wire, limit=PART_BYTES)]
        for data in job_records(job.id, specs, members, job.source, job.started_at, parts, job.priority):
            log_.append(JOB, data)
        self._store_own(job.id, ballot, log_.records.values())
        self.directory.learn(job.id, ballot)
        log.info(
            "Node {name} replicates job {job} to {replicas} (a majority is {majority} of {size})",
            name=self._me,
            job=job.id,
            replicas=", ".join(members[1:]),
            majority=log_.majority,
            size=len(members),
        )
        self._changed(job.id)

    def results_recorded(self, job_id: str, results: Iterable[tuple[str, TaskResult]]) -> None:
        """Tasks of a job this node leads got their results: log them."""
        log_ = self.logs.get(job_id)
        if log_ is None:
            return
        self._append(job_id, [(RESULT, result_record(task, result)) for task, result in results])

    def job_cancelled(self, job_id: str, by: str) -> None:
        """A job this node leads was cancelled: log it."""
        if job_id in self.logs:
            self._append(job_id, [(CANCEL, {"by": by})])

    def job_ended(self, job: Job) -> None:
        """A job this node leads ended: log it."""
        if job.id in self.logs:
            ended = {"succeeded": job.succeeded, "failed": job.failed, "finished": job.finished_at}
            self._append(job.id, [(END, ended)])

    def _append(self, job_id: str, entries: list[tuple[str, dict[str, Any]]]) -> None:
        log_ = self.logs[job_id]
        records = [log_.append(kind, data) for kind, data in entries]
        if records:
            self._store_own(job_id, log_.ballot, records)
            self._changed(job_id)

    def _store_own(self, job_id: str, ballot: Ballot, records: Iterable[Record]) -> None:
        store = self.stores.setdefault(job_id, ReplicaStore(job_id))
        taken = store.replicate(ballot, records)
        self._journal.replica_changed(job_id, store.promised, store.accepted)
        self._journal.replica_records(job_id, taken)

    def committed(self, job_id: str) -> Deferred[None]:
        """
        Fires once a majority of the job's replica set holds every record
        logged so far (at once for a job not replicated); fails with
        L{Deposed} if this node is deposed first.
        """
        log_ = self.logs.get(job_id)
        if log_ is None or log_.committed >= log_.tail:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.setdefault(job_id, []).append((log_.tail, d))
        return d

    def epoch_of(self, job_id: str) -> int:
        """The epoch at which this node leads C{job_id} (1 for a job not replicated)."""
        log_ = self.logs.get(job_id)
        return 1 if log_ is None else log_.ballot.epoch

    def _changed(self, job_id: str) -> None:
        self._dirty.add(job_id)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(GROUP_COMMIT_DELAY, self.flush)

    def flush(self) -> None:
        """Send every replica what it lacks (one REPLICATE per replica and job, chunked to fit) and journal ours."""
        self._flush_call = None
        dirty, self._dirty = self._dirty, set()
        for job_id in dirty:
            log_ = self.logs.get(job_id)
            if log_ is None:
                continue
            tail = log_.tail
            self._journal.durable().addCallback(self._own_durable, job_id, tail)
            for member in log_.replicas:
                self._send(job_id, log_, member)

    def _send(self, job_id: str, log_: MasterLog, member: str) -> None:
        record = self._peers.get(member)
        protocol = None if record is None else record.connection
        if protocol is None:
            log_.failed(member)
            self._check_stall(job_id)
            return
        records = log_.to_send(member)
        if not records:
            return
        for batch in commands.chunk(records, Record.to_wire, encode=Record.encode_wire):
            items: list[Record] = batch.items
            self.sent += 1
            d = protocol.callRemote(
                commands.Replicate,
                job=job_id,
                ballot_epoch=log_.ballot.epoch,
                ballot_node=log_.ballot.node,
                first_seq=items[0].seq,
                records=batch,
            )
            d.addCallbacks(
                self._replicated,
                self._replicate_failed,
                callbackArgs=(job_id, log_, member, items[-1].seq),
                errbackArgs=(job_id, log_, member),
            )

    def _own_durable(self, _: Any, job_id: str, tail: int) -> None:
        log_ = self.logs.get(job_id)
        if log_ is not None:
            log_.durable(tail)
            self._fire_committed(job_id, log_)

    def _replicated(self, answer: dict[str, Any], job_id: str, log_: MasterLog, member: str, last: int) -> None:
        if self.logs.get(job_id) is not log_:
            return
        held = answer["held_seq"]
        log_.answered(member, held, last)
        if held < last:
            self._changed(job_id)
        self._fire_committed(job_id, log_)

    def _replicate_failed(self, failure: Failure, job_id: str, log_: MasterLog, member: str) -> None:
        if self.logs.get(job_id) is not log_:
            return
        if failure.check(commands.StaleBallot):
            newer = parse_stale(failure.getErrorMessage())
            if newer is not None and newer > log_.ballot:
                self.step_down(job_id, newer, f"{member} promised it")
                return
        log_.failed(member)
        self._check_stall(job_id, f"{member}: {failure.getErrorMessage()}")

    def _check_stall(self, job_id: str, why: str = "") -> None:
        """Say once that a job's records cannot reach a majority, so that nothing of it is acknowledged."""
        log_ = self.logs.get(job_id)
        if log_ is None or job_id in self._stalled:
            return
        reachable = [m for m in log_.replicas if self._peers.is_connected(m)]
        if len(reachable) + 1 >= log_.majority:
            return
        self._stalled.add(job_id)
        log.warn(
            "Node {name} cannot commit job {job}: only {count} of its {size} replicas are reachable "
            "({reachable}); it acknowledges nothing of the job until a majority holds its records{why}",
            name=self._me,
            job=job_id,
            count=len(reachable) + 1,
            size=len(log_.members),
            reachable=", ".join([self._me, *reachable]),
            why=f" ({why})" if why else "",
        )

    def _fire_committed(self, job_id: str, log_: MasterLog) -> None:
        committed = log_.committed
        if committed >= log_.tail:
            self._stalled.discard(job_id)
        waiting = self._waiters.get(job_id)
        if not waiting:
            return
        ready = [d for seq, d in waiting if seq <= committed]
        self._waiters[job_id] = [(seq, d) for seq, d in waiting if seq > committed]
        for d in ready:
            d.callback(None)

    def step_down(self, job_id: str, newer: Ballot, why: str) -> None:
        """A newer ballot leads C{job_id}: stop leading it, and acknowledge nothing more of it."""
        log_ = self.logs.pop(job_id, None)
        self.directory.learn(job_id, newer)
        if log_ is None:
            return
        self._stalled.discard(job_id)
        self._master.step_down(job_id)
        for _, d in self._waiters.pop(job_id, []):
            d.errback(Deposed(job_id, newer))
        log.warn(
            "Node {name} steps down as master of job {job}: {new} took it over at epoch {epoch} ({why})",
            name=self._me,
            job=job_id,
            new=newer.node,
            epoch=newer.epoch,
            why=why,
        )

    def peer_connected(self, name: str) -> None:
        """C{name} connected (again): send it what it lacks, and try again the takeovers that lacked it."""
        record = self._peers.get(name)
        for job_id, log_ in self.logs.items():
            if name in log_.replicas:
                self._changed(job_id)
            if log_.ballot.epoch > 1 and record is not None and record.connection is not None:
                self._announce(record.connection, job_id, log_.ballot)

    def _announce(self, protocol: Any, job_id: str, ballot: Ballot) -> None:
        """Send JOB_LEADER for C{job_id} on C{protocol}."""
        protocol.callRemote(
            commands.JobLeader, job=job_id, ballot_epoch=ballot.epoch, ballot_node=ballot.node, master=self._me
        ).addErrback(lambda f: None)

    # -- as a replica ---------------------------------------------------------------------

    def replicate(self, sender: str, job: str, ballot: Ballot, first_seq: int, wire: Any) -> Deferred[int]:
        """
        REPLICATE from C{sender}: store the records, durably, and fire with
        the highest seq held.

        @raise ValidationError: if the records are malformed.
        @raise commands.StaleBallot: if a higher ballot was promised.
        """
        if not isinstance(wire, list):
            raise ValidationError("'records' must be a list")
        records = [Record.from_wire(entry, ballot) for entry in wire]
        if any(record.seq != first_seq + i for i, record in enumerate(records)):
            raise ValidationError("the records' seqs must run on from 'first_seq' without a gap")
        if ballot.node != sender:
            raise ValidationError(f"the ballot names {ballot.node!r}, but the records came from {sender!r}")
        mine = self.logs.get(job)
        if mine is not None and ballot > mine.ballot:
            self.step_down(job, ballot, f"{sender} sent its records")
        store = self.stores.setdefault(job, ReplicaStore(job))
        try:
            taken = store.replicate(ballot, records)
        except StaleBallot as e:
            raise _refused(job, e.promised, ballot) from None
        for record in taken:
            if record.kind == JOB and record.data.get("part") == 0 and isinstance(record.data.get("members"), list):
                self._members[job] = tuple(m for m in record.data["members"] if isinstance(m, str))
        self._journal.replica_changed(job, store.promised, store.accepted)
        self._journal.replica_records(job, taken)
        self.directory.learn(job, ballot)
        return self._journal.durable().addCallback(lambda _: store.held)

    def promise(self, job: str, ballot: Ballot, after: int) -> Deferred[dict[str, Any]]:
        """
        PROMISE: promise C{ballot} for C{job} (durably) and fire with what
        this node holds beyond C{after}.

        @raise commands.StaleBallot: if a higher ballot was promised.
        """
        store = self.stores.setdefault(job, ReplicaStore(job))
        try:
            new = store.promise(ballot)
        except StaleBallot as e:
            raise _refused(job, e.promised, ballot) from None
        mine = self.logs.get(job)
        if mine is not None and ballot > mine.ballot:
            self.step_down(job, ballot, f"{ballot.node} asked for its promise")
        if new:
            self._journal.replica_changed(job, store.promised, store.accepted)
        page = store.after(after)
        chunks = commands.chunk(page, Record.to_promise_wire)
        first = next(chunks, None)
        records = first if first is not None else []
        shown: list[Record] = first.items if first is not None else []
        more = len(shown) < len(page)
        accepted = store.accepted
        answer = {
            "held_seq": store.held,
            "accepted_epoch": accepted.epoch if accepted is not None else 0,
            "accepted_node": accepted.node if accepted is not None else "",
            "records": records,
            "next_seq": shown[-1].seq if more else -1,
        }
        return self._journal.durable().addCallback(lambda _: answer)

    def newer_ballot_seen(self, job: str, ballot: Ballot, why: str) -> bool:
        """
        A peer refused a command of C{job} with STALE_BALLOT naming C{ballot}
        (a worker's fence, say): step down if it is newer than this node's.

        @return: whether this node stepped down.
        """
        mine = self.logs.get(job)
        if mine is None or not ballot > mine.ballot:
            return False
        self.step_down(job, ballot, why)
        return True

    def leader_announced(self, job: str, ballot: Ballot) -> None:
        """JOB_LEADER: C{ballot} leads C{job} now."""
        self.directory.learn(job, ballot)
        mine = self.logs.get(job)
        if mine is not None and ballot > mine.ballot:
            self.step_down(job, ballot, "it announced JOB_LEADER")
        pending = self._takeovers.get(job)
        if ballot.node != self._me and pending is not None:
            self._cancel_takeover(job)
        if job in self._led_before and ballot.node != self._me:
            # It led the job before it restarted: it learns who leads it now.
            self._led_before.discard(job)
            log.warn(
                "Node {name} steps down as master of job {job}: {new} took it over at epoch {epoch} ({why})",
                name=self._me,
                job=job,
                new=ballot.node,
                epoch=ballot.epoch,
                why="it announced JOB_LEADER to this node, restarted",
            )

    # -- restart ---------------------------------------------------------------------------

    def load(self) -> set[str]:
        """
        Read the job logs this node holds from its journal (at start).

        @return: the unfinished jobs it led with a replica set of more than
            one: it takes them over again (as any successor would) rather
            than resume them from its journal alone.
        """
        again = set()
        for job, promised, accepted, records in self._journal.replica_logs():
            store = ReplicaStore(job, promised, accepted, records)
            self.stores[job] = store
            try:
                image = rebuild(records)
            except ValidationError:
                continue
            self._members[job] = image.members
            if accepted is not None:
                self.directory.learn(job, accepted)
            if (
                accepted is not None
                and accepted.node == self._me
                and len(image.members) > 1
                and not image.ended
                and not image.cancelled
            ):
                again.add(job)
        return again

    def take_over_again(self, jobs: Iterable[str]) -> None:
        """After a restart: take over again the jobs this node led (see L{load})."""
        for job in jobs:
            self._led_before.add(job)
            accepted = self.stores[job].accepted
            assert accepted is not None
            self._takeovers[job] = self._clock.callLater(
                self.grace, self._try_takeover, job, accepted, "restarted (this node, in its previous life)"
            )


def _refused(job: str, promised: Ballot, refused: Ballot) -> commands.StaleBallot:
    """The STALE_BALLOT error of a replica that promised C{promised} for C{job}, to a sender at C{refused}."""
    return commands.StaleBallot(
        stale_description(
            job,
            promised,
            f"this node promised job {job} to {promised.node} at epoch {promised.epoch}; "
            f"{refused.node} at epoch {refused.epoch} is deposed",
        )
    )
