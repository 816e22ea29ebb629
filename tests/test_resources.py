"""
Tests for resources (issue 15, item 1): what a node has, what a task asks,
the master's placement, the worker's pool, and whole nodes on the simulated
network.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands, datagram, resources, scheduler
from p2pexec.job import Job, TaskRecord
from p2pexec.jobfile import JobFileError, parse_job
from p2pexec.model import Assignment, NodeInfo, TaskSpec, ValidationError
from p2pexec.node import NodeConfig, create_node
from p2pexec.resource_use import Pool, Room, Usage
from p2pexec.resources import NodeResources, Request
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.runner import FakeRunner

from .test_node import text

GIB = 1024**3


class ValuesTests(SynchronousTestCase):
    """Sizes, requests and what a node has, and their errors."""

    def test_sizes(self) -> None:
        """Sizes are powers of 1024; bytes as they are; a size that is not one is refused, naming the field."""
        self.assertEqual(resources.parse_size("4G", "x"), 4 * GIB)
        self.assertEqual(resources.parse_size("512M", "x"), 512 * 1024**2)
        self.assertEqual(resources.parse_size("1.5GiB", "x"), 3 * GIB // 2)
        self.assertEqual(resources.parse_size(1000, "x"), 1000)
        for bad in ("4Q", "-1G", "", True, 1.5, -3):
            with self.assertRaises(ValueError) as caught:
                resources.parse_size(bad, "'memory'")
            self.assertIn("'memory'", str(caught.exception))

    def test_task_fields(self) -> None:
        """A task's fields make its request, on the wire and back; none asked is no request."""
        spec = TaskSpec.from_wire({"id": "g1", "cpus": 2, "memory": "4G", "gpus": 1, "resources": {"licence": 1}})
        self.assertEqual(spec.request, Request(cpus=2.0, memory=4 * GIB, gpus=1, named=(("licence", 1.0),)))
        self.assertEqual(TaskSpec.from_wire(spec.to_wire()), spec)
        self.assertEqual(spec.to_wire()["memory"], 4 * GIB)
        self.assertIsNone(TaskSpec.from_wire({"id": "a1"}).request)
        self.assertNotIn("cpus", TaskSpec.from_wire({"id": "a1"}).to_wire())

    def test_bad_task_fields_name_task_and_field(self) -> None:
        """A negative, non-numeric or mistyped request is refused, naming the task and the field."""
        cases = [
            ({"cpus": -1}, "'cpus'"),
            ({"cpus": "two"}, "'cpus'"),
            ({"cpus": 0}, "'cpus'"),
            ({"memory": "lots"}, "'memory'"),
            ({"gpus": 1.5}, "'gpus'"),
            ({"gpus": -1}, "'gpus'"),
            ({"resources": {"licence": -1}}, "licence"),
            ({"resources": {"licence": "x"}}, "licence"),
            ({"resources": {"1bad": 1}}, "'1bad'"),
            ({"resources": [1]}, "'resources'"),
        ]
        for fields, field in cases:
            with self.assertRaises(ValidationError) as caught:
                TaskSpec.from_wire({"id": "t7", **fields})
            self.assertIn("task 't7'", str(caught.exception))
            self.assertIn(field, str(caught.exception))

    def test_job_file_fields_and_defaults(self) -> None:
        """A job file asks per task or in [defaults]; a bad value names the task and the field."""
        specs = parse_job(
            {
                "defaults": {"kind": "g", "command": ["true"], "cpus": 2},
                "task": [{"id": "g1"}, {"id": "g2", "gpus": 1, "memory": "1G"}],
            }
        )
        self.assertEqual(specs[0].request, Request(cpus=2.0))
        self.assertEqual(specs[1].request, Request(cpus=2.0, memory=GIB, gpus=1))
        with self.assertRaises(JobFileError) as caught:
            parse_job({"task": [{"id": "g1", "command": ["true"], "memory": "4 apples"}]})
        self.assertIn("'g1'", str(caught.exception))
        self.assertIn("'memory'", str(caught.exception))

    def test_node_json(self) -> None:
        """A node's resources travel in its JSON; absent, it has only slots; bad, it is refused naming them."""
        has = NodeResources(cpus=4.0, memory=16 * GIB, gpus=("0", "1"), named=(("licence", 2.0),))
        info = NodeInfo("w1", "i" * 16, "127.0.0.1", 4001, ("w",), 2, resources=has)
        self.assertEqual(NodeInfo.from_wire(info.to_wire()), info)
        plain = NodeInfo("w1", "i" * 16, "127.0.0.1", 4001, ("w",), 2)
        self.assertNotIn("resources", plain.to_wire())
        self.assertIsNone(NodeInfo.from_wire(plain.to_wire()).resources)
        bad = dict(info.to_wire(), resources={"cpus": -1, "memory": 0, "gpus": []})
        with self.assertRaises(ValidationError) as caught:
            NodeInfo.from_wire(bad)
        self.assertIn("'cpus'", str(caught.exception))

    def test_hello_stays_small(self) -> None:
        """
        The widest resources a node may advertise, with a long name and
        four long kinds, still fit its HELLO in the datagram limit (well
        under 1,400 bytes).
        """
        widest = NodeResources(
            cpus=99999.5,
            memory=2**62,
            gpus=tuple(f"GPU-{i:08d}" for i in range(resources.MAX_GPUS)),
            named=tuple((f"r{i:023d}", 1e12 - 0.5) for i in range(resources.MAX_NAMED)),
        )
        kinds = tuple(f"{k}" * 32 for k in "abcd")
        info = NodeInfo("n" * 32, "f" * 16, "255.255.255.255", 65535, kinds, 10000, "c" * 32, resources=widest)
        body = datagram.encode(datagram.Datagram(type=datagram.HELLO, node=info))
        self.assertLessEqual(len(body), datagram.MAX_DATAGRAM_BYTES)

    def test_detect_gpus(self) -> None:
        """GPUs are the devices nvidia-smi -L lists; none when it is absent."""
        listing = "GPU 0: Tesla T4 (UUID: GPU-aaa)\nGPU 1: Tesla T4 (UUID: GPU-bbb)\n"
        self.assertEqual(resources.detect_gpus(lambda: listing), ("0", "1"))
        self.assertEqual(resources.detect_gpus(lambda: None), ())
        self.assertEqual(resources.from_options("2", "1G", None, [], list_gpus=lambda: listing).gpus, ("0", "1"))
        self.assertEqual(resources.from_options("2", "1G", "none", [], list_gpus=lambda: listing).gpus, ())

    def test_options(self) -> None:
        """The node's flags make what it has; a bad one is refused, naming the flag."""
        has = resources.from_options("4", "8G", "0,1", ["licence=2"], list_gpus=lambda: None)
        self.assertEqual(has, NodeResources(cpus=4.0, memory=8 * GIB, gpus=("0", "1"), named=(("licence", 2.0),)))
        detected = resources.from_options(None, None, None, [], list_gpus=lambda: None)
        self.assertGreaterEqual(detected.cpus, 1)
        self.assertGreater(detected.memory, 0)
        for args, flag in [
            (("0", None, None, []), "--cpus"),
            (("x", None, None, []), "--cpus"),
            ((None, "8X", None, []), "--memory"),
            ((None, None, "0,0", []), "--gpus"),
            ((None, None, "a b", []), "--gpus"),
            ((None, None, None, ["licence"]), "--resource"),
            ((None, None, None, ["licence=many"]), "--resource"),
        ]:
            with self.assertRaises(ValueError) as caught:
                resources.from_options(*args, list_gpus=lambda: None)
            self.assertIn(flag, str(caught.exception))

    def test_run_flags(self) -> None:
        """p2pexec run's --cpus/--memory/--gpus/--resource become task fields; bad ones name the flag."""
        self.assertEqual(
            resources.run_request("2", "4G", "1", ["licence=1"]),
            {"cpus": 2.0, "memory": "4G", "gpus": 1, "resources": {"licence": 1.0}},
        )
        for args, flag in [(("-1", None, None, []), "--cpus"), ((None, None, "x", []), "--gpus")]:
            with self.assertRaises(ValueError) as caught:
                resources.run_request(*args)
            self.assertIn(flag, str(caught.exception))


