"""`tuneloop serve` as a user runs it: a subprocess on a free port, queried with the openai SDK, then
`tuneloop data from-feedback` on the request log it wrote."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx2 as httpx
import openai

from tuneloop.serve.feedback import cmd_from_feedback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_cli_end_to_end(tiny_lm_dir, tmp_path):
    port, db = _free_port(), tmp_path / "log.db"
    keys = tmp_path / "keys.txt"
    hashed = subprocess.run([sys.executable, "-c", "from tuneloop.serve.cli import cmd_serve; "
                             "cmd_serve(['--hash-key', 'sk-e2e'])"], capture_output=True, text=True, check=True)
    keys.write_text("# scope sha256\n" + hashed.stdout)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from tuneloop.serve.cli import cmd_serve; "
                             "sys.exit(cmd_serve(sys.argv[1:]))", str(tiny_lm_dir), "--name", "tiny",
                             "--port", str(port), "--api-keys", str(keys), "--log-db", str(db), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-e2e", max_retries=0,
                          _strict_response_validation=True)
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert r.model == "tiny" and r.choices[0].finish_reason in ("stop", "length")
        ok = httpx.post(f"http://127.0.0.1:{port}/v1/feedback", headers={"Authorization": "Bearer sk-e2e"},
                        json={"request_id": r.id, "rating": -1, "correction": "Hello! How can I help?"})
        assert ok.status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "tuneloop serve: tiny" in out
    assert cmd_from_feedback([str(db), "--out", str(tmp_path / "fb.jsonl")]) == 0
    row = json.loads((tmp_path / "fb.jsonl").read_text())
    assert row["messages"] == [{"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "Hello! How can I help?"}]
