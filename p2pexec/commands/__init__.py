"""
The AMP commands of the p2pexec wire protocol: declarations only.

Each command pins its wire name (the message name of the original system)
and declares every error it can answer with, so that a refusal keeps the
connection open.  Lists travel as one JSON value per AMP key; a list longer
than one AMP value allows (65,535 bytes) is split into several commands by
L{chunk} (see L{p2pexec.chunking}).

The full contract, with every field and error, is in C{docs/protocol.rst}.
The declarations live in this package's modules, one per group of
commands; this module re-exports every name, so C{commands.X} works.
"""

from __future__ import annotations

from p2pexec.chunking import MAX_VALUE_BYTES as MAX_VALUE_BYTES
from p2pexec.chunking import Chunk as Chunk
from p2pexec.chunking import chunk as chunk
from p2pexec.chunking import encode_json as encode_json
from p2pexec.chunking import encode_result_within as encode_result_within
from p2pexec.commands.arguments import JSON as JSON
from p2pexec.commands.arguments import RawJSON as RawJSON
from p2pexec.commands.backups import CancelAttempts as CancelAttempts
from p2pexec.commands.client import CLIENT_OUTPUT_TAIL as CLIENT_OUTPUT_TAIL
from p2pexec.commands.client import TASK_OUTPUT_LIMIT as TASK_OUTPUT_LIMIT
from p2pexec.commands.client import CancelJob as CancelJob
from p2pexec.commands.client import ClusterStatus as ClusterStatus
from p2pexec.commands.client import JobStatus as JobStatus
from p2pexec.commands.client import JobTasks as JobTasks
from p2pexec.commands.client import ListJobs as ListJobs
from p2pexec.commands.client import NodeStatus as NodeStatus
from p2pexec.commands.client import RerunTasks as RerunTasks
from p2pexec.commands.client import SubmitJob as SubmitJob
from p2pexec.commands.client import TaskOutput as TaskOutput
from p2pexec.commands.errors import _COMMON_ERRORS as _COMMON_ERRORS
from p2pexec.commands.errors import AuthFailed as AuthFailed
from p2pexec.commands.errors import AuthRequired as AuthRequired
from p2pexec.commands.errors import BadArguments as BadArguments
from p2pexec.commands.errors import BadJob as BadJob
from p2pexec.commands.errors import ClusterMismatch as ClusterMismatch
from p2pexec.commands.errors import ConnectRequired as ConnectRequired
from p2pexec.commands.errors import DoesNotFit as DoesNotFit
from p2pexec.commands.errors import DuplicateConnection as DuplicateConnection
from p2pexec.commands.errors import JobRunning as JobRunning
from p2pexec.commands.errors import JournalUnwritable as JournalUnwritable
from p2pexec.commands.errors import NameConflict as NameConflict
from p2pexec.commands.errors import NoSuchBlob as NoSuchBlob
from p2pexec.commands.errors import NotCapable as NotCapable
from p2pexec.commands.errors import NotStarted as NotStarted
from p2pexec.commands.errors import OutputGone as OutputGone
from p2pexec.commands.errors import ShuttingDown as ShuttingDown
from p2pexec.commands.errors import StaleBallot as StaleBallot
from p2pexec.commands.errors import TransferRefused as TransferRefused
from p2pexec.commands.errors import UnknownJob as UnknownJob
from p2pexec.commands.errors import UnknownTask as UnknownTask
from p2pexec.commands.errors import UnknownUpload as UnknownUpload
from p2pexec.commands.errors import VersionMismatch as VersionMismatch
from p2pexec.commands.errors import _errors as _errors
from p2pexec.commands.failover import FORWARDED_COMMANDS as FORWARDED_COMMANDS
from p2pexec.commands.failover import ForwardClient as ForwardClient
from p2pexec.commands.failover import HeldTasks as HeldTasks
from p2pexec.commands.failover import JobLeader as JobLeader
from p2pexec.commands.failover import PrePromise as PrePromise
from p2pexec.commands.failover import Promise as Promise
from p2pexec.commands.failover import Replicate as Replicate
from p2pexec.commands.files import BOX_LIMIT as BOX_LIMIT
from p2pexec.commands.files import EXTRA_PIECES as EXTRA_PIECES
from p2pexec.commands.files import MAX_DIGESTS as MAX_DIGESTS
from p2pexec.commands.files import PIECE_LIMIT as PIECE_LIMIT
from p2pexec.commands.files import PIECES_PER_BOX as PIECES_PER_BOX
from p2pexec.commands.files import FetchBlob as FetchBlob
from p2pexec.commands.files import HaveBlobs as HaveBlobs
from p2pexec.commands.files import HoldBlobs as HoldBlobs
from p2pexec.commands.files import PutBlob as PutBlob
from p2pexec.commands.files import pieces_of as pieces_of
from p2pexec.commands.node import Authenticate as Authenticate
from p2pexec.commands.node import AuthProof as AuthProof
from p2pexec.commands.node import ConnectRequest as ConnectRequest
from p2pexec.commands.node import DisconnectRequest as DisconnectRequest
from p2pexec.commands.node import ExecutionConfirmation as ExecutionConfirmation
from p2pexec.commands.node import Handshake as Handshake
from p2pexec.commands.node import Heartbeat as Heartbeat
from p2pexec.commands.node import InstructionAssignment as InstructionAssignment
from p2pexec.commands.node import PeerExchange as PeerExchange
from p2pexec.commands.node import ResultQuery as ResultQuery
from p2pexec.commands.node import TaskComplete as TaskComplete
