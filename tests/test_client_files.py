"""
Tests for L{p2pexec.client.uploads} and L{p2pexec.client.fetching}, and
the C{p2pexec fetch} command and flags (L{p2pexec.cli.fetch}), with fake
transfers standing in for L{p2pexec.transfer} over a fake node.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.cli import parser
from p2pexec.cli.errors import CliError
from p2pexec.cli.fetch import fetch_into
from p2pexec.client import calls
from p2pexec.client.errors import ClientError, JobNotFound
from p2pexec.client.fetching import fetch_outputs
from p2pexec.client.uploads import Remote, UploadFailed, upload_inputs
from p2pexec.model import InputFile, TaskSpec
from tests.cli_doubles import FakeNode, Harness, task_entry

PIECE = 60_000


def sha256(data: bytes) -> str:
    """The hex SHA-256 of C{data}."""
    return hashlib.sha256(data).hexdigest()


class FakeBlobs:
    """
    A node's blobs and the transfer functions over them, counting PUT_BLOB
    and FETCH_BLOB pieces as L{p2pexec.transfer} would send them.
    """

    def __init__(self, blobs: dict[str, bytes] | None = None) -> None:
        self.blobs = dict(blobs or {})
        self.asked: list[list[str]] = []
        self.put_blobs = 0
        self.fetch_blobs = 0
        self.callers: list[Any] = []

    def missing(self, caller: Any, digests: list[str]) -> defer.Deferred[list[str]]:
        """HAVE_BLOBS."""
        self.callers.append(caller)
        self.asked.append(list(digests))
        return defer.succeed([digest for digest in digests if digest not in self.blobs])

    def push(self, caller: Any, read: Any, digest: str, size: int) -> defer.Deferred[int]:
        """PUT_BLOB pieces, read in order."""
        data = b""
        try:
            while len(data) < size or (size == 0 and self.put_blobs == 0 and not data):
                piece = read(len(data), PIECE)
                self.put_blobs += 1
                data += piece
                if not piece:
                    break
        except Exception:
            return defer.fail()
        if sha256(data) != digest:
            return defer.fail(ValueError(f"blob {digest[:12]} does not match: the file changed while sent?"))
        self.blobs[digest] = data
        return defer.succeed(size)

    def pull(self, caller: Any, writer: Any) -> defer.Deferred[None]:
        """FETCH_BLOB pieces into C{writer}, then finish it (abort it on failure)."""
        try:
            if writer.digest not in self.blobs:
                raise commands.BadArguments(f"no node this node can reach has blob {writer.digest[:12]}")
            data = self.blobs[writer.digest]
            for offset in range(0, len(data), PIECE):
                self.fetch_blobs += 1
                writer.write(offset, data[offset : offset + PIECE])
            writer.finish()
        except Exception:
            writer.abort()
            return defer.fail()
        return defer.succeed(None)


class UploadTests(SynchronousTestCase):
    """Sending a job's inputs."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.node = FakeNode({})

    def local(self, name: str, data: bytes) -> InputFile:
        """A local input file holding C{data}."""
        path = os.path.join(self.folder, name)
        with open(path, "wb") as f:
            f.write(data)
        return InputFile(name, sha256(data), len(data), source=path)

    def upload(self, blobs: FakeBlobs, tasks: list[TaskSpec]) -> Any:
        """Run L{upload_inputs} with C{blobs}' transfers; its result (or failure)."""
        d = defer.ensureDeferred(upload_inputs(self.node, tasks, blobs.missing, blobs.push))
        return self.successResultOf(d) if d.called and not isinstance(d.result, Exception) else d

    def test_sends_only_what_the_node_lacks(self) -> None:
        """Each digest is asked once; only those the node lacks go, in pieces; shared ones once."""
        big = self.local("big.bin", os.urandom(150_000))
        small = self.local("small.txt", b"hello")
        had = self.local("had.txt", b"already there")
        blobs = FakeBlobs({had.sha256: b"already there"})
        tasks = [
            TaskSpec(id="t1", kind="sh", inputs=(big, had)),
            TaskSpec(id="t2", kind="sh", inputs=(big, small)),
        ]
        self.assertEqual(self.upload(blobs, tasks), 2)
        self.assertEqual(blobs.asked, [[big.sha256, had.sha256, small.sha256]])
        self.assertEqual(blobs.put_blobs, 3 + 1)
        self.assertEqual(blobs.blobs[big.sha256], open(big.source or "", "rb").read())
        again = FakeBlobs(blobs.blobs)
        self.assertEqual(self.upload(again, tasks), 0)
        self.assertEqual(again.put_blobs, 0)

    def test_no_inputs_no_question(self) -> None:
        """Tasks without local inputs ask nothing (no transfer module needed)."""
        d = defer.ensureDeferred(upload_inputs(self.node, [TaskSpec(id="t1", kind="sh")]))
        self.assertEqual(self.successResultOf(d), 0)

    def test_changed_file(self) -> None:
        """
        A file that changed since it was hashed is one clear error: at once
        if its size changed, else once the node (which checks the SHA-256)
        refused it; the node keeps nothing.
        """
        same_size = self.local("a.bin", b"a" * 100_000)
        with open(same_size.source or "", "r+b") as f:
            f.write(b"b")
        shorter = self.local("b.bin", b"b" * 10)
        with open(shorter.source or "", "wb") as f:
            f.write(b"b")
        for file, fragment in [(same_size, "its SHA-256 is not the same"), (shorter, "it has 1 bytes now, 10")]:
            blobs = FakeBlobs()
            d = defer.ensureDeferred(
                upload_inputs(self.node, [TaskSpec(id="t1", kind="sh", inputs=(file,))], blobs.missing, blobs.push)
            )
            error = self.failureResultOf(d, UploadFailed).value
            self.assertIn(f"input {file.source} of task t1 changed since it was hashed", error.message)
            self.assertIn(fragment, error.message)
            self.assertNotIn(file.sha256, blobs.blobs)

    def test_changed_while_sent(self) -> None:
        """
        A file changed (same size) after its first piece went is refused by
        the node, which checks the SHA-256 (as a ClientError, the way the
        client's connection hands TRANSFER_REFUSED on); the client says the
        file changed, in one line.
        """
        file = self.local("a.bin", b"a" * 3 * PIECE)
        blobs = FakeBlobs()

        def push(caller: Any, read: Any, digest: str, size: int) -> defer.Deferred[int]:
            first = read(0, PIECE)
            with open(file.source or "", "r+b") as f:
                f.seek(2 * PIECE)
                f.write(b"b")
            data = first + read(PIECE, PIECE) + read(2 * PIECE, PIECE)
            if sha256(data) != digest:
                why = f"node at 127.0.0.1:1 refused: the bytes received for blob {digest[:12]} do not match"
                return defer.fail(ClientError(why))
            blobs.blobs[digest] = data
            return defer.succeed(size)

        d = defer.ensureDeferred(
            upload_inputs(self.node, [TaskSpec(id="t1", kind="sh", inputs=(file,))], blobs.missing, push)
        )
        self.assertEqual(
            self.failureResultOf(d, UploadFailed).value.message,
            f"input {file.source} of task t1 changed since it was hashed (its SHA-256 is not the same); "
            "submit the job again",
        )
        self.assertEqual(blobs.blobs, {})

    def test_refused_unchanged(self) -> None:
        """A node's refusal (a ClientError) of a file that did not change is reported with the node's reason."""
        file = self.local("a.bin", b"abc")

        def refuse(*args: Any) -> defer.Deferred[int]:
            return defer.fail(ClientError("node at 127.0.0.1:1: blob abc is over --max-transfer"))

        d = defer.ensureDeferred(
            upload_inputs(self.node, [TaskSpec(id="t1", kind="sh", inputs=(file,))], FakeBlobs().missing, refuse)
        )
        self.assertEqual(
            self.failureResultOf(d, UploadFailed).value.message,
            f"could not send input {file.source} of task t1: node at 127.0.0.1:1: blob abc is over --max-transfer",
        )

    def test_vanished_file(self) -> None:
        """A file removed since it was hashed is one clear error."""
        file = self.local("a.bin", b"abc")
        os.remove(file.source or "")
        blobs = FakeBlobs()
        d = defer.ensureDeferred(
            upload_inputs(self.node, [TaskSpec(id="t1", kind="sh", inputs=(file,))], blobs.missing, blobs.push)
        )
        self.assertIn("of task t1 cannot be read: No such file", self.failureResultOf(d, UploadFailed).value.message)

    def test_refused_by_the_node(self) -> None:
        """The node's refusal is one line naming the file and its reason."""
        file = self.local("a.bin", b"abc")

        def refuse(*args: Any) -> defer.Deferred[int]:
            return defer.fail(ValueError("size over --max-transfer"))

        d = defer.ensureDeferred(
            upload_inputs(self.node, [TaskSpec(id="t1", kind="sh", inputs=(file,))], FakeBlobs().missing, refuse)
        )
        message = self.failureResultOf(d, UploadFailed).value.message
        self.assertEqual(message, f"could not send input {file.source} of task t1: size over --max-transfer")

    def test_submit_uploads_first(self) -> None:
        """submit_tasks sends the missing inputs before SUBMIT_JOB."""
        file = self.local("a.bin", b"abc")
        blobs = FakeBlobs()
        order: list[str] = []
        from p2pexec import transfer

        def recorded(name: str) -> Any:
            def call(*args: Any) -> Any:
                order.append(name)
                return getattr(blobs, name)(*args)

            return call

        self.patch(transfer, "missing", recorded("missing"))
        self.patch(transfer, "push", recorded("push"))
        node = FakeNode({commands.SubmitJob: [{"upload": "u1", "job": "j1"}]})
        spec = TaskSpec(id="t1", kind="sh", inputs=(file,))
        d = defer.ensureDeferred(calls.submit_tasks(node, [spec]))
        self.assertEqual(self.successResultOf(d), "j1")
        self.assertEqual(order, ["missing", "push"])
        self.assertEqual(blobs.blobs, {file.sha256: b"abc"})
        self.assertEqual(node.sent(commands.SubmitJob)[0]["tasks"][0]["inputs"], [file.to_wire()])

    def test_remote_adapter(self) -> None:
        """Remote.callRemote sends through the client's call and fires with its answer."""
        node = FakeNode({commands.JobStatus: [{"status": {"id": "j"}}]})
        d = Remote(node).callRemote(commands.JobStatus, job="j")
        self.assertEqual(self.successResultOf(d), {"status": {"id": "j"}})
        self.assertEqual(node.sent(commands.JobStatus), [{"job": "j"}])


