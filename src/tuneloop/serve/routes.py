"""HTTP routes: each one checks the caller's scope, calls one handler and shapes the HTTP response.

    GET  /v1/models              POST /v1/chat/completions     POST /v1/completions     POST /v1/embeddings
    POST /v1/feedback            POST /v1/load_lora_adapter    POST /v1/unload_lora_adapter (admin)
    GET  /health                 GET  /metrics

Non-streaming generation is cancelled when the client disconnects (a watcher waits for the ASGI
`http.disconnect` message); streaming responses are cancelled by Starlette itself. Cancelling reaches
the engine, which frees the request's batch slot at the next decoding step.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from tuneloop.serve import handlers
from tuneloop.serve import protocol as P
from tuneloop.serve.handlers import APIError, Context
from tuneloop.serve.settings import scope_of

ERRORS = {code: {"model": P.ErrorResponse} for code in (400, 401, 403, 404, 413)}
STREAM = {200: {"content": {"text/event-stream": {}}}}


def _ctx(request: Request) -> Context:
    return request.app.state.ctx


async def user_scope(request: Request) -> None:
    if scope_of(_ctx(request).settings, request.headers.get("authorization")) is None:
        raise APIError(401, "missing or invalid API key (send Authorization: Bearer KEY)", code="invalid_api_key")


async def admin_scope(request: Request) -> None:
    scope = scope_of(_ctx(request).settings, request.headers.get("authorization"))
    if scope != "admin":
        raise APIError(401 if scope is None else 403, "this endpoint needs an admin API key", type="permission_error",
                       code="invalid_api_key" if scope is None else None)


USER, ADMIN = [Depends(user_scope)], [Depends(admin_scope)]
router = APIRouter(responses=ERRORS)


async def _until_disconnect(request: Request, work):
    """Await `work`, cancelling it if the client disconnects first; None means the client is gone."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    return task.result() if task.done() and not task.cancelled() else None


def _respond(result):
    if result is None:
        return Response(status_code=499)  # client closed the request; nobody reads this
    if isinstance(result, BaseModel):
        return result
    return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/v1/models", response_model=P.ModelList, dependencies=USER)
async def models(request: Request):
    return handlers.list_models(_ctx(request))


@router.post("/v1/chat/completions", response_model=P.ChatCompletion, responses=STREAM, dependencies=USER)
async def chat_completions(body: P.ChatCompletionRequest, request: Request):
    return _respond(await _until_disconnect(request, handlers.chat_completion(_ctx(request), body)))


@router.post("/v1/completions", response_model=P.Completion, responses=STREAM, dependencies=USER)
async def completions(body: P.CompletionRequest, request: Request):
    return _respond(await _until_disconnect(request, handlers.completion(_ctx(request), body)))


@router.post("/v1/embeddings", response_model=P.EmbeddingResponse, dependencies=USER)
async def embeddings(body: P.EmbeddingRequest, request: Request):
    return _respond(await _until_disconnect(request, handlers.embeddings(_ctx(request), body)))


@router.post("/v1/feedback", response_model=P.FeedbackAck, dependencies=USER)
async def feedback(body: P.FeedbackRequest, request: Request):
    return await handlers.feedback(_ctx(request), body)


@router.post("/v1/load_lora_adapter", response_model=P.AdapterStatus, dependencies=ADMIN)
async def load_lora_adapter(body: P.LoadAdapterRequest, request: Request):
    return await handlers.load_adapter(_ctx(request), body)


@router.post("/v1/unload_lora_adapter", response_model=P.AdapterStatus, dependencies=ADMIN)
async def unload_lora_adapter(body: P.UnloadAdapterRequest, request: Request):
    return await handlers.unload_adapter(_ctx(request), body)


@router.get("/health", response_model=P.Health, responses={503: {"model": P.ErrorResponse}})
async def health(request: Request):
    return await handlers.health(_ctx(request))


@router.get("/metrics", response_class=Response, dependencies=USER,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request):
    ctx = _ctx(request)
    body, content_type = ctx.metrics.render(await ctx.engine.health())
    return Response(body, media_type=content_type)
