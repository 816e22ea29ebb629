"""
The floor under W3: a twistd plugin that does only what any node must do to
be reachable (listen on TCP, join the multicast group, send one datagram,
log that it started) and nothing of p2pexec.

Three of these launched together (``benchmarks/workloads.py``, ``w3_floor``)
show how long the interpreter, Twisted and twistd alone take to bring two
of three nodes up on this machine, in the same run as W3: what remains of
W3 above it is p2pexec's own start-up, discovery and first task.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.python import usage

log = Logger()


class Options(usage.Options):
    """The options W3 gives a node; only --name, --port and --group are used."""

    optParameters = [
        ["name", None, "floor", "Node name, for the log line."],
        ["port", None, "0", "TCP port (0: any free one)."],
        ["group", None, "239.255.42.97:10097", "Multicast ADDR:PORT to join."],
        ["cluster", None, None, "Ignored."],
        ["state-dir", None, None, "Ignored."],
        ["log-level", None, None, "Ignored."],
        ["capabilities", None, None, "Ignored."],
        ["slots", None, None, "Ignored."],
    ]


class FloorService(Service):
    """Listen, join the group, announce once, log C{Node NAME started on port N}."""

    def __init__(self, name: str, port: int, group: str, group_port: int) -> None:
        self.node_name = name
        self.port = port
        self.group = group
        self.group_port = group_port

    def startService(self) -> None:
        """Bind both ports and say so, as a p2pexec node's start does."""
        from twisted.internet import reactor

        super().startService()
        listening: Any = reactor.listenTCP(self.port, Factory.forProtocol(Protocol), interface="127.0.0.1")
        datagrams: Any = reactor.listenMulticast(self.group_port, DatagramProtocol(), listenMultiple=True)
        datagrams.setOutgoingInterface("127.0.0.1")
        datagrams.joinGroup(self.group, "127.0.0.1")
        datagrams.write(b"floor", (self.group, self.group_port))
        log.info("Node {name} started on port {port}", name=self.node_name, port=listening.getHost().port)


def makeService(options: Options) -> FloorService:
    """The floor node of C{options}."""
    group, _, group_port = options["group"].rpartition(":")
    return FloorService(options["name"], int(options["port"]), group, int(group_port))
