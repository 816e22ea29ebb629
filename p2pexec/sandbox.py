"""
Where a task with files runs: a fresh folder per attempt, its inputs placed
in it from the blob store, and its declared outputs collected from it once
the task ends.

Layout: C{STATE/sandboxes/JOB/TASK/ATTEMPT/} (job and task names made safe
for a file name), removed after the attempt and swept when the node starts.

Nothing placed or collected may leave the task's folder: input names and
output patterns are relative without C{..} (L{check_relative}), an input is
never written through a symlink leading out, and an output that is a
symlink, or lies under one, leading out is refused.  Each refusal is one
sentence naming the path and the reason.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import secrets
import shutil
import stat
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from p2pexec.log import NodeLogger
from p2pexec.safepaths import PathRefused, check_relative, is_inside, safe_name

if TYPE_CHECKING:
    from p2pexec.blobs import BlobStore

__all__ = ["PathRefused", "Sandboxes", "check_relative", "collect_outputs", "input_name", "place_inputs"]

log = NodeLogger()


def input_name(submitted: str) -> str:
    """
    Where an input submitted as C{submitted} lands in the task's folder: a
    relative path without C{..} keeps its relative path (C{data/a.csv}); an
    absolute path, or one with C{..}, lands as its base name (C{model.bin}).
    L{PathRefused} if no usable name is left (C{/}, C{..}).
    """
    try:
        return check_relative(submitted, "input")
    except PathRefused:
        if "\0" in submitted:
            raise
    base = posixpath.basename(posixpath.normpath(submitted))
    if base in ("", ".", ".."):
        raise PathRefused(f"input {submitted!r} is refused: it leaves no file name to place it under.")
    return base


def _remove_error(function: Callable[..., Any], path: str, _info: Any) -> None:
    """An C{rmtree} error: make the parent folder writable and try once more (a task may chmod its folders)."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        function(path)
    except OSError as e:
        log.warn("Could not remove {path} from a sandbox: {error}", path=path, error=e)


class Sandboxes:
    """The sandboxes of one node, in C{root} (C{STATE/sandboxes})."""

    def __init__(self, root: str) -> None:
        """Use C{root} (created if needed), removing every sandbox a previous run left."""
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.sweep()

    def sweep(self) -> None:
        """Remove everything under C{root}: the sandboxes of attempts no longer running."""
        for entry in os.scandir(self.root):
            self.remove(entry.path)

    def create(self, job: str, task: str, attempt: int) -> str:
        """
        A fresh empty folder for this attempt of C{task} of C{job}, and its
        path; a folder already there (a retry of the same attempt) is removed
        first.
        """
        directory = os.path.join(self.root, safe_name(job), safe_name(task), str(int(attempt)))
        self.remove(directory)
        for _ in range(2):
            try:
                os.makedirs(directory)
                return directory
            except FileNotFoundError:
                # Another attempt's removal (in a thread) took an empty job or
                # task folder away between two steps of makedirs: again.
                continue
        os.makedirs(directory)
        return directory

    def remove(self, directory: str) -> None:
        """
        Remove C{directory} and everything in it (never following a symlink
        out), then its job and task folders if they are left empty.  Never
        raises: what cannot be removed is logged.
        """
        try:
            if os.path.islink(directory) or not os.path.isdir(directory):
                os.unlink(directory)
            else:
                shutil.rmtree(directory, onerror=_remove_error)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("Could not remove the sandbox {path}: {error}", path=directory, error=e)
        parent = os.path.dirname(os.path.abspath(directory))
        while parent != self.root and is_inside(parent, self.root):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)


def place_inputs(store: BlobStore, directory: str, inputs: Sequence[tuple[str, str]]) -> None:
    """
    Copy each (name, digest) blob to C{directory/name}, creating its parent
    folders; a file already there is replaced (a symlink there is replaced
    itself, never written through).  L{PathRefused} if a name climbs out or
    the real path of its folder leads outside C{directory} (a symlink in a
    task's own C{cwd}); KeyError if the store lacks the blob.
    """
    real_root = os.path.realpath(directory)
    for name, digest in inputs:
        relative = check_relative(name, "input")
        target = os.path.join(directory, relative)
        parent = os.path.dirname(target)
        if not is_inside(os.path.realpath(parent), real_root):
            raise PathRefused(
                f"input {name!r} is refused: its folder {os.path.dirname(relative)!r} is a symlink leading out of "
                f"{directory}."
            )
        if not store.has(digest):
            raise KeyError(digest)
        os.makedirs(parent, exist_ok=True)
        if os.path.isdir(target) and not os.path.islink(target):
            raise PathRefused(f"input {name!r} cannot be placed: {target} is a folder.")
        temp = os.path.join(parent, f".p2pexec-input.{secrets.token_hex(6)}")
        try:
            shutil.copyfile(store.path_of(digest), temp)
            os.replace(temp, target)
        except FileNotFoundError:
            _unlink_quietly(temp)
            raise KeyError(digest) from None
        except BaseException:
            _unlink_quietly(temp)
            raise


