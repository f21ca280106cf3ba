"""`medgemma ehr` against the hostile FHIR double, one real process per case: exit code, seconds, peak memory,
the error line, and what the "other port" received.

    PYTHONPATH=src python benchmarks/ehr_hostile_fhir.py

Cases: a normal run (the notebook recipe through a scripted model) as the baseline; an off-origin `next`; a
redirect to another port; a self-referencing `next`; a 60 MB page streamed without Content-Length (default
--max-response-mb 16); the same page announced by Content-Length; the same page gzip-compressed (~60 KB). The token is set in every case. Each child's peak
resident memory comes from wait4's rusage (Linux: KiB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from medgemma_toolkit.testing.fhir_server import FhirTestServer, RecordingServer
from medgemma_toolkit.testing.synthetic_fhir import PATIENT_A, two_patient_bundle
from medgemma_toolkit.testing.upstream import ScriptedUpstream

TOKEN = "bench-token"


def reply(body: dict[str, Any]) -> str:
    text = json.dumps(body["messages"][-1]["content"])
    if "PATIENT DATA MANIFEST:\\n" in text:
        return '["Condition"]'
    if "At this stage you can only call" in text:
        return '{"name": "get_patient_fhir_resource", "args": {"fhir_resource": "Condition"}}'
    if "TOOL OUTPUT" in text:
        return "Diabetes [Condition/a-cond-2]."
    return "Diabetes [Condition/a-cond-2]."


def run_case(name: str, hostile: str | None, up_url: str) -> dict[str, Any]:
    with (
        RecordingServer() as other,
        FhirTestServer(
            two_patient_bundle(),
            token=TOKEN,
            hostile=hostile,
            other_url=other.url,  # type: ignore[arg-type]
        ) as fhir,
    ):
        cmd = [sys.executable, "-m", "medgemma_toolkit", "ehr", "--fhir", fhir.base_url, "--patient", PATIENT_A,
               "--upstream", up_url, "-m", "scripted", "-q", "Does the patient have diabetes?"]  # fmt: skip
        env = {**os.environ, "MEDGEMMA_FHIR_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
        t0 = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.monotonic() - t0
            err.seek(0)
            stderr = err.read().decode(errors="replace").strip()
        return {
            "case": name,
            "exit": os.waitstatus_to_exitcode(status),
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "stderr": stderr.splitlines()[-1] if stderr else "",
            "other_port_requests": len(other.requests),
            "token_leaked": any(TOKEN in str(h) for _, h in other.requests),
            "server_bytes_pushed_mb": round(fhir.bytes_sent / 2**20, 1),
        }


def main() -> None:
    cases = [
        ("normal run (baseline)", None),
        ("off-origin next", "offorigin-next"),
        ("redirect to another port", "redirect"),
        ("self-referencing next", "self-next"),
        ("60 MB page, streamed", "big-page"),
        ("60 MB page, Content-Length", "declared-big"),
        ("60 MB page as a ~60 KB gzip bomb", "gzip-bomb"),
    ]
    with ScriptedUpstream(reply) as up:
        rows = [run_case(name, hostile, up.url) for name, hostile in cases]
    print("| case | exit | seconds | peak RSS MB | other port got | server pushed MB | stderr |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['exit']} | {r['seconds']} | {r['peak_rss_mb']} | {r['other_port_requests']} "
            f"| {r['server_bytes_pushed_mb']} | {r['stderr']} |"
        )


if __name__ == "__main__":
    main()
