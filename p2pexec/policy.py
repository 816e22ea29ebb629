"""
The commands a node is willing to run: its command policy.

By default a worker runs whatever command a master assigns it.  Two options
narrow that (see C{docs/security.rst}):

  - C{--allow PATTERN} (repeatable): a command runs only if a glob pattern
    matches its program's name as given (C{argv[0]}), the absolute path
    where it was found, or the path that resolves to once symlinks are
    followed.  A shell task's program is C{/bin/sh}, named C{sh}.
  - C{--instructions DIR}: a task C{["NAME", args...]} runs C{DIR/NAME}, a
    regular executable file of that folder; nothing else runs.

L{CommandPolicy.decide} only looks at the candidate file (stat, realpath,
access): it starts nothing and logs nothing, so the executor stays the one
place that runs processes.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Sequence

import attr

SHELL = "/bin/sh"
"""The program of a C{shell = true} task."""

SHELL_NAME = "sh"
"""The name a shell task's program goes by in C{--allow} patterns."""

_REFUSED = "refused by this node's command policy: "

INJECTING_VARIABLES = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "IFS",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "GETCONF_DIR",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONINSPECT",
        "PYTHONUSERBASE",
        "PYTHONBREAKPOINT",
        "PERL5LIB",
        "PERLLIB",
        "PERL5OPT",
        "PERL5DB",
        "RUBYOPT",
        "RUBYLIB",
        "NODE_OPTIONS",
        "NODE_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "LUA_INIT",
        "LUA_PATH",
        "LUA_CPATH",
        "TCLLIBPATH",
        "GIT_EXEC_PATH",
        "GIT_CONFIG_PARAMETERS",
        "OPENSSL_CONF",
        "OPENSSL_ENGINES",
    }
)
"""Variables that make a program load or run code named by the variable, refused under a command policy."""

INJECTING_PREFIXES = ("LD_", "DYLD_", "BASH_FUNC_", "MALLOC_", "GLIBC_TUNABLES")
"""Prefixes of such variables: the dynamic loader's, exported bash functions, the C library's tunables."""


def is_injecting_variable(name: str) -> bool:
    """Whether setting C{name} in a task's environment could run code the policy did not allow."""
    return name in INJECTING_VARIABLES or name.startswith(INJECTING_PREFIXES)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Refusal:
    """
    A command this node will not run.

    @ivar reason: the whole message for the task's result: it names the
        command and the rule that refused it.
    """

    reason: str


Decision = str | Refusal
"""The executable to start, or why nothing starts."""