def capacity(name: str, free: int, has: NodeResources | None, kinds: str = "g") -> scheduler.WorkerCapacity:
    """A worker of kind C{kinds} with C{free} slots and C{has}, nothing used."""
    return scheduler.WorkerCapacity(name, frozenset({kinds}), free, Room.of(has, Usage()))


class PlanTests(SynchronousTestCase):
    """The master's scheduler with requests."""

    def test_places_only_where_it_fits(self) -> None:
        """Tasks go only where their request fits; the rest wait in order, behind which others go."""
        requests = {"a": Request(gpus=1), "b": Request(gpus=1), "c": None, "d": Request(cpus=8)}
        queue = deque(["a", "b", "c", "d"])
        workers = [
            capacity("small", 8, NodeResources(cpus=4.0, memory=GIB)),
            capacity("gpu", 8, NodeResources(cpus=2.0, memory=GIB, gpus=("0",))),
        ]
        planned = scheduler.plan({"g": queue}, workers, requests.get)
        self.assertEqual(planned.assignments, {"gpu": ["a"], "small": ["c"]})
        self.assertEqual(list(queue), ["b", "d"])
        self.assertEqual([entry for entry, _ in planned.unfit], ["d"])
        self.assertIn("needs cpus=8; the most any live node of kind 'g' has is cpus=4", planned.unfit[0][1])

    def test_cpus_add_up(self) -> None:
        """Two cpus=2 tasks fill a 4-CPU worker; the third waits, not unfit."""
        queue = deque(["a", "b", "c"])
        planned = scheduler.plan({"g": queue}, [capacity("w", 8, NodeResources(4.0, GIB))], lambda e: Request(cpus=2))
        self.assertEqual(planned.assignments, {"w": ["a", "b"]})
        self.assertEqual(list(queue), ["c"])
        self.assertEqual(planned.unfit, [])

    def test_worker_without_resources(self) -> None:
        """A worker that advertised nothing gets no task that asks for something."""
        queue = deque(["a"])
        planned = scheduler.plan({"g": queue}, [capacity("old", 4, None)], lambda e: Request(gpus=2))
        self.assertEqual(planned.assignments, {})
        self.assertIn("needs gpus=2; the most any live node of kind 'g' has is gpus=0", planned.unfit[0][1])


