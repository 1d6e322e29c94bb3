"""Group-buys (拼購): exact group state in Redis under any load.

A group's state is two keys under one hash tag, ``{grp:<group_id>}:state`` (a hash) and
``{grp:<group_id>}:members`` (a zset: user -> join time, the initiator first), so each script
below runs on one Redis Cluster slot. Every change of a group is ONE Lua script (registered once
per client with redis-py's ``register_script``, sent as ``EVALSHA``): Redis runs a script
atomically, so whatever the interleaving of concurrent joins a group never takes more members
than its size, a member never joins twice (a second join changes nothing), and a group past its
``expires_at`` takes nobody. Time is Redis's own clock (``TIME`` inside the scripts), the same
for every service process; a group's keys expire ``GROUP_KEEP_S`` after its ``expires_at``.

Besides its own keys a group touches, after its script, keys of other slots: the initiator's
open groups (``{u:<user>}:gopen``, capped at ``GROUP_OPEN_MAX``; reserved by a script before the
group is created, released when it fills up), each member's index of groups
(``{u:<user>}:groups``, newest ``USER_GROUPS_MAX``, with a TTL) and the event log
(``group_start``, ``group_join``). Those writes go through :func:`service.writes.transact` (all
or nothing among themselves); the group's script has then already committed, so a failure there
answers an error while the group stands, and a retried join answers 200 (already a member)
without a second log entry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feed import contract as c
from feed.redisclient import is_cluster
from feed.serving.groups import (
    HOP_TIES,
    affinities,
    category_shares,
    decode_serve_params,
    hop_groups,
    hop_invitees,
    pair_score,
)
from service.writes import Command, counted, log_append, transact, trim_log

# Create a group (KEYS: state hash, members zset; ARGV: group id, product id, initiator id,
# size, ttl_s, keep_s, price or ''). Returns {'created', now, expires_at} or, when a group of that
# id exists, {'exists', its initiator id}.
_CREATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if redis.call('EXISTS', KEYS[1]) == 1 then
  local st = redis.call('HMGET', KEYS[1], 'initiator_id', 'status', 'expires_at')
  local live = st[2] == 'open' and tonumber(st[3] or '0') > now
  return {'exists', st[1] or '', live and 'open' or 'closed'}
end
local expires = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'group_id', ARGV[1], 'product_id', ARGV[2], 'initiator_id', ARGV[3],
  'size', ARGV[4], 'created_at', string.format('%.6f', now),
  'expires_at', string.format('%.6f', expires), 'status', 'open', 'price', ARGV[7])
redis.call('ZADD', KEYS[2], string.format('%.6f', now), ARGV[3])
local keep = math.ceil(tonumber(ARGV[5]) + tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[1], keep)
redis.call('EXPIRE', KEYS[2], keep)
return {'created', string.format('%.6f', now), string.format('%.6f', expires)}
"""

# Join a group (KEYS: state hash, members zset; ARGV: user id). Returns {outcome, now, the state
# hash as a flat list, the members with their join times as a flat list}; outcome is
# 'joined', 'succeeded' (this join filled it), 'member' (already in: nothing changed),
# 'unknown', 'full', 'closed' or 'expired' (nothing changed).
_JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local stamp = string.format('%.6f', now)
local st = redis.call('HMGET', KEYS[1], 'size', 'expires_at', 'status')
local outcome
if not st[1] then
  return {'unknown', stamp, {}, {}}
elseif redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  outcome = 'member'
elseif st[3] == 'succeeded' then
  outcome = 'full'
elseif st[3] ~= 'open' then
  outcome = 'closed'
elseif now >= tonumber(st[2]) then
  outcome = 'expired'
else
  local n = redis.call('ZCARD', KEYS[2])
  if n >= tonumber(st[1]) then
    outcome = 'full'
  else
    redis.call('ZADD', KEYS[2], stamp, ARGV[1])
    outcome = 'joined'
    if n + 1 >= tonumber(st[1]) then
      redis.call('HSET', KEYS[1], 'status', 'succeeded', 'succeeded_at', stamp)
      outcome = 'succeeded'
    end
  end
