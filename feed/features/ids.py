"""One id-map type for every conversion between external string ids and matrix rows.

External ids (strings) cross every boundary of the package; internal row numbers never
leave ``feed/``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


class IdMap:
    """A bijection between external string ids and internal indices ``0..n-1``.

    Parameters
    ----------
    external_ids : iterable of str
        Unique ids, in the order that defines their internal index.

    Examples
    --------
    >>> ids = IdMap(["u7", "u3"])
    >>> ids.to_internal(["u3", "u7"]).tolist()
    [1, 0]
    >>> ids.to_external([0]).tolist()
    ['u7']
    >>> "u9" in ids, len(ids)
    (False, 2)
    """

    def __init__(self, external_ids: Iterable[str]) -> None:
        ext = np.asarray(list(external_ids), dtype=object)
        self._index: dict[str, int] = {str(e): i for i, e in enumerate(ext)}
        if len(self._index) != len(ext):
            raise ValueError("IdMap: external ids are not unique")
        self.external = ext.astype(str) if len(ext) else np.array([], dtype=str)
        self._lookup = pd.Index(self.external.astype(object))

    @classmethod
    def from_values(cls, *columns: Iterable[str]) -> IdMap:
        """Build a map of the distinct values of several columns, in first-seen order."""
        values = [_strings(col) for col in columns]
        return cls(pd.unique(np.concatenate(values)) if values else [])

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    def get(self, external_id: str, default: int = -1) -> int:
        """Internal index of one id, or ``default`` when unknown."""
        return self._index.get(external_id, default)

    def to_internal(self, external_ids: Iterable[str], strict: bool = True) -> np.ndarray:
        """Internal indices (int64) of ``external_ids``; unknown ids raise, or map to -1."""
        values = _strings(external_ids)
        out = self._lookup.get_indexer(values).astype(np.int64, copy=False)
        if strict and (out < 0).any():
            raise KeyError(f"unknown id {values[np.argmax(out < 0)]!r}")
        return out

    def to_external(self, internal_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """External ids (str array) of internal indices."""
        return self.external[np.asarray(internal_ids, dtype=np.int64)]


def _strings(values: Iterable[str]) -> np.ndarray:
    """``values`` as an object array of Python strings."""
    if not isinstance(values, np.ndarray | pd.Series | pd.Index):
        values = list(values)
    return np.asarray(pd.Series(values, dtype=object).astype(str), dtype=object)
