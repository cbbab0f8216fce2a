"""LLM-as-judge against a real OpenAI-compatible HTTP server whose "judge" follows a known rule, so the
expected summary is known exactly: a judge that always says A (pure position bias) must come out all ties,
a judge that follows the reference must give the always-right model every win, unreadable replies are
invalid, and rubric scores average."""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tuneloop.errors import UserError
from tuneloop.evaluate.judge import judge, parse_pairwise, parse_score


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet test output
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/v1/models"):
            self._send(200, {"object": "list", "data": [{"id": "rule-judge", "object": "model", "created": 0,
                                                         "owned_by": "test"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(req)
        if not self.path.rstrip("/").endswith("/v1/chat/completions"):
            return self._send(404, {"error": {"message": "not found"}})
        reply = self.server.rule(req["messages"])
        if isinstance(reply, int):  # an HTTP status: the endpoint fails
            return self._send(reply, {"error": {"message": "judge broke", "type": "server_error"}})
        self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": req["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": reply}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@contextmanager
def rule_server(rule):
    """A real HTTP server on a free port answering /v1/models and /v1/chat/completions with rule(messages)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.rule, server.requests = rule, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def tag(messages: list, name: str) -> str:
    return re.search(rf"<{name}>\n(.*?)\n</{name}>", messages[-1]["content"], re.S).group(1)


def always_a(messages):
    return "Both are fine, but the first reads better.\n[[A]]"


def follows_reference(messages):
    ref = tag(messages, "reference")
    a, b = tag(messages, "answer_a"), tag(messages, "answer_b")
    return "[[A]]" if a == ref and b != ref else "[[B]]" if b == ref and a != ref else "[[tie]]"


CONVS = [[{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": f"{i} + {i}?"}]
         for i in range(10)]
REFS = [str(2 * i) for i in range(10)]
WRONG = [str(2 * i + 1) for i in range(10)]


def test_always_a_judge_is_cancelled_by_the_swap(tmp_path):
    with rule_server(always_a) as (server, url):
        s = judge(url, "", CONVS, WRONG, REFS, n=0, references=REFS, out_path=tmp_path / "judge.jsonl")
    assert s["model"] == "rule-judge" and s["n"] == 10 and s["invalid_rate"] == 0
    assert s["win_rate"]["value"] == 0 and s["loss_rate"]["value"] == 0 and s["tie_rate"]["value"] == 1.0
    assert s["position_consistency"] == 0 and s["first_position_rate"] == 1.0
    assert s["counts"] == {"win": 0, "tie": 10, "loss": 0, "invalid": 0}
    assert all(r["temperature"] == 0 for r in server.requests) and len(server.requests) == 20
    lines = [json.loads(x) for x in (tmp_path / "judge.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and {r["request"] for r in lines} == {"verdict_ab", "verdict_ba"}
    sent = sorted(json.dumps(r["messages"]) for r in server.requests)
    assert sorted(json.dumps(r["messages"]) for r in lines) == sent  # the prompts saved are the ones sent
    assert all(r["verdict"] == "A" and r["reply"].endswith("[[A]]") for r in lines)
    first = next(r for r in lines if r["index"] == 0 and r["request"] == "verdict_ab")
    assert tag(first["messages"], "answer_a") == "1" and tag(first["messages"], "answer_b") == "0"


def test_reference_judge_gives_the_right_model_every_win(tmp_path):
    with rule_server(follows_reference) as (_, url):
        s = judge(url, "rule-judge", CONVS, WRONG, REFS, n=0, references=REFS)
        flipped = judge(url, "rule-judge", CONVS, REFS, WRONG, n=0, references=REFS)
    assert s["win_rate"]["value"] == 1.0 and s["win_rate"]["ci95"] == [1.0, 1.0]
    assert s["position_consistency"] == 1.0 and s["first_position_rate"] == 0.5
    assert s["win_minus_loss"]["value"] == 1.0 and s["prompts"] is None
    assert flipped["loss_rate"]["value"] == 1.0 and flipped["win_rate"]["value"] == 0


def test_mixed_outcomes_have_cis_and_a_seeded_subsample():
    half = REFS[:5] + WRONG[5:]  # B right on the first five items only
    with rule_server(follows_reference) as (_, url):
        s = judge(url, "", CONVS, WRONG, half, n=0, references=REFS)
        sub = judge(url, "", CONVS, WRONG, half, n=4, seed=3, references=REFS)
        again = judge(url, "", CONVS, WRONG, half, n=4, seed=3, references=REFS)
    assert s["counts"] == {"win": 5, "tie": 5, "loss": 0, "invalid": 0}
    lo, hi = s["win_rate"]["ci95"]
    assert 0 < lo < 0.5 < hi < 1
    assert sub["n"] == 4 and [e["index"] for e in sub["examples"]] == [e["index"] for e in again["examples"]]


def test_unparseable_replies_are_invalid(tmp_path):
    def flaky(messages):  # readable only when answer A (shown first) is an even number
        return "[[A]]" if int(tag(messages, "answer_a")) % 2 == 0 else "I cannot decide between them."
    with rule_server(flaky) as (_, url):
        s = judge(url, "", CONVS, WRONG, REFS, n=0, references=REFS, out_path=tmp_path / "j.jsonl")
    assert s["invalid_rate"] == 1.0 and s["counts"]["invalid"] == 10  # each item has one unreadable order
    assert s["win_rate"] == {"value": None, "ci95": None} and s["position_consistency"] is None
    verdicts = [json.loads(x)["verdict"] for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert verdicts.count(None) == 10 and verdicts.count("A") == 10


def test_rubric_mode_averages_scores(tmp_path):
    def score_is_answer(messages):  # the answer text is the score it gets; "9" is out of range -> invalid
        assert "<reference>" not in messages[-1]["content"]
        return f"Reasonable.\nScore: {tag(messages, 'answer')}"
    a, b = ["2", "3", "2", "1"], ["4", "5", "3", "9"]
    convs = CONVS[:4]
    with rule_server(score_is_answer) as (_, url):
        s = judge(url, "", convs, a, b, mode="rubric", n=0, out_path=tmp_path / "r.jsonl")
    assert s["counts"] == {"scored": 3, "invalid": 1} and s["invalid_rate"] == 0.25
    assert s["mean_a"]["value"] == pytest.approx(7 / 3) and s["mean_b"]["value"] == pytest.approx(4.0)
    assert s["delta"]["value"] == pytest.approx(5 / 3)
    assert s["delta"]["ci95"][0] <= s["delta"]["value"] <= s["delta"]["ci95"][1]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 8


def test_endpoint_errors_name_the_url():
    with pytest.raises(UserError, match=r"cannot list models at http://127\.0\.0\.1:9/v1"):
        judge("http://127.0.0.1:9/v1", "", CONVS, WRONG, REFS)
    with rule_server(lambda messages: 500) as (_, url):
        with pytest.raises(UserError, match=f"judge request to {re.escape(url)} failed"):
            judge(url, "", CONVS[:2], WRONG[:2], REFS[:2], n=0)
    with pytest.raises(UserError, match="not pairwise or rubric"):
        judge("http://127.0.0.1:9/v1", "", CONVS, WRONG, REFS, mode="elo")


@pytest.mark.parametrize("reply,verdict", [
    ("[[A]]", "A"), ("[[b]]", "B"), ("[[tie]]", "tie"), ("[[C]]", "tie"), ("B", "B"), ("tie.", "tie"),
    ("**A**", "A"), ("Answer B", "B"), ("Verdict: A", "A"), ("My verdict is [[A]]... on reflection [[B]]", "B"),
    ("The better answer is B.", "B"), ("Reply with [[A]], [[B]] or [[tie]]", None), ("A good answer.", None),
    ("", None), ("Both are wrong", None)])
def test_parse_pairwise(reply, verdict):
    assert parse_pairwise(reply) == verdict


@pytest.mark.parametrize("reply,score", [
    ("Score: 4", 4), ("score:5", 5), ("Rating: 3/5", 3), ("[[2]]", 2), ("4", 4), ("Good.\nScore: **5**", 5),
    ("Score: 7", None), ("No idea", None), ("Score: 2 ... actually Score: 3", 3)])
def test_parse_score(reply, score):
    assert parse_score(reply) == score
