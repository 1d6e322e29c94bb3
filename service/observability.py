"""Request ids, structured JSON logs and Prometheus metrics.

Metrics are multi-process correct under gunicorn: when ``PROMETHEUS_MULTIPROC_DIR`` is set
(``gunicorn.conf.py`` sets it), every worker writes its samples there and ``/metrics``
aggregates them with :class:`prometheus_client.multiprocess.MultiProcessCollector`.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

REQUEST_LATENCY = Histogram(
    "feed_http_request_duration_seconds",
    "HTTP request latency by route and status.",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REDIS_ERRORS = Counter("feed_redis_errors_total", "Redis errors seen by the service.", ["kind"])
DEGRADED = Counter("feed_degraded_responses_total", "Responses served without Redis.", ["route"])
REDIS_FULL = Counter(
    "feed_redis_full_total",
    "Writes Redis refused because it is full (maxmemory with noeviction), by what was written: "
    "events, post, page (a page served without marking it seen).",
    ["write"],
)
CANDIDATE_SOURCES = Counter(
    "feed_served_items_total", "Items served, by reason (source).", ["reason"]
)
EXPOSURES = Counter(
    "feed_exposures_total", "Pages served in an experiment, by arm.", ["experiment", "arm"]
)
EVENTS = Counter("feed_events_accepted_total", "Events accepted, by type.", ["type"])
EVENTS_REJECTED = Counter(
    "feed_events_rejected_total",
    "Events of a batch rejected (not stored), by error code.",
    ["code"],
)

_RID_RE = re.compile(r"^[A-Za-z0-9_.\-]{8,64}$")
access_log = logging.getLogger("feed.access")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in (
            "request_id",
            "method",
            "path",
            "route",
            "status",
            "duration_ms",
            "user_id",
            "remote",
        ):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """JSON logs to stderr for the service's loggers (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("feed", "service"):
        log = logging.getLogger(name)
        if not any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
            log.addHandler(handler)
        log.setLevel(level.upper())
        log.propagate = False


def record_items(reasons: Iterable[str]) -> None:
    """Count served items by the source that put them on the page."""
    for source, n in collections.Counter(reason.partition(":")[0] for reason in reasons).items():
        CANDIDATE_SOURCES.labels(source).inc(n)


def record_exposure(experiment: str | None, arm: str | None) -> None:
    if experiment:
        EXPOSURES.labels(experiment, arm or "").inc()


def record_events(types: Iterable[str]) -> None:
    for t in types:
        EVENTS.labels(t).inc()


def record_rejected(codes: Iterable[str]) -> None:
    for code, n in collections.Counter(codes).items():
        EVENTS_REJECTED.labels(code).inc(n)


class _EventLogCollector:
    """The event log's export state, read from Redis at scrape time (one round trip, the same
    for every process): ``feed_events_unexported`` (entries logged after the export
    checkpoint; every entry before the first export) and ``feed_events_lost_unexported_total``
    (unexported entries the hard cap trimmed). Nothing when Redis is unreachable."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only (no read when registered)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from feed import contract as c

        if self.store is None or not self.store.available():
            return []
        try:
            pipe = self.store.r.pipeline(transaction=False)
            pipe.get(c.EVENTS_SEQ_KEY)
            pipe.hget(c.EVENTS_EXPORTED_KEY, "seq")
            pipe.hget(c.EVENTS_EXPORTED_KEY, "id")
            pipe.xlen(c.EVENTS_KEY)
            pipe.get(c.EVENTS_LOST_KEY)
            seq, cp_seq, cp_id, length, lost = pipe.execute()
        except Exception:  # noqa: BLE001 - a scrape never fails for Redis
            return []
        backlog = int(length) if cp_id is None else max(int(seq or 0) - int(cp_seq or 0), 0)
        return [
            GaugeMetricFamily(
                "feed_events_unexported",
                "Event-log entries not yet exported (`feed events export`); the log's cap "
                "never trims them below FEED_EVENT_LOG_HARD_MAX.",
                value=backlog,
            ),
            CounterMetricFamily(
                "feed_events_lost_unexported",
                "Event-log entries trimmed by FEED_EVENT_LOG_HARD_MAX before any export.",
                value=int(lost or 0),
            ),
        ]


def _registry() -> CollectorRegistry | None:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None  # the default registry of this process
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def init_app(app: Flask) -> None:
    """Request ids, access logs, latency metrics and the ``/metrics`` route."""
    if app.config.get("JSON_LOGS", True) and not app.testing:
        configure_logging(str(app.config.get("LOG_LEVEL", "INFO")))

    @app.before_request
    def _start() -> None:
        g.t0 = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _RID_RE.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.get("t0", time.perf_counter())
        if route != "/metrics":
            REQUEST_LATENCY.labels(route, request.method, str(resp.status_code)).observe(elapsed)
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            resp.status_code,
            extra={
                "request_id": g.get("request_id"),
                "method": request.method,
                "path": request.path,
                "route": route,
                "status": resp.status_code,
                "duration_ms": round(elapsed * 1000, 3),
                "remote": request.remote_addr,
            },
        )
        return resp

    @app.get("/metrics")
    def metrics() -> Response:
        registry = _registry()
        body = generate_latest(registry) if registry is not None else generate_latest()
        log = CollectorRegistry()  # the event log's export state, read from Redis now
        log.register(_EventLogCollector(app.extensions.get("feed_store")))
        body += generate_latest(log)
        # content_type, not mimetype: CONTENT_TYPE_LATEST has its charset already
        return Response(body, content_type=CONTENT_TYPE_LATEST)
