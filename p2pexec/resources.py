"""
Resources: what a node has (CPUs, memory, GPUs, named resources such as
licences) and what a task asks for, as plain values.

Nothing here imports the rest of p2pexec: L{p2pexec.model} builds its
L{TaskSpec<p2pexec.model.TaskSpec>} and L{NodeInfo<p2pexec.model.NodeInfo>}
fields from these, turning the C{ValueError}s raised here into its own
validation errors.  How they are used (the worker's pool, the master's fit
check and its log line) is L{p2pexec.resource_use}.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attr

MAX_CPUS = 100_000
"""The most CPUs a node may have or a task may ask for."""

MAX_GPUS = 16
"""The most GPU devices a node advertises (its HELLO datagram must stay small)."""

MAX_NAMED = 8
"""The most named resources a node advertises or a task asks for."""

MAX_AMOUNT = 1e12
"""The most of one named resource."""

RESOURCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,23}")
"""What a named resource's name may look like."""

DEVICE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,12}")
"""What a GPU device id may look like (C{0}, C{1}: the index C{CUDA_VISIBLE_DEVICES} takes; up to 12 characters)."""

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_GPU_LINE = re.compile(r"GPU\s+(\d+)\s*:")
TASK_FIELDS = frozenset({"cpus", "memory", "gpus", "resources"})
"""The fields of a task (and of a job file's [defaults]) that make its L{Request}."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_size(value: Any, what: str) -> int:
    """
    A number of bytes from an integer or a size such as C{512M}, C{4G},
    C{1.5GiB} (powers of 1024; a bare number is bytes).

    @raise ValueError: naming C{what}.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    else:
        raise ValueError(f"{what} must be a size such as 512M or 4G (or a number of bytes), not {value!r}")
    if not 0 <= size <= 2**62:
        raise ValueError(f"{what} must be a size from 0 to 4E bytes, not {value!r}")
    return size


def format_size(size: int) -> str:
    """C{size} bytes the way people write it (C{4G}, C{512M}, C{1000})."""
    for unit in "PTGMK":
        factor = _UNITS[unit.lower()]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _amount(value: float) -> str:
    return f"{value:g}"


