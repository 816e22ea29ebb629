"""Tests for L{p2pexec.worker}: slots, batching and leaving."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec import worker as worker_module
from p2pexec.log import format_ids
from p2pexec.model import Assignment, TaskResult, TaskSpec
from p2pexec.testing.runner import FakeRunner
from p2pexec.worker import Worker


class RecordingSink:
    """An L{IResultSink} that records every batch delivered."""

    def __init__(self, key=("a1", "i-1")):
        self.key = key
        self.batches = []

    def deliver(self, job, results):
        """Record the batch: the job and each result's task ID, attempt and status."""
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

    def test_a_broken_runner_frees_the_slot_and_reports_an_error(self):
        """
        A runner that raises, or whose Deferred fails, instead of reporting
        how the task ended, costs no slot: the attempt ends as an C{error}
        result naming the problem, the failure is logged, and the next task
        starts.
        """
        runs = []

        def broken(job, assignment):
            runs.append(assignment.task.id)
            if assignment.task.id == "t1":
                raise RuntimeError("no such executor")
            return Deferred.fromCoroutine(self._fail("pipe gone"))

        self.runner.run = broken
        worker = Worker("w1", frozenset({"w"}), 1, self.runner, self.clock)
        with capturedLogs():
            worker.accept(self.sink, "j", [command_task("t1"), command_task("t2")])
            self.clock.advance(0)
        self.assertEqual(runs, ["t1", "t2"])
        self.assertEqual(worker.running, 0)
        self.assertEqual(
            [(task, status) for _, results in self.sink.batches for task, _, status in results],
            [("t1", "error"), ("t2", "error")],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError, ConnectionError)), 2)

    async def _fail(self, why):
        raise ConnectionError(why)

    def test_instruction_results_batched_per_turn(self):
        """Instructions that finish together go back as one batch, at the end of the turn."""
        self.worker.accept(
            self.sink, "j", [Assignment(task=TaskSpec.instruction(f"b{i}"), attempt=1) for i in range(3)]
        )
        self.assertEqual(self.sink.batches, [])
        self.clock.advance(0)
        self.assertEqual(
            self.sink.batches, [("j", [("b0", 1, "succeeded"), ("b1", 1, "succeeded"), ("b2", 1, "succeeded")])]
        )

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
        """Tasks stopped when draining times out are handed back (returned), not reported as failed."""
        self.worker.accept(self.sink, "j", [command_task("t1")])
        self.worker.stop_accepting()
        self.worker.stop_running()
        self.clock.advance(0)
        self.assertEqual(self.sink.batches, [("j", [("t1", 1, "returned")])])
        self.assertEqual(self.worker.query(self.sink, "j", [("t1", 1)])["unknown"], ["t1"], "not cached as a result")


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


