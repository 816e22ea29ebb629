"""Tests for L{p2pexec.tls.load_or_create_identity}: a node's own certificate file."""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from p2pexec import tls


class IdentityFileTests(SynchronousTestCase):
    """The self-signed identity of C{--tls}, kept in the state directory."""

    def setUp(self):
        self.state_dir = os.path.abspath(self.mktemp())

    def test_made_once_owner_only_and_reused(self):
        """The first start makes it (mode 0600); the next start reads the same certificate back."""
        first = tls.load_or_create_identity(self.state_dir, "a1")
        path = os.path.join(self.state_dir, tls.IDENTITY_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again = tls.load_or_create_identity(self.state_dir, "a1")
        self.assertEqual(again.dumpPEM(), first.dumpPEM())
        self.assertEqual(first.getSubject().commonName, b"p2pexec node a1")

    def test_failed_write_leaves_nothing_behind(self):
        """If the file cannot be put in place, neither it nor its temporary file is left in the folder."""

        def refuse(source, target):
            raise OSError(28, "No space left on device")

        self.patch(tls.os, "replace", refuse)
        self.assertRaises(OSError, tls.load_or_create_identity, self.state_dir, "a1")
        self.assertEqual(os.listdir(self.state_dir), [])
