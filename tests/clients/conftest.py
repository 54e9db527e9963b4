"""A real grpc.aio server of small deterministic fakes, for the client tests.

The server runs on its own event loop in a background thread, so that the code under test can call
`asyncio.run` in the main thread. The fakes:

- Translate streams "le", " chat", " noir" then a final; model "missing" is NOT_FOUND, model "slow"
  sleeps past any short deadline, and model "gated" waits for the `gate` fixture after one token.
  Retries: model "flaky" fails UNAVAILABLE on the first two attempts of each text, model "busy"
  fails RESOURCE_EXHAUSTED with `retry-after-ms: 300` on the first, and model "broken" fails
  UNAVAILABLE after its first token, every time; `ATTEMPTS[text]` counts the attempts.
- Analyze streams one running result per word ("good" → positive 0.9, else positive 0.2).
- Complete streams " upon", " a", " time", cut to `max_tokens`.
- Session answers revision N with " <len(text)>", " chars".
- Translate, Complete and Session append every request they read to `REQUESTS`, so a test can
  see which fields a client set (and which it left unset).
- ListModels lists two models and appends the call's `authorization` metadata to `AUTHORIZATIONS`;
  health says "" SERVING, the sentiment service NOT_SERVING.

The same fakes are served over TLS (`tls_target`) and mutual TLS (`mtls_target`) with
certificates made by the `openssl` command for the session.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc

GATE = threading.Event()
ATTEMPTS: collections.Counter[str] = collections.Counter()
AUTHORIZATIONS: list[str] = []
REQUESTS: list[Any] = []
SENTIMENT_SERVICE = "recur.v1.SentimentService"


def summary(
    model: str, *, tokens: int, reason: pb.FinishReason.ValueType = pb.FINISH_REASON_STOP
) -> pb.StreamSummary:
    """The fakes' summary: version 1, ttft 1.5 ms, total 4 ms."""
    timings = pb.Timings(
        queue_seconds=0.0005, time_to_first_token_seconds=0.0015, total_seconds=0.004
    )
    return pb.StreamSummary(
        finish_reason=reason,
        input_tokens=3,
        output_tokens=tokens,
        model=model,
        version=1,
        timings=timings,
    )


class Translation(pb_grpc.TranslationServiceServicer):
    async def Translate(self, request: pb.TranslateRequest, context: Any) -> AsyncIterator[Any]:
        REQUESTS.append(request)
        if request.model == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown model 'missing'")
        if request.model == "slow":
            await asyncio.sleep(5)
        ATTEMPTS[request.text] += 1
        if request.model == "flaky" and ATTEMPTS[request.text] <= 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        if request.model == "busy" and ATTEMPTS[request.text] == 1:
            context.set_trailing_metadata((("retry-after-ms", "300"),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "admission full")
        pieces = ["le", " chat", " noir"]
        for index, piece in enumerate(pieces):
            attention = [0.1, 0.1, 0.1]
            attention[[0, 2, 1][index]] = 0.8
            yield pb.TranslateResponse(
                token=pb.GeneratedToken(
                    index=index,
                    id=10 + index,
                    text=piece,
                    logprob=-0.5,
                    attention=attention if request.include_attention else [],
                )
            )
            if request.model == "gated" and index == 0:
                await asyncio.to_thread(GATE.wait, 20)
            if request.model == "broken":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "lost the model")
        final = pb.TranslateFinal(
            text="le chat noir",
            source_tokens=["the", "black", "cat"],
            summary=summary(request.model or "fake-translate", tokens=3),
        )
        yield pb.TranslateResponse(final=final)


class Sentiment(pb_grpc.SentimentServiceServicer):
    async def Analyze(self, request: pb.SentimentRequest, context: Any) -> AsyncIterator[Any]:
        probabilities = [0.8, 0.2]
        words = request.text.split()
        for index, word in enumerate(words):
            probabilities = [0.1, 0.9] if word == "good" else [0.8, 0.2]
            label = "positive" if probabilities[1] >= 0.5 else "negative"
            token = pb.SentimentToken(
                index=index, id=index, text=word, label=label, probabilities=probabilities
            )
            yield pb.SentimentResponse(token=token)
        final = pb.SentimentFinal(
            label="positive" if probabilities[1] >= 0.5 else "negative",
            probabilities=probabilities,
            labels=["negative", "positive"],
            summary=summary("fake-sentiment", tokens=len(words)),
        )
        yield pb.SentimentResponse(final=final)


