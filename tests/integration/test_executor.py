"""
Tests for L{p2pexec.executor} with real child processes: sessions and
process groups, signals reaching grandchildren, descriptors, the
environment, the program lookup, and policies allowing real programs.

These need the real reactor (they start processes), so they are asynchronous
trial tests; they wait on process events, never on sleeps.  What the
executor decides (timeouts, kill escalation, results, refusals) is tested
without processes, on a clock, in L{tests.test_executor}.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from p2pexec.executor import ProcessExecutor
from p2pexec.model import FAILED, SUCCEEDED, TIMED_OUT, Assignment, TaskSpec
from p2pexec.policy import CommandPolicy


def task(command, shell=False, **fields):
    """An attempt-1 assignment of a task running C{command}."""
    if not shell:
        command = tuple(command)
    return Assignment(task=TaskSpec(id="t1", kind="sh", command=command, shell=shell, **fields), attempt=1)


class ExecutorTests(TestCase):
    """L{ProcessExecutor.run}."""

    timeout = 20

    def setUp(self):
        self.executor = ProcessExecutor(reactor, "w1", tail_bytes=1024, kill_grace=1.0)
        self.addCleanup(self.executor.settled)

    async def run_task(self, assignment):
        """Run C{assignment} and return its result."""
        return await self.executor.run("job-1", assignment)

    async def test_success_with_output(self):
        """A successful command reports exit 0 and its output tails."""
        result = await self.run_task(task("echo out; echo err >&2", shell=True))
        self.assertEqual((result.status, result.exit_code), (SUCCEEDED, 0))
        self.assertEqual((result.stdout, result.stderr), ("out\n", "err\n"))
        self.assertEqual((result.task_id, result.attempt, result.node), ("t1", 1, "w1"))
        self.assertGreater(result.duration, 0)

    async def test_only_standard_descriptors_inherited(self):
        """
        A task inherits its standard input, output and error and nothing
        else: not the node's sockets and pipes, nor a descriptor the node
        itself inherited (left inheritable) before the executor started.
        """
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        os.set_inheritable(write_end, True)
        executor = ProcessExecutor(reactor, "w1", tail_bytes=1024, kill_grace=1.0)
        result = await executor.run("job-1", task("ls /proc/self/fd", shell=True))
        self.assertEqual(result.status, SUCCEEDED)
        descriptors = set(result.stdout.split())
        # 0-2, plus the one ls opens to read the folder.
        self.assertTrue({"0", "1", "2"} <= descriptors, descriptors)
        self.assertLessEqual(len(descriptors - {"0", "1", "2"}), 1, descriptors)
        self.assertNotIn(str(write_end), descriptors - {"0", "1", "2", "3"})
        self.assertFalse(os.get_inheritable(write_end))

    async def test_failure_exit_code(self):
        """A failing command reports its exit code."""
        result = await self.run_task(task(["sh", "-c", "exit 3"]))
        self.assertEqual((result.status, result.exit_code), (FAILED, 3))

    async def test_output_tail_bounded(self):
        """Only the last tail_bytes of a long output are kept."""
        result = await self.run_task(task("seq 1 100000", shell=True))
        self.assertLessEqual(len(result.stdout), 1024)
        self.assertTrue(result.stdout.endswith("100000\n"))

    async def test_environment_and_cwd(self):
        """The task's env, its cwd and the P2PEXEC_* variables reach the process."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        result = await self.run_task(
            task(
                'echo "$GREETING $P2PEXEC_JOB_ID $P2PEXEC_TASK_ID $P2PEXEC_ATTEMPT $P2PEXEC_NODE"; pwd',
                shell=True,
                env=(("GREETING", "hi"),),
                cwd=folder,
            )
        )
        self.assertEqual(result.stdout, f"hi job-1 t1 1 w1\n{folder}\n")

    async def test_timeout_kills_process_group(self):
        """A timed-out task's whole process group is killed, children included."""
        pidfile = os.path.abspath(self.mktemp())
        result = await self.run_task(task(f"sleep 60 & echo $! > {pidfile}; wait", shell=True, timeout=0.5))
        self.assertEqual(result.status, TIMED_OUT)
        self.assertIn("timed out after 0.5s", result.error)
        with open(pidfile) as f:
            child = int(f.read())
        self.assertFalse(_alive(child), "the background child survived the timeout")

    async def test_timeout_kills_process_group_with_cwd(self):
        """With a working directory (Twisted forks instead of posix_spawn), the group is killed too."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        pidfile = os.path.join(folder, "pid")
        result = await self.run_task(task(f"sleep 60 & echo $! > {pidfile}; wait", shell=True, timeout=0.5, cwd=folder))
        self.assertEqual(result.status, TIMED_OUT)
        with open(pidfile) as f:
            child = int(f.read())
        self.assertFalse(_alive(child), "the background child survived the timeout")

    async def test_own_session(self):
        """A task leads a session of its own, so that its whole group can be signalled."""
        result = await self.run_task(task("ps -o sid= -p $$; echo $$", shell=True))
        session, pid = result.stdout.split()
        self.assertEqual(session, pid)

    async def test_timeout_escalates_to_sigkill(self):
        """A task that ignores SIGTERM is killed with SIGKILL after the grace period."""
        result = await self.run_task(task("trap '' TERM; sleep 60 & wait; sleep 60", shell=True, timeout=0.3))
        self.assertEqual(result.status, TIMED_OUT)

    async def test_leftovers_of_a_finished_task_are_stopped(self):
        """
        A task that exits 0 at once, leaving a child in the background (output
        sent elsewhere, SIGTERM ignored), succeeds; the child is stopped with
        its group (SIGTERM, then SIGKILL after the grace), and nothing is left
        once the executor has settled.
        """
        result = await self.run_task(
            task("(trap '' TERM; exec sleep 60) </dev/null >/dev/null 2>&1 & echo $!", shell=True)
        )
        self.assertEqual(result.status, SUCCEEDED)
        child = int(result.stdout)
        self.addCleanup(lambda: _alive(child) and os.kill(child, 9))
        await self.executor.settled()
        self.assertFalse(_alive(child), f"pid {child}, left behind by a finished task, still runs")

    async def test_stop_all(self):
        """stop_all ends running tasks."""
        running = self.executor.run("job-1", task(["sleep", "60"]))
        waiter = Deferred()
        reactor.callLater(0.2, waiter.callback, None)
        await waiter
        self.assertEqual(len(self.executor.running), 1)
        self.executor.stop_all()
        result = await running
        self.assertEqual(result.status, FAILED)
        self.assertIn("signal", result.error)
        self.assertEqual(self.executor.running, {})


class RecordingGuard:
    """A stand-in for L{p2pexec.guard.TaskGuard} that records what it is told."""

    def __init__(self):
        self.events = []

    def watch(self, pgid):
        self.events.append(("watch", pgid))

    def forget(self, pgid):
        self.events.append(("forget", pgid))


class GuardTests(TestCase):
    """The executor tells its guard of each task's process group."""

    timeout = 20

    def setUp(self):
        self.guard = RecordingGuard()
        self.executor = ProcessExecutor(reactor, "w1", tail_bytes=1024, kill_grace=1.0, guard=self.guard)
        self.addCleanup(self.executor.settled)

    async def test_group_watched_while_it_runs(self):
        """A task's group is watched from its start and forgotten by the time its result is in."""
        result = await self.executor.run("job-1", task("echo $$", shell=True))
        pid = int(result.stdout)
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])

    async def test_group_watched_until_empty(self):
        """
        A task that leaves a child behind (SIGTERM ignored): its group is
        forgotten only once the child is gone, not when the task ends.
        """
        result = await self.executor.run(
            "job-1", task("(trap '' TERM; exec sleep 60) </dev/null >/dev/null 2>&1 & echo $$ $!", shell=True)
        )
        pid, child = (int(n) for n in result.stdout.split())
        self.addCleanup(lambda: _alive(child) and os.kill(child, 9))
        self.assertEqual(self.guard.events, [("watch", pid)])
        await self.executor.settled()
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])

    async def test_timed_out_group_forgotten_once_killed(self):
        """A timed-out task's group is forgotten once its SIGKILL was sent (or it emptied), not before."""
        result = await self.executor.run("job-1", task("trap '' TERM; echo $$; sleep 60", shell=True, timeout=0.2))
        self.assertEqual(result.status, TIMED_OUT)
        pid = int(result.stdout)
        await self.executor.settled()
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])


