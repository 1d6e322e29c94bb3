"""Merchant accounts and reports in Redis (docs/security.md, "Merchant tokens").

An account is a field of :data:`feed.contract.MERCHANTS_KEY` (merchant id -> JSON
``{token_sha256, created_at, rotated_at, revoked_at}``) and, while it is active, a field of
:data:`feed.contract.MERCHANT_TOKENS_KEY` (sha256 of its token -> merchant id), both changed in
one transaction. The token itself (``secrets.token_urlsafe(32)``, 256 random bits) is shown
once and never stored; sha256 suffices for a secret of that entropy (no dictionary to try).
Every request reads the hashes (no cache), so a rotated or revoked token stops working on the
next request in every worker. Accounts are created only by an operator (the admin API or
``feed merchants create``) and capped at :data:`MERCHANTS_MAX`.

Reports: :func:`report` folds at most :data:`REPORT_FOLD_MAX` log entries (about
:data:`REPORT_FOLD_S` seconds) logged since the last fold (:func:`feed.merchants.fold`, under its
lock), then reads the merchant's day buckets; ``folded.behind`` says how many entries are left
to ``feed merchants aggregate`` (run from cron), so a request never runs as long as a backlog.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import WatchError

from feed import contract as c
from feed import merchants as fm

MERCHANTS_MAX = 100_000  # accounts (an operator creates them; a bound all the same)
REPORT_FOLD_MAX = 50_000  # log entries one report request folds at most
REPORT_FOLD_S = 5.0  # and for about this long at most (then it answers with `behind`)


class MerchantError(Exception):
    """Refused: ``code`` is ``merchant_exists``, ``not_found`` or ``too_many_merchants``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def token_hash(token: str) -> str:
    """The stored form of a token.

    >>> len(token_hash("x"))
    64
    """
    return hashlib.sha256(token.encode()).hexdigest()


def _record(raw: Any) -> dict[str, Any] | None:
    rec = c.decode_json(raw)
    return rec if isinstance(rec, dict) else None


def _issue(r: Any, merchant_id: str, mode: str) -> str:
    """Create (``mode`` "create": a new or revoked account) or rotate ("rotate": an active
    account) a token; the new token. One transaction under ``WATCH``."""
    token = secrets.token_urlsafe(32)
    digest = token_hash(token)
    while True:
        with r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(c.MERCHANTS_KEY)
                rec = _record(pipe.hget(c.MERCHANTS_KEY, merchant_id))
                active = rec is not None and not rec.get("revoked_at")
                now = round(time.time(), 3)
                if mode == "create":
                    if active:
                        raise MerchantError(
                            "merchant_exists",
                            f"merchant {merchant_id!r} has an account: rotate its token instead",
                        )
                    if rec is None and pipe.hlen(c.MERCHANTS_KEY) >= MERCHANTS_MAX:
                        raise MerchantError(
                            "too_many_merchants", f"at most {MERCHANTS_MAX} merchant accounts"
                        )
                    new = {
                        "token_sha256": digest,
                        "created_at": now,
                        "rotated_at": None,
                        "revoked_at": None,
                    }
                else:
                    if not active or rec is None:
                        raise MerchantError("not_found", f"no active merchant {merchant_id!r}")
                    new = {**rec, "token_sha256": digest, "rotated_at": now}
                pipe.multi()
                if rec is not None and rec.get("token_sha256"):
                    pipe.hdel(c.MERCHANT_TOKENS_KEY, rec["token_sha256"])
                pipe.hset(c.MERCHANTS_KEY, merchant_id, c.encode_json(new))
                pipe.hset(c.MERCHANT_TOKENS_KEY, digest, merchant_id)
                pipe.execute()
                return token
            except WatchError:
                continue


def create(r: Any, merchant_id: str) -> str:
    """A new account's token (or a revoked account's new one); ``merchant_exists`` when it
    has an active token."""
    return _issue(r, merchant_id, "create")


def rotate(r: Any, merchant_id: str) -> str:
    """A new token for an active account; the old one stops working at once."""
    return _issue(r, merchant_id, "rotate")


