"""
Tests for L{p2pexec.policy}: what a node's command policy lets run.

The policy only looks at files (stat, realpath, access), so these tests lay
out programs in a temporary folder and ask it; nothing is started.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.policy import SHELL, CommandPolicy, Refusal

PREFIX = "refused by this node's command policy: "


def make_program(path, executable=True):
    """Write a small script at C{path}, executable unless told otherwise; return C{path}."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("#!/bin/sh\necho ran\n")
    os.chmod(path, 0o755 if executable else 0o644)
    return path


class PolicyTestCase(SynchronousTestCase):
    """A temporary folder with a C{bin} folder of programs: C{tool}, C{echo} and C{rm}."""

    def setUp(self):
        self.root = os.path.realpath(os.path.abspath(self.mktemp()))
        self.bin = os.path.join(self.root, "bin")
        for name in ("tool", "echo", "rm"):
            make_program(os.path.join(self.bin, name))
        self.empty = os.path.join(self.root, "empty")
        os.makedirs(self.empty)

    def assertRefused(self, decision, *parts):
        """Assert that C{decision} is a refusal whose reason has the usual prefix and every one of C{parts}."""
        self.assertIsInstance(decision, Refusal)
        self.assertTrue(decision.reason.startswith(PREFIX), decision.reason)
        for part in parts:
            self.assertIn(part, decision.reason)


class AllowAllTests(PolicyTestCase):
    """Without --allow or --instructions, everything runs, as before."""

    def test_everything_allowed_unchanged(self):
        """The program is left as given, for the executor to look up as it always did."""
        policy = CommandPolicy()
        self.assertTrue(policy.allows_everything)
        self.assertEqual(policy.decide(["rm", "-rf", "x"], None, self.bin), "rm")
        self.assertEqual(policy.decide(["./no-such"], None, self.bin), "./no-such")
        self.assertEqual(policy.decide([SHELL, "-c", "anything"], None, self.bin, shell=True), SHELL)

    def test_describe(self):
        """The start-up line says that the node runs any command."""
        self.assertEqual(CommandPolicy().describe(), "runs any command it is given (no --allow or --instructions)")

    def test_both_or_empty_refused(self):
        """Patterns and a folder together, or an empty pattern, are programming errors."""
        self.assertRaises(ValueError, CommandPolicy, allow=["echo"], instructions=self.bin)
        self.assertRaises(ValueError, CommandPolicy, allow=["echo", ""])


