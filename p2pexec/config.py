"""
What a node is started with: L{NodeConfig}, built from the command line by
L{p2pexec.tap} and read by every part of the node (see L{p2pexec.node}).
"""

from __future__ import annotations

from typing import Any

import attr

from p2pexec.job import DEFAULT_MAX_LOSSES
from p2pexec.model import TaskSpec
from p2pexec.resources import NodeResources


@attr.s(frozen=True, auto_attribs=True)
class NodeConfig:
    """
    Everything a node is started with (see L{p2pexec.tap.Options}).
    """

    name: str
    port: int = 10001
    interface: str = "127.0.0.1"
    group: tuple[str, int] = ("239.255.42.99", 10000)
    cluster: str = "default"
    capabilities: frozenset[str] = frozenset()
    slots: int = 1
    tasks: tuple[TaskSpec, ...] | None = None
    results: str | None = None
    multicast: bool = True
    seeds: tuple[tuple[str, int], ...] = ()
    peer_refresh: float = 30.0
    """Seconds between two resolutions of a seed given by name (C{--peer-refresh})."""
    drain_timeout: float = 30.0
    disconnect_timeout: float = 2.0
    hello_interval: float = 10.0
    peer_expiry: float = 35.0
    exchange_interval: float = 5.0
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 2.5
    state_dir: str | None = None
    job_source: str | None = None
    job_label: str | None = None
    """How the start-up job was given, for the log (C{job file FILE}, C{--tasks ...})."""
    rerun_job: bool = False
    """Run the start-up job even if the journal says it already finished (C{--rerun-job})."""
    max_losses: int = DEFAULT_MAX_LOSSES
    master_lease: float = 60.0
    """Seconds a worker keeps the tasks of a master that went away, for a new leader to adopt (C{--master-lease})."""
    journal_retention: float = 7 * 24 * 3600.0
    key: bytes | None = attr.ib(default=None, repr=False)
    local_token: bytes | None = attr.ib(default=None, repr=False)
    """Without a key: the owner's token (L{p2pexec.localtoken}), which submitting and cancelling need; None: anyone may."""
    web_public: bool = False
    tls: Any | None = None
    """A L{p2pexec.tls.TLSConfig}: AMP connections speak TLS."""
    replicas: int = 0
    """How many successors hold each accepted job's records (C{--replicas}; the command line's default is 2).
    0, the default here, replicates nothing: not one extra message (see docs/reliability.rst)."""
    takeover_grace: float = 0.2
    """Seconds per rank a successor waits, after its job's master is lost, before it takes the job over."""
    # -- resources (issue 15) --
    resources: NodeResources | None = None
    """What the node has for its tasks (C{--cpus}, C{--memory}, C{--gpus}, C{--resource}); C{None}: only slots."""
    # -- files (issue 16) --
    cache_size: int = 10 * 1024**3
    """Bytes of task files (inputs, outputs) kept in STATE/blobs, least recently used evicted first (C{--cache-size})."""
    max_transfer: int = 4 * 1024**3
    """The largest file, input or output, a node takes or sends, enforced while it streams (C{--max-transfer})."""
    restricted_commands: bool = False
    """Whether C{--allow} or C{--instructions} narrows what the node runs: then a task's input files are placed
    only in a fresh sandbox, never in a C{cwd} the task names (files never widen what the node runs)."""
