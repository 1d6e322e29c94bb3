"""The service's own request data: a request's route and a page to mark served. The tables a
page is ranked from are :mod:`feed.serving.state`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Route:
    """The version that serves a request, with the user's experiment and arm (None outside
    an experiment)."""

    model_version: str
    experiment: str | None = None
    arm: str | None = None

    def json(self) -> dict[str, str | None]:
        """The route's fields as a feed page carries them, in this order.

        >>> Route("v1").json()
        {'model_version': 'v1', 'experiment': None, 'arm': None}
        """
        return {"model_version": self.model_version, "experiment": self.experiment, "arm": self.arm}


@dataclass
class Served:
    """A page to mark as served, with its routing (see :meth:`service.store.Store.cards`)."""

    user_id: str
    now: float
    route: Route
    request_id: str
    replay: tuple[str, list[tuple[str, float, str]]] | None = None  # (page key, page)
    mark_seen: bool = True  # False: a stateless scroll, the seen set is left alone
    refused: bool = False  # set when Redis was full and refused the page's writes
    #: more writes of the page's round trip (a running campaign's reach: service.campaigns)
    extra: list[tuple[Any, ...]] = field(default_factory=list)