end
return {outcome, stamp, redis.call('HGETALL', KEYS[1]),
        redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')}
"""

# Cancel a group (KEYS: state hash, members zset; ARGV: user id). Returns {outcome, now, state,
# members} like _JOIN; outcome is 'cancelled', 'already' (cancelled before: nothing changed),
# 'unknown', 'not_initiator', 'full' (it succeeded) or 'expired' (nothing changed).
_CANCEL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local stamp = string.format('%.6f', now)
local st = redis.call('HMGET', KEYS[1], 'initiator_id', 'status', 'expires_at')
local outcome
if not st[1] then
  return {'unknown', stamp, {}, {}}
elseif st[1] ~= ARGV[1] then
  outcome = 'not_initiator'
elseif st[2] == 'cancelled' then
  outcome = 'already'
elseif st[2] ~= 'open' then
  outcome = 'full'
elseif now >= tonumber(st[3]) then
  outcome = 'expired'
else
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled_at', stamp)
  outcome = 'cancelled'
end
return {outcome, stamp, redis.call('HGETALL', KEYS[1]),
        redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')}
"""

# Read a group (KEYS: state hash, members zset): {now, state, members}, like _JOIN's reply.
_READ = """
local t = redis.call('TIME')
return {string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000),
        redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')}
"""

# Reserve one of the initiator's open-group slots (KEYS: {u:<user>}:gopen; ARGV: group id,
# now, most, expires_at, ttl_s). Expired entries are dropped first. Returns 1 when reserved (or
# already there), 0 when the user has ``most`` open groups.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) * 1000 then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
return 1
"""


def _event(kind: str, user_id: str, group: Group, ts: float) -> dict[str, Any]:
    """The event-log entry of a change to ``group`` by ``user_id``."""
    return {
        "type": kind,
        "user_id": user_id,
        "group_id": group.group_id,
        "product_id": group.product_id,
        "ts": ts,
    }


@dataclass(frozen=True)
class Group:
    """A group's state as the API shows it."""

    group_id: str
    product_id: str
    initiator_id: str
    size: int
    members: list[str]  # in join order, the initiator first
    status: str  # open, succeeded, failed (expired short) or cancelled (by its initiator)
    created_at: float
    expires_at: float
    price: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "product_id": self.product_id,
            "initiator_id": self.initiator_id,
            "size": self.size,
            "members": self.members,
            "spots_left": max(self.size - len(self.members), 0) if self.status == "open" else 0,
            "status": self.status,
            "created_at": c.iso_time(self.created_at),
            "expires_at": c.iso_time(self.expires_at),
            "price": self.price,
        }


def _flat(reply: Any) -> list[Any]:
    """A hash or zset reply (a dict, pairs or a flat list, per client) as one flat list."""
    if isinstance(reply, dict):
        return [x for kv in reply.items() for x in kv]
    out: list[Any] = []
    for m in reply or ():
        out += list(m) if isinstance(m, tuple | list) else [m]
    return out


def _group(now: float, state: Any, members: Any) -> Group | None:
    """The :class:`Group` of a script's reply (None when the group has no state)."""
    flat = [c.text(x) for x in state]
    h = dict(zip(flat[::2], flat[1::2], strict=True))
    if not h:
        return None
    ids = [c.text(m) for m in members[::2]]
    expires = float(h["expires_at"])
    status = h["status"]
    if status == "open" and now >= expires:
        status = "failed"
    return Group(
        group_id=h["group_id"],
        product_id=h["product_id"],
        initiator_id=h["initiator_id"],
        size=int(h["size"]),
        members=ids,
        status=status,
        created_at=float(h["created_at"]),
        expires_at=expires,
        price=float(h["price"]) if h.get("price") else None,
    )