def queued(task_id: str, request: Request | None) -> Any:
    """A worker's queued attempt, as the pool sees it."""

    class Entry:
        assignment = Assignment(TaskSpec(task_id, "g", ("true",), request=request), 1)
        key = ("m", "j", task_id, 1)

    return Entry()


class JobTests(SynchronousTestCase):
    """Whether a job asks for resources, which decides whether the master checks them at all."""

    def test_asks_resources(self) -> None:
        """A job asks when one of its tasks does, also when rebuilt from its journal records."""
        plain = TaskSpec("a", "g")
        asking = TaskSpec("b", "g", request=Request(cpus=2))
        self.assertFalse(Job("j1", [plain], started=0.0).asks_resources)
        self.assertTrue(Job("j2", [plain, asking], started=0.0).asks_resources)
        restored = Job.restore("j3", [TaskRecord(spec=plain), TaskRecord(spec=asking)], started=0.0)
        self.assertTrue(restored.asks_resources)

    def test_plain_task_from_wire(self) -> None:
        """A task without resource fields asks for nothing; an unknown field is still refused, by name."""
        self.assertIsNone(TaskSpec.from_wire({"id": "a"}).request)
        self.assertEqual(TaskSpec.from_wire({"id": "a", "cpus": 2}).request, Request(cpus=2))
        with self.assertRaises(ValidationError) as caught:
            TaskSpec.from_wire({"id": "a", "cpu": 2})
        self.assertIn("task 'a': unknown field(s) cpu", str(caught.exception))


