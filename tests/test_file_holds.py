"""
Tests for the master's side of task files (L{p2pexec.file_holds}) and how the
node joins the file parts (L{p2pexec.file_parts}): intake refuses a job whose
inputs are not here, holds them per job, holds result outputs, releases on the
journal's retention; options, status and metrics.
"""

from __future__ import annotations

import hashlib
import os

from prometheus_client import generate_latest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands, confirmations, intake
from p2pexec.config import NodeConfig
from p2pexec.file_holds import JobFiles
from p2pexec.file_parts import NodeFiles, push_to_leader, sources_for, wire_files
from p2pexec.file_runner import FileCounters
from p2pexec.job import Job
from p2pexec.journal import Journal
from p2pexec.metrics import NodeMetrics
from p2pexec.model import InputFile, OutputFile, TaskResult, TaskSpec
from p2pexec.node import create_node
from p2pexec.replicas import Ballot
from p2pexec.tap import Options, config_from_options
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.runner import FakeRunner

A = hashlib.sha256(b"a").hexdigest()
B = hashlib.sha256(b"b").hexdigest()
C = hashlib.sha256(b"c").hexdigest()


class HoldingStore:
    """A store that has some digests and records every hold and release."""

    def __init__(self, present=()):
        self.present = set(present)
        self.calls = []

    def has(self, digest):
        """Whether the digest is here."""
        return digest in self.present

    def hold(self, owner, digests):
        """Record a hold."""
        self.calls.append(("hold", owner, sorted(digests)))

    def release(self, owner):
        """Record a release."""
        self.calls.append(("release", owner))

    def add_file(self, path, move=False):
        """Take the file's content in (its digest and size), as the real store does."""
        with open(path, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        self.present.add(digest)
        self.calls.append(("add", path))
        return digest, len(data)


def spec(task_id, *inputs):
    """A task with these (name, digest) inputs."""
    files = tuple(InputFile(name, digest, 1) for name, digest in inputs)
    return TaskSpec(id=task_id, kind="w", command=("true",), inputs=files)


def with_outputs(task_id, *digests):
    """A succeeded result with one output per digest."""
    outputs = tuple(OutputFile(f"out{i}", 1, d) for i, d in enumerate(digests))
    return TaskResult(task_id=task_id, attempt=1, status="succeeded", node="w1", outputs=outputs)


class JobFilesTests(SynchronousTestCase):
    """L{JobFiles}."""

    def setUp(self):
        self.clock = Clock()
        self.store = HoldingStore({A, B})
        self.files = JobFiles(self.store, self.clock, "m1")

    def test_missing_input_refused(self):
        """A job naming an input the store lacks is BAD_JOB, naming task, input and digest."""
        self.files.check([spec("t1", ("a.csv", A))], "job x")
        error = self.assertRaises(
            commands.BadJob, self.files.check, [spec("t1", ("a.csv", A)), spec("t2", ("c.bin", C))], "job x"
        )
        self.assertIn("job x: task 't2': input 'c.bin' (sha256 " + C + ") is not on node m1", str(error))

    def test_inputs_held_per_job(self):
        """The inputs of an accepted job are held under its id, each digest once; none held without inputs."""
        self.files.accepted("j1", [spec("t1", ("a", A)), spec("t2", ("a", A), ("b", B))])
        self.files.accepted("j2", [spec("t1")])
        self.assertEqual(self.store.calls, [("hold", "j1", sorted([A, B]))])

    def test_outputs_held_once_per_turn(self):
        """The outputs of the results of one turn are held in one write per job."""
        self.files.result_applied("j1", with_outputs("t1", A))
        self.files.result_applied("j1", with_outputs("t2", B, C))
        self.files.result_applied("j1", with_outputs("t3"))
        self.assertEqual(self.store.calls, [])
        self.clock.advance(0)
        self.assertEqual(self.store.calls, [("hold", "j1", sorted([A, B, C]))])

    def test_start_up_job_inputs_taken_in(self):
        """
        A start-up job's inputs are files on this node: each is copied into
        the store (once, and only if missing), then held under the job.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"c")
        local = InputFile("c.bin", C, 1, source=path)
        here = InputFile("a.csv", A, 1, source="/nonexistent/a.csv")
        task = TaskSpec(id="t1", kind="w", command=("true",), inputs=(local, here))
        self.files.take_local("j1", [task])
        self.assertEqual(self.store.calls, [("add", path), ("hold", "j1", sorted([A, C]))])
        self.files.check([task], "job j1")

    def test_start_up_job_input_changed_is_logged(self):
        """A start-up job's input that changed since it was hashed is logged, naming it; the job is still held."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not c")
        task = TaskSpec(id="t1", kind="w", command=("true",), inputs=(InputFile("c.bin", C, 1, source=path),))
        with capturedLogs() as events:
            self.files.take_local("j1", [task])
        lines = [formatEvent(event) for event in events]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"could not take input {path} of its start-up job j1: it changed since it was hashed", lines[0])
        self.assertRaises(commands.BadJob, self.files.check, [task], "job j1")
        self.assertEqual(self.store.calls[-1], ("hold", "j1", [C]))

    def test_forgotten_and_withdrawn_release(self):
        """A job forgotten by the journal, or withdrawn, releases what it held."""
        self.files.forgotten(["j1", "j2"])
        self.files.withdrawn("j3")
        self.assertEqual(self.store.calls, [("release", "j1"), ("release", "j2"), ("release", "j3")])


