"""
Fault-injection integration tests: real C{twistd p2pexec} nodes on loopback,
hurt on purpose while a job runs.

A master is killed with SIGKILL and started again on its journal; a worker
is frozen with SIGSTOP until it is declared dead, then thawed; a task
outlives its timeout with children of its own; a job is cancelled while its
tasks run on three nodes; a node is started on a damaged journal, or on a
state directory another node holds.

Each task that matters writes a line to a side file when it starts
(C{echo "$P2PEXEC_TASK_ID $P2PEXEC_NODE $P2PEXEC_ATTEMPT" >> SIDE}), so that
the tests count real executions, not what the nodes say they did.  Each test
checks that its fault really struck mid-job, so that it can fail.  Like the
other integration tests these are synchronous on purpose: every wait is a
bounded poll (see L{tests.integration.cluster}).
"""

from __future__ import annotations

import ast
import os
import re
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterable

from tests.integration.cluster import TWISTD, Cluster, NodeProcess, read_runs, record_run
from tests.integration.test_cluster import (
    JOB_FINISHED,
    IntegrationTestCase,
    load_results,
    process_alive,
    shell_quote,
    write_job_file,
)

CONFIRMED = r"\] Master received confirmation for (\S+) from (\S+)$"


def read_pids(path: str) -> list[int]:
    """The pids written to C{path} by tasks, one a line (a half-written last line is skipped)."""
    try:
        with open(path) as f:
            return [int(line) for line in f.read().split("\n") if line.strip().isdigit()]
    except FileNotFoundError:
        return []


