"""Channel and key names, and the flags of a WebSocket URL.

This module is the one place where ws4tx turns an audience and a facility into a Redis
channel name. The Django side (publisher) and the Twisted side (server) both import it, so
they can never disagree. It is pure: no I/O, no Django, no Twisted.

The names are django-websocket-redis's, with an optional prefix::

    {prefix}:broadcast:{facility}
    {prefix}:user:{username}:{facility}
    {prefix}:group:{groupname}:{facility}
    {prefix}:session:{session_id}:{facility}

The same string is the PUBLISH channel and the key that holds the last message. A channel of
a facility with history also has a stream and a meta hash (:func:`history_keys`). One more
channel carries no messages for clients: ``{prefix}:control``, on which every node listens
for the site's commands (:mod:`ws4tx.control`).

``session_id`` is never a session key: every Redis client can list channel and key names
(``PUBSUB CHANNELS``, ``KEYS``), and a session key logs anybody into the site. It is
:func:`session_channel_id` of the key, a keyed one-way derivation both halves compute with
the site's ``SECRET_KEY``. Only the compatibility setting ``SESSION_CHANNELS = "key"`` (for
sites that share Redis names with a running ws4redis) puts raw keys there, as ws4redis did.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional
from urllib.parse import quote

from ws4tx.sharding import fnv1a_64, jump_hash, shard_of as _shard_of

BROADCAST = "broadcast"
USER = "user"
GROUP = "group"
SESSION = "session"

#: What :func:`session_channel_id` mixes into its HMAC, so that its output is good for
#: nothing but naming session channels.
SESSION_CHANNEL_PURPOSE = b"ws4tx.session-channel.v1"

#: Hex digits of a session channel id (128 bits).
SESSION_CHANNEL_ID_LENGTH = 32

#: The audiences, in the order in which a list of channels names them (broadcast first).
#: ``RedisPublisher.fetch_message(audience='any')`` looks at them the other way round: the
#: session first, then the user, the groups, broadcast last.
AUDIENCES = (BROADCAST, USER, GROUP, SESSION)

DEFAULT_PREFIX = "ws4tx"
DEFAULT_MAX_FACILITY_LENGTH = 128

# A facility may not contain ":" (it would let a client reach another audience's names),
# nor whitespace or control characters.
_FACILITY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.~/\-]*\Z")


class InvalidFacility(ValueError):
    """A facility name that ws4tx refuses (empty, too long, or with odd characters)."""


def check_facility(facility: str, max_length: int = DEFAULT_MAX_FACILITY_LENGTH) -> str:
    """Return ``facility`` if it is a valid facility name, else raise :class:`InvalidFacility`.

    Valid: 1 to ``max_length`` characters among letters, digits and ``_ . ~ / -``, not
    starting with a punctuation character.
    """
    if not facility:
        raise InvalidFacility("the facility is missing: connect to WEBSOCKET_URL + facility")
    if len(facility) > max_length:
        raise InvalidFacility(f"the facility is longer than {max_length} characters")
    if not _FACILITY.match(facility):
        raise InvalidFacility(
            "the facility may contain only letters, digits and _ . ~ / - "
            "and must start with a letter, a digit or _"
        )
    return facility


def session_channel_id(secret: str | bytes, session_key: str) -> str:
    """The name of a session in channel names: HMAC-SHA256 of ``session_key`` keyed with
    ``secret`` (the site's ``SECRET_KEY``) and :data:`SESSION_CHANNEL_PURPOSE`, as 32 hex
    digits (128 bits).

    It cannot be turned back into the session key nor computed without the secret, so a
    channel name, a Redis key or a connection token that carries it authenticates nobody.
    """
    if not session_key or not isinstance(session_key, str):
        raise ValueError("a session channel id needs a non-empty session key")
    if not secret:
        raise ValueError("a session channel id needs a non-empty secret (SECRET_KEY)")
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    message = SESSION_CHANNEL_PURPOSE + b"\0" + session_key.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:SESSION_CHANNEL_ID_LENGTH]


def _head(prefix: Optional[str]) -> str:
    return f"{prefix}:" if prefix else ""


#: The last part of the control channel's name (see :func:`control_channel`).
CONTROL = "control"


def control_channel(prefix: Optional[str]) -> str:
    """The channel every node subscribes to for the site's commands (close these
    connections, ...; :mod:`ws4tx.control`). No client ever joins it: client channels
    always name an audience, and ``control`` is none."""
    return f"{_head(prefix)}{CONTROL}"


def broadcast_channel(prefix: Optional[str], facility: str) -> str:
    """The channel (and key) of the broadcast audience of ``facility``."""
    return f"{_head(prefix)}{BROADCAST}:{facility}"


def channel(prefix: Optional[str], audience: str, facility: str, name: Optional[str] = None) -> str:
    """The channel (and key) of one audience of ``facility``.

    ``name`` is the user name, group name or session channel id (:func:`session_channel_id`,
    never a session key unless the site chose ws4redis's names); it is ignored for broadcast
    and required for the others.
    """
    if audience == BROADCAST:
        return broadcast_channel(prefix, facility)
    if audience not in AUDIENCES:
        raise ValueError(f"unknown audience {audience!r}; expected one of {AUDIENCES}")
    if not name:
        raise ValueError(f"the {audience} audience needs a name")
    return f"{_head(prefix)}{audience}:{name}:{facility}"


def channels_for(
    prefix: Optional[str],
    facility: str,
    *,
    broadcast: bool = False,
    users: Iterable[str] = (),
    groups: Iterable[str] = (),
    sessions: Iterable[str] = (),
) -> list[str]:
    """The channels (and keys) of an audience of ``facility`` given by its names: the
    broadcast channel if ``broadcast``, then one per user, group and session named, in that
    order, each channel once. The one place where an audience becomes a list of names."""
    # channel()'s names, built inline: this runs twice per subscribe frame, and its
    # generators and calls per name cost more than the names.
    head = _head(prefix)
    found = [f"{head}{BROADCAST}:{facility}"] if broadcast else []
    for audience, names in ((USER, users), (GROUP, groups), (SESSION, sessions)):
        for name in names:
            if not name:
                raise ValueError(f"the {audience} audience needs a name")
            found.append(f"{head}{audience}:{name}:{facility}")
    return found if len(found) < 2 else list(dict.fromkeys(found))


def facility_of(channel: str) -> str:
    """The facility of a channel name (its last part: a facility never holds ``:``)."""
    return channel.rpartition(":")[2]


def history_keys(prefix: Optional[str], channel: str) -> tuple[str, str]:
    """The keys of ``channel``'s history (a facility with setting ``HISTORY``): its stream
    and its meta hash (epoch and last offset), ``{prefix}:history:{<channel>}:s`` and
    ``...:m`` where ``<channel>`` is the channel's name without its prefix.

    They never name a channel or another channel's history (channels are
    ``{prefix}:<audience>:...``; the suffix tells stream from meta), and their ``{...}``
    hash tag keeps both in one Redis Cluster slot.
    """
    head = _head(prefix)
    if not channel.startswith(head):
        raise ValueError(f"{channel!r} is not a channel under the prefix {prefix!r}")
    tagged = f"{head}history:{{{channel[len(head):]}}}"
    return f"{tagged}:s", f"{tagged}:m"


#: The part of the idempotency records' names after the prefix (see :func:`once_key`).
ONCE = "once"

#: Longest idempotency key (``ws4tx.api.publish(..., key=...)``), in characters.
MAX_KEY_LENGTH = 200


def check_key(key: Any) -> str:
    """``key`` if it is an idempotency key (a non-empty str of at most
    :data:`MAX_KEY_LENGTH` characters), else ``ValueError``."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"key must be a non-empty str of at most {MAX_KEY_LENGTH} "
                         f"characters, not {key!r:.80}")
    return key


