"""How close a GGUF export's logits are to transformers bf16 on the random MedGemma-4B checkpoint (the logit tolerance).

Both engines read the same token ids (the checkpoint's tokenizer, a medical question), teacher-forced: at every
position the next-token logits are compared — top-1 agreement over the positions and the max / mean absolute logit
difference. transformers runs first and its logits are kept, then freed, so the two models are never in memory
together. Inputs from `benchmarks/cpu_4b.py`'s cache (the text GGUF is exported there on first use).

HEAVY (8.6 GB bf16 checkpoint, then the GGUF): `flock /work/heavy.lock python benchmarks/gguf_agreement.py --quant q8_0`
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT = (
    "Question: A 54-year-old man presents with crushing chest pain radiating to the left arm, diaphoresis and "
    "nausea. His ECG shows ST elevation in leads II, III and aVF. Which coronary artery is most likely occluded?"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="q8_0", help="text GGUF type: q8_0, q4_k_m")
    args = ap.parse_args()
    import numpy as np
    import torch
    from cpu_4b import cache_root, quant_gguf
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    cache = cache_root()
    gguf = quant_gguf(cache, args.quant)
    ckpt = cache / "medgemma-4b-random"
    ids = AutoTokenizer.from_pretrained(ckpt)(TEXT)["input_ids"]
    t = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.bfloat16)
    with torch.inference_mode():
        want = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    hf_s = time.perf_counter() - t
    del model
    gc.collect()
    from llama_cpp import Llama

    from medgemma_toolkit.backends.llamacpp_logging import route_llama_logs

    route_llama_logs()
    t = time.perf_counter()
    llm = Llama(str(gguf), n_ctx=512, n_batch=512, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)[:, : want.shape[1]]
    llama_s = time.perf_counter() - t
    diff = np.abs(got - want)
    out = {
        "gguf": gguf.name,
        "positions": len(ids),
        "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "logit_abs_mean": float(np.abs(want).mean()),
        "logit_abs_max": float(np.abs(want).max()),
        "transformers_s": round(hf_s, 1),
        "llamacpp_s": round(llama_s, 1),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
