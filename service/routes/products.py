"""The live catalogue: ``PUT /v1/products/<product_id>`` and ``POST /v1/products`` (bulk).

A product's title, category, price, stock (``in_stock``) and merchant set here live in the
version-independent hash ``{feed}:catalogue`` (:data:`feed.contract.CATALOGUE_KEY`), which no
publish writes or clears. Each write bumps the catalogue counter and records its products at
the new generation (:func:`service.writes.catalogue_bump`); every process reads the counter
with the user's keys and then just the products changed since its own generation
(:meth:`service.store.Store.overlay`), so the next page of every version shows the change:
cards carry the catalogue's price and stock, posts whose every product is out of stock leave
the feeds (the rule of the version's stock set, which the catalogue overrides both ways), and
products new since training can be linked by ``POST /v1/posts``. At most
``FEED_API_PRODUCTS_MAX`` products (507 ``catalogue_full`` past it). Each stored product
appends a ``product_upsert`` event (its fields at top level) for ``feed events export``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, current_app, jsonify

from feed import contract as c
from service.errors import ApiError, bad_request
from service.request import check_id, require_writer, store
from service.schemas import (
    CatalogueProduct,
    ProductBatch,
    ProductsStored,
    ProductStored,
    api,
    body,
)
from service.writes import catalogue_bump, overlay_event

bp = Blueprint("products", __name__)

#: The fields a product takes (all optional on an update; a new product needs title and
#: category).
FIELDS = ("title", "category", "price", "in_stock", "merchant_id")


def product_fields(product: CatalogueProduct) -> dict[str, Any]:
    """The fields a body gives (checked by :class:`service.schemas.CatalogueProduct`)."""
    fields = product.model_dump(exclude_unset=True)
    fields.pop("product_id", None)
    return fields


def bulk_products(batch: ProductBatch) -> dict[str, dict[str, Any]]:
    """Product id -> fields of a ``POST /v1/products`` body (checked by
    :class:`service.schemas.ProductBatch`); no id twice."""
    out: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(batch.products):
        if item.product_id in out:
            raise bad_request(
                f"products[{i}].product_id {item.product_id!r} is given twice", "duplicate_product"
            )
        out[item.product_id] = product_fields(item)
    return out


def _event_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """A product record's fields as an event carries them (``in_stock`` "1"/"0", a missing
    price as "")."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name in record:
            value = record[name]
            if name == "in_stock":
                value = int(bool(value))
            out[name] = "" if value is None else value
    return out


def upsert(products: dict[str, dict[str, Any]], by: str, where: dict[str, str]) -> list[str]:
    """Store ``products`` (id -> fields) in the live catalogue, all or nothing, merged over
    what it holds; the ids of products new to both the live version and the catalogue. A new
    product without title and category is a 400 naming the field (``where``: id -> its place
    in the body); past ``FEED_API_PRODUCTS_MAX`` a 507."""
    s = store()
    live = s.live_version()
    table = s.table(live) if live else None
    ids = list(products)
    _, in_version = s.documents(table, [], ids)
    now = time.time()
    created: list[str] = []

    def prepare(read: Any) -> tuple[list[Any], list[Any]]:
        held = read("HMGET", c.CATALOGUE_KEY, *ids)
        old = {p: c.decode_json(raw) for p, raw in zip(ids, held, strict=True) if raw}
        fresh = [p for p in ids if p not in old]
        created[:] = [p for p in fresh if p not in in_version]
        for p in created:
            for name in ("title", "category"):
                if name not in products[p]:
                    raise bad_request(
                        f"{where[p]}{name} is required: product {p!r} is new (not in the live "
                        "version nor the catalogue)",
                        f"missing_{name}",
                    )
        most = current_app.config["API_PRODUCTS_MAX"]
        if fresh and int(read("HLEN", c.CATALOGUE_KEY)) + len(fresh) > most:
            raise ApiError(
                507,
                "catalogue_full",
                f"the live catalogue holds at most {most} products (FEED_API_PRODUCTS_MAX); "
                f"{len(fresh)} new ones do not fit: nothing was stored",
            )
        own: list[Any] = []
        for p in ids:
            record = {"product_id": p, **(old.get(p) or {}), **products[p]}
            own.append(("HSET", c.CATALOGUE_KEY, p, c.encode_json(record)))
            fields = {"product_id": p, **_event_fields(record), "ts": now, "by": by}
            fields["changed"] = "|".join(products[p])
            own.append(overlay_event("product_upsert", fields, current_app.config))
        own.append(catalogue_bump(ids))  # every process reads just these products again
        return [], own

    s.overlay_write(prepare)
    return created


_WRITER_ERRORS = {
    401: "No valid credential.",
    403: "No admin token or API key configured.",
    507: "FEED_API_PRODUCTS_MAX products (catalogue_full): nothing stored.",
}


@bp.put("/v1/products/<product_id>")
@api(
    "Create or update a product of the live catalogue (price, stock...): the next page shows "
    "it; logs a product_upsert event.",
    body=CatalogueProduct,
    ok={200: ProductStored, 201: ProductStored},
    errors={400: "Invalid field, or a new product without title/category.", **_WRITER_ERRORS},
    security=[{"bearerAuth": []}, {"apiKeyAuth": []}],
    tags=("products",),
)
def put_product(product_id: str) -> Any:
    """Create or update one product of the live catalogue: 201 when it is new (title and
    category required), 200 otherwise; the next page of every version shows it."""
    by = require_writer("changing the catalogue", admin_only=False)
    check_id(product_id, "product_id")
    fields = product_fields(body())
    created = upsert({product_id: fields}, by, {product_id: ""})
    return jsonify({"product_id": product_id, "created": bool(created)}), 201 if created else 200


@bp.post("/v1/products")
@api(
    "Create or update up to FEED_PRODUCTS_PER_REQUEST products, all or nothing.",
    body=ProductBatch,
    ok={200: ProductsStored},
    errors={400: "Invalid body; the message names the entry and field.", **_WRITER_ERRORS},
    security=[{"bearerAuth": []}, {"apiKeyAuth": []}],
    tags=("products",),
)
def post_products() -> Any:
    """Create or update up to ``FEED_PRODUCTS_PER_REQUEST`` products at once, all or
    nothing: ``{"products": [{"product_id": ..., "title": ...}, ...]}``."""
    by = require_writer("changing the catalogue", admin_only=False)
    products = bulk_products(body())
    where = {p: f"products[{i}]." for i, p in enumerate(products)}
    created = upsert(products, by, where)
    return jsonify({"stored": len(products), "created": created})
