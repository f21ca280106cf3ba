"""`medgemma ehr` end to end on a two-patient Synthea-style Bundle: from a local file, an NDJSON export and a FHIR
REST test double (loopback; paging, bearer token), with a scripted model. Nothing of the other patient may reach the
answer, the trace, the logs or the model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from medgemma_toolkit.ehr.scope import patient_of, patient_ref_id
from medgemma_toolkit.ehr.sources import LocalSource
from medgemma_toolkit.ehr.tools import PatientTools, check_arguments
from medgemma_toolkit.ehr.transport import Origin
from medgemma_toolkit.serve.launch import free_port
from medgemma_toolkit.testing.fhir_server import FhirTestServer, RecordingServer, imported_resources
from medgemma_toolkit.testing.synthetic_fhir import (
    FOREIGN_MARKERS,
    NAME_A,
    NAME_B,
    PATIENT_A,
    PATIENT_B,
    foreign_subject_resources,
    two_patient_bundle,
)
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
    return cli(
        "ehr",
        "--fhir",
        source,
        "--patient",
        PATIENT_A,
        "--upstream",
        up.url,
        "-m",
        "scripted",
        "--json",
        "--recipe",
        "tools",
        *extra,
        QUESTION,
        env=env,
    )


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
    for r in imported_resources(two_patient_bundle()):  # a Bulk export refers by `Patient/<id>`, not urn:uuid
        by_type.setdefault(r["resourceType"], []).append(json.dumps(r))
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
        assert all(f"patient=Patient%2F{PATIENT_A}" in q for q in conditions)  # the full reference
        # Observations of A since 2024 only: the date went to the server as a FHIR search parameter
        assert any("date=ge2024-01-01" in q for q in fhir.requests if q.startswith("/fhir/Observation?"))
        bad = run_agent(cli, fhir.base_url, up, env={"MEDGEMMA_FHIR_TOKEN": "wrong"})
    assert bad.returncode == 2 and "refused our credentials (401)" in bad.stderr and "s3cret" not in bad.stderr


def test_scripted_checkpoint_that_never_stops_asking_for_the_other_patient(cli, tiny_model_dir, tmp_path, bundle_file):
    """The real local model path: a checkpoint that always asks for patient B is refused every time, then stopped."""
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    script = f'[read_resource(resource_type="Patient", id="{PATIENT_B}")]'
    model = build_scripted_checkpoint(tiny_model_dir, tmp_path / "m", script, added_tokens=True)
    # The tiny tokenizer spells the tool schemas out nearly byte by byte (~4.5k tokens); give the tiny model the room
    # a real one has (its weights do not depend on the length).
    cfg = json.loads((model / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = 32768
    (model / "config.json").write_text(json.dumps(cfg))
    r = cli(
        "ehr",
        "--fhir",
        str(bundle_file),
        "--patient",
        PATIENT_A,
        "-m",
        str(model),
        "--recipe",
        "tools",
        "--max-steps",
        "3",
        "--max-new-tokens",
        "32",
        "--json",
        QUESTION,
    )
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert err == [
        "error: the model was still calling tools after 3 steps; raise --max-steps or ask a narrower question"
    ]
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
        r1 = cli(
            "ehr", "--fhir", str(bundle_file), "--patient", "nobody", "--upstream", up.url, "-m", "scripted", QUESTION
        )
        r2 = cli(
            "ehr",
            "--fhir",
            str(tmp_path / "b.json"),
            "--patient",
            "lonely",
            "--upstream",
            up.url,
            "-m",
            "scripted",
            QUESTION,
        )
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
    assert (
        check_arguments(tools.tools["search_resources"].parameters, {"resource_type": "Condition", "date_from": "June"})
        is not None
    )


def test_help_documents_the_fhir_sources(cli):
    r = cli("ehr", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for needle in (
        "--fhir",
        "base URL",
        "MEDGEMMA_FHIR_TOKEN",
        "Bundle",
        "ndjson",
        "Bulk Data",
        "--patient",
        "--max-steps",
        "--json",
    ):
        assert needle in text, needle


def test_conversation_beyond_the_context_is_a_clear_error(cli, tiny_model_dir, bundle_file):
    r = cli(
        "ehr",
        "--fhir",
        str(bundle_file),
        "--patient",
        PATIENT_A,
        "-m",
        str(tiny_model_dir),
        "--recipe",
        "tools",
        "--max-new-tokens",
        "100000",
        QUESTION,
    )
    assert r.returncode == 2
    assert "no longer fits the model's" in r.stderr and "-token context" in r.stderr


# -- the notebook recipe's scripted model ------------------------------------------------------------------------------
NB_TYPES = '<unused94>thought The question is about chronic disease.<unused95>```json\n["Condition", "MedicationRequest", "Observation", "Immunization"]\n```'


def nb_call(patient: str, rtype: str, **extra: str) -> str:
    return json.dumps(
        {"name": "get_patient_fhir_resource", "args": {"patient_id": patient, "fhir_resource": rtype, **extra}}
    )


NB_CALLS = {
    # the model names the OTHER patient: ignored, the call is bound to --patient
    "Condition": nb_call(PATIENT_B, "Condition", filter_code="44054006, 38341003"),
    "MedicationRequest": "```json\n" + nb_call("x", "MedicationRequest") + "\n```",
    # another type than the stage's (ignored), and a code that matches nothing: the category fallback
    "Observation": nb_call("x", "Patient", filter_code="laboratory"),
}
NB_FACTS = {
    "Condition": "Type 2 diabetes since 2019-02-11 [Condition/a-cond-2]; hypertension since 2015 [Condition/a-cond-1].",
    "MedicationRequest": "Metformin since 2019 [MedicationRequest/a-med-1]; lisinopril 2024 [MedicationRequest/a-med-2].",
    "Observation": "HbA1c 7.4 % on 2023-05-02 [Observation/a-obs-1].",
}
NB_ANSWER = (
    "```markdown\nType 2 diabetes [Condition/a-cond-2] (HbA1c 7.4 % [Observation/a-obs-1]) and hypertension "
    "[Condition/a-cond-1], on metformin [MedicationRequest/a-med-1]; see also [Condition/b-cond-1].\n```"
)


def notebook_reply(body: dict) -> str:
    """The scripted model of the notebook recipe: which prompt it got decides what it answers."""
    text = json.dumps(body["messages"][-1]["content"])
    if "PATIENT DATA MANIFEST:\\n" in text:
        return NB_TYPES
    if "At this stage you can only call" in text:
        rtype = text.split("At this stage you can only call ")[1].split(".")[0]
        return NB_CALLS.get(rtype, "{}")
    if "fact summerizing agent" in text:
        first = text.split('resourceType\\": \\"', 2)
        return NB_FACTS.get(first[1].split("\\")[0] if len(first) > 1 else "", "No relevant facts.")
    return NB_ANSWER


def notebook_script():
    return notebook_reply


# -- a hostile FHIR server ---------------------------------------------------------------------------------------------
TOKEN = "s3cret-token-value"


def one_error_line(r) -> str:
    """The run failed with exactly one line on stderr (run with -q), an `error:` line without the token."""
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert TOKEN not in r.stderr and TOKEN not in r.stdout
    return lines[0]


def run_hostile(cli, fhir_url: str, up: ScriptedUpstream, *extra: str):
    return cli(
        "ehr",
        "--fhir",
        fhir_url,
        "--patient",
        PATIENT_A,
        "--upstream",
        up.url,
        "-m",
        "scripted",
        "-q",
        *extra,
        QUESTION,
        env={"MEDGEMMA_FHIR_TOKEN": TOKEN},
    )


@pytest.mark.parametrize("recipe", ["notebook", "tools"])
@pytest.mark.parametrize("attack", ["offorigin-next", "redirect"])
def test_links_and_redirects_off_the_base_never_receive_the_token(cli, recipe, attack):
    with (
        RecordingServer() as other,
        FhirTestServer(two_patient_bundle(), token=TOKEN, hostile=attack, other_url=other.url) as fhir,
        ScriptedUpstream(SCRIPT) as up,
    ):
        r = run_hostile(cli, fhir.base_url, up, "--recipe", recipe)
        assert other.requests == []  # the other port received nothing at all, let alone the token
        assert up.requests == []  # and the model was never asked
    line = one_error_line(r)
    assert ("off its base URL" if attack == "offorigin-next" else "redirect") in line
    assert "the token was not sent" in line or "token goes nowhere else" in line


def test_the_done_when_case_in_a_real_process(tmp_path):
    """The issue's acceptance case as a user runs it: a real `medgemma` process, the token in the environment."""
    from conftest import run_cli

    with (
        RecordingServer() as other,
        FhirTestServer(two_patient_bundle(), token=TOKEN, hostile="offorigin-next", other_url=other.url) as fhir,
        ScriptedUpstream(SCRIPT) as up,
    ):
        r = run_cli(
            "ehr",
            "--fhir",
            fhir.base_url,
            "--patient",
            PATIENT_A,
            "--upstream",
            up.url,
            "-m",
            "scripted",
            QUESTION,
            env={"MEDGEMMA_FHIR_TOKEN": TOKEN},
            timeout=120,
        )
        assert other.requests == []
    assert "off its base URL" in one_error_line(r)


