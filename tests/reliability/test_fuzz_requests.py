"""Bad input, property-based: every field of every request message, over a real channel.

Hypothesis draws requests with arbitrary Unicode (emoji, right-to-left marks, combining marks,
control characters, NUL), empty and whitespace-only text, text at and beyond the length limit,
numbers that are negative (as unsigned wire values), zero, NaN, infinite and huge, unknown models
and versions, and session edits that delete past the start or replace out of range; raw bytes
that are not a message at all; valid messages carrying unknown fields. An oracle written from
`inference.proto`'s documented ranges says which fields are invalid; the server must answer:

- OK, with a well-formed stream (tokens numbered from 0, exactly one final event, last), when no
  field is invalid and the model exists;
- INVALID_ARGUMENT whose message starts with the name of one of the invalid fields;
- NOT_FOUND when the fields are valid but the model is not loaded;

and never UNKNOWN or INTERNAL. One server serves the whole module; the last test checks it still
says SERVING and that its memory stayed bounded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clients.calls import one_per_token
from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import Server, start_server, stop_server
from tests.reliability.harness import MIB, health, rss_bytes

MAX_CHARS, MAX_TOKENS, MAX_BEAM = 120, 12, 4  # the server's limits in this module
DEFAULT_MAX_TOKENS = 4  # its --default-max-tokens
FLAGS = ("--max-input-chars", str(MAX_CHARS), "--max-tokens-limit", str(MAX_TOKENS),
         "--max-beam-size", str(MAX_BEAM),
         "--default-max-tokens", str(DEFAULT_MAX_TOKENS))  # fmt: skip
MODELS = {"translation": "translation", "sentiment": "sentiment", "autocomplete": "autocomplete"}
EXAMPLES = {  # 2,150 in all
    "translate": 400,
    "analyze": 300,
    "complete": 500,
    "session": 350,
    "model": 250,
    "raw": 350,
}
FUZZ = settings(
    deadline=None,
    database=None,  # no .hypothesis folder in the work tree; failures print their example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
UINT32, UINT64 = 2**32 - 1, 2**64 - 1


@dataclass
class Fuzzed:
    server: Server
    channel: grpc.Channel
    baseline_rss: int


@pytest.fixture(scope="module")
def fuzzed(tiny_models: Path) -> Iterator[Fuzzed]:
    server = start_server(tiny_models, *FLAGS)
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.AutocompleteServiceStub(channel)
    for _ in range(50):  # warm up every code path once before the memory baseline
        list(stub.Complete(pb.CompleteRequest(text="how to", max_tokens=MAX_TOKENS)))
        list(pb_grpc.TranslationServiceStub(channel).Translate(pb.TranslateRequest(text="a dog")))
    yield Fuzzed(server, channel, rss_bytes(server.process.pid))
    channel.close()
    stop_server(server)


# ------------------------------------------------------------------------------------------
# Strategies: hostile values for every field.

SPECIAL_TEXT = [
    "", " ", "\t\n\r", "\u3000\u2003", "\u200f\u200e\u202e", "a\u0301\u0302", "\u0301",
    "🙂👍🏽🏳️‍🌈", "مرحبا بالعالم", "שלום", "\x00", "how\x00to", "\x01\x02\x7f", "\ufeff",
    "\U0010ffff", "\ufffd", "the small dog", "weather in",
]  # fmt: skip
texts = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(SPECIAL_TEXT),
    st.builds(str.__mul__, st.sampled_from("a🙂 "), st.integers(MAX_CHARS - 2, MAX_CHARS + 2)),
    st.builds(lambda n: "x" * n, st.integers(MAX_CHARS + 3, 5 * MAX_CHARS)),
)
floats32 = st.one_of(
    st.floats(width=32),  # NaN, infinities, subnormals, -0.0, the largest float32
    st.sampled_from([0.0, -0.0, -1.0, 1e-45, 0.5, 1.0, 1.0000001, 2.0, 5.0, 5.0000005, 10.0]),
)
uint32s = st.one_of(
    st.integers(0, 3 * MAX_TOKENS),
    st.sampled_from([UINT32, 2**31, 2**31 - 1, UINT32 - 1]),  # -1, INT_MIN as unsigned ...
    st.integers(0, UINT32),
)
# Versions: superscript two and Arabic-Indic one are digits to str.isdigit, not to int().
VERSIONS = ["1", "01", "2", "0", "", "\u00b2", "\u0661", "1.0", "-1", "9" * 30]
model_names = st.one_of(
    st.just(""),
    st.sampled_from(sorted(MODELS)),
    st.builds(lambda n, v: f"{n}@{v}", st.sampled_from(sorted(MODELS)),
              st.sampled_from(VERSIONS)),
    st.sampled_from(["../autocomplete", "autocomplete/1", "..\\x", "/etc/passwd", "nope",
                     "autocomplete\x00", "a" * 201, "sentiment@1@1"]),
    st.text(max_size=30),
)  # fmt: skip


def uint32_fields(*names: str) -> dict[str, st.SearchStrategy[int]]:
    return dict.fromkeys(names, uint32s)


# ------------------------------------------------------------------------------------------
# The oracle: which fields of a request are invalid, by inference.proto's documented ranges.


def f32(value: float) -> float:
    """What a float field holds once it crossed the wire (float32)."""
    return float(np.float32(value))


def text_ok(value: str, *, allow_empty: bool = False) -> bool:
    return (allow_empty or bool(value.strip())) and len(value) <= MAX_CHARS and "\x00" not in value


def in_range(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


def model_problem(name: str, task: str) -> str:
    """ "model" for a name that cannot be a model's, "missing" for one not loaded, else ""."""
    if len(name) > 200 or any(c in name for c in "/\\\x00"):
        return "model"
    base, _, version = name.partition("@")
    if version:  # name@version pins a version: ASCII digits, and only version 1 is loaded
        found = base in MODELS and version.isascii() and version.isdigit() and int(version) == 1
    else:
        found = not base or base in MODELS
    return "" if found and (base or task) == task else "missing"


