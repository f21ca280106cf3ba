"""Where `medgemma chat` reads its lines: prompt_toolkit on a terminal (line editing, history with the arrow keys,
Alt+Enter or Esc Enter for a new line inside a message), plain lines from a pipe or a file.

History lives in memory for the session only: questions may be about patients, so nothing is written to disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

ReadLine = Callable[[], "str | None"]  # the next message, or None at the end of input


def plain_reader(inp: IO[str], out: IO[str], live: bool) -> ReadLine:
    """One line per message from a stream (piped stdin, tests); a "> " prompt only on a terminal."""

    def read() -> str | None:
        if live:
            out.write("> ")
            out.flush()
        line = inp.readline()
        return line if line else None

    return read


def prompt_reader(input: Any = None, output: Any = None) -> ReadLine:
    """A prompt_toolkit session: Emacs-style editing, Up/Down through this session's messages, Alt+Enter (or Esc
    then Enter) for a line break, Enter to send, Ctrl-D to quit. `input`/`output` are for tests."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    session: PromptSession[str] = PromptSession(
        history=InMemoryHistory(), key_bindings=keys, input=input, output=output, multiline=False
    )

    def read() -> str | None:
        try:
            return session.prompt("> ", prompt_continuation=lambda width, line, wrap: ". ".rjust(width))
        except EOFError:
            return None
        except KeyboardInterrupt:
            return ""  # Ctrl-C clears the line being typed, as in a shell

    return read


def default_reader(inp: IO[str], out: IO[str]) -> ReadLine:
    """prompt_toolkit when both ends are a terminal and it is installed, else plain lines."""
    live = out.isatty()
    if live and inp.isatty():
        try:
            return prompt_reader()
        except ImportError:
            pass
    return plain_reader(inp, out, live)
