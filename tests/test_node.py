"""
Whole-node tests on an in-memory network (L{p2pexec.testing.network}).

Every node here is a real L{Node} with its real discovery, AMP protocol,
dialler, master and worker; only sockets, processes and time are simulated,
so these tests are deterministic and take milliseconds.
"""

import random

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.membership import PeerState
from p2pexec.model import FAILED, SUCCEEDED, TaskSpec, parse_instructions
from p2pexec.node import NodeConfig, create_node
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.runner import FakeRunner


def text(event):
    """The formatted message of a log event."""
    return event["log_format"].format(**event)


class Cluster:
    """
    Nodes on one L{FakeNetwork}, one simulated host each.

    Every random choice is seeded (C{seed}), so that a test runs the same
    way every time: a node's instance, and with it its job ids and their
    replica sets, come from the cluster's own C{random.Random}.
    """

    def __init__(self, seed=0):
        self.network = FakeNetwork()
        self._rng = random.Random(seed)
        self.nodes = {}
        self.hosts = {}
        self.runners = {}

    def add(self, name, address="127.0.0.1", port=0, tasks=None, duration=0.1, outcome=None, **config):
        """Start a node called C{name} on its own host."""
        config.setdefault("capabilities", frozenset({name.rstrip("0123456789")}))
        config.setdefault("slots", 2)
        host = self.network.host(address)
        runner = FakeRunner(host, name, duration=duration, outcome=outcome)
        node = create_node(
            NodeConfig(name=name, interface=address, port=port, tasks=tasks, **config),
            host,
            runner,
            rng=random.Random(self._rng.getrandbits(64)),
        )
        node.start()
        self.nodes[name], self.hosts[name], self.runners[name] = node, host, runner
        return node

    def add_master(self, tasks, **config):
        """Start m1, which runs no task kind itself, as the master of C{tasks}."""
        return self.add("m1", capabilities=frozenset(), tasks=tasks, **config)

    def add_worker(self, name, **config):
        """Start a worker for kind w called C{name}."""
        return self.add(name, capabilities=frozenset({"w"}), **config)

    def stop(self, name):
        """Stop a node gracefully; return the Deferred of its leaving."""
        return Deferred.fromCoroutine(self.nodes[name].stop())

    def connected(self, a, b):
        """Whether C{a} has a live, handshaken connection to C{b}."""
        return self.nodes[a].peers.is_connected(b)


def w_tasks(count, command=("true",)):
    """C{count} tasks of kind w, with ids w0, w1 ..., each running C{command}."""
    return tuple(TaskSpec(id=f"w{i}", kind="w", command=command) for i in range(count))


def example_cluster(**master_config):
    """The original example: a1 master of a1,a2,b1,c1,a3; workers b1 and c1."""
    cluster = Cluster()
    cluster.add("a1", port=10001, tasks=tuple(parse_instructions("a1,a2,b1,c1,a3".split(","))), **master_config)
    cluster.add("b1", port=10002)
    cluster.add("c1", port=10003)
    return cluster


class OriginalExampleTests(SynchronousTestCase):
    """The original system's example, line for line."""

    def test_example_output(self):
        """The log holds every line of the original example output, in its order per node."""
        with capturedLogs() as events:
            cluster = example_cluster()
            cluster.network.run_until(lambda: cluster.nodes["a1"].initial_job.called, limit=10)
        lines = [text(e) for e in events]
        expected = [
            "Node a1 started on port 10001",
            "Node a1 sent DISCOVER",
            "Node b1 started on port 10002",
            "Node b1 sent DISCOVER",
            "Node a1 discovered peer b1",
            "Node b1 discovered peer a1",
            "Node a1 assigning tasks to peer b1",
            "Node b1 received instructions: ['b1']",
            "Node b1 executing: b1",
            "Master received confirmation for b1 from b1",
        ]
        for line in expected:
            self.assertIn(line, lines)
        for earlier, later in [
            ("Node a1 started on port 10001", "Node a1 sent DISCOVER"),
            ("Node a1 discovered peer b1", "Node a1 assigning tasks to peer b1"),
            ("Node a1 assigning tasks to peer b1", "Node b1 received instructions: ['b1']"),
            ("Node b1 received instructions: ['b1']", "Node b1 executing: b1"),
            ("Node b1 executing: b1", "Master received confirmation for b1 from b1"),
        ]:
            self.assertLess(lines.index(earlier), lines.index(later), (earlier, later))
        for own in ("a1", "a2", "a3"):
            self.assertIn(f"Master received confirmation for {own} from a1", lines)
        self.assertIn("Master received confirmation for c1 from c1", lines)

    def test_job_result(self):
        """Each task ran once, on the node of its kind, and the job finished."""
        cluster = example_cluster()
        cluster.network.run_until(lambda: cluster.nodes["a1"].initial_job.called, limit=10)
        job = cluster.nodes["a1"].initial_job.result
        ran_on = {task_id: record.result.node for task_id, record in job.tasks.items()}
        self.assertEqual(ran_on, {"a1": "a1", "a2": "a1", "a3": "a1", "b1": "b1", "c1": "c1"})
        self.assertEqual((job.succeeded, job.failed), (5, 0))
        self.assertEqual(set(job.participants), {"a1", "b1", "c1"})

    def test_results_file(self):
        """--results gets the job's JSON report when it finishes."""
        import json
        import os

        path = os.path.abspath(self.mktemp())
        cluster = example_cluster(results=path)
        cluster.network.run_until(lambda: cluster.nodes["a1"].initial_job.called, limit=10)
        with open(path) as f:
            report = json.load(f)
        self.assertEqual((report["total"], report["succeeded"]), (5, 5))
        self.assertEqual({t["id"]: t["node"] for t in report["tasks"]}["c1"], "c1")