def max_tokens_ok(value: int) -> bool:
    return value == 0 or 1 <= value <= MAX_TOKENS


def translate_problems(r: pb.TranslateRequest) -> set[str]:
    checks = {
        "text": text_ok(r.text),
        "max_tokens": max_tokens_ok(r.max_tokens),
        "max_length_ratio": in_range(r.max_length_ratio, 0, 10),
        "beam_size": r.beam_size <= MAX_BEAM,
        "length_penalty": in_range(r.length_penalty, 0, 2),
        "min_tokens": r.min_tokens <= (r.max_tokens or MAX_TOKENS),
    }
    return {name for name, ok in checks.items() if not ok}


def complete_problems(r: pb.CompleteRequest) -> set[str]:
    checks = {
        "text": text_ok(r.text),
        "max_tokens": max_tokens_ok(r.max_tokens),
        "temperature": in_range(r.temperature, 0, 5),
        "top_p": in_range(r.top_p, 0, 1),
        "top_k": r.top_k <= 1_000_000,
        "stop": len(r.stop) <= 8 and all(1 <= len(s) <= 64 and "\x00" not in s for s in r.stop),
        "num_suggestions": r.num_suggestions <= MAX_BEAM,
        "min_tokens": r.min_tokens <= (r.max_tokens or DEFAULT_MAX_TOKENS),
    }
    return {name for name, ok in checks.items() if not ok}


def session_problems(requests: list[pb.SessionRequest]) -> tuple[set[str], str]:
    """The invalid fields the server must name first, and the model problem of the session."""
    if not requests:
        return set(), ""
    first = requests[0]
    params = {"max_tokens"} if not max_tokens_ok(first.max_tokens) else set()
    if first.num_suggestions > MAX_BEAM:
        params.add("num_suggestions")
    if params:
        return params, ""
    problem = model_problem(first.model, "autocomplete")
    if problem:
        return ({"model"} if problem == "model" else set()), problem
    current = ""
    for request in requests:
        if request.WhichOneof("input") == "edit":
            edit = request.edit
            if not text_ok(edit.text, allow_empty=True):
                return {"edit.text"}, ""
            if edit.end > len(current):
                return {"edit.end"}, ""
            if edit.start > edit.end:
                return {"edit.start"}, ""
            current = current[: edit.start] + edit.text + current[edit.end :]
        else:
            current = request.text
        if not text_ok(current, allow_empty=True):
            return {"text"}, ""
    return set(), ""


