"""Tool calling in `serve`: the Gemma function-calling preset, the parser, and the official `openai` client's tool loop
against the real server on loopback (a scripted tiny checkpoint writes the call), plain, streamed and through
`--upstream`."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from test_serve import ONE_THREAD

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.prompts import tools as fc
from medgemma_toolkit.serve.launch import InProcessServer, ServerProcess
from medgemma_toolkit.testing.upstream import ScriptedUpstream

CALL = '[get_weather(city="Paris", unit="celsius")]'
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, CLOCK]


# -- the parser: what models really write ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ('[get_weather(city="Paris")]', [("get_weather", {"city": "Paris"})]),  # Google's documented form
        ('get_weather(city="Paris", unit="celsius")', [("get_weather", {"city": "Paris", "unit": "celsius"})]),
        ('get_weather("Oslo")', [("get_weather", {"city": "Oslo"})]),  # positional: the schema's order
        ("[get_weather(city='Rome'), get_time()]", [("get_weather", {"city": "Rome"}), ("get_time", {})]),
        ('```tool_code\nget_weather(city="Paris")\n```', [("get_weather", {"city": "Paris"})]),
        ("```tool_code\n[get_time()]\n```\nI will report back.", [("get_time", {})]),  # trailing text
        ('{"name": "get_weather", "parameters": {"city": "Lima"}}', [("get_weather", {"city": "Lima"})]),
        ('```json\n{"name": "get_weather", "arguments": {"city": "Kyiv"}}\n```', [("get_weather", {"city": "Kyiv"})]),
        ('Sure. {"name": "get_time", "parameters": {}} Done.', [("get_time", {})]),  # text around the JSON
        ('[{"name": "get_weather", "arguments": "{\\"city\\": \\"Quito\\"}"}]', [("get_weather", {"city": "Quito"})]),
        (
            "Let me check.\nget_weather(city='Bern', unit=\"celsius\")\nOne moment.",
            [("get_weather", {"city": "Bern", "unit": "celsius"})],
        ),
        ('get_weather(city="A", flag=true, n=null)', [("get_weather", {"city": "A", "flag": True, "n": None})]),
    ],
)
def test_parser_reads_calls(text, expected):
    p = fc.parse(text, TOOLS)
    assert p.error is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in p.calls] == expected
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in p.calls)


@pytest.mark.parametrize(
    "text, error",
    [
        ("The weather in Paris is mild (about 12 degrees).", False),
        ("You could call get_weather(city='Paris') yourself.", False),  # a mention inside prose is not a call
        ("[delete_everything(confirm=True)]", False),  # not an offered function
        ('{"name": "get_weather", "parameters": {"city": ', True),  # cut-off JSON
        ("```tool_code\nget_weather(city=Paris\n```", True),  # broken Python
        ('```tool_code\nget_weather(city=os.system("x"))\n```', True),  # not a literal: never evaluated
        ("[" * 8000, False),  # adversarial brackets: bounded work, no recursion error
        ("get_weather(" * 2000, False),
    ],
)
def test_parser_keeps_prose_and_flags_broken_calls(text, error):
    p = fc.parse(text, TOOLS)
    assert p.calls == [] and p.content == text.strip()
    assert (p.error is not None) is error


def test_named_choice_and_none():
    assert fc.parse(CALL, TOOLS, "none").calls == []
    named = {"type": "function", "function": {"name": "get_time"}}
    assert fc.parse(CALL, TOOLS, named).calls == []  # only the named function counts
    assert [c["function"]["name"] for c in fc.parse("get_time()", TOOLS, named).calls] == ["get_time"]
    assert "get_weather" not in fc.instruction(TOOLS, named) and "must call the function get_time" in fc.instruction(
        TOOLS, named
    )


def test_preset_rendering_is_pinned():
    """gemma3-functions@2 exactly (Google's documented instruction): changing this text is a new preset version."""
    assert (fc.PRESET_NAME, fc.PRESET_VERSION) == ("gemma3-functions", "2")
    assert fc.instruction([CLOCK], "required") == (
        "You have access to functions. If you decide to invoke any of the function(s),\n"
        "you MUST put it in the format of\n"
        "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n\n"
        "You SHOULD NOT include any other text in the response if you call a function\n"
        "You must call at least one of the functions before you answer.\n"
        '[\n  {\n    "name": "get_time",\n    "parameters": {\n      "type": "object",\n      "properties": {}\n'
        "    }\n  }\n]"
    )
    with pytest.raises(BadInput, match="unknown gemma3-functions version"):
        fc.instruction([CLOCK], version="9")


def test_version_1_stays_selectable():
    """gemma3-functions@1, our own wording, exactly."""
    assert fc.instruction([CLOCK], "required", version="1") == (
        "You can call functions. To call one or more, answer with nothing but a Python-style list of calls in the "
        "form\n[function_name(parameter_name=value, other_parameter=value), other_function(parameter=value)]\n"
        "Do not write any other text when you call a function.\n"
        "You must call at least one of the functions before you answer.\n"
        '[\n  {\n    "name": "get_time",\n    "parameters": {\n      "type": "object",\n      "properties": {}\n'
        "    }\n  }\n]"
    )
    assert fc.format_call("f", {"a": "x", "n": 2, "ok": True}) == 'f(a="x", n=2, ok=true)'
    assert fc.format_output(["r1", "r2"]) == "```tool_output\nr1\n```\n```tool_output\nr2\n```"


def test_rendered_prompt_follows_googles_layout(tiny_model):
    """Instruction, the functions as a JSON list, then the request, in the first user turn; calls written back as
    the call list; results as fenced tool_output in a user turn (Gemma has no tool role)."""
    from medgemma_toolkit.core.messages import Message, TextPart

    msgs = fc.render_messages(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21"},
            {"role": "user", "content": "And in Oslo?"},
        ],
        TOOLS,
    )
    prompt = tiny_model.preset.build(
        msgs[-1]["content"], [], history=[Message(m["role"], [TextPart(m["content"])]) for m in msgs[:-1]]
    )
    text = tiny_model.backend.render(prompt)
    first_user = text.split("<start_of_turn>user\n", 1)[1].split("<end_of_turn>", 1)[0]
    i_instr = first_user.index(fc.INSTRUCTION)
    i_defs = first_user.index(json.dumps(fc.function_defs(TOOLS), indent=2))
    i_request = first_user.index("Weather in Paris?")
    assert i_instr < i_defs < i_request
    assert '<start_of_turn>model\n[get_weather(city="Paris")]<end_of_turn>' in text
    assert "<start_of_turn>user\n```tool_output\nsunny, 21\n```\n\nAnd in Oslo?<end_of_turn>" in text


