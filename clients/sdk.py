"""The async Python client of the Recur serving API.

Every streaming RPC is an async generator of the generated response messages, every call carries the
client's `timeout` as its deadline, and every gRPC failure surfaces as a `RecurError`:

    async with RecurClient("127.0.0.1:50051") as client:
        async for event in client.translate("the black cat"):
            if event.HasField("token"):
                print(event.token.text, end="")
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Self, TypeVar

import grpc
from grpc import aio

from protos.recur.v1 import inference_pb2, inference_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
# grpc.health.v1.HealthCheckResponse.ServingStatus, by number.
HEALTH_STATUS_NAMES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class RecurError(Exception):
    """A failed call: its gRPC status code and details; str() reads `NOT_FOUND: unknown model 'x'`.

    Attributes:
        code: The gRPC status code.
        details: The human-readable details the server (or the channel) gave.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details


@contextlib.contextmanager
def _recur_errors() -> Iterator[None]:
    """Re-raises any `grpc.aio.AioRpcError` raised in the block as a `RecurError`."""
    try:
        yield
    except aio.AioRpcError as error:
        raise RecurError(error.code(), error.details() or "") from error


async def _responses(call: aio.UnaryStreamCall[_Request, _Response]) -> AsyncIterator[_Response]:
    """Yields the responses of a server-streaming call; cancels it if the reader stops early."""
    try:
        with _recur_errors():
            async for response in call:
                yield response
    finally:
        call.cancel()


def _varint(value: int) -> bytes:
    """Encodes a non-negative integer as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decodes the varint at `data[pos:]`; returns it and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def encode_health_request(service: str) -> bytes:
    """Encodes `grpc.health.v1.HealthCheckRequest {string service = 1;}` in protobuf wire format.

    Field 1 is length-delimited (tag byte 0x0A); proto3 leaves out the empty default.
    """
    if not service:
        return b""
    encoded = service.encode()
    return b"\x0a" + _varint(len(encoded)) + encoded


def decode_health_response(data: bytes) -> str:
    """Decodes `grpc.health.v1.HealthCheckResponse {ServingStatus status = 1;}` to the status name.

    Field 1 is a varint (tag byte 0x08); other fields are skipped, as protobuf parsers do.

    Raises:
        ValueError: `data` is not a well-formed protobuf message.
    """
    status, pos = 0, 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            status = value if field == 1 else status
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    if pos > len(data):
        raise ValueError("truncated field")
    return HEALTH_STATUS_NAMES[status] if status < len(HEALTH_STATUS_NAMES) else str(status)


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
    ) -> None:
        self._call = call
        self._model = model
        self._max_tokens = max_tokens

    async def send_text(self, text: str) -> None:
        """Sends the full text typed so far; the server diffs it against the previous revision."""
        await self._write(inference_pb2.SessionRequest(text=text))

    async def send_edit(self, start: int, end: int, text: str) -> None:
        """Sends an edit of the previous text: replace the characters [start, end) with `text`."""
        edit = inference_pb2.TextEdit(start=start, end=end, text=text)
        await self._write(inference_pb2.SessionRequest(edit=edit))

    async def close(self) -> None:
        """Says that nothing more will be sent; the answers still in flight keep arriving."""
        with _recur_errors():
            await self._call.done_writing()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> inference_pb2.SessionResponse:
        with _recur_errors():
            response = await self._call.read()
        if isinstance(response, inference_pb2.SessionResponse):
            return response
        raise StopAsyncIteration

    async def _write(self, request: inference_pb2.SessionRequest) -> None:
        # The server reads `model` from the first message only; sending it on every one is harmless.
        request.model = self._model
        request.max_tokens = self._max_tokens
        with _recur_errors():
            await self._call.write(request)


class RecurClient:
    """An async client of one Recur server, over an insecure gRPC channel.

    Use it as an async context manager, which opens the channel and closes it on exit.
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float = 30.0) -> None:
        """Creates a client; the channel opens in `async with`.

        Args:
            target: The server's `host:port`.
            timeout: The deadline of every call, in seconds (for `session`, of the whole session).
        """
        self.target = target
        self.timeout = timeout
        self._channel: aio.Channel | None = None

    async def __aenter__(self) -> Self:
        self._channel = aio.insecure_channel(self.target)
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

    async def translate(
        self, text: str, *, model: str = "", max_tokens: int = 0, include_attention: bool = False
    ) -> AsyncIterator[inference_pb2.TranslateResponse]:
        """Translates `text`, yielding each target token as it is decoded, then the final event.

        Args:
            text: The source sentence.
            model: The model name; empty selects the server's default translation model.
            max_tokens: The most target tokens; 0 selects the server default.
            include_attention: Ask for each token's attention over the source tokens.

        Raises:
            RecurError: The call failed (unknown model, bad input, unreachable server, deadline).
        """
        request = inference_pb2.TranslateRequest(
            text=text, model=model, max_tokens=max_tokens, include_attention=include_attention
        )
        stub = inference_pb2_grpc.TranslationServiceStub(self._open_channel())
        async for response in _responses(stub.Translate(request, timeout=self.timeout)):
            yield response

    async def sentiment(
        self, text: str, *, model: str = ""
    ) -> AsyncIterator[inference_pb2.SentimentResponse]:
        """Classifies `text`, yielding the running sentiment after each token, then the label.

        Raises:
            RecurError: The call failed.
        """
        request = inference_pb2.SentimentRequest(text=text, model=model)
        stub = inference_pb2_grpc.SentimentServiceStub(self._open_channel())
        async for response in _responses(stub.Analyze(request, timeout=self.timeout)):
            yield response

    async def complete(
        self, text: str, *, model: str = "", max_tokens: int = 0
    ) -> AsyncIterator[inference_pb2.CompleteResponse]:
        """Completes the prefix `text`, yielding each completion token, then the final event.

        Raises:
            RecurError: The call failed.
        """
        request = inference_pb2.CompleteRequest(text=text, model=model, max_tokens=max_tokens)
        stub = inference_pb2_grpc.AutocompleteServiceStub(self._open_channel())
        async for response in _responses(stub.Complete(request, timeout=self.timeout)):
            yield response

    def session(self, *, model: str = "", max_tokens: int = 0) -> Session:
        """Opens an autocomplete session; see `Session`. Its deadline is the client's `timeout`."""
        stub = inference_pb2_grpc.AutocompleteServiceStub(self._open_channel())
        return Session(stub.Session(timeout=self.timeout), model=model, max_tokens=max_tokens)

    async def list_models(self) -> inference_pb2.ListModelsResponse:
        """Returns the models the server has loaded.

        Raises:
            RecurError: The call failed.
        """
        stub = inference_pb2_grpc.ModelServiceStub(self._open_channel())
        with _recur_errors():
            return await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=self.timeout)

    async def health(self, service: str = "") -> str:
        """Asks the standard `grpc.health.v1` service how `service` ("" = the server) is doing.

        Returns:
            The status name: "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN".

        Raises:
            RecurError: The call failed; NOT_FOUND when the server does not know `service`.
        """
        check = self._open_channel().unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=encode_health_request,
            response_deserializer=decode_health_response,
        )
        with _recur_errors():
            return await check(service, timeout=self.timeout)

    def _open_channel(self) -> aio.Channel:
        if self._channel is None:
            raise RuntimeError("RecurClient is not open; use `async with RecurClient(...)`")
        return self._channel