# ------------------------------------------------------------------------------------------
# Running a call and judging its answer.


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    events: list[Any]


def call(stream: Iterable[Any]) -> Answer:
    events: list[Any] = []
    try:
        for response in stream:
            events.extend(one_per_token(response))
    except grpc.RpcError as error:
        return Answer(error.code(), error.details() or "", events)
    return Answer(grpc.StatusCode.OK, "", events)


def judge(answer: Answer, problems: set[str], model: str, *, may_have_no_tokens: bool) -> None:
    """The answer is the one the oracle expects: never UNKNOWN or INTERNAL."""
    assert answer.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), answer
    if problems:
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, (problems, answer)
        assert answer.details.split(" ", 1)[0] in problems, (problems, answer.details)
    elif model == "model":
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, answer
        assert answer.details.startswith("model is not a valid model name"), answer.details
    elif model == "missing":
        assert answer.code == grpc.StatusCode.NOT_FOUND, answer
        assert "model" in answer.details, answer.details
    elif answer.code == grpc.StatusCode.INVALID_ARGUMENT and may_have_no_tokens:
        assert answer.details == "text has no tokens for this model's tokenizer", answer
    else:
        assert answer.code == grpc.StatusCode.OK, answer


def well_formed(events: list[Any], *, served_by: str, most_tokens: int | None = None) -> Any:
    """Tokens numbered from 0, then exactly one final event, last; returns the final."""
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds and kinds[-1] == "final" and kinds.count("final") == 1, kinds
    tokens = [event.token for event in events[:-1]]
    assert [t.index for t in tokens] == list(range(len(tokens)))
    final = events[-1].final
    assert final.summary.model == served_by
    assert final.summary.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    if most_tokens is not None:
        assert len(tokens) <= most_tokens
    return final


# ------------------------------------------------------------------------------------------
# The properties, one per rpc.


@settings(FUZZ, max_examples=EXAMPLES["translate"])
@given(
    st.builds(
        pb.TranslateRequest,
        text=texts,
        model=st.one_of(st.just(""), st.just("translation"), model_names),
        include_attention=st.booleans(),
        length_penalty=floats32,
        max_length_ratio=floats32,
        **uint32_fields("max_tokens", "beam_size", "min_tokens"),
    )
)
def test_translate_answers_every_request_by_the_book(
    fuzzed: Fuzzed, request: pb.TranslateRequest
) -> None:
    stub = pb_grpc.TranslationServiceStub(fuzzed.channel)
    answer = call(stub.Translate(request, timeout=60))
    problems = translate_problems(request)
    model = model_problem(request.model, "translation")
    judge(answer, problems, model, may_have_no_tokens=False)
    if answer.code == grpc.StatusCode.OK:
        final = well_formed(answer.events, served_by="translation")
        assert final.text == "".join(e.token.text for e in answer.events[:-1])
        ratio = f32(request.max_length_ratio) or 2.0
        derived = int(ratio * len(final.source_tokens)) + 10
        limit = request.max_tokens or max(derived, request.min_tokens)
        assert request.min_tokens <= final.summary.output_tokens == len(answer.events) - 1 <= limit
        if request.include_attention and request.beam_size <= 1:
            width = len(final.source_tokens)
            assert all(len(e.token.attention) == width for e in answer.events[:-1])


@settings(FUZZ, max_examples=EXAMPLES["analyze"])
@given(st.builds(pb.SentimentRequest, text=texts, model=model_names))
def test_analyze_answers_every_request_by_the_book(
    fuzzed: Fuzzed, request: pb.SentimentRequest
) -> None:
    stub = pb_grpc.SentimentServiceStub(fuzzed.channel)
    answer = call(stub.Analyze(request, timeout=60))
    problems = {"text"} if not text_ok(request.text) else set()
    judge(answer, problems, model_problem(request.model, "sentiment"), may_have_no_tokens=True)
    if answer.code == grpc.StatusCode.OK:
        final = well_formed(answer.events, served_by="sentiment")
        assert final.label in final.labels
        assert math.isclose(sum(final.probabilities), 1.0, abs_tol=1e-4)
        assert final.summary.input_tokens == len(answer.events) - 1


