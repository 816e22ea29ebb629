"""Tests for L{p2pexec.jobfile}: reading TOML job files."""

import os
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.jobfile import JobFileError, load_job_file, load_job_priority, parse_job
from p2pexec.resources import Request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
GIB = 1024**3


def doc_block(path: str, heading: str) -> str:
    """
    The first C{.. code-block::} of the section C{heading} in the reST file
    C{path}, dedented.

    @raise ValueError: if the section or its code block is not there.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index(heading)
    begin = next(i for i in range(start, len(lines)) if lines[i].startswith(".. code-block::")) + 1
    end = begin
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith("    ")):
        end += 1
    block = "\n".join(lines[begin:end]).strip("\n")
    if not block:
        raise ValueError(f"{path}: the code block of {heading!r} is empty")
    return textwrap.dedent(block) + "\n"


class JobFileTests(SynchronousTestCase):
    """L{load_job_file} and L{parse_job}."""

    def write(self, text):
        """Write C{text} to a new file and return its path."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertRefused(self, text, *parts):
        """Loading C{text} fails with a message containing every one of C{parts}."""
        path = self.write(text)
        with self.assertRaises(JobFileError) as caught:
            load_job_file(path)
        message = str(caught.exception)
        self.assertIn(path, message)
        for part in parts:
            self.assertIn(part, message)

    def test_defaults_apply(self):
        """[defaults] fill what a task leaves out; env tables merge."""
        tasks = load_job_file(
            self.write(
                '[defaults]\nkind = "sh"\ntimeout = 5\nenv = {A = "1", B = "2"}\n'
                '[[task]]\nid = "one"\ncommand = ["true"]\nenv = {B = "3"}\n'
                '[[task]]\nid = "two"\ncommand = "exit 0"\nshell = true\ntimeout = 9\n'
            )
        )
        self.assertEqual([(t.id, t.kind, t.timeout) for t in tasks], [("one", "sh", 5.0), ("two", "sh", 9.0)])
        self.assertEqual(dict(tasks[0].env), {"A": "1", "B": "3"})
        self.assertEqual(tasks[1].command, "exit 0")

    def test_kind_from_id(self):
        """Without a kind, a task's kind is the leading letters of its id."""
        tasks = load_job_file(self.write('[[task]]\nid = "b7"\n'))
        self.assertEqual((tasks[0].kind, tasks[0].command), ("b", None))

    def test_not_toml(self):
        """A syntax error names the file and says where."""
        self.assertRefused('[[task]\nid = "x"\n', "not valid TOML", "line")

    def test_not_utf8(self):
        """A file that is not UTF-8 is refused, naming the file and the first bad byte."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'[[task]]\nid = "caf\xe9"\n')
        with self.assertRaises(JobFileError) as caught:
            load_job_file(path)
        self.assertEqual(
            str(caught.exception), f"job file {path}: not UTF-8 text (byte 18 is 0xe9); TOML files are UTF-8"
        )

    def test_nested_too_deeply(self):
        """Arrays nested thousands deep are refused in one line, not a RecursionError."""
        self.assertRefused("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply")

    def test_missing_file(self):
        """A missing file is named with the reason."""
        with self.assertRaises(JobFileError) as caught:
            load_job_file("/nonexistent/job.toml")
        self.assertIn("/nonexistent/job.toml", str(caught.exception))

    def test_bad_field_named(self):
        """A bad field names the task (number and id) and the field."""
        self.assertRefused('[[task]]\nid = "t1"\ncommand = 42\n', "task #1", "'t1'", "'command'")

    def test_duplicate_ids(self):
        """Two tasks with one id are refused, naming both."""
        self.assertRefused('[[task]]\nid = "t"\n[[task]]\nid = "t"\n', "task #2", "task #1")

    def test_no_tasks(self):
        """A job file without tasks is refused."""
        self.assertRefused('[defaults]\nkind = "x"\n', "no [[task]]")

    def test_unknown_keys(self):
        """Misspelt top-level keys and defaults are refused, not ignored."""
        self.assertRefused('[[tasks]]\nid = "t"\n', "tasks")
        self.assertRefused('[defaults]\ncolor = "red"\n[[task]]\nid = "t"\n', "color")

    def test_oversized_task(self):
        """A task too large for one AMP value is refused."""
        tasks = [{"id": "t", "command": ["echo", "x" * 40_000]}]
        with self.assertRaises(JobFileError) as caught:
            parse_job({"task": tasks}, "big.toml")
        self.assertIn("over the", str(caught.exception))

    def test_example_loads(self):
        """The shipped examples/hello.toml is a valid job."""
        tasks = load_job_file(os.path.join(EXAMPLES, "hello.toml"))
        self.assertGreaterEqual(len(tasks), 5)

    def test_jobs_doc_complete_example(self):
        """
        docs/jobs.rst's "Everything together" example is a valid job file
        that uses priority, after, cpus, memory, gpus, resources, node and
        speculative, with the meaning the text around it gives them.
        """
        path = self.write(doc_block(os.path.join(ROOT, "docs", "jobs.rst"), "Everything together"))
        tasks = {task.id: task for task in load_job_file(path)}
        self.assertEqual(list(tasks), ["fetch", "compile", "unit-tests", "gpu-tests", "publish"])
        self.assertEqual(load_job_priority(path), 10)
        self.assertEqual(
            {task.id: task.after for task in tasks.values() if task.after},
            {
                "compile": ("fetch",),
                "unit-tests": ("compile",),
                "gpu-tests": ("compile",),
                "publish": ("unit-tests", "gpu-tests"),
            },
        )
        self.assertEqual({task.id: task.node for task in tasks.values() if task.node}, {"compile": "build1"})
        self.assertEqual(
            {task.id: task.request for task in tasks.values() if task.request},
            {
                "compile": Request(cpus=8, memory=16 * GIB),
                "unit-tests": Request(cpus=2, memory=4 * GIB),
                "gpu-tests": Request(memory=8 * GIB, gpus=1, named=(("licence", 1.0),)),
            },
        )
        self.assertEqual(sorted(task.id for task in tasks.values() if not task.speculative), ["fetch", "publish"])
        self.assertEqual({task.kind for task in tasks.values()}, {"build", "gpu"})
        self.assertEqual(
            {(task.retries, task.timeout, task.cwd) for task in tasks.values()}, {(1, 3600, "/shared/nightly")}
        )
