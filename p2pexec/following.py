"""
Clients follow the job: how a node answers a client's question about a job
it does not lead (JOB_STATUS, JOB_TASKS, CANCEL_JOB, RERUN_TASKS; LIST_JOBS adds the
jobs it holds replicas of).

L{Following} looks the job up in the node's L{JobDirectory} (the newest
leader it has learned of).  If that leader is a connected peer, it forwards
the question to it (FORWARD_CLIENT, one hop: the leader answers only for
the jobs it leads, and never forwards again) and relays the answer.  If the
leader is unknown, not connected or does not answer, it answers from the
replica records this node holds, marked C{"answered_by": "replica"}, or
with UNKNOWN_JOB naming what it knows ("job J was led by m1 at epoch 1; m1
is not connected to node n2").  A cancel or a rerun is never answered from a
replica: only the master can cancel or rerun.

Every failure becomes a declared error (UNKNOWN_JOB, or the leader's own
AUTH_REQUIRED), so that the client's connection is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.log import NodeLogger
from p2pexec.status import parse_states

if TYPE_CHECKING:
    from p2pexec.directory import JobDirectory, JobLeader
    from p2pexec.interfaces import INode, IReplicaRecords
    from p2pexec.membership import PeerTable
    from p2pexec.views import Views

log = NodeLogger()

Asked = dict[str, Any] | str | None
"""What asking a job's leader gave: its answer, the message of its refusal, or C{None} (nobody to ask)."""

FORWARD_TIMEOUT = 10.0
"""Seconds a node waits for the leader's answer to a forwarded question."""


class NoReplicaRecords:
    """The replica records of a node that holds none (an L{IReplicaRecords}): nothing to answer from."""

    def replica_status(self, job: str) -> dict[str, Any] | None:
        """Nothing: no replica of any job is held here."""
        return None

    def replica_tasks(
        self, job: str, offset: int, limit: int, states: frozenset[str] | None = None
    ) -> tuple[list[dict[str, Any]], int] | None:
        """Nothing: no replica of any job is held here."""
        return None

    def replica_jobs(self) -> list[dict[str, Any]]:
        """No job: no replica is held here."""
        return []


