"""Property-based fuzzing of every endpoint of the real server (issue 12).

Hypothesis generates well over 1,000 requests: malformed JSON, wrong types, extreme numbers, huge
and deeply nested bodies, invalid UTF-8, long stop lists, unknown fields, wrong methods and
unknown routes. For every one: no 5xx, and every error is OpenAI-shaped
(`{"error": {"message", "type", "param", "code"}}`). Afterwards the server still answers a
normal request correctly, and `/health` stays under 100 ms while 4 MB chat bodies are being
rejected concurrently (templating and tokenizing run off the async workers, after a size bound).
Valid generations use max_tokens 1-2 so the suite stays short.
"""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ADMIN, ALICE

SENT = {"n": 0}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
BASELINE: dict = {}
FUZZ = settings(
    max_examples=220,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
# A string the server would read as a hub id (`org/name`) would be downloaded: never sent.
HUB_ID = re.compile(r"^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+(@.*)?$")


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def check(r: httpx.Response, what: object) -> None:
    """No 5xx; an error is OpenAI-shaped JSON."""
    SENT["n"] += 1
    assert r.status_code < 500, f"{r.status_code} for {what!r:.300}: {r.text[:500]}"
    if r.status_code < 400:
        return
    try:
        body = r.json()
    except ValueError:
        pytest.fail(f"{r.status_code} is not JSON for {what!r:.300}: {r.text[:300]!r}")
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict), f"{r.status_code} not OpenAI-shaped: {body}"
    for k in ("message", "type", "param", "code"):
        assert k in err, f"`{k}` missing from {body}"
    assert isinstance(err["message"], str) and isinstance(err["type"], str), body


def post(http: httpx.Client, path: str, content: bytes, key: str = ALICE) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return http.post(path, content=content, headers=headers)


# ---- strategies -------------------------------------------------------------------------------

extreme_ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63)]),
)
extreme_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-320, 1e308, -1e308, 2.5, 1e6]),
)
scalars = st.one_of(st.none(), st.booleans(), extreme_ints, extreme_floats, st.text(max_size=40))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
content = st.one_of(
    st.text(max_size=60),
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]), "text": st.text(max_size=20)}), max_size=3),
    json_values,
)
message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "system", "assistant", "developer", "tool", ""]), json_values)},
    optional={"content": content, "name": json_values, "extra": json_values},
)
stop = st.one_of(
    st.text(max_size=10),
    st.lists(st.text(max_size=10), max_size=8),
    st.lists(st.text(min_size=1, max_size=3), min_size=50, max_size=200),
    json_values,
)
common_optional = {
    "max_tokens": st.one_of(st.integers(1, 2), extreme_ints, json_values),
    "max_completion_tokens": st.one_of(st.integers(1, 2), extreme_ints),
    "temperature": st.one_of(extreme_floats, json_values),
    "top_p": extreme_floats,
    "top_k": extreme_ints,
    "min_p": extreme_floats,
    "seed": extreme_ints,
    "n": extreme_ints,
    "presence_penalty": extreme_floats,
    "frequency_penalty": extreme_floats,
    "repetition_penalty": extreme_floats,
    "stop": stop,
    "stream": st.one_of(st.booleans(), json_values),
    "stream_options": json_values,
    "logprobs": st.one_of(st.booleans(), extreme_ints, json_values),
    "top_logprobs": extreme_ints,
    "adapters": json_values,
    "user": json_values,
    "unknown_field": json_values,
    "tools": json_values,
    "response_format": json_values,
}


def model_names(server):
    return st.one_of(
        st.just(server.base_model),
        st.sampled_from(server.demo_adapters),
        st.text(max_size=30),
        json_values,
    )


def small_generation(body: dict) -> dict:
    """Keeps a request that may be valid cheap: at most 2 tokens."""
    for k in ("max_tokens", "max_completion_tokens"):
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 2:
            body[k] = 2
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = 1
    return body


# ---- the endpoints that generate ------------------------------------------------------------------


def ask(client, base_model) -> str:
    r = client.chat.completions.create(model=base_model, messages=QUESTION, max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length"), r
    return r.choices[0].message.content


def test_baseline_answer_before_fuzzing(client, base_model):
    BASELINE["answer"] = ask(client, base_model)
    assert BASELINE["answer"], "an empty greedy answer"



def test_chat_completions_fuzzed(server, http):
    @FUZZ
    @given(
        st.fixed_dictionaries(
            {"model": model_names(server), "messages": st.one_of(st.lists(message, max_size=4), json_values)},
            optional=common_optional,
        )
    )
    def run(body):
        small_generation(body)
        check(post(http, "/v1/chat/completions", json.dumps(body).encode()), body)

    run()


def test_completions_fuzzed(server, http):
    prompt = st.one_of(
        st.text(max_size=60),
        st.lists(st.text(max_size=10), max_size=20),
        st.lists(extreme_ints, max_size=10),
        st.lists(st.lists(st.integers(-5, 60000), max_size=5), max_size=20),
        json_values,
    )
    optional = dict(common_optional, echo=json_values, suffix=json_values, best_of=extreme_ints)

    @FUZZ
    @given(st.fixed_dictionaries({"model": model_names(server), "prompt": prompt}, optional=optional))
    def run(body):
        small_generation(body)
        check(post(http, "/v1/completions", json.dumps(body).encode()), body)

    run()


# ---- raw bytes: malformed JSON, invalid UTF-8, nesting --------------------------------------------

GENERATE = ["/v1/chat/completions", "/v1/completions"]
ADMIN_POST = ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]