@settings(FUZZ, max_examples=EXAMPLES["complete"])
@given(
    st.builds(
        pb.CompleteRequest,
        text=texts,
        model=st.one_of(st.just(""), model_names),
        temperature=floats32,
        top_p=floats32,
        seed=st.one_of(st.none(), st.integers(0, UINT64)),
        stop=st.lists(st.one_of(texts, st.text(max_size=3)), max_size=10),
        **uint32_fields("max_tokens", "top_k", "num_suggestions", "min_tokens"),
    )
)
def test_complete_answers_every_request_by_the_book(
    fuzzed: Fuzzed, request: pb.CompleteRequest
) -> None:
    stub = pb_grpc.AutocompleteServiceStub(fuzzed.channel)
    answer = call(stub.Complete(request, timeout=60))
    problems = complete_problems(request)
    judge(answer, problems, model_problem(request.model, "autocomplete"), may_have_no_tokens=False)
    if answer.code == grpc.StatusCode.OK:
        most = request.max_tokens or DEFAULT_MAX_TOKENS
        final = well_formed(answer.events, served_by="autocomplete", most_tokens=most)
        assert len(answer.events) - 1 >= request.min_tokens
        assert final.completion == "".join(e.token.text for e in answer.events[:-1])
        assert len(final.suggestions) == request.num_suggestions


edits = st.builds(
    lambda start, end, text: pb.SessionRequest(edit=pb.TextEdit(start=start, end=end, text=text)),
    st.one_of(st.integers(0, 12), st.sampled_from([UINT32, 2**31])),
    st.one_of(st.integers(0, 12), st.sampled_from([UINT32, 2**31])),
    st.one_of(st.text(max_size=8), st.sampled_from(SPECIAL_TEXT)),
)
session_messages = st.lists(
    st.one_of(edits, st.builds(pb.SessionRequest, text=texts), st.just(pb.SessionRequest())),
    max_size=5,
)


@settings(FUZZ, max_examples=EXAMPLES["session"])
@given(
    session_messages,
    st.one_of(st.just(""), model_names),
    st.one_of(st.integers(0, MAX_TOKENS), uint32s),
    st.one_of(st.just(0), uint32s),
)
def test_session_answers_every_edit_by_the_book(
    fuzzed: Fuzzed, messages: list[pb.SessionRequest], model: str, max_tokens: int, suggest: int
) -> None:
    if messages:
        messages[0].model, messages[0].max_tokens = model, max_tokens
        messages[0].num_suggestions = suggest
    stub = pb_grpc.AutocompleteServiceStub(fuzzed.channel)
    answer = call(stub.Session(iter(messages), timeout=60))
    problems, model_state = session_problems(messages)
    judge(answer, problems, model_state, may_have_no_tokens=False)
    if answer.code == grpc.StatusCode.OK:
        finals = [e.revision for e in answer.events if e.WhichOneof("event") == "final"]
        assert finals == list(range(1, len(messages) + 1)), "one final per message, in order"
        assert all(1 <= e.revision <= len(messages) for e in answer.events)


RPCS = {
    "Translate": (pb_grpc.TranslationServiceStub, "Translate", pb.TranslateRequest),
    "Analyze": (pb_grpc.SentimentServiceStub, "Analyze", pb.SentimentRequest),
    "Complete": (pb_grpc.AutocompleteServiceStub, "Complete", pb.CompleteRequest),
}


@settings(FUZZ, max_examples=EXAMPLES["model"])
@given(st.sampled_from(sorted(RPCS)), model_names)
@example(rpc="Analyze", name="sentiment@\u00b2")  # was INTERNAL: int() refused a digit
def test_any_model_name_is_found_refused_or_unknown(fuzzed: Fuzzed, rpc: str, name: str) -> None:
    stub_type, method, message = RPCS[rpc]
    request = message(text="the dog", model=name)
    answer = call(getattr(stub_type(fuzzed.channel), method)(request, timeout=60))
    task = {"Translate": "translation", "Analyze": "sentiment"}.get(rpc, "autocomplete")
    judge(answer, set(), model_problem(name, task), may_have_no_tokens=False)


