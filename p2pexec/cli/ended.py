"""
The tasks of a followed job as they end, for C{run} and C{submit --wait
--output/--joblog}: L{EndedTasks} pages through JOB_TASKS from the first
task that had not ended at the last look, and hands back the ones that
ended since, in the order they ended; L{whole_output} is where a task's
output comes from.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from twisted.protocols import amp

from p2pexec import commands
from p2pexec.cli.errors import CliError

ENDED_STATES = frozenset({"succeeded", "failed", "cancelled"})
"""The JOB_TASKS states of a task that has its final result."""

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
    so that a job whose tasks end roughly in order costs a page or so per look.
    """

    def __init__(self, job: str, limit: int = PAGE_LIMIT) -> None:
        self._job = job
        self._limit = limit
        self._seen: set[str] = set()
        self._first_open = 0

    async def new(self, node: Node) -> list[dict[str, Any]]:
        """
        The JOB_TASKS entries of the tasks that ended since the last call,
        by when they ended (by their node's clock, when every one says when
        it started), else in job order.

        @raise CliError: if the node's paging makes no progress.
        """
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
        if all(isinstance(entry.get("started"), (int, float)) for entry in ended):
            ended.sort(key=_end_time)
        return ended


async def whole_output(node: Node, job: str, entry: dict[str, Any], stream: str) -> str:
    """
    What the task wrote to C{stream} (C{stdout} or C{stderr}), to print.

    For now the tail in its JOB_TASKS entry (the last 8 KiB).  Where the
    logs part keeps the whole output: when the entry says the task wrote
    more than its tail (C{stdout_size}/C{stderr_size} above the tail's
    bytes, or C{output_cut}), this is the one place to fetch it with
    TASK_OUTPUT (job, task, stream, offset, limit) from offset 0 until
    C{next_offset == size}.
    """
    text = entry.get(stream)
    return text if isinstance(text, str) else ""
