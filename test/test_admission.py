"""Handshake admission from tables: the request checks, what an identity is admitted to,
and the per-address counts. No sockets, no reactor."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ws4tx import envelope
from ws4tx.naming import ANONYMOUS, Flags, Identity
from ws4tx.server import admission
from ws4tx.server.auth import Grant, HandshakeDenied
from ws4tx.server.config import ServerConfig

CONFIG = ServerConfig(max_connections_per_ip=2, trusted_proxies=("10.0.0.1",))
JOHN = Identity(user="john", groups=frozenset({"g"}), session="s1")
ALL = "subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session"
PUBLISH = "publish-broadcast&publish-user"


def request(path: str = "/ws/chat", query: str = ALL, config: ServerConfig = CONFIG,
            **headers: str):
    return admission.check_request(config, peer="tcp4:127.0.0.1:1", host="example",
                                   path=path, query=query, headers=headers)


class CheckRequestTests(SynchronousTestCase):
    """What the authenticator gets, or the HTTP status and reason of a refusal."""

    def test_refusals(self):
        """Each bad request gets its status and a reason that says what is wrong."""
        origins = CONFIG.replace(allowed_origins=("https://site.example",))
        table = [
            (dict(query="a" * 2049), 414, "too long"),
            (dict(path="/other/chat"), 404, "start with /ws/"),
            (dict(path="/ws/"), 400, "facility is missing"),
            (dict(path="/ws/a:b"), 400, "may contain only"),
            (dict(path="/ws/" + "a" * 129), 400, "longer than 128"),
            (dict(config=origins, origin="https://evil.example"), 403, "Origin"),
        ]
        for kwargs, status, reason in table:
            with self.assertRaises(HandshakeDenied, msg=kwargs) as caught:
                request(**kwargs)
            self.assertEqual(caught.exception.status, status, kwargs)
            self.assertIn(reason, caught.exception.reason, kwargs)

    def test_passes(self):
        """A good request becomes the authenticator's HandshakeRequest: the facility,
        the flags, the parsed query."""
        origins = CONFIG.replace(allowed_origins=("https://site.example",))
        handshake = request(query=ALL + "&echo&token=t", config=origins,
                            origin="https://site.example")
        self.assertEqual(handshake.facility, "chat")
        self.assertEqual(handshake.flags.subscribe,
                         frozenset({"broadcast", "user", "group", "session"}))
        self.assertTrue(handshake.flags.echo)
        self.assertEqual(handshake.params["token"], ["t"])
        self.assertEqual(handshake.origin, "https://site.example")


class AdmitTests(SynchronousTestCase):
    """What an authenticator's answer admits a client to."""

    def admit(self, answer, query=ALL + "&" + PUBLISH, config=CONFIG, handled=False,
              protocols=()):
        return admission.admit(config, request(query=query), answer, handled=handled,
                               protocols=protocols)

    def test_channelsAreTheIdentitysOwn(self):
        """The channels come from the identity only; an anonymous client gets broadcast."""
        john = self.admit(JOHN)
        self.assertEqual(john.channels, ("ws4tx:broadcast:chat", "ws4tx:user:john:chat",
                                         "ws4tx:group:g:chat", "ws4tx:session:s1:chat"))
        self.assertEqual(john.publish_to, ("ws4tx:broadcast:chat", "ws4tx:user:john:chat"))
        anonymous = self.admit(ANONYMOUS)
        self.assertEqual(anonymous.channels, ("ws4tx:broadcast:chat",))

    def test_whoMayPublish(self):
        """Publish flags survive only where the site allows them."""
        table = [
            # (identity, config, handled, may publish)
            (JOHN, CONFIG, False, True),
            (ANONYMOUS, CONFIG, False, False),
            (ANONYMOUS, CONFIG.replace(anonymous_publish=True), False, True),
            (JOHN, CONFIG.replace(client_publish=False), False, False),
            (JOHN, CONFIG, True, False),
            (JOHN, CONFIG.replace(handler_facility_publish=True), True, True),
        ]
        for identity, config, handled, publishes in table:
            admitted = self.admit(identity, config=config, handled=handled)
            self.assertEqual(bool(admitted.publish_to), publishes,
                             (identity, config, handled))
            self.assertEqual(admission.may_publish(config, identity, handled), publishes)

    def test_grantNarrowsFlags(self):
        """A Grant's flags replace the URL's."""
        admitted = self.admit(Grant(JOHN, Flags(frozenset({"user"}), frozenset())))
        self.assertEqual(admitted.channels, ("ws4tx:user:john:chat",))
        self.assertEqual(admitted.publish_to, ())

    def test_storage(self):
        """Messages are stored when the client publishes, EXPIRE > 0 and the facility is
        one of STORED_FACILITIES."""
        table = [
            (CONFIG, PUBLISH, True),
            (CONFIG.replace(expire=0), PUBLISH, False),
            (CONFIG.replace(stored_facilities=("news*",)), PUBLISH, False),
            (CONFIG.replace(stored_facilities=("ch*",)), PUBLISH, True),
            (CONFIG, "subscribe-broadcast", False),
        ]
        for config, query, stores in table:
            self.assertEqual(self.admit(JOHN, query=query, config=config).stores, stores,
                             (config.expire, config.stored_facilities, query))

    def test_subprotocol(self):
        """ws4tx.v1 makes an event client; another requested subprotocol is echoed, as
        ws4redis did; none, none."""
        table = [
            ((), None, False),
            ((envelope.SUBPROTOCOL,), envelope.SUBPROTOCOL, True),
            (("chat", envelope.SUBPROTOCOL), envelope.SUBPROTOCOL, True),
            (("chat",), "chat", False),
        ]
        for protocols, answered, events in table:
            admitted = self.admit(JOHN, protocols=protocols)
            self.assertEqual((admitted.subprotocol, admitted.speaks_events),
                             (answered, events), protocols)

    def test_echo(self):
        """echo in the URL lets a client's own messages come back."""
        self.assertTrue(self.admit(JOHN, query=PUBLISH + "&echo").echo)
        self.assertFalse(self.admit(JOHN, query=PUBLISH).echo)


