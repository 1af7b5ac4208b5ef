"""Where Redis is: one value that both halves of ws4tx understand.

A :class:`RedisAddress` is parsed from a URL (``redis://``, ``rediss://``, ``unix://``,
``redis+sentinel://``, ``rediss+sentinel://``) or from a ws4redis ``CONNECTION`` dictionary,
and turned back into the same URL. redis-py (the Django side) accepts the plain forms as
they are; both halves build their Sentinel clients from the fields. Pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

DEFAULT_URL = "redis://localhost:6379/0"

#: The port of a Sentinel whose address names none.
SENTINEL_PORT = 26379

#: The query parameters a ``redis+sentinel://`` URL may carry.
SENTINEL_PARAMETERS = frozenset({"db", "sentinel_password"})


class InvalidRedisAddress(ValueError):
    """A Redis URL or connection dictionary that cannot be used."""


@dataclass(frozen=True)
class RedisAddress:
    """A Redis server and database, with optional credentials and TLS.

    With :attr:`sentinels` set, the server is whichever the Sentinels name as the master
    :attr:`master_name` (``host`` and ``port`` are then unused): ``username``/``password``
    are the master's, :attr:`sentinel_password` the Sentinels' (none by default), and
    ``ssl`` applies to both.
    """

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    unix_socket_path: Optional[str] = None
    ssl: bool = False
    #: (host, port) of each Sentinel, in the order given.
    sentinels: tuple[tuple[str, int], ...] = ()
    #: The name the Sentinels monitor the master under.
    master_name: Optional[str] = None
    #: The Sentinels' own password (``requirepass`` in sentinel.conf), if any.
    sentinel_password: Optional[str] = None
    #: (host, port) of the Redis Cluster nodes to discover the cluster from (a
    #: ``redis+cluster://`` URL); ``host``, ``port`` and ``db`` are then unused.
    cluster_nodes: tuple[tuple[str, int], ...] = ()

    @property
    def is_sentinel(self) -> bool:
        """Whether the master is found through Sentinels."""
        return bool(self.sentinels)

    @property
    def is_cluster(self) -> bool:
        """Whether this is a Redis Cluster (sharded pub/sub; see docs/scaling.md)."""
        return bool(self.cluster_nodes)

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Parse ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS),
        ``unix:///path/redis.sock[?db=N]`` or
        ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/MASTER_NAME
        [?db=N&sentinel_password=...]`` (``rediss+sentinel://``: TLS) or
        ``redis+cluster://[[user]:password@]host[:port][,host[:port]...]``."""
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme == "redis+cluster":
                return cls._from_cluster_url(parts.netloc, parts.path, parts.query)
            if scheme in ("redis+sentinel", "rediss+sentinel"):
                return cls._from_sentinel_url(parts.netloc, parts.path, parts.query,
                                              ssl=scheme == "rediss+sentinel")
            query = parse_qs(parts.query)
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password is not None else None
            if scheme == "unix":
                if not parts.path:
                    raise InvalidRedisAddress("a unix:// URL needs a socket path")
                return cls(
                    db=_db(query.get("db", ["0"])[0]),
                    username=username,
                    password=password,
                    unix_socket_path=unquote(parts.path),
                )
            if scheme not in ("redis", "rediss"):
                raise InvalidRedisAddress(
                    f"unknown scheme {parts.scheme!r}: use redis://, rediss://, unix://, "
                    "redis+sentinel://, rediss+sentinel://, redis+cluster:// or (for the "
                    "server) embedded"
                )
            path = parts.path.strip("/")
            return cls(
                host=parts.hostname or "localhost",
                port=parts.port or 6379,
                db=_db(path or query.get("db", ["0"])[0]),
                username=username,
                password=password,
                ssl=scheme == "rediss",
            )
        except InvalidRedisAddress:
            raise
        except ValueError as e:  # a bad port, say
            raise InvalidRedisAddress(str(e)) from None

    @classmethod
    def _from_cluster_url(cls, netloc: str, path: str, query: str) -> RedisAddress:
        username, password, hosts = _credentials(netloc)
        if not hosts:
            raise InvalidRedisAddress(
                "a redis+cluster:// URL needs the address of one or more nodes: "
                "redis+cluster://host:6379[,host:6379...]")
        if path.strip("/") not in ("", "0") or query:
            raise InvalidRedisAddress("a Redis Cluster has only database 0 and a "
                                      "redis+cluster:// URL takes no parameters")
        nodes = tuple(_sentinel(item, CLUSTER_PORT, "cluster node")
                      for item in hosts.split(","))
        return cls(username=username, password=password, cluster_nodes=nodes)

    @classmethod
    def _from_sentinel_url(cls, netloc: str, path: str, query_string: str,
                           ssl: bool) -> RedisAddress:
        username, password, hosts = _credentials(netloc)
        if not hosts:
            raise InvalidRedisAddress(
                "a redis+sentinel:// URL needs the Sentinels' addresses: "
                "redis+sentinel://host:26379[,host:26379...]/MASTER_NAME")
        sentinels = tuple(_sentinel(item) for item in hosts.split(","))
        name, slash, db_in_path = unquote(path).strip("/").partition("/")
        if not name:
            raise InvalidRedisAddress(
                "a redis+sentinel:// URL needs the master's name as its path: "
                "redis+sentinel://host:26379/MASTER_NAME")
        query = parse_qs(query_string, keep_blank_values=True)
        unknown = set(query) - SENTINEL_PARAMETERS
        if unknown:
            raise InvalidRedisAddress(
                f"unknown redis+sentinel:// parameter(s) {sorted(unknown)}: "
                f"use {sorted(SENTINEL_PARAMETERS)}")
        if slash and "db" in query:
            raise InvalidRedisAddress(
                "give the database either in the path (/MASTER_NAME/N) or as ?db=N, not both")
        return cls(
            db=_db(db_in_path if slash else query.get("db", ["0"])[0]),
            username=username,
            password=password,
            ssl=ssl,
            sentinels=sentinels,
            master_name=name,
            sentinel_password=query.get("sentinel_password", [""])[0] or None,
        )

    @classmethod
    def from_connection(cls, connection: Mapping[str, Any]) -> RedisAddress:
        """Read a ws4redis ``CONNECTION`` dictionary (``host``, ``port``, ``db``,
        ``username``, ``password``, ``unix_socket_path``, ``ssl``)."""
        unknown = set(connection) - {
            "host", "port", "db", "username", "password", "unix_socket_path", "ssl",
        }
        if unknown:
            raise InvalidRedisAddress(f"unknown keys {sorted(unknown)}")
        try:
            return cls(
                host=str(connection.get("host") or "localhost"),
                port=int(connection.get("port") or 6379),
                db=_db(connection.get("db") or 0),
                username=connection.get("username") or None,
                password=connection.get("password") or None,
                unix_socket_path=connection.get("unix_socket_path") or None,
                ssl=bool(connection.get("ssl", False)),
            )
        except (TypeError, ValueError) as e:
            raise InvalidRedisAddress(str(e)) from None

    @property
    def url(self) -> str:
        """This address as a URL, credentials included (never log it: see :meth:`safe_url`)."""
        return self._url(self.password)

    @property
    def safe_url(self) -> str:
        """This address as a URL with the passwords masked, for logs and messages."""
        return self._url("***" if self.password else None, masked=True)

    def _url(self, password: Optional[str], masked: bool = False) -> str:
        if self.cluster_nodes:
            hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                             for h, p in self.cluster_nodes)
            return f"redis+cluster://{self._auth(password, masked)}{hosts}"
        if self.sentinels:
            return self._sentinel_url(password, masked)
        auth = self._auth(password, masked)
        if self.unix_socket_path:
            return f"unix://{auth}{quote(self.unix_socket_path)}?db={self.db}"
        scheme = "rediss" if self.ssl else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"

    def _auth(self, password: Optional[str], masked: bool) -> str:
        """``user:password@`` (quoted; the password as given when ``masked``), or ""."""
        if not (self.username or password):
            return ""
        auth = quote(self.username or "", safe="")
        if password:
            auth += ":" + (password if masked else quote(password, safe=""))
        return auth + "@"

    def _sentinel_url(self, password: Optional[str], masked: bool) -> str:
        auth = self._auth(password, masked)
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        query: dict[str, Any] = {"db": self.db}
        if self.sentinel_password:
            query["sentinel_password"] = "***" if masked else self.sentinel_password
        scheme = "rediss+sentinel" if self.ssl else "redis+sentinel"
        name = quote(self.master_name or "", safe="")
        return f"{scheme}://{auth}{hosts}/{name}?{urlencode(query, safe='*')}"


