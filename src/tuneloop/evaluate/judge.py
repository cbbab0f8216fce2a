"""LLM-as-judge: grade two models' answers with any OpenAI-compatible chat endpoint.

    tuneloop compare BASE TUNED --data RUN/data/test.jsonl --judge http://127.0.0.1:8001/v1 [--judge-mode rubric]
    summary = judge(url, "", conversations, base_answers, tuned_answers, mode="pairwise", n=50,
                    references=refs, out_path=Path("eval/judge.jsonl"))
    summary["win_rate"]            # {"value": 0.42, "ci95": [0.30, 0.54]}: tuned (B) beats base (A)

Pairwise: every item is asked twice, A shown first and then B shown first, so a judge that favours a position
cancels out: B wins only when both orders pick B, A only when both pick A, anything else is a tie.
position_consistency = share of items whose two verdicts agree; first_position_rate = share of decisive
verdicts that picked the answer shown first (0.5 = no position bias). Rubric: each answer is scored 1-5 on its
own; the delta is the paired mean difference. Items where any reply has no readable verdict are "invalid" and
left out of the rates. Temperature 0; every prompt, raw reply and parsed verdict goes to out_path (JSONL, one
line per request), so a reader can audit the judge. CIs: percentile bootstrap over items (compare.py).
"""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tuneloop.errors import UserError

PAIRWISE_SYSTEM = (
    "You are an impartial judge of AI assistant answers. Compare two answers to the same request on "
    "correctness, helpfulness and following the request's instructions. If a reference answer is given, an "
    "answer that agrees with it is correct. Ignore which answer comes first and how long it is. Give at most "
    "two sentences of reasoning, then end with exactly one verdict on its own line: [[A]] if answer A is "
    "better, [[B]] if answer B is better, [[tie]] if they are equally good or equally bad.")
RUBRIC_SYSTEM = (
    "You are a strict grader of AI assistant answers. Score the answer to the request from 1 to 5: 1 = wrong "
    "or irrelevant, 2 = mostly wrong, 3 = partly correct or incomplete, 4 = correct with minor issues, "
    "5 = fully correct and follows every instruction. If a reference answer is given, judge correctness "
    "against it. Give at most two sentences of reasoning, then end with a line 'Score: N'.")
EXAMPLES = 5  # items kept in the summary (metrics.json and the report); the JSONL keeps all
_SNIPPET = 400  # characters per text in those examples
MODES = ("pairwise", "rubric")


# ---- prompts -----------------------------------------------------------------------------------------------------
def render_request(conversation: list) -> str:
    """The task input as the judge sees it: one message as is, several as 'role: content' blocks."""
    if len(conversation) == 1:
        return conversation[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in conversation)


def _context(request: str, reference: str | None) -> str:
    ref = f"<reference>\n{reference}\n</reference>\n\n" if reference is not None else ""
    return f"<request>\n{request}\n</request>\n\n{ref}"


def pairwise_messages(request: str, reference: str | None, first: str, second: str) -> list:
    user = (_context(request, reference) + f"<answer_a>\n{first}\n</answer_a>\n\n<answer_b>\n{second}\n</answer_b>"
            "\n\nWhich answer is better? End with [[A]], [[B]] or [[tie]].")
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]


def rubric_messages(request: str, reference: str | None, answer: str) -> list:
    user = _context(request, reference) + f"<answer>\n{answer}\n</answer>\n\nScore the answer. End with 'Score: N'."
    return [{"role": "system", "content": RUBRIC_SYSTEM}, {"role": "user", "content": user}]


# ---- verdict parsing ----------------------------------------------------------------------------------------------
_BRACKET = re.compile(r"\[\[\s*(a|b|c|tie)\s*\]\]", re.I)
_LABELLED = re.compile(r"\b(?:verdict|winner|better answer)\s*(?:is)?\s*[:=]?\s*[*\"'(\[]*\s*"
                       r"(?:answer\s+)?(a|b|tie)\b", re.I)