class PoolTests(SynchronousTestCase):
    """The worker's own pool."""

    def test_gpu_tasks_get_their_own_devices(self) -> None:
        """Two GPU tasks get different devices in their environment; a third waits until one ends."""
        pool = Pool("w1", NodeResources(8.0, GIB, gpus=("0", "1")))
        queue = deque([queued("a", Request(gpus=1)), queued("b", Request(gpus=1)), queued("c", Request(gpus=1))])
        first, second = pool.start_next(queue), pool.start_next(queue)
        envs = [dict(entry.assignment.task.env) for entry in (first, second)]
        self.assertEqual([env["CUDA_VISIBLE_DEVICES"] for env in envs], ["0", "1"])
        self.assertEqual([env["P2PEXEC_GPUS"] for env in envs], ["0", "1"])
        self.assertIsNone(pool.start_next(queue))
        pool.release(first.key)
        third = pool.start_next(queue)
        self.assertEqual(dict(third.assignment.task.env)["CUDA_VISIBLE_DEVICES"], "0")

    def test_plain_tasks_pass_a_blocked_one(self) -> None:
        """A task asking for nothing starts even while one that does not fit waits ahead of it."""
        pool = Pool("w1", NodeResources(2.0, GIB))
        queue = deque([queued("a", Request(cpus=2)), queued("b", Request(cpus=1)), queued("c", None)])
        self.assertEqual(pool.start_next(queue).key[2], "a")
        self.assertEqual(pool.start_next(queue).key[2], "c")
        self.assertEqual([e.key[2] for e in queue], ["b"])

    def test_refuses_what_can_never_fit(self) -> None:
        """A batch with a task asking for more than the node has is refused, naming it."""
        pool = Pool("w1", NodeResources(2.0, GIB))
        ok = Assignment(TaskSpec("a", "g", request=Request(cpus=2)), 1)
        big = Assignment(TaskSpec("b", "g", request=Request(gpus=1)), 1)
        pool.check([ok])
        with self.assertRaises(commands.DoesNotFit) as caught:
            pool.check([ok, big])
        self.assertIn("b needs gpus=1", str(caught.exception))


