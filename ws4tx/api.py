"""Plain functions to push from Django: the API for new code.

::

    from ws4tx import api

    api.publish("foobar", "Hello, everybody", broadcast=True)
    api.emit("orders", "order.paid", {"id": 7}, users=[order.owner], on_commit=True)

``on_commit=True`` publishes only once the current database transaction commits (and not at
all if it rolls back): a message that announces a database change must not reach a browser
that would then read the database before the change is there. Outside a transaction it
publishes at once. A publish or emit with ``on_commit=True`` is written in the transaction
to ws4tx's outbox table (``ws4tx`` in ``INSTALLED_APPS``, ``migrate``), so that what Redis
could not take at the commit is sent later by ``manage.py ws4tx_relay``, once
(:mod:`ws4tx._outbox`). The audience (``SELF`` included) is resolved when the function is called.

:func:`disconnect` closes open connections on every ws4tx node: those of a user whose
password changed, of a session that logged out (ws4tx does both by itself, see
``DISCONNECT_ON_LOGOUT``), or whatever the site decides; :func:`unsubscribe` makes them
leave channels without closing::

    api.disconnect(users=["john"], reason="account suspended")
    api.unsubscribe(users=["john"], audiences=["group"], groups=["staff"])
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional

from ws4tx import (
    _commit,
    _django_settings,
    _ops,
    _prepare,
    closecodes,
    control,
    naming,
    presence as _presence,
)
from ws4tx.history import History, Position, Publication
from ws4tx.redis_store import (
    SELF,
    NotStored,
    PublishError,
    RedisMessage,
    RedisStore,
    Sent,
)

__all__ = [
    "SELF",
    "History",
    "NotStored",
    "Position",
    "Publication",
    "PublishError",
    "RedisMessage",
    "Sent",
    "adisconnect",
    "aemit",
    "ahistory",
    "aposition",
    "apresence",
    "apresence_stats",
    "apublish",
    "asubscribe",
    "aunsubscribe",
    "channels",
    "disconnect",
    "emit",
    "grant",
    "history",
    "info",
    "position",
    "presence",
    "presence_stats",
    "publish",
    "subscribe",
    "unsubscribe",
]


_publisher = _prepare.publisher


def publish(
    facility: str,
    message: Any,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
    expire: Optional[int] = None,
    on_commit: bool = False,
    key: Optional[str] = None,
) -> Optional[Sent]:
    """Publish ``message`` (str or bytes) to an audience of ``facility``, storing it for
    ``expire`` seconds (default: setting ``EXPIRE``; 0 stores nothing).

    Returns the number of Redis subscribers that got it (a :class:`Sent`, an int that
    also has the message's ``positions`` on channels with history), or None when
    ``on_commit`` defers it. With ``key`` (an idempotency key, e.g. ``"order-42-paid"``)
    a publish of the same key to the same channels within their history's ttl (at least a
    day) stores and delivers nothing and returns the first
    publish's positions, with ``repeated`` True: retrying after a timeout is safe.

    Raises :class:`PublishError` when Redis is unreachable or refused to publish (with
    ``on_commit`` the message stays in the outbox instead, logged, for ``ws4tx_relay``),
    and :class:`NotStored` (with ``.receivers``) when the message was delivered but could
    not be stored: do not retry that one.
    """
    prepared = _prepare.publish(facility, message, broadcast, users, groups, sessions, request,
                                expire, key)
    return _commit.publish(prepared, on_commit)


def emit(
    facility: str,
    event: str,
    data: Any = None,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
    expire: int = 0,
    on_commit: bool = False,
    key: Optional[str] = None,
) -> Optional[Sent]:
    """Send the event ``event`` with JSON ``data`` to an audience of ``facility`` (clients
    of ``ws4tx.js`` receive it with ``on(event, ...)``); ``expire`` > 0 also stores it.

    Returns as :func:`publish` does; ``key`` is an idempotency key as there.
    """
    prepared = _prepare.emit(facility, event, data, broadcast, users, groups, sessions,
                             request, expire, key)
    return _commit.publish(prepared, on_commit)


def disconnect(
    *,
    users: Any = (),
    sessions: Any = (),
    facility: Optional[str] = None,
    code: int = closecodes.CLOSED_BY_SITE,
    reason: str = control.DEFAULT_REASON,
    request: Any = None,
    on_commit: bool = False,
) -> Optional[int]:
    """Close, on every ws4tx node, every connection of ``users`` (names or User objects)
    or of ``sessions`` (Django session keys, turned into session channel ids as the
    publishers do), only those to ``facility`` when given, with close ``code`` (default
    4001, :data:`ws4tx.closecodes.CLOSED_BY_SITE`) and ``reason`` (at most 120 UTF-8
    bytes). ``SELF`` in a list is the ``request``'s own user or session.

    A user's connections are closed however they authenticated (cookie or token). Clients
    of ws4tx.js reconnect after 4001, and the new connection is authenticated anew.
    Returns how many nodes got the command (each closes its own matching connections), or
    None when ``on_commit`` defers it; raises :class:`PublishError` when Redis is
    unreachable and ValueError for bad arguments.
    """
    command = _prepare.disconnect(users, sessions, facility, code, reason, request)
    return _commit.command(command, on_commit)


def unsubscribe(
    *,
    users: Any = (),
    sessions: Any = (),
    facility: Optional[str] = None,
    audiences: Any = naming.AUDIENCES,
    groups: Any = None,
    reason: str = "",
    request: Any = None,
    on_commit: bool = False,
) -> Optional[int]:
    """Make, on every ws4tx node, every connection of ``users`` or ``sessions`` (as for
    :func:`disconnect`; only those to ``facility`` when given) leave its channels of
    ``audiences`` (some of ``"broadcast"``, ``"user"``, ``"group"``, ``"session"``; all by
    default), and of the group audience only the channels of ``groups`` (names or Group
    objects) when given. The connections stay open: they no longer receive from (nor
    publish to) those channels. Event clients get a ``ws4tx.unsubscribed`` event with
    ``{"audiences", "groups", "reason"}``; raw clients are not told.

    A connection that reconnects is admitted anew (its identity and the site's hooks
    decide its channels): remove the user from the group, or refuse the channel in
    ``ALLOWED_CHANNELS``, for it to last. ``reason`` is at most 120 UTF-8 bytes. Returns
    and raises as :func:`disconnect`::

        api.unsubscribe(users=["john"], facility="chat", audiences=["group"],
                        groups=["staff"], reason="no longer staff")
    """
    command = _prepare.unsubscribe(users, sessions, facility, audiences, groups, reason,
                                   request)
    return _commit.command(command, on_commit)


def subscribe(
    facility: str,
    *,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    audiences: Any = naming.AUDIENCES,
    reason: str = "",
    request: Any = None,
    on_commit: bool = False,
) -> Optional[int]:
    """Make, on every ws4tx node, every open event connection (``ws4tx.v1``) of ``users``
    (names or User objects), of members of ``groups`` (names or Group objects) or of
    ``sessions`` (session keys) subscribe ``facility``'s channels of ``audiences`` (some
    of ``"broadcast"``, ``"user"``, ``"group"``, ``"session"``; all by default): the
    connection's own names, and of the group audience only the channels of ``groups``
    when given. ``SELF`` is the ``request``'s own. The counterpart of :func:`unsubscribe`.

    The site decides: no authentication hook runs, the facility's name is checked and
    each connection's ``MAX_SUBSCRIPTIONS`` still bounds it. A connection gets the
    channels it does not have as one subscription (as a ``subscribe`` frame would add,
    with presence and history's positions), then a ``ws4tx.subscribed`` event with
    ``{"facility", "audiences", "channels", "reason"}``; raw (ws4redis) connections are
    left alone. Only the connections open now: a client that reconnects is admitted anew
    (it subscribes again by itself). Returns and raises as :func:`disconnect`::

        api.subscribe("notes", users=["john"], audiences=["user"], reason="new thread")
    """
    command = _prepare.subscribe(facility, users, sessions, groups, audiences, reason,
                                 request)
    return _commit.command(command, on_commit)


def grant(request: Any, facility: str, audiences: Any, *, groups: Any = None,
          max_age: Optional[float] = None) -> str:
    """A signed, short-lived grant of ``facility``'s ``audiences`` (some of
    ``"broadcast"``, ``"user"``, ``"group"``, ``"session"``) for the ``request``'s
    identity, of its groups (or of ``groups`` only, names or Group objects), valid
    ``max_age`` seconds (default ``TOKEN_MAX_AGE``). The client puts it in a
    ``subscribe`` frame (``grant``), which the server then admits without asking the
    database. ``ALLOWED_CHANNELS`` runs now: an audience it drops is not granted, its
    ``PermissionDenied`` is raised. See :mod:`ws4tx.grants`::

        api.grant(request, "notes", ["broadcast", "user"])
    """
    from ws4tx import grants

    chosen = None if groups is None else [getattr(g, "name", g) for g in groups]
    return grants.grant_for_request(request, facility, audiences, groups=chosen,
                                    max_age=max_age)


def _send_control(connection: Any, cluster: bool, prefix: Optional[str],
                  payload: bytes) -> int:
    """PUBLISH (SPUBLISH on a cluster) ``payload`` on the control channel; how many
    nodes got it."""
    channel = naming.control_channel(prefix)
    if cluster:
        return int(connection.spublish(naming.cluster_name(prefix, channel), payload))
    return int(connection.publish(channel, payload))


def channels(pattern: str = "*", *, timeout: float = control.DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The channels with clients on any ws4tx node whose names match ``pattern``
    (``fnmatch`` on the whole name, e.g. ``"ws4tx:broadcast:*"``), with how many clients
    each has: ``{"channels": {channel: clients}, "nodes": [ids that answered],
    "missing": [ids]}``.

    Every node is asked over the control channel and answers on a reply channel of this
    call's own. The call returns once every node that got the question answered, or after
    ``timeout`` seconds: a node of the registry (every node keeps itself there, for
    :data:`ws4tx.control.NODE_TTL` seconds after its last refresh) that did not answer is
    listed in ``missing``, not waited for. Raises :class:`PublishError` when Redis cannot
    be reached and ValueError for a bad pattern.
    """
    return _gather(control.CHANNELS, pattern, timeout)


