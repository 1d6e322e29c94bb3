"""`feed demo`, `feed redis` and the shape of the whole `feed` command tree, run for real:
subprocesses of the installed CLI, a real HTTP server, real private redis-servers."""

from __future__ import annotations

import http.client
import importlib.metadata
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from helpers import free_port

from feed import redisserver
from feed.cli import main
from feed.versions import list_versions

DEMO_SIZE = ["--users", "60", "--posts", "80"]


def _env() -> dict[str, str]:
    """The caller's environment without FEED_* (no Redis URL: the demo starts its own)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("FEED_")}
    return {**keep, "PYTHONUNBUFFERED": "1"}


def _get(port: int, path: str, token: str | None = None) -> tuple[int | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return None, b""
    finally:
        conn.close()


def _interruptible() -> None:
    """Ctrl-C's default in the child: a shell's background job (CI started with ``&``) ignores
    SIGINT, and a Python started so never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(port: int, proc: subprocess.Popen[str], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _get(port, "/healthz")[0] == 200:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no answer on port {port} within {timeout}s")


def test_demo_serves_prints_a_working_token_logs_once_and_stops_its_redis(
    tmp_path: Path,
) -> None:
    port = free_port()
    t0 = time.monotonic()
    err_file = tmp_path / "stderr.txt"
    with err_file.open("w") as err_out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "feed.cli", "demo", *DEMO_SIZE, "--port", str(port)],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=err_out,
            text=True,
            preexec_fn=_interruptible,
        )
    private = tmp_path / ".feed" / "redis"
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # up to the last line printed before serving
            lines.append(line)
            if line.startswith("Ctrl-C stops the demo"):
                break
        out = "".join(lines)
        _wait_for(port, proc)
        user = re.search(r"/v1/feed/(u\d+)\?limit=5", out).group(1)  # type: ignore[union-attr]
        status, body = _get(port, f"/v1/feed/{user}?limit=5")
        seconds = time.monotonic() - t0
        assert status == 200 and b'"items"' in body
        assert seconds < 120, seconds
        pid = redisserver.status(private)["pid"]
        assert pid is not None
        assert _get(port, "/viewer")[0] == 200
        assert _get(port, "/docs")[0] == 200
        # the printed token opens what the viewer's comparison column and history read
        token = re.search(r"^admin token: (\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
        version = re.search(r"^4/4 serving (\S+)", out, re.M).group(1)  # type: ignore[union-attr]
        assert _get(port, "/v1/admin/versions")[0] == 401
        status, body = _get(port, "/v1/admin/versions", token)
        assert status == 200 and version.encode() in body
        assert _get(port, f"/v1/admin/users/{user}/history", token)[0] == 200
        preview = f"/v1/feed/{user}?preview=1&version={version}"
        assert _get(port, preview, token)[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    out += rest
    err = err_file.read_text()
    assert proc.returncode == 0, err[-2000:]
    # stages while training, then the links
    for stage in ("features", "fitting sources", "ranker:", "candidates", "writing"):
        assert stage in out, (stage, out)
    assert f"http://127.0.0.1:{port}/viewer?user=" in out
    assert f"http://127.0.0.1:{port}/docs" in out
    # each request was logged once (the service's access log; not werkzeug's line too)
    logged = err.splitlines()
    assert sum(f"/v1/feed/{user}" in line for line in logged) == 2, err  # two requests
    assert sum("/v1/admin/versions" in line for line in logged) == 2, err
    # Ctrl-C stopped the private Redis the demo started, and said so
    assert f"stopped the private Redis server (pid {pid})" in out
    assert not redisserver.status(private)["running"]
    assert _state(pid) in ("Z", "gone")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_demo_refuses_a_busy_port_before_training(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "feed.cli", "demo", *DEMO_SIZE, "--port", str(port)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "--port" in lines[0], out.stderr
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / ".feed").exists()  # no data, no training, no Redis


def test_demo_keeps_the_last_two_of_its_versions(
    r: Any, redis_url: str, published: str, tmp_path: Path
) -> None:
    """Three demos into one Redis: the first demo version is deleted (keys and directory);
    a version the demo did not make stays."""
    made = []
    for _ in range(3):
        res = CliRunner().invoke(
            main,
            ["demo", *DEMO_SIZE, "--dir", str(tmp_path / "demo"), "--no-serve"]
            + ["--redis-url", redis_url],
            catch_exceptions=False,
        )
        assert res.exit_code == 0, res.output
        made.append(re.search(r"^4/4 serving (\S+)", res.output, re.M).group(1))  # type: ignore[union-attr]
        time.sleep(1.1)  # version ids carry the second they were made
    assert f"deleted 1 older demo version(s): {made[0]}" in res.output
    in_redis = {v["version"] for v in list_versions(r)}
    assert in_redis == {published, made[1], made[2]}
    assert not r.keys(f"*{made[0]}*")
    assert sorted(p.name for p in (tmp_path / "demo" / "artifacts").iterdir()) == made[1:]


def test_redis_status_and_stop(tmp_path: Path) -> None:
    d = tmp_path / "private"
    runner = CliRunner()
    res = runner.invoke(main, ["redis", "status", "--dir", str(d)])
    assert res.exit_code == 3 and "not running" in res.output
    url = redisserver.start(d, persist=False)
    pid = redisserver.status(d)["pid"]
    res = runner.invoke(main, ["redis", "status", "--dir", str(d)])
    assert res.exit_code == 0, res.output
    assert f"running: pid {pid}, {url}, answers PING" in res.output
    res = runner.invoke(main, ["redis", "stop", "--dir", str(d)])
    assert res.exit_code == 0 and f"stopped the private Redis server (pid {pid})" in res.output
    assert not redisserver.status(d)["running"]
    res = runner.invoke(main, ["redis", "stop", "--dir", str(d)])
    assert res.exit_code == 0 and "no private Redis server was running" in res.output


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*path, name))
        else:
            out.append((*path, name))
    return out


def test_every_command_has_an_example_in_its_help() -> None:
    runner = CliRunner()
    paths = _commands(main)
    assert len(paths) > 25  # the walk reached the subcommands
    missing = []
    for path in paths:
        res = runner.invoke(main, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        after = res.output.partition("Example:")[2].strip()
        if not after.startswith("feed "):
            missing.append(" ".join(path) or "feed")
    assert not missing, f"no 'Example:' in the --help of: {', '.join(missing)}"


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "feed.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"feed {importlib.metadata.version('shopfeed')}"


@pytest.mark.parametrize("args", [["--port", "0x"], ["--users", "3"]])
def test_demo_bad_options_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path), *args])
    assert res.exit_code == 2 and "Invalid value" in res.output


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_publish_bar_ends_at_100_percent(
    r: Any, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bar's total is an estimate; a finished publish shows 100%, not 90%."""
    from feed.publish import publish

    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    publish(r, artifact, activate=True, progress=True)
    last = err.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "100%" in last, last
    done, total = re.search(r"(\d+)/(\d+) \[", last).groups()  # type: ignore[union-attr]
    assert done == total, last
