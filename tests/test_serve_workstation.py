"""The reading page in headless Chromium (Debian `chromium`, driven by Playwright) against the real `medgemma serve`
in front of a scripted OpenAI-compatible upstream (`testing.upstream.ScriptedUpstream`, a small real HTTP server).

The upstream is the oracle: it records every request the server forwards, so the test compares the PNGs the page
showed as "the model input" with the PNGs the model side actually received, the "SLICE n" texts, the order of
prior and current images and the conversation history. Its answers are scripted per question (Markdown carrying
HTML, a slow stream for Stop, a localisation answer).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright import sync_api
from playwright.sync_api import expect

from medgemma_toolkit.serve.launch import ServerProcess
from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series
from medgemma_toolkit.testing.upstream import ScriptedUpstream

pytestmark = pytest.mark.slow  # a real browser against a real server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
MODEL = "tiny-upstream"
SIZE = 64  # the upstream's image size (its model card says so), so previews stay small
MARKDOWN = (
    "## Findings\n\n- **Cardiomegaly**, *mild*\n- Effusion: `none`\n\n"
    "<img src=x onerror=\"document.title='pwned'\"> <script>document.title='pwned'</script>\n\n"
    "[a link](javascript:alert(1)) and [the card](https://example.org/card)\n\n"
    '> quoted **impression**\n\n```json\n{"box": "<b>x</b>"}\n```\n\n1. first\n2. second'
)
BOXES = 'Final Answer: ```json\n[{"box_2d": [250, 100, 750, 600], "label": "right lung"}]\n```'
SHOTS = os.environ.get("MEDGEMMA_WEB_SCREENSHOTS")  # a folder: the docs/ screenshots are written there


def answer(body: dict) -> str:
    """The scripted model: its answer depends on the question (and the turn number)."""
    last = body["messages"][-1]["content"]
    text = last if isinstance(last, str) else " ".join(c.get("text", "") for c in last)
    turn = sum(m["role"] == "user" for m in body["messages"])
    if "box_2d" in text:
        return BOXES
    if "markdown" in text.lower():
        return MARKDOWN
    if "slowly" in text:
        return " ".join(f"word{k}" for k in range(300))
    return f"<unused94>thought Turn {turn} thought.<unused95>Answer to turn {turn}."


def slow_for_stop(body: dict) -> float:
    last = body["messages"][-1]["content"]
    return 0.05 if "slowly" in json.dumps(last) else 0.0


UPSTREAM = ScriptedUpstream(
    answer,
    model=MODEL,
    piece=6,
    delay=slow_for_stop,
    card={"medgemma": {"multimodal": True, "image_size": SIZE, "thinking": True}},
)


@pytest.fixture(scope="module")
def upstream():
    with UPSTREAM as up:
        yield up.url


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    log = tmp_path_factory.mktemp("ws") / "server.log"
    with ServerProcess(
        MODEL, log, "--upstream", upstream, "--served-model-name", "medgemma-demo", env={"OMP_NUM_THREADS": "1"}
    ) as srv:
        yield srv


@pytest.fixture
def page(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed (scripts/test.sh installs the Debian package)")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            pg = ctx.new_page()
            pg.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)  # a loaded CI machine renders slower than expect's 5 s default
            yield pg
        finally:
            ctx.close()


@pytest.fixture
def series(tmp_path) -> list[Path]:
    # 12 files named out of InstanceNumber order: the server orders them, the page must show its order.
    names = [f"img_{(k * 5) % 12:02d}.dcm" for k in range(12)]
    return write_series(tmp_path / "ct", SeriesSpec(slices=12, rows=32, cols=40, first_instance=101), names)


def png_pixels(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def sent_images(req: dict) -> list[tuple[str, str | None]]:
    """(PNG data URI, the text part right after it) for each image in a forwarded request, in order."""
    out = []
    for m in req["messages"]:
        parts = m["content"] if isinstance(m["content"], list) else []
        for k, c in enumerate(parts):
            if c["type"] == "image_url":
                nxt = parts[k + 1] if k + 1 < len(parts) and parts[k + 1]["type"] == "text" else None
                out.append((c["image_url"]["url"], nxt["text"] if nxt else None))
    return out


def shown_slices(page) -> list[str]:
    """The PNG the page shows for each slice, read by stepping through with the keyboard."""
    frame = page.locator(".viewer[data-slot=current] .frame").first
    frame.focus()
    page.keyboard.press("Home")
    out = []
    n = page.locator(".viewer[data-slot=current] .slices li").count()
    for k in range(n):
        expect(page.locator(".viewer[data-slot=current] .slice-label")).to_contain_text(f"({k + 1} of {n})")
        out.append(page.get_attribute(".viewer[data-slot=current] .model-input", "src"))
        page.keyboard.press("ArrowDown")
    return out


def ask(page, question: str, turns_before: int) -> None:
    page.fill("#question", question)
    page.keyboard.press("Control+Enter") if turns_before % 2 else page.click("#ask")
    expect(page.locator(".turn.assistant")).to_have_count(turns_before + 1)
    expect(page.locator("#status")).to_have_text(re.compile(r"Done\.|The request failed\."), timeout=120_000)
    assert page.text_content("#status") == "Done.", page.locator(".turn.assistant .answer").last.text_content()


def drop(page, slot: str, name: str, data: bytes) -> None:
    """A real `drop` event carrying a file, dispatched on a pane's drop zone."""
    handle = page.evaluate_handle(
        """([name, b64]) => { const dt = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], name, {type: "image/png"})); return dt; }""",
        [name, base64.b64encode(data).decode()],
    )
    page.dispatch_event(f".dropzone[data-slot={slot}]", "drop", {"dataTransfer": handle})