def revoke(r: Any, merchant_id: str) -> dict[str, Any]:
    """Revoke an account's token (the account and its aggregates stay); its public record."""
    while True:
        with r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(c.MERCHANTS_KEY)
                rec = _record(pipe.hget(c.MERCHANTS_KEY, merchant_id))
                if rec is None or rec.get("revoked_at"):
                    raise MerchantError("not_found", f"no active merchant {merchant_id!r}")
                new = {**rec, "token_sha256": None, "revoked_at": round(time.time(), 3)}
                pipe.multi()
                pipe.hdel(c.MERCHANT_TOKENS_KEY, rec["token_sha256"])
                pipe.hset(c.MERCHANTS_KEY, merchant_id, c.encode_json(new))
                pipe.execute()
                return public(merchant_id, new)
            except WatchError:
                continue


def public(merchant_id: str, rec: dict[str, Any]) -> dict[str, Any]:
    """What may be shown of an account (never its hash)."""
    return {
        "merchant_id": merchant_id,
        "active": not rec.get("revoked_at"),
        "created_at": c.iso_time(rec.get("created_at")),
        "rotated_at": c.iso_time(rec.get("rotated_at")),
        "revoked_at": c.iso_time(rec.get("revoked_at")),
    }


def account(r: Any, merchant_id: str) -> dict[str, Any] | None:
    """One account (one ``HGET``), or None."""
    rec = _record(r.hget(c.MERCHANTS_KEY, merchant_id))
    return public(merchant_id, rec) if rec is not None else None


def accounts(r: Any) -> list[dict[str, Any]]:
    """Every account, by merchant id."""
    raw = r.hgetall(c.MERCHANTS_KEY) or {}
    out = [public(c.text(k), _record(v) or {}) for k, v in raw.items()]
    return sorted(out, key=lambda x: x["merchant_id"])


def token_merchant(r: Any, token: str, merchant_id: str) -> tuple[str | None, bool]:
    """(the merchant ``token`` opens, or None; whether it opens ``merchant_id``): one round
    trip; the path merchant's stored hash is compared in constant time."""
    if not token:
        return None, False
    digest = token_hash(token)
    pipe = r.pipeline(transaction=False)
    pipe.hget(c.MERCHANT_TOKENS_KEY, digest)
    pipe.hget(c.MERCHANTS_KEY, merchant_id)
    owner_raw, rec_raw = pipe.execute()
    owner = c.text(owner_raw) if owner_raw is not None else None
    rec = _record(rec_raw) or {}
    stored = rec.get("token_sha256") or ""
    opens = bool(stored) and not rec.get("revoked_at")
    opens = hmac.compare_digest(stored.encode(), digest.encode()) and opens
    return owner, opens


# --- reports -----------------------------------------------------------------------------------
def report(
    r: Any,
    merchant_id: str,
    first: int,
    last: int,
    by: str,
    *,
    version: str | None,
    post_lookup: Callable[[str], tuple[str, list[str]] | None] | None,
    window_s: float = fm.WINDOW_S,
    fold_max: int = REPORT_FOLD_MAX,
) -> dict[str, Any]:
    """Fold what the log gained since the last fold (bounded: ``fold_max`` entries, about
    :data:`REPORT_FOLD_S` seconds), then the merchant's report over days ``first``..``last``
    grouped ``by``; ``folded.behind``: the entries not folded yet."""
    cat = fm.Catalogue(r, version, post_lookup)
    folded = fm.fold(
        r, cat, max_entries=fold_max, max_s=REPORT_FOLD_S, window_s=window_s, wait_s=5.0
    )
    out = fm.report(fm.read_days(r, merchant_id, first, last), by)
    return {
        "merchant_id": merchant_id,
        "from": fm.iso_day(first),
        "to": fm.iso_day(last),
        "by": by,
        "window_s": window_s,
        **out,
        "folded": {
            "entries": folded.entries,
            "checkpoint": folded.checkpoint,
            "gap": folded.gap,
            "behind": folded.behind,
        },
    }