class MembershipTests(SynchronousTestCase):
    """Discovery, connections and peer exchange."""

    def test_one_connection_per_pair(self):
        """Every pair is connected exactly once, dialled by the lower name."""
        cluster = Cluster()
        for name in ("a1", "b1", "c1", "d1"):
            cluster.add(name)
        cluster.network.run(3.0)
        names = sorted(cluster.nodes)
        for a in names:
            for b in names:
                if a != b:
                    self.assertTrue(cluster.connected(a, b), (a, b))
        self.assertEqual(len(cluster.network.pumps), 6)
        for pump in cluster.network.pumps:
            dialler = pump.client
            while not hasattr(dialler, "peer_name"):
                dialler = getattr(dialler, "_wrappedProtocol", None) or dialler._protocol
            self.assertTrue(dialler.dialled)

    def test_peer_exchange_spreads_membership(self):
        """a1 and c1 never hear each other's datagrams, but learn of each other through b1."""
        cluster = Cluster()
        cluster.network.block_multicast("127.0.0.1", "127.0.0.3")
        cluster.network.block_multicast("127.0.0.3", "127.0.0.1")
        cluster.add("a1", address="127.0.0.1", port=1001)
        cluster.add("b1", address="127.0.0.2", port=1002)
        cluster.add("c1", address="127.0.0.3", port=1003)
        cluster.network.run(12.0)
        self.assertTrue(cluster.connected("a1", "c1"))
        self.assertTrue(cluster.connected("c1", "a1"))

    def test_clusters_do_not_mix(self):
        """Nodes of different clusters on one group never connect."""
        cluster = Cluster()
        cluster.add("a1", cluster="prod")
        cluster.add("b1", cluster="dev")
        cluster.network.run(5.0)
        self.assertEqual(len(cluster.nodes["a1"].peers), 0)
        self.assertEqual(cluster.network.pumps, [])

    def test_reconnects_after_connection_drop(self):
        """A dropped connection between live nodes is dialled again."""
        cluster = Cluster()
        cluster.add("a1")
        cluster.add("b1")
        cluster.network.run(2.0)
        self.assertTrue(cluster.connected("a1", "b1"))
        cluster.network.pumps[0].clientIO.loseConnection()
        cluster.network.flush()
        self.assertFalse(cluster.connected("a1", "b1"))
        cluster.network.run(5.0)
        self.assertTrue(cluster.connected("a1", "b1"))
        self.assertEqual(cluster.nodes["a1"].dialer.reconnects, 1)

    def test_forgets_vanished_peer(self):
        """A peer that crashed and stays silent is forgotten after the expiry time."""
        cluster = Cluster()
        cluster.add("a1")
        cluster.add("b1")
        cluster.network.run(2.0)
        cluster.hosts["b1"].crash()
        cluster.network.run(50.0)
        self.assertIsNone(cluster.nodes["a1"].peers.get("b1"))
        self.assertNotIn("b1", cluster.nodes["a1"].dialer)

    def test_seeds_without_multicast(self):
        """With multicast off and one seed each, four nodes still all meet, and a job crosses the cluster."""
        cluster = Cluster()
        addresses = {name: (f"127.0.0.{i + 1}", 3000 + i) for i, name in enumerate(("a1", "b1", "c1", "d1"))}
        seed_of = {"a1": "d1", "b1": "a1", "c1": "b1", "d1": "c1"}
        for name, (address, port) in addresses.items():
            tasks = (TaskSpec.instruction("d9"), TaskSpec.instruction("c9")) if name == "a1" else None
            cluster.add(
                name, address=address, port=port, multicast=False, seeds=(addresses[seed_of[name]],), tasks=tasks
            )
        cluster.network.run(20.0)
        self.assertEqual(cluster.network.datagrams, [])
        for a in addresses:
            for b in addresses:
                if a != b:
                    self.assertTrue(cluster.connected(a, b), (a, b))
        job = cluster.nodes["a1"].initial_job.result
        self.assertEqual({t: r.result.node for t, r in job.tasks.items()}, {"d9": "d1", "c9": "c1"})

    def test_two_seeds_dialling_each_other_keep_one_connection(self):
        """
        Two nodes that are each other's seed dial at once; both keep the
        connection dialled by the lower name, and neither reports a lost
        connection (which would put the other's tasks back and count a loss).
        """
        cluster = Cluster()
        with capturedLogs() as events:
            cluster.add("a1", address="127.0.0.1", port=5001, multicast=False, seeds=(("127.0.0.2", 5002),))
            cluster.add("b1", address="127.0.0.2", port=5002, multicast=False, seeds=(("127.0.0.1", 5001),))
            cluster.network.run(30.0)
        self.assertTrue(cluster.connected("a1", "b1") and cluster.connected("b1", "a1"))
        self.assertEqual(
            cluster.nodes["a1"].peers.get("b1").connection.transport.getPeer().port,
            cluster.nodes["b1"].peers.get("a1").connection.transport.getHost().port,
        )
        self.assertEqual([text(e) for e in events if "lost its connection" in e["log_format"]], [])

    def test_a_cancel_owed_to_a_disconnected_worker_reaches_it_on_reconnection(self):
        """
        A job cancelled while its worker is disconnected is cancelled on
        that worker as soon as it connects again: the task it was still
        running is stopped, not left to finish.
        """
        cluster = Cluster()
        cluster.add_master(w_tasks(1, ("sleep", "3600")))
        cluster.add_worker("w1", duration=3600.0)
        cluster.network.run_until(lambda: cluster.runners["w1"].running, limit=10)
        master = cluster.nodes["m1"]
        job = next(iter(master.master.jobs))
        master.peers.get("w1").connection.transport.loseConnection()
        cluster.network.flush()
        self.assertFalse(cluster.connected("m1", "w1"))
        self.assertTrue(cluster.runners["w1"].running, "a dropped connection does not stop a running task")
        with capturedLogs() as events:
            master.master.cancel(job, by="a test")
        self.assertTrue(any("when it connects again" in text(e) for e in events))
        cluster.network.run_until(lambda: cluster.connected("m1", "w1"), limit=60)
        cluster.network.flush()
        self.assertEqual(cluster.runners["w1"].running, {})
        self.assertEqual([key[0] for key in cluster.runners["w1"].stopped], [job])

    def test_a_cancel_lost_with_a_closing_connection_is_owed(self):
        """
        A CANCEL_JOB sent on a connection the worker has already closed (the
        master has not noticed yet) fails with the connection; it is owed,
        not lost, and reaches the worker once it has connected again.
        """
        cluster = Cluster()
        cluster.add_master(w_tasks(1, ("sleep", "3600")))
        cluster.add_worker("w1", duration=3600.0)
        cluster.network.run_until(lambda: cluster.runners["w1"].running, limit=10)
        master = cluster.nodes["m1"]
        job = next(iter(master.master.jobs))
        w1_address = ("127.0.0.1", cluster.nodes["w1"].info.port)
        cluster.network.partition(*w1_address)
        cluster.nodes["w1"].peers.get("m1").connection.transport.loseConnection()
        cluster.network.flush()
        self.assertTrue(cluster.connected("m1", "w1"), "the master has not noticed yet")
        with capturedLogs():
            master.master.cancel(job, by="a test")
            cluster.network.flush()
            cluster.network.heal(*w1_address)
            cluster.network.run_until(lambda: cluster.connected("m1", "w1") and cluster.connected("w1", "m1"), limit=60)
            cluster.network.run(2.0)
        self.assertEqual(cluster.runners["w1"].running, {})
        self.assertEqual([key[0] for key in cluster.runners["w1"].stopped], [job])

    def test_ready_once_listening_and_joined(self):
        """
        L{Node.ready} fires once the node listens and discovery has joined its
        group, whether asked before or after; with multicast off, once it
        listens.
        """
        network = FakeNetwork()
        host = network.host("127.0.0.1")
        node = create_node(NodeConfig(name="a1", interface="127.0.0.1", port=0), host, FakeRunner(host, "a1"))
        early = node.ready()
        self.assertNoResult(early)
        node.start()
        network.run(0.1)
        self.successResultOf(early)
        self.successResultOf(node.ready())
        quiet = create_node(
            NodeConfig(name="b1", interface="127.0.0.1", port=0, multicast=False),
            network.host("127.0.0.2"),
            FakeRunner(host, "b1"),
        )
        waiting = quiet.ready()
        quiet.start()
        self.successResultOf(waiting)

    def test_gossip_does_not_revive_dead_peers(self):
        """A crashed node is forgotten everywhere, even though the survivors gossip."""
        cluster = Cluster()
        for name in ("a1", "b1", "c1"):
            cluster.add(name)
        cluster.network.run(3.0)
        cluster.hosts["c1"].crash()
        cluster.network.run(60.0)
        for name in ("a1", "b1"):
            self.assertIsNone(cluster.nodes[name].peers.get("c1"), name)
            self.assertNotIn("c1", cluster.nodes[name].dialer)

    def test_peer_list_fits_one_value(self):
        """With hundreds of peers, what a node shares in PEER_EXCHANGE still fits one AMP value."""
        from p2pexec import commands

        from .test_model import node as info

        cluster = Cluster()
        a1 = cluster.add("a1")

        class Connection:
            last_received = 0.0

        for i in range(1000):
            peer = info(name=f"n{i:04d}", instance=f"i{i}")
            a1.peers.connected(peer, Connection(), 0.0)
        shared = a1.gossip.peers_to_share()
        self.assertGreater(len(shared), 100)
        self.assertLess(len(commands.JSON().toString(shared)), 65_535)

    def test_same_name_warned(self):
        """Two nodes with one name: each logs that names must be unique."""
        cluster = Cluster()
        with capturedLogs() as events:
            cluster.add("a1", address="127.0.0.1", port=1001)
            cluster.add("a1", address="127.0.0.2", port=1002)
            cluster.network.run(2.0)
        warnings = [text(e) for e in events if e.get("reason") == "name-conflict"]
        self.assertEqual(len(warnings), 2)
        self.assertIn("node names must be unique", warnings[0])


