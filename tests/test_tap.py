"""Tests for L{p2pexec.tap}: option validation and the service tree."""

import os

from twisted.application.service import IService, MultiService
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.listeners import Listener
from p2pexec.service import NodeService
from p2pexec.tap import Options, config_from_options, makeService
from p2pexec.testing.network import FakeNetwork


def parse(*argv):
    """Parse C{argv} as C{twistd p2pexec} would."""
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    """Every option is validated, and every refusal names the option."""

    def test_design_card_example(self):
        """The design card's command line parses into the intended node."""
        config = config_from_options(parse("--name", "a1", "--port", "10001", "--tasks", "a1,a2,b1"))
        self.assertEqual((config.name, config.port, config.interface), ("a1", 10001, "127.0.0.1"))
        self.assertEqual([t.id for t in config.tasks], ["a1", "a2", "b1"])
        self.assertEqual(config.capabilities, frozenset({"a"}))
        self.assertEqual(config.cluster, "default")
        self.assertEqual(config.slots, os.cpu_count())
        self.assertTrue(config.group[0].startswith("239.255."))

    def test_rerun_job(self):
        """--rerun-job reaches the node's configuration, with a label of the job for the log."""
        config = config_from_options(parse("--name", "a1", "--tasks", "a1,a2", "--rerun-job"))
        self.assertTrue(config.rerun_job)
        self.assertEqual(config.job_label, "the job of --tasks a1,a2")
        self.assertFalse(config_from_options(parse("--name", "a1", "--tasks", "a1")).rerun_job)

    def test_seeds(self):
        """--peer is repeatable and takes HOST:PORT; --no-multicast turns discovery off."""
        config = config_from_options(
            parse("--name", "a1", "--peer", "10.1.2.3:10001", "--peer", "node-7.lab:10002", "--no-multicast")
        )
        self.assertEqual(config.seeds, (("10.1.2.3", 10001), ("node-7.lab", 10002)))
        self.assertFalse(config.multicast)
        self.assertTrue(config_from_options(parse("--name", "a1")).multicast)

    def test_peer_refresh(self):
        """--peer-refresh is 30 seconds unless given; below 1 second or not a number is refused, naming it."""
        self.assertEqual(config_from_options(parse("--name", "a1")).peer_refresh, 30.0)
        self.assertEqual(config_from_options(parse("--name", "a1", "--peer-refresh", "5")).peer_refresh, 5.0)
        for value in ("0", "0.5", "-3", "soon", "100000"):
            with self.assertRaises(usage.UsageError, msg=value) as caught:
                parse("--name", "a1", "--peer-refresh", value)
            self.assertIn("--peer-refresh", str(caught.exception), value)

    def test_capabilities_default_from_name(self):
        """Without --capabilities, b1 runs kind b, as in the original."""
        self.assertEqual(config_from_options(parse("--name", "b1")).capabilities, frozenset({"b"}))
        config = config_from_options(parse("--name", "b1", "--capabilities", "render,encode"))
        self.assertEqual(config.capabilities, frozenset({"render", "encode"}))

    def test_refusals_name_the_option(self):
        """Each bad value is a UsageError that names the option at fault."""
        cases = [
            ((), "--name"),
            (("--name", "bad name!"), "--name"),
            (("--name", "x" * 65), "--name"),
            (("--name", "a1", "--port", "70000"), "--port"),
            (("--name", "a1", "--port", "http"), "--port"),
            (("--name", "a1", "--slots", "0"), "--slots"),
            (("--name", "a1", "--slots", "many"), "--slots"),
            (("--name", "a1", "--interface", "nowhere"), "--interface"),
            (("--name", "a1", "--interface", "0.0.0.0"), "--interface"),
            (("--name", "a1", "--group", "239.255.0.1"), "--group"),
            (("--name", "a1", "--group", "127.0.0.1:5000"), "--group"),
            (("--name", "a1", "--group", "239.255.0.1:0"), "--group"),
            (("--name", "a1", "--cluster", "no spaces"), "--cluster"),
            (("--name", "a1", "--tasks", ","), "--tasks"),
            (("--name", "a1", "--tasks", "a1,a1"), "--tasks"),
            (("--name", "a1", "--tasks", "a1", "--job", "x.toml"), "--tasks"),
            (("--name", "a1", "--job", "/nonexistent/job.toml"), "--job"),
            (("--name", "a1", "--capabilities", "a b"), "--capabilities"),
            (("--name", "a1", "--results", "/nonexistent/dir/r.json", "--tasks", "a1"), "--results"),
            (("--name", "a1", "--results", "r.json"), "--results"),
            (("--name", "a1", "--results", os.getcwd(), "--tasks", "a1"), "--results"),
            (("--name", "a1", "--drain-timeout", "-1"), "--drain-timeout"),
            (("--name", "a1", "--log-level", "chatty"), "--log-level"),
            (("--name", "a1", "--exit-when-done"), "--exit-when-done"),
            (("--name", "a1", "--rerun-job"), "--rerun-job"),
            (("--name", "a1", "--peer", "10.0.0.1"), "--peer"),
            (("--name", "a1", "--peer", "10.0.0.1:0"), "--peer"),
            (("--name", "a1", "--peer", "bad host!:10001"), "--peer"),
            (("--name", "a1", "--peer", "239.1.1.1:10001"), "--peer"),
            (("--name", "a1\n"), "--name"),
            (("--name", "a1", "--capabilities", ",".join(f"{'k' * 60}{i:02d}" for i in range(32))), "--capabilities"),
        ]
        for argv, option in cases:
            with self.assertRaises(usage.UsageError, msg=argv) as caught:
                parse(*argv)
            self.assertIn(option, str(caught.exception), argv)

    def test_bad_job_file_names_file_task_and_field(self):
        """A bad job file is refused at start, naming the file, the task and the field."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[[task]]\nid = "ok"\n[[task]]\nid = "t2"\ntimeout = "soon"\n')
        with self.assertRaises(usage.UsageError) as caught:
            parse("--name", "a1", "--job", path)
        message = str(caught.exception)
        for part in ("--job", path, "task #2", "'t2'", "'timeout'"):
            self.assertIn(part, message)


class CommandPolicyOptionsTests(SynchronousTestCase):
    """--allow and --instructions: what a worker is willing to run."""

    def test_allow_is_repeatable(self):
        """--allow adds a pattern each time; without either option everything is allowed."""
        policy = parse("--name", "a1", "--allow", "/usr/bin/true", "--allow", "echo")["command_policy"]
        self.assertEqual((policy.allow, policy.instructions), (("/usr/bin/true", "echo"), None))
        self.assertTrue(parse("--name", "a1")["command_policy"].allows_everything)

    def test_instructions_folder(self):
        """--instructions takes a folder, made absolute."""
        folder = self.mktemp()
        os.makedirs(folder)
        policy = parse("--name", "a1", "--instructions", folder)["command_policy"]
        self.assertEqual((policy.allow, policy.instructions), ((), os.path.abspath(folder)))

    def test_refusals_name_the_option(self):
        """Each bad value is a one-line UsageError that names the option at fault."""
        not_a_folder = self.mktemp()
        with open(not_a_folder, "w") as f:
            f.write("")
        folder = self.mktemp()
        os.makedirs(folder)
        cases = [
            (("--allow", ""), "--allow: a pattern cannot be empty"),
            (("--allow", "echo", "--allow", " "), "--allow: a pattern cannot be empty"),
            (("--instructions", "/nonexistent/p2pexec"), "--instructions: /nonexistent/p2pexec does not exist"),
            (("--instructions", not_a_folder), f"--instructions: {not_a_folder} is not a folder"),
            (("--allow", "echo", "--instructions", folder), "--allow and --instructions cannot be used together"),
        ]
        for argv, message in cases:
            with self.assertRaises(usage.UsageError, msg=argv) as caught:
                parse("--name", "a1", *argv)
            self.assertIn(message, str(caught.exception), argv)
            self.assertNotIn("\n", str(caught.exception), argv)

    def test_make_service_hands_the_policy_to_the_executor(self):
        """makeService gives the executor the policy; the node says at start what it runs."""
        for argv, said in [
            ((), "runs any command it is given (no --allow or --instructions)"),
            (("--allow", "echo"), "runs only commands matching --allow: echo; shell tasks are refused"),
        ]:
            options = parse("--name", "a1", "--port", "0", "--state-dir", self.mktemp(), *argv)
            with capturedLogs() as events:
                makeService(options, reactor=FakeNetwork().host())
            self.assertEqual([e["policy"] for e in events if "policy" in e], [said], argv)


class MakeServiceTests(SynchronousTestCase):
    """L{makeService} builds a MultiService around one node."""

    def options(self, *argv):
        """Parsed options for a node whose state directory is a fresh temporary one."""
        return parse(*argv, "--state-dir", self.mktemp())

    def test_service_tree(self):
        """The plugin's service is a NodeService (a MultiService) configured from the options."""
        network = FakeNetwork()
        service = makeService(self.options("--name", "a1", "--port", "0", "--tasks", "a1"), reactor=network.host())
        self.assertTrue(IService.providedBy(service))
        self.assertIsInstance(service, MultiService)
        self.assertIsInstance(service, NodeService)
        self.assertEqual(service.node.config.name, "a1")
        listeners = [child for child in service if isinstance(child, Listener)]
        self.assertEqual([listener.name for listener in listeners], ["AMP port", "discovery port"])

    def test_start_and_stop(self):
        """Started, the node listens and runs its job; stopped, it leaves in order."""
        network = FakeNetwork()
        service = makeService(self.options("--name", "a1", "--port", "0", "--tasks", "a1,a2"), reactor=network.host())
        service.privilegedStartService()
        service.startService()
        network.run(1.0)
        self.assertEqual(service.node.initial_job.result.succeeded, 2)
        stopped = service.stopService()
        network.run(1.0)
        self.successResultOf(stopped)

    def test_port_in_use_is_one_line(self):
        """A taken port stops start-up with one line naming the node, address and reason."""
        network = FakeNetwork()
        host = network.host()
        first = makeService(self.options("--name", "a1", "--port", "10001"), reactor=host)
        first.privilegedStartService()
        second = makeService(self.options("--name", "a2", "--port", "10001"), reactor=host)
        with self.assertRaises(SystemExit) as caught:
            second.privilegedStartService()
        message = str(caught.exception)
        self.assertIn("a2", message)
        self.assertIn("127.0.0.1:10001", message)
        self.assertIn("in use", message)

    def test_state_dir_in_use_is_one_line(self):
        """A second node on the same state directory stops start-up with one line saying so."""
        state_dir = self.mktemp()
        network = FakeNetwork()
        first = makeService(parse("--name", "a1", "--port", "0", "--state-dir", state_dir), reactor=network.host())
        self.addCleanup(first.node.journal.close)
        with self.assertRaises(SystemExit) as caught:
            makeService(parse("--name", "a1", "--port", "0", "--state-dir", state_dir), reactor=network.host())
        message = str(caught.exception)
        self.assertIn("node a1 cannot start", message)
        self.assertIn(f"{state_dir} is in use by another p2pexec node (pid {os.getpid()})", message)
        self.assertNotIn("\n", message)

    def test_damaged_journal_is_refused_and_left_alone(self):
        """A journal that is not a database stops start-up with one line, and the file is not touched."""
        state_dir = self.mktemp()
        os.makedirs(state_dir)
        path = os.path.join(state_dir, "journal.sqlite3")
        garbage = b"this is not an SQLite database, but it is 100 bytes long " + b"x" * 43
        with open(path, "wb") as f:
            f.write(garbage)
        with self.assertRaises(SystemExit) as caught:
            makeService(parse("--name", "a1", "--port", "0", "--state-dir", state_dir), reactor=FakeNetwork().host())
        message = str(caught.exception)
        self.assertIn(path, message)
        self.assertIn("left untouched", message)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), garbage)