def outputs(*files: tuple[str, bytes]) -> list[dict[str, Any]]:
    """Output files' wire forms."""
    return [{"path": path, "size": len(data), "sha256": sha256(data)} for path, data in files]


class FetchTests(SynchronousTestCase):
    """Fetching a job's outputs, and the CLI's fetch."""

    def setUp(self) -> None:
        self.into = os.path.abspath(self.mktemp())
        self.png = os.urandom(130_000)
        self.blobs = FakeBlobs({sha256(b"report\n"): b"report\n", sha256(self.png): self.png, sha256(b""): b""})

    def node(self, tasks: list[dict[str, Any]]) -> FakeNode:
        """A node whose job has C{tasks}."""
        return FakeNode({commands.JobTasks: [{"tasks": tasks, "next": -1}]})

    def fetch(self, tasks: list[dict[str, Any]], job: str = "j1") -> Any:
        """L{fetch_outputs} of C{tasks} into C{self.into}; its summary."""
        d = defer.ensureDeferred(fetch_outputs(self.node(tasks), job, self.into, self.blobs.pull))
        return self.successResultOf(d)

    def read(self, *parts: str) -> bytes:
        """The bytes of a fetched file."""
        with open(os.path.join(self.into, *parts), "rb") as f:
            return f.read()

    def test_tree(self) -> None:
        """Every output lands in INTO/JOB/TASK/PATH, whole; no temporary file is left."""
        tasks = [
            task_entry("t1", outputs=outputs(("report.txt", b"report\n"), ("out/img/a.png", self.png))),
            task_entry("t2", outputs=outputs(("empty", b""))),
            task_entry("t3"),
        ]
        summary = self.fetch(tasks)
        self.assertEqual((summary.files, summary.bytes, summary.problems), (3, 7 + 130_000, []))
        self.assertEqual(self.read("j1", "t1", "report.txt"), b"report\n")
        self.assertEqual(self.read("j1", "t1", "out", "img", "a.png"), self.png)
        self.assertEqual(self.read("j1", "t2", "empty"), b"")
        self.assertEqual(sorted(os.listdir(os.path.join(self.into, "j1", "t1"))), ["out", "report.txt"])
        again = self.fetch(tasks)
        self.assertEqual((again.files, again.present), (0, 3))

    def test_refuses_climbing_paths(self) -> None:
        """A path that climbs out or is absolute is refused with one line; nothing lands outside."""
        tasks = [
            task_entry("t1", outputs=[{"path": "../../evil", "size": 1, "sha256": "ab" * 32}]),
            task_entry("t2", outputs=[{"path": "/etc/evil", "size": 1, "sha256": "ab" * 32}]),
            task_entry("..", outputs=outputs(("report.txt", b"report\n"))),
        ]
        summary = self.fetch(tasks)
        self.assertEqual(summary.files, 0)
        self.assertEqual(len(summary.problems), 3)
        self.assertIn("climbs out of its directory", summary.problems[0])
        self.assertIn("absolute path", summary.problems[1])
        self.assertIn("task id '..' cannot be a folder name", summary.problems[2])
        self.assertFalse(os.path.exists(os.path.join(self.into, "report.txt")))
        self.assertEqual(os.listdir(self.into), [])

    def test_never_follows_a_symlink(self) -> None:
        """A symbolic link below INTO (to a folder outside) is not followed: the output is refused."""
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.makedirs(os.path.join(self.into, "j1", "t1"))
        os.symlink(outside, os.path.join(self.into, "j1", "t1", "out"))
        summary = self.fetch([task_entry("t1", outputs=outputs(("out/report.txt", b"report\n")))])
        self.assertEqual(summary.files, 0)
        self.assertIn("'out' is a symbolic link or not a folder: not followed", summary.problems[0])
        self.assertEqual(os.listdir(outside), [])

    def test_link_in_place_of_the_file_replaced(self) -> None:
        """A symbolic link where the file goes is replaced by the file, its target left alone."""
        target = os.path.abspath(self.mktemp())
        with open(target, "wb") as f:
            f.write(b"precious")
        os.makedirs(os.path.join(self.into, "j1", "t1"))
        os.symlink(target, os.path.join(self.into, "j1", "t1", "report.txt"))
        summary = self.fetch([task_entry("t1", outputs=outputs(("report.txt", b"report\n")))])
        self.assertEqual(summary.files, 1)
        self.assertFalse(os.path.islink(os.path.join(self.into, "j1", "t1", "report.txt")))
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"precious")

    def test_bad_content_not_kept(self) -> None:
        """A blob whose content does not match the result's SHA-256 is not kept, nor its temporary file."""
        self.blobs.blobs[sha256(b"report\n")] = b"tampered"
        bad = [{"path": "report.txt", "size": 8, "sha256": sha256(b"report\n")}]
        summary = self.fetch([task_entry("t1", outputs=bad)])
        self.assertIn("its SHA-256 does not match", summary.problems[0])
        self.assertEqual(os.listdir(os.path.join(self.into, "j1", "t1")), [])

    def test_missing_blob(self) -> None:
        """A blob no node has is one line naming task and path; the other outputs are fetched."""
        tasks = [task_entry("t1", outputs=outputs(("gone.txt", b"nobody has it"), ("report.txt", b"report\n")))]
        summary = self.fetch(tasks)
        self.assertEqual(summary.files, 1)
        self.assertEqual(len(summary.problems), 1)
        self.assertIn("task t1: output gone.txt: could not fetch it: ", summary.problems[0])
        self.assertIn("no node this node can reach has blob", summary.problems[0])

    def test_bad_job_id(self) -> None:
        """A job id that cannot be a folder name is refused before anything is asked."""
        from p2pexec.client.fetching import PathRefused

        d = defer.ensureDeferred(fetch_outputs(self.node([]), "..", self.into, self.blobs.pull))
        self.failureResultOf(d, PathRefused)

    def run_fetch(self, tasks: list[dict[str, Any]] | Exception) -> tuple[Harness, Any]:
        """C{p2pexec fetch j1 --into INTO} over a harness; the harness and the Deferred of its status."""
        answer: Any = tasks if isinstance(tasks, Exception) else {"tasks": tasks, "next": -1}
        harness = Harness({commands.JobTasks: [answer]})
        d = defer.ensureDeferred(fetch_into(harness.context, "j1", self.into, self.blobs.pull))
        return harness, d

    def test_cli_exit_statuses(self) -> None:
        """0 when every file is there, 1 with a line per missing file, 2 (an error) for an unknown job."""
        harness, d = self.run_fetch([task_entry("t1", outputs=outputs(("report.txt", b"report\n")))])
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(harness.lines(), [f"job j1: 1 output file(s) fetched (7 bytes) into {self.into}/j1"])
        harness, d = self.run_fetch([task_entry("t1", outputs=outputs(("gone", b"x"), ("report.txt", b"report\n")))])
        self.assertEqual(self.successResultOf(d), 1)
        self.assertIn("1 already there; 1 could not be fetched", harness.lines()[0])
        [problem] = harness.stderr.getvalue().splitlines()
        self.assertTrue(problem.startswith("p2pexec: task t1: output gone: could not fetch it"))
        harness, d = self.run_fetch([task_entry("t1")])
        self.assertEqual(self.successResultOf(d), 0)
        self.assertIn("no output files to fetch", harness.lines()[0])
        harness, d = self.run_fetch(JobNotFound("unknown job: j1"))
        self.failureResultOf(d, JobNotFound)

    def test_cli_unusable_folder(self) -> None:
        """A folder that cannot be made is one line, exit 2."""
        with open(self.into, "w") as f:
            f.write("a file")
        _, d = self.run_fetch([task_entry("t1", outputs=outputs(("report.txt", b"report\n")))])
        error = self.failureResultOf(d, CliError).value
        self.assertEqual(error.status, 2)
        self.assertIn(f"cannot make or open the folder {self.into}", error.message)


