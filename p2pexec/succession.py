"""
The successor's side of master failover (part of L{p2pexec.failover.Replication}):
a lost master's jobs taken over.  Each member of a job's replica set that
is not its master watches the master's connection; when it is lost (or
failure detection declares the master dead), the member ranked C{i} among
the live successors waits C{i} times the grace period, then asks every
member for a PROMISE of a higher ballot.  With a majority it rebuilds the
job from the merged records, leads it and announces JOB_LEADER.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.log import NodeLogger
from p2pexec.model import ValidationError
from p2pexec.prevote import PreRound
from p2pexec.replicas import Ballot, parse_stale
from p2pexec.replication import JobImage, MasterLog, Outcome, Record, Takeover, rebuild

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from p2pexec.directory import JobDirectory
    from p2pexec.interfaces import IJournal
    from p2pexec.master import Master
    from p2pexec.membership import PeerTable
    from p2pexec.replica_log import ReplicaStore
    from p2pexec.replica_placement import Placements

log = NodeLogger(namespace="p2pexec.failover")

RETRY_TAKEOVER = 2.0
"""Seconds a successor that lost a takeover race waits to see the winner's JOB_LEADER before it tries again."""


RESTART_WATCH = 5.0
"""Seconds after its start a restarted successor checks that its jobs' leaders are connected."""