class LogObserverTests(SynchronousTestCase):
    """The plain-text observer for C{twistd --logger=p2pexec.log.observer}."""

    def test_one_line_with_microseconds(self):
        """An event becomes one line: a microsecond UTC timestamp, namespace and level, then the text."""
        from twisted.logger import LogLevel

        from p2pexec.log import _format_line

        line = _format_line(
            {
                "log_time": 0.25,
                "log_level": LogLevel.info,
                "log_namespace": "p2pexec.node",
                "log_format": "Node {name} started on port {port}",
                "name": "a1",
                "port": 10001,
            }
        )
        self.assertEqual(line, "1970-01-01T00:00:00.250000+0000 [p2pexec.node#info] Node a1 started on port 10001\n")


class FakeStoppable:
    """A reactor that only counts C{stop} calls (and refuses a second, as Twisted's does)."""

    def __init__(self):
        self.stops = 0

    def stop(self):
        from twisted.internet.error import ReactorNotRunning

        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")


class FakeLogFile:
    """A twistd log file that records its reopenings, or fails them."""

    def __init__(self, path, error=None):
        self.path = path
        self.reopened = 0
        self._error = error

    def reopen(self):
        if self._error is not None:
            raise self._error
        self.reopened += 1


class HangUpTests(SynchronousTestCase):
    """L{p2pexec.tap.on_hangup}: what SIGHUP does to a node."""

    def test_log_file_reopened(self):
        """Logging to a file, SIGHUP reopens it, says so in one line, and the node keeps running."""
        from p2pexec.tap import on_hangup

        reactor, log_file = FakeStoppable(), FakeLogFile("/var/log/p2pexec/a1.log")
        with capturedLogs() as events:
            on_hangup(reactor, "a1", [log_file])
        self.assertEqual((log_file.reopened, reactor.stops), (1, 0))
        [event] = events
        self.assertEqual(event["log_format"], "Node {name} received SIGHUP: reopened its log file {path}")
        self.assertEqual(event["path"], "/var/log/p2pexec/a1.log")

    def test_terminal_hang_up_leaves(self):
        """Logging to standard output, SIGHUP is a hang-up: one line naming it, and the node leaves (once)."""
        from p2pexec.tap import on_hangup

        reactor = FakeStoppable()
        with capturedLogs() as events:
            on_hangup(reactor, "a1", [])
            on_hangup(reactor, "a1", [])
        self.assertEqual(reactor.stops, 2)
        self.assertIn(
            "received SIGHUP (its terminal hung up): leaving the cluster, as on SIGTERM", events[0]["log_format"]
        )

    def test_reopen_failure_logged(self):
        """A log file that cannot be reopened is an error line naming it and why; the node does not stop."""
        from p2pexec.tap import on_hangup

        reactor = FakeStoppable()
        with capturedLogs() as events:
            on_hangup(reactor, "a1", [FakeLogFile("/full/a1.log", PermissionError(13, "Permission denied"))])
        self.assertEqual(reactor.stops, 0)
        [event] = events
        self.assertEqual((event["path"], event["error"]), ("/full/a1.log", "Permission denied"))

    def test_nohup_kept(self):
        """A node started ignoring SIGHUP (nohup) keeps ignoring it; otherwise it handles it."""
        import signal

        from p2pexec.tap import _stop_cleanly_on_signals

        for number in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _stop_cleanly_on_signals(FakeStoppable(), "a1")
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        _stop_cleanly_on_signals(FakeStoppable(), "a1")
        self.assertTrue(callable(signal.getsignal(signal.SIGHUP)))
