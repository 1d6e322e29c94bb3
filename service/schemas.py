"""The HTTP contract, declared once: pydantic v2 models of every request body and response,
and the per-route registration (:func:`api`) that both validates a route's JSON body with its
model and records the route's contract, from which ``GET /openapi.json`` is generated
(:func:`openapi`).

A body that fails its model is a 400 in the service's error shape
(``{"error": {"code", "message"}}``) whose message names the field path (``products[3].price``)
and the limit or type expected (:func:`error_for`). Limits that are settings (``FEED_POST_*``,
``FEED_GROUP_*``...) are :class:`Limit` annotations: checked against the app's configuration at
validation time and written into the spec with the running app's values.

Query arguments are documented here (:class:`Query`) but parsed by the fast helpers of
:mod:`service.request`, so a feed page pays nothing for pydantic. This module imports no
blueprint; blueprints import it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from flask import request
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainValidator,
    RootModel,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError, core_schema

from feed import contract as c
from service.errors import ApiError, bad_request

# --- field types -----------------------------------------------------------------------------
ID_SCHEMA = {
    "type": "string",
    "pattern": f"^{c.ID_PATTERN}$",
    "description": f"An id: {c.ID_RULE}.",
    "examples": ["u42"],
}


def _valid_id(value: str) -> str:
    if not c.valid_id(value):
        raise PydanticCustomError(
            "feed_id",
            "{value} is not a valid id ({rule})",
            {"value": repr(value[:40]), "rule": c.ID_RULE},
        )
    return value


#: A user, post, product, author or group id (:func:`feed.contract.valid_id`).
Id = Annotated[str, AfterValidator(_valid_id), WithJsonSchema(ID_SCHEMA)]
MAX_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second datetime can print


def _time(value: Any) -> Any:
    """An ISO-8601 string or unix seconds in range (returned as given; the route converts)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and 0 <= value <= MAX_TS:
            return value
        raise PydanticCustomError("feed_time", f"must be unix seconds between 0 and {MAX_TS:.0f}")
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            ts = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            raise PydanticCustomError(
                "feed_time", "{v} is not ISO-8601", {"v": repr(value[:40])}
            ) from None
        if 0 <= ts <= MAX_TS:
            return value
        raise PydanticCustomError("feed_time", "{v} is out of range", {"v": repr(value[:40])})
    raise PydanticCustomError("feed_time", "must be ISO-8601 or unix seconds")


#: A time: ISO-8601 (``Z`` or an offset; UTC when none) or unix seconds.
Time = Annotated[
    Any,
    PlainValidator(_time),
    WithJsonSchema(
        {
            "oneOf": [{"type": "string"}, {"type": "number", "minimum": 0, "maximum": MAX_TS}],
            "description": "ISO-8601 or unix seconds; default now",
        }
    ),
]


@dataclass(frozen=True)
class Limit:
    """A limit that is a setting (``FEED_<setting>``): ``len(value)`` (or the value itself, for
    ``keyword="maximum"``) at most ``config[setting]``, checked against the app's config (the
    validation context) and written into the spec as ``keyword`` with the app's value."""

    setting: str
    keyword: Literal["maxLength", "maxItems", "maximum"]
    unit: str = ""
    code: str | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        out = dict(handler(schema))
        out["x-feed-limit"] = [self.keyword, self.setting]
        return out

    def _check(self, value: Any, info: ValidationInfo) -> Any:
        cfg = (info.context or {}).get("config")
        if cfg is None or self.setting not in cfg:
            return value
        most = cfg[self.setting]
        n = value if self.keyword == "maximum" else len(value)
        if n > most:
            shown = f"{most:g}" if isinstance(most, float) else str(most)
            if self.keyword == "maximum":
                msg = f"is {n:.15g}; at most {shown} is allowed (FEED_{self.setting})"
            else:
                msg = f"has {n} {self.unit}; at most {shown} are allowed (FEED_{self.setting})"
            raise PydanticCustomError("feed_limit", msg, {"code": self.code or ""})
        return value


