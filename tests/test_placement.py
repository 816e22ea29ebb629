"""
Where a task runs (L{p2pexec.placement}): C{node = "b1"} pins a task to one
node, which it waits for; C{all_nodes = true} runs it once on every node
that runs its kind.  On the in-memory network, and the scheduler alone.
"""

from __future__ import annotations

from collections import deque

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.model import Assignment, TaskSpec, ValidationError
from p2pexec.scheduler import WorkerCapacity, plan

from .test_node import Cluster, text
from .test_rerun import ended, submit


def workers_cluster(*names: str) -> Cluster:
    """m1 (runs nothing) and workers of kind w called C{names}, connected to it."""
    cluster = Cluster()
    cluster.add("m1", capabilities=frozenset(), port=10001)
    for i, name in enumerate(names):
        cluster.add(name, port=10002 + i, capabilities=frozenset({"w"}))
    cluster.network.run_until(lambda: all(cluster.connected("m1", name) for name in names), limit=30)
    return cluster


class PinnedTests(SynchronousTestCase):
    """A task with a node runs there only, and waits for it."""

    def test_waits_for_its_node_then_runs_there(self) -> None:
        """
        Pinned to w2, which is absent: the task waits (w1 could run it, but
        does not), with one log line naming the task and the node however
        long it waits; once w2 joins it runs there.
        """
        cluster = workers_cluster("w1")
        with capturedLogs() as events:
            job_id = submit(cluster, "m1", [{"id": "p", "kind": "w", "command": ["true"], "node": "w2"}])
            cluster.network.run(20.0)
        self.assertEqual(cluster.runners["w1"].runs, [])
        lines = [text(e) for e in events if "run only on node" in e["log_format"]]
        self.assertEqual(
            lines,
            [
                "Node m1 has 1 task(s) that run only on node w2 waiting: w2 is not connected; they run when it can "
                "take them: ['p']"
            ],
        )
        cluster.add("w2", port=10003, capabilities=frozenset({"w"}))
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        result = cluster.nodes["m1"].master.jobs[job_id].tasks["p"].result
        self.assertEqual((result.status, result.node), ("succeeded", "w2"))

    def test_other_tasks_go_on(self) -> None:
        """Tasks without a node run on any worker while a pinned one waits."""
        cluster = workers_cluster("w1")
        job_id = submit(
            cluster,
            "m1",
            [{"id": "p", "kind": "w", "node": "w9"}, {"id": "a", "kind": "w"}, {"id": "b", "kind": "w"}],
        )
        cluster.network.run(3.0)
        tasks = cluster.nodes["m1"].master.jobs[job_id].tasks
        self.assertEqual([tasks[t].result.node for t in ("a", "b")], ["w1", "w1"])
        self.assertIsNone(tasks["p"].result)
        self.assertEqual(cluster.nodes["m1"].master.pending_count(), 1)

    def test_node_name_checked(self) -> None:
        """A node no node could be called is refused, naming the field."""
        error = self.assertRaises(ValidationError, TaskSpec.from_wire, {"id": "p", "kind": "w", "node": "no such/node"})
        self.assertIn("task 'p': 'node' (a node name) must be 1-64 characters", str(error))
        self.assertRaises(
            ValidationError, TaskSpec.from_wire, {"id": "p", "kind": "w", "node": "w1", "all_nodes": True}
        )

    def test_assignment_leaves_the_node_out(self) -> None:
        """A worker is not told the node (an older worker would refuse the field)."""
        spec = TaskSpec.from_wire({"id": "p", "kind": "w", "node": "w1"})
        self.assertEqual(spec.to_wire()["node"], "w1")
        self.assertNotIn("node", Assignment(spec, 1).to_wire())


class AllNodesTests(SynchronousTestCase):
    """A task with all_nodes runs once on every live node that runs its kind."""

    def test_one_task_per_node(self) -> None:
        """Three workers: the task becomes hi@w1, hi@w2, hi@w3, each run on its node."""
        cluster = workers_cluster("w1", "w2", "w3")
        job_id = submit(cluster, "m1", [{"id": "hi", "kind": "w", "command": ["true"], "all_nodes": True}])
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        tasks = cluster.nodes["m1"].master.jobs[job_id].tasks
        self.assertEqual(sorted(tasks), ["hi@w1", "hi@w2", "hi@w3"])
        self.assertEqual(
            {task_id: record.result.node for task_id, record in tasks.items()},
            {"hi@w1": "w1", "hi@w2": "w2", "hi@w3": "w3"},
        )

    def test_no_capable_node(self) -> None:
        """Nobody runs the kind: the task stays one task, waiting, with a log line saying so."""
        cluster = workers_cluster("w1")
        with capturedLogs() as events:
            job_id = submit(cluster, "m1", [{"id": "hi", "kind": "z", "all_nodes": True}])
        tasks = cluster.nodes["m1"].master.jobs[job_id].tasks
        self.assertEqual(list(tasks), ["hi"])
        self.assertIsNone(tasks["hi"].spec.node)
        lines = [text(e) for e in events if "all_nodes" in e["log_format"]]
        self.assertEqual(len(lines), 1)
        self.assertIn("no connected node runs kind 'z', so task hi (all_nodes) waits as one task", lines[0])

    def test_copy_id_taken(self) -> None:
        """A copy whose id another task has is refused as a bad job."""
        cluster = workers_cluster("w1")
        error = self.assertRaises(
            commands.BadJob,
            cluster.nodes["m1"].submit,
            [{"id": "hi", "kind": "w", "all_nodes": True}, {"id": "hi@w1", "kind": "w"}],
        )
        self.assertIn("would be named 'hi@w1', which another task of the job already is", str(error))


class PlanTests(SynchronousTestCase):
    """The scheduler serves pinned queues by their node alone."""

    def test_pinned_queue(self) -> None:
        """A pinned queue goes to its node only, within its free slots; an absent node is listed."""
        queue: deque[str] = deque(["p1", "p2", "p3"])
        gone: deque[str] = deque(["q1"])
        workers = [WorkerCapacity("w1", frozenset({"w"}), 5), WorkerCapacity("w2", frozenset({"w"}), 2)]
        result = plan({"w": deque(["a", "b"])}, workers, pinned={("w", "w2"): queue, ("w", "w9"): gone})
        self.assertEqual(result.assignments["w2"], ["p1", "p2"])
        self.assertEqual(result.assignments["w1"], ["a", "b"])
        self.assertEqual(list(queue), ["p3"])
        self.assertEqual(result.absent, [("w", "w9")])

    def test_pinned_to_a_node_without_the_kind(self) -> None:
        """A pinned queue whose node does not run its kind waits (listed absent)."""
        result = plan({}, [WorkerCapacity("w1", frozenset({"v"}), 5)], pinned={("w", "w1"): deque(["p"])})
        self.assertEqual(result.assignments, {})
        self.assertEqual(result.absent, [("w", "w1")])
