"""The `recur` command against a real grpc.aio server of fakes (see conftest.py).

Most tests run `clients.cli.main` in-process; the last ones run `python -m clients.cli` as a real
process to see tokens arrive before the stream ends, and the exit codes a shell sees.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clients.cli import main
from tests.conftest import Server

REPO = Path(__file__).resolve().parents[2]
SUMMARY_TAIL = "v1 · {tokens} tokens · ttft 1.5 ms · total 4.0 ms · {reason}]"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


def recur(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """Runs `recur ARGV` in-process; returns its exit code and what it printed."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    assert isinstance(exited.value.code, int)
    return Result(exited.value.code, captured.out, captured.err)


def summary(model: str, tokens: int, reason: str = "stop") -> str:
    return f"[{model} " + SUMMARY_TAIL.format(tokens=tokens, reason=reason)


def test_translate_prints_text_then_summary(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    result = recur(capsys, "translate", "the black cat", "--target", target)
    assert result == Result(0, "le chat noir\n" + summary("fake-translate", 3) + "\n", "")


def test_translate_attention_names_the_attended_source_token(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    result = recur(capsys, "translate", "the black cat", "--attention", "--target", target)
    assert result.out.splitlines()[2:] == [
        "attention:",
        "  le             ← the (0.80)",
        "  chat           ← cat (0.80)",
        "  noir           ← black (0.80)",
    ]


def test_translate_json_is_one_event_per_line(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    events = recur(capsys, "translate", "x", "--json", "--target", target).json_lines()
    assert [event["token"]["text"] for event in events[:3]] == ["le", " chat", " noir"]
    assert events[1]["token"]["index"] == 1
    final = events[3]["final"]
    assert final["text"] == "le chat noir"
    assert final["source_tokens"] == ["the", "black", "cat"]
    assert final["summary"]["finish_reason"] == "FINISH_REASON_STOP"
    assert final["summary"]["timings"]["total_seconds"] == 0.004


def test_sentiment_prints_a_bar_per_token_then_the_label(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    result = recur(capsys, "sentiment", "not good", "--target", target)
    assert result.code == 0
    assert result.out.splitlines() == [
        "not            negative   " + "█" * 4 + "░" * 16 + " 0.20",
        "good           positive   " + "█" * 18 + "░" * 2 + " 0.90",
        "label: positive (p=0.90)",
        summary("fake-sentiment", 2),
    ]


@pytest.mark.parametrize(
    ("flags", "completion", "tokens", "reason"),
    [([], " upon a time", 3, "stop"), (["--max-tokens", "2"], " upon a", 2, "length")],
    ids=["to-stop", "max-tokens"],
)
def test_complete_prints_prefix_then_tokens(
    capsys: pytest.CaptureFixture[str],
    target: str,
    flags: list[str],
    completion: str,
    tokens: int,
    reason: str,
) -> None:
    result = recur(capsys, "complete", "once", *flags, "--target", target)
    assert result == Result(
        0, f"once{completion}\n{summary('fake-complete', tokens, reason)}\n", ""
    )


def _stdin_from(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, text.encode())
    os.close(write_end)
    stdin = open(read_end, encoding="utf-8")  # noqa: SIM115 - closed by the monkeypatch undo
    monkeypatch.setattr(sys, "stdin", stdin)


def test_session_answers_each_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    _stdin_from(monkeypatch, "hel\nhello\nhello wo\n")
    result = recur(capsys, "session", "--target", target)
    assert result == Result(
        0,
        "revision 1: hel⟨ 3 chars⟩\nrevision 2: hello⟨ 5 chars⟩\nrevision 3: hello wo⟨ 8 chars⟩\n",
        "",
    )


def test_session_json_streams_every_event(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    _stdin_from(monkeypatch, "hi\n")
    events = recur(capsys, "session", "--json", "--target", target).json_lines()
    assert [(event["revision"], sorted(event)[0]) for event in events] == [
        ("1", "revision"),
        ("1", "revision"),
        ("1", "final"),
    ]
    assert [event["token"]["text"] for event in events[:2]] == [" 2", " chars"]
    assert events[2]["final"]["completion"] == " 2 chars"


@pytest.mark.parametrize(
    ("argv", "expected", "reason"),
    [
        (["translate", "x"], {"beam_size": None, "length_penalty": None},
         "unset: the server uses the model's fitted defaults"),
        (["translate", "x", "--beam-size", "0", "--length-penalty", "0"],
         {"beam_size": 0, "length_penalty": 0.0}, "an explicit 0 is sent, not left unset"),
        (["translate", "x", "--beam-size", "4"], {"beam_size": 4, "length_penalty": None},
         "each field on its own"),
        (["complete", "x"], {"model_only": False}, "ranked by default"),
        (["complete", "x", "--model-only", "--suggestions", "3"],
         {"model_only": True, "num_suggestions": 3}, "the model alone"),
        (["translate", "x", "--min-tokens", "3"], {"min_tokens": 3}, "at least 3 tokens"),
        (["complete", "x", "--min-tokens", "2", "--max-tokens", "2"],
         {"min_tokens": 2, "max_tokens": 2}, "a fixed length"),
        (["bench", "--task", "autocomplete", "--requests", "1", "--concurrency", "1", "--warmup",
          "0", "--min-tokens", "3", "--max-tokens", "3"],
         {"min_tokens": 3, "max_tokens": 3}, "the load generator fixes every answer's length"),
    ],
)  # fmt: skip
def test_decoding_flags_are_sent_only_when_given(
    capsys: pytest.CaptureFixture[str],
    target: str,
    requests: list[Any],
    argv: list[str],
    expected: dict[str, Any],
    reason: str,
) -> None:
    assert recur(capsys, *argv, "--target", target).code == 0
    (request,) = requests
    for field, value in expected.items():
        if value is None:
            assert not request.HasField(field), reason
        else:
            assert getattr(request, field) == value, reason
            if field in ("beam_size", "length_penalty"):
                assert request.HasField(field), reason


def test_session_model_only(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    requests: list[Any],
) -> None:
    _stdin_from(monkeypatch, "he\nhello\n")
    assert recur(capsys, "session", "--model-only", "--target", target).code == 0
    assert [(r.text, r.model_only) for r in requests] == [("he", True), ("hello", True)]


def test_models_table_shows_the_tasks_key_metrics(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    """Only the metrics that matter for the task, with the test split's beside them; a model
    without them shows its validation loss."""
    result = recur(capsys, "models", "--target", target)
    assert result.out.splitlines() == [
        "NAME   VERSION  TASK         CELL  DEFAULT  VALIDATION",
        "en-fr  3        translation  gru   yes      BLEU 31.25 (test 29) · beam BLEU 33.5",
        "sst2   1        sentiment    lstm           loss 0.4125",
    ]


def test_models_json_has_every_metric(capsys: pytest.CaptureFixture[str], target: str) -> None:
    (listing,) = recur(capsys, "models", "--json", "--target", target).json_lines()
    assert [model["name"] for model in listing["models"]] == ["en-fr", "sst2"]
    assert listing["models"][0]["metrics"] == {
        "valid_bleu": 31.25,
        "test_bleu": 29.0,
        "valid_bleu_beam": 33.5,
        "valid_loss": 1.5,
        "grad_norm_max": 2.0,
    }


def test_models_of_a_real_server_show_each_tasks_metric(
    capsys: pytest.CaptureFixture[str], served: Server
) -> None:
    """`recur-serve` on the tiny bundles: one line per model, with the metric of its task as the
    trainer recorded it in the manifest (what `--json` lists), and nothing else."""
    listing = recur(capsys, "models", "--json", "--target", served.target).json_lines()[0]
    metrics = {model["name"]: model["metrics"] for model in listing["models"]}
    result = recur(capsys, "models", "--target", served.target)
    header, *rows = result.out.splitlines()
    assert result.code == 0 and header.split() == [
        "NAME", "VERSION", "TASK", "CELL", "DEFAULT", "VALIDATION"
    ]  # fmt: skip
    expected = {
        "autocomplete": f"bits/char {metrics['autocomplete']['valid_bits_per_char']:.4g} · "
        f"MRR@10 {metrics['autocomplete']['valid_mrr_at_10']:.4g}",
        "sentiment": f"accuracy {metrics['sentiment']['valid_accuracy']:.4g} · macro F1 "
        f"{metrics['sentiment']['valid_macro_f1']:.4g}",
        "translation": f"BLEU {metrics['translation']['valid_bleu']:.4g}",
    }
    assert [row.split(None, 5) for row in rows] == [
        [name, "1", name, "gru", "yes", expected[name]] for name in sorted(expected)
    ]
    assert all(len(metrics[name]) > 5 for name in expected), "--json lists every metric"
    assert "loss" not in result.out and "grad_norm" not in result.out


@pytest.mark.parametrize(
    ("argv", "code", "out"),
    [
        (["health"], 0, "SERVING\n"),
        (["health", "recur.v1.SentimentService"], 1, "NOT_SERVING\n"),
        (["health", "--json"], 0, '{"status": "SERVING"}\n'),
    ],
    ids=["server-serving", "service-not-serving-exits-1", "json"],
)
def test_health(
    capsys: pytest.CaptureFixture[str], target: str, argv: list[str], code: int, out: str
) -> None:
    assert recur(capsys, *argv, "--target", target) == Result(code, out, "")


@pytest.mark.parametrize(
    ("argv", "err"),
    [
        (["translate", "x", "--model", "missing"], "error: NOT_FOUND: unknown model 'missing'\n"),
        (
            ["translate", "x", "--model", "slow", "--timeout", "0.3"],
            "error: DEADLINE_EXCEEDED: Deadline Exceeded\n",
        ),
        (
            ["health", "no.such.Service"],
            "error: NOT_FOUND: no service 'no.such.Service'; a Recur server has "
            "recur.v1.TranslationService, recur.v1.SentimentService, recur.v1.AutocompleteService "
            "and recur.v1.ModelService\n",
        ),
    ],
    ids=["unknown-model", "timeout-is-the-deadline", "unknown-health-service"],
)
def test_failed_calls_print_code_and_details(
    capsys: pytest.CaptureFixture[str], target: str, argv: list[str], err: str
) -> None:
    assert recur(capsys, *argv, "--target", target) == Result(1, "", err)


def test_unreachable_server_says_where_it_looked(
    capsys: pytest.CaptureFixture[str], closed_target: str
) -> None:
    result = recur(capsys, "models", "--target", closed_target)
    assert result.code == 1
    assert result.err.startswith(
        f"error: cannot reach the server at {closed_target} (UNAVAILABLE: "
    )
    assert result.err.endswith("); is recur-serve running? (--target / RECUR_TARGET)\n")


def test_environment_gives_target_and_timeout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    monkeypatch.setenv("RECUR_TARGET", target)
    assert recur(capsys, "health") == Result(0, "SERVING\n", "")
    monkeypatch.setenv("RECUR_TIMEOUT", "0.3")
    assert recur(capsys, "translate", "x", "--model", "slow").err.startswith("error: DEADLINE")


def test_connection_flags_go_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    """`recur --target H:P health` as `recur health --target H:P`; given twice, the one after the
    command wins (the other here is a port nothing listens on)."""
    assert recur(capsys, "--target", target, "health") == Result(0, "SERVING\n", "")
    assert recur(capsys, "--target", "127.0.0.1:1", "health", "--target", target).code == 0
    refused = recur(capsys, "--target", target, "health", "--target", "127.0.0.1:1")
    assert refused.code == 1 and "cannot reach the server at 127.0.0.1:1" in refused.err
    assert recur(capsys, "--timeout", "0", "health").err.endswith(
        "--timeout must be > 0, got 0.0\n"
    )


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["translate"], {}, "the following arguments are required: text"),
        (["translate", "x", "--max-tokens", "-1"], {}, "expected 0 (the server default) or more"),
        (["complete", "x", "--timeout", "0"], {}, "--timeout must be > 0, got 0.0"),
        (["models"], {"RECUR_TIMEOUT": "soon"}, "RECUR_TIMEOUT='soon' is not a valid float"),
        (["models"], {"RECUR_TARGET": ""}, "--target (or RECUR_TARGET) must be HOST:PORT, got ''"),
        (["sentiment", "x", "--attention"], {}, "unrecognized arguments: --attention"),
        (["bench", "--rate", "0"], {}, "expected a positive number, got '0'"),
        (["bench", "--min-tokens", "-2"], {}, "expected 0 or more tokens, got '-2'"),
        (["bench", "--max-tokens", str(2**32)], {}, "expected at most 4294967295"),
        (["complete", "x", "--max-tokens", str(2**32)], {}, "expected at most 4294967295"),
        (["complete", "x", "--seed", str(2**64)], {}, "expected at most 18446744073709551615"),
        (["bench", "--rate", "5", "--concurrency", "2"], {}, "not allowed with argument"),
        (["models", "--client-cert", "c.pem"], {}, "--client-cert and --client-key come together"),
    ],
    ids=[
        "missing-text",
        "negative-max-tokens",
        "zero-timeout",
        "bad-env",
        "empty-target",
        "foreign-flag",
        "bench-zero-rate",
        "bench-negative-min-tokens",
        "bench-max-tokens-over-uint32",
        "max-tokens-over-uint32",
        "seed-over-uint64",
        "bench-rate-or-concurrency",
        "cert-without-key",
    ],
)
def test_bad_flags_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = recur(capsys, *argv)
    assert (result.code, result.out) == (2, "")
    assert message in result.err


# The child installs Python's Ctrl-C handler itself: a test suite started as a background job
# inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler. (Resetting the
# signal in a `preexec_fn` instead makes Popen fork this gRPC-running process and run Python in
# the forked child: about 1 child in 8 started that way aborted in gRPC's poller, "epoll_wait
# error: Bad file descriptor", sometimes before printing anything.)
_CLI = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'recur'; from clients.cli import main; main()"
)


def spawn(*argv: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    """Starts the `recur` CLI (`clients.cli.main`) as a real process with pipes, with Ctrl-C's
    default Python behaviour whatever this suite inherited."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECUR_")}
    return subprocess.Popen(
        [sys.executable, "-c", _CLI, *argv],
        cwd=REPO,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


# gRPC core's own log lines (`E1128 05:18:50.891477   22875 ev_epoll1_linux.cc:373] ...`): its
# event engine sometimes logs a closed descriptor while the process exits, which is not the CLI's.
_GRPC_CORE_LOG = re.compile(rb"^[DIWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w./-]+:\d+\] .*\n?", re.M)


def own(stderr: bytes) -> bytes:
    """What the CLI itself wrote to stderr: `stderr` without gRPC core's log lines."""
    return _GRPC_CORE_LOG.sub(b"", stderr)


def first_output(process: subprocess.Popen[bytes]) -> bytes:
    """The first bytes the process writes to stdout, waiting at most 20 s for them."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], 20)
    assert readable, "no output within 20 s"
    return os.read(process.stdout.fileno(), 4096)


def test_process_prints_each_token_as_it_arrives(target: str, gate: threading.Event) -> None:
    process = spawn("translate", "the black cat", "--model", "gated", "--target", target)
    assert first_output(process) == b"le"
    assert process.poll() is None, "the first token must show while the stream is held"
    gate.set()
    out, err = process.communicate(timeout=20)
    assert (process.returncode, own(err)) == (0, b"")
    assert out.decode() == " chat noir\n" + summary("gated", 3) + "\n"


def test_process_interrupted_exits_130_quietly(target: str, gate: threading.Event) -> None:
    process = spawn("translate", "the black cat", "--model", "gated", "--target", target)
    assert first_output(process) == b"le"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert (process.returncode, own(err)) == (130, b"")


def test_process_session_reads_stdin_until_it_ends(target: str) -> None:
    process = spawn("session", "--target", target, stdin=subprocess.PIPE)
    out, err = process.communicate(b"a\nab\n", timeout=20)
    assert (process.returncode, own(err)) == (0, b"")
    assert out.decode().splitlines() == ["revision 1: a⟨ 1 chars⟩", "revision 2: ab⟨ 2 chars⟩"]


def test_process_exit_codes(target: str, closed_target: str) -> None:
    not_serving = spawn("health", "recur.v1.SentimentService", "--target", target)
    unreachable = spawn("models", "--target", closed_target)
    bad_flag = spawn("models", "--timeout", "-1")
    assert not_serving.communicate(timeout=20) == (b"NOT_SERVING\n", b"")
    assert not_serving.returncode == 1
    assert b"cannot reach the server" in unreachable.communicate(timeout=20)[1]
    assert unreachable.returncode == 1
    assert b"--timeout must be > 0, got -1.0" in bad_flag.communicate(timeout=20)[1]
    assert bad_flag.returncode == 2