class GroupError(Exception):
    """A join or create the group's state refuses: ``code`` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Groups:
    """The group scripts of one Redis client (registered once) and the writes around them."""

    def __init__(self, r: Any, config: Mapping[str, Any]) -> None:
        self.r = r
        self.config = config
        self.cluster = is_cluster(r)
        self._create = r.register_script(_CREATE)
        self._join = r.register_script(_JOIN)
        self._read = r.register_script(_READ)
        self._reserve = r.register_script(_RESERVE)
        self._cancel = r.register_script(_CANCEL)

    @staticmethod
    def _keys(group_id: str) -> list[str]:
        return [c.group_key(group_id, c.GROUP_STATE), c.group_key(group_id, c.GROUP_MEMBERS)]

    def _kept_s(self, ttl_s: float) -> int:
        """Seconds a user's group keys live: the group's time to expiry and its keeping."""
        return math.ceil(ttl_s + float(self.config["GROUP_KEEP_S"]))

    def get(self, group_id: str) -> Group | None:
        """The group's state (None when unknown or its keys have expired)."""
        now, state, members = self._read(keys=self._keys(group_id))
        return _group(float(c.text(now)), state, members)

    def create(
        self,
        group_id: str,
        product_id: str,
        initiator_id: str,
        size: int,
        ttl_s: float,
        price: float | None,
    ) -> Group:
        """Start a group; :class:`GroupError` ``group_exists`` when the id is taken,
        ``too_many_open_groups`` when the initiator has ``GROUP_OPEN_MAX`` open groups."""
        cfg = self.config
        open_key = c.user_key(initiator_id, c.USER_GROUPS_OPEN)
        kept = self._kept_s(ttl_s)
        most = int(cfg["GROUP_OPEN_MAX"])
        now = time.time()
        if not self._reserve(keys=[open_key], args=[group_id, now, most, now + ttl_s, kept]):
            raise GroupError(
                "too_many_open_groups",
                f"initiator {initiator_id!r} has {most} open groups (FEED_GROUP_OPEN_MAX): "
                "wait until one fills up or expires",
            )
        try:
            reply = self._create(
                keys=self._keys(group_id),
                args=[
                    group_id,
                    product_id,
                    initiator_id,
                    size,
                    ttl_s,
                    int(cfg["GROUP_KEEP_S"]),
                    "" if price is None else repr(float(price)),
                ],
            )
        except Exception:
            self._release(open_key, group_id)
            raise
        if c.text(reply[0]) == "exists":
            # the slot stays only for this initiator's own group while it is open (a retried
            # create); a closed, succeeded or expired group, or another's, holds no slot
            if c.text(reply[1]) != initiator_id or c.text(reply[2]) != "open":
                self._release(open_key, group_id)
            raise GroupError("group_exists", f"group {group_id!r} exists")
        created, expires = float(c.text(reply[1])), float(c.text(reply[2]))
        event = {
            "type": "group_start",
            "user_id": initiator_id,
            "group_id": group_id,
            "product_id": product_id,
            "size": size,
            "expires_at": expires,
            "ts": created,
        }
        self._after(initiator_id, group_id, expires, event, [])
        return Group(
            group_id, product_id, initiator_id, size, [initiator_id], "open", created, expires,
            price,
        )  # fmt: skip

    def join(self, group_id: str, user_id: str) -> tuple[Group, bool]:
        """Join a group: (its state, whether this call changed it). :class:`GroupError`
        ``group_full`` / ``group_closed`` / ``group_expired``, or ``not_found``."""
        outcome, now, state, members = self._join(keys=self._keys(group_id), args=[user_id])
        outcome = c.text(outcome)
        group = _group(float(c.text(now)), state, members)
        if outcome == "unknown" or group is None:
            raise GroupError("not_found", f"no group {group_id!r} (unknown, or expired long ago)")
        if outcome in ("full", "closed", "expired"):
            raise GroupError(f"group_{outcome}", _REFUSED[outcome].format(group_id=group_id))
        if outcome == "member":
            return group, False
        event = _event("group_join", user_id, group, float(c.text(now)))
        extra: list[list[Command]] = []
        if outcome == "succeeded":  # no longer open: free the initiator's slot
            open_key = c.user_key(group.initiator_id, c.USER_GROUPS_OPEN)
            extra.append([("ZREM", open_key, group_id)])
        self._after(user_id, group_id, group.expires_at, event, extra)
        return group, True

    def cancel(self, group_id: str, user_id: str) -> tuple[Group, bool]:
        """Cancel an open group, by its initiator only: its status becomes ``cancelled`` and it
        takes nobody (joins get ``group_closed``); (its state, whether this call changed it).
        :class:`GroupError` ``not_initiator``, ``group_full`` (it succeeded),
        ``group_expired`` or ``not_found``."""
        outcome, now, state, members = self._cancel(keys=self._keys(group_id), args=[user_id])
        outcome = c.text(outcome)
        group = _group(float(c.text(now)), state, members)
        if outcome == "unknown" or group is None:
            raise GroupError("not_found", f"no group {group_id!r} (unknown, or expired long ago)")
        if outcome == "not_initiator":
            raise GroupError(
                "not_initiator", f"only the initiator of group {group_id!r} can cancel it"
            )
        if outcome in ("full", "expired"):
            raise GroupError(f"group_{outcome}", _UNCANCELLABLE[outcome].format(group_id=group_id))
        if outcome == "already":
            return group, False
        event = _event("group_cancel", user_id, group, float(c.text(now)))
        open_key = c.user_key(user_id, c.USER_GROUPS_OPEN)
        self._after(user_id, group_id, group.expires_at, event, [[("ZREM", open_key, group_id)]])
        return group, True

    def _after(
        self,
        user_id: str,
        group_id: str,
        expires: float,
        event: Mapping[str, Any],
        extra: list[list[Command]],
    ) -> None:
        """The user's index of groups and the event log, all or nothing among themselves. The
        index lives as long as the longest group can (``GROUP_TTL_MAX_S + GROUP_KEEP_S``)
        after its last write, so no write shortens the life of an older entry."""
        index = c.user_key(user_id, c.USER_GROUPS)
        most = int(self.config["USER_GROUPS_MAX"])
        user = [
            ("ZADD", index, expires, group_id),
            ("ZREMRANGEBYRANK", index, 0, -most - 1),
            ("EXPIRE", index, self._kept_s(float(self.config["GROUP_TTL_MAX_S"]))),
        ]
        transact(self.r, [user, *extra, counted([log_append(event)])], self.cluster)
        trim_log(self.r, self.config)

    def _release(self, open_key: str, group_id: str) -> None:
        try:
            self.r.zrem(open_key, group_id)
        except Exception:  # noqa: BLE001 - the slot frees itself when its expiry passes
            pass


