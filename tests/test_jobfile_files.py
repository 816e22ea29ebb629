"""
Tests for the files of a job file (L{p2pexec.jobfile}): inputs named as
local paths relative to the job file's folder or absolute, or with C{as};
outputs; both in C{[defaults]}; and the journal keeping a result's output
files (L{p2pexec.journal_schema}).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.job import Job
from p2pexec.jobfile import JobFileError, load_job_file, parse_job
from p2pexec.journal_schema import JOURNAL_FILE
from p2pexec.model import OutputFile, OutputPattern, TaskResult, TaskSpec
from tests.test_journal import JournalTestMixin


def sha256(data: bytes) -> str:
    """The hex SHA-256 of C{data}."""
    return hashlib.sha256(data).hexdigest()


class JobFileInputsTests(SynchronousTestCase):
    """Inputs and outputs in a job file."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "data"))
        self.write("data/a.csv", b"x,y\n1,2\n")
        self.elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(self.elsewhere)
        self.model = os.path.join(self.elsewhere, "model.bin")
        with open(self.model, "wb") as f:
            f.write(b"\0" * 3_000_000)

    def write(self, name: str, data: bytes) -> str:
        """Write C{data} to C{name} in the job file's folder; its path."""
        path = os.path.join(self.folder, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def load(self, text: str) -> list[TaskSpec]:
        """Load C{text} as the job file jobs.toml of the folder."""
        return load_job_file(self.write("jobs.toml", text.encode()))

    def test_relative_absolute_and_as(self) -> None:
        """A relative path is the job file's folder's; an absolute one lands as its base name; 'as' names it."""
        [spec] = self.load(
            f"""
            [[task]]
            id = "t1"
            command = ["true"]
            inputs = ["data/a.csv", "{self.model}", {{path = "data/a.csv", as = "in/b.csv"}}]
            outputs = ["out/*.png", {{glob = "x.log", optional = true}}]
            """
        )
        self.assertEqual([each.name for each in spec.inputs], ["data/a.csv", "model.bin", "in/b.csv"])
        self.assertEqual(spec.inputs[0].sha256, sha256(b"x,y\n1,2\n"))
        self.assertEqual((spec.inputs[1].sha256, spec.inputs[1].size), (sha256(b"\0" * 3_000_000), 3_000_000))
        self.assertEqual(spec.inputs[0].source, os.path.join(self.folder, "data", "a.csv"))
        self.assertEqual(spec.inputs[1].source, self.model)
        self.assertEqual(spec.outputs, (OutputPattern("out/*.png"), OutputPattern("x.log", optional=True)))

    def test_relative_to_the_job_file_not_the_current_folder(self) -> None:
        """A relative input is found beside the job file whatever the current folder is."""
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.elsewhere)
        [spec] = self.load('[[task]]\nid = "t1"\ncommand = ["true"]\ninputs = ["data/a.csv"]\n')
        self.assertEqual(spec.inputs[0].source, os.path.join(self.folder, "data", "a.csv"))

    def test_defaults(self) -> None:
        """Inputs and outputs in [defaults] apply to every task that does not set its own."""
        specs = self.load(
            """
            [defaults]
            command = ["true"]
            inputs = ["data/a.csv"]
            outputs = ["r.txt"]

            [[task]]
            id = "t1"

            [[task]]
            id = "t2"
            inputs = []
            outputs = ["s.txt"]
            """
        )
        self.assertEqual([len(spec.inputs) for spec in specs], [1, 0])
        self.assertEqual([spec.outputs for spec in specs], [(OutputPattern("r.txt"),), (OutputPattern("s.txt"),)])

    def test_missing_input(self) -> None:
        """A missing input is one error naming the job file, the task and the path."""
        with self.assertRaises(JobFileError) as raised:
            self.load('[[task]]\nid = "t1"\ncommand = ["true"]\ninputs = ["data/nope.csv"]\n')
        message = str(raised.exception)
        self.assertIn("jobs.toml: task #1 ('t1'): input 'data/nope.csv': cannot be read: No such file", message)
        self.assertIn(os.path.join(self.folder, "data", "nope.csv"), message)

    def test_bad_input_forms(self) -> None:
        """A table with unknown fields, a non-string path, or a name that climbs out is refused."""
        for inputs, fragment in [
            ('[{path = "data/a.csv", mode = 1}]', "unknown field(s) mode"),
            ("[{path = 3}]", "'path' and 'as' must be strings"),
            ('[{path = "data/a.csv", as = "../a"}]', "climbs out"),
            ('[""]', "is not a file name"),
            ('["data"]', "cannot be read"),
        ]:
            with self.assertRaises(JobFileError) as raised:
                self.load(f'[[task]]\nid = "t1"\ncommand = ["true"]\ninputs = {inputs}\n')
            self.assertIn(fragment, str(raised.exception))

    def test_wire_form_without_base(self) -> None:
        """A node taking a job (no base folder) takes inputs in wire form only: a local path is refused."""
        digest = sha256(b"")
        [spec] = parse_job({"task": [{"id": "t1", "inputs": [{"name": "a", "sha256": digest, "size": 0}]}]})
        self.assertEqual(spec.inputs[0].sha256, digest)
        with self.assertRaises(JobFileError) as raised:
            parse_job({"task": [{"id": "t1", "inputs": ["data/a.csv"]}]})
        self.assertIn("input #1 must be an object", str(raised.exception))

    def test_hashed_once(self) -> None:
        """A file shared by many tasks is read once."""
        read: list[str] = []
        import p2pexec.jobfile as jobfile

        real = jobfile.hash_file

        def counting(path: str) -> tuple[str, int]:
            read.append(path)
            return real(path)

        self.patch(jobfile, "hash_file", counting)
        tasks = [{"id": f"t{n}", "command": ["true"]} for n in range(50)]
        specs = parse_job({"defaults": {"inputs": ["data/a.csv"]}, "task": tasks}, base=self.folder)
        self.assertEqual(len(specs), 50)
        self.assertEqual(read, [os.path.join(self.folder, "data", "a.csv")])