class RecordingRunner(FakeRunner):
    """A L{FakeRunner} that keeps every assignment and the most that ran at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.assignments: list[Assignment] = []
        self.most = 0

    def run(self, job: str, assignment: Assignment) -> Any:
        """Record, then pretend to run."""
        self.assignments.append(assignment)
        d = super().run(job, assignment)
        self.most = max(self.most, len(self.running))
        return d


class ClusterTests(SynchronousTestCase):
    """Whole nodes on the simulated network."""

    def setUp(self) -> None:
        self.network = FakeNetwork()
        self.runners: dict[str, RecordingRunner] = {}

    def add(self, name: str, number: int, has: NodeResources | None, **config: Any) -> Any:
        """Start node C{name} on its own host."""
        host = self.network.host(f"127.0.0.{number}")
        runner = RecordingRunner(host, name, duration=0.5)
        made = create_node(
            NodeConfig(name=name, interface=f"127.0.0.{number}", port=4000 + number, resources=has, **config),
            host,
            runner,
        )
        made.start()
        self.runners[name] = runner
        return made

    def test_cpus_cap_concurrency(self) -> None:
        """cpus = 2 tasks on a 4-CPU node with 8 slots: never more than two at once, and all run."""
        tasks = tuple(TaskSpec(f"g{i}", "g", ("true",), request=Request(cpus=2)) for i in range(8))
        master = self.add("m1", 1, None, capabilities=frozenset(), tasks=tasks)
        self.add("w1", 2, NodeResources(4.0, GIB), capabilities=frozenset({"g"}), slots=8)
        self.network.run_until(lambda: master.initial_job.called, limit=30)
        self.assertEqual(master.initial_job.result.succeeded, 8)
        self.assertEqual(self.runners["w1"].most, 2)

    def test_plain_tasks_take_slots_only(self) -> None:
        """Tasks that ask for nothing fill every slot of a node, whatever CPUs it advertises."""
        tasks = tuple(TaskSpec(f"g{i}", "g", ("true",)) for i in range(8))
        master = self.add("m1", 1, None, capabilities=frozenset(), tasks=tasks)
        self.add("w1", 2, NodeResources(1.0, GIB), capabilities=frozenset({"g"}), slots=4)
        self.network.run_until(lambda: master.initial_job.called, limit=30)
        self.assertEqual(master.initial_job.result.succeeded, 8)
        self.assertEqual(self.runners["w1"].most, 4)

    def test_pinned_task_its_node_cannot_hold(self) -> None:
        """
        A task pinned to a node too small for it waits with one log line
        saying what that node has, not what the biggest node of its kind has;
        the other tasks of the job run.
        """
        tasks = (
            TaskSpec("big", "g", ("true",), request=Request(cpus=8, gpus=1), node="w1"),
            TaskSpec("small", "g", ("true",), request=Request(cpus=1)),
        )
        with capturedLogs() as events:
            master = self.add("m1", 1, None, capabilities=frozenset(), tasks=tasks)
            self.add("w1", 2, NodeResources(4.0, GIB), capabilities=frozenset({"g"}), slots=4)
            self.add("w2", 3, NodeResources(16.0, GIB, gpus=("0",)), capabilities=frozenset({"g"}), slots=4)
            self.network.run(10)
        job = master.master.jobs[next(iter(master.master.jobs))].id
        lines = [text(e) for e in events if "no live node can run" in e.get("log_format", "")]
        self.assertEqual(
            lines,
            [
                "Node m1 has task(s) that no live node can run; they wait until one joins: "
                f"task big of job {job} needs cpus=8, gpus=1; node w1 has cpus=4, gpus=0, and the task runs only there"
            ],
        )
        ran = [a.task.id for runner in self.runners.values() for a in runner.assignments]
        self.assertEqual(ran, ["small"])

    def test_waits_with_one_line_then_placed_when_a_big_node_joins(self) -> None:
        """
        GPU tasks wait on a cluster without GPUs, with one log line naming
        them and what is missing; a node with two GPUs joins and runs them,
        two at a time on different devices.
        """
        tasks = tuple(TaskSpec(f"g{i}", "g", ("true",), request=Request(gpus=1)) for i in range(4))
        with capturedLogs() as events:
            master = self.add("m1", 1, None, capabilities=frozenset(), tasks=tasks)
            self.add("w1", 2, NodeResources(4.0, GIB), capabilities=frozenset({"g"}), slots=4)
            self.network.run(10)
        lines = [text(e) for e in events if "no live node can run" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("tasks g0, g1, g2, g3 of job", lines[0])
        self.assertIn("needs gpus=1; the most any live node of kind 'g' has is gpus=0", lines[0])
        self.assertEqual(self.runners["w1"].assignments, [])
        self.add("w2", 3, NodeResources(4.0, GIB, gpus=("0", "1")), capabilities=frozenset({"g"}), slots=4)
        self.network.run_until(lambda: master.initial_job.called, limit=30)
        self.assertEqual(master.initial_job.result.succeeded, 4)
        runner = self.runners["w2"]
        self.assertEqual(runner.most, 2)
        devices = [dict(a.task.env)["CUDA_VISIBLE_DEVICES"] for a in runner.assignments]
        self.assertEqual(sorted(devices), ["0", "0", "1", "1"])


class OtherPartsFieldsTests(SynchronousTestCase):
    """The task fields of the other parts of issue 15 (after, speculative) pass the plain-task fast path."""

    def test_after_and_speculative_ask_for_nothing_and_are_checked(self):
        """A task using after or speculative asks for no resources; a bad value of either is refused, by name."""
        spec = TaskSpec.from_wire({"id": "b", "after": ["a"], "speculative": False})
        self.assertIsNone(spec.request)
        self.assertEqual((spec.after, spec.speculative), (("a",), False))
        self.assertEqual(TaskSpec.from_wire(spec.to_wire()), spec)
        for bad, field in (({"after": "a"}, "after"), ({"after": ["b"]}, "after"), ({"speculative": 1}, "speculative")):
            with self.assertRaises(ValidationError) as caught:
                TaskSpec.from_wire({"id": "b", **bad})
            self.assertIn(f"task 'b': '{field}'", str(caught.exception))
