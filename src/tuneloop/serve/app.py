"""App assembly: routes + middleware + error rendering, and the lifespan that owns the engine.

    app = build_app(LocalEngine("runs/airline/model", name="airline"), ServeSettings(max_batch=8))
    uvicorn.run(app, host="127.0.0.1", port=8000)

The engine is entered (model loaded, model thread started) when the app starts and exited when it stops, so
nothing heavy happens at import or construction time, and tests can build apps freely.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tuneloop.serve import protocol as P
from tuneloop.serve.engine import Engine
from tuneloop.serve.feedback import RequestLog
from tuneloop.serve.handlers import APIError, Context
from tuneloop.serve.metrics import Metrics, MetricsMiddleware
from tuneloop.serve.routes import router
from tuneloop.serve.settings import ServeSettings


def _error(status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
           code: str | None = None) -> JSONResponse:
    body = P.ErrorResponse(error=P.ErrorBody(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


class BodyLimit:
    """Reject request bodies over `max_bytes` with 413, by Content-Length and by counting streamed chunks."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await _error(413, f"request body over {self.max_bytes} bytes")(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # chunked upload without a (truthful) Content-Length
                raise APIError(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)


async def _api_error(request: Request, e: APIError) -> JSONResponse:
    return JSONResponse(P.ErrorResponse(error=e.body).model_dump(), status_code=e.status)


async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0] if e.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    return _error(400, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}", ".".join(loc) or None)


async def _http(request: Request, e: HTTPException) -> JSONResponse:
    return _error(e.status_code, str(e.detail), type="invalid_request_error" if e.status_code < 500 else "server_error")


async def _internal(request: Request, e: Exception) -> JSONResponse:
    return _error(500, f"internal error: {type(e).__name__}", type="server_error")


def build_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log = RequestLog(settings.log_db).open() if settings.log_db else None
        try:
            async with engine:
                app.state.ctx = Context(engine, settings, metrics, log)
                yield
        finally:
            if log:
                log.close()

    app = FastAPI(title="tuneloop", summary="OpenAI-compatible serving of tuneloop models", version="1",
                  lifespan=lifespan)
    app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _internal)
    return app
