"""Merchants (社交魔方): accounts behind the admin token, and each merchant's own routes behind
its token (:func:`service.request.require_merchant`: 401 without a valid token, 404 for another
merchant's routes, never 403).

==========  ==========================================  ======================================
method      path                                        what
==========  ==========================================  ======================================
GET         /v1/admin/merchants                         every account (never a token or hash)
POST        /v1/admin/merchants                         ``{merchant_id}``: its token, once
POST        /v1/admin/merchants/<m>/rotate              a new token; the old one stops working
DELETE      /v1/admin/merchants/<m>                     revoke the token (aggregates stay)
GET         /v1/merchants/<m>                           the account (checks a token)
GET         /v1/merchants/<m>/report                    attribution report (``feed.merchants``)
POST        /v1/merchants/<m>/audiences                 users likely to buy (``service.campaigns``)
GET         /v1/merchants/<m>/audiences                 the merchant's audiences
GET         /v1/merchants/<m>/audiences/<a>.csv         an audience's users as CSV
POST        /v1/merchants/<m>/campaigns                 a sponsored campaign
GET         /v1/merchants/<m>/campaigns[/<c>]           campaigns with their delivery
POST        /v1/merchants/<m>/campaigns/<c>/stop        stop at once
GET         /v1/merchants/<m>/campaigns/<c>/report      exposed vs holdout: the lift
GET         /merchant                                   the merchant page (static HTML + JS)
==========  ==========================================  ======================================
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from pydantic import Field

from feed import contract as c
from feed import merchants as fm
from service import campaigns as cp
from service import merchants as accounts
from service.errors import ApiError, bad_request, not_found
from service.request import (
    check_id,
    live_table,
    redis,
    require_admin,
    require_merchant,
    store,
)
from service.schemas import Id, Model, Out, api, body

bp = Blueprint("merchants", __name__)

MAX_DAYS = fm.RETENTION_DAYS  # the longest report range (older days are gone anyway)
START_SLACK_S = 60  # a campaign's start may be this far in the past (clock skew); then now
_ADMIN: dict[str, Any] = {"security": [{"bearerAuth": []}], "tags": ("merchants",)}
_MERCHANT: dict[str, Any] = {"security": [{"bearerAuth": []}], "tags": ("merchants",)}
_MERCHANT_ERRORS = {
    400: "Invalid merchant id or query argument (the message names it and the limit).",
    401: "No valid merchant token.",
    404: "No such merchant, or the token is another merchant's.",
}


class NewMerchant(Model):
    merchant_id: Id


class Rotate(Model):
    """No fields: the body may be empty."""


class MerchantToken(Out):
    merchant_id: str
    token: str = Field(description="Shown once; only its sha256 is stored.")


class MerchantAccount(Out):
    merchant_id: str
    active: bool
    created_at: str | None = None
    rotated_at: str | None = None
    revoked_at: str | None = None


class MerchantList(Out):
    merchants: list[MerchantAccount]


class MerchantReport(Out):
    merchant_id: str
    by: str
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    share_chains: list[dict[str, Any]]


def _error(e: accounts.MerchantError) -> ApiError:
    if e.code == "not_found":
        return not_found(str(e))
    return ApiError(409, e.code, str(e))


# --- admin -----------------------------------------------------------------------------------
@bp.get("/v1/admin/merchants")
@api(
    "Every merchant account (never a token).",
    ok={200: MerchantList},
    errors={401: "Missing or wrong admin token.", 404: "The admin API is off."},
    **_ADMIN,
)
def list_merchants() -> Any:
    require_admin()
    return jsonify({"merchants": accounts.accounts(redis())})


@bp.post("/v1/admin/merchants")
@api(
    "Create a merchant account; its token is in the answer, once.",
    body=NewMerchant,
    ok={201: MerchantToken},
    errors={
        401: "Missing or wrong admin token.",
        404: "The admin API is off.",
        409: "The merchant has an active token (rotate it).",
    },
    **_ADMIN,
)
def create_merchant() -> Any:
    require_admin()
    m = body().merchant_id
    try:
        token = accounts.create(redis(), m)
    except accounts.MerchantError as e:
        raise _error(e) from None
    return jsonify({"merchant_id": m, "token": token}), 201


@bp.post("/v1/admin/merchants/<merchant_id>/rotate")
@api(
    "A new token for a merchant; the old one stops working at once.",
    body=Rotate,
    body_required=False,
    ok={200: MerchantToken},
    errors={401: "Missing or wrong admin token.", 404: "No active account of that id."},
    **_ADMIN,
)
def rotate_merchant(merchant_id: str) -> Any:
    require_admin()
    check_id(merchant_id, "merchant_id")
    body()
    try:
        token = accounts.rotate(redis(), merchant_id)
    except accounts.MerchantError as e:
        raise _error(e) from None
    return jsonify({"merchant_id": merchant_id, "token": token})


@bp.delete("/v1/admin/merchants/<merchant_id>")
@api(
    "Revoke a merchant's token (its data stays; `create` issues a new one).",
    ok={200: MerchantAccount},
    errors={401: "Missing or wrong admin token.", 404: "No active account of that id."},
    **_ADMIN,
)
def revoke_merchant(merchant_id: str) -> Any:
    require_admin()
    check_id(merchant_id, "merchant_id")
    try:
        return jsonify(accounts.revoke(redis(), merchant_id))
    except accounts.MerchantError as e:
        raise _error(e) from None


# --- a merchant's own routes -----------------------------------------------------------------
@bp.get("/v1/merchants/<merchant_id>")
@api(
    "The merchant's account (a way to check a token).",
    ok={200: MerchantAccount},
    errors=_MERCHANT_ERRORS,
    **_MERCHANT,
)
def get_merchant(merchant_id: str) -> Any:
    require_merchant(merchant_id)
    return jsonify(accounts.account(redis(), merchant_id))


def _day_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return fm.parse_day(raw)
    except ValueError:
        raise bad_request(
            f"{name} must be a date YYYY-MM-DD, got {raw[:20]!r}", f"invalid_{name}"
        ) from None


def _post_lookup() -> Any:
    """post -> (author, product ids) from the live version's cached post table (None: none
    live)."""
    s = store()
    live = s.live_version()
    table = s.table(live) if live else None
    if table is None:
        return live, None

    def lookup(post_id: str) -> tuple[str, list[str]] | None:
        i = table.index.get(post_id)
        return None if i is None else (table.authors[i], list(table.product_ids[i]))

    return live, lookup


@bp.get("/v1/merchants/<merchant_id>/report")
@api(
    "Attribution: impressions, clicks, likes, shares, add-to-carts, purchases and revenue of "
    "the merchant's products by post, author, channel or product; share chains; group-buys.",
    ok={200: MerchantReport},
    errors=_MERCHANT_ERRORS,
    **_MERCHANT,
)
def merchant_report(merchant_id: str) -> Any:
    require_merchant(merchant_id)
    today = fm.day_of(datetime.now(UTC).timestamp())
    last = _day_arg("to", today)
    first = _day_arg("from", last - 6)
    if first > last:
        raise bad_request("from must not be after to", "invalid_from")
    if last - first + 1 > MAX_DAYS:
        raise bad_request(f"from..to spans at most {MAX_DAYS} days", "invalid_from")
    by = request.args.get("by", "post")
    if by not in fm.DIMENSIONS:
        raise bad_request(f"by must be one of {', '.join(fm.DIMENSIONS)}", "invalid_by")
    version, lookup = _post_lookup()
    window = float(current_app.config.get("MERCHANT_WINDOW_S", fm.WINDOW_S))
    return jsonify(
        accounts.report(
            redis(),
            merchant_id,
            first,
            last,
            by,
            version=version,
            post_lookup=lookup,
            window_s=window,
        )
    )


# --- audiences and campaigns (service/campaigns.py) ------------------------------------------
class NewAudience(Model):
    """Exactly one of ``product_ids``, ``category``, ``like_post``: the merchant's own."""

    product_ids: list[Id] | None = Field(None, min_length=1, max_length=100)
    category: str | None = Field(None, min_length=1, max_length=128)
    like_post: Id | None = None
    size: int = Field(1000, ge=1, le=cp.AUDIENCE_MAX)


