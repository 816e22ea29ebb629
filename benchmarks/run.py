"""
The p2pexec benchmark suite, W1-W10 (run by ``make bench``).

    python benchmarks/run.py [--repeat N] [--only W1,W2,W3,W4,W5,W6,W7,W8,W9,W10,SEC] [--replicas N]
                                [--timeout S] [--keep]

Every workload runs real ``twistd p2pexec`` processes on loopback (see
``benchmarks/workloads.py`` for each topology), ``--repeat`` times (default
3), interleaved (W1, W2, W3, W5 and W7 without and with the kill, then again), and
the table gives the median with the minimum and maximum in brackets.  Ratios
(W2 p2pexec/xargs, W5 and W7 kill/no kill) are taken within each repetition, then
summarised.

  W1  10,000 tasks without a command, master (runs nothing) + 2 workers,
      every node ``--replicas 2`` (the default): tasks/s = tasks / the
      results file's elapsed.  Then the same with ``--replicas 0`` (W1-r0),
      right after it in each repetition: their ratio is replication's cost.
  W2  2,000 tasks ``true`` given to one node ``--slots 2`` (two at a time
      on one machine, as xargs -P2), against ``xargs -P 2 -n 1 true`` over
      the same 2,000 ids, in the same repetition; also through the network
      (master that runs nothing + 1 worker ``--slots 2``, sharing the same
      CPUs) and on the W1 cluster (master + 2 workers ``--slots 2``).
  W3  master + 2 workers launched together: seconds from launch to the
      master's first result (its log's microsecond timestamps), split into
      start-up (until the master and one worker have logged "started"),
      discovery (until the master's first "connected to peer") and the rest.
      Then its floor: three bare twistd nodes (benchmarks/_floor: no p2pexec
      code) launched the same way, seconds until two are up, and W3's
      start-up as a ratio to it.
  W4  peak RSS (VmHWM) of the master and of one worker, read in the W1 runs
      just before the nodes are stopped (and in the W1-r0 runs, for
      information: what replication adds).
  W5  1,000 shell tasks (``echo $P2PEXEC_TASK_ID >> SIDE; sleep 0.01``) on
      master (runs nothing) + 2 workers ``--slots 2``; one worker SIGKILLed
      at 30%: time, tasks lost, tasks run twice, time / the same without the
      kill.
  W6  60 shell tasks of 0.2 s on two workers of kind ``s``: one with 4 slots,
      one with 1 slot whose tasks take 1.0 s (five times slower); makespan
      against the ideal balance computed in the same repetition from the
      fast node alone and both nodes' measured rates (benchmarks/slownode.py).
  W8  two jobs of 200 x ``sleep 0.05`` from two masters (which run nothing)
      over 2 workers x 2 slots, submitted 0.5 s apart: each job's share of
      the slot-time while both run (benchmarks/w8.py).
  W9  "parallel habits": ``p2pexec run --kind sh -- echo {} ::: 1..2000``
      end to end (the client process, one node --slots 2 already up)
      against ``parallel -j2 echo ::: 1..2000`` and ``xargs -P2 -n1 echo``
      in the same repetition, each checked to print the 2,000 lines;
      skipped, saying so, where GNU parallel is not installed
      (benchmarks/habits.py).
  W10 a 1 GiB input with one task, client -> master -> worker (separate
      state folders): MB/s of each hop, as a ratio to copying the same file
      over a loopback TCP socket in the same repetition, and each process's
      peak RSS; also the file's SHA-256 on one core, the ceiling of a hop
      that checks what it receives (benchmarks/files.py).

It re-runs itself in a loopback-only network namespace (``unshare -n``;
root) when it can, and holds ``/tmp/p2pexec-heavy.lock`` while it measures.
Every process is stopped by PID whatever happens; each run fails after
``--timeout`` seconds.  The exit status is 1 if a run failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import files  # noqa: E402
import habits  # noqa: E402
import slownode  # noqa: E402
import w8  # noqa: E402
import workloads  # noqa: E402
from _cluster import (  # noqa: E402
    NODE_OPTIONS,
    TWISTD,
    RunFailed,
    guarded_main,
    heavy_lock,
    interrupt,
    loopback_only,
    machine,
    median,
    precompile,
    speed_probe,
    summary,
)

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10", "SEC")
"""SEC, not run by default: W1 again with a cluster key, and with the key and TLS, each against plain W1 of the same repetition."""
DEFAULT_WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10")
MiB = 1024 * 1024

DASK_REFERENCE = 950.0
"""Dask's no-op tasks/s quoted for W1's target (bench-compare measures it on this machine)."""


def say(text: str) -> None:
    """Print C{text}, prefixed with C{bench:}, at once."""
    print(f"bench: {text}", flush=True)


class Suite:
    """Runs the chosen workloads and collects their figures by name."""

    def __init__(self, args: argparse.Namespace, top: str) -> None:
        self.args = args
        self.top = top
        self.files = workloads.Files(top, args.w1_tasks, args.w2_tasks, args.w5_tasks)
        self.runs: dict[str, list[dict]] = {}
        self.w6_side = os.path.join(top, "w6-side.txt")
        self.w6_job = os.path.join(top, "w6.toml")
        slownode.write_job(self.w6_job, self.w6_side)

    def _folder(self, name: str, repeat: int) -> str:
        folder = os.path.join(self.top, f"{repeat}-{name}")
        os.makedirs(folder, exist_ok=True)
        return folder

    def _one(self, name: str, repeat: int, measure: Callable[[str], dict], line: Callable[[dict], str]) -> None:
        folder = self._folder(name, repeat)
        try:
            figures = measure(folder)
        except RunFailed as e:
            raise RunFailed(f"run {repeat} of {name} failed: {e}\nbench: logs kept in {folder}") from None
        self.runs.setdefault(name, []).append(figures)
        say(f"run {repeat}: {name:<7} {line(figures)}")
        if not self.args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    def repeat(self, number: int) -> None:
        """Run repetition C{number} of each chosen workload, saying each one's figures."""
        a, f, only = self.args, self.files, self.args.only
        if "W1" in only or "W4" in only:
            self._one(
                "W1",
                number,
                lambda d: workloads.w1(d, f.w1_job, a.w1_tasks, a.timeout),
                lambda r: (
                    f"{r['tasks_per_s']:>9,.0f} tasks/s  elapsed {r['elapsed']:.3f}s  CPU {r['cpu']:.2f}s  "
                    f"W4: master {r['master_hwm'] / MiB:.1f} MiB, worker {r['worker_hwm'] / MiB:.1f} MiB"
                ),
            )
        if "W1" in only:
            # The same cluster without replication, right after: their ratio is what replication costs.
            self._one(
                "W1-r0",
                number,
                lambda d: workloads.w1(d, f.w1_job, a.w1_tasks, a.timeout, replicas=0),
                lambda r: (
                    f"{r['tasks_per_s']:>9,.0f} tasks/s  elapsed {r['elapsed']:.3f}s  CPU {r['cpu']:.2f}s  (--replicas 0; "
                    f"--replicas {workloads.W1_REPLICAS} / 0: "
                    f"{self.runs['W1'][-1]['tasks_per_s'] / r['tasks_per_s']:.2f})  "
                    f"W4: master {r['master_hwm'] / MiB:.1f} MiB, worker {r['worker_hwm'] / MiB:.1f} MiB"
                ),
            )
        if "SEC" in only:
            for mode in ("key", "tls"):
                self._one(
                    f"W1-{mode}",
                    number,
                    lambda d, mode=mode: workloads.w1(d, f.w1_job, a.w1_tasks, a.timeout, security=mode),
                    lambda r, mode=mode: f"{r['tasks_per_s']:>9,.0f} tasks/s  elapsed {r['elapsed']:.3f}s  ({mode})",
                )
        if "W2" in only:
            self._one(
                "W2",
                number,
                lambda d: workloads.w2(d, f.w2_job, f.w2_ids, a.w2_tasks, a.timeout, workers=0),
                lambda r: (
                    f"one node x 2 slots {r['elapsed']:.3f}s (from launch {r['launch']:.3f}s)  "
                    f"xargs -P2 {r['xargs']:.3f}s  ratio {r['ratio']:.2f}  CPU {r['master_cpu']:.2f}s"
                ),
            )
            self._one(
                "W2-network",
                number,
                lambda d: workloads.w2(d, f.w2_job, f.w2_ids, a.w2_tasks, a.timeout, workers=1),
                lambda r: (
                    f"master + 1 worker x 2 slots {r['elapsed']:.3f}s  "
                    f"xargs -P2 {r['xargs']:.3f}s  ratio {r['ratio']:.2f}  "
                    f"CPU: master {r['master_cpu']:.2f}s, worker {r['worker_cpu']:.2f}s"
                ),
            )
            self._one(
                "W2-cluster",
                number,
                lambda d: workloads.w2(d, f.w2_job, f.w2_ids, a.w2_tasks, a.timeout, workers=2),
                lambda r: (
                    f"master + 2 workers x 2 slots {r['elapsed']:.3f}s  "
                    f"xargs -P2 {r['xargs']:.3f}s  ratio {r['ratio']:.2f}"
                ),
            )
        if "W3" in only:
            self._one(
                "W3",
                number,
                lambda d: workloads.w3(d, f.w3_job, a.timeout),
                lambda r: (
                    f"first result {r['first_result']:.3f}s after launch  "
                    f"(master up {r['master_up']:.3f}s, master and a worker up {r['pair_up']:.3f}s, "
                    f"first connection {r['first_connect']:.3f}s, last node up {r['last_up']:.3f}s)"
                ),
            )
            self._one(
                "W3-floor",
                number,
                lambda d: workloads.w3_floor(d, a.timeout),
                lambda r: (
                    f"3 bare twistd nodes: two up {r['two_up']:.3f}s after launch, "
                    f"all three {r['all_up']:.3f}s  (W3 start-up / floor "
                    f"{self.runs['W3'][-1]['pair_up'] / r['two_up']:.2f})"
                ),
            )
        if "W5" in only:
            self._one(
                "W5",
                number,
                lambda d: workloads.w5(d, f.w5_job, f.side, a.w5_tasks, False, a.timeout),
                lambda r: f"no kill: {r['elapsed']:.3f}s  lost {r['lost']}  run twice {r['reruns']}",
            )
            self._one(
                "W5kill",
                number,
                lambda d: workloads.w5(d, f.w5_job, f.side, a.w5_tasks, True, a.timeout),
                lambda r: (
                    f"kill at {r['killed_at']} started: {r['elapsed']:.3f}s  lost {r['lost']}  "
                    f"requeued {r['requeue_delay'] * 1000:.1f} ms after the kill  "
                    f"run twice {r['reruns']}  handed out again {r['reassigned']}  "
                    f"ratio {r['elapsed'] / self.runs['W5'][-1]['elapsed']:.2f}"
                ),
            )
        if "W6" in only:
            self._one(
                "W6",
                number,
                lambda d: slownode.w6(d, self.w6_job, self.w6_side, a.timeout),
                lambda r: (
                    f"both nodes {r['elapsed']:.3f}s  fast node alone {r['alone']:.3f}s  ideal {r['ideal']:.3f}s  "
                    f"ratio {r['ratio']:.2f}  (rates {r['fast_rate']:.1f} + {r['slow_rate']:.2f} tasks/s; slow node "
                    f"started {r['slow_starts']}, finished {r['slow_ends']}; tasks started twice {r['twice']})"
                ),
            )
        if "W7" in only:
            self._one(
                "W7",
                number,
                lambda d: workloads.w7(d, f.w5_job, f.side, a.w5_tasks, False, a.timeout),
                lambda r: f"no kill: {r['elapsed']:.3f}s  lost {r['lost']}  run twice {r['reruns']}",
            )
            self._one(
                "W7kill",
                number,
                lambda d: workloads.w7(d, f.w5_job, f.side, a.w5_tasks, True, a.timeout),
                lambda r: (
                    f"master killed at {r['killed_at']} started: {r['elapsed']:.3f}s  lost {r['lost']}  "
                    f"run twice {r['reruns']}  {r['leader']} took over {r['takeover'] * 1000:.0f} ms and "
                    f"resumed {r['resume'] * 1000:.0f} ms after it saw the master die  "
                    f"result through {r['asked']} ({r['answered_by']}, epoch {r['epoch']})  "
                    f"ratio {r['elapsed'] / self.runs['W7'][-1]['elapsed']:.2f}"
                ),
            )

        if "W8" in only:
            self._one(
                "W8",
                number,
                lambda d: w8.w8(d, a.timeout),
                lambda r: (
                    f"first job's share while both run {r['share']:.1%} "
                    f"(bench1 {r['share_bench1']:.1%}, bench2 {r['share_bench2']:.1%}) over {r['window']:.2f}s, "
                    f"{r['busy'] / r['window']:.2f} of 4 slots busy; elapsed {r['first_elapsed']:.2f}s and "
                    f"{r['second_elapsed']:.2f}s"
                ),
            )

        if "W9" in only:
            if habits.PARALLEL is None:
                if number == 1:
                    say("W9 skipped: GNU parallel is not installed (apt-get install parallel)")
            else:
                self._one(
                    "W9",
                    number,
                    lambda d: habits.w9(d, a.w2_tasks, a.timeout),
                    lambda r: (
                        f"p2pexec run {r['p2pexec']:.3f}s  parallel -j2 {r['parallel']:.3f}s  "
                        f"xargs -P2 {r['xargs']:.3f}s  ratios {r['ratio_parallel']:.2f} / {r['ratio_xargs']:.2f}"
                    ),
                )

        if "W10" in only:
            self._one(
                "W10",
                number,
                lambda d: files.w10(d, a.w10_bytes, a.timeout),
                lambda r: (
                    f"socket {r['socket_mbps']:.0f} MB/s  upload {r['upload_mbps']:.0f} MB/s "
                    f"({r['upload_ratio']:.2f})  fetch {r['fetch_mbps']:.0f} MB/s ({r['fetch_ratio']:.2f})  "
                    f"VmHWM master {r['master_hwm_kib'] / 1024:.1f} MiB, worker {r['worker_hwm_kib'] / 1024:.1f} MiB, "
                    f"client {r['client_rss_kib'] / 1024:.1f} MiB"
                ),
            )

    # -- the table ----------------------------------------------------------------

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """(workload, figure, median (min-max), target, met)."""
        rows: list[tuple[str, str, str, str, str]] = []
        a = self.args

        def add(
            workload: str,
            label: str,
            values: list[float],
            fmt: str,
            target: str = "",
            ok: Callable[[float], bool] | None = None,
            judge: float | None = None,
        ) -> None:
            verdict = ""
            if ok is not None and values:
                value = median(values) if judge is None else judge
                verdict = "met" if ok(value) else "MISSED"
            rows.append((workload, label, summary(values, fmt), target, verdict))

        def add_kill(
            workload: str, plain: list[dict], killed: list[dict], limit: float, slots: int, whose: str
        ) -> None:
            """The rows a kill workload (W5, W7) shares: the slowdown, tasks lost, tasks run twice."""
            add(
                workload,
                "ratio kill / no kill",
                [k["elapsed"] / b["elapsed"] for k, b in zip(killed, plain)],
                ".2f",
                f"<= {limit:g}",
                lambda v: v <= limit,
            )
            add(
                workload,
                "tasks lost (kill)",
                [r["lost"] for r in killed],
                "d",
                "0 in every run",
                lambda v: v == 0,
                judge=max(r["lost"] for r in killed + plain),
            )
            add(
                workload,
                "tasks run twice (kill)",
                [r["reruns"] for r in killed],
                "d",
                f"<= {slots} ({whose} slots) in every run",
                lambda v: v <= slots,
                judge=max(r["reruns"] for r in killed),
            )

        w1 = self.runs.get("W1", [])
        if w1 and "W1" in a.only:
            target = 10 * DASK_REFERENCE
            add(
                "W1",
                f"tasks/s, {a.w1_tasks:,} no-op tasks",
                [r["tasks_per_s"] for r in w1],
                ",.0f",
                f">= {target:,.0f} (10x Dask's {DASK_REFERENCE:,.0f}/s)",
                lambda v: v >= target,
            )
            add("W1", "elapsed s", [r["elapsed"] for r in w1], ".3f")
            bare = self.runs.get("W1-r0", [])
            if bare:
                add("W1", "tasks/s with --replicas 0", [r["tasks_per_s"] for r in bare], ",.0f")
                add(
                    "W1",
                    f"  ratio --replicas {workloads.W1_REPLICAS} (default) / 0 (same repetition)",
                    [w["tasks_per_s"] / b["tasks_per_s"] for w, b in zip(w1, bare)],
                    ".2f",
                    ">= 0.85",
                    lambda v: v >= 0.85,
                )
                add(
                    "W1",
                    "  CPU s of the 3 nodes, --replicas 2 / 0 (start-up included)",
                    [w["cpu"] / b["cpu"] for w, b in zip(w1, bare)],
                    ".2f",
                )
        if w1 and "W4" in a.only:
            add(
                "W4",
                "master peak RSS (VmHWM) MiB",
                [r["master_hwm"] / MiB for r in w1],
                ".1f",
                "< 50",
                lambda v: v < 50,
            )
            add(
                "W4",
                "worker peak RSS (VmHWM) MiB",
                [r["worker_hwm"] / MiB for r in w1],
                ".1f",
                "< 40",
                lambda v: v < 40,
            )
            bare = self.runs.get("W1-r0", [])
            if bare:
                add("W4", "  master VmHWM MiB with --replicas 0", [r["master_hwm"] / MiB for r in bare], ".1f")
                add("W4", "  worker VmHWM MiB with --replicas 0", [r["worker_hwm"] / MiB for r in bare], ".1f")
        plain = self.runs.get("W1", [])
        for mode, label in (("key", "cluster key"), ("tls", "cluster key + TLS")):
            secured = self.runs.get(f"W1-{mode}", [])
            if secured and plain:
                add("SEC", f"W1 tasks/s with {label}", [r["tasks_per_s"] for r in secured], ",.0f")
                add(
                    "SEC",
                    f"  ratio {label} / plain (same repetition)",
                    [s["tasks_per_s"] / p["tasks_per_s"] for s, p in zip(secured, plain)],
                    ".2f",
                )
        w2 = self.runs.get("W2", [])
        if w2:
            add("W2", f"one node x 2 slots s, {a.w2_tasks:,} x true", [r["elapsed"] for r in w2], ".3f")
            add("W2", "xargs -P 2 -n 1 true s", [r["xargs"] for r in w2], ".3f")
            add("W2", "ratio one node / xargs -P2", [r["ratio"] for r in w2], ".2f", "<= 1.5", lambda v: v <= 1.5)
            add("W2", "one node from launch s", [r["launch"] for r in w2], ".3f")
            add("W2", "  node CPU s (start-up included)", [r["master_cpu"] for r in w2], ".2f")
        w2n = self.runs.get("W2-network", [])
        if w2n:
            add("W2", "master + 1 worker x 2 slots s", [r["elapsed"] for r in w2n], ".3f")
            add("W2", "ratio master + 1 worker / xargs -P2", [r["ratio"] for r in w2n], ".2f")
            add("W2", "  master CPU s (start-up included)", [r["master_cpu"] for r in w2n], ".2f")
            add("W2", "  worker CPU s (start-up included)", [r["worker_cpu"] for r in w2n], ".2f")
        w2c = self.runs.get("W2-cluster", [])
        if w2c:
            add("W2", "master + 2 workers x 2 slots (W1 cluster) s", [r["elapsed"] for r in w2c], ".3f")
            add("W2", "ratio W1 cluster / xargs -P2", [r["ratio"] for r in w2c], ".2f")
        w9 = self.runs.get("W9", [])
        if w9:
            add("W9", f"p2pexec run ... ::: 1..{a.w2_tasks} (echo) s", [r["p2pexec"] for r in w9], ".3f")
            add("W9", "parallel -j2 echo s", [r["parallel"] for r in w9], ".3f")
            add("W9", "xargs -P2 -n1 echo s", [r["xargs"] for r in w9], ".3f")
            add("W9", "ratio p2pexec run / parallel -j2", [r["ratio_parallel"] for r in w9], ".2f")
            add("W9", "ratio p2pexec run / xargs -P2", [r["ratio_xargs"] for r in w9], ".2f")
        w3 = self.runs.get("W3", [])
        if w3:
            add("W3", "launch -> first result s", [r["first_result"] for r in w3], ".3f", "< 0.4", lambda v: v < 0.4)
            add("W3", "  start-up: launch -> master and a worker up s", [r["pair_up"] for r in w3], ".3f")
            add(
                "W3",
                "  discovery: both up -> first connection s",
                [r["first_connect"] - r["pair_up"] for r in w3],
                ".3f",
            )
            add(
                "W3",
                "  first connection -> first result s",
                [r["first_result"] - r["first_connect"] for r in w3],
                ".3f",
            )
        floor = self.runs.get("W3-floor", [])
        if w3 and floor:
            add("W3", "floor: 3 bare twistd nodes, launch -> two up s", [r["two_up"] for r in floor], ".3f")
            add(
                "W3",
                "  W3 start-up / floor (same repetition)",
                [w["pair_up"] / f["two_up"] for w, f in zip(w3, floor)],
                ".2f",
            )
        w5, w5k = self.runs.get("W5", []), self.runs.get("W5kill", [])
        if w5 and w5k:
            add("W5", f"no kill s, {a.w5_tasks:,} x sleep 0.01", [r["elapsed"] for r in w5], ".3f")
            add("W5", "one worker SIGKILLed at 30% s", [r["elapsed"] for r in w5k], ".3f")
            add_kill("W5", w5, w5k, 1.3, workloads.SLOTS, "the worker's")
            add("W5", "tasks handed out again (kill)", [r["reassigned"] for r in w5k], "d")
        w6 = self.runs.get("W6", [])
        if w6:
            add(
                "W6",
                f"makespan s, {slownode.TASKS} x 0.2 s, fast 4 slots + slow 1 slot x5",
                [r["elapsed"] for r in w6],
                ".3f",
            )
            add("W6", "  the fast node alone s", [r["alone"] for r in w6], ".3f")
            add("W6", "  ideal balance s (same repetition)", [r["ideal"] for r in w6], ".3f")
            add("W6", "ratio makespan / ideal", [r["ratio"] for r in w6], ".2f", "<= 1.15", lambda v: v <= 1.15)
            add("W6", "  tasks started on the slow node", [r["slow_starts"] for r in w6], "d")
            add("W6", "  tasks started twice (backups)", [r["twice"] for r in w6], "d")
        w7, w7k = self.runs.get("W7", []), self.runs.get("W7kill", [])
        if w7 and w7k:
            add("W7", f"no kill s, {a.w5_tasks:,} x sleep 0.01, --replicas 2", [r["elapsed"] for r in w7], ".3f")
            add("W7", "master SIGKILLed at 30%, never restarted s", [r["elapsed"] for r in w7k], ".3f")
            add_kill("W7", w7, w7k, 1.5, workloads.SLOTS * len(workloads.WORKERS), "the workers'")
            add("W7", "master seen dead -> takeover s", [r["takeover"] for r in w7k], ".3f")
            add(
                "W7",
                "master seen dead -> first result at the new master s",
                [r["resume"] for r in w7k],
                ".3f",
                "<= 1 in every run",
                lambda v: v <= 1.0,
                judge=max(r["resume"] for r in w7k),
            )
            add("W7", "tasks handed out again (kill)", [r["reassigned"] for r in w7k], "d")
        w8runs = self.runs.get("W8", [])
        if w8runs:
            low, high = 0.5 - w8.W8_TARGET, 0.5 + w8.W8_TARGET
            add(
                "W8",
                "first job's share of the slot-time while both run",
                [r["share"] for r in w8runs],
                ".3f",
                f"{low:.2f}-{high:.2f} in every run",
                lambda v: low <= v <= high,
                judge=max((r["share"] for r in w8runs), key=lambda v: abs(v - 0.5)),
            )
            for worker in workloads.WORKERS:
                add("W8", f"  on {worker}", [r[f"share_{worker}"] for r in w8runs], ".3f")
            add("W8", "  slots busy while both run (of 4)", [r["busy"] / r["window"] for r in w8runs], ".2f")
            add("W8", "  seconds both ran", [r["window"] for r in w8runs], ".2f")
        w10 = self.runs.get("W10", [])
        if w10:
            size = f"{a.w10_bytes / 2**30:g} GiB" if a.w10_bytes >= 2**30 else f"{a.w10_bytes / 2**20:g} MiB"
            add("W10", f"loopback socket copy of {size} MB/s", [r["socket_mbps"] for r in w10], ".0f")
            add("W10", "SHA-256 of the file, one core MB/s", [r["sha256_mbps"] for r in w10], ".0f")
            add("W10", "  ratio SHA-256 / socket copy (a hop's ceiling)", [r["sha256_ratio"] for r in w10], ".2f")
            add("W10", "upload client -> master MB/s", [r["upload_mbps"] for r in w10], ".0f")
            add("W10", "fetch master -> worker MB/s", [r["fetch_mbps"] for r in w10], ".0f")
            for hop in ("upload", "fetch"):
                add(
                    "W10",
                    f"ratio {hop} / socket copy",
                    [r[f"{hop}_ratio"] for r in w10],
                    ".2f",
                    ">= 0.5",
                    lambda v: v >= 0.5,
                )
            for who in ("master", "worker"):
                add(
                    "W10",
                    f"peak RSS {who} MiB",
                    [r[f"{who}_hwm_kib"] / 1024 for r in w10],
                    ".1f",
                    "<= 100 in every run",
                    lambda v: v <= 100,
                    judge=max(r[f"{who}_hwm_kib"] / 1024 for r in w10),
                )
            add("W10", "peak RSS client MiB", [r["client_rss_kib"] / 1024 for r in w10], ".1f")
        return rows


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    """Print the rows of L{Suite.rows} as an aligned table."""
    header = ("", "figure", "median (min-max)", "target", "")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header).rstrip())
    print("-" * (sum(widths) + 8))
    for row in rows:
        print(line.format(*row).rstrip())


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the suite under the guards and print its table; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each workload (default 3)")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_WORKLOADS),
        help="workloads to run (default W1-W10; SEC adds W1 with a cluster key and with TLS, and needs W1)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="give every node --replicas N (default: the node's own default; W7 always uses 2)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds after which a run fails (default 120)")
    parser.add_argument("--w1-tasks", type=int, default=10_000)
    parser.add_argument("--w2-tasks", type=int, default=2_000)
    parser.add_argument("--w5-tasks", type=int, default=1_000)
    parser.add_argument("--w10-bytes", type=int, default=2**30, help="size of W10's input file (default 1 GiB)")
    parser.add_argument("--keep", action="store_true", help="keep every run's logs")
    parser.add_argument(
        "--memtrace",
        metavar="DIR",
        help="write each node's memory report to DIR (benchmarks/_memtrace; P2PEXEC_MEMTRACE_FRAMES=N adds tracemalloc)",
    )
    args = parser.parse_args(argv)
    args.only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    if not args.only <= set(WORKLOADS) or args.repeat < 1 or args.timeout <= 0:
        parser.error(f"--only takes some of {','.join(WORKLOADS)}; --repeat >= 1; --timeout > 0")
    if args.replicas is not None:
        if args.replicas < 0:
            parser.error("--replicas takes a count >= 0")
        NODE_OPTIONS[:] = ["--replicas", str(args.replicas)]
    if args.memtrace:
        os.makedirs(args.memtrace, exist_ok=True)
        os.environ["P2PEXEC_MEMTRACE"] = os.path.abspath(args.memtrace)
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_memtrace")
        os.environ["PYTHONPATH"] = here + os.pathsep + os.environ.get("PYTHONPATH", "")
    if not os.access(TWISTD, os.X_OK):
        say(f"no twistd beside {sys.executable}; run it with the project's virtualenv (make bench)")
        return 1
    status = guarded_main([os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)], say, False)
    if status is not None:
        return status
    signal.signal(signal.SIGTERM, interrupt)
    top = tempfile.mkdtemp(prefix="p2pexec-bench-")
    say(machine())
    say(
        f"network: {'a loopback-only namespace' if loopback_only() else 'the host namespace, 127.0.0.1 only'}; "
        f"every node --slots {workloads.SLOTS}"
        + ("" if args.replicas is None else f" --replicas {args.replicas}")
        + f"; {args.repeat} repetition(s) of {','.join(sorted(args.only))}"
    )
    started = time.monotonic()
    precompile()
    suite = Suite(args, top)
    speed_before = speed_probe()
    try:
        with heavy_lock(1800, say):
            for number in range(1, args.repeat + 1):
                suite.repeat(number)
    except RunFailed as e:
        say(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        say(f"interrupted; every node was stopped; files in {top}")
        return 1
    speed_after = speed_probe()
    print()
    print(f"p2pexec benchmark suite: median (min-max) of {args.repeat} run(s); {machine()}")
    print(
        f"host speed: a fixed Python loop took {speed_before:.0f} ms of CPU before the runs and "
        f"{speed_after:.0f} ms after (lower is faster; see _cluster.speed_probe)"
    )
    print()
    print_table(suite.rows())
    print()
    print(
        "W1/W4/W5: master runs no task kind + 2 workers (--slots 2); W2: one node (--slots 2) runs the job "
        "itself, i.e. 2 tasks at a time, like xargs -P2;"
    )
    print(
        "W3: master + 2 workers launched together; W4 read in the W1 runs; W7: W5's job, every node --replicas 2, "
        "the master killed; W8: 2 masters + 2 workers x 2 slots. Details: benchmarks/workloads.py, docs/performance.rst."
    )
    print(f"total {time.monotonic() - started:.0f}s")
    if args.keep:
        print(f"logs: {top}")
    else:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
