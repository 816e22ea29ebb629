"""
The pre-round of a takeover (part of L{p2pexec.failover.Replication}), as
Raft's Pre-Vote, adapted to the PROMISE rounds of master failover.

A successor that lost a job's master does not promise itself a higher
ballot, nor ask anyone to, until a majority of the job's replica set
(itself included) answered C{PRE_PROMISE} saying that each would promise
that ballot and has lost the job's leader too.  A member still connected
to a live leader says no.  So a node cut off alone (a minority) never
raises a promise: when it comes back it takes the leader's records as
before, and does not depose a leader that a majority kept (Raft's
"disruptive server").  A peer that does not know C{PRE_PROMISE} (an older
version) counts as a yes: it answered PROMISE at once before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.log import NodeLogger
from p2pexec.replicas import Ballot, parse_stale, stale_description
from p2pexec.replication import Outcome, Round

if TYPE_CHECKING:
    from p2pexec.directory import JobDirectory
    from p2pexec.membership import PeerTable
    from p2pexec.replica_log import ReplicaStore
    from p2pexec.replication import MasterLog

log = NodeLogger(namespace="p2pexec.failover")


class PreRound(Round):
    """
    A successor's pre-round for C{ballot}: who would promise it, who still
    has a leader (and which), who promised higher, who could not be asked.
    The asker counts as one that would.
    """

    def __init__(self, job: str, members: Iterable[str], ballot: Ballot, me: str) -> None:
        super().__init__(job, members, ballot)
        self.granted: set[str] = {me} if me in self.members else set()
        self.denied: dict[str, Ballot] = {}

    def grant(self, member: str) -> None:
        """C{member} would promise, and lost the leader."""
        if member in self.members:
            self.granted.add(member)

    def deny(self, member: str, leader: Ballot) -> None:
        """C{member} still has C{leader}, live."""
        if member in self.members:
            self.denied[member] = leader

    def _yes(self) -> int:
        """The members that would promise (the asker among them)."""
        return len(self.granted)

    def _no(self) -> int:
        """The members that still have a live leader."""
        return len(self.denied)


class PreVoting:
    """The pre-round's methods of L{p2pexec.failover.Replication}, which provides what is declared here."""

    directory: JobDirectory
    logs: dict[str, MasterLog]
    stores: dict[str, ReplicaStore]
    _peers: PeerTable

    _leader: Callable[[str], Ballot | None]
    """The newest leader of a job this node knows (L{p2pexec.succession.Succession._leader})."""

    @property
    def _me(self) -> str:
        raise NotImplementedError

    # -- as a member asked --------------------------------------------------------------------

    def pre_promise(self, sender: str, job: str, ballot: Ballot) -> Ballot | None:
        """
        PRE_PROMISE from C{sender}: C{None} if this node would promise
        C{ballot} for C{job} and has lost the job's leader itself; otherwise
        the leader it still has.  Changes nothing.

        @raise commands.StaleBallot: if a higher ballot was promised.
        """
        store = self.stores.get(job)
        promised = store.promised if store is not None else None
        if promised is not None and ballot < promised:
            raise commands.StaleBallot(
                stale_description(
                    job,
                    promised,
                    f"this node promised job {job} to {promised.node} at epoch {promised.epoch}; "
                    f"{sender} would not be promised epoch {ballot.epoch}",
                )
            )
        mine = self.logs.get(job)
        if mine is not None:
            return mine.ballot  # it leads the job, live
        leader = self._leader(job)
        if leader is None or leader.node in (self._me, sender) or not self._peers.is_connected(leader.node):
            return None
        return leader

    # -- as the successor asking ----------------------------------------------------------

    def _pre_round(self, attempt: PreRound, done: Callable[[PreRound], None]) -> None:
        """Ask every other member of C{attempt} PRE_PROMISE; call C{done} once its outcome is known."""
        attempt.ask_others(
            self._me, self._peers, lambda connection, member: self._ask_pre_promise(connection, attempt, member, done)
        )
        if attempt.outcome is not Outcome.WAITING:
            done(attempt)

    def _ask_pre_promise(self, protocol: Any, attempt: PreRound, member: str, done: Callable[[PreRound], None]) -> None:
        d = protocol.callRemote(
            commands.PrePromise, job=attempt.job, ballot_epoch=attempt.ballot.epoch, ballot_node=attempt.ballot.node
        )

        def answered(answer: dict[str, Any]) -> None:
            if answer["granted"]:
                attempt.grant(member)
            else:
                attempt.deny(member, Ballot(answer["leader_epoch"], answer["leader_node"]))

        def failed(failure: Failure) -> None:
            newer = parse_stale(failure.getErrorMessage()) if failure.check(commands.StaleBallot) else None
            if newer is not None:
                attempt.refuse(member, newer)
            elif failure.check(amp.UnhandledCommand):
                attempt.grant(member)  # an older peer, which promised at once: as before
            else:
                attempt.fail(member)

        def judged(_: Any) -> None:
            if attempt.outcome is not Outcome.WAITING:
                done(attempt)  # (again after the first time: the asker ignores a round it is done with)

        d.addCallbacks(answered, failed).addCallback(judged)
