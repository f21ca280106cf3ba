"""`medgemma ehr` end to end on a two-patient Synthea-style Bundle: from a local file, an NDJSON export and a FHIR
REST test double (loopback; paging, bearer token), with a scripted model. Nothing of the other patient may reach the
answer, the trace, the logs or the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgemma_toolkit.ehr.sources import LocalSource
from medgemma_toolkit.ehr.tools import PatientTools, check_arguments
from medgemma_toolkit.serve.launch import free_port
from medgemma_toolkit.testing.fhir_server import FhirTestServer
from medgemma_toolkit.testing.synthetic_fhir import NAME_A, NAME_B, PATIENT_A, PATIENT_B, two_patient_bundle
from medgemma_toolkit.testing.upstream import ScriptedUpstream

# What only patient B's record holds: none of it may appear anywhere when asking about A.
B_DATA = [NAME_B[0], NAME_B[1], "Asthma", "Salbutamol", "FEV1", "1990-11-23", "b-med-1", "b-obs-1", "b-enc-1"]
QUESTION = "Which chronic conditions does the patient have?"
ANSWER = "Diabetes mellitus type 2 [Condition/a-cond-2] and essential hypertension [Condition/a-cond-1]."
SCRIPT = [
    "[list_conditions()]",
    '[read_resource(resource_type="Condition", id="b-cond-1")]',  # the other patient's condition
    f'```tool_code\nread_resource(resource_type="Patient", id="{PATIENT_B}")\n```',  # the other patient
    '{"name": "search_resources", "parameters": {"resource_type": "Observation", "date_from": "2024-01-01"}}',
    ANSWER,
]


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("fhir") / "bundle.json"
    p.write_text(json.dumps(two_patient_bundle()))
    return p


def no_b_data(*texts: str) -> None:
    for t in texts:
        for needle in B_DATA:
            assert needle not in t, needle


def check_trace(out: dict) -> None:
    assert out["answer"] == ANSWER
    assert out["citations"] == ["Condition/a-cond-2", "Condition/a-cond-1"] and out["unverified_citations"] == []
    tools = [(s["step"], s["tool"], s["refused"]) for s in out["steps"]]
    assert tools == [
        (0, "get_patient_data_manifest", False),
        (1, "list_conditions", False),
        (2, "read_resource", True),
        (3, "read_resource", True),
        (4, "search_resources", False),
    ]
    assert out["steps"][1]["result_items"] == 2 and "Essential hypertension" in out["steps"][1]["result"]
    assert out["steps"][4]["result_items"] == 1 and "Systolic blood pressure" in out["steps"][4]["result"]
    assert out["steps"][2]["result"] == out["steps"][2]["result"].replace("Asthma", "")  # refused: nothing shown
    assert out["model_turns"] == 5


def run_agent(cli, source: str, up: ScriptedUpstream, *extra: str, env: dict | None = None):
    return cli("ehr", "--fhir", source, "--patient", PATIENT_A, "--upstream", up.url, "-m", "scripted", "--json",
               *extra, QUESTION, env=env)


def test_local_bundle_end_to_end(cli, bundle_file):
    with ScriptedUpstream(SCRIPT) as up:
        r = run_agent(cli, str(bundle_file), up)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    check_trace(out)
    seen_by_model = json.dumps(up.requests)
    no_b_data(r.stdout, r.stderr, seen_by_model)
    assert "Essential hypertension" in seen_by_model  # A's data did reach the model
    # progress lines: tool, argument names, sizes; never values
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("ehr: step=")]
    assert len(lines) == 5 and "args=date_from,resource_type" in lines[4]
    assert not any(v in r.stderr for v in ("a-cond", "2024-01-01", NAME_A[0], PATIENT_B))


def test_ndjson_export_folder(cli, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    by_type: dict[str, list[str]] = {}
    for e in two_patient_bundle()["entry"]:
        by_type.setdefault(e["resource"]["resourceType"], []).append(json.dumps(e["resource"]))
    for rtype, lines in by_type.items():
        (export / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")
    with ScriptedUpstream(SCRIPT) as up:
        r = run_agent(cli, str(export), up)
    assert r.returncode == 0, r.stderr
    check_trace(json.loads(r.stdout))


def test_fhir_rest_double_with_token_and_paging(cli):
    with FhirTestServer(two_patient_bundle(), token="s3cret", max_page=1) as fhir, ScriptedUpstream(SCRIPT) as up:
        r = run_agent(cli, fhir.base_url, up, env={"MEDGEMMA_FHIR_TOKEN": "s3cret"})
        assert r.returncode == 0, r.stderr
        check_trace(json.loads(r.stdout))
        no_b_data(r.stdout, r.stderr, json.dumps(up.requests))
        conditions = [q for q in fhir.requests if q.startswith("/fhir/Condition?")]
        assert any("_offset=1" in q for q in conditions)  # page 2 reached through Bundle.link next
        assert all(f"patient={PATIENT_A}" in q for q in conditions)
        # Observations of A since 2024 only: the date went to the server as a FHIR search parameter
        assert any("date=ge2024-01-01" in q for q in fhir.requests if q.startswith("/fhir/Observation?"))
        bad = run_agent(cli, fhir.base_url, up, env={"MEDGEMMA_FHIR_TOKEN": "wrong"})
    assert bad.returncode == 2 and "refused our credentials (401)" in bad.stderr and "s3cret" not in bad.stderr


def test_scripted_checkpoint_that_never_stops_asking_for_the_other_patient(cli, tiny_model_dir, tmp_path,
                                                                          bundle_file):
    """The real local model path: a checkpoint that always asks for patient B is refused every time, then stopped."""
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    script = f'[read_resource(resource_type="Patient", id="{PATIENT_B}")]'
    model = build_scripted_checkpoint(tiny_model_dir, tmp_path / "m", script, added_tokens=True)
    # The tiny tokenizer spells the tool schemas out nearly byte by byte (~4.5k tokens); give the tiny model the room
    # a real one has (its weights do not depend on the length).
    cfg = json.loads((model / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = 32768
    (model / "config.json").write_text(json.dumps(cfg))
    r = cli("ehr", "--fhir", str(bundle_file), "--patient", PATIENT_A, "-m", str(model), "--max-steps", "3",
            "--max-new-tokens", "32", "--json", QUESTION)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert err == ["error: the model was still calling tools after 3 steps; raise --max-steps or ask a narrower "
                   "question"]
    out = json.loads(r.stdout)
    assert [s["refused"] for s in out["steps"]] == [False, True, True, True] and out["answer"] is None
    no_b_data(r.stdout, r.stderr)


def test_bad_sources_are_one_line_errors(cli, tmp_path, bundle_file):
    def err(*args: str, env: dict | None = None) -> str:
        r = cli("ehr", *args, "-m", "unused", QUESTION, env=env)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        return lines[0]

    (tmp_path / "notjson.json").write_text("{not json")
    (tmp_path / "entry.json").write_text(json.dumps({"resourceType": "Bundle", "entry": [{"nope": 1}]}))
    (tmp_path / "bad.ndjson").write_text('{"resourceType": "Patient", "id": "x"}\n{oops\n')
    assert "not valid JSON" in err("--fhir", str(tmp_path / "notjson.json"), "--patient", "x")
    assert "Bundle.entry[0] has no resource" in err("--fhir", str(tmp_path / "entry.json"), "--patient", "x")
    assert "line 2 is not JSON" in err("--fhir", str(tmp_path / "bad.ndjson"), "--patient", "x")
    assert "no such file" in err("--fhir", str(tmp_path / "missing.json"), "--patient", "x")
    port = free_port()  # nothing listens there
    assert "is unreachable" in err("--fhir", f"http://127.0.0.1:{port}/fhir", "--patient", "x")
    assert "http(s) URL or a local path" in err("--fhir", "ftp://host/x", "--patient", "x")


def test_patient_without_data(cli, tmp_path, bundle_file):
    lonely = two_patient_bundle()
    lonely["entry"].append({"resource": {"resourceType": "Patient", "id": "lonely"}})
    (tmp_path / "b.json").write_text(json.dumps(lonely))
    with ScriptedUpstream(SCRIPT) as up:
        r1 = cli("ehr", "--fhir", str(bundle_file), "--patient", "nobody", "--upstream", up.url, "-m", "scripted",
                 QUESTION)
        r2 = cli("ehr", "--fhir", str(tmp_path / "b.json"), "--patient", "lonely", "--upstream", up.url, "-m",
                 "scripted", QUESTION)
        assert up.requests == []  # the model was never asked
    assert r1.returncode == 2 and "error: patient 'nobody' is not in local export" in r1.stderr
    assert r2.returncode == 2 and "has no clinical resources" in r2.stderr


def test_tools_are_bound_to_the_patient(bundle_file):
    tools = PatientTools(LocalSource.load(bundle_file), PATIENT_A)
    other, missing = tools.read("Condition", "b-cond-1"), tools.read("Condition", "no-such-id")
    assert other.refused and missing.refused
    assert other.text.replace("b-cond-1", "X") == missing.text.replace("no-such-id", "X")  # existence not revealed
    assert not tools.read("Patient", PATIENT_A).refused
    assert tools.call("search_resources", {"resource_type": "Condition", "patient": PATIENT_B}).refused
    assert "unknown argument 'patient'" in tools.call("list_conditions", {"patient": PATIENT_B}).text
    assert tools.call("drop_tables", {}).refused
    for t in tools.openai():  # every tool is data: an OpenAI function with a closed JSON schema
        params = t["function"]["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
    assert check_arguments(tools.tools["search_resources"].parameters, {"resource_type": "Condition",
                                                                        "date_from": "June"}) is not None


def test_help_documents_the_fhir_sources(cli):
    r = cli("ehr", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for needle in ("--fhir", "base URL", "MEDGEMMA_FHIR_TOKEN", "Bundle", "ndjson", "Bulk Data", "--patient",
                   "--max-steps", "--json"):
        assert needle in text, needle


def test_conversation_beyond_the_context_is_a_clear_error(cli, tiny_model_dir, bundle_file):
    r = cli("ehr", "--fhir", str(bundle_file), "--patient", PATIENT_A, "-m", str(tiny_model_dir),
            "--max-new-tokens", "100000", QUESTION)
    assert r.returncode == 2
    assert "no longer fits the model's" in r.stderr and "-token context" in r.stderr