@dataclass(frozen=True)
class Scored:
    """A recommendation: what, its score and why."""

    item: Any
    score: float
    reason: str


class GroupRecs:
    """The group-buying reads of one Redis client: deals to launch, friends' open groups to
    join, friends to invite, and the fan-out that makes the second one cheap.

    Fan-out on write: when a group starts, ``"<group id> <tie weight>"`` (a space is no id
    character) goes into ``{u:<tie>}:gfeed`` (a zset scored by expires_at, newest
    ``GROUP_FEED_MAX``, expiring with the longest group) of each of the initiator's published
    ties (``{u:<initiator>}:ties:<live version>``). Reading a user's joinable groups is then
    one pipelined read of the user's keys (the zset, their deals, their ties) and one
    pipelined read of the groups' states.
    """

    def __init__(self, r: Any, config: Mapping[str, Any]) -> None:
        self.r = r
        self.config = config
        self._params: dict[str, dict[str, dict[str, float]]] = {}

    def _pipe(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Replies of ``commands`` in one round trip (split per node on a cluster)."""
        pipe = self.r.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return list(pipe.execute(raise_on_error=True))

    def params(self, version: str) -> dict[str, dict[str, float]]:
        """The version's pair-model weights (``{feed:<v>}:gpair``; empty for a version
        without them), read once per version and process: a version's keys never change."""
        if version not in self._params:
            while len(self._params) >= 8:  # a few versions at most (live, arms, rollback)
                self._params.pop(next(iter(self._params)))
            raw = self.r.get(c.version_key(version, c.GROUP_PAIR))
            self._params[version] = decode_serve_params(raw)
        return self._params[version]

    def fan_out(self, group: Group, version: str | None) -> int:
        """Put a new group into the group feed of each of its initiator's ties; how many."""
        if version is None:
            return 0
        ties = c.decode_ties(self.r.get(c.user_key(group.initiator_id, c.USER_TIES, version)))
        if not ties:
            return 0
        most = int(self.config["GROUP_FEED_MAX"])
        keep = math.ceil(float(self.config["GROUP_TTL_MAX_S"]))
        now = time.time()
        cmds: list[tuple[Any, ...]] = []
        for tie, weight in ties.items():
            key = c.user_key(tie, c.USER_GROUP_FEED)
            cmds += [
                ("ZADD", key, group.expires_at, f"{group.group_id} {weight:g}"),
                ("ZREMRANGEBYSCORE", key, "-inf", now),
                ("ZREMRANGEBYRANK", key, 0, -most - 1),
                ("EXPIRE", key, keep),
            ]
        self._pipe(cmds)
        return len(ties)

    def deals(self, user_id: str, version: str) -> tuple[list[dict[str, Any]], bool]:
        """The user's deals (decoded, best first) and whether they are the version's popular
        ones (a user without deals of their own): one round trip."""
        own, popular = self._pipe(
            [
                ("GET", c.user_key(user_id, c.USER_DEALS, version)),
                ("GET", c.version_key(version, c.GROUP_POPULAR)),
            ]
        )
        if own:
            return c.decode_deals(own), False
        return c.decode_deals(popular), True

    def joinable(
        self,
        user_id: str,
        version: str,
        limit: int,
        category: Mapping[str, str] | None = None,
    ) -> list[Scored]:
        """Friends' open groups the user may join, best first, then friends of friends' (at
        most three round trips: the user's keys; the fanned-out groups' states with the group
        feeds of the user's :data:`~feed.serving.groups.HOP_TIES` strongest ties; the states
        of the best of those two-step groups, only when the direct ones leave room). Score:
        :func:`feed.serving.groups.pair_score` of the initiator's published tie to the user
        (carried by the fan-out; :func:`~feed.serving.groups.hop_weight` of both steps for a
        friend of a friend's group) and the user's affinity for the product and its category
        (``category``: product -> category). Groups whose initiator the user muted (blocked or
        "see fewer", ``{u:<user>}:muted``, read with the user's keys) are left out."""
        now = time.time()
        most = int(self.config["GROUP_FEED_MAX"])
        params = self.params(version).get("join")
        ids, deals, ties, muted_raw = self._pipe(
            [
                ("ZRANGEBYSCORE", c.user_key(user_id, c.USER_GROUP_FEED), now, "+inf",
                 "LIMIT", 0, most),
                ("GET", c.user_key(user_id, c.USER_DEALS, version)),
                ("GET", c.user_key(user_id, c.USER_TIES, version)),
                ("SMEMBERS", c.user_key(user_id, c.USER_MUTED)),
            ]
        )  # fmt: skip
        muted = {c.text(x) for x in muted_raw or ()}
        tie = c.decode_ties(ties)
        hop_ties = list(tie.items())[:HOP_TIES]
        fanned = self._fanned(ids)  # group -> the initiator's tie to the user at its start
        if not fanned and not hop_ties:
            return []
        cmds = [cmd for gid in fanned for cmd in self._state_reads(gid)]
        cmds += [("ZRANGEBYSCORE", c.user_key(v, c.USER_GROUP_FEED), now, "+inf", "LIMIT", 0,
                  most) for v, _ in hop_ties]  # fmt: skip
        replies = self._pipe(cmds)
        decoded = c.decode_deals(deals)
        aff = affinities(decoded)
        shares = category_shares(decoded, category or {})

        def scored(gid: str, weight: float, state: Any, members: Any, why: str) -> Scored | None:
            group = _group(now, _flat(state), _flat(members))
            if group is None or not _offered(group, user_id, muted):
                return None
            a = aff.get(group.product_id, 0.0)
            if params:  # the initiator's published tie to the user, as fanned out
                strength = weight or tie.get(group.initiator_id, 0.0)
            else:
                strength = max(tie.get(group.initiator_id, 0.0), weight)
            cat = shares.get((category or {}).get(group.product_id, ""), 0.0)
            score = pair_score(strength, a, params, cat)
            why = f"{why}:{group.initiator_id}"
            return Scored(group, score, why if a <= 0 else f"{why}|wants_product")

        def ranked(found: list[Scored | None]) -> list[Scored]:
            out = [x for x in found if x is not None]
            out.sort(key=lambda s: (-s.score, s.item.expires_at, s.item.group_id))
            return out

        direct = ranked([
            scored(gid, fanned[gid], replies[2 * i], replies[2 * i + 1], "friend_started")
            for i, gid in enumerate(fanned)
        ])  # fmt: skip
        if len(direct) >= limit:
            return direct[:limit]
        # friends of friends' groups: what the user's strongest ties were fanned out
        feeds = zip(hop_ties, replies[2 * len(fanned) :], strict=True)
        hop = hop_groups(
            ((to_tie, self._fanned(feed).items()) for (_, to_tie), feed in feeds), fanned, most
        )
        best = list(hop)
        if not best:
            return direct[:limit]
        replies = self._pipe([cmd for gid in best for cmd in self._state_reads(gid)])
        found = ranked([
            scored(gid, hop[gid], replies[2 * i], replies[2 * i + 1], "friend_of_friend_started")
            for i, gid in enumerate(best)
        ])  # fmt: skip
        return (direct + found)[:limit]

    @staticmethod
    def _fanned(ids: Any) -> dict[str, float]:
        """Group id -> fanned-out weight of a group feed's members (``"<group id> <weight>"``)."""
        out: dict[str, float] = {}
        for member in ids or ():
            gid, _, weight = c.text(member).rpartition(" ")  # a group id may hold spaces
            out[gid] = float(weight)
        return out

    @staticmethod
    def _state_reads(gid: str) -> list[tuple[Any, ...]]:
        state, members = Groups._keys(gid)
        return [("HGETALL", state), ("ZRANGE", members, 0, -1, "WITHSCORES")]

    def invitees(
        self,
        group: Group,
        version: str | None,
        limit: int,
        category: Mapping[str, str] | None = None,
    ) -> list[Scored]:
        """The initiator's ties ranked by the pair model (:func:`feed.serving.groups.pair_score`
        of the published tie and their affinity for the group's product and its category),
        members excluded, then, when they leave room, friends of friends
        (:func:`feed.serving.groups.hop_invitees`, scored the same way): at most three round
        trips (the ties; their deals with the ties of the :data:`HOP_TIES` strongest; the
        friends of friends' deals, only when the ties leave room)."""
        if version is None:
            return []
        params = self.params(version).get("invite")
        all_ties = c.decode_ties(self.r.get(c.user_key(group.initiator_id, c.USER_TIES, version)))
        ties = {u: w for u, w in all_ties.items() if u not in group.members}
        hop_from = list(all_ties)[:HOP_TIES] if len(ties) < limit else []
        if not ties and not hop_from:
            return []
        users = list(ties)
        replies = self._pipe(
            [("GET", c.user_key(u, c.USER_DEALS, version)) for u in users]
            + [("GET", c.user_key(v, c.USER_TIES, version)) for v in hop_from]
        )
        cat_of = (category or {}).get(group.product_id, "")

        def scored(u: str, weight: float, blob: Any, why: str) -> Scored:
            decoded = c.decode_deals(blob)
            a = affinities(decoded).get(group.product_id, 0.0)
            cat = category_shares(decoded, category or {}).get(cat_of, 0.0) if cat_of else 0.0
            # a tie's taste may be named to the initiator; a friend of a friend's (a
            # stranger to them, maybe) never is
            shown = why == "friend" and a > 0
            return Scored(u, pair_score(weight, a, params, cat),
                          f"{why}_wants_product" if shown else why)  # fmt: skip

        def ranked(found: list[Scored]) -> list[Scored]:
            return sorted(found, key=lambda s: (-s.score, s.item))

        out = ranked([scored(u, ties[u], b, "friend")
                      for u, b in zip(users, replies, strict=False)])  # fmt: skip
        if len(out) >= limit or not hop_from:
            return out[:limit]
        theirs = [c.decode_ties(raw) for raw in replies[len(users) :]]
        hop = hop_invitees(all_ties, theirs, set(group.members) | {group.initiator_id})
        if not hop:
            return out
        blobs = self._pipe([("GET", c.user_key(u, c.USER_DEALS, version)) for u in hop])
        found = ranked([scored(u, hop[u], b, "friend_of_friend")
                        for u, b in zip(hop, blobs, strict=True)])  # fmt: skip
        return (out + found)[:limit]