class Audience(Out):
    audience_id: str
    target: dict[str, Any]
    size: int
    estimated_size: int = Field(
        description="An estimate of the users with a positive score: the users found when no "
        "target product's index list was cut at 10,000 users, else from each product's reach; "
        "either way a user is in a product's list only if it is one of the user's 100 best "
        "products, so users with only a trace of a score are not counted "
        "(docs/architecture.md, 'The audience index')."
    )
    ranked_by: str = Field(
        description="`index`: the version's audience index; `scan`: a version published "
        "before it (every user's candidate list read; publish it again)."
    )
    model_version: str
    users: list[str] = Field(default_factory=list, description="The first 50, best first.")


class AudienceList(Out):
    audiences: list[dict[str, Any]]


class NewCampaign(Model):
    post_ids: list[Id] = Field(min_length=1, max_length=cp.CAMPAIGN_POSTS_MAX)
    audience_id: Id = Field(description='An audience of this merchant, or "all".')
    budget_impressions: int = Field(ge=1, le=cp.BUDGET_MAX)
    max_per_user: int = Field(ge=1, le=cp.MAX_PER_USER_MAX)
    slots: list[int] = Field(min_length=1, max_length=cp.PAGE_MAX)
    start: float | str | None = Field(
        None,
        description="ISO-8601 or unix seconds; default now. At most 60 s in the past (then "
        "now): a backdated start would release the budget at once.",
    )
    end: float | str = Field(description="ISO-8601 or unix seconds, after start.")
    holdout: float = Field(0.1, ge=0.01, le=0.5)


