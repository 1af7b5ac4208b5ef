"""``twistd ws4tx``: the command-line options and the service they make.

Command-line options override the Django settings (``--django-settings``), which override
the defaults. A bad value stops the start with a message naming the option.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Callable, Optional, Sequence, Union

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, endpoints, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.python import failure, usage

from ws4tx import redis_address, schema
from ws4tx.redis_address import InvalidRedisAddress, RedisAddress
from ws4tx.server import _twisted_internals
from ws4tx.server._log import observer, set_level
from ws4tx.server.config import FIELDS, ServerConfig, check
from ws4tx.server.embedded import EmbeddedRedisError, start_first
from ws4tx.server.embedded_service import EmbeddedRedisService
from ws4tx.server.handlers import load_handler_classes
from ws4tx.server.metrics import WORKER_METRICS_ENV
from ws4tx.server.service import PushService

_log = Logger(observer=observer)

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
        env = _worker_environment(config)
        if config.metrics_url:
            metrics_dir = tempfile.mkdtemp(prefix="ws4tx-metrics-")  # mode 0700
            env[WORKER_METRICS_ENV] = metrics_dir
            _TemporaryDirectory(metrics_dir).setServiceParent(top)
        _Workers(_worker_argv(options), env, options["workers"],
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


#: The environment variable by which the supervisor hands its workers the Redis it
#: resolved (in place of ``--redis``, which every local user can read in ``/proc``).
WORKER_REDIS_ENV = "WS4TX_WORKER_REDIS_URL"

#: Settings ``--workers`` does not pass on as options: each worker gets its own port
#: description, the Redis and the secrets come through the environment.
_NOT_PASSED_ON = frozenset({"workers", "listen", "redis"})


def _worker_argv(options: Options) -> list[str]:
    """A worker's ``twistd ws4tx`` arguments: what the supervisor's command line gave,
    less ``--workers``, ``--redis`` and the secrets (see :func:`_worker_environment`), plus
    the same ports with SO_REUSEPORT. Rebuilt from the parsed values, so that no spelling
    of an option (``-rURL``, an abbreviation) slips through."""
    argv = []
    for setting in _OPTIONS:
        if (setting.key in _NOT_PASSED_ON or setting.kind == schema.SECRET
                or setting.key not in options.given):
            continue
        value, name = options.given[setting.key], "--" + setting.option_name
        if setting.flag:
            argv.append(name)
        elif setting.kind in schema.REPEATABLE:
            argv.extend(f"{name}={schema.item_text(setting, item)}" for item in value)
        else:
            argv.append(f"{name}={'' if value is None else value}")
    for description in options["listen"]:
        argv.append("--listen=reuseport:" + description[len("tcp:"):])
    return argv


def _worker_environment(config: ServerConfig,
                        environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """A worker's environment: the supervisor's, plus the Redis it resolved
    (:data:`WORKER_REDIS_ENV`) and each secret setting it resolved (from a file, the
    environment or the Django settings) under the setting's own environment variable.
    A process's environment is readable only by its user, unlike its command line."""
    env = dict(os.environ if environ is None else environ)
    env[WORKER_REDIS_ENV] = redis_address.urls_text(config.shards)
    for setting in FIELDS:
        if setting.kind == schema.SECRET and setting.env:
            value = getattr(config, setting.key)
            if value:
                env[setting.env] = value
            else:
                env.pop(setting.env, None)
    return env


def _why(reason: Any) -> str:
    """Why a worker process ended, for the log."""
    value = getattr(reason, "value", reason)
    if getattr(value, "signal", None):
        return f"killed by signal {value.signal}"
    if getattr(value, "exitCode", None) is not None:
        return f"exited with status {value.exitCode}"
    if isinstance(value, OSError):
        return f"could not start ({value})"
    return f"ended ({value})"


