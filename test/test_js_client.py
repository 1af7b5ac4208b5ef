"""ws4tx.js's logic in headless Chromium: the event client (WS4TX) and the ws4redis.js
compatible constructor (WS4Redis), against a fake ``WebSocket`` the test drives, on
Playwright's paused fake clock (time moves only when a test says so).

The real server is not involved here: the end-to-end browser tests are test_browser_*.py.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Optional
from urllib.parse import quote

import pytest
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import closecodes, envelope

from test import _browser

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

STATIC = Path(__file__).resolve().parent.parent / "ws4tx" / "static"
SCRIPT = STATIC / "ws4tx" / "ws4tx.js"
PAGE_URL = "http://ws4tx.test/"
URI = "ws://ws4tx.test/ws/chat?subscribe-broadcast"
HEARTBEAT = "--heartbeat--"

#: Runs before any script of the page: a WebSocket the test drives (__sockets[i].open(),
#: .receive(data), .serverClose(code, reason)) and a recorder of client events (__log).
FAKE_WEBSOCKET = r"""
(() => {
  const sockets = window.__sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.argCount = arguments.length;
      this.protocols = protocols === undefined ? [] : [].concat(protocols);
      this.readyState = FakeWebSocket.CONNECTING;
      this.protocol = '';
      this.binaryType = 'blob';
      this.sent = [];
      this.closedWith = null;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState === FakeWebSocket.CONNECTING) {
        throw new DOMException('still connecting', 'InvalidStateError');
      }
      if (this.readyState === FakeWebSocket.OPEN) this.sent.push(data);
    }
    close(code, reason) {
      if (this.readyState >= FakeWebSocket.CLOSING) return;
      this.closedWith = {code: code === undefined ? null : code, reason: reason || ''};
      this.readyState = FakeWebSocket.CLOSING;
      // As a browser does: the close event comes later (a client that abandoned the
      // socket has removed its handler by then).
      queueMicrotask(() => this._dispatchClose(code || 1005, reason || '', true));
    }
    // Driven by the tests:
    open(protocol) {
      this.readyState = FakeWebSocket.OPEN;
      this.protocol = protocol === undefined ? (this.protocols[0] || '') : protocol;
      if (this.onopen) this.onopen({type: 'open', target: this});
    }
    receive(data) {
      if (this.onmessage) this.onmessage({type: 'message', data: data, target: this});
    }
    serverClose(code, reason) {
      this._dispatchClose(code, reason || '', code !== 1006);
    }
    _dispatchClose(code, reason, wasClean) {
      if (this.readyState === FakeWebSocket.CLOSED) return;
      if (!wasClean && this.onerror) this.onerror({type: 'error', target: this});
      this.readyState = FakeWebSocket.CLOSED;
      if (this.onclose) {
        this.onclose({type: 'close', code: code, reason: reason, wasClean: wasClean,
                      target: this});
      }
    }
  }
  FakeWebSocket.CONNECTING = 0;
  FakeWebSocket.OPEN = 1;
  FakeWebSocket.CLOSING = 2;
  FakeWebSocket.CLOSED = 3;
  window.WebSocket = FakeWebSocket;

  window.__log = [];
  window.__record = (client, names) => {
    for (const name of names) {
      client.on(name, (data) => window.__log.push([name, data === undefined ? null : data]));
    }
    return client;
  };
  window.__lastSocket = () => sockets[sockets.length - 1];
  window.__describe = (v) => v instanceof ArrayBuffer ? {arrayBuffer: v.byteLength} : v;
})();
"""

LIFECYCLE = ["connecting", "connected", "disconnected", "reconnecting"]


#: The module's one Chromium (launched by the first test class that needs it, closed by
#: tearDownModule): a launch costs seconds, and each test gets a fresh context anyway.
_chromium: Optional[_browser.BrowserHandle] = None


def tearDownModule() -> None:
    global _chromium
    handle, _chromium = _chromium, None
    if handle is not None:
        handle.close()


class _PageTestCase(SynchronousTestCase):
    """The module's Chromium; each test gets a fresh context (its own profile) and page,
    with the fake WebSocket and a paused clock installed before ws4tx.js loads."""

    handle: ClassVar[Any] = None
    page: Any

    @classmethod
    def setUpClass(cls) -> None:
        global _chromium
        if _chromium is None:
            _chromium = _browser.launch()
        cls.handle = _chromium

    def setUp(self) -> None:
        context = self.handle.browser.new_context()
        self.addCleanup(context.close)
        page = self.page = context.new_page()
        self.pageErrors: list[str] = []
        page.on("pageerror", lambda error: self.pageErrors.append(str(error)))
        page.clock.install(time=0)
        page.clock.pause_at(1000)
        page.add_init_script(FAKE_WEBSOCKET)
        page.route(PAGE_URL, lambda route: route.fulfill(
            body="<!doctype html><title>ws4tx.js</title>", content_type="text/html"))
        page.goto(PAGE_URL)
        page.add_script_tag(path=str(SCRIPT))
        self.addCleanup(self._noUnexpectedPageErrors)

    def _noUnexpectedPageErrors(self) -> None:
        self.assertEqual(self.pageErrors, [])

    # Helpers

    def js(self, script: str, arg: Any = None) -> Any:
        """Evaluate ``script`` (an expression or a function of ``arg``) in the page."""
        return self.page.evaluate(script, arg)

    def advance(self, ms: float) -> None:
        """Let ``ms`` milliseconds of page time pass, firing the timers due."""
        self.page.clock.run_for(ms)

    def socketCount(self) -> int:
        return self.js("__sockets.length")

    def socket(self, index: int = -1) -> dict[str, Any]:
        """What socket ``index`` was made with and what it was sent."""
        return self.js("""([i]) => {
          const s = __sockets[i < 0 ? __sockets.length + i : i];
          return {url: s.url, protocols: s.protocols, argCount: s.argCount,
                  sent: s.sent.map(__describe), readyState: s.readyState,
                  closedWith: s.closedWith};
        }""", [index])

    def open(self, index: int = -1) -> None:
        self.js("([i]) => __sockets[i < 0 ? __sockets.length + i : i].open()", [index])

    def receive(self, data: Any, index: int = -1) -> None:
        self.js("([i, d]) => __sockets[i < 0 ? __sockets.length + i : i].receive(d)",
                [index, data])

    def serverClose(self, code: int, reason: str = "", index: int = -1) -> None:
        self.js("([i, c, r]) => __sockets[i < 0 ? __sockets.length + i : i].serverClose(c, r)",
                [index, code, reason])

    def log(self, clear: bool = True) -> list[Any]:
        """The client events recorded since the last call."""
        return self.js("([clear]) => { const l = __log.slice(); if (clear) __log.length = 0; "
                       "return l; }", [clear])

    def names(self) -> list[str]:
        return [name for name, _ in self.log()]

    def connect(self, options: Optional[dict[str, Any]] = None,
                events: Optional[list[str]] = None, open: bool = True) -> None:
        """``window.c``: a WS4TX on URI with ``options``, recording ``events`` (the
        lifecycle ones by default); its first socket opened unless ``open`` is false."""
        self.js("([uri, options, events]) => { window.c = __record(new WS4TX(uri, options), "
                "events); }", [URI, options or {}, LIFECYCLE if events is None else events])
        if open:
            self.open()
            self.log()


class EventClientTests(_PageTestCase):
    """WS4TX: the envelope, acknowledgements and handlers."""

    def test_requestsTheSubprotocol(self) -> None:
        """WS4TX asks for ws4tx.v1 first, then the extra subprotocols, on the URI as given."""
        self.connect({"protocols": ["chat.v2"]}, open=False)
        socket = self.socket()
        self.assertEqual(socket["url"], URI)
        self.assertEqual(socket["protocols"], [envelope.SUBPROTOCOL, "chat.v2"])
        self.assertEqual(self.js("WS4TX.SUBPROTOCOL"), envelope.SUBPROTOCOL)

    def test_lifecycleEventsAndState(self) -> None:
        """connecting then connected fire (handlers added after the constructor see them),
        and state follows."""
        self.connect(open=False)
        self.assertEqual(self.log(), [["connecting", {"attempt": 0}]])
        self.assertEqual(self.js("c.state"), "connecting")
        self.assertEqual(self.js("c.readyState"), 0)
        self.open()
        self.assertEqual(self.log(), [["connected", {"protocol": envelope.SUBPROTOCOL}]])
        self.assertEqual(self.js("c.state"), "connected")
        self.assertEqual(self.js("c.readyState"), 1)

    def test_emitSendsTheExactEnvelope(self) -> None:
        """emit() sends the envelope envelope.py encodes, data null when there is none."""
        self.connect()
        self.assertTrue(self.js("c.emit('chat', {text: 'héllo', n: [1, 2]})"))
        self.js("c.emit('typing')")
        sent = self.socket()["sent"]
        self.assertEqual(sent, [
            envelope.encode_event("chat", {"text": "héllo", "n": [1, 2]}),
            envelope.encode_event("typing"),
        ])
        self.assertEqual(envelope.decode(sent[0]),
                         envelope.Event("chat", {"text": "héllo", "n": [1, 2]}))

    def test_emitWhileNotConnectedSendsNothing(self) -> None:
        """emit() before the socket opens returns false and sends nothing later."""
        self.connect(open=False)
        self.assertFalse(self.js("c.emit('early', 1)"))
        self.open()
        self.assertEqual(self.socket()["sent"], [])

    def test_emitRejectsABadEventName(self) -> None:
        """An empty or non-string event name is a TypeError."""
        self.connect()
        self.assertEqual(
            self.js("(() => { try { c.emit(''); } catch (e) { return e.name; } })()"),
            "TypeError")

    def test_emitWithCallbackSettlesOnTheMatchingAck(self) -> None:
        """emit() with a callback sends increasing ids and gets (null, data) from its ack."""
        self.connect()
        self.js("window.answers = []; "
                "c.emit('a', 1, (err, data) => answers.push(['a', err, data])); "
                "c.emit('b', 2, (err, data) => answers.push(['b', err, data]));")
        sent = self.socket()["sent"]
        self.assertEqual(sent, [envelope.encode_event("a", 1, id=1),
                                envelope.encode_event("b", 2, id=2)])
        self.receive(envelope.encode_ack(2, {"ok": True}))
        self.receive(envelope.encode_ack(1, None))
        self.assertEqual(self.js("answers"), [["b", None, {"ok": True}], ["a", None, None]])

    def test_emitWithCallbackGetsAnErrorAck(self) -> None:
        """An error ack calls the callback with an AckError carrying the server's message."""
        self.connect()
        self.js("window.answers = []; c.emit('a', 1, (err, data) => answers.push("
                "[err instanceof WS4TX.AckError, err.message, err.code, err.event, data]))")
        self.receive(envelope.encode_ack(1, error="no handler for event 'a'"))
        self.assertEqual(self.js("answers"),
                         [[True, "no handler for event 'a'", "error", "a", None]])

    def _request(self, event: str = "ask", data: Any = None) -> None:
        """window.outcome: what c.request(event, data) settles with."""
        self.js("""([event, data]) => {
          window.outcome = null;
          c.request(event, data).then(
            (reply) => { outcome = {resolved: reply}; },
            (error) => { outcome = {rejected: error.message, code: error.code,
                                    isAckError: error instanceof WS4TX.AckError}; });
        }""", [event, data])

    def test_requestResolvesOnTheAck(self) -> None:
        """request() resolves with the ack's data."""
        self.connect()
        self._request("ask", {"q": 1})
        self.assertEqual(self.socket()["sent"], [envelope.encode_event("ask", {"q": 1}, id=1)])
        self.assertIsNone(self.js("outcome"))
        self.receive(envelope.encode_ack(1, {"delivered": True}))
        self.assertEqual(self.js("outcome"), {"resolved": {"delivered": True}})

    def test_requestRejectsOnAnErrorAck(self) -> None:
        """request() rejects with the error ack's message."""
        self.connect()
        self._request()
        self.receive(envelope.encode_ack(1, error="internal error"))
        self.assertEqual(self.js("outcome"),
                         {"rejected": "internal error", "code": "error", "isAckError": True})

    def test_requestRejectsOnTimeout(self) -> None:
        """request() rejects after ackTimeout; a late ack changes nothing."""
        self.connect({"ackTimeout": 2000})
        self._request()
        self.advance(1999)
        self.assertIsNone(self.js("outcome"))
        self.advance(1)
        outcome = self.js("outcome")
        self.assertEqual(outcome["code"], "timeout")
        self.receive(envelope.encode_ack(1, "late"))
        self.assertEqual(self.js("outcome"), outcome)
        self.assertEqual(self.log(), [])  # the late ack is not a message either

    def test_requestRejectsWhenTheConnectionDrops(self) -> None:
        """Pending acks fail when the socket closes (callbacks before 'disconnected')."""
        self.connect(events=[])
        self._request()
        self.js("c.emit('b', 2, (err) => __log.push(['callback', err.code])); "
                "c.on('disconnected', (info) => __log.push(['disconnected', info]));")
        self.serverClose(1001, "server shutting down")
        outcome = self.js("outcome")
        self.assertEqual(outcome["code"], "disconnected")
        self.assertTrue(outcome["isAckError"])
        self.assertEqual(self.log(), [
            ["callback", "disconnected"],
            ["disconnected", {"code": 1001, "reason": "server shutting down",
                              "wasClean": True, "reconnect": True}],
        ])

    def test_requestWhileNotConnectedRejects(self) -> None:
        """request() without an open socket rejects at once with 'not-connected'."""
        self.connect(open=False)
        self._request()
        self.assertEqual(self.js("outcome")["code"], "not-connected")
        self.open()
        self.assertEqual(self.socket()["sent"], [])

    def test_ackIdsStayUniqueAcrossReconnects(self) -> None:
        """Ack ids keep increasing on a new connection."""
        self.connect({"minDelay": 100})
        self.js("c.emit('a', null, () => {}); Math.random = () => 0;")
        self.serverClose(1001)
        self.advance(0)
        self.open()
        self.js("c.emit('b', null, () => {})")
        self.assertEqual(self.socket(0)["sent"], [envelope.encode_event("a", None, id=1)])
        self.assertEqual(self.socket(1)["sent"], [envelope.encode_event("b", None, id=2)])

    def test_serverEventCallsItsHandlersWithData(self) -> None:
        """An event envelope calls the handlers of its name with its data, in order."""
        self.connect(events=[])
        self.js("window.calls = []; "
                "c.on('ws4tx.error', (d) => calls.push(['first', d])); "
                "c.on('ws4tx.error', (d) => calls.push(['second', d])); "
                "c.on('other', (d) => calls.push(['other', d]));")
        self.receive(envelope.encode_event("ws4tx.error", {"message": "refused"}))
        self.receive(envelope.encode_event("ws4tx.resumed"))
        self.assertEqual(self.js("calls"), [["first", {"message": "refused"}],
                                            ["second", {"message": "refused"}]])

    def test_offAndOnce(self) -> None:
        """off(event, fn) removes one handler, off(event) all of them; once fires once and
        off removes it by the original function."""
        self.connect(events=[])
        self.js("""
          window.calls = [];
          window.f = (d) => calls.push('f' + d);
          window.g = (d) => calls.push('g' + d);
          window.h = (d) => calls.push('h' + d);
          c.on('e', f).on('e', g).once('e', h);
          c.once('other', f); c.off('other', f);
        """)
        frame = envelope.encode_event
        self.receive(frame("e", 1))
        self.js("c.off('e', g)")
        self.receive(frame("e", 2))
        self.receive(frame("other", 3))
        self.js("c.off('e')")
        self.receive(frame("e", 4))
        self.assertEqual(self.js("calls"), ["f1", "g1", "h1", "f2"])

    def test_handlerExceptionDoesNotStopTheOthers(self) -> None:
        """A throwing handler is reported; the next handler still runs."""
        self.connect(events=[])
        self.js("window.calls = []; c.on('e', () => { throw new Error('boom'); }); "
                "c.on('e', (d) => calls.push(d));")
        self.receive(envelope.encode_event("e", "data"))
        self.assertEqual(self.js("calls"), ["data"])
        self.assertEqual(len(self.pageErrors), 1)
        self.assertIn("boom", self.pageErrors.pop())

    def test_rawFramesFireMessage(self) -> None:
        """Text that is not an envelope, other JSON, invalid envelopes and binary frames all
        fire 'message' with the raw data."""
        self.connect(events=["message"])
        texts = ["hello", '{"a":1}', ' {"ws4tx" : "event"}', '{"ws4tx":"bogus"}',
                 '{"ws4tx":"event","event":""}', '{"ws4tx":not json']
        for text in texts:
            self.receive(text)
        self.js("__lastSocket().receive(new Uint8Array([1, 2, 3]).buffer)")
        log = self.js("__log.map(([n, d]) => [n, __describe(d)])")
        self.assertEqual(log, [["message", t] for t in texts] +
                         [["message", {"arrayBuffer": 3}]])

    def test_envelopeEventNamedMessageAlsoFiresMessage(self) -> None:
        """An event called 'message' reaches the 'message' handlers with its data."""
        self.connect(events=["message"])
        self.receive(envelope.encode_event("message", {"user": "john", "text": "hi"}))
        self.assertEqual(self.log(), [["message", {"user": "john", "text": "hi"}]])

    def test_sendSendsRawFrames(self) -> None:
        """send() hands text and binary frames to the socket unchanged."""
        self.connect()
        self.assertTrue(self.js("c.send('raw text')"))
        self.js("c.send(new Uint8Array([9, 8]).buffer)")
        self.assertEqual(self.socket()["sent"], ["raw text", {"arrayBuffer": 2}])
        self.serverClose(1006)
        self.assertFalse(self.js("c.send('lost')"))

    def test_binaryTypeOption(self) -> None:
        """The binaryType option is set on every socket."""
        self.connect({"binaryType": "arraybuffer"}, open=False)
        self.assertEqual(self.js("__lastSocket().binaryType"), "arraybuffer")

    def test_connectHelper(self) -> None:
        """ws4tx.connect(uri, options) makes a WS4TX."""
        self.js("window.c = ws4tx.connect('ws://x/ws/f', {heartbeat: null})")
        self.assertTrue(self.js("c instanceof WS4TX"))
        self.assertEqual(self.socket()["url"], "ws://x/ws/f")

    def test_commonJsExport(self) -> None:
        """With a CommonJS `module` in scope the script also fills module.exports."""
        self.js("window.module = {exports: {}}")
        self.page.add_script_tag(path=str(SCRIPT))
        self.assertEqual(self.js("Object.keys(module.exports).sort()"),
                         ["AckError", "SUBPROTOCOL", "WS4Redis", "WS4TX", "connect"])


