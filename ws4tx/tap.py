"""``twistd ws4tx``: the command-line options and the service they make.

Command-line options override the Django settings (``--django-settings``), which override
the defaults. A bad value stops the start with a message naming the option.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any, Optional

import txaio
from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from twisted.python import usage

from ws4tx import _settings
from ws4tx.config import ServerConfig, check
from ws4tx.embedded import EmbeddedRedis, EmbeddedRedisError
from ws4tx.handlers import load_handler_classes
from ws4tx.redis_address import InvalidRedisAddress, RedisAddress
from ws4tx.service import PushService

_log = Logger()

DEFAULT_LISTEN = "tcp:8000:interface=127.0.0.1:backlog=1024"

#: CPython's cyclic-GC thresholds for the server process. A WebSocket connection leaves
#: cyclic garbage behind its handshake, so the collector must run, but at CPython's
#: default of a young collection every 700 allocations it ran so often during connection
#: bursts that the connect rate fell as connections accumulated (the benchmark's step to
#: 10,000: 0.65x the ceiling's rate; with these thresholds 1.0x, memory per connection
#: unchanged). Only the youngest threshold is raised.
GC_THRESHOLDS = (50_000, 10, 10)

# option name -> (ServerConfig field, type)
_TUNABLES: dict[str, tuple[str, type]] = {
    "websocket-url": ("websocket_url", str),
    "prefix": ("prefix", str),
    "expire": ("expire", int),
    "heartbeat": ("heartbeat", str),
    "max-message-size": ("max_message_size", int),
    "ping-interval": ("ping_interval", float),
    "ping-timeout": ("ping_timeout", float),
    "max-connections": ("max_connections", int),
    "redis-timeout": ("redis_timeout", float),
    "health-url": ("health_url", str),
    "max-lag": ("max_lag", float),
}


class Options(usage.Options):
    """Options of ``twistd ws4tx``."""

    synopsis = "[options]"
    longdesc = (
        "Serve django-websocket-redis compatible WebSockets (and ws4tx events) from Redis. "
        "Clients connect to ws://HOST{websocket-url}{facility}?subscribe-broadcast&... ; "
        "Django publishes with ws4tx.publisher.RedisPublisher or ws4tx.api."
    )
    optFlags = [
        ["anonymous-publish", None,
         "Let clients without a user publish (publish-* flags); by default their publish "
         "flags are dropped."],
    ]
    optParameters = [
        ["redis", "r", None,
         "Redis URL: redis://[user:password@]host:port/db, rediss://... (TLS), "
         "unix:///path/redis.sock?db=N, or 'embedded' to start a private Redis-compatible "
         "server. Default: the Django settings, then $WS4TX_REDIS_URL, then "
         "redis://localhost:6379/0."],
        ["django-settings", "d", None,
         "Django settings module: authenticate clients by their Django session and read "
         "WEBSOCKET_URL and the WS4TX_*/WS4REDIS_* settings."],
        ["wsgi", "w", None,
         "Also serve this WSGI application (e.g. mysite.wsgi.application) on the same "
         "port for every path outside the WebSocket URL, in Twisted's thread pool."],
        ["websocket-url", None, None, "URL path of the WebSocket endpoint [default: /ws/]."],
        ["prefix", None, None, "Prefix of Redis channel names [default: ws4tx]."],
        ["expire", None, None,
         "Seconds a client-published message is kept for replay; 0 keeps nothing "
         "[default: 3600]."],
        ["heartbeat", None, None,
         "Heartbeat string of ws4redis clients, answered and never published "
         "[default: none]."],
        ["max-message-size", None, None,
         "Largest message a client may send, in bytes; larger ones close with 1009 "
         "[default: 65536]."],
        ["ping-interval", None, None,
         "Seconds between WebSocket pings to each client; 0 turns them off [default: 25]."],
        ["ping-timeout", None, None,
         "Seconds a client has to answer a ping before it is dropped [default: 10]."],
        ["max-connections", None, None,
         "Most WebSocket connections at once; 503 past it; 0 for no limit [default: 0]."],
        ["redis-timeout", None, None,
         "Seconds Redis has to answer a command or PING before its connection is "
         "replaced [default: 5]."],
        ["max-lag", None, None,
         "Seconds a message may wait for the server to fan it out when it cannot keep up; "
         "older ones are dropped, counted, logged, and event clients are told "
         "[default: 10]."],
        ["health-url", None, None,
         "Path of the health check, 200 while Redis delivers, else 503 "
         "[default: /ws4tx/health]."],
        ["drain-timeout", None, 10.0,
         "Seconds to wait for clients to close on shutdown.", float],
        ["workers", None, 1,
         "Worker processes sharing the listening TCP ports (SO_REUSEPORT), each with its "
         "own Redis subscriber, restarted if they die; this process supervises them.", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["handlers"] = []
        self["allowed-origins"] = []

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        """Parse, remembering the arguments (``--workers`` passes them on)."""
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_listen(self, description: str) -> None:
        """Listen on this server endpoint (tcp:8000, tcp:8000:interface=127.0.0.1,
        unix:/path, ssl:443:privateKey=...); repeatable [default: tcp:8000:interface=127.0.0.1]."""
        try:
            from twisted.internet import reactor

            endpoints.serverFromString(reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {description!r}: {e}") from None
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_handlers(self, path: str) -> None:
        """Event handler class (module.Class, an ws4tx.handlers.EventHandler subclass);
        repeatable."""
        self["handlers"].append(path)

    def opt_allowed_origin(self, origin: str) -> None:
        """Allowed Origin (scheme://host[:port], '*' wildcards); repeatable
        [default: any]."""
        self["allowed-origins"].append(origin)

    def postOptions(self) -> None:
        for option, (_, kind) in _TUNABLES.items():
            value = self[option]
            if value is not None and kind is not str:
                try:
                    self[option] = kind(value)
                except ValueError:
                    raise usage.UsageError(
                        f"--{option} must be a number, not {value!r}") from None
        redis = self["redis"]
        if redis is not None and redis != "embedded":
            try:
                RedisAddress.from_url(redis)
            except InvalidRedisAddress as e:
                raise usage.UsageError(f"--redis: {e}") from None
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if self["workers"] > 1:
            for description in self["listen"]:
                if not description.startswith("tcp:"):
                    raise usage.UsageError(
                        f"--workers shares tcp: ports only, not --listen {description!r}")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def makeService(options: Options, reactor: Any = None) -> service.IService:
    """The service ``twistd ws4tx`` runs."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    values: dict[str, Any] = {}
    settings = None
    if options["django-settings"]:
        from ws4tx import _django

        try:
            settings = _django.setup(options["django-settings"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        values.update(_django.options_from_settings(settings))
    for option, (name, _) in _TUNABLES.items():
        if options[option] is not None:
            values[name] = options[option]
    if options["anonymous-publish"]:
        values["anonymous_publish"] = True
    if options["allowed-origins"]:
        values["allowed_origins"] = options["allowed-origins"]
    if "allowed_origins" in values:
        values["allowed_origins"] = tuple(values["allowed_origins"])
    handler_paths = list(values.pop("handlers", ())) + options["handlers"]
    if values.get("prefix") == "":
        values["prefix"] = None

    # Autobahn logs every frame at debug level, which twistd would print.
    txaio.set_global_log_level("info")
    top = _ServerProcess(reactor)
    embedded = None
    redis = options["redis"]
    try:
        if redis == "embedded":
            embedded = EmbeddedRedis()
            embedded.start()
            _EmbeddedRedisService(embedded).setServiceParent(top)
            address = embedded.address
            _say(f"ws4tx: embedded Redis ({embedded.binary}) at {address.url}; "
                 f"publishers elsewhere: export {_settings.REDIS_URL_ENV}={address.url}")
        elif redis:
            address = RedisAddress.from_url(redis)
        else:
            address = _settings.redis_address(settings if settings is not None else object())
    except (EmbeddedRedisError, InvalidRedisAddress) as e:
        raise usage.UsageError(f"--redis: {e}") from None

    try:
        config = check(ServerConfig(redis=address, **values))
        handlers = load_handler_classes(handler_paths)
    except (TypeError, ValueError) as e:
        if embedded is not None:
            embedded.stop()
        raise usage.UsageError(str(e)) from None

    if options["workers"] > 1:
        _Workers(_worker_argv(options, address), options["workers"],
                 options["drain-timeout"], reactor).setServiceParent(top)
        _say(f"ws4tx: {options['workers']} workers on {', '.join(options['listen'])}")
        return top

    authenticator = fallback = run_in_thread = None
    if settings is not None:
        from ws4tx import _django

        try:
            authenticator = _django.SessionAuthenticator(
                settings, check_origin=not config.allowed_origins)
            if options["wsgi"]:
                fallback = _django.wsgi_resource(options["wsgi"], reactor)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        run_in_thread = _django.run_in_thread
        _django.share_redis_with_publishers(address.url)
    elif options["wsgi"]:
        raise usage.UsageError("--wsgi needs --django-settings")

    push = PushService(
        config,
        listen=options["listen"],
        authenticator=authenticator,
        handlers=handlers,
        fallback=fallback,
        run_in_thread=run_in_thread,
        drain_timeout=options["drain-timeout"],
        reactor=reactor,
    )
    push.setServiceParent(top)
    for description in options["listen"]:
        _say(f"ws4tx: listening on {description}, WebSocket URL {config.websocket_url}")
    return top


class _ServerProcess(service.MultiService):
    """The top service of ``twistd ws4tx``: stops its children one after the other (the
    WebSocket server drains before the embedded Redis stops), and, once that went well,
    lets twistd exit with status 0 after SIGTERM or SIGINT instead of re-raising the signal
    (a graceful drain is a clean exit)."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor

    def startService(self) -> None:
        gc.set_threshold(*GC_THRESHOLDS)
        super().startService()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        for child in reversed(list(self)):
            yield defer.maybeDeferred(child.stopService)
        if getattr(self._reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
            self._reactor._exitSignal = None


def _worker_argv(options: Options, address: RedisAddress) -> list[str]:
    """A worker's ``twistd ws4tx`` arguments: the supervisor's, less ``--workers`` and
    ``--listen``, plus the same ports with SO_REUSEPORT and the resolved Redis."""
    argv, skip = [], False
    for arg in options.argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--workers", "--listen", "-l", "--redis", "-r"):
            skip = "=" not in arg and name == arg
            continue
        argv.append(arg)
    for description in options["listen"]:
        argv.append("--listen=reuseport:" + description[len("tcp:"):])
    return argv + ["--redis=" + address.url]


class _Workers(service.Service):
    """Runs ``count`` ``twistd ws4tx`` workers, restarts one that dies, and on stop sends
    them SIGTERM and waits for their drain (SIGKILL after the drain timeout)."""

    def __init__(self, argv: list[str], count: int, drain_timeout: float, reactor: Any) -> None:
        self.argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                     "-n", "--pidfile=", "ws4tx", *argv]
        self.count = count
        self.drain_timeout = drain_timeout
        self.reactor = reactor
        self.processes: dict[int, Any] = {}
        self._ended: dict[int, defer.Deferred[None]] = {}

    def startService(self) -> None:
        super().startService()
        for number in range(self.count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        worker = _Worker(self, number)
        self._ended[number] = worker.ended
        self.processes[number] = self.reactor.spawnProcess(
            worker, sys.executable, self.argv, env=os.environ,
            childFDs={0: "w", 1: 1, 2: 2})

    def workerEnded(self, number: int, status: Any) -> None:
        self.processes.pop(number, None)
        if self.running:
            _log.warn("worker {n} ended ({status}); restarting it in 1 s", n=number,
                      status=status)
            self.reactor.callLater(1.0, lambda: self.running and self._spawn(number))

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        for process in list(self.processes.values()):
            process.signalProcess("TERM")
        ended = defer.gatherResults(list(self._ended.values()))
        try:
            yield ended.addTimeout(self.drain_timeout + 5, self.reactor)
        except defer.TimeoutError:
            for process in list(self.processes.values()):
                process.signalProcess("KILL")


class _Worker(protocol.ProcessProtocol):
    def __init__(self, workers: _Workers, number: int) -> None:
        self.workers, self.number = workers, number
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        self.workers.workerEnded(self.number, reason.value)
        self.ended.callback(None)


class _EmbeddedRedisService(service.Service):
    """Stops the embedded Redis after everything else (it is the first child)."""

    def __init__(self, redis: EmbeddedRedis) -> None:
        self.redis = redis

    def stopService(self) -> None:
        super().stopService()
        self.redis.stop()
