"""
The file parts of one node (issue 16), built by L{build_files} for
L{p2pexec.wiring}: its blob store (C{STATE/blobs}, bounded by
C{--cache-size}), its sandboxes (C{STATE/sandboxes}), the L{FileService}
that answers HAVE_BLOBS, PUT_BLOB and FETCH_BLOB, the L{FileRunner} around
the node's task runner, and the master's L{JobFiles}.

A node without a state directory moves no files (it has nowhere to keep them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attr
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from p2pexec import sandbox, transfer
from p2pexec.blob_thread import Runner, SerialThread, inline
from p2pexec.blobs import BlobStore
from p2pexec.config import NodeConfig
from p2pexec.directory import JobDirectory
from p2pexec.file_copies import ReplicaCopies
from p2pexec.file_holds import JobFiles
from p2pexec.file_runner import FileRunner
from p2pexec.file_service import FileService
from p2pexec.interfaces import ITaskRunner
from p2pexec.log import NodeLogger
from p2pexec.membership import PeerTable

if TYPE_CHECKING:
    from p2pexec.failover import Replication
    from p2pexec.intake import Intake
    from p2pexec.master import Master
    from p2pexec.startup import StartupJob
    from p2pexec.views import Views

log = NodeLogger()

TRANSFER_FIGURES = (
    ("sent_files", "Files this node sent in answer to FETCH_BLOB (from its store, or relayed)."),
    ("sent_bytes", "Bytes this node sent in answer to FETCH_BLOB."),
    ("received_files", "Files this node took whole through PUT_BLOB."),
    ("received_bytes", "Bytes this node took through PUT_BLOB."),
    ("refused", "Transfers this node refused (too big, a bad piece, a path, not allowed)."),
    ("inputs_fetched", "Task inputs this node fetched from another node before running a task."),
    ("inputs_fetched_bytes", "Bytes of the task inputs this node fetched."),
    ("inputs_cached", "Task inputs this node found in its own file cache (nothing moved)."),
    ("outputs_sent", "Task outputs this node pushed to their job's master."),
    ("outputs_sent_bytes", "Bytes of the task outputs this node pushed (0 for one the master had)."),
    ("file_errors", "Task attempts ended by a file problem (a fetch, a path, a missing output, a push)."),
    ("evicted_files", "Files evicted from this node's file cache to keep it within --cache-size."),
    ("replica_copies", "Files this node, as a job's master, copied to the job's replica set."),
    ("replica_copies_bytes", "Bytes of the files this node copied to its jobs' replica sets."),
)
"""The transfer counters (name, help), in the node's status (C{transfers}) and /metrics (C{p2pexec_transfer_*})."""

CACHE_GAUGES = (
    ("cache_bytes", "Bytes of files in this node's file cache."),
    ("cache_limit_bytes", "The --cache-size of this node's file cache."),
)
"""The file cache's gauges (name, help), beside L{TRANSFER_FIGURES}."""


@attr.s(auto_attribs=True)
class NodeFiles:
    """One node's file parts (see the module's docstring)."""

    store: BlobStore
    sandboxes: sandbox.Sandboxes
    service: FileService
    runner: FileRunner
    holds: JobFiles

    def figures(self) -> dict[str, int]:
        """The transfer counters and cache gauges, by the names of L{TRANSFER_FIGURES} and L{CACHE_GAUGES}."""
        service, counters, store = self.service, self.runner.counters, self.store
        return {
            "sent_files": service.sent_files,
            "sent_bytes": service.sent_bytes,
            "received_files": service.received_files,
            "received_bytes": service.received_bytes,
            "refused": service.refused,
            "inputs_fetched": counters.inputs_fetched,
            "inputs_fetched_bytes": counters.inputs_fetched_bytes,
            "inputs_cached": counters.inputs_cached,
            "outputs_sent": counters.outputs_sent,
            "outputs_sent_bytes": counters.outputs_sent_bytes,
            "file_errors": counters.file_errors,
            "evicted_files": store.evicted_files,
            "replica_copies": 0 if self.holds.copies is None else self.holds.copies.copied,
            "replica_copies_bytes": 0 if self.holds.copies is None else self.holds.copies.copied_bytes,
            "cache_bytes": store.total_bytes,
            "cache_limit_bytes": store.cache_size,
        }


