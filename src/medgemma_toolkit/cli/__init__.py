"""The `medgemma` command: a table of subcommands, each a typed function (flags and help come from signatures).

Every `MedGemmaError` becomes one line on stderr and exit code 2; anything unexpected becomes one line and exit 1
(with --debug the traceback too, and the same exit code). Heavy imports (torch) happen inside commands, so `--help`
is instant.

The convention every command follows (docs/cli.md; tests/test_cli_convention.py walks the app to check it): the only
short flags are -m/--model, -i/--image, -o/--out and -q/--quiet; machine output is --json; each command's help ends
with examples; inputs are checked before a model loads.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Annotated

import typer

from ..errors import MedGemmaError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"medgemma-toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit"),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="On an error, print the full traceback too (same exit code); accepted anywhere on the line"
        ),
    ] = False,
) -> None:
    """Run, evaluate, fine-tune and serve MedGemma models, offline.

    Example: medgemma ask "What are the signs of sepsis?"
    Example: medgemma ask -m medgemma-4b-it -i cxr.dcm "Describe this chest X-ray."
    Example: medgemma COMMAND --help
    """
    # --debug is taken off the command line by `main` (so it works after a subcommand too); declared here for --help.


# Subcommand modules register themselves on `app` when imported: one line per capability. The order is the
# order of `medgemma --help`.
# isort: off
from . import run as _run  # noqa: E402,F401
from . import localize as _localize  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401
from . import imaging as _imaging  # noqa: E402,F401
from . import embed as _embed  # noqa: E402,F401
from . import eval as _eval  # noqa: E402,F401
from . import reproduce as _reproduce  # noqa: E402,F401
from . import serve as _serve  # noqa: E402,F401
from . import ehr as _ehr  # noqa: E402,F401
from .sr import stow as _stow  # noqa: E402 - registered here: run and localize import cli/sr for its options

app.command()(_stow)
from . import asr as _asr  # noqa: E402,F401
from . import extract as _extract  # noqa: E402,F401
# isort: on


def _quiet_libraries() -> None:
    """Library chatter (progress bars, advisory warnings) is noise for users and could echo inputs."""
    from ..models.offline import hub_offline

    hub_offline()  # the program, not the library: nothing it runs may phone home unless asked
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader uses bare tqdm
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import warnings

    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> None:
    """The `medgemma` entry point: run the command line `argv` (default: sys.argv), one error line, an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    _quiet_libraries()
    from .help import build_command

    try:
        build_command().main(args=args, prog_name="medgemma")
    except MedGemmaError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # never a traceback for users; never the message either (it may quote inputs)
        if debug:
            traceback.print_exc()
            sys.exit(1)
        print(f"error: internal error ({type(e).__name__}); rerun with --debug for details", file=sys.stderr)
        sys.exit(1)