class MasterHooksTests(SynchronousTestCase):
    """Where the master's side is joined: intake, applied results, the journal's retention."""

    def setUp(self):
        network = FakeNetwork()
        self.host = network.host("127.0.0.1")
        self.node = create_node(NodeConfig(name="m1", capabilities=frozenset()), self.host, FakeRunner(self.host, "m1"))
        self.node.start()
        self.store = HoldingStore({A})
        self.node.intake.files = JobFiles(self.store, self.host, "m1")

    def submit(self, specs):
        """Submit C{specs} through the intake (the job file's parsing stands aside: the model part owns it)."""
        self.patch(intake, "parse_job", lambda document, label: list(specs))
        return self.node.submit([{}])

    def test_intake_refuses_missing_input(self):
        """SUBMIT_JOB of a job whose input is not in the store: BAD_JOB, and no job."""
        error = self.assertRaises(commands.BadJob, self.submit, [spec("t1", ("c.bin", C))])
        self.assertIn("input 'c.bin'", str(error))
        self.assertEqual(self.node.master.jobs, {})

    def test_intake_holds_inputs(self):
        """An accepted job's inputs are held under its id."""
        job_ids = []
        self.submit([spec("t1", ("a.csv", A))]).addCallback(job_ids.append)
        self.assertEqual(self.store.calls, [("hold", job_ids[0], [A])])

    def test_applied_result_reported_with_its_job(self):
        """report_result tells the job listeners the job's id with each applied result."""
        seen = []
        job = Job("j1", [TaskSpec(id="t1", kind="w", command=("true",))], started=0.0)
        batch = confirmations.Batch("w1", None)
        result = with_outputs("t1", A)
        confirmations.report_result(job, result, batch, [], [lambda job_id, r: seen.append((job_id, r))])
        self.assertEqual(seen, [("j1", result)])

    def test_pruned_jobs_forgotten(self):
        """The journal's retention deletes old jobs: the listeners hear their ids (L{Journal.last_pruned})."""
        state_dir = self.mktemp()
        journal = Journal(state_dir, Clock())
        for job_id, finished in (("old", 10.0), ("new", 10_000.0)):
            job = Job(job_id, [TaskSpec.instruction("a1")], started=1.0)
            journal.job_added(job)
            job.assign("a1", "w1")
            job.apply(TaskResult(task_id="a1", attempt=1, status="succeeded", node="w1"), finished, "w1")
            journal.task_changed(job.id, job.tasks["a1"])
            journal.job_changed(job)
        journal.commit()
        journal.close()
        host = FakeNetwork().host("127.0.0.1")
        node = create_node(
            NodeConfig(name="m1", state_dir=state_dir, journal_retention=3600.0),
            host,
            FakeRunner(host, "m1"),
            wall=lambda: 10_000.0,
        )
        self.addCleanup(node.journal.close)
        forgotten = []
        node.startup.forgotten_listeners.append(forgotten.append)
        node.startup.prune()
        self.assertEqual(forgotten, [["old"]])
        self.assertEqual(node.journal.last_pruned(), ["old"])


class FakeService:
    """A file service's counters, and what it was wired to."""

    sent_files, sent_bytes, received_files, received_bytes, refused = 1, 2, 3, 4, 5

    def __init__(self):
        self.wired = None

    def wire(self, peers, name):
        """Record the wiring."""
        self.wired = (peers, name)


class FakeCache:
    """A blob store's counters."""

    evicted_files, total_bytes, cache_size = 6, 7, 8


class FakeRunnerWithCounters:
    """A file runner's counters."""

    counters = FileCounters(9, 10, 11, 12, 13, 14)


class FakeCopies:
    """The copies to replica sets' counters."""

    copied, copied_bytes = 15, 16


def fake_files(holds):
    """File parts of fakes."""
    return NodeFiles(FakeCache(), None, FakeService(), FakeRunnerWithCounters(), holds)


