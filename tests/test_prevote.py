"""
The takeover's pre-round (L{p2pexec.prevote}): who counts as granting it,
and what a member answers.
"""

from twisted.internet.defer import fail, succeed
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.prevote import PreRound, PreVoting
from p2pexec.replicas import Ballot
from p2pexec.replication import Outcome


class FakeProtocol:
    """A peer's connection whose PRE_PROMISE answer is given."""

    def __init__(self, answer):
        self.answer = answer

    def callRemote(self, command, **kwargs):
        """Answer PRE_PROMISE with the given answer (a dict) or error (an exception)."""
        assert command is commands.PrePromise
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(self.answer)


class Asker(PreVoting):
    """A successor with nothing but its peers' connections."""

    def __init__(self, connections):
        self._connections = connections
        self._peers = self
        self.stores = {}
        self.logs = {}

    @property
    def _me(self):
        return "n1"

    def get(self, name):
        """The peer table's record of C{name}: here, an object with its connection (or none)."""
        return type("Record", (), {"connection": self._connections.get(name)})()


GRANTED = {"granted": True, "leader_epoch": 0, "leader_node": ""}


class PreRoundTests(SynchronousTestCase):
    """A successor's pre-round counts its members' answers."""

    def run_round(self, answers):
        """Run a pre-round of n1 over n1, n2, n3 with these connections; return it once done."""
        done = []
        attempt = PreRound("j", ("n1", "n2", "n3"), Ballot(2, "n1"), "n1")
        Asker(answers)._pre_round(attempt, done.append)
        self.assertTrue(done)
        return attempt

    def test_older_peer_counts_as_granted(self):
        """A peer that does not know PRE_PROMISE (an older version) counts as granting it."""
        attempt = self.run_round({"n2": FakeProtocol(amp.UnhandledCommand("PRE_PROMISE"))})
        self.assertEqual(attempt.outcome, Outcome.WON)
        self.assertEqual(attempt.granted, {"n1", "n2"})

    def test_live_leader_denies(self):
        """Members that still have a live leader deny it; with the others unreachable, the round fails."""
        denied = {"granted": False, "leader_epoch": 1, "leader_node": "n3"}
        attempt = self.run_round({"n2": FakeProtocol(denied), "n3": FakeProtocol(denied)})
        self.assertEqual(attempt.outcome, Outcome.FAILED)
        self.assertEqual(attempt.denied, {"n2": Ballot(1, "n3"), "n3": Ballot(1, "n3")})

    def test_unreachable_is_not_granted(self):
        """A member that cannot be asked, or fails otherwise, does not count as granting."""
        attempt = self.run_round({"n3": FakeProtocol(ConnectionError("gone"))})
        self.assertEqual(attempt.outcome, Outcome.FAILED)
        self.assertEqual(attempt.granted, {"n1"})

    def test_higher_promise_refuses(self):
        """STALE_BALLOT (a member promised higher) loses the round."""
        stale = commands.StaleBallot('{"job": "j", "epoch": 3, "leader": "n2", "message": "m"}')
        attempt = self.run_round({"n2": FakeProtocol(GRANTED), "n3": FakeProtocol(stale)})
        self.assertEqual(attempt.outcome, Outcome.LOST)
        self.assertEqual(attempt.refused, {"n3": Ballot(3, "n2")})
