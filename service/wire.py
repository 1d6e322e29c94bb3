"""One round trip of raw Redis commands: packed by hiredis into one write, the replies read
raw off a pooled connection. Every page's reads and writes and every event batch's transaction
go through it: redis-py's ``Pipeline`` spends three times the client CPU on the same work
(command stack, per-argument encoding, response callbacks).
"""

from __future__ import annotations

from typing import Any

from hiredis import pack_command
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from service.errors import is_full

Command = tuple[Any, ...]


def round_trip(
    r: Any, commands: list[Command], *, full_ok: bool = False, optional: int = 0
) -> list[Any]:
    """The raw replies of ``commands`` (e.g. ``("GET", key)``), sent in one round trip.

    On a standalone server: one packed write on a pooled connection, then each reply read as
    it comes (no response callbacks: an ``SMEMBERS`` reply is a list, a ``WITHSCORES`` one
    flat). A connection error or timeout is retried as the client's ``retry`` says, on a fresh
    connection; an error reply raises :class:`redis.ResponseError` once every reply is read.
    With ``full_ok``, a write Redis refused because it is full (an ``OOM`` error reply, see
    :func:`service.errors.is_full`) is returned in its reply's place instead: the reads of the
    same round trip still count. The error replies of the last ``optional`` commands (reads
    the caller can do without) are returned in their place too. On a cluster: a redis-py
    pipeline, which splits the commands by node.
    """
    first_optional = len(commands) - optional
    if isinstance(r, RedisCluster):
        pipe = r.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        if not full_ok and not optional:
            return list(pipe.execute())
        replies = list(pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, Exception) and i < first_optional:
                if not (full_ok and is_full(reply)):
                    raise reply
        return replies
    packed = [b"".join([pack_command(cmd) for cmd in commands])]
    pool = r.connection_pool
    conn = pool.get_connection()

    def send_and_read() -> list[Any]:
        conn.send_packed_command(packed)
        replies = []
        for _ in commands:
            try:
                replies.append(conn.read_response(disable_decoding=True))
            except ResponseError as e:  # the reply was consumed: keep reading the others
                replies.append(e)
        return replies

    try:
        replies = conn.retry.call_with_retry(send_and_read, lambda _: conn.disconnect())
    except BaseException:
        conn.disconnect()  # never hand back a connection with replies left unread
        raise
    finally:
        pool.release(conn)
    for i, reply in enumerate(replies):
        if isinstance(reply, ResponseError) and i < first_optional:
            if not (full_ok and is_full(reply)):
                raise reply
    return replies
