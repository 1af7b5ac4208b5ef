"""Every ws4tx setting, declared once. Pure: imports neither Django nor Twisted.

A :class:`Setting` names a value, its kind (which gives its parser), its default, its meaning,
its command-line option of ``twistd ws4tx`` and its Django setting (read as ``WS4TX_<NAME>``,
then as ws4redis's ``WS4REDIS_<NAME>``). Everything else comes from here: the options of
``twistd ws4tx`` (:mod:`ws4tx.server.tap`), the server's reading of the Django settings
(:mod:`ws4tx.server._django`), the Django side's own reading (:mod:`ws4tx._django_settings`),
the checks of :class:`ws4tx.server.config.ServerConfig`, and the README's configuration table
(``python -m ws4tx.schema`` prints it).

Both halves read a setting with :func:`read`, so they agree on every value and on every
error, which names the setting.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from ws4tx.history import Retention, Rule
from ws4tx.naming import DEFAULT_MAX_FACILITY_LENGTH, DEFAULT_PREFIX

#: Kinds of values, each with its own parser.
TEXT = "text"          # a string
OPTIONAL = "optional"  # a string; "" or None: none
INT = "int"            # a whole number
NUMBER = "number"      # a finite number (float)
BOOL = "bool"          # True or False; on the command line a flag
LIST = "list"          # a list of strings; on the command line a repeatable option
SECRET = "secret"      # a string never shown; from a setting, the environment or a file
HISTORY = "history"    # facility globs -> {"size": N, "ttl": seconds}; on the command line
                       # a repeatable option glob=size:ttl

#: Kinds whose command-line option is repeatable, each use adding to the value.
REPEATABLE = (LIST, HISTORY)

#: Where a setting acts.
SERVER = "server"    # the WebSocket server (a ServerConfig field)
SHARED = "shared"    # the server and the Django side (both read it)
DJANGO = "django"    # the Django side only
PROCESS = "process"  # the twistd ws4tx process (not part of ServerConfig)


class SettingError(ValueError):
    """A value that cannot be used; the message names where it came from."""


@dataclass(frozen=True)
class Setting:
    """One setting: see the module's docstring."""

    #: The Python name: a ServerConfig field for SERVER and SHARED settings.
    key: str
    kind: str
    default: Any
    #: What it does (one line of the README table and of ``--help``).
    meaning: str
    where: str = SERVER
    #: The command-line option without its dashes; "" for none; None: the key with dashes.
    option: Optional[str] = None
    #: The Django setting's name without its WS4TX_/WS4REDIS_ prefix; "" for none;
    #: None: the key in capitals.
    setting: Optional[str] = None
    #: A Django setting read under this exact name only (ws4redis's WEBSOCKET_URL).
    bare_setting: bool = False
    #: Numbers: the smallest allowed value, and whether it is allowed itself.
    minimum: Optional[float] = None
    inclusive: bool = True
    #: A further check of a converted value: returns a complaint, or None.
    check: Optional[Callable[[Any], Optional[str]]] = None
    #: The default as the README and ``--help`` show it ("" : from ``default``).
    shown_default: str = ""
    #: Unit of a number, shown after the default ("s", "bytes").
    unit: str = ""
    #: Short option letter.
    short: Optional[str] = None
    #: SECRET: the environment variable that may give the value.
    env: str = ""

    @property
    def option_name(self) -> str:
        """The option without dashes ("" for none)."""
        return self.key.replace("_", "-") if self.option is None else self.option

    @property
    def setting_name(self) -> str:
        """The setting's name without prefix ("" for none)."""
        return self.key.upper() if self.setting is None else self.setting

    @property
    def setting_names(self) -> tuple[str, ...]:
        """The Django settings looked up, in order."""
        name = self.setting_name
        if not name:
            return ()
        if self.bare_setting:
            return (name,)
        return (f"WS4TX_{name}", f"WS4REDIS_{name}")

    @property
    def setting_origin(self) -> str:
        """How an error names the Django setting."""
        return "setting " + "/".join(self.setting_names)

    @property
    def flag(self) -> bool:
        """Whether the command-line option is a flag (it sets the opposite of the default)."""
        return self.kind == BOOL

    def shown(self) -> str:
        """The default, as a reader wants to see it."""
        if self.shown_default:
            return self.shown_default
        value = self.default
        if value is None or value == () or value == "":
            return "none"
        if self.kind == BOOL:
            return "on" if value else "off"
        if self.kind == LIST:
            return ", ".join(f"`{v}`" for v in value)
        if self.kind == NUMBER and float(value).is_integer():
            value = int(value)
        text = f"`{value}`"
        if self.unit:
            text += f" {self.unit}"
        return text

    # Conversion

    def convert(self, value: Any, origin: Optional[str] = None) -> Any:
        """``value`` (a Python value: a Django setting, a ServerConfig field) in its
        canonical form; :class:`SettingError` naming ``origin`` if it cannot be used."""
        origin = origin or self.option_name or self.key
        converted = _CONVERTERS[self.kind](self, value, origin)
        if self.minimum is not None and converted is not None:
            low = self.minimum
            if converted < low or (not self.inclusive and converted == low):
                relation = ">=" if self.inclusive else ">"
                raise SettingError(
                    f"{origin} must be {relation} {_number(low)}, not {value!r}")
        if self.check is not None and converted is not None:
            complaint = self.check(converted)
            if complaint:
                shown = "" if self.kind == SECRET else f", not {value!r}"
                raise SettingError(f"{origin} {complaint}{shown}")
        return converted

    def parse_text(self, text: str, origin: Optional[str] = None) -> Any:
        """A value given as text (the command line, the environment)."""
        origin = origin or f"--{self.option_name}"
        if self.kind == INT:
            try:
                value: Any = int(text.strip())
            except ValueError:
                raise SettingError(f"{origin} must be a whole number, not {text!r}") from None
        elif self.kind == NUMBER:
            try:
                value = float(text.strip())
            except ValueError:
                raise SettingError(f"{origin} must be a number, not {text!r}") from None
        elif self.kind == LIST:
            value = [text]
        elif self.kind == HISTORY:
            value = [_history_item(text, origin)]
        elif self.kind == BOOL:
            lowered = text.strip().lower()
            if lowered not in _BOOLEANS:
                raise SettingError(f"{origin} must be true or false, not {text!r}")
            value = _BOOLEANS[lowered]
        else:
            value = text
        return self.convert(value, origin)


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _text(setting: Setting, value: Any, origin: str) -> Any:
    if not isinstance(value, str):
        raise SettingError(f"{origin} must be a string, not {value!r}")
    return value