class TaskPathTests(TestCase):
    """A task's own PATH is where its program is looked up, with or without a cwd."""

    timeout = 20

    async def test_program_found_on_the_tasks_path(self):
        """
        A program that is only on the task's PATH runs; without a cwd this
        used to search the node's PATH.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "p2pexec-only-here"), "w") as f:
            f.write("#!/bin/sh\necho ran\n")
        os.chmod(os.path.join(folder, "p2pexec-only-here"), 0o755)
        executor = ProcessExecutor(reactor, "w1", kill_grace=1.0)
        for cwd in (None, "/"):
            result = await executor.run(
                "job-1", task(["p2pexec-only-here"], env=(("PATH", folder + ":/usr/bin:/bin"),), cwd=cwd)
            )
            self.assertEqual((result.status, result.stdout, result.error), (SUCCEEDED, "ran\n", None), cwd)


class PolicyTests(TestCase):
    """
    Commands a L{CommandPolicy} allows run for real (the refusals, which start
    nothing, are in L{tests.test_executor}).
    """

    timeout = 20

    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)

    def executor(self, **policy):
        """An executor with a policy made of C{policy}, whose start-up line is captured in C{self.started}."""
        with capturedLogs() as self.started:
            executor = ProcessExecutor(reactor, "w1", tail_bytes=1024, kill_grace=1.0, policy=CommandPolicy(**policy))
        self.addCleanup(executor.settled)
        return executor

    async def test_allowed_command_runs(self):
        """An allowed command runs as usual, with its arguments, and the node says what it runs."""
        executor = self.executor(allow=["echo", "sh"])
        result = await executor.run("job-1", task(["echo", "hi"]))
        self.assertEqual((result.status, result.stdout), (SUCCEEDED, "hi\n"))
        result = await executor.run("job-1", task("echo $0", shell=True))
        self.assertEqual((result.status, result.stdout), (SUCCEEDED, "/bin/sh\n"))
        self.assertIn("runs only commands matching --allow: echo, sh", [e.get("policy") for e in self.started])

    async def test_instruction_runs_file_of_folder(self):
        """With --instructions, ["NAME", args] runs DIR/NAME with its arguments; argv[0] stays NAME."""
        instructions = os.path.join(self.folder, "instructions")
        os.makedirs(instructions)
        script = os.path.join(instructions, "greet")
        with open(script, "w") as f:
            f.write('#!/bin/sh\necho "hello $1"\n')
        os.chmod(script, 0o755)
        executor = self.executor(instructions=instructions)
        result = await executor.run("job-1", task(["greet", "world"], env=(("PATH", self.folder),)))
        self.assertEqual((result.status, result.stdout), (SUCCEEDED, "hello world\n"))

    async def test_ordinary_environment_allowed_under_a_policy(self):
        """Variables that run no code (PATH, LANG, the task's own) pass under a policy, as without one."""
        executor = self.executor(allow=["sh"])
        result = await executor.run(
            "job-1",
            task("echo $GREETING", shell=True, env=(("GREETING", "hi"), ("LANG", "C"), ("PATH", "/usr/bin:/bin"))),
        )
        self.assertEqual((result.status, result.stdout), (SUCCEEDED, "hi\n"))


def _alive(pid):
    """Whether process C{pid} exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
