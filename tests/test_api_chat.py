"""The Python API a newcomer recognises (issue 28): `chat` with OpenAI-style messages and image parts, streaming,
a context manager, typed public entry points, and an import that leaves the environment alone."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.prompts.chat_messages import ImageRef, parse_chat


def _png(tmp_path, name="x.png", colour="white"):
    path = tmp_path / name
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def test_chat_renders_like_ask(tiny_model, tmp_path):
    """One user message with an image part is the same prompt as ask(question, images) (same preset, same order)."""
    img = _png(tmp_path)
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": str(img)}}, {"type": "text", "text": "Describe."}],
        }
    ]
    got = tiny_model.chat(msgs, max_new_tokens=4)
    want = tiny_model.ask("Describe.", [str(img)], max_new_tokens=4)
    assert got.raw == want.raw and got.prompt_tokens == want.prompt_tokens


def test_chat_accepts_data_uris_file_urls_and_pil_images(tiny_model, tmp_path):
    img = _png(tmp_path)
    buf = io.BytesIO()
    Image.open(img).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    answers = []
    for part in (
        {"type": "image_url", "image_url": {"url": uri}},
        {"type": "image_url", "image_url": f"file://{img}"},
        {"type": "image", "image": Image.open(img)},
    ):
        msgs = [{"role": "user", "content": [part, {"type": "text", "text": "Describe."}]}]
        answers.append(tiny_model.chat(msgs, max_new_tokens=4))
    assert len({a.prompt_tokens for a in answers}) == 1
    assert len({a.raw for a in answers}) == 1


def test_chat_history_and_system_reach_the_prompt(tiny_model):
    one = tiny_model.chat([{"role": "user", "content": "What is sepsis?"}], max_new_tokens=2)
    more = tiny_model.chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is sepsis?"},
            {"role": "assistant", "content": "An infection response."},
            {"role": "user", "content": "And septic shock?"},
        ],
        max_new_tokens=2,
    )
    assert more.prompt_tokens > one.prompt_tokens + 8


def test_chat_streams_pieces_then_the_answer(tiny_model):
    items = list(tiny_model.chat([{"role": "user", "content": "What is sepsis?"}], stream=True, max_new_tokens=6))
    final = items[-1]
    assert not isinstance(final, tuple) and final.completion_tokens > 0
    pieces = [t for t in items[:-1] if isinstance(t, tuple)]
    assert "".join(text for ch, text in pieces if ch == "answer").strip() == final.text.strip()
    whole = tiny_model.chat([{"role": "user", "content": "What is sepsis?"}], max_new_tokens=6)
    assert whole.raw == final.raw


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ([], "non-empty list"),
        ("What is sepsis?", "non-empty list"),
        ([{"role": "assistant", "content": "hi"}], "last message must be the user's"),
        ([{"role": "doctor", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "unknown part type"),
        (
            [{"role": "system", "content": [{"type": "image", "image": "a.png"}]}, {"role": "user", "content": "q"}],
            "only accepted in user",
        ),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "starts with a user message"),
    ],
)
def test_bad_messages_are_one_clear_error(messages, says):
    with pytest.raises(BadInput, match=None) as e:
        parse_chat(messages)
    assert says in str(e.value)


def test_parse_merges_back_to_back_turns_and_keeps_images_in_order():
    chat = parse_chat(
        [
            {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "first"}]},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image_url", "image_url": "b.png"}]},
        ]
    )
    assert [t.role for t in chat.history] == ["user", "assistant"]
    assert chat.history[0].items == [ImageRef("a.png"), "first", "\n\n", "second"]
    assert chat.question == "q" and chat.images == ["b.png"]


def test_bad_data_uri_is_bad_input(tiny_model):
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]
    with pytest.raises(BadInput, match="malformed"):
        tiny_model.chat(msgs)


def test_context_manager_closes_the_backend(tiny_model_dir):
    from medgemma_toolkit import MedGemma

    closed = []
    with MedGemma.load(str(tiny_model_dir)) as mg:
        real_close = mg.backend.close
        mg.backend.close = lambda: (closed.append(1), real_close())  # type: ignore[method-assign]
        assert mg.chat([{"role": "user", "content": "hi"}], max_new_tokens=1).completion_tokens >= 0
    assert closed == [1]
    mg.close()  # a second close is a no-op
    assert closed == [1]


def test_import_changes_no_environment_and_loads_no_torch():
    code = (
        "import os, sys, json; before = dict(os.environ); import medgemma_toolkit as m; "
        "print(json.dumps([dict(os.environ) == before, 'torch' in sys.modules, m.__version__, "
        "sorted(n for n in m.__all__)]))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    same_env, torch_loaded, version, names = json.loads(out.stdout)
    assert same_env and not torch_loaded and version
    assert {"MedGemma", "MedSigLIP", "evaluate", "deidentify", "localize_anatomy"} <= set(names)


def test_loading_a_model_turns_the_hub_offline(tiny_model_dir):
    """Where models are found, the Hub is switched off (unless the user set HF_HUB_OFFLINE themselves)."""
    code = (
        "import os; from medgemma_toolkit.models.resolve import resolve_model; "
        f"resolve_model({str(tiny_model_dir)!r}); "
        "import huggingface_hub.constants as c; print(os.environ['HF_HUB_OFFLINE'], c.HF_HUB_OFFLINE)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "True"]


def test_evaluate_entry_point_matches_the_cli(tiny_model, tmp_path):
    import medgemma_toolkit as mgt

    summary = mgt.evaluate(tiny_model, "medqa", limit=2, max_new_tokens=4, out=tmp_path / "run")
    assert summary["counts"]["answered"] + summary["counts"].get("failed", 0) >= 0
    assert (tmp_path / "run" / "summary.json").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["task"]["name"] == "medqa"


def test_deidentify_entry_point(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    import medgemma_toolkit as mgt

    src = get_testdata_file("CT_small.dcm")
    summary = mgt.deidentify(src, f"{tmp_path / 'out'}/")
    written = [p for p in (tmp_path / "out").rglob("*.dcm")]
    assert written and summary.get("files_failed", 0) == 0
    assert str(pydicom.dcmread(written[0]).PatientName) != str(pydicom.dcmread(src).PatientName)
