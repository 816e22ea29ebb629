"""
Tests for the systemd files in C{contrib/systemd/}: the template unit passes
C{systemd-analyze verify} and uses the node's notifications (C{Type=notify},
a watchdog), and the example environment file holds options the plugin
accepts.  The notifications themselves are tested in L{tests.test_notify}.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile

from twisted.internet import utils
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from p2pexec.tap import Options

CONTRIB = FilePath(__file__).parent().parent().child("contrib").child("systemd")
UNIT = CONTRIB.child("p2pexec@.service")
ENV_EXAMPLE = CONTRIB.child("p2pexec.env.example")

INSTALLED_TWISTD = "/usr/local/bin/twistd"
"""Where the unit expects twistd; it need not exist on the test machine."""

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _local_twistd() -> str | None:
    """The twistd beside this Python (the project's virtualenv), or on C{PATH}."""
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("twistd")


def unit_for_this_machine(text: str, twistd: str) -> str:
    """
    The unit C{text} with its ExecStart program replaced by C{twistd}.

    C{systemd-analyze verify} reports an ExecStart program that does not
    exist, and C{/usr/local/bin/twistd} usually does not exist where the tests
    run; the twistd of the test's own environment does.  Nothing else changes.

    @raise AssertionError: if the unit no longer starts C{/usr/local/bin/twistd},
        so that a changed unit is never verified unrewritten by mistake.
    """
    prefix = f"ExecStart={INSTALLED_TWISTD} "
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    assert len(starts) == 1 and lines[starts[0]].startswith(prefix), (
        f"expected exactly one line starting with {prefix!r} in {UNIT.path}"
    )
    lines[starts[0]] = f"ExecStart={twistd} " + lines[starts[0]][len(prefix) :]
    return "".join(lines)


class VerifyTests(TestCase):
    """
    C{systemd-analyze verify} finds nothing to say about
    C{contrib/systemd/p2pexec@.service}.

    systemd-analyze exits 0 even when it ignores a line it does not
    understand, and only prints a warning, so these tests treat any output at
    all, on stdout or stderr, as a failure.  The template is verified as the
    instance C{p2pexec@test.service}: a copy under that name in a temporary
    folder, with ExecStart pointing at this environment's twistd (see
    L{unit_for_this_machine}).
    """

    def setUp(self) -> None:
        if SYSTEMD_ANALYZE is None:
            raise self.skipTest("systemd-analyze is not installed (it comes with systemd)")
        twistd = _local_twistd()
        if twistd is None:
            raise self.skipTest(f"no twistd beside {sys.executable} nor on PATH to stand in for {INSTALLED_TWISTD}")
        self.twistd = twistd

    def verify(self, text: str) -> Deferred[str]:
        """
        Run C{systemd-analyze verify} on C{text} saved as
        C{p2pexec@test.service}.

        @return: a Deferred firing with everything it printed (stdout, then
            stderr), and the exit status if that was not 0.
        """
        # Not self.mktemp(): under pytest that makes a folder in the current
        # directory (the checkout) and leaves it there.
        folder = FilePath(tempfile.mkdtemp(prefix="p2pexec-systemd-"))
        self.addCleanup(folder.remove)
        unit = folder.child("p2pexec@test.service")
        unit.setContent(text.encode("utf-8"))
        # setContent leaves the file executable, which systemd-analyze warns about.
        unit.chmod(0o644)
        d = utils.getProcessOutputAndValue(
            SYSTEMD_ANALYZE, ["verify", "--man=no", unit.path], env=dict(os.environ), path=folder.path
        )

        def combine(result: tuple[bytes, bytes, int]) -> str:
            out, err, code = result
            text = (out + err).decode("utf-8", "replace")
            if code != 0:
                text += f"\n(systemd-analyze exited with status {code})"
            return text

        return d.addCallback(combine)

    def test_unit_is_clean(self) -> Deferred[None]:
        """
        The unit, with ExecStart rewritten to this environment's twistd,
        verifies without a single line of output.
        """
        text = unit_for_this_machine(UNIT.getContent().decode("utf-8"), self.twistd)
        d = self.verify(text)
        d.addCallback(
            lambda output: self.assertEqual(output, "", f"systemd-analyze verify {UNIT.path} printed:\n{output}")
        )
        return d

    def test_bogus_directive_is_caught(self) -> Deferred[None]:
        """
        A copy of the unit with an unknown directive in [Service] makes
        systemd-analyze print a warning, which L{verify} returns, so
        L{test_unit_is_clean} would fail on such a line even though
        systemd-analyze exits 0 for it.
        """
        text = unit_for_this_machine(UNIT.getContent().decode("utf-8"), self.twistd)
        self.assertIn("\n[Service]\n", text)
        broken = text.replace("\n[Service]\n", "\n[Service]\nBogusDirective=yes\n", 1)
        d = self.verify(broken)

        def check(output: str) -> None:
            self.assertNotEqual(output, "")
            self.assertIn("BogusDirective", output)
            self.assertNotIn("exited with status", output, "expected exit status 0 despite the bad line")

        return d.addCallback(check)


class EnvironmentExampleTests(SynchronousTestCase):
    """
    C{contrib/systemd/p2pexec.env.example} sets C{P2PEXEC_OPTS} to options
    that C{twistd p2pexec} accepts.
    """

    def test_options_parse(self) -> None:
        """
        Every uncommented C{P2PEXEC_OPTS=} line, split on whitespace as
        systemd splits C{$P2PEXEC_OPTS} and preceded by the C{--name} that the
        unit adds, passes the plugin's option validation.
        """
        values = []
        for line in ENV_EXAMPLE.getContent().decode("utf-8").splitlines():
            if line.startswith("P2PEXEC_OPTS="):
                values.append(shlex.split(line.partition("=")[2])[0])
        self.assertNotEqual(values, [], "no uncommented P2PEXEC_OPTS= line")
        key_file = self.mktemp()
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"00" * 32 + b"\n")
        os.close(fd)
        for value in values:
            options = Options()
            argv = ["--name", "test"] + value.replace("/etc/p2pexec/cluster.key", key_file).split()
            options.parseOptions(argv + ["--state-dir", self.mktemp()])
            self.assertEqual(options["name"], "test")


def unit_settings(text: str) -> dict[str, list[str]]:
    """The C{KEY=value} lines of C{text}'s C{[Service]} section, each key's values in order."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


class NotifySettingsTests(SynchronousTestCase):
    """
    The unit uses the node's systemd notifications (L{p2pexec.systemd}):
    settings that C{systemd-analyze verify} accepts with or without.
    """

    def setUp(self) -> None:
        self.settings = unit_settings(UNIT.getContent().decode("utf-8"))

    def test_notify(self) -> None:
        """The unit waits for READY=1 and listens to twistd alone."""
        self.assertEqual(self.settings["Type"], ["notify"])
        self.assertEqual(self.settings["NotifyAccess"], ["main"])

    def test_watchdog(self) -> None:
        """A watchdog is set, in whole seconds, long enough for pings every half of it."""
        [value] = self.settings["WatchdogSec"]
        self.assertGreaterEqual(int(value), 10)

    def test_state_directory(self) -> None:
        """The node is given the state directory systemd creates for it."""
        self.assertEqual(self.settings["StateDirectory"], ["p2pexec/%i"])
        [exec_start] = self.settings["ExecStart"]
        self.assertIn(" --state-dir=${STATE_DIRECTORY} ", exec_start)
