"""Server-side event handlers: a class per facility with ``on_connect``, ``on_close`` and
``on_<event>`` methods.

::

    class Chat(EventHandler):
        facility = "chat"

        def on_connect(self, client):
            client.emit("welcome", {"user": client.identity.user})

        async def on_message(self, client, data):
            await self.server.emit("message", data, facility="chat", broadcast=True)
            return {"delivered": True}          # answers the sender's acknowledgement

A method may return a value, a Deferred or be a coroutine; what it returns answers the
event's acknowledgement. :class:`EventRefused` answers that client alone with its message
(an error ack, or a ``ws4tx.error`` event); any other exception is logged and answered with
"internal error". The connection and the server live on. Register
handlers with ``twistd ws4tx --handlers dotted.path.Chat`` or the ``WS4TX_HANDLERS``
setting.
"""

from __future__ import annotations

import importlib
import re
import uuid
from typing import Any, Callable, ClassVar, Iterable, Optional, Protocol, TypeVar

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx import _arguments, closecodes, control, envelope
from ws4tx.history import History, Rule, history_for
from ws4tx.naming import (
    AUDIENCES,
    Identity,
    channels_for,
    control_channel,
    nodes_keys,
    presence_keys,
    reply_channel,
)
from ws4tx.presence import parse_entries, parse_stats
from ws4tx.server._log import observer
from ws4tx.server.broker import IBroker, publish_to

T = TypeVar("T")

#: Event names a client may emit to a handler method (``on_<name>``).
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")
_RESERVED = frozenset({"connect", "close"})


class Client(Protocol):
    """What a handler sees of one connection."""

    identity: Identity
    facility: str
    peer: str

    def emit(self, event: str, data: Any = None) -> None:
        """Send an event to this client alone."""


