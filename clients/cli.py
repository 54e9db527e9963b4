"""The `recur` command: stream translations, sentiment and completions from a Recur server.

    recur translate "the black cat"          recur models
    recur sentiment "a good film" --json     recur health recur.v1.SentimentService
    recur complete "once upon a"             printf 'hel\\nhello\\n' | recur session
    recur session  (on a terminal: live)     recur bench --task sentiment --concurrency 16

TLS and auth: --tls, --root-cert, --client-cert/--client-key (mutual TLS), --token (better given
as RECUR_TOKEN: a flag shows in `ps`). Exit codes: 0 done, 1 failed call (or health not SERVING),
2 bad flags, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

import settings
from clients import bench_cli, render, terminal
from clients.channel import Connection
from clients.sdk import DEFAULT_TARGET, RecurClient, RecurError, Session
from settings import setting

Command = Callable[[RecurClient, argparse.Namespace], Awaitable[int]]

SESSION_HELP = """\
Autocomplete as you type. On a terminal (stdin and stdout both, without --json) the suggestion
follows every key: type, Backspace deletes, Enter (or Tab) accepts the suggestion, Ctrl-C or
Ctrl-D leaves. Otherwise each input line is the full text typed so far; it is sent as one
revision and its answer is printed as `revision N: <text>⟨<completion>⟩`, with ` (superseded)`
when a newer revision won, until stdin ends. There the --timeout deadline covers the whole
session; the live terminal mode has none."""


def _count(value: str) -> int:
    return bench_cli.whole_number(value, low="expected 0 (the server default) or more")


def _seed(value: str) -> int:
    return bench_cli.whole_number(value, bits=64, low="expected 0 (the server default) or more")


@dataclass(frozen=True)
class ConnectionSettings:
    """The flags of every command that calls a server: where it is, the deadline, TLS, auth (each
    also RECUR_<FLAG>; flags win)."""

    # fmt: off
    target: str = setting(DEFAULT_TARGET, "the server", metavar="HOST:PORT")
    timeout: float = setting(30.0, "deadline of the call in seconds", above=0, metavar="SECONDS")
    tls: bool = setting(False, "use TLS")
    root_cert: str | None = setting(None, "PEM roots that sign the server's certificate; implies "
                                    "--tls", metavar="FILE")
    client_cert: str | None = setting(None, "PEM client certificate chain (mutual TLS); implies "
                                      "--tls", metavar="FILE")
    client_key: str | None = setting(None, "PEM private key of --client-cert; implies --tls",
                                     metavar="FILE")
    token: str | None = setting(None, "bearer token sent as `authorization: Bearer TOKEN` "
                                "(better as RECUR_TOKEN: a flag shows in `ps`)", metavar="TOKEN")
    # fmt: on


def _connection_parser() -> argparse.ArgumentParser:
    """The flags of ConnectionSettings, absent where not given: `main` resolves them with the
    environment. They go before the command or after it (`recur --target H:P health` and
    `recur health --target H:P`); after it wins. Absent, not None: a command's default would
    overwrite what was given before it."""
    connection = argparse.ArgumentParser(add_help=False)
    settings.add_arguments(connection, ConnectionSettings, absent=argparse.SUPPRESS)
    return connection


def build_parser() -> argparse.ArgumentParser:
    """Builds the parser; the connection flags left out parse as None (see `main`)."""
    connection = _connection_parser()
    common = argparse.ArgumentParser(add_help=False, parents=[connection])
    common.add_argument("--model", default="", metavar="NAME", help="model (default: the task's)")
    common.add_argument("--json", action="store_true", help="one JSON object per event per line")
    max_tokens = argparse.ArgumentParser(add_help=False)
    max_tokens.add_argument(
        "--max-tokens", type=_count, default=0, metavar="N", help="most tokens (0: server default)"
    )

    parser = argparse.ArgumentParser(
        prog="recur",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[connection],
    )
    commands = parser.add_subparsers(dest="command", required=True, title="commands")
    add = commands.add_parser
    translate = add("translate", parents=[common, max_tokens], help="translate a sentence")
    translate.add_argument("text")
    translate.add_argument("--attention", action="store_true", help="show what each token attended")
    translate.add_argument(
        "--beam-size",
        type=_count,
        default=None,
        metavar="K",
        help="beam search with K hypotheses (1: greedy; default: the model's fitted width)",
    )
    translate.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        metavar="A",
        help="beam length penalty alpha in [0, 2] (default: the model's fitted value)",
    )
    translate.set_defaults(run=_translate)
    sentiment = add("sentiment", parents=[common], help="running sentiment of a text")
    sentiment.add_argument("text")
    sentiment.set_defaults(run=_sentiment)
    complete = add("complete", parents=[common, max_tokens], help="complete a prefix")
    complete.add_argument("text")
    complete.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="sample (0: greedy)"
    )
    complete.add_argument(
        "--top-k", type=_count, default=0, metavar="K", help="sample among K best"
    )
    complete.add_argument("--top-p", type=float, default=0.0, metavar="P", help="nucleus sampling")
    complete.add_argument("--seed", type=_seed, default=None, help="reproducible sampling")
    complete.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="end at this text (repeatable)"
    )
    complete.add_argument(
        "--suggestions", type=_count, default=0, metavar="N", help="N suggestions, best first"
    )
    complete.set_defaults(run=_complete)
    for command in (translate, complete):
        command.add_argument(
            "--min-tokens",
            type=_count,
            default=0,
            metavar="N",
            help="at least N tokens: no end of sequence before (default: 0, none)",
        )
    session = add(
        "session",
        parents=[common, max_tokens],
        help="autocomplete as you type",
        description=SESSION_HELP,
    )
    session.set_defaults(run=_session)
    for command in (complete, session):
        command.add_argument(
            "--model-only",
            action="store_true",
            help="the language model alone, without the popular-query index (for comparison)",
        )
    models = add(
        "models",
        parents=[common],
        help="list the loaded models with the validation metrics of their task (--json: all)",
    )
    models.set_defaults(run=_models)
    health = add("health", parents=[common], help="health of the server or of one service")
    health.add_argument("service", nargs="?", default="", help="e.g. recur.v1.TranslationService")
    health.set_defaults(run=_health)
    bench_cli.add_parser(commands, parents=[connection])
    return parser


def _style() -> render.Style:
    return render.Style(color=sys.stdout.isatty())


def _print_json(message: Message) -> None:
    print(
        json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)), flush=True
    )


async def _print_all_json(events: AsyncIterator[Message]) -> None:
    async for event in events:
        _print_json(event)


async def _translate(client: RecurClient, args: argparse.Namespace) -> int:
    events = client.translate(
        args.text,
        model=args.model,
        max_tokens=args.max_tokens,
        include_attention=args.attention,
        beam_size=args.beam_size,
        length_penalty=args.length_penalty,
        min_tokens=args.min_tokens,
    )
    await (_print_all_json(events) if args.json else render.translation(events, style=_style()))
    return 0


async def _sentiment(client: RecurClient, args: argparse.Namespace) -> int:
    events = client.sentiment(args.text, model=args.model)
    await (_print_all_json(events) if args.json else render.sentiment(events, style=_style()))
    return 0


async def _complete(client: RecurClient, args: argparse.Namespace) -> int:
    events = client.complete(
        args.text,
        model=args.model,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        num_suggestions=args.suggestions,
        model_only=args.model_only,
        min_tokens=args.min_tokens,
    )
    if args.json:
        await _print_all_json(events)
    else:
        await render.completion(args.text, events, style=_style())
    return 0


async def _session(client: RecurClient, args: argparse.Namespace) -> int:
    if sys.stdin.isatty() and sys.stdout.isatty() and not args.json:
        # A person typing: the session lasts until Ctrl-C/Ctrl-D, not until --timeout.
        live = client.session(
            model=args.model,
            max_tokens=args.max_tokens,
            open_ended=True,
            model_only=args.model_only,
        )
        await terminal.run(live, fd=sys.stdin.fileno(), style=_style())
        return 0
    session = client.session(
        model=args.model, max_tokens=args.max_tokens, model_only=args.model_only
    )
    texts: list[str] = []
    async for text in _stdin_lines():
        texts.append(text)
        await session.send_text(text)
        if not await _print_answers(session, texts, until=len(texts), as_json=args.json):
            return 0
    await session.close()
    await _print_answers(session, texts, until=None, as_json=args.json)
    return 0


async def _print_answers(
    session: Session, texts: list[str], *, until: int | None, as_json: bool
) -> bool:
    """Prints session events up to the final event of revision `until`, or to the stream's end.

    Returns:
        Whether the final event of revision `until` arrived (False: the stream ended first).
    """
    async for response in session:
        final = response.HasField("final")
        if as_json:
            _print_json(response)
        elif final:
            revision = response.revision
            text = texts[revision - 1] if 0 < revision <= len(texts) else ""
            print(render.session_answer(revision, text, response.final), flush=True)
        if final and response.revision == until:
            return True
    return False


async def _stdin_lines() -> AsyncIterator[str]:
    """Yields the lines of stdin, without their newline."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def deliver(line: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: recur is exiting
            loop.call_soon_threadsafe(lines.put_nowait, line)

    # A daemon thread, so that Ctrl-C and exit never wait for a read to finish.
    reader = threading.Thread(target=_read_lines, args=(sys.stdin.fileno(), deliver), daemon=True)
    reader.start()
    while True:
        line = await lines.get()
        if line is None:
            return
        yield line


