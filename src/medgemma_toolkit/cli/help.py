"""The click command behind `medgemma`, with every command's examples laid out one per line.

Commands write examples in their docstrings as `Example: medgemma ...` lines (one or several). Click rewraps a
docstring's paragraphs, which ran several examples into one unreadable paragraph; here they are gathered into an
`Examples:` block that click prints verbatim. `main`, the docs' CLI reference and the convention test all use this
one function, so what a user reads in `--help` is what the docs show and what the test checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import typer

_EXAMPLE = re.compile(r"^\s*Examples?:\s*(\S.*)$")
_NO_REWRAP = "\b"  # click prints a paragraph that starts with this line as written


def format_examples(help_text: str | None) -> str | None:
    """Move the `Example: CMD` lines of a help text into one verbatim block at its end (None stays None).

    >>> print(format_examples("Do it.\\n\\nExample: medgemma a\\nExample: medgemma b").replace(chr(8), "<nowrap>"))
    Do it.
    <BLANKLINE>
    Examples:
    <BLANKLINE>
    <nowrap>
      medgemma a
      medgemma b
    """
    if not help_text:
        return help_text
    examples: list[str] = []
    kept: list[str] = []
    for line in help_text.splitlines():
        m = _EXAMPLE.match(line)
        if m:
            examples.append(m.group(1).strip())
        else:
            kept.append(line)
    if not examples:
        return help_text
    body = "\n".join(kept).rstrip()
    return f"{body}\n\nExamples:\n\n{_NO_REWRAP}\n" + "\n".join(f"  {e}" for e in examples)


def walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group under `cmd` (itself first), with its path of names: ("eval", "compare")."""
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from walk(sub, (*path, name))


def build_command() -> Any:
    """The click command of the typer app, with formatted examples (a fresh object per call)."""
    from . import app

    root = typer.main.get_command(app)
    for _, cmd in walk(root):
        cmd.help = format_examples(cmd.help)
    return root
