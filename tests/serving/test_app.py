"""The OpenAI-compatible routes on a live Serve application (tiny model, vLLM async engine)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.serving.conftest import (
    API_KEY,
    MAX_TOKENS,
    check_stop_sequences,
    generator_stats,
    make_adapter,
)

USER = [{"role": "user", "content": "I feel anxious about my job."}]


@pytest.fixture
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=f"{served.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_health_and_models(served, client, http):
    assert http.get("/health").json()["status"] == "ok"
    cards = {m.id: m for m in client.models.list().data}
    assert {"base", "m0", "current"} <= set(cards)
    newest = max((n for n in cards if n.startswith("m")), key=lambda n: int(n[1:]))
    assert cards["current"].alias_of == newest
    # One card, as `models.retrieve` asks for it: the same as in the list.
    assert client.models.retrieve("current").alias_of == newest
    assert client.models.retrieve("m0").id == "m0" and client.models.retrieve("m0").alias_of is None
    assert http.get("/v1/models/m9").status_code == 404


def test_chat_with_openai_client_uses_task_prompt(served, client):
    from transformers import AutoTokenizer

    from esevo_ray.prompts import task_messages

    out = client.chat.completions.create(model="m0", messages=USER, max_tokens=8, seed=3)
    assert out.object == "chat.completion" and out.model == "m0"
    assert isinstance(out.choices[0].message.content, str)
    assert out.choices[0].finish_reason in ("stop", "length")
    assert 1 <= out.usage.completion_tokens <= 8
    # No system message: P_task is put first, exactly as in training and evaluation.
    tok = AutoTokenizer.from_pretrained(served.base)
    text = tok.apply_chat_template(task_messages(USER), tokenize=False, add_generation_prompt=True)
    assert out.usage.prompt_tokens == len(tok.encode(text, add_special_tokens=False))
    own = [{"role": "system", "content": "Be brief."}, *USER]
    out2 = client.chat.completions.create(model="base", messages=own, max_tokens=4)
    assert out2.usage.prompt_tokens < out.usage.prompt_tokens


def test_streaming_with_openai_client(client, http):
    stream = client.chat.completions.create(
        model="current",
        messages=USER,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert usage is not None and 1 <= usage.completion_tokens <= 12
    assert text and text == _greedy(http, "current", max_tokens=12)  # the deltas, all of them


def test_a_seed_makes_sampling_repeatable(http):
    def sampled(seed: int) -> str:
        body = {"model": "m0", "messages": USER, "max_tokens": 12, "temperature": 1.0,
                "top_p": 1.0, "seed": seed}  # fmt: skip
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    first = sampled(5)
    assert sampled(5) == first and sampled(6) != first


def test_openai_client_errors(client):
    import openai

    with pytest.raises(openai.NotFoundError, match="model 'm9' not found"):
        client.chat.completions.create(model="m9", messages=USER)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="m0", messages=USER, max_tokens=10_000)


BAD_REQUESTS = [
    # (description, body or raw bytes, expected status, code or None, param the error names)
    ("malformed JSON", b'{"model": "m0", "messages": [', 400, "invalid_value", None),  # the body
    ("not an object", b"[1, 2, 3]", 400, "invalid_value", None),
    ("messages is a string", {"model": "m0", "messages": "hi"}, 400, "invalid_value", "messages"),
    ("wrong role", {"model": "m0", "messages": [{"role": "robot", "content": "x"}]}, 400, None,
     "messages.0.role"),
    ("no messages", {"model": "m0", "messages": []}, 400, None, "messages"),
    ("max_tokens is text", {"model": "m0", "messages": USER, "max_tokens": "many"}, 400, None,
     "max_tokens"),
    ("n > 1", {"model": "m0", "messages": USER, "n": 2}, 400, None, "n"),
    ("unknown model", {"model": "gpt-9", "messages": USER}, 404, "model_not_found", "model"),
    ("too many messages", {"model": "m0", "messages": USER * 17}, 400, "too_many_messages",
     "messages"),
    ("too many characters", {"model": "m0", "messages": [{"role": "user", "content": "a" * 4001}]},
     400, "too_many_characters", "messages"),
    ("max_tokens over limit", {"model": "m0", "messages": USER, "max_tokens": MAX_TOKENS + 1}, 400,
     "invalid_value", "max_tokens"),
    ("lone surrogate", b'{"model": "m0", "messages": [{"role": "user", "content": "\\ud800"}]}',
     400, None, "messages.0.content"),
    ("five stop sequences", {"model": "m0", "messages": USER, "stop": ["a", "b", "c", "d", "e"]},
     400, None, "stop"),
    ("empty stop sequence", {"model": "m0", "messages": USER, "stop": ""}, 400, None, "stop"),
    ("JSON mode", {"model": "m0", "messages": USER, "response_format": {"type": "json_object"}},
     400, "invalid_value", "response_format"),
    ("log-probabilities", {"model": "m0", "messages": USER, "logprobs": True}, 400, None,
     "logprobs"),
    ("tools", {"model": "m0", "messages": USER, "tools": [{"type": "function"}]}, 400, None,
     "tools"),
    ("empty content parts", {"model": "m0", "messages": [{"role": "user", "content": []}]}, 400,
     None, "messages.0.content"),
    ("body too large", {"model": "m0", "messages": [{"role": "user", "content": "a" * 70000}]},
     413, "request_too_large", None),
]  # fmt: skip


def test_stop_sequences_on_the_vllm_engine(served, http):
    check_stop_sequences(http, "m0")


def test_a_stream_answering_a_chunked_upload_finishes(http):
    """A body sent without Content-Length is read, counted and replayed by the size limit;
    after the replay the app must hear the client again, not an endless empty body."""
    body = json.dumps({"model": "m0", "messages": USER, "max_tokens": 4, "stream": True})

    def pieces():  # a generator body: httpx sends it chunked, with no Content-Length
        yield body[:20].encode()
        yield body[20:].encode()

    headers = {"Content-Type": "application/json"}
    with http.stream(
        "POST", "/v1/chat/completions", content=pieces(), headers=headers, timeout=30
    ) as r:
        assert "content-length" not in r.request.headers
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 3
    assert http.get("/health", timeout=10).json()["status"] == "ok"


@pytest.mark.parametrize(
    "what,body,status,code,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_openai_errors(http, what, body, status, code, param):
    if isinstance(body, bytes):
        r = http.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
    else:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    assert err["param"] == param, err  # the field at fault, as the client wrote it
    if code is not None:
        assert err["code"] == code


def test_a_body_not_sent_as_json_says_so(http):
    body = json.dumps({"model": "m0", "messages": USER})
    r = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "send the body as JSON, with Content-Type: application/json (got text/plain)"
    )
    r = http.post("/v1/chat/completions", content=body.encode(), headers={"Content-Type": ""})
    assert r.json()["error"]["message"].endswith("(got none)")
    # Read as JSON (application/*+json too), the body's own problem is the message.
    kind = {"Content-Type": "application/merge-patch+json"}
    r = http.post("/v1/chat/completions", content=b"{bad", headers=kind)
    assert r.status_code == 400 and r.json()["error"]["message"] == "request body is not valid JSON"


def test_serve_already_running_on_the_cluster_is_left_alone(served, http, monkeypatch):
    """`ray.init()` joins a running cluster: Serve there kept its own port (the URL printed
    was wrong) and Ctrl-C's `serve.shutdown()` stopped every application on it."""
    from esevo_ray.errors import UsageError
    from esevo_ray.serving.deploy import start_app

    with pytest.raises(UsageError, match=r"Ray Serve runs on this Ray cluster already \(appl"):
        start_app(served.cfg, served.run_dir)
    # The serving benchmark says so before its minutes of offline runs, not after them.
    from esevo_ray.serving import bench

    def offline(*_, **__):
        raise AssertionError("the offline runs started")

    monkeypatch.setattr(bench, "offline_tok_per_s", offline)
    with pytest.raises(UsageError, match="Ray Serve runs on this Ray cluster already"):
        bench.bench_serve_app(served.cfg, served.run_dir)
    # Served on transformers, the app's tokens/s were divided by vLLM's offline ones.
    on_hf = served.cfg.model_copy(
        update={"serve": served.cfg.serve.model_copy(update={"engine": "hf"})}
    )
    with pytest.raises(UsageError, match=r"serve.engine \(hf\) is hf here: set serve.engine=vllm"):
        bench.bench_serve_app(on_hf, served.run_dir)
    assert http.get("/health").status_code == 200