class ParserTests(SynchronousTestCase):
    """The new flags and the fetch command on the command line."""

    def setUp(self) -> None:
        import io
        import sys

        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_fetch(self) -> None:
        """fetch JOB [--into DIR], DIR . by default."""
        self.assertEqual(parser.parse_arguments(["fetch", "j1"]).into, ".")
        args = parser.parse_arguments(["fetch", "--into", "res", "j1"])
        self.assertEqual((args.command, args.job, args.into), ("fetch", "j1", "res"))
        with self.assertRaises(SystemExit) as raised:
            parser.parse_arguments(["fetch"])
        self.assertEqual(raised.exception.code, 2)

    def test_submit_fetch_needs_wait(self) -> None:
        """submit --fetch needs --wait."""
        self.assertEqual(parser.parse_arguments(["submit", "--wait", "--fetch", "r", "j.toml"]).fetch, "r")
        with self.assertRaises(SystemExit) as raised:
            parser.parse_arguments(["submit", "--fetch", "r", "j.toml"])
        self.assertEqual(raised.exception.code, 2)
        self.assertIn("--fetch needs --wait", self.stderr.getvalue())

    def test_run_inputs_and_outputs(self) -> None:
        """run --input and --output are repeatable; every task gets them, inputs under their base names."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "data"))
        for name in ("data/a.csv", "b.bin"):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(name.encode())
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(folder)
        argv = ["run", "--kind", "sh", "--input", "data/a.csv", "--input", f"{folder}/b.bin"]
        args = parser.parse_arguments([*argv, "--output", "*.out", "--output", "log/x", "--", "cat", ":::", "1", "2"])
        from p2pexec.cli.commands import job_tasks_from

        tasks = job_tasks_from(args, None)  # type: ignore[arg-type]
        self.assertEqual([[each.name for each in task.inputs] for task in tasks], [["a.csv", "b.bin"]] * 2)
        self.assertEqual(tasks[0].inputs[0].sha256, sha256(b"data/a.csv"))
        self.assertEqual(tasks[1].inputs[1].source, os.path.join(folder, "b.bin"))
        self.assertEqual([each.glob for each in tasks[0].outputs], ["*.out", "log/x"])

    def test_run_missing_input(self) -> None:
        """A missing --input is one line (a CliError, exit 2) naming it."""
        from p2pexec.cli.commands import job_tasks_from

        args = parser.parse_arguments(["run", "--kind", "sh", "--input", "/nonexistent/x.csv", "--", "cat", ":::", "1"])
        with self.assertRaises(CliError) as raised:
            job_tasks_from(args, None)  # type: ignore[arg-type]
        self.assertEqual(raised.exception.status, 2)
        self.assertIn("input '/nonexistent/x.csv': cannot be read: No such file or directory", raised.exception.message)


class TaskObjectInputsTests(SynchronousTestCase):
    """The Python client reads the local files that task objects name (L{p2pexec.client.api})."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        with open(os.path.join(self.folder, "a.csv"), "wb") as f:
            f.write(b"1,2\n")
        here = os.getcwd()
        os.chdir(self.folder)
        self.addCleanup(os.chdir, here)

    def test_task_objects_read_relative_to_the_current_folder(self) -> None:
        """Task objects (with defaults applied) become TaskSpecs whose inputs are hashed from the current folder."""
        from p2pexec.client.api import _names_local_files, _with_inputs_read

        tasks = [{"id": "t1", "command": ["cat", "a.csv"], "inputs": ["a.csv"]}, {"id": "t2"}]
        self.assertTrue(_names_local_files(tasks, {"kind": "sh"}))
        self.assertFalse(_names_local_files([{"id": "t1"}], {"kind": "sh"}))
        self.assertTrue(_names_local_files([{"id": "t1"}], {"inputs": ["a.csv"]}))
        specs = _with_inputs_read(tasks, {"kind": "sh"})
        self.assertEqual([spec.kind for spec in specs], ["sh", "sh"])
        (item,) = specs[0].inputs
        self.assertEqual((item.name, item.size, item.sha256), ("a.csv", 4, hashlib.sha256(b"1,2\n").hexdigest()))
        self.assertEqual(item.source, os.path.join(self.folder, "a.csv"))

    def test_missing_file_and_mixed_tasks_refused(self) -> None:
        """A missing input is one JobRefused naming it; task objects with files mixed with TaskSpecs are refused."""
        from p2pexec.client.api import _with_inputs_read
        from p2pexec.client.errors import JobRefused

        error = self.assertRaises(
            JobRefused, _with_inputs_read, [{"id": "t1", "kind": "sh", "inputs": ["b.csv"]}], None
        )
        self.assertIn("'b.csv'", str(error))
        mixed = [{"id": "t1", "kind": "sh", "inputs": ["a.csv"]}, TaskSpec(id="t2", kind="sh")]
        error = self.assertRaises(JobRefused, _with_inputs_read, mixed, None)
        self.assertIn("not mixed", str(error))
