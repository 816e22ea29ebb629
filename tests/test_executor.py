"""
Tests for L{p2pexec.executor}: what the executor decides, without starting
a process or waiting on real time.

Each executor here starts pretend processes (L{FakeProcessReactor}), signals
pretend process groups (L{FakeProcessGroups}) and keeps time on a
L{Clock}.  Real processes (sessions, signals reaching grandchildren,
descriptors) are tested in L{tests.integration.test_executor}.
"""

import os
import signal

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from p2pexec.executor import ProcessExecutor
from p2pexec.model import ERROR, FAILED, SUCCEEDED, TIMED_OUT, Assignment, TaskSpec
from p2pexec.policy import SHELL, CommandPolicy
from p2pexec.testing.processes import FakeProcessGroups, FakeProcessReactor

GRACE = 5.0
"""The executors' grace period between SIGTERM and SIGKILL."""

TERM, KILL = signal.SIGTERM, signal.SIGKILL


def task(command, shell=False, **fields):
    """An attempt-1 assignment of a task running C{command}."""
    if not shell:
        command = tuple(command)
    return Assignment(task=TaskSpec(id="t1", kind="sh", command=command, shell=shell, **fields), attempt=1)


class RecordingGuard:
    """A stand-in for L{p2pexec.guard.TaskGuard} that records what it is told."""

    def __init__(self):
        self.events = []

    def watch(self, pgid):
        """Record that the group C{pgid} started."""
        self.events.append(("watch", pgid))

    def forget(self, pgid):
        """Record that the group C{pgid} is empty or killed."""
        self.events.append(("forget", pgid))


class FakeExecutorMixin:
    """Builds a L{ProcessExecutor} on pretend processes, a L{Clock} and a recording guard."""

    def make_executor(self, **options):
        """An executor on C{self.processes}, C{self.groups}, C{self.clock} and C{self.guard}."""
        self.clock = Clock()
        self.processes = FakeProcessReactor()
        self.groups = FakeProcessGroups(self.processes)
        self.guard = RecordingGuard()
        options.setdefault("tail_bytes", 1024)
        options.setdefault("kill_grace", GRACE)
        options.setdefault("base_environment", {"PATH": "/usr/bin:/bin"})
        return ProcessExecutor(self.processes, "w1", clock=self.clock, groups=self.groups, guard=self.guard, **options)

    def start(self, assignment):
        """Run C{assignment}: return the result's Deferred and the pretend process started."""
        d = self.executor.run("job-1", assignment)
        self.assertEqual(len(self.processes.processes), 1)
        return d, self.processes.processes[0]


