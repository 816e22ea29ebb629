"""
A deterministic simulation of a whole cluster, as FoundationDB and
TigerBeetle test their protocols: seeded random faults on the in-memory
network, then invariant checks.

One run (L{Simulation}) starts N nodes (L{SimulationConfig.nodes}, 5 by
default) on a L{FakeNetwork}, each on its own simulated host, gives the
first one (the master) a job of M tasks, and plays a schedule of faults drawn
from C{random.Random(seed)} (L{make_schedule}): nodes crash and restart with
their journal, freeze (as by SIGSTOP) and thaw, links are cut and mended,
slowed down, the clock jumps and a node's wall clock steps.  The faults stop
after L{SimulationConfig.fault_window} simulated seconds; then every link is
mended, every node thawed and the master restarted if it is down, and the run
goes on until the job finishes or L{SimulationConfig.quiet_limit} seconds
pass.  Nothing else is random: every node's random choices come from its own
seeded C{random.Random} (C{create_node(rng=...)}), its wall clock is
simulated, and time only moves when the simulation moves it, so a seed
replays exactly (L{Outcome.trace}).

The schedule lives in L{p2pexec.testing.schedule}; the invariant checkers,
plain functions that each return a list of readable violations, and the
L{IFailoverProbe} the failover ones read, live in
L{p2pexec.testing.invariants}.

Replay one seed (its schedule is printed)::

    P2PEXEC_SIM_SEED=1234 python -m twisted.trial tests.test_simulation

or from Python::

    print(Simulation(1234).run().report())
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import tempfile
import traceback
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attr
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from p2pexec.job import Job
from p2pexec.journal import Journal
from p2pexec.model import Assignment, TaskResult, TaskSpec
from p2pexec.node import Node, NodeConfig, create_node
from p2pexec.testing.invariants import (
    IFailoverProbe,
    NoFailover,
    Observation,
    Recorded,
    check_fencing,
    check_finished,
    check_no_double_records,
    check_no_unhandled_errors,
    check_one_leader_per_epoch,
    check_results,
)
from p2pexec.testing.network import FakeHost, FakeNetwork
from p2pexec.testing.probe import FailoverProbe
from p2pexec.testing.runner import FakeRunner
from p2pexec.testing.schedule import Fault, SimulationConfig, make_schedule

__all__ = [
    "Outcome",
    "Simulation",
    "replay_command",
    "run_seeds",
]

WALL_START = 1_800_000_000.0
"""The simulated wall clock at time 0 (a moment in 2027)."""

JOB_SOURCE = "simulation"
"""The start-up job's source, so that a restarted master resumes it."""

ADDRESS = "127.0.0.{}"
"""Node number i (from 1) lives on host 127.0.0.(i+1), port L{PORT}."""

PORT = 10001


def replay_command(seed: int) -> str:
    """The shell command that replays C{seed} alone, printing its schedule."""
    return f"P2PEXEC_SIM_SEED={seed} python -m twisted.trial tests.test_simulation"


# -- a run ----------------------------------------------------------------------


@attr.s(auto_attribs=True)
class Outcome:
    """What one run did and found."""

    seed: int
    schedule: list[Fault]
    violations: list[str]
    trace: list[str]
    tasks: int
    runs: int
    finished_at: float | None
    last_lines: list[str]

    def report(self) -> str:
        """The seed, its schedule, what went wrong, and the last log lines: enough to start debugging."""
        lines = [
            f"Seed {self.seed}: {self.tasks} task(s), {self.runs} attempt(s) run, "
            + (f"job finished by t={self.finished_at:.3f}" if self.finished_at is not None else "job unfinished"),
            "Schedule:",
        ]
        lines += ["  " + fault.describe() for fault in self.schedule] or ["  (no faults)"]
        if self.violations:
            lines.append("Violations:")
            lines += ["  " + v for v in self.violations]
            lines.append("Last log lines:")
            lines += ["  " + line for line in self.last_lines]
        lines.append(f"Replay: {replay_command(self.seed)}")
        return "\n".join(lines)


