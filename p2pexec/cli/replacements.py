"""
GNU parallel's replacement strings, for C{p2pexec run}: what each task's
command becomes once its arguments (a value from each input source, see
L{p2pexec.cli.sources}) and its sequence number are known.

 - C{{}}: the arguments; C{{.}}: without their extension; C{{/}}: their
   base name; C{{//}}: their directory; C{{/.}}: their base name without
   its extension (each as GNU parallel computes it, with the same Perl
   expressions);
 - C{{1}}, C{{2}}, ...: the value of input source 1, 2, ...; with the same
   modifiers: C{{1.}}, C{{1/}}, C{{1//}}, C{{1/.}};
 - C{{#}}: the task's sequence number, from 1, in argument order.

With several sources C{{}} (and C{{.}} ...) stands for every value, each
changed, joined by spaces, as GNU parallel's command line has them.  In a
command run without a shell, a word that is only such a string becomes one
word per value; elsewhere in a word the values are joined by a space.  With
C{--shell} each value is shell-quoted.  A command without any replacement
string gets the arguments appended, one word each.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence

from p2pexec.cli.errors import CliError

REPLACEMENT = re.compile(r"\{(?:(?P<sequence>#)|(?P<position>[0-9]+)?(?P<how>//|/\.|/|\.)?)\}")
"""A replacement string: C{{}}, C{{.}}, C{{/}}, C{{//}}, C{{/.}}, C{{#}}, and C{{N}} with the same modifiers."""

_EXTENSION = re.compile(r"\.[^/.]*$")
_UP_TO_SLASH = re.compile(r".*/")
_FILEPARSE = re.compile(r"^(.*/)?(.*)", re.DOTALL)
_TRAILING_SLASHES = re.compile(r"(.)/*\Z", re.DOTALL)


def without_extension(value: str) -> str:
    """C{{.}}: GNU parallel's C{s:\\.[^/.]*$::}."""
    return _EXTENSION.sub("", value, count=1)


def base_name(value: str) -> str:
    """C{{/}}: GNU parallel's C{s:.*/::}."""
    return _UP_TO_SLASH.sub("", value, count=1)


def _fileparse(path: str) -> tuple[str, str]:
    match = _FILEPARSE.match(path)
    assert match is not None  # it matches any text
    return match.group(1) or "./", match.group(2)


def dir_name(value: str) -> str:
    """
    C{{//}}: Perl's C{File::Basename::dirname}, which GNU parallel uses:
    C{.} for a name without a directory, C{/} for the root, and trailing
    slashes dropped first (C{dir/} is in C{.}).
    """
    directory, base = _fileparse(value)
    directory = _TRAILING_SLASHES.sub(r"\1", directory, count=1)
    if not base:
        directory, _ = _fileparse(directory)
        directory = _TRAILING_SLASHES.sub(r"\1", directory, count=1)
    return directory


def base_without_extension(value: str) -> str:
    """C{{/.}}: the base name, without its extension."""
    return without_extension(base_name(value))


MODIFIERS: dict[str | None, Callable[[str], str]] = {
    None: lambda value: value,
    ".": without_extension,
    "/": base_name,
    "//": dir_name,
    "/.": base_without_extension,
}


def check_positions(command: Sequence[str], sources: int) -> None:
    """
    Refuse a positional replacement string that names no source.

    @raise CliError: naming the first such string.
    """
    for word in command:
        for match in REPLACEMENT.finditer(word):
            position = match.group("position")
            if position is not None and not 1 <= int(position) <= sources:
                have = "1 input source" if sources == 1 else f"{sources} input sources"
                raise CliError(
                    f"run: {match.group()} names input source {int(position)}, but there "
                    f"{'is' if sources == 1 else 'are'} {have} (numbered from 1)"
                )


def _values(match: re.Match[str], arguments: Sequence[str], sequence: int) -> list[str]:
    if match.group("sequence"):
        return [str(sequence)]
    change = MODIFIERS[match.group("how")]
    position = match.group("position")
    if position is not None:
        return [change(arguments[int(position) - 1])]
    return [change(value) for value in arguments]


def has_replacements(command: Sequence[str]) -> bool:
    """Whether any word of C{command} holds a replacement string."""
    return any(REPLACEMENT.search(word) for word in command)


def expand_argv(command: Sequence[str], arguments: Sequence[str], sequence: int) -> list[str]:
    """
    The argv of one task: each replacement string in each word replaced; a
    word that is one multi-valued string becomes one word per value.
    Without any replacement string, the arguments are appended.

    @param sequence: the task's sequence number (C{{#}}), from 1.
    """
    if not has_replacements(command):
        return [*command, *arguments]
    argv: list[str] = []
    for word in command:
        whole = REPLACEMENT.fullmatch(word)
        if whole is not None:
            argv.extend(_values(whole, arguments, sequence))
        else:
            argv.append(REPLACEMENT.sub(lambda match: " ".join(_values(match, arguments, sequence)), word))
    return argv


def expand_shell(command: Sequence[str], arguments: Sequence[str], sequence: int) -> str:
    """
    The shell command line of one task: the words joined by spaces, each
    replacement string replaced by its values, shell-quoted and joined by
    spaces.  Without any replacement string, the quoted arguments are appended.
    """
    line = " ".join(command)
    if not REPLACEMENT.search(line):
        return " ".join([line, *(shlex.quote(value) for value in arguments)])
    return REPLACEMENT.sub(
        lambda match: " ".join(shlex.quote(value) for value in _values(match, arguments, sequence)), line
    )
