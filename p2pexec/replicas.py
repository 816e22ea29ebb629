"""
Who holds a job's records, and who leads it: the replica set, ballots and
majorities of master failover (see C{docs/reliability.rst}).

Everything here is pure: names in, names out.  A job's replica set is its
master plus C{K} successors ranked by rendezvous hashing of the job id, so
that every node that knows the same live names picks the same successors,
and a node joining or leaving moves only the jobs it ranks first for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import attr


def rendezvous_score(job: str, node: str) -> int:
    """The weight of C{node} for C{job}: the first 8 bytes of SHA-256(job NUL node), big-endian."""
    digest = hashlib.sha256(job.encode("utf-8") + b"\0" + node.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def rank_successors(job: str, master: str, live: Iterable[str], count: int) -> tuple[str, ...]:
    """
    The C{count} successors of C{master} for C{job}: the other live nodes,
    highest rendezvous score first (ties, which SHA-256 makes theoretical,
    by name).  Fewer when fewer nodes live.
    """
    if count <= 0:
        return ()
    others = {name for name in live if name != master}
    ranked = sorted(others, key=lambda name: (-rendezvous_score(job, name), name))
    return tuple(ranked[:count])


def majority(size: int) -> int:
    """How many members of a replica set of C{size} make a majority."""
    if size < 1:
        raise ValueError(f"a replica set has at least one member, not {size}")
    return size // 2 + 1


@attr.s(frozen=True, slots=True, order=True, auto_attribs=True)
class Ballot:
    """
    Who leads a job, and since when: the epoch, then the leader's name (so
    two nodes that try the same epoch at once are ordered).  A replica that
    promised a ballot refuses the records and acknowledgements of every
    lower one.
    """

    epoch: int
    node: str

    def successor(self, node: str) -> Ballot:
        """The ballot with which C{node} takes over from this one."""
        return Ballot(self.epoch + 1, node)

    def describe(self) -> str:
        """C{epoch 2 (n3)}, for log lines."""
        return f"epoch {self.epoch} ({self.node})"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ReplicaSet:
    """
    A job's replica set, fixed when the job is accepted: its first master,
    then its successors in rank order.  A takeover changes who leads, never
    who the members are.
    """

    members: tuple[str, ...]

    @classmethod
    def choose(cls, job: str, master: str, live: Iterable[str], replicas: int) -> ReplicaSet:
        """The set for C{job} accepted by C{master} with C{replicas} successors among C{live}."""
        return cls((master, *rank_successors(job, master, live, replicas)))

    @property
    def majority(self) -> int:
        """How many members must hold a record for it to be committed."""
        return majority(len(self.members))

    def successors_of(self, master: str) -> tuple[str, ...]:
        """The members other than C{master}, in rank order: who takes over first."""
        return tuple(name for name in self.members if name != master)

    def rank(self, node: str, dead: Iterable[str] = ()) -> int | None:
        """
        C{node}'s place (1 for the first) among the live successors of the
        set's first member, or C{None} if it is not one; a successor waits
        its rank times the grace period before it tries to take over.
        """
        gone = set(dead)
        live = [name for name in self.members[1:] if name not in gone]
        return live.index(node) + 1 if node in live else None


def stale_description(job: str, newer: Ballot, message: str) -> str:
    """
    The description of a STALE_BALLOT error about C{job} (the one format,
    wherever it is raised): JSON, C{{"job", "epoch", "leader", "message"}},
    naming the C{newer} ballot the receiver has seen or promised, and a
    sentence for people.
    """
    return json.dumps({"job": job, "epoch": newer.epoch, "leader": newer.node, "message": message})


def parse_stale(description: str) -> Ballot | None:
    """The newer ballot a STALE_BALLOT description names, or C{None} if it names none."""
    try:
        value = json.loads(description)
        epoch, leader = value["epoch"], value["leader"]
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not isinstance(leader, str):
        return None
    return Ballot(epoch, leader)
