"""`medgemma localize`: Google's localisation protocol, the box parser, the mapping back to the original image's
pixels (checked against values computed here another way), the command through an OpenAI-compatible upstream
that answers a chosen text, on the tiny checkpoint, in batch, and through `POST /v1/medgemma/localize`.

Reference: tests/data/google_reference/cxr_localize.json (Google's notebook prompt, its rendering, and its padding
function's output on synthetic images; the source repository, file and commit are named inside).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from medgemma_toolkit import MedGemma
from medgemma_toolkit.imaging.square import pad_to_square, square_offsets
from medgemma_toolkit.localize import parse_boxes, to_pixels
from medgemma_toolkit.localize.overlay import COLOURS, draw_boxes
from medgemma_toolkit.prompts.presets import get_preset
from medgemma_toolkit.testing.upstream import ScriptedUpstream

REF = json.loads((Path(__file__).parent / "data" / "google_reference" / "cxr_localize.json").read_text())
DONE_WHEN = 'Final Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "right lung"}]```'


def png(path: Path, w: int, h: int, colour=(90, 90, 90)) -> Path:
    Image.new("RGB", (w, h), colour).save(path)
    return path


def data_uri(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 120, 120)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# -- the protocol ---------------------------------------------------------------------------------------------
def test_preset_text_is_the_notebooks_prompt():
    pre = get_preset("cxr-localize")
    assert pre.user_text(REF["object"]) == REF["prompt"]
    assert pre.max_new_tokens(True, False) == REF["max_new_tokens"] == 1000
    pr = pre.build(REF["object"], [])
    assert [m.role for m in pr.messages] == ["user"]  # no system prompt, as in the notebook


def test_show_prompt_renders_as_the_notebook(tiny_model_dir, tmp_path):
    img = png(tmp_path / "cxr.png", 30, 20)
    res = run_cli(
        "ask", "-m", str(tiny_model_dir), "-i", str(img), "--preset", "cxr-localize", "--show-prompt", REF["object"]
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout[:-1] == REF["rendered"]  # image first, then the instruction block around the object


@pytest.mark.parametrize("case", REF["padding"]["cases"], ids=lambda c: f"{c['width']}x{c['height']}")
def test_padding_is_the_notebooks(case):
    """Our square padding puts the odd pixel where the notebook's does, pixel for pixel."""
    w, h = case["width"], case["height"]
    a = np.random.default_rng(case["seed"]).integers(0, 256, (h, w, 3), dtype=np.uint8)
    padded = np.asarray(pad_to_square(Image.fromarray(a)))
    assert hashlib.sha256(np.ascontiguousarray(padded).tobytes()).hexdigest() == case["padded_sha256"]
    assert square_offsets(w, h) == (case["side"], case["left"], case["top"])


# -- the mapping ----------------------------------------------------------------------------------------------
def found_offsets(w: int, h: int) -> tuple[int, int, int]:
    """(side, left, top) read off the pixels the model is given: a white image padded, then located."""
    sq = np.asarray(pad_to_square(Image.new("RGB", (w, h), (255, 255, 255))))[:, :, 0]
    rows, cols = np.nonzero(sq)
    assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
    return sq.shape[0], int(cols.min()), int(rows.min())


def expected_xyxy(box, w: int, h: int) -> list[float]:
    side, left, top = found_offsets(w, h)
    y0, x0, y1, x1 = (Fraction(v) for v in box)
    f = Fraction(side, 1000)

    def clip(v: Fraction, lo: int, hi: int) -> float:
        return float(min(max(v, Fraction(lo)), Fraction(hi)))

    return [clip(x0 * f - left, 0, w), clip(y0 * f - top, 0, h), clip(x1 * f - left, 0, w), clip(y1 * f - top, 0, h)]


SIZES = [(400, 200), (401, 200), (200, 401), (37, 64), (64, 37), (999, 1), (512, 512)]
BOXES = [(250, 100, 750, 600), (0, 0, 1000, 1000), (333, 17, 667, 983), (12.5, 40.25, 880, 501.5), (-20, 5, 40, 1200)]


