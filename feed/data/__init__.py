"""Datasets: the format (:mod:`feed.data.format`), loading and validation
(:mod:`feed.data.validate`), importers of public datasets (:mod:`feed.data.importers`) and
synthetic data with planted structure (:mod:`feed.data.synth`).

``from feed.data import Dataset, load`` is what the rest of the library imports.
"""

from feed.data.format import SCHEMA, Dataset, DatasetError, Problem
from feed.data.validate import load, validate

__all__ = ["SCHEMA", "Dataset", "DatasetError", "Problem", "load", "validate"]
