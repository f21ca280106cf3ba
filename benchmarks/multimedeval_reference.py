"""MultiMedEval's own VQA scoring, run on the SLAKE / VQA-RAD gold answers we ship: the reference that
tests/test_eval_conventions.py checks our `multimedeval` metric convention against.

MultiMedEval 1.0 does not install beside our stack (it pulls a CUDA torch, torchvision and numpy 1.x), so this script
executes its functions straight from a checkout of its repository, without installing it: `clean_str` and the tables
it reads from `multimedeval/utils.py`, and `VQA.evaluate` from `multimedeval/task_families.py` (its BLEU-1 and
lemmatiser members are stubbed: neither feeds the numbers compared). Nothing of its code is copied into this
repository; only its outputs are committed, with the commit they came from.

    python benchmarks/multimedeval_reference.py --repo PATH/TO/MultiMedEval \\
        --out tests/data/multimedeval_vqa_reference.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Predictions paired with every gold: the forms models write (casing, hyphens, articles, number words, "not",
# sentences), so the closed-question rule and the tokenisation are exercised on each real gold.
PREDICTIONS = [
    "{gold}",
    "{gold_upper}.",
    "The answer is {gold}.",
    "yes",
    "no",
    "No, it is not.",
    "Yes, there is.",
    "not seen",
    "X-Ray",
    "x ray",
    "CT scan of the chest-abdomen",
    "2",
    "two lesions",
    "none",
    "0",
    "the left lung",
    "",
]
# Gold answers of the same shape as the releases' that our samples lack (hyphenated, multiword, numeric).
EXTRA_GOLDS = ["X-Ray", "MRI-DWI", "left lung, right lung", "T2-weighted", "3", "the liver"]


def _git_show(repo: Path, path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True, text=True
    ).stdout


def _top_level(source: str, names: set[str]) -> str:
    """The source of the named top-level assignments and functions of a module."""
    tree = ast.parse(source)
    keep = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in names for t in node.targets):
            keep.append(ast.get_source_segment(source, node))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            keep.append(ast.get_source_segment(source, node))
    return "\n\n".join(s for s in keep if s)


def load_multimedeval(repo: Path) -> dict[str, Any]:
    utils_src = _git_show(repo, "multimedeval/utils.py")
    ns: dict[str, Any] = {"re": re}
    exec(
        _top_level(
            utils_src,
            {"contractions", "manual_map", "articles", "period_strip", "comma_strip", "punct", "clean_str"},
        ),
        ns,
    )
    fam_src = _git_show(repo, "multimedeval/task_families.py")
    ns.update(
        Benchmark=object,
        abstractmethod=lambda f: f,
        BLEUScore=lambda **_: lambda *a: SimpleNamespace(item=lambda: 0.0),
        WordNetLemmatizer=lambda: None,
        EvaluationOutput=lambda **kw: kw,
    )
    exec(_top_level(fam_src, {"VQA"}), ns)
    return ns


def score(ns: dict[str, Any], pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per pair: MultiMedEval's cleaned strings, token sets, F1, recall, closed flag and closed verdict."""
    vqa_cls = ns["VQA"]
    task = vqa_cls.__new__(vqa_cls)
    task.bleu = ns["BLEUScore"](n_gram=1)
    golds = [g for g, _ in pairs]
    task.__class__ = type(
        "Scored",
        (vqa_cls,),
        {
            "__getitem__": lambda self, i: {"sample": {"answer": golds[i]}},
            "get_correct_answer": lambda self, sample: sample["answer"].lower().strip(),
        },
    )
    out = []
    for i, (gold, pred) in enumerate(pairs):
        res = task.evaluate([{"answer": SimpleNamespace(text=pred), "idx": i}])
        log = res["answer_log"][1]
        m = res["metrics"]
        closed = ns["clean_str"](gold.lower().strip()) in ["yes", "no"]
        out.append(
            {
                "gold": gold,
                "prediction": pred,
                "clean_gold": ns["clean_str"](gold.lower().strip()),
                "clean_prediction": ns["clean_str"](pred),
                "gold_tokens": sorted(log[5]),
                "prediction_tokens": sorted(log[6]),
                "f1": log[2],
                "recall": log[4],
                "closed": closed,
                "closed_correct": (m["closedQuestionsAccuracy"] == 1.0) if closed else None,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True, help="a git checkout of corentin-ryr/MultiMedEval")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    samples = Path(__file__).resolve().parents[1] / "src" / "medgemma_toolkit" / "eval" / "samples"
    slake = json.loads((samples / "slake" / "test.json").read_text())
    vqa_rad = json.loads((samples / "vqa_rad" / "vqa_rad.json").read_text())
    golds = sorted(
        {r["answer"] for r in slake if r.get("q_lang") == "en"} | {r["answer"] for r in vqa_rad} | set(EXTRA_GOLDS)
    )
    pairs = []
    for g in golds:
        for p in PREDICTIONS:
            pairs.append((g, p.format(gold=g, gold_upper=g.upper())))
    ns = load_multimedeval(args.repo)
    commit = subprocess.run(
        ["git", "-C", str(args.repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    out = {
        "what": "MultiMedEval's VQA scoring (clean_str, token sets, F1, closed-question rule) per gold/prediction pair",
        "source": {
            "repo": "corentin-ryr/MultiMedEval",
            "commit": commit,
            "files": ["multimedeval/utils.py", "multimedeval/task_families.py"],
        },
        "command": "python benchmarks/multimedeval_reference.py --repo PATH --out " + str(args.out),
        "golds_from": ["eval/samples/slake/test.json (q_lang en)", "eval/samples/vqa_rad/vqa_rad.json", "EXTRA_GOLDS"],
        "pairs": score(ns, pairs),
    }
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(pairs)} pairs -> {args.out}")


if __name__ == "__main__":
    main()