class RunTests(FakeExecutorMixin, TestCase):
    """How L{ProcessExecutor.run} starts a task and turns its end into a result."""

    def setUp(self):
        self.executor = self.make_executor()

    def test_shell_task_started_with_environment_and_cwd(self):
        """
        A shell task runs C{/bin/sh -c COMMAND} in its working directory, in
        a group of its own, with the node's environment, the task's, and the
        P2PEXEC_* variables; standard input is not a pipe.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.start(task("echo hi", shell=True, env=(("GREETING", "hi"),), cwd=folder))
        child = self.processes.processes[0]
        self.assertEqual((child.executable, child.args, child.path), (SHELL, [SHELL, "-c", "echo hi"], folder))
        self.assertEqual(
            child.env,
            {
                "PATH": "/usr/bin:/bin",
                "GREETING": "hi",
                "P2PEXEC_JOB_ID": "job-1",
                "P2PEXEC_TASK_ID": "t1",
                "P2PEXEC_ATTEMPT": "1",
                "P2PEXEC_NODE": "w1",
            },
        )
        self.assertEqual((child.child_fds[1], child.child_fds[2]), ("r", "r"))
        self.assertIsInstance(child.child_fds[0], int)
        self.assertEqual(self.executor.running, {child.pid: child.protocol})

    def test_program_started_by_the_path_found(self):
        """A program named without a folder starts from where the task's PATH has it; argv[0] stays as given."""
        self.start(task(["sh", "-c", "exit 0"]))
        child = self.processes.processes[0]
        self.assertEqual(os.path.basename(child.executable), "sh")
        self.assertTrue(os.path.isabs(child.executable), child.executable)
        self.assertEqual(child.args, ["sh", "-c", "exit 0"])

    def test_success_with_output_and_duration(self):
        """A child that exits 0 succeeds, with its output tails and the time it took on the clock."""
        d, child = self.start(task("true", shell=True))
        self.clock.advance(2.5)
        child.output(b"out\n")
        child.output(b"err\n", fd=2)
        child.exit(0)
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.exit_code, result.error), (SUCCEEDED, 0, None))
        self.assertEqual((result.stdout, result.stderr), ("out\n", "err\n"))
        self.assertEqual((result.task_id, result.attempt, result.node, result.duration), ("t1", 1, "w1", 2.5))
        self.assertEqual(self.executor.running, {})

    def test_output_tail_bounded(self):
        """Only the last tail_bytes of a long output are kept."""
        d, child = self.start(task("true", shell=True))
        for n in range(2000):
            child.output(b"%d\n" % n)
        child.exit(0)
        result = self.successResultOf(d)
        self.assertLessEqual(len(result.stdout), 1024)
        self.assertTrue(result.stdout.endswith("1998\n1999\n"), result.stdout[-20:])

    def test_failure_exit_code(self):
        """A child that exits non-zero fails with its exit code."""
        d, child = self.start(task("exit 3", shell=True))
        child.exit(3)
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.exit_code, result.error), (FAILED, 3, None))

    def test_killed_by_signal(self):
        """A child ended by a signal (no timeout) fails, and the error names the signal."""
        d, child = self.start(task("true", shell=True))
        child.kill(KILL)
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.exit_code, result.error), (FAILED, None, "killed by signal 9"))

    def test_started_and_signal(self):
        """
        A result says when its attempt started, by the injected wall clock
        (not the monotonic one), and the signal that ended its process;
        none for a process that exited by itself.
        """
        wall = [1_700_000_000.25]
        self.executor = self.make_executor(wall_clock=lambda: wall[0])
        d, child = self.start(task("true", shell=True))
        wall[0] += 60
        self.clock.advance(3)
        child.kill(KILL)
        result = self.successResultOf(d)
        self.assertEqual((result.started, result.signal, result.duration), (1_700_000_000.25, KILL, 3))
        self.processes.processes.clear()
        d, child = self.start(task("exit 4", shell=True))
        child.exit(4)
        result = self.successResultOf(d)
        self.assertEqual((result.started, result.signal, result.exit_code), (1_700_000_060.25, None, 4))

    def test_timed_out_result_names_the_signal(self):
        """A timed-out task killed by SIGTERM says so in its signal."""
        d, child = self.start(task("sleep 60", shell=True, timeout=1))
        self.clock.advance(1)
        child.kill(TERM)
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.signal), (TIMED_OUT, TERM))

    def test_could_not_start(self):
        """A program the reactor cannot start is an error result that names it."""
        self.processes.failure = OSError("exec format error")
        result = self.successResultOf(self.executor.run("job-1", task(["sh"])))
        self.assertEqual((result.status, result.error), (ERROR, "could not start 'sh': exec format error"))
        self.assertEqual((self.executor.running, self.guard.events), ({}, []))

    def test_command_not_found(self):
        """A missing program is an error result that names it, not an exception; nothing starts."""
        result = self.successResultOf(self.executor.run("job-1", task(["no-such-program-p2pexec"])))
        self.assertEqual((result.status, result.exit_code), (ERROR, 127))
        self.assertIn("no-such-program-p2pexec", result.error)
        self.assertEqual(self.processes.processes, [])

    def test_missing_cwd(self):
        """A missing working directory is an error result that names it; nothing starts."""
        result = self.successResultOf(self.executor.run("job-1", task(["true"], cwd="/nonexistent/dir")))
        self.assertEqual(result.status, ERROR)
        self.assertIn("/nonexistent/dir", result.error)
        self.assertEqual(self.processes.processes, [])

    def test_group_watched_while_it_runs(self):
        """A task's group is watched from its start and forgotten by the time its result is in."""
        d, child = self.start(task("true", shell=True))
        pid = child.pid
        self.assertEqual(self.guard.events, [("watch", pid)])
        child.exit(0)
        self.successResultOf(d)
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])
        self.assertEqual(self.groups.signals, [])