@pytest.mark.parametrize("w,h", SIZES)
def test_mapping_matches_an_independent_computation(w, h):
    for box in BOXES:
        got = to_pixels(box, w, h)
        want = expected_xyxy(box, w, h)
        assert got == pytest.approx(want, abs=0.05 + 1e-9), (box, w, h)  # rounded to 0.1 px


def test_mapping_by_hand():
    """Worked by hand. 400x200: side 400, 100 px above and below. 401x200: side 401, 100 above, 101 below.
    200x401 (tall): 100 px left, 101 right."""
    assert to_pixels((250, 100, 750, 600), 400, 200) == (40.0, 0.0, 240.0, 200.0)
    assert to_pixels((250, 100, 750, 600), 401, 200) == pytest.approx((40.1, 0.25, 240.6, 200.0), abs=0.051)
    assert to_pixels((100, 250, 600, 750), 200, 401) == pytest.approx((0.25, 40.1, 200.0, 240.6), abs=0.051)
    # The square's centre is half a pixel right of the tall image's centre: the odd padding pixel is on the right.
    assert to_pixels((500, 500, 500, 500), 200, 401) == pytest.approx((100.5, 200.5, 100.5, 200.5), abs=0.051)


# -- the parser -----------------------------------------------------------------------------------------------
BOX = (250, 100, 750, 600)
PARSE_CASES = {
    "notebook": (DONE_WHEN, [("right lung", BOX)], 0),
    "no fences": ('Final Answer: [{"box_2d": [250, 100, 750, 600], "label": "right lung"}]', [("right lung", BOX)], 0),
    "trailing text": (
        'Final Answer: ```json\n[{"box_2d": [250, 100, 750, 600], "label": "right lung"}]\n```\n'
        "The right lung is well aerated.",
        [("right lung", BOX)],
        0,
    ),
    "no closing fence": (
        'Final Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "right lung"}]',
        [("right lung", BOX)],
        0,
    ),
    "thought block": (
        '<unused94>thought\nThe example ```json[{"box_2d": [1, 2, 3, 4], "label": "car"}]``` is not '
        "it.<unused95>" + DONE_WHEN,
        [("right lung", BOX)],
        0,
    ),
    "swapped corners": (
        'Final Answer: ```json[{"box_2d": [750, 600, 250, 100], "label": "right lung"}]```',
        [("right lung", BOX)],
        0,
    ),
    "reasoning then final": (
        'The lung spans [100, 100, 900, 500] roughly.\nFinal Answer: ```json[{"box_2d": '
        '[250, 100, 750, 600], "label": "right lung"}]```',
        [("right lung", BOX)],
        0,
    ),
    "python quotes": (
        "The patient's right side. Final Answer: ```json[{'box_2d': [250, 100, 750, 600], 'label': 'right lung',}]```",
        [("right lung", BOX)],
        0,
    ),
    "python quotes, prose": (
        "It's the patient's right: [{'box_2d': [250, 100, 750, 600], 'label': 'right lung'}]",
        [("right lung", BOX)],
        0,
    ),
    "several": (
        'Final Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "right lung"}, '
        '{"box_2d": [100, 550, 200, 900], "label": "left clavicle"}]```',
        [("right lung", BOX), ("left clavicle", (100, 550, 200, 900))],
        0,
    ),
    "unlabelled": ('Final Answer: [{"box_2d": [250, 100, 750, 600]}]', [("OBJ", BOX)], 0),
    "bare list": ("Final Answer: [250, 100, 750, 600]", [("OBJ", BOX)], 0),
    "one bad item": (
        'Final Answer: [{"box_2d": [1, 2, 3], "label": "x"}, {"box_2d": [250, 100, 750, 600], "label": "right lung"}]',
        [("right lung", BOX)],
        1,
    ),
    "cut off": (
        'Final Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "right lung"}, {"box_2d": [1',
        [("right lung", BOX)],
        1,
    ),
    "no json": ("Final Answer: the right lung is in the left half of the image.", [], 1),
    "unreadable": ("Final Answer: ```json[{box_2d: [250, 100, 750, 600], label: right lung}]```", [], 1),
    "thought only": ("<unused94>thought\nLooking at the lung fields", [], 1),
    "empty": ("", [], 0),
    "string numbers, NaN": (
        '[{"box_2d": ["250", "100", "750", "600"], "label": "a"}, {"box_2d": [NaN, 1, 2, 3], "label": "b"}]',
        [("a", BOX)],
        1,
    ),
}


