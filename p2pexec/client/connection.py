"""
One AMP connection to a p2pexec node, for the client commands of
L{p2pexec.commands} (SUBMIT_JOB, JOB_STATUS, JOB_TASKS, LIST_JOBS,
CLUSTER_STATUS, CANCEL_JOB, TASK_OUTPUT): the layer under
L{p2pexec.client.api} and the C{p2pexec} command.  It can be used on its
own under a running reactor::

    client = NodeClient(reactor, "127.0.0.1", 10001, key=load_key("cluster.key"))
    await client.connect()
    try:
        jobs = (await client.call(commands.ListJobs))["jobs"]
    finally:
        client.close()

With a key (the cluster key, or a node's local token) the connection first
proves that it holds it (L{p2pexec.auth.authenticate}); with C{tls} it
speaks TLS, and the node's certificate is checked through those proofs.
Every failure is a L{ClientError} (one of its subclasses in
L{p2pexec.client.errors}) whose message is one line naming the node's
address and the reason.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols import amp

from p2pexec import commands
from p2pexec.auth import ChallengeResponse, authenticate, tls_binding
from p2pexec.client.errors import (
    AuthenticationFailed,
    BadAddress,
    ConnectFailed,
    ConnectionLost,
    JobNotFound,
    JobRefused,
    NodeError,
    OutputGone,
    OutputNotReady,
    TaskNotFound,
)
from p2pexec.wide_io import widen

DEFAULT_PORT = 10001
"""The port of a C{--connect} value that names only a host."""

DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for the connection, and for each answer."""


def describe_tls_error(error: Exception) -> str:
    """
    The reasons in an OpenSSL error, e.g. C{tlsv13 alert certificate
    required}, instead of its nested list of tuples.
    """
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry and isinstance(entry[-1], str):
            reasons.append(entry[-1])
    return "; ".join(reasons) or str(error) or type(error).__name__


