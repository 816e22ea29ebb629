"""
Doubles and sample data shared by the tests of L{p2pexec.cli}: a node that
answers as scripted, a terminal stream, a context for the subcommands, and
a reactor for L{p2pexec.cli.run}.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer, error
from twisted.internet.testing import Clock
from twisted.protocols import amp

from p2pexec.cli import commands as subcommands
from p2pexec.cli import render


def summary(
    job: str = "a1-0123abcd-1",
    state: str = "running",
    total: int = 10,
    eta: float | None = None,
    elapsed: float = 1.0,
    **counts: int,
) -> dict[str, Any]:
    """A JOB_STATUS summary, as L{p2pexec.status.job_summary} makes them."""
    full = dict.fromkeys(("pending", "waiting", "running", "succeeded", "failed", "cancelled"), 0)
    full.update(counts)
    done = full["succeeded"] + full["failed"] + full["cancelled"]
    return {
        "id": job,
        "state": state,
        "total": total,
        "done": done,
        "progress": done / total,
        "counts": full,
        "started": 100.0,
        "finished": None,
        "elapsed": elapsed,
        "eta": eta,
        "stale_results_dropped": 0,
        "master": "a1",
        "epoch": 1,
        "answered_by": "master",
    }


def task_entry(task_id: str, state: str = "succeeded", **fields: Any) -> dict[str, Any]:
    """A JOB_TASKS entry, as L{p2pexec.status.task_entry} makes them."""
    entry = {
        "id": task_id,
        "kind": "sh",
        "state": state,
        "attempts": 1,
        "node": "a1",
        "status": state,
        "exit_code": 0,
        "duration": 0.25,
        "error": None,
    }
    entry.update(fields)
    return entry


class TtyStringIO(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        """Always true."""
        return True


class FakeNode:
    """
    A recording double of L{p2pexec.cli.client.NodeClient}: each command's answers are
    scripted by command class (a list, consumed in order; the last one is
    kept), and every call is recorded.  The arguments go through the
    command's AMP encoding, as on the wire (so a value over 65,535 bytes
    raises L{amp.TooLong}), and are recorded as the node would read them.
    """

    def __init__(self, answers: dict[type, list[Any]], address: str = "127.0.0.1:10001") -> None:
        self.address = address
        self.answers = answers
        self.calls: list[tuple[type, dict[str, Any]]] = []
        self.sizes: list[dict[str, int]] = []

    def call(self, command: type, **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        """Encode and decode the arguments as AMP does, record them, and answer as scripted."""
        box = amp.AmpBox(command.makeArguments(arguments, None))
        self.sizes.append({key.decode(): len(value) for key, value in box.items()})
        box.serialize()
        arguments = command.parseArguments(box, None)
        self.calls.append((command, arguments))
        script = self.answers[command]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if callable(answer):
            answer = answer(**arguments)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def sent(self, command: type) -> list[dict[str, Any]]:
        """The arguments of every C{command} sent, in order."""
        return [arguments for sent, arguments in self.calls if sent is command]


class Harness:
    """
    A L{p2pexec.cli.commands.Context} over a L{FakeNode}, a plain output
    into a buffer and a L{Clock}; with C{others}, other nodes by address
    that the context can connect to (an address not among them refuses).
    """

    def __init__(self, answers: dict[type, list[Any]], others: dict[str, FakeNode] | None = None) -> None:
        self.node = FakeNode(answers)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.clock = Clock()
        self.others = others
        self.connected: list[str] = []
        self.context = subcommands.Context(
            self.node,
            render.PlainOutput(self.stdout),
            self.clock,
            self.stderr,
            connect=None if others is None else self.connect,
        )

    async def connect(self, address: str) -> FakeNode:
        """Connect to another node: one of C{others}, or a refusal."""
        from p2pexec.cli.client import ClientError

        self.connected.append(address)
        assert self.others is not None
        if address not in self.others:
            raise ClientError(f"cannot connect to {address}: connection refused")
        return self.others[address]

    def start(self, subcommand: Any, args: Any) -> defer.Deferred[int]:
        """Start a subcommand coroutine."""
        return defer.ensureDeferred(subcommand(self.context, args))

    def lines(self) -> list[str]:
        """What was printed, line by line."""
        return self.stdout.getvalue().splitlines()


def ns(**fields: Any) -> Any:
    """An argparse namespace with C{fields}."""
    import argparse

    return argparse.Namespace(**fields)


class FakeReactor(Clock):
    """
    Just enough of a reactor for L{p2pexec.cli.run}, which runs its work
    with L{twisted.internet.task.react}: C{run()} runs the start-up calls,
    then stops (as SIGINT would) unless one of them did.  As with a real
    reactor, C{callWhenRunning} calls at once while it runs, the shutdown
    triggers run while it still counts as running, and a second C{stop()}
    raises L{ReactorNotRunning}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self._starting: list[tuple[Any, tuple[Any, ...]]] = []
        self._shutdown: list[tuple[Any, tuple[Any, ...]]] = []
        self.stopped = False

    def callWhenRunning(self, f: Any, *args: Any) -> None:
        """Call C{f} now if running, else keep it for L{run}."""
        if self.running:
            f(*args)
        else:
            self._starting.append((f, args))

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any) -> None:
        """Keep C{f} for L{stop}, whatever the phase and event."""
        self._shutdown.append((f, args))

    def run(self) -> None:
        """Call the start-up functions, then stop unless one of them did."""
        self.running = True
        for f, args in self._starting:
            f(*args)
        if not self.stopped:
            # As SIGINT would: stop, which fires the shutdown triggers.
            self.stop()

    def stop(self) -> None:
        """Stop, and call the shutdown triggers; L{ReactorNotRunning} if stopped already."""
        if self.stopped:
            raise error.ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stopped = True
        for f, args in self._shutdown:
            f(*args)
        self.running = False
