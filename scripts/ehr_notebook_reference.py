"""Compute tests/data/google_reference/ehr_navigator.json: the prompts Google's EHR navigator notebook itself sends,
run on our synthetic two-patient Bundle.

How: the notebook's own code cells ("Step 5 - Define FHIR Store as a tool", "Step 6 - Create the EHR agent") are
executed unchanged, after its imports ("Step 2") (except two f-strings that need Python 3.12, rewritten equivalently for 3.11: REWRITES_311) in a namespace
where the Colab/Vertex/Google-auth imports are stubs, the LLM is a recorder answering from REPLIES below, and
`FHIR_STORE_URL` is our FHIR test double serving the Bundle. Its LangGraph graph then runs as in "Step 7". We keep
what it sent: every prompt with its max_tokens and temperature, the FHIR requests, and the final answer.

Needs a throwaway venv with the notebook's libraries (not a dependency of the toolkit):
    python -m venv /tmp/ref && /tmp/ref/bin/pip install langchain-core==1.8.1 langgraph==1.2.22 requests
    PYTHONPATH=src /tmp/ref/bin/python scripts/ehr_notebook_reference.py NOTEBOOK.ipynb OUT.json
where NOTEBOOK.ipynb is notebooks/ehr_navigator_agent.ipynb of google-health/medgemma (commit 45b80ec8c0c6, also
in SamuelMarks/medgemma@a60a66024f61).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

from medgemma_toolkit.testing.fhir_server import FhirTestServer
from medgemma_toolkit.testing.synthetic_fhir import PATIENT_A, two_patient_bundle

QUESTION = "Which chronic conditions does the patient have, and how are they treated?"


def call(rtype: str, **extra: str) -> str:
    """A planned call as the model writes it."""
    args = {"patient_id": PATIENT_A, "fhir_resource": rtype, **extra}
    return json.dumps({"name": "get_patient_fhir_resource", "args": args})


# What the recorded model answers, by the kind of prompt (keys are looked up in the prompt's text).
REPLIES: dict[str, Any] = {
    "extract": json.dumps({"name": "get_patient_data_manifest", "args": {"patient_id": PATIENT_A}}),
    "identify": '```json\n["Condition", "MedicationRequest", "Observation", "Immunization"]\n```',
    "select": {
        "Condition": call("Condition", filter_code="44054006, 38341003"),
        "MedicationRequest": "```json\n" + call("MedicationRequest") + "\n```",
        "Observation": call("Observation", filter_code="laboratory"),
    },
    "facts": {
        "Condition": "<unused94>thought Two chronic conditions.<unused95>Type 2 diabetes since 2019-02-11 "
        "[Condition/a-cond-2]; essential hypertension since 2015-06-01 [Condition/a-cond-1].",
        "MedicationRequest": "Metformin 500 mg since 2019-02-11 [MedicationRequest/a-med-1]; lisinopril 10 mg "
        "since 2024-01-15 [MedicationRequest/a-med-2].",
        "Observation": "HbA1c 7.4 % on 2023-05-02 [Observation/a-obs-1].",
    },
    "final": "```markdown\nType 2 diabetes [Condition/a-cond-2], treated with metformin [MedicationRequest/a-med-1] "
    "(HbA1c 7.4 % [Observation/a-obs-1]); essential hypertension [Condition/a-cond-1], treated with lisinopril "
    "[MedicationRequest/a-med-2].\n```",
}


def reply_for(prompt: str) -> tuple[str, str]:
    """(kind, reply) for one prompt of the notebook."""
    if prompt.startswith("USER QUESTION:") and "API request generator" in prompt:
        return "extract", REPLIES["extract"]
    if "PATIENT DATA MANIFEST:\n" in prompt:
        return "identify", REPLIES["identify"]
    if "At this stage you can only call " in prompt:
        rtype = prompt.split("At this stage you can only call ")[1].split(".")[0]
        return "select", REPLIES["select"].get(rtype, "{}")
    if "TOOL OUTPUT:\n" in prompt:
        parts = prompt.split('"resourceType": "')  # the Bundle's, then its first entry's
        rtype = parts[2].split('"')[0] if len(parts) > 2 else ""
        return "facts", REPLIES["facts"].get(rtype, "No relevant facts.")
    return "final", REPLIES["final"]


REWRITES_311 = [
    ("tool", """quote(filter_code.replace(" ",""))""", """quote(filter_code.replace(' ',''))"""),
    ("agent", "{'\\n\\n'.join(state['tool_output_summary'])}", "{_NL2.join(state['tool_output_summary'])}"),
]


class RecordingLLM:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def invoke(self, prompt: str, max_tokens: int, temperature: float) -> str:
        kind, reply = reply_for(prompt)
        self.calls.append(
            {"kind": kind, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "reply": reply}
        )
        return reply


def _stub_modules() -> None:
    """Colab, Vertex and Google auth are not needed to run the graph: empty stand-ins with the names imported."""

    class Creds:
        token = "reference-token"

        def refresh(self, request: Any) -> None:
            pass

    mods = {
        "google": types.ModuleType("google"),
        "google.colab": types.SimpleNamespace(auth=types.SimpleNamespace(authenticate_user=lambda: None)),
        "google.auth": types.SimpleNamespace(default=lambda: (Creds(), None)),
        "google.auth.transport": types.ModuleType("google.auth.transport"),
        "google.auth.transport.requests": types.SimpleNamespace(Request=lambda: None),
        "langchain_google_vertexai": types.SimpleNamespace(VertexAIModelGarden=None),
        "IPython.display": types.SimpleNamespace(Markdown=str, display=lambda *a, **k: None),
    }
    sys.modules.update(mods)  # type: ignore[arg-type]


def main(notebook: Path, out: Path) -> None:
    cells = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    import_cell = next(c for c in cells if c.startswith("#@title Step 2"))
    tool_cell = next(c for c in cells if c.startswith("#@title Step 5"))
    agent_cell = next(c for c in cells if c.startswith("#@title Step 6"))
    # Two f-strings need Python 3.12 (a backslash, and the same quotes, inside the braces): the same values, in
    # 3.11 syntax.
    for cell_name, old, new in REWRITES_311:
        cell = tool_cell if cell_name == "tool" else agent_cell
        assert cell.count(old) == 1, old
        if cell_name == "tool":
            tool_cell = cell.replace(old, new)
        else:
            agent_cell = cell.replace(old, new)
    _stub_modules()
    llm = RecordingLLM()
    with FhirTestServer(two_patient_bundle()) as fhir:
        module = types.ModuleType("notebook")  # a real module: LangGraph reads the state's type hints through it
        sys.modules["notebook"] = module
        ns: dict[str, Any] = module.__dict__
        ns.update({"FHIR_STORE_URL": fhir.base_url, "llm": llm, "_NL2": "\n\n"})
        exec(compile(import_cell, "step2", "exec", dont_inherit=True), ns)
        exec(compile(tool_cell, "step5", "exec", dont_inherit=True), ns)
        exec(compile(agent_cell, "step6", "exec", dont_inherit=True), ns)
        from langchain_core.messages import HumanMessage, SystemMessage

        composed = f"{QUESTION}. Patient ID {PATIENT_A}."
        messages = [SystemMessage(content="You are MedGemma, a helpful, expert medical assistant."),
                    HumanMessage(content=composed)]  # fmt: skip
        state = ns["agent"].invoke({"messages": messages, "patient_fhir_manifest": {}, "tool_output_summary": []})
        requests = [q.replace(PATIENT_A, "{patient}") for q in fhir.requests]
    final = state["messages"][-1].content.removesuffix("```").removeprefix("```markdown")
    doc = {
        "source": {
            "repo": "google-health/medgemma",
            "file": "notebooks/ehr_navigator_agent.ipynb",
            "commit": "45b80ec8c0c6b9d8690161393b66a0f25f699de4",
            "read_at": "SamuelMarks/medgemma@a60a66024f6153496dfa9490dba12d4f1fbd092e",
        },
        "how": "scripts/ehr_notebook_reference.py: the notebook's Step 5 and Step 6 cells run unchanged (two 3.12 "
        "f-strings rewritten for 3.11) with langchain-core 1.8.1 and langgraph 1.2.22, a recording LLM and "
        "medgemma_toolkit.testing.fhir_server.FhirTestServer(two_patient_bundle()) as the FHIR store",
        "patient": PATIENT_A,
        "question": QUESTION,
        "calls": llm.calls,
        "manifest": state["patient_fhir_manifest"],
        "relevant_resource_types": state["relevant_resource_types"],
        "fhir_requests": requests,
        "final_answer": final,
    }
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{out}: {len(llm.calls)} model calls, {len(requests)} FHIR requests")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