class ServerAPI:
    """What a handler may do beyond its client: publish to audiences on every node
    (through the broker), close connections or make them leave channels on every node, and
    run blocking code (the Django ORM) in a thread."""

    log = Logger(observer=observer)

    def __init__(
        self,
        broker: IBroker,
        prefix: Optional[str],
        run_in_thread: Optional[Callable[..., defer.Deferred[Any]]] = None,
        history: tuple[Rule, ...] = (),
        *,
        listen: Optional[Callable[[str, Optional[Callable[[bytes], None]]], None]] = None,
        clock: Optional[IReactorTime] = None,
        presence: tuple[str, ...] = (),
    ) -> None:
        self._broker = broker
        self._presence = presence
        self._prefix = prefix
        self._history = history
        self._run_in_thread = run_in_thread or threads.deferToThread
        #: ``listen(channel, receiver)`` hands a channel's messages to ``receiver`` once
        #: subscribed; ``listen(channel, None)`` stops that and unsubscribes (the node's
        #: router: :meth:`~ws4tx.server.router.Router.pin`, ``unfollow``).
        self._listen = listen
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock: IReactorTime = clock  # type: ignore[assignment]

    def audience_channels(
        self,
        facility: str,
        broadcast: bool = False,
        users: Iterable[str] = (),
        groups: Iterable[str] = (),
        sessions: Iterable[str] = (),
    ) -> list[str]:
        """The channels of an audience of ``facility`` (:func:`ws4tx.naming.channels_for`).

        ``sessions`` are session channel ids as a client's ``identity.session`` has them
        (never session keys: the Twisted side does not turn keys into ids).
        """
        return channels_for(self._prefix, facility, broadcast=broadcast, users=users,
                            groups=groups, sessions=sessions)

    def publish(
        self, facility: str, message: bytes | str, *, expire: int = 0, **audience: Any
    ) -> defer.Deferred[int]:
        """Publish a raw message to an audience (``broadcast=True``, ``users=[...]``,
        ``groups=[...]``, ``sessions=[identity.session, ...]``); fires with the number of
        receiving nodes. No audience, a bad facility or a bad ``expire`` raise ValueError
        at once, with :func:`ws4tx.api.publish`'s message."""
        _arguments.audience(facility, **audience)
        seconds = _arguments.expire(expire)
        payload = message.encode() if isinstance(message, str) else message
        return publish_to(self._broker, self.audience_channels(facility, **audience), payload,
                          seconds, history_for(self._history, facility))

    def history(
        self, facility: str, *, since: Optional[int] = None, limit: Optional[int] = None,
        **audience: Any,
    ) -> defer.Deferred[History]:
        """The history of ONE channel of ``facility`` (a facility with setting
        ``HISTORY``): ``broadcast=True``, or one of ``users``, ``groups``, ``sessions``.
        The same read as the Django side's :func:`ws4tx.api.history`: without ``since`` the
        last ``limit`` messages, with it the first ``limit`` after that offset, oldest
        first, with the channel's epoch and last offset. Fails with ``ValueError`` for a
        facility without history or an audience of several channels."""
        try:
            _arguments.audience(facility, **audience)
            channels = self.audience_channels(facility, **audience)
            retention = _arguments.history(self._history, facility, channels, since, limit)
        except ValueError:
            return defer.fail()
        return self._broker.history(channels[0], retention, since, limit)

    def emit(
        self, event: str, data: Any = None, *, facility: str, expire: int = 0, **audience: Any
    ) -> defer.Deferred[int]:
        """Emit an event to an audience of ``facility`` on every ws4tx node (``ValueError``
        for one of the server's own ``ws4tx.*`` names)."""
        envelope.check_event_name(event)
        return self.publish(facility, envelope.encode_event(event, data), expire=expire,
                            **audience)

    def disconnect(
        self,
        *,
        users: Iterable[str] = (),
        sessions: Iterable[str] = (),
        facility: Optional[str] = None,
        code: int = closecodes.CLOSED_BY_SITE,
        reason: str = control.DEFAULT_REASON,
    ) -> defer.Deferred[int]:
        """Close, on every node, the connections of ``users`` (user names) or ``sessions``
        (session channel ids, as a client's ``identity.session`` has them), only those to
        ``facility`` when given, with ``code`` and ``reason`` (at most 120 UTF-8 bytes).

        Fires with the number of nodes that got the command (each closes its own matching
        connections), or fails with ``BrokerUnavailable``; bad arguments raise ValueError
        at once. As :func:`ws4tx.api.disconnect` does from Django.
        """
        command = control.disconnect(users=users, sessions=sessions, facility=facility,
                                     code=code, reason=reason)
        return self._broker.publish(control_channel(self._prefix), control.encode(command))

    def unsubscribe(
        self,
        *,
        users: Iterable[str] = (),
        sessions: Iterable[str] = (),
        facility: Optional[str] = None,
        audiences: Iterable[str] = AUDIENCES,
        groups: Optional[Iterable[str]] = None,
        reason: str = "",
    ) -> defer.Deferred[int]:
        """Make, on every node, the connections of ``users`` or ``sessions`` (session
        channel ids), only those to ``facility`` when given, leave their channels of
        ``audiences`` (of ``groups`` only, for the group audience, when given) without
        closing. As :func:`ws4tx.api.unsubscribe` does from Django; fires as
        :meth:`disconnect` does."""
        command = control.unsubscribe(users=users, sessions=sessions, facility=facility,
                                      audiences=audiences, groups=groups, reason=reason)
        return self._broker.publish(control_channel(self._prefix), control.encode(command))

    def subscribe(
        self,
        facility: str,
        *,
        users: Iterable[str] = (),
        groups: Iterable[str] = (),
        sessions: Iterable[str] = (),
        audiences: Iterable[str] = AUDIENCES,
        reason: str = "",
    ) -> defer.Deferred[int]:
        """Make, on every node, the event connections of ``users``, of members of
        ``groups`` or of ``sessions`` (session channel ids) subscribe ``facility``'s
        channels of ``audiences`` (of ``groups`` only, for the group audience, when
        given); they are told ``ws4tx.subscribed``. As :func:`ws4tx.api.subscribe` does
        from Django; fires as :meth:`disconnect` does."""
        command = control.subscribe(facility, users=users, sessions=sessions, groups=groups,
                                    audiences=audiences, reason=reason)
        return self._broker.publish(control_channel(self._prefix), control.encode(command))

    def presence(self, facility: str, **audience: Any) -> defer.Deferred[list[dict[str, Any]]]:
        """Who is connected to ``facility`` (setting ``PRESENCE``) on any node, or to ONE
        of its audiences (``broadcast=True``, ``users=[name]``, ``groups=[name]``,
        ``sessions=[identity.session]``): as :func:`ws4tx.api.presence` from Django."""
        return self._readPresence(facility, "list", audience).addCallback(
            lambda read: [e.as_dict() for e in parse_entries(read)])

    def presence_stats(self, facility: str, **audience: Any) -> defer.Deferred[dict[str, int]]:
        """``{"clients", "users"}`` of :meth:`presence`, logarithmic in its size: as
        :func:`ws4tx.api.presence_stats` from Django."""
        def stats(read: Any) -> dict[str, int]:
            found = parse_stats(read)
            return {"clients": found.clients, "users": found.users}

        return self._readPresence(facility, "stats", audience).addCallback(stats)

    def _readPresence(self, facility: str, what: str,
                      audience: dict[str, Any]) -> defer.Deferred[Any]:
        try:
            named = _arguments.presence(self._presence, facility, **audience)
        except (ValueError, TypeError):
            return defer.fail()
        return self._broker.readPresence(presence_keys(self._prefix, facility), what, named)

    def channels(self, pattern: str = "*", *,
                 timeout: float = control.DEFAULT_TIMEOUT) -> defer.Deferred[dict[str, Any]]:
        """The channels with clients on any node whose names match ``pattern``
        (``fnmatch``, on the whole name: ``ws4tx:broadcast:*``), gathered from every node
        over the control channel: fires within ``timeout`` seconds with ``{"channels":
        {channel: clients}, "nodes": [ids that answered], "missing": [ids]}``, a missing
        node being one in the registry that did not answer in time (it is not waited
        for). As :func:`ws4tx.api.channels` does from Django."""
        return self._gather(control.CHANNELS, pattern, timeout)

    def info(self, *, timeout: float = control.DEFAULT_TIMEOUT) -> defer.Deferred[dict[str, Any]]:
        """Every node's :meth:`~ws4tx.server.node.Node.info` (clients, channels,
        versions, uptime, ...), gathered as :meth:`channels` does: ``{"nodes": [...],
        "missing": [ids]}``."""
        return self._gather(control.INFO, "*", timeout)

    def _gather(self, op: str, pattern: str, timeout: float) -> defer.Deferred[dict[str, Any]]:
        """Ask every node (``op``) on the control channel and gather their answers on a
        reply channel of this query's own, for at most ``timeout`` seconds."""
        listen = self._listen
        if listen is None:
            raise RuntimeError("this ServerAPI has no router to hear the nodes' answers")
        reply = reply_channel(self._prefix, uuid.uuid4().hex)
        query = control.query(op, reply, pattern)
        answers: dict[str, Any] = {}
        expected: list[str] = []
        receivers: list[int] = []
        result: defer.Deferred[dict[str, Any]] = defer.Deferred()

        def received(payload: bytes) -> None:
            try:
                node, data = control.decode_answer(payload)
            except control.InvalidCommand as e:
                self.log.warn("ignored an answer on {reply}: {error}", reply=reply, error=e)
                return
            answers[node] = data
            if receivers and len(answers) >= receivers[0]:
                finish()

        def end() -> None:
            if timer.active():
                timer.cancel()
            listen(reply, None)

        def finish() -> None:
            if not result.called:
                end()
                result.callback(control.gathered(op, answers, expected))

        def failed(failure: Failure) -> None:
            if not result.called:
                end()
                result.errback(failure)

        def sent(count: int) -> None:
            receivers.append(count)
            if len(answers) >= count:
                finish()

        listen(reply, received)
        timer = self._clock.callLater(timeout, finish)
        registry = self._broker.readPresence(nodes_keys(self._prefix), "list")
        registry.addCallback(lambda entries: expected.extend(
            e.id for e in parse_entries(entries)))
        registry.addCallback(lambda _: self._broker.subscribe(reply))
        registry.addCallback(lambda _: self._broker.publish(
            control_channel(self._prefix), control.encode(query)))
        registry.addCallbacks(sent, failed)
        return result

    def run_in_thread(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Run ``f`` in the thread pool (with Django's connection hygiene when Django is
        set up); never call the ORM from the reactor thread."""
        return self._run_in_thread(f, *args, **kwargs)


class EventHandler:
    """Base class of the handlers of one facility; one instance per server process."""

    #: The facility whose events this class handles.
    facility: ClassVar[str] = ""

    def __init__(self, server: ServerAPI) -> None:
        self.server = server

    def on_connect(self, client: Client) -> Any:
        """A client connected to this facility."""

    def on_close(self, client: Client) -> Any:
        """A client of this facility went away."""

    def presence_info(self, client: Client) -> Any:
        """The site's info about ``client`` in the facility's presence (setting
        ``PRESENCE``): a JSON object of at most 4 KB (its display name, say), a Deferred
        or coroutine of one, or None (the default) for none. Called once, when the client
        connects; the client joins the presence once it answers. Use
        ``self.server.run_in_thread`` for the ORM."""
        return None


class EventRefused(Exception):
    """Raise it in a handler to refuse an event with a message for the client (an error
    acknowledgement, or a ``ws4tx.error`` event); unlike other exceptions it is not logged
    as a server error."""


def handler_method(handler: Optional[EventHandler], event: str) -> Optional[Callable[..., Any]]:
    """The method of ``handler`` for a client's ``event``, or None.

    Only names of letters, digits and ``_`` reach a method, and never ``on_connect`` or
    ``on_close``: a client cannot call anything but event methods.
    """
    if handler is None or event in _RESERVED or not _EVENT_NAME.match(event):
        return None
    method = getattr(handler, f"on_{event}", None)
    return method if callable(method) else None


def load_handler_classes(paths: Iterable[str]) -> list[type[EventHandler]]:
    """Import ``module.Class`` paths; raise ValueError naming a bad one."""
    classes = []
    for path in paths:
        module_name, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"handlers: {path!r} does not import ({type(e).__name__}: "
                             f"{e}); check the name and PYTHONPATH") from None
        if not (isinstance(cls, type) and issubclass(cls, EventHandler)):
            raise ValueError(f"handlers: {path!r} is not an EventHandler subclass")
        if not cls.facility:
            raise ValueError(f"handlers: {path!r} does not set its facility")
        classes.append(cls)
    return classes
