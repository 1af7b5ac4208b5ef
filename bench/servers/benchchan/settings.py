"""Settings of the Channels peer: the channel layer is chosen by ``BENCH_CHANNEL_LAYER``
(``core``: ``channels_redis.core.RedisChannelLayer``, the layer Channels' documentation
configures; ``pubsub``: ``channels_redis.pubsub.RedisPubSubChannelLayer``), both with their
default options, on the Redis at ``BENCH_REDIS_URL``.

One deviation from the defaults: the Redis connection pool may hold 1000 connections
(``BENCH_CHANNELS_MAX_CONNECTIONS``). With redis-py 8's default cap of 100, the core layer
fails ``group_add`` with "Too many connections" whenever more than 100 handshakes are in
flight (the suite connects 200 at a time), and those clients are refused."""

import os

SECRET_KEY = "channels-bench-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["channels"]
DATABASES: dict = {}
ASGI_APPLICATION = "benchchan.asgi.application"

_LAYER = os.environ.get("BENCH_CHANNEL_LAYER", "core")
_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": {
            "core": "channels_redis.core.RedisChannelLayer",
            "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
        }[_LAYER],
        "CONFIG": {"hosts": [{
            "address": _URL,
            "max_connections": int(os.environ.get("BENCH_CHANNELS_MAX_CONNECTIONS", "1000")),
        }]},
    }
}
