"""`medgemma ehr`: the EHR navigator agent over FHIR R4 (ehr/)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

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
    max_steps: Annotated[int, typer.Option(help="Model turns that may call tools before it must have answered")] = 6,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per model turn")] = 512,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the trace as JSON: each tool call, its result, the answer, citations")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr")] = False,
    preset: PresetOpt = None,
) -> None:
    """Answer a question about one patient from FHIR R4 data, as Google's EHR navigator agent does: discover what the
    record holds, fetch the relevant resources through tools, answer citing resource ids ([Condition/123]).

    FHIR sources (--fhir): a FHIR R4 server's base URL, read through its REST search API with paging (bearer token
    from $MEDGEMMA_FHIR_TOKEN, never on the command line); a Bundle .json file (e.g. Synthea's); an .ndjson file or
    a folder of them (a Bulk Data $export). A local export is read into memory.

    Tools the model may call: get_patient_data_manifest, search_resources (type, dates), read_resource (type, id),
    list_encounters / list_conditions / list_medications / list_observations (dates). Every tool is bound to
    --patient: another patient's resources are refused. stderr gets one line per call (tool, argument names, result
    size), never values.

    Example: medgemma ehr --fhir synthea/Bundle.json --patient 8f2c... "Is the diabetes controlled?"

    Example: MEDGEMMA_FHIR_TOKEN=... medgemma ehr --fhir https://fhir.example.org/r4 --patient 123 --upstream http://gpu:8000 -m google/medgemma-27b-text-it "Current medications?"
    """
    from ..ehr.agent import StillCallingTools, run
    from ..ehr.sources import open_source

    if not quiet:
        lg = logging.getLogger("medgemma_toolkit.ehr")
        lg.setLevel(logging.INFO)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("ehr: %(message)s"))
        lg.addHandler(handler)
        lg.propagate = False
    source = open_source(fhir)  # before the model loads: a wrong URL, token or file fails fast
    mg = mo.load(preset, quiet=quiet)
    try:
        trace = run(mg, source, patient, question, max_steps=max_steps, max_new_tokens=max_new_tokens)
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
