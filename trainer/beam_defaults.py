"""Translation's decoding defaults, fit on the validation split: the beam width and the length
penalty that the service uses when a request leaves them unset.

Every candidate setting is measured on what the service would stream with it, through the
serving engine in-process (`services.offline`). Ranked by total log-probability (length penalty
0), beam search favours short outputs; GNMT's penalty divides a finished hypothesis's
log-probability by ((5 + |Y|) / 6)^alpha. The live beams are chosen by total log-probability
whatever alpha is, and with alpha > 0 the search runs until every beam has ended, so one search
per source and width yields every hypothesis that any alpha ranks: the grid of alphas is a
re-ranking of `Offline.beam_hypotheses`, not a search each. (With alpha 0 the search may stop
earlier, but never before it has found the hypothesis of the best total log-probability, which
is what alpha 0 picks from the full set too.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sacrebleu

from protos.recur.v1 import bundle_pb2
from services.decoding import Hypothesis, length_penalty
from services.model import LoadedModel
from services.offline import Offline, Outcome, open_model
from services.requests import TranslateParams
from trainer import metrics
from trainer.config import TrainConfig
from trainer.tasks.translation import MAX_TOKENS

BEAM_SIZES = (1, 3, 5, 8)  # within the service's default --max-beam-size (8); 1: greedy
ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)


def served(engine: Offline, sources: list[str], *, beam: int, alpha: float) -> list[str]:
    """The translations the service streams with width `beam` and length penalty `alpha`
    (width 1: greedy, which takes no penalty), with its length rule (2 * source + 10)."""
    params = TranslateParams(max_tokens=0, max_length_ratio=2.0, beam_size=max(beam, 1),
                             length_penalty=alpha if beam > 1 else 0.0)  # fmt: skip
    return texts(engine.translate(sources, params))


def texts(outcomes: list[Outcome]) -> list[str]:
    return [o.final.text if o.final else "" for o in outcomes]


def pick(found: list[Hypothesis], alpha: float) -> list[int]:
    """The hypothesis the service streams with length penalty `alpha` (`BeamSearch.ranked`'s
    first: the best score, the first found among equals)."""

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


def _rows(model: LoadedModel, pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The sources with tokens and their references in the tokenizer's normal form."""
    encode = model.tokenizer.encode
    rows = [(s, metrics.normal_form(model.tokenizer, t)) for s, t in pairs
            if encode(s).ids[:MAX_TOKENS]]  # fmt: skip
    kept = [(s, ref) for s, ref in rows if ref]
    return [s for s, _ in kept], [ref for _, ref in kept]


def fit(engine: Offline, pairs: list[tuple[str, str]], *,
        beams: tuple[int, ...] = BEAM_SIZES, alphas: tuple[float, ...] = ALPHAS,
        ) -> bundle_pb2.DecodingDefaults:  # fmt: skip
    """The width and alpha of the best validation BLEU (ties: the smaller width, then alpha),
    and BLEU and length ratio with them and with alpha 0 at the same width. Width 1 is greedy
    (the service's rule for beam_size 0 and 1)."""
    sources, refs = _rows(engine.model, pairs)
    decode = engine.model.tokenizer.decode
    found: dict[tuple[int, float], Scored] = {}
    for beam in beams:
        if beam <= 1:  # served as greedy: no penalty
            found[beam, 0.0] = score(served(engine, sources, beam=1, alpha=0.0), refs)
            continue
        hypotheses = engine.beam_hypotheses(sources, size=beam)
        for alpha in alphas:
            found[beam, alpha] = score([decode(pick(h, alpha)) for h in hypotheses], refs)
    best: tuple[float, int, float] = (-1.0, beams[0], 0.0)
    for (beam, alpha), scored in found.items():  # in order of the grid: ties keep the first
        if scored.bleu > best[0]:
            best = (scored.bleu, beam, alpha)
    _, beam, alpha = best
    chosen, plain = found[beam, alpha], found.get((beam, 0.0)) or found[beam, alpha]
    return bundle_pb2.DecodingDefaults(
        beam_size=beam, length_penalty=alpha, valid_bleu=chosen.bleu,
        valid_bleu_unpenalized=plain.bleu, valid_length_ratio=chosen.length_ratio,
        valid_length_ratio_unpenalized=plain.length_ratio, fit_pairs=len(refs),
    )  # fmt: skip


def add_decoding_defaults(
    staging: Path, manifest: bundle_pb2.BundleManifest, cfg: TrainConfig
) -> None:
    """Fit the defaults on the run's first `--fit-decoding-pairs` validation pairs through the
    staged graphs and record them in `manifest.decoding`."""
    from trainer.tasks import get_task

    _, valid, _ = get_task("translation").load_raw(cfg)
    engine = Offline(open_model(staging, staged=manifest))
    manifest.decoding.CopyFrom(fit(engine, list(valid)[: cfg.fit_decoding_pairs]))


def served_metrics(
    engine: Offline, sources: list[str], references: list[str], greedy: list[Outcome]
) -> dict[str, float]:
    """BLEU and length ratio of the service's beam search with the bundle's fitted defaults, and
    with the same width and length penalty 0 (the rule before the fit); `greedy`: the greedy
    translations of `sources`, which width 1 serves."""
    defaults = engine.model.bundle.manifest.decoding
    width, alpha = defaults.beam_size, defaults.length_penalty

    def translations(penalty: float) -> list[str]:
        if width <= 1:
            return texts(greedy)
        return served(engine, sources, beam=width, alpha=penalty)

    fitted = score(translations(alpha), references)
    plain = fitted if alpha == 0.0 or width <= 1 else score(translations(0.0), references)
    return {
        "bleu_default": fitted.bleu,
        "length_ratio_default": fitted.length_ratio,
        "bleu_unpenalized": plain.bleu,
        "length_ratio_unpenalized": plain.length_ratio,
        "default_beam_size": float(width),
        "default_length_penalty": alpha,
    }