#: The port of a cluster node whose address names none.
CLUSTER_PORT = 6379


def _credentials(netloc: str) -> tuple[Optional[str], Optional[str], str]:
    """The user name, password (%-decoded; None when absent) and host list of a
    ``[user[:password]@]host:port[,host:port...]`` URL part."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, hosts
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon else None, hosts


def _sentinel(item: str, default_port: int = SENTINEL_PORT,
              what: str = "Sentinel") -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port`` of one Sentinel (or cluster node)."""
    text = item.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidRedisAddress(f"the {what} address {item!r} is not [IPv6]:port")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise InvalidRedisAddress(f"a {what} address in the list is empty ({item!r})")
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidRedisAddress(
            f"the port of the {what} address {item!r} is not a number") from None
    if not 0 < port < 65536:
        raise InvalidRedisAddress(f"the port of the {what} address {item!r} is out of range")
    return host, port


def _db(value: Any) -> int:
    try:
        db = int(value)
    except (TypeError, ValueError):
        raise InvalidRedisAddress(f"the database number {value!r} is not an integer") from None
    if db < 0:
        raise InvalidRedisAddress(f"the database number {db} is negative")
    return db


#: The environment variable that names the Redis server when no setting does.
REDIS_URL_ENV = "WS4TX_REDIS_URL"