def test_malformed_bodies_to_every_post_endpoint(server, http):
    raw = st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        # invalid UTF-8 inside an otherwise valid request
        st.binary(min_size=1, max_size=20).map(
            lambda b: b'{"model": "' + server.base_model.encode() + b'", "messages": [{"role": "user", "content": "'
            + b"\xff\xfe" + b.replace(b'"', b"").replace(b"\\", b"") + b'"}], "max_tokens": 1}'
        ),
        # truncated JSON
        st.integers(1, 60).map(lambda n: json.dumps({"model": server.base_model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})[:n].encode()),
        # NaN / Infinity literals and duplicate keys
        st.sampled_from([b'{"temperature": NaN}', b'{"max_tokens": Infinity}', b'{"model": 1, "model": 2}', b"null", b"[]", b'""', b"0"]),
        # deep nesting
        st.integers(100, 5000).map(lambda d: b"[" * d + b"]" * d),
        st.integers(100, 5000).map(lambda d: b'{"messages": ' + b'{"a": ' * d + b"1" + b"}" * d + b"}"),
    )

    @FUZZ
    @given(st.sampled_from(GENERATE + ADMIN_POST), raw)
    def run(path, content):
        key = ADMIN if path in ADMIN_POST else ALICE
        check(post(http, path, content, key), (path, content[:100]))

    run()


# ---- admin endpoints ---------------------------------------------------------------------------------


def test_admin_endpoints_fuzzed(server, http):
    name = st.one_of(st.text(max_size=30).map(lambda s: "fuzz-" + s), json_values)
    path = st.one_of(
        st.text(max_size=40).map(lambda s: "/nonexistent-fuzz/" + s),
        st.sampled_from(["", ".", "..", "/", "/etc/passwd", "/dev/zero", "/proc/self/mem", "\x00", "a" * 5000]),
        json_values,
    )

    @FUZZ
    @given(
        st.sampled_from(ADMIN_POST),
        st.fixed_dictionaries({}, optional={"lora_name": name, "lora_path": path, "load_inplace": json_values, "extra": json_values}),
        st.sampled_from([ADMIN, ALICE, "", "wrong"]),
    )
    def run(endpoint, body, key):
        if isinstance(body.get("lora_path"), str) and HUB_ID.match(body["lora_path"]):
            body["lora_path"] = "/nonexistent-fuzz/x"
        check(post(http, endpoint, json.dumps(body).encode(), key), (endpoint, body))

    run()


# ---- GET endpoints, unknown routes, wrong methods ---------------------------------------------------


def test_gets_routes_and_methods_fuzzed(server, http):
    paths = st.one_of(
        st.sampled_from(["/v1/models", "/v1/adapters", "/health", "/ready", "/metrics", "/v1/receipts/x"]),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#?%"), max_size=60).map(
            lambda s: "/v1/receipts/" + s
        ),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#?%"), max_size=40).map(
            lambda s: "/" + s
        ),
    )

    @FUZZ
    @given(
        st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        paths,
        st.sampled_from([ALICE, ADMIN, "", "bogus"]),
        st.binary(max_size=50),
    )
    def run(method, path, key, content):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = http.request(method, path, content=content if method != "GET" else None, headers=headers)
        check(r, (method, path))

    run()


def test_huge_bodies_are_rejected_cleanly(server, http):
    """Over the 4 MiB body limit (413) and just under it (rejected by the prompt size bound)."""
    word = "lorem ipsum "
    under = json.dumps(
        {"model": server.base_model, "messages": [{"role": "user", "content": word * (3_900_000 // len(word))}], "max_tokens": 1}
    ).encode()
    over = json.dumps({"model": server.base_model, "prompt": "x" * (5 << 20), "max_tokens": 1}).encode()
    stops = json.dumps(
        {"model": server.base_model, "prompt": "hi", "max_tokens": 1, "stop": ["s" * 100_000] * 4}
    ).encode()
    many = json.dumps({"model": server.base_model, "prompt": [[1]] * 100_000, "max_tokens": 1}).encode()
    for path, content in [("/v1/chat/completions", under), ("/v1/completions", over), ("/v1/chat/completions", over),
                          ("/v1/completions", many), ("/v1/load_lora_adapter", over)]:
        r = post(http, path, content, ADMIN if "lora" in path else ALICE)
        check(r, (path, len(content)))
        assert r.status_code in (400, 413), (path, r.status_code, r.text[:300])
    # Long stop strings: refused or served, never a server error.
    check(post(http, "/v1/completions", stops), "long stop strings")


# ---- afterwards ---------------------------------------------------------------------------------------


def test_health_stays_fast_while_large_bodies_are_rejected(server, http):
    word = "lorem ipsum "
    big = json.dumps(
        {"model": server.base_model, "messages": [{"role": "user", "content": word * (4_000_000 // len(word))}], "max_tokens": 1}
    ).encode()
    assert len(big) < 4 << 20
    stop = threading.Event()
    statuses: list[int] = []

    def hammer():
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                statuses.append(post(c, "/v1/chat/completions", big).status_code)

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        latencies = []
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for _ in range(30):
                t = time.perf_counter()
                assert c.get("/health").status_code == 200
                latencies.append(time.perf_counter() - t)
                time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join()
    SENT["n"] += len(statuses) + 30
    assert statuses and all(s == 400 for s in statuses), statuses
    latencies.sort()
    assert latencies[-1] < 0.1, f"/health took up to {latencies[-1] * 1000:.0f} ms (p50 {latencies[15] * 1000:.1f} ms)"


def test_server_still_answers_correctly_after_fuzzing(server, http, client, base_model):
    assert SENT["n"] >= 1000, f"only {SENT['n']} fuzzed requests were sent"
    server.assert_alive()
    # Greedy: the same answer as before the fuzzing.
    assert ask(client, base_model) == BASELINE["answer"]
    names = {m.id for m in client.models.list().data}
    assert set(server.demo_adapters) <= names, "the fuzzer unloaded a demo adapter"
