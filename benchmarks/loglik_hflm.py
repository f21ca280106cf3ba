"""lm-evaluation-harness's HFLM (float32) on the demo model: the reference `eval --mode loglikelihood` is checked
against (tests/test_eval_loglik.py reads the JSON this writes).

For every item of the mmlu_med sample set, the exact text our runner scores (the rendered prompt) and each option
letter's continuation go to `HFLM.loglikelihood` on the demo's transformers checkpoint folder (the GGUF dequantised
to float32, `models.demo.demo_checkpoint_dir`), in float32 on the CPU. Contexts are stored beside the scores, so the
test can check that ours were the same strings.

    python benchmarks/loglik_hflm.py --out tests/data/hflm_mmlu_med_demo.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    import lm_eval
    import torch
    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.runner import EvalOptions, load_task_data, loglik_continuation, loglik_text
    from medgemma_toolkit.models.demo import demo_checkpoint_dir

    _, data_path, _, read = load_task_data(EvalOptions(task="mmlu_med"), quiet=True)
    # Our side only renders prompts here (no scoring): the text HFLM is given is the text `eval` scores.
    mg = MedGemma.load("demo", backend="transformers", dtype="float32")
    preset = mg.preset
    rows = []
    for it in read.items:
        req = mg.request(loglik_text(it.question, it.options, chat=preset.mode == "chat"), preset=preset)
        context = mg.backend.render(req.prompt)
        conts = {k: loglik_continuation(k, req.prompt.is_completion) for k in it.options}
        rows.append({"item_id": it.id, "gold": it.answer, "context": context, "continuations": conts})
    mg.backend.close()

    lm = HFLM(pretrained=str(demo_checkpoint_dir()), dtype="float32", device="cpu", batch_size=args.batch_size)
    requests = [
        Instance("loglikelihood", {}, (r["context"], c), idx=i)
        for r in rows
        for i, c in enumerate(r["continuations"].values())
    ]
    t0 = time.perf_counter()
    results = lm.loglikelihood(requests)
    seconds = time.perf_counter() - t0
    pos = 0
    for r in rows:
        n = len(r["continuations"])
        r["hflm"] = {k: float(ll) for k, (ll, _greedy) in zip(r["continuations"], results[pos : pos + n])}
        r["hflm_pick"] = max(r["hflm"], key=r["hflm"].__getitem__)
        pos += n
    out = {
        "what": "lm-eval HFLM float32 log-likelihoods of each option letter on the mmlu_med sample set, demo model",
        "command": "python benchmarks/loglik_hflm.py --out " + str(args.out),
        "versions": {
            "lm_eval": lm_eval.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "dataset": str(Path(str(data_path)).name),
        "seconds": round(seconds, 2),
        "items": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(rows)} items, {len(requests)} pairs in {seconds:.1f} s -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
