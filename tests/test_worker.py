"""Tests for L{p2pexec.worker}: slots, batching and leaving."""

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.model import Assignment, TaskSpec
from p2pexec.testing.runner import FakeRunner
from p2pexec.log import format_ids
from p2pexec.worker import Worker


class RecordingSink:
    """An L{IResultSink} that records every batch delivered."""

    def __init__(self, key=("a1", "i-1")):
        self.key = key
        self.batches = []

    def deliver(self, job, results):
        self.batches.append((job, [(r.task_id, r.attempt, r.status) for r in results]))


def command_task(task_id, attempt=1):
    """An assignment of a task with a command, of kind w."""
    return Assignment(task=TaskSpec(id=task_id, kind="w", command=("true",)), attempt=attempt)


class WorkerTests(SynchronousTestCase):
    """L{Worker}."""

    def setUp(self):
        self.clock = Clock()
        self.runner = FakeRunner(self.clock, "w1", duration=1.0)
        self.worker = Worker("w1", frozenset({"w", "b"}), 2, self.runner, self.clock)
        self.sink = RecordingSink()

    def test_at_most_slots_run(self):
        """Only C{slots} tasks run at once; the rest wait their turn."""
        self.worker.accept(self.sink, "j", [command_task(f"t{i}") for i in range(5)])
        self.assertEqual((self.worker.running, self.worker.queued), (2, 3))
        self.clock.advance(1.0)
        self.assertEqual((self.worker.running, self.worker.queued), (2, 1))
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual((self.worker.running, self.worker.queued), (0, 0))
        self.assertEqual(len(self.runner.runs), 5)

    def test_process_result_sent_before_next_start(self):
        """A process's result is sent at the end of its turn; the next queued task starts only after that."""
        started_when_sent = []
        deliver = self.sink.deliver

        def recording(job, results):
            started_when_sent.append(len(self.runner.runs))
            deliver(job, results)

        self.sink.deliver = recording
        self.worker.accept(self.sink, "j", [command_task("t1"), command_task("t2"), command_task("t3")])
        self.clock.advance(1.0)
        self.assertEqual(self.sink.batches, [("j", [("t1", 1, "succeeded"), ("t2", 1, "succeeded")])])
        self.assertEqual(started_when_sent, [2], "t3 had not started when t1's and t2's results went out")
        self.assertEqual(len(self.runner.runs), 3, "t3 started after that")

    def test_instruction_results_batched_per_turn(self):
        """Instructions that finish together go back as one batch, at the end of the turn."""
        self.worker.accept(
            self.sink, "j", [Assignment(task=TaskSpec.instruction(f"b{i}"), attempt=1) for i in range(3)]
        )
        self.assertEqual(self.sink.batches, [])
        self.clock.advance(0)
        self.assertEqual(self.sink.batches, [("j", [("b0", 1, "succeeded"), ("b1", 1, "succeeded"), ("b2", 1, "succeeded")])])

    def test_instruction_runs_and_logs_original_lines(self):
        """An instruction without a command succeeds, with the original's log lines."""
        with capturedLogs() as events:
            self.worker.accept(self.sink, "j", [Assignment(task=TaskSpec.instruction("b1"), attempt=1)])
            self.clock.advance(0)
        lines = [e["log_format"].format(**e) for e in events]
        self.assertIn("Node w1 received instructions: ['b1']", lines)
        self.assertIn("Node w1 executing: b1", lines)
        self.assertEqual(self.sink.batches, [("j", [("b1", 1, "succeeded")])])
        self.assertEqual(self.runner.runs, [], "no process for an instruction")

    def test_not_capable_refuses_whole_batch(self):
        """A batch with a kind this node does not run is refused whole, naming the kind."""
        bad = Assignment(task=TaskSpec.instruction("z1"), attempt=1)
        with self.assertRaises(commands.NotCapable) as caught:
            self.worker.accept(self.sink, "j", [command_task("t1"), bad])
        self.assertIn("z", str(caught.exception))
        self.assertEqual(self.worker.queued + self.worker.running, 0)

    def test_stop_accepting_hands_back_queue(self):
        """A leaving worker hands back what waits, at once, and refuses new tasks."""
        self.worker.accept(self.sink, "j", [command_task(f"t{i}") for i in range(4)])
        self.assertEqual(self.worker.stop_accepting(), 2)
        self.assertEqual(self.sink.batches, [("j", [("t2", 1, "returned"), ("t3", 1, "returned")])])
        self.assertRaises(commands.ShuttingDown, self.worker.accept, self.sink, "j", [command_task("x")])
        self.assertEqual(self.worker.running, 2)

    def test_when_idle(self):
        """when_idle fires once the running tasks are done."""
        self.worker.accept(self.sink, "j", [command_task("t1")])
        idle = self.worker.when_idle()
        self.assertNoResult(idle)
        self.clock.advance(1.0)
        self.successResultOf(idle)

    def test_drop_from_master(self):
        """Queued tasks of a master that went away are dropped; others stay."""
        other = RecordingSink(key=("m2", "i-2"))
        self.worker.accept(self.sink, "j", [command_task(f"t{i}") for i in range(3)])
        self.worker.accept(other, "k", [command_task("u1")])
        self.assertEqual(self.worker.drop_from(("a1", "i-1")), 1)
        self.assertEqual(self.worker.queued, 1)

    def test_stop_running(self):
        """Stopping the running tasks reports them as failed attempts."""
        self.worker.accept(self.sink, "j", [command_task("t1")])
        self.worker.stop_running()
        self.clock.advance(0)
        self.assertEqual(self.sink.batches, [("j", [("t1", 1, "failed")])])


class FormatIdsTests(SynchronousTestCase):
    """The task-id list in log lines."""

    def test_short_list_like_original(self):
        """A short list prints exactly like the original's Python list."""
        self.assertEqual(format_ids(["b1"]), "['b1']")

    def test_long_list_shortened(self):
        """A long list is cut, with a count of the rest."""
        text = format_ids([f"t{i}" for i in range(1000)])
        self.assertTrue(text.endswith("(+980 more)"))
        self.assertLess(len(text), 250)


class BurstTests(SynchronousTestCase):
    """Large bursts of instant tasks."""

    def test_long_queue_of_instructions(self):
        """Thousands of instructions on one slot run in a loop, not by recursion, with one log line per burst."""
        clock = Clock()
        worker = Worker("w1", frozenset({"b"}), 1, FakeRunner(clock, "w1"), clock)
        sink = RecordingSink()
        with capturedLogs() as events:
            worker.accept(sink, "j", [Assignment(task=TaskSpec.instruction(f"b{i}"), attempt=1) for i in range(5000)])
            clock.advance(0)
        self.assertEqual(sum(len(batch) for _, batch in sink.batches), 5000)
        executing = [e for e in events if "executing" in e["log_format"]]
        self.assertEqual(len(executing), 1)
        self.assertEqual(executing[0]["count"], 5000)
