"""Prometheus metrics for the server: requests by route and status, latency histograms, tokens.

    curl -s localhost:8000/metrics | grep tuneloop_

Each app gets its own registry, so several servers (tests, the benchmark's two configurations) can live in
one process without colliding on metric names.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets in seconds: from a one-token answer on GPU up to long CPU generations.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tuneloop_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("tuneloop_request_latency_seconds", "Time to the last byte of the response",
                                 ["route"], buckets=BUCKETS, registry=r)
        self.prompt_tokens = Counter("tuneloop_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("tuneloop_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.running = Gauge("tuneloop_running_requests", "Requests decoding now", registry=r)
        self.waiting = Gauge("tuneloop_waiting_requests", "Requests waiting for a batch slot", registry=r)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt)
        self.completion_tokens.labels(model).inc(completion)

    def render(self, health: dict) -> tuple[bytes, str]:
        self.running.set(health.get("running", 0))
        self.waiting.set(health.get("waiting", 0))
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts every response and times it to its last body chunk (streams included)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")  # the route template, never the raw URL (bounded labels)
            self.metrics.requests.labels(name, str(status[0])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)
