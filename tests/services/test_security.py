"""Who gets in: bearer-token auth over every rpc, TLS and mutual TLS with certificates made here,
and the plaintext health port that Kubernetes probes use when TLS is on."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.sdk import RecurError, Session
from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import Server, start_server, stop_server

x509 = pytest.importorskip("cryptography.x509", reason="TLS tests make certificates with it")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

TOKEN = "s3cret-token"
Call = Callable[[aio.Channel, tuple[tuple[str, str], ...]], Any]


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def _session(channel: aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
    """Through the SDK's `Session`: when the server refuses the call while a write is in
    flight, grpcio's client replaces the server's status with INTERNAL (grpc/grpc#36066); the
    SDK reports the status the server sent."""
    call = pb_grpc.AutocompleteServiceStub(channel).Session(metadata=metadata)
    session = Session(call, model="", max_tokens=2)
    try:
        await session.send_text("how")
        await session.close()
        async for _ in session:
            pass
    except RecurError as error:
        raise Refused(error.code) from error


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code


CALLS: dict[str, Call] = {
    "Translate": lambda ch, md: _drain(
        pb_grpc.TranslationServiceStub(ch).Translate(pb.TranslateRequest(text="a dog"), metadata=md)
    ),
    "Analyze": lambda ch, md: _drain(
        pb_grpc.SentimentServiceStub(ch).Analyze(pb.SentimentRequest(text="good"), metadata=md)
    ),
    "Complete": lambda ch, md: _drain(
        pb_grpc.AutocompleteServiceStub(ch).Complete(
            pb.CompleteRequest(text="how", max_tokens=2), metadata=md
        )
    ),
    "Session": lambda ch, md: _session(ch, md),
    "ListModels": lambda ch, md: pb_grpc.ModelServiceStub(ch).ListModels(
        pb.ListModelsRequest(), metadata=md
    ),
}


@pytest.fixture(scope="module")
def authed(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(TOKEN + "\n")
    server = start_server(tiny_models, "--auth-token-file", str(token_file))
    yield server
    stop_server(server)


@pytest.mark.parametrize("rpc", sorted(CALLS))
@pytest.mark.parametrize(
    ("metadata", "code", "reason"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED, "no token"),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED, "wrong token"),
        ((("authorization", TOKEN),), grpc.StatusCode.UNAUTHENTICATED, "no Bearer scheme"),
        ((("authorization", f"Bearer {TOKEN}"),), grpc.StatusCode.OK, "the right token"),
    ],
)
def test_every_rpc_needs_the_token(
    authed: Server, rpc: str, metadata: tuple[tuple[str, str], ...], code: Any, reason: str
) -> None:
    async def go() -> grpc.StatusCode:
        async with aio.insecure_channel(authed.target) as channel:
            try:
                await CALLS[rpc](channel, metadata)
            except aio.AioRpcError as error:
                return error.code()
            except Refused as refused:
                return refused.code
            return grpc.StatusCode.OK

    assert asyncio.run(go()) == code, reason


def test_health_stays_open_without_a_token(authed: Server) -> None:
    assert asyncio.run(health(authed.target)) == "SERVING"


async def health(target: str, credentials: grpc.ChannelCredentials | None = None) -> str:
    channel = (
        aio.secure_channel(target, credentials) if credentials else aio.insecure_channel(target)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here
    other_cert: Path  # a client certificate signed by other_ca
    other_key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _certificate(
    name: str, key: Any, issuer: tuple[Any, Any] | None, *, ca: bool, path: Path
) -> tuple[Any, Path]:
    """A certificate for `name` signed by `issuer` (cert, key), or self-signed when None."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "s", "c", "oca", "o")}
    ca, ca_path = _certificate("recur-test-ca", keys["ca"], None, ca=True, path=d / "ca.pem")
    other, other_path = _certificate("other-ca", keys["oca"], None, ca=True, path=d / "oca.pem")
    _, server = _certificate("server", keys["s"], (ca, keys["ca"]), ca=False, path=d / "s.pem")
    _, client = _certificate("client", keys["c"], (ca, keys["ca"]), ca=False, path=d / "c.pem")
    _, stranger = _certificate("o", keys["o"], (other, keys["oca"]), ca=False, path=d / "o.pem")
    server_key, client_key = _write_key(keys["s"], d / "s.key"), _write_key(keys["c"], d / "c.key")
    other_key = _write_key(keys["o"], d / "o.key")
    return Pki(ca_path, server, server_key, client, client_key, other_path, stranger, other_key)


def _credentials(
    root: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=root.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def _status(target: str, credentials: grpc.ChannelCredentials) -> str:
    try:
        return asyncio.run(health(target, credentials))
    except aio.AioRpcError as error:
        return error.code().name


def test_tls_serves_clients_that_trust_its_ca(tiny_models: Path, pki: Pki) -> None:
    server = start_server(
        tiny_models, "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)
    )
    try:
        assert _status(server.target, _credentials(pki.ca)) == "SERVING"
        assert _status(server.target, _credentials(pki.other_ca)) == "UNAVAILABLE"
    finally:
        stop_server(server)


def test_mutual_tls_refuses_clients_without_a_certificate_from_its_ca(
    tiny_models: Path, pki: Pki
) -> None:
    server = start_server(
        tiny_models,
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-client-ca-file", str(pki.ca), "--health-port", "0",
    )  # fmt: skip
    try:
        accepted = _credentials(pki.ca, pki.client_cert, pki.client_key)
        assert _status(server.target, accepted) == "SERVING"
        assert _status(server.target, _credentials(pki.ca)) == "UNAVAILABLE", "no client cert"
        stranger = _credentials(pki.ca, pki.other_cert, pki.other_key)
        assert _status(server.target, stranger) == "UNAVAILABLE", "client cert from another CA"
        probes = server.health_target
        assert probes is not None
        assert asyncio.run(health(probes)) == "SERVING", "the plaintext probe port answers"
    finally:
        stop_server(server)


def test_tls_flags_are_checked_at_start(tiny_models: Path, pki: Pki) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "services.server", "--models", str(tiny_models),
         "--tls-cert-file", str(pki.server_cert)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--tls-cert-file and --tls-key-file come together" in result.stderr