class HeartbeatTests(_PageTestCase):
    """The heartbeat: sent every interval, echoes swallowed, missed ones drop the socket."""

    def test_sentEveryIntervalAndEchoSwallowed(self) -> None:
        """With echoes, a heartbeat goes out every heartbeatInterval and never reaches
        'message'; the connection stays."""
        self.connect({"heartbeat": HEARTBEAT, "heartbeatInterval": 5000},
                     events=LIFECYCLE + ["message"])
        self.advance(4999)
        self.assertEqual(self.socket()["sent"], [])
        for beat in range(1, 11):
            self.advance(1 if beat == 1 else 5000)
            self.assertEqual(self.socket()["sent"], [HEARTBEAT] * beat)
            self.receive(HEARTBEAT)
        self.assertEqual(self.log(), [])
        self.assertEqual(self.socketCount(), 1)
        self.assertEqual(self.js("c.state"), "connected")

    def test_noHeartbeatByDefault(self) -> None:
        """Without the heartbeat option nothing is sent."""
        self.connect()
        self.advance(60_000)
        self.assertEqual(self.socket()["sent"], [])

    def test_threeMissedHeartbeatsReconnect(self) -> None:
        """After maxMissedHeartbeats unanswered, the socket is closed (4000) and a new one
        follows the backoff delay."""
        self.connect({"heartbeat": HEARTBEAT})
        self.js("Math.random = () => 0.5")
        self.advance(15_000)
        self.assertEqual(self.socket()["sent"], [HEARTBEAT] * 3)
        self.assertEqual(self.log(), [])
        self.advance(5000)
        self.assertEqual(self.socket()["closedWith"],
                         {"code": 4000, "reason": "missed heartbeats"})
        self.assertEqual(self.log(), [
            ["disconnected", {"code": 4000, "reason": "missed heartbeats", "wasClean": False,
                              "reconnect": True}],
            ["reconnecting", {"attempt": 1, "delay": 250}],
        ])
        self.advance(250)
        self.assertEqual(self.socketCount(), 2)
        self.assertEqual(self.log(), [["connecting", {"attempt": 1}]])

    def test_anEchoResetsTheMissedCount(self) -> None:
        """Two missed, one answered, two missed again: still connected."""
        self.connect({"heartbeat": HEARTBEAT})
        self.advance(10_000)
        self.receive(HEARTBEAT)
        self.advance(15_000)
        self.assertEqual(self.socketCount(), 1)
        self.assertEqual(self.socket()["sent"], [HEARTBEAT] * 5)
        self.assertEqual(self.socket()["closedWith"], None)

    def test_heartbeatStopsWithTheSocket(self) -> None:
        """No heartbeat is sent while disconnected."""
        self.connect({"heartbeat": HEARTBEAT, "reconnect": False})
        self.serverClose(1001)
        self.advance(60_000)
        self.assertEqual(self.socket()["sent"], [])


