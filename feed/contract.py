"""The contract between the offline half (``feed``) and the online half (``service``).

Every Redis key template and every payload encoding lives here, and nothing heavier than numpy
is imported, so the web process stays small. Rules:

* keys of one user share the hash tag ``{u:<user_id>}``, so one user's reads go to one
  Redis Cluster slot and fit in one pipeline;
* keys of one model version share the hash tag ``{feed:<version>}``; they are written once by
  ``feed publish`` and never overwritten in place (a version is deleted, not edited);
* a version's documents and cards carry the version but no hash tag (``vdoc:<version>:...``),
  so they spread over a cluster; a user's training-time seed is per version in the user's slot;
  publish writes nothing that another version reads;
* global keys (the live pointer, the version registry, the event log) share ``{feed}``;
* posts created through the API (``POST /v1/posts``) have version-independent documents and
  cards (``doc:p:<post>``, ``doc:c:<post>``) that no publish writes; a page uses them for posts
  its version's post table does not list.

Examples
--------
>>> user_key("u42", "cand", "v1")
'{u:u42}:cand:v1'
>>> blob = encode_candidates([3, 1], [1.0, 0.5], [0, 2])
>>> [x.tolist() for x in decode_candidates(blob)]
[[3, 1], [1.0, 0.5019607843137255], [0, 2]]
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

#: Bumped when a key's encoding or layout changes: the service serves, and ``feed publish``
#: skips, only versions published under this contract (2: five-byte candidates, item cards;
#: 3: documents, cards, seeds and the stock set per version).
CONTRACT_VERSION = 3

# --- global keys ----------------------------------------------------------------------------
LIVE_KEY = "{feed}:live"  # string: the live model version id
VERSIONS_KEY = "{feed}:versions"  # hash: version id -> JSON meta (state, counts, timestamps)
EVENTS_KEY = "{feed}:events"  # stream: the durable, capped event log
#: counter: entries ever appended to the event log (``INCRBY`` in the transaction of their
#: ``XADD``s), so the unexported backlog is a subtraction (``feed_events_unexported``).
EVENTS_SEQ_KEY = "{feed}:events_seq"
#: hash: the export checkpoint, ``id`` (the last stream id exported), ``seq`` (the log's
#: counter at that entry), ``at``, ``out``. The log's trim never drops an entry after ``id``
#: below the hard cap (``service.writes.trim_log``); ``feed events export`` advances it.
EVENTS_EXPORTED_KEY = "{feed}:events_exported"
#: counter: unexported entries the hard cap (``FEED_EVENT_LOG_HARD_MAX``) dropped, ever.
EVENTS_LOST_KEY = "{feed}:events_lost"
FRESH_KEY = "{feed}:fresh"  # zset: post id -> created_at, posts created through the API
FRESH_META_KEY = "{feed}:fresh_meta"  # hash: post id -> JSON {author_id, product_ids, category}
EXPERIMENTS_KEY = "{feed}:experiments"  # hash: experiment name -> JSON config
EXPOSURES_KEY = "{feed}:exposures"  # stream: one entry per served page in an experiment
HISTORY_KEY = "{feed}:live_history"  # list: previously live versions, newest first
PUBLISH_LOCK_KEY = "{feed}:publish_lock"  # string with a TTL: the running publish's token
# Moderation and the live catalogue: version-independent, never written or cleared by a
# publish (service/routes/posts.py, service/routes/products.py; docs/architecture.md).
MODERATION_KEY = "{feed}:moderation"  # hash: post id -> JSON {hidden, deleted, edited, ts, by}
CATALOGUE_KEY = "{feed}:catalogue"  # hash: product id -> JSON product record set through the API
#: counters, one per hash, bumped in the transaction of every write of it and read (one
#: ``MGET``) with a user's keys on every page, so each process re-reads only what moved
MODERATION_GEN_KEY = "{feed}:moderation_gen"
CATALOGUE_GEN_KEY = "{feed}:catalogue_gen"
#: zset: product id -> the catalogue generation of its last change (at most one member per
#: catalogue product), so a process reads only the products changed since its generation
CATALOGUE_CHANGES_KEY = "{feed}:catalogue_changes"
#: cursor of the moderation pruner's ``HSCAN`` (``service/routes/posts.py``)
MODERATION_SCAN_KEY = "{feed}:moderation_scan"
# Merchants (service/merchants.py, feed/merchants.py; docs/merchants.md).
MERCHANTS_KEY = "{feed}:merchants"  # hash: merchant id -> JSON {token_sha256, created, ...}
MERCHANT_TOKENS_KEY = "{feed}:merchant_tokens"  # hash: sha256 of a token -> merchant id
#: prefix of the attribution aggregates and state (``feed.merchants``): per merchant and day
#: ``<prefix>d:<merchant>:<day>``, state ``<prefix><kind>:<day>``, all in the ``{feed}`` slot
MERCHANT_AGG_PREFIX = "{feed}:magg:"
MERCHANT_AGG_CHECKPOINT_KEY = "{feed}:magg:cp"  # hash: id (last stream id folded), at
MERCHANT_AGG_LOCK_KEY = "{feed}:magg_lock"  # string (TTL): the running fold's lock
# Audiences and sponsored campaigns (service/campaigns.py), all in the ``{feed}`` slot (the
# reservation script and the report's fold touch several of them at once).
CAMPAIGNS_KEY = "{feed}:campaigns"  # hash: campaign id -> JSON config (merchant, posts, flight..)
#: counter: +1 with every campaign created or stopped; read with a user's keys on every page, so
#: each process reloads its running-campaign list only when it moves
CAMPAIGNS_GEN_KEY = "{feed}:campaigns_gen"
#: zset campaign id -> end: the scheduled and running campaigns (a stop removes one), what a
#: worker loads; capped overall (``CAMPAIGNS_LIVE_MAX``)
CAMPAIGNS_LIVE_KEY = "{feed}:campaigns_live"
#: zset campaign id -> ms its purchases are folded until (its end, or its stop): the merchant
#: fold (``feed.merchants``) counts their purchases; it drops those its checkpoint passed
CAMPAIGNS_FOLD_KEY = "{feed}:campaigns_fold"
#: zset campaign id -> unix time its config and counters are dropped (end or stop + retention)
CAMPAIGNS_EXPIRY_KEY = "{feed}:campaigns_exp"


def merchant_campaigns_key(merchant_id: str) -> str:
    """A merchant's kept campaigns (zset campaign id -> created_at), capped."""
    return f"{{feed}}:cmps:{merchant_id}"