def _named(value: Any, what: str, positive: bool) -> tuple[tuple[str, float], ...]:
    """A table of named amounts, checked (names, count, each amount > 0 or >= 0)."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a table of name = number, not {value!r}")
    if len(value) > MAX_NAMED:
        raise ValueError(f"{what} names more than {MAX_NAMED} resources")
    for name, amount in value.items():
        if not (isinstance(name, str) and RESOURCE_NAME.fullmatch(name)) or name in TASK_FIELDS:
            raise ValueError(
                f"{what}: {name!r} is not a resource name (a letter, then up to 23 of A-Z a-z 0-9 _ . -; "
                "not cpus, memory, gpus or resources)"
            )
        if not (_number(amount) and (amount > 0 if positive else amount >= 0) and amount <= MAX_AMOUNT):
            above = "above 0" if positive else "0 or more"
            raise ValueError(f"{what}: {name} must be a number {above}, not {amount!r}")
    return tuple(sorted((name, float(amount)) for name, amount in value.items()))


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Request:
    """
    What one task needs of the node that runs it, beyond its slot.

    @ivar cpus: CPUs (a fraction is allowed).
    @ivar memory: bytes of memory.
    @ivar gpus: how many GPU devices, each its own.
    @ivar named: named resources (C{licence}, ...) and how much of each.
    """

    cpus: float = attr.ib(default=0.0, converter=float)
    memory: int = 0
    gpus: int = 0
    named: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Request | None:
        """
        The request made by a task's C{cpus}, C{memory}, C{gpus} and
        C{resources} fields, or C{None} when it asks for nothing.

        @raise ValueError: naming the field at fault.
        """
        if "cpus" not in data and "memory" not in data and "gpus" not in data and "resources" not in data:
            return None
        cpus = data.get("cpus", 0)
        if "cpus" in data and not (_number(cpus) and 0 < cpus <= MAX_CPUS):
            raise ValueError(f"'cpus' must be a number above 0 (at most {MAX_CPUS}), not {cpus!r}")
        memory = parse_size(data.get("memory", 0), "'memory'")
        gpus = data.get("gpus", 0)
        if not (isinstance(gpus, int) and not isinstance(gpus, bool) and 0 <= gpus <= MAX_GPUS):
            raise ValueError(f"'gpus' must be a whole number from 0 to {MAX_GPUS}, not {gpus!r}")
        named = _named(data.get("resources", {}), "'resources'", positive=True)
        if not (cpus or memory or gpus or named):
            return None
        return cls(cpus=float(cpus), memory=memory, gpus=gpus, named=named)

    def to_wire(self) -> dict[str, Any]:
        """The task fields that say this request (only those asked for)."""
        data: dict[str, Any] = {}
        if self.cpus:
            data["cpus"] = int(self.cpus) if self.cpus.is_integer() else self.cpus
        if self.memory:
            data["memory"] = self.memory
        if self.gpus:
            data["gpus"] = self.gpus
        if self.named:
            data["resources"] = {name: int(n) if n.is_integer() else n for name, n in self.named}
        return data

    def describe(self) -> str:
        """C{cpus=2, memory=4G, gpus=1, licence=1}: for log lines."""
        parts = [f"cpus={_amount(self.cpus)}"] if self.cpus else []
        if self.memory:
            parts.append(f"memory={format_size(self.memory)}")
        if self.gpus:
            parts.append(f"gpus={self.gpus}")
        parts.extend(f"{name}={_amount(n)}" for name, n in self.named)
        return ", ".join(parts)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class NodeResources:
    """
    What a node has for its tasks to share (advertised as the C{resources}
    object of its node JSON).

    @ivar cpus: CPUs.
    @ivar memory: bytes of memory.
    @ivar gpus: the ids of its GPU devices, as C{CUDA_VISIBLE_DEVICES} names them.
    @ivar named: its named resources and how much of each.
    """

    cpus: float = attr.ib(converter=float)
    memory: int = attr.ib()
    gpus: tuple[str, ...] = ()
    named: tuple[tuple[str, float], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able C{resources} object."""
        data: dict[str, Any] = {
            "cpus": int(self.cpus) if self.cpus.is_integer() else self.cpus,
            "memory": self.memory,
            "gpus": list(self.gpus),
        }
        if self.named:
            data["resources"] = {name: int(n) if n.is_integer() else n for name, n in self.named}
        return data

    @classmethod
    def from_wire(cls, data: Any) -> NodeResources:
        """
        Build L{NodeResources} from the C{resources} object of a node's JSON.

        @raise ValueError: naming the field at fault.
        """
        if not isinstance(data, dict):
            raise ValueError(f"'resources' must be an object, not {data!r}")
        unknown = set(data) - {"cpus", "memory", "gpus", "resources"}
        if unknown:
            raise ValueError(f"'resources' has unknown field(s) {', '.join(sorted(unknown))}")
        cpus: Any = data.get("cpus")
        if not (_number(cpus) and 0 <= cpus <= MAX_CPUS):
            raise ValueError(f"'resources': 'cpus' must be a number from 0 to {MAX_CPUS}, not {cpus!r}")
        memory = data.get("memory")
        if not (isinstance(memory, int) and not isinstance(memory, bool) and 0 <= memory <= 2**62):
            raise ValueError(f"'resources': 'memory' must be a number of bytes, not {memory!r}")
        return cls(
            cpus=float(cpus),
            memory=memory,
            gpus=check_devices(data.get("gpus", []), "'resources': 'gpus'"),
            named=_named(data.get("resources", {}), "'resources': 'resources'", positive=False),
        )

    def has(self, name: str) -> float:
        """How much of the named resource C{name} it has (0 for one it does not declare)."""
        for key, amount in self.named:
            if key == name:
                return amount
        return 0.0

    def holds(self, request: Request) -> bool:
        """Whether C{request} fits in all of this, when nothing else runs."""
        return (
            request.cpus <= self.cpus
            and request.memory <= self.memory
            and request.gpus <= len(self.gpus)
            and all(amount <= self.has(name) for name, amount in request.named)
        )

    def describe(self) -> str:
        """C{cpus=4, memory=16G, gpus=0,1}: for log lines."""
        parts = [f"cpus={_amount(self.cpus)}", f"memory={format_size(self.memory)}"]
        parts.append(f"gpus={','.join(self.gpus) or 'none'}")
        parts.extend(f"{name}={_amount(n)}" for name, n in self.named)
        return ", ".join(parts)