@pytest.mark.parametrize("name", list(PARSE_CASES))
def test_parser_on_crafted_outputs(name):
    text, boxes, n_unparsed = PARSE_CASES[name]
    got = parse_boxes(text, default_label="OBJ")
    assert [(b.label, tuple(b.box_2d)) for b in got.boxes] == boxes
    assert len(got.unparsed) == n_unparsed, got.unparsed
    assert all(len(u) <= 200 for u in got.unparsed)


def test_parser_never_raises_on_junk():
    rng = np.random.default_rng(0)
    alphabet = list("[]{}\",:0123456789 .-abc`'\nFinalAnswer") + ["<unused94>", "<unused95>", "```json"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 80))))
        parse_boxes(text)
    parse_boxes("[" * 5000)  # deep nesting: no RecursionError escapes
    parse_boxes("[" * 3000 + "]" * 3000)


def test_unparsed_is_bounded():
    got = parse_boxes("Final Answer: " + "[x] " * 50 + '[{"box_2d": [250, 100, 750, 600], "label": "a"}]')
    assert [b.label for b in got.boxes] == ["a"]
    assert len(got.unparsed) == 20 and got.unparsed[:19] == ["[x]"] * 19
    assert got.unparsed[-1] == "(and 31 more unreadable fragments)"


# -- the overlay ----------------------------------------------------------------------------------------------
def test_overlay_draws_on_the_original_frame():
    img = Image.new("RGB", (400, 200), (10, 10, 10))
    out = draw_boxes(img, [("right lung", (40.0, 0.0, 240.0, 200.0))])
    assert out.size == (400, 200) and img.getpixel((40, 100)) == (10, 10, 10)  # the input is left as it was
    assert out.getpixel((40, 100)) == COLOURS[0] and out.getpixel((240, 100)) == COLOURS[0]
    assert out.getpixel((300, 100)) == (10, 10, 10) and out.getpixel((140, 150)) == (10, 10, 10)


# -- the command ----------------------------------------------------------------------------------------------
def test_done_when_upstream_wide_png(tmp_path):
    """The issue's criterion, verbatim: a 400x200 PNG, an upstream answering the notebook's format."""
    wide = png(tmp_path / "wide.png", 400, 200)
    overlay = tmp_path / "o.png"
    with ScriptedUpstream(DONE_WHEN) as up:
        res = run_cli(
            "localize", "--upstream", up.url, "--image", str(wide), "right lung", "--json", "-o", str(overlay)
        )
        sent = up.requests
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    (box,) = out["boxes"]
    assert box["label"] == "right lung" and box["box_2d"] == [250, 100, 750, 600]
    assert box["xyxy"] == pytest.approx([40, 0, 240, 200], abs=1.0)
    assert out["answer"] == DONE_WHEN and out["unparsed"] == []
    with Image.open(overlay) as o:
        assert o.size == (400, 200)
    # What went upstream: the notebook's prompt after one image, padded to a square at 896 px, greedy, 1000 tokens.
    (body,) = sent
    (msg,) = body["messages"]
    assert [c["type"] for c in msg["content"]] == ["image_url", "text"]
    assert msg["content"][1]["text"] == get_preset("cxr-localize").user_text("right lung")
    assert body["temperature"] == 0 and body["max_tokens"] == 1000
    raw = base64.b64decode(msg["content"][0]["image_url"]["url"].split(",", 1)[1])
    with Image.open(io.BytesIO(raw)) as seen:
        a = np.asarray(seen.convert("RGB"))
    assert a.shape == (896, 896, 3)
    assert a[:200].max() == 0 and a[-200:].max() == 0 and a[300:600].min() > 0  # 224 px of black above and below


