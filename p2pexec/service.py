"""
The node as a Twisted service tree, with an explicit stop order.

L{MultiService} stops its children without waiting for one before the next,
so L{NodeService} runs the node's own leave sequence (drain, flush, goodbye,
close) first and only then stops its children.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError

from p2pexec.log import NodeLogger
from p2pexec.node import Node

log = NodeLogger()


class NodeService(MultiService):
    """
    Runs one L{Node} for the lifetime of the application.

    @ivar node: the node.
    """

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    def privilegedStartService(self) -> None:
        """
        Bind the node's TCP port before twistd drops privileges.

        @raise SystemExit: with a one-line reason if the port cannot be bound,
            so that twistd exits with status 1 and that line.
        """
        super().privilegedStartService()
        try:
            self.node.listen()
        except CannotListenError as e:
            raise SystemExit(
                f"p2pexec: node {self.node.config.name} cannot listen on "
                f"{self.node.config.interface}:{self.node.config.port}: {e.socketError}"
            ) from None

    def startService(self) -> None:
        """Start the children, then the node."""
        super().startService()
        self.node.start()

    def stopService(self) -> Deferred[None]:
        """Leave the cluster in order, then stop the children."""
        leaving = Deferred.fromCoroutine(self.node.stop())
        leaving.addErrback(
            lambda f: log.failure("Node {name} did not leave cleanly", f, name=self.node.config.name)
        )

        def stop_children(_: Any) -> Any:
            return MultiService.stopService(self)

        return leaving.addCallback(stop_children)
