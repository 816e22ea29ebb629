"""
TASK_OUTPUT: how a node answers for a task's full output (see
L{commands.TaskOutput} and docs/protocol.rst).

The output lives on the worker that ran the attempt (L{p2pexec.outputs}).
A question travels at most three nodes: a client asks any node; a node
that does not lead the job forwards it to the job's leader (as
L{p2pexec.following} does); the leader finds the task's newest attempt and
asks the worker that holds it, naming the attempt; the worker answers from
its store.  A TASK_OUTPUT that arrives over a peer link is never forwarded
to another leader: it is answered as the job's master, or, when it names an
attempt, as a worker.

L{OutputCommands} is the responder, mixed into L{p2pexec.peer.PeerProtocol};
L{TaskOutputs} decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, TimeoutError, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.attempt_states import AttemptState
from p2pexec.framing import bad_arguments
from p2pexec.log import NodeLogger
from p2pexec.outputs import STREAMS, OutputStore
from p2pexec.task_states import TaskState

if TYPE_CHECKING:
    from p2pexec.directory import JobDirectory
    from p2pexec.interfaces import INode, IPeerHandler
    from p2pexec.job import TaskRecord
    from p2pexec.master import Master
    from p2pexec.membership import PeerTable
    from p2pexec.worker import Worker

log = NodeLogger()

ASK_TIMEOUT = 10.0
"""Seconds a node waits for a worker's (or a leader's) answer to TASK_OUTPUT."""

_ENDED_STATES = (TaskState.DONE, TaskState.RETRY_WAIT)
"""The task states in which a task's newest attempt has ended."""

_PASSED_ON = (
    commands.UnknownJob,
    commands.UnknownTask,
    commands.NotStarted,
    commands.OutputGone,
    commands.AuthRequired,
    commands.BadArguments,
)


class TaskOutputs:
    """A node's answers to TASK_OUTPUT: as a job's master, as a worker, or by forwarding."""

    def __init__(self, clock: IReactorTime, store: OutputStore | None, timeout: float = ASK_TIMEOUT) -> None:
        """
        @param store: this node's kept output; C{None} if it keeps none (C{--max-output 0}).
        """
        self._clock = clock
        self.store = store
        self._timeout = timeout

    def wire(self, node: INode, peers: PeerTable, master: Master, worker: Worker, directory: JobDirectory) -> None:
        """Connect to the parts it reads: the node's name, its peers, its jobs, its worker and the job leaders."""
        self._node = node
        self._peers = peers
        self._master = master
        self._worker = worker
        self._directory = directory

    def answer(
        self,
        job: str,
        task: str,
        stream: str,
        offset: int,
        limit: int,
        attempt: int | None,
        peer: str | None,
        client: str,
    ) -> Deferred[dict[str, Any]]:
        """
        Answer TASK_OUTPUT (its arguments checked already) from C{peer} (a
        node's name; C{None} for a client at C{client}).
        """
        own = self._master.jobs.get(job)
        if own is not None:
            return maybeDeferred(self._as_master, job, own.tasks.get(task), task, stream, offset, limit)
        if peer is not None:
            if attempt is None:
                return fail(commands.UnknownJob(f"node {self._me} is not the master of job {job!r}"))
            return maybeDeferred(self._as_worker, peer, job, task, attempt, stream, offset, limit)
        return self._forward(job, task, stream, offset, limit, client)

    @property
    def _me(self) -> str:
        return self._node.info.name

    # -- the job's master ------------------------------------------------------------

    def _as_master(
        self, job: str, record: TaskRecord | None, task: str, stream: str, offset: int, limit: int
    ) -> Deferred[dict[str, Any]]:
        """The newest attempt's output, from the worker that holds it (this node's own store, or a peer's)."""
        if record is None:
            raise commands.UnknownTask(f"job {job} has no task {task!r}")
        attempt, worker = record.attempt, record.worker
        ended = record.state in _ENDED_STATES
        if attempt == 0 or worker is None:
            if ended:
                raise commands.OutputGone(f"task {task} of job {job} never ran (the job was cancelled first)")
            raise commands.NotStarted(f"task {task} of job {job} has not started yet")
        if record.spec.command is None:
            # An instruction: no process, no output.
            return succeed(_answer(b"", offset, 0, ended, False, attempt, worker))
        if worker == self._me:
            d = maybeDeferred(self._as_worker, self._me, job, task, attempt, stream, offset, limit)
        else:
            d = self._ask_worker(worker, job, task, attempt, stream, offset, limit)

        def not_started(failure: Failure) -> Failure:
            # The worker does not hold an attempt that ended: it forgot it (or was restarted).
            if failure.check(commands.NotStarted) and record.state in _ENDED_STATES and record.attempt == attempt:
                raise commands.OutputGone(
                    f"worker {worker} no longer holds the output of attempt {attempt} of task {task} of job {job} "
                    f"(removed after its --output-retention, or it was restarted)"
                )
            return failure

        return d.addErrback(not_started)

    def _ask_worker(
        self, worker: str, job: str, task: str, attempt: int, stream: str, offset: int, limit: int
    ) -> Deferred[dict[str, Any]]:
        """Ask the peer C{worker} for a piece of an attempt's output."""
        gone = f"worker {worker}, which ran attempt {attempt} of task {task} of job {job},"
        record = self._peers.get(worker)
        connection = record.connection if record is not None else None
        if connection is None or connection.closed:
            return fail(commands.OutputGone(f"{gone} is not connected to node {self._me}, the job's master"))
        try:
            d = connection.callRemote(
                commands.TaskOutput, job=job, task=task, stream=stream, offset=offset, limit=limit, attempt=attempt
            )
        except Exception as e:  # TooLong and wrong types are raised at once
            return fail(commands.OutputGone(f"{gone} could not be asked: {e}"))
        d.addTimeout(self._timeout, self._clock)

        def failed(failure: Failure) -> Failure:
            if failure.check(commands.NotStarted, commands.OutputGone, commands.BadArguments):
                return failure
            why = _reason(failure, self._timeout)
            log.warn(
                "Node {name} could not ask worker {worker} for the output of task {task} of job {job}: {reason}",
                name=self._me,
                worker=worker,
                task=task,
                job=job,
                reason=why,
            )
            raise commands.OutputGone(f"{gone} did not give it: {why}")

        return d.addErrback(failed)

    # -- a worker --------------------------------------------------------------------

    def _as_worker(
        self, master: str, job: str, task: str, attempt: int, stream: str, offset: int, limit: int
    ) -> dict[str, Any]:
        """A piece of an attempt this node ran (for C{master}), from its own store."""
        what = f"attempt {attempt} of task {task} of job {job}"
        state = self._worker.state_of(master, job, task, attempt)
        if state is AttemptState.QUEUED:
            raise commands.NotStarted(f"{what} is queued on node {self._me}, waiting for a slot")
        if self.store is None:
            raise commands.OutputGone(f"node {self._me} keeps no full task output (it runs with --max-output 0)")
        piece = self.store.read(job, task, attempt, stream, offset, limit)
        if piece is None:
            raise commands.NotStarted(f"node {self._me} holds no output of {what}")
        return _answer(piece.data, piece.next_offset, piece.size, piece.ended, piece.cut, attempt, self._me)

    # -- forwarding ------------------------------------------------------------------

    def _forward(
        self, job: str, task: str, stream: str, offset: int, limit: int, client: str
    ) -> Deferred[dict[str, Any]]:
        """Ask C{job}'s leader (one hop), for a client of this node."""
        leader = self._directory.lookup(job)
        if leader is None or leader.master == self._me:
            return fail(
                commands.UnknownJob(
                    f"node {self._me} is not the master of job {job!r} and knows no node that is; "
                    f"ask the node it was submitted to"
                )
            )
        master = leader.master
        record = self._peers.get(master)
        connection = record.connection if record is not None else None
        if connection is None or connection.closed:
            return fail(
                commands.UnknownJob(
                    f"job {job} was led by {master} at epoch {leader.epoch}; {master} is not "
                    f"connected to node {self._me}"
                )
            )
        log.debug(
            "Node {name} forwards TASK_OUTPUT about job {job} from {client} to its master {master}",
            name=self._me,
            job=job,
            client=client,
            master=master,
        )
        try:
            d = connection.callRemote(
                commands.TaskOutput, job=job, task=task, stream=stream, offset=offset, limit=limit
            )
        except Exception as e:
            return fail(commands.UnknownJob(f"job {job} is led by {master}, which could not be asked: {e}"))
        d.addTimeout(self._timeout, self._clock)

        def failed(failure: Failure) -> Failure:
            if failure.check(*_PASSED_ON):
                return failure
            raise commands.UnknownJob(
                f"job {job} is led by {master}, which did not give its output: {_reason(failure, self._timeout)}"
            )

        return d.addErrback(failed)


