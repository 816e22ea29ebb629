"""
Logging helpers on top of L{twisted.logger}.

Every p2pexec log line goes through a L{twisted.logger.Logger} with structured
fields.  Two additions live here:

  - a process-wide minimum level (C{--log-level}), applied before an event is
    even built, so that per-task debug lines cost nothing on the hot path;
  - L{RateLimitedLog}, so that a stream of bad datagrams or boxes from one
    source produces one line a minute, not a flood.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel, formatEvent

_minimum_level = LogLevel.info

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
"""The names C{--log-level} accepts."""


MAX_IDS_IN_LOG = 20
"""A log line lists at most this many task ids; bigger batches get one line."""


def format_ids(ids: list[str]) -> str:
    """C{['a1', 'b1']}, shortened with a count past L{MAX_IDS_IN_LOG} ids."""
    if len(ids) <= MAX_IDS_IN_LOG:
        return repr(ids)
    return f"{ids[:MAX_IDS_IN_LOG]!r} (+{len(ids) - MAX_IDS_IN_LOG} more)"


def set_minimum_level(level: LogLevel) -> None:
    """Drop every p2pexec event below C{level} from now on."""
    global _minimum_level
    _minimum_level = level


def log_started(logger: Logger, name: str, started: list[tuple[str, str]]) -> None:
    """
    Say that node C{name} started these (task, job)s: one line per task, as
    the original; one line per burst past L{MAX_IDS_IN_LOG}.
    """
    if len(started) <= MAX_IDS_IN_LOG:
        for task_id, job in started:
            logger.info("Node {name} executing: {task}", name=name, task=task_id, job=job)
    else:
        logger.info(
            "Node {name} executing {count} tasks: {ids}",
            name=name,
            count=len(started),
            ids=format_ids([task_id for task_id, _ in started]),
        )


class NodeLogger(Logger):
    """
    A L{Logger} that drops events below the process-wide minimum level before
    formatting anything.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        """Emit the event unless C{level} is below the minimum."""
        if level < _minimum_level:
            return
        super().emit(level, format, **kwargs)


class DemotingLogger(NodeLogger):
    """
    A L{NodeLogger} for Twisted's own chatty components: their info lines
    become debug lines; warnings and errors stay as they are.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        """Emit the event, at debug level if it was below a warning."""
        if level < LogLevel.warn:
            level = LogLevel.debug
        super().emit(level, format, **kwargs)


class RateLimitedLog:
    """
    Log repeated complaints of one kind from one source at most once per
    C{interval} seconds, saying how many were suppressed in between.

    @ivar counts: how many complaints of each reason were seen in all, for
        metrics.
    """

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime,
        interval: float = 60.0,
        max_sources: int = 1024,
    ) -> None:
        self._log = log
        self._clock = clock
        self._interval = interval
        self._max_sources = max_sources
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self.counts: dict[str, int] = {}

    def warn(self, reason: str, source: str, format: str, **fields: Any) -> None:
        """
        Count a complaint, and log it unless one with the same reason and
        source was logged less than C{interval} seconds ago.
        """
        self.counts[reason] = self.counts.get(reason, 0) + 1
        key = (reason, source)
        now = self._clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last is not None else 0
        if len(self._last) >= self._max_sources and key not in self._last:
            self._last.clear()
        self._last[key] = (now, 0)
        if suppressed:
            format += " ({suppressed} more like it suppressed)"
        self._log.warn(format, reason=reason, source=source, suppressed=suppressed, **fields)


_stamp_cache: list[Any] = [None, ""]


def _format_line(event: dict[str, Any]) -> str | None:
    """C{2026-11-26T16:01:26.123456+0000 [namespace#level] text}, one line."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    when = event.get("log_time") or 0.0
    second = int(when)
    if _stamp_cache[0] != second:
        _stamp_cache[0] = second
        _stamp_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    stamp = f"{_stamp_cache[1]}.{int((when - second) * 1_000_000):06d}+0000"
    level = event.get("log_level")
    namespace = event.get("log_namespace", "-")
    prefix = f"{stamp} [{namespace}#{level.name if level is not None else '-'}] "
    return prefix + text.replace("\n", "\n\t") + "\n"


def observer() -> Any:
    """
    A plain-text log observer on standard output with microsecond
    timestamps, for C{twistd --logger=p2pexec.log.observer}: one line per
    event, no record separators, suited to journald and to merging the logs
    of several nodes.
    """
    import sys

    from twisted.logger import FileLogObserver

    return FileLogObserver(sys.stdout, _format_line)
