"""gRPC servicers: proto → domain → engine → proto, nothing more."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from services import validation
from services.engine import Engine
from services.errors import Expired, ServiceError
from services.events import Event, Finished, FinishReason, RunningLabel, TokenEvent
from services.interceptors import Context, current_call, expire
from services.metrics import CallInfo, ServerMetrics
from services.model import LoadedModel
from services.requests import CompleteParams, TranslateParams, translation_defaults
from services.session import Edit, IdleTimer, SessionInput, run_session

_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.SUPERSEDED: pb.FINISH_REASON_SUPERSEDED,
}


def summary(event: Finished) -> pb.StreamSummary:
    return pb.StreamSummary(
        finish_reason=_REASONS[event.reason],
        input_tokens=event.input_tokens,
        output_tokens=event.output_tokens,
        model=event.model,
        version=event.version,
        timings=pb.Timings(
            queue_seconds=event.queue_seconds,
            time_to_first_token_seconds=event.time_to_first_token_seconds,
            total_seconds=event.total_seconds,
            mean_inter_token_seconds=event.mean_inter_token_seconds,
        ),
    )


def token(event: TokenEvent) -> pb.GeneratedToken:
    return pb.GeneratedToken(
        index=event.index,
        id=event.id,
        text=event.text,
        logprob=event.logprob,
        attention=event.attention,
    )


def complete_final(event: Finished) -> pb.CompleteFinal:
    return pb.CompleteFinal(
        completion=event.text,
        summary=summary(event),
        suggestions=[
            pb.Suggestion(text=s.text, logprob=s.logprob, score=s.score, count=s.count)
            for s in event.suggestions
        ],
    )


def _runs(batch: list[Event]) -> list[list[Event]]:
    """A message batch split into runs of token events and single final events, in order: each
    run becomes one response message."""
    runs: list[list[Event]] = []
    for event in batch:
        if runs and not isinstance(event, Finished) and not isinstance(runs[-1][-1], Finished):
            runs[-1].append(event)
        else:
            runs.append([event])
    return runs


R = TypeVar("R", pb.TranslateResponse, pb.CompleteResponse, pb.SessionResponse)


def _generated(response: R, run: list[Event]) -> R:
    """`response` carrying `run`: in its `token` field (one token) or `tokens` (several)."""
    tokens = [token(e) for e in run if isinstance(e, TokenEvent)]
    if len(tokens) == 1:
        response.token.CopyFrom(tokens[0])
    else:
        response.tokens.tokens.extend(tokens)
    return response


def _running(event: RunningLabel) -> pb.SentimentToken:
    return pb.SentimentToken(
        index=event.index,
        id=event.id,
        text=event.text,
        label=event.label,
        probabilities=event.probabilities,
    )


class Servicers(
    pb_grpc.TranslationServiceServicer,
    pb_grpc.SentimentServiceServicer,
    pb_grpc.AutocompleteServiceServicer,
    pb_grpc.ModelServiceServicer,
):
    """Every Recur service on one engine.

    The engine hands a stream's events over in batches (everything produced while the previous
    message was being written; see `collector`); each batch becomes one message of tokens, and
    the final event one message of its own.
    """

    def __init__(
        self,
        engine: Engine,
        metrics: ServerMetrics,
        limits: validation.Limits,
        *,
        default_max_tokens: int,
        session_ttl_seconds: float = 300.0,
        stream_interval: int = 1,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.limits = limits
        self.default_max_tokens = default_max_tokens
        self.session_ttl_seconds = session_ttl_seconds
        self.stream_interval = stream_interval
        self.sessions: dict[int, CallInfo] = {}  # the open Session calls, by id

    def end_sessions(self, error: ServiceError) -> None:
        """End every open session with `error`'s status (a drain: UNAVAILABLE, so that its
        client opens a new one elsewhere, instead of being cut when the grace runs out)."""
        for info in list(self.sessions.values()):
            expire(info, error)

    def _model(self, name: str, task: str) -> LoadedModel:
        model = self.engine.resolve(validation.model_name(name), task)
        info = current_call()
        info.model, info.version, info.task = model.name, str(model.version), model.task
        return model

    def _interval(self, requested: int) -> int:
        return validation.stream_interval(requested, self.limits, default=self.stream_interval)

    def _observe(
        self, batches: AsyncGenerator[list[Event], None]
    ) -> AsyncGenerator[list[Event], None]:
        return self.metrics.observe(batches, current_call())

    async def Translate(
        self, request: pb.TranslateRequest, context: Context
    ) -> AsyncIterator[pb.TranslateResponse]:
        arrived = time.perf_counter()
        text = validation.text(request.text, self.limits)
        max_tokens = validation.max_tokens(request.max_tokens, self.limits, default=0)
        min_tokens = validation.min_tokens(request.min_tokens, self.limits, max_tokens=max_tokens)
        ratio = validation.in_range("max_length_ratio", request.max_length_ratio, 0.0, 10.0)
        beam = validation.beam_size(request.beam_size, self.limits)
        penalty = validation.in_range("length_penalty", request.length_penalty, 0, 2)
        interval = self._interval(request.stream_interval)
        model = self._model(request.model, "translation")
        fitted_beam, fitted_penalty = translation_defaults(
            model.bundle.manifest.decoding, max_beam_size=self.limits.max_beam_size
        )
        if not request.HasField("beam_size"):  # unset, not 0: the model's fitted width, but
            beam = 1 if request.include_attention else fitted_beam  # attention streams greedily
        if not request.HasField("length_penalty"):
            penalty = fitted_penalty
        params = TranslateParams(
            max_tokens=max_tokens,
            max_length_ratio=ratio or 2.0,
            beam_size=beam,
            length_penalty=penalty,
            include_attention=request.include_attention,
            cap=self.limits.max_tokens_limit,
            min_tokens=min_tokens,
        )
        batches = self.engine.translate(model, text, params, arrived=arrived, interval=interval)
        async with contextlib.aclosing(self._observe(batches)) as stream:
            async for batch in stream:
                for run in _runs(batch):
                    event = run[0]
                    if isinstance(event, Finished):
                        final = pb.TranslateFinal(
                            text=event.text,
                            source_tokens=event.source_tokens,
                            summary=summary(event),
                        )
                        yield pb.TranslateResponse(final=final)
                    else:
                        yield _generated(pb.TranslateResponse(), run)

    async def Analyze(
        self, request: pb.SentimentRequest, context: Context
    ) -> AsyncIterator[pb.SentimentResponse]:
        arrived = time.perf_counter()
        text = validation.text(request.text, self.limits)
        interval = self._interval(request.stream_interval)
        model = self._model(request.model, "sentiment")
        batches = self.engine.analyze(model, text, arrived=arrived, interval=interval)
        async with contextlib.aclosing(self._observe(batches)) as stream:
            async for batch in stream:
                for run in _runs(batch):
                    event = run[0]
                    if isinstance(event, Finished):
                        final = pb.SentimentFinal(
                            label=event.text,
                            probabilities=event.probabilities,
                            labels=event.labels,
                            summary=summary(event),
                        )
                        yield pb.SentimentResponse(final=final)
                    elif len(run) == 1 and isinstance(event, RunningLabel):
                        yield pb.SentimentResponse(token=_running(event))
                    else:
                        labels = [_running(e) for e in run if isinstance(e, RunningLabel)]
                        yield pb.SentimentResponse(tokens=pb.SentimentTokens(tokens=labels))

    async def Complete(
        self, request: pb.CompleteRequest, context: Context
    ) -> AsyncIterator[pb.CompleteResponse]:
        arrived = time.perf_counter()
        text = validation.text(request.text, self.limits)
        seed = request.seed if request.HasField("seed") else None
        max_tokens = validation.max_tokens(
            request.max_tokens, self.limits, default=self.default_max_tokens
        )
        params = CompleteParams(
            max_tokens=max_tokens,
            sampling=validation.sampling(request.temperature, request.top_k, request.top_p, seed),
            stop=validation.stop_strings(list(request.stop)),
            suggestions=validation.suggestions(request.num_suggestions, self.limits),
            model_only=request.model_only,
            min_tokens=validation.min_tokens(
                request.min_tokens, self.limits, max_tokens=max_tokens
            ),
        )
        interval = self._interval(request.stream_interval)
        model = self._model(request.model, "autocomplete")
        batches = self.engine.complete(model, text, params, arrived=arrived, interval=interval)
        async with contextlib.aclosing(self._observe(batches)) as stream:
            async for batch in stream:
                for run in _runs(batch):
                    event = run[0]
                    if isinstance(event, Finished):
                        yield pb.CompleteResponse(final=complete_final(event))
                    else:
                        yield _generated(pb.CompleteResponse(), run)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: Context
    ) -> AsyncIterator[pb.SessionResponse]:
        info = current_call()
        # Idle from the start: a session that never sends its first message holds a place of
        # --max-streams too, and ends like any other idle one.
        idle = IdleTimer(self.session_ttl_seconds, lambda: expire(info, self._idle_error()))
        self.sessions[id(info)] = info
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None:
                return
            idle.touch()
            params = CompleteParams(
                max_tokens=validation.max_tokens(
                    first.max_tokens, self.limits, default=self.default_max_tokens
                ),
                suggestions=validation.suggestions(first.num_suggestions, self.limits),
                model_only=first.model_only,
            )
            interval = self._interval(first.stream_interval)
            model = self._model(first.model, "autocomplete")

            async def inputs() -> AsyncIterator[SessionInput]:
                yield self._session_input(first)
                async for request in request_iterator:
                    idle.touch()
                    yield self._session_input(request)

            answers = run_session(
                self.engine,
                model,
                inputs(),
                params=params,
                max_chars=self.limits.max_input_chars,
                interval=interval,
            )
            with self.metrics.streaming(info) as meter:  # an open session: a stream in progress
                async with contextlib.aclosing(answers) as stream:
                    async for batch in stream:
                        for revision, run in _revisions(batch):
                            if meter is not None:
                                meter.message(run)
                            event = run[0]
                            if isinstance(event, Finished):
                                idle.touch()
                                final = complete_final(event)
                                yield pb.SessionResponse(revision=revision, final=final)
                            else:
                                yield _generated(pb.SessionResponse(revision=revision), run)
        finally:
            idle.cancel()
            del self.sessions[id(info)]

    def _idle_error(self) -> Expired:
        return Expired(
            f"session idle for more than {self.session_ttl_seconds:g} s (--session-ttl-seconds); "
            "open a new one"
        )

    def _session_input(self, request: pb.SessionRequest) -> SessionInput:
        arrived = time.perf_counter()
        if request.WhichOneof("input") == "edit":
            edit = request.edit
            inserted = validation.text(edit.text, self.limits, field="edit.text", allow_empty=True)
            return SessionInput(edit=Edit(edit.start, edit.end, inserted), arrived=arrived)
        text = validation.text(request.text, self.limits, allow_empty=True)
        return SessionInput(text=text, arrived=arrived)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        registry = self.engine.registry
        defaults = {
            (m.name, m.version)
            for task in ("translation", "sentiment", "autocomplete")
            if (m := registry.default_for(task)) is not None
        }
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=m.name,
                    version=m.version,
                    task=m.task,
                    cell=m.bundle.manifest.cell,
                    is_default=(m.name, m.version) in defaults,
                    metrics=dict(m.bundle.manifest.training.metrics),
                )
                for m in sorted(registry.models.values(), key=lambda m: (m.name, m.version))
            ]
        )


def _revisions(batch: list[tuple[int, Event]]) -> list[tuple[int, list[Event]]]:
    """A session's message batch as `(revision, run)` pairs: `_runs` within each revision."""
    out: list[tuple[int, list[Event]]] = []
    start = 0
    for end in range(1, len(batch) + 1):
        if end == len(batch) or batch[end][0] != batch[start][0]:
            out += [(batch[start][0], run) for run in _runs([e for _, e in batch[start:end]])]
            start = end
    return out
