"""Served autocomplete ranking and translation decoding defaults, over a real `recur-serve`.

Autocomplete: `Complete` and `Session` rank the bundle's popular-query completions with the
model's beam completions exactly as `services.popular.rank` does on the same inputs (the beam
read back from a model-only request, the index candidates scored here by one plain ONNX Runtime
call each); `model_only` answers as a bundle without an index does. Translation: a request that
leaves `beam_size` / `length_penalty` unset gets the manifest's fitted values (clamped to
--max-beam-size); explicit values, 0 included, win.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from clients.calls import one_per_token
from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from services.bundle import verify
from services.decoding import log_softmax
from services.model import LoadedModel
from services.popular import rank, suffix_completions
from services.suggestions import normal_form
from tests.conftest import Server, start_server, stop_server

MAX_BEAM = 10  # the server's --max-beam-size: a model-only request can read the whole beam
WIDE_BEAM = 12  # the "wide" translator's fitted width, over the server's limit
FITTED_BEAM = 8  # the "fitted" translator's, within it
# seen (an index that fills 8 suggestions alone), seen, short, longer, unseen; unseen, and its
# last words start popular query endings; seen, but one completion (the beam adds its own)
PREFIXES = ["how", "weather", "w", "best pizza", "zqx", "zqx to", "weather in p"]
LENDING = ["zqx to"]
SOURCES = ["the small dog sees a red car", "her white cow sends a pilot", "a cat runs",
           "the black cat eats the big fish", "a dog"]  # fmt: skip


def _copy(source: Path, target: Path, name: str, edit: Any) -> Path:
    """A copy of the bundle `source` served as model `name`, its manifest changed by `edit`."""
    shutil.copytree(source, target / name / source.name)
    path = target / name / source.name / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["name"] = name
    edit(manifest, path.parent)
    path.write_text(json.dumps(manifest))
    return path.parent


def _without_index(manifest: dict[str, Any], folder: Path) -> None:
    file = manifest.pop("popular")["file"]
    del manifest["sha256"][file]
    (folder / file).unlink()


def _fitted_within_the_limit(manifest: dict[str, Any], folder: Path) -> None:
    manifest["decoding"] = {"beam_size": FITTED_BEAM, "length_penalty": 2.0}


def _wide(manifest: dict[str, Any], folder: Path) -> None:
    manifest["decoding"] = {"beam_size": WIDE_BEAM, "length_penalty": 2.0}


@pytest.fixture(scope="module")
def repo(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny autocomplete bundle, `plain` (the same without its index), and two copies
    of an untrained translator (the tiny one ends every translation at once; random weights
    write tokens, so beam search and greedy decoding can differ): `fitted`, its fitted beam
    within the server's limit, and `wide`, its fitted beam wider than the server allows."""
    from tests.conftest import untrained_checkpoint
    from trainer.export import export_checkpoint

    root = tmp_path_factory.mktemp("ranked")
    shutil.copytree(tiny_models / "autocomplete", root / "autocomplete")
    _copy(_bundle(root, "autocomplete"), root, "plain", _without_index)
    random = tmp_path_factory.mktemp("untrained")
    export_checkpoint(untrained_checkpoint("translation"), out=random, name="translation")
    _copy(_bundle(random, "translation"), root, "wide", _wide)
    _copy(_bundle(random, "translation"), root, "fitted", _fitted_within_the_limit)
    return root


def _bundle(root: Path, name: str) -> Path:
    return max((root / name).iterdir(), key=lambda p: int(p.name))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    running = start_server(repo, "--max-beam-size", str(MAX_BEAM))
    yield running
    stop_server(running)


def complete(target: str, **fields: Any) -> list[pb.CompleteResponse]:
    async def go() -> list[pb.CompleteResponse]:
        async with aio.insecure_channel(target) as channel:
            stub = pb_grpc.AutocompleteServiceStub(channel)
            call = stub.Complete(pb.CompleteRequest(**fields), timeout=60)
            return [event async for response in call for event in one_per_token(response)]

    return asyncio.run(go())


