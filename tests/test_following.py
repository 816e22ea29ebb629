"""
Clients follow the job, on the node's side: a node that does not lead a
job forwards a client's JOB_STATUS, JOB_TASKS and CANCEL_JOB to the job's
master (FORWARD_CLIENT), answers from the replica records it holds, or says
what it knows (L{p2pexec.following}); on the in-memory network.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.auth import ChallengeResponse, authenticate
from p2pexec.replicas import Ballot

from .test_node import Cluster, text, w_tasks

KEY = b"k" * 32


class FollowingTests(SynchronousTestCase):
    """m1 masters a job that waits (nobody runs kind w); n2 and n3 are peers that do not lead it."""

    def setUp(self) -> None:
        self.cluster = Cluster()

    def start(self, **config: Any) -> str:
        """Start m1 (master of a waiting job), n2 and n3; return the job's id once all are connected."""
        cluster = self.cluster
        cluster.add_master(w_tasks(3), port=4001, **config)
        cluster.add("n2", port=4002, capabilities=frozenset(), **config)
        cluster.add("n3", port=4003, capabilities=frozenset(), **config)
        cluster.network.run_until(
            lambda: cluster.connected("n2", "m1") and cluster.connected("n3", "m1") and cluster.nodes["m1"].master.jobs,
            limit=10,
        )
        (job,) = cluster.nodes["m1"].master.jobs
        return job

    def client(self, port: int, key: bytes | None = None) -> amp.AMP:
        """An operator's client connected to the node on C{port} (authenticated with C{key}, if given)."""
        protocol = amp.AMP()
        factory = ClientFactory.forProtocol(lambda: protocol)
        self.cluster.network.host("127.0.0.99").connectTCP("127.0.0.1", port, factory)
        self.cluster.network.run(0.1)
        if key is not None:
            d = Deferred.fromCoroutine(authenticate(protocol, ChallengeResponse(key), lambda: b""))
            self.cluster.network.run(0.1)
            self.successResultOf(d)
        return protocol

    def ask(self, protocol: amp.AMP, command_type: type[amp.Command], **arguments: Any) -> Deferred[dict[str, Any]]:
        """Send a command and let the network carry it and its answer (kept, as AMP drops an unhandled failure)."""
        answer: Deferred[dict[str, Any]] = Deferred()
        protocol.callRemote(command_type, **arguments).addCallbacks(answer.callback, answer.errback)
        self.cluster.network.run(0.2)
        return answer

    def test_status_forwarded_to_the_master(self) -> None:
        """
        n2 has learned that m1 leads the job: a client's JOB_STATUS at n2 is
        answered with m1's summary, which names m1 and epoch 1.
        """
        job = self.start()
        self.cluster.nodes["n2"].directory.learn(job, Ballot(1, "m1"))
        answer = self.successResultOf(self.ask(self.client(4002), commands.JobStatus, job=job))
        summary = answer["status"]
        self.assertEqual((summary["id"], summary["master"], summary["epoch"]), (job, "m1", 1))
        self.assertEqual((summary["state"], summary["total"], summary["answered_by"]), ("running", 3, "master"))
        self.assertEqual(self.cluster.nodes["n2"].following.forwarded, 1)

    def test_tasks_forwarded_to_the_master(self) -> None:
        """JOB_TASKS at n2 pages through the master's tasks, as asked at m1."""
        job = self.start()
        self.cluster.nodes["n2"].directory.learn(job, Ballot(1, "m1"))
        client = self.client(4002)
        first = self.successResultOf(self.ask(client, commands.JobTasks, job=job, offset=0, limit=2))
        self.assertEqual([task["id"] for task in first["tasks"]], ["w0", "w1"])
        self.assertEqual(first["next"], 2)
        rest = self.successResultOf(self.ask(client, commands.JobTasks, job=job, offset=2, limit=2))
        self.assertEqual(([task["id"] for task in rest["tasks"]], rest["next"]), (["w2"], -1))

    def test_tasks_by_state(self) -> None:
        """
        JOB_TASKS with a state filter (one state, or several with commas)
        gives only those tasks, at the master and forwarded by n2; a state
        that is not one is BAD_ARGUMENTS, and the connection is kept.
        """
        job = self.start()
        self.cluster.nodes["n2"].directory.learn(job, Ballot(1, "m1"))
        for port in (4001, 4002):
            client = self.client(port)
            waiting = self.successResultOf(
                self.ask(client, commands.JobTasks, job=job, offset=1, limit=5, state="waiting")
            )
            self.assertEqual(([task["id"] for task in waiting["tasks"]], waiting["next"]), (["w1", "w2"], -1))
            ended = self.successResultOf(
                self.ask(client, commands.JobTasks, job=job, offset=0, limit=5, state="succeeded,failed,cancelled")
            )
            self.assertEqual((ended["tasks"], ended["next"]), ([], -1))
            failure = self.failureResultOf(
                self.ask(client, commands.JobTasks, job=job, offset=0, limit=5, state="done"), commands.BadArguments
            )
            self.assertIn("'done'", str(failure.value))
            still = self.successResultOf(self.ask(client, commands.JobTasks, job=job, offset=0, limit=5))
            self.assertEqual(len(still["tasks"]), 3)

    def test_cancel_forwarded_to_the_master(self) -> None:
        """A client's CANCEL_JOB at n2 cancels the job at m1, and m1's log names n2 as who asked."""
        job = self.start()
        self.cluster.nodes["n2"].directory.learn(job, Ballot(1, "m1"))
        with capturedLogs() as events:
            answer = self.successResultOf(self.ask(self.client(4002), commands.CancelJob, job=job))
        self.assertEqual(answer["cancelled"], 3)
        self.assertTrue(self.cluster.nodes["m1"].master.jobs[job].cancelled)
        self.assertTrue(any("asked by n2" in text(event) for event in events), [text(e) for e in events])

    def test_unknown_leader(self) -> None:
        """A node that knows nothing of the job says so: UNKNOWN_JOB, and the client's connection is kept."""
        self.start()
        client = self.client(4002)
        failure = self.failureResultOf(self.ask(client, commands.JobStatus, job="nope"), commands.UnknownJob)
        self.assertIn("node n2 is not the master of job 'nope' and knows no node that is", str(failure.value))
        self.assertEqual(self.successResultOf(self.ask(client, commands.ListJobs))["jobs"], [])

    def test_leader_not_connected(self) -> None:
        """
        n2 learned that m1 led the job, and m1 vanished: UNKNOWN_JOB says
        who led it, at which epoch, and that it is not connected.
        """
        job = self.start()
        self.cluster.nodes["n2"].directory.learn(job, Ballot(1, "m1"))
        self.cluster.hosts["m1"].crash()
        self.cluster.network.run(0.1)
        failure = self.failureResultOf(self.ask(self.client(4002), commands.JobStatus, job=job), commands.UnknownJob)
        self.assertEqual(str(failure.value), f"job {job} was led by m1 at epoch 1; m1 is not connected to node n2")

    def test_leader_no_longer_leads(self) -> None:
        """n2 thinks n3 leads the job, n3 does not: n2 passes on n3's answer, naming what it thought."""
        job = self.start()
        self.cluster.nodes["n2"].directory.learn(job, Ballot(2, "n3"))
        failure = self.failureResultOf(self.ask(self.client(4002), commands.JobStatus, job=job), commands.UnknownJob)
        self.assertIn(f"job {job} was led by n3 at epoch 2, which says: ", str(failure.value))
        self.assertIn("node n3 is not the master", str(failure.value))

    def test_forwarded_once_only(self) -> None:
        """
        A FORWARD_CLIENT is answered from the receiver's own jobs, never
        forwarded on: n3 thinks m1 leads the job, but asked by n2 over FORWARD_CLIENT
        about another job, it answers UNKNOWN_JOB without asking m1.
        """
        job = self.start()
        n3 = self.cluster.nodes["n3"]
        n3.directory.learn("elsewhere", Ballot(1, "m1"))
        n2_to_n3 = self.cluster.nodes["n2"].peers.get("n3").connection
        d = self.ask(n2_to_n3, commands.ForwardClient, command="JOB_STATUS", arguments={"job": "elsewhere"}, client="c")
        self.failureResultOf(d, commands.UnknownJob)
        self.assertEqual(n3.following.forwarded, 0)
        del job

    def test_answer_from_replica(self) -> None:
        """With the leader gone, a node holding the job's replica records answers from them, so marked."""
        job = self.start()
        n2 = self.cluster.nodes["n2"]
        n2.directory.learn(job, Ballot(1, "m1"))
        summary = self.cluster.nodes["m1"].views.job_status(job)
        n2.following.replicas = FixedReplicas(job, summary)
        self.cluster.hosts["m1"].crash()
        self.cluster.network.run(0.1)
        client = self.client(4002)
        answer = self.successResultOf(self.ask(client, commands.JobStatus, job=job))["status"]
        self.assertEqual((answer["id"], answer["answered_by"], answer["master"]), (job, "replica", "m1"))
        jobs = self.successResultOf(self.ask(client, commands.ListJobs))["jobs"]
        self.assertEqual([(entry["id"], entry["answered_by"]) for entry in jobs], [(job, "replica")])
        tasks = self.successResultOf(self.ask(client, commands.JobTasks, job=job, offset=0, limit=10))
        self.assertEqual((tasks["tasks"], tasks["next"]), ([{"id": "w0"}], -1))
        self.failureResultOf(self.ask(client, commands.CancelJob, job=job), commands.UnknownJob)

    def test_cancel_needs_the_local_token_on_the_first_node(self) -> None:
        """
        Without a cluster key, n2 takes a cancel only from a client that
        proved n2's local token, and does not ask m1 otherwise.
        """
        job = self.start(local_token=KEY)
        n2 = self.cluster.nodes["n2"]
        n2.directory.learn(job, Ballot(1, "m1"))
        self.failureResultOf(self.ask(self.client(4002), commands.CancelJob, job=job), commands.AuthRequired)
        self.assertEqual(n2.following.forwarded, 0)
        self.assertFalse(self.cluster.nodes["m1"].master.jobs[job].cancelled)

    def test_forwarded_cancel_refused_without_a_cluster_key(self) -> None:
        """
        Without a cluster key a peer proves nothing about its client: m1
        refuses a cancel forwarded by n2 (AUTH_REQUIRED, passed on), even
        from a client that proved n2's local token.
        """
        job = self.start(local_token=KEY)
        self.cluster.nodes["n2"].directory.learn(job, Ballot(1, "m1"))
        failure = self.failureResultOf(
            self.ask(self.client(4002, key=KEY), commands.CancelJob, job=job), commands.AuthRequired
        )
        self.assertIn("m1, the master of job", str(failure.value))
        self.assertFalse(self.cluster.nodes["m1"].master.jobs[job].cancelled)

    def test_forwarded_cancel_with_a_cluster_key(self) -> None:
        """With a cluster key, a peer proved it: a client that proved it to n2 cancels the job at m1."""
        job = self.start(key=KEY)
        self.cluster.nodes["n2"].directory.learn(job, Ballot(1, "m1"))
        answer = self.successResultOf(self.ask(self.client(4002, key=KEY), commands.CancelJob, job=job))
        self.assertEqual(answer["cancelled"], 3)


class FixedReplicas:
    """An L{IReplicaRecords} holding one job's summary and one task, as the failover core's journal would."""

    def __init__(self, job: str, summary: dict[str, Any]) -> None:
        self.job, self.summary = job, summary

    def replica_status(self, job: str) -> dict[str, Any] | None:
        """The summary, for the job held."""
        return dict(self.summary) if job == self.job else None

    def replica_tasks(
        self, job: str, offset: int, limit: int, states: frozenset[str] | None = None
    ) -> tuple[list[dict[str, Any]], int] | None:
        """One task, for the job held."""
        return ([{"id": "w0"}][offset : offset + limit], 1) if job == self.job else None

    def replica_jobs(self) -> list[dict[str, Any]]:
        """The one summary."""
        return [dict(self.summary)]