def _read_lines(fd: int, deliver: Callable[[str | None], None]) -> None:
    """Delivers each line read from `fd`, decoded as UTF-8, then None at its end.

    It reads the file descriptor with `os.read`, not `sys.stdin`, so that this daemon thread never
    holds the lock of Python's stdin buffer, which the interpreter takes at exit.
    """
    pending = b""
    with contextlib.suppress(OSError):  # stdin closed or unreadable: the input has ended
        while chunk := os.read(fd, 65536):
            *complete, pending = (pending + chunk).split(b"\n")
            for line in complete:
                deliver(line.decode(errors="replace").removesuffix("\r"))
    if pending:
        deliver(pending.decode(errors="replace"))
    deliver(None)


async def _models(client: RecurClient, args: argparse.Namespace) -> int:
    response = await client.list_models()
    if args.json:
        _print_json(response)
    else:
        print(render.models_table(list(response.models)), end="", flush=True)
    return 0


SERVICES_KNOWN = (
    "a Recur server has recur.v1.TranslationService, recur.v1.SentimentService, "
    "recur.v1.AutocompleteService and recur.v1.ModelService"
)


async def _health(client: RecurClient, args: argparse.Namespace) -> int:
    try:
        status = await client.health(args.service)
    except RecurError as error:
        if error.code != grpc.StatusCode.NOT_FOUND or error.details:
            raise
        raise RecurError(error.code, f"no service {args.service!r}; {SERVICES_KNOWN}") from None
    print(json.dumps({"status": status}) if args.json else status, flush=True)
    return 0 if status == "SERVING" else 1


