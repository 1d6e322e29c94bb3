"""``feed evaluate``: every model fitted on one split's training part and scored on its
held-out part, in one table (:class:`EvalReport`).

The split and the metrics are :mod:`feed.evaluation`'s. Every model ranks, for each test user,
every post except the user's own and those the user engaged with in training; so posts nobody
engaged with yet are candidates too. ``"default"`` is the model ``feed train`` publishes
(:func:`feed.models.default.make_blend`); the others are the classic baselines.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feed.data import Dataset, load
from feed.evaluation.metrics import (
    METRICS,
    HeldOut,
    lift_interval,
    per_user,
    primary_metric,
    score_lists,
)
from feed.evaluation.pages import PageBuilder
from feed.evaluation.splits import Split, Splitter, held_out, split, training_data
from feed.features.matrices import TrainingData
from feed.models.default import TrainConfig, make_blend
from feed.models.ranker import LearnedBlend, trending_list
from feed.models.sources import EASE, Content, ItemItem, MatrixFactorization, Popularity
from feed.models.tuning import (
    GRIDS,
    Tuned,
    Twins,
    Validation,
    recommend_top,
    tune,
    twin_groups,
    validation_slice,
)

logger = logging.getLogger(__name__)

#: EASE needs a dense posts x posts matrix: it is a baseline only up to this many posts.
EASE_MAX_POSTS = 20_000
#: Fewer test users than this and a table says plainly that it cannot conclude.
MIN_TEST_USERS = 500
#: The suffix of the default model's served row (its pages, as the service builds them).
SERVED = " (served)"

ModelFactory = Callable[[], Any]


# --- the comparison ------------------------------------------------------------------------


@dataclass
class EvalReport:
    """One row per model (metrics at ``k``, fit and scoring seconds) plus split facts."""

    rows: list[dict[str, Any]]
    info: dict[str, Any]
    #: The primary metric per test user and model, for paired comparisons of two reports
    #: (:func:`compare`): ``{"metric", "users": [ids], "values": {model: [value or None]}}``.
    per_user: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: ``{"info": {...}, "rows": [...], "per_user": {...}}``."""
        out = {"info": _plain(self.info), "rows": _plain(self.rows)}
        if self.per_user is not None:
            values = {
                m: [None if v != v else round(float(v), 6) for v in vals]
                for m, vals in self.per_user["values"].items()
            }
            out["per_user"] = {**self.per_user, "values": values}
        return out

    def row(self, model: str) -> dict[str, Any]:
        """The row of one model."""
        for r in self.rows:
            if r["model"] == model:
                return r
        raise KeyError(model)

    def table(self) -> str:
        """A Markdown table, the primary metric marked, then the split facts."""
        k, primary = self.info["k"], self.info["primary_metric"]
        names = {
            "like_recall": f"like-Recall@{k}",
            "like_ndcg": f"like-NDCG@{k}",
            "purchase_recall": f"purchase-Recall@{k}",
            "coverage": "coverage",
            "author_diversity": "author div.",
            "category_diversity": "category div.",
        }
        heads = ["model"] + [names[m] + (" *" if m == primary else "") for m in METRICS]
        lines = [
            "| " + " | ".join([*heads, "fit s", "score s"]) + " |",
            "|" + "---|" * (len(heads) + 2),
        ]
        for r in self.rows:
            cells = [r["model"]] + [_fmt(r[m]) for m in METRICS]
            cells += [f"{r['fit_s']:.1f}", f"{r['score_s']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *self._notes()]
        return "\n".join(lines)

    def _notes(self) -> list[str]:
        i = self.info
        c = i["counts"]
        how = {
            "global-time": f"one global time cut at {i['cut_iso']}",
            "user-time": "each user's newest likes and purchases held out",
            "random": f"random per-user split (seed {i['random_state']})",
        }[i["split"]]
        notes = [
            f"* primary metric (*): {i['primary_metric']}; split {i['split']}: {how}, "
            f"test_frac={i['test_frac']} ({i.get('split_reason', '')})",
            f"* {i['n_users']} users in the training part, {i['n_posts']} posts; "
            f"test users: {c['test_users']} "
            f"({c['test_users_with_likes']} with held-out likes, "
            f"{c['test_users_with_purchases']} with held-out purchases); "
            f"{c['cold_users_skipped']} cold test users skipped (no training interaction)",
        ]
        notes.append(self._tuning_note())
        for label, lift, ci in (
            ("default", "lift_vs_best_baseline", "lift_ci95"),
            (f"default{SERVED}", "served_lift", "served_lift_ci95"),
        ):
            if lift in i:
                lo, hi = i.get(ci, (math.nan, math.nan))
                notes.append(
                    f"* {label} vs best baseline ({i['best_baseline']}) on "
                    f"{i['primary_metric']}: {i[lift]:+.1%} "
                    f"(95% paired bootstrap over test users: {lo:+.1%} .. {hi:+.1%})"
                )
        if not i.get("conclusive", True):
            notes.append(
                f"* only {c['test_users']} test users (fewer than {MIN_TEST_USERS}): "
                "too few to conclude; read the intervals, not the point figures"
            )
        notes.append(f"* total {i['total_s']:.0f} s")
        return notes

    def _tuning_note(self) -> str:
        i = self.info
        tuning, where = i.get("tuning") or {}, i.get("tuning_slice") or {}
        if not tuning:
            return "* baselines untuned (each at the default model's parameters)"
        chosen = "; ".join(
            f"{name} " + ", ".join(f"{k}={v}" for k, v in t["params"].items())
            for name, t in tuning.items()
        )
        return (
            f"* baselines tuned: each grid point fitted on a validation slice carved from the "
            f"training part ({where.get('split')}, val_frac={where.get('val_frac')}, "
            f"{where.get('users')} validation users, {where.get('metric')}), never on the "
            f"test part; chosen: {chosen}"
        )


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.4f}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def default_models(
    n_posts: int, random_state: int = 0, split_method: str = "auto"
) -> dict[str, ModelFactory]:
    """The baselines plus ``"default"``, the model ``feed train`` publishes (its validation
    carved by ``split_method``, the evaluation's protocol).

    EASE is left out when there are more than :data:`EASE_MAX_POSTS` posts.
    """
    models: dict[str, ModelFactory] = {
        "most-popular": Popularity,
        "als": lambda: MatrixFactorization("als", random_state=random_state),
        "bpr": lambda: MatrixFactorization("bpr", random_state=random_state),
        "itemknn": lambda: ItemItem(method="bm25"),
    }
    if n_posts <= EASE_MAX_POSTS:
        models["ease"] = EASE
    models["content"] = Content
    models["default"] = lambda: make_blend(
        TrainConfig(random_state=random_state, split=split_method)
    )
    return models