def translate(target: str, **fields: Any) -> tuple[list[int], str]:
    async def go() -> tuple[list[int], str]:
        async with aio.insecure_channel(target) as channel:
            stub = pb_grpc.TranslationServiceStub(channel)
            call = stub.Translate(pb.TranslateRequest(**fields), timeout=60)
            events = [event async for response in call for event in one_per_token(response)]
        return [e.token.id for e in events[:-1]], events[-1].final.text

    return asyncio.run(go())


def model_logprob(model: LoadedModel, prefix: str, completion: str) -> float:
    """log p(completion, end | prefix) from one plain ONNX Runtime call on the whole text."""
    tokenizer = model.tokenizer
    context = [model.bos_id, *tokenizer.encode(prefix).ids]
    target = [*tokenizer.encode(completion).ids, model.eos_id]
    ids = np.array([[*context, *target[:-1]]], dtype=np.int64)
    logits = model.run("lm_step", {"tokens": ids, **model.zero_state(1)})["logits"][0]
    logp = log_softmax(logits[len(context) - 1 :].astype(np.float64))  # (len(target), V)
    return float(logp[np.arange(len(target)), target].sum())


@pytest.mark.parametrize("prefix", PREFIXES)
def test_served_ranking_equals_popular_rank(server: Server, repo: Path, prefix: str) -> None:
    """The suggestions are `popular.rank` of the index's completions (or, for a prefix it holds
    none of, the suffix index's lent ones, with the suffix weights) and the model's beam (where
    the index cannot fill the answer alone), and the streamed completion is the best of them,
    token by token."""
    model = LoadedModel(verify(_bundle(repo, "autocomplete")))
    assert model.popular is not None
    max_tokens, n = 40, 8
    events = complete(server.target, text=prefix, max_tokens=max_tokens, num_suggestions=n)
    served = events[-1].final
    beam_final = complete(server.target, text=prefix, max_tokens=max_tokens,
                          num_suggestions=model.candidates, model_only=True)[-1].final  # fmt: skip
    beam = [(s.text, s.logprob) for s in beam_final.suggestions]
    query = normal_form(model.tokenizer, prefix)
    indexed = [c for c, _ in model.popular.completions(query, k=model.candidates)]
    assert model.suffixes is not None
    lent = [] if indexed else suffix_completions(model.suffixes, query, k=model.candidates)
    if prefix in LENDING:
        assert lent, f"popular endings lend candidates to {prefix!r}"
    weights = model.ranking if indexed else model.suffix_ranking
    if len(indexed) + len(lent) >= n:
        beam = []  # the index or the endings fill the answer: the model only scores them
    asked = [*indexed, *(c.completion for c in lent)]
    scored = {c: model_logprob(model, query, c) for c in asked if c not in dict(beam)}
    every = rank(model.popular, query, beam, weights, n=1000, index_k=model.candidates,
                 model_logprobs=scored, lent=lent)  # fmt: skip
    expected = {s.completion: (s.score, s.count) for s in every}

    # `rank`'s order up to ties that the wire's float32 log-probabilities cannot tell apart: the
    # same candidates with the same counts and scores, best first, none left out that scores more.
    for s in served.suggestions:
        assert s.text in expected, f"{s.text!r} is not a candidate"
        assert s.score == pytest.approx(expected[s.text][0], abs=1e-4), s.text
        assert s.count == expected[s.text][1], s.text
    scores = [s.score for s in served.suggestions]
    assert scores == sorted(scores, reverse=True)
    left_out = [score for text, (score, _) in expected.items()
                if text not in {s.text for s in served.suggestions}]  # fmt: skip
    assert max(left_out, default=-math.inf) <= min(scores) + 1e-4
    texts = [s.text for s in served.suggestions]
    assert len(texts) == n and len(set(texts)) == n and all(texts), "top N, unique, non-empty"
    tokens = [e.token.text for e in events[:-1]]
    assert "".join(tokens) == served.completion == texts[0], "the best one is streamed"
    assert len(tokens) == served.summary.output_tokens >= 1, "token by token"


