"""The ``feed`` command: a thin layer over the Python API."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from feed import redisclient
from feed.redisclient import ENV_URL


def _redis(ctx_url: str | None, *, start_private: bool = True) -> tuple[Any, str]:
    """A client for --redis-url / FEED_REDIS_URL, else the private server under ./.feed/."""
    try:
        url = redisclient.redis_url(ctx_url, start_private=start_private)
    except redisclient.RedisNotConfigured as e:
        raise click.UsageError(f"{e} (--redis-url)") from e
    return redisclient.connect(url), url


def _fail(message: str, code: int = 1) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


redis_option = click.option(
    "--redis-url",
    default=None,
    metavar="URL",
    help=f"Redis URL (default: ${ENV_URL}, else a private server under ./.feed/).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="shopfeed", prog_name="feed", message="%(prog)s %(version)s")
def main(verbose: int) -> None:
    """The shopping-circle feed: generate, validate, train, publish and serve.

    \b
    Example:
      feed demo
      feed --version
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--users", default=2000, show_default=True, type=click.IntRange(1))
@click.option("--posts", default=3000, show_default=True, type=click.IntRange(1))
@click.option("--likes-per-user", default=20.0, show_default=True, type=click.FloatRange(0))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True
)
def generate(
    out_dir: Path, users: int, posts: int, likes_per_user: float, seed: int, fmt: str
) -> None:
    """Write a synthetic dataset with planted tastes.

    \b
    Example:
      feed generate data/demo --users 2000 --posts 3000 --seed 7
    """
    from feed.data.synth import SynthConfig
    from feed.data.synth import generate as gen

    counts = gen(
        out_dir,
        SynthConfig(n_users=users, n_posts=posts, likes_per_user=likes_per_user, seed=seed),
        fmt=fmt,
    )
    for name, n in counts.items():
        click.echo(f"{name:<18}{n:>10,}")
    click.echo(str(out_dir))


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
def validate(data_dir: Path) -> None:
    """Check a dataset directory; print counts per file and every problem.

    Exits 1 when there are errors (warnings alone exit 0).

    \b
    Example:
      feed validate data/demo
    """
    from feed.data import validate as check

    ds, problems = check(data_dir)
    if ds is not None:
        for name, n in ds.counts.items():
            click.echo(f"{name + '.*':<16}{n:>10,} rows")
    for p in problems:
        click.secho(str(p), fg="yellow" if p.severity == "warning" else "red", err=True)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    click.echo(f"{errors} error(s), {warnings} warning(s)")
    if errors:
        sys.exit(1)


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    default="artifacts",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Artifacts directory.",
)
@click.option(
    "--candidates",
    default=200,
    show_default=True,
    type=click.IntRange(1, 5000),
    help="Candidates kept per user.",
)
@click.option("--factors", default=64, show_default=True, type=click.IntRange(2, 1024))
@click.option(
    "--ranked-users",
    default=None,
    type=click.IntRange(0),
    help="Users the learned ranker ranks, the most active first; the others get the best "
    "single source's list (0: every user).  [default: 20000]",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option(
    "--warm-start",
    "warm_start",
    default=None,
    metavar="VERSION_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Start from this previous version (the daily retrain): reuse its ranker choice, "
    "page policy and tuned parameters, continue its ALS/BPR factors; no tuning or choice.",
)
@click.option(
    "--warm-ranker",
    type=click.Choice(["refit", "reuse"]),
    default=None,
    help="With --warm-start: fit the chosen ranker again on this data's validation slices, "
    "or reuse the previous fitted ranker as it is (faster: no validation fits).  "
    "[default: refit]",
)
@click.option(
    "--cluster",
    envvar="FEED_DASK_SCHEDULER",
    show_envvar=True,
    metavar="ADDRESS",
    help="A Dask scheduler (tcp://host:8786): the candidate and neighbour stages run on its "
    "workers (pip install 'shopfeed[distributed]'); default: threads in this process.",
)
def train(
    data_dir: Path,
    out_dir: Path,
    candidates: int,
    factors: int,
    ranked_users: int | None,
    seed: int,
    progress: bool,
    warm_start: Path | None,
    warm_ranker: str | None,
    cluster: str | None,
) -> None:
    """Train every model and write a model version to OUT/<version>/.

    The version id is the last line of stdout.

    \b
    Example:
      feed train data/demo --out artifacts
      feed train data/demo --out artifacts --warm-start artifacts/<previous version>
      feed train data/demo --out artifacts --cluster tcp://scheduler:8786
    """
    from dataclasses import replace

    from feed.data import DatasetError
    from feed.distributed import ClusterError
    from feed.models.ranker import WarmStartError
    from feed.train import TrainConfig
    from feed.train import train as run

    if warm_ranker is not None and warm_start is None:
        _fail("--warm-ranker applies to a warm start: give --warm-start VERSION_DIR too")
    cfg = TrainConfig(
        n_candidates=candidates,
        factors=factors,
        random_state=seed,
        warm_refit_ranker=warm_ranker != "reuse",
    )
    if ranked_users is not None:
        cfg = replace(cfg, ranked_users=ranked_users)
    try:
        path = run(
            data_dir,
            out_dir,
            cfg,
            progress=progress,
            warm_start=warm_start,
            cluster=cluster or None,  # FEED_DASK_SCHEDULER="" means no cluster
        )
    except DatasetError as e:
        _fail(f"{data_dir} is not a valid dataset; nothing was trained:\n{e}")
    except WarmStartError as e:
        _fail(f"--warm-start {warm_start} refused; nothing was trained: {e}")
    except ClusterError as e:
        _fail(f"{e}; nothing was trained, no version was written")
    click.echo(f"wrote {path}")
    click.echo(path.name)


@main.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--activate", is_flag=True, help="Make the version live once verified.")
@click.option("--force", is_flag=True, help="Publish again a version already published.")
@click.option(
    "--wait",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    metavar="SECONDS",
    help="Wait this long for another publish into the same Redis to end (0: refuse at once).",
)
@redis_option
def publish(
    artifact: Path, activate: bool, force: bool, wait: float, redis_url: str | None
) -> None:
    """Write a model version into Redis, verify it, and optionally switch it live.

    One publish runs at a time per Redis (a lock); a publish that fails says why in one line
    and removes every key it wrote.

    \b
    Example:
      feed publish artifacts/20261124T201500-3f9a1c --activate
    """
    import redis

    from feed.artifacts import ArtifactError
    from feed.publish import PublishError
    from feed.publish import publish as run
    from feed.versions import VersionError

    r, url = _redis(redis_url)
    try:
        res = run(r, artifact, activate=activate, progress=True, force=force, wait=wait)
    except (ArtifactError, PublishError, VersionError) as e:
        _fail(f"{e}; the live version was not changed")
    except redis.RedisError as e:
        why = " ".join(str(e).split())
        _fail(f"Redis at {url}: {type(e).__name__}: {why} (`feed versions list` shows the state)")
    click.echo(
        f"published {res.version} to {url} in {res.seconds:.1f}s: "
        + ", ".join(f"{k}={v}" for k, v in res.counts.items())
    )
    if activate:
        click.echo(f"live: {res.version} (was {res.previous or 'none'})")


@main.group()
def versions() -> None:
    """List, activate, roll back and delete model versions in Redis.

    \b
    Example:
      feed versions list
      feed versions rollback
    """


def _fmt_ts(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M") if ts else "-"


@versions.command("list")
@redis_option
@click.option("--json", "as_json", is_flag=True)
def versions_list(redis_url: str | None, as_json: bool) -> None:
    """Versions in Redis, newest first, with state, size and which is live.

    \b
    Example:
      feed versions list --json
    """
    from feed.versions import list_versions

    r, _ = _redis(redis_url)
    rows = list_versions(r)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'':2}{'version':<26}{'state':<12}{'users':>9}{'posts':>9}  published")
    for m in rows:
        counts = m.get("counts", {})
        click.echo(
            f"{'*' if m['live'] else ' ':2}{m['version']:<26}{m.get('state', '?'):<12}"
            f"{counts.get('users', 0):>9,}{counts.get('posts', 0):>9,}  "
            f"{_fmt_ts(m.get('published_at'))}"
        )


@versions.command("activate")
@click.argument("version")
@redis_option
def versions_activate(version: str, redis_url: str | None) -> None:
    """Make VERSION live.

    \b
    Example:
      feed versions activate 20261124T201500-3f9a1c
    """
    from feed.versions import VersionError, activate

    r, _ = _redis(redis_url)
    try:
        prev = activate(r, version)
    except VersionError as e:
        _fail(str(e))
    click.echo(f"live: {version} (was {prev or 'none'})")


@versions.command("rollback")
@redis_option
def versions_rollback(redis_url: str | None) -> None:
    """Re-activate the previously live version.

    \b
    Example:
      feed versions rollback
    """
    from feed.versions import VersionError, rollback

    r, _ = _redis(redis_url)
    try:
        v = rollback(r)
    except VersionError as e:
        _fail(str(e))
    click.echo(f"live: {v}")


@versions.command("delete")
@click.argument("version")
@redis_option
def versions_delete(version: str, redis_url: str | None) -> None:
    """Delete every key of VERSION (refused for the live one and those in experiments).

    \b
    Example:
      feed versions delete 20261101T000000-aaaaaa
    """
    from feed.versions import VersionError, delete, get_meta, version_keys

    r, _ = _redis(redis_url)
    if get_meta(r, version) is None and not version_keys(r, version):
        _fail(
            f"unknown version {version!r}: not in the registry and no keys; "
            "`feed versions list` shows the versions"
        )
    try:
        n = delete(r, version)
    except VersionError as e:
        _fail(str(e))
    click.echo(f"deleted {version}: {n} keys")


def _check_port(host: str, port: int) -> None:
    """Fail in one line when HOST:PORT cannot be listened on (before any slow work)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        _fail(f"cannot listen on {host}:{port}: {e.strerror} (--host)")
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            s.bind(addr)
        except OSError as e:
            _fail(f"port {port} on {host} is not free ({e.strerror}); choose another with --port")


def _run_server(app: Any, host: str, port: int) -> None:
    """Flask's development server, with each request logged once: by the service's access
    log (``feed.access``), not again by werkzeug's request handler."""
    from werkzeug.serving import WSGIRequestHandler

    class QuietRequests(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # errors still go through log_error

    app.run(host=host, port=port, debug=False, threaded=True, request_handler=QuietRequests)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@redis_option
def serve(host: str, port: int, redis_url: str | None) -> None:
    """Serve the HTTP API (development server; use gunicorn in production).

    \b
    Example:
      feed serve --port 8000
    """
    _check_port(host, port)
    _, url = _redis(redis_url)
    os.environ[ENV_URL] = url
    from service import create_app

    _run_server(create_app(), host, port)


#: Demo versions kept in Redis and in the demo's artifacts directory (the live one included).
DEMO_KEEP = 2


class _EchoTraining(logging.Handler):
    """Prints what the ranker logs while ``feed demo`` trains (each source fitted, the ranker
    chosen), under the stage lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name.endswith("ranker") and message.startswith(("validation ", "default")):
            message = f"ranker: {message}"
        click.echo(f"      {message}")


@contextmanager
def _echo_training() -> Iterator[None]:
    names = ("feed.train", "feed.models.ranker")
    saved = [(logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names]
    handler = _EchoTraining()
    for n in names:
        log = logging.getLogger(n)
        log.addHandler(handler)
        log.setLevel(min(logging.INFO, log.getEffectiveLevel()))
        log.propagate = False
    try:
        yield
    finally:
        for n, (level, propagate) in zip(names, saved, strict=True):
            log = logging.getLogger(n)
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate


def prune_demo_versions(r: Any, artifacts_dir: Path, keep: int = DEMO_KEEP) -> list[str]:
    """Delete all but the newest ``keep`` versions the demo made (those with a directory in
    ``artifacts_dir``, the demo's own): their keys in Redis and their directories. A version
    Redis refuses to delete (live, or in a running experiment) is kept. Returns the deleted.
    """
    import shutil

    from feed.versions import VersionError, delete, get_meta, version_keys

    if not artifacts_dir.is_dir():
        return []
    made = sorted(p for p in artifacts_dir.iterdir() if (p / "manifest.json").is_file())
    deleted = []
    for path in made[:-keep] if keep else made:  # ids start with their UTC time: sorted
        v = path.name
        if get_meta(r, v) is not None or version_keys(r, v):
            try:
                delete(r, v)
            except VersionError as e:
                click.echo(f"      kept {v}: {e}")
                continue
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(v)
    for tmp in artifacts_dir.glob("*.tmp"):  # an interrupted training's leftovers
        shutil.rmtree(tmp, ignore_errors=True)
    return deleted


@main.command()
@click.option("--users", default=2000, show_default=True, type=click.IntRange(10))
@click.option("--posts", default=3000, show_default=True, type=click.IntRange(10))
@click.option(
    "--dir",
    "work_dir",
    default=".feed/demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--no-serve", is_flag=True, help="Stop after publishing (for scripts and tests).")
@redis_option
def demo(
    users: int,
    posts: int,
    work_dir: Path,
    host: str,
    port: int,
    no_serve: bool,
    redis_url: str | None,
) -> None:
    """Generate a dataset, train, publish into Redis and serve, in one command.

    Checks the port first; prints each training stage; keeps the newest two versions the
    demo made (older ones are deleted from Redis and from DIR/artifacts); prints an admin
    token for the viewer (/viewer) and the admin API. Without --redis-url or FEED_REDIS_URL
    it starts a private Redis under ./.feed/redis and stops it again on Ctrl-C.

    \b
    Example:
      feed demo --port 8000
    """
    import secrets
    import signal

    from feed import redisserver

    t0 = time.monotonic()
    if not no_serve:
        _check_port(host, port)
    started = None  # the private server this demo started, stopped again on the way out
    url = redis_url or os.environ.get(ENV_URL)
    if not url:
        private = redisserver.DEFAULT_DIR
        already = redisserver.status(private)["running"]
        try:
            url = redisserver.start(private)
        except (redisserver.RedisServerError, OSError) as e:
            _fail(str(e))
        if not already:
            started = private
    token = os.environ.get("FEED_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    # SIGTERM stops a serving demo as Ctrl-C does (and so stops its private Redis)
    term = None if no_serve else signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _demo(t0, users, posts, work_dir, host, port, no_serve, url, token)
    except KeyboardInterrupt:
        click.echo("\ninterrupted")
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)
        if started is not None and not no_serve:
            pid = redisserver.status(started)["pid"]
            if redisserver.stop(started):
                click.echo(f"stopped the private Redis server (pid {pid}) under {started}/")
        elif started is not None:
            click.echo(f"the private Redis server runs on ({url}); `feed redis stop` stops it")


def _demo(
    t0: float,
    users: int,
    posts: int,
    work_dir: Path,
    host: str,
    port: int,
    no_serve: bool,
    url: str,
    token: str,
) -> None:
    from tools.notebook import quickstart

    steps = iter(range(1, 4))

    def stage(name: str) -> None:
        click.echo(f"  [{time.monotonic() - t0:5.1f}s] {name}")

    with _echo_training():
        qs = quickstart(
            work_dir,
            users=users,
            posts=posts,
            seed=7,
            redis=url,
            progress=True,
            on_step=lambda line: click.echo(f"{next(steps)}/4 {line}"),
            on_stage=stage,
        )
    r = redisclient.connect(url)
    deleted = prune_demo_versions(r, work_dir / "artifacts")
    if deleted:
        click.echo(f"  deleted {len(deleted)} older demo version(s): {', '.join(deleted)}")
    sample = qs.users
    base = f"http://{host}:{port}"
    click.echo(f"4/4 serving {qs.version} at {base} ({time.monotonic() - t0:.1f}s). Try:")
    for u in sample:
        click.echo(f"  curl '{base}/v1/feed/{u}?limit=5'")
    click.echo(f"  curl '{base}/v1/posts/p1/similar?limit=5'")
    click.echo(
        f"  curl -X POST {base}/v1/events -H 'Content-Type: application/json' "
        f'-d \'{{"events": [{{"type": "like", "user_id": "{sample[0]}", '
        f'"post_id": "p1"}}]}}\''
    )
    click.echo(f"viewer:   {base}/viewer?user={sample[0]}")
    click.echo(f"API docs: {base}/docs")
    if os.environ.get("FEED_ADMIN_TOKEN"):
        click.echo("admin token: $FEED_ADMIN_TOKEN (paste it under 'Admin token' in the viewer)")
    else:
        click.echo(
            f"admin token: {token}\n"
            "  (paste it under 'Admin token' in the viewer for the comparison column and "
            "history; the admin API takes it as 'Authorization: Bearer <token>')"
        )
    if no_serve:
        return
    os.environ[ENV_URL] = url
    from service import create_app

    app = create_app({"REDIS_URL": url, "ADMIN_TOKEN": token})
    click.echo("Ctrl-C stops the demo")
    _run_server(app, host, port)


@main.group("redis")
def redis_group() -> None:
    """The private Redis server that `feed demo` and `feed serve` start under ./.feed/redis
    when no --redis-url or FEED_REDIS_URL is given.

    \b
    Example:
      feed redis status
      feed redis stop
    """


redis_dir_option = click.option(
    "--dir",
    "directory",
    default=str(Path(".feed") / "redis"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The private server's directory.",
)


@redis_group.command("status")
@redis_dir_option
def redis_status(directory: Path) -> None:
    """Whether the private Redis server runs, its pid and URL; exits 3 when it does not.

    \b
    Example:
      feed redis status
    """
    from feed import redisserver

    st = redisserver.status(directory)
    if not st["running"]:
        click.echo(f"not running (no private Redis server under {st['directory']})")
        sys.exit(3)
    answers = "answers PING" if st["answers"] else "does NOT answer PING"
    click.echo(f"running: pid {st['pid']}, {st['url']}, {answers}")


@redis_group.command("stop")
@redis_dir_option
def redis_stop(directory: Path) -> None:
    """Stop the private Redis server (its data stays in the directory).

    \b
    Example:
      feed redis stop
    """
    from feed import redisserver

    pid = redisserver.status(directory)["pid"]
    if redisserver.stop(directory):
        click.echo(f"stopped the private Redis server (pid {pid}) under {directory}")
    else:
        click.echo(f"no private Redis server was running under {directory}")


@main.group()
def ab() -> None:
    """A/B experiments: route shares of users to model versions, and report per arm.

    \b
    Example:
      feed ab create blend-v2 --arm control=V1:90 --arm treatment=V2:10
      feed ab report blend-v2
    """


arm_option = click.option(
    "--arm",
    "arms",
    multiple=True,
    required=True,
    metavar="NAME=VERSION:W",
    help="An arm and its weight in percent (weights sum to 100); repeat. "
    "`ab update` also takes NAME:W to keep the arm's version.",
)


def _ab_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from feed.experiments import ExperimentError

    try:
        return fn(*args, **kwargs)
    except ExperimentError as e:
        _fail(str(e))


def _ab_arms(specs: tuple[str, ...]) -> list[dict[str, Any]]:
    from feed.experiments import parse_arm

    return [_ab_call(parse_arm, s) for s in specs]


def _ab_echo_config(cfg: dict[str, Any]) -> None:
    click.echo(
        f"{cfg['name']}: {cfg['status']}, salt {cfg['salt']!r}, control "
        f"{cfg['control']!r}, created {_fmt_ts(cfg['created_at'])}"
    )
    for a in cfg["arms"]:
        ranges = ", ".join(f"{lo}-{hi - 1}" for lo, hi in a["buckets"]) or "-"
        click.echo(f"  {a['name']:<14}{a['version']:<28}{a['weight']:>7g}%  buckets {ranges}")


@ab.command("create")
@click.argument("name")
@arm_option
@click.option("--salt", default=None, help="Hash salt (default: the experiment name).")
@redis_option
def ab_create(name: str, arms: tuple[str, ...], salt: str | None, redis_url: str | None) -> None:
    """Start experiment NAME; refused while another experiment is running.

    \b
    Example:
      feed ab create blend-v2 --arm control=20261101T0000-aaaaaa:90 \\
                              --arm treatment=20261124T2015-3f9a1c:10
    """
    from feed.experiments import create

    r, _ = _redis(redis_url)
    _ab_echo_config(_ab_call(create, r, name, _ab_arms(arms), salt=salt))


@ab.command("list")
@redis_option
def ab_list(redis_url: str | None) -> None:
    """Every experiment, newest first.

    \b
    Example:
      feed ab list
    """
    from feed.experiments import list_experiments

    r, _ = _redis(redis_url)
    for cfg in list_experiments(r):
        _ab_echo_config(cfg)


@ab.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@redis_option
def ab_show(name: str, as_json: bool, redis_url: str | None) -> None:
    """The config of experiment NAME: arms, versions, weights and bucket ranges.

    \b
    Example:
      feed ab show blend-v2 --json
    """
    from feed.experiments import get

    r, _ = _redis(redis_url)
    cfg = _ab_call(get, r, name)
    if as_json:
        click.echo(json.dumps(cfg, indent=2))
    else:
        _ab_echo_config(cfg)


@ab.command("update")
@click.argument("name")
@arm_option
@redis_option
def ab_update(name: str, arms: tuple[str, ...], redis_url: str | None) -> None:
    """Set the arms of running experiment NAME; only the users the new weights need move.

    \b
    Example:
      feed ab update blend-v2 --arm control:50 --arm treatment:50
    """
    from feed.experiments import update

    r, _ = _redis(redis_url)
    _ab_echo_config(_ab_call(update, r, name, _ab_arms(arms)))


@ab.command("stop")
@click.argument("name")
@redis_option
def ab_stop(name: str, redis_url: str | None) -> None:
    """Stop experiment NAME: everyone gets the live version again; the data stays.

    \b
    Example:
      feed ab stop blend-v2
    """
    from feed.experiments import stop

    r, _ = _redis(redis_url)
    _ab_echo_config(_ab_call(stop, r, name))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _ab_echo_report(rep: dict[str, Any]) -> None:
    click.echo(f"experiment {rep['experiment']} ({rep['status']}), control {rep['control']!r}")
    click.echo(
        f"{'arm':<14}{'version':<26}{'weight':>7}{'users':>8}{'pages':>8}"
        f"{'impr':>9}{'clicks':>8}{'likes':>7}{'buys':>6}"
    )
    for a in rep["arms"]:
        click.echo(
            f"{a['arm']:<14}{a['version'] or '-':<26}{a['weight'] or 0:>7g}{a['users']:>8,}"
            f"{a['pages']:>8,}{a['impressions']:>9,}{a['clicks']:>8,}{a['likes']:>7,}"
            f"{a['purchases']:>6,}"
        )
    click.echo(f"\n{'metric':<21}{'arm':<14}{'value':>8}  {'95% CI':<18}{'lift':>8}{'p-value':>10}")
    for metric in ("clicks_per_user", "likes_per_user", "purchase_conversion"):
        for a in rep["arms"]:
            m, vs = a["metrics"][metric], (a["vs_control"] or {}).get(metric, {})
            ci = "[{:.3f}, {:.3f}]".format(*m["ci"]) if m["ci"] else "-"
            p = vs.get("p_value")
            click.echo(
                f"{metric:<21}{a['arm']:<14}{m['value']:>8.3f}  {ci:<18}"
                f"{_pct(vs.get('lift')) if vs else '':>8}"
                f"{'' if p is None else f'{p:.2g}':>10}"
            )
    srm = rep["srm"]
    verdict = "MISMATCH" if srm["mismatch"] else "ok"
    p = "-" if srm["p_value"] is None else f"{srm['p_value']:.3g}"
    users = ", ".join(f"{k} {v}" for k, v in srm["observed"].items())
    click.echo(
        f"\nsample ratio: {verdict} (chi2 p={p}, flagged below {srm['alpha']}; users "
        f"first exposed since the last weight change: {users})"
    )


@ab.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@redis_option
def ab_report(name: str, as_json: bool, redis_url: str | None) -> None:
    """Per-arm users, impressions, clicks, likes, purchases, rates with 95% CIs, lift, p-values
    and the sample-ratio check of experiment NAME (see docs/ab-testing.md).

    \b
    Example:
      feed ab report blend-v2 --json
    """
    from feed.experiments import report

    r, _ = _redis(redis_url)
    rep = _ab_call(report, r, name)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        _ab_echo_report(rep)


@ab.command("promote")
@click.argument("name")
@click.option(
    "--metric",
    default="clicks_per_user",
    show_default=True,
    type=click.Choice(["clicks_per_user", "likes_per_user", "purchase_conversion"]),
    help="The metric the winner must beat control on.",
)
@click.option(
    "--alpha", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True)
)
@click.option("--arm", default=None, help="Promote this arm regardless of the numbers.")
@redis_option
def ab_promote(
    name: str, metric: str, alpha: float, arm: str | None, redis_url: str | None
) -> None:
    """Make the winning arm of experiment NAME live, then stop NAME; prints the choice as JSON.

    The winner is the best arm whose lift over control on --metric is positive with
    p < --alpha, else control; refused on a sample-ratio mismatch unless --arm is given. If
    the version cannot be activated, the experiment keeps running.

    \b
    Example:
      feed ab promote blend-v2 --metric clicks_per_user --alpha 0.05
    """
    from feed.experiments import ExperimentError, promote
    from feed.versions import VersionError

    r, _ = _redis(redis_url)
    try:
        out = promote(r, name, metric=metric, alpha=alpha, arm=arm)
    except (ExperimentError, VersionError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(out, indent=2))


@ab.command("simulate")
@click.option(
    "--dir",
    "work_dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Working directory (default: a temporary one).",
)
@click.option("--users", default=600, show_default=True, type=click.IntRange(20))
@click.option("--posts", default=800, show_default=True, type=click.IntRange(20))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--treatment-weight", default=50.0, show_default=True, type=click.FloatRange(1, 99))
@click.option(
    "--lose-share",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of treatment users who never arrive (a deliberate sample-ratio skew).",
)
@click.option(
    "--redis-url",
    default=None,
    metavar="URL",
    help="Redis to use (default: a throwaway private server; FEED_REDIS_URL is "
    "ignored because the simulation activates versions and creates experiments).",
)
@click.option("--json", "as_json", is_flag=True)
def ab_simulate(
    work_dir: Path | None,
    users: int,
    posts: int,
    seed: int,
    treatment_weight: float,
    lose_share: float,
    redis_url: str | None,
    as_json: bool,
) -> None:
    """Prove the A/B loop: synthetic users with planted tastes, a strong (blend) and a weak
    (popularity-only) version, requests through the HTTP API, and the report.

    \b
    Example:
      feed ab simulate --users 600
      feed ab simulate --lose-share 0.4    # the sample-ratio check must flag this
    """
    import tempfile

    from tools.simulate import run

    with tempfile.TemporaryDirectory(prefix="feed-sim-") as tmp:
        out = run(
            work_dir or tmp,
            redis_url,
            users=users,
            posts=posts,
            seed=seed,
            treatment_weight=treatment_weight,
            lose_share=lose_share,
        )
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    st = out["stats"]
    click.echo(
        f"control = weak {out['weak']} (popularity only), treatment = strong "
        f"{out['strong']}; {st['users']} users, {st['requests']} requests "
        f"({st['failed']} failed), {st['events']} events, {st['skipped']} skipped"
    )
    _ab_echo_report(out["report"])


@main.group()
def events() -> None:
    """The service's event log: export it for the next training.

    \b
    Example:
      feed events export data/next --data data/demo
    """


@events.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--data",
    "data_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The dataset the first export starts from (the live version's); later exports "
    "into OUT_DIR continue from OUT_DIR itself.",
)
@click.option("--force", is_flag=True, help="Start OUT_DIR over from --data.")
@redis_option
def events_export(out_dir: Path, data_dir: Path | None, force: bool, redis_url: str | None) -> None:
    """Merge the events logged since OUT_DIR's last export into it, exactly once.

    The first export starts from --data; each later one adds only the events after the
    checkpoint in OUT_DIR/export.json (none: nothing changes). Likes and favourites, follows,
    purchases, clicks (and add-to-cart), impressions, shares, hides, new and edited posts
    (hidden or deleted ones removed with their rows) and products, in the dataset format, so
    `feed train OUT_DIR` learns from them. The service's log cap never trims unexported events.

    \b
    Example:
      feed events export data/next --data data/demo && feed train data/next
      feed events export data/next && feed train data/next   # later: only new events
    """
    from feed.data import DatasetError
    from feed.events_export import ExportError, export

    r, _ = _redis(redis_url)
    try:
        res = export(r, data_dir, out_dir, force=force)
    except ExportError as e:
        _fail(str(e))
    except DatasetError as e:
        _fail(f"{data_dir} is not a valid dataset; nothing was exported:\n{e}")
    for note in res.warnings:
        click.echo(f"warning: {note}", err=True)
    click.echo(f"{res.events:,} events after {res.start.id} up to {res.checkpoint.id}")
    for name, n in res.counts.items():
        click.echo(f"{name + '.csv':<18}{n:>10,} rows ({res.added.get(name, 0):+,})")
    for table, n in sorted(res.removed.items()):
        click.echo(f"removed (hidden or deleted posts) {table}: {n:,}")
    for cause, n in sorted(res.skipped.items()):
        click.echo(f"skipped {cause}: {n:,}")
    click.echo(str(res.out_dir))


@main.command("evaluate")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--test-frac",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of the likes and purchases held out.",
)
@click.option(
    "--split",
    "split_method",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "global-time", "user-time", "random"]),
    help="Protocol: one global time cut, each user's newest rows, or a random share per "
    "user; auto chooses from the data and says why.",
)
@click.option(
    "--k", default=20, show_default=True, type=click.IntRange(1), help="List length scored."
)
@click.option(
    "--json",
    "json_out",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report (rows and split facts) as JSON to this file.",
)
@click.option(
    "--models",
    default=None,
    metavar="NAMES",
    help="Comma-separated subset, e.g. most-popular,ease,default (default: all).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--tune/--no-tune",
    default=True,
    show_default=True,
    help="Choose the baselines' hyper-parameters on a validation slice of the training part.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def evaluate_cmd(
    data_dir: Path,
    test_frac: float,
    split_method: str,
    k: int,
    json_out: Path | None,
    models: str | None,
    seed: int,
    tune: bool,
    progress: bool,
) -> None:
    """Compare the default model, and the pages it would serve, with the baselines.

    Holds out likes and purchases (--split), fits every model on the rest, and prints one
    Markdown table row per model: like-Recall@k, like-NDCG@k, purchase-Recall@k, coverage,
    author and category diversity, seconds. "default (served)" scores the first page the
    service would serve each test user from the version `feed train` would publish.

    \b
    Example:
      feed evaluate data/demo --k 20 --split auto --json report.json
    """
    from feed.data import DatasetError
    from feed.evaluate import evaluate as run

    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    try:
        report = run(
            data_dir,
            test_frac=test_frac,
            k=k,
            models=names,
            random_state=seed,
            split_method=split_method,
            progress=progress,
            tune_baselines=tune,
        )
    except DatasetError as e:
        _fail(f"{data_dir} is not a valid dataset; nothing was evaluated:\n{e}")
    except ValueError as e:
        _fail(str(e))
    click.echo(report.table())
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_out}")


@main.command("evaluate-compare")
@click.argument("first", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("second", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--model",
    default="default (served)",
    show_default=True,
    help="The row compared (of the first report; of both without --model-b).",
)
@click.option("--model-b", default=None, help="The second report's row, when it differs.")
@click.option("--seed", default=0, show_default=True, type=int, help="Bootstrap seed.")
def evaluate_compare_cmd(
    first: Path, second: Path, model: str, model_b: str | None, seed: int
) -> None:
    """Compare one row of two `feed evaluate --json` reports user by user: two codes,
    configurations or model choices evaluated on the same data with the same split, seed and k.

    Prints both rows' primary metric, the second's lift over the first with its 95% paired
    bootstrap interval over test users, and how many users each scores better. Refuses
    reports whose splits or test users differ.

    \b
    Example:
      feed evaluate data/demo --json before.json   # in a checkout of the old code
      feed evaluate data/demo --json after.json
      feed evaluate-compare before.json after.json --model "default (served)"
    """
    from feed.evaluate import NotComparable, compare

    reports = []
    for path in (first, second):
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            _fail(f"{path} is not a feed evaluate --json report: {e}")
        if not isinstance(reports[-1], dict) or "info" not in reports[-1]:
            _fail(f"{path} is not a feed evaluate --json report (no 'info')")
    try:
        c = compare(reports[0], reports[1], model, model_b, seed)
    except NotComparable as e:
        _fail(f"{first} and {second} cannot be compared: {e}")
    lo, hi = c["lift_ci95"]
    click.echo(
        f"{c['metric']} over {c['users']:,} test users: {first.name} {c['a']['model']} "
        f"{c['a']['mean']:.4f}, {second.name} {c['b']['model']} {c['b']['mean']:.4f}\n"
        f"lift of the second: {c['lift']:+.2%} (95% paired bootstrap: {lo:+.2%} .. {hi:+.2%}); "
        f"better for {c['b_better']:,} users, worse for {c['a_better']:,}, "
        f"equal for {c['users'] - c['b_better'] - c['a_better']:,}"
    )


@main.command("evaluate-groups")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--test-frac",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of the groups held out (a seeded random split: no timestamps needed).",
)
@click.option(
    "--k", default=10, show_default=True, type=click.IntRange(1), help="List length scored."
)
@click.option(
    "--max-users",
    default=2000,
    show_default=True,
    type=click.IntRange(1),
    help="Users (deals, join) or groups (invitees) scored per task, a seeded sample.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--json",
    "json_out",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as JSON to this file.",
)
def evaluate_groups_cmd(
    data_dir: Path, test_frac: float, k: int, max_users: int, seed: int, json_out: Path | None
) -> None:
    """Score the group-buying recommendations (deals, invitees, join) on held-out groups
    against their baselines, with the model's lift over the best one.

    \b
    Example:
      feed evaluate-groups data/demo --k 10 --json groups.json
    """
    from feed.data import DatasetError
    from feed.evaluate_groups import evaluate_groups

    try:
        report = evaluate_groups(data_dir, k=k, frac=test_frac, seed=seed, max_users=max_users)
    except DatasetError as e:
        _fail(f"{data_dir} is not a valid dataset; nothing was evaluated:\n{e}")
    except ValueError as e:
        _fail(str(e))
    click.echo(report.table())
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_out}")


@main.group("import")
def import_group() -> None:
    """Convert public datasets and interaction logs into the dataset format.

    \b
    Example:
      feed import movielens ~/Downloads/ml-latest-small data/movielens-small
      feed import interactions events.csv data/shop --time-col ts
    """


@import_group.command("movielens")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--min-rating",
    default=4.0,
    show_default=True,
    type=float,
    help="Ratings at or above this become likes.",
)
def import_movielens_cmd(src_dir: Path, out_dir: Path, min_rating: float) -> None:
    """Convert a GroupLens MovieLens download (ml-latest-small or ml-100k layout).

    One post and one product per movie, a like per rating >= --min-rating.

    \b
    Example:
      feed import movielens ~/Downloads/ml-latest-small data/movielens-small
    """
    from feed.data.importers import ImportError_, import_movielens

    try:
        counts = import_movielens(src_dir, out_dir, min_rating=min_rating)
    except ImportError_ as e:
        _fail(str(e))
    for name, n in counts.items():
        click.echo(f"{name + '.csv':<14}{n:>10,}")
    click.echo(str(out_dir))


def _imported(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Run an importer; print rows per file and the output directory, or fail in one line."""
    from feed.data.importers import ImportError_

    try:
        counts = fn(*args, **kwargs)
    except ImportError_ as e:
        _fail(str(e))
    for name, n in counts.items():
        click.echo(f"{name + '.csv':<14}{n:>10,}")
    click.echo(str(args[1]))


@import_group.command("ciao")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def import_ciao_cmd(src_dir: Path, out_dir: Path) -> None:
    """Convert Tang et al.'s Ciao download (rating_with_timestamp.mat, trustnetwork.mat).

    Every rating is a review post and a purchase; every trust edge a follow.

    \b
    Example:
      feed import ciao ~/Downloads/ciao data/ciao && feed validate data/ciao
    """
    from feed.data.importers import import_ciao

    _imported(import_ciao, src_dir, out_dir)


@import_group.command("recbole")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--dataset",
    default=None,
    metavar="NAME",
    help="The atomic files' name when SRC is a directory with several (NAME.inter).",
)
@click.option(
    "--min-rating",
    default=None,
    type=float,
    help="Keep interactions rated at least this (default: every interaction is a like).",
)
@click.option("--title-field", default=None, help="The .item column of titles.")
@click.option(
    "--category-field",
    default=None,
    help="The .item column of categories (each category becomes an author).",
)
def import_recbole_cmd(
    src: Path,
    out_dir: Path,
    dataset: str | None,
    min_rating: float | None,
    title_field: str | None,
    category_field: str | None,
) -> None:
    """Convert RecBole atomic files: NAME.inter (user_id:token item_id:token [rating:float]
    [timestamp:float]) and, when present, NAME.item (titles and categories).

    Each item becomes a post linking one product; each (user, item) a like
    (docs/data-format.md, "Importing interactions").

    \b
    Example:
      feed import recbole ~/recbole/dataset/ml-100k data/ml-100k --min-rating 4
    """
    from feed.data.importers import import_recbole

    _imported(
        import_recbole,
        src,
        out_dir,
        dataset=dataset,
        min_rating=min_rating,
        title_field=title_field,
        category_field=category_field,
    )


@import_group.command("interactions")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--user-col", default="user", show_default=True, help="Column of user ids.")
@click.option("--item-col", default="item", show_default=True, help="Column of item ids.")
@click.option(
    "--time-col",
    default="timestamp",
    show_default=True,
    help="Column of times (unix seconds or ISO-8601); absent from the file: no times.",
)
@click.option("--rating-col", default=None, help="Column of ratings (with --min-rating).")
@click.option("--min-rating", default=None, type=float, help="Keep rows rated at least this.")
@click.option(
    "--category-col", default=None, help="Column of item categories (each becomes an author)."
)
@click.option("--title-col", default=None, help="Column of item titles.")
@click.option("--sep", default=",", show_default=True, help="Field separator.")
def import_interactions_cmd(
    src: Path,
    out_dir: Path,
    user_col: str,
    item_col: str,
    time_col: str,
    rating_col: str | None,
    min_rating: float | None,
    category_col: str | None,
    title_col: str | None,
    sep: str,
) -> None:
    """Convert a CSV of interactions (user,item[,timestamp]) into a dataset.

    Each item becomes a post linking one product, authored by its category (--category-col)
    or by itself; each (user, item) a like at its first time (docs/data-format.md,
    "Importing interactions").

    \b
    Example:
      feed import interactions clicks.csv data/shop --user-col uid --item-col sku \\
          --time-col ts --category-col category
    """
    from feed.data.importers import import_interactions

    if min_rating is not None and rating_col is None:
        raise click.UsageError("--min-rating needs --rating-col")
    _imported(
        import_interactions,
        src,
        out_dir,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        min_rating=min_rating,
        category_col=category_col,
        title_col=title_col,
        sep=sep.encode().decode("unicode_escape"),  # --sep '\t'
    )


@main.group()
def merchants() -> None:
    """Merchant accounts (tokens for /v1/merchants/<id>/...) and the attribution aggregates.

    \b
    Example:
      feed merchants create shop-3      # the token is the last line
      feed merchants aggregate          # fold new events (run it from cron)
    """


def _merchant_id(merchant_id: str) -> str:
    from feed import contract

    if not contract.valid_id(merchant_id):
        raise click.BadParameter(
            f"{merchant_id[:40]!r} is not a valid id", param_hint="MERCHANT_ID"
        )
    return merchant_id


@merchants.command("create")
@click.argument("merchant_id")
@redis_option
def merchants_create(merchant_id: str, redis_url: str | None) -> None:
    """Create a merchant account and print its token (the last line; shown once, stored
    hashed).

    \b
    Example:
      feed merchants create shop-3 | tail -1    # the token, e.g. into $TOKEN
    """
    from service import merchants as accounts

    r, _ = _redis(redis_url)
    try:
        token = accounts.create(r, _merchant_id(merchant_id))
    except accounts.MerchantError as e:
        _fail(str(e))
    click.echo(f"merchant {merchant_id}: token (shown once, send as 'Authorization: Bearer'):")
    click.echo(token)


@merchants.command("rotate")
@click.argument("merchant_id")
@redis_option
def merchants_rotate(merchant_id: str, redis_url: str | None) -> None:
    """A new token for a merchant (the last line); the old one stops working at once.

    \b
    Example:
      feed merchants rotate shop-3
    """
    from service import merchants as accounts

    r, _ = _redis(redis_url)
    try:
        token = accounts.rotate(r, _merchant_id(merchant_id))
    except accounts.MerchantError as e:
        _fail(str(e))
    click.echo(f"merchant {merchant_id}: new token (the old one no longer works):")
    click.echo(token)


@merchants.command("revoke")
@click.argument("merchant_id")
@redis_option
def merchants_revoke(merchant_id: str, redis_url: str | None) -> None:
    """Revoke a merchant's token (its aggregates stay; `create` issues a new one).

    \b
    Example:
      feed merchants revoke shop-3
    """
    from service import merchants as accounts

    r, _ = _redis(redis_url)
    try:
        accounts.revoke(r, _merchant_id(merchant_id))
    except accounts.MerchantError as e:
        _fail(str(e))
    click.echo(f"merchant {merchant_id}: token revoked")


@merchants.command("list")
@redis_option
@click.option("--json", "as_json", is_flag=True)
def merchants_list(redis_url: str | None, as_json: bool) -> None:
    """Every merchant account (never a token).

    \b
    Example:
      feed merchants list --json
    """
    from service import merchants as accounts

    r, _ = _redis(redis_url)
    rows = accounts.accounts(r)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for a in rows:
        state = "active" if a["active"] else f"revoked {a['revoked_at']}"
        click.echo(f"{a['merchant_id']}\t{state}\tcreated {a['created_at']}")


@merchants.command("aggregate")
@redis_option
@click.option("--replay", is_flag=True, help="Wipe the aggregates and fold the log from its start.")
@click.option("--max-entries", type=click.IntRange(1), default=None, help="Stop after N entries.")
def merchants_aggregate(redis_url: str | None, replay: bool, max_entries: int | None) -> None:
    """Fold the events logged since the last fold into the per-merchant, per-day attribution
    aggregates (feed/merchants.py); the service also folds before each report. Run it from cron
    (at least daily) so reports stay cheap.

    \b
    Example:
      feed merchants aggregate
      feed merchants aggregate --replay   # rebuild from the whole log
    """
    from feed import merchants as fm
    from feed import versions as reg

    r, _ = _redis(redis_url)
    if replay:
        click.echo(f"wiped {fm.wipe(r)} aggregate keys")
    live = reg.live_version(r)
    res = fm.fold(r, fm.Catalogue(r, live), max_entries=max_entries)
    left = "unknown" if res.behind is None else res.behind
    click.echo(f"folded {res.entries} events; checkpoint {res.checkpoint}; behind {left}")
    if res.gap:
        click.secho(
            "warning: the event log was trimmed past the checkpoint: some events were never "
            "folded (run the fold more often than the log's trim)",
            fg="yellow",
            err=True,
        )


if __name__ == "__main__":  # pragma: no cover
    main()