class _Ops:
    """The L{p2pexec.file_runner.FileOps} of the real modules; a blob pulled is hashed and written by C{run}."""

    def __init__(self, run: Runner = inline) -> None:
        self._run = run

    def place_inputs(self, store: Any, directory: str, inputs: Sequence[tuple[str, str]]) -> None:
        """L{p2pexec.sandbox.place_inputs}."""
        sandbox.place_inputs(store, directory, inputs)

    def collect_outputs(
        self, directory: str, patterns: Sequence[tuple[str, bool]], max_transfer: int
    ) -> tuple[list[tuple[str, str]], str | None]:
        """L{p2pexec.sandbox.collect_outputs}."""
        return sandbox.collect_outputs(directory, patterns, max_transfer)

    def pull(self, caller: Any, writer: Any) -> Deferred[None]:
        """L{p2pexec.transfer.pull}."""
        return transfer.pull(caller, writer, run=self._run)

    def push(self, caller: Any, read: Callable[[int, int], bytes], digest: str, size: int) -> Deferred[int]:
        """L{p2pexec.transfer.push}."""
        return transfer.push(caller, read, digest, size)


def connection_of(peers: PeerTable, name: str) -> Any | None:
    """The open connection to peer C{name}, or C{None}."""
    record = peers.get(name)
    connection = None if record is None else record.connection
    if connection is None or getattr(connection, "closed", False):
        return None
    return connection


def sources_for(peers: PeerTable, directory: JobDirectory) -> Callable[[str], list[Any]]:
    """C{sources(job)}: the job's leader if connected, then every other connected peer (their connections)."""

    def sources(job: str) -> list[Any]:
        leader = directory.lookup(job)
        first = None if leader is None else leader.master
        found = [] if first is None else [c for c in [connection_of(peers, first)] if c is not None]
        for record in peers.connected_peers():
            if record.info.name != first and record.connection is not None:
                found.append(record.connection)
        return found

    return sources


def push_to_leader(peers: PeerTable, directory: JobDirectory, master: Master, me: str) -> Callable[[str], Any | None]:
    """C{push_to(job)}: C{None} when this node leads C{job}, else the connection to its leader (L{LookupError})."""

    def push_to(job: str) -> Any | None:
        if job in master.jobs:
            return None
        leader = directory.lookup(job)
        if leader is None:
            raise LookupError(f"node {me} does not know the master of job {job}")
        if leader.master == me:
            return None
        connection = connection_of(peers, leader.master)
        if connection is None:
            raise LookupError(f"its master {leader.master} is not connected to node {me}")
        return connection

    return push_to


def build_files(
    config: NodeConfig,
    reactor: Any,
    runner: ITaskRunner,
    peers: PeerTable,
    directory: JobDirectory,
    master: Master,
) -> NodeFiles | None:
    """The file parts of a node (see the module's docstring), or C{None} for a node that moves no files."""
    if config.state_dir is None:
        return None
    store = BlobStore(os.path.join(config.state_dir, "blobs"), config.cache_size, config.max_transfer)
    sandboxes = sandbox.Sandboxes(os.path.join(config.state_dir, "sandboxes"))
    # Incoming blobs are hashed and written in one thread, in order, off the reactor.
    # (A daemon thread, idle between blobs: nothing to stop.)
    writing = SerialThread(reactor)
    service = FileService(store, reactor, run=writing)

    def in_thread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)

    files_runner = FileRunner(
        runner,
        store,
        sandboxes,
        sources_for(peers, directory),
        push_to_leader(peers, directory, master, config.name),
        reactor,
        in_thread,
        _Ops(writing),
        name=config.name,
        restricted=config.restricted_commands,
    )
    holds = JobFiles(store, reactor, config.name)
    holds.copies = ReplicaCopies(store, reactor, lambda member: connection_of(peers, member), config.name)
    return NodeFiles(store, sandboxes, service, files_runner, holds)


def wire_files(
    files: NodeFiles,
    peers: PeerTable,
    name: str,
    responders: Any,
    intake: Intake,
    master: Master,
    startup: StartupJob,
    views: Views,
    replication: Replication | None = None,
) -> None:
    """
    Join the file parts to the node's: the service answers the file commands
    (C{responders.files}), the master checks and holds the jobs' files, and
    copies them to each job's replica set once it is known (C{replication}).
    """
    files.service.wire(lambda: [r.connection for r in peers.connected_peers() if r.connection is not None], name)
    responders.files = files.service
    intake.files = files.holds
    startup.files = files.holds
    master.job_result_listeners.append(files.holds.result_applied)
    startup.forgotten_listeners.append(files.holds.forgotten)
    startup.replicas_forgotten_listeners.append(files.holds.replicas_forgotten)
    if replication is not None:
        replication.unplaced.listeners.append(files.holds.placed)
        replication.connected_listeners.append(files.holds.member_connected)
    views.files = files
