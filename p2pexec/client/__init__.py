"""
The Python client of p2pexec: submit, follow, inspect and cancel jobs on
a running node, and read its tasks' output; documented, with examples, in
C{docs/client.rst}.

Two ways in:

 - L{Client}, blocking, for scripts and notebooks: it runs Twisted's
   reactor in a background thread (L{p2pexec.client.blocking});
 - L{connect}, for Twisted programs: an L{AsyncClient} whose methods return
   Deferreds and async iterators (L{p2pexec.client.api}).

The package has a module per job, from the outside in:

 - L{p2pexec.client.blocking}: L{Client} and L{Job};
 - L{p2pexec.client.api}: L{connect} and L{AsyncClient};
 - L{p2pexec.client.results}: the typed answers (L{JobRef}, L{JobStatus},
   L{TaskResult}, L{JobResult});
 - L{p2pexec.client.calls}: the client commands over one node, on the
   wire's dicts (the C{p2pexec} command's subcommands use them too);
 - L{p2pexec.client.keys}: which key to prove (a key file, or the node's
   local token);
 - L{p2pexec.client.connection}: L{NodeClient}, one AMP connection
   (authentication, TLS), and addresses;
 - L{p2pexec.client.errors}: L{ClientError} and its subclasses.
"""

from __future__ import annotations

from p2pexec.client.api import AsyncClient, LogPieces, connect
from p2pexec.client.blocking import Client, Job, Logs
from p2pexec.client.connection import NodeClient, parse_address
from p2pexec.client.errors import (
    AuthenticationFailed,
    BadAddress,
    ClientClosed,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    JobNotFound,
    JobRefused,
    KeyProblem,
    NodeError,
    OutputGone,
    OutputNotReady,
    TaskNotFound,
)
from p2pexec.client.results import JobRef, JobResult, JobStatus, TaskResult

__all__ = [
    "AsyncClient",
    "AuthenticationFailed",
    "BadAddress",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectFailed",
    "ConnectionLost",
    "Job",
    "JobNotFound",
    "JobRef",
    "JobRefused",
    "JobResult",
    "JobStatus",
    "KeyProblem",
    "LogPieces",
    "Logs",
    "NodeClient",
    "NodeError",
    "OutputGone",
    "OutputNotReady",
    "TaskNotFound",
    "TaskResult",
    "connect",
    "parse_address",
]
