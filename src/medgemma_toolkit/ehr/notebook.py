"""`--recipe notebook` (the default): Google's EHR navigator plan, step by step, over our bounded FHIR sources.

Source: google-health/medgemma notebooks/ehr_navigator_agent.ipynb, last changed in Google's commit 45b80ec8c0c6
(2025-12-08), read at SamuelMarks/medgemma@a60a66024f61 (the fork carrying Google's commits to 2026-04-07). The
notebook is a LangGraph graph; its plan, as run here without LangGraph:

1. manifest: search 12 resource types of the patient; per type present, the `display=code` string of every
   `code.coding` (repeats kept);
2. identify: one prompt; the model answers a JSON list of relevant types (max 1000 tokens, temperature 0);
3. select: per relevant type present in the manifest, one prompt; the model answers one tool call as JSON
   (`filter_code`: comma-separated codes) or `{}` (max 8000, temperature 0);
4. fetch + facts: per planned call, one search (`code=`; `_include=<type>:medication` for medication types; if
   nothing matched, again with `category=`), the searchset as compact JSON (no `meta`, references shortened to what
   follows "/fhir/"), and one fact-summary prompt over it (max 8000, temperature 0.6), thinking removed;
5. final: one synthesis prompt over all the summaries, keeping FHIR references (max 8000, temperature 0.1).

Every call is ONE single-turn prompt with no system message (the notebook's `llm.invoke(prompt)`), so any model
runs it, base (-pt) models included. The prompt wording is the protocol and is kept verbatim (typos included);
tests/data/google_reference/ehr_navigator.json holds the prompts the notebook itself rendered on our synthetic
bundle, which these must equal.

Where we differ, on purpose: the patient comes from `--patient` (the notebook asks the model to extract it from the
question, and would follow whatever id it names); the model's `patient_id` and `fhir_resource` in a planned call are
ignored (the call is bound to the patient and the stage's type); thinking is removed before JSON is parsed (the
notebook parses the raw text, which fails when the model thinks); repeated types are asked once; every search is
bounded and re-filtered by full Patient reference (`ehr.scope`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BadInput
from ..prompts.thinking import split_thought
from .sources import FhirSource, Query
from .transport import FhirStatusError

if TYPE_CHECKING:
    from ..api import MedGemma

log = logging.getLogger("medgemma_toolkit.ehr")

SOURCE = {
    "repo": "google-health/medgemma (read at SamuelMarks/medgemma)",
    "file": "notebooks/ehr_navigator_agent.ipynb",
    "commit": "45b80ec8c0c6b9d8690161393b66a0f25f699de4",
    "read_at": "a60a66024f6153496dfa9490dba12d4f1fbd092e",
}
RECIPE = "google-ehr-navigator@45b80ec"

# The notebook's resource types, in its order (Patient itself is left out there too).
TYPES = (
    "Encounter",
    "Practitioner",
    "Condition",
    "Observation",
    "AllergyIntolerance",
    "FamilyMemberHistory",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationAdministration",
    "DiagnosticReport",
    "Procedure",
    "ServiceRequest",
)
SEARCH_REFUSED = "the FHIR server answered this search with an error"
THINK = "SYSTEM INSTRUCTION: think silently if needed.\n"
TOOL = "get_patient_fhir_resource"
# langchain_core.tools.render_text_description of the notebook's retrieval tool (computed with langchain-core 1.8.1).
TOOL_TEXT = (
    "get_patient_fhir_resource(patient_id: str, fhir_resource: str, filter_code: Optional[str] = None) -> str - "
    "Gets a list of FHIR resources for a single patient.\n"
    "    patient_id: The ID of the patient.\n"
    "    fhir_resource: The FHIR resource type to retrieve (Observation, Condition, MedicationRequest, etc.)\n"
    "    filter_code: A comma seperated list of code filter to apply to the resource "
    "(34117-2, 171207006, 82667-7, 8867-4, etc)"
)


@dataclass(frozen=True)
class CallSettings:
    max_new_tokens: int
    temperature: float


IDENTIFY, SELECT, FACTS, FINAL = (
    CallSettings(1000, 0.0),
    CallSettings(8000, 0.0),
    CallSettings(8000, 0.6),
    CallSettings(8000, 0.1),
)


# -- the prompts -----------------------------------------------------------------------------------------------------
def composed_question(question: str, patient: str) -> str:
    """The notebook's question as every prompt quotes it: the user's text, then the patient id."""
    return f"{question}. Patient ID {patient}."


def manifest_line(rtype: str, codes: list[str]) -> str:
    if codes:
        return f"**{rtype}**: Available codes include: {', '.join(codes)}\n"
    return f"**{rtype}**: Present (no specific codes found)\n"


def identify_prompt(question: str, manifest: dict[str, list[str]]) -> str:
    content = "".join(manifest_line(t, c) for t, c in manifest.items())
    return (
        f"{THINK}USER QUESTION: {question}\n\n"
        f"PATIENT DATA MANIFEST:\n{content}\n\n"
        "You are a medical assistant analyzing a patient's FHIR data manifest to answer a user question.\n"
        "Based on the user question, identify the specific FHIR resource types from the manifest that are most "
        "likely to contain the information needed to answer the question.\n"
        "Output a JSON list of the relevant resource types. Do not include any other text or formatting.\n"
        'Example:\n["Condition", "Observation", "MedicationRequest"]\n'
    )


def select_prompt(question: str, rtype: str, codes: list[str]) -> str:
    return (
        f"{THINK}FOR CONTEXT ONLY, USER QUESTION: {question}\n\n"
        f"PATIENT DATA MANIFEST: {manifest_line(rtype, codes)}\n\n"
        "You are a specialized API request generator. Your SOLE task is to output a JSON of a tool call to gather "
        "the necessary information to answer the user's question. Respond with ONLY a JSON, no explanations or "
        "prose.\n"
        f"Your available tool is:\n{TOOL_TEXT}\n\n"
        f"**At this stage you can only call {rtype}.**\n"
        "Based on the user question, if the available data in the manifest would be helpful call the tool "
        "otherwise output empty JSON {}.\n"
        "EXAMPLE 1:\n"
        '{"name": "get_patient_fhir_resource", "args": {"patient_id": "some-patient-id", "fhir_resource": "'
        f'{rtype}", "filter_code": "csv-codes-from-manifest"}}}},\n'
        "EXAMPLE 2:\n"
        "{}"
    )


def facts_prompt(question: str, tool_output: str) -> str:
    return (
        f"{THINK}FOR CONTEXT ONLY, USER QUESTION: {question}\n\n"
        f"TOOL OUTPUT:\n{tool_output}\n\n"
        "You are a fact summerizing agent. Your output will be used to answer the USER QUESTION.\n"
        "Collect from the 'TOOL OUTPUT' facts ONLY if it relevant to answer the USER QUESTION.\n"
        "Write a very concise English summary, only facts relevant to the user question. DO NOT OUTPUT JSON.\n"
        "You are not authorized to answer the user question. Do not provide any output beyond concised facts. "
        "Filter out any facts which are not helpful for the user quesiton. Include date or date ranges. "
        "Only for the most critical facts, include FHIR record references [record type/record id]. "
        "For repeating multiple times provide summerize and provide only a single reference and date range."
    )


def final_prompt(question: str, summaries: list[str]) -> str:
    joined = "\n\n".join(summaries)
    return (
        "Synthesize all information from the 'SUMMARIZED INFORMATION' to provide a comprehensive final answer. "
        "Preserve relevant FHIR references.\n\n"
        f"USER QUESTION: {question}\n\n"
        f"SUMMARIZED INFORMATION: {joined}\n\n"
        "Final Answer using markdown:"
    )


# -- the data steps --------------------------------------------------------------------------------------------------
def manifest_codes(resources: list[dict[str, Any]]) -> list[str]:
    """`display=code` for every coding of every resource's `code`, repeats kept (the notebook's manifest)."""
    out = []
    for r in resources:
        code = r.get("code")
        if isinstance(code, dict) and "coding" in code:
            for c in code.get("coding") or []:
                if isinstance(c, dict):
                    out.append(f"{c.get('display', '')}={c.get('code', '')}")
    return out


def clean(obj: Any) -> Any:
    """No `meta` anywhere; a string holding "/fhir/" shortened to what follows it (the notebook's compaction)."""
    if isinstance(obj, list):
        return [clean(i) for i in obj]
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items() if k != "meta"}
    return obj.split("/fhir/")[-1] if isinstance(obj, str) and "/fhir/" in obj else obj