def info(*, timeout: float = control.DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Every ws4tx node's clients, channels, subscriptions, versions, start time and
    uptime (seconds), host, process id and Redis state, gathered as :func:`channels` is:
    ``{"nodes": [{"id", "clients", "channels", "subscriptions", "started", "uptime",
    "versions", "hostname", "pid", "redis"}, ...], "missing": [ids]}``."""
    return _gather(control.INFO, "*", timeout)


def _gather(op: str, pattern: str, timeout: float) -> dict[str, Any]:
    """Ask every node on the control channel; gather the answers for ``timeout`` s. The
    registry, the control channel and the reply channel are on the first shard of
    several, in one slot of a cluster (sharded pub/sub there)."""
    prefix = _django_settings.prefix()
    reply = naming.reply_channel(prefix, uuid.uuid4().hex)
    query = control.query(op, reply, pattern)
    store = RedisStore()
    cluster = store._cluster()(None)

    def run(connection: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        script = connection.register_script(_presence.script(_presence.READ_SCRIPT))
        keys, args = _presence.read_args(naming.nodes_keys(prefix), "list")
        expected = [e.id for e in _presence.parse_entries(script(keys=keys, args=args))]
        answers: dict[str, Any] = {}
        pubsub = connection.pubsub()
        if cluster:
            listen = naming.cluster_name(prefix, reply)
            pubsub.ssubscribe(listen)
            kinds = ("ssubscribe", "smessage")

            def next_message(left: float) -> Any:
                return pubsub.get_sharded_message(timeout=left)
        else:
            pubsub.subscribe(reply)
            kinds = ("subscribe", "message")

            def next_message(left: float) -> Any:
                return pubsub.get_message(timeout=left)
        try:
            # The answers must not come before the subscription is in place.
            while (message := next_message(max(0.0, deadline - time.monotonic()))
                   ) is None or _kind(message) != kinds[0]:
                if time.monotonic() >= deadline:
                    return control.gathered(op, answers, expected)
            receivers = _send_control(connection, cluster, prefix, control.encode(query))
            while len(answers) < receivers:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                message = next_message(left)
                if message is not None and _kind(message) == kinds[1]:
                    try:
                        node, data = control.decode_answer(message["data"])
                    except control.InvalidCommand:
                        continue
                    answers[node] = data
        finally:
            pubsub.close()
        return control.gathered(op, answers, expected)

    return store._call("ask the nodes through", run, naming.control_channel(prefix))


def _kind(message: dict[str, Any]) -> str:
    kind = message["type"]
    return kind.decode() if isinstance(kind, bytes) else str(kind)


def history(
    facility: str,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
    since: Optional[int] = None,
    limit: Optional[int] = None,
) -> History:
    """The history of ONE channel of ``facility`` (a facility with setting ``HISTORY``):
    ``broadcast=True``, or one user, group or session (``SELF`` with ``request``).

    Without ``since``: its last ``limit`` messages (all it keeps without a limit); with
    ``since``: the first ``limit`` messages after that offset. Oldest first, as
    :class:`Publication` (offset, payload), in a :class:`History` that also has the
    channel's current epoch and last offset: a client that saw offset N of epoch E has
    missed nothing if ``since=N`` returns epoch E and offsets N+1, N+2, ... up to the
    last. Raises ``ValueError`` (no history, several channels, bad ``since``/``limit``)
    and :class:`PublishError` when Redis cannot be read.
    """
    publisher = _publisher(facility, broadcast, users, groups, sessions, request)
    return publisher.history(since=since, limit=limit)


def position(
    facility: str,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
) -> dict[str, Position]:
    """Where the channels of an audience of ``facility`` (a facility with setting
    ``HISTORY``) stand: ``{channel: Position(offset, epoch)}``, the epoch and offset of
    each channel's last message, read without the messages in one round trip (per shard;
    per channel on a cluster). A page rendered with it hands it to ws4tx.js as its
    ``positions`` (the template tag ``{% ws4tx_position %}`` renders it): the client then
    recovers every message published after the page was rendered, once each.

    A channel never published to gets its epoch here (offset 0), which its first publish
    keeps. Raises ``ValueError`` for a facility without history or no audience, and
    :class:`PublishError` when Redis cannot be read.
    """
    return _publisher(facility, broadcast, users, groups, sessions, request).positions_now()


def _read_presence(facility: str, what: str, broadcast: bool, users: Any, groups: Any,
                   sessions: Any, request: Any) -> Any:
    keys, args = _prepare.presence(facility, what, broadcast, users, groups, sessions,
                                   request)
    store = RedisStore()
    return _ops.run(_ops.presence(keys, args), store._execute)


def presence(
    facility: str,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
) -> list[dict[str, Any]]:
    """Who is connected to ``facility`` (a facility with setting ``PRESENCE``) on any
    node: one ``{"id", "user", "since"}`` per connection (``user`` None when anonymous,
    ``since`` the Unix time it connected, and ``info`` when the facility's handler gave
    some: see ``EventHandler.presence_info``), oldest first.

    With ONE audience (``broadcast=True``, or one of ``users``, ``groups``, ``sessions``:
    names, objects or ``SELF`` with ``request``, as for :func:`publish`), only the
    connections that listen to that audience's channel: ``groups=["staff"]`` lists the
    connections subscribed to the staff group's channel of ``facility``.
    The connections of a node that died are gone within ``PRESENCE_TTL`` seconds. Raises
    ``ValueError`` for a facility without presence or several audiences, and
    :class:`PublishError` when Redis cannot be read.
    """
    read = _read_presence(facility, "list", broadcast, users, groups, sessions, request)
    return _prepare.presence_list(read)


def presence_stats(
    facility: str,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
) -> dict[str, int]:
    """How many connections ``facility``'s presence (or that of ONE of its audiences, as
    for :func:`presence`) has (``clients``) and how many distinct users they belong to
    (``users``; anonymous connections count in ``clients`` only), in time logarithmic in
    its size; errors as :func:`presence`."""
    read = _read_presence(facility, "stats", broadcast, users, groups, sessions, request)
    return _prepare.presence_stats(read)


# The asynchronous twins (same arguments, results and errors; see ws4tx._async_api).
from ws4tx._async_api import (  # noqa: E402
    adisconnect,
    aemit,
    ahistory,
    aposition,
    apresence,
    apresence_stats,
    apublish,
    asubscribe,
    aunsubscribe,
)
