"""shopfeed: a content-guided shopping feed.

The offline half (``feed``) loads datasets, trains candidate models and publishes
them into Redis; the online half (``service``) serves ranked pages from Redis.

``import feed`` is the one import a notebook needs; the CLI is a thin layer over the same
functions and config objects:

* ``feed.load``, ``feed.validate``: read a dataset directory (:mod:`feed.data`);
* ``feed.generate``, ``feed.SynthConfig``: write a synthetic dataset (:mod:`feed.data.synth`);
* ``feed.as_of``: the dataset as it was at a past moment;
* ``feed.train_version``, ``feed.TrainConfig``: train and write a model version
  (:func:`feed.train.train`);
* ``feed.evaluate_models``: split, fit the baselines and the default model, score
  (:func:`feed.evaluate.evaluate`);
  ``feed.evaluate_at_k`` does it at several list lengths, ``feed.metrics_frame`` tabulates;
* ``feed.connect``: a Redis client for a URL, ``$FEED_REDIS_URL`` or a private server;
* ``feed.publish_version``: write a version into Redis, verify it, optionally activate it
  (:func:`feed.publish.publish`);
* ``feed.versions``: list, activate, rollback, delete (:mod:`feed.versions`);
* ``feed.experiments``: create, update, stop, report A/B tests (:mod:`feed.experiments`);
  ``feed.report_frame`` tabulates a report, ``feed.promote`` ships the winner;

What drives the service from outside (a user's page and history with reasons, the first pages
of many users, ``feed demo``'s steps, simulated A/B traffic) imports both halves, so it lives
in :mod:`tools` (``from tools import notebook as nb``), not here: ``feed`` never imports
``service``.

Nothing heavy is imported until used (the service imports :mod:`feed.contract` and must stay
small). ``feed.train``, ``feed.evaluate`` and ``feed.publish`` are the modules.

Examples
--------
>>> import feed
>>> cfg = feed.TrainConfig(factors=32)
>>> cfg.factors, feed.train_version is feed.train.train
(32, True)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Lazily imported public names: name -> (module, attribute; None for the module itself).
_LAZY: dict[str, tuple[str, str | None]] = {
    "Dataset": ("feed.data", "Dataset"),
    "DatasetError": ("feed.data", "DatasetError"),
    "load": ("feed.data", "load"),
    "validate": ("feed.data", "validate"),
    "SynthConfig": ("feed.data.synth", "SynthConfig"),
    "generate": ("feed.data.synth", "generate"),
    "as_of": ("feed.evaluation.splits", "as_of"),
    "TrainConfig": ("feed.models.default", "TrainConfig"),
    "EvalReport": ("feed.evaluate", "EvalReport"),
    "evaluate_at_k": ("feed.evaluate", "evaluate_at_k"),
    "metrics_frame": ("feed.evaluate", "metrics_frame"),
    "PublishResult": ("feed.publish", "PublishResult"),
    "train": ("feed.train", None),
    "evaluate": ("feed.evaluate", None),
    "publish": ("feed.publish", None),
    "train_version": ("feed.train", "train"),
    "evaluate_models": ("feed.evaluate", "evaluate"),
    "publish_version": ("feed.publish", "publish"),
    "experiments": ("feed.experiments", None),
    "versions": ("feed.versions", None),
    "promote": ("feed.experiments", "promote"),
    "report_frame": ("feed.experiments.frames", "report_frame"),
    "winner": ("feed.experiments", "winner"),
    **{
        name: ("feed.redisclient", name)
        for name in ("ENV_URL", "RedisNotConfigured", "connect", "redis_url", "url_of")
    },
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'feed' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
