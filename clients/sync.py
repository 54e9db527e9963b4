"""The synchronous client, for scripts and notebooks: `RecurClient` run on a background event loop.

    with RecurClientSync("127.0.0.1:50051") as client:
        for event in client.complete("weather in"):
            print(event)

It opens at construction (so a notebook cell can keep it without `with`), runs its own event loop in
a daemon thread, and answers every call by running the async client's call on that loop. The
methods, arguments, events, deadlines, retries and `RecurError`s are those of `RecurClient`. Streams
are plain iterators; leaving one early (`break`) cancels its call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from clients.calls import RetryPolicy
from clients.sdk import (
    DEFAULT_TARGET,
    CompleteEvent,
    RecurClient,
    SentimentEvent,
    Session,
    SessionEvent,
    TranslateEvent,
)
from protos.recur.v1 import inference_pb2

_T = TypeVar("_T")


class _Loop:
    """An event loop running in a daemon thread, and a way to run coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="recur-client-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Runs `coroutine` on the loop and waits for its result (or exception)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def iterate(self, events: AsyncIterator[_T]) -> Iterator[_T]:
        """Iterates `events` on the loop; closing the iterator early closes `events` there too."""
        try:
            while True:
                try:
                    yield self.run(_anext(events))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None and not self.loop.is_closed():
                self.run(aclose())

    def stop(self) -> None:
        """Stops the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _anext(events: AsyncIterator[_T]) -> _T:
    return await events.__anext__()


class SessionSync:
    """The synchronous face of `Session`: send what is typed, iterate over the suggestions."""

    def __init__(self, session: Session, loop: _Loop) -> None:
        self._session = session
        self._loop = loop

    def send_text(self, text: str) -> None:
        """Sends the full text typed so far (one revision)."""
        self._loop.run(self._session.send_text(text))

    def send_edit(self, start: int, end: int, text: str) -> None:
        """Sends an edit of the previous text: replace the characters [start, end) with `text`."""
        self._loop.run(self._session.send_edit(start, end, text))

    def close(self) -> None:
        """Says that nothing more will be sent; the answers in flight still arrive."""
        self._loop.run(self._session.close())

    def __iter__(self) -> Iterator[SessionEvent]:
        return self._loop.iterate(self._session)


class RecurClientSync:
    """A synchronous client of one Recur server; see the module docstring and `RecurClient`."""

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
    ) -> None:
        """Opens a client; the arguments are those of `RecurClient`.

        Raises:
            ValueError: Only one of `client_cert` and `client_key` was given.
        """
        client = RecurClient(
            target,
            timeout=timeout,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            token=token,
            retry=retry,
        )
        self._loop: _Loop | None = _Loop()
        # The channel belongs to the loop that opens it, so it opens there.
        self._client = self._loop.run(client.__aenter__())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel and stops the background loop; closing twice does nothing."""
        if self._loop is not None:
            self._loop.run(self._client.close())
            self._loop.stop()
            self._loop = None

    def translate(self, text: str, **options: Any) -> Iterator[TranslateEvent]:
        """Translates `text`; the options are `RecurClient.translate`'s."""
        return self._open_loop().iterate(self._client.translate(text, **options))

    def sentiment(self, text: str, *, model: str = "") -> Iterator[SentimentEvent]:
        """Classifies `text`; see `RecurClient.sentiment`."""
        return self._open_loop().iterate(self._client.sentiment(text, model=model))

    def complete(self, text: str, **options: Any) -> Iterator[CompleteEvent]:
        """Completes the prefix `text`; the options are `RecurClient.complete`'s."""
        return self._open_loop().iterate(self._client.complete(text, **options))

    def session(self, **options: Any) -> SessionSync:
        """Opens an autocomplete session; the options are `RecurClient.session`'s."""
        loop = self._open_loop()
        return SessionSync(loop.run(self._session(**options)), loop)

    def list_models(self) -> inference_pb2.ListModelsResponse:
        """Returns the models the server has loaded; see `RecurClient.list_models`."""
        return self._open_loop().run(self._client.list_models())

    def health(self, service: str = "") -> str:
        """Returns the health of `service` ("" = the server); see `RecurClient.health`."""
        return self._open_loop().run(self._client.health(service))

    async def _session(self, **options: Any) -> Session:
        # The call object binds to the running loop, so the session starts on the client's loop.
        return self._client.session(**options)

    def _open_loop(self) -> _Loop:
        if self._loop is None:
            raise RuntimeError("RecurClientSync is closed")
        return self._loop
