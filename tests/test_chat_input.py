"""`medgemma chat` on a terminal (issue 28): prompt_toolkit gives line editing, history and multi-line messages.

Driven through prompt_toolkit's own pipe input (the keys a terminal would send), no terminal needed."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("prompt_toolkit")

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from medgemma_toolkit.chat.input import plain_reader, prompt_reader

UP, ALT_ENTER, ENTER, CTRL_D = "\x1b[A", "\x1b\r", "\r", "\x04"


def test_alt_enter_is_a_new_line_and_up_recalls_the_last_message():
    with create_pipe_input() as keys:
        read = prompt_reader(input=keys, output=DummyOutput())
        keys.send_text(f"Findings:{ALT_ENTER}effusion?{ENTER}")
        assert read() == "Findings:\neffusion?"
        keys.send_text(f"second{ENTER}")
        assert read() == "second"
        keys.send_text(f"{UP}{UP}{ENTER}")
        assert read() == "Findings:\neffusion?"
        keys.send_text(f"typo\x7f\x7fpe{ENTER}")  # backspace edits the line
        assert read() == "type"
        keys.send_text(CTRL_D)
        assert read() is None


def test_the_repl_runs_on_the_terminal_reader(tiny_model):
    from medgemma_toolkit.chat.repl import run_repl

    out = io.StringIO()
    with create_pipe_input() as keys:
        keys.send_text(f"What is{ALT_ENTER}sepsis?{ENTER}/quit{ENTER}")
        run_repl(tiny_model, max_new_tokens=2, stdout=out, read=prompt_reader(input=keys, output=DummyOutput()))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("chatting with") and len(lines) >= 2


def test_pipes_still_read_plain_lines():
    read = plain_reader(io.StringIO("one\ntwo\n"), io.StringIO(), live=False)
    assert [read(), read(), read()] == ["one\n", "two\n", None]