class TimeoutTests(FakeExecutorMixin, TestCase):
    """A task's timeout, and the SIGTERM-then-SIGKILL escalation on its process group."""

    def setUp(self):
        self.executor = self.make_executor()

    def test_no_signal_before_the_timeout(self):
        """Nothing is signalled before the timeout; a task that ends in time succeeds and leaves no timer."""
        d, child = self.start(task("true", shell=True, timeout=10))
        self.clock.advance(9.99)
        self.assertEqual(self.groups.signals, [])
        child.exit(0)
        self.assertEqual(self.successResultOf(d).status, SUCCEEDED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.groups.signals, [])

    def test_timeout_terms_the_group(self):
        """
        At the timeout the task's group gets SIGTERM; a task that obeys ends
        as timed out, and no SIGKILL follows once its group is empty.
        """
        d, child = self.start(task("sleep 60", shell=True, timeout=10))
        self.clock.advance(10)
        self.assertEqual(self.groups.signals, [(child.pid, TERM)])
        pid = child.pid
        self.assertNoResult(d)
        child.kill(TERM)
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.exit_code), (TIMED_OUT, None))
        self.assertEqual(result.error, "timed out after 10s; process group killed")
        self.assertEqual(result.duration, 10)
        self.clock.advance(GRACE * 2)
        self.assertEqual(self.groups.signals, [(pid, TERM)])
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_escalates_to_sigkill(self):
        """
        A task that ignores SIGTERM gets SIGKILL on its group after exactly
        the grace period, and its result is still "timed out".
        """
        d, child = self.start(task("sleep 60", shell=True, timeout=10))
        pid = child.pid
        self.clock.advance(10)
        self.clock.advance(GRACE - 0.01)
        self.assertEqual(self.groups.signals, [(pid, TERM)])
        self.clock.advance(0.01)
        self.assertEqual(self.groups.signals, [(pid, TERM), (pid, KILL)])
        # Forgotten once it ends, not while the leader still runs.
        self.assertEqual(self.guard.events, [("watch", pid)])
        child.kill(KILL)
        result = self.successResultOf(d)
        self.assertEqual(result.status, TIMED_OUT)
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_group_that_outlives_its_leader_is_killed(self):
        """
        A task whose process ends on SIGTERM but leaves a child in its group
        that ignores it: the group gets SIGKILL after the grace period, and
        is forgotten only then.
        """
        d, child = self.start(task("sleep 60", shell=True, timeout=10))
        pid = child.pid
        self.clock.advance(10)
        child.kill(TERM, group_alive=True)
        self.assertEqual(self.successResultOf(d).status, TIMED_OUT)
        self.assertEqual(self.guard.events, [("watch", pid)])
        self.clock.pump([0.05] * int(GRACE / 0.05 + 1))
        self.assertEqual(self.groups.signals, [(pid, TERM), (pid, KILL)])
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])

    def test_sigkill_called_off_once_the_group_is_empty(self):
        """
        A group that empties during the grace period gets no SIGKILL: the
        executor looks again until it is empty, then calls the SIGKILL off.
        """
        d, child = self.start(task("sleep 60", shell=True, timeout=10))
        pid = child.pid
        self.clock.advance(10)
        child.kill(TERM, group_alive=True)
        self.clock.advance(GRACE / 2)
        child.group_alive = False
        self.clock.advance(0.05)
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])
        self.clock.advance(GRACE)
        self.assertEqual(self.groups.signals, [(pid, TERM)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_settled_waits_for_pending_kills(self):
        """L{ProcessExecutor.settled} fires only once no group awaits its SIGKILL."""
        d, child = self.start(task("sleep 60", shell=True, timeout=10))
        self.clock.advance(10)
        child.kill(TERM, group_alive=True)
        settled = self.executor.settled()
        self.clock.advance(GRACE - 0.1)
        self.assertNoResult(settled)
        self.clock.pump([0.05] * 4)
        self.successResultOf(settled)

    def test_default_clock_is_the_reactor(self):
        """Without a clock, the executor keeps time on its reactor."""

        @implementer(IReactorTime)
        class ClockedProcesses(FakeProcessReactor, Clock):
            """A process reactor that is its own clock."""

            def __init__(self):
                FakeProcessReactor.__init__(self)
                Clock.__init__(self)

        reactor = ClockedProcesses()
        groups = FakeProcessGroups(reactor)
        executor = ProcessExecutor(reactor, "w1", kill_grace=GRACE, groups=groups)
        executor.run("job-1", task("sleep 60", shell=True, timeout=3))
        reactor.advance(3)
        self.assertEqual(groups.signals, [(reactor.processes[0].pid, TERM)])

    def test_reactor_without_time_needs_a_clock(self):
        """A process reactor that keeps no time, and no clock given: a clear error at once."""
        error = self.assertRaises(TypeError, ProcessExecutor, FakeProcessReactor(), "w1")
        self.assertIn("needs a clock", str(error))


class StopTests(FakeExecutorMixin, TestCase):
    """L{ProcessExecutor.stop} and L{ProcessExecutor.stop_all}, and what a finished task leaves behind."""

    def setUp(self):
        self.executor = self.make_executor()

    def test_stop_terms_then_kills(self):
        """stop sends SIGTERM to the attempt's group, and SIGKILL after the grace if the task is still there."""
        assignment = task("sleep 60", shell=True)
        d = self.executor.run("job-1", assignment)
        child = self.processes.processes[0]
        pid = child.pid
        self.executor.stop("job-1", Assignment(task=assignment.task, attempt=2))
        self.assertEqual(self.groups.signals, [])
        self.executor.stop("job-1", assignment)
        self.assertEqual(self.groups.signals, [(pid, TERM)])
        self.clock.advance(GRACE)
        self.assertEqual(self.groups.signals, [(pid, TERM), (pid, KILL)])
        child.kill(KILL)
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.error), (FAILED, "killed by signal 9"))

    def test_stop_all(self):
        """stop_all sends SIGTERM to every running task's group; one that obeys gets no SIGKILL."""
        first = self.executor.run("job-1", task("sleep 60", shell=True))
        second = self.executor.run("job-2", task("sleep 60", shell=True))
        one, two = self.processes.processes
        self.executor.stop_all()
        self.assertEqual(self.groups.signals, [(one.pid, TERM), (two.pid, TERM)])
        pids = one.pid, two.pid
        one.kill(TERM)
        two.kill(TERM)
        for d in (first, second):
            result = self.successResultOf(d)
            self.assertEqual((result.status, result.error), (FAILED, "killed by signal 15"))
        self.clock.advance(GRACE)
        self.assertEqual(self.groups.signals, [(pids[0], TERM), (pids[1], TERM)])
        self.assertEqual(self.executor.running, {})

    def test_leftovers_of_a_finished_task_are_stopped(self):
        """
        A task that exits 0 leaving processes in its group succeeds; the group
        gets SIGTERM at once and SIGKILL after the grace, and the guard
        forgets it only then.
        """
        d, child = self.start(task("true", shell=True))
        pid = child.pid
        with capturedLogs() as events:
            child.exit(0, group_alive=True)
        self.assertEqual(self.successResultOf(d).status, SUCCEEDED)
        self.assertEqual(self.groups.signals, [(pid, TERM)])
        self.assertEqual([e["task"] for e in events if e["log_level"] == LogLevel.info], ["t1"])
        self.assertEqual(self.guard.events, [("watch", pid)])
        self.clock.pump([0.05] * int(GRACE / 0.05 + 1))
        self.assertEqual(self.groups.signals, [(pid, TERM), (pid, KILL)])
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])

    def test_leftovers_that_leave_get_no_sigkill(self):
        """Leftovers that go away on SIGTERM get no SIGKILL, and the guard forgets the group as soon as they are gone."""
        d, child = self.start(task("true", shell=True))
        pid = child.pid
        child.exit(0, group_alive=True)
        child.group_alive = False
        self.clock.advance(0.05)
        self.assertEqual(self.guard.events, [("watch", pid), ("forget", pid)])
        self.clock.advance(GRACE)
        self.assertEqual(self.groups.signals, [(pid, TERM)])


