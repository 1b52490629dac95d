"""Structured outputs and tool calls through the real `openai` SDK against the real binary and
SmolLM2: every constrained reply must parse and validate (the `jsonschema` package is the
independent judge), across the base model and the three demo adapters in one concurrent burst;
tool calls (`required`, a named function, streamed and not) must carry arguments valid under the
tool's schema; unconstrained rows batched with constrained ones must give exactly what they give
alone; unsupported grammars are a 400 naming the problem."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import KEY_ARGS, launch_server, stop_server, wait_ready

ADAPTERS = ["french", "pirate", "shouty"]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["captain", "cook", "sailor"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "skills"],
    "additionalProperties": False,
}

INVENTORY = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["rope", "sail", "barrel"]},
                    "count": {"type": "integer", "minimum": 1, "maximum": 99},
                    "fragile": {"type": "boolean"},
                },
                "required": ["kind", "count", "fragile"],
                "additionalProperties": False,
            },
        },
        "port": {"type": "string", "maxLength": 20},
    },
    "required": ["items", "port"],
    "additionalProperties": False,
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}

TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current local time in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 30}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}

TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER_TOOL, TIME_TOOL)}


def user(prompt):
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]


def schema_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_json_schema_burst_across_adapters(server, base_model):
    """20 concurrent constrained requests over base + 3 adapters, seeded sampling and greedy."""
    models = [base_model, *ADAPTERS]
    cases = [
        ("Describe a ship's captain as JSON.", "person", PERSON),
        ("List what the ship carries, as JSON.", "inventory", INVENTORY),
    ]

    async def one(i, client):
        prompt, name, schema = cases[i % 2]
        r = await client.chat.completions.create(
            model=models[i % 4],
            messages=user(prompt),
            response_format=schema_format(name, schema),
            max_tokens=400,
            temperature=0 if i % 3 == 0 else 0.8,
            seed=i,
        )
        return i, schema, r

    async def burst():
        async with server.async_client() as client:
            return await asyncio.gather(*(one(i, client) for i in range(20)))

    for i, schema, r in asyncio.run(burst()):
        c = r.choices[0]
        assert c.finish_reason == "stop", (i, c.finish_reason, c.message.content)
        value = json.loads(c.message.content)
        jsonschema.validate(value, schema)
        assert r.usage.completion_tokens > 0


def test_json_object_replies_parse(client, base_model):
    # Free-form JSON has unbounded strings: a 135M model left greedy may repeat itself to
    # max_tokens (then the reply is a cut prefix, finish_reason "length"); a frequency penalty
    # keeps these greedy replies short.
    for model in [base_model, "pirate", "french"]:
        r = client.chat.completions.create(
            model=model,
            messages=user("Give me a JSON object describing a cat."),
            response_format={"type": "json_object"},
            max_tokens=300,
            temperature=0,
            frequency_penalty=0.5,
        )
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        assert isinstance(json.loads(r.choices[0].message.content), dict)


class Ship(BaseModel):
    name: str = Field(max_length=24)
    crew: int = Field(ge=1, le=500)
    flag: str = Field(max_length=16)


def test_sdk_parse_helper_with_pydantic(client):
    r = client.chat.completions.parse(
        model="pirate",
        messages=user("Describe your ship."),
        response_format=Ship,
        max_tokens=200,
        temperature=0,
    )
    msg = r.choices[0].message
    assert isinstance(msg.parsed, Ship), msg.content
    assert Ship.model_validate_json(msg.content) == msg.parsed


def test_completions_response_format(client, base_model):
    r = client.completions.create(
        model=base_model,
        prompt="A person, as JSON: ",
        max_tokens=300,
        temperature=0,
        extra_body={"response_format": schema_format("person", PERSON)},
    )
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)


def test_vllm_guided_extensions(client, base_model):
    r = client.chat.completions.create(
        model=base_model, messages=user("Is the sea wet?"), max_tokens=10, temperature=0,
        extra_body={"guided_choice": ["yes", "no", "maybe"]},
    )
    assert r.choices[0].message.content in ("yes", "no", "maybe")
    r = client.chat.completions.create(
        model="french", messages=user("A date please."), max_tokens=20, temperature=0.7, seed=3,
        extra_body={"guided_regex": r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]"},
    )
    assert re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]", r.choices[0].message.content)
    r = client.chat.completions.create(
        model=base_model, messages=user("A number."), max_tokens=20, temperature=0,
        extra_body={"structured_outputs": {"grammar": 'start: "n=" /[0-9]{1,3}/'}},
    )
    assert re.fullmatch(r"n=[0-9]{1,3}", r.choices[0].message.content)
    r = client.chat.completions.create(
        model=base_model, messages=user("A person."), max_tokens=300, temperature=0,
        extra_body={"guided_json": PERSON},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"response_format": schema_format("x", {"type": "object", "if": {"required": ["a"]}, "then": {}})}, "if"),
        ({"response_format": {"type": "xml"}}, "xml"),
        ({"response_format": {"type": "json_schema"}}, "json_schema"),
        ({"guided_regex": "(unclosed"}, "guided_regex"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_json": {"type": "object"}, "guided_regex": "a"}, "conflicts"),
        ({"tool_choice": "required"}, "tools"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
        ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "retrieval"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_unsupported_structured_requests_are_400(server, base_model, body, needle):
    r = server.http.post(
        "/v1/chat/completions",
        headers={"Authorization": "Bearer sk-test-alice"},
        json={"model": base_model, "messages": user("hi"), "max_tokens": 5, **body},
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert needle in err["message"] + (err.get("param") or ""), err


def check_calls(calls, names):
    assert calls, "no tool calls"
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        assert c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), TOOL_SCHEMAS[c.function.name])
    assert len({c.id for c in calls}) == len(calls)


def stream_calls(stream):
    """Accumulates streamed tool-call deltas -> (calls by index, content, finish_reason)."""
    calls, content, finish = {}, "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        content += ch.delta.content or ""
        for d in ch.delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = d.id or c["id"]
            if d.function:
                c["name"] += d.function.name or ""
                c["arguments"] += d.function.arguments or ""
        finish = ch.finish_reason or finish
    return calls, content, finish


@pytest.mark.parametrize("model", ["SmolLM2-135M-Instruct", "pirate"])
def test_tool_choice_required_and_named(client, base_model, model):
    model = base_model if model.startswith("SmolLM2") else model
    tools = [WEATHER_TOOL, TIME_TOOL]
    msgs = user("What's the weather in Paris?")
    r = client.chat.completions.create(model=model, messages=msgs, tools=tools, tool_choice="required",
                                       max_tokens=200, temperature=0)
    assert r.choices[0].finish_reason == "tool_calls"
    check_calls(r.choices[0].message.tool_calls, {"get_weather", "get_time"})
    named = {"type": "function", "function": {"name": "get_time"}}
    r = client.chat.completions.create(model=model, messages=msgs, tools=tools, tool_choice=named,
                                       max_tokens=200, temperature=0.8, seed=5)
    calls = r.choices[0].message.tool_calls
    check_calls(calls, {"get_time"})
    assert len(calls) == 1
    # Streamed: the same calls arrive as tool-call deltas.
    for choice in ["required", named]:
        stream = client.chat.completions.create(model=model, messages=msgs, tools=tools, tool_choice=choice,
                                                max_tokens=200, temperature=0, stream=True)
        calls, content, finish = stream_calls(stream)
        assert finish == "tool_calls", (calls, content)
        assert content.strip() == ""
        for c in calls.values():
            assert c["id"].startswith("call_")
            jsonschema.validate(json.loads(c["arguments"]), TOOL_SCHEMAS[c["name"]])
        if choice is named:
            assert [c["name"] for c in calls.values()] == ["get_time"]


def test_tool_round_trip(client, base_model):
    msgs = user("What's the weather in Paris?")
    r = client.chat.completions.create(model=base_model, messages=msgs, tools=[WEATHER_TOOL],
                                       tool_choice="required", max_tokens=200, temperature=0)
    call = r.choices[0].message.tool_calls[0]
    msgs.append(r.choices[0].message.model_dump(exclude_none=True))
    msgs.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 18, "sky": "sunny"})})
    final = client.chat.completions.create(model=base_model, messages=msgs, tools=[WEATHER_TOOL],
                                           max_tokens=60, temperature=0)
    c = final.choices[0]
    assert c.finish_reason in ("stop", "length", "tool_calls")
    assert (c.message.content or "").strip() or c.message.tool_calls
    # The tool result reached the prompt: the same turn without it is a different, shorter prompt.
    without = client.chat.completions.create(model=base_model, messages=msgs[:-1], tools=[WEATHER_TOOL],
                                             max_tokens=1, temperature=0)
    assert final.usage.prompt_tokens > without.usage.prompt_tokens


def test_auto_tool_choice_is_served_and_parsed(client, base_model):
    r = client.chat.completions.create(model=base_model, messages=user("What's the weather in Rome?"),
                                       tools=[WEATHER_TOOL], max_tokens=80, temperature=0)
    c = r.choices[0]
    if c.message.tool_calls:
        assert c.finish_reason == "tool_calls"
        check_calls(c.message.tool_calls, {"get_weather"})
    else:
        assert c.finish_reason in ("stop", "length") and c.message.content


def test_legacy_functions(client, base_model):
    r = client.chat.completions.create(
        model=base_model, messages=user("Weather in Oslo?"), max_tokens=200, temperature=0,
        functions=[WEATHER_TOOL["function"]], function_call={"name": "get_weather"},
    )
    c = r.choices[0]
    assert c.finish_reason == "function_call"
    assert c.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(c.message.function_call.arguments), TOOL_SCHEMAS["get_weather"])


def test_free_rows_unchanged_by_constrained_neighbours(server, base_model):
    """Greedy free requests give the same text alone and in a burst with constrained ones."""
    free = [(m, p) for m, p in zip([base_model, "pirate", "french", "shouty"],
                                   ["Tell me about ships.", "Say hello.", "What is bread?", "Name a color."])]

    async def run_mixed():
        async with server.async_client() as client:
            jobs = [client.chat.completions.create(model=m, messages=user(p), max_tokens=24, temperature=0)
                    for m, p in free]
            jobs += [client.chat.completions.create(
                    model=[base_model, *ADAPTERS][i % 4], messages=user("A person as JSON."),
                    response_format=schema_format("person", PERSON), max_tokens=200, temperature=0.7, seed=i)
                     for i in range(4)]
            out = await asyncio.gather(*jobs)
            return [r.choices[0].message.content for r in out[: len(free)]]

    client = server.client()
    alone = [client.chat.completions.create(model=m, messages=user(p), max_tokens=24, temperature=0)
             .choices[0].message.content for m, p in free]
    mixed = asyncio.run(run_mixed())
    assert mixed == alone


def test_parallel_tool_calls_false_gives_one_call(client, base_model):
    r = client.chat.completions.create(model="french", messages=user("Weather in Paris and time in Tokyo?"),
                                       tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=200, temperature=0.9, seed=11)
    calls = r.choices[0].message.tool_calls
    check_calls(calls, {"get_weather", "get_time"})
    assert len(calls) == 1


def test_llama3_json_tool_call_parser(tmp_path):
    """`--tool-call-parser llama3_json`: calls constrained to and parsed from bare JSON objects."""
    srv = wait_ready(launch_server(tmp_path, KEY_ARGS + ["--tool-call-parser", "llama3_json"]))
    try:
        client = srv.client()
        msgs = user("Weather in Paris?")
        r = client.chat.completions.create(model=srv.base_model, messages=msgs, tools=[WEATHER_TOOL, TIME_TOOL],
                                           tool_choice="required", max_tokens=200, temperature=0)
        assert r.choices[0].finish_reason == "tool_calls"
        check_calls(r.choices[0].message.tool_calls, {"get_weather", "get_time"})
        stream = client.chat.completions.create(model=srv.base_model, messages=msgs, tools=[WEATHER_TOOL],
                                                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                                max_tokens=200, temperature=0, stream=True)
        calls, content, finish = stream_calls(stream)
        assert finish == "tool_calls" and content == ""
        assert [c["name"] for c in calls.values()] == ["get_weather"]
        jsonschema.validate(json.loads(calls[0]["arguments"]), TOOL_SCHEMAS["get_weather"])
    finally:
        stop_server(srv)
