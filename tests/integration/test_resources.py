"""
Integration tests for resources (issue 15, item 1): real C{twistd p2pexec}
nodes whose tasks ask for CPUs and GPUs, each task recording when it started
and ended (and its devices) in a side file.
"""

from __future__ import annotations

import os
import stat

from twisted.trial import unittest

from tests.integration.cluster import Cluster
from tests.integration.test_cluster import JOB_FINISHED, write_job_file

RECORD = (
    'echo "start $(date +%s.%N) $P2PEXEC_TASK_ID ${CUDA_VISIBLE_DEVICES:--} ${P2PEXEC_GPUS:--}" >> "$SIDE"; '
    "sleep 0.4; "
    'echo "end $(date +%s.%N) $P2PEXEC_TASK_ID ${CUDA_VISIBLE_DEVICES:--} ${P2PEXEC_GPUS:--}" >> "$SIDE"'
)
"""A task's command: its start and end, with its devices, appended to the side file $SIDE."""


def read_side(path: str) -> list[tuple[float, str, str, str, str]]:
    """The side file's events, (time, start or end, task, CUDA_VISIBLE_DEVICES, P2PEXEC_GPUS), in time order."""
    events = []
    with open(path) as f:
        for line in f:
            what, when, task, cuda, gpus = line.split()
            events.append((float(when), what, task, cuda, gpus))
    return sorted(events, key=lambda e: (e[0], e[1] == "start"))


def running_sets(events: list[tuple[float, str, str, str, str]]) -> list[dict[str, str]]:
    """What ran at once: after each event, the running tasks and their devices."""
    running: dict[str, str] = {}
    sets = []
    for _, what, task, cuda, _ in events:
        if what == "start":
            running[task] = cuda
        else:
            running.pop(task, None)
        sets.append(dict(running))
    return sets


class ResourceTests(unittest.TestCase):
    """Requests on real nodes."""

    def run_job(self, cluster: Cluster, tasks: list[dict], *options: str, env: dict | None = None) -> str:
        """Run C{tasks} as the start-up job of node m with C{options}; return the side file's path."""
        side = cluster.path("side.txt")
        job_file = cluster.path("job.toml")
        write_job_file(job_file, {"kind": "g", "shell": True, "command": RECORD, "env": {"SIDE": side}}, tasks)
        m = cluster.start("m", "--capabilities", "g", "--job", job_file, "--exit-when-done", *options, env=env)
        finished = m.wait_for(JOB_FINISHED, timeout=30)
        self.assertEqual(finished.group(2, 3), (str(len(tasks)), "0"), m.log_tail())
        self.assertEqual(m.wait_exit(10), 0, m.log_tail())
        return side

    def test_cpus_cap_concurrency(self) -> None:
        """
        Eight tasks with cpus = 2 on a node started with --cpus 4 and 8
        slots never run more than two at a time (and do run two at once).
        """
        cluster = Cluster(self)
        tasks = [{"id": f"c{i}", "cpus": 2} for i in range(8)]
        side = self.run_job(cluster, tasks, "--cpus", "4", "--slots", "8")
        sets = running_sets(read_side(side))
        most = max(len(s) for s in sets)
        self.assertEqual(most, 2, sets)

    def test_gpu_tasks_get_their_own_devices(self) -> None:
        """
        Four tasks with gpus = 1 on a node with --gpus 0,1: each gets one
        device in CUDA_VISIBLE_DEVICES (and the same in P2PEXEC_GPUS); two
        that run at once never share one.
        """
        cluster = Cluster(self)
        tasks = [{"id": f"g{i}", "gpus": 1} for i in range(4)]
        side = self.run_job(cluster, tasks, "--gpus", "0,1", "--slots", "4")
        events = read_side(side)
        self.assertEqual({(e[3], e[4]) for e in events}, {("0", "0"), ("1", "1")}, events)
        sets = running_sets(events)
        self.assertEqual(max(len(s) for s in sets), 2, sets)
        for running in sets:
            self.assertEqual(len(set(running.values())), len(running), running)

    def test_gpus_detected_with_nvidia_smi(self) -> None:
        """Without --gpus, a node has the GPUs nvidia-smi -L lists (a fake one on PATH): a gpus = 2 task gets both."""
        cluster = Cluster(self)
        bin_dir = cluster.path("bin")
        os.makedirs(bin_dir)
        fake = os.path.join(bin_dir, "nvidia-smi")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-aaaa)'\necho 'GPU 1: Fake GPU (UUID: GPU-bbbb)'\n")
        os.chmod(fake, os.stat(fake).st_mode | stat.S_IXUSR)
        env = cluster.environment()
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", os.defpath)
        side = self.run_job(cluster, [{"id": "both", "gpus": 2}], env=env)
        events = read_side(side)
        self.assertEqual({e[3] for e in events}, {"0,1"}, events)