def tool_output(resources: list[dict[str, Any]]) -> str:
    """A fetch's result as the model reads it: a searchset Bundle as compact JSON."""
    entries = [{"resource": clean(r)} for r in resources]
    return json.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})


def strip_fences(text: str) -> str:
    t = text.strip()
    if t.startswith("```json") and t.endswith("```"):
        return t[7:-3].strip()
    if t.startswith("```") and t.endswith("```"):
        return t[3:-3].strip()
    return t


def parse_types(text: str, manifest: dict[str, list[str]]) -> list[str]:
    """The model's JSON list of types, kept only where the manifest has them (each once, in the model's order)."""
    try:
        got = json.loads(strip_fences(split_thought(text).answer))
    except json.JSONDecodeError:
        return []
    if not isinstance(got, list):
        return []
    return list(dict.fromkeys(t for t in got if isinstance(t, str) and t in manifest))


_CODE = re.compile(r"^[A-Za-z0-9\-._:/|]{1,200}$")


def parse_call(text: str) -> tuple[str, ...] | None:
    """The planned call's codes: () for a call without a filter, None for no call (`{}`, not JSON, another tool)."""
    try:
        call = json.loads(strip_fences(split_thought(text).answer))
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not call or call.get("name") != TOOL or not isinstance(call.get("args"), dict):
        return None
    codes = call["args"].get("filter_code")
    if not isinstance(codes, str):
        return ()
    return tuple(c for c in codes.replace(" ", "").split(",") if _CODE.match(c))[:100]


