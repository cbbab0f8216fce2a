"""Request handlers: validated request in, response (or an async stream of SSE lines) out.

    result = await chat_completion(ctx, ChatCompletionRequest(model="airline", messages=[...]))

Handlers know the `Engine` protocol, the settings, the optional request log and the metrics; nothing about
routes, HTTP frameworks or torch. Errors a client can fix raise `APIError`, which the app renders in
OpenAI's error format.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from tuneloop.errors import UserError
from tuneloop.serve import protocol as P
from tuneloop.serve.engine import Engine
from tuneloop.serve.feedback import RequestLog
from tuneloop.serve.metrics import Metrics
from tuneloop.serve.settings import ServeSettings, adapter_folder
from tuneloop.serve.types import Delta, GenerationRequest, SamplingParams


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, P.ErrorBody(message=message, type=type, param=param, code=code)


@dataclass
class Context:
    engine: Engine
    settings: ServeSettings
    metrics: Metrics
    log: RequestLog | None = None
    started: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Result:
    """One finished choice."""

    text: str = ""
    finish: str = "length"
    logprobs: list = field(default_factory=list)  # [TokenLogprob]
    prompt_tokens: int = 0
    completion_tokens: int = 0


# ---- shared checks ----

def _check_model(ctx: Context, model: str, kind: str) -> None:
    if model not in ctx.engine.models():
        raise APIError(404, f"model '{model}' is not served here (GET /v1/models lists them)", "model",
                       code="model_not_found")
    if ctx.engine.kind != kind:
        need = "an encoder model (e.g. bundled:minilm-l6)" if kind == "embed" else "a causal language model"
        raise APIError(400, f"this endpoint needs {need}; '{model}' is a {ctx.engine.kind} model", "model")


def _params(ctx: Context, prompt_len: int, max_tokens: int | None, req, logprobs: bool = False,
            top: int = 0) -> SamplingParams:
    s, context = ctx.settings, ctx.engine.context_length
    limit = min(s.max_prompt_tokens, context - 1)
    if prompt_len > limit:
        raise APIError(400, f"the prompt has {prompt_len} tokens; this server accepts at most {limit}",
                       "messages", code="context_length_exceeded")
    if prompt_len == 0:
        raise APIError(400, "the prompt is empty", "prompt")
    if max_tokens is not None and max_tokens > s.max_tokens:
        raise APIError(400, f"max_tokens={max_tokens} is above this server's limit of {s.max_tokens}", "max_tokens")
    room = context - prompt_len
    if max_tokens is None:
        max_tokens = min(s.max_tokens, room)
    elif max_tokens > room:
        raise APIError(400, f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                       f"context length of {context}", "max_tokens", code="context_length_exceeded")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4:
        raise APIError(400, "at most 4 stop sequences", "stop")
    return SamplingParams(max_tokens, req.temperature, req.top_p, req.seed, [x for x in stop if x], logprobs, top)


async def _merged(ctx: Context, rid: str, model: str, prompts: list, params: SamplingParams, n: int):
    """Run every (prompt, sample) pair concurrently; yield (choice index, Delta) as they arrive."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, ids: list, p: SamplingParams) -> None:
        try:
            async for delta in ctx.engine.generate(GenerationRequest(f"{rid}-{index}", model, ids, p)):
                await queue.put((index, delta))
        except Exception as e:  # surfaced to the consumer below instead of leaving it waiting forever
            await queue.put((index, Delta("", [], "error", len(ids), 0, f"{type(e).__name__}: {e}")))

    tasks = []
    for i, ids in enumerate(prompts):
        for j in range(n):
            seed = None if params.seed is None else params.seed + j  # n samples differ, reproducibly
            p = SamplingParams(**{**params.__dict__, "seed": seed})
            tasks.append(asyncio.ensure_future(pump(i * n + j, ids, p)))
    try:
        for _ in range(len(tasks)):
            while True:
                index, delta = await queue.get()
                if delta.error:
                    raise APIError(500, f"generation failed: {delta.error}", type="server_error")
                yield index, delta
                if delta.finish_reason:
                    break
    finally:  # the client left or a choice failed: closing the pumps aborts their engine requests
        for t in tasks:
            t.cancel()


