"""How a client reaches its server: plaintext or TLS, client certificates, and a bearer token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

AUTHORIZATION_METADATA_KEY = "authorization"


@dataclass(frozen=True)
class Connection:
    """Where the server is and how to talk to it.

    Attributes:
        target: The server's `host:port`.
        tls: Use TLS. Implied by any of the three certificate paths.
        root_certificates: PEM file of the certificates that may sign the server's certificate;
            None trusts the system's roots (gRPC's bundled ones).
        client_cert: PEM certificate chain that proves the client's identity (mutual TLS).
        client_key: PEM private key of `client_cert`; the two come together or not at all.
        token: A bearer token, sent with every call as `authorization: Bearer <token>`. Sent in the
            clear without TLS, which suits a sidecar or a test, not the open network.
    """

    target: str
    tls: bool = False
    root_certificates: str | Path | None = None
    client_cert: str | Path | None = None
    client_key: str | Path | None = None
    token: str | None = None

    @classmethod
    def from_flags(cls, args: Any) -> Connection:
        """The connection the CLI's parsed --target/--tls/--root-cert/... flags describe."""
        return cls(
            target=args.target,
            tls=args.tls,
            root_certificates=args.root_cert,
            client_cert=args.client_cert,
            client_key=args.client_key,
            token=args.token,
        )

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key come together: give both or neither")

    @property
    def secure(self) -> bool:
        """Whether the channel uses TLS."""
        certificates = (self.root_certificates, self.client_cert, self.client_key)
        return self.tls or any(path is not None for path in certificates)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata sent with every call: the bearer token, when there is one."""
        if not self.token:
            return ()
        return ((AUTHORIZATION_METADATA_KEY, f"Bearer {self.token}"),)

    def open(self) -> aio.Channel:
        """Opens an `aio` channel to the target; call it with the event loop that will use it.

        Raises:
            OSError: A certificate or key file cannot be read.
        """
        if not self.secure:
            return aio.insecure_channel(self.target)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.root_certificates),
            private_key=_read(self.client_key),
            certificate_chain=_read(self.client_cert),
        )
        return aio.secure_channel(self.target, credentials)


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
