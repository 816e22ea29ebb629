"""
Wall-clock steps on real C{twistd p2pexec} nodes, mid-job.

The machine's clock cannot be stepped for a test (it would disturb every
other process), so each node whose clock a test steps gets a
C{sitecustomize} module, created by the test in a folder of its own at the
front of the node's C{PYTHONPATH}: it wraps C{time.time} and
C{time.time_ns} to add an offset read from a file the test writes.  That is
what the node's wall clock reads, and what Twisted's reactor read before
p2pexec made its timers monotonic; C{time.monotonic} is left alone, as a
real step leaves it.  Each test proves the step took (the node's log
timestamps jump) before it judges what followed.

Like the other integration tests these are synchronous on purpose: every
wait is a bounded poll (see L{tests.integration.cluster}).
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime

from tests.integration.cluster import Cluster, NodeProcess, read_runs, record_run
from tests.integration.test_cluster import JOB_FINISHED, IntegrationTestCase, write_job_file
from tests.integration.test_faults import _stat, hold_on_w1, touch, wait_for_held

SITECUSTOMIZE = '''\
"""Test harness only: time.time() reads the offset in $P2PEXEC_TEST_CLOCK_OFFSET's file off the real time."""
import os
import time

_path = os.environ.get("P2PEXEC_TEST_CLOCK_OFFSET")
if _path:
    _real_time, _real_time_ns, _monotonic = time.time, time.time_ns, time.monotonic
    _cache = [float("-inf"), 0.0]

    def _offset():
        now = _monotonic()
        if now - _cache[0] >= 0.02:
            _cache[0] = now
            try:
                with open(_path) as f:
                    _cache[1] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _cache[1]

    def _time():
        return _real_time() + _offset()

    def _time_ns():
        return _real_time_ns() + int(_offset() * 1e9)

    time.time = _time
    time.time_ns = _time_ns
