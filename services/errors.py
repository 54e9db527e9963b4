"""Domain errors of the serving engine. `interceptors.py` maps each to a gRPC status code."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the errors a client is meant to see; the message is sent as the status details."""


class InvalidArgument(ServiceError):
    """Bad input; the message names the field (INVALID_ARGUMENT)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field


class ModelNotFound(ServiceError):
    """No loaded model has that name, or none serves the task (NOT_FOUND)."""


class Unavailable(ServiceError):
    """The server is draining or not ready (UNAVAILABLE)."""


class ResourceExhausted(ServiceError):
    """The server is at its stream limit (RESOURCE_EXHAUSTED)."""


class Expired(ServiceError):
    """A session idle for longer than its time to live (DEADLINE_EXCEEDED)."""


class Unauthenticated(ServiceError):
    """A missing or wrong bearer token (UNAUTHENTICATED)."""


class BundleError(Exception):
    """A model bundle that fails verification; it is refused and never served."""
