"""Server settings and the two security checks that need them: API-key scopes and adapter folder roots.

    settings = ServeSettings(key_hashes=load_keys(Path("keys.txt")), adapter_roots=["runs"])
    scope_of(settings, "Bearer sk-...")          # "admin" | "user" | None
    adapter_folder(settings, "runs/airline")     # -> runs/airline/adapter, or UserError

A keys file holds one `SCOPE SHA256HEX` per line (scope: user or admin; `#` starts a comment), so the server
never stores a key itself; `tuneloop serve --hash-key KEY` prints the line for a key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.errors import UserError

SCOPES = ("user", "admin")


@dataclass
class ServeSettings:
    max_batch: int = 8  # rows decoding together; 1 = no batching
    max_prompt_tokens: int = 4096  # longer prompts get a 400 (also capped by the model's context length)
    max_tokens: int = 1024  # largest max_tokens a request may ask for
    max_inputs: int = 64  # prompts per completion request / inputs per embedding request
    max_body_bytes: int = 1_000_000
    key_hashes: dict = field(default_factory=dict)  # sha256 hex -> scope; empty = user endpoints are open
    adapter_roots: list = field(default_factory=list)  # admin adapter loading only below these folders
    log_db: str | None = None  # SQLite file for the request log + feedback; None = nothing is logged


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_keys(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"API keys file not found: {path}")
    keys = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SCOPES or len(parts[1]) != 64:
            raise UserError(f"{path}:{n}: expected 'user|admin SHA256HEX' (make one with tuneloop serve --hash-key KEY)")
        keys[parts[1].lower()] = parts[0]
    return keys


def scope_of(settings: ServeSettings, authorization: str | None) -> str | None:
    """The scope an Authorization header grants: admin, user, or None (no or wrong key)."""
    if not settings.key_hashes:
        return "user"  # no keys configured: open for users, closed for admin
    if not authorization or not authorization.startswith("Bearer "):
        return None
    digest = hash_key(authorization[len("Bearer "):].strip())
    for stored, scope in settings.key_hashes.items():
        if hmac.compare_digest(stored, digest):  # constant time: no timing oracle on the hashes
            return scope
    return None


def adapter_folder(settings: ServeSettings, requested: str) -> Path:
    """Map an admin's adapter path to a folder with adapter weights, only inside the configured roots."""
    if not settings.adapter_roots:
        raise UserError("adapter loading is off: start the server with --adapter-root FOLDER")
    roots = [Path(r).resolve() for r in settings.adapter_roots]
    path = Path(requested)
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for cand in candidates:
        real = cand.resolve()  # symlinks resolved first, so a link cannot point outside a root
        if not any(real == r or real.is_relative_to(r) for r in roots):
            continue
        for folder in (real, real / "adapter"):
            if (folder / "adapter_config.json").is_file():
                return folder
    raise UserError(f"no adapter (adapter_config.json) at '{requested}' inside the adapter roots")