def feed_group_reads(group_feed: Sequence[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The groups of a user's group feed (``UserState.group_feed``) and the reads of their
    states, to send with a feed page's cards (no round trip of their own)."""
    gids = list(GroupRecs._fanned(group_feed))
    return gids, [cmd for gid in gids for cmd in GroupRecs._state_reads(gid)]


def _offered(group: Group, user_id: str, muted: Container[str]) -> bool:
    """Whether ``group`` may be offered to ``user_id``: open with a free spot, the user not in
    it, its initiator not muted by the user (``muted``: blocked or "see fewer")."""
    return (
        group.status == "open"
        and user_id not in group.members
        and len(group.members) < group.size
        and group.initiator_id not in muted
    )


def feed_groups(
    user_id: str,
    gids: Sequence[str],
    replies: Sequence[Any],
    now: float,
    muted: Container[str] = frozenset(),
) -> dict[str, dict[str, Any]]:
    """Product -> the friend's open group on it a feed item shows (``"group"``): the one that
    expires first among the groups the user is not in, that still have a free spot and whose
    initiator the user has not muted (``muted``: ``UserState.muted``). A group whose state read
    failed (an error in ``replies``) is skipped: the page never fails for a decoration."""
    out: dict[str, dict[str, Any]] = {}
    for i, _ in enumerate(gids):
        if 2 * i + 1 >= len(replies):
            break
        state, members = replies[2 * i], replies[2 * i + 1]
        if isinstance(state, Exception) or isinstance(members, Exception):
            continue
        try:
            group = _group(now, _flat(state), _flat(members))
        except (TypeError, ValueError, KeyError):  # a malformed state: skip the decoration
            continue
        if group is None or not _offered(group, user_id, muted):
            continue
        best = out.get(group.product_id)
        if best is None or group.expires_at < best["_expires"]:
            body = {k: v for k, v in group.to_json().items() if k not in ("status", "price")}
            out[group.product_id] = {**body, "_expires": group.expires_at}
    return {p: {k: v for k, v in g.items() if k != "_expires"} for p, g in out.items()}


_UNCANCELLABLE = {
    "full": "group {group_id!r} has succeeded: it can no longer be cancelled",
    "expired": "group {group_id!r} has expired: there is nothing to cancel",
}
_REFUSED = {
    "full": "group {group_id!r} is full: it has all the members it needs",
    "closed": "group {group_id!r} is closed and takes no members",
    "expired": "group {group_id!r} has expired: it takes no more members",
}
