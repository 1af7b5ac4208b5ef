"""``twistd ws4tx``: the command-line options and the service they make.

Command-line options override the Django settings (``--django-settings``), which override
the defaults. A bad value stops the start with a message naming the option.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import tempfile
from typing import Any, Optional, Sequence, Union

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python import usage

from ws4tx import redis_address, schema
from ws4tx.redis_address import InvalidRedisAddress, RedisAddress
from ws4tx.server import _twisted_internals
from ws4tx.server._authgate import AuthGate
from ws4tx.server._log import observer, set_level
from ws4tx.server.config import FIELDS, ServerConfig, check
from ws4tx.server.embedded import EmbeddedRedisError, start_first
from ws4tx.server.embedded_service import EmbeddedRedisService
from ws4tx.server.handlers import load_handler_classes
from ws4tx.server.metrics import WORKER_METRICS_ENV
from ws4tx.server.service import PushService
from ws4tx.server.workers import (
    WORKER_REDIS_ENV,
    TemporaryDirectory,
    Worker,
    Workers,
    worker_argv,
    worker_environment,
)

_log = Logger(observer=observer)

# The --workers supervisor lives in ws4tx.server.workers; its former names here stay.
_Workers, _Worker, _TemporaryDirectory = Workers, Worker, TemporaryDirectory
_worker_argv, _worker_environment = worker_argv, worker_environment

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
    def opt(self: Options, value: str) -> None:
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
        for s in _OPTIONS if not s.flag and s.kind not in schema.REPEATABLE
    ]

    def __init__(self) -> None:
        super().__init__()
        #: setting key -> value, for what the command line gave.
        self.given: dict[str, Any] = {}

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
            check_port(description)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {description!r}: {e}") from None
        self.given.setdefault("listen", []).append(with_backlog(description))

    opt_listen.__doc__ = schema.help_text(schema.get("listen"))
    opt_l = opt_listen

    def postOptions(self) -> None:
        for setting in _OPTIONS:
            if setting.kind in schema.REPEATABLE:
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
        try:
            embedded = embedded_spec(redis)
            if embedded is not None:
                embedded_port(embedded)
        except ValueError as e:
            raise usage.UsageError(f"--redis: {e}") from None
        if redis and embedded is None:
            try:
                redis_address.parse_list(redis, "--redis")
            except InvalidRedisAddress as e:
                raise usage.UsageError(str(e)) from None
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
    if _setting.kind in schema.REPEATABLE and _setting.key != "listen":
        setattr(Options, "opt_" + _setting.option_name.replace("-", "_"),
                _repeatable(_setting))
        if _setting.short:
            setattr(Options, "opt_" + _setting.short, _repeatable(_setting))
del _setting


#: The listen backlog of a tcp: or reuseport: port whose description names none: Twisted's
#: default, 50, makes a burst of reconnecting clients wait out SYN retransmits (858
#: connections/s against 2,500-4,100/s with a large backlog, measured on one machine).
PUSH_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=`` :data:`PUSH_BACKLOG` when it is a ``tcp:`` or
    ``reuseport:`` port that names no backlog of its own."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "reuseport") and "backlog=" not in description:
        return f"{description}:backlog={PUSH_BACKLOG}"
    return description


def check_port(description: str) -> None:
    """ValueError when a ``tcp:``, ``ssl:`` or ``reuseport:`` description names a port
    outside 0-65535 (Twisted accepts it, and fails only when it listens)."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "ssl", "reuseport"):
        return
    fields = re.split(r"(?<!\\):", rest)
    port = next((f for f in fields if "=" not in f), None)
    port = next((f[5:] for f in fields if f.startswith("port=")), port)
    if port is not None and port.isdigit() and not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} is not a TCP port (0-65535)")


def embedded_spec(redis: Union[str, Sequence[str], None]) -> Optional[str]:
    """The ``embedded[:PORT]`` that ``--redis`` gives (one value, or the repeated option's
    values), or None when it names no embedded Redis; ValueError for an embedded Redis
    among other servers (it is one server: it cannot be sharded with others)."""
    values = [redis] if isinstance(redis, str) else list(redis or ())
    if not any(value.startswith("embedded") for value in values):
        return None
    if len(values) > 1:
        raise ValueError("embedded is one server: it cannot be sharded with others")
    return values[0]