def _stat(pid: int) -> tuple[str, int, int]:
    """(state, process group, session) of C{pid}, from C{/proc/PID/stat}."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[2]), int(fields[3])


def exists(pid: int) -> bool:
    """Whether C{pid} is a process that has not died (a zombie has)."""
    try:
        return _stat(pid)[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return False


def group_members(leader: int) -> list[int]:
    """Every live process whose process group or session is C{leader}'s (a task's, started with setsid)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            state, group, session = _stat(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if state != "Z" and leader in (group, session):
            members.append(int(entry))
    return members


def kill_recorded(path: str, programs: Iterable[str] = ("sleep", "sh")) -> None:
    """
    Clean-up: SIGKILL every process whose pid a task wrote to C{path}, if it
    still runs one of C{programs} (so that a reused pid is left alone).
    Tasks run in sessions of their own: when a test fails, or kills a node,
    they may still run when it ends.
    """
    for pid in read_pids(path):
        if any(process_alive(pid, program) for program in programs):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def touch(path: str) -> None:
    """Create C{path} if it is missing."""
    with open(path, "a"):
        pass


def hold_on_w1(test: IntegrationTestCase, cluster: Cluster, side: str, others_sleep: float) -> tuple[str, str, str]:
    """
    Set up a task command that holds its tasks on node w1: there each task
    records its pid and waits for a release file (at most ~30 s); on other
    nodes it sleeps C{others_sleep} seconds.  Every run is recorded in
    C{side}.  Registers the clean-ups (release the waiters, then kill what
    is left) and returns (pid file, release file, command).
    """
    pids = cluster.path("w1.pids")
    release = cluster.path("release")
    test.addCleanup(kill_recorded, pids)
    test.addCleanup(touch, release)  # Runs first: the waiting shells end by themselves.
    command = (
        f'{record_run(side)}; if [ "$P2PEXEC_NODE" = w1 ]; then echo $$ >> {shell_quote(pids)}; n=0; '
        f"while [ ! -e {shell_quote(release)} ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; "
        f"else sleep {others_sleep}; fi"
    )
    return pids, release, command


def wait_for_held(cluster: Cluster, w1: NodeProcess, pids: str, side: str) -> list[str]:
    """
    Wait until w1 runs two tasks held by L{hold_on_w1}'s command, and return
    the ids of every task w1 was instructed to run so far.
    """
    cluster.wait_until(
        lambda: len(read_pids(pids)) >= 2,
        lambda: f"w1 is not running two tasks; side file: {read_runs(side)}\n{cluster.logs()}",
    )
    return [
        task
        for match in w1.find_all(r"\] Node w1 received instructions: (\[.*\])$")
        for task in ast.literal_eval(match.group(1))
    ]


class MasterRestartTests(IntegrationTestCase):
    """A master killed mid-job and started again on the same state directory."""

    TASKS = 40

    def test_master_killed_mid_job_resumes_from_its_journal(self) -> None:
        """
        The master of a 40-task job is killed with SIGKILL once some results
        are confirmed, then started again with the same command line and
        --state-dir.  It says it resumed the job from its journal (the same
        job id, not a new job), the job completes with every task succeeded,
        and no task whose confirmation the first master had logged runs
        again.  Every node runs with --replicas 0: the journal alone, no
        successor takes the job over meanwhile (test_failover does that).
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        ids = [f"t{n:02d}" for n in range(self.TASKS)]
        write_job_file(
            job_file,
            {"kind": "w", "shell": True, "command": f"{record_run(side)}; sleep 0.25"},
            [{"id": task_id} for task_id in ids],
        )
        w1 = cluster.start("w1", "--capabilities", "w", "--slots", "2", "--replicas", "0")
        w2 = cluster.start("w2", "--capabilities", "w", "--slots", "2", "--replicas", "0")
        first = cluster.start(
            "m",
            "--capabilities",
            "none",
            "--job",
            job_file,
            "--results",
            results,
            "--exit-when-done",
            "--replicas",
            "0",
        )
        job_id = first.wait_for(r"\] Node m is master of job (\S+): 40 task\(s\)").group(1)
        cluster.wait_until(
            lambda: len(first.find_all(CONFIRMED)) >= 8,
            lambda: f"the master confirmed fewer than 8 tasks\n{cluster.logs()}",
        )
        first.send_signal(signal.SIGKILL)
        self.assertEqual(first.wait_exit(5), -signal.SIGKILL)

        confirmed = {match.group(1) for match in first.find_all(CONFIRMED)}
        self.assertFalse(first.has(JOB_FINISHED), "the job finished before the kill: the test proves nothing")
        self.assertFalse(os.path.exists(results), "the results file was written before the kill")
        self.assertLess(len(confirmed), self.TASKS, first.log_tail())
        # A batch line would hide the ids of what was confirmed.
        self.assertFalse(first.has(r"Master received confirmations for \d+ tasks"), first.log_tail())

        restarted = cluster.launch("m", first.argv)
        restarted.wait_for(
            rf"\] Node m resumes job {re.escape(job_id)}: it is the job it was started with, unfinished when "
            r"this node last stopped$"
        )
        resumed = restarted.wait_for(
            rf"\] Node m resumed job {re.escape(job_id)} from its journal: (\d+) of 40 task\(s\) done, "
            r"(\d+) were out on workers, (\d+) pending$"
        )
        done, out, pending = (int(n) for n in resumed.group(1, 2, 3))
        self.assertEqual(done + out + pending, self.TASKS, resumed.group(0))
        self.assertGreater(done, 0, resumed.group(0))
        finished = restarted.wait_for(JOB_FINISHED, timeout=15)
        self.assertEqual(finished.group(1), job_id, "the restarted master ran a new job instead of resuming")
        self.assertEqual(finished.group(2, 3), (str(self.TASKS), "0"), restarted.log_tail())
        self.assertEqual(restarted.wait_exit(10), 0, restarted.log_tail())
        self.assertFalse(restarted.has(r"\] Node m is master of job "), "the job was submitted again")
        # The workers were asked what became of the tasks they held.
        self.assertTrue(
            any(
                worker.has(rf"\] Node {worker.name} told master m about \d+ task\(s\) of job {re.escape(job_id)}: ")
                for worker in (w1, w2)
            ),
            cluster.logs(),
        )

        runs = read_runs(side)
        counts = Counter(task_id for task_id, _, _ in runs)
        self.assertEqual(set(counts), set(ids), "some task never ran")
        rerun = sorted(task_id for task_id in confirmed if counts[task_id] != 1)
        self.assertEqual(rerun, [], f"tasks confirmed before the kill ran again: {[r for r in runs if r[0] in rerun]}")
        self.assertLessEqual(max(counts.values()), 2, counts)

        report = self.results_of(restarted, results)
        self.assertEqual(report["job"], job_id)
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (self.TASKS, self.TASKS, 0))
        for task in report["tasks"]:
            self.assertEqual((task["status"], task["state"]), ("succeeded", "done"), task)
            # The result that counts comes from an attempt that really ran, where it says.
            self.assertIn((task["id"], task["node"], task["attempts"]), runs, task)
        for node in (restarted, w1, w2):
            self.assertLogClean(node)


class FrozenWorkerTests(IntegrationTestCase):
    """A worker frozen with SIGSTOP mid-job, then thawed with SIGCONT."""

    def test_frozen_worker_is_declared_dead_and_its_late_results_are_stale(self) -> None:
        """
        Of two workers, w1 is frozen (SIGSTOP) while it runs two tasks: the
        master declares it dead within the 2.5 s heartbeat timeout (plus
        slack), puts its tasks back, and w2 runs them, so the job finishes
        with every task succeeded while w1 is still frozen.  Thawed (SIGCONT)
        and reconnected, w1 finishes its old attempts and confirms them: the
        master drops them as stale, and each task's result stays the one of
        the node that finished it.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        # On w1 a task waits for the release file, so that its old attempt
        # ends only once w1 is thawed and connected again.
        pids, release, command = hold_on_w1(self, cluster, side, 0.2)
        ids = [f"t{n}" for n in range(8)]
        write_job_file(job_file, {"kind": "w", "shell": True, "command": command}, [{"id": i} for i in ids])
        w1 = cluster.start("w1", "--capabilities", "w", "--slots", "2")
        w2 = cluster.start("w2", "--capabilities", "w", "--slots", "2")
        m = cluster.start("m", "--capabilities", "none", "--job", job_file, "--results", results)
        held = wait_for_held(cluster, w1, pids, side)
        started_on_w1 = [task_id for task_id, node, _ in read_runs(side) if node == "w1"]

        frozen_at = time.monotonic()
        w1.send_signal(signal.SIGSTOP)
        self.assertFalse(m.has(JOB_FINISHED), "the job finished before w1 was frozen: the test proves nothing")
        dead = m.wait_for(
            r"\] Node m declared peer w1 dead: silent for ([\d.]+)s \(timeout 2\.5s\); closing the connection$",
            timeout=8,
        )
        detected_after = time.monotonic() - frozen_at
        self.assertLessEqual(detected_after, 4.0, f"w1 declared dead {detected_after:.2f}s after SIGSTOP")
        self.assertGreaterEqual(detected_after, 1.5, f"w1 declared dead {detected_after:.2f}s after SIGSTOP")
        self.assertTrue(2.5 <= float(dead.group(1)) <= 4.0, dead.group(0))
        put_back = m.wait_for(
            r"\] Node m put (\d+) unconfirmed task\(s\) of job \S+ back in the queue: worker w1 lost its connection$"
        )
        # Everything w1 held was unconfirmed (an assignment still in its socket may add to it).
        self.assertGreaterEqual(int(put_back.group(1)), len(held), f"w1 held {held}")

        finished = m.wait_for(JOB_FINISHED, timeout=10)
        self.assertEqual(finished.group(2, 3), ("8", "0"), m.log_tail())
        self.assertEqual(_stat(w1.pid)[0], "T", "w1 was not frozen when the job finished")
        report = self.results_of(m, results)
        runs = read_runs(side)
        self.assertEqual([t for t, node, _ in runs if node == "w1"], started_on_w1, "w1 ran something while frozen")
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (8, 8, 0))
        for task in report["tasks"]:
            self.assertEqual((task["status"], task["state"]), ("succeeded", "done"), task)
            self.assertIn((task["id"], task["node"], task["attempts"]), runs, task)
            if task["id"] in held:
                self.assertEqual((task["node"], task["attempts"]), ("w2", 2), task)

        w1.send_signal(signal.SIGCONT)
        m.wait_for(r"\] Node m connected to peer w1 at ", count=2)
        touch(release)
        for task_id in started_on_w1:
            m.wait_for(rf"\] Node m dropped a stale result for {task_id} of job \S+ \(attempt 1\) from w1: .+$")
        stale = {
            match.group(1)
            for match in m.find_all(r"\] Node m dropped a stale result for (\S+) of job \S+ \(attempt 1\) from w1: .+$")
        }
        self.assertLessEqual(stale, set(held), "a stale confirmation for a task w1 never held")
        self.assertFalse(m.has(r"dropped a stale result for \S+ of job \S+ \(attempt \d+\) from w2: "), m.log_tail())
        self.assertEqual(load_results(results), report, "the late results changed the results file")
        for task_id in held:
            self.assertFalse(
                m.has(rf"\] Master received confirmation for {task_id} from w1$"), f"w1's late {task_id} applied"
            )
        self.stop_all(cluster)
        for node in (m, w1, w2):
            self.assertLogClean(node)


