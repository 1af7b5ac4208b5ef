"""Sending without a socket (issue 23): a POST to a client's URL carries one message, with
the admission, rate limit, handlers and acknowledgements of a WebSocket frame; what it
sends reaches real SSE streams through a real Redis. The attacks: no CSRF token with a
cookie identity, a URL the identity cannot publish on, a body too large, a body that
trickles in."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, endpoints, reactor
from twisted.trial import unittest

from ws4tx import (
    envelope,
    tokens,
)
from ws4tx.server.handlers import EventHandler, EventRefused

from test._server import ServerTestCase, identity_header
from test._sseclient import SSEClient, post, request
from test._wsclient import TIMEOUT, raw_request, status_of
from test.test_django_auth import DjangoServerTestCase
from test.test_metrics import samples, scrape, value

NEWS = "ws4tx:broadcast:news"
JOHN = identity_header("john", ("chatusers",), "s-john")


class Chat(EventHandler):
    """A handler as an application's: answers, emits to its client, refuses."""

    facility = "chat"

    def on_echo(self, client: Any, data: Any) -> Any:
        client.emit("echoed", {"by": client.identity.user})
        return data

    def on_refuse(self, client: Any, data: Any) -> Any:
        raise EventRefused("not allowed")


def event(name: str, data: Any = None, id: Any = None) -> bytes:
    return envelope.encode_event(name, data, id).encode()


class _PostTestCase(ServerTestCase):
    async def stream(self, path: str, **headers: str) -> SSEClient:
        """An SSE stream whose channels are subscribed."""
        node = self.factory.node
        count = node.clientCount()
        response, client = await request(self.port, path, headers)
        self.addCleanup(client.close)
        self.assertEqual(response.code, 200)
        await client.until(lambda c: node.clientCount() > count)
        await node.router.barrier()
        return client


