"""
How a node takes jobs from its operators: whole (the HTTP API) or in parts
(SUBMIT_JOB over AMP), checked, refused while its journal cannot be
written, and answered once the job is in the journal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from p2pexec import commands
from p2pexec.failover import Deposed
from p2pexec.jobfile import JobFileError, job_priority, parse_job
from p2pexec.journal_health import JournalError
from p2pexec.log import NodeLogger
from p2pexec.model import ValidationError

if TYPE_CHECKING:
    from p2pexec.file_holds import JobFiles
    from p2pexec.interfaces import IJournal, INode
    from p2pexec.master import Master

log = NodeLogger()

MAX_UPLOAD_TASKS = 1_000_000
"""The most tasks one job submitted in parts may hold."""


class Intake:
    """
    Submitted jobs, and the uploads (jobs sent in parts) still coming in:
    each belongs to the connection that started it and is dropped with it.
    """

    def __init__(self) -> None:
        self._uploads: dict[str, tuple[object, list[Any], Any]] = {}
        self._upload_numbers = 0
        self.files: JobFiles | None = None
        """The master's side of task files: a job's inputs must be in the node's store (see L{p2pexec.file_holds})."""

    def wire(self, node: INode, master: Master, journal: IJournal) -> None:
        """Connect the intake to its node, the master that takes the jobs, and the journal that keeps them."""
        self._node = node
        self._master = master
        self._journal = journal

    def submit(
        self, tasks: list[Any], defaults: Any = None, label: str = "submitted job", job: Any = None
    ) -> Deferred[str]:
        """
        Accept a job given as job-file task objects (and [defaults], and
        [job]: its C{priority}); fire with its id once it is in the journal.

        @raise commands.BadJob: naming the task and field at fault.
        @raise commands.ShuttingDown: if the node is leaving.
        @raise commands.JournalUnwritable: if its journal cannot be written
            (the job is then not accepted: nothing of it runs).
        """
        name = self._node.info.name
        if self._node.stopping:
            raise commands.ShuttingDown(f"node {name} is shutting down and takes no new jobs")
        self._check_journal()
        document: dict[str, Any] = {"task": tasks}
        if defaults:
            document["defaults"] = defaults
        if job is not None:
            document["job"] = job
        try:
            specs = parse_job(document, label=label)
        except JobFileError as e:
            raise commands.BadJob(str(e)) from None
        files = self.files
        if files is not None:
            files.check(specs, label)
        self._check_journal()
        try:
            job = self._master.submit(specs, priority=job_priority(document))
        except ValidationError as e:  # an all_nodes task's copy named as another task (p2pexec.placement)
            raise commands.BadJob(f"{label}: {e}") from None
        if files is not None:
            files.accepted(job.id, specs)
        # Written now, not after the group-commit delay: a job that cannot
        # be written is refused, not accepted and left waiting unanswered.
        try:
            self._journal.commit()
        except JournalError as e:
            self._master.withdraw(job.id)
            if files is not None:
                files.withdrawn(job.id)
            self._check_journal()
            raise commands.JournalUnwritable(f"node {name} takes no new job: {e}") from None

        # Answered once committed: in the journal and, for a replicated job,
        # held by a majority of its replica set (see p2pexec.failover).
        def deposed(failure: Any) -> Any:
            failure.trap(Deposed)
            raise commands.JournalUnwritable(f"node {name} could not commit job {job.id}: {failure.getErrorMessage()}")

        return self._master.durable(job.id).addCallbacks(lambda _: job.id, deposed)

    def _check_journal(self) -> None:
        """
        @raise commands.JournalUnwritable: if the journal cannot be
            written at the moment, saying why.
        """
        problem = self._journal.problem
        if problem is not None:
            name = self._node.info.name
            log.warn("Node {name} refused a job: {problem}", name=name, problem=problem.describe())
            raise commands.JournalUnwritable(f"node {name} takes no new job: {problem.describe()}")

    def submit_part(
        self, owner: object, tasks: list[Any], defaults: Any, upload: str, final: bool, priority: int | None = None
    ) -> Any:
        """
        SUBMIT_JOB in parts: collect the tasks of an upload (which belongs to
        the connection C{owner} that started it, and is dropped with it);
        submit them with the last part (and its C{priority}).  Every part must carry the first
        part's C{defaults} (C{null} and C{{}} alike mean none): a part whose
        defaults differ is refused, and the upload is dropped.
        """
        name = self._node.info.name
        if upload:
            started_by, collected, first_defaults = self._uploads.pop(upload, (None, None, None))
            if collected is None or started_by is not owner:
                raise commands.UnknownUpload(f"node {name} has no upload {upload!r} on this connection")
            if (defaults or None) != (first_defaults or None):
                raise commands.BadJob(
                    f"upload {upload!r}: this part's defaults differ from its first part's; every part of a job "
                    f"must carry the same defaults (the upload is dropped: send the job again)"
                )
            collected.extend(tasks)
        else:
            collected = list(tasks)
        if not final:
            if len(collected) > MAX_UPLOAD_TASKS:
                raise commands.BadJob("a job holds at most 1,000,000 tasks")
            self._upload_numbers += 1
            upload = f"{self._node.info.instance[:8]}-{self._upload_numbers}"
            self._uploads[upload] = (owner, collected, defaults)
            return {"upload": upload, "job": ""}
        job = None if priority is None else {"priority": priority}
        return self.submit(collected, defaults, job=job).addCallback(lambda job_id: {"upload": "", "job": job_id})

    def drop_uploads(self, owner: object) -> None:
        """The connection C{owner} closed: forget the uploads it started."""
        for upload in [key for key, (started_by, _, _) in self._uploads.items() if started_by is owner]:
            del self._uploads[upload]
