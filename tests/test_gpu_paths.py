"""GPU-path logic checked on a CPU: placement decisions, logits_to_keep scoring, incremental detokenisation, and
out-of-memory handling through the real backend, eval runner and server (the error is raised inside the real
model's forward pass by a hook, as CUDA would raise it there)."""

from __future__ import annotations

import asyncio
import gc
import random
import weakref

import numpy as np
import pytest
from PIL import Image

from medgemma_toolkit.errors import BackendUnavailable, BadInput, DeviceOutOfMemory
from medgemma_toolkit.runtime.placement import (
    GIB,
    GPU,
    Placement,
    bf16_note,
    cuda_index,
    inference_placement,
    training_visible_devices,
)


def gpus(*free_gib: float) -> list[GPU]:
    return [GPU(i, int(f * GIB), int(80 * GIB)) for i, f in enumerate(free_gib)]


# -- placement ---------------------------------------------------------------------------------------------------
def test_explicit_gpu_is_honoured_quantised_or_not():
    for quant in ("none", "4bit", "8bit"):
        p = inference_placement("cuda:1", quant, gpus(70, 70, 70), 8 * GIB)
        assert p == Placement({"": 1}, None, "cuda:1")  # never "auto" over every GPU, never moved after load


def test_plain_cuda_uses_one_gpu_when_the_model_fits_and_shards_when_not():
    assert inference_placement("cuda", "none", gpus(70, 70), 8 * GIB).device_map == {"": 0}  # 4B bf16
    p = inference_placement("cuda", "none", gpus(40, 40), 54 * GIB)  # 27B bf16 on two 40 GB cards
    assert p.device_map == "auto" and p.move_to is None and "2 GPUs" in (p.note or "")
    assert inference_placement("cuda", "4bit", gpus(40, 40), 16 * GIB).device_map == {"": 0}  # 27B in 4-bit
    assert inference_placement("cuda", "none", gpus(20), 54 * GIB).device_map == {"": 0}  # one GPU: nothing to shard
    with pytest.raises(BackendUnavailable, match="--quantize 4bit"):
        inference_placement("cuda", "none", gpus(20, 20), 54 * GIB)


def test_host_devices_and_refusals():
    assert inference_placement("cpu", "none", [], None) == Placement(None, "cpu", "cpu")
    assert inference_placement("mps", "none", [], 8 * GIB).move_to == "mps"
    with pytest.raises(BackendUnavailable, match="CUDA"):
        inference_placement("cpu", "4bit", [], None)
    with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
        inference_placement("cuda", "none", [], None)
    with pytest.raises(BadInput, match="only 2 GPU"):
        inference_placement("cuda:2", "none", gpus(10, 10), None)
    with pytest.raises(BadInput):
        cuda_index("cuda:x")
    assert cuda_index("cuda") is None and cuda_index("cuda:3") == 3


def test_training_sees_exactly_one_gpu():
    assert training_visible_devices("cuda:1", None, 1) == ("1", "cuda:0")
    assert training_visible_devices("cuda", None, 1) == ("0", "cuda:0")  # not DataParallel over all of them
    assert training_visible_devices("cuda:1", "4,6", 1) == ("6", "cuda:0")  # indexes the user's own list
    assert training_visible_devices("cpu", "4,6", 1) == (None, "cpu")
    with pytest.raises(BadInput, match="only 2 GPU"):
        training_visible_devices("cuda:2", "4,6", 1)
    with pytest.raises(BadInput, match="torchrun"):
        training_visible_devices("cuda:0", None, 4)


def test_bf16_warning_only_where_emulated():
    assert bf16_note((8, 0), "A100") is None and bf16_note((9, 0), "H100") is None
    note = bf16_note((7, 5), "Tesla T4")
    assert note and "Tesla T4" in note and "7.5" in note and "float16" in note


def test_training_oom_message_names_the_knobs():
    from medgemma_toolkit.train.model import oom_message

    msg = oom_message("cuda:0", "lora", 4, 4, None)
    assert "--batch-size 2 --grad-accum 8" in msg and "effective batch of 16" in msg and "--method qlora" in msg
    assert "or --method qlora" not in oom_message("cuda:0", "qlora", 1, 16, 2048)
    assert "--max-length" in oom_message("cuda:0", "qlora", 1, 16, 2048)