class Campaign(Out):
    campaign_id: str
    status: str
    delivered_impressions: int


class CampaignList(Out):
    campaigns: list[Campaign]


class CampaignReport(Out):
    campaign_id: str
    groups: dict[str, Any]
    lift: float | None
    lift_ci: list[float] | None
    diff: float | None
    diff_ci: list[float] | None
    srm: dict[str, Any]


def _campaign_error(e: cp.CampaignError) -> ApiError:
    return not_found(str(e)) if e.status == 404 else ApiError(e.status, e.code, str(e))


def _live_table() -> tuple[str, Any]:
    live, table = live_table()
    if live is None or table is None:
        raise ApiError(503, "unavailable", "no live model version to rank users with")
    return live, table


def _ts(raw: Any, name: str, now: float) -> float:
    if raw is None:
        return now
    if isinstance(raw, int | float):
        return float(raw)
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name} must be ISO-8601 or unix seconds", f"invalid_{name}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@bp.post("/v1/merchants/<merchant_id>/audiences")
@api(
    "Users most likely to buy the merchant's products (its products, a category of them, or "
    "one of its posts), ranked from the live version; stored 30 days, 20 per merchant.",
    body=NewAudience,
    ok={201: Audience},
    errors={
        **_MERCHANT_ERRORS,
        409: "20 audiences, every one used by a kept campaign (too_many_audiences).",
        503: "No live model version.",
    },
    **_MERCHANT,
)
def create_audience(merchant_id: str) -> Any:
    require_merchant(merchant_id)
    spec = body()
    given = [k for k in ("product_ids", "category", "like_post") if getattr(spec, k) is not None]
    if len(given) != 1:
        raise bad_request("give exactly one of product_ids, category, like_post", "invalid_target")
    live, table = _live_table()
    meta = _users_in_version(live)
    try:
        out = cp.build_audience(
            redis(), merchant_id, live, table, spec.model_dump(), spec.size, meta
        )
    except cp.CampaignError as e:
        raise _campaign_error(e) from None
    return jsonify(out), 201


def _users_in_version(version: str) -> int | None:
    """Users with candidates in ``version``, from its registry entry (for the estimate)."""
    meta = c.decode_json(redis().hget(c.VERSIONS_KEY, version))
    users = (meta or {}).get("counts", {}).get("users") if isinstance(meta, dict) else None
    return int(users) if isinstance(users, int) else None


@bp.get("/v1/merchants/<merchant_id>/audiences")
@api("The merchant's audiences (not expired).", ok={200: AudienceList}, errors=_MERCHANT_ERRORS,
     **_MERCHANT)  # fmt: skip
def list_audiences(merchant_id: str) -> Any:
    require_merchant(merchant_id)
    return jsonify({"audiences": cp.list_audiences(redis(), merchant_id)})


