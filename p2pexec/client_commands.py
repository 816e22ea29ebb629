"""
The commands an operator's client sends to a node (SUBMIT_JOB, LIST_JOBS,
JOB_STATUS, JOB_TASKS, CLUSTER_STATUS, CANCEL_JOB), answered on any
authenticated connection without an introduction.

L{ClientCommands} is the part of L{p2pexec.peer.PeerProtocol} that answers
them: it checks the arguments, asks the node (an L{IPeerHandler}) and fits
the answer into one AMP value.  Whether a box may be answered at all is the
connection machine's decision, taken before these run (see
L{p2pexec.connection_states}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.protocols import amp

from p2pexec import commands
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
    def _submit_job(self, tasks: Any, defaults: Any, upload: str, final: bool) -> Any:
        self.require_owner("SUBMIT_JOB")
        if not isinstance(tasks, list):
            raise bad_arguments(self.describe(), "SUBMIT_JOB", ValueError("'tasks' must be a list of task objects"))
        if defaults is not None and not isinstance(defaults, dict):
            raise bad_arguments(self.describe(), "SUBMIT_JOB", ValueError("'defaults' must be an object"))
        return self._handler.submit_part(cast("PeerProtocol", self), tasks, defaults, upload, final)

    @commands.ListJobs.responder
    def _list_jobs(self) -> dict[str, Any]:
        # Newest first, as many as fit in one AMP value.
        return {"jobs": next(commands.chunk(self._handler.jobs_status(), lambda job: job), [])}

    @commands.JobStatus.responder
    def _job_status(self, job: str) -> dict[str, Any]:
        return {"status": self._handler.job_status(job)}

    @commands.JobTasks.responder
    def _job_tasks(self, job: str, offset: int, limit: int) -> dict[str, Any]:
        if offset < 0 or not 1 <= limit <= 100_000:
            raise bad_arguments(
                self.describe(), "JOB_TASKS", ValueError("'offset' must be 0 or more and 'limit' 1 to 100000")
            )
        page, total = self._handler.job_tasks(job, offset=offset, limit=limit)
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
    def _cancel_job(self, job: str, epoch: int | None = None) -> dict[str, Any]:
        # No handshake needed: an operator's client may send it.  A peer's
        # (the job's master, stopping its part here) is answered alike.
        return {"cancelled": self._handler.cancel_requested(cast("PeerProtocol", self), job, epoch)}
