"""
The commands an operator's client sends to a node (SUBMIT_JOB, LIST_JOBS,
JOB_STATUS, JOB_TASKS, CLUSTER_STATUS, CANCEL_JOB, RERUN_TASKS), answered on any
authenticated connection without an introduction; and FORWARD_CLIENT, by
which a node asks a job's master one of them for its own client.

Any node answers a client about any job: one it leads from its own
records; another through L{p2pexec.following} (forwarded to the job's
master, or from a replica).  A command that arrives over a peer link, or
in FORWARD_CLIENT, is answered only from this node's own records, so that
a question travels at most one hop.

L{ClientCommands} is the part of L{p2pexec.peer.PeerProtocol} that answers
them: it checks the arguments, asks the node (an L{IPeerHandler}) and fits
the answer into one AMP value.  Whether a box may be answered at all is the
connection machine's decision, taken before these run (see
L{p2pexec.connection_states}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.protocols import amp

from p2pexec import commands, reruns, status
from p2pexec.framing import bad_arguments
from p2pexec.interfaces import IPeerHandler
from p2pexec.log import NodeLogger

if TYPE_CHECKING:
    from p2pexec.peer import PeerProtocol

log = NodeLogger()

CLIENT_COMMANDS = frozenset(
    command.commandName
    for command in (
        commands.SubmitJob,
        commands.ListJobs,
        commands.JobStatus,
        commands.JobTasks,
        commands.ClusterStatus,
        commands.CancelJob,
        commands.RerunTasks,
        commands.TaskOutput,
    )
)
"""The commands an operator's client sends without an introduction."""


