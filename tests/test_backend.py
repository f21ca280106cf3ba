"""The transformers backend: batching equals one-by-one, stop strings, streaming, seeds, cancellation."""

from __future__ import annotations

import pytest
from PIL import Image

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.base import Completion
from medgemma_toolkit.errors import CapabilityError


def test_batched_equals_one_by_one(tiny_model):
    qs = ["Is there an effusion?", "Describe the heart size in this radiograph please.", "Edema?"]
    single = [tiny_model.ask(q, max_new_tokens=12).raw for q in qs]
    batched = [a.raw for a in tiny_model.ask_batch(qs, max_new_tokens=12)]
    assert batched == single


def test_batched_with_images_equals_one_by_one(tiny_model):
    imgs = [Image.new("RGB", (40, 30), (i * 60, 20, 200 - i * 50)) for i in range(3)]
    from medgemma_toolkit import Query

    single = [tiny_model.ask("Describe.", [im], max_new_tokens=8).raw for im in imgs]
    batched = [a.raw for a in tiny_model.ask_batch([Query("Describe.", [im]) for im in imgs], max_new_tokens=8)]
    assert batched == single


def test_stream_concatenates_to_final(tiny_model):
    req = tiny_model.request("Hello there", max_new_tokens=10)
    deltas, final = [], None
    for item in tiny_model.backend.stream(req):
        if isinstance(item, Completion):
            final = item
        else:
            deltas.append(item)
    assert final is not None and "".join(deltas) == final.text
    assert final.completion_tokens == 10 and final.finish_reason == "length"


def test_seeded_sampling_is_reproducible(tiny_model):
    a = tiny_model.ask("Hi", max_new_tokens=10, temperature=1.0, seed=7).raw
    b = tiny_model.ask("Hi", max_new_tokens=10, temperature=1.0, seed=7).raw
    assert a == b
    # ...and the seed and the temperature are honoured, not ignored: other seeds sample other text, and sampling at
    # temperature 1 over a random model's flat distribution leaves the greedy path.
    others = {tiny_model.ask("Hi", max_new_tokens=10, temperature=1.0, seed=s).raw for s in range(8)}
    assert len(others) > 1
    greedy = tiny_model.ask("Hi", max_new_tokens=10).raw
    assert any(o != greedy for o in others | {a})


def test_cancellation_stops_early(tiny_model):
    req = tiny_model.request("Hi", max_new_tokens=50)
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 3

    req.cancelled = cancelled
    c = tiny_model.backend.generate([req])[0]
    assert c.finish_reason == "cancelled" and c.completion_tokens < 50


def test_text_only_model_rejects_images(tiny_text_model_dir):
    mg = MedGemma.load(str(tiny_text_model_dir))
    assert not mg.backend.info.multimodal
    with pytest.raises(CapabilityError):
        mg.ask("Describe", [Image.new("RGB", (8, 8))])
    assert mg.ask("Hello", max_new_tokens=3).completion_tokens == 3


def test_scripted_stop_strings_and_thought(scripted_model_dir):
    mg = MedGemma.load(str(scripted_model_dir))
    a = mg.ask("Anything?")
    assert a.thought == "The heart is large." and a.text == "Cardiomegaly."
    assert a.finish_reason == "stop"
    cut = mg.ask("Anything?", stop=["large"])
    assert cut.raw == "<unused94>thought The heart is " and cut.finish_reason == "stop"
    # streamed with a stop string: deltas never include the stop text
    req = mg.request("Anything?", stop=["large"])
    pieces = [x for x in mg.backend.stream(req) if isinstance(x, str)]
    assert "".join(pieces) == cut.raw


def test_stream_deltas_add_up_even_with_split_utf8(tiny_model):
    # The random tiny model emits byte-fallback tokens that often form invalid or split UTF-8 sequences.
    for q in ["Hello there", "Describe the heart.", "Edema?", "Final Answer", "What is sepsis?", "x"]:
        req = tiny_model.request(q, max_new_tokens=24)
        items = list(tiny_model.backend.stream(req))
        final = items[-1]
        assert isinstance(final, Completion)
        assert "".join(i for i in items[:-1] if isinstance(i, str)) == final.text
