"""`recur session` on a terminal: the suggestion follows every key you press.

The terminal is put in a raw-ish mode (no echo, no line editing, no signal keys; output processing
kept so "\\n" still starts a line) and restored however the session ends. Keys:

- a printable character is typed; Backspace deletes the last character;
- Enter (or Tab) accepts the suggestion shown: it is appended to the text;
- Ctrl-C or Ctrl-D leaves, printing the text as it stands;
- escape sequences (arrow keys and the like) are ignored.

Each change of the text is sent as one revision; the suggestion shown is the one for the latest
revision, growing token by token as the server streams it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import termios
from collections.abc import Callable, Iterator

from clients.render import Style
from clients.sdk import Session

PROMPT = "> "
_ESCAPE_SEQUENCE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|O.|.)?")
_LEAVE = ("\x03", "\x04")  # Ctrl-C, Ctrl-D
_BACKSPACE = ("\x7f", "\x08")
_ACCEPT = ("\r", "\n", "\t")


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Turns off echo, line editing and signal keys on the terminal `fd`; restores it on exit."""
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[0] &= ~(termios.ICRNL | termios.IXON)  # iflag: Enter reads "\r"; Ctrl-S/Q are keys
    mode[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)  # lflag
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSAFLUSH, mode)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


class Editor:
    """The text being typed, the suggestion for its latest revision, and the line showing both.

    Attributes:
        text: The text as typed so far.
        suggestion: The suggestion for `text`, as much of it as has arrived.
        sent: The text of the latest revision sent.
        revisions: How many revisions were sent.
        shown: The revision whose suggestion is shown (0 when none is: the text is empty).
    """

    def __init__(self, *, style: Style) -> None:
        self.text = self.suggestion = self.sent = ""
        self.revisions = self.shown = 0
        self.style = style

    def keys(self, typed: str) -> bool:
        """Applies the keys in `typed`; returns False when one of them asks to leave."""
        for key in _ESCAPE_SEQUENCE.sub("", typed):
            if key in _LEAVE:
                return False
            if key in _BACKSPACE:
                self.text = self.text[:-1]
            elif key in _ACCEPT:
                self.text += self.suggestion
            elif key.isprintable():
                self.text += key
        return True

    def revise(self) -> bool:
        """Starts a new revision if the text changed; returns whether it is to be sent.

        An empty text is never sent (the server refuses it); it only clears the suggestion.
        """
        if self.text == self.sent:
            return False
        self.sent, self.suggestion = self.text, ""
        if not self.text:
            self.shown = 0
            return False
        self.revisions += 1
        self.shown = self.revisions
        return True

    def line(self) -> str:
        """The prompt line: the text and the dim suggestion, with the cursor after the text."""
        back = f"\x1b[{len(self.suggestion)}D" if self.suggestion else ""
        return f"\r\x1b[2K{PROMPT}{self.text}{self.style.dim(self.suggestion)}{back}"


async def run(session: Session, *, fd: int, style: Style) -> None:
    """Runs the interactive session on the terminal `fd` until Ctrl-C, Ctrl-D or end of input."""
    editor = Editor(style=style)
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(fd, lambda: keys.put_nowait(os.read(fd, 1024).decode(errors="replace")))
    # When the answers stop (the deadline passed, the server went away), an empty read wakes the
    # key loop up so that it ends and the answers' error, if any, is raised below.
    answers = asyncio.create_task(_follow(session, editor, wake=lambda: keys.put_nowait("")))
    try:
        with raw_mode(fd):
            _show(editor.line())
            while (typed := await keys.get()) and editor.keys(typed):
                if editor.revise():
                    await session.send_text(editor.text)
                _show(editor.line())
    finally:
        loop.remove_reader(fd)
        answers.cancel()
        editor.suggestion = ""
        _show(editor.line() + "\n")
    with contextlib.suppress(asyncio.CancelledError):
        await answers


async def _follow(session: Session, editor: Editor, *, wake: Callable[[], None]) -> None:
    """Shows each streamed token of the latest revision's suggestion as it arrives."""
    try:
        async for response in session:
            if response.revision != editor.shown:
                continue
            if response.HasField("token"):
                editor.suggestion += response.token.text
            elif response.HasField("final"):
                editor.suggestion = response.final.completion
            _show(editor.line())
    finally:
        wake()


def _show(text: str) -> None:
    print(text, end="", flush=True)
