"""One id-map type for every conversion between external string ids and matrix rows.

External ids (strings) cross every boundary of the package; internal row numbers never
leave ``feed/``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


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
        self._values = _arrow(self.external)

    @classmethod
    def from_values(cls, *columns: Iterable[str]) -> IdMap:
        """Build a map of the distinct values of several columns, in first-seen order."""
        if not columns:
            return cls([])
        values = pa.chunked_array([_arrow(col) for col in columns], type=pa.large_string())
        return cls(pc.unique(values).to_pylist())

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    def get(self, external_id: str, default: int = -1) -> int:
        """Internal index of one id, or ``default`` when unknown."""
        return self._index.get(external_id, default)

    def to_internal(self, external_ids: Iterable[str], strict: bool = True) -> np.ndarray:
        """Internal indices (int64) of ``external_ids``; unknown ids raise, or map to -1."""
        values = _arrow(external_ids)
        found = pc.index_in(values, value_set=self._values)
        out = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if strict and (out < 0).any():
            raise KeyError(f"unknown id {values[int(np.argmax(out < 0))].as_py()!r}")
        return out

    def to_external(self, internal_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """External ids (str array) of internal indices."""
        return self.external[np.asarray(internal_ids, dtype=np.int64)]


def _arrow(values: Iterable[str]) -> pa.Array:
    """``values`` as an Arrow string array: without a Python object per value when they are
    already strings (a pandas string column is handed over as it is stored), else each value
    converted with ``str``."""
    if not isinstance(values, np.ndarray | pd.Series | pd.Index):
        values = list(values)
    try:
        arr = pa.array(values, type=pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        arr = None
    if arr is None or arr.null_count:  # not strings (or missing values): as str() prints them
        strings = pd.Series(values, dtype=object).astype(str)
        arr = pa.array(strings.to_numpy(object), type=pa.large_string())
    return arr