async def _dispatch(args: argparse.Namespace) -> int:
    run: Command = args.run
    client = RecurClient.for_connection(Connection.from_flags(args), timeout=args.timeout)
    async with client:
        return await run(client, args)


def _error_message(error: RecurError, *, target: str) -> str:
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"error: cannot reach the server at {target} ({error}); is recur-serve running?"
            " (--target / RECUR_TARGET)"
        )
    return f"error: {error}"


def main(argv: list[str] | None = None) -> None:
    """Runs the `recur` command.

    Args:
        argv: The arguments after the program name; None reads `sys.argv`.

    Raises:
        SystemExit: Always, with the exit code: 0 done, 1 failed call or health not SERVING,
            2 bad flags (from argparse), 130 interrupted by Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # the connection flags given, over RECUR_* in the environment, over the defaults
        connection = settings.resolve(ConnectionSettings, vars(args), os.environ)
    except ValueError as e:
        parser.error(str(e))
    vars(args).update(dataclasses.asdict(connection))
    if not args.target.strip():
        parser.error("--target (or RECUR_TARGET) must be HOST:PORT, got ''")
    if (args.client_cert is None) != (args.client_key is None):
        parser.error("--client-cert and --client-key come together: give both or neither")
    try:
        code = bench_cli.run(args) if args.command == "bench" else asyncio.run(_dispatch(args))
    except RecurError as error:
        print(_error_message(error, target=args.target), file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # Whoever read stdout went away (`recur ... | head`): point stdout at /dev/null so the
        # interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except OSError as error:  # a certificate, key or payload file that cannot be read
        print(f"error: {error}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
