"""
The task guard: a small process that outlives its node only to stop the
node's task processes.

Every task runs in a session and process group of its own (see
L{p2pexec.spawn}), so nothing kills its processes when the node dies
without stopping them (SIGKILL, a crash, the OOM killer).  The node starts
one guard (L{p2pexec.guard.TaskGuard}) and tells it, on the guard's
standard input, each task process group it starts (C{+PGID}) and each one
that is empty again (C{-PGID}).  The node holds the only write end of that
pipe, so the guard reads end-of-file the moment the node dies, however it
dies.  Then it sends SIGTERM to every group it was told of, SIGKILL after the
grace period to what is left, and exits.

The guard also keeps the groups in a record file in the node's state
directory (C{PGID START-TIME} a line, START-TIME from C{/proc/PID/stat}, so
that a reused pid is never taken for a task).  A node that starts reads it
before it resumes any job or accepts any task, and kills what is still there
(L{reap_leftovers}): the tasks that ignored the SIGTERM, or every task if the
guard died with the node.  So a task's earlier copy never runs beside its
re-run.

This module is run as a script (C{python -I -S guardian.py NAME GRACE
RECORD}), so it uses the standard library only.  Its pure parts take their
system calls as arguments, for tests.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

RECORD_NAME = "running-tasks"
"""The record file's name in the node's state directory."""

POLL = 0.05
"""Seconds between two looks at signalled groups that are not empty yet."""

BATCH = 0.02
"""
Seconds the guard sleeps after each read, so that the lines of many tasks
arrive together: one wake-up and one rewrite of the record per batch, not
per task.  Nothing is lost by waiting: the lines stay in the pipe, and
end-of-file comes after them.
"""

Groups = dict[int, int | None]
"""Process group id -> start time (clock ticks after boot) of its leader, or None if unknown."""


class Registry:
    """
    The groups a node has told its guard of, from the lines it sent
    (C{+PGID} or C{-PGID}), which may arrive split anywhere.

    A group's start time is looked up only when L{settle} is called (before
    the record is written), so that a quick task, started and ended within
    one batch, costs no look-up at all.
    """

    def __init__(self, start_time: Callable[[int], int | None]) -> None:
        """
        @param start_time: the start time of a process, or C{None} if it is
            gone (see L{start_time_of}).
        """
        self.groups: Groups = {}
        self._start_time = start_time
        self._unread: set[int] = set()
        self._partial = b""

    def feed(self, data: bytes) -> bool:
        """Apply every complete line of C{data}; return whether the groups changed."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        changed = False
        for line in lines:
            sign, number = line[:1], line[1:]
            if not number.isdigit():
                continue
            pgid = int(number)
            if sign == b"+":
                self.groups[pgid] = None
                self._unread.add(pgid)
                changed = True
            elif sign == b"-" and pgid in self.groups:
                del self.groups[pgid]
                self._unread.discard(pgid)
                changed = True
        return changed

    def settle(self) -> None:
        """Look up the start time of every group added since the last call."""
        for pgid in self._unread:
            self.groups[pgid] = self._start_time(pgid)
        self._unread.clear()


