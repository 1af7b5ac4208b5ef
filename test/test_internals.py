"""Each reach of ws4tx.server._internals (below Autobahn's public API) and
ws4tx.server._twisted_internals (below Twisted's), pinned:
these tests fail when the dependency changes under it. (The behaviour each reach buys is
tested where it is used: test_protocol's lazy formatting, fast-path and compression tests,
test_hostile's fragment bound, test_twistd's clean exit after a drain.)"""

from __future__ import annotations

import inspect
import signal
from collections import deque
from typing import Any

from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.compress import PerMessageDeflate
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.base import ReactorBase
from twisted.internet.interfaces import IStreamClientEndpoint, _ISupportsExitSignalCapturing
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from ws4tx.server import _internals, _log, _twisted_internals
from ws4tx.server.deflate import deflate


class AutobahnTests(SynchronousTestCase):
    """Autobahn's private parts ws4tx relies on."""

    def test_moduleGlobalPformat(self):
        """Autobahn's WebSocket protocol formats its debug values with a module global
        ``pformat``, which format_lazily replaces."""
        self.patch(autobahn_protocol, "pformat", autobahn_protocol.pformat)
        self.assertIn("pformat(", inspect.getsource(WebSocketProtocol._connectionMade))
        _internals.format_lazily()
        self.assertIs(autobahn_protocol.pformat, _internals._Pretty)

    def test_sendQueueAttribute(self):
        """A connection queues chopped writes in ``send_queue``, and ``sendData`` puts
        what it is given behind them (write_frame relies on both)."""
        self.assertIn("self.send_queue = deque()",
                      inspect.getsource(WebSocketProtocol._connectionMade))
        self.assertIn("len(self.send_queue) > 0", inspect.getsource(WebSocketProtocol.sendData))

    def test_sendQueueFilledOnlyByDelayedWrites(self):
        """Only ``sendData`` appends to ``send_queue`` (with ``sync`` or ``chopsize``),
        and only ``_send`` takes from it, after asking its length: a connection may
        share one empty tuple until it delays a write (share_send_queue,
        own_send_queue)."""
        source = inspect.getsource(autobahn_protocol)
        send_data = inspect.getsource(WebSocketProtocol.sendData)
        self.assertEqual(source.count("send_queue.append("), send_data.count("send_queue.append("))
        self.assertIn("if sync or len(self.send_queue) > 0:", send_data)
        self.assertEqual(source.count("send_queue.popleft("), 1)
        self.assertIn("if len(self.send_queue) > 0:\n            e = self.send_queue.popleft()",
                      inspect.getsource(WebSocketProtocol._send))
        proto = WebSocketProtocol()
        proto.send_queue = deque()
        _internals.share_send_queue(proto)
        self.assertIs(proto.send_queue, _internals._NO_QUEUE)
        _internals.own_send_queue(proto)
        self.assertIsInstance(proto.send_queue, deque)

    def test_compressionAttributes(self):
        """A connection says whether it compresses in ``_perMessageCompress`` (None: it
        does not); a negotiated permessage-deflate says its window and whether the client
        keeps its context."""
        self.assertIn("self._perMessageCompress = None",
                      inspect.getsource(WebSocketProtocol._connectionMade))
        proto = WebSocketProtocol()
        proto._perMessageCompress = None
        self.assertIsNone(_internals.compression_window(proto))
        proto._perMessageCompress = PerMessageDeflate(True, True, True, 10, 0, None)
        self.assertEqual(_internals.compression_window(proto), 10)
        proto._perMessageCompress = PerMessageDeflate(True, True, False, 0, 0, None)
        self.assertEqual(_internals.compression_window(proto), 15)

    def test_inflaterKeptUntilTheNextMessage(self):
        """Autobahn keeps a message's inflater (``_decompressor``) after the message and,
        without client context takeover, makes a new one for the next: forget_inflater
        drops it in between, and the next message still inflates."""
        pmce = PerMessageDeflate(True, True, True, 0, 0, None)
        proto = WebSocketProtocol()
        proto._perMessageCompress = pmce
        body = deflate(b"hello " * 100, 15)
        for _ in range(2):
            pmce.start_decompress_message()
            self.assertEqual(pmce.decompress_message_data(body), b"hello " * 100)
            pmce.end_decompress_message()
            self.assertIsNotNone(pmce._decompressor)
            _internals.forget_inflater(proto)
            self.assertIsNone(pmce._decompressor)
        # With client context takeover the inflater holds the context: it is kept.
        pmce.client_no_context_takeover = False
        pmce.start_decompress_message()
        _internals.forget_inflater(proto)
        self.assertIsNotNone(pmce._decompressor)

    def test_messageEnd(self):
        """Autobahn's ``onMessageEnd`` is what end_message does: join ``message_data``
        unless ``failedByMe``, ``_onMessage``, then fire ``message`` (which end_message
        leaves out when nothing observes it; an observer still hears it)."""
        self.assertEqual(
            [line.strip() for line in inspect.getsource(WebSocketProtocol.onMessageEnd)
             .splitlines() if line.strip() and not line.strip().startswith(("#", '"""'))
             and "Implements" not in line],
            ["def onMessageEnd(self) -> None:", "if not self.failedByMe:",
             'payload = b"".join(self.message_data)', "if self.trackedTimings:",
             'self.trackedTimings.track("onMessage")',
             "self._onMessage(payload, self.message_is_binary)",
             'f = self.fire("message", payload, is_binary=self.message_is_binary)',
             "def error(f):", "self.log.error(", '"Firing signal \'message\' failed: {fail}",',
             "fail=f,", ")", "txaio.add_callbacks(f, None, error)",
             "self.message_data = None"])
        received, observed = [], []

        class Proto(WebSocketProtocol):
            def _onMessage(self, payload, isBinary):
                received.append((payload, isBinary))

        proto = Proto()
        proto.set_valid_events(["message"])
        proto.failedByMe, proto.trackedTimings = False, None
        proto.message_data, proto.message_is_binary = [b"a", b"b"], False
        _internals.end_message(proto)
        self.assertEqual((received, proto.message_data), ([(b"ab", False)], None))
        proto.on("message", lambda payload, is_binary: observed.append(payload))
        proto.message_data = [b"c"]
        _internals.end_message(proto)
        self.assertEqual((received[-1], observed, proto.message_data),
                         ((b"c", False), [b"c"], None))
        proto.failedByMe, proto.message_data = True, [b"d"]
        _internals.end_message(proto)
        self.assertEqual((len(received), proto.message_data), (2, None))

    def test_failConnection(self):
        """``_fail_connection(code, reason)`` exists and takes a code and a reason."""
        parameters = list(inspect.signature(WebSocketProtocol._fail_connection).parameters)
        self.assertEqual(parameters[:3], ["self", "code", "reason"])