class TimeoutTests(IntegrationTestCase):
    """A task past its timeout is killed with every process it started."""

    def test_timeout_kills_the_task_and_its_children(self) -> None:
        """
        Three shell tasks with a 1 s timeout start children and wait: two
        plain C{sleep 300}s; a child that ignores SIGTERM and keeps the
        task's output pipes; and a child that ignores SIGTERM and sends its
        output elsewhere.  Each ends timed-out, and afterwards none of the
        processes they started is left, and no process is left in any of
        their process groups (SIGTERM first, SIGKILL 5 s later for what
        ignores it).
        """
        cluster = Cluster(self)
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        pid_files = {name: cluster.path(f"{name}.pids") for name in ("children", "stubborn", "detached")}
        for path in pid_files.values():
            self.addCleanup(kill_recorded, path)

        def record(name: str, what: str) -> str:
            return f"echo {what} >> {shell_quote(pid_files[name])}"

        stubborn_child = "(trap '' TERM; exec sleep 300)"
        tasks = [
            {
                "id": "children",
                "command": (
                    f"sleep 300 & {record('children', '$!')}; sleep 300 & {record('children', '$!')}; "
                    f"{record('children', '$$')}; wait"
                ),
            },
            {
                "id": "stubborn",
                "command": (f"{stubborn_child} & {record('stubborn', '$!')}; {record('stubborn', '$$')}; wait"),
            },
            {
                "id": "detached",
                "command": (
                    f"{stubborn_child} </dev/null >/dev/null 2>&1 & {record('detached', '$!')}; "
                    f"{record('detached', '$$')}; wait"
                ),
            },
        ]
        write_job_file(job_file, {"kind": "sh", "shell": True, "timeout": 1}, tasks)
        node = cluster.start(
            "t1",
            "--capabilities",
            "sh",
            "--slots",
            "3",
            "--job",
            job_file,
            "--results",
            results,
            "--exit-when-done",
        )
        finished = node.wait_for(JOB_FINISHED, timeout=15)
        self.assertEqual(finished.group(2, 3), ("0", "3"), node.log_tail())
        report = self.results_of(node, results)
        for task_id in pid_files:
            task = report["by_id"][task_id]
            self.assertEqual((task["status"], task["node"]), ("timed-out", "t1"), task)
            self.assertIn("timed out after 1s", task["error"])
        self.assertLess(report["by_id"]["children"]["duration"], 3.0, report["by_id"]["children"])
        # The stubborn child holds the output pipes, so the task ends when it is SIGKILLed.
        self.assertGreaterEqual(report["by_id"]["stubborn"]["duration"], 4.5, report["by_id"]["stubborn"])

        recorded = {name: read_pids(path) for name, path in pid_files.items()}
        for name, pids in recorded.items():
            self.assertEqual(len(pids), 3 if name == "children" else 2, f"{name} recorded {pids}")

        def leftovers() -> dict[str, list[int]]:
            left = {}
            for name, pids in recorded.items():
                leader = pids[-1]  # The shell, which leads the task's session and group.
                alive = sorted(set(pid for pid in pids if exists(pid)) | set(group_members(leader)))
                if alive:
                    left[name] = alive
            return left

        def describe() -> str:
            lines = []
            for name, pids in leftovers().items():
                for pid in pids:
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            argv = f.read().replace(b"\0", b" ").decode()
                    except OSError:
                        argv = "?"
                    lines.append(f"task {name}: pid {pid} ({argv.strip()}) {_stat(pid) if exists(pid) else ''}")
            return "processes of timed-out tasks still alive (state, group, session):\n" + "\n".join(lines)

        # The job ended after the stubborn child's SIGKILL, 5 s after the
        # SIGTERMs: anything the timeouts were going to kill is dead by now.
        cluster.wait_until(lambda: not leftovers(), describe, timeout=2)
        self.assertEqual(node.wait_exit(10), 0, node.log_tail())
        self.assertLogClean(node)

    def test_nothing_of_a_task_outlives_it_or_the_node(self) -> None:
        """
        Two shell tasks leave a child that ignores SIGTERM behind, output
        sent elsewhere: one times out at once, the other exits 0 at once.
        The node (--exit-when-done) finishes the job and exits 0, and by then
        neither child is left: a task's leftovers are stopped when it ends,
        and the node waits for their SIGKILL before it goes.
        """
        cluster = Cluster(self)
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        pid_files = {name: cluster.path(f"{name}.pids") for name in ("timed-out", "exited")}
        for path in pid_files.values():
            self.addCleanup(kill_recorded, path)
        stubborn_child = "(trap '' TERM; exec sleep 300) </dev/null >/dev/null 2>&1 &"
        tasks = [
            {
                "id": "timed-out",
                "timeout": 0.5,
                "command": f"{stubborn_child} echo $! > {shell_quote(pid_files['timed-out'])}; sleep 300",
            },
            {"id": "exited", "command": f"{stubborn_child} echo $! > {shell_quote(pid_files['exited'])}"},
        ]
        write_job_file(job_file, {"kind": "sh", "shell": True}, tasks)
        node = cluster.start(
            "t1",
            "--capabilities",
            "sh",
            "--slots",
            "2",
            "--job",
            job_file,
            "--results",
            results,
            "--exit-when-done",
        )
        self.assertEqual(node.wait_exit(30), 0, node.log_tail())
        report = self.results_of(node, results)
        self.assertEqual(
            (report["by_id"]["timed-out"]["status"], report["by_id"]["exited"]["status"]),
            ("timed-out", "succeeded"),
            report["by_id"],
        )
        children = {name: read_pids(path) for name, path in pid_files.items()}
        self.assertEqual([len(pids) for pids in children.values()], [1, 1], children)
        cluster.wait_until(
            lambda: not any(exists(pids[0]) for pids in children.values()),
            lambda: f"left running after the node exited: {children}\n{node.log_tail()}",
            timeout=2,
        )
        self.assertTrue(node.has(r"task exited of job \S+ ended and left processes running; stopping them"))
        self.assertLogClean(node)


