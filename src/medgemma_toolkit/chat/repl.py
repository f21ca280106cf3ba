"""`medgemma chat`: a multi-turn REPL with streaming. On a terminal, line editing, history and multi-line messages
(chat/input.py, prompt_toolkit); on piped stdin, one message per line."""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING

from ..core.messages import Message, Part, TextPart
from ..errors import MedGemmaError
from ..imaging import ImageOptions
from ..prompts.presets import LONGITUDINAL, get_preset
from .input import ReadLine, default_reader

if TYPE_CHECKING:
    from ..api import MedGemma

HELP = (
    "Alt+Enter: new line; Up/Down: earlier messages; "
    "commands: /image PATH (attach to next question), /prior PATH and /current PATH (compare: the next question, "
    "or /compare for the notebook's instruction, gets prior then current), /think (toggle), /reset, /help, /quit"
)


def run_repl(
    mg: MedGemma,
    system: str | None = None,
    think: bool = False,
    max_new_tokens: int | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    read: ReadLine | None = None,
) -> None:
    from ..api import Answer

    inp = stdin or sys.stdin
    out = stdout or sys.stdout
    live = out.isatty()
    history: list[Message] = []
    pending: list[Part] = []
    compare: dict[str, list[Part]] = {}  # "prior" / "current" -> that image's parts, until the comparison is sent
    read = read or default_reader(inp, out)
    print(f"chatting with {mg.backend.info.name} ({mg.preset.name}); {HELP}", file=out)
    while True:
        raw = read()
        if raw is None:
            break
        line = raw.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/quit", "/exit", "/q"):
                break
            if cmd == "/help":
                print(HELP, file=out)
            elif cmd == "/reset":
                history, pending, compare = [], [], {}
                print("(conversation cleared)", file=out)
            elif cmd == "/think":
                think = not think
                print(f"(thinking {'on' if think else 'off'})", file=out)
            elif cmd in ("/prior", "/current"):
                try:
                    # loaded now, sent with the longitudinal preset later: its padding choice applies
                    compare[cmd[1:]] = mg.media([arg.strip()], ImageOptions(pad=get_preset(LONGITUDINAL).pad_images))
                except MedGemmaError as e:
                    print(f"error: {e}", file=out)
                    continue
                print(f"(attached {arg.strip()} as the {cmd[1:]} image)", file=out)
            elif cmd == "/compare":
                line = ""  # the preset's instruction: Google's longitudinal notebook's
            elif cmd == "/image":
                try:
                    parts = mg.media([arg.strip()])
                except MedGemmaError as e:
                    print(f"error: {e}", file=out)
                    continue
                pending.extend(parts)
                print(f"(attached {arg.strip()}; it goes with your next question)", file=out)
            else:
                print(f"unknown command {cmd}; {HELP}", file=out)
            if cmd != "/compare":
                continue
        media, preset = pending, None
        if compare:
            if set(compare) != {"prior", "current"}:
                print("error: a comparison needs both /prior PATH and /current PATH", file=out)
                continue
            media, preset = compare["prior"] + compare["current"] + pending, LONGITUDINAL
        elif not line:
            print("error: /compare needs /prior PATH and /current PATH first", file=out)
            continue
        try:
            req = mg.request(
                line, media, system=system, think=think, history=history, max_new_tokens=max_new_tokens, preset=preset
            )
        except MedGemmaError as e:
            print(f"error: {e}", file=out)
            continue
        answer = None
        for item in mg.stream(req):
            if isinstance(item, Answer):
                answer = item
            elif item[0] == "answer" and live:
                out.write(item[1])
                out.flush()
        assert answer is not None
        if answer.thought and think:
            print(f"[thought] {answer.thought}", file=out)
        print(answer.text if not live else "", file=out)
        # History keeps the user's full turn (with images) and the answer only, never the thought.
        history = list(req.prompt.messages)
        history.append(Message("assistant", [TextPart(answer.text)]))
        pending, compare = [], {}
