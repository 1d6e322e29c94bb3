"""Blending candidate sources into one ranked list per user.

:class:`RankFusion` is the first blend: weighted reciprocal-rank fusion of every source's top
list. Each blended item keeps the reason of the source that contributed most to its score.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from feed.contract import REASON_CODE
from feed.features.matrices import TrainingData
from feed.models.base import CandidateModel, blocks, topk

logger = logging.getLogger(__name__)


class RankFusion:
    """Weighted reciprocal-rank fusion: ``score = sum_s w_s / (k + rank_s)``.

    Parameters
    ----------
    sources : mapping of name -> CandidateModel
    weights : mapping of name -> float, optional
        Missing names weigh 1.
    n_per_source : int
        How deep each source's list is read.
    k : float
        The fusion constant (larger flattens the rank curve).
    """

    def __init__(
        self,
        sources: Mapping[str, CandidateModel],
        weights: Mapping[str, float] | None = None,
        n_per_source: int = 200,
        k: float = 20.0,
    ) -> None:
        self.sources = dict(sources)
        self.weights = dict(weights or {})
        self.n_per_source = n_per_source
        self.k = k

    def fit(self, data: TrainingData) -> RankFusion:
        for name, model in self.sources.items():
            logger.info("fitting %s", name)
            model.fit(data)
        self.n_posts_ = data.n_posts
        return self

    def recommend(
        self,
        users: np.ndarray,
        n: int,
        exclude: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``n`` fused candidates: (items, scores, reason codes), each (len(users), n)."""
        users = np.asarray(users, dtype=np.int64)
        parts = [
            self._recommend_block(users[lo:hi], n, exclude)
            for lo, hi in blocks(len(users), 3 * self.n_posts_)
        ]
        if not parts:
            return self._recommend_block(users, n, exclude)
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]

    def _recommend_block(
        self,
        users: np.ndarray,
        n: int,
        exclude: sp.csr_matrix | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        names = list(self.sources)
        fused = np.zeros((len(users), self.n_posts_), dtype=np.float32)
        best = np.zeros((len(users), self.n_posts_), dtype=np.float32)
        reason = np.zeros((len(users), self.n_posts_), dtype=np.uint8)
        rows = np.arange(len(users))[:, None]
        for name in names:
            model = self.sources[name]
            items, _ = model.recommend(users, self.n_per_source, exclude)
            contrib = self.weights.get(name, 1.0) / (self.k + np.arange(items.shape[1]) + 1.0)
            contrib = np.broadcast_to(contrib, items.shape).astype(np.float32)
            ok = items >= 0
            r, it = np.broadcast_to(rows, items.shape)[ok], items[ok]
            np.add.at(fused, (r, it), contrib[ok])
            better = contrib[ok] > best[r, it]
            best[r[better], it[better]] = contrib[ok][better]
            reason[r[better], it[better]] = REASON_CODE[model.reason]
        fused[fused <= 0] = -np.inf
        items, scores = topk(fused, n)
        reasons = np.take_along_axis(reason, np.maximum(items, 0), axis=1)
        return items, scores, reasons