class Model(BaseModel):
    """A request body: unknown fields, wrong JSON types (``"3"`` for a number, ``1`` for a
    boolean), NaN and infinities are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    #: The error code of every failure of this body (else ``invalid_<field>``).
    error_code: ClassVar[str | None] = None


class Out(BaseModel):
    """A response body (documentation only; responses may carry more fields)."""

    model_config = ConfigDict(extra="allow")


# --- errors ----------------------------------------------------------------------------------
def _path(loc: tuple[Any, ...], data: Any) -> tuple[str, list[str]]:
    """(``products[3].price``, the field names) of an error's ``loc``, leaving out the tags
    of discriminated unions (an event's ``type``) and union member names."""
    out, names = "", list[str]()
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            data = data[part] if isinstance(data, list) and 0 <= part < len(data) else None
            continue
        if isinstance(data, dict) and part not in data and data.get("type") == part:
            continue  # the tag of a discriminated union
        if not isinstance(data, dict) and names:
            continue  # a union member's name
        names.append(str(part))
        out += f".{part}" if out else str(part)
        data = data.get(part) if isinstance(data, dict) else None
    return out or "the body", names


def error_for(
    e: ValidationError, model: type[BaseModel] | None = None, data: Any = None, prefix: str = ""
) -> ApiError:
    """The 400 of a body's first error: the message names the field path and what was
    expected (the limit, the type or the allowed values); the code is the model's
    :attr:`Model.error_code`, else the :class:`Limit`'s (``post_too_large``...), else
    ``unknown_field``, ``unknown_event_type`` or ``invalid_<field>``."""
    err = e.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    path, names = _path(loc, data)
    if prefix:
        path = prefix if path == "the body" else f"{prefix}.{path}"
    kind, ctx = err["type"], err.get("ctx") or {}
    code = f"invalid_{names[-1]}" if names else "invalid_body"
    given = err.get("input")
    if kind == "missing":
        message = f"{path} is required"
    elif kind == "extra_forbidden":
        allowed = ", ".join(_fields_at(model, names[:-1])) if model is not None else ""
        message = f"unknown field {path!r}" + (f": allowed are {allowed}" if allowed else "")
        code = "unknown_field"
    elif kind in ("feed_limit", "feed_id", "feed_time"):
        message = f"{path} {err['msg']}"
        code = ctx.get("code") or code
    else:
        msg = err["msg"]
        message = f"{path}: {msg[0].lower()}{msg[1:]}"
        if kind == "union_tag_invalid":
            code = "unknown_event_type"
        elif given is None:
            message += ", got null"
        elif isinstance(given, str):
            message += f", got {given[:40]!r}"
        elif isinstance(given, bool | int | float):
            message += f", got {str(given).lower() if isinstance(given, bool) else given}"
    if model is not None and getattr(model, "error_code", None):
        code = model.error_code  # type: ignore[attr-defined]
    return bad_request(message, code)


def _fields_at(model: type[BaseModel], names: list[str]) -> list[str]:
    """The field names of the (sub)model at ``names`` (best effort, for error messages)."""
    current: Any = model
    for part in names:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        info = current.model_fields.get(part)
        if info is None:
            return []
        ann = info.annotation
        args = [
            *getattr(ann, "__args__", ()),
            *getattr(getattr(ann, "__origin__", None), "__args__", ()),
        ]
        current = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def parse(model: type[BaseModel], data: Any, config: Mapping[str, Any] | None = None) -> Any:
    """``data`` validated by ``model`` (limits against ``config``); a 400 naming the field."""
    try:
        return model.model_validate(data, context={"config": config})
    except ValidationError as e:
        raise error_for(e, model, data) from None


# --- the per-route registration --------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """A documented query argument (parsed by :mod:`service.request`'s helpers)."""

    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One route's contract: what :func:`openapi` writes for it."""

    summary: str
    description: str = ""
    body: type[BaseModel] | Any = None
    body_required: bool = True
    #: status -> a response model (JSON), "html"/"text" (a page), or None (no body)
    ok: Mapping[int, Any] = field(default_factory=dict)
    #: status -> what the error means (the body is an ``Error``)
    errors: Mapping[int, str] = field(default_factory=dict)
    path: Mapping[str, str] = field(default_factory=dict)
    query: tuple[Query, ...] = ()
    security: list[dict[str, list[str]]] | None = None
    tags: tuple[str, ...] = ()


def api(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    ok: Mapping[int, Any] | None = None,
    errors: Mapping[int, str] | None = None,
    **more: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view's contract (the view itself is returned unchanged: nothing is added to
    its request path). A view with a ``body`` model reads its body with :func:`body`, which
    validates it with that model, when the view is ready to (after its credential checks)::

        @bp.post("/v1/posts")
        @api("Create a post.", body=NewPost, ok={201: PostCreated}, errors={507: "..."})
        def create_post():
            post: NewPost = body()
    """
    errs = dict(errors or {})
    if body is not None:
        errs.setdefault(400, "Invalid body: the message names the field and what was expected.")
    op = Operation(summary, body=body, body_required=body_required, ok=ok or {200: None},
                   errors=errs, **more)  # fmt: skip

    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        view.__contract__ = op  # type: ignore[attr-defined]
        return view

    return wrap


def body() -> Any:
    """The request's JSON body validated by the current route's ``@api(body=...)`` model (a
    400 naming the field otherwise); ``{}`` stands for an empty body when it is optional."""
    from flask import current_app

    op = contract_of(current_app.view_functions.get(request.endpoint or ""))
    if op is None or op.body is None:
        raise RuntimeError(f"{request.endpoint} declares no body model (@api(body=...))")
    if not op.body_required and not request.get_data(cache=True):
        data: Any = {}
    else:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise bad_request("the body must be a JSON object", "invalid_json")
    return parse(op.body, data, current_app.config)


def contract_of(view: Any) -> Operation | None:
    return getattr(view, "__contract__", None)


# --- the spec --------------------------------------------------------------------------------
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "FEED_ADMIN_TOKEN; admin routes are off without it",
    },
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "FEED_API_KEY, when the server has one (docs/security.md)",
    },
}
_RULE_ARG = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def openapi(
    operations: list[tuple[str, str, Operation]],
    config: Mapping[str, Any],
    info: dict[str, Any],
    extra_models: tuple[type[BaseModel], ...] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``(flask rule, method, operation)`` triples, every schema
    generated from the models (``#/components/schemas/<Model>``), setting limits filled in
    from ``config``."""
    models: dict[Any, None] = dict.fromkeys(extra_models)
    models[Error] = None
    for _, _, op in operations:
        for m in (op.body, *op.ok.values()):
            if isinstance(m, type) and issubclass(m, BaseModel):
                models[m] = None
    keyed: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        *((m, "validation") for m in models),
        *((m, "serialization") for m in models),
    ]
    refs, defs = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
    schemas = _fill_limits(defs.get("$defs", {}), config)
    paths: dict[str, dict[str, Any]] = {}
    for rule, method, op in operations:
        path = _RULE_ARG.sub(r"{\1}", rule)
        paths.setdefault(path, {})[method.lower()] = _operation(rule, op, refs)
    return {
        "openapi": "3.1.0",
        "info": info,
        "paths": dict(sorted(paths.items())),
        "security": [{"apiKeyAuth": []}, {}],
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def _fill_limits(node: Any, config: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        out = {k: _fill_limits(v, config) for k, v in node.items() if k != "x-feed-limit"}
        if "default" in out and out["default"] is None and "type" in out:
            if "null" not in (out["type"] if isinstance(out["type"], list) else [out["type"]]):
                del out["default"]  # an optional field that is absent, not null, by default
        if "x-feed-limit" in node:
            keyword, setting = node["x-feed-limit"]
            if setting in config:
                out[keyword] = config[setting]
            note = f"At most FEED_{setting}."
            out["description"] = f"{out['description']} {note}" if "description" in out else note
        return out
    if isinstance(node, list):
        return [_fill_limits(v, config) for v in node]
    return node


def _operation(rule: str, op: Operation, refs: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.tags:
        out["tags"] = list(op.tags)
    params = [
        {"name": n, "in": "path", "required": True, "schema": ID_SCHEMA,
         "description": op.path.get(n, f"The {n.replace('_', ' ')}.")}
        for n in _RULE_ARG.findall(rule)
    ] + [
        {"name": q.name, "in": "query", "required": q.required, "schema": q.schema,
         "description": q.description}
        for q in op.query
    ]  # fmt: skip
    if params:
        out["parameters"] = params
    if op.security is not None:
        out["security"] = op.security
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    responses: dict[str, Any] = {}
    for status, model in op.ok.items():
        responses[str(status)] = _content(model, refs, status)
    for status, what in op.errors.items():
        responses[str(status)] = {
            "description": what,
            "content": {"application/json": {"schema": refs[(Error, "serialization")]}},
        }
    out["responses"] = dict(sorted(responses.items()))
    return out


def _content(model: Any, refs: Mapping[Any, Any], status: int) -> dict[str, Any]:
    what = {200: "OK", 201: "Created", 202: "Accepted", 207: "Multi-status"}.get(status, "OK")
    if model == "html":
        return {"description": what, "content": {"text/html": {"schema": {"type": "string"}}}}
    if model == "text":
        return {"description": what, "content": {"text/plain": {"schema": {"type": "string"}}}}
    if model is None:
        return {"description": what}
    schema = refs[(model, "serialization")]
    return {"description": what, "content": {"application/json": {"schema": schema}}}


# === the models ==============================================================================
class ErrorDetail(Out):
    code: str = Field(description="A short machine code, e.g. invalid_price, unknown_field.")
    message: str = Field(description="What is wrong, naming the field and the limit.")


class Error(Out):
    """Every error response."""

    error: ErrorDetail


# --- posts and pages -------------------------------------------------------------------------
class Product(Out):
    product_id: str
    title: str
    category: str
    brand: str | None = None
    price: float | None
    in_stock: bool


class Post(Out):
    post_id: str
    author_id: str
    text: str
    title: str | None = None
    created_at: str | None
    tags: list[str] = []
    products: list[Product]
    hidden: bool | None = Field(
        None, description="Present (true) for an admin viewing a hidden post."
    )


class FeedItem(Post):
    score: float
    reason: str = Field(
        description="collaborative, content, followed_author, friend (a tie not followed), "
        "trending, co_engagement, fresh, purchased_together, interest, similar_to:<post_id>"
    )


class FeedPage(Out):
    user_id: str
    model_version: str | None
    experiment: str | None
    arm: str | None
    request_id: str
    degraded: bool
    next_cursor: str | None
    items: list[FeedItem]


class Similar(Out):
    post_id: str
    model_version: str
    items: list[FeedItem]


_TEXT = "Text of the post."
Tag = Annotated[str, Limit("POST_TAG_MAX", "maxLength", "characters", "post_too_large")]


class NewPost(Model):
    """A post created since training (``POST /v1/posts``)."""

    post_id: Id
    author_id: Id
    text: Annotated[str, Limit("POST_TEXT_MAX", "maxLength", "characters", "post_too_large")] = ""
    title: Annotated[str, Limit("POST_TITLE_MAX", "maxLength", "characters", "post_too_large")] = ""
    tags: Annotated[list[Tag], Limit("POST_TAGS_MAX", "maxItems", "entries", "post_too_large")] = []
    product_ids: Annotated[
        list[Id], Limit("POST_PRODUCTS_MAX", "maxItems", "entries", "post_too_large")
    ] = Field([], description="Products of the live version or the catalogue.")
    created_at: Time | None = None


class PostCreated(Out):
    post_id: str


class PostPatch(Model):
    """What a ``PATCH /v1/posts/<post_id>`` changes: at least one field; ``hidden: true``
    takes the post out of every list."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    text: Annotated[str, Limit("POST_TEXT_MAX", "maxLength", "characters", "post_too_large")] = None  # type: ignore[assignment]
    title: Annotated[str, Limit("POST_TITLE_MAX", "maxLength", "characters", "post_too_large")] = (
        None  # type: ignore[assignment]
    )
    tags: Annotated[list[Tag], Limit("POST_TAGS_MAX", "maxItems", "entries", "post_too_large")] = (
        None  # type: ignore[assignment]
    )
    product_ids: Annotated[
        list[Id], Limit("POST_PRODUCTS_MAX", "maxItems", "entries", "post_too_large")
    ] = None  # type: ignore[assignment]
    hidden: bool = None  # type: ignore[assignment]


class PostPatched(Out):
    post_id: str
    hidden: bool
    changed: list[str]


class PostDeleted(Out):
    post_id: str
    deleted: bool


# --- the live catalogue ----------------------------------------------------------------------
TITLE_MAX, CATEGORY_MAX, PRICE_MAX = 200, 100, 1e12


class CatalogueProduct(Model):
    """A live-catalogue product (``PUT /v1/products/<id>``): every field optional on an
    update; a new product needs title and category."""

    title: str = Field(None, min_length=1, max_length=TITLE_MAX, pattern=r"\S")  # type: ignore[assignment]
    category: str = Field(None, min_length=1, max_length=CATEGORY_MAX, pattern=r"\S")  # type: ignore[assignment]
    price: float | None = Field(None, ge=0, le=PRICE_MAX)
    in_stock: bool = None  # type: ignore[assignment]
    merchant_id: Id = None  # type: ignore[assignment]


class BulkProduct(CatalogueProduct):
    product_id: Id


class ProductBatch(Model):
    """``POST /v1/products``: all stored or none."""

    products: Annotated[
        list[BulkProduct], Limit("PRODUCTS_PER_REQUEST", "maxItems", "entries", "too_many_products")
    ] = Field(min_length=1)


class ProductStored(Out):
    product_id: str
    created: bool


class ProductsStored(Out):
    stored: int
    created: list[str] = Field(description="Ids of the products new to the version and catalogue.")


# --- events ----------------------------------------------------------------------------------
class _Event(Model):
    """An event; fields it does not know are ignored (apps send their own, e.g. a position)."""

    model_config = ConfigDict(extra="ignore")
    user_id: Id
    ts: Time | None = None
    request_id: str | None = Field(
        None, max_length=64, description="The request_id of the page the event came from."
    )


class _PostEvent(_Event):
    post_id: Id


class _AuthorEvent(_Event):
    author_id: Id


class ImpressionEvent(_PostEvent):
    type: Literal["impression"]


class ClickEvent(_PostEvent):
    type: Literal["click"]


class LikeEvent(_PostEvent):
    type: Literal["like"]


class UnlikeEvent(_PostEvent):
    type: Literal["unlike"]


class HidePostEvent(_PostEvent):
    """Hide this post from this user (a strong negative)."""

    type: Literal["hide_post"]


class FavoriteEvent(_PostEvent):
    """收藏: a strong like."""

    type: Literal["favorite"]


class UnfavoriteEvent(_PostEvent):
    type: Literal["unfavorite"]


class FollowEvent(_AuthorEvent):
    type: Literal["follow"]


class UnfollowEvent(_AuthorEvent):
    type: Literal["unfollow"]


class SeeFewerAuthorEvent(_AuthorEvent):
    type: Literal["see_fewer_author"]


class PurchaseEvent(_Event):
    type: Literal["purchase"]
    product_id: Id
    post_id: Id | None = Field(None, description="The post the purchase came through.")


class AddToCartEvent(_Event):
    """A product added to the cart (from ``post_id`` when given)."""

    type: Literal["add_to_cart"]
    product_id: Id
    post_id: Id | None = None


Channel = Annotated[
    str,
    Field(max_length=32),
    AfterValidator(_valid_id),
    WithJsonSchema({**ID_SCHEMA, "maxLength": 32, "description": "e.g. chat, moments, qq"}),
]


class ShareEvent(_Event):
    """A post shared (to receiver_id, a user, when given)."""

    type: Literal["share"]
    post_id: Id
    receiver_id: Id | None = None
    channel: Channel | None = None


EVENT_MODELS: tuple[type[BaseModel], ...] = (
    ImpressionEvent, ClickEvent, LikeEvent, UnlikeEvent, PurchaseEvent, FollowEvent,
    UnfollowEvent, HidePostEvent, SeeFewerAuthorEvent, AddToCartEvent, FavoriteEvent,
    UnfavoriteEvent, ShareEvent,
)  # fmt: skip
Event = Annotated[
    ImpressionEvent
    | ClickEvent
    | LikeEvent
    | UnlikeEvent
    | PurchaseEvent
    | FollowEvent
    | UnfollowEvent
    | HidePostEvent
    | SeeFewerAuthorEvent
    | AddToCartEvent
    | FavoriteEvent
    | UnfavoriteEvent
    | ShareEvent,
    Field(discriminator="type"),
]


#: Event type -> its model.
EVENT_TYPES: dict[str, type[BaseModel]] = {
    m.model_fields["type"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in EVENT_MODELS
}


def parse_event(event: Any, index: int) -> BaseModel:
    """One event of a batch validated by its type's model; a 400 whose message names
    ``events[<index>].<field>`` (``unknown_event_type`` for a missing or unknown type). What
    :mod:`service.routes.events` can validate each event with, so a batch's per-event results
    come from these models too."""
    where = f"events[{index}]"
    if not isinstance(event, dict):
        raise bad_request(f"{where} must be an object", "invalid_event")
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        got = repr(kind[:30]) if isinstance(kind, str) else type(kind).__name__
        raise bad_request(
            f"{where}.type must be one of {', '.join(EVENT_TYPES)}; got {got}",
            "unknown_event_type",
        )
    model = EVENT_TYPES[kind]
    try:
        return model.model_validate(event)
    except ValidationError as e:
        raise error_for(e, model, event, where) from None


class EventBatch(Model):
    """``POST /v1/events``: ``{"events": [...]}`` (a bare list of events is accepted too)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {"type": "impression", "user_id": "u42", "post_id": "p7"},
                        {"type": "like", "user_id": "u42", "post_id": "p7"},
                        {"type": "add_to_cart", "user_id": "u42", "product_id": "sku-3"},
                        {"type": "share", "user_id": "u42", "post_id": "p7", "receiver_id": "u9"},
                    ]
                }
            ]
        }
    )

    events: Annotated[list[Event], Limit("MAX_EVENTS_PER_REQUEST", "maxItems", "entries")] = Field(
        min_length=1
    )


