"""The HTTP routes, one blueprint a module. No blueprint module imports another: what they
share is in :mod:`service.request` (arguments, admin token, version routing) and
:mod:`service.pages` (the page pipeline and cards)."""

from __future__ import annotations

from flask import Blueprint

from service.routes import (
    admin,
    events,
    feed,
    gifts,
    groups,
    health,
    merchants,
    openapi,
    posts,
    products,
    viewer,
)

#: Every blueprint, in registration order.
BLUEPRINTS: tuple[Blueprint, ...] = (
    feed.bp,
    health.bp,
    posts.bp,
    products.bp,
    events.bp,
    gifts.bp,
    groups.bp,
    openapi.bp,
    admin.bp,
    merchants.bp,
    viewer.bp,
)
