"""
Tests for L{p2pexec.sandbox} and L{p2pexec.safepaths}: the path rules
(relative, no C{..}, no NUL), where a submitted input lands, per-attempt
sandboxes (fresh, removed, swept), inputs placed without writing through a
symlink leading out, and outputs collected by glob with escapes, oversize
files and missing outputs each reported in one sentence.
"""

from __future__ import annotations

import hashlib
import os

from twisted.trial.unittest import TestCase

from p2pexec.blobs import BlobStore
from p2pexec.safepaths import safe_name
from p2pexec.sandbox import (
    MAX_MATCHES,
    PathRefused,
    Sandboxes,
    check_relative,
    collect_outputs,
    input_name,
    place_inputs,
)


class CheckRelativeTests(TestCase):
    """check_relative: relative paths that stay inside their directory."""

    def test_normalised(self) -> None:
        """A good path comes back normalised."""
        self.assertEqual(check_relative("data/./a.csv", "input"), "data/a.csv")
        self.assertEqual(check_relative("out//x/", "input"), "out/x")
        self.assertEqual(check_relative("a..b/..c", "input"), "a..b/..c")

    def test_refused(self) -> None:
        """Empty, absolute, '..' anywhere, NUL and '.' are refused with one sentence naming the path."""
        cases = {
            "": "input path is refused: it is empty.",
            "/etc/passwd": "input '/etc/passwd' is refused: it is an absolute path, and only relative paths are allowed.",
            "..": "input '..' is refused: it climbs out of its directory with '..'.",
            "a/../../b": "input 'a/../../b' is refused: it climbs out of its directory with '..'.",
            "a/../b": "input 'a/../b' is refused: it climbs out of its directory with '..'.",
            "a\0b": "input 'a\\x00b' is refused: it contains a NUL character.",
            "./.": "input './.' is refused: it names the directory itself, not a file.",
        }
        for path, message in cases.items():
            self.assertEqual(str(self.assertRaises(PathRefused, check_relative, path, "input")), message)


class InputNameTests(TestCase):
    """input_name: where a submitted input lands in the task's folder."""

    def test_relative_kept(self) -> None:
        """A relative path without '..' keeps its relative path."""
        self.assertEqual(input_name("data/a.csv"), "data/a.csv")

    def test_basename(self) -> None:
        """An absolute path, or one with '..', lands as its base name."""
        self.assertEqual(input_name("/abs/model.bin"), "model.bin")
        self.assertEqual(input_name("../shared/x.txt"), "x.txt")

    def test_nothing_left(self) -> None:
        """A path leaving no file name, or holding NUL, is refused."""
        for path in ("/", "..", "a\0"):
            self.assertRaises(PathRefused, input_name, path)


class SafeNameTests(TestCase):
    """safe_name: any name as one file name."""

    def test_plain_kept(self) -> None:
        """A plain job or task name is kept as it is."""
        self.assertEqual(safe_name("job-1:task_2.x"), "job-1:task_2.x")

    def test_encoded(self) -> None:
        """Names that could climb or hide are hex-encoded, long ones hashed; none has a slash."""
        self.assertEqual(safe_name(".."), "%2e2e")
        self.assertEqual(safe_name("a/b"), "%612f62")
        self.assertEqual(safe_name(""), "%")
        self.assertEqual(len(safe_name("x" * 1000)), 66)
        self.assertNotEqual(safe_name("x" * 1000), safe_name("x" * 1001))


