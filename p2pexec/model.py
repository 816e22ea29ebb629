"""
Value types shared by every part of a node.

Nothing in this module does I/O.  Each type knows how to turn itself into the
plain JSON-able dictionaries that travel on the wire and how to build itself
back from one, validating every field on the way in (with the checks of
L{p2pexec.wire_values}, whose public names this module re-exports).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

import attr

from p2pexec.file_model import InputFile, OutputFile, OutputPattern  # issue 16 shim (part "node")
from p2pexec.resources import TASK_FIELDS, NodeResources, Request
from p2pexec.wire_values import NAME_PATTERN as NAME_PATTERN
from p2pexec.wire_values import ValidationError as ValidationError
from p2pexec.wire_values import _field, _finite_seconds, _require
from p2pexec.wire_values import kind_of as kind_of
from p2pexec.wire_values import loads_strict as loads_strict
from p2pexec.wire_values import shorten as shorten
from p2pexec.wire_values import validate_name as validate_name

PROTOCOL_VERSION = 1
"""The wire protocol version carried by every datagram and handshake."""

TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@+-]{1,128}")
"""What a task id may look like."""

MAX_CAPABILITIES = 32
"""A node advertises at most this many task kinds."""

MAX_RETRIES = 100
"""The most retries a task may ask for."""

MAX_PRIORITY = 1_000_000
"""A job's priority is a whole number from -MAX_PRIORITY to MAX_PRIORITY."""

PLAIN_TASK_FIELDS = frozenset(
    {"id", "kind", "command", "shell", "cwd", "env", "timeout", "retries", "node", "all_nodes", "after", "speculative"}
)
"""A task's fields other than its resource request (L{TASK_FIELDS}): a task with only these asks for a slot alone."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class NodeInfo:
    """
    Everything a node tells the others about itself.

    @ivar name: the node's name, unique within its cluster.
    @ivar instance: a random id chosen when the process starts; a restarted
        node has a new one.
    @ivar host: the address its AMP port listens on.
    @ivar port: its AMP TCP port.
    @ivar capabilities: the task kinds it runs.
    @ivar slots: how many tasks it runs at once.
    @ivar cluster: the cluster it belongs to.
    @ivar version: its wire protocol version.
    @ivar resources: what it has for its tasks (see L{p2pexec.resources});
        C{None} when it did not say: then it has only its slots.
    """

    name: str
    instance: str
    host: str
    port: int
    capabilities: tuple[str, ...]
    slots: int
    cluster: str = "default"
    version: int = PROTOCOL_VERSION
    # -- resources (issue 15) --
    resources: NodeResources | None = None

    def can_run(self, kind: str) -> bool:
        """Whether this node runs tasks of C{kind}."""
        return kind in self.capabilities

    @property
    def address(self) -> str:
        """C{host:port}, for log lines."""
        return f"{self.host}:{self.port}"

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form used in datagrams and PEER_EXCHANGE."""
        data = {
            "name": self.name,
            "instance": self.instance,
            "host": self.host,
            "port": self.port,
            "capabilities": list(self.capabilities),
            "slots": self.slots,
            "cluster": self.cluster,
            "version": self.version,
        }
        if self.resources is not None:
            data["resources"] = self.resources.to_wire()
        return data

    @classmethod
    def from_wire(cls, data: Any) -> NodeInfo:
        """
        Build a L{NodeInfo} from its wire form.

        @raise ValidationError: naming the field at fault.
        """
        _require(isinstance(data, dict), f"node info must be an object, not {data!r}")
        name = validate_name(_field(data, "name", str, "node info"), "node name")
        what = f"node info for {name!r}"
        instance = _field(data, "instance", str, what)
        _require(0 < len(instance) <= 64, f"{what}: bad instance id {instance!r}")
        host = _field(data, "host", str, what)
        _require(0 < len(host) <= 255, f"{what}: bad host {host!r}")
        port = _field(data, "port", int, what)
        _require(0 < port < 65536, f"{what}: port {port} is out of range 1-65535")
        capabilities = _field(data, "capabilities", list, what)
        _require(
            len(capabilities) <= MAX_CAPABILITIES,
            f"{what}: more than {MAX_CAPABILITIES} capabilities",
        )
        for capability in capabilities:
            validate_name(capability, f"{what}: capability")
        slots = _field(data, "slots", int, what)
        _require(1 <= slots <= 100_000, f"{what}: slots {slots} is out of range")
        cluster = validate_name(_field(data, "cluster", str, what), f"{what}: cluster")
        version = _field(data, "version", int, what)
        try:
            resources = None if data.get("resources") is None else NodeResources.from_wire(data["resources"])
        except ValueError as e:
            raise ValidationError(f"{what}: {e}") from None
        return cls(
            name=name,
            instance=instance,
            host=host,
            port=port,
            capabilities=tuple(capabilities),
            slots=slots,
            cluster=cluster,
            version=version,
            resources=resources,
        )


