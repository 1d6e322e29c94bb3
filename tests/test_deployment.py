"""The shipped deployment: real gunicorn (``gunicorn.conf.py``) behind real nginx
(``deploy/nginx/feed.conf.template``, what compose.yaml runs), against the test's Redis.

Slow clients are real sockets on loopback that send a request a byte at a time, a bounded number
of them for a bounded time. nginx reads whole requests before gunicorn sees them, so they never
hold a worker; on bare gunicorn one of them holds a single-threaded worker (the check that the
slow clients are slow enough to show anything).

The nginx tests skip, saying how to install it, when there is no nginx (Debian's ``nginx`` at
/usr/sbin/nginx, or the binary named by ``FEED_NGINX``); ``.ci/run`` installs it.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx" / "feed.conf.template"
NGINX = os.environ.get("FEED_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
SECRET = "deployment-test-cursor-secret"
BOUND_S = 2.0  # a health check or a feed page answers within this while slow clients trickle
PACE_S = 0.25  # slow clients send one byte this often
START_S = 30.0  # gunicorn and nginx start within this


def require_nginx() -> str:
    if not os.access(NGINX, os.X_OK):
        pytest.skip(
            f"no nginx at {NGINX}: install Debian's nginx (apt-get install nginx) or set "
            "FEED_NGINX to an nginx binary; .ci/run installs it"
        )
    return NGINX


# --- servers ---------------------------------------------------------------------------------
def _env(extra: dict[str, str]) -> dict[str, str]:
    """The environment without the caller's FEED_* and GUNICORN_* settings, plus ``extra``."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("FEED_", "GUNICORN_"))}
    return {**keep, **extra}


def _get(port: int, path: str, timeout: float = BOUND_S) -> tuple[int | None, bytes]:
    """(status, body) of a GET on a new connection; status None when there was no answer within
    ``timeout`` (or the connection failed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return None, b""
    finally:
        conn.close()


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Stop a server with ``sig``, killed after 30 s."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def gunicorn(
    redis_url: str,
    work: Path,
    port: int,
    workers: int | None,
    secret: str | None = SECRET,
    extra: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``gunicorn -c gunicorn.conf.py 'service:create_app()'`` on 127.0.0.1:``port``, answering
    /healthz; stopped (SIGTERM, then SIGKILL) on exit. ``workers`` None: GUNICORN_WORKERS
    unset; ``extra``: more environment on top. The log is ``work/gunicorn-<port>.log``."""
    metrics = work / f"metrics-{port}"
    metrics.mkdir()
    env = {
        "FEED_REDIS_URL": redis_url,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_LOG_LEVEL": "warning",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
    }
    if workers is not None:
        env["GUNICORN_WORKERS"] = str(workers)
    if secret:
        env["FEED_CURSOR_SECRET"] = secret
    env.update(extra or {})
    log = work / f"gunicorn-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"],
            cwd=ROOT,
            env=_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_S
        while _get(port, "/healthz", 1.0)[0] != 200:
            assert proc.poll() is None, f"gunicorn exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"gunicorn not up: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield proc
    finally:
        _stop(proc, signal.SIGTERM)


def render_template(listen: str, upstream: str) -> str:
    """The committed template with its two variables filled in, as envsubst does."""
    text = TEMPLATE.read_text()
    text = text.replace("${PROXY_LISTEN}", listen).replace("${PROXY_UPSTREAM}", upstream)
    assert not re.search(r"\$\{[A-Z_]+\}", text), "the template has a variable this test misses"
    return text