def audience_key(audience_id: str, kind: str) -> str:
    """An audience's ``meta`` (JSON string) and ``users`` (zset user -> score); with a TTL."""
    return f"{{feed}}:aud:{audience_id}:{kind}"


def audiences_key(merchant_id: str) -> str:
    """A merchant's audiences (zset audience id -> created_at), capped."""
    return f"{{feed}}:auds:{merchant_id}"


def campaign_key(campaign_id: str, kind: str) -> str:
    """A campaign's counters: ``n`` (impressions delivered), ``u`` (hash user -> impressions),
    ``stop`` (flag), ``reach`` (users whose pages it could have entered, both groups: the
    report's population of an ``all`` campaign), ``buy`` (hash user -> purchases of its products
    in the flight, written by the merchant fold). A targeted campaign reads its audience's
    ``users`` key (:func:`audience_key`, same ``{feed}`` slot), kept alive as long as it."""
    return f"{{feed}}:cmp:{campaign_id}:{kind}"


# Version states in the registry. Only "ready" versions can go live.
STATE_PUBLISHING = "publishing"
STATE_READY = "ready"
STATE_DELETING = "deleting"  # `feed versions delete` is removing its keys

# Why an item is in the feed. The code is stored per candidate (3 bits: at most 8 reasons);
# the name is what clients see.
REASONS: tuple[str, ...] = (
    "collaborative",
    "content",
    "followed_author",
    "trending",
    "co_engagement",
    "fresh",
    "purchased_together",
    "similar_to",
)
REASON_CODE = {name: i for i, name in enumerate(REASONS)}

