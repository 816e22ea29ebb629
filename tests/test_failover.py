"""
Master failover on whole nodes (L{p2pexec.failover}), on the in-memory
network: a job outlives its master.  Each test states a promise of
docs/reliability.rst ("Master failover").
"""

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.replicas import Ballot

from .test_node import Cluster, text

WORKERS = ("w1", "w2", "w3")


def failover_cluster(master="z1", replicas=2, duration=0.5, workers=WORKERS):
    """
    A master that runs nothing and three workers of kind w, each on its own
    host, all with C{replicas}; the workers dial the master (its name sorts
    after theirs), so that cutting its port isolates it.
    """
    cluster = Cluster()
    cluster.add(master, address="127.0.0.10", capabilities=frozenset(), replicas=replicas, heartbeat_timeout=2.5)
    for i, name in enumerate(workers):
        cluster.add(
            name, address=f"127.0.0.{i + 1}", capabilities=frozenset({"w"}), replicas=replicas, duration=duration
        )
    names = [master, *workers]
    cluster.network.run_until(lambda: all(cluster.connected(a, b) for a in names for b in names if a != b), limit=30)
    return cluster


def submit(cluster, name, count):
    """Submit C{count} tasks of kind w to C{name}; return the job id once the submission is answered."""
    answered = []
    cluster.nodes[name].submit([{"id": f"t{i}", "kind": "w", "command": ["true"]} for i in range(count)]).addBoth(
        answered.append
    )
    cluster.network.run_until(lambda: answered, limit=10)
    [job_id] = answered
    assert isinstance(job_id, str), job_id
    return job_id


def leaders(cluster, job_id, names=WORKERS):
    """The nodes among C{names} that are master of C{job_id}."""
    return [name for name in names if job_id in cluster.nodes[name].master.jobs]


def finished_at(cluster, job_id, names=WORKERS):
    """The job as the node among C{names} that finished it has it, or C{None}."""
    for name in names:
        job = cluster.nodes[name].master.jobs.get(job_id)
        if job is not None and job.finished is not None:
            return job
    return None


class TakeoverTests(SynchronousTestCase):
    """A successor takes a job over when its master is lost."""

    def test_takeover_after_a_crash(self):
        """
        The master dies (SIGKILL) with the job a third done: a successor
        takes it over at epoch 2, logs one line saying so, and finishes it
        with one result per task, keeping the results committed before.
        """
        cluster = failover_cluster()
        job_id = submit(cluster, "z1", 30)
        z1 = cluster.nodes["z1"]
        cluster.network.run_until(lambda: z1.replication.logs[job_id].committed > 10, limit=20)
        committed = sum(1 for record in z1.master.jobs[job_id].tasks.values() if record.result is not None)
        with capturedLogs() as events:
            cluster.hosts["z1"].crash()
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        job = finished_at(cluster, job_id)
        self.assertEqual((job.succeeded, job.failed), (30, 0))
        self.assertTrue(all(record.result is not None for record in job.tasks.values()))
        [leader] = leaders(cluster, job_id)
        self.assertEqual(cluster.nodes[leader].master.epoch_of(job_id), 2)
        lines = [text(e) for e in events if "took over job" in e["log_format"]]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"Node {leader} took over job {job_id} as master at epoch 2: z1 lost its connection", lines[0])
        took = [text(e) for e in events if "have their result" in e["log_format"]]
        self.assertEqual(len(took), 1)
        done_at_takeover = int(took[0].split(": ")[1].split(" of ")[0])
        self.assertGreaterEqual(done_at_takeover, committed - 2, "the committed results survive the master")

    def test_two_successors_racing(self):
        """
        Both successors try at once, at the same epoch: the ballots order
        them, one leads, the other backs off and follows; the job finishes
        once, with one result per task.
        """
        cluster = failover_cluster()
        job_id = submit(cluster, "z1", 20)
        z1 = cluster.nodes["z1"]
        members = z1.replication.logs[job_id].members
        cluster.network.run(1.0)
        for name in members[1:]:
            # Both wait the same grace: as if each ranked itself first.
            self.patch(cluster.nodes[name].replication, "grace", 0.05)
            self.patch(cluster.nodes[name].replication, "_rank", lambda job, lost: 1)
        with capturedLogs() as events:
            cluster.hosts["z1"].crash()
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
            cluster.network.run(3.0)
        job = finished_at(cluster, job_id)
        self.assertEqual((job.succeeded, job.failed), (20, 0))
        self.assertEqual(len(leaders(cluster, job_id)), 1, "exactly one node leads the job")
        tried = {e.get("name") for e in events if "took over job" in e["log_format"] or "backs off" in e["log_format"]}
        self.assertTrue(tried <= set(members[1:]))

    def test_a_refused_promise(self):
        """
        A replica that promised a higher ballot refuses a successor's
        PROMISE with STALE_BALLOT: the successor backs off (one line), and
        takes the job over above that ballot once nobody announced it.
        """
        cluster = failover_cluster()
        job_id = submit(cluster, "z1", 10)
        members = cluster.nodes["z1"].replication.logs[job_id].members
        first, second = members[1], members[2]
        cluster.network.run(0.5)
        cluster.nodes[second].replication.stores[job_id].promise(Ballot(5, "w9"))
        with capturedLogs() as events:
            cluster.hosts["z1"].crash()
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        backs = [text(e) for e in events if "backs off" in e["log_format"]]
        self.assertEqual(
            backs, [f"Node {first} backs off from taking job {job_id} over: a replica promised epoch 5 (w9)"]
        )
        [leader] = leaders(cluster, job_id)
        self.assertEqual(cluster.nodes[leader].master.epoch_of(job_id), 6)
        self.assertEqual(finished_at(cluster, job_id).succeeded, 10)


