"""
Rate-proportional handout and backup copies (issue 15, no slow-node tail),
on whole nodes over the in-memory network: a fast worker (4 slots) and a
slow one (1 slot), each with a L{FakeRunner} of its own task duration.
"""

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.model import TaskSpec
from p2pexec.pacing import Pace
from p2pexec.resources import NodeResources, Request
from tests.test_node import Cluster

GIB = 1024**3
"""A gibibyte."""


def tasks(count, speculative=True):
    """C{count} tasks of kind w running a command (instructions are never backed up)."""
    return tuple(TaskSpec(id=f"w{i}", kind="w", command=("true",), speculative=speculative) for i in range(count))


def slow_and_fast(count, fast=0.2, slow=1.0, speculative=True):
    """A master m1 of C{count} tasks, fast worker f1 (4 slots, C{fast} s a task) and slow s1 (1 slot, C{slow} s)."""
    cluster = Cluster()
    cluster.add_master(tasks(count, speculative))
    cluster.add("f1", capabilities=frozenset({"w"}), slots=4, duration=fast)
    cluster.add("s1", capabilities=frozenset({"w"}), slots=1, duration=slow)
    return cluster


def finish(cluster):
    """Run until m1's job finished; return it."""
    master = cluster.nodes["m1"]
    cluster.network.run_until(lambda: master.initial_job.called, limit=120)
    return master.initial_job.result


class PaceTests(SynchronousTestCase):
    """L{Pace}: what a worker's measured rate gives it."""

    def test_unknown_pace_gets_twice_the_slots(self):
        """Before any result, a worker is given twice its slots: its first result sets its pace."""
        self.assertEqual(Pace().window(4), 8)

    def test_slow_tasks_get_no_queue_and_fast_ones_a_deep_one(self):
        """Tasks longer than the horizon per slot get the slots; instant ones up to the prefetch cap."""
        slow, fast = Pace(), Pace()
        slow.record(1.0, "w")
        fast.record(0.001, "w")
        self.assertEqual(slow.window(1), 1)
        self.assertEqual(fast.window(2), 2 + 100)

    def test_per_kind_moving_average(self):
        """Each kind keeps its own average; a time that is not finite or negative is ignored."""
        pace = Pace()
        pace.record(1.0, "a")
        pace.record(2.0, "a")
        pace.record(float("nan"), "a")
        pace.record(-1.0, "b")
        pace.record(0.5, "b")
        self.assertAlmostEqual(pace.expected("a"), 1.2)
        self.assertEqual(pace.expected("b"), 0.5)
        self.assertIsNone(pace.expected("c"))