def baseline_grids(
    random_state: int = 0,
) -> dict[str, tuple[Callable[[dict[str, Any]], Any], tuple[dict[str, Any], ...]]]:
    """The tuned baselines: name -> (a model for one grid point, the grid,
    :data:`feed.models.tuning.GRIDS`)."""
    return {
        "als": (lambda p: MatrixFactorization("als", random_state=random_state, **p), GRIDS["als"]),
        "bpr": (lambda p: MatrixFactorization("bpr", random_state=random_state, **p), GRIDS["bpr"]),
        "itemknn": (lambda p: ItemItem(**p), GRIDS["itemknn"]),
        "ease": (lambda p: EASE(**p), GRIDS["ease"]),
    }


def evaluate(
    dataset: Dataset | str | Path,
    test_frac: float = 0.2,
    k: int = 20,
    models: Mapping[str, ModelFactory] | Iterable[str] | None = None,
    random_state: int = 0,
    *,
    split_method: str = "auto",
    progress: bool = False,
    tune_baselines: bool = True,
) -> EvalReport:
    """Split, fit every model on the training part, and score the held-out part.

    The default model is scored twice: its own top-``k`` lists, and ``default (served)``: the
    pages the service would serve from the version ``feed train`` would publish (its
    candidate lists as published, trending, the filters and the version's page policy;
    :mod:`feed.evaluation.pages`).

    Parameters
    ----------
    dataset : Dataset or path
    test_frac : float
        Share of likes and purchases held out.
    k : int
        List length scored.
    models : mapping of name -> factory, or names, optional
        Default: :func:`default_models` (names select a subset of it).
    random_state : int
        Seed of the random split and of every model.
    split_method : str
        ``auto`` (chosen from the data, :func:`feed.evaluation.splits.choose_method`), or
        ``global-time``, ``user-time``, ``random``. The default model's validation slices
        are carved the same way.
    progress : bool
        Show a progress bar over models.
    tune_baselines : bool
        Choose each classic baseline's hyper-parameters (:func:`baseline_grids`) on a
        validation slice carved from the training part as the default model carves its own
        (:func:`feed.models.tuning.validation_slice`); the choices are in ``info["tuning"]``.
        Only for models named from :func:`default_models`.

    Returns
    -------
    EvalReport
    """
    return _evaluate(
        dataset, (k,), test_frac, models, random_state, split_method, progress, tune_baselines
    )[k]


