"""
The seams between the parts of a node, in one place.

Each interface says everything one part asks of another, so that no part
probes another with C{getattr}.  They are L{typing.Protocol}s, checked by
mypy structurally: a class provides one by having its methods and attributes,
with no declaration on the class (so the master, worker and journal need not
import this module to provide theirs), and at run time they cost nothing.
The code already used protocols for its seams; zope.interface would add a
declaration to every implementer and checks that only mypy-zope reads.

Who provides what (see docs/architecture.rst):

  - L{IPeerHandler}: L{p2pexec.responders.Responders}, for each
    L{p2pexec.peer.PeerProtocol};
  - L{IWorkerLink}: L{p2pexec.outbox.Outbox}, for the master;
  - L{IJobObserver}: L{p2pexec.startup.StartupJob}, for the master;
  - L{IResultSink}: the sinks of L{p2pexec.outbox}, for the worker;
  - L{ITaskRunner}: L{p2pexec.executor.Executor} (or a fake), for the worker;
  - L{IJournal}: L{p2pexec.journal.Journal} or L{p2pexec.journal.NullJournal};
  - L{INode}: L{p2pexec.node.Node}, for the parts it wires;
  - L{INodeViews}: L{p2pexec.views.Views}, for the web, metrics and AMP status;
  - L{IWebNode}: L{p2pexec.node.Node}, for the HTTP server (L{p2pexec.web});
  - L{IClientFollowing}: L{p2pexec.following.Following}, for the client commands;
  - L{IReplicaRecords}: L{p2pexec.replica_views.ReplicaViews} (the jobs
    rebuilt from the failover core's replica records), for L{p2pexec.following}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from p2pexec import status
    from p2pexec.auth import ChallengeResponse
    from p2pexec.config import NodeConfig
    from p2pexec.file_service import FileService
    from p2pexec.job import Job
    from p2pexec.journal_health import JournalProblem
    from p2pexec.journal_schema import StoredJob
    from p2pexec.model import Assignment, NodeInfo, TaskResult, TaskSpec
    from p2pexec.peer import PeerProtocol
    from p2pexec.replica_log import Batch
    from p2pexec.replicas import Ballot
    from p2pexec.task_output import TaskOutputs
    from p2pexec.tls import TLSConfig


class INode(Protocol):
    """What the parts of a node read of the node they belong to."""

    @property
    def info(self) -> NodeInfo:
        """How this node describes itself (its port is known once it listens)."""

    @property
    def stopping(self) -> bool:
        """Whether the node is leaving the cluster."""


class IPeerHandler(Protocol):
    """What a L{PeerProtocol} asks of the node it belongs to."""

    challenge: ChallengeResponse | None
    """With a cluster key: how a connection proves it (AUTHENTICATE); None without one."""

    local_challenge: ChallengeResponse | None
    """Without a cluster key: how a client proves the local token, to submit and cancel; None: anyone may."""

    tls: TLSConfig | None
    """With --tls: the node's TLS configuration (its certificate is bound into the proofs)."""

    following: IClientFollowing
    """How a client's question about a job this node does not lead is answered (forwarded, or from a replica)."""

    task_outputs: TaskOutputs
    """How TASK_OUTPUT is answered (issue 14: as the job's master, as a worker, or forwarded)."""

    files: FileService | None
    """How HAVE_BLOBS, PUT_BLOB and FETCH_BLOB are answered (issue 16); None: this node moves no files."""

    def connection_opened(self, protocol: PeerProtocol) -> bool:
        """Count a new connection by its remote address; C{False} refuses it (too many from there)."""

    def connection_released(self, protocol: PeerProtocol) -> None:
        """A connection counted by L{connection_opened} is gone: count one fewer under its address."""

    def connect_requested(
        self, protocol: PeerProtocol, cluster: str, name: str, instance: str, version: int
    ) -> dict[str, Any]:
        """Accept or refuse (by raising a declared error) a CONNECT_REQUEST."""

    def handshake_received(self, protocol: PeerProtocol, node: NodeInfo) -> NodeInfo:
        """Check the dialling peer's description; return our own."""

    def connection_ready(self, protocol: PeerProtocol, node: NodeInfo) -> None:
        """The handshake on C{protocol} is complete, in either direction."""

    def peers_offered(self, protocol: PeerProtocol, peers: list[tuple[NodeInfo, float]]) -> list[dict[str, Any]]:
        """Merge the peer's known peers (with the age of each); return ours, in wire form."""

    def assignment_received(
        self, protocol: PeerProtocol, job: str, master: str, master_instance: str, tasks: list[Any], epoch: int | None
    ) -> int:
        """Queue tasks from a master (at C{epoch}, absent: 1); return how many were accepted."""

    def confirmation_received(
        self, protocol: PeerProtocol, job: str, results: list[Any]
    ) -> Deferred[tuple[int, int, int]]:
        """Apply a worker's results; fire with (applied, stale, the job's epoch here) once they are committed."""

    def results_queried(self, protocol: PeerProtocol, job: str, tasks: list[Any]) -> dict[str, list[str]]:
        """A master asks what became of attempts it gave us (see L{commands.ResultQuery})."""

    def cancel_requested(self, protocol: PeerProtocol, job: str, epoch: int | None) -> int:
        """Cancel a job we are master of, or stop our part of a job (see L{commands.CancelJob})."""

    def rerun_requested(self, protocol: PeerProtocol, job: str, which: str) -> Deferred[dict[str, Any]]:
        """Run again tasks of a finished job we are master of (see L{commands.RerunTasks})."""

    def replicate_received(
        self, protocol: PeerProtocol, job: str, ballot: Ballot, first_seq: int, records: bytes, last_seq: int | None
    ) -> Deferred[int]:
        """REPLICATE: store a job's records (as received); fire with the highest seq held, once durable."""

    def promise_requested(self, protocol: PeerProtocol, job: str, ballot: Ballot, after: int) -> Deferred[Any]:
        """PROMISE: promise a ballot for a job; fire with the PROMISE answer."""

    def pre_promise_requested(self, protocol: PeerProtocol, job: str, ballot: Ballot) -> Ballot | None:
        """PRE_PROMISE: C{None} if this node would promise C{ballot} and lost the job's leader, else that leader."""

    def leader_announced(self, protocol: PeerProtocol, job: str, ballot: Ballot, master: str) -> None:
        """JOB_LEADER: C{master} leads C{job} at C{ballot}."""

    def held_tasks_queried(self, protocol: PeerProtocol, job: str, epoch: int) -> dict[str, Any]:
        """A job's new leader asks what we hold of it (see L{commands.HeldTasks}); the answer's wire form."""

    def attempts_cancel_requested(
        self, protocol: PeerProtocol, job: str, attempts: set[tuple[str, int]], epoch: int | None
    ) -> int:
        """A job's master stops these attempts here (see L{commands.CancelAttempts}); how many were stopped."""

    def submit_part(
        self, protocol: PeerProtocol, tasks: list[Any], defaults: Any, upload: str, final: bool, priority: int | None
    ) -> Any:
        """A part of a submitted job (see L{commands.SubmitJob}); the answer, or a Deferred of it."""

    def jobs_status(self) -> list[dict[str, Any]]:
        """Summaries of the jobs this node is master of."""

    def job_status(self, job_id: str) -> dict[str, Any]:
        """One job's summary."""

    def job_tasks(self, job_id: str, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """A page of one job's tasks, and how many matched."""

    def peers_status(self) -> list[dict[str, Any]]:
        """This node, then its peers."""

    def node_status(self) -> dict[str, Any]:
        """This node's load and links, for a peer's NODE_STATUS."""

    def job_completed(self, protocol: PeerProtocol, job: str, succeeded: int, failed: int, elapsed: float) -> None:
        """Note that a master's job has finished."""

    def disconnect_requested(self, protocol: PeerProtocol, reason: str) -> None:
        """Note that the peer is leaving."""

    def connection_lost(self, protocol: PeerProtocol, reason: Failure) -> None:
        """Forget the connection."""


class IWorkerLink(Protocol):
    """How the master reaches its workers."""

    def send_assignments(self, worker: str, job: str, assignments: list[Assignment]) -> None:
        """Hand C{assignments} to C{worker}; a failure means the worker is lost."""

    def send_complete(self, worker: str, job: Job) -> None:
        """Tell C{worker} that C{job} has finished."""

    def query_tasks(self, worker: str, job: str, attempts: list[tuple[str, int]]) -> Deferred[dict[str, Any]]:
        """
        Ask C{worker} what became of these attempts: fires with its answer,
        C{{"done": ids, "running": ids, "unknown": ids}} from a well-behaved
        worker (the master checks it, see L{p2pexec.recovery.check_query_answer});
        the results of the done ones come again as confirmations.
        """

    def send_cancel(self, worker: str, job: str) -> None:
        """Tell C{worker} to stop every task of C{job} it holds."""

    def send_cancel_attempts(self, worker: str, job: str, attempts: list[tuple[str, int]]) -> None:
        """Tell C{worker} to stop these (task id, attempt) of C{job} (a backup's losing copy), if it holds them."""

    def query_held(self, worker: str, job: str, epoch: int) -> Deferred[Any]:
        """
        Ask C{worker} (perhaps this node) what it holds of C{job}, as the
        job's new leader at C{epoch} (HELD_TASKS): fires with the answer's
        wire form (the master checks it, see L{p2pexec.recovery.check_held_answer}).
        """


class IJobObserver(Protocol):
    """Who hears about finished jobs."""

    def job_finished(self, job: Job) -> None:
        """C{job} has a result for every task."""


class IResultSink(Protocol):
    """Where the results of one master's tasks go."""

    key: tuple[str, str]
    """The master's (name, instance): identifies the sink."""

    def deliver(self, job: str, results: list[TaskResult]) -> None:
        """Send a batch of results of C{job} to the master."""


class ITaskRunner(Protocol):
    """Runs one task attempt that has a command."""

    def run(self, job: str, assignment: Assignment) -> Deferred[TaskResult]:
        """Run it; fire with its result, never fail."""

    def stop_all(self) -> None:
        """Terminate every running task."""

    def stop(self, job: str, assignment: Assignment) -> None:
        """Terminate one running attempt (its result still arrives)."""

    def settled(self) -> Deferred[None]:
        """Fires once nothing it signalled is left running (at once, for a runner without processes)."""


class ITaskState(Protocol):
    """What the journal reads from a task record when it writes it."""

    spec: TaskSpec
    attempt: int
    worker: str | None
    failures: int
    losses: int
    result: TaskResult | None

    @property
    def state_name(self) -> str:
        """C{pending}, C{assigned} or C{done}."""


class IJobState(Protocol):
    """What the journal reads from a job when it writes it."""

    id: str
    source: str | None
    started_at: float
    """When it was accepted, by the wall clock (seconds since the epoch)."""
    cancelled: bool
    priority: int
    """Higher runs first (see L{p2pexec.fairshare})."""
    tasks: dict[str, Any]

    @property
    def finished_at(self) -> float | None:
        """When it ended, by the wall clock, or C{None}."""


class IJournal(Protocol):
    """
    Where a master records its decisions (see L{p2pexec.journal.Journal}).

    @ivar problem: why the journal cannot be written at the moment (its
        last write failed), or C{None} while it can.
    """

    problem: JournalProblem | None

    def job_added(self, job: IJobState) -> None:
        """A job was accepted: write it and all its tasks."""

    def task_changed(self, job_id: str, record: ITaskState) -> None:
        """A task's state, attempt or result changed."""

    def job_changed(self, job: IJobState) -> None:
        """A job finished or was cancelled."""

    def durable(self) -> Deferred[None]:
        """
        Fires once everything marked so far is written.  It never fails: if a
        write fails it waits for one that succeeds (they are retried).
        """

    def commit(self) -> None:
        """Write everything marked so far, now."""

    def unfinished_jobs(self) -> list[StoredJob]:
        """The jobs not finished, as stored."""

    def finished_job(self, source: str) -> StoredJob | None:
        """The job from C{source} that finished last, if the journal still has one."""

    def withdraw(self, job_id: str) -> None:
        """Forget a job added but never written (its submission was refused)."""

    def prune(self, finished_before: float) -> int:
        """Delete the jobs that finished before C{finished_before} (wall clock); return how many."""

    def last_pruned(self) -> list[str]:
        """The ids of the jobs the last L{prune} deleted."""

    def prune_replicas(self, finished_before: float) -> int:
        """Delete the replicated logs of the jobs that ended before C{finished_before} (wall clock); return how many."""

    replicas_pruned: list[str]
    """The jobs whose replicated logs the last L{prune_replicas} deleted."""

    def close(self) -> None:
        """Write what is marked and release the journal."""

    def replica_changed(self, job: str, promised: Ballot | None, accepted: Ballot | None) -> None:
        """What this node promised and last accepted for C{job}'s replicated log changed."""

    def replica_batch(self, job: str, batch: Batch) -> None:
        """This node holds C{batch} of C{job}'s log (see L{p2pexec.replica_log})."""

    def replica_batches(self, job: str) -> list[Batch]:
        """The batches of C{job}'s log this node holds, in the order it took them."""

    def replica_logs(self) -> list[tuple[str, Ballot | None, Ballot | None, list[Batch]]]:
        """Every job log this node holds: (job, promised, accepted, batches in the order taken)."""


class INodeViews(Protocol):
    """What the HTTP API, the metrics and the AMP status commands read of a node."""

    def my_load(self) -> status.Load:
        """This node's running and queued tasks and its live connections."""

    def peers_status(self) -> list[dict[str, Any]]:
        """This node, then its peers (see L{p2pexec.status.peers_view})."""

    def topology_status(self) -> dict[str, Any]:
        """Nodes and links (see L{p2pexec.status.topology_view})."""

    def jobs_status(self) -> list[dict[str, Any]]:
        """Every job this node is master of, newest first."""

    def job_status(self, job_id: str) -> dict[str, Any]:
        """One job's summary; raises L{p2pexec.commands.UnknownJob}."""

    def job_tasks(self, job_id: str, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """A page of one job's tasks, and how many matched; raises L{p2pexec.commands.UnknownJob}."""

    def node_status(self) -> dict[str, Any]:
        """What this node tells a peer that asks NODE_STATUS."""

    def problem(self) -> str | None:
        """Why this node is not healthy (its journal cannot be written), or C{None}."""

    def counters(self) -> dict[str, int]:
        """The node's counters and gauges for the metrics, by name (see L{p2pexec.views.COUNTERS})."""

    def datagrams_rejected(self) -> dict[str, int]:
        """Discovery datagrams dropped, by reason."""

    def on_result(self, listener: Callable[[TaskResult], None]) -> None:
        """Call C{listener} with every result applied to a task of this node's jobs."""


class IWebNode(Protocol):
    """
    What the HTTP server (L{p2pexec.web}) reads of a node, and asks of it:
    its views for every page, its intake to submit a job, its master to
    cancel one and to count the running ones (for the health check).
    """

    @property
    def config(self) -> NodeConfig:
        """The node's configuration: its key, local token, interface and C{--web-public}."""

    @property
    def info(self) -> NodeInfo:
        """How this node describes itself (its name, for the health check and errors)."""

    @property
    def stopping(self) -> bool:
        """Whether the node is leaving the cluster."""

    @property
    def views(self) -> INodeViews:
        """What the API, the metrics and the health check show."""

    @property
    def master(self) -> IWebMaster:
        """The jobs this node is master of."""

    def submit(
        self, tasks: list[Any], defaults: Any = None, label: str = "submitted job", job: Any = None
    ) -> Deferred[str]:
        """Accept a job; fire with its id once journaled (see L{p2pexec.intake.Intake.submit})."""


class IWebMaster(Protocol):
    """What the HTTP server asks of the node's master."""

    def unfinished(self) -> Sequence[object]:
        """The jobs that have not finished (the health check counts them)."""

    def cancel(self, job_id: str, by: str) -> int:
        """Cancel a job; return how many tasks were cancelled; raise C{KeyError} for a job of another master."""


class IClientFollowing(Protocol):
    """
    How a node answers a client about a job it does not lead (see
    L{p2pexec.following}): each question fails with
    L{p2pexec.commands.UnknownJob} naming what the node knows when nobody
    can answer it.
    """

    def leads(self, job: str) -> bool:
        """Whether this node is C{job}'s master (it answers for it itself)."""

    def job_status(self, job: str, client: str) -> Deferred[dict[str, Any]]:
        """C{job}'s summary, from its leader (forwarded) or from a replica."""

    def job_tasks(
        self, job: str, offset: int, limit: int, client: str, state: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """A JOB_TASKS answer (C{tasks}, C{next}) for C{job}, from its leader or from a replica."""

    def cancel(self, job: str, client: str) -> Deferred[int]:
        """Cancel C{job} through its leader; fire with how many tasks were cancelled."""

    def rerun(self, job: str, which: str, client: str) -> Deferred[dict[str, Any]]:
        """Run tasks of C{job} again through its leader; fire with the RERUN_TASKS answer."""

    def replica_jobs(self) -> list[dict[str, Any]]:
        """Summaries of the jobs held here as a replica and not led here."""


class IReplicaRecords(Protocol):
    """
    What a node can say of a job from the replica records it holds (the
    failover core keeps them in the journal).  Each answer is C{None} for a
    job of which no record is held here.
    """

    def replica_status(self, job: str) -> dict[str, Any] | None:
        """C{job}'s summary (a C{JobSummary}, as docs/api.rst), or C{None}."""

    def replica_tasks(
        self, job: str, offset: int, limit: int, states: frozenset[str] | None = None
    ) -> tuple[list[dict[str, Any]], int] | None:
        """A page of C{job}'s tasks (C{Task} objects; only in C{states}, if given) from C{offset}, and how many matched; or C{None}."""

    def replica_jobs(self) -> list[dict[str, Any]]:
        """Summaries of every job held here as a replica."""
