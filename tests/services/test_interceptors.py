"""Domain errors map to status codes; anything unexpected is INTERNAL and leaks nothing."""

from __future__ import annotations

import grpc
import pytest

from services.errors import InvalidArgument, ModelNotFound, Unavailable
from services.interceptors import status_for


@pytest.mark.parametrize(
    ("error", "code", "details", "reason"),
    [
        (InvalidArgument("max_tokens", "must be in [1, 512], got 0"), "INVALID_ARGUMENT",
         "max_tokens must be in [1, 512], got 0", "bad input names the field"),
        (ModelNotFound("unknown model 'x'"), "NOT_FOUND", "unknown model 'x'", "unknown model"),
        (Unavailable("draining"), "UNAVAILABLE", "draining", "shutting down"),
        (KeyError("/secret/path/model.onnx"), "INTERNAL",
         "internal error; the server log has the details", "no internals leak"),
    ],
)  # fmt: skip
def test_status_for(error: Exception, code: str, details: str, reason: str) -> None:
    assert status_for(error) == (getattr(grpc.StatusCode, code), details), reason
