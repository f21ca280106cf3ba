"""Structured outputs: answers constrained to a JSON schema validate, on random weights, through every local engine."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import exported

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.base import GenerationRequest
from medgemma_toolkit.backends.constrain import check_schema
from medgemma_toolkit.core.options import LoadOptions
from medgemma_toolkit.errors import BadInput

SCHEMA = json.loads((Path(__file__).parent / "data" / "structured" / "nested.json").read_text())


def _requests(model: MedGemma, n: int) -> list[GenerationRequest]:
    """Half greedy, half sampled (one seed, so they batch together), each with its own question."""
    return [
        model.request(
            f"Summarise lab report number {i} as JSON.",
            max_new_tokens=512,
            temperature=0.0 if i % 2 else 1.0,
            seed=None if i % 2 else 7,
            json_schema=SCHEMA,
        )
        for i in range(n)
    ]


def _check_all(texts: list[str]) -> None:
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_twenty_answers_validate_transformers(tiny_model_dir):
    model = MedGemma.load(str(tiny_model_dir), LoadOptions(max_batch_size=20))
    done = model.backend.generate(_requests(model, 20))
    assert all(c.finish_reason == "stop" for c in done), [c.finish_reason for c in done]
    _check_all([c.text for c in done])
    assert len({c.text for c in done}) > 1  # the constraint shapes the answer; it does not fix it


def test_free_rows_beside_constrained_rows_stay_free(tiny_model):
    free = tiny_model.request("Hello", max_new_tokens=8)
    bound = tiny_model.request("Hello", max_new_tokens=512, json_schema={"type": "object"})
    alone = tiny_model.backend.generate([free])[0].text
    both = tiny_model.backend.generate([free, bound])
    assert both[0].text == alone
    assert isinstance(json.loads(both[1].text), dict)


def test_unsupported_schema_feature_is_named():
    with pytest.raises(BadInput, match="if"):
        check_schema({"type": "object", "if": {"required": ["a"]}, "then": {}})


@pytest.mark.slow
def test_twenty_answers_validate_llamacpp(tmp_path_factory, tiny_model_dir):
    gguf = exported(tmp_path_factory, tiny_model_dir, "tiny") / "tiny-f32.gguf"
    model = MedGemma.load(str(gguf), threads=2, parallel=4)
    done = model.backend.generate(_requests(model, 20))
    assert all(c.finish_reason == "stop" for c in done), [c.finish_reason for c in done]
    _check_all([c.text for c in done])


def _two_page_pdf(path: Path) -> Path:
    """A real 2-page PDF written by Pillow's PDF writer: a red portrait page, then a blue landscape one."""
    from PIL import Image

    pages = [Image.new("RGB", (200, 300), (255, 0, 0)), Image.new("RGB", (300, 200), (0, 0, 255))]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def test_pdf_pages_in_order_with_page_numbers(tmp_path):
    from medgemma_toolkit.imaging import ImageOptions, load_parts
    from medgemma_toolkit.imaging.manifest import image_manifest

    pdf = _two_page_pdf(tmp_path / "report.pdf")
    parts = load_parts(pdf, ImageOptions(), 64)
    assert [p.image.size for p in parts] == [(64, 64), (64, 64)]
    assert parts[0].image.getpixel((32, 32))[0] > 200 and parts[1].image.getpixel((32, 32))[2] > 200
    manifest = image_manifest(parts)
    assert [e["page"] for e in manifest] == [1, 2]
    assert all(e["source"] == str(pdf) for e in manifest)


def test_pdf_budget_and_limits_refuse(tmp_path):
    from medgemma_toolkit.errors import ImageTooLarge
    from medgemma_toolkit.imaging import ImageOptions, load_parts
    from medgemma_toolkit.imaging.budget import DecodeBudget

    pdf = _two_page_pdf(tmp_path / "report.pdf")
    # Each page renders to 43 x 64 = 2,752 pixels (before padding): a 4,000-pixel budget holds one page, not two.
    with pytest.raises(ImageTooLarge, match="page 2"):
        load_parts(pdf, ImageOptions(budget=DecodeBudget(max_pixels=4000)), 64)
    with pytest.raises(ImageTooLarge, match="page 1"):
        load_parts(pdf, ImageOptions(max_pixels=1000), 64)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\nnot really")
    with pytest.raises(BadInput, match="cannot read the PDF"):
        load_parts(broken, ImageOptions(), 64)


def test_extract_cli_two_page_pdf(tiny_model_dir, tmp_path, cli):
    pdf = _two_page_pdf(tmp_path / "two_pages.pdf")
    schema = Path(__file__).parent / "data" / "structured" / "nested.json"
    r = cli("extract", "--model", str(tiny_model_dir), "--schema", str(schema), "--image", str(pdf), "--json")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.strip().splitlines()
    trace = json.loads(line)
    assert trace["error"] is None and trace["finish_reason"] == "stop"
    jsonschema.validate(trace["object"], SCHEMA)
    assert json.loads(trace["raw"]) == trace["object"]
    assert [p["page"] for p in trace["pages"]] == [1, 2]


def test_extract_cli_refuses_bad_input_before_loading(tmp_path, cli):
    pdf = _two_page_pdf(tmp_path / "doc.pdf")
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "if": {"required": ["a"]}}')
    r = cli("extract", "--model", "/nonexistent-model", "--schema", str(bad), "-i", str(pdf))
    assert r.returncode != 0 and "if" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("extract", "--model", "/nonexistent-model", "--schema", str(bad), "-i", str(tmp_path / "missing.pdf"))
    assert r.returncode != 0 and "file not found" in r.stderr


def test_logprobs_match_a_direct_forward_pass(tiny_model):
    import torch

    backend = tiny_model.backend
    req = tiny_model.request("What is sepsis?", max_new_tokens=8)
    req.logprobs = 3
    c = backend.generate([req])[0]
    assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens > 0
    # Greedy decoding by hand, one full forward pass per token: each step's fp32 log-softmax of the argmax token.
    ids = backend._encode([req.prompt])["input_ids"]
    for k, entry in enumerate(c.logprobs):
        with torch.inference_mode():
            logits = backend.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float()
        lp = torch.log_softmax(logits, dim=-1)
        token = int(lp.argmax())
        assert abs(entry["logprob"] - float(lp[token])) < 1e-3, (k, entry["logprob"], float(lp[token]))
        assert len(entry["top_logprobs"]) == 3
        assert abs(entry["top_logprobs"][0]["logprob"] - float(lp[token])) < 1e-3
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)


def test_ask_json_schema(tiny_model_dir, tmp_path, cli):
    schema = Path(__file__).parent / "data" / "structured" / "nested.json"
    r = cli("ask", "--model", str(tiny_model_dir), "--schema", str(schema), "--max-new-tokens", "512", "Report?")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), SCHEMA)
    r = cli("ask", "--model", str(tiny_model_dir), "--schema", str(tmp_path / "none.json"), "Report?")
    assert r.returncode != 0 and "--schema" in r.stderr