#: The ASCII punctuation an id may hold. Left out on purpose: "/" (a path separator even when
#: percent-encoded), "|" (the dataset format's list separator, and :func:`rt_member`'s), "{}"
#: (Redis Cluster hash tags), "*?[]" (Redis glob patterns), "=" (experiment arm specs), and the
#: rest ('%"\\<>^`), which no id needs.
ID_PUNCTUATION = "_-.:@'&+(),!#$;~"
#: The characters of an id, as a regular-expression class: ASCII letters, digits and
#: :data:`ID_PUNCTUATION`, and from U+00C0 on every visible character, which leaves out
#: Unicode's control, format (zero-width characters, bidi controls such as the right-to-left
#: override U+202E), surrogate, private-use and separator characters (categories Cc, Cf, Cs,
#: Co, Zs, Zl, Zp), the noncharacters and U+FFF0-U+FFFF (U+FFFD stands for bytes that were not
#: UTF-8). tests/test_hostile.py checks the ranges against ``unicodedata``.
ID_CHARS = (
    "A-Za-z0-9"
    + ID_PUNCTUATION.replace("-", r"\-")  # the only one of them special in a class
    + r"\u00c0-\u05ff\u0606-\u061b\u061d-\u06dc\u06de-\u070e\u0710-\u088f\u0892-\u08e1"
    r"\u08e3-\u167f\u1681-\u180d\u180f-\u1fff\u2010-\u2027\u2030-\u205e\u2070-\u2fff"
    r"\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufefe\uff00-\uffef"
)
#: A whole id (regular expression, no anchors): 1-128 characters of :data:`ID_CHARS` and ASCII
#: spaces, neither first nor last ("female vocalists", "John Smith").
ID_PATTERN = rf"[{ID_CHARS}](?:[{ID_CHARS} ]{{0,126}}[{ID_CHARS}])?"
#: :data:`ID_PATTERN` in words, for error messages and the API's schema.
ID_RULE = (
    f"1-128 letters, digits, inner spaces, any of {ID_PUNCTUATION} or other visible characters; "
    "no '/', '|', leading or trailing spaces, zero-width or bidi-control characters, no '..'"
)
_ID_RE = re.compile(ID_PATTERN)
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def valid_id(value: object) -> bool:
    r"""True when ``value`` is a string usable as a user, post, product or author id.

    :data:`ID_PATTERN` (1-128 characters of :data:`ID_CHARS`, inner spaces), and never a path
    segment that URL normalisation rewrites (``.``, anything with ``..``).

    >>> valid_id("u42"), valid_id("用户_7"), valid_id("female vocalists"), valid_id("r&b")
    (True, True, True, True)
    >>> valid_id(" u1"), valid_id("u1 "), valid_id("a/b"), valid_id("x" * 200), valid_id(7)
    (False, False, False, False, False)
    >>> valid_id("u\u200b1"), valid_id("u\u202e1"), valid_id("../u1"), valid_id("u1\n")
    (False, False, False, False)
    """
    return (
        isinstance(value, str)
        and _ID_RE.fullmatch(value) is not None
        and ".." not in value
        and value != "."
    )


def valid_version(value: object) -> bool:
    """True when ``value`` is a well-formed version id."""
    return isinstance(value, str) and _VERSION_RE.fullmatch(value) is not None


# --- key templates ---------------------------------------------------------------------------
def user_key(user_id: str, kind: str, version: str | None = None) -> str:
    """Key of one user's state: ``cand`` (per version), ``seen``, ``likes``, ``hidden``, ..."""
    key = f"{{u:{user_id}}}:{kind}"
    return f"{key}:{version}" if version else key


def version_key(version: str, kind: str) -> str:
    """Key of one version's shared data: ``manifest``, ``posts``, ``trending``, ``nb:<post>``."""
    return f"{{feed:{version}}}:{kind}"


def neighbours_key(version: str, post_id: str) -> str:
    """Key of a post's precomputed neighbours in one version."""
    return version_key(version, f"nb:{post_id}")


def stock_key(version: str) -> str:
    """Key of a version's out-of-stock set (product ids)."""
    return version_key(version, "oos")


#: Users a product's audience index keeps (the best by score), per product and version.
AUDIENCE_INDEX_MAX = 10_000
#: Products whose audience index lists one user enters (its best by score), per version.
AUDIENCE_INDEX_PER_USER = 100


