"""Load test: 8 concurrent chat clients against `tuneloop serve` on the bundled SmolLM2, batched vs unbatched.

    .venv/bin/python bench/serve_load.py [--clients 8 --requests 2 --max-tokens 32 --threads 1]

Both servers run in this process (uvicorn threads on 127.0.0.1, one after the other, same model files, same
prompts, greedy decoding) and differ only in `max_batch` (8 vs 1). Clients are the real `openai` SDK over
HTTP. `--threads 1` by default: on a shared, oversubscribed CPU, torch's multi-threaded kernels spin-wait on
descheduled threads and one step got 4-10x slower with 2 threads than with 1.
Writes bench/results/serve_load.json: completion tokens/s, p50/p95 request latency, failures, machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import openai
import torch
import uvicorn

from machine import cpu_name  # bench/ is this script's folder
from tuneloop.models.sources import resolve
from tuneloop.serve.app import build_app
from tuneloop.serve.engine import LocalEngine
from tuneloop.serve.settings import ServeSettings

QUESTIONS = ["My bag did not arrive in Denver. What should I do?", "Can I change my flight to tomorrow morning?",
             "Write a short apology for a delayed flight.", "How do I get a refund for a cancelled trip?",
             "What can I bring in my carry-on bag?", "Explain what a layover is.",
             "Suggest three things to do at an airport during a long wait.", "How early should I arrive for an "
             "international flight?"]



async def load(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600,
                                _strict_response_validation=True)
    latencies, tokens, failed = [], 0, 0

    async def user(i: int) -> None:
        nonlocal tokens, failed
        for r in range(requests):
            q = QUESTIONS[(i + r) % len(QUESTIONS)]
            start = time.perf_counter()
            try:
                resp = await client.chat.completions.create(model="smollm2", max_tokens=max_tokens, temperature=0,
                                                            messages=[{"role": "user", "content": q}])
            except openai.OpenAIError:
                failed += 1
                continue
            latencies.append((time.perf_counter() - start) * 1000)
            tokens += resp.usage.completion_tokens

    start = time.perf_counter()
    await asyncio.gather(*[user(i) for i in range(clients)])
    wall = time.perf_counter() - start
    await client.close()
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return {"tokens": tokens, "seconds": round(wall, 2), "tokens_per_s": round(tokens / wall, 2),
            "p50_ms": round(statistics.median(latencies), 1), "p95_ms": round(q[18], 1), "failed": failed}


def run_server(path: str, max_batch: int, clients: int, requests: int, max_tokens: int) -> dict:
    app = build_app(LocalEngine(path, "smollm2", max_batch=max_batch), ServeSettings(max_batch=max_batch))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        asyncio.run(load(url, 1, 1, 4))  # warm-up: first-call allocations out of the measurement
        return asyncio.run(load(url, clients, requests, max_tokens))
    finally:
        server.should_exit = True
        thread.join(60)


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    ns = p.parse_args(argv)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    path = resolve("bundled:smollm2-135m-instruct").path
    runs = {}
    for label, max_batch in (("batched", ns.clients), ("unbatched", 1)):
        runs[label] = run_server(path, max_batch, ns.clients, ns.requests, ns.max_tokens)
        print(f"{label:9s} {runs[label]}", file=sys.stderr, flush=True)
    result = {
        "tokens_per_s": {k: v["tokens_per_s"] for k, v in runs.items()},
        "throughput_ratio": round(runs["batched"]["tokens_per_s"] / max(runs["unbatched"]["tokens_per_s"], 1e-9), 2),
        "p50_ms": {k: v["p50_ms"] for k, v in runs.items()},
        "p95_ms": {k: v["p95_ms"] for k, v in runs.items()},
        "clients": ns.clients,
        "requests_per_client": ns.requests,
        "max_tokens": ns.max_tokens,
        "failed_requests": sum(v["failed"] for v in runs.values()),
        "completion_tokens": {k: v["tokens"] for k, v in runs.items()},
        "model": "bundled:smollm2-135m-instruct (fp32)",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": "cuda" if torch.cuda.is_available() else "cpu"},
    }
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
