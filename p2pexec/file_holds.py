"""
Files travel with tasks, on the master side: a job is accepted only if every
input it names is in this node's blob store, and the store keeps (holds) the
job's inputs and its results' outputs until the journal forgets the job.

  - L{JobFiles.check}: before a job is accepted (L{p2pexec.intake}): every
    input digest must be in the store (the client sent them first, with
    PUT_BLOB), else the job is refused naming the task, input and digest;
  - L{JobFiles.accepted}: the job's inputs are held, under the job's id;
  - L{JobFiles.take_local}: a start-up job (C{--job FILE} given to the
    node) names files on this node: they are copied into the store first;
  - L{JobFiles.result_applied}: the outputs of each result applied to one of
    the job's tasks are held too (the worker pushed them before it sent the
    result), written once per reactor turn for all of a batch;
  - L{JobFiles.forgotten}: the journal's retention deleted these jobs
    (L{p2pexec.startup.StartupJob.prune}): their holds are released, and
    their blobs are evicted like any other once the cache is full;
  - L{JobFiles.placed}: the job's replica set is known (chosen, or the job
    taken over): its files are held under the job, and copied to the other
    members (L{p2pexec.file_copies}), as are the outputs of each result
    applied after; a member holds them under C{replica:JOB} (HOLD_BLOBS)
    until L{JobFiles.replicas_forgotten}: its replicated log of the job is
    pruned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2pexec import commands
from p2pexec.file_copies import ReplicaCopies
from p2pexec.file_service import replica_owner
from p2pexec.log import NodeLogger
from p2pexec.model import TaskResult, TaskSpec

log = NodeLogger()


class IHoldingStore(Protocol):
    """What L{JobFiles} uses of a L{p2pexec.blobs.BlobStore}."""

    def has(self, digest: str) -> bool:
        """Whether the blob is here."""

    def hold(self, owner: str, digests: Iterable[str]) -> None:
        """Add C{digests} to what C{owner} holds (never evicted until released)."""

    def release(self, owner: str) -> None:
        """Drop everything C{owner} holds."""

    def add_file(self, path: str, move: bool = False) -> tuple[str, int]:
        """Copy the file at C{path} into the store; its (digest, size)."""


class JobFiles:
    """The files of the jobs this node is master of, held in its blob store (see the module's docstring)."""

    def __init__(self, store: IHoldingStore, clock: IReactorTime, name: str = "") -> None:
        self._store = store
        self._clock = clock
        self._name = name
        self._pending: dict[str, set[str]] = {}
        self._write: IDelayedCall | None = None
        self.copies: ReplicaCopies | None = None
        """Copies the jobs' files to their replica sets (C{None}: nothing is copied)."""
        self._replicas: dict[str, tuple[str, ...]] = {}

    def check(self, specs: Sequence[TaskSpec], label: str) -> None:
        """
        Refuse a job one of whose inputs is not in the store.

        @raise commands.BadJob: naming the first such task, input and digest.
        """
        for spec in specs:
            for item in spec.inputs:
                if not self._store.has(item.sha256):
                    raise commands.BadJob(
                        f"{label}: task {spec.id!r}: input {item.name!r} (sha256 {item.sha256}) is not on node "
                        f"{self._name}: send it first (HAVE_BLOBS, then PUT_BLOB; p2pexec submit and run do)"
                    )

    def take_local(self, job_id: str, specs: Sequence[TaskSpec]) -> None:
        """
        Copy the inputs of this node's own start-up job (files on this node,
        hashed when its options were read) into the store, then hold them.
        A file that cannot be read, or changed since, is logged; its tasks
        then fail, each saying that the input could not be fetched.
        """
        for spec in specs:
            for item in spec.inputs:
                if item.source is None or self._store.has(item.sha256):
                    continue
                try:
                    digest, _ = self._store.add_file(item.source)
                except (ValueError, OSError) as e:
                    problem = str(e)
                else:
                    if digest == item.sha256:
                        continue
                    problem = f"it changed since it was hashed (sha256 now {digest[:12]}, was {item.sha256[:12]})"
                log.error(
                    "Node {name} could not take input {path} of its start-up job {job}: {problem}",
                    name=self._name,
                    path=item.source,
                    job=job_id,
                    problem=problem,
                )
        self.accepted(job_id, specs)

    def accepted(self, job_id: str, specs: Iterable[TaskSpec]) -> None:
        """Hold the inputs of a job just accepted (now: before its acceptance is written)."""
        digests = {item.sha256 for spec in specs for item in spec.inputs}
        if digests:
            self._store.hold(job_id, digests)

    def result_applied(self, job_id: str, result: TaskResult) -> None:
        """Hold a result's outputs for its job (written at the end of this reactor turn)."""
        if not result.outputs:
            return
        self._pending.setdefault(job_id, set()).update(output.sha256 for output in result.outputs)
        if self._write is None:
            self._write = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write the output holds noted since the last flush, one per job."""
        if self._write is not None and self._write.active():
            self._write.cancel()
        self._write = None
        pending, self._pending = self._pending, {}
        for job_id, digests in pending.items():
            try:
                self._store.hold(job_id, digests)
            except (ValueError, OSError) as e:
                log.error(
                    "Node {name} could not hold the outputs of job {job} in its file cache: {error}",
                    name=self._name,
                    job=job_id,
                    error=e,
                )
            self._copy(job_id, sorted(digests), "output")

    def placed(
        self, job_id: str, members: tuple[str, ...], specs: Sequence[TaskSpec], results: Iterable[TaskResult]
    ) -> None:
        """
        This node leads C{job_id} with the replica set C{members} (chosen,
        or taken over): hold the job's inputs and the outputs of its results
        (a successor's store has them as a replica), and copy them to the
        other members; later outputs follow (L{flush}).
        """
        inputs = sorted({item.sha256 for spec in specs for item in spec.inputs})
        outputs = sorted({output.sha256 for result in results for output in result.outputs} - set(inputs))
        self._replicas[job_id] = tuple(member for member in members if member != self._name)
        if inputs or outputs:
            try:
                self._store.hold(job_id, inputs + outputs)
            except (ValueError, OSError) as e:
                log.error(
                    "Node {name} could not hold the files of job {job} in its file cache: {error}",
                    name=self._name,
                    job=job_id,
                    error=e,
                )
        self._copy(job_id, inputs, "input")
        self._copy(job_id, outputs, "output")

    def _copy(self, job_id: str, digests: list[str], kind: str) -> None:
        """Copy C{digests} of C{job_id} to the other members of its replica set, if it has one."""
        if self.copies is None or not digests:
            return
        for member in self._replicas.get(job_id, ()):
            self.copies.copy(job_id, member, digests, kind)

    def member_connected(self, name: str) -> None:
        """A peer connected: copy it what it was skipped for (L{p2pexec.file_copies.ReplicaCopies.member_connected})."""
        if self.copies is not None:
            self.copies.member_connected(name)

    def replicas_forgotten(self, job_ids: Iterable[str]) -> None:
        """The journal pruned this node's replicated logs of these jobs: release the files it held for them."""
        for job_id in job_ids:
            self._store.release(replica_owner(job_id))

    def withdrawn(self, job_id: str) -> None:
        """A job was refused after all (its journal could not be written): release what it held."""
        self._pending.pop(job_id, None)
        self._store.release(job_id)

    def forgotten(self, job_ids: Iterable[str]) -> None:
        """The journal forgot these jobs (retention): release their files."""
        count = 0
        for job_id in job_ids:
            self._pending.pop(job_id, None)
            self._store.release(job_id)
            self._replicas.pop(job_id, None)
            if self.copies is not None:
                self.copies.forget(job_id)
            count += 1
        if count:
            log.info(
                "Node {name} released the files of {count} forgotten job(s) from its file cache",
                name=self._name,
                count=count,
            )
