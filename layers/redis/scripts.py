"""Lua scripts: each touches one key, or keys sharing one hash tag, and runs atomically.

They are called by SHA (EVALSHA) and loaded on first use on each server, so a restarted Redis
needs nothing re-registered.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError


class Script:
    """A Lua script called by SHA, sent in full only when the server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


# Push one entry to a bounded list. KEYS: list. ARGV: entry, capacity, ttl (ms).
# Returns 1, or 0 when the list already holds `capacity` entries (nothing written).
PUSH = Script(
    """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# Record a membership. KEYS: members zset, external-members zset (same hash tag).
# ARGV: channel, now, cutoff (memberships older lapse), ttl (ms), external ("1" or "0").
GROUP_ADD = Script(
    """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 1
"""
)

# Publish a group message once for all processes. KEYS: members zset, external zset.
# ARGV: message, cutoff. Returns {processes that got it, external members still live}.
# The member list never crosses the wire; only non-process-local members come back.
GROUP_SEND = Script(
    """
local receivers = redis.call('PUBLISH', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {receivers, {}}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
return {receivers, redis.call('ZRANGE', KEYS[2], 0, -1)}
"""
)

# Remove a membership record. KEYS: members zset, external zset. ARGV: channel.
GROUP_DISCARD = Script(
    """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
)