def once_key(prefix: Optional[str], channel: str, key: str) -> str:
    """The record that ``channel`` was published to with idempotency key ``key``:
    ``{prefix}:once:{<channel>}:<key>`` (``<channel>`` without its prefix), never a channel
    (``once`` is no audience); on a Redis Cluster behind the channel's partition tag, see
    :func:`cluster_once_key`."""
    head = _head(prefix)
    if not channel.startswith(head):
        raise ValueError(f"{channel!r} is not a channel under the prefix {prefix!r}")
    return f"{head}{ONCE}:{{{channel[len(head):]}}}:{key}"


def cluster_once_key(prefix: Optional[str], channel: str, key: str) -> str:
    """:func:`once_key` on a Redis Cluster: behind the tag of the channel's
    :func:`cluster_channel` name (the slot of its publish script's other keys)."""
    name = cluster_channel(channel)
    return name[:name.index("}") + 1] + once_key(prefix, channel, key)


#: The part of the presence keys' names after the prefix (see :func:`presence_keys`).
PRESENCE = "presence"


@dataclass(frozen=True)
class PresenceKeys:
    """The names of a facility's presence (setting ``PRESENCE``): ``connections``, a sorted
    set of connection ids scored by their expiry (ms, Redis time); ``info``, a hash from
    connection id to its JSON entry; ``users``, a sorted set of user names scored by the
    latest expiry of their connections; ``user_prefix`` + a user name, the sorted set of
    that user's connections; ``events``, the channel on which the nodes announce joins and
    leaves (no client can publish on it: it names no audience); ``audiences``, a hash from
    connection id to its audiences (:func:`presence_audience`, space-separated);
    ``audience_prefix`` + an audience, the head of that audience's own connections
    (``:c``), users (``:u``) and user sets (``:u:`` + user name)."""

    connections: str
    info: str
    users: str
    user_prefix: str
    events: str
    audiences: str = ""
    audience_prefix: str = ""

    def audience(self, audience: str) -> str:
        """The head of the keys of one audience (see ``audience_prefix``)."""
        return f"{self.audience_prefix}{audience}"