# -- the real server ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def call_model_dir(tiny_model_dir, tmp_path_factory):
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    return build_scripted_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("call") / "m", CALL, added_tokens=True)


@pytest.fixture(scope="module")
def server(call_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-tools") / "server.log"
    with ServerProcess(call_model_dir, log, "--served-model-name", "m", env=ONE_THREAD) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def weather(city: str, unit: str = "celsius") -> str:
    return json.dumps({"city": city, "temperature": 21, "unit": unit})


def test_openai_client_tool_loop(client):
    """The loop as OpenAI documents it, unchanged: call, run the tools, send the results back, until an answer."""
    messages: list = [{"role": "user", "content": "What is the weather in Paris?"}]
    run = {"get_weather": weather}
    rounds = []
    for step in range(3):
        # The scripted model always calls; the last round turns tools off, as agents do to force an answer.
        choice = "none" if step == 2 else "auto"
        r = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, tool_choice=choice)
        msg = r.choices[0].message
        rounds.append(r.choices[0].finish_reason)
        if not msg.tool_calls:
            break
        messages.append(msg)  # the client's own message object, echoed back as is
        for tc in msg.tool_calls:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": tc.id,
                    "content": run[tc.function.name](**json.loads(tc.function.arguments)),
                }
            )
    assert rounds == ["tool_calls", "tool_calls", "stop"]
    first_call = messages[1].tool_calls[0]
    assert first_call.type == "function" and first_call.function.name == "get_weather"
    assert json.loads(first_call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert msg.content == CALL and msg.tool_calls is None  # tools off: the text is content, nothing parsed


def test_streamed_tool_calls_have_openai_chunk_shape(client):
    """The client's own stream accumulator rebuilds the calls from our chunks."""
    with client.chat.completions.stream(
        model="m", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (tc,) = choice.message.tool_calls
    assert tc.function.name == "get_weather" and json.loads(tc.function.arguments)["city"] == "Paris"
    assert tc.id.startswith("call_")
    # and by hand: id, type and name come first, arguments after, all at index 0
    chunks = list(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS, stream=True
        )
    )
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0][0].id and deltas[0][0].function.name == "get_weather" and deltas[0][0].index == 0
    assert "".join(d[0].function.arguments or "" for d in deltas) == tc.function.arguments
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_bad_tool_requests_are_400(server):
    def post(body):
        return httpx.post(server.url + "/v1/chat/completions", json={"model": "m", **body}, timeout=60)

    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        ({"messages": msgs, "tool_choice": "required"}, "tool_choice"),
        (
            {"messages": msgs, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "not among tools",
        ),
        ({"messages": msgs, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"messages": msgs, "tools": [{"type": "retrieval"}]}, "tools"),
        (
            {
                "messages": [
                    *msgs,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": "{not json"}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": "x"},
                ],
                "tools": TOOLS,
            },
            "not valid JSON",
        ),
    ]
    for body, needle in cases:
        r = post(body)
        assert r.status_code == 400, (body, r.text)
        assert needle in r.json()["error"]["message"], r.text