# Wraps the page's fetch: a model-input answer for centre 100 with a width other than 300 reaches the page only after
# the answer for (100, 300) has; then the flag is set.
HOLD_STALE_WINDOW = """() => {
  const real = window.fetch;
  let newest = null;
  window.fetch = async (url, init) => {
    const body = String((init && init.body) || "");
    const resp = await real(url, init);
    if (!String(url).includes("/model-input")) return resp;
    if (body.includes('"window":[100,300]')) { newest = resp; return resp; }
    if (!body.includes('"window":[100,')) return resp;
    while (!newest) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 300)); // after the page has shown the newest answer
    setTimeout(() => (window.__staleWindowDelivered = true), 300);
    return resp;
  };
}"""


def settled(page) -> None:
    """Every window change made so far is applied (the page marks `#window-controls` busy until its newest is)."""
    expect(page.locator("#window-controls")).not_to_have_attribute("aria-busy", "true")


def connect(page, server) -> None:
    page.goto(server.url + "/")
    page.click("#connect")
    expect(page.locator("#model-name")).to_have_text("medgemma-demo")


def test_series_scroll_window_and_two_turns(server, page, series):
    UPSTREAM.requests.clear()
    connect(page, server)
    page.set_input_files("#folder-current", str(series[0].parent))  # "Choose folder": the whole directory
    items = page.locator(".viewer[data-slot=current] .slices li")
    expect(items).to_have_count(12)
    # The sampled slices in the model's order: SLICE n with InstanceNumber 101.., and the user's own file names.
    labels = items.all_text_contents()
    assert [t.split(" · ")[0] for t in labels] == [f"SLICE {n}" for n in range(1, 13)]
    assert [t.split(" · ")[1] for t in labels] == [f"instance {101 + n}" for n in range(12)]
    assert [t.split(" · ")[2] for t in labels] == ["ct/" + p.name for p in series]  # in slice order
    before = shown_slices(page)
    assert len(set(before)) == 12  # the slices differ
    # Scrolling with the slider says where it is.
    page.locator(".viewer[data-slot=current] .slice-range").fill("7")
    expect(page.locator(".viewer[data-slot=current] .slice-label")).to_contain_text("SLICE 7 · instance 107")

    ask(page, "What is in this series?", 0)
    ask(page, "And the second question?", 1)
    turns = page.locator(".turn.assistant .answer")
    expect(turns).to_have_text(["Answer to turn 1.", "Answer to turn 2."])
    expect(page.locator(".turn.user .text")).to_have_text(["What is in this series?", "And the second question?"])
    # The token/latency line carries the usage the upstream reported (11 prompt tokens; 6 characters a delta).
    scripted = len("<unused94>thought Turn 1 thought.<unused95>Answer to turn 1.")
    meta = page.text_content(".turn.assistant .meta")
    assert meta.startswith(f"11 prompt + {-(-scripted // 6)} generated tokens · first token ") and " s total" in meta
    first, second = UPSTREAM.requests[-2:]
    # What the model received is what the page showed, slice for slice, each followed by its SLICE n.
    got = sent_images(first)
    assert [t for _, t in got] == [f"SLICE {n}" for n in range(1, 13)]
    for (uri, _), shown in zip(got, before):
        assert np.array_equal(png_pixels(uri), png_pixels(shown))
    # The second turn carries the history: the series, the first answer, then the new question.
    assert len(sent_images(second)) == 12
    assert [m["role"] for m in second["messages"] if m["content"]] == ["user", "assistant", "user"]
    assert second["messages"][-2]["content"] == "Answer to turn 1."
    # The thought sits in its collapsed block per turn.
    thought = page.locator(".turn.assistant .thought").nth(1)
    expect(thought).to_be_visible()
    assert thought.get_attribute("open") is None
    thought.locator("summary").click()
    expect(thought.locator("pre")).to_have_text("Turn 2 thought.")
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "web-series.png"), full_page=True)

    # Another CT window preset: the panes update to the new model input, and a new conversation starts.
    page.select_option("#ct-windows", "server")
    expect(page.locator("#status")).to_contain_text("Window applied")
    expect(page.locator(".turn")).to_have_count(0)
    after = shown_slices(page)
    assert all(not np.array_equal(png_pixels(a), png_pixels(b)) for a, b in zip(after, before))
    # Only the soft-tissue (G) channel differs between the two presets.
    a, b = png_pixels(after[5]), png_pixels(before[5])
    assert np.array_equal(a[..., 0], b[..., 0]) and np.array_equal(a[..., 2], b[..., 2])
    ask(page, "With the other window?", 0)
    for (uri, _), shown in zip(sent_images(UPSTREAM.requests[-1]), after):
        assert np.array_equal(png_pixels(uri), png_pixels(shown))