def embedded_port(redis: str) -> Optional[int]:
    """The port ``--redis embedded:PORT`` asks for (None for plain ``embedded``: a free
    one); ValueError for anything else."""
    if redis == "embedded":
        return None
    kind, _, port = redis.partition(":")
    if kind == "embedded" and port.isdigit() and 0 < int(port) < 65536:
        return int(port)
    raise ValueError(f"{redis!r}: not 'embedded' nor 'embedded:PORT' (a TCP port)")


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
    # The command line's level, else the Django settings', else info.
    set_level(options.given.get("log_level") or values.pop("log_level", "info"))
    values.pop("log_level", None)
    top = _ServerProcess(reactor)
    embedded = None
    # A worker of --workers gets the Redis its supervisor resolved through the environment.
    redis = options["redis"] or os.environ.pop(WORKER_REDIS_ENV, None)
    # ... and the directory of the workers' metrics sockets.
    metrics_peers = os.environ.pop(WORKER_METRICS_ENV, None)
    try:
        spec = embedded_spec(redis)
        if spec is not None:
            embedded = start_first(embedded_port(spec), lambda text: _say(f"ws4tx: {text}"))
            EmbeddedRedisService(embedded, reactor).setServiceParent(top)
            address = embedded.address
            pid = embedded.process.pid if embedded.process is not None else None
            _say(f"ws4tx: embedded Redis ({embedded.binary}, pid {pid}) at {address.url}; "
                 f"publishers elsewhere: export {redis_address.REDIS_URL_ENV}={address.url}")
            shards: tuple[RedisAddress, ...] = (address,)
        elif redis:
            shards = redis_address.parse_list(redis, "--redis")
        else:
            shards = redis_address.shards_from_settings(
                settings if settings is not None else object())
    except (EmbeddedRedisError, InvalidRedisAddress) as e:
        raise usage.UsageError(f"--redis: {e}") from None
    address = shards[0]

    try:
        config = check(ServerConfig(redis=address, redis_shards=shards if len(shards) > 1
                                    else (), **values))
        handlers = load_handler_classes(handler_paths)
    except (TypeError, ValueError) as e:
        if embedded is not None:
            embedded.stop()
        raise usage.UsageError(str(e)) from None

    if options["workers"] > 1:
        env = worker_environment(config)
        if config.metrics_url:
            metrics_dir = tempfile.mkdtemp(prefix="ws4tx-metrics-")  # mode 0700
            env[WORKER_METRICS_ENV] = metrics_dir
            TemporaryDirectory(metrics_dir).setServiceParent(top)
        Workers(worker_argv(options), env, options["workers"],
                options["drain-timeout"], reactor).setServiceParent(top)
        _say(f"ws4tx: {options['workers']} workers on {', '.join(options['listen'])}")
        return top

    authenticator = fallback = run_in_thread = None
    if settings is not None:
        from ws4tx.server import _django

        try:
            authenticator = _django.SessionAuthenticator(
                settings, check_origin=not config.allowed_origins,
                gate=AuthGate(config.auth_concurrency, config.auth_queue))
            if options["wsgi"]:
                fallback = _django.wsgi_resource(options["wsgi"], reactor)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        run_in_thread = _django.run_in_thread
        _django.share_redis_with_publishers(redis_address.urls_text(config.shards))
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
        metrics_peers=metrics_peers,
    )
    push.setServiceParent(top)
    _Listening(options["listen"], config.websocket_url).setServiceParent(top)
    return top


class _Listening(service.Service):
    """Says where the server listens, once it does (started after the ports were)."""

    def __init__(self, descriptions: list[str], websocket_url: str) -> None:
        self.descriptions = descriptions
        self.websocket_url = websocket_url

    def startService(self) -> None:
        super().startService()
        for description in self.descriptions:
            _log.info("listening on {description}, WebSocket URL {url}",
                      description=description, url=self.websocket_url)


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
        _twisted_internals.forget_exit_signal(self._reactor)