def _optional(setting: Setting, value: Any, origin: str) -> Any:
    if value is None:
        return None
    return _text(setting, value, origin) or None


def _secret(setting: Setting, value: Any, origin: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SettingError(f"{origin} must be a string")
    return value or None


def _int(setting: Setting, value: Any, origin: str) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(f"{origin} must be a whole number, not {value!r}")
    return value


def _float(setting: Setting, value: Any, origin: str) -> Any:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value)):
        raise SettingError(f"{origin} must be a number, not {value!r}")
    return float(value)


def _bool(setting: Setting, value: Any, origin: str) -> Any:
    if not isinstance(value, bool):
        raise SettingError(f"{origin} must be True or False, not {value!r}")
    return value


def _list(setting: Setting, value: Any, origin: str) -> Any:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or \
            not all(isinstance(item, str) and item for item in value):
        raise SettingError(f"{origin} must be a list of non-empty strings, not {value!r}")
    return tuple(value)


_HISTORY_PATTERN = re.compile(r"[A-Za-z0-9_.~/\-*?\[\]!]+\Z")


def _history_pattern(pattern: Any, origin: str) -> str:
    if not isinstance(pattern, str) or not _HISTORY_PATTERN.match(pattern):
        raise SettingError(
            f"{origin}: {pattern!r} is not a facility or a glob of facilities (letters, "
            "digits, _ . ~ / - and * ? [ ] !)")
    return pattern


def _history_number(value: Any, name: str, pattern: str, origin: str) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingError(f"{origin}: the {name} of {pattern!r} must be a whole number "
                           f">= 1, not {value!r}")
    return value


def _history_rule(pattern: Any, spec: Any, origin: str) -> Rule:
    pattern = _history_pattern(pattern, origin)
    if isinstance(spec, Retention):
        size, ttl = spec
    elif isinstance(spec, Mapping):
        unknown = sorted(set(map(str, spec)) - {"size", "ttl"})
        if unknown or "size" not in spec or "ttl" not in spec:
            raise SettingError(f"{origin}: {pattern!r} needs exactly the keys 'size' and "
                               f"'ttl', not {sorted(map(str, spec))}")
        size, ttl = spec["size"], spec["ttl"]
    else:
        raise SettingError(f"{origin}: {pattern!r} must map to "
                           f"{{'size': N, 'ttl': seconds}}, not {spec!r}")
    return Rule(pattern, Retention(_history_number(size, "size", pattern, origin),
                                   _history_number(ttl, "ttl", pattern, origin)))


