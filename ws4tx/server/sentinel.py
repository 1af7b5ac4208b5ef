"""Redis Sentinel for the Twisted side: an endpoint that connects to the current master.

:class:`SentinelEndpoint` is an ``IStreamClientEndpoint``: every ``connect()`` (so every
(re)connection attempt of the broker's ClientServices) asks the Sentinels, one after the
other, ``SENTINEL get-master-addr-by-name``, connects to the address the first one gives,
and checks with ``ROLE`` that the server it reached is a master before handing the
connection to the caller's protocol. A Sentinel that is down or does not know the master,
or a server that is (still, or again) a replica, fails the attempt: the ClientService
retries with its backoff, and the next attempt asks the Sentinels again. A failover is thus
followed within the Sentinels' failover time plus one backoff delay.

The few Redis commands this needs are spoken here (RESP2), on short connections of their
own, not through txredisapi.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional, cast

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ws4tx.redis_address import RedisAddress
from ws4tx.server._endpoints import direct_endpoint
from ws4tx.server._log import observer


class SentinelError(Exception):
    """The master could not be found through the Sentinels, or is not a master."""


class ReplyError(Exception):
    """Redis answered a command with an error reply."""


class _Incomplete(Exception):
    """The buffer does not hold a whole reply yet."""


def encode_command(*args: Any) -> bytes:
    """A RESP2 command: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse_reply(buffer: bytes, start: int = 0) -> tuple[Any, int]:
    """One RESP2 reply from ``buffer[start:]``: (value, end offset). An error reply is
    returned as a :class:`ReplyError` value; an incomplete reply raises ``_Incomplete``."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        raise _Incomplete()
    kind, line, after = buffer[start:start + 1], buffer[start + 1:end], end + 2
    if kind == b"+":
        return line, after
    if kind == b"-":
        return ReplyError(line.decode("utf-8", "replace")), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            raise _Incomplete()
        return buffer[after:after + size], after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = parse_reply(buffer, after)
            items.append(item)
        return items, after
    raise ValueError(f"not a RESP2 reply: {buffer[start:start + 20]!r}")


class _CommandsProtocol(Protocol):
    """Sends a fixed list of commands at once and fires :attr:`replies` with their
    replies (error replies included, as :class:`ReplyError` values)."""

    def __init__(self, commands: list[tuple[Any, ...]]) -> None:
        self.commands = commands
        self.replies: defer.Deferred[list[Any]] = defer.Deferred(self._cancel)
        self._buffer = b""
        self._got: list[Any] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(encode_command(*c) for c in self.commands))

    def dataReceived(self, data: bytes) -> None:
        if self.replies.called:
            return
        self._buffer += data
        try:
            while len(self._got) < len(self.commands):
                reply, end = parse_reply(self._buffer)
                self._buffer = self._buffer[end:]
                self._got.append(reply)
        except _Incomplete:
            return
        except ValueError as e:
            self._finish(Failure(SentinelError(f"unreadable answer: {e}")))
            return
        self._finish(self._got)

    def _finish(self, result: Any) -> None:
        if self.replies.called:
            return
        if isinstance(result, Failure):
            self.replies.errback(result)
        else:
            self.replies.callback(result)

    def _cancel(self, d: defer.Deferred[list[Any]]) -> None:
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.replies.called:
            self.replies.errback(SentinelError(
                f"the connection closed before the answer ({reason.getErrorMessage()})"))


def _auth(username: Optional[str], password: Optional[str]) -> list[tuple[Any, ...]]:
    if not password:
        return []
    return [("AUTH", username, password) if username else ("AUTH", password)]


class _RoleChecked(Protocol):
    """Stands in front of the caller's protocol on a new connection to the master: sends
    AUTH (if any) and ROLE, and only if the server says ``master`` builds the caller's
    protocol, connects it to the transport and forwards everything to it from then on."""

    def __init__(self, factory: Any, addr: Any, username: Optional[str],
                 password: Optional[str]) -> None:
        self.factory = factory
        self.addr = addr
        self.checker = _CommandsProtocol(_auth(username, password) + [("ROLE",)])
        self.inner: Any = None
        #: Fires with the caller's protocol once the server proved to be a master.
        self.ready: defer.Deferred[Any] = defer.Deferred(lambda _: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def connectionMade(self) -> None:
        self.checker.makeConnection(self.transport)
        self.checker.replies.addCallbacks(self._checked, self._failed)

    def _checked(self, replies: list[Any]) -> None:
        if self.ready.called:
            return
        for reply in replies:
            if isinstance(reply, ReplyError):
                self._failed(Failure(SentinelError(f"{self._where()} answered: {reply}")))
                return
        role = replies[-1]
        name = role[0] if isinstance(role, list) and role else role
        if name != b"master":
            shown = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
            self._failed(Failure(SentinelError(
                f"{self._where()} is a {shown}, not the master (a failover is under way)")))
            return
        inner = self.factory.buildProtocol(self.addr)
        if inner is None:
            self._abort()
            self.ready.errback(SentinelError("the protocol factory refused the connection"))
            return
        self.inner = inner
        rest, self.checker._buffer = self.checker._buffer, b""
        inner.makeConnection(self.transport)
        if rest:
            inner.dataReceived(rest)
        self.ready.callback(inner)

    def _failed(self, failure: Failure) -> None:
        self._abort()
        if not self.ready.called:
            self.ready.errback(failure)

    def _where(self) -> str:
        host = getattr(self.addr, "host", "?")
        port = getattr(self.addr, "port", "?")
        return f"Redis at {host}:{port}"

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
        else:
            self.checker.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
        else:
            self.checker.connectionLost(reason)


class _RoleCheckedFactory(Factory):
    noisy = False

    def __init__(self, factory: Any, username: Optional[str], password: Optional[str]) -> None:
        self.factory = factory
        self.username = username
        self.password = password

    def buildProtocol(self, addr: Any) -> _RoleChecked:
        return _RoleChecked(self.factory, addr, self.username, self.password)


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to the master that the Sentinels of ``address`` name (see the module)."""

    log = Logger(observer=observer)

    def __init__(self, reactor: Any, address: RedisAddress, timeout: float) -> None:
        if not address.is_sentinel or not address.master_name:
            raise ValueError("a SentinelEndpoint needs a redis+sentinel:// address")
        self.reactor = reactor
        self.address = address
        self.timeout = timeout
        #: The master's (host, port) as the Sentinels last gave it.
        self.master: Optional[tuple[str, int]] = None
        self._first = 0  # the Sentinel that answered last is asked first
        #: The master each open connection was made to, by transport.
        self._connected_to: weakref.WeakKeyDictionary[Any, tuple[str, int]] = \
            weakref.WeakKeyDictionary()

    def master_of(self, protocol: Any) -> Optional[tuple[str, int]]:
        """The master (as the Sentinels named it) that ``protocol``'s connection, made by
        this endpoint, was made to; None for another connection."""
        transport = getattr(protocol, "transport", None)
        return None if transport is None else self._connected_to.get(transport)

    def _endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        return direct_endpoint(self.reactor, RedisAddress(host=host, port=port,
                                                          ssl=self.address.ssl),
                               self.timeout)

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        """Ask the Sentinels, connect to the master, check its ROLE; fires with the
        protocol ``protocolFactory`` built, or fails (and may be retried)."""
        return defer.Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: Any) -> Any:
        host, port = await self.master_address()
        wrapper = await self._bounded(self._endpoint(host, port).connect(
            _RoleCheckedFactory(protocolFactory, self.address.username,
                                self.address.password)))
        protocol = await self._bounded(wrapper.ready)
        self._connected_to[wrapper.transport] = (host, port)
        return protocol

    def _bounded(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        return d.addTimeout(self.timeout, self.reactor)

    async def master_address(self) -> tuple[str, int]:
        """The master's (host, port), from the first Sentinel (in turn) that knows it."""
        name = self.address.master_name
        problems = []
        unknown_to: list[str] = []
        count = len(self.address.sentinels)
        for i in range(count):
            index = (self._first + i) % count
            host, port = self.address.sentinels[index]
            try:
                found = await self._ask(host, port)
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                problems.append(f"{host}:{port}: {_describe(e)}")
                continue
            if found is None:
                problems.append(f"{host}:{port} does not know a master {name!r}")
                unknown_to.append(f"{host}:{port}")
                continue
            self._first = index
            if found != self.master:
                self.log.info("Redis Sentinel: master {name} is at {host}:{port}",
                              name=name, host=found[0], port=found[1])
                self.master = found
            return found
        if len(unknown_to) == count:
            raise SentinelError(f"no such master: no Sentinel knows a master {name!r} "
                                f"({', '.join(unknown_to)} asked); check the master name "
                                "in the Redis URL")
        raise SentinelError(f"no Sentinel gave the address of master {name!r}: "
                            + "; ".join(problems))

    async def _ask(self, host: str, port: int) -> Optional[tuple[str, int]]:
        commands = _auth(None, self.address.sentinel_password) + [
            ("SENTINEL", "get-master-addr-by-name", self.address.master_name)]
        proto = _CommandsProtocol(commands)
        connecting = self._endpoint(host, port).connect(_OneProtocol(proto))
        await self._bounded(connecting)
        try:
            replies = await self._bounded(proto.replies)
        finally:
            if proto.transport is not None:
                proto.transport.loseConnection()
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
        answer = replies[-1]
        if not answer:
            return None
        try:
            return answer[0].decode("utf-8"), int(answer[1])
        except (TypeError, ValueError, IndexError, AttributeError):
            raise SentinelError(f"unreadable answer {answer!r}") from None

class _OneProtocol(Factory):
    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_instance


def _describe(error: BaseException) -> str:
    if isinstance(error, defer.TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__


def client_endpoint(reactor: Any, address: RedisAddress, timeout: float) -> IStreamClientEndpoint:
    """A Twisted client endpoint for ``address`` (TCP, TLS or unix socket; for a
    ``redis+sentinel://`` address, a :class:`SentinelEndpoint`, which asks the Sentinels
    for the master on every connection attempt)."""
    if address.is_sentinel:
        return SentinelEndpoint(reactor, address, timeout)
    return direct_endpoint(reactor, address, timeout)
