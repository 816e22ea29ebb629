"""
The journal's retention forgets the replicated logs of finished jobs too
(L{p2pexec.journal.Journal.prune_replicas}), on every node that holds one:
docs/reliability.rst, "Master failover".
"""

import os
import time

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.journal import Journal, NullJournal
from p2pexec.journal_schema import JOURNAL_FILE
from p2pexec.node import NodeConfig, create_node
from p2pexec.replica_log import Batch
from p2pexec.replicas import Ballot
from p2pexec.replication import END, JOB, RESULT, Record
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.runner import FakeRunner

from .test_failover import WORKERS, finished_at, submit
from .test_journal import query
from .test_node import Cluster, text

BALLOT = Ballot(1, "m1")


def records(*kinds_and_data):
    """Records numbered from 1 under L{BALLOT}."""
    return [Record(seq, kind, data, BALLOT) for seq, (kind, data) in enumerate(kinds_and_data, start=1)]


class PruneReplicasTests(SynchronousTestCase):
    """prune_replicas(before) deletes the logs of the jobs that ended before C{before}, and only those."""

    def test_prune_replicas(self):
        """
        Of five logs (ended at 100, ended at 300, ended without a time, not
        ended, ended at 50), prune_replicas(200) deletes the three ended
        before 200 or at no known time, with their promises, and says how
        many; the others are read back whole after a restart.
        """
        state_dir = self.mktemp()
        journal = Journal(state_dir, Clock())
        logs = {
            "old": records((JOB, {"part": 0}), (RESULT, {"task": "t"}), (END, {"succeeded": 1, "finished": 100.0})),
            "new": records((JOB, {"part": 0}), (END, {"succeeded": 1, "failed": 0, "finished": 300.0})),
            "no-time": records((JOB, {"part": 0}), (END, {"succeeded": 1, "failed": 0})),
            "open": records((JOB, {"part": 0}), (RESULT, {"task": "t"})),
            "older": records((END, {"finished": 50})),
        }
        for job, held in logs.items():
            journal.replica_changed(job, BALLOT, BALLOT)
            journal.replica_batch(job, Batch.of(BALLOT, held))
        journal.commit()
        self.assertEqual(journal.prune_replicas(200.0), 3)
        journal.close()
        path = os.path.join(state_dir, JOURNAL_FILE)
        self.assertEqual(query(path, "SELECT job FROM replica_jobs ORDER BY job"), [("new",), ("open",)])
        journal = Journal(state_dir, Clock())
        self.addCleanup(journal.close)
        kept = {
            job: (promised, accepted, [batch.raw for batch in batches])
            for job, promised, accepted, batches in journal.replica_logs()
        }
        self.assertEqual(kept, {job: (BALLOT, BALLOT, [Batch.of(BALLOT, logs[job]).raw]) for job in ("new", "open")})
        self.assertEqual(journal.prune_replicas(200.0), 0)
        self.assertEqual(journal.prune_replicas(301.0), 1)
        self.assertEqual([job for job, *_ in journal.replica_logs()], ["open"])

    def test_nothing_to_prune(self):
        """A journal never written, and the null journal, prune no log."""
        journal = Journal(self.mktemp(), Clock())
        self.addCleanup(journal.close)
        self.assertEqual(journal.prune_replicas(1e12), 0)
        self.assertEqual(NullJournal().prune_replicas(1e12), 0)


class ReplicaRetentionTests(SynchronousTestCase):
    """A replica restarted after the retention no longer holds the log of a job that ended before."""

    def run_job(self):
        """
        z1 (runs nothing) and three workers with journals, C{--replicas 2};
        a five-task job on z1 runs to its end.

        @return: the cluster, the job id and a replica that is not its master.
        """
        cluster = Cluster()
        cluster.add("z1", address="127.0.0.10", capabilities=frozenset(), replicas=2, state_dir=self.mktemp())
        for i, name in enumerate(WORKERS):
            cluster.add(
                name,
                address=f"127.0.0.{i + 1}",
                capabilities=frozenset({"w"}),
                replicas=2,
                duration=0.1,
                state_dir=self.mktemp(),
            )
        names = ["z1", *WORKERS]
        cluster.network.run_until(lambda: all(cluster.connected(a, b) for a in names for b in names if a != b))
        job_id = submit(cluster, "z1", 5)
        cluster.network.run_until(lambda: finished_at(cluster, job_id, names=["z1"]) is not None, limit=30)
        cluster.network.run(1.0)
        replica = cluster.nodes["z1"].replication.logs[job_id].members[1]
        return cluster, job_id, replica

    def restart(self, cluster, name, wall):
        """Crash C{name} and start it again on a new network with the same journal and C{wall}; return the node."""
        old = cluster.nodes[name]
        state_dir = old.config.state_dir
        cluster.hosts[name].crash()
        old.journal.close()
        network = FakeNetwork()
        again = create_node(
            NodeConfig(name=name, state_dir=state_dir, journal_retention=3600.0, replicas=2),
            network.host(),
            FakeRunner(network, name),
            wall=wall,
        )
        self.addCleanup(again.journal.close)
        return again

    def test_replica_log_pruned_after_the_retention(self):
        """
        The replica's journal holds the finished job's log, its end record
        stamped with the wall-clock time it finished; started again an hour
        and a second later (retention one hour) it says it pruned that log,
        and neither its journal nor its replication holds it any more.
        """
        cluster, job_id, replica = self.run_job()
        held = cluster.nodes[replica].replication.records_of(job_id)
        [data] = [record.data for record in held if record.kind == END]
        self.assertLess(abs(data["finished"] - time.time()), 60.0, data)
        later = self.restart(cluster, replica, wall=lambda: data["finished"] + 3601.0)
        with capturedLogs() as events:
            later.start()
        self.assertIn(
            f"Node {replica} pruned the replicated logs of 1 finished job(s) from its journal",
            [text(e) for e in events],
        )
        self.assertNotIn(job_id, later.replication.stores)
        self.assertEqual(later.journal.replica_logs(), [])

    def test_replica_log_kept_within_the_retention(self):
        """Started again within the retention, the replica still holds the finished job's log."""
        cluster, job_id, replica = self.run_job()
        soon = self.restart(cluster, replica, wall=lambda: time.time() + 60.0)
        soon.start()
        self.assertIn(job_id, soon.replication.stores)
        self.assertEqual([job for job, *_ in soon.journal.replica_logs()], [job_id])