class Autocomplete(pb_grpc.AutocompleteServiceServicer):
    async def Complete(self, request: pb.CompleteRequest, context: Any) -> AsyncIterator[Any]:
        REQUESTS.append(request)
        pieces = [" upon", " a", " time"]
        limit = request.max_tokens or len(pieces)
        for index, piece in enumerate(pieces[:limit]):
            yield pb.CompleteResponse(token=pb.GeneratedToken(index=index, id=index, text=piece))
        reason = pb.FINISH_REASON_LENGTH if limit < len(pieces) else pb.FINISH_REASON_STOP
        final = pb.CompleteFinal(
            completion="".join(pieces[:limit]),
            summary=summary("fake-complete", tokens=min(limit, len(pieces)), reason=reason),
        )
        yield pb.CompleteResponse(final=final)

    async def Session(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        text, revision = "", 0
        async for request in request_iterator:
            REQUESTS.append(request)
            revision += 1
            if request.HasField("edit"):
                edit = request.edit
                text = text[: edit.start] + edit.text + text[edit.end :]
            else:
                text = request.text
            pieces = [f" {len(text)}", " chars"]
            for index, piece in enumerate(pieces):
                token = pb.GeneratedToken(index=index, id=index, text=piece)
                yield pb.SessionResponse(revision=revision, token=token)
            final = pb.CompleteFinal(
                completion="".join(pieces), summary=summary(request.model or "fake", tokens=2)
            )
            yield pb.SessionResponse(revision=revision, final=final)


class Models(pb_grpc.ModelServiceServicer):
    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        AUTHORIZATIONS.append(metadata.get("authorization", ""))
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name="en-fr",
                    version=3,
                    task="translation",
                    cell="gru",
                    is_default=True,
                    metrics={
                        "valid_bleu": 31.25,
                        "test_bleu": 29.0,
                        "valid_bleu_beam": 33.5,
                        "valid_loss": 1.5,
                        "grad_norm_max": 2.0,
                    },
                ),
                pb.ModelInfo(
                    name="sst2",
                    version=1,
                    task="sentiment",
                    cell="lstm",
                    metrics={"valid_loss": 0.4125},
                ),
            ]
        )


async def _start(credentials: grpc.ServerCredentials | None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_TranslationServiceServicer_to_server(Translation(), server)
    pb_grpc.add_SentimentServiceServicer_to_server(Sentiment(), server)
    pb_grpc.add_AutocompleteServiceServicer_to_server(Autocomplete(), server)
    pb_grpc.add_ModelServiceServicer_to_server(Models(), server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SENTIMENT_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


class ServerThread:
    """An event loop in a background thread that serves the fakes, once per `serve` call."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fakes", daemon=True)
        self.thread.start()
        self.servers: list[grpc.aio.Server] = []

    def serve(self, credentials: grpc.ServerCredentials | None = None) -> str:
        future = asyncio.run_coroutine_threadsafe(_start(credentials), self.loop)
        server, port = future.result(timeout=10)
        self.servers.append(server)
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.stop(1), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def fakes() -> Iterator[ServerThread]:
    """The background thread that serves the fakes; stops every server it started at the end."""
    servers = ServerThread()
    yield servers
    GATE.set()
    servers.stop()


@pytest.fixture(scope="session")
def target(fakes: ServerThread) -> str:
    """`host:port` of the fakes over plaintext on 127.0.0.1."""
    return fakes.serve()


@dataclass(frozen=True)
class Certificates:
    """Self-signed PEM files: the server's (for 127.0.0.1) and the client's."""

    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Certificates made by the `openssl` command (`cryptography` is not in the virtualenv)."""
    if shutil.which("openssl") is None:
        pytest.skip("TLS tests need the `openssl` command (or the `cryptography` package)")
    directory = tmp_path_factory.mktemp("tls")
    server_cert, server_key = _self_signed(directory, "server")
    client_cert, client_key = _self_signed(directory, "client")
    return Certificates(server_cert, server_key, client_cert, client_key)


def _key_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    return key.read_bytes(), cert.read_bytes()


@pytest.fixture(scope="session")
def tls_target(fakes: ServerThread, certificates: Certificates) -> str:
    """`host:port` of the fakes over TLS with the self-signed server certificate."""
    pair = _key_pair(certificates.server_cert, certificates.server_key)
    return fakes.serve(grpc.ssl_server_credentials([pair]))


@pytest.fixture(scope="session")
def mtls_target(fakes: ServerThread, certificates: Certificates) -> str:
    """`host:port` of the fakes over TLS that requires the self-signed client certificate."""
    credentials = grpc.ssl_server_credentials(
        [_key_pair(certificates.server_cert, certificates.server_key)],
        root_certificates=certificates.client_cert.read_bytes(),
        require_client_auth=True,
    )
    return fakes.serve(credentials)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Holds model "gated" streams after their first token until set (at the latest, on exit)."""
    GATE.clear()
    yield GATE
    GATE.set()


@pytest.fixture
def closed_target() -> str:
    """`host:port` of a port that was free a moment ago and has nothing listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def attempts() -> collections.Counter[str]:
    """How many times the fake Translate was called with each text."""
    return ATTEMPTS


@pytest.fixture
def authorizations() -> list[str]:
    """The `authorization` metadata of every ListModels call, in order ("" when absent)."""
    return AUTHORIZATIONS


@pytest.fixture
def requests() -> list[Any]:
    """The requests the fakes read during the test, in order."""
    REQUESTS.clear()
    return REQUESTS
