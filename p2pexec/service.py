"""
The node as a Twisted service tree, with an explicit stop order.

L{MultiService} stops its children without waiting for one before the next,
so L{NodeService} runs the node's own leave sequence (drain, flush, goodbye,
close) first and only then stops its children: the node's listening ports
(AMP, discovery) and periodic loops (peer expiry, gossip, liveness checks;
the node starts and stops these itself at their points of its start and
leave sequences), the HTTP server, the runtime record.

It also keeps systemd informed (L{p2pexec.systemd}): C{READY=1} once the node
serves, C{WATCHDOG=1} while the reactor turns, C{STOPPING=1} as it starts to
leave.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError

from p2pexec.guard import TaskGuard
from p2pexec.log import NodeLogger
from p2pexec.node import Node
from p2pexec.systemd import SystemdNotifier

log = NodeLogger()


class NodeService(MultiService):
    """
    Runs one L{Node} for the lifetime of the application.

    @ivar node: the node.
    @ivar notifier: what tells systemd how the node is doing, or C{None}.
    @ivar guard: what keeps the node's task processes from outliving it, or C{None}.
    """

    def __init__(self, node: Node, notifier: SystemdNotifier | None = None, guard: TaskGuard | None = None) -> None:
        """
        @param notifier: tells systemd how the node is doing; without one,
            systemd is not told.
        @param guard: started before the node (it kills what an earlier
            run of the node left running; its process starts with the
            node's first task); without one, nothing stops the node's task
            processes if it dies.
        """
        super().__init__()
        self.node = node
        self.notifier = notifier
        self.guard = guard
        for child in [*node.listeners, *node.loops]:
            child.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Bind the node's AMP port (its listener's) before twistd drops privileges.

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
        """
        Start the task guard (which kills what an earlier run of the node
        left running; its process starts with the first task), the systemd
        watchdog, the node (which starts its
        listeners and loops in its own order: discovery after it has
        announced itself), then the other children; tell systemd C{READY=1}
        once the node serves.
        """
        if self.guard is not None:
            try:
                self.guard.start()
            except OSError as e:
                log.error(
                    "Node {name} cannot start its task guard ({error}): its tasks would outlive it if it died",
                    name=self.node.config.name,
                    error=e,
                )
        if self.notifier is not None:
            self.notifier.start_watchdog()
        self.node.start()
        super().startService()
        if self.notifier is not None:
            self.node.ready().addCallback(self._serving)

    def _serving(self, _: Any) -> None:
        """The node serves: tell systemd, naming it and its address (unless it is leaving already)."""
        if self.notifier is not None and not self.node.stopping:
            self.notifier.ready(
                f"node {self.node.info.name} serving on {self.node.config.interface}:{self.node.info.port}"
            )

    def stopService(self) -> Deferred[None]:
        """
        Tell systemd C{STOPPING=1}, leave the cluster in order, stop the
        systemd watchdog, then stop the children.
        """
        if self.notifier is not None:
            self.notifier.stopping(f"node {self.node.config.name} leaving the cluster")
        leaving = Deferred.fromCoroutine(self.node.stop())
        leaving.addErrback(lambda f: log.failure("Node {name} did not leave cleanly", f, name=self.node.config.name))

        def stop_children(_: Any) -> Any:
            if self.notifier is not None:
                self.notifier.stop_watchdog()
            return MultiService.stopService(self)

        return leaving.addCallback(stop_children)


class WebService(Service):
    """
    The node's HTTP server (C{--web}): the API, metrics and dashboard of
    L{p2pexec.web}, on the node's interface.
    """

    def __init__(self, node: Node, port: int, reactor: Any) -> None:
        self.node = node
        self.port = port
        self._reactor = reactor
        self._listening: Any = None

    def privilegedStartService(self) -> None:
        """
        Bind the HTTP port with the node's.

        @raise SystemExit: with one line, if the port cannot be bound.
        """
        from p2pexec.web import site

        super().privilegedStartService()
        interface = self.node.config.interface
        try:
            self._listening = self._reactor.listenTCP(self.port, site(self.node, self.port), interface=interface)
        except CannotListenError as e:
            raise SystemExit(
                f"p2pexec: node {self.node.config.name} cannot serve HTTP on {interface}:{self.port}: {e.socketError}"
            ) from None
        log.info(
            "Node {name} serves its dashboard, API and metrics on http://{interface}:{port}/",
            name=self.node.config.name,
            interface=interface,
            port=self._listening.getHost().port,
        )

    def stopService(self) -> Any:
        """Stop listening."""
        super().stopService()
        if self._listening is not None:
            listening, self._listening = self._listening, None
            return listening.stopListening()
        return None


class RuntimeRecordService(Service):
    """
    Without a cluster key: leave the runtime record by which the owner's
    client finds the node's local token (L{p2pexec.localtoken}) while the
    node runs, and take it away when it stops.
    """

    def __init__(self, node: Node, web: int | None, environ: dict[str, str] | None = None) -> None:
        """
        @param web: the node's C{--web} port, if it serves HTTP.
        @param environ: where C{$XDG_STATE_HOME} is read (the process's environment by default).
        """
        self.node = node
        self.web = web
        self.environ = environ
        self.path: str | None = None

    def startService(self) -> None:
        """Write the record (the node listens already); a failure is one warning, not a crash."""
        from p2pexec.localtoken import token_path, write_record

        super().startService()
        config = self.node.config
        assert config.state_dir is not None
        try:
            self.path = write_record(
                config.interface, self.node.info.port, config.name, config.state_dir, self.web, self.environ
            )
        except OSError as e:
            log.warn(
                "Node {name} could not write its runtime record ({error}): its owner's client will not find "
                "its local token by itself; give it with --key-file {token}",
                name=config.name,
                error=e.strerror or str(e),
                token=token_path(config.state_dir),
            )
            return
        log.info(
            "Node {name} takes jobs and cancels only from its owner, who proves the local token in {token} "
            "(the p2pexec client of this user finds it by itself; the dashboard's address with it: "
            "p2pexec --connect {interface}:{port} token --url)",
            name=config.name,
            token=token_path(config.state_dir),
            interface=config.interface,
            port=self.node.info.port,
        )

    def stopService(self) -> Any:
        """Remove the record."""
        from p2pexec.localtoken import remove_record

        super().stopService()
        if self.path is not None:
            remove_record(self.path)
            self.path = None
        return None