def test_index_candidates_rank_with_the_model(server: Server, repo: Path) -> None:
    """On a prefix the log knows, the ranked suggestions hold the log's queries (counts > 0),
    which the model alone does not; on an unseen one only the model's completions remain."""
    seen = complete(server.target, text="how", max_tokens=40, num_suggestions=8)[-1].final
    alone = complete(server.target, text="how", max_tokens=40, num_suggestions=8,
                     model_only=True)[-1].final  # fmt: skip
    assert any(s.count > 0 for s in seen.suggestions)
    assert all(s.count == 0 for s in alone.suggestions)
    assert [s.score for s in alone.suggestions] == [s.logprob for s in alone.suggestions]
    unseen = complete(server.target, text="zqx", max_tokens=40, num_suggestions=8)[-1].final
    assert all(s.count == 0 for s in unseen.suggestions)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"num_suggestions": 5}, "greedy with suggestions"),
        ({"num_suggestions": 0}, "greedy, no suggestions"),
        ({"num_suggestions": 3, "temperature": 1.0, "seed": 7}, "sampled"),
        ({"num_suggestions": 3, "stop": [" "]}, "a stop string"),
    ],
)
def test_model_only_answers_as_a_bundle_without_an_index(
    server: Server, fields: dict[str, Any], reason: str
) -> None:
    """`model_only` on the indexed bundle is, token for token, what the same model without an
    index serves (today's behaviour: the model decodes, its beam suggests)."""
    for prefix in PREFIXES:
        only = complete(server.target, text=prefix, max_tokens=12, model_only=True, **fields)
        plain = complete(server.target, text=prefix, max_tokens=12, model="plain", **fields)
        signature = [
            [(e.token.id, e.token.text) for e in events[:-1]]
            + [(events[-1].final.completion, [(s.text, s.logprob, s.count)
                                              for s in events[-1].final.suggestions])]
            for events in (only, plain)
        ]  # fmt: skip
        assert signature[0] == signature[1], (prefix, reason)


def test_a_session_ranks_at_every_keystroke_as_complete_does(server: Server) -> None:
    """Each revision's suggestions, from the stored state, equal a fresh `Complete` of the same
    text; `model_only` holds for the whole session."""
    texts = ["w", "we", "wea", "weat", "weather", "weather ", "how", "how t"]

    async def go(model_only: bool) -> list[pb.CompleteFinal]:
        finals = []
        async with aio.insecure_channel(server.target) as channel:
            session = pb_grpc.AutocompleteServiceStub(channel).Session(timeout=60)
            for text in texts:
                await session.write(
                    pb.SessionRequest(
                        text=text, max_tokens=12, num_suggestions=8, model_only=model_only
                    )
                )
                while not (response := await session.read()).HasField("final"):
                    pass
                finals.append(response.final)
            await session.done_writing()
        return finals

    for model_only in (False, True):
        finals = asyncio.run(go(model_only))
        for text, final in zip(texts, finals, strict=True):
            fresh = complete(server.target, text=text, max_tokens=12, num_suggestions=8,
                             model_only=model_only)[-1].final  # fmt: skip
            assert final.completion == fresh.completion, (text, model_only)
            assert [(s.text, s.count) for s in final.suggestions] == [
                (s.text, s.count) for s in fresh.suggestions
            ], (text, model_only)
            assert [s.score for s in final.suggestions] == pytest.approx(
                [s.score for s in fresh.suggestions], abs=1e-4
            )
            assert len(final.suggestions) == 8


def _fitted(repo: Path, name: str) -> tuple[int, float]:
    decoding = json.loads((_bundle(repo, name) / "manifest.json").read_text())["decoding"]
    return int(decoding["beam_size"]), float(decoding["length_penalty"])


