"""
Fuzzing what a node reads from strangers: discovery datagrams, their seals,
and the boxes every AMP responder answers.

The properties are those of C{docs/security.rst} and C{docs/protocol.rst}:
bad input is refused with a declared, named reason, never with another
exception; an AMP box is answered with a normal answer or one of its
command's declared error codes (never AMP's C{UNKNOWN}, which means an
undeclared exception and drops the connection); nothing critical is logged;
and the node goes on working afterwards (a real job still completes).

  - C{DecodeFuzzTests}, C{SealerFuzzTests}, C{DiscoveryFuzzTests}: the
    datagram path, piece by piece;
  - C{ResponderFuzzTests}, C{CommandFuzzTests}: random boxes (every command,
    random names; missing, wrong-typed, truncated and 64 KiB values) to a
    real node, with and without a key, in every state of a connection;
  - C{SweepTests}: not random: every string of a valid box of each command,
    swapped in turn for a few nasty ones;
  - C{DiscoveryNodeFuzzTests}: random datagrams to a real node;
  - C{RegressionTests}: the exact inputs found to break a node.

Hypothesis runs derandomized (the same examples on every run, so CI is
reproducible), with few examples and no shrinking, so that the whole file
takes seconds.  Nothing here touches a socket or the real clock: nodes live
on a L{FakeNetwork}, and a stranger's connection is a L{StringTransport}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import LoopingCall
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import auth, commands, datagram
from p2pexec.auth import ChallengeResponse, DatagramSealer
from p2pexec.discovery import DiscoveryProtocol
from p2pexec.model import NodeInfo
from p2pexec.node import Node, NodeConfig, create_node
from p2pexec.peer import PeerProtocol
from p2pexec.testing.network import FakeHost, FakeNetwork
from p2pexec.testing.runner import FakeRunner


def fuzz(examples: int) -> Callable[[Any], Any]:
    """
    Hypothesis settings of this file: C{examples} derandomized examples, no
    deadline, no database, and no shrinking (a failure is reported as
    found; shrinking 64 KiB boxes through whole nodes takes long, and the
    C{SweepTests} and C{RegressionTests} give minimal inputs).
    """
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


KEY = bytes(range(32))
"""The cluster key of the keyed tests."""

OTHER_KEY = bytes(range(1, 33))
"""A key of another cluster: what a rogue node holds."""

GROUP = ("239.255.7.7", 17777)
"""The group of the bare discovery protocols (on a FakeNetwork: nothing is sent)."""

DATAGRAM_REASONS = {"too-large", "not-json", "not-p2pexec", "version", "bad-type", "bad-field"}
"""Every reason L{datagram.DatagramError} may give (its docstring's list)."""

SEAL_REASONS = {"unsealed", "forged", "stale", "replayed"}
"""Every reason L{auth.DatagramError} may give."""

DISCOVERY_REASONS = DATAGRAM_REASONS | SEAL_REASONS | {"foreign-cluster"}
"""Every reason a L{DiscoveryProtocol} counts a dropped datagram under."""


# -- values ---------------------------------------------------------------------

NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\U0001f600",
    "é" * 40,
    "x" * 300,
    "../../etc/passwd",
    "{name}",
    "%s%s%n",
    "\n\r\t",
]
"""Strings that have broken parsers elsewhere: lone surrogates, NULs, formats, long ones."""

HUGE_NUMBERS = [2**63, -(2**63) - 1, 2**64, 10**100, -(10**100), 1e308, -1e308, 5e-324]

nasty_text = st.one_of(
    st.sampled_from(NASTY_STRINGS),
    st.text(st.sampled_from("a.-_:\x00\ud800\udfffé\U0001f600 /{}\n"), min_size=1, max_size=12),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from(HUGE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    nasty_text,
)

FIELD_NAMES = [
    "proto",
    "v",
    "type",
    "node",
    "name",
    "instance",
    "host",
    "port",
    "capabilities",
    "slots",
    "cluster",
    "version",
    "age",
    "id",
    "kind",
    "command",
    "shell",
    "cwd",
    "env",
    "timeout",
    "retries",
    "attempt",
    "status",
    "exit_code",
    "duration",
    "stdout",
    "stderr",
    "error",
    "task",
    "defaults",
]

json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8)), children, max_size=4),
    ),
    max_leaves=12,
)


def to_json(value: Any, ascii_only: bool = True) -> bytes:
    """
    C{value} as JSON bytes.  Lone surrogates are escaped (C{"\\ud800"}, which
    is valid JSON), or with C{ascii_only} false written as the (invalid
    UTF-8) bytes they would take.
    """
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def deep(depth: int, opener: str = "[") -> bytes:
    """JSON nested C{depth} levels deep (lists, or objects)."""
    if opener == "{":
        return ('{"a":' * depth + "1" + "}" * depth).encode()
    return ("[" * depth + "]" * depth).encode()


def info_wire(name: str = "x1", **changes: Any) -> dict[str, Any]:
    """A valid node description, in wire form, with some fields changed."""
    wire = NodeInfo(
        name=name, instance="i-" + name, host="127.0.0.9", port=4242, capabilities=("w",), slots=1, cluster="default"
    ).to_wire()
    wire.update(changes)
    return wire


def valid_datagram_body(name: str = "x1", kind: str = "HELLO") -> dict[str, Any]:
    """A valid discovery datagram, decoded."""
    return {"proto": datagram.MAGIC, "v": 1, "type": kind, "node": info_wire(name)}


