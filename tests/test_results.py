"""Tests for L{p2pexec.results}: the results file."""

import json
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.results import write_results


class WriteResultsTests(SynchronousTestCase):
    """L{write_results} replaces the file whole, with the mode a reader expects."""

    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.path = os.path.join(self.folder, "results.json")
        self.addCleanup(os.umask, os.umask(0o022))

    def test_new_file_follows_the_umask(self):
        """A new results file gets 0666 less the umask (0644 here), not mkstemp's 0600."""
        write_results(self.path, {"job": "j", "tasks": [{"id": "t1"}]})
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)
        with open(self.path) as f:
            self.assertEqual(json.load(f), {"job": "j", "tasks": [{"id": "t1"}]})

    def test_existing_file_keeps_its_mode(self):
        """A results file written again keeps the mode it had."""
        with open(self.path, "w") as f:
            f.write("{}")
        os.chmod(self.path, 0o640)
        write_results(self.path, {"job": "j", "tasks": []})
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)

    def test_nothing_left_behind_on_failure(self):
        """A report that cannot be written leaves the old file as it was and no temporary file."""
        with open(self.path, "w") as f:
            f.write('{"old": true}')
        self.assertRaises(TypeError, write_results, self.path, {"job": object(), "tasks": []})
        self.assertEqual(os.listdir(self.folder), ["results.json"])
        with open(self.path) as f:
            self.assertEqual(f.read(), '{"old": true}')
