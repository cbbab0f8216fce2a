"""`tuneloop serve`: an OpenAI-compatible server for a run folder or a model, with LoRA adapters on one base.

    tuneloop serve runs/airline                                   # the run's merged model, served as "airline"
    tuneloop serve bundled:smollm2-135m-instruct --adapter airline=runs/airline --adapter support=runs/support
    tuneloop serve bundled:minilm-l6                              # /v1/embeddings
    tuneloop serve --hash-key sk-my-secret                        # prints a line for the --api-keys file

Then any OpenAI client works: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from tuneloop.errors import UserError


def resolve_target(target: str, name: str | None) -> tuple[str, str]:
    """(model folder, served name) for a run folder (its merged model/) or any model spec."""
    from tuneloop.run import open_run

    path, cfg = open_run(target)
    if cfg is not None:
        return path, name or cfg.get("name") or Path(target).name
    from tuneloop.models.sources import resolve

    return resolve(target).path, name or target


def adapter_arg(value: str, base: str) -> tuple[str, str]:
    """`NAME=RUN_DIR` (or an adapter folder) -> (name, adapter folder); warns when trained on another base."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--adapter expects NAME=RUN_DIR, got '{value}'")
    for folder in (Path(path) / "adapter", Path(path)):
        cfg = folder / "adapter_config.json"
        if cfg.is_file():
            trained_on = json.loads(cfg.read_text()).get("base_model_name_or_path") or ""
            if trained_on and Path(trained_on).resolve() != Path(base).resolve():
                print(f"tuneloop serve: warning: adapter '{name}' was trained on {trained_on}, "
                      f"served on {base}", file=sys.stderr)
            return name, str(folder)
    raise UserError(f"--adapter {name}: no adapter_config.json in {path}/adapter or {path}")


def cmd_serve(args: list) -> int:
    """Serve a run or model behind an OpenAI-compatible API (chat, completions, embeddings, adapters)."""
    from tuneloop.serve.settings import ServeSettings, hash_key, load_keys

    p = argparse.ArgumentParser(prog="tuneloop serve", description=cmd_serve.__doc__)
    p.add_argument("target", nargs="?", help="run folder or model spec (bundled:..., folder, .gguf, org/name)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="serve a run's LoRA adapter on the same base under NAME (repeatable)")
    p.add_argument("--name", help="served name of the base model (default: run name or the spec)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="requests decoding together (1 = no batching)")
    p.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int, default=4096)
    p.add_argument("--max-body-bytes", type=int, default=1_000_000)
    p.add_argument("--api-keys", help="file of 'user|admin SHA256HEX' lines; without it user endpoints are "
                                      "open and admin endpoints closed")
    p.add_argument("--adapter-root", action="append", default=[], metavar="DIR",
                   help="folder under which admins may load adapters at runtime (repeatable)")
    p.add_argument("--log-db", help="SQLite file for the request log and /v1/feedback (off by default)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--hash-key", metavar="KEY", help="print the keys-file line for KEY and exit")
    ns = p.parse_args(args)
    if ns.hash_key:
        print(f"user {hash_key(ns.hash_key)}")
        return 0
    if not ns.target:
        p.error("the target (run folder or model) is required")
    if ns.max_batch < 1:
        raise UserError("--max-batch must be >= 1")
    path, name = resolve_target(ns.target, ns.name)
    adapters = dict(adapter_arg(a, path) for a in ns.adapter)
    keys = load_keys(Path(ns.api_keys)) if ns.api_keys else {}
    if not keys and ns.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tuneloop serve: warning: listening on {ns.host} without --api-keys: anyone who can reach it "
              "can use it", file=sys.stderr)
    settings = ServeSettings(max_batch=ns.max_batch, max_prompt_tokens=ns.max_prompt_tokens,
                             max_tokens=ns.max_tokens, max_body_bytes=ns.max_body_bytes, key_hashes=keys,
                             adapter_roots=ns.adapter_root, log_db=ns.log_db)
    return serve(path, name, adapters, settings, ns.host, ns.port, ns.threads)


def serve(path: str, name: str, adapters: dict, settings, host: str, port: int, threads: int = 0) -> int:
    import torch
    import uvicorn

    from tuneloop.serve.app import build_app
    from tuneloop.serve.engine import LocalEngine

    if threads:
        torch.set_num_threads(threads)
    engine = LocalEngine(path, name, max_batch=settings.max_batch, adapters=adapters)
    print(f"tuneloop serve: {name} ({path}) on http://{host}:{port}/v1"
          + (f", adapters: {', '.join(adapters)}" if adapters else ""), file=sys.stderr, flush=True)
    uvicorn.run(build_app(engine, settings), host=host, port=port, log_level="info")
    return 0