class ClientCommands(amp.CommandLocator):
    """
    The responders to a client's commands, mixed into
    L{p2pexec.peer.PeerProtocol}.

    @ivar owner: whether this side may submit and cancel: it proved the
        cluster key, or (without one) the node's local token.
    """

    _handler: IPeerHandler
    owner: bool
    peer_name: str | None

    def address(self) -> str:
        """HOST:PORT of the other end (provided by the protocol)."""
        raise NotImplementedError

    def describe(self) -> str:
        """The peer's name and address, for log lines (provided by the protocol)."""
        raise NotImplementedError

    def require_owner(self, command: str) -> None:
        """
        Without a cluster key, refuse C{command} (AUTH_REQUIRED, the
        connection kept) unless this client proved the node's local token.
        """
        if self.owner:
            return
        log.warn(
            "Refused {command} from a client at {address}: it did not prove this node's local token",
            command=command,
            address=self.address(),
        )
        raise commands.AuthRequired(
            "this node takes jobs and cancels only from its owner: AUTHENTICATE with its local token first "
            "(the p2pexec client of the user that runs the node does so by itself; see docs/security.rst)"
        )

    @commands.SubmitJob.responder
    def _submit_job(self, tasks: Any, defaults: Any, upload: str, final: bool, priority: int | None = None) -> Any:
        self.require_owner("SUBMIT_JOB")
        if not isinstance(tasks, list):
            raise bad_arguments(self.describe(), "SUBMIT_JOB", ValueError("'tasks' must be a list of task objects"))
        if defaults is not None and not isinstance(defaults, dict):
            raise bad_arguments(self.describe(), "SUBMIT_JOB", ValueError("'defaults' must be an object"))
        return self._handler.submit_part(cast("PeerProtocol", self), tasks, defaults, upload, final, priority)

    def _follows(self, job: str) -> bool:
        """Whether to ask another node about C{job}: a client asked, and this node does not lead it."""
        return self.peer_name is None and not self._handler.following.leads(job)

    @commands.ListJobs.responder
    def _list_jobs(self) -> dict[str, Any]:
        # Newest first (then those held as a replica), as many as fit in one AMP value.
        jobs = self._handler.jobs_status() + self._handler.following.replica_jobs()
        return {"jobs": next(commands.chunk(jobs, lambda job: job), [])}

    @commands.JobStatus.responder
    def _job_status(self, job: str) -> dict[str, Any] | Deferred[dict[str, Any]]:
        if self._follows(job):
            return self._handler.following.job_status(job, self.address()).addCallback(lambda s: {"status": s})
        return {"status": self._handler.job_status(job)}

    @commands.JobTasks.responder
    def _job_tasks(
        self, job: str, offset: int, limit: int, state: str | None = None
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        if offset < 0 or not 1 <= limit <= 100_000:
            raise bad_arguments(
                self.describe(), "JOB_TASKS", ValueError("'offset' must be 0 or more and 'limit' 1 to 100000")
            )
        states = self._states("JOB_TASKS", state)
        if self._follows(job):
            return self._handler.following.job_tasks(job, offset, limit, self.address(), state)
        return self._own_tasks(job, offset, limit, states)

    def _states(self, command: str, state: Any) -> frozenset[str] | None:
        """The states a JOB_TASKS C{state} names (C{None}: every one); BAD_ARGUMENTS for another value."""
        if state is None:
            return None
        try:
            if not isinstance(state, str):
                raise ValueError("'state' must be a string")
            return status.parse_states(state)
        except ValueError as e:
            raise bad_arguments(self.describe(), command, e) from None

    def _own_tasks(self, job: str, offset: int, limit: int, states: frozenset[str] | None = None) -> dict[str, Any]:
        """A JOB_TASKS answer from this node's own records (UNKNOWN_JOB for a job it does not lead)."""
        page, total = self._handler.job_tasks(job, offset=offset, limit=limit, state=states)
        for entry in page:
            for stream in ("stdout", "stderr"):
                if len(entry.get(stream) or "") > commands.CLIENT_OUTPUT_TAIL:
                    entry[stream] = entry[stream][-commands.CLIENT_OUTPUT_TAIL :]
        first: list[dict[str, Any]] = next(commands.chunk(page, lambda entry: entry), [])
        following = offset + len(first)
        return {"tasks": first, "next": following if following < total else -1}

    @commands.ClusterStatus.responder
    def _cluster_status(self) -> dict[str, Any]:
        peers = self._handler.peers_status()
        # As many peers as fit in one AMP value (the HTTP API lists them all).
        return {"node": peers[0], "peers": next(commands.chunk(peers[1:], lambda peer: peer), [])}

    @commands.CancelJob.responder
    def _cancel_job(self, job: str, epoch: int | None = None) -> dict[str, Any] | Deferred[dict[str, Any]]:
        # No handshake needed: an operator's client may send it.  A peer's
        # (the job's master, stopping its part here) is answered alike.
        if self._follows(job):
            # This node checks its own client's proof first; the master
            # checks this node's (see _forward_client).
            self.require_owner("CANCEL_JOB")
            return self._handler.following.cancel(job, self.address()).addCallback(lambda n: {"cancelled": n})
        return {"cancelled": self._handler.cancel_requested(cast("PeerProtocol", self), job, epoch)}

    @commands.RerunTasks.responder
    def _rerun_tasks(self, job: str, which: str) -> Deferred[dict[str, Any]]:
        if which not in reruns.WHICH:
            raise bad_arguments(
                self.describe(), "RERUN_TASKS", ValueError(f"'which' must be one of {', '.join(reruns.WHICH)}")
            )
        self.require_owner("RERUN_TASKS")
        if self._follows(job):
            return self._handler.following.rerun(job, which, self.address())
        return self._handler.rerun_requested(cast("PeerProtocol", self), job, which)

    @commands.ForwardClient.responder
    def _forward_client(self, command: str, arguments: Any, client: str) -> dict[str, Any] | Deferred[dict[str, Any]]:
        # A peer asks for its client: answered from this node's own jobs
        # only, never forwarded again.
        if command not in commands.FORWARDED_COMMANDS or not isinstance(arguments, dict):
            raise bad_arguments(
                self.describe(),
                "FORWARD_CLIENT",
                ValueError(f"'command' must be one of {', '.join(commands.FORWARDED_COMMANDS)}, 'arguments' an object"),
            )
        job = arguments.get("job")
        if not isinstance(job, str):
            raise bad_arguments(self.describe(), "FORWARD_CLIENT", ValueError("'arguments' must name a 'job' string"))
        if command == "JOB_STATUS":
            return {"answer": {"status": self._handler.job_status(job)}}
        if command == "JOB_TASKS":
            offset, limit = arguments.get("offset"), arguments.get("limit")
            if type(offset) is not int or type(limit) is not int or offset < 0 or not 1 <= limit <= 100_000:
                raise bad_arguments(
                    self.describe(),
                    "FORWARD_CLIENT",
                    ValueError("JOB_TASKS: 'offset' must be 0 or more and 'limit' 1 to 100000"),
                )
            return {
                "answer": self._own_tasks(job, offset, limit, self._states("FORWARD_CLIENT", arguments.get("state")))
            }
        if not self._handler.following.leads(job):
            raise commands.UnknownJob(f"it is not the master of job {job!r}")
        if not self.owner:
            log.warn(
                "Refused a {command} of job {job} forwarded by {peer} for {client}: without a cluster key a peer "
                "proves nothing about its client",
                command=command,
                job=job,
                peer=self.describe(),
                client=client,
            )
            raise commands.AuthRequired(
                "without a cluster key it takes a cancel or a rerun only from its owner's own client: send it "
                "to the job's master itself"
            )
        if command == "RERUN_TASKS":
            which = arguments.get("which")
            if which not in reruns.WHICH:
                raise bad_arguments(self.describe(), "FORWARD_CLIENT", ValueError("RERUN_TASKS: bad 'which'"))
            done = self._handler.rerun_requested(cast("PeerProtocol", self), job, which)
            return done.addCallback(lambda answer: {"answer": answer})
        return {"answer": {"cancelled": self._handler.cancel_requested(cast("PeerProtocol", self), job, None)}}
