"""The one place where domain errors become gRPC status codes, and where every call is counted.

INVALID_ARGUMENT, NOT_FOUND and UNAVAILABLE carry the domain error's message; anything unexpected
becomes INTERNAL with a generic message, and its traceback goes to the log, not to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

from services import scope
from services.admission import Admission
from services.auth import BearerToken
from services.errors import (
    Expired,
    InvalidArgument,
    ModelNotFound,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from services.metrics import CallInfo, ServerMetrics

log = logging.getLogger(__name__)
# Generic only in the type stubs, so the aliases are strings.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "aio.ServicerContext[Any, Any]"
CALL_INFO: contextvars.ContextVar[CallInfo] = contextvars.ContextVar("recur_call_info")
RETRY_AFTER_MS = 100  # the hint sent with RESOURCE_EXHAUSTED
ABORT_SECONDS = 1.0  # the most an expired call waits for its status to leave
_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Expired: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def _trailing(context: Context, info: CallInfo, *extra: tuple[str, str]) -> None:
    context.set_trailing_metadata((("x-request-id", info.request_id), *extra))


def _start_call(rpc: str, context: Context) -> CallInfo:
    """The call's CallInfo; its x-request-id (the client's, or a new one) goes back in the
    trailing metadata and into the log lines about the call."""
    metadata = dict(context.invocation_metadata() or ())
    request_id = str(metadata.get("x-request-id", ""))[:128] or uuid.uuid4().hex
    info = CallInfo(rpc=rpc, request_id=request_id, handler=asyncio.current_task())
    CALL_INFO.set(info)
    _trailing(context, info)
    return info


def current_call() -> CallInfo:
    """The CallInfo of the running call (a throwaway one outside an intercepted call)."""
    return CALL_INFO.get(CallInfo(rpc=""))


def expire(info: CallInfo, error: ServiceError) -> None:
    """End the streaming call `info` with `error`'s status (an idle session's Expired:
    DEADLINE_EXCEEDED; a drain's Unavailable) wherever its handler is: waiting on the engine or
    on the client, or blocked in a write to a client that stopped reading."""
    if info.handler is not None and not info.handler.done() and info.expired is None:
        info.expired = error
        info.handler.cancel()


class _Undecodable:
    """What a request deserializes to when its bytes are not a valid message (broken wire
    format, bad UTF-8): the call then fails with INVALID_ARGUMENT, not with gRPC's UNKNOWN
    carrying the parser's exception."""

    def __init__(self, problem: InvalidArgument) -> None:
        self.problem = problem


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    message = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = message.full_name if message is not None else "request"

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as error:  # protobuf's DecodeError
            reason = str(error).rsplit(": ", 1)[-1]
            return _Undecodable(InvalidArgument("request", f"is not a valid {name}: {reason}"))

    return parse


def _decoded(request: Any) -> Any:
    """`request` itself, or for a client stream an iterator of its decoded messages; raises
    InvalidArgument where a message did not decode."""
    if isinstance(request, _Undecodable):
        raise request.problem
    if hasattr(request, "__aiter__"):
        return _decoded_stream(request)
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.problem
        yield request


async def _send_status(context: Context, code: grpc.StatusCode, message: str) -> None:
    """End the call with `code` and `message` (gRPC's `abort`, which raises AbortError).

    A client that cancelled the call meanwhile (a deadline of a few milliseconds, a front end
    dropping a rejected request) leaves no call to send the status on: gRPC then raises an
    internal batch error and logs it with a traceback, one per such call, which floods the log
    of a busy server (and once blocked a server whose log pipe was full). Such a call ends as
    cancelled, quietly: its client has already seen the end it chose.
    """
    try:
        await context.abort(code, message)
    except aio.AbortError:
        raise
    except Exception as failed:  # the status could not be sent: the call is gone
        log.debug("status %s not sent, the call was gone: %s", code.name, failed)
        raise asyncio.CancelledError from None


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES.items():
        if isinstance(error, kind):
            return code, str(error)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


class ErrorsAndMetricsInterceptor(aio.ServerInterceptor):
    """Maps ServiceErrors to status codes and counts every Recur call by its final code."""

    def __init__(
        self, metrics: ServerMetrics, admission: Admission, auth: BearerToken | None = None
    ) -> None:
        self.metrics = metrics
        self.admission = admission
        self.auth = auth

    def _authenticate(self, context: Context) -> None:
        if self.auth is not None:
            self.auth.check(dict(context.invocation_metadata() or ()))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith("/recur.v1."):
            return handler
        rpc = method.rsplit("/", 1)[-1]
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(rpc, handler.unary_stream),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(rpc, handler.stream_stream),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(rpc, handler.unary_unary),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _finish(self, info: CallInfo, started: float, code: grpc.StatusCode) -> None:
        self.metrics.finished(info, code.name, time.perf_counter() - started)

    async def _abort(self, context: Context, error: BaseException) -> None:
        code, message = status_for(error)
        info = current_call()
        if code is grpc.StatusCode.INTERNAL:
            log.exception("unexpected error in %s [%s]", info.rpc, info.request_id, exc_info=error)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            _trailing(context, info, ("retry-after-ms", str(RETRY_AFTER_MS)))
        await _send_status(context, code, message)

    def _wrap_stream(self, rpc: str, behavior: Callable[..., Any]) -> Any:
        """A streaming handler in gRPC's reader/writer form: the handler writes each response
        itself, so a cancellation (client gone, deadline, `expire`) always lands in these frames
        and every per-call resource (admission place, streams gauge, the stream's generators and
        their state slots) is given back at once, not whenever garbage collection closes a
        generator that gRPC stopped driving at a `yield`."""

        async def handler(request: Any, context: Context) -> None:
            info = _start_call(rpc, context)
            tasks = scope.open_scope()

            def done(_: Context) -> None:
                scope.cancel(tasks)

            context.add_done_callback(done)  # type: ignore[arg-type]  # stubs: nominal class
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                self._authenticate(context)
                request = _decoded(request)
                with self.admission.admit():
                    async with contextlib.aclosing(behavior(request, context)) as responses:
                        async for response in responses:
                            await context.write(response)
            except aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                if info.expired is None:  # cancelled by the client or by shutdown
                    code = grpc.StatusCode.CANCELLED
                    raise
                code = status_for(info.expired)[0]
                await self._abort_expired(context, info.expired)
            except Exception as error:
                code = status_for(error)[0]
                await self._abort(context, error)
            except BaseException:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                self._finish(info, started, code)

        return handler

    async def _abort_expired(self, context: Context, error: ServiceError) -> None:
        """End a call the server ended (`expire`) with its error's status; if the status cannot
        leave within a second (the client stopped reading and its flow-control window is full),
        drop the call, which gRPC then cancels."""
        try:
            async with asyncio.timeout(ABORT_SECONDS):
                await _send_status(context, *status_for(error))
        except TimeoutError:
            raise asyncio.CancelledError from None

    def _wrap_unary(self, rpc: str, behavior: Callable[..., Awaitable[Any]]) -> Any:
        async def wrapper(request: Any, context: Context) -> Any:
            info = _start_call(rpc, context)
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                self._authenticate(context)
                return await behavior(_decoded(request), context)
            except Exception as error:
                code = status_for(error)[0]
                await self._abort(context, error)
            finally:
                self._finish(info, started, code)

        return wrapper