class PostTests(_PostTestCase):
    """Events and raw messages posted to a stream's URL."""

    async def startServer(self, wait: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("handlers", [Chat])
        await super().startServer(wait, **kwargs)

    async def test_rawPublishFlagsPublishAndAnswerReceivers(self) -> None:
        """``?publish-broadcast`` as ws4redis's URLs: the body is published as is, the
        answer says how many subscribers got it, and a stream of the channel gets it."""
        stream = await self.stream("/ws/news?subscribe-broadcast")
        status, headers, body = await post(self.port, "/ws/news?publish-broadcast",
                                           b"hello\nworld")
        self.assertEqual((status, body), (200, {"receivers": 1}))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        await stream.until(lambda c: len(c.messages()) == 1)
        self.assertEqual(stream.messages()[0].data, "hello\nworld")

    async def test_binaryAsOctetStream(self) -> None:
        """A body sent as application/octet-stream is a binary message, as a binary
        frame: a WebSocket subscriber gets it as one, byte for byte."""
        client = await self.client("/ws/bin?subscribe-broadcast")
        status, _, body = await post(self.port, "/ws/bin?publish-broadcast", b"\x00\xff\xfe",
                                     {"content-type": "application/octet-stream"})
        self.assertEqual((status, body), (200, {"receivers": 1}))
        self.assertEqual(await client.next(), (b"\x00\xff\xfe", True))

    async def test_eventForwardedWithAck(self) -> None:
        """An event client's event (no handler for its facility, publish flags) is
        published in its envelope; the answer is the acknowledgement a WebSocket client
        gets; the stream gets the event."""
        stream = await self.stream("/ws/news?subscribe-broadcast")
        status, _, body = await post(self.port, "/ws/news?publish-broadcast",
                                     event("note", {"n": 1}, id=4))
        self.assertEqual((status, body), (200, [{"ws4tx": "ack", "id": 4, "data": None}]))
        await stream.until(lambda c: len(c.messages()) == 1)
        self.assertEqual(stream.messages()[0].json(),
                         {"ws4tx": "event", "event": "note", "data": {"n": 1}})

    async def test_handlerAnswersAndEmitsToThePoster(self) -> None:
        """A facility's handler gets the POST as a client of its user: what it emits to
        that client and its acknowledgement make the answer, in order; a refusal is an
        error acknowledgement, as on a WebSocket."""
        status, _, body = await post(self.port, "/ws/chat", event("echo", [1, 2], id=1),
                                     JOHN)
        self.assertEqual((status, body), (200, [
            {"ws4tx": "event", "event": "echoed", "data": {"by": "john"}},
            {"ws4tx": "ack", "id": 1, "data": [1, 2]}]))
        status, _, body = await post(self.port, "/ws/chat", event("refuse", id=2), JOHN)
        self.assertEqual((status, body), (200, [
            {"ws4tx": "ack", "id": 2, "error": "not allowed"}]))

    async def test_subscribeNeedsAConnection(self) -> None:
        """A subscribe frame posted is refused as a refused subscribe is (its id), since
        a POST has no connection to add channels to."""
        frame = json.dumps({"ws4tx": "subscribe", "id": 3, "facility": "news",
                            "audiences": {"broadcast": True}}).encode()
        status, _, body = await post(self.port, "/ws/chat", frame, JOHN)
        self.assertEqual(status, 200)
        self.assertEqual((body[0]["ws4tx"], body[0]["id"]), ("refused", 3))

    async def test_badInputIsA400AndNothingIsPublished(self) -> None:
        """A malformed envelope, an empty body, a body that is not UTF-8: 400 with the
        reason as JSON; nothing reaches the channel (the next good message is the first
        the stream gets)."""
        stream = await self.stream("/ws/news?subscribe-broadcast")
        path = "/ws/news?publish-broadcast"
        for body, reason in ((b'{"ws4tx": "event", "event": 5}', "invalid envelope"),
                             (b"", "an empty body"), (b"\xff\xfe", "not UTF-8")):
            status, _, answer = await post(self.port, path, body)
            self.assertEqual(status, 400)
            self.assertEqual(answer["ws4tx"], "refused")
            self.assertIn(reason, answer["reason"])
        self.assertEqual((await post(self.port, path, b"good"))[0], 200)
        await stream.until(lambda c: len(c.messages()) == 1)
        self.assertEqual([m.data for m in stream.messages()], ["good"])

    async def test_postsCountedByOutcomeInTheMetrics(self) -> None:
        """Each POST answered counts in ``ws4tx_client_posts_total`` by its outcome: ok
        (published, or an event answered), refused (4xx: bad input, no rights), failed
        (5xx: Redis unavailable)."""
        await self.startServer(config={"metrics_url": "/ws4tx/metrics"})
        path = "/ws/news?publish-broadcast"
        self.assertEqual((await post(self.port, path, b"one"))[0], 200)
        self.assertEqual((await post(self.port, path, b"two"))[0], 200)
        self.assertEqual((await post(self.port, path, b""))[0], 400)
        self.assertEqual((await post(self.port, "/ws/news?subscribe-broadcast", b"x"))[0],
                         403)
        self.redis_server.stop()
        await self.brokerEvent("disconnected")
        self.assertEqual((await post(self.port, path, b"lost"))[0], 503)
        status, text = await scrape(self.port)
        self.assertEqual(status, 200)
        found = samples(text)
        self.assertEqual({outcome: value(found, "ws4tx_client_posts_total", outcome=outcome)
                          for outcome in ("ok", "refused", "failed")},
                         {"ok": 2, "refused": 2, "failed": 1})

    async def test_urlWithoutPublishRightsRefused(self) -> None:
        """An anonymous identity's publish flag is dropped by the site (anonymous
        publishing off), an identity without a session has no session channel, a raw
        message on a handler's facility has nowhere to go: all refused with 403, nothing
        published."""
        await self.startServer(config={"anonymous_publish": False})
        stream = await self.stream("/ws/news?subscribe-broadcast")
        status, _, body = await post(self.port, "/ws/news?publish-broadcast", b"spam")
        self.assertEqual((status, body["status"]), (403, 403))
        status, _, body = await post(self.port, "/ws/news?publish-session", b"spam",
                                     identity_header("mary"))
        self.assertEqual(status, 403)
        status, _, body = await post(self.port, "/ws/chat?publish-broadcast", b"raw", JOHN)
        self.assertEqual(status, 403)
        status, _, _ = await post(self.port, "/ws/news?publish-broadcast", b"ok", JOHN)
        self.assertEqual(status, 200)
        await stream.until(lambda c: len(c.messages()) == 1)
        self.assertEqual([m.data for m in stream.messages()], ["ok"])

    async def test_foreignOriginRefused(self) -> None:
        """A page of an Origin the site does not allow is refused as its handshake
        would be (403), before anything is read of it."""
        await self.startServer(config={"allowed_origins": ("https://site.example",)})
        status, _, body = await post(self.port, "/ws/news?publish-broadcast", b"x",
                                     {"origin": "https://evil.example"})
        self.assertEqual((status, body["reason"]), (403, "this Origin is not allowed"))


class PostRateLimitTests(_PostTestCase):
    """The rate limit of a WebSocket client's frames applies to its POSTs."""

    config = ServerTestCase.config.replace(rate_limit=1.0, rate_burst=2)

    async def test_pastTheBurstA429ThatSaysWhen(self) -> None:
        """Two POSTs within the burst pass; the third is refused with 429 and
        Retry-After, counted as rate limited, and not published; another user's are
        not limited by it."""
        stream = await self.stream("/ws/news?subscribe-broadcast")
        path = "/ws/news?publish-broadcast"
        statuses = [(await post(self.port, path, f"m{n}".encode(), JOHN))[0]
                    for n in range(2)]
        status, headers, body = await post(self.port, path, b"m2", JOHN)
        self.assertEqual(statuses + [status], [200, 200, 429])
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertIn("rate limit exceeded", body["reason"])
        self.assertEqual(self.factory.node.stats["rate_limited"], 1)
        other = identity_header("mary")
        self.assertEqual((await post(self.port, path, b"mary", other))[0], 200)
        await stream.until(lambda c: len(c.messages()) == 3)
        self.assertEqual([m.data for m in stream.messages()], ["m0", "m1", "mary"])


class PostBodyTests(_PostTestCase):
    """Bodies too large, bodies that never end."""

    config = ServerTestCase.config.replace(max_message_size=1024, handshake_timeout=1.0)

    async def test_oversizedBodyRefusedFromItsLength(self) -> None:
        """A Content-Length over max_message_size is answered 413 and closed without the
        body being waited for."""
        head = (b"POST /ws/news?publish-broadcast HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"a" * 100)
        status, text = status_of(await raw_request(self.port, head))
        self.assertEqual(status, 413)
        self.assertIn("max_message_size (1024 bytes)", text)

    async def test_oversizedChunkedBodyRefusedAsItComes(self) -> None:
        """A chunked body is counted as it comes: past the cap, 413 and closed; nothing
        published."""
        stream = await self.stream("/ws/news?subscribe-broadcast")
        chunk = b"200\r\n" + b"b" * 512 + b"\r\n"
        head = (b"POST /ws/news?publish-broadcast HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n")
        status, _ = status_of(await raw_request(self.port, head))
        self.assertEqual(status, 413)
        self.assertEqual((await post(self.port, "/ws/news?publish-broadcast", b"next"))[0],
                         200)
        await stream.until(lambda c: len(c.messages()) == 1)
        self.assertEqual([m.data for m in stream.messages()], ["next"])

    async def test_tricklingBodyCutOffAtTheDeadline(self) -> None:
        """A body that never ends costs its connection until the request deadline
        (handshake_timeout): then it is closed, unanswered, and nothing published."""
        head = (b"POST /ws/news?publish-broadcast HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 10\r\n\r\nabc")
        started = reactor.seconds()
        self.assertEqual(await raw_request(self.port, head), b"")
        self.assertLess(reactor.seconds() - started, TIMEOUT)
        self.assertEqual(self.factory.node.stats["client_messages"], 0)

    async def test_withinTheCapPublished(self) -> None:
        """A body of exactly max_message_size bytes is a message like any other."""
        status, _, body = await post(self.port, "/ws/news?publish-broadcast", b"c" * 1024)
        self.assertEqual((status, body), (200, {"receivers": 0}))


class DjangoPostTests(DjangoServerTestCase):
    """A POST whose identity comes from the session cookie must pass Django's CSRF
    check, with Django's own rules; a token is its own proof."""

    PATH = "/ws/news?subscribe-user&publish-user"
    SECRET = "k" * 32

    def origin(self) -> dict[str, str]:
        return {"Origin": f"http://127.0.0.1:{self.port}"}

    async def johnStream(self, key: str) -> SSEClient:
        node = self.factory.node
        response, client = await request(self.port, "/ws/news?subscribe-user",
                                         self.cookie(key))
        self.addCleanup(client.close)
        self.assertEqual(response.code, 200)
        await client.until(lambda c: node.clientCount() == 1)
        await node.router.barrier()
        return client

    async def test_cookieWithoutCsrfTokenRefused(self) -> None:
        """A logged-in user's cookie alone (what a forged cross-site form would carry):
        403 with Django's reason; with the CSRF cookie but no token in the header, 403
        again; nothing reaches the user's channel."""
        _, key = self.login("john")
        stream = await self.johnStream(key)
        status, _, body = await post(self.port, self.PATH, b"forged",
                                     {**self.cookie(key), **self.origin()})
        self.assertEqual(status, 403)
        self.assertEqual(body["reason"], "CSRF verification failed: CSRF cookie not set.")
        cookies = self.cookie(key)["Cookie"] + f"; csrftoken={self.SECRET}"
        status, _, body = await post(self.port, self.PATH, b"forged",
                                     {"Cookie": cookies, **self.origin()})
        self.assertEqual(status, 403)
        self.assertIn("CSRF token missing", body["reason"])
        status, _, body = await post(self.port, self.PATH, b"mine", {
            "Cookie": cookies, "X-CSRFToken": self.SECRET, **self.origin()})
        self.assertEqual((status, body), (200, {"receivers": 1}))
        await stream.until(lambda c: len(c.messages()) == 1)
        self.assertEqual([m.data for m in stream.messages()], ["mine"])

    async def preflight(self) -> dict[str, str]:
        """The headers of the answer to a page of this site asking whether it may POST."""
        response = await raw_request(self.port, (
            f"OPTIONS {self.PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Origin: http://127.0.0.1:{self.port}\r\n"
            f"Access-Control-Request-Method: POST\r\n"
            f"Access-Control-Request-Headers: content-type, x-csrf-token\r\n"
            f"Connection: close\r\n\r\n").encode())
        status, text = status_of(response)
        self.assertEqual(status, 204, text)
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
        return {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}

    async def test_preflightAllowsTheSitesCsrfHeader(self) -> None:
        """A site whose ``CSRF_HEADER_NAME`` is another header (ws4tx.js's ``csrfHeader``
        set to match) gets it listed in the CORS preflight beside Content-Type,
        X-CSRFToken and Last-Event-ID, and a POST that carries the token in it passes
        Django's check."""
        headers = await self.preflight()
        self.assertEqual(headers["access-control-allow-headers"],
                         "content-type, x-csrftoken, last-event-id")
        self.assertEqual(headers["access-control-allow-credentials"], "true")
        self.settings_override(CSRF_HEADER_NAME="HTTP_X_CSRF_TOKEN")
        await self.startServer()
        headers = await self.preflight()
        self.assertEqual(headers["access-control-allow-headers"],
                         "content-type, x-csrftoken, x-csrf-token, last-event-id")
        _, key = self.login("john")
        stream = await self.johnStream(key)
        cookies = self.cookie(key)["Cookie"] + f"; csrftoken={self.SECRET}"
        status, _, body = await post(self.port, self.PATH, b"mine", {
            "Cookie": cookies, "X-CSRF-Token": self.SECRET, **self.origin()})
        self.assertEqual((status, body), (200, {"receivers": 1}))
        await stream.until(lambda c: len(c.messages()) == 1)

    async def test_csrfTokenOfAnotherSecretRefused(self) -> None:
        """A token that does not match the CSRF cookie is refused as Django refuses
        it."""
        _, key = self.login("john")
        cookies = self.cookie(key)["Cookie"] + f"; csrftoken={self.SECRET}"
        status, _, body = await post(self.port, self.PATH, b"x", {
            "Cookie": cookies, "X-CSRFToken": "z" * 32, **self.origin()})
        self.assertEqual(status, 403)
        self.assertIn("HTTP header incorrect", body["reason"])

    async def test_tokenIdentityNeedsNoCsrf(self) -> None:
        """A token URL authenticates the POST by its token, which a foreign page cannot
        get: no CSRF token asked."""
        _, key = self.login("john")
        stream = await self.johnStream(key)
        token = tokens.make_token("john")
        status, _, body = await post(self.port, f"{self.PATH}&token={token}", b"by token")
        self.assertEqual((status, body), (200, {"receivers": 1}))
        await stream.until(lambda c: len(c.messages()) == 1)
        self.assertEqual([m.data for m in stream.messages()], ["by token"])

    async def test_csrfSecretInTheSessionWithCsrfUseSessions(self) -> None:
        """With ``CSRF_USE_SESSIONS`` the secret is the session's, as Django reads it for
        its views: the right token passes without a CSRF cookie, a CSRF cookie of the
        attacker's own does not stand in for it."""
        from django.middleware.csrf import CSRF_SESSION_KEY

        self.settings_override(CSRF_USE_SESSIONS=True)
        client, key = self.login("john")
        session = client.session
        session[CSRF_SESSION_KEY] = self.SECRET
        session.save()
        stream = await self.johnStream(key)
        status, _, body = await post(self.port, self.PATH, b"forged", {
            "Cookie": self.cookie(key)["Cookie"] + "; csrftoken=" + "z" * 32,
            "X-CSRFToken": "z" * 32, **self.origin()})
        self.assertEqual(status, 403)
        status, _, body = await post(self.port, self.PATH, b"mine", {
            **self.cookie(key), "X-CSRFToken": self.SECRET, **self.origin()})
        self.assertEqual((status, body), (200, {"receivers": 1}))
        await stream.until(lambda c: len(c.messages()) == 1)
        self.assertEqual([m.data for m in stream.messages()], ["mine"])

    async def test_overTlsDjangosRefererRuleApplies(self) -> None:
        """Over TLS the request is HTTPS to Django, as for its views: the https Origin of
        the site passes, and a POST without an Origin needs a Referer of the site (Django's
        rule against a network attacker's http page)."""
        from twisted.internet import endpoints, ssl

        from test._wsclient import _RawHTTP

        certificate = ssl.KeyPair.generate(size=2048).selfSignedCert(1, commonName="127.0.0.1")
        port = await endpoints.SSL4ServerEndpoint(
            reactor, 0, certificate.options(), interface="127.0.0.1").listen(self.service.site)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        _, key = self.login("john")
        site = f"https://127.0.0.1:{number}"

        async def status(headers: dict[str, str]) -> tuple[int, str]:
            done: defer.Deferred[bytes] = defer.Deferred()
            lines = [f"POST {self.PATH} HTTP/1.1", f"Host: 127.0.0.1:{number}",
                     "Connection: close", "Content-Length: 2",
                     "Cookie: " + self.cookie(key)["Cookie"] + f"; csrftoken={self.SECRET}",
                     f"X-CSRFToken: {self.SECRET}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            raw = ("\r\n".join(lines) + "\r\n\r\nhi").encode()
            client = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", number,
                                                  ssl.CertificateOptions(), timeout=TIMEOUT)
            await endpoints.connectProtocol(client, _RawHTTP(raw, done))
            return status_of(await done.addTimeout(TIMEOUT, reactor))

        self.assertEqual((await status({"Origin": site}))[0], 200)
        self.assertEqual((await status({"Origin": f"http://127.0.0.1:{number}"}))[0], 403)
        code, text = await status({})
        self.assertEqual(code, 403)
        self.assertIn("Referer checking failed - no Referer", text)
        self.assertEqual((await status({"Referer": site + "/chat/"}))[0], 200)


class MountedPostTests(unittest.TestCase):
    """ws4tx's resource mounted in an application's own Site, which caps no body."""

    async def test_oversizedBodyRefusedAllTheSame(self) -> None:
        """A POST over max_message_size is refused with 413 (read whole by that Site,
        never handled); one within it is published."""
        from twisted.web import resource
        from twisted.web.server import Site

        from ws4tx.server.config import ServerConfig
        from ws4tx.server.embedded import EmbeddedRedis
        from ws4tx.server.service import PushService

        from test._server import observe_broker

        redis = EmbeddedRedis()
        redis.start()
        self.addCleanup(redis.stop)
        push = PushService(ServerConfig(redis=redis.address, ping_interval=0,
                                        anonymous_publish=True, max_message_size=100))
        events = observe_broker(push.factory.node.router)
        push.startService()
        self.addCleanup(push.stopService)
        self.assertEqual(await events.get().addTimeout(TIMEOUT, reactor), "connected")
        root = resource.Resource()
        root.putChild(b"ws", push.websocket_resource)
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(root))
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        status, _, body = await post(number, "/ws/news?publish-broadcast", b"x" * 101)
        self.assertEqual(status, 413)
        self.assertIn("max_message_size (100 bytes)", body["reason"])
        status, _, body = await post(number, "/ws/news?publish-broadcast", b"x" * 100)
        self.assertEqual((status, body), (200, {"receivers": 0}))