class RestartTests(SynchronousTestCase):
    """A master restarted with its journal checks with its replica set before it resumes a replicated job."""

    def test_restarted_master_steps_down(self):
        """
        The master dies, a successor finishes its job, and the master is
        started again with its journal: it does not resume the job from its
        journal; it learns the newer epoch, says it steps down, and hands
        nothing of the job out.
        """
        cluster = Cluster()
        state_dir = self.mktemp()
        z1 = cluster.add("z1", address="127.0.0.10", capabilities=frozenset(), replicas=2, state_dir=state_dir)
        for i, name in enumerate(WORKERS):
            cluster.add(name, address=f"127.0.0.{i + 1}", capabilities=frozenset({"w"}), replicas=2, duration=0.5)
        cluster.network.run_until(lambda: all(cluster.connected("z1", n) for n in WORKERS), limit=30)
        cluster.network.run(1.0)
        job_id = submit(cluster, "z1", 10)
        cluster.network.run(0.3)
        cluster.hosts["z1"].crash()
        z1.journal.abandon()
        cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        with capturedLogs() as events:
            again = cluster.add("z1", address="127.0.0.10", capabilities=frozenset(), replicas=2, state_dir=state_dir)
            self.addCleanup(again.journal.close)
            cluster.network.run_until(lambda: all(cluster.connected("z1", n) for n in WORKERS), limit=30)
            cluster.network.run(5.0)
        self.assertNotIn(job_id, again.master.jobs, "the restarted master does not resume the job")
        lines = [text(e) for e in events if "steps down as master" in e["log_format"]]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"Node z1 steps down as master of job {job_id}:", lines[0])
        self.assertEqual(finished_at(cluster, job_id).succeeded, 10)
        self.assertEqual(len(leaders(cluster, job_id)), 1)


