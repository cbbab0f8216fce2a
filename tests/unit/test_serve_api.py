"""The server through the real `openai` SDK (strict response validation) over real HTTP on 127.0.0.1.

uvicorn runs the app in a thread of the test process; the model is the tiny random Llama, so answers are
gibberish but every byte of the protocol is real. Where the SDK's published types are stricter than
OpenAI's own wire format (null logprob of the first echoed prompt token; null finish_reason in streamed
completion chunks) the test reads the raw JSON instead.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import contextmanager

import httpx2 as httpx
import openai
import pytest
import uvicorn

from tuneloop.serve.app import build_app
from tuneloop.serve.engine import LocalEngine
from tuneloop.serve.feedback import cmd_from_feedback, export_feedback
from tuneloop.serve.settings import ServeSettings, hash_key

USER_KEY, ADMIN_KEY = "sk-user-test", "sk-admin-test"


@contextmanager
def running(app):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def server(tiny_lm_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("serve") / "log.db"
    settings = ServeSettings(max_batch=4, max_tokens=64, max_prompt_tokens=200, max_body_bytes=20_000,
                             log_db=str(db))
    with running(build_app(LocalEngine(str(tiny_lm_dir), "tiny"), settings)) as url:
        yield url, db


def client(url, key="none", **kw):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, _strict_response_validation=True, **kw)


MSG = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where is my bag?"}]


def test_models_chat_and_logprobs(server):
    url, _ = server
    c = client(url)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=0, n=2, logprobs=True,
                                  top_logprobs=3)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and len(r.choices) == 2
    assert r.choices[0].message.content == r.choices[1].message.content  # greedy: n copies agree
    assert r.choices[0].finish_reason in ("stop", "length")
    lp = r.choices[0].logprobs.content
    assert 1 <= len(lp) <= 6 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp)
    assert lp[0].top_logprobs[0].logprob >= lp[0].logprob  # greedy picks the most likely token
    assert r.usage.completion_tokens == sum(len(ch.logprobs.content) for ch in r.choices) or \
        r.choices[0].finish_reason == "stop"
    sampled = [c.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=1.0, top_p=0.9,
                                         seed=11).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]  # same seed, same sample


def test_streaming_sync_async_and_done_marker(server):
    url, _ = server
    whole = client(url).chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0)
    chunks = list(client(url).chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0,
                                                      stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices

    async def stream_async():
        ac = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, _strict_response_validation=True)
        parts = await asyncio.gather(*[ac.chat.completions.create(model="tiny", messages=MSG, max_tokens=8,
                                                                  temperature=0, stream=True) for _ in range(3)])
        texts = []
        for s in parts:
            texts.append("".join([ch.choices[0].delta.content or "" async for ch in s]))
        return texts

    assert asyncio.run(stream_async()) == [whole.choices[0].message.content] * 3
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MSG,
                                                                  "max_tokens": 3, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_completions_echo_logprobs_for_loglikelihood(server):
    url, _ = server
    c = client(url)
    r = c.completions.create(model="tiny", prompt=["The bag", "was lost"], max_tokens=3, temperature=0, logprobs=2)
    assert [ch.index for ch in r.choices] == [0, 1] and all(len(ch.logprobs.tokens) <= 3 for ch in r.choices)
    # echo + logprobs, as lm-eval sends it for log-likelihood: prompt tokens first, the first one null
    ids = [504, 3482, 314, 3210]
    body = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": [ids], "max_tokens": 1, "echo": True,
                                                     "logprobs": 1, "temperature": 0}).json()
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 1 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v <= 0 for v in lp["token_logprobs"][1:]) and lp["text_offset"][0] == 0
    assert max(lp["top_logprobs"][-1].values()) == lp["token_logprobs"][-1]  # the greedy continuation
    zero = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": [ids], "max_tokens": 0, "echo": True,
                                                     "logprobs": 0}).json()
    assert zero["choices"][0]["logprobs"]["token_logprobs"] == lp["token_logprobs"][:-1]
    stream = [json.loads(line[6:]) for line in httpx.post(
        f"{url}/v1/completions", json={"model": "tiny", "prompt": "The bag", "max_tokens": 4, "temperature": 0,
                                       "stream": True}).text.split("\n\n") if line.startswith("data: {")]
    assert stream[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("kwargs, status, code", [
    ({"model": "nope"}, 404, "model_not_found"),
    ({"max_tokens": 65}, 400, None),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, 400, "context_length_exceeded"),
    ({"temperature": 3}, 400, None),
])
def test_errors_in_openai_format(server, kwargs, status, code):
    url, _ = server
    with pytest.raises(openai.APIStatusError) as e:
        client(url).chat.completions.create(**{"model": "tiny", "messages": MSG, **kwargs})
    assert e.value.status_code == status
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["code"] == code and e.value.body["message"]


def test_body_limit_unknown_field_and_embeddings_on_a_causal_model(server):
    url, _ = server
    big = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user",
                                                                                      "content": "x" * 30_000}]})
    assert big.status_code == 413 and big.json()["error"]["message"].startswith("request body over")
    typo = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_token": 5})
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "max_token"
    with pytest.raises(openai.BadRequestError, match="encoder"):
        client(url).embeddings.create(model="tiny", input="hi")


def test_client_disconnect_frees_the_slot(server):
    url, _ = server
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MSG,
                                                                  "max_tokens": 64, "stream": True}) as r:
        next(r.iter_lines())
    for _ in range(300):
        h = httpx.get(f"{url}/health").json()
        if h["running"] == 0 and h["waiting"] == 0:
            break
        time.sleep(0.02)
    assert h["running"] == 0 and h["status"] == "ok"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'tuneloop_requests_total{route="/v1/chat/completions",status="200"}' in metrics
    assert "tuneloop_request_latency_seconds_bucket" in metrics and "tuneloop_completion_tokens_total" in metrics


def test_feedback_round_trip(server, tmp_path):
    url, db = server
    c = client(url)
    good = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0)
    bad = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Refund?"}], max_tokens=4)
    meh = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hm"}], max_tokens=4)
    for rid, rating, correction in ((good.id, 1, None), (bad.id, -1, "Yes, within 24 hours."), (meh.id, -1, None)):
        r = httpx.post(f"{url}/v1/feedback", json={"request_id": rid, "rating": rating, "correction": correction})
        assert r.status_code == 200 and r.json() == {"request_id": rid, "object": "feedback", "status": "recorded"}
    assert httpx.post(f"{url}/v1/feedback", json={"request_id": "chatcmpl-x", "rating": 1}).status_code == 404
    out = tmp_path / "next.jsonl"
    assert export_feedback(db, out) == {"approved": 1, "corrected": 1, "skipped": 1}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["messages"] == MSG + [{"role": "assistant", "content": good.choices[0].message.content}]
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "Yes, within 24 hours."}
    assert cmd_from_feedback([str(db), "--out", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()


def test_auth_scopes_and_runtime_adapters(tiny_lm_dir, tmp_path):
    from tests.unit.test_serve_engine import make_adapter

    root = tmp_path / "runs"
    make_adapter(tiny_lm_dir, root / "airline" / "adapter")
    (tmp_path / "outside").mkdir()
    make_adapter(tiny_lm_dir, tmp_path / "outside" / "adapter")
    settings = ServeSettings(key_hashes={hash_key(USER_KEY): "user", hash_key(ADMIN_KEY): "admin"},
                             adapter_roots=[str(root)], max_tokens=16)
    with running(build_app(LocalEngine(str(tiny_lm_dir), "tiny"), settings)) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        assert [m.id for m in client(url, USER_KEY).models.list().data] == ["tiny"]
        load = {"lora_name": "airline", "lora_path": "airline"}
        user = {"Authorization": f"Bearer {USER_KEY}"}
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert httpx.post(f"{url}/v1/load_lora_adapter", json=load, headers=user).status_code == 403
        for path in ("../outside", str(tmp_path / "outside"), "/etc"):  # nothing outside the roots
            r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": path}, headers=admin)
            assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
        assert httpx.post(f"{url}/v1/load_lora_adapter", json=load, headers=admin).json()["status"] == "loaded"
        models = client(url, ADMIN_KEY).models.list().data
        assert [(m.id, m.model_extra.get("parent")) for m in models] == [("tiny", None), ("airline", "tiny")]
        r = client(url, USER_KEY).chat.completions.create(model="airline", messages=MSG, max_tokens=4)
        assert r.model == "airline"
        assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "airline"},
                          headers=admin).json()["status"] == "unloaded"
        with pytest.raises(openai.NotFoundError):
            client(url, USER_KEY).chat.completions.create(model="airline", messages=MSG, max_tokens=4)
        # no admin key configured at all: admin endpoints stay closed
    with running(build_app(LocalEngine(str(tiny_lm_dir), "tiny"), ServeSettings(adapter_roots=[str(root)]))) as url:
        assert httpx.post(f"{url}/v1/load_lora_adapter", json=load).status_code == 403
