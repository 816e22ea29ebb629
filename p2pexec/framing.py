"""
AMP that survives bad input: L{CheckedAMP} reads boxes as AMP does, but
bytes that are not AMP, a box over L{MAX_BOX_BYTES}, or an answer to no
request of ours end in one log line and L{CheckedAMP.drop} instead of a
traceback, and a box whose arguments cannot be parsed is answered with
BAD_ARGUMENTS (L{bad_arguments}, L{parse_error}) with the connection kept.

What a dropped connection means for the node is the subclass's business
(L{p2pexec.peer.PeerProtocol} fires its machine's DROP).
"""

from __future__ import annotations

from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.log import NodeLogger
from p2pexec.model import shorten

log = NodeLogger()

MAX_BOX_BYTES = 4 * 1024 * 1024
"""The most bytes of keys and values one AMP box may carry (AMP caps each value at 64 KiB, not the box)."""


class UnexpectedAnswer(Exception):
    """An answer box that answers no request still waiting on this connection: a protocol error."""


class CheckedAMP(amp.AMP):
    """AMP whose framing errors drop the connection with one log line (see the module's docstring)."""

    _box_bytes = 0

    def describe(self) -> str:
        """Who is on the other end, for log lines."""
        return "the other end"

    def reading(self) -> bool:
        """Whether input is read (not after this side refused or dropped the connection)."""
        return True

    def drop(self) -> None:
        """The other end sent something that is not AMP: close the connection."""
        if self.transport is not None:
            self.transport.loseConnection()

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """
        Dispatch one box, as AMP does, after checking that an answer
        answers a request of ours still waiting for it: AMP itself would
        fail with a bare C{KeyError} of the tag.

        @raise UnexpectedAnswer: saying what did not add up; the connection
            is then dropped (see L{dataReceived}).
        """
        key = amp.ANSWER if amp.ANSWER in box else amp.ERROR if amp.ERROR in box else None
        if key is not None:
            what = "an answer" if key == amp.ANSWER else "an error answer"
            tag = box[key].decode("ascii", "replace")
            if box[key] not in self._outstandingRequests:
                raise UnexpectedAnswer(
                    f"{what} to request {tag!r}, which this node never sent or which was answered already"
                )
            if key == amp.ERROR and (amp.ERROR_CODE not in box or amp.ERROR_DESCRIPTION not in box):
                raise UnexpectedAnswer(f"{what} to request {tag!r} without its _error_code or _error_description")
        super().ampBoxReceived(box)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse AMP framing; on bytes that are not AMP, drop the connection with
        one log line instead of a traceback.  Ignored unless L{reading}.
        """
        if not self.reading():
            return
        try:
            super().dataReceived(data)
        except UnexpectedAnswer as e:
            log.warn("Dropped the connection with {peer}: it sent {error}", peer=self.describe(), error=shorten(str(e)))
            self.drop()
        except Exception as e:
            log.warn(
                "Dropped the connection with {peer}: it sent data that is not valid AMP ({error})",
                peer=self.describe(),
                error=f"{type(e).__name__}: {e}"[:200],
            )
            self.drop()

    def stringReceived(self, string: bytes) -> None:
        """Count the bytes of the box being read; a box over L{MAX_BOX_BYTES} drops the connection."""
        if not self.reading():
            return
        if string:
            self._box_bytes += len(string) + 2
            if self._box_bytes > MAX_BOX_BYTES:
                log.warn(
                    "Dropped the connection with {peer}: it sent an AMP box of over {limit} bytes",
                    peer=self.describe(),
                    limit=MAX_BOX_BYTES,
                )
                self.drop()
                return
        super().stringReceived(string)
        if not string:
            self._box_bytes = 0

    def lengthLimitExceeded(self, length: int) -> None:
        """
        A key longer than AMP allows (the first bytes of HTTP or TLS, say):
        drop the connection, and say so in one line.
        """
        log.warn(
            "Dropped the connection with {peer}: it sent data that is not valid AMP "
            "(a key of {length} bytes; AMP keys are at most 255)",
            peer=self.describe(),
            length=length,
        )
        self.drop()


def bad_arguments(peer: str, command: str, error: Exception) -> commands.BadArguments:
    """Log that C{command} from C{peer} was refused for C{error}; the BAD_ARGUMENTS to raise."""
    log.warn("Refused {command} from {peer}: {error}", command=command, peer=peer, error=shorten(str(error)))
    return commands.BadArguments(shorten(f"{command}: {error}"))


def parse_error(error: Exception) -> str:
    """Why AMP could not parse a command's arguments, in words (a missing key is a KeyError of its name)."""
    if type(error) is KeyError and error.args and isinstance(error.args[0], bytes):
        return f"the argument {error.args[0].decode('ascii', 'replace')!r} is missing"
    return f"{type(error).__name__}: {error}"


def short_refusal(failure: Failure) -> Failure:
    """A declared refusal whose description would not fit in one AMP value is cut short."""
    # AMP has turned every declared error into a RemoteAmpError by now; an
    # undeclared one is answered UNKNOWN, without its text.
    error = failure.value
    if isinstance(error, amp.RemoteAmpError) and len(getattr(error, "description", "") or "") > 1000:
        return Failure(amp.RemoteAmpError(error.errorCode, shorten(error.description, 1000)))
    return failure