class OrphanTests(IntegrationTestCase):
    """A node's task processes do not outlive it, nor run beside their re-run."""

    def test_task_processes_die_with_a_killed_node(self) -> None:
        """
        A node runs two shell tasks, each with a child of its own and a child
        that ignores SIGTERM.  The node is killed with SIGKILL: every process
        the tasks started is gone within the 5 s grace (plus slack), and the
        node's task guard said so in the node's log.
        """
        cluster = Cluster(self)
        job_file = cluster.path("job.toml")
        pids = cluster.path("pids")
        self.addCleanup(kill_recorded, pids)
        record = f">> {shell_quote(pids)}"
        command = (
            f"sleep 30 & echo $! {record}; (trap '' TERM; exec sleep 30) & echo $! {record}; echo $$ {record}; wait"
        )
        write_job_file(job_file, {"kind": "sh", "shell": True, "command": command}, [{"id": "o1"}, {"id": "o2"}])
        node = cluster.start("t1", "--capabilities", "sh", "--slots", "2", "--job", job_file)
        cluster.wait_until(lambda: len(read_pids(pids)) >= 6, lambda: f"the tasks did not start\n{node.log_tail()}")
        recorded = read_pids(pids)
        self.assertTrue(all(exists(pid) for pid in recorded), recorded)
        node.send_signal(signal.SIGKILL)
        self.assertEqual(node.wait_exit(5), -signal.SIGKILL)
        cluster.wait_until(
            lambda: not any(exists(pid) for pid in recorded),
            lambda: (
                f"task processes outlived their node: {[pid for pid in recorded if exists(pid)]}\n{node.log_tail()}"
            ),
            timeout=9,
        )
        node.wait_for(
            r"the task guard of node t1: the node ended with 2 task process group\(s\) running; stopping them"
        )

    def test_restarted_master_does_not_rerun_a_task_beside_its_first_copy(self) -> None:
        """
        A master runs its own two tasks, each of which leaves a child that
        ignores SIGTERM; it is SIGKILLed and started again at once on its
        state directory.  It kills what its earlier run left (one log line
        per task process group) before it runs anything: each task's second
        attempt, which looks for live processes of the first when it starts,
        finds none, and the job finishes.
        """
        cluster = Cluster(self)
        job_file = cluster.path("job.toml")
        pids = cluster.path("pids")
        runs = cluster.path("runs")
        overlaps = cluster.path("overlaps")
        checker = cluster.path("check.py")
        self.addCleanup(kill_recorded, pids)
        with open(checker, "w") as f:
            f.write(_OVERLAP_CHECK)
        command = (
            f"{shell_quote(sys.executable)} {shell_quote(checker)} {shell_quote(runs)} {shell_quote(overlaps)}; "
            f'echo "$P2PEXEC_ATTEMPT $$ leader" >> {shell_quote(runs)}; echo $$ >> {shell_quote(pids)}; '
            f'[ "$P2PEXEC_ATTEMPT" -gt 1 ] && exit 0; '
            f"(trap '' TERM; exec sleep 30) & echo \"$P2PEXEC_ATTEMPT $! child\" >> {shell_quote(runs)}; "
            f"echo $! >> {shell_quote(pids)}; wait"
        )
        write_job_file(job_file, {"kind": "sh", "shell": True, "command": command}, [{"id": "r1"}, {"id": "r2"}])
        options = ("--capabilities", "sh", "--slots", "2", "--job", job_file, "--exit-when-done")
        first = cluster.start("m", *options)
        cluster.wait_until(lambda: len(read_pids(pids)) >= 4, lambda: f"the tasks did not start\n{first.log_tail()}")
        first.send_signal(signal.SIGKILL)
        self.assertEqual(first.wait_exit(5), -signal.SIGKILL)

        restarted = cluster.launch("m", first.argv)
        self.assertEqual(restarted.wait_exit(20), 0, restarted.log_tail())
        attempts = Counter(line.split()[0] for line in _lines(runs))
        self.assertEqual(attempts, Counter({"1": 4, "2": 2}), _lines(runs))
        self.assertEqual(_lines(overlaps), [], "a task's re-run started while its first copy still ran")
        killed = [
            int(match.group(1))
            for match in restarted.find_all(
                r"\] Node m: task process group (\d+) \(.*\) of an earlier run of this node was still running; "
                r"killed it \(SIGKILL\) before taking up any work$"
            )
        ]
        # Each first attempt's shell left the group on the guard's SIGTERM; its child, which ignores it, did not.
        leaders = sorted(int(line.split()[1]) for line in _lines(runs) if line.split()[::2] == ["1", "leader"])
        self.assertEqual(sorted(killed), leaders, restarted.log_tail())
        self.assertLogClean(restarted)