class ReconnectTests(_PageTestCase):
    """Full-jitter exponential backoff, final close codes and close()."""

    def test_backoffDelaysAreWithinTheirBounds(self) -> None:
        """Each retry waits random * min(maxDelay, minDelay * 2 ** attempt), and the next
        socket comes exactly then."""
        self.connect({"minDelay": 500, "maxDelay": 30_000}, open=False)
        self.log()
        randoms = [0.999, 0.5, 0, 0.25, 0.999, 0.5, 0.75, 1 - 2 ** -52, 0.5]
        for attempt, random in enumerate(randoms):
            self.js("([r]) => { Math.random = () => r; }", [random])
            self.serverClose(1006)
            cap = min(30_000, 500 * 2 ** attempt)
            log = self.log()
            self.assertEqual([name for name, _ in log], ["disconnected", "reconnecting"])
            info = log[1][1]
            self.assertEqual(info["attempt"], attempt + 1)
            self.assertTrue(0 <= info["delay"] < cap, (info, cap))
            self.assertAlmostEqual(info["delay"], random * cap)
            self.assertEqual(self.js("c.state"), "reconnecting")
            sockets = self.socketCount()
            due = math.ceil(info["delay"])  # the first whole millisecond not before it
            if due > 0:
                self.advance(due - 1)
                self.assertEqual(self.socketCount(), sockets)
            self.advance(1)
            self.assertEqual(self.socketCount(), sockets + 1)
            self.assertEqual(self.log(), [["connecting", {"attempt": attempt + 1}]])

    def test_backoffResetsAfterASuccessfulConnect(self) -> None:
        """Once a socket opens the next drop starts again from minDelay."""
        self.connect({"minDelay": 1000}, open=False)
        self.js("Math.random = () => 0.5")
        delays = []
        for _ in range(3):
            self.serverClose(1006)
            delays.append(self.log()[-1][1]["delay"])
            self.advance(10_000)
        self.assertEqual(delays, [500, 1000, 2000])
        self.open()
        self.log()
        self.serverClose(1006)
        self.assertEqual(self.log()[-1], ["reconnecting", {"attempt": 1, "delay": 500}])

    def test_goingAwayReconnects(self) -> None:
        """1001 (server going away) is followed by a new connection."""
        self.connect({"minDelay": 500})
        self.js("Math.random = () => 0.5")
        self.serverClose(1001, "server shutting down")
        self.assertEqual(self.names(), ["disconnected", "reconnecting"])
        self.advance(250)
        self.assertEqual(self.socketCount(), 2)
        self.open()
        self.assertEqual(self.names(), ["connecting", "connected"])

    def test_closedBySiteReconnects(self) -> None:
        """4001 (the site closed it: a logout, a password change) is followed by a new
        connection, which the server authenticates anew (see docs/protocol.md)."""
        self.connect({"minDelay": 500})
        self.js("Math.random = () => 0.5")
        self.serverClose(4001, "logged out")
        self.assertEqual(self.log()[0], ["disconnected", {
            "code": 4001, "reason": "logged out", "wasClean": True, "reconnect": True}])
        self.advance(250)
        self.assertEqual(self.socketCount(), 2)

    def test_policyViolationStopsReconnecting(self) -> None:
        """1008, 4401 and 4403 stop the client for good, reported in 'disconnected'."""
        for code in (1008, 4401, 4403):
            self.connect()
            before = self.socketCount()
            self.serverClose(code, "go away")
            self.assertEqual(self.log(), [["disconnected", {
                "code": code, "reason": "go away", "wasClean": True, "reconnect": False}]])
            self.assertEqual(self.js("c.state"), "closed")
            self.advance(120_000)
            self.assertEqual(self.socketCount(), before)
            self.assertEqual(self.log(), [])

    def test_closeStopsForGood(self) -> None:
        """close() closes the socket with 1000, fires 'disconnected' once, fails pending
        acks and never reconnects."""
        self.connect()
        self.js("window.acks = []; c.emit('a', 1, (err) => acks.push(err.code))")
        self.js("c.close()")
        self.assertEqual(self.socket()["closedWith"], {"code": 1000, "reason": ""})
        self.assertEqual(self.js("acks"), ["disconnected"])
        self.assertEqual(self.log(), [["disconnected", {
            "code": 1000, "reason": "", "wasClean": True, "reconnect": False}]])
        self.assertEqual(self.js("c.state"), "closed")
        self.advance(120_000)
        self.js("c.close()")
        self.assertEqual(self.socketCount(), 1)
        self.assertEqual(self.log(), [])

    def test_closeWhileWaitingToReconnect(self) -> None:
        """close() during the backoff wait cancels the retry."""
        self.connect()
        self.serverClose(1006)
        self.js("c.close()")
        self.advance(120_000)
        self.assertEqual(self.socketCount(), 1)
        self.assertEqual(self.js("c.state"), "closed")

    def test_closeBeforeTheFirstAttempt(self) -> None:
        """close() right after the constructor opens no socket at all."""
        self.js("window.c = new WS4TX('ws://x/ws/f'); c.close();")
        self.advance(60_000)
        self.assertEqual(self.socketCount(), 0)
        self.assertEqual(self.js("c.state"), "closed")

    def test_reconnectOptionOff(self) -> None:
        """With reconnect: false a drop is final."""
        self.connect({"reconnect": False})
        self.serverClose(1001)
        self.assertEqual(self.log(), [["disconnected", {
            "code": 1001, "reason": "", "wasClean": True, "reconnect": False}]])
        self.advance(120_000)
        self.assertEqual(self.socketCount(), 1)

    def test_uriFunctionIsCalledForEveryAttempt(self) -> None:
        """A function as uri gives each attempt its URL (a fresh token, say)."""
        self.js("Math.random = () => 0; window.n = 0; "
                "window.c = new WS4TX(() => 'ws://x/ws/f?token=t' + (++n));")
        self.serverClose(1006)
        self.advance(0)
        self.assertEqual([self.socket(0)["url"], self.socket(1)["url"]],
                         ["ws://x/ws/f?token=t1", "ws://x/ws/f?token=t2"])

    def test_uriPromise(self) -> None:
        """A function returning a Promise of the URL is waited for; a rejection retries."""
        self.js("""
          Math.random = () => 0;
          window.attempts = 0;
          window.c = __record(new WS4TX(() => {
            attempts++;
            return attempts === 1 ? Promise.reject(new Error('no token'))
                                  : Promise.resolve('ws://x/ws/f?token=ok');
          }), ['connecting', 'disconnected', 'reconnecting']);
        """)
        self.assertEqual(self.socketCount(), 0)
        self.assertEqual(len(self.pageErrors), 1)
        self.assertIn("no token", self.pageErrors.pop())
        self.advance(0)
        self.assertEqual(self.socketCount(), 1)
        self.assertEqual(self.socket()["url"], "ws://x/ws/f?token=ok")
        self.assertEqual(self.names(), ["connecting", "disconnected", "reconnecting",
                                        "connecting"])


