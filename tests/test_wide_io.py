"""Tests for L{p2pexec.wide_io}: wider reads and sends per reactor turn."""

from __future__ import annotations

from twisted.internet import abstract, tcp
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.wide_io import IO_BYTES, widen


class Wrapper:
    """A transport wrapping another, as Twisted's TLS wrapper does."""

    def __init__(self, transport: object) -> None:
        self.transport = transport


def connection() -> tcp.Connection:
    """A TCP connection object, not connected (only its attributes are looked at)."""
    return tcp.Connection.__new__(tcp.Connection)


class WidenTests(SynchronousTestCase):
    """L{widen}."""

    def test_tcp(self) -> None:
        """A TCP connection reads and sends up to IO_BYTES a turn; the class keeps Twisted's defaults."""
        tcp_connection = connection()
        widen(tcp_connection)
        self.assertEqual((tcp_connection.bufferSize, tcp_connection.SEND_LIMIT), (IO_BYTES, IO_BYTES))
        self.assertGreater(IO_BYTES, abstract.FileDescriptor.SEND_LIMIT)
        self.assertGreater(IO_BYTES, tcp.Connection.bufferSize)
        self.assertEqual(connection().SEND_LIMIT, abstract.FileDescriptor.SEND_LIMIT)

    def test_through_tls(self) -> None:
        """Through a wrapper (TLS), the TCP connection under it is widened."""
        tcp_connection = connection()
        widen(Wrapper(tcp_connection))
        self.assertEqual((tcp_connection.bufferSize, tcp_connection.SEND_LIMIT), (IO_BYTES, IO_BYTES))

    def test_other_transports(self) -> None:
        """Another transport (a test's) is left as it is."""
        transport = StringTransport()
        widen(transport)
        widen(Wrapper(None))
        self.assertFalse(hasattr(transport, "SEND_LIMIT"))
