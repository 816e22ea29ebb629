"""
Tests for L{p2pexec.cli.commands}: exit statuses, and the subcommands
driven through a recording double of the node and a L{Clock}.  No
network, no real reactor.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.cli import commands as subcommands
from p2pexec.cli import errors, render
from p2pexec.model import TaskSpec
from tests.cli_doubles import Harness, ns, summary, task_entry


class ExitStatusTests(SynchronousTestCase):
    """0 only when every task succeeded."""

    def test_job(self) -> None:
        """A finished job of successes: 0; any failure or cancellation, or not finished: 1."""
        self.assertEqual(subcommands.job_exit_status(summary(state="finished", total=2, succeeded=2)), 0)
        self.assertEqual(subcommands.job_exit_status(summary(state="finished", total=2, succeeded=1, failed=1)), 1)
        self.assertEqual(subcommands.job_exit_status(summary(state="cancelled", total=2, succeeded=1, cancelled=1)), 1)
        self.assertEqual(subcommands.job_exit_status(summary(state="cancelled", total=2, succeeded=2)), 1)
        self.assertEqual(subcommands.job_exit_status(summary(state="running", total=2, succeeded=1, running=1)), 1)

    def test_tasks(self) -> None:
        """Every task succeeded: 0; a failed, cancelled or unfinished one: 1."""
        self.assertEqual(subcommands.tasks_exit_status([task_entry("a"), task_entry("b")]), 0)
        for state in ("failed", "cancelled", "running", "pending", "waiting"):
            self.assertEqual(subcommands.tasks_exit_status([task_entry("a"), task_entry("b", state)]), 1, state)


def submit_answers() -> Any:
    """SUBMIT_JOB answers: an upload id per part but the last, then the job id."""
    parts = []

    def answer(tasks: Any, defaults: Any, upload: str, final: bool, priority: Any = None) -> dict[str, Any]:
        parts.append(tasks)
        if final:
            return {"upload": "", "job": "a1-0123abcd-7"}
        return {"upload": f"up-{len(parts)}", "job": ""}

    return answer


class SubcommandTests(SynchronousTestCase):
    """The subcommands, against a recording node."""

    def test_submit_in_parts(self) -> None:
        """
        A job too big for one AMP value goes in several SUBMIT_JOB parts,
        each under MAX_VALUE_BYTES, each quoting the previous part's upload
        id, only the last one final; every task goes, in order.
        """
        harness = Harness({commands.SubmitJob: [submit_answers()]})
        tasks = [TaskSpec(id=f"t{n}", kind="sh", command=("echo", "x" * 200)) for n in range(1000)]
        status = self.successResultOf(harness.start(subcommands.do_submit, ns(job_tasks=tasks, wait=False)))
        self.assertEqual(status, 0)
        parts = harness.node.sent(commands.SubmitJob)
        self.assertGreater(len(parts), 2)
        sizes = [size["tasks"] for size in harness.node.sizes]
        self.assertTrue(all(size < commands.MAX_VALUE_BYTES for size in sizes), sizes)
        self.assertEqual([p["final"] for p in parts], [False] * (len(parts) - 1) + [True])
        self.assertEqual([p["upload"] for p in parts], [""] + [f"up-{n}" for n in range(1, len(parts))])
        self.assertEqual([t["id"] for p in parts for t in p["tasks"]], [t.id for t in tasks])
        self.assertEqual(harness.lines(), ["a1-0123abcd-7"])

    def test_small_job_in_one_part(self) -> None:
        """A small job is one final SUBMIT_JOB with the tasks' wire forms and no defaults."""
        harness = Harness({commands.SubmitJob: [submit_answers()]})
        tasks = [TaskSpec.instruction("a1"), TaskSpec.instruction("b1")]
        self.successResultOf(harness.start(subcommands.do_submit, ns(job_tasks=tasks, wait=False)))
        self.assertEqual(
            harness.node.sent(commands.SubmitJob),
            [
                {
                    "tasks": [{"id": "a1", "kind": "a"}, {"id": "b1", "kind": "b"}],
                    "defaults": {},
                    "upload": "",
                    "final": True,
                    "priority": None,
                }
            ],
        )

    def test_follow(self) -> None:
        """
        JOB_STATUS every 0.5 s until the job ends; plain lines on change, at
        most one a second; then how it ended, and a pointer to the results
        when some task failed; the job's exit status.
        """
        states = [
            summary(total=3, running=2, pending=1),  # t=0: a line
            summary(total=3, running=2, succeeded=1),  # t=0.5: a change, but too soon
            summary(total=3, running=2, succeeded=1),  # t=1.0: that change, now printed
            summary(total=3, running=1, succeeded=1, failed=1),  # t=1.5: too soon again
            summary(total=3, state="finished", succeeded=2, failed=1, elapsed=2.0),  # t=2.0: the end
        ]
        harness = Harness({commands.JobStatus: [{"status": s} for s in states]})
        d = harness.start(subcommands.do_watch, ns(job="a1-0123abcd-1"))
        for _ in range(4):
            self.assertNoResult(d)
            harness.clock.advance(subcommands.POLL_INTERVAL)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(len(harness.node.sent(commands.JobStatus)), 5)
        self.assertEqual(
            harness.lines(),
            [
                render.progress_line(states[0]),
                render.progress_line(states[2]),
                "job a1-0123abcd-1 finished: 2 succeeded, 1 failed in 2.0s",
                "the results of each task: p2pexec result a1-0123abcd-1",
            ],
        )

    def test_follow_a_finished_job(self) -> None:
        """A job already finished: only the last line, and 0 if every task succeeded."""
        harness = Harness({commands.JobStatus: [{"status": summary(state="finished", total=2, succeeded=2)}]})
        self.assertEqual(self.successResultOf(harness.start(subcommands.do_watch, ns(job="j"))), 0)
        self.assertEqual(harness.lines(), ["job a1-0123abcd-1 finished: 2 succeeded, 0 failed in 1.0s"])

    def test_follow_interrupted(self) -> None:
        """Cancelled (Ctrl-C), following stops with a note that the job goes on."""
        harness = Harness({commands.JobStatus: [{"status": summary(running=1)}]})
        d = harness.start(subcommands.do_watch, ns(job="a1-0123abcd-1"))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertIn("it goes on (p2pexec cancel a1-0123abcd-1 stops it)", harness.stderr.getvalue())

    def test_submit_wait(self) -> None:
        """submit --wait prints the id, then follows the job, and exits with its status."""
        harness = Harness(
            {
                commands.SubmitJob: [{"upload": "", "job": "a1-0123abcd-1"}],
                commands.JobStatus: [{"status": summary(state="cancelled", total=2, cancelled=2)}],
            }
        )
        d = harness.start(subcommands.do_submit, ns(job_tasks=[TaskSpec.instruction("a1")], wait=True))
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            harness.lines()[:2],
            ["a1-0123abcd-1", "job a1-0123abcd-1 was cancelled: 0 succeeded, 0 failed, 2 cancelled after 1.0s"],
        )

    def test_result_pages(self) -> None:
        """result asks JOB_TASKS page after page until next is -1, then prints every task and its tails."""
        pages = [
            {"tasks": [task_entry("a", stdout="1\n2\n3\n")], "next": 1},
            {"tasks": [task_entry("b", "failed", exit_code=2, stderr="boom\n")], "next": -1},
        ]
        harness = Harness(
            {
                commands.JobStatus: [{"status": summary(state="finished", total=2, succeeded=1, failed=1)}],
                commands.JobTasks: pages,
            }
        )
        status = self.successResultOf(
            harness.start(subcommands.do_result, ns(job="a1-0123abcd-1", json=False, lines=2))
        )
        self.assertEqual(status, 1)
        self.assertEqual([c["offset"] for c in harness.node.sent(commands.JobTasks)], [0, 1])
        lines = harness.lines()
        self.assertEqual(lines[0], "Job a1-0123abcd-1 (finished: 2/2 done, 1 succeeded, 1 failed, 1.0s):")
        self.assertTrue(lines[2].startswith("a "), lines)
        self.assertTrue(lines[3].startswith("b "), lines)
        self.assertEqual(
            lines[4:], ["a stdout (last 2 line(s)):", "  2", "  3", "b stderr (last 1 line(s)):", "  boom"]
        )

    def test_result_json(self) -> None:
        """result --json prints one document: the job's summary and every task."""
        tasks = [task_entry("a", stdout="hi\n")]
        harness = Harness(
            {
                commands.JobStatus: [{"status": summary(state="finished", total=1, succeeded=1)}],
                commands.JobTasks: [{"tasks": tasks, "next": -1}],
            }
        )
        status = self.successResultOf(harness.start(subcommands.do_result, ns(job="a1-0123abcd-1", json=True, lines=5)))
        self.assertEqual(status, 0)
        document = json.loads(harness.stdout.getvalue())
        self.assertEqual(document, {"job": summary(state="finished", total=1, succeeded=1), "tasks": tasks})

    def test_result_stuck_paging(self) -> None:
        """A node whose next offset does not move on is an error, not an endless loop."""
        harness = Harness(
            {
                commands.JobStatus: [{"status": summary()}],
                commands.JobTasks: [{"tasks": [], "next": 0}],
            }
        )
        failure = self.failureResultOf(
            harness.start(subcommands.do_result, ns(job="j", json=True, lines=5)), errors.CliError
        )
        self.assertIn("no progress", failure.value.message)

    def test_cancel(self) -> None:
        """cancel prints how many tasks CANCEL_JOB cancelled; 0 means the job had ended."""
        harness = Harness({commands.CancelJob: [{"cancelled": 4}, {"cancelled": 0}]})
        self.assertEqual(self.successResultOf(harness.start(subcommands.do_cancel, ns(job="j1"))), 0)
        self.assertEqual(self.successResultOf(harness.start(subcommands.do_cancel, ns(job="j1"))), 0)
        self.assertEqual(
            harness.lines(), ["job j1: 4 task(s) cancelled", "job j1: 0 tasks cancelled (it had already ended)"]
        )
        self.assertEqual(harness.node.sent(commands.CancelJob), [{"job": "j1", "epoch": None}] * 2)

    def test_status(self) -> None:
        """status shows every node seen, with its load, then the jobs."""
        me = {
            "name": "a1",
            "address": "127.0.0.1:10001",
            "capabilities": ["a"],
            "slots": 2,
            "busy": 1,
            "queued": 0,
            "state": "self",
            "last_heard": None,
        }
        peer = dict(
            me,
            name="b1",
            address="127.0.0.1:10002",
            capabilities=["b"],
            busy=None,
            queued=None,
            state="alive",
            last_heard=0.4,
        )
        harness = Harness(
            {
                commands.ClusterStatus: [{"node": me, "peers": [peer]}],
                commands.ListJobs: [{"jobs": [summary(state="finished", total=1, succeeded=1)]}],
            }
        )
        self.assertEqual(self.successResultOf(harness.start(subcommands.do_status, ns(json=False))), 0)
        lines = harness.lines()
        self.assertEqual(lines[0], "Nodes seen by a1 (127.0.0.1:10001):")
        self.assertEqual(lines[2].split(), ["a1", "127.0.0.1:10001", "a", "2", "1", "1", "0", "self", "-"])
        self.assertEqual(lines[3].split(), ["b1", "127.0.0.1:10002", "b", "2", "?", "?", "?", "alive", "0.4s", "ago"])
        self.assertEqual(lines[4], "Jobs of a1:")
        self.assertTrue(lines[6].startswith("a1-0123abcd-1  finished"), lines)

    def test_jobs_json(self) -> None:
        """jobs --json prints LIST_JOBS' list as it is."""
        jobs = [summary()]
        harness = Harness({commands.ListJobs: [{"jobs": jobs}]})
        self.assertEqual(self.successResultOf(harness.start(subcommands.do_jobs, ns(json=True))), 0)
        self.assertEqual(json.loads(harness.stdout.getvalue()), jobs)