class OpenTimeoutTests(_PageTestCase):
    """A socket that is accepted and never answered (a server going down as it accepts, a
    proxy that holds the handshake) is given up after openTimeout ms, and the backoff goes
    on: the client is never left 'connecting' for good."""

    def test_aSocketThatDoesNotOpenIsGivenUpAfterTwentySeconds(self) -> None:
        self.connect({"minDelay": 1000}, open=False)
        self.js("Math.random = () => 0.5")
        self.log()
        self.advance(19_999)
        self.assertEqual((self.socketCount(), self.log()), (1, []))
        self.advance(1)
        self.assertEqual(self.socket(0)["closedWith"], {"code": 1000, "reason": ""})
        self.assertEqual(self.log(), [
            ["disconnected", {"code": 1006, "reason": "opening timed out", "wasClean": False,
                              "reconnect": True}],
            ["reconnecting", {"attempt": 1, "delay": 500}]])
        self.assertEqual(self.js("c.state"), "reconnecting")
        self.advance(500)
        self.assertEqual(self.socketCount(), 2)
        # The next one gets its own 20 s, and the backoff grows as for any early close.
        self.advance(20_000)
        self.assertEqual(self.log()[1:], [
            ["disconnected", {"code": 1006, "reason": "opening timed out", "wasClean": False,
                              "reconnect": True}],
            ["reconnecting", {"attempt": 2, "delay": 1000}]])
        self.advance(1_000)
        self.open()
        self.assertEqual(self.js("c.state"), "connected")
        self.log()
        self.advance(3_600_000)  # an open socket is not timed
        self.assertEqual((self.socketCount(), self.log()), (3, []))

    def test_aSocketThatClosesFirstLeavesNoTimer(self) -> None:
        self.connect({"minDelay": 1000, "openTimeout": 5000}, open=False)
        self.js("Math.random = () => 0.5")
        self.advance(4_000)
        self.serverClose(1006)
        self.advance(500)  # the retry: a second socket, dialed at 4.5 s
        self.assertEqual(self.socketCount(), 2)
        self.log()
        self.advance(4_999)  # the first socket's 5 s passed long ago
        self.assertEqual(self.log(), [])
        self.advance(1)
        self.assertEqual(self.names(), ["disconnected", "reconnecting"])

    def test_closeWhileConnectingStopsTheTimer(self) -> None:
        self.connect(open=False)
        self.js("c.close()")
        self.log()
        self.advance(3_600_000)
        self.assertEqual((self.socketCount(), self.log()), (1, []))

    def test_nullWaitsForever(self) -> None:
        self.connect({"openTimeout": None}, open=False)
        self.log()
        self.advance(3_600_000)
        self.assertEqual((self.socketCount(), self.log()), (1, []))
        self.assertEqual(self.js("c.state"), "connecting")


class WS4RedisTests(_PageTestCase):
    """The ws4redis.js compatible constructor."""

    OPTIONS_JS = """
      window.calls = [];
      window.options = {
        uri: 'ws://x/ws/foobar?subscribe-broadcast&publish-broadcast&echo',
        connecting: function () { calls.push(['connecting', __sockets.length]); },
        connected: function () { calls.push(['connected']); },
        receive_message: function (msg) { calls.push(['receive_message', __describe(msg)]); },
        disconnected: function (evt) {
          calls.push(['disconnected', {code: evt.code, reason: evt.reason}]);
        },
        heartbeat_msg: %s,
      };
    """

    def start(self, heartbeat: Optional[str] = HEARTBEAT, call: str = "WS4Redis(options)",
              open: bool = True) -> None:
        """``window.r``: a WS4Redis made with ``call``; its socket opened."""
        self.js(self.OPTIONS_JS % json.dumps(heartbeat) + f"window.r = {call};")
        if open:
            self.open()

    def calls(self) -> list[Any]:
        return self.js("(() => { const c = calls.slice(); calls.length = 0; return c; })()")

    def test_callbacksInOrder(self) -> None:
        """connecting (before the socket exists), connected, receive_message, disconnected."""
        self.start(open=False)
        self.assertEqual(self.calls(), [["connecting", 0]])
        self.open()
        self.receive("hello")
        self.serverClose(1001, "server shutting down")
        self.assertEqual(self.calls(), [
            ["connected"],
            ["receive_message", "hello"],
            ["disconnected", {"code": 1001, "reason": "server shutting down"}],
        ])

    def test_receiveMessageGetsRawDataNeverTheHeartbeat(self) -> None:
        """The heartbeat echo is swallowed; text (even envelope-shaped) and binary frames
        arrive as they are."""
        self.start()
        event = envelope.encode_event("message", {"text": "hi"})
        self.receive(HEARTBEAT)
        self.receive(event)
        self.js("__lastSocket().receive(new Uint8Array([1]).buffer)")
        self.assertEqual(self.calls(), [
            ["connecting", 0], ["connected"], ["receive_message", event],
            ["receive_message", {"arrayBuffer": 1}]])

    def test_sendMessageSendsRaw(self) -> None:
        """send_message() sends the message itself, not an envelope."""
        self.start()
        self.js("r.send_message('john: hello')")
        self.assertEqual(self.socket()["sent"], ["john: hello"])

    def test_callableWithOrWithoutNew(self) -> None:
        """WS4Redis(options, $) and new WS4Redis(options) both make a client; the second
        argument is ignored."""
        self.start(call="WS4Redis(options, {fake: 'jQuery'})")
        self.assertTrue(self.js("r instanceof WS4Redis"))
        self.js("window.r2 = new WS4Redis(options)")
        self.assertTrue(self.js("r2 instanceof WS4Redis"))
        self.assertEqual(self.socketCount(), 2)
        self.assertEqual(self.js("typeof r.send_message + typeof r2.close"), "functionfunction")

    def test_noSubprotocolRequested(self) -> None:
        """WS4Redis opens its socket with the URI alone: it never asks for ws4tx.v1."""
        self.start(open=False)
        socket = self.socket()
        self.assertEqual(socket["argCount"], 1)
        self.assertEqual(socket["protocols"], [])
        self.assertEqual(socket["url"], self.js("options.uri"))

    def test_stateAccessors(self) -> None:
        """get_state() is the socket's readyState; is_connected() follows it."""
        self.start(open=False)
        self.assertEqual(self.js("[r.get_state(), r.is_connected(), r.is_connecting()]"),
                         [0, False, True])
        self.open()
        self.assertEqual(self.js("[r.get_state(), r.is_connected()]"), [1, True])
        self.js("r.close()")
        self.assertEqual(self.js("[r.get_state(), r.is_connected(), r.is_closed()]"),
                         [3, False, True])

    def test_heartbeatEveryFiveSecondsAndReconnect(self) -> None:
        """ws4redis.js's defaults: a heartbeat every 5 s; after 3 missed the socket is
        dropped, disconnected() called and a new attempt made."""
        self.start()
        self.js("Math.random = () => 0")
        self.advance(15_000)
        self.assertEqual(self.socket()["sent"], [HEARTBEAT] * 3)
        self.assertEqual(self.calls(), [["connecting", 0], ["connected"]])
        self.advance(5000)
        self.advance(1)  # a zero delay set in a timer callback is run a tick later
        self.assertEqual(self.calls(), [
            ["disconnected", {"code": 4000, "reason": "missed heartbeats"}],
            ["connecting", 1],
        ])
        self.assertEqual(self.socketCount(), 2)

    def test_nullHeartbeatSendsNothing(self) -> None:
        """heartbeat_msg: null (the context processor's value without a heartbeat)."""
        self.start(heartbeat=None)
        self.advance(60_000)
        self.assertEqual(self.socket()["sent"], [])

    def test_closeStopsReconnecting(self) -> None:
        """close() calls disconnected() and no new socket follows."""
        self.start()
        self.calls()
        self.js("r.close()")
        self.advance(120_000)
        self.assertEqual(self.calls(), [["disconnected", {"code": 1000, "reason": ""}]])
        self.assertEqual(self.socketCount(), 1)

    def test_reconnectsAfterAServerClose(self) -> None:
        """Like ws4redis.js, a dropped client comes back (connecting() called again)."""
        self.start()
        self.js("Math.random = () => 0.5")
        self.calls()
        self.serverClose(1006)
        self.advance(250)
        self.assertEqual(self.calls(), [["disconnected", {"code": 1006, "reason": ""}],
                                        ["connecting", 1]])

    def test_missingUriThrows(self) -> None:
        """Without options.uri the constructor throws, as ws4redis.js did."""
        self.assertIn("uri", self.js(
            "(() => { try { WS4Redis({}); } catch (e) { return e.message; } })()"))


