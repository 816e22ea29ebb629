"""
The tasks of a followed job as they end, for C{run} and C{submit --wait
--output/--joblog}: L{EndedTasks} pages through JOB_TASKS from the first
task that had not ended at the last look, and hands back the ones that
ended since, in the order they ended; L{whole_output} reads a task's
output, the tail in its entry or, when that is not all of it, the whole
kept output with TASK_OUTPUT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from twisted.protocols import amp

from p2pexec import commands
from p2pexec.cli.errors import PROG, CliError
from p2pexec.client import calls
from p2pexec.client.errors import ClientError, OutputGone

ENDED_STATES = frozenset({"succeeded", "failed", "cancelled", "skipped"})
"""The JOB_TASKS states of a task that has its final result."""

ENDED_FILTER = "succeeded,failed,cancelled,skipped"
"""JOB_TASKS's C{state} filter for the tasks that ended."""

PAGE_LIMIT = 1000
"""How many tasks one JOB_TASKS question asks for."""


class Node(Protocol):
    """What is asked of a node: one command at a time (L{p2pexec.cli.commands.Caller})."""

    address: str

    def call(self, command: type[amp.Command], **arguments: Any) -> Awaitable[dict[str, Any]]:
        """Send C{command}; its answer, or a L{p2pexec.cli.client.ClientError}."""


def _end_time(entry: dict[str, Any]) -> float:
    return float(entry["started"]) + float(entry.get("duration") or 0.0)


class EndedTasks:
    """
    Finds the tasks of one job that ended since the last look.

    Tasks before the first one that had not ended are not asked for again,
    so that a job whose tasks end roughly in order costs a page or so per
    look.  Given the job's C{order} (its task ids as the master holds them),
    it asks JOB_TASKS only for the ended tasks (C{state}), from that first
    one on: the ended tasks before it are the same in the job's list and in
    the ended tasks' list, so one offset serves both, and a node too old to
    filter answers correctly too (the entries are filtered here again).
    Without an order, it pages through every task from that first one.
    """

    def __init__(self, job: str, limit: int = PAGE_LIMIT, order: Sequence[str] | None = None) -> None:
        self._job = job
        self._limit = limit
        self._seen: set[str] = set()
        self._first_open = 0
        self._order = list(order) if order is not None else None
        self._known = frozenset(self._order or ())

    async def new(self, node: Node) -> list[dict[str, Any]]:
        """
        The JOB_TASKS entries of the tasks that ended since the last call,
        by when they ended (by their node's clock, when every one says when
        it started), else in job order.

        @raise CliError: if the node's paging makes no progress.
        """
        if self._order is not None:
            return await self._new_ended(node)
        ended: list[dict[str, Any]] = []
        offset = self._first_open
        first_open: int | None = None
        end = offset
        while offset >= 0:
            answer = await node.call(commands.JobTasks, job=self._job, offset=offset, limit=self._limit)
            page = answer["tasks"]
            for index, entry in enumerate(page, start=offset):
                if entry.get("state") in ENDED_STATES:
                    if entry["id"] not in self._seen:
                        self._seen.add(entry["id"])
                        ended.append(entry)
                elif first_open is None:
                    first_open = index
            end = offset + len(page)
            following = answer["next"]
            if following >= 0 and following <= offset:
                raise CliError(f"the node at {node.address} answered JOB_TASKS with no progress (next={following})")
            offset = following
        self._first_open = first_open if first_open is not None else end
        return _by_end(ended)

    async def _new_ended(self, node: Node) -> list[dict[str, Any]]:
        """L{new}, asking only for the ended tasks from the first one of C{order} that had not ended."""
        assert self._order is not None
        ended: list[dict[str, Any]] = []
        offset = self._first_open
        while offset >= 0:
            answer = await node.call(
                commands.JobTasks, job=self._job, offset=offset, limit=self._limit, state=ENDED_FILTER
            )
            for entry in answer["tasks"]:
                if entry.get("state") in ENDED_STATES and entry["id"] not in self._seen:
                    self._seen.add(entry["id"])
                    ended.append(entry)
            following = answer["next"]
            if following >= 0 and following <= offset:
                raise CliError(f"the node at {node.address} answered JOB_TASKS with no progress (next={following})")
            offset = following
        if any(entry["id"] not in self._known for entry in ended):
            # The master holds tasks the order does not name: page through them all from now on.
            self._order, self._first_open = None, 0
        else:
            while self._first_open < len(self._order) and self._order[self._first_open] in self._seen:
                self._first_open += 1
        return _by_end(ended)


def _by_end(ended: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By when they ended (by their node's clock) when every one says when it started, else as they are."""
    if all(isinstance(entry.get("started"), (int, float)) for entry in ended):
        ended.sort(key=_end_time)
    return ended


def tail_bytes(entry: dict[str, Any], stream: str) -> bytes:
    """The tail of C{stream} in a JOB_TASKS entry, as bytes (the worker decoded it as UTF-8)."""
    text = entry.get(stream)
    return text.encode("utf-8", "replace") if isinstance(text, str) else b""


def cut_from_tail(entry: dict[str, Any], stream: str) -> bool:
    """
    Whether the tail of C{stream} in a JOB_TASKS entry is not the whole of
    it: the entry says the task wrote more bytes (C{stdout_size} or
    C{stderr_size}) than the tail holds, or the tail was not valid UTF-8
    (a replacement character in it).  A node that says no size (an older
    one) is taken at its tail.
    """
    size = entry.get(f"{stream}_size")
    if type(size) is not int:
        return False
    text = entry.get(stream)
    text = text if isinstance(text, str) else ""
    return size != len(tail_bytes(entry, stream)) or "\ufffd" in text


async def whole_output(
    node: Node, job: str, entry: dict[str, Any], stream: str, warn: Callable[[str], None]
) -> AsyncIterator[bytes]:
    """
    What an ended task wrote to C{stream} (C{stdout} or C{stderr}), in
    pieces as they come, to print them as they come: the tail in its
    JOB_TASKS entry when that is all of it (L{cut_from_tail}), else its
    whole kept output, read with TASK_OUTPUT from offset 0 until
    C{next_offset == size} (at most 60,000 bytes at a time, so that a
    task's 100 MiB never sits in memory).

    When the node cannot give the kept output (the worker that held it is
    gone, it keeps none, it is an older node, the task ran again), C{warn}
    is called with a line saying so, and the tail is given instead (or, if
    part was given already, nothing more).

    @raise ClientError: if the connection to the node is lost.
    """
    if not cut_from_tail(entry, stream):
        tail = tail_bytes(entry, stream)
        if tail:
            yield tail
        return
    task = str(entry["id"])
    offset = 0
    try:
        while True:
            answer = await calls.task_output(node, job, task, stream, offset)
            attempt = entry.get("attempts")
            if type(attempt) is int and answer.get("attempt") != attempt:
                raise OutputGone(f"attempt {answer.get('attempt')} of task {task} runs now, not attempt {attempt}")
            data, following, size = answer["data"], answer["next_offset"], answer["size"]
            if data:
                yield data
            if following >= size:
                return
            if following <= offset:
                raise calls.NoProgress(
                    f"the node at {node.address} answered TASK_OUTPUT with no progress (next_offset={following})"
                )
            offset = following
    except ClientError as e:
        if e.lost:
            raise
        if offset:
            warn(f"{PROG}: task {task}: the rest of its {stream} cannot be read: {e.message}")
            return
        tail = tail_bytes(entry, stream)
        warn(f"{PROG}: task {task}: only the last {len(tail)} bytes of its {stream} are shown: {e.message}")
        if tail:
            yield tail
