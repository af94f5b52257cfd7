"""Lua scripts: each touches one key, or keys sharing one hash tag, and runs atomically.

They are called by SHA (EVALSHA) and loaded on first use on each server, so a restarted Redis
needs nothing re-registered.
"""

from __future__ import annotations

import hashlib

from .resp import bulk


class Script:
    """A Lua script called by SHA (``EVALSHA``), sent in full (``EVAL``) only when the server
    lacks it; :mod:`roomcast.layers.redis.pipeline` does the falling back.

    A ``fenced`` script gets one argument more, last, written by the pipeline as it writes the
    call: the identity of the server the connection is greeted by (its ``run_id``), so that the
    script can tell a server that lost or never had what another one wrote (a restart, a
    promoted replica). See :mod:`roomcast.layers.redis.history`.
    """

    def __init__(self, source: str, *, fenced: bool = False) -> None:
        self.source = source
        self.fenced = fenced
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.evalsha_head = bulk(b"EVALSHA") + bulk(self.sha.encode())
        self.eval_head = bulk(b"EVAL") + bulk(source.encode())


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

# Remove the records of a process that is gone. KEYS: members zset, external zset, processes
# zset. ARGV: process id, the marker ".<process id>!" its channel names hold. Does nothing if
# the process has registered again meanwhile (it then re-records its memberships itself).
SWEEP_PROCESS = Script(
    """
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return -1
end
local removed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.find(member, ARGV[2], 1, true) then
    redis.call('ZREM', KEYS[1], member)
    removed = removed + 1
  end
end
return removed
"""
)

# Remove the records of members whose process has no liveness entry. KEYS: members zset,
# processes zset. ARGV: member, process, member, process, ...
SWEEP_MEMBERS = Script(
    """
local removed = 0
for i = 1, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""
)

# Forget a process whose heartbeat lapsed. KEYS: processes zset. ARGV: process id, cutoff.
# Returns 1 if it was removed (its records may then be swept), 0 if it beat again meanwhile.
FORGET_PROCESS = Script(
    """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""
)

# Presence (issue 18; see presence.py). Remove one entry, returning what it held (nil if none).
# KEYS: presence hash. ARGV: channel.
PRESENCE_REMOVE = Script(
    """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return value
"""
)

# Remove the presence entries of processes that are gone. KEYS: presence hash, processes zset.
# ARGV: process ids. Entries of a process that is in the zset again (it came back) are kept.
# Returns the removed entries as a flat list: channel, value, channel, value, ...
PRESENCE_SWEEP = Script(
    """
local gone = {}
local any = false
for i = 1, #ARGV do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    gone[ARGV[i]] = true
    any = true
  end
end
local removed = {}
if not any then
  return removed
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if gone[string.sub(all[i + 1], 1, 16)] then
    redis.call('HDEL', KEYS[1], all[i])
    removed[#removed + 1] = all[i]
    removed[#removed + 1] = all[i + 1]
  end
end
return removed
"""
)