class CommandPolicy:
    """
    Decides whether a task's command may run on this node, and which file
    it runs.  With neither patterns nor a folder, everything may run.

    @ivar allow: the C{--allow} glob patterns.
    @ivar instructions: the C{--instructions} folder (absolute), or C{None}.
    """

    def __init__(self, allow: Sequence[str] = (), instructions: str | None = None) -> None:
        """
        @raise ValueError: for both patterns and a folder, or an empty pattern.
        """
        if allow and instructions is not None:
            raise ValueError("give --allow patterns or an --instructions folder, not both")
        if any(not pattern for pattern in allow):
            raise ValueError("an --allow pattern cannot be empty")
        self.allow = tuple(allow)
        self.instructions = None if instructions is None else os.path.abspath(instructions)

    @property
    def allows_everything(self) -> bool:
        """Whether any command at all may run."""
        return not self.allow and self.instructions is None

    def describe(self) -> str:
        """What this node runs, in words, for its start-up log line."""
        if self.instructions is not None:
            return f"runs only the instructions in {self.instructions} (--instructions)"
        if self.allow:
            shell = "" if self._matches((SHELL, SHELL_NAME)) else "; shell tasks are refused"
            return f"runs only commands matching --allow: {', '.join(self.allow)}{shell}"
        return "runs any command it is given (no --allow or --instructions)"

    def decide(self, argv: Sequence[str], cwd: str | None, search_path: str, shell: bool = False) -> Decision:
        """
        May C{argv} run here, and which file does it start?

        @param argv: the program and its arguments; for a shell task,
            C{[SHELL, "-c", COMMAND]}.
        @param cwd: the task's working directory, or C{None} for the node's.
        @param search_path: the C{PATH} of the task's environment.
        @param shell: whether this is a C{shell = true} task.
        @return: the executable to start (with C{argv} as its arguments):
            an absolute path when the policy looked the program up, else
            C{argv[0]} as given, for the executor to look up as usual; or a
            L{Refusal}.
        """
        if not argv:
            return Refusal(_REFUSED + "the task has no command")
        if self.instructions is not None:
            return self._instruction(argv[0], shell)
        if self.allow:
            return self._allowed(argv[0], cwd, search_path, shell)
        return argv[0]

    def check_environment(self, names: Sequence[str]) -> Refusal | None:
        """
        Under C{--allow} or C{--instructions}, refuse a task that sets a
        variable that makes an allowed program load or run other code
        (C{LD_PRELOAD}, C{BASH_ENV}, C{PYTHONPATH} ... see
        L{INJECTING_VARIABLES}); with no policy, anything goes.
        """
        if self.allows_everything:
            return None
        bad = sorted(name for name in names if is_injecting_variable(name))
        if not bad:
            return None
        return Refusal(
            f"{_REFUSED}the task sets {', '.join(bad)}, which could make an allowed program run "
            f"code the policy did not allow"
        )

    def _matches(self, candidates: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(candidate, pattern) for pattern in self.allow for candidate in candidates)

    def _allowed(self, program: str, cwd: str | None, search_path: str, shell: bool) -> Decision:
        """The C{--allow} rule: a pattern matches the name, the path found, or its real path."""
        allowed = f"(allowed: {', '.join(self.allow)})"
        if shell:
            # Exactly /bin/sh or sh: what /bin/sh links to is not asked.
            if self._matches((SHELL, SHELL_NAME)):
                return SHELL
            return Refusal(
                f"{_REFUSED}a shell task runs {SHELL}, and neither {SHELL} nor {SHELL_NAME} "
                f"matches an --allow pattern {allowed}"
            )
        found = find_program(program, cwd, search_path)
        # The program as given is a candidate unless it climbs with "..":
        # "/usr/bin/../../tmp/x" would pass "/usr/bin/*" (fnmatch's * crosses
        # "/"); such a path is matched only once normalised.
        candidates = [] if os.pardir in program.split(os.sep) else [program]
        if found is not None:
            candidates += [found, os.path.realpath(found)]
        if self._matches(candidates):
            # The path that matched is the one started, not looked up again.
            return program if found is None else found
        where = "" if found is None or found == program else f" ({found})"
        return Refusal(f"{_REFUSED}{program!r}{where} matches no --allow pattern {allowed}")

    def _instruction(self, name: str, shell: bool) -> Decision:
        """The C{--instructions} rule: a plain name of a regular executable file in the folder."""
        folder = self.instructions
        assert folder is not None
        rule = f"this node runs only the instructions in {folder} (--instructions)"
        if shell:
            return Refusal(f"{_REFUSED}a shell task is not an instruction; {rule}")
        if not name or os.sep in name or name in (os.curdir, os.pardir):
            return Refusal(f"{_REFUSED}{name!r} is not an instruction name (a plain file name); {rule}")
        path = os.path.join(folder, name)
        real_folder = os.path.realpath(folder)
        real = os.path.realpath(path)
        if os.path.commonpath([real_folder, real]) != real_folder:
            return Refusal(f"{_REFUSED}instruction {name!r} resolves to {real}, outside {folder}; {rule}")
        try:
            mode = os.stat(real).st_mode
        except OSError:
            return Refusal(f"{_REFUSED}there is no instruction {name!r}; {rule}")
        if not stat.S_ISREG(mode):
            return Refusal(f"{_REFUSED}instruction {name!r} is not a regular file; {rule}")
        if not os.access(real, os.X_OK):
            return Refusal(f"{_REFUSED}instruction {name!r} is not executable; {rule}")
        # The file checked is the one started: a link inside the folder is followed now.
        return real


def find_program(program: str, cwd: str | None, search_path: str) -> str | None:
    """
    The absolute, normalised path C{program} names: itself, relative to
    C{cwd}, if it has a C{/}; else the first executable file of that name
    on C{search_path} (relative entries taken from C{cwd}, as C{exec} would
    once in it), or C{None}.
    """
    base = os.path.abspath(cwd) if cwd is not None else os.getcwd()
    if os.sep in program:
        return os.path.normpath(os.path.join(base, program))
    for folder in search_path.split(os.pathsep):
        candidate = os.path.normpath(os.path.join(base, folder or os.curdir, program))
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