def test_dicom_window_level_prior_current(server, page, tmp_path):
    import pydicom

    UPSTREAM.requests.clear()
    connect(page, server)
    dcm = pydicom.data.get_testdata_file("CT_small.dcm")
    prior = tmp_path / "prior.png"
    Image.new("RGB", (60, 30), (90, 90, 90)).save(prior)
    page.check("#compare")
    drop(page, "prior", "prior.png", prior.read_bytes())  # drag and drop onto the prior pane
    page.set_input_files("#files-current", dcm)
    expect(page.locator(".viewer[data-slot=current] .model-input")).to_have_count(1)
    expect(page.locator(".viewer[data-slot=prior] .model-input")).to_have_count(1)
    # Side by side on a wide screen.
    pb = page.locator("#study-prior").bounding_box()
    cb = page.locator("#study-current").bounding_box()
    assert pb["x"] + pb["width"] <= cb["x"] and abs(pb["y"] - cb["y"]) < 2
    # A window preset, then a custom centre/width: the preview follows each.
    expect(page.locator("#window-controls")).to_be_enabled()
    own = page.get_attribute(".viewer[data-slot=current] .model-input", "src")
    page.select_option("#window-preset", "-600,1500")
    expect(page.locator(".viewer[data-slot=current] .model-input")).not_to_have_attribute("src", own)
    settled(page)
    lung = page.get_attribute(".viewer[data-slot=current] .model-input", "src")
    page.select_option("#window-preset", "custom")
    # Two changes in a row whose answers arrive out of order: the first (centre 100, the old width) is held back
    # in the page until after the second (100, 300) has been shown. The panes must end at the newest window.
    page.evaluate(HOLD_STALE_WINDOW)
    page.fill("#window-center", "100")
    page.press("#window-center", "Enter")
    page.fill("#window-width", "300")
    page.press("#window-width", "Enter")
    page.locator("#window-width").blur()
    page.wait_for_function("() => window.__staleWindowDelivered === true")
    settled(page)
    expect(page.locator(".viewer[data-slot=current] .model-input")).not_to_have_attribute("src", lung)
    custom = page.get_attribute(".viewer[data-slot=current] .model-input", "src")
    ask(page, "Compare the prior and current images.", 0)
    got = sent_images(UPSTREAM.requests[-1])
    assert len(got) == 2  # prior first, then current, as the longitudinal notebook sends them
    assert png_pixels(got[0][0])[0].max() > 0  # the wide prior unpadded (no black rows), as the notebook sends it
    assert np.array_equal(
        png_pixels(got[0][0]), png_pixels(page.get_attribute(".viewer[data-slot=prior] .model-input", "src"))
    )
    assert np.array_equal(png_pixels(got[1][0]), png_pixels(custom))
    # The custom window, computed here from the file: HU = stored * slope + intercept, clipped to [C-W/2, C+W/2].
    ds = pydicom.dcmread(dcm)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.clip((hu - (100 - 150)) / 300, 0, 1) * 255
    small = np.asarray(
        Image.fromarray(np.round(expected).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    )
    assert np.abs(png_pixels(custom)[..., 0].astype(int) - small).max() <= 3
    # One prior + one current: the longitudinal preset (its 600 new tokens, as the page leaves max_tokens to it).
    assert UPSTREAM.requests[-1]["max_tokens"] == 600
    # An empty question asks the notebook's own instruction.
    page.click("#new-conversation")
    ask(page, "", 0)
    expect(page.locator(".turn.user .text")).to_have_text("(the longitudinal notebook's comparison instruction)")
    req = UPSTREAM.requests[-1]
    assert len(sent_images(req)) == 2 and req["max_tokens"] == 600
    texts = [c["text"] for c in req["messages"][-1]["content"] if c["type"] == "text"]
    assert texts and len(" ".join(texts)) > 40  # the instruction, supplied by the server's preset


def test_markdown_is_rendered_safely_and_copied(server, page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    connect(page, server)
    ask(page, "Answer in markdown please.", 0)
    answer = page.locator(".turn.assistant .answer")
    expect(answer.locator("h4")).to_have_text("Findings")
    expect(answer.locator("li strong")).to_have_text("Cardiomegaly")
    expect(answer.locator("li em")).to_have_text("mild")
    expect(answer.locator("li code")).to_have_text("none")
    # Model output never becomes markup: the tags show as text, nothing runs, no javascript: link.
    assert answer.locator("img, script, iframe").count() == 0
    expect(answer).to_contain_text("<img src=x onerror=\"document.title='pwned'\">")
    expect(answer).to_contain_text("<script>document.title='pwned'</script>")
    assert page.title() == "MedGemma"
    links = answer.locator("a")
    expect(links).to_have_count(1)
    assert links.get_attribute("href") == "https://example.org/card"
    expect(answer).to_contain_text("[a link](javascript:alert(1))")
    expect(answer.locator("blockquote strong")).to_have_text("impression")
    expect(answer.locator("pre code")).to_have_text('{"box": "<b>x</b>"}')
    assert answer.locator("b").count() == 0
    expect(answer.locator("ol li")).to_have_text(["first", "second"])
    page.click(".turn.assistant .copy")
    expect(page.locator(".turn.assistant .copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN


def _cancelled(server) -> float:
    import httpx

    text = httpx.get(server.url + "/metrics").text
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("medgemma_requests_cancelled_total")
    )


def test_stop_aborts_the_stream(server, page):
    connect(page, server)
    before = _cancelled(server)
    for k, how in enumerate(("button", "Escape")):
        page.fill("#question", "Answer slowly.")
        page.click("#ask")
        answer = page.locator(".turn.assistant .answer").nth(k)
        expect(answer).to_contain_text("word3")
        page.click("#stop") if how == "button" else page.keyboard.press("Escape")
        expect(page.locator("#status")).to_have_text("Stopped.")
        expect(page.locator(".turn.assistant .meta").nth(k)).to_contain_text("finish: stopped by you")
        partial = answer.text_content()
        assert "word299" not in partial
        time.sleep(0.5)
        assert answer.text_content() == partial  # nothing more arrives
        expect(page.locator("#ask")).to_be_enabled()
        expect(page.locator("#stop")).to_be_hidden()
    # The server saw the client leave and stopped generating for it (both times).
    deadline = time.monotonic() + 10
    while _cancelled(server) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _cancelled(server) == before + 2


def _luminance(rgb):
    c = [v / 255 for v in rgb]
    c = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]


def contrast(fg, bg) -> float:
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


# The colours of each text element and the nearest opaque background behind it, as Chromium computes them.
COLOURS = """els => els.map(e => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number);
  let b = e, bg = null;
  while (b) { const c = rgb(getComputedStyle(b).backgroundColor); if (c.length < 4 || c[3] > 0) { bg = c; break; }
              b = b.parentElement; }
  return {sel: e.id || e.className || e.tagName, fg: rgb(getComputedStyle(e).color).slice(0, 3),
          bg: (bg || [255, 255, 255]).slice(0, 3)};
})"""


def test_contrast_keyboard_and_narrow_layout(server, page, series):
    connect(page, server)
    page.set_input_files("#files-current", [str(p) for p in series[:3]])
    expect(page.locator(".viewer[data-slot=current] .slices li")).to_have_count(3)
    ask(page, "Describe.", 0)
    page.locator(".turn.assistant .thought summary").click()
    selectors = (
        "header h1, #model-name, header label, h2, h3, p.muted, .muted, label, legend, button, "
        ".dropzone span, .turn .who, .turn .text, .answer p, .thought pre, .thought summary, "
        ".meta, .slice-label, .slices button, .source-name, #status, input, select, textarea"
    )
    pairs = page.locator(selectors).evaluate_all(COLOURS)
    assert len(pairs) > 20
    low = [
        (p["sel"], p["fg"], p["bg"], round(contrast(p["fg"], p["bg"]), 2))
        for p in pairs
        if contrast(p["fg"], p["bg"]) < 4.5
    ]
    assert not low, low
    # Keyboard: Tab reaches the controls in order, the slice frame scrolls with the arrow keys.
    page.focus("#api-key")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "connect"
    page.locator(".viewer[data-slot=current] .frame").focus()
    page.keyboard.press("End")
    expect(page.locator(".viewer[data-slot=current] .slice-label")).to_contain_text("(3 of 3)")
    # Narrow screen: one column, the conversation under the images, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    images = page.locator("#images").bounding_box()
    conv = page.locator("#conversation").bounding_box()
    assert conv["y"] >= images["y"] + images["height"] - 1 and images["width"] <= 390
    wide = page.evaluate("""() => [...document.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > 390)
        .map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, wide
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "web-narrow.png"), full_page=False)


def test_model_input_api_reads_an_uploaded_series_like_a_folder(server, series, tmp_path):
    """The ZIP upload goes through the same imaging path as a series folder: compare with `load_parts`."""
    import httpx

    from medgemma_toolkit.core.messages import ImagePart, TextPart
    from medgemma_toolkit.imaging import ImageOptions, load_parts

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, p in enumerate(series):
            z.write(p, f"{k:04d}.dcm")
    url = "data:application/zip;base64," + base64.b64encode(buf.getvalue()).decode()
    r = httpx.post(server.url + "/v1/medgemma/model-input", json={"image_url": {"url": url}, "ct_windows": "server"})
    assert r.status_code == 200, r.text
    body = r.json()
    parts = load_parts(series[0].parent, ImageOptions(ct_windows="server"), SIZE)
    want = [p.image for p in parts if isinstance(p, ImagePart)]
    labels = [p.text for p in parts if isinstance(p, TextPart)]
    assert [e["label"] for e in body["images"]] == labels
    for e, img in zip(body["images"], want):
        assert np.array_equal(png_pixels(e["image"]), np.asarray(img))
    # Archive members are named by position, never by the user's file names; UIDs come back hashed.
    assert all(e["source"].startswith("image 1 file ") for e in body["images"])
    assert all(e["sop_instance_uid"].startswith("sha256:") for e in body["images"])

    # Bad archives are one OpenAI-format 4xx.
    for data, code in ((b"PK\x03\x04 not a zip", "invalid_image"), (_zip_of({"a.dcm": b"x" * 10}), "invalid_image")):
        r = httpx.post(
            server.url + "/v1/medgemma/model-input",
            json={"image_url": {"url": "data:application/zip;base64," + base64.b64encode(data).decode()}},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    # A small archive that would inflate past the body limit (32 MiB) is refused before it is read whole.
    bomb = _zip_of({"a.dcm": bytes(40 * 1024**2)})
    assert len(bomb) < 100_000
    r = httpx.post(
        server.url + "/v1/medgemma/model-input",
        json={"image_url": {"url": "data:application/zip;base64," + base64.b64encode(bomb).decode()}},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large", r.text
    many = tmp_path / "many"
    write_series(many, SeriesSpec(slices=20, rows=8, cols=8))
    r = httpx.post(
        server.url + "/v1/medgemma/model-input",
        json={"image_url": {"url": "data:application/zip;base64," + base64.b64encode(_zip_dir(many)).decode()}},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_images"  # 20 slices > 16 per request


def _zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _zip_dir(folder: Path) -> bytes:
    return _zip_of({p.name: p.read_bytes() for p in sorted(folder.iterdir())})


def test_boxes_drawn_over_the_image(server, page, tmp_path):
    """The issue's example: a 400x200 PNG, the model's box [250, 100, 750, 600] -> xyxy [40, 0, 240, 200], drawn
    where those pixels lie in the padded square the pane shows (offsets computed here from the geometry)."""
    wide = tmp_path / "wide.png"
    Image.new("RGB", (400, 200), (120, 120, 120)).save(wide)
    connect(page, server)
    page.set_input_files("#files-current", str(wide))
    img = page.locator(".viewer[data-slot=current] .model-input")
    expect(img).to_have_count(1)
    page.fill("#objects", "right lung")
    page.press("#objects", "Enter")
    rect = page.locator(".viewer[data-slot=current] svg.boxes rect")
    expect(rect).to_have_count(1)
    assert [float(rect.get_attribute(a)) for a in ("x", "y", "width", "height")] == pytest.approx(
        [40, 0, 200, 200], abs=1
    )
    expect(page.locator(".box-legend li")).to_have_text(["right lung: x 40–240, y 0–200 px"])
    # On screen: the 400x200 image sits in a 400x400 square with 100 px of padding above; scale = shown / 400.
    ib, rb = img.bounding_box(), rect.bounding_box()
    scale = ib["width"] / 400
    assert rb["x"] == pytest.approx(ib["x"] + 40 * scale, abs=2)
    assert rb["y"] == pytest.approx(ib["y"] + 100 * scale, abs=2)
    assert rb["width"] == pytest.approx(200 * scale, abs=3) and rb["height"] == pytest.approx(200 * scale, abs=3)
    expect(page.locator("#status")).to_have_text("1 box drawn.")
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "web-boxes.png"))
