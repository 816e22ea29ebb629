"""
What a node owes its peers: the messages it sends on its own initiative.

As a master it hands out assignments, asks what became of attempts, sends
cancels (remembering those it could not deliver, to send when the worker
connects again) and says when a job is complete; as a worker it sends its
results back as confirmations, and the master's acknowledgement lets the
worker forget them.  L{Outbox} is the master's L{IWorkerLink}; the sinks
are the worker's L{IResultSink}s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, TimeoutError, fail, gatherResults, maybeDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands, losses
from p2pexec.fence import held_to_wire
from p2pexec.log import NodeLogger
from p2pexec.model import Assignment, TaskResult
from p2pexec.replicas import Ballot, parse_stale

if TYPE_CHECKING:
    from p2pexec.interfaces import INode
    from p2pexec.job import Job
    from p2pexec.master import Master
    from p2pexec.membership import PeerTable
    from p2pexec.peer import PeerProtocol
    from p2pexec.worker import Worker

log = NodeLogger()

MAX_CANCELS_OWED = 1000
"""Cancelled jobs remembered per worker that could not be told yet (the oldest are forgotten first)."""


class LocalSink:
    """Results of the tasks this node runs as its own master: straight to the master."""

    def __init__(self, master: Master, outbox: Outbox, name: str, instance: str) -> None:
        self._master = master
        self._outbox = outbox
        self.key = (name, instance)

    def deliver(self, job: str, results: list[TaskResult]) -> None:
        """
        Apply the results to our own job; if this node stepped down from it
        meanwhile (another node took it over), they go where a worker's
        results of the job go: to the leader that adopted it, or they wait
        for one in the worker's cache.
        """
        try:
            self._master.confirm(job, results, sender=self.key[0])
        except KeyError:
            self._outbox.send_confirmations(self.key, job, results)


class RemoteSink:
    """Results going back to another node that is their master."""

    def __init__(self, outbox: Outbox, name: str, instance: str) -> None:
        self._outbox = outbox
        self.key = (name, instance)

    def deliver(self, job: str, results: list[TaskResult]) -> None:
        """Send them as EXECUTION_CONFIRMATION."""
        self._outbox.send_confirmations(self.key, job, results)


class Outbox:
    """
    The node's outgoing commands, and what it still owes.

    @ivar confirming: per master, how many EXECUTION_CONFIRMATIONs await
        an answer (a connection carrying them is judged as busy).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._cancels_owed: dict[str, dict[str, None]] = {}
        """Per worker, the cancelled jobs it could not be told of (it was not connected), oldest first."""
        self._in_flight: set[Deferred[Any]] = set()
        self.confirming: dict[str, int] = {}
        self._local: LocalSink | None = None

    def wire(self, node: INode, peers: PeerTable, master: Master, worker: Worker) -> None:
        """Connect the outbox to the node it sends for, its peer table, master and worker."""
        self._node = node
        self._peers = peers
        self._master = master
        self._worker = worker

    def local_sink(self) -> LocalSink:
        """Where this node's worker puts the results of this node's own jobs."""
        if self._local is None:
            info = self._node.info
            self._local = LocalSink(self._master, self, info.name, info.instance)
        return self._local

    def sink_for(self, name: str, instance: str) -> RemoteSink:
        """Where this node's worker puts the results of master C{name}'s jobs."""
        return RemoteSink(self, name, instance)

    def _connection(self, name: str) -> PeerProtocol | None:
        record = self._peers.get(name)
        return None if record is None else record.connection

    # -- as a master: IWorkerLink ------------------------------------------------

    def epoch_of(self, job: str) -> int:
        """The epoch this node leads C{job} with (the master's L{Master.epoch_of}: 1 unless it took the job over)."""
        return self._master.epoch_of(job)

    def send_assignments(self, worker: str, job: str, assignments: list[Assignment], epoch: int | None = None) -> None:
        """Hand tasks of C{job} (led at C{epoch}, by default L{epoch_of}) to a worker: ourselves directly, others over AMP."""
        me = self._node.info
        epoch = self.epoch_of(job) if epoch is None else epoch
        if worker == me.name:
            try:
                self._worker.accept(self.local_sink(), job, assignments, Ballot(epoch, me.name))
            except (commands.StaleBallot, commands.ShuttingDown, commands.NotCapable):
                # This node's own worker refused (its fence has seen a newer
                # leader of the job, say): handled as another worker's refusal
                # is, on the next turn, as its answer would come.
                attempts = [(assignment.task.id, assignment.attempt) for assignment in assignments]
                self._clock.callLater(0, self._assignment_refused, Failure(), worker, job, attempts)
            return
        protocol = self._connection(worker)
        if protocol is None:
            self._master.worker_lost(worker, "is not connected")
            return
        log.info(
            "Node {name} assigning tasks to peer {peer}", name=me.name, peer=worker, job=job, count=len(assignments)
        )
        for batch in commands.chunk(assignments, Assignment.to_wire):
            d = protocol.callRemote(
                commands.InstructionAssignment,
                job=job,
                master=me.name,
                master_instance=me.instance,
                tasks=batch,
                epoch=epoch,
            )
            attempts = [(assignment.task.id, assignment.attempt) for assignment in batch.items]
            d.addErrback(self._assignment_refused, worker, job, attempts)

    def _assignment_refused(self, failure: Failure, worker: str, job: str, attempts: list[tuple[str, int]]) -> None:
        """
        A worker refused a batch.  A refusal (it is leaving, or cannot run
        the kind) puts just that batch back and stops assigning to it; a lost
        connection is handled when the connection is lost.  A STALE_BALLOT
        naming a newer leader of the job deposes this node at once (it
        steps down), and the worker stays usable for other jobs: it fenced
        off this job only.
        """
        replication = self._master.replication
        if failure.check(commands.StaleBallot) and replication is not None:
            newer = parse_stale(failure.getErrorMessage())
            why = f"{worker} refused its assignments: it has seen that epoch"
            if newer is not None and (replication.newer_ballot_seen(job, newer, why) or job not in self._master.jobs):
                self._master.refused(worker, job, attempts, failure.getErrorMessage(), usable=True)
                return
        if failure.check(commands.DoesNotFit):
            losses.does_not_fit(self._master, worker, job, attempts, failure.getErrorMessage())
            return
        if failure.check(
            commands.ShuttingDown,
            commands.NotCapable,
            commands.StaleBallot,
            commands.BadArguments,
            commands.ConnectRequired,
            amp.RemoteAmpError,
        ):
            self._master.refused(worker, job, attempts, failure.getErrorMessage(), usable=False)
        else:
            log.debug("INSTRUCTION_ASSIGNMENT to {peer} failed: {error}", peer=worker, error=failure.getErrorMessage())

    def query_tasks(self, worker: str, job: str, attempts: list[tuple[str, int]]) -> Deferred[dict[str, Any]]:
        """Ask C{worker} what became of these attempts (RESULT_QUERY, in chunks; the master checks the answer)."""
        protocol = self._connection(worker)
        if protocol is None:
            return fail(ConnectionError(f"worker {worker} is not connected"))
        asked = [
            protocol.callRemote(commands.ResultQuery, job=job, tasks=batch, epoch=self.epoch_of(job))
            for batch in commands.chunk([{"id": t, "attempt": a} for t, a in attempts], lambda entry: entry)
        ]

        def merge(answers: list[dict[str, Any]]) -> dict[str, Any]:
            # The chunks' lists joined, as they came: the master judges them
            # (a value that is not a list is kept, so that it is named).
            merged: dict[str, Any] = {"done": [], "running": [], "unknown": []}
            for answer in answers:
                for key in list(merged):
                    value = answer.get(key)
                    if isinstance(merged[key], list) and isinstance(value, list):
                        merged[key].extend(value)
                    elif isinstance(merged[key], list):
                        merged[key] = value
            return merged

        return gatherResults(asked, consumeErrors=True).addCallback(merge)

    def send_cancel(self, worker: str, job: str, epoch: int | None = None) -> None:
        """Tell C{worker} (perhaps this node) to stop every task of C{job} (led at C{epoch}) it holds."""
        me = self._node.info.name
        epoch = self.epoch_of(job) if epoch is None else epoch
        if worker == me:
            self._worker.cancel(me, job, Ballot(epoch, me))
            return
        protocol = self._connection(worker)
        if protocol is None:
            self._owe_cancel(worker, job, "not connected")
            return

        def failed(failure: Failure) -> None:
            if failure.check(ConnectionDone, ConnectionLost):
                # The connection was closing already: tell it on the next one.
                self._owe_cancel(worker, job, "its connection closed")
            else:
                log.warn("CANCEL_JOB to {worker} failed: {error}", worker=worker, error=failure.getErrorMessage())

        protocol.callRemote(commands.CancelJob, job=job, epoch=epoch).addErrback(failed)

    def send_cancel_attempts(self, worker: str, job: str, attempts: list[tuple[str, int]]) -> None:
        """
        Tell C{worker} (perhaps this node) to stop these attempts of C{job}
        (CANCEL_ATTEMPTS), if it can be reached: otherwise, or if it fails, the
        copy runs on and its result is dropped as stale.
        """
        me = self._node.info.name
        epoch = self.epoch_of(job)
        if worker == me:
            self._worker.cancel(me, job, Ballot(epoch, me), set(attempts))
            return
        protocol = self._connection(worker)
        if protocol is None:
            return
        tasks = [{"id": task, "attempt": attempt} for task, attempt in attempts]
        protocol.callRemote(commands.CancelAttempts, job=job, tasks=tasks, epoch=epoch).addErrback(
            lambda f: log.info(
                "CANCEL_ATTEMPTS to {worker} failed: {error}; its copy runs on",
                worker=worker,
                error=f.getErrorMessage(),
            )
        )

    def _owe_cancel(self, worker: str, job: str, why: str) -> None:
        """Remember to tell C{worker} that C{job} is cancelled once it connects again."""
        owed = self._cancels_owed.setdefault(worker, {})
        owed[job] = None
        while len(owed) > MAX_CANCELS_OWED:
            del owed[next(iter(owed))]
        log.warn(
            "Node {name} could not tell {worker} to stop job {job} yet: {why}; it will be told when it "
            "connects again, and its results are dropped meanwhile",
            name=self._node.info.name,
            worker=worker,
            job=job,
            why=why,
        )

    def pay_owed(self, worker: str) -> None:
        """C{worker} is connected again: send it the cancels it could not be told of."""
        for job in self._cancels_owed.pop(worker, {}):
            self.send_cancel(worker, job)

    def send_complete(self, worker: str, job: Job) -> None:
        """Tell a worker that took part that C{job} is finished."""
        protocol = self._connection(worker)
        if protocol is None:
            return
        d = protocol.callRemote(
            commands.TaskComplete,
            job=job.id,
            succeeded=job.succeeded,
            failed=job.failed,
            elapsed=job.elapsed(self._clock.seconds()),
            epoch=self.epoch_of(job.id),
        )
        d.addErrback(
            lambda f: log.debug("TASK_COMPLETE to {peer} failed: {error}", peer=worker, error=f.getErrorMessage())
        )

    # -- as a worker: confirmations -------------------------------------------------

    def query_held(self, worker: str, job: str, epoch: int) -> Deferred[Any]:
        """Ask C{worker} (perhaps this node) what it holds of C{job}, as its new leader at C{epoch} (HELD_TASKS)."""
        me = self._node.info.name
        if worker == me:
            return maybeDeferred(lambda: held_to_wire(self._worker.held(job, Ballot(epoch, me))))
        protocol = self._connection(worker)
        if protocol is None:
            return fail(ConnectionError(f"worker {worker} is not connected"))
        return protocol.callRemote(commands.HeldTasks, job=job, epoch=epoch)

    def send_confirmations(self, master: tuple[str, str], job: str, results: list[TaskResult]) -> None:
        """
        Send results to whichever process is master C{name} now (one
        restarted with its journal knows the job), or to the job's new
        leader once one adopted it (asked HELD_TASKS): this node itself, or
        another node, with its epoch.
        """
        sink_master = master[0]
        adopter = self._worker.fence.adopter(job)
        name = sink_master if adopter is None else adopter.node
        if name == self._node.info.name:
            self._confirm_here(sink_master, job, results, adopter)
            return
        protocol = self._connection(name)
        if protocol is None:
            log.info(
                "Node {name} could not confirm {count} result(s) of job {job}: master {master} is not "
                "connected. Finished ones are kept: a master restarted with its journal asks for them; "
                "otherwise it runs those tasks again",
                name=self._node.info.name,
                count=len(results),
                job=job,
                master=name,
            )
            return
        for batch in commands.chunk(results, TaskResult.to_wire, encode=commands.encode_result_within):
            if adopter is None:
                d = protocol.callRemote(commands.ExecutionConfirmation, job=job, results=batch)
            else:
                d = protocol.callRemote(commands.ExecutionConfirmation, job=job, results=batch, epoch=adopter.epoch)
            d.addCallback(self._acknowledged, sink_master, adopter or Ballot(1, name), job, list(batch.items))
            self._in_flight.add(d)
            self.confirming[name] = self.confirming.get(name, 0) + 1
            d.addBoth(_discard_from, self._in_flight, d)
            d.addBoth(self._confirmed, name)
            d.addErrback(
                lambda f: log.warn(
                    "EXECUTION_CONFIRMATION to {master} failed: {error}", master=name, error=f.getErrorMessage()
                )
            )

    def _acknowledged(self, answer: Any, master: str, sent: Ballot, job: str, results: list[TaskResult]) -> Any:
        """
        The leader the results (assigned by C{master}) were sent to, at
        ballot C{sent}, has them for good: the worker may forget them, unless
        the answer's epoch (C{sent}'s when it gives none) shows it deposed.
        """
        epoch = answer.get("epoch") if isinstance(answer, dict) else None
        ballot = sent if not isinstance(epoch, int) else Ballot(epoch, sent.node)
        self._worker.acknowledged(master, job, results, ballot)
        return answer

    def _confirm_here(self, master: str, job: str, results: list[TaskResult], leader: Ballot | None) -> None:
        """Results of tasks that C{master} assigned, for this node, which leads their job now."""
        me = self._node.info.name
        try:
            self._master.confirm(job, results, sender=me)
        except KeyError:
            log.warn("Node {name} leads no job {job} any more; its results wait", name=me, job=job)
            return
        # Acknowledged once committed (held by a majority of the job's replicas), like a peer's confirmation.
        self._master.durable(job).addCallbacks(
            lambda _: self._worker.acknowledged(master, job, results, leader), lambda f: None
        )

    def _confirmed(self, result: Any, master: str) -> Any:
        """An EXECUTION_CONFIRMATION to C{master} was answered (or failed)."""
        left = self.confirming.get(master, 1) - 1
        if left > 0:
            self.confirming[master] = left
        else:
            self.confirming.pop(master, None)
        return result

    async def flush(self, timeout: float) -> None:
        """Wait (at most C{timeout} seconds) for the confirmations in flight to be answered."""
        if self._in_flight:
            await bounded(DeferredList(list(self._in_flight), consumeErrors=True), timeout, self._clock)

    # -- leaving -------------------------------------------------------------------

    def say_goodbye(self, name: str, protocol: PeerProtocol, timeout: float) -> Deferred[Any]:
        """Send DISCONNECT_REQUEST to peer C{name}; wait (at most C{timeout}) for its ACK, then close."""
        me = self._node.info.name
        sent = protocol.callRemote(commands.DisconnectRequest, reason="shutdown")

        def acked(_: Any) -> None:
            log.info("Node {name} got DISCONNECT_ACK from {peer}", name=me, peer=name)

        def failed(failure: Failure) -> None:
            if protocol.leaving:
                log.info("Node {name} and peer {peer} left at the same time", name=me, peer=name)
                return
            log.info(
                "Node {name} got no DISCONNECT_ACK from {peer}: {error}",
                name=me,
                peer=name,
                error=failure.getErrorMessage() or (failure.type.__name__ if failure.type is not None else "?"),
            )

        def close(_: Any) -> None:
            if protocol.transport is not None:
                protocol.transport.loseConnection()

        sent.addTimeout(timeout, self._clock)
        sent.addCallbacks(acked, failed)
        sent.addBoth(close)
        return sent


def _discard_from(result: Any, pending: set[Deferred[Any]], d: Deferred[Any]) -> Any:
    pending.discard(d)
    return result


async def bounded(d: Deferred[Any], timeout: float, clock: IReactorTime) -> None:
    """Wait for C{d}, at most C{timeout} seconds."""
    try:
        await d.addTimeout(timeout, clock)
    except TimeoutError:
        pass
