"""Translation's decoding defaults, fit on the validation split: the beam width and the length
penalty that the service uses when a request leaves them unset.

The search is the service's own (`services.decoding.BeamSearch`, stepped here through the bundle's
ONNX graphs). Ranked by total log-probability (length penalty 0), beam search favours short
outputs; GNMT's penalty divides a finished hypothesis's log-probability by ((5 + |Y|) / 6)^alpha.
The live beams are chosen by total log-probability whatever alpha is, and with alpha > 0 the
search runs until every beam has ended, so one search per source and width yields every
hypothesis that any alpha ranks: the grid of alphas is a re-ranking, not a search each.
(With alpha 0 the search may stop earlier, but never before it has found the hypothesis of the
best total log-probability, which is what alpha 0 picks from the full set too.)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu

from protos.recur.v1 import bundle_pb2
from services.decoding import BeamSearch, Hypothesis, length_penalty, log_softmax
from trainer import metrics
from trainer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from trainer.ort_bundle import OrtBundle
from trainer.tasks.translation import MAX_TOKENS

BEAM_SIZES = (1, 3, 5, 8)  # within the service's default --max-beam-size (8); 1: greedy
SEARCH_BATCH = 64  # sources searched together
ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)


def hypotheses(model: OrtBundle, sources: list[list[int]], *, beam: int) -> list[list[Hypothesis]]:
    """Every hypothesis the service's beam search of width `beam` ends with, for each source
    (max length 2 * source + 10, as validation's). The searches of all sources advance together:
    one `decoder_step` call a step for every live beam of every source."""
    src = np.zeros((len(sources), max(len(s) for s in sources)), dtype=np.int64)  # PAD_ID 0
    for i, ids in enumerate(sources):
        src[i, : len(ids)] = ids
    src_len = np.array([len(s) for s in sources], dtype=np.int64)
    encoded = model.run("encoder", {"src": src, "src_len": src_len})
    mask = np.arange(src.shape[1])[None, :] < src_len[:, None]  # (B, S)
    searches = [BeamSearch(size=beam, eos_id=EOS_ID, max_len=2 * len(s) + 10, alpha=1.0)
                for s in sources]  # alpha > 0: every search runs to its end  # fmt: skip
    states = [{k: v[:, i : i + 1] for k, v in model.encoder_state(encoded).items()}
              for i in range(len(sources))]  # fmt: skip
    while active := [i for i, search in enumerate(searches) if not search.done]:
        widths = [len(searches[i].live) for i in active]
        rows = np.repeat(active, widths)  # the source of every live beam
        prev = [[h.tokens[-1] if h.tokens else BOS_ID] for i in active for h in searches[i].live]
        feeds = {k: np.concatenate([states[i][k] for i in active], axis=1) for k in states[0]}
        out = model.run("decoder_step", {"prev": np.array(prev, dtype=np.int64), **feeds,
                                         "memory": encoded["memory"][rows],
                                         "src_mask": mask[rows]})  # fmt: skip
        logprobs = log_softmax(out["logits"].astype(np.float64))  # (beams, V)
        logprobs[:, [PAD_ID, BOS_ID]] = -np.inf
        following = model.next_state(out)
        start = 0
        for i, width in zip(active, widths, strict=True):
            parents = searches[i].advance(logprobs[start : start + width])
            picked = [start + p for p in parents]
            states[i] = {k: v[:, picked] for k, v in following.items()}
            start += width
    return [search.ended or search.live for search in searches]


def pick(found: list[Hypothesis], alpha: float) -> list[int]:
    """The hypothesis the service returns with length penalty `alpha`."""

    def score(h: Hypothesis) -> float:
        return h.logprob / length_penalty(len(h.tokens) + int(h.finished), alpha)

    return list(max(found, key=score).tokens)


@dataclass(frozen=True)
class Scored:
    bleu: float
    length_ratio: float  # hypothesis length / reference length (sacreBLEU's, 13a tokens)


def score(hyps: list[str], refs: list[str]) -> Scored:
    if not hyps:
        return Scored(0.0, 0.0)
    result = sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a")
    return Scored(float(result.score), result.sys_len / max(result.ref_len, 1))


def _rows(model: OrtBundle, pairs: list[tuple[str, str]]) -> list[tuple[list[int], str]]:
    encode = model.tokenizer.encode
    rows = [(encode(s).ids[:MAX_TOKENS], metrics.normal_form(model.tokenizer, t))
            for s, t in pairs]  # fmt: skip
    return [(ids, ref) for ids, ref in rows if ids and ref]


def search_all(
    model: OrtBundle, pairs: list[tuple[str, str]], beams: tuple[int, ...]
) -> tuple[dict[int, list[list[Hypothesis]]], list[str]]:
    """Every width's hypotheses for every pair, and the references in the tokenizer's normal
    form."""
    rows = _rows(model, pairs)
    found: dict[int, list[list[Hypothesis]]] = {beam: [] for beam in beams}
    for beam in beams:
        for start in range(0, len(rows), SEARCH_BATCH):
            chunk = [ids for ids, _ in rows[start : start + SEARCH_BATCH]]
            found[beam] += hypotheses(model, chunk, beam=beam)
    return found, [ref for _, ref in rows]


def decode_all(model: OrtBundle, found: list[list[Hypothesis]], alpha: float) -> list[str]:
    return [model.tokenizer.decode(pick(h, alpha)) for h in found]


def fit(model: OrtBundle, pairs: list[tuple[str, str]], *,
        beams: tuple[int, ...] = BEAM_SIZES, alphas: tuple[float, ...] = ALPHAS,
        ) -> bundle_pb2.DecodingDefaults:  # fmt: skip
    """The width and alpha of the best validation BLEU (ties: the smaller width, then alpha),
    and BLEU and length ratio with them and with alpha 0 at the same width. Width 1 is greedy
    (the service's rule for beam_size 0 and 1), which the search of width 1 equals at alpha 0."""
    found, refs = search_all(model, pairs, beams)
    best: tuple[float, int, float] = (-1.0, beams[0], 0.0)
    for beam in beams:
        for alpha in alphas if beam > 1 else (0.0,):  # width 1 is served as greedy: no penalty
            bleu = score(decode_all(model, found[beam], alpha), refs).bleu
            if bleu > best[0]:
                best = (bleu, beam, alpha)
    _, beam, alpha = best
    chosen = score(decode_all(model, found[beam], alpha), refs)
    plain = score(decode_all(model, found[beam], 0.0), refs)
    return bundle_pb2.DecodingDefaults(
        beam_size=beam, length_penalty=alpha, valid_bleu=chosen.bleu,
        valid_bleu_unpenalized=plain.bleu, valid_length_ratio=chosen.length_ratio,
        valid_length_ratio_unpenalized=plain.length_ratio, fit_pairs=len(refs),
    )  # fmt: skip


def add_decoding_defaults(
    staging: Path, manifest: bundle_pb2.BundleManifest, checkpoint: dict[str, Any]
) -> None:
    """Fit the defaults on the run's first `--fit-decoding-pairs` validation pairs through the
    staged graphs and record them in `manifest.decoding`."""
    from trainer.config import TrainConfig
    from trainer.tasks import get_task

    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in checkpoint["config"].items() if k in known})
    _, valid, _ = get_task("translation").load_raw(cfg)
    model = OrtBundle.open(staging, manifest)
    manifest.decoding.CopyFrom(fit(model, list(valid)[: cfg.fit_decoding_pairs]))


def served_metrics(model: OrtBundle, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """BLEU and length ratio of the service's beam search with the bundle's fitted defaults, and
    with the same width and length penalty 0 (the rule before the fit)."""
    defaults = model.manifest.decoding
    found, refs = search_all(model, pairs, (defaults.beam_size,))
    fitted = score(decode_all(model, found[defaults.beam_size], defaults.length_penalty), refs)
    plain = score(decode_all(model, found[defaults.beam_size], 0.0), refs)
    return {
        "bleu_default": fitted.bleu,
        "length_ratio_default": fitted.length_ratio,
        "bleu_unpenalized": plain.bleu,
        "length_ratio_unpenalized": plain.length_ratio,
        "default_beam_size": float(defaults.beam_size),
        "default_length_penalty": defaults.length_penalty,
    }
