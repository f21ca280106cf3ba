"""The `medgemma` command: a table of subcommands, each a typed function (flags and help come from signatures).

Every `MedGemmaError` becomes one line on stderr and exit code 2; anything unexpected becomes one line and exit 1
(the traceback only with --debug). Heavy imports (torch) happen inside commands, so `--help` is instant.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from ..errors import MedGemmaError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Run, evaluate, fine-tune and serve MedGemma models, offline.",
)

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
# isort: on


def _quiet_libraries() -> None:
    """Library chatter (progress bars, advisory warnings) is noise for users and could echo inputs."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader uses bare tqdm
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import warnings

    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    _quiet_libraries()
    try:
        app(args=args, prog_name="medgemma")
    except MedGemmaError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # never a traceback for users; never the message either (it may quote inputs)
        if debug:
            raise
        print(f"error: internal error ({type(e).__name__}); rerun with --debug for details", file=sys.stderr)
        sys.exit(1)