'''

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?([+-]\d{4}) ", re.MULTILINE)
"""A log line's timestamp (twistd's format), which the node takes from C{time.time()}."""

DEAD = r"\] Node (\S+) declared peer (\S+) dead: silent for ([\d.]+)s \(timeout ([\d.]+)s\)"

DETECTION_PROMISE = 2.75
"""docs/reliability.rst: a silent worker is declared dead within 2.5 to 2.75 s (default options)."""


class SteppedClocks:
    """The skewable wall clocks of one cluster's nodes: one offset file per node."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._folder = cluster.path("skew")
        os.makedirs(self._folder)
        with open(os.path.join(self._folder, "sitecustomize.py"), "w") as f:
            f.write(SITECUSTOMIZE)

    def _file(self, name: str) -> str:
        return self._cluster.path(f"{name}.clock-offset")

    def environment(self, name: str) -> dict[str, str]:
        """Node C{name}'s environment: the cluster's, with its own skewable clock."""
        env = self._cluster.environment()
        env["PYTHONPATH"] = os.pathsep.join([self._folder, env["PYTHONPATH"]])
        env["P2PEXEC_TEST_CLOCK_OFFSET"] = self._file(name)
        self.set(name, 0.0)
        return env

    def set(self, name: str, offset: float) -> None:
        """Step node C{name}'s wall clock to read C{offset} seconds off the real time."""
        path = self._file(name)
        with open(path + ".new", "w") as f:
            f.write(repr(offset))
        os.replace(path + ".new", path)


def last_stamp(node: NodeProcess) -> float | None:
    """The time of C{node}'s last log line, by its own wall clock (seconds since the epoch)."""
    stamps = STAMP.findall(node.log_text())
    if not stamps:
        return None
    return datetime.strptime("".join(stamps[-1]), "%Y-%m-%dT%H:%M:%S%z").timestamp()


def wait_for_step(cluster: Cluster, node: NodeProcess, offset: float) -> None:
    """Wait until C{node} logs a line stamped with its clock C{offset} seconds off (by more than half of it)."""

    def stepped() -> bool:
        stamp = last_stamp(node)
        return stamp is not None and (stamp - time.time()) * offset > (offset / 2) ** 2

    cluster.wait_until(stepped, lambda: f"{node.name}'s log shows no step of {offset:+g}s\n{node.log_tail()}")


class ClockStepTests(IntegrationTestCase):
    """Nodes whose wall clocks are stepped mid-job (see docs/reliability.rst, Clock steps)."""

    def test_steps_cause_no_death_no_rerun_and_no_bad_duration(self) -> None:
        """
        While a 32-task job runs on two workers, w1's wall clock is stepped
        60 s ahead and then the master's 30 s back.  Nobody suspects or
        declares anyone dead, every task runs exactly once (side file), the
        job finishes, and its results file gives an elapsed time between 0
        and what the test measured on its own monotonic clock, and every
        task a duration between 0 and a few seconds (each sleeps 0.4 s).
        """
        cluster = Cluster(self, budget=40)
        clocks = SteppedClocks(cluster)
        side = cluster.path("side.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        ids = [f"t{n:02d}" for n in range(32)]
        write_job_file(
            job_file,
            {"kind": "w", "shell": True, "command": f"{record_run(side)}; sleep 0.4"},
            [{"id": task_id} for task_id in ids],
        )
        w1 = cluster.start("w1", "--capabilities", "w", "--slots", "2", env=clocks.environment("w1"))
        w2 = cluster.start("w2", "--capabilities", "w", "--slots", "2", env=clocks.environment("w2"))
        began = time.monotonic()
        m = cluster.start(
            "m", "--capabilities", "none", "--job", job_file, "--results", results, env=clocks.environment("m")
        )
        cluster.wait_until(lambda: len(read_runs(side)) >= 6, lambda: f"fewer than 6 tasks started\n{cluster.logs()}")
        clocks.set("w1", 60.0)
        wait_for_step(cluster, w1, 60.0)
        cluster.wait_until(lambda: len(read_runs(side)) >= 14, lambda: f"fewer than 14 tasks started\n{cluster.logs()}")
        clocks.set("m", -30.0)
        wait_for_step(cluster, m, -30.0)
        self.assertFalse(m.has(JOB_FINISHED), "the job finished before both steps: the test proves nothing")

        m.wait_for(JOB_FINISHED, timeout=15)
        measured = time.monotonic() - began
        report = self.results_of(m, results)
        for node in (m, w1, w2):
            self.assertFalse(node.has(r"suspects peer|declared peer \S+ dead"), f"{node.name}:\n{node.log_tail()}")
        runs = read_runs(side)
        self.assertEqual(sorted(task_id for task_id, _, _ in runs), ids, f"a task ran twice or never: {runs}")
        self.assertEqual({attempt for _, _, attempt in runs}, {1})
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (32, 32, 0))
        self.assertGreater(report["elapsed"], 0.0, report["elapsed"])
        self.assertLessEqual(report["elapsed"], measured, f"elapsed {report['elapsed']}s, measured {measured:.2f}s")
        self.assertTrue({task["node"] for task in report["tasks"]} >= {"w1"}, "w1 ran nothing after all")
        for task in report["tasks"]:
            self.assertTrue(0.0 < task["duration"] < 10.0, task)
        self.stop_all(cluster)
        for node in (m, w1, w2):
            self.assertLogClean(node)

    def test_master_stepped_back_declares_a_frozen_worker_dead_on_time(self) -> None:
        """
        The master's wall clock is stepped 30 s back mid-job, then worker w1
        is frozen (SIGSTOP) while it runs two tasks.  The master declares w1
        dead within the documented 2.75 s (plus slack for a loaded machine,
        measured by the test's own monotonic clock; it took 29.7 s when the
        reactor's timers followed the wall clock), its log gives a silence
        of 2.5 to 4 s, w2 runs w1's tasks, and the job finishes with a
        non-negative elapsed time.
        """
        cluster = Cluster(self, budget=40)
        clocks = SteppedClocks(cluster)
        side = cluster.path("side.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        # On w1 a task waits for the release file, so that it holds its tasks when frozen.
        pids, release, command = hold_on_w1(self, cluster, side, 0.5)
        # Enough work for w2 that the master logs confirmations (which show its step) while w1 holds its tasks.
        ids = [f"t{n:02d}" for n in range(16)]
        write_job_file(job_file, {"kind": "w", "shell": True, "command": command}, [{"id": i} for i in ids])
        w1 = cluster.start("w1", "--capabilities", "w", "--slots", "2")
        self.addCleanup(lambda: w1.running() and w1.send_signal(signal.SIGCONT))
        cluster.start("w2", "--capabilities", "w", "--slots", "2")
        m = cluster.start(
            "m", "--capabilities", "none", "--job", job_file, "--results", results, env=clocks.environment("m")
        )
        held = wait_for_held(cluster, w1, pids, side)
        clocks.set("m", -30.0)
        wait_for_step(cluster, m, -30.0)

        frozen_at = time.monotonic()
        w1.send_signal(signal.SIGSTOP)
        self.assertFalse(m.has(JOB_FINISHED), "the job finished before w1 was frozen: the test proves nothing")
        dead = m.wait_for(r"\] Node m declared peer w1 dead: silent for ([\d.]+)s \(timeout 2\.5s\)", timeout=10)
        detected_after = time.monotonic() - frozen_at
        self.assertLessEqual(
            detected_after, DETECTION_PROMISE + 2.25, f"w1 declared dead {detected_after:.2f}s after SIGSTOP"
        )
        self.assertTrue(2.5 <= float(dead.group(1)) <= 4.0, dead.group(0))

        finished = m.wait_for(JOB_FINISHED, timeout=10)
        self.assertEqual(finished.group(2, 3), ("16", "0"), m.log_tail())
        self.assertEqual(_stat(w1.pid)[0], "T", "w1 was not frozen when the job finished")
        report = self.results_of(m, results)
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (16, 16, 0))
        self.assertGreater(report["elapsed"], 0.0, report["elapsed"])
        for task in report["tasks"]:
            if task["id"] in held:
                self.assertEqual((task["node"], task["attempts"]), ("w2", 2), task)
        self.assertFalse(m.has(r"suspects peer w2|declared peer w2 dead"), m.log_tail())
        w1.send_signal(signal.SIGCONT)
        touch(release)
        self.stop_all(cluster)
        self.assertLogClean(m)