def audience_index_key(version: str, product_id: str | None = None) -> str:
    """Key of a version's audience index (``feed publish``; ``service.campaigns``): a product's
    best users (:func:`encode_audience_index`), or with ``product_id`` None the user table the
    entries point into (JSON list of user ids). In the version's slot, so one ``MGET`` reads
    any of them on a cluster, and ``feed versions delete`` removes them with the version.

    >>> audience_index_key("v1", "sku-1"), audience_index_key("v1")
    ('{feed:v1}:aud:p:sku-1', '{feed:v1}:aud:users')
    """
    return version_key(version, "aud:users" if product_id is None else f"aud:p:{product_id}")


#: The high bit of a user index in an audience index blob: the user bought the product in the
#: training data, and its score holds the +1 for it (a target of several such products adds
#: that 1 once, as the scan did).
AUDIENCE_BOUGHT_BIT = 1 << 31


def encode_audience_index(
    reach: int, users: np.ndarray, scores: np.ndarray, bought: np.ndarray | None = None
) -> bytes:
    """A product's audience index: ``reach`` (users with a positive score, before the cut),
    then the kept users' indices (uint32, into the version's user table; the high bit,
    :data:`AUDIENCE_BOUGHT_BIT`, set for a user who bought the product, whose score includes
    the +1 for it) and scores (float32), best first: 8 bytes a user. Blobs written before the
    bit existed decode as "nobody bought", their scores as they were.

    >>> blob = encode_audience_index(7, np.array([4, 2]), [1.5, 0.25], np.array([True, False]))
    >>> r, u, s, b = decode_audience_index(blob)
    >>> r, u.tolist(), s.tolist(), b.tolist()
    (7, [4, 2], [1.5, 0.25], [True, False])
    """
    u = np.asarray(users, dtype=np.int64)
    s = np.asarray(scores, dtype="<f4")
    if u.shape != s.shape or u.ndim != 1:
        raise ValueError("users and scores must be 1-D arrays of the same length")
    if len(u) and (u.min() < 0 or u.max() >= AUDIENCE_BOUGHT_BIT):
        raise ValueError(f"user indices must lie in [0, {AUDIENCE_BOUGHT_BIT})")
    if bought is not None:
        u = np.where(np.asarray(bought, dtype=bool), u | AUDIENCE_BOUGHT_BIT, u)
    head = np.array([reach, len(u)], dtype="<u4").tobytes()
    return head + u.astype("<u4").tobytes() + s.tobytes()


