"""Does torch.compile (inductor) speed up `medgemma eval`'s transformers runner on a CPU? Measured, not shipped.

The runner as `medgemma eval` runs it (demo model, bf16, automatic batch, refilled batches) on the same MCQ items,
twice eager, then with the text model's `forward` compiled (`dynamic=True`: batches change shape as rows leave and
join), three times: the first compiled run includes the compilation. Inductor cannot lower the oneDNN-packed linear
layers (`runtime/packed_linear.py`), so they are unpacked first and `--freezing` lets inductor pack weights itself.
Prints each run's generate time and fraction of the bf16 ceiling (as benchmarks/eval_runner.py counts it) and how
many answers equal the eager ones.

    python benchmarks/eval_compile.py --items 128 --freezing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--items", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--freezing", action="store_true", help="inductor's freezing (constant weights, its own packing)")
    args = ap.parse_args()

    import eval_runner as er
    import torch
    import torch._inductor.config as inductor_config

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.generation import AUTO_BATCH
    from medgemma_toolkit.eval.runner import EvalOptions, run_eval
    from medgemma_toolkit.runtime.packed_linear import pack_linears

    mg = MedGemma.load(args.model, max_batch_size=AUTO_BATCH, workload="throughput")
    be = mg.backend
    work = Path(tempfile.mkdtemp(prefix="mg-compile-"))
    data = work / "items.jsonl"
    er.make_items(data, args.items)
    peak = er.matmul_peak_gflops(torch.bfloat16)

    def run(tag: str) -> dict[str, str]:
        t0 = time.perf_counter()
        opts = EvalOptions(
            task="medqa",
            data=str(data),
            out=work / tag,
            max_new_tokens=args.max_new_tokens,
            use_cache=False,
            progress=False,
        )
        summary = run_eval(mg, opts)
        recs = [json.loads(x) for x in (work / tag / "records.jsonl").read_text().splitlines()]
        gen = summary["timing"]["generate_seconds"]
        fraction = er.useful_flops(be.model, recs) / gen / 1e9 / peak
        print(f"{tag}: wall {time.perf_counter() - t0:.1f} s, generate {gen:.2f} s, {fraction:.1%} of peak", flush=True)
        return {r["item_id"]: r["raw"] for r in recs}

    eager = run("eager-1")
    run("eager-2")
    pack_linears(be.model, on=False)
    inductor_config.freezing = args.freezing
    be.model.forward = torch.compile(be.model.forward, dynamic=True)
    run("compiled-1 (compiles)")
    run("compiled-2")
    last = run("compiled-3")
    print(f"answers equal to eager: {sum(eager[k] == last[k] for k in eager)} / {len(eager)}")


if __name__ == "__main__":
    main()
