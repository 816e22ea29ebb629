"""
Tests for following a job through another node (L{p2pexec.cli.commands.follow}):
when the connection to the node is lost during C{watch} or C{submit
--wait}, the client asks the other nodes it learned of (CLUSTER_STATUS) and
goes on; with recording doubles and a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.cli import commands as subcommands
from p2pexec.cli import errors
from p2pexec.cli.client import ClientError
from p2pexec.model import TaskSpec
from tests.cli_doubles import FakeNode, Harness, ns, summary

JOB = "m1-0123abcd-1"


def cluster(*peers: tuple[str, str, str]) -> dict[str, Any]:
    """A CLUSTER_STATUS answer of node m1 with C{peers} as (name, address, state)."""
    return {
        "node": {"name": "m1", "address": "127.0.0.1:10001", "state": "self"},
        "peers": [{"name": name, "address": address, "state": state} for name, address, state in peers],
    }


LOST = ClientError("lost the connection to 127.0.0.1:10001: the node closed it", lost=True)
UNKNOWN = ClientError(f"unknown job: node n2 is not the master of job {JOB!r} and knows no node that is")


class FollowThroughAnotherNodeTests(SynchronousTestCase):
    """The client follows the job to another node when its own is lost."""

    def test_watch_follows_through_the_next_node(self) -> None:
        """
        m1 is lost mid-job: the client tries n2 (refused), then n3, which
        knows the job; one line says so, and the job is followed to its
        end through n3, with its exit status.
        """
        n3 = FakeNode(
            {
                commands.JobStatus: [
                    {"status": summary(job=JOB, total=2, running=1, succeeded=1)},
                    {"status": summary(job=JOB, total=2, running=1, succeeded=1)},
                    {"status": summary(job=JOB, state="finished", total=2, succeeded=2)},
                ]
            },
            address="127.0.0.3:10003",
        )
        harness = Harness(
            {
                commands.ClusterStatus: [
                    cluster(
                        ("n2", "127.0.0.2:10002", "alive"), ("n3", "127.0.0.3:10003", "alive"), ("x", "1:1", "gone")
                    )
                ],
                commands.JobStatus: [{"status": summary(job=JOB, total=2, running=2)}, LOST],
            },
            others={"127.0.0.3:10003": n3},
        )
        d = harness.start(subcommands.do_watch, ns(job=JOB))
        self.assertNoResult(d)
        harness.clock.advance(subcommands.POLL_INTERVAL)
        self.assertNoResult(d)
        self.assertEqual(harness.connected, ["127.0.0.2:10002", "127.0.0.3:10003"])
        self.assertEqual(harness.stderr.getvalue(), f"p2pexec: lost node m1; following job {JOB} through n3\n")
        harness.clock.advance(subcommands.POLL_INTERVAL)
        self.assertNoResult(d)
        harness.clock.advance(subcommands.POLL_INTERVAL)
        self.assertEqual(self.successResultOf(d), errors.EXIT_OK)
        self.assertEqual(len(n3.sent(commands.JobStatus)), 3)
        self.assertEqual(harness.lines()[-1], f"job {JOB} finished: 2 succeeded, 0 failed in 1.0s")

    def test_submit_wait_follows(self) -> None:
        """submit --wait whose node is lost right after the submit follows the job through n2 and exits 1 on failure."""
        n2 = FakeNode(
            {commands.JobStatus: [{"status": summary(job=JOB, state="finished", total=2, succeeded=1, failed=1)}]},
            address="127.0.0.2:10002",
        )
        harness = Harness(
            {
                commands.SubmitJob: [{"upload": "", "job": JOB}],
                commands.ClusterStatus: [cluster(("n2", "127.0.0.2:10002", "alive"))],
                commands.JobStatus: [LOST],
            },
            others={"127.0.0.2:10002": n2},
        )
        d = harness.start(subcommands.do_submit, ns(job_tasks=[TaskSpec.instruction("a1")], wait=True))
        self.assertEqual(self.successResultOf(d), errors.EXIT_FAILED)
        self.assertIn(f"lost node m1; following job {JOB} through n2", harness.stderr.getvalue())
        self.assertEqual(harness.lines()[0], JOB)

    def test_no_other_node_knows_the_job(self) -> None:
        """Every other node is refused or does not know the job: one line naming each, exit 2."""
        n2 = FakeNode({commands.JobStatus: [UNKNOWN]}, address="127.0.0.2:10002")
        harness = Harness(
            {
                commands.ClusterStatus: [
                    cluster(("n2", "127.0.0.2:10002", "alive"), ("n3", "127.0.0.3:10003", "known"))
                ],
                commands.JobStatus: [LOST],
            },
            others={"127.0.0.2:10002": n2},
        )
        failure = self.failureResultOf(harness.start(subcommands.do_watch, ns(job=JOB)), errors.CliError)
        self.assertEqual(failure.value.status, errors.EXIT_USAGE)
        message = failure.value.message
        self.assertTrue(message.startswith(f"lost node m1 ({LOST.message}), and no other node knows job {JOB}"))
        self.assertIn("n2: unknown job", message)
        self.assertIn("n3: cannot connect to 127.0.0.3:10003", message)
        self.assertNotIn("\n", message)

    def test_not_lost_is_not_followed(self) -> None:
        """An error that is not a lost connection (an unknown job) ends following at once, as before."""
        harness = Harness(
            {commands.ClusterStatus: [cluster(("n2", "127.0.0.2:10002", "alive"))], commands.JobStatus: [UNKNOWN]},
            others={},
        )
        failure = self.failureResultOf(harness.start(subcommands.do_watch, ns(job=JOB)), ClientError)
        self.assertIs(failure.value, UNKNOWN)
        self.assertEqual(harness.connected, [])

    def test_older_node_without_cluster_status(self) -> None:
        """A node that cannot say its peers: the job is followed through it alone, and its loss ends it."""
        harness = Harness(
            {
                commands.ClusterStatus: [ClientError("the node at 127.0.0.1:10001 does not know CLUSTER_STATUS")],
                commands.JobStatus: [LOST],
            },
            others={},
        )
        failure = self.failureResultOf(harness.start(subcommands.do_watch, ns(job=JOB)), errors.CliError)
        self.assertIn("(it knew no other node)", failure.value.message)