_OVERLAP_CHECK = r"""
import os, sys
runs, overlaps = sys.argv[1], sys.argv[2]
mine = int(os.environ["P2PEXEC_ATTEMPT"])

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False

try:
    with open(runs) as f:
        lines = [line.split()[:2] for line in f if len(line.split()) == 3]
except FileNotFoundError:
    lines = []
with open(overlaps, "a") as out:
    for attempt, pid in lines:
        if int(attempt) < mine and alive(int(pid)):
            out.write(f"{os.environ['P2PEXEC_TASK_ID']} attempt {mine} started while pid {pid} of attempt {attempt} ran\n")
"""
"""A task's first step: note in OVERLAPS every live process of an earlier attempt listed in RUNS."""


def _lines(path: str) -> list[str]:
    """The non-empty lines of C{path} (none if it is missing)."""
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


class HangUpTests(IntegrationTestCase):
    """SIGHUP to a C{twistd -n} node."""

    def test_hangup_in_the_foreground_drains_and_exits_0(self) -> None:
        """
        A node logging to standard output gets SIGHUP (its terminal hung up)
        while two tasks run: it says so in one line, lets them finish (each
        writes a line when done), exits 0, and leaves no process of theirs.
        """
        cluster = Cluster(self)
        job_file = cluster.path("job.toml")
        pids = cluster.path("pids")
        done = cluster.path("done")
        self.addCleanup(kill_recorded, pids)
        command = (
            f"echo $$ >> {shell_quote(pids)}; sleep 1.5 & echo $! >> {shell_quote(pids)}; wait; "
            f"echo $P2PEXEC_TASK_ID >> {shell_quote(done)}"
        )
        write_job_file(job_file, {"kind": "sh", "shell": True, "command": command}, [{"id": "h1"}, {"id": "h2"}])
        node = cluster.start("t1", "--capabilities", "sh", "--slots", "2", "--job", job_file)
        cluster.wait_until(lambda: len(read_pids(pids)) >= 4, lambda: f"the tasks did not start\n{node.log_tail()}")
        node.send_signal(signal.SIGHUP)
        node.wait_for(
            r"\] Node t1 received SIGHUP \(its terminal hung up\): leaving the cluster, as on SIGTERM$", timeout=5
        )
        self.assertEqual(node.wait_exit(10), 0, node.log_tail())
        self.assertTrue(node.has(r"\] Node t1 is leaving: waiting up to 30s for 2 running task\(s\)$"), node.log_tail())
        self.assertTrue(node.has(r"\] Node t1 stopped$"), node.log_tail())
        self.assertEqual(sorted(_lines(done)), ["h1", "h2"], "the running tasks were not let finish")
        recorded = read_pids(pids)
        cluster.wait_until(
            lambda: not any(exists(pid) for pid in recorded),
            lambda: f"left running: {[pid for pid in recorded if exists(pid)]}",
            timeout=2,
        )
        self.assertLogClean(node)

    def test_hangup_with_a_log_file_reopens_it(self) -> None:
        """
        A node run with twistd's --logfile gets SIGHUP after its log file was
        moved away (as log rotation does): it keeps running, and writes to a
        new file at the same path, starting with a line saying it reopened
        it.  SIGTERM then stops it with exit 0.
        """
        cluster = Cluster(self)
        log_file = cluster.path("node.log")
        argv = [
            TWISTD,
            "--pidfile=",
            "-n",
            f"--logfile={log_file}",
            "p2pexec",
            "--name",
            "t1",
            "--port",
            "0",
            "--group",
            cluster.group_option,
            "--cluster",
            cluster.cluster_name,
            "--state-dir",
            cluster.state_dir("t1"),
        ]
        node = cluster.launch("t1", argv)

        def logged(path: str, pattern: str) -> bool:
            return bool(re.search(pattern, "\n".join(_lines(path)), re.MULTILINE))

        cluster.wait_until(
            lambda: logged(log_file, r"\] Node t1 started on port \d+$"),
            lambda: f"no start-up line in {log_file}: {_lines(log_file)[-5:]}\n{node.log_tail()}",
        )
        os.rename(log_file, log_file + ".1")
        node.send_signal(signal.SIGHUP)
        cluster.wait_until(
            lambda: logged(log_file, r"\] Node t1 received SIGHUP: reopened its log file .*node\.log$"),
            lambda: f"no reopening line in a new {log_file}: {_lines(log_file)}\n{node.log_tail()}",
            timeout=5,
        )
        self.assertTrue(node.running(), node.log_tail())
        self.assertFalse(logged(log_file + ".1", r"received SIGHUP"), _lines(log_file + ".1")[-5:])
        node.send_signal(signal.SIGTERM)
        self.assertEqual(node.wait_exit(10), 0, node.log_tail())
        cluster.wait_until(lambda: logged(log_file, r"\] Node t1 stopped$"), lambda: str(_lines(log_file)[-5:]))