def test_self_referencing_next_ends_in_under_5_s(cli):
    with FhirTestServer(two_patient_bundle(), hostile="self-next") as fhir, ScriptedUpstream(SCRIPT) as up:
        t0 = time.monotonic()
        r = run_hostile(cli, fhir.base_url, up)
        elapsed = time.monotonic() - t0
        searches = [q for q in fhir.requests if "?" in q]
    assert elapsed < 5, elapsed
    assert "paging loop" in one_error_line(r)
    assert len(searches) == 1  # the page was fetched once; its `next` (itself) was not


@pytest.mark.parametrize("declared", [False, True])
def test_a_60_mb_page_is_cut_at_the_cap_while_it_streams(cli, declared):
    """The 60 MB page is generated while it is sent (never held by the double); the client must stop at 1 MiB."""
    attack = "declared-big" if declared else "big-page"
    with FhirTestServer(two_patient_bundle(), hostile=attack) as fhir, ScriptedUpstream(SCRIPT) as up:
        t0 = time.monotonic()
        r = run_hostile(cli, fhir.base_url, up, "--max-response-mb", "1")
        elapsed = time.monotonic() - t0
    assert "over 1 MiB; stopped reading (raise --max-response-mb)" in one_error_line(r)
    assert elapsed < 10, elapsed
    # What the server managed to push before we hung up: the cap plus socket buffers, far from 60 MB
    # (with Content-Length announced, nothing of the body is read at all).
    assert fhir.bytes_sent < 24 * 2**20, fhir.bytes_sent