class StaticFilesTests(SynchronousTestCase):
    """The files templates load."""

    def test_ws4redisJsIsARelativeSymlinkToWs4txJs(self) -> None:
        """js/ws4redis.js (ws4redis's template path) is ws4tx.js, by a relative link."""
        link = STATIC / "js" / "ws4redis.js"
        self.assertTrue(link.is_symlink())
        self.assertEqual(os.readlink(link), "../ws4tx/ws4tx.js")
        self.assertEqual(link.resolve(), SCRIPT.resolve())


class RecoveryClientTests(_PageTestCase):
    """WS4TX on a facility with history: positions come with messages, go back on
    reconnect, and the server's verdict fires as 'recovered'."""

    CHAT = "ws4tx:broadcast:chat"

    def pub(self, offset: int, payload: bytes, channel: str = CHAT,
            epoch: str = "ab12") -> str:
        return envelope.encode_publication(channel, offset, epoch, payload).decode()

    def test_publicationsAreDeliveredAsBeforeAndRememberedForTheReconnect(self) -> None:
        self.connect(events=[*LIFECYCLE, "message", "said", "recovered"])
        self.receive(self.pub(1, b"raw text"))
        self.receive(self.pub(2, envelope.encode_event("said", {"n": 1}).encode()))
        self.receive(self.pub(7, b"other", channel="ws4tx:user:a:chat", epoch="ff"))
        self.assertEqual(self.log(), [["message", "raw text"], ["said", {"n": 1}],
                                      ["message", "other"]])
        self.assertEqual(self.js("c.positions"), {
            self.CHAT: {"epoch": "ab12", "offset": 2},
            "ws4tx:user:a:chat": {"epoch": "ff", "offset": 7}})
        self.assertEqual(self.socket()["url"], URI)  # nothing to recover the first time
        self.serverClose(1006)
        self.advance(600)
        self.assertEqual(self.socketCount(), 2)
        self.assertEqual(self.socket()["url"], URI + "&recover=ws4tx%3Abroadcast%3Achat%3A"
                         "ab12%3A2&recover=ws4tx%3Auser%3Aa%3Achat%3Aff%3A7")
        self.open()
        self.log()
        self.receive(self.pub(3, b"missed"))
        verdict = {"recovered": True, "channels": {self.CHAT: {"recovered": True,
                                                               "messages": 1}}}
        self.receive(envelope.encode_event(envelope.RECOVERED_EVENT, verdict))
        self.assertEqual(self.log(), [["message", "missed"], ["recovered", verdict]])

    def test_positionsOfChannelsWithoutMessagesAreRememberedForTheReconnect(self) -> None:
        """A channel the client got nothing of yet: the server's ws4tx.positions gives
        its position, which goes back as recover= (an invalid entry is ignored)."""
        self.connect(events=["message"])
        self.receive(envelope.encode_event(envelope.POSITIONS_EVENT, {"channels": {
            self.CHAT: {"epoch": "ab12", "offset": 0},
            "ws4tx:user:a:chat": {"epoch": "ff", "offset": -1}}}))
        self.assertEqual(self.js("c.positions"), {self.CHAT: {"epoch": "ab12", "offset": 0}})
        self.assertEqual(self.log(), [])
        self.serverClose(1006)
        self.advance(600)
        self.assertEqual(self.socket()["url"],
                         URI + "&recover=ws4tx%3Abroadcast%3Achat%3Aab12%3A0")
        self.open()
        # A new epoch (the old history is gone) replaces the old position.
        self.receive(envelope.encode_event(envelope.POSITIONS_EVENT, {"channels": {
            self.CHAT: {"epoch": "cd34", "offset": 3}}}))
        self.receive(self.pub(4, b"live", epoch="cd34"))
        self.assertEqual(self.js("c.positions"), {self.CHAT: {"epoch": "cd34", "offset": 4}})
        self.assertEqual(self.log(), [["message", "live"]])

    def test_anOffsetAlreadyDeliveredIsDroppedAnotherEpochIsNot(self) -> None:
        """Exactly once to the application: a publication at or before the channel's
        position (same epoch) is not delivered again; one of a new epoch is."""
        self.connect(events=["message"])
        for offset, epoch in ((1, "ab12"), (2, "ab12"), (2, "ab12"), (1, "ab12"),
                              (1, "cd34"), (2, "cd34")):
            self.receive(self.pub(offset, b"%d%s" % (offset, epoch.encode()), epoch=epoch))
        self.assertEqual(self.log(), [["message", "1ab12"], ["message", "2ab12"],
                                      ["message", "1cd34"], ["message", "2cd34"]])

    def test_aFailedRecoveryIsReported(self) -> None:
        self.connect(events=["recovered"])
        verdict = {"recovered": False, "reason": "trimmed", "channels": {}}
        self.receive(envelope.encode_event(envelope.RECOVERED_EVENT, verdict))
        self.assertEqual(self.log(), [["recovered", verdict]])

    def test_binaryPayloadsKeepTheirBytes(self) -> None:
        self.connect({"binaryType": "arraybuffer"}, events=["message"])
        self.receive(self.pub(1, b"\xff\x00\x01"))
        self.assertEqual(self.js("__log.map(([n, d]) => Array.from(new Uint8Array(d)))"),
                         [[255, 0, 1]])

    def test_recoverFalseSendsNoPositions(self) -> None:
        self.connect({"recover": False})
        self.receive(self.pub(1, b"x"))
        self.serverClose(1006)
        self.advance(600)
        self.assertEqual(self.socket()["url"], URI)


class TokenRefreshTests(_PageTestCase):
    """WS4TX's ``token`` option: a fresh token in the URL of every attempt, and sent back
    when the server asks for one (``ws4tx.refresh``) before the connection's expires."""

    BASE = "ws://x/ws/f?subscribe-broadcast"

    def start(self, events: Optional[list[str]] = None) -> None:
        self.js("""([base, events]) => {
          Math.random = () => 0;
          window.n = 0;
          window.c = __record(new WS4TX(base, {token: () => Promise.resolve('t' + (++n))}),
                              events);
        }""", [self.BASE, events or ["refreshed", envelope.REFRESH_EVENT]])
        self.advance(0)

    def test_theTokenFunctionGoesInTheUrlOfEveryAttempt(self) -> None:
        self.start()
        self.assertEqual(self.socket()["url"], self.BASE + "&token=t1")
        self.open()
        self.serverClose(closecodes.TOKEN_EXPIRED, "token expired")
        self.advance(0)
        self.assertEqual(self.socket()["url"], self.BASE + "&token=t2")

    def test_aRefreshRequestIsAnsweredWithAFreshToken(self) -> None:
        self.start()
        self.open()
        self.receive(envelope.encode_event(envelope.REFRESH_EVENT, {"expires": 1234}))
        self.advance(0)
        self.assertEqual(self.socket()["sent"], [envelope.encode_event(
            envelope.REFRESH_EVENT, {"token": "t2"}, id=1)])
        self.receive(envelope.encode_ack(1, {"expires": 1300}))
        self.advance(0)
        self.assertEqual(self.log(), [[envelope.REFRESH_EVENT, {"expires": 1234}],
                                      ["refreshed", {"expires": 1300}]])
        self.assertEqual(self.socketCount(), 1)

    def test_aRefusedRefreshIsReportedAndTheConnectionWaitsForItsClose(self) -> None:
        self.start()
        self.open()
        self.receive(envelope.encode_event(envelope.REFRESH_EVENT, {"expires": 1234}))
        self.advance(0)
        self.receive(envelope.encode_ack(1, error="token refused: expired"))
        self.advance(0)
        self.assertEqual(len(self.pageErrors), 1)
        self.assertIn("token refused", self.pageErrors.pop())
        self.assertEqual(self.socket()["readyState"], 1)

    def test_withoutATokenFunctionNothingIsSent(self) -> None:
        self.connect(events=[envelope.REFRESH_EVENT])
        self.receive(envelope.encode_event(envelope.REFRESH_EVENT, {"expires": 1234}))
        self.advance(0)
        self.assertEqual(self.socket()["sent"], [])
        self.assertEqual(self.log(), [[envelope.REFRESH_EVENT, {"expires": 1234}]])