# -- incremental detokenisation -----------------------------------------------------------------------------------
def test_incremental_detokenizer_matches_a_full_decode(tiny_model):
    from medgemma_toolkit.backends.decoding import IncrementalDetokenizer

    be = tiny_model.backend
    tok = be.tokenizer
    vocab = sorted(tok.get_vocab().values())
    byte_ids = sorted(be.byte_token_ids)
    words = tok("The heart is enlarged; pleural effusion — 5 mm, é ü 中文 😀.", add_special_tokens=False)["input_ids"]

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False)

    rng = random.Random(0)
    for trial in range(60):
        pool = [vocab, byte_ids, words][trial % 3]
        ids = [rng.choice(pool if rng.random() < 0.7 else vocab) for _ in range(rng.randint(1, 40))]
        det = IncrementalDetokenizer(decode, be.byte_token_ids)
        streamed = "".join(det.push(t) for t in ids)
        full = decode(ids)
        assert streamed == det.text and full.startswith(streamed)
        # Only a trailing byte run or incomplete character may be held back.
        held = ids[det.read :]
        assert not held or held[-1] in be.byte_token_ids or full.endswith("\ufffd") or full == streamed


# -- log-likelihood with logits_to_keep ------------------------------------------------------------------------------
def _full_logits_score(be, prompt, cont: str) -> float:
    """Independent computation: one pair, no padding, full logits at every position."""
    import torch

    text = be.render(prompt)
    images = prompt.all_images()
    enc = (
        be.processor(
            text=[text + cont], images=[images] if images else None, return_tensors="pt", add_special_tokens=False
        )
        if be.processor is not None
        else be.tokenizer([text + cont], return_tensors="pt", add_special_tokens=False)
    )
    k = len(be.tokenizer(text + cont, add_special_tokens=False)["input_ids"]) - len(
        be.tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    with torch.no_grad():
        logits = be.model(**enc).logits[0].float()
    ids = enc["input_ids"][0]
    n = ids.shape[0]
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[j - 1, ids[j]]) for j in range(n - k, n))


@pytest.mark.slow
def test_loglikelihood_with_logits_to_keep_equals_full_logits(tiny_model):
    be = tiny_model.backend
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    reqs = [
        tiny_model.request("Which chamber is enlarged?"),
        tiny_model.request("Describe.", [img]),
        tiny_model.request("A much longer question about the cardiac silhouette and the lungs?"),
    ]
    conts = ["B", " right ventricle", "Final Answer: pleural effusion on the left"]
    pairs = [(r.prompt, c) for r in reqs for c in conts]
    expected = [_full_logits_score(be, p, c) for p, c in pairs]
    kept: list[int] = []
    rows: list[int] = []

    def seen(_module, _args, kwargs):
        kept.append(kwargs.get("logits_to_keep", 0))
        rows.append(kwargs["input_ids"].shape[0])

    h = be.model.register_forward_pre_hook(seen, with_kwargs=True)
    try:
        for size in (1, 4, 9):
            rows.clear()
            got = be.loglikelihood(pairs, batch_size=size)
            assert got == pytest.approx(expected, abs=2e-4)
            assert max(rows) <= size and sum(rows) == len(pairs)  # pair-level batches of at most `size`
    finally:
        h.remove()
    assert all(0 < k < 40 for k in kept)  # never the full sequence's logits


# -- out of memory -------------------------------------------------------------------------------------------------
class OOMHook:
    """Makes the real model's forward pass raise CUDA's out-of-memory error for batches over `limit` rows, holding a
    large tensor in the failing frame, as a real failure holds activations. Records whether the tensors of earlier
    failures were already freed when the next forward pass starts."""

    def __init__(self, model, limit: int) -> None:
        self.limit = limit
        self.failed: list[weakref.ref] = []
        self.leaked_at_next_call: list[int] = []
        self.batch_rows: list[int] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, _module, _args, kwargs):
        import torch

        n = kwargs["input_ids"].shape[0]
        self.leaked_at_next_call.append(sum(r() is not None for r in self.failed))
        if n > self.limit:
            activations = torch.ones(4_000_000)  # what a failed forward pass would leave behind
            self.failed.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        self.batch_rows.append(n)

    def remove(self) -> None:
        self.handle.remove()


def test_backend_turns_oom_into_a_typed_error_and_frees_the_tensors(tiny_model):
    hook = OOMHook(tiny_model.backend.model, limit=1)
    try:
        with pytest.raises(DeviceOutOfMemory) as info:
            tiny_model.backend.generate([tiny_model.request(q, max_new_tokens=3) for q in ("Hi?", "Heart?")])
        assert info.value.__context__ is None and info.value.__cause__ is None  # no traceback keeping frames alive
        assert all(r() is None for r in hook.failed)
        with pytest.raises(DeviceOutOfMemory):
            tiny_model.backend.loglikelihood([(tiny_model.request("Q?").prompt, "A")] * 2, batch_size=2)
    finally:
        hook.remove()


