"""Longitudinal comparison: the prior image, then the current one, then the instruction (Google's notebook,
tests/data/google_reference/cxr_longitudinal.json), through `ask --prior/--current`, DICOM date ordering, `chat`,
the server's `medgemma.longitudinal` extension and `batch` rows. An OpenAI-compatible upstream on loopback
(`ScriptedUpstream`) records exactly what was sent.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from medgemma_toolkit import MedGemma
from medgemma_toolkit.imaging.order import order_by_acquisition
from medgemma_toolkit.prompts.presets import get_preset
from medgemma_toolkit.testing.synthetic_cxr import make_cxr
from medgemma_toolkit.testing.upstream import ScriptedUpstream

REF = json.loads((Path(__file__).parent / "data" / "google_reference" / "cxr_longitudinal.json").read_text())
ANSWER = "The opacity in the left lower lobe has resolved."


def tall_png(path: Path) -> Path:  # a black first column (padded or not, the model image's first column is black)
    a = np.full((60, 30, 3), 200, np.uint8)
    a[:, 0] = 0
    Image.fromarray(a).save(path)
    return path


def wide_png(path: Path) -> Path:  # a black first row
    a = np.full((30, 60, 3), 200, np.uint8)
    a[0] = 0
    Image.fromarray(a).save(path)
    return path


def sent_images(body: dict) -> list[np.ndarray]:
    out = []
    for c in body["messages"][-1]["content"]:
        if c["type"] != "text":
            with Image.open(io.BytesIO(base64.b64decode(c["image_url"]["url"].split(",", 1)[1]))) as im:
                out.append(np.asarray(im.convert("RGB")))
    return out


def shapes(body: dict) -> list:
    """Each content part of the last message: 'tall' / 'wide' for images (from their black edge), else the text."""
    images = iter(sent_images(body))
    out = []
    for c in body["messages"][-1]["content"]:
        if c["type"] == "text":
            out.append(c["text"])
            continue
        a = next(images)
        out.append("tall" if a[:, 0].max() == 0 else "wide" if a[0].max() == 0 else "square")
    return out


def padded(body: dict) -> list[bool]:
    """Per image: padded to a square (an eighth of the side is black padding) or stretched to it."""
    return [bool(a[:, a.shape[1] // 8].max() == 0 or a[a.shape[0] // 8].max() == 0) for a in sent_images(body)]


def dicom(path: Path, rows: int, cols: int, **dates: str) -> Path:
    """A CXR whose first column (tall) or first row (wide) is black, so the model image shows which it is."""
    ds = make_cxr(rows=rows, cols=cols)
    px = np.frombuffer(ds.PixelData, np.uint16).reshape(rows, cols).copy()
    if rows > cols:
        px[:, 0] = 0
    elif cols > rows:
        px[0] = 0
    ds.PixelData = px.tobytes()
    for k, v in dates.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_preset_is_the_notebooks():
    pre = get_preset("cxr-longitudinal")
    assert pre.user_text("") == REF["prompt"] and pre.max_new_tokens(True, False) == REF["max_new_tokens"] == 600
    assert pre.user_text("Has the effusion changed?") == "Has the effusion changed?"
    parts = pre.build("", [*_two_images()]).messages
    assert [m.role for m in parts] == ["user"]
    assert [type(p).__name__ for p in parts[0].parts] == ["ImagePart", "ImagePart", "TextPart"]


def _two_images():
    from medgemma_toolkit.core.messages import ImagePart

    return ImagePart(Image.new("RGB", (8, 8))), ImagePart(Image.new("RGB", (8, 8), (9, 9, 9)))


def test_show_prompt_renders_as_the_notebook(tiny_model_dir, tmp_path):
    res = run_cli(
        "ask",
        "-m",
        str(tiny_model_dir),
        "--prior",
        str(tall_png(tmp_path / "p.png")),
        "--current",
        str(wide_png(tmp_path / "c.png")),
        "--show-prompt",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout[:-1] == REF["rendered"]


def test_ask_prior_then_current_then_question(tmp_path, cli):
    prior, current = tall_png(tmp_path / "prior.png"), wide_png(tmp_path / "current.png")
    with ScriptedUpstream(ANSWER) as up:
        res = cli(
            "ask", "--upstream", up.url, "--current", str(current), "--prior", str(prior), "--json", "Has it changed?"
        )
        res2 = cli("ask", "--upstream", up.url, "--prior", str(prior), "--current", str(current))
        first, second = up.requests
    assert res.returncode == 0 and res2.returncode == 0, res.stderr + res2.stderr
    assert json.loads(res.stdout)["text"] == ANSWER and json.loads(res.stdout)["preset"] == "cxr-longitudinal@2"
    assert shapes(first) == ["tall", "wide", "Has it changed?"]
    assert first["max_tokens"] == 600 and first["temperature"] == 0 and len(first["messages"]) == 1  # no system
    assert shapes(second) == ["tall", "wide", REF["prompt"]]  # no question: the notebook's instruction
    assert padded(first) == padded(second) == [False, False]  # the notebook's preprocess_image = False


def test_images_unpadded_by_default_padding_on_request(tmp_path, cli):
    """The notebook sends prior and current as they are: the processor stretches them to the square (the same
    bilinear resize `to_model_image(..., pad=False)` does); `--pad` pads them as training did."""
    from medgemma_toolkit.imaging import to_model_image

    prior, current = tall_png(tmp_path / "prior.png"), wide_png(tmp_path / "current.png")
    with ScriptedUpstream(ANSWER) as up:
        plain = cli("ask", "--upstream", up.url, "--prior", str(prior), "--current", str(current))
        pad = cli("ask", "--upstream", up.url, "--prior", str(prior), "--current", str(current), "--pad")
        one = cli("ask", "--upstream", up.url, "-i", str(prior), "Describe.")
        first, second, third = up.requests
    assert plain.returncode == pad.returncode == one.returncode == 0, plain.stderr + pad.stderr + one.stderr
    assert padded(first) == [False, False] and padded(second) == [True, True]
    assert padded(third) == [True]  # other presets pad, as training did
    got = sent_images(first)
    for path, a in zip((prior, current), got):
        with Image.open(path) as im:
            want = np.asarray(to_model_image(im, a.shape[0], pad=False))
        assert np.array_equal(a, want)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prior", "P"], "needs both --prior and --current"),
        (["--prior", "P", "--current", "C", "-i", "P"], "without --image"),
        ([], "give a question"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, cli, args, message):
    p = str(tall_png(tmp_path / "p.png"))
    res = cli("ask", "--upstream", "http://127.0.0.1:9", *[{"P": p, "C": p}.get(a, a) for a in args])
    assert res.returncode == 2 and res.stderr.startswith("error: ") and message in res.stderr


def test_dicom_inputs_are_ordered_by_date_and_say_so(tmp_path, cli):
    older = dicom(tmp_path / "a.dcm", 48, 40, StudyDate="20190304", StudyTime="101500")  # tall
    newer = dicom(tmp_path / "b.dcm", 40, 48, StudyDate="20210911")  # wide
    with ScriptedUpstream(ANSWER) as up:
        res = cli("ask", "--upstream", up.url, "-i", str(newer), "-i", str(older), "Compare.")
        sent = up.requests[0]
    assert res.returncode == 0, res.stderr
    assert "ordered by StudyDate/AcquisitionDateTime, oldest first (reordered)" in res.stderr
    assert not any(d in res.stderr for d in ("2019", "2021", "0304", "0911"))  # dates are PHI: never printed
    assert [s for s in shapes(sent) if s in ("tall", "wide")] == ["tall", "wide"]  # text goes where the preset says


def test_date_order_rules(tmp_path):
    # Same study day: the acquisition time decides; acquisition date-time alone also orders.
    a = dicom(tmp_path / "a.dcm", 8, 8, StudyDate="20200101", AcquisitionDateTime="20200101120000")
    b = dicom(tmp_path / "b.dcm", 8, 8, StudyDate="20200101", AcquisitionDateTime="20200101083000")
    c = dicom(tmp_path / "c.dcm", 8, 8, AcquisitionDateTime="20191231235959.5")
    got = order_by_acquisition([str(a), str(b), str(c)])
    assert got.sources == [str(c), str(b), str(a)]
    undated = dicom(tmp_path / "d.dcm", 8, 8)
    kept = order_by_acquisition([str(a), str(undated), str(c)])
    assert kept.sources == [str(a), str(undated), str(c)] and "kept in the order given" in (kept.notice or "")
    png = tall_png(tmp_path / "x.png")
    assert order_by_acquisition([str(a), str(png)]) == order_by_acquisition([str(a), str(png)])
    assert order_by_acquisition([str(a), str(png)]).sources == [str(a), str(png)]
    assert order_by_acquisition([str(a), str(png)]).notice is None  # not all DICOM: nothing to say
    same = order_by_acquisition([str(b), str(b)])
    assert same.notice and "reordered" not in same.notice


def test_chat_prior_current(tmp_path, cli):
    prior, current = tall_png(tmp_path / "prior.png"), wide_png(tmp_path / "current.png")
    session = f"/current {current}\n/prior {prior}\n/compare\nAnd the heart?\n/prior {prior}\nWhat now?\n"
    with ScriptedUpstream(ANSWER) as up:
        res = cli("chat", "--upstream", up.url, input=session)
        bodies = list(up.requests)
    assert res.returncode == 0, res.stderr
    assert "a comparison needs both /prior PATH and /current PATH" in res.stdout
    assert len(bodies) == 2
    assert shapes(bodies[0]) == ["tall", "wide", REF["prompt"]] and padded(bodies[0]) == [False, False]
    assert bodies[1]["messages"][-1]["content"] == "And the heart?"  # a follow-up turn, the images in history
    assert [m["role"] for m in bodies[1]["messages"]] == ["user", "assistant", "user"]


def test_server_extension(tmp_path):
    from medgemma_toolkit.serve import ServeConfig, create_app
    from medgemma_toolkit.serve.launch import InProcessServer

    def uri(p: Path) -> dict:
        return {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()},
        }

    prior, current = uri(tall_png(tmp_path / "p.png")), uri(wide_png(tmp_path / "c.png"))
    with ScriptedUpstream(ANSWER) as up:
        app = create_app(MedGemma.load(None, upstream=up.url), ServeConfig(served_model_name="m"))
        with InProcessServer(app) as srv:

            def chat(content: list, **ext) -> httpx.Response:
                body = {"model": "m", "messages": [{"role": "user", "content": content}], "medgemma": ext}
                return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)

            ok = chat([prior, current], longitudinal=True)
            asked = chat([prior, current, {"type": "text", "text": "Better or worse?"}], longitudinal=True)
            one = chat([prior, {"type": "text", "text": "?"}], longitudinal=True)
            pad = chat([prior, current], longitudinal=True, pad=True)
        sent = list(up.requests)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == ANSWER
    assert ok.json()["medgemma"]["preset"] == "cxr-longitudinal@2"
    assert shapes(sent[0]) == ["tall", "wide", REF["prompt"]] and sent[0]["max_tokens"] == 600
    assert asked.status_code == 200 and shapes(sent[1]) == ["tall", "wide", "Better or worse?"]
    assert one.status_code == 400 and one.json()["error"]["param"] == "medgemma.longitudinal"
    assert pad.status_code == 200 and len(sent) == 3
    assert padded(sent[0]) == padded(sent[1]) == [False, False] and padded(sent[2]) == [True, True]


def test_batch_rows_with_prior_and_current(tmp_path):
    tall_png(tmp_path / "p.png")
    wide_png(tmp_path / "c.png")
    rows = [
        {"id": "a", "prior": "p.png", "current": "c.png"},
        {"id": "b", "prior": "p.png", "current": "c.png", "question": "Worse?"},
        {"id": "c", "question": "Describe.", "image": "c.png"},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ScriptedUpstream(ANSWER) as up:
        res = run_cli(
            "batch", "--upstream", up.url, "--input", str(tmp_path / "rows.jsonl"), "-o", str(tmp_path / "o.jsonl")
        )
        sent = sorted((shapes(b) for b in up.requests), key=len)
    assert res.returncode == 0, res.stderr
    out = {r["id"]: r for r in map(json.loads, (tmp_path / "o.jsonl").read_text().splitlines())}
    assert {k: v["answer"] for k, v in out.items()} == {"a": ANSWER, "b": ANSWER, "c": ANSWER}
    assert sorted(sent) == sorted(
        [["tall", "wide", REF["prompt"]], ["tall", "wide", "Worse?"], ["Describe.", "wide"]]
    )  # row c: the model's own preset
    assert sorted(padded(b) for b in up.requests) == [[False, False], [False, False], [True]]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "x", "prior": "p.png"}) + "\n")
    bad = run_cli(
        "batch",
        "--upstream",
        "http://127.0.0.1:9",
        "--input",
        str(tmp_path / "bad.jsonl"),
        "-o",
        str(tmp_path / "o2.jsonl"),
    )
    assert bad.returncode == 2 and "needs both 'prior' and 'current'" in bad.stderr


def test_eval_rows_with_prior_and_current_columns(tmp_path):
    """An eval CSV whose rows give `prior` and `current`: the model sees them in that order."""
    tall_png(tmp_path / "p.png")
    wide_png(tmp_path / "c.png")
    (tmp_path / "rows.csv").write_text(
        "id,question,options,answer,prior,current\n"
        'q1,Has the opacity improved?,"[""Improved"", ""Worsened""]",A,p.png,c.png\n'
    )
    with ScriptedUpstream("The most likely diagnosis is: A") as up:
        res = run_cli(
            "eval",
            "--upstream",
            up.url,
            "--task",
            "image_mcq",
            "--data",
            str(tmp_path / "rows.csv"),
            "--out",
            str(tmp_path / "run"),
            "--no-cache",
        )
        (body,) = up.requests
    assert res.returncode == 0, res.stderr
    assert [s for s in shapes(body) if s in ("tall", "wide")] == ["tall", "wide"]
    (rec,) = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert [Path(i["source"]).name for i in rec["images"]] == ["p.png", "c.png"]
    (tmp_path / "bad.csv").write_text('id,question,options,answer,prior,image\nq1,Q?,"[""a"", ""b""]",A,p.png,c.png\n')
    bad = run_cli(
        "eval",
        "--upstream",
        "http://127.0.0.1:9",
        "--task",
        "image_mcq",
        "--data",
        str(tmp_path / "bad.csv"),
        "--out",
        str(tmp_path / "run2"),
    )
    assert bad.returncode != 0 and "comparison row" in bad.stderr


def test_server_orders_dicom_images_by_date_as_the_cli_does(tmp_path):
    """Several single DICOM images in the question: oldest first when all are dated (as `ask -i` does), else as
    given; never reordered across non-DICOM images."""
    from medgemma_toolkit.serve import ServeConfig, create_app
    from medgemma_toolkit.serve.launch import InProcessServer

    def uri(p: Path, mime: str = "application/dicom") -> dict:
        return {
            "type": "image_url",
            "image_url": {"url": f"data:{mime};base64," + base64.b64encode(p.read_bytes()).decode()},
        }

    older = uri(dicom(tmp_path / "a.dcm", 48, 40, StudyDate="20190304", StudyTime="101500"))  # tall
    newer = uri(dicom(tmp_path / "b.dcm", 40, 48, StudyDate="20210911"))  # wide
    undated = uri(dicom(tmp_path / "c.dcm", 40, 48))  # wide, no date
    png = uri(tall_png(tmp_path / "p.png"), "image/png")
    with ScriptedUpstream(ANSWER) as up:
        app = create_app(MedGemma.load(None, upstream=up.url), ServeConfig(served_model_name="m"))
        with InProcessServer(app) as srv:

            def chat(content: list, **ext) -> httpx.Response:
                body = {"model": "m", "messages": [{"role": "user", "content": content}], "medgemma": ext}
                return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)

            replies = [
                chat([newer, older], longitudinal=True),
                chat([newer, older, {"type": "text", "text": "Compare."}]),
                chat([undated, older], longitudinal=True),
                chat([newer, png], longitudinal=True),
            ]
        sent = list(up.requests)
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    assert shapes(sent[0]) == ["tall", "wide", REF["prompt"]]  # reordered: the 2019 study is the prior
    assert [s for s in shapes(sent[1]) if s in ("tall", "wide")] == ["tall", "wide"]
    assert shapes(sent[2])[:2] == ["wide", "tall"]  # one undated: kept as given
    assert shapes(sent[3])[:2] == ["wide", "tall"]  # not all DICOM: kept as given