class PolicyTests(FakeExecutorMixin, TestCase):
    """L{ProcessExecutor.run} asks its L{CommandPolicy} first; a refused command never starts."""

    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.side = os.path.join(self.folder, "side")

    def executor_with(self, **policy):
        """An executor with a policy made of C{policy}."""
        return self.make_executor(policy=CommandPolicy(**policy))

    def run_refused(self, executor, assignment):
        """Run C{assignment}, which must be refused, and return its result; check that it started nothing."""
        with capturedLogs() as events:
            result = self.successResultOf(executor.run("job-1", assignment))
        self.assertEqual(self.processes.processes, [], "the refused command was started")
        self.assertEqual(executor.running, {})
        self.assertEqual((result.status, result.exit_code, result.stdout, result.stderr), (ERROR, None, "", ""))
        self.assertEqual((result.task_id, result.attempt, result.node), ("t1", 1, "w1"))
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1, events)
        self.assertEqual(
            (warnings[0]["task"], warnings[0]["job"], warnings[0]["attempt"], warnings[0]["reason"]),
            ("t1", "job-1", 1, result.error),
        )
        return result

    def test_refused_command_does_not_run(self):
        """A command matching no --allow pattern is not started: an error result names it and the patterns."""
        executor = self.executor_with(allow=["/usr/bin/true", "echo"])
        result = self.run_refused(executor, task(["touch", self.side]))
        self.assertTrue(result.error.startswith("refused by this node's command policy: 'touch' ("), result.error)
        self.assertTrue(
            result.error.endswith("matches no --allow pattern (allowed: /usr/bin/true, echo)"), result.error
        )

    def test_refused_shell_task_does_not_run(self):
        """A shell task is refused unless /bin/sh or sh is allowed, and the error says so."""
        executor = self.executor_with(allow=["touch"])
        result = self.run_refused(executor, task(f"touch {self.side}", shell=True))
        self.assertIn("a shell task runs /bin/sh, and neither /bin/sh nor sh matches an --allow pattern", result.error)

    def test_allowed_command_starts(self):
        """An allowed command starts, with its arguments."""
        executor = self.executor_with(allow=["echo"])
        executor.run("job-1", task(["echo", "hi"]))
        self.assertEqual([p.args for p in self.processes.processes], [["echo", "hi"]])

    def test_allowed_but_missing(self):
        """An allowed name found nowhere is "command not found", as without a policy."""
        executor = self.executor_with(allow=["no-such-program-p2pexec"])
        result = self.successResultOf(executor.run("job-1", task(["no-such-program-p2pexec"])))
        self.assertEqual((result.status, result.exit_code), (ERROR, 127))
        self.assertEqual(self.processes.processes, [])

    def test_instructions_refuse_everything_else(self):
        """With --instructions, a program outside the folder is refused and not run."""
        instructions = os.path.join(self.folder, "instructions")
        os.makedirs(instructions)
        executor = self.executor_with(instructions=instructions)
        result = self.run_refused(executor, task(["/usr/bin/touch", self.side]))
        self.assertIn("'/usr/bin/touch' is not an instruction name", result.error)
        result = self.run_refused(executor, task(["touch", self.side]))
        self.assertIn("there is no instruction 'touch'", result.error)

    def test_dotdot_cannot_leave_an_allowed_folder(self):
        """
        "/usr/bin/*" does not allow "/usr/bin/../..FOLDER/prog": the path is
        matched once normalised, so the program outside /usr/bin never runs.
        """
        program = os.path.join(self.folder, "outside")
        with open(program, "w") as f:
            f.write(f"#!/bin/sh\ntouch {self.side}\n")
        os.chmod(program, 0o755)
        executor = self.executor_with(allow=["/usr/bin/*"])
        result = self.run_refused(executor, task(["/usr/bin/../.." + program]))
        self.assertIn(f"({program}) matches no --allow pattern", result.error)

    def test_code_injecting_environment_refused_under_a_policy(self):
        """
        Under --allow, a task that sets LD_PRELOAD (or BASH_ENV, PYTHONPATH,
        an exported bash function ...) is refused before anything starts: the
        allowed program could otherwise be made to run any code.
        """
        executor = self.executor_with(allow=["/usr/bin/true", "touch"])
        for name in ("LD_PRELOAD", "BASH_ENV", "PYTHONPATH", "BASH_FUNC_true%%", "GLIBC_TUNABLES"):
            result = self.run_refused(executor, task(["touch", self.side], env=((name, "/x"),)))
            self.assertIn(f"the task sets {name}, which could make an allowed program run code", result.error)

    def test_default_allows_everything_and_says_so(self):
        """Without a policy, the executor allows everything and logs so once, at info level."""
        with capturedLogs() as events:
            self.make_executor()
        self.assertEqual(len(events), 1, events)
        self.assertEqual(events[0]["log_level"], LogLevel.info)
        self.assertEqual(events[0]["policy"], "runs any command it is given (no --allow or --instructions)")
