"""Text features: a tokenizer that segments Chinese (jieba) and keeps English words whole.

>>> tokenize("保湿精华液 great Swatch!")
['保湿', '精华液', '保湿', '湿精', '精华', '华液', 'great', 'swatch']
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

logger = logging.getLogger(__name__)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[^\W_]+", re.UNICODE)


@lru_cache(maxsize=1)
def _jieba():  # type: ignore[no-untyped-def]
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def tokenize(text: str) -> list[str]:
    """Split mixed Chinese/English text into lowercase tokens.

    Runs of CJK characters give jieba's words of two or more characters plus every character
    bigram of the run: jieba's dictionary is Simplified Chinese, and bigrams keep Traditional
    text (口紅, 色號) matchable. Other runs of letters and digits are kept as one token.
    """
    tokens: list[str] = []
    for run in _WORD.findall(text.lower()):
        if not _CJK.fullmatch(run):
            tokens.append(run)
        elif len(run) <= 2:
            tokens.append(run)
        else:
            tokens.extend(w for w in _jieba().lcut(run, HMM=False) if len(w) > 1)
            tokens.extend(run[i : i + 2] for i in range(len(run) - 1))
    return tokens


def make_vectorizer(min_df: int = 1, max_features: int | None = 200_000) -> TfidfVectorizer:
    """A TF-IDF vectorizer over :func:`tokenize` tokens (unigrams, sublinear tf, L2 rows)."""
    return TfidfVectorizer(
        tokenizer=tokenize,
        token_pattern=None,
        lowercase=False,
        min_df=min_df,
        max_features=max_features,
        sublinear_tf=True,
        dtype=np.float32,
    )
