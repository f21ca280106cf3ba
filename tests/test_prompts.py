"""Presets and the thinking split, on crafted strings."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from medgemma_toolkit.core.messages import ImagePart, TextPart
from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.prompts.presets import PRESETS, get_preset
from medgemma_toolkit.prompts.thinking import THINK_INSTRUCTION, StreamSplitter, split_thought

CASES = [
    ("Plain answer.", None, "Plain answer."),
    ("<unused94>thought\nLook at the heart.<unused95>Cardiomegaly.", "Look at the heart.", "Cardiomegaly."),
    ("<unused94>thought\nreasoning\nmore<unused95>\n\nFinal Answer: B", "reasoning\nmore", "Final Answer: B"),
    ("<unused94>thought\ncut off mid-thought", "cut off mid-thought", ""),
    ("stray tail of a thought<unused95>Answer", "stray tail of a thought", "Answer"),
    ("<unused94><unused95>Yes", "", "Yes"),
    ("  spaced  ", None, "spaced"),
]


@pytest.mark.parametrize("raw,thought,answer", CASES)
def test_split_thought(raw, thought, answer):
    s = split_thought(raw)
    assert s.thought == thought
    assert s.answer == answer


@pytest.mark.parametrize("raw,thought,answer", CASES)
def test_stream_splitter_matches_split_for_any_chunking(raw, thought, answer):
    rng = random.Random(0)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(raw)), k=min(len(raw) - 1, rng.randint(0, 6)))) if len(raw) > 1 else []
        pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
        sp = StreamSplitter()
        got = {"thought": "", "answer": ""}
        for p in pieces:
            for ch, t in sp.feed(p):
                got[ch] += t
        for ch, t in sp.flush():
            got[ch] += t
        assert "<unused9" not in got["answer"]
        # Streaming cannot recall text sent before a stray close marker; the final split handles that case.
        if "<unused94>" in raw or "<unused95>" not in raw:
            assert got["answer"].strip() == answer
        if thought is not None and "<unused94>" in raw:
            assert got["thought"].strip() == thought


def _img():
    return ImagePart(Image.new("RGB", (8, 8)))


def test_v1_preset_system_prompt_by_modality_and_text_first():
    p = get_preset("medgemma-v1")
    text_only = p.build("What is sepsis?")
    assert text_only.messages[0].text == "You are a helpful medical assistant."
    with_img = p.build("Describe.", [_img()])
    assert with_img.messages[0].text == "You are an expert radiologist."
    user = with_img.messages[1]
    assert isinstance(user.parts[0], TextPart) and isinstance(user.parts[1], ImagePart)
    assert p.max_new_tokens(True, False) == 300 and p.max_new_tokens(False, False) == 500


def test_15_preset_no_system_image_first():
    p = get_preset("medgemma-1.5")
    pr = p.build("Describe.", [_img(), _img()])
    assert [m.role for m in pr.messages] == ["user"]
    assert [type(x).__name__ for x in pr.messages[0].parts] == ["ImagePart", "ImagePart", "TextPart"]


def test_think_adds_instruction():
    pr = get_preset("medgemma-1.5").build("Why?", think=True)
    assert pr.messages[0].role == "system" and pr.messages[0].text == THINK_INSTRUCTION
    pr = get_preset("medgemma-v1").build("Why?", think=True)
    assert pr.messages[0].text.startswith(THINK_INSTRUCTION + " You are a helpful")


def test_pretrained_completion_prompt():
    p = get_preset("pretrained")
    pr = p.build("What is the capital of France?")
    assert pr.is_completion and pr.text == "Question: What is the capital of France?\nAnswer:"
    pr = p.build("findings", [_img()])
    assert pr.text.startswith("<start_of_image>\n") and len(pr.images) == 1
    assert "\nQuestion:" in p.stop
    with pytest.raises(BadInput):
        p.build("x", history=[pr.messages[0]] if pr.messages else [object()])  # type: ignore[list-item]


def test_system_override_and_unknown_preset():
    pr = get_preset("medgemma-v1").build("Q", system="You are a dermatologist.")
    assert pr.messages[0].text == "You are a dermatologist."
    with pytest.raises(BadInput):
        get_preset("nope")
    assert {"medgemma-v1", "medgemma-1.5", "pretrained", "plain"} <= set(PRESETS)


def test_15_preset_volume_layout_instruction_slices_question():
    p = get_preset("medgemma-1.5")
    media = [_img(), TextPart("SLICE 1"), _img(), TextPart("SLICE 2")]
    pr = p.build("Any lesion?", media, instruction="Review these.")
    texts = [x.text if isinstance(x, TextPart) else "<img>" for x in pr.messages[0].parts]
    assert texts == ["Review these.", "<img>", "SLICE 1", "<img>", "SLICE 2", "\n\nAny lesion?"]
    default = p.build("Any lesion?", media).messages[0].parts[0].text
    assert default == p.volume_instruction
    slide = [ImagePart(Image.new("RGB", (8, 8)), info={"patch": [0, 0, 0]}) for _ in range(2)]
    parts = p.build("Tumour?", slide).messages[0].parts
    assert parts[0].text == p.slide_instruction and parts[-1].text == "\n\nTumour?"
    # single images keep the model card's layout: image, then the text
    assert [type(x).__name__ for x in p.build("Describe.", [_img()]).messages[0].parts] == ["ImagePart", "TextPart"]


def test_v1_thinking_budget_is_the_quick_starts():
    assert get_preset("medgemma-v1").max_new_tokens(False, True) == 1500