class WiringTests(SynchronousTestCase):
    """L{wire_files}, C{sources} and C{push_to}, the status and the metrics."""

    def setUp(self):
        network = FakeNetwork()
        host = network.host("127.0.0.1")
        self.node = create_node(NodeConfig(name="m1"), host, FakeRunner(host, "m1"))
        self.holds = JobFiles(HoldingStore(), host, "m1")
        self.files = fake_files(self.holds)
        n = self.node
        wire_files(self.files, n.peers, "m1", n.responders, n.intake, n.master, n.startup, n.views)

    def test_parts_joined(self):
        """Every hook is set: the service, the intake, the master's results, the retention, the views."""
        n = self.node
        self.assertIs(n.responders.files, self.files.service)
        self.assertEqual(self.files.service.wired[1], "m1")
        self.assertEqual(list(self.files.service.wired[0]()), [])
        self.assertIs(n.intake.files, self.holds)
        self.assertIn(self.holds.result_applied, n.master.job_result_listeners)
        self.assertIn(self.holds.forgotten, n.startup.forgotten_listeners)
        self.assertIs(n.views.files, self.files)

    def test_status_shows_transfers(self):
        """This node's entry of the status has its transfer counters; the counters have them as transfer_*."""
        transfers = self.node.peers_status()[0]["transfers"]
        self.assertEqual(transfers["sent_bytes"], 2)
        self.assertEqual(transfers["inputs_fetched_bytes"], 10)
        self.assertEqual(transfers["cache_bytes"], 7)
        self.assertEqual((transfers["replica_copies"], transfers["replica_copies_bytes"]), (0, 0))
        self.holds.copies = FakeCopies()
        transfers = self.node.peers_status()[0]["transfers"]
        self.assertEqual((transfers["replica_copies"], transfers["replica_copies_bytes"]), (15, 16))
        self.assertEqual(self.node.views.counters()["transfer_received_bytes"], 4)

    def test_metrics(self):
        """/metrics has p2pexec_transfer_* counters and the cache gauges."""
        text = generate_latest(NodeMetrics(self.node.views).registry).decode()
        self.assertIn("p2pexec_transfer_sent_bytes_total 2.0", text)
        self.assertIn("p2pexec_transfer_outputs_sent_bytes_total 13.0", text)
        self.assertIn("p2pexec_transfer_cache_limit_bytes 8.0", text)

    def test_no_files_no_transfers(self):
        """A node without file parts shows no transfers."""
        host = FakeNetwork().host("127.0.0.1")
        plain = create_node(NodeConfig(name="a1"), host, FakeRunner(host, "a1"))
        self.assertNotIn("transfers", plain.peers_status()[0])
        self.assertNotIn("p2pexec_transfer", generate_latest(NodeMetrics(plain.views).registry).decode())

    def test_sources_and_push_to(self):
        """sources: the job's leader first; push_to: None for a job this node leads, else a clear LookupError."""

        class Record:
            """A peer table row: a name and a connection."""

            def __init__(self, name, connection):
                self.info = type("Info", (), {"name": name})()
                self.connection = connection

        class Peers:
            """A peer table of these rows, all connected."""

            def __init__(self, records):
                self.records = {r.info.name: r for r in records}

            def get(self, name):
                """The row of C{name}."""
                return self.records.get(name)

            def connected_peers(self):
                """Every row."""
                return list(self.records.values())

        a, b = object(), object()
        peers = Peers([Record("p2", a), Record("m2", b)])
        directory = self.node.directory
        directory.learn("j9", Ballot(1, "m2"))
        self.assertEqual(sources_for(peers, directory)("j9"), [b, a])
        self.assertEqual(sources_for(peers, directory)("unknown"), [a, b])
        push_to = push_to_leader(peers, directory, self.node.master, "m1")
        self.assertIs(push_to("j9"), b)
        error = self.assertRaises(LookupError, push_to, "unknown")
        self.assertEqual(str(error), "node m1 does not know the master of job unknown")
        directory.learn("j8", Ballot(1, "gone"))
        error = self.assertRaises(LookupError, push_to, "j8")
        self.assertEqual(str(error), "its master gone is not connected to node m1")


class OptionTests(SynchronousTestCase):
    """C{--cache-size} and C{--max-transfer}."""

    def parse(self, *argv):
        """Options parsed from C{argv} (with a name and a state directory)."""
        options = Options()
        options.parseOptions(["--name", "a1", "--state-dir", self.mktemp(), *argv])
        return options

    def test_defaults_and_sizes(self):
        """10G and 4G by default; sizes as resources' parser reads them, into the config."""
        config = config_from_options(self.parse())
        self.assertEqual((config.cache_size, config.max_transfer), (10 * 1024**3, 4 * 1024**3))
        config = config_from_options(self.parse("--cache-size", "512M", "--max-transfer", "1000"))
        self.assertEqual((config.cache_size, config.max_transfer), (512 * 1024**2, 1000))

    def test_bad_sizes_name_the_option(self):
        """A size that is not one, or 0, is one line naming the option."""
        error = self.assertRaises(usage.UsageError, self.parse, "--cache-size", "lots")
        self.assertEqual(
            str(error), "--cache-size must be a size such as 512M or 4G (or a number of bytes), not 'lots'"
        )
        error = self.assertRaises(usage.UsageError, self.parse, "--max-transfer", "0")
        self.assertEqual(str(error), "--max-transfer must be above 0, not '0'")

    def test_command_policy_restricts_file_placement(self):
        """--allow or --instructions makes the node's file runner restricted; neither leaves it free."""
        self.assertFalse(config_from_options(self.parse()).restricted_commands)
        self.assertTrue(config_from_options(self.parse("--allow", "/usr/bin/true")).restricted_commands)
        folder = self.mktemp()
        os.makedirs(folder)
        self.assertTrue(config_from_options(self.parse("--instructions", folder)).restricted_commands)