@bp.get("/v1/merchants/<merchant_id>/audiences/<audience_id>.csv")
@api(
    "An audience's users as CSV (user_id,score; best first), for the merchant's own channels.",
    ok={200: "text"},
    errors=_MERCHANT_ERRORS,
    **_MERCHANT,
)
def audience_csv(merchant_id: str, audience_id: str) -> Any:
    require_merchant(merchant_id)
    try:
        text = cp.audience_csv(redis(), merchant_id, audience_id)
    except cp.CampaignError as e:
        raise _campaign_error(e) from None
    resp = Response(text, mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="{audience_id}.csv"'
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


@bp.post("/v1/merchants/<merchant_id>/campaigns")
@api(
    "Boost the merchant's posts to an audience (or all users) at fixed feed slots, with a "
    "budget, a cap per user, a flight and a holdout that never sees them.",
    body=NewCampaign,
    ok={201: Campaign},
    errors={
        **_MERCHANT_ERRORS,
        409: "Too many scheduled or running campaigns: 50 per merchant "
        "(too_many_campaigns) or CAMPAIGNS_LIVE_MAX over every merchant "
        "(too_many_live_campaigns).",
    },
    **_MERCHANT,
)
def create_campaign(merchant_id: str) -> Any:
    require_merchant(merchant_id)
    spec = body()
    now = time.time()
    start, end = _ts(spec.start, "start", now), _ts(spec.end, "end", now)
    if start < now - START_SLACK_S:
        raise bad_request(
            f"start may be at most {START_SLACK_S} seconds in the past (omit it to start now)",
            "invalid_start",
        )
    start = max(start, now)  # pacing and the report count from the real start
    if end <= start or end <= now:
        raise bad_request("end must be after start and in the future", "invalid_end")
    if end - start > cp.FLIGHT_MAX_S:
        raise bad_request(f"a flight lasts at most {cp.FLIGHT_MAX_S // 86_400} days", "invalid_end")
    if any(not 0 <= s < 100 for s in spec.slots) or len(set(spec.slots)) != len(spec.slots):
        raise bad_request("slots are distinct positions 0..99 (0-based)", "invalid_slots")
    live, table = _live_table()
    owned = cp.Owned(redis(), merchant_id, live, table)
    data = {**spec.model_dump(), "start": start, "end": end}
    live_max = int(current_app.config.get("CAMPAIGNS_LIVE_MAX") or cp.CAMPAIGNS_LIVE_MAX)
    try:
        out = cp.create_campaign(redis(), merchant_id, data, owned, now, live_max)
    except cp.CampaignError as e:
        raise _campaign_error(e) from None
    return jsonify(out), 201


@bp.get("/v1/merchants/<merchant_id>/campaigns")
@api("The merchant's campaigns with their delivery.", ok={200: CampaignList},
     errors=_MERCHANT_ERRORS, **_MERCHANT)  # fmt: skip
def list_campaigns(merchant_id: str) -> Any:
    require_merchant(merchant_id)
    return jsonify({"campaigns": cp.list_campaigns(redis(), merchant_id, time.time())})


@bp.get("/v1/merchants/<merchant_id>/campaigns/<campaign_id>")
@api("One campaign with its delivery.", ok={200: Campaign}, errors=_MERCHANT_ERRORS,
     **_MERCHANT)  # fmt: skip
def get_campaign(merchant_id: str, campaign_id: str) -> Any:
    require_merchant(merchant_id)
    try:
        cfg = cp.get_config(redis(), merchant_id, campaign_id)
    except cp.CampaignError as e:
        raise _campaign_error(e) from None
    return jsonify(cp.public_campaign(redis(), cfg, time.time()))


@bp.post("/v1/merchants/<merchant_id>/campaigns/<campaign_id>/stop")
@api("Stop a campaign at once, in every worker.", body=Rotate, body_required=False,
     ok={200: Campaign}, errors=_MERCHANT_ERRORS, **_MERCHANT)  # fmt: skip
def stop_campaign(merchant_id: str, campaign_id: str) -> Any:
    require_merchant(merchant_id)
    body()
    try:
        return jsonify(cp.stop_campaign(redis(), merchant_id, campaign_id, time.time()))
    except cp.CampaignError as e:
        raise _campaign_error(e) from None


@bp.get("/v1/merchants/<merchant_id>/campaigns/<campaign_id>/report")
@api(
    "Exposed vs holdout users of the campaign's audience: purchases of its products per user "
    "in the flight, the lift with a 95% interval, and a sample-ratio check. Folds at most "
    "50,000 new log entries first; `behind`: entries left to `feed merchants aggregate`.",
    ok={200: CampaignReport},
    errors=_MERCHANT_ERRORS,
    **_MERCHANT,
)
def campaign_report(merchant_id: str, campaign_id: str) -> Any:
    require_merchant(merchant_id)
    version, lookup = _post_lookup()
    try:
        rep = cp.report(
            redis(), merchant_id, campaign_id, time.time(), version=version, post_lookup=lookup
        )
        return jsonify(rep)
    except cp.CampaignError as e:
        raise _campaign_error(e) from None


# --- the merchant page -----------------------------------------------------------------------
@bp.get("/merchant")
@api(
    "The merchant page: funnel, top posts and authors, share chains, campaigns and their lift "
    "(docs/merchants.md). Holds no data and no token (no API key needed).",
    ok={200: "html"},
    security=[],
    tags=("merchants",),
)
def merchant_page() -> Response:
    resp = Response(render_template("merchant.html"), mimetype="text/html")
    resp.headers["Content-Security-Policy"] = PAGE_CSP
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-store"
    return resp


PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
