"""
A node's local token: what lets its owner, and nobody else, change it
without a cluster key.

Without C{--key-file}, a node on loopback would take jobs from anyone who
can reach its ports, other users of the machine included.  So each node
keeps a random 256-bit token in its state directory (L{TOKEN_FILE}, mode
0600, made once and reused across restarts), in the format of a key file.
Submitting and cancelling need it, over AMP (the client proves it with the
same challenge-response as a cluster key, see L{p2pexec.peer}) and over
HTTP (C{Authorization: Bearer} its L{p2pexec.auth.http_token}).

The client finds it by itself, as Jupyter's does: each node writes a small
runtime record (L{write_record}) in the user's own
C{$XDG_STATE_HOME/p2pexec/nodes/} naming its address, port and state
directory; the client of the same user looks there for the node it talks
to (L{find_token}).  Another user has neither the record nor the right to
read the token.  See C{docs/security.rst}.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any

from p2pexec.auth import KeyFileError, generate_key, load_key

TOKEN_FILE = "local-token"
"""The token's file in a node's state directory (64 hexadecimal digits, mode 0600)."""


class LocalTokenError(ValueError):
    """The local token cannot be made or read; the message says which file and why."""


def token_path(state_dir: str) -> str:
    """The local token's file in C{state_dir}."""
    return os.path.join(state_dir, TOKEN_FILE)


def load_or_create(state_dir: str) -> bytes:
    """
    The node's local token: read from C{state_dir}, or made there first
    (atomically: written to a temporary file of mode 0600, then linked into
    place, so that a reader never sees half a token and two nodes starting
    at once agree on one).

    @raise LocalTokenError: if the folder cannot be written, or the file is
        not a token readable by its owner only.
    """
    path = token_path(state_dir)
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        if not os.path.lexists(path):
            temporary = f"{path}.{os.getpid()}.tmp"
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(descriptor, "w", encoding="ascii") as f:
                    f.write(generate_key() + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    pass  # another node made it first: use theirs
            finally:
                os.unlink(temporary)
    except OSError as e:
        raise LocalTokenError(f"local token {path}: cannot be made: {e.strerror}") from None
    try:
        return load_key(path)
    except KeyFileError as e:
        raise LocalTokenError(str(e).replace("key file", "local token", 1)) from None


def runtime_dir(environ: dict[str, str] | None = None) -> str:
    """C{$XDG_STATE_HOME/p2pexec/nodes}, with XDG's default C{~/.local/state}: where nodes leave their records."""
    environ = dict(os.environ) if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "p2pexec", "nodes")


def record_path(interface: str, port: int, environ: dict[str, str] | None = None) -> str:
    """The runtime record of the node on C{interface:port}."""
    return os.path.join(runtime_dir(environ), f"{interface}-{port}.json")


def write_record(
    interface: str, port: int, name: str, state_dir: str, web: int | None, environ: dict[str, str] | None = None
) -> str:
    """
    Write the runtime record of a node that uses a local token (mode 0600,
    replaced atomically), and remove the records of nodes of this host that
    are no longer running; return its path.

    @raise OSError: if it cannot be written.
    """
    folder = runtime_dir(environ)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for stale in _records(folder):
        if stale[1].get("host") == socket.gethostname() and not _alive(stale[1].get("pid")):
            _remove_quietly(stale[0])
    record = {
        "name": name,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "interface": interface,
        "port": port,
        "web": web,
        "token_file": os.path.abspath(token_path(state_dir)),
    }
    path = record_path(interface, port, environ)
    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(temporary, path)
    return path


def remove_record(path: str) -> None:
    """Remove this process's runtime record (one another node has taken over since is left alone)."""
    for found, record in _records(os.path.dirname(path)):
        if found == path and record.get("pid") == os.getpid():
            _remove_quietly(path)


def find_token(host: str, port: int, environ: dict[str, str] | None = None) -> tuple[bytes, dict[str, Any]] | None:
    """
    The local token of this user's running node at C{host:port}, and its
    record; None if there is none (no such node of this user, or it has a
    cluster key).  Only records and tokens that belong to this user are
    read.

    @raise LocalTokenError: if the record names a token that cannot be read
        (its mode was changed, say).
    """
    wanted = _canonical(host)
    loopback = wanted in ("localhost", "::1") or wanted.startswith("127.")
    own_names = {_canonical(socket.gethostname())}
    candidates: list[dict[str, Any]] = []
    for _, record in _records(runtime_dir(environ)):
        if record.get("port") != port or record.get("host") != socket.gethostname() or not _alive(record.get("pid")):
            continue
        interface = str(record.get("interface"))
        if interface == wanted:
            candidates.insert(0, record)
        elif (loopback and interface.startswith("127.")) or wanted in own_names:
            candidates.append(record)
    for record in candidates[:1]:
        path = record.get("token_file")
        if not isinstance(path, str):
            continue
        try:
            return load_key(path), record
        except KeyFileError as e:
            raise LocalTokenError(str(e).replace("key file", "local token", 1)) from None
    return None


def _canonical(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _records(folder: str) -> list[tuple[str, dict[str, Any]]]:
    """The records in C{folder} that this user owns and only this user can change, with their paths."""
    found = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
                continue
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            found.append((path, record))
    return found


def _alive(pid: Any) -> bool:
    """Whether process C{pid} is running (and this user may signal it)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