def presence_keys(prefix: Optional[str], facility: str) -> PresenceKeys:
    """The keys and channel of ``facility``'s presence, ``{prefix}:presence:{<facility>}:c``
    and so on: their ``{...}`` hash tag keeps them in one Redis Cluster slot, and they
    never name a client channel (those are ``{prefix}:<audience>:...``)."""
    tagged = f"{_head(prefix)}{PRESENCE}:{{{facility}}}"
    return PresenceKeys(f"{tagged}:c", f"{tagged}:i", f"{tagged}:u", f"{tagged}:u:",
                        f"{tagged}:e", f"{tagged}:ia", f"{tagged}:a:")


def presence_audience(audience: str, name: Optional[str] = None) -> str:
    """The name of one audience in a facility's presence: ``broadcast``, or
    ``user:<name>``, ``group:<name>``, ``session:<id>`` with the name %-quoted (it then
    holds no ``:`` nor space, so that no two audiences' keys meet)."""
    if audience == BROADCAST:
        return BROADCAST
    if audience not in AUDIENCES or not name:
        raise ValueError(f"no presence audience {audience!r} with name {name!r}")
    return f"{audience}:{quote(name, safe='')}"


def presence_audience_of(prefix: Optional[str], channel: str) -> Optional[str]:
    """The presence audience of a client channel (:func:`channel`), or None for another
    channel."""
    head = _head(prefix)
    if not channel.startswith(head):
        return None
    audience, _, rest = channel[len(head):].partition(":")
    if audience == BROADCAST:
        return BROADCAST
    name, _, facility = rest.rpartition(":")
    if audience not in AUDIENCES or not name or not facility:
        return None
    return presence_audience(audience, name)


