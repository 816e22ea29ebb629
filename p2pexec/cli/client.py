"""
The connection code of the C{p2pexec} command, which moved to
L{p2pexec.client} (L{p2pexec.client.connection}, L{p2pexec.client.errors});
its names stay importable from here.
"""

from __future__ import annotations

from p2pexec.client.connection import (
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    NodeClient,
    connect_failure_reason,
    describe_tls_error,
    format_address,
    parse_address,
)
from p2pexec.client.errors import ClientError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "ClientError",
    "NodeClient",
    "connect_failure_reason",
    "describe_tls_error",
    "format_address",
    "parse_address",
]
