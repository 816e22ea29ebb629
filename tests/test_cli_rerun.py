"""The C{rerun} subcommand and C{--node}/C{--all-nodes} of the client, against a scripted node."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.cli import commands as subcommands
from p2pexec.cli.parser import parse_arguments
from p2pexec.model import TaskSpec
from tests.cli_doubles import Harness, ns, summary


class RerunCommandTests(SynchronousTestCase):
    """p2pexec rerun --failed JOB."""

    def test_rerun_then_follow(self) -> None:
        """RERUN_TASKS, a line naming the tasks, then the job followed to its end (its exit status)."""
        harness = Harness(
            {
                commands.RerunTasks: [{"count": 2, "tasks": ["x", "y"]}],
                commands.JobStatus: [{"status": summary(job="j1", state="finished", total=4, succeeded=4)}],
            }
        )
        self.assertEqual(self.successResultOf(harness.start(subcommands.do_rerun, ns(job="j1"))), 0)
        self.assertEqual(harness.lines()[0], "job j1: 2 task(s) run again: x, y")
        self.assertEqual(harness.node.sent(commands.RerunTasks), [{"job": "j1", "which": "failed"}])

    def test_nothing_to_rerun(self) -> None:
        """Nothing to rerun: said, exit 0, nothing followed."""
        harness = Harness({commands.RerunTasks: [{"count": 0, "tasks": []}]})
        self.assertEqual(self.successResultOf(harness.start(subcommands.do_rerun, ns(job="j1"))), 0)
        self.assertIn("nothing to rerun", harness.lines()[0])
        self.assertEqual(harness.node.sent(commands.JobStatus), [])

    def test_placed_tasks(self) -> None:
        """--node pins the tasks that name no node; --all-nodes marks every task."""
        tasks = [TaskSpec(id="a", kind="sh"), TaskSpec(id="b", kind="sh", node="n1")]
        pinned = subcommands.placed_tasks(tasks, ns(node="n2", all_nodes=False))
        self.assertEqual([t.node for t in pinned], ["n2", "n1"])
        everywhere = subcommands.placed_tasks(tasks, ns(node=None, all_nodes=True))
        self.assertEqual([(t.node, t.all_nodes) for t in everywhere], [(None, True), (None, True)])

    def test_parser(self) -> None:
        """rerun needs --failed; --node takes a node name."""
        args = parse_arguments(["rerun", "--failed", "j1"])
        self.assertEqual((args.command, args.job, args.failed), ("rerun", "j1", True))
        args = parse_arguments(["submit", "--node", "b1", "--tasks", "a1"])
        self.assertEqual(args.node, "b1")