class PartitionTests(SynchronousTestCase):
    """A master cut off in a minority stalls; the majority side takes over; the healed master steps down."""

    def test_partition_isolating_the_master(self):
        """
        The master's cable is cut: its replicas declare it dead and a
        successor finishes the job; the master acknowledges nothing
        meanwhile and never ends the job.  After the heal it learns the newer
        epoch, steps down with one line, and each task has exactly one
        result.
        """
        cluster = failover_cluster(duration=0.3)
        job_id = submit(cluster, "z1", 30)
        z1 = cluster.nodes["z1"]
        cluster.network.run_until(lambda: z1.replication.logs[job_id].committed > 5, limit=20)
        log = z1.replication.logs[job_id]
        with capturedLogs() as events:
            cluster.network.partition("127.0.0.10", z1.info.port)
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=120)
            committed_cut_off = log.committed
            self.assertIsNone(z1.master.jobs[job_id].finished, "the cut-off master never ends the job")
            cluster.network.heal("127.0.0.10", z1.info.port)
            cluster.network.run_until(lambda: job_id not in z1.master.jobs, limit=120)
        self.assertLessEqual(committed_cut_off, log.tail)
        steps = [text(e) for e in events if "steps down as master" in e["log_format"]]
        [leader] = leaders(cluster, job_id)
        self.assertEqual(len(steps), 1, steps)
        self.assertIn(f"Node z1 steps down as master of job {job_id}: {leader} took it over at epoch 2", steps[0])
        job = finished_at(cluster, job_id)
        self.assertEqual((job.succeeded, job.failed), (30, 0))
        stall = [text(e) for e in events if "cannot commit job" in e["log_format"]]
        self.assertLessEqual(len(stall), 1, "the stall is said once")

    def test_a_stalled_master_acknowledges_nothing(self):
        """
        A master whose replicas are gone cannot commit: a confirmation to it
        stays unanswered (the worker keeps its results) instead of being
        acknowledged.
        """
        cluster = failover_cluster(workers=("w1", "w2"))
        job_id = submit(cluster, "z1", 4)
        z1 = cluster.nodes["z1"]
        for name in ("w1", "w2"):
            # The replicas vanish, but the master still hears a worker.
            cluster.hosts[name].crash()
        cluster.add("w5", address="127.0.0.5", capabilities=frozenset({"w"}), replicas=2)
        with capturedLogs() as events:
            cluster.network.run_until(lambda: cluster.connected("z1", "w5"), limit=30)
            cluster.network.run(5.0)
        self.assertTrue(cluster.runners["w5"].runs, "w5 ran tasks of the job")
        self.assertLess(z1.replication.logs[job_id].committed, z1.replication.logs[job_id].tail)
        self.assertTrue(cluster.nodes["w5"].outbox.confirming, "its confirmations wait for an answer")
        ends = [text(e) for e in events if e["log_format"].startswith("Job {job} {ended}")]
        self.assertEqual(ends, [], "the job's end is not announced before it is committed")


class ReplicasZeroTests(SynchronousTestCase):
    """C{--replicas 0}: today's behaviour, not one extra message."""

    def test_no_replicate_at_all(self):
        """A job runs to its end on a cluster with C{--replicas 0} and no node sends REPLICATE, PROMISE or JOB_LEADER."""
        cluster = failover_cluster(replicas=0)
        sent = []
        for node in cluster.nodes.values():
            for record in node.peers.connected_peers():
                original = record.connection.callRemote

                def spy(command, *a, _original=original, **kw):
                    sent.append(command.commandName)
                    return _original(command, *a, **kw)

                record.connection.callRemote = spy
        job_id = submit(cluster, "z1", 10)
        cluster.network.run_until(lambda: cluster.nodes["z1"].master.jobs[job_id].finished is not None, limit=30)
        self.assertTrue(sent, "the spy saw the job's messages")
        replication = {commands.Replicate.commandName, commands.Promise.commandName, commands.JobLeader.commandName}
        self.assertEqual(replication & set(sent), set())
        self.assertEqual(sum(node.replication.sent for node in cluster.nodes.values()), 0)


class LoneMasterTests(SynchronousTestCase):
    """A job accepted while no other node is connected has a replica set of one: nothing to fail over to."""

    def test_no_log_kept_without_another_node(self):
        """
        With C{--replicas 2} and no peer, the job runs to its end without a
        replicated log: no record is kept in memory or journaled as a
        replica record, and nothing is sent.
        """
        cluster = Cluster()
        cluster.add("z1", address="127.0.0.10", capabilities=frozenset({"w"}), replicas=2, duration=0.5)
        replication = cluster.nodes["z1"].replication
        journaled = []
        original = cluster.nodes["z1"].journal.replica_batch
        cluster.nodes["z1"].journal.replica_batch = lambda job, batch: (
            journaled.append(batch),
            original(job, batch),
        )
        with capturedLogs() as events:
            job_id = submit(cluster, "z1", 5)
            cluster.network.run_until(lambda: cluster.nodes["z1"].master.jobs[job_id].finished is not None, limit=30)
        self.assertEqual((replication.logs, replication.stores, journaled, replication.sent), ({}, {}, [], 0))
        self.assertIn(
            f"Node z1 does not replicate job {job_id}: no other node is connected, so it has no failover",
            [text(e) for e in events],
        )