class CancelTests(IntegrationTestCase):
    """CANCEL_JOB from an operator's client while the job runs on three nodes."""

    TASKS = 14

    def test_cancel_stops_the_job_everywhere(self) -> None:
        """
        A job of long tasks runs on the master and two workers (two slots
        each: six running, more queued and pending).  A plain AMP client
        sends CANCEL_JOB to the master: the answer counts the 14 tasks
        cancelled, the master logs the job as cancelled, each node logs what
        it stopped, every task process is gone within seconds and no other
        task starts, and the results file shows every task cancelled.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        pids = cluster.path("tasks.pids")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        self.addCleanup(kill_recorded, pids, ("sleep",))
        command = f"{record_run(side)}; echo $$ >> {shell_quote(pids)}; exec sleep 300"
        write_job_file(
            job_file,
            {"kind": "w", "shell": True, "command": command},
            [{"id": f"t{n:02d}"} for n in range(self.TASKS)],
        )
        workers = [cluster.start(name, "--capabilities", "w", "--slots", "2") for name in ("w1", "w2")]
        m = cluster.start("m", "--capabilities", "w", "--slots", "2", "--job", job_file, "--results", results)
        job_id = m.wait_for(r"\] Node m is master of job (\S+): ").group(1)
        cluster.wait_until(
            lambda: len(read_pids(pids)) >= 6 and len(read_runs(side)) >= 6,
            lambda: f"fewer than 6 tasks running; side file: {read_runs(side)}\n{cluster.logs()}",
        )
        running = read_pids(pids)
        started = read_runs(side)
        self.assertEqual(len(running), 6, started)  # Every slot is busy: nothing else can start.
        self.assertEqual(Counter(node for _, node, _ in started), Counter({"m": 2, "w1": 2, "w2": 2}))
        self.assertFalse(m.has(JOB_FINISHED))

        answer = cluster.call_remote(m.port, "CancelJob", job=job_id)
        self.assertEqual(answer, {"cancelled": self.TASKS})
        m.wait_for(
            rf"#warn\] Node m cancelled job {re.escape(job_id)} \(asked by [^)]+\): {self.TASKS} task\(s\) "
            r"without a result will not run; stopping them on m, w1, w2$"
        )
        m.wait_for(rf"\] Job {re.escape(job_id)} was cancelled: 0 succeeded, {self.TASKS} failed, ")
        for node in [m] + workers:
            stopped = node.wait_for(
                rf"\] Node {node.name} cancelled job {re.escape(job_id)} of master m: (\d+) queued task\(s\) "
                r"dropped, (\d+) running task\(s\) stopped$"
            )
            self.assertEqual(stopped.group(2), "2", stopped.group(0))
        cluster.wait_until(
            lambda: not [pid for pid in running if exists(pid)],
            lambda: f"task processes still alive: {[pid for pid in running if exists(pid)]}",
            timeout=8,
        )
        self.assertEqual(read_pids(pids), running, "a task started after the job was cancelled")
        self.assertEqual(read_runs(side), started, "a task started after the job was cancelled")

        report = self.results_of(m, results)
        self.assertEqual(report["job"], job_id)
        self.assertTrue(report["cancelled"], report)
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (self.TASKS, 0, self.TASKS))
        for task in report["tasks"]:
            self.assertEqual((task["status"], task["state"]), ("cancelled", "done"), task)
        # Cancelling again cancels nothing; an unknown job is a declared error.
        self.assertEqual(cluster.call_remote(m.port, "CancelJob", job=job_id), {"cancelled": 0})
        self.assertEqual(cluster.call_remote(m.port, "CancelJob", job="no-such-job").get("error"), "UnknownJob")
        self.stop_all(cluster)
        for node in [m] + workers:
            self.assertFalse(node.has(r"Master received confirmation"), node.log_tail())
            self.assertLogClean(node)


class StateDirectoryTests(IntegrationTestCase):
    """A node refuses a journal it cannot trust, and a state directory in use."""

    def _start_on(self, cluster: Cluster, state_dir: str, name: str = "n1") -> tuple[int, list[str], str]:
        """Run a node on C{state_dir} to its end: (status, non-blank output lines, output)."""
        status, output = cluster.run_once(
            "--name",
            name,
            "--port",
            "0",
            "--group",
            cluster.group_option,
            "--cluster",
            cluster.cluster_name,
            "--state-dir",
            state_dir,
            timeout=10,
        )
        return status, [line for line in output.splitlines() if line.strip()], output

    def test_damaged_journal_is_refused_and_left_untouched(self) -> None:
        """
        A journal file that is garbage, a real journal cut short, and an
        SQLite database that is not a journal: for each, the node exits with
        status 1 and one line naming the file and saying it was left
        untouched, without a traceback and without starting, and the file
        is byte for byte what it was.
        """
        cluster = Cluster(self)
        real = cluster.path("real")
        status, output = cluster.run_once(
            "--name",
            "a1",
            "--port",
            "0",
            "--group",
            cluster.group_option,
            "--cluster",
            cluster.cluster_name,
            "--state-dir",
            real,
            "--tasks",
            "a1,a2,a3",
            "--exit-when-done",
            timeout=10,
        )
        self.assertEqual(status, 0, output)
        with open(os.path.join(real, "journal.sqlite3"), "rb") as f:
            journal = f.read()
        self.assertGreater(len(journal), 8192)

        foreign = cluster.path("foreign.sqlite3")
        db = sqlite3.connect(foreign)
        db.execute("CREATE TABLE songs (title TEXT)")
        db.execute("INSERT INTO songs VALUES ('la mer')")
        db.commit()
        db.close()
        with open(foreign, "rb") as f:
            foreign_bytes = f.read()

        cases = {
            "garbage": (b"this is not a journal\n" * 200, r"cannot be read \(file is not a database\)"),
            "truncated": (journal[: len(journal) // 2 - 100], r"cannot be read \(database disk image is malformed\)"),
            "foreign": (foreign_bytes, r"is an SQLite database but not a p2pexec journal"),
        }
        for case, (content, reason) in cases.items():
            state_dir = cluster.path("state", case)
            os.makedirs(state_dir)
            path = os.path.join(state_dir, "journal.sqlite3")
            with open(path, "wb") as f:
                f.write(content)
            before = os.stat(path)
            status, lines, output = self._start_on(cluster, state_dir)
            context = f"{case}: status {status}; output:\n{output}"
            self.assertEqual(status, 1, context)
            self.assertNotIn("Traceback", output, context)
            self.assertNotIn("started on port", output, context)
            self.assertEqual(len(lines), 1, context)
            self.assertRegex(lines[0], rf"^p2pexec: node n1 cannot start: .*{re.escape(path)}", context)
            self.assertRegex(lines[0], reason, context)
            self.assertIn("left untouched", lines[0], context)
            with open(path, "rb") as f:
                self.assertTrue(f.read() == content, f"{case}: {path} was changed although the node says it was not")
            self.assertEqual(os.stat(path).st_mtime_ns, before.st_mtime_ns, f"{case}: {path} was written to")
            self.assertEqual(
                sorted(os.listdir(state_dir)), ["journal.sqlite3", "lock"], f"{case}: files were added beside it"
            )

    def test_state_directory_in_use_is_refused(self) -> None:
        """
        A second node started on the state directory of a running node exits
        with status 1 and one line saying that the directory is in use by
        that node's pid; the running node is not disturbed.
        """
        cluster = Cluster(self)
        first = cluster.start("n1")
        state_dir = cluster.state_dir("n1")
        status, lines, output = self._start_on(cluster, state_dir, name="n2")
        self.assertEqual(status, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(len(lines), 1, output)
        self.assertRegex(
            lines[0],
            rf"^p2pexec: node n2 cannot start: the state directory {re.escape(state_dir)} is in use by another "
            rf"p2pexec node \(pid {first.pid}\); give each node its own --state-dir$",
        )
        self.assertTrue(first.running())
        with open(os.path.join(state_dir, "lock")) as f:
            self.assertEqual(f.read().strip(), str(first.pid), "the refused node touched the lock file")
        self.stop_all(cluster)
        self.assertLogClean(first)


class BusyWorkerTests(IntegrationTestCase):
    """A worker whose every slot burns CPU is slow, not dead."""

    def test_cpu_bound_worker_is_not_declared_dead(self) -> None:
        """
        Both of w1's slots run CPU-bound tasks for longer than the heartbeat
        timeout, on a two-CPU machine: w1 keeps answering heartbeats from its
        reactor, is never suspected or declared dead, and every task runs
        once, on w1.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        # Four seconds of a busy loop in the shell: longer than the 2.5 s timeout.
        burn = f"{record_run(side)}; end=$(( $(date +%s) + 4 )); while [ $(date +%s) -lt $end ]; do :; done"
        write_job_file(job_file, {"kind": "w", "shell": True, "command": burn}, [{"id": f"t{n}"} for n in range(4)])
        w1 = cluster.start("w1", "--capabilities", "w", "--slots", "2")
        m = cluster.start("m", "--capabilities", "none", "--job", job_file, "--results", results)
        finished = m.wait_for(JOB_FINISHED, timeout=30)
        self.assertEqual(finished.group(2, 3), ("4", "0"), m.log_tail())
        runs = read_runs(side)
        self.assertEqual(sorted(task for task, _, _ in runs), [f"t{n}" for n in range(4)], "each task ran once")
        self.assertEqual({node for _, node, _ in runs}, {"w1"})
        for node in (m, w1):
            self.assertFalse(node.has(r"suspects peer|declared peer \S+ dead"), node.log_tail())
