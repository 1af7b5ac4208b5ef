"""The public faces: what ws4tx.server exports, and the import paths ws4redis users rely on."""

from __future__ import annotations

import importlib

from twisted.trial.unittest import SynchronousTestCase

import ws4tx.server


class PublicFaceTests(SynchronousTestCase):
    """ws4tx.server exports the embedding API, the same objects as where they live, and
    none of the node's parts."""

    def test_exportsAreTheModulesObjects(self):
        """Every exported name is the object of the module that defines it."""
        for name in ws4tx.server.__all__:
            value = getattr(ws4tx.server, name)
            module = importlib.import_module(value.__module__)
            self.assertIs(getattr(module, name), value, name)

    def test_namesResolveLazilyToTheSameObjects(self):
        """Each exported name is listed where it is defined (the lazy face's one table),
        resolves to that module's object every time, and an unknown name is an
        AttributeError, as for any module."""
        self.assertEqual(sorted(ws4tx.server._WHERE), sorted(ws4tx.server.__all__))
        for name, module in ws4tx.server._WHERE.items():
            self.assertIs(getattr(ws4tx.server, name),
                          getattr(importlib.import_module(module), name), name)
        self.assertIn("PushService", dir(ws4tx.server))
        with self.assertRaises(AttributeError):
            ws4tx.server.Router  # noqa: B018
        from ws4tx.server import PushService, ServerConfig
        from ws4tx.server.config import ServerConfig as defined
        from ws4tx.server.service import PushService as service

        self.assertIs(PushService, service)
        self.assertIs(ServerConfig, defined)

    def test_embeddingAPIOnly(self):
        """The service, its configuration, handlers and auth types are exported; the
        hub, router, protocol and factory are not."""
        for name in ("PushService", "ServerConfig", "RedisAddress", "EventHandler",
                     "EventRefused", "IAuthenticator", "HandshakeDenied", "Identity"):
            self.assertIn(name, ws4tx.server.__all__)
        for name in ("Hub", "Router", "PushProtocol", "PushFactory", "RedisBroker"):
            self.assertNotIn(name, ws4tx.server.__all__)

    def test_djangoSideExportsAreTheModulesObjects(self):
        """ws4tx.api's exports are the objects of the modules that define them (SELF, an
        instance, is the audience module's one object)."""
        import ws4tx._audience
        import ws4tx.api

        for name in ws4tx.api.__all__:
            value = getattr(ws4tx.api, name)
            if name == "SELF":
                self.assertIs(value, ws4tx._audience.SELF)
                continue
            module = importlib.import_module(value.__module__)
            self.assertIs(getattr(module, name), value, name)

    def test_oneNotStored(self):
        """Both halves raise one NotStored: every public path names the same class, so
        code catching ws4tx.api.NotStored also catches what a broker raises."""
        import ws4tx.api
        import ws4tx.history
        import ws4tx.redis_store
        import ws4tx.server.broker

        for path in (ws4tx.api, ws4tx.redis_store, ws4tx.server, ws4tx.server.broker):
            self.assertIs(path.NotStored, ws4tx.history.NotStored, path.__name__)
        with self.assertRaises(ws4tx.api.NotStored) as caught:
            raise ws4tx.server.broker.NotStored(2, "OOM")
        self.assertEqual((caught.exception.receivers, caught.exception.reason), (2, "OOM"))

    def test_ws4redisImportPathsStay(self):
        """ws4redis's public import paths, renamed to ws4tx, still import."""
        from ws4tx.publisher import RedisPublisher  # noqa: F401
        from ws4tx.redis_store import SELF, RedisMessage  # noqa: F401

        for module in ("ws4tx.context_processors", "ws4tx.api", "ws4tx.testing"):
            importlib.import_module(module)
