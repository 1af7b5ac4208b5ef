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

from ws4tx import redis_address, schema
from ws4tx.server.config import FIELDS, ServerConfig, check
from ws4tx.server.embedded import EmbeddedRedis, EmbeddedRedisError
from ws4tx.server.handlers import load_handler_classes
from ws4tx.redis_address import InvalidRedisAddress, RedisAddress
from ws4tx.server.service import PushService

_log = Logger()

#: CPython's cyclic-GC thresholds for the server process. A WebSocket connection leaves
#: cyclic garbage behind its handshake, so the collector must run, but at CPython's
#: default of a young collection every 700 allocations it ran so often during connection
#: bursts that the connect rate fell as connections accumulated (the benchmark's step to
#: 10,000: 0.65x the ceiling's rate; with these thresholds 1.0x, memory per connection
#: unchanged). Only the youngest threshold is raised.
GC_THRESHOLDS = (50_000, 10, 10)

DEFAULT_LISTEN = schema.get("listen").default[0]

#: The settings ``twistd ws4tx`` reads from its command line, each by its option.
_OPTIONS: tuple[schema.Setting, ...] = tuple(s for s in schema.SETTINGS if s.option_name)
#: Settings the server also reads from the Django settings (``--django-settings``).
_PROCESS_KEYS = frozenset(s.key for s in schema.SETTINGS if s.where == schema.PROCESS)


def _repeatable(setting: schema.Setting) -> Any:
    def opt(self: "Options", value: str) -> None:
        self.given.setdefault(setting.key, []).extend(self._parse(setting, value))

    opt.__doc__ = schema.help_text(setting)
    return opt


class Options(usage.Options):
    """Options of ``twistd ws4tx``, one per setting of :mod:`ws4tx.schema`.

    Parsed values are in ``self.given`` (setting key -> value, only what the command line
    gave); the process settings (``listen``, ``workers``, ...) are also under their option
    names, given or default."""

    synopsis = "[options]"
    longdesc = (
        "Serve django-websocket-redis compatible WebSockets (and ws4tx events) from Redis. "
        "Clients connect to ws://HOST{websocket-url}{facility}?subscribe-broadcast&... ; "
        "Django publishes with ws4tx.publisher.RedisPublisher or ws4tx.api. Options "
        "override the Django settings (--django-settings), which override the defaults."
    )
    optFlags = [[s.option_name, s.short, schema.help_text(s)] for s in _OPTIONS if s.flag]
    optParameters = [
        [s.option_name, s.short, None, schema.help_text(s)]
        for s in _OPTIONS if not s.flag and s.kind != schema.LIST
    ]

    def __init__(self) -> None:
        super().__init__()
        #: setting key -> value, for what the command line gave.
        self.given: dict[str, Any] = {}

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        """Parse, remembering the arguments (``--workers`` passes them on)."""
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    @staticmethod
    def _parse(setting: schema.Setting, text: str) -> Any:
        try:
            return setting.parse_text(text)
        except schema.SettingError as e:
            raise usage.UsageError(str(e)) from None

    def opt_listen(self, description: str) -> None:
        try:
            from twisted.internet import reactor

            endpoints.serverFromString(reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {description!r}: {e}") from None
        self.given.setdefault("listen", []).append(description)

    opt_listen.__doc__ = schema.help_text(schema.get("listen"))
    opt_l = opt_listen

    def postOptions(self) -> None:
        for setting in _OPTIONS:
            if setting.kind == schema.LIST:
                if setting.key in self.given:
                    self.given[setting.key] = tuple(self.given[setting.key])
                continue
            value = self[setting.option_name]
            if setting.flag:
                if value:
                    self.given[setting.key] = not setting.default
            elif value is not None:
                if setting.kind == schema.SECRET:
                    value = self._secret(setting, value)
                self.given[setting.key] = self._parse(setting, value)
        redis = self.given.get("redis")
        if redis is not None and redis != "embedded":
            try:
                RedisAddress.from_url(redis)
            except InvalidRedisAddress as e:
                raise usage.UsageError(f"--redis: {e}") from None
        # The process settings, given or default, under their option names.
        for key in _PROCESS_KEYS:
            setting = schema.get(key)
            value = self.given.get(key, setting.default)
            self[setting.option_name] = list(value) if setting.kind == schema.LIST else value
        if self["workers"] > 1:
            for description in self["listen"]:
                if not description.startswith("tcp:"):
                    raise usage.UsageError(
                        f"--workers shares tcp: ports only, not --listen {description!r}")

    @staticmethod
    def _secret(setting: schema.Setting, path: str) -> str:
        try:
            return schema.read_secret_file(setting, path) or ""
        except schema.SettingError as e:
            raise usage.UsageError(str(e)) from None


for _setting in _OPTIONS:
    if _setting.kind == schema.LIST and _setting.key != "listen":
        setattr(Options, "opt_" + _setting.option_name.replace("-", "_"),
                _repeatable(_setting))
del _setting


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
        from ws4tx.server import _django

        try:
            settings = _django.setup(options["django-settings"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            values.update(_django.options_from_settings(settings))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    try:
        for setting in FIELDS:
            if setting.kind == schema.SECRET:
                from_env = schema.from_environment(setting)
                if from_env is not None:
                    values[setting.key] = from_env
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    values.update({k: v for k, v in options.given.items() if k not in _PROCESS_KEYS})
    handler_paths = list(values.pop("handlers", ())) + options["handlers"]

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
                 f"publishers elsewhere: export {redis_address.REDIS_URL_ENV}={address.url}")
        elif redis:
            address = RedisAddress.from_url(redis)
        else:
            address = redis_address.from_settings(settings if settings is not None else object())
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
        from ws4tx.server import _django

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
