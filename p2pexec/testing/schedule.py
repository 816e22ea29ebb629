"""
The fault schedule of a simulation run (L{p2pexec.testing.simulation}):
the shape of a run (L{SimulationConfig}) and the faults that C{seed} draws
for it (L{make_schedule}), each a L{Fault}.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import attr

__all__ = ["Fault", "SimulationConfig", "make_schedule"]


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

    @ivar failover: the job is replicated (C{--replicas}
        L{replicas}) and submitted once the cluster formed; the master may
        crash for good, and the job must finish once a majority of its
        replica set lives
        (L{p2pexec.testing.invariants.IFailoverProbe.replica_set}).
        Without it (C{--replicas 0}), the job is the master's start-up job
        and the master always comes back with its journal.
    @ivar replicas: the successors of each job, with C{failover}.
    @ivar kinds: the fault kinds drawn, with their weights.
    """

    nodes: int = 5
    tasks: tuple[int, int] = (4, 16)
    faults: tuple[int, int] = (2, 8)
    fault_window: float = 8.0
    quiet_limit: float = 120.0
    settle: float = 3.0
    failover: bool = True
    replicas: int = 2
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