@implementer(IStreamClientEndpoint)
class _Refusing:
    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.fail(ConnectionRefusedError("no"))


class TwistedTests(SynchronousTestCase):
    """Twisted's private parts ws4tx relies on."""

    def _retryEvents(self, cls: type[ClientService]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        service = cls(_Refusing(), Factory(), clock=clock,
                      retryPolicy=backoffPolicy(jitter=lambda: 0))
        service.startService()
        clock.advance(10)
        service.stopService()
        return [e for e in events if "Scheduling retry" in e.get("log_format", "")]

    def test_clientServiceLogsThroughItsClassLogger(self):
        """ClientService logs each retry at info through its class attribute ``_log``:
        QuietClientService's filter keeps them out, warnings still pass."""
        retries = self._retryEvents(ClientService)
        self.assertTrue(retries)
        self.assertEqual({e["log_level"] for e in retries}, {LogLevel.info})
        self.assertIn("_log", vars(ClientService))
        self.assertEqual(self._retryEvents(_twisted_internals.QuietClientService), [])

    def test_httpChannelLogsIdleTimeoutsThroughItsClassLogger(self):
        """HTTPChannel says it closed an idle connection at info through its class
        attribute ``_log``; QuietHTTPChannel's says it at debug (seen with ws4tx's log at
        debug)."""
        self.assertIn("_log", vars(HTTPChannel))
        self.addCleanup(_log.set_level, _log.level())
        _log.set_level("debug")
        for cls, level in ((HTTPChannel, LogLevel.info),
                           (_twisted_internals.QuietHTTPChannel, LogLevel.debug)):
            channel = cls()
            channel.callLater = Clock().callLater
            transport = StringTransport()
            channel.makeConnection(transport)
            with capturedLogs() as events:
                channel.timeoutConnection()
            self.assertEqual([e["log_level"] for e in events
                              if "Timing out client" in e.get("log_format", "")], [level])
            self.assertTrue(transport.disconnecting)

    def test_requestPathKnownBeforeTheBody(self):
        """The channel keeps the request line's target while it reads the headers and
        the body (``_path``): a body is capped by the path it is sent to."""
        seen = []

        class Request(http.Request):
            def gotLength(self, length):
                seen.append(_twisted_internals.request_path(self.channel))
                super().gotLength(length)

        channel = HTTPChannel()
        channel.requestFactory = Request
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"POST /ws/x?publish-broadcast HTTP/1.1\r\nHost: a\r\n"
                             b"Content-Length: 2\r\n\r\n")
        self.assertEqual(seen, [b"/ws/x?publish-broadcast"])

    def test_exitSignal(self):
        """A reactor remembers SIGTERM in ``_exitSignal`` (twistd re-raises it after the
        reactor stopped); forget_exit_signal clears it, and only SIGTERM and SIGINT."""
        self.assertTrue(_ISupportsExitSignalCapturing.implementedBy(ReactorBase))

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                pass

            def stop(self) -> None:
                pass

        reactor: Any = Reactor()
        ReactorBase.sigTerm(reactor, signal.SIGTERM, None)
        self.assertEqual(reactor._exitSignal, signal.SIGTERM)
        _twisted_internals.forget_exit_signal(reactor)
        self.assertIsNone(reactor._exitSignal)
        reactor._exitSignal = signal.SIGHUP
        _twisted_internals.forget_exit_signal(reactor)
        self.assertEqual(reactor._exitSignal, signal.SIGHUP)
