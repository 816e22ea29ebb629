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

The invariant checkers are plain functions that return a list of violations,
each a readable sentence:

  - L{check_results}: every accepted task has exactly one recorded result
    at the final master;
  - L{check_no_double_records}: no task's result was recorded twice;
  - L{check_finished}: the job finished once the faults stopped (with the
    master alive or restarted; with failover, once a majority of the job's
    replica set lives);
  - L{check_fencing}: no worker accepted an assignment from an epoch older
    than one it had seen;
  - L{check_one_leader_per_epoch}: no two nodes acknowledged records of one
    job in the same epoch;
  - L{check_no_unhandled_errors}: nothing was logged as critical (an
    unhandled error in a Deferred, an exception in a responder).

The last but one two read what the nodes expose through an
L{IFailoverProbe}; until master failover exists, L{NoFailover} observes
nothing and they pass trivially.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import attr
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from p2pexec.job import Job
from p2pexec.journal import Journal
from p2pexec.model import Assignment, TaskResult, TaskSpec
from p2pexec.node import Node, NodeConfig, create_node
from p2pexec.testing.network import FakeHost, FakeNetwork
from p2pexec.testing.runner import FakeRunner

__all__ = [
    "Fault",
    "IFailoverProbe",
    "NoFailover",
    "Observation",
    "Outcome",
    "Simulation",
    "SimulationConfig",
    "check_fencing",
    "check_finished",
    "check_no_double_records",
    "check_no_unhandled_errors",
    "check_one_leader_per_epoch",
    "check_results",
    "make_schedule",
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


# -- the schedule --------------------------------------------------------------


@attr.s(frozen=True, auto_attribs=True)
class Fault:
    """
    One event of a schedule, at simulated time C{at}.

    C{kind} is one of: C{crash} and C{restart} (a node, by name), C{freeze}
    and C{thaw} (a node), C{cut} and C{mend} (two groups of nodes: every
    link between them), C{delay} (two nodes and the seconds, 0 ends it),
    C{jump} (the whole clock moves C{seconds} at once, every timer due
    meanwhile firing without a byte moving in between: a paused VM), C{wall}
    (a node's wall clock steps by C{seconds}).
    """

    at: float
    kind: str
    nodes: tuple[str, ...] = ()
    other: tuple[str, ...] = ()
    seconds: float = 0.0

    def describe(self) -> str:
        """One line: when, what, to whom."""
        what = f"t={self.at:8.3f}  {self.kind:<7} {','.join(self.nodes)}"
        if self.other:
            what += f" | {','.join(self.other)}"
        if self.kind in ("delay", "jump", "wall"):
            what += f" {self.seconds:+.3f}s"
        return what


@attr.s(frozen=True, auto_attribs=True)
class SimulationConfig:
    """
    The shape of a run; the seed picks everything else.

    @ivar failover: the failover era: the master may crash for good, and
        the job must finish once a majority of its replica set lives
        (L{IFailoverProbe.replica_set}).  Without it (today's code), the
        master always comes back with its journal.
    @ivar kinds: the fault kinds drawn, with their weights.
    """

    nodes: int = 5
    tasks: tuple[int, int] = (10, 60)
    faults: tuple[int, int] = (2, 12)
    fault_window: float = 15.0
    quiet_limit: float = 120.0
    settle: float = 3.0
    failover: bool = False
    kinds: Mapping[str, int] = attr.ib(
        factory=lambda: {
            "crash": 3,
            "crash-master": 2,
            "freeze": 2,
            "partition": 3,
            "delay": 2,
            "jump": 1,
            "wall": 1,
        }
    )

    def names(self) -> list[str]:
        """The nodes' names: n1 (the master) to nN."""
        return [f"n{i}" for i in range(1, self.nodes + 1)]


def make_schedule(seed: int, config: SimulationConfig) -> list[Fault]:
    """
    The faults of run C{seed}, in time order: each fault that has an end
    (a restart, a thaw, a mend, a delay back to 0) gets it within the fault
    window, except a crash, whose node may stay down (never the master's,
    unless C{config.failover}).
    """
    rng = random.Random(f"schedule/{seed}")
    names = config.names()
    master = names[0]
    window = config.fault_window
    kinds = sorted(config.kinds)
    weights = [config.kinds[k] for k in kinds]
    faults: list[Fault] = []
    for _ in range(rng.randint(*config.faults)):
        kind = rng.choices(kinds, weights)[0]
        at = round(rng.uniform(0.5, window), 3)

        def until(longest: float) -> float:
            return round(min(window, at + rng.uniform(0.05, longest)), 3)  # noqa: B023

        if kind in ("crash", "crash-master"):
            victim = master if kind == "crash-master" else rng.choice(names[1:])
            faults.append(Fault(at, "crash", (victim,)))
            if victim != master or not config.failover or rng.random() < 0.5:
                if victim == master or rng.random() < 0.7:
                    faults.append(Fault(until(10.0), "restart", (victim,)))
        elif kind == "freeze":
            victim = rng.choice(names)
            faults.append(Fault(at, "freeze", (victim,)))
            faults.append(Fault(until(8.0), "thaw", (victim,)))
        elif kind == "partition":
            side = tuple(sorted(rng.sample(names, rng.randint(1, len(names) - 1))))
            rest = tuple(n for n in names if n not in side)
            faults.append(Fault(at, "cut", side, rest))
            faults.append(Fault(until(15.0), "mend", side, rest))
        elif kind == "delay":
            pair = tuple(sorted(rng.sample(names, 2)))
            faults.append(Fault(at, "delay", pair, seconds=round(rng.uniform(0.01, 2.0), 3)))
            faults.append(Fault(until(10.0), "delay", pair, seconds=0.0))
        elif kind == "jump":
            faults.append(Fault(at, "jump", seconds=round(rng.uniform(0.5, 20.0), 3)))
        elif kind == "wall":
            faults.append(Fault(at, "wall", (rng.choice(names),), seconds=round(rng.uniform(-3600.0, 3600.0), 3)))
    faults.sort(key=lambda f: f.at)
    return faults


# -- what nodes expose for the failover invariants -----------------------------


@attr.s(frozen=True, auto_attribs=True)
class Observation:
    """
    Something a node did that the failover invariants judge.

    @ivar kind: C{"assignment"}: worker C{node} accepted an assignment of
        C{job} at C{epoch}, having seen at most C{seen} before;
        C{"acknowledged"}: C{node}, as master of C{job} at C{epoch},
        acknowledged a record (to a client or a worker) as committed.
    @ivar detail: what, for the report (a task id, a record's seq).
    """

    kind: str
    node: str
    job: str
    epoch: int
    seen: int = 0
    detail: str = ""


class IFailoverProbe(Protocol):
    """
    What the simulation asks the nodes about failover.  Master failover
    (issue 13) implements it over the epochs its nodes keep; until then
    L{NoFailover} answers for today's code.
    """

    def observations(self, name: str, node: Node) -> Iterable[Observation]:
        """
        What node C{name} did since it was last asked (asked before it
        crashes and at the end of a run).
        """

    def master_of(self, job: str, nodes: Mapping[str, Node]) -> str | None:
        """The name of the node that leads C{job} now, among the live C{nodes}, or C{None}."""

    def replica_set(self, job: str, original_master: str) -> Sequence[str]:
        """The names of C{job}'s replica set (its master and successors, as accepted)."""


class NoFailover:
    """
    The probe for today's code: a job lives on the node that accepted it
    (its replica set is that node alone), and nobody keeps epochs, so
    there is nothing to observe.
    """

    def observations(self, name: str, node: Node) -> Iterable[Observation]:
        """Nothing: no node keeps epochs yet."""
        return ()

    def master_of(self, job: str, nodes: Mapping[str, Node]) -> str | None:
        """The live node that has C{job} among its master's jobs, if any."""
        for name, node in nodes.items():
            if job in node.master.jobs:
                return name
        return None

    def replica_set(self, job: str, original_master: str) -> Sequence[str]:
        """The master alone."""
        return (original_master,)


# -- invariant checkers ---------------------------------------------------------


def check_results(job_id: str, accepted: Sequence[str], final: Job | None) -> list[str]:
    """
    Every accepted task has exactly one recorded result at the final master
    (and the job holds no task that was not accepted).

    @param accepted: the ids of the tasks accepted.
    @param final: the job as the final master holds it (C{None}: nobody does).
    """
    if final is None:
        return [f"No live node is master of job {job_id} at the end."]
    problems = []
    missing = [t for t in accepted if t not in final.tasks]
    extra = sorted(set(final.tasks) - set(accepted))
    if missing:
        problems.append(f"Job {job_id} at its final master lacks accepted task(s) {missing}.")
    if extra:
        problems.append(f"Job {job_id} at its final master holds task(s) {extra} that were never accepted.")
    without = [t for t in accepted if t in final.tasks and final.tasks[t].result is None]
    if without and final.finished is not None:
        problems.append(f"Job {job_id} finished with no recorded result for task(s) {without}.")
    if final.finished is not None and final.succeeded + final.failed != len(final.tasks):
        problems.append(
            f"Job {job_id} finished counting {final.succeeded} succeeded and {final.failed} failed "
            f"of {len(final.tasks)} task(s)."
        )
    return problems


@attr.s(frozen=True, auto_attribs=True)
class Recorded:
    """A result a master recorded as its task's (seen through C{Views.on_result})."""

    at: float
    master: str
    incarnation: int
    task: str
    attempt: int
    status: str
    worker: str


def check_no_double_records(records: Sequence[Recorded], known: Mapping[tuple[str, int], set[str]]) -> list[str]:
    """
    No task's successful result was recorded twice: not twice by one master
    incarnation, and not again by a master that resumed (or took over) the
    job with that task's result already recorded.

    @param records: every result recorded as a task's, in order.
    @param known: the tasks that already had a successful result when each
        (master, incarnation) took the job up (from its journal).
    """
    seen: dict[tuple[str, int], dict[str, Recorded]] = {}
    problems = []
    for record in records:
        if record.status != "succeeded":
            continue
        key = (record.master, record.incarnation)
        mine = seen.setdefault(key, {})
        if record.task in known.get(key, set()):
            problems.append(
                f"Task {record.task} was recorded again at t={record.at:.3f} (attempt {record.attempt} on "
                f"{record.worker}) by master {record.master} #{record.incarnation}, which had resumed it with a "
                "result already."
            )
        elif record.task in mine:
            first = mine[record.task]
            problems.append(
                f"Task {record.task} was recorded twice by master {record.master} #{record.incarnation}: "
                f"attempt {first.attempt} on {first.worker} at t={first.at:.3f}, then attempt {record.attempt} "
                f"on {record.worker} at t={record.at:.3f}."
            )
        mine.setdefault(record.task, record)
    return problems


def check_finished(
    job_id: str, final: Job | None, live: Sequence[str], replicas: Sequence[str], quiet_for: float
) -> list[str]:
    """
    The job finished once the faults stopped, if a majority of its replica
    set lives (for today's code the set is the master alone, which is then
    always restarted).

    @param live: the nodes alive at the end.
    @param quiet_for: how long the run went on without faults.
    """
    alive = [name for name in replicas if name in live]
    if len(alive) < len(replicas) // 2 + 1:
        return []
    if final is not None and final.finished is not None:
        return []
    if final is None:
        state = "no live node is its master"
    else:
        counts = Counter(record.state.name.lower() for record in final.tasks.values())
        state = "tasks " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return [
        f"Job {job_id} did not finish within {quiet_for:.0f} s after the faults stopped, with "
        f"{len(alive)} of its {len(replicas)} replica(s) alive ({', '.join(alive)}): {state}."
    ]


def check_fencing(observations: Iterable[Observation]) -> list[str]:
    """No worker accepted an assignment from an epoch older than one it had seen."""
    return [
        f"Worker {o.node} accepted an assignment of job {o.job} ({o.detail}) at epoch {o.epoch} after "
        f"seeing epoch {o.seen}."
        for o in observations
        if o.kind == "assignment" and o.epoch < o.seen
    ]


def check_one_leader_per_epoch(observations: Iterable[Observation]) -> list[str]:
    """No two nodes acknowledged records of one job in the same epoch."""
    leaders: dict[tuple[str, int], list[str]] = {}
    for o in observations:
        if o.kind == "acknowledged":
            names = leaders.setdefault((o.job, o.epoch), [])
            if o.node not in names:
                names.append(o.node)
    return [
        f"Nodes {', '.join(names)} all acknowledged records of job {job} in epoch {epoch}."
        for (job, epoch), names in sorted(leaders.items())
        if len(names) > 1
    ]


def check_no_unhandled_errors(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """Nothing was logged at the critical level (an unhandled error in a Deferred, a responder's exception)."""
    problems = []
    for event in events:
        if event.get("log_level") is LogLevel.critical:
            text = formatEvent(dict(event))
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            problems.append(f"Logged as critical: {text}")
    return problems


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
        self.probe: IFailoverProbe = probe or NoFailover()
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
        self.known: dict[tuple[str, int], set[str]] = {}
        self.observations: list[Observation] = []
        self.job_id: str | None = None
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
            tasks=self.tasks if name == self.master_name else None,
            job_source=JOB_SOURCE if name == self.master_name else None,
            state_dir=self._state_dirs[name],
        )
        network = self.network

        def wall() -> float:
            return WALL_START + network.seconds() + self._wall_skew[name]

        node = create_node(config, host, runner, wall=wall, rng=random.Random(f"node/{self.seed}/{name}/{incarnation}"))
        node.views.on_result(lambda result: self._recorded(name, incarnation, result))
        self.nodes[name], self.hosts[name] = node, host
        node.start()
        if name == self.master_name:
            job_id = node.startup.job_id
            if self.job_id is None:
                self.job_id = job_id
            job = node.master.jobs.get(self.job_id) if self.job_id is not None else None
            self.known[(name, incarnation)] = (
                set()
                if job is None
                else {t for t, r in job.tasks.items() if r.result is not None and r.result.status == "succeeded"}
            )
        self._note(f"{name} starts (#{incarnation}, instance {node.info.instance})")
        return node

    def _recorded(self, master: str, incarnation: int, result: TaskResult) -> None:
        now = self.network.seconds()
        self.records.append(
            Recorded(now, master, incarnation, result.task_id, result.attempt, result.status, result.node)
        )
        self.trace.append(f"{now:.6f} {master} records {result.task_id}#{result.attempt} {result.status} {result.node}")

    def _collect(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is not None:
            self.observations.extend(self.probe.observations(name, node))

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
        """The job as its current master holds it, if a live node leads it."""
        if self.job_id is None:
            return None
        leader = self.probe.master_of(self.job_id, self.nodes)
        return self.nodes[leader].master.jobs.get(self.job_id) if leader is not None else None

    def _finished(self) -> bool:
        job = self.final_job()
        return job is not None and job.finished is not None

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
        for fault in self.schedule:
            network.run_events(max(0.0, fault.at - network.seconds()))
            self.apply(fault)
        network.run_events(max(0.0, config.fault_window - network.seconds()))
        self.calm()
        quiet_start = network.seconds()
        network.run_events(config.quiet_limit, stop=self._finished)
        finished_at = network.seconds() if self._finished() else None
        network.run_events(config.settle)
        for name in list(self.nodes):
            self._collect(name)
        gc.collect()  # an unhandled error in a Deferred is logged when it is collected
        job_id = self.job_id or "(none)"
        final = self.final_job()
        replicas = self.probe.replica_set(job_id, self.master_name)
        violations = (
            check_results(job_id, [t.id for t in self.tasks], final)
            + check_no_double_records(self.records, self.known)
            + check_finished(job_id, final, sorted(self.nodes), replicas, network.seconds() - quiet_start)
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