class QueryCapTests(_PageTestCase):
    """Recovery positions that would make the URL's query longer than maxQueryLength (the
    server's MAX_QUERY_LENGTH, 2048 by default: 414 past it) are left out of the URL, and
    the page is told those channels were not recovered, rather than locked out."""

    def channels(self, count: int) -> dict[str, dict[str, Any]]:
        return {f"ws4tx:group:g{i:03d}:chat": {"epoch": "ab12", "offset": i}
                for i in range(count)}

    def reconnectKnowing(self, channels: dict[str, Any], options: dict[str, Any]) -> str:
        """Connect, learn ``channels``' positions, drop and reconnect: the new URL."""
        self.connect(options, events=["recovered", envelope.RECOVERED_EVENT])
        self.js("Math.random = () => 0")
        self.receive(envelope.encode_event(envelope.POSITIONS_EVENT, {"channels": channels}))
        self.serverClose(1006)
        self.advance(0)
        url: str = self.socket()["url"]
        return url

    def test_theUrlKeepsWithinTheCapAndTheRestIsReportedNotRecovered(self) -> None:
        channels = self.channels(200)
        url = self.reconnectKnowing(channels, {})
        query = url.split("?", 1)[1]
        self.assertLessEqual(len(query), 2048)
        params = query.split("&")[1:]
        asked = list(channels)[:len(params)]  # the first ones, as many as fit
        self.assertEqual(params, ["recover=" + quote(f"{c}:ab12:{i}", safe="")
                                  for i, c in enumerate(asked)])
        unsent = "recover=" + quote(f"ws4tx:group:g{len(asked):03d}:chat:ab12:{len(asked)}",
                                    safe="")
        self.assertGreater(len(query) + 1 + len(unsent), 2048)
        self.open()
        server = {"recovered": True, "channels": {
            c: {"recovered": True, "messages": 0} for c in asked}}
        self.receive(envelope.encode_event(envelope.RECOVERED_EVENT, server))
        [(raw_name, raw), (name, verdict)] = self.log()
        self.assertEqual((raw_name, raw), (envelope.RECOVERED_EVENT, server))
        self.assertEqual(name, "recovered")
        self.assertEqual((verdict["recovered"], verdict["reason"]), (False, "query-too-long"))
        self.assertEqual(set(verdict["channels"]), set(channels))
        self.assertEqual(verdict["channels"][asked[0]], {"recovered": True, "messages": 0})
        self.assertEqual(verdict["channels"]["ws4tx:group:g199:chat"],
                         {"recovered": False, "reason": "query-too-long"})

    def test_aServerFailureReasonComesFirst(self) -> None:
        self.reconnectKnowing(self.channels(3), {"maxQueryLength": 120})
        self.open()
        server = {"recovered": False, "reason": "trimmed", "channels": {
            "ws4tx:group:g000:chat": {"recovered": False, "reason": "trimmed"}}}
        self.receive(envelope.encode_event(envelope.RECOVERED_EVENT, server))
        verdict = self.log()[-1][1]
        self.assertEqual(verdict["reason"], "trimmed")
        self.assertEqual(verdict["channels"]["ws4tx:group:g002:chat"]["reason"],
                         "query-too-long")

    def test_whenNoPositionFitsThePageIsToldOnConnecting(self) -> None:
        """No position went: the server sends no verdict; ws4tx.js tells the page."""
        url = self.reconnectKnowing(self.channels(2), {"maxQueryLength": 40})
        self.assertEqual(url, URI)
        self.assertEqual(self.log(), [])
        self.open()
        self.assertEqual(self.log(), [["recovered", {
            "recovered": False, "reason": "query-too-long", "channels": {
                "ws4tx:group:g000:chat": {"recovered": False, "reason": "query-too-long"},
                "ws4tx:group:g001:chat": {"recovered": False, "reason": "query-too-long"}}}]])
        self.serverClose(1006)
        self.advance(0)
        self.open()
        self.assertEqual(self.names(), ["recovered"])  # again on every reconnect

    def test_aZeroCapSendsEveryPosition(self) -> None:
        url = self.reconnectKnowing(self.channels(100), {"maxQueryLength": 0})
        self.assertEqual(url.count("recover="), 100)


class RefusedUrlTests(_PageTestCase):
    """A URL whose handshake the server refuses is not dialed again and again: after 2, 4,
    8, ... sockets in a row that closed before they opened, ws4tx.js fetches the URL without
    Upgrade (ws4tx answers with the handshake's refusal) and stops on a refusal."""

    def start(self, answer: str, options: str = "{}") -> None:
        """``window.c`` with a fake fetch that records its calls and answers with
        ``answer`` (a JS expression of ``url``: a Response, or a rejected Promise)."""
        self.js(f"""() => {{
          Math.random = () => 0.5;
          window.fetches = [];
          window.c = __record(new WS4TX('{URI}', Object.assign({{
            minDelay: 1000, maxDelay: 30000, openTimeout: null, streamTimeout: null,
            fetch: (url, init) => {{ fetches.push([url, init]); return Promise.resolve()
              .then(() => {answer}); }},
          }}, {options})), [...{LIFECYCLE!r}, 'refused', 'recovered']);
        }}""")
        self.advance(0)

    def settle(self) -> None:
        """Let the fake fetch's promises settle (no timer involved)."""
        self.js("async () => { for (let i = 0; i < 20; i++) await null; }")

    def failEarly(self, times: int) -> None:
        """``times`` sockets in a row close before they open (each retry is due)."""
        for _ in range(times):
            self.serverClose(1006)
            self.settle()
            if self.js("c.state") != "closed":
                self.advance(30_000)

    def test_aRefusalStopsTheClientAndIsReported(self) -> None:
        self.start("new Response(JSON.stringify({ws4tx: 'refused', status: 403, "
                   "reason: 'this facility is not allowed'}), {status: 403})")
        self.serverClose(1006)
        self.settle()
        self.assertEqual(self.js("fetches"), [])  # one early close proves nothing
        self.advance(30_000)
        self.log()
        self.serverClose(1006)
        self.settle()
        self.assertEqual(self.js("fetches"), [[
            "http://ws4tx.test/ws/chat?subscribe-broadcast",
            {"credentials": "include", "cache": "no-store"}]])
        self.assertEqual(self.log(), [
            ["disconnected", {"code": 1006, "reason": "", "wasClean": False,
                              "reconnect": True}],
            ["reconnecting", {"attempt": 2, "delay": 1000}],
            ["refused", {"status": 403, "reason": "this facility is not allowed"}]])
        self.assertEqual(self.js("c.state"), "closed")
        sockets = self.socketCount()
        self.advance(3_600_000)  # an hour of the page's timers
        self.assertEqual(self.socketCount(), sockets)
        self.assertEqual(sockets, 2)
        self.assertEqual(self.log(), [])

    def test_a414FromAProxyIsARefusalToo(self) -> None:
        self.start("new Response('<html>414 Request-URI Too Large</html>', {status: 414})")
        self.failEarly(2)
        self.assertEqual(self.log()[-1], ["refused", {
            "status": 414, "reason": "<html>414 Request-URI Too Large</html>"}])

    def test_aServerThatIsDownIsRetriedWithTheBackoffAndAskedRarely(self) -> None:
        """No answer (the server is down), 5xx, 429, or (without the fallback to SSE) an
        admissible URL (400 saying to upgrade): the backoff goes on; the server is asked
        after 2, 4, 8, 16 closes."""
        for answer, options in (
                ("Promise.reject(new TypeError('Failed to fetch'))", "{}"),
                ("new Response('bad gateway', {status: 502})", "{}"),
                ("new Response('too many', {status: 429})", "{}"),
                ("new Response('This URL speaks WebSocket only', {status: 400})",
                 "{sse: false}")):
            self.start(answer, options)
            self.failEarly(20)
            self.assertEqual(self.js("c.state"), "connecting", answer)
            self.assertEqual(self.socketCount(), 21, answer)
            self.assertEqual(self.js("fetches.length"), 4, answer)
            self.assertNotIn("refused", self.names())
            self.js("c.close(); __sockets.length = 0")

    def test_anOpenResetsTheCount(self) -> None:
        self.start("new Response('{\"ws4tx\": \"refused\", \"status\": 403}', {status: 403})")
        self.serverClose(1006)
        self.advance(30_000)
        self.open()
        self.serverClose(1006)
        self.settle()
        self.advance(30_000)
        self.assertEqual(self.js("fetches"), [])
        self.assertEqual(self.js("c.state"), "connecting")

    def test_aRefusedUrlWithPositionsIsDialedAtOnceWithoutThem(self) -> None:
        """The server's query cap is below maxQueryLength: the URL with positions gets
        414; the next socket goes at once without positions (and every later one), and
        the page is told its channels were not recovered."""
        self.start("url.includes('recover=') ? new Response(JSON.stringify({ws4tx: "
                   "'refused', status: 414, reason: 'the query string is too long'}), "
                   "{status: 414}) : new Response('upgrade', {status: 400})")
        self.open()
        self.receive(envelope.encode_event(envelope.POSITIONS_EVENT, {"channels": {
            "ws4tx:broadcast:chat": {"epoch": "ab12", "offset": 3}}}))
        self.serverClose(1006)
        self.advance(30_000)
        self.assertIn("recover=", self.socket()["url"])
        self.log()
        self.failEarly(2)
        self.assertEqual(self.socket()["url"], URI)
        self.assertEqual(self.socketCount(), 4)
        self.assertNotIn("refused", self.names())
        self.open()
        self.assertEqual(self.log(), [["connected", {"protocol": "ws4tx.v1"}], ["recovered", {
            "recovered": False, "reason": "query-too-long", "channels": {
                "ws4tx:broadcast:chat": {"recovered": False, "reason": "query-too-long"}}}]])
        self.serverClose(1006)
        self.advance(30_000)
        self.assertEqual(self.socket()["url"], URI)

    def test_aRefusalForAnotherReasonStopsOnTheUrlWithoutPositions(self) -> None:
        self.start("new Response(JSON.stringify({ws4tx: 'refused', status: 403, "
                   "reason: 'no'}), {status: 403})")
        self.open()
        self.receive(envelope.encode_event(envelope.POSITIONS_EVENT, {"channels": {
            "ws4tx:broadcast:chat": {"epoch": "ab12", "offset": 3}}}))
        self.serverClose(1006)
        self.advance(30_000)
        self.failEarly(2)
        self.assertEqual(self.socket()["url"], URI)  # once more, without positions
        self.failEarly(2)
        self.assertEqual(self.js("c.state"), "closed")
        self.assertEqual(self.log()[-1], ["refused", {"status": 403, "reason": "no"}])
        self.assertEqual(self.socketCount(), 5)


