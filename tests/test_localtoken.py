"""Tests for L{p2pexec.localtoken}: the token file, the runtime records, and how the client finds a token."""

import json
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from p2pexec import localtoken
from p2pexec.auth import http_token
from p2pexec.cli import commands as subcommands
from p2pexec.cli import parser


class TokenFileTests(SynchronousTestCase):
    """L{localtoken.load_or_create}."""

    def test_made_once_mode_0600_and_reused(self):
        """The token is made in the state directory with mode 0600, and the same one is read on the next start."""
        state = self.mktemp()
        first = localtoken.load_or_create(state)
        path = localtoken.token_path(state)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(len(first), 32)
        self.assertEqual(localtoken.load_or_create(state), first)
        self.assertEqual(os.listdir(state), ["local-token"], "no temporary file is left behind")

    def test_readable_by_others_refused(self):
        """A token file that others can read is refused, in one line naming it and the fix."""
        state = self.mktemp()
        localtoken.load_or_create(state)
        os.chmod(localtoken.token_path(state), 0o644)
        error = self.assertRaises(localtoken.LocalTokenError, localtoken.load_or_create, state)
        self.assertIn("local token", str(error))
        self.assertIn("chmod 600", str(error))


class FindTokenTests(SynchronousTestCase):
    """L{localtoken.write_record} and L{localtoken.find_token}: how the client of the same user finds a node's token."""

    def setUp(self):
        self.environ = {"XDG_STATE_HOME": os.path.abspath(self.mktemp())}
        self.state = self.mktemp()
        self.token = localtoken.load_or_create(self.state)

    def test_found_by_port_and_address(self):
        """The record of a running node is found by its port, from 127.0.0.1 or localhost; another port finds nothing."""
        path = localtoken.write_record("127.0.0.1", 10001, "a1", self.state, 8080, self.environ)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        for host in ("127.0.0.1", "localhost"):
            token, record = localtoken.find_token(host, 10001, self.environ)
            self.assertEqual((token, record["web"], record["name"]), (self.token, 8080, "a1"))
        self.assertIsNone(localtoken.find_token("127.0.0.1", 10002, self.environ))
        localtoken.remove_record(path)
        self.assertIsNone(localtoken.find_token("127.0.0.1", 10001, self.environ))

    def test_dead_nodes_ignored(self):
        """A record left by a node that is no longer running (SIGKILL) is ignored, and cleared by the next node."""
        path = localtoken.write_record("127.0.0.1", 10001, "a1", self.state, None, self.environ)
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        record["pid"] = 2**22 + 12345  # above any pid_max: not running
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f)
        self.assertIsNone(localtoken.find_token("127.0.0.1", 10001, self.environ))
        localtoken.write_record("127.0.0.1", 10002, "b1", self.state, None, self.environ)
        self.assertFalse(os.path.exists(path))

    def test_records_others_can_change_ignored(self):
        """A record that others may write (not this user's alone) is not trusted."""
        path = localtoken.write_record("127.0.0.1", 10001, "a1", self.state, None, self.environ)
        os.chmod(path, 0o666)
        self.assertIsNone(localtoken.find_token("127.0.0.1", 10001, self.environ))

    def test_without_a_record_the_client_has_no_token(self):
        """Another user (another $XDG_STATE_HOME here) finds no record, so its client proves nothing."""
        localtoken.write_record("127.0.0.1", 10001, "a1", self.state, None, self.environ)
        self.assertIsNone(localtoken.find_token("127.0.0.1", 10001, {"XDG_STATE_HOME": os.path.abspath(self.mktemp())}))


class TokenCommandTests(SynchronousTestCase):
    """C{p2pexec token} without --key-file prints the HTTP token of the user's node at --connect."""

    def test_prints_token_and_url(self):
        """The token of the local token, and with --url the dashboard's address carrying it."""
        from io import StringIO

        environ = dict(os.environ, XDG_STATE_HOME=os.path.abspath(self.mktemp()))
        self.patch(os, "environ", environ)
        state = self.mktemp()
        token = localtoken.load_or_create(state)
        localtoken.write_record("127.0.0.1", 10001, "a1", state, 8080)
        out, err = StringIO(), StringIO()
        args = parser.parse_arguments(["--connect", "127.0.0.1:10001", "token"])
        self.assertEqual(subcommands.key_command(args, out, err), 0, err.getvalue())
        self.assertEqual(out.getvalue(), http_token(token) + "\n")
        out = StringIO()
        args = parser.parse_arguments(["--connect", "127.0.0.1:10001", "token", "--url"])
        self.assertEqual(subcommands.key_command(args, out, err), 0, err.getvalue())
        self.assertEqual(out.getvalue(), f"http://127.0.0.1:8080/#token={http_token(token)}\n")
        args = parser.parse_arguments(["--connect", "127.0.0.1:10009", "token"])
        self.assertEqual(subcommands.key_command(args, StringIO(), err), 2)
        self.assertIn("no node of yours with a local token runs at 127.0.0.1:10009", err.getvalue())