class FaultTests(SynchronousTestCase):
    """What happens when nodes die or leave mid-job."""

    def test_worker_crash_tasks_rerun_elsewhere(self):
        """A worker that vanishes mid-job has its unconfirmed tasks run by another."""
        cluster = Cluster()
        tasks = w_tasks(40)
        cluster.add_master(tasks)
        cluster.add_worker("w1", duration=0.2)
        cluster.add_worker("w2", duration=0.2)
        master = cluster.nodes["m1"]
        cluster.network.run_until(lambda: len(cluster.runners["w1"].runs) >= 6, limit=10)
        cluster.hosts["w1"].crash()
        cluster.network.run_until(lambda: master.initial_job.called, limit=30)
        job = master.initial_job.result
        self.assertEqual((job.succeeded, job.failed), (40, 0))
        ran_on_w1 = {task for _, task, _ in cluster.runners["w1"].runs}
        ran_on_w2 = {task for _, task, _ in cluster.runners["w2"].runs}
        self.assertEqual(ran_on_w1 | ran_on_w2, {f"w{i}" for i in range(40)})
        twice = ran_on_w1 & ran_on_w2
        self.assertLessEqual(len(twice), 2, "only the tasks running on w1 when it died run twice")

    def test_master_restart_resumes_without_rerunning(self):
        """
        A master killed mid-job and started again with its journal finishes
        the job, and no task runs twice: the worker answers for the tasks it
        ran meanwhile from its cache.
        """
        state_dir = self.mktemp()
        cluster = Cluster()
        tasks = w_tasks(20)
        cluster.add(
            "m1",
            address="127.0.0.1",
            port=4001,
            capabilities=frozenset(),
            tasks=tasks,
            state_dir=state_dir,
            job_source="digest-of-the-job",
        )
        cluster.add_worker("w1", address="127.0.0.2", port=4002, duration=0.3)
        first = cluster.nodes["m1"]
        cluster.network.run_until(lambda: any(j.succeeded >= 6 for j in first.master.jobs.values()), limit=10)
        job_id = next(iter(first.master.jobs))
        cluster.hosts["m1"].crash()
        first.journal.abandon()
        cluster.network.run(1.0)  # the worker goes on with what it had
        with capturedLogs() as events:
            restarted = cluster.add(
                "m1",
                address="127.0.0.1",
                port=4001,
                capabilities=frozenset(),
                tasks=tasks,
                state_dir=state_dir,
                job_source="digest-of-the-job",
            )
            cluster.network.run_until(lambda: restarted.initial_job.called, limit=30)
        job = restarted.initial_job.result
        self.assertEqual(job.id, job_id, "the same job, resumed")
        self.assertEqual((job.succeeded, job.failed), (20, 0))
        runs = [task for _, task, _ in cluster.runners["w1"].runs]
        self.assertEqual(sorted(runs), sorted(f"w{i}" for i in range(20)), "every task ran exactly once")
        self.assertTrue(any("resumed job" in text(e) for e in events))
        self.assertGreater(cluster.nodes["w1"].worker.answered_from_cache, 0)

    def partitioned_job(self):
        """A master m1 with 30 tasks, workers w1 and w2; w1's link is cut once it runs some."""
        cluster = Cluster()
        tasks = w_tasks(30)
        cluster.add_master(tasks, address="127.0.0.1", port=4001)
        cluster.add_worker("w1", address="127.0.0.2", port=4002, duration=0.3)
        cluster.add_worker("w2", address="127.0.0.3", port=4003, duration=0.3)
        cluster.network.run_until(lambda: len(cluster.runners["w1"].runs) >= 4, limit=10)
        return cluster

    def test_silent_worker_declared_dead_within_timeout(self):
        """A worker whose link is cut (no FIN, no RST) is declared dead within 3 s, and its tasks finish elsewhere."""
        cluster = self.partitioned_job()
        with capturedLogs() as events:
            cluster.network.partition("127.0.0.2", 4002)
            cut = cluster.network.seconds()
            took = cluster.network.run_until(lambda: any("declared peer w1 dead" in text(e) for e in events), limit=10)
        self.assertLessEqual(took, 3.0)
        self.assertTrue(any("suspects peer w1" in text(e) for e in events))
        cluster.network.run_until(lambda: cluster.nodes["m1"].initial_job.called, limit=30)
        job = cluster.nodes["m1"].initial_job.result
        self.assertEqual(job.succeeded, 30)
        self.assertGreater(cluster.network.seconds() - cut, 0)

    def test_partition_heals_and_stale_results_dropped(self):
        """After the cut heals, the worker rejoins and its late results for reassigned tasks are dropped."""
        cluster = self.partitioned_job()
        cluster.network.partition("127.0.0.2", 4002)
        cluster.network.run(4.0)
        with capturedLogs() as events:
            cluster.network.heal("127.0.0.2", 4002)
            cluster.network.run_until(lambda: cluster.connected("m1", "w1"), limit=60)
            cluster.network.run_until(lambda: cluster.nodes["m1"].initial_job.called, limit=30)
        job = cluster.nodes["m1"].initial_job.result
        self.assertEqual((job.succeeded, job.failed), (30, 0))
        self.assertTrue(any("connected to peer w1" in text(e) for e in events))

    def test_busy_worker_not_declared_dead(self):
        """A worker with all slots full of long tasks answers heartbeats and is never declared dead."""
        cluster = Cluster()
        tasks = w_tasks(4, ("sleep", "20"))
        with capturedLogs() as events:
            cluster.add_master(tasks)
            cluster.add_worker("w1", slots=2, duration=20.0)
            cluster.network.run(10.0)
            self.assertEqual(cluster.nodes["m1"].master.workers_with_work(), {"w1"}, "w1 is watched")
            self.assertEqual(cluster.nodes["w1"].worker.masters_with_work(), {"m1"}, "m1 is watched")
            cluster.network.run_until(lambda: cluster.nodes["m1"].initial_job.called, limit=60)
        self.assertEqual(cluster.nodes["m1"].initial_job.result.succeeded, 4)
        self.assertEqual([text(e) for e in events if "suspects" in e["log_format"] or "dead" in e["log_format"]], [])

    def test_graceful_leave_hands_back(self):
        """A worker that leaves mid-job finishes its running tasks, hands back the rest, and says goodbye."""
        cluster = Cluster()
        tasks = w_tasks(12)
        cluster.add_master(tasks)
        cluster.add_worker("w1", duration=1.0)
        cluster.add_worker("w2", duration=1.0)
        master = cluster.nodes["m1"]
        cluster.network.run_until(lambda: cluster.runners["w1"].running, limit=10)
        with capturedLogs() as events:
            leaving = cluster.stop("w1")
            cluster.network.run_until(lambda: leaving.called, limit=10)
        self.successResultOf(leaving)
        lines = [text(e) for e in events]
        self.assertIn("Node m1: peer w1 is leaving (shutdown)", lines)
        self.assertIn("Node w1 got DISCONNECT_ACK from m1", lines)
        self.assertIn("Node w1 stopped", lines)
        cluster.network.run_until(lambda: master.initial_job.called, limit=30)
        job = master.initial_job.result
        self.assertEqual(job.succeeded, 12)
        ran_on_w1 = [task for _, task, _ in cluster.runners["w1"].runs]
        ran_on_w2 = [task for _, task, _ in cluster.runners["w2"].runs]
        self.assertEqual(set(ran_on_w1) & set(ran_on_w2), set(), "a drained worker's tasks never run twice")
        self.assertEqual(len(ran_on_w1) + len(ran_on_w2), 12)
        self.assertTrue(any("handing back" in line for line in lines))
        self.assertEqual(cluster.nodes["m1"].peers.get("w1").state, PeerState.LEFT)

    def test_drain_timeout_stops_long_tasks(self):
        """Tasks still running when the drain timeout ends are stopped, and the node leaves anyway."""
        cluster = Cluster()
        tasks = (TaskSpec(id="w1", kind="w", command=("sleep", "100")),)
        cluster.add_master(tasks)
        cluster.add_worker("w1", duration=100.0, drain_timeout=2.0)
        cluster.network.run_until(lambda: cluster.runners["w1"].running, limit=10)
        leaving = cluster.stop("w1")
        took = cluster.network.run_until(lambda: leaving.called, limit=10)
        self.assertGreaterEqual(took, 2.0)
        self.assertEqual(cluster.runners["w1"].running, {})

    def test_task_waits_for_capability(self):
        """A task nobody can run waits, and runs as soon as a capable node joins."""
        cluster = Cluster()
        cluster.add("a1", tasks=(TaskSpec.instruction("z1"),))
        cluster.network.run(3.0)
        self.assertFalse(cluster.nodes["a1"].initial_job.called)
        cluster.add("z1")
        cluster.network.run_until(lambda: cluster.nodes["a1"].initial_job.called, limit=10)
        self.assertEqual(cluster.nodes["a1"].initial_job.result.tasks["z1"].result.node, "z1")

    def test_failures_are_results(self):
        """A failing task finishes the job as failed, not retried."""
        cluster = Cluster()

        def outcome(assignment):
            """w2 fails with exit status 3; the others succeed."""
            return (FAILED, 3) if assignment.task.id == "w2" else (SUCCEEDED, 0)

        tasks = w_tasks(4, ("x",))
        cluster.add_master(tasks)
        cluster.add_worker("w1", outcome=outcome)
        cluster.network.run_until(lambda: cluster.nodes["m1"].initial_job.called, limit=10)
        job = cluster.nodes["m1"].initial_job.result
        self.assertEqual((job.succeeded, job.failed), (3, 1))
        self.assertEqual(job.tasks["w2"].result.exit_code, 3)

    def test_large_job_chunked(self):
        """A job far larger than one AMP value travels in chunks and completes."""
        cluster = Cluster()
        padding = "x" * 500
        tasks = w_tasks(3000, ("echo", padding))
        cluster.add_master(tasks)
        cluster.add_worker("w1", slots=500, duration=0.01)
        cluster.network.run_until(lambda: cluster.nodes["m1"].initial_job.called, limit=60)
        self.assertEqual(cluster.nodes["m1"].initial_job.result.succeeded, 3000)