async def _collect(ctx: Context, rid: str, model: str, prompts: list, params: SamplingParams, n: int) -> list:
    results = [Result() for _ in range(len(prompts) * n)]
    async for i, d in _merged(ctx, rid, model, prompts, params, n):
        r = results[i]
        r.text += d.text
        r.logprobs += d.logprobs
        r.prompt_tokens, r.completion_tokens = d.prompt_tokens, d.completion_tokens
        if d.finish_reason:
            r.finish = d.finish_reason
    return results


def _usage(results: list, prompt_tokens: int) -> P.Usage:
    completion = sum(r.completion_tokens for r in results)
    return P.Usage(completion_tokens=completion, prompt_tokens=prompt_tokens, total_tokens=completion + prompt_tokens)


async def _record(ctx: Context, endpoint: str, rid: str, model: str, prompt, text: str, start: float,
                  usage: P.Usage) -> None:
    ctx.metrics.tokens(model, usage.prompt_tokens, usage.completion_tokens)
    if ctx.log:
        await asyncio.to_thread(ctx.log.record, rid, endpoint, model, prompt, text,
                                (time.perf_counter() - start) * 1000, usage.prompt_tokens, usage.completion_tokens)


def _sse(obj) -> str:
    return f"data: {obj.model_dump_json()}\n\n"


# ---- chat ----

def _chat_logprobs(items: list) -> P.ChoiceLogprobs:
    def out(t: str, lp: float) -> dict:
        return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}

    return P.ChoiceLogprobs(content=[P.TokenLogprobOut(**out(x.token, x.logprob),
                                                       top_logprobs=[P.TopLogprob(**out(t, v)) for t, v in x.top])
                                     for x in items])


async def chat_completion(ctx: Context, req: P.ChatCompletionRequest):
    """A ChatCompletion, or (stream=true) an async iterator of SSE lines ending with `data: [DONE]`."""
    _check_model(ctx, req.model, "generate")
    start = time.perf_counter()
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    ids = ctx.engine.encode_chat(messages)
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", "top_logprobs")
    params = _params(ctx, len(ids), req.max_completion_tokens or req.max_tokens, req, req.logprobs,
                     req.top_logprobs or 0)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    if req.stream:
        return _chat_stream(ctx, req, rid, ids, params, messages, start)
    results = await _collect(ctx, rid, req.model, [ids], params, req.n)
    usage = _usage(results, len(ids))
    await _record(ctx, "chat", rid, req.model, messages, results[0].text, start, usage)
    return P.ChatCompletion(id=rid, model=req.model, usage=usage, choices=[
        P.ChatChoice(index=i, finish_reason=r.finish, message=P.AssistantMessage(content=r.text),
                     logprobs=_chat_logprobs(r.logprobs) if params.logprobs else None)
        for i, r in enumerate(results)])


async def _chat_stream(ctx, req, rid, ids, params, messages, start) -> AsyncIterator[str]:
    def chunk(i: int, **delta) -> P.ChatCompletionChunk:
        return P.ChatCompletionChunk(id=rid, model=req.model, choices=[P.ChunkChoice(index=i, **delta)])

    for i in range(req.n):
        yield _sse(chunk(i, delta=P.ChunkDelta(role="assistant", content="")))
    results = [Result() for _ in range(req.n)]
    try:
        async for i, d in _merged(ctx, rid, req.model, [ids], params, req.n):
            results[i].text += d.text
            results[i].completion_tokens = d.completion_tokens
            if d.text or d.finish_reason or d.logprobs:
                yield _sse(chunk(i, delta=P.ChunkDelta(content=d.text or None), finish_reason=d.finish_reason,
                                 logprobs=_chat_logprobs(d.logprobs) if params.logprobs else None))
    except APIError as e:  # headers are already sent: report in-band, the way OpenAI's streams do
        yield f"data: {P.ErrorResponse(error=e.body).model_dump_json()}\n\n"
        return
    usage = _usage(results, len(ids))
    if req.stream_options and req.stream_options.include_usage:
        yield _sse(P.ChatCompletionChunk(id=rid, model=req.model, choices=[], usage=usage))
    yield "data: [DONE]\n\n"
    await _record(ctx, "chat", rid, req.model, messages, results[0].text, start, usage)


