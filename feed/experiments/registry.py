"""A/B experiments in Redis: create, read, update, stop, and the running one, compiled.

Every experiment is one JSON config in the hash ``contract.EXPERIMENTS_KEY``::

    {"name": "blend-v2", "salt": "blend-v2", "status": "running", "control": "control",
     "created_at": 1764000000.0, "weights_since": 1764000000.0, "stopped_at": null,
     "arms": [{"name": "control", "version": "V1", "weight": 90, "buckets": [[0, 9000]]},
              {"name": "treatment", "version": "V2", "weight": 10, "buckets": [[9000, 10000]]}]}

Every change is a read-modify-write of that hash under ``WATCH`` (:func:`_write`). At most one
experiment runs at a time; it routes the home feed. Users outside it (none, while the weights
sum to 100) get the live version. :mod:`feed.versions` reads the same hash itself
(``versions_in_experiments``) and never imports this package.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from feed import contract as c
from feed.experiments.assign import (
    STATUS_RUNNING,
    STATUS_STOPPED,
    ArmNotServable,
    Experiment,
    ExperimentConflict,
    ExperimentError,
    UnknownExperiment,
    check_arms,
    new_config,
    reallocate,
)

logger = logging.getLogger(__name__)


def _check_versions(r: Any, arms: Sequence[dict[str, Any]]) -> None:
    from feed import versions as reg

    for arm in arms:
        meta = reg.get_meta(r, arm["version"])
        if meta is None:
            raise ExperimentError(f"arm {arm['name']!r}: unknown version {arm['version']!r}")
        problem = reg.not_servable(arm["version"], meta)
        if problem:
            raise ArmNotServable(f"arm {arm['name']!r}: {problem}")
        if meta.get("state") != c.STATE_READY or reg.missing_keys(r, arm["version"]):
            raise ExperimentError(
                f"arm {arm['name']!r}: version {arm['version']!r} has incomplete keys "
                f"(state {meta.get('state')!r}); publish it again"
            )


def _load(raw: Any, name: str) -> dict[str, Any]:
    if raw is None:
        raise UnknownExperiment(f"unknown experiment {name!r}")
    return c.decode_json(raw)  # type: ignore[no-any-return]


def _write(r: Any, name: str, change: Any) -> dict[str, Any]:
    """Apply ``change(all_configs) -> new config of name`` under WATCH; returns the new config."""

    def run(pipe: Any) -> dict[str, Any]:
        configs = {c.text(k): c.decode_json(v) for k, v in pipe.hgetall(c.EXPERIMENTS_KEY).items()}
        cfg = change(configs)
        pipe.multi()
        pipe.hset(c.EXPERIMENTS_KEY, name, c.encode_json(cfg))
        return cfg  # type: ignore[no-any-return]

    # VERSIONS_KEY is watched too: a version that `versions delete` marks while the arms are
    # checked makes EXEC fail, and the retry's check refuses it
    watched = (c.EXPERIMENTS_KEY, c.VERSIONS_KEY)
    return r.transaction(run, *watched, value_from_callable=True)  # type: ignore[no-any-return]


def create(
    r: Any, name: str, arms: Sequence[dict[str, Any]], *, salt: str | None = None
) -> dict[str, Any]:
    """Create and start an experiment; refused while another one is running.

    Parameters
    ----------
    r : redis client
    name : experiment name (an id)
    arms : ``[{"name", "version", "weight"}]``; weights are percentages summing to 100
    salt : hash salt; defaults to the name
    """
    cfg = new_config(name, arms, salt=salt)

    def change(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        _check_versions(r, cfg["arms"])
        if name in configs:
            raise ExperimentConflict(f"experiment {name!r} already exists")
        running = [n for n, x in configs.items() if x.get("status") == STATUS_RUNNING]
        if running:
            raise ExperimentConflict(
                f"experiment {running[0]!r} is running; stop it first "
                "(one experiment routes the home feed at a time)"
            )
        return cfg

    return _write(r, name, change)


def get(r: Any, name: str) -> dict[str, Any]:
    """The stored config of ``name``."""
    return _load(r.hget(c.EXPERIMENTS_KEY, name), name)


def list_experiments(r: Any) -> list[dict[str, Any]]:
    """Every experiment, newest first."""
    configs = [c.decode_json(v) for v in r.hgetall(c.EXPERIMENTS_KEY).values()]
    return sorted(configs, key=lambda x: x.get("created_at", 0), reverse=True)


def update(r: Any, name: str, arms: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Replace the arms of a running experiment (weights, versions, added or removed arms).

    An arm given without a version keeps its current one. Users of surviving arms move only
    as the new weights require (see :func:`reallocate`).
    """

    def change(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        old = configs.get(name)
        if old is None:
            raise UnknownExperiment(f"unknown experiment {name!r}")
        if old["status"] != STATUS_RUNNING:
            raise ExperimentConflict(f"experiment {name!r} is stopped; create a new one")
        current = {a["name"]: a["version"] for a in old["arms"]}
        filled = [
            {**a, "version": a.get("version") or current.get(a.get("name", ""))}
            if isinstance(a, dict)
            else a
            for a in arms
        ]
        checked = check_arms(filled)
        _check_versions(r, checked)
        new_arms = reallocate(old["arms"], checked)
        now = time.time()
        moved = [a["buckets"] for a in new_arms] != [
            next((o["buckets"] for o in old["arms"] if o["name"] == a["name"]), None)
            for a in new_arms
        ]
        names = [a["name"] for a in new_arms]
        control = old["control"] if old["control"] in names else names[0]
        return {
            **old,
            "arms": new_arms,
            "control": control,
            "updated_at": now,
            "weights_since": now if moved else old["weights_since"],
        }

    return _write(r, name, change)


def stop(r: Any, name: str) -> dict[str, Any]:
    """Stop routing traffic by ``name``; its data stays for the report. Idempotent."""

    def change(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        old = configs.get(name)
        if old is None:
            raise UnknownExperiment(f"unknown experiment {name!r}")
        if old["status"] == STATUS_STOPPED:
            return old
        now = time.time()
        return {**old, "status": STATUS_STOPPED, "stopped_at": now, "updated_at": now}

    return _write(r, name, change)


def running(r: Any) -> Experiment | None:
    """The running experiment, compiled, or None (a malformed config is logged and skipped)."""
    for raw in r.hvals(c.EXPERIMENTS_KEY):
        try:
            cfg = c.decode_json(raw)
            if cfg.get("status") == STATUS_RUNNING:
                return Experiment.from_config(cfg)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("skipping a malformed experiment config: %r", e)
    return None