@st.composite
def mutated_documents(draw: Any, base: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """
    A valid document (C{base()}) with a few of its fields, at the top level
    or one level down, replaced by a nasty string or arbitrary JSON,
    removed, or joined by an unknown one; sometimes left valid.
    """
    document = base()
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        target = document
        nested = sorted(k for k, v in document.items() if isinstance(v, dict))
        if nested and draw(st.booleans()):
            target = document[draw(st.sampled_from(nested))]
        action = draw(st.sampled_from(["poison", "poison", "poison", "replace", "replace", "remove", "add"]))
        strings = sorted(k for k, v in target.items() if isinstance(v, str))
        if action == "poison" and strings:
            target[draw(st.sampled_from(strings))] = draw(nasty_text)
        elif action == "remove" and target:
            target.pop(draw(st.sampled_from(sorted(target))), None)
        elif action == "add":
            target[draw(st.sampled_from(FIELD_NAMES + ["unknown"]))] = draw(json_values)
        elif target:
            target[draw(st.sampled_from(sorted(target)))] = draw(json_values)
    return document


@st.composite
def datagram_bytes(draw: Any) -> bytes:
    """Bytes that a discovery socket might receive: garbage, truncations, mutated JSON, deep nesting."""
    valid = to_json(
        valid_datagram_body(draw(st.sampled_from(["x1", "x2"])), draw(st.sampled_from(["HELLO", "DISCOVER"])))
    )
    choice = draw(st.sampled_from([0, 1, 2, 2, 2, 3, 4, 5]))
    if choice == 0:
        return draw(st.binary(max_size=1400))
    if choice == 1:
        return valid[: draw(st.integers(min_value=0, max_value=len(valid)))]
    if choice == 2:
        return to_json(
            draw(mutated_documents(valid_datagram_body)), ascii_only=draw(st.sampled_from([True, True, False]))
        )
    if choice == 3:
        return deep(draw(st.integers(min_value=1, max_value=700)), draw(st.sampled_from(["[", "{"])))
    if choice == 4:
        return to_json(draw(json_values))
    # Bit flips in a valid one.
    data = bytearray(valid)
    for position in draw(st.lists(st.integers(min_value=0, max_value=len(data) * 8 - 1), min_size=1, max_size=3)):
        data[position // 8] ^= 1 << (position % 8)
    return bytes(data)


# -- 1. datagram.decode ----------------------------------------------------------


class DecodeFuzzTests(SynchronousTestCase):
    """L{datagram.decode} on bytes from anyone."""

    def assertDecodesOrRefuses(self, data: bytes) -> datagram.Datagram | None:
        """
        C{data} decodes to a valid L{datagram.Datagram} (which encodes and
        decodes back to itself) or raises L{datagram.DatagramError} with a
        documented reason; any other exception fails the test.
        """
        try:
            decoded = datagram.decode(data)
        except datagram.DatagramError as e:
            self.assertIn(e.reason, DATAGRAM_REASONS, f"undocumented reason for {data!r}")
            self.assertTrue(e.detail)
            return None
        self.assertIsInstance(decoded, datagram.Datagram)
        self.assertIn(decoded.type, datagram.DATAGRAM_TYPES)
        self.assertIsInstance(decoded.node, NodeInfo)
        self.assertEqual(datagram.decode(datagram.encode(decoded)), decoded)
        try:
            commands.encode_json(decoded.node.to_wire())
        except UnicodeEncodeError as e:
            self.fail(f"{short(data)} was accepted, but the node it describes cannot be written as UTF-8: {e}")
        return decoded

    @fuzz(150)
    @given(datagram_bytes())
    def test_any_bytes(self, data: bytes) -> None:
        """Garbage, truncations, bit flips, wrong types and deep nesting: a Datagram or a DatagramError."""
        self.assertDecodesOrRefuses(data)

    @fuzz(30)
    @given(st.integers(min_value=0, max_value=10_000), st.sampled_from(["host", "instance", "name", "cluster"]))
    def test_long_strings(self, length: int, field: str) -> None:
        """A field of any length: refused as too large or bad, or accepted when it is valid."""
        body = valid_datagram_body()
        body["node"][field] = "a" * length
        self.assertDecodesOrRefuses(to_json(body))

    def test_valid_one_decodes(self) -> None:
        """The checker is not vacuous: a valid datagram decodes, and one nested 600 deep is refused."""
        self.assertIsNotNone(self.assertDecodesOrRefuses(to_json(valid_datagram_body())))
        self.assertIsNone(self.assertDecodesOrRefuses(deep(600)))


# -- 2. DatagramSealer.open ------------------------------------------------------


class _Time:
    """A settable clock for a sealer."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SealerFuzzTests(SynchronousTestCase):
    """L{DatagramSealer.open} on sealed, forged, altered, old and replayed datagrams."""

    def setUp(self) -> None:
        self.counter = 0
        self.fresh()

    def fresh(self) -> None:
        """A new clock, sender and receiver (Hypothesis runs every example of a test in one C{setUp})."""
        self.time = _Time()
        self.sender = DatagramSealer(KEY, self.time, random_bytes=self._nonce)
        self.receiver = DatagramSealer(KEY, self.time)

    def _nonce(self, size: int) -> bytes:
        self.counter += 1
        return self.counter.to_bytes(size, "big")

    def assertRefused(self, data: bytes, *reasons: str) -> auth.DatagramError:
        """C{open} raises L{auth.DatagramError} with one of C{reasons} (any documented one if none given)."""
        try:
            body = self.receiver.open(data)
        except auth.DatagramError as e:
            self.assertIn(e.reason, set(reasons) or SEAL_REASONS, f"reason for {data!r}")
            return e
        self.fail(f"{data!r} opened, to {body!r}")

    @fuzz(100)
    @given(st.binary(max_size=1400))
    def test_random_bytes(self, data: bytes) -> None:
        """Random bytes never open: unsealed or forged."""
        self.assertRefused(data, "unsealed", "forged")

    @fuzz(60)
    @given(st.binary(max_size=200), st.data())
    def test_truncated(self, body: bytes, data: Any) -> None:
        """Any strict prefix of a sealed datagram, or the seal alone cut short, is refused."""
        sealed = self.sender.seal(body)
        cut = data.draw(st.integers(min_value=0, max_value=len(sealed) - 1))
        self.assertRefused(sealed[:cut], "unsealed", "forged")

    @fuzz(100)
    @given(st.binary(max_size=200), st.data())
    def test_bit_flips(self, body: bytes, data: Any) -> None:
        """Flipping any bits of a sealed datagram (body, time, nonce, HMAC or mark) makes it refused."""
        sealed = bytearray(self.sender.seal(body))
        positions = data.draw(
            st.lists(st.integers(min_value=0, max_value=len(sealed) * 8 - 1), min_size=1, max_size=4, unique=True)
        )
        for position in positions:
            sealed[position // 8] ^= 1 << (position % 8)
        self.assertRefused(bytes(sealed), "unsealed", "forged")

    @fuzz(40)
    @given(st.binary(max_size=200))
    def test_wrong_key(self, body: bytes) -> None:
        """A datagram sealed with another cluster's key is forged."""
        rogue = DatagramSealer(OTHER_KEY, self.time)
        self.assertRefused(rogue.seal(body), "forged")

    @fuzz(60)
    @given(st.binary(max_size=100), st.floats(min_value=-1e7, max_value=1e7, allow_nan=False))
    def test_time_window(self, body: bytes, offset: float) -> None:
        """
        A datagram sealed C{offset} seconds away from the receiver's clock
        opens if that is within the window (clear of its edge by 1 ms of
        rounding) and is stale otherwise.
        """
        sender = DatagramSealer(KEY, lambda: self.time.now + offset, random_bytes=self._nonce)
        sealed = sender.seal(body)
        if abs(offset) > auth.DATAGRAM_WINDOW + 0.002:
            self.assertRefused(sealed, "stale")
        elif abs(offset) < auth.DATAGRAM_WINDOW - 0.002:
            self.assertEqual(self.receiver.open(sealed), body)

    @fuzz(40)
    @given(st.binary(max_size=200), st.floats(min_value=0, max_value=auth.DATAGRAM_WINDOW - 0.01))
    def test_opens_once(self, body: bytes, later: float) -> None:
        """A valid datagram opens to its body once; played again it is replayed, and later stale."""
        self.fresh()
        sealed = self.sender.seal(body)
        self.assertEqual(self.receiver.open(sealed), body)
        self.time.now += later
        self.assertRefused(sealed, "replayed")
        self.time.now += auth.DATAGRAM_WINDOW + 0.01
        self.assertRefused(sealed, "stale")

    @fuzz(40)
    @given(st.binary(min_size=0, max_size=64), st.integers(min_value=0, max_value=2**64 - 1))
    def test_forged_trailer(self, body: bytes, millis: int) -> None:
        """A hand-made trailer with any time and a made-up HMAC is forged (the time is not even looked at)."""
        data = body + auth.SEAL_MARK + auth.TRAILER.pack(millis, b"n" * 16, b"m" * 32)
        self.assertRefused(data, "forged")


# -- 3. DiscoveryProtocol.datagramReceived ----------------------------------------


class _Discovery:
    """One discovery protocol on a fake network, keyed or not, counting what it hands on."""

    def __init__(self, key: bytes | None) -> None:
        self.network = FakeNetwork()
        self.network.advance(1_800_000_000.0)
        self.info = NodeInfo(
            name="d1", instance="i-d1", host="127.0.0.1", port=4000, capabilities=("w",), slots=1, cluster="default"
        )
        self.peers: list[NodeInfo] = []
        self.sealer = DatagramSealer(key, self.network.seconds) if key is not None else None
        self.protocol = DiscoveryProtocol(
            lambda: self.info,
            GROUP,
            "127.0.0.1",
            self.network,
            on_peer=self.peers.append,
            random_fraction=lambda: 0.5,
            sealer=self.sealer,
        )
        self.network.listenMulticast(GROUP[1], self.protocol, listenMultiple=True)


class DiscoveryFuzzTests(SynchronousTestCase):
    """L{DiscoveryProtocol.datagramReceived} with arbitrary bytes, with and without a key."""

    def check(self, harness: _Discovery, data: bytes) -> None:
        """
        Deliver C{data}: it does not raise, and it is either handed on as a
        peer (and counted as received) or counted as rejected under exactly
        one documented reason.
        """
        before_rejected = dict(harness.protocol.rejected)
        before_received = harness.protocol.received
        before_peers = len(harness.peers)
        harness.protocol.datagramReceived(data, ("127.0.0.1", 5555))
        after = harness.protocol.rejected
        added = {reason: after[reason] - before_rejected.get(reason, 0) for reason in after}
        added = {reason: count for reason, count in added.items() if count}
        received = harness.protocol.received - before_received
        handed_on = len(harness.peers) - before_peers
        self.assertLessEqual(set(added), DISCOVERY_REASONS, f"undocumented reason for {data!r}")
        if added:
            self.assertEqual((sum(added.values()), received, handed_on), (1, 0, 0), repr(data))
        else:
            self.assertEqual((received, handed_on), (1, 1), f"{data!r} was neither counted nor handed on")

    @fuzz(100)
    @given(datagram_bytes())
    def test_unkeyed(self, data: bytes) -> None:
        """Without a key: every datagram is a peer or a counted rejection; nothing raises."""
        self.check(_Discovery(None), data)

    @fuzz(100)
    @given(datagram_bytes(), st.sampled_from(["raw", "sealed", "rogue", "sealed-mutated"]), st.data())
    def test_keyed(self, data: bytes, how: str, draw: Any) -> None:
        """
        With a key: raw bytes, bytes sealed with the key (then perhaps bit
        flipped), and bytes sealed with another key; nothing raises, every
        one is counted, and nothing unsealed or forged is handed on.
        """
        harness = _Discovery(KEY)
        if how in ("sealed", "sealed-mutated"):
            data = DatagramSealer(KEY, harness.network.seconds).seal(data)
        elif how == "rogue":
            data = DatagramSealer(OTHER_KEY, harness.network.seconds).seal(data)
        if how == "sealed-mutated":
            flipped = bytearray(data)
            position = draw.draw(st.integers(min_value=0, max_value=len(flipped) * 8 - 1))
            flipped[position // 8] ^= 1 << (position % 8)
            data = bytes(flipped)
        self.check(harness, data)
        if how in ("raw", "rogue", "sealed-mutated"):
            self.assertEqual(harness.peers, [])

    def test_counts_by_reason(self) -> None:
        """Each kind of bad datagram is counted under its own reason; a good one is handed on."""
        harness = _Discovery(KEY)
        sealer = DatagramSealer(KEY, harness.network.seconds)
        good = sealer.seal(to_json(valid_datagram_body("x1")))
        inputs = [
            b"hello",
            to_json(valid_datagram_body("x2")),
            DatagramSealer(OTHER_KEY, harness.network.seconds).seal(to_json(valid_datagram_body("x3"))),
            good,
            good,
            sealer.seal(b"not json"),
            b"x" * 2000,
        ]
        for data in inputs:
            self.check(harness, data)
        self.assertEqual(
            harness.protocol.rejected,
            {"unsealed": 2, "forged": 1, "replayed": 1, "not-json": 1, "too-large": 1},
        )
        self.assertEqual([peer.name for peer in harness.peers], ["x1"])


# -- 4. AMP responders --------------------------------------------------------------

RESPONDERS: dict[bytes, type[amp.Command]] = {
    name: command for name, (command, _) in PeerProtocol._commandDispatch.items()
}
"""Every command a L{PeerProtocol} answers, by wire name: those of L{p2pexec.commands}, and AMP's own StartTLS."""

UNHANDLED = b"UNHANDLED"
"""AMP's code for a command name nobody answers (the connection stays up)."""

AUTH_CODES = {b"AUTH_REQUIRED", b"AUTH_FAILED"}
"""Declared errors after which the node closes the connection on purpose."""

STRANGER = "fz1"
"""The name the fuzzing connection introduces itself with."""

JOB = b"$JOB"
"""Stands for the id of the job the fuzzed node is master of (the strategies cannot know it)."""


def command_names() -> list[bytes]:
    """The wire name of every command of L{p2pexec.commands}, which must all have a responder."""
    names = sorted(
        value.commandName
        for value in vars(commands).values()
        if isinstance(value, type) and issubclass(value, amp.Command) and value is not amp.Command
    )
    return names


def lists_of(base: Callable[[], dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """JSON lists of (mostly valid, some mutated) copies of C{base()}."""
    return st.lists(mutated_documents(base), max_size=4).map(to_json)


def task_wire() -> dict[str, Any]:
    """An assigned task, as INSTRUCTION_ASSIGNMENT carries it."""
    return {"id": "t1", "kind": "w", "attempt": 1, "command": ["true"], "env": {"A": "b"}, "cwd": "/tmp"}


def result_wire() -> dict[str, Any]:
    """A task result, as EXECUTION_CONFIRMATION carries it."""
    return {"id": "t1", "attempt": 1, "status": "succeeded", "node": STRANGER, "duration": 0.1, "stdout": "x"}


def submitted_wire() -> dict[str, Any]:
    """A submitted task (a job file's task object), as SUBMIT_JOB carries it."""
    return {"id": "s1", "kind": "w", "command": ["true"], "env": {"A": "b"}, "timeout": 5}


PLAUSIBLE: dict[bytes, st.SearchStrategy[bytes]] = {
    b"peers": lists_of(lambda: info_wire("x1", age=1.0)),
    b"node": mutated_documents(lambda: info_wire(STRANGER, capabilities=[])).map(to_json),
    b"tasks": st.one_of(
        lists_of(task_wire),
        lists_of(lambda: {"id": "t1", "attempt": 1}),
        lists_of(submitted_wire),
    ),
    b"results": lists_of(result_wire),
    b"defaults": st.one_of(
        st.just(b"null"), mutated_documents(lambda: {"kind": "w", "timeout": 5, "env": {"A": "b"}}).map(to_json)
    ),
    b"job": st.sampled_from([JOB, JOB, b"j", b"", b"\xed\xa0\x80"]),
    b"master": st.sampled_from([STRANGER.encode(), b"m1", b""]),
    b"master_instance": st.sampled_from([b"i-" + STRANGER.encode(), b"x"]),
    b"cluster": st.sampled_from([b"default", b"other", b""]),
    b"name": st.sampled_from([STRANGER.encode(), b"m1", b"w1", b"bad name", b""]),
    b"instance": st.sampled_from([b"i-" + STRANGER.encode(), b"i-other", b""]),
    b"nonce": st.binary(min_size=0, max_size=40),
    b"proof": st.binary(min_size=0, max_size=40),
    b"upload": st.sampled_from([b"", b"nope", b"00000000-1"]),
}
"""For each argument name, values close to valid ones (placeholders allowed)."""


def by_type(argument: amp.Argument) -> st.SearchStrategy[bytes]:
    """Values of the right AMP type (or almost), for any argument."""
    if isinstance(argument, commands.JSON):
        return st.one_of(json_values.map(to_json), json_values.map(lambda v: to_json(v, ascii_only=False)))
    if isinstance(argument, amp.Integer):
        return st.one_of(
            st.integers().map(lambda n: str(n).encode()),
            st.sampled_from(
                [b"-1", b"0", b"1", b"100000", b"99999999999999999999999", b"1" * 5000, b"1.5", b"nan", b" 1 "]
            ),
        )
    if isinstance(argument, amp.Float):
        return st.one_of(
            st.floats().map(lambda f: repr(f).encode()), st.sampled_from([b"nan", b"-inf", b"1e400", b"x"])
        )
    if isinstance(argument, amp.Boolean):
        return st.sampled_from([b"True", b"False", b"true", b"1", b""])
    if isinstance(argument, amp.Unicode):
        return st.one_of(
            nasty_text.map(lambda s: s.encode("utf-8", "surrogatepass")), st.text(max_size=30).map(str.encode)
        )
    return st.binary(max_size=64)


def huge_values() -> st.SearchStrategy[bytes]:
    """Values near AMP's 65,535-byte limit: long JSON lists, deep nesting, non-UTF-8 bytes."""
    size = st.integers(min_value=60_000, max_value=65_535)
    return st.one_of(
        size.map(lambda n: b"[" + b'"x",' * ((n - 6) // 4) + b'"x"]'),
        size.map(lambda n: deep(n // 2)),
        size.map(lambda n: b"\xff" * n),
        size.map(lambda n: b"1" * n),
        st.just(to_json([info_wire(f"h{i}", host="h" * 200) for i in range(180)])),
    )


def value_strategy(key: bytes, argument: amp.Argument) -> st.SearchStrategy[bytes]:
    """Plausible, wrong-typed, truncated, random and huge values for one argument."""
    plausible = PLAUSIBLE.get(key, by_type(argument))
    return st.one_of(
        plausible,
        plausible,
        by_type(argument),
        plausible.flatmap(lambda value: st.integers(min_value=0, max_value=len(value)).map(lambda n: value[:n])),
        st.binary(max_size=100),
        huge_values(),
    )


@st.composite
def boxes(draw: Any, only: bytes | None = None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """
    A command box: command C{only}, or a known command (most often) or a
    random name, with each of its arguments present (fuzzed) or missing,
    and perhaps an extra key.
    """
    known = sorted(RESPONDERS)
    if only is not None:
        name = only
    else:
        name = draw(st.one_of(st.sampled_from(known), st.sampled_from(known), st.binary(min_size=1, max_size=40)))
    pairs: list[tuple[bytes, bytes]] = []
    command = RESPONDERS.get(name)
    for key, argument in command.arguments if command is not None else []:
        if draw(st.integers(min_value=0, max_value=11)) == 0:
            continue
        pairs.append((key, draw(value_strategy(key, argument))))
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        key = draw(st.binary(min_size=1, max_size=20).filter(lambda k: not k.startswith(b"_")))
        pairs.append((key, draw(st.binary(max_size=30))))
    return name, pairs


def frame(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """One AMP box on the wire (keys up to 255 bytes, values up to 65,535)."""
    data = b""
    for key, value in pairs:
        data += len(key).to_bytes(2, "big") + key + len(value).to_bytes(2, "big") + value
    return data + b"\x00\x00"


def unframe(data: bytes) -> list[dict[bytes, bytes]]:
    """The complete boxes in C{data}."""
    found: list[dict[bytes, bytes]] = []
    box: dict[bytes, bytes] = {}
    at = 0
    while at + 2 <= len(data):
        length = int.from_bytes(data[at : at + 2], "big")
        at += 2
        if length == 0:
            found.append(box)
            box = {}
            continue
        key = data[at : at + length]
        at += length
        size = int.from_bytes(data[at : at + 2], "big")
        box[key] = data[at + 2 : at + 2 + size]
        at += 2 + size
    return found


class _TransportWithTLS(StringTransport):
    """A L{StringTransport} that records a switch to TLS (AMP's StartTLS asks for one) instead of failing."""

    tls_started: Any = None

    def startTLS(self, options: Any) -> None:
        """Remember the TLS options the protocol switched to."""
        self.tls_started = options


class _Stranger:
    """
    One connection to a node from the outside, over a L{StringTransport}
    (built by the node's own listening factory): it sends boxes and reads
    the node's answers to them.
    """

    def __init__(self, target: _FuzzedNode) -> None:
        self.target = target
        peer = IPv4Address("TCP", "127.0.0.9", 40000)
        factory = target.network.server_factory(target.node.config.interface, target.node.config.port)
        self.protocol: PeerProtocol = factory.buildProtocol(peer)
        self.transport = _TransportWithTLS(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 10001))
        self.protocol.makeConnection(self.transport)
        self._tags = iter(range(1, 10**9))
        self.lost = False

    def send(self, data: bytes) -> list[dict[bytes, bytes]]:
        """Deliver C{data} (which must not raise), let the node react, and return every box it wrote."""
        self.transport.clear()
        self.protocol.dataReceived(data)
        self.target.network.flush()
        written = unframe(self.transport.value())
        if self.transport.disconnecting:
            self.close()
        return written

    def ask(self, name: bytes, pairs: list[tuple[bytes, bytes]]) -> dict[bytes, bytes] | None:
        """Send one command box with a new C{_ask} tag; return the node's answer to it, if any."""
        tag = str(next(self._tags)).encode()
        pairs = [(key, self.target.job_id.encode() if value == JOB else value) for key, value in pairs]
        written = self.send(frame([(b"_command", name), (b"_ask", tag)] + pairs))
        answers = [box for box in written if box.get(b"_answer") == tag or box.get(b"_error") == tag]
        return answers[0] if answers else None

    def call(self, command: type[amp.Command], **arguments: Any) -> dict[bytes, bytes]:
        """Send a well-formed command; return its answer box, which must be a normal answer."""
        pairs = [(key, argument.toString(arguments[key.decode()])) for key, argument in command.arguments]
        answer = self.ask(command.commandName, pairs)
        if answer is None or b"_answer" not in answer:
            raise AssertionError(f"{command.commandName!r} was not answered: {answer!r}")
        return answer

    def authenticate(self, key: bytes) -> None:
        """AUTHENTICATE and AUTH_PROOF with C{key}."""
        challenge = ChallengeResponse(key)
        mine = b"\x07" * 32
        answer = self.call(commands.Authenticate, nonce=mine)
        if not challenge.check("acceptor", mine, answer[b"nonce"], answer[b"proof"]):
            raise AssertionError("the node's proof is wrong")
        self.call(commands.AuthProof, proof=challenge.proof("dialler", mine, answer[b"nonce"]))

    def introduce(self, handshake: bool) -> None:
        """CONNECT_REQUEST (and HANDSHAKE) as node L{STRANGER}, which runs nothing."""
        self.call(commands.ConnectRequest, cluster="default", name=STRANGER, instance="i-" + STRANGER, version=1)
        if handshake:
            self.call(commands.Handshake, node=info_wire(STRANGER, capabilities=[]))

    def close(self) -> None:
        """The connection ends (the stranger hangs up, or the node closed it)."""
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
            self.target.network.flush()


class _FuzzedNode:
    """
    A real L{Node} C{m1} on a L{FakeNetwork}, keyed or not, connected to its
    worker C{w1}; both run kind C{w}.  C{m1} is the master of a job of kind
    C{z}, which nobody runs, so that commands naming a job have one.
    """

    def __init__(self, key: bytes | None) -> None:
        self.network = FakeNetwork()
        self.key = key
        self.host = self.network.host("127.0.0.1")
        self.node = self._start("m1", self.host)
        self.worker = self._start("w1", self.network.host("127.0.0.2"))
        self.network.run_until(lambda: self.node.peers.is_connected("w1"), limit=30)
        submitted = self.node.submit([{"id": "waiting", "kind": "z"}])
        self.network.flush()
        self.job_id: str = submitted.result
        # The node's periodic tasks (gossip, peer expiry, liveness checks), as
        # its host's clock sees them: each is due again as long as it runs.
        self.periodic = [f for f in self.host.scheduled() if isinstance(f, LoopingCall)]
        if len(self.periodic) < 3:
            raise AssertionError(f"m1 runs only {len(self.periodic)} periodic task(s)")

    def stopped_periodic_tasks(self) -> list[str]:
        """The names of the node's periodic tasks that no longer run (one died of an error, say)."""
        return [loop.f.__name__ for loop in self.periodic if not loop.running]

    def _start(self, name: str, host: FakeHost) -> Node:
        config = NodeConfig(
            name=name, interface=host.address, port=10001, capabilities=frozenset({"w"}), slots=2, key=self.key
        )
        node = create_node(config, host, FakeRunner(host, name, duration=0.1))
        node.start()
        return node

    def stranger(self, state: str) -> _Stranger:
        """
        A new connection, brought to C{state}: C{fresh}, C{challenged} (it
        sent AUTHENTICATE), C{authenticated}, C{connected} (CONNECT_REQUEST
        answered) or C{handshaken}.
        """
        stranger = _Stranger(self)
        if state == "challenged":
            stranger.call(commands.Authenticate, nonce=b"\x07" * 32)
        elif state != "fresh" and self.key is not None:
            stranger.authenticate(self.key)
        if state in ("connected", "handshaken"):
            stranger.introduce(handshake=state == "handshaken")
        return stranger

    def assertUsable(self, tasks: int = 4) -> None:
        """
        The node still works: its periodic tasks run, it still has its
        worker, and a job of C{tasks} tasks of kind w finishes, all of them
        succeeded.

        @raise AssertionError: saying what does not work.
        """
        stopped = self.stopped_periodic_tasks()
        if stopped:
            raise AssertionError(f"periodic task(s) {', '.join(stopped)} stopped")
        submitted = self.node.submit([{"id": f"check{i}", "kind": "w", "command": ["true"]} for i in range(tasks)])
        self.network.run_until(lambda: submitted.called, limit=10)
        job = self.node.master.jobs[submitted.result]
        self.network.run_until(lambda: job.done, limit=30)
        if (job.succeeded, job.failed) != (tasks, 0):
            raise AssertionError(f"the check job ended {job.succeeded} succeeded, {job.failed} failed")
        if not self.node.peers.is_connected("w1"):
            raise AssertionError("m1 lost its worker w1")


def expected_codes(name: bytes, authenticated: bool) -> set[bytes]:
    """The error codes that may answer a box called C{name}: those its command declares."""
    command = RESPONDERS.get(name)
    if command is None:
        return {UNHANDLED}
    if command is amp.StartTLS:
        # AMP's own command, not part of the p2pexec protocol: the node has
        # no responder for it, authenticated or not, so it is UNHANDLED like
        # any unknown command (TLS_ERROR is AMP's own refusal, for a node
        # that kept the inherited responder without pyOpenSSL).
        return {b"TLS_ERROR", UNHANDLED}
    if not authenticated and name not in (commands.Authenticate.commandName, commands.AuthProof.commandName):
        return {b"AUTH_REQUIRED"}
    return set(command.errors.values())


def short(value: Any, limit: int = 400) -> str:
    """C{repr(value)}, cut to C{limit} characters (fuzzed values can be 64 KiB long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def critical_events(events: list[dict[str, Any]]) -> list[str]:
    """
    The log events that should never follow a stranger's input: critical
    ones (an unhandled error, a periodic task that died), and lines that
    cannot be written as UTF-8 (a log file observer fails on them, and the
    line is lost).
    """
    from twisted.logger import LogLevel, formatEvent

    found = []
    for event in events:
        text = formatEvent(event)
        if text.startswith("Temporarily disabling observer"):
            # A log observer (trial's, say) failed on the line before,
            # which is reported as unwritable already.
            continue
        if event.get("log_level") == LogLevel.critical:
            found.append(text)
        else:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                found.append(f"unwritable log line: {text!r}")
    return found


def assert_no_problems(testcase: SynchronousTestCase, problems: list[str]) -> None:
    """Fail C{testcase} listing C{problems}, if there are any."""
    if problems:
        testcase.fail(f"{len(problems)} problem(s):\n" + "\n".join(problems))


def check_exchange(
    key: bytes | None,
    state: str,
    sent: list[tuple[bytes, list[tuple[bytes, bytes]]]],
    target: _FuzzedNode | None = None,
) -> list[str]:
    """
    Send C{sent} to a fresh L{_FuzzedNode} (or C{target}) on one connection in C{state},
    and return what went wrong (nothing, if all is well): each box is
    answered with a normal answer or one of its declared errors (never
    C{UNKNOWN}, never silence); C{dataReceived} never raises; the
    connection stays up unless the refusal is about the key; nothing
    critical or unwritable is logged; and afterwards the node still runs a
    real job.
    """
    problems: list[str] = []
    if target is None:
        target = _FuzzedNode(key)
    with capturedLogs() as events:
        stranger = target.stranger(state)
        for name, pairs in sent:
            if stranger.lost:
                break
            authenticated = stranger.protocol.authenticated
            where = f"{name.decode('ascii', 'replace')} with {short(pairs, 160)} ({state})"
            try:
                answer = stranger.ask(name, pairs)
            except Exception as e:
                problems.append(f"{where}: dataReceived raised {type(e).__name__}: {e}")
                break
            if answer is None and not name.isascii() and stranger.lost:
                # AMP's string-based dispatch cannot even look a non-ASCII
                # name up: the box is taken for garbage, and the connection
                # dropped with one line.
                break
            if answer is None:
                problems.append(f"{where}: no answer; connection {'dropped' if stranger.lost else 'open'}")
                break
            if b"_answer" in answer:
                continue
            code = answer[b"_error_code"]
            if code not in expected_codes(name, authenticated):
                problems.append(
                    f"{where}: answered {code.decode('ascii', 'replace')} ({short(answer.get(b'_error_description'), 120)})"
                )
            elif code not in AUTH_CODES and stranger.lost:
                problems.append(f"{where}: refused with {code.decode()}, and the connection closed")
        stranger.close()
        try:
            target.assertUsable()
        except Exception as e:
            problems.append(f"after {short(sent, 160)} ({state}): the node is not usable: {type(e).__name__}: {e}")
    problems.extend(
        f"after {short(sent, 160)} ({state}): logged {short(line, 200)}" for line in critical_events(events)
    )
    return problems


class ResponderFuzzTests(SynchronousTestCase):
    """Every responder of L{PeerProtocol}, on a real node, fed fuzzed boxes in every state of a connection."""

    def test_every_command_has_a_responder(self) -> None:
        """Every command of L{p2pexec.commands} is answered by L{PeerProtocol}, so the fuzzing reaches it."""
        self.assertEqual(sorted(set(command_names()) - set(RESPONDERS)), [])

    def test_checks_can_fail(self) -> None:
        """
        The checks are not vacuous: a valid box passes them, and a responder
        that raises an undeclared exception (answered UNKNOWN, connection
        dropped) is reported.
        """
        assert_no_problems(self, check_exchange(None, "fresh", [(b"LIST_JOBS", [])]))
        target = _FuzzedNode(None)
        target.node.views.jobs_status = lambda: 1 / 0  # type: ignore[method-assign]
        problems = check_exchange(None, "fresh", [(b"LIST_JOBS", [])], target=target)
        self.assertIn("answered UNKNOWN", problems[0])
        self.flushLoggedErrors(ZeroDivisionError)

    @fuzz(40)
    @given(
        st.sampled_from(["fresh", "connected", "handshaken", "handshaken"]), st.lists(boxes(), min_size=1, max_size=3)
    )
    def test_unkeyed_node(self, state: str, sent: list[tuple[bytes, list[tuple[bytes, bytes]]]]) -> None:
        """A node without a key, fuzzed on fresh, connected and handshaken connections."""
        assert_no_problems(self, check_exchange(None, state, sent))

    @fuzz(40)
    @given(
        st.sampled_from(["fresh", "challenged", "authenticated", "connected", "handshaken", "handshaken"]),
        st.lists(boxes(), min_size=1, max_size=3),
    )
    def test_keyed_node(self, state: str, sent: list[tuple[bytes, list[tuple[bytes, bytes]]]]) -> None:
        """A node with a key, fuzzed before and after authenticating, connecting and handshaking."""
        assert_no_problems(self, check_exchange(KEY, state, sent))

    @fuzz(30)
    @given(st.binary(min_size=1, max_size=300), st.sampled_from([None, KEY]))
    def test_arbitrary_bytes(self, data: bytes, key: bytes | None) -> None:
        """Bytes that are not AMP at all never raise out of C{dataReceived}; the node goes on working."""
        target = _FuzzedNode(key)
        with capturedLogs() as events:
            stranger = target.stranger("fresh")
            stranger.send(data)
            stranger.close()
            target.assertUsable()
        self.assertEqual(critical_events(events), [])


FOCUS: dict[bytes, tuple[bytes | None, str]] = {
    commands.ConnectRequest.commandName: (None, "fresh"),
    commands.Handshake.commandName: (None, "connected"),
    commands.Authenticate.commandName: (KEY, "fresh"),
    commands.AuthProof.commandName: (KEY, "challenged"),
}
"""Where a command is fuzzed alone: (key, state); the others on a handshaken connection without a key."""


def _one_command(name: bytes) -> Callable[[Any, Any], None]:
    """A test method fuzzing command C{name} alone, in the state where it does the most."""
    key, state = FOCUS.get(name, (None, "handshaken"))

    @fuzz(6)
    @given(st.lists(boxes(only=name), min_size=1, max_size=2))
    def test(self: SynchronousTestCase, sent: list[tuple[bytes, list[tuple[bytes, bytes]]]]) -> None:
        """Fuzzed boxes of this one command: each answered as declared, the node still usable (L{check_exchange})."""
        assert_no_problems(self, check_exchange(key, state, sent))

    test.__doc__ = (
        f"{name.decode()} alone, fuzzed on a {state} connection to a node {'with' if key else 'without'} a key."
    )
    return test


class CommandFuzzTests(SynchronousTestCase):
    """Each command of L{p2pexec.commands} fuzzed on its own (one test per command, added below)."""


for _name in command_names():
    setattr(CommandFuzzTests, "test_" + _name.decode().lower(), _one_command(_name))


# Every string a valid box holds, swapped in turn for each of these.

FILL = "<as long as the value allows>"

SWEEP_STRINGS = ["\ud800", "\x00", "", "{name}", FILL]
"""A lone surrogate, a NUL, nothing, a format, and C{x}s up to the 65,535 bytes one AMP value allows."""

JOB_ID = "$JOB"

TEMPLATES: dict[bytes, dict[str, Any]] = {
    b"CONNECT_REQUEST": {"cluster": "default", "name": STRANGER, "instance": "i-" + STRANGER, "version": 1},
    b"HANDSHAKE": {"node": info_wire(STRANGER, capabilities=["q"])},
    b"PEER_EXCHANGE": {"peers": [info_wire("x1", age=1.0)]},
    b"INSTRUCTION_ASSIGNMENT": {
        "job": "j1",
        "master": STRANGER,
        "master_instance": "i-" + STRANGER,
        "tasks": [task_wire()],
    },
    b"EXECUTION_CONFIRMATION": {"job": JOB_ID, "results": [result_wire()]},
    b"RESULT_QUERY": {"job": "j1", "tasks": [{"id": "t1", "attempt": 1}]},
    b"SUBMIT_JOB": {
        "tasks": [submitted_wire()],
        "defaults": {"kind": "w", "env": {"B": "c"}},
        "upload": "",
        "final": True,
    },
    b"JOB_STATUS": {"job": JOB_ID},
    b"JOB_TASKS": {"job": JOB_ID, "offset": 0, "limit": 10},
    b"CANCEL_JOB": {"job": JOB_ID},
    b"TASK_COMPLETE": {"job": "j1", "succeeded": 1, "failed": 0, "elapsed": 0.5},
    b"DISCONNECT_REQUEST": {"reason": "bye"},
    b"REPLICATE": {
        "job": JOB_ID,
        "ballot_epoch": 2,
        "ballot_node": STRANGER,
        "first_seq": 1,
        "records": [{"seq": 1, "kind": "result", "data": {"task": "t1"}}],
    },
    b"PROMISE": {"job": JOB_ID, "ballot_epoch": 2, "ballot_node": STRANGER, "after_seq": 0},
    b"JOB_LEADER": {"job": JOB_ID, "ballot_epoch": 2, "ballot_node": STRANGER, "master": STRANGER},
    b"HELD_TASKS": {"job": "j1", "epoch": 2},
}
"""A valid box of every command that carries strings (in the state L{FOCUS} gives it)."""


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where C{value} holds strings: the path to each string, and to each key of an object (as C{("key", k)})."""
    if isinstance(value, str):
        return [path]
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found.append(path + (("key", k),))
            found.extend(string_paths(v, path + (k,)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.extend(string_paths(v, path + (i,)))
    return found


def swapped(value: Any, path: tuple[Any, ...], new: str) -> Any:
    """A copy of C{value} with the string (or key) at C{path} replaced by C{new}."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(head, tuple):
        return {(new if k == head[1] else k): v for k, v in value.items()}
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[head] = swapped(value[head], rest, new)
    return copy


def encode_box(command: type[amp.Command], arguments: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The key-value pairs of a box of C{command}; strings may hold lone surrogates (JSON escapes them)."""
    pairs = []
    for key, argument in command.arguments:
        if argument.optional and key.decode() not in arguments:
            continue
        value = arguments[key.decode()]
        if isinstance(argument, commands.JSON):
            encoded = to_json(value)
        elif isinstance(argument, amp.Unicode):
            encoded = value.encode("utf-8", "surrogatepass")
        else:
            encoded = argument.toString(value)
        pairs.append((key, JOB if encoded == JOB_ID.encode() else encoded))
    return pairs


def sweep(name: bytes) -> list[str]:
    """Every string of command C{name}'s template swapped for each of L{SWEEP_STRINGS}; what went wrong."""
    command = RESPONDERS[name]
    key, state = FOCUS.get(name, (None, "handshaken"))
    template = TEMPLATES[name]
    problems = check_exchange(key, state, [(name, encode_box(command, template))])
    if problems:
        return [f"the valid template itself: {problem}" for problem in problems]
    paths = [path for argument, value in template.items() for path in string_paths(value, (argument,))]
    for path in paths:
        for nasty in SWEEP_STRINGS:
            if nasty == FILL:
                emptied = dict(encode_box(command, swapped(template, path, "")))
                nasty = "x" * (65_535 - len(emptied[path[0].encode()]))
            box = encode_box(command, swapped(template, path, nasty))
            problems.extend(check_exchange(key, state, [(name, box)]))
    return problems


def _swept(name: bytes) -> Callable[[Any], None]:
    """A test method running L{sweep} on C{name}."""

    def test(self: SynchronousTestCase) -> None:
        """Every string of this command's template, swapped for each of L{SWEEP_STRINGS}: no problem (see L{sweep})."""
        assert_no_problems(self, sweep(name))

    test.__doc__ = (
        f"Each string of a valid {name.decode()} box (values and keys), replaced in turn by a lone surrogate, "
        f"a NUL, an empty string, a format and as many characters as the value holds: answered as declared, "
        f"the node still usable."
    )
    return test


class SweepTests(SynchronousTestCase):
    """
    Not random: every string of a valid box of each command, swapped for
    each of L{SWEEP_STRINGS} (one test per command, added below).  The
    random fuzzing rarely lands one exact string in one exact field; this
    does, for all of them.
    """


for _name in TEMPLATES:
    setattr(SweepTests, "test_" + _name.decode().lower(), _swept(_name))
del _name


# -- 5. Discovery into a real node -----------------------------------------------------


def check_datagrams(sender: str, datagrams: list[bytes]) -> list[str]:
    """
    Multicast C{datagrams} to a fresh L{_FuzzedNode} from C{sender}
    (C{unkeyed}: the node has no key and they go as they are; C{member} or
    C{rogue}: the node has a key, and they are sealed with it or with
    another), let 6 seconds pass (a round of gossip), and return what
    went wrong: the node's peers cannot be described on the wire (as
    CLUSTER_STATUS and the HTTP API do), a rogue got into the peer table,
    something critical or unwritable was logged, or the node is not usable.
    """
    problems = []
    target = _FuzzedNode(None if sender == "unkeyed" else KEY)
    with capturedLogs() as events:
        for data in datagrams:
            if sender != "unkeyed":
                data = DatagramSealer(KEY if sender == "member" else OTHER_KEY, target.network.seconds).seal(data)
            target.network.inject_datagram(data, target.node.config.group)
        target.network.run(6.0)
        peers = target.node.peers_status()
        try:
            commands.encode_json(peers)
        except ValueError as e:
            problems.append(f"{short(datagrams, 200)} ({sender}): m1's peers cannot be described on the wire: {e}")
        if sender == "rogue" and sorted(peer["name"] for peer in peers) != ["m1", "w1"]:
            problems.append(f"{short(datagrams, 200)} ({sender}): a rogue is in m1's peer table: {short(peers)}")
        try:
            target.assertUsable()
        except Exception as e:
            problems.append(f"{short(datagrams, 200)} ({sender}): the node is not usable: {type(e).__name__}: {e}")
    problems.extend(
        f"{short(datagrams, 200)} ({sender}): logged {short(line, 200)}" for line in critical_events(events)
    )
    return problems


class DiscoveryNodeFuzzTests(SynchronousTestCase):
    """
    Fuzzed datagrams multicast to a real node (L{_FuzzedNode}): whatever it
    accepts into its peer table, it goes on gossiping, describing its peers
    and running jobs.
    """

    @fuzz(30)
    @given(st.lists(datagram_bytes(), min_size=1, max_size=3), st.sampled_from(["unkeyed", "member", "rogue"]))
    def test_node_stays_usable(self, datagrams: list[bytes], sender: str) -> None:
        """
        Without a key (anyone may send), or with one: datagrams sealed with
        the key (a member's) or with another key (a rogue's).
        """
        assert_no_problems(self, check_datagrams(sender, datagrams))

    def test_hello_sweep(self) -> None:
        """
        Each string value of a valid HELLO, replaced in turn by
        each of L{SWEEP_STRINGS} (the longest one filling the datagram to
        its 1,200-byte limit), multicast without a key.
        """
        body = valid_datagram_body("x1")
        problems = []
        for path in [path for path in string_paths(body) if not isinstance(path[-1], tuple)]:
            for nasty in SWEEP_STRINGS:
                if nasty == FILL:
                    nasty = "x" * (datagram.MAX_DATAGRAM_BYTES - len(to_json(swapped(body, path, ""))))
                problems.extend(check_datagrams("unkeyed", [to_json(swapped(body, path, nasty))]))
        assert_no_problems(self, problems)


# -- 6. What fuzzing found -----------------------------------------------------------


class RegressionTests(SynchronousTestCase):
    """
    The exact inputs that fuzzing (or reading the code it pointed at) found
    to break a node.  Each test states the behaviour the protocol promises;
    they fail until the node is fixed.
    """

    def assertAnswered(self, stranger: _Stranger, name: bytes, pairs: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        """
        C{name} with C{pairs} gets a normal answer or one of its declared
        errors (not C{UNKNOWN}, not silence), and the connection stays up.
        """
        authenticated = stranger.protocol.authenticated
        answer = stranger.ask(name, pairs)
        self.assertIsNotNone(answer, f"{name!r} was not answered (connection lost: {stranger.lost})")
        assert answer is not None
        if b"_error" in answer:
            self.assertIn(answer[b"_error_code"], expected_codes(name, authenticated), short(answer))
        self.assertFalse(stranger.lost, f"{name!r}: the node closed the connection")
        return answer

    def assertQuiet(self, events: list[dict[str, Any]]) -> None:
        """Nothing critical and no unwritable line was logged."""
        self.assertEqual(critical_events(events), [])

    # Lone surrogates.  JSON may escape one ("\ud800"); json.loads turns it
    # into a str that cannot be encoded as UTF-8, and nothing refuses it, so
    # the answers, gossip and log lines that quote it fail later.

    def test_datagram_with_a_lone_surrogate(self) -> None:
        """datagram.decode refuses a HELLO whose node's host or instance is "\\ud800"."""
        for field in ("host", "instance"):
            data = to_json(valid_datagram_body()).replace(
                b'"i-x1"' if field == "instance" else b'"127.0.0.9"', b'"\\ud800"'
            )
            self.assertIn(b"\\ud800", data)
            with self.assertRaises(datagram.DatagramError, msg=f"{data!r} was accepted") as caught:
                datagram.decode(data)
            self.assertIn(caught.exception.reason, DATAGRAM_REASONS)

    def test_result_query_with_a_lone_surrogate(self) -> None:
        """RESULT_QUERY naming task "\\ud800": the answer (which quotes the id back) is sent, not UNKNOWN."""
        target = _FuzzedNode(None)
        with capturedLogs() as events:
            stranger = target.stranger("handshaken")
            self.assertAnswered(
                stranger, b"RESULT_QUERY", [(b"job", b"j"), (b"tasks", b'[{"id":"\\ud800","attempt":1}]')]
            )
        self.assertQuiet(events)

    def test_submitted_command_with_a_lone_surrogate(self) -> None:
        """SUBMIT_JOB of a task whose command holds "\\ud800" is refused (BAD_JOB or BAD_ARGUMENTS), not UNKNOWN."""
        target = _FuzzedNode(None)
        tasks = b'[{"id":"s1","kind":"w","command":["echo","\\ud800"]}]'
        with capturedLogs() as events:
            stranger = target.stranger("fresh")
            answer = self.assertAnswered(
                stranger,
                b"SUBMIT_JOB",
                [(b"tasks", tasks), (b"defaults", b"null"), (b"upload", b""), (b"final", b"True")],
            )
        self.assertIn(answer.get(b"_error_code"), {b"BAD_JOB", b"BAD_ARGUMENTS"})
        self.assertQuiet(events)

    def test_peer_exchange_with_a_lone_surrogate(self) -> None:
        """
        PEER_EXCHANGE offering a node whose host is "\\ud800" is answered;
        afterwards CLUSTER_STATUS (on another connection) is still answered.
        """
        target = _FuzzedNode(None)
        peers = to_json([info_wire("zz1", host="\ud800", age=1.0)])
        with capturedLogs() as events:
            self.assertAnswered(target.stranger("handshaken"), b"PEER_EXCHANGE", [(b"peers", peers)])
            self.assertAnswered(target.stranger("fresh"), b"CLUSTER_STATUS", [])
        self.assertQuiet(events)

    def test_hello_with_a_lone_surrogate(self) -> None:
        """
        One unsealed HELLO, from anyone on the group, describing a node whose
        host is "\\ud800": the node keeps gossiping (its periodic PEER_EXCHANGE
        does not die with "Periodic task failed"), and its peers can still be
        described on the wire.
        """
        target = _FuzzedNode(None)
        body = valid_datagram_body("evil1")
        body["node"]["host"] = "\ud800"
        with capturedLogs() as events:
            target.network.inject_datagram(to_json(body), target.node.config.group)
            target.network.run(6.0)
            self.assertEqual(target.stopped_periodic_tasks(), [])
            commands.encode_json(target.node.peers_status())
        self.assertQuiet(events)

    def test_handshake_with_a_lone_surrogate_in_the_log(self) -> None:
        """
        A HANDSHAKE describing host "a\\udfffb" is answered, and the node's
        log lines about that peer can be written (a FileLogObserver drops a
        line it cannot encode, so a stranger could keep its own connection
        out of the log).
        """
        target = _FuzzedNode(None)
        with capturedLogs() as events:
            stranger = target.stranger("connected")
            self.assertAnswered(
                stranger, b"HANDSHAKE", [(b"node", to_json(info_wire(STRANGER, capabilities=[], host="a\udfffb")))]
            )
        self.assertQuiet(events)

    # Refusals that quote a huge value: the error box itself is over AMP's
    # 65,535-byte limit (TooLong), so no answer goes out at all.

    def test_refusal_quoting_a_huge_value(self) -> None:
        """INSTRUCTION_ASSIGNMENT naming a 65,535-character master (the longest AMP value) is refused with BAD_ARGUMENTS."""
        target = _FuzzedNode(None)
        with capturedLogs() as events:
            stranger = target.stranger("handshaken")
            answer = self.assertAnswered(
                stranger,
                b"INSTRUCTION_ASSIGNMENT",
                [(b"job", b"j"), (b"master", b"x" * 65_535), (b"master_instance", b"i-fz1"), (b"tasks", b"[]")],
            )
        self.assertEqual(answer.get(b"_error_code"), b"BAD_ARGUMENTS")
        self.assertQuiet(events)

    def test_malformed_argument_quoting_a_huge_value(self) -> None:
        """
        SUBMIT_JOB whose C{final} is 65,535 bytes of 0xff (not a boolean) is
        refused with BAD_ARGUMENTS (the refusal quotes the value's repr, four
        times as long).
        """
        target = _FuzzedNode(None)
        with capturedLogs() as events:
            stranger = target.stranger("fresh")
            answer = self.assertAnswered(
                stranger,
                b"SUBMIT_JOB",
                [(b"tasks", b"[]"), (b"defaults", b"null"), (b"upload", b""), (b"final", b"\xff" * 65_535)],
            )
        self.assertEqual(answer.get(b"_error_code"), b"BAD_ARGUMENTS")
        self.assertQuiet(events)

    def test_handshake_quoting_a_huge_value(self) -> None:
        """A HANDSHAKE whose node is a 60,000-byte JSON list (not an object) is refused with BAD_ARGUMENTS."""
        target = _FuzzedNode(None)
        with capturedLogs() as events:
            stranger = target.stranger("connected")
            answer = self.assertAnswered(stranger, b"HANDSHAKE", [(b"node", b"[" + b'"x",' * 15_000 + b'"x"]')])
        self.assertEqual(answer.get(b"_error_code"), b"BAD_ARGUMENTS")
        self.assertQuiet(events)

    # Answers that outgrow one AMP value: LIST_JOBS and CLUSTER_STATUS are
    # not chunked (JOB_TASKS and PEER_EXCHANGE are).

    def test_list_jobs_of_a_busy_node(self) -> None:
        """LIST_JOBS on a node master of 300 jobs (a journal keeps a week of them) is answered."""
        target = _FuzzedNode(None)
        for number in range(300):
            target.node.submit([{"id": f"t{number}", "kind": "z"}])
        target.network.flush()
        with capturedLogs() as events:
            self.assertAnswered(target.stranger("fresh"), b"LIST_JOBS", [])
        self.assertQuiet(events)

    def test_cluster_status_of_a_large_cluster(self) -> None:
        """CLUSTER_STATUS on a node that knows 500 peers is answered."""
        target = _FuzzedNode(None)
        stranger = target.stranger("handshaken")
        for batch in range(2):
            peers = [info_wire(f"p{batch}x{number}", age=1.0) for number in range(250)]
            self.assertAnswered(stranger, b"PEER_EXCHANGE", [(b"peers", to_json(peers))])
        self.assertGreaterEqual(len(target.node.peers_status()), 500)
        with capturedLogs() as events:
            self.assertAnswered(target.stranger("fresh"), b"CLUSTER_STATUS", [])
        self.assertQuiet(events)

    # AMP's own behaviour, inherited.

    def test_refused_command_without_ask(self) -> None:
        """
        A refused command sent without C{_ask} (no answer wanted) costs one
        log line, not an "unhandled" traceback at critical level; with and
        without a key.
        """
        for key in (None, KEY):
            target = _FuzzedNode(key)
            with capturedLogs() as events:
                stranger = target.stranger("fresh")
                stranger.send(frame([(b"_command", b"HEARTBEAT")]))
            self.assertQuiet(events)

    def test_start_tls_is_not_part_of_the_protocol(self) -> None:
        """
        AMP's StartTLS, from a stranger on a node without a key, is refused:
        the connection does not switch to TLS on the stranger's word (with
        no certificate), since StartTLS is not in the p2pexec protocol.
        """
        target = _FuzzedNode(None)
        stranger = target.stranger("fresh")
        answer = stranger.ask(b"StartTLS", [])
        self.assertIsNone(stranger.transport.tls_started, "the node switched the connection to TLS")
        self.assertIsNotNone(answer)
        assert answer is not None
        self.assertIn(b"_error", answer)