def decode_audience_index(
    blob: bytes | None,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_audience_index`: (reach, user indices, scores, bought); empty
    when absent."""
    if not blob:
        empty = np.zeros(0, dtype=np.int64)
        return 0, empty, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool)
    reach, n = (int(x) for x in np.frombuffer(blob, dtype="<u4", count=2))
    if len(blob) != 8 + 8 * n:
        raise ValueError(f"audience index of {len(blob)} bytes does not hold {n} users")
    raw = np.frombuffer(blob, dtype="<u4", count=n, offset=8).astype(np.int64)
    scores = np.frombuffer(blob, dtype="<f4", count=n, offset=8 + 4 * n)
    return reach, raw & (AUDIENCE_BOUGHT_BIT - 1), scores, raw >= AUDIENCE_BOUGHT_BIT


def doc_key(version: str | None, kind: str, item_id: str) -> str:
    """Key of a document: ``kind`` ``p`` (post), ``pr`` (product) or ``c`` (card) of a version,
    or, with ``version`` None, of a post created through the API. No hash tag: documents
    spread over a cluster; a version id has no ``:``, so the two forms never meet.

    >>> doc_key("v1", "c", "p7"), doc_key(None, "c", "p7")
    ('vdoc:v1:c:p7', 'doc:c:p7')
    """
    return f"doc:{kind}:{item_id}" if version is None else f"vdoc:{version}:{kind}:{item_id}"


def override_keys(post_id: str) -> tuple[str, str]:
    """Keys of a trained post's edited document and card (``PATCH /v1/posts``): version
    independent, so every version serves the edit and no publish undoes it.

    >>> override_keys("p7")
    ('doc:ep:p7', 'doc:ec:p7')
    """
    return doc_key(None, "ep", post_id), doc_key(None, "ec", post_id)


def version_doc_pattern(version: str) -> str:
    """SCAN pattern of every document and card of ``version``."""
    return f"vdoc:{version}:*"


def tombstone_key(post_id: str) -> str:
    """Key (string with a TTL, ``{feed}`` slot) that keeps a deleted post's id from being
    reused by ``POST /v1/posts`` once its moderation entry is pruned.

    >>> tombstone_key("p7")
    '{feed}:tomb:p7'
    """
    return "{feed}:tomb:" + post_id


def post_doc_key(post_id: str, version: str | None = None) -> str:
    """Key of a post document (JSON) of ``version``, or of an API-created post (None)."""
    return doc_key(version, "p", post_id)


def product_doc_key(product_id: str, version: str) -> str:
    """Key of a product document (JSON) of ``version``."""
    return doc_key(version, "pr", product_id)


def card_key(post_id: str, version: str | None = None) -> str:
    """Key of a post's card of ``version`` (or of an API-created post, None): the feed item as
    served, without score and reason (JSON)."""
    return doc_key(version, "c", post_id)


def iso_time(ts: float | None) -> str | None:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ`` (None for None or NaN), as documents carry it.

    >>> iso_time(0.0), iso_time(float("nan"))
    ('1970-01-01T00:00:00Z', None)
    """
    if ts is None or ts != ts:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def post_document(
    post_id: str,
    author_id: str,
    created_at: float | None,
    text: str,
    title: str,
    tags: Sequence[str],
    product_ids: Sequence[str],
) -> dict[str, Any]:
    """A post's document (the JSON stored at :func:`post_doc_key`), from training data or from
    ``POST /v1/posts`` alike.

    >>> post_document("p1", "u1", 0.0, "hi", "", ("a",), ["x"])["created_at"]
    '1970-01-01T00:00:00Z'
    """
    return {
        "post_id": post_id,
        "author_id": author_id,
        "created_at": iso_time(created_at),
        "text": text,
        "title": title,
        "tags": list(tags),
        "product_ids": list(product_ids),
    }


def card(post: Mapping[str, Any], products: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A post's card: its document with its linked products' documents in place of their ids
    (products without a document are left out; ``in_stock`` is decided at request time).

    >>> card({"post_id": "p1", "product_ids": ["x", "y"]}, {"x": {"product_id": "x"}})
    {'post_id': 'p1', 'products': [{'product_id': 'x', 'in_stock': True}]}
    """
    out = {k: v for k, v in post.items() if k != "product_ids"}
    out["products"] = [
        {**products[p], "in_stock": True} for p in post.get("product_ids", []) if p in products
    ]
    return out


# User keys that events write (the real-time state). Named once so readers and writers agree.
USER_SEEN = "seen"  # zset post -> last served/seen ts
USER_LIKES = "likes"  # zset post -> ts of likes since training (unlike removes)
USER_RT = "rt"  # zset rt_member(post, reason) -> rt_score(ts, strength): real-time candidates
USER_RT_REASON = "rtwhy"  # unused since reasons ride in USER_RT members (kept: name reserved)
USER_HIDDEN = "hidden"  # set of hidden post ids
USER_MUTED = "muted"  # set of author ids the user blocked or asked to see fewer of
USER_FOLLOWS = "follows"  # set of authors followed through events (see USER_SEED)
USER_UNFOLLOWS = "unfollows"  # set of authors unfollowed since training
USER_PURCHASES = "bought"  # set of products bought through events (see USER_SEED)
USER_SEED = "seed"  # string per version: JSON {"follows": [...], "bought": [...]} at training
USER_GROUPS = "groups"  # zset (TTL): group id -> expires_at, groups the user started or joined
USER_GROUPS_OPEN = "gopen"  # zset (TTL): group id -> expires_at, the user's own open groups
USER_DEALS = "deals"  # string per version: encode_deals, the products to launch a group for
USER_TIES = "ties"  # string per version: encode_ties, the user's strongest social ties
USER_GROUP_FEED = "gfeed"  # zset (capped, TTL): group id -> expires_at, ties' open groups
GROUP_POPULAR = "gpop"  # version key: encode_deals of the popular deals (cold users)
GROUP_PAIR = "gpair"  # version key: JSON {"invite": {...}, "join": {...}} pair-model weights

# Group-buys (拼購, service/groups.py): one group's keys share the hash tag {grp:<group_id>}, so
# the join script reads and writes them on one cluster slot.
GROUP_STATE = "state"  # hash: group_id, product_id, initiator_id, size, created_at, expires_at,
#                        status (open | succeeded), price
GROUP_MEMBERS = "members"  # zset: user id -> join time (unix s), the initiator first


def group_key(group_id: str, kind: str) -> str:
    """Key of one group's state or members.

    >>> group_key("g1", GROUP_MEMBERS)
    '{grp:g1}:members'
    """
    return f"{{grp:{group_id}}}:{kind}"


def decode_seed(raw: bytes | str | None) -> tuple[set[str], set[str]]:
    """(followed authors, bought products) of a user's seed key (empty sets when absent).

    Publish writes one compact string per user instead of two sets: a small Redis set costs
    several hundred bytes, a short JSON string a few dozen. Events add to the real-time sets
    (``follows``, ``bought``); readers take the union.

    >>> decode_seed(b'{"follows":["u7"],"bought":["sku-1"]}')
    ({'u7'}, {'sku-1'})
    """
    d = decode_json(raw) or {}
    return set(d.get("follows", [])), set(d.get("bought", []))


def encode_deals(
    products: Sequence[str],
    scores: Sequence[float],
    reasons: Sequence[str],
    friends: Sequence[Sequence[str]] | None = None,
) -> bytes:
    """A user's deals (products to launch a group-buy for), best first, as compact JSON.

    >>> decode_deals(encode_deals(["sku-1"], [0.5], ["friends_bought"], [["u2"]]))
    [{'product_id': 'sku-1', 'score': 0.5, 'reason': 'friends_bought', 'friends': ['u2']}]
    """
    f = [list(x) for x in friends] if friends is not None else [[] for _ in products]
    return encode_json(
        {"p": list(products), "s": [round(float(x), 5) for x in scores], "r": list(reasons),
         "f": f}
    )  # fmt: skip


def decode_deals(raw: bytes | str | None) -> list[dict[str, Any]]:
    """Inverse of :func:`encode_deals` (empty when absent)."""
    d = decode_json(raw)
    if not d:
        return []
    return [
        {"product_id": p, "score": s, "reason": r, "friends": f}
        for p, s, r, f in zip(d["p"], d["s"], d["r"], d["f"], strict=True)
    ]


def encode_ties(users: Sequence[str], weights: Sequence[float]) -> bytes:
    """A user's strongest social ties, strongest first, as compact JSON.

    >>> decode_ties(encode_ties(["u2", "u3"], [0.8, 0.5]))
    {'u2': 0.8, 'u3': 0.5}
    """
    return encode_json({"u": list(users), "w": [round(float(x), 4) for x in weights]})


def decode_ties(raw: bytes | str | None) -> dict[str, float]:
    """Inverse of :func:`encode_ties`: tie -> weight, strongest first (empty when absent)."""
    d = decode_json(raw)
    return dict(zip(d["u"], d["w"], strict=True)) if d else {}


USER_PAGE = "page"  # string per cursor: the page a cursor led to (short TTL; retries replay it)


def rt_member(post_id: str, reason: str) -> str:
    """A real-time candidate's zset member: the post and why it is there, so trimming the zset
    by rank drops both at once and an undo (unlike, unfollow) removes exactly its own entries.

    >>> rt_member("p7", "similar_to:p3"), parse_rt_member(b"p7|similar_to:p3")
    ('p7|similar_to:p3', ('p7', 'similar_to:p3'))
    """
    return f"{post_id}|{reason}"  # "|" never occurs in an id (see valid_id)


def parse_rt_member(member: bytes | str) -> tuple[str, str]:
    """Inverse of :func:`rt_member`: (post id, reason)."""
    text = member.decode() if isinstance(member, bytes) else member
    post, _, reason = text.partition("|")
    return post, reason or "similar_to"


def rt_score(ts: float, strength: float) -> float:
    """A real-time candidate's zset score: newest first (the whole seconds of ``ts``), then by
    ``strength`` in [0, 1] (the fraction), so trimming to the top ``RT_MAX`` keeps the latest.

    >>> s = rt_score(1_800_000_000.7, 0.25)
    >>> s > rt_score(1_799_999_999.0, 1.0), round(rt_strength(s), 3)
    (True, 0.25)
    """
    return float(int(ts)) + min(max(strength, 0.0), 1.0) * 0.999


def rt_strength(score: float) -> float:
    """Inverse of :func:`rt_score`: the strength in [0, 1]."""
    return min((score - int(score)) / 0.999, 1.0)


def page_key(user_id: str, cursor: str) -> str:
    """Key of the page a cursor led to, so a retried cursor returns the same page.

    >>> page_key("u42", "abc.def")
    '{u:u42}:page:ebb3127bf5c7c4b4'
    """
    digest = hashlib.sha256(cursor.encode()).hexdigest()[:16]
    return user_key(user_id, f"{USER_PAGE}:{digest}")


def text(raw: bytes | str) -> str:
    """A Redis reply (bytes) or a str as str.

    >>> text(b"p1"), text("p1")
    ('p1', 'p1')
    """
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# --- payloads --------------------------------------------------------------------------------
#: Reason codes live in the top bits of a candidate's post index (see :func:`encode_candidates`).
_REASON_SHIFT = 29
_INDEX_MASK = (1 << _REASON_SHIFT) - 1


def unit_scores(scores: np.ndarray) -> np.ndarray:
    """Scores scaled to [0.05, 1] per row (padding -inf becomes 0), as candidate blobs carry
    them (the service mixes sources on this scale).

    >>> unit_scores(np.array([[3.0, 1.0, -np.inf]])).tolist()
    [[1.0, 0.05000000074505806, 0.0]]
    """
    s = np.where(np.isfinite(scores), scores, np.nan).astype(np.float32)
    hi = np.nanmax(np.where(np.isnan(s), -np.inf, s), axis=-1, keepdims=True)
    lo = np.nanmin(np.where(np.isnan(s), np.inf, s), axis=-1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = np.where(np.isnan(s), 0.0, 0.05 + 0.95 * (s - np.minimum(lo, hi)) / span)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def encode_candidates(
    items: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    reasons: Sequence[int] | np.ndarray,
) -> bytes:
    """Pack a ranked candidate list in five bytes a candidate: a uint32 holding the post index
    (29 bits: up to 536M posts a version) and the reason code (3 bits: the 8 :data:`REASONS`),
    then a uint8 score in [0, 1]. Negative post indices are padding and left out.

    >>> len(encode_candidates([7, 2**29 - 1, -1], [1.0, 0.0, 0.0], [7, 0, 0]))
    10
    """
    return next(encode_candidate_rows(*(np.asarray(a)[None, :] for a in (items, scores, reasons))))


def encode_candidate_rows(
    items: Sequence[Sequence[int]] | np.ndarray,
    scores: Sequence[Sequence[float]] | np.ndarray,
    reasons: Sequence[Sequence[int]] | np.ndarray,
) -> Iterator[bytes]:
    """:func:`encode_candidates` of each row of 2-D arrays (one vectorized pass, for publish)."""
    idx = np.asarray(items, dtype=np.int64)
    rs = np.asarray(reasons, dtype=np.int64)
    sc = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    if not (idx.shape == sc.shape == rs.shape) or idx.ndim != 2:
        raise ValueError("items, scores and reasons must be 2-D arrays of the same shape")
    ok = idx >= 0
    if ok.any() and (idx.max() > _INDEX_MASK or rs[ok].min() < 0 or rs[ok].max() > 7):
        raise ValueError(f"post indices must be at most {_INDEX_MASK} and reason codes in [0, 7]")
    packed = (np.where(ok, idx, 0) | (np.where(ok, rs, 0) << _REASON_SHIFT)).astype("<u4")
    quantized = np.rint(sc * 255).astype(np.uint8)
    for row_ok, row_packed, row_q in zip(ok, packed, quantized, strict=True):
        if row_ok.all():
            yield row_packed.tobytes() + row_q.tobytes()
        else:
            yield row_packed[row_ok].tobytes() + row_q[row_ok].tobytes()


def decode_candidates(blob: bytes | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unpack :func:`encode_candidates`: (post indices, scores in [0, 1], reason codes)."""
    if not blob:
        empty = np.zeros(0)
        return empty.astype(np.int64), empty, empty.astype(np.uint8)
    if len(blob) % 5:
        raise ValueError(f"candidate blob of {len(blob)} bytes is not a multiple of 5")
    n = len(blob) // 5
    packed = np.frombuffer(blob, dtype="<u4", count=n).astype(np.int64)
    sc = np.frombuffer(blob, dtype=np.uint8, count=n, offset=4 * n) / 255.0
    return packed & _INDEX_MASK, sc, (packed >> _REASON_SHIFT).astype(np.uint8)


_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON (documents, manifests, registry entries), keys in insertion order.

    >>> encode_json({"title": "swatch", "n": 2, 3: [1.5, None]})
    b'{"title":"swatch","n":2,"3":[1.5,null]}'
    """
    return orjson.dumps(obj, option=_JSON_OPTIONS)


def decode_json(raw: bytes | str | None) -> Any:
    """Inverse of :func:`encode_json`; ``None`` stays ``None``."""
    if raw is None:
        return None
    return orjson.loads(raw)


def encode_post_table(
    post_ids: Sequence[str],
    author_ids: Sequence[str],
    created_at: Sequence[float],
    categories: Sequence[str],
    product_ids: Sequence[Sequence[str]],
    product_categories: Mapping[str, str] | None = None,
    page_policy: Mapping[str, Any] | None = None,
) -> bytes:
    """The version's post table: what the service needs to filter and rescore in process.

    ``product_categories`` (product id -> category, optional) lets the service diversify over
    the categories of every linked product, not only the first one; ``page_policy`` is the
    version's page policy (``feed.serving.policy.PagePolicy`` as JSON) chosen at training.
    """
    table: dict[str, Any] = {
        "post_id": list(post_ids),
        "author_id": list(author_ids),
        "created_at": [None if c != c else float(c) for c in created_at],
        "category": list(categories),
        "product_ids": [list(p) for p in product_ids],
    }
    if product_categories:
        table["product_category"] = {k: v for k, v in product_categories.items() if v}
    if page_policy:
        table["page_policy"] = dict(page_policy)
    return encode_json(table)


def encode_token_index(
    tokens: Sequence[str], indptr: Sequence[int] | np.ndarray, items: Sequence[int] | np.ndarray
) -> bytes:
    """Pack a version's token -> posts index (CSR) for the ``interests=`` hint.

    The layout is a JSON list of tokens, one NUL byte, then ``indptr`` and ``items`` as
    little-endian uint32; ``items[indptr[i]:indptr[i + 1]]`` are the post indices of
    ``tokens[i]``, best first.

    >>> index = decode_token_index(encode_token_index(["coffee", "口紅"], [0, 2, 3], [5, 1, 7]))
    >>> {k: v.tolist() for k, v in index.items()}
    {'coffee': [5, 1], '口紅': [7]}
    """
    ptr = np.asarray(indptr, dtype="<u4")
    its = np.asarray(items, dtype="<u4")
    if len(ptr) != len(tokens) + 1 or (len(ptr) and int(ptr[-1]) != len(its)):
        raise ValueError("indptr must have len(tokens) + 1 entries ending at len(items)")
    return encode_json(list(tokens)) + b"\0" + ptr.tobytes() + its.tobytes()


def decode_token_index(blob: bytes | None) -> dict[str, np.ndarray]:
    """Unpack :func:`encode_token_index` into token -> post indices (int64)."""
    if not blob:
        return {}
    head, _, rest = blob.partition(b"\0")
    tokens = orjson.loads(head)
    ptr = np.frombuffer(rest, dtype="<u4", count=len(tokens) + 1).astype(np.int64)
    items = np.frombuffer(rest, dtype="<u4", offset=4 * len(ptr)).astype(np.int64)
    return {t: items[ptr[i] : ptr[i + 1]] for i, t in enumerate(tokens)}
