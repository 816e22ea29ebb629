"""
Tests for a job's files copied to its replica set (L{p2pexec.file_copies},
L{p2pexec.file_holds.JobFiles.placed}) and held there (HOLD_BLOBS,
L{p2pexec.file_service.FileService.hold_for_replica}): real
L{PeerProtocol}s over in-memory connections (iosim) between nodes whose
stores are dict-backed doubles; the replica set known at placement and at
takeover (L{p2pexec.replica_placement.Placements.placed}) on the fake network;
the holds released when the replicated log is pruned.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.config import NodeConfig
from p2pexec.file_copies import ReplicaCopies
from p2pexec.file_holds import JobFiles
from p2pexec.journal import Journal, NullJournal
from p2pexec.log import set_minimum_level
from p2pexec.model import InputFile, OutputFile, TaskResult, TaskSpec
from p2pexec.peer import PeerProtocol
from p2pexec.replica_log import Batch
from p2pexec.replicas import Ballot
from p2pexec.replication import END, JOB, Record
from p2pexec.startup import StartupJob

from .test_failover import failover_cluster, finished_at, leaders, submit
from .test_file_service import FakeStore, FileHandler, settle

BALLOT = Ballot(1, "m1")


class HoldingFakeStore(FakeStore):
    """A L{FakeStore} that also keeps holds, by owner."""

    def __init__(self) -> None:
        super().__init__()
        self.holds: dict[str, set[str]] = {}

    def hold(self, owner: str, digests: Any) -> None:
        """Add C{digests} to C{owner}'s hold."""
        self.holds.setdefault(owner, set()).update(digests)

    def release(self, owner: str) -> None:
        """Drop C{owner}'s hold."""
        self.holds.pop(owner, None)

    def add_file(self, path: str, move: bool = False) -> tuple[str, int]:
        """Not used here."""
        raise NotImplementedError


class Node(FileHandler):
    """A L{FileHandler} whose store keeps holds."""

    def __init__(self, name: str, clock: Clock) -> None:
        super().__init__(name, clock)
        self.store = HoldingFakeStore()
        self.files.store = self.store


def spec(task_id: str, *digests: str) -> TaskSpec:
    """A task whose inputs are these digests (sizes do not matter here)."""
    inputs = tuple(InputFile(f"in{i}", digest, 1) for i, digest in enumerate(digests))
    return TaskSpec(id=task_id, kind="w", command=("true",), inputs=inputs)


def result(task_id: str, *digests: str) -> TaskResult:
    """A succeeded result with one output per digest."""
    outputs = tuple(OutputFile(f"out{i}", 1, d) for i, d in enumerate(digests))
    return TaskResult(task_id=task_id, attempt=1, status="succeeded", node="w1", outputs=outputs)