#: The part of the node registry's keys after the prefix (see :func:`nodes_keys`).
NODES = "nodes"
#: The part of reply channels' names after the prefix (see :func:`reply_channel`).
REPLY = "reply"


def nodes_keys(prefix: Optional[str]) -> PresenceKeys:
    """The keys of the node registry: every live node keeps itself there (with an expiry
    it refreshes) as a connection of a presence, so that a query gathered over the control
    channel knows which nodes should answer. ``{prefix}:nodes:c`` and so on: no client
    channel (``{prefix}:<audience>:...``) and no facility's presence. The keys carry
    :func:`control_tag` (``{prefix}:nodes:{<tag>}:c``...), so that on a Redis Cluster they
    share the control channel's slot."""
    head = f"{_head(prefix)}{NODES}:{{{control_tag(prefix)}}}"
    return PresenceKeys(f"{head}:c", f"{head}:i", f"{head}:u", f"{head}:u:", f"{head}:e",
                        f"{head}:ia", f"{head}:a:")


#: The middle part of a user's revocation counter key (see :func:`revocation_key`).
REVOKED = "revoked"


def revocation_key(prefix: Optional[str], user: str) -> str:
    """The key of ``user``'s revocation counter: bumped (``INCR``) when the user logs out,
    changes password, is deactivated or deleted; a resume token (:mod:`ws4tx._resume`)
    holds the value it had and is refused once it moved. Both sides route it with this
    name (its shard, its Cluster slot)."""
    if not user:
        raise ValueError("a revocation counter belongs to a user")
    return f"{_head(prefix)}{REVOKED}:{user}"


def reply_channel(prefix: Optional[str], token: str) -> str:
    """The channel on which the nodes answer one query (``token``: unique to it, made of
    letters and digits): it names no audience, so no client joins or publishes on it."""
    if not token.isalnum():
        raise ValueError(f"a reply token is letters and digits, not {token!r}")
    return f"{_head(prefix)}{REPLY}:{token}"


def is_reply_channel(prefix: Optional[str], channel: str) -> bool:
    """Whether ``channel`` is a reply channel (:func:`reply_channel`) under ``prefix``:
    the only channels a node answers a query on."""
    head = f"{_head(prefix)}{REPLY}:"
    token = channel[len(head):]
    return channel.startswith(head) and 0 < len(token) <= 64 and token.isalnum() \
        and token.isascii()


@dataclass(frozen=True)
class Identity:
    """Who is behind a connection: the only names a client's channels are made from.

    ``user`` is the user name (None when anonymous), ``groups`` the names of the user's
    groups, ``session`` the name of the session in channel names (None when there is no
    session): its :func:`session_channel_id`, never the session key itself (except on a
    site that set ``SESSION_CHANNELS = "key"`` for ws4redis's names).
    """

    user: Optional[str] = None
    groups: frozenset[str] = field(default_factory=frozenset)
    session: Optional[str] = None

    def names(self, audience: str) -> tuple[str, ...]:
        """The names this identity has in ``audience`` (empty when it has none)."""
        if audience == USER:
            return (self.user,) if self.user else ()
        if audience == GROUP:
            return tuple(sorted(self.groups)) if self.user else ()
        if audience == SESSION:
            return (self.session,) if self.session else ()
        raise ValueError(f"no names in audience {audience!r}")


ANONYMOUS = Identity()


@dataclass(frozen=True)
class Flags:
    """The flags of a WebSocket URL: which audiences to subscribe to and publish to."""

    subscribe: frozenset[str] = frozenset()
    publish: frozenset[str] = frozenset()
    echo: bool = False