class EventResult(Out):
    index: int = Field(description="The event's place in the batch.")
    error: ErrorDetail


class EventResults(Out):
    """Per-event results: valid events are stored (all together), invalid ones named."""

    accepted: int
    rejected: int = 0
    results: list[EventResult] = Field([], description="One entry per rejected event.")
    request_id: str | None = None


class EventsRejected(EventResults):
    """400: every event rejected (nothing stored); ``error`` is the first one's."""

    error: ErrorDetail


# --- group-buys ------------------------------------------------------------------------------
class NewGroup(Model):
    """``POST /v1/groups``: start a group-buy (拼購)."""

    initiator_id: Id
    product_id: Id
    group_id: Id | None = Field(None, description="Given by the caller, or generated.")
    size: Annotated[int, Limit("GROUP_SIZE_MAX", "maximum")] = Field(
        2, ge=2, description="Members in all, the initiator included."
    )
    ttl_s: Annotated[float, Limit("GROUP_TTL_MAX_S", "maximum")] | None = Field(
        None, ge=1, description="Seconds to fill up (default FEED_GROUP_TTL_DEFAULT_S)."
    )
    price: float | None = Field(None, ge=0, le=PRICE_MAX, description="The group price.")


class JoinGroup(Model):
    user_id: Id


class CancelGroup(Model):
    user_id: Id = Field(description="The group's initiator: only they can cancel it.")


