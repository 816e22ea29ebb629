"""
The node's listening ports as services: children of the service tree
(L{p2pexec.service.NodeService}), as its periodic loops are.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort


class Listener(Service):
    """
    One port, listening while the service runs.

    The port is bound at most once: by L{bind} (the node binds its AMP port
    before twistd drops privileges) or else when the service starts; it
    closes when the service stops.  Starting a running listener, or stopping
    a stopped one, does nothing, so that the node can start and stop its
    listeners at their points of its start and leave sequences, and its
    service tree can start and stop them again harmlessly.

    @ivar port: the listening port, or C{None} while there is none.
    """

    def __init__(self, name: str, listen: Callable[[], IListeningPort]) -> None:
        """
        @param name: what the port is for, as the service's name.
        @param listen: binds the port (C{reactor.listenTCP(...)}, say) and returns it.
        """
        self.name = name
        self._listen = listen
        self.port: IListeningPort | None = None

    def bind(self) -> IListeningPort:
        """Bind the port now, unless it is bound; return it."""
        if self.port is None:
            self.port = self._listen()
        return self.port

    def startService(self) -> None:
        """Listen (once it has started, starting again does nothing)."""
        if self.running:
            return
        super().startService()
        self.bind()

    def stopService(self) -> Deferred[None]:
        """Stop listening; fires once the port is closed (at once if there is none)."""
        super().stopService()
        if self.port is None:
            return succeed(None)
        port, self.port = self.port, None
        stopped = port.stopListening()
        return stopped if stopped is not None else succeed(None)