class ResumeClientTests(_PageTestCase):
    """WS4TX with ``resume: true``: it asks for a resume token, keeps the server's latest
    in memory and presents it on the next reconnect, once."""

    def session(self, token: str) -> None:
        self.receive(envelope.encode_event(envelope.SESSION_EVENT,
                                           {"resume": token, "expires": 300}))

    def test_theLatestTokenGoesWithTheNextReconnectOnly(self) -> None:
        self.connect({"resume": True}, events=["ws4tx.session"])
        self.assertEqual(self.socket()["url"], URI + "&resume=")
        self.session("first:token")
        self.session("second:token")
        self.serverClose(1006)
        self.advance(600)
        self.assertEqual(self.socket()["url"], URI + "&resume=second%3Atoken")
        self.serverClose(1006)  # before the socket opened: the token is not used again
        self.advance(2000)
        self.assertEqual(self.socketCount(), 3)
        self.assertEqual(self.socket()["url"], URI + "&resume=")

    def test_offByDefault(self) -> None:
        self.connect()
        self.session("a:token")
        self.serverClose(1006)
        self.advance(600)
        self.assertEqual(self.socket()["url"], URI)

    def test_aTokenThatDoesNotFitTheQueryCapIsLeftOut(self) -> None:
        cap = len("subscribe-broadcast&resume=") + 5
        self.connect({"resume": True, "maxQueryLength": cap})
        self.session("a-token-longer-than-the-cap")
        self.serverClose(1006)
        self.advance(600)
        self.assertEqual(self.socket()["url"], URI + "&resume=")


class SubscriptionGrantTests(_PageTestCase):
    """A subscription's grant: in its subscribe frame, fetched anew before each subscribe
    when it is a function, and dropped once when the server refuses it."""

    def subscribes(self, index: int = -1) -> list[dict[str, Any]]:
        """The subscribe frames socket ``index`` was sent."""
        return [json.loads(f) for f in self.socket(index)["sent"]
                if isinstance(f, str) and f.startswith('{"ws4tx":"subscribe"')]

    def settle(self) -> None:
        """Let the page's pending promises run (the clock is paused: no timer fires)."""
        self.js("async () => { for (let i = 0; i < 20; i++) await null; }")

    def test_aRefusedGrantIsDroppedAndTheSubscribeSentAgainWithoutIt(self) -> None:
        """The grant goes in the frame; refused for it (expired), the subscription
        subscribes again without it, at once, and is not told refused."""
        self.connect(open=False)
        self.js("() => { window.s = __record(c.subscribe('notes', {audiences: ['user'], "
                "grant: 'G1'}), ['subscribed', 'refused']); }")
        self.open()
        [first] = self.subscribes()
        self.assertEqual((first["facility"], first["audiences"], first["grant"]),
                         ("notes", {"user": True}, "G1"))
        self.receive(envelope.encode_refused(first["id"], "invalid grant: expired"))
        frames = self.subscribes()
        self.assertEqual(len(frames), 2)
        self.assertNotIn("grant", frames[1])
        self.assertEqual(self.js("s.state"), "subscribing")
        self.receive(envelope.encode_subscribed(frames[1]["id"], "notes",
                                                ["ws4tx:user:john:notes"]))
        self.assertEqual(self.js("s.state"), "subscribed")
        self.assertEqual([name for name, _ in self.log() if name in ("subscribed", "refused")],
                         ["subscribed"])

    def test_aGrantFunctionIsAskedBeforeEverySubscribe(self) -> None:
        """A function (here of a Promise) gives the grant of each subscribe: the first
        connect's, then the reconnect's, a fresh one."""
        self.connect(open=False)
        self.js("() => { window.calls = 0; window.s = c.subscribe('notes', {audiences: "
                "['user'], grant: () => Promise.resolve('G' + (++calls))}); }")
        self.open()
        self.settle()
        self.assertEqual([f.get("grant") for f in self.subscribes()], ["G1"])
        self.serverClose(1006)
        self.advance(600)
        self.open()
        self.settle()
        self.assertEqual([f.get("grant") for f in self.subscribes()], ["G2"])
        self.assertEqual(self.js("calls"), 2)

    def test_otherRefusalsAreFinal(self) -> None:
        """A refusal that is not about the grant (nor says to come back) ends the
        subscription, told 'refused' with the server's reason."""
        self.connect(open=False)
        self.js("() => { window.s = __record(c.subscribe('notes', {audiences: ['user'], "
                "grant: 'G1'}), ['refused']); }")
        self.open()
        [first] = self.subscribes()
        self.receive(envelope.encode_refused(first["id"], "too many subscriptions: at most "
                                                         "100 channels per connection"))
        self.assertEqual(len(self.subscribes()), 1)
        self.assertEqual(self.js("s.state"), "refused")
        self.assertEqual([e for e in self.log() if e[0] == "refused"], [["refused", {
            "reason": "too many subscriptions: at most 100 channels per connection"}]])


#: The fake fetch of SSEFallbackTests: the probe's 400 (an admissible URL), an event stream
#: the test writes to (window.__stream), the acknowledgement of a POST.
SSE_ANSWER = """(init.headers && init.headers.Accept === 'text/event-stream')
  ? new Response(new ReadableStream({start(ctl) { window.__stream = ctl; }}),
                 {status: 200, headers: {'content-type': 'text/event-stream'}})
  : (init.method === 'POST' && init.body.includes('"forbidden"'))
  ? new Response(JSON.stringify({ws4tx: 'refused', status: 403,
                                 reason: 'CSRF verification failed.'}), {status: 403})
  : init.method === 'POST'
  ? new Response(JSON.stringify([{ws4tx: 'ack', id: JSON.parse(init.body).id,
                                  data: 'posted'}]), {status: 200})
  : new Response('This URL speaks WebSocket only', {status: 400})"""