class Group(Out):
    group_id: str
    product_id: str
    initiator_id: str
    size: int
    members: list[str] = Field(description="In join order, the initiator first.")
    spots_left: int
    status: Literal["open", "succeeded", "failed", "cancelled"]
    created_at: str
    expires_at: str
    price: float | None


class Deal(Out):
    product_id: str
    score: float
    reason: str | None = None
    posts: list[Any] = Field([], description="Posts that show the product.")
    friends: list[Any] = Field([], description="Ties who bought it or joined its groups.")


class Deals(Out):
    """Products the user should launch a group-buy for, best first."""

    items: list[Deal]
    basis: Literal["user", "popular"]
    model_version: str


class JoinableGroup(Out):
    group_id: str
    product_id: str
    initiator_id: str
    members: list[str]
    size: int
    spots_left: int
    expires_at: str
    price: float | None
    score: float
    reason: str


class JoinableGroups(Out):
    """Friends' open group-buys the user may join, best first."""

    items: list[JoinableGroup]
    model_version: str


class Invitee(Out):
    user_id: str
    score: float
    reason: str


class Invitees(Out):
    """Whom a group's initiator should invite, best first."""

    items: list[Invitee]
    model_version: str | None


# --- gifts, viewer, health -------------------------------------------------------------------
class GiftProduct(Out):
    product_id: str
    score: float
    reason: str = Field(description="category:<c>, similar_to_liked or trending.")
    posts: list[Any] = Field([], description="Posts that show the product.")