@pytest.mark.parametrize(
    "body,needle",
    [
        (b"[" * 100_000 + b"]" * 100_000, "not usable JSON"),  # past the parser's recursion
        (  # parses, but too deep for the tools to walk recursively
            b'{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Condition", "x": '
            + b'{"a":' * 200
            + b"1"
            + b"}" * 200
            + b"}}]}",
            "nested deeper than 64 levels",
        ),
        (b'{"resourceType": "Bundle", "total": ' + b"9" * 5000 + b"}", "not usable JSON"),  # int over 4300 digits
        (b"\xff\xfe not utf-8", "not usable JSON"),
    ],
)
def test_hostile_json_is_one_line(cli, tmp_path, body, needle):
    with FhirTestServer(two_patient_bundle(), hostile="raw", raw_body=body) as fhir, ScriptedUpstream(SCRIPT) as up:
        r = run_hostile(cli, fhir.base_url, up)
    assert needle in one_error_line(r)
    (tmp_path / "deep.json").write_bytes(body)  # the same bytes as a local file
    local = cli("ehr", "--fhir", str(tmp_path / "deep.json"), "--patient", PATIENT_A, "-m", "unused", QUESTION)
    assert local.returncode == 2 and one_error_line(local)


def test_a_gzip_bomb_is_inflated_only_up_to_the_cap(cli):
    """60 MB of JSON in ~60 KB of gzip: decoded in 64 KiB steps, so reading stops at the cap, not after 60 MB."""
    import tracemalloc

    with FhirTestServer(two_patient_bundle(), hostile="gzip-bomb") as fhir, ScriptedUpstream(SCRIPT) as up:
        tracemalloc.start()
        r = run_hostile(cli, fhir.base_url, up, "--max-response-mb", "1")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert "over 1 MiB; stopped reading" in one_error_line(r)
    assert peak < 16 * 2**20, peak  # the cap plus buffers, nowhere near the 60 MB it would inflate to