@pytest.mark.parametrize("name", ["fitted", "wide"])
def test_unset_translation_fields_take_the_fitted_defaults(
    server: Server, repo: Path, name: str
) -> None:
    beam, penalty = _fitted(repo, name)
    assert beam > 1, "the bundle's defaults must be a beam search for this test to tell"
    beam = min(beam, MAX_BEAM)  # clamped to the server's limit
    for text in SOURCES:
        unset = translate(server.target, text=text, model=name)
        assert unset[0], f"{text!r}: random weights write tokens to compare"
        assert unset == translate(server.target, text=text, model=name, beam_size=beam,
                                  length_penalty=penalty), text  # fmt: skip
        assert unset == translate(server.target, text=text, model=name, beam_size=beam), text
    greedy = [translate(server.target, text=t, model=name, beam_size=1) for t in SOURCES]
    defaults = [translate(server.target, text=t, model=name) for t in SOURCES]
    assert greedy != defaults, "the fitted beam search translates differently from greedy"


def test_explicit_translation_fields_win(server: Server, repo: Path) -> None:
    beam = min(_fitted(repo, "wide")[0], MAX_BEAM)
    for text in SOURCES:
        greedy = translate(server.target, text=text, model="wide", beam_size=1)
        assert translate(server.target, text=text, model="wide", beam_size=0) == greedy, (
            "an explicit 0 is greedy, not unset"
        )
        assert translate(server.target, text=text, model="wide", include_attention=True) == (
            greedy
        ), "attention is streamed by greedy decoding: unset beam_size with it is greedy"
        unpenalized = translate(server.target, text=text, model="wide", length_penalty=0.0)
        assert unpenalized == translate(server.target, text=text, model="wide", beam_size=beam,
                                        length_penalty=0.0), text  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message", "reason"),
    [
        ({"beam_size": MAX_BEAM + 1}, f"beam_size must be in [0, {MAX_BEAM}]", "over the limit"),
        ({"length_penalty": -0.5}, "length_penalty must be in [0, 2]", "negative"),
        ({"length_penalty": math.nan}, "length_penalty must be in [0, 2]", "NaN"),
        ({"length_penalty": 2.5}, "length_penalty must be in [0, 2]", "over 2"),
    ],
)
def test_bad_translation_fields_name_the_field(
    server: Server, fields: dict[str, Any], message: str, reason: str
) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        translate(server.target, text="a dog", **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reason
    assert (info.value.details() or "").startswith(message), reason


def _corrupt(key: str) -> Any:
    def edit(manifest: dict[str, Any], folder: Path) -> None:
        file = folder / manifest["popular"][key]
        file.write_bytes(b"not an archive")
        manifest["sha256"][file.name] = hashlib.sha256(file.read_bytes()).hexdigest()

    return edit


def _unlisted(key: str) -> Any:
    def edit(manifest: dict[str, Any], folder: Path) -> None:
        manifest["popular"][key] = "elsewhere.npz"

    return edit


@pytest.mark.parametrize(
    ("edit", "message", "reason"),
    [
        (_corrupt("file"), "popular.npz: popular-query index is not an .npz archive",
         "listed and hashed, not an index"),
        (_unlisted("file"), "popular-query index 'elsewhere.npz' is not listed",
         "not a bundle file"),
        (_corrupt("suffix_file"), "suffixes.npz: popular-query index is not an .npz archive",
         "the suffix index: listed and hashed, not an index"),
        (_unlisted("suffix_file"), "suffix index 'elsewhere.npz' is not listed",
         "the suffix index: not a bundle file"),
    ],
)  # fmt: skip
def test_a_bad_index_refuses_the_bundle(
    repo: Path, tmp_path: Path, edit: Any, message: str, reason: str
) -> None:
    """The index loads with the model, once, and a bad one refuses the bundle like a bad graph."""
    from services.errors import BundleError

    model = LoadedModel(verify(_bundle(repo, "autocomplete")))
    assert model.popular is not None and len(model.popular) > 0
    bad = _copy(_bundle(repo, "autocomplete"), tmp_path, "autocomplete", edit)
    with pytest.raises(BundleError, match=message) as info:
        LoadedModel(verify(bad))
    assert str(bad) in str(info.value), reason  # the message names the bundle
