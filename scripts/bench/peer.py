"""The peer: Recur's ONNX graphs served the way a Ray Serve user would serve them.

One deployment behind Ray Serve's gRPC ingress with Recur's own proto (`AutocompleteService`,
`TranslationService`), so the same load generator drives it. A straightforward deployment:

- one replica (one CPU), ONNX Runtime with one intra-op thread as `recur-serve` has by default,
  the bundle's ORT-optimized graph files (what `recur-serve` serves);
- `@serve.batch` on a generator: requests that arrive within `batch_wait_timeout_s` of each
  other (up to `max_batch_size`) are read in one at a time (prefill), then decoded together, one
  batched ONNX Runtime call per token, each step yielding every request's next message; a
  request whose decoding ends yields `StopIteration`. A batch runs until its longest request ends
  (static batching: later requests wait for the next batch);
- as many batches in flight (`max_concurrent_batches`) as `recur-serve` has executor threads
  (`--executor-workers`), each ONNX Runtime call on a thread of a pool of that size while
  another batch is in flight (inline otherwise, as `recur-serve` runs short steps inline), so
  the batches in flight use the cores as Recur's threads do;
- greedy decoding with the same stopping rules as Recur (end-of-sequence, `max_tokens`, and for
  translation `2 * source tokens + 10`; no end-of-sequence before `min_tokens`), so both stream
  the same tokens.

This module is imported by the Ray Serve replica; `peer_bench.py` starts it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from protos.recur.v1 import inference_pb2 as pb

MAX_BATCH_SIZE = 64
BATCH_WAIT_TIMEOUT_S = 0.01  # Ray Serve's default
MAX_ONGOING_REQUESTS = 512  # enough for concurrency 256 to reach the batch queue
DEFAULT_MAX_TOKENS = 32  # recur-serve's default for completions
MAX_LENGTH_RATIO = 2.0  # recur-serve's default for translations


class Graphs:
    """One bundle's ONNX Runtime sessions, tokenizer and state layout."""

    def __init__(self, bundle: str) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(bundle)
        self.manifest = json.loads((path / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.sessions = {
            g["role"]: ort.InferenceSession(
                str(path / (g.get("optimized_file") or g["file"])), options,
                providers=["CPUExecutionProvider"],
            )
            for g in self.manifest["graphs"]
        }  # fmt: skip
        self.outputs = {
            g["role"]: [t["name"] for t in g["outputs"]] for g in self.manifest["graphs"]
        }
        self.tokenizer = Tokenizer.from_file(str(path / self.manifest["tokenizer_file"]))
        special = self.manifest["special_tokens"]
        self.bos, self.eos, self.pad = (
            special["bos_id"],
            special["eos_id"],
            special.get("pad_id", 0),
        )
        self.state = [(s["input"], s["output"], list(s["shape"])) for s in self.manifest["state"]]

    def run(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.sessions[role].run(self.outputs[role], feeds)
        return dict(zip(self.outputs[role], values, strict=True))

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return {
            name: np.zeros([batch if d == "batch" else int(d) for d in shape], dtype=np.float32)
            for name, _, shape in self.state
        }

    def stack(self, states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per-request states (batch 1 each) as one batch."""
        return {
            name: np.concatenate([s[name] for s in states], axis=shape.index("batch"))
            for name, _, shape in self.state
        }

    def next_state(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: out[output] for name, output, _ in self.state}


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    ray_actor_options={"num_cpus": 1},
)
class RecurPeer:
    """`AutocompleteService.Complete` and `TranslationService.Translate` over Ray Serve."""

    def __init__(self, autocomplete: str, translation: str, concurrent_batches: int = 1) -> None:
        self.lm = Graphs(autocomplete)
        self.mt = Graphs(translation)
        self.in_flight = 0  # batches being decoded
        self.pool = ThreadPoolExecutor(concurrent_batches, thread_name_prefix="peer-ort")
        batch = serve.batch(
            max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S,
            max_concurrent_batches=concurrent_batches,
        )  # fmt: skip
        # Made per replica, not by decorating the methods: the number of batches in flight is
        # the deployment's argument (what recur-serve runs with), not a constant of this module.
        self._complete: Any = batch(self._complete_batch)  # type: ignore[arg-type]
        self._translate: Any = batch(self._translate_batch)  # type: ignore[arg-type]

    async def _run(self, graphs: Graphs, role: str, feeds: dict[str, np.ndarray]) -> Any:
        """One ONNX Runtime call: on the pool while another batch is in flight, else inline."""
        if self.in_flight <= 1:
            return graphs.run(role, feeds)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, graphs.run, role, feeds)

    async def Complete(self, request: pb.CompleteRequest) -> AsyncIterator[pb.CompleteResponse]:
        async for response in self._complete(request):
            yield response

    async def Translate(self, request: pb.TranslateRequest) -> AsyncIterator[pb.TranslateResponse]:
        async for response in self._translate(request):
            yield response

    async def _complete_batch(self, requests: list[pb.CompleteRequest]) -> AsyncIterator[list[Any]]:
        self.in_flight += 1
        try:
            async for messages in self._complete_steps(requests):
                yield messages
        finally:
            self.in_flight -= 1

    async def _complete_steps(self, requests: list[pb.CompleteRequest]) -> AsyncIterator[list[Any]]:
        lm = self.lm
        states, logits = [], []
        for request in requests:  # prefill, one prompt at a time (they differ in length)
            ids = [lm.bos, *lm.tokenizer.encode(request.text).ids]
            feeds = {"tokens": np.array([ids], dtype=np.int64), **lm.zero_state(1)}
            out = await self._run(lm, "lm_step", feeds)
            states.append(lm.next_state(out))
            logits.append(out["logits"][0, -1])
        state, last = lm.stack(states), np.stack(logits)  # (B, V)
        limits = [r.max_tokens or DEFAULT_MAX_TOKENS for r in requests]
        decoding = _Decoding(lm, limits, [r.min_tokens for r in requests])
        for index in range(decoding.longest):
            tokens = decoding.choose(index, last)
            yield decoding.step(index, tokens, last, _complete_token, _complete_final)
            if decoding.finished or index + 1 == decoding.longest:
                break
            feeds = {"tokens": tokens[:, None].astype(np.int64), **state}
            out = await self._run(lm, "lm_step", feeds)
            state, last = lm.next_state(out), out["logits"][:, -1]
        if not decoding.finished:
            yield decoding.close(_complete_final)

    async def _translate_batch(
        self, requests: list[pb.TranslateRequest]
    ) -> AsyncIterator[list[Any]]:
        self.in_flight += 1
        try:
            async for messages in self._translate_steps(requests):
                yield messages
        finally:
            self.in_flight -= 1

    async def _translate_steps(
        self, requests: list[pb.TranslateRequest]
    ) -> AsyncIterator[list[Any]]:
        mt = self.mt
        sources = [mt.tokenizer.encode(r.text).ids for r in requests]
        lengths = np.array([len(s) for s in sources], dtype=np.int64)
        src = np.full((len(requests), int(lengths.max())), mt.pad, dtype=np.int64)
        for row, ids in enumerate(sources):
            src[row, : len(ids)] = ids
        encoded = await self._run(mt, "encoder", {"src": src, "src_len": lengths})
        memory = encoded["memory"]  # (B, S, E), one encoder call for the batch
        state = {name: encoded[f"{name}_init"] for name, _, _ in mt.state}
        mask = np.arange(src.shape[1])[None, :] < lengths[:, None]
        limits = [r.max_tokens or max(int(MAX_LENGTH_RATIO * n) + 10, r.min_tokens)
                  for r, n in zip(requests, lengths.tolist(), strict=True)]  # fmt: skip
        decoding = _Decoding(mt, limits, [r.min_tokens for r in requests])
        prev = np.full((len(requests), 1), mt.bos, dtype=np.int64)
        for index in range(decoding.longest):
            feeds = {"prev": prev, "memory": memory, "src_mask": mask, **state}
            out = await self._run(mt, "decoder_step", feeds)
            state, tokens = mt.next_state(out), decoding.choose(index, out["logits"])
            yield decoding.step(index, tokens, out["logits"], _translate_token, _translate_final)
            if decoding.finished:
                break
            prev = tokens[:, None].astype(np.int64)
        if not decoding.finished:
            yield decoding.close(_translate_final)


class _Decoding:
    """Which requests of a static batch are still decoding, and the text each has so far."""

    def __init__(self, graphs: Graphs, limits: list[int], minimums: list[int]) -> None:
        self.graphs = graphs
        self.limits = limits
        self.minimums = minimums
        self.longest = max(limits)
        self.ids: list[list[int]] = [[] for _ in limits]
        self.done = [False] * len(limits)

    @property
    def finished(self) -> bool:
        return all(self.done)

    def choose(self, index: int, logits: np.ndarray) -> np.ndarray:
        """Each row's greedy token at step `index`, the end of sequence excluded for a request
        that has fewer than its `min_tokens`."""
        logits = logits.reshape(len(self.limits), -1)  # (B, V)
        early = [row for row, least in enumerate(self.minimums) if index < least]
        if early:
            logits = logits.copy()
            logits[early, self.graphs.eos] = -np.inf
        return logits.argmax(axis=-1)

    def step(self, index: int, tokens: np.ndarray, logits: np.ndarray, token: Any,
             final: Any) -> list[Any]:  # fmt: skip
        """Every request's message for decoding step `index`: a token, its final, or the end."""
        logprobs = _log_softmax(logits.reshape(len(self.limits), -1))
        messages: list[Any] = []
        for row, chosen in enumerate(tokens.tolist()):
            if self.done[row]:
                messages.append(StopIteration)
            elif chosen == self.graphs.eos or index >= self.limits[row]:
                self.done[row] = True
                messages.append(final(self.graphs.tokenizer.decode(self.ids[row])))
            else:
                self.ids[row].append(chosen)
                piece = self.graphs.tokenizer.decode([chosen])
                event = pb.GeneratedToken(
                    index=index, id=chosen, text=piece, logprob=float(logprobs[row, chosen])
                )
                messages.append(token(event))
        return messages

    def close(self, final: Any) -> list[Any]:
        """The final message of every request still decoding when the longest limit is hit."""
        messages = [StopIteration if d else final(self.graphs.tokenizer.decode(ids))
                    for d, ids in zip(self.done, self.ids, strict=True)]  # fmt: skip
        self.done = [True] * len(self.done)
        return messages


def _complete_token(event: pb.GeneratedToken) -> pb.CompleteResponse:
    return pb.CompleteResponse(token=event)


def _complete_final(text: str) -> pb.CompleteResponse:
    return pb.CompleteResponse(final=pb.CompleteFinal(completion=text))


def _translate_token(event: pb.GeneratedToken) -> pb.TranslateResponse:
    return pb.TranslateResponse(token=event)


def _translate_final(text: str) -> pb.TranslateResponse:
    return pb.TranslateResponse(final=pb.TranslateFinal(text=text))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