class ResultCacheTests(SynchronousTestCase):
    """Finished results are kept until acknowledged, and answer a master that lost them."""

    def setUp(self):
        self.clock = Clock()
        self.runner = FakeRunner(self.clock, "w1", duration=1.0)
        self.worker = Worker("w1", frozenset({"w"}), 2, self.runner, self.clock)
        self.sink = RecordingSink(key=("m1", "instance-1"))

    def finish(self, *task_ids):
        """Run C{task_ids} (attempt 1) to their end; their results go to the sink."""
        self.worker.accept(self.sink, "j", [command_task(t) for t in task_ids])
        self.clock.advance(1.0)
        self.clock.advance(0)

    def test_same_attempt_assigned_again_is_answered_from_cache(self):
        """An attempt assigned again before its result was acknowledged is answered, not run again."""
        self.finish("t1")
        self.assertEqual(len(self.runner.runs), 1)
        restarted = RecordingSink(key=("m1", "instance-2"))
        self.worker.accept(restarted, "j", [command_task("t1")])
        self.clock.advance(0)
        self.assertEqual(len(self.runner.runs), 1, "the task did not run again")
        self.assertEqual(restarted.batches, [("j", [("t1", 1, "succeeded")])])
        self.assertEqual(self.worker.answered_from_cache, 1)

    def test_acknowledged_results_are_forgotten(self):
        """Once the master acknowledged a result, the same attempt assigned again runs again."""
        self.finish("t1")
        result = self.runner_result("t1")
        self.worker.acknowledged("m1", "j", [result])
        self.worker.accept(self.sink, "j", [command_task("t1")])
        self.clock.advance(1.0)
        self.assertEqual(len(self.runner.runs), 2)

    def runner_result(self, task_id):
        """The TaskResult the worker cached for C{task_id}, attempt 1."""
        return TaskResult(task_id=task_id, attempt=1, status="succeeded", node="w1")

    def test_query_sorts_attempts_and_resends_done_ones(self):
        """RESULT_QUERY: done ones come again from the cache, running and queued ones are named, others unknown."""
        self.finish("t1")
        self.worker.accept(self.sink, "j", [command_task(t) for t in ("t2", "t3", "t4")])
        restarted = RecordingSink(key=("m1", "instance-2"))
        answer = self.worker.query(restarted, "j", [("t1", 1), ("t2", 1), ("t4", 1), ("t9", 1), ("t1", 2)])
        self.assertEqual(answer, {"done": ["t1"], "running": ["t2", "t4"], "unknown": ["t9", "t1"]})
        self.clock.advance(0)
        self.assertEqual(restarted.batches, [("j", [("t1", 1, "succeeded")])])
        self.assertEqual(len(self.runner.runs), 3, "t1 did not run again; t2 and t3 run")

    def test_cache_is_bounded(self):
        """Past its bound the cache drops its oldest result, and says so."""
        self.patch(worker_module, "MAX_CACHED_RESULTS", 2)
        with capturedLogs() as events:
            self.finish("t1", "t2")
            self.finish("t3")
        self.assertEqual(self.worker.cache_evictions, 1)
        answer = self.worker.query(self.sink, "j", [("t1", 1), ("t2", 1), ("t3", 1)])
        self.assertEqual(answer["unknown"], ["t1"])
        self.assertTrue(any("dropped the unacknowledged result of t1" in e["log_format"].format(**e) for e in events))

    def test_cancel_drops_queue_and_stops_running_without_results(self):
        """Cancelling a job stops its running attempts, drops its queued ones, and sends none of their results."""
        self.worker.accept(self.sink, "j", [command_task(t) for t in ("t1", "t2", "t3")])
        self.worker.accept(self.sink, "other", [command_task("o1")])
        dropped, stopped = self.worker.cancel("m1", "j")
        self.assertEqual((dropped, stopped), (1, 2))
        self.assertEqual(sorted(key[1] for key in self.runner.stopped), ["t1", "t2"])
        self.clock.advance(0)
        self.clock.advance(0)
        self.clock.advance(1.0)
        self.clock.advance(0)
        sent = [task for job, batch in self.sink.batches for task, _, _ in batch]
        self.assertEqual(sent, ["o1"], "only the other job's task ran and reported")
        self.assertEqual(self.worker.query(self.sink, "j", [("t3", 1)])["unknown"], ["t3"])


class AttemptStateTests(SynchronousTestCase):
    """Each attempt's state is one field, stepped by the attempt machine (L{p2pexec.attempt_states})."""

    def setUp(self):
        self.clock = Clock()
        self.runner = FakeRunner(self.clock, "w1", duration=1.0)
        self.worker = Worker("w1", frozenset({"w"}), 1, self.runner, self.clock)
        self.sink = RecordingSink(key=("m1", "instance-1"))

    def state(self, task_id):
        """The state of attempt 1 of C{task_id} of job j, or None once forgotten."""
        return self.worker.state_of("m1", "j", task_id, 1)

    def test_life_of_an_attempt_for_another_master(self):
        """Queued, running, finished (its result waits for the batch), sent, then forgotten once acknowledged."""
        from p2pexec.attempt_states import AttemptState

        self.worker.accept(self.sink, "j", [command_task("t1"), command_task("t2")])
        self.assertEqual((self.state("t1"), self.state("t2")), (AttemptState.RUNNING, AttemptState.QUEUED))
        self.clock.advance(1.0)
        self.assertEqual(self.state("t1"), AttemptState.SENT)
        self.assertEqual(self.sink.batches, [("j", [("t1", 1, "succeeded")])])
        self.worker.acknowledged("m1", "j", [TaskResult(task_id="t1", attempt=1, status="succeeded", node="w1")])
        self.assertIsNone(self.state("t1"))

    def test_cancel_drops_a_result_waiting_for_its_batch(self):
        """A result that ended this turn and waits for its batch is not sent once its job is cancelled."""
        from p2pexec.attempt_states import AttemptState

        instruction = Assignment(task=TaskSpec(id="t1", kind="w"), attempt=1)
        self.worker.accept(self.sink, "j", [instruction])
        self.worker.accept(self.sink, "k", [Assignment(task=TaskSpec(id="u1", kind="w"), attempt=1)])
        self.assertEqual(self.state("t1"), AttemptState.FINISHED)
        self.assertEqual(self.worker.cancel("m1", "j"), (0, 0))
        self.assertIsNone(self.state("t1"))
        self.clock.advance(0)
        self.assertEqual(self.sink.batches, [("k", [("u1", 1, "succeeded")])])

    def test_stopped_while_leaving_then_cancelled_sends_nothing(self):
        """An attempt stopped because the node leaves, then cancelled, ends with nothing sent."""
        self.worker.accept(self.sink, "j", [command_task("t1")])
        self.worker.stop_accepting()
        self.worker.stop_running()
        self.worker.cancel("m1", "j")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.sink.batches, [])
        self.assertEqual((self.worker.running, self.worker.completed), (0, 1))
