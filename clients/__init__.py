"""Recur clients: the async SDK (`RecurClient`), its synchronous twin (`RecurClientSync`), the
`recur` command (`clients.cli`) and its load generator (`clients.bench`, `recur bench`).

This package talks to a Recur server over gRPC and imports only grpc, protobuf and `protos`.
"""

from clients.calls import RecurError, RetryPolicy
from clients.sdk import RecurClient
from clients.sync import RecurClientSync

__all__ = ["RecurClient", "RecurClientSync", "RecurError", "RetryPolicy"]