_BARE = re.compile(r"^[\s*\"'(\[]*(?:answer\s+)?(a|b|tie)[\s*\"')\].!]*$", re.I)
_SCORE = [re.compile(r"\[\[\s*([1-5])\s*\]\]"),
          re.compile(r"\b(?:score|rating|grade)\s*(?:is)?\s*[:=]?\s*\**\s*([1-5])(?:\s*/\s*5)?\b", re.I),
          re.compile(r"^[\s*]*([1-5])(?:\s*/\s*5)?[\s*.]*$")]


def parse_pairwise(reply: str) -> str | None:
    """'A', 'B' or 'tie' from a judge reply ('[[B]]', 'Verdict: A', a bare 'tie'); None when unreadable.

    The last bracketed verdict wins (reasoning comes first); a reply that lists all three echoes the
    instructions and is unreadable. '[[C]]' is a tie (the MT-Bench convention)."""
    found = [v.lower() for v in _BRACKET.findall(reply)]
    if found:
        if {"a", "b"} <= set(found) and ({"c", "tie"} & set(found)):
            return None
        return {"a": "A", "b": "B"}.get(found[-1], "tie")
    for pattern in (_LABELLED, _BARE):
        hits = pattern.findall(reply.strip())
        if hits:
            return {"a": "A", "b": "B"}.get(hits[-1].lower(), "tie")
    return None


def parse_score(reply: str) -> int | None:
    """1-5 from 'Score: 4', '[[4]]', 'Rating: 4/5' or a bare '4'; the last match wins; None when unreadable."""
    for pattern in _SCORE:
        hits = pattern.findall(reply.strip())
        if hits:
            return int(hits[-1])
    return None


# ---- requests --------------------------------------------------------------------------------------------------
def connect(url: str, model: str = "") -> tuple:
    """(openai client, judge model name); an empty name takes the endpoint's first model."""
    from tuneloop.evaluate.generate import connect as endpoint

    return endpoint(url, model, what="judge: ", option="--judge-model", timeout=300)


def ask_all(client, model: str, url: str, calls: list, max_tokens: int, workers: int = 8) -> list:
    """Raw replies to a list of message lists, `workers` requests in flight, temperature 0."""
    import openai

    def one(messages):
        try:
            r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
        except openai.APIError as e:
            detail = " ".join(str(e).split())[:200]
            raise UserError(f"judge request to {url} failed ({type(e).__name__}: {detail}); check --judge and "
                            "--judge-model") from e
        return r.choices[0].message.content or ""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, calls))


# ---- summaries --------------------------------------------------------------------------------------------------
def _rate(values: list, seed: int) -> dict:
    from tuneloop.evaluate.compare import bootstrap_mean

    return bootstrap_mean(values, seed) if values else {"value": None, "ci95": None}


def _winner(verdict: str | None, order: str) -> str | None:
    """Position verdict -> model: order 'ab' shows A first, 'ba' shows B first."""
    if verdict in (None, "tie"):
        return verdict
    return {("A", "ab"): "a", ("B", "ab"): "b", ("A", "ba"): "b", ("B", "ba"): "a"}[(verdict, order)]


def pairwise_summary(items: list, seed: int = 0) -> dict:
    """items: {"verdict_ab", "verdict_ba"} per item -> win/tie/loss rates of B over A and the bias checks."""
    for it in items:
        ab, ba = _winner(it["verdict_ab"], "ab"), _winner(it["verdict_ba"], "ba")
        it["outcome"] = ("invalid" if None in (ab, ba) else
                         {"b": "win", "a": "loss", "tie": "tie"}[ab] if ab == ba else "tie")
    valid = [it for it in items if it["outcome"] != "invalid"]
    decisive = [v for it in valid for v in (it["verdict_ab"], it["verdict_ba"]) if v != "tie"]
    agree = [float(_winner(it["verdict_ab"], "ab") == _winner(it["verdict_ba"], "ba")) for it in valid]
    out = {f"{k}_rate": _rate([float(it["outcome"] == k) for it in valid], seed) for k in ("win", "tie", "loss")}
    out["win_minus_loss"] = _rate([{"win": 1.0, "loss": -1.0}.get(it["outcome"], 0.0) for it in valid], seed)
    out.update(position_consistency=float(np.mean(agree)) if agree else None,
               first_position_rate=float(np.mean([v == "A" for v in decisive])) if decisive else None,
               counts={k: sum(it["outcome"] == k for it in items) for k in ("win", "tie", "loss", "invalid")})
    return out