def test_page_and_resource_bounds(cli):
    with FhirTestServer(two_patient_bundle(), max_page=1) as fhir, ScriptedUpstream(SCRIPT) as up:
        pages = run_hostile(cli, fhir.base_url, up, "--max-pages", "1")
        many = run_hostile(cli, fhir.base_url, up, "--max-resources", "1")
        assert up.requests == []
    assert "ran past 1 pages (raise --max-pages)" in one_error_line(pages)
    assert "over 1 resources (raise --max-resources)" in one_error_line(many)


def test_a_server_that_never_answers_times_out_in_one_line(cli):
    """Accepts the connection (the kernel's backlog does) and never sends a byte."""
    import socket

    with socket.socket() as silent, ScriptedUpstream(SCRIPT) as up:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        t0 = time.monotonic()
        r = run_hostile(cli, f"http://127.0.0.1:{silent.getsockname()[1]}/fhir", up, "--read-timeout", "1")
        elapsed = time.monotonic() - t0
    assert "did not answer in time" in one_error_line(r)
    assert elapsed < 5, elapsed


def test_a_server_that_drips_bytes_is_cut_at_the_read_timeout(cli):
    """Each read comes back quickly (one byte), so only a deadline on the whole response stops it."""
    import socket
    import threading

    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n\r\n{")
            while not stop.is_set():
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.2)

    with socket.socket() as srv, ScriptedUpstream(SCRIPT) as up:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                threading.Thread(target=drip, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        t0 = time.monotonic()
        r = run_hostile(cli, f"http://127.0.0.1:{srv.getsockname()[1]}/fhir", up, "--read-timeout", "1")
        elapsed = time.monotonic() - t0
        stop.set()
    assert "took longer than 1 s to send one response (raise --read-timeout)" in one_error_line(r)
    assert elapsed < 5, elapsed


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--max-pages", "0"),
        ("--max-resources", "0"),
        ("--max-response-mb", "0"),
        ("--max-response-mb", "nan"),
        ("--max-response-mb", "inf"),
        ("--read-timeout", "0"),
        ("--read-timeout", "nan"),
        ("--connect-timeout", "-1"),
    ],
)
def test_bad_bound_flags_are_one_line_errors(cli, bundle_file, flag, value):
    r = cli("ehr", "--fhir", str(bundle_file), "--patient", PATIENT_A, "-m", "unused", flag, value, QUESTION)
    assert r.returncode == 2 and flag.split("-")[-1] in one_error_line(r)