def from_settings(
    settings: Any, environ: Optional[Mapping[str, str]] = None
) -> RedisAddress:
    """Where Redis is, for a process configured by ``settings`` with one Redis server
    (see :func:`shards_from_settings`, which this is with one server); several servers
    raise :class:`InvalidRedisAddress`."""
    found = shards_from_settings(settings, environ)
    if len(found) > 1:
        raise InvalidRedisAddress(f"{len(found)} Redis servers are given where one is "
                                  "expected")
    return found[0]


def shards_from_settings(
    settings: Any, environ: Optional[Mapping[str, str]] = None
) -> tuple[RedisAddress, ...]:
    """The Redis servers of a process configured by ``settings``, in order (several:
    channels are sharded over them, see :mod:`ws4tx.sharding`).

    In order: the ``WS4TX_REDIS_URL`` setting (a URL, a list of URLs, or URLs separated
    by whitespace), the ``CONNECTION`` setting (a ws4redis dictionary: one server), the
    ``WS4TX_REDIS_URL`` environment variable (one URL, or several separated by
    whitespace), ``redis://localhost:6379/0``. A bad value raises
    :class:`InvalidRedisAddress` naming the setting it came from.
    """
    environ = os.environ if environ is None else environ
    value = getattr(settings, REDIS_URL_ENV, None)
    if value:
        return parse_list(value, f"setting {REDIS_URL_ENV}")
    names = ("WS4TX_CONNECTION", "WS4REDIS_CONNECTION")
    connection = next((getattr(settings, n) for n in names if hasattr(settings, n)), None)
    if connection:
        try:
            return (RedisAddress.from_connection(connection),)
        except InvalidRedisAddress as e:
            raise InvalidRedisAddress(
                f"setting WS4TX_CONNECTION/WS4REDIS_CONNECTION: {e}"
            ) from None
    text = environ.get(REDIS_URL_ENV)
    if text:
        return parse_list(text, f"environment variable {REDIS_URL_ENV}")
    return (RedisAddress(),)


def parse_list(value: Any, origin: str) -> tuple[RedisAddress, ...]:
    """One or several Redis servers, in order: a URL, URLs separated by whitespace (a URL
    never holds any; commas belong to ``redis+sentinel://`` URLs), or a list or tuple of
    URLs. Any of them may be a Redis Cluster (``redis+cluster://``: that shard's channels
    are then placed on its primaries by slot). The same server twice is refused: its
    channels would have two shards."""
    if isinstance(value, str):
        urls = value.split()
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        urls = [url.strip() for url in value]
    else:
        raise InvalidRedisAddress(f"{origin}: a URL or a list of URLs, not {value!r}")
    if not urls or not all(urls):
        raise InvalidRedisAddress(f"{origin}: no Redis URL in {value!r}")
    found = tuple(_parse(url, origin) for url in urls)
    if len(set(found)) != len(found):
        raise InvalidRedisAddress(f"{origin}: a Redis server is listed twice")
    _check_cluster_shards(found, origin)
    return found


def _check_cluster_shards(found: tuple[RedisAddress, ...], origin: str) -> None:
    """A Redis Cluster may be one shard among others, but none of its nodes may also be
    given as another shard (a plain server, or a node of another cluster URL): its
    channels would have two shards."""
    if len(found) < 2 or not any(address.is_cluster for address in found):
        return
    seen: dict[tuple[str, int], int] = {}
    for index, address in enumerate(found):
        if address.is_cluster:
            nodes = address.cluster_nodes
        elif address.is_sentinel or address.unix_socket_path:
            continue
        else:
            nodes = ((address.host, address.port),)
        for node in nodes:
            other = seen.setdefault(node, index)
            if other != index:
                raise InvalidRedisAddress(
                    f"{origin}: {node[0]}:{node[1]} is in shard {other + 1} and in shard "
                    f"{index + 1}: give each Redis Cluster once, by its own nodes only, "
                    "and no cluster node as a shard of its own")


def urls_text(addresses: tuple[RedisAddress, ...]) -> str:
    """``addresses`` as :func:`parse_list` reads them back (URLs separated by spaces,
    credentials included: for the environment, never for a log)."""
    return " ".join(address.url for address in addresses)


def _parse(url: str, origin: str) -> RedisAddress:
    try:
        return RedisAddress.from_url(url)
    except InvalidRedisAddress as e:
        raise InvalidRedisAddress(f"{origin}: {e}") from None