class SandboxesTests(TestCase):
    """Per-attempt folders: fresh, removed afterwards, swept at start."""

    def setUp(self) -> None:
        """Sandboxes in a temporary folder."""
        self.root = os.path.abspath(self.mktemp())
        self.sandboxes = Sandboxes(self.root)

    def test_create_fresh(self) -> None:
        """Each attempt gets its own empty folder; creating it again empties it."""
        first = self.sandboxes.create("job1", "t1", 1)
        self.assertEqual(first, os.path.join(self.root, "job1", "t1", "1"))
        with open(os.path.join(first, "left"), "w") as f:
            f.write("x")
        self.assertEqual(os.listdir(self.sandboxes.create("job1", "t1", 1)), [])
        self.assertNotEqual(self.sandboxes.create("job1", "t1", 2), first)

    def test_odd_names_stay_inside(self) -> None:
        """Job and task names with '..' or slashes cannot put a sandbox outside the root."""
        directory = self.sandboxes.create("..", "../../x", 1)
        self.assertTrue(directory.startswith(self.root + os.sep))
        self.assertEqual(os.path.dirname(os.path.dirname(os.path.dirname(directory))), self.root)

    def test_remove(self) -> None:
        """Remove deletes the folder and its now-empty parents, keeps siblings, and never raises."""
        one = self.sandboxes.create("job", "t1", 1)
        two = self.sandboxes.create("job", "t2", 1)
        os.makedirs(os.path.join(one, "sub"))
        os.chmod(os.path.join(one, "sub"), 0o500)
        self.sandboxes.remove(one)
        self.assertFalse(os.path.exists(os.path.dirname(one)))
        self.assertTrue(os.path.isdir(two))
        self.sandboxes.remove(two)
        self.assertEqual(os.listdir(self.root), [])
        self.sandboxes.remove(two)

    def test_remove_keeps_symlink_targets(self) -> None:
        """A symlink in a sandbox is removed itself; what it points to stays."""
        outside = os.path.abspath(self.mktemp())
        os.mkdir(outside)
        with open(os.path.join(outside, "precious"), "w") as f:
            f.write("x")
        directory = self.sandboxes.create("job", "t", 1)
        os.symlink(outside, os.path.join(directory, "link"))
        self.sandboxes.remove(directory)
        self.assertEqual(os.listdir(outside), ["precious"])

    def test_swept_at_start(self) -> None:
        """Sandboxes left by a previous run are removed when the node starts."""
        self.sandboxes.create("job", "t", 1)
        with open(os.path.join(self.root, "stray"), "w") as f:
            f.write("x")
        Sandboxes(self.root)
        self.assertEqual(os.listdir(self.root), [])


class PlaceInputsTests(TestCase):
    """place_inputs copies blobs into the task's folder, never outside it."""

    def setUp(self) -> None:
        """A store holding one blob, and an empty task folder."""
        base = os.path.abspath(self.mktemp())
        self.store = BlobStore(os.path.join(base, "blobs"), 10_000, 10_000)
        self.data = b"input data"
        self.digest = hashlib.sha256(self.data).hexdigest()
        writer = self.store.receive(self.digest, len(self.data))
        writer.write(0, self.data)
        writer.finish()
        self.directory = os.path.join(base, "task")
        os.makedirs(self.directory)
        self.outside = os.path.join(base, "outside")
        os.makedirs(self.outside)

    def read(self, *parts: str) -> bytes:
        """The bytes of a file under the task folder."""
        with open(os.path.join(self.directory, *parts), "rb") as f:
            return f.read()

    def test_placed(self) -> None:
        """Inputs land at their names, parents created, as copies the task may change."""
        place_inputs(self.store, self.directory, [("data/a.csv", self.digest), ("b", self.digest)])
        self.assertEqual(self.read("data", "a.csv"), self.data)
        self.assertEqual(self.read("b"), self.data)
        with open(os.path.join(self.directory, "b"), "ab") as f:
            f.write(b"changed")
        self.assertEqual(self.store.read(self.digest, 0, 100), self.data)
        self.assertEqual(sorted(os.listdir(self.directory)), ["b", "data"])

    def test_absent_blob(self) -> None:
        """A blob the store lacks is a KeyError, raised before any folder is made for it."""
        self.assertRaises(KeyError, place_inputs, self.store, self.directory, [("sub/x", "0" * 64)])
        self.assertEqual(os.listdir(self.directory), [])

    def test_climbing_name(self) -> None:
        """A name with '..' or an absolute one is refused, nothing written outside."""
        for name in ("../escaped", "/tmp/escaped", "a/../../escaped"):
            self.assertRaises(PathRefused, place_inputs, self.store, self.directory, [(name, self.digest)])
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.directory), "escaped")))

    def test_symlinked_folder_leading_out(self) -> None:
        """A folder in a task's cwd that is a symlink leading out is refused, naming the input."""
        os.symlink(self.outside, os.path.join(self.directory, "data"))
        e = self.assertRaises(PathRefused, place_inputs, self.store, self.directory, [("data/sub/a.csv", self.digest)])
        self.assertEqual(
            str(e),
            f"input 'data/sub/a.csv' is refused: its folder 'data/sub' is a symlink leading out of {self.directory}.",
        )
        self.assertEqual(os.listdir(self.outside), [])

    def test_symlinked_folder_inside(self) -> None:
        """A symlink to a folder inside the task's folder is followed."""
        os.makedirs(os.path.join(self.directory, "real"))
        os.symlink("real", os.path.join(self.directory, "data"))
        place_inputs(self.store, self.directory, [("data/a.csv", self.digest)])
        self.assertEqual(self.read("real", "a.csv"), self.data)

    def test_symlinked_file_replaced_not_followed(self) -> None:
        """An input whose name is a symlink leading out replaces the link; the target is untouched."""
        target = os.path.join(self.outside, "victim")
        with open(target, "wb") as f:
            f.write(b"keep me")
        os.symlink(target, os.path.join(self.directory, "a.csv"))
        place_inputs(self.store, self.directory, [("a.csv", self.digest)])
        self.assertFalse(os.path.islink(os.path.join(self.directory, "a.csv")))
        self.assertEqual(self.read("a.csv"), self.data)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"keep me")

    def test_folder_in_the_way(self) -> None:
        """An input whose name is an existing folder is refused with one sentence."""
        os.makedirs(os.path.join(self.directory, "a"))
        e = self.assertRaises(PathRefused, place_inputs, self.store, self.directory, [("a", self.digest)])
        self.assertIn("cannot be placed", str(e))
        self.assertEqual(os.listdir(self.directory), ["a"])


