"""
A client of a p2pexec node: one AMP connection, for the client commands of
L{p2pexec.commands} (SUBMIT_JOB, JOB_STATUS, JOB_TASKS, LIST_JOBS,
CLUSTER_STATUS, CANCEL_JOB).

It is what the C{p2pexec} command talks through, and it can be used from
other Python code under a running reactor::

    client = NodeClient(reactor, "127.0.0.1", 10001, key=load_key("cluster.key"))
    await client.connect()
    try:
        jobs = (await client.call(commands.ListJobs))["jobs"]
    finally:
        client.close()

With a key (the cluster key, or a node's local token) the connection first
proves that it holds it (L{p2pexec.auth.authenticate}); with C{tls} it
speaks TLS, and the node's certificate is checked through those proofs.
Every failure is a L{ClientError} whose message is one line naming the
node's address and the reason.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.protocols import amp

from p2pexec import commands
from p2pexec.auth import ChallengeResponse, authenticate, tls_binding

DEFAULT_PORT = 10001
"""The port of a C{--connect} value that names only a host."""

DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for the connection, and for each answer."""


class ClientError(Exception):
    """
    A connection or a command failed: C{message} says which node, and why,
    in one line.

    @ivar lost: whether the connection to the node was lost (closed, reset,
        or silent past the timeout), so that another node may be asked.
    """

    def __init__(self, message: str, lost: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.lost = lost


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

    @raise ValueError: saying what is wrong with C{text}.
    """
    value = text.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"{text!r} has no closing ']'")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected HOST:PORT, not {text!r}")
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" in value:
        raise ValueError(f"write an IPv6 address in brackets, as [::1]:{DEFAULT_PORT}, not {text!r}")
    else:
        host, port_text = value, ""
    if not host:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535, not {port_text!r}")
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
        """
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
        endpoint: Any = HostnameEndpoint(self._reactor, self._host, self._port, timeout=self._timeout)
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
            raise ClientError(f"cannot connect to {self.address}: {connect_failure_reason(e)}") from None
        if self._key is not None:
            protocol = self._protocol
            proving = defer.ensureDeferred(
                authenticate(protocol, ChallengeResponse(self._key), lambda: tls_binding(protocol.transport))
            )
            try:
                await proving.addTimeout(self._timeout, self._reactor)
            except (commands.AuthFailed, amp.RemoteAmpError, amp.UnhandledCommand) as e:
                self.close()
                raise ClientError(f"the node at {self.address} and this key do not match: {e}") from None
            except defer.TimeoutError:
                self.close()
                raise ClientError(f"no answer from {self.address} to AUTHENTICATE within {self._timeout:g}s") from None
            except (error.ConnectionDone, error.ConnectionLost, error.ConnectionClosed):
                hint = "" if self._tls else " (if it speaks TLS, add --tls)"
                raise ClientError(
                    f"the node at {self.address} closed the connection while authenticating{hint}"
                ) from None
            except Exception as e:
                self.close()
                if self._tls and type(e).__module__.startswith("OpenSSL"):
                    # A node with the operator's certificates (--tls-cert) asks
                    # for a client certificate, which this client does not have.
                    raise ClientError(
                        f"the TLS handshake with {self.address} failed ({describe_tls_error(e)}); the client "
                        f"reaches nodes that run --tls with their own certificates, not ones given --tls-cert"
                    ) from None
                raise ClientError(f"the connection to {self.address} failed while authenticating: {e}") from None

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
            raise ClientError(f"no answer from {self.address} to {name} within {self._timeout:g}s", lost=True) from None
        except error.ConnectionDone:
            raise ClientError(f"lost the connection to {self.address}: the node closed it", lost=True) from None
        except (error.ConnectionLost, error.ConnectionClosed):
            raise ClientError(f"lost the connection to {self.address}: it was reset or dropped", lost=True) from None
        except commands.UnknownJob as e:
            raise ClientError(f"unknown job: {e}") from None
        except commands.AuthRequired as e:
            if "local token" in str(e):
                raise ClientError(
                    f"the node at {self.address} refused {name}: it takes it only from the user that runs it "
                    f"(whose client finds the node's local token by itself), or with --key-file STATE_DIR/local-token"
                ) from None
            raise ClientError(f"the node at {self.address} belongs to a cluster with a key: give --key-file") from None
        except commands.BadJob as e:
            raise ClientError(f"the node at {self.address} refused the job: {e}") from None
        except commands.ShuttingDown as e:
            raise ClientError(f"the node at {self.address} is shutting down: {e}") from None
        except commands.JournalUnwritable as e:
            raise ClientError(f"the node at {self.address} refused the job: {e}") from None
        except amp.UnhandledCommand:
            raise ClientError(f"the node at {self.address} does not know {name} (is it an older p2pexec?)") from None
        except (amp.RemoteAmpError, amp.UnknownRemoteError, commands.BadArguments, commands.UnknownUpload) as e:
            raise ClientError(f"the node at {self.address} answered {name} with an error: {e}") from None
        return answer

    def _send(self, command: type[amp.Command], arguments: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        assert self._protocol is not None
        try:
            d = self._protocol.callRemote(command, **arguments)
        except amp.TooLong as e:
            # Raised synchronously; the chunking should have prevented it.
            return defer.fail(ClientError(f"{command.commandName.decode()} is too big for one message: {e}"))
        return d.addTimeout(self._timeout, self._reactor)

    def close(self) -> None:
        """Close the connection, if open."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.loseConnection()
        self._protocol = None