# ---- completions ----

def _prompt_ids(ctx: Context, prompt) -> list:
    if isinstance(prompt, str):
        prompts = [ctx.engine.encode(prompt)]
    elif all(isinstance(x, int) for x in prompt):
        prompts = [list(prompt)]
    else:
        prompts = [ctx.engine.encode(x) if isinstance(x, str) else list(x) for x in prompt]
    if len(prompts) > ctx.settings.max_inputs:
        raise APIError(400, f"at most {ctx.settings.max_inputs} prompts per request", "prompt")
    vocab = ctx.engine.vocab_size
    if any(t < 0 or t >= vocab for ids in prompts for t in ids):
        raise APIError(400, f"token ids must be in [0, {vocab})", "prompt")
    return prompts


def _completion_logprobs(items: list, offset: int) -> P.CompletionLogprobs:
    out = P.CompletionLogprobs()
    for x in items:
        out.tokens.append(x.token)
        out.token_logprobs.append(x.logprob)
        out.top_logprobs.append(None if x.logprob is None else dict(x.top))
        out.text_offset.append(offset)
        offset += len(x.token)
    return out


async def completion(ctx: Context, req: P.CompletionRequest):
    """A Completion; with echo + logprobs the prompt's own token logprobs come first (log-likelihood scoring)."""
    _check_model(ctx, req.model, "generate")
    if req.stream and req.echo:
        raise APIError(400, "echo is not supported together with stream", "echo")
    start = time.perf_counter()
    prompts = _prompt_ids(ctx, req.prompt)
    params = [_params(ctx, len(ids), req.max_tokens or None, req, req.logprobs is not None, req.logprobs or 0)
              for ids in prompts]
    rid = f"cmpl-{uuid.uuid4().hex}"
    if req.stream:
        return _completion_stream(ctx, req, rid, prompts, params[0], start)
    results = [Result() for _ in range(len(prompts) * req.n)]
    if req.max_tokens:
        # prompts share sampling settings (they differ only in max_tokens defaults, which equal when given)
        results = await _collect(ctx, rid, req.model, prompts, params[0], req.n)
    choices = []
    for i, r in enumerate(results):
        ids = prompts[i // req.n]
        head, items = "", r.logprobs
        if req.echo:
            head = ctx.engine.decode(ids)
            if req.logprobs is not None:
                items = await ctx.engine.score(req.model, ids, req.logprobs) + items
        offset = 0 if req.echo else len(ctx.engine.decode(ids))
        choices.append(P.CompletionChoice(index=i, text=head + r.text, finish_reason=r.finish,
                                          logprobs=_completion_logprobs(items, offset) if req.logprobs is not None
                                          else None))
    usage = _usage(results, sum(len(p) for p in prompts) * req.n)
    await _record(ctx, "completions", rid, req.model, req.prompt, results[0].text, start, usage)
    return P.Completion(id=rid, model=req.model, choices=choices, usage=usage)


async def _completion_stream(ctx, req, rid, prompts, params, start) -> AsyncIterator[str]:
    results = [Result() for _ in range(len(prompts) * req.n)]
    try:
        async for i, d in _merged(ctx, rid, req.model, prompts, params, req.n):
            results[i].text += d.text
            results[i].completion_tokens = d.completion_tokens
            lp = _completion_logprobs(d.logprobs, 0) if params.logprobs else None
            yield _sse(P.CompletionChunk(id=rid, model=req.model, choices=[
                P.CompletionChunkChoice(index=i, text=d.text, finish_reason=d.finish_reason, logprobs=lp)]))
    except APIError as e:
        yield f"data: {P.ErrorResponse(error=e.body).model_dump_json()}\n\n"
        return
    usage = _usage(results, sum(len(p) for p in prompts) * req.n)
    if req.stream_options and req.stream_options.include_usage:
        yield _sse(P.CompletionChunk(id=rid, model=req.model, choices=[], usage=usage))
    yield "data: [DONE]\n\n"
    await _record(ctx, "completions", rid, req.model, req.prompt, results[0].text, start, usage)


# ---- embeddings, models, adapters, feedback ----

async def embeddings(ctx: Context, req: P.EmbeddingRequest) -> P.EmbeddingResponse:
    _check_model(ctx, req.model, "embed")
    inputs = _prompt_ids(ctx, req.input)
    limit = min(ctx.settings.max_prompt_tokens, ctx.engine.context_length)
    for ids in inputs:
        if not ids or len(ids) > limit:
            raise APIError(400, f"each input must have 1 to {limit} tokens (got {len(ids)})", "input")
    vectors = await ctx.engine.embed(inputs)
    if req.encoding_format == "base64":  # little-endian float32, what the OpenAI SDK decodes
        import numpy as np

        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    tokens = sum(len(x) for x in inputs)
    ctx.metrics.tokens(req.model, tokens, 0)
    return P.EmbeddingResponse(model=req.model, usage=P.EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
                               data=[P.Embedding(index=i, embedding=v) for i, v in enumerate(vectors)])


def list_models(ctx: Context) -> P.ModelList:
    return P.ModelList(data=[P.Model(id=name, created=ctx.started, parent=parent)
                             for name, parent in ctx.engine.models().items()])


async def load_adapter(ctx: Context, req: P.LoadAdapterRequest) -> P.AdapterStatus:
    if ctx.engine.kind != "generate":
        raise APIError(400, "adapters need a causal language model", "lora_name")
    if req.lora_name in ctx.engine.models():
        raise APIError(400, f"'{req.lora_name}' is already served; unload it first", "lora_name")
    try:
        folder = adapter_folder(ctx.settings, req.lora_path)
    except UserError as e:
        raise APIError(400, str(e), "lora_path") from e
    try:
        await ctx.engine.load_adapter(req.lora_name, str(folder))
    except (ValueError, OSError, KeyError, RuntimeError) as e:  # wrong base, bad files: the admin can fix it
        raise APIError(400, f"could not load adapter from '{req.lora_path}': {e}", "lora_path") from e
    return P.AdapterStatus(lora_name=req.lora_name, status="loaded")


async def unload_adapter(ctx: Context, req: P.UnloadAdapterRequest) -> P.AdapterStatus:
    if ctx.engine.models().get(req.lora_name) is None:
        raise APIError(404, f"no adapter named '{req.lora_name}' is loaded", "lora_name", code="model_not_found")
    await ctx.engine.unload_adapter(req.lora_name)
    return P.AdapterStatus(lora_name=req.lora_name, status="unloaded")


async def feedback(ctx: Context, req: P.FeedbackRequest) -> P.FeedbackAck:
    if ctx.log is None:
        raise APIError(404, "request logging is off: start the server with --log-db FILE to collect feedback")
    if not await asyncio.to_thread(ctx.log.feedback, req.request_id, req.rating, req.correction):
        raise APIError(404, f"unknown request_id '{req.request_id}'", "request_id")
    return P.FeedbackAck(request_id=req.request_id)


async def health(ctx: Context) -> P.Health:
    h = await ctx.engine.health()
    if h["status"] != "ok":
        raise APIError(503, "the engine thread has stopped", type="server_error")
    return P.Health(**h)
