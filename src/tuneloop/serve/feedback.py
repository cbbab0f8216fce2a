"""Opt-in request log and feedback (SQLite), and the export that turns feedback into training data.

    tuneloop serve runs/airline --log-db serve.db        # every completion is logged with its request id
    curl -X POST .../v1/feedback -d '{"request_id": "chatcmpl-...", "rating": -1, "correction": "negative"}'
    tuneloop data from-feedback serve.db --out next.jsonl

One exported line (an approved exchange, or the correction in place of the model's answer):
    {"messages": [{"role": "user", "content": "@united lost my bag"}, {"role": "assistant", "content": "negative"}]}
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
import time
from pathlib import Path

from tuneloop.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, created REAL, endpoint TEXT, model TEXT,
    prompt TEXT,            -- JSON: chat messages, or the completion prompt string
    response TEXT, latency_ms REAL, prompt_tokens INTEGER, completion_tokens INTEGER);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY REFERENCES requests(request_id), created REAL,
    rating INTEGER,         -- 1 good, 0 neutral, -1 bad; the latest feedback per request wins
    correction TEXT);
"""


class RequestLog:
    """A small SQLite store; one connection guarded by a lock (writes are a few hundred bytes each)."""

    def __init__(self, path: str):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> "RequestLog":
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        return self

    def close(self) -> None:
        if self._conn:
            self._conn.close()
            self._conn = None

    def record(self, request_id: str, endpoint: str, model: str, prompt, response: str, latency_ms: float,
               prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?,?,?,?,?)",
                               (request_id, time.time(), endpoint, model, json.dumps(prompt, ensure_ascii=False),
                                response, round(latency_ms, 2), prompt_tokens, completion_tokens))
            self._conn.commit()

    def feedback(self, request_id: str, rating: int, correction: str | None) -> bool:
        """Store feedback; False when the request id was never logged."""
        with self._lock:
            if not self._conn.execute("SELECT 1 FROM requests WHERE request_id=?", (request_id,)).fetchone():
                return False
            self._conn.execute("INSERT OR REPLACE INTO feedback VALUES (?,?,?,?)",
                               (request_id, time.time(), rating, correction))
            self._conn.commit()
            return True


def export_feedback(db: Path, out: Path) -> dict:
    """Write approved (rating 1) and corrected chat exchanges as chat JSONL; returns counts."""
    if not db.is_file():
        raise UserError(f"feedback database not found: {db}")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT r.prompt, r.response, f.rating, f.correction FROM requests r "
                            "JOIN feedback f USING (request_id) WHERE r.endpoint = 'chat' "
                            "ORDER BY r.created").fetchall()
    except sqlite3.DatabaseError as e:
        raise UserError(f"{db} is not a tuneloop request log ({e})") from e
    finally:
        conn.close()
    counts = {"approved": 0, "corrected": 0, "skipped": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for prompt, response, rating, correction in rows:
            if correction:
                answer, kind = correction, "corrected"
            elif rating > 0 and response:
                answer, kind = response, "approved"
            else:
                counts["skipped"] += 1
                continue
            messages = json.loads(prompt) + [{"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            counts[kind] += 1
    return counts


def cmd_from_feedback(args: list) -> int:
    """Export approved and corrected served exchanges as chat JSONL for the next fine-tune."""
    p = argparse.ArgumentParser(prog="tuneloop data from-feedback", description=cmd_from_feedback.__doc__)
    p.add_argument("db", help="SQLite request log written by `tuneloop serve --log-db`")
    p.add_argument("--out", required=True, help="chat JSONL to write")
    ns = p.parse_args(args)
    counts = export_feedback(Path(ns.db), Path(ns.out))
    print(f"wrote {counts['approved'] + counts['corrected']} examples to {ns.out} "
          f"({counts['approved']} approved, {counts['corrected']} corrected, {counts['skipped']} skipped)")
    return 0