def test_auth(served):
    body = {"model": "m0", "messages": USER, "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{served.url}/v1/models").status_code == 401
    assert httpx.get(f"{served.url}/nowhere", headers=served.headers).status_code == 404
    # The key before the body: a request without it was told what its body lacked (400).
    bad = {"model": "m0", "messages": []}
    r = httpx.post(f"{served.url}/v1/chat/completions", json=bad)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(f"{served.url}/human/api/sessions", json={"mode": "nonsense"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(f"{served.url}/v1/chat/completions", json=bad, headers=served.headers)
    assert r.status_code == 400


def test_the_key_is_not_in_what_ray_shows_of_the_deployments(served):
    """Ray's dashboard serves each deployment's actor options (runtime_env included) to
    anyone who reaches it: the key must not be there."""
    import json

    from ray.serve.context import _get_global_client

    details = json.dumps(_get_global_client().get_serve_details(), default=str)
    assert '"Ingress"' in details and API_KEY not in details


def test_crisis_guard_on_live_replies(served, http):
    crisis = served.cfg.serve.crisis_text

    def reply(text: str) -> str:
        body = {"model": "m0", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    assert reply("Sometimes I think about killing myself.").startswith(crisis)
    assert crisis not in reply("This deadline is killing me, honestly.")


def _greedy(http, model: str, messages=USER, max_tokens: int = 8) -> str:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def _offline(base, adapter, messages=USER, max_tokens: int = 8) -> str:
    """The same greedy decoding by the transformers engine, adapter merged: the reference."""
    from esevo_ray.config import DecodingSection
    from esevo_ray.generation.engines import HfEngine
    from esevo_ray.prompts import task_messages

    engine = HfEngine(base, adapter)
    decoding = DecodingSection(temperature=0, max_new_tokens=max_tokens)
    return engine.chat([task_messages(messages)], decoding, [0])[0].text


def _same(served_text: str, offline_text: str) -> bool:
    # vLLM holds back a trailing incomplete UTF-8 sequence; transformers decodes it as U+FFFD.
    return served_text.rstrip("\ufffd") == offline_text.rstrip("\ufffd")


def _served_adapter(served, http, name: str, seed: int):
    """The adapter of iteration `name` (made with `seed` if no test made it yet), once the
    application lists it."""
    path = served.run_dir / name / "adapter"
    if not path.exists():
        make_adapter(served.base, path, seed=seed)
    deadline = time.monotonic() + 20
    while name not in {c["id"] for c in http.get("/v1/models").json()["data"]}:
        assert time.monotonic() < deadline, f"{name} never appeared"
        time.sleep(0.1)
    return path


def test_concurrent_adapters_each_answer_with_their_own_model(served, http):
    m1 = _served_adapter(served, http, "m1", seed=2)
    adapters = {"base": None, "m0": served.run_dir / "m0" / "adapter", "m1": m1}
    expected = {name: _offline(served.base, a) for name, a in adapters.items()}
    assert len(set(expected.values())) == 3, expected  # three different models
    names = ["base", "m0", "m1"] * 3
    got: dict[int, str] = {}

    def call(i: int) -> None:
        with httpx.Client(base_url=served.url, headers=served.headers, timeout=120) as client:
            got[i] = _greedy(client, names[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, name in enumerate(names):
        assert _same(got[i], expected[name]), (name, got[i], expected[name])
    stats = generator_stats()
    assert stats["engine"] == "vllm"
    assert {k.split("@")[0] for k in stats["loaded"]} >= {"m0", "m1"}
    # On a cluster without GPUs the replica reserves none, and sees none.
    assert stats["placement"]["device"] == "cpu" and stats["placement"]["gpu_ids"] == []
    assert stats["placement"]["cuda_visible_devices"] == ""


def test_current_follows_new_iteration_without_failing_inflight(served, http):
    body = {"model": "current", "messages": USER, "max_tokens": 64, "stream": True}
    m2 = served.run_dir / "m2" / "adapter"
    with http.stream("POST", "/v1/chat/completions", json=body) as inflight:
        lines = inflight.iter_lines()
        first = json.loads(next(lines)[len("data: ") :])
        old = first["model"]
        assert old in ("m0", "m1")  # resolved before the new iteration exists
        make_adapter(served.base, m2, seed=3)
        deadline = time.monotonic() + 20
        while True:
            cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
            if cards["current"]["alias_of"] == "m2":
                break
            assert time.monotonic() < deadline, "current never switched to m2"
            time.sleep(0.1)
        switched = http.post(
            "/v1/chat/completions", json={"model": "current", "messages": USER, "max_tokens": 4}
        )
        assert switched.status_code == 200 and switched.json()["model"] == "m2"
        rest = list(lines)
    events = [ln[len("data: ") :] for ln in rest if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("error" not in c and c["model"] == old for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert _same(_greedy(http, "current"), _offline(served.base, m2))


def test_rewritten_adapter_is_a_new_lora_never_the_old_name(served, http):
    m2 = served.run_dir / "m2" / "adapter"
    if not m2.exists():
        make_adapter(served.base, m2, seed=3)
    _greedy(http, "m2")
    before = {k: v for k, v in generator_stats()["loaded"].items() if k.startswith("m2@")}
    make_adapter(served.base, m2, seed=4)  # the same iteration, rewritten in place
    expected = _offline(served.base, m2)
    deadline = time.monotonic() + 20
    while not _same(text := _greedy(http, "m2"), expected):
        assert time.monotonic() < deadline, f"m2 still answers with the old weights: {text!r}"
        time.sleep(0.3)
    after = {k: v for k, v in generator_stats()["loaded"].items() if k.startswith("m2@")}
    new = set(after) - set(before)
    assert len(new) == 1, (before, after)
    assert after[new.pop()] not in before.values()  # a new LoRA id as well as a new name
    # With m0 and m1 asked for too, four adapters have been loaded, at most two stay.
    _served_adapter(served, http, "m1", seed=2)
    _greedy(http, "m1")
    assert _same(_greedy(http, "m0"), _offline(served.base, served.run_dir / "m0" / "adapter"))
    stats = generator_stats()
    assert len(stats["resident"]) <= 2 and len(stats["loaded"]) >= 4, stats  # LRU evicted


def test_a_start_stopped_part_way_leaves_no_serve_on_the_cluster(tiny_model, tmp_path):
    """Ctrl-C while the replicas started (minutes with vLLM) left Serve's controller and
    proxy on a cluster that `ray.init()` joined: the next `esevo serve` there was refused
    ("Ray Serve runs on this Ray cluster already"). In its own Ray instance."""
    from pathlib import Path

    from tests.ray_processes import result_line

    script = Path(__file__).with_name("stopped_start.py")
    assert result_line(script, tiny_model, tmp_path, cwd=tmp_path) == "RESULT 0 0"