def parse_flags(query: str) -> Flags:
    """Parse the query string of a ws4redis URL (``subscribe-broadcast&publish-user&echo``).

    Flags are case-insensitive and in any order; a flag may carry a value (``echo=1``), which
    is ignored; unknown flags are ignored.
    """
    subscribe: set[str] = set()
    publish: set[str] = set()
    echo = False
    for item in query.split("&"):
        flag = item.split("=", 1)[0].strip().lower()
        if flag == "echo":
            echo = True
            continue
        action, _, audience = flag.partition("-")
        if audience in AUDIENCES:
            if action == "subscribe":
                subscribe.add(audience)
            elif action == "publish":
                publish.add(audience)
    key = (frozenset(subscribe), frozenset(publish), echo)
    flags = _FLAGS.get(key)
    if flags is None:
        flags = _FLAGS[key] = Flags(*key)
    return flags


#: Every Flags parse_flags made, by value: one of at most 512 (the sets of audiences to
#: subscribe and to publish, echo or not), which every connection whose URL has those
#: flags shares instead of keeping three objects of its own (about 500 bytes).
_FLAGS: dict[tuple[frozenset[str], frozenset[str], bool], Flags] = {}


def flag_names(flags: Flags) -> list[str]:
    """The flags as ws4redis names them (``subscribe-broadcast``, ..., ``echo``)."""
    names = [f"subscribe-{a}" for a in AUDIENCES if a in flags.subscribe]
    names += [f"publish-{a}" for a in AUDIENCES if a in flags.publish]
    return names + ["echo"] if flags.echo else names


def audience_channels(
    prefix: Optional[str], facility: str, audiences: Iterable[str], identity: Identity
) -> list[str]:
    """The channels of ``audiences`` for ``identity``: its own names only, never chosen ones.

    An audience the identity has no name in (an anonymous user's ``user`` audience, say)
    gives no channel.
    """
    chosen = frozenset(audiences)

    def names(audience: str) -> tuple[str, ...]:
        return identity.names(audience) if audience in chosen else ()

    return channels_for(prefix, facility, broadcast=BROADCAST in chosen, users=names(USER),
                        groups=names(GROUP), sessions=names(SESSION))


#: Hash-tag partitions of a Redis Cluster's channels (see :func:`cluster_channel`). Every
#: node and Django process must use the same number: it is part of the names.
CLUSTER_PARTITIONS = 128

#: The hash tag of each partition, precomputed (as Centrifugo does) so that partition
#: ``i``'s tag is in slot ``128 * i + 64`` (``CLUSTER KEYSLOT``): the 128 partitions lie
#: evenly over the 16384 slots, one per 128, and any even split of the slots among 3 to
#: 12 primaries gives each primary its share of partitions within one (the CRC16 of
#: ``p0``...``p127``, the tags before, gave 13 to 26 per primary of six). Each is the
#: first of 0, 1, 2, ... written in base 36 (digits ``a``-``z``, ``0``-``9``) whose CRC16
#: lands on its slot; ``test/test_cluster.py`` checks them. Changing them renames every
#: channel on a cluster (docs/scaling.md).
CLUSTER_TAGS = (
    "qfs", "dqe", "bg5", "fr3", "ptr", "ecd", "cu4", "2jb", "qb3", "l85", "bcu", "fvs",
    "pp2", "te4", "cqt", "x3", "dhn", "htp", "fk8", "7tn", "ezo", "ifq", "ex", "zg7",
    "le6", "hp0", "fox", "jsf", "mw7", "ib1", "g9q", "kag", "h8q", "ubw", "bv7", "fc1",
    "inx", "erf", "cd6", "mq", "hx9", "uf7", "brw", "fgq", "ij8", "tt6", "kin", "i1",
    "dyl", "her", "3pj", "7el", "ekm", "iws", "tz", "c95", "lt4", "ha2", "nwb", "jbd",
    "mf5", "is3", "42", "kpe", "sd5", "wq3", "hlk", "dpu", "k94", "9k", "pub", "ebt",
    "bbe", "fwc", "5kc", "dt5", "cpd", "geb", "4yb", "ef4", "nc0", "jv6", "ukn", "h1h",
    "dh", "kd7", "mrg", "iga", "fnh", "jrv", "1gn", "ys0", "g8a", "cio", "0uo", "xa1",
    "su7", "nk9", "h9a", "daw", "rg6", "la", "ioh", "esv", "bsg", "ffa", "5za", "de7",
    "caf", "g0h", "xi8", "ew6", "nr2", "jg4", "lqd", "hdb", "uj", "ku5", "mce", "ivc",
    "nvr", "bjl", "d84", "yb2", "gmk", "cxm", "0dm", "xp3",
)
assert len(CLUSTER_TAGS) == CLUSTER_PARTITIONS