class CopyTests(SynchronousTestCase):
    """m1, a job's master, copies the job's files to w1 and w2 over real peer connections."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.m1 = Node("m1", self.clock)
        self.w1 = Node("w1", self.clock)
        self.w2 = Node("w2", self.clock)
        self.pumps: list[Any] = []
        self.links = {"w1": self.link(self.m1, self.w1), "w2": self.link(self.m1, self.w2)}
        self.connected = {"w1", "w2"}
        self.copies = ReplicaCopies(self.m1.store, self.clock, self.connect, "m1")
        self.files = JobFiles(self.m1.store, self.clock, "m1")
        self.files.copies = self.copies

    def link(self, dialler: Node, acceptor: Node) -> PeerProtocol:
        """Connect two nodes and complete the handshake; the dialler's end."""
        dialling, accepting, pump = connectedServerAndClient(
            lambda: PeerProtocol(acceptor), lambda: PeerProtocol(dialler, dialled=True), clock=self.clock
        )
        self.pumps.append(pump)
        settle(Deferred.fromCoroutine(dialling.introduce(dialler.info)), pump)
        self.assertEqual(dialling.peer_name, acceptor.info.name)
        return dialling

    def connect(self, member: str) -> Any:
        """The connection to C{member}, if it counts as connected."""
        return self.links[member] if member in self.connected else None

    def pump(self) -> None:
        """Move every connection until none moves."""
        for _ in range(10_000):
            if not any([pump.pump() for pump in self.pumps]):
                break

    def test_inputs_copied_and_held(self):
        """
        The job's replica set is chosen: both inputs (2 MiB and a small one)
        reach w1 and w2 with their SHA-256, each holds them under
        C{replica:J1}, m1 holds them under J1, and one line per member says so.
        """
        big, small = os.urandom(2 * 1024 * 1024), b"small"
        a, b = self.m1.store.add(big), self.m1.store.add(small)
        with capturedLogs() as events:
            self.files.placed("J1", ("m1", "w1", "w2"), [spec("t1", a, b), spec("t2", a)], [])
            self.pump()
        for member in (self.w1, self.w2):
            self.assertEqual(hashlib.sha256(member.store.blobs[a]).hexdigest(), a)
            self.assertEqual(member.store.blobs[b], small)
            self.assertEqual(member.store.holds, {"replica:J1": {a, b}})
        self.assertEqual(self.m1.store.holds, {"J1": {a, b}})
        self.assertEqual((self.copies.copied, self.copies.copied_bytes), (4, 2 * (len(big) + len(small))))
        lines = [formatEvent(e) for e in events if "copied job" in e["log_format"]]
        self.assertEqual(
            [line.split(" in ")[0] for line in lines],
            [
                f"Node m1 copied job J1's 2 input file(s) ({len(big) + len(small):,} bytes) to replica w1",
                f"Node m1 copied job J1's 2 input file(s) ({len(big) + len(small):,} bytes) to replica w2",
            ],
        )
        self.assertTrue(self.copies.idle)

    def test_one_copy_at_a_time(self):
        """While w1's copy is under way, nothing goes to w2; w2's starts once w1's is done."""
        a = self.m1.store.add(os.urandom(100_000))
        self.files.placed("J1", ("m1", "w1", "w2"), [spec("t1", a)], [])
        w1_pump, w2_pump = self.pumps
        for _ in range(100):
            w1_pump.pump()
            w2_pump.pump()
            if a in self.w1.store.blobs:
                break
        self.assertNotIn(a, self.w2.store.blobs, "w2 got a piece while w1's copy was under way")
        self.pump()
        self.assertIn(a, self.w2.store.blobs)
        self.assertEqual(self.w2.store.holds, {"replica:J1": {a}})

    def test_outputs_follow_results(self):
        """An output of a result applied after the placement goes to the members too (held with the inputs)."""
        a, out = self.m1.store.add(b"input"), self.m1.store.add(b"output")
        self.files.placed("J1", ("m1", "w1", "w2"), [spec("t1", a)], [])
        self.pump()
        with capturedLogs() as events:
            self.files.result_applied("J1", result("t1", out))
            self.clock.advance(0)
            self.pump()
        for member in (self.w1, self.w2):
            self.assertEqual(member.store.holds, {"replica:J1": {a, out}})
        self.assertEqual(self.m1.store.holds, {"J1": {a, out}})
        lines = [formatEvent(e) for e in events if "copied job" in e["log_format"]]
        self.assertEqual(len(lines), 2)
        self.assertIn("copied job J1's 1 output file(s) (6 bytes) to replica w1", lines[0])

    def test_taken_over_job_holds_its_files(self):
        """A successor's placement (takeover) holds the inputs and the results' outputs under the job."""
        a, out = self.m1.store.add(b"input"), self.m1.store.add(b"output")
        self.files.placed("J1", ("w9", "m1", "w1"), [spec("t1", a)], [result("t1", out)])
        self.pump()
        self.assertEqual(self.m1.store.holds, {"J1": {a, out}})
        self.assertEqual(self.w1.store.holds, {"replica:J1": {a, out}})

    def test_member_not_connected_copied_later(self):
        """A member not connected is skipped (a debug line), and copied to once it connects."""
        a = self.m1.store.add(b"input")
        self.connected.discard("w2")
        set_minimum_level(LogLevel.debug)
        self.addCleanup(set_minimum_level, LogLevel.info)
        with capturedLogs() as events:
            self.files.placed("J1", ("m1", "w1", "w2"), [spec("t1", a)], [])
            self.pump()
        self.assertEqual(self.w2.store.holds, {})
        skipped = [formatEvent(e) for e in events if "skips copying" in e["log_format"]]
        self.assertEqual(len(skipped), 1)
        self.assertEqual([e["log_level"] for e in events if "skips copying" in e["log_format"]], [LogLevel.debug])
        self.connected.add("w2")
        self.files.member_connected("w2")
        self.pump()
        self.assertEqual(self.w2.store.holds, {"replica:J1": {a}})

    def test_failure_logged_once_job_goes_on(self):
        """
        A member that does not hold what was sent (its hold fails): one
        warning for the job and member, however many copies fail; the next
        copy (w2) goes on.
        """
        a, out = self.m1.store.add(b"input"), self.m1.store.add(b"output")

        def refuse(owner, digests):
            raise OSError("disk full")

        self.w1.store.hold = refuse
        with capturedLogs() as events:
            self.files.placed("J1", ("m1", "w1", "w2"), [spec("t1", a)], [])
            self.pump()
            self.files.result_applied("J1", result("t1", out))
            self.clock.advance(0)
            self.pump()
        warnings = [formatEvent(e) for e in events if "could not copy" in e["log_format"]]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("Node m1 could not copy job J1's files to replica w1: ", warnings[0])
        self.assertIn("disk full", warnings[0])
        self.assertEqual(self.w2.store.holds, {"replica:J1": {a, out}})
        self.assertTrue(self.copies.idle)

    def test_forgotten_job_not_copied(self):
        """A job forgotten before its turn is not copied; its replica holds are released when pruned."""
        a = self.m1.store.add(b"input")
        self.connected.clear()
        self.files.placed("J1", ("m1", "w1", "w2"), [spec("t1", a)], [])
        self.files.forgotten(["J1"])
        self.connected.update({"w1", "w2"})
        self.files.member_connected("w1")
        self.pump()
        self.assertEqual(self.w1.store.blobs, {})
        self.w1.store.hold("replica:J1", [a])
        self.w1.store.hold("J2", [a])
        JobFiles(self.w1.store, self.clock, "w1").replicas_forgotten(["J1"])
        self.assertEqual(self.w1.store.holds, {"J2": {a}})

    def test_hold_blobs_answers_what_it_has(self):
        """HOLD_BLOBS from a peer: the digests the member has are held and answered; the others are not."""
        a = self.w1.store.add(b"here")
        lacking = "f" * 64
        outcome = settle(
            self.links["w1"].callRemote(commands.HoldBlobs, job="J1", digests=[a, lacking, a]), *self.pumps
        )
        self.assertEqual(outcome, [{"held": [a]}])
        self.assertEqual(self.w1.store.holds, {"replica:J1": {a}})

    def test_hold_blobs_refused_from_a_client(self):
        """A client's HOLD_BLOBS (no handshake) is refused, the connection kept; nothing is held."""
        a = self.w1.store.add(b"here")
        client, _server, pump = connectedServerAndClient(
            lambda: PeerProtocol(self.w1, clock=self.clock), amp.AMP, clock=self.clock
        )
        outcome = settle(client.callRemote(commands.HoldBlobs, job="J1", digests=[a]), pump)
        outcome[0].trap(commands.ConnectRequired)
        self.assertEqual(self.w1.store.holds, {})
        answer = settle(client.callRemote(commands.HaveBlobs, digests=[a]), pump)
        self.assertEqual(answer, [{"missing": []}])

    def test_hold_blobs_bad_arguments(self):
        """A malformed digest list is BAD_ARGUMENTS naming HOLD_BLOBS; the connection stays."""
        outcome = settle(self.links["w1"].callRemote(commands.HoldBlobs, job="J1", digests=["nope"]), *self.pumps)
        outcome[0].trap(commands.BadArguments)
        self.assertIn("digests", outcome[0].getErrorMessage())
        self.assertFalse(self.links["w1"].closed)