def _unlink_quietly(path: str) -> None:
    """Remove C{path} if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


MAX_MATCHES = 10_000
"""The most files the output patterns of one attempt may match (a result lists far fewer: see the file runner)."""


def _segment_matches(pattern: str, name: str) -> bool:
    """One path segment against one glob segment, as C{glob} does: a wildcard does not match a leading dot."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _matches(pattern: Sequence[str], path: Sequence[str]) -> bool:
    """Whether the path's segments match the pattern's (C{**}: any number of folders, none included)."""
    if not pattern:
        return not path
    if pattern[0] == "**":
        return _matches(pattern[1:], path) or (
            bool(path) and not path[0].startswith(".") and _matches(pattern, path[1:])
        )
    return bool(path) and _segment_matches(pattern[0], path[0]) and _matches(pattern[1:], path[1:])


def _may_match_below(pattern: Sequence[str], folder: Sequence[str]) -> bool:
    """Whether a file somewhere below C{folder} could match the pattern (so the walk goes into it)."""
    if not folder:
        return bool(pattern)
    if not pattern:
        return False
    if pattern[0] == "**":
        return True
    return _segment_matches(pattern[0], folder[0]) and _may_match_below(pattern[1:], folder[1:])


def collect_outputs(
    directory: str, patterns: Sequence[tuple[str, bool]], max_transfer: int
) -> tuple[list[tuple[str, str]], str | None]:
    """
    The files matching the (glob, optional) C{patterns} in C{directory}, as
    sorted, deduplicated (relative path, absolute real path) pairs, and the
    first problem found as one sentence (or None; the problem of the first
    pattern that has one).

    Globs are relative to C{directory} (C{*}, C{?} and C{[...]} within a
    name; C{**} for any number of folders); only regular files count.  The
    folder is walked once, and only where a pattern could match: a symlinked
    folder is followed only if it leads inside C{directory}, and each real
    folder is visited once, so a symlink loop ends the walk instead of
    hanging it.  A problem: a pattern that is absolute or has C{..}; a match
    that is a symlink leading out of C{directory}, or a symlinked folder
    leading out that a pattern reaches into; a file over C{max_transfer}
    bytes; a pattern not optional that matched no file; more than
    L{MAX_MATCHES} files.  The files without problems are returned even when
    there is one, so a caller may still keep them.
    """
    real_root = os.path.realpath(directory)
    problems: list[str | None] = [None] * len(patterns)
    matched = [False] * len(patterns)
    split: list[list[str] | None] = []
    for index, (pattern, _optional) in enumerate(patterns):
        try:
            split.append(check_relative(pattern, "output pattern").split("/"))
        except PathRefused as e:
            problems[index] = str(e)
            split.append(None)
    found: dict[str, str] = {}
    visited: set[str] = set()
    too_many = False

    def note(segments: list[str], problem: str) -> None:
        for index, pattern in enumerate(split):
            if pattern is not None and problems[index] is None and _matches(pattern, segments):
                problems[index] = problem

    def walk(real_folder: str, prefix: list[str]) -> None:
        nonlocal too_many
        if real_folder in visited or too_many:
            return
        visited.add(real_folder)
        try:
            names = sorted(os.listdir(real_folder))
        except OSError:
            return
        for name in names:
            segments = [*prefix, name]
            relative = "/".join(segments)
            path = os.path.join(real_folder, name)
            try:
                info = os.stat(path)
            except OSError:
                continue  # a dangling symlink, or gone already
            linked = os.path.islink(path)
            if stat.S_ISDIR(info.st_mode):
                if not any(p is not None and _may_match_below(p, segments) for p in split):
                    continue
                real = os.path.realpath(path) if linked else path
                if linked and not is_inside(real, real_root):
                    for index, pattern in enumerate(split):
                        if pattern is not None and problems[index] is None and _may_match_below(pattern, segments):
                            problems[index] = (
                                f"output {relative!r} is refused: it is a symlink leading out of {directory}."
                            )
                    continue
                walk(real, segments)
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            hits = [i for i, p in enumerate(split) if p is not None and _matches(p, segments)]
            if not hits:
                continue
            real = os.path.realpath(path)
            if not is_inside(real, real_root):
                note(segments, f"output {relative!r} is refused: it is a symlink leading out of {directory}.")
                continue
            for index in hits:
                matched[index] = True
            if info.st_size > max_transfer:
                note(
                    segments,
                    f"output {relative!r} is {info.st_size:,} bytes, over the --max-transfer limit of "
                    f"{max_transfer:,} bytes.",
                )
                continue
            found.setdefault(relative, real)
            if len(found) > MAX_MATCHES:
                too_many = True
                return

    walk(real_root, [])
    if too_many:
        return sorted(found.items()), (
            f"the output patterns matched more than {MAX_MATCHES:,} files; archive them into fewer files, "
            f"or narrow the patterns."
        )
    for index, (pattern, optional) in enumerate(patterns):
        if problems[index] is None and split[index] is not None and not matched[index] and not optional:
            problems[index] = f"declared output {pattern!r} matched no file."
    error = next((problem for problem in problems if problem is not None), None)
    return sorted(found.items()), error
