"""The service's writes that must be all or nothing: an event batch and a new post.

An event batch is a list of commands: one ``XADD`` per event on the event log (``{feed}``) and
each user's real-time changes on that user's keys (``{u:<user>}``, one cluster slot), with
their TTLs renewed. :func:`transact` applies such groups of commands so that a failure leaves
nothing applied:

- on one Redis server every group goes into ONE ``MULTI``/``EXEC`` transaction. A full Redis
  (``maxmemory`` with ``noeviction``) refuses the whole transaction while it is queued
  (``EXECABORT``), and a connection lost before ``EXEC`` discards it, so nothing is applied.
  (Redis does not roll back a command that fails while ``EXEC`` runs; only a key of the wrong
  type makes one fail, and the service writes none);
- on a Redis Cluster a transaction cannot cross slots, so each group is one transaction on its
  own slot, the users' groups first and the event log last. Each transaction also reads the
  prior state of every member it changes (``ZSCORE``, ``SISMEMBER``, the ranks a trim drops),
  and when a later group fails every group already applied is reverted from those reads, in
  reverse order, before the error is answered. The log, written last, is never half written.

A new post's writes (:func:`add_post`) only add keys, fields and members, so they are undone by
deleting what was added: deletions are never refused for memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from redis.exceptions import ResponseError, WatchError

from feed import contract as c
from feed import versions
from service.wire import Command, round_trip

logger = logging.getLogger(__name__)

#: The real-time keys an event can write, renewed (``EXPIRE``) by every event of their user:
#: the seen set for ``SEEN_WINDOW_S`` (older entries are never read), the rest for
#: ``USER_STATE_TTL_S``.
PREFERENCE_KEYS = (
    c.USER_LIKES,
    c.USER_RT,
    c.USER_HIDDEN,
    c.USER_MUTED,
    c.USER_FOLLOWS,
    c.USER_UNFOLLOWS,
    c.USER_PURCHASES,
)


# --- events ----------------------------------------------------------------------------------
def _realtime(user: str, members: Mapping[str, float], ts: float, rt_max: int) -> list[Command]:
    if not members:
        return []
    rt = c.user_key(user, c.USER_RT)
    pairs = [x for m, s in members.items() for x in (c.rt_score(ts, s), m)]
    return [("ZADD", rt, *pairs), ("ZREMRANGEBYRANK", rt, 0, -rt_max - 1)]


def event_writes(
    ev: Mapping[str, Any], members: Mapping[str, float], cfg: Mapping[str, Any]
) -> list[Command]:
    """The real-time state changes of one event, as commands on its user's keys.

    ``like`` adds ``members`` (the post's neighbours) to the real-time candidates and
    ``unlike`` removes exactly those; ``follow`` adds ``members`` (the author's newest posts)
    and ``unfollow`` removes them; ``hide_post`` and ``see_fewer_author`` feed the read
    path's filters.

    >>> event_writes({"user_id": "u1", "type": "hide_post", "post_id": "p1", "ts": 1.0}, {}, {})
    [('SADD', '{u:u1}:hidden', 'p1')]
    """
    u, kind, ts = ev["user_id"], ev["type"], ev["ts"]

    def k(kind: str) -> str:
        return c.user_key(u, kind)

    if kind in ("impression", "click"):
        return [
            ("ZADD", k(c.USER_SEEN), ts, ev["post_id"]),
            ("ZREMRANGEBYRANK", k(c.USER_SEEN), 0, -cfg["SEEN_MAX"] - 1),
        ]
    if kind == "like":
        return [
            ("ZADD", k(c.USER_LIKES), ts, ev["post_id"]),
            ("ZREMRANGEBYRANK", k(c.USER_LIKES), 0, -cfg["LIKES_MAX"] - 1),
            *_realtime(u, members, ts, cfg["RT_MAX"]),
        ]
    if kind == "unlike":
        out: list[Command] = [("ZREM", k(c.USER_LIKES), ev["post_id"])]
        return out + ([("ZREM", k(c.USER_RT), *members)] if members else [])
    if kind == "purchase":
        return [("SADD", k(c.USER_PURCHASES), ev["product_id"])]
    if kind == "follow":
        return [
            ("SADD", k(c.USER_FOLLOWS), ev["author_id"]),
            ("SREM", k(c.USER_UNFOLLOWS), ev["author_id"]),
            *_realtime(u, members, ts, cfg["RT_MAX"]),
        ]
    if kind == "unfollow":
        out = [
            ("SREM", k(c.USER_FOLLOWS), ev["author_id"]),
            ("SADD", k(c.USER_UNFOLLOWS), ev["author_id"]),
        ]
        return out + ([("ZREM", k(c.USER_RT), *members)] if members else [])
    if kind == "hide_post":
        return [("SADD", k(c.USER_HIDDEN), ev["post_id"])]
    if kind == "see_fewer_author":
        return [("SADD", k(c.USER_MUTED), ev["author_id"])]
    if kind == "favorite":  # a strong like: the same real-time state as a like
        return event_writes({**ev, "type": "like"}, members, cfg)
    if kind == "unfavorite":
        return event_writes({**ev, "type": "unlike"}, members, cfg)
    if kind in ("add_to_cart", "share"):  # the post was opened: a click (share_writes: receiver)
        if not ev.get("post_id"):
            return []
        return event_writes({**ev, "type": "click"}, members, cfg)
    raise ValueError(f"unknown event type {kind!r}")


def share_writes(ev: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[Command]:
    """A ``share`` with a ``receiver_id`` (not the sharer) puts the post into the receiver's
    real-time candidates, reason ``shared_by:<sharer>`` at full strength, on the receiver's
    keys (their slot): the zset stays at ``RT_MAX`` and expires ``USER_STATE_TTL_S`` after the
    last write, as every real-time key does.

    >>> share_writes({"type": "share", "user_id": "a", "post_id": "p", "receiver_id": "b",
    ...               "ts": 5.0}, {"RT_MAX": 9, "USER_STATE_TTL_S": 0})
    [('ZADD', '{u:b}:rt', 5.999, 'p|shared_by:a'), ('ZREMRANGEBYRANK', '{u:b}:rt', 0, -10)]
    """
    receiver = ev.get("receiver_id")
    if ev["type"] != "share" or not receiver or receiver == ev["user_id"]:
        return []
    member = {c.rt_member(ev["post_id"], f"shared_by:{ev['user_id']}"): 1.0}
    out = _realtime(receiver, member, ev["ts"], cfg["RT_MAX"])
    ttl = int(cfg["USER_STATE_TTL_S"])
    return out + ([("EXPIRE", c.user_key(receiver, c.USER_RT), ttl)] if ttl > 0 else [])


def renewals(
    user: str, cfg: Mapping[str, Any], written: Collection[str] = (), every: bool = True
) -> list[Command]:
    """``EXPIRE`` of ``user``'s real-time keys: of every one when ``every`` (the user was
    active), else only of those in ``written`` (the keys the batch may create: a key is never
    left without its TTL). A TTL of 0 keeps keys forever; keys that do not exist are left alone by
    Redis.

    >>> renewals("u1", {"SEEN_WINDOW_S": 60, "USER_STATE_TTL_S": 0})
    [('EXPIRE', '{u:u1}:seen', 60)]
    >>> renewals("u1", {"SEEN_WINDOW_S": 60, "USER_STATE_TTL_S": 9}, {"{u:u1}:likes"}, False)
    [('EXPIRE', '{u:u1}:likes', 9)]
    """
    seen, ttl = int(cfg["SEEN_WINDOW_S"]), int(cfg["USER_STATE_TTL_S"])
    out: list[Command] = []
    for kind in (c.USER_SEEN, *PREFERENCE_KEYS):
        key, life = c.user_key(user, kind), seen if kind == c.USER_SEEN else ttl
        if life > 0 and (every or key in written):
            out.append(("EXPIRE", key, life))
    return out


def event_batch(
    events: Sequence[tuple[Mapping[str, Any], Mapping[str, float]]],
    cfg: Mapping[str, Any],
    renew_all: Callable[[str], bool] = lambda user: True,
) -> tuple[list[Command], dict[str, list[Command]]]:
    """(the event log's ``XADD`` commands, user -> that user's writes and renewals) of a
    batch; ``members`` of each event are the real-time candidates it adds or removes.
    ``renew_all(user)``: whether to renew every real-time key of the user, not only the ones
    the batch writes (:meth:`service.store.Store.renewal_due`)."""
    log: list[Command] = []
    users: dict[str, list[Command]] = {}
    receivers: dict[str, list[Command]] = {}
    for ev, members in events:
        log.append(log_append(ev))
        users.setdefault(ev["user_id"], []).extend(event_writes(ev, members, cfg))
        if shared := share_writes(ev, cfg):
            receivers.setdefault(ev["receiver_id"], []).extend(shared)
    for user, cmds in users.items():
        written = {cmd[1] for cmd in cmds if cmd[0] in ("ZADD", "SADD")}  # may create a key
        cmds.extend(renewals(user, cfg, written, renew_all(user)))
    for user, cmds in receivers.items():  # a receiver's writes join their own slot's group
        users.setdefault(user, []).extend(cmds)
    return counted(log), users


# --- the event log -------------------------------------------------------------------------------
def log_append(fields: Mapping[str, Any]) -> Command:
    """The ``XADD`` of one event-log entry (``fields`` as strings). No ``MAXLEN``: the log is
    trimmed by :func:`trim_log`, which never drops an entry not yet exported below the hard
    cap. Every group of ``XADD``s goes with its :func:`counted` ``INCRBY``.

    >>> log_append({"type": "like", "ts": 1.5})
    ('XADD', '{feed}:events', '*', 'type', 'like', 'ts', '1.5')
    """
    return ("XADD", c.EVENTS_KEY, "*", *[x for k, v in fields.items() for x in (k, str(v))])


def counted(group: list[Command]) -> list[Command]:
    """``group`` plus the ``INCRBY`` of :data:`feed.contract.EVENTS_SEQ_KEY` by its event-log
    ``XADD``s, to run in the same transaction, so the export's snapshot of (last id, counter)
    is consistent and the backlog is a subtraction.

    >>> counted([log_append({"type": "x"})])[-1]
    ('INCRBY', '{feed}:events_seq', 1)
    """
    n = sum(1 for cmd in group if cmd[0] == "XADD" and cmd[1] == c.EVENTS_KEY)
    return [*group, ("INCRBY", c.EVENTS_SEQ_KEY, n)] if n else list(group)


# Trim the log (KEYS: log, checkpoint hash, lost counter; ARGV: maxlen, hard cap, step):
# 1. beyond maxlen, drop the oldest entries up to the export checkpoint (exported ones) only;
# 2. beyond the hard cap, drop the oldest entries whatever they are, counting the unexported
#    ones among them. At most ``step`` entries a call each (the next write trims on).
# Returns {exported entries trimmed, unexported entries lost}. One script: atomic, one slot.
_TRIM_LOG = """
local function after(id)
  local ms, sq = string.match(id, '^(%d+)-(%d+)$')
  return ms .. '-' .. string.format('%.0f', tonumber(sq) + 1)
end
local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  return am > bm or (am == bm and tonumber(as) > tonumber(bs))
end
local maxlen, hard, step = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n = redis.call('XLEN', KEYS[1])
if n <= maxlen then return {0, 0} end
local cp = redis.call('HGET', KEYS[2], 'id')
local keep = cp  -- trim up to the export checkpoint, and the merchants' fold's once it runs
local folded = redis.call('HGET', KEYS[4], 'id')
if keep and folded and newer(keep, folded) then keep = folded end
local trimmed, lost = 0, 0
if keep then
  local rows = redis.call('XRANGE', KEYS[1], '-', keep, 'COUNT', math.min(n - maxlen, step))
  if #rows > 0 then
    trimmed = redis.call('XTRIM', KEYS[1], 'MINID', after(rows[#rows][1]))
    n = n - trimmed
  end
end
if hard > 0 and n > hard then
  local rows = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(n - hard, step))
  for _, row in ipairs(rows) do
    if not cp or newer(row[1], cp) then lost = lost + 1 end
  end
  if #rows > 0 then
    redis.call('XTRIM', KEYS[1], 'MINID', after(rows[#rows][1]))
  end
  if lost > 0 then redis.call('INCRBY', KEYS[3], lost) end
end
return {trimmed, lost}
"""

#: Entries :func:`trim_log` removes at most per call and rule (the script blocks Redis while
#: it runs; a write adds at most ``MAX_EVENTS_PER_REQUEST`` entries, so the log keeps up).
TRIM_STEP = 10_000


def trim_command(cfg: Mapping[str, Any]) -> Command:
    """The ``EVAL`` of :func:`trim_log`'s script, to run after a group of ``XADD``s in their
    transaction; its reply is [exported entries trimmed, unexported entries lost]."""
    return (
        "EVAL",
        _TRIM_LOG,
        4,
        c.EVENTS_KEY,
        c.EVENTS_EXPORTED_KEY,
        c.EVENTS_LOST_KEY,
        c.MERCHANT_AGG_CHECKPOINT_KEY,
        int(cfg["EVENT_LOG_MAXLEN"]),
        int(cfg.get("EVENT_LOG_HARD_MAX", 0)),
        TRIM_STEP,
    )


def _report_lost(reply: Any, cfg: Mapping[str, Any]) -> int:
    """Log (as an error) the unexported entries a trim's ``reply`` says it dropped."""
    lost = int(reply[1]) if isinstance(reply, list | tuple) and len(reply) == 2 else 0
    if lost:
        logger.error(
            "EVENTS LOST: the event log passed FEED_EVENT_LOG_HARD_MAX=%s entries and %d "
            "events not yet exported were trimmed; run `feed events export` more often or "
            "raise the cap",
            cfg.get("EVENT_LOG_HARD_MAX"),
            lost,
        )
    return lost


def trim_log(r: Any, cfg: Mapping[str, Any]) -> int:
    """Keep the event log at ``EVENT_LOG_MAXLEN`` entries by dropping exported ones (those up
    to the export checkpoint, :data:`feed.contract.EVENTS_EXPORTED_KEY`, and, once the
    merchants' attribution fold has run, up to its checkpoint too,
    :data:`feed.contract.MERCHANT_AGG_CHECKPOINT_KEY`), never an entry not yet exported, until
    the log passes ``EVENT_LOG_HARD_MAX`` (0: no hard cap): then the oldest
    go anyway, to protect memory, and the unexported ones among them are counted
    (:data:`feed.contract.EVENTS_LOST_KEY`, ``feed_events_lost_unexported_total``) and logged
    as an error. Called after every write to the log; a failure is logged (the next write
    trims again). The number of unexported entries lost."""
    try:
        reply = r.execute_command(*trim_command(cfg))
    except Exception as e:  # noqa: BLE001 - the write itself stands
        logger.warning("could not trim the event log: %r", e)
        return 0
    return _report_lost(reply, cfg)


# --- all or nothing ----------------------------------------------------------------------------
def _before(cmd: Command) -> list[Command]:
    """The reads that capture what ``cmd`` is about to change (nothing for ``EXPIRE``: a
    renewed TTL is not undone)."""
    op, key, *args = cmd
    if op == "ZADD":
        return [("ZSCORE", key, m) for m in args[1::2]]
    if op == "ZREM":
        return [("ZSCORE", key, m) for m in args]
    if op in ("SADD", "SREM"):
        return [("SISMEMBER", key, m) for m in args]
    if op == "ZREMRANGEBYRANK":
        return [("ZRANGE", key, args[0], args[1], "WITHSCORES")]
    return []


def with_scores(reply: Any) -> list[tuple[Any, Any]]:
    """(member, score) pairs of a ``WITHSCORES`` reply: flat under RESP2, pairs under RESP3
    or after redis-py's response callback.

    >>> with_scores([b"a", b"1", b"b", b"2"]), with_scores([[b"a", 1.0]])
    ([(b'a', b'1'), (b'b', b'2')], [(b'a', 1.0)])
    """
    if reply and isinstance(reply[0], (list, tuple)):
        return [(m, sc) for m, sc in reply]
    return list(zip(reply[::2], reply[1::2], strict=True))


def _inverse(cmd: Command, before: list[Any], reply: Any) -> list[Command]:
    """The commands that revert ``cmd``, given what :func:`_before` read and its reply."""
    op, key, *args = cmd
    if op in ("ZADD", "ZREM"):
        members = args[1::2] if op == "ZADD" else args
        return [
            ("ZREM", key, m) if old is None else ("ZADD", key, old, m)
            for m, old in zip(members, before, strict=True)
        ]
    if op == "SADD":
        return [("SREM", key, m) for m, was in zip(args, before, strict=True) if not was]
    if op == "SREM":
        return [("SADD", key, m) for m, was in zip(args, before, strict=True) if was]
    if op == "ZREMRANGEBYRANK":
        return [("ZADD", key, score, m) for m, score in with_scores(before[0])]
    if op == "XADD":
        return [("XDEL", key, reply)]
    if op == "INCRBY":
        return [("DECRBY", key, args[0])]
    return []


def _apply(r: Any, group: list[Command], out: list[Any] | None = None) -> list[Command]:
    """Run ``group`` as one transaction (one slot on a cluster), each write preceded by the
    reads of :func:`_before`; the commands that revert it (in the order to run them), and each
    command's reply appended to ``out``. Raises what Redis answered when the transaction
    failed, after reverting what it did apply."""
    pipe = r.pipeline(transaction=True)
    plan: list[tuple[Command, int]] = []
    for cmd in group:
        reads = _before(cmd)
        for read in reads:
            pipe.execute_command(*read)
        pipe.execute_command(*cmd)
        plan.append((cmd, len(reads)))
    replies = pipe.execute(raise_on_error=False)  # a refused transaction (EXECABORT) raises
    undo: list[Command] = []
    failed: BaseException | None = None
    i = 0
    for cmd, n_reads in plan:
        before, reply = list(replies[i : i + n_reads]), replies[i + n_reads]
        i += n_reads + 1
        if out is not None:
            out.append(reply)
        if isinstance(reply, BaseException):  # a runtime error: the rest of EXEC still ran
            failed = failed or reply
            continue
        undo[:0] = _inverse(cmd, before, reply)
    if failed is not None:
        revert(r, [undo])
        raise failed
    return undo


def revert(r: Any, undos: list[list[Command]]) -> None:
    """Run each group's revert commands as one transaction, last group first. A failure here
    (a second fault) is logged with what could not be reverted."""
    for undo in reversed(undos):
        if not undo:
            continue
        try:
            pipe = r.pipeline(transaction=True)
            for cmd in undo:
                pipe.execute_command(*cmd)
            pipe.execute()
        except Exception as e:  # noqa: BLE001 - the first error is what the caller answers
            logger.error("could not revert a failed write (%s): %r", e, undo[:50])


def transact(r: Any, groups: list[list[Command]], cluster: bool) -> list[Any]:
    """Apply ``groups`` (each on one slot) all or nothing (see the module's docstring): one
    transaction on a single server; on a cluster one per group in order, reverting the groups
    already applied when one fails. The replies of every command, in order."""
    groups = [g for g in groups if g]
    if not cluster:  # a full Redis refuses the whole transaction as it is queued
        # one packed write (round_trip raises a command's refusal as it was queued: then EXEC
        # aborts and nothing is applied); the replies raw, without redis-py's callbacks
        sent = round_trip(r, [("MULTI",), *(cmd for g in groups for cmd in g), ("EXEC",)])
        applied = list(sent[-1])
        failed = next((x for x in applied if isinstance(x, ResponseError)), None)
        if failed is not None:  # a runtime error: the rest of EXEC still ran
            raise failed
        return applied
    done: list[list[Command]] = []
    replies: list[Any] = []
    try:
        for group in groups:
            done.append(_apply(r, group, replies))
    except BaseException:
        revert(r, done)
        raise
    return replies


def record_events(
    r: Any,
    events: Sequence[tuple[Mapping[str, Any], Mapping[str, float]]],
    cfg: Mapping[str, Any],
    cluster: bool,
    renew_all: Callable[[str], bool] = lambda user: True,
) -> None:
    """Append each event to the event log and apply it to its user's real-time keys, renewing
    their TTLs (``renew_all``: :func:`event_batch`): all of the batch or none of it
    (:func:`transact`; the log last). Every set the batch added to is counted in the same
    transaction and kept at ``USER_SET_MAX`` members (:func:`trim_sets`)."""
    log, users = event_batch(events, cfg, renew_all)
    most = int(cfg["USER_SET_MAX"])
    groups, counted = [], []
    for group in users.values():
        keys = sorted({cmd[1] for cmd in group if cmd[0] == "SADD"}) if most > 0 else []
        groups.append([*group, *(("SCARD", key) for key in keys)])
        counted.append(keys)
    # the log's trim runs in the log's own transaction (one slot): no extra round trip
    replies = transact(r, [*groups, [*log, trim_command(cfg)]], cluster)
    over, end = [], 0
    for group, keys in zip(groups, counted, strict=True):
        end += len(group)
        sizes = replies[end - len(keys) : end]
        over += [(k, int(n) - most) for k, n in zip(keys, sizes, strict=True) if int(n) > most]
    trim_sets(r, over)
    _report_lost(replies[-1], cfg)


def trim_sets(r: Any, over: list[tuple[str, int]]) -> None:
    """``SPOP`` each set's surplus (``over``: key, members past ``USER_SET_MAX``; random
    members: a set keeps no order), in one round trip. After the batch, not in it: a batch is
    at most ``MAX_EVENTS_PER_REQUEST`` events, so no set ever holds more than the cap plus
    that. A failure here is logged; the batch itself stands."""
    if not over:
        return
    try:
        round_trip(r, [("SPOP", key, surplus) for key, surplus in over])
    except Exception as e:  # noqa: BLE001 - the batch is stored; the next one trims again
        logger.warning("could not trim %d of a user's sets: %r", len(over), e)


# --- new posts ---------------------------------------------------------------------------------
def add_post(
    r: Any,
    doc: Mapping[str, Any],
    products: Mapping[str, Mapping[str, Any]],
    created: float,
    cfg: Mapping[str, Any],
) -> bool:
    """Store a post created through the API: its document (False, and nothing written, when
    the post exists already), its card (``products``: its products' documents), its entry in
    the fresh posts with its metadata, and a ``post`` event. The document and the card expire
    after ``FRESH_MAX_AGE_S``. When a write fails, everything written is deleted again and the
    error raised."""
    pid, author, product_ids = doc["post_id"], doc["author_id"], doc["product_ids"]
    cats = [(products.get(p) or {}).get("category") or "" for p in product_ids]
    ttl = int(cfg["FRESH_MAX_AGE_S"])
    expiry = ("EX", ttl) if ttl > 0 else ()
    doc_key, card_key = c.post_doc_key(pid), c.card_key(pid)
    if not r.execute_command("SET", doc_key, c.encode_json(doc), "NX", *expiry):
        return False
    meta = {
        "author_id": author,
        "product_ids": product_ids,
        "category": cats[0] if cats else "",
        "categories": sorted({x for x in cats if x}),
        "created_at": created,
    }
    event = {"type": "post", "post_id": pid, "user_id": author, "ts": created}
    pipe = r.pipeline(transaction=False)
    pipe.execute_command("SET", card_key, c.encode_json(c.card(doc, products)), *expiry)
    pipe.execute_command("HSET", c.FRESH_META_KEY, pid, c.encode_json(meta))
    pipe.execute_command("ZADD", c.FRESH_KEY, created, pid)
    for cmd in counted([log_append(event)]):  # XADD, INCRBY: both on {feed}
        pipe.execute_command(*cmd)
    replies = pipe.execute(raise_on_error=False)
    errors = [x for x in replies if isinstance(x, BaseException)]
    if errors:
        undo: list[Command] = [
            ("DEL", doc_key),
            ("DEL", card_key),
            ("HDEL", c.FRESH_META_KEY, pid),
            ("ZREM", c.FRESH_KEY, pid),
        ]
        if not isinstance(replies[-2], BaseException):
            undo.append(("XDEL", c.EVENTS_KEY, replies[-2]))
        if not isinstance(replies[-1], BaseException):
            undo.append(("DECRBY", c.EVENTS_SEQ_KEY, 1))
        _delete(r, undo)
        raise errors[0]
    trim_log(r, cfg)
    return True


def _delete(r: Any, commands: list[Command]) -> None:
    """Run deletions one by one (they may cross slots), logging any that fail."""
    for cmd in commands:
        try:
            r.execute_command(*cmd)
        except Exception as e:  # noqa: BLE001 - the caller raises the first error
            logger.error("could not delete %r after a failed write: %s", cmd, e)


def prune_fresh(r: Any, now: float, cfg: Mapping[str, Any], batch: int = 1_000) -> int:
    """Remove the posts created through the API that are older than ``FRESH_MAX_AGE_S`` or
    beyond the newest ``FRESH_MAX_POSTS`` (at most ``batch`` a call), as
    :func:`feed.versions.forget_fresh` removes them. The number removed.
    """
    max_age, max_posts = cfg["FRESH_MAX_AGE_S"], int(cfg["FRESH_MAX_POSTS"])
    pipe = r.pipeline(transaction=False)
    pipe.zcard(c.FRESH_KEY)
    if max_age > 0:
        pipe.zrangebyscore(c.FRESH_KEY, "-inf", f"({now - max_age}", start=0, num=batch)
    replies = pipe.execute()
    victims = {c.text(p) for p in (replies[1] if max_age > 0 else [])}
    over = int(replies[0]) - max_posts
    if max_posts > 0 and over > 0:
        victims |= {c.text(p) for p in r.zrange(c.FRESH_KEY, 0, min(over, batch) - 1)}
    if not victims:
        return 0
    posts = sorted(victims)
    versions.forget_fresh(r, posts)  # the one removal rule, also the activation's
    return len(posts)


# --- moderation and the live catalogue -----------------------------------------------------------
#: Attempts of an overlay write whose watched hashes another writer changed meanwhile.
OVERLAY_RETRIES = 50

#: ``prepare(read)`` of :func:`overlay_write`: given ``read`` (runs one command now, under the
#: watch), the document commands and the ``{feed}`` commands of the change, which end with the
#: generation bump of what they change (:func:`moderation_bump`, :func:`catalogue_bump`).
Prepare = Callable[[Callable[..., Any]], tuple[list[Command], list[Command]]]


def overlay_write(
    r: Any, cluster: bool, prepare: Prepare, cfg: Mapping[str, Any] | None = None
) -> None:
    """Apply a moderation or catalogue change all or nothing, with its generation counter
    (:func:`moderation_bump`, :func:`catalogue_bump`, among ``prepare``'s commands) bumped in
    the same transaction, so every process sees it on its next request.

    ``prepare`` reads what it needs (the moderation and catalogue hashes are ``WATCH``ed, so
    its caps and merges hold when the transaction runs; it is called again when another writer
    changed them) and returns (document commands, ``{feed}`` commands). On one server
    everything is one ``MULTI``/``EXEC``. On a cluster the documents (spread over slots) are
    written first and put back as they were (value and TTL) when the ``{feed}`` transaction
    fails. With ``cfg``, the event log is trimmed in the same transaction when the change logs
    an event (:func:`trim_log`'s rule), as every other write to the log does."""
    for _ in range(OVERLAY_RETRIES):
        with r.pipeline(transaction=True) as pipe:
            pipe.watch(c.MODERATION_KEY, c.CATALOGUE_KEY)
            docs, own = prepare(pipe.execute_command)
            logged = any(cmd[0] == "XADD" and cmd[1] == c.EVENTS_KEY for cmd in own)
            own = counted(own)  # with prepare's generation bump
            if logged and cfg is not None:
                own.append(trim_command(cfg))
            saved = _snapshot(r, docs) if cluster and docs else []
            try:
                for cmd in docs if cluster else []:  # one slot each: no transaction spans them
                    r.execute_command(*cmd)
                pipe.multi()
                for cmd in own if cluster else [*docs, *own]:
                    pipe.execute_command(*cmd)
                pipe.execute()
                return
            except WatchError:
                _put_back(r, saved)
                continue
            except BaseException:
                _put_back(r, saved)
                raise
    raise WatchError(f"the overlay changed {OVERLAY_RETRIES} times while this write was prepared")


def moderation_bump() -> Command:
    """The bump of the moderation counter (:data:`feed.contract.MODERATION_GEN_KEY`): every
    process re-reads the moderation hash (and the API posts' metadata) on its next request."""
    return ("INCR", c.MODERATION_GEN_KEY)


# KEYS: the catalogue counter, the changes zset; ARGV: the changed product ids. One script (in
# the write's MULTI): the counter and each product's generation move together.
_CATALOGUE_BUMP = """
local g = redis.call('INCR', KEYS[1])
for i = 1, #ARGV do redis.call('ZADD', KEYS[2], g, ARGV[i]) end
return g
"""


def catalogue_bump(product_ids: Sequence[str]) -> Command:
    """The bump of the catalogue counter (:data:`feed.contract.CATALOGUE_GEN_KEY`) with each
    changed product recorded at the new generation (:data:`feed.contract.CATALOGUE_CHANGES_KEY`,
    one member per catalogue product: bounded by ``FEED_API_PRODUCTS_MAX``), so a process
    reads only the products changed since its generation."""
    keys = (c.CATALOGUE_GEN_KEY, c.CATALOGUE_CHANGES_KEY)
    return ("EVAL", _CATALOGUE_BUMP, len(keys), *keys, *product_ids)


def _snapshot(r: Any, docs: list[Command]) -> list[tuple[str, Any, int]]:
    """(key, value, PTTL) of every key ``docs`` write, before they do."""
    keys = list(dict.fromkeys(str(cmd[1]) for cmd in docs))
    return [(k, r.get(k), int(r.pttl(k))) for k in keys]


def _put_back(r: Any, saved: list[tuple[str, Any, int]]) -> None:
    """Undo :func:`_snapshot`'s keys' writes (a failure is logged: the caller raises)."""
    undo: list[Command] = []
    for key, value, pttl in saved:
        if value is None:
            undo.append(("DEL", key))
        else:
            undo.append(("SET", key, value, *(("PX", pttl) if pttl > 0 else ())))
    _delete(r, undo)


def overlay_event(kind: str, fields: Mapping[str, Any], cfg: Mapping[str, Any]) -> Command:
    """The ``XADD`` of a moderation (``post_update``, ``post_delete``) or catalogue
    (``product_upsert``) event: ``type`` then ``fields`` at top level, as strings."""
    return log_append({"type": kind, **fields})  # overlay_write counts it and trims the log
