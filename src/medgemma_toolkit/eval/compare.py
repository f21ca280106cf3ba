"""`medgemma eval compare A B`: two runs of one task side by side, with paired tests on the items both answered."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .metrics import METRICS, mcnemar_exact, paired_bootstrap
from .records import read_records


def load_run(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise BadInput(f"{path}: not an eval run directory (no summary.json)")
    records, _ = read_records(path / "records.jsonl")
    return json.loads(summary_path.read_text()), [r for r in records if r.get("error") is None]


# What must match for two runs' scores to be comparable: (where in summary.json, what to call it).
_SETTINGS = (
    (("task", "version"), "task version"),
    (("task", "protocol"), "protocol"),
    (("task", "prompt_sha256"), "prompt template"),
    (("generation", "mode"), "mode"),
    (("generation", "preset"), "preset"),
    (("generation", "max_new_tokens"), "max new tokens"),
    (("generation", "temperature"), "temperature"),
    (("generation", "think"), "thinking"),
    (("generation", "stop"), "stop strings"),
    (("dataset", "sha256"), "data file"),
    (("dataset", "split"), "split"),
    (("conditions",), "conditions"),
)


def setting_differences(sa: dict[str, Any], sb: dict[str, Any]) -> list[str]:
    """Human-readable differences in protocol and settings between two runs' summaries (empty when comparable)."""
    out = []
    for keys, label in _SETTINGS:
        va: Any = sa
        vb: Any = sb
        for k in keys:
            va = va.get(k) if isinstance(va, dict) else None
            vb = vb.get(k) if isinstance(vb, dict) else None
        if va != vb:
            out.append(f"{label} differs ({_show(va)} vs {_show(vb)})")
    return out


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


def run_names(a_dir: Path, b_dir: Path) -> tuple[str, str]:
    """Short names for tables and legends: the run folders' names, or their paths when those are the same."""
    a, b = Path(a_dir).name or str(a_dir), Path(b_dir).name or str(b_dir)
    return (a, b) if a != b else (str(a_dir), str(b_dir))


def compare_runs(a_dir: Path, b_dir: Path, n_boot: int = 1000) -> dict[str, Any]:
    (sa, ra), (sb, rb) = load_run(a_dir), load_run(b_dir)
    if sa["task"]["name"] != sb["task"]["name"]:
        raise BadInput(f"runs are of different tasks ({sa['task']['name']} vs {sb['task']['name']})")
    kb = {r["key"]: r for r in rb}
    keys = [r["key"] for r in ra if r["key"] in kb]
    if not keys:
        raise BadInput("the two runs have no item in common")
    a = [r for r in ra if r["key"] in kb]
    b = [kb[k] for k in keys]
    rows = []
    for name in sa["metrics"]:
        if name not in sb["metrics"] or sa["metrics"][name]["value"] is None or sb["metrics"][name]["value"] is None:
            continue
        ma, mb = sa["metrics"][name], sb["metrics"][name]
        test = paired_bootstrap(a, b, METRICS[name], n_boot=n_boot)
        rows.append(
            {
                "metric": name,
                "ci_method": [ma.get("ci_method"), mb.get("ci_method")],
                "v0": ma["value"],
                "lo0": ma["ci_low"],
                "hi0": ma["ci_high"],
                "v1": mb["value"],
                "lo1": mb["ci_low"],
                "hi1": mb["ci_high"],
                "paired_diff": test["diff"],
                "diff_ci": [test["ci_low"], test["ci_high"]],
                "paired_bootstrap_p": test["p_value"],
            }
        )
    out: dict[str, Any] = {
        "task": sa["task"]["name"],
        "versions": [sa["task"]["version"], sb["task"]["version"]],
        "runs": [str(a_dir), str(b_dir)],
        "names": list(run_names(a_dir, b_dir)),
        "models": [sa["model"]["name"], sb["model"]["name"]],
        "warnings": setting_differences(sa, sb),
        "common_items": len(keys),
        "items": [len(ra), len(rb)],
        "metrics": rows,
    }
    if all(r["correct"] is not None for r in a + b):
        out["mcnemar"] = mcnemar_exact([bool(r["correct"]) for r in a], [bool(r["correct"]) for r in b])
    return out


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_table(result: dict[str, Any]) -> str:
    a, b = result["runs"]
    na, nb = result.get("names") or run_names(Path(a), Path(b))
    w = max(26, len(na) + 12, len(nb) + 12)
    lines = [
        f"task {result['task']}: {na} = {a} ({result['models'][0]}), {nb} = {b} ({result['models'][1]}); "
        f"{result['common_items']} questions in common",
        f"{'metric':<16}{na + ' [95% CI]':<{w}}{nb + ' [95% CI]':<{w}}{'difference':<14}{'p (bootstrap)':<14}CI method",
    ]
    for r in result["metrics"]:
        methods = sorted({m for m in r.get("ci_method") or [] if m})
        lines.append(
            f"{r['metric']:<16}{_f(r['v0']) + ' [' + _f(r['lo0']) + ', ' + _f(r['hi0']) + ']':<{w}}"
            f"{_f(r['v1']) + ' [' + _f(r['lo1']) + ', ' + _f(r['hi1']) + ']':<{w}}"
            f"{_f(r['paired_diff']):<14}{_f(r['paired_bootstrap_p']):<14}{'/'.join(methods) or 'n/a'}"
        )
    lines.append(f"difference = {na} - {nb} on the questions in common (paired bootstrap)")
    if "mcnemar" in result:
        m = result["mcnemar"]
        lines.append(
            f"McNemar (exact): only {na} right {m['only_a']}, only {nb} right {m['only_b']}, p = {m['p_value']:.3f}"
        )
    warnings = result.get("warnings")
    if warnings is None and result["versions"][0] != result["versions"][1]:
        warnings = [f"task version differs ({result['versions'][0]} vs {result['versions'][1]})"]
    for warning in warnings or []:
        lines.append(f"warning: {warning}: the scores may not be comparable")
    return "\n".join(lines)


def write_comparison(result: dict[str, Any], out: Path) -> None:
    from .plots import compare_plot

    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    (out / "compare.md").write_text("```\n" + format_table(result) + "\n```\n\n![compare](compare.png)\n")
    png = compare_plot(tuple(result.get("names") or ("A", "B")), result["metrics"])  # type: ignore[arg-type]
    (out / "compare.png").write_bytes(base64.b64decode(png))