class BadPeerTests(SynchronousTestCase):
    """Refusals between nodes that do not belong together."""

    def dial(self, cluster, port, info):
        """Dial a node of C{cluster} as a stranger describing itself as C{info}; return the outcome."""
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.protocol import Factory

        from p2pexec.peer import PeerProtocol

        from .test_peer import RecordingHandler

        host = cluster.network.host("127.0.0.9")
        endpoint = TCP4ClientEndpoint(host, "127.0.0.1", port)
        outcome = []
        connected = endpoint.connect(Factory.forProtocol(lambda: PeerProtocol(RecordingHandler(info), dialled=True)))
        connected.addCallback(lambda protocol: Deferred.fromCoroutine(protocol.introduce(info)))
        connected.addBoth(outcome.append)
        cluster.network.run(1.0)
        return outcome[0]

    def test_version_mismatch_refused_clearly(self):
        """A peer of another protocol version is refused at CONNECT_REQUEST, and both sides say why."""
        from p2pexec import commands

        from .test_model import node

        cluster = Cluster()
        cluster.add("b1", port=2002)
        with capturedLogs() as events:
            outcome = self.dial(cluster, 2002, node(name="a1", instance="i-future", version=2))
        outcome.trap(commands.VersionMismatch)
        self.assertIn("version 1, not 2", outcome.getErrorMessage())
        refusals = [text(e) for e in events if "Refused a connection" in e["log_format"]]
        self.assertEqual(len(refusals), 1)
        self.assertIn("protocol version 2", refusals[0])
        self.assertIsNone(cluster.nodes["b1"].peers.get("a1"))

    def test_foreign_cluster_refused_on_tcp(self):
        """A node of another cluster that dials directly is refused with CLUSTER_MISMATCH."""
        from p2pexec import commands

        from .test_model import node

        cluster = Cluster()
        cluster.add("b1", port=2002)
        outcome = self.dial(cluster, 2002, node(name="a1", instance="i-x", cluster="other"))
        outcome.trap(commands.ClusterMismatch)
        self.assertIsNone(cluster.nodes["b1"].peers.get("a1"))

    def test_duplicate_name_refused(self):
        """A stranger using the node's own name is refused with NAME_CONFLICT."""
        from p2pexec import commands

        from .test_model import node

        cluster = Cluster()
        cluster.add("b1", port=2002)
        outcome = self.dial(cluster, 2002, node(name="b1", instance="i-twin"))
        outcome.trap(commands.NameConflict)

    def test_a_duration_out_of_range_is_refused_and_the_connection_kept(self):
        """
        A confirmation whose duration is an integer too large for a float is
        refused as bad arguments; the connection, and the worker's other
        tasks, stay where they are.
        """
        from p2pexec import commands

        cluster = Cluster()
        cluster.add_master(w_tasks(2, ("sleep", "100")))
        cluster.add_worker("w1", duration=100.0)
        cluster.network.run_until(lambda: cluster.runners["w1"].running, limit=10)
        protocol = cluster.nodes["w1"].peers.get("m1").connection
        job = next(iter(cluster.nodes["m1"].master.jobs))
        outcome = []
        protocol.callRemote(
            commands.ExecutionConfirmation,
            job=job,
            results=[{"id": "w0", "attempt": 1, "status": "succeeded", "node": "w1", "duration": 10**400}],
        ).addBoth(outcome.append)
        cluster.network.flush()
        outcome[0].trap(commands.BadArguments)
        self.assertIn("'duration'", outcome[0].getErrorMessage())
        self.assertTrue(cluster.connected("m1", "w1"))
        self.assertEqual(cluster.nodes["m1"].master.jobs[job].succeeded, 0)