UNKNOWN_FIELDS = [b"\xa0\x06\x05", b"\xfa\x3e\x03abc", b"\x8d\x7f\x00\x00\x80\x7f", b"\xb8\x01\x2a"]
METHODS = {
    "Translate": ("/recur.v1.TranslationService/Translate", pb.TranslateRequest),
    "Analyze": ("/recur.v1.SentimentService/Analyze", pb.SentimentRequest),
    "Complete": ("/recur.v1.AutocompleteService/Complete", pb.CompleteRequest),
    "ListModels": ("/recur.v1.ModelService/ListModels", pb.ListModelsRequest),
    "Session": ("/recur.v1.AutocompleteService/Session", pb.SessionRequest),
}


def _parses(message: type[Any], raw: bytes) -> Any | None:
    try:
        return message.FromString(raw)
    except Exception:  # DecodeError, or a RuntimeWarning-free refusal of bad UTF-8
        return None


@settings(FUZZ, max_examples=EXAMPLES["raw"])
@given(
    st.sampled_from(sorted(METHODS)),
    st.one_of(
        st.binary(max_size=48),
        st.builds(
            lambda text, tail: (
                pb.CompleteRequest(text=text, max_tokens=2).SerializeToString() + tail
            ),
            st.sampled_from(["how", "the dog", "good"]),
            st.sampled_from(UNKNOWN_FIELDS),
        ),
    ),
)
@example(rpc="Complete", raw=b"\x0a\x02\xff\xfe")  # bad UTF-8: was UNKNOWN, leaking the parser
@example(rpc="Session", raw=b"\xff")  # broken wire format: was INTERNAL
def test_bytes_that_are_not_a_request_are_invalid_arguments(
    fuzzed: Fuzzed, rpc: str, raw: bytes
) -> None:
    """Undecodable bytes (bad UTF-8, broken wire format) are INVALID_ARGUMENT naming `request`;
    decodable ones, unknown fields and all, are judged like any message."""
    path, message = METHODS[rpc]
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    if rpc == "ListModels":
        method = fuzzed.channel.unary_unary(path, **identity)

        def once() -> Iterator[bytes]:
            yield method(raw, timeout=60)

        answer = call(once())
    elif rpc == "Session":
        answer = call(fuzzed.channel.stream_stream(path, **identity)(iter([raw]), timeout=60))
    else:
        answer = call(fuzzed.channel.unary_stream(path, **identity)(raw, timeout=60))
    parsed = _parses(message, raw)
    assert answer.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), answer
    if parsed is None:
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, answer
        assert answer.details.startswith(f"request is not a valid recur.v1.{message.__name__}")
        return
    if rpc == "Session":
        problems, model = session_problems([parsed])
    elif rpc == "ListModels":
        problems, model = set(), ""
    else:
        task = {"Translate": "translation", "Analyze": "sentiment"}.get(rpc, "autocomplete")
        oracle = {"Translate": translate_problems, "Complete": complete_problems}
        if rpc in oracle:
            problems = oracle[rpc](parsed)
        else:
            problems = set() if text_ok(parsed.text) else {"text"}
        model = model_problem(parsed.model, task)
    judge(answer, problems, model, may_have_no_tokens=rpc == "Analyze")


def test_the_server_survived_serving_and_bounded(fuzzed: Fuzzed) -> None:
    """After every example above: still SERVING, still answering, memory within 64 MiB of the
    warmed-up baseline."""
    assert health(fuzzed.server.target) == "SERVING"
    stub = pb_grpc.AutocompleteServiceStub(fuzzed.channel)
    events = list(stub.Complete(pb.CompleteRequest(text="how to", max_tokens=3), timeout=30))
    assert events[-1].WhichOneof("event") == "final"
    grown = rss_bytes(fuzzed.server.process.pid) - fuzzed.baseline_rss
    assert grown < 64 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"
