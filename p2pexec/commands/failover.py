"""
The commands of replication and master failover (issue 13).

Part of L{p2pexec.commands}, which re-exports every name.
"""

from __future__ import annotations

from twisted.protocols import amp

from p2pexec.commands.arguments import JSON, RawJSON
from p2pexec.commands.errors import (
    StaleBallot,
    UnknownJob,
    _errors,
)

# -- Replication and failover (issue 13, core) ------------------------------------------------------


class Replicate(amp.Command):
    """
    REPLICATE: a job's master sends records of the job's log to a member of
    its replica set, under its ballot (C{ballot_epoch}, C{ballot_node}).
    C{records} is a JSON list of C{{"seq", "kind", "data"}} objects, in
    seq order from C{first_seq} to C{last_seq} (optional: without it, the
    receiver decodes the records to count them).  The answer, once the
    records are durable in the receiver's journal: C{held_seq}, the highest
    seq up to which it holds every record of the job.
    """

    commandName = b"REPLICATE"
    arguments = [
        (b"job", amp.Unicode()),
        (b"ballot_epoch", amp.Integer()),
        (b"ballot_node", amp.Unicode()),
        (b"first_seq", amp.Integer()),
        (b"records", RawJSON()),
        (b"last_seq", amp.Integer(optional=True)),
    ]
    response = [(b"held_seq", amp.Integer())]
    errors = _errors(STALE_BALLOT=StaleBallot)


class Promise(amp.Command):
    """
    PROMISE: a successor asks a member of a job's replica set to promise its
    ballot (never again to take records of a lower one; written to its
    journal before it answers).  The answer: C{held_seq}, the ballot it last
    accepted records under (C{accepted_epoch} 0 and C{accepted_node} empty
    for none), and the C{records} it holds with seq above C{after_seq}
    (C{{"seq", "kind", "data", "epoch", "node"}}, as many as fit in one
    value), then C{next_seq}: the C{after_seq} to ask with for the rest, or
    -1 after the last.  A member that holds nothing of the job promises too
    (and says so: C{held_seq} 0, no records).
    """

    commandName = b"PROMISE"
    arguments = [
        (b"job", amp.Unicode()),
        (b"ballot_epoch", amp.Integer()),
        (b"ballot_node", amp.Unicode()),
        (b"after_seq", amp.Integer()),
    ]
    response = [
        (b"held_seq", amp.Integer()),
        (b"accepted_epoch", amp.Integer()),
        (b"accepted_node", amp.Unicode()),
        (b"records", JSON()),
        (b"next_seq", amp.Integer()),
    ]
    errors = _errors(STALE_BALLOT=StaleBallot)


class JobLeader(amp.Command):
    """
    JOB_LEADER: a node that took a job over tells every connected peer that
    it leads the job now, at ballot (C{ballot_epoch}, C{ballot_node}); its
    name is C{master}.  An older master of the job that hears it steps
    down; workers raise their fence for the job.
    """

    commandName = b"JOB_LEADER"
    arguments = [
        (b"job", amp.Unicode()),
        (b"ballot_epoch", amp.Integer()),
        (b"ballot_node", amp.Unicode()),
        (b"master", amp.Unicode()),
    ]
    response = []
    errors = _errors()


# -- Master failover: fencing and adoption (issue 13, fence) ----------------------------


class HeldTasks(amp.Command):
    """
    HELD_TASKS: a job's new leader (after a takeover, at ballot C{epoch} and
    its own name) asks a worker what it holds of the job.  The worker answers
    with C{running}: C{[task id, attempt]} pairs queued or running there (or
    finished, when their results did not fit in C{finished}: those come as
    EXECUTION_CONFIRMATION), and C{finished}: C{{"id", "attempt", "result"}}
    objects, results not yet acknowledged.  Its kept results of the job then
    go to the new leader as EXECUTION_CONFIRMATION.  STALE_BALLOT if the
    worker has seen a newer ballot for the job.
    """

    commandName = b"HELD_TASKS"
    arguments = [(b"job", amp.Unicode()), (b"epoch", amp.Integer())]
    response = [(b"running", JSON()), (b"finished", JSON())]
    errors = _errors(STALE_BALLOT=StaleBallot)


# -- Clients follow the job (issue 13, part 4) -------------------------------------


FORWARDED_COMMANDS = ("JOB_STATUS", "JOB_TASKS", "CANCEL_JOB", "RERUN_TASKS")
"""The client commands a node forwards (FORWARD_CLIENT) to a job's master it is connected to."""


class ForwardClient(amp.Command):
    """
    FORWARD_CLIENT, between peers (after the handshake): a node asks a job's
    master, on behalf of one of its own clients, one of the client commands
    of L{FORWARDED_COMMANDS} about a job it does not lead.  C{command} is the
    client command's name, C{arguments} its arguments as a JSON object
    (C{job}, and for JOB_TASKS C{offset} and C{limit}), C{client} says who
    asked (for the master's log line).  The answer is the client command's
    own answer, as a JSON object of its response fields.

    The receiver answers only from the jobs it leads itself: it never
    forwards again (one hop, so no loop), and answers UNKNOWN_JOB for a job
    it does not lead.  A forwarded CANCEL_JOB is taken only on a connection
    that proved the cluster key: without one, AUTH_REQUIRED (a peer proves
    nothing about the client's local token).
    """

    commandName = b"FORWARD_CLIENT"
    arguments = [
        (b"command", amp.Unicode()),
        (b"arguments", JSON()),
        (b"client", amp.Unicode()),
    ]
    response = [(b"answer", JSON())]
    errors = _errors(UNKNOWN_JOB=UnknownJob)


# -- The pre-round before a takeover (Raft's Pre-Vote) --------------------------------


class PrePromise(amp.Command):
    """
    PRE_PROMISE: a successor about to take a job over asks a member of its
    replica set whether it would promise C{ballot} (see L{Promise}), before
    anyone (itself included) promises anything.  The receiver changes
    nothing.  C{granted}: it would promise that ballot, and it has lost the
    job's leader itself (it has no live connection to the leader it knows,
    or that leader is the asker).  Otherwise C{leader_epoch} and
    C{leader_node} name the leader it still has (the receiver itself, when
    it leads the job); 0 and empty when granted.  C{STALE_BALLOT} if it
    promised a higher ballot.
    """

    commandName = b"PRE_PROMISE"
    arguments = [(b"job", amp.Unicode()), (b"ballot_epoch", amp.Integer()), (b"ballot_node", amp.Unicode())]
    response = [(b"granted", amp.Boolean()), (b"leader_epoch", amp.Integer()), (b"leader_node", amp.Unicode())]
    errors = _errors(STALE_BALLOT=StaleBallot)