class AllowTests(PolicyTestCase):
    """--allow: glob patterns over the program's name and its path."""

    def test_a_path_with_dotdot_is_matched_only_normalised(self):
        """
        A program given as a path matches a pattern as written, unless it
        climbs with "..": "/usr/bin/*" does not allow "BIN/../../x".
        """
        outside = make_program(os.path.join(self.root, "outside", "x"))
        policy = CommandPolicy(allow=[self.bin + "/*"])
        climbing = self.bin + "/../outside/x"
        self.assertRefused(policy.decide([climbing], None, self.bin), repr(climbing), f"({outside})")
        relative = CommandPolicy(allow=["./bin/tool"])
        self.assertEqual(relative.decide(["./bin/tool"], self.root, self.bin), os.path.join(self.bin, "tool"))

    def test_name_pattern(self):
        """A pattern matching argv[0] as given allows it; the path found on PATH is what starts."""
        policy = CommandPolicy(allow=["echo"])
        self.assertEqual(policy.decide(["echo", "hi"], None, self.bin), os.path.join(self.bin, "echo"))
        self.assertEqual(CommandPolicy(allow=["ec*"]).decide(["echo"], None, self.bin), os.path.join(self.bin, "echo"))

    def test_path_pattern(self):
        """A pattern matching the absolute path found on PATH allows it."""
        policy = CommandPolicy(allow=[os.path.join(self.bin, "t*")])
        self.assertEqual(policy.decide(["tool", "x"], None, self.bin), os.path.join(self.bin, "tool"))
        self.assertRefused(policy.decide(["rm"], None, self.bin), "'rm'", os.path.join(self.bin, "rm"))

    def test_path_given(self):
        """A program given with a / is taken relative to the task's folder, normalised, and matched as a path."""
        policy = CommandPolicy(allow=[self.bin + "/*"])
        self.assertEqual(policy.decide(["bin/tool"], self.root, ""), os.path.join(self.bin, "tool"))
        self.assertEqual(policy.decide(["./bin/../bin/tool"], self.root, ""), os.path.join(self.bin, "tool"))
        self.assertEqual(policy.decide([os.path.join(self.bin, "rm")], None, ""), os.path.join(self.bin, "rm"))
        self.assertRefused(policy.decide(["bin/../empty/tool"], self.root, ""), "'bin/../empty/tool'")

    def test_name_does_not_match_a_path_given(self):
        """A name pattern does not allow a path that merely ends in that name."""
        policy = CommandPolicy(allow=["tool"])
        self.assertRefused(policy.decide([os.path.join(self.bin, "tool")], None, ""), "matches no --allow pattern")

    def test_real_path_pattern(self):
        """A pattern matching the path a symlink resolves to allows the link; the link is what starts."""
        links = os.path.join(self.root, "links")
        os.makedirs(links)
        os.symlink(os.path.join(self.bin, "tool"), os.path.join(links, "alias"))
        policy = CommandPolicy(allow=[os.path.join(self.bin, "tool")])
        self.assertEqual(policy.decide(["alias"], None, links), os.path.join(links, "alias"))

    def test_search_path_order_and_relative_entries(self):
        """The first executable on PATH counts; a relative entry is taken from the task's folder."""
        other = make_program(os.path.join(self.root, "other", "tool"))
        policy = CommandPolicy(allow=["tool"])
        self.assertEqual(
            policy.decide(["tool"], None, os.pathsep.join([self.empty, os.path.dirname(other), self.bin])), other
        )
        self.assertEqual(policy.decide(["tool"], self.root, "bin"), os.path.join(self.bin, "tool"))

    def test_not_executable_is_skipped(self):
        """A file on PATH that is not executable is not what the name finds."""
        make_program(os.path.join(self.empty, "tool"), executable=False)
        policy = CommandPolicy(allow=[self.bin + "/*"])
        self.assertEqual(
            policy.decide(["tool"], None, os.pathsep.join([self.empty, self.bin])), os.path.join(self.bin, "tool")
        )

    def test_allowed_name_not_found(self):
        """An allowed name found nowhere is left as given, for the executor to report as not found."""
        self.assertEqual(CommandPolicy(allow=["missing"]).decide(["missing"], None, self.bin), "missing")

    def test_refusal_message(self):
        """A refusal names the command and the patterns, in the documented words."""
        decision = CommandPolicy(allow=["/usr/bin/true", "echo"]).decide(["rm", "-rf", "/"], None, self.empty)
        self.assertEqual(
            decision,
            Refusal(PREFIX + "'rm' matches no --allow pattern (allowed: /usr/bin/true, echo)"),
        )
        found = CommandPolicy(allow=["echo"]).decide(["rm"], None, self.bin)
        self.assertRefused(found, f"'rm' ({os.path.join(self.bin, 'rm')}) matches no --allow pattern (allowed: echo)")

    def test_shell(self):
        """A shell task's program is /bin/sh: it runs only if /bin/sh or sh is allowed."""
        argv = [SHELL, "-c", "echo hi"]
        for pattern in ("sh", SHELL, "/bin/*", "s?"):
            self.assertEqual(CommandPolicy(allow=[pattern]).decide(argv, None, self.bin, shell=True), SHELL, pattern)
        refused = CommandPolicy(allow=["echo", "bash"]).decide(argv, None, self.bin, shell=True)
        self.assertRefused(refused, "a shell task runs /bin/sh", "neither /bin/sh nor sh", "(allowed: echo, bash)")
        # What /bin/sh links to is not asked: allowing dash does not allow shell tasks.
        refused = CommandPolicy(allow=[os.path.realpath(SHELL)]).decide(argv, None, self.bin, shell=True)
        if os.path.realpath(SHELL) != SHELL:
            self.assertIsInstance(refused, Refusal)

    def test_describe(self):
        """The start-up line lists the patterns, and says when shell tasks are refused."""
        self.assertEqual(
            CommandPolicy(allow=["echo", "/usr/bin/*"]).describe(),
            "runs only commands matching --allow: echo, /usr/bin/*; shell tasks are refused",
        )
        self.assertEqual(CommandPolicy(allow=["sh"]).describe(), "runs only commands matching --allow: sh")

    def test_empty_command(self):
        """An empty argv is refused, not an IndexError."""
        self.assertRefused(CommandPolicy(allow=["*"]).decide([], None, self.bin), "no command")