class CollectOutputsTests(TestCase):
    """collect_outputs: declared globs to files, with one sentence for the first problem."""

    def setUp(self) -> None:
        """A task folder with some outputs, and a folder outside it."""
        base = os.path.abspath(self.mktemp())
        self.directory = os.path.join(base, "task")
        self.outside = os.path.join(base, "outside")
        os.makedirs(os.path.join(self.directory, "out", "deep"))
        os.makedirs(self.outside)
        for name in ("out/b.png", "out/a.png", "out/deep/c.png", "report.txt", "out/notes.txt"):
            self.write(name, b"x" * 10)
        with open(os.path.join(self.outside, "secret.png"), "wb") as f:
            f.write(b"secret")

    def write(self, name: str, data: bytes) -> None:
        """A file in the task folder."""
        with open(os.path.join(self.directory, name), "wb") as f:
            f.write(data)

    def collect(self, *patterns: str | tuple[str, bool], max_transfer: int = 100) -> tuple[list[str], str | None]:
        """Collect C{patterns} (a string is not optional); the relative paths and the error."""
        pairs = [(p, False) if isinstance(p, str) else p for p in patterns]
        files, error = collect_outputs(self.directory, pairs, max_transfer)
        for relative, real in files:
            self.assertEqual(real, os.path.realpath(os.path.join(self.directory, relative)))
        return [relative for relative, _real in files], error

    def test_globs(self) -> None:
        """Globs match regular files, '**' recursively, sorted and deduplicated; folders are skipped."""
        self.assertEqual(
            self.collect("out/*.png", "out/**/*.png", "report.txt", "out/*"),
            (["out/a.png", "out/b.png", "out/deep/c.png", "out/notes.txt", "report.txt"], None),
        )

    def test_missing_output(self) -> None:
        """A declared output matching nothing is a failure naming the pattern; the rest is still returned."""
        self.assertEqual(
            self.collect("report.txt", "missing.txt", "out/*.jpg"),
            (["report.txt"], "declared output 'missing.txt' matched no file."),
        )

    def test_optional_output(self) -> None:
        """An optional output matching nothing is no problem."""
        self.assertEqual(self.collect(("missing.txt", True), "report.txt"), (["report.txt"], None))

    def test_only_folders_match(self) -> None:
        """A pattern that matches only folders matched no file."""
        self.assertEqual(self.collect("out/deep"), ([], "declared output 'out/deep' matched no file."))

    def test_climbing_pattern(self) -> None:
        """A pattern that is absolute or has '..' is refused with one sentence."""
        self.assertEqual(
            self.collect("../outside/*.png"),
            ([], "output pattern '../outside/*.png' is refused: it climbs out of its directory with '..'."),
        )
        _files, error = self.collect(os.path.join(self.outside, "*.png"))
        self.assertIn("is refused: it is an absolute path", error or "")

    def test_symlink_file_leading_out(self) -> None:
        """A match that is a symlink to a file outside is refused and not returned."""
        os.symlink(os.path.join(self.outside, "secret.png"), os.path.join(self.directory, "out", "link.png"))
        self.assertEqual(
            self.collect("out/*.png"),
            (
                ["out/a.png", "out/b.png"],
                f"output 'out/link.png' is refused: it is a symlink leading out of {self.directory}.",
            ),
        )

    def test_symlink_folder_leading_out(self) -> None:
        """A pattern reaching into a symlinked folder that leads outside is refused, naming the link; nothing under it is read."""
        os.symlink(self.outside, os.path.join(self.directory, "escape"))
        files, error = self.collect("escape/*.png")
        self.assertEqual(files, [])
        self.assertEqual(error, f"output 'escape' is refused: it is a symlink leading out of {self.directory}.")
        # A pattern that cannot reach into it does not mind it.
        self.assertEqual(self.collect("out/*.png"), (["out/a.png", "out/b.png"], None))

    def test_symlink_loop_ends(self) -> None:
        """
        Symlinked folders looping back ('a -> .', 'b -> .') are walked once,
        so '**' ends (Python's glob explores about 2**40 paths here) and
        finds each file under its shortest name.
        """
        os.symlink(".", os.path.join(self.directory, "a"))
        os.symlink(".", os.path.join(self.directory, "b"))
        os.symlink("..", os.path.join(self.directory, "out", "up"))
        files, error = self.collect("**/*.png")
        self.assertEqual((files, error), (["out/a.png", "out/b.png", "out/deep/c.png"], None))

    def test_too_many_matches(self) -> None:
        """More than MAX_MATCHES files stop the walk, with one sentence saying what to do."""
        many = os.path.join(self.directory, "many")
        os.makedirs(many)
        for number in range(MAX_MATCHES + 1):
            open(os.path.join(many, str(number)), "wb").close()
        files, error = self.collect("many/*")
        self.assertEqual(len(files), MAX_MATCHES + 1)
        self.assertEqual(
            error,
            f"the output patterns matched more than {MAX_MATCHES:,} files; archive them into fewer files, or narrow the patterns.",
        )

    def test_hidden_files_need_a_dot(self) -> None:
        """As with glob, a wildcard does not match a name starting with a dot; '.*' does."""
        self.write(".hidden", b"h")
        self.assertEqual(self.collect("*.txt", (".h*", True))[0], [".hidden", "report.txt"])
        self.assertEqual(self.collect("*")[0], ["report.txt"])

    def test_symlink_inside(self) -> None:
        """A symlink to a file inside the folder is collected, with its real path."""
        os.symlink("report.txt", os.path.join(self.directory, "alias.txt"))
        files, error = collect_outputs(self.directory, [("alias.txt", False)], 100)
        self.assertEqual(
            (files, error), ([("alias.txt", os.path.realpath(os.path.join(self.directory, "report.txt")))], None)
        )

    def test_over_max_transfer(self) -> None:
        """A file over max_transfer is refused naming its size and the limit."""
        self.write("big.bin", b"x" * 101)
        self.assertEqual(
            self.collect("big.bin", "report.txt"),
            (["report.txt"], "output 'big.bin' is 101 bytes, over the --max-transfer limit of 100 bytes."),
        )

    def test_first_problem_kept(self) -> None:
        """With several problems, the first pattern's is reported."""
        self.assertEqual(self.collect("a.txt", "b.txt")[1], "declared output 'a.txt' matched no file.")
