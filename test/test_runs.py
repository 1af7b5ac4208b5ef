"""What one read from Redis holds reaches each client in one write: real Redis, a real
server and real WebSocket clients, with the server-side transports' writes counted."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import reactor, threads

from ws4tx.server.protocol import PushProtocol

from test._server import ServerTestCase, identity_header
from test._wsclient import TIMEOUT, WSClient, connect

CHANNEL = "ws4tx:broadcast:foobar"
PATH = "/ws/foobar?subscribe-broadcast"


def pubsub_message(channel: str, payload: bytes) -> bytes:
    """A pub/sub message as Redis sends it to a subscriber (RESP)."""
    parts = [b"message", channel.encode(), payload]
    return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


class CountedWrites:
    """Counts what is written to a server-side connection's transport."""

    def __init__(self, proto: PushProtocol) -> None:
        self.writes: list[bytes] = []
        transport: Any = proto.transport
        original = transport.write

        def write(data: bytes) -> None:
            self.writes.append(data)
            original(data)

        transport.write = write


class OneWritePerReadTests(ServerTestCase):
    """Each client gets all the messages of one read at once, in order."""

    async def clients(self, n: int, path: str = PATH,
                      headers: Optional[dict[str, str]] = None,
                      ) -> list[tuple[WSClient, CountedWrites]]:
        """``n`` clients of ``path``, past their join (its replay, which holds live
        messages back, is over: a first message reached them), their writes counted
        from now on."""
        joined = []
        for _ in range(n):
            client = await connect(self.port, path, headers=headers)
            self.addCleanup(client.close)
            proto = await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
            joined.append((client, proto))
        self.publish(CHANNEL, b"first")
        for client, _ in joined:
            self.assertEqual(await client.next(), (b"first", False))
        return [(client, CountedWrites(proto)) for client, proto in joined]

    async def test_aReadsMessagesGoInOneWrite(self):
        """Ten messages in one read of the subscriber connection: every client gets
        them in order, from one write of its connection (not ten)."""
        clients = await self.clients(3)
        payloads = [b"message %d" % i for i in range(10)]
        subscriber = self.factory.node.broker._sub
        subscriber.dataReceived(b"".join(pubsub_message(CHANNEL, p) for p in payloads))
        for client, counted in clients:
            got = [await client.next() for _ in payloads]
            self.assertEqual(got, [(p, False) for p in payloads])
            self.assertEqual(len(counted.writes), 1)

    async def test_publishedTogetherWrittenTogether(self):
        """Messages published in one transaction reach the server in as few reads as
        Redis sends them in, and each client gets them in that many writes, in order."""
        clients = await self.clients(2)
        router = self.factory.node.router
        reads: list[int] = []
        started, ended = router.readStarted, router.readEnded

        def readStarted() -> None:
            reads.append(router.stats["messages"])
            started()

        def readEnded() -> None:
            reads[-1] = router.stats["messages"] - reads[-1]
            ended()

        router.readStarted, router.readEnded = readStarted, readEnded
        payloads = [b"together %d" % i for i in range(20)]

        def publish() -> None:
            with self.redis.pipeline(transaction=True) as pipe:
                for payload in payloads:
                    pipe.publish(CHANNEL, payload)
                pipe.execute()

        await threads.deferToThread(publish)
        for client, counted in clients:
            got = [await client.next() for _ in payloads]
            self.assertEqual(got, [(p, False) for p in payloads])
            self.assertEqual(len(counted.writes), len([n for n in reads if n]))
        # One transaction's messages are one write from Redis: one read here, mostly.
        self.assertLess(len([n for n in reads if n]), len(payloads))

    async def test_readOnTwoChannelsKeepsItsOrder(self):
        """A client on two channels gets a read's messages of both in the order Redis
        sent them (one write per run of one channel's messages)."""
        (client, counted), = await self.clients(
            1, "/ws/foobar?subscribe-broadcast&subscribe-user",
            headers=identity_header("ann"))
        user = "ws4tx:user:ann:foobar"
        sent = [(CHANNEL, b"b1"), (CHANNEL, b"b2"), (user, b"u1"), (user, b"u2"),
                (CHANNEL, b"b3")]
        self.factory.node.broker._sub.dataReceived(
            b"".join(pubsub_message(c, p) for c, p in sent))
        got = [await client.next() for _ in sent]
        self.assertEqual(got, [(p, False) for _, p in sent])
        self.assertEqual(len(counted.writes), 3)

    async def test_nothingWaitsForTheEndOfAnotherRead(self):
        """A read's messages go out when the read ends: nothing is held for a later
        one."""
        (client, _), = await self.clients(1)
        self.factory.node.broker._sub.dataReceived(pubsub_message(CHANNEL, b"alone"))
        self.assertEqual(await client.next(), (b"alone", False))
        self.assertEqual(self.factory.node.router.backlog, 0)


