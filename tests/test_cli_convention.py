"""One CLI convention for every command, checked by walking the real typer app (issue 28).

The rule (docs/cli.md): the only short flags are -m/--model, -i/--image, -o/--out and -q/--quiet, and each of those
long names always has its short flag; machine output is a boolean `--json`; every command's help ends with examples
laid out one per line (`medgemma <command> ...`); the root help shows --version and --debug. A command added later
(by anyone) is checked too; a failure names the command and the flag.
"""

from __future__ import annotations

import re

import pytest
from conftest import run_cli, run_cli_inproc

from medgemma_toolkit.cli.help import build_command, walk

SHORT = {"-m": "--model", "-i": "--image", "-o": "--out", "-q": "--quiet"}
LONG_TO_SHORT = {v: k for k, v in SHORT.items()}


def _commands() -> list[tuple[str, object]]:
    return [(" ".join(("medgemma", *path)), cmd) for path, cmd in walk(build_command())]


def _options(cmd: object) -> list:
    return [p for p in cmd.params if p.param_type_name == "option"]  # type: ignore[attr-defined]


def _convention_errors(name: str, cmd: object) -> list[str]:
    errors = []
    for p in _options(cmd):
        names = [*p.opts, *p.secondary_opts]
        longs = [n for n in names if n.startswith("--")]
        for n in names:
            if n.startswith("-") and not n.startswith("--"):
                if n not in SHORT:
                    errors.append(f"{name}: short flag {n} ({'/'.join(longs)}) is not one of {', '.join(SHORT)}")
                elif SHORT[n] != longs[0]:
                    errors.append(f"{name}: {n} must mean {SHORT[n]}, here it is {longs[0]}")
        for long in longs[:1]:
            if long in LONG_TO_SHORT and LONG_TO_SHORT[long] not in names:
                errors.append(f"{name}: {long} needs its short flag {LONG_TO_SHORT[long]}")
        if any("json" in n for n in longs) and (longs[0] != "--json" or not p.is_flag):
            errors.append(f"{name}: machine output is the boolean flag --json, not {'/'.join(longs)}")
        if longs and longs[0] == "--output":
            errors.append(f"{name}: --output is spelled --out (keep --output as a second name)")
    return errors


def test_every_command_follows_the_flag_convention():
    errors = [e for name, cmd in _commands() for e in _convention_errors(name, cmd)]
    assert not errors, "CLI convention broken (docs/cli.md):\n" + "\n".join(errors)


def test_the_check_can_fail():
    """The rule above catches what it is meant to: a stray short flag, a renamed --out, a --json with a value."""
    import typer

    bad = typer.Typer()

    @bad.command()
    def cmd(
        text: str = typer.Option("x", "--text", "-t"),
        output: str = typer.Option("x", "--output", "-o"),
        as_json: str = typer.Option("x", "--json-out"),
        quiet: bool = typer.Option(False, "--quiet"),
    ) -> None:
        """Nothing."""

    errors = _convention_errors("medgemma cmd", typer.main.get_command(bad))
    assert len(errors) == 5, errors
    assert "medgemma cmd: short flag -t (--text)" in errors[0]


def _help(cmd: object) -> str:
    import typer

    ctx = typer.Context(cmd, info_name="medgemma")  # type: ignore[arg-type]
    return cmd.get_help(ctx)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [n for n, _ in _commands()])
def test_every_command_has_examples_one_per_line(name):
    cmd = dict(_commands())[name]
    text = _help(cmd)
    lines = [ln.strip() for ln in text.splitlines()]
    assert "Examples:" in lines, f"{name}: no 'Example: {name} ...' line in its docstring"
    examples = [ln for ln in lines if ln.startswith(f"{name} ") or ln == name]
    assert examples, f"{name}: its examples must start with '{name}'"
    assert not any(re.search(r"\bExample:", ln) for ln in lines), f"{name}: an example ran into a paragraph"


def test_root_help_shows_version_and_debug():
    r = run_cli_inproc("--help")
    assert r.returncode == 0
    assert "--version" in r.stdout and "--debug" in r.stdout


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"medgemma-toolkit {version('medgemma-toolkit')}"
    import medgemma_toolkit

    assert medgemma_toolkit.__version__ == version("medgemma-toolkit")


def test_missing_image_fails_before_the_model_loads(tmp_path):
    """One line, no demo notice (printed just before a model loads), exit 2."""
    r = run_cli_inproc("ask", "--image", str(tmp_path / "nonexistent.png"), "What is this?")
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --image {tmp_path / 'nonexistent.png'}: file not found"
    r = run_cli_inproc("embed", "-i", str(tmp_path / "nope.png"))
    assert r.returncode == 2 and r.stderr.strip().endswith("file not found")


def test_debug_keeps_the_exit_code_and_adds_the_traceback(tmp_path):
    missing = str(tmp_path / "nonexistent.png")
    plain = run_cli("ask", "--image", missing, "q")
    debug = run_cli("ask", "--image", missing, "q", "--debug")
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()


def test_missing_weights_message_names_the_hf_cli():
    """huggingface_hub 1.x ships `hf`, not `huggingface-cli`."""
    from medgemma_toolkit.models.resolve import missing_weights_message

    msg = missing_weights_message("medgemma-4b-it", "google/medgemma-4b-it")
    assert "hf auth login && hf download google/medgemma-4b-it" in msg and "huggingface-cli" not in msg


def test_old_long_names_still_work(tmp_path):
    """Documented long options keep working: --output beside --out (preview, localize, export)."""
    from PIL import Image

    Image.new("RGB", (40, 30), "white").save(tmp_path / "a.png")
    r = run_cli_inproc("preview", str(tmp_path / "a.png"), "--output", str(tmp_path / "p.png"), "--size", "64")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.png").is_file()


def test_think_on_a_model_without_thinking_warns(tiny_model_dir):
    r = run_cli_inproc("ask", "-m", str(tiny_model_dir), "--think", "--max-new-tokens", "2", "What is sepsis?")
    assert r.returncode == 0, r.stderr
    assert "is not a thinking model" in r.stderr
    quiet = run_cli_inproc("ask", "-m", str(tiny_model_dir), "--max-new-tokens", "2", "What is sepsis?")
    assert "thinking" not in quiet.stderr