class WiringTests(SynchronousTestCase):
    """L{create_node} builds the parts; the node wires them, and its loops are services."""

    def test_given_parts_are_used(self):
        """A journal and a worker given to L{create_node} are the ones the node and its master use."""
        from p2pexec.journal import NullJournal
        from p2pexec.worker import Worker

        network = FakeNetwork()
        host = network.host("127.0.0.1")
        journal = NullJournal()
        worker = Worker("a1", frozenset({"a"}), 3, FakeRunner(host, "a1"), host)
        node = create_node(NodeConfig(name="a1"), host, FakeRunner(host, "a1"), journal=journal, worker=worker)
        self.assertIs(node.journal, journal)
        self.assertIs(node.master.journal, journal)
        self.assertIs(node.worker, worker)

    def test_loops_are_children_of_the_service(self):
        """
        The periodic loops (peer expiry, gossip, liveness checks) are
        children of the L{NodeService}: they start with it, call on the
        node's clock, and have stopped once it has left.
        """
        from twisted.application.service import IServiceCollection

        from p2pexec.service import NodeService

        network = FakeNetwork()
        host = network.host("127.0.0.1")
        node = create_node(NodeConfig(name="a1", port=10001), host, FakeRunner(host, "a1"))
        service = NodeService(node)
        self.assertEqual(
            [child.name for child in IServiceCollection(service)],
            ["AMP port", "discovery port", "peer expiry", "gossip", "liveness checks"],
        )
        service.privilegedStartService()
        service.startService()
        network.run(30.0)
        self.assertEqual([loop.calling for loop in node.loops], [True, True, True])
        stopped = service.stopService()
        network.run(5.0)
        self.successResultOf(stopped)
        self.assertEqual([(loop.running, loop.calling) for loop in node.loops], [(0, False)] * 3)

    def test_listeners_are_children_of_the_service(self):
        """
        The AMP and discovery ports are children of the L{NodeService}: the
        AMP port is bound in the privileged start, discovery listens once the
        node starts, and both are closed once it has left.
        """
        from p2pexec.service import NodeService

        network = FakeNetwork()
        host = network.host("127.0.0.1")
        node = create_node(NodeConfig(name="a1", port=10001), host, FakeRunner(host, "a1"))
        service = NodeService(node)
        self.assertEqual([service.getServiceNamed(listener.name) for listener in node.listeners], node.listeners)
        service.privilegedStartService()
        self.assertIs(network.server_factory("127.0.0.1", 10001), node.amp_port.port.factory)
        self.assertIsNone(node.discovery_port.port)
        service.startService()
        self.assertEqual([listener.running for listener in node.listeners], [1, 1])
        self.assertIs(node.discovery.transport, node.discovery_port.port)
        self.successResultOf(node.ready())
        stopped = service.stopService()
        network.run(5.0)
        self.successResultOf(stopped)
        self.assertEqual([(listener.running, listener.port) for listener in node.listeners], [(0, None)] * 2)
        self.assertIsNone(node.discovery.transport)
        self.assertRaises(KeyError, network.server_factory, "127.0.0.1", 10001)

    def test_no_discovery_listener_without_multicast(self):
        """With multicast off, the AMP port is the node's only listener, and the node serves once it listens."""
        network = FakeNetwork()
        host = network.host("127.0.0.1")
        node = create_node(NodeConfig(name="a1", port=10001, multicast=False), host, FakeRunner(host, "a1"))
        self.assertEqual(node.listeners, [node.amp_port])
        node.start()
        self.successResultOf(node.ready())
        self.assertIsNone(node.discovery.transport)

    def test_loops_run_without_a_service(self):
        """A node started by itself (as in these tests) runs its loops too, and stops them when it leaves."""
        cluster = Cluster()
        node = cluster.add("a1")
        self.assertEqual([loop.calling for loop in node.loops], [True, True, True])
        cluster.stop("a1")
        cluster.network.run(5.0)
        self.assertEqual([loop.calling for loop in node.loops], [False, False, False])

    def test_metrics_read_the_views(self):
        """The metrics read a node's views alone: a stand-in for them is enough to collect every figure."""
        from p2pexec.metrics import COUNTERS, GAUGES, NodeMetrics
        from p2pexec.views import COUNTERS as FIGURES

        listeners = []

        class Views:
            """Fixed figures, each its own value, so that a mix-up shows."""

            def peers_status(self):
                return [{"state": "self"}, {"state": "alive"}]

            def jobs_status(self):
                return [{"state": "running", "counts": {"pending": 2}}]

            def counters(self):
                return {name: index for index, name in enumerate(FIGURES)}

            def datagrams_rejected(self):
                return {"bad seal": 4}

            def on_result(self, listener):
                listeners.append(listener)

        metrics = NodeMetrics(Views())
        self.assertEqual(listeners, [metrics.result_applied])
        samples = {
            (sample.name, tuple(sample.labels.values())): sample.value
            for family in metrics.registry.collect()
            for sample in family.samples
        }
        self.assertEqual(samples[("p2pexec_peers", ("alive",))], 1)
        self.assertEqual(samples[("p2pexec_tasks", ("pending",))], 2)
        self.assertEqual(samples[("p2pexec_datagrams_rejected_total", ("bad seal",))], 4)
        for name, _, figure in COUNTERS:
            self.assertEqual(samples[(name + "_total", ())], FIGURES.index(figure), name)
        for name, _, figure in GAUGES:
            self.assertEqual(samples[(name, ())], FIGURES.index(figure), name)
        self.assertEqual({figure for _, _, figure in COUNTERS + GAUGES}, set(FIGURES))

    def test_views_count_what_the_parts_count(self):
        """The views' counters are the master's, the worker's, discovery's and the responders' own figures."""
        cluster = Cluster()
        a1 = cluster.add("a1")
        cluster.add("a2", address="127.0.0.2")
        cluster.network.run(3.0)
        figures = a1.views.counters()
        self.assertEqual(figures["worker_slots"], a1.worker.slots)
        self.assertEqual(figures["datagrams_received"], a1.discovery.received)
        self.assertGreater(figures["datagrams_received"], 0)
        self.assertEqual(figures["reconnects"], a1.responders.reconnects)