class AddressCountsTests(SynchronousTestCase):
    """Connections per client address, behind trusted proxies too."""

    def test_capAndRelease(self):
        """Past the cap a connection is refused with 429 (and stays counted until it is
        released, as every connection); a released one makes room."""
        counts = admission.AddressCounts(CONFIG)
        address = counts.client("192.0.2.1", {})
        counts.add(address, "192.0.2.1")
        counts.add(address, "192.0.2.1")
        with self.assertRaises(HandshakeDenied) as caught:
            counts.add(address, "192.0.2.1")
        self.assertEqual(caught.exception.status, 429)
        self.assertEqual(counts[address], 3)
        counts.release(address)
        counts.release(address)
        counts.add(address, "192.0.2.1")
        self.assertEqual(counts.total(), 2)

    def test_forwardedOnlyFromTrustedProxies(self):
        """A trusted proxy's Forwarded or X-Forwarded-For names the client; anybody
        else's is ignored; a trusted proxy that names nobody gives None."""
        counts = admission.AddressCounts(CONFIG)
        table = [
            ("10.0.0.1", {"x-forwarded-for": "198.51.100.7"}, "198.51.100.7"),
            ("10.0.0.1", {"x-forwarded-for": "6.6.6.6, 198.51.100.7"}, "198.51.100.7"),
            ("10.0.0.1", {"forwarded": "for=198.51.100.7"}, "198.51.100.7"),
            ("192.0.2.9", {"x-forwarded-for": "198.51.100.7"}, "192.0.2.9"),
            ("192.0.2.9", {"forwarded": "for=198.51.100.7"}, "192.0.2.9"),
            ("10.0.0.1", {}, None),
            ("10.0.0.1", {"forwarded": "for=unknown"}, None),
        ]
        for peer, headers, address in table:
            self.assertEqual(counts.client(peer, headers), address, (peer, headers))

    def test_proxyNamingNoClientIsNeverCapped(self):
        """Connections for which a trusted proxy names no client count under None,
        past any cap: only max_connections bounds them."""
        counts = admission.AddressCounts(CONFIG)
        for _ in range(50):
            counts.add(counts.client("10.0.0.1", {}), "10.0.0.1")
        self.assertEqual(counts[None], 50)

    def test_ipv6CountsPerPrefix(self):
        """An IPv6 client counts as its /64 (ipv6_prefix): two addresses of one /64 are
        one client; another /64 is another; with a prefix of 128 each address is one."""
        counts = admission.AddressCounts(CONFIG)
        self.assertEqual(counts.client("2001:db8:0:1::5", {}), "2001:db8:0:1::/64")
        self.assertEqual(counts.client("2001:db8:0:1:ffff::9", {}), "2001:db8:0:1::/64")
        self.assertEqual(counts.client("10.0.0.1", {"forwarded": 'for="[2001:db8:0:2::1]"'}),
                         "2001:db8:0:2::/64")
        self.assertEqual(counts.client("::ffff:192.0.2.1", {}), "192.0.2.1")
        exact = admission.AddressCounts(CONFIG.replace(ipv6_prefix=128))
        self.assertEqual(exact.client("2001:db8:0:1::5", {}), "2001:db8:0:1::5")
        wide = admission.AddressCounts(CONFIG.replace(ipv6_prefix=48))
        self.assertEqual(wide.client("2001:db8:0:1::5", {}), "2001:db8::/48")
