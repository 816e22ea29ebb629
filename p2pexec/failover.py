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

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.directory import JobDirectory
from p2pexec.journal import GROUP_COMMIT_DELAY
from p2pexec.log import NodeLogger
from p2pexec.model import TaskResult, ValidationError
from p2pexec.prevote import PreRound, PreVoting
from p2pexec.replica_log import Batch, ReplicaStore, count_records, decode, ended_after, runs
from p2pexec.replica_placement import Placements, Placing
from p2pexec.replicas import Ballot, parse_stale, stale_description
from p2pexec.replication import (
    CANCEL,
    END,
    RERUN,
    RESULT,
    JobImage,
    MasterLog,
    Record,
    StaleBallot,
    Takeover,
    encode_window,
    rebuild,
    result_record,
)
from p2pexec.succession import RESTART_WATCH, Succession

if TYPE_CHECKING:
    from p2pexec.interfaces import IJournal, INode
    from p2pexec.job import Job
    from p2pexec.master import Master
    from p2pexec.membership import PeerTable

log = NodeLogger()

DECODED_KEPT = 4
"""How many decoded job logs a node keeps (a takeover pages through one, a client looks at one)."""


class Deposed(Exception):
    """This node no longer leads the job: a newer ballot does (nothing of the job is acknowledged)."""

    def __init__(self, job: str, newer: Ballot) -> None:
        super().__init__(f"{newer.node} took job {job} over at epoch {newer.epoch}")
        self.newer = newer


