"""gunicorn settings for the feed service: ``gunicorn -c gunicorn.conf.py 'service:create_app()'``.

Every value can be overridden by the matching environment variable (``GUNICORN_WORKERS``...);
the number of workers also by ``WEB_CONCURRENCY`` (what Heroku-style platforms set), which
``GUNICORN_WORKERS`` overrides. With ``FEED_JSON_LOGS`` on (the default) gunicorn's own error
and access logs are JSON lines too, in the service's format (``logconfig_dict``). At start the
master checks the ``FEED_*`` environment once (``service.config.check_environment``): an
unknown name is a warning, a bad boolean (``FEED_JSON_LOGS=flase``) stops it.
gunicorn listens on loopback (``127.0.0.1:8001``) behind nginx (``deploy/nginx/``), which reads
each request whole before a worker sees it: a worker reading a client's request itself is held
for as long as that client takes to send it (docs/security.md, "Slow clients").
Several workers need one ``FEED_CURSOR_SECRET`` (``on_starting`` refuses to start without it).
The app is created after fork in each worker (no ``preload_app``), so each worker opens its
own Redis connection pool; metrics are aggregated across workers through
``PROMETHEUS_MULTIPROC_DIR``.
"""

import multiprocessing
import os
import tempfile

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8001")  # the image: 0.0.0.0:8000 (Dockerfile)
# A page is CPU-bound Python (two short Redis round trips): one thread per worker and one worker
# per core (plus one to cover those waits) keep requests from queueing on a worker's GIL; more
# threads raised the server-side p99 at the same load (BENCHMARKS.md).


def _int(*names, default):
    """The first of the environment variables ``names`` that is set, as a positive integer."""
    for name in names:
        raw = os.environ.get(name, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise RuntimeError(f"{name}={raw!r} must be a positive integer")
            return int(raw)
    return default


workers = _int("GUNICORN_WORKERS", "WEB_CONCURRENCY", default=multiprocessing.cpu_count() + 1)
threads = _int("GUNICORN_THREADS", default=1)
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))  # a stuck worker is restarted
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 20))  # SIGHUP / SIGTERM drain
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 20_000))  # recycle leaking workers
max_requests_jitter = 2_000
preload_app = False  # Redis clients must be created after fork
# the app writes structured JSON access logs itself (a gunicorn access log would log each
# request twice); GUNICORN_ACCESSLOG=- turns gunicorn's on
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


def _json_logs():
    raw = os.environ.get("FEED_JSON_LOGS", "true").strip().lower()
    return raw not in ("0", "false", "no", "off")  # a bad word: on_starting refuses it


if _json_logs():
    # gunicorn.error and gunicorn.access as JSON lines on stderr, the service's formatter
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.observability.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "WARNING", "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {
                "level": loglevel.upper(),
                "handlers": ["json"],
                "propagate": False,
                "qualname": "gunicorn.error",
            },
            "gunicorn.access": {  # off unless GUNICORN_ACCESSLOG (the app logs each request)
                "level": "INFO" if accesslog else "WARNING",
                "handlers": ["json"] if accesslog else [],
                "propagate": False,
                "qualname": "gunicorn.access",
            },
        },
    }

_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="feed-metrics-")
)


def on_starting(server):
    """Check the FEED_* environment (once, in the master: workers inherit what was warned);
    refuse several workers without a cursor secret; start with an empty metrics directory."""
    from service.config import ConfigError, check_environment

    try:
        check_environment(os.environ)
    except ConfigError as e:  # a RuntimeError: gunicorn prints "Error: <message>", exits 1
        raise RuntimeError(str(e)) from None
    if server.cfg.workers > 1 and not os.environ.get("FEED_CURSOR_SECRET"):
        # gunicorn prints "Error: <message>" and exits 1
        raise RuntimeError(
            f"{server.cfg.workers} workers need one FEED_CURSOR_SECRET: without it each worker "
            "signs cursors with its own random key, and a next page fails whenever another "
            "worker answers it. Set the same secret on every worker and replica, e.g.\n"
            "  export FEED_CURSOR_SECRET=$(python -c "
            "'import secrets; print(secrets.token_urlsafe(32))')"
        )
    for name in os.listdir(_metrics_dir):
        os.unlink(os.path.join(_metrics_dir, name))


def child_exit(server, worker):  # noqa: ARG001 - gunicorn hook signature
    """Drop a dead worker's live gauges from the aggregate."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
