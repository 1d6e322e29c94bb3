"""shopfeed: a content-guided shopping feed.

The offline half (``feed``) loads datasets, trains candidate models and publishes
them into Redis; the online half (``service``) serves ranked pages from Redis.
"""

__version__ = "0.1.0"