def rubric_summary(items: list, seed: int = 0) -> dict:
    """items: {"score_a", "score_b"} per item -> mean scores and the paired delta B - A, over valid items."""
    for it in items:
        it["outcome"] = "invalid" if None in (it["score_a"], it["score_b"]) else "scored"
    valid = [it for it in items if it["outcome"] == "scored"]
    a, b = [float(it["score_a"]) for it in valid], [float(it["score_b"]) for it in valid]
    return {"mean_a": _rate(a, seed), "mean_b": _rate(b, seed), "delta": _rate([y - x for x, y in zip(a, b)], seed),
            "counts": {"scored": len(valid), "invalid": len(items) - len(valid)}}


# ---- the entry point ----------------------------------------------------------------------------------------------
def judge(url: str, model: str, conversations: list, answers_a: list, answers_b: list, mode: str = "pairwise",
          n: int = 50, seed: int = 0, references: list | None = None, out_path: Path | None = None,
          max_tokens: int = 256, workers: int = 8) -> dict:
    """Grade B (e.g. tuned) against A (e.g. base) on up to n seeded rows; returns the summary (see module doc).

    conversations: the prompts (messages without the answer); references: optional reference answers shown
    to the judge; out_path: JSONL of every request (prompt, raw reply, parsed verdict)."""
    if mode not in MODES:
        raise UserError(f"judge mode '{mode}' is not pairwise or rubric")
    if not len(conversations) == len(answers_a) == len(answers_b) or (references and len(references) != len(answers_a)):
        raise ValueError("conversations, both answer lists and references must have the same length")
    idx = list(range(len(conversations)))
    if 0 < n < len(idx):
        idx = sorted(random.Random(seed).sample(idx, n))
    client, model = connect(url, model)
    calls = []  # (item position, key, messages)
    for k, i in enumerate(idx):
        req, ref = render_request(conversations[i]), references[i] if references else None
        if mode == "pairwise":
            calls += [(k, "verdict_ab", pairwise_messages(req, ref, answers_a[i], answers_b[i])),
                      (k, "verdict_ba", pairwise_messages(req, ref, answers_b[i], answers_a[i]))]
        else:
            calls += [(k, "score_a", rubric_messages(req, ref, answers_a[i])),
                      (k, "score_b", rubric_messages(req, ref, answers_b[i]))]
    replies = ask_all(client, model, url, [m for _, _, m in calls], max_tokens, workers)
    parse = parse_pairwise if mode == "pairwise" else parse_score
    items = [{"index": i} for i in idx]
    for (k, key, _), reply in zip(calls, replies):
        items[k][key] = parse(reply)
    summary = pairwise_summary(items, seed) if mode == "pairwise" else rubric_summary(items, seed)
    if out_path is not None:
        _save(Path(out_path), calls, replies, items, parse, model, mode)
    return {"mode": mode, "url": url, "model": model, "n": len(items),
            "invalid_rate": summary["counts"]["invalid"] / len(items) if items else None, **summary,
            "temperature": 0, "seed": seed, "prompts": str(out_path) if out_path else None,
            "examples": [_example(it, conversations, answers_a, answers_b) for it in items[:EXAMPLES]]}


def _save(path: Path, calls: list, replies: list, items: list, parse, model: str, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for (k, key, messages), reply in zip(calls, replies):
            rec = {"index": items[k]["index"], "mode": mode, "request": key, "judge_model": model,
                   "messages": messages, "reply": reply, "verdict": parse(reply), "outcome": items[k]["outcome"]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _example(it: dict, conversations: list, answers_a: list, answers_b: list) -> dict:
    i, cut = it["index"], lambda s: s if len(s) <= _SNIPPET else s[:_SNIPPET] + "…"  # noqa: E731
    return {**it, "input": cut(render_request(conversations[i])), "answer_a": cut(answers_a[i]),
            "answer_b": cut(answers_b[i])}