class Following:
    """
    A node's answers to a client about jobs it does not lead (see the
    module's docstring); the jobs it leads are answered by the views, as
    before.
    """

    def __init__(self, clock: IReactorTime, timeout: float = FORWARD_TIMEOUT) -> None:
        self._clock = clock
        self._timeout = timeout
        self.replicas: IReplicaRecords = NoReplicaRecords()
        """Where replica records are read from (the failover core gives its journal's here)."""
        self.forwarded = 0
        """Questions forwarded to a job's leader."""

    def wire(self, node: INode, peers: PeerTable, views: Views, directory: JobDirectory) -> None:
        """Connect to the parts it reads: the node's name, its peers, its views and its directory of leaders."""
        self._node = node
        self._peers = peers
        self._views = views
        self._directory = directory

    def leads(self, job: str) -> bool:
        """Whether this node is C{job}'s master (its views answer for it)."""
        return self._views.leads(job)

    # -- the questions -------------------------------------------------------------

    def job_status(self, job: str, client: str) -> Deferred[dict[str, Any]]:
        """C{job}'s summary, from its leader or a replica; fails with L{commands.UnknownJob}."""
        d = self._ask(job, "JOB_STATUS", {"job": job}, client)

        def answered(answer: Asked) -> dict[str, Any]:
            if isinstance(answer, dict):
                status = answer.get("status")
                if not isinstance(status, dict):
                    raise self._malformed(job, "JOB_STATUS")
                return status
            summary = self.replicas.replica_status(job)
            if summary is None:
                raise self._unknown(job, refused=answer)
            return dict(summary, answered_by="replica")

        return d.addCallback(answered)

    def job_tasks(
        self, job: str, offset: int, limit: int, client: str, state: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """A page of C{job}'s tasks (C{tasks}, C{next}), from its leader or a replica; only in C{state}, if given."""
        arguments: dict[str, Any] = {"job": job, "offset": offset, "limit": limit}
        if state is not None:
            arguments["state"] = state
        d = self._ask(job, "JOB_TASKS", arguments, client)

        def answered(answer: Asked) -> dict[str, Any]:
            if isinstance(answer, dict):
                if not isinstance(answer.get("tasks"), list) or type(answer.get("next")) is not int:
                    raise self._malformed(job, "JOB_TASKS")
                return {"tasks": answer["tasks"], "next": answer["next"]}
            page = self.replicas.replica_tasks(job, offset, limit, None if state is None else parse_states(state))
            if page is None:
                raise self._unknown(job, refused=answer)
            tasks, total = page
            following = offset + len(tasks)
            return {"tasks": tasks, "next": following if following < total else -1}

        return d.addCallback(answered)

    def cancel(self, job: str, client: str) -> Deferred[int]:
        """Cancel C{job} through its leader; how many tasks it cancelled.  A replica cannot cancel."""
        d = self._ask(job, "CANCEL_JOB", {"job": job}, client)

        def answered(answer: Asked) -> int:
            if not isinstance(answer, dict):
                raise self._unknown(job, refused=answer, more=" (a job is cancelled only through its master)")
            cancelled = answer.get("cancelled")
            if type(cancelled) is not int:
                raise self._malformed(job, "CANCEL_JOB")
            return cancelled

        return d.addCallback(answered)

    def rerun(self, job: str, which: str, client: str) -> Deferred[dict[str, Any]]:
        """Run tasks of C{job} again through its leader (RERUN_TASKS); a replica cannot."""
        d = self._ask(job, "RERUN_TASKS", {"job": job, "which": which}, client)

        def answered(answer: Asked) -> dict[str, Any]:
            if not isinstance(answer, dict):
                raise self._unknown(job, refused=answer, more=" (a job is run again only by its master)")
            if type(answer.get("count")) is not int or not isinstance(answer.get("tasks"), list):
                raise self._malformed(job, "RERUN_TASKS")
            return {"count": answer["count"], "tasks": answer["tasks"]}

        return d.addCallback(answered)

    def replica_jobs(self) -> list[dict[str, Any]]:
        """Summaries of the jobs this node holds replicas of but does not lead, marked as answered by a replica."""
        return [
            dict(summary, answered_by="replica")
            for summary in self.replicas.replica_jobs()
            if not self.leads(str(summary.get("id")))
        ]

    # -- forwarding ------------------------------------------------------------------

    def _leader(self, job: str) -> JobLeader | None:
        leader = self._directory.lookup(job)
        if leader is None or leader.master == self._node.info.name:
            return None
        return leader

    def _ask(self, job: str, command: str, arguments: dict[str, Any], client: str) -> Deferred[Asked]:
        """
        Forward C{command} to C{job}'s leader if it is connected; fire with
        its answer (a dict), with C{None} when there is no leader to ask (or
        it did not answer), or with the UNKNOWN_JOB message when the leader
        says it does not lead the job: the caller then answers from a
        replica, or not at all.  The leader's AUTH_REQUIRED is passed on.
        """
        leader = self._leader(job)
        if leader is None:
            return succeed(None)
        record = self._peers.get(leader.master)
        connection = record.connection if record is not None else None
        if connection is None or connection.closed:
            return succeed(None)
        self.forwarded += 1
        me = self._node.info.name
        log.debug(
            "Node {name} forwards {command} about job {job} from {client} to its master {master}",
            name=me,
            command=command,
            job=job,
            client=client,
            master=leader.master,
        )
        try:
            d = connection.callRemote(commands.ForwardClient, command=command, arguments=arguments, client=client)
        except Exception as e:  # TooLong and wrong types are raised at once
            return fail(self._unknown(job, more=f" ({leader.master} could not be asked: {e})"))
        d.addTimeout(self._timeout, self._clock)

        def checked(answer: dict[str, Any]) -> Asked:
            value = answer.get("answer")
            if not isinstance(value, dict):
                raise self._malformed(job, command)
            return value

        def failed(failure: Failure) -> str | None:
            if failure.check(commands.AuthRequired):
                raise commands.AuthRequired(f"{leader.master}, the master of job {job}, refused it: {failure.value}")
            if failure.check(commands.UnknownJob):
                log.info(
                    "Node {name} asked {master} about job {job}, which it thought {master} leads "
                    "at epoch {epoch}: {master} answered: {answer}",
                    name=me,
                    master=leader.master,
                    job=job,
                    epoch=leader.epoch,
                    answer=failure.getErrorMessage(),
                )
                return f"job {job} was led by {leader.master} at epoch {leader.epoch}, which says: " + (
                    failure.getErrorMessage()
                )
            why = f"no answer within {self._timeout:g}s" if failure.check(TimeoutError) else None
            log.warn(
                "Node {name} could not ask {master}, the master of job {job}, {command} for a client: {reason}",
                name=me,
                master=leader.master,
                job=job,
                command=command,
                reason=why or _reason(failure),
            )
            return None

        asked: Deferred[Asked] = d.addCallbacks(checked, failed)
        return asked

    # -- what a node says when it cannot answer --------------------------------------

    def _unknown(self, job: str, refused: str | None = None, more: str = "") -> commands.UnknownJob:
        """
        UNKNOWN_JOB naming what this node knows of C{job}'s leader (or
        C{refused}, what the leader said when asked).
        """
        me = self._node.info.name
        if refused is not None:
            return commands.UnknownJob(refused + more)
        leader = self._directory.lookup(job)
        if leader is None or leader.master == me:
            return commands.UnknownJob(
                f"node {me} is not the master of job {job!r} and knows no node that is{more}; "
                f"ask the node it was submitted to"
            )
        record = self._peers.get(leader.master)
        connected = record is not None and record.connection is not None and not record.connection.closed
        where = (
            f"{leader.master} did not answer node {me} for it"
            if connected
            else f"{leader.master} is not connected to node {me}"
        )
        return commands.UnknownJob(f"job {job} was led by {leader.master} at epoch {leader.epoch}; {where}{more}")

    def _malformed(self, job: str, command: str) -> commands.UnknownJob:
        leader = self._directory.lookup(job)
        master = leader.master if leader is not None else "its master"
        log.warn(
            "Node {name} got a malformed answer from {master} to a forwarded {command} about job {job}",
            name=self._node.info.name,
            master=master,
            command=command,
            job=job,
        )
        return commands.UnknownJob(f"{master}, the master of job {job}, answered {command} with a malformed answer")


def _reason(failure: Failure) -> str:
    """A failed call's reason, in a few words."""
    if failure.check(amp.UnhandledCommand):
        return "it does not know FORWARD_CLIENT (an older p2pexec?)"
    return failure.getErrorMessage() or failure.type.__name__  # type: ignore[union-attr]