def _history(setting: Setting, value: Any, origin: str) -> Any:
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)) and all(
            isinstance(item, (list, tuple)) and len(item) == 2 for item in value):
        items = list(value)
    else:
        raise SettingError(f"{origin} must be a dict of facility globs to "
                           f"{{'size': N, 'ttl': seconds}}, not {value!r}")
    return tuple(_history_rule(pattern, spec, origin) for pattern, spec in items)


def _history_item(text: str, origin: str) -> Rule:
    """``glob=size:ttl`` (the command line's form of one entry)."""
    pattern, equals, numbers = text.partition("=")
    size, colon, ttl = numbers.partition(":")
    try:
        if not (equals and colon):
            raise ValueError
        retention = Retention(int(size), int(ttl))
    except ValueError:
        raise SettingError(f"{origin} must be glob=size:ttl (chat*=100:600), "
                           f"not {text!r}") from None
    return _history_rule(pattern.strip(), retention, origin)


def history_from_fingerprint(text: str) -> tuple[Rule, ...]:
    """The rules of ``HISTORY`` from its canonical text (:func:`ws4tx.history.fingerprint`,
    what a node puts in its registry entry)."""
    return tuple(_history_item(item, "a node's HISTORY") for item in text.split())


def item_text(setting: Setting, item: Any) -> str:
    """One item of a repeatable setting's value as its option takes it."""
    if setting.kind == HISTORY:
        pattern, (size, ttl) = item
        return f"{pattern}={size}:{ttl}"
    return str(item)


_CONVERTERS: dict[str, Callable[[Setting, Any, str], Any]] = {
    TEXT: _text, OPTIONAL: _optional, SECRET: _secret, INT: _int, NUMBER: _float,
    BOOL: _bool, LIST: _list, HISTORY: _history,
}


# Checks


def _websocket_url(value: str) -> Optional[str]:
    if not (value.startswith("/") and value.endswith("/")):
        return "must start and end with '/'"
    return None


def _health_url(value: str) -> Optional[str]:
    if value and not value.startswith("/"):
        return "must be a path starting with '/' (or empty for none)"
    return None


#: The levels of ``--log-level``, from the most to the least said.
LOG_LEVELS = ("debug", "info", "warn", "error")


def _log_level(value: str) -> Optional[str]:
    return None if value in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


def _session_channels(value: str) -> Optional[str]:
    return None if value in ("id", "key") else "must be 'id' (the default) or 'key'"


def _resume_ttl(value: float) -> Optional[str]:
    return None if value == 0 or value >= 10 else \
        "must be 0 (off) or at least 10 seconds (a token is renewed half-way)"


def _globs(value: tuple[str, ...]) -> Optional[str]:
    """A complaint about the first entry that is not a facility or a glob of facilities."""
    for pattern in value:
        if not _HISTORY_PATTERN.match(pattern):
            return (f"{pattern!r} is not a facility or a glob of facilities (letters, "
                    "digits, _ . ~ / - and * ? [ ] !)")
    return None


def _networks(value: tuple[str, ...]) -> Optional[str]:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"must be IP addresses or networks (10.0.0.0/8); {item!r} is neither"
    return None


def _at_most_128(value: int) -> Optional[str]:
    return None if value <= 128 else "must be at most 128 (the bits of an IPv6 address)"


