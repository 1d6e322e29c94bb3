"""Features: id maps, interaction matrices and text features."""

from feed.features.ids import IdMap

__all__ = ["IdMap"]
