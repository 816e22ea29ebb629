"""Tests for L{p2pexec.file_runner}: a task's inputs fetched and placed, its outputs collected, stored and pushed."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.file_runner import FRESH_PIN, FileRunner, synchronous
from p2pexec.model import (
    ERROR,
    FAILED,
    SUCCEEDED,
    Assignment,
    InputFile,
    OutputFile,
    OutputPattern,
    TaskResult,
    TaskSpec,
)


def sha(data: bytes) -> str:
    """The hex SHA-256 of C{data}."""
    return hashlib.sha256(data).hexdigest()


class FakeWriter:
    """A blob writer into a L{FakeStore}: checks offsets and the digest on finish."""

    def __init__(self, store, digest, size):
        self.store, self.digest, self.size = store, digest, size
        self.data = b""
        self.aborted = False

    def write(self, offset, data):
        """Take the next piece."""
        assert offset == len(self.data), (offset, len(self.data))
        self.data += data

    def finish(self):
        """Keep the blob if its digest matches."""
        if sha(self.data) != self.digest:
            raise ValueError(f"blob {self.digest[:8]} does not match")
        self.store.blobs[self.digest] = self.data

    def abort(self):
        """Throw it away."""
        self.aborted = True


class FakeStore:
    """A dict-backed blob store."""

    def __init__(self, max_transfer=1 << 30):
        self.blobs = {}
        self.max_transfer = max_transfer
        self.added = []
        self.pins = []
        self.pinned = []

    def has(self, digest):
        """Whether the blob is here."""
        return digest in self.blobs

    def read(self, digest, offset, limit):
        """A slice of a blob."""
        return self.blobs[digest][offset : offset + limit]

    def receive(self, digest, size):
        """A writer, refused past max_transfer as the real store does."""
        if size > self.max_transfer:
            raise ValueError(f"blob {digest[:8]}... of {size} bytes is over --max-transfer ({self.max_transfer})")
        return FakeWriter(self, digest, size)

    def pin(self, digests):
        """Record a pin (what is pinned now, and the call)."""
        self.pinned.extend(digests)
        self.pins.append(("pin", list(digests)))

    def unpin(self, digests):
        """Record an unpin."""
        for digest in digests:
            self.pinned.remove(digest)
        self.pins.append(("unpin", list(digests)))

    def add_file(self, path, move=False, pin=False):
        """Hash and keep a file (pinned if asked); remove it when moved."""
        with open(path, "rb") as f:
            data = f.read()
        self.blobs[sha(data)] = data
        self.added.append((os.path.basename(path), move))
        if pin:
            self.pin([sha(data)])
        if move:
            os.unlink(path)
        return sha(data), len(data)


class FakeSandboxes:
    """Sandboxes under a test folder, recording what was made and removed."""

    def __init__(self, root):
        self.root = root
        self.created, self.removed = [], []

    def create(self, job, task, attempt):
        """A fresh folder."""
        path = os.path.join(self.root, job, task, str(attempt))
        os.makedirs(path)
        self.created.append(path)
        return path

    def remove(self, directory):
        """Remove it."""
        shutil.rmtree(directory, ignore_errors=True)
        self.removed.append(directory)


class Source:
    """A peer that has some blobs (FETCH_BLOB), or fails with C{error}."""

    def __init__(self, name, blobs=None, error=None):
        self.name, self.blobs, self.error = name, blobs or {}, error
        self.asked = []
        self.pushed = []


class FakeOps:
    """The sandbox and transfer functions, over the fakes above."""

    def __init__(self):
        self.pulls = []
        self.pull_without_abort = False
        self.waiting = None
        self.place_error = None
        self.push_error = None

    def place_inputs(self, store, directory, inputs):
        """Copy each blob to directory/name (or fail as told)."""
        if self.place_error is not None:
            raise self.place_error
        for name, digest in inputs:
            path = os.path.join(directory, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(store.blobs[digest])

    def collect_outputs(self, directory, patterns, max_transfer):
        """Glob each pattern; a non-optional one matching nothing is the error."""
        found = set()
        for pattern, optional in patterns:
            matches = [m for m in glob.glob(pattern, root_dir=directory, recursive=True)]
            if not matches and not optional:
                return [], f"declared output {pattern!r} matched no file"
            found.update(matches)
        return [(m, os.path.realpath(os.path.join(directory, m))) for m in sorted(found)], None

    def pull(self, caller, writer):
        """Fetch the whole blob from the source (or wait, when told to)."""
        self.pulls.append((caller.name, writer.digest))
        caller.asked.append(writer.digest)
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            return d.addCallback(lambda _: self.pull(caller, writer))
        if caller.error is not None:
            if not self.pull_without_abort:
                writer.abort()  # as transfer.pull does on any failure
            return fail(caller.error)
        if writer.digest not in caller.blobs:
            writer.abort()
            return fail(LookupError(f"{caller.name} has no blob {writer.digest[:8]}"))
        writer.write(0, caller.blobs[writer.digest])
        writer.finish()
        return succeed(None)

    def push(self, caller, read, digest, size):
        """Send the blob (or fail as told)."""
        if self.push_error is not None:
            return fail(self.push_error)
        caller.pushed.append((digest, read(0, size)))
        return succeed(size)


class Inner:
    """The inner runner: records each assignment, runs C{work(cwd)}, answers C{status} (or waits)."""

    def __init__(self, work=None, status=SUCCEEDED):
        self.work = work
        self.status = status
        self.runs = []
        self.stopped = []
        self.hold = False
        self.pending = []

    def run(self, job, assignment):
        """Record, do the work, and end."""
        self.runs.append((job, assignment))
        if self.work is not None:
            self.work(assignment.task.cwd)
        result = TaskResult(task_id=assignment.task.id, attempt=assignment.attempt, status=self.status, node="w1")
        if self.hold:
            d = Deferred()
            self.pending.append((d, result))
            return d
        return succeed(result)

    def stop(self, job, assignment):
        """Record a stop."""
        self.stopped.append((job, assignment.task.id))

    def stop_all(self):
        """Record a stop of everything."""
        self.stopped.append("all")

    def settled(self):
        """Nothing signalled."""
        return succeed(None)


DATA = b"a,b\n1,2\n" * 1000
DIGEST = sha(DATA)


def task(inputs=(), outputs=(), cwd=None, task_id="t1"):
    """An assignment of a task with these inputs and outputs."""
    spec = TaskSpec(id=task_id, kind="w", command=("true",), cwd=cwd, inputs=tuple(inputs), outputs=tuple(outputs))
    return Assignment(task=spec, attempt=1)


def result_of(d):
    """The result a Deferred fired with (it must have)."""
    results = []
    d.addBoth(results.append)
    assert results, "the attempt did not end"
    return results[0]


class FileRunnerTests(SynchronousTestCase):
    """L{FileRunner}."""

    def setUp(self):
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.store = FakeStore()
        self.sandboxes = FakeSandboxes(os.path.join(self.root, "sandboxes"))
        self.leader = Source("m1", {DIGEST: DATA})
        self.other = Source("p2")
        self.sources = [self.leader, self.other]
        self.clock = Clock()
        self.push_target = self.leader
        self.ops = FakeOps()
        self.inner = Inner()

    def make(self, restricted=False):
        """The runner under test, over the fakes (C{restricted}: under a command policy)."""

        def push_to(job):
            if isinstance(self.push_target, Exception):
                raise self.push_target
            return self.push_target

        return FileRunner(
            self.inner,
            self.store,
            self.sandboxes,
            lambda job: list(self.sources),
            push_to,
            self.clock,
            synchronous,
            self.ops,
            name="w1",
            restricted=restricted,
        )

    def test_no_files_goes_straight_through(self):
        """A task without inputs or outputs reaches the inner runner as it is: no sandbox, no transfer."""
        assignment = task()
        result = result_of(self.make().run("j1", assignment))
        self.assertEqual(result.status, SUCCEEDED)
        self.assertIs(self.inner.runs[0][1], assignment)
        self.assertEqual(self.sandboxes.created, [])
        self.assertEqual(self.ops.pulls, [])

    def test_input_fetched_and_placed_in_a_sandbox(self):
        """A missing input is fetched, placed in a fresh sandbox, the task runs there, the sandbox goes."""
        seen = {}

        def work(cwd):
            with open(os.path.join(cwd, "data", "a.csv"), "rb") as f:
                seen["data"] = f.read()

        self.inner.work = work
        runner = self.make()
        result = result_of(runner.run("j1", task([InputFile("data/a.csv", DIGEST, len(DATA))])))
        self.assertEqual(result.status, SUCCEEDED)
        self.assertEqual(seen["data"], DATA)
        sandbox = self.sandboxes.created[0]
        self.assertEqual(self.inner.runs[0][1].task.cwd, sandbox)
        self.assertEqual(self.sandboxes.removed, [sandbox])
        self.assertFalse(os.path.exists(sandbox))
        self.assertEqual(self.ops.pulls, [("m1", DIGEST)])
        self.assertEqual((runner.counters.inputs_fetched, runner.counters.inputs_fetched_bytes), (1, len(DATA)))

    def test_inputs_pinned_from_fetch_until_placed(self):
        """
        An attempt's inputs are pinned in the cache while they are fetched and
        placed (a later fetch cannot evict them), and unpinned before the task
        runs, also when fetching fails.
        """
        pinned_while_running = []
        self.inner.work = lambda cwd: pinned_while_running.append(list(self.store.pinned))
        runner = self.make()
        result = result_of(runner.run("j1", task([InputFile("a.csv", DIGEST, len(DATA))])))
        self.assertEqual(result.status, SUCCEEDED)
        self.assertEqual(self.store.pins, [("pin", [DIGEST]), ("unpin", [DIGEST])])
        self.assertEqual(pinned_while_running, [[]])
        self.sources = []
        other = sha(b"other")
        result = result_of(self.make().run("j1", task([InputFile("b.csv", other, 5)])))
        self.assertEqual(result.status, ERROR)
        self.assertEqual(self.store.pins[2:], [("pin", [other]), ("unpin", [other])])
        self.assertEqual(self.store.pinned, [])

    def test_input_in_store_is_not_fetched(self):
        """An input the store has (this node leads the job, or ran it before) moves nothing."""
        self.store.blobs[DIGEST] = DATA
        runner = self.make()
        result = result_of(runner.run("j1", task([InputFile("a.csv", DIGEST, len(DATA))])))
        self.assertEqual(result.status, SUCCEEDED)
        self.assertEqual(self.ops.pulls, [])
        self.assertEqual((runner.counters.inputs_cached, runner.counters.inputs_fetched_bytes), (1, 0))

    def test_next_source_after_one_fails(self):
        """The leader first; when it cannot give the blob, the next peer is asked, and the failed writer aborted."""
        self.sources = [Source("m1", error=RuntimeError("connection lost")), Source("p2", {DIGEST: DATA})]
        result = result_of(self.make().run("j1", task([InputFile("a.csv", DIGEST, len(DATA))])))
        self.assertEqual(result.status, SUCCEEDED)
        self.assertEqual(self.ops.pulls, [("m1", DIGEST), ("p2", DIGEST)])
        self.assertEqual(self.store.blobs[DIGEST], DATA)

    def test_fetch_failure_is_one_clear_error(self):
        """No source gives the input: the attempt ends C{error}, naming input, digest, task and the last reason."""
        self.sources = [Source("m1", error=RuntimeError("connection lost"))]
        result = result_of(self.make().run("j1", task([InputFile("data/a.csv", DIGEST, len(DATA))])))
        self.assertEqual(result.status, ERROR)
        self.assertEqual(
            result.error, f"could not fetch input data/a.csv (sha256 {DIGEST[:8]}...) of task t1: connection lost"
        )
        self.assertEqual(self.inner.runs, [])
        self.assertEqual(self.sandboxes.created, [])

    def test_no_sources(self):
        """With no connected node to ask, the error says so."""
        self.sources = []
        result = result_of(self.make().run("j1", task([InputFile("a.csv", DIGEST, len(DATA))])))
        self.assertIn("no connected node to fetch it from", result.error)

    def test_oversize_input_refused(self):
        """An input over --max-transfer is refused before anything moves, with the store's reason."""
        self.store.max_transfer = 100
        result = result_of(self.make().run("j1", task([InputFile("a.csv", DIGEST, len(DATA))])))
        self.assertEqual(result.status, ERROR)
        self.assertIn("over --max-transfer (100)", result.error)
        self.assertEqual(self.ops.pulls, [])

    def test_same_blob_fetched_once(self):
        """Two attempts needing the same input at once share one fetch."""
        self.ops.waiting = Deferred()
        release = self.ops.waiting
        runner = self.make()
        inputs = [InputFile("a.csv", DIGEST, len(DATA))]
        first = runner.run("j1", task(inputs, task_id="t1"))
        second = runner.run("j1", task(inputs, task_id="t2"))
        release.callback(None)
        self.assertEqual([result_of(first).status, result_of(second).status], [SUCCEEDED, SUCCEEDED])
        self.assertEqual(len(self.ops.pulls), 2)  # the waiting pull, then its real one: one fetch in all
        self.assertEqual(runner.counters.inputs_fetched, 1)

    def test_outputs_collected_stored_and_pushed(self):
        """The matching outputs are stored (moved from the sandbox), pushed to the leader, and recorded."""

        def work(cwd):
            os.makedirs(os.path.join(cwd, "out"))
            for name, data in (("out/b.png", b"png" * 10), ("out/a.png", b"A"), ("report.txt", b"fine\n")):
                with open(os.path.join(cwd, name), "wb") as f:
                    f.write(data)

        self.inner.work = work
        runner = self.make()
        result = result_of(runner.run("j1", task(outputs=[OutputPattern("out/*.png"), OutputPattern("report.txt")])))
        self.assertEqual(result.status, SUCCEEDED)
        self.assertEqual(
            result.outputs,
            (
                OutputFile("out/a.png", 1, sha(b"A")),
                OutputFile("out/b.png", 30, sha(b"png" * 10)),
                OutputFile("report.txt", 5, sha(b"fine\n")),
            ),
        )
        self.assertEqual(
            self.leader.pushed, [(sha(b"A"), b"A"), (sha(b"png" * 10), b"png" * 10), (sha(b"fine\n"), b"fine\n")]
        )
        self.assertEqual([move for _, move in self.store.added], [True, True, True])
        self.assertEqual((runner.counters.outputs_sent, runner.counters.outputs_sent_bytes), (3, 36))

    def test_new_outputs_pinned_for_a_while(self):
        """
        Each output taken into the store is pinned at once (a later output of
        the same attempt cannot evict it before it is pushed and held) and
        unpinned L{FRESH_PIN} seconds later.
        """
        self.inner.work = lambda cwd: [open(os.path.join(cwd, n), "wb").write(n.encode()) for n in ("a", "b")]
        result = result_of(self.make().run("j1", task(outputs=[OutputPattern("*")])))
        self.assertEqual(result.status, SUCCEEDED)
        self.assertEqual(sorted(self.store.pinned), sorted([sha(b"a"), sha(b"b")]))
        self.clock.advance(FRESH_PIN - 1)
        self.assertEqual(len(self.store.pinned), 2)
        self.clock.advance(1)
        self.assertEqual(self.store.pinned, [])

    def test_one_file_under_two_names(self):
        """A file matched under two names (a symlink to it) is stored once and recorded under both; nothing fails."""

        def work(cwd):
            with open(os.path.join(cwd, "frame_9.png"), "wb") as f:
                f.write(b"frame")
            os.symlink("frame_9.png", os.path.join(cwd, "latest.png"))

        self.inner.work = work
        result = result_of(self.make().run("j1", task(outputs=[OutputPattern("*.png")])))
        self.assertEqual(result.status, SUCCEEDED, result.error)
        self.assertEqual(
            result.outputs, (OutputFile("frame_9.png", 5, sha(b"frame")), OutputFile("latest.png", 5, sha(b"frame")))
        )
        self.assertEqual(len(self.store.added), 1)

    def test_too_many_outputs_fail_in_one_line(self):
        """More output files than one result can list fail the attempt, saying how many and what to do."""
        self.inner.work = lambda cwd: [open(os.path.join(cwd, f"f{i:04}"), "wb").close() for i in range(1001)]
        result = result_of(self.make().run("j1", task(outputs=[OutputPattern("f*")])))
        self.assertEqual(result.status, FAILED)
        self.assertIn("matched 1,001 files, more than one result can list", result.error)
        self.assertEqual(len(result.error.splitlines()), 1)
        self.assertEqual((self.store.added, self.leader.pushed), ([], []))
        long_name = "x" * 200
        self.inner.work = lambda cwd: [open(os.path.join(cwd, f"{long_name}{i:03}"), "wb").close() for i in range(200)]
        result = result_of(self.make().run("j1", task(outputs=[OutputPattern("x*")])))
        self.assertEqual(result.status, FAILED)
        self.assertIn("matched 200 files", result.error)

    def test_failed_pull_leaves_the_abort_to_the_pull(self):
        """
        When a source fails, the runner does not abort the writer itself (the
        pull does, after its queued writes); it goes on to the next source.
        """
        aborted = []
        real_receive = self.store.receive

        def receive(digest, size):
            writer = real_receive(digest, size)
            writer.abort = lambda: aborted.append(digest)
            return writer

        self.store.receive = receive
        self.ops.pull_without_abort = True
        self.sources = [Source("m1", error=RuntimeError("connection lost")), Source("p2", {DIGEST: DATA})]
        result = result_of(self.make().run("j1", task([InputFile("a.csv", DIGEST, len(DATA))])))
        self.assertEqual(result.status, SUCCEEDED)
        self.assertEqual(aborted, [])

    def test_missing_output_fails_the_task(self):
        """A declared output matching nothing turns a succeeded attempt into failed, naming the pattern."""
        runner = self.make()
        result = result_of(runner.run("j1", task(outputs=[OutputPattern("report.txt")])))
        self.assertEqual(result.status, FAILED)
        self.assertEqual(result.error, "task t1: declared output 'report.txt' matched no file")
        self.assertEqual(runner.counters.file_errors, 1)

    def test_optional_output_may_be_missing(self):
        """An optional output that matches nothing is no failure."""
        result = result_of(self.make().run("j1", task(outputs=[OutputPattern("x.log", optional=True)])))
        self.assertEqual((result.status, result.outputs), (SUCCEEDED, ()))

    def test_failed_task_keeps_its_own_reason(self):
        """A task that failed by itself keeps its failure, not the missing-output one."""
        self.inner.status = FAILED
        result = result_of(self.make().run("j1", task(outputs=[OutputPattern("report.txt")])))
        self.assertEqual((result.status, result.error), (FAILED, None))

    def test_leader_is_this_node(self):
        """When this node leads the job (push_to gives None), outputs go to its store only."""
        self.push_target = None
        self.inner.work = lambda cwd: open(os.path.join(cwd, "r.txt"), "wb").close()
        result = result_of(self.make().run("j1", task(outputs=[OutputPattern("r.txt")])))
        self.assertEqual(result.outputs, (OutputFile("r.txt", 0, sha(b"")),))
        self.assertEqual(self.leader.pushed, [])

    def test_push_failure_is_an_error(self):
        """An output the leader refuses ends the attempt C{error}, naming the output and the reason."""
        self.ops.push_error = ValueError("size over --max-transfer")
        self.inner.work = lambda cwd: open(os.path.join(cwd, "r.txt"), "wb").close()
        result = result_of(self.make().run("j1", task(outputs=[OutputPattern("r.txt")])))
        self.assertEqual(result.status, ERROR)
        self.assertEqual(
            result.error, "task t1: could not send output r.txt to the job's master: size over --max-transfer"
        )

    def test_leader_unreachable(self):
        """A leader that cannot be reached for the outputs: C{error}, saying why."""
        self.push_target = LookupError("its master m1 is not connected to node w1")
        self.inner.work = lambda cwd: open(os.path.join(cwd, "r.txt"), "wb").close()
        result = result_of(self.make().run("j1", task(outputs=[OutputPattern("r.txt")])))
        self.assertEqual(result.status, ERROR)
        self.assertIn("its master m1 is not connected to node w1", result.error)

    def test_policy_keeps_inputs_in_the_sandbox(self):
        """
        Under --allow or --instructions a task with inputs and its own cwd is
        refused before anything is fetched or placed (its files could land in
        an allowed program's folder); without cwd it runs in a sandbox.
        """
        cwd = os.path.join(self.root, "allowed-tools")
        os.makedirs(cwd)
        spec = task([InputFile("tool", DIGEST, len(DATA))], cwd=cwd)
        result = result_of(self.make(restricted=True).run("j1", spec))
        self.assertEqual(result.status, ERROR)
        self.assertIn("refused by this node's command policy", result.error)
        self.assertIn("leave cwd out", result.error)
        self.assertEqual((os.listdir(cwd), self.ops.pulls, self.inner.runs), ([], [], []))
        result = result_of(self.make(restricted=True).run("j1", task([InputFile("tool", DIGEST, len(DATA))])))
        self.assertEqual(result.status, SUCCEEDED)
        # Outputs alone: a cwd of the task's choosing (~/.ssh, the state folder) would send back any file in it.
        secrets = os.path.join(self.root, "secrets")
        os.makedirs(secrets)
        with open(os.path.join(secrets, "id_rsa"), "wb") as f:
            f.write(b"key")
        result = result_of(self.make(restricted=True).run("j1", task(outputs=[OutputPattern("*")], cwd=secrets)))
        self.assertEqual(result.status, ERROR)
        self.assertIn("placed and collected only in a fresh sandbox", result.error)
        self.assertEqual((self.store.added, self.leader.pushed), ([], []))

    def test_task_cwd_is_used_and_kept(self):
        """A task that sets C{cwd} gets its inputs there; nothing is removed, and outputs are copied, not moved."""
        cwd = os.path.join(self.root, "mine")
        os.makedirs(cwd)
        self.store.blobs[DIGEST] = DATA
        self.inner.work = lambda d: open(os.path.join(d, "r.txt"), "wb").close()
        spec = task([InputFile("a.csv", DIGEST, len(DATA))], [OutputPattern("r.txt")], cwd=cwd)
        result = result_of(self.make().run("j1", spec))
        self.assertEqual(result.status, SUCCEEDED)
        self.assertEqual(self.sandboxes.created, [])
        self.assertEqual(self.sandboxes.removed, [])
        self.assertTrue(os.path.exists(os.path.join(cwd, "a.csv")))
        self.assertTrue(os.path.exists(os.path.join(cwd, "r.txt")))
        self.assertEqual(self.store.added, [("r.txt", False)])

    def test_path_refused(self):
        """An input that cannot be placed (a path refused) ends the attempt C{error}, naming why; nothing runs."""
        self.store.blobs[DIGEST] = DATA
        self.ops.place_error = ValueError("input '../x' climbs out of the sandbox")
        result = result_of(self.make().run("j1", task([InputFile("../x", DIGEST, len(DATA))])))
        self.assertEqual(result.status, ERROR)
        self.assertEqual(result.error, "could not place the inputs of task t1: input '../x' climbs out of the sandbox")
        self.assertEqual(self.inner.runs, [])
        self.assertEqual(len(self.sandboxes.removed), 1)

    def test_evicted_before_placed(self):
        """An input gone from the cache before it was placed says --cache-size is too small."""
        self.store.blobs[DIGEST] = DATA
        self.ops.place_error = KeyError(DIGEST)
        result = result_of(self.make().run("j1", task([InputFile("a.csv", DIGEST, len(DATA))])))
        self.assertIn("--cache-size is too small", result.error)

    def test_stopped_while_fetching_never_runs(self):
        """An attempt stopped while its inputs come never starts its process."""
        self.ops.waiting = Deferred()
        release = self.ops.waiting
        runner = self.make()
        assignment = task([InputFile("a.csv", DIGEST, len(DATA))])
        running = runner.run("j1", assignment)
        runner.stop("j1", assignment)
        release.callback(None)
        result = result_of(running)
        self.assertEqual(result.status, ERROR)
        self.assertIn("stopped it before it started", result.error)
        self.assertEqual(self.inner.runs, [])
        self.assertEqual(self.inner.stopped, [("j1", "t1")])

    def test_stop_while_running_goes_to_inner(self):
        """Once its process runs, a stop is the inner runner's; the result still arrives."""
        self.inner.hold = True
        self.store.blobs[DIGEST] = DATA
        runner = self.make()
        assignment = task([InputFile("a.csv", DIGEST, len(DATA))])
        running = runner.run("j1", assignment)
        runner.stop("j1", assignment)
        self.assertEqual(self.inner.stopped, [("j1", "t1")])
        d, result = self.inner.pending.pop()
        d.callback(result)
        self.assertEqual(result_of(running).status, SUCCEEDED)