class SlowNodeTests(SynchronousTestCase):
    """A slow node is given work in proportion to its rate, and does not hold up the job's end."""

    def test_slow_node_gets_proportionally_fewer(self):
        """
        60 tasks, f1 finishes 20 a second and s1 one: s1 runs about 1/21 of
        them, and the job ends close to the ideal balance (60/21 s), not
        seconds later with s1 still working through a queue.
        """
        cluster = slow_and_fast(60)
        job = finish(cluster)
        self.assertEqual(job.succeeded, 60)
        # Pacing alone balances it: once its pace is known, s1 is handed no task to queue.
        self.assertLessEqual(len(cluster.runners["s1"].runs), 3)
        self.assertEqual(cluster.nodes["m1"].master.speculation.launched, 0)
        self.assertLessEqual(job.finished - job.started, 1.15 * 60 / 21 + 0.3)

    def test_tail_is_cut_by_a_backup_and_the_loser_is_cancelled(self):
        """
        s1 (10x slower, as its first result showed) holds the last running
        task when f1 runs out of work: a backup on f1 finishes it; s1's copy
        is stopped, and the task has exactly one result, f1's.
        """
        cluster = slow_and_fast(46, fast=0.2, slow=2.0)
        master = cluster.nodes["m1"]
        job = finish(cluster)
        self.assertLess(job.finished - job.started, 3.0, "the job did not wait for s1's second task (until 4 s)")
        self.assertEqual(master.master.speculation.launched, 1)
        slow_runs = cluster.runners["s1"].runs
        self.assertEqual(len(slow_runs), 2)
        self.assertEqual(cluster.runners["s1"].stopped, slow_runs[1:], "the losing copy was stopped")
        backed_up = slow_runs[1][1]
        fast_copies = [key for key in cluster.runners["f1"].runs if key[1] == backed_up]
        self.assertEqual(len(fast_copies), 1)
        self.assertEqual((job.succeeded, job.failed), (46, 0))
        record = job.tasks[backed_up]
        self.assertEqual((record.result.node, record.result.attempt), ("f1", 2))
        self.assertEqual(master.master.speculation.copies, {})
        self.assertEqual(master.master.outstanding(), {"f1": 0, "s1": 0})

    def test_original_copy_winning_stops_the_backup(self):
        """
        When the running copy ends before its backup, its result is the
        task's (one result, under the newest attempt number) and the backup
        is stopped.
        """
        cluster = slow_and_fast(46, fast=0.2, slow=2.0)
        master = cluster.nodes["m1"].master
        runner = cluster.runners["f1"]
        plain_run = runner.run

        def run(job, assignment):
            # A second attempt (the backup) takes f1 60 s: s1's copy ends first.
            runner._duration = 60.0 if assignment.attempt > 1 else 0.2
            try:
                return plain_run(job, assignment)
            finally:
                runner._duration = 0.2

        runner.run = run
        job = finish(cluster)
        backed_up = cluster.runners["s1"].runs[1][1]
        record = job.tasks[backed_up]
        self.assertEqual((job.succeeded, job.failed), (46, 0))
        self.assertEqual((record.result.node, record.result.attempt), ("s1", 2))
        self.assertEqual(master.speculation.launched, 1)
        self.assertEqual(cluster.runners["s1"].stopped, [])
        self.assertEqual(cluster.runners["f1"].stopped, [(job.id, backed_up, 2)])
        self.assertEqual(master.speculation.copies, {})
        self.assertEqual(master.outstanding(), {"f1": 0, "s1": 0})

    def test_speculative_false_never_gets_a_backup(self):
        """A task with speculative = false runs once, on s1, however long it takes there."""
        cluster = slow_and_fast(46, fast=0.2, slow=2.0, speculative=False)
        job = finish(cluster)
        self.assertEqual(cluster.nodes["m1"].master.speculation.launched, 0)
        self.assertEqual(cluster.runners["s1"].stopped, [])
        ran = [key[1] for runner in cluster.runners.values() for key in runner.runs]
        self.assertEqual(sorted(ran), sorted(set(ran)), "no task started twice")
        self.assertGreaterEqual(job.finished - job.started, 4.0)


class BackupResourcesTests(SynchronousTestCase):
    """A backup copy respects what the task asks for (issue 15's resources), as any assignment does."""

    def test_no_backup_on_a_node_too_small_for_the_task(self):
        """
        The last task asks for 4 CPUs, which only the slow node s1 has: when
        it runs there and f1 is idle, no backup goes to f1 (2 CPUs), which
        would refuse it; the task runs once, on s1.
        """
        specs = tasks(45) + (TaskSpec(id="big", kind="w", command=("true",), request=Request(cpus=4)),)
        cluster = Cluster()
        cluster.add_master(specs)
        cluster.add("f1", capabilities=frozenset({"w"}), slots=4, duration=0.2, resources=NodeResources(2.0, GIB))
        cluster.add("s1", capabilities=frozenset({"w"}), slots=1, duration=2.0, resources=NodeResources(4.0, GIB))
        job = finish(cluster)
        self.assertEqual((job.succeeded, job.failed), (46, 0))
        self.assertEqual(job.tasks["big"].result.node, "s1")
        self.assertEqual(cluster.nodes["m1"].master.speculation.launched, 0)
        self.assertNotIn("big", [key[1] for key in cluster.runners["f1"].runs])