class SSEFallbackTests(_PageTestCase):
    """The fallback to SSE on the page's fake clock: WebSockets that close before they
    open while the URL is answered over HTTP (the 400 of an admissible URL, as a proxy that
    strips Upgrade gets it) make the next attempt an event stream of the same URL; the
    WebSocket is tried again after retryWebSocket ms, doubling while it fails."""

    start = RefusedUrlTests.start
    settle = RefusedUrlTests.settle
    failEarly = RefusedUrlTests.failEarly

    def until(self, expression: str) -> None:
        """Let the page's promises and tasks run (not its clock) until ``expression``."""
        for _ in range(100):
            self.settle()
            if self.js(expression):
                return
        self.fail(f"never {expression}")

    def write(self, text: str) -> None:
        self.js("([t]) => __stream.enqueue(new TextEncoder().encode(t))", [text])
        self.settle()

    def streams(self) -> list[Any]:
        """The headers of each event stream asked for."""
        return self.js("fetches.filter(([u, i]) => i.headers && i.headers.Accept)"
                       ".map(([u, i]) => [u, i.headers])")

    def onSse(self, options: str = "{retryWebSocket: 60000}") -> None:
        self.start(SSE_ANSWER, options)
        self.js("() => { window.__got = []; c.on('message', (m) => __got.push(m)); "
                "c.on('transport', (t) => __log.push(['transport', t])); }")
        self.failEarly(1)
        self.serverClose(1006)  # the second: the URL is asked about
        self.until("c._answering")  # answered (400)
        self.assertEqual(self.js("c._mode"), "websocket")
        self.advance(30_000)
        self.assertEqual(self.socketCount(), 3)  # one more, which does not open either:
        self.serverClose(1006)
        self.settle()
        self.assertEqual(self.js("c._mode"), "sse")  # the next attempt is a stream
        self.advance(30_000)
        self.until("c.state === 'connected'")
        self.assertEqual(self.socketCount(), 3)
        self.assertEqual(self.js("c.transport"), "sse")
        self.assertEqual(self.js("c.state"), "connected")
        self.assertIn(["transport", {"transport": "sse", "previous": "websocket"}],
                      self.log())

    def test_afterTwoEarlyClosesAnAnsweredUrlIsReadAsAStream(self) -> None:
        self.onSse()
        self.assertEqual(self.streams(), [
            ["http://ws4tx.test/ws/chat?subscribe-broadcast", {"Accept": "text/event-stream"}]])
        pub = envelope.encode_publication("ws4tx:broadcast:chat", 7, "ab12",
                                          b"hello").decode()
        self.write(f": ws4tx\n\nid: tag123.ab12:7\ndata: {pub}\n\n")
        self.write("event: shouted\ndata: {\"a\": 1}\n\n: ping\n\n")
        self.assertEqual(self.js("__got"), ["hello"])
        self.assertEqual(self.js("c.positions"),
                         {"ws4tx:broadcast:chat": {"epoch": "ab12", "offset": 7}})
        self.js("() => c.on('shouted', (d) => (window.__shouted = d))")
        self.write("event: shouted\ndata: {\"a\": 2}\n\n")
        self.assertEqual(self.js("__shouted"), {"a": 2})
        # A request goes by POST to the URL, with the CSRF cookie's token (Django's check
        # of cookie identities); the answer's ack settles it.
        self.js("document.cookie = 'csrftoken=tok123; path=/'")
        self.assertEqual(self.js("async () => await c.request('echo', 1)"), "posted")
        post = self.js("fetches.filter(([u, i]) => i.method === 'POST')")
        self.assertEqual(len(post), 1)
        self.assertEqual(post[0][1]["headers"], {"Content-Type": "text/plain;charset=UTF-8",
                                                 "X-CSRFToken": "tok123"})
        self.assertEqual(post[0][0], "http://ws4tx.test/ws/chat?subscribe-broadcast")
        self.assertEqual(json.loads(post[0][1]["body"]),
                         {"ws4tx": "event", "event": "echo", "data": 1, "id": 1})
        # A refused POST: the request rejects with the refusal's reason.
        self.assertEqual(self.js("""async () => {
          try { await c.request('forbidden', 1); } catch (e) { return [e.code, e.message]; }
        }"""), ["error", "CSRF verification failed."])
        # The stream ends: the next one resumes from the last event's id.
        self.js("__stream.close()")
        self.settle()
        self.advance(1_000)  # the retry (the WebSocket's try is 30 s away)
        self.settle()
        self.assertEqual(self.streams()[-1][1],
                         {"Accept": "text/event-stream", "Last-Event-ID": "tag123.ab12:7"})
        self.until("c.state === 'connected'")

    def test_theWebSocketIsTriedAgainLaterAndTakesOverWhenItOpens(self) -> None:
        self.onSse()  # 30 s after the switch (the retry's delay)
        self.advance(29_000)
        self.assertEqual(self.socketCount(), 3)
        self.advance(1_000)  # retryWebSocket: a WebSocket, the stream closed
        self.assertEqual(self.socketCount(), 4)
        self.serverClose(1006)  # still not: back on a stream at once, next try in 120 s
        self.settle()
        self.advance(1_000)
        self.settle()
        self.assertEqual(self.js("c.transport"), "sse")
        self.assertEqual(self.js("c.state"), "connected")
        self.assertEqual(len(self.streams()), 2)
        self.advance(118_000)
        self.assertEqual(self.socketCount(), 4)
        self.advance(1_000)
        self.assertEqual(self.socketCount(), 5)
        self.log()
        self.open()
        self.assertEqual(self.js("c.transport"), "websocket")
        self.assertEqual(self.log()[:2], [
            ["transport", {"transport": "websocket", "previous": "sse"}],
            ["connected", {"protocol": "ws4tx.v1"}]])

    def test_subscriptionsWaitForTheWebSocket(self) -> None:
        self.onSse()
        self.js("() => { window.s = c.subscribe('notes'); }")
        self.settle()
        self.assertEqual(self.js("s.state"), "subscribing")
        self.assertEqual(self.js("fetches.filter(([u, i]) => i.method === 'POST').length"), 0)
        self.advance(30_000)
        self.open()
        sent = self.socket()["sent"]
        self.assertEqual([json.loads(f)["ws4tx"] for f in sent], ["subscribe"])

    def test_aSilentStreamIsDroppedAndResumed(self) -> None:
        """Any byte, the server's `: ping` comments included, keeps the stream alive for
        streamTimeout ms (60000 by default: the server pings every 25 s); a stream silent
        longer is dropped like one that ended, and the next resumes by Last-Event-ID."""
        self.onSse("{retryWebSocket: null, streamTimeout: undefined}")
        self.assertEqual(self.js("c._opts.streamTimeout"), 60_000)  # the default
        pub = envelope.encode_publication("ws4tx:broadcast:chat", 3, "ab12", b"hi").decode()
        self.write(f"id: tag1.ab12:3\ndata: {pub}\n\n")
        for _ in range(4):  # pings every 25 s: two minutes and more on one stream
            self.advance(25_000)
            self.write(": ping\n\n")
        self.assertEqual((self.js("c.state"), len(self.streams())), ("connected", 1))
        self.log()
        self.advance(59_999)
        self.assertEqual(self.log(), [])
        self.advance(1)
        self.settle()
        self.assertEqual(self.log(), [
            ["disconnected", {"code": 1006, "reason": "the stream went silent",
                              "wasClean": False, "reconnect": True}],
            ["reconnecting", {"attempt": 1, "delay": 500}]])
        self.assertEqual(self.js("__got"), ["hi"])
        self.advance(500)
        self.until("c.state === 'connected'")
        self.assertEqual(self.streams()[-1][1],
                         {"Accept": "text/event-stream", "Last-Event-ID": "tag1.ab12:3"})
        self.assertEqual(self.js("c.transport"), "sse")

    def test_streamTimeoutNullWaitsForever(self) -> None:
        self.onSse("{retryWebSocket: null, streamTimeout: null}")
        self.log()
        self.advance(3_600_000)
        self.assertEqual((self.js("c.state"), len(self.streams()), self.log()),
                         ("connected", 1, []))

    def test_aStreamThatDoesNotOpenIsGivenUp(self) -> None:
        """openTimeout covers the stream too: a fetch never answered is aborted."""
        self.onSse("{retryWebSocket: null, streamTimeout: null}")
        self.js("""() => { window.__aborted = 0; c._opts.openTimeout = 20000;
          c._opts.fetch = (url, init) => { fetches.push([url, init]);
            return new Promise((resolve, reject) => init.signal.addEventListener('abort',
              () => { __aborted++; reject(new DOMException('aborted', 'AbortError')); })); };
        }""")
        self.js("__stream.close()")
        self.settle()
        self.log()
        self.advance(500)  # the retry: a stream whose answer never comes
        self.settle()
        self.assertEqual((len(self.streams()), self.js("c.state")), (2, "connecting"))
        self.log()
        self.advance(19_999)
        self.settle()
        self.assertEqual(self.log(), [])
        self.advance(1)
        self.settle()
        self.assertEqual(self.js("__aborted"), 1)
        self.assertEqual(self.log()[0], ["disconnected", {
            "code": 1006, "reason": "opening timed out", "wasClean": False,
            "reconnect": True}])
