"""gunicorn settings for the feed service: ``gunicorn -c gunicorn.conf.py 'service:create_app()'``.

Every value can be overridden by the matching environment variable (``GUNICORN_WORKERS``...).
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
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() + 1))
threads = int(os.environ.get("GUNICORN_THREADS", 1))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))  # a stuck worker is restarted
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 20))  # SIGHUP / SIGTERM drain
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 20_000))  # recycle leaking workers
max_requests_jitter = 2_000
preload_app = False  # Redis clients must be created after fork
accesslog = None  # the app writes structured JSON access logs itself
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")

_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="feed-metrics-"))


def on_starting(server):
    """Refuse several workers without a cursor secret; start with an empty metrics directory."""
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