class PlacedTests(SynchronousTestCase):
    """The replica set is told to the listeners when it is chosen, and when a successor takes the job over."""

    def test_placed_and_taken_over(self):
        """
        z1 accepts a job: its listener hears the job, its set and tasks; z1
        crashes: the successor's listener hears the same set, with the
        results it rebuilt.
        """
        cluster = failover_cluster()
        heard: dict[str, list[tuple[str, tuple[str, ...], int, int]]] = {}
        for name, node in cluster.nodes.items():
            node.replication.unplaced.listeners.append(
                lambda job, members, specs, results, name=name: heard.setdefault(name, []).append(
                    (job, members, len(specs), len(results))
                )
            )
        job_id = submit(cluster, "z1", 20)
        members = cluster.nodes["z1"].replication.logs[job_id].members
        self.assertEqual(heard, {"z1": [(job_id, members, 20, 0)]})
        cluster.network.run_until(lambda: cluster.nodes["z1"].replication.logs[job_id].committed > 10, limit=20)
        cluster.hosts["z1"].crash()
        cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        [leader] = leaders(cluster, job_id)
        [(job, set_, tasks, results)] = heard[leader]
        self.assertEqual((job, set_, tasks), (job_id, members, 20))
        self.assertGreater(results, 0)


class PruneTests(SynchronousTestCase):
    """The files a replica held for a job are released when its replicated log of the job is pruned."""

    def test_pruned_replica_logs_named(self):
        """prune_replicas names the jobs whose logs it deleted; StartupJob.prune tells its listeners."""
        journal = Journal(self.mktemp(), Clock())
        self.addCleanup(journal.close)
        ended = [Record(1, JOB, {"part": 0}, BALLOT), Record(2, END, {"finished": 50.0}, BALLOT)]
        journal.replica_changed("J1", BALLOT, BALLOT)
        journal.replica_batch("J1", Batch.of(BALLOT, ended))
        journal.replica_changed("J2", BALLOT, BALLOT)
        journal.replica_batch("J2", Batch.of(BALLOT, ended[:1]))
        journal.commit()
        self.assertEqual(NullJournal().replicas_pruned, [])

        class FakeNode:
            info = type("Info", (), {"name": "w1"})()

        startup = StartupJob(NodeConfig(name="w1", journal_retention=100.0), Clock(), wall=lambda: 1000.0)
        startup.wire(FakeNode(), None, journal)
        heard: list[list[str]] = []
        startup.replicas_forgotten_listeners.append(heard.append)
        startup.prune()
        self.assertEqual(journal.replicas_pruned, ["J1"])
        self.assertEqual(heard, [["J1"]])
