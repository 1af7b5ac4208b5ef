"""Which Redis server a channel lives on, when ws4tx is sharded over several.

Given several independent Redis servers (``--redis`` repeated, a list in
``WS4TX_REDIS_URL``), every channel and every key of a channel belongs to exactly one of
them, its *shard*, chosen by :func:`shard_of`. Both halves call this one function: the
Twisted server subscribes to a channel, stores its messages, its history and its presence
on that shard, and the Django side publishes there and reads from there.

The hash is Jump consistent hash (Lamping and Veach, 2014) of the 64-bit FNV-1a hash of
the channel's name, as Centrifugo shards: adding an (n+1)-th server moves about 1/(n+1) of
the channels, all of them to the new server, and no channel moves between the others.
The order of the servers is part of the mapping: every node and every Django process
must list the same servers in the same order.

A key with a ``{...}`` hash tag (history streams, presence: see :mod:`ws4tx.naming`) is
placed by its tag, as Redis Cluster does, with the prefix in front: a channel's history
keys ``{prefix}:history:{<channel without prefix>}:s`` land on the same shard as the
channel itself, and all of a facility's presence keys (and its presence channel) on one
shard.

The node registry, the control channel and the reply channels are the exception: they
live on the first shard, whatever their hash (:func:`ws4tx.naming.shard_of`, which both
halves call, puts them there and everything else where :func:`shard_of` says).
"""

from __future__ import annotations

from typing import Optional

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a_64(data: bytes) -> int:
    """The 64-bit FNV-1a hash of ``data``."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash: the bucket in ``range(buckets)`` of the 64-bit ``key``."""
    if buckets < 1:
        raise ValueError(f"need at least one bucket, not {buckets}")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def routing_name(prefix: Optional[str], name: str) -> str:
    """What places ``name`` (a channel or a key): its ``{tag}`` behind the prefix when it
    has a non-empty hash tag, else the name itself."""
    start = name.find("{")
    if start != -1:
        end = name.find("}", start + 1)
        if end > start + 1:
            head = f"{prefix}:" if prefix else ""
            return head + name[start + 1:end]
    return name


def shard_of(prefix: Optional[str], name: str, shards: int) -> int:
    """The index (in the configured order) of the shard that holds channel or key
    ``name``, out of ``shards`` servers; 0 when there is one."""
    if shards == 1:
        return 0
    return jump_hash(fnv1a_64(routing_name(prefix, name).encode("utf-8")), shards)


# Redis Cluster: the hash slot of a key or shard channel

#: The number of hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster places keys by."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(name: str | bytes) -> int:
    """The Redis Cluster hash slot of key or shard channel ``name`` (``CLUSTER KEYSLOT``):
    of its first non-empty ``{...}`` hash tag when it has one, else of the whole name."""
    data = name.encode("utf-8") if isinstance(name, str) else name
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return crc16(data) % CLUSTER_SLOTS
