"""Plain records passed between handlers, the engine and its model thread (no HTTP, no torch).

    params = SamplingParams(max_tokens=64, temperature=0.0, stop=["\\n\\n"])
    req = GenerationRequest("chatcmpl-1a2b", model="airline", prompt_ids=[1, 2, 3], params=params)
    async for delta in engine.generate(req): ...     # Delta(text="Hel", finish_reason=None, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list = field(default_factory=list)  # strings; the answer ends before the first one
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class GenerationRequest:
    request_id: str
    model: str  # the served base name or an adapter name
    prompt_ids: list
    params: SamplingParams


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None  # None for the first prompt token (nothing before it)
    top: list = field(default_factory=list)  # [(token, logprob)], most likely first


@dataclass
class Delta:
    """New answer text since the previous delta; the last one has finish_reason (stop | length | error)."""

    text: str
    logprobs: list
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
