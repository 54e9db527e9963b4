"""The async Python client of the Recur serving API.

    async with RecurClient("127.0.0.1:50051", token="s3cret") as client:
        async for event in client.translate("the black cat"):
            if event.HasField("token"):
                print(event.token.text, end="")

Events. Every streaming method yields the generated response messages of `inference.proto`, typed:
each holds a `oneof event` (`event.WhichOneof("event")`), zero or more `token` events then exactly
one `final` event, which is always the last. (With `RecurClient(as_sent=True)`, the messages as
sent: a `tokens` event holds several consecutive tokens.)

| method       | yields (alias)                        | `token`          | `final`          |
|--------------|---------------------------------------|------------------|------------------|
| `translate`  | `TranslateResponse` (TranslateEvent)  | `GeneratedToken` | `TranslateFinal` |
| `sentiment`  | `SentimentResponse` (SentimentEvent)  | `SentimentToken` | `SentimentFinal` |
| `complete`   | `CompleteResponse` (CompleteEvent)    | `GeneratedToken` | `CompleteFinal`  |
| `session`    | `SessionResponse` (SessionEvent), each with the `revision` it answers   |

Every final event carries a `StreamSummary`: finish reason, token counts, model, version, timings.

Calls. Every call has a deadline (`timeout`, 30 s by default; for `session`, of the whole session),
is retried on UNAVAILABLE and RESOURCE_EXHAUSTED until its first event (`RetryPolicy`, see
`clients.calls`; a server may send `retry-after-ms` trailing metadata to pace the retries), and
fails with `RecurError`, which carries the status code and the details. Sessions are not retried:
the answers of a session depend on everything sent on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio

from clients import health_wire
from clients.calls import (
    RecurError,
    RetryPolicy,
    one_per_token,
    recur_errors,
    stream_call,
    unary_call,
)
from clients.channel import Connection
from protos.recur.v1 import inference_pb2, inference_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
T = TypeVar("T")

TranslateEvent: TypeAlias = inference_pb2.TranslateResponse
SentimentEvent: TypeAlias = inference_pb2.SentimentResponse
CompleteEvent: TypeAlias = inference_pb2.CompleteResponse
SessionEvent: TypeAlias = inference_pb2.SessionResponse

__all__ = ["DEFAULT_TARGET", "RecurClient", "RecurError", "RetryPolicy", "Session"]

Request = TypeVar("Request", bound=Message)


def _request(message: type[Request], **fields: Any) -> Request:
    """`message(**fields)`; a value its field cannot hold (a negative or too large count, a
    seed beyond 64 bits) raises ValueError naming the field, before anything is sent."""
    try:
        return message(**fields)
    except (ValueError, TypeError) as error:
        for name, value in fields.items():
            try:
                message(**{name: value})
            except (ValueError, TypeError):
                raise ValueError(f"{name}={value!r}: {error}") from None
        raise


class Session:
    """One autocomplete session: send what the user types, iterate over the suggestions.

    Each `send_text` or `send_edit` is one revision (counting from 1); the server answers each with
    token events and a final event tagged with that revision. Iterate with `async for`; iteration
    ends when the server closes the stream, which it does after `close()` and its last answer.
    """

    def __init__(
        self,
        call: aio.StreamStreamCall[inference_pb2.SessionRequest, inference_pb2.SessionResponse],
        *,
        model: str,
        max_tokens: int,
        num_suggestions: int = 0,
        model_only: bool = False,
        as_sent: bool = False,
    ) -> None:
        self._call = call
        self._model = model
        self._max_tokens = max_tokens
        self._num_suggestions = num_suggestions
        self._model_only = model_only
        self._as_sent = as_sent
        self._status: RecurError | None = None  # the server's status, once the call ends
        self._pending: list[inference_pb2.SessionResponse] = []  # the rest of a packed message
        call.add_done_callback(self._ended)

    async def send_text(self, text: str) -> None:
        """Sends the full text typed so far; the server diffs it against the previous revision."""
        await self._write(inference_pb2.SessionRequest(text=text))

    async def send_edit(self, start: int, end: int, text: str) -> None:
        """Sends an edit of the previous text: replace the characters [start, end) with `text`."""
        edit = inference_pb2.TextEdit(start=start, end=end, text=text)
        await self._write(inference_pb2.SessionRequest(edit=edit))

    async def close(self) -> None:
        """Says that nothing more will be sent; the answers still in flight keep arriving. On a
        session that has already ended (refused, expired, server unreachable) it does nothing:
        reading it says why."""
        if self._call.done():
            return
        try:
            with recur_errors():
                await self._call.done_writing()
        except RecurError:
            raise
        except Exception:  # grpcio's internal ExecuteBatchError: the call ended as it closed
            if not self._call.done():
                raise

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> inference_pb2.SessionResponse:
        if self._pending:
            return self._pending.pop(0)
        with self._errors():
            response = await self._call.read()
        if isinstance(response, inference_pb2.SessionResponse):
            self._pending = [response] if self._as_sent else one_per_token(response)
            return self._pending.pop(0)
        raise StopAsyncIteration

    def _ended(self, call: Any) -> None:
        """Keeps the first status the call ended with. grpcio (grpc/grpc#36066) replaces the
        server's status with a made-up INTERNAL when a write was in flight as the server ended
        the call; the status the server sent is the one to report."""
        code = _settled(call.code())
        details = _settled(call.details())
        if self._status is None and not _made_up(code, details):
            self._status = RecurError(code, details or "")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            with recur_errors():
                yield
        except RecurError as error:
            if self._status is not None and _made_up(error.code, error.details):
                raise self._status from error
            raise

    async def _write(self, request: inference_pb2.SessionRequest) -> None:
        # The server reads `model` from the first message only; sending it on every one is harmless.
        request.model = self._model
        request.max_tokens = self._max_tokens
        request.num_suggestions = self._num_suggestions
        request.model_only = self._model_only
        try:
            with self._errors():
                await self._call.write(request)
        except asyncio.InvalidStateError:
            if not self._call.done():
                raise  # written after close(): the caller's mistake, said as grpc says it
            # The server already ended the session (refused it, expired it, drained): say why.
            raise self._status or RecurError(
                await self._call.code(), await self._call.details() or ""
            ) from None


class RecurClient:
    """An async client of one Recur server.

    Use it as an async context manager, which opens the channel and closes it on exit.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 30.0,
        tls: bool = False,
        root_certificates: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        as_sent: bool = False,
    ) -> None:
        """Creates a client; the channel opens in `async with`.

        Args:
            target: The server's `host:port`.
            timeout: The deadline of every call in seconds, retries included (for `session`, of
                the whole session).
            tls: Use TLS; implied by any of the certificate paths.
            root_certificates: PEM file of the roots that may sign the server's certificate
                (default: gRPC's bundled roots).
            client_cert: PEM certificate chain of the client, for mutual TLS (with `client_key`).
            client_key: PEM private key of `client_cert`.
            token: Bearer token, sent with every call as `authorization: Bearer <token>`.
            retry: When to retry (default `RetryPolicy()`; `RetryPolicy(max_attempts=1)`: never).
            as_sent: Yield the response messages as the server sent them: one that carries
                several tokens (the server packs what a stream produced while its previous
                message was being written) is one event whose `tokens` field holds them. A load
                generator uses it to time the gaps between messages. By default every token is
                an event of its own, whatever the packing.

        Raises:
            ValueError: Only one of `client_cert` and `client_key` was given.
        """
        self.connection = Connection(
            target=target,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            token=token,
        )
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.as_sent = as_sent
        self._metadata = self.connection.metadata()
        self._rng = random.Random()
        self._channel: aio.Channel | None = None

    @classmethod
    def for_connection(
        cls,
        connection: Connection,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        as_sent: bool = False,
    ) -> RecurClient:
        """A client of the server `connection` describes."""
        return cls(
            connection.target,
            timeout=timeout,
            tls=connection.tls,
            root_certificates=connection.root_certificates,
            client_cert=connection.client_cert,
            client_key=connection.client_key,
            token=connection.token,
            retry=retry,
            as_sent=as_sent,
        )

    async def __aenter__(self) -> Self:
        self._channel = self.connection.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel, cancelling the calls still running on it."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def translate(
        self,
        text: str,
        *,
        model: str = "",
        max_tokens: int = 0,
        include_attention: bool = False,
        beam_size: int | None = None,
        length_penalty: float | None = None,
        min_tokens: int = 0,
    ) -> AsyncIterator[TranslateEvent]:
        """Translates `text`, yielding each target token as it is decoded, then the final event.

        Args:
            text: The source sentence.
            model: The model name (`name@version` pins a version); empty selects the default.
            max_tokens: The most target tokens; 0 selects the server default.
            include_attention: Ask for each token's attention over the source tokens.
            beam_size: Beam search with this many hypotheses (0 or 1: greedy, streamed as decoded;
                more: the best hypothesis, streamed once the search ends). None leaves it unset:
                the model's fitted default (greedy with `include_attention`).
            length_penalty: GNMT length normalization alpha for beam search, in [0, 2]. None
                leaves it unset: the model's fitted default.
            min_tokens: The fewest target tokens: no end of sequence before this many (0: none).

        Raises:
            RecurError: The call failed (unknown model, bad input, unreachable server, deadline).
        """
        request = _request(
            inference_pb2.TranslateRequest,
            text=text,
            model=model,
            max_tokens=max_tokens,
            include_attention=include_attention,
            beam_size=beam_size,
            length_penalty=length_penalty,
            min_tokens=min_tokens,
        )
        stub = inference_pb2_grpc.TranslationServiceStub(self._open_channel())
        return self._stream(stub.Translate, request)

    def sentiment(self, text: str, *, model: str = "") -> AsyncIterator[SentimentEvent]:
        """Classifies `text`, yielding the running sentiment after each token, then the label.

        Raises:
            RecurError: The call failed.
        """
        request = _request(inference_pb2.SentimentRequest, text=text, model=model)
        stub = inference_pb2_grpc.SentimentServiceStub(self._open_channel())
        return self._stream(stub.Analyze, request)

    def complete(
        self,
        text: str,
        *,
        model: str = "",
        max_tokens: int = 0,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        num_suggestions: int = 0,
        model_only: bool = False,
        min_tokens: int = 0,
    ) -> AsyncIterator[CompleteEvent]:
        """Completes the prefix `text`, yielding each completion token, then the final event.

        Args:
            text: The prefix.
            model: The model name (`name@version` pins a version); empty selects the default.
            max_tokens: The most tokens; 0 selects the server default.
            temperature: 0 decodes greedily; above 0 samples (with `top_k`, `top_p`, `seed`).
            top_k: Sample among the k most probable tokens (0: all).
            top_p: Nucleus sampling threshold (0: off).
            seed: Makes sampling reproducible.
            stop: End the completion once it ends with one of these strings.
            num_suggestions: Suggestions in the final event, best first: with a model that has
                a popular-query index, its completions and the model's ranked together.
            model_only: Answer from the language model alone (no index), for comparison.
            min_tokens: The fewest tokens: neither the end of sequence nor a stop string ends
                the completion before this many (0: none).

        Raises:
            RecurError: The call failed.
        """
        request = _request(
            inference_pb2.CompleteRequest,
            text=text,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=list(stop),
            num_suggestions=num_suggestions,
            model_only=model_only,
            min_tokens=min_tokens,
        )
        stub = inference_pb2_grpc.AutocompleteServiceStub(self._open_channel())
        return self._stream(stub.Complete, request)

    def session(
        self,
        *,
        model: str = "",
        max_tokens: int = 0,
        open_ended: bool = False,
        num_suggestions: int = 0,
        model_only: bool = False,
    ) -> Session:
        """Opens an autocomplete session; see `Session`. `num_suggestions` and `model_only` are
        as in `complete`, for every revision.

        Its deadline is the client's `timeout`, unless `open_ended` keeps it open until it is
        closed (a person typing: no deadline fits).
        """
        _request(  # what every message of the session will carry: checked before it opens
            inference_pb2.SessionRequest, model=model, max_tokens=max_tokens,
            num_suggestions=num_suggestions, model_only=model_only,
        )  # fmt: skip
        stub = inference_pb2_grpc.AutocompleteServiceStub(self._open_channel())
        timeout = None if open_ended else self.timeout
        call = stub.Session(timeout=timeout, metadata=self._metadata)
        return Session(
            call,
            model=model,
            max_tokens=max_tokens,
            num_suggestions=num_suggestions,
            model_only=model_only,
            as_sent=self.as_sent,
        )

    async def list_models(self) -> inference_pb2.ListModelsResponse:
        """Returns the models the server has loaded.

        Raises:
            RecurError: The call failed.
        """
        stub = inference_pb2_grpc.ModelServiceStub(self._open_channel())
        request = inference_pb2.ListModelsRequest()
        return await unary_call(
            lambda timeout: stub.ListModels(request, timeout=timeout, metadata=self._metadata),
            policy=self.retry,
            timeout=self.timeout,
            rng=self._rng,
        )

    async def health(self, service: str = "") -> str:
        """Asks the standard `grpc.health.v1` service how `service` ("" = the server) is doing.

        Returns:
            The status name: "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN".

        Raises:
            RecurError: The call failed; NOT_FOUND when the server does not know `service`.
        """
        check = self._open_channel().unary_unary(
            health_wire.HEALTH_CHECK_METHOD,
            request_serializer=health_wire.encode_health_request,
            response_deserializer=health_wire.decode_health_response,
        )
        status: str = await unary_call(
            lambda timeout: check(service, timeout=timeout, metadata=self._metadata),
            policy=self.retry,
            timeout=self.timeout,
            rng=self._rng,
        )
        return status

    def _stream(self, method: Any, request: Any) -> AsyncIterator[Any]:
        """Starts `method(request)` under the client's deadline, metadata and retry policy."""
        return stream_call(
            lambda timeout: method(request, timeout=timeout, metadata=self._metadata),
            policy=self.retry,
            timeout=self.timeout,
            rng=self._rng,
            as_sent=self.as_sent,
        )

    def _open_channel(self) -> aio.Channel:
        if self._channel is None:
            raise RuntimeError("RecurClient is not open; use `async with RecurClient(...)`")
        return self._channel


def _settled(pending: Coroutine[Any, Any, T]) -> T:
    """The value of a call's `code()` or `details()` once the call has ended: they return
    without suspending then, so a done callback can read them."""
    try:
        pending.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    pending.close()
    raise RuntimeError("the call has not ended")


def _made_up(code: grpc.StatusCode, details: str | None) -> bool:
    """grpcio's own INTERNAL for a write that failed because the call had ended."""
    return code == grpc.StatusCode.INTERNAL and details == "Internal error from Core"