def test_tall_odd_image_and_several_objects_in_process(tmp_path, cli):
    tall = png(tmp_path / "tall.png", 201, 400)
    answer = 'Final Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "x"}]```'
    with ScriptedUpstream(answer) as up:
        res = cli("localize", "--upstream", up.url, "-i", str(tall), "right lung", "left clavicle", "--json")
        prompts = sorted(r["messages"][0]["content"][1]["text"] for r in up.requests)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [b["object"] for b in out["boxes"]] == ["right lung", "left clavicle"]
    for b in out["boxes"]:
        assert b["xyxy"] == pytest.approx(expected_xyxy((250, 100, 750, 600), 201, 400), abs=0.051)
    assert [a["object"] for a in out["answers"]] == ["right lung", "left clavicle"]
    assert (
        len(prompts) == 2 and "Where is the left clavicle?" in prompts[0] and "Where is the right lung?" in prompts[1]
    )


def test_plain_output_and_unparsed_answer(tmp_path, cli):
    img = png(tmp_path / "a.png", 64, 48)
    with ScriptedUpstream("Final Answer: I cannot see a lung here.") as up:
        res = cli("localize", "--upstream", up.url, "-i", str(img), "right lung", "-o", str(tmp_path / "o.png"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert "unparsed: I cannot see a lung here." in res.stderr and "no boxes found" in res.stderr
    with Image.open(tmp_path / "o.png") as o:
        assert o.size == (64, 48)  # written even without boxes: the image as given


@pytest.mark.parametrize(
    "args,message",
    [
        (["right lung"], "give --image IMAGE"),
        (["-i", "IMG"], "name at least one object"),
        (["-i", "IMG", "  "], "must not be empty"),
        (["-i", "DIR", "lung"], "is a directory"),
        (["-i", "MISSING", "lung"], "file not found"),
    ],
)
def test_bad_input_is_one_line(tmp_path, cli, args, message):
    img = png(tmp_path / "a.png", 8, 8)
    subst = {"IMG": str(img), "DIR": str(tmp_path), "MISSING": str(tmp_path / "nope.png")}
    res = cli("localize", "--upstream", "http://127.0.0.1:9", *[subst.get(a, a) for a in args])
    assert res.returncode == 2 and message in res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")


def test_batch_over_a_csv(tmp_path, cli):
    png(tmp_path / "wide.png", 400, 200)
    png(tmp_path / "tall.png", 200, 401)
    (tmp_path / "rows.csv").write_text(
        "image,objects\nwide.png,right lung\ntall.png,heart; left clavicle\nmissing.png,\n,heart\n"
    )
    with ScriptedUpstream(DONE_WHEN) as up:
        res = cli(
            "localize", "--upstream", up.url, "--batch", str(tmp_path / "rows.csv"), "aorta", "-o", str(tmp_path / "ov")
        )
        n_requests = len(up.requests)
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["row"] for r in recs] == ["rows.csv:2", "rows.csv:3", "rows.csv:4", "rows.csv:5"]
    assert n_requests == 3  # 1 + 2 objects; the failing rows ask nothing
    assert recs[0]["boxes"][0]["xyxy"] == pytest.approx([40, 0, 240, 200], abs=1.0)
    assert [b["object"] for b in recs[1]["boxes"]] == ["heart", "left clavicle"]
    assert recs[1]["boxes"][0]["xyxy"] == pytest.approx(expected_xyxy(BOX, 200, 401), abs=0.051)
    assert "file not found" in recs[2]["error"] and "no 'image'" in recs[3]["error"]
    assert "2 of 4 rows failed" in res.stderr
    for r in recs[:2]:
        with Image.open(r["overlay"]) as o:
            assert o.size == Image.open(tmp_path / Path(r["image"]).name).size


@pytest.mark.slow
def test_end_to_end_on_the_tiny_checkpoint(tiny_model_dir, tmp_path):
    img = png(tmp_path / "cxr.png", 60, 40, (40, 80, 120))
    res = run_cli(
        "localize",
        "-m",
        str(tiny_model_dir),
        "-i",
        str(img),
        "right lung",
        "heart",
        "--json",
        "--max-new-tokens",
        "8",
        "-o",
        str(tmp_path / "o.png"),
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["width"] == 60 and out["height"] == 40 and out["preset"] == "cxr-localize@1"
    assert [a["object"] for a in out["answers"]] == ["right lung", "heart"]
    assert all(a["finish_reason"] in ("stop", "length") for a in out["answers"])
    for b in out["boxes"]:  # a random model's words: whatever boxes it wrote must lie in the image
        x0, y0, x1, y1 = b["xyxy"]
        assert 0 <= x0 <= x1 <= 60 and 0 <= y0 <= y1 <= 40
    with Image.open(tmp_path / "o.png") as o:
        assert o.size == (60, 40)


# -- the server -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Our server in front of an upstream answering the notebook's format; a folder and a file under its root."""
    from medgemma_toolkit.serve import ServeConfig, create_app
    from medgemma_toolkit.serve.launch import InProcessServer

    root = tmp_path_factory.mktemp("root")
    png(root / "wide.png", 400, 200)
    (root / "series").mkdir()
    with ScriptedUpstream(DONE_WHEN) as up:
        mg = MedGemma.load(None, upstream=up.url)
        app = create_app(mg, ServeConfig(image_root=root, served_model_name="loc"))
        with InProcessServer(app) as srv:
            yield srv.url, up


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/medgemma/localize", json=body, timeout=60)


def test_server_localize(served):
    url, up = served
    r = post(url, {"model": "loc", "image": data_uri(400, 200), "objects": ["right lung", "heart"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [b["label"] for b in out["boxes"]] == ["right lung", "right lung"]
    assert [b["object"] for b in out["boxes"]] == ["right lung", "heart"]
    assert out["boxes"][0]["box_2d"] == [250, 100, 750, 600]
    assert out["boxes"][0]["xyxy"] == pytest.approx([40, 0, 240, 200], abs=1.0)
    assert out["unparsed"] == [] and out["width"] == 400 and out["height"] == 200
    assert out["answer"] == DONE_WHEN + "\n\n" + DONE_WHEN and out["model"] == "loc"
    r = post(url, {"image": "wide.png", "objects": ["right lung"]})  # a path under the image root, no model named
    assert r.status_code == 200 and r.json()["boxes"][0]["xyxy"] == pytest.approx([40, 0, 240, 200], abs=1.0)


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"image": "IMG", "objects": []}, 400, "invalid_value"),
        ({"image": "IMG"}, 400, "invalid_value"),
        ({"image": "IMG", "objects": ["  "]}, 400, "invalid_value"),
        ({"image": "IMG", "objects": ["x"] * 17}, 400, "invalid_value"),
        ({"image": "IMG", "objects": ["lung"], "model": "other"}, 404, "model_not_found"),
        ({"image": "data:image/png;base64,!!!", "objects": ["lung"]}, 400, "invalid_image"),
        ({"image": "series", "objects": ["lung"]}, 400, "invalid_image_url"),
        ({"image": "../etc/passwd", "objects": ["lung"]}, 400, "image_source_not_allowed"),
        ({"image": "http://example.org/a.png", "objects": ["lung"]}, 400, "image_source_not_allowed"),
        ({"image": "IMG", "objects": ["lung"], "max_tokens": 0}, 400, "invalid_value"),
        ({"image": "IMG", "objects": ["lung"], "extra": 1}, 400, "invalid_value"),
    ],
)
def test_server_errors_are_openai_format(served, body, status, code):
    url, _ = served
    body = {k: (data_uri(40, 20) if v == "IMG" else v) for k, v in body.items()}
    r = post(url, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and set(err) == {"message", "type", "param", "code"}


def test_dicom_image_is_mapped_in_its_own_pixels(tmp_path, cli):
    """A DICOM CR (40 columns x 48 rows): xyxy in its Columns x Rows frame; the overlay is its rendered image."""
    from medgemma_toolkit.testing.synthetic_cxr import make_cxr

    make_cxr(rows=48, cols=40).save_as(tmp_path / "cxr.dcm", enforce_file_format=True)
    with ScriptedUpstream(DONE_WHEN) as up:
        res = cli(
            "localize",
            "--upstream",
            up.url,
            "-i",
            str(tmp_path / "cxr.dcm"),
            "right lung",
            "--json",
            "-o",
            str(tmp_path / "o.png"),
        )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["width"], out["height"]) == (40, 48)
    assert out["boxes"][0]["xyxy"] == pytest.approx(expected_xyxy(BOX, 40, 48), abs=0.051)
    with Image.open(tmp_path / "o.png") as o:
        assert o.size == (40, 48)
