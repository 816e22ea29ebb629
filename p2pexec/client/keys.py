"""
Which key a client proves to a node, found as the C{p2pexec} command finds
it: the cluster key from a key file, or else the node's local token, which a
node of this user's names in its runtime record (L{p2pexec.localtoken}).
And the connections to other nodes made with it, for following a job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from p2pexec.auth import KeyFileError, load_key
from p2pexec.client.connection import DEFAULT_TIMEOUT, NodeClient, parse_address
from p2pexec.client.errors import KeyProblem


def load_key_file(path: str) -> bytes:
    """
    The key in the key file at C{path} (a cluster key, or a node's
    C{STATE_DIR/local-token}).

    @raise KeyProblem: naming the file and what is wrong with it.
    """
    try:
        return load_key(path)
    except KeyFileError as e:
        raise KeyProblem(str(e)) from None


def local_token(host: str, port: int) -> tuple[bytes, dict[str, Any]] | None:
    """
    The local token of this user's node at C{host:port}, and its runtime
    record (see L{p2pexec.localtoken}), or C{None}: no node of this user's
    runs there.

    @raise KeyProblem: if the node's record names a token that cannot be read.
    """
    from p2pexec.localtoken import LocalTokenError, find_token

    try:
        return find_token(host, port)
    except LocalTokenError as e:
        raise KeyProblem(str(e)) from None


def find_key(host: str, port: int, key_file: str | None = None) -> bytes | None:
    """
    The key to prove to the node at C{host:port}: the one in C{key_file} if
    given, else that node's local token if it is this user's, else C{None}
    (a node without a cluster key answers questions without any proof).

    @raise KeyProblem: if the key file, or the node's token, cannot be read.
    """
    if key_file:
        return load_key_file(key_file)
    found = local_token(host, port)
    return found[0] if found is not None else None


def check_tls(tls: bool, key: bytes | None) -> None:
    """
    @raise KeyProblem: for TLS without a cluster key, through which alone the
        node's certificate can be checked.
    """
    if tls and key is None:
        raise KeyProblem("--tls needs --key-file: the node's certificate is checked through the cluster key")


def node_connector(
    reactor: Any,
    key: bytes | None,
    tls: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    opened: list[NodeClient] | None = None,
) -> Callable[[str], Awaitable[NodeClient]]:
    """
    A function that connects to another node by its C{HOST:PORT}, with
    C{key} (the cluster key) if given, else that node's own local token if it
    is this user's; each client made is added to C{opened}, for closing.
    """

    async def connect(address: str) -> NodeClient:
        host, port = parse_address(address)
        other_key = key if key is not None else find_key(host, port)
        other = NodeClient(reactor, host, port, timeout, key=other_key, tls=tls)
        if opened is not None:
            opened.append(other)
        await other.connect()
        return other

    return connect
