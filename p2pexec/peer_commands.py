"""
The commands between nodes once their handshake is done (PEER_EXCHANGE,
INSTRUCTION_ASSIGNMENT, EXECUTION_CONFIRMATION, RESULT_QUERY, NODE_STATUS,
TASK_COMPLETE, HEARTBEAT), and the PEER_EXCHANGE list's wire form.

L{PeerCommands} is the part of L{p2pexec.peer.PeerProtocol} that answers
them: it checks the arguments' shape and hands them to the node (an
L{IPeerHandler}).  That the handshake came first is the connection
machine's decision, taken before these run (see
L{p2pexec.connection_states}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.protocols import amp

from p2pexec import commands
from p2pexec.framing import bad_arguments
from p2pexec.interfaces import IPeerHandler
from p2pexec.model import NodeInfo, ValidationError
from p2pexec.replication import ballot_from_wire

if TYPE_CHECKING:
    from p2pexec.peer import PeerProtocol

PEER_COMMANDS = frozenset(
    command.commandName
    for command in (
        commands.PeerExchange,
        commands.InstructionAssignment,
        commands.ExecutionConfirmation,
        commands.ResultQuery,
        commands.NodeStatus,
        commands.TaskComplete,
        commands.Heartbeat,
        commands.Replicate,
        commands.Promise,
        commands.PrePromise,
        commands.JobLeader,
        commands.ForwardClient,
        commands.HeldTasks,
        commands.CancelAttempts,
        commands.HoldBlobs,  # issue 16, file replicas: a peer's only, after the handshake
    )
)
"""The commands a node answers only once the handshake is done (besides DISCONNECT_REQUEST)."""


class PeerCommands(amp.CommandLocator):
    """The responders to the commands between nodes, mixed into L{p2pexec.peer.PeerProtocol}."""

    _handler: IPeerHandler

    def describe(self) -> str:
        """The peer's name and address, for log lines (provided by the protocol)."""
        raise NotImplementedError

    @property
    def _me(self) -> PeerProtocol:
        return cast("PeerProtocol", self)

    @commands.PeerExchange.responder
    def _peer_exchange(self, peers: Any) -> dict[str, Any]:
        try:
            offered = parse_peer_list(peers)
        except ValidationError as e:
            raise bad_arguments(self.describe(), "PEER_EXCHANGE", e) from None
        return {"peers": self._handler.peers_offered(self._me, offered)}

    @commands.InstructionAssignment.responder
    def _instruction_assignment(
        self, job: str, master: str, master_instance: str, tasks: Any, epoch: int | None = None
    ) -> dict[str, Any]:
        if not isinstance(tasks, list):
            raise bad_arguments(self.describe(), "INSTRUCTION_ASSIGNMENT", ValueError("'tasks' must be a list"))
        if epoch is not None and epoch < 1:
            raise bad_arguments(self.describe(), "INSTRUCTION_ASSIGNMENT", ValueError("'epoch' must be 1 or more"))
        try:
            accepted = self._handler.assignment_received(self._me, job, master, master_instance, tasks, epoch)
        except ValidationError as e:
            raise bad_arguments(self.describe(), "INSTRUCTION_ASSIGNMENT", e) from None
        return {"accepted": accepted}

    @commands.ExecutionConfirmation.responder
    def _execution_confirmation(self, job: str, results: Any, epoch: int | None = None) -> Deferred[dict[str, Any]]:
        if not isinstance(results, list):
            raise bad_arguments(self.describe(), "EXECUTION_CONFIRMATION", ValueError("'results' must be a list"))
        try:
            answered = self._handler.confirmation_received(self._me, job, results)
        except ValidationError as e:
            raise bad_arguments(self.describe(), "EXECUTION_CONFIRMATION", e) from None
        return answered.addCallback(lambda counts: {"applied": counts[0], "stale": counts[1], "epoch": counts[2]})

    @commands.ResultQuery.responder
    def _result_query(self, job: str, tasks: Any, epoch: int | None = None) -> dict[str, Any]:
        if not isinstance(tasks, list):
            raise bad_arguments(self.describe(), "RESULT_QUERY", ValueError("'tasks' must be a list"))
        try:
            return self._handler.results_queried(self._me, job, tasks)
        except ValidationError as e:
            raise bad_arguments(self.describe(), "RESULT_QUERY", e) from None

    @commands.NodeStatus.responder
    def _node_status(self) -> dict[str, Any]:
        return {"status": self._handler.node_status()}

    @commands.TaskComplete.responder
    def _task_complete(
        self, job: str, succeeded: int, failed: int, elapsed: float, epoch: int | None = None
    ) -> dict[str, Any]:
        self._handler.job_completed(self._me, job, succeeded, failed, elapsed)
        return {}

    @commands.Replicate.responder
    def _replicate(
        self,
        job: str,
        ballot_epoch: int,
        ballot_node: str,
        first_seq: int,
        records: bytes,
        last_seq: int | None = None,
    ) -> Deferred[dict[str, Any]]:
        try:
            ballot = ballot_from_wire(ballot_epoch, ballot_node)
            if first_seq < 1:
                raise ValidationError("'first_seq' must be 1 or more")
            held = self._handler.replicate_received(self._me, job, ballot, first_seq, records, last_seq)
        except ValidationError as e:
            raise bad_arguments(self.describe(), "REPLICATE", e) from None
        return held.addCallback(lambda seq: {"held_seq": seq})

    @commands.Promise.responder
    def _promise(self, job: str, ballot_epoch: int, ballot_node: str, after_seq: int) -> Deferred[dict[str, Any]]:
        try:
            ballot = ballot_from_wire(ballot_epoch, ballot_node)
            if after_seq < 0:
                raise ValidationError("'after_seq' must be 0 or more")
        except ValidationError as e:
            raise bad_arguments(self.describe(), "PROMISE", e) from None
        return self._handler.promise_requested(self._me, job, ballot, after_seq)

    @commands.PrePromise.responder
    def _pre_promise(self, job: str, ballot_epoch: int, ballot_node: str) -> dict[str, Any]:
        try:
            ballot = ballot_from_wire(ballot_epoch, ballot_node)
        except ValidationError as e:
            raise bad_arguments(self.describe(), "PRE_PROMISE", e) from None
        leader = self._handler.pre_promise_requested(self._me, job, ballot)
        if leader is None:
            return {"granted": True, "leader_epoch": 0, "leader_node": ""}
        return {"granted": False, "leader_epoch": leader.epoch, "leader_node": leader.node}

    @commands.JobLeader.responder
    def _job_leader(self, job: str, ballot_epoch: int, ballot_node: str, master: str) -> dict[str, Any]:
        try:
            self._handler.leader_announced(self._me, job, ballot_from_wire(ballot_epoch, ballot_node), master)
        except ValidationError as e:
            raise bad_arguments(self.describe(), "JOB_LEADER", e) from None
        return {}

    @commands.Heartbeat.responder
    def _heartbeat(self) -> dict[str, Any]:
        return {}

    @commands.HeldTasks.responder
    def _held_tasks(self, job: str, epoch: int) -> dict[str, Any]:
        if epoch < 1:
            raise bad_arguments(self.describe(), "HELD_TASKS", ValueError("'epoch' must be 1 or more"))
        return self._handler.held_tasks_queried(self._me, job, epoch)

    @commands.CancelAttempts.responder
    def _cancel_attempts(self, job: str, tasks: Any, epoch: int | None = None) -> dict[str, Any]:
        try:
            attempts = parse_attempts(tasks)
        except ValidationError as e:
            raise bad_arguments(self.describe(), "CANCEL_ATTEMPTS", e) from None
        return {"cancelled": self._handler.attempts_cancel_requested(self._me, job, attempts, epoch)}