# -- the run ---------------------------------------------------------------------------------------------------------
@dataclass
class Fetch:
    resource_type: str
    codes: list[str]
    category_fallback: bool
    items: int  # the patient's resources shown (plus included Medication)
    facts: str = ""


@dataclass
class NotebookTrace:
    question: str
    source: str
    recipe: str = RECIPE
    manifest: dict[str, int] = field(default_factory=dict)  # type -> resources (codes are in the prompts)
    relevant_types: list[str] = field(default_factory=list)
    fetches: list[Fetch] = field(default_factory=list)
    answer: str | None = None
    citations: list[str] = field(default_factory=list)
    unverified_citations: list[str] = field(default_factory=list)
    model_calls: int = 0
    prompts: list[str] = field(default_factory=list)  # every prompt sent, in order (the user's own trace)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CITE = re.compile(r"\b(" + "|".join(("Patient", "Medication", *TYPES)) + r")/([A-Za-z0-9\-.]{1,64})")


class NotebookRun:
    """One question about one patient through the notebook's plan."""

    def __init__(self, source: FhirSource, patient: str, max_new_tokens: int | None = None) -> None:
        if max_new_tokens is not None and max_new_tokens < 1:
            raise BadInput("--max-new-tokens must be positive")
        self.source, self.patient, self.cap = source, patient, max_new_tokens
        self.mg: Any = None
        self.shown: set[str] = set()
        self.codes: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}

    def prepare(self) -> NotebookRun:
        """The manifest, and the checks that need no model: run before the model loads, so a hostile or wrong
        server, or an unknown patient, fails in seconds rather than after a load of minutes."""
        self.codes, self.counts = self.manifest()
        if not self.codes:
            if self.source.read("Patient", self.patient) is None:
                raise BadInput(f"patient {self.patient[:64]!r} is not in {self.source.description}")
            raise BadInput(
                f"patient {self.patient[:64]!r} has no clinical resources in {self.source.description}; "
                "nothing to answer from"
            )
        _log("manifest", types=len(self.codes))
        return self

    def ask(self, prompt: str, settings: CallSettings, trace: NotebookTrace) -> str:
        """One single-turn call, no system message; the answer without its thinking."""
        budget = min(settings.max_new_tokens, self.cap or settings.max_new_tokens)
        limit = self.mg.backend.context_length()
        req = self.mg.request(prompt, system="", max_new_tokens=budget, temperature=settings.temperature)
        if limit:
            n = self.mg.backend.count_prompt_tokens(req.prompt)
            if n is not None and n >= limit:
                raise BadInput(
                    f"a prompt of the notebook recipe ({n:,} tokens) does not fit the model's {limit:,}-token "
                    "context; ask a narrower question or use a model with a longer context"
                )
            if n is not None:  # the notebook's budgets are ceilings: what is left of the context is enough
                req.params = dataclasses.replace(req.params, max_new_tokens=min(budget, limit - n))
        trace.prompts.append(prompt)
        trace.model_calls += 1
        return split_thought(self.mg.backend.generate([req])[0].text).answer

    def search(self, q: Query) -> list[dict[str, Any]]:
        res = self.source.search(q)
        mine = [r for r in res.resources if self.source.patient_of(r) == self.patient]
        included = [r for r in res.included if r.get("resourceType") == "Medication"]
        return mine + included

    def manifest(self) -> tuple[dict[str, list[str]], dict[str, int]]:
        codes: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        for rtype in TYPES:
            try:
                found = self.search(Query(rtype, self.patient))
            except FhirStatusError:  # a server without this type or search: the notebook skips it too
                continue
            if found:
                codes[rtype], counts[rtype] = manifest_codes(found), len(found)
        return codes, counts

    def run(self, mg: MedGemma, question: str) -> NotebookTrace:
        """The model's part of the plan (after `prepare`)."""
        if not question.strip():
            raise BadInput("give a question")
        if not self.codes:
            self.prepare()
        self.mg = mg
        trace = NotebookTrace(question=question, source=self.source.description, manifest=dict(self.counts))
        q = composed_question(question, self.patient)
        manifest = self.codes
        trace.relevant_types = parse_types(self.ask(identify_prompt(q, manifest), IDENTIFY, trace), manifest)
        _log("identify", types=len(trace.relevant_types))
        plans: list[tuple[str, tuple[str, ...]]] = []
        for rtype in trace.relevant_types:
            codes = parse_call(self.ask(select_prompt(q, rtype, manifest[rtype]), SELECT, trace))
            _log("select", type=rtype, call="yes" if codes is not None else "no")
            if codes is not None:
                plans.append((rtype, codes))
        summaries = []
        for rtype, codes in plans:
            fetch, output = self.fetch(rtype, codes)
            fetch.facts = self.ask(facts_prompt(q, output), FACTS, trace)
            trace.fetches.append(fetch)
            summaries.append(fetch.facts)
            _log("facts", type=rtype, items=fetch.items, fallback="yes" if fetch.category_fallback else "no")
        answer = self.ask(final_prompt(q, summaries), FINAL, trace).strip()
        trace.answer = answer.removesuffix("```").removeprefix("```markdown").strip()
        cited = list(dict.fromkeys(f"{t}/{i}" for t, i in _CITE.findall(trace.answer)))
        trace.citations = [c for c in cited if c in self.shown]
        trace.unverified_citations = [c for c in cited if c not in self.shown]
        _log("final", calls=trace.model_calls, citations=len(trace.citations))
        return trace

    def fetch(self, rtype: str, codes: tuple[str, ...]) -> tuple[Fetch, str]:
        """One filtered fetch; with codes that match nothing, the same codes as categories (the notebook's
        fallback). Medication types bring the Medication resources they reference."""
        found = self._try(Query(rtype, self.patient, code=codes, include_medication="Medication" in rtype))
        fallback = False
        if not found and codes:
            found, fallback = self._try(Query(rtype, self.patient, category=codes)), True
        if found is None:  # the server refused the search: the model reads that, as in the notebook
            return Fetch(rtype, list(codes), fallback, 0), json.dumps({"error": SEARCH_REFUSED})
        self.shown.update(f"{r.get('resourceType')}/{r.get('id')}" for r in found)
        return Fetch(rtype, list(codes), fallback, len(found)), tool_output(found)

    def _try(self, q: Query) -> list[dict[str, Any]] | None:
        """A search, or None when the server answers it with an HTTP error (e.g. a parameter it does not
        support). Our bounds and the origin check still end the run."""
        try:
            return self.search(q)
        except FhirStatusError:
            return None


def run_notebook(
    mg: MedGemma, source: FhirSource, patient: str, question: str, *, max_new_tokens: int | None = None
) -> NotebookTrace:
    """Answer `question` about `patient` with Google's navigator plan (see the module docstring)."""
    return NotebookRun(source, patient, max_new_tokens).prepare().run(mg, question)


def _log(step: str, **sizes: Any) -> None:
    """One progress line per step: the step, resource TYPE names and counts; never values (they are PHI)."""
    log.info("recipe=notebook step=%s %s", step, " ".join(f"{k}={v}" for k, v in sizes.items()))


__all__ = ["run_notebook", "NotebookRun", "NotebookTrace", "TYPES", "SOURCE"]