def _evaluate(
    dataset: Dataset | str | Path,
    ks: Sequence[int],
    test_frac: float,
    models: Mapping[str, ModelFactory] | Iterable[str] | None,
    random_state: int,
    split_method: str,
    progress: bool,
    tune_baselines: bool = True,
) -> dict[int, EvalReport]:
    """Every model fitted once (each tuned baseline at its validation-chosen grid point); its
    lists cut at each ``k`` (pages built for each ``k``)."""
    started = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else load(dataset)
    part = split(ds, test_frac, random_state, split_method)
    logger.info("split: %s (%s)", part.method, part.reason)
    data = training_data(part)
    truth = held_out(part, data)
    factories = _select(models, ds, random_state, part.method)
    logger.info("evaluating %d models on %d test users", len(factories), len(truth.users))
    exclude = data.seen()
    twins = twin_groups(data)
    top = max(ks)
    lists: dict[str, dict[int, np.ndarray]] = {}
    seconds: dict[str, tuple[float, float]] = {}
    grids = (
        baseline_grids(random_state) if tune_baselines and not isinstance(models, Mapping) else {}
    )
    slice_: list[tuple[Validation | None, Twins | None]] = []
    tuned: dict[str, Tuned] = {}
    for name, factory in _progress(factories.items(), progress):
        t = time.perf_counter()
        if name in grids:
            if not slice_:  # carved once, shared by every tuned baseline
                val = validation_slice(
                    part.train, Splitter(part.method), TrainConfig().val_frac, random_state
                )
                slice_.append((val, twin_groups(val.data) if val is not None else None))
            val, val_twins = slice_[0]
            if val is not None:
                make, grid = grids[name]
                tuned[name] = tune(make, grid, val, top, val_twins, rule="best")
                factory = partial(make, tuned[name].params)
        model = factory().fit(data)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        items = recommend_top(model, truth.users, top, exclude, twins)
        lists[name] = {k: items[:, :k] for k in ks}
        seconds[name] = (fit_s, time.perf_counter() - t)
        if isinstance(model, LearnedBlend):
            t = time.perf_counter()
            lists[f"{name}{SERVED}"] = served_pages(model, data, truth.users, exclude, ks)
            seconds[f"{name}{SERVED}"] = (fit_s, time.perf_counter() - t)
    out = {}
    for k in ks:
        rows = []
        for name, by_k in lists.items():
            metrics = score_lists(by_k[k], truth, data)
            fit_s, score_s = seconds[name]
            rows.append({"model": name, **metrics, "fit_s": fit_s, "score_s": score_s})
            logger.info("%s@%d: %s", name, k, {m: round(metrics[m], 4) for m in METRICS})
        info = _info(ds, part, data, truth, test_frac, k, random_state, rows)
        info["baselines_tuned"] = bool(tuned)
        info["tuning"] = {n: t.summary() for n, t in tuned.items()}
        if slice_ and slice_[0][0] is not None:
            v = slice_[0][0]
            info["tuning_slice"] = {
                "split": v.part.method,
                "val_frac": TrainConfig().val_frac,
                "users": len(v.truth.users),
                "metric": v.metric,
            }
        metric = info["primary_metric"]
        values = {n: per_user(by_k[k], truth, data, metric) for n, by_k in lists.items()}
        _add_interval(info, values, random_state)
        info["total_s"] = time.perf_counter() - started
        users = data.users.to_external(truth.users).tolist()
        out[k] = EvalReport(rows, info, {"metric": metric, "users": users, "values": values})
    return out


