"""
What the signals mean to a node started by twistd (L{p2pexec.tap}): SIGTERM
and SIGINT make it leave the cluster and exit 0; SIGHUP reopens its log file,
or, logging to a terminal, makes it leave (L{on_hangup}).
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.error import ReactorNotRunning

from p2pexec.log import NodeLogger

_log = NodeLogger()


def _stop_cleanly_on_signals(reactor: Any, name: str) -> None:
    """
    Make SIGTERM and SIGINT stop the reactor so that twistd exits 0 after the
    node has left; by default twistd re-raises the signal and exits with it.

    SIGHUP, which twistd leaves at its default (death on the spot), is
    handled as L{on_hangup} says, unless the node was started ignoring it
    (C{nohup}), which it keeps doing.
    """

    def handler(number: int, frame: Any) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, lambda number, frame: reactor.callFromThread(on_hangup, reactor, name))


def on_hangup(reactor: Any, name: str, log_files: list[Any] | None = None) -> None:
    """
    What SIGHUP means to a node, in the conventions of daemons:

      - if twistd logs to a file (C{--logfile}, and a daemon by default),
        the file is reopened, so that log rotation tools can move it away;
      - otherwise (logging to standard output: a terminal, journald), it is
        the terminal hanging up, and the node leaves the cluster as it
        does on SIGTERM (drain, goodbyes, exit 0).

    Either way it says so in one line.

    @param log_files: the log files to reopen; by default those twistd logs to.
    """
    files = _twistd_log_files() if log_files is None else log_files
    if files:
        for log_file in files:
            try:
                log_file.reopen()
            except OSError as e:
                _log.error(
                    "Node {name} received SIGHUP and could not reopen its log file {path}: {error}",
                    name=name,
                    path=getattr(log_file, "path", "?"),
                    error=e.strerror or e,
                )
                return
        _log.info(
            "Node {name} received SIGHUP: reopened its log file {path}",
            name=name,
            path=", ".join(getattr(f, "path", "?") for f in files),
        )
        return
    _log.info(
        "Node {name} received SIGHUP (its terminal hung up): leaving the cluster, as on SIGTERM",
        name=name,
    )
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # Already leaving.


def _twistd_log_files() -> list[Any]:
    """
    The log files (L{twisted.python.logfile.BaseLogFile}) that the global log
    observers write to: what twistd opened for C{--logfile}.  None when it
    logs to standard output or syslog.
    """
    from twisted.logger import globalLogPublisher
    from twisted.python.logfile import BaseLogFile

    files = []
    for observer in getattr(globalLogPublisher, "_observers", ()):
        out = getattr(observer, "_outFile", None)
        if isinstance(out, BaseLogFile) and out not in files:
            files.append(out)
    return files
