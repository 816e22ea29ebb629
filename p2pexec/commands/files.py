"""
The commands that move files (issue 16): blobs, named by the SHA-256 of
their content, travel in pieces of at most L{PIECE_LIMIT} bytes.

Part of L{p2pexec.commands}, which re-exports every name.  The responders
are L{p2pexec.file_commands.FileCommands}; the senders L{p2pexec.transfer}.
"""

from __future__ import annotations

from twisted.protocols import amp

from p2pexec.commands.arguments import JSON
from p2pexec.commands.errors import NoSuchBlob, TransferRefused, _errors

# -- Files (issue 16, part "wire") ----------------------------------------------------

PIECE_LIMIT = 60_000
"""The most bytes of a blob one PUT_BLOB or FETCH_BLOB carries (one AMP value is at most 65,535)."""

PIECES_PER_BOX = 16
"""The most pieces one PUT_BLOB or FETCH_BLOB answer carries: C{data}, then C{data1} to C{data15}."""

BOX_LIMIT = PIECES_PER_BOX * PIECE_LIMIT
"""The most bytes of a blob one box carries (960,000: well under L{p2pexec.framing.MAX_BOX_BYTES})."""

EXTRA_PIECES = tuple(f"data{n}" for n in range(1, PIECES_PER_BOX))
"""The names of the optional pieces after C{data}, in order."""

MAX_DIGESTS = 800
"""The most digests one HAVE_BLOBS asks about (800 quoted digests fit one AMP value)."""


class HaveBlobs(amp.Command):
    """
    HAVE_BLOBS, from a client or a peer: which of these blobs (C{digests},
    a JSON list of at most 800 SHA-256 digests, 64 lowercase hex digits
    each) the receiver lacks.  The answer C{missing} lists them, in the
    order asked, each once.  See docs/protocol.rst, "Files".
    """

    commandName = b"HAVE_BLOBS"
    arguments = [(b"digests", JSON())]
    response = [(b"missing", JSON())]
    errors = _errors()


class PutBlob(amp.Command):
    """
    PUT_BLOB: one to 16 pieces (C{data}, then optionally C{data1} to
    C{data15}, each at most 60,000 bytes; their bytes follow each other
    from C{offset}) of the blob C{sha256} of C{size} bytes.  Boxes go in
    order, from offset 0; the answer says how many bytes the receiver holds (C{received}) and
    whether the blob is whole and checked (C{complete}).  A blob the
    receiver holds already is answered complete at once.
    """

    commandName = b"PUT_BLOB"
    arguments = [
        (b"sha256", amp.Unicode()),
        (b"size", amp.Integer()),
        (b"offset", amp.Integer()),
        (b"data", amp.String()),
        *[(name.encode("ascii"), amp.String(optional=True)) for name in EXTRA_PIECES],
    ]
    response = [(b"received", amp.Integer()), (b"complete", amp.Boolean())]
    errors = _errors(TRANSFER_REFUSED=TransferRefused)


class FetchBlob(amp.Command):
    """
    FETCH_BLOB: at most C{limit} (0 to 960,000) bytes of the blob C{sha256}
    from C{offset} on, in pieces of 60,000 bytes (C{data}, then C{data1}
    to C{data15} as needed), and the blob's C{size}.  A node that lacks it asks
    its peers for a client (one hop).
    """

    commandName = b"FETCH_BLOB"
    arguments = [(b"sha256", amp.Unicode()), (b"offset", amp.Integer()), (b"limit", amp.Integer())]
    response = [
        (b"data", amp.String()),
        *[(name.encode("ascii"), amp.String(optional=True)) for name in EXTRA_PIECES],
        (b"size", amp.Integer()),
    ]
    errors = _errors(NO_SUCH_BLOB=NoSuchBlob)


def pieces_of(values: dict[str, bytes | None]) -> list[bytes]:
    """
    The pieces of a PUT_BLOB request or a FETCH_BLOB answer, in order:
    C{data}, then C{data1}, C{data2}... as far as they go.  C{ValueError}
    for a gap (C{data2} without C{data1}, say).
    """
    pieces = [values["data"] or b""]
    names = iter(EXTRA_PIECES)
    for name in names:
        piece = values.get(name)
        if piece is None:
            gap = next((later for later in names if values.get(later) is not None), None)
            if gap is not None:
                raise ValueError(f"'{gap}' comes without '{name}'")
            break
        pieces.append(piece)
    return pieces


# -- Files replicated with a job's log (issue 16, part "file replicas") ---------------


class HoldBlobs(amp.Command):
    """
    HOLD_BLOBS, from a job's master to a member of the job's replica set,
    on a peer connection after the handshake: keep these blobs (C{digests},
    a JSON list of at most 800 SHA-256 digests, pushed first with PUT_BLOB)
    for job C{job} until this node's replicated log of the job is pruned.
    The answer C{held} lists those it holds now, in the order asked, each
    once; those it lacks are left out (not held).  See docs/protocol.rst,
    "Files".
    """

    commandName = b"HOLD_BLOBS"
    arguments = [(b"job", amp.Unicode()), (b"digests", JSON())]
    response = [(b"held", JSON())]
    errors = _errors(TRANSFER_REFUSED=TransferRefused)
