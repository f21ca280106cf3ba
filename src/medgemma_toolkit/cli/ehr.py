"""`medgemma ehr`: the EHR navigator agent over FHIR R4 (ehr/)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Literal, Optional

import typer

from . import app
from .common import MODEL_DEFAULTS, ModelOptions, PresetOpt, option_groups


@app.command()
@option_groups(mo=ModelOptions)
def ehr(
    question: Annotated[str, typer.Argument(help="The question about the patient (use quotes)")],
    fhir: Annotated[
        str,
        typer.Option(
            "--fhir",
            help="FHIR R4 source: a server's base URL (http(s)://.../fhir; bearer token from $MEDGEMMA_FHIR_TOKEN), "
            "a Bundle .json file, an .ndjson file, or a folder of .ndjson files (a Bulk Data export)",
        ),
    ],
    patient: Annotated[str, typer.Option("--patient", help="The Patient resource id; only this patient is read")],
    mo: ModelOptions = MODEL_DEFAULTS,
    recipe: Annotated[
        Literal["notebook", "tools"],
        typer.Option(
            help="notebook: Google's EHR navigator plan (manifest, the model picks resource types, one filtered fetch "
            "per type, a fact summary per fetch, a synthesis; single-turn prompts, so any model runs it). "
            "tools: a model-driven function-calling loop (needs a chat model)"
        ),
    ] = "notebook",
    max_steps: Annotated[
        int, typer.Option(help="--recipe tools: model turns that may call tools before it must have answered")
    ] = 6,
    max_new_tokens: Annotated[
        Optional[int],
        typer.Option(help="Tokens per model call (default: the recipe's own: notebook 1000/8000, tools 512)"),
    ] = None,
    max_pages: Annotated[int, typer.Option(help="FHIR server: pages one search may follow (Bundle next links)")] = 100,
    max_resources: Annotated[int, typer.Option(help="Resources one search may return, all pages together")] = 5000,
    max_response_mb: Annotated[
        float, typer.Option(help="FHIR server: MiB one response may hold; reading stops at the cap")
    ] = 16.0,
    connect_timeout: Annotated[float, typer.Option(help="FHIR server: seconds to connect")] = 5.0,
    read_timeout: Annotated[float, typer.Option(help="FHIR server: seconds for one whole response")] = 30.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the trace as JSON: each tool call, its result, the answer, citations")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr")] = False,
    preset: PresetOpt = None,
) -> None:
    """Answer a question about one patient from FHIR R4 data, as Google's EHR navigator agent does: discover what the
    record holds, fetch the relevant resources, answer citing FHIR references ([Condition/123]).

    Recipes (--recipe): notebook (default) runs the plan of Google's ehr_navigator_agent notebook: a manifest of
    display=code strings over 12 resource types, the model picks the relevant types as a JSON list, then per type
    plans one filtered fetch (codes, with a category fallback; medications with their Medication resources), a
    fact summary per fetch, and a final synthesis keeping FHIR references. Every call is one single-turn prompt, so
    any model runs it, base (-pt) models included. tools: the model drives a function-calling loop (needs a chat
    model; base models are refused before the first call).

    FHIR sources (--fhir): a FHIR R4 server's base URL, read through its REST search API with paging (bearer token
    from $MEDGEMMA_FHIR_TOKEN, never on the command line); a Bundle .json file (e.g. Synthea's); an .ndjson file or
    a folder of them (a Bulk Data $export). A local export is read into memory.

    Bounds on a FHIR server: every request (search, read, each next link) must share scheme, host, port and base path
    with --fhir, else it is refused and the token is never sent; redirects are not followed; --max-pages,
    --max-resources, --max-response-mb, --connect-timeout, --read-timeout each end a run in one line.

    Tools (--recipe tools) the model may call: get_patient_data_manifest, search_resources (type, dates), read_resource (type, id),
    list_encounters / list_conditions / list_medications / list_observations (dates). Every tool is bound to
    --patient: another patient's resources are refused. stderr gets one line per call (tool, argument names, result
    size), never values.

    Example: medgemma ehr --fhir synthea/Bundle.json --patient 8f2c... "Is the diabetes controlled?"

    Example: MEDGEMMA_FHIR_TOKEN=... medgemma ehr --fhir https://fhir.example.org/r4 --patient 123 --upstream http://gpu:8000 -m google/medgemma-27b-text-it "Current medications?"
    """
    from ..ehr.agent import StillCallingTools, check_model, prepare, run
    from ..ehr.notebook import NotebookRun
    from ..ehr.scope import check_patient_id
    from ..ehr.sources import open_source
    from ..ehr.transport import FhirLimits
    from ..errors import BadInput

    if not quiet:
        _progress_to_stderr()
    if not 0 < max_response_mb < 2**20:  # also NaN and inf, before they reach int()
        raise BadInput("--max-response-mb must be a positive number of MiB")
    limits = FhirLimits(
        max_pages=max_pages,
        max_resources=max_resources,
        max_response_bytes=int(max_response_mb * 2**20),
        connect_timeout_s=connect_timeout,
        read_timeout_s=read_timeout,
    )
    check_patient_id(patient)
    if not question.strip():
        raise BadInput("give a question")
    if max_steps < 1:
        raise BadInput("--max-steps must be at least 1")
    # Everything that reads the FHIR source comes before the model loads: a wrong URL, token, file or patient, or a
    # hostile server, fails in seconds.
    source = open_source(fhir, limits=limits)
    if recipe == "notebook":
        plan = NotebookRun(source, patient, max_new_tokens).prepare()
        mg = mo.load(preset, quiet=quiet)
        nb = plan.run(mg, question)
        if as_json:
            print(json.dumps(nb.to_dict(), ensure_ascii=False, indent=2))
            return
        print(nb.answer)
        if not quiet and not nb.answer:
            print(
                "ehr: note: the model's final answer is empty (a base or small model may not follow the plan)",
                file=sys.stderr,
            )
        elif not quiet and not nb.citations:
            print("ehr: note: the answer cites no resource it was shown", file=sys.stderr)
        return
    prepared = prepare(source, patient)
    mg = mo.load(preset, quiet=quiet)
    check_model(mg)  # before the first model call: the loop needs multi-turn chat
    try:
        trace = run(
            mg, source, patient, question, max_steps=max_steps, max_new_tokens=max_new_tokens or 512, prepared=prepared
        )
    except StillCallingTools as e:
        if as_json:
            print(json.dumps(e.trace.to_dict(), ensure_ascii=False, indent=2))  # type: ignore[attr-defined]
        raise
    if as_json:
        print(json.dumps(trace.to_dict(), ensure_ascii=False, indent=2))
        return
    print(trace.answer)
    if not quiet and not trace.citations:
        print("ehr: note: the answer cites no resource it was shown", file=sys.stderr)


def _progress_to_stderr() -> None:
    """The ehr logger's lines (steps, tool names, sizes; never values) on this run's stderr, replacing any handler
    an earlier in-process run left (tests run the CLI many times in one process)."""
    lg = logging.getLogger("medgemma_toolkit.ehr")
    lg.setLevel(logging.INFO)
    for h in [h for h in lg.handlers if getattr(h, "_medgemma_ehr", False)]:
        lg.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ehr: %(message)s"))
    handler._medgemma_ehr = True  # type: ignore[attr-defined]
    lg.addHandler(handler)
    lg.propagate = False