class InstructionsTests(PolicyTestCase):
    """--instructions DIR: a task ["NAME", args...] runs DIR/NAME, and nothing else runs."""

    def setUp(self):
        super().setUp()
        self.folder = os.path.join(self.root, "instructions")
        make_program(os.path.join(self.folder, "render"))
        self.policy = CommandPolicy(instructions=self.folder)

    def test_plain_name(self):
        """A plain name runs that file of the folder, whatever PATH or the task's folder say."""
        self.assertEqual(self.policy.decide(["render", "-q"], self.bin, self.bin), os.path.join(self.folder, "render"))
        self.assertFalse(self.policy.allows_everything)

    def test_relative_folder_is_made_absolute(self):
        """A relative --instructions folder is taken from the node's working directory once."""
        policy = CommandPolicy(instructions=os.path.relpath(self.folder))
        self.assertEqual(policy.instructions, self.folder)
        self.assertEqual(policy.decide(["render"], None, ""), os.path.join(self.folder, "render"))

    def test_missing(self):
        """A name with no file in the folder is refused, even if it is on PATH."""
        self.assertRefused(self.policy.decide(["tool"], None, self.bin), "no instruction 'tool'", self.folder)

    def test_not_executable(self):
        """A file of the folder that is not executable is refused."""
        make_program(os.path.join(self.folder, "notes"), executable=False)
        self.assertRefused(self.policy.decide(["notes"], None, ""), "'notes' is not executable")

    def test_not_a_regular_file(self):
        """A folder inside the folder is refused, even if it is searchable."""
        os.makedirs(os.path.join(self.folder, "sub"))
        self.assertRefused(self.policy.decide(["sub"], None, ""), "'sub' is not a regular file")

    def test_not_plain_names(self):
        """Paths, absolute or relative, and . and .. are refused without looking for them."""
        for name in ("/bin/true", os.path.join(self.folder, "render"), "sub/render", "./render", "..", ".", ""):
            self.assertRefused(self.policy.decide([name], None, self.bin), "is not an instruction name", repr(name))

    def test_symlink_inside(self):
        """A link to a file of the folder runs the file it resolves to."""
        os.symlink("render", os.path.join(self.folder, "draw"))
        self.assertEqual(self.policy.decide(["draw"], None, ""), os.path.join(self.folder, "render"))

    def test_symlink_escaping(self):
        """A link resolving outside the folder is refused, naming where it leads; so is a dangling one."""
        os.symlink(os.path.join(self.bin, "rm"), os.path.join(self.folder, "rm"))
        self.assertRefused(
            self.policy.decide(["rm"], None, ""), "resolves to " + os.path.join(self.bin, "rm"), "outside"
        )
        os.symlink("../bin/../nowhere", os.path.join(self.folder, "lost"))
        self.assertRefused(self.policy.decide(["lost"], None, ""), "outside")

    def test_shell_refused(self):
        """A shell task is not an instruction."""
        refused = self.policy.decide([SHELL, "-c", "render"], None, "", shell=True)
        self.assertRefused(refused, "a shell task is not an instruction", f"only the instructions in {self.folder}")

    def test_describe(self):
        """The start-up line names the folder."""
        self.assertEqual(self.policy.describe(), f"runs only the instructions in {self.folder} (--instructions)")
