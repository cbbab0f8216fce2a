"""The engine interface handlers depend on, and the local transformers engine that implements it.

    async with LocalEngine("runs/airline/model", name="airline", max_batch=8) as engine:
        async for delta in engine.generate(GenerationRequest("r1", "airline", ids, SamplingParams())):
            print(delta.text, end="")

All model work runs on one dedicated thread (torch releases the GIL inside kernels, so the event loop keeps
serving while a step runs). That thread owns the model: it admits waiting requests between decoding steps,
runs one forward for all running rows, and executes admin commands (load/unload adapter, scoring,
embeddings) between steps, so no two forwards ever race. `max_batch=1` turns batching off (the benchmark's
baseline): requests then run one after another through the same code.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from typing import AsyncIterator, Callable, Protocol

from tuneloop.serve.types import Delta, GenerationRequest, TokenLogprob


class Engine(Protocol):
    """What handlers may ask of a model server; a remote engine would implement the same methods."""

    name: str  # the base model's served name
    kind: str  # "generate" (causal LM) or "embed" (encoder)
    context_length: int
    vocab_size: int  # token ids a prompt may contain

    async def __aenter__(self) -> "Engine": ...  # load the model, start work
    async def __aexit__(self, *exc) -> None: ...  # stop work, free the model
    def models(self) -> dict[str, str | None]: ...  # served name -> parent (None for the base)
    def encode(self, text: str) -> list: ...
    def encode_chat(self, messages: list) -> list: ...
    def decode(self, ids: list) -> str: ...
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]: ...
    async def score(self, model: str, ids: list, top: int) -> list[TokenLogprob]: ...
    async def embed(self, inputs: list) -> list[list[float]]: ...
    async def abort(self, request_id: str) -> None: ...
    async def health(self) -> dict: ...
    async def load_adapter(self, name: str, folder: str) -> None: ...
    async def unload_adapter(self, name: str) -> None: ...


class LocalEngine:
    """transformers model on this machine, continuous batching on one model thread."""

    def __init__(self, model_path: str, name: str, max_batch: int = 8, adapters: dict | None = None):
        self.model_path, self.name, self.max_batch = model_path, name, max_batch
        self.initial_adapters = dict(adapters or {})  # name -> adapter folder, loaded at start
        self.kind, self.context_length, self.vocab_size = "generate", 0, 0
        self.runner = None
        self._waiting: collections.deque = collections.deque()
        self._commands: collections.deque = collections.deque()
        self._aborted: set = set()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = 0

    # ---- lifetime ----

    async def __aenter__(self) -> "LocalEngine":
        from tuneloop.serve.batcher import Runner

        self._stop.clear()  # an engine may be entered again after an exit (e.g. an app restarted in-process)
        self.runner = await asyncio.to_thread(Runner.load, self.model_path)
        self.kind = self.runner.kind
        cfg = self.runner.model.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        self.vocab_size = min(len(self.runner.tok), self.runner.model.get_input_embeddings().num_embeddings)
        self._thread = threading.Thread(target=self._loop, name="tuneloop-engine", daemon=True)
        self._thread.start()
        for adapter, folder in self.initial_adapters.items():
            await self.load_adapter(adapter, folder)
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify()
        if self._thread:
            await asyncio.to_thread(self._thread.join, 30)
        self.runner, self._thread = None, None  # free the model

    # ---- the model thread ----

    def _loop(self) -> None:
        import torch

        from tuneloop.serve.batcher import Batch

        batch = Batch()
        with torch.inference_mode():
            while not self._stop.is_set():
                with self._cv:
                    while not (self._waiting or self._commands or batch.rows or self._stop.is_set()):
                        self._cv.wait()
                    commands = list(self._commands)
                    self._commands.clear()
                    aborted, self._aborted = self._aborted, set()
                    room = self.max_batch - len(batch.rows)
                    new = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                for fn, fut in commands:
                    _run_into(fn, fut)
                new = [s for s in new if s.request_id not in aborted]
                if aborted and batch.rows:
                    self.runner.drop(batch, aborted)
                try:
                    if new:
                        self.runner.admit(batch, new)
                    if batch.rows:
                        self.runner.step(batch)
                except Exception as e:  # a model failure ends the affected requests, not the server
                    for s in batch.rows + new:
                        s.emit(Delta("", [], "error", len(s.prompt_ids), len(s.generated), f"{type(e).__name__}: {e}"))
                    batch = Batch()
                self._running = len(batch.rows)

    def _call(self, fn: Callable) -> asyncio.Future:
        """Run `fn()` on the model thread between decoding steps; await its result."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._commands.append((fn, fut))
            self._cv.notify()
        return asyncio.wrap_future(fut)

    # ---- the Engine interface ----

    def models(self) -> dict:
        names = {self.name: None}
        names.update({a: self.name for a in (self.runner.adapters if self.runner else {})})
        return names

    def encode(self, text: str) -> list:
        return list(self.runner.tok(text)["input_ids"])

    def encode_chat(self, messages: list) -> list:
        from tuneloop.train.batching import render_ids

        return render_ids(self.runner.tok, messages, add_generation_prompt=True)

    def decode(self, ids: list) -> str:
        return self.runner.tok.decode(ids)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        from tuneloop.serve.batcher import Seq

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(delta: Delta) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, delta)
            except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
                pass

        adapter = None if request.model == self.name else request.model
        seq = Seq(request.request_id, list(request.prompt_ids), request.params, adapter, emit)
        with self._cv:
            self._waiting.append(seq)
            self._cv.notify()
        done = False
        try:
            while not done:
                delta = await queue.get()
                done = delta.finish_reason is not None
                yield delta
        finally:
            if not done:  # the consumer went away (client disconnected): free the batch slot
                self._abort_now(request.request_id)

    def _abort_now(self, request_id: str) -> None:
        with self._cv:
            waiting = [s for s in self._waiting if s.request_id == request_id]
            for s in waiting:  # not started yet: just forget it
                self._waiting.remove(s)
            if not waiting:
                self._aborted.add(request_id)
            self._cv.notify()

    async def abort(self, request_id: str) -> None:
        self._abort_now(request_id)

    async def score(self, model: str, ids: list, top: int) -> list:
        adapter = None if model == self.name else model
        return await self._call(lambda: self.runner.score(ids, adapter, top))

    async def embed(self, inputs: list) -> list:
        return await self._call(lambda: self.runner.embed(inputs))

    async def health(self) -> dict:
        alive = bool(self._thread and self._thread.is_alive())
        return {"status": "ok" if alive else "dead", "model": self.name,
                "adapters": sorted(self.runner.adapters) if self.runner else [],
                "running": self._running, "waiting": len(self._waiting)}

    async def load_adapter(self, name: str, folder: str) -> None:
        await self._call(lambda: self.runner.load_adapter(name, folder))

    async def unload_adapter(self, name: str) -> None:
        await self._call(lambda: self.runner.unload_adapter(name))


def _run_into(fn: Callable, fut: concurrent.futures.Future) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(fn())
    except Exception as e:  # handed to the awaiting coroutine, which turns it into an HTTP error
        fut.set_exception(e)