def test_done_when_random_tiny_checkpoint_answers_200(tiny_model):
    """The random tiny checkpoint writes noise: still a 200 with a valid message (content or tool_calls)."""
    from medgemma_toolkit.serve import ServeConfig, create_app

    with InProcessServer(create_app(tiny_model, ServeConfig())) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(
            model=tiny_model.backend.info.name,
            messages=[{"role": "user", "content": "Weather?"}],
            tools=TOOLS,
            max_tokens=12,
        )
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert (choice.message.content is not None) or choice.message.tool_calls


def test_broken_call_is_stop_with_raw_text(tiny_model_dir, tmp_path):
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.serve import ServeConfig, create_app
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    broken = '{"name": "get_weather", "parameters": {"city": '
    mg = MedGemma.load(str(build_scripted_checkpoint(tiny_model_dir, tmp_path / "b", broken, added_tokens=True)))
    with InProcessServer(create_app(mg, ServeConfig(served_model_name="b"))) as srv:
        body = {"model": "b", "messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS}
        plain = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60).json()
        streamed = httpx.post(srv.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60).text
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert plain["choices"][0]["message"]["content"] == broken.strip()
    assert "tool_calls" not in plain["choices"][0]["message"]
    assert "not a valid call" in plain["medgemma"]["tool_parse_error"]
    assert plain["medgemma"]["tool_preset"] == "gemma3-functions@2"
    events = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == broken.strip()
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


# -- through --upstream --------------------------------------------------------------------------------------------
def _front(upstream_url: str, model: str):
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.serve import ServeConfig, create_app

    mg = MedGemma.load(model, backend="openai", upstream=upstream_url)
    return mg, InProcessServer(create_app(mg, ServeConfig(served_model_name="front")))


def test_upstream_passes_tools_natively_to_a_server_that_takes_them(server):
    """`serve --upstream` in front of another server with tools: the upstream parses, we pass the calls on."""
    mg, front = _front(server.url, "m")
    with front:
        c = openai.OpenAI(base_url=front.url + "/v1", api_key="none", max_retries=0, timeout=120)
        r = c.chat.completions.create(model="front", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments)["city"] == "Paris"
    assert mg.backend.native_tools is True


def test_upstream_without_tools_falls_back_to_our_prompt_and_parser():
    """In front of a server without tool support (vLLM started without a tool parser: `tools` is a 400), we send
    our own tool prompt and parse the text it streams back."""
    with ScriptedUpstream(CALL, model="plain", piece=10, tools=False) as up:
        mg, front = _front(up.url.removesuffix("/v1"), "plain")
        with front:
            c = openai.OpenAI(base_url=front.url + "/v1", api_key="none", max_retries=0, timeout=120)
            for _ in range(2):
                r = c.chat.completions.create(
                    model="front", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS
                )
                assert r.choices[0].finish_reason == "tool_calls"
                assert json.loads(r.choices[0].message.tool_calls[0].function.arguments)["city"] == "Paris"
    assert mg.backend.native_tools is False
    # tools offered once, refused; then (and for the next request) our rendered prompt with the instruction
    assert ["tools" in b for b in up.requests] == [True, False, False]
    assert up.requests[1]["messages"][0]["content"].startswith(fc.INSTRUCTION)


def test_two_calls_and_parallel_tool_calls_false(tiny_model_dir, tmp_path):
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.serve import ServeConfig, create_app
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    two = '[get_weather(city="Rome"), get_time()]'
    mg = MedGemma.load(str(build_scripted_checkpoint(tiny_model_dir, tmp_path / "two", two, added_tokens=True)))
    with InProcessServer(create_app(mg, ServeConfig(served_model_name="two"))) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        msgs = [{"role": "user", "content": "Weather and time?"}]
        both = c.chat.completions.create(model="two", messages=msgs, tools=TOOLS).choices[0].message.tool_calls
        one = c.chat.completions.create(model="two", messages=msgs, tools=TOOLS, parallel_tool_calls=False)
        with c.chat.completions.stream(model="two", messages=msgs, tools=TOOLS) as s:
            streamed = s.get_final_completion().choices[0].message.tool_calls
    assert [t.function.name for t in both] == ["get_weather", "get_time"] and len({t.id for t in both}) == 2
    assert [t.function.name for t in one.choices[0].message.tool_calls] == ["get_weather"]
    assert [(t.function.name, json.loads(t.function.arguments)) for t in streamed] == [
        ("get_weather", {"city": "Rome"}),
        ("get_time", {}),
    ]
