"""The `recur` command's TLS and token flags, and `recur session` live on a real terminal (pty)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from clients.cli import main

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    assert isinstance(exited.value.code, int)
    return exited.value.code, captured.out, captured.err


def test_token_flag_and_environment_reach_the_server(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    authorizations: list[str],
) -> None:
    assert run_cli(capsys, "models", "--target", target, "--token", "flag")[0] == 0
    monkeypatch.setenv("RECUR_TOKEN", "env")
    assert run_cli(capsys, "models", "--target", target)[0] == 0
    assert authorizations[-2:] == ["Bearer flag", "Bearer env"]


def test_tls_flags(capsys: pytest.CaptureFixture[str], mtls_target: str, certificates: Any) -> None:
    code, out, _ = run_cli(
        capsys, "complete", "once", "--target", mtls_target, "--tls",
        "--root-cert", str(certificates.server_cert),
        "--client-cert", str(certificates.client_cert),
        "--client-key", str(certificates.client_key),
    )  # fmt: skip
    assert (code, out.splitlines()[0]) == (0, "once upon a time")


def test_tls_from_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tls_target: str,
    certificates: Any,
) -> None:
    monkeypatch.setenv("RECUR_ROOT_CERT", str(certificates.server_cert))
    assert run_cli(capsys, "health", "--target", tls_target) == (0, "SERVING\n", "")


def test_unreadable_certificate_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "health", "--root-cert", "/no/such.pem")
    assert code == 1
    assert err.startswith("error: [Errno 2] No such file or directory")


class Terminal:
    """`recur session` running on a pseudo-terminal, read as a screen would receive it."""

    def __init__(self, *argv: str) -> None:
        self.master, self.slave = os.openpty()
        self.saved = termios.tcgetattr(self.slave)
        env = {key: value for key, value in os.environ.items() if not key.startswith("RECUR_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "session", *argv],
            cwd=REPO, env=env, stdin=self.slave, stdout=self.slave, stderr=self.slave,
            start_new_session=True,
        )  # fmt: skip
        self.screen = ""

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_for(self, text: str, *, after: int = 0) -> int:
        """Reads until `text` shows after position `after` of the screen; returns where it ends."""
        deadline = time.monotonic() + 15
        while (found := self.screen.find(text, after)) < 0:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} never showed; the screen got {self.screen!r}"
            if select.select([self.master], [], [], remaining)[0]:
                self.screen += os.read(self.master, 4096).decode(errors="replace")
        return found + len(text)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        os.close(self.master)
        os.close(self.slave)


def test_live_session_on_a_terminal(target: str) -> None:
    terminal = Terminal("--target", target)
    try:
        at = terminal.wait_for("> ")
        terminal.type("h")
        terminal.type("el")
        at = terminal.wait_for("> hel\x1b[2m 3 chars", after=at)
        terminal.type("\x7f")  # Backspace
        at = terminal.wait_for("> he\x1b[2m 2 chars", after=at)
        terminal.type("\r")  # Enter accepts the suggestion
        at = terminal.wait_for("> he 2 chars\x1b[2m 10 chars", after=at)
        terminal.type("\x1b[D!")  # an arrow key is ignored, "!" is typed
        at = terminal.wait_for("> he 2 chars!\x1b[2m 11 chars", after=at)
        terminal.type("\x03")  # Ctrl-C leaves
        assert terminal.process.wait(timeout=15) == 0
        terminal.wait_for("> he 2 chars!\r\n", after=at)  # the tty turns "\n" into "\r\n"
        assert termios.tcgetattr(terminal.slave) == terminal.saved, "the terminal is restored"
    finally:
        terminal.close()
