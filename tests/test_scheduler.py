"""Tests for L{p2pexec.scheduler}: capability-aware, slot-balanced planning."""

from collections import deque

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.scheduler import WorkerCapacity, plan


def worker(name, kinds, free):
    """A worker with C{free} capacity for C{kinds}."""
    return WorkerCapacity(name=name, capabilities=frozenset(kinds), free=free)


class PlanTests(SynchronousTestCase):
    """L{plan}."""

    def test_partitions_by_kind(self):
        """Each task goes to a worker that runs its kind."""
        pending = {"a": deque(["a1", "a2"]), "b": deque(["b1"]), "c": deque(["c1"])}
        result = plan(pending, [worker("A", "a", 5), worker("B", "b", 5), worker("C", "c", 5)])
        self.assertEqual(result.assignments, {"A": ["a1", "a2"], "B": ["b1"], "C": ["c1"]})
        self.assertEqual(result.unschedulable, [])
        self.assertEqual([len(q) for q in pending.values()], [0, 0, 0])

    def test_balances_by_free_slots(self):
        """Tasks spread in proportion to free capacity: the emptiest worker fills first."""
        pending = {"w": deque(range(9))}
        result = plan(pending, [worker("big", "w", 6), worker("small", "w", 3)])
        self.assertEqual(len(result.assignments["big"]), 6)
        self.assertEqual(len(result.assignments["small"]), 3)
        pending = {"w": deque(range(4))}
        result = plan(pending, [worker("x", "w", 10), worker("y", "w", 10)])
        self.assertEqual(sorted(len(v) for v in result.assignments.values()), [2, 2])

    def test_respects_capacity(self):
        """No worker gets more than its free capacity; the rest stays queued in order."""
        pending = {"w": deque(["t1", "t2", "t3", "t4", "t5"])}
        result = plan(pending, [worker("x", "w", 2)])
        self.assertEqual(result.assignments, {"x": ["t1", "t2"]})
        self.assertEqual(list(pending["w"]), ["t3", "t4", "t5"])

    def test_full_workers_are_not_unschedulable(self):
        """A kind whose workers are merely full is waiting, not missing a capability."""
        pending = {"w": deque(["t1"])}
        result = plan(pending, [worker("x", "w", 0)])
        self.assertEqual(result.assignments, {})
        self.assertEqual(result.unschedulable, [])

    def test_missing_capability_reported(self):
        """A kind no worker runs is reported, and its tasks stay queued."""
        pending = {"z": deque(["z1"]), "a": deque(["a1"])}
        result = plan(pending, [worker("A", "a", 1)])
        self.assertEqual(result.unschedulable, ["z"])
        self.assertEqual(list(pending["z"]), ["z1"])

    def test_multi_capable_worker_shared(self):
        """A worker capable of two kinds is not given more than its capacity in all."""
        pending = {"a": deque(["a1", "a2"]), "b": deque(["b1", "b2"])}
        result = plan(pending, [worker("AB", "ab", 3)])
        self.assertEqual(len(result.assignments["AB"]), 3)
        self.assertEqual(sum(len(q) for q in pending.values()), 1)

    def test_no_workers(self):
        """With nobody around, every kind is unschedulable and nothing moves."""
        pending = {"a": deque(["a1"])}
        result = plan(pending, [])
        self.assertEqual((result.assignments, result.unschedulable), ({}, ["a"]))