def check_devices(value: Any, what: str) -> tuple[str, ...]:
    """
    A list of GPU device ids, checked.

    @raise ValueError: naming C{what}.
    """
    if not (isinstance(value, list) and all(isinstance(d, str) and DEVICE_ID.fullmatch(d) for d in value)):
        raise ValueError(f"{what} must be a list of device ids (like 0,1: up to 12 characters each), not {value!r}")
    if len(value) > MAX_GPUS:
        raise ValueError(f"{what}: more than {MAX_GPUS} devices")
    if len(set(value)) != len(value):
        raise ValueError(f"{what}: a device is listed twice in {value!r}")
    return tuple(value)


def shortfall(request: Request, nodes: Iterable[NodeResources | None], kind: str) -> str:
    """
    Why no node of C{nodes} (the live ones of C{kind}) can ever run
    C{request}: the part of it that the biggest of them lacks.
    """
    known = [node for node in nodes if node is not None]
    most: list[str] = []
    if request.cpus and request.cpus > max((n.cpus for n in known), default=0):
        most.append(f"cpus={_amount(max((n.cpus for n in known), default=0))}")
    if request.memory and request.memory > max((n.memory for n in known), default=0):
        most.append(f"memory={format_size(max((n.memory for n in known), default=0))}")
    if request.gpus and request.gpus > max((len(n.gpus) for n in known), default=0):
        most.append(f"gpus={max((len(n.gpus) for n in known), default=0)}")
    for name, amount in request.named:
        if amount > max((n.has(name) for n in known), default=0):
            most.append(f"{name}={_amount(max((n.has(name) for n in known), default=0))}")
    if most:
        return f"needs {request.describe()}; the most any live node of kind {kind!r} has is {', '.join(most)}"
    return f"needs {request.describe()}; no live node of kind {kind!r} has all of that at once"


def pinned_shortfall(request: Request, total: NodeResources | None, node: str) -> str:
    """
    Why the one node a pinned task may run on (C{node}, which has C{total})
    can never run C{request}: what it has of each part it lacks.
    """
    if total is None:
        return f"needs {request.describe()}; node {node} advertises no resources, and the task runs only there"
    lacking: list[str] = []
    if request.cpus > total.cpus:
        lacking.append(f"cpus={_amount(total.cpus)}")
    if request.memory > total.memory:
        lacking.append(f"memory={format_size(total.memory)}")
    if request.gpus > len(total.gpus):
        lacking.append(f"gpus={len(total.gpus)}")
    lacking.extend(f"{name}={_amount(total.has(name))}" for name, amount in request.named if amount > total.has(name))
    return f"needs {request.describe()}; node {node} has {', '.join(lacking)}, and the task runs only there"


# -- what this node has -------------------------------------------------------

TAP_OPTIONS = [
    [
        "cpus",
        None,
        None,
        "CPUs this node's tasks share, like 8 or 2.5: the tasks running at once ask for no more "
        "(a task asks with cpus = N). Default: the CPUs this process may run on.",
    ],
    [
        "memory",
        None,
        None,
        "Memory this node's tasks share, like 16G or 512M (powers of 1024), or bytes. Default: the physical memory.",
    ],
    [
        "gpus",
        None,
        None,
        "GPU device ids this node's tasks share, like 0,1, or none; a GPU task gets devices of its own, "
        "named in CUDA_VISIBLE_DEVICES. Default: what nvidia-smi -L lists, none without it.",
    ],
]
"""The node options (twistd p2pexec) that say what it has; C{--resource} is L{opt_resource}."""