@pytest.mark.parametrize("where", ["server", "local"])
@pytest.mark.parametrize("recipe", ["notebook", "tools"])
def test_group_and_foreign_server_subjects_are_not_the_patient(cli, tmp_path, where, recipe):
    """A Group named like the patient, the same id on another server, a Device: a careless server returns them
    for `patient=Patient/<id>`; none of their text may reach the model, stdout or stderr."""
    foreign = foreign_subject_resources(PATIENT_A)
    script = SCRIPT if recipe == "tools" else notebook_script()
    with FhirTestServer(two_patient_bundle(), extra=foreign) as fhir, ScriptedUpstream(script) as up:
        if where == "server":
            source = fhir.base_url
        else:
            bundle = two_patient_bundle()
            bundle["entry"] += [{"resource": r} for r in foreign]
            (tmp_path / "b.json").write_text(json.dumps(bundle))
            source = str(tmp_path / "b.json")
        r = cli(
            "ehr",
            "--fhir",
            source,
            "--patient",
            PATIENT_A,
            "--upstream",
            up.url,
            "-m",
            "scripted",
            "--json",
            "--recipe",
            recipe,
            QUESTION,
        )
        if where == "server":  # the double does hand them over for this patient: the client must drop them
            assert fhir.search("Condition", {"patient": [f"Patient/{PATIENT_A}"]})["total"] == 2 + 3
    assert r.returncode == 0, r.stderr
    seen_by_model = json.dumps(up.requests)
    assert "Essential hypertension" in seen_by_model
    for marker in (*FOREIGN_MARKERS, "foreign-1", "foreign-2", "foreign-3"):
        assert marker not in seen_by_model and marker not in r.stdout and marker not in r.stderr, marker
    no_b_data(r.stdout, r.stderr, seen_by_model)