class _TracingRunner(FakeRunner):
    """A L{FakeRunner} that notes each attempt it starts in the run's trace."""

    def __init__(self, clock: Any, node: str, duration: float, trace: list[str]) -> None:
        super().__init__(clock, node, duration=duration)
        self._trace = trace

    def run(self, job: str, assignment: Assignment) -> Any:
        """Start a pretend attempt, noted in the trace."""
        self._trace.append(f"{self._clock.seconds():.6f} {self._node} runs {assignment.task.id}#{assignment.attempt}")
        return super().run(job, assignment)


@contextmanager
def _quiet_log(keep: list[Mapping[str, Any]], last: deque[Mapping[str, Any]]) -> Iterator[None]:
    """
    Route every log event to the run alone: critical ones kept in C{keep},
    every one in the bounded C{last}; the usual observers (trial's log file)
    hear nothing meanwhile, or a minute of simulation would write megabytes.
    """

    def observe(event: Mapping[str, Any]) -> None:
        last.append(event)
        if event.get("log_level") is LogLevel.critical:
            keep.append(event)

    publisher: Any = globalLogPublisher
    saved = list(publisher._observers)
    publisher._observers[:] = [observe]
    try:
        yield
    finally:
        publisher._observers[:] = saved


class Simulation:
    """
    One seeded run (see the module's docstring).

    @ivar network: the in-memory network.
    @ivar nodes: the live nodes, by name.
    """

    def __init__(
        self,
        seed: int,
        config: SimulationConfig | None = None,
        probe: IFailoverProbe | None = None,
        log_lines: bool = False,
    ) -> None:
        """
        @param log_lines: put every log line in the trace too (slower; for
            checking that a seed replays exactly).
        """
        self.seed = seed
        self.config = config or SimulationConfig()
        self.probe: IFailoverProbe = probe or (FailoverProbe() if self.config.failover else NoFailover())
        self._log_lines = log_lines
        self.schedule = make_schedule(seed, self.config)
        rng = random.Random(f"cluster/{seed}")
        names = self.config.names()
        self.master_name = names[0]
        self.tasks = tuple(
            TaskSpec(id=f"t{i}", kind="w", command=("true",)) for i in range(rng.randint(*self.config.tasks))
        )
        self._slots = {name: rng.randint(1, 3) for name in names}
        self._durations = {name: round(rng.uniform(0.2, 2.0), 3) for name in names}
        self._addresses = {name: ADDRESS.format(i + 1) for i, name in enumerate(names)}
        self.network = FakeNetwork()
        self.nodes: dict[str, Node] = {}
        self.hosts: dict[str, FakeHost] = {}
        self._incarnations: Counter[str] = Counter()
        self._wall_skew: dict[str, float] = dict.fromkeys(names, 0.0)
        self._state_dirs: dict[str, str] = {}
        self.trace: list[str] = []
        self.records: list[Recorded] = []
        self.known: dict[tuple[str, int, int], set[str]] = {}
        self.observations: list[Observation] = []
        self.job_id: str | None = None
        self.accepted: list[str] = []
        """The ids of the tasks accepted (a job's tasks are accepted once its submission is acknowledged)."""
        self._ended: list[tuple[int, int, Job]] = []
        """The job as finished by a node that then went down: (its epoch, 0, the job)."""
        self.offset = 0.0
        """When the schedule's time 0 is (with failover, the moment the job is submitted)."""
        self.runs = 0

    # -- nodes ----------------------------------------------------------------

    def _note(self, text: str) -> None:
        self.trace.append(f"{self.network.seconds():.6f} {text}")

    def start(self, name: str) -> Node:
        """Start node C{name} (again, with its journal, if it ran before)."""
        self._incarnations[name] += 1
        incarnation = self._incarnations[name]
        host = self.network.host(self._addresses[name])
        runner = _TracingRunner(host, name, self._durations[name], self.trace)
        config = NodeConfig(
            name=name,
            interface=self._addresses[name],
            port=PORT,
            capabilities=frozenset({"w"}),
            slots=self._slots[name],
            tasks=self.tasks if name == self.master_name and not self.config.failover else None,
            job_source=JOB_SOURCE if name == self.master_name and not self.config.failover else None,
            state_dir=self._state_dirs[name],
            replicas=self.config.replicas if self.config.failover else 0,
        )
        network = self.network

        def wall() -> float:
            return WALL_START + network.seconds() + self._wall_skew[name]

        node = create_node(config, host, runner, wall=wall, rng=random.Random(f"node/{self.seed}/{name}/{incarnation}"))
        node.views.on_result(lambda result: self._recorded(name, incarnation, result))
        self.nodes[name], self.hosts[name] = node, host
        self.probe.attach(name, incarnation, node)
        node.start()
        if name == self.master_name and not self.config.failover:
            job_id = node.startup.job_id
            if self.job_id is None:
                self.job_id = job_id
            job = node.master.jobs.get(self.job_id) if self.job_id is not None else None
            self.known[(name, incarnation, 1)] = (
                set()
                if job is None
                else {t for t, r in job.tasks.items() if r.result is not None and r.result.status == "succeeded"}
            )
        self._note(f"{name} starts (#{incarnation}, instance {node.info.instance})")
        return node

    def _recorded(self, master: str, incarnation: int, result: TaskResult) -> None:
        now = self.network.seconds()
        node = self.nodes.get(master)
        epoch = node.master.epoch_of(self.job_id) if node is not None and self.job_id is not None else 1
        self.records.append(
            Recorded(now, master, incarnation, result.task_id, result.attempt, result.status, result.node, epoch)
        )
        self.trace.append(f"{now:.6f} {master} records {result.task_id}#{result.attempt} {result.status} {result.node}")

    def _collect(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is None:
            return
        job = node.master.jobs.get(self.job_id) if self.job_id is not None else None
        if (
            job is not None
            and job.finished is not None
            and self.job_id is not None
            and (self.probe.settled(self.job_id, node) or self._end_held(name))
        ):
            self._ended.append((node.master.epoch_of(self.job_id), 0, job))
        for observation in self.probe.observations(name, node):
            self.observations.append(observation)
            if observation.kind == "took over":
                # The results the new leader took over with: it must never record them again.
                done = {t for t in observation.detail.split(",") if t}
                self.known.setdefault((observation.node, observation.incarnation, observation.epoch), set()).update(
                    done
                )

    def submit(self) -> None:
        """
        With failover: once the master is connected to every other node
        (or a few seconds passed), submit the job to it, as a client would;
        its tasks are accepted once the submission is acknowledged.
        """
        network, master = self.network, self.nodes[self.master_name]
        others = len(self.nodes) - 1
        network.run_events(5.0, stop=lambda: len(master.peers.connected_peers()) >= others)
        documents = [{"id": t.id, "kind": t.kind, "command": ["true"]} for t in self.tasks]

        def accepted(job_id: str) -> None:
            self.job_id = job_id
            self.accepted = [t.id for t in self.tasks]
            self._note(f"{self.master_name} accepted job {job_id}")
            self._collect(self.master_name)  # the probe notes the job's replica set

        master.submit(documents, label="simulated job").addCallbacks(accepted, lambda f: self._note(f"submit: {f}"))
        network.run_events(0.5, stop=lambda: self.job_id is not None)
        self.offset = network.seconds()

    def crash(self, name: str) -> None:
        """Kill node C{name} at once, as SIGKILL would (what its journal holds stays)."""
        self._collect(name)
        self.hosts[name].crash()
        node = self.nodes.pop(name)
        if isinstance(node.journal, Journal):
            node.journal.abandon()

    # -- faults ---------------------------------------------------------------

    def _group_addresses(self, names: Iterable[str]) -> list[str]:
        return [self._addresses[n] for n in names]

    def apply(self, fault: Fault) -> None:
        """Make C{fault} happen now (a crash of a node already down, and the like, is noted and skipped)."""
        kind, names = fault.kind, fault.nodes
        skipped = False
        if kind == "crash":
            skipped = names[0] not in self.nodes
            if not skipped:
                self.crash(names[0])
        elif kind == "restart":
            skipped = names[0] in self.nodes
            if not skipped:
                self.start(names[0])
        elif kind == "freeze":
            skipped = names[0] not in self.nodes
            if not skipped:
                self.hosts[names[0]].freeze()
        elif kind == "thaw":
            if names[0] in self.nodes:
                self.hosts[names[0]].thaw()
        elif kind in ("cut", "mend"):
            for a in self._group_addresses(names):
                for b in self._group_addresses(fault.other):
                    (self.network.cut if kind == "cut" else self.network.mend)(a, b)
        elif kind == "delay":
            a, b = self._group_addresses(names)
            self.network.set_delay(a, b, fault.seconds)
        elif kind == "jump":
            self.network.advance(fault.seconds)
        elif kind == "wall":
            self._wall_skew[names[0]] += fault.seconds
        self._note(("skipped: " if skipped else "fault: ") + fault.describe().split(None, 1)[1])

    def calm(self) -> None:
        """End every fault: mend every link, end every delay, thaw every node, restart the master if down."""
        self.network.cuts.clear()
        self.network.delays.clear()
        for host in self.hosts.values():
            if host.frozen and not host.crashed:
                host.thaw()
        if not self.config.failover and self.master_name not in self.nodes:
            self.start(self.master_name)
        self._note("faults stop")

    # -- the run --------------------------------------------------------------

    def final_job(self) -> Job | None:
        """
        The job as its final master holds it: the live node that leads it,
        or a node that finished it before it went down, whichever led it at
        the higher epoch (a deposed master may have finished the job on its
        own, uncommitted; the leader after it has the say).
        """
        final = self._final()
        return final[2] if final is not None else None

    def _final(self) -> tuple[int, int, Job] | None:
        """The final master's epoch, whether it is live (1) or went down having finished the job (0), and the job."""
        if self.job_id is None:
            return None
        candidates = list(self._ended)
        leader = self.probe.master_of(self.job_id, self.nodes)
        job = self.nodes[leader].master.jobs.get(self.job_id) if leader is not None else None
        if leader is not None and job is not None:
            candidates.append((self.nodes[leader].master.epoch_of(self.job_id), 1, job))
        return max(candidates, key=lambda c: c[:2]) if candidates else None

    def _end_held(self, finisher: str) -> bool:
        """
        Whether a majority of the job's replica set holds its end, counting
        C{finisher}, which logged it (the answers may not have reached it
        before it went down: committed all the same).
        """
        assert self.job_id is not None
        replicas = self.probe.replica_set(self.job_id, self.master_name)
        others = [n for n in replicas if n != finisher and n in self.nodes]
        held = 1 + sum(1 for n in others if self.probe.holds_end(self.job_id, self.nodes[n]))
        return held >= len(replicas) // 2 + 1

    def _must_finish(self) -> bool:
        """
        Whether the job must finish now that the faults stopped: it was
        accepted and a majority of its replica set lives (nothing restarts
        after the faults stop, so a dead majority stays dead: waiting for
        the job then would only burn time).
        """
        if not self.accepted or self.job_id is None:
            return False
        for name in list(self.nodes):
            self._collect(name)
        replicas = self.probe.replica_set(self.job_id, self.master_name)
        return sum(1 for n in replicas if n in self.nodes) >= len(replicas) // 2 + 1

    def _finished(self) -> bool:
        """Whether the job finished at its final master, for good (committed, with failover)."""
        if not self.accepted:
            return True  # nothing was accepted: nothing need finish
        final = self._final()
        if final is None or final[2].finished is None:
            return False
        if final[1] == 0:
            return True  # it went down after the end was committed (see _collect)
        leader = self.probe.master_of(final[2].id, self.nodes)
        return leader is not None and self.probe.settled(final[2].id, self.nodes[leader])

    def run(self) -> Outcome:
        """Play the schedule, let the cluster calm down, and check every invariant."""
        critical: list[Mapping[str, Any]] = []
        last: deque[Mapping[str, Any]] = deque(maxlen=60)
        root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        scratch = tempfile.mkdtemp(prefix="p2pexec-sim-", dir=root)
        try:
            with _quiet_log(critical, last) if not self._log_lines else self._logged(critical, last):
                try:
                    return self._run(scratch, critical, last)
                except Exception:
                    return Outcome(
                        seed=self.seed,
                        schedule=self.schedule,
                        violations=["The simulation itself raised:\n" + traceback.format_exc()],
                        trace=self.trace,
                        tasks=len(self.tasks),
                        runs=sum(1 for line in self.trace if " runs " in line),
                        finished_at=None,
                        last_lines=[formatEvent(dict(e)) or "" for e in last],
                    )
        finally:
            for node in self.nodes.values():
                try:
                    node.journal.close()
                except Exception:
                    pass
            shutil.rmtree(scratch, ignore_errors=True)

    @contextmanager
    def _logged(self, critical: list[Mapping[str, Any]], last: deque[Mapping[str, Any]]) -> Iterator[None]:
        with _quiet_log(critical, last):
            publisher: Any = globalLogPublisher

            def line(event: Mapping[str, Any]) -> None:
                if event.get("log_namespace", "").startswith("p2pexec"):
                    self._note("log: " + (formatEvent(dict(event)) or ""))

            publisher._observers.append(line)
            yield

    def _run(self, scratch: str, critical: list[Mapping[str, Any]], last: deque[Mapping[str, Any]]) -> Outcome:
        config = self.config
        for name in config.names():
            self._state_dirs[name] = os.path.join(scratch, name)
            self.start(name)
        network = self.network
        if config.failover:
            self.submit()
        else:
            self.accepted = [t.id for t in self.tasks]
        for fault in self.schedule:
            network.run_events(max(0.0, self.offset + fault.at - network.seconds()))
            self.apply(fault)
        network.run_events(max(0.0, self.offset + config.fault_window - network.seconds()))
        self.calm()
        quiet_start = network.seconds()
        if self._must_finish():
            network.run_events(config.quiet_limit, stop=self._finished)
        finished_at = network.seconds() if self._finished() else None
        network.run_events(config.settle)
        for name in list(self.nodes):
            self._collect(name)
        gc.collect()  # an unhandled error in a Deferred is logged when it is collected
        job_id = self.job_id or "(none)"
        final = self.final_job()
        replicas = self.probe.replica_set(job_id, self.master_name)
        alive = [n for n in replicas if n in self.nodes]
        majority = len(alive) >= len(replicas) // 2 + 1
        violations = (
            (check_results(job_id, self.accepted, final) if self.accepted and (final or majority) else [])
            + check_no_double_records(self.records, self.known)
            + (
                check_finished(job_id, final, sorted(self.nodes), replicas, network.seconds() - quiet_start)
                if self.accepted
                else []
            )
            + check_fencing(self.observations)
            + check_one_leader_per_epoch(self.observations)
            + check_no_unhandled_errors(critical)
        )
        self._note(f"end: {len(violations)} violation(s)")
        return Outcome(
            seed=self.seed,
            schedule=self.schedule,
            violations=violations,
            trace=self.trace,
            tasks=len(self.tasks),
            runs=sum(1 for line in self.trace if " runs " in line),
            finished_at=finished_at,
            last_lines=[formatEvent(dict(e)) or "" for e in last],
        )


def run_seeds(
    seeds: Iterable[int], config: SimulationConfig | None = None, probe: IFailoverProbe | None = None
) -> Iterator[Outcome]:
    """
    Run each of C{seeds} in turn.  The objects alive before are set aside
    from the garbage collector meanwhile (C{gc.freeze}), so that the
    collection at the end of each run, which brings out unhandled errors in
    Deferreds, looks at that run's objects alone.
    """
    gc.collect()
    gc.freeze()
    try:
        for seed in seeds:
            yield Simulation(seed, config, probe).run()
    finally:
        gc.unfreeze()