# -- addresses -----------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """
    Parse C{HOST:PORT}, C{HOST} (port L{DEFAULT_PORT}) or C{[IPV6]:PORT}.

    @raise BadAddress: (a L{ValueError} too) saying what is wrong with C{text}.
    """
    value = text.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise BadAddress(f"{text!r} has no closing ']'")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadAddress(f"expected HOST:PORT, not {text!r}")
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" in value:
        raise BadAddress(f"write an IPv6 address in brackets, as [::1]:{DEFAULT_PORT}, not {text!r}")
    else:
        host, port_text = value, ""
    if not host:
        raise BadAddress(f"expected HOST:PORT, not {text!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BadAddress(f"the port must be a number from 1 to 65535, not {port_text!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """C{HOST:PORT}, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_failure_reason(failure: BaseException) -> str:
    """Why a connection could not be made, in a few lower-case words."""
    if isinstance(failure, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(failure, (error.TimeoutError, defer.TimeoutError)):
        return "timed out"
    if isinstance(failure, error.DNSLookupError):
        return "host name not found"
    if isinstance(failure, error.NoRouteError):
        return "no route to host"
    if isinstance(failure, error.ConnectError) and failure.osError:
        return str(failure.osError).lower()
    text = str(failure).strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else type(failure).__name__


# -- the connection --------------------------------------------------------------


class NodeClient:
    """
    One AMP connection to a node, for the client commands (no
    CONNECT_REQUEST or HANDSHAKE).  Every failure becomes a L{ClientError}
    whose message names the address and the reason.

    Call L{connect} once, then L{call} as often as needed (one command at a
    time or several at once), and L{close} at the end.

    @ivar address: the node's address as C{HOST:PORT}, for messages.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        timeout: float = DEFAULT_TIMEOUT,
        key: bytes | None = None,
        tls: bool = False,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        """
        @param reactor: provides C{IReactorTCP} and C{IReactorTime} (the
            timeouts are measured on it).
        @param host: the node's host name or address.
        @param port: the node's TCP port.
        @param timeout: seconds to wait for the connection, for the
            authentication, and for each answer.
        @param key: the cluster key (or the node's local token) to prove
            that this client holds it, or C{None} for a node without one.
        @param tls: speak TLS to a node that runs C{--tls} (needs C{key}:
            the node's certificate is checked through the proofs).
        @param endpoint: how to reach the node, instead of a
            C{HostnameEndpoint} to C{host:port} (for tests, on an in-memory
            network).
        """
        self._endpoint = endpoint
        self._key = key
        self._tls = tls
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout
        self._protocol: amp.AMP | None = None
        self.address = format_address(host, port)

    async def connect(self) -> None:
        """
        Connect, and authenticate if there is a key.

        @raise ClientError: if the node cannot be reached, does not answer
            in time, or does not hold the same key.
        """
        endpoint: Any = self._endpoint or HostnameEndpoint(self._reactor, self._host, self._port, timeout=self._timeout)
        if self._tls:
            from twisted.internet.endpoints import wrapClientTLS

            from p2pexec.tls import TLSConfig

            # The node's certificate is checked through the key's proofs (pinned).
            endpoint = wrapClientTLS(TLSConfig(None, None).client_options(), endpoint)
        try:
            self._protocol = await connectProtocol(endpoint, amp.AMP())
        except defer.CancelledError:
            raise
        except Exception as e:
            raise ConnectFailed(f"cannot connect to {self.address}: {connect_failure_reason(e)}") from None
        widen(self._protocol.transport)
        if self._key is not None:
            protocol = self._protocol
            proving = defer.ensureDeferred(
                authenticate(protocol, ChallengeResponse(self._key), lambda: tls_binding(protocol.transport))
            )
            try:
                await proving.addTimeout(self._timeout, self._reactor)
            except (commands.AuthFailed, amp.RemoteAmpError, amp.UnhandledCommand) as e:
                self.close()
                raise AuthenticationFailed(f"the node at {self.address} and this key do not match: {e}") from None
            except defer.TimeoutError:
                self.close()
                raise ConnectFailed(
                    f"no answer from {self.address} to AUTHENTICATE within {self._timeout:g}s"
                ) from None
            except (error.ConnectionDone, error.ConnectionLost, error.ConnectionClosed):
                hint = "" if self._tls else " (if it speaks TLS, add --tls)"
                raise ConnectFailed(
                    f"the node at {self.address} closed the connection while authenticating{hint}"
                ) from None
            except Exception as e:
                self.close()
                if self._tls and type(e).__module__.startswith("OpenSSL"):
                    # A node with the operator's certificates (--tls-cert) asks
                    # for a client certificate, which this client does not have.
                    raise ConnectFailed(
                        f"the TLS handshake with {self.address} failed ({describe_tls_error(e)}); the client "
                        f"reaches nodes that run --tls with their own certificates, not ones given --tls-cert"
                    ) from None
                raise ConnectFailed(f"the connection to {self.address} failed while authenticating: {e}") from None

    async def call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        """
        Send C{command} with C{arguments} and wait (at most the timeout) for
        its answer, as a dict of the command's response fields.

        @raise ClientError: for a timeout, a lost connection, or an error
            the node answered with (an unknown job, a refused job, ...).
        """
        assert self._protocol is not None, "call connect() first"
        name = command.commandName.decode("ascii")
        try:
            answer: dict[str, Any] = await self._send(command, arguments)
        except defer.TimeoutError:
            raise ConnectionLost(f"no answer from {self.address} to {name} within {self._timeout:g}s") from None
        except error.ConnectionDone:
            raise ConnectionLost(f"lost the connection to {self.address}: the node closed it") from None
        except (error.ConnectionLost, error.ConnectionClosed):
            raise ConnectionLost(f"lost the connection to {self.address}: it was reset or dropped") from None
        except commands.UnknownJob as e:
            raise JobNotFound(f"unknown job: {e}") from None
        except commands.AuthRequired as e:
            if "local token" in str(e):
                raise AuthenticationFailed(
                    f"the node at {self.address} refused {name}: it takes it only from the user that runs it "
                    f"(whose client finds the node's local token by itself), or with --key-file STATE_DIR/local-token"
                ) from None
            raise AuthenticationFailed(
                f"the node at {self.address} belongs to a cluster with a key: give --key-file"
            ) from None
        except (commands.BadJob, commands.JournalUnwritable) as e:
            raise JobRefused(f"the node at {self.address} refused the job: {e}") from None
        except commands.ShuttingDown as e:
            raise JobRefused(f"the node at {self.address} is shutting down: {e}") from None
        except commands.UnknownTask as e:
            raise TaskNotFound(f"unknown task: {e}") from None
        except commands.NotStarted as e:
            raise OutputNotReady(f"no output yet: {e}") from None
        except commands.OutputGone as e:
            raise OutputGone(f"the output is gone: {e}") from None
        except amp.UnhandledCommand:
            raise NodeError(f"the node at {self.address} does not know {name} (is it an older p2pexec?)") from None
        except (amp.RemoteAmpError, amp.UnknownRemoteError, commands.BadArguments, commands.UnknownUpload) as e:
            raise NodeError(f"the node at {self.address} answered {name} with an error: {e}") from None
        return answer

    def _send(self, command: type[amp.Command], arguments: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        assert self._protocol is not None
        try:
            d = self._protocol.callRemote(command, **arguments)
        except amp.TooLong as e:
            # Raised synchronously; the chunking should have prevented it.
            return defer.fail(NodeError(f"{command.commandName.decode()} is too big for one message: {e}"))
        return d.addTimeout(self._timeout, self._reactor)

    def close(self) -> None:
        """Close the connection, if open."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.loseConnection()
        self._protocol = None