def trusted_networks(value: tuple[str, ...]) -> tuple[Any, ...]:
    """The networks of a checked ``trusted_proxies`` value."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in value)


#: The environment variable that gives the health token.
HEALTH_TOKEN_ENV = "WS4TX_HEALTH_TOKEN"

#: Every setting, in the order of the README table.
SETTINGS: tuple[Setting, ...] = (
    Setting("redis", LIST, (),
            "`redis://[user:pw@]host:port/db`, `rediss://…`, `unix:///path?db=N`, "
            "`redis+sentinel://[user:pw@]host:port[,host:port…]/MASTER_NAME[?db=N"
            "&sentinel_password=…]` (`rediss+sentinel://…`: TLS; see docs/scaling.md), "
            "`redis+cluster://[user:pw@]host:port[,host:port…]` (a Redis ≥ 7 Cluster, "
            "sharded pub/sub), "
            "`embedded` (a private Redis started with the server, on a free port; "
            "`embedded:PORT` on that port; restarted if it dies). Several servers (any of "
            "them may be a Sentinel group or a Cluster) shard the channels over them "
            "(docs/scaling.md), in the order given, the same on "
            "every node and Django process: `--redis` repeated, a list in the setting, or "
            "URLs separated by spaces in `$WS4TX_REDIS_URL`. Or a ws4redis dict "
            "(`host`, `port`, `db`, `password`, `unix_socket_path`, `ssl`). A password on "
            "the command line is visible to every local user (`ps`): give it in "
            "`$WS4TX_REDIS_URL` or the settings",
            where=PROCESS, short="r", setting="",
            shown_default="`$WS4TX_REDIS_URL`, else `redis://localhost:6379/0`"),
    Setting("django_settings", TEXT, None,
            "Django settings module: authenticate clients by their Django session and read "
            "the `WS4TX_*`/`WS4REDIS_*` settings", where=PROCESS, short="d", setting=""),
    Setting("wsgi", TEXT, None,
            "also serve this WSGI application (`mysite.wsgi.application`) on the same port "
            "for every path outside the WebSocket URL", where=PROCESS, short="w", setting=""),
    Setting("listen", LIST, ("tcp:8000:interface=127.0.0.1:backlog=1024",),
            "Twisted endpoint descriptions: `tcp:8000`, `unix:/path`, "
            "`ssl:443:privateKey=…`; a `tcp:` port without `backlog=` gets `backlog=1024` "
            "(Twisted's default, 50, drops connection bursts)", where=PROCESS, short="l",
            setting=""),
    Setting("workers", INT, 1,
            "worker processes sharing the `tcp:` ports (SO_REUSEPORT), each with its own "
            "Redis subscriber, restarted if they end (after 1 s, doubling to 60 s while they "
            "keep ending)", where=PROCESS, setting="", minimum=1),
    Setting("drain_timeout", NUMBER, 10.0,
            "on SIGTERM: wait this long for clients to close (1001)", where=PROCESS,
            setting="", minimum=0, unit="s"),
    Setting("log_level", TEXT, "info",
            "the server's log: `debug` adds a line per connection and per Redis step, "
            "`warn` keeps only what needs an operator", where=PROCESS, check=_log_level),
    Setting("websocket_url", TEXT, "/ws/",
            "path prefix of WebSocket URLs (starts and ends with `/`)", where=SHARED,
            setting="WEBSOCKET_URL", bare_setting=True, check=_websocket_url),
    Setting("prefix", OPTIONAL, DEFAULT_PREFIX,
            "channel and key name prefix; `\"\"` for none, like ws4redis (then client "
            "publishing can write any other application's keys of the form "
            "`broadcast:…`, `user:…:…` in a shared Redis database: the server then refuses "
            "to start unless `CLIENT_PUBLISH` is off or `UNPREFIXED_PUBLISH` on)",
            where=SHARED),
    Setting("expire", INT, 3600,
            "seconds a published message is stored for replay; `0` stores nothing",
            where=SHARED, minimum=0, unit="s"),
    Setting("heartbeat", OPTIONAL, None,
            "ws4redis heartbeat string (e.g. `--heartbeat--`), answered and never "
            "published; `\"\"` for none", where=SHARED),
    Setting("publish_timeout", NUMBER, 5.0,
            "Django side: bound on every Redis call of a publish", where=DJANGO,
            option="", minimum=0, inclusive=False, unit="s"),
    Setting("token_max_age", NUMBER, 300.0,
            "seconds a connection token (`ws4tx.tokens`) stays valid, and with it a "
            "connection it opened (unless the client sends a fresh one)", where=DJANGO,
            option="", minimum=0, inclusive=False, unit="s"),
    Setting("resume_ttl", NUMBER, 300.0,
            "seconds a resume token (`ws4tx.session` event) stays valid; the node renews "
            "it half-way; 0 turns resumable sessions off", where=DJANGO,
            option="", minimum=0, unit="s", check=_resume_ttl),
    Setting("session_channels", TEXT, "id",
            "`\"key\"`: name session channels by the raw session key, as ws4redis did "
            "(only to share Redis names with a running ws4redis: live session keys are "
            "then visible to every Redis client, and tokens carry no session); default: "
            "a keyed one-way id of the session key", where=DJANGO, option="",
            check=_session_channels, shown_default='`"id"`'),
    Setting("disconnect_on_logout", BOOL, True,
            "close, on every node (close code 4001), the connections of a session that "
            "logs out, and every connection of a user whose password changes or who is "
            "deactivated (`is_active = False`); `False`: they stay open until they close",
            where=DJANGO, option=""),
    Setting("handlers", LIST, (),
            "server-side event handler classes (`module.Class`)",
            where=PROCESS),
    Setting("allowed_origins", LIST, (),
            "allowed `Origin`s, `scheme://host[:port]`, `*` wildcards; when set, every "
            "other `Origin` is refused. Unset: any `Origin` without cookies; with cookies "
            "only the site's own (scheme, host and port) and `CSRF_TRUSTED_ORIGINS`",
            option="allowed-origin", shown_default="see meaning"),
    Setting("client_publish", BOOL, True,
            "clients may publish at all (`publish-*` flags, raw events); off "
            "(`--no-client-publish`): every client's publish flags are dropped",
            option="no-client-publish"),
    Setting("unprefixed_publish", BOOL, False,
            "let clients publish although `PREFIX` is empty, where they can overwrite any "
            "other application's keys of the same names in the Redis database; without it "
            "the server refuses to start with an empty `PREFIX` and client publishing on"),
    Setting("anonymous_publish", BOOL, False,
            "let clients without a user publish; by default their `publish-*` flags are "
            "dropped"),
    Setting("handler_facility_publish", BOOL, False,
            "let clients publish raw messages (`publish-*` flags) on facilities that have a "
            "server-side event handler; off: their publish flags are dropped"),
    Setting("stored_facilities", LIST, ("*",),
            "facilities (globs) whose client-published messages are stored for replay",
            option="stored-facility"),
    Setting("history", HISTORY, (),
            "facilities that keep a history, for clients to catch up on what they missed: "
            "a dict from facility or glob to `{\"size\": N, \"ttl\": seconds}` "
            "(`{\"chat*\": {\"size\": 100, \"ttl\": 600}}`; the first glob that matches "
            "wins); each channel keeps its last `size` messages, numbered by offset within "
            "an epoch, for `ttl` seconds after its last publish (`ws4tx.api.history`). "
            "Option: `--history 'chat*=100:600'`", where=SHARED),
    Setting("presence", LIST, (),
            "facilities (globs) whose connected clients are listed in Redis: user, "
            "connection id, connect time (`ws4tx.api.presence`, `ws4tx.api.presence_stats`), "
            "and whose event clients get `ws4tx.presence` events of who came and went",
            where=SHARED, option="presence", check=_globs),
    Setting("presence_ttl", NUMBER, 10.0,
            "a node refreshes its clients' presence every third of this; the clients of a "
            "node that died leave `ws4tx.api.presence` within this many seconds and are "
            "announced as gone within a third more", minimum=0,
            inclusive=False, unit="s"),
    Setting("store_budget", INT, 65536,
            "bytes of client-published messages a user (or an anonymous address) may store "
            "per minute on this node, for replay and in histories (64 bytes more an entry, "
            "4096 more a new history stream); past it messages are delivered but not "
            "stored, and on a facility with history not published (the sender is told); "
            "`0`: no limit", minimum=0, unit="bytes"),
    Setting("compression", BOOL, False,
            "permessage-deflate for the clients that offer it, without context takeover: "
            "each message of at least 256 bytes is deflated once for all of them (per "
            "window size); client messages inflate to at most `MAX_MESSAGE_SIZE` (past it "
            "1009)"),
    Setting("direct_writes", BOOL, True,
            "plain-TCP ports (`tcp:`, `reuseport:`) send what each client was written in a "
            "reactor turn right after it, and ask epoll for writability only when the "
            "kernel's buffer is full (fan-out to 1000 clients: half the server CPU per "
            "frame at 10 msg/s, a fifth less at 100; docs/performance.md); "
            "off (`--no-direct-writes`): Twisted's own write path (a writability "
            "round trip per socket per turn). TLS is not affected",
            option="no-direct-writes"),
    Setting("max_message_size", INT, 64 * 1024,
            "largest client message; larger closes with 1009", minimum=0, inclusive=False,
            unit="bytes"),
    Setting("max_frame_size", INT, 64 * 1024,
            "largest client frame; larger closes with 1009", minimum=0, inclusive=False,
            unit="bytes"),
    Setting("max_fragments", INT, 128,
            "most frames one client message may arrive in; more closes with 1008",
            minimum=0, inclusive=False),
    Setting("max_outgoing_size", INT, 1024 * 1024,
            "largest frame forwarded to clients (a message of a channel with history as "
            "its publication envelope); a larger one published to Redis is dropped, logged "
            "and counted", minimum=0, inclusive=False, unit="bytes"),
    Setting("max_facility_length", INT, DEFAULT_MAX_FACILITY_LENGTH,
            "longest facility name", minimum=0, inclusive=False),
    Setting("max_query_length", INT, 2048,
            "longest query string; 414 past it", minimum=0, inclusive=False, unit="bytes"),
    Setting("ping_interval", NUMBER, 25.0,
            "seconds between WebSocket pings to each client; `0`: none", minimum=0,
            unit="s"),
    Setting("ping_timeout", NUMBER, 10.0,
            "seconds a client has to answer a ping before it is dropped", minimum=0,
            unit="s"),
    Setting("handshake_timeout", NUMBER, 5.0,
            "seconds a connection has to send its whole request (head and body) and to "
            "finish its WebSocket handshake; `0`: no bound", minimum=0, unit="s"),
    Setting("auth_concurrency", INT, 5,
            "handshakes authenticated from Django at once (the session look-up, the site's "
            "hooks, a token's user when hooks are set), each in a thread of the reactor's "
            "pool, whose other threads (10 in all) stay for the site's pages (`--wsgi`) and "
            "event handlers; a thread keeps its slot until it finishes, even if its client "
            "went away", minimum=1),
    Setting("auth_queue", INT, 1000,
            "handshakes that may wait for one of those slots (one that goes away leaves the "
            "queue); past it 503 with `Retry-After`, and so for one still waiting when "
            "`handshake_timeout` ends", minimum=0),
    Setting("max_connections", INT, 0,
            "WebSocket connections at once in this process; 503 past it; `0`: no limit",
            minimum=0),
    Setting("max_connections_per_ip", INT, 100,
            "connections at once from one client address (WebSockets, and HTTP connections "
            "that have not upgraded); 429 past it; `0`: no limit. Behind a reverse proxy "
            "the address is the one `TRUSTED_PROXIES` name; a trusted proxy that names no "
            "client is not capped (logged once)", minimum=0),
    Setting("trusted_proxies", LIST, ("127.0.0.1", "::1"),
            "addresses or networks of reverse proxies whose `Forwarded` (RFC 7239) or "
            "`X-Forwarded-For` names the client (the rightmost address in it that is not "
            "itself a trusted proxy); `[]`: none", option="trusted-proxy", check=_networks),
    Setting("ipv6_prefix", INT, 64,
            "an IPv6 client counts as its network of this many bits for the per-address "
            "cap (one client usually has a whole /64); `128`: each address",
            minimum=1, check=_at_most_128),
    Setting("http_idle_timeout", NUMBER, 15.0,
            "seconds an HTTP keep-alive connection (not a WebSocket) may wait idle for its "
            "next request", minimum=0, inclusive=False, unit="s"),
    Setting("rate_limit", NUMBER, 20.0,
            "messages and events a client may send per second; `0`: no limit", minimum=0),
    Setting("rate_burst", INT, 40,
            "bursts allowed above the rate; a client over the limit is told (event clients) "
            "and its message dropped; past three times the burst it is closed with 1008",
            minimum=1),
    Setting("max_queue_bytes", INT, 1024 * 1024,
            "a client whose socket stops draining is dropped (close 4008) once this many "
            "bytes of frames wait for it ...", minimum=0, inclusive=False, unit="bytes"),
    Setting("max_queue_messages", INT, 1000,
            "... or this many messages ...", minimum=0, inclusive=False),
    Setting("slow_timeout", NUMBER, 10.0,
            "... or it has not drained for this long while messages wait", minimum=0,
            inclusive=False, unit="s"),
    Setting("max_subscriptions", INT, 100,
            "channels one event connection may add by `subscribe` frames; a subscribe past "
            "it is refused", minimum=0),
    Setting("max_recovery", INT, 1000,
            "messages one client may recover on reconnect (`recover=`), over all its "
            "channels; past it a channel is not recovered (`ws4tx.recovered` false, reason "
            "`trimmed`)", minimum=0),
    Setting("max_lag", NUMBER, 10.0,
            "when the server cannot fan out as fast as messages arrive, a message that "
            "waited longer is dropped, counted (`lagged` on the health URL), logged, and "
            "event clients get `ws4tx.dropped`", minimum=0, inclusive=False, unit="s"),
    Setting("max_backlog", INT, 10_000,
            "... and so is the oldest one once this many messages wait", minimum=0,
            inclusive=False),
    Setting("redis_ping_interval", NUMBER, 5.0,
            "seconds between PINGs on the Redis subscriber connection", minimum=0,
            unit="s"),
    Setting("redis_timeout", NUMBER, 5.0,
            "Redis must answer a command or PING within this, else its connection is "
            "replaced", minimum=0, inclusive=False, unit="s"),
    Setting("health_url", TEXT, "/ws4tx/health",
            "200 while Redis delivers, else 503 (each change logged with its reason); the "
            "JSON body adds the process's counters (`store_failures`: delivered but not "
            "stored; `refused`: subscriptions Redis refused; `forged`: envelopes only the "
            "server may send, dropped); `\"\"`: no health URL", check=_health_url),
    Setting("health_token", SECRET, None,
            "with it, the health URL's counters need `Authorization: Bearer <token>` (the "
            "status stays public); on the command line only as a file "
            "(`--health-token-file`), or from `$WS4TX_HEALTH_TOKEN`",
            option="health-token-file", env=HEALTH_TOKEN_ENV),
    Setting("metrics_url", TEXT, "",
            "path of the Prometheus metrics (`/ws4tx/metrics`, say; `\"\"`: none), behind "
            "the health token when there is one; under `--workers` each scrape sums every "
            "worker", check=_health_url),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


def setting_names(name: str) -> tuple[str, str]:
    """The two names a setting may have, in the order they are looked up."""
    return f"WS4TX_{name}", f"WS4REDIS_{name}"


def lookup(settings: Any, name: str, default: Any = None) -> Any:
    """The raw value of setting ``name`` (``WS4TX_name``, else ``WS4REDIS_name``, else
    ``default``), for settings the schema does not convert (hooks, say)."""
    for full in setting_names(name):
        value = getattr(settings, full, _MISSING)
        if value is not _MISSING:
            return value
    return default


def get(key: str) -> Setting:
    """The setting called ``key``."""
    return BY_KEY[key]


_MISSING = object()


def read(settings: Any, key: str, default: Any = _MISSING) -> Any:
    """Setting ``key`` from a Django-style ``settings`` object, converted and checked
    (:class:`SettingError` naming the setting); ``default`` (the schema's own unless given)
    when it is not set."""
    setting = BY_KEY[key]
    for name in setting.setting_names:
        value = getattr(settings, name, _MISSING)
        if value is not _MISSING:
            return setting.convert(value, setting.setting_origin)
    return setting.default if default is _MISSING else default


def read_secret_file(setting: Setting, path: str) -> Optional[str]:
    """A secret from the file at ``path`` (its first line), naming the option on failure."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SettingError(f"--{setting.option_name}: cannot read {path!r}: {e}") from None
    if not text:
        raise SettingError(f"--{setting.option_name}: {path!r} is empty")
    return text


def from_environment(setting: Setting, environ: Optional[Mapping[str, str]] = None) -> Any:
    """A SECRET's value from its environment variable, or None."""
    environ = os.environ if environ is None else environ
    if setting.env and environ.get(setting.env):
        return setting.convert(environ[setting.env], f"environment variable {setting.env}")
    return None


def help_text(setting: Setting) -> str:
    """The ``--help`` line of a setting."""
    plain = setting.meaning.replace("`", "")
    if setting.flag:
        return plain
    return f"{plain} [default: {setting.shown().replace('`', '')}]"


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| setting | option | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        names = f"`{s.setting_name}`" if s.setting_name else ""
        if s.key == "redis":
            names = "`WS4TX_REDIS_URL` / `CONNECTION`"
        option = f"`--{s.option_name}`" if s.option_name else ""
        if s.kind in REPEATABLE and option:
            option += " (repeatable)"
        meaning = s.meaning
        if s.where == DJANGO:
            meaning = meaning if meaning.startswith("Django side") else \
                "Django side: " + meaning
        rows.append(f"| {names} | {option} | {s.shown()} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