class Gifts(Out):
    user_id: str
    for_: str = Field(alias="for")
    model_version: str
    basis: Literal["tastes", "trending"]
    request_id: str
    items: list[GiftProduct]


class ViewerExamples(Out):
    model_version: str
    users: list[str]


class Health(Out):
    status: str


class Ready(Out):
    status: str
    model_version: str | None = None
    redis: Literal["ok", "full"] | None = Field(
        None,
        description="full: Redis refuses writes (maxmemory): pages are served, events and new "
        "posts get 507",
    )
    message: str | None = None


class Document(RootModel[dict[str, Any]]):
    """A JSON object (the admin routes return the registry's and experiments' own records)."""


# --- admin -----------------------------------------------------------------------------------
class Arm(Model):
    name: str
    version: str | None = Field(None, description="Required for a new arm.")
    weight: float = Field(description="Percent; the arms sum to 100.")


class NewExperiment(Model):
    error_code: ClassVar[str | None] = "invalid_experiment"
    name: str
    salt: str | None = None
    arms: list[Arm] = Field(min_length=1)


class ExperimentArms(Model):
    error_code: ClassVar[str | None] = "invalid_experiment"
    arms: list[Arm] = Field(min_length=1)


class Promote(Model):
    error_code: ClassVar[str | None] = "invalid_experiment"
    metric: Literal["clicks_per_user", "likes_per_user", "purchase_conversion"] = "clicks_per_user"
    alpha: float = Field(0.05, gt=0, lt=1)
    arm: str | None = Field(None, description="Promote this arm whatever the report says.")