def parse_attempts(tasks: Any, limit: int = 10_000) -> set[tuple[str, int]]:
    """
    Validate a list of C{{"id": task id, "attempt": attempt}} objects (CANCEL_ATTEMPTS).

    @raise ValidationError: naming what is wrong.
    """
    if not isinstance(tasks, list) or len(tasks) > limit:
        raise ValidationError(f"'tasks' must be a list of at most {limit} objects")
    attempts = set()
    for entry in tasks:
        attempt = entry.get("attempt") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), str) and type(attempt) is int and attempt >= 1):
            raise ValidationError(f'each task must be {{"id": string, "attempt": integer >= 1}}, not {entry!r}')
        attempts.add((entry["id"], attempt))
    return attempts


def parse_peer_list(peers: Any, limit: int = 10_000) -> list[tuple[NodeInfo, float]]:
    """
    Validate a PEER_EXCHANGE list: node objects, each with an optional
    C{age} (seconds since the sender last had evidence of that node).

    @raise ValidationError: if it is not a list of node descriptions, or is
        longer than C{limit}, or an age is not a number from 0 up.
    """
    if not isinstance(peers, list):
        raise ValidationError("'peers' must be a list")
    if len(peers) > limit:
        raise ValidationError(f"'peers' lists {len(peers)} nodes, over the limit of {limit}")
    parsed = []
    for entry in peers:
        info = NodeInfo.from_wire(entry)
        age = entry.get("age", 0.0)
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age < 1e9:
            raise ValidationError(f"peer {info.name!r}: 'age' must be a number of seconds from 0 up")
        parsed.append((info, float(age)))
    return parsed


def peer_entry(info: NodeInfo, age: float) -> dict[str, Any]:
    """The PEER_EXCHANGE form of a node: its description plus an C{age}."""
    entry = info.to_wire()
    entry["age"] = round(age, 3)
    return entry
