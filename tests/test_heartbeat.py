"""Tests for L{p2pexec.heartbeat}: the failure detector's state machine."""

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.heartbeat import FailureDetector, Liveness


class FailureDetectorTests(SynchronousTestCase):
    """L{FailureDetector.judge}."""

    def setUp(self):
        self.detector = FailureDetector(interval=0.5, timeout=2.5)

    def test_alive_then_suspect_then_dead(self):
        """Growing silence goes alive -> suspect -> dead, each change reported once."""
        changes = [self.detector.judge("b1", silent).became for silent in (0.1, 0.6, 1.3, 1.8, 2.5, 3.0)]
        self.assertEqual(changes, [None, None, Liveness.SUSPECT, None, Liveness.DEAD, None])

    def test_ping_when_quiet(self):
        """A peer quiet for an interval is pinged; a chatty one is not; a dead one no more."""
        self.assertFalse(self.detector.judge("b1", 0.2).ping)
        self.assertTrue(self.detector.judge("b1", 0.5).ping)
        self.assertTrue(self.detector.judge("b1", 2.0).ping)
        self.assertFalse(self.detector.judge("b1", 2.6).ping)

    def test_recovery(self):
        """A suspect peer that speaks again is alive again."""
        self.detector.judge("b1", 1.5)
        self.assertEqual(self.detector.judge("b1", 0.1).became, Liveness.ALIVE)

    def test_dead_stays_dead(self):
        """Once dead, a peer stays dead until forgotten."""
        self.detector.judge("b1", 3.0)
        self.assertIsNone(self.detector.judge("b1", 0.0).became)
        self.assertEqual(self.detector.state("b1"), Liveness.DEAD)
        self.detector.forget("b1")
        self.assertEqual(self.detector.state("b1"), Liveness.ALIVE)

    def test_bad_settings(self):
        """An interval not below the timeout is refused."""
        self.assertRaises(ValueError, FailureDetector, 3.0, 2.5)