def test_patient_references_are_matched_whole():
    base = "http://127.0.0.1:8080/fhir"
    assert patient_ref_id({"reference": "Patient/p1"}) == "p1"
    assert patient_ref_id({"reference": "Patient/p1/_history/3"}) == "p1"
    assert patient_ref_id({"reference": f"{base}/Patient/p1"}, base) == "p1"
    assert patient_ref_id({"reference": "urn:uuid:u1"}, None, {"urn:uuid:u1": "p1"}) == "p1"
    for ref in (
        "Group/p1",
        "http://other.example/fhir/Patient/p1",
        f"{base}/Group/p1",
        "Device/p1",
        "p1",
        "urn:uuid:p1",
        "Patient/p1/extra",
        "Patient/",
        "xPatient/p1",
        f"{base}x/Patient/p1",
    ):
        assert patient_ref_id({"reference": ref}, base) is None, ref
    both = {"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "patient": {"reference": "Group/p1"}}
    assert patient_of(both) is None  # subject and patient must agree


def test_the_origin_check():
    o = Origin.of("http://127.0.0.1:8080/fhir/")
    assert o.base_url == "http://127.0.0.1:8080/fhir"
    assert o.admits("http://127.0.0.1:8080/fhir/Condition?patient=Patient/x&_offset=2")
    assert o.admits("http://127.0.0.1:8080/fhir")
    for url in (
        "http://127.0.0.1:8081/fhir/Condition",
        "https://127.0.0.1:8080/fhir/Condition",
        "http://localhost:8080/fhir/Condition",
        "http://127.0.0.1:8080/fhir-evil/Condition",
        "http://127.0.0.1:8080/other/Condition",
        "http://127.0.0.1:8080/fhir/../admin",
        "http://127.0.0.1:8080/fhir/%2e%2e/admin",
        "http://127.0.0.1:8080@evil.example/fhir/x",
        "http://user@127.0.0.1:8080/fhir/x",
        "http://127.0.0.1:8081/steal?from=http://127.0.0.1:8080/fhir/x",
        "//127.0.0.1:8081/fhir/x",
        "/fhir/x",
    ):
        assert not o.admits(url), url
    assert Origin.of("https://fhir.example.org").admits("https://fhir.example.org:443/Patient/1")


# -- the notebook recipe -----------------------------------------------------------------------------------------------
REF = json.loads((Path(__file__).parent / "data" / "google_reference" / "ehr_navigator.json").read_text())


def prompt_of(body: dict) -> str:
    """The one user turn a single-turn request carries (no system message: the notebook sends none)."""
    assert [m["role"] for m in body["messages"]] == ["user"], body["messages"]
    content = body["messages"][0]["content"]
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")


def test_notebook_prompts_equal_the_notebooks_own(cli):
    """Same Bundle, same FHIR double, same model answers as when the notebook itself ran (scripts/
    ehr_notebook_reference.py): every prompt, budget and temperature must be the notebook's. Its first call (the
    model extracting the patient id from the question) is the one we leave out: --patient names the patient."""
    calls = REF["calls"]
    assert calls[0]["kind"] == "extract"
    calls = calls[1:]
    with FhirTestServer(two_patient_bundle()) as fhir, ScriptedUpstream([c["reply"] for c in calls]) as up:
        r = cli(
            "ehr",
            "--fhir",
            fhir.base_url,
            "--patient",
            REF["patient"],
            "--upstream",
            up.url,
            "-m",
            "scripted",
            "--json",
            REF["question"],
        )
        searches = [q.split("?")[0] for q in fhir.requests if "?" in q]
    assert r.returncode == 0, r.stderr
    assert len(up.requests) == len(calls)
    for sent, ref in zip(up.requests, calls):
        assert prompt_of(sent) == ref["prompt"], ref["kind"]
        assert sent.get("max_tokens", sent.get("max_completion_tokens")) == ref["max_tokens"], ref["kind"]
        assert sent["temperature"] == ref["temperature"], ref["kind"]
    assert searches == [q.split("?")[0] for q in REF["fhir_requests"]]  # the same searches, in the same order
    out = json.loads(r.stdout)
    assert out["answer"] == REF["final_answer"].strip()
    assert out["relevant_types"] == [t for t in REF["relevant_resource_types"] if t in REF["manifest"]]
    assert out["manifest"] == {t: out["manifest"][t] for t in REF["manifest"]}  # the same types present
    assert [(f["resource_type"], f["category_fallback"]) for f in out["fetches"]] == [
        ("Condition", False),
        ("MedicationRequest", False),
        ("Observation", True),
    ]
    assert out["citations"] == [
        "Condition/a-cond-2",
        "MedicationRequest/a-med-1",
        "Observation/a-obs-1",
        "Condition/a-cond-1",
        "MedicationRequest/a-med-2",
    ]


def test_notebook_end_to_end_on_a_bundle(cli, bundle_file):
    """The default recipe on a local Synthea-style Bundle, with a model that names the other patient and another
    resource type in its planned calls: both ignored, nothing of patient B anywhere."""
    with ScriptedUpstream(notebook_reply) as up:
        r = cli(
            "ehr",
            "--fhir",
            str(bundle_file),
            "--patient",
            PATIENT_A,
            "--upstream",
            up.url,
            "-m",
            "scripted",
            "--json",
            QUESTION,
        )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["recipe"].startswith("google-ehr-navigator@")
    assert out["manifest"] == {"Encounter": 2, "Condition": 2, "Observation": 2, "MedicationRequest": 2}
    assert out["relevant_types"] == ["Condition", "MedicationRequest", "Observation"]  # Immunization: not present
    fetches = {f["resource_type"]: f for f in out["fetches"]}
    assert fetches["Condition"]["items"] == 2 and fetches["Condition"]["codes"] == ["44054006", "38341003"]
    assert fetches["MedicationRequest"]["items"] == 3  # two requests + the Medication one of them points at
    assert fetches["Observation"]["category_fallback"] and fetches["Observation"]["items"] == 1
    assert out["answer"].startswith("Type 2 diabetes") and not out["answer"].endswith("```")
    assert out["unverified_citations"] == ["Condition/b-cond-1"]  # cited but never shown: flagged
    assert out["model_calls"] == 1 + 3 + 3 + 1
    facts_prompts = [p for p in out["prompts"] if "TOOL OUTPUT:" in p]
    assert "lisinopril 10 MG Oral Tablet" in facts_prompts[1]  # the included Medication reached the model
    seen_by_model = json.dumps(up.requests)
    no_b_data(r.stdout, r.stderr, seen_by_model)
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("ehr: recipe=notebook")]
    assert len(progress) == 1 + 1 + 3 + 3 + 1
    assert not any(v in r.stderr for v in ("a-cond", "44054006", NAME_A[0], PATIENT_A))


