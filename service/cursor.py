"""Opaque, tamper-proof feed cursors: base64url(JSON) + HMAC-SHA256 over it.

A cursor pins the scroll to the model version of its first page and to its user, so paging
stays coherent when the live version changes mid-scroll and a cursor cannot be replayed for
another user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson

from service.errors import bad_request


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, body: str) -> str:
    return _b64(hmac.digest(secret, body.encode(), hashlib.sha256)[:16])


def encode(
    secret: bytes,
    user_id: str,
    version: str,
    page: int,
    started: float,
    stateless_from: int | None = None,
) -> str:
    """A cursor to page ``page`` of the scroll; ``stateless_from``: the page from which the
    scroll records nothing (an unknown visitor, or Redis full), so its pages are cut from one
    ranking (:mod:`service.pages`)."""
    fields: dict[str, Any] = {"u": user_id, "v": version, "p": page, "t": round(started, 3)}
    if stateless_from is not None:
        fields["s"] = stateless_from
    body = _b64(orjson.dumps(fields))
    return f"{body}.{_sign(secret, body)}"


def decode(secret: bytes, cursor: str, user_id: str, ttl_s: float) -> dict[str, Any]:
    """The cursor's fields; a forged, foreign, expired or garbled cursor is a 400."""
    try:
        body, sig = cursor.split(".", 1)
        expected = _sign(secret, body)
        if not hmac.compare_digest(sig, expected):
            raise ValueError("signature mismatch")
        data = orjson.loads(_unb64(body))
        if not isinstance(data, dict) or not isinstance(data.get("v"), str):
            raise ValueError("bad fields")
        page, stateless, started = data.get("p"), data.get("s"), data.get("t")
        if not (isinstance(page, int) and not isinstance(page, bool) and page >= 0):
            raise ValueError("bad page")
        if stateless is not None and not (isinstance(stateless, int) and 0 <= stateless):
            raise ValueError("bad stateless page")
        if not isinstance(started, int | float) or isinstance(started, bool):
            raise ValueError("bad start")
    except (ValueError, TypeError, UnicodeDecodeError) as e:  # orjson.JSONDecodeError too
        raise bad_request(
            "invalid cursor: use next_cursor exactly as returned", "invalid_cursor"
        ) from e
    if data.get("u") != user_id:
        raise bad_request("this cursor belongs to another user", "invalid_cursor")
    if time.time() - float(data.get("t", 0)) > ttl_s:
        raise bad_request("cursor expired; start again without a cursor", "invalid_cursor")
    return data