def read_stat(pid: int, proc: str = "/proc") -> tuple[str, int, int] | None:
    """(state, process group, start time) of C{pid} from C{/proc/PID/stat}, or C{None} if it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode("ascii"), int(fields[2]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def start_time_of(pid: int) -> int | None:
    """The start time of C{pid} (clock ticks after boot), or C{None} if it is gone."""
    stat = read_stat(pid)
    return None if stat is None else stat[2]


def still_ours(pgid: int, start: int | None, stat: Callable[[int], tuple[str, int, int] | None]) -> bool:
    """
    Whether process group C{pgid} can still be the task's: its leader is the
    process that started at C{start}, or its leader is gone (a number in use
    as a live group's id is never given to a new process, so then whatever
    is left in the group is the task's).
    """
    leader = stat(pgid)
    if leader is None:
        return True
    _, group, started = leader
    return start is not None and started == start and group == pgid


def live_groups(proc: str = "/proc") -> set[int]:
    """The process groups that have a member that is not a zombie."""
    groups = set()
    for entry in os.listdir(proc):
        if entry.isdigit():
            stat = read_stat(int(entry), proc)
            if stat is not None and stat[0] != "Z":
                groups.add(stat[1])
    return groups


def kill_group(pgid: int, number: int) -> None:
    """Signal process group C{pgid}; nothing if it is gone (or not ours to signal)."""
    try:
        os.killpg(pgid, number)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(
    groups: Iterable[int],
    grace: float,
    kill: Callable[[int, int], None],
    alive: Callable[[], set[int]],
    sleep: Callable[[float], None],
    now: Callable[[], float],
) -> list[int]:
    """
    SIGTERM each of C{groups}, wait up to C{grace} seconds for them to empty,
    SIGKILL what is left.

    @return: the groups that had to be SIGKILLed.
    """
    pending = list(groups)
    for pgid in pending:
        kill(pgid, signal.SIGTERM)
    end = now() + grace
    while pending:
        living = alive()
        pending = [pgid for pgid in pending if pgid in living]
        if not pending or now() >= end:
            break
        sleep(POLL)
    for pgid in pending:
        kill(pgid, signal.SIGKILL)
    return pending


def reap_leftovers(
    recorded: Groups,
    kill: Callable[[int, int], None],
    stat: Callable[[int], tuple[str, int, int] | None],
    alive: Callable[[], set[int]],
    sleep: Callable[[float], None],
    now: Callable[[], float],
    timeout: float = 5.0,
) -> tuple[list[int], list[int]]:
    """
    SIGKILL every recorded group that still runs and is still the task's
    (L{still_ours}), and wait (up to C{timeout} seconds) until they are gone.

    @return: the groups killed, and those of them still there after the timeout.
    """
    living = alive()
    killed = [pgid for pgid, start in sorted(recorded.items()) if pgid in living and still_ours(pgid, start, stat)]
    for pgid in killed:
        kill(pgid, signal.SIGKILL)
    end = now() + timeout
    left = list(killed)
    while left:
        living = alive()
        left = [pgid for pgid in left if pgid in living]
        if not left or now() >= end:
            break
        sleep(POLL)
    return killed, left


def format_record(groups: Groups) -> str:
    """The record file's text: C{PGID START-TIME} a line (C{-} for an unknown start time)."""
    return "".join(f"{pgid} {'-' if start is None else start}\n" for pgid, start in sorted(groups.items()))


def parse_record(text: str) -> Groups:
    """The groups of a record file's text; a line that is not C{PGID START-TIME} is skipped."""
    groups: Groups = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or not (parts[1].isdigit() or parts[1] == "-"):
            continue
        pgid = int(parts[0])
        if pgid > 1:
            groups[pgid] = None if parts[1] == "-" else int(parts[1])
    return groups


def read_record(path: str) -> Groups:
    """The groups recorded in C{path}; none if it is missing or unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return parse_record(f.read())
    except OSError:
        return {}


def write_record(path: str, groups: Groups) -> None:
    """Replace the record file at C{path} (written beside it, then renamed over it)."""
    partial = f"{path}.{os.getpid()}.tmp"
    try:
        with open(partial, "w", encoding="ascii") as f:
            f.write(format_record(groups))
        os.replace(partial, path)
    except OSError as e:
        say(f"cannot write {path}: {e.strerror}")


_name = ["?"]


def say(text: str) -> None:
    """One line on standard error, naming the node."""
    try:
        sys.stderr.write(f"p2pexec: the task guard of node {_name[0]}: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def main(argv: list[str]) -> int:
    """C{guardian.py NAME GRACE RECORD}: guard a node's task process groups until it dies."""
    name, grace, record = argv[0], float(argv[1]), argv[2]
    _name[0] = name
    os.setsid()  # Out of the node's session: a terminal's signals and hang-up are for the node.
    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(number, signal.SIG_IGN)
    registry = Registry(start_time_of)
    write_record(record, {})
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        if registry.feed(data):
            registry.settle()
            write_record(record, registry.groups)
        # Let lines gather: one wake-up and one record per batch, not per task.
        time.sleep(BATCH)
    # The node is gone.
    if not registry.groups:
        return 0
    registry.settle()
    write_record(record, registry.groups)
    ours = [pgid for pgid, start in registry.groups.items() if still_ours(pgid, start, read_stat)]
    if not ours:
        return 0
    say(
        f"the node ended with {len(ours)} task process group(s) running; "
        f"stopping them (SIGTERM, SIGKILL after {grace:g}s)"
    )
    killed = stop_groups(ours, grace, kill_group, live_groups, time.sleep, time.monotonic)
    if killed:
        say(f"{len(killed)} task process group(s) ignored SIGTERM for {grace:g}s and were SIGKILLed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
