-- ws4tx: publish one message to a channel of a facility with history, atomically.
-- Loaded by both halves (redis-py's register_script, txredisapi's EVALSHA/EVAL).
--
-- KEYS[1] the channel's stream, KEYS[2] its meta hash (naming.history_keys),
-- KEYS[3] the channel's last-message key (the channel name: ws4redis's replay).
-- ARGV[1] the channel, ARGV[2] the payload, ARGV[3] the history size (entries kept),
-- ARGV[4] the history ttl (seconds), ARGV[5] an epoch for a channel without one,
-- ARGV[6] seconds to store the payload under KEYS[3] for replay (0: not stored),
-- ARGV[7] (optional) "SPUBLISH" to publish with sharded pub/sub (a Redis Cluster).
-- KEYS[4] (optional) the record of an idempotency key (naming.once_key): when it exists,
-- the message was published already: nothing is written nor published, and the first
-- publish's position is returned; else it records the position for the history's ttl, at
-- least a day (history.KEY_TTL: a relay that resends after a crash a minute later must
-- still find it, whatever the history keeps).
--
-- The meta hash holds the epoch ("e") and the last offset ("s"). A missing meta hash
-- (never published, expired, evicted, FLUSHDB, Redis restarted without persistence)
-- starts a new epoch at offset 1, and whatever stream is left over from before is
-- dropped: its offsets belong to the old epoch.
--
-- PUBLISH comes last, so that nothing is delivered unless everything was written; the
-- published form is "__ws4tx_p1:<offset>:<epoch>__" followed by the payload
-- (ws4tx.history.strip_position undoes it; docs/protocol.md describes it).
--
-- Returns {offset, epoch, receivers}, and with KEYS[4] a fourth element: 1 when the key
-- was published already (its first offset and epoch, 0 receivers), else 0.
if KEYS[4] then
  local first = redis.call("GET", KEYS[4])
  if first then
    local at = string.find(first, ":", 1, true)
    return {tonumber(string.sub(first, 1, at - 1)), string.sub(first, at + 1), 0, 1}
  end
end
local epoch = redis.call("HGET", KEYS[2], "e")
if not epoch then
  epoch = ARGV[5]
  redis.call("DEL", KEYS[1])
  redis.call("HSET", KEYS[2], "e", epoch)
end
local offset = redis.call("HINCRBY", KEYS[2], "s", 1)
redis.call("XADD", KEYS[1], "MAXLEN", ARGV[3], offset .. "-0", "d", ARGV[2])
redis.call("EXPIRE", KEYS[1], ARGV[4])
redis.call("EXPIRE", KEYS[2], ARGV[4])
if tonumber(ARGV[6]) > 0 then
  redis.call("SET", KEYS[3], ARGV[2], "EX", ARGV[6])
end
if KEYS[4] then
  redis.call("SET", KEYS[4], offset .. ":" .. epoch, "EX",
             math.max(tonumber(ARGV[4]), 86400))
end
local command = "PUBLISH"
if ARGV[7] == "SPUBLISH" then command = "SPUBLISH" end
local receivers = redis.call(command, ARGV[1],
  "__ws4tx_p1:" .. offset .. ":" .. epoch .. "__" .. ARGV[2])
if KEYS[4] then
  return {offset, epoch, receivers, 0}
end
return {offset, epoch, receivers}