class _Workers(service.Service):
    """Runs ``count`` ``twistd ws4tx`` workers and restarts one that ends.

    A worker that keeps ending is restarted after a growing delay (``backoff(n)`` for its
    n-th restart in a row: 1 s doubling to 60 s); once a worker stayed up ``stable`` seconds
    its count starts again. Each end is logged once, with why and when it restarts. On stop
    the workers get SIGTERM and their drain is awaited (SIGKILL after ``drain_timeout`` and
    a margin); a worker that already ended is fine.

    ``twisted.runner.procmon.ProcessMonitor`` does not fit: its stopService does not wait
    for the processes (twistd would exit before they drained, and never send SIGKILL), it
    relays their output through its own log, and its exit hook is private."""

    #: Extra time, past the drain timeout, a worker has to exit before SIGKILL.
    KILL_MARGIN = 5.0

    def __init__(self, argv: list[str], env: dict[str, str], count: int,
                 drain_timeout: float, reactor: Any,
                 backoff: Callable[[int], float] = backoffPolicy(
                     initialDelay=1.0, maxDelay=60.0, factor=2.0, jitter=lambda: 0.0),
                 stable: float = 60.0) -> None:
        self.argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                     "-n", "--pidfile=", "ws4tx", *argv]
        self.env = env
        self.count = count
        self.drain_timeout = drain_timeout
        self.reactor = reactor
        self.backoff = backoff
        self.stable = stable
        #: worker number -> its process (while it runs).
        self.processes: dict[int, Any] = {}
        #: worker number -> how many times in a row it ended before ``stable`` s.
        self.failures: dict[int, int] = {}
        self._workers: dict[int, _Worker] = {}
        self._restarts: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        for number in range(self.count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        if not self.running:
            return
        worker = _Worker(self, number, self.reactor.seconds())
        self._workers[number] = worker
        try:
            self.processes[number] = self.reactor.spawnProcess(
                worker, sys.executable, self.argv, env=self.env,
                childFDs={0: "w", 1: 1, 2: 2})
        except OSError as e:
            worker.processEnded(failure.Failure(e))

    def workerEnded(self, worker: _Worker, reason: Any) -> None:
        """Called by a worker's protocol when its process ended: restart it (later)."""
        number = worker.number
        self.processes.pop(number, None)
        if not self.running:
            return
        lived = self.reactor.seconds() - worker.started
        if lived >= self.stable:
            self.failures[number] = 0
        attempt = self.failures.get(number, 0)
        self.failures[number] = attempt + 1
        delay = self.backoff(attempt)
        _log.warn("worker {n} (pid {pid}) {why} after {lived:.1f} s; restarting it in "
                  "{delay:g} s", n=number, pid=worker.pid, why=_why(reason), lived=lived,
                  delay=delay)
        self._restarts[number] = self.reactor.callLater(delay, self._spawn, number)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        live = [w for w in self._workers.values() if not w.ended.called]
        self._signal(live, "TERM")
        if (yield self._whenEnded(live, self.drain_timeout + self.KILL_MARGIN)):
            return
        _log.warn("{n} worker(s) still draining after {t:g} s: killing them",
                  n=sum(not w.ended.called for w in live), t=self.drain_timeout)
        self._signal(live, "KILL")
        yield self._whenEnded(live, self.KILL_MARGIN)

    @staticmethod
    def _signal(workers: list[_Worker], signal_name: str) -> None:
        for worker in workers:
            if worker.ended.called or worker.transport is None:
                continue
            process: Any = worker.transport
            try:
                process.signalProcess(signal_name)
            except ProcessExitedAlready:
                pass  # its processEnded is on its way

    def _whenEnded(self, workers: list[_Worker], timeout: float) -> defer.Deferred[bool]:
        """Fires with True once every worker ended, False after ``timeout`` s."""
        waiting: defer.Deferred[bool] = defer.Deferred()
        pending = [w for w in workers if not w.ended.called]
        if not pending:
            return defer.succeed(True)

        def one_ended(_: Any) -> Any:
            if not waiting.called and all(w.ended.called for w in pending):
                waiting.callback(True)
            return _

        for worker in pending:
            worker.ended.addCallback(one_ended)
        def timed_out() -> None:
            if not waiting.called:
                waiting.callback(False)

        timer = self.reactor.callLater(timeout, timed_out)
        waiting.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return waiting


class _Worker(protocol.ProcessProtocol):
    """One worker process: tells :class:`_Workers` when it ended."""

    def __init__(self, workers: _Workers, number: int, started: float) -> None:
        self.workers, self.number, self.started = workers, number, started
        self.pid: Optional[int] = None
        #: Fires (with None) when the process ended.
        self.ended: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def processEnded(self, reason: Any) -> None:
        self.workers.workerEnded(self, reason)
        self.ended.callback(None)


class _TemporaryDirectory(service.Service):
    """Removes a directory once everything after it stopped."""

    def __init__(self, path: str) -> None:
        self.path = path

    def stopService(self) -> None:
        super().stopService()
        shutil.rmtree(self.path, ignore_errors=True)


