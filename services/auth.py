"""Optional bearer-token authentication of every Recur call (health and reflection stay open).

The token comes from a file (`--auth-token-file`, e.g. a mounted Kubernetes Secret) or from the
`RECUR_AUTH_TOKEN` environment variable, never from a flag, which `ps` would show. Comparison is
constant-time. Without TLS the token crosses the network in the clear; pair it with TLS.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from services.errors import Unauthenticated

ENV = "RECUR_AUTH_TOKEN"


class BearerToken:
    """Checks `authorization: Bearer <token>` metadata."""

    def __init__(self, token: str) -> None:
        if not token.strip():
            raise ValueError("the bearer token is empty")
        self._expected = f"Bearer {token.strip()}".encode()

    @classmethod
    def configured(cls, path: str, environ: Mapping[str, str] | None = None) -> BearerToken | None:
        """The token of `--auth-token-file` or of RECUR_AUTH_TOKEN; None when neither is set."""
        environ = os.environ if environ is None else environ
        if path:
            return cls(Path(path).read_text(encoding="utf-8"))
        if environ.get(ENV):
            return cls(environ[ENV])
        return None

    def check(self, metadata: Mapping[str, str | bytes]) -> None:
        """Raises Unauthenticated unless the metadata carries the token."""
        given = metadata.get("authorization")
        if given is None:
            raise Unauthenticated("missing `authorization: Bearer <token>` metadata")
        raw = given.encode() if isinstance(given, str) else given
        if not hmac.compare_digest(raw, self._expected):
            raise Unauthenticated("invalid bearer token")
