"""Tests for L{p2pexec.directory}."""

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.directory import JobDirectory
from p2pexec.replicas import Ballot


class JobDirectoryTests(SynchronousTestCase):
    """L{JobDirectory}."""

    def test_newer_ballot_wins(self) -> None:
        """A newer ballot replaces an older one; an older or equal one is no news."""
        directory = JobDirectory()
        self.assertTrue(directory.learn("j", Ballot(1, "m")))
        self.assertTrue(directory.learn("j", Ballot(2, "n")))
        self.assertFalse(directory.learn("j", Ballot(1, "m")))
        self.assertFalse(directory.learn("j", Ballot(2, "n")))
        leader = directory.lookup("j")
        assert leader is not None
        self.assertEqual((leader.master, leader.epoch), ("n", 2))
        self.assertIsNone(directory.lookup("other"))

    def test_bounded(self) -> None:
        """Past its limit, the directory forgets the jobs it learned of first."""
        directory = JobDirectory(limit=2)
        for n in range(3):
            directory.learn(f"j{n}", Ballot(1, "m"))
        self.assertEqual(len(directory), 2)
        self.assertIsNone(directory.lookup("j0"))
        self.assertIsNotNone(directory.lookup("j2"))
