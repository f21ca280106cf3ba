"""PDF text layers (`--pdf-text`, automatic for text-only models) and the sample lab report shipped for `extract`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest

from medgemma_toolkit.errors import ImageTooLarge
from medgemma_toolkit.extract.samples import sample_paths
from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.imaging.budget import DecodeBudget
from medgemma_toolkit.imaging.pdf import pdf_pages, pdf_text

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_sample_lab_report", ROOT / "scripts" / "make_sample_lab_report.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _text_pdf(path: Path) -> Path:
    """Two text pages written by fpdf2 (a real text layer), then a page that is only an image (a scan)."""
    from fpdf import FPDF
    from PIL import Image

    pdf = FPDF()
    for words in ("Sodium 139 mmol/L", "Potassium 5.6 mmol/L"):
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.cell(0, 10, words)
    pdf.add_page()
    pdf.image(Image.new("RGB", (40, 40), (90, 90, 90)), x=20, y=20, w=40)
    pdf.output(str(path))
    return path


def test_text_layer_pages_in_order_with_markers(tmp_path):
    pdf = _text_pdf(tmp_path / "report.pdf")
    parts = load_parts(pdf, ImageOptions(pdf_text=True), 64)
    assert [p.text.splitlines()[0] for p in parts] == ["[page 1 of 3]", "[page 2 of 3]", "[page 3 of 3]"]
    assert "Sodium 139 mmol/L" in parts[0].text and "Potassium 5.6 mmol/L" in parts[1].text
    assert parts[2].text.endswith("(no text layer)")
    assert len(load_parts(pdf, ImageOptions(), 64)) == 3  # the same file as page images by default


def test_text_layer_is_capped_not_cut(tmp_path):
    pdf = _text_pdf(tmp_path / "report.pdf").read_bytes()
    with pytest.raises(ImageTooLarge, match="over 20 characters by page 2"):
        pdf_text(pdf, "r.pdf", ImageOptions(max_text_chars=20))
    budget = DecodeBudget(max_pixels=10**9, max_text_chars=20)
    with pytest.raises(ImageTooLarge, match="a.pdf page 2: this request's documents add up to over 20 characters"):
        pdf_text(pdf, "a.pdf", ImageOptions(budget=budget))  # 17 + 20 characters: page 2 overdraws the request
    assert budget.used_text_chars == 17


def test_shipped_sample_report_has_the_invented_values():
    schema_path, report = sample_paths()
    data = report.read_bytes()
    assert len(pdf_pages(data, "sample", ImageOptions(), 64)) == 2
    text = "\n".join(p.text for p in pdf_text(data, "sample", ImageOptions()))
    gen = _generator()
    for row in gen.VALUES:
        assert " ".join(row) in text  # each table row, in the order it was written
    assert gen.REPORT_DATE in text and "SYNTHETIC SAMPLE" in text
    schema = json.loads(schema_path.read_text())
    truth = {
        "collected": gen.REPORT_DATE,
        "tests": [{"name": n, "value": v, "unit": u, "reference_range": r, "flag": f} for n, v, u, r, f in gen.VALUES],
        "abnormal_count": sum(f != "normal" for *_, f in gen.VALUES),
    }
    jsonschema.validate(truth, schema)  # the schema can hold the report's true answer


def test_generator_writes_the_shipped_bytes(tmp_path):
    """fpdf2 is pinned in the test extra and the creation date fixed: the generator reproduces the file exactly."""
    out = _generator().build(tmp_path / "lab_report.pdf")
    assert out.read_bytes() == sample_paths()[1].read_bytes()


@pytest.mark.slow  # a random model fills the sample schema's strings: ~800 tokens
def test_extract_sample_with_pdf_text(tiny_model_dir, cli):
    r = cli("extract", "-m", str(tiny_model_dir), "--sample", "--pdf-text", "--json", "--max-new-tokens", "1500")
    assert r.returncode == 0, r.stderr
    trace = json.loads(r.stdout)
    jsonschema.validate(trace["object"], json.loads(sample_paths()[0].read_text()))
    r = cli("extract", "-m", "/nonexistent-model", "--sample", "-i", "x.pdf")
    assert r.returncode != 0 and "--sample brings its own" in r.stderr


def test_text_only_model_reads_the_text_layer(tiny_text_model_dir, tmp_path):
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.core.messages import ImagePart, TextPart

    mg = MedGemma.load(str(tiny_text_model_dir))
    pdf = _text_pdf(tmp_path / "report.pdf")
    req = mg.request("Which potassium value?", [str(pdf)], max_new_tokens=4)
    parts = [p for m in req.prompt.messages for p in m.parts]
    assert not any(isinstance(p, ImagePart) for p in parts)
    assert any(isinstance(p, TextPart) and "[page 2 of 3]" in p.text and "Potassium" in p.text for p in parts)


def test_eval_row_image_may_be_a_pdf(tiny_model_dir, tmp_path, cli, monkeypatch):
    """An eval row's image column naming a PDF: its pages are the row's images, page numbers in the manifest."""
    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))
    _text_pdf(tmp_path / "report.pdf")
    row = {"id": "r1", "question": "Is potassium high?", "options": {"A": "yes", "B": "no"}, "answer": "A"}
    (tmp_path / "rows.jsonl").write_text(json.dumps({**row, "image": "report.pdf"}) + "\n")
    out = tmp_path / "run"
    args = ["eval", "-m", str(tiny_model_dir), "--task", "image_mcq", "--data", str(tmp_path / "rows.jsonl")]
    r = cli(*args, "--max-new-tokens", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [e["page"] for e in rec["images"]] == [1, 2, 3]
    assert all(e["source"].endswith("report.pdf") for e in rec["images"])