class JournalOutputsTests(JournalTestMixin, SynchronousTestCase):
    """The journal keeps a result's output files."""

    def job(self) -> Job:
        """A job of two tasks, one with inputs and outputs."""
        files = TaskSpec.from_wire(
            {
                "id": "a",
                "kind": "sh",
                "command": ["true"],
                "inputs": [{"name": "in.csv", "sha256": "ab" * 32, "size": 4}],
                "outputs": ["out/*"],
            }
        )
        return Job("j", [files, TaskSpec.instruction("b1")], started=1.0)

    def test_round_trip(self) -> None:
        """A result's outputs and a task's inputs and outputs are read back after a restart."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        job = self.job()
        journal.job_added(job)
        result = TaskResult("a", 1, "succeeded", "w1", outputs=(OutputFile("out/x.png", 7, "cd" * 32),))
        job.assign("a", "w1")
        job.apply(result, 2.0, "w1")
        journal.task_changed(job.id, job.tasks["a"])
        self.clock.advance(0)
        journal = self.reopen(journal, state_dir)
        [stored] = journal.unfinished_jobs()
        self.assertEqual(stored.tasks[0].result, result)
        self.assertEqual(stored.tasks[0].result.outputs, result.outputs)
        self.assertEqual(stored.tasks[0].spec, job.tasks["a"].spec)

    def test_journal_without_the_column_gains_it(self) -> None:
        """A journal written before issue 16 (no result_outputs) is opened: old results have none, new ones keep them."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        job = Job("j", [TaskSpec.instruction("a1"), TaskSpec.instruction("b1")], started=5.0)
        journal.job_added(job)
        job.assign("a1", "w1")
        job.apply(TaskResult("a1", 1, "succeeded", "w1"), 6.0, "w1")
        journal.task_changed(job.id, job.tasks["a1"])
        self.clock.advance(0)
        self.close(journal)
        db = sqlite3.connect(os.path.join(state_dir, JOURNAL_FILE))
        db.execute("ALTER TABLE tasks DROP COLUMN result_outputs")
        db.commit()
        db.close()
        journal = self.open(state_dir)
        [stored] = journal.unfinished_jobs()
        self.assertEqual(stored.tasks[0].result, TaskResult("a1", 1, "succeeded", "w1"))
        later = TaskResult("b1", 1, "succeeded", "w1", outputs=(OutputFile("r.txt", 0, "ef" * 32),))
        job.assign("b1", "w1")
        job.apply(later, 8.0, "w1")
        journal.task_changed(job.id, job.tasks["b1"])
        self.clock.advance(0)
        journal = self.reopen(journal, state_dir)
        self.assertEqual(journal.unfinished_jobs()[0].tasks[1].result.outputs, later.outputs)