def opt_resource(options: dict[str, Any], value: str) -> None:
    """A named resource this node has, NAME=AMOUNT, like licence=2; tasks ask for it with resources = {licence = 1} (repeatable)."""
    options.setdefault("resource", []).append(value)


def detect_cpus() -> int:
    """The CPUs this process may run on (its affinity), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def detect_memory() -> int:
    """This machine's physical memory in bytes (0 if it cannot be told)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_nvidia_smi() -> str | None:
    """The output of C{nvidia-smi -L}, or C{None} when it is absent or fails."""
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def detect_gpus(list_gpus: Callable[[], str | None] = run_nvidia_smi) -> tuple[str, ...]:
    """
    The GPU devices C{nvidia-smi -L} lists (C{GPU 0: ...} lines give C{0}),
    none when it is absent.

    @param list_gpus: runs C{nvidia-smi -L} (a fake in tests).
    """
    listing = list_gpus()
    if listing is None:
        return ()
    found = [match.group(1) for line in listing.splitlines() if (match := _GPU_LINE.match(line.strip()))]
    return tuple(dict.fromkeys(found))[:MAX_GPUS]


def from_options(
    cpus: str | None,
    memory: str | None,
    gpus: str | None,
    named: Sequence[str],
    list_gpus: Callable[[], str | None] = run_nvidia_smi,
) -> NodeResources:
    """
    What a node has, from its C{--cpus}, C{--memory}, C{--gpus} and
    C{--resource} options; what is not given is detected.

    @raise ValueError: naming the option at fault.
    """
    if cpus is None:
        cpu_count = float(detect_cpus())
    else:
        try:
            cpu_count = float(cpus)
        except ValueError:
            cpu_count = -1.0
        if not (math.isfinite(cpu_count) and 0 < cpu_count <= MAX_CPUS):
            raise ValueError(f"--cpus: give a number of CPUs above 0 (at most {MAX_CPUS}), not {cpus!r}")
    size = detect_memory() if memory is None else parse_size(memory, "--memory")
    if gpus is None:
        devices = detect_gpus(list_gpus)
    else:
        listed = [part.strip() for part in gpus.split(",") if part.strip()]
        if gpus.strip().lower() == "none":
            listed = []
        devices = check_devices(listed, "--gpus")
    table: dict[str, Any] = {}
    for item in named:
        name, equals, amount = item.partition("=")
        if not equals:
            raise ValueError(f"--resource: give NAME=AMOUNT, like licence=2, not {item!r}")
        try:
            table[name.strip()] = float(amount)
        except ValueError:
            raise ValueError(f"--resource {item}: {amount!r} is not a number") from None
    return NodeResources(cpus=cpu_count, memory=size, gpus=devices, named=_named(table, "--resource", positive=False))


def run_request(cpus: str | None, memory: str | None, gpus: str | None, named: Sequence[str]) -> dict[str, Any]:
    """
    The task fields that C{p2pexec run --cpus/--memory/--gpus/--resource}
    give every task (checked, as a job file's would be).

    @raise ValueError: naming the option at fault.
    """
    fields: dict[str, Any] = {}
    given: list[tuple[str, str, Any]] = []
    if cpus is not None:
        given.append(("--cpus", "cpus", _float_or_text(cpus)))
    if memory is not None:
        given.append(("--memory", "memory", memory))
    if gpus is not None:
        given.append(("--gpus", "gpus", int(gpus) if gpus.strip().isdigit() else gpus))
    table: dict[str, Any] = {}
    for item in named:
        name, equals, amount = item.partition("=")
        if not equals:
            raise ValueError(f"--resource: give NAME=AMOUNT, like licence=1, not {item!r}")
        table[name.strip()] = _float_or_text(amount)
    if named:
        given.append(("--resource", "resources", table))
    for option, key, value in given:
        try:
            Request.from_fields({key: value})
        except ValueError as e:
            raise ValueError(f"{option}: {e}") from None
        fields[key] = value
    return fields


def _float_or_text(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text