def served_pages(
    model: LearnedBlend,
    data: TrainingData,
    users: np.ndarray,
    exclude: sp.csr_matrix,
    ks: Sequence[int],
    config: TrainConfig | None = None,
) -> dict[int, np.ndarray]:
    """The first page (``k`` items, for each ``k``) the service would serve each of ``users``
    from the version of ``model``: its ``n_candidates`` best posts as published, its trending
    list, the service's filters and the model's page policy."""
    cfg = config or TrainConfig()
    items, scores, reasons = model.recommend_with_reasons(users, cfg.n_candidates, exclude)
    builder = PageBuilder.of(data, trending_list(model.sources_, data, cfg.n_trending))
    external = [str(u) for u in data.users.to_external(users)]
    return {k: builder.pages(external, items, scores, reasons, k, model.page_policy_) for k in ks}


def _select(
    models: Mapping[str, ModelFactory] | Iterable[str] | None,
    ds: Dataset,
    random_state: int,
    split_method: str = "auto",
) -> dict[str, ModelFactory]:
    if isinstance(models, Mapping):
        return dict(models)
    every = default_models(len(ds.posts), random_state, split_method)
    if models is None:
        return every
    names = list(models)
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(every)}")
    return {n: every[n] for n in names}


def _info(
    ds: Dataset,
    part: Split,
    data: TrainingData,
    truth: HeldOut,
    test_frac: float,
    k: int,
    random_state: int,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    primary = primary_metric(truth)
    info: dict[str, Any] = {
        "dataset": str(ds.path) if ds.path else None,
        "split": part.method,
        "split_reason": part.reason,
        "cut": part.cut,
        "cut_iso": _iso(part.cut),
        "test_frac": test_frac,
        "k": k,
        "random_state": random_state,
        "n_users": data.n_users,
        "n_posts": data.n_posts,
        "primary_metric": primary,
        "counts": truth.counts,
        "conclusive": truth.counts["test_users"] >= MIN_TEST_USERS,
    }
    ours = {"default", f"default{SERVED}"}
    base = [r for r in rows if r["model"] not in ours and r[primary] == r[primary]]
    if not base:
        return info
    best = max(base, key=lambda r: r[primary])
    info["best_baseline"] = best["model"]
    for r in rows:
        if r["model"] in ours:
            lift = r[primary] / best[primary] - 1 if best[primary] > 0 else math.nan
            key = "lift_vs_best_baseline" if r["model"] == "default" else "served_lift"
            info[key] = lift
    return info


def _add_interval(info: dict[str, Any], values: dict[str, np.ndarray], random_state: int) -> None:
    """The bootstrap intervals of the default's lifts (model-only and served) over the best
    baseline, into ``info``, from each row's per-user primary metric ``values``."""
    best = info.get("best_baseline")
    if best is None:
        return
    for name, key in (("default", "lift_ci95"), (f"default{SERVED}", "served_lift_ci95")):
        if name in values:
            info[key] = list(lift_interval(values[name], values[best], random_state))


#: Split facts two reports must share to be compared user by user.
SAME_SPLIT = ("split", "cut", "test_frac", "k", "random_state", "primary_metric", "n_users",
              "n_posts", "counts")  # fmt: skip


class NotComparable(ValueError):
    """Two evaluation reports that do not score the same users on the same split."""


def compare(
    a: EvalReport | Mapping[str, Any],
    b: EvalReport | Mapping[str, Any],
    model: str = f"default{SERVED}",
    model_b: str | None = None,
    random_state: int = 0,
) -> dict[str, Any]:
    """Row ``model`` of report ``a`` against row ``model_b`` (default: the same name) of report
    ``b``, user by user on their primary metric: two codes or configurations evaluated with
    the same split (``feed evaluate --json`` of each: same data, seed, protocol and k).
    Returns both means, the lift of ``b`` over ``a`` with its 95% paired bootstrap interval,
    and how many users each one scores better.

    Raises :class:`NotComparable` (naming the first difference) when the two reports' splits
    or test users differ or a row or per-user figures are missing.

    >>> r = EvalReport([], {"k": 2}, {"metric": "like_ndcg", "users": ["u1", "u2"],
    ...                               "values": {"m": np.array([0.5, 1.0])}})
    >>> s = EvalReport([], {"k": 2}, {"metric": "like_ndcg", "users": ["u1", "u2"],
    ...                               "values": {"m": np.array([1.0, 1.0])}})
    >>> c = compare(r, s, "m")
    >>> round(c["lift"], 4), c["b_better"], c["a_better"], c["users"]
    (0.3333, 1, 0, 2)
    """
    ra, rb = (x.to_dict() if isinstance(x, EvalReport) else x for x in (a, b))
    for key in SAME_SPLIT:
        va, vb = ra["info"].get(key), rb["info"].get(key)
        if va != vb:
            raise NotComparable(f"the reports differ in {key}: {va!r} vs {vb!r}")
    pa_, pb = ra.get("per_user"), rb.get("per_user")
    if not pa_ or not pb:
        raise NotComparable("a report has no per-user figures (written before they existed)")
    if pa_["users"] != pb["users"]:
        raise NotComparable("the reports score different test users")
    name_b = model_b or model
    for report, name, which in ((pa_, model, "first"), (pb, name_b, "second")):
        if name not in report["values"]:
            known = ", ".join(report["values"])
            raise NotComparable(f"the {which} report has no row {name!r} (rows: {known})")
    va = np.array([np.nan if v is None else v for v in pa_["values"][model]], dtype=np.float64)
    vb = np.array([np.nan if v is None else v for v in pb["values"][name_b]], dtype=np.float64)
    ok = np.isfinite(va) & np.isfinite(vb)
    if not ok.any():
        raise NotComparable(f"no test user has a {pa_['metric']} in both rows")
    mean_a, mean_b = float(va[ok].mean()), float(vb[ok].mean())
    lo, hi = lift_interval(vb, va, random_state)
    return {
        "metric": pa_["metric"],
        "a": {"model": model, "mean": mean_a},
        "b": {"model": name_b, "mean": mean_b},
        "users": int(ok.sum()),
        "lift": mean_b / mean_a - 1.0 if mean_a > 0 else math.nan,
        "lift_ci95": [lo, hi],
        "b_better": int((vb[ok] > va[ok]).sum()),
        "a_better": int((va[ok] > vb[ok]).sum()),
    }


def evaluate_at_k(
    dataset: Dataset | str | Path,
    ks: Sequence[int] = (5, 10, 20),
    *,
    test_frac: float = 0.2,
    models: Any = None,
    random_state: int = 0,
    split_method: str = "auto",
    progress: bool = False,
    tune_baselines: bool = True,
) -> dict[int, EvalReport]:
    """:func:`feed.evaluate` at several list lengths ``k``: one split, every model fitted once,
    its lists cut at each ``k`` (served pages are built for each ``k``).

    Parameters
    ----------
    dataset : Dataset or path
    ks : sequence of int
        List lengths, e.g. ``(5, 10, 20)``.
    test_frac, models, random_state, split_method, tune_baselines
        As for :func:`feed.evaluate.evaluate`.
    progress : bool
        Show a progress bar over models.

    Returns
    -------
    dict of int to EvalReport
        Keyed by ``k``, in the order given; :func:`metrics_frame` makes one table of them.

    Examples
    --------
    >>> reports = evaluate_at_k("data/demo", (10, 20), models=["most-popular"])  # doctest: +SKIP
    >>> metrics_frame(reports)[["model", "k", "like_recall"]]  # doctest: +SKIP
              model   k  like_recall
    0  most-popular  10       0.0171
    1  most-popular  20       0.0280
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive list lengths, got {ks}")
    return _evaluate(
        dataset, ks, test_frac, models, random_state, split_method, progress, tune_baselines
    )


def metrics_frame(reports: EvalReport | Mapping[int, EvalReport]) -> pd.DataFrame:
    """One row per model and ``k``: every metric, fit and scoring seconds.

    Parameters
    ----------
    reports : EvalReport or mapping of k to EvalReport
        What :func:`feed.evaluate` or :func:`evaluate_at_k` returned.

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``k`` and the report's metric columns.

    Examples
    --------
    >>> from feed.evaluate import EvalReport
    >>> rep = EvalReport([{"model": "als", "like_recall": 0.1}], {"k": 20})
    >>> metrics_frame(rep).to_dict("records")
    [{'model': 'als', 'k': 20, 'like_recall': 0.1}]
    """
    import pandas as pd

    if not isinstance(reports, Mapping):
        reports = {int(reports.info["k"]): reports}
    rows = [
        {"model": row["model"], "k": k, **{c: v for c, v in row.items() if c != "model"}}
        for k, rep in reports.items()
        for row in rep.rows
    ]
    return pd.DataFrame(rows)


def _iso(ts: float) -> str | None:
    if ts != ts:
        return None
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _progress(it: Iterable[Any], enabled: bool) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(list(it), desc="models", unit="model")
