"""Recur clients: the async SDK (`RecurClient`) and the `recur` command (`clients.cli`).

This package talks to a Recur server over gRPC and imports only grpc, protobuf and `protos`.
"""

from clients.sdk import RecurClient, RecurError

__all__ = ["RecurClient", "RecurError"]
