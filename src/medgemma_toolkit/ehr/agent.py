"""`--recipe tools`: answer a question about one patient from FHIR data by letting the model call tools.

The plan: discover what the record holds (the manifest, fetched before the model's first turn), let the model
fetch the relevant resources (bounded: `max_steps` model turns), then answer from what it read, citing the resource
ids. Unlike Google's notebook (`--recipe notebook`, ehr/notebook.py: a fixed plan, then one summary call per
fetch), the model drives the fetching with function calls (prompts/tools.py, Google's Gemma 3 format) and reads
compact one-line summaries, with `read_resource` for the full text of one resource. It is a multi-turn
conversation, so it needs a chat model (`check_model`).

Logging: one line per tool call with the tool's name, its argument NAMES and the result's size; never values or
results (they are PHI). The trace (`--json`) holds everything, for the user who ran the command.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.messages import Message, TextPart
from ..errors import BadInput, MedGemmaError
from ..prompts import tools as fc
from ..prompts.thinking import split_thought
from .sources import CLINICAL_TYPES, FhirSource
from .tools import PatientTools

if TYPE_CHECKING:
    from ..api import MedGemma

log = logging.getLogger("medgemma_toolkit.ehr")

SYSTEM = (
    "You answer a clinician's question about one patient using only their FHIR health record, which you read "
    "through the functions below. The record's manifest is already fetched. Fetch what is relevant to the "
    "question, then answer briefly from what you read. Cite every resource you rely on by its id in square "
    "brackets, e.g. [Condition/123]. If the record does not hold the answer, say so."
)
CITE = re.compile(r"\b(Patient|" + "|".join(CLINICAL_TYPES) + r")/([A-Za-z0-9\-.]{1,64})")
MAX_CALLS_PER_STEP = 8


class StillCallingTools(MedGemmaError):
    """The model used every step it was allowed and was still asking for data."""


@dataclass
class Step:
    step: int
    tool: str
    arguments: dict[str, Any]
    result_chars: int
    result_items: int
    refused: bool
    result: str


@dataclass
class Trace:
    question: str
    source: str
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    citations: list[str] = field(default_factory=list)
    unverified_citations: list[str] = field(default_factory=list)  # ids the answer cites but was never shown
    model_turns: int = 0
    error: str | None = None
    tool_preset: str = f"{fc.PRESET_NAME}@{fc.PRESET_VERSION}"  # how the tools were put to the model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_model(mg: MedGemma) -> None:
    """Refuse, before any model call, a model whose preset has no multi-turn chat (a base `-pt` model such as the
    demo model): the tool loop's second turn would fail."""
    if getattr(mg.preset, "mode", "chat") == "completion":
        raise BadInput(
            f"--recipe tools needs a chat (instruction-tuned, -it) model; this model's preset {mg.preset.name!r} is "
            "for base models: use --recipe notebook (single-turn prompts, runs with any model) or an -it model"
        )


def _complete(
    mg: MedGemma, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_new_tokens: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One model turn over OpenAI-format messages: (calls, content)."""
    rendered = fc.render_messages(messages, tools, "auto")
    system = rendered[0]["content"] if rendered and rendered[0]["role"] == "system" else None
    body = rendered[1:] if system is not None else rendered
    *earlier, last = body
    history = [Message(m["role"], [TextPart(str(m["content"]))]) for m in earlier]
    if history and system is not None:  # presets add their system turn only to a first turn (as serve does)
        history.insert(0, Message("system", [TextPart(system)]))
        system = None
    req = mg.request(str(last["content"]), system=system, history=history or None, max_new_tokens=max_new_tokens)
    req.tools = fc.ToolSpec(tools, "auto", messages)
    limit = mg.backend.context_length()
    n = mg.backend.count_prompt_tokens(req.prompt) if limit else None
    if limit and n is not None and n + max_new_tokens > limit:
        raise BadInput(
            f"the conversation ({n:,} tokens) no longer fits the model's {limit:,}-token context; "
            "ask a narrower question or lower --max-new-tokens"
        )
    c = mg.backend.generate([req])[0]
    if c.tool_calls:
        return c.tool_calls, None
    parsed = fc.parse(split_thought(c.text).answer, tools, "auto")
    return parsed.calls, parsed.content


def prepare(source: FhirSource, patient: str) -> tuple[PatientTools, Any]:
    """The patient's tools and manifest, and the checks that need no model: run before the model loads, so a
    hostile or wrong server, or an unknown patient, fails before a load of minutes."""
    registry = PatientTools(source, patient)
    manifest = registry.manifest()
    if not registry.has_patient() and manifest.items == 0:
        raise BadInput(f"patient {patient[:64]!r} is not in {source.description}")
    if manifest.items == 0:
        raise BadInput(
            f"patient {patient[:64]!r} has no clinical resources in {source.description}; nothing to answer from"
        )
    return registry, manifest


def run(
    mg: MedGemma,
    source: FhirSource,
    patient: str,
    question: str,
    *,
    max_steps: int = 6,
    max_new_tokens: int = 512,
    prepared: tuple[PatientTools, Any] | None = None,
) -> Trace:
    """Answer `question` about `patient`; the trace of every call. Raises `StillCallingTools` (with the trace in
    `.trace`) when the model has not answered after `max_steps` turns. `prepared`: `prepare`'s result, if the
    caller ran it before loading the model."""
    if not question.strip():
        raise BadInput("give a question")
    if max_steps < 1:
        raise BadInput("--max-steps must be at least 1")
    registry, manifest = prepared or prepare(source, patient)
    trace = Trace(question=question, source=source.description)
    tools = registry.openai()
    seen: set[str] = set()
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    _record(trace, 0, "get_patient_data_manifest", {}, manifest)
    first = fc.new_call_id()
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": first, "type": "function", "function": {"name": "get_patient_data_manifest", "arguments": "{}"}}
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": first, "content": manifest.text})
    for step in range(1, max_steps + 1):
        calls, content = _complete(mg, messages, tools, max_new_tokens)
        trace.model_turns += 1
        if not calls:
            trace.answer = (content or "").strip()
            cited = list(dict.fromkeys(f"{t}/{i}" for t, i in CITE.findall(trace.answer)))
            trace.citations = [c for c in cited if c in seen]
            trace.unverified_citations = [c for c in cited if c not in seen]
            return trace
        calls = calls[:MAX_CALLS_PER_STEP]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for call in calls:
            name = call["function"]["name"]
            try:
                args = json.loads(call["function"].get("arguments") or "{}")
            except json.JSONDecodeError:
                args = None
            result = registry.call(name, args)
            seen.update(result.ids)
            known = name if name in registry.tools else "(unknown tool)"  # a model's free text never reaches logs
            _record(trace, step, known, args if isinstance(args, dict) and name in registry.tools else {}, result)
            messages.append(
                {"role": "tool", "tool_call_id": call.get("id") or fc.new_call_id(), "content": result.text}
            )
    e = StillCallingTools(
        f"the model was still calling tools after {max_steps} step{'s' if max_steps != 1 else ''}; "
        "raise --max-steps or ask a narrower question"
    )
    trace.error = str(e)
    e.trace = trace  # type: ignore[attr-defined]
    raise e


def _record(trace: Trace, step: int, name: str, args: dict[str, Any], result: Any) -> None:
    trace.steps.append(Step(step, name, args, len(result.text), result.items, result.refused, result.text))
    log.info(
        "step=%d tool=%s args=%s result_items=%d result_chars=%d%s",
        step,
        name,
        ",".join(sorted(args)) or "-",
        result.items,
        len(result.text),
        " refused" if result.refused else "",
    )
