"""Candidate models: the contract (:mod:`~feed.models.base`), the sources
(:mod:`~feed.models.sources`), the candidate features (:mod:`~feed.models.candidates`), the
learned ranker (:mod:`~feed.models.ranker`) and the default recipe (:mod:`~feed.models.default`)."""

from feed.models.base import CandidateModel, NotFittedError
from feed.models.sources import Content, ItemItem, MatrixFactorization, Popularity, Social

__all__ = [
    "CandidateModel",
    "Content",
    "ItemItem",
    "MatrixFactorization",
    "NotFittedError",
    "Popularity",
    "Social",
]
