"""GPU correctness and speed suite: the paths users run on NVIDIA GPUs, end to end, on a MedGemma-4B-architecture
model with random weights (no download), printing one table. Designed to finish within 8 minutes on one H100/H200.

Rows: text and image ask (bf16); batched eval (the harness's runner, batch 32); serve with 8 concurrent clients
(the real app on loopback); loglikelihood at batch 32 (peak memory with `logits_to_keep`); a forced out-of-memory in
serve (GPU memory filled by a ballast tensor: 503 + Retry-After, tensors released, serving resumes); QLoRA for 10
steps with before/after scores on the 4-bit base, then merge and reload; batch-1 decode rate against the
memory-bandwidth bound. Each row runs on its own: one failure is reported in the table, the others still run;
the exit status is 1 if any row failed.

    python benchmarks/gpu/suite.py                 # on a CUDA machine
    python benchmarks/gpu/suite.py --smoke         # tiny model on the CPU: checks the script, measures nothing
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
sys.path.insert(0, str(HERE))

sys.path.insert(0, str(HERE.parent))

from eval_runner import make_items  # noqa: E402
from medgemma4b_check import build_checkpoint, copy_bandwidth_gbs, decode_bytes_per_token  # noqa: E402

Row = tuple[str, str, str, float]  # check, status, measure, seconds


class Suite:
    def __init__(self, smoke: bool, work: Path) -> None:
        import torch

        self.torch = torch
        self.smoke = smoke
        self.cuda = not smoke
        self.work = work
        self.rows: list[Row] = []
        self.mg = None
        self.path: Path | None = None

    # -- helpers -------------------------------------------------------------------------------------------------
    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def check(self, name: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        try:
            measure, status = fn(), "ok"
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            measure, status = f"{type(e).__name__}: {str(e).splitlines()[0][:70] if str(e) else ''}", "FAIL"
        self.rows.append((name, status, measure, time.perf_counter() - t0))
        print(f"  {status:4} {name}: {measure}", file=sys.stderr, flush=True)

    def image(self, seed: int):
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 255, (320, 400, 3), dtype=np.uint8))

    def release(self) -> None:
        from medgemma_toolkit.runtime.memory import release_memory

        release_memory()

    # -- rows ----------------------------------------------------------------------------------------------------
    def load(self) -> str:
        from medgemma_toolkit import MedGemma

        self.path = build_checkpoint(self.work / "medgemma-4b-random", "cpu" if self.smoke else "cuda", self.smoke)
        t0 = time.perf_counter()
        self.mg = MedGemma.load(
            str(self.path),
            device="cpu" if self.smoke else "cuda",
            dtype="float32" if self.smoke else "bfloat16",
            max_batch_size=32,
        )
        info = self.mg.backend.info.extra
        mem = f", {self.torch.cuda.memory_allocated() / 1e9:.1f} GB on GPU" if self.cuda else ""
        return f"loaded in {time.perf_counter() - t0:.1f} s on {info['device']} ({info['dtype']}){mem}"

    def ask(self) -> str:
        mg = self.mg
        text = mg.backend.generate([mg.request("Describe lobar pneumonia on a chest X-ray.", max_new_tokens=16)])[0]
        img = mg.backend.generate([mg.request("Describe this X-ray.", [self.image(0)], max_new_tokens=16)])[0]
        assert text.completion_tokens > 0 and img.completion_tokens > 0
        assert img.prompt_tokens > (mg.backend.info.tokens_per_image or 0)  # the image's tokens went in
        return f"text {text.completion_tokens} tok, image prompt {img.prompt_tokens} tok"

    def eval_batched(self) -> str:
        from medgemma_toolkit.eval.runner import EvalOptions, run_eval

        data = self.work / "medqa-64.jsonl"
        make_items(data, 8 if self.smoke else 64)
        t0 = time.perf_counter()
        s = run_eval(
            self.mg,
            EvalOptions(
                task="medqa",
                data=str(data),
                out=self.work / "eval",
                batch_size=8 if self.smoke else 32,
                max_new_tokens=16,
                use_cache=False,
                progress=False,
                n_boot=100,
            ),
        )
        n = s["timing"]["generated"]
        assert n > 0
        return f"{n} items at batch {s['timing']['batch_size']}, {n / (time.perf_counter() - t0):.1f} items/s"

    def _server(self, config):
        from medgemma_toolkit.serve import create_app
        from medgemma_toolkit.serve.launch import InProcessServer

        app = create_app(self.mg, config)
        srv = InProcessServer(app).start()
        return app, srv.url + "/v1/chat/completions", srv.stop

    def _burst(self, url: str, model: str, n: int, with_image: bool, max_tokens: int = 32):
        import base64
        import io

        import httpx

        def body(i: int) -> dict:
            content: list[dict] = [{"type": "text", "text": f"Question {i}: describe the findings."}]
            if with_image:
                buf = io.BytesIO()
                self.image(i).save(buf, format="PNG")
                uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
                content.insert(0, {"type": "image_url", "image_url": {"url": uri}})
            return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}

        async def go():
            async with httpx.AsyncClient(timeout=300) as c:
                return await asyncio.gather(*(c.post(url, json=body(i)) for i in range(n)))

        return list(asyncio.run(go()))

    def serve8(self) -> str:
        from medgemma_toolkit.serve import ServeConfig

        app, url, stop = self._server(ServeConfig(max_batch_size=8, request_timeout_s=300))
        try:
            self._burst(url, app.state.model_id, 1, False, 4)  # warm-up
            t0 = time.perf_counter()
            rs = self._burst(url, app.state.model_id, 8, True)
            secs = time.perf_counter() - t0
        finally:
            stop()
        codes = [r.status_code for r in rs]
        assert codes == [200] * 8, codes
        toks = sum(r.json()["usage"]["completion_tokens"] for r in rs)
        return f"8 clients with an image: all 200, {8 / secs:.2f} req/s, {toks / secs:.0f} tok/s"

    def loglik32(self) -> str:
        torch = self.torch
        be = self.mg.backend
        stem = "A 54-year-old presents with chest pain radiating to the left arm and diaphoresis. " * (
            2 if self.smoke else 25
        )
        reqs = [
            self.mg.request(f"{stem}\nQuestion {i}: which is most likely?\nA. MI\nB. GERD\nC. PE\nD. Panic\nAnswer:")
            for i in range(32)
        ]
        pairs = [(r.prompt, x) for r in reqs for x in "ABCD"]
        n_tok = len(be.tokenizer(be.render(reqs[0].prompt), add_special_tokens=False)["input_ids"])
        if self.cuda:
            self.release()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        scores = be.loglikelihood(pairs, batch_size=32)
        secs = time.perf_counter() - t0
        assert len(scores) == len(pairs) and all(s < 0 for s in scores)
        vocab = be.model.config.get_text_config().vocab_size
        full_gb = 32 * n_tok * vocab * 4 / 1e9  # what full fp32 logits for one batch would take
        peak = f", peak +{(torch.cuda.max_memory_allocated() - base) / 1e9:.2f} GB" if self.cuda else ""
        return (
            f"{len(pairs)} pairs of ~{n_tok} tok at batch 32 in {secs:.1f} s{peak} "
            f"(full logits alone: {full_gb:.1f} GB)"
        )

    def oom_serve(self) -> str:
        """Fill the GPU with a ballast tensor, send image requests: no 500s, every failure a 503 with Retry-After,
        memory back where it was, and serving resumes once the ballast is gone."""
        torch = self.torch
        from medgemma_toolkit.serve import ServeConfig

        hook = None
        if self.cuda:
            self.release()
            before = torch.cuda.memory_allocated()
            free = torch.cuda.mem_get_info()[0]
            ballast = torch.empty(max(0, free - 192 * 1024**2), dtype=torch.uint8, device="cuda")
        else:  # no real OOM on a CPU: the model's forward raises it, as CUDA would

            def raise_oom(_m, _a, _k):
                raise torch.OutOfMemoryError("CUDA out of memory (smoke)")

            hook = self.mg.backend.model.register_forward_pre_hook(raise_oom, with_kwargs=True)
            ballast = None
        app, url, stop = self._server(ServeConfig(max_batch_size=4, request_timeout_s=300))
        try:
            rs = self._burst(url, app.state.model_id, 4, True, 8)
            del ballast
            if hook is not None:
                hook.remove()
            self.release()
            leaked = (torch.cuda.memory_allocated() - before) / 1e6 if self.cuda else 0.0
            after = self._burst(url, app.state.model_id, 1, True, 4)[0]
        finally:
            stop()
        codes = [r.status_code for r in rs]
        assert all(c in (200, 503) for c in codes) and 503 in codes, codes
        assert all(
            int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "out_of_memory"
            for r in rs
            if r.status_code == 503
        )
        assert after.status_code == 200, after.status_code
        assert leaked < 64, f"{leaked:.0f} MB still allocated after the failed batch"
        return f"statuses {codes}, Retry-After set, {leaked:.0f} MB left allocated, next request 200"

    def qlora(self) -> str:
        from medgemma_toolkit import MedGemma
        from medgemma_toolkit.train.merge import merge_adapter
        from medgemma_toolkit.train.sft import FinetuneSettings, run_finetune

        data = self.work / "ft-data"
        rng = random.Random(0)
        for name, color in {"edema": (40, 40, 210), "normal": (210, 40, 40)}.items():
            for split, n in (("train", 8), ("val", 2)):
                (data / split / name).mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    from PIL import Image

                    im = Image.new("RGB", (64 + rng.randrange(32), 48 + rng.randrange(32)), color)
                    im.save(data / split / name / f"{i}.png")
        method = "lora" if self.smoke else "qlora"
        t0 = time.perf_counter()
        res = run_finetune(
            FinetuneSettings(
                model=str(self.path),
                data=str(data / "train"),
                val_data=str(data / "val"),
                out=str(self.work / "ft"),
                method=method,
                recipe="cpu-small" if self.smoke else "notebook",
                eval_task="val",
                overrides={"max_steps": 2 if self.smoke else 10, "batch_size": 4, "grad_accum": 1, "save_steps": 10},
                device="cpu" if self.smoke else "cuda",
                quiet=True,
            )
        )
        train_s = time.perf_counter() - t0
        assert res.steps == (2 if self.smoke else 10) and res.last_loss is not None
        assert res.report and "before" in res.report and "after" in res.report
        self.release()
        merged = merge_adapter(res.adapter_dir, self.work / "merged", base=str(self.path))
        mg2 = MedGemma.load(str(merged), device="cpu" if self.smoke else "cuda")
        c = mg2.backend.generate([mg2.request("What does this image show?", [self.image(3)], max_new_tokens=4)])[0]
        mg2.backend.close()
        del mg2
        self.release()
        assert c.completion_tokens > 0
        return (
            f"{method} {res.steps} steps (loss {res.first_loss:.2f} -> {res.last_loss:.2f}) + before/after "
            f"eval in {train_s:.0f} s; merged and reloaded"
        )

    def decode_rate(self) -> str:
        mg = self.mg

        def timed(n: int) -> tuple[float, int]:
            self.sync()
            t = time.perf_counter()
            c = mg.backend.generate(
                [mg.request("Describe the typical findings of lobar pneumonia.", max_new_tokens=n)]
            )[0]
            self.sync()
            return time.perf_counter() - t, c.completion_tokens

        n_long = 16 if self.smoke else 256
        timed(8)
        t1, _ = timed(1)
        tn, n = timed(n_long)
        rate = (n - 1) / max(1e-9, tn - t1)
        if self.smoke:
            return f"{rate:.1f} tok/s (CPU smoke: no bound)"
        bw = copy_bandwidth_gbs()
        bound = bw * 1e9 / decode_bytes_per_token(mg.backend.model)
        self.decode_fraction = rate / bound
        target = "meets" if rate >= 0.5 * bound else "BELOW"
        return (
            f"{rate:.1f} tok/s over {n} tokens vs bound {bound:.1f} tok/s ({rate / bound:.0%}, {target} the "
            f"50% target; copy bandwidth {bw:.0f} GB/s)"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script, measures nothing")
    ap.add_argument("--work", type=Path, default=None, help="where checkpoints and runs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    import torch
    import transformers

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU; run with --smoke on a CPU")
    work = args.work or Path(tempfile.mkdtemp(prefix="medgemma-gpu-suite-"))
    t_start = time.perf_counter()
    where = "CPU smoke run" if args.smoke else torch.cuda.get_device_name(0)
    print(f"device: {where}; torch {torch.__version__}; transformers {transformers.__version__}", flush=True)
    suite = Suite(args.smoke, work)
    suite.check("load 4B-architecture model (bf16)", suite.load)
    if suite.mg is not None:
        suite.check("ask: text and image", suite.ask)
        suite.check("eval: medqa runner, batch 32", suite.eval_batched)
        suite.check("serve: 8 concurrent clients", suite.serve8)
        suite.check("loglikelihood: batch 32", suite.loglik32)
        suite.check("serve: forced out-of-memory", suite.oom_serve)
        suite.check("decode: batch 1 vs bandwidth bound", suite.decode_rate)
        suite.mg.backend.close()
        suite.mg = None
        suite.release()
    suite.check("QLoRA 10 steps + before/after + merge + reload", suite.qlora)

    width = max(len(r[0]) for r in suite.rows)
    print()
    print(f"| {'check':{width}} | status | {'seconds':>7} | result")
    print(f"|{'-' * (width + 2)}|--------|---------|--------")
    for name, status, measure, secs in suite.rows:
        print(f"| {name:{width}} | {status:6} | {secs:7.1f} | {measure}")
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s ({'within' if total <= 480 else 'OVER'} the 8-minute budget)")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if any(r[1] != "ok" for r in suite.rows) else 0)


if __name__ == "__main__":
    main()