@contextmanager
def nginx(work: Path, port: int, upstream_port: int) -> Iterator[None]:
    """nginx with the committed server block on 127.0.0.1:``port``, in front of gunicorn on
    ``upstream_port``; the main configuration around it is the test's (paths under ``work``)."""
    binary = require_nginx()
    home = work / "nginx"
    home.mkdir()
    server = render_template(f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}")
    (home / "feed.conf").write_text(server)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers that can read ``work``
    temp = "".join(
        f"    {kind}_temp_path {home / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (home / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {home / 'nginx.pid'};\n"
        f"error_log {home / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log off;\n{temp}    include {home / 'feed.conf'};\n}}\n"
    )
    cmd = [binary, "-e", str(home / "error.log"), "-p", str(home), "-c", str(home / "nginx.conf")]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([*cmd, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, (home / "error.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx is not listening"
                time.sleep(0.05)
        yield
    finally:
        _stop(proc, signal.SIGQUIT)  # graceful: workers finish, then the master exits


# --- slow clients ----------------------------------------------------------------------------
class SlowClient(threading.Thread):
    """One connection sending ``head`` at once, then ``trickle`` one byte every ``PACE_S``
    seconds until stopped (or the bytes or ``seconds`` run out)."""

    def __init__(self, port: int, head: bytes, trickle: bytes, seconds: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.port, self.head, self.trickle, self.seconds = port, head, trickle, seconds
        self.stop = threading.Event()
        self.sent = 0
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as sock:
                sock.sendall(self.head)
                for byte in self.trickle:
                    if self.stop.wait(PACE_S) or time.monotonic() > deadline:
                        break
                    sock.sendall(bytes([byte]))
                    self.sent += 1
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"


def slow_head(port: int) -> SlowClient:
    """A GET whose request line and headers come a byte at a time."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 400 + b"\r\n\r\n"
    return SlowClient(port, b"", head)


def slow_body(port: int) -> SlowClient:
    """A POST /v1/events whose headers come at once and whose body comes a byte at a time."""
    body = orjson.dumps({"events": [{"type": "click", "user_id": "u1", "post_id": "p1"}]})
    body = body.ljust(400)
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    return SlowClient(port, head, body)


@contextmanager
def trickling(clients: list[SlowClient]) -> Iterator[list[SlowClient]]:
    for client in clients:
        client.start()
    time.sleep(1.0)  # connected, head sent or started, held by whoever reads them
    try:
        yield clients
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(timeout=10)


# --- tests -----------------------------------------------------------------------------------
def test_the_template_is_what_compose_mounts() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    assert "./deploy/nginx/feed.conf.template:/etc/nginx/templates/default.conf.template" in compose
    feed = compose.split("\n  feed:\n", 1)[1].split("\n  proxy:\n", 1)[0]
    published = re.search(r"^ +ports:", feed, re.MULTILINE)
    assert not published, "gunicorn must not be published: slow clients would reach it"


@pytest.mark.slow
def test_slow_clients_never_hold_a_worker_behind_nginx(
    redis_url: str, published: str, tmp_path: Path
) -> None:
    require_nginx()
    gport, nport = free_port(), free_port()
    feed = "/v1/feed/u1?limit=5"
    with gunicorn(redis_url, tmp_path, gport, workers=1, secret=None):  # one needs none
        # bare gunicorn (one worker, one thread): a single slow body holds it
        with trickling([slow_body(gport)]):
            bare = [_get(gport, "/healthz")[0] for _ in range(2)]
        assert bare == [None, None], (
            f"bare gunicorn answered {bare} while a slow client sent its body: the slow "
            "clients no longer hold a worker, so the check below shows nothing; revisit"
        )
        with nginx(tmp_path, nport, gport):
            clients = [slow_head(nport) for _ in range(3)] + [slow_body(nport) for _ in range(3)]
            with trickling(clients):
                answers = []
                for _ in range(4):
                    for path in ("/healthz", feed):
                        t0 = time.monotonic()
                        status, _ = _get(nport, path)
                        answers.append((path, status, time.monotonic() - t0))
                    time.sleep(PACE_S)
                alive = [(c.sent, c.error) for c in clients]
            assert all(status == 200 and took < BOUND_S for _, status, took in answers), answers
            # the slow clients were still connected and sending all along (nginx held them)
            assert all(sent >= 8 and error is None for sent, error in alive), alive


@pytest.mark.slow
def test_pages_of_one_scroll_across_workers_and_nginx_errors_in_json(
    redis_url: str, published: str, tmp_path: Path
) -> None:
    """The probe's 39 of 60 failed page-2 requests came from workers with their own random
    cursor keys: with the one secret gunicorn.conf.py now insists on, every next page works
    whichever worker answers it. nginx's own errors are JSON like the service's."""
    require_nginx()
    gport, nport = free_port(), free_port()
    with nginx(tmp_path, nport, gport):
        with gunicorn(redis_url, tmp_path, gport, workers=3):
            for i in range(20):  # new connections: the kernel spreads them over the workers
                status, body = _get(nport, f"/v1/feed/u{i}?limit=3")
                assert status == 200, body
                cursor = orjson.loads(body)["next_cursor"]
                status, body = _get(nport, f"/v1/feed/u{i}?limit=3&cursor={cursor}")
                assert status == 200, (i, body)
            # an id with a space and punctuation reaches the service through nginx as sent
            status, body = _get(nport, "/v1/feed/John%20Smith%20(r%26b)?limit=3")
            assert status == 200 and orjson.loads(body)["user_id"] == "John Smith (r&b)", body
            with socket.create_connection(("127.0.0.1", nport), timeout=BOUND_S) as sock:
                sock.sendall(
                    b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 2000000\r\n\r\n"
                )
                reply = sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 413"), reply
            error: dict[str, Any] = orjson.loads(reply.split(b"\r\n\r\n", 1)[1])
            assert error["error"]["code"] == "request_entity_too_large", error
        status, body = _get(nport, "/healthz")  # gunicorn stopped
        assert status == 503 and orjson.loads(body)["error"]["code"] == "unavailable", body


def test_several_workers_refuse_to_start_without_a_cursor_secret(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = _env(
        {
            "FEED_REDIS_URL": redis_url,
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        }
    )
    run = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "2 workers need one FEED_CURSOR_SECRET" in run.stderr, run.stderr
    assert "export FEED_CURSOR_SECRET=" in run.stderr
    with pytest.raises(OSError):  # it never listened
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


# --- compose, the images and gunicorn's settings ----------------------------------------------
def _compose() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def _secret_ref(value: str, name: str) -> bool:
    """``value`` is ``${NAME:?message}``: compose refuses to start without NAME."""
    return re.fullmatch(r"\$\{" + name + r":\?[^}]+\}", value) is not None


def test_compose_redis_is_private_with_a_password_and_secrets_come_from_the_environment() -> None:
    services = _compose()["services"]
    redis = services["redis"]
    assert "ports" not in redis, "Redis must be reachable on the compose network only"
    assert _secret_ref(redis["environment"]["REDIS_PASSWORD"], "REDIS_PASSWORD")
    assert '--requirepass "$$REDIS_PASSWORD"' in " ".join(redis["command"])
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    feed = services["feed"]
    assert feed["build"] == {"context": ".", "target": "service"}
    env = feed["environment"]
    assert _secret_ref(env["FEED_CURSOR_SECRET"], "FEED_CURSOR_SECRET")
    assert _secret_ref(env["FEED_ADMIN_TOKEN"], "FEED_ADMIN_TOKEN")
    for name in ("feed", "trainer"):
        url = services[name]["environment"]["FEED_REDIS_URL"]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", url), url
    trainer = services["trainer"]
    assert trainer["profiles"] == ["train"] and trainer["build"]["target"] == "trainer"
    script = " ".join(trainer["command"])
    assert "feed train /data --out /artifacts" in script and "feed publish" in script
    assert "--activate" in script
    # no literal secret anywhere: every secret-looking value is a ${VAR:?...} reference
    for svc in services.values():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"SECRET|TOKEN|PASSWORD|API_KEY", key):
                assert _secret_ref(str(value), key), (key, value)


def _stages() -> dict[str, str]:
    """The Dockerfile's stages: name -> its lines (``FROM x AS name`` starts one)."""
    stages: dict[str, str] = {}
    name = None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        m = re.match(r"FROM \S+ AS (\S+)", line)
        if m:
            name = m.group(1)
            stages[name] = ""
        elif name is not None:
            stages[name] += line + "\n"
    return stages


TRAINING_STACK = {"implicit", "scikit-learn", "pandas", "pyarrow", "jieba", "threadpoolctl"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def test_the_service_image_installs_the_service_extra_only() -> None:
    stages = _stages()
    assert {"base", "trainer", "service"} <= set(stages)
    assert list(stages)[-1] == "service"  # `docker build .` builds the service
    service = stages["service"]
    assert "build-essential" not in service + stages["base"]
    assert "['service']" in service and "pip install --no-deps ." in service
    assert not re.search(r"pip install (?!--no-deps)(?!-r)\S*\.", service), service
    assert "gunicorn" in service and "pip install ." in stages["trainer"]
    project = _pyproject()
    extra = project["optional-dependencies"]["service"]
    assert not {_name(r) for r in extra} & TRAINING_STACK
    pins = {_name(r): r for r in project["dependencies"]}
    for requirement in extra:  # the same pins as the package's own dependencies
        assert pins.get(_name(requirement), "").split("#")[0].strip() == requirement


def _closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install (without extras' optional ones)."""
    import importlib.metadata as md

    todo, seen = [_name(r) for r in requirements], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_the_service_needs_no_more_than_the_service_extra(redis_url: str, published: str) -> None:
    """Every distribution the service process loads while it answers its routes is in the
    `service` extra's closure (the image would miss it otherwise)."""
    script = """
import sys, importlib.metadata as md
from service import create_app
token = "t" * 20
app = create_app({"REDIS_URL": sys.argv[1], "ADMIN_TOKEN": token})
c = app.test_client()
auth = {"Authorization": "Bearer " + token}
for path in ("/v1/feed/u1", "/v1/posts/p1/similar", "/docs", "/openapi.json", "/metrics",
             "/viewer", "/healthz", "/readyz", "/v1/admin/versions", "/v1/admin/experiments",
             "/v1/users/u1/gifts?for=u2"):
    assert c.get(path, headers=auth).status_code < 500, path
top = {m.split(".")[0] for m in list(sys.modules)}
dists = md.packages_distributions()
print("\\n".join(sorted({d for t in top for d in dists.get(t, [])})))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, redis_url],
        cwd=ROOT,
        env=_env({}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = {_name(d) for d in out.stdout.split()} - {"shopfeed", "setuptools", "pip"}
    allowed = _closure(_pyproject()["optional-dependencies"]["service"])
    assert loaded <= allowed, f"the service imports {sorted(loaded - allowed)}: add to `service`"
    assert not loaded & TRAINING_STACK


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_gunicorn_honours_web_concurrency_and_logs_json(
    redis_url: str, published: str, tmp_path: Path
) -> None:
    port = free_port()
    extra = {
        "WEB_CONCURRENCY": "2",
        "GUNICORN_LOG_LEVEL": "info",
        "FEED_JSN_LOGS": "1",  # misspelt: one warning, from the master, with the right name
    }
    with gunicorn(redis_url, tmp_path, port, workers=None, extra=extra):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND_S)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "text/plain; version=1.0.0; charset=utf-8"
        assert _get(port, "/v1/feed/u1?limit=3")[0] == 200
        time.sleep(0.3)
    lines = _json_lines((tmp_path / f"gunicorn-{port}.log").read_text())  # every line JSON
    messages = [x["message"] for x in lines]
    assert sum(m.startswith("Booting worker") for m in messages) == 2, messages
    assert any(x["logger"] == "gunicorn.error" for x in lines)
    warned = [m for m in messages if "FEED_JSN_LOGS" in m]
    assert warned == [
        "unknown environment variable FEED_JSN_LOGS is ignored; did you mean FEED_JSON_LOGS?"
    ]
    # each request logged once: the service's access log, not gunicorn's too
    assert sum("/v1/feed/u1" in m for m in messages) == 1, messages

    # GUNICORN_WORKERS wins over WEB_CONCURRENCY; FEED_JSON_LOGS=false: gunicorn's plain lines
    port = free_port()
    extra = {"WEB_CONCURRENCY": "3", "GUNICORN_LOG_LEVEL": "info", "FEED_JSON_LOGS": "false"}
    with gunicorn(redis_url, tmp_path, port, workers=1, extra=extra):
        pass
    text = (tmp_path / f"gunicorn-{port}.log").read_text()
    assert text.count("Booting worker") == 1, text
    assert "[INFO] Booting worker" in text and '"logger":"gunicorn.error"' not in text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEED_JSON_LOGS": "flase"}, "Error: FEED_JSON_LOGS='flase' is not a boolean"),
        ({"GUNICORN_THREADS": "four"}, "GUNICORN_THREADS='four' must be a positive integer"),
    ],
)
def test_gunicorn_refuses_bad_settings_at_start(
    redis_url: str, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    port = free_port()
    run = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"],
        cwd=ROOT,
        env=_env(
            {
                "FEED_REDIS_URL": redis_url,
                "GUNICORN_BIND": f"127.0.0.1:{port}",
                "GUNICORN_WORKERS": "1",
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
                **env,
            }
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert message in run.stderr, run.stderr[-2000:]
    if "FEED_JSON_LOGS" in env:
        assert "0, false, no, off" in run.stderr


def test_start_up_warns_once_on_unknown_feed_names_and_refuses_bad_booleans(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from service import create_app
    from service.config import ConfigError

    monkeypatch.setenv("FEED_REDIS_ULR", "redis://typo:6379/0")
    with caplog.at_level("WARNING", logger="service.config"):
        create_app({"REDIS_URL": redis_url, "TESTING": True})
        create_app({"REDIS_URL": redis_url, "TESTING": True})
    warned = [r.getMessage() for r in caplog.records if "FEED_REDIS_ULR" in r.getMessage()]
    assert warned == [
        "unknown environment variable FEED_REDIS_ULR is ignored; did you mean FEED_REDIS_URL?"
    ]
    monkeypatch.setenv("FEED_JSON_LOGS", "flase")
    accepted = "use one of 1, true, yes, on (true) or 0, false, no, off (false)"
    with pytest.raises(
        ConfigError, match=re.escape(f"FEED_JSON_LOGS='flase' is not a boolean: {accepted}")
    ):
        create_app({"REDIS_URL": redis_url, "TESTING": True})
    monkeypatch.setenv("FEED_JSON_LOGS", "Off")
    monkeypatch.setenv("FEED_PAGE_NO_ADJACENT_AUTHOR", "maybe")
    with pytest.raises(ConfigError, match="FEED_PAGE_NO_ADJACENT_AUTHOR='maybe' is not a boolean"):
        create_app({"REDIS_URL": redis_url, "TESTING": True})
    monkeypatch.setenv("FEED_PAGE_NO_ADJACENT_AUTHOR", "yes")
    app = create_app({"REDIS_URL": redis_url, "TESTING": True})
    assert app.config["JSON_LOGS"] is False and app.config["PAGE_NO_ADJACENT_AUTHOR"] is True
