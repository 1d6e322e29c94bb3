"""Candidate generators and blends."""

from feed.models.base import CandidateModel, NotFittedError
from feed.models.blend import RankFusion
from feed.models.sources import Content, ItemItem, MatrixFactorization, Popularity, Social

__all__ = [
    "CandidateModel",
    "Content",
    "ItemItem",
    "MatrixFactorization",
    "NotFittedError",
    "Popularity",
    "RankFusion",
    "Social",
]