def test_eval_batches_halve_after_oom_with_memory_freed_first(tiny_model):
    from medgemma_toolkit.eval.generation import run_batches

    questions = [f"Question {i}: is the heart enlarged?" for i in range(6)]
    expected = [
        c.text for c in tiny_model.backend.generate([tiny_model.request(q, max_new_tokens=4) for q in questions])
    ]
    hook = OOMHook(tiny_model.backend.model, limit=2)
    got: dict[str, str] = {}
    try:
        run_batches(
            tiny_model.backend,
            questions,
            lambda q: tiny_model.request(q, max_new_tokens=4),
            lambda outs: got.update({o.job: o.completion.text for o in outs}),
            batch_size=8,
            sort_key=len,
            progress=False,
        )
    finally:
        hook.remove()
    assert [got[q] for q in questions] == expected
    assert len(hook.failed) == 2 and max(hook.batch_rows) == 2  # 8 -> 4 -> 2
    assert hook.leaked_at_next_call[1:] == [0] * (len(hook.leaked_at_next_call) - 1)


def test_server_answers_oom_with_503_and_retries_smaller(tiny_model):
    import httpx

    from medgemma_toolkit.serve import ServeConfig, create_app
    from medgemma_toolkit.serve.launch import InProcessServer

    app = create_app(tiny_model, ServeConfig(request_timeout_s=60, max_batch_size=4))
    srv = InProcessServer(app).start()
    url = srv.url + "/v1/chat/completions"
    model = app.state.model_id

    def body(q: str, stream: bool = False) -> dict:
        return {"model": model, "max_tokens": 4, "stream": stream, "messages": [{"role": "user", "content": q}]}

    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            return list(await asyncio.gather(*(c.post(url, json=body(f"Question {i}?")) for i in range(n))))

    hook = OOMHook(tiny_model.backend.model, limit=1)
    try:
        rs = asyncio.run(burst(4))  # batched (up to 4), out of memory, retried in halves down to single rows
        assert [r.status_code for r in rs] == [200] * 4
        assert hook.failed and max(hook.batch_rows) == 1
        assert hook.leaked_at_next_call[-1] == 0
        hook.limit = 0  # now even one row does not fit
        r = httpx.post(url, json=body("Alone?"), timeout=60)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "out_of_memory" and r.json()["error"]["type"] == "server_error"
        with httpx.stream("POST", url, json=body("Streamed?", stream=True), timeout=60) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert '"out_of_memory"' in events[-2] and events[-1] == "data: [DONE]"
        hook.limit = 8
        ok = httpx.post(url, json=body("Fine again?"), timeout=60)
        assert ok.status_code == 200  # the worker survived and serves on
    finally:
        hook.remove()
        srv.stop()
    gc.collect()
    assert all(r() is None for r in hook.failed)


@pytest.mark.slow
def test_gpu_suite_smoke_run_passes_on_cpu(tmp_path):
    """benchmarks/gpu/suite.py --smoke: every row of the GPU suite, on a tiny model on the CPU."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "suite.py"
    p = subprocess.run(
        [sys.executable, str(script), "--smoke", "--work", str(tmp_path)], capture_output=True, text=True, timeout=900
    )
    table = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert len(table) == 9 and not any("FAIL" in line for line in table)
    assert "QLoRA" in p.stdout and "out-of-memory" in p.stdout


@pytest.mark.slow
def test_per_step_hook_and_end_of_generation_reading_agree(tiny_model, scripted_model_dir):
    """Eval-style batches (nothing streamed, no stop string) skip the per-step hook and read rows once at the end;
    the result must be what the per-step path gives, eos-stopped and length-stopped rows alike."""
    from medgemma_toolkit import MedGemma

    scripted = MedGemma.load(str(scripted_model_dir))
    for mg in (tiny_model, scripted):
        reqs = [mg.request(q, max_new_tokens=40) for q in ("Anything?", "Heart size?", "Is there an effusion?")]
        quiet = mg.backend.generate(reqs)
        streamed = mg.backend.generate(reqs, on_delta=lambda _i, _d: None)
        assert [(c.text, c.finish_reason, c.completion_tokens) for c in quiet] == [
            (c.text, c.finish_reason, c.completion_tokens) for c in streamed
        ]
    assert quiet[0].finish_reason == "stop" and quiet[0].text.endswith("Cardiomegaly.")  # eos inside the budget
    scripted.backend.close()


def test_qlora_scores_ask_for_the_4bit_base(tiny_model_dir):
    """QLoRA's before/after scores load the 4-bit base (the bf16 one is what QLoRA avoids): on a CPU that is refused
    by the quantisation check, which shows what was asked for."""
    from medgemma_toolkit.train.evaluate import load_backend

    with pytest.raises(BackendUnavailable, match="--quantize 4bit"):
        load_backend(tiny_model_dir, None, "cpu", method="qlora")
