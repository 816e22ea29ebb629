"""
Issue 14's placement (C{node}, C{all_nodes}) and rerun composed with issue
15's order (C{after}, C{skipped}, priorities), resources and backups: the
scheduler alone, and whole nodes on the in-memory network.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.fairshare import Held, PendingQueues, plan_levels
from p2pexec.model import FAILED, SKIPPED, SUCCEEDED, Assignment, TaskSpec, ValidationError
from p2pexec.placement import PinnedQueues, expand_all_nodes
from p2pexec.resource_use import Room, Usage
from p2pexec.resources import NodeResources, Request
from p2pexec.scheduler import WorkerCapacity, plan

from .test_node import Cluster
from .test_rerun import ended, submit, two_workers
from .test_speculation import finish

GIB = 1024**3
"""A gibibyte."""


class ModelTests(SynchronousTestCase):
    """C{node} and C{all_nodes} beside issue 15's task fields."""

    def test_node_is_a_plain_field(self) -> None:
        """A task with C{node} asks for no resources (the fast path), and keeps its node."""
        spec = TaskSpec.from_wire({"id": "t", "kind": "w", "node": "w1", "after": ["a"], "speculative": False})
        self.assertEqual((spec.node, spec.request, spec.after, spec.speculative), ("w1", None, ("a",), False))
        spec = TaskSpec.from_wire({"id": "t", "kind": "w", "all_nodes": True})
        self.assertEqual((spec.all_nodes, spec.request), (True, None))

    def test_node_checked_on_both_paths(self) -> None:
        """A bad node name, or node with all_nodes, is refused with or without a resource request."""
        for extra in ({}, {"cpus": 2}):
            error = self.assertRaises(
                ValidationError, TaskSpec.from_wire, {"id": "t", "kind": "w", "node": "a b", **extra}
            )
            self.assertIn("'node' (a node name)", str(error))
            error = self.assertRaises(
                ValidationError,
                TaskSpec.from_wire,
                {"id": "t", "kind": "w", "node": "w1", "all_nodes": True, **extra},
            )
            self.assertIn("cannot both be set", str(error))
            self.assertRaises(ValidationError, TaskSpec.from_wire, {"id": "t", "kind": "w", "all_nodes": 1, **extra})

    def test_assignment_carries_priority_not_node(self) -> None:
        """An assignment's wire form has the job's priority and the request, never node or all_nodes."""
        spec = TaskSpec.from_wire({"id": "t", "kind": "w", "node": "w1", "cpus": 2})
        data = Assignment(spec, 1, priority=5).to_wire()
        self.assertNotIn("node", data)
        self.assertEqual((data["priority"], data["cpus"]), (5, 2))


class ExpandTests(SynchronousTestCase):
    """An all_nodes task named in another task's C{after}."""

    def test_after_names_every_copy(self) -> None:
        """A task that runs after an all_nodes task runs after each of its copies."""
        specs = [
            TaskSpec(id="setup", kind="w", command=("true",), all_nodes=True),
            TaskSpec(id="work", kind="w", command=("true",), after=("setup",)),
        ]
        out = expand_all_nodes("j", specs, {"w1": frozenset({"w"}), "w2": frozenset({"w"})})
        self.assertEqual([spec.id for spec in out], ["setup@w1", "setup@w2", "work"])
        self.assertEqual(out[2].after, ("setup@w1", "setup@w2"))

    def test_whole_job(self) -> None:
        """On a master: the dependent starts only after every copy succeeded, and the job ends."""
        sent: list[str] = []

        def outcome(assignment: Assignment) -> tuple[str, int]:
            sent.append(assignment.task.id)
            return SUCCEEDED, 0

        cluster = two_workers(outcome=outcome)
        job_id = submit(
            cluster,
            "m1",
            [
                {"id": "setup", "kind": "w", "command": ["true"], "all_nodes": True},
                {"id": "work", "kind": "w", "command": ["true"], "after": ["setup"]},
            ],
        )
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        job = cluster.nodes["m1"].master.jobs[job_id]
        self.assertEqual((job.succeeded, job.failed, job.skipped), (3, 0, 0))
        self.assertEqual(sorted(sent[:2]), ["setup@w1", "setup@w2"])
        self.assertEqual(sent[2:], ["work"])


def capacity(name: str, free: int, resources: NodeResources | None = None) -> WorkerCapacity:
    """A worker of kind w with C{free} slots, and C{resources} free for requests."""
    room = None if resources is None else Room.of(resources, Usage())
    return WorkerCapacity(name, frozenset({"w"}), free, room)