Command = str | tuple[str, ...] | None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class TaskSpec:
    """
    One unit of work, as the master accepted it.

    @ivar id: unique within its job.
    @ivar kind: the capability a node needs to run it.
    @ivar command: C{None} for an original-style instruction (the worker only
        logs it), an argv tuple, or a shell string when C{shell} is true.
    @ivar shell: whether C{command} is a string for C{/bin/sh -c}.
    @ivar cwd: the working directory, or C{None} for the worker's own.
    @ivar env: extra environment variables.
    @ivar timeout: seconds before the process group is killed, or C{None}.
    @ivar retries: how many times a failed attempt is run again (after a
        backoff) before the failure is final.
    @ivar node: the only node that may run it (it waits while that node is
        absent), or C{None} for any node that runs its kind.
    @ivar all_nodes: run it once on every live node that runs its kind: the
        master expands it into one task per such node when it accepts the
        job (see L{p2pexec.placement}), so an accepted task has it false
        unless no node ran its kind then.
    @ivar request: the CPUs, memory, GPUs and named resources it needs
        (fields C{cpus}, C{memory}, C{gpus}, C{resources}), or C{None}
        when it needs only a slot.
    @ivar after: the ids of the tasks of its job that must succeed before
        it starts (see L{p2pexec.dependencies}).
    @ivar speculative: whether a backup copy of it may run on another node
        near the end of its job (see L{p2pexec.speculation}); false for a
        task that must not run twice at once.
    """

    id: str
    kind: str
    command: Command = None
    shell: bool = False
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None
    retries: int = 0
    # -- issue 14: where it runs (p2pexec/placement.py) --
    node: str | None = None
    all_nodes: bool = False
    # -- resources (issue 15) --
    request: Request | None = None
    # -- order (issue 15: dependencies) --
    after: tuple[str, ...] = ()
    # -- issue 15, tail (p2pexec/speculation.py) --
    speculative: bool = True
    inputs: tuple[InputFile, ...] = ()  # issue 16 shim (part "node"): the model part's field replaces it
    outputs: tuple[OutputPattern, ...] = ()  # issue 16 shim (part "node")

    @classmethod
    def instruction(cls, name: str) -> TaskSpec:
        """An original-style instruction: a name whose kind is its leading letters."""
        return cls(id=name, kind=kind_of(name))

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form carried by INSTRUCTION_ASSIGNMENT."""
        data: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.command is not None:
            data["command"] = self.command if isinstance(self.command, str) else list(self.command)
        if self.shell:
            data["shell"] = True
        if self.cwd is not None:
            data["cwd"] = self.cwd
        if self.env:
            data["env"] = dict(self.env)
        if self.timeout is not None:
            data["timeout"] = self.timeout
        if self.retries:
            data["retries"] = self.retries
        if self.node is not None:
            data["node"] = self.node
        if self.all_nodes:
            data["all_nodes"] = True
        if self.request is not None:
            data.update(self.request.to_wire())
        if self.after:
            data["after"] = list(self.after)
        if not self.speculative:
            data["speculative"] = False
        return data

    @classmethod
    def from_wire(cls, data: Any) -> TaskSpec:
        """
        Build a L{TaskSpec} from its wire form (also the job file's form).

        @raise ValidationError: naming the task and the field at fault.
        """
        _require(isinstance(data, dict), f"task must be an object, not {data!r}")
        task_id = _field(data, "id", str, "task")
        _require(
            bool(TASK_ID_PATTERN.fullmatch(task_id)),
            f"task id must be 1-128 characters of A-Z a-z 0-9 _ . : @ + -, not {task_id!r}",
        )
        what = f"task {task_id!r}"
        kind = validate_name(data.get("kind", kind_of(task_id)), f"{what}: kind")
        shell = data.get("shell", False)
        _require(isinstance(shell, bool), f"{what}: 'shell' must be true or false")
        command: Command = data.get("command")
        if command is not None:
            if shell:
                _require(
                    isinstance(command, str) and command.strip() != "",
                    f"{what}: with shell = true, 'command' must be a non-empty string",
                )
            else:
                _require(
                    isinstance(command, list) and len(command) > 0 and all(isinstance(part, str) for part in command),
                    f"{what}: 'command' must be a non-empty list of strings "
                    f"(or a string with shell = true), not {command!r}",
                )
                _require(command[0] != "", f"{what}: 'command' has an empty program")
                command = tuple(command)
            _require(
                "\0" not in (command if isinstance(command, str) else "".join(command)),
                f"{what}: 'command' contains a NUL character",
            )
        else:
            _require(not shell, f"{what}: 'shell' is set but there is no 'command'")
        cwd = data.get("cwd")
        _require(
            cwd is None or (isinstance(cwd, str) and cwd != "" and "\0" not in cwd),
            f"{what}: 'cwd' must be a non-empty string without NUL characters",
        )
        env = data.get("env", {})
        _require(
            isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()),
            f"{what}: 'env' must be a table of string values",
        )
        _require(
            all(k and "=" not in k and "\0" not in k for k in env),
            f"{what}: 'env' has an invalid variable name",
        )
        _require(
            all("\0" not in v for v in env.values()),
            f"{what}: 'env' has a value with a NUL character",
        )
        timeout = data.get("timeout")
        if timeout is not None:
            _require(
                isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and 0 < timeout <= 7 * 24 * 3600,
                f"{what}: 'timeout' must be a number of seconds above 0, not {timeout!r}",
            )
            timeout = float(timeout)
        retries = data.get("retries", 0)
        _require(
            isinstance(retries, int) and not isinstance(retries, bool) and 0 <= retries <= MAX_RETRIES,
            f"{what}: 'retries' must be a whole number from 0 to {MAX_RETRIES}, not {retries!r}",
        )
        node = data.get("node")
        if node is not None:
            validate_name(node, f"{what}: 'node' (a node name)")
        all_nodes = data.get("all_nodes", False)
        _require(isinstance(all_nodes, bool), f"{what}: 'all_nodes' must be true or false")
        _require(
            not (all_nodes and node is not None),
            f"{what}: 'node' and 'all_nodes' cannot both be set (one node, or every node)",
        )
        _require(
            not all_nodes or len(task_id) <= MAX_ALL_NODES_ID,
            f"{what}: with all_nodes = true the id may be at most {MAX_ALL_NODES_ID} characters "
            "(each node's copy is named ID@NODE)",
        )
        after = data.get("after", ())
        if "after" in data:
            _require(
                isinstance(after, list) and all(isinstance(other, str) for other in after),
                f"{what}: 'after' must be a list of task ids, not {after!r}",
            )
            _require(task_id not in after, f"{what}: 'after' names the task itself")
        speculative = data.get("speculative", True)
        _require(isinstance(speculative, bool), f"{what}: 'speculative' must be true or false, not {speculative!r}")
        rest = data.keys() - PLAIN_TASK_FIELDS
        request = None
        if rest:  # a task that asks for no resources pays this one test (W1)
            unknown = rest - TASK_FIELDS
            _require(not unknown, f"{what}: unknown field(s) {', '.join(sorted(unknown))}")
            try:
                request = Request.from_fields(data)
            except ValueError as e:
                raise ValidationError(f"{what}: {e}") from None
        return cls(
            id=task_id,
            kind=kind,
            command=command,
            shell=shell,
            cwd=cwd,
            env=tuple(sorted(env.items())),
            timeout=timeout,
            retries=retries,
            node=node,
            all_nodes=all_nodes,
            request=request,
            after=tuple(dict.fromkeys(after)),
            speculative=speculative,
        )


MAX_ALL_NODES_ID = 128 - 1 - 64
"""The longest id of an C{all_nodes} task: its copies' ids, C{ID@NODE}, must still be task ids."""


SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed-out"
ERROR = "error"
RETURNED = "returned"
"""Not a result: the worker hands the task back unrun (it is leaving)."""
CANCELLED = "cancelled"
"""The job was cancelled before this task finished."""
SKIPPED = "skipped"
"""Never run: a task it runs after (see L{TaskSpec.after}) failed or was skipped."""
RESULT_STATUSES = (SUCCEEDED, FAILED, TIMED_OUT, ERROR, RETURNED, CANCELLED, SKIPPED)
_CANONICAL_STATUS = {status: status for status in RESULT_STATUSES}
"""Each status to its one shared string (see L{TaskResult.from_wire})."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class TaskResult:
    """
    What became of one attempt at a task.

    @ivar task_id: the task.
    @ivar attempt: which attempt this was (1 for the first).
    @ivar status: one of L{RESULT_STATUSES}.
    @ivar node: the node that ran it.
    @ivar exit_code: the process's exit code; C{None} when killed by a signal
        or when there was no process.
    @ivar duration: seconds the attempt took.
    @ivar stdout: the tail of its standard output.
    @ivar stderr: the tail of its standard error.
    @ivar error: why it failed, in words, when there is more to say than the
        exit code.
    @ivar started: when the attempt started, by the wall clock of the node
        that ran it (seconds since the epoch, for people and the joblog);
        C{None}: unknown (not run by a process executor, or an older node).
    @ivar signal: the number of the signal that ended its process, or C{None}.
    @ivar stdout_size: bytes the attempt wrote to its standard output, kept
        or not; C{None} when unknown (an older worker).
    @ivar stderr_size: the same for its standard error.
    @ivar output_cut: whether a stream went past the worker's --max-output
        and the rest was cut from its kept output; C{None} when unknown.
    """

    task_id: str
    attempt: int
    status: str
    node: str
    exit_code: int | None = None
    duration: float = 0.0
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    # Issue 14, output: when the attempt started, and the signal that ended it.
    started: float | None = None
    signal: int | None = None
    stdout_size: int | None = None
    stderr_size: int | None = None
    output_cut: bool | None = None
    outputs: tuple[OutputFile, ...] = ()  # issue 16 shim (part "node"): the model part's field replaces it

    @property
    def succeeded(self) -> bool:
        """Whether the attempt succeeded."""
        return self.status == SUCCEEDED

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form carried by EXECUTION_CONFIRMATION."""
        data: dict[str, Any] = {
            "id": self.task_id,
            "attempt": self.attempt,
            "status": self.status,
            "node": self.node,
            "duration": round(self.duration, 6),
        }
        if self.exit_code is not None:
            data["exit_code"] = self.exit_code
        if self.stdout:
            data["stdout"] = self.stdout
        if self.stderr:
            data["stderr"] = self.stderr
        if self.error is not None:
            data["error"] = self.error
        if self.started is not None:
            data["started"] = round(self.started, 6)
        if self.signal is not None:
            data["signal"] = self.signal
        if self.stdout_size is not None:
            data["stdout_size"] = self.stdout_size
        if self.stderr_size is not None:
            data["stderr_size"] = self.stderr_size
        if self.output_cut is not None:
            data["output_cut"] = self.output_cut
        return data

    @classmethod
    def from_wire(cls, data: Any) -> TaskResult:
        """
        Build a L{TaskResult} from its wire form.

        @raise ValidationError: naming the field at fault.
        """
        _require(isinstance(data, dict), f"result must be an object, not {data!r}")
        task_id = _field(data, "id", str, "result")
        what = f"result for task {task_id!r}"
        attempt = _field(data, "attempt", int, what)
        given = _field(data, "status", str, what)
        status = _CANONICAL_STATUS.get(given, "")
        _require(status != "", f"{what}: unknown status {given!r}")
        # The status and the node name are shared, not kept as one decoded
        # copy per result: a master holding 10,000 results saves 1 MiB.
        node = sys.intern(validate_name(_field(data, "node", str, what), f"{what}: node"))
        exit_code = data.get("exit_code")
        _require(
            exit_code is None or (isinstance(exit_code, int) and not isinstance(exit_code, bool)),
            f"{what}: 'exit_code' must be an integer",
        )
        duration = _finite_seconds(_field(data, "duration", float, what), f"{what}: 'duration'")
        stdout = data.get("stdout", "")
        stderr = data.get("stderr", "")
        error = data.get("error")
        _require(isinstance(stdout, str), f"{what}: 'stdout' must be a string")
        _require(isinstance(stderr, str), f"{what}: 'stderr' must be a string")
        _require(error is None or isinstance(error, str), f"{what}: 'error' must be a string")
        started = data.get("started")
        if started is not None:
            started = _finite_seconds(_field(data, "started", float, what), f"{what}: 'started'")
        signal_number = data.get("signal")
        _require(
            signal_number is None
            or (isinstance(signal_number, int) and not isinstance(signal_number, bool) and signal_number > 0),
            f"{what}: 'signal' must be a signal number above 0",
        )
        sizes = {}
        for key in ("stdout_size", "stderr_size"):
            size = data.get(key)
            _require(
                size is None or (type(size) is int and size >= 0), f"{what}: {key!r} must be an integer, 0 or more"
            )
            sizes[key] = size
        output_cut = data.get("output_cut")
        _require(output_cut is None or isinstance(output_cut, bool), f"{what}: 'output_cut' must be true or false")
        return cls(
            task_id=task_id,
            attempt=attempt,
            status=status,
            node=node,
            exit_code=exit_code,
            duration=duration,
            stdout=stdout,
            stderr=stderr,
            error=error,
            started=started,
            signal=signal_number,
            output_cut=output_cut,
            **sizes,
        )


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Assignment:
    """
    One task handed to one worker, as INSTRUCTION_ASSIGNMENT carries it.

    @ivar task: what to run.
    @ivar attempt: the attempt number; a confirmation must quote it back.
    @ivar priority: its job's priority: a worker starts the queued
        attempts of the highest priority first (see L{p2pexec.fairshare}).
    """

    task: TaskSpec
    attempt: int
    priority: int = 0

    def to_wire(self) -> dict[str, Any]:
        """
        The task's wire form with its attempt number (and its job's priority,
        unless 0) added; without C{node} and C{all_nodes}, which are the
        master's business (so a worker that does not know them still takes
        the task).
        """
        data = self.task.to_wire()
        data.pop("node", None)
        data.pop("all_nodes", None)
        data["attempt"] = self.attempt
        if self.priority:
            data["priority"] = self.priority
        return data

    @classmethod
    def from_wire(cls, data: Any) -> Assignment:
        """
        Build an L{Assignment} from its wire form.

        @raise ValidationError: naming the field at fault.
        """
        _require(isinstance(data, dict), f"assignment must be an object, not {data!r}")
        fields = dict(data)
        attempt = fields.pop("attempt", None)
        _require(
            isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 1,
            f"assignment: 'attempt' must be a positive integer, not {attempt!r}",
        )
        priority = fields.pop("priority", 0)
        _require(
            isinstance(priority, int) and not isinstance(priority, bool) and abs(priority) <= MAX_PRIORITY,
            f"assignment: 'priority' must be a whole number from -{MAX_PRIORITY} to {MAX_PRIORITY}, not {priority!r}",
        )
        return cls(task=TaskSpec.from_wire(fields), attempt=attempt, priority=priority)


def parse_instructions(names: Sequence[str]) -> list[TaskSpec]:
    """
    Turn original-style instruction names (C{a1,a2,b1}) into tasks.

    @raise ValidationError: for a bad or repeated name.
    """
    tasks = []
    seen: set[str] = set()
    for name in names:
        _require(
            bool(TASK_ID_PATTERN.fullmatch(name)),
            f"instruction {name!r} is not a valid task id (1-128 characters of A-Z a-z 0-9 _ . : @ + -)",
        )
        _require(name not in seen, f"instruction {name!r} is listed twice")
        seen.add(name)
        tasks.append(TaskSpec.instruction(name))
    return tasks