def _answer(
    data: bytes, next_offset: int, size: int, ended: bool, cut: bool, attempt: int, node: str
) -> dict[str, Any]:
    return {
        "data": data,
        "next_offset": next_offset,
        "size": size,
        "ended": ended,
        "cut": cut,
        "attempt": attempt,
        "node": node,
    }


def _reason(failure: Failure, timeout: float) -> str:
    """Why a peer did not answer, in a few words."""
    if failure.check(TimeoutError):
        return f"no answer within {timeout:g}s"
    if failure.check(amp.UnhandledCommand):
        return "it does not know TASK_OUTPUT (an older p2pexec?)"
    return failure.getErrorMessage() or str(failure.type)


class OutputCommands(amp.CommandLocator):
    """The responder to TASK_OUTPUT, mixed into L{p2pexec.peer.PeerProtocol}."""

    _handler: IPeerHandler
    peer_name: str | None

    def address(self) -> str:
        """HOST:PORT of the other end (provided by the protocol)."""
        raise NotImplementedError

    def describe(self) -> str:
        """The peer's name and address, for log lines (provided by the protocol)."""
        raise NotImplementedError

    @commands.TaskOutput.responder
    def _task_output(
        self, job: str, task: str, stream: str, offset: int, limit: int | None = None, attempt: int | None = None
    ) -> Deferred[dict[str, Any]]:
        if stream not in STREAMS:
            raise bad_arguments(
                self.describe(), "TASK_OUTPUT", ValueError(f"'stream' must be stdout or stderr, not {stream!r}")
            )
        if offset < 0 or (limit is not None and limit < 0) or (attempt is not None and attempt < 1):
            raise bad_arguments(
                self.describe(),
                "TASK_OUTPUT",
                ValueError("'offset' and 'limit' must be 0 or more, 'attempt' 1 or more"),
            )
        if limit is None or limit > commands.TASK_OUTPUT_LIMIT:
            limit = commands.TASK_OUTPUT_LIMIT
        return self._handler.task_outputs.answer(
            job, task, stream, offset, limit, attempt, self.peer_name, self.address()
        )