def cluster_partition(channel: str) -> int:
    """The partition (0 to :data:`CLUSTER_PARTITIONS` - 1) of ``channel`` on a cluster:
    Jump hash of its FNV-1a hash."""
    return jump_hash(fnv1a_64(channel.encode("utf-8")), CLUSTER_PARTITIONS)


def cluster_channel(channel: str) -> str:
    """The name ``channel`` has on a Redis Cluster (sharded pub/sub, and its stored
    message's key): its partition's tag (:data:`CLUSTER_TAGS`) in braces + the channel.
    The tag comes first, so it is the hash tag whatever braces the channel holds: the
    channels of one partition share one slot, and one ``SSUBSCRIBE`` can take many of
    them. The node's own channels have :func:`cluster_name`."""
    return f"{{{CLUSTER_TAGS[cluster_partition(channel)]}}}{channel}"


def control_tag(prefix: Optional[str]) -> str:
    """The hash tag of the node registry, the control channel and the reply channels on a
    Redis Cluster: the partition tag of the control channel, so that they all share one
    slot (one primary holds the registry and carries every command and answer)."""
    return CLUSTER_TAGS[cluster_partition(control_channel(prefix))]


def is_control_name(prefix: Optional[str], name: str) -> bool:
    """Whether ``name`` is the control channel, a reply channel or a key of the node
    registry under ``prefix``: the names that live together (on the first shard of
    several, in one slot of a cluster) whatever their hash."""
    head = _head(prefix)
    if not name.startswith(head):
        return False
    rest = name[len(head):]
    return rest == CONTROL or rest.startswith(f"{REPLY}:") or rest.startswith(f"{NODES}:")


def cluster_name(prefix: Optional[str], channel: str) -> str:
    """The name channel ``channel`` has on a Redis Cluster: :func:`cluster_channel`, but
    the control and reply channels are behind :func:`control_tag` (the node registry's
    slot)."""
    if is_control_name(prefix, channel):
        return f"{{{control_tag(prefix)}}}{channel}"
    return cluster_channel(channel)


def shard_of(prefix: Optional[str], name: str, shards: int) -> int:
    """The index of the shard (of ``shards`` independent Redis servers) that holds
    channel or key ``name``: the first for the control and reply channels and the node
    registry (:func:`is_control_name`, so that the Django side asks where the nodes
    answer), else :func:`ws4tx.sharding.shard_of`. Both halves place names with this."""
    if shards == 1 or is_control_name(prefix, name):
        return 0
    return _shard_of(prefix, name, shards)


def channel_of_cluster_channel(name: str) -> str:
    """The channel a :func:`cluster_channel` name stands for (``name`` itself when it is
    not one)."""
    if name.startswith("{"):
        end = name.find("}")
        if end != -1:
            return name[end + 1:]
    return name


def cluster_history_keys(prefix: Optional[str], channel: str) -> tuple[str, str]:
    """The keys of ``channel``'s history on a Redis Cluster: :func:`history_keys` behind
    the tag of the channel's :func:`cluster_channel` name, so that the publish script's
    keys (stream, meta, stored message) and its channel are on one slot."""
    name = cluster_channel(channel)
    tag = name[:name.index("}") + 1]
    stream, meta = history_keys(prefix, channel)
    return tag + stream, tag + meta

