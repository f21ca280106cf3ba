"""The web page at `/` in headless Chromium (the Debian `chromium` package, driven by Playwright; no browser
download): enter the key, upload a PNG, see the preprocessed image, ask, watch the answer stream in, with the
thought in its own collapsible block, on the real model path. The reading-workstation features (series, windows,
history, Markdown, Stop, boxes, contrast) are tested in tests/test_serve_workstation.py. The server runs the scripted tiny checkpoint, whose greedy output is a
known thought + answer, so the page's split can be checked exactly (the API-level split is checked here too)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil

import pytest
from PIL import Image
from playwright import sync_api
from playwright.sync_api import expect

from medgemma_toolkit.serve.launch import ServerProcess

pytestmark = pytest.mark.slow  # a real browser against a real server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "web-key-0123456789"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def web_server(scripted_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("web") / "server.log"
    # --log-prompts here (and only here): the opt-in must work; tests/test_serve.py checks the default keeps it out.
    with ServerProcess(
        scripted_model_dir,
        log,
        "--api-key",
        KEY,
        "--served-model-name",
        "tiny-medgemma",
        "--log-prompts",
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    ) as srv:
        yield srv


@pytest.fixture
def page(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed (scripts/test.sh installs the Debian package)")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS
        )
        try:
            pg = ctx.new_page()
            pg.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)  # a loaded CI machine renders slower than expect's 5 s default
            yield pg
        finally:
            ctx.close()


def test_page_upload_ask_stream(web_server, page, tmp_path):
    png = tmp_path / "cxr.png"
    Image.new("RGB", (80, 50), (180, 180, 180)).save(png)
    stream_chunks = []
    page.on("response", lambda r: stream_chunks.append(r) if r.url.endswith("/v1/chat/completions") else None)

    page.goto(web_server.url + "/")
    page.fill("#api-key", KEY)
    page.click("#connect")
    # (expect() rather than wait_for_function: the page's CSP forbids evaluating strings, as it should)
    expect(page.locator("#model-name")).to_have_text("tiny-medgemma")
    # The key field is cleared: the key lives in a script variable only.
    assert page.input_value("#api-key") == ""

    page.set_input_files("#files-current", str(png))
    shown_img = page.locator(".viewer[data-slot=current] .model-input")
    expect(shown_img).to_have_count(1)
    expect(page.locator(".viewer[data-slot=current] figcaption")).to_contain_text("64 x 64 px")
    src = shown_img.get_attribute("src")
    shown = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert shown.size == (64, 64)  # the tiny model's input size, padded square
    assert shown.getpixel((0, 0)) == (0, 0, 0) and shown.getpixel((32, 32)) == (180, 180, 180)  # padding + image

    # A DICOM file shows its preprocessed image too (the browser itself cannot display DICOM).
    import pydicom

    page.click(".viewer[data-slot=current] figcaption button")  # Remove
    expect(shown_img).to_have_count(0)
    page.set_input_files("#files-current", pydicom.data.get_testdata_file("CT_small.dcm"))
    expect(shown_img).to_have_count(1)
    expect(shown_img).not_to_have_attribute("src", src)
    expect(page.locator("#status")).to_have_text("Images ready: 1 model image.")
    page.click(".viewer[data-slot=current] figcaption button")
    page.set_input_files("#files-current", str(png))
    expect(shown_img).to_have_attribute("src", src)  # back to the PNG, same pixels as before

    page.fill("#question", "Describe this image.")
    page.fill("#max-tokens", "40")
    page.check("#think")
    page.click("#ask")
    expect(page.locator("#status")).to_have_text("Done.", timeout=120_000)
    answer = page.text_content(".turn.assistant .answer")
    meta = page.text_content(".turn.assistant .meta")
    assert " prompt + " in meta and " generated tokens" in meta and meta.endswith("finish: stop")
    assert stream_chunks and stream_chunks[0].headers["content-type"].startswith("text/event-stream")
    assert answer == "Cardiomegaly."
    # What the page shows is the concatenation of several streamed deltas, not one block.
    events = [json.loads(line[6:]) for line in stream_chunks[0].text().splitlines() if line.startswith("data: {")]
    deltas = [c["delta"]["content"] for e in events for c in e["choices"] if c["delta"].get("content")]
    assert len(deltas) >= 2 and "".join(deltas) == answer
    # The thought is in its collapsible block (closed until clicked), never in the answer.
    block = page.locator(".turn.assistant .thought")
    expect(block).to_be_visible()
    assert block.get_attribute("open") is None
    block.locator("summary").click()
    expect(block.locator("pre")).to_have_text("The heart is large.")


def test_page_without_key_says_so(web_server, page):
    page.goto(web_server.url + "/")
    page.fill("#question", "hello")
    page.click("#ask")
    expect(page.locator("#status")).to_contain_text("API key")
    expect(page.locator("#status")).to_have_class("error")


def test_thought_comes_back_apart_through_the_api(web_server):
    import openai

    client = openai.OpenAI(base_url=web_server.url + "/v1", api_key=KEY, max_retries=0)
    msgs = [{"role": "user", "content": "Is the heart enlarged?"}]
    r = client.chat.completions.create(
        model="tiny-medgemma", messages=msgs, max_tokens=40, extra_body={"medgemma": {"think": True}}
    )
    msg = r.choices[0].message
    assert msg.content == "Cardiomegaly." and r.choices[0].finish_reason == "stop"
    assert msg.model_extra["reasoning_content"] == "The heart is large."
    assert r.model_extra["medgemma"]["thought"] == "The heart is large."
    thought, answer = [], []
    for chunk in client.chat.completions.create(model="tiny-medgemma", messages=msgs, max_tokens=40, stream=True):
        for c in chunk.choices:
            thought.append((c.delta.model_extra or {}).get("reasoning_content") or "")
            answer.append(c.delta.content or "")
    assert "".join(answer) == "Cardiomegaly." and "".join(thought).strip() == "The heart is large."
    assert "prompt_text='Is the heart enlarged?'" in web_server.log_text()  # operator opted in
