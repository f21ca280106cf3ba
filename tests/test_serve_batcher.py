"""The dynamic batcher in-process, on the real tiny model: batching, cancellation, timeouts, worker survival."""

from __future__ import annotations

import asyncio

import pytest

from medgemma_toolkit.core.messages import Prompt
from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.serve.batcher import Batcher, Cancelled, Delta, Done, Failed, Job, JobEvent


def unpack(event: JobEvent) -> tuple[str, object]:
    """The typed event as (kind, value), for short assertions."""
    if isinstance(event, Delta):
        return "delta", event.text
    if isinstance(event, Done):
        return "done", event.completion
    if isinstance(event, Failed):
        return "error", event.error
    assert isinstance(event, Cancelled)
    return "cancelled", None


async def drain(job: Job) -> tuple[str, object, list[str]]:
    deltas: list[str] = []
    while True:
        kind, value = unpack(await asyncio.wait_for(job.events.get(), timeout=120))
        if kind == "delta":
            deltas.append(value)  # type: ignore[arg-type]
        else:
            return kind, value, deltas


@pytest.fixture
def batcher(tiny_model):
    sizes: list[int] = []
    b = Batcher(tiny_model.backend, max_batch_size=4, window_s=2.0, on_batch=lambda n, _s: sizes.append(n))
    b.sizes = sizes  # type: ignore[attr-defined]
    yield b
    b.stop()


def test_announced_requests_form_one_batch_with_the_same_answers(tiny_model, batcher):
    questions = ["Is the heart enlarged?", "Any effusion?", "Describe the lungs.", "Normal?"]
    reqs = [tiny_model.request(q, max_new_tokens=6) for q in questions]

    async def main():
        for _ in reqs:
            batcher.expect()  # four requests are being parsed ...
        jobs = []
        for r in reqs:  # ... and arrive one by one: the worker waits for all four
            jobs.append(batcher.submit(r, timeout_s=120))
            await asyncio.sleep(0.01)
        return [await drain(j) for j in jobs]

    results = asyncio.run(main())
    assert batcher.sizes == [4]
    for q, (kind, c, deltas) in zip(questions, results):
        assert kind == "done"
        alone = tiny_model.backend.generate([tiny_model.request(q, max_new_tokens=6)])[0]
        assert c.text == alone.text and c.completion_tokens == alone.completion_tokens
        # The streamed deltas add up to the final text. (Not checked for text with U+FFFD: the random tiny model
        # emits invalid UTF-8 byte runs whose decoding changes as bytes arrive; real models emit valid UTF-8.)
        if "\ufffd" not in c.text:
            assert "".join(deltas) == c.text
    assert sum("\ufffd" not in c.text for _, c, _ in results) >= 1


def test_lone_request_does_not_wait_for_unannounced_company(tiny_model, batcher):
    async def main():
        return await drain(batcher.submit(tiny_model.request("hi", max_new_tokens=3), timeout_s=120, announced=False))

    kind, c, _ = asyncio.run(main())
    assert kind == "done" and batcher.sizes == [1]


def test_cancel_mid_generation_stops_decoding(tiny_model, batcher):
    async def main():
        job = batcher.submit(
            tiny_model.request("Write a long report.", max_new_tokens=3000), timeout_s=120, announced=False
        )
        while True:
            kind, value = unpack(await asyncio.wait_for(job.events.get(), timeout=120))
            if kind == "delta":
                job.cancel()  # the client went away after the first piece
                continue
            return kind, value

    kind, c = asyncio.run(main())
    assert kind == "done" and c.finish_reason == "cancelled"
    assert c.completion_tokens < 3000


def test_cancelled_or_expired_jobs_never_reach_the_model(tiny_model, batcher):
    async def main():
        gone = batcher.submit(tiny_model.request("a", max_new_tokens=3), timeout_s=120, announced=False)
        gone.cancel()
        expired = batcher.submit(tiny_model.request("b", max_new_tokens=3), timeout_s=0.0, announced=False)
        return await drain(gone), await drain(expired)

    (k1, _, _), (k2, _, _) = asyncio.run(main())
    # Either the worker saw them both cancelled in one take, or one at a time: no batch ran either way.
    assert k1 == "cancelled" and k2 == "cancelled"
    assert batcher.sizes == []


