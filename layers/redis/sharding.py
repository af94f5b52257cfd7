"""Which Redis host (shard) owns a name: a consistent hash every process computes alike.

Jump consistent hash (Lamping and Veach, 2014) over a 64-bit BLAKE2b of the name: no state, no
ring to keep in sync, the same answer in every process and every Python build (``hash()`` is
salted per process, so it is never used), and adding an (n+1)-th host moves only ~1/(n+1) of
the names.
"""

from __future__ import annotations

from hashlib import blake2b

_MASK = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    """Map a 64-bit ``key`` to a bucket in ``range(buckets)``."""
    if buckets <= 0:
        raise ValueError("buckets must be positive")
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * 2862933555777941757 + 1) & _MASK
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_for(name: str, shards: int) -> int:
    """The shard index of ``name`` among ``shards`` hosts."""
    if shards == 1:
        return 0
    digest = blake2b(name.encode(), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), shards)
