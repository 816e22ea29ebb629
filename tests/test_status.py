"""Tests for L{p2pexec.status}: the views the API, the client and the dashboard share."""

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.model import TaskSpec

from .test_node import Cluster, w_tasks


class ViewTests(SynchronousTestCase):
    """The views of a small in-memory cluster."""

    def setUp(self):
        self.cluster = Cluster()
        self.master = self.cluster.add_master(
            w_tasks(6) + (TaskSpec(id="z1", kind="z"),), address="127.0.0.1", port=4001
        )
        self.cluster.add_worker("w1", address="127.0.0.2", port=4002, duration=1.0, slots=2)
        self.cluster.add_worker("w2", address="127.0.0.3", port=4003, duration=1.0, slots=2)
        self.cluster.network.run_until(
            lambda: self.cluster.runners["w1"].running and self.cluster.runners["w2"].running, limit=10
        )

    def test_peers_and_topology(self):
        """The master lists itself then its peers, alive with their load; links include what peers report."""
        self.master.peers_status()  # asks NODE_STATUS
        self.cluster.network.run(0.1)
        peers = self.master.peers_status()
        self.assertEqual([(p["name"], p["state"]) for p in peers], [("m1", "self"), ("w1", "alive"), ("w2", "alive")])
        self.assertEqual({p["name"]: p["busy"] for p in peers[1:]}, {"w1": 2, "w2": 2})
        links = {(link["source"], link["target"]) for link in self.master.topology_status()["links"]}
        self.assertEqual(links, {("m1", "w1"), ("m1", "w2"), ("w1", "w2")}, "w1-w2 is known from NODE_STATUS")

    def test_job_summary_counts_waiting_and_running(self):
        """Tasks of a kind nobody runs are waiting; assigned ones running; the summary adds up."""
        summary = self.master.jobs_status()[0]
        counts = summary["counts"]
        self.assertEqual(counts["waiting"], 1)
        self.assertEqual(counts["running"] + counts["pending"] + counts["succeeded"], 6)
        self.assertEqual(summary["total"], 7)
        self.assertEqual(summary["state"], "running")
        self.assertIsNone(summary["eta"], "no result yet, no rate yet")
        self.cluster.network.run(1.5)
        summary = self.master.job_status(summary["id"])
        self.assertGreater(summary["done"], 0)
        self.assertIsNotNone(summary["eta"])

    def test_tasks_page_filters(self):
        """A page filters by state and node, and counts every match."""
        job_id = self.master.jobs_status()[0]["id"]
        waiting, matched = self.master.job_tasks(job_id, state="waiting")
        self.assertEqual(([t["id"] for t in waiting], matched), (["z1"], 1))
        on_w1, matched = self.master.job_tasks(job_id, node="w1", limit=1)
        self.assertEqual(len(on_w1), 1)
        self.assertGreaterEqual(matched, 2)
        self.assertEqual({t["node"] for t in on_w1}, {"w1"})


class TaskEntryTests(SynchronousTestCase):
    """L{p2pexec.status.task_entry}: one task as JOB_TASKS and the API show it."""

    def record(self, result):
        """A finished task's record, as much of it as L{task_entry} reads."""
        from types import SimpleNamespace

        from p2pexec.task_states import TaskState

        return SimpleNamespace(
            spec=TaskSpec(id="t1", kind="sh"), state=TaskState.DONE, attempt=1, worker="w1", result=result
        )

    def test_started_and_signal_when_known(self):
        """A result's start time and signal are shown when known, and left out when not."""
        from p2pexec.model import TaskResult
        from p2pexec.status import task_entry

        known = TaskResult(task_id="t1", attempt=1, status="failed", node="w1", started=1_700_000_000.1234567, signal=9)
        entry = task_entry(self.record(known), frozenset())
        self.assertEqual((entry["started"], entry["signal"]), (1_700_000_000.123457, 9))
        entry = task_entry(self.record(TaskResult(task_id="t1", attempt=1, status="succeeded", node="w1")), frozenset())
        self.assertNotIn("started", entry)
        self.assertNotIn("signal", entry)

    def test_output_sizes_when_known(self):
        """A result's output sizes and cut flag are shown when known (a client reads the whole output by them)."""
        from p2pexec.model import TaskResult
        from p2pexec.status import task_entry

        known = TaskResult(
            task_id="t1", attempt=1, status="succeeded", node="w1", stdout_size=90000, stderr_size=0, output_cut=False
        )
        entry = task_entry(self.record(known), frozenset())
        self.assertEqual((entry["stdout_size"], entry["stderr_size"], entry["output_cut"]), (90000, 0, False))
        entry = task_entry(self.record(TaskResult(task_id="t1", attempt=1, status="succeeded", node="w1")), frozenset())
        self.assertNotIn("stdout_size", entry)
        self.assertNotIn("output_cut", entry)