def test_worker_survives_a_failing_batch(tiny_model, batcher):
    broken = tiny_model.request("fine", max_new_tokens=2)
    broken.prompt = Prompt(text="<start_of_image> no image given", images=[])  # the backend refuses this

    async def main():
        bad = await drain(batcher.submit(broken, timeout_s=120, announced=False))
        good = await drain(batcher.submit(tiny_model.request("ok", max_new_tokens=2), timeout_s=120, announced=False))
        return bad, good

    (kind, err, _), (kind2, c, _) = asyncio.run(main())
    assert kind == "error" and isinstance(err, BadInput)
    assert kind2 == "done" and c.completion_tokens >= 1


def test_request_timeout_is_a_504_and_the_app_stays_usable(tiny_model):
    """The whole app in-process (ASGI transport): a request over its time budget is stopped and answered 504."""
    import httpx

    from medgemma_toolkit.serve import ServeConfig, create_app

    app = create_app(tiny_model, ServeConfig(request_timeout_s=2.0))  # 3000 tokens take far longer; 2 do not

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            slow = await c.post(
                "/v1/chat/completions",
                timeout=120,
                json={
                    "model": app.state.model_id,
                    "max_tokens": 3000,
                    "messages": [{"role": "user", "content": "Go on."}],
                },
            )
            quick = await c.post(
                "/v1/chat/completions",
                timeout=120,
                json={"model": app.state.model_id, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi."}]},
            )
            metrics = (await c.get("/metrics")).text
        return slow, quick, metrics

    try:
        slow, quick, metrics = asyncio.run(main())
    finally:
        app.state.batcher.stop()
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout"
    assert "timeout" in slow.json()["error"]["message"]
    assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] <= 2
    assert "medgemma_requests_cancelled_total 1" in metrics


def test_a_failing_row_fails_alone_and_its_batch_mates_get_their_answers(tiny_model, batcher):
    """Batch poisoning: one request the backend refuses, batched with five good ones, fails by itself."""
    questions = ["Is the heart enlarged?", "Any effusion?", "Describe the lungs.", "Normal?", "Fracture?"]
    broken = tiny_model.request("fine", max_new_tokens=2)
    broken.prompt = Prompt(text="<start_of_image> no image given", images=[])  # the backend refuses this
    b = Batcher(tiny_model.backend, max_batch_size=6, window_s=2.0)

    async def main():
        reqs = [tiny_model.request(q, max_new_tokens=4) for q in questions]
        reqs.insert(2, broken)
        for _ in reqs:
            b.expect()
        jobs = [b.submit(r, timeout_s=120) for r in reqs]
        return [await drain(j) for j in jobs]

    try:
        results = asyncio.run(main())
    finally:
        b.stop()
    kinds = [k for k, _, _ in results]
    assert kinds == ["done", "done", "error", "done", "done", "done"]
    assert isinstance(results[2][1], BadInput)
    good = [(c, deltas) for k, c, deltas in results if k == "done"]
    alone = [tiny_model.backend.generate([tiny_model.request(q, max_new_tokens=4)])[0] for q in questions]
    assert [c.text for c, _ in good] == [c.text for c in alone]
    # Rows that streamed before the batch failed resume after what they sent: no text twice, none lost.
    for c, deltas in good:
        if "\ufffd" not in c.text:
            assert "".join(deltas) == c.text


def test_prompt_token_count_matches_what_the_model_is_fed(tiny_model):
    """The pre-batch context check counts what the processor really builds (images expanded), not an estimate."""
    from PIL import Image

    img = Image.effect_noise((80, 64), 70).convert("RGB")
    for question, images in (("Is the heart enlarged?", []), ("Describe this X-ray.", [img]), ("Both?", [img, img])):
        req = tiny_model.request(question, images, max_new_tokens=1)
        fed = tiny_model.backend.generate([req])[0].prompt_tokens
        assert tiny_model.backend.count_prompt_tokens(req.prompt) == fed
    assert tiny_model.backend.context_length() == 4096  # the tiny checkpoint's max_position_embeddings
