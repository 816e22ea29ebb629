"""
The simulation's probe of master failover (L{IFailoverProbe}): what each
node of a run did that the failover invariants of
L{p2pexec.testing.invariants} judge, read through the nodes' public parts.

  - A worker's accepted assignments, with the highest epoch it had seen of
    the job before (its fence's memory, L{p2pexec.fence.Fence.highest}, and
    every assignment it accepted earlier in this life): seen by wrapping
    C{node.worker.accept}, the method the INSTRUCTION_ASSIGNMENT responder
    calls; a refused one raises and is not an acceptance.
  - A master's acknowledgements: C{node.master.durable} is what every
    acknowledgement waits for (a submit's answer, a confirmation's answer,
    the cancels sent to workers), so each time it fires is an
    acknowledgement, at the epoch the node led the job with when it
    decided (L{p2pexec.master.Master.epoch_of}).
  - A takeover: C{node.master.take_over}, with the tasks that already had
    their result (they must never be recorded again by that leader).
  - Who leads a job: the live nodes whose C{node.replication.logs} hold it,
    the highest ballot first; its replica set: the members of the log, as
    any node that held it last said.

The wrapping is of the node's instance only, done once at its start
(L{FailoverProbe.attach}): nothing of the product changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from p2pexec.node import Node
from p2pexec.replicas import Ballot
from p2pexec.replication import END
from p2pexec.testing.invariants import Observation

__all__ = ["FailoverProbe"]


class FailoverProbe:
    """The L{p2pexec.testing.invariants.IFailoverProbe} of the failover era (see the module's docstring)."""

    def __init__(self) -> None:
        self._pending: dict[str, list[Observation]] = {}
        self._members: dict[str, tuple[str, ...]] = {}

    def attach(self, name: str, incarnation: int, node: Node) -> None:
        """Watch node C{name} (in its C{incarnation}-th life) from its start on."""
        pending = self._pending.setdefault(name, [])
        worker, master = node.worker, node.master
        accept, durable, take_over = worker.accept, master.durable, master.take_over
        accepted_before: dict[str, int] = {}

        def observed_accept(sink: Any, job: str, assignments: list[Any], ballot: Ballot | None = None) -> int:
            highest = worker.fence.highest(job)
            seen = max(0 if highest is None else highest.epoch, accepted_before.get(job, 0))
            answer = accept(sink, job, assignments, ballot)
            epoch = 1 if ballot is None else ballot.epoch
            accepted_before[job] = max(seen, epoch)
            detail = ", ".join(f"{a.task.id}#{a.attempt}" for a in assignments)
            pending.append(Observation("assignment", name, job, epoch, seen, detail, incarnation))
            return answer

        def observed_durable(job: str) -> Any:
            epoch = master.epoch_of(job)

            def acknowledged(result: Any) -> Any:
                pending.append(Observation("acknowledged", name, job, epoch, incarnation=incarnation))
                return result

            return durable(job).addCallback(acknowledged)

        def observed_take_over(image: Any, epoch: int) -> Any:
            job = take_over(image, epoch)
            done = sorted(t for t, r in job.tasks.items() if r.result is not None and r.result.status == "succeeded")
            pending.append(
                Observation("took over", name, job.id, epoch, detail=",".join(done), incarnation=incarnation)
            )
            return job

        setattr(worker, "accept", observed_accept)  # noqa: B010 (an instance's method, not the class's)
        setattr(master, "durable", observed_durable)  # noqa: B010
        setattr(master, "take_over", observed_take_over)  # noqa: B010

    def observations(self, name: str, node: Node) -> Iterable[Observation]:
        """What node C{name} did since it was last asked; also note the replica sets of the jobs it holds logs of."""
        for job, log_ in node.replication.logs.items():
            self._members[job] = log_.members
        pending = self._pending.get(name, [])
        taken, pending[:] = list(pending), []
        return taken

    def master_of(self, job: str, nodes: Mapping[str, Node]) -> str | None:
        """The live node that leads C{job} with the highest ballot, else (not replicated) the one that has it."""
        leaders = [
            (node.replication.logs[job].ballot, name)
            for name, node in nodes.items()
            if job in node.replication.logs and job in node.master.jobs
        ]
        if leaders:
            return max(leaders)[1]
        for name, node in nodes.items():
            if job in node.master.jobs and not node.replication.stores.get(job):
                return name
        return None

    def settled(self, job: str, node: Node) -> bool:
        """Whether a majority of C{job}'s replica set holds every record C{node} logged of it (as its leader)."""
        log_ = node.replication.logs.get(job)
        return log_ is None or log_.committed >= log_.tail

    def holds_end(self, job: str, node: Node) -> bool:
        """Whether C{node}'s replicated records of C{job} include its end."""
        return any(record.kind == END for record in node.replication.records_of(job))

    def replica_set(self, job: str, original_master: str) -> Sequence[str]:
        """The members of C{job}'s replicated log as last seen (the master alone if it never had one)."""
        return self._members.get(job, (original_master,))