class Succession:
    """The successor's methods of L{p2pexec.failover.Replication}, which provides what is declared here."""

    grace: float
    directory: JobDirectory
    logs: dict[str, MasterLog]
    stores: dict[str, ReplicaStore]
    _clock: IReactorTime
    _peers: PeerTable
    _master: Master
    _journal: IJournal
    _members: dict[str, tuple[str, ...]]
    _takeovers: dict[str, IDelayedCall | Takeover | PreRound]
    _silence: dict[str, str]
    _seen: dict[str, Ballot]
    _led_before: set[str]
    unplaced: Placements

    @property
    def _me(self) -> str:
        raise NotImplementedError

    def _master_log(
        self, job_id: str, members: Iterable[str], ballot: Ballot, records: Iterable[Record] = ()
    ) -> MasterLog:
        raise NotImplementedError

    def records_of(self, job_id: str) -> list[Record]:
        raise NotImplementedError

    def _describe(self, job_id: str) -> JobImage | None:
        raise NotImplementedError

    def _changed(self, job_id: str) -> None:
        raise NotImplementedError

    def _announce(self, protocol: Any, job_id: str, ballot: Ballot) -> None:
        raise NotImplementedError

    def _pre_round(self, attempt: PreRound, done: Callable[[PreRound], None]) -> None:
        raise NotImplementedError

    # -- as a successor -------------------------------------------------------------------

    def peer_dead(self, name: str, silent: float) -> None:
        """Failure detection declared C{name} dead (the node's on-dead path)."""
        self._silence[name] = f"was declared dead (silent for {silent:.1f}s)"
        self.peer_lost(name)

    def peer_lost(self, name: str) -> None:
        """The connection to C{name} is gone: each job it leads that this node holds, its successors may take over."""
        why = self._silence.pop(name, "lost its connection")
        for job, store in list(self.stores.items()):
            leader = self._leader(job)
            if leader is None or leader.node != name or job in self.logs or job in self._takeovers:
                continue
            if not store.ended:
                self._describe(job)  # its replica set, and whether it ended, from its records
            if store.ended:
                continue
            rank = self._rank(job, name)
            if rank is None:
                continue
            self._takeovers[job] = self._clock.callLater(self.grace * rank, self._try_takeover, job, leader, why)

    def _leader_absent(self, job: str) -> None:
        """
        Some time after a restart: if C{job}'s leader is not connected, it is
        lost, as if its connection went.  If it is connected, the takeover's
        pre-round asks it whether it still leads the job (a restarted master
        whose job's end was never committed does not), and goes no further
        if it does.
        """
        leader = self._leader(job)
        if leader is None or leader.node == self._me:
            return
        if self._peers.is_connected(leader.node):
            self._silence[leader.node] = "no longer led it when this node restarted"
        else:
            self._silence[leader.node] = "was not connected when this node restarted"
        self.peer_lost(leader.node)
        self._silence.pop(leader.node, None)

    def _leader(self, job: str) -> Ballot | None:
        known = self.directory.lookup(job)
        store = self.stores.get(job)
        candidates = [b for b in (known.ballot if known else None, store.accepted if store else None) if b is not None]
        return max(candidates, default=None)

    def _rank(self, job: str, lost: str) -> int | None:
        """This node's place among the live successors of C{lost} for C{job} (1 first), or C{None}."""
        members = self._members.get(job, ())
        live = [m for m in members if m != lost and (m == self._me or self._peers.is_connected(m))]
        return live.index(self._me) + 1 if self._me in live else None

    def _cancel_takeover(self, job: str) -> None:
        pending = self._takeovers.pop(job, None)
        if pending is not None and not isinstance(pending, (Takeover, PreRound)) and pending.active():
            pending.cancel()

    def _watch_deposed(self, job: str, newer: Ballot) -> None:
        """
        This node stepped down from C{job} for C{newer}, which only a
        promise showed (a refusal, or a PROMISE asked): unless C{newer}'s
        node announces that it leads (JOB_LEADER, or its records), this node
        takes the job over again after L{RETRY_TAKEOVER}, since that node
        may have stopped before it won, and then nobody would lead the job.
        """
        if job in self._takeovers or job not in self.stores:
            return
        self._takeovers[job] = self._clock.callLater(
            RETRY_TAKEOVER,
            self._try_takeover,
            job,
            newer,
            f"promised epoch {newer.epoch} but did not say it leads",
            True,
            True,
        )

    def _try_takeover(self, job: str, lost: Ballot, why: str, waited: bool = False, silent: bool = False) -> None:
        """
        @param silent: C{lost} never said it leads (see L{_watch_deposed}):
            go on even if it is connected.
        """
        self._takeovers.pop(job, None)
        if job in self.logs:
            return
        store = self.stores[job]
        # Go on even with the lost master back: the pre-round asks it whether
        # it still leads the job.  It may not (restarted, or deposed by a
        # promise this node made itself in an attempt that failed, which the
        # master's next REPLICATE meets): giving up would leave the job with
        # no leader.
        known = self.directory.lookup(job)
        if (
            not silent
            and known is not None
            and known.ballot > lost
            and known.master != self._me
            and self._peers.is_connected(known.master)
        ):
            return  # a live node leads it already
        promised = store.promised
        if not waited and promised is not None and promised > lost and promised.node != self._me:
            # Another successor is asking: wait for its JOB_LEADER, and try again if none comes.
            self._takeovers[job] = self._clock.callLater(RETRY_TAKEOVER, self._try_takeover, job, lost, why, True)
            return
        seen = self._seen.get(job)
        top = max(b for b in (lost, store.promised, store.accepted, seen) if b is not None)
        ballot = Ballot(top.epoch + 1, self._me)
        members = self._members.get(job, (lost.node, self._me))
        # Nobody promises anything (this node included) before a majority
        # says it would, having lost the leader too (see p2pexec.prevote).
        pre = PreRound(job, members, ballot, self._me)
        self._takeovers[job] = pre
        self._pre_round(pre, lambda pre: self._pre_judged(pre, lost, why))

    def _pre_judged(self, pre: PreRound, lost: Ballot, why: str) -> None:
        """The pre-round C{pre} has an outcome: promise and ask for promises, back off, or try again later."""
        job = pre.job
        if self._takeovers.get(job) is not pre or job in self.logs:
            return
        del self._takeovers[job]
        outcome = pre.outcome
        if outcome is Outcome.WON:
            self._promise_round(job, pre.members, pre.ballot, lost, why)
        elif outcome is Outcome.LOST:
            newer = max(pre.refused.values())
            self._back_off(job, newer, lost, why)
        elif pre.denied.get(lost.node, Ballot(0, "")).node == lost.node:
            log.info(
                "Node {name} does not take job {job} over: {master} still leads it",
                name=self._me,
                job=job,
                master=lost.node,
            )
        else:
            leaders = sorted({leader.node for leader in pre.denied.values()})
            log.warn(
                "Node {name} cannot take job {job} over: only {count} of its {size} replicas would promise epoch "
                "{epoch}{still}; it tries again in {delay:g}s",
                name=self._me,
                job=job,
                count=len(pre.granted),
                size=len(pre.members),
                epoch=pre.ballot.epoch,
                still=f" (the others still have {', '.join(leaders)} as leader)" if leaders else "",
                delay=RETRY_TAKEOVER,
            )
            self._takeovers[job] = self._clock.callLater(RETRY_TAKEOVER, self._try_takeover, job, lost, why)

    def _promise_round(self, job: str, members: tuple[str, ...], ballot: Ballot, lost: Ballot, why: str) -> None:
        """After a granted pre-round: promise C{ballot} to itself, and ask every other member to."""
        store = self.stores[job]
        if store.promised is not None and store.promised > ballot:
            self._back_off(job, store.promised, lost, why)  # it promised another's since
            return
        attempt = Takeover(job, members, ballot)
        self._takeovers[job] = attempt
        store.promise(ballot)
        self._journal.replica_changed(job, store.promised, store.accepted)
        attempt.promise(self._me, self.records_of(job))
        attempt.ask_others(
            self._me,
            self._peers,
            lambda connection, member: self._ask_promise(connection, attempt, member, 0, [], lost, why),
        )
        self._judge(attempt, lost, why)

    def _ask_promise(
        self, protocol: Any, attempt: Takeover, member: str, after: int, got: list[Record], lost: Ballot, why: str
    ) -> None:
        d = protocol.callRemote(
            commands.Promise,
            job=attempt.job,
            ballot_epoch=attempt.ballot.epoch,
            ballot_node=attempt.ballot.node,
            after_seq=after,
        )

        def answered(answer: dict[str, Any]) -> None:
            try:
                records = got + [Record.from_wire(entry) for entry in answer["records"]]
            except (ValidationError, TypeError) as e:
                log.warn(
                    "Node {name} got a malformed PROMISE answer from {peer}: {error}",
                    name=self._me,
                    peer=member,
                    error=e,
                )
                attempt.fail(member)
                self._judge(attempt, lost, why)
                return
            if answer["next_seq"] > after:
                self._ask_promise(protocol, attempt, member, answer["next_seq"], records, lost, why)
                return
            attempt.promise(member, records)
            self._judge(attempt, lost, why)

        def failed(failure: Failure) -> None:
            newer = parse_stale(failure.getErrorMessage()) if failure.check(commands.StaleBallot) else None
            if newer is not None:
                attempt.refuse(member, newer)
            else:
                attempt.fail(member)
            self._judge(attempt, lost, why)

        d.addCallbacks(answered, failed)

    def _judge(self, attempt: Takeover, lost: Ballot, why: str) -> None:
        if self._takeovers.get(attempt.job) is not attempt:
            return
        outcome = attempt.outcome
        if outcome is Outcome.WAITING:
            return
        del self._takeovers[attempt.job]
        if outcome is Outcome.WON:
            self._won(attempt, lost, why)
            return
        if outcome is Outcome.LOST:
            newer = attempt.highest_refusal
            assert newer is not None
            self._back_off(attempt.job, newer, lost, why)
            return
        log.warn(
            "Node {name} cannot take job {job} over: only {count} of its {size} replicas promised epoch {epoch}; "
            "it tries again when another connects",
            name=self._me,
            job=attempt.job,
            count=len(attempt.promised),
            size=len(attempt.members),
            epoch=attempt.ballot.epoch,
        )
        self._takeovers[attempt.job] = self._clock.callLater(RETRY_TAKEOVER, self._try_takeover, attempt.job, lost, why)

    def _back_off(self, job: str, newer: Ballot, lost: Ballot, why: str) -> None:
        """A member promised C{newer}, above this node's ballot: wait for its leader, and try again if none comes."""
        self._seen[job] = max(newer, self._seen.get(job, newer))
        log.info(
            "Node {name} backs off from taking job {job} over: a replica promised {ballot}",
            name=self._me,
            job=job,
            ballot=newer.describe(),
        )
        self._takeovers[job] = self._clock.callLater(RETRY_TAKEOVER, self._try_takeover, job, lost, why, True)

    def _won(self, attempt: Takeover, lost: Ballot, why: str) -> None:
        job_id, ballot = attempt.job, attempt.ballot
        promised = self.stores[job_id].promised
        if promised is not None and promised > ballot:
            self._back_off(job_id, promised, lost, why)  # it promised another's since: that one may lead
            return
        # Its own records as they are now, not as at its promise: a record
        # it accepted since (under a ballot it promised) may be committed.
        attempt.promise(self._me, self.records_of(job_id))
        self._led_before.discard(job_id)
        merged = attempt.merged()
        try:
            image = rebuild(merged)
        except ValidationError as e:
            log.error(
                "Node {name} cannot take job {job} over: its records do not describe it ({error})",
                name=self._me,
                job=job_id,
                error=e,
            )
            return
        self.logs[job_id] = self._master_log(job_id, image.members, ballot, merged)
        self._members[job_id] = image.members
        self.directory.learn(job_id, ballot)
        log.warn(
            "Node {name} took over job {job} as master at epoch {epoch}: {old} {why}; {agreed} of {size} "
            "replicas agreed",
            name=self._me,
            job=job_id,
            epoch=ballot.epoch,
            old=lost.node,
            why=why,
            agreed=len(attempt.promised),
            size=len(attempt.members),
        )
        self._master.take_over(image, ballot.epoch)
        self.unplaced.placed(job_id, image.members, image.specs, image.results.values())
        for record in self._peers.connected_peers():
            if record.connection is not None:
                self._announce(record.connection, job_id, ballot)
        self._changed(job_id)
        # Adoption decides what runs again: a task with a committed result
        # stays done, the others stay pending (unqueued) until the workers
        # said what they hold (HELD_TASKS, see p2pexec.recovery).
        self._master.adopt(job_id, ballot.epoch).addErrback(
            lambda f: log.failure("Node {name} could not adopt job {job}", f, name=self._me, job=job_id)
        )
