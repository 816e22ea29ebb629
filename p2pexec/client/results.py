"""
What the client hands back: a job's reference, its progress, and its
tasks' results, as attrs objects made from the wire's dicts (C{JobSummary}
and C{Task} in docs/api.rst).  Each keeps the dict it was made from as
C{raw}, so that a field a newer node adds is still at hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr

ENDED_STATES = frozenset({"succeeded", "failed", "cancelled", "skipped"})
"""The states of a task that has its result."""


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _outputs(value: Any) -> tuple[Mapping[str, Any], ...]:
    """A JOB_TASKS entry's C{outputs}: the well-formed ones (path, size, sha256), the rest skipped."""
    if not isinstance(value, list):
        return ()
    return tuple(
        {"path": each["path"], "size": each["size"], "sha256": each["sha256"]}
        for each in value
        if isinstance(each, dict)
        and isinstance(each.get("path"), str)
        and isinstance(each.get("size"), int)
        and isinstance(each.get("sha256"), str)
    )


@attr.s(frozen=True, auto_attribs=True)
class JobRef:
    """
    A submitted job.

    @ivar id: the job's id, as the CLI prints it (C{p2pexec watch ID}).
    @ivar address: C{HOST:PORT} of the node it was submitted to (its master).
    @ivar tasks: how many tasks it was submitted with.
    """

    id: str
    address: str = ""
    tasks: int = 0

    def __str__(self) -> str:
        return self.id


@attr.s(frozen=True, auto_attribs=True)
class TaskResult:
    """
    One task and its result (its latest attempt's, once it has one).

    @ivar id: the task's id.
    @ivar state: C{pending}, C{waiting}, C{running}, C{succeeded},
        C{failed}, C{cancelled} or C{skipped}.
    @ivar status: of its result: C{succeeded}, C{failed}, C{timed-out},
        C{error}, C{cancelled} or C{skipped}; C{None} before it has one.
    @ivar exit_code: the process's exit code; C{None} when it had none
        (killed by a signal, never started, no result yet).
    @ivar node: the node that ran it (or runs its latest attempt).
    @ivar duration: seconds its attempt took; C{None} before its result.
    @ivar stdout: the tail of its standard output (at most 8 KiB here; all
        of it through C{logs}).
    @ivar stderr: the tail of its standard error, likewise.
    @ivar error: why it failed, in words, when there is more to say than
        the exit code.
    @ivar attempt: which attempt this is (1 for the first; 0 before any).
    @ivar kind: the task's kind.
    @ivar outputs: the files its attempt sent back (issue 16), each a
        mapping with C{path}, C{size} and C{sha256}; fetch them with
        C{fetch}.
    @ivar raw: the task as the node sent it (C{Task} in docs/api.rst).
    """

    id: str
    state: str
    status: str | None = None
    exit_code: int | None = None
    node: str | None = None
    duration: float | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    attempt: int = 0
    kind: str = ""
    outputs: tuple[Mapping[str, Any], ...] = ()
    raw: Mapping[str, Any] = attr.ib(factory=dict, eq=False, repr=False)

    @property
    def ended(self) -> bool:
        """Whether the task has its result (succeeded, failed, cancelled or skipped)."""
        return self.state in ENDED_STATES

    @property
    def succeeded(self) -> bool:
        """Whether the task succeeded."""
        return self.status == "succeeded"

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> TaskResult:
        """From a JOB_TASKS entry; a field missing or of the wrong type reads as unknown."""

        def text(name: str) -> str | None:
            value = entry.get(name)
            return value if isinstance(value, str) else None

        return cls(
            id=str(entry.get("id", "")),
            state=text("state") or "",
            status=text("status"),
            exit_code=_int(entry.get("exit_code")),
            node=text("node"),
            duration=_float(entry.get("duration")),
            stdout=text("stdout") or "",
            stderr=text("stderr") or "",
            error=text("error"),
            attempt=_int(entry.get("attempts")) or 0,
            kind=text("kind") or "",
            outputs=_outputs(entry.get("outputs")),
            raw=dict(entry),
        )


@attr.s(frozen=True, auto_attribs=True)
class JobStatus:
    """
    A job's progress.

    @ivar id: the job's id.
    @ivar state: C{running}, C{finished} or C{cancelled}.
    @ivar total: how many tasks it has.
    @ivar done: how many have their result.
    @ivar counts: tasks by state (C{pending}, C{waiting}, C{running},
        C{succeeded}, C{failed}, C{cancelled}, C{skipped}).
    @ivar elapsed: seconds since it started, up to its end.
    @ivar eta: seconds left at the rate so far, or C{None}.
    @ivar master: the node that leads it.
    @ivar raw: the summary as the node sent it (C{JobSummary} in docs/api.rst).
    """

    id: str
    state: str
    total: int = 0
    done: int = 0
    counts: Mapping[str, int] = attr.ib(factory=dict)
    elapsed: float = 0.0
    eta: float | None = None
    master: str | None = None
    raw: Mapping[str, Any] = attr.ib(factory=dict, eq=False, repr=False)

    @property
    def ended(self) -> bool:
        """Whether the job has ended (finished or cancelled)."""
        return self.state != "running"

    @property
    def succeeded(self) -> bool:
        """Whether it finished with every task succeeded."""
        return self.state == "finished" and self.counts.get("succeeded", 0) == self.total

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> JobStatus:
        """From a JOB_STATUS summary."""
        counts = summary.get("counts")
        return cls(
            id=str(summary.get("id", "")),
            state=str(summary.get("state", "")),
            total=_int(summary.get("total")) or 0,
            done=_int(summary.get("done")) or 0,
            counts={str(k): v for k, v in counts.items() if _int(v) is not None} if isinstance(counts, dict) else {},
            elapsed=_float(summary.get("elapsed")) or 0.0,
            eta=_float(summary.get("eta")),
            master=summary.get("master") if isinstance(summary.get("master"), str) else None,
            raw=dict(summary),
        )


@attr.s(frozen=True, auto_attribs=True)
class JobResult:
    """
    A job's progress and every task's result, as they were when asked.

    @ivar status: the job's progress.
    @ivar tasks: every task, in the job's order.
    """

    status: JobStatus
    tasks: tuple[TaskResult, ...]

    @property
    def id(self) -> str:
        """The job's id."""
        return self.status.id

    @property
    def succeeded(self) -> bool:
        """Whether every task succeeded."""
        return all(task.succeeded for task in self.tasks)

    @property
    def failed(self) -> tuple[TaskResult, ...]:
        """The tasks that ended without success (failed, timed out, error, cancelled, skipped)."""
        return tuple(task for task in self.tasks if task.ended and not task.succeeded)

    def __getitem__(self, task_id: str) -> TaskResult:
        """The task of id C{task_id}."""
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)
