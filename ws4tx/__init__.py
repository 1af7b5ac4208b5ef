"""ws4tx: real-time push for Django sites, served by Twisted and Autobahn from Redis.

The package is in two halves that never import each other's framework:

- the Django side, importable without Twisted: :mod:`ws4tx.publisher`,
  :mod:`ws4tx.redis_store`, :mod:`ws4tx.context_processors` and the plain functions of
  :mod:`ws4tx.api`;
- the Twisted side: :mod:`ws4tx.server` (the service and the resource to embed) and the
  ``twistd ws4tx`` plugin.

Both take channel names from :mod:`ws4tx.naming`.
"""

__version__ = "0.1.0"