class PinnedPlanTests(SynchronousTestCase):
    """scheduler.plan's pinned queues with resource requests, and plan_levels' priority levels."""

    def test_pinned_request_waits_for_room(self) -> None:
        """A pinned task goes to its node only while it fits there; behind it, the queue waits."""
        requests = {"big": Request(cpus=4.0), "small": Request(cpus=1.0)}
        queue: deque[str] = deque(["small", "big", "small2"])
        planned = plan(
            {},
            [capacity("w1", 4, NodeResources(2.0, GIB)), capacity("w2", 4, NodeResources(8.0, GIB))],
            lambda entry: requests.get(entry, Request(cpus=1.0)),
            pinned={("w", "w1"): queue},
        )
        self.assertEqual(planned.assignments, {"w1": ["small"]})
        self.assertEqual(list(queue), ["big", "small2"])
        [(entry, why)] = planned.unfit
        self.assertEqual(entry, "big")
        self.assertEqual(why, "needs cpus=4; node w1 has cpus=2, and the task runs only there")

    def test_pinned_to_a_node_without_resources(self) -> None:
        """A task asking for resources pinned to a node that advertised none (an older version) says so."""
        queue: deque[str] = deque(["licensed"])
        planned = plan(
            {},
            [capacity("w1", 4, None)],
            lambda entry: Request(named=(("licence", 1.0),)),
            pinned={("w", "w1"): queue},
        )
        self.assertEqual(planned.assignments, {})
        self.assertEqual(
            planned.unfit,
            [("licensed", "needs licence=1; node w1 advertises no resources, and the task runs only there")],
        )

    def test_levels_serve_pinned_by_priority(self) -> None:
        """A higher level's pinned task goes before a lower level's, and levels only of pinned tasks are planned."""
        queues = PendingQueues()
        queues.add(0, "w", "low", "u1")
        pinned = PinnedQueues("m1", Clock(), lambda: None)
        pinned.add(0, "w", "w1", [("low", "p-low")])
        pinned.add(7, "w", "w1", [("high", "p-high")])
        handed: list[dict[str, list[tuple[str, str]]]] = []

        class Seat:
            """Just what capacity() reads of a seat."""

            accepting = True
            free = 1
            window = 1

            class info:  # noqa: N801
                """The seat's node."""

                capabilities = ("w",)
                slots = 1
                resources = None

        held = Held()

        def hand_out(assignments: dict[str, list[tuple[str, str]]]) -> None:
            handed.append(assignments)
            for worker, entries in assignments.items():
                for entry in entries:
                    held.change(worker, 7 if entry[0] == "high" else 0, 1)

        unschedulable, unfit, absent = plan_levels(queues, {"w1": Seat()}, held, None, hand_out, pinned.levels)  # type: ignore[dict-item]
        self.assertEqual((unschedulable, unfit, absent), ([], [], []))
        self.assertEqual(handed[0], {"w1": [("high", "p-high")]})
        self.assertEqual(pinned.count(), 1)
        self.assertEqual(pinned.waiting(("w", "w1")), [("low", "p-low")])


class PinnedBackupTests(SynchronousTestCase):
    """No backup copy of a task pinned to its node."""

    def test_pinned_slow_task_not_backed_up(self) -> None:
        """
        s1 (10x slower) runs the two tasks pinned to it while f1 runs the
        rest: when f1 is idle and s1's last task still has long to go, no
        backup of it starts on f1; both ran on s1 only.
        """
        tasks = tuple(TaskSpec(id=f"w{i}", kind="w", command=("true",)) for i in range(40)) + tuple(
            TaskSpec(id=f"p{i}", kind="w", command=("true",), node="s1") for i in range(2)
        )
        cluster = Cluster()
        cluster.add_master(tasks)
        cluster.add("f1", capabilities=frozenset({"w"}), slots=4, duration=0.2)
        cluster.add("s1", capabilities=frozenset({"w"}), slots=1, duration=2.0)
        job = finish(cluster)
        self.assertEqual((job.succeeded, job.failed), (42, 0))
        fast = {key[1] for key in cluster.runners["f1"].runs}
        self.assertFalse(fast & {"p0", "p1"}, "a pinned task ran on another node")
        for task_id in ("p0", "p1"):
            self.assertEqual(job.tasks[task_id].result.node, "s1")


class RerunSkippedTests(SynchronousTestCase):
    """rerun --failed with tasks skipped after a failure."""

    def test_skipped_dependents_run_again_after_their_dependency(self) -> None:
        """
        a fails, so b (after a) and c (after b) are skipped.  The rerun runs
        all three again: b waits for a, c for b, and the job ends with all
        three succeeded and no skipped count left.
        """
        attempts: list[str] = []

        def outcome(assignment: Assignment) -> tuple[str, int]:
            attempts.append(assignment.task.id)
            if assignment.task.id == "a" and assignment.attempt == 1:
                return FAILED, 1
            return SUCCEEDED, 0

        cluster = two_workers(outcome=outcome)
        job_id = submit(
            cluster,
            "m1",
            [
                {"id": "a", "kind": "w", "command": ["true"]},
                {"id": "b", "kind": "w", "command": ["true"], "after": ["a"]},
                {"id": "c", "kind": "w", "command": ["true"], "after": ["b"]},
                {"id": "d", "kind": "w", "command": ["true"]},
            ],
        )
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        master = cluster.nodes["m1"].master
        job = master.jobs[job_id]
        self.assertEqual((job.succeeded, job.failed, job.skipped), (1, 1, 2))
        self.assertEqual(job.tasks["c"].result.status, SKIPPED)
        del attempts[:]
        self.assertEqual(master.rerun(job_id, "failed", by="a test"), ["a", "b", "c"])
        self.assertEqual((job.succeeded, job.failed, job.skipped), (1, 0, 0))
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        self.assertEqual((job.succeeded, job.failed, job.skipped), (4, 0, 0))
        # One at a time, in order: each started only once the one it runs after had succeeded.
        self.assertEqual(attempts, ["a", "b", "c"])
        self.assertEqual([job.tasks[task_id].attempt for task_id in "abcd"], [2, 1, 1, 1])  # b and c never ran before
