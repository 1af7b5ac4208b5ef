"""ws4tx.js's fallback to Server-Sent Events in headless Chromium, behind a real nginx that
strips ``Upgrade`` (test_nginx.Nginx, ``strip``), with two ``twistd ws4tx`` nodes of one
Redis behind it (round robin, no sticky sessions).

The page's WebSockets never open (nginx forwards the handshake as a plain GET, which the
node answers 400): ws4tx.js reads the same URL as an event stream, sends by POST with
acknowledgements, and, on a facility with history, comes back after every drop with
Last-Event-ID: 20 forced reconnects (nginx restarted, and the node holding the stream
SIGKILLed and started again, in turn) while messages are published, and each arrives
once, in order."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from typing import Any, ClassVar

import psutil
import pytest
import redis
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.history import Retention
from ws4tx.server.embedded import EmbeddedRedis, free_port

from test import _browser
from test._demo import OutputChild, child_environment
from test._process import ROOT, twistd_path
from test._recovering import publish_with_history
from test.test_js_client import SCRIPT
from test.test_nginx import Nginx, nginx_path

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

TIMEOUT = 30.0
#: Room for every message of the storm: a recovery never meets a trimmed history.
RETENTION = Retention(20000, 600)
HANDLERS = os.path.join(ROOT, "js", "test")  # ws4tx_server.Echo: echo, refuse
#: Messages a second the storm publishes (see test_twentyForcedReconnects).
RATE = 200
RECONNECTS = 20


class _Node(OutputChild):
    """``twistd ws4tx`` on a port of its own, history on ``chat*``, handlers on ``echo``."""

    name = "a twistd ws4tx node"

    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self.port = free_port()
        self.redis_url = redis_url

    def start(self, wait: bool = True) -> int:
        env = child_environment()
        env["PYTHONPATH"] = os.pathsep.join([HANDLERS, env["PYTHONPATH"]])
        argv = [twistd_path(), "-n", "--pidfile=", "ws4tx", "--redis", self.redis_url,
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--history", f"chat*={RETENTION.size}:{RETENTION.ttl}",
                "--handlers", "ws4tx_server.Echo", "--anonymous-publish"]
        start = self.spawn(argv, env=env, cwd=ROOT)
        if wait:
            self.ready(start)
        return start

    def ready(self, start: int) -> None:
        self.wait_for(rf"(?s)(?=.*Site starting on {self.port}\b)"
                      r"(?=.*Redis subscriber connected)", since=start)

    def streams(self) -> int:
        """Its connections from nginx (the page's stream; nothing else stays open)."""
        assert self.process is not None
        return sum(1 for c in psutil.Process(self.process.pid).net_connections("tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port)


class _Nginx(OutputChild):
    """test_nginx.Nginx's configuration (strip: no Upgrade passed on), run as a child of
    this synchronous test: :meth:`restart` is nginx stopped (fast shutdown: its
    connections closed) and started again on the same port."""

    name = "nginx"

    def __init__(self, upstreams: list[int]) -> None:
        super().__init__()
        self.config = Nginx(upstreams, "x-forwarded-for", "strip")
        self.port = self.config.port

    def start(self) -> None:
        argv = [nginx_path(), "-p", self.config.dir, "-c", str(self.config.conf),
                "-e", "stderr", "-g", "daemon off;"]
        self.wait_for("start worker process", since=self.spawn(argv, cwd=self.config.dir))

    def restart(self) -> None:
        self.stop()
        self.start()


class SSEFallbackInChromiumTests(SynchronousTestCase):
    handle: ClassVar[Any] = None
    redis_server: ClassVar[EmbeddedRedis]
    nodes: ClassVar[list[_Node]]
    nginx: ClassVar[_Nginx]

    @classmethod
    def setUpClass(cls) -> None:
        cls.redis_server = EmbeddedRedis()
        cls.redis_server.start()
        cls.nodes = []
        try:
            cls.nodes = [_Node(cls.redis_server.url), _Node(cls.redis_server.url)]
            for node in cls.nodes:
                node.start()
            cls.nginx = _Nginx([n.port for n in cls.nodes])
            cls.nginx.start()
            cls.handle = _browser.launch()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            if cls.handle is not None:
                cls.handle.close()
        finally:
            if getattr(cls, "nginx", None) is not None:
                cls.nginx.stop()
                shutil.rmtree(cls.nginx.config.dir, ignore_errors=True)
            for node in cls.nodes:
                node.stop()
            cls.redis_server.stop()

    def setUp(self) -> None:
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        context = self.handle.browser.new_context()
        self.addCleanup(context.close)
        self.page = context.new_page()
        base = f"http://127.0.0.1:{self.nginx.port}"
        # A page of the loopback (Chromium's local network access checks), through nginx.
        self.page.goto(f"{base}/ws4tx/health")
        self.page.add_script_tag(path=str(SCRIPT))
        self.ws = f"ws://127.0.0.1:{self.nginx.port}/ws/"

    def wait(self, expression: str, arg: Any = None) -> None:
        self.page.wait_for_function(expression, arg=arg, timeout=TIMEOUT * 1000)

    def publish(self, facility: str, payload: str) -> None:
        publish_with_history(self.redis, f"ws4tx:broadcast:{facility}", payload.encode(),
                             RETENTION)

    def test_thePageFallsBackToSSEReceivesAndSendsByPost(self) -> None:
        """The WebSocket cannot open through this nginx: the page reads the URL as an event
        stream (client.transport 'sse', the 'transport' event), gets what is published,
        and its requests go by POST and get their acknowledgement or refusal."""
        self.page.evaluate("""(ws) => {
          window.__got = []; window.__transports = []; window.__closes = [];
          window.c = new WS4TX(ws + 'chat-fallback?subscribe-broadcast',
                               {minDelay: 100, maxDelay: 1000, retryWebSocket: null});
          c.on('transport', (t) => __transports.push(t));
          c.on('disconnected', (d) => __closes.push(d.code));
          c.on('message', (m) => __got.push(m));
          window.e = new WS4TX(ws + 'echo?subscribe-broadcast',
                               {minDelay: 100, maxDelay: 1000, retryWebSocket: null});
        }""", self.ws)
        self.wait("c.state === 'connected' && e.state === 'connected'")
        state = self.page.evaluate("({transport: c.transport, echo: e.transport, "
                                   "transports: __transports, closes: __closes})")
        self.assertEqual((state["transport"], state["echo"]), ("sse", "sse"))
        self.assertEqual(state["transports"], [{"transport": "sse", "previous": "websocket"}])
        self.assertGreaterEqual(len(state["closes"]), 2)
        self.assertEqual(set(state["closes"]), {1006})
        self.publish("chat-fallback", "over the stream")
        self.wait("__got.includes('over the stream')")
        replies = self.page.evaluate("""async () => {
          const reply = await e.request('echo', {n: 1, text: 'é'});
          let refused = null;
          try { await e.request('refuse', 'no'); } catch (err) {
            refused = {name: err.name, code: err.code, message: err.message};
          }
          return {reply, refused, transport: e.transport};
        }""")
        self.assertEqual(replies, {
            "reply": {"n": 1, "text": "é"},
            "refused": {"name": "AckError", "code": "error", "message": "refused: no"},
            "transport": "sse"})

    def test_twentyForcedReconnectsNoGapNoDuplicate(self) -> None:
        """The issue's storm: messages published at RATE a second to a facility with
        history; 20 times the page's stream is broken (nginx restarted, or the node that
        holds it SIGKILLed and started again, in turn); at the end each message arrived
        exactly once, in order."""
        self.page.evaluate("""(ws) => {
          window.__seq = []; window.__opened = 0; window.__dropped = 0;
          window.__verdicts = [];
          window.c = new WS4TX(ws + 'chat-storm?subscribe-broadcast',
                               {minDelay: 50, maxDelay: 500, retryWebSocket: null});
          c.on('connected', () => __opened++);
          c.on('disconnected', () => __dropped++);
          c.on('recovered', (v) => __verdicts.push(v.recovered ? true : v.reason));
          c.on('message', (m) => __seq.push(Number(m)));
        }""", self.ws)
        self.wait("c.state === 'connected' && c.transport === 'sse'")
        self.publish("chat-storm", "0")  # a position for the stream to resume from
        self.wait("__seq.length === 1")
        published = [1]
        stop = threading.Event()

        def publisher() -> None:
            client = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
            began = time.monotonic()
            n = 1
            while not stop.is_set():
                due = began + (n - 1) / RATE
                pause = due - time.monotonic()
                if pause > 0:
                    stop.wait(pause)  # the load's own pace
                publish_with_history(client, "ws4tx:broadcast:chat-storm",
                                     str(n).encode(), RETENTION)
                n += 1
                published[0] = n
            client.close()

        thread = threading.Thread(target=publisher, daemon=True)
        began = time.monotonic()
        thread.start()
        try:
            for i in range(RECONNECTS):
                opened = self.page.evaluate("__opened")
                if i % 2 == 0:
                    self.nginx.restart()
                    self.wait("(n) => __opened > n", opened)
                else:
                    holder = next(n for n in self.nodes if n.streams())
                    holder.stop(signal.SIGKILL)
                    starting = holder.start(wait=False)
                    self.wait("(n) => __opened > n", opened)  # on the other node
                    # Back before nginx is restarted: nginx then counts no node as failed
                    # (a node it failed to reach is left alone for 10 s, its default).
                    holder.ready(starting)
        finally:
            stop.set()
            thread.join(TIMEOUT)
        elapsed = time.monotonic() - began
        last = published[0] - 1
        self.wait("(last) => __seq.length && __seq[__seq.length - 1] === last", last)
        seq = self.page.evaluate("__seq")
        state = self.page.evaluate("({dropped: __dropped, opened: __opened, "
                                   "verdicts: __verdicts, transport: c.transport})")
        gaps = (last + 1) - len(set(seq))
        duplicates = len(seq) - len(set(seq))
        print(f"\n{last + 1} messages in {elapsed:.1f} s ({(last + 1) / elapsed:.0f}/s, "
              f"target {RATE}/s), {state['opened'] - 1} reconnects ({state['dropped']} "
              f"streams lost or refused): {gaps} gaps, {duplicates} duplicates")
        self.assertGreaterEqual(state["opened"], 1 + RECONNECTS)
        self.assertEqual(state["transport"], "sse")
        self.assertEqual((gaps, duplicates), (0, 0))
        self.assertEqual(seq, list(range(last + 1)))
        self.assertNotIn(False, state["verdicts"])
        self.assertTrue(all(v is True for v in state["verdicts"]), state["verdicts"])
        self.assertGreater((last + 1) / elapsed, RATE * 0.9)