def test_base_models_run_the_notebook_and_are_refused_by_the_tool_loop(cli, tiny_model_dir, bundle_file):
    """The demo model is a base model (preset 'pretrained', no multi-turn chat): the tool loop refuses it before its
    first call, in one line naming what can run it; the notebook recipe (single-turn prompts) runs to the end."""
    base = ("--fhir", str(bundle_file), "--patient", PATIENT_A, "-m", str(tiny_model_dir), "--preset", "pretrained")
    tools = cli("ehr", *base, "--recipe", "tools", "-q", QUESTION)
    line = one_error_line(tools)
    assert "--recipe tools needs a chat (instruction-tuned, -it) model" in line and "--recipe notebook" in line
    nb = cli("ehr", *base, "--max-new-tokens", "4", "--json", QUESTION)
    assert nb.returncode == 0, nb.stderr
    out = json.loads(nb.stdout)
    assert out["model_calls"] >= 2 and out["answer"] is not None  # identify ... final, whatever the tiny model said


def test_notebook_survives_a_server_without_code_search(cli):
    """A server that answers `code=` and `category=` with a 400 (it lacks them): the category fallback is tried,
    then the model reads that the search failed (as in the notebook); other fetches and the answer go on."""
    with (
        FhirTestServer(two_patient_bundle(), unsupported=("code", "category")) as fhir,
        ScriptedUpstream(notebook_reply) as up,
    ):
        r = cli(
            "ehr",
            "--fhir",
            fhir.base_url,
            "--patient",
            PATIENT_A,
            "--upstream",
            up.url,
            "-m",
            "scripted",
            "--json",
            QUESTION,
        )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    fetches = {f["resource_type"]: f for f in out["fetches"]}
    assert fetches["Condition"]["category_fallback"] and fetches["Condition"]["items"] == 0
    assert fetches["MedicationRequest"]["items"] == 3  # no code filter asked: unaffected
    assert sum("answered this search with an error" in p for p in out["prompts"]) == 2  # Condition, Observation
    assert out["answer"]


def test_tool_loop_reads_a_refused_search_as_a_tool_error(cli):
    """A server without date search: the tool call that uses dates comes back to the model as an error it can
    read (never the server's text), and the loop goes on to its answer."""
    with FhirTestServer(two_patient_bundle(), unsupported=("date",)) as fhir, ScriptedUpstream(SCRIPT) as up:
        r = run_agent(cli, fhir.base_url, up)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["steps"][4]["refused"] and "answered this search with an error" in out["steps"][4]["result"]
    assert out["answer"] == ANSWER


def test_notebook_calls_run_on_a_local_model(tiny_model, bundle_file, monkeypatch):
    """Each kind of call the plan makes (greedy and sampled, with its own budget) goes through a real local backend;
    the budget is capped by --max-new-tokens."""
    from medgemma_toolkit.ehr.notebook import FACTS, FINAL, IDENTIFY, NotebookRun, NotebookTrace

    plan = NotebookRun(LocalSource.load(bundle_file), PATIENT_A, max_new_tokens=3).prepare()
    plan.mg = tiny_model
    trace = NotebookTrace(question=QUESTION, source="x")
    sent = []
    generate = tiny_model.backend.generate
    monkeypatch.setattr(tiny_model.backend, "generate", lambda reqs: sent.extend(reqs) or generate(reqs))
    for settings in (IDENTIFY, FACTS, FINAL):
        assert isinstance(plan.ask("Which conditions?", settings, trace), str)
    assert trace.model_calls == 3 and trace.prompts == ["Which conditions?"] * 3
    assert [(r.params.max_new_tokens, r.params.temperature) for r in sent] == [(3, 0.0), (3, 0.6), (3, 0.1)]
    assert all(m.role == "user" for r in sent for m in r.prompt.messages)  # no system turn, as in the notebook


@pytest.mark.parametrize("patient", ["../metadata", "a/b", "..", "x" * 65, "p 1", ""])
def test_patient_must_be_a_fhir_id(cli, bundle_file, patient):
    r = cli("ehr", "--fhir", str(bundle_file), "--patient", patient, "-m", "unused", QUESTION)
    assert "--patient must be a FHIR resource id" in one_error_line(r)