class Replication(Placing, PreVoting, Succession):
    """
    One node's replicated job logs (see the module's docstring).

    @ivar logs: the logs of the jobs this node leads, by job.
    @ivar stores: what this node holds of every job log it is a member of
        (those it leads included), by job: ballots and seqs, the records
        being in its journal (see L{p2pexec.replica_log}).
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
        self._window: dict[str, list[Batch]] = {}
        """Per job, the batches written to our journal since the last flush: what each replica lacks, encoded."""
        self._dirty: set[str] = set()
        self._stalled: set[str] = set()
        self._takeovers: dict[str, IDelayedCall | Takeover | PreRound] = {}
        self._silence: dict[str, str] = {}
        self._seen: dict[str, Ballot] = {}
        self._led_before: set[str] = set()
        """Jobs this node led before it restarted, until it leads them again or learns who does."""
        self._watched: set[str] = set()
        """Jobs this node is a successor of, read at start: it checks that their leader is there (L{load})."""
        self.led_elsewhere: set[str] = set()
        """
        Jobs of a replica set larger than one whose newest ballot this node
        holds is another node's, read at start (L{load}): if its journal
        has one as its master (it took the job over, then stepped down), it
        must not resume it from there.
        """
        self.connected_listeners: list[Callable[[str], None]] = []
        """Called with each peer's name when it connects (the start-up job waits for peers to be replicated on)."""
        self.unplaced = Placements()
        """The jobs accepted with their replica set still to choose (the start-up job, see L{place})."""
        self._decoded: dict[str, tuple[int, list[Record]]] = {}
        """The last few logs decoded (see L{records_of}), by job, with the store's version they are of."""
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

    def results_recorded(self, job_id: str, results: Iterable[tuple[str, TaskResult]]) -> None:
        """Tasks of a job this node leads got their results: log them."""
        if job_id in self.logs or job_id in self.unplaced:
            self._append(job_id, [(RESULT, result_record(task, result)) for task, result in results])

    def job_cancelled(self, job_id: str, by: str) -> None:
        """A job this node leads was cancelled: log it."""
        if job_id in self.logs or job_id in self.unplaced:
            self._append(job_id, [(CANCEL, {"by": by})])

    def job_ended(self, job: Job) -> None:
        """A job this node leads ended: log it."""
        ended = {"succeeded": job.succeeded, "failed": job.failed, "finished": job.finished_at}
        if self.unplaced.note(job.id, [(END, ended)]):
            # Ended before its set was chosen: choose it now, the end waits for it.
            self.place(job.id)
        elif job.id in self.logs:
            self._append(job.id, [(END, ended)])

    def job_reopened(self, job_id: str, attempts: dict[str, int]) -> None:
        """Issue 14 (rerun): tasks of a job this node leads run again (by id, their last attempt): log it."""
        if job_id in self.logs:
            self._append(job_id, [(RERUN, {"tasks": attempts})])

    def _append(self, job_id: str, entries: list[tuple[str, dict[str, Any]]]) -> None:
        if self.unplaced.note(job_id, entries):
            return
        log_ = self.logs[job_id]
        for kind, data in entries:
            log_.append(kind, data)
        if entries:
            self._changed(job_id)

    def _master_log(
        self, job_id: str, members: Iterable[str], ballot: Ballot, records: Iterable[Record] = ()
    ) -> MasterLog:
        """A job's log as its master, reading the records it trimmed back from its own journal."""

        def older(first: int, last: int) -> list[Record]:
            return [record for record in self.records_of(job_id) if first <= record.seq <= last]

        return MasterLog(members, self._me, ballot, records, older=older)

    def _write_own(self, job_id: str, log_: MasterLog) -> None:
        """
        Hand the records of a job this node leads not written yet to its
        journal, each batch as one REPLICATE carries it: encoded once, the
        same bytes kept in L{_window} for the replicas (see L{flush}).
        """
        records = log_.unwritten()
        if not records:
            return
        store = self.stores.setdefault(job_id, ReplicaStore(job_id))
        window = self._window.setdefault(job_id, [])
        for run in runs(records):
            for part, raw in encode_window(run):
                batch = Batch(log_.ballot, part[0].seq, part[-1].seq, raw)
                if store.replicate(log_.ballot, batch.first_seq, batch.last_seq):
                    self._journal.replica_changed(job_id, store.promised, store.accepted)
                self._journal.replica_batch(job_id, batch)
                window.append(batch)
                store.ended = ended_after(store.ended, batch)

    def records_of(self, job_id: str) -> list[Record]:
        """
        The records this node holds of C{job_id}'s log, in seq order, decoded
        from its journal (the last few decoded are kept until the log
        changes).  A malformed record is logged, once, and ends the log
        before it: the node holds no further records of the job.
        """
        store = self.stores.get(job_id)
        if store is None:
            return []
        cached = self._decoded.get(job_id)
        if cached is not None and cached[0] == store.version:
            return cached[1]
        return self._decode(job_id, self._journal.replica_batches(job_id))

    def _decode(self, job_id: str, batches: list[Batch]) -> list[Record]:
        """The records of C{batches}, C{job_id}'s log (see L{records_of})."""
        store = self.stores[job_id]
        decoded = decode(batches)
        if decoded.bad_seq is not None:
            log.error(
                "Node {name} holds a malformed record of job {job}: {problem}; its log of the job ends "
                "before record {seq}",
                name=self._me,
                job=job_id,
                problem=decoded.problem,
                seq=decoded.bad_seq,
            )
            store.truncate(decoded.bad_seq)
        self._decoded.pop(job_id, None)
        self._decoded[job_id] = (store.version, decoded.records)
        while len(self._decoded) > DECODED_KEPT:
            del self._decoded[next(iter(self._decoded))]
        return decoded.records

    def _describe(self, job_id: str) -> JobImage | None:
        """Learn the replica set of C{job_id} and whether it ended, from its records: the job they describe."""
        store = self.stores.get(job_id)
        if store is None:
            return None
        try:
            image = rebuild(self.records_of(job_id))
        except ValidationError:
            return None
        store.members = image.members
        store.ended = image.ended
        self._members[job_id] = image.members
        return image

    def committed(self, job_id: str) -> Deferred[None]:
        """
        Fires once a majority of the job's replica set holds every record
        logged so far (at once for a job not replicated); fails with
        L{Deposed} if this node is deposed first.  For a job whose replica
        set is still to be chosen, once it is chosen and they are committed.
        """
        pending = self.unplaced.wait(job_id)
        if pending is not None:
            return pending
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
            try:
                self._write_own(job_id, log_)
            except StaleBallot as e:
                # This node promised a higher ballot (another node's takeover,
                # or its own again): its log at the old ballot may commit nothing more.
                why = "this node promised it" if e.promised.node != self._me else "it takes the job over again"
                self._window.pop(job_id, None)
                self.step_down(job_id, e.promised, why)
                continue
            window = self._window.pop(job_id, [])
            self._journal.durable().addCallback(self._own_durable, job_id, tail)
            for member in log_.replicas:
                self._send(job_id, log_, member, window)
        self._window.clear()

    def _send(self, job_id: str, log_: MasterLog, member: str, window: list[Batch]) -> None:
        """
        Send C{member} the records it lacks: the batches just written to our
        journal, as they were encoded, when those are what it lacks (else
        the records encoded again, chunked to fit).
        """
        record = self._peers.get(member)
        protocol = None if record is None else record.connection
        if protocol is None:
            log_.failed(member)
            self._check_stall(job_id)
            return
        records = log_.to_send(member)
        if not records:
            return
        if window and (records[0].seq, records[-1].seq) == (window[0].first_seq, window[-1].last_seq):
            batches: list[tuple[int, int, Any]] = [(b.first_seq, b.last_seq, b.raw) for b in window]
        else:
            chunks = commands.chunk(records, Record.to_wire, encode=Record.encode_wire)
            batches = [(c.items[0].seq, c.items[-1].seq, c) for c in chunks]
        for first, last, value in batches:
            self.sent += 1
            d = protocol.callRemote(
                commands.Replicate,
                job=job_id,
                ballot_epoch=log_.ballot.epoch,
                ballot_node=log_.ballot.node,
                first_seq=first,
                last_seq=last,
                records=value,
            )
            d.addCallbacks(
                self._replicated,
                self._replicate_failed,
                callbackArgs=(job_id, log_, member, last),
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
                self._watch_deposed(job_id, newer)
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
        log_.trim()
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
        _log_step_down(self._me, job_id, newer, why)

    def peer_connected(self, name: str) -> None:
        """C{name} connected (again): send it what it lacks, and try again the takeovers that lacked it."""
        for listener in self.connected_listeners:
            listener(name)
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

    def replicate(
        self, sender: str, job: str, ballot: Ballot, first_seq: int, raw: bytes, last_seq: int | None = None
    ) -> Deferred[int]:
        """
        REPLICATE from C{sender}: store the records as received, as one
        batch, durably, and fire with the highest seq held.  Only the
        envelope is checked (the ballot, the seqs); the records are decoded
        when needed (see L{records_of}).  Without C{last_seq} (a peer that
        does not send it) the records are decoded here to count them.

        @raise ValidationError: if the envelope is malformed.
        @raise commands.StaleBallot: if a higher ballot was promised.
        """
        if ballot.node != sender:
            raise ValidationError(f"the ballot names {ballot.node!r}, but the records came from {sender!r}")
        if last_seq is None:
            last_seq = first_seq - 1 + count_records(raw, first_seq, ballot)
        batch = Batch.check(ballot, first_seq, last_seq, raw)
        mine = self.logs.get(job)
        if mine is not None and ballot > mine.ballot:
            self.step_down(job, ballot, f"{sender} sent its records")
        store = self.stores.setdefault(job, ReplicaStore(job))
        try:
            changed = store.replicate(ballot, batch.first_seq, batch.last_seq)
        except StaleBallot as e:
            raise _refused(job, e.promised, ballot) from None
        if job in self._takeovers and ballot.node != self._me:
            self._cancel_takeover(job)  # a leader at a ballot this node promised sends records: nothing to take over
        if changed:
            self._journal.replica_changed(job, store.promised, store.accepted)
        if batch.last_seq >= batch.first_seq:
            self._journal.replica_batch(job, batch)
            store.ended = ended_after(store.ended, batch)
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
            self._watch_deposed(job, ballot)
        if new:
            self._journal.replica_changed(job, store.promised, store.accepted)
        page = [record for record in self.records_of(job) if record.seq > after]
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
        store = self.stores.get(job)
        promised = store.promised if store is not None else None
        if ballot.node != self._me and pending is not None and (promised is None or ballot >= promised):
            # (A leader below what this node promised is refused here, and
            # steps down at its next REPLICATE: the takeover must go on.)
            self._cancel_takeover(job)
        if job in self._led_before and ballot.node != self._me:
            # It led the job before it restarted: it learns who leads it now.
            self._led_before.discard(job)
            _log_step_down(self._me, job, ballot, "it announced JOB_LEADER to this node, restarted")

    # -- restart ---------------------------------------------------------------------------

    def load(self) -> set[str]:
        """
        Read the job logs this node holds from its journal (at start).

        @return: the unfinished jobs it led with a replica set of more than
            one: it takes them over again (as any successor would) rather
            than resume them from its journal alone.
        """
        again = set()
        for job, promised, accepted, batches in self._journal.replica_logs():
            store = ReplicaStore(job, promised, accepted, batches)
            self.stores[job] = store
            self._decode(job, batches)
            image = self._describe(job)
            if image is None:
                continue
            if accepted is not None:
                self.directory.learn(job, accepted)
            # It led the job (accepted its own ballot), or was taking it over
            # (promised its own ballot above the accepted one) and may have
            # journaled it as its master before the crash: either way it
            # checks with the replica set again instead of resuming alone.
            own = accepted if accepted is not None and accepted.node == self._me else None
            if own is None and promised is not None and promised.node == self._me:
                own = promised if accepted is None or promised > accepted else None
            if own is None and len(image.members) > 1:
                # Another node's ballot is the newest held here (this node stepped
                # down, or only followed): resuming from its journal would lead at epoch 1.
                self.led_elsewhere.add(job)
            if own is not None and len(image.members) > 1 and not image.ended and not image.cancelled:
                again.add(job)
            elif self._me in image.members and not image.ended and not image.cancelled:
                self._watched.add(job)
        self._decoded.clear()
        return again

    def take_over_again(self, jobs: Iterable[str]) -> None:
        """After a restart: take over again the jobs this node led (see L{load})."""
        for job in self._watched:
            # A restarted successor has never been connected to the job's
            # leader: if that leader is gone, no connection loss will say so.
            self._clock.callLater(RESTART_WATCH, self._leader_absent, job)
        self._watched.clear()
        for job in jobs:
            self._led_before.add(job)
            store = self.stores[job]
            lost = store.accepted if store.accepted is not None else store.promised
            assert lost is not None
            self._takeovers[job] = self._clock.callLater(
                self.grace, self._try_takeover, job, lost, "restarted (this node, in its previous life)"
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


def _log_step_down(me: str, job: str, newer: Ballot, why: str) -> None:
    """The one line a node logs when it stops leading C{job} because C{newer} leads it."""
    log.warn(
        "Node {name} steps down as master of job {job}: {new} took it over at epoch {epoch} ({why})",
        name=me,
        job=job,
        new=newer.node,
        epoch=newer.epoch,
        why=why,
    )
