"""
The twistd plugin's options and service maker::

    twistd -n p2pexec --name a1 --port 10001 --tasks a1,a2,b1

This is the only module that touches the global reactor.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from typing import Any

import attr
from twisted.application.service import IService
from twisted.python import usage

from p2pexec import datagram, resources
from p2pexec.auth import KeyFileError, load_key
from p2pexec.clock import use_monotonic_time
from p2pexec.executor import DEFAULT_KILL_GRACE, ProcessExecutor
from p2pexec.guard import TaskGuard
from p2pexec.jobfile import JobFileError, load_job_file
from p2pexec.journal import default_state_dir, open_journal
from p2pexec.journal_health import JournalError
from p2pexec.localtoken import LocalTokenError, load_or_create
from p2pexec.log import LEVELS, set_minimum_level
from p2pexec.model import (
    NAME_PATTERN,
    NodeInfo,
    TaskSpec,
    ValidationError,
    kind_of,
    parse_instructions,
    validate_name,
)
from p2pexec.node import NodeConfig, create_node
from p2pexec.outputs import check_output_options, open_store
from p2pexec.policy import CommandPolicy
from p2pexec.service import NodeService, RuntimeRecordService, WebService
from p2pexec.signals import _stop_cleanly_on_signals
from p2pexec.signals import on_hangup as on_hangup
from p2pexec.systemd import SystemdNotifier, without_notify_variables

DEFAULT_GROUP = "239.255.42.99:10000"
"""The default multicast group: organisation-local scope, off the common ports."""


def _parse_group(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise usage.UsageError(f"--group: {value!r} is not ADDR:PORT (for example {DEFAULT_GROUP})")
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise usage.UsageError(f"--group: {host!r} is not an IPv4 address") from None
    if not address.is_multicast:
        raise usage.UsageError(
            f"--group: {host} is not a multicast address (use one in 224.0.0.0/4; "
            f"239.255.0.0/16 is meant for local use)"
        )
    port = _parse_int("--group", port_text, 1, 65535)
    return str(address), port


def _parse_address(option: str, value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise usage.UsageError(f"{option}: {value!r} is not HOST:PORT (for example 10.0.0.5:10001)")
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise usage.UsageError(f"{option}: {host!r} is neither an IPv4 address nor a host name") from None
    else:
        if address.is_multicast or address.is_unspecified:
            raise usage.UsageError(f"{option}: {host} is not the address of one node")
    return host, _parse_int(option, port_text, 1, 65535)


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*")


def _parse_int(option: str, value: Any, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"{option}: {value!r} is not a whole number") from None
    if not low <= number <= high:
        raise usage.UsageError(f"{option}: {number} is out of range {low}-{high}")
    return number


def _parse_seconds(option: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"{option}: {value!r} is not a number of seconds") from None
    if not 0 < number <= 24 * 3600:
        raise usage.UsageError(f"{option}: {value} must be above 0 and at most a day")
    return number


def _parse_peer_refresh(value: Any) -> float:
    seconds = _parse_seconds("--peer-refresh", value)
    if seconds < 1:
        raise usage.UsageError(f"--peer-refresh: {value} is too often; give at least 1 second (the default is 30)")
    return seconds


def _parse_size(option: str, value: Any) -> int:
    """A size option (C{512M}, C{4G}, bytes) above 0, or a L{usage.UsageError} naming it."""
    try:
        size = resources.parse_size(value, option)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    if size < 1:
        raise usage.UsageError(f"{option} must be above 0, not {value!r}")
    return size


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Options(usage.Options):
    """Command-line options of C{twistd p2pexec}."""

    synopsis = "[options]"
    longdesc = (
        "Run one p2pexec node. Nodes find each other by multicast on --group, "
        "connect over AMP on --port, and run the tasks of the kinds in --capabilities. "
        "A node given --tasks or --job becomes the master of that job. "
        "Example: twistd -n p2pexec --name a1 --port 10001 --tasks a1,a2,b1"
    )

    optParameters = [
        ["name", None, None, "This node's name, unique in the cluster: 1-64 of A-Z a-z 0-9 _ . - (required)."],
        ["port", None, "10001", "TCP port for AMP connections; 0 picks a free port (the log says which)."],
        ["tasks", None, None, "Comma-separated instruction names (a1,a2,b1); this node becomes their master."],
        ["job", None, None, "A TOML job file of real tasks (see docs/jobs.rst); this node becomes its master."],
        [
            "capabilities",
            None,
            None,
            "Comma-separated task kinds this node runs. Default: the leading letters of --name.",
        ],
        ["slots", None, None, "How many tasks run at once on this node. Default: the CPU count."],
        ["interface", None, "127.0.0.1", "Address to bind TCP on and to send and join multicast on."],
        ["group", None, DEFAULT_GROUP, "Multicast group ADDR:PORT for discovery."],
        ["cluster", None, "default", "Cluster name; nodes ignore datagrams and connections from other clusters."],
        ["results", None, None, "Where the master writes the start-up job's results as JSON when it finishes."],
        ["drain-timeout", None, "30", "Seconds a leaving node waits for its running tasks before stopping them."],
        [
            "master-lease",
            None,
            "60",
            "Seconds a worker keeps running the tasks of a master that went away, for a new leader of their "
            "jobs to adopt (0: drop its queued tasks at once).",
        ],
        ["log-level", None, "info", "Least severe log level shown: debug, info, warn or error."],
        ["heartbeat-interval", None, "0.5", "Seconds of quiet after which a peer we share work with is pinged."],
        [
            "peer-refresh",
            None,
            "30",
            "Seconds between two resolutions of a --peer given by name; every address it resolves to is dialled.",
        ],
        [
            "heartbeat-timeout",
            None,
            "2.5",
            "Seconds of silence after which such a peer is declared dead and its tasks run elsewhere.",
        ],
        [
            "state-dir",
            None,
            None,
            "Where this node keeps its journal of jobs, tasks and results, so that a restarted master resumes its jobs. Default: $XDG_STATE_HOME/p2pexec/NAME (~/.local/state/p2pexec/NAME).",
        ],
        [
            "max-worker-losses",
            None,
            "3",
            "A task that loses its worker this many times is quarantined as failed instead of run again.",
        ],
        [
            "replicas",
            None,
            "2",
            "How many other nodes hold each accepted job's records, so that the job survives its master; "
            "0 replicates nothing (a job then lives and dies with its master).",
        ],
        [
            "takeover-grace",
            None,
            "0.2",
            "Seconds (times its rank) a job's successor waits after its master is lost before it takes the job over.",
        ],
        [
            "web",
            None,
            "0",
            "TCP port of the HTTP API, metrics and dashboard, on --interface; 0 (the default) serves no HTTP.",
        ],
        [
            "cache-size",
            None,
            "10G",
            "Bytes of task files (inputs and outputs) this node keeps in STATE/blobs, like 512M or 10G; "
            "the least recently used are evicted first, never those of a job its journal still has.",
        ],
        [
            "max-transfer",
            None,
            "4G",
            "The largest file a task may take as input or give as output, like 512M or 4G: a bigger one is "
            "refused while it streams.",
        ],
        ["max-output", None, "100M", "Most bytes of each stream of each task a worker keeps in full (0: tails only)."],
        ["output-retention", None, "7d", "How long a worker keeps its tasks' full output after it was last written."],
        ["tls-cert", None, None, "With --tls: this node's certificate (PEM), signed by --tls-ca, for mutual TLS."],
        ["tls-key", None, None, "With --tls-cert: its private key (PEM)."],
        ["tls-ca", None, None, "With --tls-cert: the CA (PEM) that every node's certificate must be signed by."],
        [
            "key-file",
            None,
            None,
            "The cluster key (p2pexec keygen; mode 0600): datagrams are sealed with it, connections and HTTP requests must prove they hold it.",
        ],
    ]
    optFlags = [
        ["exit-when-done", None, "Stop the node once its start-up job has finished (for one-shot runs)."],
        [
            "rerun-job",
            None,
            "Run the --job or --tasks again as a new job even if this node's journal says it already finished (without it, a finished job is not run again).",
        ],
        ["no-multicast", None, "Do not use multicast discovery; find peers through --peer seeds only."],
        [
            "tls",
            None,
            "Encrypt the AMP connections with TLS: self-signed certificates pinned through --key-file, or --tls-cert/--tls-key/--tls-ca.",
        ],
        [
            "insecure",
            None,
            "Run on a non-loopback --interface without --key-file: anyone who can reach it can make it run commands.",
        ],
        [
            "web-public",
            None,
            "With --key-file: serve the read-only HTTP endpoints (GET) without the token; submitting and cancelling still need it.",
        ],
    ]

    optParameters += resources.TAP_OPTIONS
    opt_resource = resources.opt_resource

    def __init__(self) -> None:
        super().__init__()
        self["peer"] = []

    def opt_peer(self, value: str) -> None:
        """A seed's HOST:PORT, dialled to join the cluster where multicast does not reach (repeatable); a HOST name is resolved every --peer-refresh seconds and each of its addresses dialled."""
        self["peer"].append(_parse_address("--peer", value))

    def opt_allow(self, pattern: str) -> None:
        """Run only commands whose program's name or path matches this glob pattern (repeatable); a shell task needs /bin/sh or sh allowed. See docs/security.rst."""
        self.setdefault("allow", []).append(pattern)

    def opt_instructions(self, folder: str) -> None:
        """Run only executables of this folder, a task ["NAME", args...] running DIR/NAME; nothing else. See docs/security.rst."""
        self["instructions"] = folder

    def _command_policy(self) -> CommandPolicy:
        """The policy of --allow or --instructions (everything allowed without either)."""
        allow, folder = self.get("allow", []), self.get("instructions")
        if allow and folder is not None:
            raise usage.UsageError("--allow and --instructions cannot be used together: give patterns or a folder")
        if any(not pattern.strip() for pattern in allow):
            raise usage.UsageError("--allow: a pattern cannot be empty (for example --allow /usr/bin/true)")
        if folder is not None and not os.path.exists(folder):
            raise usage.UsageError(f"--instructions: {folder} does not exist")
        if folder is not None and not os.path.isdir(folder):
            raise usage.UsageError(f"--instructions: {folder} is not a folder")
        return CommandPolicy(allow=allow, instructions=folder)

    def postOptions(self) -> None:
        """Validate every option; raise L{usage.UsageError} naming the one at fault."""
        if self["name"] is None:
            raise usage.UsageError("--name is required (for example --name a1)")
        try:
            validate_name(self["name"], "--name")
        except ValidationError as e:
            raise usage.UsageError(str(e)) from None
        self["port"] = _parse_int("--port", self["port"], 0, 65535)
        if self["tasks"] is not None and self["job"] is not None:
            raise usage.UsageError("--tasks and --job cannot be used together: give one job")
        self["task_specs"] = None
        if self["tasks"] is not None:
            names = _split_list(self["tasks"])
            if not names:
                raise usage.UsageError("--tasks: give at least one instruction name, like a1,a2,b1")
            try:
                self["task_specs"] = tuple(parse_instructions(names))
            except ValidationError as e:
                raise usage.UsageError(f"--tasks: {e}") from None
        if self["job"] is not None:
            try:
                self["task_specs"] = tuple(load_job_file(self["job"]))
            except JobFileError as e:
                raise usage.UsageError(f"--job: {e}") from None
        if self["capabilities"] is None:
            self["capability_set"] = frozenset({kind_of(self["name"])})
        else:
            kinds = _split_list(self["capabilities"])
            for kind in kinds:
                if not NAME_PATTERN.fullmatch(kind):
                    raise usage.UsageError(f"--capabilities: {kind!r} is not a task kind (1-64 of A-Z a-z 0-9 _ . -)")
            if len(kinds) > 32:
                raise usage.UsageError("--capabilities: at most 32 kinds")
            self["capability_set"] = frozenset(kinds)
        if self["slots"] is None:
            self["slots"] = os.cpu_count() or 1
        else:
            self["slots"] = _parse_int("--slots", self["slots"], 1, 10_000)
        try:
            self["node_resources"] = resources.from_options(
                self["cpus"], self["memory"], self["gpus"], self.get("resource", [])
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            interface = ipaddress.IPv4Address(self["interface"])
        except ValueError:
            raise usage.UsageError(f"--interface: {self['interface']!r} is not an IPv4 address") from None
        if interface.is_multicast or interface.is_unspecified:
            raise usage.UsageError(
                f"--interface: {interface} cannot be used; give the address of one interface (default 127.0.0.1)"
            )
        self["key"] = None
        if self["key-file"] is not None:
            try:
                self["key"] = load_key(self["key-file"])
            except KeyFileError as e:
                raise usage.UsageError(f"--key-file: {e}") from None
        elif not interface.is_loopback and not self["insecure"]:
            raise usage.UsageError(
                f"--interface {interface} is not loopback: give --key-file (make one with: p2pexec keygen --out "
                f"cluster.key) so that only nodes with the key can join and run commands, or --insecure to run "
                f"unprotected"
            )
        operator_files = [self[name] for name in ("tls-cert", "tls-key", "tls-ca")]
        if any(operator_files) and not self["tls"]:
            raise usage.UsageError("--tls-cert, --tls-key and --tls-ca go with --tls")
        if self["tls"] and any(operator_files) and not all(operator_files):
            raise usage.UsageError("--tls with certificates needs all three of --tls-cert, --tls-key and --tls-ca")
        if self["tls"]:
            try:
                import OpenSSL  # noqa: F401
            except ImportError:
                raise usage.UsageError(
                    "--tls needs pyOpenSSL, which is not installed: pip install 'p2pexec[tls]' (or 'twisted[tls]')"
                ) from None
        if self["tls"] and not any(operator_files) and self["key"] is None:
            raise usage.UsageError(
                "--tls without --tls-cert/--tls-key/--tls-ca needs --key-file: the self-signed certificates are "
                "pinned through the cluster key's challenge-response"
            )
        if self["web-public"] and self["key"] is None:
            raise usage.UsageError(
                "--web-public only means something with --key-file (without a key nothing is protected)"
            )
        self["group_address"] = _parse_group(self["group"])
        try:
            validate_name(self["cluster"], "--cluster")
        except ValidationError as e:
            raise usage.UsageError(str(e)) from None
        self._check_datagram_fits()
        if self["results"] is not None:
            folder = os.path.dirname(os.path.abspath(self["results"]))
            if not os.path.isdir(folder):
                raise usage.UsageError(f"--results: folder {folder} does not exist")
            if os.path.isdir(self["results"]):
                raise usage.UsageError(f"--results: {self['results']} is a folder; give the path of the file to write")
            if self["task_specs"] is None:
                raise usage.UsageError("--results needs a job: give --tasks or --job too")
        self["drain-timeout"] = _parse_seconds("--drain-timeout", self["drain-timeout"])
        lease = self["master-lease"]
        self["master-lease"] = 0.0 if str(lease).strip() in ("0", "0.0") else _parse_seconds("--master-lease", lease)
        self["heartbeat-interval"] = _parse_seconds("--heartbeat-interval", self["heartbeat-interval"])
        self["peer-refresh"] = _parse_peer_refresh(self["peer-refresh"])
        self["heartbeat-timeout"] = _parse_seconds("--heartbeat-timeout", self["heartbeat-timeout"])
        if self["heartbeat-timeout"] <= self["heartbeat-interval"]:
            raise usage.UsageError(
                f"--heartbeat-timeout ({self['heartbeat-timeout']:g}s) must be longer than "
                f"--heartbeat-interval ({self['heartbeat-interval']:g}s)"
            )
        if self["log-level"] not in LEVELS:
            raise usage.UsageError(f"--log-level: {self['log-level']!r} is not one of {', '.join(LEVELS)}")
        if self["exit-when-done"] and self["task_specs"] is None:
            raise usage.UsageError("--exit-when-done needs a job: give --tasks or --job too")
        if self["rerun-job"] and self["task_specs"] is None:
            raise usage.UsageError("--rerun-job needs a job: give --tasks or --job too")
        if self["state-dir"] is None:
            self["state-dir"] = default_state_dir(self["name"])
        elif not self["state-dir"].strip():
            raise usage.UsageError("--state-dir: give a folder (it is created if missing)")
        if os.path.exists(self["state-dir"]) and not os.path.isdir(self["state-dir"]):
            raise usage.UsageError(f"--state-dir: {self['state-dir']} exists and is not a folder")
        check_output_options(self)
        for option in ("cache-size", "max-transfer"):
            self[option] = _parse_size(f"--{option}", self[option])
        self["max-worker-losses"] = _parse_int("--max-worker-losses", self["max-worker-losses"], 1, 1000)
        self["replicas"] = _parse_int("--replicas", self["replicas"], 0, 10)
        self["takeover-grace"] = _parse_seconds("--takeover-grace", self["takeover-grace"])
        self["web"] = _parse_int("--web", self["web"], 0, 65535)
        if self["web"] and self["web"] == self["port"]:
            raise usage.UsageError(f"--web: port {self['web']} is already the AMP --port; give another")
        self["job_source"] = None if self["task_specs"] is None else job_digest(self["task_specs"])
        self["job_label"] = None
        if self["job"] is not None:
            self["job_label"] = f"job file {self['job']}"
        elif self["tasks"] is not None:
            shown = self["tasks"] if len(self["tasks"]) <= 60 else self["tasks"][:57] + "..."
            self["job_label"] = f"the job of --tasks {shown}"
        self["command_policy"] = self._command_policy()

    def _check_datagram_fits(self) -> None:
        """Refuse capabilities too long to announce in one discovery datagram."""
        widest = NodeInfo(
            name=self["name"],
            instance="f" * 16,
            host=self["interface"],
            port=65535,
            capabilities=tuple(sorted(self["capability_set"])),
            slots=self["slots"],
            cluster=self["cluster"],
            resources=self["node_resources"],
        )
        try:
            datagram.encode(datagram.Datagram(type=datagram.DISCOVER, node=widest))
        except datagram.DatagramError as e:
            raise usage.UsageError(
                f"--capabilities, --gpus, --resource: this node's description would not fit in one discovery datagram "
                f"({e.detail}); use fewer or shorter task kinds or resources"
            ) from None


def config_from_options(options: Options) -> NodeConfig:
    """The L{NodeConfig} described by validated options."""
    return NodeConfig(
        name=options["name"],
        port=options["port"],
        interface=options["interface"],
        group=options["group_address"],
        cluster=options["cluster"],
        capabilities=options["capability_set"],
        slots=options["slots"],
        resources=options["node_resources"],
        tasks=options["task_specs"],
        results=options["results"],
        drain_timeout=options["drain-timeout"],
        multicast=not options["no-multicast"],
        heartbeat_interval=options["heartbeat-interval"],
        heartbeat_timeout=options["heartbeat-timeout"],
        seeds=tuple(options["peer"]),
        peer_refresh=options["peer-refresh"],
        state_dir=options["state-dir"],
        key=options["key"],
        web_public=options["web-public"],
        job_source=options["job_source"],
        job_label=options["job_label"],
        rerun_job=options["rerun-job"],
        max_losses=options["max-worker-losses"],
        replicas=options["replicas"],
        takeover_grace=options["takeover-grace"],
        master_lease=options["master-lease"],
        cache_size=options["cache-size"],
        max_transfer=options["max-transfer"],
        restricted_commands=not options["command_policy"].allows_everything,
    )


def job_digest(tasks: tuple[TaskSpec, ...]) -> str:
    """
    What identifies a start-up job across restarts: a digest of its tasks.
    A master restarted with the same job resumes it from its journal rather
    than starting it again.
    """
    encoded = json.dumps([task.to_wire() for task in tasks], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def makeService(options: Options, reactor: Any | None = None) -> IService:
    """
    Build the node's service tree from validated options.

    @param reactor: for tests; by default the global reactor, whose timers
        are then made monotonic before anything is scheduled on it (see
        L{p2pexec.clock}), the process's SIGTERM and SIGINT handlers are
        replaced too, and systemd is notified if C{NOTIFY_SOCKET} is set
        (see L{p2pexec.systemd}).
    """
    running_for_real = reactor is None
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
        use_monotonic_time(reactor)
    set_minimum_level(LEVELS[options["log-level"]])
    config = config_from_options(options)
    # Always a folder: postOptions gives the default one when none is given.
    state_dir: str = options["state-dir"]
    # The guard process is for the real thing: it outlives the node to stop its tasks.
    guard = TaskGuard(reactor, config.name, state_dir, DEFAULT_KILL_GRACE) if running_for_real else None
    outputs = open_store(options, state_dir, config.name)
    # NOTIFY_SOCKET and the watchdog variables are for twistd alone, not its tasks.
    executor = ProcessExecutor(
        reactor,
        config.name,
        base_environment=without_notify_variables(os.environ),
        policy=options["command_policy"],
        guard=guard,
        outputs=outputs,
    )
    # The journal first: a node that refuses its state directory (a damaged
    # or foreign journal, one in use) leaves nothing new in it.
    try:
        journal = open_journal(config.state_dir, reactor)
    except JournalError as e:
        raise SystemExit(f"p2pexec: node {config.name} cannot start: {e}") from None
    if options["tls"]:
        from p2pexec.tls import TLSConfig, TLSError, load_operator_identity, load_or_create_identity

        try:
            if options["tls-cert"]:
                identity, authority = load_operator_identity(options["tls-cert"], options["tls-key"], options["tls-ca"])
                config = attr.evolve(config, tls=TLSConfig(identity, authority))
            else:
                config = attr.evolve(config, tls=TLSConfig(load_or_create_identity(state_dir, config.name), None))
        except (TLSError, OSError) as e:
            raise SystemExit(f"p2pexec: node {config.name} cannot start: --tls: {e}") from None
    if config.key is None and config.state_dir is not None:
        try:
            config = attr.evolve(config, local_token=load_or_create(config.state_dir))
        except LocalTokenError as e:
            raise SystemExit(f"p2pexec: node {config.name} cannot start: {e}") from None
    if outputs is not None:
        outputs.keep_sweeping(reactor)
    node = create_node(config, reactor, executor, journal=journal, outputs=outputs)
    if options["exit-when-done"]:
        node.initial_job.addCallback(lambda _: reactor.callLater(0, reactor.stop))
    if running_for_real:
        reactor.callWhenRunning(_stop_cleanly_on_signals, reactor, config.name)
    notifier = SystemdNotifier(reactor, os.environ if running_for_real else {})
    service = NodeService(node, notifier, guard)
    if options["web"]:
        WebService(node, options["web"], reactor).setServiceParent(service)
    if config.local_token is not None:
        # Tests (a reactor of their own) keep the record inside the state directory.
        environ = dict(os.environ) if running_for_real else {"XDG_STATE_HOME": config.state_dir or ""}
        RuntimeRecordService(node, options["web"] or None, environ).setServiceParent(service)
    return service
