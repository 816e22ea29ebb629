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


class Connection:
    """A stand-in connection: only its last-received time matters."""

    def __init__(self, last_received):
        self.last_received = last_received


class WatchmanTests(SynchronousTestCase):
    """L{Watchman}: busy and idle connections."""

    def setUp(self):
        self.pinged = []
        self.dead = []
        self.changes = []
        self.watchman = self.make_watchman()

    def make_watchman(self, **options):
        """A L{Watchman} (with C{options}) that records pings, deaths and changes in this test."""
        from p2pexec.heartbeat import Watchman

        return Watchman(
            busy=FailureDetector(0.5, 2.5),
            idle=FailureDetector(10.0, 30.0),
            ping=self.pinged.append,
            on_dead=lambda name, connection, silent, timeout: self.dead.append((name, timeout)),
            on_change=lambda name, liveness, silent: self.changes.append((name, liveness)),
            **options,
        )

    def test_idle_connection_pinged_slowly_and_closed_when_silent(self):
        """An idle connection is pinged after 10 s of quiet and declared dead after 30 s of silence."""
        b1 = Connection(0.0)
        self.watchman.check(0.0, [("b1", b1)], busy_names=set())
        self.watchman.check(5.0, [("b1", b1)], busy_names=set())
        self.assertEqual(self.pinged, [])
        self.watchman.check(10.0, [("b1", b1)], busy_names=set())
        self.assertEqual(self.pinged, [b1])
        self.watchman.check(29.0, [("b1", b1)], busy_names=set())
        self.assertEqual(self.dead, [])
        self.watchman.check(30.0, [("b1", b1)], busy_names=set())
        self.assertEqual(self.dead, [("b1", 30.0)])

    def test_work_starting_on_a_long_idle_connection(self):
        """A connection quiet for a long time is not judged dead the moment work starts on it."""
        b1 = Connection(0.0)
        self.watchman.check(0.0, [("b1", b1)], busy_names=set())
        self.watchman.check(20.0, [("b1", b1)], busy_names={"b1"})
        self.watchman.check(20.25, [("b1", b1)], busy_names={"b1"})
        self.assertEqual(self.dead, [])
        self.watchman.check(21.0, [("b1", b1)], busy_names={"b1"})
        self.assertIn(b1, self.pinged)
        self.watchman.check(21.5, [("b1", b1)], busy_names={"b1"})
        self.watchman.check(22.6, [("b1", b1)], busy_names={"b1"})
        self.assertEqual(self.dead, [("b1", 2.5)])
        self.assertEqual(self.changes, [("b1", Liveness.SUSPECT)])

    def test_answering_peer_stays_alive(self):
        """A busy peer that keeps answering is never suspected."""
        b1 = Connection(0.0)
        for step in range(1, 100):
            now = step * 0.25
            b1.last_received = now - 0.1
            self.watchman.check(now, [("b1", b1)], busy_names={"b1"})
        self.assertEqual((self.dead, self.changes), ([], []))

    def test_only_one_side_pings_idle_connections(self):
        """A side told not to ping idle connections does not, but still pings busy ones."""
        self.watchman = self.make_watchman(pings_when_idle=lambda connection: False)
        b1 = Connection(0.0)
        self.watchman.check(0.0, [("b1", b1)], busy_names=set())
        self.watchman.check(15.0, [("b1", b1)], busy_names=set())
        self.assertEqual(self.pinged, [])
        self.watchman.check(15.5, [("b1", b1)], busy_names={"b1"})
        self.watchman.check(16.0, [("b1", b1)], busy_names={"b1"})
        self.assertEqual(self.pinged, [b1])

    def test_closed_connections_forgotten(self):
        """A connection that is gone is dropped from both detectors."""
        b1 = Connection(0.0)
        self.watchman.check(0.0, [("b1", b1)], busy_names={"b1"})
        self.watchman.check(1.0, [], busy_names=set())
        self.assertEqual((self.watchman.busy.watched(), self.watchman.idle.watched()), ([], []))
