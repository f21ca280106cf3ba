"""MkDocs hooks: the CLI reference page is generated from the typer app at build time, so it cannot drift.

`docs/cli-reference.md` holds the marker below; each command's `--help` (the same text `medgemma CMD --help` prints,
examples included) replaces it, one section per command, in the order of `medgemma --help`.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- cli-reference -->"


def cli_reference_markdown() -> str:
    """One `## medgemma CMD` section per command and group, with its help text as printed."""
    import typer

    from medgemma_toolkit.cli.help import build_command

    root = build_command()
    sections = []

    def visit(cmd: Any, path: tuple[str, ...]) -> None:
        name = " ".join(("medgemma", *path))
        ctx = typer.Context(cmd, info_name=name, terminal_width=100, max_content_width=100)
        text = cmd.get_help(ctx).replace("\b\n", "")
        anchor = "-".join(("medgemma", *path))
        sections.append(f"## `{name}` {{#{anchor}}}\n\n```text\n{text}\n```\n")
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            visit(sub, (*path, sub_name))

    visit(root, ())
    return "\n".join(sections)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference_markdown())
    return markdown
